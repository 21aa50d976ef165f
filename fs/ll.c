/*
 * ll: the FUSE low-level adapter.  Each handler decodes its request, calls
 * the engine (ns.h) and sends exactly one reply.  Engine errors are -errno;
 * reply_err() is the one place that turns them into FUSE replies.
 *
 * Opens that may write get direct_io (writes bypass the page cache: 1.0x
 * tmpfs here, see docs/design.md).  A read-only open of a committed
 * version, whose bytes are a sealed memory file, gets FUSE passthrough
 * where the kernel and libfuse have it (the kernel reads and maps the
 * memory file itself: no copy, no daemon CPU); the other read-only opens
 * then get direct_io too, so that no open puts an inode in the kernel's
 * caching mode, which passthrough opens refuse (engine/ns/pt.c).
 * Without passthrough (-o passthrough=off, or refused), read-only opens
 * keep the page cache, and reads of memory files are spliced from them.
 */
#define FUSE_USE_VERSION 314
#define _GNU_SOURCE
#include "ll.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/uio.h>

#include "../engine/clock.h"
#include "../engine/log.h"
#include "../engine/metrics.h"
#include "../engine/mfile.h"
#include "../engine/ns.h"

/*
 * The kernel orders requests: one sent after another's reply sees what
 * its handler did (a READ after its OPEN, a RELEASE after its FLUSH).
 * That order reaches the worker threads through /dev/fuse, where TSan
 * cannot see it; a TSan build tells it, with the same edges: what a
 * handler did before its reply happens before every handler that starts
 * later (each reply function releases, each handler acquires).  Handlers
 * that overlap get no edge, so their races still show.
 */
#ifdef __SANITIZE_THREAD__
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
static char kernel_order;
#define KERNEL_ORDER_BEGIN() __tsan_acquire(&kernel_order)
#define KERNEL_ORDER_END() __tsan_release(&kernel_order)
/* the edge starts where the reply goes, before the next request can come */
#define fuse_reply_attr(...) (KERNEL_ORDER_END(), fuse_reply_attr(__VA_ARGS__))
#define fuse_reply_buf(...) (KERNEL_ORDER_END(), fuse_reply_buf(__VA_ARGS__))
#define fuse_reply_create(...) (KERNEL_ORDER_END(), fuse_reply_create(__VA_ARGS__))
#define fuse_reply_data(...) (KERNEL_ORDER_END(), fuse_reply_data(__VA_ARGS__))
#define fuse_reply_entry(...) (KERNEL_ORDER_END(), fuse_reply_entry(__VA_ARGS__))
#define fuse_reply_err(...) (KERNEL_ORDER_END(), fuse_reply_err(__VA_ARGS__))
#define fuse_reply_iov(...) (KERNEL_ORDER_END(), fuse_reply_iov(__VA_ARGS__))
#define fuse_reply_none(...) (KERNEL_ORDER_END(), fuse_reply_none(__VA_ARGS__))
#define fuse_reply_open(...) (KERNEL_ORDER_END(), fuse_reply_open(__VA_ARGS__))
#define fuse_reply_readlink(...) (KERNEL_ORDER_END(), fuse_reply_readlink(__VA_ARGS__))
#define fuse_reply_statfs(...) (KERNEL_ORDER_END(), fuse_reply_statfs(__VA_ARGS__))
#define fuse_reply_write(...) (KERNEL_ORDER_END(), fuse_reply_write(__VA_ARGS__))
#define fuse_reply_xattr(...) (KERNEL_ORDER_END(), fuse_reply_xattr(__VA_ARGS__))
#else
#define KERNEL_ORDER_BEGIN() ((void)0)
#define KERNEL_ORDER_END() ((void)0)
#endif

#define ENTRY_TIMEOUT 1.0
#define ATTR_TIMEOUT 1.0

static struct vp_ns *ns_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

