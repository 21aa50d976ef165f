/* hook: see hook.h. */
#define _GNU_SOURCE
#include "hook.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "config.h"
#include "log.h"
#include "ns.h"

extern char **environ;

struct vp_hook {
	struct vp_ns *ns;
	char cmd[PATH_MAX];
	char mnt[PATH_MAX];
	double timeout;		/* seconds a command may run, 0: no limit */
	uint64_t seq;		/* the runner's place in the event ring */
	pthread_t thread;
	int stop;		/* atomic */
};

/* file names come from clients: so do these messages */
static struct vp_ratelimit rl_failed = VP_RATELIMIT_INIT(10, 60.0);
static struct vp_ratelimit rl_timeout = VP_RATELIMIT_INIT(10, 60.0);

static int is_hook_variable(const char *entry)
{
	return !strncmp(entry, "VIPERFS_PATH=", 13) || !strncmp(entry, "VIPERFS_VERSION=", 16) ||
	       !strncmp(entry, "VIPERFS_SIZE=", 13);
}

/*
 * Starts the command for ev in a process group of its own, with only
 * fds 0 (/dev/null), 1 and 2.  Returns 0 with *pid, or an errno.
 */
static int spawn(struct vp_hook *h, const struct vp_event *ev, pid_t *pid)
{
	char path[2 * PATH_MAX + 32], version[64], size[64];
	char *argv[] = { (char *)"/bin/sh", (char *)"-c", h->cmd, NULL };
	posix_spawn_file_actions_t actions;
	posix_spawnattr_t attr;
	sigset_t all, none;
	size_t n = 0, kept = 0;
	char **env;
	int rc;

	while (environ[n])
		n++;
	env = calloc(n + 4, sizeof(*env));
	if (!env)
		return ENOMEM;
	/* the daemon's own VIPERFS_* (if it was started with some) must not shadow the event's */
	for (size_t i = 0; i < n; i++)
		if (!is_hook_variable(environ[i]))
			env[kept++] = environ[i];
	snprintf(path, sizeof(path), "VIPERFS_PATH=%s/%s", h->mnt, ev->path);
	snprintf(version, sizeof(version), "VIPERFS_VERSION=%" PRIu64, ev->version);
	snprintf(size, sizeof(size), "VIPERFS_SIZE=%" PRIu64, ev->size);
	env[kept] = path;
	env[kept + 1] = version;
	env[kept + 2] = size;

	rc = posix_spawn_file_actions_init(&actions);
	if (rc)
		goto err_free_env;
	rc = posix_spawnattr_init(&attr);
	if (rc)
		goto err_destroy_actions;
	sigfillset(&all);
	sigemptyset(&none);
	if ((rc = posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)) ||
	    (rc = posix_spawn_file_actions_addclosefrom_np(&actions, 3)) ||
	    (rc = posix_spawnattr_setpgroup(&attr, 0)) ||
	    (rc = posix_spawnattr_setsigdefault(&attr, &all)) ||
	    (rc = posix_spawnattr_setsigmask(&attr, &none)) ||
	    (rc = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF |
					   POSIX_SPAWN_SETSIGMASK)))
		goto err_destroy_attr;
	rc = posix_spawn(pid, "/bin/sh", &actions, &attr, argv, env);
err_destroy_attr:
	posix_spawnattr_destroy(&attr);
err_destroy_actions:
	posix_spawn_file_actions_destroy(&actions);
err_free_env:
	free(env);
	return rc;
}

/*
 * Waits up to seconds (< 0: no bound) for child pid to exit, without
 * reaping it, so that pid and its process group stay the command's until
 * it is reaped.  With pidfd (-1 where the kernel has none) the wait is
 * an event; without, a poll every 20 ms.  With watch_stop, vp_hook_stop()
 * ends the wait within 250 ms.  Returns 1 once the child has exited, 0 if
 * it has not.
 */
static int wait_exited(struct vp_hook *h, pid_t pid, int pidfd, double seconds, int watch_stop)
{
	double deadline = seconds >= 0 ? vp_now() + seconds : 0;

	for (;;) {
		siginfo_t info = { 0 };
		double slice = pidfd >= 0 ? 0.25 : 0.02;

		if (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT) == 0) {
			if (info.si_pid == pid)
				return 1;
		} else if (errno != EINTR) {
			return 1;	/* not our child any more: nothing left to wait for */
		}
		if (watch_stop && __atomic_load_n(&h->stop, __ATOMIC_RELAXED))
			return 0;
		if (seconds >= 0) {
			double left = deadline - vp_now();

			if (left <= 0)
				return 0;
			if (left < slice)
				slice = left;
		}
		if (pidfd >= 0) {
			struct pollfd p = { .fd = pidfd, .events = POLLIN };

			poll(&p, 1, (int)ceil(slice * 1000));
		} else {
			struct timespec ts = { .tv_nsec = (long)(slice * 1e9) };

			nanosleep(&ts, NULL);
		}
	}
}

/*
 * sig to the command's process group (what its shell started) and to the
 * command itself, should it have left the group.  pid is not reaped yet,
 * so neither number can name another process.
 */
