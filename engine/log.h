/*
 * log: the one logger of viperfs.
 *
 * Messages go to stderr (foreground, tests) or syslog (daemonised), with a
 * level filter.  Subsystem names are short words ("flush", "cache", "fs").
 *
 * THREADING: every function may be called from any thread.
 */
#ifndef VP_LOG_H
#define VP_LOG_H

#include <stddef.h>
#include <syslog.h>

/* Where log lines go.  VP_LOG_STDERR is the default until vp_log_open(). */
enum vp_log_sink { VP_LOG_STDERR, VP_LOG_SYSLOG, VP_LOG_FILE };

/*
 * Opens the sink.  For VP_LOG_FILE, path names the file (appended to);
 * returns 0 or -errno.  level is a syslog level (LOG_ERR ... LOG_DEBUG).
 */
int vp_log_open(enum vp_log_sink sink, const char *path, int level);
void vp_log_close(void);
void vp_log_set_level(int level);

/* log_format=json (1: one JSON object a line) and log_time=utc (1), for the stderr and file sinks. */
void vp_log_set_format(int json, int utc);

/*
 * SIGHUP reopens the log file (for logrotate) and does nothing else; the
 * next line says whether it worked.  Returns 0 or -errno from sigaction.
 */
int vp_log_reopen_on_hup(void);

/* 0 if syslog's socket (/dev/log) takes a connection, else -1 with why. */
int vp_log_syslog_reachable(char *why, size_t len);

/* Parses "error", "warning", "notice", "info", "debug"; -1 if unknown. */
int vp_log_level_parse(const char *name);

void vp_log(int level, const char *subsys, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * A rate limit for messages that others can cause (peers on the network,
 * local clients): the first burst messages of each interval are logged,
 * the rest are counted, and the next message after the interval says how
 * many were left out.  Define one per kind of message:
 *
 *	static struct vp_ratelimit rl = VP_RATELIMIT_INIT(10, 60.0);
 *	vp_log_limited(&rl, LOG_WARNING, "repl", "refused ...", ...);
 *
 * THREADING: any thread (the struct's fields are protected by the log's lock).
 */
struct vp_ratelimit {
	unsigned int burst;
	double interval;		/* seconds */
	double window_start;		/* vp_now() */
	unsigned int in_window;
	unsigned long long suppressed;
};
#define VP_RATELIMIT_INIT(burst_, interval_) { .burst = (burst_), .interval = (interval_) }

/* vp_log() under rl; returns 1 if the message was logged, 0 if it was counted. */
int vp_log_limited(struct vp_ratelimit *rl, int level, const char *subsys,
		   const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif
