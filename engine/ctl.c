/* ctl: see ctl.h. */
#define _GNU_SOURCE
#include "ctl.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "accept.h"
#include "clock.h"
#include "gpu.h"
#include "log.h"
#include "ns.h"

struct vp_ctl {
	struct vp_ns *ns;
	int listen_fd;
	int stop_pipe[2];
	pthread_t thread;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	pthread_mutex_t lock;
	pthread_cond_t idle;
	unsigned int active;	/* protected by lock */
	int stopping;		/* atomic */
};

struct conn {
	struct vp_ctl *ctl;
	int fd;
};

static void json_error(FILE *out, const char *msg)
{
	fputs("{\"error\":\"", out);
	for (; *msg; msg++)
		fputc(*msg == '"' ? '\'' : *msg, out);
	fputs("\"}\n", out);
}

static void serve_flush(struct vp_ctl *ctl, const char *path, FILE *out)
{
	struct vp_ns *ns = ctl->ns;
	struct vp_flush_progress p;
	int rc = vp_ns_flush_start(ns, path, &p);

	if (rc) {
		json_error(out, "no such path in the mount");
		return;
	}
	do {
		rc = vp_ns_flush_poll(ns, &p, 0.2);
		fprintf(out, "{\"done\":%llu,\"total\":%llu,\"ops_left\":%llu,\"error\":\"%s\"%s}\n",
			(unsigned long long)p.bytes_done,
			(unsigned long long)p.bytes_total,
			(unsigned long long)p.ops_left,
			p.last_error ? strerror(-p.last_error) : "",
			rc ? ",\"finished\":true" : "");
		if (fflush(out) == EOF)
			return;	/* the client went away */
	} while (rc == 0 && !__atomic_load_n(&ctl->stopping, __ATOMIC_RELAXED));
}

static void json_path(FILE *out, const char *s)
{
	fputc('"', out);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fputc('\\', out);
		if ((unsigned char)*s < 0x20)
			fprintf(out, "\\u%04x", *s);
		else
			fputc(*s, out);
	}
	fputc('"', out);
}

static void print_event(FILE *out, const struct vp_event *ev)
{
	fputs("{\"path\":", out);
	json_path(out, ev->path);
	fprintf(out, ",\"version\":%llu,\"size\":%llu,\"time\":%.6f}\n",
		(unsigned long long)ev->version, (unsigned long long)ev->size, ev->time);
}

/* watch PATH: one JSON line per new version below PATH, until the client leaves. */
static void serve_watch(struct vp_ctl *ctl, const char *path, FILE *out, int fd)
{
	uint64_t seq = vp_ns_event_seq(ctl->ns);
	struct vp_event ev;

	fputs("{\"watching\":true}\n", out);
	fflush(out);
	/*
	 * The client half-closes after its request, so EOF on read means
	 * nothing; a client that left shows as a failed write (EPIPE: the
	 * daemon ignores SIGPIPE).
	 */
	(void)fd;
	while (!__atomic_load_n(&ctl->stopping, __ATOMIC_RELAXED)) {
		int rc = vp_ns_next_event(ctl->ns, &seq, path, 0.5, &ev);

		if (rc == -EOVERFLOW)
			fputs("{\"error\":\"events were lost: the watcher fell behind\"}\n", out);
		if (rc == 1)
			print_event(out, &ev);
		if (fflush(out) == EOF || ferror(out))
			return;
	}
}

/* wait PATH VERSION SECONDS: answers once PATH holds a newer version. */
static void serve_wait(struct vp_ctl *ctl, char *args, FILE *out)
{
	char *save = NULL, *path = strtok_r(args, " ", &save);
	char *ver = strtok_r(NULL, " ", &save), *secs = strtok_r(NULL, " ", &save);
	uint64_t seq = vp_ns_event_seq(ctl->ns), v, have;
	double deadline, timeout;
	struct vp_event ev;

	if (!path || !ver || !secs) {
		json_error(out, "usage: wait PATH VERSION SECONDS");
		return;
	}
	v = strtoull(ver, NULL, 10);
	timeout = atof(secs);
	deadline = timeout > 0 ? (double)time(NULL) + timeout : 0;
	while (*path == '/')
		path++;
	/*
	 * The namespace first, then its events: on a consumer, a version
	 * renamed into place is an event only once the kernel shows it, and
	 * the answer must mean that opening the path gives the new bytes.
	 */
	have = vp_ns_path_version(ctl->ns, path);
	for (;;) {
		int rc;

		if (have != UINT64_MAX && have > v) {
			fprintf(out, "{\"version\":%llu}\n", (unsigned long long)have);
			return;
		}
		if (__atomic_load_n(&ctl->stopping, __ATOMIC_RELAXED) ||
		    (deadline && (double)time(NULL) >= deadline)) {
			json_error(out, "timed out");
			return;
		}
		rc = vp_ns_next_event(ctl->ns, &seq, path, 0.5, &ev);
		if (rc == 1 && !strcmp(ev.path, path))
			have = ev.version;
		else if (rc == -EOVERFLOW)
			have = vp_ns_path_version(ctl->ns, path);	/* events were lost */
	}
}

