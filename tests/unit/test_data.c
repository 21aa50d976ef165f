/* Unit tests: chunked version data, holes, truncate, copy-on-write; memory files. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../engine/data.h"
#include "../../engine/mfile.h"
#include "../../engine/pool.h"

#define CHUNK (1u << 20)

static int setup(void **state)
{
	*state = vp_pool_new(CHUNK, 64 * CHUNK, 0);
	return *state ? 0 : -1;
}

static int teardown(void **state)
{
	struct vp_pool *pool = *state;
	struct vp_pool_stats st;

	vp_pool_get_stats(pool, &st);
	assert_int_equal(st.used, 0);	/* every chunk came back */
	vp_pool_free(pool);
	return 0;
}

static void fill(char *buf, size_t len, unsigned int seed)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (char)((i * 31 + seed) & 0xff);
}

static void test_write_read_across_chunks(void **state)
{
	struct vp_data *d = vp_data_new(*state);
	size_t len = 3 * CHUNK + 12345;
	char *in = malloc(len), *out = malloc(len);

	fill(in, len, 7);
	/* an unaligned write spanning four chunks */
	assert_int_equal(vp_data_write(d, in, len, 1000, 0), (ssize_t)len);
	assert_int_equal(vp_data_size(d), len + 1000);
	assert_int_equal(vp_data_pread(d, out, len, 1000), (ssize_t)len);
	assert_memory_equal(in, out, len);
	/* the first 1000 bytes are a hole: zeros */
	assert_int_equal(vp_data_pread(d, out, 1000, 0), 1000);
	for (int i = 0; i < 1000; i++)
		assert_int_equal(out[i], 0);
	/* reads past EOF are empty, reads across it short */
	assert_int_equal(vp_data_pread(d, out, 10, len + 1000), 0);
	assert_int_equal(vp_data_pread(d, out, 100, len + 950), 50);
	vp_data_put(d);
	free(in);
	free(out);
}

static void test_holes_and_overwrite(void **state)
{
	struct vp_data *d = vp_data_new(*state);
	char buf[4096], out[4096];

	memset(buf, 'a', sizeof(buf));
	/* write far out: everything before is a hole that holds no memory */
	assert_int_equal(vp_data_write(d, buf, 10, 20ULL * CHUNK, 0), 10);
	assert_int_equal(vp_data_size(d), 20ULL * CHUNK + 10);
	assert_int_equal(vp_data_resident(d), CHUNK);
	assert_int_equal(vp_data_pread(d, out, 4096, 5ULL * CHUNK), 4096);
	for (int i = 0; i < 4096; i++)
		assert_int_equal(out[i], 0);
	/* positional overwrite in the middle of written bytes */
	memset(buf, 'b', 4);
	assert_int_equal(vp_data_write(d, buf, 4, 20ULL * CHUNK + 3, 0), 4);
	assert_int_equal(vp_data_pread(d, out, 10, 20ULL * CHUNK), 10);
	assert_memory_equal(out, "aaabbbbaaa", 10);
	vp_data_put(d);
}

static void test_truncate_then_grow_reads_zeros(void **state)
{
	struct vp_data *d = vp_data_new(*state);
	char buf[8192], out[8192];

	memset(buf, 'x', sizeof(buf));
	assert_int_equal(vp_data_write(d, buf, sizeof(buf), 0, 0), sizeof(buf));
	assert_int_equal(vp_data_truncate(d, 100, 0), 0);
	assert_int_equal(vp_data_size(d), 100);
	assert_int_equal(vp_data_truncate(d, 8192, 0), 0);
	assert_int_equal(vp_data_pread(d, out, 8192, 0), 8192);
	for (int i = 0; i < 100; i++)
		assert_int_equal(out[i], 'x');
	for (int i = 100; i < 8192; i++)
		assert_int_equal(out[i], 0);
	assert_int_equal(vp_data_truncate(d, 0, 0), 0);
	assert_int_equal(vp_data_resident(d), 0);
	vp_data_put(d);
}

