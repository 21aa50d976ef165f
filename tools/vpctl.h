/* vpctl: what viperctl's source files share. */
#ifndef VPCTL_H
#define VPCTL_H

#include <stddef.h>

#include <jansson.h>

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

#endif
