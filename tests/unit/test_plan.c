/* Unit tests: loss fits, the CIL model, and the four schedules. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../engine/plan.h"

#define N_POINTS 400

static void sample(enum vp_fit_family f, const double *p, double *x, double *y,
		   size_t n, double noise, unsigned int seed)
{
	struct vp_fit fit = { .family = f };

	memcpy(fit.p, p, sizeof(fit.p));
	srand(seed);
	for (size_t i = 0; i < n; i++) {
		x[i] = (double)(i + 1) * 25;	/* iterations 25 .. 10000 */
		y[i] = vp_fit_eval(&fit, x[i]) +
		       noise * ((double)rand() / RAND_MAX - 0.5);
	}
}

static void check_recovery(enum vp_fit_family f, const double *p)
{
	double x[N_POINTS], y[N_POINTS];
	struct vp_fit fit;
	unsigned int np = f == VP_FIT_EXP || f == VP_FIT_LINEAR ? 2 : 3;

	sample(f, p, x, y, N_POINTS, 0, 1);
	assert_int_equal(vp_fit_family(x, y, N_POINTS, f, &fit), 0);
	for (unsigned int i = 0; i < np; i++)
		if (fabs(fit.p[i] - p[i]) > 1e-6 * fabs(p[i]) + 1e-9)
			fail_msg("%s p[%u] = %.10g, want %.10g", vp_fit_name(f), i,
				 fit.p[i], p[i]);
	assert_true(fit.mse < 1e-12);
}

static void test_fits_recover_parameters(void **state)
{
	(void)state;
	check_recovery(VP_FIT_EXP, (double[]){ 2.5, 3e-4, 0 });
	check_recovery(VP_FIT_EXP_OFFSET, (double[]){ 1.8, 5e-4, 0.35 });
	check_recovery(VP_FIT_LINEAR, (double[]){ -1e-4, 2.0, 0 });
	check_recovery(VP_FIT_SATURATING, (double[]){ 2.2, 4e-4, 0.4 });
}

static void test_best_family_is_chosen_with_noise(void **state)
{
	double x[N_POINTS], y[N_POINTS];
	struct vp_fit best, all[VP_FIT_NFAMILIES];

	(void)state;
	sample(VP_FIT_EXP_OFFSET, (double[]){ 1.8, 5e-4, 0.35 }, x, y, N_POINTS, 0.02, 7);
	assert_int_equal(vp_fit_best(x, y, N_POINTS, &best, all), 0);
	/* exp+c and saturating are the same family written two ways */
	assert_true(best.family == VP_FIT_EXP_OFFSET || best.family == VP_FIT_SATURATING);
	assert_true(all[VP_FIT_LINEAR].mse > best.mse * 2);
	assert_true(all[VP_FIT_EXP].mse > best.mse);
	assert_true(fabs(vp_fit_eval(&best, 10000) - (1.8 * exp(-5) + 0.35)) < 0.01);
	/* a straight line is fitted best by the line */
	sample(VP_FIT_LINEAR, (double[]){ -5e-5, 1.0, 0 }, x, y, N_POINTS, 0.01, 3);
	assert_int_equal(vp_fit_best(x, y, N_POINTS, &best, NULL), 0);
	assert_true(best.mse < 1e-4);
	/* too few points */
	assert_int_equal(vp_fit_family(x, y, 2, VP_FIT_EXP_OFFSET, &best), -EINVAL);
}

/* The hand-worked case of docs/planner.md. */
static const double hand_pl[] = { 5, 4, 3, 2, 1, 0.5, 0.2 };

static struct vp_plan_input hand_input(double t_ckpt)
{
	struct vp_plan_input in = {
		.t_iter = 1, .t_infer = 1, .t_ckpt = t_ckpt, .t_load = 0,
		.inferences = 10, .horizon = 6,
	};
	return in;
}

