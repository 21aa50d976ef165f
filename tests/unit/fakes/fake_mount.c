/*
 * A fake FUSE mount for the replication tests, at the level of
 * engine/safepath.h: a consumer's repl thread installs versions by
 * syscalls on its mount (safepath.h), which the kernel turns into FUSE
 * requests that fs/ll.c hands to the namespace.  Here the vp_safepath_*
 * calls go straight to the namespace in fake_mount.ns, as fs/ll.c would
 * take them: the caller is this thread (fake_caller()), a name is looked up
 * component by component, O_CREAT of a missing file is a create, and an
 * open is followed at once by the flush and release of the close (the
 * returned fd is /dev/null, which the caller closes).  root_fd (the real
 * directory under the "mount") is not used.
 *
 * Included by the unit tests (#include "fakes/fake_mount.c"), so that the
 * linker never pulls engine/safepath.o out of libviper.a.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../../engine/ns.h"
#include "../../../engine/safepath.h"

static struct {
	struct vp_ns *ns;		/* the consumer's namespace */
	unsigned int opens, creates, renames;
} fake_mount;

/* The thread that makes the call, as fs/ll.c would name a FUSE request's. */
static const struct vp_caller *fake_caller(void)
{
	static __thread struct vp_caller who;

	who.tid = gettid();
	return &who;
}

/*
 * Looks up path's parent directory, component by component, making the
 * missing ones (mode 0755) if mkdirs; *leaf points at the last component
 * in buf.  Returns 0 or -errno.
 */
static int fake_mount_walk(const char *path, int mkdirs, char *buf, size_t len,
			   uint64_t *parent, const char **leaf)
{
	uint64_t ino = VP_ROOT_INO;
	char *name, *slash;

	if (!*path || *path == '/')
		return -EINVAL;
	if (snprintf(buf, len, "%s", path) >= (int)len)
		return -ENAMETOOLONG;
	for (name = buf; (slash = strchr(name, '/')); name = slash + 1) {
		struct stat st;
		int rc;

		*slash = '\0';
		rc = vp_ns_lookup(fake_mount.ns, ino, name, &st);
		if (rc == -ENOENT && mkdirs)
			rc = vp_ns_mkdir(fake_mount.ns, fake_caller(), ino, name, 0755, &st);
		if (rc)
			return rc;
		vp_ns_forget(fake_mount.ns, st.st_ino, 1);	/* the kernel's reference */
		if (!S_ISDIR(st.st_mode))
			return -ENOTDIR;
		ino = st.st_ino;
	}
	*parent = ino;
	*leaf = name;
	return 0;
}

static int fake_mount_parent(const char *path, char *buf, size_t len, uint64_t *parent,
			     const char **leaf)
{
	return fake_mount_walk(path, 0, buf, len, parent, leaf);
}

/* A node reference that a successful mkdir, symlink or create took goes back. */
static int fake_mount_forget_new(int rc, const struct stat *st)
{
	if (!rc)
		vp_ns_forget(fake_mount.ns, st->st_ino, 1);
	return rc;
}

int vp_safepath_parent(int root_fd, const char *path, const char **leaf)
{
	(void)root_fd;
	(void)path;
	(void)leaf;
	return -ENOSYS;		/* an O_PATH fd of the namespace: not in this fake */
}

int vp_safepath_mkdir(int root_fd, const char *path, mode_t mode)
{
	char buf[PATH_MAX];
	const char *leaf;
	uint64_t parent;
	struct stat st;
	int rc = fake_mount_parent(path, buf, sizeof(buf), &parent, &leaf);

	(void)root_fd;
	if (!rc)
		rc = fake_mount_forget_new(vp_ns_mkdir(fake_mount.ns, fake_caller(), parent, leaf, mode, &st),
					   &st);
	return rc;
}

int vp_safepath_mkparents(int root_fd, const char *path)
{
	char buf[PATH_MAX];
	const char *leaf;
	uint64_t parent;

	(void)root_fd;
	return fake_mount_walk(path, 1, buf, sizeof(buf), &parent, &leaf);
}

int vp_safepath_unlink(int root_fd, const char *path, int flags)
{
	char buf[PATH_MAX];
	const char *leaf;
	uint64_t parent;
	int rc = fake_mount_parent(path, buf, sizeof(buf), &parent, &leaf);

	(void)root_fd;
	if (rc)
		return rc;
	return (flags & AT_REMOVEDIR) ? vp_ns_rmdir(fake_mount.ns, fake_caller(), parent, leaf) :
		vp_ns_unlink(fake_mount.ns, fake_caller(), parent, leaf);
}

