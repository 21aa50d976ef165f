/*
 * Unit tests: replication's producer and consumer state machines
 * (engine/repl.h), two namespaces in one process over a fake fabric
 * (fakes/fake_fabric.c) and a fake mount (fakes/fake_mount.c: the
 * consumer's installing syscalls go to its namespace).  What the state
 * machines do is seen through the public API: the status JSON of both
 * sides, and the consumer's namespace.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../../engine/clock.h"
#include "../../engine/data.h"
#include "../../engine/log.h"
#include "../../engine/ns.h"
#include "../../engine/repl.h"
#include "fakes/fake_fabric.c"
#include "fakes/fake_mount.c"
#include "ns_util.c"

#define PORT "7701"
#define PEER_TIMEOUT_S 3.0
#define WAIT_S 10.0			/* a generous bound for what takes ~1 s */
#define FILE_SIZE ((5u << 20) / 2)	/* 2.5 MiB: several chunks, a short last one */

struct side {
	char pfs[64];
	char mnt[64];
	struct vp_ns *ns;
	struct vp_repl *repl;
};

struct fixture {
	char secret[64], other_secret[64];
	struct side prod, cons;
};

static void write_secret(char *path, const char *text)
{
	int fd = mkstemp(path);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
}

static int setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));

	if (!fx)
		return -1;
	fake_fab_reset();
	memset(&fake_mount, 0, sizeof(fake_mount));
	strcpy(fx->secret, "/tmp/vp-test-secret-XXXXXX");
	strcpy(fx->other_secret, "/tmp/vp-test-secret-XXXXXX");
	write_secret(fx->secret, "0123456789abcdef0123456789abcdef\n");
	write_secret(fx->other_secret, "not-the-same-secret-at-all-000000\n");
	strcpy(fx->prod.pfs, "/tmp/vp-test-ppfs-XXXXXX");
	strcpy(fx->prod.mnt, "/tmp/vp-test-pmnt-XXXXXX");
	strcpy(fx->cons.pfs, "/tmp/vp-test-cpfs-XXXXXX");
	strcpy(fx->cons.mnt, "/tmp/vp-test-cmnt-XXXXXX");
	if (!mkdtemp(fx->prod.pfs) || !mkdtemp(fx->prod.mnt) ||
	    !mkdtemp(fx->cons.pfs) || !mkdtemp(fx->cons.mnt))
		return -1;
	*state = fx;
	return 0;
}

static void side_stop(struct side *s)
{
	if (s->ns)
		vp_ns_unobserve(s->ns, &vp_repl_ns_observer, s->repl);
	vp_repl_free(s->repl);
	if (s->ns)
		vp_ns_free(s->ns);
	s->repl = NULL;
	s->ns = NULL;
}

static int teardown(void **state)
{
	struct fixture *fx = *state;
	char cmd[512];
	int rc;

	side_stop(&fx->cons);
	side_stop(&fx->prod);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s' '%s' '%s' '%s' '%s'", fx->prod.pfs,
		 fx->prod.mnt, fx->cons.pfs, fx->cons.mnt, fx->secret, fx->other_secret);
	rc = system(cmd);
	free(fx);
	assert_int_equal(fake_fab_open_endpoints(), 0);	/* vp_repl_free closed its endpoint */
	return rc ? -1 : 0;
}

/* Starts a producer (listen) or a consumer (subscribe) with secret_file secret. */
static void side_start(struct side *s, int consumer, const char *secret)
{
	struct vp_config cfg;
	char err[512];

	test_config(&cfg);
	cfg.peer_timeout = PEER_TIMEOUT_S;
	snprintf(consumer ? cfg.subscribe : cfg.listen, sizeof(cfg.listen), "127.0.0.1:%s", PORT);
	snprintf(cfg.secret_file, sizeof(cfg.secret_file), "%s", secret);
	s->ns = vp_ns_new(&cfg, s->pfs, err, sizeof(err));
	if (!s->ns)
		fail_msg("vp_ns_new: %s", err);
	if (consumer)
		fake_mount.ns = s->ns;
	s->repl = vp_repl_new(s->ns, NULL, &cfg, s->mnt, err, sizeof(err));
	if (!s->repl)
		fail_msg("vp_repl_new: %s", err);
	assert_int_equal(vp_ns_observe(s->ns, &vp_repl_ns_observer, s->repl), 0);
}

