/* log: see log.h. */
#define _GNU_SOURCE
#include "log.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "json.h"
#include "lock.h"

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static enum vp_log_sink log_sink = VP_LOG_STDERR;
static FILE *log_file;		/* protected by log_lock */
static int log_level = LOG_INFO;
static int log_json;		/* log_format=json; protected by log_lock */
static int log_utc;		/* log_time=utc; protected by log_lock */

/*
 * SIGHUP reopens the log file: the handler only raises hup_pending, and the
 * next line reopens it under log_lock before it is written (so it goes to
 * the new file, and the line before it says how the reopen went).  The
 * handler touches no descriptor: one it read could be closed by
 * vp_log_close, and its number reused, before it got to use it.
 */
static char log_path[PATH_MAX];		/* protected by log_lock */
static volatile sig_atomic_t hup_pending;

static const char *const level_names[] = {
	[LOG_EMERG] = "emerg", [LOG_ALERT] = "alert", [LOG_CRIT] = "crit",
	[LOG_ERR] = "error",   [LOG_WARNING] = "warning",
	[LOG_NOTICE] = "notice", [LOG_INFO] = "info", [LOG_DEBUG] = "debug",
};

int vp_log_level_parse(const char *name)
{
	for (int i = 0; i <= LOG_DEBUG; i++)
		if (!strcasecmp(name, level_names[i]))
			return i;
	if (!strcasecmp(name, "warn"))
		return LOG_WARNING;
	return -1;
}

int vp_log_open(enum vp_log_sink sink, const char *path, int level)
{
	int rc = 0;

	pthread_mutex_lock(&log_lock);
	if (sink == VP_LOG_FILE) {
		FILE *f = fopen(path, "ae");

		if (!f) {
			rc = -errno;
			goto out_unlock;
		}
		setvbuf(f, NULL, _IOLBF, 0);
		if (log_file)
			fclose(log_file);
		log_file = f;
		snprintf(log_path, sizeof(log_path), "%s", path);
	} else if (sink == VP_LOG_SYSLOG) {
		openlog("viperfs", LOG_PID, LOG_DAEMON);
	}
	log_sink = sink;
	log_level = level;
out_unlock:
	pthread_mutex_unlock(&log_lock);
	return rc;
}

void vp_log_close(void)
{
	pthread_mutex_lock(&log_lock);
	if (log_file)
		fclose(log_file);
	log_file = NULL;
	if (log_sink == VP_LOG_SYSLOG)
		closelog();
	log_sink = VP_LOG_STDERR;
	pthread_mutex_unlock(&log_lock);
}

void vp_log_set_level(int level)
{
	__atomic_store_n(&log_level, level, __ATOMIC_RELAXED);
}

void vp_log_set_format(int json, int utc)
{
	pthread_mutex_lock(&log_lock);
	log_json = json;
	log_utc = utc;
	pthread_mutex_unlock(&log_lock);
}

static void on_hup(int sig)
{
	(void)sig;
	hup_pending = 1;
}

int vp_log_reopen_on_hup(void)
{
	struct sigaction sa = { .sa_handler = on_hup, .sa_flags = SA_RESTART };

	sigemptyset(&sa.sa_mask);
	return sigaction(SIGHUP, &sa, NULL) ? -errno : 0;
}

int vp_log_syslog_reachable(char *why, size_t len)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX, .sun_path = "/dev/log" };
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0), rc = 0;

	if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr))) {
		snprintf(why, len, "%s: %s", addr.sun_path, strerror(errno));
		rc = -1;
	}
	if (fd >= 0)
		close(fd);
	return rc;
}

static void log_write_locked(int level, const char *subsys, const char *msg);

/* Formats and writes one line, if level passes the filter. */
static void log_vwrite(int level, const char *subsys, const char *fmt, va_list ap)
{
	char msg[1024];

	if (level > __atomic_load_n(&log_level, __ATOMIC_RELAXED))
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	pthread_mutex_lock(&log_lock);
	log_write_locked(level, subsys, msg);
	pthread_mutex_unlock(&log_lock);
}

void vp_log(int level, const char *subsys, const char *fmt, ...)
{
	va_list ap;
	int saved_errno = errno;

	va_start(ap, fmt);
	log_vwrite(level, subsys, fmt, ap);
	va_end(ap);
	errno = saved_errno;
}

