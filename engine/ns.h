/*
 * ns: the viperfs namespace -- inodes, names, versions, open handles -- over
 * a PFS directory, with the PFS flush scheduler (flush.c) behind it.
 *
 * DESIGN: the tree lives in memory.  Directories are read from the PFS
 * lazily, on first lookup or readdir; file bytes are read from the PFS on
 * first open and then cached (data.h).  New bytes go to a per-file working
 * copy; the last writable handle's release (or a truncate of a closed
 * file, or fsync with fsync=pfs) commits it as a new immutable version with
 * the next version number.  Every namespace change and every committed
 * version is appended to the flush log, which flush.c replays on the PFS
 * in order (flush.h says how).  The implementation lives in engine/ns/,
 * one file per object (ns/ns_i.h lists them).
 *
 * This header is the engine's face to fs/: inode numbers, attributes,
 * handles and errno codes, nothing of FUSE.  Functions return 0, a size,
 * or -errno.  Lookups that the kernel keeps (lookup, create, mkdir,
 * symlink) take one node reference that vp_ns_forget() drops.
 *
 * DEPENDENCIES: ns calls no other subsystem above it.  What it tells
 * others (versions, namespace changes, previews) goes to the observers
 * registered with vp_ns_observe(); the one tier below the RAM cache that
 * it reads bytes back from (the GPU tier) is a struct vp_ns_tier that the
 * daemon sets.  fs/main.c wires repl and gpu in.
 *
 * THREADING: every function is thread-safe.  Functions that read or write
 * file bytes, or touch the PFS, may block.
 */
#ifndef VP_NS_H
#define VP_NS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <time.h>

#include <jansson.h>

#include "config.h"
#include "data.h"
#include "proto.h"

#define VP_ROOT_INO 1

struct vp_ns;
struct vp_handle;
struct vp_dir;

struct vp_setattr {
	int set_mode, set_uid, set_gid, set_size, set_atime, set_mtime;
	int atime_now, mtime_now;
	mode_t mode;
	uid_t uid;
	gid_t gid;
	uint64_t size;
	struct timespec atime, mtime;
};

struct vp_dirent {
	uint64_t ino;
	mode_t type;		/* S_IFDIR, S_IFREG or S_IFLNK */
	char *name;
};

/*
 * Who makes a request: the thread (fs/ passes fuse_req_ctx()->pid) and
 * the owner that new nodes get.  A NULL caller is the daemon itself (root,
 * thread unknown).  On a consumer only the installer thread may change the
 * tree (vp_ns_set_installer); a writable handle remembers the process of
 * its opener, so that a close by another process does not commit.
 */
struct vp_caller {
	pid_t tid;
	uid_t uid;
	gid_t gid;
};

struct vp_flush_progress {
	uint64_t target_seq;	/* the log entry to wait for */
	uint64_t bytes_total;	/* bytes to write up to target_seq */
	uint64_t bytes_done;
	uint64_t ops_left;
	int last_error;		/* -errno of the last failed PFS operation, or 0 */
};

/*
 * Opens the namespace over pfs_dir: checks that it exists and is
 * writable, clears what a crash left in its staging folder, and starts the
 * flush threads.  cfg is copied.  Returns NULL with a message in err.
 */
struct vp_ns *vp_ns_new(const struct vp_config *cfg, const char *pfs_dir,
			char *err, size_t errlen);

/*
 * Flushes what is not yet on the PFS (waiting up to cfg->unmount_wait),
 * logs what could not be flushed, stops the threads and frees everything.
 * Open handles must have been released.  Returns the number of file
 * versions left unflushed.
 */
unsigned int vp_ns_free(struct vp_ns *ns);

const struct vp_config *vp_ns_config(struct vp_ns *ns);

/* Names and attributes.  *st gets the node's attributes on success. */
int vp_ns_lookup(struct vp_ns *ns, uint64_t parent, const char *name,
		 struct stat *st);
void vp_ns_forget(struct vp_ns *ns, uint64_t ino, uint64_t nlookup);
int vp_ns_getattr(struct vp_ns *ns, uint64_t ino, struct stat *st);
/*
 * The calls that change the tree take the caller (struct vp_caller, NULL:
 * the daemon).  h may be NULL; a size change goes to h's working copy
 * when it has one.
 */