/* The status of r (a new reference), checked to be an object that dumps as JSON. */
static json_t *status_of(struct vp_repl *r)
{
	json_t *j = vp_repl_status(r);
	char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;

	if (!json_is_object(j) || !text)
		fail_msg("repl status is not a JSON object");
	free(text);
	return j;
}

static int consumer_subscribed(struct vp_repl *r)
{
	json_t *j = status_of(r);
	int yes = !strcmp(json_string_value(json_object_get(j, "state")), "subscribed");

	json_decref(j);
	return yes;
}

/* The highest id of an active peer of the producer, 0 if none. */
static uint64_t producer_active_peer(struct vp_repl *r)
{
	json_t *j = status_of(r), *peer;
	uint64_t best = 0;
	size_t i;

	json_array_foreach(json_object_get(j, "peers"), i, peer)
		if (json_is_true(json_object_get(peer, "active")) &&
		    (uint64_t)json_integer_value(json_object_get(peer, "id")) > best)
			best = (uint64_t)json_integer_value(json_object_get(peer, "id"));
	json_decref(j);
	return best;
}

static void nap(void)
{
	struct timespec ts = { 0, 20 * 1000 * 1000 };

	nanosleep(&ts, NULL);
}

/* Both sides agree the consumer is subscribed (within WAIT_S). */
static void wait_subscribed(struct fixture *fx, uint64_t min_peer_id)
{
	double end = vp_now() + WAIT_S;

	while (vp_now() < end) {
		if (consumer_subscribed(fx->cons.repl) &&
		    producer_active_peer(fx->prod.repl) >= min_peer_id)
			return;
		nap();
	}
	fail_msg("the consumer did not subscribe (as peer %llu or later) within %.0f s",
		 (unsigned long long)min_peer_id, WAIT_S);
}

/* size bytes whose byte i is (i * 31 + seed) & 0xff. */
static unsigned char *pattern(size_t size, unsigned int seed)
{
	unsigned char *buf = malloc(size);

	assert_non_null(buf);
	for (size_t i = 0; i < size; i++)
		buf[i] = (unsigned char)(i * 31 + seed);
	return buf;
}

/* Commits name (in the root) on ns with size bytes of pattern seed. */
static void put_file(struct vp_ns *ns, const char *name, size_t size, unsigned int seed)
{
	unsigned char *buf = pattern(size, seed);

	put_bytes(ns, name, buf, size);
	free(buf);
}

/* 1 if path on ns is a version of exactly pattern seed's size bytes, else 0. */
static int holds(struct vp_ns *ns, const char *path, size_t size, unsigned int seed)
{
	struct vp_data *d = vp_ns_path_data(ns, path);
	unsigned char *want, *got;
	int same;

	if (!d)
		return 0;
	if (vp_data_size(d) != size) {
		vp_data_put(d);
		return 0;
	}
	want = pattern(size, seed);
	got = malloc(size);
	assert_non_null(got);
	same = vp_data_pread(d, got, size, 0) == (ssize_t)size && !memcmp(got, want, size);
	vp_data_put(d);
	free(want);
	free(got);
	return same;
}

/* Waits until path on the consumer is the version with pattern seed. */
static void wait_file(struct fixture *fx, const char *path, size_t size, unsigned int seed)
{
	double end = vp_now() + WAIT_S;

	while (vp_now() < end) {
		if (holds(fx->cons.ns, path, size, seed))
			return;
		nap();
	}
	fail_msg("'%s' (seed %u) did not reach the consumer within %.0f s", path, seed, WAIT_S);
}

static void test_subscribes_with_the_right_secret(void **state)
{
	struct fixture *fx = *state;
	json_t *j;

	side_start(&fx->prod, 0, fx->secret);
	side_start(&fx->cons, 1, fx->secret);
	wait_subscribed(fx, 1);
	j = status_of(fx->cons.repl);
	assert_string_equal(json_string_value(json_object_get(j, "role")), "consumer");
	assert_true(json_is_true(json_object_get(j, "sealed")));
	json_decref(j);
	j = status_of(fx->prod.repl);
	assert_string_equal(json_string_value(json_object_get(j, "role")), "producer");
	assert_int_equal(json_array_size(json_object_get(j, "peers")), 1);
	json_decref(j);
}

