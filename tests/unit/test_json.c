#define _GNU_SOURCE
/*
 * Unit tests: JSON text from jansson through engine/json.h -- names of any
 * bytes (invalid UTF-8 as \u00XX, as the daemon always wrote them), numbers
 * that are not finite.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../engine/json.h"

/* The literal vp_json_name(s) dumps to, as a new string the caller frees. */
static char *literal(const char *s)
{
	json_t *j = vp_json_name(s);
	char *text;

	assert_non_null(j);
	text = vp_json_line(j);
	assert_non_null(text);
	assert_int_equal(text[strlen(text) - 1], '\n');
	text[strlen(text) - 1] = '\0';
	return text;
}

static void expect(const char *in, const char *want)
{
	char *got = literal(in);

	if (strcmp(got, want))
		fail_msg("vp_json_name(\"%s\"): got %s, want %s", in, got, want);
	free(got);
}

static void test_plain_and_empty(void **state)
{
	(void)state;
	expect("", "\"\"");
	expect("nt3/model.pt", "\"nt3/model.pt\"");
	expect("~ and \x7f", "\"~ and \x7f\"");
}

static void test_quotes_backslashes_controls(void **state)
{
	(void)state;
	expect("a\"b\\c", "\"a\\\"b\\\\c\"");
	expect("\n\t\x01\x1f", "\"\\n\\t\\u0001\\u001F\"");	/* as jansson writes them */
	expect("/ stays", "\"/ stays\"");
}

static void test_valid_utf8_is_copied(void **state)
{
	(void)state;
	expect("caf\xc3\xa9", "\"caf\xc3\xa9\"");			/* U+00E9 */
	expect("\xc2\x80", "\"\xc2\x80\"");				/* U+0080, the first 2-byte */
	expect("\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80",		/* U+0800, U+D7FF, U+E000 */
	       "\"\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80\"");
	expect("\xef\xbf\xbf", "\"\xef\xbf\xbf\"");			/* U+FFFF */
	expect("\xf0\x9f\x98\x80", "\"\xf0\x9f\x98\x80\"");		/* U+1F600 */
	expect("\xf4\x8f\xbf\xbf", "\"\xf4\x8f\xbf\xbf\"");		/* U+10FFFF */
}

static void test_invalid_bytes_are_escaped(void **state)
{
	(void)state;
	expect("bad\xff\xfename", "\"bad\\u00ff\\u00fename\"");
	expect("\x80", "\"\\u0080\"");				/* a lone continuation */
	expect("\xbf\xbf", "\"\\u00bf\\u00bf\"");
	expect("\xf5\x80\x80\x80", "\"\\u00f5\\u0080\\u0080\\u0080\"");	/* past F4 */
}

static void test_overlong_and_surrogates_are_invalid(void **state)
{
	(void)state;
	expect("\xc0\xaf", "\"\\u00c0\\u00af\"");			/* '/' in 2 bytes */
	expect("\xc1\xbf", "\"\\u00c1\\u00bf\"");
	expect("\xe0\x80\xaf", "\"\\u00e0\\u0080\\u00af\"");		/* '/' in 3 bytes */
	expect("\xe0\x9f\xbf", "\"\\u00e0\\u009f\\u00bf\"");		/* U+07FF in 3 bytes */
	expect("\xf0\x80\x80\xaf", "\"\\u00f0\\u0080\\u0080\\u00af\"");
	expect("\xf0\x8f\xbf\xbf", "\"\\u00f0\\u008f\\u00bf\\u00bf\"");	/* U+FFFF in 4 bytes */
	expect("\xed\xa0\x80", "\"\\u00ed\\u00a0\\u0080\"");		/* U+D800 */
	expect("\xed\xbf\xbf", "\"\\u00ed\\u00bf\\u00bf\"");		/* U+DFFF */
	expect("\xf4\x90\x80\x80", "\"\\u00f4\\u0090\\u0080\\u0080\"");	/* U+110000 */
}

