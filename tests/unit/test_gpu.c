#define _GNU_SOURCE
/* Unit tests: the GPU tier's placement, on a fake device (tests/unit/fakes). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "../../engine/data.h"
#include "../../engine/gpu.h"
#include "../../engine/json.h"
#include "../../engine/pool.h"
#include "fakes/tier_fake.c"

#define CHUNK (1u << 20)
#define MiB (1ull << 20)

static struct vp_pool *pool;

static int setup(void **state)
{
	(void)state;
	pool = vp_pool_new(CHUNK, 64 * CHUNK, 0);
	memset(&fake, 0, sizeof(fake));
	fake.total = 1024 * MiB;
	return pool ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	vp_pool_free(pool);
	assert_int_equal(fake.allocated, 0);	/* every device allocation was freed */
	return 0;
}

/* A data of size bytes whose byte i is (i * 7 + seed) & 0xff. */
static struct vp_data *pattern(uint64_t size, unsigned int seed)
{
	struct vp_data *d = vp_data_new(pool);
	unsigned char *buf = malloc(size);

	for (uint64_t i = 0; i < size; i++)
		buf[i] = (unsigned char)(i * 7 + seed);
	assert_int_equal(vp_data_write(d, buf, size, 0, 0), (ssize_t)size);
	free(buf);
	return d;
}

static void assert_mirror(struct vp_gpu *g, uint64_t id, uint64_t version, uint64_t size,
			  unsigned int seed)
{
	unsigned char *buf = malloc(size);

	assert_int_equal(vp_gpu_read(g, id, version, buf, size, 0), (ssize_t)size);
	for (uint64_t i = 0; i < size; i++)
		if (buf[i] != (unsigned char)(i * 7 + seed))
			fail_msg("byte %llu differs", (unsigned long long)i);
	free(buf);
}

static struct vp_gpu *gpu(uint64_t budget)
{
	char why[256];
	struct vp_gpu *g = vp_gpu_new(&fake_tier, 0, budget, why, sizeof(why));

	assert_non_null(g);
	return g;
}

static void test_off_without_a_device(void **state)
{
	char why[256] = "";

	(void)state;
	fake.no_device = 1;
	assert_null(vp_gpu_new(&fake_tier, 3, 64 * MiB, why, sizeof(why)));
	assert_non_null(strstr(why, "no device 3"));
	assert_null(vp_gpu_new(NULL, 0, 64 * MiB, why, sizeof(why)));
	/* every entry point takes NULL: a mount without the tier */
	vp_gpu_mirror(NULL, 1, 1, NULL);
	vp_gpu_forget(NULL, 1);
	assert_int_equal(vp_gpu_read(NULL, 1, 1, why, 1, 0), -ENOENT);
}

static void test_newest_version_replaces_the_older(void **state)
{
	struct vp_gpu *g = gpu(64 * MiB);
	struct vp_data *v1 = pattern(3 * MiB + 5, 1), *v2 = pattern(2 * MiB + 1, 2);
	struct vp_gpu_stats st;

	(void)state;
	vp_gpu_mirror(g, 42, 1, v1);
	vp_gpu_drain(g);
	assert_mirror(g, 42, 1, 3 * MiB + 5, 1);
	vp_gpu_get_stats(g, &st);
	assert_int_equal(st.files, 1);
	assert_int_equal(st.used, 3 * MiB + 5);
	assert_int_equal(fake.allocated, 3 * MiB + 5);

	vp_gpu_mirror(g, 42, 2, v2);
	vp_gpu_drain(g);
	assert_mirror(g, 42, 2, 2 * MiB + 1, 2);
	assert_int_equal(vp_gpu_read(g, 42, 1, NULL, 1, 0), -ENOENT);	/* demoted */
	vp_gpu_get_stats(g, &st);
	assert_int_equal(st.files, 1);
	assert_int_equal(st.used, 2 * MiB + 1);
	assert_int_equal(fake.allocated, 2 * MiB + 1);
	/* an older version arriving late never replaces a newer one */
	vp_gpu_mirror(g, 42, 1, v1);
	vp_gpu_drain(g);
	assert_mirror(g, 42, 2, 2 * MiB + 1, 2);
	/* a partial read, at an offset, through the staging path */
	{
		unsigned char b[10];

		assert_int_equal(vp_gpu_read(g, 42, 2, b, 10, 2 * MiB - 4), 5);	/* cut at the end */
		for (int i = 0; i < 5; i++)
			assert_int_equal(b[i], (unsigned char)((2 * MiB - 4 + i) * 7 + 2));
	}
	vp_gpu_forget(g, 42);
	vp_gpu_drain(g);
	vp_gpu_get_stats(g, &st);
	assert_int_equal(st.files, 0);
	assert_int_equal(st.used, 0);
	vp_data_put(v1);
	vp_data_put(v2);
	vp_gpu_free(g);
}

