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

/* What one re-plan needs: a copy of the inputs, taken under the lock. */
struct plan_job {
	uint64_t iter;			/* where the job was */
	uint64_t last_selected;		/* the version in service then */
	double elapsed;			/* since inference started */
	double t_iter, t_ckpt, t_load;
	double *log_iter, *log_loss;	/* the loss log then (owned) */
	size_t n;
};

/* What a re-plan produced, installed under the lock. */
struct plan_result {
	uint64_t *plan;			/* absolute iterations (owned) */
	size_t nplan;
	struct vp_fit fit;
	double cil;
};

struct vp_sched {
	pthread_mutex_t lock;
	struct vp_config cfg;
	pthread_t thread;		/* the planner */
	int have_thread;
	void (*on_plan)(void *arg);	/* a new schedule is in place */
	void *on_plan_arg;
	/* protected by lock: */
	pthread_cond_t cond;		/* a job, a stop, or a job done */
	struct plan_job job;		/* the latest re-plan asked for */
	int job_pending;
	int planning;			/* the planner works on a job, unlocked */
	int stop;
	uint64_t asked_iter;		/* iteration of the last re-plan asked for */
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

static void *planner(void *arg);

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
	pthread_cond_init(&s->cond, NULL);
	s->cfg = *cfg;
	s->first_time = -1;
	if (pthread_create(&s->thread, NULL, planner, s)) {
		snprintf(err, errlen, "cannot start the planner thread");
		pthread_cond_destroy(&s->cond);
		pthread_mutex_destroy(&s->lock);
		free(s);
		return NULL;
	}
	s->have_thread = 1;
	return s;
}

void vp_sched_on_plan(struct vp_sched *s, void (*fn)(void *arg), void *arg)
{
	pthread_mutex_lock(&s->lock);
	s->on_plan = fn;
	s->on_plan_arg = arg;
	pthread_mutex_unlock(&s->lock);
}

void vp_sched_stop(struct vp_sched *s)
{
	if (!s || !s->have_thread)
		return;
	pthread_mutex_lock(&s->lock);
	s->stop = 1;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	pthread_join(s->thread, NULL);
	s->have_thread = 0;
}

void vp_sched_settle(struct vp_sched *s)
{
	pthread_mutex_lock(&s->lock);
	while ((s->job_pending || s->planning) && !s->stop)
		pthread_cond_wait(&s->cond, &s->lock);
	pthread_mutex_unlock(&s->lock);
}

