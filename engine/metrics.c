/* metrics: see metrics.h. */
#define _GNU_SOURCE
#include "metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "accept.h"
#include "log.h"

/* Upper bounds of the latency buckets, seconds; +Inf is implied. */
static const double bucket_le[] = {
	0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
	0.01, 0.05, 0.1, 0.5, 1, 5,
};
#define N_BUCKETS (sizeof(bucket_le) / sizeof(bucket_le[0]))

struct histogram {
	uint64_t bucket[N_BUCKETS + 1];	/* atomic; last: +Inf only */
	uint64_t sum_ns;		/* atomic */
};

static struct histogram fuse_hist[VP_FOP_COUNT];
static struct histogram notify_hist;
static uint64_t counters[VP_C_COUNT];	/* atomic */

static const char *const op_names[VP_FOP_COUNT] = {
	[VP_FOP_LOOKUP] = "lookup", [VP_FOP_GETATTR] = "getattr",
	[VP_FOP_SETATTR] = "setattr", [VP_FOP_READLINK] = "readlink",
	[VP_FOP_MKNOD] = "mknod", [VP_FOP_MKDIR] = "mkdir",
	[VP_FOP_UNLINK] = "unlink", [VP_FOP_RMDIR] = "rmdir",
	[VP_FOP_SYMLINK] = "symlink", [VP_FOP_RENAME] = "rename",
	[VP_FOP_LINK] = "link", [VP_FOP_OPEN] = "open", [VP_FOP_READ] = "read",
	[VP_FOP_WRITE] = "write", [VP_FOP_FLUSH] = "flush",
	[VP_FOP_RELEASE] = "release", [VP_FOP_FSYNC] = "fsync",
	[VP_FOP_OPENDIR] = "opendir", [VP_FOP_READDIR] = "readdir",
	[VP_FOP_RELEASEDIR] = "releasedir", [VP_FOP_FSYNCDIR] = "fsyncdir",
	[VP_FOP_STATFS] = "statfs", [VP_FOP_SETXATTR] = "setxattr",
	[VP_FOP_GETXATTR] = "getxattr", [VP_FOP_LISTXATTR] = "listxattr",
	[VP_FOP_REMOVEXATTR] = "removexattr", [VP_FOP_CREATE] = "create",
	[VP_FOP_FALLOCATE] = "fallocate", [VP_FOP_FORGET] = "forget",
};

static void hist_record(struct histogram *h, double seconds)
{
	size_t i = 0;

	if (seconds < 0)
		seconds = 0;
	while (i < N_BUCKETS && seconds > bucket_le[i])
		i++;
	__atomic_add_fetch(&h->bucket[i], 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&h->sum_ns, (uint64_t)(seconds * 1e9), __ATOMIC_RELAXED);
}

void vp_metrics_fuse_op(enum vp_fuse_op op, double seconds)
{
	if ((unsigned int)op < VP_FOP_COUNT)
		hist_record(&fuse_hist[op], seconds);
}

void vp_metrics_notify_latency(double seconds)
{
	hist_record(&notify_hist, seconds);
}

void vp_metrics_add(enum vp_counter c, uint64_t n)
{
	if ((unsigned int)c < VP_C_COUNT)
		__atomic_add_fetch(&counters[c], n, __ATOMIC_RELAXED);
}

uint64_t vp_metrics_get(enum vp_counter c)
{
	return (unsigned int)c < VP_C_COUNT ?
		__atomic_load_n(&counters[c], __ATOMIC_RELAXED) : 0;
}

/* Writes the sample lines of one histogram; labels is "" or 'op="read",'. */
static void hist_write(FILE *out, const char *name, const char *labels,
		       struct histogram *h)
{
	uint64_t cum = 0, count;

