/*
 * pfs: opening paths inside the PFS directory without ever leaving it.
 *
 * Every path is resolved with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
 * from the PFS root, so a symlink planted in the PFS (or a ".." that the
 * namespace would never produce) makes the call fail with EXDEV or ELOOP
 * instead of writing outside PFS_DIR.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "log.h"
#include "ns/ns_i.h"

int vp_pfs_openat(int root_fd, const char *rel, int flags, mode_t mode)
{
	struct open_how how = {
		.flags = (uint64_t)(flags | O_CLOEXEC),
		.mode = (flags & O_CREAT) ? mode : 0,
		.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
			   RESOLVE_NO_MAGICLINKS,
	};
	long fd;

	fd = syscall(SYS_openat2, root_fd, *rel ? rel : ".", &how, sizeof(how));
	return fd < 0 ? -errno : (int)fd;
}

int vp_pfs_open_dir(int root_fd, const char *rel)
{
	return vp_pfs_openat(root_fd, rel, O_RDONLY | O_DIRECTORY, 0);
}

int vp_pfs_open_root(const char *dir, char *err, size_t errlen)
{
	struct stat st;
	int fd;

	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;

		snprintf(err, errlen, "PFS directory '%s': %s; create it or name another",
			 dir, strerror(e));
		return -e;
	}
	if (fstat(fd, &st) || !S_ISDIR(st.st_mode)) {
		snprintf(err, errlen, "PFS directory '%s' is not a directory", dir);
		close(fd);
		return -ENOTDIR;
	}
	if (faccessat(fd, ".", W_OK | X_OK, AT_EACCESS)) {
		int e = errno;

		snprintf(err, errlen, "PFS directory '%s' is not writable: %s; viperfs needs to write checkpoints there",
			 dir, strerror(e));
		close(fd);
		return -e;
	}
	return fd;
}

void vp_pfs_clear_staging(int staging_fd)
{
	int fd = dup(staging_fd);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;
	unsigned int n = 0;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return;
	}
	rewinddir(d);
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (!unlinkat(staging_fd, de->d_name, 0))
			n++;
	}
	closedir(d);
	if (n)
		vp_log(LOG_NOTICE, "flush",
		       "removed %u partial file(s) left in the staging folder by an earlier run",
		       n);
}

int vp_pfs_is_transient(int err)
{
	switch (err) {
	case -ENOENT:
	case -ENOTEMPTY:
	case -EEXIST:
	case -EXDEV:
	case -ELOOP:
	case -ENOTDIR:
	case -EISDIR:
	case -ENAMETOOLONG:
	case -EINVAL:
		return 0;
	default:
		return 1;
	}
}