static void test_wrong_secret_is_refused(void **state)
{
	struct fixture *fx = *state;
	double end;

	side_start(&fx->prod, 0, fx->secret);
	side_start(&fx->cons, 1, fx->other_secret);
	put_file(fx->prod.ns, "model.pt", 4096, 1);
	/* several HELLOs (one a second): none may get through */
	end = vp_now() + 3.0;
	while (vp_now() < end) {
		assert_false(consumer_subscribed(fx->cons.repl));
		assert_int_equal(producer_active_peer(fx->prod.repl), 0);
		nap();
	}
	assert_true(fake_fab_count(&fake_fab.delivered) > 0);	/* they did talk */
	assert_int_equal(vp_ns_path_version(fx->cons.ns, "model.pt"), UINT64_MAX);
	assert_int_equal(fake_fab_count(&fake_fab.bytes_read), 0);	/* and nothing was read from the producer */
}

static void test_version_reaches_the_consumer(void **state)
{
	struct fixture *fx = *state;

	side_start(&fx->prod, 0, fx->secret);
	put_file(fx->prod.ns, "before.bin", 1000, 7);	/* the catch-up brings it */
	side_start(&fx->cons, 1, fx->secret);
	wait_subscribed(fx, 1);
	wait_file(fx, "before.bin", 1000, 7);
	assert_true(fake_mount.creates >= 1);	/* installed by the consumer's own syscalls */

	put_file(fx->prod.ns, "model.pt", FILE_SIZE, 1);
	wait_file(fx, "model.pt", FILE_SIZE, 1);
	assert_int_equal(vp_ns_path_version(fx->cons.ns, "model.pt"),
			 vp_ns_path_version(fx->prod.ns, "model.pt"));

	/* a new version of the same file replaces it whole */
	put_file(fx->prod.ns, "model.pt", FILE_SIZE - 100, 2);
	wait_file(fx, "model.pt", FILE_SIZE - 100, 2);
	assert_int_equal(vp_ns_path_version(fx->cons.ns, "model.pt"),
			 vp_ns_path_version(fx->prod.ns, "model.pt"));
	assert_true(fake_mount.renames >= 1);	/* over the old file, not into it */
	assert_true(fake_fab_count(&fake_fab.bytes_read) >= FILE_SIZE);
}

/* Waits until pred(ns, path) holds on the consumer. */
static void wait_until(struct fixture *fx, int (*pred)(struct vp_ns *, const char *),
		       const char *path, const char *what)
{
	double end = vp_now() + WAIT_S;

	while (vp_now() < end) {
		if (pred(fx->cons.ns, path))
			return;
		nap();
	}
	fail_msg("'%s' %s on the consumer within %.0f s", path, what, WAIT_S);
}

static int exists(struct vp_ns *ns, const char *path)
{
	uint64_t ino;
	int rc = vp_ns_path_ino(ns, path, &ino);

	return rc == 0 || rc == -EISDIR;
}

static int gone(struct vp_ns *ns, const char *path)
{
	return !exists(ns, path);
}

static void test_namespace_changes_are_replayed(void **state)
{
	struct fixture *fx = *state;
	struct stat st, dir;
	char target[64];

	side_start(&fx->prod, 0, fx->secret);
	side_start(&fx->cons, 1, fx->secret);
	wait_subscribed(fx, 1);
	assert_int_equal(vp_ns_mkdir(fx->prod.ns, NULL, VP_ROOT_INO, "run", 0755, &dir), 0);
	vp_ns_forget(fx->prod.ns, dir.st_ino, 1);
	wait_until(fx, exists, "run", "did not appear");
	put_file(fx->prod.ns, "old.pt", 1000, 8);
	wait_file(fx, "old.pt", 1000, 8);

	assert_int_equal(vp_ns_rename(fx->prod.ns, NULL, VP_ROOT_INO, "old.pt", dir.st_ino, "new.pt", 0), 0);
	wait_file(fx, "run/new.pt", 1000, 8);
	assert_true(gone(fx->cons.ns, "old.pt"));

	assert_int_equal(vp_ns_symlink(fx->prod.ns, NULL, VP_ROOT_INO, "latest", "run/new.pt", &st), 0);
	vp_ns_forget(fx->prod.ns, st.st_ino, 1);
	wait_until(fx, exists, "latest", "did not appear");
	assert_int_equal(vp_ns_lookup(fx->cons.ns, VP_ROOT_INO, "latest", &st), 0);
	vp_ns_forget(fx->cons.ns, st.st_ino, 1);
	assert_true(S_ISLNK(st.st_mode));
	assert_int_equal(vp_ns_readlink(fx->cons.ns, st.st_ino, target, sizeof(target)), 0);
	assert_string_equal(target, "run/new.pt");

	assert_int_equal(vp_ns_unlink(fx->prod.ns, NULL, dir.st_ino, "new.pt"), 0);
	wait_until(fx, gone, "run/new.pt", "was not removed");
	assert_int_equal(vp_ns_rmdir(fx->prod.ns, NULL, VP_ROOT_INO, "run"), 0);
	wait_until(fx, gone, "run", "was not removed");
}

