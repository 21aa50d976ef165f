/* plan: see plan.h and docs/planner.md. */
#define _GNU_SOURCE
#include "plan.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Parent pointers of the DP are capped at this many entries (4 bytes each). */
#define DP_MAX_CELLS (16u << 20)

static const char *const family_names[] = {
	[VP_FIT_EXP] = "exp",
	[VP_FIT_EXP_OFFSET] = "exp+c",
	[VP_FIT_LINEAR] = "linear",
	[VP_FIT_SATURATING] = "saturating",
};

static const unsigned int family_nparams[] = { 2, 3, 2, 3 };

const char *vp_fit_name(enum vp_fit_family family)
{
	return family < VP_FIT_NFAMILIES ? family_names[family] : "?";
}

static double model(enum vp_fit_family f, const double *p, double x)
{
	switch (f) {
	case VP_FIT_EXP:
		return p[0] * exp(-p[1] * x);
	case VP_FIT_EXP_OFFSET:
		return p[0] * exp(-p[1] * x) + p[2];
	case VP_FIT_LINEAR:
		return p[0] * x + p[1];
	case VP_FIT_SATURATING:
		return p[2] - (p[2] - p[0]) * exp(-p[1] * x);
	default:
		return NAN;
	}
}

/* d model / d p[k] at x. */
static void gradient(enum vp_fit_family f, const double *p, double x, double *g)
{
	double e = exp(-p[1] * x);

	switch (f) {
	case VP_FIT_EXP:
		g[0] = e;
		g[1] = -p[0] * x * e;
		break;
	case VP_FIT_EXP_OFFSET:
		g[0] = e;
		g[1] = -p[0] * x * e;
		g[2] = 1;
		break;
	case VP_FIT_LINEAR:
		g[0] = x;
		g[1] = 1;
		break;
	case VP_FIT_SATURATING:
		g[0] = e;
		g[1] = (p[2] - p[0]) * x * e;
		g[2] = 1 - e;
		break;
	default:
		break;
	}
}

double vp_fit_eval(const struct vp_fit *fit, double x)
{
	return model(fit->family, fit->p, x);
}

void vp_fit_format(const struct vp_fit *fit, char *buf, size_t len)
{
	const double *p = fit->p;

	switch (fit->family) {
	case VP_FIT_EXP:
		snprintf(buf, len, "%.6g*exp(-%.6g*x)", p[0], p[1]);
		break;
	case VP_FIT_EXP_OFFSET:
		snprintf(buf, len, "%.6g*exp(-%.6g*x)%+.6g", p[0], p[1], p[2]);
		break;
	case VP_FIT_LINEAR:
		snprintf(buf, len, "%.6g*x%+.6g", p[0], p[1]);
		break;
	case VP_FIT_SATURATING:
		snprintf(buf, len, "%.6g-(%.6g-%.6g)*exp(-%.6g*x)", p[2], p[2],
			 p[0], p[1]);
		break;
	default:
		snprintf(buf, len, "?");
	}
}

static double sse(enum vp_fit_family f, const double *p, const double *u,
		  const double *y, size_t n)
{
	double s = 0;

	for (size_t i = 0; i < n; i++) {
		double r = model(f, p, u[i]) - y[i];

		s += r * r;
	}
	return isfinite(s) ? s : DBL_MAX;
}

/* Solves the m x m system a * x = b (m <= 3) by Gaussian elimination. */
static int solve(double a[3][3], double *b, unsigned int m)
{
	for (unsigned int c = 0; c < m; c++) {
		unsigned int piv = c;

		for (unsigned int r = c + 1; r < m; r++)
			if (fabs(a[r][c]) > fabs(a[piv][c]))
				piv = r;
		if (fabs(a[piv][c]) < 1e-300)
			return -1;
		if (piv != c) {
			for (unsigned int k = 0; k < m; k++) {
				double t = a[c][k];

				a[c][k] = a[piv][k];
				a[piv][k] = t;
			}
			double t = b[c];
			b[c] = b[piv];
			b[piv] = t;
		}
		for (unsigned int r = c + 1; r < m; r++) {
			double f = a[r][c] / a[c][c];

			for (unsigned int k = c; k < m; k++)
				a[r][k] -= f * a[c][k];
			b[r] -= f * b[c];
		}
	}
	for (int r = (int)m - 1; r >= 0; r--) {
		for (unsigned int k = (unsigned int)r + 1; k < m; k++)
			b[r] -= a[r][k] * b[k];
		b[r] /= a[r][r];
	}
	return 0;
}