struct warm_out {
	FILE *out;
	double last;
	struct vp_ctl *ctl;
};

static void print_warm(FILE *out, const struct vp_warm_progress *p, int finished)
{
	fprintf(out, "{\"files\":%llu,\"files_done\":%llu,\"total\":%llu,\"done\":%llu,"
		"\"cached\":%llu,\"errors\":%llu%s}\n",
		(unsigned long long)p->files_total, (unsigned long long)p->files_done,
		(unsigned long long)p->bytes_total, (unsigned long long)p->bytes_done,
		(unsigned long long)p->bytes_cached, (unsigned long long)p->errors,
		finished ? ",\"finished\":true" : "");
}

/* Progress at most every 200 ms; stops when the client has gone. */
static int warm_progress(void *arg, const struct vp_warm_progress *p)
{
	struct warm_out *w = arg;
	double now = vp_now();

	if (__atomic_load_n(&w->ctl->stopping, __ATOMIC_RELAXED))
		return -ECANCELED;
	if (now - w->last < 0.2)
		return 0;
	w->last = now;
	print_warm(w->out, p, 0);
	return fflush(w->out) == EOF ? -EPIPE : 0;
}

/* warm PATH: reads PATH's files from the PFS into the cache. */
static void serve_warm(struct vp_ctl *ctl, const char *path, FILE *out)
{
	struct warm_out w = { .out = out, .ctl = ctl };
	struct vp_warm_progress p;
	int rc = vp_ns_warm(ctl->ns, path, warm_progress, &w, &p);

	if (rc == -ENOENT)
		json_error(out, "no such path in the mount or on the PFS");
	else if (rc)
		json_error(out, strerror(-rc));
	else
		print_warm(out, &p, 1);
}

/* idle SECONDS: answers once no file is open, or says how many still are. */
static void serve_idle(struct vp_ctl *ctl, const char *secs, FILE *out)
{
	unsigned int open;

	if (vp_ns_wait_idle(ctl->ns, atof(secs), &open))
		fprintf(out, "{\"error\":\"busy\",\"open_files\":%u}\n", open);
	else
		fputs("{\"open_files\":0}\n", out);
}

/*
 * gpu-export PATH: a CUDA IPC handle to the GPU mirror of PATH's newest
 * version.  The lease lasts as long as this connection: the answer is
 * sent, then the thread waits for the client to close (or for a stop).
 */
static void serve_gpu_export(struct vp_ctl *ctl, const char *path, FILE *out, int fd)
{
	struct vp_gpu *g = vp_ns_gpu(ctl->ns);
	unsigned char handle[VP_TIER_IPC_HANDLE];
	struct vp_gpu_lease *lease = NULL;
	uint64_t ino, version, size;
	int rc;

	while (*path == '/')
		path++;
	rc = vp_ns_path_ino(ctl->ns, path, &ino);
	if (rc) {
		json_error(out, rc == -EISDIR ? "a directory has no GPU copy; name a file" :
			   "no such file in the mount");
		return;
	}
	if (!g) {
		json_error(out, "the GPU tier is off on this mount (gpu_cache=0, or no usable device: see viperctl status)");
		return;
	}
	rc = vp_gpu_export(g, ino, handle, &version, &size, &lease);
	if (rc) {
		json_error(out, rc == -ENOENT ? "not in GPU memory: its newest version is not mirrored (yet, or it did not fit in gpu_cache)" :
			   "the device refused the export (see the log)");
		return;
	}
	fputs("{\"handle\":\"", out);
	for (int i = 0; i < VP_TIER_IPC_HANDLE; i++)
		fprintf(out, "%02x", handle[i]);
	fprintf(out, "\",\"version\":%llu,\"size\":%llu,\"device\":%d}\n",
		(unsigned long long)version, (unsigned long long)size, vp_gpu_device(g));
	if (fflush(out) != EOF) {
		for (;;) {
			struct pollfd pfd[2] = {
				{ .fd = fd, .events = POLLIN },
				{ .fd = ctl->stop_pipe[0], .events = POLLIN },
			};
			char buf[64];

			if (poll(pfd, 2, -1) < 0 && errno != EINTR)
				break;
			if (pfd[1].revents)
				break;
			if (pfd[0].revents && read(fd, buf, sizeof(buf)) <= 0)
				break;	/* the client closed: the lease ends */
		}
	}
	vp_gpu_lease_release(g, lease);
}

