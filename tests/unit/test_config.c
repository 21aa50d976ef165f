/* Unit tests: option table, size and time parsing, config files. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../engine/config.h"

static void test_parse_size(void **state)
{
	uint64_t v;

	(void)state;
	assert_int_equal(vp_parse_size("0", &v), 0);
	assert_int_equal(v, 0);
	assert_int_equal(vp_parse_size("4096", &v), 0);
	assert_int_equal(v, 4096);
	assert_int_equal(vp_parse_size("64M", &v), 0);
	assert_int_equal(v, 64ULL << 20);
	assert_int_equal(vp_parse_size("2GiB", &v), 0);
	assert_int_equal(v, 2ULL << 30);
	assert_int_equal(vp_parse_size("1.5k", &v), 0);
	assert_int_equal(v, 1536);
	assert_int_equal(vp_parse_size("10%", &v), 0);
	assert_true(v > 0);
	assert_int_equal(vp_parse_size("", &v), -EINVAL);
	assert_int_equal(vp_parse_size("-1", &v), -EINVAL);
	assert_int_equal(vp_parse_size("12Q", &v), -EINVAL);
	assert_int_equal(vp_parse_size("150%", &v), -EINVAL);
	assert_int_equal(vp_parse_size("5M junk", &v), -EINVAL);
}

static void test_parse_seconds(void **state)
{
	double s;

	(void)state;
	assert_int_equal(vp_parse_seconds("2", &s), 0);
	assert_true(s == 2.0);
	assert_int_equal(vp_parse_seconds("250ms", &s), 0);
	assert_true(s > 0.249 && s < 0.251);
	assert_int_equal(vp_parse_seconds("5m", &s), 0);
	assert_true(s == 300.0);
	assert_int_equal(vp_parse_seconds("1.5s", &s), 0);
	assert_true(s == 1.5);
	assert_int_equal(vp_parse_seconds("soon", &s), -EINVAL);
	assert_int_equal(vp_parse_seconds("3 days", &s), -EINVAL);
}

static void test_defaults_and_opts(void **state)
{
	struct vp_config cfg;
	char err[256], pass[256] = "";

	(void)state;
	vp_config_defaults(&cfg);
	assert_int_equal(cfg.flush_policy, VP_FLUSH_LATEST);
	assert_int_equal(cfg.fsync_mode, VP_FSYNC_CACHE);
	assert_int_equal(cfg.flush_bw, 0);
	assert_true(cfg.ram_cache > 0);

	assert_int_equal(vp_config_parse_opts(&cfg,
		"ram_cache=128M,flush=every:3,flush_bw=10M,allow_other,fsync=pfs",
		pass, sizeof(pass), err, sizeof(err)), 0);
	assert_int_equal(cfg.ram_cache, 128ULL << 20);
	assert_int_equal(cfg.flush_policy, VP_FLUSH_EVERY);
	assert_int_equal(cfg.flush_every, 3);
	assert_int_equal(cfg.flush_bw, 10ULL << 20);
	assert_int_equal(cfg.fsync_mode, VP_FSYNC_PFS);
	assert_string_equal(pass, "allow_other");

	assert_int_equal(vp_config_parse_opts(&cfg, "flush=sometimes", pass,
					      sizeof(pass), err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "flush"));
	assert_int_equal(vp_config_parse_opts(&cfg, "flush=every:0", pass,
					      sizeof(pass), err, sizeof(err)), -EINVAL);
	assert_int_equal(vp_config_parse_opts(&cfg, "flush_inflight=0", pass,
					      sizeof(pass), err, sizeof(err)), -EINVAL);
	/* GPU-direct: auto by default, or off; nothing else */
	assert_string_equal(cfg.gpu_direct, "auto");
	assert_int_equal(vp_config_parse_opts(&cfg, "gpu_direct=off", pass,
					      sizeof(pass), err, sizeof(err)), 0);
	assert_string_equal(cfg.gpu_direct, "off");
	assert_int_equal(vp_config_parse_opts(&cfg, "gpu_direct=yes", pass,
					      sizeof(pass), err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "gpu_direct"));
	/* the relay tree: a chain by default, 0 turns it off, at most 8 per node */
	assert_int_equal(cfg.relay_fanout, 1);
	assert_true(cfg.relay_wait == 2.0);
	assert_int_equal(vp_config_parse_opts(&cfg, "relay_fanout=0,relay_wait=0.5", pass,
					      sizeof(pass), err, sizeof(err)), 0);
	assert_int_equal(cfg.relay_fanout, 0);
	assert_true(cfg.relay_wait == 0.5);
	assert_int_equal(vp_config_parse_opts(&cfg, "relay_fanout=8", pass,
					      sizeof(pass), err, sizeof(err)), 0);
	assert_int_equal(vp_config_parse_opts(&cfg, "relay_fanout=9", pass,
					      sizeof(pass), err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "relay_fanout"));
	/* without a passthru buffer, unknown names are errors */
	assert_int_equal(vp_config_parse_opts(&cfg, "bogus=1", NULL, 0, err,
					      sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "bogus"));
}

