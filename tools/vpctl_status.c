/*
 * vpctl_status: the human form of the daemon's status and of its list of
 * files (viperctl status, viperctl versions).  Every string printed came
 * through vpctl_answer_parse: names and messages are escaped already.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "../engine/config.h"
#include "../engine/version.h"

#include "vpctl.h"

const char *vpctl_size(double bytes, char *buf, size_t len)
{
	return vp_format_size(bytes > 0 ? (uint64_t)bytes : 0, buf, len);
}

const char *vpctl_duration(double seconds, char *buf, size_t len)
{
	unsigned long long s = seconds > 0 ? (unsigned long long)(seconds + 0.5) : 0;

	if (s >= 86400)
		snprintf(buf, len, "%llud %lluh", s / 86400, s % 86400 / 3600);
	else if (s >= 3600)
		snprintf(buf, len, "%lluh %02llum", s / 3600, s % 3600 / 60);
	else if (s >= 60)
		snprintf(buf, len, "%llum %02llus", s / 60, s % 60);
	else
		snprintf(buf, len, "%llus", s);
	return buf;
}

/* The cache and GPU tier lines of the status. */
static void print_tiers(const json_t *st)
{
	char a[32], b[32], c[32], d[32];

	printf("  %-14s ram %s used of %s (memory files %s, spare %s)\n", "cache",
	       vpctl_size(vpctl_num(st, "tiers.ram.used"), a, sizeof(a)),
	       vpctl_size(vpctl_num(st, "tiers.ram.budget"), b, sizeof(b)),
	       vpctl_size(vpctl_num(st, "ram.memory_files"), c, sizeof(c)),
	       vpctl_size(vpctl_num(st, "ram.spare"), d, sizeof(d)));
	if (vpctl_num(st, "memory_pages.bytes") > 0)
		printf("  %-14s %lld KiB (shmem_enabled=%s)\n", "memory pages",
		       (long long)vpctl_num(st, "memory_pages.bytes") >> 10,
		       vpctl_str(st, "memory_pages.shmem_enabled"));
	if (*vpctl_str(st, "read_path.mode"))
		printf("  %-14s %s: %s\n", "read path", vpctl_str(st, "read_path.mode"),
		       vpctl_str(st, "read_path.why"));
	if (!json_is_object(vpctl_get(st, "tiers.gpu")))
		printf("  %-14s off (gpu_cache=0)\n", "gpu tier");
	else if (strcmp(vpctl_str(st, "tiers.gpu.state"), "on"))
		printf("  %-14s off: %s\n", "gpu tier", *vpctl_str(st, "tiers.gpu.reason") ?
		       vpctl_str(st, "tiers.gpu.reason") : "a device error (see the log)");
	else
		printf("  %-14s %s used of %s on %s device %.0f (%s): %.0f files mirrored, %.0f leased\n",
		       "gpu tier", vpctl_size(vpctl_num(st, "tiers.gpu.used"), a, sizeof(a)),
		       vpctl_size(vpctl_num(st, "tiers.gpu.budget"), b, sizeof(b)),
		       vpctl_str(st, "tiers.gpu.tier"), vpctl_num(st, "tiers.gpu.device"),
		       vpctl_str(st, "tiers.gpu.name"), vpctl_num(st, "tiers.gpu.files"),
		       vpctl_num(st, "tiers.gpu.leased"));
}

