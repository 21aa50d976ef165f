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

static void json_schedule(FILE *out, const char *name, const struct vp_schedule *s,
			  const struct vp_plan_input *in, uint64_t base, int last)
{
	uint64_t served = 0, from = base;

	fprintf(out, "\"%s\":{\"checkpoints\":%zu,\"cil\":%.6f,\"overhead_s\":%.6f,\"iterations\":[",
		name, s->n, s->cil, s->overhead);
	for (size_t i = 0; i < s->n; i++)
		fprintf(out, "%s%llu", i ? "," : "", (unsigned long long)(base + s->iters[i]));
	/* which version serves which inferences: [iteration, first, count] */
	fputs("],\"service\":[", out);
	for (size_t k = 0; k <= s->n; k++) {
		uint64_t until = k < s->n ? vp_plan_served_before(in,
			vp_plan_service_start(in, s->iters[k], k + 1)) : in->inferences;

		if (until > served) {
			fprintf(out, "%s[%llu,%llu,%llu]", served ? "," : "",
				(unsigned long long)from, (unsigned long long)served,
				(unsigned long long)(until - served));
			served = until;
		}
		if (k < s->n)
			from = base + s->iters[k];
	}
	fprintf(out, "]");
	if (s->max_ckpts)
		fprintf(out, ",\"max_ckpts\":%llu,\"bound_hit\":%s",
			(unsigned long long)s->max_ckpts, s->bound_hit ? "true" : "false");
	fprintf(out, "}%s", last ? "" : ",");
}