/* 1 if the consumer's b.pt and run/a.pt are one file (same inode number). */
static int one_file(struct vp_ns *ns, const char *path)
{
	uint64_t a, b;

	return !vp_ns_path_ino(ns, path, &a) && !vp_ns_path_ino(ns, "run/a.pt", &b) && a == b;
}

static void test_links_are_replayed_as_one_file(void **state)
{
	struct fixture *fx = *state;
	struct stat st, dir;
	uint64_t ino;

	side_start(&fx->prod, 0, fx->secret);
	side_start(&fx->cons, 1, fx->secret);
	wait_subscribed(fx, 1);
	assert_int_equal(vp_ns_mkdir(fx->prod.ns, NULL, VP_ROOT_INO, "run", 0755, &dir), 0);
	vp_ns_forget(fx->prod.ns, dir.st_ino, 1);
	put_file(fx->prod.ns, "b.pt", 1000, 3);
	assert_int_equal(vp_ns_path_ino(fx->prod.ns, "b.pt", &ino), 0);
	assert_int_equal(vp_ns_link(fx->prod.ns, NULL, ino, dir.st_ino, "a.pt", &st), 0);
	vp_ns_forget(fx->prod.ns, ino, 1);
	wait_until(fx, one_file, "b.pt", "was not one file with run/a.pt");
	/* a new version is the inode's: both names show it */
	put_file(fx->prod.ns, "b.pt", 2000, 4);
	wait_file(fx, "run/a.pt", 2000, 4);
	assert_true(one_file(fx->cons.ns, "b.pt"));
	/* one name goes, the other keeps the file */
	assert_int_equal(vp_ns_unlink(fx->prod.ns, NULL, VP_ROOT_INO, "b.pt"), 0);
	wait_until(fx, gone, "b.pt", "was not removed");
	assert_true(holds(fx->cons.ns, "run/a.pt", 2000, 4));
}

static void test_consumer_is_read_only_for_others(void **state)
{
	struct fixture *fx = *state;
	struct vp_caller other = { .tid = gettid() };
	struct vp_handle *h;
	struct stat st;

	side_start(&fx->cons, 1, fx->secret);
	/* not the installer: */
	assert_int_equal(vp_ns_create(fx->cons.ns, &other, VP_ROOT_INO, "local.txt", 0644,
				      O_WRONLY | O_CREAT, &st, &h), -EROFS);
	assert_int_equal(vp_ns_mkdir(fx->cons.ns, &other, VP_ROOT_INO, "d", 0755, &st), -EROFS);
	assert_int_equal(vp_ns_mkdir(fx->cons.ns, NULL, VP_ROOT_INO, "d", 0755, &st), -EROFS);
}

static void test_lost_message_resubscribes(void **state)
{
	struct fixture *fx = *state;

	side_start(&fx->prod, 0, fx->secret);
	side_start(&fx->cons, 1, fx->secret);
	wait_subscribed(fx, 1);
	/* one message of the producer's session (a heartbeat, within a second) is lost */
	pthread_mutex_lock(&fake_fab.lock);
	fake_fab.drop_port = (uint16_t)atoi(PORT);
	fake_fab.drop_sends = 1;
	pthread_mutex_unlock(&fake_fab.lock);
	/* the next one shows the gap: the consumer subscribes again, as a new peer */
	wait_subscribed(fx, 2);
	assert_int_equal(fake_fab_count(&fake_fab.dropped), 1);
	put_file(fx->prod.ns, "model.pt", FILE_SIZE, 3);
	wait_file(fx, "model.pt", FILE_SIZE, 3);
}