static void signal_command(pid_t pid, int sig)
{
	kill(-pid, sig);
	kill(pid, sig);
}

/*
 * Whether anything is left in the process group of the (reaped) command
 * pid.  While something is, the group keeps the number: no other process
 * can get it.
 */
static int group_left(pid_t pid)
{
	return kill(-pid, 0) == 0;
}

static void reap(pid_t pid, int *status)
{
	while (waitpid(pid, status, 0) < 0 && errno == EINTR)
		;
}

/*
 * Ends a command that overstayed: SIGTERM to it and its process group,
 * SIGKILL to whatever of them is left VP_HOOK_GRACE_S later.  Reaps the
 * command (*status).  Returns 1 if SIGKILL was needed.
 */
static int terminate(struct vp_hook *h, pid_t pid, int pidfd, int *status)
{
	struct timespec tick = { .tv_nsec = 20 * 1000 * 1000 };
	double grace_end = vp_now() + VP_HOOK_GRACE_S;
	int needed_kill = 0;

	signal_command(pid, SIGTERM);
	if (!wait_exited(h, pid, pidfd, VP_HOOK_GRACE_S, 0)) {
		signal_command(pid, SIGKILL);
		needed_kill = 1;
	}
	reap(pid, status);
	/* what it started may outlive it a moment (there is no event for a group) */
	while (group_left(pid) && vp_now() < grace_end)
		nanosleep(&tick, NULL);
	if (group_left(pid)) {
		kill(-pid, SIGKILL);
		needed_kill = 1;
	}
	return needed_kill;
}

static void run(struct vp_hook *h, const struct vp_event *ev)
{
	int status = 0, pidfd, rc, stopped = 0, needed_kill = 0;
	pid_t pid;

	rc = spawn(h, ev, &pid);
	if (rc) {
		vp_log_limited(&rl_failed, LOG_ERR, "hook",
			       "on_update for '%s': cannot run /bin/sh: %s", ev->path, strerror(rc));
		return;
	}
	pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (wait_exited(h, pid, pidfd, h->timeout > 0 ? h->timeout : -1, 1)) {
		reap(pid, &status);
	} else {
		stopped = 1;
		needed_kill = terminate(h, pid, pidfd, &status);
	}
	if (pidfd >= 0)
		close(pidfd);

	if (stopped && __atomic_load_n(&h->stop, __ATOMIC_RELAXED))
		vp_log(LOG_NOTICE, "hook",
		       "on_update for '%s' version %" PRIu64 " was still running at unmount; stopped it%s",
		       ev->path, ev->version, needed_kill ? " with SIGKILL" : "");
	else if (stopped)
		vp_log_limited(&rl_timeout, LOG_WARNING, "hook",
			       "on_update for '%s' version %" PRIu64 " timed out (on_update_timeout=%g s): "
			       "killed it%s; raise on_update_timeout if the command needs longer",
			       ev->path, ev->version, h->timeout,
			       needed_kill ? " with SIGKILL, as SIGTERM did not end it" : "");
	else if (WIFSIGNALED(status))
		vp_log_limited(&rl_failed, LOG_WARNING, "hook",
			       "on_update for '%s' version %" PRIu64 " failed: killed by signal %d",
			       ev->path, ev->version, WTERMSIG(status));
	else if (!WIFEXITED(status) || WEXITSTATUS(status))
		vp_log_limited(&rl_failed, LOG_WARNING, "hook",
			       "on_update for '%s' version %" PRIu64 " failed (status %d)",
			       ev->path, ev->version, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

static void *hook_main(void *arg)
{
	struct vp_hook *h = arg;
	struct vp_event ev;

	while (!__atomic_load_n(&h->stop, __ATOMIC_RELAXED)) {
		int rc = vp_ns_next_event(h->ns, &h->seq, "", 0.5, &ev);

		if (rc == -EOVERFLOW)
			vp_log(LOG_WARNING, "hook",
			       "on_update fell behind; skipping to the newest versions");
		if (rc == 1)
			run(h, &ev);
	}
	return NULL;
}

struct vp_hook *vp_hook_start(struct vp_ns *ns, const char *cmd,
			      const char *mountpoint)
{
	struct vp_hook *h = calloc(1, sizeof(*h));

	if (!h)
		return NULL;
	h->ns = ns;
	h->timeout = vp_ns_config(ns)->on_update_timeout;
	snprintf(h->cmd, sizeof(h->cmd), "%s", cmd);
	snprintf(h->mnt, sizeof(h->mnt), "%s", mountpoint);
	/* taken here: a version committed once this returns gets its run */
	h->seq = vp_ns_event_seq(ns);
	if (pthread_create(&h->thread, NULL, hook_main, h)) {
		vp_log(LOG_ERR, "hook", "cannot start the on_update runner");
		free(h);
		return NULL;
	}
	return h;
}

void vp_hook_stop(struct vp_hook *h)
{
	if (!h)
		return;
	__atomic_store_n(&h->stop, 1, __ATOMIC_RELAXED);
	pthread_join(h->thread, NULL);
	free(h);
}
