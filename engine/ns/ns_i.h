/*
 * ns_i.h: what the namespace's files (engine/ns/), flush.c and pfs.c
 * share.  Not for fs/ or tools/.
 *
 * THE FILES, one object each:
 *   node.c    nodes and names: references, the hash tables, link/unlink,
 *             the LRU, paths, lookup and attributes
 *   load.c    loading from the PFS: directories, file bytes (lazily, or
 *             from the GPU mirror), whole trees
 *   file.c    files, handles and commit: open, write, flush, release,
 *             versions and the publish=schedule decision
 *   dir.c     directories: mkdir, symlink, unlink, rename, setattr, readdir
 *   event.c   version events for watchers (with their own lock), the
 *             consumer's installer
 *   observe.c what the namespace tells other subsystems: the observers
 *   flushlog.c the flush log as the namespace appends to it; flush.c's
 *             threads replay it (they call into the files here, not back)
 *   status.c  xattrs, status JSON, metrics, and the operations viperctl
 *             asks for (flush, wait-idle, warm)
 *   ns.c      lifecycle: vp_ns_new and vp_ns_free
 *
 * LOCKS: the order is lock.h's table.  ns->lock protects the tree, the
 * node fields, the flush log (struct vp_flush) and the statistics.
 *
 * THE TWO VIEWS: every node has a live place (parent, name) and a PFS
 * place (pfs_parent, pfs_name): where its file is on the PFS once the
 * flush log has been replayed up to the present entry.  The flusher moves
 * pfs places as it replays renames; everything that opens a PFS path
 * (lazy loads, flushes) computes it from pfs places, under pfs_lock.
 *
 * HARD LINKS: an inode's first name is its own node's place; every other
 * name is a node of type VP_NODE_LINK (a "link node") in the tree, with a
 * live and a PFS place of its own, its inode in ->inode (a reference) and
 * itself on the inode's ->links.  Link nodes are in the name hash and in
 * their directory's children, never in the inode hash; they share the
 * inode's ino.  So lookup, readdir, rename and the flush log treat a name
 * as a node, and whatever wants the inode (attributes, versions, bytes,
 * opens) goes through vp_node_inode().  When the inode's own name goes
 * while other names remain, the inode takes the place of one of its link
 * nodes (live at once, on the PFS when the flusher replays the unlink),
 * so an inode with a name always has a live place of its own.
 */
#ifndef VP_NS_I_H
#define VP_NS_I_H

#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/queue.h>
#include <time.h>

#include "../clock.h"
#include "../config.h"
#include "../data.h"
#include "../flush.h"
#include "../lock.h"
#include "../mfile.h"
#include "../ns.h"
#include "../pool.h"
#include "../proto.h"
#include "../sched.h"

#define VP_NO_VERSION UINT64_MAX
#define VP_RESERVED_PREFIX ".viperfs-"	/* at the root: viperfs' own names */
#define VP_STAGING_DIR ".viperfs-staging"
#define VP_SCHEDULE_FILE ".viperfs-schedule.json"
#define VP_EPOCH_FILE ".viperfs-epoch"		/* the last producer run's epoch */
#define VP_TOMBS 65536				/* paths removed in a run, remembered (observe.c) */
#define FSYNC_PEERS_S 120.0			/* fsync=peers waits at most this long */
/* On the PFS: a special node the PFS refused, kept as an empty file ("TYPE-BITS-OCTAL RDEV") */
#define VP_NODE_XATTR "user.viperfs.node"
#define VP_INCOMING_DIR ".viperfs-incoming"	/* replicas: new inodes before the switch */
#define VP_CHUNK_SIZE (1u << 20)
#define VP_NAME_MAX 255
#define VP_PFS_INO_BUCKETS 4096		/* ns->by_pfs_ino */
#define VP_LINK_MAX 65000			/* names of one inode (ext4: 65000) */
#define VP_EVENT_RING 256			/* version events kept for watchers */
#define VP_MAX_DEFERRED 16			/* installer renames awaiting their event */

/*
 * SPECIAL: a FIFO, socket or device node (its type in mode, rdev).
 * LINK: an extra name of another node (a hard link, see HARD LINKS below).
 */
enum vp_node_type { VP_NODE_DIR, VP_NODE_FILE, VP_NODE_SYMLINK, VP_NODE_SPECIAL,
		    VP_NODE_LINK };

struct vp_node;
LIST_HEAD(vp_node_list, vp_node);