/* Levenberg-Marquardt from p; returns the SSE reached. */
static double levmar(enum vp_fit_family f, double *p, const double *u,
		     const double *y, size_t n)
{
	unsigned int m = family_nparams[f];
	double lambda = 1e-3, cur = sse(f, p, u, y, n);

	for (int iter = 0; iter < 500 && lambda < 1e12; iter++) {
		double jtj[3][3] = { { 0 } }, jtr[3] = { 0 }, a[3][3], delta[3];
		double trial[3], next;

		for (size_t i = 0; i < n; i++) {
			double g[3] = { 0 }, r = model(f, p, u[i]) - y[i];

			gradient(f, p, u[i], g);
			for (unsigned int j = 0; j < m; j++) {
				jtr[j] += g[j] * r;
				for (unsigned int k = 0; k < m; k++)
					jtj[j][k] += g[j] * g[k];
			}
		}
		for (;;) {
			memcpy(a, jtj, sizeof(a));
			for (unsigned int j = 0; j < m; j++) {
				a[j][j] += lambda * (jtj[j][j] > 0 ? jtj[j][j] : 1e-12);
				delta[j] = -jtr[j];
			}
			if (solve(a, delta, m)) {
				lambda *= 10;
				if (lambda >= 1e12)
					return cur;
				continue;
			}
			for (unsigned int j = 0; j < m; j++)
				trial[j] = p[j] + delta[j];
			next = sse(f, trial, u, y, n);
			if (next < cur) {
				double gain = cur - next;

				memcpy(p, trial, m * sizeof(double));
				cur = next;
				lambda = lambda / 10 > 1e-12 ? lambda / 10 : 1e-12;
				if (gain <= 1e-15 * (cur + 1e-300))
					return cur;
				break;
			}
			lambda *= 10;
			if (lambda >= 1e12)
				return cur;
		}
	}
	return cur;
}

/* Least squares of a straight line through (u, y) into best; its SSE. */
static double fit_linear(const double *u, const double *y, size_t n, double *best)
{
	double su = 0, sy = 0, suu = 0, suy = 0, d;

	for (size_t i = 0; i < n; i++) {
		su += u[i];
		sy += y[i];
		suu += u[i] * u[i];
		suy += u[i] * y[i];
	}
	d = (double)n * suu - su * su;
	if (fabs(d) <= 1e-300)
		return DBL_MAX;
	best[0] = ((double)n * suy - su * sy) / d;
	best[1] = (sy - best[0] * su) / (double)n;
	return sse(VP_FIT_LINEAR, best, u, y, n);
}

/*
 * A curved family, by Levenberg-Marquardt from several starting points,
 * into best; the least SSE found, or DBL_MAX.
 */
