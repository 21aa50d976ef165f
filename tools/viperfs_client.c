/* viperfs_client: see viperfs_client.h. */
#define _GNU_SOURCE
#include "viperfs_client.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <unistd.h>

int vpc_find_mount(const char *path, char *root, char *rel)
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
	/* a dead mount's attributes may still be cached: its getxattr tells */
	if (getxattr(root, "user.viperfs.control", up, sizeof(up) - 1) < 0)
		return errno == ENOTCONN ? -ENOTCONN : -ENOTSUP;
	strcpy(rel, real + strlen(root));
	if (!*rel)
		strcpy(rel, "/");
	return 0;
}

int vpc_connect(const char *root)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	ssize_t n;
	int fd, saved;

	n = getxattr(root, "user.viperfs.control", addr.sun_path,
		     sizeof(addr.sun_path) - 1);
	if (n < 0) {
		saved = errno;
		fprintf(stderr, "viperctl: '%s' is not a viperfs mount (or the daemon has no control socket)\n",
			root);
		errno = saved;
		return -1;
	}
	addr.sun_path[n] = '\0';
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr))) {
		saved = errno;
		fprintf(stderr, "viperctl: cannot reach the daemon of '%s' at '%s': %s\n",
			root, addr.sun_path, strerror(saved));
		if (fd >= 0)
			close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}


static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Reads the daemon's one-line answer to gpu-export into e; -1 with err set. */
static int parse_export(const char *line, struct vpc_gpu_export *e, char *err, size_t errlen)
{
	json_error_t jerr;
	json_t *j = json_loads(line, JSON_REJECT_DUPLICATES, &jerr);
	const char *h = NULL, *msg = NULL;
	json_int_t version = 0, size = 0;
	int device = 0, rc = -1;

	if (!j) {
		snprintf(err, errlen, "the daemon sent a malformed answer: %s", jerr.text);
		return -1;
	}
	if (!json_unpack(j, "{s:s}", "error", &msg)) {
		snprintf(err, errlen, "%s", msg);
	} else if (json_unpack_ex(j, &jerr, 0, "{s:s, s:I, s:I, s:i}", "handle", &h,
				  "version", &version, "size", &size, "device", &device)) {
		snprintf(err, errlen, "the daemon sent a malformed answer: %s", jerr.text);
	} else if (strlen(h) != 2 * sizeof(e->handle)) {
		snprintf(err, errlen, "the daemon sent a malformed handle");
	} else {
		rc = 0;
		for (size_t i = 0; i < sizeof(e->handle) && !rc; i++) {
			int hi = hexval(h[2 * i]), lo = hexval(h[2 * i + 1]);

			if (hi < 0 || lo < 0) {
				snprintf(err, errlen, "the daemon sent a malformed handle");
				rc = -1;
			}
			e->handle[i] = (unsigned char)(hi << 4 | lo);
		}
		e->version = (uint64_t)version;
		e->size = (uint64_t)size;
		e->device = device;
	}
	json_decref(j);
	return rc;
}

int vpc_gpu_export(const char *path, struct vpc_gpu_export *e, char *err, size_t errlen)
{
	char root[PATH_MAX], rel[PATH_MAX], req[PATH_MAX + 32], line[1024];
	size_t used = 0;
	int rc;

	memset(e, 0, sizeof(*e));
	e->fd = -1;
	rc = vpc_find_mount(path, root, rel);
	if (rc) {
		snprintf(err, errlen, "'%s': %s", path,
			 rc == -ENOTSUP ? "not inside a viperfs mount" : strerror(-rc));
		return -1;
	}
	e->fd = vpc_connect(root);
	if (e->fd < 0) {
		snprintf(err, errlen, "cannot reach the daemon of '%s'", root);
		return -1;
	}
	/* no half-close: the open connection is the lease */
	snprintf(req, sizeof(req), "gpu-export %s\n", rel);
	if (write(e->fd, req, strlen(req)) != (ssize_t)strlen(req))
		goto err_io;
	while (used < sizeof(line) - 1) {
		ssize_t n = read(e->fd, line + used, 1);

		if (n <= 0)
			goto err_io;
		if (line[used++] == '\n')
			break;
	}
	line[used] = '\0';
	if (parse_export(line, e, err, errlen)) {
		vpc_gpu_release(e);
		return -1;
	}
	return 0;
err_io:
	snprintf(err, errlen, "the daemon of '%s' went away", root);
	vpc_gpu_release(e);
	return -1;
}

void vpc_gpu_release(struct vpc_gpu_export *e)
{
	if (e->fd >= 0)
		close(e->fd);
	e->fd = -1;
}
