/*
 * viperctl: talks to a running viperfs daemon.
 *
 *   viperctl status [MNT] [--json]
 *   viperctl versions PATH          JSON list of files and their versions
 *   viperctl version PATH           the version number of one file
 *   viperctl flush [PATH]           push everything under PATH to the PFS
 *                                   now, and wait (progress bar on a tty)
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
#include <sys/xattr.h>
#include <unistd.h>

#include "vpctl.h"

static void usage(FILE *out)
{
	fputs("usage: viperctl status [MNT] [--json]\n"
	      "       viperctl versions PATH\n"
	      "       viperctl version PATH\n"
	      "       viperctl flush [PATH]\n"
	      "       viperctl watch [PATH]        one JSON line per new version\n"
	      "       viperctl wait PATH --newer-than V [--timeout S]\n"
	      "       viperctl plan LOSS.csv --t-iter S --t-infer S --t-ckpt S --inferences M ...\n"
	      "                     (viperctl plan --help for all options)\n", out);
}

/*
 * Finds the viperfs mount holding path: fills root (the mount's root) and
 * rel (path inside it).  Returns 0 or -errno.
 */
static int vpctl_find_mount(const char *path, char *root, char *rel)
{
	char real[PATH_MAX], up[PATH_MAX];
	struct stat st, ust;

	if (!realpath(path, real))
		return -errno;
	if (stat(real, &st))
		return -errno;
	strcpy(root, real);
	for (;;) {
		char *slash = strrchr(root, '/');

		if (!slash || slash == root)
			strcpy(up, "/");
		else
			snprintf(up, sizeof(up), "%.*s", (int)(slash - root), root);
		if (!strcmp(root, "/") || stat(up, &ust) || ust.st_dev != st.st_dev)
			break;
		strcpy(root, up);
	}
	if (getxattr(root, "user.viperfs.control", up, sizeof(up) - 1) < 0)
		return -ENOTSUP;
	strcpy(rel, real + strlen(root));
	if (!*rel)
		strcpy(rel, "/");
	return 0;
}

static int vpctl_connect(const char *root)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	ssize_t n;
	int fd;

	n = getxattr(root, "user.viperfs.control", addr.sun_path,
		     sizeof(addr.sun_path) - 1);
	if (n < 0) {
		fprintf(stderr, "viperctl: '%s' is not a viperfs mount (or the daemon has no control socket)\n",
			root);
		return -1;
	}
	addr.sun_path[n] = '\0';
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr))) {
		fprintf(stderr, "viperctl: cannot reach the daemon of '%s' at '%s': %s\n",
			root, addr.sun_path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

/* Sends one request; returns a stream of the answer, or NULL. */
static FILE *vpctl_request(const char *path, const char *verb, int with_rel)
{
	char root[PATH_MAX], rel[PATH_MAX], req[PATH_MAX + 32];
	int fd, rc;

	rc = vpctl_find_mount(path, root, rel);
	if (rc) {
		if (rc == -ENOTSUP)
			fprintf(stderr, "viperctl: '%s' is not inside a viperfs mount\n", path);
		else
			fprintf(stderr, "viperctl: '%s': %s\n", path, strerror(-rc));
		return NULL;
	}
	fd = vpctl_connect(root);
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
		if (!strncmp(line, "{\"error\"", 8))
			rc = 1;
		fputs(line, rc ? stderr : stdout);
	}
	fclose(in);
	return rc;
}

static double json_double(const char *text, const char *key, int *found)
{
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\":", key);
	p = strstr(text, pat);
	*found = p != NULL;
	return p ? strtod(p + strlen(pat), NULL) : 0;
}

int vpctl_measured_times(const char *mnt, double *t_ckpt, double *t_load)
{
	FILE *in = vpctl_request(mnt, "status", 0);
	char text[8192];
	size_t n;
	int f1, f2;

	if (!in)
		return -1;
	n = fread(text, 1, sizeof(text) - 1, in);
	fclose(in);
	text[n] = '\0';
	*t_ckpt = json_double(text, "checkpoint_stall_s", &f1);
	*t_load = json_double(text, "mean_lag_s", &f2);
	if (!f1 || !f2) {
		fprintf(stderr, "viperctl: the daemon of '%s' did not report its timings\n", mnt);
		return -1;
	}
	return 0;
}

static unsigned long long json_num(const char *line, const char *key)
{
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\":", key);
	p = strstr(line, pat);
	return p ? strtoull(p + strlen(pat), NULL, 10) : 0;
}

