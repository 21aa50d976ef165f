/*
 * file: files, handles and commit -- open and create, write and read,
 * FLUSH, fsync and RELEASE, the commit of a version and the
 * publish=schedule decision on it.
 */
#define _GNU_SOURCE
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../log.h"
#include "../losslog.h"
#include "../metrics.h"
#include "ns_i.h"

/* The loss log and the schedule file flush as usual under publish=schedule. */
static int policy_exempt_locked(struct vp_ns *ns, struct vp_node *n)
{
	VP_ASSERT_LOCKED(&ns->lock);
	return n == vp_resolve_locked(ns, ns->cfg.loss_log) ||
	       (n->parent == ns->root && !strcmp(n->name, VP_SCHEDULE_FILE));
}

/* A new version's mtime and ctime: its last change's (vp_mark_dirty), not the commit's. */
static void commit_times(struct vp_node *n)
{
	int64_t t = __atomic_exchange_n(&n->work_mtime_ns, 0, __ATOMIC_RELAXED);

	if (!t) {
		n->mtime = n->ctime = vp_wall_now();
		return;
	}
	n->mtime.tv_sec = t / 1000000000;
	n->mtime.tv_nsec = t % 1000000000;
	if (vp_ts_ns(n->ctime) < t)	/* never back: a chmod or rename during the write is later */
		n->ctime = n->mtime;
}

