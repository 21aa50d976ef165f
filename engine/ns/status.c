/*
 * status: what the namespace shows -- xattrs, the status JSON, metrics --
 * and the operations viperctl asks for: flush, wait for idle, warm up.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../json.h"
#include "../log.h"
#include "ns_i.h"

#define XATTR_VERSION "user.viperfs.version"
#define XATTR_STATE "user.viperfs.state"
#define XATTR_CONTROL "user.viperfs.control"

static const char *state_locked(struct vp_ns *ns, struct vp_node *n)
{
	VP_ASSERT_LOCKED(&ns->lock);
	if (n->pfs_version == n->version)
		return "flushed";
	if (n->cur && !ns->replica && vp_held_count_locked(ns, n->cur))
		return "peers";	/* in consumers' memory too: survives this node */
	if (n->flushing_version == n->version)
		return "flushing";
	return "cached";
}

static ssize_t copy_value(const char *value, char *buf, size_t len)
{
	size_t l = strlen(value);

	if (len == 0)
		return (ssize_t)l;
	if (l > len)
		return -ERANGE;
	memcpy(buf, value, l);
	return (ssize_t)l;
}

ssize_t vp_ns_getxattr(struct vp_ns *ns, uint64_t ino, const char *name,
		       char *buf, size_t len)
{
	char value[PATH_MAX];
	struct vp_node *n;
	ssize_t rc = -ENODATA;

	pthread_mutex_lock(&ns->lock);
	n = vp_node_find_locked(ns, ino);
	if (!n) {
		rc = -ESTALE;
		goto out_unlock;
	}
	value[0] = '\0';
	if (n->type == VP_NODE_FILE && !strcmp(name, XATTR_VERSION))
		snprintf(value, sizeof(value), "%" PRIu64, n->version);
	else if (n->type == VP_NODE_FILE && !strcmp(name, XATTR_STATE))
		snprintf(value, sizeof(value), "%s", state_locked(ns, n));
	else if (n == ns->root && !strcmp(name, XATTR_CONTROL) &&
		 ns->control_path[0])
		snprintf(value, sizeof(value), "%s", ns->control_path);
	else
		goto out_unlock;
	rc = copy_value(value, buf, len);
out_unlock:
	pthread_mutex_unlock(&ns->lock);
	return rc;
}

ssize_t vp_ns_listxattr(struct vp_ns *ns, uint64_t ino, char *buf, size_t len)
{
	static const char file_names[] = XATTR_VERSION "\0" XATTR_STATE;
	static const char root_names[] = XATTR_CONTROL;
	struct vp_node *n;
	const char *names = "";
	size_t l = 0;

	pthread_mutex_lock(&ns->lock);
	n = vp_node_find_locked(ns, ino);
	if (n && n->type == VP_NODE_FILE) {
		names = file_names;
		l = sizeof(file_names);
	} else if (n == ns->root && ns->control_path[0]) {
		names = root_names;
		l = sizeof(root_names);
	}
	pthread_mutex_unlock(&ns->lock);
	if (!n)
		return -ESTALE;
	if (len == 0)
		return (ssize_t)l;
	if (l > len)
		return -ERANGE;
	memcpy(buf, names, l);
	return (ssize_t)l;
}

/* Queues a forced flush of every unflushed file below n.  ns->lock held. */
static void force_subtree_locked(struct vp_ns *ns, struct vp_node *n)
{
	VP_ASSERT_LOCKED(&ns->lock);
	if (n->type == VP_NODE_DIR) {
		for (struct vp_node *c = LIST_FIRST(&n->children); c;
		     c = LIST_NEXT(c, sib_link))
			force_subtree_locked(ns, c);
		return;
	}
	if (n->type != VP_NODE_FILE || !n->cur)
		return;
	if (n->pending && n->pending->version == n->version) {
		n->pending->forced = 1;
		return;
	}
	/* a queued entry with an older version (flush=every:N) takes the newest */
	if (n->pfs_version != n->version && n->flushing_version != n->version)
		vp_flush_commit_locked(ns, n, 1);
}

int vp_ns_flush_start(struct vp_ns *ns, const char *path,
		      struct vp_flush_progress *p)
{
	struct vp_node *n;
	int rc = 0;