static void bar(unsigned long long done, unsigned long long total,
		unsigned long long ops)
{
	int width = 40, fill = total ? (int)(done * (unsigned long long)width / total) : width;

	fprintf(stderr, "\r[%.*s%*s] %5.1f%%  %llu/%llu MiB  %llu left ",
		fill, "########################################", width - fill, "",
		total ? 100.0 * (double)done / (double)total : 100.0,
		done >> 20, total >> 20, ops);
}

static int vpctl_flush(const char *path)
{
	FILE *in = vpctl_request(path, "flush", 1);
	char line[1024], last_error[256] = "";
	int tty = isatty(2), finished = 0;

	if (!in)
		return 1;
	while (fgets(line, sizeof(line), in)) {
		const char *e;

		if (!strncmp(line, "{\"error\"", 8)) {
			fprintf(stderr, "viperctl: %s", line);
			fclose(in);
			return 1;
		}
		finished = strstr(line, "\"finished\":true") != NULL;
		e = strstr(line, "\"error\":\"");
		if (e && e[9] != '"') {
			snprintf(last_error, sizeof(last_error), "%.*s",
				 (int)strcspn(e + 9, "\""), e + 9);
		}
		if (tty)
			bar(json_num(line, "done"), json_num(line, "total"),
			    json_num(line, "ops_left"));
	}
	fclose(in);
	if (tty)
		fputc('\n', stderr);
	if (!finished) {
		fprintf(stderr, "viperctl: the daemon went away before the flush finished%s%s\n",
			*last_error ? "; last PFS error: " : "", last_error);
		return 1;
	}
	printf("flushed\n");
	return 0;
}

/* viperctl wait PATH --newer-than V [--timeout S] */
static int vpctl_wait(int argc, char **argv)
{
	char root[PATH_MAX], rel[PATH_MAX], req[PATH_MAX + 64], line[256];
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
	/* the file may not exist yet: resolve its directory */
	{
		char dir[PATH_MAX], *slash;

		snprintf(dir, sizeof(dir), "%s", path);
		slash = strrchr(dir, '/');
		if (slash)
			*slash = '\0';
		else
			strcpy(dir, ".");
		if (vpctl_find_mount(dir, root, rel)) {
			fprintf(stderr, "viperctl: '%s' is not inside a viperfs mount\n", path);
			return 1;
		}
		snprintf(req, sizeof(req), "wait %s%s%s %s %s\n", rel,
			 strcmp(rel, "/") ? "/" : "", slash ? slash + 1 : path, newer, timeout);
	}
	fd = vpctl_connect(root);
	if (fd < 0)
		return 1;
	if (write(fd, req, strlen(req)) != (ssize_t)strlen(req)) {
		close(fd);
		return 1;
	}
	in = fdopen(fd, "r");
	if (!in || !fgets(line, sizeof(line), in)) {
		fprintf(stderr, "viperctl: the daemon went away\n");
		return 1;
	}
	fclose(in);
	if (strstr(line, "\"error\"")) {
		fprintf(stderr, "viperctl: %s", line);
		return 1;
	}
	printf("%llu\n", (unsigned long long)strtoull(strchr(line, ':') + 1, NULL, 10));
	return 0;
}

int main(int argc, char **argv)
{
	const char *cmd = argc > 1 ? argv[1] : NULL;
	const char *path = argc > 2 && argv[2][0] != '-' ? argv[2] : ".";

	if (!cmd || !strcmp(cmd, "-h") || !strcmp(cmd, "--help")) {
		usage(cmd ? stdout : stderr);
		return cmd ? 0 : 2;
	}
	if (!strcmp(cmd, "status")) {
		FILE *in = vpctl_request(path, "status", 0);

		return in ? vpctl_copy(in) : 1;
	}
	if (!strcmp(cmd, "versions")) {
		FILE *in = vpctl_request(path, "versions", 1);

		return in ? vpctl_copy(in) : 1;
	}
	if (!strcmp(cmd, "version")) {
		char buf[64];
		ssize_t n = getxattr(path, "user.viperfs.version", buf, sizeof(buf) - 1);

		if (n < 0) {
			fprintf(stderr, "viperctl: '%s': %s\n", path,
				errno == ENODATA ? "not a file in a viperfs mount" : strerror(errno));
			return 1;
		}
		buf[n] = '\0';
		printf("%s\n", buf);
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
	fprintf(stderr, "viperctl: unknown command '%s'\n", cmd);
	usage(stderr);
	return 2;
}
