/*
 * json: what viperfs adds to jansson for the JSON it writes (status, the
 * control socket's answers, the schedule file).  Every JSON value is a
 * json_t built with jansson and dumped by vp_json_line().
 *
 * DESIGN: names in the mount are bytes, not text; JSON is text, and
 * jansson takes only UTF-8.  A byte that is not part of well-formed UTF-8
 * (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF) is
 * written as \u00XX, the code point of the same number, so every parser
 * accepts the output.  That mapping is lossy: \u00ff stands for the byte
 * 0xff and for U+00FF alike (viperctl tells them apart by reading the
 * text before jansson does: tools/vpctl_answer.c).
 *
 * jansson cannot write \u00ff for a string it holds as a raw 0xff (it
 * refuses invalid UTF-8), and a string holding U+00FF comes out as the
 * raw UTF-8 of U+00FF.  So vp_json_name() marks each such byte as the
 * pair U+0000, U+00XX -- a NUL never occurs in a name, which is a C
 * string -- and vp_json_line() rewrites each marked pair, which jansson
 * writes as \u0000 followed by the UTF-8 of U+00XX, as \u00XX.  Valid
 * multi-byte sequences are copied as they are; control characters come
 * out as jansson writes them (\n, \u001F).
 *
 * THREADING: no state; any thread.
 */
#ifndef VP_JSON_H
#define VP_JSON_H

#include <stddef.h>

#include <jansson.h>

/*
 * The length of the well-formed UTF-8 sequence at s (1 to 4; RFC 3629: no
 * overlong forms, no surrogates, nothing above U+10FFFF), or 0 where the
 * byte at s does not start one.  A NUL ends a truncated sequence.
 */
size_t vp_utf8_len(const unsigned char *s);

/*
 * A new JSON string for name (borrowed, NUL-terminated, any bytes: a file
 * name, a path), its bytes that are not UTF-8 marked as the top says.
 * NULL: out of memory.
 */
json_t *vp_json_name(const char *name);

/* A new JSON real, or JSON null where v is NaN or infinite (JSON has neither). */
json_t *vp_json_real(double v);

/*
 * j as one line of compact JSON text, newline included, keys in the order
 * they were set, the bytes vp_json_name() marked as \u00XX: a new string
 * (free() it), or NULL when j is NULL or memory ran out.  Takes j (its
 * reference is dropped here), so a caller may pass what json_pack()
 * returns as it is.
 */
char *vp_json_line(json_t *j);

#endif