int vp_commit_locked(struct vp_ns *ns, struct vp_node *n,
		     struct vp_data *bytes)
{
	VP_ASSERT_LOCKED(&ns->lock);
	vp_data_seal(bytes);	/* a memory file: the kernel keeps it immutable from now on */
	if (vp_kino_readers_locked(ns, n))
		vp_rekey_locked(ns, n);	/* a new version, a new inode: readers keep theirs */
	vp_lru_del_locked(ns, n);
	vp_data_put(n->cur);
	n->cur = bytes;
	n->size = vp_data_size(bytes);
	/* after any number a consumer held of the run before (n->floor) */
	n->version = (n->floor > n->version ? n->floor : n->version) + 1;
	if (!ns->replica)
		n->epoch = ns->epoch;	/* a consumer's installer set the producer's */
	commit_times(n);
	__atomic_store_n(&n->streamed, 0, __ATOMIC_RELAXED);	/* the next version streams anew */
	ns->st_commits++;
	vp_metrics_add(VP_C_VERSIONS, 1);
	if (n->parent)
		vp_note_commit_locked(ns, n);	/* the GPU tier queues a mirror: the newest wins */
	vp_event_record_locked(ns, n);
	if (!n->parent || ns->replica)
		return 0;	/* consumers never flush: the producer does */
	if (ns->sched && !policy_exempt_locked(ns, n))
		return 1;
	vp_flush_commit_locked(ns, n, 0);
	vp_note_version_locked(ns, n);
	return 0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/*
 * The median open-to-close time of the last 64 commits: the producer's
 * stall per checkpoint, robust to a log file held open for hours.
 */
double vp_median_stall_locked(struct vp_ns *ns)
{
	double v[64];
	size_t n = ns->st_stall_n < 64 ? (size_t)ns->st_stall_n : 64;

	VP_ASSERT_LOCKED(&ns->lock);
	if (!n)
		return 0;
	memcpy(v, ns->st_stalls, n * sizeof(double));
	qsort(v, n, sizeof(double), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/*
 * Replaces root/name with text, as a new version, through the namespace
 * (not the mount).  Used for the schedule file.  No locks held.
 */
static void write_internal_file(struct vp_ns *ns, const char *name,
				const char *text)
{
	struct vp_handle *h;
	struct stat st;
	int keep, rc;

	rc = vp_ns_lookup(ns, VP_ROOT_INO, name, &st);
	if (rc == 0) {
		rc = vp_ns_open(ns, NULL, st.st_ino, O_WRONLY | O_TRUNC, &h, &keep);
		vp_ns_forget(ns, st.st_ino, 1);
	} else if (rc == -ENOENT) {
		rc = vp_ns_create(ns, NULL, VP_ROOT_INO, name, 0644,
				  O_WRONLY | O_CREAT, &st, &h);
		if (rc == 0)
			vp_ns_forget(ns, st.st_ino, 1);
	}
	if (rc) {
		vp_log(LOG_WARNING, "plan", "could not write '%s': %s", name, strerror(-rc));
		return;
	}
	if (vp_ns_write(ns, h, text, strlen(text), 0) < 0)
		vp_log(LOG_WARNING, "plan", "could not write '%s'", name);
	vp_ns_release(ns, h);
}

/*
 * publish=schedule: reads the loss log, asks the policy, and queues the
 * flush of n's version if it is selected.  No locks held; n is borrowed
 * (the caller holds a reference).
 */
void vp_publish_decide(struct vp_ns *ns, struct vp_node *n, uint64_t version)
{
	struct vp_sched_decision d;
	struct vp_losslog log = { 0 }, *logp = NULL;
	struct vp_node *logn;
	struct vp_data *bytes = NULL;
	char path[PATH_MAX], err[256];
	double stall, lag;

	pthread_mutex_lock(&ns->lock);
	logn = vp_resolve_locked(ns, ns->cfg.loss_log);
	if (logn && logn->type == VP_NODE_FILE) {
		vp_node_get(logn);
		if (logn->work)
			bytes = vp_data_get(logn->work);
	} else {
		logn = NULL;
	}
	stall = vp_median_stall_locked(ns);
	lag = ns->flush.st_flushed_versions ? ns->flush.st_lag_sum / (double)ns->flush.st_flushed_versions : 0;
	pthread_mutex_unlock(&ns->lock);
	if (logn && !bytes && vp_node_data(ns, logn, &bytes))
		bytes = NULL;
	if (bytes) {
		uint64_t size = vp_data_size(bytes);
		char *buf = size ? malloc(size) : NULL;

		if (buf && vp_data_pread(bytes, buf, size, 0) == (ssize_t)size &&
		    vp_losslog_parse(buf, size, ns->cfg.loss_log, &log, err, sizeof(err)) == 0)
			logp = &log;
		free(buf);
		vp_data_put(bytes);
	}
	vp_sched_decide(ns->sched, logp, vp_now(), stall, lag, &d);

	pthread_mutex_lock(&ns->lock);
	if (logn)
		vp_node_put(ns, logn);
	if (d.selected && n->version == version && n->parent && n->cur) {
		vp_flush_commit_locked(ns, n, 0);
		vp_note_version_locked(ns, n);
	}
	else if (!d.selected)
		ns->flush.st_skipped_versions++;
	if (vp_live_path_locked(ns, n, path, sizeof(path)))
		strcpy(path, "(unlinked)");
	pthread_mutex_unlock(&ns->lock);
	vp_log(d.selected ? LOG_INFO : LOG_DEBUG, "plan",
	       "'%s' version %llu at iteration %llu: %s (%s)", path,
	       (unsigned long long)version, (unsigned long long)d.iteration,
	       d.selected ? "published" : "kept on this node only", d.why);
	vp_losslog_release(&log);
}

/* The planner thread has a new schedule: the schedule file follows.  No locks held. */
void vp_publish_schedule_changed(void *arg)
{
	struct vp_ns *ns = arg;
	char *json = vp_sched_json(ns->sched);

	if (json)
		write_internal_file(ns, VP_SCHEDULE_FILE, json);
	free(json);
}

/* The process (thread group) of thread tid, from /proc; 0 if unknown. */
static pid_t tgid_of(pid_t tid)
{
	char path[64], line[128];
	pid_t tgid = 0;
	FILE *f;

	if (tid <= 0)
		return 0;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)tid);
	f = fopen(path, "re");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Tgid: %d", &tgid) == 1)
			break;
	fclose(f);
	return tgid;
}

/* The process of who (NULL: the daemon, 0). */
static pid_t caller_tgid(const struct vp_caller *who)
{
	return who ? tgid_of(who->tid) : 0;
}

struct vp_data *vp_ns_work_data(struct vp_ns *ns)
{
	static int warned;
	struct vp_data *d;
	int err;

