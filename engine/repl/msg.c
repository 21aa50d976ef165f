/*
 * repl/msg.c: messages: the inbox the fabric fills, opening and checking what
 * came, sealing and sending what goes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>

#include "../clock.h"
#include "../lock.h"
#include "../log.h"
#include "repl_i.h"

/* Messages that peers (or anyone on the network) can cause, logged within limits. */
static struct vp_ratelimit rl_refused = VP_RATELIMIT_INIT(10, 60.0);

/*
 * A message that we drop: counted (status, metrics) and logged within
 * limits, since anyone who reaches the port can cause it.
 */
void repl_refused(struct vp_repl *r, const char *from, size_t len, const char *why)
{
	__atomic_add_fetch(&r->refused, 1, __ATOMIC_RELAXED);
	vp_log_limited(&rl_refused, LOG_WARNING, "repl", "a %zu-byte message from %s was refused: %s",
		       len, from, why ? why : "malformed");
}

/*
 * Opens a received message into m: sealed with s if s is on (a session),
 * plain otherwise; clear_type is a type taken plain even with a session
 * on (a REFUSED that answers our AUTH), 0 for none.  Returns 0, or -1 if
 * the message was refused (counted and logged).
 */
int repl_open_msg(struct vp_repl *r, struct vp_sess *s, const struct qmsg *q,
		  struct vp_msg *m, const char *from, int clear_type)
{
	static __thread uint8_t plain[VP_FAB_MAX_MSG];
	const void *buf = q->buf;
	size_t len = q->len;
	const char *why = NULL;

	if (q->opened) {
		;	/* ours: checked when it came */
	} else if (vp_sess_is_sealed(q->buf, q->len)) {
		ssize_t n;

		if (!s || !s->on) {
			why = "sealed, but we have no session with its sender";
			goto bad;
		}
		n = vp_sess_open(s, q->buf, q->len, plain, sizeof(plain), &why);
		if (n < 0)
			goto bad;
		buf = plain;
		len = (size_t)n;
	} else if (s && s->on && (!clear_type || vp_msg_peek_type(q->buf, q->len) != clear_type)) {
		why = "not sealed, in a session whose messages all are";
		goto bad;
	}
	if (vp_msg_decode(buf, len, m, &why))
		goto bad;
	return 0;
bad:
	repl_refused(r, from, q->len, why);
	return -1;
}

/* A queued copy of a message received from src; NULL: no memory. */
static struct qmsg *qmsg_new(vp_fab_addr src, const void *msg, size_t len)
{
	struct qmsg *q = malloc(sizeof(*q) + len);

	if (!q)
		return NULL;
	q->src = src;
	q->opened = 0;
	q->pending = 0;
	q->at = vp_now();
	q->len = len;
	memcpy(q->buf, msg, len);
	return q;
}

/*
 * True if q, from subscribed consumer p, is a sign of life on arrival: a
 * small message (a HEARTBEAT, a DONE) sealed with p's key.  Its sequence
 * number is not checked (the repl thread's to keep); what a process on
 * p's host sends as p, with no secret, is not life.  Without a secret
 * any message is.  Larger messages count once handled (last_heard).
 */
static bool alive_sign_locked(struct vp_repl *r, const struct peer *p, const struct qmsg *q)
{
	uint8_t out[ALIVE_SIGN_MAX];
	struct vp_sess chk = { .on = 1 };
	const char *why;
	ssize_t n;

	VP_ASSERT_LOCKED(&r->lock);
	if (!p->sess.on)
		return !r->secret_len;
	if (q->len > sizeof(out))
		return false;
	memcpy(chk.rx.key, p->sess.rx.key, sizeof(chk.rx.key));	/* derived and cleared under r->lock */
	n = vp_sess_open(&chk, q->buf, q->len, out, sizeof(out), &why);
	OPENSSL_cleanse(&chk, sizeof(chk));
	return n >= 0;
}

/*
 * Producer: why q (of type) may not wait for the repl thread, NULL if it
 * may.  Anyone may start a handshake: such messages are marked pending
 * and wait in a small inbox of their own.
 */
static const char *producer_admit_locked(struct vp_repl *r, struct qmsg *q, int type)
{
	struct peer *p;

	VP_ASSERT_LOCKED(&r->lock);
	if ((p = repl_peer_at_locked(r, q->src, 1))) {
		if (alive_sign_locked(r, p, q))
			p->last_rx = q->at;	/* alive, whatever the repl thread is doing (beat.c) */
		return type == VP_MSG_CHUNKS ? "a producer takes no relay offers" : NULL;
	}
	q->pending = 1;
	if (type != VP_MSG_HELLO && type != VP_MSG_AUTH && type != VP_MSG_REFUSED)
		return "only HELLO, AUTH and REFUSED come before a consumer authenticated";
	if (r->pending_bytes + q->len > PENDING_INBOX_BYTES)
		return "the inbox of handshakes is full";
	return NULL;
}

/*
 * True if q (of type) would overflow the inbox: a flood, kept to bounded
 * memory.  A consumer that loses a message of its producer's so
 * subscribes again.  Handshakes and relay offers have queues of their own.
 */
static bool inbox_full_locked(struct vp_repl *r, const struct qmsg *q, int type)
{
	VP_ASSERT_LOCKED(&r->lock);
	if (q->pending || (r->consumer && type == VP_MSG_CHUNKS) ||
	    r->in_bytes + q->len <= INBOX_BYTES)
		return false;
	if (r->consumer && q->src == r->cons.producer)
		r->cons.resync = 1;
	return true;
}