static void test_clone_is_copy_on_write(void **state)
{
	struct vp_data *a = vp_data_new(*state), *b;
	char buf[100], out[100];
	uint64_t sa, sb, sa2;

	memset(buf, '1', sizeof(buf));
	vp_data_write(a, buf, sizeof(buf), 0, 0);
	assert_int_equal(vp_data_chunk_hashes(a, &sa, 1), 0);
	b = vp_data_clone(a);
	assert_non_null(b);
	memset(buf, '2', 10);
	assert_int_equal(vp_data_write(b, buf, 10, 50, 0), 10);
	/* the original is untouched */
	assert_int_equal(vp_data_pread(a, out, 100, 0), 100);
	for (int i = 0; i < 100; i++)
		assert_int_equal(out[i], '1');
	assert_int_equal(vp_data_chunk_hashes(a, &sa2, 1), 0);
	assert_int_equal(vp_data_chunk_hashes(b, &sb, 1), 0);
	assert_true(sa == sa2);
	assert_true(sa != sb);
	vp_data_put(a);
	/* b now owns its chunk alone: a write in place must drop the cached hash */
	assert_int_equal(vp_data_write(b, "3", 1, 0, 0), 1);
	assert_int_equal(vp_data_chunk_hashes(b, &sa2, 1), 0);
	assert_true(sa2 != sb);
	assert_int_equal(vp_data_pread(b, out, 100, 0), 100);
	assert_int_equal(out[55], '2');
	vp_data_put(b);
}

static void test_reader_keeps_chunk_while_writer_changes_it(void **state)
{
	struct vp_data *d = vp_data_new(*state);
	struct vp_read rd;
	char buf[64];

	memset(buf, 'o', sizeof(buf));
	vp_data_write(d, buf, sizeof(buf), 0, 0);
	assert_int_equal(vp_data_read(d, 0, 64, &rd), 64);
	memset(buf, 'n', sizeof(buf));
	vp_data_write(d, buf, sizeof(buf), 0, 0);	/* must copy, not scribble */
	assert_int_equal(((const char *)rd.seg[0].ptr)[0], 'o');
	vp_read_release(&rd);
	assert_int_equal(vp_data_pread(d, buf, 1, 0), 1);
	assert_int_equal(buf[0], 'n');
	vp_data_put(d);
}

static void test_backed_data_reads_file_lazily(void **state)
{
	char path[] = "/tmp/vp-test-backed-XXXXXX";
	int fd = mkstemp(path);
	size_t len = 2 * CHUNK + 77;
	char *in = malloc(len), *out = malloc(len);
	struct vp_data *d, *w;

	fill(in, len, 3);
	assert_int_equal(write(fd, in, len), (ssize_t)len);
	d = vp_data_new_backed(*state, fd, len);
	assert_int_equal(vp_data_resident(d), 0);
	assert_false(vp_data_fully_resident(d));
	assert_int_equal(vp_data_pread(d, out, len, 0), (ssize_t)len);
	assert_memory_equal(in, out, len);
	assert_true(vp_data_fully_resident(d));	/* cached on first read */

	/* a working copy edits one byte; the rest still comes from the file */
	w = vp_data_clone(d);
	vp_data_put(d);
	assert_int_equal(vp_data_write(w, "Z", 1, CHUNK + 5, 0), 1);
	in[CHUNK + 5] = 'Z';
	/* truncating below the file's end and growing reads zeros, not file bytes */
	assert_int_equal(vp_data_truncate(w, CHUNK + 10, 0), 0);
	assert_int_equal(vp_data_truncate(w, len, 0), 0);
	memset(in + CHUNK + 10, 0, len - CHUNK - 10);
	assert_int_equal(vp_data_pread(w, out, len, 0), (ssize_t)len);
	assert_memory_equal(in, out, len);
	vp_data_put(w);
	unlink(path);
	free(in);
	free(out);
}

static void test_write_blocks_then_enospc(void **state)
{
	struct vp_pool *small = vp_pool_new(CHUNK, 2 * CHUNK, 0);
	struct vp_data *d = vp_data_new(small);
	char *buf = calloc(1, 3 * CHUNK);
	struct vp_pool_stats st;

	(void)state;
	/* two chunks fit; the third waits 50 ms and gives up */
	assert_int_equal(vp_data_write(d, buf, 3 * CHUNK, 0, 0.05), 2 * CHUNK);
	assert_int_equal(vp_data_write(d, buf, CHUNK, 2 * CHUNK, 0.05), -ENOSPC);
	/* what was written is intact */
	assert_int_equal(vp_data_size(d), 2 * CHUNK);
	vp_pool_get_stats(small, &st);
	assert_int_equal(st.enospc, 2);
	vp_data_put(d);
	vp_pool_free(small);
	free(buf);
}


