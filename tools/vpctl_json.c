/*
 * vpctl_json: a small JSON reader for the daemon's answers (one object a
 * line), so viperctl can print them for people.  Strict enough for what
 * the daemon writes; \u escapes above 0x7f become '?'.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "vpctl.h"

static void skip_ws(const char **p)
{
	while (isspace((unsigned char)**p))
		(*p)++;
}

static char *parse_string(const char **p)
{
	size_t cap = 32, len = 0;
	char *out = malloc(cap);

	if (!out || **p != '"') {
		free(out);
		return NULL;
	}
	(*p)++;
	while (**p && **p != '"') {
		char c = *(*p)++;

		if (c == '\\') {
			c = *(*p)++;
			switch (c) {
			case 'n': c = '\n'; break;
			case 't': c = '\t'; break;
			case 'r': c = '\r'; break;
			case 'b': c = '\b'; break;
			case 'f': c = '\f'; break;
			case 'u': {
				char hex[5] = { 0 };
				long v;

				if (strlen(*p) < 4) {
					free(out);
					return NULL;
				}
				memcpy(hex, *p, 4);
				*p += 4;
				v = strtol(hex, NULL, 16);
				c = v < 0x80 ? (char)v : '?';
				break;
			}
			case '\0':
				free(out);
				return NULL;
			default: break;	/* \" \\ \/ */
			}
		}
		if (len + 2 > cap) {
			char *n = realloc(out, cap *= 2);

			if (!n) {
				free(out);
				return NULL;
			}
			out = n;
		}
		out[len++] = c;
	}
	if (**p != '"') {
		free(out);
		return NULL;
	}
	(*p)++;
	out[len] = '\0';
	return out;
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

	skip_ws(&p);
	if (j && *p) {
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
