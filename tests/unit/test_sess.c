/*
 * Unit tests: session keys and sealed replication messages (sess.h) --
 * both directions open, other keys and every damaged byte are refused,
 * replays and reflections are dropped without moving the receiver.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "../../engine/proto.h"
#include "../../engine/sess.h"

#define PRODUCER_ID 1
#define CONSUMER_ID 42
#define BUF_LEN (8 << 10)

static const uint8_t secret[] = "the cluster's shared secret, 32+";
static const uint8_t salt[2 * VP_PROTO_NONCE] = {
	0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10,
	0x0f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x69, 0x78, 0x87, 0x96, 0xa5, 0xb4, 0xc3, 0xd2, 0xe1, 0xf0,
};

/* The producer (tx_first) and the consumer, as the handshake leaves them. */
struct pair {
	struct vp_sess producer, consumer;
};

static void derive_pair(struct pair *p)
{
	assert_int_equal(vp_sess_derive(&p->producer, secret, sizeof(secret), salt,
					 sizeof(salt), "p2c", CONSUMER_ID, 1), 0);
	assert_int_equal(vp_sess_derive(&p->consumer, secret, sizeof(secret), salt,
					 sizeof(salt), "p2c", CONSUMER_ID, 0), 0);
}

static int setup(void **state)
{
	struct pair *p = calloc(1, sizeof(*p));

	if (!p)
		return -1;
	derive_pair(p);
	*state = p;
	return 0;
}

static int teardown(void **state)
{
	free(*state);
	return 0;
}

/* An OP message (a payload with a path the tests can look for), encoded into buf. */
static size_t encode_op(void *buf, size_t len, uint64_t seq, const char *path)
{
	struct vp_msg *m = calloc(1, sizeof(*m));
	ssize_t n;

	assert_non_null(m);
	m->type = VP_MSG_OP;
	m->peer_id = PRODUCER_ID;
	m->u.op.seq = seq;
	m->u.op.kind = VP_OP_MKDIR;
	m->u.op.mode = 0755;
	strcpy(m->u.op.path, path);
	n = vp_msg_encode(m, buf, len);
	free(m);
	assert_true(n > VP_PROTO_HDR);
	return (size_t)n;
}

/* Seals an OP for seq with s; returns the sealed length. */
static size_t seal_op(struct vp_sess *s, uint8_t *sealed, uint64_t seq, const char *path)
{
	uint8_t plain[512];
	size_t n = encode_op(plain, sizeof(plain), seq, path);
	ssize_t rc = vp_sess_seal(s, plain, n, sealed, BUF_LEN);

	assert_int_equal(rc, (ssize_t)(n + VP_SESS_OVERHEAD));
	return (size_t)rc;
}

/* Opens in with s, expecting rc; on failure checks that s did not move but counted it. */
static void expect_open(struct vp_sess *s, const uint8_t *in, size_t len, ssize_t rc)
{
	static uint8_t out[BUF_LEN];
	struct vp_sess before = *s;
	const char *why = NULL;
	ssize_t got = vp_sess_open(s, in, len, out, sizeof(out), &why);

	if (got != rc)
		fail_msg("vp_sess_open of %zu bytes: %zd, expected %zd (%s)", len, got, rc,
			 why ? why : "no reason");
	if (rc >= 0)
		return;
	assert_non_null(why);
	assert_int_equal(s->rx.seq, before.rx.seq);
	assert_int_equal(s->tx.seq, before.tx.seq);
	assert_int_equal(s->on, before.on);
	assert_memory_equal(s->rx.key, before.rx.key, VP_SESS_KEY);
	assert_int_equal(s->dropped, before.dropped + 1);
}