int vpctl_plan(int argc, char **argv)
{
	static const struct option longopts[] = {
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
	struct vp_plan_input in = { .t_iter = -1, .t_infer = -1, .t_ckpt = -1 };
	double warmup = -1, horizon = -1, epoch = 0, inferences = -1, maxk = 0;
	const char *from = NULL;
	int json = 0, opt, rc = 1;
	struct vp_losslog log;
	struct vp_fit best, all[VP_FIT_NFAMILIES];
	struct vp_schedule fixed = { 0 }, greedy = { 0 }, ep = { 0 }, opt_s = { 0 };
	double *pl = NULL, threshold;
	size_t nw;
	uint64_t base;
	char err[512], formula[256];

	optind = 1;
	int idx = 0;

	while ((opt = getopt_long(argc, argv, "", longopts, &idx)) != -1) {
		double *target = NULL;

		switch (opt) {
		case 'i': target = &in.t_iter; break;
		case 'n': target = &in.t_infer; break;
		case 'c': target = &in.t_ckpt; break;
		case 'l': target = &in.t_load; break;
		case 'm': target = &inferences; break;
		case 'w': target = &warmup; break;
		case 'h': target = &horizon; break;
		case 'e': target = &epoch; break;
		case 'L': target = &in.lambda; break;
		case 'k': target = &maxk; break;
		case 'f': from = optarg; break;
		case 'j': json = 1; break;
		case 'H': plan_usage(stdout); return 0;
		default: plan_usage(stderr); return 2;
		}
		if (target && parse_double(optarg, target)) {
			fprintf(stderr, "viperctl plan: bad number '%s' for --%s\n", optarg,
				longopts[idx].name);
			return 2;
		}
	}
	if (optind != argc - 1) {
		plan_usage(stderr);
		return 2;
	}
	if (from && vpctl_measured_times(from, &in.t_ckpt, &in.t_load))
		return 1;
	if (in.t_iter <= 0 || in.t_infer <= 0 || in.t_ckpt < 0 || inferences < 1) {
		fprintf(stderr, "viperctl plan: --t-iter, --t-infer, --t-ckpt (or --from) and --inferences are needed, and positive\n");
		return 2;
	}
	in.inferences = (uint64_t)inferences;
	in.max_ckpts = (uint64_t)maxk;
	if (vp_losslog_read(argv[optind], &log, err, sizeof(err))) {
		fprintf(stderr, "viperctl plan: %s\n", err);
		return 1;
	}
	for (nw = 0; nw < log.n && (warmup < 0 || log.iter[nw] <= warmup); nw++)
		;
	if (vp_fit_best(log.iter, log.loss, nw, &best, all)) {
		fprintf(stderr, "viperctl plan: no curve fits the %zu warm-up points of '%s'\n",
			nw, argv[optind]);
		goto out;
	}
	base = (uint64_t)log.iter[nw - 1];
	in.horizon = horizon >= 0 ? (uint64_t)horizon :
		(uint64_t)((double)in.inferences * in.t_infer / in.t_iter);
	if (in.horizon < 1)
		in.horizon = 1;
	pl = malloc((in.horizon + 1) * sizeof(*pl));
	if (!pl)
		goto out;
	/* losses are not negative: a falling line is cut at zero */
	for (uint64_t c = 0; c <= in.horizon; c++)
		pl[c] = fmax(0.0, vp_fit_eval(&best, (double)(base + c)));
	threshold = vp_plan_greedy_threshold(log.loss, nw);
	if (vp_plan_fixed(&in, pl, &fixed) || vp_plan_greedy(&in, pl, threshold, &greedy) ||
	    vp_plan_optimal(&in, pl, &opt_s) ||
	    (epoch > 0 && vp_plan_epoch(&in, pl, base, (uint64_t)epoch, &ep))) {
		fprintf(stderr, "viperctl plan: planning failed (bad timing inputs?)\n");
		goto out;
	}
	vp_fit_format(&best, formula, sizeof(formula));
	if (json) {
		printf("{\"fit\":{\"family\":\"%s\",\"formula\":\"%s\",\"params\":[%.10g,%.10g,%.10g],\"mse\":%.6g},\"fits\":[",
		       vp_fit_name(best.family), formula, best.p[0], best.p[1], best.p[2], best.mse);
		for (int f = 0; f < VP_FIT_NFAMILIES; f++)
			printf("%s{\"family\":\"%s\",\"ok\":%s,\"mse\":%.6g}", f ? "," : "",
			       vp_fit_name((enum vp_fit_family)f), all[f].ok ? "true" : "false",
			       all[f].ok ? all[f].mse : -1.0);
		printf("],\"input\":{\"warmup_points\":%zu,\"warmup_end\":%llu,\"horizon\":%llu,"
		       "\"inferences\":%llu,\"t_iter\":%g,\"t_infer\":%g,\"t_ckpt\":%g,\"t_load\":%g,"
		       "\"lambda\":%g,\"greedy_threshold\":%.6g},\"schedules\":{",
		       nw, (unsigned long long)base, (unsigned long long)in.horizon,
		       (unsigned long long)in.inferences, in.t_iter, in.t_infer, in.t_ckpt,
		       in.t_load, in.lambda, threshold);
		if (epoch > 0)
			json_schedule(stdout, "epoch", &ep, &in, base, 0);
		json_schedule(stdout, "fixed", &fixed, &in, base, 0);
		json_schedule(stdout, "greedy", &greedy, &in, base, 0);
		json_schedule(stdout, "optimal", &opt_s, &in, base, 1);
		printf("}}\n");
	} else {
		printf("loss log: %s (iteration: %s, loss: %s), %zu warm-up points up to iteration %llu\n",
		       argv[optind], log.iter_column, log.loss_column, nw, (unsigned long long)base);
		printf("fit: %s  %s  (mse %.4g)\n", vp_fit_name(best.family), formula, best.mse);
		for (int f = 0; f < VP_FIT_NFAMILIES; f++)
			printf("     %-10s mse %s%.4g\n", vp_fit_name((enum vp_fit_family)f),
			       all[f].ok ? "" : "(failed) ", all[f].ok ? all[f].mse : NAN);
		printf("horizon %llu iterations, %llu inferences, greedy threshold %.4g\n\n",
		       (unsigned long long)in.horizon, (unsigned long long)in.inferences, threshold);
		printf("%-9s %11s %15s %14s  %s\n", "algorithm", "checkpoints", "predicted CIL",
		       "overhead (s)", "iterations");
		const struct { const char *name; struct vp_schedule *s; } rows[] = {
			{ "epoch", &ep }, { "fixed", &fixed }, { "greedy", &greedy }, { "optimal", &opt_s },
		};
		for (size_t r = 0; r < 4; r++) {
			if (rows[r].s == &ep && epoch <= 0)
				continue;
			printf("%-9s %11zu %15.2f %14.3f  ", rows[r].name, rows[r].s->n,
			       rows[r].s->cil, rows[r].s->overhead);
			print_iters(stdout, rows[r].s, base, 8);
			putchar('\n');
		}
		if (opt_s.bound_hit)
			printf("note: the optimum used all %llu checkpoints it may; raise --max-ckpts\n",
			       (unsigned long long)opt_s.max_ckpts);
	}
	rc = 0;
out:
	free(pl);
	vp_schedule_release(&fixed);
	vp_schedule_release(&greedy);
	vp_schedule_release(&ep);
	vp_schedule_release(&opt_s);
	vp_losslog_release(&log);
	return rc;
}
