/* gpu: see gpu.h. */
#define _GNU_SOURCE
#include "gpu.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "data.h"
#include "json.h"
#include "lock.h"
#include "log.h"
#include "pool.h"

/* Device memory left free for the CUDA context and other users. */
#define DEVICE_RESERVE (64ull << 20)
/* A bound stage no mirror request took within this long is freed. */
#define STAGE_TIMEOUT 30.0

struct vp_gpu_stage {
	struct vp_gpu_stage *next;	/* on g->staged once bound */
	struct vp_gpu *g;
	uint64_t size, copied;
	void *mem;			/* device memory, reserved in g->used */
	struct vp_data *d;		/* bound: the version it holds */
	double bound_at;
	int failed;
};

struct mirror {
	struct mirror *next;		/* on g->mirrors or g->retired */
	uint64_t id, version, size;
	void *mem;			/* device memory */
	unsigned int holds;		/* leases and reads in progress */
	double used_at;			/* vp_now() of the last mirror, read or export */
};

struct req {
	struct req *next;
	uint64_t id, version;
	struct vp_data *d;		/* NULL: forget id */
};

struct vp_gpu_lease {
	struct mirror *m;
};

struct vp_gpu {
	const struct vp_tier_ops *ops;
	struct vp_tier *t;
	int dev;
	struct vp_pool *pool;		/* whose slabs are pinned for the tier, or NULL */
	pthread_mutex_t tier_lock;	/* one thread in the tier at a time; never under lock */
	/* protected by tier_lock: */
	uint64_t st_pinned_copies;	/* atomic for readers */
	int warned_pin;
	pthread_mutex_t lock;
	pthread_cond_t cond;		/* work queued, or stop */
	pthread_cond_t idle;		/* the queue drained */
	/* protected by lock: */
	struct req *head, *tail;
	struct mirror *mirrors;		/* the newest mirrored version of each file */
	struct mirror *retired;		/* replaced or forgotten, still held */
	struct vp_gpu_stage *staged;	/* complete stages waiting for their mirror request */
	struct vp_gpu_stage *quarantined;	/* the network may still write into these */
	uint64_t budget, used;
	uint64_t staged_n, staged_bytes;
	uint64_t mirrored, evicted, failed;
	uint64_t reads, read_bytes;
	int busy, stop, on;
	pthread_t thread;
};

/* ---- mirrors ----------------------------------------------------------- */

/* The current mirror of file id, or NULL. */
static struct mirror *find_locked(struct vp_gpu *g, uint64_t id)
{
	struct mirror *m = g->mirrors;

	VP_ASSERT_LOCKED(&g->lock);
	while (m && m->id != id)
		m = m->next;
	return m;
}

/* Takes m off *list, one of g's. */
static void unlink_locked(struct vp_gpu *g, struct mirror **list, struct mirror *m)
{
	VP_ASSERT_LOCKED(&g->lock);
	while (*list && *list != m)
		list = &(*list)->next;
	if (*list)
		*list = m->next;
	m->next = NULL;
}

/*
 * Takes m off the current list.  Returns it if it can be freed now (the
 * caller frees it with no lock held), else retires it until its holds end.
 */
static struct mirror *retire_locked(struct vp_gpu *g, struct mirror *m)
{
	VP_ASSERT_LOCKED(&g->lock);
	unlink_locked(g, &g->mirrors, m);
	if (m->holds) {
		m->next = g->retired;
		g->retired = m;
		return NULL;
	}
	g->used -= m->size;
	return m;
}

/* Frees a list of mirrors taken off every list.  No lock held. */
static void free_mirrors(struct vp_gpu *g, struct mirror *list)
{
	while (list) {
		struct mirror *next = list->next;

		pthread_mutex_lock(&g->tier_lock);
		g->ops->free(g->t, list->mem);
		pthread_mutex_unlock(&g->tier_lock);
		free(list);
		list = next;
	}
}

/* Drops a hold; a retired mirror with none left is returned for freeing. */
static struct mirror *unhold_locked(struct vp_gpu *g, struct mirror *m)
{
	VP_ASSERT_LOCKED(&g->lock);
	if (--m->holds || find_locked(g, m->id) == m)
		return NULL;
	unlink_locked(g, &g->retired, m);
	g->used -= m->size;
	return m;
}

