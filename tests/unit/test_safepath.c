/*
 * Unit tests: safepath keeps every operation beneath its root.  Each test
 * gets a fresh temporary directory with "root" (where the operations run)
 * and "outside" next to it, plants symlinks that lead out of root in every
 * position a path can have, and checks after each escape attempt that
 * nothing in "outside" changed.  The tests that mount run in a private
 * mount namespace (as root), so a crash leaves no mount behind.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../engine/safepath.h"

#define MAX_MOUNTS 4
#define SNAPSHOT_LEN 8192
#define SNAPSHOT_LINES 64

struct fixture {
	char base[64];			/* /tmp/vp-safepath-XXXXXX */
	char root[96];			/* base/root: where the operations run */
	char outside[96];		/* base/outside: must never change */
	int root_fd;
	char mounts[MAX_MOUNTS][128];	/* undone in teardown, last first */
	int nmounts;
	char before[SNAPSHOT_LEN];	/* outside, as setup left it */
};

/* 1 once main has made a private mount namespace: only then do tests mount. */
static int private_mounts;

/* Every prefix whose next component would be "outside" if it were followed. */
static const char *const escapes[] = {
	"esc",		/* -> /tmp/.../outside (absolute) */
	"rel",		/* -> ../outside */
	"up/outside",	/* up -> .. */
	"top/outside",	/* top -> /tmp/... (absolute, the base) */
	"d/esc2",	/* a symlink one level down: -> ../../outside */
	"chain",	/* -> esc, a symlink to a symlink */
	"esc/sub",	/* the symlink two components before the last */
};

/* ---- a listing of outside, to compare ---------------------------------- */

static char *snapshot_lines[SNAPSHOT_LINES];
static int snapshot_count;
static size_t snapshot_skip;	/* strlen of the directory listed */

static int snapshot_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	char line[512], extra[80] = "";
	ssize_t n;
	int fd;

	(void)type;
	(void)ftw;
	if (S_ISLNK(st->st_mode)) {
		n = readlink(path, extra, sizeof(extra) - 1);
		extra[n > 0 ? n : 0] = '\0';
	} else if (S_ISREG(st->st_mode) && (fd = open(path, O_RDONLY | O_CLOEXEC)) >= 0) {
		n = read(fd, extra, sizeof(extra) - 1);
		extra[n > 0 ? n : 0] = '\0';
		close(fd);
	}
	snprintf(line, sizeof(line), "'%s' mode %o size %lld ino %llu dev %llu mtime %lld.%09ld "
		 "ctime %lld.%09ld '%s'", path + snapshot_skip, (unsigned int)st->st_mode,
		 (long long)st->st_size, (unsigned long long)st->st_ino,
		 (unsigned long long)st->st_dev, (long long)st->st_mtim.tv_sec,
		 st->st_mtim.tv_nsec, (long long)st->st_ctim.tv_sec, st->st_ctim.tv_nsec, extra);
	if (snapshot_count == SNAPSHOT_LINES)
		return 1;
	snapshot_lines[snapshot_count++] = strdup(line);
	return 0;
}