	memset(p, 0, sizeof(*p));
	pthread_mutex_lock(&ns->lock);
	n = vp_resolve_locked(ns, path);
	if (!n) {
		rc = -ENOENT;
		goto out_unlock;
	}
	force_subtree_locked(ns, n);
	p->target_seq = ns->flush.next_seq - 1;
	if (p->target_seq > ns->flush.force_seq)
		ns->flush.force_seq = p->target_seq;
	pthread_cond_broadcast(&ns->flush.cond);
out_unlock:
	pthread_mutex_unlock(&ns->lock);
	if (!rc)
		vp_ns_flush_poll(ns, p, 0);
	return rc;
}

int vp_ns_flush_poll(struct vp_ns *ns, struct vp_flush_progress *p,
		     double wait_s)
{
	uint64_t left_bytes = 0, left_ops = 0;
	struct flush_op *op;
	int rc;

	pthread_mutex_lock(&ns->lock);
	if (wait_s > 0 && ns->flush.done_seq < p->target_seq) {
		struct timespec ts;

		vp_abstime(&ts, vp_now() + wait_s);
		pthread_cond_timedwait(&ns->flush.cond, &ns->lock, &ts);
	}
	TAILQ_FOREACH(op, &ns->flush.log, link) {
		if (op->seq > p->target_seq)
			break;
		left_ops++;
		if (op->type == OP_DATA && op->data)
			left_bytes += op->size - __atomic_load_n(&op->written, __ATOMIC_RELAXED);
	}
	if (p->bytes_total < left_bytes + p->bytes_done)
		p->bytes_total = left_bytes + p->bytes_done;
	p->bytes_done = p->bytes_total - left_bytes;
	p->ops_left = left_ops;
	p->last_error = ns->flush.last_error;
	rc = ns->flush.done_seq >= p->target_seq;
	pthread_mutex_unlock(&ns->lock);
	return rc;
}

/* The tiers that hold n's current version, as a new array of names. */
static json_t *tiers_locked(struct vp_ns *ns, struct vp_node *n)
{
	json_t *tiers;
	int ram, gpu, pfs;

	VP_ASSERT_LOCKED(&ns->lock);
	/*
	 * Where its bytes sit: "ram" (the cache holds this version; one loaded
	 * from the PFS fills in as it is read), "gpu" (mirrored), "pfs".  No
	 * data function here: the namespace lock is held.
	 */
	ram = n->cur != NULL;
	gpu = vp_tier_size(ns, n->ino, n->version) != UINT64_MAX;
	pfs = n->pfs_version == n->version;
	tiers = json_array();
	if (tiers && ((ram && json_array_append_new(tiers, json_string("ram"))) ||
		      (gpu && json_array_append_new(tiers, json_string("gpu"))) ||
		      (pfs && json_array_append_new(tiers, json_string("pfs"))))) {
		json_decref(tiers);
		tiers = NULL;
	}
	return tiers;
}

/* Appends to files one object for each file at or below n; -ENOMEM. */
static int versions_locked(struct vp_ns *ns, struct vp_node *n, json_t *files)
{
	char path[PATH_MAX];
	json_t *file;

	VP_ASSERT_LOCKED(&ns->lock);
	if (n->type == VP_NODE_DIR) {
		for (struct vp_node *c = LIST_FIRST(&n->children); c;
		     c = LIST_NEXT(c, sib_link))
			if (versions_locked(ns, c, files))
				return -ENOMEM;
		return 0;
	}
	if (n->type != VP_NODE_FILE || vp_live_path_locked(ns, n, path, sizeof(path)))
		return 0;
	file = json_pack("{s:o,s:I,s:I,s:s,s:I,s:o}",
			 "path", vp_json_name(path),
			 "version", (json_int_t)n->version,
			 "size", (json_int_t)vp_node_size_locked(ns, n),
			 "state", state_locked(ns, n),
			 "writers", (json_int_t)n->writers,
			 "tiers", tiers_locked(ns, n));
	return json_array_append_new(files, file) ? -ENOMEM : 0;
}

struct file_counts {
	uint64_t files;			/* linked files */
	uint64_t unflushed;		/* whose latest version is not on the PFS */
	uint64_t unflushed_cached;	/* the same, with the bytes in the cache */
};

static void count_files_locked(struct vp_ns *ns, struct file_counts *c)
{
	VP_ASSERT_LOCKED(&ns->lock);
	memset(c, 0, sizeof(*c));
	for (size_t i = 0; i < ns->hash_size; i++)
		for (struct vp_node *n = LIST_FIRST(&ns->by_ino[i]); n;
		     n = LIST_NEXT(n, ino_link)) {
			int unflushed = n->pfs_version != n->version;

			if (n->type != VP_NODE_FILE || !n->parent)
				continue;
			c->files++;
			c->unflushed += unflushed;
			c->unflushed_cached += unflushed && n->cur;
		}
}

