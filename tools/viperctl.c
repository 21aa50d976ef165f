/*
 * viperctl: talks to a running viperfs daemon.
 *
 *   viperctl status [MNT] [--json]
 *   viperctl versions PATH          JSON list of files and their versions
 *   viperctl version PATH           the version number of one file
 *   viperctl flush [PATH]           push everything under PATH to the PFS
 *                                   now, and wait (progress bar on a tty)
 *   viperctl warm PATH...           read PFS files into the cache
 *   viperctl umount MNT             drain flushes, then unmount (what
 *                                   umount(8) runs through umount.fuse.viperfs)
 *
 * The daemon's control socket is found through the "user.viperfs.control"
 * extended attribute of the mount's root.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "../engine/clock.h"
#include "../engine/config.h"

#include "viperfs_client.h"
#include "vpctl.h"

static void usage(FILE *out)
{
	fputs("usage: viperctl status [MNT] [--json]\n"
	      "       viperctl warm PATH...        read files from the PFS into the cache\n"
	      "       viperctl umount MNT [--timeout S] [--force]\n"
	      "       viperctl gpu-export PATH [--hold]   CUDA IPC handle of the GPU copy\n"
	      "       viperctl versions PATH\n"
	      "       viperctl version PATH\n"
	      "       viperctl flush [PATH]\n"
	      "       viperctl watch [PATH]        one JSON line per new version\n"
	      "       viperctl wait PATH --newer-than V [--timeout S]\n"
	      "       viperctl plan LOSS.csv --t-iter S --t-infer S --t-ckpt S --inferences M ...\n"
	      "                     (viperctl plan --help for all options)\n", out);
}

/* Prints "viperctl: " and text (a line from the daemon), escaped, to stderr. */
static void print_daemon_error(const char *text)
{
	json_t *j = vpctl_answer_parse(text);
	size_t len = strcspn(text, "\n");

	if (j && *vpctl_str(j, "error")) {
		fprintf(stderr, "viperctl: %s\n", vpctl_str(j, "error"));
	} else {
		char *raw = strndup(text, len), safe[1024];

		vpctl_escape(raw ? raw : "", safe, sizeof(safe));
		fprintf(stderr, "viperctl: the daemon answered: %s\n", safe);
		free(raw);
	}
	json_decref(j);
}

/* Sends one request; returns a stream of the answer, or NULL. */
static FILE *vpctl_request(const char *path, const char *verb, int with_rel)
{
	char root[PATH_MAX], rel[PATH_MAX], req[PATH_MAX + 32];
	int fd, rc;

	rc = vpc_find_mount(path, root, rel);
	if (rc) {
		if (rc == -ENOTSUP)
			fprintf(stderr, "viperctl: '%s' is not inside a viperfs mount\n", path);
		else
			fprintf(stderr, "viperctl: '%s': %s\n", path, strerror(-rc));
		return NULL;
	}
	fd = vpc_connect(root);
	if (fd < 0)
		return NULL;
	snprintf(req, sizeof(req), "%s %s\n", verb, with_rel ? rel : "");
	if (write(fd, req, strlen(req)) != (ssize_t)strlen(req)) {
		fprintf(stderr, "viperctl: write to the daemon: %s\n", strerror(errno));
		close(fd);
		return NULL;
	}
	shutdown(fd, SHUT_WR);
	return fdopen(fd, "r");
}

static int vpctl_copy(FILE *in)
{
	char line[65536];
	int rc = 0;

	while (fgets(line, sizeof(line), in)) {
		json_t *j = vpctl_answer_parse(line);

		/* the daemon's own bytes go out as they came; an error to stderr */
		if (json_is_object(j) && json_object_get(j, "error"))
			rc = 1;
		json_decref(j);
		fputs(line, rc ? stderr : stdout);
	}
	fclose(in);
	return rc;
}

static char *read_all(FILE *in)
{
	char *text = NULL;
	size_t len = 0, n;
	char buf[65536];
	FILE *mem = open_memstream(&text, &len);

	if (!mem)
		return NULL;
	while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
		fwrite(buf, 1, n, mem);
	fclose(mem);
	return text;
}

/* Reads the answer in (and closes it); returns it parsed (vpctl_answer_parse), or NULL. */
static json_t *read_answer(FILE *in)
{
	char *text = read_all(in);
	json_t *j = text ? vpctl_answer_parse(text) : NULL;

	fclose(in);
	free(text);
	return j;
}

/* Sends one request for path's mount; returns the answer (read_answer), or NULL. */
static json_t *request_json(const char *path, const char *verb)
{
	FILE *in = vpctl_request(path, verb, 0);

	return in ? read_answer(in) : NULL;
}

int vpctl_measured_times(const char *mnt, double *t_ckpt, double *t_load)
{
	FILE *in = vpctl_request(mnt, "status", 0);
	json_t *st = in ? read_answer(in) : NULL;
	const json_t *stall = vpctl_get(st, "checkpoint_stall_s");
	const json_t *lag = vpctl_get(st, "flush.mean_lag_s");
	int rc = -1;

	if (json_is_number(stall) && json_is_number(lag)) {
		*t_ckpt = json_number_value(stall);
		*t_load = json_number_value(lag);
		rc = 0;
	} else if (in) {
		fprintf(stderr, "viperctl: the daemon of '%s' did not report its timings\n", mnt);
	}
	json_decref(st);
	return rc;
}

int vpctl_print_json(json_t *j, const char *who)
{
	int rc = json_dumpf(j, stdout, JSON_COMPACT | JSON_REAL_PRECISION(15));

	json_decref(j);
	if (rc || putchar('\n') == EOF || fflush(stdout)) {
		int saved = errno;

		/* without a stream error, jansson ran out of memory */
		fprintf(stderr, "%s: cannot write the JSON output: %s\n", who,
			ferror(stdout) ? strerror(saved) : "out of memory");
		return -1;
	}
	return 0;
}

static void bar(unsigned long long done, unsigned long long total,
		const char *what)
{
	int width = 40, fill = total ? (int)(done * (unsigned long long)width / total) : width;

	if (fill > width)
		fill = width;
	fprintf(stderr, "\r[%.*s%*s] %5.1f%%  %llu/%llu MiB  %s ",
		fill, "########################################", width - fill, "",
		total ? 100.0 * (double)done / (double)total : 100.0,
		done >> 20, total >> 20, what);
}

/*
 * Flushes everything under path to the PFS, with a progress bar on a
 * terminal, for up to timeout seconds (0: no bound).  Returns 1 when all
 * of it is on the PFS, 0 when the deadline passed, -1 when the daemon
 * refused (said on stderr) or went away.  The last PFS error the daemon
 * reported goes to last_error.
 */