void vp_sched_free(struct vp_sched *s)
{
	if (!s)
		return;
	vp_sched_stop(s);
	free(s->job.log_iter);
	free(s->job.log_loss);
	free(s->plan);
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

/*
 * Fits the job's loss log and plans the rest of the run.  No lock held: it
 * reads only the job and the options.  Returns 0 with *r filled, or -1
 * (no fit, nothing left to plan, no memory).
 */
static int plan(const struct vp_sched *s, const struct plan_job *job,
		struct plan_result *r)
{
	struct vp_plan_input in = { 0 };
	struct vp_schedule sched;
	double *pl;
	uint64_t served;
	int rc = -1;

	served = (uint64_t)(job->elapsed / s->cfg.plan_t_infer);
	if (served >= s->cfg.plan_inferences) {
		vp_log(LOG_DEBUG, "plan", "not re-planned at iteration %llu: the %llu inferences are served",
		       (unsigned long long)job->iter, (unsigned long long)s->cfg.plan_inferences);
		return -1;	/* nothing to plan (checked first: no fit for it) */
	}
	if (vp_fit_best(job->log_iter, job->log_loss, job->n, &r->fit, NULL))
		return -1;
	in.t_iter = job->t_iter;
	in.t_infer = s->cfg.plan_t_infer;
	in.t_ckpt = job->t_ckpt;
	in.t_load = job->t_load;
	in.inferences = s->cfg.plan_inferences - served;
	in.lambda = s->cfg.plan_lambda;
	in.horizon = (uint64_t)((double)in.inferences * in.t_infer / in.t_iter);
	if (in.horizon < 1)
		in.horizon = 1;
	if (in.horizon > 1000000)
		in.horizon = 1000000;
	pl = malloc((in.horizon + 1) * sizeof(*pl));
	if (!pl)
		return -1;
	pl[0] = fmax(0.0, vp_fit_eval(&r->fit, (double)job->last_selected));
	for (uint64_t c = 1; c <= in.horizon; c++)
		pl[c] = fmax(0.0, vp_fit_eval(&r->fit, (double)(job->iter + c)));
	if (vp_plan_optimal(&in, pl, &sched) == 0) {
		r->plan = sched.iters;
		r->nplan = sched.n;
		for (size_t k = 0; k < r->nplan; k++)
			r->plan[k] += job->iter;
		r->cil = sched.cil;
		vp_log(LOG_INFO, "plan",
		       "re-planned at iteration %llu: %zu checkpoints for the %llu inferences left, predicted CIL %.1f (fit %s, mse %.3g, t_iter %.4f s)",
		       (unsigned long long)job->iter, r->nplan,
		       (unsigned long long)in.inferences, sched.cil,
		       vp_fit_name(r->fit.family), r->fit.mse, job->t_iter);
		rc = 0;
	}
	free(pl);
	return rc;
}

/*
 * The planner thread: takes the latest job, plans it with no lock held (a
 * plan can take a second; the writer whose close() asked for it must not
 * wait), and installs the result.
 */
static void *planner(void *arg)
{
	struct vp_sched *s = arg;

	pthread_mutex_lock(&s->lock);
	for (;;) {
		struct plan_job job;
		struct plan_result r = { 0 };
		void (*fn)(void *) = NULL;
		void *fn_arg = NULL;
		int ok;

		while (!s->job_pending && !s->stop)
			pthread_cond_wait(&s->cond, &s->lock);
		if (s->stop)
			break;
		job = s->job;
		memset(&s->job, 0, sizeof(s->job));
		s->job_pending = 0;
		s->planning = 1;
		pthread_mutex_unlock(&s->lock);

		ok = plan(s, &job, &r) == 0;
		free(job.log_iter);
		free(job.log_loss);

		pthread_mutex_lock(&s->lock);
		if (ok) {	/* jobs come in order: this is the newest state planned */
			free(s->plan);
			s->plan = r.plan;
			s->nplan = r.nplan;
			s->predicted_cil = r.cil;
			s->fit = r.fit;
			s->have_plan = 1;
			s->last_fit_iter = job.iter;
			fn = s->on_plan;
			fn_arg = s->on_plan_arg;
		} else if (s->asked_iter == job.iter) {
			s->asked_iter = 0;	/* no plan: the next version asks again */
		}
		if (fn) {
			pthread_mutex_unlock(&s->lock);
			fn(fn_arg);	/* still "planning": settle waits for the file too */
			pthread_mutex_lock(&s->lock);
		}
		s->planning = 0;
		pthread_cond_broadcast(&s->cond);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

/*
 * Asks the planner for a re-plan from the state now.  A job not yet taken
 * is replaced: only the latest state is worth planning.  Returns 0, or -1
 * when memory ran out (no re-plan this time).  s->lock held.
 */
static int ask_replan_locked(struct vp_sched *s, const struct vp_losslog *log,
			     uint64_t iter, double now, double t_ckpt,
			     double t_load)
{
	struct plan_job job = { 0 };

	VP_ASSERT_LOCKED(&s->lock);
	job.log_iter = malloc(log->n * sizeof(double));
	job.log_loss = malloc(log->n * sizeof(double));
	if (!job.log_iter || !job.log_loss) {
		free(job.log_iter);
		free(job.log_loss);
		return -1;
	}
	memcpy(job.log_iter, log->iter, log->n * sizeof(double));
	memcpy(job.log_loss, log->loss, log->n * sizeof(double));
	job.n = log->n;
	job.iter = iter;
	job.last_selected = s->last_selected;
	job.elapsed = now - s->t0;
	job.t_iter = s->t_iter;
	job.t_ckpt = t_ckpt;
	job.t_load = t_load;
	free(s->job.log_iter);
	free(s->job.log_loss);
	s->job = job;
	s->job_pending = 1;
	s->asked_iter = iter;
	pthread_cond_broadcast(&s->cond);
	return 0;
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
		d->replanned = ask_replan_locked(s, log, iter, now, t_ckpt, t_load) == 0;
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
	/* a re-plan asked for and not yet in place counts: it is not asked again */
	if (iter >= (s->asked_iter > s->last_fit_iter ? s->asked_iter : s->last_fit_iter) +
		    s->cfg.plan_refit)
		d->replanned = ask_replan_locked(s, log, iter, now, t_ckpt, t_load) == 0;
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