static void test_both_directions_open_and_decode(void **state)
{
	struct pair *p = *state;
	uint8_t plain[512], sealed[BUF_LEN], opened[BUF_LEN];
	struct vp_msg *m = calloc(1, sizeof(*m)), *d = calloc(1, sizeof(*d));
	const char *why = NULL;
	ssize_t n, plen, slen;

	assert_non_null(m);
	assert_non_null(d);

	/* producer -> consumer: an OP; the payload is not readable on the wire */
	plen = (ssize_t)encode_op(plain, sizeof(plain), 9, "run/ckpt-1/model.pt");
	slen = vp_sess_seal(&p->producer, plain, (size_t)plen, sealed, sizeof(sealed));
	assert_int_equal(slen, plen + VP_SESS_OVERHEAD);
	assert_int_equal(p->producer.tx.seq, 1);
	assert_null(memmem(sealed, (size_t)slen, "model.pt", 8));
	assert_true(vp_sess_is_sealed(sealed, (size_t)slen));
	n = vp_sess_open(&p->consumer, sealed, (size_t)slen, opened, sizeof(opened), &why);
	assert_int_equal(n, plen);
	assert_memory_equal(opened, plain, (size_t)plen);
	assert_int_equal(p->consumer.rx.seq, 1);
	assert_int_equal(vp_msg_decode(opened, (size_t)n, d, &why), 0);
	assert_int_equal(d->type, VP_MSG_OP);
	assert_int_equal(d->peer_id, PRODUCER_ID);
	assert_int_equal(d->u.op.seq, 9);
	assert_string_equal(d->u.op.path, "run/ckpt-1/model.pt");

	/* the same message sealed again differs (a new sequence number, a new nonce) */
	assert_int_equal(vp_sess_seal(&p->producer, plain, (size_t)plen, opened, sizeof(opened)),
			 slen);
	assert_memory_not_equal(opened + VP_PROTO_HDR, sealed + VP_PROTO_HDR,
				(size_t)slen - VP_PROTO_HDR);
	assert_int_equal(vp_sess_open(&p->consumer, opened, (size_t)slen, plain, sizeof(plain),
				      NULL), plen);
	assert_int_equal(p->consumer.rx.seq, 2);

	/* consumer -> producer: a DONE, then a header-only WELCOME-shaped message */
	memset(m, 0, sizeof(*m));
	m->type = VP_MSG_DONE;
	m->peer_id = CONSUMER_ID;
	m->u.done.seq = 9;
	m->u.done.version = 3;
	m->u.done.status = -ENOSPC;
	m->u.done.from_producer = 1u << 20;
	plen = vp_msg_encode(m, plain, sizeof(plain));
	assert_true(plen > VP_PROTO_HDR);
	slen = vp_sess_seal(&p->consumer, plain, (size_t)plen, sealed, sizeof(sealed));
	assert_int_equal(slen, plen + VP_SESS_OVERHEAD);
	assert_int_equal(p->consumer.tx.seq, 1);
	n = vp_sess_open(&p->producer, sealed, (size_t)slen, opened, sizeof(opened), &why);
	assert_int_equal(n, plen);
	assert_int_equal(vp_msg_decode(opened, (size_t)n, d, &why), 0);
	assert_int_equal(d->type, VP_MSG_DONE);
	assert_int_equal(d->peer_id, CONSUMER_ID);
	assert_int_equal(d->u.done.status, -ENOSPC);
	assert_int_equal(d->u.done.from_producer, 1u << 20);

	m->type = VP_MSG_WELCOME;
	plen = vp_msg_encode(m, plain, sizeof(plain));
	assert_int_equal(plen, VP_PROTO_HDR + 8);	/* the producer's epoch */
	slen = vp_sess_seal(&p->consumer, plain, (size_t)plen, sealed, sizeof(sealed));
	assert_int_equal(slen, VP_PROTO_HDR + 8 + VP_SESS_OVERHEAD);
	n = vp_sess_open(&p->producer, sealed, (size_t)slen, opened, sizeof(opened), &why);
	assert_int_equal(n, VP_PROTO_HDR + 8);
	assert_int_equal(vp_msg_decode(opened, (size_t)n, d, &why), 0);
	assert_int_equal(d->type, VP_MSG_WELCOME);
	assert_int_equal(p->producer.rx.seq, 2);
	assert_int_equal(p->producer.dropped, 0);
	assert_int_equal(p->consumer.dropped, 0);

	/* deriving again is deterministic and starts the sequence numbers over */
	derive_pair(p);
	assert_int_equal(p->producer.tx.seq, 0);
	assert_int_equal(p->consumer.rx.seq, 0);
	slen = (ssize_t)seal_op(&p->producer, sealed, 1, "a");
	expect_open(&p->consumer, sealed, (size_t)slen, slen - VP_SESS_OVERHEAD);
	free(m);
	free(d);
}

