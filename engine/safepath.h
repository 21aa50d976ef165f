/*
 * safepath: file operations that a replica performs for the network,
 * contained in its mount.
 *
 * A producer names paths; a consumer's repl thread acts on them, as root,
 * on its own FUSE mount.  The paths are checked on decoding (proto.h: no
 * "..", no absolute path), but a path can still leave the mount through a
 * symlink in one of its directories: the producer may have sent that
 * symlink itself ("esc" -> "/etc", then "esc/cron.d/x").  So every
 * operation opens the parent directory with openat2(RESOLVE_BENEATH |
 * RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV | RESOLVE_NO_MAGICLINKS), beneath
 * the mount's root, and acts on the last component with the *at() call
 * that does not follow it (mkdirat, unlinkat, renameat, symlinkat, and
 * openat with O_NOFOLLOW).  A symlink's target is stored as sent (a
 * symlink is data), and never followed by the daemon itself.
 *
 * Every function returns 0 (or an fd) or -errno; -ELOOP or -EXDEV when a
 * directory on the way is a symlink or another mount.
 */
#ifndef VP_SAFEPATH_H
#define VP_SAFEPATH_H

#include <sys/types.h>

/*
 * Opens the directory that holds path's last component, beneath root_fd
 * (O_PATH), and points *leaf into path at that component.  Returns the
 * new fd (the caller closes it) or -errno.
 */
int vp_safepath_parent(int root_fd, const char *path, const char **leaf);

/* mkdir -p of path's directories (not of path itself), beneath root_fd, mode 0755. */
int vp_safepath_mkparents(int root_fd, const char *path);

int vp_safepath_mkdir(int root_fd, const char *path, mode_t mode);
/* mknodat(2) of a FIFO, socket or device node beneath root_fd. */
int vp_safepath_mknod(int root_fd, const char *path, mode_t mode, dev_t rdev);
/* flags: 0 or AT_REMOVEDIR. */
int vp_safepath_unlink(int root_fd, const char *path, int flags);
int vp_safepath_rename(int root_fd, const char *from, const char *to);
/* A hard link: to becomes another name of the node at from (never followed). */
int vp_safepath_link(int root_fd, const char *from, const char *to);
/* A symlink at path with target as it came (not followed, not checked). */
int vp_safepath_symlink(int root_fd, const char *target, const char *path);
/* openat(O_NOFOLLOW | O_CLOEXEC | flags) of path; returns the fd or -errno. */
int vp_safepath_open(int root_fd, const char *path, int flags, mode_t mode);

#endif
