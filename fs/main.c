/*
 * main: the viperfs daemon.
 *
 *   viperfs [-f] [-o opt[,opt...]] PFS_DIR MOUNTPOINT
 *
 * Without -f the daemon forks at once; the parent waits until the child
 * has mounted (or failed, printing why) and exits with its status, so
 * "viperfs ... && use-the-mount" works in scripts.
 *
 * DESIGN: the daemon is a struct daemon and a table of start steps, each
 * with its stop (libfabric's xnet_endpoint unwinds the same way): main()
 * checks every option, runs the steps in order, serves, and stops the
 * started steps in reverse order, once, whether a start failed or the
 * mount was unmounted.  Nothing is mounted before all options are known
 * to be good.
 */
#define FUSE_USE_VERSION 314
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <dirent.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include "../engine/config.h"
#include "../engine/ctl.h"
#include "../engine/hook.h"
#include "../engine/gpu.h"
#include "../engine/log.h"
#include "../engine/metrics.h"
#include "../engine/ns.h"
#include "../engine/repl.h"
#include "ll.h"
#include "utab.h"

#include "../engine/version.h"

/*
 * FUSE mount options passed through to libfuse; any other name is a typo
 * the user should hear about, not a vague libfuse error.
 */
static int check_passthru(const char *opts, char *err, size_t errlen)
{
	static const char *const known[] = {
		"allow_other", "allow_root", "auto_unmount", "default_permissions",
		"ro", "rw", "nosuid", "suid", "nodev", "noexec", "exec",
		"atime", "noatime", "relatime", "fsname", "subtype", NULL,
	};
	char *copy = strdup(opts), *save = NULL, *tok;
	int rc = 0;

	if (!copy)
		return -1;
	for (tok = strtok_r(copy, ",", &save); tok && !rc;
	     tok = strtok_r(NULL, ",", &save)) {
		size_t len = strcspn(tok, "=");
		int ok = 0;

		for (int i = 0; known[i] && !ok; i++)
			ok = strlen(known[i]) == len && !strncmp(tok, known[i], len);
		if (!ok && !strcmp(tok, "dev")) {
			/* device numbers come from the producer and the PFS: never opened here */
			snprintf(err, errlen, "'dev' is refused: a viperfs mount is always nodev (its device nodes carry other nodes' numbers)");
			rc = -1;
		} else if (!ok) {
			snprintf(err, errlen, "unknown option '%.*s'; 'viperfs --help' lists them",
				 (int)len, tok);
			rc = -1;
		}
	}
	free(copy);
	return rc;
}

/* The short usage, for a usage error. */
static void usage_short(FILE *out)
{
	fprintf(out,
		"usage: viperfs [-f] [-d] [-o opt[,opt...]] PFS_DIR MOUNTPOINT\n"
		"       viperfs [-f] -o config=FILE\n"
		"'viperfs --help' lists the options; man viperfs has the details.\n");
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: viperfs [-f] [-d] [-o opt[,opt...]] PFS_DIR MOUNTPOINT\n"
		"       viperfs [-f] -o config=FILE      (FILE names pfs_dir and mountpoint)\n"
		"\n"
		"Mounts PFS_DIR (a directory on the parallel file system) at MOUNTPOINT\n"
		"through a RAM cache; checkpoints reach PFS_DIR in the background.\n"
		"\n"
		"  -f                 stay in the foreground, log to stderr\n"
		"  -d                 debug: foreground and log_level=debug\n"
		"  -o opt,...         options below, or FUSE's own (allow_other, ...)\n"
		"  -h, --help         this text\n"
		"  -V, --version      the versions of viperfs and libfuse\n"
		"\n");
	vp_config_help(out);
	fprintf(out, "\nExit status: 0 mounted (or a clean stop with -f), 1 the mount failed,\n"
		     "2 a usage or option error (nothing was mounted).\n");
}

/* Tells the waiting parent how the start went; "" means mounted. */
static void report_start(int fd, const char *msg)
{
	if (fd < 0)
		return;
	if (write(fd, msg, strlen(msg) + 1) < 0) {
		/* the parent is gone; nothing to tell */
	}
	close(fd);
}

/* Waits for the child's report.  Returns the exit status to use. */
static int wait_for_child(int fd)
{
	char msg[1024];
	ssize_t n, used = 0;

	while ((n = read(fd, msg + used, sizeof(msg) - 1 - (size_t)used)) > 0)
		used += n;
	msg[used] = '\0';
	if (used == 0) {
		fprintf(stderr, "viperfs: the daemon died before mounting; see the system log\n");
		return 1;
	}
	if (msg[0]) {
		fprintf(stderr, "viperfs: %s\n", msg);
		return 1;
	}
	return 0;
}

/*
 * Raises the mount's read-ahead to 4 MiB (the bdi is found in
 * /proc/self/mountinfo): four 1 MiB READs in flight measured best for cold
 * reads here (docs/design.md).
 */
static void raise_read_ahead(const char *mountpoint)
{
	char path[128];
	dev_t dev;
	FILE *f;

	if (!vpfs_mount_of(mountpoint, NULL, &dev))
		return;
	snprintf(path, sizeof(path), "/sys/class/bdi/%u:%u/read_ahead_kb", major(dev), minor(dev));
	f = fopen(path, "we");
	if (f) {
		fputs("4096", f);
		if (fclose(f))
			vp_log(LOG_DEBUG, "fs", "could not raise read_ahead_kb: %s", strerror(errno));
	}
}

/*
 * Tells a supervisor that the mount is ready, with the sd_notify protocol
 * (systemd Type=notify, and the tests): a datagram "READY=1" to the Unix
 * socket named by $NOTIFY_SOCKET.  No-op without it.
 */
static void notify_ready(void)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	char msg[64];
	int fd;

	if (!path || !*path || strlen(path) >= sizeof(addr.sun_path))
		return;
	strcpy(addr.sun_path, path);
	if (addr.sun_path[0] == '@')
		addr.sun_path[0] = '\0';	/* abstract namespace */
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	snprintf(msg, sizeof(msg), "READY=1\nMAINPID=%d", (int)getpid());
	if (sendto(fd, msg, strlen(msg), 0, (struct sockaddr *)&addr,
		   (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path))) < 0)
		vp_log(LOG_WARNING, "fs", "could not notify '%s' of readiness: %s",
		       path, strerror(errno));
	close(fd);
}

/* Where default control sockets live: /run/viperfs for root, else $XDG_RUNTIME_DIR or /tmp. */
static const char *control_dir(void)
{
	const char *xdg = getenv("XDG_RUNTIME_DIR");

	if (geteuid() == 0)
		return "/run/viperfs";
	return xdg && *xdg ? xdg : "/tmp";
}

static int default_control_path(char *buf, size_t len)
{
	const char *dir = control_dir();

	if (mkdir(dir, 0755) && errno != EEXIST)
		return -errno;
	snprintf(buf, len, "%s/viperfs-%d.sock", dir, (int)getpid());
	return 0;
}

/* The daemon: what main() starts, in the order of steps[] below. */
struct daemon {
	struct vp_config cfg;
	char pfs_dir[PATH_MAX];
	char mountpoint[PATH_MAX];
	char passthru[2048];		/* FUSE's own options, for libfuse */
	char options[4096];		/* every -o list as given, for viperctl status */
	const char *prog;		/* argv[0], for libfuse */
	int foreground;
	int debug;			/* -d: log_level=debug, whatever -o says */
	int report_fd;			/* the waiting parent's pipe, -1: none */
	int served;			/* the mount was ready and served */
	int rc;				/* the exit status */
	struct vp_ns *ns;
	struct vp_gpu *gpu;
	struct vp_metrics_server *metrics;
	struct fuse_args args;
	struct fuse_session *se;
	struct vp_repl *repl;		/* protected by repl_lock, for the metrics thread */
	pthread_mutex_t repl_lock;
	struct vp_hook *hook;
	struct vp_ctl *ctl;
	int pfs_lock_fd;		/* this node's claim on the PFS directory, -1: none */
	char pfs_lock_path[PATH_MAX + 64];
	char err[PATH_MAX + 512];	/* why a start step failed */
};

/*
 * Parses one -o list into d->cfg (FUSE's own options go to d->passthru).
 * Returns 0, or the exit status with the message printed.
 */
static int parse_opts(struct daemon *d, const char *opts)
{
	if (!opts) {
		fprintf(stderr, "viperfs: -o needs options\n");
		return 2;
	}
	if (vp_config_parse_opts(&d->cfg, opts, d->passthru, sizeof(d->passthru),
				 d->err, sizeof(d->err))) {
		fprintf(stderr, "viperfs: %s\n", d->err);
		return 2;
	}
	/* only shown: a list too long for the buffer is cut */
	snprintf(d->options + strlen(d->options), sizeof(d->options) - strlen(d->options),
		 "%s%s", *d->options ? "," : "", opts);
	return 0;
}

