/* utab: umount(8) helper registration for viperfs mounts; see utab.c. */
#ifndef VPFS_UTAB_H
#define VPFS_UTAB_H

#include <sys/types.h>

/* Adds a utab entry (uhelper=viperfs) for the mount; logs and goes on if it cannot. */
void vpfs_utab_add(const char *source, const char *mountpoint);
/* Removes the entry again. */
void vpfs_utab_remove(const char *mountpoint);

/*
 * What daemons killed with -9 left behind: our utab entries whose mount
 * point is no longer a viperfs mount (root), and control sockets in
 * socket_dir (viperfs-PID.sock) that nothing listens on.  Each removal is
 * logged.
 */
void vpfs_clean_stale(const char *socket_dir);

/*
 * 1 if mountpoint is a mount point in this process's mount table, with
 * whether its newest mount is viperfs's and that mount's device number;
 * else 0.  (libmount reads mountinfo, its escapes included.)
 */
int vpfs_mount_of(const char *mountpoint, int *viperfs, dev_t *devno);

#endif
