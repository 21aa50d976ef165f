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
 * The entry is written in libmount's format, under its lock, and removed
 * at unmount.  Root only (utab is root's); a stale entry left by a crash
 * only makes umount(8) read mountinfo, which is harmless.
 */
#define _GNU_SOURCE
#include "utab.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../engine/log.h"

#define UTAB_DIR "/run/mount"
#define UTAB UTAB_DIR "/utab"
#define UTAB_LOCK UTAB_DIR "/utab.lock"

/* libmount's mangling: space, tab, newline and backslash as octal escapes. */
static void mangle(FILE *out, const char *s)
{
	for (; *s; s++) {
		if (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\\')
			fprintf(out, "\\%03o", (unsigned char)*s);
		else
			fputc(*s, out);
	}
}

/* The mount ID of the newest mount on mountpoint, or -1. */
static int mount_id(const char *mountpoint)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char line[4096], mnt[PATH_MAX];
	int id, found = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%d %*d %*s %*s %4095s", &id, mnt) == 2 &&
		    !strcmp(mnt, mountpoint))
			found = id;
	fclose(f);
	return found;
}

/* Rewrites utab without lines for mountpoint, plus add_line if not NULL. */
static int rewrite(const char *mountpoint, const char *add_line)
{
	char tmp[] = UTAB_DIR "/utab.viperfs.XXXXXX", *want = NULL, line[8192];
	size_t want_len = 0;
	FILE *in, *out, *m;
	int lock_fd, fd, rc = 0;

	if (mkdir(UTAB_DIR, 0755) && errno != EEXIST)
		return -errno;
	lock_fd = open(UTAB_LOCK, O_RDONLY | O_CREAT | O_CLOEXEC, 0644);
	if (lock_fd < 0)
		return -errno;
	if (flock(lock_fd, LOCK_EX)) {
		rc = -errno;
		goto out_lock;
	}
	/* the TARGET= field as libmount writes it */
	m = open_memstream(&want, &want_len);
	if (!m) {
		rc = -ENOMEM;
		goto out_lock;
	}
	fputs(" TARGET=", m);
	mangle(m, mountpoint);
	fputc(' ', m);
	fclose(m);
	fd = mkstemp(tmp);
	if (fd < 0) {
		rc = -errno;
		goto out_want;
	}
	out = fdopen(fd, "w");
	if (!out) {
		rc = -errno;
		close(fd);
		unlink(tmp);
		goto out_want;
	}
	in = fopen(UTAB, "re");
	while (in && fgets(line, sizeof(line), in))
		if (!strstr(line, want) || !strstr(line, "uhelper=viperfs"))
			fputs(line, out);
	if (in)
		fclose(in);
	if (add_line)
		fputs(add_line, out);
	if (fchmod(fd, 0644) || fclose(out) || rename(tmp, UTAB)) {
		rc = -errno;
		unlink(tmp);
	}
out_want:
	free(want);
out_lock:
	close(lock_fd);
	return rc;
}

void vpfs_utab_add(const char *source, const char *mountpoint)
{
	char *line = NULL;
	size_t len = 0;
	FILE *m;
	int id, rc;

	if (geteuid() != 0)
		return;
	id = mount_id(mountpoint);
	m = open_memstream(&line, &len);
	if (!m)
		return;
	if (id >= 0)
		fprintf(m, "ID=%d ", id);
	fputs("SRC=", m);
	mangle(m, source);
	fputs(" TARGET=", m);
	mangle(m, mountpoint);
	fputs(" ROOT=/ OPTS=uhelper=viperfs\n", m);
	fclose(m);
	rc = rewrite(mountpoint, line);
	if (rc)
		vp_log(LOG_INFO, "fs", "no entry in %s (%s): umount(8) unmounts without draining first; 'viperctl umount' still does",
		       UTAB, strerror(-rc));
	free(line);
}

void vpfs_utab_remove(const char *mountpoint)
{
	if (geteuid() == 0)
		rewrite(mountpoint, NULL);
}
