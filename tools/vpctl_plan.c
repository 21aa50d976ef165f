/*
 * viperctl plan: fits the warm-up of a training log and prints the
 * checkpoint schedules of the four algorithms (engine/plan.h), with one
 * line that says which to use.  docs/planner.md explains the model.
 *
 * DESIGN: the planner's model fits a decreasing, non-negative loss.  A
 * metric where higher is better (--maximize) is planned as its gap to the
 * best value it can take, metric_max - metric (1 - accuracy: the error
 * rate).  The schedules do not depend on that offset: it adds
 * M * metric_max to every schedule's CIL alike; it matters only for the
 * fit (the exp family decays to 0, i.e. to metric_max) and for the cut of
 * predictions at 0 (the metric never predicted above its best).
 *
 * An epoch log (an "epoch" column, no step column) is turned into
 * iterations with --iters-per-epoch N: the row of epoch e (0-based, as
 * Keras and Lightning write it) is the model after (e + 1) * N iterations.
 * Without N the command refuses, since --t-iter is per iteration.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/losslog.h"
#include "../engine/plan.h"
#include "vpctl.h"
#include "vpctl_plan_i.h"

/* The definition docs/planner.md gives, spelled out wherever "CIL" is printed. */
#define CIL_WORDS "cumulative inference loss, the sum over the inferences after warm-up " \
	"of the predicted loss of the model version in service at each"

/* Schedules within this share of the optimum's gain count as equally good. */
#define SIMPLE_ENOUGH 0.05

static void plan_usage(FILE *out)
{
	fputs("usage: viperctl plan LOG.csv --t-iter S --t-infer S --t-ckpt S --inferences M [options]\n"
	      "\n"
	      "Fits the warm-up of a training log, predicts the loss the consumers will see,\n"
	      "and prints when to checkpoint: four schedules and a one-line recommendation.\n"
	      "\n"
	      "The log:\n"
	      "  LOG.csv               Keras CSVLogger (epoch,...), Lightning metrics.csv\n"
	      "                        (epoch,step,...), or iter,loss; the iteration is the step\n"
	      "                        (or iteration, iter, global_step) column, else the epoch one\n"
	      "  --metric COLUMN       the column to plan on (default: the training loss);\n"
	      "                        e.g. val_loss, or val_accuracy with --maximize\n"
	      "  --maximize            higher is better (accuracy, AUC): plans on\n"
	      "                        METRIC_MAX - metric, the gap to the best value\n"
	      "  --metric-max V        with --maximize: the best value the metric can take\n"
	      "                        (default: 1 if every value is <= 1, else 100 if <= 100)\n"
	      "  --iters-per-epoch N   training iterations (optimizer steps) per epoch: needed\n"
	      "                        for a log with an epoch column and no step column (epoch e\n"
	      "                        is iteration (e+1)*N); also sets the epoch baseline\n"
	      "                        (alias: --epoch-iters; 1 plans in epochs, --t-iter per epoch)\n"
	      "  --warmup W            fit the rows with iteration <= W (default: all rows)\n"
	      "\n"
	      "Timing (seconds):\n"
	      "  --t-iter S            per training iteration\n"
	      "  --t-infer S           per inference on the consumers\n"
	      "  --t-ckpt S            training stall per checkpoint\n"
	      "  --t-load S            consumer load time per update (default 0)\n"
	      "  --from MNT            take --t-ckpt and --t-load from a running viperfs mount\n"
	      "  --inferences M        inferences served after warm-up\n"
	      "  --horizon N           iterations after warm-up that may be checkpointed\n"
	      "                        (default: M * t_infer / t_iter)\n"
	      "\n"
	      "The optimal schedule:\n"
	      "  --lambda L            minimise CIL + L * seconds of stall (default 0)\n"
	      "  --max-ckpts K         at most K checkpoints (default: as memory allows)\n"
	      "\n"
	      "Output:\n"
	      "  --json                one line of JSON\n"
	      "  --chart FILE.png      plot the fit, the observed points and the recommended\n"
	      "                        checkpoints (needs gnuplot; Debian: gnuplot-nox)\n"
	      "  -h, --help            this text\n"
	      "\n"
	      "CIL: " CIL_WORDS ".\n"
	      "docs/planner.md has the model and the four algorithms.\n", out);
}