static void test_budget_evicts_least_recently_used(void **state)
{
	struct vp_gpu *g = gpu(8 * MiB);
	struct vp_data *a = pattern(4 * MiB, 3), *b = pattern(3 * MiB, 4);
	struct vp_data *c = pattern(3 * MiB, 5), *big = pattern(9 * MiB, 6);
	unsigned char byte;
	struct vp_gpu_stats st;

	(void)state;
	vp_gpu_mirror(g, 1, 1, a);
	vp_gpu_drain(g);
	vp_gpu_mirror(g, 2, 1, b);
	vp_gpu_drain(g);
	assert_int_equal(vp_gpu_read(g, 1, 1, &byte, 1, 0), 1);	/* a is used again */
	vp_gpu_mirror(g, 3, 1, c);
	vp_gpu_drain(g);
	/* 4 + 3 + 3 > 8: b, the least recently used, went */
	assert_int_equal(vp_gpu_read(g, 2, 1, &byte, 1, 0), -ENOENT);
	assert_mirror(g, 1, 1, 4 * MiB, 3);
	assert_mirror(g, 3, 1, 3 * MiB, 5);
	/* bigger than the whole budget: not mirrored, nothing evicted for it */
	vp_gpu_mirror(g, 4, 1, big);
	vp_gpu_drain(g);
	vp_gpu_get_stats(g, &st);
	assert_int_equal(st.files, 2);
	assert_int_equal(st.evicted, 1);
	assert_true(st.failed >= 1);
	assert_true(st.used <= 8 * MiB);
	vp_data_put(a);
	vp_data_put(b);
	vp_data_put(c);
	vp_data_put(big);
	vp_gpu_free(g);
}

static void test_never_more_than_the_device_has_free(void **state)
{
	struct vp_gpu *g;
	struct vp_data *d = pattern(8 * MiB, 7);
	struct vp_gpu_stats st;

	(void)state;
	fake.total = 100 * MiB;			/* less than the budget asked for */
	g = gpu(1024 * MiB);
	vp_gpu_get_stats(g, &st);
	assert_true(st.budget <= 100 * MiB);
	/* another user takes the device's memory: the mirror is refused, not forced */
	fake.allocated = 95 * MiB;
	vp_gpu_mirror(g, 1, 1, d);
	vp_gpu_drain(g);
	vp_gpu_get_stats(g, &st);
	assert_int_equal(st.files, 0);
	assert_int_equal(st.used, 0);
	assert_true(st.on);			/* out of memory is not a device error */
	fake.allocated = 0;
	/* an allocation failure: skipped, the tier stays on */
	fake.fail_alloc = 1;
	vp_gpu_mirror(g, 1, 1, d);
	vp_gpu_drain(g);
	vp_gpu_get_stats(g, &st);
	assert_int_equal(st.files, 0);
	assert_true(st.on);
	vp_gpu_mirror(g, 1, 1, d);
	vp_gpu_drain(g);
	assert_mirror(g, 1, 1, 8 * MiB, 7);
	vp_data_put(d);
	vp_gpu_free(g);
}

