/*
 * json: the one writer of JSON string literals in viperfs (status, the
 * control socket's answers).
 *
 * DESIGN: names in the mount are bytes, not text; JSON is text.  A byte
 * that is not part of well-formed UTF-8 (RFC 3629: no overlong forms, no
 * surrogates, nothing above U+10FFFF) is written as \u00XX, the code point
 * of the same number, so every parser accepts the output.  That mapping is
 * lossy: \u00ff stands for the byte 0xff and for U+00FF alike.  Valid
 * multi-byte sequences are copied as they are.
 *
 * THREADING: no state; any thread.
 */
#ifndef VP_JSON_H
#define VP_JSON_H

#include <stddef.h>
#include <stdio.h>

/*
 * The length of the well-formed UTF-8 sequence at s (1 to 4; RFC 3629: no
 * overlong forms, no surrogates, nothing above U+10FFFF), or 0 where the
 * byte at s does not start one.  A NUL ends a truncated sequence.
 */
size_t vp_utf8_len(const unsigned char *s);

/*
 * Writes s (borrowed, NUL-terminated) to out as a JSON string literal,
 * quotes included: '"' and '\' escaped, control characters and invalid
 * UTF-8 bytes as \u00XX.
 */
void vp_json_string(FILE *out, const char *s);

#endif
