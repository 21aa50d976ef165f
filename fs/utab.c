/*
 * utab: tells umount(8) to run viperfs's helper.
 *
 * For a FUSE mount, umount(8) (libmount) learns the type from statfs(),
 * which says only "fuse", and so never runs /sbin/umount.fuse.viperfs,
 * unless /run/mount/utab has an entry for the mount point: then it reads
 * the type ("fuse.viperfs") from mountinfo and runs the helper (the way
 * udisks gets umount.udisks2 called).  The helper waits for pending
 * flushes before the unmount, and refuses while files are open.
 *
 * libmount writes the entry (its format, its lock) and removes it at
 * unmount.  Root only (utab is root's).  A daemon killed with -9 leaves its
 * entry behind, and its control socket: the next mount removes entries of
 * ours whose mount point is no longer a viperfs mount, and control sockets
 * that nothing listens on (vpfs_clean_stale).
 */
#define _GNU_SOURCE
#include "utab.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libmount/libmount.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "../engine/log.h"

#define UHELPER "uhelper=viperfs"

/* libmount's own path, and the variable it reads in its place */
static const char *utab_path(void)
{
	const char *env = getenv("LIBMOUNT_UTAB");

	return env && *env ? env : "/run/mount/utab";
}

/* Adds (fs set) or removes (target set) an entry; 0, or a negative errno. */
static int update(struct libmnt_fs *fs, const char *target)
{
	struct libmnt_update *upd = mnt_new_update();
	int rc;

	if (!upd)
		return -ENOMEM;
	rc = mnt_update_set_fs(upd, 0, target, fs);
	if (rc == 0)
		rc = mnt_update_table(upd, NULL);
	else if (rc == 1)
		rc = 0;		/* nothing for utab to hold */
	mnt_free_update(upd);
	return rc;
}

void vpfs_utab_add(const char *source, const char *mountpoint)
{
	struct libmnt_fs *fs;
	int rc = -ENOMEM;

	if (geteuid() != 0)
		return;
	fs = mnt_new_fs();
	if (fs && !mnt_fs_set_source(fs, source) && !mnt_fs_set_target(fs, mountpoint) &&
	    !mnt_fs_set_root(fs, "/") && !mnt_fs_set_options(fs, UHELPER))
		rc = update(fs, NULL);
	mnt_unref_fs(fs);
	if (rc)
		vp_log(LOG_INFO, "fs", "no utab entry (%s): umount(8) unmounts without draining first; 'viperctl umount' still does",
		       strerror(-rc));
}

void vpfs_utab_remove(const char *mountpoint)
{
	if (geteuid() == 0)
		update(NULL, mountpoint);
}

/*
 * The mount point of a utab line of ours (OPTS has uhelper=viperfs), or
 * NULL.  libmount reads utab only merged into the mount table, so a line
 * whose mount is gone is read here: KEY=value fields, mangled as libmount
 * writes them.
 */
static char *our_target(const char *line)
{
	const char *opts = strstr(line, " OPTS="), *target = strstr(line, "TARGET=");
	char *value = NULL, *field;
	size_t len = 0;

	if (!opts || !target || (target != line && target[-1] != ' '))
		return NULL;
	field = strndup(opts + 6, strcspn(opts + 6, " \n"));
	if (!field || mnt_optstr_get_option(field, "uhelper", &value, &len) ||
	    len != 7 || strncmp(value, "viperfs", 7)) {
		free(field);
		return NULL;
	}
	free(field);
	field = strndup(target + 7, strcspn(target + 7, " \n"));
	value = field ? mnt_unmangle(field) : NULL;
	free(field);
	return value;
}

/* Removes our utab entries whose mount point is not a viperfs mount any more. */
static void clean_utab(void)
{
	struct libmnt_table *mounts = mnt_new_table();
	FILE *f = fopen(utab_path(), "re");
	char *line = NULL, **stale = NULL;
	size_t cap = 0, n = 0;

	if (!f || !mounts || mnt_table_parse_file(mounts, "/proc/self/mountinfo"))
		goto out;
	while (getline(&line, &cap, f) > 0) {
		char *target = our_target(line), **grown;
		struct libmnt_fs *m;

		if (!target)
			continue;
		m = mnt_table_find_target(mounts, target, MNT_ITER_BACKWARD);
		if ((m && !strcmp(mnt_fs_get_fstype(m) ?: "", "fuse.viperfs")) ||
		    !(grown = realloc(stale, (n + 1) * sizeof(*stale)))) {
			free(target);
			continue;
		}
		stale = grown;
		stale[n++] = target;
	}
	/* removed after the read: each removal rewrites the file */
	for (size_t i = 0; i < n; i++) {
		if (!update(NULL, stale[i]))
			vp_log(LOG_INFO, "fs", "removed a stale utab entry for '%s' (its daemon is gone and it is unmounted)",
			       stale[i]);
		free(stale[i]);
	}
out:
	free(stale);
	free(line);
	if (f)
		fclose(f);
	mnt_unref_table(mounts);
}

/*
 * 1 if nothing listens on the UNIX socket at path (a dead daemon's).  The
 * probe never waits: a listener that does not accept (a full backlog)
 * counts as alive.
 */
static int socket_is_dead(const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int fd, dead;

	if (strlen(path) >= sizeof(addr.sun_path))
		return 0;
	strcpy(addr.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return 0;
	dead = connect(fd, (struct sockaddr *)&addr, sizeof(addr)) && errno == ECONNREFUSED;
	close(fd);
	return dead;
}

/* Removes viperfs-PID.sock files in dir that nothing listens on. */
static void clean_sockets(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char path[PATH_MAX];
	int pid;

	if (!d)
		return;
	while ((e = readdir(d))) {
		struct stat st;
		int end = 0;

		/* ours only: the whole name viperfs-PID.sock, a socket we own (not a link) */
		if (sscanf(e->d_name, "viperfs-%d.sock%n", &pid, &end) != 1 || e->d_name[end] ||
		    pid == (int)getpid() ||
		    fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) || !S_ISSOCK(st.st_mode) ||
		    st.st_uid != geteuid() ||
		    (size_t)snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) >= sizeof(path))
			continue;
		if (socket_is_dead(path) && !unlink(path))
			vp_log(LOG_INFO, "fs", "removed the control socket of a daemon that is gone: '%s'",
			       path);
	}
	closedir(d);
}

int vpfs_mount_of(const char *mountpoint, int *viperfs, dev_t *devno)
{
	struct libmnt_table *mounts = mnt_new_table();
	struct libmnt_fs *m = NULL;
	int found = 0;

	/* the newest mount on the path: mountinfo lists mounts oldest first */
	if (mounts && !mnt_table_parse_file(mounts, "/proc/self/mountinfo"))
		m = mnt_table_find_target(mounts, mountpoint, MNT_ITER_BACKWARD);
	if (m) {
		found = 1;
		if (viperfs)
			*viperfs = !strcmp(mnt_fs_get_fstype(m) ?: "", "fuse.viperfs");
		if (devno)
			*devno = mnt_fs_get_devno(m);
	}
	mnt_unref_table(mounts);
	return found;
}

void vpfs_clean_stale(const char *socket_dir)
{
	if (geteuid() == 0)
		clean_utab();
	if (socket_dir)
		clean_sockets(socket_dir);
}
