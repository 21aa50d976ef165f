#define _GNU_SOURCE
/*
 * Unit tests: the log's JSON lines (one object each, names of any bytes),
 * its time stamps (UTC or an explicit offset), and SIGHUP's reopen of the
 * log file (for logrotate).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <jansson.h>
#include <regex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../../engine/log.h"

static char dir[] = "/tmp/vp-test-log-XXXXXX";
static char path[256];

/* The lines of the log file so far, as one string the caller frees. */
static char *slurp(const char *p)
{
	FILE *f = fopen(p, "re");
	char *text = NULL;
	size_t len = 0;

	assert_non_null(f);
	assert_int_not_equal(getdelim(&text, &len, '\0', f), -1);
	fclose(f);
	return text;
}

static int setup(void **state)
{
	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/viperfs.log", dir);
	return 0;
}

static int teardown(void **state)
{
	char rotated[300];

	(void)state;
	vp_log_close();
	snprintf(rotated, sizeof(rotated), "%s.1", path);
	unlink(path);
	unlink(rotated);
	rmdir(dir);
	return 0;
}

static void test_json_lines_hold_any_bytes(void **state)
{
	const char *msgs[] = { "plain", "quote \" backslash \\ tab \t newline \n",
			       "caf\xc3\xa9", "not utf-8: \xff\xfe" };
	char *text, *line, *save = NULL;
	int n = 0;

	(void)state;
	unlink(path);
	assert_int_equal(vp_log_open(VP_LOG_FILE, path, LOG_INFO), 0);
	vp_log_set_format(1, 1);
	for (int i = 0; i < 4; i++)
		vp_log(LOG_WARNING, "test", "%s", msgs[i]);
	vp_log(LOG_DEBUG, "test", "filtered out");
	text = slurp(path);
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save), n++) {
		json_error_t err;
		json_t *j = json_loads(line, 0, &err);
		const char *msg = NULL, *stamp = NULL, *level = NULL;
		regex_t re;

		if (!j)
			fail_msg("not JSON: %s (%s)", line, err.text);
		assert_int_equal(json_unpack(j, "{s:s,s:s,s:s}", "msg", &msg, "time", &stamp,
					     "level", &level), 0);
		assert_string_equal(level, "warning");
		assert_int_equal(json_integer_value(json_object_get(j, "pid")), getpid());
		assert_int_equal(regcomp(&re, "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}\\.[0-9]{3}Z$",
					 REG_EXTENDED | REG_NOSUB), 0);
		assert_int_equal(regexec(&re, stamp, 0, NULL, 0), 0);
		regfree(&re);
		if (n < 3) {
			assert_string_equal(msg, msgs[n]);	/* UTF-8 and escapes come back whole */
		} else {
			/* a byte that is not UTF-8 reads as U+00XX, as in every JSON of ours */
			assert_string_equal(msg, "not utf-8: \xc3\xbf\xc3\xbe");
		}
		json_decref(j);
	}
	assert_int_equal(n, 4);
	free(text);
	vp_log_set_format(0, 0);
}

static void test_text_lines_carry_an_offset(void **state)
{
	char *text;
	regex_t re;

	(void)state;
	unlink(path);
	setenv("TZ", "XST-5:30", 1);	/* +05:30, an offset with minutes (POSIX form: no tzdata needed) */
	tzset();
	assert_int_equal(vp_log_open(VP_LOG_FILE, path, LOG_INFO), 0);
	vp_log(LOG_INFO, "test", "a line\x01 with a control");
	text = slurp(path);
	assert_int_equal(regcomp(&re, "^[0-9-]{10}T[0-9:]{8}\\.[0-9]{3}\\+05:30 viperfs info test: a line\\\\x01 with a control\n$",
				 REG_EXTENDED | REG_NOSUB), 0);
	if (regexec(&re, text, 0, NULL, 0))
		fail_msg("unexpected line: %s", text);
	regfree(&re);
	free(text);
	unsetenv("TZ");
	tzset();
}

static void test_sighup_reopens_the_file(void **state)
{
	char rotated[300], *old, *new;

	(void)state;
	unlink(path);
	assert_int_equal(vp_log_open(VP_LOG_FILE, path, LOG_INFO), 0);
	assert_int_equal(vp_log_reopen_on_hup(), 0);
	vp_log(LOG_INFO, "test", "before");
	snprintf(rotated, sizeof(rotated), "%s.1", path);
	assert_int_equal(rename(path, rotated), 0);
	assert_int_equal(raise(SIGHUP), 0);	/* the process lives on */
	vp_log(LOG_INFO, "test", "after");
	old = slurp(rotated);
	new = slurp(path);
	assert_non_null(strstr(old, "before"));
	assert_null(strstr(old, "after"));
	assert_non_null(strstr(new, "reopened"));
	assert_non_null(strstr(new, "after"));
	free(old);
	free(new);
	signal(SIGHUP, SIG_DFL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_json_lines_hold_any_bytes),
		cmocka_unit_test(test_text_lines_carry_an_offset),
		cmocka_unit_test(test_sighup_reopens_the_file),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