static void test_other_keys_do_not_open(void **state)
{
	struct pair *p = *state;
	uint8_t sealed[BUF_LEN], other_secret[sizeof(secret)], other_salt[sizeof(salt)];
	struct vp_sess other;
	size_t slen = seal_op(&p->producer, sealed, 1, "a/b");

	memcpy(other_secret, secret, sizeof(secret));
	other_secret[5] ^= 1;
	memcpy(other_salt, salt, sizeof(salt));
	other_salt[sizeof(salt) - 1] ^= 0x80;

	assert_int_equal(vp_sess_derive(&other, other_secret, sizeof(other_secret), salt,
					 sizeof(salt), "p2c", CONSUMER_ID, 0), 0);
	expect_open(&other, sealed, slen, -EBADMSG);
	assert_int_equal(vp_sess_derive(&other, secret, sizeof(secret) - 1, salt,
					 sizeof(salt), "p2c", CONSUMER_ID, 0), 0);
	expect_open(&other, sealed, slen, -EBADMSG);	/* a prefix of the secret */
	assert_int_equal(vp_sess_derive(&other, secret, sizeof(secret), other_salt,
					 sizeof(other_salt), "p2c", CONSUMER_ID, 0), 0);
	expect_open(&other, sealed, slen, -EBADMSG);
	assert_int_equal(vp_sess_derive(&other, secret, sizeof(secret), salt,
					 sizeof(salt), "p2c", CONSUMER_ID + 1, 0), 0);
	expect_open(&other, sealed, slen, -EBADMSG);
	assert_int_equal(vp_sess_derive(&other, secret, sizeof(secret), salt,
					 sizeof(salt), "c2p", CONSUMER_ID, 0), 0);
	expect_open(&other, sealed, slen, -EBADMSG);
	assert_int_equal(vp_sess_derive(&other, secret, sizeof(secret), salt,
					 sizeof(salt), "p2c", CONSUMER_ID, 1), 0);
	expect_open(&other, sealed, slen, -EBADMSG);	/* the wrong direction's key */
	assert_int_equal(other.dropped, 6);

	/* and the right session still opens it */
	expect_open(&p->consumer, sealed, slen, (ssize_t)slen - VP_SESS_OVERHEAD);
	assert_int_equal(p->consumer.dropped, 0);
}

static void test_every_bit_flip_is_refused(void **state)
{
	struct pair *p = *state;
	uint8_t sealed[BUF_LEN], damaged[BUF_LEN];
	size_t slen;
	uint64_t flips = 0;

	/* two accepted first, so a flip to an older sequence number must still be a bad tag */
	for (uint64_t i = 1; i <= 2; i++) {
		slen = seal_op(&p->producer, sealed, i, "x");
		expect_open(&p->consumer, sealed, slen, (ssize_t)slen - VP_SESS_OVERHEAD);
	}
	slen = seal_op(&p->producer, sealed, 3, "run/ckpt-2/optimizer.pt");
	for (size_t byte = 0; byte < slen; byte++) {
		for (int bit = 0; bit < 8; bit++) {
			memcpy(damaged, sealed, slen);
			damaged[byte] ^= (uint8_t)(1u << bit);
			expect_open(&p->consumer, damaged, slen, -EBADMSG);
			flips++;
		}
	}
	assert_int_equal(p->consumer.dropped, flips);
	assert_int_equal(p->consumer.rx.seq, 2);
	expect_open(&p->consumer, sealed, slen, (ssize_t)slen - VP_SESS_OVERHEAD);
	assert_int_equal(p->consumer.rx.seq, 3);
}

