/*
 * viperctl plan: fits the warm-up loss log and prints the checkpoint
 * schedules of the four algorithms (engine/plan.h).
 *
 *   viperctl plan LOSS.csv --t-iter S --t-infer S --t-ckpt S [--t-load S]
 *                 --inferences M [--warmup W] [--horizon N] [--epoch-iters E]
 *                 [--lambda L] [--max-ckpts K] [--from MNT] [--json]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/losslog.h"
#include "../engine/plan.h"
#include "vpctl.h"

static void plan_usage(FILE *out)
{
	fputs("usage: viperctl plan LOSS.csv --t-iter S --t-infer S --t-ckpt S [--t-load S]\n"
	      "           --inferences M [--warmup W] [--horizon N] [--epoch-iters E]\n"
	      "           [--lambda L] [--max-ckpts K] [--from MNT] [--json]\n"
	      "  LOSS.csv      Keras CSVLogger, Lightning metrics.csv, or iter,loss\n"
	      "  --t-iter      seconds per training iteration\n"
	      "  --t-infer     seconds per inference\n"
	      "  --t-ckpt      producer stall per checkpoint, seconds\n"
	      "  --t-load      consumer load time per update, seconds (default 0)\n"
	      "  --inferences  inferences served after warm-up (M)\n"
	      "  --warmup      use log rows with iteration <= W as the warm-up (default: all)\n"
	      "  --horizon     iterations after warm-up that may be checkpointed\n"
	      "                (default: M * t_infer / t_iter)\n"
	      "  --epoch-iters iterations per epoch, for the epoch-boundary baseline\n"
	      "  --lambda      optimal: minimise CIL + lambda * overhead (default 0)\n"
	      "  --max-ckpts   optimal: at most K checkpoints (default: as memory allows)\n"
	      "  --from MNT    take --t-ckpt and --t-load from a running viperfs mount\n"
	      "  --json        print JSON\n", out);
}

static int parse_double(const char *s, double *v)
{
	char *end;

	*v = strtod(s, &end);
	return *end || !isfinite(*v) || *v < 0 ? -1 : 0;
}

static void print_iters(FILE *out, const struct vp_schedule *s, uint64_t base,
			size_t limit)
{
	for (size_t i = 0; i < s->n && i < limit; i++)
		fprintf(out, "%s%llu", i ? " " : "", (unsigned long long)(base + s->iters[i]));
	if (s->n > limit)
		fprintf(out, " ... (%zu more)", s->n - limit);
}

/*
 * Which version serves which inferences: [iteration, first, count] for
 * each version that serves any.  Returns a new reference, or NULL.
 */
static json_t *json_service(const struct vp_schedule *s, const struct vp_plan_input *in,
			    uint64_t base)
{
	json_t *service = json_array();
	uint64_t served = 0, from = base;
	int bad = !service;

	for (size_t k = 0; k <= s->n && !bad; k++) {
		uint64_t until = k < s->n ? vp_plan_served_before(in,
			vp_plan_service_start(in, s->iters[k], k + 1)) : in->inferences;

		if (until > served) {
			bad = json_array_append_new(service, json_pack("[I,I,I]",
				(json_int_t)from, (json_int_t)served,
				(json_int_t)(until - served)));
			served = until;
		}
		if (k < s->n)
			from = base + s->iters[k];
	}
	if (bad) {
		json_decref(service);
		service = NULL;
	}
	return service;
}

/* One schedule as JSON; returns a new reference, or NULL. */
static json_t *json_schedule(const struct vp_schedule *s, const struct vp_plan_input *in,
			     uint64_t base)
{
	json_t *iters = json_array(), *o;
	int bad = !iters;

	for (size_t i = 0; i < s->n && !bad; i++)
		bad = json_array_append_new(iters, json_integer((json_int_t)(base + s->iters[i])));
	if (bad) {
		json_decref(iters);
		return NULL;
	}
	/* "o" takes the references, also when the pack fails */
	o = json_pack("{s:I,s:f,s:f,s:o,s:o}", "checkpoints", (json_int_t)s->n,
		      "cil", s->cil, "overhead_s", s->overhead, "iterations", iters,
		      "service", json_service(s, in, base));
	if (o && s->max_ckpts &&
	    (json_object_set_new(o, "max_ckpts", json_integer((json_int_t)s->max_ckpts)) ||
	     json_object_set_new(o, "bound_hit", json_boolean(s->bound_hit)))) {
		json_decref(o);
		o = NULL;
	}
	return o;
}

