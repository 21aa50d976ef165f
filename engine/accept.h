/*
 * accept: the accept loop the daemon's small servers share (the control
 * socket, the metrics endpoint): wait for a connection or for a stop.
 */
#ifndef VP_ACCEPT_H
#define VP_ACCEPT_H

/*
 * Blocks until listen_fd has a connection (returns its fd, close-on-exec)
 * or stop_fd becomes readable or poll fails (returns -1).
 */
int vp_accept_until(int listen_fd, int stop_fd);

#endif
