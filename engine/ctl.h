/*
 * ctl: the daemon's control socket, what viperctl talks to.
 *
 * A Unix stream socket; a client sends one request line and reads the
 * answer until the daemon closes the connection:
 *   status             one JSON object (vp_ns_status_json)
 *   versions PATH      one JSON array (vp_ns_versions_json)
 *   flush PATH         JSON progress lines {"done":B,"total":B,"ops_left":N,
 *                      "error":"..."} every 200 ms, the last with "finished":true
 *   warm PATH          JSON progress lines {"files","files_done","total","done",
 *                      "cached","errors"}, the last with "finished":true
 *   idle SECONDS       waits up to SECONDS for no open file: {"open_files":0},
 *                      or {"error":"busy","open_files":N}
 *   gpu-export PATH    {"handle":HEX,"version":V,"size":S,"device":N}, then
 *                      the lease lasts until the client closes
 * Errors come back as {"error":"..."}.  Only the daemon's own user (or
 * root) may connect: the socket is mode 0600.
 *
 * THREADING: one accept thread; each connection is served by a thread of
 * its own, so a long flush does not block status requests.
 */
#ifndef VP_CTL_H
#define VP_CTL_H

#include <stddef.h>

struct vp_ns;
struct vp_ctl;

/*
 * Listens on path (made unique to this daemon by the caller).  Returns a
 * new server, or NULL with a message in err.
 */
struct vp_ctl *vp_ctl_start(struct vp_ns *ns, const char *path, char *err,
			    size_t errlen);

/* Stops accepting, waits for open connections, removes the socket. */
void vp_ctl_stop(struct vp_ctl *ctl);

#endif
