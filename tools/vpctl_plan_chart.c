/*
 * viperctl plan --chart: the fitted curve, the observed points and the
 * recommended checkpoints as a PNG, drawn by gnuplot as the bench's charts
 * are (tests/bench/charts.py: pngcairo, the script on gnuplot's stdin).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vpctl_plan_i.h"

int vpctl_have_gnuplot(void)
{
	const char *path = getenv("PATH");
	char *dirs, *dir, *save = NULL, exe[4096];
	int found = 0;

	if (!path || !(dirs = strdup(path)))
		return 0;
	for (dir = strtok_r(dirs, ":", &save); dir && !found; dir = strtok_r(NULL, ":", &save)) {
		snprintf(exe, sizeof(exe), "%s/gnuplot", *dir ? dir : ".");
		found = access(exe, X_OK) == 0;
	}
	free(dirs);
	return found;
}

/* s as a gnuplot single-quoted string: '' stands for ', a newline for a space. */
static void put_quoted(FILE *gp, const char *s)
{
	fputc('\'', gp);
	for (; *s; s++) {
		if (*s == '\'')
			fputs("''", gp);
		else
			fputc(*s == '\n' || *s == '\r' ? ' ' : *s, gp);
	}
	fputc('\'', gp);
}

static void put_block(FILE *gp, const char *name, const struct vpctl_series *s)
{
	if (!s->n)
		return;
	fprintf(gp, "$%s << EOD\n", name);
	for (size_t i = 0; i < s->n; i++)
		fprintf(gp, "%.17g %.17g\n", s->x[i], s->y[i]);
	fputs("EOD\n", gp);
}

/* One "plot" clause for s, if it has points; *first: no comma before it. */
static void put_plot(FILE *gp, const char *name, const struct vpctl_series *s,
		     const char *style, int *first)
{
	if (!s->n)
		return;
	fprintf(gp, "%s$%s with %s title ", *first ? "plot " : ", \\\n     ", name, style);
	put_quoted(gp, s->title ? s->title : name);
	*first = 0;
}

/* The whole script. */
static void put_script(FILE *gp, const struct vpctl_chart *c)
{
	int first = 1;

	fputs("set terminal pngcairo noenhanced size 1000,560 font ',10'\nset output ", gp);
	put_quoted(gp, c->path);
	fputs("\nset title ", gp);
	put_quoted(gp, c->title);
	fputs("\nset xlabel 'iteration'\nset ylabel ", gp);
	put_quoted(gp, c->ylabel);
	fputs("\nset grid\nset key outside below\n", gp);
	fprintf(gp, "set arrow from %.17g, graph 0 to %.17g, graph 1 nohead dashtype 2 lc rgb 'gray50'\n",
		c->warmup_end, c->warmup_end);
	fprintf(gp, "set label 'end of warm-up ' at %.17g, graph 0.96 right textcolor rgb 'gray40'\n",
		c->warmup_end);
	put_block(gp, "observed", &c->observed);
	put_block(gp, "later", &c->later);
	put_block(gp, "curve", &c->curve);
	put_block(gp, "checkpoints", &c->checkpoints);
	put_plot(gp, "observed", &c->observed, "points pt 7 ps 0.5 lc rgb '#1f77b4'", &first);
	put_plot(gp, "later", &c->later, "points pt 6 ps 0.5 lc rgb '#aaaaaa'", &first);
	put_plot(gp, "curve", &c->curve, "lines lw 2 lc rgb '#d62728'", &first);
	put_plot(gp, "checkpoints", &c->checkpoints,
		 "points pt 9 ps 1.3 lc rgb '#2ca02c'", &first);
	fputs("\n", gp);
}

int vpctl_plan_chart(const struct vpctl_chart *c)
{
	void (*old_pipe)(int) = signal(SIGPIPE, SIG_IGN);	/* gnuplot may die early */
	struct stat st;
	FILE *gp;
	int status, rc = -1;

	/* stdout: where gnuplot sends the image when it cannot open the file */
	gp = popen("exec gnuplot >/dev/null", "w");
	if (!gp) {
		fprintf(stderr, "viperctl plan: chart '%s': cannot run gnuplot: %s\n", c->path,
			strerror(errno));
		goto out_restore_pipe;
	}
	put_script(gp, c);
	status = pclose(gp);
	if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status)) {
		fprintf(stderr, "viperctl plan: chart '%s': gnuplot failed (%s %d; its message, if any, is above)\n",
			c->path, WIFEXITED(status) ? "exit status" : "signal",
			WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
	} else if (stat(c->path, &st) || st.st_size == 0) {
		fprintf(stderr, "viperctl plan: chart '%s': gnuplot wrote no image; is its pngcairo terminal there (Debian: gnuplot-nox)?\n",
			c->path);
	} else {
		rc = 0;
	}
out_restore_pipe:
	signal(SIGPIPE, old_pipe);
	return rc;
}