/* A memory file: written, sealed by a clone, copied on the next write; the clone keeps its bytes. */
static void test_mfile_seal_on_clone_then_copy_on_write(void **state)
{
	struct vp_pool *pool = *state;
	size_t len = 3 * CHUNK + 777;
	char *buf = malloc(len), *out = malloc(len);
	struct vp_data *work, *v1;
	struct vp_pool_stats st;
	int err, fd;

	fill(buf, len, 7);
	work = vp_data_new_mfile(pool, &err);
	assert_non_null(work);
	assert_int_equal(vp_data_write(work, buf, len, 0, 0), (ssize_t)len);
	assert_int_equal(vp_data_fd(work), -1);		/* not sealed: no passthrough yet */
	v1 = vp_data_clone(work);			/* the commit */
	fd = vp_data_fd(v1);
	assert_true(fd >= 0);
	assert_int_equal(fcntl(fd, F_GET_SEALS) & (F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW),
			 F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW);
	/* the allocation ahead went back: the budget holds the file's pages */
	vp_pool_get_stats(pool, &st);
	assert_int_equal(st.charged, (len + 4095) & ~4095ULL);
	/* the writer goes on: its own copy, the version stays */
	assert_int_equal(vp_data_write(work, "XY", 2, CHUNK, 0), 2);
	assert_int_equal(vp_data_pread(v1, out, len, 0), (ssize_t)len);
	assert_memory_equal(out, buf, len);
	assert_int_equal(vp_data_pread(work, out, 2, CHUNK), 2);
	assert_memory_equal(out, "XY", 2);
	assert_int_equal(vp_data_pread(work, out, 100, 0), 100);
	assert_memory_equal(out, buf, 100);
	vp_data_put(work);
	vp_data_put(v1);
	free(buf);
	free(out);
}

/* The seal is the kernel's: a write through the version's own memfd fails too. */
static void test_mfile_sealed_write_fails_loudly(void **state)
{
	struct vp_pool *pool = *state;
	struct vp_mfile *mf;
	int err;

	mf = vp_mfile_new(pool, &err);
	assert_non_null(mf);
	assert_int_equal(vp_mfile_pwrite(mf, "abc", 3, 0, 0), 3);
	assert_int_equal(vp_mfile_seal(mf), 0);
	assert_int_equal(vp_mfile_pwrite(mf, "zzz", 3, 0, 0), -EPERM);
	assert_int_equal(vp_mfile_fallocate(mf, 0, 4096, 0, 0), -EPERM);
	assert_int_equal(pwrite(mf->fd, "zzz", 3, 0), -1);	/* past our own check, the kernel's */
	assert_int_equal(errno, EPERM);
	assert_int_equal(ftruncate(mf->fd, 1), -1);
	vp_mfile_put(mf);
}

/* Memory files are charged to the budget, and a full one refuses with ENOSPC. */
static void test_mfile_charged_to_the_budget(void **state)
{
	struct vp_pool *pool = vp_pool_new(CHUNK, 16 * CHUNK, 0);
	char *buf = calloc(1, 20 * CHUNK);
	struct vp_data *d;
	int err;

	(void)state;
	d = vp_data_new_mfile(pool, &err);
	assert_non_null(d);
	assert_int_equal(vp_data_write(d, buf, 8 * CHUNK, 0, 0), (ssize_t)(8 * CHUNK));
	assert_true(vp_pool_available(pool) <= 8 * CHUNK);
	assert_int_equal(vp_data_write(d, buf, 12 * CHUNK, 8 * CHUNK, 0), -ENOSPC);
	assert_int_equal(vp_data_truncate(d, CHUNK, 0), 0);	/* a cut gives pages back */
	assert_true(vp_pool_available(pool) >= 15 * CHUNK);
	vp_data_put(d);
	assert_int_equal(vp_pool_available(pool), 16 * CHUNK);
	vp_pool_free(pool);
	free(buf);
}

/*
 * fallocate: mode 0 grows the file with zeros and charges its pages;
 * KEEP_SIZE charges without growing, and the seal gives those pages back;
 * past the budget, -ENOSPC and the file as it was.
 */
static void test_mfile_fallocate_reserves(void **state)
{
	struct vp_pool *pool = vp_pool_new(CHUNK, 16 * CHUNK, 0);
	struct vp_data *d, *v;
	char out[8];
	int err;

	(void)state;
	d = vp_data_new_mfile(pool, &err);
	assert_non_null(d);
	assert_int_equal(vp_data_write(d, "head", 4, 0, 0), 4);
	assert_int_equal(vp_data_fallocate(d, 0, 4 * CHUNK, 0, 0), 0);
	assert_int_equal(vp_data_size(d), 4 * CHUNK);
	assert_int_equal(vp_data_pread(d, out, 8, 0), 8);
	assert_memory_equal(out, "head\0\0\0\0", 8);
	assert_true(vp_pool_available(pool) <= 12 * CHUNK);
	assert_int_equal(vp_data_fallocate(d, 4 * CHUNK, 4 * CHUNK, 1, 0), 0);
	assert_int_equal(vp_data_size(d), 4 * CHUNK);		/* kept */
	assert_true(vp_pool_available(pool) <= 8 * CHUNK);	/* but charged */
	assert_int_equal(vp_data_fallocate(d, 0, 32 * CHUNK, 0, 0), -ENOSPC);
	assert_int_equal(vp_data_size(d), 4 * CHUNK);
	v = vp_data_clone(d);					/* the commit seals */
	vp_data_put(d);
	assert_true(vp_pool_available(pool) >= 12 * CHUNK);	/* the pages past the end went */
	vp_data_put(v);
	assert_int_equal(vp_pool_available(pool), 16 * CHUNK);
	vp_pool_free(pool);
}