/*
 * Makes room for size bytes: evicts the least recently used mirrors that
 * nobody holds.  Returns the evicted ones (to free with no lock), or sets
 * *ok to 0 when the room cannot be made.
 */
static struct mirror *make_room_locked(struct vp_gpu *g, uint64_t size, uint64_t id, int *ok)
{
	struct mirror *out = NULL;

	VP_ASSERT_LOCKED(&g->lock);
	*ok = 1;
	while (g->used + size > g->budget) {
		struct mirror *lru = NULL;

		for (struct mirror *m = g->mirrors; m; m = m->next)
			if (!m->holds && m->id != id && (!lru || m->used_at < lru->used_at))
				lru = m;
		if (!lru) {
			*ok = 0;
			break;
		}
		retire_locked(g, lru);
		lru->next = out;
		out = lru;
		g->evicted++;
	}
	return out;
}

/* ---- the worker -------------------------------------------------------- */

/* Device memory for size bytes, never more than the device has free.  Tier lock held. */
static int device_alloc(struct vp_gpu *g, uint64_t size, void **mem)
{
	uint64_t free_bytes = 0, total = 0;
	int rc = g->ops->mem_info(g->t, &free_bytes, &total);

	if (!rc && size + DEVICE_RESERVE > free_bytes)
		rc = -ENOMEM;
	return rc ? rc : g->ops->alloc(g->t, size, mem);
}

/* A device error (-EIO) turns the tier off for good, once.  g->lock held. */
static void device_failed_locked(struct vp_gpu *g, int rc)
{
	VP_ASSERT_LOCKED(&g->lock);
	if (rc == -EIO && g->on) {
		g->on = 0;
		vp_log(LOG_ERR, "gpu", "device error: the GPU tier is off from now on; reads are served from RAM");
	}
}

/*
 * Pins a sealed memory file's mapping for the copies of d (returns its
 * base, or NULL: the copies go through staging).  Tier lock held.
 */
static const void *pin_sealed(struct vp_gpu *g, struct vp_data *d)
{
	uint64_t len = 0;
	const void *base = g->ops->pin_host_ro ? vp_data_sealed_map(d, &len) : NULL;
	int rc;

	if (!base)
		return NULL;
	rc = g->ops->pin_host_ro(g->t, base, (size_t)len);
	if (!rc) {
		__atomic_add_fetch(&g->st_pinned_copies, 1, __ATOMIC_RELAXED);
		return base;
	}
	if (!g->warned_pin) {
		g->warned_pin = 1;
		vp_log(LOG_INFO, "gpu", "could not pin a version's memory file for the device (%s): its copies go through staging",
		       strerror(-rc));
	}
	return NULL;
}

/* Copies d into new device memory.  No lock held; takes the tier lock. */
static int copy_in(struct vp_gpu *g, struct vp_data *d, uint64_t size, void **mem)
{
	const void *pinned;
	uint64_t off = 0;
	int rc;

	pthread_mutex_lock(&g->tier_lock);
	rc = device_alloc(g, size, mem);
	pinned = rc ? NULL : pin_sealed(g, d);
	while (!rc && off < size) {
		struct vp_read rd;
		ssize_t n = vp_data_read(d, off, (size_t)(size - off), &rd);

		if (n <= 0) {
			rc = n < 0 ? (int)n : -EIO;
			break;
		}
		for (unsigned int i = 0, at = 0; !rc && i < rd.nseg; at += rd.seg[i].len, i++)
			rc = g->ops->copy_in(g->t, *mem, off + at, rd.seg[i].ptr, rd.seg[i].len);
		/* the segments must live until the device has read them */
		if (!rc)
			rc = g->ops->sync(g->t);
		vp_read_release(&rd);
		off += (uint64_t)n;
	}
	if (pinned) {
		if (rc)
			g->ops->sync(g->t);	/* no copy may still read the pages */
		g->ops->unpin_host(g->t, pinned);
	}
	if (rc && *mem) {
		g->ops->free(g->t, *mem);
		*mem = NULL;
	}
	pthread_mutex_unlock(&g->tier_lock);
	return rc;
}