/* Queues q (of type) for the repl thread and wakes it; takes q. */
static void inbox_push_locked(struct vp_repl *r, struct qmsg *q, int type)
{
	VP_ASSERT_LOCKED(&r->lock);
	if (r->consumer && type == VP_MSG_CHUNKS) {
		repl_rin_push_locked(r, q);	/* a relay's offer */
	} else {
		STAILQ_INSERT_TAIL(&r->in, q, link);
		r->in_bytes += q->len;
		if (q->pending)
			r->pending_bytes += q->len;
	}
	pthread_cond_signal(&r->cond);
}

/*
 * The fabric's receive callback, on its progress thread: a message is
 * only checked for where it may go and queued; the repl thread opens it.
 */
void repl_on_recv(void *arg, vp_fab_addr src, const void *msg, size_t len)
{
	struct vp_repl *r = arg;
	int type = vp_msg_peek_type(msg, len);
	const char *from = NULL, *why = NULL;
	struct qmsg *q;

	if (type >= 0)
		type &= ~(int)VP_SESS_SEALED;
	/* a consumer hears only from peers it knows; a producer hears HELLOs from anyone */
	if (src == VP_FAB_ADDR_UNKNOWN && (r->consumer || type != VP_MSG_HELLO)) {
		repl_refused(r, "an address that is not one of our peers", len,
			     r->consumer ? "a consumer takes messages from its producer and relay peers only" :
			     "only a HELLO is taken from an address that did not say HELLO");
		return;
	}
	q = qmsg_new(src, msg, len);
	if (!q)
		return;		/* dropped; the peer's deadlines cover it */
	pthread_mutex_lock(&r->lock);
	if (r->consumer && src == r->cons.producer)
		r->cons.last_rx = q->at;	/* alive, even if the inbox has no room for it */
	if (r->stop) {
		;	/* shutting down: the progress thread outlives the repl thread */
	} else if (!r->consumer && (why = producer_admit_locked(r, q, type))) {
		from = "an address that is not a subscribed consumer's";
	} else if (inbox_full_locked(r, q, type)) {
		from = "a peer";
		why = "the inbox is full";
	} else {
		inbox_push_locked(r, q, type);
		q = NULL;
	}
	pthread_mutex_unlock(&r->lock);
	free(q);
	if (why)
		repl_refused(r, from, len, why);
}

/* A message being sent: sealed into the send buffer (under tx_lock), or copied there plain. */
struct outgoing {
	struct vp_sess *s;
	const void *buf;
	size_t len;
};

static ssize_t seal_into(void *arg, void *out, size_t cap)
{
	const struct outgoing *o = arg;

	if (o->s && o->s->on)
		return vp_sess_seal(o->s, o->buf, o->len, out, cap);
	if (o->len > cap)
		return -EMSGSIZE;
	memcpy(out, o->buf, o->len);
	return (ssize_t)o->len;
}

static void unseal(void *arg)
{
	const struct outgoing *o = arg;

	if (o->s)
		vp_sess_unseal(o->s);
}

/*
 * Sends an encoded message to `to`, sealed with s when s is on (a
 * session), plain otherwise.  Sealed and posted under r->tx_lock, so that
 * the beat thread's heartbeats and the repl thread's messages leave in
 * the order of their sequence numbers; a message the transport did not
 * take gives its number back.  flags: vp_fab_send_made()'s.
 */
int repl_send_flags(struct vp_repl *r, vp_fab_addr to, struct vp_sess *s, const void *buf,
		    size_t len, double deadline_s, unsigned int flags)
{
	struct outgoing o = { s, buf, len };

	return vp_fab_send_made(r->fab, to, &r->tx_lock, seal_into, unseal, &o, deadline_s, flags);
}

int repl_send_raw(struct vp_repl *r, vp_fab_addr to, struct vp_sess *s, const void *buf,
		  size_t len, double deadline_s)
{
	return repl_send_flags(r, to, s, buf, len, deadline_s, 0);
}

int repl_encode_send(struct vp_repl *r, vp_fab_addr to, struct vp_sess *s, struct vp_msg *m,
		     double deadline_s)
{
	static __thread uint8_t buf[ENCODE_MAX];
	ssize_t n = vp_msg_encode(m, buf, sizeof(buf));

	if (n < 0)
		return (int)n;
	return repl_send_raw(r, to, s, buf, (size_t)n, deadline_s);
}

int repl_send_msg(struct vp_repl *r, vp_fab_addr to, struct vp_sess *s, struct vp_msg *m)
{
	return repl_encode_send(r, to, s, m, r->cfg.peer_timeout);
}

struct qmsg *repl_qmsg_of(struct vp_msg *m)
{
	static __thread uint8_t buf[ENCODE_MAX];
	ssize_t n = vp_msg_encode(m, buf, sizeof(buf));
	struct qmsg *q;

	if (n < 0)
		return NULL;
	q = malloc(sizeof(*q) + (size_t)n);
	if (!q)
		return NULL;
	q->src = VP_FAB_ADDR_UNKNOWN;
	q->opened = 0;
	q->pending = 0;
	q->at = vp_now();
	q->len = (size_t)n;
	memcpy(q->buf, buf, (size_t)n);
	return q;
}