int vp_ns_setattr(struct vp_ns *ns, const struct vp_caller *who, uint64_t ino,
		  const struct vp_setattr *sa, struct vp_handle *h,
		  struct stat *st);
/* New nodes belong to who's uid and gid. */
int vp_ns_mkdir(struct vp_ns *ns, const struct vp_caller *who, uint64_t parent,
		const char *name, mode_t mode, struct stat *st);
/*
 * A FIFO, UNIX socket, or character or block device (mode's type bits,
 * rdev) at parent/name: an inode of its own whose I/O is the kernel's,
 * never the daemon's.  -EINVAL for another type.
 */
int vp_ns_mknod(struct vp_ns *ns, const struct vp_caller *who, uint64_t parent,
		const char *name, uint32_t mode, uint64_t rdev, struct stat *st);
int vp_ns_symlink(struct vp_ns *ns, const struct vp_caller *who,
		  uint64_t parent, const char *name, const char *target,
		  struct stat *st);
/*
 * link(2): a new name newparent/newname for the file, symlink or special
 * node ino (a hard link; the inode's versions are seen under all its
 * names).  st: the inode's attributes, with the kernel's lookup counted.
 * -EPERM for a directory, -ENOENT for a node with no name left, -EEXIST,
 * -EMLINK past VP_LINK_MAX names; on a consumer -EROFS.
 */
int vp_ns_link(struct vp_ns *ns, const struct vp_caller *who, uint64_t ino,
	       uint64_t newparent, const char *newname, struct stat *st);
/* Copies the target, NUL-terminated, into buf of size len. */
int vp_ns_readlink(struct vp_ns *ns, uint64_t ino, char *buf, size_t len);
int vp_ns_unlink(struct vp_ns *ns, const struct vp_caller *who,
		 uint64_t parent, const char *name);
int vp_ns_rmdir(struct vp_ns *ns, const struct vp_caller *who,
		uint64_t parent, const char *name);
/* flags: 0, RENAME_NOREPLACE or RENAME_EXCHANGE (the latter: -EINVAL). */
int vp_ns_rename(struct vp_ns *ns, const struct vp_caller *who,
		 uint64_t parent, const char *name, uint64_t newparent,
		 const char *newname, unsigned int flags);
int vp_ns_statfs(struct vp_ns *ns, struct statvfs *sv);

/*
 * Files.  vp_ns_create() and vp_ns_open() return a new handle in *hp that
 * vp_ns_release() frees.  *keep_cache says whether the kernel's cached
 * pages of this inode are still the bytes this handle reads.  who (NULL:
 * the daemon) owns a created file; a writable handle remembers who's
 * process.
 */
int vp_ns_create(struct vp_ns *ns, const struct vp_caller *who,
		 uint64_t parent, const char *name, mode_t mode, int flags,
		 struct stat *st, struct vp_handle **hp);
int vp_ns_open(struct vp_ns *ns, const struct vp_caller *who, uint64_t ino,
	       int flags, struct vp_handle **hp, int *keep_cache);
/* Releases a handle; the last writable one commits a version. */
int vp_ns_release(struct vp_ns *ns, struct vp_handle *h);

/*
 * Passthrough (fs/ll.c).  A new version of an inode that read-only opens
 * hold gives the node a new inode number, so that they keep the old one
 * (the kernel's page cache and backing file are per inode); so does,
 * once vp_ns_set_passthrough() is on, a writable open of an inode that
 * passthrough readers hold: the open gets -ESTALE (the kernel looks the
 * name up again and retries).  The old name is invalidated through
 * vp_ns_kernel.  Call these three, for every read-only open, under one
 * lock of the caller's, which serialises them:
 *  - vp_ns_pt_open() after an open says how the kernel may read h:
 *    VP_PT_NONE: through the daemon (give it direct_io);
 *    VP_PT_SHARE: from the backing file *id the inode has already;
 *    VP_PT_REGISTER: register *fd as a backing file, then vp_ns_pt_set(.., *fd)
 *    (id <= 0: it failed, and h goes through the daemon).  *pfs says
 *    that *fd is the version's file on the PFS (a version on the PFS
 *    only), not a memory file: where the kernel refuses one, call
 *    vp_ns_set_passthrough_pfs(ns, 0), and memory files go on;
 *  - vp_ns_pt_close() before vp_ns_release(): the backing id to close
 *    (the inode's last passthrough open), or 0.
 */
