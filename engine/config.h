/*
 * config: the one table of viperfs options.
 *
 * The same table feeds `-o name=value` mount options, the optional config
 * file (`-o config=FILE`, lines of `name = value`, `#` comments) and
 * `viperfs --help`.  Each entry names its validator (redis config.c),
 * which parses the value, checks it and its bounds, and only then stores
 * it; vp_config_check() checks the options against each other.
 *
 * THREADING: a struct vp_config is filled before the daemon starts its
 * threads and is read-only afterwards.
 */
#ifndef VP_CONFIG_H
#define VP_CONFIG_H

#include <limits.h>
#include <stdint.h>
#include <stdio.h>

#define VP_RELAY_FANOUT_MAX 8		/* consumers one node serves in the relay tree */

enum vp_flush_policy {
	VP_FLUSH_LATEST,	/* a version superseded before its flush is skipped */
	VP_FLUSH_ALL,		/* every committed version is flushed */
	VP_FLUSH_EVERY,		/* every flush_every-th version, and the last one at unmount */
};

enum vp_fsync_mode {
	VP_FSYNC_CACHE,		/* fsync returns once the data is a committed version in the cache */
	VP_FSYNC_PFS,		/* fsync waits until that version is on the PFS */
	VP_FSYNC_PEERS,		/* fsync waits until fsync_peers consumers hold that version */
};

enum vp_publish_policy {
	VP_PUBLISH_ALL,		/* every version (as the flush policy says) */
	VP_PUBLISH_SCHEDULE,	/* only versions the planner's schedule selects */
};

struct vp_config {
	uint64_t ram_cache;		/* bytes of chunk memory */
	uint64_t nonempty;		/* 1: mount over a directory that holds files (hidden while mounted) */
	uint64_t ram_prefault;		/* bytes faulted in at start */
	uint64_t ram_spare;		/* a memory file allocated ahead (mfile.h) */
	double cache_wait;		/* seconds a writer waits for cache space */
	enum vp_flush_policy flush_policy;
	unsigned int flush_every;	/* with VP_FLUSH_EVERY */
	unsigned int fsync_peers;	/* with VP_FSYNC_PEERS: consumers that must hold the version */
	uint64_t flush_bw;		/* bytes per second to the PFS, 0: no cap */
	double flush_interval;		/* seconds between flush passes, 0: continuous */
	unsigned int flush_inflight;	/* files written to the PFS at once */
	double flush_retry_max;		/* longest back-off between retries, seconds */
	double flush_hold;		/* a version's flush waits this long for the consumers to hold it */
	enum vp_fsync_mode fsync_mode;
	double unmount_wait;		/* seconds to drain flushes at unmount, 0: forever */
	int log_level;			/* syslog level */
	char log_file[PATH_MAX];	/* empty: stderr in foreground, else syslog */
	char log_format[8];		/* text, or json */
	char log_time[8];		/* local (with its offset), or utc */
	char control[PATH_MAX];		/* control socket path, empty: derived */
	char config_file[PATH_MAX];	/* the file given with config=, if any */
	enum vp_publish_policy publish;
	char loss_log[PATH_MAX];	/* path in the mount the planner follows */
	unsigned int plan_warmup;	/* iterations before the first fit */
	unsigned int plan_refit;	/* iterations between fits */
	double plan_t_infer;		/* seconds per inference on the consumers */
	uint64_t plan_inferences;	/* M: inferences served after warm-up */
	double plan_lambda;		/* weight of producer overhead */
	char listen[256];		/* producer: ADDR:PORT to serve consumers on */
	char subscribe[256];		/* consumer: HOST:PORT of the producer */
	char secret_file[PATH_MAX];	/* shared secret for peer authentication */
	uint64_t insecure;		/* 1: no secret_file needed on a non-loopback listen= */
	char fabric_provider[64];	/* libfabric provider, empty: $FI_PROVIDER or tcp;ofi_rxm */
	unsigned int repl_inflight;	/* RMA reads in flight per transfer */
	uint64_t repl_stream;		/* producer: preview a file every this many bytes written, 0: off */
	double peer_timeout;		/* seconds of silence before a peer is dead */
	uint64_t relay_fanout;		/* producer: consumers each node serves (0: all from the producer) */
	double relay_wait;		/* consumer: seconds without news from the relay before the producer serves */
	char on_update[PATH_MAX];	/* command run for each new version */
	double on_update_timeout;	/* seconds before a running on_update is killed, 0: never */
	uint64_t max_file_size;		/* largest file a replica accepts, 0: ram_cache (see below) */
	char metrics[256];		/* ADDR:PORT for Prometheus, empty: off */
	uint64_t gpu_cache;		/* bytes of GPU memory for mirrors, 0: no GPU tier */
	uint64_t gpu_device;		/* CUDA device ordinal */
	char gpu_tier[64];		/* cuda, or ram (host memory posing as the device: tests) */
	char passthrough[16];		/* auto, or off: readers served by the daemon (splice) */
	char gpu_direct[64];		/* auto, or off: network <-> GPU tier without the host cache in between */
	char recover[8];		/* producer: on, or off: versions only consumers hold are not taken back */
	char pfs_dir[PATH_MAX];		/* when not given as an argument */
	char mountpoint[PATH_MAX];	/* when not given as an argument */
};

/* Fills every field with its documented default. */
void vp_config_defaults(struct vp_config *cfg);

/*
 * Sets one option from its text.  Returns 0, -ENOENT for an unknown name,
 * or -EINVAL for a bad value; on error a message is written to err.
 * "config" loads the named file at once.
 */
int vp_config_set(struct vp_config *cfg, const char *name, const char *value,
		  char *err, size_t errlen);

/*
 * Parses a comma-separated option list ("a=1,b=2").  Names that are not
 * viperfs options are appended, comma-separated, to passthru (for libfuse)
 * if passthru is not NULL, else they are an error.  Returns 0 or -errno.
 */
int vp_config_parse_opts(struct vp_config *cfg, const char *opts,
			 char *passthru, size_t passthru_len,
			 char *err, size_t errlen);

/*
 * Checks the options together, once all are set (each option's own value
 * was checked when it was set): a mount is a producer or a consumer, not
 * both; replication needs a readable secret_file or insecure=1.  The
 * daemon calls it before it mounts.  Returns 0, or -EINVAL with a
 * one-line message naming the option in err.  cfg is borrowed.
 */
int vp_config_check(const struct vp_config *cfg, char *err, size_t errlen);

/* Reads a config file.  Returns 0 or -errno with a message in err. */
int vp_config_load_file(struct vp_config *cfg, const char *path,
			char *err, size_t errlen);

/*
 * The largest file a replica accepts from the network, in bytes:
 * max_file_size, or ram_cache where that is 0 (a file larger than the
 * cache could never be installed whole).  cfg is borrowed.
 */
uint64_t vp_config_max_file_size(const struct vp_config *cfg);

/* Prints the option table: name, default, help. */
void vp_config_help(FILE *out);

/*
 * Parses a size: a number with an optional K/M/G/T suffix (powers of 1024,
 * an optional trailing "B" or "iB"), or a percentage of physical memory
 * ("25%").  Returns 0 or -EINVAL.
 */
int vp_parse_size(const char *text, uint64_t *out);

/* Parses seconds: "1.5", "250ms", "2s", "5m".  Returns 0 or -EINVAL. */
int vp_parse_seconds(const char *text, double *out);

/* Formats bytes as "1.5 GiB" into buf; returns buf. */
char *vp_format_size(uint64_t bytes, char *buf, size_t len);

#endif