static void test_truncated_or_extended_is_refused(void **state)
{
	struct pair *p = *state;
	uint8_t sealed[BUF_LEN], damaged[BUF_LEN];
	size_t slen = seal_op(&p->producer, sealed, 1, "some/path");

	for (size_t len = 0; len < slen; len++) {
		expect_open(&p->consumer, sealed, len, -EBADMSG);
		if (len < VP_PROTO_HDR)
			continue;
		/* with a header length that matches the cut, it is the tag that fails */
		memcpy(damaged, sealed, len);
		damaged[8] = (uint8_t)(len - VP_PROTO_HDR);
		damaged[9] = (uint8_t)((len - VP_PROTO_HDR) >> 8);
		expect_open(&p->consumer, damaged, len, -EBADMSG);
	}
	for (size_t extra = 1; extra <= 64; extra++) {
		size_t len = slen + extra;

		memcpy(damaged, sealed, slen);
		memset(damaged + slen, (int)extra, extra);
		expect_open(&p->consumer, damaged, len, -EBADMSG);
		damaged[8] = (uint8_t)(len - VP_PROTO_HDR);
		damaged[9] = (uint8_t)((len - VP_PROTO_HDR) >> 8);
		expect_open(&p->consumer, damaged, len, -EBADMSG);
	}
	assert_int_equal(p->consumer.rx.seq, 0);
	expect_open(&p->consumer, sealed, slen, (ssize_t)slen - VP_SESS_OVERHEAD);
}

static void test_replays_are_dropped(void **state)
{
	struct pair *p = *state;
	uint8_t first[BUF_LEN], second[BUF_LEN], third[BUF_LEN], out[BUF_LEN];
	size_t len1 = seal_op(&p->producer, first, 1, "one/secret-name");
	size_t len2 = seal_op(&p->producer, second, 2, "two");
	size_t len3 = seal_op(&p->producer, third, 3, "three");
	const char *why = NULL;

	expect_open(&p->consumer, first, len1, (ssize_t)len1 - VP_SESS_OVERHEAD);
	assert_int_equal(p->consumer.rx.seq, 1);
	expect_open(&p->consumer, first, len1, -EALREADY);
	assert_int_equal(p->consumer.rx.seq, 1);

	/* a gap is fine (ours to drop); going back is not */
	expect_open(&p->consumer, third, len3, (ssize_t)len3 - VP_SESS_OVERHEAD);
	assert_int_equal(p->consumer.rx.seq, 3);
	expect_open(&p->consumer, second, len2, -EALREADY);
	expect_open(&p->consumer, first, len1, -EALREADY);
	expect_open(&p->consumer, third, len3, -EALREADY);
	assert_int_equal(p->consumer.rx.seq, 3);
	assert_int_equal(p->consumer.dropped, 4);

	/* a refused replay leaves no plaintext behind in out */
	memset(out, 0xa5, sizeof(out));
	assert_int_equal(vp_sess_open(&p->consumer, first, len1, out, sizeof(out), &why),
			 -EALREADY);
	assert_non_null(why);
	assert_null(memmem(out, sizeof(out), "secret-name", 11));
}

/*
 * A message the transport did not take gives its number back: the next one
 * is sealed with it, so the receiver sees no gap, and the one taken back
 * can never be opened after it.
 */
static void test_unseal_gives_the_number_back(void **state)
{
	struct pair *p = *state;
	uint8_t untaken[BUF_LEN], next[BUF_LEN], after[BUF_LEN];
	size_t len0 = seal_op(&p->producer, untaken, 1, "not-sent");
	size_t len1, len2;

	assert_int_equal(p->producer.tx.seq, 1);
	vp_sess_unseal(&p->producer);
	assert_int_equal(p->producer.tx.seq, 0);
	len1 = seal_op(&p->producer, next, 1, "sent");
	len2 = seal_op(&p->producer, after, 2, "sent-too");
	expect_open(&p->consumer, next, len1, (ssize_t)len1 - VP_SESS_OVERHEAD);
	assert_int_equal(p->consumer.rx.seq, 1);
	expect_open(&p->consumer, untaken, len0, -EALREADY);
	expect_open(&p->consumer, after, len2, (ssize_t)len2 - VP_SESS_OVERHEAD);
	assert_int_equal(p->consumer.rx.seq, 2);

	/* without a session there is no number to give back */
	vp_sess_clear(&p->producer);
	vp_sess_unseal(&p->producer);
	assert_int_equal(p->producer.tx.seq, 0);
}

