/*
 * vpctl_answer: reads the daemon's answers (one JSON value a line) with
 * jansson, and makes their strings safe to print on a terminal.
 *
 * DESIGN: names in a mount are bytes.  The daemon (engine/json.h) writes
 * a byte that is not UTF-8 as \u0080 to \u00ff, so that every parser
 * takes its output; viperctl wants the byte back, to show it as \xNN,
 * while a real U+00E8 that came as UTF-8 stays "è".  jansson cannot tell
 * the two apart, and refuses what a confused or hostile daemon may send
 * (raw control bytes, raw bytes that are not UTF-8, \u0000, lone
 * surrogates).  So strict_json() first rewrites the string literals of
 * the text: each such byte becomes the pair \u0000\u00XX (a NUL cannot
 * otherwise occur: \u0000 itself and lone surrogates become U+FFFD), raw
 * control bytes become \u00XX; after parsing, unmark() turns each NUL
 * pair back into its byte and vpctl_escape() makes the string printable.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/json.h"

#include "vpctl.h"

size_t vpctl_escape(const char *text, char *buf, size_t len)
{
	const unsigned char *s = (const unsigned char *)text;
	size_t need = 0, used = 0;

	while (*s) {
		size_t seq = vp_utf8_len(s), add;
		char piece[4 * 4 + 1];	/* up to 4 bytes as \xNN */

		if (seq == 1 && *s >= 0x20 && *s != 0x7f) {
			piece[0] = (char)*s;
			add = 1;
		} else if (seq > 1 && !(s[0] == 0xc2 && s[1] <= 0x9f)) {
			memcpy(piece, s, seq);
			add = seq;
		} else {
			/* a control, or a byte of broken UTF-8: each byte on its own */
			seq = seq ? seq : 1;
			add = 0;
			for (size_t i = 0; i < seq; i++)
				add += (size_t)snprintf(piece + add, sizeof(piece) - add,
							"\\x%02x", s[i]);
		}
		if (used == need && used + add < len) {
			memcpy(buf + used, piece, add);
			used += add;
		}
		need += add;
		s += seq;
	}
	if (len)
		buf[used] = '\0';
	return need;
}

/* The code point of the 4 hex digits at s, or -1 if they are not 4 hex digits. */
static long hex4(const unsigned char *s)
{
	char digits[5];

	for (int i = 0; i < 4; i++) {
		if (!isxdigit(s[i]))
			return -1;
		digits[i] = (char)s[i];
	}
	digits[4] = '\0';
	return strtol(digits, NULL, 16);
}

/*
 * Copies the escape at s (a backslash) to *out, rewritten as the top
 * says; returns the position after it.
 */
static const unsigned char *copy_escape(const unsigned char *s, char **out)
{
	long cp = s[1] == 'u' ? hex4(s + 2) : -1;
	size_t n = s[1] ? 2 : 1;	/* a plain escape: \" \\ \n ... */

	if (cp == 0 || (cp >= 0xdc00 && cp <= 0xdfff)) {
		*out += sprintf(*out, "\\ufffd");
		return s + 6;
	}
	if (cp >= 0x80 && cp <= 0xff) {
		*out += sprintf(*out, "\\u0000\\u%04lx", cp);
		return s + 6;
	}
	if (cp >= 0xd800 && cp <= 0xdbff) {
		long low = s[6] == '\\' && s[7] == 'u' ? hex4(s + 8) : -1;

		if (low < 0xdc00 || low > 0xdfff) {
			*out += sprintf(*out, "\\ufffd");	/* the next escape is read on its own */
			return s + 6;
		}
		n = 12;
	} else if (cp > 0) {
		n = 6;
	}
	memcpy(*out, s, n);
	*out += n;
	return s + n;
}

/* The daemon's text as strict JSON, its odd bytes marked (see the top); free() it. */
static char *strict_json(const char *text)
{
	const unsigned char *s = (const unsigned char *)text;
	char *out = malloc(strlen(text) * 12 + 1), *o = out;
	int in_string = 0;

	if (!out)
		return NULL;
	while (*s) {
		size_t seq = vp_utf8_len(s);

		if (!in_string || *s == '"') {
			in_string ^= *s == '"';
			*o++ = (char)*s++;
		} else if (*s == '\\') {
			s = copy_escape(s, &o);
		} else if (seq == 0) {
			o += sprintf(o, "\\u0000\\u%04x", *s++);
		} else if (*s < 0x20) {
			o += sprintf(o, "\\u%04x", *s++);
		} else {
			memcpy(o, s, seq);
			o += seq;
			s += seq;
		}
	}
	*o = '\0';
	return out;
}

/* s (n bytes, NULs included) with each marked pair turned back into its byte. */
static char *unmark(const char *s, size_t n)
{
	char *out = malloc(n + 1), *o = out;

	if (!out)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '\0' && i + 2 < n && ((unsigned char)s[i + 1] & 0xfe) == 0xc2) {
			*o++ = (char)(((s[i + 1] & 0x03) << 6) | (s[i + 2] & 0x3f));
			i += 2;
		} else if (s[i] != '\0') {
			*o++ = s[i];
		}
	}
	*o = '\0';
	return out;
}

/* Makes the string j printable (unmark, vpctl_escape); returns 0 or -1 (no memory). */
static int escape_string(json_t *j)
{
	char *raw = unmark(json_string_value(j), json_string_length(j)), *safe;
	size_t len;
	int rc;

	if (!raw)
		return -1;
	len = vpctl_escape(raw, NULL, 0) + 1;
	safe = malloc(len);
	if (!safe) {
		free(raw);
		return -1;
	}
	vpctl_escape(raw, safe, len);
	rc = json_string_setn_nocheck(j, safe, len - 1);
	free(safe);
	free(raw);
	return rc;
}

/* Escapes every string in j and below it; returns 0 or -1 (no memory). */
static int escape_strings(json_t *j)
{
	const char *key;
	json_t *v;
	size_t i;

	switch (json_typeof(j)) {
	case JSON_OBJECT:
		json_object_foreach(j, key, v)
			if (escape_strings(v))
				return -1;
		return 0;
	case JSON_ARRAY:
		json_array_foreach(j, i, v)
			if (escape_strings(v))
				return -1;
		return 0;
	case JSON_STRING:
		return escape_string(j);
	default:
		return 0;
	}
}

json_t *vpctl_answer_parse(const char *text)
{
	char *strict = strict_json(text);
	json_t *j = NULL;

	if (strict)
		j = json_loads(strict, JSON_DECODE_ANY | JSON_ALLOW_NUL |
			       JSON_DECODE_INT_AS_REAL, NULL);
	free(strict);
	if (j && escape_strings(j)) {
		json_decref(j);
		j = NULL;
	}
	return j;
}

json_t *vpctl_get(const json_t *j, const char *path)
{
	char key[128];

	while (j && *path) {
		size_t len = strcspn(path, ".");

		if (len >= sizeof(key) || !json_is_object(j))
			return NULL;
		memcpy(key, path, len);
		key[len] = '\0';
		j = json_object_get(j, key);
		path += len;
		if (*path == '.')
			path++;
	}
	return (json_t *)j;
}

double vpctl_num(const json_t *j, const char *path)
{
	j = vpctl_get(j, path);
	return json_is_true(j) ? 1 : json_number_value(j);
}

const char *vpctl_str(const json_t *j, const char *path)
{
	const char *s = json_string_value(vpctl_get(j, path));

	return s ? s : "";
}