/* Frees a stage's device memory and gives its reservation back.  No lock held. */
static void stage_free(struct vp_gpu_stage *s)
{
	struct vp_gpu *g = s->g;

	if (s->mem) {
		pthread_mutex_lock(&g->tier_lock);
		g->ops->free(g->t, s->mem);
		pthread_mutex_unlock(&g->tier_lock);
	}
	pthread_mutex_lock(&g->lock);
	g->used -= s->size;
	pthread_mutex_unlock(&g->lock);
	vp_data_put(s->d);
	free(s);
}

/* Takes the stage bound to d off the list, and those nobody took in time into *stale. */
static struct vp_gpu_stage *take_stage_locked(struct vp_gpu *g, const struct vp_data *d,
					      struct vp_gpu_stage **stale)
{
	struct vp_gpu_stage **pp = &g->staged, *found = NULL;
	double now = vp_now();

	VP_ASSERT_LOCKED(&g->lock);
	while (*pp) {
		struct vp_gpu_stage *s = *pp;

		if (d && s->d == d && !found) {
			*pp = s->next;
			found = s;
		} else if (now - s->bound_at > STAGE_TIMEOUT) {
			*pp = s->next;
			s->next = *stale;
			*stale = s;
		} else {
			pp = &s->next;
		}
	}
	return found;
}

static void free_stages(struct vp_gpu_stage *list)
{
	while (list) {
		struct vp_gpu_stage *next = list->next;

		stage_free(list);
		list = next;
	}
}

static void do_mirror(struct vp_gpu *g, struct req *r)
{
	uint64_t size = vp_data_size(r->d);
	struct mirror *old, *evicted, *m;
	struct vp_gpu_stage *st, *stale = NULL;
	void *mem = NULL;
	int ok, rc = 0;

	pthread_mutex_lock(&g->lock);
	st = take_stage_locked(g, r->d, &stale);
	pthread_mutex_unlock(&g->lock);
	free_stages(stale);
	if (st) {
		/* its bytes went to the device while they arrived: no copy */
		mem = st->mem;		/* with its reservation in g->used */
		vp_data_put(st->d);
		free(st);
	} else {
		pthread_mutex_lock(&g->lock);
		old = find_locked(g, r->id);
		if ((old && old->version >= r->version) || size > g->budget) {
			if (size > g->budget)
				g->failed++;
			pthread_mutex_unlock(&g->lock);
			return;
		}
		evicted = make_room_locked(g, size, r->id, &ok);
		if (ok)
			g->used += size;	/* reserved */
		else
			g->failed++;
		pthread_mutex_unlock(&g->lock);
		free_mirrors(g, evicted);
		if (!ok) {
			vp_log(LOG_DEBUG, "gpu", "no room for file %" PRIu64 " version %" PRIu64 " (%" PRIu64 " bytes): the rest is held",
			       r->id, r->version, size);
			return;
		}
		rc = copy_in(g, r->d, size, &mem);
	}
	m = rc ? NULL : calloc(1, sizeof(*m));
	pthread_mutex_lock(&g->lock);
	old = find_locked(g, r->id);
	if (!m || (old && old->version >= r->version)) {
		/* failed, or a newer version got there first (a staged one can) */
		g->used -= size;
		if (!m)
			g->failed++;
		device_failed_locked(g, rc);
		pthread_mutex_unlock(&g->lock);
		free(m);
		if (mem) {
			pthread_mutex_lock(&g->tier_lock);
			g->ops->free(g->t, mem);
			pthread_mutex_unlock(&g->tier_lock);
		}
		return;
	}
	m->id = r->id;
	m->version = r->version;
	m->size = size;
	m->mem = mem;
	m->used_at = vp_now();
	if (old)
		old = retire_locked(g, old);	/* the older version leaves the tier */
	m->next = g->mirrors;
	g->mirrors = m;
	g->mirrored++;
	if (st) {
		g->staged_n++;
		g->staged_bytes += size;
	}
	pthread_mutex_unlock(&g->lock);
	free_mirrors(g, old);
}