static void *conn_main(void *arg)
{
	struct conn *c = arg;
	struct vp_ctl *ctl = c->ctl;
	char line[PATH_MAX + 32];
	FILE *in = fdopen(dup(c->fd), "r");
	FILE *out = fdopen(c->fd, "w");

	if (in && out && fgets(line, sizeof(line), in)) {
		char *arg2;

		line[strcspn(line, "\r\n")] = '\0';
		arg2 = strchr(line, ' ');
		if (arg2)
			*arg2++ = '\0';
		else
			arg2 = line + strlen(line);
		if (!strcmp(line, "status"))
			vp_ns_status_json(ctl->ns, out);
		else if (!strcmp(line, "versions") &&
			 vp_ns_versions_json(ctl->ns, arg2, out))
			json_error(out, "no such path in the mount");
		else if (!strcmp(line, "flush"))
			serve_flush(ctl, arg2, out);
		else if (!strcmp(line, "watch"))
			serve_watch(ctl, arg2, out, c->fd);
		else if (!strcmp(line, "wait"))
			serve_wait(ctl, arg2, out);
		else if (!strcmp(line, "warm"))
			serve_warm(ctl, arg2, out);
		else if (!strcmp(line, "idle"))
			serve_idle(ctl, arg2, out);
		else if (!strcmp(line, "gpu-export"))
			serve_gpu_export(ctl, arg2, out, c->fd);
		else if (!strcmp(line, "ping"))
			fputs("{\"pong\":true}\n", out);
		else if (strcmp(line, "versions"))
			json_error(out, "unknown request; try status, versions PATH, flush PATH, warm PATH, idle S, watch PATH, wait PATH V S");
	}
	if (in)
		fclose(in);
	if (out)
		fclose(out);
	else
		close(c->fd);
	free(c);
	pthread_mutex_lock(&ctl->lock);
	if (--ctl->active == 0)
		pthread_cond_broadcast(&ctl->idle);
	pthread_mutex_unlock(&ctl->lock);
	return NULL;
}

static void *accept_main(void *arg)
{
	struct vp_ctl *ctl = arg;

	for (;;) {
		int fd = vp_accept_until(ctl->listen_fd, ctl->stop_pipe[0]);
		struct conn *c;
		pthread_t t;

		if (fd < 0)
			break;
		c = malloc(sizeof(*c));
		if (!c) {
			close(fd);
			continue;
		}
		c->ctl = ctl;
		c->fd = fd;
		pthread_mutex_lock(&ctl->lock);
		ctl->active++;
		pthread_mutex_unlock(&ctl->lock);
		if (pthread_create(&t, NULL, conn_main, c)) {
			close(fd);
			free(c);
			pthread_mutex_lock(&ctl->lock);
			ctl->active--;
			pthread_mutex_unlock(&ctl->lock);
			continue;
		}
		pthread_detach(t);
	}
	return NULL;
}

struct vp_ctl *vp_ctl_start(struct vp_ns *ns, const char *path, char *err,
			    size_t errlen)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct vp_ctl *ctl;

	if (strlen(path) >= sizeof(addr.sun_path)) {
		snprintf(err, errlen, "control socket path '%s' is too long", path);
		return NULL;
	}
	ctl = calloc(1, sizeof(*ctl));
	if (!ctl) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	ctl->ns = ns;
	strcpy(ctl->path, path);
	strcpy(addr.sun_path, path);
	pthread_mutex_init(&ctl->lock, NULL);
	pthread_cond_init(&ctl->idle, NULL);
	ctl->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (ctl->listen_fd < 0 || pipe2(ctl->stop_pipe, O_CLOEXEC))
		goto err_msg;
	unlink(path);	/* a socket left by a daemon that died */
	if (bind(ctl->listen_fd, (struct sockaddr *)&addr, sizeof(addr)) ||
	    chmod(path, 0600) || listen(ctl->listen_fd, 16))
		goto err_msg;
	if (pthread_create(&ctl->thread, NULL, accept_main, ctl)) {
		errno = EAGAIN;
		goto err_msg;
	}
	return ctl;

err_msg:
	snprintf(err, errlen, "control socket '%s': %s", path, strerror(errno));
	if (ctl->listen_fd >= 0)
		close(ctl->listen_fd);
	free(ctl);
	return NULL;
}

void vp_ctl_stop(struct vp_ctl *ctl)
{
	if (!ctl)
		return;
	__atomic_store_n(&ctl->stopping, 1, __ATOMIC_RELAXED);
	if (write(ctl->stop_pipe[1], "x", 1) != 1)
		vp_log(LOG_WARNING, "ctl", "could not wake the control thread");
	pthread_join(ctl->thread, NULL);
	close(ctl->listen_fd);
	unlink(ctl->path);
	pthread_mutex_lock(&ctl->lock);
	while (ctl->active)
		pthread_cond_wait(&ctl->idle, &ctl->lock);
	pthread_mutex_unlock(&ctl->lock);
	close(ctl->stop_pipe[0]);
	close(ctl->stop_pipe[1]);
	free(ctl);
}
