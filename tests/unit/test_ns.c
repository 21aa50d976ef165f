/*
 * Unit tests: the namespace and its flush log, against a temporary
 * directory as the PFS (no FUSE mount).  They look at the log through
 * ns_i.h, as engine-internal tests may.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "../../engine/log.h"
#include "../../engine/ns/ns_i.h"

struct fixture {
	char pfs[64];
	char outside[64];
	struct vp_ns *ns;
};

static struct vp_ns *open_ns(struct fixture *fx, const char *opts)
{
	struct vp_config cfg;
	char err[512];

	vp_config_defaults(&cfg);
	cfg.ram_cache = 64ULL << 20;
	cfg.ram_prefault = 0;
	cfg.log_level = LOG_CRIT;
	if (opts)
		assert_int_equal(vp_config_parse_opts(&cfg, opts, NULL, 0, err, sizeof(err)), 0);
	fx->ns = vp_ns_new(&cfg, fx->pfs, err, sizeof(err));
	if (!fx->ns)
		fail_msg("vp_ns_new: %s", err);
	return fx->ns;
}

static int setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));

	if (!fx)
		return -1;
	strcpy(fx->pfs, "/tmp/vp-test-pfs-XXXXXX");
	strcpy(fx->outside, "/tmp/vp-test-out-XXXXXX");
	if (!mkdtemp(fx->pfs) || !mkdtemp(fx->outside))
		return -1;
	*state = fx;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *fx = *state;
	char cmd[256];

	if (fx->ns)
		vp_ns_free(fx->ns);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s'", fx->pfs, fx->outside);
	if (system(cmd))
		return -1;
	free(fx);
	return 0;
}

/* Creates (or truncates) parent/name with content, and closes it. */
static uint64_t put_file(struct vp_ns *ns, uint64_t parent, const char *name,
			 const char *content)
{
	struct vp_handle *h;
	struct stat st;
	int keep, rc;

	rc = vp_ns_lookup(ns, parent, name, &st);
	if (rc == -ENOENT) {
		assert_int_equal(vp_ns_create(ns, NULL, parent, name, 0644, O_WRONLY | O_CREAT,
					      &st, &h), 0);
	} else {
		assert_int_equal(rc, 0);
		vp_ns_forget(ns, st.st_ino, 1);
		assert_int_equal(vp_ns_open(ns, NULL, st.st_ino, O_WRONLY | O_TRUNC, &h, &keep), 0);
	}
	assert_int_equal(vp_ns_write(ns, h, content, strlen(content), 0),
			 (ssize_t)strlen(content));
	assert_int_equal(vp_ns_release(ns, h), 0);
	return st.st_ino;
}

static void flush_all(struct vp_ns *ns)
{
	struct vp_flush_progress p;
	int rc = vp_ns_flush_start(ns, "", &p);

	while (rc == 0)
		rc = vp_ns_flush_poll(ns, &p, 1.0);
	assert_int_equal(rc, 1);
}

static void assert_pfs_file(struct fixture *fx, const char *rel, const char *want)
{
	char path[256], buf[256] = "";
	int fd;
	ssize_t n;

	snprintf(path, sizeof(path), "%s/%s", fx->pfs, rel);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		fail_msg("'%s' is not on the PFS: %s", rel, strerror(errno));
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	assert_true(n >= 0);
	buf[n] = '\0';
	assert_string_equal(buf, want);
}

static void assert_pfs_missing(struct fixture *fx, const char *rel)
{
	char path[256];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s", fx->pfs, rel);
	assert_int_equal(lstat(path, &st), -1);
}

static unsigned int count_log(struct vp_ns *ns, enum flush_op_type type)
{
	struct flush_op *op;
	unsigned int n = 0;

	pthread_mutex_lock(&ns->lock);
	TAILQ_FOREACH(op, &ns->flush.log, link)
		n += op->type == type;
	pthread_mutex_unlock(&ns->lock);
	return n;
}

static void test_name_validation(void **state)
{
	struct fixture *fx = *state;
	struct vp_ns *ns = open_ns(fx, NULL);
	struct stat st;
	struct vp_handle *h;
	char longname[300];

	memset(longname, 'n', 256);
	longname[256] = '\0';
	assert_int_equal(vp_ns_mkdir(ns, NULL, VP_ROOT_INO, longname, 0755, &st), -ENAMETOOLONG);
	assert_int_equal(vp_ns_lookup(ns, VP_ROOT_INO, longname, &st), -ENAMETOOLONG);
	assert_int_equal(vp_ns_mkdir(ns, NULL, VP_ROOT_INO, "a/b", 0755, &st), -EINVAL);
	assert_int_equal(vp_ns_mkdir(ns, NULL, VP_ROOT_INO, "", 0755, &st), -EINVAL);
	assert_int_equal(vp_ns_mkdir(ns, NULL, VP_ROOT_INO, VP_STAGING_DIR, 0755, &st), -EPERM);
	assert_int_equal(vp_ns_lookup(ns, VP_ROOT_INO, VP_STAGING_DIR, &st), -ENOENT);
	assert_int_equal(vp_ns_mkdir(ns, NULL, VP_ROOT_INO, "d", 0755, &st), 0);
	assert_int_equal(vp_ns_mkdir(ns, NULL, VP_ROOT_INO, "d", 0755, &st), -EEXIST);
	assert_int_equal(vp_ns_create(ns, NULL, VP_ROOT_INO, "d", 0644, O_CREAT | O_EXCL | O_WRONLY,
				      &st, &h), -EEXIST);
	assert_int_equal(vp_ns_rmdir(ns, NULL, VP_ROOT_INO, "nope"), -ENOENT);
	put_file(ns, VP_ROOT_INO, "f", "x");
	assert_int_equal(vp_ns_rmdir(ns, NULL, VP_ROOT_INO, "f"), -ENOTDIR);
	assert_int_equal(vp_ns_unlink(ns, NULL, VP_ROOT_INO, "d"), -EISDIR);
	assert_int_equal(vp_ns_rename(ns, NULL, VP_ROOT_INO, "f", VP_ROOT_INO, "d", 0), -EISDIR);
	assert_int_equal(vp_ns_rename(ns, NULL, VP_ROOT_INO, "d", VP_ROOT_INO, "f", 0), -ENOTDIR);
	assert_int_equal(vp_ns_lookup(ns, VP_ROOT_INO, "d", &st), 0);
	/* a directory cannot move below itself */
	assert_int_equal(vp_ns_rename(ns, NULL, VP_ROOT_INO, "d", st.st_ino, "x", 0), -EINVAL);
	vp_ns_forget(ns, st.st_ino, 1);
}