static void test_device_error_turns_the_tier_off(void **state)
{
	struct vp_gpu *g = gpu(64 * MiB);
	struct vp_data *d = pattern(2 * MiB, 8);
	struct vp_gpu_stats st;

	(void)state;
	fake.fail_copy = 1;
	vp_gpu_mirror(g, 1, 1, d);
	vp_gpu_drain(g);
	fake.fail_copy = 0;
	vp_gpu_get_stats(g, &st);
	assert_false(st.on);
	assert_int_equal(st.files, 0);
	assert_int_equal(fake.allocated, 0);	/* the failed mirror was freed */
	vp_gpu_mirror(g, 1, 2, d);		/* ignored from now on */
	vp_gpu_drain(g);
	assert_int_equal(vp_gpu_read(g, 1, 2, NULL, 1, 0), -ENOENT);
	vp_data_put(d);
	vp_gpu_free(g);
}

static void test_a_lease_keeps_the_memory(void **state)
{
	struct vp_gpu *g = gpu(64 * MiB);
	struct vp_data *v1 = pattern(4 * MiB, 9), *v2 = pattern(4 * MiB, 10);
	unsigned char handle[VP_TIER_IPC_HANDLE];
	struct vp_gpu_lease *lease = NULL;
	uint64_t version = 0, size = 0;
	struct vp_gpu_stats st;
	void *mem;

	(void)state;
	assert_int_equal(vp_gpu_export(g, 5, handle, &version, &size, &lease), -ENOENT);
	vp_gpu_mirror(g, 5, 1, v1);
	vp_gpu_drain(g);
	assert_int_equal(vp_gpu_export(g, 5, handle, &version, &size, &lease), 0);
	assert_int_equal(version, 1);
	assert_int_equal(size, 4 * MiB);
	memcpy(&mem, handle, sizeof(mem));
	/* a version switch does not pull the memory from under the holder */
	vp_gpu_mirror(g, 5, 2, v2);
	vp_gpu_drain(g);
	vp_gpu_get_stats(g, &st);
	assert_int_equal(st.files, 1);
	assert_int_equal(st.leased, 1);
	assert_int_equal(st.used, 8 * MiB);
	assert_int_equal(((unsigned char *)mem)[100], (unsigned char)(100 * 7 + 9));
	/* the forget of a leased file also waits for the lease */
	vp_gpu_lease_release(g, lease);
	vp_gpu_get_stats(g, &st);
	assert_int_equal(st.used, 4 * MiB);
	assert_int_equal(st.leased, 0);
	assert_int_equal(fake.allocated, 4 * MiB);
	vp_data_put(v1);
	vp_data_put(v2);
	vp_gpu_free(g);
}

static void test_latest_queued_request_wins(void **state)
{
	struct vp_gpu *g = gpu(64 * MiB);
	struct vp_data *v[5];
	struct vp_gpu_stats st;

	(void)state;
	for (int i = 0; i < 5; i++)
		v[i] = pattern(MiB, 20 + i);
	for (int i = 0; i < 5; i++)
		vp_gpu_mirror(g, 9, i + 1, v[i]);
	vp_gpu_drain(g);
	assert_mirror(g, 9, 5, MiB, 24);
	vp_gpu_get_stats(g, &st);
	assert_int_equal(st.files, 1);
	assert_true(st.mirrored <= 5);
	for (int i = 0; i < 5; i++)
		vp_data_put(v[i]);
	vp_gpu_free(g);
}

