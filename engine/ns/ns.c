/*
 * ns: the namespace's lifecycle -- vp_ns_new's start steps and their one
 * unwind, vp_ns_free, and the objects ns holds (see ns.h and ns_i.h).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "../log.h"
#include "ns_i.h"

/* The staging folder in the PFS, emptied of an earlier run's leftovers. */
static int open_staging(struct vp_ns *ns, char *err, size_t errlen)
{
	if (mkdirat(ns->pfs_root_fd, VP_STAGING_DIR, 0700) && errno != EEXIST) {
		snprintf(err, errlen, "cannot create staging folder '%s/%s': %s",
			 ns->pfs_dir, VP_STAGING_DIR, strerror(errno));
		return -1;
	}
	ns->staging_fd = openat(ns->pfs_root_fd, VP_STAGING_DIR,
				O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (ns->staging_fd < 0) {
		snprintf(err, errlen, "cannot open staging folder '%s/%s': %s",
			 ns->pfs_dir, VP_STAGING_DIR, strerror(errno));
		return -1;
	}
	vp_pfs_clear_staging(ns->staging_fd);
	return 0;
}

/*
 * A producer's run is an epoch: its start time in ns (CLOCK_REALTIME),
 * and past the last run's, kept in PFS_DIR/.viperfs-epoch, should the
 * clock have stepped back.  Consumers order versions by (epoch, version):
 * a restarted producer numbers from what the PFS kept, and a consumer may
 * hold a later number of the run before.  A PFS that cannot keep the
 * file (read-only) costs only the guard against a clock step; a file
 * that does not hold a number below 2^63 (year 2262) is ignored, said,
 * and replaced, so that no epoch ever wraps to 0 ("none").
 */
static uint64_t start_epoch(struct vp_ns *ns)
{
	struct timespec ts;
	char buf[32], tmp[64];
	uint64_t epoch, last = 0;
	ssize_t len;
	int fd;

	clock_gettime(CLOCK_REALTIME, &ts);
	epoch = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	fd = openat(ns->pfs_root_fd, VP_EPOCH_FILE, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd >= 0) {
		len = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (len > 0) {
			char *end;

			buf[len] = '\0';
			errno = 0;
			last = strtoull(buf, &end, 10);
			if (errno || end == buf || (*end && strcmp(end, "\n")) || last >= 1ULL << 63) {
				vp_log(LOG_WARNING, "ns", "'%s/%s' does not hold a run's epoch; ignored (the clock orders this run)",
				       ns->pfs_dir, VP_EPOCH_FILE);
				last = 0;
			}
		}
	}
	if (epoch <= last)
		epoch = last + 1;
	len = snprintf(buf, sizeof(buf), "%" PRIu64 "\n", epoch);
	snprintf(tmp, sizeof(tmp), "epoch.%d", (int)getpid());
	fd = openat(ns->staging_fd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, buf, (size_t)len) != len || fsync(fd) ||
	    renameat(ns->staging_fd, tmp, ns->pfs_root_fd, VP_EPOCH_FILE)) {
		vp_log(LOG_WARNING, "ns", "cannot keep this run's epoch in '%s/%s': %s; versions are ordered by the clock alone",
		       ns->pfs_dir, VP_EPOCH_FILE, strerror(errno));
		unlinkat(ns->staging_fd, tmp, 0);
	}
	if (fd >= 0)
		close(fd);
	return epoch;
}

/* Start step 1: the PFS directory and its staging folder. */
static int open_pfs(struct vp_ns *ns, const char *pfs_dir, char *err,
		    size_t errlen)
{
	if (!realpath(pfs_dir, ns->pfs_dir)) {
		snprintf(err, errlen, "PFS directory '%s': %s; create it or name another",
			 pfs_dir, strerror(errno));
		return -1;
	}
	ns->pfs_root_fd = vp_pfs_open_root(ns->pfs_dir, err, errlen);
	if (ns->pfs_root_fd < 0)
		return -1;
	/* a consumer never writes the PFS: the producer owns staging */
	if (!ns->replica && open_staging(ns, err, errlen)) {
		close(ns->pfs_root_fd);
		return -1;
	}
	if (!ns->replica)
		ns->epoch = start_epoch(ns);
	return 0;
}

static void close_pfs(struct vp_ns *ns)
{
	if (ns->staging_fd >= 0)
		close(ns->staging_fd);
	close(ns->pfs_root_fd);
}

/* The pool is short of budget: the spare goes first, then clean versions. */
static void cache_pressure(void *arg)
{
	struct vp_ns *ns = arg;

	vp_mspare_drop(ns->spare);
	vp_flush_pressure(ns);
}