static void do_forget(struct vp_gpu *g, uint64_t id)
{
	struct mirror *m, *gone = NULL;

	pthread_mutex_lock(&g->lock);
	m = find_locked(g, id);
	if (m)
		gone = retire_locked(g, m);
	pthread_mutex_unlock(&g->lock);
	free_mirrors(g, gone);
}

static void *worker_main(void *arg)
{
	struct vp_gpu *g = arg;

	pthread_mutex_lock(&g->lock);
	for (;;) {
		struct req *r;

		while (!g->head && !g->stop) {
			g->busy = 0;
			pthread_cond_broadcast(&g->idle);
			pthread_cond_wait(&g->cond, &g->lock);
		}
		if (g->stop)
			break;
		r = g->head;
		g->head = r->next;
		if (!g->head)
			g->tail = NULL;
		g->busy = 1;
		pthread_mutex_unlock(&g->lock);
		if (r->d)
			do_mirror(g, r);
		else
			do_forget(g, r->id);
		vp_data_put(r->d);
		free(r);
		pthread_mutex_lock(&g->lock);
	}
	g->busy = 0;
	pthread_cond_broadcast(&g->idle);
	pthread_mutex_unlock(&g->lock);
	return NULL;
}

/* ---- the interface ----------------------------------------------------- */

struct vp_gpu *vp_gpu_new(const struct vp_tier_ops *ops, int dev, uint64_t budget,
			  char *why, size_t whylen)
{
	struct vp_gpu *g;
	uint64_t free_bytes = 0, total = 0;

	if (!ops) {
		snprintf(why, whylen, "no GPU tier in this build");
		return NULL;
	}
	g = calloc(1, sizeof(*g));
	if (!g) {
		snprintf(why, whylen, "out of memory");
		return NULL;
	}
	g->ops = ops;
	g->dev = dev;
	g->t = ops->open(dev, why, whylen);
	if (!g->t) {
		free(g);
		return NULL;
	}
	if (!ops->mem_info(g->t, &free_bytes, &total) && budget + DEVICE_RESERVE > free_bytes) {
		uint64_t cut = free_bytes > DEVICE_RESERVE ? free_bytes - DEVICE_RESERVE : 0;

		vp_log(LOG_WARNING, "gpu", "gpu_cache is %" PRIu64 " bytes but device %d has %" PRIu64 " free: using %" PRIu64,
		       budget, dev, free_bytes, cut);
		budget = cut;
	}
	g->budget = budget;
	g->on = 1;
	pthread_mutex_init(&g->lock, NULL);
	pthread_mutex_init(&g->tier_lock, NULL);
	vp_cond_init_monotonic(&g->cond);
	vp_cond_init_monotonic(&g->idle);
	if (pthread_create(&g->thread, NULL, worker_main, g)) {
		snprintf(why, whylen, "cannot start the GPU worker thread");
		ops->close(g->t);
		free(g);
		return NULL;
	}
	vp_log(LOG_NOTICE, "gpu", "GPU tier on: %s device %d (%s), %" PRIu64 " bytes",
	       ops->name, dev, ops->device_name(g->t), budget);
	return g;
}

static void on_slab(void *arg, void *base, size_t len)
{
	struct vp_gpu *g = arg;

	if (g->ops->register_host && g->ops->register_host(g->t, base, len))
		vp_log(LOG_INFO, "gpu", "could not pin %zu bytes of cache for the GPU: copies go through staging", len);
}

void vp_gpu_attach_pool(struct vp_gpu *g, struct vp_pool *pool)
{
	if (!g || !pool)
		return;
	g->pool = pool;
	vp_pool_set_slab_cb(pool, on_slab, g);
}

void vp_gpu_free(struct vp_gpu *g)
{
	struct mirror *all;

	if (!g)
		return;
	if (g->pool)
		vp_pool_set_slab_cb(g->pool, NULL, g);
	pthread_mutex_lock(&g->lock);
	g->stop = 1;
	pthread_cond_broadcast(&g->cond);
	pthread_mutex_unlock(&g->lock);
	pthread_join(g->thread, NULL);
	while (g->head) {
		struct req *r = g->head;

		g->head = r->next;
		vp_data_put(r->d);
		free(r);
	}
	all = g->mirrors;
	while (all && all->next)
		all = all->next;
	if (all) {
		all->next = g->retired;
		all = g->mirrors;
	} else {
		all = g->retired;
	}
	g->mirrors = g->retired = NULL;
	free_mirrors(g, all);
	free_stages(g->staged);
	free_stages(g->quarantined);
	g->staged = g->quarantined = NULL;
	g->ops->close(g->t);
	pthread_cond_destroy(&g->cond);
	pthread_cond_destroy(&g->idle);
	pthread_mutex_destroy(&g->lock);
	pthread_mutex_destroy(&g->tier_lock);
	free(g);
}