/* The flush's part of status. */
static json_t *flush_status_locked(struct vp_ns *ns, const struct vp_flush_queue *q)
{
	const struct vp_flush *f = &ns->flush;
	double mean_lag;

	VP_ASSERT_LOCKED(&ns->lock);
	mean_lag = f->st_flushed_versions ?
		   f->st_lag_sum / (double)f->st_flushed_versions : 0.0;
	return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:o,s:o,s:s,s:o}",
			 "queued_ops", (json_int_t)q->ops,
			 "queued_bytes", (json_int_t)q->data_bytes,
			 "preparing", (json_int_t)f->preparing,
			 "holding", (json_int_t)f->holding,
			 "held_versions", (json_int_t)f->st_held,
			 "hold_timeouts", (json_int_t)f->st_hold_timeouts,
			 "flushed_versions", (json_int_t)f->st_flushed_versions,
			 "flushed_bytes", (json_int_t)f->st_flushed_bytes,
			 "skipped_versions", (json_int_t)f->st_skipped_versions,
			 "retries", (json_int_t)f->st_retries,
			 "last_lag_s", vp_json_real(f->st_last_flush_lag),
			 "mean_lag_s", vp_json_real(mean_lag),
			 "last_error", f->last_error ? strerror(-f->last_error) : "",
			 /* a file's name: any bytes */
			 "last_error_path", vp_json_name(f->last_error ? f->last_error_path : ""));
}

/*
 * "tiers": the RAM tier, and the GPU tier where gpu_cache asked for one
 * that is off (with why).  The GPU tier's own status is the caller's to
 * add (ctl.c).
 */
static json_t *tiers_status_locked(struct vp_ns *ns, const struct vp_pool_stats *ps)
{
	json_t *tiers;

	VP_ASSERT_LOCKED(&ns->lock);
	tiers = json_pack("{s:{s:I,s:I}}", "ram", "budget", (json_int_t)ps->budget,
			  "used", (json_int_t)ps->used);
	if (tiers && !ns->tier && ns->cfg.gpu_cache &&
	    json_object_set_new(tiers, "gpu", json_pack("{s:s,s:o}", "state", "off", "reason",
							 vp_json_name(ns->gpu_off_reason)))) {
		json_decref(tiers);
		tiers = NULL;
	}
	return tiers;
}

json_t *vp_ns_status(struct vp_ns *ns)
{
	struct vp_pool_stats ps;
	struct vp_mspare_stats sps;
	struct vp_flush_queue q;
	struct file_counts fc;
	json_t *st, *paths;
	const char *mode;
	size_t huge = vp_mfile_huge(&mode);

	vp_pool_get_stats(ns->pool, &ps);
	pthread_mutex_lock(&ns->lock);
	vp_flush_queue_locked(ns, &q);
	count_files_locked(ns, &fc);
	paths = json_array();
	if (paths && versions_locked(ns, ns->root, paths)) {
		json_decref(paths);
		paths = NULL;
	}
	vp_mspare_get_stats(ns->spare, &sps);
	st = json_pack("{s:o,s:i,s:I,s:o,s:o,s:{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I},s:I,s:I,s:o,"
		       "s:I,s:I,s:o,s:I,s:I,s:I,s:o,s:{s:s,s:o},s:{s:I,s:o}}",
		       "pfs_dir", vp_json_name(ns->pfs_dir),
		       "pid", (int)getpid(),
		       "open_files", (json_int_t)__atomic_load_n(&ns->open_handles, __ATOMIC_RELAXED),
		       "unmount_wait_s", vp_json_real(ns->cfg.unmount_wait),
		       "tiers", tiers_status_locked(ns, &ps),
		       "ram", "budget", (json_int_t)ps.budget, "used", (json_int_t)ps.used,
		       "mapped", (json_int_t)ps.mapped, "waits", (json_int_t)ps.waits,
		       "enospc", (json_int_t)ps.enospc,
		       /* what the budget holds: versions' memory files, and chunks */
		       /* two snapshots: a spare made or dropped between them must not wrap */
		       "memory_files", (json_int_t)(ps.charged > sps.ready ? ps.charged - sps.ready : 0),
		       "chunks", (json_int_t)(ps.used - ps.charged),
		       /* pages allocated ahead for the next version (ram_spare) */
		       "spare", (json_int_t)sps.ready,
		       "files", (json_int_t)fc.files,
		       "unflushed_files", (json_int_t)fc.unflushed,
		       "flush", flush_status_locked(ns, &q),
		       "commits", (json_int_t)ns->st_commits,
		       "commits_refused", (json_int_t)__atomic_load_n(&ns->st_commits_refused, __ATOMIC_RELAXED),
		       "checkpoint_stall_s", vp_json_real(vp_median_stall_locked(ns)),
		       "evictions", (json_int_t)ns->flush.st_evictions,
		       "bytes_written", (json_int_t)__atomic_load_n(&ns->st_bytes_written, __ATOMIC_RELAXED),
		       "bytes_read", (json_int_t)__atomic_load_n(&ns->st_bytes_read, __ATOMIC_RELAXED),
		       "paths", paths,
		       "read_path", "mode", ns->read_path[0] ? ns->read_path : "daemon",
		       "why", vp_json_name(ns->read_path_why),
		       "memory_pages", "bytes", (json_int_t)(huge ? huge : 4096),
		       "shmem_enabled", vp_json_name(mode));
	pthread_mutex_unlock(&ns->lock);
	return st;
}

