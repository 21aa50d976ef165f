/*
 * libFuzzer target for the session layer, sealed messages (make fuzz).
 * Every input is used three ways, against one session pair derived once:
 *
 *  - as a message off the wire: opening it must fail with -EBADMSG and
 *    leave the receiver as it was, unless it is a genuine seal (sealing
 *    what came out again, at its sequence number, gives back the input);
 *  - as a message to seal: it must open on the other side into itself,
 *    exactly once;
 *  - as a program: the first two bytes split it into a message to seal
 *    twice (sequence numbers 1 and 2) and a list of mutations of the
 *    sealed bytes (flip, set, insert, delete, truncate, append, splice
 *    from the other seal, fix up the length, start over).  After each
 *    mutation the receiver opens the result, and must accept exactly the
 *    unmodified seals, each once and in order; everything else is
 *    -EBADMSG, an unmodified seal seen before is -EALREADY.  The sender
 *    must never open its own messages.
 *
 * A violation aborts, with what was violated on stderr.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../engine/proto.h"
#include "../../engine/sess.h"

#define MAX_MSG (1 << 17)	/* make fuzz runs with -max_len=65536 */
#define MAX_MUTATIONS 256

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct vp_sess producer0, consumer0;	/* as derived; each input starts from copies */

static void violated(const char *what)
{
	fprintf(stderr, "fuzz_sess: %s\n", what);
	abort();
}

static void derive_once(void)
{
	static const uint8_t secret[32] = "fuzz_sess: the shared secret";
	static const uint8_t salt[2 * VP_PROTO_NONCE] = "two nonces, one of each side";
	static int derived;

	if (derived)
		return;
	if (vp_sess_derive(&producer0, secret, sizeof(secret), salt, sizeof(salt), "p2c", 42, 1) ||
	    vp_sess_derive(&consumer0, secret, sizeof(secret), salt, sizeof(salt), "p2c", 42, 0))
		violated("vp_sess_derive failed");
	derived = 1;
}