/*
 * Parses the command line into d, the two positional arguments into pos.
 * Returns -1 to go on, else the exit status (--help, -V, a bad argument).
 */
static int parse_args(struct daemon *d, int argc, char **argv, const char *pos[2])
{
	int npos = 0, rc;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(a, "-V") || !strcmp(a, "--version")) {
			printf("viperfs %s (libfuse %s)\n", VP_RELEASE, fuse_pkgversion());
			return 0;
		} else if (!strcmp(a, "-f")) {
			d->foreground = 1;
		} else if (!strcmp(a, "-d")) {
			d->foreground = d->debug = 1;
		} else if (!strncmp(a, "-o", 2)) {
			rc = parse_opts(d, a[2] ? a + 2 : (i + 1 < argc ? argv[++i] : NULL));
			if (rc)
				return rc;
		} else if (a[0] == '-' && a[1]) {
			fprintf(stderr, "viperfs: unknown flag '%s'; see viperfs --help\n", a);
			return 2;
		} else if (npos < 2) {
			pos[npos++] = a;
		} else {
			fprintf(stderr, "viperfs: too many arguments; see viperfs --help\n");
			return 2;
		}
	}
	if (npos == 0 && d->cfg.pfs_dir[0] && d->cfg.mountpoint[0]) {
		pos[npos++] = d->cfg.pfs_dir;	/* a config file that names both */
		pos[npos++] = d->cfg.mountpoint;
	}
	if (npos != 2) {
		fprintf(stderr, "viperfs: %s\n", npos ? "name the mount point too" :
			"name the PFS directory and the mount point");
		usage_short(stderr);
		return 2;
	}
	if (d->debug)
		d->cfg.log_level = LOG_DEBUG;
	return -1;
}

/* 1 if path is the mount point of a viperfs mount (fuse.viperfs) in our mount table. */
static int is_viperfs_mount(const char *path)
{
	int viperfs = 0;

	return vpfs_mount_of(path, &viperfs, NULL) && viperfs;
}

/*
 * Claims the PFS directory for this node: a lock (flock) on a file named
 * by this network namespace and the directory's device and inode, in
 * /run/viperfs (or $XDG_RUNTIME_DIR, /tmp for others).  Two mounts of one
 * PFS directory on a node keep two caches that disagree; on the nodes of
 * a cluster (their own network namespaces, as in the tests) it is shared.
 * The lock goes with the daemon, however it ends.  Returns 0, 1 if
 * another live mount holds it (printed), or 0 with a warning if no lock
 * can be made here.
 */
/*
 * Takes path's lock: 1 held, 0 another holds it, -1 with errno.  A lock
 * file is unlinked by its holder at exit (and by clean_stale_locks), so a
 * lock taken on a file that was unlinked meanwhile is dropped and taken
 * again on the new one.
 */
static int lock_file(const char *path, int *out_fd)
{
	for (int tries = 0; tries < 8; tries++) {
		struct stat held, now;
		int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);

		if (fd < 0)
			return -1;
		if (flock(fd, LOCK_EX | LOCK_NB)) {
			int e = errno;

			close(fd);
			errno = e;
			return e == EWOULDBLOCK ? 0 : -1;
		}
		if (!fstat(fd, &held) && !stat(path, &now) && held.st_ino == now.st_ino &&
		    held.st_dev == now.st_dev) {
			*out_fd = fd;
			return 1;
		}
		close(fd);
	}
	errno = EAGAIN;
	return -1;
}

/* Removes the lock files in dir that nobody holds (daemons killed with -9 left them). */
static void clean_stale_locks(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char path[PATH_MAX];

	if (!d)
		return;
	while ((e = readdir(d))) {
		int fd;

		if (strncmp(e->d_name, "pfs-", 4) || !strstr(e->d_name, ".lock") ||
		    (size_t)snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) >= sizeof(path))
			continue;
		if (lock_file(path, &fd) == 1) {
			unlink(path);	/* under the lock: a claimer re-checks the inode */
			close(fd);
		}
	}
	closedir(d);
}

