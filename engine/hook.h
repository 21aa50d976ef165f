/*
 * hook: -o on_update=CMD -- runs a shell command for each new version,
 * for inference servers that take a load API call (Triton explicit mode,
 * TorchServe) instead of watching files.
 *
 * The command runs with /bin/sh -c, one at a time, in the order of the
 * versions, with VIPERFS_PATH (absolute, in the mount), VIPERFS_VERSION
 * and VIPERFS_SIZE in its environment.  A failing command is logged; it
 * does not stop later ones.  Events coming faster than commands finish
 * are not queued without bound: the runner skips to the newest.
 */
#ifndef VP_HOOK_H
#define VP_HOOK_H

struct vp_ns;
struct vp_hook;

/* Starts the runner; returns NULL (logged) on failure. */
struct vp_hook *vp_hook_start(struct vp_ns *ns, const char *cmd,
			      const char *mountpoint);
void vp_hook_stop(struct vp_hook *h);

#endif
