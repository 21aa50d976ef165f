/*
 * losslog: reads training loss logs that jobs already write.
 *
 * Accepted: CSV with a header naming an iteration column (step, iteration,
 * iter, global_step, or epoch) and a loss column (loss, train_loss,
 * train_loss_step, training_loss, or another name with "loss" and not
 * "val"); this covers Keras CSVLogger, PyTorch Lightning CSVLogger's
 * metrics.csv (rows with an empty loss, e.g. validation rows, are skipped)
 * and plain "iter,loss".  Without a header, the first two numeric columns
 * are taken as iteration and loss.  Keras logs per epoch: its "epoch"
 * column is the iteration then (per_epoch says so; viperctl plan turns
 * epochs into iterations, the daemon measures t_iter per logged unit).
 *
 * Another value column than the loss (val_loss, accuracy) can be asked for
 * by name; strict reading refuses text that is not a number instead of
 * skipping its row, naming the line and the column.
 */
#ifndef VP_LOSSLOG_H
#define VP_LOSSLOG_H

#include <stddef.h>

struct vp_losslog {
	double *iter;
	double *loss;
	size_t n;
	char iter_column[64];	/* the names used, for messages */
	char loss_column[64];	/* the value column: the loss, or the one asked for */
	int per_epoch;		/* the iteration column is "epoch": no step column */
	size_t nonfinite;	/* rows skipped for a nan or inf value */
	size_t first_nonfinite_line;	/* 1-based line of the first of them */
};

/* How vp_losslog_read_opts() reads a log; all zero: as vp_losslog_read(). */
struct vp_losslog_opts {
	const char *column;	/* the value column by name (borrowed); NULL: the loss */
	int strict;		/* a cell that is not empty and not a number is an error */
};

/* Reads path into *log.  Returns 0 or -errno with a message in err. */
int vp_losslog_read(const char *path, struct vp_losslog *log, char *err,
		    size_t errlen);
/*
 * The same, reading the value column opts->column (may be NULL) and, if
 * opts->strict, refusing a row whose iteration or value is text that is
 * not a number (err names the file, its line and the column).  Empty
 * cells (Lightning's sparse rows), nan and inf still skip the row, and so
 * does an unterminated last line (a log being written).
 */
int vp_losslog_read_opts(const char *path, const struct vp_losslog_opts *opts,
			 struct vp_losslog *log, char *err, size_t errlen);
/* The same from len bytes in memory (a log read out of the cache). */
int vp_losslog_parse(const char *buf, size_t len, const char *name,
		     struct vp_losslog *log, char *err, size_t errlen);
/* vp_losslog_parse() with options, as vp_losslog_read_opts(). */
int vp_losslog_parse_opts(const char *buf, size_t len, const char *name,
			  const struct vp_losslog_opts *opts,
			  struct vp_losslog *log, char *err, size_t errlen);
void vp_losslog_release(struct vp_losslog *log);

#endif
