/* flush: see flush.h. */
#define _GNU_SOURCE
#include "flush.h"

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

struct flush_op *vp_flush_log_locked(struct vp_ns *ns, enum flush_op_type type,
				     struct vp_node *node,
				     struct vp_node *parent, const char *name,
				     struct vp_node *victim)
{
	struct flush_op *op;

	if (ns->replica)
		return NULL;	/* consumers never write the PFS */
	op = calloc(1, sizeof(*op));
	if (!op || (name && !(op->name = strdup(name)))) {
		/* without memory the PFS would miss this change: say so */
		vp_log(LOG_CRIT, "flush", "out of memory: a namespace change will not reach the PFS");
		free(op);
		return NULL;
	}
	op->seq = ns->next_seq++;
	op->type = type;
	op->state = OPS_QUEUED;
	vp_node_get(node);
	op->node = node;
	if (parent) {
		vp_node_get(parent);
		op->parent = parent;
	}
	if (victim) {
		vp_node_get(victim);
		op->victim = victim;
	}
	op->version = VP_NO_VERSION;
	op->queued_at = vp_now();
	if (ns->log_tail)
		ns->log_tail->next = op;
	else
		ns->log_head = op;
	ns->log_tail = op;
	pthread_cond_broadcast(&ns->flush_cond);
	return op;
}

void vp_flush_commit_locked(struct vp_ns *ns, struct vp_node *n, int force)
{
	struct flush_op *op = n->pending;

	if (ns->replica)
		return;
	if (!force && ns->cfg.flush_policy == VP_FLUSH_EVERY &&
	    n->version % ns->cfg.flush_every != 0) {
		ns->st_skipped_versions++;
		return;
	}
	if (op && ns->cfg.flush_policy != VP_FLUSH_ALL) {
		/* coalesce: the queued entry now writes the newer version */
		vp_data_put(op->data);
		op->data = vp_data_get(n->cur);
		op->version = n->version;
		op->size = n->size;
		op->forced |= force;
		ns->st_skipped_versions++;
		pthread_cond_broadcast(&ns->flush_cond);
		return;
	}
	op = vp_flush_log_locked(ns, OP_DATA, n, n->parent, n->name, NULL);
	if (!op)
		return;
	op->data = vp_data_get(n->cur);
	op->version = n->version;
	op->size = n->size;
	op->forced = force;
	n->pending = op;
}

void vp_flush_cancel_locked(struct vp_ns *ns, struct vp_node *n)
{
	struct flush_op *op = n->pending;

	(void)ns;
	if (!op)
		return;
	vp_data_put(op->data);
	op->data = NULL;
	op->size = 0;
	n->pending = NULL;
}

void vp_flush_pressure(void *arg)
{
	struct vp_ns *ns = arg;

	pthread_mutex_lock(&ns->lock);
	ns->evict_wanted = 1;
	pthread_cond_signal(&ns->evict_cond);
	pthread_mutex_unlock(&ns->lock);
}

static int eligible_locked(struct vp_ns *ns, struct flush_op *op, double now,
			   double *when)
{
	*when = op->queued_at + ns->cfg.flush_interval;
	return op->forced || op->seq <= ns->force_seq ||
	       ns->cfg.flush_interval <= 0 || now >= *when;
}

