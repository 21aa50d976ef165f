/* ctl: see ctl.h. */
#define _GNU_SOURCE
#include "ctl.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "gpu.h"
#include "json.h"
#include "lock.h"
#include "log.h"
#include "ns.h"
#include "repl.h"
#include "version.h"

#define CTL_MAX_SERVING 64	/* requests served at once, one thread each */
#define CTL_RESERVED 16		/* of those, only for root and the mount's owner */
#define CTL_MAX_WAITING 128	/* connections whose request line is not in yet */
#define CTL_REQUEST_TIMEOUT_S 10.0	/* from accept to the end of the request line */
#define CTL_SEND_TIMEOUT_S 30	/* a client that reads nothing for this long is dropped */
#define CTL_ACCEPT_BATCH 32	/* accepts per turn of the loop */

/* Who is on the other end of a connection: SO_PEERCRED, SO_PEERGROUPS. */
struct peer {
	pid_t pid;
	uid_t uid;
	gid_t gid;
	gid_t *groups;		/* supplementary; owned */
	size_t ngroups;
	int privileged;		/* root, the daemon's user or the owner of the mount's root */
};

struct conn {
	struct vp_ctl *ctl;
	int fd;
	struct peer peer;
	double deadline;	/* vp_now() by which the request line must be in */
	size_t used;		/* bytes in line */
	char line[PATH_MAX + 128];	/* "wait " PATH " " VERSION " " SECONDS "\n" at the most */
	LIST_ENTRY(conn) link;		/* in ctl->serving; protected by ctl->lock */
};

/*
 * The accept thread owns the waiting connections (no lock: no one else
 * sees them); a connection moves to ctl->serving, and to a thread of its
 * own, once its request line is in.
 */
struct vp_ctl {
	struct vp_ns *ns;
	struct vp_gpu *gpu;		/* NULL: no GPU tier */
	struct vp_repl *repl;		/* NULL: no replication */
	char *mountpoint, *options;	/* owned; for status */
	double started;			/* Unix time of vp_ctl_start() */
	double started_mono;		/* vp_now() then: uptime_s */
	int listen_fd;
	int stop_pipe[2];
	pthread_t thread;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	pthread_mutex_t lock;
	pthread_cond_t idle;
	LIST_HEAD(, conn) serving;	/* protected by lock */
	unsigned int active;		/* protected by lock: conns in serving */
	unsigned int active_unprivileged;	/* protected by lock */
	int stopping;			/* atomic */
	struct conn *waiting[CTL_MAX_WAITING];	/* the accept thread's */
	unsigned int n_waiting;			/* the accept thread's */
};

/* ---- answers ---------------------------------------------------------- */

/*
 * Writes j (taken; NULL: jansson ran out of memory building it) as one
 * line and flushes it, with no lock held: a client that does not read
 * blocks this thread only, never the mount.  Returns 0, or EOF once the
 * client has gone.
 */
static int answer(FILE *out, json_t *j)
{
	char *line = vp_json_line(j);

	fputs(line ? line : "{\"error\":\"out of memory\"}\n", out);
	free(line);
	return fflush(out);
}

/* msg may hold a client's bytes (a path): it goes out as a name does. */
static void json_error(FILE *out, const char *msg)
{
	answer(out, json_pack("{s:o}", "error", vp_json_name(msg)));
}

static void conn_free(struct conn *c)
{
	close(c->fd);
	free(c->peer.groups);
	free(c);
}

/*
 * Answers a connection that gets no thread: one line, never blocking (the
 * accept thread sends it), then closes and frees c.  msg is short plain
 * text, one of this file's.
 */
static void conn_refuse(struct conn *c, const char *msg)
{
	char *line = vp_json_line(json_pack("{s:s}", "error", msg));

	/* a failure means the client is gone or not reading: nothing to tell */
	if (line)
		send(c->fd, line, strlen(line), MSG_DONTWAIT | MSG_NOSIGNAL);
	free(line);
	conn_free(c);
}

/* 1 if the client closed its end; its half-close after the request is not that. */
static int client_gone(int fd)
{
	struct pollfd pfd = { .fd = fd, .events = 0 };

	return poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLHUP | POLLERR));
}

/*
 * status: the namespace's part, built under its lock, then the GPU tier's
 * and replication's, each under its own, then the daemon's own (release,
 * start, mount); dumped and sent after every unlock (answer()).
 */
