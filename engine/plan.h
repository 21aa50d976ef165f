/*
 * plan: the checkpoint-schedule planner (Viper's "inference performance
 * predictor", ICPP'24, and an exact optimum beyond it).
 *
 * MODEL (docs/planner.md has the derivation):
 *  - The warm-up loss curve is fitted with four families, by
 *    Levenberg-Marquardt; the family with the lowest MSE predicts the loss
 *    of the model after each later iteration: pl[c], c iterations after
 *    the warm-up (pl[0]: the warm-up model, in service at the start).
 *  - After warm-up, M inferences run, one every t_infer seconds; inference
 *    j happens at j * t_infer.  Training runs one iteration per t_iter; a
 *    checkpoint stalls the producer t_ckpt, so the k-th checkpoint, taken
 *    after iteration c_k, is complete at c_k * t_iter + k * t_ckpt.
 *  - Version k is in service from s_k = that time + t_load: the consumer
 *    loads every update (the first one included) while the producer goes
 *    on training, so loads cost service delay, never producer time.
 *    Inference j is charged the predicted loss of the newest version with
 *    s_k <= j * t_infer.  (Charging t_load to the first update only would
 *    let a later version enter service before the first; see
 *    docs/planner.md.)
 *  - CIL = the sum of those charges.  Producer overhead = K * t_ckpt.
 *
 * THREADING: pure functions; no global state.
 */
#ifndef VP_PLAN_H
#define VP_PLAN_H

#include <stddef.h>
#include <stdint.h>

enum vp_fit_family {
	VP_FIT_EXP,		/* a * exp(-b x) */
	VP_FIT_EXP_OFFSET,	/* a * exp(-b x) + c */
	VP_FIT_LINEAR,		/* a * x + b */
	VP_FIT_SATURATING,	/* c - (c - a) * exp(-b x) */
	VP_FIT_NFAMILIES
};

struct vp_fit {
	enum vp_fit_family family;
	double p[3];		/* a, b, c in the order of the formula's letters */
	double mse;
	int ok;			/* 0: the fit failed (too few points, no convergence) */
};

const char *vp_fit_name(enum vp_fit_family family);
/* The formula with its parameters, e.g. "2.5*exp(-0.003*x)+0.1". */
void vp_fit_format(const struct vp_fit *fit, char *buf, size_t len);
double vp_fit_eval(const struct vp_fit *fit, double x);

/*
 * Fits one family to n points (x[i], y[i]) by nonlinear least squares
 * (Levenberg-Marquardt from several starts).  The exponential families
 * must decay (b > 0): a growing exponential may fit a warm-up that bends
 * down, but predicts nothing.  Returns 0 or -EINVAL.
 */
int vp_fit_family(const double *x, const double *y, size_t n,
		  enum vp_fit_family family, struct vp_fit *out);

/*
 * Fits all families; *best gets the one with the lowest MSE, all[] (may be
 * NULL) every one.  Returns 0, or -EINVAL when none could be fitted.
 */
int vp_fit_best(const double *x, const double *y, size_t n,
		struct vp_fit *best, struct vp_fit all[VP_FIT_NFAMILIES]);

struct vp_plan_input {
	double t_iter;		/* seconds per training iteration */
	double t_infer;		/* seconds per inference */
	double t_ckpt;		/* producer stall per checkpoint */
	double t_load;		/* consumer load time of an update */
	uint64_t inferences;	/* M */
	uint64_t horizon;	/* N: candidate iterations 1..N after warm-up */
	double lambda;		/* optimal: minimise CIL + lambda * overhead */
	uint64_t max_ckpts;	/* optimal: at most this many checkpoints (0: auto) */
};

struct vp_schedule {
	uint64_t *iters;	/* checkpoint iterations, relative to warm-up, increasing */
	size_t n;
	double cil;		/* predicted */
	double overhead;	/* seconds of producer stall */
	uint64_t max_ckpts;	/* optimal only: the bound it searched under */
	int bound_hit;		/* optimal only: the best used all max_ckpts */
};

void vp_schedule_release(struct vp_schedule *s);

/* Number of inferences that happen before time t: j * t_infer < t. */
uint64_t vp_plan_served_before(const struct vp_plan_input *in, double t);

/* Time from which the k-th (1-based) checkpoint, after iteration c, serves. */
double vp_plan_service_start(const struct vp_plan_input *in, uint64_t c,
			     uint64_t k);

/*
 * Predicted CIL of the schedule iters[0..n) on the loss curve pl[0..N].
 * Iterations must be increasing and within 1..N.
 */
double vp_plan_cil(const struct vp_plan_input *in, const double *pl,
		   const uint64_t *iters, size_t n);

/*
 * The schedules.  Each fills *out (release it) and returns 0 or -errno.
 * pl has horizon + 1 entries.
 */
int vp_plan_fixed(const struct vp_plan_input *in, const double *pl,
		  struct vp_schedule *out);
/* Checkpoints when the predicted drop since the last one exceeds threshold. */
int vp_plan_greedy(const struct vp_plan_input *in, const double *pl,
		   double threshold, struct vp_schedule *out);
/* Checkpoints at epoch ends: absolute iterations k * epoch_iters > warmup_end. */
int vp_plan_epoch(const struct vp_plan_input *in, const double *pl,
		  uint64_t warmup_end, uint64_t epoch_iters,
		  struct vp_schedule *out);
/*
 * The exact minimum of CIL + lambda * overhead over all schedules with at
 * most max_ckpts checkpoints: dynamic programming over (checkpoint count,
 * last iteration) with a Li Chao tree, O(K * N * log M) time.
 */
int vp_plan_optimal(const struct vp_plan_input *in, const double *pl,
		    struct vp_schedule *out);

/* mean + standard deviation of |y[i+1] - y[i]|: the greedy threshold. */
double vp_plan_greedy_threshold(const double *y, size_t n);

#endif
