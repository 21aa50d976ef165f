/*
 * ns_i.h: what ns.c, flush.c and pfs.c share.  Not for fs/ or tools/.
 *
 * LOCK ORDER: ns->pfs_lock, then ns->lock, then pool->lock.  A data->lock
 * is never taken with ns->lock held (data.h); ns->lock is never held
 * across PFS I/O except the short metadata calls made with pfs_lock.
 *
 * THE TWO VIEWS: every node has a live place (parent, name) and a PFS
 * place (pfs_parent, pfs_name): where its file is on the PFS once the
 * flush log has been replayed up to the present entry.  The flusher moves
 * pfs places as it replays renames; everything that opens a PFS path
 * (lazy loads, flushes) computes it from pfs places, under pfs_lock.
 */
#ifndef VP_NS_I_H
#define VP_NS_I_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include "clock.h"
#include "config.h"
#include "data.h"
#include "ns.h"
#include "pool.h"
#include "sched.h"
#include "tbucket.h"

#define VP_NO_VERSION UINT64_MAX
#define VP_STAGING_DIR ".viperfs-staging"
#define VP_SCHEDULE_FILE ".viperfs-schedule.json"
#define VP_INCOMING_DIR ".viperfs-incoming"	/* replicas: new inodes before the switch */

enum vp_node_type { VP_NODE_DIR, VP_NODE_FILE, VP_NODE_SYMLINK };

struct flush_op;

struct vp_node {
	int refs;			/* atomic: lookups, handles, log entries, links */
	uint64_t ino;
	enum vp_node_type type;
	/* all below: protected by ns->lock */
	struct vp_node *parent;		/* live place; NULL once unlinked */
	char *name;
	struct vp_node *hash_next;	/* in ns->by_name bucket */
	struct vp_node *ino_next;	/* in ns->by_ino bucket */
	struct vp_node *sib_prev, *sib_next;	/* in parent's children */
	struct vp_node *children;	/* directories */
	unsigned int nchildren, nsubdirs;
	int loaded;			/* directory read from the PFS */

	struct vp_node *pfs_parent;	/* PFS place (holds a ref); NULL: none */
	char *pfs_name;
	uint64_t pfs_version;		/* version at the PFS place, or VP_NO_VERSION */

	mode_t mode;			/* with type bits */
	uid_t uid;
	gid_t gid;
	struct timespec atime, mtime, ctime;
	char *symlink;

	/* files */
	uint64_t version;		/* latest committed version number */
	uint64_t size;			/* of the latest committed version */
	struct vp_data *cur;		/* its bytes, or NULL: on the PFS only */
	struct vp_data *work;		/* working copy while writable handles exist */
	unsigned int writers;
	int dirty;			/* work changed since the last commit */
	double work_started;		/* vp_now() when work was made */
	uint64_t kcache_version;	/* version the kernel page cache may hold */
	struct flush_op *pending;	/* queued DATA entry not yet started */
	uint64_t flushing_version;	/* version being written, or VP_NO_VERSION */
	uint64_t streamed;		/* atomic: bytes of the working copy previewed to consumers */
	struct vp_node *lru_prev, *lru_next;	/* clean, evictable */
	int in_lru;
};

struct vp_handle {
	struct vp_handle *next, *prev;	/* on ns->handles */
	struct vp_node *node;		/* holds a ref */
	struct vp_data *data;		/* holds a ref: the bytes this handle sees */
	int writable;
	pid_t owner;			/* writable: the opening process, 0 if unknown */
	int wrote;			/* atomic: a write came through this handle */
};

struct install {
	struct install *next;
	char *path;
	struct vp_data *data;		/* ref */
	uint64_t version;
	uint32_t mode;
};

struct vp_dir {
	size_t n;
	struct vp_dirent *ents;
};

enum flush_op_type { OP_MKDIR, OP_DATA, OP_SYMLINK, OP_RENAME, OP_UNLINK,
		     OP_ATTR };

enum flush_op_state { OPS_QUEUED, OPS_PREPARING, OPS_PREPARED, OPS_FAILED };

struct flush_op {
	struct flush_op *next;
	uint64_t seq;
	enum flush_op_type type;
	enum flush_op_state state;
	struct vp_node *node;		/* ref */
	struct vp_node *parent;		/* ref: new place (MKDIR, SYMLINK, RENAME, DATA) */
	char *name;
	struct vp_node *victim;		/* ref: RENAME's replaced node */
	/* DATA: the version to write; may be swapped for a newer one while QUEUED */
	struct vp_data *data;		/* ref, NULL: cancelled */
	uint64_t version;
	uint64_t size;
	double queued_at;
	int forced;			/* eligible at once, whatever the policy */
	int prep_rc;
	int claimed;			/* a worker is preparing it */
	uint64_t written;		/* atomic: bytes staged so far */
	char stage_name[64];
};