/*
 * The spare: made ahead and charged, taken by the next memory file (its
 * pages are there), the pages a version does not fill freed at its seal,
 * and made again.
 */
static void test_spare_taken_then_tail_freed_at_seal(void **state)
{
	struct vp_pool *pool = vp_pool_new(CHUNK, 32 * CHUNK, 0);
	struct vp_mspare *sp = vp_mspare_new(pool, 4 * CHUNK, 0);
	struct vp_mspare_stats st;
	struct vp_mfile *mf;
	struct stat sb;
	int err;

	(void)state;
	assert_non_null(sp);
	assert_true(vp_mspare_wait_ready(sp, 30));
	vp_mspare_get_stats(sp, &st);
	assert_int_equal(st.ready, 4 * CHUNK);
	assert_int_equal(vp_pool_available(pool), 28 * CHUNK);	/* charged like any memory file */
	mf = vp_mfile_new(pool, &err);
	assert_non_null(mf);
	assert_int_equal(fstat(mf->fd, &sb), 0);
	assert_true((uint64_t)sb.st_blocks * 512 >= 4 * CHUNK);	/* its pages are there */
	assert_int_equal(sb.st_size, 0);
	assert_int_equal(vp_mfile_pwrite(mf, "abc", 3, 8192, 0), 3);
	assert_int_equal(vp_mfile_seal(mf), 0);
	assert_int_equal(fstat(mf->fd, &sb), 0);
	assert_int_equal(sb.st_size, 8195);
	assert_true((uint64_t)sb.st_blocks * 512 <= 3 * 4096);	/* the rest went back */
	assert_int_equal(mf->alloc, 3 * 4096);
	assert_true(vp_mspare_wait_ready(sp, 30));		/* and a new one is made */
	vp_mspare_get_stats(sp, &st);
	assert_int_equal(st.made, 2);
	assert_int_equal(st.taken, 1);
	assert_int_equal(vp_pool_available(pool), 28 * CHUNK - 3 * 4096);
	vp_mfile_put(mf);
	vp_mspare_free(sp);
	assert_int_equal(vp_pool_available(pool), 32 * CHUNK);
	vp_pool_free(pool);
}

/* A write that needs the spare's memory gets it, even with no wait. */
static void test_spare_gives_way_to_a_write(void **state)
{
	struct vp_pool *pool = vp_pool_new(CHUNK, 16 * CHUNK, 0);
	struct vp_mspare *sp = vp_mspare_new(pool, 4 * CHUNK, 0);
	char *buf = calloc(1, 14 * CHUNK);
	struct vp_mspare_stats st;
	struct vp_mfile *mf;
	int err;

	(void)state;
	assert_true(vp_mspare_wait_ready(sp, 30));
	mf = vp_mfile_new(pool, &err);		/* takes it */
	assert_non_null(mf);
	assert_true(vp_mspare_wait_ready(sp, 30));	/* a second one: 8 of 16 chunks held */
	assert_int_equal(vp_pool_available(pool), 8 * CHUNK);
	assert_int_equal(vp_mfile_pwrite(mf, buf, 14 * CHUNK, 0, 0), (ssize_t)(14 * CHUNK));
	vp_mspare_get_stats(sp, &st);
	assert_int_equal(st.ready, 0);
	assert_int_equal(vp_pool_available(pool), 2 * CHUNK);
	vp_mfile_put(mf);
	vp_mspare_free(sp);
	assert_int_equal(vp_pool_available(pool), 16 * CHUNK);
	vp_pool_free(pool);
	free(buf);
}