static void test_failed_read_refetches_whole(void **state)
{
	struct fixture *fx = *state;
	double end;

	side_start(&fx->prod, 0, fx->secret);
	side_start(&fx->cons, 1, fx->secret);
	wait_subscribed(fx, 1);
	put_file(fx->prod.ns, "model.pt", FILE_SIZE, 4);
	wait_file(fx, "model.pt", FILE_SIZE, 4);

	/* the next version's first read fails: nothing torn, then the whole version */
	pthread_mutex_lock(&fake_fab.lock);
	fake_fab.fail_port = (uint16_t)atoi(PORT);
	fake_fab.fail_reads = 1;
	pthread_mutex_unlock(&fake_fab.lock);
	put_file(fx->prod.ns, "model.pt", FILE_SIZE, 5);
	end = vp_now() + WAIT_S;
	while (vp_now() < end && fake_fab_count(&fake_fab.failed_reads) == 0)
		nap();
	assert_int_equal(fake_fab_count(&fake_fab.failed_reads), 1);
	/* until the refetch, the old version stays whole: never a mix, never a hole */
	end = vp_now() + WAIT_S;
	while (vp_now() < end && !holds(fx->cons.ns, "model.pt", FILE_SIZE, 5)) {
		if (!holds(fx->cons.ns, "model.pt", FILE_SIZE, 4) &&
		    !holds(fx->cons.ns, "model.pt", FILE_SIZE, 5))
			fail_msg("'model.pt' is neither the old version nor the new one");
		nap();
	}
	assert_true(holds(fx->cons.ns, "model.pt", FILE_SIZE, 5));
	/* it took a new subscription (a catch-up) to bring it */
	assert_true(producer_active_peer(fx->prod.repl) >= 2);

	/*
	 * Another failure within the back-off (5 s): the resubscribe waits
	 * for it, and still comes (it used to be dropped: the version stayed
	 * missing until the next one).
	 */
	pthread_mutex_lock(&fake_fab.lock);
	fake_fab.fail_reads = 1;
	pthread_mutex_unlock(&fake_fab.lock);
	put_file(fx->prod.ns, "model.pt", FILE_SIZE, 6);
	end = vp_now() + WAIT_S;
	while (vp_now() < end && fake_fab_count(&fake_fab.failed_reads) < 2)
		nap();
	assert_int_equal(fake_fab_count(&fake_fab.failed_reads), 2);
	end = vp_now() + 5.0 + WAIT_S;
	while (vp_now() < end && !holds(fx->cons.ns, "model.pt", FILE_SIZE, 6))
		nap();
	assert_true(holds(fx->cons.ns, "model.pt", FILE_SIZE, 6));
	assert_true(producer_active_peer(fx->prod.repl) >= 3);
}

static int producer_peers(struct vp_repl *r)
{
	json_t *j = status_of(r);
	int n = (int)json_array_size(json_object_get(j, "peers"));

	json_decref(j);
	return n;
}

static void test_silent_producer_keeps_the_versions(void **state)
{
	struct fixture *fx = *state;
	double end;

	side_start(&fx->prod, 0, fx->secret);
	side_start(&fx->cons, 1, fx->secret);
	wait_subscribed(fx, 1);
	put_file(fx->prod.ns, "model.pt", FILE_SIZE, 9);
	wait_file(fx, "model.pt", FILE_SIZE, 9);
	side_stop(&fx->prod);
	end = vp_now() + PEER_TIMEOUT_S + WAIT_S;
	while (consumer_subscribed(fx->cons.repl) && vp_now() < end)
		nap();
	assert_false(consumer_subscribed(fx->cons.repl));
	assert_true(holds(fx->cons.ns, "model.pt", FILE_SIZE, 9));	/* the last complete version */
}

static void test_silent_consumer_is_dropped(void **state)
{
	struct fixture *fx = *state;
	double t0, end;

	side_start(&fx->prod, 0, fx->secret);
	side_start(&fx->cons, 1, fx->secret);
	wait_subscribed(fx, 1);
	t0 = vp_now();
	side_stop(&fx->cons);
	end = t0 + PEER_TIMEOUT_S + WAIT_S;
	while (producer_peers(fx->prod.repl) && vp_now() < end)
		nap();
	assert_int_equal(producer_peers(fx->prod.repl), 0);
	assert_true(vp_now() - t0 >= PEER_TIMEOUT_S - 1.0);	/* not before its silence counts */
}

