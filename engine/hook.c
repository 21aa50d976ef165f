/* hook: see hook.h. */
#define _GNU_SOURCE
#include "hook.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "log.h"
#include "ns.h"

extern char **environ;

struct vp_hook {
	struct vp_ns *ns;
	char cmd[PATH_MAX];
	char mnt[PATH_MAX];
	pthread_t thread;
	int stop;		/* atomic */
};

static void run(struct vp_hook *h, const struct vp_event *ev)
{
	char path[2 * PATH_MAX + 32], version[64], size[64];
	char *argv[] = { (char *)"/bin/sh", (char *)"-c", h->cmd, NULL };
	char **env;
	size_t n = 0;
	pid_t pid;
	int status, rc;

	while (environ[n])
		n++;
	env = calloc(n + 4, sizeof(*env));
	if (!env)
		return;
	memcpy(env, environ, n * sizeof(*env));
	snprintf(path, sizeof(path), "VIPERFS_PATH=%s/%s", h->mnt, ev->path);
	snprintf(version, sizeof(version), "VIPERFS_VERSION=%" PRIu64, ev->version);
	snprintf(size, sizeof(size), "VIPERFS_SIZE=%" PRIu64, ev->size);
	env[n] = path;
	env[n + 1] = version;
	env[n + 2] = size;
	rc = posix_spawn(&pid, "/bin/sh", NULL, NULL, argv, env);
	free(env);
	if (rc) {
		vp_log(LOG_ERR, "hook", "on_update: cannot run /bin/sh: %s", strerror(rc));
		return;
	}
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		vp_log(LOG_WARNING, "hook", "on_update for '%s' version %" PRIu64 " failed (status %d)",
		       ev->path, ev->version, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

static void *hook_main(void *arg)
{
	struct vp_hook *h = arg;
	uint64_t seq = vp_ns_event_seq(h->ns);
	struct vp_event ev;

	while (!__atomic_load_n(&h->stop, __ATOMIC_RELAXED)) {
		int rc = vp_ns_next_event(h->ns, &seq, "", 0.5, &ev);

		if (rc == -EOVERFLOW)
			vp_log(LOG_WARNING, "hook", "on_update fell behind; skipping to the newest versions");
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
	snprintf(h->cmd, sizeof(h->cmd), "%s", cmd);
	snprintf(h->mnt, sizeof(h->mnt), "%s", mountpoint);
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
