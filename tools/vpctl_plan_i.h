/*
 * vpctl_plan_i.h: private to viperctl plan (tools/vpctl_plan.c): its chart,
 * drawn by gnuplot (tools/vpctl_plan_chart.c).
 */
#ifndef VPCTL_PLAN_I_H
#define VPCTL_PLAN_I_H

#include <stddef.h>

/* Points of one plotted series; borrowed; n may be 0 (not plotted). */
struct vpctl_series {
	const double *x;
	const double *y;
	size_t n;
	const char *title;	/* its line in the key */
};

/* What the chart shows; every pointer is borrowed. */
struct vpctl_chart {
	const char *path;		/* the PNG to write */
	const char *title;
	const char *ylabel;		/* the metric, in its own units */
	struct vpctl_series observed;	/* the warm-up points, fitted */
	struct vpctl_series later;	/* log rows after the warm-up, not fitted */
	struct vpctl_series curve;	/* the fitted curve, sampled */
	struct vpctl_series checkpoints;	/* the recommended schedule, on the curve */
	double warmup_end;		/* iteration: a dashed line there */
};

/* 1 if a gnuplot executable is on PATH, else 0. */
int vpctl_have_gnuplot(void);

/*
 * Writes c->path as a PNG by running gnuplot (the script on its stdin, the
 * points in data blocks; no temporary file).  Blocks until gnuplot exits.
 * Returns 0, or -1 with a message printed that names the file.
 */
int vpctl_plan_chart(const struct vpctl_chart *c);

#endif