int vp_ns_versions(struct vp_ns *ns, const char *path, json_t **files)
{
	struct vp_node *n;
	int rc = 0;

	pthread_mutex_lock(&ns->lock);
	n = vp_resolve_locked(ns, path);
	*files = n ? json_array() : NULL;
	if (!n)
		rc = -ENOENT;
	else if (!*files || versions_locked(ns, n, *files))
		rc = -ENOMEM;
	pthread_mutex_unlock(&ns->lock);
	if (rc) {
		json_decref(*files);
		*files = NULL;
	}
	return rc;
}

int vp_ns_wait_idle(struct vp_ns *ns, double wait_s, unsigned int *open)
{
	struct timespec ts;
	int rc = 0;

	vp_abstime(&ts, vp_now() + wait_s);
	pthread_mutex_lock(&ns->lock);
	while (__atomic_load_n(&ns->open_handles, __ATOMIC_RELAXED) &&
	       rc != ETIMEDOUT)
		rc = pthread_cond_timedwait(&ns->idle_cond, &ns->lock, &ts);
	*open = __atomic_load_n(&ns->open_handles, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&ns->lock);
	return *open ? -EBUSY : 0;
}

/* Collects the files below n (with references) into *files.  ns->lock held. */
static int collect_files_locked(struct vp_ns *ns, struct vp_node *n,
				struct vp_node ***files, size_t *count,
				size_t *cap)
{
	VP_ASSERT_LOCKED(&ns->lock);
	if (n->type == VP_NODE_DIR) {
		for (struct vp_node *c = LIST_FIRST(&n->children); c;
		     c = LIST_NEXT(c, sib_link))
			if (collect_files_locked(ns, c, files, count, cap))
				return -ENOMEM;
		return 0;
	}
	if (n->type != VP_NODE_FILE)
		return 0;
	if (*count == *cap) {
		size_t ncap = *cap ? *cap * 2 : 64;
		struct vp_node **nf = realloc(*files, ncap * sizeof(**files));

		if (!nf)
			return -ENOMEM;
		*files = nf;
		*cap = ncap;
	}
	vp_node_get(n);
	(*files)[(*count)++] = n;
	return 0;
}

int vp_ns_warm(struct vp_ns *ns, const char *path, vp_ns_warm_cb cb, void *arg,
	       struct vp_warm_progress *p)
{
	struct vp_node *top = vp_resolve_loading(ns, path), **files = NULL;
	size_t count = 0, cap = 0;
	int rc = 0;

	memset(p, 0, sizeof(*p));
	if (!top)
		return -ENOENT;
	if (top->type == VP_NODE_DIR)
		vp_ns_load_tree(ns, top);
	pthread_mutex_lock(&ns->lock);
	rc = collect_files_locked(ns, top, &files, &count, &cap);
	for (size_t i = 0; i < count; i++)
		p->bytes_total += files[i]->size;
	pthread_mutex_unlock(&ns->lock);
	p->files_total = count;
	vp_node_put_unlocked(ns, top);
	if (cb && !rc)
		rc = cb(arg, p);
	for (size_t i = 0; i < count && !rc; i++) {
		struct vp_data *d = NULL;
		uint64_t off = 0, size;

		rc = vp_node_data(ns, files[i], &d);
		if (rc) {
			p->errors++;
			rc = 0;
			continue;
		}
		size = vp_data_size(d);
		while (off < size && !rc) {
			struct vp_read rd;
			ssize_t n = vp_data_read(d, off, d->chunk_size, &rd);

			if (n <= 0) {
				p->errors++;
				break;
			}
			vp_read_release(&rd);
			off += (uint64_t)n;
			p->bytes_done += (uint64_t)n;
			if (cb && (off % (64ull << 20)) == 0)
				rc = cb(arg, p);
		}
		p->bytes_cached += vp_data_resident(d) < size ? vp_data_resident(d) : size;
		vp_data_put(d);
		p->files_done++;
		if (cb && !rc)
			rc = cb(arg, p);
	}
	for (size_t i = 0; i < count; i++)
		vp_node_put_unlocked(ns, files[i]);
	free(files);
	return rc;
}