/* s as a finite number (>= 0 unless negative_ok); 0, or -1. */
static int parse_number(const char *s, int negative_ok, double *v)
{
	char *end;

	*v = strtod(s, &end);
	return end == s || *end || !isfinite(*v) || (*v < 0 && !negative_ok) ? -1 : 0;
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
	double metric_max;	/* NAN: from the values */
	const char *from;	/* --from MNT, or NULL */
	const char *loss_log;
	const char *metric;	/* --metric COLUMN, or NULL: the training loss */
	const char *chart;	/* --chart FILE, or NULL */
	int maximize;
	int json;
};

#define MAX_NOTES 4

/* The fit and the four schedules. */
struct plan {
	struct vp_losslog log;	/* iter: iterations; loss: the planned values */
	struct vp_fit best, all[VP_FIT_NFAMILIES];
	struct vp_schedule fixed, greedy, epoch, optimal;
	double *predicted;	/* loss predicted for each iteration of the horizon */
	double threshold;	/* the greedy algorithm's */
	double offset;		/* --maximize: metric = offset - planned value */
	size_t warmup_points;
	uint64_t base;		/* the last warm-up iteration */
	char formula[256];
	char planned[160];	/* what is planned on, in words: "'loss'", "1 - 'acc'" */
	char iteration[160];	/* where the iteration comes from, in words */
	char notes[MAX_NOTES][400];
	size_t nnotes;
	/* the recommendation */
	const char *rec_name;	/* NULL: no checkpoint after warm-up pays */
	const struct vp_schedule *rec;
	double cil_none;	/* CIL with the warm-up model serving throughout */
	char rec_text[1024];
};

/* Adds a line to p->notes (printed with the plan). */
__attribute__((format(printf, 2, 3)))
static void add_note(struct plan *p, const char *fmt, ...)
{
	va_list ap;

	if (p->nnotes == MAX_NOTES)
		return;
	va_start(ap, fmt);
	vsnprintf(p->notes[p->nnotes++], sizeof(p->notes[0]), fmt, ap);
	va_end(ap);
}

enum plan_opt {
	OPT_T_ITER = 256, OPT_T_INFER, OPT_T_CKPT, OPT_T_LOAD, OPT_INFERENCES, OPT_WARMUP,
	OPT_HORIZON, OPT_EPOCH, OPT_LAMBDA, OPT_MAX_CKPTS, OPT_METRIC_MAX, OPT_FROM,
	OPT_JSON, OPT_METRIC, OPT_MAXIMIZE, OPT_CHART,
};