static void test_truncated_sequences(void **state)
{
	(void)state;
	/* the bytes after a broken start are judged on their own */
	expect("\xe2\x82", "\"\\u00e2\\u0082\"");
	expect("\xe2\x82" "A", "\"\\u00e2\\u0082A\"");
	expect("\xf0\x9f\x98", "\"\\u00f0\\u009f\\u0098\"");
	expect("\xc3" "\xc3\xa9", "\"\\u00c3\xc3\xa9\"");
	expect("\xe2\x82\"", "\"\\u00e2\\u0082\\\"\"");
}

/* What only looks like a mark stays what it is. */
static void test_marks_are_only_ours(void **state)
{
	(void)state;
	expect("\\u0000\xc3\xbf", "\"\\\\u0000\xc3\xbf\"");	/* a backslash, then "u0000\u00ff" */
	expect("\xff\xc3\xbf", "\"\\u00ff\xc3\xbf\"");		/* the byte 0xff, then U+00FF */
	expect("\x01\xc3\xbf", "\"\\u0001\xc3\xbf\"");
}

/* Marked names inside objects and arrays, beside other strings and numbers. */
static void test_names_in_documents(void **state)
{
	json_t *j = json_pack("{s:o,s:[o,s],s:I}", "path", vp_json_name("bad\xff\xfename"),
			      "list", vp_json_name("\x80"), "plain\xc3\xa9", "n", (json_int_t)7);
	char *text;

	(void)state;
	assert_non_null(j);
	text = vp_json_line(j);
	assert_string_equal(text, "{\"path\":\"bad\\u00ff\\u00fename\","
			    "\"list\":[\"\\u0080\",\"plain\xc3\xa9\"],\"n\":7}\n");
	free(text);
}

/* JSON has no NaN or infinity: such a number is null, the document still JSON. */
static void test_non_finite_numbers_are_null(void **state)
{
	json_t *j = json_pack("{s:o,s:o,s:o,s:o}", "nan", vp_json_real(NAN),
			      "inf", vp_json_real(INFINITY), "minf", vp_json_real(-INFINITY),
			      "half", vp_json_real(0.5));
	char *text;

	(void)state;
	assert_non_null(j);
	text = vp_json_line(j);
	assert_string_equal(text, "{\"nan\":null,\"inf\":null,\"minf\":null,\"half\":0.5}\n");
	free(text);
}

/* Every byte string of length 1 and 2: the output is printable ASCII or valid UTF-8. */
static void test_every_short_input_is_text(void **state)
{
	char in[3] = "";

	(void)state;
	for (int a = 1; a < 256; a++) {
		for (int b = 0; b < 256; b++) {
			char *got;

			in[0] = (char)a;
			in[1] = (char)b;
			got = literal(in);
			for (const unsigned char *p = (const unsigned char *)got; *p; p++) {
				if (*p < 0x20)
					fail_msg("0x%02x 0x%02x: a raw control byte in %s", a, b, got);
				/* a raw non-ASCII byte is only ever a copied valid pair */
				if (*p >= 0x80 && !(a >= 0xc2 && a <= 0xdf && b >= 0x80 && b <= 0xbf))
					fail_msg("0x%02x 0x%02x: a raw byte 0x%02x in the output", a, b, *p);
			}
			free(got);
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_plain_and_empty),
		cmocka_unit_test(test_quotes_backslashes_controls),
		cmocka_unit_test(test_valid_utf8_is_copied),
		cmocka_unit_test(test_invalid_bytes_are_escaped),
		cmocka_unit_test(test_overlong_and_surrogates_are_invalid),
		cmocka_unit_test(test_truncated_sequences),
		cmocka_unit_test(test_every_short_input_is_text),
		cmocka_unit_test(test_marks_are_only_ours),
		cmocka_unit_test(test_names_in_documents),
		cmocka_unit_test(test_non_finite_numbers_are_null),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