static double fit_curve(enum vp_fit_family family, const double *u, const double *y,
			size_t n, double *best)
{
	static const double b_starts[] = { 0.3, 1, 3, 10, 30 };
	double ymin = DBL_MAX, ymax = -DBL_MAX, best_sse = DBL_MAX;

	for (size_t i = 0; i < n; i++) {
		if (y[i] < ymin)
			ymin = y[i];
		if (y[i] > ymax)
			ymax = y[i];
	}
	for (size_t s = 0; s < sizeof(b_starts) / sizeof(b_starts[0]); s++) {
		for (int variant = 0; variant < 2; variant++) {
			double p[3], e;

			p[1] = b_starts[s];
			if (family == VP_FIT_EXP) {
				p[0] = y[0] * exp(p[1] * u[0]);
			} else if (family == VP_FIT_EXP_OFFSET) {
				p[2] = variant ? y[n - 1] : ymin - 0.1 * (ymax - ymin);
				p[0] = (y[0] - p[2]) * exp(p[1] * u[0]);
			} else {
				p[2] = variant ? y[n - 1] : ymin - 0.1 * (ymax - ymin);
				p[0] = y[0];
			}
			e = levmar(family, p, u, y, n);
			/*
			 * A loss curve decays: b <= 0 fits a warm-up that
			 * bends down (a plateau, then a drop) but extrapolates
			 * to -infinity, so it is no prediction.
			 */
			if (p[1] <= 0)
				continue;
			if (e < best_sse) {
				best_sse = e;
				memcpy(best, p, sizeof(p));
			}
		}
	}
	return best_sse;
}

int vp_fit_family(const double *x, const double *y, size_t n,
		  enum vp_fit_family family, struct vp_fit *out)
{
	double xs = 0, *u, best_sse, best[3] = { 0 };
	int rc = -EINVAL;

	memset(out, 0, sizeof(*out));
	out->family = family;
	if (family >= VP_FIT_NFAMILIES)
		return -EINVAL;
	if (n < family_nparams[family] + 1)
		return -EINVAL;
	u = malloc(n * sizeof(*u));
	if (!u)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		if (fabs(x[i]) > xs)
			xs = fabs(x[i]);
	if (xs == 0)
		xs = 1;
	/* fit on x / xs, so that b is of order one whatever the iteration count */
	for (size_t i = 0; i < n; i++)
		u[i] = x[i] / xs;
	if (family == VP_FIT_LINEAR)
		best_sse = fit_linear(u, y, n, best);
	else
		best_sse = fit_curve(family, u, y, n, best);
	if (best_sse < DBL_MAX) {
		/* back to iteration units */
		if (family == VP_FIT_LINEAR)
			best[0] /= xs;
		else
			best[1] /= xs;
		memcpy(out->p, best, sizeof(best));
		out->mse = sse(family, out->p, x, y, n) / (double)n;
		out->ok = isfinite(out->mse);
		rc = out->ok ? 0 : -EINVAL;
	}
	free(u);
	return rc;
}

int vp_fit_best(const double *x, const double *y, size_t n,
		struct vp_fit *best, struct vp_fit all[VP_FIT_NFAMILIES])
{
	int found = 0;

	for (int f = 0; f < VP_FIT_NFAMILIES; f++) {
		struct vp_fit fit;

		vp_fit_family(x, y, n, (enum vp_fit_family)f, &fit);
		if (all)
			all[f] = fit;
		if (fit.ok && (!found || fit.mse < best->mse)) {
			*best = fit;
			found = 1;
		}
	}
	return found ? 0 : -EINVAL;
}

/* ---- the CIL model --------------------------------------------------- */

uint64_t vp_plan_served_before(const struct vp_plan_input *in, double t)
{
	double n;

	if (t <= 0)
		return 0;
	n = ceil(t / in->t_infer - 1e-9);
	return n >= (double)in->inferences ? in->inferences : (uint64_t)n;
}

double vp_plan_service_start(const struct vp_plan_input *in, uint64_t c,
			     uint64_t k)
{
	return (double)c * in->t_iter + (double)k * in->t_ckpt + in->t_load;
}

double vp_plan_cil(const struct vp_plan_input *in, const double *pl,
		   const uint64_t *iters, size_t n)
{
	double cil = 0, loss = pl[0];
	uint64_t served = 0;

	for (size_t k = 0; k < n; k++) {
		uint64_t until = vp_plan_served_before(in,
			vp_plan_service_start(in, iters[k], k + 1));

		if (until > served) {
			cil += loss * (double)(until - served);
			served = until;
		}
		loss = pl[iters[k]];
	}
	return cil + loss * (double)(in->inferences - served);
}

void vp_schedule_release(struct vp_schedule *s)
{
	free(s->iters);
	memset(s, 0, sizeof(*s));
}