struct vp_ns {
	struct vp_config cfg;
	char pfs_dir[PATH_MAX];
	int pfs_root_fd;		/* O_PATH, the PFS directory */
	int staging_fd;			/* the staging folder in it */
	struct vp_pool *pool;
	struct tbucket flush_bucket;
	struct vp_sched *sched;		/* publish=schedule, else NULL */
	struct vp_repl *repl;		/* replication, else NULL */
	struct vp_gpu *gpu;		/* the GPU tier, else NULL */
	char gpu_off_reason[256];	/* gpu_cache set but the tier is off: why */
	int replica;			/* a consumer: read-only, never flushes */
	int replica_loaded;		/* its PFS tree is loaded: no lazy loads */
	pid_t installer_tid;		/* consumer: the thread that installs */
	/*
	 * consumer: files the installer renamed into place.  Their events wait
	 * until its rename(2) has returned (vp_ns_installed): the kernel moves
	 * its dentry only after our reply, and a watcher told earlier could
	 * still open the old file.
	 */
	struct vp_node *deferred[16];
	double deferred_at[16];		/* wall-clock time of each rename */
	unsigned int ndeferred;
	struct install *installs;	/* consumer: staged, protected by lock */
	/* version events for watch/wait/on_update, a ring, protected by lock */
	struct vp_event_rec {
		uint64_t seq;
		char *path;
		uint64_t version, size;
		double time;		/* wall clock */
	} events[256];
	uint64_t event_seq;		/* last recorded */
	pthread_cond_t event_cond;
	pthread_cond_t idle_cond;	/* open_handles reached 0 */
	unsigned int open_handles;	/* atomic; broadcast on 0 under lock */
	/*
	 * Every handle, so that the ones whose RELEASE never came (the loop
	 * stopped with it still queued in the kernel) are released at exit.
	 */
	pthread_mutex_t handles_lock;
	struct vp_handle *handles;
	char control_path[PATH_MAX];
	int stop;			/* protected by lock */

	pthread_mutex_t pfs_lock;
	pthread_mutex_t lock;
	pthread_cond_t flush_cond;	/* log changed, or an entry finished */
	pthread_cond_t worker_cond;	/* work for prepare workers */
	pthread_cond_t evict_cond;	/* cache pressure */
	int evict_wanted;

	/* protected by lock: */
	uint64_t next_ino;
	struct vp_node *root;
	struct vp_node **by_name;
	struct vp_node **by_ino;
	size_t hash_size, nnodes;
	struct vp_node *lru_head, *lru_tail;

	struct flush_op *log_head, *log_tail;
	uint64_t next_seq;
	uint64_t done_seq;		/* every entry <= done_seq is replayed */
	uint64_t force_seq;		/* entries <= force_seq are eligible at once */
	unsigned int preparing;
	uint64_t log_bytes;		/* DATA bytes queued, not yet written */
	int last_error;			/* last PFS error, -errno, 0 after success */
	char last_error_path[PATH_MAX];

	/* stats, protected by lock */
	uint64_t st_commits, st_flushed_versions, st_flushed_bytes;
	uint64_t st_skipped_versions, st_evictions, st_retries;
	uint64_t st_bytes_written, st_bytes_read;
	double st_last_flush_lag;	/* seconds from commit to on-PFS */
	double st_lag_sum;		/* for the mean flush lag */
	double st_stalls[64];		/* open-to-close of the last commits, a ring */
	uint64_t st_stall_n;

	pthread_t dispatcher;
	pthread_t evictor;
	pthread_t *workers;
	unsigned int nworkers;
};

/* ns.c */
void vp_node_get(struct vp_node *n);
void vp_node_put(struct vp_ns *ns, struct vp_node *n);
/* PFS-relative path of n's PFS place ("" for the root), or -ENOENT. */
int vp_pfs_path_locked(struct vp_ns *ns, struct vp_node *n, char *buf,
		       size_t len);
void vp_lru_add_locked(struct vp_ns *ns, struct vp_node *n);
void vp_lru_del_locked(struct vp_ns *ns, struct vp_node *n);

/* flush.c */
int vp_flush_start(struct vp_ns *ns);
void vp_flush_stop(struct vp_ns *ns);
/* Appends an entry; takes the refs it needs.  Called with ns->lock held. */
struct flush_op *vp_flush_log_locked(struct vp_ns *ns, enum flush_op_type type,
				     struct vp_node *node,
				     struct vp_node *parent, const char *name,
				     struct vp_node *victim);
/* A version was committed: queue or coalesce its DATA entry. */
void vp_flush_commit_locked(struct vp_ns *ns, struct vp_node *n, int force);
/* n is unlinked: drop the bytes of a DATA entry that has not started. */
void vp_flush_cancel_locked(struct vp_ns *ns, struct vp_node *n);
void vp_flush_pressure(void *arg);

/* pfs.c */
int vp_pfs_open_root(const char *dir, char *err, size_t errlen);
int vp_pfs_openat(int root_fd, const char *rel, int flags, mode_t mode);
int vp_pfs_open_dir(int root_fd, const char *rel);
/* Removes everything in the staging folder (crash leftovers). */
void vp_pfs_clear_staging(int staging_fd);
int vp_pfs_is_transient(int err);

#endif