enum vp_pt { VP_PT_NONE, VP_PT_SHARE, VP_PT_REGISTER };
void vp_ns_set_passthrough(struct vp_ns *ns, int on);
enum vp_pt vp_ns_pt_open(struct vp_ns *ns, struct vp_handle *h, int *fd, int *id, int *pfs);
void vp_ns_set_passthrough_pfs(struct vp_ns *ns, int on);
void vp_ns_pt_set(struct vp_ns *ns, struct vp_handle *h, int id, int fd);
int vp_ns_pt_close(struct vp_ns *ns, struct vp_handle *h);
/* The read-only descriptor of h's sealed memory file, or -1 (valid while h is open). */
int vp_ns_handle_fd(struct vp_handle *h);
uint64_t vp_ns_handle_size(struct vp_handle *h);
/* n bytes read from h's memory file by the daemon outside vp_ns_read() (splice). */
void vp_ns_count_read(struct vp_ns *ns, size_t n);
/* How readers are served ("passthrough" or "daemon") and why, for status. */
void vp_ns_set_read_path(struct vp_ns *ns, const char *mode, const char *why);

/* What the namespace asks of the kernel's caches (fs/ll.c sends it). */
struct vp_ns_kernel {
	/*
	 * The kernel's entry parent/name must be looked up again.  Called
	 * with ns->lock held: it must only queue.
	 */
	void (*inval_entry)(void *arg, uint64_t parent, const char *name);
	/* The kernel's cached attributes of ino are stale.  Same rule. */
	void (*inval_attr)(void *arg, uint64_t ino);
	/*
	 * inval_entry, sent before it returns.  Called with no lock held, by
	 * a thread that serves no request (the consumer's installer); may be
	 * NULL (inval_entry then).
	 */
	void (*inval_entry_now)(void *arg, uint64_t parent, const char *name);
};
/* Set before the mount serves. */
void vp_ns_set_kernel(struct vp_ns *ns, const struct vp_ns_kernel *ops, void *arg);
int vp_handle_writable(const struct vp_handle *h);

/*
 * A write through h by a caller without CAP_FSETID clears the file's
 * setuid bit, and its setgid bit where group execute is set, as a local
 * file system does (the kernel leaves this to FUSE file systems for
 * direct I/O writes).  The caller is not root: the bits are cleared (as a
 * chmod: logged for the PFS) and the kernel's cached mode dropped.
 */
void vp_ns_write_kills_privs(struct vp_ns *ns, const struct vp_caller *who,
			     struct vp_handle *h);
ssize_t vp_ns_write(struct vp_ns *ns, struct vp_handle *h, const void *buf,
		    size_t len, uint64_t off);
/*
 * vp_ns_write() where fill(arg, fd, off, len) puts the bytes into the
 * working copy's memfd itself (fs/ll.c: a splice from the request's
 * pipe).  -ENOTSUP: the working copy is chunks; use vp_ns_write().
 */
ssize_t vp_ns_write_fd(struct vp_ns *ns, struct vp_handle *h, uint64_t off, size_t len,
		       ssize_t (*fill)(void *arg, int fd, uint64_t off, size_t len), void *arg);
/* Reads through the handle's version (data.h's vp_data_read). */
ssize_t vp_ns_read(struct vp_ns *ns, struct vp_handle *h, uint64_t off,
		   size_t len, struct vp_read *rd);
/*
 * close() of a file descriptor (FUSE FLUSH) by who: if h is the last
 * writable handle and who is of the process that opened it, what was
 * written becomes a version now.
 */