static int schedule_set(const struct vp_plan_input *in, const double *pl,
			struct vp_schedule *out, const uint64_t *iters, size_t n)
{
	memset(out, 0, sizeof(*out));
	out->iters = malloc((n ? n : 1) * sizeof(*iters));
	if (!out->iters)
		return -ENOMEM;
	memcpy(out->iters, iters, n * sizeof(*iters));
	out->n = n;
	out->cil = vp_plan_cil(in, pl, iters, n);
	out->overhead = (double)n * in->t_ckpt;
	return 0;
}

static int check_input(const struct vp_plan_input *in)
{
	if (in->t_iter <= 0 || in->t_infer <= 0 || in->t_ckpt < 0 ||
	    in->t_load < 0 || in->inferences == 0 || in->lambda < 0)
		return -EINVAL;
	return 0;
}

int vp_plan_fixed(const struct vp_plan_input *in, const double *pl,
		  struct vp_schedule *out)
{
	uint64_t N = in->horizon, best_i = 0;
	double best = DBL_MAX;
	uint64_t *iters;
	size_t n = 0;
	int rc;

	if ((rc = check_input(in)))
		return rc;
	/* interval N + 1 stands for "never": no checkpoint at all */
	for (uint64_t i = 1; i <= N + 1; i++) {
		double cil = 0, loss = pl[0];
		uint64_t served = 0, k = 0;

		for (uint64_t c = i; c <= N; c += i) {
			uint64_t until = vp_plan_served_before(in,
				vp_plan_service_start(in, c, ++k));

			if (until > served) {
				cil += loss * (double)(until - served);
				served = until;
			}
			loss = pl[c];
			if (served == in->inferences)
				break;
		}
		cil += loss * (double)(in->inferences - served);
		if (cil < best) {
			best = cil;
			best_i = i;
		}
	}
	iters = malloc((N / best_i + 1) * sizeof(*iters));
	if (!iters)
		return -ENOMEM;
	for (uint64_t c = best_i; c <= N; c += best_i)
		iters[n++] = c;
	rc = schedule_set(in, pl, out, iters, n);
	free(iters);
	return rc;
}

double vp_plan_greedy_threshold(const double *y, size_t n)
{
	double mean = 0, var = 0;

	if (n < 2)
		return 0;
	for (size_t i = 1; i < n; i++)
		mean += fabs(y[i] - y[i - 1]);
	mean /= (double)(n - 1);
	for (size_t i = 1; i < n; i++) {
		double d = fabs(y[i] - y[i - 1]) - mean;

		var += d * d;
	}
	return mean + sqrt(var / (double)(n - 1));
}

int vp_plan_greedy(const struct vp_plan_input *in, const double *pl,
		   double threshold, struct vp_schedule *out)
{
	uint64_t *iters = malloc((in->horizon + 1) * sizeof(*iters));
	double last = pl[0];
	size_t n = 0;
	int rc;

	if (!iters)
		return -ENOMEM;
	if ((rc = check_input(in))) {
		free(iters);
		return rc;
	}
	for (uint64_t c = 1; c <= in->horizon; c++) {
		if (last - pl[c] > threshold) {
			iters[n++] = c;
			last = pl[c];
		}
	}
	rc = schedule_set(in, pl, out, iters, n);
	free(iters);
	return rc;
}

int vp_plan_epoch(const struct vp_plan_input *in, const double *pl,
		  uint64_t warmup_end, uint64_t epoch_iters,
		  struct vp_schedule *out)
{
	uint64_t *iters;
	size_t n = 0;
	int rc;

	if ((rc = check_input(in)))
		return rc;
	if (epoch_iters == 0)
		return -EINVAL;
	iters = malloc((in->horizon / epoch_iters + 2) * sizeof(*iters));
	if (!iters)
		return -ENOMEM;
	for (uint64_t e = warmup_end / epoch_iters + 1;
	     e * epoch_iters - warmup_end <= in->horizon; e++)
		iters[n++] = e * epoch_iters - warmup_end;
	rc = schedule_set(in, pl, out, iters, n);
	free(iters);
	return rc;
}