/* What the command line asks for. */
struct plan_args {
	struct vp_plan_input in;
	double warmup, horizon, epoch, inferences, max_ckpts;
	const char *from;	/* --from MNT, or NULL */
	const char *loss_log;
	int json;
};

/* The fit and the four schedules. */
struct plan {
	struct vp_losslog log;
	struct vp_fit best, all[VP_FIT_NFAMILIES];
	struct vp_schedule fixed, greedy, epoch, optimal;
	double *predicted;	/* loss predicted for each iteration of the horizon */
	double threshold;	/* the greedy algorithm's */
	size_t warmup_points;
	uint64_t base;		/* the last warm-up iteration */
	char formula[256];
};

static const struct option plan_options[] = {
	{ "t-iter", required_argument, NULL, 'i' },
	{ "t-infer", required_argument, NULL, 'n' },
	{ "t-ckpt", required_argument, NULL, 'c' },
	{ "t-load", required_argument, NULL, 'l' },
	{ "inferences", required_argument, NULL, 'm' },
	{ "warmup", required_argument, NULL, 'w' },
	{ "horizon", required_argument, NULL, 'h' },
	{ "epoch-iters", required_argument, NULL, 'e' },
	{ "lambda", required_argument, NULL, 'L' },
	{ "max-ckpts", required_argument, NULL, 'k' },
	{ "from", required_argument, NULL, 'f' },
	{ "json", no_argument, NULL, 'j' },
	{ "help", no_argument, NULL, 'H' },
	{ NULL, 0, NULL, 0 },
};

/* The number an option fills, or NULL for an option without one. */
static double *plan_target(struct plan_args *a, int opt)
{
	switch (opt) {
	case 'i': return &a->in.t_iter;
	case 'n': return &a->in.t_infer;
	case 'c': return &a->in.t_ckpt;
	case 'l': return &a->in.t_load;
	case 'm': return &a->inferences;
	case 'w': return &a->warmup;
	case 'h': return &a->horizon;
	case 'e': return &a->epoch;
	case 'L': return &a->in.lambda;
	case 'k': return &a->max_ckpts;
	default: return NULL;
	}
}

/* Parses the command line into a; returns -1 to go on, else the exit status. */
static int parse_plan_args(int argc, char **argv, struct plan_args *a)
{
	int opt, idx = 0;

	optind = 1;
	while ((opt = getopt_long(argc, argv, "", plan_options, &idx)) != -1) {
		double *target = plan_target(a, opt);

		if (opt == 'f') {
			a->from = optarg;
		} else if (opt == 'j') {
			a->json = 1;
		} else if (opt == 'H') {
			plan_usage(stdout);
			return 0;
		} else if (!target) {
			plan_usage(stderr);
			return 2;
		} else if (parse_double(optarg, target)) {
			fprintf(stderr, "viperctl plan: bad number '%s' for --%s\n", optarg,
				plan_options[idx].name);
			return 2;
		}
	}
	if (optind != argc - 1) {
		plan_usage(stderr);
		return 2;
	}
	a->loss_log = argv[optind];
	if (a->from && vpctl_measured_times(a->from, &a->in.t_ckpt, &a->in.t_load))
		return 1;
	if (a->in.t_iter <= 0 || a->in.t_infer <= 0 || a->in.t_ckpt < 0 || a->inferences < 1) {
		fprintf(stderr, "viperctl plan: --t-iter, --t-infer, --t-ckpt (or --from) and --inferences are needed, and positive\n");
		return 2;
	}
	a->in.inferences = (uint64_t)a->inferences;
	a->in.max_ckpts = (uint64_t)a->max_ckpts;
	return -1;
}