static json_t *status_json(struct vp_ctl *ctl)
{
	json_t *st = vp_ns_status(ctl->ns), *tiers = json_object_get(st, "tiers");

	if (!json_is_object(tiers) ||
	    json_object_update_missing_new(st, json_pack("{s:s,s:o,s:o,s:o,s:o}",
		"release", VP_RELEASE, "started", vp_json_real(ctl->started),
		"uptime_s", vp_json_real(vp_now() - ctl->started_mono),
		"mountpoint", vp_json_name(ctl->mountpoint),
		"options", vp_json_name(ctl->options))) ||
	    (!json_object_get(tiers, "gpu") &&
	     json_object_set_new(tiers, "gpu", ctl->gpu ? vp_gpu_status(ctl->gpu) : json_null())) ||
	    json_object_set_new(st, "repl", vp_repl_status(ctl->repl))) {
		json_decref(st);
		return NULL;
	}
	return st;
}

static void serve_status(struct conn *c, char *arg, FILE *out)
{
	(void)arg;
	answer(out, status_json(c->ctl));
}

static void serve_versions(struct conn *c, char *arg, FILE *out)
{
	json_t *files;

	if (vp_ns_versions(c->ctl->ns, arg, &files) == -ENOENT)
		json_error(out, "no such path in the mount");
	else
		answer(out, files);
}

static void serve_ping(struct conn *c, char *arg, FILE *out)
{
	(void)c;
	(void)arg;
	answer(out, json_pack("{s:b}", "pong", 1));
}

static void serve_flush(struct conn *c, char *path, FILE *out)
{
	struct vp_ctl *ctl = c->ctl;
	struct vp_ns *ns = ctl->ns;
	struct vp_flush_progress p;
	int rc = vp_ns_flush_start(ns, path, &p);

	if (rc) {
		json_error(out, "no such path in the mount");
		return;
	}
	do {
		rc = vp_ns_flush_poll(ns, &p, 0.2);
		if (answer(out, json_pack("{s:I,s:I,s:I,s:s,s:o*}",
					  "done", (json_int_t)p.bytes_done,
					  "total", (json_int_t)p.bytes_total,
					  "ops_left", (json_int_t)p.ops_left,
					  "error", p.last_error ? strerror(-p.last_error) : "",
					  "finished", rc ? json_true() : NULL)) == EOF)	/* o*: the last only */
			return;	/* the client went away */
	} while (rc == 0 && !__atomic_load_n(&ctl->stopping, __ATOMIC_RELAXED));
}

static json_t *event_json(const struct vp_event *ev)
{
	return json_pack("{s:o,s:I,s:I,s:o}", "path", vp_json_name(ev->path),
			 "version", (json_int_t)ev->version, "size", (json_int_t)ev->size,
			 "time", vp_json_real(ev->time));
}

/* watch PATH: one JSON line per new version below PATH, until the client leaves. */
static void serve_watch(struct conn *c, char *path, FILE *out)
{
	struct vp_ctl *ctl = c->ctl;
	uint64_t seq = vp_ns_event_seq(ctl->ns);
	struct vp_event ev;

	answer(out, json_pack("{s:b}", "watching", 1));
	/*
	 * The client half-closes after its request, so EOF on read means
	 * nothing; a client that left shows as a hang-up on the socket (or a
	 * failed write: the daemon ignores SIGPIPE), seen within 0.5 s even
	 * when no event comes.
	 */
	while (!__atomic_load_n(&ctl->stopping, __ATOMIC_RELAXED) && !client_gone(c->fd)) {
		int rc = vp_ns_next_event(ctl->ns, &seq, path, 0.5, &ev);

		if (rc == -EOVERFLOW)
			json_error(out, "events were lost: the watcher fell behind");
		if (rc == 1)
			answer(out, event_json(&ev));
		if (fflush(out) == EOF || ferror(out))
			return;
	}
}

/*
 * Cuts the last space-separated word off args (in place) and returns it,
 * or NULL if there is none: the words after a PATH, which may hold spaces.
 */
static char *last_word(char *args)
{
	char *space = strrchr(args, ' ');

	if (!space || !space[1])
		return NULL;
	*space = '\0';
	return space + 1;
}