struct vp_node {
	int refs;			/* atomic: lookups, handles, log entries, links */
	uint64_t ino;
	enum vp_node_type type;
	/* all below: protected by ns->lock */
	struct vp_node *parent;		/* live place; NULL once unlinked */
	char *name;
	LIST_ENTRY(vp_node) name_link;	/* in an ns->by_name bucket */
	LIST_ENTRY(vp_node) ino_link;	/* in an ns->by_ino bucket */
	LIST_ENTRY(vp_node) sib_link;	/* in parent's children */
	struct vp_node_list children;	/* directories */
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
	dev_t rdev;			/* special nodes: the device number */

	/* files */
	uint64_t version;		/* latest committed version number */
	uint64_t epoch;			/* of the producer's run that committed it (0: unknown) */
	uint64_t floor;			/* producer: a consumer held this number; the next is after it */
	uint64_t size;			/* of the latest committed version */
	struct vp_data *cur;		/* its bytes, or NULL: on the PFS only */
	struct vp_data *work;		/* working copy while writable handles exist */
	unsigned int writers;
	int dirty;			/* work changed since the last commit */
	int64_t work_mtime_ns;		/* atomic: wall time of work's last change (0: none) */
	int work_err;			/* atomic: -errno of a failed write to work (0: none); no commit */
	double work_started;		/* vp_now() when work was made */
	uint64_t kcache_version;	/* version the kernel page cache may hold */
	struct flush_op *pending;	/* queued DATA entry not yet started */
	uint64_t flushing_version;	/* version being written, or VP_NO_VERSION */
	uint64_t streamed;		/* atomic: bytes of the working copy previewed to consumers */
	TAILQ_ENTRY(vp_node) lru_link;	/* clean, evictable */
	int in_lru;
	uint64_t nlookup;		/* the kernel's lookups of ino */
	struct vp_kino *kino;		/* the kernel inode ino's opens (passthrough), or NULL */

	/* hard links, protected by ns->lock */
	struct vp_node *inode;		/* LINK: the node it names (holds a ref) */
	struct vp_node_list links;	/* not a LINK: its link nodes, linked or not */
	LIST_ENTRY(vp_node) link_link;	/* LINK: in inode->links */
	dev_t pfs_dev;			/* loaded with st_nlink > 1: its PFS inode then */
	ino_t pfs_ino;
	LIST_ENTRY(vp_node) pfs_ino_link;	/* in ns->by_pfs_ino, if in_pfs_ino */
	int in_pfs_ino;
};

/* The inode n names: n itself, or a link node's inode. */
static inline struct vp_node *vp_node_inode(struct vp_node *n)
{
	return n && n->type == VP_NODE_LINK ? n->inode : n;
}

/*
 * The opens of one kernel inode (passthrough: pt.c).  The kernel lets an
 * inode have one backing file while any of its files is open, and refuses
 * a passthrough open beside an open without it, and the reverse.  So a
 * node keeps one for its present inode number; a new version, or a writer,
 * on an inode that passthrough readers hold gives the node a new number
 * (re-keying), and the old kino lives on with its handles.
 */
struct vp_kino {
	int refs;			/* the node's pointer, and each handle's */
	uint64_t ino;
	unsigned int pt_opens;		/* handles the kernel reads from the backing file */
	unsigned int np_opens;		/* handles that go through the daemon */
	int backing_id;			/* while pt_opens > 0 */
	int backing_fd;			/* the memory file it is (identity only) */
};

/* An inode number a re-keyed node had, for the kernel's lookups of it. */
struct vp_alias {
	LIST_ENTRY(vp_alias) link;
	uint64_t ino;
	struct vp_node *node;		/* the lookups' references are on it */
	uint64_t nlookup;
};

struct vp_handle {
	LIST_ENTRY(vp_handle) link;	/* on ns->handles */
	struct vp_node *node;		/* holds a ref */
	struct vp_data *data;		/* holds a ref: the bytes this handle sees */
	int writable;
	pid_t owner;			/* writable: the opening process, 0 if unknown */
	int wrote;			/* atomic: a write came through this handle */
	struct vp_kino *kino;		/* passthrough's count of this open (ref), or NULL */
	int pt;				/* the kernel reads it from the backing file */
};

/* A consumer's staged version, waiting for the installer's open. */
struct install {
	LIST_ENTRY(install) link;
	char *path;
	struct vp_data *data;		/* ref */
	uint64_t version, epoch;
	uint32_t mode;
};

struct vp_dir {
	size_t n;
	struct vp_dirent *ents;
};

