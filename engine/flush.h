/*
 * flush: the background writer that replays the namespace's flush log on
 * the PFS.  struct vp_flush is a member object of struct vp_ns
 * (ns->flush), as squashfuse's struct sqfs holds its caches.  The
 * namespace appends to the log (ns/flushlog.c, declared in ns/ns_i.h)
 * and only starts and stops the threads here; they call into the
 * namespace's internals (nodes, PFS places, the LRU), never the reverse.
 *
 * DESIGN: every namespace change (mkdir, symlink, mknod, link, rename,
 * unlink, attribute change) and every committed file version is appended
 * to one log, in order.  The dispatcher thread replays the log on the PFS strictly in
 * order, so the PFS always shows a state the mount went through (with
 * coalesced file contents), whatever crashes or fails.
 *
 *  - A DATA entry names a file and a version.  Under flush=latest and
 *    flush=every:N, a newer version of the same file replaces the one in a
 *    queued entry (coalescing); under flush=all each version has its own.
 *  - Workers (flush_inflight of them) write DATA entries ahead of time,
 *    in parallel, into files in PFS_DIR/.viperfs-staging, paced by the
 *    flush_bw token bucket, and fsync them.  The dispatcher publishes a
 *    staged file with one rename() into its final name when its turn
 *    comes, then fsyncs the directory: the PFS never holds a partial file
 *    under a final name.  A restart deletes leftovers in the staging folder.
 *  - A failed PFS operation is retried with exponential back-off up to
 *    flush_retry_max, in place, so nothing behind it overtakes it; the
 *    data stays in the cache and the log says so.  Errors that retrying
 *    cannot mend (the target vanished from the PFS) are logged and skipped.
 *  - flush_interval holds entries back that long after they were queued,
 *    so bursts of versions coalesce.  Forced entries (viperctl flush,
 *    fsync=pfs, unmount) go at once.
 *  - The evictor thread answers cache pressure: it drops the cached bytes
 *    of versions that are on the PFS, least recently opened first.
 *
 * THREADING: the log, struct vp_flush and all node fields are protected
 * by ns->lock; PFS namespace calls are made holding ns->pfs_lock only.
 * The lock order is lock.h's.
 */
#ifndef VP_FLUSH_H
#define VP_FLUSH_H

#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/queue.h>

#include "tbucket.h"

struct vp_config;
struct vp_data;
struct vp_node;
struct vp_ns;

enum flush_op_type { OP_MKDIR, OP_DATA, OP_SYMLINK, OP_RENAME, OP_UNLINK,
		     OP_ATTR, OP_MKNOD, OP_LINK };

enum flush_op_state { OPS_QUEUED, OPS_PREPARING, OPS_PREPARED, OPS_FAILED };

/* One entry of the flush log.  Protected by ns->lock. */
struct flush_op {
	TAILQ_ENTRY(flush_op) link;	/* in ns->flush.log */
	uint64_t seq;
	enum flush_op_type type;
	enum flush_op_state state;
	struct vp_node *node;		/* ref */
	struct vp_node *parent;		/* ref: new place (MKDIR, SYMLINK, MKNOD, LINK, RENAME, DATA) */
	char *name;
	/* ref: RENAME's replaced node; UNLINK: the link node whose place the inode takes */
	struct vp_node *victim;
	/* DATA: the version to write; may be swapped for a newer one while QUEUED */
	struct vp_data *data;		/* ref, NULL: cancelled */
	uint64_t version, epoch;
	uint64_t size;
	double queued_at;
	int forced;			/* eligible at once, whatever the policy */
	int prep_rc;
	int claimed;			/* a worker is preparing it */
	uint64_t written;		/* atomic: bytes staged so far */
	char stage_name[64];
};

TAILQ_HEAD(flush_log, flush_op);

struct vp_flush {
	struct tbucket bucket;		/* flush_bw */
	pthread_cond_t cond;		/* log changed, or an entry finished */
	pthread_cond_t worker_cond;	/* work for prepare workers */
	pthread_mutex_t evict_lock;	/* a leaf: the pressure callback runs under data->lock */
	pthread_cond_t evict_cond;	/* cache pressure, on evict_lock */
	int evict_wanted, evict_stop;	/* protected by evict_lock */

	/* protected by ns->lock: */
	int stop;
	struct flush_log log;
	uint64_t next_seq;
	uint64_t done_seq;		/* every entry <= done_seq is replayed */
	uint64_t force_seq;		/* entries <= force_seq are eligible at once */
	unsigned int preparing;
	unsigned int holding;		/* workers waiting for consumers (flush_hold) */
	uint64_t st_held, st_hold_timeouts;	/* versions held; of them, flushed when flush_hold ran out */
	int last_error;			/* last PFS error, -errno, 0 after success */
	char last_error_path[PATH_MAX];
	uint64_t st_flushed_versions, st_flushed_bytes;
	uint64_t st_skipped_versions, st_evictions, st_retries;
	double st_last_flush_lag;	/* seconds from commit to on-PFS */
	double st_lag_sum;		/* for the mean flush lag */

	pthread_t dispatcher;
	pthread_t evictor;
	pthread_t *workers;
	unsigned int nworkers;
};

/* What the log holds, for status and metrics (ns/flushlog.c). */
struct vp_flush_queue {
	uint64_t ops, data_bytes;
	double oldest;			/* queued_at of the oldest DATA entry, 0: none */
};

/* Sets up f (no threads yet) for the options in cfg. */
void vp_flush_init(struct vp_flush *f, const struct vp_config *cfg);
/* Frees what vp_flush_init set up; after vp_flush_stop. */
void vp_flush_release(struct vp_flush *f);
/* Starts the dispatcher, workers and evictor.  0 or -errno. */
int vp_flush_start(struct vp_ns *ns);
/* Stops them and drops what the log still holds.  No locks held. */
void vp_flush_stop(struct vp_ns *ns);
/* The pool's pressure callback (arg: the ns): wakes the evictor. */
void vp_flush_pressure(void *arg);

#endif
