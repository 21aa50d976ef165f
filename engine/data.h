/*
 * data: the bytes of one file version, in fixed-size chunks.
 *
 * DESIGN: a struct vp_data is an array of chunk slots over a byte range
 * [0, size).  A slot is a refcounted chunk from the pool, or empty.  An
 * empty slot reads as zeros, unless the data has a backing file (the PFS
 * copy it was loaded from), in which case it is filled from that file on
 * first access and then cached, if the pool has room.
 *
 * Chunks are copy-on-write: vp_data_clone() shares them, and a write to a
 * chunk that anyone else holds (another data, or a reader in the middle of
 * a reply) copies it first.  So a committed version stays immutable while a
 * writer edits a clone of it, and readers never see torn chunks.
 *
 * INVARIANTS: bytes at or past `backing_limit` never come from the backing
 * file (a truncate below it and an extension read zeros).
 *
 * THREADING: every function is thread-safe; d->lock is taken inside (its
 * place in the lock order: lock.h).  Writes and fills may block (cache
 * backpressure, PFS reads).
 */
#ifndef VP_DATA_H
#define VP_DATA_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

struct vp_pool;
struct vp_chunk;
struct vp_mfile;

struct vp_data {
	int refs;			/* atomic */
	pthread_mutex_t lock;
	struct vp_pool *pool;		/* borrowed; outlives every data */
	size_t chunk_size;
	/* protected by lock: */
	struct vp_chunk **slots;
	size_t nslots;			/* capacity of slots */
	uint64_t size;			/* also read atomically without lock */
	int backing_fd;			/* -1: none; owned */
	uint64_t backing_limit;
	int pristine;			/* the backing file's bytes, unchanged (no write or cut since) */
	uint64_t resident;		/* bytes of chunks held */
	/*
	 * A memory file (mfile.h) instead of chunks: the bytes are
	 * [0, size) of mf.  Sealed, or this data's own working copy; a
	 * view (a preview's snapshot) shares a working copy that may still
	 * change under it.  The slots are unused.
	 */
	struct vp_mfile *mf;
	int view;
	/*
	 * Consumers that said they hold this version (the producer's
	 * replication counts them for fsync=peers).  Atomic.  In the data,
	 * not in a table keyed by its address: a freed data's address comes
	 * back for the next one.
	 */
	unsigned int peers_held;
};

/* One piece of a read: len bytes at ptr, valid until vp_read_release(). */
struct vp_read_seg {
	const void *ptr;
	size_t len;
};

#define VP_READ_MAX_SEGS 8

struct vp_read {
	struct vp_read_seg seg[VP_READ_MAX_SEGS];
	unsigned int nseg;
	size_t len;			/* sum of seg[].len */
	unsigned int hits, misses;	/* chunks found in the cache, read from the backing file */
	/* private: */
	struct vp_chunk *held[VP_READ_MAX_SEGS];
	void *bounce[VP_READ_MAX_SEGS];
	struct vp_pool *pool;
	struct vp_mfile *mf;
};

/* Returns a new empty data (one reference, yours) or NULL (ENOMEM). */
struct vp_data *vp_data_new(struct vp_pool *pool);

/*
 * Returns a new data of `size` bytes read lazily from fd, which it takes
 * ownership of (also on failure).  NULL on ENOMEM.
 */
struct vp_data *vp_data_new_backed(struct vp_pool *pool, int fd,
				   uint64_t size);

/*
 * Returns a new empty data whose bytes live in a memory file of its own
 * (mfile.h), or NULL with *err set.
 */
struct vp_data *vp_data_new_mfile(struct vp_pool *pool, int *err);

/*
 * Returns a new data whose bytes are those of mf, a sealed memory file
 * (a landed version), taking the caller's reference to mf (also on
 * failure), or NULL (ENOMEM).
 */
struct vp_data *vp_data_from_mfile(struct vp_pool *pool, struct vp_mfile *mf);

/*
 * Returns a new data with the same bytes, sharing chunks (copy-on-write).
 * A memory file is sealed and shared: the next write to src copies it.
 */
struct vp_data *vp_data_clone(struct vp_data *src);

/*
 * A snapshot for a preview: a clone, except that a working memory file is
 * shared as it is, unsealed, and may change under the view (previews are
 * hash-checked by their readers).
 */
struct vp_data *vp_data_view(struct vp_data *src);

/*
 * Makes d's bytes immutable: a memory file is sealed.  Takes no data
 * lock (callable under ns->lock): only for a data nobody writes any more.
 */
