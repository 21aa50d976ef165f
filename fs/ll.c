/*
 * ll: the FUSE low-level adapter.  Each handler decodes its request, calls
 * the engine (ns.h) and sends exactly one reply.  Engine errors are -errno;
 * reply_err() is the one place that turns them into FUSE replies.
 *
 * Opens that may write get direct_io (writes bypass the page cache: 1.0x
 * tmpfs here, see docs/design.md); read-only opens keep the page cache,
 * so mmap(MAP_SHARED) works and re-reads are served by the kernel.
 */
#define FUSE_USE_VERSION 314
#define _GNU_SOURCE
#include "ll.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "../engine/clock.h"
#include "../engine/log.h"
#include "../engine/metrics.h"
#include "../engine/ns.h"

#define ENTRY_TIMEOUT 1.0
#define ATTR_TIMEOUT 1.0

static struct vp_ns *ns_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

/* Who makes the request: the thread (for the replica's installer check) and the owner. */
static struct vp_caller caller_of(fuse_req_t req)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);

	return (struct vp_caller){ .tid = ctx->pid, .uid = ctx->uid, .gid = ctx->gid };
}

static struct vp_handle *handle_of(struct fuse_file_info *fi)
{
	return fi ? (struct vp_handle *)(uintptr_t)fi->fh : NULL;
}

static void reply_err(fuse_req_t req, int rc)
{
	fuse_reply_err(req, rc < 0 ? -rc : rc);
}

static void reply_entry(fuse_req_t req, int rc, const struct stat *st)
{
	struct fuse_entry_param e;

	if (rc) {
		reply_err(req, rc);
		return;
	}
	memset(&e, 0, sizeof(e));
	e.ino = st->st_ino;
	e.attr = *st;
	e.attr_timeout = ATTR_TIMEOUT;
	e.entry_timeout = ENTRY_TIMEOUT;
	fuse_reply_entry(req, &e);
}

static void vpfs_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	conn->max_write = VPFS_MAX_REQUEST;
	conn->max_read = VPFS_MAX_REQUEST;
	conn->max_readahead = VPFS_MAX_REQUEST;
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
	if (conn->capable & FUSE_CAP_ASYNC_READ)
		conn->want |= FUSE_CAP_ASYNC_READ;
	if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
		conn->want |= FUSE_CAP_PARALLEL_DIROPS;
	/* flock() and fcntl() locks stay node-local: the kernel does them */
	conn->want &= ~(FUSE_CAP_POSIX_LOCKS | FUSE_CAP_FLOCK_LOCKS);
	/* writeback cache and splice measured no gain here */
	conn->want &= ~(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_SPLICE_WRITE |
			FUSE_CAP_SPLICE_MOVE | FUSE_CAP_SPLICE_READ);
}

static void vpfs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct stat st;
	int rc = vp_ns_lookup(ns_of(req), parent, name, &st);

	reply_entry(req, rc, &st);
}

static void vpfs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	vp_ns_forget(ns_of(req), ino, nlookup);
	fuse_reply_none(req);
}

