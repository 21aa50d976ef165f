/* sched: see sched.h. */
#define _GNU_SOURCE
#include "sched.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "lock.h"
#include "log.h"
#include "plan.h"

struct vp_sched {
	pthread_mutex_t lock;
	struct vp_config cfg;
	/* protected by lock: */
	double first_time;		/* first observation of the log */
	uint64_t first_iter;
	double t0;			/* when warm-up ended: inference starts */
	int have_t0;
	uint64_t last_fit_iter;
	uint64_t last_selected;		/* iteration of the version in service */
	uint64_t *plan;			/* absolute iterations */
	size_t nplan;
	struct vp_fit fit;
	double t_iter;
	double predicted_cil;
	int have_plan;
};

struct vp_sched *vp_sched_new(const struct vp_config *cfg, char *err,
			      size_t errlen)
{
	struct vp_sched *s;

	if (cfg->plan_t_infer <= 0 || cfg->plan_inferences == 0) {
		snprintf(err, errlen, "publish=schedule needs plan_t_infer=SECONDS and plan_inferences=M (the consumers' inference time and count)");
		return NULL;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&s->lock, NULL);
	s->cfg = *cfg;
	s->first_time = -1;
	return s;
}

void vp_sched_free(struct vp_sched *s)
{
	if (!s)
		return;
	free(s->plan);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

/* Fits and plans the rest of the run.  Called with s->lock held. */
static void replan_locked(struct vp_sched *s, const struct vp_losslog *log,
			  uint64_t iter, double now, double t_ckpt,
			  double t_load)
{
	struct vp_plan_input in = { 0 };
	struct vp_schedule sched;
	struct vp_fit fit;
	double elapsed = now - s->t0, *pl;
	uint64_t served;

	VP_ASSERT_LOCKED(&s->lock);
	if (vp_fit_best(log->iter, log->loss, log->n, &fit, NULL))
		return;
	served = (uint64_t)(elapsed / s->cfg.plan_t_infer);
	if (served >= s->cfg.plan_inferences) {
		vp_log(LOG_DEBUG, "plan", "not re-planned at iteration %llu: the %llu inferences are served",
		       (unsigned long long)iter, (unsigned long long)s->cfg.plan_inferences);
		return;		/* nothing to plan */
	}
	in.t_iter = s->t_iter;
	in.t_infer = s->cfg.plan_t_infer;
	in.t_ckpt = t_ckpt;
	in.t_load = t_load;
	in.inferences = s->cfg.plan_inferences - served;
	in.lambda = s->cfg.plan_lambda;
	in.horizon = (uint64_t)((double)in.inferences * in.t_infer / in.t_iter);
	if (in.horizon < 1)
		in.horizon = 1;
	if (in.horizon > 1000000)
		in.horizon = 1000000;
	pl = malloc((in.horizon + 1) * sizeof(*pl));
	if (!pl)
		return;
	pl[0] = fmax(0.0, vp_fit_eval(&fit, (double)s->last_selected));
	for (uint64_t c = 1; c <= in.horizon; c++)
		pl[c] = fmax(0.0, vp_fit_eval(&fit, (double)(iter + c)));
	if (vp_plan_optimal(&in, pl, &sched) == 0) {
		free(s->plan);
		s->plan = sched.iters;
		s->nplan = sched.n;
		for (size_t k = 0; k < s->nplan; k++)
			s->plan[k] += iter;
		s->predicted_cil = sched.cil;
		s->fit = fit;
		s->have_plan = 1;
		s->last_fit_iter = iter;
		vp_log(LOG_INFO, "plan",
		       "re-planned at iteration %llu: %zu checkpoints for the %llu inferences left, predicted CIL %.1f (fit %s, mse %.3g, t_iter %.4f s)",
		       (unsigned long long)iter, s->nplan,
		       (unsigned long long)in.inferences, sched.cil,
		       vp_fit_name(fit.family), fit.mse, s->t_iter);
	}
	free(pl);
}

void vp_sched_decide(struct vp_sched *s, const struct vp_losslog *log,
		     double now, double t_ckpt, double t_load,
		     struct vp_sched_decision *d)
{
	uint64_t iter = 0;

	memset(d, 0, sizeof(*d));
	d->selected = 1;
	if (!log || log->n == 0) {
		d->why = "no loss log yet";
		return;
	}
	for (size_t i = 0; i < log->n; i++)
		if (log->iter[i] > (double)iter)
			iter = (uint64_t)log->iter[i];
	d->iteration = iter;

	pthread_mutex_lock(&s->lock);
	if (s->first_time < 0) {
		s->first_time = now;
		s->first_iter = iter;
	} else if (iter > s->first_iter) {
		s->t_iter = (now - s->first_time) / (double)(iter - s->first_iter);
	}
	if (iter < s->cfg.plan_warmup || s->t_iter <= 0 || log->n < 4) {
		s->last_selected = iter;
		d->why = "warm-up";
		goto out_unlock;
	}
	if (!s->have_t0) {
		/* warm-up is over: this version is the one consumers start with */
		s->have_t0 = 1;
		s->t0 = now;
		s->last_selected = iter;
		replan_locked(s, log, iter, now, t_ckpt, t_load);
		d->replanned = s->have_plan;
		d->why = "end of warm-up";
		goto out_unlock;
	}
	d->selected = 0;
	d->why = "not a scheduled iteration";
	for (size_t k = 0; k < s->nplan; k++) {
		if (s->plan[k] > s->last_selected && s->plan[k] <= iter) {
			d->selected = 1;
			d->why = "scheduled";
			s->last_selected = iter;
			break;
		}
	}
	if (iter >= s->last_fit_iter + s->cfg.plan_refit) {
		replan_locked(s, log, iter, now, t_ckpt, t_load);
		d->replanned = 1;
	}
out_unlock:
	pthread_mutex_unlock(&s->lock);
}

/* The schedule as a new JSON object; NULL when memory ran out.  s->lock held. */
static json_t *schedule_locked(struct vp_sched *s)
{
	json_t *iters = json_array();
	char formula[256];

	VP_ASSERT_LOCKED(&s->lock);
	for (size_t k = 0; iters && k < s->nplan; k++) {
		if (json_array_append_new(iters, json_integer((json_int_t)s->plan[k]))) {
			json_decref(iters);
			iters = NULL;
		}
	}
	vp_fit_format(&s->fit, formula, sizeof(formula));
	/* a fit or a plan gone wrong (NaN, inf) comes out as null, never as bad JSON */
	return json_pack("{s:I,s:I,s:o,s:o,s:{s:s,s:s,s:o},s:o}",
			 "planned_at_iteration", (json_int_t)s->last_fit_iter,
			 "in_service_iteration", (json_int_t)s->last_selected,
			 "predicted_cil", vp_json_real(s->predicted_cil),
			 "t_iter", vp_json_real(s->t_iter),
			 "fit", "family", vp_fit_name(s->fit.family), "formula", formula,
			 "mse", vp_json_real(s->fit.mse),
			 "iterations", iters);
}

char *vp_sched_json(struct vp_sched *s)
{
	json_t *j = NULL;

	pthread_mutex_lock(&s->lock);
	if (s->have_plan)
		j = schedule_locked(s);
	pthread_mutex_unlock(&s->lock);
	return vp_json_line(j);
}