	d = vp_data_new_mfile(ns->pool, &err);
	if (d)
		return d;
	if (!__atomic_exchange_n(&warned, 1, __ATOMIC_RELAXED))
		vp_log(LOG_WARNING, "cache", "a memory file for new bytes was refused (%s); writing into chunks, which readers cannot get by passthrough",
		       strerror(-err));
	return vp_data_new(ns->pool);
}

static struct vp_handle *handle_new(struct vp_ns *ns,
				    const struct vp_caller *who,
				    struct vp_node *n, struct vp_data *d,
				    int writable)
{
	struct vp_handle *h = calloc(1, sizeof(*h));

	if (!h)
		return NULL;
	if (writable)
		h->owner = caller_tgid(who);
	__atomic_add_fetch(&ns->open_handles, 1, __ATOMIC_RELAXED);
	vp_node_get(n);
	h->node = n;
	h->data = d;	/* takes the caller's reference */
	h->writable = writable;
	pthread_mutex_lock(&ns->handles_lock);
	LIST_INSERT_HEAD(&ns->handles, h, link);
	pthread_mutex_unlock(&ns->handles_lock);
	return h;
}

int vp_handle_writable(const struct vp_handle *h)
{
	return h->writable;
}

void vp_work_failed(struct vp_node *n, int err)
{
	int none = 0;

	/* the errors that leave the working copy without bytes the writer meant */
	if (err != -ENOSPC && err != -EIO && err != -ENOMEM && err != -EDQUOT &&
	    err != -EFBIG && err != -EPERM)
		return;
	__atomic_compare_exchange_n(&n->work_err, &none, err, 0, __ATOMIC_ACQ_REL,
				    __ATOMIC_RELAXED);
}

/* The last writer went and a write had failed: the working copy is dropped.  ns->lock held. */
static void refuse_commit_locked(struct vp_ns *ns, struct vp_node *n, int err)
{
	char path[PATH_MAX];

	VP_ASSERT_LOCKED(&ns->lock);
	if (vp_live_path_locked(ns, n, path, sizeof(path)))
		snprintf(path, sizeof(path), "%s", n->name ? n->name : "?");
	vp_log(LOG_ERR, "fs", "'%s': not committed: a write to it failed (%s); the file keeps version %" PRIu64 ", and close() returned the error",
	       path, strerror(-err), n->version);
	__atomic_add_fetch(&ns->st_commits_refused, 1, __ATOMIC_RELAXED);
	vp_metrics_add(VP_C_COMMITS_REFUSED, 1);
}

/*
 * Drops what a handle holds; the last writer commits.  ns->lock held.
 * Returns 1 (with the version in *version) when vp_publish_decide() is owed.
 */
static int release_locked(struct vp_ns *ns, struct vp_node *n,
			  struct vp_data *d, int writable, uint64_t *version)
{
	int decide = 0;

	VP_ASSERT_LOCKED(&ns->lock);
	if (writable) {
		assert(n->writers > 0);
		if (--n->writers == 0) {
			struct vp_data *work = n->work;
			int err = __atomic_exchange_n(&n->work_err, 0, __ATOMIC_ACQ_REL);

			n->work = NULL;
			if (err) {
				__atomic_store_n(&n->dirty, 0, __ATOMIC_RELEASE);
				__atomic_store_n(&n->work_mtime_ns, 0, __ATOMIC_RELAXED);
				refuse_commit_locked(ns, n, err);
				vp_data_put(work);
			} else if (__atomic_exchange_n(&n->dirty, 0, __ATOMIC_ACQ_REL)) {
				/* the producer's stall for this checkpoint: open to close */
				ns->st_stalls[ns->st_stall_n++ % 64] = vp_now() - n->work_started;
				decide = vp_commit_locked(ns, n, work);
				if (version)
					*version = n->version;
			}
			else
				vp_data_put(work);
			if (n->cur && n->pfs_version == n->version)
				vp_lru_add_locked(ns, n);
		}
	}
	vp_data_put(d);
	vp_node_put(ns, n);
	return decide;
}

/*
 * Consumer: a writable open by the installer of a file a replicated
 * version replaces attaches the staged bytes as the working copy, as is.
 * Returns a new reference to them, or NULL (nothing staged).
 */
static struct vp_data *attach_install_locked(struct vp_ns *ns,
					     const struct vp_caller *who,
					     struct vp_node *n)
{
	struct install *in;
	struct vp_data *d;

