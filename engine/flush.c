/* flush: see flush.h. */
#define _GNU_SOURCE
#include "flush.h"
#include "ns/ns_i.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"

/* where = dir/name, for messages; cut if it does not fit. */
static void join_where(char *where, size_t len, const char *dir,
		       const char *name)
{
	if (snprintf(where, len, "%s%s%s", dir, *dir ? "/" : "", name) >= (int)len)
		where[len - 1] = '\0';
}

void vp_flush_pressure(void *arg)
{
	struct vp_ns *ns = arg;

	/* its own lock: a writer calls this holding data->lock, under which ns->lock may not go */
	pthread_mutex_lock(&ns->flush.evict_lock);
	ns->flush.evict_wanted = 1;
	pthread_cond_signal(&ns->flush.evict_cond);
	pthread_mutex_unlock(&ns->flush.evict_lock);
}

/* op was asked for now (viperctl flush, fsync=pfs, the unmount): no policy holds it back. */
static int forced_locked(struct vp_ns *ns, const struct flush_op *op)
{
	VP_ASSERT_LOCKED(&ns->lock);
	return op->forced || op->seq <= ns->flush.force_seq;
}

static int eligible_locked(struct vp_ns *ns, struct flush_op *op, double now,
			   double *when)
{
	VP_ASSERT_LOCKED(&ns->lock);
	*when = op->queued_at + ns->cfg.flush_interval;
	return forced_locked(ns, op) || ns->cfg.flush_interval <= 0 || now >= *when;
}

static void free_op_locked(struct vp_ns *ns, struct flush_op *op)
{
	VP_ASSERT_LOCKED(&ns->lock);
	if (op->node->pending == op)
		op->node->pending = NULL;
	vp_data_put(op->data);
	vp_node_put(ns, op->node);
	if (op->parent)
		vp_node_put(ns, op->parent);
	if (op->victim)
		vp_node_put(ns, op->victim);
	free(op->name);
	free(op);
}

/* Moves n's PFS place to parent/name (NULL: no place). ns->lock held. */
static void set_place_locked(struct vp_ns *ns, struct vp_node *n,
			     struct vp_node *parent, const char *name)
{
	struct vp_node *old = n->pfs_parent;
	char *copy = name ? strdup(name) : NULL;

	VP_ASSERT_LOCKED(&ns->lock);
	if (parent)
		vp_node_get(parent);
	n->pfs_parent = parent;
	free(n->pfs_name);
	n->pfs_name = copy;
	if (!parent || !copy) {
		n->pfs_parent = NULL;
		n->pfs_name = NULL;
		if (parent)
			vp_node_put(ns, parent);
		free(copy);
	}
	if (old)
		vp_node_put(ns, old);
}

/* ---- workers: write DATA entries into the staging folder ------------- */