static void vpfs_forget_multi(fuse_req_t req, size_t count,
			      struct fuse_forget_data *forgets)
{
	for (size_t i = 0; i < count; i++)
		vp_ns_forget(ns_of(req), forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

static void vpfs_getattr(fuse_req_t req, fuse_ino_t ino,
			 struct fuse_file_info *fi)
{
	struct stat st;
	int rc = vp_ns_getattr(ns_of(req), ino, &st);

	(void)fi;
	if (rc)
		reply_err(req, rc);
	else
		fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

static void vpfs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
			 int to_set, struct fuse_file_info *fi)
{
	struct vp_setattr sa = {
		.set_mode = !!(to_set & FUSE_SET_ATTR_MODE),
		.set_uid = !!(to_set & FUSE_SET_ATTR_UID),
		.set_gid = !!(to_set & FUSE_SET_ATTR_GID),
		.set_size = !!(to_set & FUSE_SET_ATTR_SIZE),
		.set_atime = !!(to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_ATIME_NOW)),
		.set_mtime = !!(to_set & (FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW)),
		.atime_now = !!(to_set & FUSE_SET_ATTR_ATIME_NOW),
		.mtime_now = !!(to_set & FUSE_SET_ATTR_MTIME_NOW),
		.mode = attr->st_mode,
		.uid = attr->st_uid,
		.gid = attr->st_gid,
		.size = (uint64_t)attr->st_size,
		.atime = attr->st_atim,
		.mtime = attr->st_mtim,
	};
	const struct vp_caller who = caller_of(req);
	struct stat st;
	int rc;

	if (sa.set_size && attr->st_size < 0) {
		reply_err(req, -EINVAL);
		return;
	}
	rc = vp_ns_setattr(ns_of(req), &who, ino, &sa, handle_of(fi), &st);
	if (rc)
		reply_err(req, rc);
	else
		fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

static void vpfs_readlink(fuse_req_t req, fuse_ino_t ino)
{
	char buf[PATH_MAX];
	int rc = vp_ns_readlink(ns_of(req), ino, buf, sizeof(buf));

	if (rc)
		reply_err(req, rc);
	else
		fuse_reply_readlink(req, buf);
}

static void vpfs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
		       mode_t mode)
{
	const struct vp_caller who = caller_of(req);
	struct stat st;
	int rc = vp_ns_mkdir(ns_of(req), &who, parent, name,
			     mode & ~fuse_req_ctx(req)->umask, &st);

	reply_entry(req, rc, &st);
}

static void vpfs_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
		       mode_t mode, dev_t rdev)
{
	(void)parent;
	(void)name;
	(void)mode;
	(void)rdev;
	/* regular files come through create(); devices and FIFOs are no model files */
	reply_err(req, -EPERM);
}

static void vpfs_symlink(fuse_req_t req, const char *link, fuse_ino_t parent,
			 const char *name)
{
	const struct vp_caller who = caller_of(req);
	struct stat st;
	int rc = vp_ns_symlink(ns_of(req), &who, parent, name, link, &st);

	reply_entry(req, rc, &st);
}

static void vpfs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	const struct vp_caller who = caller_of(req);

	reply_err(req, vp_ns_unlink(ns_of(req), &who, parent, name));
}

static void vpfs_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	const struct vp_caller who = caller_of(req);

	reply_err(req, vp_ns_rmdir(ns_of(req), &who, parent, name));
}

static void vpfs_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
			fuse_ino_t newparent, const char *newname,
			unsigned int flags)
{
	const struct vp_caller who = caller_of(req);

	reply_err(req, vp_ns_rename(ns_of(req), &who, parent, name, newparent,
				    newname, flags));
}

static void vpfs_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
		      const char *newname)
{
	(void)ino;
	(void)newparent;
	(void)newname;
	reply_err(req, -EPERM);	/* hard links: not supported, as on many FUSE file systems */
}

static void set_open_flags(struct fuse_file_info *fi, struct vp_handle *h,
			   int keep_cache)
{
	fi->fh = (uintptr_t)h;
	if (vp_handle_writable(h)) {
		fi->direct_io = 1;
		fi->keep_cache = 0;
	} else {
		fi->direct_io = 0;
		fi->keep_cache = keep_cache;
	}
}

static void vpfs_create(fuse_req_t req, fuse_ino_t parent, const char *name,
			mode_t mode, struct fuse_file_info *fi)
{
	const struct vp_caller who = caller_of(req);
	struct vp_handle *h;
	struct fuse_entry_param e;
	int rc;

	memset(&e, 0, sizeof(e));
	rc = vp_ns_create(ns_of(req), &who, parent, name,
			  mode & ~fuse_req_ctx(req)->umask, fi->flags, &e.attr, &h);
	if (rc) {
		reply_err(req, rc);
		return;
	}
	set_open_flags(fi, h, 0);
	e.ino = e.attr.st_ino;
	e.attr_timeout = ATTR_TIMEOUT;
	e.entry_timeout = ENTRY_TIMEOUT;
	if (fuse_reply_create(req, &e, fi) == -ENOENT) {
		/* interrupted: the kernel will not release it */
		vp_ns_release(ns_of(req), h);
		vp_ns_forget(ns_of(req), e.ino, 1);
	}
}