/*
 * Version events for watch, wait and on_update: a ring with a lock of its
 * own, taken last (under ns->lock when a commit records), so that waiting
 * watchers never hold up the namespace.
 */
struct vp_events {
	pthread_mutex_t lock;
	pthread_cond_t cond;		/* an event was recorded */
	/* protected by lock: */
	struct vp_event_rec {
		uint64_t seq;
		char *path;
		uint64_t version, size;
		double time;		/* wall clock */
	} ring[VP_EVENT_RING];
	uint64_t seq;			/* last recorded */
};

struct vp_ns {
	struct vp_config cfg;
	char pfs_dir[PATH_MAX];
	int pfs_root_fd;		/* O_PATH, the PFS directory */
	int staging_fd;			/* the staging folder in it */
	struct vp_pool *pool;
	struct vp_mspare *spare;	/* ram_spare; NULL: none */
	struct vp_sched *sched;		/* publish=schedule, else NULL */
	char gpu_off_reason[256];
	char read_path[16];		/* "passthrough" or "daemon" (fs/ll.c says) */
	char read_path_why[256];	/* gpu_cache set but the tier is off: why */
	/* below the cache, else NULL; set before the mount serves, read unlocked */
	const struct vp_ns_tier *tier;
	void *tier_arg;
	int replica;			/* a consumer: read-only, never flushes */
	uint64_t epoch;			/* a producer's run (vp_ns_epoch); 0 on a consumer */
	uint64_t *tombs;		/* protected by lock: hashes of paths removed in this run (VP_TOMBS) */
	size_t ntombs;
	int replica_loaded;		/* its PFS tree is loaded: no lazy loads */
	struct vp_flush flush;		/* the flush log and its threads */
	struct vp_events events;

	pthread_mutex_t pfs_lock;
	pthread_mutex_t lock;
	pthread_cond_t idle_cond;	/* open_handles reached 0 */
	unsigned int open_handles;	/* atomic; broadcast on 0 under lock */
	/*
	 * Every handle, so that the ones whose RELEASE never came (the loop
	 * stopped with it still queued in the kernel) are released at exit.
	 */
	pthread_mutex_t handles_lock;
	LIST_HEAD(, vp_handle) handles;	/* protected by handles_lock */

	/* protected by lock: */
	struct vp_observer_slot {
		const struct vp_ns_observer *ops;
		void *arg;
	} observers[VP_NS_MAX_OBSERVERS];
	unsigned int nobservers;
	char control_path[PATH_MAX];
	uint64_t next_ino;
	struct vp_node *root;
	struct vp_node_list *by_name;
	struct vp_node_list *by_ino;
	size_t hash_size, nnodes;
	/* nodes loaded from PFS files with several links, by their PFS inode (load.c) */
	struct vp_node_list *by_pfs_ino;	/* VP_PFS_INO_BUCKETS, or NULL: none yet */
	int loading_names;		/* atomic: load.c reads the whole tree for a file's other names */
	TAILQ_HEAD(, vp_node) lru;
	LIST_HEAD(, vp_alias) aliases;	/* inode numbers of re-keyed nodes the kernel holds */
	int pt_on;			/* passthrough opens happen: re-key when needed */
	int pt_pfs_off;			/* the kernel refused a PFS file as a backing file */
	const struct vp_ns_kernel *kernel;	/* atomic (vp_kernel_of): set before the mount serves, NULL at its stop */
	void *kernel_arg;

	/* consumer, protected by lock: */
	pid_t installer_tid;		/* the thread that installs */
	LIST_HEAD(, install) installs;	/* staged */
	/*
	 * Files the installer renamed into place.  Their events wait until
	 * its rename(2) has returned (vp_ns_installed): the kernel moves its
	 * dentry only after our reply, and a watcher told earlier could still
	 * open the old file.
	 */
	struct vp_node *deferred[VP_MAX_DEFERRED];
	double deferred_at[VP_MAX_DEFERRED];	/* wall-clock time of each rename */
	unsigned int ndeferred;
	/*
	 * Names an install gave a new inode (vp_node_take_names_locked): the
	 * kernel is told before the events are raised, for the same reason.
	 */
	struct vp_stale_name {
		uint64_t parent;
		char *name;
	} *stale_names;
	size_t nstale_names, cap_stale_names;

	/* stats, protected by lock (the byte counts: atomic) */
	uint64_t st_commits;
	uint64_t st_commits_refused;	/* atomic */
	uint64_t st_bytes_written, st_bytes_read;
	double st_stalls[64];		/* open-to-close of the last commits, a ring */
	uint64_t st_stall_n;
};