static int flush_progress(const char *path, double timeout, char *last_error, size_t len)
{
	struct timeval tv = { .tv_sec = 5 };
	double deadline = timeout > 0 ? vp_now() + timeout : 0;
	FILE *in = vpctl_request(path, "flush", 1);
	int tty = isatty(2), rc = -1;
	char line[PATH_MAX + 1024];

	if (!in)
		return -1;
	/* the daemon reports every 200 ms: a silence of 5 s means it is stuck */
	setsockopt(fileno(in), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	while (fgets(line, sizeof(line), in)) {
		json_t *j = vpctl_answer_parse(line);
		int finished;

		if (!json_object_get(j, "done")) {
			print_daemon_error(line);	/* refused: an error, not progress */
			json_decref(j);
			break;
		}
		if (*vpctl_str(j, "error"))
			snprintf(last_error, len, "%s", vpctl_str(j, "error"));
		finished = vpctl_num(j, "finished") != 0;
		if (!finished && tty) {
			char what[64];

			snprintf(what, sizeof(what), "%.0f left", vpctl_num(j, "ops_left"));
			bar((unsigned long long)vpctl_num(j, "done"),
			    (unsigned long long)vpctl_num(j, "total"), what);
		}
		json_decref(j);
		if (finished) {
			rc = 1;
			break;
		}
		if (deadline && vp_now() >= deadline) {
			rc = 0;
			break;
		}
	}
	fclose(in);
	if (tty)
		fputc('\n', stderr);
	return rc;
}

static int vpctl_flush(const char *path)
{
	char last_error[256] = "";
	int rc = flush_progress(path, 0, last_error, sizeof(last_error));

	if (rc != 1) {
		fprintf(stderr, "viperctl: the flush did not finish%s%s\n",
			*last_error ? "; last PFS error: " : "", last_error);
		return 1;
	}
	printf("flushed\n");
	return 0;
}


static const char *sz(double bytes, char *buf, size_t len)
{
	return vp_format_size(bytes > 0 ? (uint64_t)bytes : 0, buf, len);
}

/* The cache and GPU tier lines of the status. */
static void print_tiers(const json_t *st)
{
	char a[32], b[32], c[32], d[32];

	printf("  %-14s ram %s used of %s (memory files %s, spare %s)\n", "cache",
	       sz(vpctl_num(st, "tiers.ram.used"), a, sizeof(a)),
	       sz(vpctl_num(st, "tiers.ram.budget"), b, sizeof(b)),
	       sz(vpctl_num(st, "ram.memory_files"), c, sizeof(c)),
	       sz(vpctl_num(st, "ram.spare"), d, sizeof(d)));
	if (*vpctl_str(st, "read_path.mode"))
		printf("  %-14s %s: %s\n", "read path", vpctl_str(st, "read_path.mode"),
		       vpctl_str(st, "read_path.why"));
	if (!json_is_object(vpctl_get(st, "tiers.gpu")))
		printf("  %-14s off (gpu_cache=0)\n", "gpu tier");
	else if (strcmp(vpctl_str(st, "tiers.gpu.state"), "on"))
		printf("  %-14s off: %s\n", "gpu tier", *vpctl_str(st, "tiers.gpu.reason") ?
		       vpctl_str(st, "tiers.gpu.reason") : "a device error (see the log)");
	else
		printf("  %-14s %s used of %s on %s device %.0f (%s): %.0f files mirrored, %.0f leased\n",
		       "gpu tier", sz(vpctl_num(st, "tiers.gpu.used"), a, sizeof(a)),
		       sz(vpctl_num(st, "tiers.gpu.budget"), b, sizeof(b)),
		       vpctl_str(st, "tiers.gpu.tier"), vpctl_num(st, "tiers.gpu.device"),
		       vpctl_str(st, "tiers.gpu.name"), vpctl_num(st, "tiers.gpu.files"),
		       vpctl_num(st, "tiers.gpu.leased"));
}

/* The files, flush and I/O lines of the status. */
static void print_flush(const json_t *st)
{
	const char *err = vpctl_str(st, "flush.last_error");
	char a[32], b[32];

	printf("  %-14s %.0f (%.0f not on the PFS yet), %.0f open\n", "files",
	       vpctl_num(st, "files"), vpctl_num(st, "unflushed_files"),
	       vpctl_num(st, "open_files"));
	printf("  %-14s %.0f operations, %s; lag last %.3f s, mean %.3f s\n", "flush queue",
	       vpctl_num(st, "flush.queued_ops"),
	       sz(vpctl_num(st, "flush.queued_bytes"), a, sizeof(a)),
	       vpctl_num(st, "flush.last_lag_s"), vpctl_num(st, "flush.mean_lag_s"));
	printf("  %-14s %.0f versions, %s; %.0f skipped; %.0f retries; last error: %s%s%s\n",
	       "flushed", vpctl_num(st, "flush.flushed_versions"),
	       sz(vpctl_num(st, "flush.flushed_bytes"), a, sizeof(a)),
	       vpctl_num(st, "flush.skipped_versions"), vpctl_num(st, "flush.retries"),
	       *err ? err : "none", *err ? " at " : "",
	       *err ? vpctl_str(st, "flush.last_error_path") : "");
	printf("  %-14s written %s, read %s; %.0f commits (%.0f refused: a write failed), median stall %.3f s\n",
	       "I/O", sz(vpctl_num(st, "bytes_written"), a, sizeof(a)),
	       sz(vpctl_num(st, "bytes_read"), b, sizeof(b)),
	       vpctl_num(st, "commits"), vpctl_num(st, "commits_refused"),
	       vpctl_num(st, "checkpoint_stall_s"));
}

/* The GPU path, when the daemon reports one ("" from an older daemon). */
static const char *gpu_path(const json_t *repl)
{
	const char *path = vpctl_str(repl, "gpu_path");

	return *path && strcmp(path, "none") ? path : NULL;
}

/* The replication lines of a consumer's status. */
static void print_consumer(const json_t *repl)
{
	char a[32], b[32], c[32];

	printf("  %-14s consumer of %s over %s: %s; %.0f installed, %.0f skipped, %s in; last transfer %.3f s\n",
	       "replication", vpctl_str(repl, "producer"), vpctl_str(repl, "provider"),
	       vpctl_str(repl, "state"), vpctl_num(repl, "installed"),
	       vpctl_num(repl, "skipped"),
	       sz(vpctl_num(repl, "bytes_in"), a, sizeof(a)),
	       vpctl_num(repl, "last_transfer_s"));
	if (vpctl_num(repl, "relay.parent") > 0)
		printf("  %-14s reads from consumer %.0f: %s from it, %s from the producer when it lagged\n",
		       "relay", vpctl_num(repl, "relay.parent"),
		       sz(vpctl_num(repl, "relay.bytes_from_relay"), b, sizeof(b)),
		       sz(vpctl_num(repl, "relay.bytes_relay_fallback"), c, sizeof(c)));
	if (gpu_path(repl))
		printf("  %-14s %s; %s landed in the GPU tier straight from the network\n",
		       "gpu path", gpu_path(repl),
		       sz(vpctl_num(repl, "bytes_gpu_direct"), b, sizeof(b)));
}

/* The replication lines of a producer's status: one per peer. */
static void print_producer(const json_t *repl)
{
	const json_t *peers = vpctl_get(repl, "peers"), *p;
	char a[32], b[32];
	size_t i;

	printf("  %-14s producer on %s over %s; %.0f changes announced; %u peers\n",
	       "replication", vpctl_str(repl, "listen"), vpctl_str(repl, "provider"),
	       vpctl_num(repl, "seq"), (unsigned int)json_array_size(peers));
	json_array_foreach(peers, i, p)
		printf("    peer %-8.0f %s, lag %.0f (%.3f s), %.0f versions, %s sent, %s relayed%s, heard %.1f s ago\n",
		       vpctl_num(p, "id"), vpctl_str(p, "state"),
		       vpctl_num(p, "lag"), vpctl_num(p, "lag_s"),
		       vpctl_num(p, "versions_done"),
		       sz(vpctl_num(p, "bytes_out"), a, sizeof(a)),
		       sz(vpctl_num(p, "bytes_relayed"), b, sizeof(b)),
		       vpctl_num(p, "relay_parent") > 0 ? " by its relay" : "",
		       vpctl_num(p, "last_heard_s"));
	if (gpu_path(repl))
		printf("  %-14s %s; %.0f versions (%s) served from GPU mirrors\n",
		       "gpu path", gpu_path(repl),
		       vpctl_num(repl, "gpu_versions_out"),
		       sz(vpctl_num(repl, "gpu_bytes_out"), a, sizeof(a)));
}

/* The paths of the status, with the tiers that hold each. */
static void print_paths(const json_t *paths)
{
	const json_t *p, *tier;
	size_t i, k;
	char c[32];

	if (!json_array_size(paths))
		return;
	printf("  paths\n");
	json_array_foreach(paths, i, p) {
		char where[32] = "";

		json_array_foreach(vpctl_get(p, "tiers"), k, tier)
			snprintf(where + strlen(where), sizeof(where) - strlen(where), "%s%s",
				 *where ? "+" : "",
				 json_is_string(tier) ? json_string_value(tier) : "?");
		printf("    %-40s version %-5.0f %10s  %-8s %s\n", vpctl_str(p, "path"),
		       vpctl_num(p, "version"),
		       sz(vpctl_num(p, "size"), c, sizeof(c)),
		       vpctl_str(p, "state"), where);
	}
}

/* st: the daemon's status, from vpctl_answer_parse (its strings are escaped). */
static void print_status(const char *mnt, const json_t *st)
{
	const json_t *repl = vpctl_get(st, "repl");

	printf("viperfs mount %s (daemon pid %.0f)\n", mnt, vpctl_num(st, "pid"));
	printf("  %-14s %s\n", "PFS directory", vpctl_str(st, "pfs_dir"));
	print_tiers(st);
	print_flush(st);
	if (!json_is_object(repl))
		printf("  %-14s off\n", "replication");
	else if (!strcmp(vpctl_str(repl, "role"), "consumer"))
		print_consumer(repl);
	else
		print_producer(repl);
	print_paths(vpctl_get(st, "paths"));
}

/* viperctl status [MNT] [--json] */
static int vpctl_status(int argc, char **argv)
{
	const char *path = ".";
	int json = 0, rc = 1;
	char root[PATH_MAX], rel[PATH_MAX], *text;
	json_t *st;
	FILE *in;

	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			json = 1;
		else
			path = argv[i];
	}
	in = vpctl_request(path, "status", 0);
	if (!in)
		return 1;
	if (json)
		return vpctl_copy(in);
	text = read_all(in);
	fclose(in);
	st = text ? vpctl_answer_parse(text) : NULL;
	if (!st) {
		char safe[256];

		vpctl_escape(text ? text : "", safe, sizeof(safe));
		fprintf(stderr, "viperctl: the daemon's answer was not JSON: %s\n", safe);
	} else if (vpctl_get(st, "error")) {
		fprintf(stderr, "viperctl: %s\n", vpctl_str(st, "error"));
	} else {
		if (vpc_find_mount(path, root, rel))
			snprintf(root, sizeof(root), "%s", path);
		print_status(root, st);
		rc = 0;
	}
	json_decref(st);
	free(text);
	return rc;
}

