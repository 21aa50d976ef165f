/*
 * Unit tests: the control socket (engine/ctl.h), a namespace over a
 * temporary PFS directory behind it and a client that speaks the line
 * protocol viperctl speaks.  The permission tests run a client as
 * another user (a forked child), so they need root; skipped without.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../../engine/clock.h"
#include "../../engine/ctl.h"
#include "../../engine/log.h"
#include "../../engine/ns.h"
#include "../../engine/version.h"
#include "ns_util.c"

#define NOBODY 65534

struct fixture {
	char pfs[64];
	char sock[108];
	struct vp_ns *ns;
	struct vp_ctl *ctl;
};

static int setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));
	struct vp_config cfg;
	char err[512];

	if (!fx)
		return -1;
	strcpy(fx->pfs, "/tmp/vp-test-ctl-XXXXXX");
	if (!mkdtemp(fx->pfs))
		return -1;
	snprintf(fx->sock, sizeof(fx->sock), "%s.sock", fx->pfs);
	test_config(&cfg);
	fx->ns = vp_ns_new(&cfg, fx->pfs, err, sizeof(err));
	if (!fx->ns)
		return -1;
	fx->ctl = vp_ctl_start(&(struct vp_ctl_sources){ .ns = fx->ns }, fx->sock, err, sizeof(err));
	*state = fx;
	return fx->ctl ? 0 : -1;
}

static int teardown(void **state)
{
	struct fixture *fx = *state;
	char cmd[256];
	int rc;

	vp_ctl_stop(fx->ctl);
	assert_int_equal(access(fx->sock, F_OK), -1);	/* the socket is removed */
	vp_ns_free(fx->ns);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", fx->pfs);
	rc = system(cmd);
	free(fx);
	return rc ? -1 : 0;
}

