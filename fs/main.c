/*
 * main: the viperfs daemon.
 *
 *   viperfs [-f] [-o opt[,opt...]] PFS_DIR MOUNTPOINT
 *
 * Without -f the daemon forks at once; the parent waits until the child
 * has mounted (or failed, printing why) and exits with its status, so
 * "viperfs ... && use-the-mount" works in scripts.
 */
#define FUSE_USE_VERSION 314
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
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

#define VIPERFS_VERSION "0.1.0"

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

static void collect_metrics(void *arg, FILE *out)
{
	vp_ns_metrics(arg, out);
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

int main(int argc, char **argv)
{
	struct vp_config cfg;
	char err[PATH_MAX + 512], passthru[2048] = "", fuse_opts[PATH_MAX + 2200];
	char pfs_dir[PATH_MAX], mountpoint[PATH_MAX];
	const char *pos[2];
	int npos = 0, foreground = 0, debug = 0, report_fd = -1, rc = 1;
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fuse_session *se = NULL;
	struct fuse_loop_config *loop_cfg;
	struct vp_ctl *ctl = NULL;
	struct vp_repl *repl = NULL;
	struct vp_hook *hook = NULL;
	struct vp_metrics_server *metrics = NULL;
	struct vp_gpu *gpu = NULL;
	struct vp_ns *ns;

	vp_config_defaults(&cfg);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(a, "-V") || !strcmp(a, "--version")) {
			printf("viperfs %s (libfuse %s)\n", VIPERFS_VERSION, fuse_pkgversion());
			return 0;
		} else if (!strcmp(a, "-f")) {
			foreground = 1;
		} else if (!strcmp(a, "-d")) {
			foreground = debug = 1;
		} else if (!strncmp(a, "-o", 2)) {
			const char *opts = a[2] ? a + 2 : (i + 1 < argc ? argv[++i] : NULL);

			if (!opts) {
				fprintf(stderr, "viperfs: -o needs options\n");
				return 2;
			}
			if (vp_config_parse_opts(&cfg, opts, passthru, sizeof(passthru),
						 err, sizeof(err))) {
				fprintf(stderr, "viperfs: %s\n", err);
				return 2;
			}
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
	if (npos == 0 && cfg.pfs_dir[0] && cfg.mountpoint[0]) {
		pos[npos++] = cfg.pfs_dir;	/* a config file that names both */
		pos[npos++] = cfg.mountpoint;
	}
	if (npos != 2) {
		usage(stderr);
		return 2;
	}
	if (check_passthru(passthru, err, sizeof(err))) {
		fprintf(stderr, "viperfs: %s\n", err);
		return 2;
	}
	if (strcmp(cfg.gpu_tier, "ram") && strcmp(cfg.gpu_tier, "cuda")) {
		fprintf(stderr, "viperfs: gpu_tier='%s': want cuda or ram\n", cfg.gpu_tier);
		return 2;
	}
	if (debug)
		cfg.log_level = LOG_DEBUG;
	if (!realpath(pos[0], pfs_dir)) {
		fprintf(stderr, "viperfs: PFS directory '%s': %s; create it or name another\n",
			pos[0], strerror(errno));
		return 1;
	}
	if (!realpath(pos[1], mountpoint)) {
		fprintf(stderr, "viperfs: mount point '%s': %s\n", pos[1], strerror(errno));
		return 1;
	}
	if (!strcmp(pfs_dir, mountpoint)) {
		fprintf(stderr, "viperfs: the mount point must not be the PFS directory itself\n");
		return 1;
	}

	if (!foreground) {
		int pipefd[2];
		pid_t pid;

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
		report_fd = pipefd[1];
		setsid();
	}

	if (cfg.log_file[0]) {
		if (vp_log_open(VP_LOG_FILE, cfg.log_file, cfg.log_level)) {
			snprintf(err, sizeof(err), "cannot open log file '%s': %s",
				 cfg.log_file, strerror(errno));
			goto err_report;
		}
	} else {
		vp_log_open(foreground ? VP_LOG_STDERR : VP_LOG_SYSLOG, NULL,
			    cfg.log_level);
	}

	ns = vp_ns_new(&cfg, pfs_dir, err, sizeof(err));
	if (!ns)
		goto err_report;

	if (cfg.gpu_cache) {
		const char *no_ops = NULL;
		const struct vp_tier_ops *ops = !strcmp(cfg.gpu_tier, "ram") ? &vp_tier_ram :
			vp_tier_gpu_ops(&no_ops);
		char why[512] = "";


		if (ops)
			gpu = vp_gpu_new(ops, (int)cfg.gpu_device, cfg.gpu_cache, why, sizeof(why));
		else
			snprintf(why, sizeof(why), "%s", no_ops);
		if (!gpu)
			vp_log(LOG_NOTICE, "gpu", "GPU tier off: %s; the mount works from RAM", why);
		vp_ns_set_gpu(ns, gpu, gpu ? NULL : why);
	}

	snprintf(fuse_opts, sizeof(fuse_opts),
		 "default_permissions,max_read=1048576,fsname=viperfs:%s,subtype=viperfs%s%s",
		 pfs_dir, *passthru ? "," : "", passthru);
	if (fuse_opt_add_arg(&args, argv[0]) || fuse_opt_add_arg(&args, "-o") ||
	    fuse_opt_add_arg(&args, fuse_opts)) {
		snprintf(err, sizeof(err), "out of memory");
		goto err_ns;
	}
	se = fuse_session_new(&args, &vpfs_ops, sizeof(vpfs_ops), ns);
	if (!se) {
		snprintf(err, sizeof(err), "bad FUSE options '%s'", passthru);
		goto err_ns;
	}
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
	if (fuse_set_signal_handlers(se)) {
		snprintf(err, sizeof(err), "cannot set signal handlers");
		goto err_session;
	}
	if (fuse_session_mount(se, mountpoint)) {
		snprintf(err, sizeof(err), "cannot mount on '%s' (is /dev/fuse there, and fuse3 installed?)",
			 mountpoint);
		goto err_signals;
	}
	raise_read_ahead(mountpoint);
	{
		char source[PATH_MAX + 16];

		snprintf(source, sizeof(source), "viperfs:%s", pfs_dir);
		vpfs_utab_add(source, mountpoint);
	}

	if (!cfg.control[0] && default_control_path(cfg.control, sizeof(cfg.control)))
		vp_log(LOG_WARNING, "ctl", "no place for a control socket; viperctl will not reach this mount");
	if (cfg.control[0]) {
		ctl = vp_ctl_start(ns, cfg.control, err, sizeof(err));
		if (ctl)
			vp_ns_set_control_path(ns, cfg.control);
		else
			vp_log(LOG_WARNING, "ctl", "%s; viperctl will not reach this mount", err);
	}

	if (cfg.listen[0] && cfg.subscribe[0]) {
		snprintf(err, sizeof(err), "a mount is a producer (listen=) or a consumer (subscribe=), not both");
		goto err_unmount;
	}
	if (cfg.listen[0] || cfg.subscribe[0]) {
		repl = vp_repl_new(ns, &cfg, mountpoint, err, sizeof(err));
		if (!repl)
			goto err_unmount;
		vp_ns_set_repl(ns, repl);
	}

	if (cfg.on_update[0])
		hook = vp_hook_start(ns, cfg.on_update, mountpoint);
	if (cfg.metrics[0]) {
		metrics = vp_metrics_serve(cfg.metrics, collect_metrics, ns, err, sizeof(err));
		if (!metrics) {
			vp_hook_stop(hook);
			vp_ns_set_repl(ns, NULL);
			vp_repl_free(repl);
			goto err_unmount;
		}
	}

	vp_log(LOG_NOTICE, "fs", "mounted '%s' on '%s'%s", pfs_dir, mountpoint,
	       cfg.subscribe[0] ? " (read-only replica)" : "");
	notify_ready();
	if (report_fd >= 0) {
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
		report_start(report_fd, "");
		report_fd = -1;
	}

	loop_cfg = fuse_loop_cfg_create();
	fuse_loop_cfg_set_clone_fd(loop_cfg, 0);
	fuse_loop_cfg_set_idle_threads(loop_cfg, 8);
	rc = fuse_session_loop_mt(se, loop_cfg);
	/* a stop by signal (libfuse reports its number) is a clean stop */
	if (rc < 0)
		rc = -rc;
	rc = rc == 0 || rc == SIGTERM || rc == SIGINT || rc == SIGHUP ? 0 : 1;
	fuse_loop_cfg_destroy(loop_cfg);

	vp_log(LOG_NOTICE, "fs", "unmounting '%s'", mountpoint);
	vpfs_utab_remove(mountpoint);
	vp_ctl_stop(ctl);
	vp_metrics_server_free(metrics);
	vp_hook_stop(hook);
	vp_ns_set_repl(ns, NULL);
	vp_repl_free(repl);
	fuse_session_unmount(se);
	fuse_remove_signal_handlers(se);
	fuse_session_destroy(se);
	fuse_opt_free_args(&args);
	vp_ns_set_gpu(ns, NULL, NULL);
	vp_gpu_free(gpu);
	if (vp_ns_free(ns))
		rc = 1;
	else
		vp_log(LOG_NOTICE, "flush", "everything is on the PFS '%s'", pfs_dir);
	vp_log_close();
	return rc;

err_unmount:
	vp_ctl_stop(ctl);
	vpfs_utab_remove(mountpoint);
	fuse_session_unmount(se);
err_signals:
	fuse_remove_signal_handlers(se);
err_session:
	fuse_session_destroy(se);
err_ns:
	fuse_opt_free_args(&args);
	vp_ns_set_gpu(ns, NULL, NULL);
	vp_gpu_free(gpu);
	vp_ns_free(ns);
err_report:
	if (report_fd >= 0)
		report_start(report_fd, err);
	else
		fprintf(stderr, "viperfs: %s\n", err);
	return 1;
}
