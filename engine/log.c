/* log: see log.h. */
#define _GNU_SOURCE
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "clock.h"
#include "lock.h"

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static enum vp_log_sink log_sink = VP_LOG_STDERR;
static FILE *log_file;		/* protected by log_lock */
static int log_level = LOG_INFO;

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

/* One line to the sink.  Called with log_lock held. */
static void log_write_locked(int level, const char *subsys, const char *raw)
{
	char msg[4096];

	VP_ASSERT_LOCKED(&log_lock);
	if (level > __atomic_load_n(&log_level, __ATOMIC_RELAXED))
		return;
	escape_controls(raw, msg, sizeof(msg));
	if (log_sink == VP_LOG_SYSLOG) {
		syslog(level, "%s: %s", subsys, msg);
	} else {
		FILE *out = log_file ? log_file : stderr;
		struct timespec ts;
		struct tm tm;
		char stamp[32];

		clock_gettime(CLOCK_REALTIME, &ts);
		localtime_r(&ts.tv_sec, &tm);
		strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S", &tm);
		fprintf(out, "%s.%03ld viperfs %s %s: %s\n", stamp,
			ts.tv_nsec / 1000000, level_names[level], subsys, msg);
	}
}