int vp_log_limited(struct vp_ratelimit *rl, int level, const char *subsys,
		   const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	int saved_errno = errno, logged = 0;
	double now = vp_now();

	pthread_mutex_lock(&log_lock);
	if (now - rl->window_start >= rl->interval) {
		if (rl->suppressed) {
			snprintf(msg, sizeof(msg), "%llu more like the next were not logged in the last %.0f s",
				 rl->suppressed, now - rl->window_start);
			log_write_locked(level, subsys, msg);
		}
		rl->window_start = now;
		rl->in_window = 0;
		rl->suppressed = 0;
	}
	if (rl->in_window < rl->burst) {
		rl->in_window++;
		logged = 1;
	} else {
		rl->suppressed++;
	}
	pthread_mutex_unlock(&log_lock);
	if (logged) {
		va_start(ap, fmt);
		log_vwrite(level, subsys, fmt, ap);
		va_end(ap);
	}
	errno = saved_errno;
	return logged;
}

/*
 * A message quotes names that others chose (files, peers' reasons): its
 * control characters are written as \xNN, so that one cannot forge log
 * lines or drive the terminal of an admin who reads the log.
 */
static void escape_controls(const char *msg, char *out, size_t len)
{
	size_t o = 0;

	for (const unsigned char *p = (const unsigned char *)msg; *p && o + 5 < len; p++) {
		if (*p < 0x20 || *p == 0x7f)
			o += (size_t)snprintf(out + o, len - o, "\\x%02x", *p);
		else
			out[o++] = (char)*p;
	}
	out[o] = '\0';
}

/* The time stamp: ISO 8601 with milliseconds, in UTC (Z) or local time with its offset. */
static void stamp_now(char *out, size_t len)
{
	struct timespec ts;
	struct tm tm;
	char date[32], zone[8];

	clock_gettime(CLOCK_REALTIME, &ts);
	if (log_utc)
		gmtime_r(&ts.tv_sec, &tm);
	else
		localtime_r(&ts.tv_sec, &tm);
	strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm);
	if (log_utc) {
		snprintf(zone, sizeof(zone), "Z");
	} else {
		strftime(zone, sizeof(zone), "%z", &tm);	/* +0100 -> +01:00 */
		memmove(zone + 4, zone + 3, 3);
		zone[3] = ':';
	}
	snprintf(out, len, "%s.%03ld%s", date, ts.tv_nsec / 1000000, zone);
}

static void log_emit_locked(int level, const char *subsys, const char *raw);

/* A SIGHUP came: the log file opened again by its path.  Called with log_lock held. */
static void reopen_locked(void)
{
	char msg[PATH_MAX + 128];
	int level = LOG_NOTICE;

	VP_ASSERT_LOCKED(&log_lock);
	hup_pending = 0;
	if (!log_file) {
		snprintf(msg, sizeof(msg), "SIGHUP: no log file to reopen (it does not unmount; SIGTERM does)");
	} else {
		FILE *f = fopen(log_path, "ae");

		if (!f) {
			snprintf(msg, sizeof(msg), "SIGHUP: cannot reopen the log file '%s': %s; still writing to the one open",
				 log_path, strerror(errno));
			level = LOG_WARNING;
		} else {
			setvbuf(f, NULL, _IOLBF, 0);
			fclose(log_file);
			log_file = f;
			snprintf(msg, sizeof(msg), "SIGHUP: log file '%s' reopened", log_path);
		}
	}
	log_emit_locked(level, "log", msg);
}

/* One line to the sink, after a SIGHUP's reopen if one came.  Called with log_lock held. */
static void log_write_locked(int level, const char *subsys, const char *raw)
{
	VP_ASSERT_LOCKED(&log_lock);
	if (hup_pending)
		reopen_locked();
	log_emit_locked(level, subsys, raw);
}

static void log_emit_locked(int level, const char *subsys, const char *raw)
{
	char msg[4096], stamp[64];
	FILE *out = log_file ? log_file : stderr;

	if (level > __atomic_load_n(&log_level, __ATOMIC_RELAXED))
		return;
	if (log_sink == VP_LOG_SYSLOG) {
		escape_controls(raw, msg, sizeof(msg));
		syslog(level, "%s: %s", subsys, msg);
		return;
	}
	stamp_now(stamp, sizeof(stamp));
	if (log_json) {
		/* names that are not UTF-8 as everywhere else in our JSON (json.h) */
		char *line = vp_json_line(json_pack("{s:s,s:s,s:s,s:i,s:o}", "time", stamp,
						    "level", level_names[level], "subsys", subsys,
						    "pid", (int)getpid(), "msg", vp_json_name(raw)));

		if (line) {
			fputs(line, out);
			free(line);
			return;
		}
		/* out of memory: the line as text, not nothing */
	}
	escape_controls(raw, msg, sizeof(msg));
	fprintf(out, "%s viperfs %s %s: %s\n", stamp, level_names[level], subsys, msg);
}
