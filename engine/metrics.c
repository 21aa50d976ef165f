/* metrics: see metrics.h. */
#define _GNU_SOURCE
#include "metrics.h"

#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <microhttpd.h>

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

/* A counter with two values of one label (direction="out"/"in", path=...). */
static void counter2_write(FILE *out, const char *name, const char *help, const char *label,
			   const char *v1, enum vp_counter c1, const char *v2, enum vp_counter c2)
{
	fprintf(out, "# HELP %s %s\n# TYPE %s counter\n", name, help, name);
	fprintf(out, "%s{%s=\"%s\"} %llu\n", name, label, v1,
		(unsigned long long)vp_metrics_get(c1));
	fprintf(out, "%s{%s=\"%s\"} %llu\n", name, label, v2,
		(unsigned long long)vp_metrics_get(c2));
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
		      "Bytes read through the mount that the daemon served (passthrough reads are the kernel's own).", VP_C_BYTES_READ);
	counter_write(out, "viperfs_flushed_bytes_total",
		      "Bytes written to the PFS.", VP_C_BYTES_FLUSHED);
	counter2_write(out, "viperfs_replicated_bytes_total", "Bytes moved between peers, by direction.",
		       "direction", "out", VP_C_BYTES_REPL_OUT, "in", VP_C_BYTES_REPL_IN);
	counter_write(out, "viperfs_cache_hits_total",
		      "Chunks read from the cache.", VP_C_CACHE_HITS);
	counter_write(out, "viperfs_cache_misses_total",
		      "Chunks read from the PFS copy (not in the cache).", VP_C_CACHE_MISSES);
	counter_write(out, "viperfs_versions_total",
		      "File versions committed (producer) or installed (consumer).", VP_C_VERSIONS);
	counter_write(out, "viperfs_commits_refused_total",
		      "Versions not committed because a write, truncate or allocation for them failed (the path kept its previous version).",
		      VP_C_COMMITS_REFUSED);
	counter2_write(out, "viperfs_read_opens_total",
		       "Read-only opens, by who serves their reads: the kernel from the version's memory file (passthrough), or the daemon.",
		       "path", "passthrough", VP_C_OPENS_PASSTHROUGH, "daemon", VP_C_OPENS_DAEMON);
	fputs("# HELP viperfs_notify_latency_seconds Consumer: from the last byte of a version arriving to its install syscall returning (the watchers' events).\n"
	      "# TYPE viperfs_notify_latency_seconds histogram\n", out);
	hist_write(out, "viperfs_notify_latency_seconds", "", &notify_hist);
	if (collect)
		collect(arg, out);
}

/*
 * The HTTP side: libmicrohttpd on one internal thread that polls every
 * connection (epoll), so a client that sends its request slowly, or
 * nothing, costs a connection slot and no more.
 */
#define METRICS_MAX_CONNECTIONS 256	/* beyond: left in the listen backlog */
#define METRICS_IDLE_TIMEOUT_S 5	/* a silent connection is closed */
#define METRICS_BACKLOG 128

struct vp_metrics_server {
	struct MHD_Daemon *httpd;
	vp_metrics_collect_fn collect;
	void *arg;
};

/* libmicrohttpd's own messages (connection limit reached, ...): clients can cause them. */
__attribute__((format(printf, 2, 0)))
static void httpd_log(void *arg, const char *fmt, va_list ap)
{
	static struct vp_ratelimit rl = VP_RATELIMIT_INIT(10, 60.0);
	char msg[512];

	(void)arg;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	msg[strcspn(msg, "\n")] = '\0';
	vp_log_limited(&rl, LOG_WARNING, "metrics", "http server: %s", msg);
}

/* Queues status with body (ownership passes to the response) and our headers. */
static enum MHD_Result reply(struct MHD_Connection *conn, unsigned int status,
			     char *body, size_t body_len)
{
	struct MHD_Response *resp;
	enum MHD_Result rc;

	resp = MHD_create_response_from_buffer(body_len, body, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(body);
		return MHD_NO;	/* closes the connection */
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
				"text/plain; version=0.0.4; charset=utf-8");
	/* one scrape per connection: an idle keep-alive would hold a slot */
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, MHD_HTTP_METHOD_GET);
	rc = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return rc;
}