static int dial(const char *sock)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Sends request (len bytes, as is), half-closes, and reads the answer to EOF (malloc'd). */
static char *ask_raw(const char *sock, const char *request, size_t len)
{
	size_t used = 0, cap = 4096;
	char *buf = malloc(cap);
	int fd = dial(sock);
	ssize_t n;

	if (!buf || fd < 0) {
		free(buf);
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	if (write(fd, request, len) != (ssize_t)len)
		(void)0;	/* the daemon may have answered and closed already */
	shutdown(fd, SHUT_WR);
	while ((n = read(fd, buf + used, cap - used - 1)) > 0) {
		used += (size_t)n;
		if (used + 1 == cap) {
			char *bigger = realloc(buf, cap * 2);

			if (!bigger)
				break;
			buf = bigger;
			cap *= 2;
		}
	}
	close(fd);
	buf[used] = '\0';
	return buf;
}

static char *ask(struct fixture *fx, const char *line)
{
	char *answer = ask_raw(fx->sock, line, strlen(line));

	assert_non_null(answer);
	return answer;
}

/* The answer to line parsed as one JSON value (a new reference). */
static json_t *ask_json(struct fixture *fx, const char *line)
{
	char *answer = ask(fx, line);
	json_error_t jerr;
	json_t *j = json_loads(answer, JSON_DISABLE_EOF_CHECK, &jerr);

	if (!j)
		fail_msg("'%s' answered no JSON (%s): %s", line, jerr.text, answer);
	free(answer);
	return j;
}

/* Expects {"error": "... want ..."} as the answer to line. */
static void assert_error(struct fixture *fx, const char *line, const char *want)
{
	json_t *j = ask_json(fx, line);
	const char *msg = json_string_value(json_object_get(j, "error"));

	if (!msg || !strstr(msg, want))
		fail_msg("'%s' answered '%s', not an error with '%s'", line, msg ? msg : "(none)",
			 want);
	json_decref(j);
}

static void put_file(struct vp_ns *ns, const char *name, const char *content)
{
	put_bytes(ns, name, content, strlen(content));
}

static void test_ping_and_status(void **state)
{
	struct fixture *fx = *state;
	json_t *j = ask_json(fx, "ping\n");

	assert_true(json_is_true(json_object_get(j, "pong")));
	json_decref(j);
	j = ask_json(fx, "status\n");
	assert_true(json_is_object(j));
	assert_null(json_object_get(j, "error"));
	assert_true(json_is_null(json_object_get(j, "repl")));	/* no replication here */
	/* the daemon's own fields; no mount point nor options given: "" */
	assert_string_equal(json_string_value(json_object_get(j, "release")), VP_RELEASE);
	assert_true(json_real_value(json_object_get(j, "uptime_s")) >= 0);
	assert_true(json_real_value(json_object_get(j, "uptime_s")) < 60);
	assert_true(json_real_value(json_object_get(j, "started")) > (double)time(NULL) - 60);
	assert_true(json_real_value(json_object_get(j, "started")) <= (double)time(NULL) + 1);
	assert_string_equal(json_string_value(json_object_get(j, "mountpoint")), "");
	assert_string_equal(json_string_value(json_object_get(j, "options")), "");
	json_decref(j);
	j = ask_json(fx, "ping");		/* EOF ends a line, too */
	assert_true(json_is_true(json_object_get(j, "pong")));
	json_decref(j);
}

/* The mount point and options the daemon gives are in the status, copied. */
static void test_status_names_the_mount_and_its_options(void **state)
{
	struct fixture *fx = *state;
	char mnt[] = "/mnt/ckpt", opts[] = "ram_cache=1G,flush=all", sock[PATH_MAX + 8], err[512];
	struct vp_ctl *ctl;
	json_t *j;
	char *answer;

	snprintf(sock, sizeof(sock), "%s.2.sock", fx->pfs);
	ctl = vp_ctl_start(&(struct vp_ctl_sources){ .ns = fx->ns, .mountpoint = mnt,
						      .options = opts }, sock, err, sizeof(err));
	assert_non_null(ctl);
	memset(mnt, 'x', sizeof(mnt) - 1);	/* copied: the caller's buffers may change */
	memset(opts, 'x', sizeof(opts) - 1);
	answer = ask_raw(sock, "status\n", 7);
	assert_non_null(answer);
	j = json_loads(answer, 0, NULL);
	assert_string_equal(json_string_value(json_object_get(j, "mountpoint")), "/mnt/ckpt");
	assert_string_equal(json_string_value(json_object_get(j, "options")),
			    "ram_cache=1G,flush=all");
	json_decref(j);
	free(answer);
	vp_ctl_stop(ctl);
}

static void test_versions(void **state)
{
	struct fixture *fx = *state;
	json_t *j, *first;

	put_file(fx->ns, "a.txt", "hello");
	put_file(fx->ns, "a.txt", "hello again");
	j = ask_json(fx, "versions a.txt\n");
	assert_true(json_is_array(j));
	assert_int_equal(json_array_size(j), 1);
	first = json_array_get(j, 0);
	assert_int_equal(json_integer_value(json_object_get(first, "version")),
			 vp_ns_path_version(fx->ns, "a.txt"));
	assert_int_equal(json_integer_value(json_object_get(first, "size")), 11);
	json_decref(j);
	assert_error(fx, "versions nothing-here\n", "no such path");
}

static void test_bad_requests_get_a_clear_error(void **state)
{
	struct fixture *fx = *state;

	assert_error(fx, "bogus\n", "unknown request; try status");
	assert_error(fx, "\n", "unknown request");
	assert_error(fx, "STATUS\n", "unknown request");	/* verbs are exact */
	assert_error(fx, "wait a.txt\n", "usage: wait PATH VERSION SECONDS");
	assert_error(fx, "wait\n", "usage: wait");
	assert_error(fx, "flush nothing-here\n", "no such path");
}

static void test_long_request_line_is_refused(void **state)
{
	struct fixture *fx = *state;
	size_t len = PATH_MAX + 256;	/* past the line: a path, a command and two numbers */
	char *line = malloc(len + 1), *answer;

	memcpy(line, "versions ", 9);
	memset(line + 9, 'x', len - 9);
	line[len] = '\0';
	answer = ask_raw(fx->sock, line, len);
	assert_non_null(answer);
	assert_non_null(strstr(answer, "{\"error\":\"request line too long\"}"));
	free(answer);
	free(line);
	/* the daemon still serves the next client */
	answer = ask(fx, "ping\n");
	assert_non_null(strstr(answer, "pong"));
	free(answer);
}

static void test_wait_answers_or_times_out(void **state)
{
	struct fixture *fx = *state;
	double t0;
	json_t *j;

	put_file(fx->ns, "m.pt", "v1");
	j = ask_json(fx, "wait m.pt 0 5\n");	/* already newer than 0 */
	assert_int_equal(json_integer_value(json_object_get(j, "version")),
			 vp_ns_path_version(fx->ns, "m.pt"));
	json_decref(j);
	t0 = vp_now();
	{
		char *answer = ask(fx, "wait /m.pt 1000 2\n");
		const char *armed = "{\"waiting\":true}\n";

		/* not newer yet: it says it waits, then times out */
		assert_memory_equal(answer, armed, strlen(armed));
		j = json_loads(answer + strlen(armed), 0, NULL);
		assert_string_equal(json_string_value(json_object_get(j, "error")), "timed out");
		json_decref(j);
		free(answer);
	}
	/* the deadline is monotonic: never early */
	assert_true(vp_now() - t0 >= 2.0 && vp_now() - t0 < 6.0);
	/* a name with spaces: VERSION and SECONDS are the last two words */
	put_file(fx->ns, "my model.pt", "v1");
	j = ask_json(fx, "wait /my model.pt 0 5\n");
	assert_int_equal(json_integer_value(json_object_get(j, "version")),
			 vp_ns_path_version(fx->ns, "my model.pt"));
	json_decref(j);
}

/* Reads one line (to its newline) from fd into buf of len; returns its length. */
static size_t read_line(int fd, char *buf, size_t len)
{
	size_t used = 0;

	while (used + 1 < len && read(fd, buf + used, 1) == 1)
		if (buf[used++] == '\n')
			break;
	buf[used] = '\0';
	return used;
}

static void test_wait_sees_a_commit(void **state)
{
	struct fixture *fx = *state;
	const char *req = "wait later.pt 0 10\n";
	char line[256], want[64];
	int fd = dial(fx->sock);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, req, strlen(req)), (ssize_t)strlen(req));
	/* the answer must come from the event: the commit waits for the wait */
	read_line(fd, line, sizeof(line));
	assert_string_equal(line, "{\"waiting\":true}\n");
	put_file(fx->ns, "later.pt", "bytes");
	read_line(fd, line, sizeof(line));
	close(fd);
	snprintf(want, sizeof(want), "{\"version\":%llu}\n",
		 (unsigned long long)vp_ns_path_version(fx->ns, "later.pt"));
	assert_string_equal(line, want);
}

