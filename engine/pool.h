/*
 * pool: fixed-size chunk memory for the RAM cache tier, under a budget.
 *
 * DESIGN: a page fault costs 15-20 us here, so chunk memory comes from
 * slabs that are faulted in when they are mapped (MADV_POPULATE_WRITE,
 * transparent huge pages where the kernel gives them) and then kept: a
 * freed chunk goes back on a free list, warm, and is not returned to the
 * kernel until the pool is freed.
 *
 * Backpressure: when the budget is used up, vp_pool_alloc() calls the
 * pressure callback (which should make clean data go away, e.g. by waking
 * the flusher's evictor) and waits, for a bounded time, for a chunk to be
 * freed.  Then it fails with -ENOSPC.
 *
 * THREADING: all functions are thread-safe.  The pressure and slab
 * callbacks are called with no pool lock held; nothing else runs under
 * pool->lock.  Its place in the lock order: lock.h.
 */
#ifndef VP_POOL_H
#define VP_POOL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

struct vp_pool_stats {
	uint64_t budget;	/* bytes */
	uint64_t used;		/* bytes handed out (chunks and charges) */
	uint64_t charged;	/* of used: charged by memory files */
	uint64_t mapped;	/* bytes mapped and faulted in */
	uint64_t waits;		/* allocations that had to wait for space */
	uint64_t enospc;	/* allocations that gave up */
};

struct vp_pool;

/*
 * Creates a pool of chunk_size chunks (a multiple of the page size) with
 * budget bytes at most, prefault bytes of it mapped and faulted in now.
 * Returns NULL with errno set.
 */
struct vp_pool *vp_pool_new(size_t chunk_size, uint64_t budget,
			    uint64_t prefault);

/* Frees the pool.  Every chunk must have been freed. */
void vp_pool_free(struct vp_pool *pool);

/*
 * One pointer kept with the pool for the memory-file layer: its spare
 * (engine/mfile.h).  NULL: none.
 */
void vp_pool_set_spare(struct vp_pool *pool, void *spare);
void *vp_pool_spare(struct vp_pool *pool);

/*
 * Sets the function called when an allocation finds the budget used up.
 * Call before other threads use the pool.
 */
void vp_pool_set_pressure_cb(struct vp_pool *pool, void (*cb)(void *),
			     void *arg);

/*
 * Returns one chunk of memory (contents undefined), or NULL with *err set
 * to -ENOSPC when none was freed within wait_s seconds (0: do not wait),
 * or -ENOMEM when the kernel refused memory.  May block.
 */
void *vp_pool_get_chunk(struct vp_pool *pool, double wait_s, int *err);

/*
 * Charges bytes to the budget (memory files: engine/mfile.h), waiting up
 * to wait_s as vp_pool_get_chunk() does.  Returns 0 or -ENOSPC.
 */
int vp_pool_charge(struct vp_pool *pool, uint64_t bytes, double wait_s);
void vp_pool_uncharge(struct vp_pool *pool, uint64_t bytes);

/* Gives a chunk back.  Never blocks for long. */
void vp_pool_put_chunk(struct vp_pool *pool, void *mem);

/*
 * Calls cb(arg, base, len) for every slab of chunk memory, now and
 * whenever one is added (to register it with the network, or to pin it
 * for the GPU).  Up to 4 subscribers, one per arg; a NULL cb removes arg's.
 *
 * cb runs with no pool lock held, and may block.  The pool promises:
 * one callback runs at a time (across all subscribers and slabs); each
 * subscriber hears of every slab once; every callback for a new slab has
 * returned before any chunk of that slab is handed out (so a chunk from
 * vp_pool_get_chunk() always lies in a slab its subscribers have seen);
 * and when this function returns, cb has seen every slab there was, and,
 * after a removal, the removed cb is not running and will not run again.
 * While a callback runs, allocations that need a new slab wait for it,
 * so cb must not call vp_pool_get_chunk() or vp_pool_set_slab_cb(), nor
 * wait for a thread that does.  Blocks while another thread runs
 * callbacks.
 */
void vp_pool_set_slab_cb(struct vp_pool *pool,
			 void (*cb)(void *arg, void *base, size_t len), void *arg);

size_t vp_pool_chunk_size(const struct vp_pool *pool);
void vp_pool_get_stats(struct vp_pool *pool, struct vp_pool_stats *st);

/* Bytes that may still be handed out before the budget is reached. */
uint64_t vp_pool_available(struct vp_pool *pool);

#endif