/* ---- the exact optimum: DP with a Li Chao tree ------------------------ */

/*
 * D_k(c): the least CIL of the inferences served before version k (taken
 * after iteration c) enters service.  With X = n(s_k(c)):
 *   D_k(c) = min_{c' < c} pl[c'] * X + (D_{k-1}(c') - pl[c'] * n(s_{k-1}(c')))
 * a minimum over lines in X, kept in a Li Chao tree over X in [0, M].
 */
struct lichao {
	double *a, *b;		/* line per node; a = NAN: empty */
	uint32_t *id;
	uint64_t size;		/* X domain [0, size) */
};

static void lc_reset(struct lichao *t)
{
	for (uint64_t i = 0; i < 4 * t->size; i++)
		t->a[i] = NAN;
}

static void lc_insert(struct lichao *t, double a, double b, uint32_t id)
{
	uint64_t node = 1, lo = 0, hi = t->size - 1;

	for (;;) {
		uint64_t mid = lo + (hi - lo) / 2;
		int left_better, mid_better;

		if (isnan(t->a[node])) {
			t->a[node] = a;
			t->b[node] = b;
			t->id[node] = id;
			return;
		}
		left_better = a * (double)lo + b < t->a[node] * (double)lo + t->b[node];
		mid_better = a * (double)mid + b < t->a[node] * (double)mid + t->b[node];
		if (mid_better) {
			double ta = t->a[node], tb = t->b[node];
			uint32_t tid = t->id[node];

			t->a[node] = a;
			t->b[node] = b;
			t->id[node] = id;
			a = ta;
			b = tb;
			id = tid;
		}
		if (lo == hi)
			return;
		if (left_better != mid_better) {
			node = 2 * node;
			hi = mid;
		} else {
			node = 2 * node + 1;
			lo = mid + 1;
		}
	}
}

static double lc_query(const struct lichao *t, uint64_t x, uint32_t *id)
{
	uint64_t node = 1, lo = 0, hi = t->size - 1;
	double best = DBL_MAX;

	while (node < 4 * t->size && !isnan(t->a[node])) {
		uint64_t mid = lo + (hi - lo) / 2;
		double v = t->a[node] * (double)x + t->b[node];

		if (v < best) {
			best = v;
			*id = t->id[node];
		}
		if (lo == hi)
			break;
		if (x <= mid) {
			node = 2 * node;
			hi = mid;
		} else {
			node = 2 * node + 1;
			lo = mid + 1;
		}
	}
	return best;
}

/* The DP's tables and the best schedule found so far. */
struct dp {
	uint64_t N, M, K;
	double *prev, *cur;	/* D_{k-1}(c) and D_k(c), c in [0, N]; DBL_MAX: none */
	uint32_t *parent;	/* [(k - 1) * (N + 1) + c]: the c' that D_k(c) came from */
	struct lichao lc;
	double best;
	uint64_t best_k, best_c;
};

static void dp_release(struct dp *dp)
{
	free(dp->prev);
	free(dp->cur);
	free(dp->parent);
	free(dp->lc.a);
	free(dp->lc.b);
	free(dp->lc.id);
}

/* Sizes and allocates the tables.  Returns 0, -E2BIG or -ENOMEM. */
static int dp_init(struct dp *dp, const struct vp_plan_input *in)
{
	uint64_t N = in->horizon, K;

	memset(dp, 0, sizeof(*dp));
	if (N >= UINT32_MAX)
		return -E2BIG;
	K = in->max_ckpts ? in->max_ckpts : N;
	if (K > N)
		K = N;
	if (N && K > DP_MAX_CELLS / N)
		K = DP_MAX_CELLS / N;	/* memory bound on parent pointers */
	dp->N = N;
	dp->M = in->inferences;
	dp->K = K;
	dp->prev = malloc((N + 1) * sizeof(*dp->prev));
	dp->cur = malloc((N + 1) * sizeof(*dp->cur));
	dp->parent = malloc((K * (N + 1) + 1) * sizeof(*dp->parent));
	dp->lc.size = dp->M + 1;
	dp->lc.a = malloc(4 * dp->lc.size * sizeof(double));
	dp->lc.b = malloc(4 * dp->lc.size * sizeof(double));
	dp->lc.id = malloc(4 * dp->lc.size * sizeof(uint32_t));
	if (!dp->prev || !dp->cur || !dp->parent || !dp->lc.a || !dp->lc.b || !dp->lc.id) {
		dp_release(dp);
		return -ENOMEM;
	}
	return 0;
}