static int claim_pfs_dir(struct daemon *d)
{
	const char *run = geteuid() == 0 ? "/run" : getenv("XDG_RUNTIME_DIR");
	struct stat pfs, net;
	char dir[PATH_MAX];
	int fd = -1, rc;

	if (stat(d->pfs_dir, &pfs) || stat("/proc/self/ns/net", &net))
		return 0;
	snprintf(dir, sizeof(dir), "%s/viperfs%s", run && *run ? run : "/tmp",
		 run && *run ? "" : "-locks");
	if (mkdir(dir, 0755) && errno != EEXIST) {
		fprintf(stderr, "viperfs: warning: cannot make '%s' (%s): a second mount of this PFS directory on this node is not refused\n",
			dir, strerror(errno));
		return 0;
	}
	clean_stale_locks(dir);
	snprintf(d->pfs_lock_path, sizeof(d->pfs_lock_path), "%s/pfs-%llu-%llu-%llu.lock", dir,
		 (unsigned long long)net.st_ino, (unsigned long long)pfs.st_dev,
		 (unsigned long long)pfs.st_ino);
	rc = lock_file(d->pfs_lock_path, &fd);
	if (rc < 0) {
		fprintf(stderr, "viperfs: warning: cannot lock '%s' (%s): a second mount of this PFS directory on this node is not refused\n",
			d->pfs_lock_path, strerror(errno));
		return 0;
	}
	if (rc == 0) {
		fprintf(stderr, "viperfs: the PFS directory '%s' is served by another viperfs mount on this node; two would keep caches that disagree (unmount the other first)\n",
			d->pfs_dir);
		return 1;
	}
	d->pfs_lock_fd = fd;	/* held until exit (the child inherits it) */
	return 0;
}

/* The daemon's last step: the claim's file goes, then the claim (a claimer re-checks the inode). */
static void release_pfs_dir(struct daemon *d)
{
	if (d->pfs_lock_fd < 0)
		return;
	unlink(d->pfs_lock_path);
	close(d->pfs_lock_fd);
	d->pfs_lock_fd = -1;
}

/* The mount point: a directory, not a viperfs mount already, and empty unless nonempty=1. */
static int check_mountpoint(struct daemon *d)
{
	struct stat st;
	DIR *dir;
	struct dirent *e;
	int empty = 1;

	if (stat(d->mountpoint, &st) || !S_ISDIR(st.st_mode)) {
		fprintf(stderr, "viperfs: mount point '%s' is not a directory\n", d->mountpoint);
		return 1;
	}
	if (is_viperfs_mount(d->mountpoint)) {
		fprintf(stderr, "viperfs: '%s' is a viperfs mount already (unmount it first: fusermount3 -u '%s')\n",
			d->mountpoint, d->mountpoint);
		return 1;
	}
	if (d->cfg.nonempty)
		return 0;
	dir = opendir(d->mountpoint);
	if (!dir) {
		fprintf(stderr, "viperfs: mount point '%s': %s\n", d->mountpoint, strerror(errno));
		return 1;
	}
	while (empty && (e = readdir(dir)))
		empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
	closedir(dir);
	if (!empty) {
		fprintf(stderr, "viperfs: mount point '%s' is not empty: its files would be hidden under the mount (empty it, or add -o nonempty=1)\n",
			d->mountpoint);
		return 1;
	}
	return 0;
}

/*
 * Checks everything that can be checked before the mount: the options
 * together, FUSE's options, the two directories.  Returns -1 to go on,
 * else the exit status with the message printed.
 */
static int check_args(struct daemon *d, const char *pos[2])
{
	if (vp_config_check(&d->cfg, d->err, sizeof(d->err)) ||
	    check_passthru(d->passthru, d->err, sizeof(d->err))) {
		fprintf(stderr, "viperfs: %s\n", d->err);
		return 2;
	}
	if (!realpath(pos[0], d->pfs_dir)) {
		fprintf(stderr, "viperfs: PFS directory '%s': %s; create it or name another\n",
			pos[0], strerror(errno));
		return 1;
	}
	if (!strncmp(pos[1], "/dev/fd/", 8)) {
		/* libfuse's convention: a /dev/fuse descriptor a privileged parent mounted */
		snprintf(d->mountpoint, sizeof(d->mountpoint), "%s", pos[1]);
	} else if (!realpath(pos[1], d->mountpoint)) {
		if (errno == ENOTCONN)
			fprintf(stderr, "viperfs: mount point '%s': a FUSE mount there lost its daemon; unmount it first: fusermount3 -uz '%s'\n",
				pos[1], pos[1]);
		else
			fprintf(stderr, "viperfs: mount point '%s': %s\n", pos[1], strerror(errno));
		return 1;
	}
	if (!strcmp(d->pfs_dir, d->mountpoint)) {
		fprintf(stderr, "viperfs: the mount point must not be the PFS directory itself\n");
		return 1;
	}
	if (strncmp(d->mountpoint, "/dev/fd/", 8) && check_mountpoint(d))
		return 1;
	if (claim_pfs_dir(d))
		return 1;
	return -1;
}

