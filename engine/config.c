/* config: see config.h. */
#define _GNU_SOURCE
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "log.h"

enum opt_type { OPT_SIZE, OPT_SECONDS, OPT_UINT, OPT_PATH, OPT_FLUSH,
		OPT_FSYNC, OPT_LOGLEVEL, OPT_CONFIG, OPT_PUBLISH, OPT_COUNT, OPT_STR };

struct opt {
	const char *name;
	enum opt_type type;
	size_t offset;
	const char *def;
	const char *help;
};

#define OFF(field) offsetof(struct vp_config, field)

static const struct opt options[] = {
	{ "pfs_dir", OPT_PATH, OFF(pfs_dir), "",
	  "the PFS directory, for a config file that describes the whole mount (instead of the first argument)" },
	{ "mountpoint", OPT_PATH, OFF(mountpoint), "",
	  "the mount point, for a config file that describes the whole mount (instead of the second argument)" },
	{ "ram_cache", OPT_SIZE, OFF(ram_cache), "25%",
	  "RAM for file data (K/M/G suffix or % of physical memory)" },
	{ "ram_prefault", OPT_SIZE, OFF(ram_prefault), "256M",
	  "cache memory faulted in at start, so first writes run at memory speed" },
	{ "cache_wait", OPT_SECONDS, OFF(cache_wait), "10",
	  "seconds a writer waits for cache space before ENOSPC" },
	{ "flush", OPT_FLUSH, 0, "latest",
	  "which versions reach the PFS: latest, all, every:N" },
	{ "flush_bw", OPT_SIZE, OFF(flush_bw), "0",
	  "cap on PFS write bandwidth, bytes per second (0: none)" },
	{ "flush_interval", OPT_SECONDS, OFF(flush_interval), "0",
	  "seconds between flush passes (0: flush as soon as committed)" },
	{ "flush_inflight", OPT_UINT, OFF(flush_inflight), "2",
	  "files written to the PFS at the same time" },
	{ "flush_retry_max", OPT_SECONDS, OFF(flush_retry_max), "30",
	  "longest back-off between retries of a failed PFS operation" },
	{ "fsync", OPT_FSYNC, OFF(fsync_mode), "cache",
	  "what fsync() waits for: cache (committed in memory) or pfs" },
	{ "unmount_wait", OPT_SECONDS, OFF(unmount_wait), "300",
	  "seconds to drain pending flushes at unmount (0: until done)" },
	{ "log_level", OPT_LOGLEVEL, OFF(log_level), "info",
	  "error, warning, notice, info or debug" },
	{ "log_file", OPT_PATH, OFF(log_file), "",
	  "append logs to this file (default: stderr with -f, else syslog)" },
	{ "control", OPT_PATH, OFF(control), "",
	  "control socket for viperctl (default: /run/viperfs/<pid>.sock)" },
	{ "config", OPT_CONFIG, OFF(config_file), "",
	  "read options from FILE, one 'name = value' a line" },
	{ "publish", OPT_PUBLISH, 0, "all",
	  "which versions ship and flush: all, or schedule (the planner picks; needs plan_t_infer, plan_inferences)" },
	{ "loss_log", OPT_PATH, OFF(loss_log), "loss.csv",
	  "with publish=schedule: the loss log the job writes in the mount (iter,loss CSV, Keras CSVLogger, Lightning metrics.csv)" },
	{ "plan_warmup", OPT_UINT, OFF(plan_warmup), "200",
	  "with publish=schedule: training iterations of warm-up before the first fit" },
	{ "plan_refit", OPT_UINT, OFF(plan_refit), "200",
	  "with publish=schedule: iterations between re-fits" },
	{ "plan_t_infer", OPT_SECONDS, OFF(plan_t_infer), "0",
	  "with publish=schedule: seconds per inference on the consumers" },
	{ "plan_inferences", OPT_COUNT, OFF(plan_inferences), "0",
	  "with publish=schedule: inferences served after warm-up" },
	{ "plan_lambda", OPT_SECONDS, OFF(plan_lambda), "0",
	  "with publish=schedule: weight of producer stall against inference loss" },
	{ "listen", OPT_STR, OFF(listen), "",
	  "producer: serve consumers on ADDR:PORT (libfabric)" },
	{ "subscribe", OPT_STR, OFF(subscribe), "",
	  "consumer: replicate from the producer at HOST:PORT; the mount is then read-only" },
	{ "secret_file", OPT_PATH, OFF(secret_file), "",
	  "file with the shared secret of every node (16+ bytes; openssl rand -hex 32): peers authenticate with it (HMAC-SHA256) and seal every message (ChaCha20-Poly1305); replication (listen= or subscribe=) needs it, unless insecure=1" },
	{ "insecure", OPT_COUNT, OFF(insecure), "0",
	  "1: replicate without secret_file, on a network nobody else reaches (peers are then checked by address only: anyone who reaches the port, local users too, can read announced versions and inject messages)" },
	{ "fabric_provider", OPT_STR, OFF(fabric_provider), "",
	  "libfabric provider (default: $FI_PROVIDER, else tcp;ofi_rxm)" },
	{ "repl_inflight", OPT_UINT, OFF(repl_inflight), "8",
	  "RMA reads of 1 MiB in flight per transfer" },
	{ "repl_stream", OPT_SIZE, OFF(repl_stream), "16M",
	  "producer: while a file is being written, offer consumers its finished chunks every this many bytes, so little is left to move at close (0: ship at close only)" },
	{ "on_update", OPT_PATH, OFF(on_update), "",
	  "shell command run for each new version, with VIPERFS_PATH, VIPERFS_VERSION, VIPERFS_SIZE set (for servers with a load API)" },
	{ "on_update_timeout", OPT_SECONDS, OFF(on_update_timeout), "60",
	  "seconds an on_update command may run; past it, it is killed (SIGTERM, then SIGKILL 2 s later) and the log says so (0: no limit)" },
	{ "max_file_size", OPT_SIZE, OFF(max_file_size), "0",
	  "largest file a replica accepts from the network; 0: the cache size (ram_cache)" },
	{ "gpu_cache", OPT_SIZE, OFF(gpu_cache), "0",
	  "GPU memory for the GPU tier: the newest version of each file is mirrored there (0: off; without a usable device the tier is off and the log says why)" },
	{ "gpu_device", OPT_COUNT, OFF(gpu_device), "0",
	  "CUDA device of the GPU tier" },
	{ "gpu_tier", OPT_STR, OFF(gpu_tier), "cuda",
	  "the GPU tier's implementation: cuda, or ram (host memory posing as the device, to test the tier on a node without a GPU)" },
	{ "gpu_direct", OPT_STR, OFF(gpu_direct), "auto",
	  "GPU-direct replication: auto (where the fabric can register the tier's memory, FI_HMEM for CUDA, a consumer's reads land in its GPU tier and a producer serves complete GPU mirrors from it) or off (always through the host caches)" },
	{ "metrics", OPT_STR, OFF(metrics), "",
	  "serve Prometheus metrics at http://ADDR:PORT/metrics (a bare PORT binds 127.0.0.1)" },
	{ "peer_timeout", OPT_SECONDS, OFF(peer_timeout), "5",
	  "seconds without a heartbeat before a peer counts as dead" },
	{ "relay_fanout", OPT_COUNT, OFF(relay_fanout), "1",
	  "producer: relay tree of consumers: the producer and each consumer serve at most this many consumers, which re-serve the chunks they received (1: a chain; 0: every consumer reads from the producer; at most 8)" },
	{ "relay_wait", OPT_SECONDS, OFF(relay_wait), "2",
	  "consumer: seconds a relayed transfer waits on the relay node without progress before the producer serves the rest" },
};