static int write_all(int fd, const void *buf, size_t len, uint64_t off)
{
	while (len) {
		ssize_t n = pwrite(fd, buf, len, (off_t)off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		buf = (const char *)buf + n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

static int stage(struct vp_ns *ns, struct flush_op *op, mode_t mode, uid_t uid,
		 gid_t gid, struct timespec mtime)
{
	char value[32];
	uint64_t off = 0;
	struct timespec times[2];
	int fd, rc = 0;

	fd = openat(ns->staging_fd, op->stage_name,
		    O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	/* a memory file is copied in the kernel, a chunk's worth at a time (the pace) */
	while (off < op->size && !rc && vp_data_fd(op->data) >= 0) {
		size_t piece = op->size - off < VP_CHUNK_SIZE ? (size_t)(op->size - off) : VP_CHUNK_SIZE;
		ssize_t n;

		vp_tbucket_take(&ns->flush.bucket, piece);
		n = vp_data_copy_out(op->data, fd, off, piece);
		if (n <= 0) {
			rc = n < 0 ? (int)n : -EIO;
			break;
		}
		off += (uint64_t)n;
		__atomic_store_n(&op->written, off, __ATOMIC_RELAXED);
	}
	while (off < op->size && !rc) {
		struct vp_read rd;
		ssize_t n = vp_data_read(op->data, off, (size_t)(op->size - off), &rd);

		if (n <= 0) {
			rc = n < 0 ? (int)n : -EIO;
			break;
		}
		for (unsigned int i = 0; i < rd.nseg && !rc; i++) {
			vp_tbucket_take(&ns->flush.bucket, rd.seg[i].len);
			rc = write_all(fd, rd.seg[i].ptr, rd.seg[i].len, off);
			off += rd.seg[i].len;
			__atomic_store_n(&op->written, off, __ATOMIC_RELAXED);
		}
		vp_read_release(&rd);
	}
	if (!rc && ftruncate(fd, (off_t)op->size))
		rc = -errno;
	if (!rc) {
		if (fchown(fd, uid, gid)) {
			/* not root on the PFS: keep our own owner */
		}
		if (fchmod(fd, mode & 07777))
			rc = -errno;
	}
	if (!rc) {
		snprintf(value, sizeof(value), "%" PRIu64, op->version);
		fsetxattr(fd, "user.viperfs.version", value, strlen(value), 0);
		snprintf(value, sizeof(value), "%" PRIu64, op->epoch);
		fsetxattr(fd, "user.viperfs.epoch", value, strlen(value), 0);
		times[0] = mtime;
		times[1] = mtime;
		futimens(fd, times);
		if (fsync(fd))
			rc = -errno;
	}
	if (close(fd) && !rc)
		rc = -errno;
	if (rc)
		unlinkat(ns->staging_fd, op->stage_name, 0);
	return rc;
}

/*
 * flush_hold: before its PFS write, a version waits until every live
 * consumer holds it, or flush_hold runs out, so the flush does not take
 * the producer's cores and network from the transfer.  A forced entry
 * (viperctl flush, the unmount) or a stopping flush ends the wait.
 * Called with ns->lock held; drops it while it waits.
 */
static void hold_for_consumers_locked(struct vp_ns *ns, struct flush_op *op)
{
	struct vp_flush *f = &ns->flush;
	double until = vp_now() + ns->cfg.flush_hold;
	int all = 0;

	VP_ASSERT_LOCKED(&ns->lock);
	if (ns->replica || ns->cfg.flush_hold <= 0 || !op->data || forced_locked(ns, op))
		return;
	pthread_mutex_unlock(&ns->lock);
	all = vp_held_all_wait(ns, op->data, 0);	/* they have it, or there are none */
	pthread_mutex_lock(&ns->lock);
	if (all)
		return;
	f->holding++;
	while (!f->stop && !forced_locked(ns, op)) {
		double left = until - vp_now();

		if (left <= 0)
			break;
		pthread_mutex_unlock(&ns->lock);
		all = vp_held_all_wait(ns, op->data, left < 0.25 ? left : 0.25);
		pthread_mutex_lock(&ns->lock);
		if (all)
			break;
	}
	f->holding--;
	f->st_held++;
	if (!all && !f->stop && !forced_locked(ns, op))
		f->st_hold_timeouts++;
}

static void *worker_main(void *arg)
{
	struct vp_ns *ns = arg;
	struct vp_flush *f = &ns->flush;

	pthread_mutex_lock(&ns->lock);
	while (!f->stop) {
		struct flush_op *op;
		struct timespec mtime;
		mode_t mode;
		uid_t uid;
		gid_t gid;
		int rc;

		TAILQ_FOREACH(op, &f->log, link)
			if (op->type == OP_DATA && op->state == OPS_PREPARING &&
			    !op->claimed)
				break;
		if (!op) {
			pthread_cond_wait(&f->worker_cond, &ns->lock);
			continue;
		}
		op->claimed = 1;
		mode = op->node->mode;
		uid = op->node->uid;
		gid = op->node->gid;
		mtime = op->node->mtime;
		snprintf(op->stage_name, sizeof(op->stage_name),
			 "%" PRIu64 "-%" PRIu64 ".tmp", op->seq, op->node->ino);
		hold_for_consumers_locked(ns, op);
		pthread_mutex_unlock(&ns->lock);

		rc = op->data ? stage(ns, op, mode, uid, gid, mtime) : 0;

		pthread_mutex_lock(&ns->lock);
		op->prep_rc = rc;
		op->state = rc ? OPS_FAILED : OPS_PREPARED;
		op->claimed = 0;
		f->preparing--;
		pthread_cond_broadcast(&f->cond);
	}
	pthread_mutex_unlock(&ns->lock);
	return NULL;
}

/* Hands eligible DATA entries to workers, up to flush_inflight. */
static void start_prepares_locked(struct vp_ns *ns, double now, double *next)
{
	struct flush_op *op;

	VP_ASSERT_LOCKED(&ns->lock);
	TAILQ_FOREACH(op, &ns->flush.log, link) {
		double when;

		if (ns->flush.preparing >= ns->cfg.flush_inflight)
			break;
		if (op->type != OP_DATA || op->state != OPS_QUEUED)
			continue;
		if (!eligible_locked(ns, op, now, &when)) {
			if (when < *next)
				*next = when;
			break;	/* later entries were queued later still */
		}
		op->state = OPS_PREPARING;
		op->written = 0;
		if (op->node->pending == op)
			op->node->pending = NULL;
		if (op->data)
			op->node->flushing_version = op->version;
		ns->flush.preparing++;
		pthread_cond_signal(&ns->flush.worker_cond);
	}
}

/* ---- the dispatcher: replay entries in order ------------------------- */

/*
 * Opens the PFS directory that holds n's PFS place (or parent's, for a
 * new name).  Called with pfs_lock and ns->lock held; drops neither.
 */
static int open_parent_locked(struct vp_ns *ns, struct vp_node *parent,
			      char *path, size_t len)
{
	int rc;

	VP_ASSERT_LOCKED(&ns->pfs_lock);
	VP_ASSERT_LOCKED(&ns->lock);
	rc = vp_pfs_path_locked(ns, parent, path, len);
	if (rc)
		return rc;
	return vp_pfs_open_dir(ns->pfs_root_fd, path);
}

/* ---- hard links on the PFS ------------------------------------------ */

/* The xattrs a copy of a PFS file keeps (stage(), set_stand_in()). */
static const char *const copied_xattrs[] = {
	"user.viperfs.version", "user.viperfs.epoch", VP_NODE_XATTR,
};

/*
 * A copy of the PFS entry sdir/sname as staging/tmp, where the PFS refuses
 * a link: a file's bytes, mode, owner, times and our xattrs; a symlink's
 * target; a special node made again.  0 or -errno.
 */
static int copy_pfs_entry(struct vp_ns *ns, int sdir, const char *sname,
			  const char *tmp)
{
	struct timespec times[2];
	struct stat st;
	int in, out, rc = 0;

	if (fstatat(sdir, sname, &st, AT_SYMLINK_NOFOLLOW))
		return -errno;
	if (S_ISLNK(st.st_mode)) {
		char target[PATH_MAX];
		ssize_t l = readlinkat(sdir, sname, target, sizeof(target) - 1);

		if (l < 0)
			return -errno;
		target[l] = '\0';
		return symlinkat(target, ns->staging_fd, tmp) ? -errno : 0;
	}
	if (!S_ISREG(st.st_mode))
		return mknodat(ns->staging_fd, tmp, st.st_mode, st.st_rdev) ? -errno : 0;
	in = openat(sdir, sname, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (in < 0)
		return -errno;
	out = openat(ns->staging_fd, tmp, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (out < 0) {
		rc = -errno;
		goto out_close_in;
	}
	for (off_t left = st.st_size; left > 0 && !rc;) {
		ssize_t n = copy_file_range(in, NULL, out, NULL, (size_t)left, 0);

		if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS ||
			      errno == EOPNOTSUPP)) {
			char buf[1 << 16];

			n = read(in, buf, sizeof(buf));
			if (n > 0 && write_all(out, buf, (size_t)n, (uint64_t)(st.st_size - left)))
				n = -1;
		}
		if (n < 0)
			rc = -errno;
		else if (n == 0)
			break;
		else
			left -= n;
	}
	for (size_t i = 0; !rc && i < sizeof(copied_xattrs) / sizeof(copied_xattrs[0]); i++) {
		char value[128];
		ssize_t l = fgetxattr(in, copied_xattrs[i], value, sizeof(value));

		if (l >= 0)
			fsetxattr(out, copied_xattrs[i], value, (size_t)l, 0);
	}
	if (!rc) {
		if (fchown(out, st.st_uid, st.st_gid)) {
			/* not root on the PFS: keep our own owner */
		}
		times[0] = st.st_atim;
		times[1] = st.st_mtim;
		if (fchmod(out, st.st_mode & 07777) || futimens(out, times) || fsync(out))
			rc = -errno;
	}
	close(out);
	if (rc)
		unlinkat(ns->staging_fd, tmp, 0);
out_close_in:
	close(in);
	return rc;
}

/*
 * Gives the PFS entry sdir/sname (an inode of type type) the name
 * ddir/dname: a hard link made in the staging folder and renamed into
 * place, or a copy where the PFS refuses links (said once a run) and for
 * a special node's stand-in (a load trusts only a stand-in with one link).
 * Holding pfs_lock.  0 or -errno.
 */
static int pfs_link(struct vp_ns *ns, enum vp_node_type type, int sdir,
		    const char *sname, int ddir, const char *dname,
		    const char *tmp)
{
	static int said;
	struct stat st;
	int rc;

	VP_ASSERT_LOCKED(&ns->pfs_lock);
	unlinkat(ns->staging_fd, tmp, 0);
	if (type == VP_NODE_SPECIAL && !fstatat(sdir, sname, &st, AT_SYMLINK_NOFOLLOW) &&
	    S_ISREG(st.st_mode)) {
		rc = copy_pfs_entry(ns, sdir, sname, tmp);	/* a stand-in */
	} else if (linkat(sdir, sname, ns->staging_fd, tmp, 0) == 0) {
		rc = 0;
	} else if (errno == EPERM || errno == EXDEV || errno == EMLINK || errno == EOPNOTSUPP) {
		if (!__atomic_exchange_n(&said, 1, __ATOMIC_RELAXED))
			vp_log(LOG_NOTICE, "flush", "the PFS '%s' refuses hard links (%s): a file's other names are written there as copies, which a mount loads as separate files",
			       ns->pfs_dir, strerror(errno));
		rc = copy_pfs_entry(ns, sdir, sname, tmp);
	} else {
		rc = -errno;
	}
	if (rc)
		return rc;
	if (renameat(ns->staging_fd, tmp, ddir, dname)) {
		rc = -errno;
		unlinkat(ns->staging_fd, tmp, 0);
		return rc;
	}
	return fsync(ddir) ? -errno : 0;
}

/* One of an inode's other names on the PFS, copied out under ns->lock. */
struct pfs_name {
	char dir[PATH_MAX];
	char *name;
};

/*
 * The PFS places of n's link nodes (a new array in *out, its count
 * returned; 0 on failure).  pfs_lock and ns->lock held.
 */
static size_t link_places_locked(struct vp_ns *ns, struct vp_node *n,
				 struct pfs_name **out)
{
	struct pfs_name *names;
	struct vp_node *l;
	size_t count = 0, i = 0;

	VP_ASSERT_LOCKED(&ns->pfs_lock);
	VP_ASSERT_LOCKED(&ns->lock);
	*out = NULL;
	LIST_FOREACH(l, &n->links, link_link)
		count += l->pfs_parent != NULL;
	if (!count || !(names = calloc(count, sizeof(*names))))
		return 0;
	LIST_FOREACH(l, &n->links, link_link) {
		if (!l->pfs_parent || vp_pfs_path_locked(ns, l->pfs_parent, names[i].dir,
							  sizeof(names[i].dir)))
			continue;
		if ((names[i].name = strdup(l->pfs_name)))
			i++;
	}
	*out = names;
	return i;
}

static void free_names(struct pfs_name *names, size_t count)
{
	for (size_t i = 0; i < count; i++)
		free(names[i].name);
	free(names);
}

/*
 * After a new version of n went to its PFS name (dfd/name, a new file):
 * its other names there are linked to it again.  A failure is logged; the
 * version itself is on the PFS.  Holding pfs_lock, not ns->lock.
 */
static void relink_names(struct vp_ns *ns, struct vp_node *n, int dfd,
			 const char *name, struct pfs_name *names, size_t count,
			 uint64_t seq)
{
	static struct vp_ratelimit rl = VP_RATELIMIT_INIT(10, 60.0);

	for (size_t i = 0; i < count; i++) {
		char tmp[64];
		int ddir = vp_pfs_open_dir(ns->pfs_root_fd, names[i].dir);
		int rc = ddir;

		snprintf(tmp, sizeof(tmp), "%" PRIu64 "-%" PRIu64 "-%zu.lnk", seq, n->ino, i);
		if (ddir >= 0) {
			rc = pfs_link(ns, n->type, dfd, name, ddir, names[i].name, tmp);
			close(ddir);
		}
		if (rc)
			vp_log_limited(&rl, LOG_WARNING, "flush", "linking '%s%s%s' on the PFS '%s' to its file's new version: %s; that name keeps the older version there",
				       names[i].dir, *names[i].dir ? "/" : "", names[i].name,
				       ns->pfs_dir, strerror(-rc));
	}
	free_names(names, count);
}

static int publish(struct vp_ns *ns, struct flush_op *op, char *where, size_t wlen)
{
	struct vp_node *n = op->node;
	struct vp_flush *f = &ns->flush;
	char dpath[PATH_MAX];
	struct pfs_name *names = NULL;
	size_t nnames;
	int dfd, rc = 0;

	pthread_mutex_lock(&ns->pfs_lock);
	pthread_mutex_lock(&ns->lock);
	if (!n->pfs_parent) {
		if (!op->parent) {
			rc = 0;
			goto out_unlock;
		}
		set_place_locked(ns, n, op->parent, op->name);
	}
	if (!op->data)
		goto out_unlock;
	dfd = open_parent_locked(ns, n->pfs_parent, dpath, sizeof(dpath));
	join_where(where, wlen, dpath, n->pfs_name);
	if (dfd < 0) {
		rc = dfd;
		goto out_unlock;
	}
	nnames = link_places_locked(ns, n, &names);
	pthread_mutex_unlock(&ns->lock);
	if (renameat(ns->staging_fd, op->stage_name, dfd, n->pfs_name))
		rc = -errno;
	else if (fsync(dfd))
		rc = -errno;
	if (!rc)	/* the rename replaced the file its other names were links of */
		relink_names(ns, n, dfd, n->pfs_name, names, nnames, op->seq);
	else
		free_names(names, nnames);
	close(dfd);
	pthread_mutex_lock(&ns->lock);
	if (!rc) {
		n->pfs_version = op->version;
		f->st_flushed_versions++;
		f->st_flushed_bytes += op->size;
		vp_metrics_add(VP_C_BYTES_FLUSHED, op->size);
		f->st_last_flush_lag = vp_now() - op->queued_at;
		f->st_lag_sum += f->st_last_flush_lag;
		if (n->version == op->version && n->cur && !n->work)
			vp_lru_add_locked(ns, n);
	}
out_unlock:
	if (n->flushing_version == op->version && rc == 0)
		n->flushing_version = VP_NO_VERSION;
	pthread_mutex_unlock(&ns->lock);
	pthread_mutex_unlock(&ns->pfs_lock);
	return rc;
}

/* The PFS directories one namespace entry works in. */
struct replay_dirs {
	int sfd;		/* holds n's PFS place, or -errno */
	int dfd;		/* op->parent's, the new place, or -errno */
	int has_place;		/* n has a PFS place (the root always has) */
};

/*
 * Takes pfs_lock (held on return) and opens op's directories, naming the
 * entry in where for messages.
 */
static void replay_open(struct vp_ns *ns, struct flush_op *op,
			struct replay_dirs *r, char *where, size_t wlen)
{
	struct vp_node *n = op->node;
	char spath[PATH_MAX], dpath[PATH_MAX];

	r->sfd = r->dfd = -1;
	pthread_mutex_lock(&ns->pfs_lock);
	pthread_mutex_lock(&ns->lock);
	r->has_place = n->pfs_parent != NULL || n == ns->root;
	if (r->has_place && n != ns->root) {
		r->sfd = open_parent_locked(ns, n->pfs_parent, spath, sizeof(spath));
		join_where(where, wlen, spath, n->pfs_name);
	}
	if (op->parent) {
		r->dfd = open_parent_locked(ns, op->parent, dpath, sizeof(dpath));
		if (!r->has_place || n == ns->root)
			join_where(where, wlen, dpath, op->name);
	}
	pthread_mutex_unlock(&ns->lock);
}

static int replay_mkdir(struct flush_op *op, const struct replay_dirs *r)
{
	if (r->dfd < 0)
		return r->dfd;
	if (mkdirat(r->dfd, op->name, op->node->mode & 07777) && errno != EEXIST)
		return -errno;
	return fsync(r->dfd) ? -errno : 0;
}

/* A symlink is made in the staging folder, then renamed into place. */
static int replay_symlink(struct vp_ns *ns, struct flush_op *op,
			  const struct replay_dirs *r)
{
	char tmp[64];

	if (r->dfd < 0)
		return r->dfd;
	snprintf(tmp, sizeof(tmp), "%" PRIu64 "-%" PRIu64 ".lnk", op->seq,
		 op->node->ino);
	unlinkat(ns->staging_fd, tmp, 0);
	if (symlinkat(op->node->symlink, ns->staging_fd, tmp) ||
	    renameat(ns->staging_fd, tmp, r->dfd, op->name))
		return -errno;
	return 0;
}

/*
 * A FIFO, socket or device node: made in the staging folder (mknodat),
 * then renamed into place.  Where the PFS refuses the node (a device
 * without CAP_MKNOD, a file system without FIFOs), an empty file stands in
 * for it, with the node in the xattr user.viperfs.node ("TYPE RDEV"),
 * which a load turns back into the node; the log says so once a run.
 */
/*
 * A stand-in's xattr: "TYPE RDEV MODE UID GID" (type and mode in octal).
 * The stand-in itself stays ours and 0600 (ns/load.c trusts no other), so
 * the node's mode and owner live here.
 */
static int set_stand_in(int fd, mode_t mode, dev_t rdev, uid_t uid, gid_t gid)
{
	char xattr[96];

	snprintf(xattr, sizeof(xattr), "%o %llu %o %u %u", (unsigned int)(mode & S_IFMT),
		 (unsigned long long)rdev, (unsigned int)(mode & 07777), (unsigned int)uid,
		 (unsigned int)gid);
	return fsetxattr(fd, VP_NODE_XATTR, xattr, strlen(xattr), 0) ? -errno : 0;
}

static int replay_mknod(struct vp_ns *ns, struct flush_op *op,
			const struct replay_dirs *r)
{
	static int said;
	char tmp[64];
	struct vp_node *n = op->node;
	mode_t mode;
	uid_t uid;
	gid_t gid;
	int fd, rc;

	if (r->dfd < 0)
		return r->dfd;
	pthread_mutex_lock(&ns->lock);	/* a setattr changes them under it */
	mode = n->mode;
	uid = n->uid;
	gid = n->gid;
	pthread_mutex_unlock(&ns->lock);
	snprintf(tmp, sizeof(tmp), "%" PRIu64 "-%" PRIu64 ".nod", op->seq, n->ino);
	unlinkat(ns->staging_fd, tmp, 0);
	if (mknodat(ns->staging_fd, tmp, mode & S_IFMT, n->rdev) == 0) {
		/* the umask is not the node's: its mode and owner, as a file's (stage()) */
		if (fchmodat(ns->staging_fd, tmp, mode & 07777, 0) ||
		    (fchownat(ns->staging_fd, tmp, uid, gid, AT_SYMLINK_NOFOLLOW) && errno != EPERM)) {
			rc = -errno;
			unlinkat(ns->staging_fd, tmp, 0);
			return rc;
		}
		goto place;
	}
	if (errno != EPERM && errno != EOPNOTSUPP && errno != EINVAL && errno != EACCES)
		return -errno;
	if (!__atomic_exchange_n(&said, 1, __ATOMIC_RELAXED))
		vp_log(LOG_NOTICE, "flush", "the PFS refuses a %s node (%s): it is kept as an empty file with the xattr " VP_NODE_XATTR ", and a mount restores it",
		       S_ISFIFO(mode) ? "FIFO" : S_ISSOCK(mode) ? "socket" : "device", strerror(errno));
	fd = openat(ns->staging_fd, tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	rc = fchmod(fd, 0600) ? -errno : set_stand_in(fd, mode, n->rdev, uid, gid);	/* 0600 whatever the umask */
	close(fd);
	if (rc) {
		unlinkat(ns->staging_fd, tmp, 0);
		return rc;
	}
place:
	if (renameat(ns->staging_fd, tmp, r->dfd, op->name))
		return -errno;
	return 0;
}

/*
 * A new name of an inode: a link on the PFS to the inode's PFS file, if
 * it has one yet (else its DATA entry's publish links every name).
 */
static int replay_link(struct vp_ns *ns, struct flush_op *op,
		       const struct replay_dirs *r)
{
	struct vp_node *inode = op->node->inode;
	char spath[PATH_MAX], sname[VP_NAME_MAX + 1], tmp[64];
	int sdir, rc;

	if (r->dfd < 0)
		return r->dfd;
	pthread_mutex_lock(&ns->lock);
	rc = !inode->pfs_parent ||
	     (inode->type == VP_NODE_FILE && inode->pfs_version == VP_NO_VERSION) ? 1 :
	     vp_pfs_path_locked(ns, inode->pfs_parent, spath, sizeof(spath));
	if (!rc)
		snprintf(sname, sizeof(sname), "%s", inode->pfs_name);
	pthread_mutex_unlock(&ns->lock);
	if (rc)
		return rc > 0 ? 0 : rc;
	sdir = vp_pfs_open_dir(ns->pfs_root_fd, spath);
	if (sdir < 0)
		return sdir;
	snprintf(tmp, sizeof(tmp), "%" PRIu64 "-%" PRIu64 ".lnk", op->seq, inode->ino);
	rc = pfs_link(ns, inode->type, sdir, sname, r->dfd, op->name, tmp);
	close(sdir);
	return rc;
}

static int replay_rename(struct flush_op *op, const struct replay_dirs *r)
{
	if (r->dfd < 0)
		return r->dfd;
	if (!r->has_place)
		return 0;
	if (r->sfd < 0)
		return r->sfd;
	if (renameat(r->sfd, op->node->pfs_name, r->dfd, op->name) && errno != ENOENT)
		return -errno;
	if (fsync(r->dfd) || (r->sfd != r->dfd && fsync(r->sfd)))
		return -errno;
	return 0;
}

static int replay_unlink(struct flush_op *op, const struct replay_dirs *r)
{
	struct vp_node *n = op->node;

	if (!r->has_place)
		return 0;
	if (r->sfd < 0)
		return r->sfd;
	if (unlinkat(r->sfd, n->pfs_name, n->type == VP_NODE_DIR ? AT_REMOVEDIR : 0) &&
	    errno != ENOENT)
		return -errno;
	return 0;
}

static int replay_attr(struct vp_ns *ns, struct flush_op *op,
		       const struct replay_dirs *r)
{
	struct vp_node *n = op->node;
	struct timespec times[2];
	int fd = n == ns->root ? ns->pfs_root_fd : r->sfd;
	const char *name = n == ns->root ? "." : n->pfs_name;
	mode_t mode;
	uid_t uid;
	gid_t gid;

	/* the attributes change under ns->lock (setattr): copy them there */
	pthread_mutex_lock(&ns->lock);
	times[0] = n->atime;
	times[1] = n->mtime;
	mode = n->mode;
	uid = n->uid;
	gid = n->gid;
	pthread_mutex_unlock(&ns->lock);

	if (!r->has_place || (n->type == VP_NODE_FILE && n->pfs_version == VP_NO_VERSION))
		return 0;	/* its DATA entry will carry the attributes */
	if (fd < 0)
		return fd;
	if (n->type == VP_NODE_SPECIAL) {
		struct stat st;

		/* a stand-in keeps its own 0600: the node's mode and owner go in its xattr */
		if (!fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) && S_ISREG(st.st_mode)) {
			int sfd = openat(fd, name, O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
			int rc = sfd < 0 ? -errno : set_stand_in(sfd, mode, n->rdev, uid, gid);

			if (sfd >= 0)
				close(sfd);
			if (rc)
				return rc;
			return utimensat(fd, name, times, AT_SYMLINK_NOFOLLOW) && errno != ENOENT ? -errno : 0;
		}
	}
	if (n->type != VP_NODE_SYMLINK &&
	    fchmodat(fd, name, mode & 07777, 0) && errno != ENOENT)
		return -errno;
	if (fchownat(fd, name, uid, gid, AT_SYMLINK_NOFOLLOW) &&
	    errno != ENOENT && errno != EPERM)
		return -errno;
	if (utimensat(fd, name, times, AT_SYMLINK_NOFOLLOW) && errno != ENOENT)
		return -errno;
	return 0;
}

/* A replayed entry moves the PFS places it changed. */
static void replay_places_locked(struct vp_ns *ns, struct flush_op *op)
{
	struct vp_node *n = op->node;

	VP_ASSERT_LOCKED(&ns->lock);
	switch (op->type) {
	case OP_MKDIR:
	case OP_SYMLINK:
	case OP_MKNOD:
	case OP_LINK:
		set_place_locked(ns, n, op->parent, op->name);
		break;
	case OP_RENAME:
		if (op->victim) {
			set_place_locked(ns, op->victim, NULL, NULL);
			op->victim->pfs_version = VP_NO_VERSION;
		}
		set_place_locked(ns, n, op->parent, op->name);
		break;
	case OP_UNLINK:
		if (op->victim) {	/* an inode's own name went: it takes victim's place */
			uint64_t version = n->pfs_version;

			set_place_locked(ns, n, op->victim->pfs_parent, op->victim->pfs_name);
			set_place_locked(ns, op->victim, NULL, NULL);
			n->pfs_version = n->pfs_parent ? version : VP_NO_VERSION;
			break;
		}
		set_place_locked(ns, n, NULL, NULL);
		n->pfs_version = VP_NO_VERSION;
		break;
	default:
		break;
	}
}

/* Replays one namespace entry.  No locks held on entry. */
static int replay_meta(struct vp_ns *ns, struct flush_op *op, char *where,
		       size_t wlen)
{
	struct replay_dirs r;
	int rc = 0;

	replay_open(ns, op, &r, where, wlen);
	switch (op->type) {
	case OP_MKDIR:
		rc = replay_mkdir(op, &r);
		break;
	case OP_SYMLINK:
		rc = replay_symlink(ns, op, &r);
		break;
	case OP_MKNOD:
		rc = replay_mknod(ns, op, &r);
		break;
	case OP_RENAME:
		rc = replay_rename(op, &r);
		break;
	case OP_LINK:
		rc = replay_link(ns, op, &r);
		break;
	case OP_UNLINK:
		rc = replay_unlink(op, &r);
		break;
	case OP_ATTR:
		rc = replay_attr(ns, op, &r);
		break;
	case OP_DATA:
		break;
	}
	pthread_mutex_lock(&ns->lock);
	if (!rc)
		replay_places_locked(ns, op);
	pthread_mutex_unlock(&ns->lock);
	pthread_mutex_unlock(&ns->pfs_lock);
	if (r.sfd >= 0)
		close(r.sfd);
	if (r.dfd >= 0)
		close(r.dfd);
	return rc;
}

static const char *op_verb(enum flush_op_type t)
{
	static const char *const verbs[] = {
		[OP_MKDIR] = "mkdir", [OP_DATA] = "flush", [OP_SYMLINK] = "symlink",
		[OP_RENAME] = "rename", [OP_UNLINK] = "unlink", [OP_ATTR] = "chmod",
		[OP_MKNOD] = "mknod", [OP_LINK] = "link",
	};
	return verbs[t];
}

/*
 * A transient failure: the entry stays at the head, retried after an
 * exponential back-off (*backoff), during which the lock is dropped.
 */
static void retry_locked(struct vp_ns *ns, struct flush_op *op, int rc,
			 const char *where, double *backoff)
{
	struct vp_flush *f = &ns->flush;
	struct timespec ts;

	VP_ASSERT_LOCKED(&ns->lock);
	f->st_retries++;
	f->last_error = rc;
	snprintf(f->last_error_path, sizeof(f->last_error_path), "%s", where);
	*backoff = *backoff ? *backoff * 2 : 0.5;
	if (*backoff > ns->cfg.flush_retry_max)
		*backoff = ns->cfg.flush_retry_max;
	vp_log(LOG_WARNING, "flush",
	       "%s of '%s' to '%s': %s; keeping it in cache, retrying in %.1f s",
	       op_verb(op->type), *where ? where : "(staging)",
	       ns->pfs_dir, strerror(-rc), *backoff);
	if (op->type == OP_DATA && op->state == OPS_FAILED) {
		op->state = OPS_QUEUED;	/* stage it again */
		if (!op->node->pending && ns->cfg.flush_policy != VP_FLUSH_ALL)
			op->node->pending = op;
	}
	vp_abstime(&ts, vp_now() + *backoff);
	while (!f->stop && pthread_cond_timedwait(&f->cond, &ns->lock, &ts) != ETIMEDOUT)
		;
}

/* The head entry is done with (replayed, or skipped): off the log. */
static void finish_locked(struct vp_ns *ns, struct flush_op *op, int rc,
			  const char *where, double *backoff)
{
	struct vp_flush *f = &ns->flush;

	VP_ASSERT_LOCKED(&ns->lock);
	if (rc) {
		vp_log(LOG_ERR, "flush",
		       "%s of '%s' in '%s': %s; skipped (the PFS changed under viperfs)",
		       op_verb(op->type), *where ? where : op->name ? op->name : "?",
		       ns->pfs_dir, strerror(-rc));
		if (op->type == OP_DATA) {
			unlinkat(ns->staging_fd, op->stage_name, 0);
			if (op->node->flushing_version == op->version)
				op->node->flushing_version = VP_NO_VERSION;
		}
	} else if (*backoff) {
		vp_log(LOG_NOTICE, "flush", "the PFS '%s' accepts writes again; flushing resumed",
		       ns->pfs_dir);
	}
	if (!rc) {
		*backoff = 0;
		f->last_error = 0;
	}
	TAILQ_REMOVE(&f->log, op, link);
	f->done_seq = op->seq;
	free_op_locked(ns, op);
	pthread_cond_broadcast(&f->cond);
}

/*
 * Whether the head entry op can be replayed now; if not, waits (dropping
 * the lock) until something changes or its time comes.
 */
static int head_ready_locked(struct vp_ns *ns, struct flush_op *op, double now,
			     double next)
{
	struct timespec ts;
	double when;

	VP_ASSERT_LOCKED(&ns->lock);
	if (!op) {
		pthread_cond_wait(&ns->flush.cond, &ns->lock);
		return 0;
	}
	if (!eligible_locked(ns, op, now, &when)) {
		vp_abstime(&ts, when < next ? when : next);
		pthread_cond_timedwait(&ns->flush.cond, &ns->lock, &ts);
		return 0;
	}
	if (op->type == OP_DATA && (op->state == OPS_QUEUED ||
				    op->state == OPS_PREPARING)) {
		vp_abstime(&ts, next);
		pthread_cond_timedwait(&ns->flush.cond, &ns->lock, &ts);
		return 0;
	}
	return 1;
}

static void *dispatcher_main(void *arg)
{
	struct vp_ns *ns = arg;
	double backoff = 0;

	pthread_mutex_lock(&ns->lock);
	while (!ns->flush.stop) {
		struct flush_op *op = TAILQ_FIRST(&ns->flush.log);
		double now = vp_now(), next = now + 3600;
		char where[PATH_MAX] = "";
		int rc;

		start_prepares_locked(ns, now, &next);
		if (!head_ready_locked(ns, op, now, next))
			continue;
		pthread_mutex_unlock(&ns->lock);
		if (op->type == OP_DATA && op->state == OPS_FAILED)
			rc = op->prep_rc;
		else if (op->type == OP_DATA)
			rc = publish(ns, op, where, sizeof(where));
		else
			rc = replay_meta(ns, op, where, sizeof(where));
		pthread_mutex_lock(&ns->lock);

		if (rc && vp_pfs_is_transient(rc))
			retry_locked(ns, op, rc, where, &backoff);
		else
			finish_locked(ns, op, rc, where, &backoff);
	}
	pthread_mutex_unlock(&ns->lock);
	return NULL;
}

/* ---- the evictor ----------------------------------------------------- */

static void *evictor_main(void *arg)
{
	struct vp_ns *ns = arg;
	struct vp_flush *f = &ns->flush;

	for (;;) {
		uint64_t want;
		int stop;

		pthread_mutex_lock(&f->evict_lock);
		while (!f->evict_wanted && !f->evict_stop)
			pthread_cond_wait(&f->evict_cond, &f->evict_lock);
		stop = f->evict_stop;
		f->evict_wanted = 0;
		pthread_mutex_unlock(&f->evict_lock);
		if (stop)
			break;
		/* free a tenth of the budget at a time, so writers are not woken for one chunk */
		want = ns->cfg.ram_cache / 10;
		pthread_mutex_lock(&ns->lock);
		while (TAILQ_FIRST(&ns->lru) && vp_pool_available(ns->pool) < want) {
			struct vp_node *n = TAILQ_FIRST(&ns->lru);

			vp_lru_del_locked(ns, n);
			if (n->cur && !n->work && n->pfs_version == n->version) {
				vp_data_put(n->cur);
				n->cur = NULL;
				f->st_evictions++;
			}
		}
		pthread_mutex_unlock(&ns->lock);
	}
	return NULL;
}

void vp_flush_init(struct vp_flush *f, const struct vp_config *cfg)
{
	uint64_t burst = cfg->flush_bw / 8 > VP_CHUNK_SIZE ? cfg->flush_bw / 8 : VP_CHUNK_SIZE;

	vp_tbucket_init(&f->bucket, cfg->flush_bw, cfg->flush_bw ? burst : 0, vp_now);
	vp_cond_init_monotonic(&f->cond);
	vp_cond_init_monotonic(&f->worker_cond);
	vp_cond_init_monotonic(&f->evict_cond);
	pthread_mutex_init(&f->evict_lock, NULL);
	TAILQ_INIT(&f->log);
	f->next_seq = 1;
}

void vp_flush_release(struct vp_flush *f)
{
	pthread_cond_destroy(&f->evict_cond);
	pthread_mutex_destroy(&f->evict_lock);
	pthread_cond_destroy(&f->worker_cond);
	pthread_cond_destroy(&f->cond);
	vp_tbucket_release(&f->bucket);
}

int vp_flush_start(struct vp_ns *ns)
{
	struct vp_flush *f = &ns->flush;
	int rc;

	f->nworkers = ns->cfg.flush_inflight;
	f->workers = calloc(f->nworkers, sizeof(*f->workers));
	if (!f->workers)
		return -ENOMEM;
	for (unsigned int i = 0; i < f->nworkers; i++) {
		rc = pthread_create(&f->workers[i], NULL, worker_main, ns);
		if (rc) {
			f->nworkers = i;
			vp_flush_stop(ns);
			return -rc;
		}
	}
	rc = pthread_create(&f->dispatcher, NULL, dispatcher_main, ns);
	if (!rc) {
		rc = pthread_create(&f->evictor, NULL, evictor_main, ns);
		if (rc) {
			pthread_mutex_lock(&ns->lock);
			f->stop = 1;
			pthread_cond_broadcast(&f->cond);
			pthread_mutex_unlock(&ns->lock);
			pthread_join(f->dispatcher, NULL);
		}
	}
	if (rc) {
		vp_flush_stop(ns);
		return -rc;
	}
	return 0;
}

void vp_flush_stop(struct vp_ns *ns)
{
	struct vp_flush *f = &ns->flush;
	struct flush_op *op;
	int started;

	pthread_mutex_lock(&ns->lock);
	started = !f->stop;
	f->stop = 1;
	pthread_cond_broadcast(&f->cond);
	pthread_cond_broadcast(&f->worker_cond);
	pthread_mutex_unlock(&ns->lock);
	pthread_mutex_lock(&f->evict_lock);
	f->evict_stop = 1;
	pthread_cond_broadcast(&f->evict_cond);
	pthread_mutex_unlock(&f->evict_lock);
	if (started && f->dispatcher) {
		pthread_join(f->dispatcher, NULL);
		pthread_join(f->evictor, NULL);
	}
	for (unsigned int i = 0; i < f->nworkers; i++)
		pthread_join(f->workers[i], NULL);
	free(f->workers);
	f->workers = NULL;
	f->nworkers = 0;

	pthread_mutex_lock(&ns->lock);
	while ((op = TAILQ_FIRST(&f->log))) {
		TAILQ_REMOVE(&f->log, op, link);
		free_op_locked(ns, op);
	}
	pthread_mutex_unlock(&ns->lock);
}