static void test_overlong_path_is_refused(void **state)
{
	struct fixture *fx = *state;
	struct vp_ns *ns = open_ns(fx, NULL);
	uint64_t dir = VP_ROOT_INO;
	char name[256];
	struct stat st;
	int depth, rc = 0;

	memset(name, 'd', 250);
	name[250] = '\0';
	/* 250-byte names: the 16th level would pass PATH_MAX on the PFS */
	for (depth = 0; depth < 20; depth++) {
		rc = vp_ns_mkdir(ns, NULL, dir, name, 0755, &st);
		if (rc)
			break;
		dir = st.st_ino;
	}
	assert_int_equal(rc, -ENAMETOOLONG);
	assert_true(depth >= 14 && depth <= 16);
}

static void test_versions_and_snapshot_readers(void **state)
{
	struct fixture *fx = *state;
	struct vp_ns *ns = open_ns(fx, "flush_interval=1h");
	struct vp_handle *reader;
	struct vp_read rd;
	char value[32];
	uint64_t ino;
	ssize_t n;
	int keep;

	ino = put_file(ns, VP_ROOT_INO, "m.pt", "version one");
	n = vp_ns_getxattr(ns, ino, "user.viperfs.version", value, sizeof(value));
	assert_int_equal(n, 1);
	assert_memory_equal(value, "1", 1);
	n = vp_ns_getxattr(ns, ino, "user.viperfs.state", value, sizeof(value));
	assert_int_equal(n, 6);
	assert_memory_equal(value, "cached", 6);

	assert_int_equal(vp_ns_open(ns, NULL, ino, O_RDONLY, &reader, &keep), 0);
	put_file(ns, VP_ROOT_INO, "m.pt", "version two!");
	n = vp_ns_getxattr(ns, ino, "user.viperfs.version", value, sizeof(value));
	assert_memory_equal(value, "2", 1);
	/* the reader still sees the version it opened */
	n = vp_ns_read(ns, reader, 0, 100, &rd);
	assert_int_equal(n, 11);
	assert_memory_equal(rd.seg[0].ptr, "version one", 11);
	vp_read_release(&rd);
	vp_ns_release(ns, reader);
	/* an open for write without a change makes no version */
	{
		struct vp_handle *h;

		assert_int_equal(vp_ns_open(ns, NULL, ino, O_RDWR, &h, &keep), 0);
		vp_ns_release(ns, h);
		vp_ns_getxattr(ns, ino, "user.viperfs.version", value, sizeof(value));
		assert_memory_equal(value, "2", 1);
	}
}

/*
 * Each run is a later epoch, kept on the PFS; a version flushed keeps its
 * run's epoch; a raised floor numbers the next commit after it; a version
 * taken back is committed under its own number, only over the version it
 * was taken against.
 */
/*
 * A consumer's copy of a version from the PFS: a FIFO at the path is
 * refused without waiting for a writer, and a file larger than the cache
 * is refused before a byte of it is read.
 */
static void test_pfs_copy_refuses_fifos_and_oversized_files(void **state)
{
	struct fixture *fx = *state;
	struct vp_ns *ns = open_ns(fx, NULL);
	uint32_t mode;
	char path[128];
	int err = 0, fd;

	snprintf(path, sizeof(path), "%s/pipe", fx->pfs);
	assert_int_equal(mkfifo(path, 0644), 0);
	assert_null(vp_ns_pfs_copy(ns, "pipe", 1, &mode, &err));	/* blocked in open() before */
	assert_int_equal(err, -EINVAL);

	snprintf(path, sizeof(path), "%s/huge.bin", fx->pfs);
	fd = open(path, O_WRONLY | O_CREAT, 0644);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (64 << 20) + 1), 0);	/* the cache is 64 MiB */
	assert_int_equal(fsetxattr(fd, "user.viperfs.version", "1", 1, 0), 0);
	close(fd);
	assert_null(vp_ns_pfs_copy(ns, "huge.bin", 1, &mode, &err));
	assert_int_equal(err, -EFBIG);

	/* one that fits, of that version, is copied */
	fd = open(path, O_WRONLY | O_TRUNC);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "weights", 7), 7);
	close(fd);
	{
		struct vp_data *d = vp_ns_pfs_copy(ns, "huge.bin", 1, &mode, &err);

		assert_non_null(d);
		assert_int_equal(vp_data_size(d), 7);
		vp_data_put(d);
	}
}

