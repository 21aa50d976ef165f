/* pool: see pool.h. */
#define _GNU_SOURCE
#include "pool.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define SLAB_BYTES (64ULL << 20)
#define HUGE_ALIGN (2ULL << 20)

struct slab {
	struct slab *next;
	void *map;		/* what munmap() needs */
	size_t map_len;
	void *base;		/* the chunks */
	size_t len;
};

struct free_chunk {
	struct free_chunk *next;
};

struct vp_pool {
	pthread_mutex_t lock;
	pthread_cond_t freed;		/* signalled when a chunk is put back */
	size_t chunk_size;
	uint64_t budget;
	void (*pressure_cb)(void *);
	void *pressure_arg;
	struct {
		void (*cb)(void *, void *, size_t);
		void *arg;
	} slab_cb[4];					/* protected by lock */
	/* protected by lock: */
	struct free_chunk *free_list;
	struct slab *slabs;
	uint64_t used;
	uint64_t mapped;
	uint64_t waits;
	uint64_t enospc;
};

/*
 * Maps a slab of at most want bytes (whole chunks) and puts its chunks on
 * the free list.  Called with pool->lock held; returns 0 or -ENOMEM.
 */
static int slab_add_locked(struct vp_pool *pool, uint64_t want)
{
	size_t len = (size_t)(want / pool->chunk_size) * pool->chunk_size;
	struct slab *slab;
	char *map, *base;
	size_t map_len;

	if (len == 0)
		return -ENOMEM;
	slab = malloc(sizeof(*slab));
	if (!slab)
		return -ENOMEM;
	map_len = len + HUGE_ALIGN;
	map = mmap(NULL, map_len, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (map == MAP_FAILED) {
		free(slab);
		return -ENOMEM;
	}
	base = (char *)(((uintptr_t)map + HUGE_ALIGN - 1) & ~(HUGE_ALIGN - 1));
	madvise(base, len, MADV_HUGEPAGE);
	if (madvise(base, len, MADV_POPULATE_WRITE))
		memset(base, 0, len);	/* older kernels: touch every page */
	slab->map = map;
	slab->map_len = map_len;
	slab->base = base;
	slab->len = len;
	for (int i = 0; i < 4; i++)
		if (pool->slab_cb[i].cb)
			pool->slab_cb[i].cb(pool->slab_cb[i].arg, base, len);
	slab->next = pool->slabs;
	pool->slabs = slab;
	for (size_t off = len; off > 0; off -= pool->chunk_size) {
		struct free_chunk *fc = (void *)(base + off - pool->chunk_size);

		fc->next = pool->free_list;
		pool->free_list = fc;
	}
	pool->mapped += len;
	return 0;
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
	pool->chunk_size = chunk_size;
	pool->budget = budget / chunk_size * chunk_size;
	if (prefault > pool->budget)
		prefault = pool->budget;
	pthread_mutex_lock(&pool->lock);
	while (pool->mapped < prefault) {
		uint64_t want = prefault - pool->mapped;

		if (want < chunk_size)
			want = chunk_size;
		if (want > SLAB_BYTES)
			want = SLAB_BYTES;
		if (slab_add_locked(pool, want)) {
			vp_log(LOG_WARNING, "cache",
			       "could not prefault cache memory; it will be faulted in on first use");
			break;
		}
	}
	pthread_mutex_unlock(&pool->lock);
	return pool;
}

void vp_pool_free(struct vp_pool *pool)
{
	struct slab *slab, *next;

	if (!pool)
		return;
	for (slab = pool->slabs; slab; slab = next) {
		next = slab->next;
		munmap(slab->map, slab->map_len);
		free(slab);
	}
	pthread_cond_destroy(&pool->freed);
	pthread_mutex_destroy(&pool->lock);
	free(pool);
}

void vp_pool_set_pressure_cb(struct vp_pool *pool, void (*cb)(void *),
			     void *arg)
{
	pool->pressure_cb = cb;
	pool->pressure_arg = arg;
}

/* Takes a chunk if the budget allows.  Called with pool->lock held. */
static void *take_locked(struct vp_pool *pool, int *err)
{
	struct free_chunk *fc;

	if (pool->used + pool->chunk_size > pool->budget)
		return NULL;
	if (!pool->free_list) {
		uint64_t want = pool->budget - pool->mapped;

		if (want > SLAB_BYTES)
			want = SLAB_BYTES;
		if (slab_add_locked(pool, want)) {
			*err = -ENOMEM;
			return NULL;
		}
	}
	fc = pool->free_list;
	pool->free_list = fc->next;
	pool->used += pool->chunk_size;
	return fc;
}

void *vp_pool_get_chunk(struct vp_pool *pool, double wait_s, int *err)
{
	struct timespec deadline;
	void *mem;

	*err = 0;
	pthread_mutex_lock(&pool->lock);
	mem = take_locked(pool, err);
	if (mem || *err || wait_s <= 0)
		goto out_unlock;

	pool->waits++;
	vp_abstime(&deadline, vp_now() + wait_s);
	for (;;) {
		int rc;

		if (pool->pressure_cb) {
			pthread_mutex_unlock(&pool->lock);
			pool->pressure_cb(pool->pressure_arg);
			pthread_mutex_lock(&pool->lock);
			mem = take_locked(pool, err);
			if (mem || *err)
				break;
		}
		rc = pthread_cond_timedwait(&pool->freed, &pool->lock, &deadline);
		mem = take_locked(pool, err);
		if (mem || *err || rc == ETIMEDOUT)
			break;
	}
out_unlock:
	if (!mem && !*err) {
		*err = -ENOSPC;
		pool->enospc++;
	}
	pthread_mutex_unlock(&pool->lock);
	return mem;
}

void vp_pool_put_chunk(struct vp_pool *pool, void *mem)
{
	struct free_chunk *fc = mem;

	pthread_mutex_lock(&pool->lock);
	fc->next = pool->free_list;
	pool->free_list = fc;
	pool->used -= pool->chunk_size;
	pthread_cond_broadcast(&pool->freed);
	pthread_mutex_unlock(&pool->lock);
}

void vp_pool_set_slab_cb(struct vp_pool *pool,
			 void (*cb)(void *arg, void *base, size_t len), void *arg)
{
	int i;

	pthread_mutex_lock(&pool->lock);
	for (i = 0; i < 4 && pool->slab_cb[i].arg != arg; i++)
		;
	if (i == 4)	/* a new subscriber: the first free place */
		for (i = 0; i < 4 && pool->slab_cb[i].cb; i++)
			;
	if (i < 4) {
		pool->slab_cb[i].cb = cb;
		pool->slab_cb[i].arg = cb ? arg : NULL;
		for (struct slab *s = pool->slabs; s && cb; s = s->next)
			cb(arg, s->base, s->len);
	} else {
		vp_log(LOG_ERR, "pool", "too many slab subscribers");
	}
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
	st->mapped = pool->mapped;
	st->waits = pool->waits;
	st->enospc = pool->enospc;
	pthread_mutex_unlock(&pool->lock);
}