/* viperctl warm PATH...: reads files from the PFS into the cache. */
static int vpctl_warm(int argc, char **argv)
{
	int tty = isatty(2), rc = 0;

	if (argc < 3) {
		fprintf(stderr, "usage: viperctl warm PATH...\n");
		return 2;
	}
	for (int i = 2; i < argc; i++) {
		FILE *in = vpctl_request(argv[i], "warm", 1);
		char line[1024], a[32], b[32];
		json_t *last = NULL;

		if (!in) {
			rc = 1;
			continue;
		}
		while (fgets(line, sizeof(line), in)) {
			json_t *j = vpctl_answer_parse(line);

			if (!j)
				continue;
			json_decref(last);
			last = j;
			if (vpctl_get(j, "error"))
				break;
			if (tty) {
				char what[64];

				snprintf(what, sizeof(what), "%.0f/%.0f files",
					 vpctl_num(j, "files_done"), vpctl_num(j, "files"));
				bar((unsigned long long)vpctl_num(j, "done"),
				    (unsigned long long)vpctl_num(j, "total"), what);
			}
		}
		fclose(in);
		if (tty)
			fputc('\n', stderr);
		if (!last || vpctl_get(last, "error") || !vpctl_num(last, "finished")) {
			fprintf(stderr, "viperctl: warm '%s': %s\n", argv[i],
				last && vpctl_get(last, "error") ? vpctl_str(last, "error") :
				"the daemon went away");
			rc = 1;
		} else {
			printf("warmed '%s': %.0f files, %s read, %s in the cache%s\n", argv[i],
			       vpctl_num(last, "files"),
			       sz(vpctl_num(last, "done"), a, sizeof(a)),
			       sz(vpctl_num(last, "cached"), b, sizeof(b)),
			       vpctl_num(last, "cached") < vpctl_num(last, "done") ?
			       " (the cache is full: raise ram_cache to hold it all)" : "");
			if (vpctl_num(last, "errors")) {
				fprintf(stderr, "viperctl: %.0f files could not be read; see the daemon's log\n",
					vpctl_num(last, "errors"));
				rc = 1;
			}
		}
		json_decref(last);
	}
	return rc;
}

