/*
 * viperctl: talks to a running viperfs daemon.
 *
 *   viperctl status [MNT...] [--json]   every mount on the node, or these
 *   viperctl versions [PATH] [--json]   the files and their versions
 *   viperctl version PATH               the version number of one file
 *   viperctl flush [PATH] [--timeout S] push everything under PATH to the
 *                                       PFS now, and wait (progress bar)
 *   viperctl warm PATH...               read PFS files into the cache
 *   viperctl umount MNT [--timeout S] [--force] [--lazy]
 *                                       drain flushes, then unmount (what
 *                                       umount(8) runs through umount.viperfs)
 *   viperctl watch [PATH]               one JSON line per new version
 *   viperctl wait PATH --newer-than V [--timeout S]
 *   viperctl gpu-export PATH [--hold]   CUDA IPC handle of the GPU copy
 *   viperctl plan ...                   the checkpoint planner (vpctl_plan.c)
 *
 * Each command parses its options with getopt_long and answers --help.
 * The exit status is one of enum vpctl_exit (vpctl.h, viperctl(1)).
 *
 * The daemon's control socket is found through the "user.viperfs.control"
 * extended attribute of the mount's root; a mount whose daemon is gone is
 * found in the kernel's mount table (vpctl_mounts.c).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
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
#include "../engine/json.h"
#include "../engine/version.h"

#include "viperfs_client.h"
#include "vpctl.h"

#define STATUS_TIMEOUT_S 30	/* a daemon that has not answered status by then is stuck */

/* ---- the command line ---------------------------------------------------- */

/* What a command's options set; what it has no option for stays as main() set it. */
struct args {
	char **paths;			/* the positional arguments (borrowed from argv) */
	int npaths;
	int json;			/* --json */
	int force;			/* -f, --force */
	int lazy;			/* -l, --lazy */
	int hold;			/* --hold */
	double timeout;			/* --timeout, -1: not given */
	unsigned long long newer_than;	/* --newer-than */
};

struct command {
	const char *name;
	const char *synopsis;		/* what follows "viperctl NAME" */
	const char *summary;		/* one line, for viperctl --help */
	const char *help;		/* the lines of NAME --help that explain the options */
	const struct option *options;	/* for getopt_long, --help included */
	const char *shortopts;
	int min_paths, max_paths;	/* positional arguments; max -1: any number */
	int (*run)(const struct args *a);
};

enum { OPT_JSON = 256, OPT_TIMEOUT, OPT_HOLD, OPT_NEWER_THAN };

#define OPTION_HELP { "help", no_argument, NULL, 'h' }
#define OPTION_JSON { "json", no_argument, NULL, OPT_JSON }
#define OPTION_TIMEOUT { "timeout", required_argument, NULL, OPT_TIMEOUT }
#define OPTION_END { NULL, 0, NULL, 0 }

static const char help_help[] = "  -h, --help     print this help and exit\n";

/* Prints the short usage of cmd and where to read more; returns VPCTL_USAGE. */
static int bad_usage(const struct command *cmd)
{
	fprintf(stderr, "usage: viperctl %s %s\nTry 'viperctl %s --help'.\n",
		cmd->name, cmd->synopsis, cmd->name);
	return VPCTL_USAGE;
}

static int print_help(const struct command *cmd)
{
	printf("usage: viperctl %s %s\n\n%s\n\n%s%s", cmd->name, cmd->synopsis,
	       cmd->summary, cmd->help, help_help);
	return VPCTL_OK;
}

/*
 * Parses argv (argv[0] is the command's name) with cmd's options into a.
 * Returns -1 to go on, else the exit status: 0 after --help (printed on
 * stdout), VPCTL_USAGE after a bad command line (said on stderr).
 */
static int parse_args(const struct command *cmd, int argc, char **argv, struct args *a)
{
	static char prog[64];	/* static: it stays argv[0] */
	int opt;

	/* getopt_long names argv[0] in its messages */
	snprintf(prog, sizeof(prog), "viperctl %s", cmd->name);
	argv[0] = prog;
	optind = 0;	/* 0, not 1: glibc starts afresh (ordering, state) */
	while ((opt = getopt_long(argc, argv, cmd->shortopts, cmd->options, NULL)) != -1) {
		char *end;

		switch (opt) {
		case 'h':
			return print_help(cmd);
		case OPT_JSON:
			a->json = 1;
			break;
		case 'f':
			a->force = 1;
			break;
		case 'l':
			a->lazy = a->force = 1;
			break;
		case OPT_HOLD:
			a->hold = 1;
			break;
		case OPT_TIMEOUT:
			if (vp_parse_seconds(optarg, &a->timeout) || a->timeout < 0) {
				fprintf(stderr, "%s: bad --timeout '%s' (seconds: 30, 1.5, 250ms, 5m)\n",
					prog, optarg);
				return bad_usage(cmd);
			}
			break;
		case OPT_NEWER_THAN:
			errno = 0;
			a->newer_than = strtoull(optarg, &end, 10);
			if (errno || end == optarg || *end || optarg[0] == '-') {
				fprintf(stderr, "%s: bad --newer-than '%s' (a version number)\n",
					prog, optarg);
				return bad_usage(cmd);
			}
			break;
		default:	/* getopt_long said what was wrong */
			return bad_usage(cmd);
		}
	}
	a->paths = argv + optind;
	a->npaths = argc - optind;
	if (a->npaths < cmd->min_paths) {
		fprintf(stderr, "%s: too few arguments\n", prog);
		return bad_usage(cmd);
	}
	if (cmd->max_paths >= 0 && a->npaths > cmd->max_paths) {
		fprintf(stderr, "%s: too many arguments\n", prog);
		return bad_usage(cmd);
	}
	return -1;
}