static void test_watch_streams_versions_and_stop_ends_it(void **state)
{
	struct fixture *fx = *state;
	int fd = dial(fx->sock);
	char buf[4096];
	size_t used = 0;
	ssize_t n;
	double t0;
	FILE *in;

	assert_true(fd >= 0);
	assert_int_equal(write(fd, "watch \n", 7), 7);
	shutdown(fd, SHUT_WR);
	in = fdopen(fd, "r");
	assert_non_null(in);
	assert_non_null(fgets(buf, sizeof(buf), in));
	assert_string_equal(buf, "{\"watching\":true}\n");
	put_file(fx->ns, "w.pt", "12345");
	assert_non_null(fgets(buf, sizeof(buf), in));
	assert_non_null(strstr(buf, "\"path\":\"w.pt\""));
	assert_non_null(strstr(buf, "\"size\":5"));
	/* stop with the watcher connected: it returns promptly and the watch ends */
	t0 = vp_now();
	vp_ctl_stop(fx->ctl);
	fx->ctl = NULL;
	assert_true(vp_now() - t0 < 3.0);
	while ((n = (ssize_t)fread(buf + used, 1, sizeof(buf) - used - 1, in)) > 0)
		used += (size_t)n;
	fclose(in);
	assert_int_equal(access(fx->sock, F_OK), -1);
	/* teardown's stop of NULL is a no-op */
}

/* Runs line as user NOBODY in a child; returns the answer (malloc'd). */
static char *ask_as_nobody(struct fixture *fx, const char *line)
{
	int pipefd[2];
	char buf[1024];
	size_t used = 0;
	ssize_t n;
	pid_t pid;
	int status;

	assert_int_equal(pipe(pipefd), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char *answer;

		close(pipefd[0]);
		if (setgroups(0, NULL) || setresgid(NOBODY, NOBODY, NOBODY) ||
		    setresuid(NOBODY, NOBODY, NOBODY))
			_exit(2);
		answer = ask_raw(fx->sock, line, strlen(line));
		if (!answer || write(pipefd[1], answer, strlen(answer)) < 0)
			_exit(3);
		_exit(0);
	}
	close(pipefd[1]);
	while ((n = read(pipefd[0], buf + used, sizeof(buf) - 1 - used)) > 0)
		used += (size_t)n;
	close(pipefd[0]);
	buf[used] = '\0';
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	return strdup(buf);
}

static void test_other_users_are_judged_by_the_mode_bits(void **state)
{
	struct fixture *fx = *state;
	char *answer;

	if (geteuid() != 0)
		skip();
	answer = ask_as_nobody(fx, "ping\n");	/* anyone */
	assert_non_null(strstr(answer, "pong"));
	free(answer);
	answer = ask_as_nobody(fx, "flush \n");	/* root and the owner only */
	assert_non_null(strstr(answer, "permission denied: 'flush' is for root and the mount's owner only"));
	free(answer);
	/* the mount's root mirrors the PFS directory: mkdtemp made it 0700, root's */
	answer = ask_as_nobody(fx, "status\n");
	assert_non_null(strstr(answer, "permission denied: uid 65534 may not read '/'"));
	free(answer);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_ping_and_status, setup, teardown),
		cmocka_unit_test_setup_teardown(test_status_names_the_mount_and_its_options, setup, teardown),
		cmocka_unit_test_setup_teardown(test_versions, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_requests_get_a_clear_error, setup, teardown),
		cmocka_unit_test_setup_teardown(test_long_request_line_is_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_wait_answers_or_times_out, setup, teardown),
		cmocka_unit_test_setup_teardown(test_wait_sees_a_commit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_watch_streams_versions_and_stop_ends_it, setup, teardown),
		cmocka_unit_test_setup_teardown(test_other_users_are_judged_by_the_mode_bits, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
