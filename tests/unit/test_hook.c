/*
 * Unit tests: the on_update hook (engine/hook.h) on a namespace over a
 * temporary PFS directory: the command runs once per committed version
 * with the event in its environment and nothing else of the daemon's; a
 * command past on_update_timeout is killed with its process group; a
 * failing one does not stop later ones; vp_hook_stop() ends a running one.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../../engine/clock.h"
#include "../../engine/hook.h"
#include "../../engine/log.h"
#include "../../engine/ns.h"
#include "ns_util.c"

#define MNT "/mnt/hooked"
#define LEAK_FD 47		/* an fd of the daemon without FD_CLOEXEC */

struct fixture {
	char dir[64];		/* the PFS, and the command's output files beside it */
	char out[96], pidfile[96];
	struct vp_ns *ns;
	struct vp_hook *hook;
};

static int setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));

	if (!fx)
		return -1;
	strcpy(fx->dir, "/tmp/vp-test-hook-XXXXXX");
	if (!mkdtemp(fx->dir))
		return -1;
	snprintf(fx->out, sizeof(fx->out), "%s.out", fx->dir);
	snprintf(fx->pidfile, sizeof(fx->pidfile), "%s.pid", fx->dir);
	*state = fx;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *fx = *state;
	char cmd[384];
	int rc;

	vp_hook_stop(fx->hook);
	if (fx->ns)
		vp_ns_free(fx->ns);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s' '%s'", fx->dir, fx->out,
		 fx->pidfile);
	rc = system(cmd);
	free(fx);
	return rc ? -1 : 0;
}

static void nap_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000 * 1000 };

	nanosleep(&ts, NULL);
}

/* cmd with @OUT@ and @PID@ replaced by fx->out and fx->pidfile, into buf. */
static void expand(struct fixture *fx, const char *cmd, char *buf, size_t len)
{
	size_t used = 0;

	while (*cmd && used + 1 < len) {
		const char *with = !strncmp(cmd, "@OUT@", 5) ? fx->out :
				   !strncmp(cmd, "@PID@", 5) ? fx->pidfile : NULL;

		if (with) {
			used += (size_t)snprintf(buf + used, len - used, "%s", with);
			cmd += 5;
		} else {
			buf[used++] = *cmd++;
		}
	}
	assert_true(used < len);
	buf[used] = '\0';
}

/* Opens the namespace and starts the hook with cmd (see expand()). */
static void start(struct fixture *fx, const char *cmd, double timeout)
{
	struct vp_config cfg;
	char err[512], expanded[1024];

	test_config(&cfg);
	cfg.on_update_timeout = timeout;
	fx->ns = vp_ns_new(&cfg, fx->dir, err, sizeof(err));
	if (!fx->ns)
		fail_msg("vp_ns_new: %s", err);
	expand(fx, cmd, expanded, sizeof(expanded));
	fx->hook = vp_hook_start(fx->ns, expanded, MNT);
	/* the runner's place is taken in vp_hook_start: no wait for its thread */
	assert_non_null(fx->hook);
}

static void put_file(struct vp_ns *ns, const char *name, const char *content)
{
	put_bytes(ns, name, content, strlen(content));
}

/* The command's output so far ("" if none), in buf. */
static const char *output(struct fixture *fx, char *buf, size_t len)
{
	FILE *f = fopen(fx->out, "r");
	size_t n = 0;

	if (f) {
		n = fread(buf, 1, len - 1, f);
		fclose(f);
	}
	buf[n] = '\0';
	return buf;
}

/* Waits up to wait_s until the output holds want; returns it. */
static const char *wait_output(struct fixture *fx, const char *want, double wait_s,
			       char *buf, size_t len)
{
	double end = vp_now() + wait_s;

	while (!strstr(output(fx, buf, len), want) && vp_now() < end)
		nap_ms(20);
	if (!strstr(buf, want))
		fail_msg("the command's output '%s' has no '%s' after %.1f s", buf, want, wait_s);
	return buf;
}

static pid_t read_pid(struct fixture *fx, double wait_s)
{
	double end = vp_now() + wait_s;
	long pid = 0;

	while (vp_now() < end) {
		FILE *f = fopen(fx->pidfile, "r");

		if (f) {
			int got = fscanf(f, "%ld", &pid);

			fclose(f);
			if (got == 1 && pid > 0)
				return (pid_t)pid;
		}
		nap_ms(20);
	}
	fail_msg("the command wrote no pid");
	return 0;
}

/* Waits until process group pgid is gone; returns the seconds it took. */
static double wait_group_gone(pid_t pgid, double wait_s)
{
	double t0 = vp_now();

	while (kill(-pgid, 0) == 0 && vp_now() - t0 < wait_s)
		nap_ms(20);
	if (kill(-pgid, 0) == 0)
		fail_msg("process group %d is still there after %.1f s", (int)pgid, wait_s);
	return vp_now() - t0;
}

/*
 * Commits a version for the command to run on, waits up to wait_s until
 * the command and its group are gone, and returns the seconds it took.
 */
static double run_until_gone(struct fixture *fx, double wait_s)
{
	double t0 = vp_now();

	put_file(fx->ns, "m.pt", "1");
	wait_group_gone(read_pid(fx, 5.0), wait_s);
	return vp_now() - t0;
}