/* a's single path, or dflt when none was given. */
static const char *path_or(const struct args *a, const char *dflt)
{
	return a->npaths ? a->paths[0] : dflt;
}

/* ---- finding the daemon ---------------------------------------------------- */

/*
 * Says that the daemon of the viperfs mount holding path is gone, and
 * how to detach the mount.  Returns VPCTL_NO_DAEMON.
 */
static int daemon_gone(const char *path)
{
	struct vpctl_mount m;
	char safe[PATH_MAX * 4];

	if (vpctl_mount_of(path, &m)) {
		vpctl_escape(path, safe, sizeof(safe));
		fprintf(stderr, "viperctl: '%s': %s (a FUSE mount whose daemon is gone?)\n",
			safe, strerror(ENOTCONN));
		return VPCTL_NO_DAEMON;
	}
	vpctl_escape(m.point, safe, sizeof(safe));
	fprintf(stderr, "viperctl: the daemon of the viperfs mount '%s' is gone (%s); "
		"'fusermount3 -uz %s' or 'viperctl umount --force %s' detaches the mount\n",
		safe, strerror(ENOTCONN), safe, safe);
	return VPCTL_NO_DAEMON;
}

/* Says why vpc_find_mount(path) failed with rc (-errno); returns the exit status. */
static int mount_error(const char *path, int rc)
{
	char safe[PATH_MAX * 4];

	if (!rc)
		return VPCTL_OK;
	if (rc == -ENOTCONN)
		return daemon_gone(path);
	vpctl_escape(path, safe, sizeof(safe));
	if (rc == -ENOTSUP) {
		fprintf(stderr, "viperctl: '%s' is not inside a viperfs mount\n", safe);
		return VPCTL_NO_DAEMON;
	}
	fprintf(stderr, "viperctl: '%s': %s\n", safe, strerror(-rc));
	return VPCTL_ERROR;
}

/*
 * Finds the viperfs mount holding path: fills root and rel (PATH_MAX
 * each).  Returns 0, or the exit status with the message printed.
 */
static int find_mount(const char *path, char *root, char *rel)
{
	return mount_error(path, vpc_find_mount(path, root, rel));
}

/* Connects to the daemon of root into *fd; returns 0, or the exit status with the message printed. */
static int connect_daemon(const char *root, int *fd)
{
	*fd = vpc_connect(root);
	if (*fd >= 0)
		return VPCTL_OK;
	if (errno == ECONNREFUSED || errno == ENOENT || errno == ENOTCONN)
		fprintf(stderr, "viperctl: if the daemon of '%s' is gone, 'fusermount3 -uz %s' or 'viperctl umount --force %s' detaches the mount\n",
			root, root, root);
	return VPCTL_NO_DAEMON;
}

/*
 * 0 if rel can go in a request line; else, with the message printed, the
 * exit status: a line ends at a newline, and what came after it would be
 * lost (a request about another file).
 */
static int check_request_path(const char *path, const char *rel)
{
	char safe[PATH_MAX * 4];

	if (!strpbrk(rel, "\r\n"))
		return VPCTL_OK;
	vpctl_escape(path, safe, sizeof(safe));
	fprintf(stderr, "viperctl: '%s': a name with a newline cannot be sent to the daemon; name the directory that holds it\n",
		safe);
	return VPCTL_ERROR;
}

/*
 * Sends one request about path's mount (the path inside it appended when
 * with_rel); *in is the stream of the answer (fclose it).  A timeout_s
 * other than 0 bounds each read of the answer.  Returns 0, or the exit
 * status with the message printed.
 */