/*
 * Fills D_k from D_{k-1}, and keeps the best schedule that ends with
 * checkpoint k.  Returns 0 if no D_k(c) is finite (no more layers).
 */
static int dp_layer(struct dp *dp, const struct vp_plan_input *in, const double *pl,
		    uint64_t k)
{
	uint64_t N = dp->N, next_line = k - 1;	/* c' of layer k-1 not yet inserted */
	int any = 0;

	lc_reset(&dp->lc);
	for (uint64_t c = 0; c <= N; c++)
		dp->cur[c] = DBL_MAX;
	for (uint64_t c = k; c <= N; c++) {
		uint64_t x;
		uint32_t arg = 0;
		double d, total;

		/* lines of every c' < c from layer k - 1 */
		for (; next_line < c; next_line++) {
			uint64_t c2 = next_line, x2;

			if (dp->prev[c2] == DBL_MAX)
				continue;
			x2 = c2 == 0 && k == 1 ? 0 : vp_plan_served_before(in,
				vp_plan_service_start(in, c2, k - 1));
			lc_insert(&dp->lc, pl[c2], dp->prev[c2] - pl[c2] * (double)x2,
				  (uint32_t)c2);
		}
		x = vp_plan_served_before(in, vp_plan_service_start(in, c, k));
		d = lc_query(&dp->lc, x, &arg);
		if (d == DBL_MAX)
			continue;
		dp->cur[c] = d;
		dp->parent[(k - 1) * (N + 1) + c] = arg;
		any = 1;
		total = d + pl[c] * (double)(dp->M - x) + in->lambda * (double)k * in->t_ckpt;
		if (total < dp->best - 1e-12 * fabs(dp->best)) {
			dp->best = total;
			dp->best_k = k;
			dp->best_c = c;
		}
	}
	return any;
}

int vp_plan_optimal(const struct vp_plan_input *in, const double *pl,
		    struct vp_schedule *out)
{
	uint64_t *iters = NULL;
	struct dp dp;
	int rc;

	if ((rc = check_input(in)))
		return rc;
	if ((rc = dp_init(&dp, in)))
		return rc;
	/* K = 0: the warm-up model serves everything */
	dp.best = pl[0] * (double)dp.M;
	/* layer 0: only the warm-up model, "checkpoint" 0 in service from 0 */
	for (uint64_t c = 0; c <= dp.N; c++)
		dp.prev[c] = c == 0 ? 0 : DBL_MAX;
	for (uint64_t k = 1; k <= dp.K && dp_layer(&dp, in, pl, k); k++) {
		double *t = dp.prev;

		dp.prev = dp.cur;
		dp.cur = t;
	}
	iters = malloc((dp.best_k ? dp.best_k : 1) * sizeof(*iters));
	if (!iters) {
		rc = -ENOMEM;
		goto out_release;
	}
	for (uint64_t k = dp.best_k, c = dp.best_c; k >= 1; k--) {
		iters[k - 1] = c;
		c = dp.parent[(k - 1) * (dp.N + 1) + c];
	}
	rc = schedule_set(in, pl, out, iters, dp.best_k);
	out->max_ckpts = dp.K;
	out->bound_hit = dp.best_k == dp.K && dp.K < dp.N;
	free(iters);
out_release:
	dp_release(&dp);
	return rc;
}