static void vpfs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	const struct vp_caller who = caller_of(req);
	struct vp_handle *h;
	int keep_cache = 0;
	int rc = vp_ns_open(ns_of(req), &who, ino, fi->flags, &h, &keep_cache);

	if (rc) {
		reply_err(req, rc);
		return;
	}
	set_open_flags(fi, h, keep_cache);
	if (fuse_reply_open(req, fi) == -ENOENT)
		vp_ns_release(ns_of(req), h);
}

static void vpfs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		      struct fuse_file_info *fi)
{
	struct iovec iov[VP_READ_MAX_SEGS];
	struct vp_read rd;
	ssize_t n;

	(void)ino;
	n = vp_ns_read(ns_of(req), handle_of(fi), (uint64_t)off, size, &rd);
	if (n < 0) {
		reply_err(req, (int)n);
		return;
	}
	for (unsigned int i = 0; i < rd.nseg; i++) {
		iov[i].iov_base = (void *)rd.seg[i].ptr;
		iov[i].iov_len = rd.seg[i].len;
	}
	fuse_reply_iov(req, iov, (int)rd.nseg);
	vp_read_release(&rd);
}

static void vpfs_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
		       size_t size, off_t off, struct fuse_file_info *fi)
{
	ssize_t n;

	(void)ino;
	n = vp_ns_write(ns_of(req), handle_of(fi), buf, size, (uint64_t)off);
	if (n < 0)
		reply_err(req, (int)n);
	else
		fuse_reply_write(req, (size_t)n);
}

static void vpfs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	const struct vp_caller who = caller_of(req);

	(void)ino;
	reply_err(req, vp_ns_flush(ns_of(req), &who, handle_of(fi)));
}

static void vpfs_release(fuse_req_t req, fuse_ino_t ino,
			 struct fuse_file_info *fi)
{
	(void)ino;
	reply_err(req, vp_ns_release(ns_of(req), handle_of(fi)));
}

static void vpfs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
		       struct fuse_file_info *fi)
{
	(void)ino;
	(void)datasync;
	reply_err(req, vp_ns_fsync(ns_of(req), handle_of(fi)));
}

static void vpfs_opendir(fuse_req_t req, fuse_ino_t ino,
			 struct fuse_file_info *fi)
{
	struct vp_dir *dir;
	int rc = vp_ns_opendir(ns_of(req), ino, &dir);

	if (rc) {
		reply_err(req, rc);
		return;
	}
	fi->fh = (uintptr_t)dir;
	if (fuse_reply_open(req, fi) == -ENOENT)
		vp_ns_releasedir(dir);
}

static void vpfs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size,
			 off_t off, struct fuse_file_info *fi)
{
	struct vp_dir *dir = (struct vp_dir *)(uintptr_t)fi->fh;
	const struct vp_dirent *ent;
	char *buf = malloc(size);
	size_t used = 0;

	(void)ino;
	if (!buf) {
		reply_err(req, -ENOMEM);
		return;
	}
	for (size_t i = (size_t)off; (ent = vp_dir_entry(dir, i)); i++) {
		struct stat st = { .st_ino = ent->ino, .st_mode = ent->type };
		size_t need = fuse_add_direntry(req, buf + used, size - used,
						ent->name, &st, (off_t)(i + 1));

		if (need > size - used)
			break;
		used += need;
	}
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void vpfs_releasedir(fuse_req_t req, fuse_ino_t ino,
			    struct fuse_file_info *fi)
{
	(void)ino;
	vp_ns_releasedir((struct vp_dir *)(uintptr_t)fi->fh);
	reply_err(req, 0);
}

static void vpfs_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync,
			  struct fuse_file_info *fi)
{
	(void)datasync;
	(void)fi;
	reply_err(req, vp_ns_fsyncdir(ns_of(req), ino));
}

