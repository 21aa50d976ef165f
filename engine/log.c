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

void vp_log(int level, const char *subsys, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	int saved_errno = errno;

	if (level > __atomic_load_n(&log_level, __ATOMIC_RELAXED))
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	pthread_mutex_lock(&log_lock);
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
	pthread_mutex_unlock(&log_lock);
	errno = saved_errno;
}
