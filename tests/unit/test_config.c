/* Unit tests: option table, size and time parsing, config files. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <limits.h>
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

	/* inline comments after a space; a '#' inside a value stays */
	f = fopen(path, "w");
	fputs("ram_cache = 1G  # one gig\nlog_file = /tmp/a#b.log\n", f);
	fclose(f);
	assert_int_equal(vp_config_load_file(&cfg, path, err, sizeof(err)), 0);
	assert_int_equal(cfg.ram_cache, 1ULL << 30);
	assert_string_equal(cfg.log_file, "/tmp/a#b.log");

	/* an unknown name in a file: the file, the line and the name, through -o config= too */
	f = fopen(path, "w");
	fputs("ram_cache = 32M\nflush-bw = 10M\n", f);
	fclose(f);
	{
		char opts[64], passthru[64] = "";

		snprintf(opts, sizeof(opts), "config=%s", path);
		assert_int_equal(vp_config_parse_opts(&cfg, opts, passthru, sizeof(passthru), err,
						      sizeof(err)), -EINVAL);
		assert_non_null(strstr(err, "line 2: unknown option 'flush-bw'"));
		assert_non_null(strstr(err, path));
		assert_string_equal(passthru, "");	/* not taken for a FUSE option */
	}
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
	assert_non_null(strstr(help, "largest file a replica accepts from the network"));
	assert_non_null(strstr(help, "on_update_timeout"));
	free(help);
}

/* Sets name=value on defaults; returns vp_config_set's result, the message in err. */
static int set(struct vp_config *cfg, const char *name, const char *value, char *err,
	       size_t errlen)
{
	vp_config_defaults(cfg);
	err[0] = '\0';
	return vp_config_set(cfg, name, value, err, errlen);
}

/* Each validator: a good value is stored; a bad one is refused, named, and left out. */
static void test_validators(void **state)
{
	static const struct {
		const char *name, *good, *bad;
	} cases[] = {
		{ "ram_cache", "1G", "lots" },			/* parse_size_opt */
		{ "cache_wait", "250ms", "soon" },		/* parse_seconds_opt */
		{ "flush_inflight", "4", "0" },			/* parse_positive */
		{ "repl_inflight", "1000000", "1000001" },	/* parse_positive */
		{ "relay_fanout", "8", "9" },			/* parse_count, bounded */
		{ "insecure", "1", "2" },			/* parse_count, bounded */
		{ "gpu_device", "3", "-1" },			/* parse_count */
		{ "fabric_provider", "tcp", "" },		/* parse_string_opt: see below */
		{ "fsync", "pfs", "disk" },			/* parse_fsync */
		{ "fsync", "peers:3", "peers:0" },		/* parse_fsync */
		{ "fsync", "peers", "peers:65" },		/* parse_fsync */
		{ "publish", "schedule", "some" },		/* parse_enum */
		{ "gpu_tier", "ram", "bogus" },			/* parse_choice */
		{ "gpu_direct", "off", "yes" },			/* parse_choice */
		{ "flush", "every:2", "every:x" },		/* parse_flush */
		{ "log_level", "debug", "loud" },		/* parse_log_level */
		{ "listen", "10.0.0.1:7700", "0.0.0.0:7700" },	/* parse_listen */
		{ "subscribe", "node1:7700", "node1" },		/* parse_subscribe */
		{ "config", "", "/nonexistent/viperfs.conf" },	/* parse_config */
	};
	struct vp_config cfg, before;
	char err[PATH_MAX + 1024];

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		assert_int_equal(set(&cfg, cases[i].name, cases[i].good, err, sizeof(err)), 0);
		if (!strcmp(cases[i].name, "fabric_provider"))
			continue;	/* any short name is good */
		vp_config_defaults(&before);
		assert_int_not_equal(set(&cfg, cases[i].name, cases[i].bad, err, sizeof(err)), 0);
		assert_non_null(strstr(err, cases[i].bad));
		assert_null(strchr(err, '\n'));
		if (strcmp(cases[i].name, "config"))
			assert_non_null(strstr(err, cases[i].name));
		assert_memory_equal(&cfg, &before, sizeof(cfg));
	}
}