static int compare_lines(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Lists dir (names, types, sizes, inodes, times, contents) into out, sorted. */
static void snapshot(const char *dir, char *out, size_t len)
{
	size_t off = 0;

	snapshot_count = 0;
	snapshot_skip = strlen(dir);
	assert_int_equal(nftw(dir, snapshot_entry, 16, FTW_PHYS), 0);
	qsort(snapshot_lines, (size_t)snapshot_count, sizeof(char *), compare_lines);
	out[0] = '\0';
	for (int i = 0; i < snapshot_count; i++) {
		int n = snprintf(out + off, len - off, "%s\n", snapshot_lines[i]);

		assert_true(n > 0 && (size_t)n < len - off);
		off += (size_t)n;
		free(snapshot_lines[i]);
	}
}

static void assert_outside_unchanged(const struct fixture *fx, const char *what)
{
	char now[SNAPSHOT_LEN];

	snapshot(fx->outside, now, sizeof(now));
	if (strcmp(now, fx->before))
		fail_msg("%s changed '%s':\nbefore:\n%safter:\n%s", what, fx->outside, fx->before,
			 now);
}

/* Checks an operation's result, and that it left outside as it was. */
static void expect_rc(const struct fixture *fx, int rc, int expected, const char *what,
		      const char *path)
{
	char desc[256];

	snprintf(desc, sizeof(desc), "%s '%s'", what, path);
	if (rc >= 0 && expected < 0 && !strcmp(what, "open"))
		close(rc);
	assert_outside_unchanged(fx, desc);
	if (rc != expected)
		fail_msg("%s: %d (%s), expected %d (%s)", desc, rc, rc < 0 ? strerror(-rc) : "ok",
			 expected, expected < 0 ? strerror(-expected) : "ok");
}

/* The same for an operation that must fail, where the contract names no errno. */
static void expect_refused(const struct fixture *fx, int rc, const char *what, const char *path)
{
	char desc[256];

	snprintf(desc, sizeof(desc), "%s '%s'", what, path);
	if (rc >= 0 && !strcmp(what, "open"))
		close(rc);
	assert_outside_unchanged(fx, desc);
	if (rc >= 0)
		fail_msg("%s: %d, expected it refused", desc, rc);
}

/* ---- fixture ----------------------------------------------------------- */

static void make_file(const char *dir, const char *name, const char *content)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(content, f);
	assert_int_equal(fclose(f), 0);
}

static void make_dir(const char *dir, const char *name)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	assert_int_equal(mkdir(path, 0755), 0);
}

static void make_link(const char *dir, const char *name, const char *target)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	assert_int_equal(symlink(target, path), 0);
}

/* lstat of root/name: 0 and *st, or -errno. */
static int root_lstat(const struct fixture *fx, const char *name, struct stat *st)
{
	return fstatat(fx->root_fd, name, st, AT_SYMLINK_NOFOLLOW) ? -errno : 0;
}

static int setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));
	char target[160];

	if (!fx)
		return -1;
	fx->root_fd = -1;
	*state = fx;	/* teardown frees and cleans up whatever setup got to */
	strcpy(fx->base, "/tmp/vp-safepath-XXXXXX");
	if (!mkdtemp(fx->base))
		return -1;
	snprintf(fx->root, sizeof(fx->root), "%s/root", fx->base);
	snprintf(fx->outside, sizeof(fx->outside), "%s/outside", fx->base);
	if (mkdir(fx->root, 0755) || mkdir(fx->outside, 0755))
		return -1;

	make_file(fx->outside, "secret", "keep\n");
	make_dir(fx->outside, "sub");
	make_file(fx->outside, "sub/inner", "inner\n");

	make_dir(fx->root, "d");
	make_dir(fx->root, "victimdir");
	make_file(fx->root, "victim", "v\n");
	make_link(fx->root, "esc", fx->outside);
	make_link(fx->root, "rel", "../outside");
	make_link(fx->root, "up", "..");
	make_link(fx->root, "top", fx->base);
	make_link(fx->root, "d/esc2", "../../outside");
	make_link(fx->root, "chain", "esc");
	snprintf(target, sizeof(target), "%s/secret", fx->outside);
	make_link(fx->root, "lnk", target);
	make_link(fx->root, "dlnk", fx->outside);
	snprintf(target, sizeof(target), "%s/newfile", fx->outside);
	make_link(fx->root, "dangle", target);

	fx->root_fd = open(fx->root, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fx->root_fd < 0)
		return -1;
	snapshot(fx->outside, fx->before, sizeof(fx->before));
	return 0;
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)st;
	(void)type;
	(void)ftw;
	(void)remove(path);
	return 0;
}

static int teardown(void **state)
{
	struct fixture *fx = *state;

	while (fx->nmounts > 0)
		(void)umount2(fx->mounts[--fx->nmounts], MNT_DETACH);
	if (fx->root_fd >= 0)
		close(fx->root_fd);
	/* FTW_PHYS: never through a symlink; FTW_MOUNT: never into a mount left over */
	if (fx->base[0] && strcmp(fx->base, "/tmp/vp-safepath-XXXXXX"))
		(void)nftw(fx->base, remove_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
	free(fx);
	return 0;
}

/*
 * Mounts source (NULL: a tmpfs) on root/name (made first: a directory, or
 * an empty file for a file's bind mount); skips the test if it cannot.
 */
static void mount_in_root(struct fixture *fx, const char *source, const char *name, int file)
{
	char *at = fx->mounts[fx->nmounts];

	if (!private_mounts)
		skip();
	assert_true(fx->nmounts < MAX_MOUNTS);
	snprintf(at, sizeof(fx->mounts[0]), "%s/%s", fx->root, name);
	if (file)
		make_file(fx->root, name, "");
	else
		make_dir(fx->root, name);
	if (source ? mount(source, at, NULL, MS_BIND, NULL) :
		     mount("tmpfs", at, "tmpfs", 0, "size=1m,mode=0755")) {
		print_message("cannot mount %s on '%s': %s; skipping the test\n",
			      source ? source : "a tmpfs", at, strerror(errno));
		skip();
	}
	fx->nmounts++;
}

/* dir/name into buf, for the tables of prefixes. */
static const char *join(char *buf, size_t len, const char *dir, const char *name)
{
	snprintf(buf, len, "%s/%s", dir, name);
	return buf;
}

/* ---- tests ------------------------------------------------------------- */

static void test_symlink_in_a_directory_does_not_escape(void **state)
{
	struct fixture *fx = *state;
	char path[256], path2[256];
	const char *leaf;
	struct stat st;

	for (size_t i = 0; i < sizeof(escapes) / sizeof(escapes[0]); i++) {
		const char *p = escapes[i];

		join(path, sizeof(path), p, "newdir");
		expect_rc(fx, vp_safepath_mkdir(fx->root_fd, path, 0755), -ELOOP, "mkdir", path);
		join(path, sizeof(path), p, "secret");
		expect_rc(fx, vp_safepath_unlink(fx->root_fd, path, 0), -ELOOP, "unlink", path);
		join(path, sizeof(path), p, "sub");
		expect_rc(fx, vp_safepath_unlink(fx->root_fd, path, AT_REMOVEDIR), -ELOOP,
			  "rmdir", path);
		join(path, sizeof(path), p, "inner");
		expect_rc(fx, vp_safepath_unlink(fx->root_fd, path, 0), -ELOOP, "unlink", path);

		/* rename: the symlink in the source's parent, in the target's, in both */
		join(path, sizeof(path), p, "secret");
		expect_rc(fx, vp_safepath_rename(fx->root_fd, path, "moved"), -ELOOP,
			  "rename from", path);
		join(path, sizeof(path), p, "victim");
		expect_rc(fx, vp_safepath_rename(fx->root_fd, "victim", path), -ELOOP,
			  "rename to", path);
		assert_int_equal(root_lstat(fx, "victim", &st), 0);
		join(path, sizeof(path), p, "secret");
		join(path2, sizeof(path2), p, "moved");
		expect_rc(fx, vp_safepath_rename(fx->root_fd, path, path2), -ELOOP,
			  "rename within", path);

		/* link: the symlink in the source's parent (a link to a file outside), the target's */
		join(path, sizeof(path), p, "secret");
		expect_rc(fx, vp_safepath_link(fx->root_fd, path, "hard"), -ELOOP, "link from", path);
		join(path, sizeof(path), p, "hard");
		expect_rc(fx, vp_safepath_link(fx->root_fd, "victim", path), -ELOOP, "link to", path);

		join(path, sizeof(path), p, "newlink");
		expect_rc(fx, vp_safepath_symlink(fx->root_fd, "/etc/passwd", path), -ELOOP,
			  "symlink", path);
		join(path, sizeof(path), p, "newfile");
		expect_rc(fx, vp_safepath_open(fx->root_fd, path, O_CREAT | O_WRONLY, 0644),
			  -ELOOP, "open", path);
		expect_rc(fx, vp_safepath_open(fx->root_fd, path, O_CREAT | O_EXCL | O_WRONLY,
					       0644), -ELOOP, "open", path);
		join(path, sizeof(path), p, "secret");
		expect_rc(fx, vp_safepath_open(fx->root_fd, path, O_WRONLY | O_TRUNC, 0),
			  -ELOOP, "open", path);
		expect_rc(fx, vp_safepath_open(fx->root_fd, path, O_RDONLY, 0), -ELOOP, "open",
			  path);
		join(path, sizeof(path), p, "a/b/file");
		expect_rc(fx, vp_safepath_mkparents(fx->root_fd, path), -ELOOP, "mkparents",
			  path);
		join(path, sizeof(path), p, "x");
		expect_rc(fx, vp_safepath_parent(fx->root_fd, path, &leaf), -ELOOP, "parent",
			  path);
	}
	/* nothing was made in root either */
	assert_int_equal(root_lstat(fx, "moved", &st), -ENOENT);
	assert_int_equal(root_lstat(fx, "hard", &st), -ENOENT);
	assert_int_equal(root_lstat(fx, "a", &st), -ENOENT);
}

static void test_symlink_as_last_component_is_not_followed(void **state)
{
	struct fixture *fx = *state;
	char target[256];
	struct stat st;
	ssize_t n;

	/* open never follows it, not even to create */
	expect_rc(fx, vp_safepath_open(fx->root_fd, "lnk", O_RDONLY, 0), -ELOOP, "open", "lnk");
	expect_rc(fx, vp_safepath_open(fx->root_fd, "lnk", O_WRONLY | O_TRUNC, 0), -ELOOP,
		  "open", "lnk");
	expect_rc(fx, vp_safepath_open(fx->root_fd, "dangle", O_CREAT | O_WRONLY, 0644), -ELOOP,
		  "open", "dangle");
	/* O_NOFOLLOW | O_DIRECTORY on a symlink: the link is not a directory */
	expect_rc(fx, vp_safepath_open(fx->root_fd, "dlnk", O_RDONLY | O_DIRECTORY, 0), -ENOTDIR,
		  "open", "dlnk");
	expect_rc(fx, vp_safepath_open(fx->root_fd, "d/esc2", O_RDONLY, 0), -ELOOP, "open",
		  "d/esc2");

	/* nor do mkdir, symlink or rmdir */
	expect_rc(fx, vp_safepath_mkdir(fx->root_fd, "dlnk", 0755), -EEXIST, "mkdir", "dlnk");
	expect_rc(fx, vp_safepath_symlink(fx->root_fd, "x", "lnk"), -EEXIST, "symlink", "lnk");
	expect_rc(fx, vp_safepath_unlink(fx->root_fd, "dlnk", AT_REMOVEDIR), -ENOTDIR, "rmdir",
		  "dlnk");

	/* rename moves the link itself, and a rename onto a link replaces the link */
	expect_rc(fx, vp_safepath_rename(fx->root_fd, "lnk", "d/moved"), 0, "rename", "lnk");
	assert_int_equal(root_lstat(fx, "lnk", &st), -ENOENT);
	assert_int_equal(root_lstat(fx, "d/moved", &st), 0);
	assert_true(S_ISLNK(st.st_mode));
	n = readlinkat(fx->root_fd, "d/moved", target, sizeof(target) - 1);
	assert_true(n > 0);
	target[n] = '\0';
	assert_true(!strncmp(target, fx->outside, strlen(fx->outside)));
	expect_rc(fx, vp_safepath_rename(fx->root_fd, "victim", "d/moved"), 0, "rename onto",
		  "d/moved");
	assert_int_equal(root_lstat(fx, "d/moved", &st), 0);
	assert_true(S_ISREG(st.st_mode));
	expect_rc(fx, vp_safepath_rename(fx->root_fd, "victimdir", "dlnk"), -ENOTDIR,
		  "rename onto", "dlnk");
	expect_rc(fx, vp_safepath_rename(fx->root_fd, "dlnk", "d/dlnk"), 0, "rename", "dlnk");

	/* a hard link of a symlink is of the symlink, not of what it points to */
	expect_rc(fx, vp_safepath_link(fx->root_fd, "chain", "d/hard"), 0, "link", "chain");
	assert_int_equal(root_lstat(fx, "d/hard", &st), 0);
	assert_true(S_ISLNK(st.st_mode));
	assert_int_equal(st.st_nlink, 2);
	expect_rc(fx, vp_safepath_unlink(fx->root_fd, "d/hard", 0), 0, "unlink", "d/hard");

	/* unlink removes the link, not what it points to */
	expect_rc(fx, vp_safepath_unlink(fx->root_fd, "d/dlnk", 0), 0, "unlink", "d/dlnk");
	assert_int_equal(root_lstat(fx, "d/dlnk", &st), -ENOENT);
	expect_rc(fx, vp_safepath_unlink(fx->root_fd, "chain", 0), 0, "unlink", "chain");
	expect_rc(fx, vp_safepath_unlink(fx->root_fd, "d/esc2", 0), 0, "unlink", "d/esc2");
	expect_rc(fx, vp_safepath_unlink(fx->root_fd, "esc", 0), 0, "unlink", "esc");
	assert_int_equal(root_lstat(fx, "esc", &st), -ENOENT);
}

static void test_dotdot_is_refused(void **state)
{
	struct fixture *fx = *state;
	static const char *const ups[] = { "..", "../outside", "d/../..", "d/../../outside" };
	char path[256];
	struct stat st;

	for (size_t i = 0; i < sizeof(ups) / sizeof(ups[0]); i++) {
		join(path, sizeof(path), ups[i], "x");
		expect_rc(fx, vp_safepath_mkdir(fx->root_fd, path, 0755), -EXDEV, "mkdir", path);
		expect_rc(fx, vp_safepath_symlink(fx->root_fd, "y", path), -EXDEV, "symlink",
			  path);
		expect_rc(fx, vp_safepath_open(fx->root_fd, path, O_CREAT | O_WRONLY, 0644),
			  -EXDEV, "open", path);
		expect_rc(fx, vp_safepath_rename(fx->root_fd, "victim", path), -EXDEV,
			  "rename to", path);
		join(path, sizeof(path), ups[i], "a/b/file");
		assert_true(vp_safepath_mkparents(fx->root_fd, path) < 0);
		assert_outside_unchanged(fx, "mkparents");
	}
	expect_rc(fx, vp_safepath_unlink(fx->root_fd, "../outside/secret", 0), -EXDEV, "unlink",
		  "../outside/secret");
	expect_rc(fx, vp_safepath_unlink(fx->root_fd, "../outside/sub", AT_REMOVEDIR), -EXDEV,
		  "rmdir", "../outside/sub");
	expect_rc(fx, vp_safepath_open(fx->root_fd, "../outside/secret", O_WRONLY | O_TRUNC, 0),
		  -EXDEV, "open", "../outside/secret");
	expect_rc(fx, vp_safepath_rename(fx->root_fd, "../outside/secret", "stolen"), -EXDEV,
		  "rename from", "../outside/secret");
	assert_int_equal(root_lstat(fx, "stolen", &st), -ENOENT);
	assert_int_equal(root_lstat(fx, "victim", &st), 0);

	/* "." or ".." as the last component, an empty path, a trailing slash */
	expect_rc(fx, vp_safepath_mkdir(fx->root_fd, "..", 0755), -EINVAL, "mkdir", "..");
	expect_rc(fx, vp_safepath_unlink(fx->root_fd, "d/..", AT_REMOVEDIR), -EINVAL, "rmdir",
		  "d/..");
	expect_rc(fx, vp_safepath_unlink(fx->root_fd, "d/.", AT_REMOVEDIR), -EINVAL, "rmdir",
		  "d/.");
	expect_rc(fx, vp_safepath_rename(fx->root_fd, "victim", ".."), -EINVAL, "rename to",
		  "..");
	expect_rc(fx, vp_safepath_rename(fx->root_fd, "d/..", "x"), -EINVAL, "rename from",
		  "d/..");
	expect_rc(fx, vp_safepath_open(fx->root_fd, "..", O_RDONLY | O_DIRECTORY, 0), -EINVAL,
		  "open", "..");
	expect_rc(fx, vp_safepath_mkdir(fx->root_fd, "", 0755), -EINVAL, "mkdir", "");
	expect_rc(fx, vp_safepath_mkdir(fx->root_fd, "d/new/", 0755), -EINVAL, "mkdir",
		  "d/new/");
}

static void test_absolute_path_is_refused(void **state)
{
	struct fixture *fx = *state;
	static const char probe[] = "/vp-safepath-probe";
	char path[256], secret[256];
	struct stat st;
	int rc;

	snprintf(secret, sizeof(secret), "%s/secret", fx->outside);
	join(path, sizeof(path), fx->outside, "x");
	expect_refused(fx, vp_safepath_mkdir(fx->root_fd, path, 0755), "mkdir", path);
	expect_refused(fx, vp_safepath_symlink(fx->root_fd, "y", path), "symlink", path);
	expect_refused(fx, vp_safepath_open(fx->root_fd, path, O_CREAT | O_WRONLY, 0644),
		       "open", path);
	expect_refused(fx, vp_safepath_rename(fx->root_fd, "victim", path), "rename to", path);
	expect_refused(fx, vp_safepath_open(fx->root_fd, secret, O_WRONLY | O_TRUNC, 0),
		       "open", secret);
	expect_refused(fx, vp_safepath_unlink(fx->root_fd, secret, 0), "unlink", secret);
	expect_refused(fx, vp_safepath_rename(fx->root_fd, secret, "stolen"), "rename from",
		       secret);
	assert_int_equal(root_lstat(fx, "stolen", &st), -ENOENT);
	assert_int_equal(root_lstat(fx, "victim", &st), 0);
	join(path, sizeof(path), fx->outside, "a/b/file");
	assert_true(vp_safepath_mkparents(fx->root_fd, path) < 0);
	assert_outside_unchanged(fx, "mkparents");
	assert_true(vp_safepath_mkparents(fx->root_fd, "/a/b") < 0);

	/*
	 * An absolute path of one component names the real "/": it must be
	 * refused too, not be taken as a name in root.
	 */
	if (!lstat(probe, &st))
		skip();		/* someone's own file by that name: leave it alone */
	rc = vp_safepath_mkdir(fx->root_fd, probe, 0755);
	assert_int_equal(lstat(probe, &st), -1);
	if (rc >= 0)
		fail_msg("mkdir of '%s' beneath '%s': %d, expected it refused (root/%s %s)", probe,
			 fx->root, rc, probe + 1,
			 root_lstat(fx, probe + 1, &st) ? "not made" : "made");
	rc = vp_safepath_open(fx->root_fd, probe, O_CREAT | O_WRONLY, 0644);
	if (rc >= 0)
		close(rc);
	assert_int_equal(lstat(probe, &st), -1);
	assert_true(rc < 0);
}

static void test_another_mount_is_not_crossed(void **state)
{
	struct fixture *fx = *state;
	static const char *const paths[] = { "mnt/x", "bind/secret", "bind/sub/inner" };
	char tmpfs_before[SNAPSHOT_LEN], tmpfs_after[SNAPSHOT_LEN], tmpfs[128];
	struct stat st;

	mount_in_root(fx, NULL, "mnt", 0);
	mount_in_root(fx, fx->outside, "bind", 0);	/* outside itself, seen from root */
	snprintf(tmpfs, sizeof(tmpfs), "%s/mnt", fx->root);
	snapshot(tmpfs, tmpfs_before, sizeof(tmpfs_before));

	for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
		const char *p = paths[i];

		expect_rc(fx, vp_safepath_mkdir(fx->root_fd, p, 0755), -EXDEV, "mkdir", p);
		expect_rc(fx, vp_safepath_unlink(fx->root_fd, p, 0), -EXDEV, "unlink", p);
		expect_rc(fx, vp_safepath_unlink(fx->root_fd, p, AT_REMOVEDIR), -EXDEV, "rmdir", p);
		expect_rc(fx, vp_safepath_symlink(fx->root_fd, "/etc/passwd", p), -EXDEV,
			  "symlink", p);
		expect_rc(fx, vp_safepath_open(fx->root_fd, p, O_CREAT | O_WRONLY, 0644), -EXDEV,
			  "open", p);
		expect_rc(fx, vp_safepath_open(fx->root_fd, p, O_WRONLY | O_TRUNC, 0), -EXDEV,
			  "open", p);
		expect_rc(fx, vp_safepath_rename(fx->root_fd, "victim", p), -EXDEV, "rename to",
			  p);
		expect_rc(fx, vp_safepath_rename(fx->root_fd, p, "stolen"), -EXDEV, "rename from",
			  p);
	}
	expect_rc(fx, vp_safepath_mkparents(fx->root_fd, "mnt/a/b/file"), -EXDEV, "mkparents",
		  "mnt/a/b/file");
	expect_rc(fx, vp_safepath_mkparents(fx->root_fd, "bind/a/file"), -EXDEV, "mkparents",
		  "bind/a/file");
	snapshot(tmpfs, tmpfs_after, sizeof(tmpfs_after));
	assert_string_equal(tmpfs_before, tmpfs_after);
	assert_int_equal(root_lstat(fx, "stolen", &st), -ENOENT);
	assert_int_equal(root_lstat(fx, "victim", &st), 0);
}