#define N_OPTIONS (sizeof(options) / sizeof(options[0]))

static uint64_t physical_memory(void)
{
	long pages = sysconf(_SC_PHYS_PAGES);
	long page = sysconf(_SC_PAGESIZE);

	return pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
}

int vp_parse_size(const char *text, uint64_t *out)
{
	char *end;
	double v;
	double mult = 1;

	errno = 0;
	v = strtod(text, &end);
	if (end == text || errno || v < 0 || !isfinite(v))
		return -EINVAL;
	if (*end == '%') {
		if (end[1] || v > 100)
			return -EINVAL;
		*out = (uint64_t)(physical_memory() * (v / 100.0));
		return 0;
	}
	switch (toupper((unsigned char)*end)) {
	case 'K': mult = 1024.0; end++; break;
	case 'M': mult = 1024.0 * 1024; end++; break;
	case 'G': mult = 1024.0 * 1024 * 1024; end++; break;
	case 'T': mult = 1024.0 * 1024 * 1024 * 1024; end++; break;
	default: break;
	}
	if (mult > 1 && *end == 'i')
		end++;
	if (*end == 'B' || *end == 'b')
		end++;
	if (*end)
		return -EINVAL;
	if (v * mult > 1.8e19)
		return -EINVAL;
	*out = (uint64_t)(v * mult);
	return 0;
}