/* Start step 2: the RAM cache and, under publish=schedule, the policy. */
static int open_cache(struct vp_ns *ns, char *err, size_t errlen)
{
	const struct vp_config *cfg = &ns->cfg;

	ns->pool = vp_pool_new(VP_CHUNK_SIZE, cfg->ram_cache, cfg->ram_prefault);
	if (!ns->pool) {
		snprintf(err, errlen, "cannot set up a RAM cache of %llu bytes: %s (ram_cache must be at least 1M)",
			 (unsigned long long)cfg->ram_cache, strerror(errno));
		return -1;
	}
	vp_pool_set_pressure_cb(ns->pool, cache_pressure, ns);
	/* a spare of at most a quarter of the cache: it must never crowd versions out */
	if (cfg->ram_spare)
		ns->spare = vp_mspare_new(ns->pool, cfg->ram_spare < cfg->ram_cache / 4 ?
					  cfg->ram_spare : cfg->ram_cache / 4, cfg->subscribe[0] != 0);
	if (cfg->publish == VP_PUBLISH_SCHEDULE) {
		ns->sched = vp_sched_new(cfg, err, errlen);
		if (!ns->sched) {
			vp_mspare_free(ns->spare);
			vp_pool_free(ns->pool);
			return -1;
		}
		vp_sched_on_plan(ns->sched, vp_publish_schedule_changed, ns);
	}
	return 0;
}

void vp_ns_spare_fit(struct vp_ns *ns, uint64_t size)
{
	uint64_t cap = ns->cfg.ram_cache / 4;

	vp_mspare_fit(ns->spare, size < cap ? size : cap);
}

static void close_cache(struct vp_ns *ns)
{
	vp_mspare_free(ns->spare);
	vp_pool_free(ns->pool);
	vp_sched_free(ns->sched);
}

/* Start step 3: locks, conditions, and the objects that own theirs. */
static void init_sync(struct vp_ns *ns)
{
	pthread_mutex_init(&ns->pfs_lock, NULL);
	pthread_mutex_init(&ns->lock, NULL);
	pthread_mutex_init(&ns->handles_lock, NULL);
	vp_cond_init_monotonic(&ns->idle_cond);
	vp_flush_init(&ns->flush, &ns->cfg);
	vp_events_init(&ns->events);
}

static void release_sync(struct vp_ns *ns)
{
	vp_events_release(&ns->events);
	vp_flush_release(&ns->flush);
	pthread_cond_destroy(&ns->idle_cond);
	pthread_mutex_destroy(&ns->handles_lock);
	pthread_mutex_destroy(&ns->lock);
	pthread_mutex_destroy(&ns->pfs_lock);
}

/* Start step 4: the hash tables and the root, with the PFS root's attributes. */
static int init_tree(struct vp_ns *ns, char *err, size_t errlen)
{
	struct stat st;

	ns->hash_size = 1024;
	ns->by_name = calloc(ns->hash_size, sizeof(*ns->by_name));
	ns->by_ino = calloc(ns->hash_size, sizeof(*ns->by_ino));
	ns->next_ino = VP_ROOT_INO;
	if (!ns->by_name || !ns->by_ino)
		goto err_free;
	fstat(ns->pfs_root_fd, &st);
	pthread_mutex_lock(&ns->lock);
	ns->root = vp_node_new_locked(ns, VP_NODE_DIR, st.st_mode, st.st_uid,
				      st.st_gid);
	pthread_mutex_unlock(&ns->lock);
	if (!ns->root)
		goto err_free;
	ns->root->atime = st.st_atim;
	ns->root->mtime = st.st_mtim;
	ns->root->ctime = st.st_ctim;
	return 0;

err_free:
	snprintf(err, errlen, "out of memory");
	free(ns->by_name);
	free(ns->by_ino);
	return -1;
}

/* Frees every node whatever its count (the kernel is gone), and the tables. */
static void free_tree(struct vp_ns *ns)
{
	for (size_t i = 0; i < ns->hash_size; i++) {
		struct vp_node *n;

		while ((n = LIST_FIRST(&ns->by_ino[i]))) {
			struct vp_node *l;

			while ((l = LIST_FIRST(&n->links))) {	/* its other names */
				LIST_REMOVE(l, link_link);
				vp_node_free(l);
			}
			LIST_REMOVE(n, ino_link);
			vp_data_put(n->cur);
			vp_data_put(n->work);
			vp_node_free(n);
		}
	}
	free(ns->by_name);
	free(ns->by_ino);
	free(ns->by_pfs_ino);
}

struct vp_ns *vp_ns_new(const struct vp_config *cfg, const char *pfs_dir,
			char *err, size_t errlen)
{
	struct vp_ns *ns = calloc(1, sizeof(*ns));
	int rc;

	if (!ns) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	ns->cfg = *cfg;
	ns->pfs_root_fd = ns->staging_fd = -1;
	ns->replica = cfg->subscribe[0] != 0;
	LIST_INIT(&ns->handles);
	LIST_INIT(&ns->installs);
	LIST_INIT(&ns->aliases);
	TAILQ_INIT(&ns->lru);
	if (open_pfs(ns, pfs_dir, err, errlen))
		goto err_free;
	if (open_cache(ns, err, errlen))
		goto err_close_pfs;
	init_sync(ns);
	if (init_tree(ns, err, errlen))
		goto err_release_sync;
	rc = vp_flush_start(ns);
	if (rc) {
		snprintf(err, errlen, "cannot start flush threads: %s",
			 strerror(-rc));
		goto err_free_tree;
	}
	if (ns->replica) {
		/*
		 * A replica reads the PFS tree once, now: its fallback copy.
		 * Later lazy loads of the shared PFS would race with the
		 * producer's replayed changes (a directory renamed into place
		 * on the PFS before the rename arrives here).
		 */
		vp_ns_load_tree(ns, ns->root);
		ns->replica_loaded = 1;
	}
	return ns;

err_free_tree:
	free_tree(ns);
err_release_sync:
	release_sync(ns);
	close_cache(ns);
err_close_pfs:
	close_pfs(ns);
err_free:
	free(ns);
	return NULL;
}