static void enqueue(struct vp_gpu *g, uint64_t id, uint64_t version, struct vp_data *d)
{
	struct req *r = calloc(1, sizeof(*r));

	if (!r)
		return;	/* a mirror is an optimisation */
	r->id = id;
	r->version = version;
	r->d = d ? vp_data_get(d) : NULL;
	pthread_mutex_lock(&g->lock);
	if (!g->on) {
		pthread_mutex_unlock(&g->lock);
		vp_data_put(r->d);
		free(r);
		return;
	}
	/* latest wins: a queued request for the same file is superseded */
	for (struct req *q = g->head; q; q = q->next) {
		if (q->id == id && q->d) {
			vp_data_put(q->d);
			q->d = NULL;
			q->id = UINT64_MAX;	/* now a forget of nothing: a no-op */
		}
	}
	if (g->tail)
		g->tail->next = r;
	else
		g->head = r;
	g->tail = r;
	pthread_cond_signal(&g->cond);
	pthread_mutex_unlock(&g->lock);
}

void vp_gpu_mirror(struct vp_gpu *g, uint64_t id, uint64_t version, struct vp_data *d)
{
	if (g && d)
		enqueue(g, id, version, d);
}

void vp_gpu_forget(struct vp_gpu *g, uint64_t id)
{
	if (g)
		enqueue(g, id, 0, NULL);
}

void vp_gpu_drain(struct vp_gpu *g)
{
	if (!g)
		return;
	pthread_mutex_lock(&g->lock);
	while ((g->head || g->busy) && !g->stop)
		pthread_cond_wait(&g->idle, &g->lock);
	pthread_mutex_unlock(&g->lock);
}

ssize_t vp_gpu_read(struct vp_gpu *g, uint64_t id, uint64_t version, void *buf,
		    size_t len, uint64_t off)
{
	struct mirror *m, *gone;
	int rc;

	if (!g)
		return -ENOENT;
	pthread_mutex_lock(&g->lock);
	m = find_locked(g, id);
	if (!g->on || !m || m->version != version) {
		pthread_mutex_unlock(&g->lock);
		return -ENOENT;
	}
	if (off >= m->size)
		len = 0;
	else if (len > m->size - off)
		len = (size_t)(m->size - off);
	m->holds++;
	m->used_at = vp_now();
	pthread_mutex_unlock(&g->lock);
	pthread_mutex_lock(&g->tier_lock);
	rc = len ? g->ops->copy_out(g->t, buf, m->mem, off, len) : 0;
	pthread_mutex_unlock(&g->tier_lock);
	pthread_mutex_lock(&g->lock);
	gone = unhold_locked(g, m);
	if (!rc) {
		g->reads++;
		g->read_bytes += len;
	}
	pthread_mutex_unlock(&g->lock);
	free_mirrors(g, gone);
	return rc ? rc : (ssize_t)len;
}

uint64_t vp_gpu_mirror_size(struct vp_gpu *g, uint64_t id, uint64_t version)
{
	struct mirror *m;
	uint64_t size = UINT64_MAX;

	if (!g)
		return size;
	pthread_mutex_lock(&g->lock);
	m = find_locked(g, id);
	if (g->on && m && m->version == version)
		size = m->size;
	pthread_mutex_unlock(&g->lock);
	return size;
}