int vp_parse_seconds(const char *text, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(text, &end);
	if (end == text || errno || v < 0 || !isfinite(v))
		return -EINVAL;
	if (!strcmp(end, "ms"))
		v /= 1000;
	else if (!strcmp(end, "m") || !strcmp(end, "min"))
		v *= 60;
	else if (!strcmp(end, "h"))
		v *= 3600;
	else if (*end && strcmp(end, "s"))
		return -EINVAL;
	*out = v;
	return 0;
}

char *vp_format_size(uint64_t bytes, char *buf, size_t len)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double v = (double)bytes;
	unsigned int u = 0;

	while (v >= 1024 && u < 4) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%llu B", (unsigned long long)bytes);
	else
		snprintf(buf, len, "%.1f %s", v, units[u]);
	return buf;
}

static int parse_uint(const char *text, unsigned int *out)
{
	char *end;
	unsigned long v;

	if (!isdigit((unsigned char)*text))
		return -EINVAL;
	errno = 0;
	v = strtoul(text, &end, 10);
	if (*end || errno || v > 1000000)
		return -EINVAL;
	*out = (unsigned int)v;
	return 0;
}

static int set_one(struct vp_config *cfg, const struct opt *o,
		   const char *value, char *err, size_t errlen)
{
	char *field = (char *)cfg + o->offset;
	int rc = 0;

	switch (o->type) {
	case OPT_SIZE:
		rc = vp_parse_size(value, (uint64_t *)(void *)field);
		break;
	case OPT_SECONDS:
		rc = vp_parse_seconds(value, (double *)(void *)field);
		break;
	case OPT_UINT:
		rc = parse_uint(value, (unsigned int *)(void *)field);
		if (!rc && *(unsigned int *)(void *)field == 0)
			rc = -EINVAL;
		break;
	case OPT_PATH:
		if (strlen(value) >= PATH_MAX)
			rc = -EINVAL;
		else
			strcpy(field, value);
		break;
	case OPT_STR:
		/* the short string fields are 64 or 256 bytes */
		if (strlen(value) >= (o->offset == OFF(fabric_provider) || o->offset == OFF(gpu_tier) ||
				      o->offset == OFF(gpu_direct) ?
				      64u : 256u))
			rc = -EINVAL;
		else if (o->offset == OFF(gpu_direct) && strcmp(value, "auto") && strcmp(value, "off"))
			rc = -EINVAL;
		else
			strcpy(field, value);
		break;
	case OPT_FLUSH:
		if (!strcmp(value, "latest")) {
			cfg->flush_policy = VP_FLUSH_LATEST;
		} else if (!strcmp(value, "all")) {
			cfg->flush_policy = VP_FLUSH_ALL;
		} else if (!strncmp(value, "every:", 6) &&
			   !parse_uint(value + 6, &cfg->flush_every) &&
			   cfg->flush_every > 0) {
			cfg->flush_policy = VP_FLUSH_EVERY;
		} else {
			rc = -EINVAL;
		}
		break;
	case OPT_FSYNC:
		if (!strcmp(value, "cache"))
			cfg->fsync_mode = VP_FSYNC_CACHE;
		else if (!strcmp(value, "pfs"))
			cfg->fsync_mode = VP_FSYNC_PFS;
		else
			rc = -EINVAL;
		break;
	case OPT_LOGLEVEL: {
		int level = vp_log_level_parse(value);

		if (level < 0)
			rc = -EINVAL;
		else
			cfg->log_level = level;
		break;
	}
	case OPT_PUBLISH:
		if (!strcmp(value, "all"))
			cfg->publish = VP_PUBLISH_ALL;
		else if (!strcmp(value, "schedule"))
			cfg->publish = VP_PUBLISH_SCHEDULE;
		else
			rc = -EINVAL;
		break;
	case OPT_COUNT: {
		char *end;

		errno = 0;
		*(uint64_t *)(void *)field = strtoull(value, &end, 10);
		if (!isdigit((unsigned char)*value) || *end || errno)
			rc = -EINVAL;
		else if (o->offset == OFF(relay_fanout) && cfg->relay_fanout > VP_RELAY_FANOUT_MAX)
			rc = -EINVAL;
		break;
	}
	case OPT_CONFIG:
		if (strlen(value) >= PATH_MAX)
			return -EINVAL;
		strcpy(cfg->config_file, value);
		if (!*value)
			return 0;
		return vp_config_load_file(cfg, value, err, errlen);
	}
	if (rc)
		snprintf(err, errlen, "bad value '%s' for option '%s' (%s)",
			 value, o->name, o->help);
	return rc;
}

