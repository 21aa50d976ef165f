/*
 * hook: -o on_update=CMD -- runs a shell command for each new version,
 * for inference servers that take a load API call (Triton explicit mode,
 * TorchServe) instead of watching files.
 *
 * The command runs with /bin/sh -c, one at a time, in the order of the
 * versions, with VIPERFS_PATH (absolute, in the mount), VIPERFS_VERSION
 * and VIPERFS_SIZE in its environment (names never go through the shell's
 * parser).  A failing command is logged; it does not stop later ones.
 * Events coming faster than commands finish are not queued without bound:
 * the runner skips to the newest.
 *
 * DESIGN: the daemon runs as root and holds sockets, /dev/fuse and files
 * a hook has no business with, so the command gets only stdin (/dev/null),
 * stdout and stderr, default signal dispositions, an empty signal mask,
 * and a process group of its own.  A command still running after
 * on_update_timeout seconds (0: no limit) gets SIGTERM, its whole process
 * group SIGKILL VP_HOOK_GRACE_S later; the log says so.  At unmount a
 * running command is stopped the same way.  Every command is reaped.
 *
 * THREADING: one runner thread of its own; commands are waited for there,
 * never on a FUSE or network thread.  vp_hook_start/vp_hook_stop are
 * called from the main thread.
 */
#ifndef VP_HOOK_H
#define VP_HOOK_H

/* seconds between SIGTERM and SIGKILL for a command that overstays */
#define VP_HOOK_GRACE_S 2.0

struct vp_ns;
struct vp_hook;

/*
 * Starts the runner of command cmd (copied) for the versions of ns
 * (borrowed; it must outlive the hook), whose mount is at mountpoint
 * (copied).  The time-out is vp_ns_config(ns)->on_update_timeout.
 * Returns a new hook, or NULL (logged) on failure.
 */
struct vp_hook *vp_hook_start(struct vp_ns *ns, const char *cmd,
			      const char *mountpoint);

/*
 * Stops the runner and frees h (NULL: nothing).  A command still running
 * gets SIGTERM and, VP_HOOK_GRACE_S later, SIGKILL; blocks until it is
 * reaped (about VP_HOOK_GRACE_S at most).
 */
void vp_hook_stop(struct vp_hook *h);

#endif