static void test_config_file(void **state)
{
	char path[] = "/tmp/vp-test-config-XXXXXX";
	struct vp_config cfg;
	char err[512];
	int fd = mkstemp(path);
	FILE *f = fdopen(fd, "w");

	(void)state;
	fputs("# comment\n\nram_cache = 32M\n  flush_bw=1M  \nlog_level = debug\n", f);
	fclose(f);
	vp_config_defaults(&cfg);
	assert_int_equal(vp_config_set(&cfg, "config", path, err, sizeof(err)), 0);
	assert_int_equal(cfg.ram_cache, 32ULL << 20);
	assert_int_equal(cfg.flush_bw, 1ULL << 20);
	assert_int_equal(cfg.log_level, 7);

	f = fopen(path, "w");
	fputs("ram_cache = 32M\nnonsense line\n", f);
	fclose(f);
	assert_int_equal(vp_config_load_file(&cfg, path, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "line 2"));
	unlink(path);
	assert_int_equal(vp_config_load_file(&cfg, path, err, sizeof(err)), -ENOENT);
}

/* on_update_timeout: 60 s by default, seconds in any unit, 0 for no limit */
static void test_on_update_timeout(void **state)
{
	struct vp_config cfg;
	char err[512] = "";

	(void)state;
	vp_config_defaults(&cfg);
	assert_true(cfg.on_update_timeout == 60.0);
	assert_int_equal(vp_config_set(&cfg, "on_update_timeout", "1.5", err, sizeof(err)), 0);
	assert_true(cfg.on_update_timeout == 1.5);
	assert_int_equal(vp_config_parse_opts(&cfg, "on_update_timeout=250ms", NULL, 0,
					      err, sizeof(err)), 0);
	assert_true(cfg.on_update_timeout > 0.249 && cfg.on_update_timeout < 0.251);
	assert_int_equal(vp_config_set(&cfg, "on_update_timeout", "2m", err, sizeof(err)), 0);
	assert_true(cfg.on_update_timeout == 120.0);
	assert_int_equal(vp_config_set(&cfg, "on_update_timeout", "0", err, sizeof(err)), 0);
	assert_true(cfg.on_update_timeout == 0.0);

	/* a bad value is refused, names the option, and leaves the field alone */
	cfg.on_update_timeout = 7;
	assert_int_equal(vp_config_set(&cfg, "on_update_timeout", "forever", err, sizeof(err)),
			 -EINVAL);
	assert_non_null(strstr(err, "'forever'"));
	assert_non_null(strstr(err, "'on_update_timeout'"));
	assert_true(cfg.on_update_timeout == 7.0);
	assert_int_equal(vp_config_set(&cfg, "on_update_timeout", "-1", err, sizeof(err)),
			 -EINVAL);
	assert_int_equal(vp_config_set(&cfg, "on_update_timeout", "", err, sizeof(err)),
			 -EINVAL);
}

/* max_file_size: 0 (the cache size) by default; sizes with suffixes */
static void test_max_file_size(void **state)
{
	struct vp_config cfg;
	char err[512] = "", *help = NULL;
	size_t help_len = 0;
	FILE *out;

	(void)state;
	vp_config_defaults(&cfg);
	assert_int_equal(cfg.max_file_size, 0);
	assert_true(cfg.ram_cache > 0);
	assert_int_equal(vp_config_max_file_size(&cfg), cfg.ram_cache);
	/* the default follows ram_cache, whichever order the options come in */
	assert_int_equal(vp_config_parse_opts(&cfg, "ram_cache=64M", NULL, 0, err, sizeof(err)), 0);
	assert_int_equal(vp_config_max_file_size(&cfg), 64ULL << 20);

	assert_int_equal(vp_config_parse_opts(&cfg, "max_file_size=2G", NULL, 0, err,
					      sizeof(err)), 0);
	assert_int_equal(cfg.max_file_size, 2ULL << 30);
	assert_int_equal(vp_config_max_file_size(&cfg), 2ULL << 30);
	assert_int_equal(vp_config_set(&cfg, "max_file_size", "1536KiB", err, sizeof(err)), 0);
	assert_int_equal(vp_config_max_file_size(&cfg), 1536ULL << 10);
	assert_int_equal(vp_config_set(&cfg, "max_file_size", "4096", err, sizeof(err)), 0);
	assert_int_equal(vp_config_max_file_size(&cfg), 4096);
	/* back to 0: the cache size again */
	assert_int_equal(vp_config_set(&cfg, "max_file_size", "0", err, sizeof(err)), 0);
	assert_int_equal(vp_config_max_file_size(&cfg), 64ULL << 20);

	cfg.max_file_size = 12345;
	assert_int_equal(vp_config_set(&cfg, "max_file_size", "huge", err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "'huge'"));
	assert_non_null(strstr(err, "'max_file_size'"));
	assert_int_equal(cfg.max_file_size, 12345);
	assert_int_equal(vp_config_set(&cfg, "max_file_size", "-5M", err, sizeof(err)), -EINVAL);
	assert_int_equal(vp_config_set(&cfg, "max_file_size", "10X", err, sizeof(err)), -EINVAL);
	assert_int_equal(vp_config_set(&cfg, "max_file_size", "", err, sizeof(err)), -EINVAL);

	/* --help documents both options */
	out = open_memstream(&help, &help_len);
	assert_non_null(out);
	vp_config_help(out);
	fclose(out);
	assert_non_null(strstr(help, "max_file_size"));
	assert_non_null(strstr(help, "largest file a replica accepts from the network; 0: the cache size"));
	assert_non_null(strstr(help, "on_update_timeout"));
	free(help);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_size),
		cmocka_unit_test(test_parse_seconds),
		cmocka_unit_test(test_defaults_and_opts),
		cmocka_unit_test(test_config_file),
		cmocka_unit_test(test_on_update_timeout),
		cmocka_unit_test(test_max_file_size),
	};
	return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
