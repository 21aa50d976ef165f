/* config: see config.h. */
#define _GNU_SOURCE
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "log.h"

struct opt;

/*
 * A validator: parses the text of one option and checks it, then stores
 * it in the option's field of cfg (and only then: a bad value leaves the
 * field as it was).  Returns 0, or -EINVAL with what is wrong written to
 * why (a phrase such as "want cuda or ram"; left empty, the option's help
 * is shown instead).  parse_config, which loads a file, writes a whole
 * message to why and may return any -errno.
 */
typedef int opt_parse_fn(struct vp_config *cfg, const struct opt *o,
			 const char *value, char *why, size_t whylen);

/*
 * One option: the redis static_configs[] way, a name, its validator, the
 * field it fills, its bounds, default and help.
 */
/* The sections of --help and of the man page, in their order. */
enum opt_group { G_MOUNT, G_CACHE, G_FLUSH, G_REPL, G_PLAN, G_GPU, G_OPS, N_GROUPS };

static const char *const group_titles[N_GROUPS] = {
	[G_MOUNT] = "The mount",
	[G_CACHE] = "The RAM cache and reads",
	[G_FLUSH] = "The flush to the PFS",
	[G_REPL] = "Replication (producer: listen=; consumer: subscribe=)",
	[G_PLAN] = "The planner (publish=schedule)",
	[G_GPU] = "The GPU tier",
	[G_OPS] = "Logs, metrics and hooks",
};

struct opt {
	const char *name;
	enum opt_group group;
	opt_parse_fn *parse;
	size_t offset;			/* of the field in struct vp_config */
	size_t size;			/* of the field: bounds a string's length */
	const char *def;
	const char *help;
	const char *const *choices;	/* parse_choice, parse_enum: NULL-terminated */
	uint64_t max;			/* parse_count: the largest value, 0: none */
};

#define FIELD(f) .offset = offsetof(struct vp_config, f), \
	.size = sizeof(((struct vp_config *)0)->f)

static const char *const PUBLISH_POLICIES[] = {
	[VP_PUBLISH_ALL] = "all", [VP_PUBLISH_SCHEDULE] = "schedule", NULL,
};
static const char *const GPU_TIERS[] = { "cuda", "ram", NULL };
static const char *const GPU_DIRECT_MODES[] = { "auto", "off", NULL };
static const char *const PASSTHROUGH_MODES[] = { "auto", "off", NULL };
static const char *const LOG_FORMATS[] = { "text", "json", NULL };
static const char *const LOG_TIMES[] = { "local", "utc", NULL };
static const char *const RECOVER_MODES[] = { "on", "off", NULL };

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

static void *field_of(struct vp_config *cfg, const struct opt *o)
{
	return (char *)cfg + o->offset;
}

static int parse_size_opt(struct vp_config *cfg, const struct opt *o,
			  const char *value, char *why, size_t whylen)
{
	uint64_t v;

	(void)why;
	(void)whylen;
	if (vp_parse_size(value, &v))
		return -EINVAL;
	memcpy(field_of(cfg, o), &v, sizeof(v));
	return 0;
}

static int parse_seconds_opt(struct vp_config *cfg, const struct opt *o,
			     const char *value, char *why, size_t whylen)
{
	double v;

	(void)why;
	(void)whylen;
	if (vp_parse_seconds(value, &v))
		return -EINVAL;
	memcpy(field_of(cfg, o), &v, sizeof(v));
	return 0;
}