/* Waits up to timeout seconds for process pid to exit (pidfd: an event, no polling). */
static int wait_exit(pid_t pid, double timeout)
{
	int pfd = (int)syscall(SYS_pidfd_open, pid, 0), rc;
	struct pollfd p;

	if (pfd < 0)
		return errno == ESRCH ? 0 : -1;
	p.fd = pfd;
	p.events = POLLIN;
	rc = poll(&p, 1, timeout > 0 ? (int)(timeout * 1000) : -1);
	close(pfd);
	return rc == 1 ? 0 : -1;
}

/*
 * viperctl umount MNT [--timeout S] [--force] [-l]
 *
 * What users expect of umount on a write-back file system: EBUSY with
 * open files; otherwise wait (up to the mount's unmount_wait, or
 * --timeout) until every version is on the PFS, then unmount.  If the
 * PFS does not take it in time, the mount stays and the unflushed files
 * are named, unless --force: then the daemon unmounts and goes on
 * draining in the background (up to unmount_wait), logging what it could
 * not write.  Exit status 32 on failure, like umount(8).
 */
/* What viperctl umount is asked to do. */
struct umount_args {
	const char *mnt;
	double timeout;		/* --timeout, -1: the mount's unmount_wait */
	int force;		/* --force: unmount even with files not on the PFS */
	int lazy;		/* -l: detach now (and force) */
};