/* The files, flush and I/O lines of the status. */
static void print_flush(const json_t *st)
{
	const char *err = vpctl_str(st, "flush.last_error");
	char a[32], b[32];

	printf("  %-14s %.0f (%.0f not on the PFS yet), %.0f open\n", "files",
	       vpctl_num(st, "files"), vpctl_num(st, "unflushed_files"),
	       vpctl_num(st, "open_files"));
	printf("  %-14s %.0f operations, %s; lag last %.3f s, mean %.3f s\n", "flush queue",
	       vpctl_num(st, "flush.queued_ops"),
	       vpctl_size(vpctl_num(st, "flush.queued_bytes"), a, sizeof(a)),
	       vpctl_num(st, "flush.last_lag_s"), vpctl_num(st, "flush.mean_lag_s"));
	printf("  %-14s %.0f versions, %s; %.0f skipped; %.0f retries; last error: %s%s%s\n",
	       "flushed", vpctl_num(st, "flush.flushed_versions"),
	       vpctl_size(vpctl_num(st, "flush.flushed_bytes"), a, sizeof(a)),
	       vpctl_num(st, "flush.skipped_versions"), vpctl_num(st, "flush.retries"),
	       *err ? err : "none", *err ? " at " : "",
	       *err ? vpctl_str(st, "flush.last_error_path") : "");
	printf("  %-14s written %s, read %s; %.0f commits (%.0f refused: a write failed), median stall %.3f s\n",
	       "I/O", vpctl_size(vpctl_num(st, "bytes_written"), a, sizeof(a)),
	       vpctl_size(vpctl_num(st, "bytes_read"), b, sizeof(b)),
	       vpctl_num(st, "commits"), vpctl_num(st, "commits_refused"),
	       vpctl_num(st, "checkpoint_stall_s"));
}

/* The GPU path, when the daemon reports one ("" from an older daemon). */
static const char *gpu_path(const json_t *repl)
{
	const char *path = vpctl_str(repl, "gpu_path");

	return *path && strcmp(path, "none") ? path : NULL;
}

/* The replication lines of a consumer's status. */
static void print_consumer(const json_t *repl)
{
	char a[32], b[32], c[32];

	printf("  %-14s consumer of %s over %s: %s; %.0f installed, %.0f skipped, %s in; last transfer %.3f s\n",
	       "replication", vpctl_str(repl, "producer"), vpctl_str(repl, "provider"),
	       vpctl_str(repl, "state"), vpctl_num(repl, "installed"),
	       vpctl_num(repl, "skipped"),
	       vpctl_size(vpctl_num(repl, "bytes_in"), a, sizeof(a)),
	       vpctl_num(repl, "last_transfer_s"));
	if (vpctl_num(repl, "relay.parent") > 0)
		printf("  %-14s reads from consumer %.0f: %s from it, %s from the producer when it lagged\n",
		       "relay", vpctl_num(repl, "relay.parent"),
		       vpctl_size(vpctl_num(repl, "relay.bytes_from_relay"), b, sizeof(b)),
		       vpctl_size(vpctl_num(repl, "relay.bytes_relay_fallback"), c, sizeof(c)));
	if (gpu_path(repl))
		printf("  %-14s %s; %s landed in the GPU tier straight from the network\n",
		       "gpu path", gpu_path(repl),
		       vpctl_size(vpctl_num(repl, "bytes_gpu_direct"), b, sizeof(b)));
}

/* The replication lines of a producer's status: one per peer. */
static void print_producer(const json_t *repl)
{
	const json_t *peers = vpctl_get(repl, "peers"), *p;
	char a[32], b[32];
	size_t i;

	printf("  %-14s producer on %s over %s; %.0f changes announced; %u peers\n",
	       "replication", vpctl_str(repl, "listen"), vpctl_str(repl, "provider"),
	       vpctl_num(repl, "seq"), (unsigned int)json_array_size(peers));
	json_array_foreach(peers, i, p)
		printf("    peer %-8.0f %s, lag %.0f (%.3f s), %.0f versions, %s sent, %s relayed%s, heard %.1f s ago\n",
		       vpctl_num(p, "id"), vpctl_str(p, "state"),
		       vpctl_num(p, "lag"), vpctl_num(p, "lag_s"),
		       vpctl_num(p, "versions_done"),
		       vpctl_size(vpctl_num(p, "bytes_out"), a, sizeof(a)),
		       vpctl_size(vpctl_num(p, "bytes_relayed"), b, sizeof(b)),
		       vpctl_num(p, "relay_parent") > 0 ? " by its relay" : "",
		       vpctl_num(p, "last_heard_s"));
	if (gpu_path(repl))
		printf("  %-14s %s; %.0f versions (%s) served from GPU mirrors\n",
		       "gpu path", gpu_path(repl),
		       vpctl_num(repl, "gpu_versions_out"),
		       vpctl_size(vpctl_num(repl, "gpu_bytes_out"), a, sizeof(a)));
}