static void test_reflected_message_is_refused(void **state)
{
	struct pair *p = *state;
	uint8_t sealed[BUF_LEN];
	size_t slen;

	slen = seal_op(&p->producer, sealed, 1, "a");
	expect_open(&p->producer, sealed, slen, -EBADMSG);
	slen = seal_op(&p->consumer, sealed, 1, "b");
	expect_open(&p->consumer, sealed, slen, -EBADMSG);
	assert_int_equal(p->producer.rx.seq, 0);
	assert_int_equal(p->consumer.rx.seq, 0);
	/* each still opens where it was meant to go */
	expect_open(&p->producer, sealed, slen, (ssize_t)slen - VP_SESS_OVERHEAD);
}

static void test_unsealed_message_is_refused(void **state)
{
	struct pair *p = *state;
	uint8_t plain[BUF_LEN], forged[BUF_LEN];
	size_t n = encode_op(plain, sizeof(plain), 1, "a/plain/message");

	assert_false(vp_sess_is_sealed(plain, n));
	expect_open(&p->consumer, plain, n, -EBADMSG);

	/* one that claims to be sealed, with a length that matches, but no real tag */
	memcpy(forged, plain, n);
	memset(forged + n, 0, VP_SESS_OVERHEAD);
	forged[7] |= VP_SESS_SEALED >> 8;
	forged[8] = (uint8_t)(n + VP_SESS_OVERHEAD - VP_PROTO_HDR);
	forged[9] = (uint8_t)((n + VP_SESS_OVERHEAD - VP_PROTO_HDR) >> 8);
	assert_true(vp_sess_is_sealed(forged, n + VP_SESS_OVERHEAD));
	expect_open(&p->consumer, forged, n + VP_SESS_OVERHEAD, -EBADMSG);
	assert_int_equal(p->consumer.dropped, 2);
	assert_int_equal(p->consumer.rx.seq, 0);
}

static void test_dropped_counts_every_failure(void **state)
{
	struct pair *p = *state;
	uint8_t sealed[BUF_LEN], out[BUF_LEN];
	size_t slen = seal_op(&p->producer, sealed, 1, "a");

	assert_int_equal(p->consumer.dropped, 0);
	assert_true(vp_sess_open(&p->consumer, sealed, slen - 1, out, sizeof(out), NULL) < 0);
	assert_int_equal(p->consumer.dropped, 1);
	assert_true(vp_sess_open(&p->producer, sealed, slen, out, sizeof(out), NULL) < 0);
	assert_int_equal(p->producer.dropped, 1);
	assert_int_equal(vp_sess_open(&p->consumer, sealed, slen, out, sizeof(out), NULL),
			 (ssize_t)slen - VP_SESS_OVERHEAD);
	assert_int_equal(p->consumer.dropped, 1);	/* a success is not counted */
	assert_true(vp_sess_open(&p->consumer, sealed, slen, out, sizeof(out), NULL) < 0);
	assert_int_equal(p->consumer.dropped, 2);
	assert_true(vp_sess_open(&p->consumer, sealed, 3, out, sizeof(out), NULL) < 0);
	assert_int_equal(p->consumer.dropped, 3);
	/* sealing never counts */
	assert_int_equal(p->producer.dropped, 1);
}