static void test_mount_point_as_last_component(void **state)
{
	struct fixture *fx = *state;
	char secret[256];

	/*
	 * A mount on the last component is as much another file system as one
	 * on the way: opening it would act outside root (here: truncate
	 * outside/secret through a bind mount of it).
	 */
	snprintf(secret, sizeof(secret), "%s/secret", fx->outside);
	mount_in_root(fx, secret, "bfile", 1);
	mount_in_root(fx, fx->outside, "bdir", 0);
	expect_rc(fx, vp_safepath_open(fx->root_fd, "bfile", O_WRONLY | O_TRUNC, 0), -EXDEV,
		  "open", "bfile");
	expect_rc(fx, vp_safepath_open(fx->root_fd, "bdir", O_RDONLY | O_DIRECTORY, 0), -EXDEV,
		  "open", "bdir");
}

static void test_ordinary_operations_work(void **state)
{
	struct fixture *fx = *state;
	struct stat st, passwd_before, passwd_after;
	char buf[64];
	const char *leaf;
	ssize_t n;
	int fd;

	assert_int_equal(lstat("/etc/passwd", &passwd_before), 0);

	expect_rc(fx, vp_safepath_mkdir(fx->root_fd, "a", 0750), 0, "mkdir", "a");
	assert_int_equal(root_lstat(fx, "a", &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0750);
	expect_rc(fx, vp_safepath_mkdir(fx->root_fd, "a", 0750), -EEXIST, "mkdir", "a");

	/* mkparents makes the directories, not the file, and again is fine */
	expect_rc(fx, vp_safepath_mkparents(fx->root_fd, "a/b/c/file"), 0, "mkparents",
		  "a/b/c/file");
	expect_rc(fx, vp_safepath_mkparents(fx->root_fd, "a/b/c/file"), 0, "mkparents",
		  "a/b/c/file");
	assert_int_equal(root_lstat(fx, "a/b/c", &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(root_lstat(fx, "a/b/c/file", &st), -ENOENT);
	expect_rc(fx, vp_safepath_mkparents(fx->root_fd, "top-level-file"), 0, "mkparents",
		  "top-level-file");

	fd = vp_safepath_open(fx->root_fd, "a/b/c/file", O_CREAT | O_EXCL | O_WRONLY, 0640);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "data", 4), 4);
	assert_int_equal(close(fd), 0);
	fd = vp_safepath_open(fx->root_fd, "a/b/c/file", O_RDONLY, 0);
	assert_true(fd >= 0);
	n = read(fd, buf, sizeof(buf));
	close(fd);
	assert_int_equal(n, 4);
	assert_memory_equal(buf, "data", 4);

	/* rename across directories */
	expect_rc(fx, vp_safepath_rename(fx->root_fd, "a/b/c/file", "d/file2"), 0, "rename",
		  "a/b/c/file");
	assert_int_equal(root_lstat(fx, "a/b/c/file", &st), -ENOENT);
	assert_int_equal(root_lstat(fx, "d/file2", &st), 0);
	assert_int_equal(st.st_size, 4);
	expect_rc(fx, vp_safepath_rename(fx->root_fd, "a/b", "d/b"), 0, "rename", "a/b");
	assert_int_equal(root_lstat(fx, "d/b/c", &st), 0);

	/* a symlink's target is stored as it came, and never followed */
	expect_rc(fx, vp_safepath_symlink(fx->root_fd, "/etc/passwd", "a/pw"), 0, "symlink",
		  "a/pw");
	assert_int_equal(root_lstat(fx, "a/pw", &st), 0);
	assert_true(S_ISLNK(st.st_mode));
	n = readlinkat(fx->root_fd, "a/pw", buf, sizeof(buf) - 1);
	assert_int_equal(n, 11);
	buf[n] = '\0';
	assert_string_equal(buf, "/etc/passwd");
	expect_rc(fx, vp_safepath_open(fx->root_fd, "a/pw", O_WRONLY | O_TRUNC, 0), -ELOOP,
		  "open", "a/pw");
	expect_rc(fx, vp_safepath_symlink(fx->root_fd, "../../outside/secret", "d/rel"), 0,
		  "symlink", "d/rel");
	expect_rc(fx, vp_safepath_unlink(fx->root_fd, "a/pw", 0), 0, "unlink", "a/pw");
	assert_int_equal(lstat("/etc/passwd", &passwd_after), 0);
	assert_true(S_ISREG(passwd_after.st_mode));
	assert_int_equal(passwd_after.st_ino, passwd_before.st_ino);
	assert_int_equal(passwd_after.st_size, passwd_before.st_size);
	assert_int_equal(passwd_after.st_mtim.tv_sec, passwd_before.st_mtim.tv_sec);
	assert_int_equal(passwd_after.st_mtim.tv_nsec, passwd_before.st_mtim.tv_nsec);
	assert_int_equal(passwd_after.st_ctim.tv_sec, passwd_before.st_ctim.tv_sec);
	assert_int_equal(passwd_after.st_ctim.tv_nsec, passwd_before.st_ctim.tv_nsec);

	/* the parent of a path, and where its last component starts */
	fd = vp_safepath_parent(fx->root_fd, "d/b/c", &leaf);
	assert_true(fd >= 0);
	assert_string_equal(leaf, "c");
	assert_int_equal(fstatat(fd, leaf, &st, AT_SYMLINK_NOFOLLOW), 0);
	assert_true(S_ISDIR(st.st_mode));
	close(fd);
	fd = vp_safepath_parent(fx->root_fd, "victim", &leaf);
	assert_true(fd >= 0);
	assert_string_equal(leaf, "victim");
	close(fd);

	expect_rc(fx, vp_safepath_unlink(fx->root_fd, "d/file2", 0), 0, "unlink", "d/file2");
	expect_rc(fx, vp_safepath_unlink(fx->root_fd, "d/b/c", AT_REMOVEDIR), 0, "rmdir", "d/b/c");
	expect_rc(fx, vp_safepath_unlink(fx->root_fd, "d/b", 0), -EISDIR, "unlink", "d/b");
	expect_rc(fx, vp_safepath_unlink(fx->root_fd, "d", AT_REMOVEDIR), -ENOTEMPTY, "rmdir",
		  "d");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_symlink_in_a_directory_does_not_escape,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_symlink_as_last_component_is_not_followed,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_dotdot_is_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_absolute_path_is_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_another_mount_is_not_crossed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_mount_point_as_last_component, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_ordinary_operations_work, setup, teardown),
	};

	umask(022);
	/* mounts made here stay here, and go with the process however it ends */
	if (!unshare(CLONE_NEWNS) && !mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
		private_mounts = 1;
	else
		fprintf(stderr, "test_safepath: no private mount namespace (%s); "
			"the tests that mount are skipped\n", strerror(errno));
	return cmocka_run_group_tests_name("safepath", tests, NULL, NULL);
}