/*
 * One line per file of files (the daemon's versions, or the status's
 * paths), each line starting with indent: path, version, size, state and
 * the tiers that hold it.  A name is escaped (a newline in it is \x0a), so
 * a line is a file.
 */
static void print_files(const json_t *files, const char *indent)
{
	const json_t *p, *tier;
	size_t i, k;
	char c[32];

	json_array_foreach(files, i, p) {
		char where[32] = "";

		json_array_foreach(vpctl_get(p, "tiers"), k, tier)
			snprintf(where + strlen(where), sizeof(where) - strlen(where), "%s%s",
				 *where ? "+" : "",
				 json_is_string(tier) ? json_string_value(tier) : "?");
		printf("%s%-40s version %-5.0f %10s  %-8s %s\n", indent, vpctl_str(p, "path"),
		       vpctl_num(p, "version"),
		       vpctl_size(vpctl_num(p, "size"), c, sizeof(c)),
		       vpctl_str(p, "state"), where);
	}
}

void vpctl_print_files(const json_t *files)
{
	if (!json_array_size(files)) {
		printf("no files\n");
		return;
	}
	printf("%-40s %-13s %10s  %-8s %s\n", "PATH", "VERSION", "SIZE", "STATE", "TIERS");
	print_files(files, "");
}

/* The daemon's lines of the status: pid, release, uptime, options. */
static void print_daemon(const char *mnt, const json_t *st)
{
	const char *release = vpctl_str(st, "release"), *options = vpctl_str(st, "options");
	time_t started = (time_t)vpctl_num(st, "started");
	struct vpctl_mount m;
	char up[32], since[64] = "";
	struct tm tm;

	if (!*release) {	/* an older daemon: only its pid */
		printf("  %-14s pid %.0f\n", "daemon", vpctl_num(st, "pid"));
		return;
	}
	if (localtime_r(&started, &tm))
		strftime(since, sizeof(since), ", since %Y-%m-%d %H:%M:%S %Z", &tm);
	printf("  %-14s pid %.0f, release %s%s%s%s, up %s%s\n", "daemon", vpctl_num(st, "pid"),
	       release, strcmp(release, VP_RELEASE) ? " (this viperctl is " : "",
	       strcmp(release, VP_RELEASE) ? VP_RELEASE : "",
	       strcmp(release, VP_RELEASE) ? ")" : "",
	       vpctl_duration(vpctl_num(st, "uptime_s"), up, sizeof(up)), since);
	printf("  %-14s %s\n", "options", *options ? options : "(defaults)");
	if (!vpctl_mount_of(mnt, &m)) {
		char safe[sizeof(m.options) * 4];

		vpctl_escape(m.options, safe, sizeof(safe));
		printf("  %-14s %s\n", "kernel mount", safe);
	}
}

void vpctl_print_status(const char *mnt, const json_t *st)
{
	const json_t *repl = vpctl_get(st, "repl");
	char safe[PATH_MAX * 4];

	vpctl_escape(mnt, safe, sizeof(safe));
	printf("viperfs mount %s\n", safe);
	print_daemon(mnt, st);
	printf("  %-14s %s\n", "PFS directory", vpctl_str(st, "pfs_dir"));
	print_tiers(st);
	print_flush(st);
	if (!json_is_object(repl))
		printf("  %-14s off\n", "replication");
	else if (!strcmp(vpctl_str(repl, "role"), "consumer"))
		print_consumer(repl);
	else
		print_producer(repl);
	if (json_array_size(vpctl_get(st, "paths"))) {
		printf("  paths\n");
		print_files(vpctl_get(st, "paths"), "    ");
	}
}
