/*
 * vpctl_json: a small JSON reader for the daemon's answers (one object a
 * line), so viperctl can print them for people.  Strict enough for what
 * the daemon writes.  Strings come back as C strings: \u escapes become
 * UTF-8, except \u0080 to \u00ff, which are the daemon's way of sending
 * one byte of a name that is not UTF-8 and become that byte; \u0000 and
 * lone surrogates, which a C string cannot hold, become U+FFFD.  What
 * comes out is not safe to print as it is (control bytes, broken UTF-8):
 * viperctl escapes it first.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "vpctl.h"

static const char replacement[] = "\xef\xbf\xbd";	/* U+FFFD */

static void skip_ws(const char **p)
{
	while (isspace((unsigned char)**p))
		(*p)++;
}

/* A growing string; on allocation failure text is NULL. */
struct text {
	char *text;
	size_t len, cap;
};

static void text_add(struct text *t, const char *bytes, size_t n)
{
	if (!t->text)
		return;
	if (t->len + n + 1 > t->cap) {
		char *grown;

		while (t->len + n + 1 > t->cap)
			t->cap *= 2;
		grown = realloc(t->text, t->cap);
		if (!grown) {
			free(t->text);
			t->text = NULL;
			return;
		}
		t->text = grown;
	}
	memcpy(t->text + t->len, bytes, n);
	t->len += n;
}

/* Reads the 4 hex digits at *p (moving past them); -1 if they are not. */
static long hex4(const char **p)
{
	long v = 0;

	for (int i = 0; i < 4; i++) {
		char c = (*p)[i];

		if (!isxdigit((unsigned char)c))
			return -1;
		v = v * 16 + (isdigit((unsigned char)c) ? c - '0' :
			      tolower((unsigned char)c) - 'a' + 10);
	}
	*p += 4;
	return v;
}

/* Appends code point cp (below 0x110000, not a surrogate) as UTF-8. */
static void text_add_utf8(struct text *t, unsigned long cp)
{
	char b[4];

	if (cp < 0x80) {
		b[0] = (char)cp;
		text_add(t, b, 1);
	} else if (cp < 0x800) {
		b[0] = (char)(0xc0 | cp >> 6);
		b[1] = (char)(0x80 | (cp & 0x3f));
		text_add(t, b, 2);
	} else if (cp < 0x10000) {
		b[0] = (char)(0xe0 | cp >> 12);
		b[1] = (char)(0x80 | (cp >> 6 & 0x3f));
		b[2] = (char)(0x80 | (cp & 0x3f));
		text_add(t, b, 3);
	} else {
		b[0] = (char)(0xf0 | cp >> 18);
		b[1] = (char)(0x80 | (cp >> 12 & 0x3f));
		b[2] = (char)(0x80 | (cp >> 6 & 0x3f));
		b[3] = (char)(0x80 | (cp & 0x3f));
		text_add(t, b, 4);
	}
}

/* The escape after "\u" at *p; returns 0, or -1 for bad hex digits. */
static int decode_u(const char **p, struct text *t)
{
	long v = hex4(p), low;
	char byte;

	if (v < 0)
		return -1;
	if (v == 0) {
		text_add(t, replacement, 3);
	} else if (v < 0x100) {
		byte = (char)v;		/* below 0x80 ASCII; above, a raw byte (see top) */
		text_add(t, &byte, 1);
	} else if (v >= 0xd800 && v <= 0xdbff && (*p)[0] == '\\' && (*p)[1] == 'u') {
		const char *q = *p + 2;

		low = hex4(&q);
		if (low < 0)
			return -1;
		if (low >= 0xdc00 && low <= 0xdfff) {
			text_add_utf8(t, 0x10000 + ((unsigned long)(v - 0xd800) << 10) +
				      (unsigned long)(low - 0xdc00));
			*p = q;
		} else {
			text_add(t, replacement, 3);	/* the next escape is read on its own */
		}
	} else if (v >= 0xd800 && v <= 0xdfff) {
		text_add(t, replacement, 3);
	} else {
		text_add_utf8(t, (unsigned long)v);
	}
	return 0;
}

static char *parse_string(const char **p)
{
	struct text t = { .text = malloc(32), .cap = 32 };

	if (!t.text || **p != '"')
		goto err;
	(*p)++;
	while (**p && **p != '"') {
		char c = *(*p)++;

		if (c == '\\') {
			if (!**p)
				goto err;	/* never step past the end */
			c = *(*p)++;
			switch (c) {
			case 'n': c = '\n'; break;
			case 't': c = '\t'; break;
			case 'r': c = '\r'; break;
			case 'b': c = '\b'; break;
			case 'f': c = '\f'; break;
			case 'u':
				if (decode_u(p, &t))
					goto err;
				continue;
			default: break;	/* \" \\ \/ */
			}
		}
		text_add(&t, &c, 1);
	}
	if (**p != '"' || !t.text)
		goto err;
	(*p)++;
	t.text[t.len] = '\0';
	return t.text;
err:
	free(t.text);
	return NULL;
}