/* A .viperfs-epoch that holds no sane number never makes an epoch wrap to 0. */
static void test_a_bad_epoch_file_is_ignored(void **state)
{
	static const char *bad[] = { "18446744073709551615\n", "-1\n", "99999999999999999999999\n",
				     "junk\n", "12x\n", "" };
	struct fixture *fx = *state;
	struct timespec ts;
	char path[128];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint64_t now, e;
		FILE *f;

		snprintf(path, sizeof(path), "%s/.viperfs-epoch", fx->pfs);
		f = fopen(path, "w");
		assert_non_null(f);
		fputs(bad[i], f);
		fclose(f);
		clock_gettime(CLOCK_REALTIME, &ts);
		now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
		e = vp_ns_epoch(open_ns(fx, NULL));
		if (e < now || e > now + 60ull * 1000000000ull)
			fail_msg("epoch %" PRIu64 " from a file of '%s' (now %" PRIu64 ")", e, bad[i], now);
		vp_ns_free(fx->ns);
		fx->ns = NULL;
	}
	/* and the next run is later than that one, from the file it rewrote */
	assert_true(vp_ns_epoch(open_ns(fx, NULL)) > 0);
}

static void test_epochs_floors_and_taking_back(void **state)
{
	struct fixture *fx = *state;
	struct vp_ns *ns = open_ns(fx, "flush_interval=0");
	struct vp_ns_stamp st;
	uint64_t first = vp_ns_epoch(ns), ino;
	struct vp_data *d;
	char value[32];
	ssize_t n;

	assert_true(first > 0);
	ino = put_file(ns, VP_ROOT_INO, "m.pt", "one");
	flush_all(ns);
	vp_ns_free(ns);
	{
		char dir[128];

		snprintf(dir, sizeof(dir), "%s/team", fx->pfs);
		assert_int_equal(mkdir(dir, 0755), 0);
		assert_int_equal(chown(dir, 1234, 5678), 0);
	}
	ns = open_ns(fx, "flush_interval=0");
	assert_true(vp_ns_epoch(ns) > first);
	/* the PFS file: version 1 of the run before */
	assert_int_equal(vp_ns_lookup(ns, VP_ROOT_INO, "m.pt", &(struct stat){ 0 }), 0);
	assert_int_equal(vp_ns_path_stamp(ns, "m.pt", &st), 0);
	assert_int_equal(st.version, 1);
	assert_true(st.epoch == first);
	assert_int_equal(vp_ns_path_stamp(ns, "nothing", &st), -ENOENT);

	/* a consumer holds 4: taken back over version 1 (not over another) */
	d = vp_data_new(vp_ns_pool(ns));
	assert_int_equal(vp_data_write(d, "four", 4, 0, 0), 4);
	assert_int_equal(vp_ns_recover(ns, "m.pt", d, 4, 2, 0600, 0), -ESTALE);
	assert_int_equal(vp_ns_raise_floor(ns, "m.pt", 4), 0);
	assert_int_equal(vp_ns_recover(ns, "m.pt", d, 4, 1, 0600, 0), 0);
	vp_data_put(d);
	assert_int_equal(vp_ns_path_stamp(ns, "m.pt", &st), 0);
	assert_int_equal(st.version, 4);
	assert_true(st.epoch == vp_ns_epoch(ns));
	assert_int_equal(st.mode, 0600);
	flush_all(ns);
	assert_pfs_file(fx, "m.pt", "four");
	/* the next version is numbered after it, and again past a floor */
	put_file(ns, VP_ROOT_INO, "m.pt", "five");
	assert_int_equal(vp_ns_path_version(ns, "m.pt"), 5);
	assert_int_equal(vp_ns_raise_floor(ns, "m.pt", 9), 0);
	ino = put_file(ns, VP_ROOT_INO, "m.pt", "ten");
	assert_int_equal(vp_ns_path_version(ns, "m.pt"), 10);
	n = vp_ns_getxattr(ns, ino, "user.viperfs.version", value, sizeof(value));
	assert_int_equal(n, 2);
	assert_memory_equal(value, "10", 2);
	/* a version of this run is never replaced by one taken back */
	d = vp_data_new(vp_ns_pool(ns));
	assert_int_equal(vp_ns_recover(ns, "m.pt", d, 11, 9, 0600, 0), -ESTALE);
	/* a path this run never had is made, owned as its directory (its owner never came) */
	assert_int_equal(vp_ns_recover(ns, "team/new.pt", d, 3, 0, 0640, 0), 0);
	vp_data_put(d);
	{
		struct stat dst, fst;

		assert_int_equal(vp_ns_lookup(ns, VP_ROOT_INO, "team", &dst), 0);
		assert_int_equal(vp_ns_lookup(ns, dst.st_ino, "new.pt", &fst), 0);
		assert_int_equal(fst.st_uid, 1234);
		assert_int_equal(fst.st_gid, 5678);
		assert_int_equal(fst.st_mode & 07777, 0640);
	}
}