/* Parses the command line into a; returns -1 to go on, else the exit status. */
static int parse_umount_args(int argc, char **argv, struct umount_args *a)
{
	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--timeout") && i + 1 < argc) {
			if (vp_parse_seconds(argv[++i], &a->timeout)) {
				fprintf(stderr, "viperctl: bad --timeout '%s'\n", argv[i]);
				return 2;
			}
		} else if (!strcmp(argv[i], "--force") || !strcmp(argv[i], "-f")) {
			a->force = 1;
		} else if (!strcmp(argv[i], "-l") || !strcmp(argv[i], "--lazy")) {
			a->lazy = a->force = 1;
		} else if (argv[i][0] == '-') {
			fprintf(stderr, "viperctl: umount: unknown flag '%s'\n", argv[i]);
			return 2;
		} else {
			a->mnt = argv[i];
		}
	}
	if (!a->mnt) {
		fprintf(stderr, "usage: viperctl umount MNT [--timeout S] [--force]\n");
		return 2;
	}
	return -1;
}

/* Returns 1, with the message umount(8) gives, if files are open under root. */
static int mount_busy(const char *root)
{
	json_t *j = request_json(root, "idle 2");
	int busy = j && vpctl_get(j, "error");

	if (busy)
		fprintf(stderr, "umount: %s: target is busy (%.0f open files); close them, or see 'fuser -vm %s'\n",
			root, vpctl_num(j, "open_files"), root);
	json_decref(j);
	return busy;
}

/* Names (up to 20 of) the files of root not on the PFS after the drain. */
static void report_unflushed(const char *root, double wait_s, const char *last_error,
			     int force)
{
	json_t *list = request_json(root, "versions");
	const json_t *p;
	unsigned int left = 0;
	size_t i;

	json_array_foreach(list, i, p) {
		if (!strcmp(vpctl_str(p, "state"), "flushed"))
			continue;
		if (left++ < 20)
			fprintf(stderr, "  not on the PFS yet: %s (version %.0f)\n",
				vpctl_str(p, "path"), vpctl_num(p, "version"));
	}
	json_decref(list);
	fprintf(stderr, "umount: %s: %u files are not on the PFS after %.0f s%s%s%s; %s\n",
		root, left, wait_s, *last_error ? " (last PFS error: " : "", last_error,
		*last_error ? ")" : "",
		force ? "unmounting anyway: the daemon goes on writing them in the background" :
		"the mount stays so nothing is lost; fix the PFS and retry, or umount -f");
}

/* Unmounts root: umount2, or fusermount3 (setuid) for a user's mount.  Returns 0 or 32. */
static int unmount_root(const char *root, int lazy)
{
	pid_t child;
	int err, status;

	if (!umount2(root, lazy ? MNT_DETACH : 0))
		return 0;
	err = errno;
	if (err != EPERM) {
		fprintf(stderr, "umount: %s: %s\n", root,
			err == EBUSY ? "target is busy (a process has its working directory or a map there; see 'fuser -vm')" :
			strerror(err));
		return 32;
	}
	/* not root: fusermount3 is the setuid path for the mount's owner */
	child = fork();
	if (child == 0) {
		if (lazy)
			execlp("fusermount3", "fusermount3", "-u", "-z", root, (char *)NULL);
		else
			execlp("fusermount3", "fusermount3", "-u", root, (char *)NULL);
		_exit(127);
	}
	if (child < 0 || waitpid(child, &status, 0) < 0 ||
	    !WIFEXITED(status) || WEXITSTATUS(status))
		return 32;
	return 0;
}

/*
 * viperctl umount MNT [--timeout S] [--force] [-l]
 *
 * What users expect of umount on a write-back file system: EBUSY with
 * open files; otherwise wait (up to the mount's unmount_wait, or
 * --timeout) until every version is on the PFS, then unmount.  If the
 * PFS does not take it in time, the mount stays and the unflushed files
 * are named, unless --force: then the daemon unmounts and goes on
 * draining in the background (up to unmount_wait), logging what it could
 * not write.  Exit status 32 on failure, like umount(8).
 */