/* wait PATH VERSION SECONDS: answers once PATH holds a newer version. */
static void serve_wait(struct conn *c, char *args, FILE *out)
{
	struct vp_ctl *ctl = c->ctl;
	char *secs = last_word(args), *ver = secs ? last_word(args) : NULL, *path = args;
	uint64_t seq = vp_ns_event_seq(ctl->ns), v, have;
	double deadline, timeout;
	struct vp_event ev;

	if (!ver || !*path) {
		json_error(out, "usage: wait PATH VERSION SECONDS");
		return;
	}
	{
		char *end;

		errno = 0;
		v = strtoull(ver, &end, 10);
		if (errno || end == ver || *end || *ver == '-') {
			json_error(out, "wait: VERSION is not a number");
			return;
		}
		timeout = strtod(secs, &end);
		if (end == secs || *end || !isfinite(timeout) || timeout < 0) {
			json_error(out, "wait: SECONDS is not a number of seconds");
			return;
		}
	}
	deadline = timeout > 0 ? vp_now() + timeout : 0;
	while (*path == '/')
		path++;
	/*
	 * The namespace first, then its events: on a consumer, a version
	 * renamed into place is an event only once the kernel shows it, and
	 * the answer must mean that opening the path gives the new bytes.
	 */
	have = vp_ns_path_version(ctl->ns, path);
	/* the client may act once it knows the wait watches the events */
	if ((have == UINT64_MAX || have <= v) && answer(out, json_pack("{s:b}", "waiting", 1)))
		return;
	for (;;) {
		int rc;

		if (have != UINT64_MAX && have > v) {
			answer(out, json_pack("{s:I}", "version", (json_int_t)have));
			return;
		}
		if (client_gone(c->fd))
			return;
		if (__atomic_load_n(&ctl->stopping, __ATOMIC_RELAXED) ||
		    (deadline && vp_now() >= deadline)) {
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

static json_t *warm_json(const struct vp_warm_progress *p, int done)
{
	return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:o*}",
			 "files", (json_int_t)p->files_total,
			 "files_done", (json_int_t)p->files_done,
			 "total", (json_int_t)p->bytes_total,
			 "done", (json_int_t)p->bytes_done,
			 "cached", (json_int_t)p->bytes_cached,
			 "errors", (json_int_t)p->errors,
			 "finished", done ? json_true() : NULL);	/* o*: the last only */
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
	return answer(w->out, warm_json(p, 0)) == EOF ? -EPIPE : 0;
}

/* warm PATH: reads PATH's files from the PFS into the cache. */
static void serve_warm(struct conn *c, char *path, FILE *out)
{
	struct warm_out w = { .out = out, .ctl = c->ctl };
	struct vp_warm_progress p;
	int rc = vp_ns_warm(c->ctl->ns, path, warm_progress, &w, &p);

	if (rc == -ENOENT)
		json_error(out, "no such path in the mount or on the PFS");
	else if (rc)
		json_error(out, strerror(-rc));
	else
		answer(out, warm_json(&p, 1));
}

/* idle SECONDS: answers once no file is open, or says how many still are. */
static void serve_idle(struct conn *c, char *secs, FILE *out)
{
	unsigned int open;

	if (vp_ns_wait_idle(c->ctl->ns, atof(secs), &open))
		answer(out, json_pack("{s:s,s:I}", "error", "busy", "open_files", (json_int_t)open));
	else
		answer(out, json_pack("{s:i}", "open_files", 0));
}

/*
 * gpu-export PATH: a CUDA IPC handle to the GPU mirror of PATH's newest
 * version.  The lease lasts as long as this connection: the answer is
 * sent, then the thread waits for the client to close (or for a stop).
 */
static void serve_gpu_export(struct conn *c, char *path, FILE *out)
{
	struct vp_ctl *ctl = c->ctl;
	struct vp_gpu *g = ctl->gpu;
	unsigned char handle[VP_TIER_IPC_HANDLE];
	char hex[2 * VP_TIER_IPC_HANDLE + 1];
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
	for (int i = 0; i < VP_TIER_IPC_HANDLE; i++)
		snprintf(hex + 2 * i, 3, "%02x", handle[i]);
	if (answer(out, json_pack("{s:s,s:I,s:I,s:i}", "handle", hex,
				  "version", (json_int_t)version, "size", (json_int_t)size,
				  "device", vp_gpu_device(g))) != EOF) {
		for (;;) {
			struct pollfd pfd[2] = {
				{ .fd = c->fd, .events = POLLIN },
				{ .fd = ctl->stop_pipe[0], .events = POLLIN },
			};
			char buf[64];

			if (poll(pfd, 2, -1) < 0 && errno != EINTR)
				break;
			if (pfd[1].revents)
				break;
			if (pfd[0].revents && read(c->fd, buf, sizeof(buf)) <= 0)
				break;	/* the client closed: the lease ends */
		}
	}
	vp_gpu_lease_release(g, lease);
}

/* ---- who may ask what --------------------------------------------------- */

enum access {
	ACCESS_ANYONE,		/* tells nothing about the mount */
	ACCESS_READ,		/* whoever may read the path it names (or the root) */
	ACCESS_OWNER,		/* root and the mount's owner: it changes things */
};

/* Which part of a request's argument is a path in the mount. */
enum path_arg {
	PATH_NONE,		/* the mount's root */
	PATH_ALL,		/* the whole argument */
	PATH_FIRST_WORD,	/* up to the first space (wait PATH V S) */
};

struct request {
	const char *verb;
	enum access access;
	enum path_arg path_arg;
	void (*serve)(struct conn *c, char *arg, FILE *out);
};

static const struct request requests[] = {
	{ "status", ACCESS_READ, PATH_NONE, serve_status },
	{ "versions", ACCESS_READ, PATH_ALL, serve_versions },
	{ "watch", ACCESS_READ, PATH_ALL, serve_watch },
	{ "wait", ACCESS_READ, PATH_FIRST_WORD, serve_wait },
	{ "gpu-export", ACCESS_READ, PATH_ALL, serve_gpu_export },
	{ "ping", ACCESS_ANYONE, PATH_NONE, serve_ping },
	{ "flush", ACCESS_OWNER, PATH_ALL, serve_flush },
	{ "warm", ACCESS_OWNER, PATH_ALL, serve_warm },
	{ "idle", ACCESS_OWNER, PATH_NONE, serve_idle },
};

static int in_groups(const struct peer *p, gid_t gid)
{
	if (p->gid == gid)
		return 1;
	for (size_t i = 0; i < p->ngroups; i++)
		if (p->groups[i] == gid)
			return 1;
	return 0;
}

/* The kernel's rule for mode bits: the owner's, else the group's, else the others'. */
static int may(const struct peer *p, const struct stat *st, mode_t want)
{
	mode_t bits;

	if (p->uid == 0)
		return 1;
	if (st->st_uid == p->uid)
		bits = st->st_mode >> 6;
	else if (in_groups(p, st->st_gid))
		bits = st->st_mode >> 3;
	else
		bits = st->st_mode;
	return (bits & want) == want;
}

/*
 * 0 if p may read path (len bytes, relative to the mount's root): search
 * permission on every directory on the way and read permission on the
 * last name that exists, as open() would judge it.  A name that does not
 * exist ends the walk allowed: wait and watch may name files ahead, and
 * the request itself says "no such path".  -EACCES with the refused part
 * of the path in where; other -errno from the namespace.  May block on
 * reading a directory from the PFS.
 */
static int may_read_path(struct vp_ns *ns, const struct peer *p, const char *path,
			 size_t len, char *where, size_t where_len)
{
	const char *end, *part, *walked;
	char name[NAME_MAX + 1];
	struct stat st, child;
	int rc = vp_ns_getattr(ns, VP_ROOT_INO, &st);

	if (rc)
		return rc;
	for (; len && *path == '/'; len--)
		path++;
	end = path + len;
	part = walked = path;
	for (;;) {
		size_t part_len;

		while (part < end && *part == '/')
			part++;
		if (part == end || !S_ISDIR(st.st_mode))
			break;	/* a file with more path after it: no such path */
		part_len = strcspn(part, "/");
		if (part + part_len > end)
			part_len = (size_t)(end - part);
		if (part_len == 1 && *part == '.') {
			part++;
			continue;
		}
		if (!may(p, &st, S_IXOTH))
			goto err_denied;
		walked = part + part_len;
		/* ".." would leave the walk's checks behind (the namespace has no such name) */
		if ((part_len == 2 && !strncmp(part, "..", 2)) || part_len > NAME_MAX)
			goto err_denied;
		memcpy(name, part, part_len);
		name[part_len] = '\0';
		/* the walk's own reference, dropped at once: the attributes are copied */
		rc = vp_ns_lookup(ns, st.st_ino, name, &child);
		if (rc == -ENOENT)
			return 0;
		if (rc)
			return rc;
		vp_ns_forget(ns, child.st_ino, 1);
		st = child;
		part += part_len;
	}
	if (!may(p, &st, S_IROTH))
		goto err_denied;
	return 0;

err_denied:
	snprintf(where, where_len, "/%.*s", (int)(walked - path), path);
	return -EACCES;
}

/*
 * 0 if c's peer may make request r with arg, or -EACCES with the reason
 * (for the client: it names nothing the caller may not see) in why.
 */
static int authorize(struct conn *c, const struct request *r, const char *arg,
		     char *why, size_t why_len)
{
	char where[PATH_MAX + 8];
	size_t len;
	int rc;

	if (c->peer.privileged || r->access == ACCESS_ANYONE)
		return 0;
	if (r->access == ACCESS_OWNER) {
		snprintf(why, why_len, "permission denied: '%s' is for root and the mount's owner only",
			 r->verb);
		return -EACCES;
	}
	len = r->path_arg == PATH_NONE ? 0 :
	      r->path_arg == PATH_FIRST_WORD ? strcspn(arg, " ") : strlen(arg);
	rc = may_read_path(c->ctl->ns, &c->peer, arg, len, where, sizeof(where));
	if (rc == -EACCES)
		snprintf(why, why_len, "permission denied: uid %u may not read '%s' in the mount",
			 (unsigned int)c->peer.uid, where);
	else if (rc)
		snprintf(why, why_len, "permission denied: cannot check '%.*s': %s",
			 (int)len, arg, strerror(-rc));
	return rc ? -EACCES : 0;
}

/* ---- serving ------------------------------------------------------------ */

static void serve_request(struct conn *c, FILE *out)
{
	static struct vp_ratelimit rl = VP_RATELIMIT_INIT(10, 60.0);
	const struct request *r = NULL;
	char *line = c->line, *arg, why[PATH_MAX + 160];

	line[strcspn(line, "\r\n")] = '\0';
	arg = strchr(line, ' ');
	if (arg)
		*arg++ = '\0';
	else
		arg = line + strlen(line);
	for (size_t i = 0; i < sizeof(requests) / sizeof(requests[0]); i++)
		if (!strcmp(line, requests[i].verb))
			r = &requests[i];
	if (!r) {
		json_error(out, "unknown request; try status, versions PATH, flush PATH, warm PATH, idle S, watch PATH, wait PATH V S");
		return;
	}
	if (authorize(c, r, arg, why, sizeof(why))) {
		json_error(out, why);
		/* not the path: a client's bytes do not go into the log */
		vp_log_limited(&rl, LOG_WARNING, "ctl", "refused '%s' from uid %u (pid %d): %s",
			       r->verb, (unsigned int)c->peer.uid, (int)c->peer.pid,
			       r->access == ACCESS_OWNER ? "for root and the mount's owner only" :
			       "it may not read the path it names");
		return;
	}
	r->serve(c, arg, out);
}

/* Counts c in; ctl->lock held. */
static void serving_add_locked(struct vp_ctl *ctl, struct conn *c)
{
	VP_ASSERT_LOCKED(&ctl->lock);
	LIST_INSERT_HEAD(&ctl->serving, c, link);
	ctl->active++;
	if (!c->peer.privileged)
		ctl->active_unprivileged++;
}

/* Counts c out, and wakes vp_ctl_stop() after the last; ctl->lock held. */
static void serving_remove_locked(struct vp_ctl *ctl, struct conn *c)
{
	VP_ASSERT_LOCKED(&ctl->lock);
	assert(ctl->active > 0);
	LIST_REMOVE(c, link);
	ctl->active--;
	if (!c->peer.privileged)
		ctl->active_unprivileged--;
	if (ctl->active == 0)
		pthread_cond_broadcast(&ctl->idle);
}

static void *conn_main(void *arg)
{
	struct conn *c = arg;
	struct vp_ctl *ctl = c->ctl;
	/* its own descriptor: fclose() must not close c->fd, which stop shuts down */
	int out_fd = dup(c->fd);
	FILE *out = out_fd >= 0 ? fdopen(out_fd, "w") : NULL;

	if (out) {
		serve_request(c, out);
		fclose(out);	/* may block on a slow reader: stop's shutdown() ends that */
	} else if (out_fd >= 0) {
		close(out_fd);
	}
	pthread_mutex_lock(&ctl->lock);
	serving_remove_locked(ctl, c);
	pthread_mutex_unlock(&ctl->lock);
	conn_free(c);
	return NULL;
}

/* Gives c, whose request line is in, a thread of its own, if there is room. */
static void conn_dispatch(struct vp_ctl *ctl, struct conn *c)
{
	static struct vp_ratelimit rl = VP_RATELIMIT_INIT(10, 60.0);
	struct timeval tv = { .tv_sec = CTL_SEND_TIMEOUT_S };
	unsigned int active;
	pthread_attr_t attr;
	pthread_t t;
	int room, rc;

	pthread_mutex_lock(&ctl->lock);
	active = ctl->active;
	room = active < CTL_MAX_SERVING &&
	       (c->peer.privileged || ctl->active_unprivileged < CTL_MAX_SERVING - CTL_RESERVED);
	if (room)
		serving_add_locked(ctl, c);
	pthread_mutex_unlock(&ctl->lock);
	if (!room) {
		vp_log_limited(&rl, LOG_WARNING, "ctl",
			       "refused a request from uid %u (pid %d): %u requests are in progress already (at most %d, %d of them kept for root and the mount's owner)",
			       (unsigned int)c->peer.uid, (int)c->peer.pid, active,
			       CTL_MAX_SERVING, CTL_RESERVED);
		conn_refuse(c, "busy: too many requests in progress; try again later");
		return;
	}
	setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	rc = pthread_attr_init(&attr);
	if (!rc) {
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		rc = pthread_create(&t, &attr, conn_main, c);
		pthread_attr_destroy(&attr);
	}
	if (rc) {
		pthread_mutex_lock(&ctl->lock);
		serving_remove_locked(ctl, c);
		pthread_mutex_unlock(&ctl->lock);
		vp_log_limited(&rl, LOG_WARNING, "ctl", "no thread for a request: %s", strerror(rc));
		conn_refuse(c, "busy: the daemon is out of threads; try again later");
	}
}

/*
 * Reads what the client has sent, without blocking.  Returns 1 when the
 * request line is complete (a newline, or EOF after some bytes), 0 when
 * more is to come, -1 when the connection is to be dropped (EOF before
 * anything, an error, a line too long: refused already).
 */
static int conn_read(struct conn *c)
{
	for (;;) {
		size_t room = sizeof(c->line) - 1 - c->used;
		ssize_t n;

		if (room == 0) {
			conn_refuse(c, "request line too long");
			return -1;
		}
		n = recv(c->fd, c->line + c->used, room, MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return 0;
		if (n < 0 || (n == 0 && c->used == 0)) {
			conn_free(c);
			return -1;
		}
		if (n == 0)
			break;
		c->line[c->used + (size_t)n] = '\0';
		if (memchr(c->line + c->used, '\n', (size_t)n)) {
			c->used += (size_t)n;
			break;
		}
		c->used += (size_t)n;
	}
	c->line[c->used] = '\0';
	return 1;
}

/* Removes waiting[i] (the accept thread's list, in no order). */
static struct conn *waiting_take(struct vp_ctl *ctl, unsigned int i)
{
	struct conn *c = ctl->waiting[i];

	ctl->waiting[i] = ctl->waiting[--ctl->n_waiting];
	return c;
}

/*
 * The waiting connection to drop to make room: the oldest of an
 * unprivileged peer, else the oldest.
 */
static unsigned int waiting_victim(struct vp_ctl *ctl)
{
	unsigned int best = 0;

	for (unsigned int i = 1; i < ctl->n_waiting; i++) {
		const struct conn *a = ctl->waiting[i], *b = ctl->waiting[best];

		if (a->peer.privileged != b->peer.privileged ?
		    !a->peer.privileged : a->deadline < b->deadline)
			best = i;
	}
	return best;
}

static void drop_waiting(struct vp_ctl *ctl, const char *why)
{
	static struct vp_ratelimit rl = VP_RATELIMIT_INIT(10, 60.0);
	struct conn *c = waiting_take(ctl, waiting_victim(ctl));

	vp_log_limited(&rl, LOG_WARNING, "ctl",
		       "dropped a connection from uid %u (pid %d) that had sent no request yet: %s",
		       (unsigned int)c->peer.uid, (int)c->peer.pid, why);
	conn_refuse(c, "dropped: too many connections without a request");
}

/* Who is calling: credentials at connect() time, as the kernel keeps them. */
static int peer_init(struct vp_ctl *ctl, int fd, struct peer *p)
{
	struct ucred cred;
	socklen_t len = sizeof(cred), groups_len = 0;
	struct stat root;

	memset(p, 0, sizeof(*p));
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len))
		return -errno;
	p->pid = cred.pid;
	p->uid = cred.uid;
	p->gid = cred.gid;
	/* the supplementary groups (Linux 4.13); without them, the primary group only */
	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, NULL, &groups_len) &&
	    errno == ERANGE && groups_len) {
		p->groups = malloc(groups_len);
		if (!p->groups)
			return -ENOMEM;
		if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, p->groups, &groups_len))
			groups_len = 0;
		p->ngroups = groups_len / sizeof(gid_t);
	}
	p->privileged = p->uid == 0 || p->uid == geteuid() ||
		(!vp_ns_getattr(ctl->ns, VP_ROOT_INO, &root) && root.st_uid == p->uid);
	return 0;
}