static void test_coalescing_latest(void **state)
{
	struct fixture *fx = *state;
	struct vp_ns *ns = open_ns(fx, "flush_interval=1h");

	put_file(ns, VP_ROOT_INO, "ckpt", "v1");
	put_file(ns, VP_ROOT_INO, "ckpt", "v2");
	put_file(ns, VP_ROOT_INO, "ckpt", "v3");
	/* one entry, now carrying version 3; two versions skipped */
	assert_int_equal(count_log(ns, OP_DATA), 1);
	pthread_mutex_lock(&ns->lock);
	assert_int_equal(TAILQ_FIRST(&ns->flush.log)->version, 3);
	assert_int_equal(ns->flush.st_skipped_versions, 2);
	pthread_mutex_unlock(&ns->lock);
	assert_pfs_missing(fx, "ckpt");	/* held back by flush_interval */
	flush_all(ns);
	assert_pfs_file(fx, "ckpt", "v3");
}

static void test_flush_all_keeps_every_version(void **state)
{
	struct fixture *fx = *state;
	struct vp_ns *ns = open_ns(fx, "flush_interval=1h,flush=all");

	put_file(ns, VP_ROOT_INO, "ckpt", "v1");
	put_file(ns, VP_ROOT_INO, "ckpt", "v2");
	put_file(ns, VP_ROOT_INO, "ckpt", "v3");
	assert_int_equal(count_log(ns, OP_DATA), 3);
	flush_all(ns);
	assert_pfs_file(fx, "ckpt", "v3");
	pthread_mutex_lock(&ns->lock);
	assert_int_equal(ns->flush.st_flushed_versions, 3);
	pthread_mutex_unlock(&ns->lock);
}

static void test_flush_every_n(void **state)
{
	struct fixture *fx = *state;
	struct vp_ns *ns = open_ns(fx, "flush_interval=1h,flush=every:2");

	put_file(ns, VP_ROOT_INO, "ckpt", "v1");
	assert_int_equal(count_log(ns, OP_DATA), 0);	/* v1: skipped */
	put_file(ns, VP_ROOT_INO, "ckpt", "v2");
	assert_int_equal(count_log(ns, OP_DATA), 1);	/* v2: queued */
	put_file(ns, VP_ROOT_INO, "ckpt", "v3");
	pthread_mutex_lock(&ns->lock);
	assert_int_equal(TAILQ_FIRST(&ns->flush.log)->version, 2);	/* v3 not coalesced in */
	pthread_mutex_unlock(&ns->lock);
	/* a forced flush (viperctl flush, unmount) still writes the last one */
	flush_all(ns);
	assert_pfs_file(fx, "ckpt", "v3");
}

static void test_renames_replay_in_order(void **state)
{
	struct fixture *fx = *state;
	struct vp_ns *ns = open_ns(fx, "flush_interval=1h");
	struct stat st;

	/* the safe-save pattern: write a temp file, rename it over the target */
	put_file(ns, VP_ROOT_INO, "model.pt", "old");
	flush_all(ns);
	put_file(ns, VP_ROOT_INO, "model.pt.tmp", "new");
	assert_int_equal(vp_ns_rename(ns, NULL, VP_ROOT_INO, "model.pt.tmp", VP_ROOT_INO, "model.pt", 0), 0);
	/* a directory filled, then renamed into place (save_pretrained) */
	assert_int_equal(vp_ns_mkdir(ns, NULL, VP_ROOT_INO, "tmp-ckpt", 0755, &st), 0);
	put_file(ns, st.st_ino, "weights.bin", "w");
	assert_int_equal(vp_ns_rename(ns, NULL, VP_ROOT_INO, "tmp-ckpt", VP_ROOT_INO, "ckpt-1", 0), 0);
	put_file(ns, st.st_ino, "config.json", "{}");	/* written after the rename */
	vp_ns_forget(ns, st.st_ino, 1);
	assert_int_equal(vp_ns_rename(ns, NULL, VP_ROOT_INO, "ckpt-1", VP_ROOT_INO, "ckpt-2", 1 /* NOREPLACE */), 0);
	assert_pfs_file(fx, "model.pt", "old");
	flush_all(ns);
	assert_pfs_file(fx, "model.pt", "new");
	assert_pfs_missing(fx, "model.pt.tmp");
	assert_pfs_missing(fx, "tmp-ckpt");
	assert_pfs_missing(fx, "ckpt-1");
	assert_pfs_file(fx, "ckpt-2/weights.bin", "w");
	assert_pfs_file(fx, "ckpt-2/config.json", "{}");
	/* unlink reaches the PFS too */
	assert_int_equal(vp_ns_unlink(ns, NULL, VP_ROOT_INO, "model.pt"), 0);
	flush_all(ns);
	assert_pfs_missing(fx, "model.pt");
}