static int vpctl_umount(int argc, char **argv)
{
	struct umount_args a = { .timeout = -1 };
	char root[PATH_MAX], rel[PATH_MAX], last_error[256] = "";
	int rc = parse_umount_args(argc, argv, &a), drained, pid;
	double wait_s;
	json_t *st;

	if (rc >= 0)
		return rc;
	if (vpc_find_mount(a.mnt, root, rel) || strcmp(rel, "/")) {
		fprintf(stderr, "viperctl: umount: '%s' is not the root of a viperfs mount\n", a.mnt);
		return 32;
	}
	st = request_json(root, "status");
	if (!st) {
		fprintf(stderr, "viperctl: umount: the daemon of '%s' does not answer; 'fusermount3 -u %s' detaches it\n",
			root, root);
		return 32;
	}
	pid = (int)vpctl_num(st, "pid");
	wait_s = a.timeout >= 0 ? a.timeout : vpctl_num(st, "unmount_wait_s");
	json_decref(st);

	/* open files first: nothing is drained for an unmount that cannot happen */
	if (!a.lazy && mount_busy(root))
		return 32;
	drained = flush_progress(root, wait_s, last_error, sizeof(last_error));
	if (drained < 0) {
		fprintf(stderr, "viperctl: umount: lost the daemon of '%s' while draining\n", root);
		return 32;
	}
	if (!drained) {
		report_unflushed(root, wait_s, last_error, a.force);
		if (!a.force)
			return 32;
	}
	if (unmount_root(root, a.lazy))
		return 32;
	/* the daemon exits once its last flushes are done (bounded by unmount_wait) */
	if (pid > 0 && wait_exit(pid, wait_s > 0 ? wait_s + 10 : 0))
		fprintf(stderr, "viperctl: umount: %s is unmounted; the daemon (pid %d) is still writing to the PFS\n",
			root, pid);
	return 0;
}

/*
 * viperctl gpu-export PATH [--hold]: prints the CUDA IPC handle of PATH's
 * GPU-resident version as JSON.  With --hold the lease lasts until stdin
 * closes (for a shell script that starts the consumer of the handle);
 * without, it ends when viperctl exits.
 */
static int vpctl_gpu_export(int argc, char **argv)
{
	const char *path = NULL;
	struct vpc_gpu_export e;
	char err[512], handle[2 * 64 + 1];
	int hold = 0;

	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--hold"))
			hold = 1;
		else
			path = argv[i];
	}
	if (!path) {
		fprintf(stderr, "usage: viperctl gpu-export PATH [--hold]\n");
		return 2;
	}
	if (vpc_gpu_export(path, &e, err, sizeof(err))) {
		char safe[1024];

		vpctl_escape(err, safe, sizeof(safe));
		fprintf(stderr, "viperctl: gpu-export: %s\n", safe);
		return 1;
	}
	for (int i = 0; i < 64; i++)
		snprintf(handle + 2 * i, 3, "%02x", e.handle[i]);
	if (vpctl_print_json(json_pack("{s:s,s:I,s:I,s:i}", "handle", handle,
				       "version", (json_int_t)e.version,
				       "size", (json_int_t)e.size, "device", e.device),
			     "viperctl gpu-export")) {
		vpc_gpu_release(&e);
		return 1;
	}
	if (hold) {
		char buf[256];

		while (read(0, buf, sizeof(buf)) > 0)
			;
	}
	vpc_gpu_release(&e);
	return 0;
}

/*
 * Reads wait's answers: {"waiting":true} (said on stderr, so a script
 * can start the writer once the wait is armed), then the version (printed
 * on stdout) or an error.  Closes in; returns the exit status.
 */
static int wait_answer(FILE *in, const char *path)
{
	char line[1024];
	int rc = 1;

	while (fgets(line, sizeof(line), in)) {
		/* plain jansson: the version is an exact 64-bit integer */
		json_t *j = json_loads(line, 0, NULL);
		json_t *v = json_object_get(j, "version");

		if (json_is_true(json_object_get(j, "waiting"))) {
			char safe[PATH_MAX * 4];

			vpctl_escape(path, safe, sizeof(safe));
			fprintf(stderr, "viperctl: waiting for a new version of '%s'\n", safe);
			json_decref(j);
			continue;
		}
		if (json_is_integer(v)) {
			printf("%llu\n", (unsigned long long)json_integer_value(v));
			rc = 0;
		} else {
			print_daemon_error(line);
		}
		json_decref(j);
		fclose(in);
		return rc;
	}
	fprintf(stderr, "viperctl: the daemon went away\n");
	fclose(in);
	return 1;
}