	VP_ASSERT_LOCKED(&ns->lock);
	if (!n->parent || n->work)
		return NULL;
	in = vp_take_install_locked(ns, who, n->parent, n->name);
	if (!in)
		return NULL;
	n->work = vp_data_get(in->data);
	n->work_started = vp_now();
	n->writers++;
	n->version = in->version - 1;
	n->floor = 0;
	n->epoch = in->epoch;
	n->mode = S_IFREG | (in->mode & 07777);
	__atomic_store_n(&n->dirty, 1, __ATOMIC_RELEASE);
	vp_lru_del_locked(ns, n);
	d = vp_data_get(n->work);
	vp_install_free(in);
	return d;
}

/*
 * The bytes an open of n starts from (a new reference in *dp): the
 * working copy, the cached version, the PFS's, or for a writer a copy of
 * them (empty with O_TRUNC).  No locks held.  Returns 0 or -errno.
 */
static int open_data(struct vp_ns *ns, struct vp_node *n, int writable,
		     int flags, struct vp_data **dp, int *keep_cache)
{
	struct vp_data *d = NULL, *base = NULL;
	int rc;

	pthread_mutex_lock(&ns->lock);
	if (n->work) {
		d = vp_data_get(n->work);
	} else if (!writable && n->cur) {
		d = vp_data_get(n->cur);
		*keep_cache = n->kcache_version == n->version;
		n->kcache_version = n->version;
		if (n->in_lru)
			vp_lru_add_locked(ns, n);	/* most recently used */
	}
	pthread_mutex_unlock(&ns->lock);

	if (!d && (!writable || !(flags & O_TRUNC))) {
		rc = vp_node_data(ns, n, &base);
		if (rc)
			return rc;
		if (!writable) {
			d = base;
			base = NULL;
			pthread_mutex_lock(&ns->lock);
			n->kcache_version = n->version;
			pthread_mutex_unlock(&ns->lock);
		}
	}
	if (!d) {
		d = base ? vp_data_clone(base) : vp_ns_work_data(ns);
		vp_data_put(base);
		if (!d)
			return -ENOMEM;
	}
	*dp = d;
	return 0;
}

/*
 * A writer joins n: d becomes the working copy, unless another writer's
 * won the race (then d is swapped for it).  Returns the bytes to use.
 */
static struct vp_data *join_writers_locked(struct vp_ns *ns, struct vp_node *n,
					   struct vp_data *d)
{
	VP_ASSERT_LOCKED(&ns->lock);
	if (!n->work) {
		n->work = vp_data_get(d);
		n->work_started = vp_now();
		__atomic_store_n(&n->work_mtime_ns, 0, __ATOMIC_RELAXED);	/* a new working copy */
	} else if (n->work != d) {
		vp_data_put(d);		/* another writer won the race */
		d = vp_data_get(n->work);
	}
	n->writers++;
	vp_lru_del_locked(ns, n);
	return d;
}

/* Undoes an open that will not get a handle; nothing was written. */
static void open_undo(struct vp_ns *ns, struct vp_node *n, struct vp_data *d,
		      int writable)
{
	vp_node_get(n);
	pthread_mutex_lock(&ns->lock);
	release_locked(ns, n, d, writable, NULL);
	pthread_mutex_unlock(&ns->lock);
}

/*
 * Opens n.  No locks held on entry.  For a writable open the working copy
 * is made (a clone of the latest version, or empty with O_TRUNC).
 */
static int open_node(struct vp_ns *ns, const struct vp_caller *who,
		     struct vp_node *n, int flags, struct vp_handle **hp,
		     int *keep_cache)
{
	int writable = (flags & O_ACCMODE) != O_RDONLY;
	struct vp_data *d = NULL;
	int rc = 0;

	*keep_cache = 0;
	if (n->type == VP_NODE_DIR)
		return -EISDIR;
	if (n->type != VP_NODE_FILE)
		return -ELOOP;

	pthread_mutex_lock(&ns->lock);
	if (writable)
		rc = vp_replica_refuse_locked(ns, who, "writing", n->name ? n->name : "?");
	if (!rc && writable && vp_pt_busy_locked(ns, n)) {
		/* passthrough readers hold this inode: the writer gets a new one */
		vp_rekey_locked(ns, n);
		rc = -ESTALE;
	}
	if (!rc && writable)
		d = attach_install_locked(ns, who, n);
	pthread_mutex_unlock(&ns->lock);
	if (rc)
		return rc;
	if (d)
		goto make_handle;

	rc = open_data(ns, n, writable, flags, &d, keep_cache);
	if (rc)
		return rc;
	if (writable) {
		pthread_mutex_lock(&ns->lock);
		d = join_writers_locked(ns, n, d);
		pthread_mutex_unlock(&ns->lock);
	}
	if (writable && (flags & O_TRUNC) && vp_data_size(d)) {
		rc = vp_data_truncate(d, 0, ns->cfg.cache_wait);
		if (rc) {
			vp_work_failed(n, rc);
			open_undo(ns, n, d, writable);
			return rc;
		}
	}
	if (writable && (flags & O_TRUNC))
		vp_mark_dirty(n);
make_handle:
	*hp = handle_new(ns, who, n, d, writable);
	if (!*hp) {
		open_undo(ns, n, d, writable);
		return -ENOMEM;
	}
	return 0;
}

int vp_ns_open(struct vp_ns *ns, const struct vp_caller *who, uint64_t ino,
	       int flags, struct vp_handle **hp, int *keep_cache)
{
	struct vp_node *n = vp_node_by_ino(ns, ino);
	int rc;

	if (!n)
		return -ESTALE;
	rc = open_node(ns, who, n, flags, hp, keep_cache);
	vp_node_put_unlocked(ns, n);
	return rc;
}

int vp_ns_create(struct vp_ns *ns, const struct vp_caller *who,
		 uint64_t parent, const char *name, mode_t mode, int flags,
		 struct stat *st, struct vp_handle **hp)
{
	struct vp_node *dir, *n;
	struct vp_data *d;
	int rc, keep_cache;