static void vpfs_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv;
	int rc = vp_ns_statfs(ns_of(req), &sv);

	(void)ino;
	if (rc)
		reply_err(req, rc);
	else
		fuse_reply_statfs(req, &sv);
}

/* Replies to getxattr/listxattr: a size probe (size 0) or the value. */
static void reply_xattr(fuse_req_t req, ssize_t n, const char *buf, size_t size)
{
	if (n < 0)
		reply_err(req, (int)n);
	else if (size == 0)
		fuse_reply_xattr(req, (size_t)n);
	else
		fuse_reply_buf(req, buf, (size_t)n);
}

static void vpfs_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			  size_t size)
{
	char *buf = size ? malloc(size) : NULL;

	if (size && !buf)
		reply_err(req, -ENOMEM);
	else
		reply_xattr(req, vp_ns_getxattr(ns_of(req), ino, name, buf, size),
			    buf, size);
	free(buf);
}

static void vpfs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	char *buf = size ? malloc(size) : NULL;

	if (size && !buf)
		reply_err(req, -ENOMEM);
	else
		reply_xattr(req, vp_ns_listxattr(ns_of(req), ino, buf, size), buf, size);
	free(buf);
}

static void vpfs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			  const char *value, size_t size, int flags)
{
	(void)ino;
	(void)name;
	(void)value;
	(void)size;
	(void)flags;
	reply_err(req, -ENOTSUP);
}

static void vpfs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	(void)ino;
	(void)name;
	reply_err(req, -ENOTSUP);
}

static void vpfs_fallocate(fuse_req_t req, fuse_ino_t ino, int mode,
			   off_t offset, off_t length, struct fuse_file_info *fi)
{
	(void)ino;
	(void)mode;
	(void)offset;
	(void)length;
	(void)fi;
	reply_err(req, -EOPNOTSUPP);
}


/*
 * Every request is counted and timed for the metrics endpoint: each
 * handler replies before it returns, so its run time is the request's
 * time in the daemon.
 */
#define TIMED(op, fn, params, args)					\
	static void timed_##fn params					\
	{								\
		double t0 = vp_now();					\
									\
		fn args;						\
		vp_metrics_fuse_op(op, vp_now() - t0);			\
	}