static const struct option plan_options[] = {
	{ "t-iter", required_argument, NULL, OPT_T_ITER },
	{ "t-infer", required_argument, NULL, OPT_T_INFER },
	{ "t-ckpt", required_argument, NULL, OPT_T_CKPT },
	{ "t-load", required_argument, NULL, OPT_T_LOAD },
	{ "inferences", required_argument, NULL, OPT_INFERENCES },
	{ "warmup", required_argument, NULL, OPT_WARMUP },
	{ "horizon", required_argument, NULL, OPT_HORIZON },
	{ "iters-per-epoch", required_argument, NULL, OPT_EPOCH },
	{ "epoch-iters", required_argument, NULL, OPT_EPOCH },
	{ "lambda", required_argument, NULL, OPT_LAMBDA },
	{ "max-ckpts", required_argument, NULL, OPT_MAX_CKPTS },
	{ "metric-max", required_argument, NULL, OPT_METRIC_MAX },
	{ "from", required_argument, NULL, OPT_FROM },
	{ "json", no_argument, NULL, OPT_JSON },
	{ "metric", required_argument, NULL, OPT_METRIC },
	{ "maximize", no_argument, NULL, OPT_MAXIMIZE },
	{ "chart", required_argument, NULL, OPT_CHART },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

/* The number an option fills, or NULL for an option without one. */
static double *plan_target(struct plan_args *a, int opt)
{
	switch (opt) {
	case OPT_T_ITER: return &a->in.t_iter;
	case OPT_T_INFER: return &a->in.t_infer;
	case OPT_T_CKPT: return &a->in.t_ckpt;
	case OPT_T_LOAD: return &a->in.t_load;
	case OPT_INFERENCES: return &a->inferences;
	case OPT_WARMUP: return &a->warmup;
	case OPT_HORIZON: return &a->horizon;
	case OPT_EPOCH: return &a->epoch;
	case OPT_LAMBDA: return &a->in.lambda;
	case OPT_MAX_CKPTS: return &a->max_ckpts;
	case OPT_METRIC_MAX: return &a->metric_max;
	default: return NULL;
	}
}

/* The long name of option value opt, for messages. */
static const char *option_name(int opt)
{
	for (const struct option *o = plan_options; o->name; o++)
		if (o->val == opt)
			return o->name;
	return "?";
}

/* A usage error's last two lines, as every viperctl command's. */
#define PLAN_SHORT_USAGE \
	"usage: viperctl plan LOG.csv --t-iter S --t-infer S --t-ckpt S --inferences M [options]\n" \
	"Try 'viperctl plan --help'.\n"

/* Parses the command line into a; returns -1 to go on, else the exit status. */
static int parse_plan_args(int argc, char **argv, struct plan_args *a)
{
	int opt;

	optind = 1;
	opterr = 0;	/* its messages do not say "viperctl plan" */
	while ((opt = getopt_long(argc, argv, ":h", plan_options, NULL)) != -1) {
		double *target = plan_target(a, opt);

		if (opt == OPT_FROM) {
			a->from = optarg;
		} else if (opt == OPT_METRIC) {
			a->metric = optarg;
		} else if (opt == OPT_CHART) {
			a->chart = optarg;
		} else if (opt == OPT_JSON) {
			a->json = 1;
		} else if (opt == OPT_MAXIMIZE) {
			a->maximize = 1;
		} else if (opt == 'h') {
			plan_usage(stdout);
			return 0;
		} else if (opt == ':' || opt == '?') {
			fprintf(stderr, "viperctl plan: %s '%s'\n" PLAN_SHORT_USAGE,
				opt == ':' ? "a value is missing after" : "unknown option",
				argv[optind - 1]);
			return 2;
		} else if (parse_number(optarg, opt == OPT_METRIC_MAX, target)) {
			fprintf(stderr, "viperctl plan: --%s '%s' is not a%s number\n",
				option_name(opt), optarg,
				opt == OPT_METRIC_MAX ? "" : " non-negative");
			return 2;
		}
	}
	if (optind != argc - 1) {
		fprintf(stderr, "viperctl plan: %s\n" PLAN_SHORT_USAGE,
			optind == argc ? "which log? give LOG.csv" : "one log at a time");
		return 2;
	}
	a->loss_log = argv[optind];
	if (a->epoch >= 0 && (a->epoch < 1 || a->epoch != floor(a->epoch))) {
		fprintf(stderr, "viperctl plan: --iters-per-epoch must be a whole number >= 1\n");
		return 2;
	}
	if (!isnan(a->metric_max) && !a->maximize) {
		fprintf(stderr, "viperctl plan: --metric-max goes with --maximize\n");
		return 2;
	}
	if (a->from && vpctl_measured_times(a->from, &a->in.t_ckpt, &a->in.t_load))
		return 1;
	if (a->in.t_iter <= 0 || a->in.t_infer <= 0 || a->in.t_ckpt < 0 || a->inferences < 1) {
		fprintf(stderr, "viperctl plan: --t-iter, --t-infer, --t-ckpt (or --from) and --inferences are needed, and positive\n");
		return 2;
	}
	if (a->chart && !vpctl_have_gnuplot()) {
		fprintf(stderr, "viperctl plan: --chart '%s' needs gnuplot, which is not on PATH (Debian: apt-get install gnuplot-nox)\n",
			a->chart);
		return 1;
	}
	a->in.inferences = (uint64_t)a->inferences;
	a->in.max_ckpts = (uint64_t)a->max_ckpts;
	return -1;
}

/*
 * Reads the log and makes its rows what the planner fits: iterations
 * (epochs turned into iterations) and a value to minimise.  Returns 0, or
 * the exit status with the reason printed.
 */
static int plan_load(const struct plan_args *a, struct plan *p)
{
	struct vp_losslog_opts opts = { .column = a->metric, .strict = 1 };
	struct vp_losslog *log = &p->log;
	char err[768];
	double top = -INFINITY;

	if (vp_losslog_read_opts(a->loss_log, &opts, log, err, sizeof(err))) {
		fprintf(stderr, "viperctl plan: %s%s\n", err, a->metric ? "" :
			"; plan on another column with --metric COLUMN (and --maximize if higher is better)");
		return 1;
	}
	if (log->nonfinite)
		add_note(p, "skipped %zu rows whose '%s' is nan or inf (the first on line %zu)",
			 log->nonfinite, log->loss_column, log->first_nonfinite_line);
	if (log->per_epoch && a->epoch < 0) {
		fprintf(stderr, "viperctl plan: '%s' has one row per epoch (column '%s', no step column), but --t-iter is seconds per training iteration: give --iters-per-epoch N (optimizer steps per epoch, e.g. ceil(samples / batch size)), or --iters-per-epoch 1 to plan in epochs with --t-iter in seconds per epoch\n",
			a->loss_log, log->iter_column);
		return 2;
	}
	if (log->per_epoch) {
		for (size_t i = 0; i < log->n; i++)
			log->iter[i] = (log->iter[i] + 1) * a->epoch;
		snprintf(p->iteration, sizeof(p->iteration), "(%s + 1) x %.0f iterations per epoch",
			 log->iter_column, a->epoch);
	} else {
		snprintf(p->iteration, sizeof(p->iteration), "%s", log->iter_column);
		if (a->epoch > 0)
			add_note(p, "the iteration is column '%s'; --iters-per-epoch sets the epoch baseline only",
				 log->iter_column);
	}
	if (!a->maximize) {
		snprintf(p->planned, sizeof(p->planned), "'%s'", log->loss_column);
		return 0;
	}
	for (size_t i = 0; i < log->n; i++)
		top = fmax(top, log->loss[i]);
	p->offset = !isnan(a->metric_max) ? a->metric_max : top <= 1 ? 1 : top <= 100 ? 100 : NAN;
	if (isnan(p->offset)) {
		fprintf(stderr, "viperctl plan: '%s' reaches %g, so its best value is not 1 or 100: give --metric-max V\n",
			log->loss_column, top);
		return 2;
	}
	if (top > p->offset) {
		fprintf(stderr, "viperctl plan: '%s' reaches %g, above --metric-max %g\n",
			log->loss_column, top, p->offset);
		return 2;
	}
	for (size_t i = 0; i < log->n; i++)
		log->loss[i] = p->offset - log->loss[i];
	snprintf(p->planned, sizeof(p->planned), "%g - '%s'", p->offset, log->loss_column);
	return 0;
}

/* Fits the warm-up of p->log and plans; returns 0 or -1 with the reason printed. */
static int plan_compute(struct plan_args *a, struct plan *p)
{
	struct vp_plan_input *in = &a->in;
	const struct vp_fit *line;
	size_t nw;

	for (nw = 0; nw < p->log.n && (a->warmup < 0 || p->log.iter[nw] <= a->warmup); nw++)
		;
	p->warmup_points = nw;
	if (nw < 4) {
		fprintf(stderr, "viperctl plan: only %zu rows of '%s' have an iteration <= --warmup %g (the first is at iteration %g); the fit needs at least 4\n",
			nw, a->loss_log, a->warmup, p->log.iter[0]);
		return -1;
	}
	if (vp_fit_best(p->log.iter, p->log.loss, nw, &p->best, p->all)) {
		fprintf(stderr, "viperctl plan: no curve fits the %zu warm-up points of '%s'\n",
			nw, a->loss_log);
		return -1;
	}
	line = &p->all[VP_FIT_LINEAR];
	if (line->ok && line->p[0] > 0)
		add_note(p, "%s rises over the warm-up, so there is nothing for a checkpoint to gain; %s",
			 p->planned, a->maximize ? "is --maximize right?" :
			 "if higher is better, add --maximize");
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

/* What a schedule is judged on: CIL + lambda * stall. */
static double objective(const struct vp_plan_input *in, const struct vp_schedule *s)
{
	return s->cil + in->lambda * s->overhead;
}

/* "12345 (6.7%)", "16.64 (0.2%)": a saving against a baseline CIL. */
static void format_saving(char *buf, size_t len, double saving, double baseline)
{
	snprintf(buf, len, fabs(saving) >= 1000 ? "%.0f (%.3g%%)" : "%.4g (%.3g%%)", saving,
		 baseline > 0 ? 100 * saving / baseline : 0);
}

/*
 * Picks the schedule to recommend, and says so in p->rec_text.  Schedules
 * whose objective is within SIMPLE_ENOUGH of the optimum's gain over no
 * checkpoint are as good for the consumers; of those, the one that stalls
 * training least wins, and on a tie the simplest to set up (epoch ends,
 * a fixed interval, greedy, optimal).
 */
static void plan_recommend(const struct plan_args *a, struct plan *p)
{
	const struct vp_plan_input *in = &a->in;
	const struct { const char *name; const struct vp_schedule *s; } order[] = {
		{ "epoch", &p->epoch }, { "fixed", &p->fixed }, { "greedy", &p->greedy },
		{ "optimal", &p->optimal },
	};
	double best = objective(in, &p->optimal), gain;
	char how[256], vs_none[64], vs_epoch[128] = "", extra[128] = "", words[400];
	size_t r;

	for (r = 0; r < 4; r++)
		if (order[r].s != &p->epoch || a->epoch > 0)
			best = fmin(best, objective(in, order[r].s));
	p->cil_none = vp_plan_cil(in, p->predicted, NULL, 0);
	gain = p->cil_none - best;
	p->rec_name = NULL;
	p->rec = NULL;
	if (gain > 1e-9 * fabs(p->cil_none)) {
		for (r = 0; r < 4; r++) {
			if ((order[r].s == &p->epoch && a->epoch <= 0) || !order[r].s->n ||
			    objective(in, order[r].s) > best + SIMPLE_ENOUGH * gain)
				continue;
			if (!p->rec || order[r].s->overhead < p->rec->overhead) {
				p->rec_name = order[r].name;
				p->rec = order[r].s;
			}
		}
	}
	snprintf(words, sizeof(words), "(CIL: cumulative inference loss, the sum over the %llu inferences after warm-up of the predicted %s of the model version in service at each)",
		 (unsigned long long)in->inferences, p->planned);
	if (!p->rec) {
		snprintf(p->rec_text, sizeof(p->rec_text),
			 "recommendation: no checkpoint after warm-up: no schedule lowers the warm-up model's predicted CIL, %.6g%s %s",
			 p->cil_none, in->lambda > 0 ? ", by more than its stalls cost (--lambda)" : "",
			 words);
		return;
	}
	if (p->rec == &p->epoch)
		snprintf(how, sizeof(how), "checkpoint at every epoch end, every %.0f iterations (the epoch schedule, %zu checkpoints)",
			 a->epoch, p->rec->n);
	else if (p->rec == &p->fixed)
		snprintf(how, sizeof(how), "checkpoint every %llu iterations (the fixed schedule, %zu checkpoints)",
			 (unsigned long long)p->rec->iters[0], p->rec->n);
	else
		snprintf(how, sizeof(how), "checkpoint at the %zu iteration%s of the %s schedule (listed above; all of them in --json)",
			 p->rec->n, p->rec->n == 1 ? "" : "s", p->rec_name);
	format_saving(vs_none, sizeof(vs_none), p->cil_none - p->rec->cil, p->cil_none);
	if (a->epoch > 0 && p->rec != &p->epoch) {
		char s[64];

		format_saving(s, sizeof(s), p->epoch.cil - p->rec->cil, p->epoch.cil);
		snprintf(vs_epoch, sizeof(vs_epoch), " and %s less than checkpointing at every epoch end",
			 s);
	}
	if (p->rec != &p->optimal)
		snprintf(extra, sizeof(extra), "; the optimal schedule (%zu checkpoints) would save %.4g more",
			 p->optimal.n, objective(in, p->rec) - objective(in, &p->optimal));
	snprintf(p->rec_text, sizeof(p->rec_text),
		 "recommendation: %s: its predicted CIL is %.6g, %s less than keeping the warm-up model%s, for %.4g s of training stalls%s %s",
		 how, p->rec->cil, vs_none, vs_epoch, p->rec->overhead, extra, words);
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

/* The four schedules (three without --iters-per-epoch); returns a new reference, or NULL. */
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

/* The log's columns and how they were read; returns a new reference, or NULL. */
static json_t *json_log(const struct plan_args *a, const struct plan *p)
{
	json_t *notes = json_array(), *o;
	int bad = !notes;

	for (size_t i = 0; i < p->nnotes && !bad; i++)
		bad = json_array_append_new(notes, json_string(p->notes[i]));
	if (bad) {
		json_decref(notes);
		return NULL;
	}
	o = json_pack("{s:s,s:s,s:s,s:s,s:b,s:o}", "path", a->loss_log,
		      "metric", p->log.loss_column, "planned", p->planned,
		      "iteration", p->iteration, "maximize", a->maximize, "notes", notes);
	if (o && ((a->maximize && json_object_set_new(o, "metric_max", json_real(p->offset))) ||
		  (a->epoch > 0 &&
		   json_object_set_new(o, "iters_per_epoch", json_integer((json_int_t)a->epoch))))) {
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
	j = json_pack("{s:{s:s,s:s,s:[f,f,f],s:f},s:o,s:o,"
		      "s:{s:I,s:I,s:I,s:I,s:f,s:f,s:f,s:f,s:f,s:f},s:o,"
		      "s:{s:s?,s:s,s:f}}",
		      "fit", "family", vp_fit_name(p->best.family), "formula", p->formula,
		      "params", p->best.p[0], p->best.p[1], p->best.p[2], "mse", p->best.mse,
		      "fits", json_fits(p), "log", json_log(a, p),
		      "input", "warmup_points", (json_int_t)p->warmup_points,
		      "warmup_end", (json_int_t)p->base, "horizon", (json_int_t)in->horizon,
		      "inferences", (json_int_t)in->inferences, "t_iter", in->t_iter,
		      "t_infer", in->t_infer, "t_ckpt", in->t_ckpt, "t_load", in->t_load,
		      "lambda", in->lambda, "greedy_threshold", p->threshold,
		      "schedules", json_schedules(a, p),
		      "recommendation", "schedule", p->rec_name, "text", p->rec_text,
		      "cil_without_checkpoints", p->cil_none);
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

	printf("log: %s; planned on %s%s; iteration: %s; %zu warm-up points up to iteration %llu\n",
	       a->loss_log, p->planned, a->maximize ? " (higher is better: its gap to the best)" : "",
	       p->iteration, p->warmup_points, (unsigned long long)p->base);
	for (size_t i = 0; i < p->nnotes; i++)
		printf("note: %s\n", p->notes[i]);
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
	printf("\n%s\n", p->rec_text);
}

/* The metric (in its own units) that the fit predicts at iteration x. */
static double predicted_metric(const struct plan_args *a, const struct plan *p, double x)
{
	double planned = fmax(0.0, vp_fit_eval(&p->best, x));

	return a->maximize ? p->offset - planned : planned;
}

#define CHART_SAMPLES 600

/* Draws --chart; returns 0 or -1 with the reason printed. */
static int plan_chart(const struct plan_args *a, const struct plan *p)
{
	const struct vp_schedule *ck = p->rec ? p->rec : &p->optimal;
	size_t n = p->log.n, nw = p->warmup_points;
	double *obs = malloc((n + 2 * CHART_SAMPLES + 2 * ck->n + 1) * sizeof(double));
	double *cx = obs + n, *cy = cx + CHART_SAMPLES, *kx = cy + CHART_SAMPLES, *ky = kx + ck->n;
	double x0 = p->log.iter[0], x1 = (double)(p->base + a->in.horizon);
	char title[512], curve[512], ckpts[128];
	struct vpctl_chart c;
	int rc;

	if (!obs) {
		fprintf(stderr, "viperctl plan: chart '%s': out of memory\n", a->chart);
		return -1;
	}
	for (size_t i = 0; i < n; i++)
		obs[i] = a->maximize ? p->offset - p->log.loss[i] : p->log.loss[i];
	for (size_t i = 0; i < CHART_SAMPLES; i++) {
		cx[i] = x0 + (x1 - x0) * (double)i / (CHART_SAMPLES - 1);
		cy[i] = predicted_metric(a, p, cx[i]);
	}
	for (size_t k = 0; k < ck->n; k++) {
		kx[k] = (double)(p->base + ck->iters[k]);
		ky[k] = predicted_metric(a, p, kx[k]);
	}
	snprintf(title, sizeof(title), "viperctl plan: %s, %s", a->loss_log, p->log.loss_column);
	if (a->maximize)
		snprintf(curve, sizeof(curve), "fit (%s): %s = %g - (%s)", vp_fit_name(p->best.family),
			 p->log.loss_column, p->offset, p->formula);
	else
		snprintf(curve, sizeof(curve), "fit (%s): %s", vp_fit_name(p->best.family),
			 p->formula);
	snprintf(ckpts, sizeof(ckpts), "%s checkpoints: %s schedule (%zu)",
		 p->rec ? "recommended" : "no checkpoint pays; optimal", p->rec ? p->rec_name : "optimal",
		 ck->n);
	c = (struct vpctl_chart){
		.path = a->chart, .title = title, .ylabel = p->log.loss_column,
		.observed = { p->log.iter, obs, nw, "observed (warm-up, fitted)" },
		.later = { p->log.iter + nw, obs + nw, n - nw, "observed after warm-up (not fitted)" },
		.curve = { cx, cy, CHART_SAMPLES, curve },
		.checkpoints = { kx, ky, ck->n, ckpts },
		.warmup_end = (double)p->base,
	};
	rc = vpctl_plan_chart(&c);
	free(obs);
	return rc;
}

int vpctl_plan(int argc, char **argv)
{
	struct plan_args a = { .in = { .t_iter = -1, .t_infer = -1, .t_ckpt = -1 },
			       .warmup = -1, .horizon = -1, .inferences = -1, .epoch = -1,
			       .metric_max = NAN };
	struct plan p = { .predicted = NULL };
	int rc = parse_plan_args(argc, argv, &a);

	if (rc >= 0)
		return rc;
	rc = plan_load(&a, &p);
	if (!rc)
		rc = plan_compute(&a, &p) ? 1 : 0;
	if (!rc) {
		plan_recommend(&a, &p);
		if (a.json)
			rc = print_plan_json(&a, &p) ? 1 : 0;
		else
			print_plan_text(&a, &p);
	}
	if (!rc && a.chart) {
		rc = plan_chart(&a, &p) ? 1 : 0;
		if (!rc && !a.json)
			printf("chart: %s\n", a.chart);
	}
	free(p.predicted);
	vp_schedule_release(&p.fixed);
	vp_schedule_release(&p.greedy);
	vp_schedule_release(&p.epoch);
	vp_schedule_release(&p.optimal);
	vp_losslog_release(&p.log);
	return rc;
}