static void test_is_sealed(void **state)
{
	struct pair *p = *state;
	uint8_t plain[BUF_LEN], sealed[BUF_LEN];
	size_t n = encode_op(plain, sizeof(plain), 1, "a");
	size_t slen = seal_op(&p->producer, sealed, 1, "a");

	assert_false(vp_sess_is_sealed(plain, n));
	assert_false(vp_sess_is_sealed(plain, VP_PROTO_HDR));
	assert_true(vp_sess_is_sealed(sealed, slen));
	assert_true(vp_sess_is_sealed(sealed, VP_PROTO_HDR));	/* the header alone says so */
	assert_false(vp_sess_is_sealed(sealed, VP_PROTO_HDR - 1));
	assert_false(vp_sess_is_sealed(NULL, 0));
	/* the flag is the type's top bit, and nothing else */
	plain[7] |= VP_SESS_SEALED >> 8;
	assert_true(vp_sess_is_sealed(plain, n));
	sealed[7] &= (uint8_t)~(VP_SESS_SEALED >> 8);
	assert_false(vp_sess_is_sealed(sealed, slen));
}

static void test_message_that_does_not_fit(void **state)
{
	struct pair *p = *state;
	uint8_t plain[BUF_LEN], sealed[BUF_LEN], out[BUF_LEN];
	size_t n = encode_op(plain, sizeof(plain), 1, "does/it/fit");
	ssize_t slen;

	/* sealing: one byte short of the overhead is -EMSGSIZE and sends nothing */
	assert_int_equal(vp_sess_seal(&p->producer, plain, n, sealed, n + VP_SESS_OVERHEAD - 1),
			 -EMSGSIZE);
	assert_int_equal(vp_sess_seal(&p->producer, plain, n, sealed, 0), -EMSGSIZE);
	assert_int_equal(vp_sess_seal(&p->producer, plain, VP_PROTO_HDR - 1, sealed,
				      sizeof(sealed)), -EINVAL);
	assert_int_equal(p->producer.tx.seq, 0);
	slen = vp_sess_seal(&p->producer, plain, n, sealed, n + VP_SESS_OVERHEAD);
	assert_int_equal(slen, (ssize_t)(n + VP_SESS_OVERHEAD));
	assert_int_equal(p->producer.tx.seq, 1);

	/*
	 * opening into an out one byte too small is refused (sess.h: -EBADMSG,
	 * "malformed"), and leaves the message to open later
	 */
	assert_int_equal(vp_sess_open(&p->consumer, sealed, (size_t)slen, out, n - 1, NULL),
			 -EBADMSG);
	assert_int_equal(p->consumer.rx.seq, 0);
	assert_int_equal(vp_sess_open(&p->consumer, sealed, (size_t)slen, out, n, NULL),
			 (ssize_t)n);
	assert_memory_equal(out, plain, n);
	assert_int_equal(p->consumer.rx.seq, 1);
}

static void test_clear_forgets_the_keys(void **state)
{
	struct pair *p = *state;
	static const uint8_t zero[sizeof(struct vp_sess)];
	uint8_t sealed[BUF_LEN];
	size_t slen = seal_op(&p->producer, sealed, 1, "a");
	struct vp_sess kept = p->consumer;

	vp_sess_clear(&p->consumer);
	assert_int_equal(p->consumer.on, 0);
	assert_memory_equal(p->consumer.rx.key, zero, VP_SESS_KEY);
	assert_memory_equal(p->consumer.tx.key, zero, VP_SESS_KEY);
	assert_memory_equal(&p->consumer, zero, sizeof(p->consumer));
	expect_open(&p->consumer, sealed, slen, -EBADMSG);

	/* the message itself was fine: a copy of the session from before opens it */
	expect_open(&kept, sealed, slen, (ssize_t)slen - VP_SESS_OVERHEAD);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_both_directions_open_and_decode, setup, teardown),
		cmocka_unit_test_setup_teardown(test_other_keys_do_not_open, setup, teardown),
		cmocka_unit_test_setup_teardown(test_every_bit_flip_is_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_truncated_or_extended_is_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_replays_are_dropped, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unseal_gives_the_number_back, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reflected_message_is_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unsealed_message_is_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dropped_counts_every_failure, setup, teardown),
		cmocka_unit_test_setup_teardown(test_is_sealed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_message_that_does_not_fit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_clear_forgets_the_keys, setup, teardown),
	};
	return cmocka_run_group_tests_name("sess", tests, NULL, NULL);
}