/* Fits the warm-up of p->log and plans; returns 0 or -1 with the reason printed. */
static int plan_compute(struct plan_args *a, struct plan *p)
{
	struct vp_plan_input *in = &a->in;
	size_t nw;

	for (nw = 0; nw < p->log.n && (a->warmup < 0 || p->log.iter[nw] <= a->warmup); nw++)
		;
	p->warmup_points = nw;
	if (vp_fit_best(p->log.iter, p->log.loss, nw, &p->best, p->all)) {
		fprintf(stderr, "viperctl plan: no curve fits the %zu warm-up points of '%s'\n",
			nw, a->loss_log);
		return -1;
	}
	p->base = (uint64_t)p->log.iter[nw - 1];
	in->horizon = a->horizon >= 0 ? (uint64_t)a->horizon :
		(uint64_t)((double)in->inferences * in->t_infer / in->t_iter);
	if (in->horizon < 1)
		in->horizon = 1;
	p->predicted = malloc((in->horizon + 1) * sizeof(*p->predicted));
	if (!p->predicted)
		return -1;
	/* losses are not negative: a falling line is cut at zero */
	for (uint64_t c = 0; c <= in->horizon; c++)
		p->predicted[c] = fmax(0.0, vp_fit_eval(&p->best, (double)(p->base + c)));
	p->threshold = vp_plan_greedy_threshold(p->log.loss, nw);
	if (vp_plan_fixed(in, p->predicted, &p->fixed) ||
	    vp_plan_greedy(in, p->predicted, p->threshold, &p->greedy) ||
	    vp_plan_optimal(in, p->predicted, &p->optimal) ||
	    (a->epoch > 0 && vp_plan_epoch(in, p->predicted, p->base, (uint64_t)a->epoch,
					   &p->epoch))) {
		fprintf(stderr, "viperctl plan: planning failed (bad timing inputs?)\n");
		return -1;
	}
	vp_fit_format(&p->best, p->formula, sizeof(p->formula));
	return 0;
}

/* The fits of every family; returns a new reference, or NULL. */
static json_t *json_fits(const struct plan *p)
{
	json_t *fits = json_array();
	int bad = !fits;

	for (int f = 0; f < VP_FIT_NFAMILIES && !bad; f++)
		bad = json_array_append_new(fits, json_pack("{s:s,s:b,s:f}",
			"family", vp_fit_name((enum vp_fit_family)f), "ok", p->all[f].ok,
			"mse", p->all[f].ok ? p->all[f].mse : -1.0));
	if (bad) {
		json_decref(fits);
		fits = NULL;
	}
	return fits;
}

/* The four schedules (three without --epoch-iters); returns a new reference, or NULL. */
static json_t *json_schedules(const struct plan_args *a, const struct plan *p)
{
	json_t *o = json_object();

	if (!o ||
	    (a->epoch > 0 &&
	     json_object_set_new(o, "epoch", json_schedule(&p->epoch, &a->in, p->base))) ||
	    json_object_set_new(o, "fixed", json_schedule(&p->fixed, &a->in, p->base)) ||
	    json_object_set_new(o, "greedy", json_schedule(&p->greedy, &a->in, p->base)) ||
	    json_object_set_new(o, "optimal", json_schedule(&p->optimal, &a->in, p->base))) {
		json_decref(o);
		o = NULL;
	}
	return o;
}

