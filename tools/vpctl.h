/* vpctl: what viperctl's source files share. */
#ifndef VPCTL_H
#define VPCTL_H

#include <limits.h>
#include <stddef.h>

#include <jansson.h>

/*
 * viperctl's exit statuses, the same for every command (viperctl(1)).
 * umount keeps umount(8)'s: 0, 2 for usage, 32 when the mount stays.
 */
enum vpctl_exit {
	VPCTL_OK = 0,
	VPCTL_ERROR = 1,	/* the daemon refused, a file could not be read, ... */
	VPCTL_USAGE = 2,	/* a bad command line (usage on stderr) */
	VPCTL_NO_DAEMON = 3,	/* not in a viperfs mount, or its daemon is gone */
	VPCTL_TIMED_OUT = 4,	/* --timeout passed (wait, flush), or the daemon did not answer */
	VPCTL_UMOUNT_FAILED = 32,	/* umount(8)'s "unmount failed" */
};

/* viperctl plan ...; returns the exit status. */
int vpctl_plan(int argc, char **argv);

/*
 * Reads the producer's measured checkpoint stall and the transfer time
 * (commit to on-PFS) from the daemon of mount mnt.  Returns 0 or -1 with
 * a message printed.
 */
int vpctl_measured_times(const char *mnt, double *t_ckpt, double *t_load);

/*
 * Prints j on one line of stdout (compact, reals with 15 significant
 * digits) and flushes it.  Takes the reference j, which may be NULL (a
 * json_pack that failed: out of memory).  Returns 0, or -1 with a message
 * that starts with who printed to stderr.
 */
int vpctl_print_json(json_t *j, const char *who);

/* ---- the daemon's answers (vpctl_answer.c) ---- */

/*
 * Text from the daemon (file names, reasons, errors), made safe to print
 * on a terminal: control bytes (below 0x20, and 0x7f), C1 controls
 * (U+0080 to U+009F, which some terminals obey as escape sequences) and
 * bytes that are not valid UTF-8 become \xNN; everything else, valid
 * UTF-8 included, passes.  Writes what fits of the result, NUL included,
 * into buf of len bytes (buf may be NULL with len 0), never cutting an
 * escape or a character in two.  Returns the length of the whole result,
 * as snprintf does.  Everything viperctl prints for people that came from
 * the daemon goes through here.
 */
size_t vpctl_escape(const char *text, char *buf, size_t len);

/*
 * Parses an answer of the daemon (text is borrowed) for printing: a new
 * reference (json_decref it) whose strings hold the daemon's bytes,
 * escaped with vpctl_escape, or NULL if text is not JSON (or memory ran
 * out).  A byte the daemon sent as \u0080 to \u00ff is that byte, not
 * U+0080 to U+00FF (engine/json.h); \u0000 and lone surrogates become
 * U+FFFD.
 */
json_t *vpctl_answer_parse(const char *text);

/* The value at "a.b.c" in nested objects (borrowed from j), or NULL. */
json_t *vpctl_get(const json_t *j, const char *path);

/* The number (or true: 1) at path, 0 if missing. */
double vpctl_num(const json_t *j, const char *path);

/* The string at path (borrowed from j), "" if missing. */
const char *vpctl_str(const json_t *j, const char *path);

/* ---- the human output (vpctl_status.c) ---- */

/* bytes as "1.5 GiB" into buf (len bytes); returns buf. */
const char *vpctl_size(double bytes, char *buf, size_t len);

/* seconds as "12s", "3m 05s", "2h 07m" or "4d 3h" into buf; returns buf. */
const char *vpctl_duration(double seconds, char *buf, size_t len);

/*
 * Prints the status st (from vpctl_answer_parse: its strings are escaped;
 * borrowed) of the mount at mnt on stdout, for people.
 */
void vpctl_print_status(const char *mnt, const json_t *st);

/* Prints the daemon's list of files (its versions answer, borrowed) as a table. */
void vpctl_print_files(const json_t *files);

/* ---- the node's viperfs mounts (vpctl_mounts.c) ---- */

/* One line of /proc/self/mountinfo whose type is fuse.viperfs. */
struct vpctl_mount {
	char point[PATH_MAX];		/* the mount point */
	char source[PATH_MAX];		/* viperfs:PFS_DIR */
	char options[1024];		/* the kernel's per-mount options (rw,nosuid,...) */
};

/*
 * Lists this node's viperfs mounts (in this mount namespace), live or
 * whose daemon is gone, in the kernel's order: *out is a new array of *n
 * (free() it; NULL when *n is 0).  Returns 0 or -errno.
 */
int vpctl_mounts_list(struct vpctl_mount **out, size_t *n);

/*
 * The viperfs mount that holds path, found by its text (made absolute
 * with the working directory): path is never looked up, so this works on
 * a mount whose daemon is gone.  Returns 0 with *mnt filled, -ENOENT if
 * no viperfs mount holds it, or -errno.
 */
int vpctl_mount_of(const char *path, struct vpctl_mount *mnt);

#endif