/* Accepts what is there (up to a batch); pause_until set when out of descriptors. */
static void accept_some(struct vp_ctl *ctl, double *pause_until)
{
	static struct vp_ratelimit rl = VP_RATELIMIT_INIT(10, 60.0);

	for (int i = 0; i < CTL_ACCEPT_BATCH; i++) {
		int fd = accept4(ctl->listen_fd, NULL, NULL, SOCK_CLOEXEC);
		struct conn *c;
		int rc;

		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM) {
				vp_log_limited(&rl, LOG_WARNING, "ctl", "accept: %s; %s",
					       strerror(errno), ctl->n_waiting ?
					       "dropping the oldest idle connection" :
					       "not accepting for 100 ms");
				if (ctl->n_waiting)
					drop_waiting(ctl, "the daemon is out of file descriptors");
				else
					*pause_until = vp_now() + 0.1;
			}
			return;	/* EAGAIN: all taken */
		}
		c = calloc(1, sizeof(*c));
		if (!c) {
			close(fd);
			continue;
		}
		c->ctl = ctl;
		c->fd = fd;
		c->deadline = vp_now() + CTL_REQUEST_TIMEOUT_S;
		rc = peer_init(ctl, fd, &c->peer);
		if (rc) {
			vp_log_limited(&rl, LOG_WARNING, "ctl", "a client without credentials: %s",
				       strerror(-rc));
			conn_free(c);
			continue;
		}
		/* the client usually sent its line with connect(): serve it at once */
		rc = conn_read(c);
		if (rc == 1) {
			conn_dispatch(ctl, c);
		} else if (rc == 0) {
			if (ctl->n_waiting == CTL_MAX_WAITING)
				drop_waiting(ctl, "too many connections without a request");
			ctl->waiting[ctl->n_waiting++] = c;
		}
	}
}