/* A decimal number, digits only (no sign, no spaces), up to max. */
static int parse_decimal(const char *text, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!isdigit((unsigned char)*text))
		return -EINVAL;
	errno = 0;
	v = strtoull(text, &end, 10);
	if (*end || errno || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

/* An unsigned int field, 1 to 1,000,000 (threads, iterations, reads in flight). */
static int parse_positive(struct vp_config *cfg, const struct opt *o,
			  const char *value, char *why, size_t whylen)
{
	unsigned int field;
	uint64_t v;

	if (parse_decimal(value, 1000000, &v) || v == 0) {
		snprintf(why, whylen, "want a whole number from 1 to 1000000");
		return -EINVAL;
	}
	field = (unsigned int)v;
	memcpy(field_of(cfg, o), &field, sizeof(field));
	return 0;
}

/* A uint64_t field, 0 to o->max (or any 64-bit value without a max). */
static int parse_count(struct vp_config *cfg, const struct opt *o,
		       const char *value, char *why, size_t whylen)
{
	uint64_t v;

	if (parse_decimal(value, o->max ? o->max : UINT64_MAX, &v)) {
		if (o->max)
			snprintf(why, whylen, "want a whole number from 0 to %llu",
				 (unsigned long long)o->max);
		return -EINVAL;
	}
	memcpy(field_of(cfg, o), &v, sizeof(v));
	return 0;
}

/* A string field (a path, an address, a name) that must fit. */
static int parse_string_opt(struct vp_config *cfg, const struct opt *o,
			    const char *value, char *why, size_t whylen)
{
	if (strlen(value) >= o->size) {
		snprintf(why, whylen, "longer than %zu bytes", o->size - 1);
		return -EINVAL;
	}
	memcpy(field_of(cfg, o), value, strlen(value) + 1);
	return 0;
}

/* The index of value in o->choices, or -EINVAL with "want a or b" in why. */
static int find_choice(const struct opt *o, const char *value, char *why, size_t whylen)
{
	size_t used;
	int i;

	for (i = 0; o->choices[i]; i++)
		if (!strcmp(o->choices[i], value))
			return i;
	used = (size_t)snprintf(why, whylen, "want");
	for (i = 0; o->choices[i] && used < whylen; i++)
		used += (size_t)snprintf(why + used, whylen - used, "%s %s",
					 i == 0 ? "" : o->choices[i + 1] ? "," : " or",
					 o->choices[i]);
	return -EINVAL;
}

/* A string field that holds one of o->choices. */
static int parse_choice(struct vp_config *cfg, const struct opt *o,
			const char *value, char *why, size_t whylen)
{
	if (find_choice(o, value, why, whylen) < 0)
		return -EINVAL;
	return parse_string_opt(cfg, o, value, why, whylen);
}

/* An enum field: the index of value in o->choices. */
static int parse_enum(struct vp_config *cfg, const struct opt *o,
		      const char *value, char *why, size_t whylen)
{
	int index = find_choice(o, value, why, whylen);

	if (index < 0)
		return -EINVAL;
	memcpy(field_of(cfg, o), &index, sizeof(index));
	return 0;
}

/* fsync=cache, pfs, peers or peers:N (N from 1 to 64; peers: 1). */
static int parse_fsync(struct vp_config *cfg, const struct opt *o,
		       const char *value, char *why, size_t whylen)
{
	uint64_t n = 1;

	(void)o;
	if (!strcmp(value, "cache")) {
		cfg->fsync_mode = VP_FSYNC_CACHE;
	} else if (!strcmp(value, "pfs")) {
		cfg->fsync_mode = VP_FSYNC_PFS;
	} else if (!strcmp(value, "peers") ||
		   (!strncmp(value, "peers:", 6) && !parse_decimal(value + 6, 64, &n) && n > 0)) {
		cfg->fsync_mode = VP_FSYNC_PEERS;
		cfg->fsync_peers = (unsigned int)n;
	} else {
		snprintf(why, whylen, "cache, pfs, peers or peers:N (N consumers, 1 to 64)");
		return -EINVAL;
	}
	return 0;
}

/* flush=latest, all or every:N (N from 1). */
static int parse_flush(struct vp_config *cfg, const struct opt *o,
		       const char *value, char *why, size_t whylen)
{
	uint64_t every;

	(void)o;
	(void)why;
	(void)whylen;
	if (!strcmp(value, "latest")) {
		cfg->flush_policy = VP_FLUSH_LATEST;
	} else if (!strcmp(value, "all")) {
		cfg->flush_policy = VP_FLUSH_ALL;
	} else if (!strncmp(value, "every:", 6) &&
		   !parse_decimal(value + 6, 1000000, &every) && every > 0) {
		cfg->flush_policy = VP_FLUSH_EVERY;
		cfg->flush_every = (unsigned int)every;
	} else {
		return -EINVAL;
	}
	return 0;
}

static int parse_log_level(struct vp_config *cfg, const struct opt *o,
			   const char *value, char *why, size_t whylen)
{
	int level = vp_log_level_parse(value);

	(void)o;
	(void)why;
	(void)whylen;
	if (level < 0)
		return -EINVAL;
	cfg->log_level = level;
	return 0;
}

/*
 * config=FILE: loads the file at once (its errors are whole messages; the
 * lines before a bad one stay set), then remembers its name.
 */
static int parse_config(struct vp_config *cfg, const struct opt *o,
			const char *value, char *why, size_t whylen)
{
	int rc = 0;

	if (strlen(value) >= o->size)
		return -EINVAL;
	if (*value)
		rc = vp_config_load_file(cfg, value, why, whylen);
	if (!rc)
		memcpy(field_of(cfg, o), value, strlen(value) + 1);
	/*
	 * A missing file, or an unknown option in it, is the file's error
	 * (said in why), not an unknown option 'config' of ours.
	 */
	return rc == -ENOENT ? -EINVAL : rc;
}

/*
 * Splits "HOST:PORT" at its last colon: host gets HOST (which may be
 * empty), and the port must be a number from 1 to 65535.  Returns 0 or
 * -EINVAL with why.
 */
static int split_host_port(const char *value, char *host, size_t hostlen,
			   char *why, size_t whylen)
{
	const char *colon = strrchr(value, ':');
	uint64_t port;

	if (!colon || parse_decimal(colon + 1, 65535, &port) || port == 0) {
		snprintf(why, whylen, "want HOST:PORT, PORT from 1 to 65535");
		return -EINVAL;
	}
	if ((size_t)(colon - value) >= hostlen) {
		snprintf(why, whylen, "the host name is too long");
		return -EINVAL;
	}
	memcpy(host, value, (size_t)(colon - value));
	host[colon - value] = '\0';
	return 0;
}

/*
 * listen=ADDR:PORT: this node's own address on the fabric network.  RxM
 * names a peer by the address it listens on, so consumers could not match
 * a wildcard, and their connections would hang.  Empty: no producer.
 */
static int parse_listen(struct vp_config *cfg, const struct opt *o,
			const char *value, char *why, size_t whylen)
{
	char host[256];

	if (*value && split_host_port(value, host, sizeof(host), why, whylen))
		return -EINVAL;
	if (*value && (!*host || !strcmp(host, "0.0.0.0") || !strcmp(host, "::") ||
		       !strcmp(host, "[::]"))) {
		snprintf(why, whylen, "give this node's own address on the fabric network, not a wildcard");
		return -EINVAL;
	}
	return parse_string_opt(cfg, o, value, why, whylen);
}

/* subscribe=HOST:PORT: the producer's listen= address.  Empty: no consumer. */
static int parse_subscribe(struct vp_config *cfg, const struct opt *o,
			   const char *value, char *why, size_t whylen)
{
	char host[256];

	if (*value && split_host_port(value, host, sizeof(host), why, whylen))
		return -EINVAL;
	if (*value && !*host) {
		snprintf(why, whylen, "name the producer's host");
		return -EINVAL;
	}
	return parse_string_opt(cfg, o, value, why, whylen);
}

static const struct opt options[] = {
	{ .name = "pfs_dir", .group = G_MOUNT, .parse = parse_string_opt, FIELD(pfs_dir), .def = "",
	  .help = "the PFS directory, for a config file that describes the whole mount (instead of the first argument)" },
	{ .name = "mountpoint", .group = G_MOUNT, .parse = parse_string_opt, FIELD(mountpoint), .def = "",
	  .help = "the mount point, for a config file that describes the whole mount (instead of the second argument)" },
	{ .name = "nonempty", .group = G_MOUNT, .parse = parse_count, FIELD(nonempty), .def = "0",
	  .help = "1: mount over a directory that is not empty (its files are hidden while mounted); else such a mount is refused",
	  .max = 1 },
	{ .name = "ram_cache", .group = G_CACHE, .parse = parse_size_opt, FIELD(ram_cache), .def = "25%",
	  .help = "RAM for file data: a size, or a percentage of physical memory" },
	{ .name = "ram_prefault", .group = G_CACHE, .parse = parse_size_opt, FIELD(ram_prefault), .def = "256M",
	  .help = "cache memory faulted in at start, for replicas and chunked files" },
	{ .name = "ram_spare", .group = G_CACHE, .parse = parse_size_opt, FIELD(ram_spare), .def = "256M",
	  .help = "memory allocated ahead for the next version, so its writes land in pages that exist (at most a quarter of ram_cache; 0: off)" },
	{ .name = "cache_wait", .group = G_CACHE, .parse = parse_seconds_opt, FIELD(cache_wait), .def = "10",
	  .help = "seconds a writer waits for cache space before ENOSPC" },
	{ .name = "flush", .group = G_FLUSH, .parse = parse_flush, FIELD(flush_policy), .def = "latest",
	  .help = "which versions reach the PFS: latest, all, every:N" },
	{ .name = "flush_bw", .group = G_FLUSH, .parse = parse_size_opt, FIELD(flush_bw), .def = "0",
	  .help = "cap on PFS write bandwidth, in bytes per second (100M: 100 MiB/s; 0: none)" },
	{ .name = "flush_interval", .group = G_FLUSH, .parse = parse_seconds_opt, FIELD(flush_interval), .def = "0",
	  .help = "seconds between flush passes (0: flush as soon as committed)" },
	{ .name = "flush_inflight", .group = G_FLUSH, .parse = parse_positive, FIELD(flush_inflight), .def = "2",
	  .help = "files written to the PFS at the same time" },
	{ .name = "flush_hold", .group = G_FLUSH, .parse = parse_seconds_opt, FIELD(flush_hold), .def = "10",
	  .help = "producer: seconds a version's flush waits for every subscribed consumer to hold it, so that the PFS write does not slow the transfer (0: flush at once; viperctl flush and the unmount never wait)" },
	{ .name = "flush_retry_max", .group = G_FLUSH, .parse = parse_seconds_opt, FIELD(flush_retry_max), .def = "30",
	  .help = "longest back-off between retries of a failed PFS operation" },
	{ .name = "fsync", .group = G_FLUSH, .parse = parse_fsync, FIELD(fsync_mode), .def = "cache",
	  .help = "what fsync() waits for: cache (committed in memory), peers[:N] (N consumers hold the version, default 1; at most 120 s, else EIO) or pfs (on the PFS)" },
	{ .name = "unmount_wait", .group = G_FLUSH, .parse = parse_seconds_opt, FIELD(unmount_wait), .def = "300",
	  .help = "seconds to drain pending flushes at unmount (0: until done)" },
	{ .name = "log_level", .group = G_OPS, .parse = parse_log_level, FIELD(log_level), .def = "info",
	  .help = "error, warning, notice, info or debug" },
	{ .name = "log_file", .group = G_OPS, .parse = parse_string_opt, FIELD(log_file), .def = "",
	  .help = "append logs to this file (default: stderr with -f, else syslog; where syslog is not reachable, the daemon says so and falls back to /var/log/viperfs.log, or $XDG_STATE_HOME/viperfs/viperfs.log); SIGHUP reopens it" },
	{ .name = "log_format", .group = G_OPS, .parse = parse_choice, FIELD(log_format), .def = "text",
	  .help = "text, or json: one object a line (time, level, subsystem, message, pid), for log shippers; syslog lines stay text",
	  .choices = LOG_FORMATS },
	{ .name = "log_time", .group = G_OPS, .parse = parse_choice, FIELD(log_time), .def = "local",
	  .help = "time stamps of log lines in local time with its UTC offset (local), or in UTC (utc)",
	  .choices = LOG_TIMES },
	{ .name = "control", .group = G_MOUNT, .parse = parse_string_opt, FIELD(control), .def = "",
	  .help = "control socket for viperctl (default: /run/viperfs/viperfs-PID.sock; for a user, $XDG_RUNTIME_DIR/viperfs-PID.sock)" },
	{ .name = "config", .group = G_MOUNT, .parse = parse_config, FIELD(config_file), .def = "",
	  .help = "read options from FILE, one 'name = value' a line" },
	{ .name = "publish", .group = G_PLAN, .parse = parse_enum, FIELD(publish), .def = "all",
	  .help = "which versions ship and flush: all, or schedule (the planner picks; needs plan_t_infer, plan_inferences)",
	  .choices = PUBLISH_POLICIES },
	{ .name = "loss_log", .group = G_PLAN, .parse = parse_string_opt, FIELD(loss_log), .def = "loss.csv",
	  .help = "with publish=schedule: the loss log the job writes in the mount (iter,loss CSV, Keras CSVLogger, Lightning metrics.csv)" },
	{ .name = "plan_warmup", .group = G_PLAN, .parse = parse_positive, FIELD(plan_warmup), .def = "200",
	  .help = "with publish=schedule: training iterations of warm-up before the first fit" },
	{ .name = "plan_refit", .group = G_PLAN, .parse = parse_positive, FIELD(plan_refit), .def = "200",
	  .help = "with publish=schedule: iterations between re-fits" },
	{ .name = "plan_t_infer", .group = G_PLAN, .parse = parse_seconds_opt, FIELD(plan_t_infer), .def = "0",
	  .help = "with publish=schedule: seconds per inference on the consumers" },
	{ .name = "plan_inferences", .group = G_PLAN, .parse = parse_count, FIELD(plan_inferences), .def = "0",
	  .help = "with publish=schedule: inferences served after warm-up" },
	{ .name = "plan_lambda", .group = G_PLAN, .parse = parse_seconds_opt, FIELD(plan_lambda), .def = "0",
	  .help = "with publish=schedule: weight of producer stall against inference loss" },
	{ .name = "listen", .group = G_REPL, .parse = parse_listen, FIELD(listen), .def = "",
	  .help = "producer: serve consumers on ADDR:PORT (libfabric)" },
	{ .name = "subscribe", .group = G_REPL, .parse = parse_subscribe, FIELD(subscribe), .def = "",
	  .help = "consumer: replicate from the producer at HOST:PORT; the mount is then read-only" },
	{ .name = "secret_file", .group = G_REPL, .parse = parse_string_opt, FIELD(secret_file), .def = "",
	  .help = "file with the shared secret of every node (16+ bytes; openssl rand -hex 32): peers authenticate with it (HMAC-SHA256) and seal every message (ChaCha20-Poly1305); replication (listen= or subscribe=) needs it, unless insecure=1" },
	{ .name = "insecure", .group = G_REPL, .parse = parse_count, FIELD(insecure), .def = "0",
	  .help = "1: replicate without secret_file, on a network nobody else reaches (peers are then checked by address only: anyone who reaches the port, local users too, can read announced versions and inject messages)",
	  .max = 1 },
	{ .name = "fabric_provider", .group = G_REPL, .parse = parse_string_opt, FIELD(fabric_provider), .def = "",
	  .help = "libfabric provider (default: $FI_PROVIDER, else tcp;ofi_rxm)" },
	{ .name = "repl_inflight", .group = G_REPL, .parse = parse_positive, FIELD(repl_inflight), .def = "8",
	  .help = "RMA reads of 1 MiB in flight per transfer" },
	{ .name = "repl_stream", .group = G_REPL, .parse = parse_size_opt, FIELD(repl_stream), .def = "16M",
	  .help = "producer: while a file is being written, offer consumers its finished chunks every this many bytes, so little is left to move at close; a consumer holds at most half of its ram_cache of them (0: ship at close only)" },
	{ .name = "on_update", .group = G_OPS, .parse = parse_string_opt, FIELD(on_update), .def = "",
	  .help = "shell command run for each new version, with VIPERFS_PATH, VIPERFS_VERSION, VIPERFS_SIZE set (for servers with a load API)" },
	{ .name = "on_update_timeout", .group = G_OPS, .parse = parse_seconds_opt, FIELD(on_update_timeout), .def = "60",
	  .help = "seconds an on_update command may run; past it, it is killed (SIGTERM, then SIGKILL 2 s later) and the log says so (0: no limit)" },
	{ .name = "max_file_size", .group = G_CACHE, .parse = parse_size_opt, FIELD(max_file_size), .def = "0",
	  .help = "largest file a replica accepts from the network; 0: the cache size (ram_cache)" },
	{ .name = "gpu_cache", .group = G_GPU, .parse = parse_size_opt, FIELD(gpu_cache), .def = "0",
	  .help = "GPU memory for the GPU tier: the newest version of each file is mirrored there (0: off; without a usable device the tier is off and the log says why)" },
	{ .name = "gpu_device", .group = G_GPU, .parse = parse_count, FIELD(gpu_device), .def = "0",
	  .help = "CUDA device of the GPU tier" },
	{ .name = "gpu_tier", .group = G_GPU, .parse = parse_choice, FIELD(gpu_tier), .def = "cuda",
	  .help = "the GPU tier's implementation: cuda, or ram (host memory posing as the device, to test the tier on a node without a GPU)",
	  .choices = GPU_TIERS },
	{ .name = "passthrough", .group = G_CACHE, .parse = parse_choice, FIELD(passthrough), .def = "auto",
	  .help = "auto: readers of a committed version get its memory file by FUSE passthrough where the kernel and libfuse allow it; off: the daemon serves every read (splice)",
	  .choices = PASSTHROUGH_MODES },
	{ .name = "gpu_direct", .group = G_GPU, .parse = parse_choice, FIELD(gpu_direct), .def = "auto",
	  .help = "GPU-direct replication: auto (where the fabric can register the tier's memory, FI_HMEM for CUDA, a consumer's reads land in its GPU tier and a producer serves complete GPU mirrors from it) or off (always through the host caches)",
	  .choices = GPU_DIRECT_MODES },
	{ .name = "metrics", .group = G_OPS, .parse = parse_string_opt, FIELD(metrics), .def = "",
	  .help = "serve Prometheus metrics at http://ADDR:PORT/metrics (a bare PORT binds 127.0.0.1)" },
	{ .name = "peer_timeout", .group = G_REPL, .parse = parse_seconds_opt, FIELD(peer_timeout), .def = "5",
	  .help = "seconds without a heartbeat before a peer counts as dead" },
	{ .name = "relay_fanout", .group = G_REPL, .parse = parse_count, FIELD(relay_fanout), .def = "1",
	  .help = "producer: relay tree of consumers: the producer and each consumer serve at most this many consumers, which re-serve the chunks they received (1: a chain; 0: every consumer reads from the producer; at most 8)",
	  .max = VP_RELAY_FANOUT_MAX },
	{ .name = "recover", .group = G_REPL, .parse = parse_choice, FIELD(recover), .def = "on",
	  .help = "producer: on (a version that reached a consumer and not the PFS before this producer's last run ended is read back from the consumer, hash-checked, served and flushed) or off (it is not; the next version of the path is numbered after it all the same)",
	  .choices = RECOVER_MODES },
	{ .name = "relay_wait", .group = G_REPL, .parse = parse_seconds_opt, FIELD(relay_wait), .def = "2",
	  .help = "consumer: seconds a relayed transfer waits on the relay node without progress before the producer serves the rest" },
};


#define N_OPTIONS (sizeof(options) / sizeof(options[0]))

static int set_one(struct vp_config *cfg, const struct opt *o,
		   const char *value, char *err, size_t errlen)
{
	char why[PATH_MAX + 512] = "";
	int rc = o->parse(cfg, o, value, why, sizeof(why));

	if (!rc)
		return 0;
	if (o->parse == parse_config && *why)
		snprintf(err, errlen, "%s", why);
	else
		snprintf(err, errlen, "bad value '%s' for option '%s': %s",
			 value, o->name, *why ? why : o->help);
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

int vp_config_check(const struct vp_config *cfg, char *err, size_t errlen)
{
	const char *role = cfg->subscribe[0] ? "subscribe" : "listen";
	const char *addr = cfg->subscribe[0] ? cfg->subscribe : cfg->listen;

	if (cfg->fsync_mode == VP_FSYNC_PEERS && !cfg->listen[0]) {
		snprintf(err, errlen, "fsync=peers waits for consumers: it needs listen= (a producer)");
		return -EINVAL;
	}
	if (cfg->listen[0] && cfg->subscribe[0]) {
		snprintf(err, errlen, "a mount is a producer (listen=) or a consumer (subscribe=), not both; drop one");
		return -EINVAL;
	}
	/*
	 * Not even on loopback: a peer's address is its IP and a port it
	 * names itself, so any local user could subscribe or pose as the
	 * producer (docs/security.md).
	 */
	if (*addr && !cfg->secret_file[0] && !cfg->insecure) {
		snprintf(err, errlen, "%s='%s' without a secret_file: anyone who reaches the port could read the cache or write into replicas; set the same secret_file on every node (openssl rand -hex 32), or insecure=1 on a network nobody else reaches",
			 role, addr);
		return -EINVAL;
	}
	/* the key itself is read (and its size checked) by the replication */
	if (*addr && cfg->secret_file[0]) {
		int fd = open(cfg->secret_file, O_RDONLY | O_CLOEXEC);

		if (fd < 0) {
			snprintf(err, errlen, "secret_file '%s': %s", cfg->secret_file,
				 strerror(errno));
			return -EINVAL;
		}
		close(fd);
	}
	return 0;
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

/* Cuts an inline comment off a value: from a '#' that follows a space or tab. */
static void strip_comment(char *value)
{
	for (char *p = value; *p; p++)
		if (*p == '#' && (p == value || p[-1] == ' ' || p[-1] == '\t')) {
			*p = '\0';
			return;
		}
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
		strip_comment(eq + 1);
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

/* Writes text from column indent, wrapped at 80 columns; the first line starts at col. */
static void help_wrap(FILE *out, const char *text, int col, int indent)
{
	const char *p = text;

	while (*p) {
		int room = 80 - col, len = (int)strcspn(p, " ");

		if (col > indent && len + 1 > room) {
			fprintf(out, "\n%*s", indent, "");
			col = indent;
		} else if (col > indent) {
			fputc(' ', out);
			col++;
		}
		fprintf(out, "%.*s", len, p);
		col += len;
		p += len;
		while (*p == ' ')
			p++;
	}
	fputc('\n', out);
}

void vp_config_help(FILE *out)
{
	char text[1024];

	fprintf(out, "Options (-o name=value,... or 'name = value' lines in a config file).\n"
		     "Sizes and rates take K, M, G or T, binary: 1K is 1024 bytes, and\n"
		     "flush_bw=100M is 100 MiB/s (KiB, MB and the like are read the same).\n"
		     "Times are in seconds and may have decimals.\n");
	for (int g = 0; g < N_GROUPS; g++) {
		fprintf(out, "\n%s:\n", group_titles[g]);
		for (size_t i = 0; i < N_OPTIONS; i++) {
			const struct opt *o = &options[i];
			int col;

			if (o->group != (enum opt_group)g)
				continue;
			col = fprintf(out, "  %s", o->name);
			if (strstr(o->help, "(default:"))
				snprintf(text, sizeof(text), "%s", o->help);
			else
				snprintf(text, sizeof(text), "%s (default: %s)", o->help,
					 *o->def ? o->def : "none");
			if (col >= 21) {
				fprintf(out, "\n%*s", 21, "");
				col = 21;
			} else {
				col += fprintf(out, "%*s", 21 - col, "");
			}
			help_wrap(out, text, col, 21);
		}
	}
}