/*
 * Without -f: forks; the parent waits for the child's report and exits
 * with its status.  Returns -1 in the child (or with -f), else the
 * parent's exit status.
 */
static int daemonize(struct daemon *d)
{
	int pipefd[2];
	pid_t pid;

	if (d->foreground)
		return -1;
	if (pipe2(pipefd, O_CLOEXEC)) {
		perror("viperfs: pipe");
		return 1;
	}
	pid = fork();
	if (pid < 0) {
		perror("viperfs: fork");
		return 1;
	}
	if (pid > 0) {
		close(pipefd[1]);
		return wait_for_child(pipefd[0]);
	}
	close(pipefd[0]);
	d->report_fd = pipefd[1];
	setsid();
	return -1;
}

/* ---- start steps: each returns 0, or -1 with d->err set ---- */

/* mkdir -p: 0, or -1 with errno. */
static int mkdir_p(const char *path, mode_t mode)
{
	char buf[PATH_MAX];

	if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, mode) && errno != EEXIST)
			return -1;
		*p = '/';
	}
	return mkdir(buf, mode) && errno != EEXIST ? -1 : 0;
}

/*
 * Where a daemon logs when syslog is not reachable: $XDG_STATE_HOME's
 * viperfs/ if set, else /var/log for root, else ~/.local/state/viperfs.
 */
static int fallback_log_path(char *buf, size_t len)
{
	const char *xdg = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
	char dir[PATH_MAX];

	if (xdg && *xdg)
		snprintf(dir, sizeof(dir), "%s/viperfs", xdg);
	else if (geteuid() == 0)
		snprintf(dir, sizeof(dir), "/var/log");
	else if (home && *home)
		snprintf(dir, sizeof(dir), "%s/.local/state/viperfs", home);
	else
		return -ENOENT;
	if (strcmp(dir, "/var/log") && mkdir_p(dir, 0700))
		return -errno;
	if ((size_t)snprintf(buf, len, "%s/viperfs.log", dir) >= len)
		return -ENAMETOOLONG;
	return 0;
}

static int start_log(struct daemon *d)
{
	char why[PATH_MAX + 64];

	vp_log_set_format(!strcmp(d->cfg.log_format, "json"), !strcmp(d->cfg.log_time, "utc"));
	if (!d->cfg.log_file[0] && !d->foreground &&
	    vp_log_syslog_reachable(why, sizeof(why))) {
		/* said once on stderr, which the waiting parent still shares */
		if (fallback_log_path(d->cfg.log_file, sizeof(d->cfg.log_file))) {
			fprintf(stderr, "viperfs: warning: syslog is not reachable (%s), and there is no log file to fall back to: the daemon's log is lost; give -o log_file=FILE\n",
				why);
			d->cfg.log_file[0] = '\0';
		} else {
			fprintf(stderr, "viperfs: warning: syslog is not reachable (%s); logging to %s (-o log_file=FILE chooses)\n",
				why, d->cfg.log_file);
		}
	}
	if (!d->cfg.log_file[0]) {
		vp_log_open(d->foreground ? VP_LOG_STDERR : VP_LOG_SYSLOG, NULL,
			    d->cfg.log_level);
		return 0;
	}
	if (vp_log_open(VP_LOG_FILE, d->cfg.log_file, d->cfg.log_level)) {
		snprintf(d->err, sizeof(d->err), "cannot open log file '%s': %s",
			 d->cfg.log_file, strerror(errno));
		return -1;
	}
	return 0;
}

static void stop_log(struct daemon *d)
{
	(void)d;
	vp_log_close();
}

static int start_ns(struct daemon *d)
{
	d->ns = vp_ns_new(&d->cfg, d->pfs_dir, d->err, sizeof(d->err));
	return d->ns ? 0 : -1;
}