/*
 * fallocate(2) through writable h: mode 0 (the file grows to off + len)
 * or FALLOC_FL_KEEP_SIZE reserve cache memory for the range, -ENOSPC when
 * the cache cannot hold it (after cache_wait); other modes (PUNCH_HOLE,
 * ZERO_RANGE, ...) are -EOPNOTSUPP.  A growth is a change: the close
 * commits it.
 */
int vp_ns_fallocate(struct vp_ns *ns, struct vp_handle *h, int mode, uint64_t off,
		    uint64_t len);
int vp_ns_flush(struct vp_ns *ns, const struct vp_caller *who,
		struct vp_handle *h);
/* fsync of a file; what it waits for is cfg->fsync_mode. */
int vp_ns_fsync(struct vp_ns *ns, struct vp_handle *h);

/* fsync of a directory: with fsync=pfs, waits until the PFS has caught up. */
int vp_ns_fsyncdir(struct vp_ns *ns, uint64_t ino);

/* Directories: a stable snapshot of the entries, taken at open. */
int vp_ns_opendir(struct vp_ns *ns, uint64_t ino, struct vp_dir **dp);
/* Entry i of the snapshot, or NULL past the end. */
const struct vp_dirent *vp_dir_entry(const struct vp_dir *dir, size_t i);
void vp_ns_releasedir(struct vp_dir *dir);

/*
 * Extended attributes: viperfs' own, read-only: "user.viperfs.version",
 * "user.viperfs.state" (cached, flushing, flushed) and, on the root,
 * "user.viperfs.control" (the control socket).  Returns the value length;
 * with len 0 only the length.  -ENODATA for other names.
 */
ssize_t vp_ns_getxattr(struct vp_ns *ns, uint64_t ino, const char *name,
		       char *buf, size_t len);
ssize_t vp_ns_listxattr(struct vp_ns *ns, uint64_t ino, char *buf, size_t len);

/*
 * Flush control.  vp_ns_flush_start() queues a flush of every version not
 * yet on the PFS under path ("" or "/" for all), even where the flush
 * policy would skip it, and fills *p with a target to wait for.
 * vp_ns_flush_poll() updates *p and waits up to wait_s for progress;
 * it returns 1 when the target is reached, 0 if not yet, -errno on error.
 */
int vp_ns_flush_start(struct vp_ns *ns, const char *path,
		      struct vp_flush_progress *p);
int vp_ns_flush_poll(struct vp_ns *ns, struct vp_flush_progress *p,
		     double wait_s);

/*
 * The namespace's part of status (pfs_dir, tiers.ram, flush, stats, paths,
 * and tiers.gpu only where gpu_cache asked for a tier that is off): a new
 * reference, or NULL when memory ran out.  Built under ns->lock, so the
 * caller dumps and sends it with no lock held (a client that does not read
 * must not stall the mount).  ctl.c adds the GPU tier's and replication's
 * parts.
 */
json_t *vp_ns_status(struct vp_ns *ns);
/*
 * The array of {path, version, size, state, writers, tiers} for path and,
 * if it is a directory, everything below it, in *files (a new reference).
 * Returns 0, -ENOENT or -ENOMEM (*files NULL).
 */
int vp_ns_versions(struct vp_ns *ns, const char *path, json_t **files);

/*
 * Waits up to wait_s for every file handle on the mount to be released
 * (the kernel sends RELEASE after close() returns).  Returns 0, or -EBUSY
 * with the number still open in *open.
 */
int vp_ns_wait_idle(struct vp_ns *ns, double wait_s, unsigned int *open);

/*
 * Warm-up: reads every file under path from the PFS into the cache (as far
 * as the budget allows).  cb, if not NULL, is called with the progress
 * now and then; a nonzero return stops the warm-up and is returned.  May
 * block on PFS reads.  Returns 0, -ENOENT, or cb's value.
 */
struct vp_warm_progress {
	uint64_t files_total, files_done;
	uint64_t bytes_total, bytes_done;
	uint64_t bytes_cached;		/* of bytes_done, what stayed in the cache */
	uint64_t errors;		/* files that could not be read */
};
typedef int (*vp_ns_warm_cb)(void *arg, const struct vp_warm_progress *p);
int vp_ns_warm(struct vp_ns *ns, const char *path, vp_ns_warm_cb cb, void *arg,
	       struct vp_warm_progress *p);