/* Prints the plan as one line of JSON; returns 0 or -1 with the reason printed. */
static int print_plan_json(const struct plan_args *a, const struct plan *p)
{
	const struct vp_plan_input *in = &a->in;
	json_t *j;

	/* "o" takes the references, also when the pack fails */
	j = json_pack("{s:{s:s,s:s,s:[f,f,f],s:f},s:o,"
		      "s:{s:I,s:I,s:I,s:I,s:f,s:f,s:f,s:f,s:f,s:f},s:o}",
		      "fit", "family", vp_fit_name(p->best.family), "formula", p->formula,
		      "params", p->best.p[0], p->best.p[1], p->best.p[2], "mse", p->best.mse,
		      "fits", json_fits(p),
		      "input", "warmup_points", (json_int_t)p->warmup_points,
		      "warmup_end", (json_int_t)p->base, "horizon", (json_int_t)in->horizon,
		      "inferences", (json_int_t)in->inferences, "t_iter", in->t_iter,
		      "t_infer", in->t_infer, "t_ckpt", in->t_ckpt, "t_load", in->t_load,
		      "lambda", in->lambda, "greedy_threshold", p->threshold,
		      "schedules", json_schedules(a, p));
	if (!j) {
		fprintf(stderr, "viperctl plan: cannot build the JSON output (out of memory, or a number that is not finite)\n");
		return -1;
	}
	return vpctl_print_json(j, "viperctl plan");
}

static void print_plan_text(const struct plan_args *a, const struct plan *p)
{
	const struct { const char *name; const struct vp_schedule *s; } rows[] = {
		{ "epoch", &p->epoch }, { "fixed", &p->fixed }, { "greedy", &p->greedy },
		{ "optimal", &p->optimal },
	};

	printf("loss log: %s (iteration: %s, loss: %s), %zu warm-up points up to iteration %llu\n",
	       a->loss_log, p->log.iter_column, p->log.loss_column, p->warmup_points,
	       (unsigned long long)p->base);
	printf("fit: %s  %s  (mse %.4g)\n", vp_fit_name(p->best.family), p->formula, p->best.mse);
	for (int f = 0; f < VP_FIT_NFAMILIES; f++)
		printf("     %-10s mse %s%.4g\n", vp_fit_name((enum vp_fit_family)f),
		       p->all[f].ok ? "" : "(failed) ", p->all[f].ok ? p->all[f].mse : NAN);
	printf("horizon %llu iterations, %llu inferences, greedy threshold %.4g\n\n",
	       (unsigned long long)a->in.horizon, (unsigned long long)a->in.inferences,
	       p->threshold);
	printf("%-9s %11s %15s %14s  %s\n", "algorithm", "checkpoints", "predicted CIL",
	       "overhead (s)", "iterations");
	for (size_t r = 0; r < 4; r++) {
		if (rows[r].s == &p->epoch && a->epoch <= 0)
			continue;
		printf("%-9s %11zu %15.2f %14.3f  ", rows[r].name, rows[r].s->n,
		       rows[r].s->cil, rows[r].s->overhead);
		print_iters(stdout, rows[r].s, p->base, 8);
		putchar('\n');
	}
	if (p->optimal.bound_hit)
		printf("note: the optimum used all %llu checkpoints it may; raise --max-ckpts\n",
		       (unsigned long long)p->optimal.max_ckpts);
}

int vpctl_plan(int argc, char **argv)
{
	struct plan_args a = { .in = { .t_iter = -1, .t_infer = -1, .t_ckpt = -1 },
			       .warmup = -1, .horizon = -1, .inferences = -1 };
	struct plan p = { .predicted = NULL };
	char err[512];
	int rc = parse_plan_args(argc, argv, &a);

	if (rc >= 0)
		return rc;
	if (vp_losslog_read(a.loss_log, &p.log, err, sizeof(err))) {
		fprintf(stderr, "viperctl plan: %s\n", err);
		return 1;
	}
	rc = plan_compute(&a, &p) ? 1 : 0;
	if (!rc && a.json)
		rc = print_plan_json(&a, &p) ? 1 : 0;
	else if (!rc)
		print_plan_text(&a, &p);
	free(p.predicted);
	vp_schedule_release(&p.fixed);
	vp_schedule_release(&p.greedy);
	vp_schedule_release(&p.epoch);
	vp_schedule_release(&p.optimal);
	vp_losslog_release(&p.log);
	return rc;
}