static int open_request(const char *path, const char *verb, int with_rel, int timeout_s,
			FILE **in)
{
	char root[PATH_MAX], rel[PATH_MAX], req[PATH_MAX + 32];
	struct timeval tv = { .tv_sec = timeout_s };
	int fd, rc;

	rc = find_mount(path, root, rel);
	if (!rc && with_rel)
		rc = check_request_path(path, rel);
	if (!rc)
		rc = connect_daemon(root, &fd);
	if (rc)
		return rc;
	if (timeout_s)
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	snprintf(req, sizeof(req), "%s %s\n", verb, with_rel ? rel : "");
	if (write(fd, req, strlen(req)) != (ssize_t)strlen(req)) {
		fprintf(stderr, "viperctl: write to the daemon of '%s': %s\n", root, strerror(errno));
		close(fd);
		return VPCTL_NO_DAEMON;
	}
	shutdown(fd, SHUT_WR);
	*in = fdopen(fd, "r");
	if (!*in) {
		fprintf(stderr, "viperctl: %s\n", strerror(errno));
		close(fd);
		return VPCTL_ERROR;
	}
	return VPCTL_OK;
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

/* Copies the daemon's answer (JSON lines) to stdout as it came, an error to stderr; closes in. */
static int vpctl_copy(FILE *in)
{
	char line[65536];
	int rc = VPCTL_OK;

	while (fgets(line, sizeof(line), in)) {
		json_t *j = vpctl_answer_parse(line);

		/* the daemon's own bytes go out as they came; an error to stderr */
		if (json_is_object(j) && json_object_get(j, "error"))
			rc = VPCTL_ERROR;
		json_decref(j);
		fputs(line, rc ? stderr : stdout);
	}
	if (ferror(in)) {
		int err = errno;

		/* a read that timed out (status: STATUS_TIMEOUT_S), or a daemon that died */
		fprintf(stderr, "viperctl: reading the daemon's answer: %s\n",
			err == EAGAIN ? "it did not answer in time" : strerror(err));
		rc = err == EAGAIN ? VPCTL_TIMED_OUT : VPCTL_NO_DAEMON;
	}
	fclose(in);
	return rc;
}

/* The whole answer in (a new string: free() it), or NULL if memory ran out. */
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

/* Sends one request for path's mount; returns the answer (read_answer), or NULL (said). */
static json_t *request_json(const char *path, const char *verb)
{
	FILE *in;

	return open_request(path, verb, 0, 0, &in) ? NULL : read_answer(in);
}

int vpctl_measured_times(const char *mnt, double *t_ckpt, double *t_load)
{
	FILE *in = NULL;
	json_t *st = open_request(mnt, "status", 0, STATUS_TIMEOUT_S, &in) ? NULL :
		     read_answer(in);
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

/* ---- progress ---------------------------------------------------------------- */

/* A progress bar on stderr, with the rate and the time left. */
struct progress {
	double started;			/* vp_now() at the first report */
	unsigned long long first;	/* bytes done by then */
	int shown;			/* the bar is on the terminal */
};

/* Draws p: done of total bytes, what (a short note) after the numbers. */
static void bar(struct progress *p, unsigned long long done, unsigned long long total,
		const char *what)
{
	int width = 30, fill = total ? (int)(done * (unsigned long long)width / total) : width;
	double now = vp_now(), rate = 0;
	char rate_text[32] = "-", eta[32] = "--";

	if (!p->shown) {
		p->started = now;
		p->first = done;
		p->shown = 1;
	}
	/* the rate of this run: what was done before it started does not count */
	if (now - p->started > 0.2 && done > p->first)
		rate = (double)(done - p->first) / (now - p->started);
	if (rate > 0) {
		vpctl_size(rate, rate_text, sizeof(rate_text) - 2);
		strcat(rate_text, "/s");
	}
	if (done >= total)
		snprintf(eta, sizeof(eta), "0s");
	else if (rate > 0)
		vpctl_duration((double)(total - done) / rate, eta, sizeof(eta));
	if (fill > width)
		fill = width;
	fprintf(stderr, "\r[%.*s%*s] %5.1f%%  %llu/%llu MiB  %s  ETA %s  %s   ",
		fill, "##############################", width - fill, "",
		total ? 100.0 * (double)done / (double)total : 100.0,
		done >> 20, total >> 20, rate_text, eta, what);
}

/* Ends the bar's line, if one was drawn. */
static void bar_end(struct progress *p)
{
	if (p->shown)
		fputc('\n', stderr);
	p->shown = 0;
}

/*
 * Flushes everything under path to the PFS, with a progress bar on a
 * terminal, for up to timeout seconds (0: no bound).  *finished is 1 when
 * all of it is on the PFS, 0 when the deadline passed.  The last PFS
 * error the daemon reported goes to last_error.  Returns 0, or the exit
 * status when the daemon refused or went away (said on stderr).
 */
static int flush_progress(const char *path, double timeout, int *finished,
			  char *last_error, size_t len)
{
	struct timeval tv = { .tv_sec = 5 };
	double deadline = timeout > 0 ? vp_now() + timeout : 0;
	struct progress prog = { 0 };
	int tty = isatty(2), rc;
	char line[PATH_MAX + 1024];
	FILE *in;

	*finished = 0;
	rc = open_request(path, "flush", 1, 0, &in);
	if (rc)
		return rc;
	rc = VPCTL_ERROR;	/* until the daemon says finished, or the deadline passes */
	/* the daemon reports every 200 ms: a silence of 5 s means it is stuck */
	setsockopt(fileno(in), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	while (fgets(line, sizeof(line), in)) {
		json_t *j = vpctl_answer_parse(line);

		if (!json_object_get(j, "done")) {
			bar_end(&prog);
			print_daemon_error(line);	/* refused: an error, not progress */
			json_decref(j);
			break;
		}
		if (*vpctl_str(j, "error"))
			snprintf(last_error, len, "%s", vpctl_str(j, "error"));
		*finished = vpctl_num(j, "finished") != 0;
		if (!*finished && tty) {
			char what[64];

			snprintf(what, sizeof(what), "%.0f left", vpctl_num(j, "ops_left"));
			bar(&prog, (unsigned long long)vpctl_num(j, "done"),
			    (unsigned long long)vpctl_num(j, "total"), what);
		}
		json_decref(j);
		if (*finished || (deadline && vp_now() >= deadline)) {
			rc = VPCTL_OK;
			break;
		}
	}
	fclose(in);
	bar_end(&prog);
	return rc;
}

/* ---- the commands ------------------------------------------------------------ */

/* viperctl flush [PATH] [--timeout S] */
static int vpctl_flush(const struct args *a)
{
	char last_error[256] = "";
	int finished, rc = flush_progress(path_or(a, "."), a->timeout > 0 ? a->timeout : 0,
					  &finished, last_error, sizeof(last_error));

	if (rc == VPCTL_OK && finished) {
		printf("flushed\n");
		return VPCTL_OK;
	}
	if (rc == VPCTL_OK) {
		fprintf(stderr, "viperctl: flush: timed out after %g s: not everything is on the PFS yet%s%s\n",
			a->timeout, *last_error ? "; last PFS error: " : "", last_error);
		return VPCTL_TIMED_OUT;
	}
	if (rc == VPCTL_ERROR)
		fprintf(stderr, "viperctl: the flush did not finish%s%s\n",
			*last_error ? "; last PFS error: " : "", last_error);
	return rc;
}

/*
 * Prints the status of the mount at path: for people, or (json) the
 * daemon's JSON line as it came.  Returns the exit status.
 */
static int status_one(const char *path, int json)
{
	char root[PATH_MAX], rel[PATH_MAX], *text;
	int rc = find_mount(path, root, rel), stuck;
	json_t *st;
	FILE *in;

	if (!rc)
		rc = open_request(root, "status", 0, STATUS_TIMEOUT_S, &in);
	if (rc)
		return rc;
	if (json)
		return vpctl_copy(in);
	text = read_all(in);
	stuck = ferror(in);
	fclose(in);
	st = text && !stuck ? vpctl_answer_parse(text) : NULL;
	if (stuck) {
		fprintf(stderr, "viperctl: the daemon of '%s' did not answer within %d s\n",
			root, STATUS_TIMEOUT_S);
		rc = VPCTL_TIMED_OUT;
	} else if (!st) {
		char safe[256];

		vpctl_escape(text ? text : "", safe, sizeof(safe));
		fprintf(stderr, "viperctl: the daemon's answer was not JSON: %s\n", safe);
		rc = VPCTL_ERROR;
	} else if (vpctl_get(st, "error")) {
		fprintf(stderr, "viperctl: %s\n", vpctl_str(st, "error"));
		rc = VPCTL_ERROR;
	} else {
		vpctl_print_status(root, st);
	}
	json_decref(st);
	free(text);
	return rc;
}

/*
 * viperctl status [MNT...] [--json]: the named mounts, or every viperfs
 * mount of the node (a blank line between two; with --json one line
 * each).  The exit status is the first failure's.
 */
static int vpctl_status(const struct args *a)
{
	struct vpctl_mount *mounts = NULL;
	size_t n = 0;
	int rc = VPCTL_OK, err;

	for (int i = 0; i < a->npaths; i++) {
		int one;

		if (i && !a->json)
			putchar('\n');
		one = status_one(a->paths[i], a->json);
		rc = rc ? rc : one;
	}
	if (a->npaths)
		return rc;
	err = vpctl_mounts_list(&mounts, &n);
	if (err) {
		fprintf(stderr, "viperctl: /proc/self/mountinfo: %s\n", strerror(-err));
		return VPCTL_ERROR;
	}
	if (!n) {
		fprintf(stderr, "viperctl: no viperfs mount on this node\n");
		return VPCTL_NO_DAEMON;
	}
	for (size_t i = 0; i < n; i++) {
		int one;

		if (i && !a->json)
			putchar('\n');
		fflush(stdout);	/* in order with a dead mount's line on stderr */
		one = status_one(mounts[i].point, a->json);
		rc = rc ? rc : one;
	}
	free(mounts);
	return rc;
}

/* viperctl versions [PATH] [--json] */
static int vpctl_versions(const struct args *a)
{
	json_t *files;
	FILE *in;
	int rc = open_request(path_or(a, "."), "versions", 1, 0, &in);

	if (rc)
		return rc;
	if (a->json)
		return vpctl_copy(in);
	files = read_answer(in);
	if (json_is_array(files)) {
		vpctl_print_files(files);
	} else {
		fprintf(stderr, "viperctl: %s\n", json_is_object(files) ?
			vpctl_str(files, "error") : "the daemon's answer was not a list of files");
		rc = VPCTL_ERROR;
	}
	json_decref(files);
	return rc;
}

/* viperctl version PATH */
static int vpctl_version(const struct args *a)
{
	const char *path = a->paths[0];
	char buf[64], safe[PATH_MAX * 4];
	ssize_t n = getxattr(path, "user.viperfs.version", buf, sizeof(buf) - 1);

	if (n < 0) {
		int err = errno;

		if (err == ENOTCONN)
			return daemon_gone(path);
		vpctl_escape(path, safe, sizeof(safe));
		fprintf(stderr, "viperctl: '%s': %s\n", safe,
			err == ENODATA || err == ENOTSUP ? "not a file in a viperfs mount" : strerror(err));
		return VPCTL_ERROR;
	}
	buf[n] = '\0';
	vpctl_escape(buf, safe, sizeof(safe));
	printf("%s\n", safe);
	return VPCTL_OK;
}

/* viperctl warm PATH...: reads files from the PFS into the cache. */
static int vpctl_warm(const struct args *a)
{
	int tty = isatty(2), rc = VPCTL_OK;

	for (int i = 0; i < a->npaths; i++) {
		const char *path = a->paths[i];
		struct progress prog = { 0 };
		char line[1024], b1[32], b2[32];
		json_t *last = NULL;
		FILE *in;
		int one = open_request(path, "warm", 1, 0, &in);

		if (one) {
			rc = rc ? rc : one;
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
				bar(&prog, (unsigned long long)vpctl_num(j, "done"),
				    (unsigned long long)vpctl_num(j, "total"), what);
			}
		}
		fclose(in);
		bar_end(&prog);
		if (!last || vpctl_get(last, "error") || !vpctl_num(last, "finished")) {
			fprintf(stderr, "viperctl: warm '%s': %s\n", path,
				last && vpctl_get(last, "error") ? vpctl_str(last, "error") :
				"the daemon went away");
			rc = rc ? rc : (last ? VPCTL_ERROR : VPCTL_NO_DAEMON);
		} else {
			printf("warmed '%s': %.0f files, %s read, %s in the cache%s\n", path,
			       vpctl_num(last, "files"),
			       vpctl_size(vpctl_num(last, "done"), b1, sizeof(b1)),
			       vpctl_size(vpctl_num(last, "cached"), b2, sizeof(b2)),
			       vpctl_num(last, "cached") < vpctl_num(last, "done") ?
			       " (the cache is full: raise ram_cache to hold it all)" : "");
			if (vpctl_num(last, "errors")) {
				fprintf(stderr, "viperctl: %.0f files could not be read; see the daemon's log\n",
					vpctl_num(last, "errors"));
				rc = rc ? rc : VPCTL_ERROR;
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
		return VPCTL_OK;
	err = errno;
	if (err != EPERM) {
		fprintf(stderr, "umount: %s: %s\n", root,
			err == EBUSY ? "target is busy (a process has its working directory or a map there; see 'fuser -vm')" :
			strerror(err));
		return VPCTL_UMOUNT_FAILED;
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
		return VPCTL_UMOUNT_FAILED;
	return VPCTL_OK;
}

/*
 * umount of a mount whose daemon is gone (path holds it): with --force,
 * detach it (lazily: a process may still have a file open there, and
 * will get ENOTCONN); without, say how.  Returns the exit status.
 */
static int umount_dead(const char *path, int force)
{
	struct vpctl_mount m;
	char safe[PATH_MAX * 4];

	if (vpctl_mount_of(path, &m)) {
		daemon_gone(path);
		return VPCTL_UMOUNT_FAILED;
	}
	vpctl_escape(m.point, safe, sizeof(safe));
	if (!force) {
		fprintf(stderr, "umount: %s: the daemon of this viperfs mount is gone (%s); "
			"'viperctl umount --force %s' or 'fusermount3 -uz %s' detaches it\n",
			safe, strerror(ENOTCONN), safe, safe);
		return VPCTL_UMOUNT_FAILED;
	}
	if (unmount_root(m.point, 1))
		return VPCTL_UMOUNT_FAILED;
	fprintf(stderr, "umount: %s: detached; its daemon was gone, and what it had not written to the PFS is lost\n",
		safe);
	return VPCTL_OK;
}

/*
 * viperctl umount MNT [--timeout S] [--force] [--lazy]
 *
 * What users expect of umount on a write-back file system: EBUSY with
 * open files; otherwise wait (up to the mount's unmount_wait, or
 * --timeout) until every version is on the PFS, then unmount.  If the
 * PFS does not take it in time, the mount stays and the unflushed files
 * are named, unless --force: then the daemon unmounts and goes on
 * draining in the background (up to unmount_wait), logging what it could
 * not write.  --force also detaches a mount whose daemon is gone or does
 * not answer.  Exit status 32 on failure, like umount(8).
 */
static int vpctl_umount(const struct args *a)
{
	const char *mnt = a->paths[0];
	char root[PATH_MAX], rel[PATH_MAX], last_error[256] = "";
	int rc = vpc_find_mount(mnt, root, rel), finished, pid;
	double wait_s;
	json_t *st;

	if (rc == -ENOTCONN)
		return umount_dead(mnt, a->force);
	if (rc || strcmp(rel, "/")) {
		fprintf(stderr, "viperctl: umount: '%s' is not the root of a viperfs mount\n", mnt);
		return VPCTL_UMOUNT_FAILED;
	}
	st = request_json(root, "status");
	if (!st && a->force) {
		fprintf(stderr, "umount: %s: the daemon does not answer; detaching the mount (--force)\n",
			root);
		return unmount_root(root, 1);
	}
	if (!st) {
		fprintf(stderr, "viperctl: umount: the daemon of '%s' does not answer; 'viperctl umount --force %s' or 'fusermount3 -uz %s' detaches it\n",
			root, root, root);
		return VPCTL_UMOUNT_FAILED;
	}
	pid = (int)vpctl_num(st, "pid");
	wait_s = a->timeout >= 0 ? a->timeout : vpctl_num(st, "unmount_wait_s");
	json_decref(st);

	/* open files first: nothing is drained for an unmount that cannot happen */
	if (!a->lazy && mount_busy(root))
		return VPCTL_UMOUNT_FAILED;
	if (flush_progress(root, wait_s, &finished, last_error, sizeof(last_error))) {
		fprintf(stderr, "viperctl: umount: lost the daemon of '%s' while draining\n", root);
		return VPCTL_UMOUNT_FAILED;
	}
	if (!finished) {
		report_unflushed(root, wait_s, last_error, a->force);
		if (!a->force)
			return VPCTL_UMOUNT_FAILED;
	}
	if (unmount_root(root, a->lazy))
		return VPCTL_UMOUNT_FAILED;
	/* the daemon exits once its last flushes are done (bounded by unmount_wait) */
	if (pid > 0 && wait_exit(pid, wait_s > 0 ? wait_s + 10 : 0))
		fprintf(stderr, "viperctl: umount: %s is unmounted; the daemon (pid %d) is still writing to the PFS\n",
			root, pid);
	return VPCTL_OK;
}

/*
 * viperctl gpu-export PATH [--hold]: prints the CUDA IPC handle of PATH's
 * GPU-resident version as JSON.  With --hold the lease lasts until stdin
 * closes (for a shell script that starts the consumer of the handle);
 * without, it ends when viperctl exits.
 */
static int vpctl_gpu_export(const struct args *a)
{
	struct vpc_gpu_export e;
	char err[512], handle[2 * 64 + 1];

	if (vpc_gpu_export(a->paths[0], &e, err, sizeof(err))) {
		char safe[1024];

		vpctl_escape(err, safe, sizeof(safe));
		fprintf(stderr, "viperctl: gpu-export: %s\n", safe);
		return VPCTL_ERROR;
	}
	for (int i = 0; i < 64; i++)
		snprintf(handle + 2 * i, 3, "%02x", e.handle[i]);
	if (vpctl_print_json(json_pack("{s:s,s:I,s:I,s:i}", "handle", handle,
				       "version", (json_int_t)e.version,
				       "size", (json_int_t)e.size, "device", e.device),
			     "viperctl gpu-export")) {
		vpc_gpu_release(&e);
		return VPCTL_ERROR;
	}
	if (a->hold) {
		char buf[256];

		while (read(0, buf, sizeof(buf)) > 0)
			;
	}
	vpc_gpu_release(&e);
	return VPCTL_OK;
}

/* viperctl watch [PATH]: the daemon's events, one JSON line each, until it closes. */
static int vpctl_watch(const struct args *a)
{
	char line[PATH_MAX + 256];
	FILE *in;
	int rc = open_request(path_or(a, "."), "watch", 1, 0, &in);

	if (rc)
		return rc;
	setvbuf(stdout, NULL, _IOLBF, 0);
	while (fgets(line, sizeof(line), in))
		fputs(line, stdout);	/* first {"watching":true}: from here on, nothing is missed */
	fclose(in);
	return VPCTL_OK;
}

/*
 * Reads wait's answers: {"waiting":true} (said on stderr, so a script
 * can start the writer once the wait is armed), then the version (printed
 * on stdout) or an error.  Closes in; returns the exit status.
 */
static int wait_answer(FILE *in, const char *path, const struct args *a)
{
	char line[1024], safe[PATH_MAX * 4];
	int rc = VPCTL_NO_DAEMON;

	vpctl_escape(path, safe, sizeof(safe));
	while (fgets(line, sizeof(line), in)) {
		/* plain jansson: the version is an exact 64-bit integer */
		json_t *j = json_loads(line, 0, NULL);
		json_t *v = json_object_get(j, "version");
		const char *err = json_string_value(json_object_get(j, "error"));

		if (json_is_true(json_object_get(j, "waiting"))) {
			fprintf(stderr, "viperctl: waiting for a new version of '%s'\n", safe);
			json_decref(j);
			continue;
		}
		if (json_is_integer(v)) {
			printf("%llu\n", (unsigned long long)json_integer_value(v));
			rc = VPCTL_OK;
		} else if (err && !strcmp(err, "timed out") && a->timeout > 0) {
			fprintf(stderr, "viperctl: wait: timed out after %g s: '%s' has no version newer than %llu\n",
				a->timeout, safe, a->newer_than);
			rc = VPCTL_TIMED_OUT;
		} else if (err && !strcmp(err, "timed out")) {
			/* no deadline of ours: the daemon stopped waiting (an unmount) */
			fprintf(stderr, "viperctl: wait: the daemon stopped waiting for '%s' (the mount is going away)\n",
				safe);
			rc = VPCTL_NO_DAEMON;
		} else {
			print_daemon_error(line);
			rc = VPCTL_ERROR;
		}
		json_decref(j);
		fclose(in);
		return rc;
	}
	fprintf(stderr, "viperctl: wait: the daemon went away\n");
	fclose(in);
	return rc;
}

/*
 * The mount of path, which may not exist yet, nor the directories above
 * it (a consumer learns of "sub/" with its first version): resolves the
 * nearest ancestor that exists, and gives the rest as it was given in
 * *tail.  Returns 0, or the exit status with the message printed.
 */
static int find_mount_ahead(const char *path, char *root, char *rel, const char **tail)
{
	char dir[PATH_MAX];
	size_t cut = strlen(path);
	int rc;

	if (cut >= sizeof(dir)) {
		fprintf(stderr, "viperctl: '%s': %s\n", path, strerror(ENAMETOOLONG));
		return VPCTL_ERROR;
	}
	for (;;) {
		while (cut > 0 && path[cut - 1] != '/')
			cut--;
		if (!cut) {
			*tail = path;
			rc = vpc_find_mount(".", root, rel);
			break;
		}
		/* dir: what comes before the slash at cut - 1 */
		snprintf(dir, sizeof(dir), "%.*s", (int)(cut - 1), path);
		if (!*dir)
			strcpy(dir, "/");
		*tail = path + cut;
		rc = vpc_find_mount(dir, root, rel);
		if (rc != -ENOENT)
			break;
		cut--;
	}
	return mount_error(path, rc);
}

/* viperctl wait PATH [--newer-than V] [--timeout S] */
static int vpctl_wait(const struct args *a)
{
	char root[PATH_MAX], rel[PATH_MAX], req[PATH_MAX + 64];
	const char *path = a->paths[0], *tail;
	FILE *in;
	int fd, rc = find_mount_ahead(path, root, rel, &tail);

	if (!rc)
		rc = check_request_path(path, rel);
	if (!rc)
		rc = check_request_path(path, tail);
	if (!rc)
		rc = connect_daemon(root, &fd);
	if (rc)
		return rc;
	if (snprintf(req, sizeof(req), "wait %s%s%s %llu %.3f\n", rel, strcmp(rel, "/") ? "/" : "",
		     tail, a->newer_than, a->timeout > 0 ? a->timeout : 0) >= (int)sizeof(req)) {
		fprintf(stderr, "viperctl: wait: '%s': %s\n", path, strerror(ENAMETOOLONG));
		close(fd);
		return VPCTL_ERROR;
	}
	if (write(fd, req, strlen(req)) != (ssize_t)strlen(req)) {
		fprintf(stderr, "viperctl: write to the daemon of '%s': %s\n", root, strerror(errno));
		close(fd);
		return VPCTL_NO_DAEMON;
	}
	in = fdopen(fd, "r");
	if (!in) {
		close(fd);
		return VPCTL_ERROR;
	}
	return wait_answer(in, path, a);
}

/* ---- the table of commands ------------------------------------------------- */

static const struct option status_options[] = { OPTION_JSON, OPTION_HELP, OPTION_END };
static const struct option versions_options[] = { OPTION_JSON, OPTION_HELP, OPTION_END };
static const struct option flush_options[] = { OPTION_TIMEOUT, OPTION_HELP, OPTION_END };
static const struct option help_only_options[] = { OPTION_HELP, OPTION_END };
static const struct option umount_options[] = {
	OPTION_TIMEOUT,
	{ "force", no_argument, NULL, 'f' },
	{ "lazy", no_argument, NULL, 'l' },
	OPTION_HELP, OPTION_END,
};
static const struct option gpu_export_options[] = {
	{ "hold", no_argument, NULL, OPT_HOLD }, OPTION_HELP, OPTION_END,
};
static const struct option wait_options[] = {
	{ "newer-than", required_argument, NULL, OPT_NEWER_THAN },
	OPTION_TIMEOUT, OPTION_HELP, OPTION_END,
};

static const struct command commands[] = {
	{ "status", "[MNT...] [--json]",
	  "The state of viperfs mounts: the daemon (pid, release, uptime, options), the tiers,\n"
	  "the flush queue and its last error, replication, and every file. Without MNT: every\n"
	  "viperfs mount on this node, and a mount whose daemon is gone says so.",
	  "  --json         the daemon's status as one JSON object a line\n",
	  status_options, "h", 0, -1, vpctl_status },
	{ "versions", "[PATH] [--json]",
	  "The files under PATH (default: the current directory), with version, size, flush\n"
	  "state and the tiers that hold them.",
	  "  --json         the daemon's JSON array as it is\n",
	  versions_options, "h", 0, 1, vpctl_versions },
	{ "version", "PATH",
	  "The version number of the file PATH.",
	  "", help_only_options, "h", 1, 1, vpctl_version },
	{ "flush", "[PATH] [--timeout S]",
	  "Writes everything under PATH (default: the current directory) to the PFS now, and\n"
	  "waits until it is there (a progress bar on a terminal).",
	  "  --timeout S    give up after S seconds (exit status 4)\n",
	  flush_options, "h", 0, 1, vpctl_flush },
	{ "warm", "PATH...",
	  "Reads files (or directories) that are only on the PFS into the cache.",
	  "", help_only_options, "h", 1, -1, vpctl_warm },
	{ "umount", "MNT [--timeout S] [--force] [--lazy]",
	  "Unmounts MNT the way umount(8) does through umount.viperfs: busy with open files;\n"
	  "else waits until every file is on the PFS, then unmounts. Exit status 32 when the\n"
	  "mount stays.",
	  "  --timeout S    drain for at most S seconds (default: the mount's unmount_wait)\n"
	  "  -f, --force    unmount even if files are not on the PFS yet (the daemon goes on\n"
	  "                 writing them); detach a mount whose daemon is gone\n"
	  "  -l, --lazy     detach now, even with files open (implies --force)\n",
	  umount_options, "hfl", 1, 1, vpctl_umount },
	{ "watch", "[PATH]",
	  "One JSON line per new version under PATH (default: the current directory), first\n"
	  "{\"watching\":true}, until interrupted.",
	  "", help_only_options, "h", 0, 1, vpctl_watch },
	{ "wait", "PATH [--newer-than V] [--timeout S]",
	  "Waits until PATH (which may not exist yet) has a version newer than V, and prints\n"
	  "it. \"waiting ...\" goes to stderr once the wait is armed.",
	  "  --newer-than V the version to wait past (default 0: any version)\n"
	  "  --timeout S    give up after S seconds (exit status 4)\n",
	  wait_options, "h", 1, 1, vpctl_wait },
	{ "gpu-export", "PATH [--hold]",
	  "The CUDA IPC handle of PATH's copy in the GPU tier, as JSON; the lease ends when\n"
	  "viperctl exits.",
	  "  --hold         keep the lease until stdin closes\n",
	  gpu_export_options, "h", 1, 1, vpctl_gpu_export },
	{ "plan", "LOSS.csv --t-iter S --t-infer S --t-ckpt S --inferences M ...",
	  "Fits the warm-up loss log and prints the checkpoint schedules.", "", NULL, "", 0, 0, NULL },
};

#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage(FILE *out)
{
	fputs("usage: viperctl [--help] [--version] COMMAND [ARGS]\n\n", out);
	for (size_t i = 0; i < N_COMMANDS; i++)
		fprintf(out, "  viperctl %s %s\n", commands[i].name, commands[i].synopsis);
	fputs("\n'viperctl COMMAND --help' explains a command.\n"
	      "Exit status: 0 done, 1 error, 2 bad usage, 3 not a viperfs mount or its daemon\n"
	      "is gone, 4 timed out; umount: 32 when the mount stays.  See viperctl(1).\n", out);
}

static const struct command *find_command(const char *name)
{
	if (!strcmp(name, "unmount"))
		name = "umount";
	for (size_t i = 0; i < N_COMMANDS; i++)
		if (!strcmp(commands[i].name, name))
			return &commands[i];
	return NULL;
}

/*
 * Runs vpctl_plan() (which parses its own options, from optind = 1) with
 * getopt reset to its defaults: main()'s "+" (stop at the command) must
 * not carry over, or plan would stop at LOSS.csv.
 */
static int run_plan(int argc, char **argv)
{
	char *none[] = { argv[0], NULL };

	optind = 0;
	(void)getopt_long(1, none, "", help_only_options, NULL);
	return vpctl_plan(argc, argv);
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		OPTION_HELP, { "version", no_argument, NULL, 'V' }, OPTION_END,
	};
	struct args a = { .timeout = -1 };
	const struct command *cmd;
	int opt, rc;

	/* "+": the options before the command only; the command parses its own */
	while ((opt = getopt_long(argc, argv, "+hV", options, NULL)) != -1) {
		switch (opt) {
		case 'h':
			usage(stdout);
			return VPCTL_OK;
		case 'V':
			printf("viperctl %s\n", VP_RELEASE);
			return VPCTL_OK;
		default:
			usage(stderr);
			return VPCTL_USAGE;
		}
	}
	if (optind == argc) {
		usage(stderr);
		return VPCTL_USAGE;
	}
	cmd = find_command(argv[optind]);
	if (!cmd) {
		fprintf(stderr, "viperctl: unknown command '%s'; 'viperctl --help' lists them\n",
			argv[optind]);
		return VPCTL_USAGE;
	}
	argc -= optind;
	argv += optind;
	if (!cmd->run)
		return run_plan(argc, argv);
	rc = parse_args(cmd, argc, argv, &a);
	return rc >= 0 ? rc : cmd->run(&a);
}
