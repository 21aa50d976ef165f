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

/* A number that is nan or inf (Keras writes "nan" once a loss diverges). */
static int is_nonfinite(const char *s)
{
	char *end;
	double v = strtod(s, &end);

	return *s && *end == '\0' && !isfinite(v);
}

static int find_column(char **cols, int n, const char *const *names)
{
	for (int k = 0; names[k]; k++)
		for (int i = 0; i < n; i++)
			if (!strcasecmp(cols[i], names[k]))
				return i;
	return -1;
}

/* "a, b, c": the header's names, for a message. */
static void list_columns(char **cols, int n, char *buf, size_t len)
{
	size_t used = 0;

	buf[0] = '\0';
	for (int i = 0; i < n && used < len; i++)
		used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? ", " : "", cols[i]);
}

/*
 * Reads the first line: a header names the iteration and value columns
 * (*icol -1: the row number), or it is data (then f is rewound).
 * Returns 0 or -EINVAL with a message in err.
 */
static int parse_header(FILE *f, const char *path, const struct vp_losslog_opts *opts,
			struct vp_losslog *log, int *icol, int *lcol, char *err,
			size_t errlen)
{
	static const char *const iter_names[] = {
		"step", "iteration", "iter", "global_step", "it", "epoch", NULL,
	};
	static const char *const loss_names[] = {
		"loss", "train_loss", "train_loss_step", "training_loss",
		"train/loss", NULL,
	};
	char line[8192], *cols[MAX_COLS], names[512];
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
		if (opts->column) {
			snprintf(err, errlen, "loss log '%s' has no header line, so it has no column '%s'",
				 path, opts->column);
			return -EINVAL;
		}
		if (n < 2) {
			snprintf(err, errlen, "loss log '%s': expected 'iteration,loss' lines", path);
			return -EINVAL;
		}
		rewind(f);	/* the first line is data */
		return 0;
	}
	list_columns(cols, n, names, sizeof(names));
	*icol = find_column(cols, n, iter_names);
	if (opts->column) {
		const char *const wanted[] = { opts->column, NULL };

		*lcol = find_column(cols, n, wanted);
		if (*lcol < 0) {
			snprintf(err, errlen, "loss log '%s': no column '%s' in its header (columns: %s)",
				 path, opts->column, names);
			return -EINVAL;
		}
		if (*lcol == *icol) {
			snprintf(err, errlen, "loss log '%s': column '%s' is the iteration column",
				 path, opts->column);
			return -EINVAL;
		}
	} else {
		*lcol = find_column(cols, n, loss_names);
		for (int i = 0; *lcol < 0 && i < n; i++)
			if (strcasestr(cols[i], "loss") && !strcasestr(cols[i], "val"))
				*lcol = i;
	}
	if (*lcol < 0) {
		snprintf(err, errlen, "loss log '%s': no loss column in its header (looked for loss, train_loss, ...; columns: %s)",
			 path, names);
		return -EINVAL;
	}
	snprintf(log->iter_column, sizeof(log->iter_column), "%s",
		 *icol >= 0 ? cols[*icol] : "(row number)");
	snprintf(log->loss_column, sizeof(log->loss_column), "%s", cols[*lcol]);
	log->per_epoch = *icol >= 0 && !strcasecmp(cols[*icol], "epoch");
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

/*
 * One cell of a data row: 1 with *v set, 0 to skip the row (empty, nan,
 * inf, or text where reading is not strict), -EINVAL with err set.
 */
static int read_cell(char **cols, int n, int col, const char *name, int strict,
		     const char *path, size_t lineno, double *v, char *err, size_t errlen)
{
	char *end;

	if (col >= n || !*cols[col])
		return 0;
	*v = strtod(cols[col], &end);
	if (*end == '\0' && end != cols[col])
		return isfinite(*v) ? 1 : 0;
	if (!strict)
		return 0;
	snprintf(err, errlen, "loss log '%s', line %zu, column %d ('%s'): '%s' is not a number",
		 path, lineno, col + 1, name, cols[col]);
	return -EINVAL;
}

/* Parses f, which it closes.  Returns 0 or -errno with a message in err. */
static int parse_stream(FILE *f, const char *path, const struct vp_losslog_opts *opts,
			struct vp_losslog *log, char *err, size_t errlen)
{
	static const struct vp_losslog_opts defaults;
	char line[8192], *cols[MAX_COLS];
	int icol, lcol, n;
	size_t cap = 0, lineno = 1;
	int rc;

	memset(log, 0, sizeof(*log));
	if (!opts)
		opts = &defaults;
	rc = parse_header(f, path, opts, log, &icol, &lcol, err, errlen);
	if (!rc && !strcmp(log->iter_column, "column 1"))
		lineno = 0;	/* no header: rewound, the first line is data */
	while (!rc && fgets(line, sizeof(line), f)) {
		/* a log being written may end in half a line */
		int strict = opts->strict && strchr(line, '\n');
		double it, loss;
		int got;

		lineno++;
		n = split(line, cols);
		got = read_cell(cols, n, lcol, log->loss_column, strict, path, lineno, &loss,
				err, errlen);
		if (got == 0 && lcol < n && is_nonfinite(cols[lcol]) && !log->nonfinite++)
			log->first_nonfinite_line = lineno;
		if (got <= 0) {
			rc = got;
			continue;	/* e.g. a validation row */
		}
		if (icol >= 0) {
			got = read_cell(cols, n, icol, log->iter_column, strict, path, lineno,
					&it, err, errlen);
			if (got <= 0) {
				rc = got;
				continue;
			}
		} else {
			it = (double)log->n;
		}
		rc = append_row(log, &cap, it, loss);
		if (rc)
			snprintf(err, errlen, "out of memory");
	}
	fclose(f);
	if (!rc && log->n < 4) {
		snprintf(err, errlen, "loss log '%s': %zu usable rows of '%s'; the fit needs at least 4",
			 path, log->n, log->loss_column);
		rc = -EINVAL;
	}
	if (rc)
		vp_losslog_release(log);
	return rc;
}

int vp_losslog_read_opts(const char *path, const struct vp_losslog_opts *opts,
			 struct vp_losslog *log, char *err, size_t errlen)
{
	FILE *f = fopen(path, "re");
	int rc;

	if (!f) {
		rc = -errno;
		memset(log, 0, sizeof(*log));
		snprintf(err, errlen, "loss log '%s': %s", path, strerror(-rc));
		return rc;
	}
	return parse_stream(f, path, opts, log, err, errlen);
}

int vp_losslog_read(const char *path, struct vp_losslog *log, char *err,
		    size_t errlen)
{
	return vp_losslog_read_opts(path, NULL, log, err, errlen);
}

int vp_losslog_parse(const char *buf, size_t len, const char *name,
		     struct vp_losslog *log, char *err, size_t errlen)
{
	return vp_losslog_parse_opts(buf, len, name, NULL, log, err, errlen);
}

int vp_losslog_parse_opts(const char *buf, size_t len, const char *name,
			  const struct vp_losslog_opts *opts,
			  struct vp_losslog *log, char *err, size_t errlen)
{
	FILE *f = len ? fmemopen((void *)buf, len, "r") : NULL;

	memset(log, 0, sizeof(*log));
	if (!f) {
		snprintf(err, errlen, "loss log '%s' is empty", name);
		return -EINVAL;
	}
	return parse_stream(f, name, opts, log, err, errlen);
}

void vp_losslog_release(struct vp_losslog *log)
{
	free(log->iter);
	free(log->loss);
	log->iter = log->loss = NULL;
	log->n = 0;
}