/* A sealed copy of chunks is byte-exact, and chunk memory and hashes agree with the chunks'. */
/*
 * A landing: bytes stored through the writable mapping (as the fabric's
 * reads do) at their offsets, a hole punched out, the size cut inside a
 * page; at the finish the same address reads the same bytes, read-only,
 * the file is sealed (writes refused by the kernel), its pages charged
 * once, and a data made of it reads them.  Past the budget, -ENOSPC.
 */
static void test_mfile_landing_becomes_the_sealed_version(void **state)
{
	struct vp_pool *pool = vp_pool_new(CHUNK, 16 * CHUNK, 0);
	size_t size = 3 * CHUNK + 777;
	char *buf = malloc(4 * CHUNK), *base, out[16];
	struct vp_mfile *mf;
	struct vp_data *d;
	int err, seals;

	(void)state;
	fill(buf, 4 * CHUNK, 9);
	mf = vp_mfile_new(pool, &err);
	assert_non_null(mf);
	base = vp_mfile_land_map(mf, 4 * CHUNK, &err);
	assert_non_null(base);
	assert_int_equal(vp_mfile_land_grow(mf, 17 * CHUNK, 0), -EINVAL);	/* past the reserve */
	assert_int_equal(vp_mfile_land_grow(mf, 4 * CHUNK, 0), 0);		/* a preview's, larger */
	memcpy(base, buf, 4 * CHUNK);
	assert_int_equal(vp_mfile_land_zero(mf, CHUNK, CHUNK), 0);		/* a hole now */
	assert_int_equal(vp_mfile_land_finish(mf, size), 0);
	assert_true(vp_mfile_sealed(mf));
	assert_ptr_equal(vp_mfile_map(mf, size), base);			/* the same address */
	assert_memory_equal(base, buf, CHUNK);
	for (size_t i = CHUNK; i < 2 * CHUNK; i += 4096)
		assert_int_equal(base[i], 0);
	assert_memory_equal(base + 2 * CHUNK, buf + 2 * CHUNK, size - 2 * CHUNK);
	assert_int_equal(base[size], 0);		/* past the end, in its page: zeros */
	seals = fcntl(mf->fd, F_GET_SEALS);
	assert_true(seals & F_SEAL_WRITE);
	assert_int_equal(pwrite(mf->fd, "x", 1, 0), -1);
	assert_int_equal(errno, EPERM);
	/* charged for its pages at most (the hole's charge went back with its pages) */
	assert_true(vp_pool_available(pool) >= 16 * CHUNK - ((size + 4095) & ~4095UL));
	assert_true(vp_pool_available(pool) < 16 * CHUNK - 2 * CHUNK);
	d = vp_data_from_mfile(pool, mf);
	assert_non_null(d);
	assert_int_equal(vp_data_size(d), size);
	assert_true(vp_data_fd(d) >= 0);
	assert_int_equal(vp_data_pread(d, out, sizeof(out), 2 * CHUNK), (ssize_t)sizeof(out));
	assert_memory_equal(out, buf + 2 * CHUNK, sizeof(out));
	vp_data_put(d);
	assert_int_equal(vp_pool_available(pool), 16 * CHUNK);

	/* a landing the budget cannot hold */
	mf = vp_mfile_new(pool, &err);
	assert_non_null(mf);
	assert_non_null(vp_mfile_land_map(mf, 32 * CHUNK, &err));
	assert_int_equal(vp_mfile_land_grow(mf, 32 * CHUNK, 0), -ENOSPC);
	vp_mfile_put(mf);
	assert_int_equal(vp_pool_available(pool), 16 * CHUNK);
	vp_pool_free(pool);
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_write_read_across_chunks),
		cmocka_unit_test(test_holes_and_overwrite),
		cmocka_unit_test(test_truncate_then_grow_reads_zeros),
		cmocka_unit_test(test_clone_is_copy_on_write),
		cmocka_unit_test(test_reader_keeps_chunk_while_writer_changes_it),
		cmocka_unit_test(test_backed_data_reads_file_lazily),
		cmocka_unit_test(test_write_blocks_then_enospc),
		cmocka_unit_test_setup_teardown(test_mfile_seal_on_clone_then_copy_on_write, setup, teardown),
		cmocka_unit_test_setup_teardown(test_mfile_sealed_write_fails_loudly, setup, teardown),
		cmocka_unit_test(test_mfile_charged_to_the_budget),
		cmocka_unit_test(test_mfile_fallocate_reserves),
		cmocka_unit_test(test_spare_taken_then_tail_freed_at_seal),
		cmocka_unit_test(test_spare_gives_way_to_a_write),
		cmocka_unit_test(test_mfile_landing_becomes_the_sealed_version),
	};
	return cmocka_run_group_tests_name("data", tests, setup, teardown);
}