/* GET /metrics (or /): the text format; anything else: 404 or 405. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn,
				  const char *url, const char *method,
				  const char *version, const char *upload_data,
				  size_t *upload_data_size, void **req_state)
{
	struct vp_metrics_server *srv = cls;
	unsigned int status = MHD_HTTP_OK;
	char *body = NULL;
	size_t body_len = 0;
	FILE *mem;

	(void)version;
	(void)upload_data;
	(void)upload_data_size;
	(void)req_state;
	mem = open_memstream(&body, &body_len);
	if (!mem)
		return MHD_NO;
	if (strcmp(method, MHD_HTTP_METHOD_GET)) {
		status = MHD_HTTP_METHOD_NOT_ALLOWED;
		fputs("only GET /metrics is served here\n", mem);
	} else if (strcmp(url, "/metrics") && strcmp(url, "/")) {
		status = MHD_HTTP_NOT_FOUND;
		fputs("viperfs serves its metrics at /metrics\n", mem);
	} else {
		vp_metrics_write(mem, srv->collect, srv->arg);
	}
	if (fclose(mem)) {
		free(body);
		return MHD_NO;
	}
	return reply(conn, status, body, body_len);
}

/* Splits "PORT", "ADDR:PORT" or "[V6]:PORT"; 0, or -EINVAL with a message in err. */
static int split_addr(const char *addr, char *host, size_t host_len,
		      char *port, size_t port_len, char *err, size_t errlen)
{
	const char *colon = strrchr(addr, ':');

	if (colon) {
		snprintf(host, host_len, "%.*s", (int)(colon - addr), addr);
		snprintf(port, port_len, "%s", colon + 1);
		if (host[0] == '[' && host[strlen(host) - 1] == ']') {
			memmove(host, host + 1, strlen(host));
			host[strlen(host) - 1] = '\0';
		}
	} else {
		snprintf(host, host_len, "127.0.0.1");
		snprintf(port, port_len, "%s", addr);
	}
	if (!*port || strspn(port, "0123456789") != strlen(port)) {
		snprintf(err, errlen, "metrics address '%s': want PORT or ADDR:PORT", addr);
		return -EINVAL;
	}
	return 0;
}

/*
 * A listening socket on ai (ours, not libmicrohttpd's, so that a failure
 * says which call failed and why); the fd, or -errno.
 */
static int listen_on(const struct addrinfo *ai)
{
	int one = 1, fd, rc;

	fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, METRICS_BACKLOG)) {
		rc = -errno;
		close(fd);
		return rc;
	}
	return fd;
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
	unsigned int flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG;
	int listen_fd, rc;

	if (split_addr(addr, host, sizeof(host), port, sizeof(port), err, errlen))
		return NULL;
	rc = getaddrinfo(*host ? host : NULL, port, &hints, &ai);
	if (rc) {
		snprintf(err, errlen, "metrics address '%s': %s", addr, gai_strerror(rc));
		return NULL;
	}
	srv = calloc(1, sizeof(*srv));
	if (!srv) {
		snprintf(err, errlen, "out of memory");
		goto err_free_ai;
	}
	srv->collect = collect;
	srv->arg = arg;
	listen_fd = listen_on(ai);
	if (listen_fd < 0) {
		snprintf(err, errlen, "metrics address '%s': cannot listen there: %s%s",
			 addr, strerror(-listen_fd),
			 listen_fd == -EADDRINUSE ? "; pick a free port with -o metrics=ADDR:PORT" :
			 listen_fd == -EADDRNOTAVAIL ? "; name an address of this host" : "");
		goto err_free_srv;
	}
	if (ai->ai_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	srv->httpd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, srv,
				      MHD_OPTION_EXTERNAL_LOGGER, httpd_log, NULL,
				      MHD_OPTION_LISTEN_SOCKET, listen_fd,
				      MHD_OPTION_CONNECTION_LIMIT,
				      (unsigned int)METRICS_MAX_CONNECTIONS,
				      MHD_OPTION_CONNECTION_TIMEOUT,
				      (unsigned int)METRICS_IDLE_TIMEOUT_S,
				      MHD_OPTION_END);
	if (!srv->httpd) {
		snprintf(err, errlen, "metrics address '%s': the HTTP server did not start (see the log)",
			 addr);
		goto err_close;
	}
	/* the server now owns listen_fd: MHD_stop_daemon closes it */
	freeaddrinfo(ai);
	vp_log(LOG_INFO, "metrics", "serving Prometheus metrics on http://%s%s%s:%s/metrics",
	       strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "", port);
	return srv;

err_close:
	close(listen_fd);
err_free_srv:
	free(srv);
err_free_ai:
	freeaddrinfo(ai);
	return NULL;
}

void vp_metrics_server_free(struct vp_metrics_server *srv)
{
	if (!srv)
		return;
	MHD_stop_daemon(srv->httpd);
	free(srv);
}