static uint64_t get_le(const uint8_t *p, int n)
{
	uint64_t v = 0;

	for (int i = 0; i < n; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

/*
 * out[0..n) is what opening a seal of plain[0..len) must give: plain, but
 * with the type's sealed flag clear and the payload length made right.
 */
static void expect_plain(const uint8_t *out, ssize_t n, const uint8_t *plain, size_t len)
{
	if (n != (ssize_t)len)
		violated("opened length is not the sealed message's");
	if (memcmp(out, plain, 6) || memcmp(out + 12, plain + 12, len - 12))
		violated("opened bytes differ from what was sealed");
	if (get_le(out + 6, 2) != (get_le(plain + 6, 2) & ~VP_SESS_SEALED))
		violated("opened type is not the sealed one's");
	if (get_le(out + 8, 4) != len - VP_PROTO_HDR)
		violated("opened payload length is wrong");
}

/* Bytes off the wire: only a genuine seal of sender's may open at receiver. */
static void open_arbitrary(const struct vp_sess *receiver0, const struct vp_sess *sender0,
			   const uint8_t *data, size_t size)
{
	static uint8_t out[MAX_MSG], resealed[MAX_MSG + VP_SESS_OVERHEAD];
	struct vp_sess receiver = *receiver0, sender = *sender0;
	const char *why = NULL;
	ssize_t n = vp_sess_open(&receiver, data, size, out, sizeof(out), &why);

	if (n < 0) {
		if (n != -EBADMSG)	/* -EALREADY: a genuine seal of seq 0, never sent */
			violated("arbitrary bytes: an error other than -EBADMSG");
		if (!why || receiver.rx.seq != 0 || receiver.dropped != 1)
			violated("arbitrary bytes: a refusal without a reason, or that moved rx");
		return;
	}
	sender.tx.seq = get_le(data + VP_PROTO_HDR, 8) - 1;
	if (vp_sess_seal(&sender, out, (size_t)n, resealed, sizeof(resealed)) != (ssize_t)size ||
	    memcmp(resealed, data, size))
		violated("arbitrary bytes opened, but are not a seal of the sender's");
}

/* The input as a message to seal: it opens into itself, once. */
static void seal_and_open(const uint8_t *data, size_t size)
{
	static uint8_t sealed[MAX_MSG + VP_SESS_OVERHEAD], out[MAX_MSG];
	struct vp_sess producer = producer0, consumer = consumer0;
	static struct vp_msg plain_msg, opened_msg;
	const char *why;
	ssize_t n, m;

	n = vp_sess_seal(&producer, data, size, sealed, sizeof(sealed));
	if (size < VP_PROTO_HDR) {
		if (n != -EINVAL)
			violated("sealing less than a header did not give -EINVAL");
		return;
	}
	if (n != (ssize_t)(size + VP_SESS_OVERHEAD) || producer.tx.seq != 1 ||
	    !vp_sess_is_sealed(sealed, (size_t)n))
		violated("sealed length, sequence number or flag is wrong");
	m = vp_sess_open(&consumer, sealed, (size_t)n, out, sizeof(out), &why);
	expect_plain(out, m, data, size);
	if (consumer.rx.seq != 1)
		violated("rx.seq did not move to the opened message's");
	/* a valid message comes out as itself, and decodes the same */
	if (!vp_msg_decode(data, size, &plain_msg, &why)) {
		if (memcmp(out, data, size) || vp_msg_decode(out, (size_t)m, &opened_msg, &why))
			violated("a valid message did not open into itself");
	}
	if (vp_sess_open(&consumer, sealed, (size_t)n, out, sizeof(out), &why) != -EALREADY ||
	    consumer.rx.seq != 1)
		violated("a replay was not refused with -EALREADY");
	if (vp_sess_open(&producer, sealed, (size_t)n, out, sizeof(out), &why) != -EBADMSG)
		violated("the sender opened its own message");
}

struct program {
	uint8_t plain[MAX_MSG];
	size_t plain_len;
	uint8_t orig[2][MAX_MSG + VP_SESS_OVERHEAD];	/* sealed with seq 1 and 2 */
	size_t orig_len[2];
	uint8_t cur[MAX_MSG + VP_SESS_OVERHEAD + MAX_MUTATIONS];
	size_t cur_len;
	int last_accepted;	/* 0: none, else 1 or 2 */
	int accepted[2];
};

/* The plaintext: the input's bytes if a header's worth, else a HEARTBEAT made of them. */
static void build_plain(struct program *p, const uint8_t *part, size_t len)
{
	struct vp_msg m = { .type = VP_MSG_HEARTBEAT, .peer_id = 1 };
	ssize_t n;

	if (len >= VP_PROTO_HDR) {
		memcpy(p->plain, part, len);
		p->plain_len = len;
		return;
	}
	for (size_t i = 0; i < len && i < 8; i++)
		m.u.heartbeat.latest_seq |= (uint64_t)part[i] << (8 * i);
	n = vp_msg_encode(&m, p->plain, sizeof(p->plain));
	if (n < VP_PROTO_HDR)
		violated("encoding a HEARTBEAT failed");
	p->plain_len = (size_t)n;
}

/* Opens p->cur at the consumer and checks the outcome against the originals. */
static void check_open(struct program *p, struct vp_sess *producer, struct vp_sess *consumer)
{
	static uint8_t out[MAX_MSG + VP_SESS_OVERHEAD + MAX_MUTATIONS];
	struct vp_sess before = *consumer;
	const char *why = NULL;
	ssize_t n, expected = -EBADMSG;
	int which = -1;

	for (int i = 0; i < 2; i++)
		if (p->cur_len == p->orig_len[i] && !memcmp(p->cur, p->orig[i], p->cur_len))
			which = i;
	if (which >= 0)
		expected = which + 1 > p->last_accepted ? (ssize_t)p->plain_len : -EALREADY;
	n = vp_sess_open(consumer, p->cur, p->cur_len, out, sizeof(out), &why);
	if (n >= 0 && which < 0)
		violated("a mutated message opened");
	if (n != expected)
		violated(which >= 0 ? "an unmodified seal: not accepted once, in order" :
				      "a mutated message: an error other than -EBADMSG");
	if (n >= 0) {
		expect_plain(out, n, p->plain, p->plain_len);
		if (++p->accepted[which] > 1 || consumer->rx.seq != (uint64_t)which + 1)
			violated("a seal accepted twice, or rx.seq not its");
		p->last_accepted = which + 1;
	} else if (!why || consumer->rx.seq != before.rx.seq ||
		   consumer->dropped != before.dropped + 1) {
		violated("a refusal without a reason, or that moved rx or missed the count");
	}
	if (vp_sess_open(producer, p->cur, p->cur_len, out, sizeof(out), &why) != -EBADMSG)
		violated("the sender opened a message of its own");
}

/* One mutation of p->cur: op, a 16-bit position, a value. */
static void mutate(struct program *p, const uint8_t ins[4])
{
	size_t len = p->cur_len, pos = ins[1] | (size_t)ins[2] << 8;
	uint8_t val = ins[3];
	const uint8_t *other;

	switch (ins[0] % 9) {
	case 0:		/* flip a bit */
		if (len)
			p->cur[pos % len] ^= (uint8_t)(1u << (val & 7));
		break;
	case 1:		/* set a byte */
		if (len)
			p->cur[pos % len] = val;
		break;
	case 2:		/* insert a byte */
		pos %= len + 1;
		memmove(p->cur + pos + 1, p->cur + pos, len - pos);
		p->cur[pos] = val;
		p->cur_len++;
		break;
	case 3:		/* delete a byte */
		if (len) {
			pos %= len;
			memmove(p->cur + pos, p->cur + pos + 1, len - pos - 1);
			p->cur_len--;
		}
		break;
	case 4:		/* truncate */
		p->cur_len = pos % (len + 1);
		break;
	case 5:		/* append a byte */
		p->cur[p->cur_len++] = val;
		break;
	case 6:		/* start over from one of the seals */
		memcpy(p->cur, p->orig[val & 1], p->orig_len[val & 1]);
		p->cur_len = p->orig_len[val & 1];
		break;
	case 7:		/* splice in up to 127 bytes of a seal, at the same offset */
		other = p->orig[val & 1];
		for (size_t i = pos % (len + 1), n = val >> 1; n && i < len &&
		     i < p->orig_len[val & 1]; i++, n--)
			p->cur[i] = other[i];
		break;
	case 8:		/* make the header's length match, so the tag is what decides */
		if (len >= VP_PROTO_HDR)
			for (int i = 0; i < 4; i++)
				p->cur[8 + i] = (uint8_t)((len - VP_PROTO_HDR) >> (8 * i));
		break;
	}
}

static void run_program(const uint8_t *data, size_t size)
{
	static struct program p;
	struct vp_sess producer = producer0, consumer = consumer0;
	size_t split, nmut;
	const uint8_t *mut;

	if (size < 2)
		return;
	split = (data[0] | (size_t)data[1] << 8) % (size - 1);
	build_plain(&p, data + 2, split);
	mut = data + 2 + split;
	nmut = (size - 2 - split) / 4;
	if (nmut > MAX_MUTATIONS)
		nmut = MAX_MUTATIONS;

	for (int i = 0; i < 2; i++) {
		ssize_t n = vp_sess_seal(&producer, p.plain, p.plain_len, p.orig[i],
					 sizeof(p.orig[i]));

		if (n != (ssize_t)(p.plain_len + VP_SESS_OVERHEAD))
			violated("sealing the program's message failed");
		p.orig_len[i] = (size_t)n;
	}
	memcpy(p.cur, p.orig[0], p.orig_len[0]);
	p.cur_len = p.orig_len[0];
	p.last_accepted = 0;
	p.accepted[0] = p.accepted[1] = 0;
	for (size_t i = 0; i < nmut; i++) {
		mutate(&p, mut + 4 * i);
		check_open(&p, &producer, &consumer);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > MAX_MSG)
		return 0;
	derive_once();
	open_arbitrary(&consumer0, &producer0, data, size);
	open_arbitrary(&producer0, &consumer0, data, size);
	seal_and_open(data, size);
	run_program(data, size);
	return 0;
}