static void test_cil_by_hand(void **state)
{
	struct vp_plan_input in = hand_input(0);

	(void)state;
	/* versions at 2 and 4 serve from t=2 and t=4: 2*5 + 2*3 + 6*1 */
	assert_true(fabs(vp_plan_cil(&in, hand_pl, (uint64_t[]){ 2, 4 }, 2) - 22) < 1e-9);
	assert_true(fabs(vp_plan_cil(&in, hand_pl, NULL, 0) - 50) < 1e-9);
	in.t_ckpt = 1;	/* stalls shift later versions: s = 3, 6, 9 */
	assert_true(fabs(vp_plan_cil(&in, hand_pl, (uint64_t[]){ 2, 4, 6 }, 3) - 27.2) < 1e-9);
	in.t_load = 2;	/* s = 5, 8, 11 -> the third serves nobody */
	assert_true(fabs(vp_plan_cil(&in, hand_pl, (uint64_t[]){ 2, 4, 6 }, 3) - 25 - 9 - 2) < 1e-9);
	assert_int_equal(vp_plan_served_before(&in, 0), 0);
	assert_int_equal(vp_plan_served_before(&in, 0.5), 1);
	assert_int_equal(vp_plan_served_before(&in, 3), 3);
	assert_int_equal(vp_plan_served_before(&in, 1e9), 10);
}

static void test_fixed_greedy_epoch_by_hand(void **state)
{
	struct vp_plan_input in = hand_input(1);
	struct vp_schedule s;

	(void)state;
	/* intervals 1..6 give 30, 27.2, 28.4, 30, 32, 35.6: interval 2 wins */
	assert_int_equal(vp_plan_fixed(&in, hand_pl, &s), 0);
	assert_int_equal(s.n, 3);
	assert_int_equal(s.iters[0], 2);
	assert_int_equal(s.iters[2], 6);
	assert_true(fabs(s.cil - 27.2) < 1e-9);
	assert_true(fabs(s.overhead - 3) < 1e-9);
	vp_schedule_release(&s);

	/* drop since the last checkpoint > 1.5: at 2 (5->3), 4 (3->1); never after */
	assert_int_equal(vp_plan_greedy(&in, hand_pl, 1.5, &s), 0);
	assert_int_equal(s.n, 2);
	assert_int_equal(s.iters[0], 2);
	assert_int_equal(s.iters[1], 4);
	assert_true(fabs(s.cil - (15 + 9 + 4)) < 1e-9);	/* s = 3, 6 */
	vp_schedule_release(&s);

	/* epochs of 4 iterations, warm-up ended at iteration 6: ends at 8, 12 -> 2, 6 */
	assert_int_equal(vp_plan_epoch(&in, hand_pl, 6, 4, &s), 0);
	assert_int_equal(s.n, 2);
	assert_int_equal(s.iters[0], 2);
	assert_int_equal(s.iters[1], 6);
	vp_schedule_release(&s);

	{
		double y[] = { 1.0, 0.8, 0.7, 0.65, 0.6 };	/* diffs .2 .1 .05 .05 */
		double t = vp_plan_greedy_threshold(y, 5);
		double mean = 0.1, sd = sqrt((0.01 + 0 + 0.0025 + 0.0025) / 4);

		assert_true(fabs(t - (mean + sd)) < 1e-12);
	}
}

/* The least CIL + lambda * overhead over every subset of 1..N. */
static double brute_force(const struct vp_plan_input *in, const double *pl,
			  size_t *best_n)
{
	uint64_t iters[20];
	double best = INFINITY;

	for (unsigned long mask = 0; mask < (1ul << in->horizon); mask++) {
		size_t n = 0;
		double v;

		for (uint64_t c = 1; c <= in->horizon; c++)
			if (mask & (1ul << (c - 1)))
				iters[n++] = c;
		v = vp_plan_cil(in, pl, iters, n) + in->lambda * (double)n * in->t_ckpt;
		if (v < best) {
			best = v;
			*best_n = n;
		}
	}
	return best;
}