/* viperctl wait PATH --newer-than V [--timeout S] */
static int vpctl_wait(int argc, char **argv)
{
	char root[PATH_MAX], rel[PATH_MAX], req[PATH_MAX + 64];
	const char *path = NULL, *newer = "0", *timeout = "0";
	FILE *in;
	int fd;

	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--newer-than") && i + 1 < argc)
			newer = argv[++i];
		else if (!strcmp(argv[i], "--timeout") && i + 1 < argc)
			timeout = argv[++i];
		else if (!path)
			path = argv[i];
	}
	if (!path) {
		fprintf(stderr, "usage: viperctl wait PATH --newer-than V [--timeout S]\n");
		return 2;
	}
	/*
	 * The file may not exist yet, nor the directories above it (a
	 * consumer learns of "sub/" with its first version): resolve the
	 * nearest ancestor that exists, and send the rest as it was given.
	 */
	{
		char dir[PATH_MAX];
		const char *tail;
		size_t cut = strlen(path);
		int rc;

		if (cut >= sizeof(dir)) {
			fprintf(stderr, "viperctl: '%s': %s\n", path, strerror(ENAMETOOLONG));
			return 1;
		}
		for (;;) {
			while (cut > 0 && path[cut - 1] != '/')
				cut--;
			if (!cut) {
				tail = path;
				rc = vpc_find_mount(".", root, rel);
				break;
			}
			/* dir: what comes before the slash at cut - 1 */
			snprintf(dir, sizeof(dir), "%.*s", (int)(cut - 1), path);
			if (!*dir)
				strcpy(dir, "/");
			tail = path + cut;
			rc = vpc_find_mount(dir, root, rel);
			if (rc != -ENOENT)
				break;
			cut--;
		}
		if (rc) {
			if (rc == -ENOTSUP)
				fprintf(stderr, "viperctl: '%s' is not inside a viperfs mount\n", path);
			else
				fprintf(stderr, "viperctl: '%s': %s\n", path, strerror(-rc));
			return 1;
		}
		snprintf(req, sizeof(req), "wait %s%s%s %s %s\n", rel,
			 strcmp(rel, "/") ? "/" : "", tail, newer, timeout);
	}
	fd = vpc_connect(root);
	if (fd < 0)
		return 1;
	if (write(fd, req, strlen(req)) != (ssize_t)strlen(req)) {
		close(fd);
		return 1;
	}
	in = fdopen(fd, "r");
	return in ? wait_answer(in, path) : 1;
}

int main(int argc, char **argv)
{
	const char *cmd = argc > 1 ? argv[1] : NULL;
	const char *path = argc > 2 && argv[2][0] != '-' ? argv[2] : ".";

	if (!cmd || !strcmp(cmd, "-h") || !strcmp(cmd, "--help")) {
		usage(cmd ? stdout : stderr);
		return cmd ? 0 : 2;
	}
	if (!strcmp(cmd, "status"))
		return vpctl_status(argc, argv);
	if (!strcmp(cmd, "warm"))
		return vpctl_warm(argc, argv);
	if (!strcmp(cmd, "umount") || !strcmp(cmd, "unmount"))
		return vpctl_umount(argc, argv);
	if (!strcmp(cmd, "versions")) {
		FILE *in = vpctl_request(path, "versions", 1);

		return in ? vpctl_copy(in) : 1;
	}
	if (!strcmp(cmd, "version")) {
		char buf[64], safe[256];
		ssize_t n = getxattr(path, "user.viperfs.version", buf, sizeof(buf) - 1);

		if (n < 0) {
			fprintf(stderr, "viperctl: '%s': %s\n", path,
				errno == ENODATA ? "not a file in a viperfs mount" : strerror(errno));
			return 1;
		}
		buf[n] = '\0';
		vpctl_escape(buf, safe, sizeof(safe));
		printf("%s\n", safe);
		return 0;
	}
	if (!strcmp(cmd, "flush"))
		return vpctl_flush(path);
	if (!strcmp(cmd, "plan"))
		return vpctl_plan(argc - 1, argv + 1);
	if (!strcmp(cmd, "watch")) {
		FILE *in = vpctl_request(path, "watch", 1);
		char line[PATH_MAX + 256];

		if (!in)
			return 1;
		setvbuf(stdout, NULL, _IOLBF, 0);
		while (fgets(line, sizeof(line), in))
			fputs(line, stdout);	/* first {"watching":true}: from here on, nothing is missed */
		fclose(in);
		return 0;
	}
	if (!strcmp(cmd, "wait"))
		return vpctl_wait(argc, argv);
	if (!strcmp(cmd, "gpu-export"))
		return vpctl_gpu_export(argc, argv);
	fprintf(stderr, "viperctl: unknown command '%s'\n", cmd);
	usage(stderr);
	return 2;
}