/*
 * The adapter's own state, one mount per process: whether passthrough is
 * on, the lock that serialises the passthrough bookkeeping (ns.h), and the
 * notifier thread that sends the namespace's invalidations.  Those must
 * not be sent from a request handler: the kernel takes the parent
 * directory's lock, which the request's caller may hold.
 */
struct inval {
	STAILQ_ENTRY(inval) link;
	fuse_ino_t parent;		/* the entry's directory, or the inode whose attributes changed */
	int inode;			/* 1: the inode's attributes, not an entry */
	char name[];
};

static struct {
	int pt;				/* passthrough opens happen (atomic: the fallback turns it off) */
	pthread_mutex_t pt_lock;
	struct fuse_session *se;
	pthread_t notifier;
	int notifier_started;
	pthread_mutex_t lock;		/* the queue and stop */
	pthread_cond_t cond;
	STAILQ_HEAD(, inval) queue;
	int stop;
} ll = {
	.pt_lock = PTHREAD_MUTEX_INITIALIZER,
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.cond = PTHREAD_COND_INITIALIZER,
	.queue = STAILQ_HEAD_INITIALIZER(ll.queue),
};

static void queue_inval(uint64_t ino, int inode, const char *name)
{
	size_t len = strlen(name);
	struct inval *iv = malloc(sizeof(*iv) + len + 1);

	if (!iv)
		return;		/* it times out on its own (ENTRY_TIMEOUT, ATTR_TIMEOUT) */
	iv->parent = ino;
	iv->inode = inode;
	memcpy(iv->name, name, len + 1);
	pthread_mutex_lock(&ll.lock);
	STAILQ_INSERT_TAIL(&ll.queue, iv, link);
	pthread_cond_signal(&ll.cond);
	pthread_mutex_unlock(&ll.lock);
}

static void queue_inval_entry(void *arg, uint64_t parent, const char *name)
{
	(void)arg;
	queue_inval(parent, 0, name);
}

static void queue_inval_attr(void *arg, uint64_t ino)
{
	(void)arg;
	queue_inval(ino, 1, "");
}

static void *notifier_main(void *arg)
{
	int stop;

	(void)arg;
	pthread_mutex_lock(&ll.lock);
	for (;;) {
		struct inval *iv;

		while (!ll.stop && STAILQ_EMPTY(&ll.queue))
			pthread_cond_wait(&ll.cond, &ll.lock);
		iv = STAILQ_FIRST(&ll.queue);
		if (!iv)
			break;
		STAILQ_REMOVE_HEAD(&ll.queue, link);
		stop = ll.stop;
		pthread_mutex_unlock(&ll.lock);
		if (!stop && iv->inode)
			fuse_lowlevel_notify_inval_inode(ll.se, iv->parent, -1, 0);	/* attributes only */
		else if (!stop)
			fuse_lowlevel_notify_inval_entry(ll.se, iv->parent, iv->name,
							 strlen(iv->name));
		free(iv);
		pthread_mutex_lock(&ll.lock);
	}
	pthread_mutex_unlock(&ll.lock);
	return NULL;
}

/* No request is served by the caller (ns.h): the kernel may take the directory's lock. */
static void send_inval_entry(void *arg, uint64_t parent, const char *name)
{
	int stop;

	(void)arg;
	pthread_mutex_lock(&ll.lock);
	stop = ll.stop;
	pthread_mutex_unlock(&ll.lock);
	if (!stop && ll.se)
		fuse_lowlevel_notify_inval_entry(ll.se, parent, name, strlen(name));
}

static const struct vp_ns_kernel kernel_ops = {
	.inval_entry = queue_inval_entry,
	.inval_attr = queue_inval_attr,
	.inval_entry_now = send_inval_entry,
};

int vpfs_ll_start(struct fuse_session *se, struct vp_ns *ns)
{
	ll.se = se;
	ll.stop = 0;
	if (pthread_create(&ll.notifier, NULL, notifier_main, NULL))
		return -1;
	ll.notifier_started = 1;
	vp_ns_set_kernel(ns, &kernel_ops, NULL);
	return 0;
}