static void test_optimal_matches_brute_force(void **state)
{
	struct vp_plan_input in = hand_input(1);
	struct vp_schedule s;
	size_t n;

	(void)state;
	assert_int_equal(vp_plan_optimal(&in, hand_pl, &s), 0);
	assert_true(fabs(s.cil - brute_force(&in, hand_pl, &n)) < 1e-9);
	assert_true(s.cil <= 27.0 + 1e-9);	/* beats fixed's 27.2, e.g. {2,4,5} */
	vp_schedule_release(&s);

	/* random curves and timings, lambda on and off */
	srand(11);
	for (int trial = 0; trial < 60; trial++) {
		double pl[13];
		double v;

		in.horizon = 4 + (uint64_t)(rand() % 9);
		in.inferences = 5 + (uint64_t)(rand() % 40);
		in.t_iter = 0.5 + (double)(rand() % 4);
		in.t_infer = 0.25 + (double)(rand() % 3);
		in.t_ckpt = (double)(rand() % 4) * 0.5;
		in.t_load = (double)(rand() % 3);
		in.lambda = trial % 2 ? (double)(rand() % 5) : 0;
		in.max_ckpts = 0;
		pl[0] = 3;
		for (uint64_t c = 1; c <= in.horizon; c++)
			pl[c] = pl[c - 1] * (0.6 + 0.5 * (double)rand() / RAND_MAX);
		assert_int_equal(vp_plan_optimal(&in, pl, &s), 0);
		v = brute_force(&in, pl, &n);
		if (fabs(s.cil + in.lambda * s.overhead - v) > 1e-9)
			fail_msg("trial %d: dp %.6f, brute force %.6f", trial,
				 s.cil + in.lambda * s.overhead, v);
		vp_schedule_release(&s);
	}
}

static void test_optimal_beats_heuristics_on_fitted_curves(void **state)
{
	static const double params[][3] = {
		{ 2.5, 3e-4, 0 }, { 1.8, 5e-4, 0.35 }, { 2.2, 1e-3, 0.4 }, { 1.0, 2e-4, 0.1 },
	};
	static const enum vp_fit_family fams[] = {
		VP_FIT_EXP, VP_FIT_EXP_OFFSET, VP_FIT_SATURATING, VP_FIT_EXP_OFFSET,
	};

	(void)state;
	for (size_t t = 0; t < 4; t++) {
		double x[N_POINTS], y[N_POINTS], *pl;
		struct vp_fit fit;
		struct vp_plan_input in = {
			.t_iter = 0.05, .t_infer = 0.02, .t_ckpt = 0.5, .t_load = 0.3,
			.inferences = 25000, .horizon = 10000,
		};
		struct vp_schedule fixed, greedy, epoch, opt;

		sample(fams[t], params[t], x, y, N_POINTS, 0.05, (unsigned int)t);
		assert_int_equal(vp_fit_best(x, y, N_POINTS, &fit, NULL), 0);
		pl = malloc((in.horizon + 1) * sizeof(*pl));
		for (uint64_t c = 0; c <= in.horizon; c++)
			pl[c] = vp_fit_eval(&fit, x[N_POINTS - 1] + (double)c);
		assert_int_equal(vp_plan_fixed(&in, pl, &fixed), 0);
		assert_int_equal(vp_plan_greedy(&in, pl, vp_plan_greedy_threshold(y, N_POINTS) / 10, &greedy), 0);
		assert_int_equal(vp_plan_epoch(&in, pl, 10000, 1000, &epoch), 0);
		in.max_ckpts = 150;
		assert_int_equal(vp_plan_optimal(&in, pl, &opt), 0);
		assert_true(opt.cil <= fixed.cil + 1e-6);
		assert_true(opt.cil <= greedy.cil + 1e-6 || greedy.n > 150);
		assert_true(opt.cil <= epoch.cil + 1e-6);
		vp_schedule_release(&fixed);
		vp_schedule_release(&greedy);
		vp_schedule_release(&epoch);
		vp_schedule_release(&opt);
		free(pl);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fits_recover_parameters),
		cmocka_unit_test(test_best_family_is_chosen_with_noise),
		cmocka_unit_test(test_cil_by_hand),
		cmocka_unit_test(test_fixed_greedy_epoch_by_hand),
		cmocka_unit_test(test_optimal_matches_brute_force),
		cmocka_unit_test(test_optimal_beats_heuristics_on_fitted_curves),
	};
	return cmocka_run_group_tests_name("plan", tests, NULL, NULL);
}
