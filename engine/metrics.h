/*
 * metrics: process-wide counters and histograms, served in the Prometheus
 * text format (-o metrics=ADDR:PORT).
 *
 * DESIGN: one daemon serves one mount, so the counters are process-wide
 * statics, bumped with relaxed atomics from any thread (no locks on the
 * I/O path).  Values that live in other objects (pool use, flush lag, the
 * peers) are asked for when a scrape comes, through a collect callback.
 *
 * THREADING: vp_metrics_* recorders are thread-safe and never block.  The
 * server is libmicrohttpd with one internal thread that polls all its
 * connections and answers one scrape at a time; collect runs there.
 *
 * LIMITS: at most 256 connections at once (more wait in the listen
 * backlog), each closed after 5 s without a byte in either direction and
 * after its one answer (Connection: close).  So idle or slow clients take
 * slots but never the thread: a scrape is answered while 200 of them are
 * connected.  A client that trickles a byte every few seconds keeps its
 * slot; only 256 such clients would stop scrapes.
 */
#ifndef VP_METRICS_H
#define VP_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* FUSE requests, as counted and timed in fs/. */
enum vp_fuse_op {
	VP_FOP_LOOKUP, VP_FOP_GETATTR, VP_FOP_SETATTR, VP_FOP_READLINK,
	VP_FOP_MKNOD, VP_FOP_MKDIR, VP_FOP_UNLINK, VP_FOP_RMDIR, VP_FOP_SYMLINK,
	VP_FOP_RENAME, VP_FOP_LINK, VP_FOP_OPEN, VP_FOP_READ, VP_FOP_WRITE,
	VP_FOP_FLUSH, VP_FOP_RELEASE, VP_FOP_FSYNC, VP_FOP_OPENDIR, VP_FOP_READDIR,
	VP_FOP_RELEASEDIR, VP_FOP_FSYNCDIR, VP_FOP_STATFS, VP_FOP_SETXATTR,
	VP_FOP_GETXATTR, VP_FOP_LISTXATTR, VP_FOP_REMOVEXATTR, VP_FOP_CREATE,
	VP_FOP_FALLOCATE, VP_FOP_FORGET,
	VP_FOP_COUNT
};

/* Byte counters. */
enum vp_counter {
	VP_C_BYTES_WRITTEN,	/* by writers through the mount */
	VP_C_BYTES_READ,	/* by readers through the mount */
	VP_C_BYTES_FLUSHED,	/* to the PFS */
	VP_C_BYTES_REPL_OUT,	/* served to consumers (producer) */
	VP_C_BYTES_REPL_IN,	/* fetched from the producer (consumer) */
	VP_C_CACHE_HITS,	/* chunks read from the cache */
	VP_C_CACHE_MISSES,	/* chunks read from the PFS copy */
	VP_C_VERSIONS,		/* versions committed or installed */
	VP_C_OPENS_PASSTHROUGH,	/* read-only opens the kernel serves from a memory file */
	VP_C_OPENS_DAEMON,	/* read-only opens the daemon serves */
	VP_C_COMMITS_REFUSED,	/* working copies dropped because a write to them failed */
	VP_C_COUNT
};

/* Records one FUSE request of op that took seconds. */
void vp_metrics_fuse_op(enum vp_fuse_op op, double seconds);
/* Adds n to a counter. */
void vp_metrics_add(enum vp_counter c, uint64_t n);
uint64_t vp_metrics_get(enum vp_counter c);
/* Records a consumer's notification latency: last byte in to the install syscall returning. */
void vp_metrics_notify_latency(double seconds);

/*
 * Writes every metric in the Prometheus text format (version 0.0.4).
 * collect, if not NULL, is called to append the gauges other objects own.
 */
typedef void (*vp_metrics_collect_fn)(void *arg, FILE *out);
void vp_metrics_write(FILE *out, vp_metrics_collect_fn collect, void *arg);

/*
 * Serves GET /metrics (and GET /) on addr ("PORT", "ADDR:PORT",
 * "[V6ADDR]:PORT"; a bare port binds 127.0.0.1); other paths get 404,
 * other methods 405.  collect and arg are borrowed until the server is
 * freed.  Returns a new server, or NULL with a message in err (a bad
 * address, or why it could not listen there: in use, not on this host).
 */
struct vp_metrics_server;
struct vp_metrics_server *vp_metrics_serve(const char *addr,
					   vp_metrics_collect_fn collect,
					   void *arg, char *err, size_t errlen);
/* Stops the server, closes its connections, waits for its thread.  NULL is a no-op. */
void vp_metrics_server_free(struct vp_metrics_server *srv);

#endif
