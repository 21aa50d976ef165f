/*
 * Unit tests: the loss log reader (engine/losslog.h), on the formats
 * training jobs write and on input it must refuse with a clear message.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../engine/losslog.h"

static struct vp_losslog parse_ok(const char *text)
{
	struct vp_losslog log;
	char err[256] = "";

	if (vp_losslog_parse(text, strlen(text), "log.csv", &log, err, sizeof(err)))
		fail_msg("refused: %s", err);
	return log;
}

/* Parses text, expects -EINVAL and an error naming the log and containing want. */
static void parse_refused(const char *text, const char *want)
{
	struct vp_losslog log;
	char err[256] = "";

	assert_int_equal(vp_losslog_parse(text, strlen(text), "log.csv", &log, err, sizeof(err)),
			 -EINVAL);
	assert_non_null(strstr(err, "log.csv"));
	if (!strstr(err, want))
		fail_msg("'%s' does not say '%s'", err, want);
	assert_int_equal(log.n, 0);
	assert_null(log.iter);
	assert_null(log.loss);
}

static void test_plain_iter_loss(void **state)
{
	struct vp_losslog log = parse_ok("iter,loss\n0,2.5\n10,2.0\n20,1.5\n30,1.25\n");

	(void)state;
	assert_int_equal(log.n, 4);
	assert_string_equal(log.iter_column, "iter");
	assert_string_equal(log.loss_column, "loss");
	assert_true(log.iter[3] == 30.0);
	assert_true(log.loss[0] == 2.5 && log.loss[3] == 1.25);
	vp_losslog_release(&log);
	assert_null(log.iter);
	assert_int_equal(log.n, 0);
}

static void test_keras_epoch_column(void **state)
{
	/* Keras CSVLogger: per epoch, with val_loss beside loss */
	struct vp_losslog log = parse_ok("epoch,accuracy,loss,val_accuracy,val_loss\n"
					 "0,0.5,0.9,0.4,1.0\n1,0.6,0.7,0.5,0.9\n"
					 "2,0.7,0.5,0.6,0.8\n3,0.8,0.4,0.7,0.7\n");

	(void)state;
	assert_int_equal(log.n, 4);
	assert_string_equal(log.iter_column, "epoch");
	assert_string_equal(log.loss_column, "loss");	/* not val_loss */
	assert_true(log.loss[1] == 0.7);
	vp_losslog_release(&log);
}

static void test_lightning_skips_validation_rows(void **state)
{
	/* PyTorch Lightning metrics.csv: validation rows have an empty train loss */
	struct vp_losslog log = parse_ok("epoch,step,train_loss_step,val_loss\n"
					 "0,49,0.9,\n0,49,,1.1\n0,99,0.8,\n0,99,,1.0\n"
					 "1,149,0.7,\n1,199,0.6,\n");

	(void)state;
	assert_int_equal(log.n, 4);
	assert_string_equal(log.iter_column, "step");	/* step before epoch */
	assert_string_equal(log.loss_column, "train_loss_step");
	assert_true(log.iter[0] == 49.0 && log.iter[3] == 199.0);
	assert_true(log.loss[3] == 0.6);
	vp_losslog_release(&log);
}

static void test_other_loss_name_quotes_and_crlf(void **state)
{
	struct vp_losslog log = parse_ok("\"global_step\", \"my_total_loss\"\r\n"
					 "1, 4\r\n2, 3\r\n3, 2\r\n4, 1\r\n");

	(void)state;
	assert_int_equal(log.n, 4);
	assert_string_equal(log.iter_column, "global_step");
	assert_string_equal(log.loss_column, "my_total_loss");
	assert_true(log.iter[2] == 3.0 && log.loss[2] == 2.0);
	vp_losslog_release(&log);
}

static void test_no_header_and_no_iteration_column(void **state)
{
	struct vp_losslog log = parse_ok("5,0.5\n6,0.4\n7,0.3\n8,0.2\n");

	(void)state;
	assert_int_equal(log.n, 4);	/* the first line is data, not a header */
	assert_string_equal(log.iter_column, "column 1");
	assert_true(log.iter[0] == 5.0 && log.loss[0] == 0.5);
	vp_losslog_release(&log);

	log = parse_ok("wall_time,loss\n1.5,3\n2.5,2\n3.5,1\n4.5,0.5\n");
	assert_string_equal(log.iter_column, "(row number)");
	assert_true(log.iter[0] == 0.0 && log.iter[3] == 3.0);	/* rows are counted */
	vp_losslog_release(&log);
}

static void test_malformed_rows_are_skipped(void **state)
{
	struct vp_losslog log = parse_ok("iter,loss\n1,0.9\n2,nan\n3,inf\nx,0.5\n4\n"
					 "5,0.5abc\n6,0.4\n7,0.3\n8,0.2\n");

	(void)state;
	assert_int_equal(log.n, 4);	/* nan, inf, x, a short row, 0.5abc: skipped */
	assert_true(log.iter[1] == 6.0);
	vp_losslog_release(&log);
}

static void test_refusals(void **state)
{
	(void)state;
	parse_refused("", "empty");
	parse_refused("iter,accuracy,val_loss\n1,0.5,0.9\n", "no loss column");
	parse_refused("1\n2\n3\n4\n", "iteration,loss");
	parse_refused("iter,loss\n1,0.9\n2,0.8\n3,0.7\n", "3 usable rows");
	parse_refused("iter,loss\n", "0 usable rows");
}

