/* json: see json.h. */
#include "json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Table 3-7 of the Unicode standard.  A NUL is never a continuation byte. */
size_t vp_utf8_len(const unsigned char *s)
{
	unsigned char lo = 0x80, hi = 0xbf;	/* the second byte's range */
	size_t len;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		len = 2;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		len = 3;
		if (s[0] == 0xe0)
			lo = 0xa0;	/* below: overlong */
		else if (s[0] == 0xed)
			hi = 0x9f;	/* above: UTF-16 surrogates */
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		len = 4;
		if (s[0] == 0xf0)
			lo = 0x90;	/* below: overlong */
		else if (s[0] == 0xf4)
			hi = 0x8f;	/* above: past U+10FFFF */
	} else {
		return 0;	/* a continuation byte, 0xc0, 0xc1, 0xf5..0xff */
	}
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < len; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return len;
}

json_t *vp_json_name(const char *name)
{
	const unsigned char *p = (const unsigned char *)name;
	char *marked, *o;
	json_t *j;

	while (*p && vp_utf8_len(p))
		p += vp_utf8_len(p);
	if (!*p)
		return json_string(name);	/* UTF-8 already: the common case */
	/* each odd byte becomes 3: NUL, then U+00XX in 2 */
	marked = malloc(strlen(name) * 3 + 1);
	if (!marked)
		return NULL;
	o = marked;
	for (p = (const unsigned char *)name; *p;) {
		size_t len = vp_utf8_len(p);

		if (len) {
			memcpy(o, p, len);
			o += len;
			p += len;
			continue;
		}
		*o++ = '\0';
		*o++ = (char)(0xc0 | (*p >> 6));
		*o++ = (char)(0x80 | (*p & 0x3f));
		p++;
	}
	j = json_stringn(marked, (size_t)(o - marked));
	free(marked);
	return j;
}

json_t *vp_json_real(double v)
{
	return isfinite(v) ? json_real(v) : json_null();
}

/*
 * Rewrites, in place, each \u0000 jansson wrote for a mark, and the
 * 2-byte UTF-8 of U+00XX after it, as \u00XX.  A backslash is only ever
 * in a string and starts an escape: skipping each escape's first two
 * characters keeps an escaped backslash before "u0000" what it is.
 */
static void unmark(char *text)
{
	static const char nul[] = "\\u0000";
	char *in = text, *out = text;

	while (*in) {
		const unsigned char *next = (const unsigned char *)in + sizeof(nul) - 1;

		if (!strncmp(in, nul, sizeof(nul) - 1) && (next[0] & 0xfe) == 0xc2 &&
		    (next[1] & 0xc0) == 0x80) {
			out += sprintf(out, "\\u%04x", ((next[0] & 0x03) << 6) | (next[1] & 0x3f));
			in += sizeof(nul) - 1 + 2;
		} else if (*in == '\\' && in[1]) {
			*out++ = *in++;
			*out++ = *in++;
		} else {
			*out++ = *in++;
		}
	}
	*out = '\0';
}

char *vp_json_line(json_t *j)
{
	char *text = j ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER) : NULL;
	char *line = NULL;

	json_decref(j);
	if (text) {
		unmark(text);
		line = realloc(text, strlen(text) + 2);
		if (line)
			strcat(line, "\n");
		else
			free(text);
	}
	return line;
}