static struct vpctl_json *node_new(enum vpctl_json_type type)
{
	struct vpctl_json *j = calloc(1, sizeof(*j));

	if (j)
		j->type = type;
	return j;
}

static struct vpctl_json *parse_value(const char **p, int depth);

static struct vpctl_json *parse_container(const char **p, int depth, int object)
{
	struct vpctl_json *j = node_new(object ? VPCTL_JSON_OBJECT : VPCTL_JSON_ARRAY);
	struct vpctl_json **tail;

	if (!j)
		return NULL;
	tail = &j->child;
	(*p)++;
	skip_ws(p);
	if (**p == (object ? '}' : ']')) {
		(*p)++;
		return j;
	}
	for (;;) {
		char *key = NULL;
		struct vpctl_json *v;

		skip_ws(p);
		if (object) {
			key = parse_string(p);
			skip_ws(p);
			if (!key || **p != ':') {
				free(key);
				goto err;
			}
			(*p)++;
		}
		v = parse_value(p, depth + 1);
		if (!v) {
			free(key);
			goto err;
		}
		v->key = key;
		*tail = v;
		tail = &v->next;
		j->count++;
		skip_ws(p);
		if (**p == ',') {
			(*p)++;
			continue;
		}
		if (**p == (object ? '}' : ']')) {
			(*p)++;
			return j;
		}
		goto err;
	}
err:
	vpctl_json_free(j);
	return NULL;
}

static struct vpctl_json *parse_value(const char **p, int depth)
{
	struct vpctl_json *j;

	if (depth > 32)
		return NULL;
	skip_ws(p);
	switch (**p) {
	case '{':
		return parse_container(p, depth, 1);
	case '[':
		return parse_container(p, depth, 0);
	case '"':
		j = node_new(VPCTL_JSON_STRING);
		if (j && !(j->str = parse_string(p))) {
			free(j);
			j = NULL;
		}
		return j;
	case 't':
	case 'f':
	case 'n':
		if (!strncmp(*p, "true", 4) || !strncmp(*p, "null", 4)) {
			j = node_new(**p == 'n' ? VPCTL_JSON_NULL : VPCTL_JSON_BOOL);
			if (j)
				j->num = **p == 't';
			*p += 4;
			return j;
		}
		if (!strncmp(*p, "false", 5)) {
			j = node_new(VPCTL_JSON_BOOL);
			*p += 5;
			return j;
		}
		return NULL;
	default: {
		char *end;
		double v = strtod(*p, &end);

		if (end == *p)
			return NULL;
		*p = end;
		j = node_new(VPCTL_JSON_NUMBER);
		if (j)
			j->num = v;
		return j;
	}
	}
}

struct vpctl_json *vpctl_json_parse(const char *text)
{
	const char *p = text;
	struct vpctl_json *j = parse_value(&p, 0);

	if (!j)
		return NULL;
	skip_ws(&p);
	if (*p) {
		vpctl_json_free(j);
		return NULL;
	}
	return j;
}

void vpctl_json_free(struct vpctl_json *j)
{
	while (j) {
		struct vpctl_json *next = j->next;

		vpctl_json_free(j->child);
		free(j->key);
		free(j->str);
		free(j);
		j = next;
	}
}

const struct vpctl_json *vpctl_json_get(const struct vpctl_json *j, const char *path)
{
	char key[128];

	while (j && *path) {
		size_t len = strcspn(path, ".");
		const struct vpctl_json *c;

		if (len >= sizeof(key) || j->type != VPCTL_JSON_OBJECT)
			return NULL;
		memcpy(key, path, len);
		key[len] = '\0';
		for (c = j->child; c && strcmp(c->key, key); c = c->next)
			;
		j = c;
		path += len;
		if (*path == '.')
			path++;
	}
	return j;
}

double vpctl_json_num(const struct vpctl_json *j, const char *path)
{
	j = vpctl_json_get(j, path);
	return j && (j->type == VPCTL_JSON_NUMBER || j->type == VPCTL_JSON_BOOL) ? j->num : 0;
}

const char *vpctl_json_str(const struct vpctl_json *j, const char *path)
{
	j = vpctl_json_get(j, path);
	return j && j->type == VPCTL_JSON_STRING ? j->str : "";
}
