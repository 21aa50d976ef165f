/*
 * Unit tests: the publish=schedule policy (engine/sched.h) on synthetic
 * loss logs: every version during warm-up, a plan at its end, and then
 * exactly the versions the plan selects.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "../../engine/config.h"
#include "../../engine/log.h"
#include "../../engine/sched.h"

#define T_ITER 0.01		/* seconds per training iteration in these logs */
#define T_CKPT 0.1
#define T_LOAD 0.1

struct fixture {
	struct vp_sched *s;
	struct vp_losslog log;
	double iters[4096], losses[4096];
};

static void config(struct vp_config *cfg)
{
	vp_config_defaults(cfg);
	cfg->plan_warmup = 100;
	cfg->plan_refit = 100000;	/* one plan, at the end of warm-up */
	cfg->plan_t_infer = 1.0;
	cfg->plan_inferences = 20;
	vp_log_set_level(LOG_CRIT);
}

static int setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));
	struct vp_config cfg;
	char err[256];

	if (!fx)
		return -1;
	config(&cfg);
	fx->s = vp_sched_new(&cfg, err, sizeof(err));
	fx->log.iter = fx->iters;
	fx->log.loss = fx->losses;
	*state = fx;
	return fx->s ? 0 : -1;
}

static void open_gate(void);

static int teardown(void **state)
{
	struct fixture *fx = *state;

	open_gate();		/* a planner held by a failed test must not hold the free */
	vp_sched_free(fx->s);
	free(fx);
	return 0;
}

/* The log as the job has written it up to iteration last (one row per iteration). */
static const struct vp_losslog *log_up_to(struct fixture *fx, uint64_t last)
{
	assert_true(last < 4096);
	for (uint64_t i = 0; i <= last; i++) {
		fx->iters[i] = (double)i;
		fx->losses[i] = 2.0 * exp(-(double)i / 300.0) + 0.1;
	}
	fx->log.n = last + 1;
	return &fx->log;
}

/* Decides for a version committed at iteration iter, at the time the job reaches it. */
static struct vp_sched_decision decide_at(struct fixture *fx, uint64_t iter)
{
	struct vp_sched_decision d;

	vp_sched_decide(fx->s, log_up_to(fx, iter), (double)iter * T_ITER, T_CKPT, T_LOAD, &d);
	assert_int_equal(d.iteration, iter);
	assert_non_null(d.why);
	vp_sched_settle(fx->s);		/* the plan asked for is in place */
	return d;
}

/* The schedule's JSON, parsed (a new reference). */
static json_t *schedule_of(struct vp_sched *s)
{
	char *text = vp_sched_json(s);
	json_error_t jerr;
	json_t *j;

	assert_non_null(text);
	j = json_loads(text, 0, &jerr);
	if (!j)
		fail_msg("the schedule is not JSON (%s): %s", jerr.text, text);
	free(text);
	return j;
}

static void test_needs_the_consumer_options(void **state)
{
	struct vp_config cfg;
	char err[256] = "";

	(void)state;
	config(&cfg);
	cfg.plan_t_infer = 0;
	assert_null(vp_sched_new(&cfg, err, sizeof(err)));
	assert_non_null(strstr(err, "plan_t_infer"));
	config(&cfg);
	cfg.plan_inferences = 0;
	err[0] = '\0';
	assert_null(vp_sched_new(&cfg, err, sizeof(err)));
	assert_non_null(strstr(err, "plan_inferences"));
	vp_sched_free(NULL);
}

static void test_every_version_before_a_log(void **state)
{
	struct fixture *fx = *state;
	struct vp_sched_decision d;

	vp_sched_decide(fx->s, NULL, 0.0, T_CKPT, T_LOAD, &d);
	assert_true(d.selected);
	assert_string_equal(d.why, "no loss log yet");
	fx->log.n = 0;
	vp_sched_decide(fx->s, &fx->log, 0.0, T_CKPT, T_LOAD, &d);
	assert_true(d.selected);
	assert_null(vp_sched_json(fx->s));
}

static void test_every_version_during_warm_up(void **state)
{
	struct fixture *fx = *state;

	for (uint64_t iter = 10; iter < 100; iter += 10) {
		struct vp_sched_decision d = decide_at(fx, iter);

		assert_true(d.selected);
		assert_false(d.replanned);
		assert_string_equal(d.why, "warm-up");
	}
	assert_null(vp_sched_json(fx->s));	/* no plan yet */
}