	rc = vp_ns_prepare_new(ns, who, parent, name, &dir);
	if (rc == -EEXIST && !(flags & O_EXCL)) {
		/* lost a race with another creator: open what is there */
		rc = vp_ns_lookup(ns, parent, name, st);
		if (rc)
			return rc;
		rc = vp_ns_open(ns, who, st->st_ino, flags, hp, &keep_cache);
		if (rc)
			vp_ns_forget(ns, st->st_ino, 1);
		return rc;
	}
	if (rc)
		return rc;
	d = vp_ns_work_data(ns);
	n = d ? vp_node_new_locked(ns, VP_NODE_FILE, S_IFREG | (mode & 07777),
				   vp_caller_uid(who), vp_caller_gid(who)) : NULL;
	if (!n) {
		vp_data_put(d);
		rc = -ENOMEM;
		goto out_unlock;
	}
	rc = vp_node_link_locked(ns, dir, n, name);
	if (rc) {
		vp_node_put(ns, n);
		vp_data_put(d);
		goto out_unlock;
	}
	{
		struct install *in = vp_take_install_locked(ns, who, dir, name);

		if (in) {
			/* the replicated bytes are the new file's: no copy */
			vp_data_put(d);
			d = vp_data_get(in->data);
			n->version = in->version - 1;	/* the commit makes it in->version */
			n->epoch = in->epoch;
			n->mode = S_IFREG | (in->mode & 07777);
			vp_install_free(in);
		}
	}
	n->work = vp_data_get(d);
	n->work_started = vp_now();
	n->writers = 1;
	n->dirty = 1;		/* even an empty file is a version */
	n->work_mtime_ns = vp_ts_ns(n->mtime);	/* made now: the commit keeps its times */
	*hp = handle_new(ns, who, n, d, 1);
	if (!*hp) {
		rc = -ENOMEM;	/* the empty file stays, with no writer */
		n->writers = 0;
		vp_data_put(n->work);
		n->work = NULL;
		vp_data_put(d);
		if (vp_commit_locked(ns, n, vp_data_new(ns->pool)))
			vp_flush_commit_locked(ns, n, 0);	/* an empty file: just keep it */
		goto out_unlock;
	}
	vp_node_get(n);		/* the kernel's lookup */
	n->nlookup++;
	vp_node_stat_locked(ns, n, st);
out_unlock:
	vp_node_put(ns, dir);
	pthread_mutex_unlock(&ns->lock);
	return rc;
}

int vp_ns_release(struct vp_ns *ns, struct vp_handle *h)
{
	struct vp_node *n = h->node;
	uint64_t version = 0;
	int decide;

	pthread_mutex_lock(&ns->handles_lock);
	LIST_REMOVE(h, link);
	pthread_mutex_unlock(&ns->handles_lock);
	pthread_mutex_lock(&ns->lock);
	vp_kino_put(h->kino);	/* one vp_ns_pt_close() did not see (the exit) */
	vp_node_get(n);		/* for vp_publish_decide, after the handle's is gone */
	decide = release_locked(ns, n, h->data, h->writable, &version);
	if (__atomic_sub_fetch(&ns->open_handles, 1, __ATOMIC_RELAXED) == 0)
		pthread_cond_broadcast(&ns->idle_cond);
	pthread_mutex_unlock(&ns->lock);
	free(h);
	if (decide)
		vp_publish_decide(ns, n, version);
	vp_node_put_unlocked(ns, n);
	return 0;
}

/*
 * Streaming: once the working copy has grown repl_stream bytes past what
 * was last offered, consumers get a preview of its finished chunks (a COW
 * snapshot: the writer copies a chunk before it changes one the snapshot
 * holds).  No locks held; the CAS keeps concurrent writers to one preview.
 */
static void maybe_preview(struct vp_ns *ns, struct vp_handle *h)
{
	struct vp_observer_slot obs[VP_NS_MAX_OBSERVERS];
	struct vp_node *n = h->node;
	struct vp_ns_entry e = { .type = VP_ENTRY_FILE };
	uint64_t size, done, full, chunk;
	char path[PATH_MAX];
	unsigned int nobs;

	if (ns->replica || !ns->cfg.repl_stream)
		return;
	size = vp_data_size(h->data);
	done = __atomic_load_n(&n->streamed, __ATOMIC_RELAXED);
	if (size < done + ns->cfg.repl_stream)
		return;
	chunk = vp_pool_chunk_size(ns->pool);
	full = size / chunk * chunk;
	if (full <= done ||
	    !__atomic_compare_exchange_n(&n->streamed, &done, full, 0,
					 __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		return;
	pthread_mutex_lock(&ns->lock);
	nobs = vp_preview_observers_locked(ns, obs);
	if (!nobs || !n->parent || vp_live_path_locked(ns, n, path, sizeof(path))) {
		pthread_mutex_unlock(&ns->lock);
		return;
	}
	e.path = path;
	e.ino = n->ino;
	e.version = (n->floor > n->version ? n->floor : n->version) + 1;
	e.epoch = ns->epoch;
	e.mode = n->mode;
	pthread_mutex_unlock(&ns->lock);
	e.d = vp_data_view(h->data);	/* no seal: the writer goes on */
	if (!e.d)
		return;
	for (unsigned int i = 0; i < nobs; i++)
		obs[i].ops->on_preview(obs[i].arg, &e);
	vp_data_put(e.d);
}

/* What a write that got n (bytes, or -errno) does after the bytes are in. */
static void wrote(struct vp_ns *ns, struct vp_handle *h, ssize_t n)
{
	if (n < 0)
		vp_work_failed(h->node, (int)n);
	if (n > 0) {
		__atomic_store_n(&h->wrote, 1, __ATOMIC_RELAXED);
		maybe_preview(ns, h);
		vp_mark_dirty(h->node);
		__atomic_add_fetch(&ns->st_bytes_written, (uint64_t)n, __ATOMIC_RELAXED);
		vp_metrics_add(VP_C_BYTES_WRITTEN, (uint64_t)n);
	} else if (n == -ENOSPC) {
		vp_log(LOG_WARNING, "cache",
		       "write refused: the RAM cache (ram_cache) is full of data not yet on the PFS and none was freed in %.1f s; raise ram_cache or flush_bw",
		       ns->cfg.cache_wait);
	}
}

ssize_t vp_ns_write(struct vp_ns *ns, struct vp_handle *h, const void *buf,
		    size_t len, uint64_t off)
{
	ssize_t n;

	if (!h->writable)
		return -EBADF;
	n = vp_data_write(h->data, buf, len, off, ns->cfg.cache_wait);
	wrote(ns, h, n);
	return n;
}

ssize_t vp_ns_write_fd(struct vp_ns *ns, struct vp_handle *h, uint64_t off, size_t len,
		       ssize_t (*fill)(void *arg, int fd, uint64_t off, size_t len), void *arg)
{
	ssize_t n;

	if (!h->writable)
		return -EBADF;
	n = vp_data_write_fd(h->data, off, len, ns->cfg.cache_wait, fill, arg);
	if (n != -ENOTSUP)
		wrote(ns, h, n);
	return n;
}

int vp_ns_fallocate(struct vp_ns *ns, struct vp_handle *h, int mode, uint64_t off,
		    uint64_t len)
{
	uint64_t before;
	int rc;

	if (mode & ~FALLOC_FL_KEEP_SIZE)
		return -EOPNOTSUPP;	/* holes and ranges of zeros: not in memory files (docs) */
	if (!h->writable)
		return -EBADF;
	if (len == 0)
		return -EINVAL;
	before = vp_data_size(h->data);
	rc = vp_data_fallocate(h->data, off, len, mode & FALLOC_FL_KEEP_SIZE, ns->cfg.cache_wait);
	if (rc == 0 && vp_data_size(h->data) != before) {
		__atomic_store_n(&h->wrote, 1, __ATOMIC_RELAXED);
		vp_mark_dirty(h->node);
	} else if (rc == -ENOSPC) {
		/* the file's bytes are whole: nothing failed but the reservation */
		vp_log(LOG_WARNING, "cache",
		       "fallocate refused: the RAM cache (ram_cache) cannot hold %" PRIu64 " more bytes within %.1f s",
		       len, ns->cfg.cache_wait);
	}
	return rc;
}

ssize_t vp_ns_read(struct vp_ns *ns, struct vp_handle *h, uint64_t off,
		   size_t len, struct vp_read *rd)
{
	ssize_t n = vp_data_read(h->data, off, len, rd);

	if (n > 0) {
		__atomic_add_fetch(&ns->st_bytes_read, (uint64_t)n, __ATOMIC_RELAXED);
		vp_metrics_add(VP_C_BYTES_READ, (uint64_t)n);
	}
	if (rd->hits)
		vp_metrics_add(VP_C_CACHE_HITS, rd->hits);
	if (rd->misses)
		vp_metrics_add(VP_C_CACHE_MISSES, rd->misses);
	return n;
}

/*
 * Commits what h's writers wrote so far as a version, as a copy-on-write
 * snapshot: the working copy goes on.  No locks held.  Returns 0 or -errno.
 */
static int commit_snapshot(struct vp_ns *ns, struct vp_handle *h)
{
	struct vp_node *n = h->node;
	struct vp_data *snap;
	uint64_t version;
	int decide, err;

	if (!h->writable)
		return 0;
	err = __atomic_load_n(&n->work_err, __ATOMIC_ACQUIRE);
	if (err)
		return err;	/* a failed write: never a version (the release says so) */
	if (!__atomic_exchange_n(&n->dirty, 0, __ATOMIC_ACQ_REL))
		return 0;
	snap = vp_data_clone(h->data);
	if (!snap) {
		__atomic_store_n(&n->dirty, 1, __ATOMIC_RELEASE);
		return -ENOMEM;
	}
	pthread_mutex_lock(&ns->lock);
	ns->st_stalls[ns->st_stall_n++ % 64] = vp_now() - n->work_started;
	decide = vp_commit_locked(ns, n, snap);
	version = n->version;
	pthread_mutex_unlock(&ns->lock);
	if (decide)
		vp_publish_decide(ns, n, version);
	return 0;
}

int vp_ns_flush(struct vp_ns *ns, const struct vp_caller *who,
		struct vp_handle *h)
{
	pid_t tgid;
	int last, err;

	if (!h->writable)
		return 0;
	/* a write to the file failed: every close() says so, and nothing commits */
	err = __atomic_load_n(&h->node->work_err, __ATOMIC_ACQUIRE);
	if (err)
		return err;
	/*
	 * FLUSH comes with every close() of a descriptor, so two kinds wait
	 * for the handle's last close (RELEASE) instead of committing here:
	 * - nothing written through this handle yet: a shell's `cmd > file`
	 *   closes its copy after dup2(), before cmd writes a byte (an empty
	 *   version would reach watchers and consumers);
	 * - a close by another process of a copy it inherited (fork,
	 *   close-on-exec at exec, a DataLoader worker exiting): that must not
	 *   commit a half-written file.  The cheap check goes first.
	 */
	if (!__atomic_load_n(&h->wrote, __ATOMIC_RELAXED))
		return 0;
	tgid = caller_tgid(who);
	if (h->owner && tgid && tgid != h->owner)
		return 0;
	pthread_mutex_lock(&ns->lock);
	last = h->node->writers == 1;
	pthread_mutex_unlock(&ns->lock);
	/*
	 * close() waits for FLUSH but not for RELEASE, so the version is
	 * committed here, where the writer waits, when this is the last
	 * writable handle: once close() returns, everyone sees the version.
	 */
	return last ? commit_snapshot(ns, h) : 0;
}

/*
 * fsync=peers[:N]: n's version is in the memory of N consumers (their
 * DONE), or EIO after FSYNC_PEERS_S or once too few are subscribed; the
 * version stays committed either way.
 */
static int fsync_peers(struct vp_ns *ns, struct vp_node *n)
{
	unsigned int want = ns->cfg.fsync_peers, have;
	char path[PATH_MAX] = "?";
	struct vp_data *d = NULL;
	uint64_t version = 0;

	pthread_mutex_lock(&ns->lock);
	if (n->cur && n->parent) {
		d = vp_data_get(n->cur);
		version = n->version;
		vp_live_path_locked(ns, n, path, sizeof(path));
	}
	pthread_mutex_unlock(&ns->lock);
	if (!d)
		return 0;	/* unlinked: nobody will hold it */
	have = vp_held_wait(ns, d, want, FSYNC_PEERS_S);
	vp_data_put(d);
	if (have >= want)
		return 0;
	vp_log(LOG_ERR, "fs", "fsync of '%s': %u of the %u consumer(s) fsync=peers asks for hold version %" PRIu64 "; EIO (it stays committed here)",
	       path, have, want, version);
	return -EIO;
}

int vp_ns_fsync(struct vp_ns *ns, struct vp_handle *h)
{
	struct vp_node *n = h->node;
	struct vp_flush_progress p;
	char path[PATH_MAX];
	int rc;

	if (ns->cfg.fsync_mode == VP_FSYNC_CACHE)
		return 0;
	/* fsync=pfs: make what was written a version, and wait for the PFS */
	rc = commit_snapshot(ns, h);
	if (rc)
		return rc;
	if (ns->cfg.fsync_mode == VP_FSYNC_PEERS)
		return fsync_peers(ns, n);
	pthread_mutex_lock(&ns->lock);
	rc = vp_live_path_locked(ns, n, path, sizeof(path));
	pthread_mutex_unlock(&ns->lock);
	if (rc)
		return 0;	/* unlinked: nothing will reach the PFS */
	rc = vp_ns_flush_start(ns, path, &p);
	while (rc == 0)
		rc = vp_ns_flush_poll(ns, &p, 1.0);
	return rc < 0 ? rc : 0;
}

/* The new, empty file at path for vp_ns_recover (its directory must exist); NULL: cannot. */
static struct vp_node *recover_new_locked(struct vp_ns *ns, const char *path, uint32_t mode)
{
	char dir[PATH_MAX];
	const char *slash = strrchr(path, '/'), *name = slash ? slash + 1 : path;
	struct vp_node *parent, *n;

	VP_ASSERT_LOCKED(&ns->lock);
	snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash - path) : 0, path);
	parent = *dir ? vp_resolve_locked(ns, dir) : ns->root;
	if (!parent || parent->type != VP_NODE_DIR || vp_reserved_name_locked(ns, parent, name))
		return NULL;
	/* its owner was never sent: its directory's, not the daemon's (root) */
	n = vp_node_new_locked(ns, VP_NODE_FILE, S_IFREG | (mode & 01777), parent->uid, parent->gid);
	if (n && vp_node_link_locked(ns, parent, n, name)) {
		vp_node_put(ns, n);
		n = NULL;
	}
	return n;
}

int vp_ns_recover(struct vp_ns *ns, const char *path, struct vp_data *d,
		  uint64_t version, uint64_t had, uint32_t mode, int64_t mtime_ns)
{
	struct vp_node *n;
	int rc = 0, decide = 0;

	pthread_mutex_lock(&ns->lock);
	n = vp_resolve_locked(ns, path);
	if (!n && !had && !(n = recover_new_locked(ns, path, mode))) {
		rc = -ENOTDIR;	/* its directory is gone */
	} else if (!n || n->type != VP_NODE_FILE || !n->parent) {
		rc = -ESTALE;
	} else if (n->version != had || n->work || version <= n->version) {
		rc = -ESTALE;	/* a version of this run, or a writer: it wins */
	} else {
		uint64_t floor = n->floor;	/* raised for it, or for a later one */

		vp_rekey_locked(ns, n);	/* a new inode: the kernel drops what it cached of the old bytes */
		n->floor = version - 1;	/* the commit numbers it `version` */
		n->mode = S_IFREG | (mode & 01777);	/* no setuid or setgid from the network */
		decide = vp_commit_locked(ns, n, vp_data_get(d));
		n->floor = floor;
		n->mtime.tv_sec = mtime_ns / 1000000000;
		n->mtime.tv_nsec = mtime_ns % 1000000000;
		if (decide)
			vp_node_get(n);
	}
	pthread_mutex_unlock(&ns->lock);
	if (decide) {
		vp_publish_decide(ns, n, version);
		vp_node_put_unlocked(ns, n);
	}
	return rc;
}