/*
 * With gpu_cache set and no GPU tier: why, for status (NULL or "": the
 * tier is on).  The namespace's use of the tier goes through
 * vp_ns_set_tier() and vp_ns_observe(); it knows no struct vp_gpu.
 */
void vp_ns_set_gpu_off(struct vp_ns *ns, const char *why);
/* The inode number of the file at path; -ENOENT, -EISDIR. */
int vp_ns_path_ino(struct vp_ns *ns, const char *path, uint64_t *ino);

/*
 * Appends the namespace's gauges in the Prometheus text format: those of
 * the RAM cache and of the tier below it (vp_ns_set_tier), the flush
 * queue and the open files.  Other subsystems' metrics are theirs.
 */
void vp_ns_metrics(struct vp_ns *ns, FILE *out);

/* Sets the control socket path that getxattr reports. */
void vp_ns_set_control_path(struct vp_ns *ns, const char *path);

/* ---- version events (viperctl watch/wait, on_update) ---- */

struct vp_event {
	uint64_t seq;		/* increasing; 0: none */
	char path[PATH_MAX];	/* in the mount */
	uint64_t version, size;
	double time;		/* wall clock, seconds */
};

/*
 * Waits up to wait_s for an event after *seq whose path is prefix or
 * below it ("" for all), and copies the first into *ev, moving *seq past
 * it.  Returns 1 with an event, 0 on timeout, -EOVERFLOW if events after
 * *seq were lost (the ring wrapped; *seq moves to the oldest kept).
 */
int vp_ns_next_event(struct vp_ns *ns, uint64_t *seq, const char *prefix,
		     double wait_s, struct vp_event *ev);
/* The sequence number of the newest event (start watching from here). */
uint64_t vp_ns_event_seq(struct vp_ns *ns);

/* ---- observers: what the namespace tells other subsystems ---- */

/*
 * A directory, file or symlink as the namespace tells others of it (the
 * observers, vp_ns_snapshot).  Everything is borrowed for the call: an
 * observer that keeps d takes its own reference.  ino is this node's own
 * name for it; other nodes know the file by its path.
 */
/* LINK: another name (path) of the node at target (a hard link) */
enum vp_entry_type { VP_ENTRY_DIR, VP_ENTRY_FILE, VP_ENTRY_SYMLINK, VP_ENTRY_SPECIAL,
		     VP_ENTRY_LINK };
struct vp_ns_entry {
	enum vp_entry_type type;
	const char *path;		/* the live path, without a leading '/' */
	const char *target;		/* a symlink's target, a link's node's path, else NULL */
	uint64_t ino;
	uint32_t mode;
	uint64_t rdev;			/* a special node's device number */
	struct vp_data *d;		/* a file's bytes of version `version`, or NULL */
	uint64_t version;
	uint64_t epoch;			/* the producer's run that committed it (0: unknown) */
	int64_t mtime_ns;
};

/*
 * The callbacks of one observer; any may be NULL.  Those called with
 * ns->lock held must only copy, take references and queue: never block,
 * never call back into the namespace.  Paths are in the mount, without a
 * leading '/'; data is borrowed (take a reference to keep it).
 */