uint64_t vp_ns_epoch(const struct vp_ns *ns)
{
	return ns->epoch;
}

const struct vp_config *vp_ns_config(struct vp_ns *ns)
{
	return &ns->cfg;
}

void vp_ns_set_control_path(struct vp_ns *ns, const char *path)
{
	pthread_mutex_lock(&ns->lock);
	snprintf(ns->control_path, sizeof(ns->control_path), "%s", path);
	pthread_mutex_unlock(&ns->lock);
}

/* The files below n whose latest version is not on the PFS; logs each. */
static unsigned int count_unflushed_locked(struct vp_ns *ns, struct vp_node *n,
					   int report)
{
	unsigned int count = 0;

	VP_ASSERT_LOCKED(&ns->lock);
	if (n->type == VP_NODE_DIR) {
		for (struct vp_node *c = LIST_FIRST(&n->children); c;
		     c = LIST_NEXT(c, sib_link))
			count += count_unflushed_locked(ns, c, report);
	} else if (n->type == VP_NODE_FILE && n->cur &&
		   n->pfs_version != n->version) {
		char path[PATH_MAX];

		count++;
		if (report && !vp_live_path_locked(ns, n, path, sizeof(path)))
			vp_log(LOG_ERR, "flush", "'%s' version %" PRIu64 " (%" PRIu64 " bytes) did not reach the PFS '%s' before exit",
			       path, n->version, n->size, ns->pfs_dir);
	}
	return count;
}

/*
 * Handles whose RELEASE the kernel still had queued when the loop
 * stopped: released now, as that RELEASE would have (a last close
 * commits), so that their versions are flushed after.
 */
static void release_orphans(struct vp_ns *ns)
{
	for (;;) {
		struct vp_handle *h;

		pthread_mutex_lock(&ns->handles_lock);
		h = LIST_FIRST(&ns->handles);
		pthread_mutex_unlock(&ns->handles_lock);
		if (!h)
			break;
		vp_ns_release(ns, h);
	}
}

/* Forces everything to the PFS and waits for it, up to unmount_wait. */
static void drain_flush(struct vp_ns *ns)
{
	struct vp_flush_progress p;
	double deadline;
	int rc;

	if (vp_ns_flush_start(ns, "", &p))
		return;
	deadline = ns->cfg.unmount_wait > 0 ? vp_now() + ns->cfg.unmount_wait : 0;
	if (p.ops_left)
		vp_log(LOG_NOTICE, "flush", "unmount: writing %" PRIu64 " bytes still pending to the PFS",
		       p.bytes_total);
	do {
		double wait = 1.0;

		if (deadline && deadline - vp_now() < wait)
			wait = deadline - vp_now();
		if (wait <= 0)
			break;
		rc = vp_ns_flush_poll(ns, &p, wait);
	} while (rc == 0);
}

unsigned int vp_ns_free(struct vp_ns *ns)
{
	unsigned int left;

	vp_sched_stop(ns->sched);	/* its callback writes into the namespace */
	release_orphans(ns);
	drain_flush(ns);
	pthread_mutex_lock(&ns->lock);
	left = ns->replica ? 0 : count_unflushed_locked(ns, ns->root, 1);
	pthread_mutex_unlock(&ns->lock);
	vp_flush_stop(ns);

	vp_installs_release(ns);
	vp_aliases_release(ns);
	free(ns->tombs);
	free_tree(ns);
	release_sync(ns);
	close_cache(ns);
	close_pfs(ns);
	free(ns);
	return left;
}

struct vp_pool *vp_ns_pool(struct vp_ns *ns)
{
	return ns->pool;
}

bool vp_ns_lock_held(const struct vp_ns *ns)
{
	return vp_lock_held(&ns->lock);
}

void vp_ns_set_gpu_off(struct vp_ns *ns, const char *why)
{
	pthread_mutex_lock(&ns->lock);
	snprintf(ns->gpu_off_reason, sizeof(ns->gpu_off_reason), "%s", why ? why : "");
	pthread_mutex_unlock(&ns->lock);
}

void vp_ns_set_tier(struct vp_ns *ns, const struct vp_ns_tier *ops, void *arg)
{
	pthread_mutex_lock(&ns->lock);
	ns->tier = ops;
	ns->tier_arg = ops ? arg : NULL;
	pthread_mutex_unlock(&ns->lock);
}

int vp_ns_statfs(struct vp_ns *ns, struct statvfs *sv)
{
	if (fstatvfs(ns->pfs_root_fd, sv))
		return -errno;
	sv->f_namemax = VP_NAME_MAX;
	return 0;
}