void vpfs_ll_stop(struct vp_ns *ns)
{
	if (!ll.notifier_started)
		return;
	vp_ns_set_kernel(ns, NULL, NULL);
	pthread_mutex_lock(&ll.lock);
	ll.stop = 1;
	pthread_cond_signal(&ll.cond);
	pthread_mutex_unlock(&ll.lock);
	pthread_join(ll.notifier, NULL);
	ll.notifier_started = 0;
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

/* Which pages memory files get: one log line, and status (memory_pages). */
static void log_memory_pages(void)
{
	const char *mode;
	size_t huge = vp_mfile_huge(&mode);

	if (huge)
		vp_log(LOG_INFO, "fs", "memory files: %zu KiB pages (shmem_enabled=%s)", huge >> 10, mode);
	else
		vp_log(LOG_INFO, "fs", "memory files: 4 KiB pages (shmem_enabled=%s; 'advise' there makes a landing's fresh pages about 10x cheaper)",
		       mode);
}

/* Which read path the mount uses, and why: one log line, and status. */
static void choose_read_path(struct vp_ns *ns, struct fuse_conn_info *conn)
{
	const char *want = vp_ns_config(ns)->passthrough;
	char why[256];
	int pt = 0;

	if (!strcmp(want, "off")) {
		snprintf(why, sizeof(why), "-o passthrough=off");
	} else {
#if defined(FUSE_CAP_PASSTHROUGH) && defined(FUSE_CAP_DIRECT_IO_ALLOW_MMAP)
		if (!(conn->capable & FUSE_CAP_PASSTHROUGH)) {
			snprintf(why, sizeof(why), "the kernel did not offer FUSE passthrough at INIT (it needs Linux >= 6.9 with CONFIG_FUSE_PASSTHROUGH)");
		} else if (!(conn->capable & FUSE_CAP_DIRECT_IO_ALLOW_MMAP)) {
			/* the readers beside passthrough ones are direct_io, and must mmap */
			snprintf(why, sizeof(why), "the kernel does not allow mmap of direct_io files");
		} else {
			conn->want |= FUSE_CAP_PASSTHROUGH | FUSE_CAP_DIRECT_IO_ALLOW_MMAP;
			/* passthrough is refused silently above 1 (and with writeback_cache) */
			conn->max_backing_stack_depth = 1;
			pt = 1;
			snprintf(why, sizeof(why), "the kernel offered it (libfuse %s)",
				 fuse_pkgversion());
		}
#else
		(void)conn;
		snprintf(why, sizeof(why), "this build's libfuse (%s) has no passthrough (it needs >= 3.16)",
			 fuse_pkgversion());
#endif
	}
	__atomic_store_n(&ll.pt, pt, __ATOMIC_RELAXED);
	vp_ns_set_passthrough(ns, pt);
	vp_ns_set_read_path(ns, pt ? "passthrough" : "daemon", why);
	if (pt)
		vp_log(LOG_INFO, "fs", "read path: passthrough, from the versions' memory files (%s)", why);
	else
		vp_log(LOG_INFO, "fs", "read path: the daemon, spliced from the versions' memory files (%s)", why);
	log_memory_pages();
}

static void vpfs_init(void *userdata, struct fuse_conn_info *conn)
{
	/*
	 * A page under 1 MiB: libfuse splices a request only into a pipe that
	 * holds it with its header, and pipes stop at fs.pipe-max-size (1 MiB)
	 * without CAP_SYS_RESOURCE.  Spliced writes skip the daemon's copy.
	 */
	conn->max_write = VPFS_MAX_REQUEST - 4096;
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
	/*
	 * setuid/setgid (and security.capability) on write, truncate and
	 * chown by a caller without CAP_FSETID: the kernel clears them itself
	 * (a SETATTR) when the file system does not claim the job.
	 */
	conn->want &= ~(FUSE_CAP_HANDLE_KILLPRIV | FUSE_CAP_HANDLE_KILLPRIV_V2);
	/* writeback cache measured no gain here, and it rules passthrough out */
	conn->want &= ~(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_SPLICE_MOVE);
	/*
	 * Replies from memory files are spliced, not copied (iov replies are
	 * not affected), and so are writes into them (write_buf).
	 */
#ifndef __SANITIZE_THREAD__
	if (conn->capable & FUSE_CAP_SPLICE_WRITE)
		conn->want |= FUSE_CAP_SPLICE_WRITE;
	if (conn->capable & FUSE_CAP_SPLICE_READ)
		conn->want |= FUSE_CAP_SPLICE_READ;
#else
	/*
	 * TSan sees the kernel's ordering of requests (a FLUSH replied before
	 * the RELEASE that follows it) through read(2) and write(2) on
	 * /dev/fuse, not through splice(2): a TSan build does without.
	 */
	conn->want &= ~(FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_READ);
#endif
	choose_read_path(userdata, conn);
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

/*
 * FIFOs, sockets and device nodes are inodes of their own, whose I/O is
 * the kernel's (the daemon never opens them).  A regular file made by
 * mknod(2) is an empty file, created and closed: an empty version 1.
 */
static void vpfs_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
		       mode_t mode, dev_t rdev)
{
	const struct vp_caller who = caller_of(req);
	struct vp_ns *ns = ns_of(req);
	struct vp_handle *h;
	struct stat st;
	int rc;

	if (S_ISREG(mode)) {
		rc = vp_ns_create(ns, &who, parent, name, mode & 07777, O_CREAT | O_EXCL | O_WRONLY,
				  &st, &h);
		/* the name exists once created, and the entry holds the kernel's lookup */
		if (!rc && vp_ns_release(ns, h))
			vp_log(LOG_WARNING, "fs", "mknod '%s': the empty file's first version failed", name);
	} else {
		rc = vp_ns_mknod(ns, &who, parent, name, mode, rdev, &st);
	}
	reply_entry(req, rc, &st);
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
	const struct vp_caller who = caller_of(req);
	struct stat st;
	int rc = vp_ns_link(ns_of(req), &who, ino, newparent, newname, &st);

	reply_entry(req, rc, &st);
}

/*
 * A read-only open with passthrough on: the backing file, if this open
 * may have it (ns.h).  Returns 1 with fi->backing_id set, or 0.
 */
static int passthrough_open(fuse_req_t req, struct vp_handle *h,
			    struct fuse_file_info *fi)
{
	struct vp_ns *ns = ns_of(req);
	int fd = -1, id = 0, pfs = 0;
	enum vp_pt how;

	pthread_mutex_lock(&ll.pt_lock);
	how = vp_ns_pt_open(ns, h, &fd, &id, &pfs);
#ifdef FUSE_CAP_PASSTHROUGH
	if (how == VP_PT_REGISTER) {
		id = fuse_passthrough_open(req, fd);
		if (id <= 0 && pfs) {
			/* this PFS's files: through the daemon (lazy reads); memory files go on */
			vp_log(LOG_NOTICE, "fs", "read path: the kernel refused a file on the PFS as a backing file (%s); versions on the PFS only are read through the daemon",
			       strerror(errno));
			id = 0;
			vp_ns_set_passthrough_pfs(ns, 0);
		} else if (id <= 0) {
			int err = errno;

			id = 0;
			vp_log(LOG_WARNING, "fs", "read path: the kernel refused a backing file (%s%s); readers are served by the daemon from now on",
			       strerror(err), err == EPERM ? ": passthrough needs CAP_SYS_ADMIN" : "");
			vp_ns_set_read_path(ns, "daemon", err == EPERM ?
					    "the kernel refused a backing file: the daemon lacks CAP_SYS_ADMIN" :
					    "the kernel refused a backing file");
			__atomic_store_n(&ll.pt, 0, __ATOMIC_RELAXED);
			vp_ns_set_passthrough(ns, 0);
		}
		vp_ns_pt_set(ns, h, id, fd);
	}
#else
	(void)how;
	(void)fd;
#endif
	pthread_mutex_unlock(&ll.pt_lock);
	if (id > 0) {
#ifdef FUSE_CAP_PASSTHROUGH
		fi->backing_id = id;
#endif
		vp_metrics_add(VP_C_OPENS_PASSTHROUGH, 1);
		return 1;
	}
	(void)fi;
	return 0;
}

static void set_open_flags(fuse_req_t req, struct fuse_file_info *fi,
			   struct vp_handle *h, int keep_cache)
{
	fi->fh = (uintptr_t)h;
	fi->keep_cache = 0;
	if (vp_handle_writable(h)) {
		fi->direct_io = 1;
	} else if (__atomic_load_n(&ll.pt, __ATOMIC_RELAXED)) {
		/* either the kernel reads the memory file, or the daemon does, uncached */
		fi->direct_io = !passthrough_open(req, h, fi);
		if (fi->direct_io)
			vp_metrics_add(VP_C_OPENS_DAEMON, 1);
	} else {
		passthrough_open(req, h, fi);	/* counts the open: VP_PT_NONE without passthrough */
		fi->direct_io = 0;
		fi->keep_cache = keep_cache;
		vp_metrics_add(VP_C_OPENS_DAEMON, 1);
	}
}

/*
 * The release of what passthrough_open() counted, before the engine's.
 * req NULL: an open whose reply failed (the kernel never had it); its
 * backing id, if it was the inode's last, stays registered until unmount.
 */
static void passthrough_release(struct vp_ns *ns, fuse_req_t req, struct vp_handle *h)
{
	int id;

	pthread_mutex_lock(&ll.pt_lock);
	id = vp_ns_pt_close(ns, h);
	pthread_mutex_unlock(&ll.pt_lock);
#ifdef FUSE_CAP_PASSTHROUGH
	if (id > 0 && req)
		fuse_passthrough_close(req, id);
#else
	(void)id;
	(void)req;
#endif
}

static void vpfs_create(fuse_req_t req, fuse_ino_t parent, const char *name,
			mode_t mode, struct fuse_file_info *fi)
{
	const struct vp_caller who = caller_of(req);
	struct vp_ns *ns = ns_of(req);	/* a failed reply frees req */
	struct vp_handle *h;
	struct fuse_entry_param e;
	int rc;

	memset(&e, 0, sizeof(e));
	rc = vp_ns_create(ns, &who, parent, name,
			  mode & ~fuse_req_ctx(req)->umask, fi->flags, &e.attr, &h);
	if (rc) {
		reply_err(req, rc);
		return;
	}
	set_open_flags(req, fi, h, 0);
	e.ino = e.attr.st_ino;
	e.attr_timeout = ATTR_TIMEOUT;
	e.entry_timeout = ENTRY_TIMEOUT;
	if (fuse_reply_create(req, &e, fi) == -ENOENT) {
		/* interrupted: the kernel will not release it (and req is gone) */
		passthrough_release(ns, NULL, h);
		vp_ns_release(ns, h);
		vp_ns_forget(ns, e.ino, 1);
	}
}

static void vpfs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	const struct vp_caller who = caller_of(req);
	struct vp_ns *ns = ns_of(req);	/* a failed reply frees req */
	struct vp_handle *h;
	int keep_cache = 0;
	int rc = vp_ns_open(ns, &who, ino, fi->flags, &h, &keep_cache);

	if (rc) {
		reply_err(req, rc);
		return;
	}
	set_open_flags(req, fi, h, keep_cache);
	if (fuse_reply_open(req, fi) == -ENOENT) {
		passthrough_release(ns, NULL, h);	/* req is gone */
		vp_ns_release(ns, h);
	}
}