int vp_gpu_export(struct vp_gpu *g, uint64_t id, void *handle, uint64_t *version,
		  uint64_t *size, struct vp_gpu_lease **lease)
{
	struct vp_gpu_lease *l = calloc(1, sizeof(*l));
	struct mirror *m, *gone;
	int rc;

	if (!l)
		return -ENOMEM;
	if (!g) {
		free(l);
		return -ENOENT;
	}
	pthread_mutex_lock(&g->lock);
	m = find_locked(g, id);
	if (!g->on || !m) {
		pthread_mutex_unlock(&g->lock);
		free(l);
		return -ENOENT;
	}
	m->holds++;
	m->used_at = vp_now();
	*version = m->version;
	*size = m->size;
	pthread_mutex_unlock(&g->lock);
	pthread_mutex_lock(&g->tier_lock);
	rc = g->ops->export_ipc(g->t, m->mem, handle);
	pthread_mutex_unlock(&g->tier_lock);
	if (rc) {
		pthread_mutex_lock(&g->lock);
		gone = unhold_locked(g, m);
		pthread_mutex_unlock(&g->lock);
		free_mirrors(g, gone);
		free(l);
		return rc;
	}
	l->m = m;
	*lease = l;
	return 0;
}

struct vp_gpu_lease *vp_gpu_hold(struct vp_gpu *g, uint64_t id, uint64_t version,
				 void **mem, uint64_t *size)
{
	struct vp_gpu_lease *l;
	struct mirror *m;

	if (!g || !(l = calloc(1, sizeof(*l))))
		return NULL;
	pthread_mutex_lock(&g->lock);
	m = find_locked(g, id);
	if (!g->on || !m || m->version != version) {
		pthread_mutex_unlock(&g->lock);
		free(l);
		return NULL;
	}
	m->holds++;
	m->used_at = vp_now();
	*mem = m->mem;
	*size = m->size;
	pthread_mutex_unlock(&g->lock);
	l->m = m;
	return l;
}

int vp_gpu_cuda_device(struct vp_gpu *g)
{
	return g && g->ops->device_mem ? g->dev : -1;
}

void vp_gpu_lease_release(struct vp_gpu *g, struct vp_gpu_lease *lease)
{
	struct mirror *gone;

	if (!g || !lease)
		return;
	pthread_mutex_lock(&g->lock);
	gone = unhold_locked(g, lease->m);
	pthread_mutex_unlock(&g->lock);
	free_mirrors(g, gone);
	free(lease);
}

void vp_gpu_get_stats(struct vp_gpu *g, struct vp_gpu_stats *st)
{
	memset(st, 0, sizeof(*st));
	if (!g)
		return;
	pthread_mutex_lock(&g->lock);
	st->budget = g->budget;
	st->used = g->used;
	for (struct mirror *m = g->mirrors; m; m = m->next) {
		st->files++;
		st->leased += m->holds > 0;
	}
	for (struct mirror *m = g->retired; m; m = m->next)
		st->leased++;
	st->mirrored = g->mirrored;
	st->evicted = g->evicted;
	st->failed = g->failed;
	st->reads = g->reads;
	st->read_bytes = g->read_bytes;
	st->staged = g->staged_n;
	st->staged_bytes = g->staged_bytes;
	st->on = g->on;
	pthread_mutex_unlock(&g->lock);
	st->pinned_copies = __atomic_load_n(&g->st_pinned_copies, __ATOMIC_RELAXED);
}

/* ---- staging while the bytes arrive ------------------------------------ */

struct vp_gpu_stage *vp_gpu_stage_begin(struct vp_gpu *g, uint64_t size)
{
	struct vp_gpu_stage *s, *stale = NULL;
	struct mirror *evicted;
	int ok, rc;

	if (!g || !size || !(s = calloc(1, sizeof(*s))))
		return NULL;
	s->g = g;
	s->size = size;
	pthread_mutex_lock(&g->lock);
	take_stage_locked(g, NULL, &stale);
	if (!g->on || size > g->budget) {
		pthread_mutex_unlock(&g->lock);
		free_stages(stale);
		free(s);
		return NULL;
	}
	evicted = make_room_locked(g, size, UINT64_MAX, &ok);
	if (ok)
		g->used += size;	/* reserved */
	pthread_mutex_unlock(&g->lock);
	free_mirrors(g, evicted);
	free_stages(stale);
	if (!ok) {
		free(s);
		return NULL;
	}
	pthread_mutex_lock(&g->tier_lock);
	rc = device_alloc(g, size, &s->mem);
	pthread_mutex_unlock(&g->tier_lock);
	if (rc) {
		s->mem = NULL;
		stage_free(s);
		return NULL;
	}
	return s;
}