/* A consumer stages a version chunk by chunk while it arrives; its mirror takes it without a copy. */
static void test_staged_version_is_mirrored_without_a_copy(void **state)
{
	struct vp_gpu *g = gpu(64 * MiB);
	uint64_t size = 3 * MiB + 5;
	struct vp_data *d = pattern(size, 5), *e = pattern(2 * MiB, 6);
	unsigned char *bytes = malloc(size);
	struct vp_gpu_stage *s;
	struct vp_gpu_stats st;
	unsigned int copies;

	(void)state;
	for (uint64_t i = 0; i < size; i++)
		bytes[i] = (unsigned char)(i * 7 + 5);
	s = vp_gpu_stage_begin(g, size);
	assert_non_null(s);
	vp_gpu_get_stats(g, &st);
	assert_int_equal(st.used, size);	/* reserved while the bytes arrive */
	/* out of order, as RMA reads complete */
	vp_gpu_stage_copy(s, 2 * MiB, bytes + 2 * MiB, MiB + 5);
	vp_gpu_stage_copy(s, 0, bytes, MiB);
	vp_gpu_stage_copy(s, MiB, bytes + MiB, MiB);
	memset(bytes, 0, size);			/* the source is the caller's again */
	copies = fake.copies;
	vp_gpu_stage_bind(s, d);
	vp_gpu_mirror(g, 7, 1, d);
	vp_gpu_drain(g);
	assert_int_equal(fake.copies, copies);	/* taken, not copied again */
	assert_mirror(g, 7, 1, size, 5);
	vp_gpu_get_stats(g, &st);
	assert_int_equal(st.staged, 1);
	assert_int_equal(st.staged_bytes, size);
	assert_int_equal(st.used, size);
	assert_int_equal(fake.allocated, size);

	/* an incomplete stage is dropped at bind: the mirror copies as usual */
	s = vp_gpu_stage_begin(g, 2 * MiB);
	assert_non_null(s);
	vp_gpu_stage_copy(s, 0, bytes, MiB);
	vp_gpu_stage_bind(s, e);
	vp_gpu_mirror(g, 8, 1, e);
	vp_gpu_drain(g);
	assert_mirror(g, 8, 1, 2 * MiB, 6);
	vp_gpu_get_stats(g, &st);
	assert_int_equal(st.staged, 1);
	assert_int_equal(st.used, size + 2 * MiB);

	/* a failed transfer gives the memory back; a stage past the budget is refused */
	s = vp_gpu_stage_begin(g, MiB);
	assert_non_null(s);
	vp_gpu_stage_abort(s);
	assert_null(vp_gpu_stage_begin(g, 65 * MiB));
	fake.fail_copy = 1;
	s = vp_gpu_stage_begin(g, MiB);
	assert_non_null(s);
	vp_gpu_stage_copy(s, 0, bytes, MiB);	/* the device fails: the stage is dropped at bind */
	vp_gpu_stage_bind(s, e);
	fake.fail_copy = 0;
	vp_gpu_get_stats(g, &st);
	assert_int_equal(st.used, size + 2 * MiB);
	assert_int_equal(st.on, 0);		/* and the tier turns itself off */
	assert_null(vp_gpu_stage_begin(g, MiB));
	assert_null(vp_gpu_stage_begin(NULL, MiB));
	vp_gpu_stage_copy(NULL, 0, bytes, 1);
	vp_gpu_stage_bind(NULL, d);
	vp_gpu_stage_abort(NULL);
	free(bytes);
	vp_data_put(d);
	vp_data_put(e);
	vp_gpu_free(g);
}

/*
 * GPU-direct: the fabric writes a version's bytes straight into a stage's
 * memory (here: the fake device is host memory, so memcpy stands in for
 * the NIC); landed copies them on to the host cache.  A producer holds
 * a complete mirror while consumers read it, across a version switch.
 */