/* Parses text with opts, expects -EINVAL and an error containing want. */
static void opts_refused(const char *text, const struct vp_losslog_opts *opts,
			 const char *want)
{
	struct vp_losslog log;
	char err[256] = "";

	assert_int_equal(vp_losslog_parse_opts(text, strlen(text), "log.csv", opts, &log, err,
					       sizeof(err)), -EINVAL);
	if (!strstr(err, "log.csv") || !strstr(err, want))
		fail_msg("'%s' does not name log.csv and say '%s'", err, want);
	assert_int_equal(log.n, 0);
	assert_null(log.iter);
}

static void test_column_option(void **state)
{
	const char *keras = "epoch,accuracy,loss,val_accuracy,val_loss\n"
			    "0,0.5,0.9,0.4,1.0\n1,0.6,0.7,0.5,0.95\n"
			    "2,0.7,0.5,0.6,0.8\n3,0.8,0.4,0.7,0.7\n";
	const char *acc = "step,accuracy\n1,0.1\n2,0.3\n3,0.5\n4,0.6\n";
	struct vp_losslog_opts opts = { .column = "VAL_LOSS", .strict = 1 };
	struct vp_losslog log;
	char err[256] = "";

	(void)state;
	assert_int_equal(vp_losslog_parse_opts(keras, strlen(keras), "log.csv", &opts, &log,
					       err, sizeof(err)), 0);
	assert_string_equal(log.loss_column, "val_loss");	/* the header's spelling */
	assert_true(log.per_epoch);
	assert_true(log.loss[1] == 0.95 && log.iter[3] == 3.0);
	vp_losslog_release(&log);

	/* an accuracy-only log is read when its column is named */
	opts.column = "accuracy";
	assert_int_equal(vp_losslog_parse_opts(acc, strlen(acc), "log.csv", &opts, &log, err, sizeof(err)), 0);
	assert_false(log.per_epoch);	/* step, not epoch */
	assert_true(log.loss[3] == 0.6);
	vp_losslog_release(&log);

	opts.column = "val_los";
	opts_refused(keras, &opts, "no column 'val_los' in its header (columns: epoch, accuracy, loss");
	opts.column = "epoch";
	opts_refused(keras, &opts, "is the iteration column");
	opts.column = "loss";
	opts_refused("1,0.5\n2,0.4\n3,0.3\n4,0.2\n", &opts, "no header line");
	opts.column = NULL;
	opts_refused("step,accuracy\n1,0.5\n", &opts, "columns: step, accuracy");
}

static void test_strict_names_line_and_column(void **state)
{
	struct vp_losslog_opts strict = { .strict = 1 };
	struct vp_losslog log;
	char err[256] = "";
	/* Lightning's sparse rows (empty cells) and a diverged loss (nan) are not errors */
	const char *ok = "epoch,step,train_loss,val_loss\n0,1,0.9,\n0,1,,1.1\n0,2,nan,\n"
			 "0,3,0.7,\n0,4,inf,\n0,5,0.6,\n1,6,0.5,\n1,7,0.4";
	const char *partial = "iter,loss\n1,4\n2,3\n3,2\n4,1\n5,0.";
	const char *garbled = "iter,loss\n1,4\n2,3\n3,2\n4,1\n5,1e";

	(void)state;
	assert_int_equal(vp_losslog_parse_opts(ok, strlen(ok), "log.csv", &strict, &log, err,
					       sizeof(err)), 0);
	assert_int_equal(log.n, 5);
	assert_int_equal(log.nonfinite, 2);
	assert_int_equal(log.first_nonfinite_line, 4);
	vp_losslog_release(&log);

	opts_refused("iter,loss\n1,0.9\n2,0.8\n3,0.5abc\n4,0.4\n5,0.3\n", &strict,
		     "line 4, column 2 ('loss'): '0.5abc' is not a number");
	opts_refused("iter,loss\n1,0.9\nx,0.8\n3,0.5\n4,0.4\n5,0.3\n", &strict,
		     "line 3, column 1 ('iter'): 'x' is not a number");
	/* without a header the first line is line 1 */
	opts_refused("1,0.9\n2,0.8\n3,?\n4,0.4\n5,0.3\n", &strict, "line 3, column 2");
	/* an unterminated last line is a log being written: skipped, not refused */
	assert_int_equal(vp_losslog_parse_opts(partial, strlen(partial), "log.csv", &strict, &log, err, sizeof(err)), 0);
	assert_int_equal(log.n, 5);
	vp_losslog_release(&log);
	assert_int_equal(vp_losslog_parse_opts(garbled, strlen(garbled), "log.csv", &strict, &log, err, sizeof(err)), 0);
	assert_int_equal(log.n, 4);
	vp_losslog_release(&log);
}

static void test_read_from_a_file(void **state)
{
	char path[] = "/tmp/vp-test-losslog-XXXXXX";
	const char *text = "step,loss\n1,4\n2,3\n3,2\n4,1\n5,0.5\n";
	struct vp_losslog log;
	char err[256] = "";
	int fd = mkstemp(path);

	(void)state;
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	assert_int_equal(vp_losslog_read(path, &log, err, sizeof(err)), 0);
	assert_int_equal(log.n, 5);
	vp_losslog_release(&log);
	unlink(path);
	assert_int_equal(vp_losslog_read(path, &log, err, sizeof(err)), -ENOENT);
	assert_non_null(strstr(err, path));
	assert_int_equal(log.n, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_plain_iter_loss),
		cmocka_unit_test(test_keras_epoch_column),
		cmocka_unit_test(test_lightning_skips_validation_rows),
		cmocka_unit_test(test_other_loss_name_quotes_and_crlf),
		cmocka_unit_test(test_no_header_and_no_iteration_column),
		cmocka_unit_test(test_malformed_rows_are_skipped),
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_column_option),
		cmocka_unit_test(test_strict_names_line_and_column),
		cmocka_unit_test(test_read_from_a_file),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