void vp_data_seal(struct vp_data *d);

/*
 * The read-only descriptor of d's sealed memory file (valid while d is
 * held), or -1: d is chunks, or still being written.
 */
int vp_data_fd(struct vp_data *d);

/*
 * A file whose bytes are, unchanged, those of its backing file (a version
 * loaded from the PFS, or evicted to it), and not all in the cache (a
 * warmed file is read from RAM): that file's descriptor, which the kernel
 * may read itself (passthrough), else -1.  Borrowed.
 */
int vp_data_backing_fd(struct vp_data *d);

/*
 * Copies [off, off + len) of a sealed memory file to out_fd at the same
 * offset, in the kernel.  Returns bytes, -ENOTSUP (not one), or -errno.
 */
ssize_t vp_data_copy_out(struct vp_data *d, int out_fd, uint64_t off, size_t len);


/* Takes a reference; returns d. */
struct vp_data *vp_data_get(struct vp_data *d);
/* Drops a reference; the last one frees the data and its chunks. */
void vp_data_put(struct vp_data *d);

uint64_t vp_data_size(struct vp_data *d);
/* Bytes of chunk memory this data holds (shared chunks count in each). */
uint64_t vp_data_resident(struct vp_data *d);
/* True if every byte is in memory (nothing left to read from a backing file). */
int vp_data_fully_resident(struct vp_data *d);
/*
 * A sealed memory file's read-only mapping of all its bytes (valid while
 * d is held), its length in *len; NULL for any other data.
 */
const void *vp_data_sealed_map(struct vp_data *d, uint64_t *len);

/*
 * Writes len bytes at off, growing the data.  Waits up to wait_s for cache
 * space.  Returns len, or -ENOSPC, -ENOMEM, -EIO (backing read), -EFBIG.
 */
ssize_t vp_data_write(struct vp_data *d, const void *buf, size_t len,
		      uint64_t off, double wait_s);

/*
 * vp_data_write() for a memory file, where fill(arg, fd, off, len) puts
 * the bytes into its memfd (a splice) and returns how many.  -ENOTSUP
 * for chunks.
 */
ssize_t vp_data_write_fd(struct vp_data *d, uint64_t off, size_t len, double wait_s,
			 ssize_t (*fill)(void *arg, int fd, uint64_t off, size_t len), void *arg);

/* Sets the size.  Returns 0 or -errno (a COW copy may need space). */
int vp_data_truncate(struct vp_data *d, uint64_t size, double wait_s);

/*
 * fallocate(2), mode 0 or FALLOC_FL_KEEP_SIZE (keep_size), on a memory
 * file (vp_mfile_fallocate, its own copy first): 0, -ENOSPC when the
 * cache cannot hold it, or -EOPNOTSUPP for chunks (a file loaded from the
 * PFS and opened for update).
 */
int vp_data_fallocate(struct vp_data *d, uint64_t off, uint64_t len, int keep_size,
		      double wait_s);

/*
 * Reads up to len bytes at off (short at EOF; 0 past it) as segments that
 * point into the cache where they can.  len is cut so that at most
 * VP_READ_MAX_SEGS chunks are touched.  rd must be released with
 * vp_read_release().  Returns bytes read or -errno (-EIO on a failed fill).
 */
ssize_t vp_data_read(struct vp_data *d, uint64_t off, size_t len,
		     struct vp_read *rd);
void vp_read_release(struct vp_read *rd);

/*
 * Builds data from chunk memory the caller filled (e.g. by RMA):
 * mem[i] is chunk i (from d's pool; NULL: a hole).  Takes ownership of
 * every mem[i], also on failure.  Returns new data (one reference) or NULL.
 */
struct vp_data *vp_data_adopt(struct vp_pool *pool, void **mem, size_t n,
			      uint64_t size);

/*
 * Where the chunk holding byte off lives: its memory, or NULL for a hole
 * or an unfetched chunk.  For the network: the caller must hold d.
 */
const void *vp_data_chunk_mem(struct vp_data *d, size_t idx);

/* Copies up to len bytes at off into buf.  Returns bytes or -errno. */
ssize_t vp_data_pread(struct vp_data *d, void *buf, size_t len, uint64_t off);

/*
 * The xxh3-64 of each chunk's bytes (as far as the size goes) into
 * hashes[0..n), 0 for a hole.  Every chunk must be resident.  Returns 0
 * or -ENODATA.
 */
int vp_data_chunk_hashes(struct vp_data *d, uint64_t *hashes, size_t n);


#endif