struct vp_ns_observer {
	/*
	 * A linked file got a new version: committed here, or installed on
	 * a consumer.  ns->lock held.
	 */
	void (*on_commit)(void *arg, uint64_t ino, uint64_t version,
			  struct vp_data *d);
	/* A file left the tree (unlinked, or replaced by a rename).  ns->lock held. */
	void (*on_unlink)(void *arg, uint64_t ino);
	/*
	 * Producer: a namespace change, in the order of the flush log.
	 * path2 is a rename's new path or a symlink's target, else "".
	 * mode has the type bits; rdev is a device node's number (MKNOD).
	 * ns->lock held.
	 */
	void (*on_op)(void *arg, enum vp_op_kind kind, const char *path,
		      const char *path2, uint32_t mode, uint64_t rdev);
	/* Producer: a version published (queued for the PFS).  ns->lock held. */
	void (*on_version)(void *arg, const struct vp_ns_entry *e);
	/*
	 * Producer with repl_stream: a copy-on-write snapshot of the finished
	 * chunks of version `version`, still being written.  No lock held.
	 */
	void (*on_preview)(void *arg, const struct vp_ns_entry *e);
	/*
	 * Producer: how many consumers hold the version whose bytes are d
	 * (the caller keeps a reference), or said they have moved past it;
	 * waits up to wait_s for want of them.  With wait_s 0 it only counts,
	 * and ns->lock may be held; else no lock is held and it may block.
	 */
	unsigned int (*held_by)(void *arg, const struct vp_data *d, unsigned int want,
				double wait_s);
	/*
	 * Producer (flush_hold): 1 once every live consumer holds the version
	 * whose bytes are d (or none is live), 0 if that is not so within
	 * wait_s.  No lock held; it may block.
	 */
	int (*held_all)(void *arg, const struct vp_data *d, double wait_s);
};

#define VP_NS_MAX_OBSERVERS 4

/*
 * Registers ops (borrowed, with arg) as an observer.  Call before the
 * mount serves requests, and vp_ns_unobserve() after it stopped: the list
 * is written under ns->lock, and on_preview, called with no lock, uses a
 * copy taken under it, so an observer must outlive the requests in
 * flight.  Returns 0, or -ENOSPC past VP_NS_MAX_OBSERVERS.
 */
int vp_ns_observe(struct vp_ns *ns, const struct vp_ns_observer *ops, void *arg);
/* Unregisters ops with arg; no-op if it is not registered. */
void vp_ns_unobserve(struct vp_ns *ns, const struct vp_ns_observer *ops,
		     void *arg);

/*
 * The tier below the RAM cache (the GPU tier), which the namespace reads a
 * file's bytes back from when the cache dropped them.
 */
struct vp_ns_tier {
	const char *name;	/* its label in the metrics: "gpu" */
	/* The size of its copy of (ino, version), or UINT64_MAX.  ns->lock may be held. */
	uint64_t (*size)(void *arg, uint64_t ino, uint64_t version);
	/* Copies len bytes at off of that copy into buf.  No lock held; may block. */
	ssize_t (*read)(void *arg, uint64_t ino, uint64_t version, void *buf,
			size_t len, uint64_t off);
	/* Its bytes in use and its budget.  No lock held. */
	void (*usage)(void *arg, uint64_t *used, uint64_t *budget);
};

/*
 * Sets the tier below the cache (ops borrowed, with arg; NULL: none).
 * Set before the mount serves requests and cleared after it stopped.
 */
void vp_ns_set_tier(struct vp_ns *ns, const struct vp_ns_tier *ops, void *arg);

/* ---- replication (repl.h) ---- */

struct vp_pool;

struct vp_pool *vp_ns_pool(struct vp_ns *ns);
/* True if the calling thread holds the namespace lock: for the asserts of its observers. */
bool vp_ns_lock_held(const struct vp_ns *ns);

/*
 * Consumer: the installer thread (gettid()), the only caller that may
 * change the tree; everyone else gets EROFS.
 */
void vp_ns_set_installer(struct vp_ns *ns, pid_t tid);
/* Consumer: the installer's syscalls returned; raises the events they held back. */
void vp_ns_installed(struct vp_ns *ns);
/*
 * Consumer: a version of size bytes was installed; the spare for the next
 * landing is made now, as large (at most a quarter of ram_cache), if
 * ram_spare is on.
 */
void vp_ns_spare_fit(struct vp_ns *ns, uint64_t size);

/*
 * Consumer: the next open (or create) of path by the installer thread
 * attaches d (a reference is taken) as version `version` instead of
 * truncating or copying.  Returns 0 or -errno.
 */
int vp_ns_stage_install(struct vp_ns *ns, const char *path, struct vp_data *d,
			uint64_t version, uint64_t epoch, uint32_t mode);
