/*
 * A fake GPU for the placement tests: behaves like a device allocator.
 *
 * - capacity: total bytes, and free = total - allocated (alloc past it is
 *   -ENOMEM, as cudaMalloc);
 * - asynchronous completion: copy_in only queues; a worker thread does the
 *   copy later, so data written before sync() is not yet on the "device";
 * - injected errors: no device at open, an allocation failure, a copy that
 *   fails (a device error, -EIO at sync);
 * - IPC handles that name the allocation.
 * Included by the unit tests (#include "fakes/tier_fake.c").
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../../engine/tier.h"

struct fake_copy {
	struct fake_copy *next;
	void *dst;
	void *src;		/* a private copy of the caller's bytes */
	size_t len;
	int fail;
};

static struct {
	uint64_t total, allocated;
	int no_device, fail_alloc, fail_copy, fail_pin;
	unsigned int allocs, copies;
	/* pin_host_ro: the range pinned now (one at a time), and the counts */
	const char *pin_base;
	size_t pin_len;
	unsigned int pins, unpins, pinned_copies;
} fake = { .total = 256ull << 20 };

struct vp_tier {
	pthread_mutex_t lock;
	pthread_cond_t cond, done;
	struct fake_copy *head, *tail;
	int busy, stop, error;
	pthread_t thread;
};

static void *fake_worker(void *arg)
{
	struct vp_tier *t = arg;

	pthread_mutex_lock(&t->lock);
	for (;;) {
		struct fake_copy *c;

		while (!t->head && !t->stop) {
			t->busy = 0;
			pthread_cond_broadcast(&t->done);
			pthread_cond_wait(&t->cond, &t->lock);
		}
		if (!t->head)
			break;
		c = t->head;
		t->head = c->next;
		if (!t->head)
			t->tail = NULL;
		t->busy = 1;
		pthread_mutex_unlock(&t->lock);
		usleep(200);		/* the "DMA" takes a while */
		if (c->fail)
			t->error = -EIO;
		else
			memcpy(c->dst, c->src, c->len);
		free(c->src);
		free(c);
		pthread_mutex_lock(&t->lock);
	}
	t->busy = 0;
	pthread_cond_broadcast(&t->done);
	pthread_mutex_unlock(&t->lock);
	return NULL;
}

static struct vp_tier *fake_open(int dev, char *why, size_t whylen)
{
	struct vp_tier *t;

	if (fake.no_device) {
		snprintf(why, whylen, "fake: no device %d", dev);
		return NULL;
	}
	t = calloc(1, sizeof(*t));
	pthread_mutex_init(&t->lock, NULL);
	pthread_cond_init(&t->cond, NULL);
	pthread_cond_init(&t->done, NULL);
	pthread_create(&t->thread, NULL, fake_worker, t);
	return t;
}

static void fake_close(struct vp_tier *t)
{
	pthread_mutex_lock(&t->lock);
	t->stop = 1;
	pthread_cond_broadcast(&t->cond);
	pthread_mutex_unlock(&t->lock);
	pthread_join(t->thread, NULL);
	pthread_mutex_destroy(&t->lock);
	pthread_cond_destroy(&t->cond);
	pthread_cond_destroy(&t->done);
	free(t);
}

static const char *fake_device_name(struct vp_tier *t)
{
	(void)t;
	return "fake device";
}

static int fake_mem_info(struct vp_tier *t, uint64_t *free_bytes, uint64_t *total)
{
	(void)t;
	*total = fake.total;
	*free_bytes = fake.total - __atomic_load_n(&fake.allocated, __ATOMIC_RELAXED);
	return 0;
}

/* Allocations carry their size in a header, like a device allocator's bookkeeping. */
static int fake_alloc(struct vp_tier *t, uint64_t size, void **mem)
{
	uint64_t *p;

	(void)t;
	if (fake.fail_alloc || size > fake.total - fake.allocated) {
		fake.fail_alloc = 0;
		return -ENOMEM;
	}
	p = malloc(size + 16);
	if (!p)
		return -ENOMEM;
	p[0] = size;
	__atomic_add_fetch(&fake.allocated, size, __ATOMIC_RELAXED);
	fake.allocs++;
	*mem = p + 2;
	return 0;
}

static void fake_free(struct vp_tier *t, void *mem)
{
	uint64_t *p = (uint64_t *)mem - 2;

	(void)t;
	__atomic_sub_fetch(&fake.allocated, p[0], __ATOMIC_RELAXED);
	free(p);
}

static int fake_copy_in(struct vp_tier *t, void *mem, uint64_t off, const void *src, size_t len)
{
	struct fake_copy *c = calloc(1, sizeof(*c));

	c->dst = (char *)mem + off;
	c->src = malloc(len ? len : 1);
	memcpy(c->src, src, len);
	c->len = len;
	c->fail = fake.fail_copy;
	fake.copies++;
	if (fake.pin_base && (const char *)src >= fake.pin_base &&
	    (const char *)src + len <= fake.pin_base + fake.pin_len)
		fake.pinned_copies++;
	pthread_mutex_lock(&t->lock);
	if (t->tail)
		t->tail->next = c;
	else
		t->head = c;
	t->tail = c;
	t->busy = 1;
	pthread_cond_signal(&t->cond);
	pthread_mutex_unlock(&t->lock);
	return 0;
}

static int fake_sync(struct vp_tier *t)
{
	int rc;

	pthread_mutex_lock(&t->lock);
	while (t->head || t->busy)
		pthread_cond_wait(&t->done, &t->lock);
	rc = t->error;
	t->error = 0;
	pthread_mutex_unlock(&t->lock);
	return rc;
}

static int fake_copy_out(struct vp_tier *t, void *dst, const void *mem, uint64_t off, size_t len)
{
	int rc = fake_sync(t);	/* reads see every copy queued before them */

	if (!rc && fake.fail_copy)
		rc = -EIO;
	if (!rc)
		memcpy(dst, (const char *)mem + off, len);
	return rc;
}

static int fake_export_ipc(struct vp_tier *t, void *mem, void *out)
{
	(void)t;
	memset(out, 0, VP_TIER_IPC_HANDLE);
	memcpy(out, &mem, sizeof(mem));
	return 0;
}

static int fake_pin_host_ro(struct vp_tier *t, const void *base, size_t len)
{
	(void)t;
	fake.pins++;
	if (fake.fail_pin)
		return -ENOTSUP;
	if (fake.pin_base)
		return -EBUSY;	/* the tests pin one range at a time */
	fake.pin_base = base;
	fake.pin_len = len;
	return 0;
}

static void fake_unpin_host(struct vp_tier *t, const void *base)
{
	int busy;

	pthread_mutex_lock(&t->lock);
	busy = t->head || t->busy;	/* a queued copy still reads the pinned pages */
	pthread_mutex_unlock(&t->lock);
	if (busy)
		fake.fail_copy = 1;	/* shows up as a device error */
	if (base == fake.pin_base)
		fake.pin_base = NULL;
	fake.unpins++;
}

static const struct vp_tier_ops fake_tier = {
	.name = "fake",
	.open = fake_open,
	.close = fake_close,
	.device_name = fake_device_name,
	.mem_info = fake_mem_info,
	.alloc = fake_alloc,
	.free = fake_free,
	.copy_in = fake_copy_in,
	.copy_out = fake_copy_out,
	.sync = fake_sync,
	.export_ipc = fake_export_ipc,
	.pin_host_ro = fake_pin_host_ro,
	.unpin_host = fake_unpin_host,
};
