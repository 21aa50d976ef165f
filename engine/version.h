/* The release of viperfs, viperctl and the client library (one number). */
#ifndef VP_VERSION_H
#define VP_VERSION_H

#define VP_RELEASE "0.1.0"

#endif