/*
 * The accept thread: one poll over the listening socket, the stop pipe
 * and every connection whose request line is not complete, so an idle
 * client costs a descriptor and a buffer, not a thread.
 */
static void *accept_main(void *arg)
{
	static struct vp_ratelimit rl = VP_RATELIMIT_INIT(10, 60.0);
	struct vp_ctl *ctl = arg;
	struct pollfd pfd[2 + CTL_MAX_WAITING];
	double pause_until = 0;

	while (!__atomic_load_n(&ctl->stopping, __ATOMIC_RELAXED)) {
		double now = vp_now(), next = now + 60;
		unsigned int first_waiting, nfds = 0;
		int listening = now >= pause_until, timeout_ms;

		for (unsigned int i = ctl->n_waiting; i-- > 0;) {
			if (ctl->waiting[i]->deadline > now)
				continue;
			vp_log_limited(&rl, LOG_INFO, "ctl",
				       "dropped a connection from uid %u (pid %d): no request line within %.0f s",
				       (unsigned int)ctl->waiting[i]->peer.uid,
				       (int)ctl->waiting[i]->peer.pid, CTL_REQUEST_TIMEOUT_S);
			conn_refuse(waiting_take(ctl, i), "timed out waiting for the request line");
		}
		pfd[nfds++] = (struct pollfd){ .fd = ctl->stop_pipe[0], .events = POLLIN };
		pfd[nfds++] = (struct pollfd){ .fd = listening ? ctl->listen_fd : -1,
					       .events = POLLIN };
		if (!listening && pause_until < next)
			next = pause_until;
		first_waiting = nfds;
		for (unsigned int i = 0; i < ctl->n_waiting; i++) {
			pfd[nfds++] = (struct pollfd){ .fd = ctl->waiting[i]->fd, .events = POLLIN };
			if (ctl->waiting[i]->deadline < next)
				next = ctl->waiting[i]->deadline;
		}
		timeout_ms = (int)((next - now) * 1000) + 1;
		if (poll(pfd, nfds, timeout_ms) < 0) {
			if (errno == EINTR)
				continue;
			vp_log(LOG_ERR, "ctl", "poll: %s; the control socket stops answering",
			       strerror(errno));
			break;
		}
		if (pfd[0].revents)
			break;
		/* backwards: waiting_take moves the last entry, already looked at, into i */
		for (unsigned int i = ctl->n_waiting; i-- > 0;) {
			int rc;

			if (!pfd[first_waiting + i].revents)
				continue;
			rc = conn_read(ctl->waiting[i]);
			if (rc == 1)
				conn_dispatch(ctl, waiting_take(ctl, i));
			else if (rc < 0)
				(void)waiting_take(ctl, i);	/* freed by conn_read */
		}
		if (pfd[1].revents & POLLIN)
			accept_some(ctl, &pause_until);
	}
	while (ctl->n_waiting)
		conn_free(waiting_take(ctl, 0));
	return NULL;
}