/*
 * Copies [off, off + len) of the stage from src to the device, or (src
 * NULL) from the device to dst, and waits; counts it, or fails the stage.
 */
static int stage_io(struct vp_gpu_stage *s, uint64_t off, const void *src, void *dst, size_t len)
{
	struct vp_gpu *g;
	int rc;

	if (!s || s->failed)
		return -EIO;
	g = s->g;
	if (off + len > s->size) {
		s->failed = 1;
		return -EINVAL;
	}
	pthread_mutex_lock(&g->tier_lock);
	rc = src ? g->ops->copy_in(g->t, s->mem, off, src, len) :
		g->ops->copy_out(g->t, dst, s->mem, off, len);
	if (!rc)
		rc = g->ops->sync(g->t);	/* the host side is the caller's again */
	pthread_mutex_unlock(&g->tier_lock);
	if (!rc) {
		s->copied += len;
		return 0;
	}
	s->failed = 1;
	pthread_mutex_lock(&g->lock);
	device_failed_locked(g, rc);
	pthread_mutex_unlock(&g->lock);
	return rc;
}

void vp_gpu_stage_copy(struct vp_gpu_stage *s, uint64_t off, const void *src, size_t len)
{
	stage_io(s, off, src, NULL, len);
}

void *vp_gpu_stage_mem(struct vp_gpu_stage *s)
{
	return s ? s->mem : NULL;
}

uint64_t vp_gpu_stage_size(struct vp_gpu_stage *s)
{
	return s ? s->size : 0;
}

int vp_gpu_stage_landed(struct vp_gpu_stage *s, uint64_t off, void *dst, size_t len)
{
	return stage_io(s, off, NULL, dst, len);
}

void vp_gpu_stage_quarantine(struct vp_gpu_stage *s)
{
	struct vp_gpu *g;

	if (!s)
		return;
	g = s->g;
	pthread_mutex_lock(&g->lock);
	s->next = g->quarantined;
	g->quarantined = s;
	pthread_mutex_unlock(&g->lock);
	vp_log(LOG_WARNING, "gpu", "%" PRIu64 " bytes of staged device memory kept aside until unmount: a network read into them timed out and may still land",
	       s->size);
}

void vp_gpu_stage_bind(struct vp_gpu_stage *s, struct vp_data *d)
{
	struct vp_gpu *g;

	if (!s)
		return;
	g = s->g;
	if (s->failed || s->copied != s->size || vp_data_size(d) != s->size) {
		stage_free(s);
		return;
	}
	s->d = vp_data_get(d);
	s->bound_at = vp_now();
	pthread_mutex_lock(&g->lock);
	s->next = g->staged;
	g->staged = s;
	pthread_mutex_unlock(&g->lock);
}

void vp_gpu_stage_abort(struct vp_gpu_stage *s)
{
	if (s)
		stage_free(s);
}

int vp_gpu_device(struct vp_gpu *g)
{
	return g->dev;
}

json_t *vp_gpu_status(struct vp_gpu *g)
{
	struct vp_gpu_stats st;

	vp_gpu_get_stats(g, &st);
	return json_pack("{s:s,s:s,s:i,s:o,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}",
			 "state", st.on ? "on" : "off",
			 "tier", g->ops->name,
			 "device", g->dev,
			 "name", vp_json_name(g->ops->device_name(g->t)),	/* the driver's bytes */
			 "budget", (json_int_t)st.budget,
			 "used", (json_int_t)st.used,
			 "files", (json_int_t)st.files,
			 "leased", (json_int_t)st.leased,
			 "mirrored", (json_int_t)st.mirrored,
			 "evicted", (json_int_t)st.evicted,
			 "failed", (json_int_t)st.failed,
			 "reads", (json_int_t)st.reads,
			 "read_bytes", (json_int_t)st.read_bytes,
			 "staged", (json_int_t)st.staged,
			 "staged_bytes", (json_int_t)st.staged_bytes,
			 "pinned_copies", (json_int_t)st.pinned_copies);
}