/* What the validators store, and what they say is wrong. */
static void test_validator_values(void **state)
{
	struct vp_config cfg;
	char err[PATH_MAX + 1024], long_value[300];

	(void)state;
	assert_int_equal(set(&cfg, "gpu_tier", "bogus", err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "'gpu_tier'"));
	assert_non_null(strstr(err, "want cuda or ram"));
	assert_int_equal(set(&cfg, "fsync", "pfs", err, sizeof(err)), 0);
	assert_int_equal(cfg.fsync_mode, VP_FSYNC_PFS);
	assert_int_equal(set(&cfg, "fsync", "peers:2", err, sizeof(err)), 0);
	assert_int_equal(cfg.fsync_mode, VP_FSYNC_PEERS);
	assert_int_equal(cfg.fsync_peers, 2);
	assert_int_equal(set(&cfg, "fsync", "peers", err, sizeof(err)), 0);
	assert_int_equal(cfg.fsync_peers, 1);
	assert_int_equal(set(&cfg, "publish", "schedule", err, sizeof(err)), 0);
	assert_int_equal(cfg.publish, VP_PUBLISH_SCHEDULE);
	assert_int_equal(set(&cfg, "relay_fanout", "9", err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "from 0 to 8"));
	assert_int_equal(set(&cfg, "listen", "garbage", err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "'listen'"));
	assert_non_null(strstr(err, "HOST:PORT"));
	assert_int_equal(set(&cfg, "listen", ":7700", err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "wildcard"));
	assert_int_equal(set(&cfg, "listen", "10.0.0.1:99999", err, sizeof(err)), -EINVAL);
	assert_int_equal(set(&cfg, "subscribe", ":7700", err, sizeof(err)), -EINVAL);
	assert_int_equal(set(&cfg, "subscribe", "", err, sizeof(err)), 0);
	/* a string that does not fit its field */
	memset(long_value, 'a', sizeof(long_value) - 1);
	long_value[sizeof(long_value) - 1] = '\0';
	assert_int_equal(set(&cfg, "fabric_provider", long_value, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "longer than 63 bytes"));
	assert_int_equal(set(&cfg, "metrics", long_value, err, sizeof(err)), -EINVAL);
	/* config=: a missing file is the file's own message, not an unknown option 'config' */
	assert_int_equal(set(&cfg, "config", "/nonexistent/viperfs.conf", err, sizeof(err)),
			 -EINVAL);
	assert_non_null(strstr(err, "config file '/nonexistent/viperfs.conf': No such file"));
	{
		char passthru[64] = "";

		assert_int_equal(vp_config_parse_opts(&cfg, "config=/nonexistent/viperfs.conf", passthru,
						      sizeof(passthru), err, sizeof(err)), -EINVAL);
		assert_non_null(strstr(err, "config file '/nonexistent/viperfs.conf': No such file"));
		assert_string_equal(passthru, "");
	}
}

/* vp_config_check: the options against each other, before the mount. */
static void test_config_check(void **state)
{
	char secret[] = "/tmp/vp-test-secret-XXXXXX";
	struct vp_config cfg;
	char err[PATH_MAX + 1024], opts[PATH_MAX + 64];
	int fd = mkstemp(secret);

	(void)state;
	assert_true(fd >= 0);
	close(fd);
	vp_config_defaults(&cfg);
	assert_int_equal(vp_config_check(&cfg, err, sizeof(err)), 0);

	/* a producer or a consumer, not both */
	assert_int_equal(vp_config_parse_opts(&cfg, "listen=10.0.0.1:7700,subscribe=h:7700,insecure=1",
					      NULL, 0, err, sizeof(err)), 0);
	assert_int_equal(vp_config_check(&cfg, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "not both"));

	/* replication needs a secret, or insecure=1 */
	vp_config_defaults(&cfg);
	assert_int_equal(vp_config_set(&cfg, "subscribe", "h:7700", err, sizeof(err)), 0);
	assert_int_equal(vp_config_check(&cfg, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "subscribe='h:7700' without a secret_file"));
	assert_null(strchr(err, '\n'));
	assert_int_equal(vp_config_set(&cfg, "insecure", "1", err, sizeof(err)), 0);
	assert_int_equal(vp_config_check(&cfg, err, sizeof(err)), 0);

	vp_config_defaults(&cfg);
	snprintf(opts, sizeof(opts), "listen=10.0.0.1:7700,secret_file=%s", secret);
	assert_int_equal(vp_config_parse_opts(&cfg, opts, NULL, 0, err, sizeof(err)), 0);
	assert_int_equal(vp_config_check(&cfg, err, sizeof(err)), 0);
	unlink(secret);
	assert_int_equal(vp_config_check(&cfg, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "secret_file '"));
	assert_non_null(strstr(err, "No such file"));

	/* without replication, a secret_file is not read */
	assert_int_equal(vp_config_set(&cfg, "listen", "", err, sizeof(err)), 0);
	assert_int_equal(vp_config_check(&cfg, err, sizeof(err)), 0);
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
		cmocka_unit_test(test_validators),
		cmocka_unit_test(test_validator_values),
		cmocka_unit_test(test_config_check),
	};
	return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