/* The wall-clock time now, Unix seconds (status's "started"; never a deadline). */
static double wall_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct vp_ctl *vp_ctl_start(const struct vp_ctl_sources *src, const char *path,
			    char *err, size_t errlen)
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
	ctl->ns = src->ns;
	ctl->gpu = src->gpu;
	ctl->repl = src->repl;
	ctl->mountpoint = strdup(src->mountpoint ? src->mountpoint : "");
	ctl->options = strdup(src->options ? src->options : "");
	if (!ctl->mountpoint || !ctl->options) {
		free(ctl->mountpoint);
		free(ctl->options);
		free(ctl);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	ctl->started = wall_now();
	ctl->started_mono = vp_now();
	LIST_INIT(&ctl->serving);
	ctl->stop_pipe[0] = ctl->stop_pipe[1] = -1;
	strcpy(ctl->path, path);
	strcpy(addr.sun_path, path);
	pthread_mutex_init(&ctl->lock, NULL);
	pthread_cond_init(&ctl->idle, NULL);
	ctl->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (ctl->listen_fd < 0 || pipe2(ctl->stop_pipe, O_CLOEXEC))
		goto err_msg;
	unlink(path);	/* a socket left by a daemon that died */
	/* 0666: every request is checked against the caller's credentials (ctl.h) */
	if (bind(ctl->listen_fd, (struct sockaddr *)&addr, sizeof(addr)) ||
	    chmod(path, 0666) || listen(ctl->listen_fd, 128))
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
	if (ctl->stop_pipe[0] >= 0) {
		close(ctl->stop_pipe[0]);
		close(ctl->stop_pipe[1]);
	}
	pthread_cond_destroy(&ctl->idle);
	pthread_mutex_destroy(&ctl->lock);
	free(ctl->mountpoint);
	free(ctl->options);
	free(ctl);
	return NULL;
}