static void test_loads_existing_pfs_tree_lazily(void **state)
{
	struct fixture *fx = *state;
	struct vp_handle *h;
	struct vp_read rd;
	struct stat st;
	char path[256];
	FILE *f;
	int keep;

	snprintf(path, sizeof(path), "%s/sub", fx->pfs);
	mkdir(path, 0755);
	snprintf(path, sizeof(path), "%s/sub/old.bin", fx->pfs);
	f = fopen(path, "w");
	fputs("from the pfs", f);
	fclose(f);
	open_ns(fx, NULL);
	assert_int_equal(vp_ns_lookup(fx->ns, VP_ROOT_INO, "sub", &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(vp_ns_lookup(fx->ns, st.st_ino, "old.bin", &st), 0);
	assert_int_equal(st.st_size, 12);
	assert_int_equal(vp_ns_open(fx->ns, NULL, st.st_ino, O_RDONLY, &h, &keep), 0);
	assert_int_equal(vp_ns_read(fx->ns, h, 5, 100, &rd), 7);
	assert_memory_equal(rd.seg[0].ptr, "the pfs", 7);
	vp_read_release(&rd);
	vp_ns_release(fx->ns, h);
}

static void test_symlink_on_pfs_cannot_redirect_flush(void **state)
{
	struct fixture *fx = *state;
	struct vp_ns *ns = open_ns(fx, "flush_interval=1h");
	struct stat st;
	char a[256], b[256];

	assert_int_equal(vp_ns_mkdir(ns, NULL, VP_ROOT_INO, "d", 0755, &st), 0);
	flush_all(ns);
	/* someone swaps the PFS directory for a symlink pointing outside */
	snprintf(a, sizeof(a), "%s/d", fx->pfs);
	snprintf(b, sizeof(b), "%s/d.moved", fx->pfs);
	assert_int_equal(rename(a, b), 0);
	assert_int_equal(symlink(fx->outside, a), 0);
	put_file(ns, st.st_ino, "escape.bin", "should stay inside");
	vp_ns_forget(ns, st.st_ino, 1);
	flush_all(ns);	/* the entry is refused and skipped, not retried forever */
	snprintf(a, sizeof(a), "%s/escape.bin", fx->outside);
	assert_int_equal(access(a, F_OK), -1);
	/* and the bytes stay in the cache, unflushed */
	assert_int_equal(vp_ns_lookup(ns, VP_ROOT_INO, "d", &st), 0);
	assert_int_equal(vp_ns_lookup(ns, st.st_ino, "escape.bin", &st), 0);
	{
		char v[16];
		ssize_t n = vp_ns_getxattr(ns, st.st_ino, "user.viperfs.state", v, sizeof(v));

		assert_int_equal(n, 6);
		assert_memory_equal(v, "cached", 6);
	}
}

static void test_crash_leftovers_are_cleared(void **state)
{
	struct fixture *fx = *state;
	char path[256];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", fx->pfs, VP_STAGING_DIR);
	mkdir(path, 0700);
	snprintf(path, sizeof(path), "%s/%s/7-3.tmp", fx->pfs, VP_STAGING_DIR);
	fd = open(path, O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0);
	close(fd);
	open_ns(fx, NULL);
	assert_int_equal(access(path, F_OK), -1);
}

static void test_missing_pfs_is_refused(void **state)
{
	struct vp_config cfg;
	char err[512];

	(void)state;
	vp_config_defaults(&cfg);
	cfg.ram_prefault = 0;
	assert_null(vp_ns_new(&cfg, "/nonexistent/pfs", err, sizeof(err)));
	assert_non_null(strstr(err, "/nonexistent/pfs"));
	assert_non_null(strstr(err, "No such file"));
}

/* An observer that writes down what it heard, one line per call. */
struct heard {
	char log[1024];
	uint64_t ino;		/* the last commit's */
};

static void heard_add(struct heard *h, const char *fmt, ...)
{
	size_t len = strlen(h->log);
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(h->log + len, sizeof(h->log) - len, fmt, ap);
	va_end(ap);
}

static void heard_commit(void *arg, uint64_t ino, uint64_t version,
			 struct vp_data *d)
{
	((struct heard *)arg)->ino = ino;
	heard_add(arg, "commit v%llu %llu;", (unsigned long long)version,
		  (unsigned long long)vp_data_size(d));
}

static void heard_unlink(void *arg, uint64_t ino)
{
	(void)ino;
	heard_add(arg, "unlink;");
}

static void heard_op(void *arg, enum vp_op_kind kind, const char *path,
		     const char *path2, uint32_t mode, uint64_t rdev)
{
	(void)mode;
	(void)rdev;
	heard_add(arg, "op %d %s>%s;", (int)kind, path, path2);
}

static void heard_version(void *arg, const struct vp_ns_entry *e)
{
	struct heard *h = arg;

	/* the version names the file the commit did, by its inode too */
	heard_add(arg, "version %s v%llu%s;", e->path, (unsigned long long)e->version,
		  e->ino == h->ino && e->d && e->type == VP_ENTRY_FILE ? "" : " (not the commit's)");
}

static const struct vp_ns_observer heard_ops = {
	.on_commit = heard_commit,
	.on_unlink = heard_unlink,
	.on_op = heard_op,
	.on_version = heard_version,
};

static void test_observers_hear_changes(void **state)
{
	struct fixture *fx = *state;
	struct vp_ns *ns = open_ns(fx, "flush_interval=1h");
	struct heard a = { "", 0 }, b = { "", 0 };
	char want[512];
	struct stat st;

	assert_int_equal(vp_ns_observe(ns, &heard_ops, &a), 0);
	assert_int_equal(vp_ns_observe(ns, &heard_ops, &b), 0);
	assert_int_equal(vp_ns_mkdir(ns, NULL, VP_ROOT_INO, "d", 0755, &st), 0);
	vp_ns_forget(ns, st.st_ino, 1);
	put_file(ns, VP_ROOT_INO, "f", "abc");
	assert_int_equal(vp_ns_rename(ns, NULL, VP_ROOT_INO, "f", VP_ROOT_INO, "g", 0), 0);
	vp_ns_unobserve(ns, &heard_ops, &b);
	assert_int_equal(vp_ns_unlink(ns, NULL, VP_ROOT_INO, "g"), 0);
	snprintf(want, sizeof(want),
		 "op %d d>;commit v1 3;version f v1;op %d f>g;",
		 (int)VP_OP_MKDIR, (int)VP_OP_RENAME);
	assert_string_equal(b.log, want);
	snprintf(want + strlen(want), sizeof(want) - strlen(want), "op %d g>;unlink;",
		 (int)VP_OP_UNLINK);
	assert_string_equal(a.log, want);
	vp_ns_unobserve(ns, &heard_ops, &a);
}

/* A tier below the cache that holds nothing, with fixed usage. */
static uint64_t empty_size(void *arg, uint64_t ino, uint64_t version)
{
	(void)arg;
	(void)ino;
	(void)version;
	return UINT64_MAX;
}

static ssize_t empty_read(void *arg, uint64_t ino, uint64_t version, void *buf,
			  size_t len, uint64_t off)
{
	(void)arg;
	(void)ino;
	(void)version;
	(void)buf;
	(void)len;
	(void)off;
	return -ENOENT;
}

static void fixed_usage(void *arg, uint64_t *used, uint64_t *budget)
{
	(void)arg;
	*used = 7;
	*budget = 9;
}

static void test_metrics_report_the_tier_below(void **state)
{
	static const struct vp_ns_tier tier = {
		.name = "fake", .size = empty_size, .read = empty_read,
		.usage = fixed_usage,
	};
	struct fixture *fx = *state;
	struct vp_ns *ns = open_ns(fx, NULL);
	char *text = NULL;
	size_t len = 0;
	FILE *out;

	vp_ns_set_tier(ns, &tier, NULL);
	out = open_memstream(&text, &len);
	assert_non_null(out);
	vp_ns_metrics(ns, out);
	fclose(out);
	assert_non_null(strstr(text, "viperfs_cache_bytes{tier=\"fake\"} 7\n"));
	assert_non_null(strstr(text, "viperfs_cache_budget_bytes{tier=\"fake\"} 9\n"));
	assert_null(strstr(text, "viperfs_gpu_mirrors"));	/* the GPU tier's own */
	free(text);
	vp_ns_set_tier(ns, NULL, NULL);
}

static void test_replica_changes_only_by_the_installer(void **state)
{
	struct fixture *fx = *state;
	struct vp_ns *ns = open_ns(fx, "subscribe=127.0.0.1:7000");
	const struct vp_caller installer = { .tid = 4242, .uid = 5, .gid = 6 };
	const struct vp_caller other = { .tid = 4243 };
	struct vp_handle *h;
	struct stat st;
	int keep;

	assert_int_equal(vp_ns_mkdir(ns, NULL, VP_ROOT_INO, "d", 0755, &st), -EROFS);
	vp_ns_set_installer(ns, installer.tid);
	assert_int_equal(vp_ns_mkdir(ns, &other, VP_ROOT_INO, "d", 0755, &st), -EROFS);
	assert_int_equal(vp_ns_mkdir(ns, &installer, VP_ROOT_INO, "d", 0755, &st), 0);
	assert_int_equal(st.st_uid, 5);
	assert_int_equal(st.st_gid, 6);
	vp_ns_forget(ns, st.st_ino, 1);
	assert_int_equal(vp_ns_create(ns, &other, VP_ROOT_INO, "f", 0644,
				      O_CREAT | O_WRONLY, &st, &h), -EROFS);
	assert_int_equal(vp_ns_create(ns, &installer, VP_ROOT_INO, "f", 0644,
				      O_CREAT | O_WRONLY, &st, &h), 0);
	assert_int_equal(vp_ns_release(ns, h), 0);
	assert_int_equal(vp_ns_open(ns, &other, st.st_ino, O_WRONLY, &h, &keep), -EROFS);
	vp_ns_forget(ns, st.st_ino, 1);
	assert_int_equal(vp_ns_rename(ns, &other, VP_ROOT_INO, "f", VP_ROOT_INO, "g", 0),
			 -EROFS);
	assert_int_equal(vp_ns_unlink(ns, &other, VP_ROOT_INO, "f"), -EROFS);
	assert_int_equal(vp_ns_rename(ns, &installer, VP_ROOT_INO, "f", VP_ROOT_INO, "g", 0), 0);
	vp_ns_installed(ns);
	assert_int_equal(vp_ns_unlink(ns, &installer, VP_ROOT_INO, "g"), 0);
}

/*
 * linkat(2) as the flush calls it (this binary's definition comes before
 * libc's): refused while refuse_links is set, like a PFS without links.
 */
static int refuse_links;

int linkat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, int flags)
{
	if (refuse_links) {
		errno = EPERM;
		return -1;
	}
	return (int)syscall(SYS_linkat, olddirfd, oldpath, newdirfd, newpath, flags);
}

static void pfs_stat(struct fixture *fx, const char *rel, struct stat *st)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/%s", fx->pfs, rel);
	if (lstat(path, st))
		fail_msg("'%s' is not on the PFS: %s", rel, strerror(errno));
}