static void test_gpu_direct_stage_and_hold(void **state)
{
	struct vp_gpu *g = gpu(64 * MiB);
	uint64_t size = 2 * MiB + 3, msize = 0;
	struct vp_data *d = pattern(size, 11), *d2 = pattern(MiB, 12);
	unsigned char *bytes = malloc(size), *host = calloc(1, size);
	struct vp_gpu_lease *lease;
	struct vp_gpu_stage *s;
	struct vp_gpu_stats st;
	char *mem;
	void *dev;

	(void)state;
	assert_int_equal(vp_gpu_cuda_device(g), -1);	/* the fake's memory is host memory */
	assert_int_equal(vp_gpu_cuda_device(NULL), -1);
	for (uint64_t i = 0; i < size; i++)
		bytes[i] = (unsigned char)(i * 7 + 11);
	s = vp_gpu_stage_begin(g, size);
	assert_non_null(s);
	assert_int_equal(vp_gpu_stage_size(s), size);
	mem = vp_gpu_stage_mem(s);
	assert_non_null(mem);
	/* out of order, as the reads complete */
	memcpy(mem + MiB, bytes + MiB, MiB + 3);
	assert_int_equal(vp_gpu_stage_landed(s, MiB, host + MiB, MiB + 3), 0);
	memcpy(mem, bytes, MiB);
	assert_int_equal(vp_gpu_stage_landed(s, 0, host, MiB), 0);
	assert_memory_equal(host, bytes, size);		/* on to the host cache */
	vp_gpu_stage_bind(s, d);
	vp_gpu_mirror(g, 7, 1, d);
	vp_gpu_drain(g);
	assert_mirror(g, 7, 1, size, 11);
	vp_gpu_get_stats(g, &st);
	assert_int_equal(st.staged, 1);		/* the landed bytes count as staged */
	assert_int_equal(st.staged_bytes, size);

	/* a producer serves the mirror: only that version, held across a switch */
	assert_null(vp_gpu_hold(g, 7, 2, &dev, &msize));
	assert_null(vp_gpu_hold(g, 8, 1, &dev, &msize));
	assert_null(vp_gpu_hold(NULL, 7, 1, &dev, &msize));
	lease = vp_gpu_hold(g, 7, 1, &dev, &msize);
	assert_non_null(lease);
	assert_int_equal(msize, size);
	vp_gpu_mirror(g, 7, 2, d2);
	vp_gpu_drain(g);
	vp_gpu_get_stats(g, &st);
	assert_int_equal(st.used, size + MiB);
	assert_int_equal(st.leased, 1);
	assert_memory_equal(dev, bytes, size);		/* still there for the readers */
	vp_gpu_lease_release(g, lease);
	vp_gpu_get_stats(g, &st);
	assert_int_equal(st.used, MiB);

	/* past the end: the stage fails, bind drops it */
	s = vp_gpu_stage_begin(g, MiB);
	assert_int_equal(vp_gpu_stage_landed(s, MiB - 1, host, 2), -EINVAL);
	assert_int_equal(vp_gpu_stage_landed(s, 0, host, 1), -EIO);
	vp_gpu_stage_abort(s);
	/* a read that timed out may still land: the memory stays until the end */
	s = vp_gpu_stage_begin(g, 4 * MiB);
	assert_non_null(s);
	vp_gpu_stage_quarantine(s);
	vp_gpu_get_stats(g, &st);
	assert_int_equal(st.used, 5 * MiB);
	assert_int_equal(fake.allocated, 5 * MiB);
	/* a device error in the copy to the host turns the tier off */
	s = vp_gpu_stage_begin(g, MiB);
	assert_non_null(s);
	fake.fail_copy = 1;
	assert_int_equal(vp_gpu_stage_landed(s, 0, host, MiB), -EIO);
	fake.fail_copy = 0;
	vp_gpu_stage_abort(s);
	vp_gpu_get_stats(g, &st);
	assert_int_equal(st.on, 0);
	assert_null(vp_gpu_hold(g, 7, 2, &dev, &msize));
	assert_null(vp_gpu_stage_mem(NULL));
	vp_gpu_stage_quarantine(NULL);
	free(bytes);
	free(host);
	vp_data_put(d);
	vp_data_put(d2);
	vp_gpu_free(g);		/* frees the quarantined stage too (teardown checks) */
}

/* The tier's part of status: its keys, in order, with integer counts. */
static void test_status_object(void **state)
{
	struct vp_gpu *g = gpu(64 * MiB);
	struct vp_data *v1 = pattern(MiB + 3, 7);
	json_t *st;
	char *text, want[512];

	(void)state;
	vp_gpu_mirror(g, 5, 1, v1);
	vp_gpu_drain(g);
	st = vp_gpu_status(g);
	assert_non_null(st);
	assert_string_equal(json_string_value(json_object_get(st, "state")), "on");
	assert_true(json_is_integer(json_object_get(st, "used")));
	assert_int_equal(json_integer_value(json_object_get(st, "used")), MiB + 3);
	json_incref(st);
	text = vp_json_line(st);
	assert_non_null(text);
	snprintf(want, sizeof(want),
		 "{\"state\":\"on\",\"tier\":\"%s\",\"device\":0,\"name\":\"fake device\","
		 "\"budget\":%llu,\"used\":%llu,\"files\":1,\"leased\":0,\"mirrored\":1,"
		 "\"evicted\":0,\"failed\":0,\"reads\":0,\"read_bytes\":0,\"staged\":0,"
		 "\"staged_bytes\":0,\"pinned_copies\":0}\n", fake_tier.name, 64 * MiB, MiB + 3);
	assert_string_equal(text, want);
	free(text);
	json_decref(st);
	vp_data_put(v1);
	vp_gpu_free(g);
}