/* Drains the flushes (up to unmount_wait): files left unflushed fail the exit status. */
static void stop_ns(struct daemon *d)
{
	if (vp_ns_free(d->ns))
		d->rc = 1;
	else if (d->served)
		vp_log(LOG_NOTICE, "flush", "everything is on the PFS '%s'", d->pfs_dir);
	d->ns = NULL;
}

/*
 * The gauges of the metrics endpoint (metrics.h's collect), subsystem by
 * subsystem.  Runs on the server's thread: replication comes and goes
 * under d->repl_lock.
 */
static void collect_metrics(void *arg, FILE *out)
{
	struct daemon *d = arg;

	vp_ns_metrics(d->ns, out);
	vp_gpu_metrics(d->gpu, out);
	pthread_mutex_lock(&d->repl_lock);
	vp_repl_metrics(d->repl, out);
	pthread_mutex_unlock(&d->repl_lock);
}

/*
 * The GPU tier: without a usable device the mount works from RAM, and says
 * why.  The namespace mirrors into it (an observer) and reads back from it
 * (the tier below its cache).
 */
static int start_gpu(struct daemon *d)
{
	const char *no_ops = NULL;
	const struct vp_tier_ops *ops;
	char why[512] = "";

	if (!d->cfg.gpu_cache)
		return 0;
	ops = !strcmp(d->cfg.gpu_tier, "ram") ? &vp_tier_ram : vp_tier_gpu_ops(&no_ops);
	if (ops)
		d->gpu = vp_gpu_new(ops, (int)d->cfg.gpu_device, d->cfg.gpu_cache, why, sizeof(why));
	else
		snprintf(why, sizeof(why), "%s", no_ops);
	if (!d->gpu)
		vp_log(LOG_NOTICE, "gpu", "GPU tier off: %s; the mount works from RAM", why);
	if (!d->gpu) {
		vp_ns_set_gpu_off(d->ns, why);
		return 0;
	}
	vp_gpu_attach_pool(d->gpu, vp_ns_pool(d->ns));
	if (vp_ns_observe(d->ns, &vp_gpu_ns_observer, d->gpu)) {
		snprintf(d->err, sizeof(d->err), "too many namespace observers");
		vp_gpu_free(d->gpu);
		d->gpu = NULL;
		return -1;
	}
	vp_ns_set_tier(d->ns, &vp_gpu_ns_tier, d->gpu);
	return 0;
}

static void stop_gpu(struct daemon *d)
{
	vp_ns_unobserve(d->ns, &vp_gpu_ns_observer, d->gpu);
	vp_ns_set_tier(d->ns, NULL, NULL);
	vp_gpu_free(d->gpu);
	d->gpu = NULL;
}

/* Binds the metrics address before the mount, so a taken port fails the start. */
static int start_metrics(struct daemon *d)
{
	if (!d->cfg.metrics[0])
		return 0;
	d->metrics = vp_metrics_serve(d->cfg.metrics, collect_metrics, d,
				      d->err, sizeof(d->err));
	return d->metrics ? 0 : -1;
}

static void stop_metrics(struct daemon *d)
{
	vp_metrics_server_free(d->metrics);
	d->metrics = NULL;
}

static int start_session(struct daemon *d)
{
	char fuse_opts[PATH_MAX + 2200];

	snprintf(fuse_opts, sizeof(fuse_opts),
		 "default_permissions,max_read=%u,fsname=viperfs:%s,subtype=viperfs%s%s",
		 VPFS_MAX_REQUEST, d->pfs_dir, *d->passthru ? "," : "", d->passthru);
	if (fuse_opt_add_arg(&d->args, d->prog) || fuse_opt_add_arg(&d->args, "-o") ||
	    fuse_opt_add_arg(&d->args, fuse_opts)) {
		snprintf(d->err, sizeof(d->err), "out of memory");
		fuse_opt_free_args(&d->args);
		return -1;
	}
	d->se = fuse_session_new(&d->args, &vpfs_ops, sizeof(vpfs_ops), d->ns);
	if (!d->se) {
		snprintf(d->err, sizeof(d->err), "bad FUSE options '%s'", d->passthru);
		fuse_opt_free_args(&d->args);
		return -1;
	}
	if (vpfs_ll_start(d->se, d->ns)) {
		snprintf(d->err, sizeof(d->err), "starting the notifier thread: %s", strerror(errno));
		fuse_session_destroy(d->se);
		d->se = NULL;
		fuse_opt_free_args(&d->args);
		return -1;
	}
	return 0;
}

