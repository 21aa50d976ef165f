/* pool: see pool.h. */
#define _GNU_SOURCE
#include "pool.h"

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/queue.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "lock.h"
#include "log.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define SLAB_BYTES (64ULL << 20)
#define HUGE_ALIGN (2ULL << 20)

struct slab {
	SLIST_ENTRY(slab) next;
	void *map;		/* what munmap() needs */
	size_t map_len;
	void *base;		/* the chunks */
	size_t len;
};

struct free_chunk {		/* lies in the free chunk itself */
	SLIST_ENTRY(free_chunk) next;
};

struct slab_sub {
	void (*cb)(void *, void *, size_t);
	void *arg;
};

#define MAX_SLAB_SUBS 4

/*
 * Slab callbacks run with no pool lock held.  One thread at a time runs
 * them (the one that set calling), so that each subscriber hears of every
 * slab exactly once, and a new slab's chunks are handed out only after its
 * callbacks have returned.
 */
struct vp_pool {
	pthread_mutex_t lock;
	pthread_cond_t freed;		/* a chunk was put back, or calling ended */
	size_t chunk_size;
	uint64_t budget;
	void (*pressure_cb)(void *);
	void *pressure_arg;
	void *spare;			/* the memory-file layer's (engine/mfile.h), atomic */
	/* protected by lock: */
	struct slab_sub slab_sub[MAX_SLAB_SUBS];
	bool calling;			/* a thread is mapping a slab or running callbacks */
	SLIST_HEAD(, free_chunk) free_list;
	SLIST_HEAD(, slab) slabs;
	uint64_t used;			/* chunks handed out and bytes charged */
	uint64_t charged;		/* of used: memory files (vp_pool_charge) */
	uint64_t mapped;
	uint64_t waits;
	uint64_t enospc;
};

/* Maps a slab of len bytes and faults it in.  Returns NULL if refused. */
static struct slab *slab_map(size_t len)
{
	struct slab *slab = malloc(sizeof(*slab));
	size_t map_len = len + HUGE_ALIGN;
	char *map, *base;

