/* safepath: see safepath.h. */
#define _GNU_SOURCE
#include "safepath.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define RESOLVE_CONTAINED (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV | \
			   RESOLVE_NO_MAGICLINKS)

/* dir (relative to root_fd, "" for root itself), opened O_PATH, contained. */
static int open_dir(int root_fd, const char *dir)
{
	struct open_how how = {
		.flags = O_PATH | O_DIRECTORY | O_CLOEXEC,
		.resolve = RESOLVE_CONTAINED,
	};
	long fd = syscall(SYS_openat2, root_fd, *dir ? dir : ".", &how, sizeof(how));

	return fd < 0 ? -errno : (int)fd;
}

int vp_safepath_parent(int root_fd, const char *path, const char **leaf)
{
	char dir[PATH_MAX];
	const char *slash = strrchr(path, '/');
	size_t n = slash ? (size_t)(slash - path) : 0;

	if (!*path || *path == '/' || (slash && !slash[1]))
		return -EINVAL;		/* relative paths only, ending in a name */
	if (n >= sizeof(dir))
		return -ENAMETOOLONG;
	memcpy(dir, path, n);
	dir[n] = '\0';
	*leaf = slash ? slash + 1 : path;
	if (!strcmp(*leaf, ".") || !strcmp(*leaf, ".."))
		return -EINVAL;
	return open_dir(root_fd, dir);
}

int vp_safepath_mkparents(int root_fd, const char *path)
{
	char buf[PATH_MAX];
	int rc = 0;

	if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
		return -ENAMETOOLONG;
	for (char *s = strchr(buf, '/'); s && !rc; s = strchr(s + 1, '/')) {
		*s = '\0';
		rc = vp_safepath_mkdir(root_fd, buf, 0755);
		if (rc == -EEXIST)
			rc = 0;
		*s = '/';
	}
	return rc;
}

int vp_safepath_mkdir(int root_fd, const char *path, mode_t mode)
{
	const char *leaf;
	int dfd = vp_safepath_parent(root_fd, path, &leaf), rc = 0;

	if (dfd < 0)
		return dfd;
	if (mkdirat(dfd, leaf, mode))
		rc = -errno;
	close(dfd);
	return rc;
}

int vp_safepath_mknod(int root_fd, const char *path, mode_t mode, dev_t rdev)
{
	const char *leaf;
	int dfd = vp_safepath_parent(root_fd, path, &leaf), rc = 0;

	if (dfd < 0)
		return dfd;
	if (mknodat(dfd, leaf, mode, rdev))
		rc = -errno;
	close(dfd);
	return rc;
}

int vp_safepath_unlink(int root_fd, const char *path, int flags)
{
	const char *leaf;
	int dfd = vp_safepath_parent(root_fd, path, &leaf), rc = 0;

	if (dfd < 0)
		return dfd;
	if (unlinkat(dfd, leaf, flags & AT_REMOVEDIR))
		rc = -errno;
	close(dfd);
	return rc;
}

/* The parents of from and to, opened beneath root_fd; 0, or -errno with neither open. */
static int two_parents(int root_fd, const char *from, const char *to, int *ffd,
		       const char **lfrom, int *tfd, const char **lto)
{
	*ffd = vp_safepath_parent(root_fd, from, lfrom);
	if (*ffd < 0)
		return *ffd;
	*tfd = vp_safepath_parent(root_fd, to, lto);
	if (*tfd < 0) {
		close(*ffd);
		return *tfd;
	}
	return 0;
}

int vp_safepath_rename(int root_fd, const char *from, const char *to)
{
	const char *lfrom, *lto;
	int ffd, tfd, rc = two_parents(root_fd, from, to, &ffd, &lfrom, &tfd, &lto);

	if (rc)
		return rc;
	if (renameat(ffd, lfrom, tfd, lto))	/* never follows either last component */
		rc = -errno;
	close(tfd);
	close(ffd);
	return rc;
}

int vp_safepath_link(int root_fd, const char *from, const char *to)
{
	const char *lfrom, *lto;
	int ffd, tfd, rc = two_parents(root_fd, from, to, &ffd, &lfrom, &tfd, &lto);

	if (rc)
		return rc;
	if (linkat(ffd, lfrom, tfd, lto, 0))	/* no AT_SYMLINK_FOLLOW: a symlink gets the link */
		rc = -errno;
	close(tfd);
	close(ffd);
	return rc;
}

int vp_safepath_symlink(int root_fd, const char *target, const char *path)
{
	const char *leaf;
	int dfd = vp_safepath_parent(root_fd, path, &leaf), rc = 0;

	if (dfd < 0)
		return dfd;
	if (symlinkat(target, dfd, leaf))
		rc = -errno;
	close(dfd);
	return rc;
}

int vp_safepath_open(int root_fd, const char *path, int flags, mode_t mode)
{
	const char *leaf;
	int dfd = vp_safepath_parent(root_fd, path, &leaf), fd;

	if (dfd < 0)
		return dfd;
	{
		/* the last component contained too: not a link, not another mount */
		struct open_how how = {
			.flags = (uint64_t)(flags | O_NOFOLLOW | O_CLOEXEC),
			.mode = (flags & (O_CREAT | __O_TMPFILE)) ? mode : 0,
			.resolve = RESOLVE_CONTAINED,
		};
		long rc = syscall(SYS_openat2, dfd, leaf, &how, sizeof(how));

		fd = rc < 0 ? -errno : (int)rc;
	}
	close(dfd);
	return fd;
}