	/*
	 * Buckets are read before the count, so a concurrent record never
	 * makes a bucket exceed _count by more than in-flight records; the
	 * +Inf bucket is the cumulative sum itself, consistent by
	 * construction.
	 */
	for (size_t i = 0; i < N_BUCKETS; i++) {
		cum += __atomic_load_n(&h->bucket[i], __ATOMIC_RELAXED);
		fprintf(out, "%s_bucket{%sle=\"%g\"} %llu\n", name, labels,
			bucket_le[i], (unsigned long long)cum);
	}
	cum += __atomic_load_n(&h->bucket[N_BUCKETS], __ATOMIC_RELAXED);
	count = cum;
	fprintf(out, "%s_bucket{%sle=\"+Inf\"} %llu\n", name, labels,
		(unsigned long long)cum);
	fprintf(out, "%s_sum%s%.*s%s %.9f\n", name, *labels ? "{" : "",
		*labels ? (int)strlen(labels) - 1 : 0, labels, *labels ? "}" : "",
		(double)__atomic_load_n(&h->sum_ns, __ATOMIC_RELAXED) / 1e9);
	fprintf(out, "%s_count%s%.*s%s %llu\n", name, *labels ? "{" : "",
		*labels ? (int)strlen(labels) - 1 : 0, labels, *labels ? "}" : "",
		(unsigned long long)count);
}

static void counter_write(FILE *out, const char *name, const char *help,
			  enum vp_counter c)
{
	fprintf(out, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help,
		name, name, (unsigned long long)vp_metrics_get(c));
}

void vp_metrics_write(FILE *out, vp_metrics_collect_fn collect, void *arg)
{
	char labels[64];

	fputs("# HELP viperfs_fuse_request_duration_seconds Time the daemon spent on each FUSE request, by operation.\n"
	      "# TYPE viperfs_fuse_request_duration_seconds histogram\n", out);
	for (int op = 0; op < VP_FOP_COUNT; op++) {
		snprintf(labels, sizeof(labels), "op=\"%s\",", op_names[op]);
		hist_write(out, "viperfs_fuse_request_duration_seconds", labels,
			   &fuse_hist[op]);
	}
	counter_write(out, "viperfs_written_bytes_total",
		      "Bytes written through the mount.", VP_C_BYTES_WRITTEN);
	counter_write(out, "viperfs_read_bytes_total",
		      "Bytes read through the mount.", VP_C_BYTES_READ);
	counter_write(out, "viperfs_flushed_bytes_total",
		      "Bytes written to the PFS.", VP_C_BYTES_FLUSHED);
	fputs("# HELP viperfs_replicated_bytes_total Bytes moved between peers, by direction.\n"
	      "# TYPE viperfs_replicated_bytes_total counter\n", out);
	fprintf(out, "viperfs_replicated_bytes_total{direction=\"out\"} %llu\n",
		(unsigned long long)vp_metrics_get(VP_C_BYTES_REPL_OUT));
	fprintf(out, "viperfs_replicated_bytes_total{direction=\"in\"} %llu\n",
		(unsigned long long)vp_metrics_get(VP_C_BYTES_REPL_IN));
	counter_write(out, "viperfs_cache_hits_total",
		      "Chunks read from the cache.", VP_C_CACHE_HITS);
	counter_write(out, "viperfs_cache_misses_total",
		      "Chunks read from the PFS copy (not in the cache).", VP_C_CACHE_MISSES);
	counter_write(out, "viperfs_versions_total",
		      "File versions committed (producer) or installed (consumer).", VP_C_VERSIONS);
	fputs("# HELP viperfs_notify_latency_seconds Consumer: from the last byte of a version arriving to its install syscall returning (the watchers' events).\n"
	      "# TYPE viperfs_notify_latency_seconds histogram\n", out);
	hist_write(out, "viperfs_notify_latency_seconds", "", &notify_hist);
	if (collect)
		collect(arg, out);
}

struct vp_metrics_server {
	int listen_fd;
	int stop_pipe[2];
	pthread_t thread;
	vp_metrics_collect_fn collect;
	void *arg;
};