/*
 * fsync=peers: a version counts as held once its consumer said DONE for
 * it, once per consumer, and a later version counts from nothing.  (The
 * count lives in the version's data now, not in a ring of DONEs keyed by
 * address, which a freed version's address could match; this test does
 * not get the allocator to hand an address back.)
 */
static void test_held_by_counts_each_version_once(void **state)
{
	struct fixture *fx = *state;
	struct vp_data *d;

	side_start(&fx->prod, 0, fx->secret);
	side_start(&fx->cons, 1, fx->secret);
	wait_subscribed(fx, 1);
	put_file(fx->prod.ns, "model.pt", FILE_SIZE, 3);
	wait_file(fx, "model.pt", FILE_SIZE, 3);
	d = vp_ns_path_data(fx->prod.ns, "model.pt");
	assert_non_null(d);
	assert_int_equal(vp_repl_held_by(fx->prod.repl, d, 1, WAIT_S), 1);
	assert_int_equal(vp_repl_held_by(fx->prod.repl, d, 2, 0.2), 1);	/* one consumer: one */
	vp_data_put(d);

	/* with the consumer gone, no later version is held, whatever its address */
	side_stop(&fx->cons);
	for (unsigned int seed = 4; seed < 24; seed++) {
		put_file(fx->prod.ns, "model.pt", FILE_SIZE, seed);
		d = vp_ns_path_data(fx->prod.ns, "model.pt");
		assert_non_null(d);
		assert_int_equal(vp_repl_held_by(fx->prod.repl, d, 0, 0), 0);
		vp_data_put(d);
	}
}

static void test_bad_listen_and_subscribe_are_refused(void **state)
{
	struct fixture *fx = *state;
	struct vp_config cfg;
	char err[512] = "";

	test_config(&cfg);
	fx->prod.ns = vp_ns_new(&cfg, fx->prod.pfs, err, sizeof(err));
	assert_non_null(fx->prod.ns);
	snprintf(cfg.secret_file, sizeof(cfg.secret_file), "%s", fx->secret);

	snprintf(cfg.listen, sizeof(cfg.listen), "0.0.0.0:%s", PORT);	/* a wildcard */
	assert_null(vp_repl_new(fx->prod.ns, NULL, &cfg, fx->prod.mnt, err, sizeof(err)));
	assert_non_null(strstr(err, "wildcard"));

	snprintf(cfg.listen, sizeof(cfg.listen), "127.0.0.1");	/* no port */
	assert_null(vp_repl_new(fx->prod.ns, NULL, &cfg, fx->prod.mnt, err, sizeof(err)));
	assert_non_null(strstr(err, "HOST:PORT"));

	snprintf(cfg.listen, sizeof(cfg.listen), "127.0.0.1:%s", PORT);
	cfg.secret_file[0] = '\0';		/* no secret, and not insecure=1 */
	assert_null(vp_repl_new(fx->prod.ns, NULL, &cfg, fx->prod.mnt, err, sizeof(err)));
	assert_non_null(strstr(err, "secret_file"));

	snprintf(cfg.secret_file, sizeof(cfg.secret_file), "%s.missing", fx->secret);
	assert_null(vp_repl_new(fx->prod.ns, NULL, &cfg, fx->prod.mnt, err, sizeof(err)));
	assert_non_null(strstr(err, "No such file"));
	assert_int_equal(fake_fab_open_endpoints(), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_subscribes_with_the_right_secret, setup, teardown),
		cmocka_unit_test_setup_teardown(test_wrong_secret_is_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_version_reaches_the_consumer, setup, teardown),
		cmocka_unit_test_setup_teardown(test_namespace_changes_are_replayed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_links_are_replayed_as_one_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_consumer_is_read_only_for_others, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lost_message_resubscribes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failed_read_refetches_whole, setup, teardown),
		cmocka_unit_test_setup_teardown(test_silent_producer_keeps_the_versions, setup, teardown),
		cmocka_unit_test_setup_teardown(test_silent_consumer_is_dropped, setup, teardown),
		cmocka_unit_test_setup_teardown(test_held_by_counts_each_version_once, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_listen_and_subscribe_are_refused, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