static void test_hard_links_share_an_inode_and_reach_the_pfs(void **state)
{
	struct fixture *fx = *state;
	struct vp_ns *ns = open_ns(fx, "flush_interval=1h");
	struct stat st, dst, a, b;
	uint64_t ino, dir;

	ino = put_file(ns, VP_ROOT_INO, "a", "v1");
	assert_int_equal(vp_ns_mkdir(ns, NULL, VP_ROOT_INO, "d", 0755, &dst), 0);
	dir = dst.st_ino;
	assert_int_equal(vp_ns_link(ns, NULL, ino, dir, "b", &st), 0);
	vp_ns_forget(ns, ino, 1);
	assert_int_equal(st.st_ino, ino);
	assert_int_equal(st.st_nlink, 2);
	assert_int_equal(vp_ns_link(ns, NULL, dir, VP_ROOT_INO, "d2", &st), -EPERM);
	assert_int_equal(vp_ns_link(ns, NULL, ino, VP_ROOT_INO, "d", &st), -EEXIST);
	assert_int_equal(vp_ns_link(ns, NULL, ino, VP_ROOT_INO, ".viperfs-staging", &st), -EPERM);
	assert_int_equal(vp_ns_link(ns, NULL, 999999, VP_ROOT_INO, "x", &st), -ESTALE);
	/* the name is the inode: a version through it is the inode's */
	assert_int_equal(vp_ns_lookup(ns, dir, "b", &st), 0);
	vp_ns_forget(ns, st.st_ino, 1);
	assert_int_equal(st.st_ino, ino);
	assert_int_equal(put_file(ns, dir, "b", "v2"), ino);
	assert_int_equal(vp_ns_path_version(ns, "a"), vp_ns_path_version(ns, "d/b"));
	assert_int_equal(count_log(ns, OP_LINK), 1);
	flush_all(ns);
	assert_pfs_file(fx, "a", "v2");
	assert_pfs_file(fx, "d/b", "v2");
	pfs_stat(fx, "a", &a);
	pfs_stat(fx, "d/b", &b);
	assert_int_equal(a.st_ino, b.st_ino);
	assert_int_equal(a.st_nlink, 2);
	/* the inode's own name goes: it takes the other's place, here and on the PFS */
	assert_int_equal(vp_ns_unlink(ns, NULL, VP_ROOT_INO, "a"), 0);
	assert_int_equal(vp_ns_lookup(ns, VP_ROOT_INO, "a", &st), -ENOENT);
	assert_int_equal(vp_ns_getattr(ns, ino, &st), 0);
	assert_int_equal(st.st_nlink, 1);
	assert_int_equal(put_file(ns, dir, "b", "v3"), ino);
	flush_all(ns);
	assert_pfs_missing(fx, "a");
	assert_pfs_file(fx, "d/b", "v3");
	pfs_stat(fx, "d/b", &b);
	assert_int_equal(b.st_nlink, 1);
	/* and the last name: the inode is gone */
	assert_int_equal(vp_ns_unlink(ns, NULL, dir, "b"), 0);
	assert_int_equal(vp_ns_getattr(ns, ino, &st), 0);	/* the flush log still holds it */
	assert_int_equal(st.st_nlink, 0);
	assert_int_equal(vp_ns_link(ns, NULL, ino, dir, "back", &st), -ENOENT);
	flush_all(ns);
	assert_pfs_missing(fx, "d/b");
}