/* Reads the request head (up to a blank line) with a deadline; answers it. */
static void serve_one(struct vp_metrics_server *srv, int fd)
{
	struct timeval tv = { .tv_sec = 2 };
	char req[4096], *body = NULL, head[256];
	size_t used = 0, body_len = 0;
	const char *status = "200 OK";
	FILE *mem;

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	while (used < sizeof(req) - 1) {
		ssize_t n = read(fd, req + used, sizeof(req) - 1 - used);

		if (n <= 0)
			break;
		used += (size_t)n;
		req[used] = '\0';
		if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n"))
			break;
	}
	req[used] = '\0';
	mem = open_memstream(&body, &body_len);
	if (!mem)
		return;
	if (strncmp(req, "GET ", 4)) {
		status = "405 Method Not Allowed";
		fputs("only GET /metrics is served here\n", mem);
	} else if (strncmp(req + 4, "/metrics ", 9) && strncmp(req + 4, "/ ", 2) &&
		   strncmp(req + 4, "/metrics?", 9)) {
		status = "404 Not Found";
		fputs("viperfs serves its metrics at /metrics\n", mem);
	} else {
		vp_metrics_write(mem, srv->collect, srv->arg);
	}
	fclose(mem);
	snprintf(head, sizeof(head),
		 "HTTP/1.1 %s\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
		 "Content-Length: %zu\r\nConnection: close\r\n\r\n", status, body_len);
	if (write(fd, head, strlen(head)) == (ssize_t)strlen(head)) {
		size_t off = 0;

		while (off < body_len) {
			ssize_t n = write(fd, body + off, body_len - off);

			if (n <= 0)
				break;
			off += (size_t)n;
		}
	}
	free(body);
}

static void *server_main(void *arg)
{
	struct vp_metrics_server *srv = arg;

	for (;;) {
		int fd = vp_accept_until(srv->listen_fd, srv->stop_pipe[0]);

		if (fd < 0)
			break;
		serve_one(srv, fd);
		close(fd);
	}
	return NULL;
}

struct vp_metrics_server *vp_metrics_serve(const char *addr,
					   vp_metrics_collect_fn collect,
					   void *arg, char *err, size_t errlen)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_NUMERICSERV };
	struct addrinfo *ai = NULL;
	struct vp_metrics_server *srv;
	char host[256], port[16];
	const char *colon = strrchr(addr, ':');
	int one = 1, rc;

	if (colon) {
		snprintf(host, sizeof(host), "%.*s", (int)(colon - addr), addr);
		snprintf(port, sizeof(port), "%s", colon + 1);
		if (host[0] == '[' && host[strlen(host) - 1] == ']') {
			memmove(host, host + 1, strlen(host));
			host[strlen(host) - 1] = '\0';
		}
	} else {
		snprintf(host, sizeof(host), "127.0.0.1");
		snprintf(port, sizeof(port), "%s", addr);
	}
	if (!*port || strspn(port, "0123456789") != strlen(port)) {
		snprintf(err, errlen, "metrics address '%s': want PORT or ADDR:PORT", addr);
		return NULL;
	}
	rc = getaddrinfo(*host ? host : NULL, port, &hints, &ai);
	if (rc) {
		snprintf(err, errlen, "metrics address '%s': %s", addr, gai_strerror(rc));
		return NULL;
	}
	srv = calloc(1, sizeof(*srv));
	if (!srv) {
		freeaddrinfo(ai);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	srv->collect = collect;
	srv->arg = arg;
	srv->stop_pipe[0] = srv->stop_pipe[1] = -1;
	srv->listen_fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
	if (srv->listen_fd < 0)
		goto err_msg;
	setsockopt(srv->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(srv->listen_fd, ai->ai_addr, ai->ai_addrlen) ||
	    listen(srv->listen_fd, 16) || pipe2(srv->stop_pipe, O_CLOEXEC))
		goto err_msg;
	if (pthread_create(&srv->thread, NULL, server_main, srv)) {
		errno = EAGAIN;
		goto err_msg;
	}
	freeaddrinfo(ai);
	vp_log(LOG_INFO, "metrics", "serving Prometheus metrics on http://%s:%s/metrics",
	       host, port);
	return srv;

err_msg:
	snprintf(err, errlen, "metrics address '%s': %s", addr, strerror(errno));
	if (srv->listen_fd >= 0)
		close(srv->listen_fd);
	if (srv->stop_pipe[0] >= 0) {
		close(srv->stop_pipe[0]);
		close(srv->stop_pipe[1]);
	}
	free(srv);
	freeaddrinfo(ai);
	return NULL;
}

void vp_metrics_server_free(struct vp_metrics_server *srv)
{
	if (!srv)
		return;
	if (write(srv->stop_pipe[1], "x", 1) != 1)
		vp_log(LOG_WARNING, "metrics", "could not wake the metrics thread");
	pthread_join(srv->thread, NULL);
	close(srv->listen_fd);
	close(srv->stop_pipe[0]);
	close(srv->stop_pipe[1]);
	free(srv);
}