static void free_op_locked(struct vp_ns *ns, struct flush_op *op)
{
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
	while (off < op->size && !rc) {
		struct vp_read rd;
		ssize_t n = vp_data_read(op->data, off, (size_t)(op->size - off), &rd);

		if (n <= 0) {
			rc = n < 0 ? (int)n : -EIO;
			break;
		}
		for (unsigned int i = 0; i < rd.nseg && !rc; i++) {
			vp_tbucket_take(&ns->flush_bucket, rd.seg[i].len);
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

static void *worker_main(void *arg)
{
	struct vp_ns *ns = arg;

	pthread_mutex_lock(&ns->lock);
	while (!ns->stop) {
		struct flush_op *op;
		struct timespec mtime;
		mode_t mode;
		uid_t uid;
		gid_t gid;
		int rc;

		for (op = ns->log_head; op; op = op->next)
			if (op->type == OP_DATA && op->state == OPS_PREPARING &&
			    !op->claimed)
				break;
		if (!op) {
			pthread_cond_wait(&ns->worker_cond, &ns->lock);
			continue;
		}
		op->claimed = 1;
		mode = op->node->mode;
		uid = op->node->uid;
		gid = op->node->gid;
		mtime = op->node->mtime;
		snprintf(op->stage_name, sizeof(op->stage_name),
			 "%" PRIu64 "-%" PRIu64 ".tmp", op->seq, op->node->ino);
		pthread_mutex_unlock(&ns->lock);

		rc = op->data ? stage(ns, op, mode, uid, gid, mtime) : 0;

		pthread_mutex_lock(&ns->lock);
		op->prep_rc = rc;
		op->state = rc ? OPS_FAILED : OPS_PREPARED;
		op->claimed = 0;
		ns->preparing--;
		pthread_cond_broadcast(&ns->flush_cond);
	}
	pthread_mutex_unlock(&ns->lock);
	return NULL;
}

/* Hands eligible DATA entries to workers, up to flush_inflight. */
static void start_prepares_locked(struct vp_ns *ns, double now, double *next)
{
	for (struct flush_op *op = ns->log_head;
	     op && ns->preparing < ns->cfg.flush_inflight; op = op->next) {
		double when;

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
		ns->preparing++;
		pthread_cond_signal(&ns->worker_cond);
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
	int rc = vp_pfs_path_locked(ns, parent, path, len);

	if (rc)
		return rc;
	return vp_pfs_open_dir(ns->pfs_root_fd, path);
}

static int publish(struct vp_ns *ns, struct flush_op *op, char *where, size_t wlen)
{
	struct vp_node *n = op->node;
	char dpath[PATH_MAX];
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
	pthread_mutex_unlock(&ns->lock);
	if (renameat(ns->staging_fd, op->stage_name, dfd, n->pfs_name))
		rc = -errno;
	else if (fsync(dfd))
		rc = -errno;
	close(dfd);
	pthread_mutex_lock(&ns->lock);
	if (!rc) {
		n->pfs_version = op->version;
		ns->st_flushed_versions++;
		ns->st_flushed_bytes += op->size;
		vp_metrics_add(VP_C_BYTES_FLUSHED, op->size);
		ns->st_last_flush_lag = vp_now() - op->queued_at;
		ns->st_lag_sum += ns->st_last_flush_lag;
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

/* Replays one namespace entry.  No locks held on entry. */
static int replay_meta(struct vp_ns *ns, struct flush_op *op, char *where,
		       size_t wlen)
{
	struct vp_node *n = op->node;
	char spath[PATH_MAX], dpath[PATH_MAX];
	int sfd = -1, dfd = -1, rc = 0;
	int has_place;

	pthread_mutex_lock(&ns->pfs_lock);
	pthread_mutex_lock(&ns->lock);
	has_place = n->pfs_parent != NULL || n == ns->root;
	if (has_place && n != ns->root) {
		sfd = open_parent_locked(ns, n->pfs_parent, spath, sizeof(spath));
		join_where(where, wlen, spath, n->pfs_name);
	}
	if (op->parent) {
		dfd = open_parent_locked(ns, op->parent, dpath, sizeof(dpath));
		if (!has_place || n == ns->root)
			join_where(where, wlen, dpath, op->name);
	}
	pthread_mutex_unlock(&ns->lock);

	switch (op->type) {
	case OP_MKDIR:
		if (dfd < 0) {
			rc = dfd;
			break;
		}
		if (mkdirat(dfd, op->name, n->mode & 07777) && errno != EEXIST)
			rc = -errno;
		else if (fsync(dfd))
			rc = -errno;
		break;
	case OP_SYMLINK: {
		char tmp[64];

		if (dfd < 0) {
			rc = dfd;
			break;
		}
		snprintf(tmp, sizeof(tmp), "%" PRIu64 "-%" PRIu64 ".lnk", op->seq,
			 n->ino);
		unlinkat(ns->staging_fd, tmp, 0);
		if (symlinkat(n->symlink, ns->staging_fd, tmp) ||
		    renameat(ns->staging_fd, tmp, dfd, op->name))
			rc = -errno;
		break;
	}
	case OP_RENAME:
		if (dfd < 0) {
			rc = dfd;
			break;
		}
		if (has_place) {
			if (sfd < 0)
				rc = sfd;
			else if (renameat(sfd, n->pfs_name, dfd, op->name) && errno != ENOENT)
				rc = -errno;
			else if (fsync(dfd) || (sfd != dfd && fsync(sfd)))
				rc = -errno;
		}
		break;
	case OP_UNLINK:
		if (!has_place)
			break;
		if (sfd < 0)
			rc = sfd;
		else if (unlinkat(sfd, n->pfs_name,
				  n->type == VP_NODE_DIR ? AT_REMOVEDIR : 0) &&
			 errno != ENOENT)
			rc = -errno;
		break;
	case OP_ATTR: {
		struct timespec times[2];
		int fd = n == ns->root ? ns->pfs_root_fd : sfd;
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

		if (!has_place || (n->type == VP_NODE_FILE && n->pfs_version == VP_NO_VERSION))
			break;	/* its DATA entry will carry the attributes */
		if (fd < 0) {
			rc = fd;
			break;
		}
		if (n->type != VP_NODE_SYMLINK &&
		    fchmodat(fd, name, mode & 07777, 0) && errno != ENOENT)
			rc = -errno;
		if (!rc && fchownat(fd, name, uid, gid, AT_SYMLINK_NOFOLLOW) &&
		    errno != ENOENT && errno != EPERM)
			rc = -errno;
		if (!rc && utimensat(fd, name, times, AT_SYMLINK_NOFOLLOW) &&
		    errno != ENOENT)
			rc = -errno;
		break;
	}
	case OP_DATA:
		break;
	}

	pthread_mutex_lock(&ns->lock);
	if (!rc) {
		switch (op->type) {
		case OP_MKDIR:
		case OP_SYMLINK:
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
			set_place_locked(ns, n, NULL, NULL);
			n->pfs_version = VP_NO_VERSION;
			break;
		default:
			break;
		}
	}
	pthread_mutex_unlock(&ns->lock);
	pthread_mutex_unlock(&ns->pfs_lock);
	if (sfd >= 0)
		close(sfd);
	if (dfd >= 0)
		close(dfd);
	return rc;
}

static const char *op_verb(enum flush_op_type t)
{
	static const char *const verbs[] = {
		[OP_MKDIR] = "mkdir", [OP_DATA] = "flush", [OP_SYMLINK] = "symlink",
		[OP_RENAME] = "rename", [OP_UNLINK] = "unlink", [OP_ATTR] = "chmod",
	};
	return verbs[t];
}

static void *dispatcher_main(void *arg)
{
	struct vp_ns *ns = arg;
	double backoff = 0;

	pthread_mutex_lock(&ns->lock);
	while (!ns->stop) {
		struct flush_op *op = ns->log_head;
		double now = vp_now(), next = now + 3600, when;
		char where[PATH_MAX] = "";
		struct timespec ts;
		int rc;

		start_prepares_locked(ns, now, &next);
		if (!op) {
			pthread_cond_wait(&ns->flush_cond, &ns->lock);
			continue;
		}
		if (!eligible_locked(ns, op, now, &when)) {
			vp_abstime(&ts, when < next ? when : next);
			pthread_cond_timedwait(&ns->flush_cond, &ns->lock, &ts);
			continue;
		}
		if (op->type == OP_DATA && (op->state == OPS_QUEUED ||
					    op->state == OPS_PREPARING)) {
			vp_abstime(&ts, next);
			pthread_cond_timedwait(&ns->flush_cond, &ns->lock, &ts);
			continue;
		}
		pthread_mutex_unlock(&ns->lock);
		if (op->type == OP_DATA && op->state == OPS_FAILED)
			rc = op->prep_rc;
		else if (op->type == OP_DATA)
			rc = publish(ns, op, where, sizeof(where));
		else
			rc = replay_meta(ns, op, where, sizeof(where));
		pthread_mutex_lock(&ns->lock);

		if (rc && vp_pfs_is_transient(rc)) {
			ns->st_retries++;
			ns->last_error = rc;
			snprintf(ns->last_error_path, sizeof(ns->last_error_path),
				 "%s", where);
			backoff = backoff ? backoff * 2 : 0.5;
			if (backoff > ns->cfg.flush_retry_max)
				backoff = ns->cfg.flush_retry_max;
			vp_log(LOG_WARNING, "flush",
			       "%s of '%s' to '%s': %s; keeping it in cache, retrying in %.1f s",
			       op_verb(op->type), *where ? where : "(staging)",
			       ns->pfs_dir, strerror(-rc), backoff);
			if (op->type == OP_DATA && op->state == OPS_FAILED) {
				op->state = OPS_QUEUED;	/* stage it again */
				if (!op->node->pending && ns->cfg.flush_policy != VP_FLUSH_ALL)
					op->node->pending = op;
			}
			vp_abstime(&ts, vp_now() + backoff);
			while (!ns->stop &&
			       pthread_cond_timedwait(&ns->flush_cond, &ns->lock, &ts) != ETIMEDOUT)
				;
			continue;
		}
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
		} else if (backoff) {
			vp_log(LOG_NOTICE, "flush", "the PFS '%s' accepts writes again; flushing resumed",
			       ns->pfs_dir);
		}
		if (!rc) {
			backoff = 0;
			ns->last_error = 0;
		}
		ns->log_head = op->next;
		if (!ns->log_head)
			ns->log_tail = NULL;
		ns->done_seq = op->seq;
		free_op_locked(ns, op);
		pthread_cond_broadcast(&ns->flush_cond);
	}
	pthread_mutex_unlock(&ns->lock);
	return NULL;
}

/* ---- the evictor ----------------------------------------------------- */

static void *evictor_main(void *arg)
{
	struct vp_ns *ns = arg;

	pthread_mutex_lock(&ns->lock);
	while (!ns->stop) {
		uint64_t want;

		if (!ns->evict_wanted) {
			pthread_cond_wait(&ns->evict_cond, &ns->lock);
			continue;
		}
		ns->evict_wanted = 0;
		/* free a tenth of the budget at a time, so writers are not woken for one chunk */
		want = ns->cfg.ram_cache / 10;
		while (ns->lru_head && vp_pool_available(ns->pool) < want) {
			struct vp_node *n = ns->lru_head;

			vp_lru_del_locked(ns, n);
			if (n->cur && !n->work && n->pfs_version == n->version) {
				vp_data_put(n->cur);
				n->cur = NULL;
				ns->st_evictions++;
			}
		}
	}
	pthread_mutex_unlock(&ns->lock);
	return NULL;
}

int vp_flush_start(struct vp_ns *ns)
{
	int rc;

	ns->nworkers = ns->cfg.flush_inflight;
	ns->workers = calloc(ns->nworkers, sizeof(*ns->workers));
	if (!ns->workers)
		return -ENOMEM;
	for (unsigned int i = 0; i < ns->nworkers; i++) {
		rc = pthread_create(&ns->workers[i], NULL, worker_main, ns);
		if (rc) {
			ns->nworkers = i;
			vp_flush_stop(ns);
			return -rc;
		}
	}
	rc = pthread_create(&ns->dispatcher, NULL, dispatcher_main, ns);
	if (!rc) {
		rc = pthread_create(&ns->evictor, NULL, evictor_main, ns);
		if (rc) {
			pthread_mutex_lock(&ns->lock);
			ns->stop = 1;
			pthread_cond_broadcast(&ns->flush_cond);
			pthread_mutex_unlock(&ns->lock);
			pthread_join(ns->dispatcher, NULL);
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
	pthread_mutex_lock(&ns->lock);
	int started = !ns->stop;
	ns->stop = 1;
	pthread_cond_broadcast(&ns->flush_cond);
	pthread_cond_broadcast(&ns->worker_cond);
	pthread_cond_broadcast(&ns->evict_cond);
	pthread_mutex_unlock(&ns->lock);
	if (started && ns->dispatcher) {
		pthread_join(ns->dispatcher, NULL);
		pthread_join(ns->evictor, NULL);
	}
	for (unsigned int i = 0; i < ns->nworkers; i++)
		pthread_join(ns->workers[i], NULL);
	free(ns->workers);
	ns->workers = NULL;
	ns->nworkers = 0;

	pthread_mutex_lock(&ns->lock);
	while (ns->log_head) {
		struct flush_op *op = ns->log_head;

		ns->log_head = op->next;
		free_op_locked(ns, op);
	}
	ns->log_tail = NULL;
	pthread_mutex_unlock(&ns->lock);
}
