/*
 * Unit tests: the namespace over a PFS that fails (fakes/fake_pfs.c): a
 * full PFS keeps the version in the cache and the flush retries until the
 * PFS has room; a read-only PFS is refused at open and, once mounted,
 * only delays the flush.  Needs CAP_SYS_ADMIN for the tmpfs; skipped
 * without.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../engine/clock.h"
#include "../../engine/log.h"
#include "../../engine/ns.h"
#include "fakes/fake_pfs.c"
#include "ns_util.c"

#define FILE_SIZE (3u << 20)	/* more than the 1 MiB tmpfs holds */

struct fixture {
	struct fake_pfs pfs;
	struct vp_ns *ns;
};

static int setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));
	int rc;

	if (!fx)
		return -1;
	rc = fake_pfs_init(&fx->pfs, "1m");
	*state = fx;
	if (rc == -EPERM)
		fx->pfs.dir[0] = '\0';	/* the tests skip */
	else if (rc)
		return -1;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *fx = *state;
	int rc = 0;

	if (fx->ns)
		vp_ns_free(fx->ns);
	if (fx->pfs.dir[0])
		rc = fake_pfs_release(&fx->pfs);
	free(fx);
	return rc ? -1 : 0;
}

static void config(struct vp_config *cfg)
{
	test_config(cfg);
	cfg->flush_retry_max = 0.5;
	cfg->unmount_wait = 5;
}

static struct vp_ns *open_ns(struct fixture *fx)
{
	struct vp_config cfg;
	char err[512];

	if (!fx->pfs.dir[0])
		skip();
	config(&cfg);
	fx->ns = vp_ns_new(&cfg, fx->pfs.dir, err, sizeof(err));
	if (!fx->ns)
		fail_msg("vp_ns_new: %s", err);
	return fx->ns;
}

static unsigned char byte_at(size_t i)
{
	return (unsigned char)(i * 13 + 5);
}

static uint64_t put_file(struct vp_ns *ns, const char *name)
{
	unsigned char *buf = malloc(FILE_SIZE);
	uint64_t ino;

	assert_non_null(buf);
	for (size_t i = 0; i < FILE_SIZE; i++)
		buf[i] = byte_at(i);
	ino = put_bytes(ns, name, buf, FILE_SIZE);
	free(buf);
	return ino;
}

static void assert_state(struct vp_ns *ns, uint64_t ino, const char *want)
{
	char buf[32] = "";
	ssize_t n = vp_ns_getxattr(ns, ino, "user.viperfs.state", buf, sizeof(buf) - 1);

	assert_true(n > 0);
	buf[n] = '\0';
	assert_string_equal(buf, want);
}

/* The file on the PFS holds every byte put_file() wrote. */
static void assert_on_pfs(struct fixture *fx, const char *name)
{
	char path[256];
	unsigned char *buf = malloc(FILE_SIZE + 1);
	int fd;

	assert_non_null(buf);
	snprintf(path, sizeof(path), "%s/%s", fx->pfs.dir, name);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		fail_msg("'%s' is not on the PFS: %s", name, strerror(errno));
	assert_int_equal(read(fd, buf, FILE_SIZE + 1), FILE_SIZE);
	close(fd);
	for (size_t i = 0; i < FILE_SIZE; i++)
		if (buf[i] != byte_at(i))
			fail_msg("byte %zu of '%s' on the PFS differs", i, name);
	free(buf);
}

/* Polls the flush for wait_s; returns vp_ns_flush_poll's last answer. */
static int poll_for(struct vp_ns *ns, struct vp_flush_progress *p, double wait_s)
{
	double end = vp_now() + wait_s;
	int rc = 0;

	while (rc == 0 && vp_now() < end)
		rc = vp_ns_flush_poll(ns, p, 0.1);
	return rc;
}

static void test_full_pfs_keeps_the_version_and_retries(void **state)
{
	struct fixture *fx = *state;
	struct vp_ns *ns = open_ns(fx);
	struct vp_flush_progress p;
	struct vp_data *d;
	uint64_t ino = put_file(ns, "model.pt");

	assert_int_equal(vp_ns_flush_start(ns, "", &p), 0);
	assert_int_equal(poll_for(ns, &p, 2.0), 0);	/* not done: the PFS is full */
	assert_int_equal(p.last_error, -ENOSPC);
	assert_state(ns, ino, "flushing");	/* not "flushed" */
	d = vp_ns_path_data(ns, "model.pt");	/* still whole in the cache */
	assert_non_null(d);
	assert_int_equal(vp_data_size(d), FILE_SIZE);
	vp_data_put(d);

	assert_int_equal(fake_pfs_remount(&fx->pfs, "16m", 0), 0);	/* room again */
	assert_int_equal(poll_for(ns, &p, 10.0), 1);
	assert_int_equal(p.last_error, 0);
	assert_state(ns, ino, "flushed");
	assert_on_pfs(fx, "model.pt");
}

static void test_read_only_pfs_is_refused_at_open(void **state)
{
	struct fixture *fx = *state;
	struct vp_config cfg;
	char err[512] = "";

	if (!fx->pfs.dir[0])
		skip();
	assert_int_equal(fake_pfs_remount(&fx->pfs, "1m", 1), 0);
	config(&cfg);
	assert_null(vp_ns_new(&cfg, fx->pfs.dir, err, sizeof(err)));
	assert_non_null(strstr(err, "not writable"));
	assert_non_null(strstr(err, fx->pfs.dir));
}

static void test_read_only_pfs_delays_the_flush(void **state)
{
	struct fixture *fx = *state;
	struct vp_ns *ns = open_ns(fx);
	struct vp_flush_progress p;
	uint64_t ino;

	assert_int_equal(fake_pfs_remount(&fx->pfs, "16m", 1), 0);
	ino = put_file(ns, "model.pt");
	assert_int_equal(vp_ns_flush_start(ns, "", &p), 0);
	assert_int_equal(poll_for(ns, &p, 2.0), 0);
	assert_int_equal(p.last_error, -EROFS);
	assert_state(ns, ino, "flushing");	/* not "flushed" */

	assert_int_equal(fake_pfs_remount(&fx->pfs, "16m", 0), 0);
	assert_int_equal(poll_for(ns, &p, 10.0), 1);
	assert_state(ns, ino, "flushed");
	assert_on_pfs(fx, "model.pt");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_full_pfs_keeps_the_version_and_retries, setup, teardown),
		cmocka_unit_test_setup_teardown(test_read_only_pfs_is_refused_at_open, setup, teardown),
		cmocka_unit_test_setup_teardown(test_read_only_pfs_delays_the_flush, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
