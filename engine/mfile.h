/*
 * mfile: a memory file, the bytes of one file version in a memfd of its
 * own.
 *
 * DESIGN: a committed version is a memfd sealed with F_SEAL_WRITE,
 * F_SEAL_SHRINK and F_SEAL_GROW, so the kernel itself keeps it immutable,
 * and the same pages serve every use of those bytes: FUSE passthrough
 * (the kernel reads and maps the memfd for the node's readers), the
 * daemon's own reads (a read-only shared mapping), the flush (a copy in
 * the kernel) and the network (the mapping is registered with the
 * fabric).  No second copy is ever made of a sealed file.
 *
 * The daemon writes with pwrite(2) and never maps a memory file
 * writable: a writable shared mapping would make F_SEAL_WRITE fail.  It
 * maps a read-only descriptor of its own (an O_RDONLY open of
 * /proc/self/fd/N), whose mappings cannot become writable either.
 * Pages come with the writes (whole pages are not zeroed first: no second
 * pass over the memory), and are charged ahead, in steps, to the pool's
 * budget (ram_cache), with its backpressure.
 *
 * THREADING: mf->lock guards the allocation, the mapping and the seal;
 * it is a leaf below the data lock (lock.h), and may be followed only by
 * the pool's.  pwrite, truncate and copy are for the one data that owns
 * an unsealed file (its data lock serialises them).
 */
#ifndef VP_MFILE_H
#define VP_MFILE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct vp_pool;

/* The chunk of the cached hashes: the data's chunk size (VP_CHUNK_SIZE). */
#define VP_MFILE_HASH_CHUNK (1u << 20)

struct vp_mfile {
	int refs;			/* atomic */
	int fd;				/* the memfd, read-write */
	int rofd;			/* the same file, read-only: mappings, passthrough, flush */
	struct vp_pool *pool;		/* borrowed; charged for alloc */
	pthread_mutex_t lock;
	/* protected by lock: */
	uint64_t alloc;			/* bytes allocated (charged), from 0 */
	uint64_t ahead;			/* pages allocated ahead (a spare's) end here */
	uint64_t size;			/* the file's size */
	char *map;			/* read-only, map_len bytes; NULL: none yet */
	size_t map_len;
	void **old_maps;		/* smaller mappings still in use by readers */
	size_t *old_lens;
	unsigned int nold;
	int sealed;			/* also read atomically */
	/*
	 * Chunk hashes (hash + 1; 0: none), each valid while its chunk's
	 * write count is still the one it was computed at (previews hash a
	 * working file over and over: only the chunks written since).
	 */
	uint64_t *hashes;
	uint32_t *hash_gen;		/* the chunk's write count when hashed */
	uint32_t *gen;			/* writes that touched each chunk */
	size_t nhashes;
	char *wmap;			/* a landing's (or a mapped spare's) writable mapping; NULL: none */
	size_t wmap_len;
	int landing;			/* wmap is a landing's (vp_mfile_land_map) */
};

/*
 * A new empty, unsealed memory file.  NULL with *err set (-errno).  It is
 * the pool's spare when one is ready (below): its pages are there already.
 */
struct vp_mfile *vp_mfile_new(struct vp_pool *pool, int *err);
struct vp_mfile *vp_mfile_get(struct vp_mfile *mf);
void vp_mfile_put(struct vp_mfile *mf);

/*
 * Writes len bytes at off (unsealed files only), allocating ahead; waits
 * up to wait_s for cache space.  Returns len or -ENOSPC, -EPERM (sealed:
 * logged loudly, a bug), -EIO.
 */
ssize_t vp_mfile_pwrite(struct vp_mfile *mf, const void *buf, size_t len,
			uint64_t off, double wait_s);
/*
 * The same, where fill(arg, fd, off, len) puts the bytes into the memfd
 * itself (a splice from the FUSE request's pipe) and returns how many.
 */
ssize_t vp_mfile_write_fd(struct vp_mfile *mf, uint64_t off, size_t len, double wait_s,
			  ssize_t (*fill)(void *arg, int fd, uint64_t off, size_t len), void *arg);
/* Sets the size of an unsealed file.  Returns 0 or -errno. */
int vp_mfile_truncate(struct vp_mfile *mf, uint64_t size);

/*
 * fallocate(2) mode 0 (keep_size 0: the file grows to off + len, zeros)
 * or FALLOC_FL_KEEP_SIZE: the pages of [off, off + len) are charged to
 * the budget (waiting up to wait_s, else -ENOSPC) and allocated, so that
 * writes there cannot fail for memory.  Pages past the end go at the seal.
 */
int vp_mfile_fallocate(struct vp_mfile *mf, uint64_t off, uint64_t len, int keep_size,
		       double wait_s);
/*
 * Seals the file at its size (the allocation ahead is given back).
 * Idempotent.  Returns 0 or -errno.
 */
int vp_mfile_seal(struct vp_mfile *mf);
static inline int vp_mfile_sealed(struct vp_mfile *mf)
{
	return __atomic_load_n(&mf->sealed, __ATOMIC_ACQUIRE);
}
/*
 * A new unsealed file with the first size bytes of src (copied in the
 * kernel).  NULL with *err set.
 */