/* A data of size bytes in a sealed memory file, byte i (i * 7 + seed) & 0xff. */
static struct vp_data *sealed_pattern(uint64_t size, unsigned int seed)
{
	unsigned char *buf = malloc(size);
	struct vp_data *d;
	int err;

	d = vp_data_new_mfile(pool, &err);
	assert_non_null(d);
	for (uint64_t i = 0; i < size; i++)
		buf[i] = (unsigned char)(i * 7 + seed);
	assert_int_equal(vp_data_write(d, buf, size, 0, 0), (ssize_t)size);
	free(buf);
	vp_data_seal(d);
	return d;
}

/*
 * A version in a sealed memory file goes to the device straight from its
 * mapping, pinned for the copy and unpinned once the copy is done; where
 * the device cannot pin it, through staging as before, with the same bytes.
 */
static void test_a_sealed_version_is_pinned_for_its_copy(void **state)
{
	struct vp_gpu *g = gpu(64 * MiB);
	struct vp_data *v = sealed_pattern(3 * MiB + 5, 3), *c = pattern(MiB, 4);
	struct vp_gpu_stats st;
	uint64_t len = 0;
	const void *map = vp_data_sealed_map(v, &len);

	(void)state;
	assert_non_null(map);
	assert_int_equal(len, 3 * MiB + 5);
	assert_null(vp_data_sealed_map(c, &len));	/* chunks: nothing to pin */
	vp_gpu_mirror(g, 7, 1, v);
	vp_gpu_drain(g);
	assert_mirror(g, 7, 1, 3 * MiB + 5, 3);
	assert_int_equal(fake.pins, 1);
	assert_int_equal(fake.unpins, 1);
	assert_null(fake.pin_base);		/* unpinned after the copy */
	assert_true(fake.pinned_copies >= 1);
	assert_int_equal(fake.pinned_copies, fake.copies);
	vp_gpu_get_stats(g, &st);
	assert_int_equal(st.pinned_copies, 1);
	assert_int_equal(st.failed, 0);

	/* a chunked version is never pinned */
	vp_gpu_mirror(g, 8, 1, c);
	vp_gpu_drain(g);
	assert_mirror(g, 8, 1, MiB, 4);
	assert_int_equal(fake.pins, 1);

	/* the device refuses: staging, the same bytes, no unpin */
	fake.fail_pin = 1;
	vp_gpu_forget(g, 7);
	vp_gpu_drain(g);
	vp_gpu_mirror(g, 7, 2, v);
	vp_gpu_drain(g);
	assert_mirror(g, 7, 2, 3 * MiB + 5, 3);
	assert_int_equal(fake.pins, 2);
	assert_int_equal(fake.unpins, 1);
	vp_gpu_get_stats(g, &st);
	assert_int_equal(st.pinned_copies, 1);
	vp_gpu_forget(g, 7);
	vp_gpu_forget(g, 8);
	vp_gpu_drain(g);
	vp_data_put(v);
	vp_data_put(c);
	vp_gpu_free(g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_off_without_a_device, setup, teardown),
		cmocka_unit_test_setup_teardown(test_newest_version_replaces_the_older, setup, teardown),
		cmocka_unit_test_setup_teardown(test_budget_evicts_least_recently_used, setup, teardown),
		cmocka_unit_test_setup_teardown(test_never_more_than_the_device_has_free, setup, teardown),
		cmocka_unit_test_setup_teardown(test_device_error_turns_the_tier_off, setup, teardown),
		cmocka_unit_test_setup_teardown(test_a_lease_keeps_the_memory, setup, teardown),
		cmocka_unit_test_setup_teardown(test_latest_queued_request_wins, setup, teardown),
		cmocka_unit_test_setup_teardown(test_staged_version_is_mirrored_without_a_copy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_gpu_direct_stage_and_hold, setup, teardown),
		cmocka_unit_test_setup_teardown(test_status_object, setup, teardown),
		cmocka_unit_test_setup_teardown(test_a_sealed_version_is_pinned_for_its_copy, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
