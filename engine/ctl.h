/*
 * ctl: the daemon's control socket, what viperctl talks to.
 *
 * A Unix stream socket; a client sends one request line and reads the
 * answer until the daemon closes the connection:
 *   status             one JSON object: vp_ns_status(), with "tiers.gpu"
 *                      (vp_gpu_status(), or null) and "repl" added here, and
 *                      the daemon's "release" (VP_RELEASE), "started" (Unix
 *                      time the control socket opened, just after the mount),
 *                      "uptime_s" since then, "mountpoint" and "options" (the
 *                      -o options as given; "" where unknown)
 *   versions PATH      one JSON array (vp_ns_versions)
 *   watch PATH         {"watching":true}, then one JSON line per new version
 *                      below PATH, until the client closes
 *   wait PATH V S      {"version":N} at once if PATH holds a version above V;
 *                      else {"waiting":true} (the events are watched), then
 *                      {"version":N} once it does, or {"error":"timed out"}
 *                      after S seconds (0: no limit); V and S are the last two
 *                      words, so PATH may hold spaces
 *   flush PATH         JSON progress lines {"done":B,"total":B,"ops_left":N,
 *                      "error":"..."} every 200 ms, the last with "finished":true
 *   warm PATH          JSON progress lines {"files","files_done","total","done",
 *                      "cached","errors"}, the last with "finished":true
 *   idle SECONDS       waits up to SECONDS for no open file: {"open_files":0},
 *                      or {"error":"busy","open_files":N}
 *   gpu-export PATH    {"handle":HEX,"version":V,"size":S,"device":N}, then
 *                      the lease lasts until the client closes
 *   ping               {"pong":true}
 * Errors come back as {"error":"..."}.  PATH is relative to the mount's root.
 * Every answer is built with jansson (engine/json.h: how names that are
 * not UTF-8 come out), each line ends in a newline.
 *
 * PERMISSIONS: the socket is mode 0666 and every request is judged by the
 * caller's credentials (SO_PEERCRED, SO_PEERGROUPS), with the mode bits
 * the mount shows (the kernel enforces the same ones: default_permissions):
 *   - root, the daemon's own user and the owner of the mount's root
 *     directory may make any request;
 *   - status needs read permission on the mount's root; versions, watch,
 *     wait and gpu-export need search permission on the directories on
 *     the way to PATH and read permission on PATH (a PATH that does not
 *     exist yet passes: wait and watch name files ahead);
 *   - flush, warm and idle change what the daemon does, for everyone: the
 *     privileged callers only;
 *   - ping: anyone.
 * A refusal is {"error":"permission denied: ..."} and a (rate-limited)
 * warning in the log.  status lists every file name in the mount: whoever
 * may read the root sees them, as on the PFS directory it mirrors.
 *
 * LIMITS: a client has 10 s from connect() to the end of its request
 * line; until then it costs a descriptor and a buffer in the accept
 * thread, not a thread.  At most 128 connections wait so; a new one past
 * that drops the oldest (an unprivileged caller's first).  At most 64
 * requests are served at once, 16 of them only for privileged callers, so
 * other users can never lock root out (viperctl umount); past the limit
 * the answer is {"error":"busy: ..."}.  A client that reads nothing of
 * its answer for 30 s is dropped.
 *
 * THREADING: one accept thread polls the listening socket and the
 * connections whose request line is not in; each request is then served
 * by a thread of its own, so a long flush or watch does not block status.
 * An answer is built under the locks of what it reports on and written
 * with none held: a client that stops reading blocks its own thread only
 * (for up to 30 s), never the mount.
 * vp_ctl_stop() shuts down every open connection: the requests end and it
 * returns promptly, even with clients connected.
 */
#ifndef VP_CTL_H
#define VP_CTL_H

#include <stddef.h>

struct vp_ctl;
struct vp_gpu;
struct vp_ns;
struct vp_repl;

/* What the control socket answers from; each borrowed until vp_ctl_stop(). */
struct vp_ctl_sources {
	struct vp_ns *ns;
	struct vp_gpu *gpu;		/* NULL: no GPU tier */
	struct vp_repl *repl;		/* NULL: no replication */
	const char *mountpoint;		/* for status; NULL: "" (copied) */
	const char *options;		/* the -o options as given; NULL: "" (copied) */
};

/*
 * Listens on path (made unique to this daemon by the caller; a stale
 * socket there is replaced), answering from src's objects (src itself is
 * copied).  Returns a new server, or NULL with a message in err.
 */
struct vp_ctl *vp_ctl_start(const struct vp_ctl_sources *src, const char *path,
			    char *err, size_t errlen);

/*
 * Stops accepting, closes the connections that sent no request yet,
 * shuts down the others and waits for their threads (a request that is
 * in a PFS read finishes that read), removes the socket.  NULL is a no-op.
 */
void vp_ctl_stop(struct vp_ctl *ctl);

#endif
