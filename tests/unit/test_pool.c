/* Unit tests: chunk pool budget, backpressure and the token bucket. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "../../engine/pool.h"
#include "../../engine/tbucket.h"

#define CHUNK (1u << 20)

static int pressure_calls;

static void count_pressure(void *arg)
{
	(void)arg;
	__atomic_add_fetch(&pressure_calls, 1, __ATOMIC_RELAXED);
}

static void test_budget_and_enospc(void **state)
{
	struct vp_pool *pool = vp_pool_new(CHUNK, 4 * CHUNK, CHUNK);
	struct vp_pool_stats st;
	void *c[5];
	int err;

	(void)state;
	assert_non_null(pool);
	vp_pool_set_pressure_cb(pool, count_pressure, NULL);
	for (int i = 0; i < 4; i++) {
		c[i] = vp_pool_get_chunk(pool, 0, &err);
		assert_non_null(c[i]);
		memset(c[i], i, CHUNK);	/* memory is really there */
	}
	assert_int_equal(vp_pool_available(pool), 0);
	pressure_calls = 0;
	c[4] = vp_pool_get_chunk(pool, 0.05, &err);
	assert_null(c[4]);
	assert_int_equal(err, -ENOSPC);
	assert_true(pressure_calls >= 1);
	vp_pool_get_stats(pool, &st);
	assert_int_equal(st.used, 4 * CHUNK);
	assert_int_equal(st.enospc, 1);
	assert_int_equal(st.waits, 1);
	for (int i = 0; i < 4; i++)
		vp_pool_put_chunk(pool, c[i]);
	assert_int_equal(vp_pool_available(pool), 4 * CHUNK);
	vp_pool_free(pool);
}

struct releaser {
	struct vp_pool *pool;
	void *chunk;
};

static void *release_later(void *arg)
{
	struct releaser *r = arg;

	usleep(50 * 1000);
	vp_pool_put_chunk(r->pool, r->chunk);
	return NULL;
}

static void test_waiter_gets_freed_chunk(void **state)
{
	struct vp_pool *pool = vp_pool_new(CHUNK, 2 * CHUNK, 0);
	struct releaser r = { .pool = pool };
	pthread_t t;
	void *a, *b, *c;
	int err;

	(void)state;
	a = vp_pool_get_chunk(pool, 0, &err);
	b = vp_pool_get_chunk(pool, 0, &err);
	assert_non_null(a);
	assert_non_null(b);
	r.chunk = a;
	pthread_create(&t, NULL, release_later, &r);
	/* blocks until the other thread gives a chunk back */
	c = vp_pool_get_chunk(pool, 30, &err);
	pthread_join(t, NULL);
	assert_ptr_equal(c, a);
	vp_pool_put_chunk(pool, b);
	vp_pool_put_chunk(pool, c);
	vp_pool_free(pool);
}

static void test_bad_sizes(void **state)
{
	(void)state;
	assert_null(vp_pool_new(1000, 1 << 20, 0));	/* not page-sized */
	assert_null(vp_pool_new(CHUNK, CHUNK / 2, 0));	/* budget below a chunk */
}

static double fake_time;

static double fake_clock(void)
{
	return fake_time;
}

#define MAX_SEEN 8

struct slab_seen {
	struct vp_pool *pool;
	void *base[MAX_SEEN];
	size_t len[MAX_SEEN];
	int n;
};

/* A slab callback that calls into the pool: it runs with no pool lock held. */
static void note_slab(void *arg, void *base, size_t len)
{
	struct slab_seen *seen = arg;
	struct vp_pool_stats st;

	vp_pool_get_stats(seen->pool, &st);
	assert_true(seen->n < MAX_SEEN);
	seen->base[seen->n] = base;
	seen->len[seen->n] = len;
	seen->n++;
}

static int seen_holds(const struct slab_seen *seen, const void *mem)
{
	for (int i = 0; i < seen->n; i++)
		if ((const char *)mem >= (const char *)seen->base[i] &&
		    (const char *)mem < (const char *)seen->base[i] + seen->len[i])
			return 1;
	return 0;
}

static void test_slab_callbacks(void **state)
{
	struct vp_pool *pool = vp_pool_new(CHUNK, 128 * CHUNK, CHUNK);
	struct slab_seen a = { .pool = pool }, b = { .pool = pool };
	void *c[65], *extra;
	int err;

	(void)state;
	assert_non_null(pool);
	vp_pool_set_slab_cb(pool, note_slab, &a);	/* the prefaulted slab, now */
	assert_int_equal(a.n, 1);
	c[0] = vp_pool_get_chunk(pool, 0, &err);
	assert_non_null(c[0]);
	assert_true(seen_holds(&a, c[0]));
	for (int i = 1; i < 65; i++) {	/* a new slab, seen before its chunks are handed out */
		c[i] = vp_pool_get_chunk(pool, 0, &err);
		assert_non_null(c[i]);
		assert_true(seen_holds(&a, c[i]));
	}
	assert_int_equal(a.n, 2);
	vp_pool_set_slab_cb(pool, note_slab, &b);
	assert_int_equal(b.n, 2);
	vp_pool_set_slab_cb(pool, NULL, &a);		/* a hears of no more slabs */
	for (int i = 0; i < 65; i++)
		vp_pool_put_chunk(pool, c[i]);
	for (int i = 0; i < 65; i++)
		c[i] = vp_pool_get_chunk(pool, 0, &err);
	extra = vp_pool_get_chunk(pool, 0, &err);
	assert_non_null(extra);
	assert_true(seen_holds(&b, extra));
	assert_int_equal(a.n, 2);
	assert_int_equal(b.n, 3);
	vp_pool_set_slab_cb(pool, NULL, &b);
	vp_pool_put_chunk(pool, extra);
	for (int i = 0; i < 65; i++)
		vp_pool_put_chunk(pool, c[i]);
	vp_pool_free(pool);
}

static void test_tbucket(void **state)
{
	struct tbucket tb;

	(void)state;
	fake_time = 100;
	vp_tbucket_init(&tb, 1000, 500, fake_clock);
	assert_true(vp_tbucket_reserve(&tb, 500) == 0);	/* the burst */
	/* 1000 more bytes at 1000 B/s: one second of debt */
	assert_true(vp_tbucket_reserve(&tb, 1000) > 0.99);
	fake_time += 1.0;
	/* debt paid by the second that passed; 250 more is 0.25 s */
	{
		double w = vp_tbucket_reserve(&tb, 250);

		assert_true(w > 0.24 && w < 0.26);
	}
	fake_time += 10;	/* refill is capped at the burst */
	assert_true(vp_tbucket_reserve(&tb, 500) == 0);
	assert_true(vp_tbucket_reserve(&tb, 1) > 0);
	vp_tbucket_release(&tb);

	vp_tbucket_init(&tb, 0, 0, fake_clock);	/* unlimited */
	assert_true(vp_tbucket_reserve(&tb, 1ULL << 40) == 0);
	vp_tbucket_release(&tb);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_budget_and_enospc),
		cmocka_unit_test(test_waiter_gets_freed_chunk),
		cmocka_unit_test(test_bad_sizes),
		cmocka_unit_test(test_slab_callbacks),
		cmocka_unit_test(test_tbucket),
	};
	return cmocka_run_group_tests_name("pool", tests, NULL, NULL);
}