static void test_a_pfs_without_links_gets_copies(void **state)
{
	struct fixture *fx = *state;
	struct vp_ns *ns = open_ns(fx, "flush_interval=1h");
	struct stat st, a, b;
	uint64_t ino;

	refuse_links = 1;
	ino = put_file(ns, VP_ROOT_INO, "a", "one");
	assert_int_equal(vp_ns_link(ns, NULL, ino, VP_ROOT_INO, "b", &st), 0);
	vp_ns_forget(ns, ino, 1);
	flush_all(ns);
	assert_pfs_file(fx, "b", "one");
	put_file(ns, VP_ROOT_INO, "a", "two");
	flush_all(ns);
	refuse_links = 0;
	assert_pfs_file(fx, "a", "two");
	assert_pfs_file(fx, "b", "two");	/* copied again after the new version */
	pfs_stat(fx, "a", &a);
	pfs_stat(fx, "b", &b);
	assert_int_not_equal(a.st_ino, b.st_ino);
	assert_int_equal(b.st_nlink, 1);
	assert_int_equal(a.st_mode, b.st_mode);
}

static void test_a_remount_joins_the_names_of_one_pfs_inode(void **state)
{
	struct fixture *fx = *state;
	struct vp_ns *ns = open_ns(fx, "flush_interval=1h");
	struct stat st, b;
	uint64_t ino;

	ino = put_file(ns, VP_ROOT_INO, "a", "v1");
	assert_int_equal(vp_ns_link(ns, NULL, ino, VP_ROOT_INO, "b", &st), 0);
	vp_ns_forget(ns, ino, 1);
	put_file(ns, VP_ROOT_INO, "c", "alone");
	vp_ns_free(ns);		/* flushes */
	ns = open_ns(fx, "flush_interval=1h");
	assert_int_equal(vp_ns_lookup(ns, VP_ROOT_INO, "a", &st), 0);
	assert_int_equal(vp_ns_lookup(ns, VP_ROOT_INO, "b", &b), 0);
	assert_int_equal(st.st_ino, b.st_ino);
	assert_int_equal(b.st_nlink, 2);
	vp_ns_forget(ns, st.st_ino, 2);
	assert_int_equal(vp_ns_lookup(ns, VP_ROOT_INO, "c", &st), 0);
	vp_ns_forget(ns, st.st_ino, 1);
	assert_int_not_equal(st.st_ino, b.st_ino);
	assert_int_equal(st.st_nlink, 1);
	put_file(ns, VP_ROOT_INO, "b", "v2");
	assert_int_equal(vp_ns_path_version(ns, "a"), vp_ns_path_version(ns, "b"));
}