void vp_ns_metrics(struct vp_ns *ns, FILE *out)
{
	char tier_used[96] = "", tier_budget[96] = "";
	struct vp_pool_stats ps;
	struct vp_mspare_stats sps;
	struct vp_flush_queue q;
	struct file_counts fc;
	double now = vp_now();

	vp_pool_get_stats(ns->pool, &ps);
	vp_mspare_get_stats(ns->spare, &sps);
	if (ns->tier) {
		uint64_t used, budget;

		ns->tier->usage(ns->tier_arg, &used, &budget);
		snprintf(tier_used, sizeof(tier_used), "viperfs_cache_bytes{tier=\"%s\"} %" PRIu64 "\n",
			 ns->tier->name, used);
		snprintf(tier_budget, sizeof(tier_budget),
			 "viperfs_cache_budget_bytes{tier=\"%s\"} %" PRIu64 "\n", ns->tier->name, budget);
	}
	pthread_mutex_lock(&ns->lock);
	vp_flush_queue_locked(ns, &q);
	count_files_locked(ns, &fc);
	fprintf(out,
		"# HELP viperfs_cache_bytes Bytes of file data held, by tier.\n"
		"# TYPE viperfs_cache_bytes gauge\n"
		"viperfs_cache_bytes{tier=\"ram\"} %" PRIu64 "\n"
		"%s"
		"# HELP viperfs_cache_budget_bytes Budget of each tier.\n"
		"# TYPE viperfs_cache_budget_bytes gauge\n"
		"viperfs_cache_budget_bytes{tier=\"ram\"} %" PRIu64 "\n"
		"%s"
		"# HELP viperfs_cache_spare_bytes Of the RAM cache, pages allocated ahead for the next version (ram_spare).\n"
		"# TYPE viperfs_cache_spare_bytes gauge\n"
		"viperfs_cache_spare_bytes %" PRIu64 "\n"
		"# HELP viperfs_flush_queue_ops Namespace operations waiting to reach the PFS.\n"
		"# TYPE viperfs_flush_queue_ops gauge\n"
		"viperfs_flush_queue_ops %" PRIu64 "\n"
		"# HELP viperfs_flush_queue_bytes File bytes waiting to reach the PFS.\n"
		"# TYPE viperfs_flush_queue_bytes gauge\n"
		"viperfs_flush_queue_bytes %" PRIu64 "\n"
		"# HELP viperfs_unflushed_files Files whose latest version is not on the PFS.\n"
		"# TYPE viperfs_unflushed_files gauge\n"
		"viperfs_unflushed_files %" PRIu64 "\n"
		"# HELP viperfs_flush_lag_seconds Age of the oldest version waiting for the PFS (0: none waits).\n"
		"# TYPE viperfs_flush_lag_seconds gauge\n"
		"viperfs_flush_lag_seconds %.6f\n"
		"# HELP viperfs_flush_last_lag_seconds Commit to PFS of the last version flushed.\n"
		"# TYPE viperfs_flush_last_lag_seconds gauge\n"
		"viperfs_flush_last_lag_seconds %.6f\n"
		"# HELP viperfs_flush_errors_total Failed PFS operations (each is retried).\n"
		"# TYPE viperfs_flush_errors_total counter\n"
		"viperfs_flush_errors_total %" PRIu64 "\n"
		"# HELP viperfs_open_files Open file handles on the mount.\n"
		"# TYPE viperfs_open_files gauge\n"
		"viperfs_open_files %u\n",
		ps.used, tier_used, ps.budget, tier_budget, sps.ready, q.ops, q.data_bytes,
		fc.unflushed_cached, q.oldest ? now - q.oldest : 0.0, ns->flush.st_last_flush_lag, ns->flush.st_retries,
		__atomic_load_n(&ns->open_handles, __ATOMIC_RELAXED));
	pthread_mutex_unlock(&ns->lock);
}