static inline struct timespec vp_wall_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return ts;
}

/* A timestamp in nanoseconds. */
static inline int64_t vp_ts_ns(struct timespec t)
{
	return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* The kernel's notifier ops, or NULL (not yet, or the mount stopped): read once per use. */
static inline const struct vp_ns_kernel *vp_kernel_of(struct vp_ns *ns)
{
	return __atomic_load_n(&ns->kernel, __ATOMIC_ACQUIRE);
}

/* The kernel forgets the name parent/name (queued by the notifier), if there is a kernel. */
static inline void vp_kernel_inval_entry(struct vp_ns *ns, uint64_t parent, const char *name)
{
	const struct vp_ns_kernel *k = vp_kernel_of(ns);

	if (k && k->inval_entry)
		k->inval_entry(ns->kernel_arg, parent, name);
}

/*
 * The working copy of n changed: the next commit makes a version, and its
 * mtime and ctime are the time of this change (as a local file system's
 * are the last write's), not of the commit.
 */
static inline void vp_mark_dirty(struct vp_node *n)
{
	__atomic_store_n(&n->work_mtime_ns, vp_ts_ns(vp_wall_now()), __ATOMIC_RELAXED);
	__atomic_store_n(&n->dirty, 1, __ATOMIC_RELEASE);
}

static inline double vp_wall_seconds(void)
{
	struct timespec now = vp_wall_now();

	return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

/* The owner of what who creates (NULL: the daemon, root). */
static inline uid_t vp_caller_uid(const struct vp_caller *who)
{
	return who ? who->uid : 0;
}

static inline gid_t vp_caller_gid(const struct vp_caller *who)
{
	return who ? who->gid : 0;
}

/*
 * node.c.  Functions ending in _locked need ns->lock.  Lookups return
 * borrowed nodes unless they say "with a reference".
 */
void vp_node_get(struct vp_node *n);
/* Drops a reference; the last one frees the node.  ns->lock held. */
void vp_node_put(struct vp_ns *ns, struct vp_node *n);
/* The same, taking ns->lock. */
void vp_node_put_unlocked(struct vp_ns *ns, struct vp_node *n);
/* A new node with one reference (the caller's, usually the link's). */
struct vp_node *vp_node_new_locked(struct vp_ns *ns, enum vp_node_type type,
				   mode_t mode, uid_t uid, gid_t gid);
/* Frees n and its names, whatever its count (vp_ns_new, vp_ns_free). */
void vp_node_free(struct vp_node *n);
struct vp_node *vp_node_find_locked(struct vp_ns *ns, uint64_t ino);
/* The node of ino with a new reference, or NULL.  Takes ns->lock. */
struct vp_node *vp_node_by_ino(struct vp_ns *ns, uint64_t ino);
struct vp_node *vp_node_child_locked(struct vp_ns *ns, struct vp_node *dir,
				     const char *name);
/* Links n as dir/name; the link takes over the caller's reference. */
int vp_node_link_locked(struct vp_ns *ns, struct vp_node *dir,
			struct vp_node *n, const char *name);
/* The same with a name the link takes ownership of; cannot fail. */
void vp_node_link_name_locked(struct vp_ns *ns, struct vp_node *dir,
			      struct vp_node *n, char *name);
/* Takes n out of its directory without dropping the link's reference. */
void vp_node_detach_locked(struct vp_ns *ns, struct vp_node *n);
/* Unlinks n and drops the link's reference. */
void vp_node_unlink_locked(struct vp_ns *ns, struct vp_node *n);
/* A new link node for inode (one reference: the caller's, usually the link's), or NULL. */
struct vp_node *vp_link_new_locked(struct vp_ns *ns, struct vp_node *inode);
/* The names of inode in the tree: its own place and its linked link nodes. */
unsigned int vp_node_nlink_locked(struct vp_ns *ns, struct vp_node *inode);
/*
 * A consumer's install of file n over victim, a name of a linked inode:
 * n takes every other name of that inode too (the kernel is told to look
 * them up again), so the new version shows under all of them.  The caller
 * then replaces victim by n as any rename does.
 */
void vp_node_take_names_locked(struct vp_ns *ns, struct vp_node *n,
			       struct vp_node *victim);
/* One of inode's linked link nodes, or NULL. */
struct vp_node *vp_node_other_name_locked(struct vp_node *inode);
/*
 * Removes the name n (a node or a link node) from the tree, logs it for the
 * PFS and tells the observers (kind: VP_OP_UNLINK or VP_OP_RMDIR).  An
 * inode whose own name goes while other names remain takes the place of
 * one of them.  Drops the link's reference; the caller holds one of its own on n.
 */
void vp_node_remove_name_locked(struct vp_ns *ns, struct vp_node *n,
				enum vp_op_kind kind);
void vp_lru_add_locked(struct vp_ns *ns, struct vp_node *n);
void vp_lru_del_locked(struct vp_ns *ns, struct vp_node *n);
/* PFS-relative path of n's PFS place ("" for the root), or -ENOENT. */
int vp_pfs_path_locked(struct vp_ns *ns, struct vp_node *n, char *buf,
		       size_t len);
/* Path of n's live place in the mount ("" for the root), or -ENOENT. */
int vp_live_path_locked(struct vp_ns *ns, struct vp_node *n, char *buf,
			size_t len);
/* Finds a node by its live path ("" or "/" is the root), or NULL. */
struct vp_node *vp_resolve_locked(struct vp_ns *ns, const char *path);
/* Checks a name for a new entry in dir: 0 or -errno. */
int vp_check_name_locked(struct vp_ns *ns, struct vp_node *dir,
			 const char *name);
/*
 * A write, truncate or allocation for n's working copy failed with err: if
 * it lost bytes (ENOSPC, EIO, ...), the copy is never committed, every
 * close() of a writer returns err, and the last writer's release drops it
 * (file.c).  No lock needed (n->work_err is atomic; the first error stays).
 */
void vp_work_failed(struct vp_node *n, int err);
/* -EPERM, and a log line, for a user's new name at the root that viperfs reserves (".viperfs-*"). */
int vp_reserved_name_locked(struct vp_ns *ns, struct vp_node *dir, const char *name);
uint64_t vp_node_size_locked(struct vp_ns *ns, struct vp_node *n);
void vp_node_stat_locked(struct vp_ns *ns, struct vp_node *n, struct stat *st);

/* load.c.  No locks held on entry to any of these. */
/* Reads dir's entries from the PFS into the tree, once.  0 or -errno. */
int vp_ns_load_dir(struct vp_ns *ns, struct vp_node *dir);
/* Loads every directory below dir. */
void vp_ns_load_tree(struct vp_ns *ns, struct vp_node *dir);
/* The directory ino, loaded, with a reference in *out; or -errno. */
int vp_ns_get_dir(struct vp_ns *ns, uint64_t ino, struct vp_node **out);
/*
 * A new reference to the bytes of n's latest version in *out, read from
 * the GPU mirror or lazily from the PFS if they are not in the cache.
 */
int vp_node_data(struct vp_ns *ns, struct vp_node *n, struct vp_data **out);
/* Resolves path, loading directories on the way; the node (a name's inode) with a ref. */
struct vp_node *vp_resolve_loading(struct vp_ns *ns, const char *path);

/* pt.c */
/* Gives n a new inode number (the old one stays an alias while the kernel holds it). */
void vp_rekey_locked(struct vp_ns *ns, struct vp_node *n);
/* Whether n's inode has passthrough opens (a writer must re-key). */
int vp_pt_busy_locked(struct vp_ns *ns, struct vp_node *n);
/*
 * Whether read-only opens hold n's inode (a new version must re-key: the
 * kernel's page cache and backing file are per inode, and they keep theirs).
 */
int vp_kino_readers_locked(struct vp_ns *ns, struct vp_node *n);
/* The alias of ino, or NULL. */
struct vp_alias *vp_alias_find_locked(struct vp_ns *ns, uint64_t ino);
/* The kernel forgot nlookup lookups of alias a. */
void vp_alias_forget_locked(struct vp_ns *ns, struct vp_alias *a, uint64_t nlookup);
void vp_aliases_release(struct vp_ns *ns);
/* Drops a reference to a kino (ns->lock held, or the node being freed). */
void vp_kino_put(struct vp_kino *k);

/* file.c */
/* A new working copy: a memory file (chunks if the kernel refuses one). */
struct vp_data *vp_ns_work_data(struct vp_ns *ns);
/*
 * Commits n's working copy (bytes, whose reference it takes) as a new
 * version.  Returns 1 when the publish=schedule policy must decide on it:
 * the caller then calls vp_publish_decide() with no lock held.
 */
int vp_commit_locked(struct vp_ns *ns, struct vp_node *n,
		     struct vp_data *bytes);
/* publish=schedule: decides on n's version; n borrowed, no locks held. */
void vp_publish_decide(struct vp_ns *ns, struct vp_node *n, uint64_t version);
/* The planner's on_plan callback (arg: the ns): rewrites the schedule file. */
void vp_publish_schedule_changed(void *arg);
/* The median open-to-close time of the last 64 commits. */
double vp_median_stall_locked(struct vp_ns *ns);

/* dir.c */
/*
 * Common start of mkdir/symlink/create: a loaded dir (with a ref in
 * *dirp) and a free name.  On success ns->lock is held.
 */
int vp_ns_prepare_new(struct vp_ns *ns, const struct vp_caller *who,
		      uint64_t parent, const char *name, struct vp_node **dirp);

/* event.c */
/* Whether who is the consumer's installer thread. */
int vp_is_installer_locked(struct vp_ns *ns, const struct vp_caller *who);
/* On a consumer, refuses changes that do not come from the installer. */
int vp_replica_refuse_locked(struct vp_ns *ns, const struct vp_caller *who,
			     const char *what, const char *name);
/* The staged install for dir/name, taken out of the list (you own it). */
struct install *vp_take_install_locked(struct vp_ns *ns,
				       const struct vp_caller *who,
				       struct vp_node *dir, const char *name);
void vp_install_free(struct install *in);
/* Frees every staged install and stale name (vp_ns_free). */
void vp_installs_release(struct vp_ns *ns);
/* Records that n's path holds its newest version, now. */
void vp_event_record_locked(struct vp_ns *ns, struct vp_node *n);
/* The same after a rename by who: the installer's waits for vp_ns_installed(). */
void vp_event_renamed_locked(struct vp_ns *ns, const struct vp_caller *who,
			     struct vp_node *n);
void vp_events_init(struct vp_events *ev);
void vp_events_release(struct vp_events *ev);

/* observe.c */
/* Tells the observers (ns.h) about a namespace change / a published version. */
void vp_note_op_locked(struct vp_ns *ns, enum vp_op_kind kind,
		       struct vp_node *n, struct vp_node *newdir,
		       const char *newname);
void vp_note_version_locked(struct vp_ns *ns, struct vp_node *n);
/* fsync=peers: consumers that hold d's version (the observers' held_by): count now / wait. */
unsigned int vp_held_count_locked(struct vp_ns *ns, const struct vp_data *d);
unsigned int vp_held_wait(struct vp_ns *ns, const struct vp_data *d, unsigned int want,
			  double wait_s);
/* flush_hold: 1 once every observer's live consumers hold d's version (held_all), within wait_s. */
int vp_held_all_wait(struct vp_ns *ns, const struct vp_data *d, double wait_s);
/* ... that linked file n has a new version / that file n left the tree. */
void vp_note_commit_locked(struct vp_ns *ns, struct vp_node *n);
void vp_note_unlink_locked(struct vp_ns *ns, struct vp_node *n);
/* The observers with an on_preview, copied into out; returns how many. */
unsigned int vp_preview_observers_locked(struct vp_ns *ns,
					 struct vp_observer_slot *out);

/* load.c: the size of the tier's copy of (ino, version), or UINT64_MAX. */
uint64_t vp_tier_size(struct vp_ns *ns, uint64_t ino, uint64_t version);

/* flushlog.c (the log's entries and struct vp_flush: flush.h) */
/* Appends an entry; takes the refs it needs. */
struct flush_op *vp_flush_log_locked(struct vp_ns *ns, enum flush_op_type type,
				     struct vp_node *node,
				     struct vp_node *parent, const char *name,
				     struct vp_node *victim);
/* A version was committed: queue or coalesce its DATA entry. */
void vp_flush_commit_locked(struct vp_ns *ns, struct vp_node *n, int force);
/* n is unlinked: drop the bytes of a DATA entry that has not started. */
void vp_flush_cancel_locked(struct vp_ns *ns, struct vp_node *n);
/* What the log holds, for status and metrics. */
void vp_flush_queue_locked(struct vp_ns *ns, struct vp_flush_queue *q);

/* pfs.c */
int vp_pfs_open_root(const char *dir, char *err, size_t errlen);
int vp_pfs_openat(int root_fd, const char *rel, int flags, mode_t mode);
int vp_pfs_open_dir(int root_fd, const char *rel);
/* Removes everything in the staging folder (crash leftovers). */
void vp_pfs_clear_staging(int staging_fd);
int vp_pfs_is_transient(int err);

#endif