static void stop_session(struct daemon *d)
{
	vpfs_ll_stop(d->ns);
	fuse_session_destroy(d->se);
	d->se = NULL;
	fuse_opt_free_args(&d->args);
}

static int start_signals(struct daemon *d)
{
	/*
	 * A library loaded with libfabric (libinfinipath, PSM) installs its own
	 * SIGTERM/SIGINT/SIGHUP handler at load time that calls exit(1), and
	 * libfuse only installs its handlers over SIG_DFL: so SIGTERM (systemd
	 * stop, Slurm's job end) would kill the daemon with nothing unmounted
	 * or flushed.  Take those signals back first.
	 */
	signal(SIGTERM, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	/* SIGHUP reopens the log (logrotate), and libfuse leaves a signal that has a handler alone */
	if (vp_log_reopen_on_hup()) {
		snprintf(d->err, sizeof(d->err), "cannot set the SIGHUP handler");
		return -1;
	}
	if (fuse_set_signal_handlers(d->se)) {
		snprintf(d->err, sizeof(d->err), "cannot set signal handlers");
		return -1;
	}
	return 0;
}

static void stop_signals(struct daemon *d)
{
	fuse_remove_signal_handlers(d->se);
}

static int start_mount(struct daemon *d)
{
	char source[PATH_MAX + 16];

	if (fuse_session_mount(d->se, d->mountpoint)) {
		snprintf(d->err, sizeof(d->err),
			 "cannot mount on '%s' (is /dev/fuse there, and fuse3 installed?)",
			 d->mountpoint);
		return -1;
	}
	if (!strncmp(d->mountpoint, "/dev/fd/", 8))
		return 0;	/* mounted by the parent: its mount point is not ours to name */
	raise_read_ahead(d->mountpoint);
	vpfs_clean_stale(control_dir());
	snprintf(source, sizeof(source), "viperfs:%s", d->pfs_dir);
	vpfs_utab_add(source, d->mountpoint);
	return 0;
}

static void stop_mount(struct daemon *d)
{
	if (strncmp(d->mountpoint, "/dev/fd/", 8))
		vpfs_utab_remove(d->mountpoint);
	fuse_session_unmount(d->se);
}

/*
 * Replication, after the mount (a consumer installs versions through it)
 * and before the mount serves requests: it observes the namespace.
 */
static int start_repl(struct daemon *d)
{
	struct vp_repl *r;

	if (!d->cfg.listen[0] && !d->cfg.subscribe[0])
		return 0;
	r = vp_repl_new(d->ns, d->gpu, &d->cfg, d->mountpoint, d->err, sizeof(d->err));
	if (!r)
		return -1;
	if (vp_ns_observe(d->ns, &vp_repl_ns_observer, r)) {
		snprintf(d->err, sizeof(d->err), "too many namespace observers");
		vp_repl_free(r);
		return -1;
	}
	pthread_mutex_lock(&d->repl_lock);
	d->repl = r;
	pthread_mutex_unlock(&d->repl_lock);
	return 0;
}

static void stop_repl(struct daemon *d)
{
	struct vp_repl *r = d->repl;

	if (!r)
		return;
	vp_ns_unobserve(d->ns, &vp_repl_ns_observer, r);
	pthread_mutex_lock(&d->repl_lock);
	d->repl = NULL;
	pthread_mutex_unlock(&d->repl_lock);
	vp_repl_free(r);
}

static int start_hook(struct daemon *d)
{
	if (d->cfg.on_update[0])
		d->hook = vp_hook_start(d->ns, d->cfg.on_update, d->mountpoint);
	return 0;
}

static void stop_hook(struct daemon *d)
{
	vp_hook_stop(d->hook);
	d->hook = NULL;
}

/* The control socket for viperctl: without one the mount works, and says so. */
static int start_ctl(struct daemon *d)
{
	const struct vp_ctl_sources src = { .ns = d->ns, .gpu = d->gpu, .repl = d->repl,
					    .mountpoint = d->mountpoint, .options = d->options };
	char err[PATH_MAX + 512];

	if (!d->cfg.control[0] && default_control_path(d->cfg.control, sizeof(d->cfg.control)))
		vp_log(LOG_WARNING, "ctl", "no place for a control socket; viperctl will not reach this mount");
	if (!d->cfg.control[0])
		return 0;
	d->ctl = vp_ctl_start(&src, d->cfg.control, err, sizeof(err));
	if (d->ctl)
		vp_ns_set_control_path(d->ns, d->cfg.control);
	else
		vp_log(LOG_WARNING, "ctl", "%s; viperctl will not reach this mount", err);
	return 0;
}

static void stop_ctl(struct daemon *d)
{
	vp_ctl_stop(d->ctl);
	d->ctl = NULL;
}

/* The start steps in order; they stop in reverse order. */
static const struct step {
	const char *name;
	int (*start)(struct daemon *d);
	void (*stop)(struct daemon *d);
} steps[] = {
	{ "log", start_log, stop_log },
	{ "namespace", start_ns, stop_ns },
	{ "gpu tier", start_gpu, stop_gpu },
	{ "metrics", start_metrics, stop_metrics },
	{ "fuse session", start_session, stop_session },
	{ "signals", start_signals, stop_signals },
	{ "mount", start_mount, stop_mount },
	{ "replication", start_repl, stop_repl },
	{ "on_update hook", start_hook, stop_hook },
	{ "control socket", start_ctl, stop_ctl },
};

#define N_STEPS (sizeof(steps) / sizeof(steps[0]))

/* Tells the supervisor and the waiting parent that the mount is ready. */
static void report_ready(struct daemon *d)
{
	vp_log(LOG_NOTICE, "fs", "mounted '%s' on '%s'%s (libfuse %s)", d->pfs_dir,
	       d->mountpoint, d->cfg.subscribe[0] ? " (read-only replica)" : "",
	       fuse_pkgversion());
	notify_ready();
	if (d->report_fd >= 0) {
		int devnull = open("/dev/null", O_RDWR);

		if (devnull >= 0) {
			dup2(devnull, 0);
			dup2(devnull, 1);
			dup2(devnull, 2);
			if (devnull > 2)
				close(devnull);
		}
		if (chdir("/")) {
			/* stays where it was: harmless */
		}
		report_start(d->report_fd, "");
		d->report_fd = -1;
	}
}

/* Serves FUSE requests until the unmount; returns the exit status. */
static int serve(struct daemon *d)
{
	struct fuse_loop_config *loop_cfg = fuse_loop_cfg_create();
	int rc;

	fuse_loop_cfg_set_clone_fd(loop_cfg, 0);
	fuse_loop_cfg_set_idle_threads(loop_cfg, 8);
	d->served = 1;
	rc = fuse_session_loop_mt(d->se, loop_cfg);
	fuse_loop_cfg_destroy(loop_cfg);
	vp_log(LOG_NOTICE, "fs", "unmounting '%s'", d->mountpoint);
	/* a stop by signal (libfuse reports its number) is a clean stop */
	if (rc < 0)
		rc = -rc;
	return rc == 0 || rc == SIGTERM || rc == SIGINT || rc == SIGHUP ? 0 : 1;
}

/*
 * Runs the start steps, serves once all have started, and stops the
 * started ones in reverse order.  Returns the exit status.
 */
static int daemon_run(struct daemon *d)
{
	size_t started = 0;

	while (started < N_STEPS && !steps[started].start(d))
		started++;
	if (started == N_STEPS) {
		report_ready(d);
		d->rc = serve(d);
	} else {
		d->rc = 1;
	}
	while (started > 0)
		steps[--started].stop(d);
	if (!d->served) {
		if (d->report_fd >= 0)
			report_start(d->report_fd, d->err);
		else
			fprintf(stderr, "viperfs: %s\n", d->err);
	}
	return d->rc;
}

int main(int argc, char **argv)
{
	static struct daemon d = { .report_fd = -1, .pfs_lock_fd = -1, .args = FUSE_ARGS_INIT(0, NULL),
				   .repl_lock = PTHREAD_MUTEX_INITIALIZER };
	const char *pos[2];
	int rc;

	d.prog = argv[0];
	vp_config_defaults(&d.cfg);
	rc = parse_args(&d, argc, argv, pos);
	if (rc < 0)
		rc = check_args(&d, pos);
	if (rc < 0)
		rc = daemonize(&d);
	if (rc < 0) {
		rc = daemon_run(&d);
		release_pfs_dir(&d);	/* the daemon's; a parent that waited leaves it */
	}
	return rc;
}