struct vp_mfile *vp_mfile_copy(struct vp_mfile *src, uint64_t size,
			       double wait_s, int *err);
/*
 * The read-only mapping, covering at least len bytes (mapped or grown on
 * demand; old mappings stay valid until the file is freed).  NULL when
 * len is 0 or the kernel refused.
 */
const char *vp_mfile_map(struct vp_mfile *mf, uint64_t len);
/*
 * Landing: bytes that others write into an unsealed file -- the fabric's
 * RMA reads -- through a writable shared mapping of the file, reserved
 * once (reserve bytes of address space, none of memory) so that every
 * pointer into it stays where it is while the file grows.  For the one
 * owner of the file; the daemon's own writes still use pwrite.
 *
 *  - vp_mfile_land_map: the mapping (the file keeps its size), or NULL
 *    with *err set.
 *  - vp_mfile_land_grow: the file grows to size (never shrinks; at most
 *    the reserve), its pages charged to the budget (waiting up to wait_s,
 *    else -ENOSPC) and mapped ahead, so that no landing pays a fault.
 *  - vp_mfile_land_zero: [off, off + len) reads as zeros again, its pages
 *    freed and their charge given back: a hole (where an early landing
 *    may have put bytes), or a landing given up on, but for the chunks a
 *    late read may still write.
 *  - vp_mfile_land_finish: the file's size becomes size, a read-only
 *    mapping of the same pages takes the writable one's place at the same
 *    address (pointers into it stay valid, for reading: mf->map), and the
 *    file is sealed.  Nothing may still write there: the fabric's reads
 *    into it are over, its registration closed.  0 or -errno.
 */
char *vp_mfile_land_map(struct vp_mfile *mf, size_t reserve, int *err);
int vp_mfile_land_grow(struct vp_mfile *mf, uint64_t size, double wait_s);
int vp_mfile_land_zero(struct vp_mfile *mf, uint64_t off, uint64_t len);
int vp_mfile_land_finish(struct vp_mfile *mf, uint64_t size);
/* Bytes charged to the budget for mf (a spare's pages ahead included). */
uint64_t vp_mfile_charged(struct vp_mfile *mf);

/*
 * The huge page size memory files' mappings are aligned to and advised
 * for (0: 4 KiB pages only), and the shmem_enabled mode it comes from.
 */
size_t vp_mfile_huge(const char **mode);

/*
 * The xxh3-64 of chunk idx (len bytes from idx * chunk_size) of a sealed
 * file, cached.
 */
uint64_t vp_mfile_chunk_hash(struct vp_mfile *mf, size_t idx, size_t chunk_size,
			     size_t len);
/*
 * Copies [off, off + len) of the file to out_fd at out_off in the kernel
 * (copy_file_range, sendfile where it refuses).  Returns bytes or -errno.
 */
ssize_t vp_mfile_copy_out(struct vp_mfile *mf, int out_fd, uint64_t off,
			  size_t len, uint64_t out_off);

/*
 * The spare: one memory file whose pages are allocated ahead (fallocate)
 * by a thread of its own, so that the next version's writes and copies
 * land in pages that exist, at the speed of a memcpy, instead of paying
 * for each new page (allocation and zeroing: 60% of a write measured on
 * the development VM).  It is charged to the pool like any memory file,
 * made again after each one is taken, only while the budget has its size
 * and a quarter more free, and given back when a charge finds the budget
 * short (before it waits, or fails with no wait) and under the pool's
 * pressure (vp_mspare_drop), so that it never makes a writer wait.  The
 * pages a version does not fill are freed at its seal.
 *
 * vp_mspare_new() starts the thread (bytes 0: no spare, NULL returned)
 * and registers the spare with the pool, for vp_mfile_new(); mapped: a
 * consumer's (below).
 */
struct vp_mspare;

struct vp_mspare *vp_mspare_new(struct vp_pool *pool, uint64_t bytes, int mapped);
void vp_mspare_free(struct vp_mspare *sp);
void vp_mspare_drop(struct vp_mspare *sp);
/*
 * A consumer's spare is mapped: its pages allocated, zeroed and mapped
 * writable ahead, for the next landing to take as they are.  It is made
 * at the start and then when asked: vp_mspare_fit(), after each install,
 * with the size of the version installed (it grows to the largest asked
 * for, and the caller caps it), so that the next one is made while the
 * node is idle, not while a version lands.
 */
void vp_mspare_fit(struct vp_mspare *sp, uint64_t bytes);
/* Waits up to timeout_s for a spare to be ready; 1 if one is. */
int vp_mspare_wait_ready(struct vp_mspare *sp, double timeout_s);

struct vp_mspare_stats {
	uint64_t ready;		/* bytes held by a spare now */
	uint64_t made, taken;	/* spares made, spares taken by a new version */
};
void vp_mspare_get_stats(struct vp_mspare *sp, struct vp_mspare_stats *st);

#endif