void vp_ns_unstage_install(struct vp_ns *ns, const char *path);
/*
 * Consumer: puts d as file `name` (version `version`) in the replica's
 * hidden folder ".viperfs-incoming" (not listed by readdir, so recursive
 * watchers never watch it), from where the installer renames it over the
 * old file: a new inode, so readers of the old one keep their bytes and
 * their page cache.  Returns 0 or -errno.
 */
int vp_ns_install_hidden(struct vp_ns *ns, const char *name, struct vp_data *d,
			 uint64_t version, uint64_t epoch, uint32_t mode);
/* The version of the file at path, or UINT64_MAX if there is none. */
uint64_t vp_ns_path_version(struct vp_ns *ns, const char *path);
/* The bytes of path's current version (a new reference), or NULL. */
struct vp_data *vp_ns_path_data(struct vp_ns *ns, const char *path);
/*
 * 1 if a node that is not a directory is at path (a file, a symlink, a
 * FIFO, a device): an install must replace it by a rename, never open it.
 */
int vp_ns_path_taken(struct vp_ns *ns, const char *path);
/*
 * Versions are ordered by (epoch, version): the epoch is the producer's
 * run that committed them (vp_ns_epoch; 0: unknown, a PFS file of an
 * older viperfs).  The stamp of the file at path: 0, or -ENOENT.
 */
struct vp_ns_stamp {
	uint64_t version, epoch;
	uint32_t mode;			/* permission bits */
	int64_t mtime_ns;
};
int vp_ns_path_stamp(struct vp_ns *ns, const char *path, struct vp_ns_stamp *out);
/* Producer: true if path was unlinked or renamed away in this run (or cannot be told). */
int vp_ns_removed_this_run(struct vp_ns *ns, const char *path);
/*
 * Consumer: a copy of path's bytes on the PFS, if the PFS holds version
 * `version` of it (its xattr); *mode gets its permissions.  NULL with
 * *err: -ESTALE (another version there), -ENOENT, -EINVAL (not a regular
 * file; a FIFO is not waited on), -EFBIG (larger than ram_cache), -ENOMEM,
 * -ENOSPC, -EIO.
 */
struct vp_data *vp_ns_pfs_copy(struct vp_ns *ns, const char *path, uint64_t version,
			       uint32_t *mode, int *err);
/* True if path exists on the PFS (not followed through symlinks). */
int vp_ns_on_pfs(struct vp_ns *ns, const char *path);
/* A producer's run: its epoch (0 on a consumer). */
uint64_t vp_ns_epoch(const struct vp_ns *ns);
/*
 * Producer: a consumer holds version `version` of path from a run before
 * this one; the next commit of path is numbered after it.  0 or -ENOENT.
 */
int vp_ns_raise_floor(struct vp_ns *ns, const char *path, uint64_t version);
/*
 * Consumer: path's version `version` is, byte for byte, the producer's
 * of epoch `epoch`: it is stamped so, and not installed again.  -ESTALE
 * if path has moved on.
 */
int vp_ns_relabel(struct vp_ns *ns, const char *path, uint64_t version,
		  uint64_t epoch);
/*
 * Producer: d (a consumer's copy, checked) becomes version `version` of
 * path, committed in this run: served, flushed and announced like any
 * other.  Only while path still holds version `had` with no writer
 * (had 0: path does not exist, and is made in its directory):
 * -ESTALE otherwise (this run's versions win), -ENOTDIR if the directory
 * is gone.
 */
int vp_ns_recover(struct vp_ns *ns, const char *path, struct vp_data *d,
		  uint64_t version, uint64_t had, uint32_t mode, int64_t mtime_ns);

/*
 * Calls cb for every directory (parents first), file, symlink and special
 * node, then for every other name of a node (VP_ENTRY_LINK), with
 * ns->lock held: cb must only copy and take references.
 * d is the file's cached bytes, or NULL when they are only on the PFS.
 */
/* Reads every directory of the PFS tree that is not loaded yet.  May block. */
void vp_ns_load_all(struct vp_ns *ns);

typedef void (*vp_ns_snapshot_cb)(void *arg, const struct vp_ns_entry *e);
void vp_ns_snapshot(struct vp_ns *ns, vp_ns_snapshot_cb cb, void *arg);

#endif