int vp_config_set(struct vp_config *cfg, const char *name, const char *value,
		  char *err, size_t errlen)
{
	for (size_t i = 0; i < N_OPTIONS; i++)
		if (!strcmp(options[i].name, name))
			return set_one(cfg, &options[i], value, err, errlen);
	snprintf(err, errlen, "unknown option '%s'; 'viperfs --help' lists them",
		 name);
	return -ENOENT;
}

void vp_config_defaults(struct vp_config *cfg)
{
	char err[256];

	memset(cfg, 0, sizeof(*cfg));
	for (size_t i = 0; i < N_OPTIONS; i++) {
		int rc = set_one(cfg, &options[i], options[i].def, err,
				 sizeof(err));

		if (rc)
			abort();	/* a bad default is a programming error */
	}
}

static char *trim(char *s)
{
	char *end;

	while (isspace((unsigned char)*s))
		s++;
	end = s + strlen(s);
	while (end > s && isspace((unsigned char)end[-1]))
		*--end = '\0';
	return s;
}

int vp_config_load_file(struct vp_config *cfg, const char *path, char *err,
			size_t errlen)
{
	FILE *f = fopen(path, "re");
	char line[PATH_MAX + 128];
	unsigned int lineno = 0;
	int rc = 0;

	if (!f) {
		rc = -errno;
		snprintf(err, errlen, "config file '%s': %s", path,
			 strerror(-rc));
		return rc;
	}
	while (fgets(line, sizeof(line), f)) {
		char *s, *eq, msg[512];

		lineno++;
		s = trim(line);
		if (!*s || *s == '#')
			continue;
		eq = strchr(s, '=');
		if (!eq) {
			snprintf(err, errlen, "config file '%s' line %u: expected 'name = value'",
				 path, lineno);
			rc = -EINVAL;
			break;
		}
		*eq = '\0';
		if (!strcmp(trim(s), "config")) {
			snprintf(err, errlen, "config file '%s' line %u: a config file cannot include another",
				 path, lineno);
			rc = -EINVAL;
			break;
		}
		rc = vp_config_set(cfg, trim(s), trim(eq + 1), msg, sizeof(msg));
		if (rc) {
			snprintf(err, errlen, "config file '%s' line %u: %s",
				 path, lineno, msg);
			break;
		}
	}
	fclose(f);
	return rc;
}

int vp_config_parse_opts(struct vp_config *cfg, const char *opts,
			 char *passthru, size_t passthru_len, char *err,
			 size_t errlen)
{
	char *copy = strdup(opts), *save = NULL, *tok;
	int rc = 0;

	if (!copy)
		return -ENOMEM;
	for (tok = strtok_r(copy, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '=');
		const char *value = "";

		if (eq) {
			*eq = '\0';
			value = eq + 1;
		}
		rc = vp_config_set(cfg, tok, value, err, errlen);
		if (rc != -ENOENT)
			goto next;
		if (!passthru) {
			rc = -EINVAL;
			break;
		}
		if (eq)
			*eq = '=';
		if (strlen(passthru) + strlen(tok) + 2 > passthru_len) {
			snprintf(err, errlen, "too many options");
			rc = -E2BIG;
			break;
		}
		if (*passthru)
			strcat(passthru, ",");
		strcat(passthru, tok);
		rc = 0;
next:
		if (rc)
			break;
	}
	free(copy);
	return rc;
}

uint64_t vp_config_max_file_size(const struct vp_config *cfg)
{
	return cfg->max_file_size ? cfg->max_file_size : cfg->ram_cache;
}

void vp_config_help(FILE *out)
{
	fprintf(out, "viperfs options (-o name=value,... or in a config file):\n");
	for (size_t i = 0; i < N_OPTIONS; i++)
		fprintf(out, "    %-16s %s (default: %s)\n", options[i].name,
			options[i].help,
			*options[i].def ? options[i].def : "none");
}
