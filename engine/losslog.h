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
 * column is the iteration then.
 */
#ifndef VP_LOSSLOG_H
#define VP_LOSSLOG_H

#include <stddef.h>

struct vp_losslog {
	double *iter;
	double *loss;
	size_t n;
	char iter_column[64];	/* the names used, for messages */
	char loss_column[64];
};

/* Reads path into *log.  Returns 0 or -errno with a message in err. */
int vp_losslog_read(const char *path, struct vp_losslog *log, char *err,
		    size_t errlen);
/* The same from len bytes in memory (a log read out of the cache). */
int vp_losslog_parse(const char *buf, size_t len, const char *name,
		     struct vp_losslog *log, char *err, size_t errlen);
void vp_losslog_release(struct vp_losslog *log);

#endif