void vp_ctl_stop(struct vp_ctl *ctl)
{
	struct conn *c;

	if (!ctl)
		return;
	__atomic_store_n(&ctl->stopping, 1, __ATOMIC_RELAXED);
	if (write(ctl->stop_pipe[1], "x", 1) != 1)
		vp_log(LOG_WARNING, "ctl", "could not wake the control thread");
	pthread_join(ctl->thread, NULL);	/* no new connections after this */
	close(ctl->listen_fd);
	unlink(ctl->path);
	pthread_mutex_lock(&ctl->lock);
	/*
	 * Wakes every thread blocked on its client (a read, a write to one
	 * that does not read); the requests see stopping or a failed write
	 * and end.  A thread closes its descriptor only after leaving the
	 * list, under the lock: no shutdown() hits a reused descriptor.
	 */
	LIST_FOREACH(c, &ctl->serving, link)
		shutdown(c->fd, SHUT_RDWR);
	while (ctl->active)
		pthread_cond_wait(&ctl->idle, &ctl->lock);
	pthread_mutex_unlock(&ctl->lock);
	close(ctl->stop_pipe[0]);
	close(ctl->stop_pipe[1]);
	pthread_cond_destroy(&ctl->idle);
	pthread_mutex_destroy(&ctl->lock);
	free(ctl->mountpoint);
	free(ctl->options);
	free(ctl);
}