	if (!slab)
		return NULL;
	map = mmap(NULL, map_len, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (map == MAP_FAILED) {
		free(slab);
		return NULL;
	}
	base = (char *)(((uintptr_t)map + HUGE_ALIGN - 1) & ~(HUGE_ALIGN - 1));
	madvise(base, len, MADV_HUGEPAGE);
	if (madvise(base, len, MADV_POPULATE_WRITE))
		memset(base, 0, len);	/* older kernels: touch every page */
	slab->map = map;
	slab->map_len = map_len;
	slab->base = base;
	slab->len = len;
	return slab;
}

/* Waits until no thread runs slab callbacks, then becomes that thread. */
static void calling_begin_locked(struct vp_pool *pool)
{
	VP_ASSERT_LOCKED(&pool->lock);
	while (pool->calling)
		pthread_cond_wait(&pool->freed, &pool->lock);
	pool->calling = true;
}

static void calling_end_locked(struct vp_pool *pool)
{
	VP_ASSERT_LOCKED(&pool->lock);
	pool->calling = false;
	pthread_cond_broadcast(&pool->freed);
}

/*
 * Adds a slab of at most want bytes (whole chunks) and puts its chunks on
 * the free list, after the subscribers have seen it.  Called with
 * pool->lock held and calling set; drops the lock while it maps the slab
 * and runs the callbacks.  Returns 0 or -ENOMEM.
 */
static int slab_add_locked(struct vp_pool *pool, uint64_t want)
{
	size_t len = (size_t)(want / pool->chunk_size) * pool->chunk_size;
	struct slab_sub subs[MAX_SLAB_SUBS];
	struct slab *slab;
	char *base;

	VP_ASSERT_LOCKED(&pool->lock);
	assert(pool->calling);
	if (len == 0)
		return -ENOMEM;
	memcpy(subs, pool->slab_sub, sizeof(subs));
	pthread_mutex_unlock(&pool->lock);
	slab = slab_map(len);
	for (int i = 0; slab && i < MAX_SLAB_SUBS; i++)
		if (subs[i].cb)
			subs[i].cb(subs[i].arg, slab->base, len);
	pthread_mutex_lock(&pool->lock);
	if (!slab)
		return -ENOMEM;
	SLIST_INSERT_HEAD(&pool->slabs, slab, next);
	base = slab->base;
	for (size_t off = len; off > 0; off -= pool->chunk_size) {
		struct free_chunk *fc = (void *)(base + off - pool->chunk_size);

		SLIST_INSERT_HEAD(&pool->free_list, fc, next);
	}
	pool->mapped += len;
	return 0;
}

/* Maps and faults in bytes of chunk memory.  Returns 0 or -ENOMEM. */
static int map_prefault(struct vp_pool *pool, uint64_t bytes)
{
	int rc = 0;

	pthread_mutex_lock(&pool->lock);
	calling_begin_locked(pool);
	while (!rc && pool->mapped < bytes) {
		uint64_t want = bytes - pool->mapped;

		if (want < pool->chunk_size)
			want = pool->chunk_size;
		if (want > SLAB_BYTES)
			want = SLAB_BYTES;
		rc = slab_add_locked(pool, want);
	}
	calling_end_locked(pool);
	pthread_mutex_unlock(&pool->lock);
	return rc;
}

struct vp_pool *vp_pool_new(size_t chunk_size, uint64_t budget,
			    uint64_t prefault)
{
	struct vp_pool *pool;
	long page = sysconf(_SC_PAGESIZE);

	if (chunk_size == 0 || chunk_size % (size_t)page || budget < chunk_size) {
		errno = EINVAL;
		return NULL;
	}
	pool = calloc(1, sizeof(*pool));
	if (!pool)
		return NULL;
	pthread_mutex_init(&pool->lock, NULL);
	vp_cond_init_monotonic(&pool->freed);
	SLIST_INIT(&pool->free_list);
	SLIST_INIT(&pool->slabs);
	pool->chunk_size = chunk_size;
	pool->budget = budget / chunk_size * chunk_size;
	if (prefault > pool->budget)
		prefault = pool->budget;
	if (map_prefault(pool, prefault))
		vp_log(LOG_WARNING, "cache",
		       "could not prefault cache memory; it will be faulted in on first use");
	return pool;
}

void vp_pool_free(struct vp_pool *pool)
{
	struct slab *slab;

	if (!pool)
		return;
	while ((slab = SLIST_FIRST(&pool->slabs))) {
		SLIST_REMOVE_HEAD(&pool->slabs, next);
		munmap(slab->map, slab->map_len);
		free(slab);
	}
	pthread_cond_destroy(&pool->freed);
	pthread_mutex_destroy(&pool->lock);
	free(pool);
}

void vp_pool_set_spare(struct vp_pool *pool, void *spare)
{
	__atomic_store_n(&pool->spare, spare, __ATOMIC_RELEASE);
}

void *vp_pool_spare(struct vp_pool *pool)
{
	return __atomic_load_n(&pool->spare, __ATOMIC_ACQUIRE);
}

void vp_pool_set_pressure_cb(struct vp_pool *pool, void (*cb)(void *),
			     void *arg)
{
	pool->pressure_cb = cb;
	pool->pressure_arg = arg;
}

/*
 * Takes a chunk if the budget allows, adding a slab when the free list is
 * empty; waits for a slab that another thread is adding.  Called with
 * pool->lock held, which it may drop meanwhile.
 */
static void *take_locked(struct vp_pool *pool, int *err)
{
	struct free_chunk *fc;

	VP_ASSERT_LOCKED(&pool->lock);
	for (;;) {
		uint64_t want = pool->budget - pool->mapped;
		int rc;

		if (pool->used + pool->chunk_size > pool->budget)
			return NULL;
		if (!SLIST_EMPTY(&pool->free_list))
			break;
		if (pool->calling) {
			pthread_cond_wait(&pool->freed, &pool->lock);
			continue;
		}
		if (want > SLAB_BYTES)
			want = SLAB_BYTES;
		calling_begin_locked(pool);
		rc = slab_add_locked(pool, want);
		calling_end_locked(pool);
		if (rc) {
			*err = -ENOMEM;
			return NULL;
		}
	}
	fc = SLIST_FIRST(&pool->free_list);
	SLIST_REMOVE_HEAD(&pool->free_list, next);
	pool->used += pool->chunk_size;
	return fc;
}

/*
 * Waits, up to wait_s and with the pressure callback, until take(pool)
 * (called with pool->lock held) succeeds.  Called with pool->lock held.
 * Returns 1 when it did, 0 on timeout.
 */
static int wait_space_locked(struct vp_pool *pool, double wait_s,
			     int (*take)(struct vp_pool *, void *), void *arg)
{
	struct timespec deadline;

	VP_ASSERT_LOCKED(&pool->lock);
	pool->waits++;
	vp_abstime(&deadline, vp_now() + wait_s);
	for (;;) {
		int rc;

		if (pool->pressure_cb) {
			pthread_mutex_unlock(&pool->lock);
			pool->pressure_cb(pool->pressure_arg);
			pthread_mutex_lock(&pool->lock);
			if (take(pool, arg))
				return 1;
		}
		rc = pthread_cond_timedwait(&pool->freed, &pool->lock, &deadline);
		if (take(pool, arg))
			return 1;
		if (rc == ETIMEDOUT)
			return 0;
	}
}

/* wait_space_locked()'s take for a chunk: arg is a struct chunk_take. */
struct chunk_take {
	void *mem;
	int err;
};

static int chunk_take(struct vp_pool *pool, void *arg)
{
	struct chunk_take *ct = arg;

	ct->mem = take_locked(pool, &ct->err);
	return ct->mem || ct->err;
}

void *vp_pool_get_chunk(struct vp_pool *pool, double wait_s, int *err)
{
	struct chunk_take ct = { NULL, 0 };

	pthread_mutex_lock(&pool->lock);
	if (!chunk_take(pool, &ct) && wait_s > 0)
		wait_space_locked(pool, wait_s, chunk_take, &ct);
	*err = ct.err;
	if (!ct.mem && !*err) {
		*err = -ENOSPC;
		pool->enospc++;
	}
	pthread_mutex_unlock(&pool->lock);
	return ct.mem;
}

static int charge_take(struct vp_pool *pool, void *arg)
{
	uint64_t bytes = *(uint64_t *)arg;

	if (pool->used + bytes > pool->budget)
		return 0;
	pool->used += bytes;
	pool->charged += bytes;
	return 1;
}

int vp_pool_charge(struct vp_pool *pool, uint64_t bytes, double wait_s)
{
	int ok;

	pthread_mutex_lock(&pool->lock);
	ok = charge_take(pool, &bytes) ||
	     (wait_s > 0 && wait_space_locked(pool, wait_s, charge_take, &bytes));
	if (!ok)
		pool->enospc++;
	pthread_mutex_unlock(&pool->lock);
	return ok ? 0 : -ENOSPC;
}

void vp_pool_uncharge(struct vp_pool *pool, uint64_t bytes)
{
	pthread_mutex_lock(&pool->lock);
	assert(pool->charged >= bytes);
	pool->used -= bytes;
	pool->charged -= bytes;
	pthread_cond_broadcast(&pool->freed);
	pthread_mutex_unlock(&pool->lock);
}

void vp_pool_put_chunk(struct vp_pool *pool, void *mem)
{
	struct free_chunk *fc = mem;

	pthread_mutex_lock(&pool->lock);
	SLIST_INSERT_HEAD(&pool->free_list, fc, next);
	pool->used -= pool->chunk_size;
	pthread_cond_broadcast(&pool->freed);
	pthread_mutex_unlock(&pool->lock);
}

void vp_pool_set_slab_cb(struct vp_pool *pool,
			 void (*cb)(void *arg, void *base, size_t len), void *arg)
{
	struct slab *first, *s;
	int i;

	pthread_mutex_lock(&pool->lock);
	calling_begin_locked(pool);
	for (i = 0; i < MAX_SLAB_SUBS && pool->slab_sub[i].arg != arg; i++)
		;
	if (i == MAX_SLAB_SUBS)	/* a new subscriber: the first free place */
		for (i = 0; i < MAX_SLAB_SUBS && pool->slab_sub[i].cb; i++)
			;
	if (i < MAX_SLAB_SUBS) {
		pool->slab_sub[i].cb = cb;
		pool->slab_sub[i].arg = cb ? arg : NULL;
	}
	/* slabs are only added under calling, so this list stays as it is */
	first = SLIST_FIRST(&pool->slabs);
	pthread_mutex_unlock(&pool->lock);
	if (i == MAX_SLAB_SUBS)
		vp_log(LOG_ERR, "pool", "too many slab subscribers");
	else
		for (s = first; s && cb; s = SLIST_NEXT(s, next))
			cb(arg, s->base, s->len);
	pthread_mutex_lock(&pool->lock);
	calling_end_locked(pool);
	pthread_mutex_unlock(&pool->lock);
}

size_t vp_pool_chunk_size(const struct vp_pool *pool)
{
	return pool->chunk_size;
}

uint64_t vp_pool_available(struct vp_pool *pool)
{
	uint64_t avail;

	pthread_mutex_lock(&pool->lock);
	avail = pool->budget - pool->used;
	pthread_mutex_unlock(&pool->lock);
	return avail;
}

void vp_pool_get_stats(struct vp_pool *pool, struct vp_pool_stats *st)
{
	pthread_mutex_lock(&pool->lock);
	st->budget = pool->budget;
	st->used = pool->used;
	st->charged = pool->charged;
	st->mapped = pool->mapped;
	st->waits = pool->waits;
	st->enospc = pool->enospc;
	pthread_mutex_unlock(&pool->lock);
}