int vp_safepath_rename(int root_fd, const char *from, const char *to)
{
	char buf_from[PATH_MAX], buf_to[PATH_MAX];
	const char *leaf_from, *leaf_to;
	uint64_t parent_from, parent_to;
	int rc;

	(void)root_fd;
	rc = fake_mount_parent(from, buf_from, sizeof(buf_from), &parent_from, &leaf_from);
	if (!rc)
		rc = fake_mount_parent(to, buf_to, sizeof(buf_to), &parent_to, &leaf_to);
	if (!rc)
		rc = vp_ns_rename(fake_mount.ns, fake_caller(), parent_from, leaf_from, parent_to, leaf_to, 0);
	if (!rc)
		fake_mount.renames++;
	return rc;
}

int vp_safepath_link(int root_fd, const char *from, const char *to)
{
	char buf_from[PATH_MAX], buf_to[PATH_MAX];
	const char *leaf_from, *leaf_to;
	uint64_t parent_from, parent_to, ino;
	struct stat st;
	int rc;

	(void)root_fd;
	rc = fake_mount_parent(from, buf_from, sizeof(buf_from), &parent_from, &leaf_from);
	if (!rc)
		rc = fake_mount_parent(to, buf_to, sizeof(buf_to), &parent_to, &leaf_to);
	if (!rc)
		rc = vp_ns_lookup(fake_mount.ns, parent_from, leaf_from, &st);
	if (rc)
		return rc;
	ino = st.st_ino;
	vp_ns_forget(fake_mount.ns, ino, 1);	/* its name holds it */
	return fake_mount_forget_new(vp_ns_link(fake_mount.ns, fake_caller(), ino, parent_to, leaf_to,
						&st), &st);
}

int vp_safepath_symlink(int root_fd, const char *target, const char *path)
{
	char buf[PATH_MAX];
	const char *leaf;
	uint64_t parent;
	struct stat st;
	int rc = fake_mount_parent(path, buf, sizeof(buf), &parent, &leaf);

	(void)root_fd;
	if (!rc)
		rc = fake_mount_forget_new(vp_ns_symlink(fake_mount.ns, fake_caller(), parent, leaf, target,
							 &st), &st);
	return rc;
}

int vp_safepath_mknod(int root_fd, const char *path, mode_t mode, dev_t rdev)
{
	char buf[PATH_MAX];
	const char *leaf;
	uint64_t parent;
	struct stat st;
	int rc = fake_mount_parent(path, buf, sizeof(buf), &parent, &leaf);

	(void)root_fd;
	if (!rc)
		rc = fake_mount_forget_new(vp_ns_mknod(fake_mount.ns, fake_caller(), parent, leaf, mode,
						       rdev, &st), &st);
	return rc;
}

int vp_safepath_open(int root_fd, const char *path, int flags, mode_t mode)
{
	char buf[PATH_MAX];
	const char *leaf;
	uint64_t parent;
	struct vp_handle *h = NULL;
	struct stat st;
	int keep, rc = fake_mount_parent(path, buf, sizeof(buf), &parent, &leaf);

	(void)root_fd;
	if (rc)
		return rc;
	rc = vp_ns_lookup(fake_mount.ns, parent, leaf, &st);
	if (rc == -ENOENT && (flags & O_CREAT)) {
		rc = vp_ns_create(fake_mount.ns, fake_caller(), parent, leaf, mode, flags, &st, &h);
		fake_mount.creates += !rc;
	} else if (!rc) {
		rc = vp_ns_open(fake_mount.ns, fake_caller(), st.st_ino, flags, &h, &keep);
		vp_ns_forget(fake_mount.ns, st.st_ino, 1);	/* the lookup's reference */
		st.st_ino = 0;
	}
	if (rc)
		return rc;
	if (st.st_ino)
		vp_ns_forget(fake_mount.ns, st.st_ino, 1);	/* the create's reference */
	fake_mount.opens++;
	/* the caller only closes it: the close's FLUSH and RELEASE come now */
	vp_ns_flush(fake_mount.ns, fake_caller(), h);
	rc = vp_ns_release(fake_mount.ns, h);
	if (rc)
		return rc;
	rc = open("/dev/null", O_RDONLY | O_CLOEXEC);
	return rc < 0 ? -errno : rc;
}
