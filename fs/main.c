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
		"ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec",
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
		if (!ok) {
			snprintf(err, errlen, "unknown option '%.*s'; 'viperfs --help' lists them",
				 (int)len, tok);
			rc = -1;
		}
	}
	free(copy);
	return rc;
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
		"    -f          stay in the foreground, log to stderr\n"
		"    -d          debug: foreground and log_level=debug\n"
		"    -o opt,...  options below, or FUSE's own (allow_other, ...)\n"
		"    -h, --help  this text\n"
		"    -V          version\n\n");
	vp_config_help(out);
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
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char line[4096], path[128];
	unsigned int major, minor;
	int found = 0;

	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		char mnt[PATH_MAX];

		if (sscanf(line, "%*u %*u %u:%u %*s %4095s", &major, &minor, mnt) == 3 &&
		    !strcmp(mnt, mountpoint))
			found = 1;	/* the last match is the newest mount */
	}
	fclose(f);
	if (!found)
		return;
	snprintf(path, sizeof(path), "/sys/class/bdi/%u:%u/read_ahead_kb", major, minor);
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

static int default_control_path(char *buf, size_t len)
{
	const char *dir = "/run/viperfs";

	if (geteuid() != 0) {
		const char *xdg = getenv("XDG_RUNTIME_DIR");

		dir = xdg && *xdg ? xdg : "/tmp";
	}
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
		usage(stderr);
		return 2;
	}
	if (d->debug)
		d->cfg.log_level = LOG_DEBUG;
	return -1;
}

/* Undoes /proc/self/mountinfo's octal escapes (\040 for a space) in place. */
static void mountinfo_unescape(char *s)
{
	char *o = s;

	for (; *s; s++, o++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
		    s[3] >= '0' && s[3] <= '7') {
			*o = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 3;
		} else {
			*o = *s;
		}
	}
	*o = '\0';
}

/* 1 if path is the mount point of a viperfs mount (fuse.viperfs) in our mount table. */
static int is_viperfs_mount(const char *path)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL;
	size_t cap = 0;
	int found = 0;

	if (!f)
		return 0;
	while (!found && getline(&line, &cap, f) > 0) {
		char mnt[PATH_MAX], *sep = strstr(line, " - ");
		char fstype[64];

		/* id parent major:minor root MOUNT_POINT ... - FSTYPE SOURCE ... */
		if (!sep || sscanf(line, "%*s %*s %*s %*s %4095s", mnt) != 1 ||
		    sscanf(sep + 3, "%63s", fstype) != 1)
			continue;
		mountinfo_unescape(mnt);
		found = !strcmp(mnt, path) && !strcmp(fstype, "fuse.viperfs");
	}
	free(line);
	fclose(f);
	return found;
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
static int claim_pfs_dir(struct daemon *d)
{
	const char *run = geteuid() == 0 ? "/run" : getenv("XDG_RUNTIME_DIR");
	struct stat pfs, net;
	char dir[PATH_MAX], path[PATH_MAX + 64];
	int fd;

	if (stat(d->pfs_dir, &pfs) || stat("/proc/self/ns/net", &net))
		return 0;
	snprintf(dir, sizeof(dir), "%s/viperfs%s", run && *run ? run : "/tmp",
		 run && *run ? "" : "-locks");
	if (mkdir(dir, 0755) && errno != EEXIST) {
		fprintf(stderr, "viperfs: warning: cannot make '%s' (%s): a second mount of this PFS directory on this node is not refused\n",
			dir, strerror(errno));
		return 0;
	}
	snprintf(path, sizeof(path), "%s/pfs-%llu-%llu-%llu.lock", dir,
		 (unsigned long long)net.st_ino, (unsigned long long)pfs.st_dev,
		 (unsigned long long)pfs.st_ino);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0) {
		fprintf(stderr, "viperfs: warning: cannot open '%s' (%s): a second mount of this PFS directory on this node is not refused\n",
			path, strerror(errno));
		return 0;
	}
	if (flock(fd, LOCK_EX | LOCK_NB)) {
		fprintf(stderr, "viperfs: the PFS directory '%s' is served by another viperfs mount on this node; two would keep caches that disagree (unmount the other first)\n",
			d->pfs_dir);
		close(fd);
		return 1;
	}
	d->pfs_lock_fd = fd;	/* held until exit (the child inherits it) */
	return 0;
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

static int start_log(struct daemon *d)
{
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
	signal(SIGHUP, SIG_DFL);
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
	if (rc < 0)
		rc = daemon_run(&d);
	return rc;
}
