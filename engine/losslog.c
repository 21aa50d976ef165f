/* losslog: see losslog.h. */
#define _GNU_SOURCE
#include "losslog.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_COLS 128

/* Splits a CSV line in place (no quoted commas in these logs). */
static int split(char *line, char **cols)
{
	int n = 0;
	char *p = line;

	line[strcspn(line, "\r\n")] = '\0';
	while (n < MAX_COLS) {
		cols[n++] = p;
		p = strchr(p, ',');
		if (!p)
			break;
		*p++ = '\0';
	}
	for (int i = 0; i < n; i++) {
		char *c = cols[i], *end;

		while (isspace((unsigned char)*c) || *c == '"')
			c++;
		end = c + strlen(c);
		while (end > c && (isspace((unsigned char)end[-1]) || end[-1] == '"'))
			*--end = '\0';
		cols[i] = c;
	}
	return n;
}

static int is_number(const char *s, double *v)
{
	char *end;

	if (!*s)
		return 0;
	*v = strtod(s, &end);
	return *end == '\0' && isfinite(*v);
}

static int find_column(char **cols, int n, const char *const *names)
{
	for (int k = 0; names[k]; k++)
		for (int i = 0; i < n; i++)
			if (!strcasecmp(cols[i], names[k]))
				return i;
	return -1;
}

/* Parses an open stream; path names it in messages.  Closes f. */
/*
 * Reads the first line: a header names the iteration and loss columns
 * (*icol -1: the row number), or it is data (then f is rewound).
 * Returns 0 or -EINVAL with a message in err.
 */
static int parse_header(FILE *f, const char *path, struct vp_losslog *log,
			int *icol, int *lcol, char *err, size_t errlen)
{
	static const char *const iter_names[] = {
		"step", "iteration", "iter", "global_step", "it", "epoch", NULL,
	};
	static const char *const loss_names[] = {
		"loss", "train_loss", "train_loss_step", "training_loss",
		"train/loss", NULL,
	};
	char line[8192], *cols[MAX_COLS];
	double v;
	int n;

	*icol = 0;
	*lcol = 1;
	if (!fgets(line, sizeof(line), f)) {
		snprintf(err, errlen, "loss log '%s' is empty", path);
		return -EINVAL;
	}
	n = split(line, cols);
	if (n < 1 || is_number(cols[0], &v)) {
		strcpy(log->iter_column, "column 1");
		strcpy(log->loss_column, "column 2");
		if (n < 2) {
			snprintf(err, errlen, "loss log '%s': expected 'iteration,loss' lines", path);
			return -EINVAL;
		}
		rewind(f);	/* the first line is data */
		return 0;
	}
	*icol = find_column(cols, n, iter_names);
	*lcol = find_column(cols, n, loss_names);
	for (int i = 0; *lcol < 0 && i < n; i++)
		if (strcasestr(cols[i], "loss") && !strcasestr(cols[i], "val"))
			*lcol = i;
	if (*lcol < 0) {
		snprintf(err, errlen, "loss log '%s': no loss column in its header (looked for loss, train_loss, ...)",
			 path);
		return -EINVAL;
	}
	snprintf(log->iter_column, sizeof(log->iter_column), "%s",
		 *icol >= 0 ? cols[*icol] : "(row number)");
	snprintf(log->loss_column, sizeof(log->loss_column), "%s", cols[*lcol]);
	return 0;
}

/* Appends a row, growing the arrays of capacity *cap.  0 or -ENOMEM. */
static int append_row(struct vp_losslog *log, size_t *cap, double it, double loss)
{
	if (log->n == *cap) {
		size_t ncap = *cap ? *cap * 2 : 1024;
		double *a = realloc(log->iter, ncap * sizeof(double));
		double *b = a ? realloc(log->loss, ncap * sizeof(double)) : NULL;

		if (a)
			log->iter = a;
		if (!b)
			return -ENOMEM;
		log->loss = b;
		*cap = ncap;
	}
	log->iter[log->n] = it;
	log->loss[log->n] = loss;
	log->n++;
	return 0;
}

/* Parses f, which it closes.  Returns 0 or -errno with a message in err. */
static int parse_stream(FILE *f, const char *path, struct vp_losslog *log,
			char *err, size_t errlen)
{
	char line[8192], *cols[MAX_COLS];
	int icol, lcol, n;
	size_t cap = 0;
	int rc;

	memset(log, 0, sizeof(*log));
	rc = parse_header(f, path, log, &icol, &lcol, err, errlen);
	while (!rc && fgets(line, sizeof(line), f)) {
		double it, loss;

		n = split(line, cols);
		if (n <= lcol || !is_number(cols[lcol], &loss))
			continue;	/* e.g. a validation row */
		if (icol >= 0) {
			if (n <= icol || !is_number(cols[icol], &it))
				continue;
		} else {
			it = (double)log->n;
		}
		rc = append_row(log, &cap, it, loss);
		if (rc)
			snprintf(err, errlen, "out of memory");
	}
	fclose(f);
	if (!rc && log->n < 4) {
		snprintf(err, errlen, "loss log '%s': %zu usable rows; the fit needs at least 4",
			 path, log->n);
		rc = -EINVAL;
	}
	if (rc)
		vp_losslog_release(log);
	return rc;
}

int vp_losslog_read(const char *path, struct vp_losslog *log, char *err,
		    size_t errlen)
{
	FILE *f = fopen(path, "re");
	int rc;

	if (!f) {
		rc = -errno;
		memset(log, 0, sizeof(*log));
		snprintf(err, errlen, "loss log '%s': %s", path, strerror(-rc));
		return rc;
	}
	return parse_stream(f, path, log, err, errlen);
}

int vp_losslog_parse(const char *buf, size_t len, const char *name,
		     struct vp_losslog *log, char *err, size_t errlen)
{
	FILE *f = len ? fmemopen((void *)buf, len, "r") : NULL;

	memset(log, 0, sizeof(*log));
	if (!f) {
		snprintf(err, errlen, "loss log '%s' is empty", name);
		return -EINVAL;
	}
	return parse_stream(f, name, log, err, errlen);
}

void vp_losslog_release(struct vp_losslog *log)
{
	free(log->iter);
	free(log->loss);
	log->iter = log->loss = NULL;
	log->n = 0;
}