TIMED(VP_FOP_LOOKUP, vpfs_lookup, (fuse_req_t req, fuse_ino_t parent, const char *name), (req, parent, name))
TIMED(VP_FOP_FORGET, vpfs_forget, (fuse_req_t req, fuse_ino_t ino, uint64_t nlookup), (req, ino, nlookup))
TIMED(VP_FOP_FORGET, vpfs_forget_multi, (fuse_req_t req, size_t count, struct fuse_forget_data *forgets), (req, count, forgets))
TIMED(VP_FOP_GETATTR, vpfs_getattr, (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi), (req, ino, fi))
TIMED(VP_FOP_SETATTR, vpfs_setattr, (fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi), (req, ino, attr, to_set, fi))
TIMED(VP_FOP_READLINK, vpfs_readlink, (fuse_req_t req, fuse_ino_t ino), (req, ino))
TIMED(VP_FOP_MKDIR, vpfs_mkdir, (fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode), (req, parent, name, mode))
TIMED(VP_FOP_MKNOD, vpfs_mknod, (fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev), (req, parent, name, mode, rdev))
TIMED(VP_FOP_SYMLINK, vpfs_symlink, (fuse_req_t req, const char *link, fuse_ino_t parent, const char *name), (req, link, parent, name))
TIMED(VP_FOP_UNLINK, vpfs_unlink, (fuse_req_t req, fuse_ino_t parent, const char *name), (req, parent, name))
TIMED(VP_FOP_RMDIR, vpfs_rmdir, (fuse_req_t req, fuse_ino_t parent, const char *name), (req, parent, name))
TIMED(VP_FOP_RENAME, vpfs_rename, (fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent, const char *newname, unsigned int flags), (req, parent, name, newparent, newname, flags))
TIMED(VP_FOP_LINK, vpfs_link, (fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname), (req, ino, newparent, newname))
TIMED(VP_FOP_CREATE, vpfs_create, (fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi), (req, parent, name, mode, fi))
TIMED(VP_FOP_OPEN, vpfs_open, (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi), (req, ino, fi))
TIMED(VP_FOP_READ, vpfs_read, (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi), (req, ino, size, off, fi))
TIMED(VP_FOP_WRITE, vpfs_write, (fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off, struct fuse_file_info *fi), (req, ino, buf, size, off, fi))
TIMED(VP_FOP_FLUSH, vpfs_flush, (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi), (req, ino, fi))
TIMED(VP_FOP_RELEASE, vpfs_release, (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi), (req, ino, fi))
TIMED(VP_FOP_FSYNC, vpfs_fsync, (fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi), (req, ino, datasync, fi))
TIMED(VP_FOP_OPENDIR, vpfs_opendir, (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi), (req, ino, fi))
TIMED(VP_FOP_READDIR, vpfs_readdir, (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi), (req, ino, size, off, fi))
TIMED(VP_FOP_RELEASEDIR, vpfs_releasedir, (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi), (req, ino, fi))
TIMED(VP_FOP_FSYNCDIR, vpfs_fsyncdir, (fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi), (req, ino, datasync, fi))
TIMED(VP_FOP_STATFS, vpfs_statfs, (fuse_req_t req, fuse_ino_t ino), (req, ino))
TIMED(VP_FOP_GETXATTR, vpfs_getxattr, (fuse_req_t req, fuse_ino_t ino, const char *name, size_t size), (req, ino, name, size))
TIMED(VP_FOP_LISTXATTR, vpfs_listxattr, (fuse_req_t req, fuse_ino_t ino, size_t size), (req, ino, size))
TIMED(VP_FOP_SETXATTR, vpfs_setxattr, (fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size, int flags), (req, ino, name, value, size, flags))
TIMED(VP_FOP_REMOVEXATTR, vpfs_removexattr, (fuse_req_t req, fuse_ino_t ino, const char *name), (req, ino, name))
TIMED(VP_FOP_FALLOCATE, vpfs_fallocate, (fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length, struct fuse_file_info *fi), (req, ino, mode, offset, length, fi))

const struct fuse_lowlevel_ops vpfs_ops = {
	.init = vpfs_init,
	.lookup = timed_vpfs_lookup,
	.forget = timed_vpfs_forget,
	.forget_multi = timed_vpfs_forget_multi,
	.getattr = timed_vpfs_getattr,
	.setattr = timed_vpfs_setattr,
	.readlink = timed_vpfs_readlink,
	.mknod = timed_vpfs_mknod,
	.mkdir = timed_vpfs_mkdir,
	.unlink = timed_vpfs_unlink,
	.rmdir = timed_vpfs_rmdir,
	.symlink = timed_vpfs_symlink,
	.rename = timed_vpfs_rename,
	.link = timed_vpfs_link,
	.open = timed_vpfs_open,
	.read = timed_vpfs_read,
	.write = timed_vpfs_write,
	.flush = timed_vpfs_flush,
	.release = timed_vpfs_release,
	.fsync = timed_vpfs_fsync,
	.opendir = timed_vpfs_opendir,
	.readdir = timed_vpfs_readdir,
	.releasedir = timed_vpfs_releasedir,
	.fsyncdir = timed_vpfs_fsyncdir,
	.statfs = timed_vpfs_statfs,
	.setxattr = timed_vpfs_setxattr,
	.getxattr = timed_vpfs_getxattr,
	.listxattr = timed_vpfs_listxattr,
	.removexattr = timed_vpfs_removexattr,
	.create = timed_vpfs_create,
	.fallocate = timed_vpfs_fallocate,
};