/* A file made by the consumer's installer, as its install does. */
static uint64_t install_file(struct vp_ns *ns, const struct vp_caller *who, const char *name,
			     const char *content)
{
	struct vp_handle *h;
	struct stat st;

	assert_int_equal(vp_ns_create(ns, who, VP_ROOT_INO, name, 0644, O_CREAT | O_WRONLY,
				      &st, &h), 0);
	vp_ns_forget(ns, st.st_ino, 1);
	assert_int_equal(vp_ns_write(ns, h, content, strlen(content), 0), (ssize_t)strlen(content));
	assert_int_equal(vp_ns_release(ns, h), 0);
	return st.st_ino;
}

static void test_an_install_over_one_name_takes_them_all(void **state)
{
	struct fixture *fx = *state;
	struct vp_ns *ns = open_ns(fx, "subscribe=127.0.0.1:7000");
	const struct vp_caller installer = { .tid = 4242 };
	struct vp_data *d;
	struct stat st, a, b;
	uint64_t ino;

	vp_ns_set_installer(ns, installer.tid);
	ino = install_file(ns, &installer, "a", "old");
	assert_int_equal(vp_ns_link(ns, NULL, ino, VP_ROOT_INO, "b", &st), -EROFS);
	assert_int_equal(vp_ns_link(ns, &installer, ino, VP_ROOT_INO, "b", &st), 0);
	vp_ns_forget(ns, ino, 1);
	install_file(ns, &installer, "src", "new!");
	d = vp_ns_path_data(ns, "src");
	assert_non_null(d);
	/* over b, a link node: the new inode has both names */
	assert_int_equal(vp_ns_install_hidden(ns, "7", d, 5, 0, 0644), 0);
	vp_data_put(d);
	{
		struct vp_node *inc;
		uint64_t inc_ino;

		pthread_mutex_lock(&ns->lock);
		inc = vp_resolve_locked(ns, ".viperfs-incoming");
		assert_non_null(inc);
		inc_ino = inc->ino;
		pthread_mutex_unlock(&ns->lock);
		assert_int_equal(vp_ns_rename(ns, &installer, inc_ino, "7", VP_ROOT_INO, "b", 0), 0);
	}
	vp_ns_installed(ns);
	assert_int_equal(vp_ns_lookup(ns, VP_ROOT_INO, "a", &a), 0);
	assert_int_equal(vp_ns_lookup(ns, VP_ROOT_INO, "b", &b), 0);
	vp_ns_forget(ns, a.st_ino, 1);
	vp_ns_forget(ns, b.st_ino, 1);
	assert_int_equal(a.st_ino, b.st_ino);
	assert_int_not_equal(a.st_ino, ino);
	assert_int_equal(a.st_nlink, 2);
	assert_int_equal(a.st_size, 4);
	assert_int_equal(vp_ns_path_version(ns, "a"), 5);
	/* the old inode has no name left (a reference may keep it a while) */
	assert_true(vp_ns_getattr(ns, ino, &st) == -ESTALE || st.st_nlink == 0);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_name_validation),
		T(test_overlong_path_is_refused),
		T(test_versions_and_snapshot_readers),
		T(test_pfs_copy_refuses_fifos_and_oversized_files),
		T(test_a_bad_epoch_file_is_ignored),
		T(test_epochs_floors_and_taking_back),
		T(test_coalescing_latest),
		T(test_flush_all_keeps_every_version),
		T(test_flush_every_n),
		T(test_renames_replay_in_order),
		T(test_loads_existing_pfs_tree_lazily),
		T(test_symlink_on_pfs_cannot_redirect_flush),
		T(test_crash_leftovers_are_cleared),
		T(test_observers_hear_changes),
		T(test_metrics_report_the_tier_below),
		T(test_replica_changes_only_by_the_installer),
		T(test_hard_links_share_an_inode_and_reach_the_pfs),
		T(test_a_pfs_without_links_gets_copies),
		T(test_a_remount_joins_the_names_of_one_pfs_inode),
		T(test_an_install_over_one_name_takes_them_all),
		cmocka_unit_test(test_missing_pfs_is_refused),
	};
	return cmocka_run_group_tests_name("ns", tests, NULL, NULL);
}
