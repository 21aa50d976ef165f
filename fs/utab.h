/* utab: umount(8) helper registration for viperfs mounts; see utab.c. */
#ifndef VPFS_UTAB_H
#define VPFS_UTAB_H

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

#endif