static void test_command_runs_with_the_event(void **state)
{
	struct fixture *fx = *state;
	char buf[4096], want[512];

	start(fx, "printf '%s|%s|%s\\n' \"$VIPERFS_PATH\" \"$VIPERFS_VERSION\" \"$VIPERFS_SIZE\" >> @OUT@",
	      0);
	put_file(fx->ns, "model.pt", "12345678");
	snprintf(want, sizeof(want), "%s/model.pt|%llu|8\n", MNT,
		 (unsigned long long)vp_ns_path_version(fx->ns, "model.pt"));
	assert_string_equal(wait_output(fx, "\n", 5.0, buf, sizeof(buf)), want);
	put_file(fx->ns, "second.pt", "12");
	wait_output(fx, "/second.pt|", 5.0, buf, sizeof(buf));
	assert_non_null(strstr(buf, want));	/* one line each, in order */
}

static void test_names_never_reach_the_shell_parser(void **state)
{
	struct fixture *fx = *state;
	const char *name = "a;echo INJECTED;$(echo PARSED)`echo TICKS`'\"";
	char buf[4096], want[256];

	start(fx, "echo \"$VIPERFS_PATH\" >> @OUT@", 0);
	put_file(fx->ns, name, "1");
	snprintf(want, sizeof(want), "%s/%s\n", MNT, name);
	assert_string_equal(wait_output(fx, "\n", 5.0, buf, sizeof(buf)), want);
}

static void test_command_gets_nothing_of_the_daemon(void **state)
{
	struct fixture *fx = *state;
	char buf[4096];
	int fd = open("/dev/zero", O_RDONLY);

	assert_true(fd >= 0);
	assert_int_equal(dup2(fd, LEAK_FD), LEAK_FD);	/* no FD_CLOEXEC */
	close(fd);
	setenv("VIPERFS_VERSION", "from-the-daemon", 1);
	start(fx, "{ [ -e /proc/$$/fd/47 ] && echo leaked || echo clean; readlink /proc/$$/fd/0;"
	      " echo \"v=$VIPERFS_VERSION\"; } >> @OUT@", 0);
	put_file(fx->ns, "m.pt", "1");
	wait_output(fx, "v=", 5.0, buf, sizeof(buf));
	close(LEAK_FD);
	unsetenv("VIPERFS_VERSION");
	assert_non_null(strstr(buf, "clean\n/dev/null\n"));
	assert_null(strstr(buf, "from-the-daemon"));	/* the event's, not the daemon's */
}

static void test_timeout_kills_the_command_and_its_group(void **state)
{
	struct fixture *fx = *state;
	char buf[4096];
	double took;

	start(fx, "trap 'echo term >> @OUT@; exit 1' TERM; echo started >> @OUT@; echo $$ > @PID@; "
		  "sleep 30 & wait; echo finished >> @OUT@", 1.0);
	took = run_until_gone(fx, 6.0 + VP_HOOK_GRACE_S);	/* the shell and its sleep */
	assert_true(took >= 0.9);		/* not before on_update_timeout */
	/* SIGTERM came first (its trap ran), and the command never finished */
	wait_output(fx, "started\nterm\n", 1.0, buf, sizeof(buf));
	assert_null(strstr(buf, "finished"));
	/* the runner goes on with the next version */
	put_file(fx->ns, "next.pt", "1");
	wait_output(fx, "started\nterm\nstarted\n", 5.0, buf, sizeof(buf));
}

static void test_sigterm_ignored_gets_sigkill(void **state)
{
	struct fixture *fx = *state;
	double took;

	start(fx, "trap '' TERM; echo $$ > @PID@; sleep 30 & wait; wait", 0.5);
	took = run_until_gone(fx, 0.5 + VP_HOOK_GRACE_S + 3.0);
	assert_true(took >= 0.5 + VP_HOOK_GRACE_S - 0.1);	/* the grace was given */
}

static void test_failing_command_does_not_stop_later_ones(void **state)
{
	struct fixture *fx = *state;
	char buf[4096];

	start(fx, "echo \"$VIPERFS_PATH\" >> @OUT@; exit 3", 0);
	put_file(fx->ns, "a.pt", "1");
	wait_output(fx, "/a.pt\n", 5.0, buf, sizeof(buf));
	put_file(fx->ns, "b.pt", "1");
	wait_output(fx, "/b.pt\n", 5.0, buf, sizeof(buf));
}

static void test_stop_ends_a_running_command(void **state)
{
	struct fixture *fx = *state;
	double t0;
	pid_t pid;

	start(fx, "echo $$ > @PID@; sleep 30 & wait", 0);	/* no time-out */
	put_file(fx->ns, "m.pt", "1");
	pid = read_pid(fx, 5.0);
	t0 = vp_now();
	vp_hook_stop(fx->hook);
	fx->hook = NULL;
	assert_true(vp_now() - t0 < VP_HOOK_GRACE_S + 1.0);
	wait_group_gone(pid, 1.0);	/* reaped, and what it started is gone */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_command_runs_with_the_event, setup, teardown),
		cmocka_unit_test_setup_teardown(test_names_never_reach_the_shell_parser, setup, teardown),
		cmocka_unit_test_setup_teardown(test_command_gets_nothing_of_the_daemon, setup, teardown),
		cmocka_unit_test_setup_teardown(test_timeout_kills_the_command_and_its_group, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sigterm_ignored_gets_sigkill, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failing_command_does_not_stop_later_ones, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stop_ends_a_running_command, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