static void test_plan_selects_its_iterations_only(void **state)
{
	struct fixture *fx = *state;
	struct vp_sched_decision d;
	json_t *j, *iters;
	uint64_t first, second;

	decide_at(fx, 50);		/* warm-up: t_iter is measured from here */
	d = decide_at(fx, 150);
	assert_true(d.selected);
	assert_true(d.replanned);
	assert_string_equal(d.why, "end of warm-up");

	j = schedule_of(fx->s);
	assert_int_equal(json_integer_value(json_object_get(j, "planned_at_iteration")), 150);
	assert_int_equal(json_integer_value(json_object_get(j, "in_service_iteration")), 150);
	assert_true(fabs(json_real_value(json_object_get(j, "t_iter")) - T_ITER) < 1e-6);
	iters = json_object_get(j, "iterations");
	assert_true(json_array_size(iters) >= 2);
	first = (uint64_t)json_integer_value(json_array_get(iters, 0));
	second = (uint64_t)json_integer_value(json_array_get(iters, 1));
	json_decref(j);
	assert_true(first > 150 && second > first);
	assert_true(second < 4096);

	if (first > 151) {
		d = decide_at(fx, first - 1);
		assert_false(d.selected);
		assert_string_equal(d.why, "not a scheduled iteration");
	}
	d = decide_at(fx, first);
	assert_true(d.selected);
	assert_string_equal(d.why, "scheduled");
	d = decide_at(fx, first);	/* another version at the same iteration */
	assert_false(d.selected);
	if (second > first + 1) {
		d = decide_at(fx, second - 1);
		assert_false(d.selected);
	}
	/* past a scheduled iteration: the next version is selected, and no other */
	d = decide_at(fx, second + 1 < 4096 ? second + 1 : second);
	assert_true(d.selected);
	j = schedule_of(fx->s);
	assert_true((uint64_t)json_integer_value(json_object_get(j, "in_service_iteration")) >= second);
	json_decref(j);
}

/* An on_plan callback that counts, and holds the planner until the test opens the gate. */
static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
static int gate_open, plans_done;

static void held_on_plan(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&gate_lock);
	plans_done++;
	pthread_cond_broadcast(&gate_cond);
	while (!gate_open)
		pthread_cond_wait(&gate_cond, &gate_lock);
	pthread_mutex_unlock(&gate_lock);
}

static void open_gate(void)
{
	pthread_mutex_lock(&gate_lock);
	gate_open = 1;
	pthread_cond_broadcast(&gate_cond);
	pthread_mutex_unlock(&gate_lock);
}

/* Waits up to 30 s for n plans in place; 0 if they came. */
static int wait_plans(int n)
{
	struct timespec ts;
	int rc = 0;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 30;
	pthread_mutex_lock(&gate_lock);
	while (plans_done < n && rc == 0)
		rc = pthread_cond_timedwait(&gate_cond, &gate_lock, &ts);
	rc = plans_done >= n ? 0 : -1;
	pthread_mutex_unlock(&gate_lock);
	return rc;
}

static int planned_at(struct vp_sched *s)
{
	json_t *j = schedule_of(s);
	int at = (int)json_integer_value(json_object_get(j, "planned_at_iteration"));

	json_decref(j);
	return at;
}

/*
 * A re-plan runs on the planner thread, not in the caller: with the
 * planner held, a decision that asks for one returns at once with the old
 * plan still in place; the new one arrives when the planner is let go.
 */
static void test_replans_off_the_callers_thread(void **state)
{
	struct fixture *fx = *state;
	struct vp_sched_decision d;
	struct vp_config cfg;
	char err[256];

	vp_sched_free(fx->s);
	config(&cfg);
	cfg.plan_refit = 100;
	fx->s = vp_sched_new(&cfg, err, sizeof(err));
	assert_non_null(fx->s);
	gate_open = 0;
	plans_done = 0;
	vp_sched_on_plan(fx->s, held_on_plan, NULL);

	decide_at(fx, 50);
	vp_sched_decide(fx->s, log_up_to(fx, 150), 150 * T_ITER, T_CKPT, T_LOAD, &d);
	assert_true(d.replanned);
	/* the first plan is in, and the planner is held (a design that plans in the caller has none) */
	if (wait_plans(1))
		fail_msg("no plan came through the on_plan callback within 30 s");
	assert_int_equal(planned_at(fx->s), 150);

	vp_sched_decide(fx->s, log_up_to(fx, 260), 260 * T_ITER, T_CKPT, T_LOAD, &d);
	assert_true(d.replanned);
	assert_int_equal(planned_at(fx->s), 150);	/* not planned by the caller */
	/* asked and not yet in place: a later version does not ask again */
	vp_sched_decide(fx->s, log_up_to(fx, 270), 270 * T_ITER, T_CKPT, T_LOAD, &d);
	assert_false(d.replanned);

	open_gate();
	vp_sched_settle(fx->s);
	assert_int_equal(planned_at(fx->s), 260);
	assert_int_equal(plans_done, 2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_needs_the_consumer_options),
		cmocka_unit_test_setup_teardown(test_every_version_before_a_log, setup, teardown),
		cmocka_unit_test_setup_teardown(test_every_version_during_warm_up, setup, teardown),
		cmocka_unit_test_setup_teardown(test_plan_selects_its_iterations_only, setup, teardown),
		cmocka_unit_test_setup_teardown(test_replans_off_the_callers_thread, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
