#define _GNU_SOURCE
/* Unit tests: metrics counters, histograms and their text format. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../engine/metrics.h"

/* The value of the sample line that starts with name (labels included). */
static double sample(const char *text, const char *name)
{
	const char *p = text;
	size_t len = strlen(name);

	while ((p = strstr(p, name))) {
		if ((p == text || p[-1] == '\n') && p[len] == ' ')
			return strtod(p + len + 1, NULL);
		p += len;
	}
	fail_msg("no sample '%s'", name);
	return -1;
}

static char *render(void (*collect)(void *, FILE *))
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	assert_non_null(f);
	vp_metrics_write(f, collect, NULL);
	fclose(f);
	return text;
}

static void test_counters_add_up(void **state)
{
	uint64_t before = vp_metrics_get(VP_C_BYTES_FLUSHED);
	char *text;

	(void)state;
	vp_metrics_add(VP_C_BYTES_FLUSHED, 1000);
	vp_metrics_add(VP_C_BYTES_FLUSHED, 24);
	assert_int_equal(vp_metrics_get(VP_C_BYTES_FLUSHED), before + 1024);
	vp_metrics_add(VP_C_COUNT, 5);		/* out of range: ignored */
	text = render(NULL);
	assert_true(sample(text, "viperfs_flushed_bytes_total") == (double)(before + 1024));
	assert_non_null(strstr(text, "# TYPE viperfs_flushed_bytes_total counter\n"));
	free(text);
}

static void test_histogram_is_cumulative(void **state)
{
	char *text;

	(void)state;
	vp_metrics_fuse_op(VP_FOP_READ, 0.000004);	/* first bucket */
	vp_metrics_fuse_op(VP_FOP_READ, 0.0007);	/* le=0.001 */
	vp_metrics_fuse_op(VP_FOP_READ, 3.0);		/* le=5 */
	vp_metrics_fuse_op(VP_FOP_READ, 60.0);		/* +Inf only */
	vp_metrics_fuse_op(VP_FOP_COUNT, 1.0);		/* ignored */
	text = render(NULL);
	assert_true(sample(text, "viperfs_fuse_request_duration_seconds_bucket{op=\"read\",le=\"1e-05\"}") == 1);
	assert_true(sample(text, "viperfs_fuse_request_duration_seconds_bucket{op=\"read\",le=\"0.0005\"}") == 1);
	assert_true(sample(text, "viperfs_fuse_request_duration_seconds_bucket{op=\"read\",le=\"0.001\"}") == 2);
	assert_true(sample(text, "viperfs_fuse_request_duration_seconds_bucket{op=\"read\",le=\"5\"}") == 3);
	assert_true(sample(text, "viperfs_fuse_request_duration_seconds_bucket{op=\"read\",le=\"+Inf\"}") == 4);
	assert_true(sample(text, "viperfs_fuse_request_duration_seconds_count{op=\"read\"}") == 4);
	{
		double sum = sample(text, "viperfs_fuse_request_duration_seconds_sum{op=\"read\"}");

		assert_true(sum > 63.0006 && sum < 63.0008);
	}
	assert_true(sample(text, "viperfs_fuse_request_duration_seconds_count{op=\"write\"}") == 0);
	free(text);
}

static void collect_one(void *arg, FILE *out)
{
	(void)arg;
	fputs("# TYPE viperfs_test_gauge gauge\nviperfs_test_gauge 7\n", out);
}

static void test_collect_appends(void **state)
{
	char *text;

	(void)state;
	vp_metrics_notify_latency(0.0002);
	text = render(collect_one);
	assert_true(sample(text, "viperfs_test_gauge") == 7);
	assert_true(sample(text, "viperfs_notify_latency_seconds_count") >= 1);
	assert_true(sample(text, "viperfs_notify_latency_seconds_bucket{le=\"0.00025\"}") >= 1);
	free(text);
}

static void test_bad_address_is_refused(void **state)
{
	char err[256];

	(void)state;
	assert_null(vp_metrics_serve("localhost:http", NULL, NULL, err, sizeof(err)));
	assert_non_null(strstr(err, "want PORT or ADDR:PORT"));
	assert_null(vp_metrics_serve("no-such-host.invalid:9100", NULL, NULL, err, sizeof(err)));
	assert_non_null(strstr(err, "no-such-host.invalid"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_counters_add_up),
		cmocka_unit_test(test_histogram_is_cumulative),
		cmocka_unit_test(test_collect_appends),
		cmocka_unit_test(test_bad_address_is_refused),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