/*
 * A read of a sealed memory file: spliced from it into the reply (the
 * daemon never touches the bytes).  Returns 0 when it replied.
 */
static int splice_read(fuse_req_t req, struct vp_handle *h, size_t size, off_t off)
{
	struct vp_ns *ns = ns_of(req);	/* the reply frees req */
	int fd = vp_ns_handle_fd(h);
	uint64_t end = vp_ns_handle_size(h);
	struct fuse_bufvec bv = FUSE_BUFVEC_INIT(0);

	if (fd < 0)
		return -1;
	if ((uint64_t)off >= end)
		size = 0;
	else if (size > end - (uint64_t)off)
		size = (size_t)(end - (uint64_t)off);
	bv.buf[0].size = size;
	bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	bv.buf[0].fd = fd;
	bv.buf[0].pos = off;
	/*
	 * No SPLICE_F_MOVE: the kernel could steal the memory file's own pages
	 * from the pipe into the reader's page cache.
	 */
	if (fuse_reply_data(req, &bv, 0) == 0)
		vp_ns_count_read(ns, size);
	return 0;
}

static void vpfs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		      struct fuse_file_info *fi)
{
	struct iovec iov[VP_READ_MAX_SEGS];
	struct vp_read rd;
	ssize_t n;

	(void)ino;
	if (splice_read(req, handle_of(fi), size, off) == 0)
		return;
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

/* The bytes of a write request, spliced (or copied) into the working copy's memfd. */
static ssize_t fill_from_request(void *arg, int fd, uint64_t off, size_t len)
{
	struct fuse_bufvec *in = arg;
	struct fuse_bufvec out = FUSE_BUFVEC_INIT(len);

	out.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	out.buf[0].fd = fd;
	out.buf[0].pos = (off_t)off;
	return fuse_buf_copy(&out, in, 0);
}

/*
 * A write whose bytes the kernel spliced into a pipe (FUSE_CAP_SPLICE_READ):
 * they go from there into the working copy's memfd, and the daemon never
 * copies them (for a direct_io write, the pipe holds the writer's own
 * pages: one copy in all, as a write to tmpfs).
 */
static void vpfs_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *in,
			   off_t off, struct fuse_file_info *fi)
{
	struct vp_ns *ns = ns_of(req);
	struct vp_handle *h = handle_of(fi);
	size_t len = fuse_buf_size(in);
	ssize_t n;
	char *buf;

	(void)ino;
	if (fuse_req_ctx(req)->uid != 0) {
		const struct vp_caller who = caller_of(req);

		vp_ns_write_kills_privs(ns, &who, h);
	}
	n = vp_ns_write_fd(ns, h, (uint64_t)off, len, fill_from_request, in);
	if (n == -ENOTSUP) {	/* chunks: through memory */
		struct fuse_bufvec mem = FUSE_BUFVEC_INIT(len);

		buf = malloc(len ? len : 1);
		if (!buf) {
			reply_err(req, -ENOMEM);
			return;
		}
		mem.buf[0].mem = buf;
		n = fuse_buf_copy(&mem, in, 0);
		if (n >= 0)
			n = vp_ns_write(ns, h, buf, (size_t)n, (uint64_t)off);
		free(buf);
	}
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
	passthrough_release(ns_of(req), req, handle_of(fi));
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
	if (offset < 0 || length <= 0) {
		reply_err(req, -EINVAL);
		return;
	}
	reply_err(req, vp_ns_fallocate(ns_of(req), handle_of(fi), mode, (uint64_t)offset,
				       (uint64_t)length));
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
		KERNEL_ORDER_BEGIN();					\
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
TIMED(VP_FOP_WRITE, vpfs_write_buf, (fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *in, off_t off, struct fuse_file_info *fi), (req, ino, in, off, fi))
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
	.write_buf = timed_vpfs_write_buf,
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
