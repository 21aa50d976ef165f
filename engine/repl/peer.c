/*
 * repl/peer.c: producer: the consumers it serves, from HELLO to their end
 * (handshake, DONE, outboxes, timeouts), and the relay tree over them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "../clock.h"
#include "../lock.h"
#include "../log.h"
#include "../metrics.h"
#include "repl_i.h"

/* Messages that peers (or anyone on the network) can cause, logged within limits. */
static struct vp_ratelimit rl_hello = VP_RATELIMIT_INIT(10, 60.0);
static struct vp_ratelimit rl_evict = VP_RATELIMIT_INIT(10, 60.0);

/* The consumer at addr: the subscribed one if active, else the one between HELLO and AUTH. */
struct peer *repl_peer_at_locked(struct vp_repl *r, vp_fab_addr addr, int active)
{
	struct peer *p;

	VP_ASSERT_LOCKED(&r->lock);
	if (addr == VP_FAB_ADDR_UNKNOWN)
		return NULL;
	LIST_FOREACH(p, &r->prod.peers, link)
		if (p->addr == addr && p->active == active)
			return p;
	return NULL;
}

/* Queues q (encoded, not sealed yet) on p's outbox (a silent p gets nothing); takes q. */
void repl_peer_queue_locked(struct vp_repl *r, struct peer *p, struct qmsg *q)
{
	VP_ASSERT_LOCKED(&r->lock);
	if (p->silent)
		free(q);
	else
		STAILQ_INSERT_TAIL(&p->out, q, link);
}

static int cmp_peer_id(const void *a, const void *b)
{
	const struct peer *x = *(struct peer *const *)a, *y = *(struct peer *const *)b;

	return x->id < y->id ? -1 : x->id > y->id;
}

static void peer_ref_of(struct vp_peer_ref *ref, const struct peer *p)
{
	ref->id = p->id;
	ref->name_len = p->name_len;
	memcpy(ref->name, p->name, p->name_len);
}

/*
 * The relay tree: the active consumers in the order they joined, K
 * (relay_fanout) to a node.  The producer serves the first K; consumer j
 * (from 0) reads from consumer j/K - 1 and serves consumers (j+1)K ..
 * (j+1)K + K-1.  Every consumer whose place changed gets a TOPO, in order
 * with the announces it applies to.
 */
static void topo_update_locked(struct vp_repl *r)
{
	unsigned int n = 0, k = (unsigned int)r->cfg.relay_fanout;
	struct peer **act, *p;
	struct vp_msg *m;

	VP_ASSERT_LOCKED(&r->lock);
	if (!k)
		return;
	LIST_FOREACH(p, &r->prod.peers, link)
		n += peer_live(p);
	act = calloc(n ? n : 1, sizeof(*act));
	m = calloc(1, sizeof(*m));
	if (!act || !m) {
		free(act);
		free(m);
		return;
	}
	n = 0;
	LIST_FOREACH(p, &r->prod.peers, link)
		if (peer_live(p))
			act[n++] = p;
	qsort(act, n, sizeof(*act), cmp_peer_id);
	for (unsigned int j = 0; j < n; j++) {	/* each new edge: a new generation */
		uint64_t parent = j >= k ? act[j / k - 1]->id : 0;

		if (parent != act[j]->relay_parent || !act[j]->edge_gen)
			act[j]->edge_gen = ++r->prod.edge_gens;
		act[j]->relay_parent = parent;
	}
	for (unsigned int j = 0; j < n; j++) {
		uint64_t ids[2 * (1 + VP_PROTO_MAX_CHILDREN)] = { 0 }, sig;
		struct qmsg *q;

		p = act[j];
		memset(m, 0, sizeof(*m));
		m->type = VP_MSG_TOPO;
		if (j >= k) {
			peer_ref_of(&m->u.topo.parent, act[j / k - 1]);
			repl_edge_key_of(r, act[j / k - 1]->id, p->id, p->edge_gen, m->u.topo.parent.key);
			ids[1 + VP_PROTO_MAX_CHILDREN] = p->edge_gen;
		}
		for (unsigned int c = (j + 1) * k; c < (j + 2) * k && c < n; c++) {
			struct vp_peer_ref *ref = &m->u.topo.child[m->u.topo.nchildren++];

			peer_ref_of(ref, act[c]);
			repl_edge_key_of(r, p->id, act[c]->id, act[c]->edge_gen, ref->key);
			ids[2 + VP_PROTO_MAX_CHILDREN + (c - (j + 1) * k)] = act[c]->edge_gen;
		}
		ids[0] = m->u.topo.parent.id;
		for (unsigned int c = 0; c < m->u.topo.nchildren; c++)
			ids[1 + c] = m->u.topo.child[c].id;
		sig = XXH3_64bits(ids, sizeof(ids)) | 1;
		if (sig == p->topo_sig)
			continue;
		q = repl_qmsg_of(m);
		if (!q)
			continue;
		p->topo_sig = sig;
		repl_peer_queue_locked(r, p, q);
	}
	free(act);
	free(m);
}

/*
 * Lets go of what p holds, once it is out of the tree (unlinked, or
 * silent): its queue, its pins (only those that wait for it: an
 * unauthenticated peer has none), its place (its children move up).
 */
static void peer_let_go_locked(struct vp_repl *r, struct peer *p)
{
	struct pin *pin;

	VP_ASSERT_LOCKED(&r->lock);
	qmsg_list_free(&p->out);
	LIST_FOREACH(pin, &r->prod.pins, link)
		repl_pin_done(pin, p->id);
	repl_unpin_locked(r, 0);
	if (!r->stop)
		topo_update_locked(r);
}

/* Unlinks and frees p: what it holds, its address, its session. */
static void peer_free_locked(struct vp_repl *r, struct peer *p)
{
	VP_ASSERT_LOCKED(&r->lock);
	LIST_REMOVE(p, link);
	peer_let_go_locked(r, p);
	vp_fab_remove(r->fab, p->addr);
	vp_sess_clear(&p->sess);
	free(p);
}

void repl_peer_silent_locked(struct vp_repl *r, struct peer *p, double silence)
{
	VP_ASSERT_LOCKED(&r->lock);
	vp_log(LOG_WARNING, "repl", "consumer %" PRIu64 " is silent for %.1f s; it gets nothing more, and what it held is let go",
	       p->id, silence);
	p->silent = 1;		/* first: out of the tree */
	peer_let_go_locked(r, p);
	pthread_cond_signal(&r->cond);	/* the repl thread drops it */
}

/* A consumer goes, logged (a handshake's end is logged within limits by pending_drop_locked). */
void repl_peer_drop_locked(struct vp_repl *r, struct peer *p, const char *why)
{
	VP_ASSERT_LOCKED(&r->lock);
	vp_log(LOG_WARNING, "repl", "consumer %" PRIu64 " dropped: %s; its state is freed",
	       p->id, why);
	peer_free_locked(r, p);
}

/* 1 if two endpoint names are on the same host (same family and IP address). */
static int same_host(const uint8_t *a, uint16_t alen, const uint8_t *b, uint16_t blen)
{
	sa_family_t fa, fb;

	if (alen < sizeof(sa_family_t) || blen < sizeof(sa_family_t))
		return 0;
	memcpy(&fa, a, sizeof(fa));
	memcpy(&fb, b, sizeof(fb));
	if (fa != fb)
		return 0;
	if (fa == AF_INET && alen >= sizeof(struct sockaddr_in) && blen >= sizeof(struct sockaddr_in))
		return !memcmp(&((const struct sockaddr_in *)(const void *)a)->sin_addr,
			       &((const struct sockaddr_in *)(const void *)b)->sin_addr,
			       sizeof(struct in_addr));
	if (fa == AF_INET6 && alen >= sizeof(struct sockaddr_in6) && blen >= sizeof(struct sockaddr_in6))
		return !memcmp(&((const struct sockaddr_in6 *)(const void *)a)->sin6_addr,
			       &((const struct sockaddr_in6 *)(const void *)b)->sin6_addr,
			       sizeof(struct in6_addr));
	return alen == blen && !memcmp(a, b, alen);
}

/*
 * A consumer's handshake failed, expired or was evicted: dropped, counted
 * and logged within rl's limits (anyone can cause it).
 */
static void pending_drop_locked(struct vp_repl *r, struct peer *p, struct vp_ratelimit *rl,
				const char *why)
{
	VP_ASSERT_LOCKED(&r->lock);
	vp_log_limited(rl, LOG_WARNING, "repl", "a handshake (consumer %" PRIu64 ") was dropped: %s",
		       p->id, why);
	__atomic_add_fetch(&r->refused, 1, __ATOMIC_RELAXED);
	peer_free_locked(r, p);
}

/* Drops the oldest handshake in progress (naming the host of hello's name, if given). */
static void evict_oldest_locked(struct vp_repl *r, const struct vp_msg *hello)
{
	struct peer *oldest = NULL, *p;

	VP_ASSERT_LOCKED(&r->lock);
	LIST_FOREACH(p, &r->prod.peers, link)
		if (!p->active && (!hello || same_host(p->name, p->name_len, hello->u.hello.name,
						       hello->u.hello.name_len)) &&
		    (!oldest || p->hello_at < oldest->hello_at))
			oldest = p;
	if (oldest)
		pending_drop_locked(r, oldest, &rl_evict,
				    "too many handshakes are in progress; the oldest makes room");
}

/*
 * A HELLO: a consumer starts a handshake.  src is where it came from.
 * The name in a HELLO is the sender's word, so a HELLO never ends an
 * authenticated session (a new one replaces it only once it authenticates
 * too), never takes over another's unfinished handshake unless it comes
 * from that very address, and consumers between HELLO and AUTH are few
 * (MAX_PENDING, MAX_PENDING_PER_HOST), each for HANDSHAKE_S at most.  The
 * CHALLENGE goes through the outbox: sends to an unauthenticated peer
 * never hold up the repl thread.
 */
static void producer_hello(struct vp_repl *r, const struct vp_msg *m, vp_fab_addr src)
{
	struct vp_msg reply = { .type = VP_MSG_CHALLENGE };
	unsigned int pending = 0, same = 0;
	struct peer *p, *other;
	struct qmsg *q;
	vp_fab_addr addr;
	const char *why = NULL;
	int rc;

	rc = vp_fab_insert_name(r->fab, m->u.hello.name, m->u.hello.name_len, &addr);
	if (rc) {
		vp_log_limited(&rl_hello, LOG_WARNING, "repl", "a HELLO with an unusable endpoint name (%u bytes) was refused",
			       m->u.hello.name_len);
		__atomic_add_fetch(&r->refused, 1, __ATOMIC_RELAXED);
		return;
	}
	pthread_mutex_lock(&r->lock);
	other = repl_peer_at_locked(r, addr, 0);
	LIST_FOREACH(p, &r->prod.peers, link) {
		pending += !p->active;
		same += !p->active && same_host(p->name, p->name_len, m->u.hello.name,
						m->u.hello.name_len);
	}
	if (src != VP_FAB_ADDR_UNKNOWN && src != addr)
		why = "it names another address than its own";
	else if (other && src != addr)
		why = "it names the address of a handshake in progress";
	else if (!other && src != addr && repl_peer_at_locked(r, addr, 1))
		why = "it names the address of a subscribed consumer, from elsewhere";
	if (why) {
		pthread_mutex_unlock(&r->lock);
		vp_fab_remove(r->fab, addr);	/* our reference to that name */
		__atomic_add_fetch(&r->refused, 1, __ATOMIC_RELAXED);
		vp_log_limited(&rl_hello, LOG_WARNING, "repl", "a HELLO was refused: %s", why);
		return;
	}
	if (other)	/* the same address starts again: this handshake replaces its last */
		pending_drop_locked(r, other, &rl_hello, "its address started a new handshake");
	else if (pending >= MAX_PENDING || same >= MAX_PENDING_PER_HOST)
		/*
		 * Full: the oldest handshake (of that host) makes room.  An
		 * attacker must then start MAX_PENDING handshakes within one
		 * honest consumer's round trip to keep it out, instead of
		 * simply holding the table.
		 */
		evict_oldest_locked(r, same >= MAX_PENDING_PER_HOST ? m : NULL);
	pthread_mutex_unlock(&r->lock);
	p = calloc(1, sizeof(*p));
	if (!p) {
		vp_fab_remove(r->fab, addr);
		return;
	}
	STAILQ_INIT(&p->out);
	p->addr = addr;
	memcpy(p->name, m->u.hello.name, m->u.hello.name_len);
	p->name_len = m->u.hello.name_len;
	memcpy(p->nonce_c, m->u.hello.nonce, VP_PROTO_NONCE);
	RAND_bytes(p->nonce_p, VP_PROTO_NONCE);
	p->hello_at = p->last_heard = vp_now();
	pthread_mutex_lock(&r->lock);
	p->id = ++r->prod.next_peer_id;
	reply.u.challenge.assigned_id = p->id;
	memcpy(reply.u.challenge.nonce, p->nonce_p, VP_PROTO_NONCE);
	repl_mac_of(r, "VPR1-P", p->nonce_c, p->nonce_p, p->id, reply.u.challenge.mac);
	q = repl_qmsg_of(&reply);
	if (q)
		repl_peer_queue_locked(r, p, q);
	LIST_INSERT_HEAD(&r->prod.peers, p, link);
	pthread_cond_signal(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

/*
 * The peer a message from q->src is for: a handshake's messages (AUTH or
 * REFUSED, plain) go to the handshake at that address, the rest to the
 * session.  from gets its name for the log.  NULL: none.
 */
static struct peer *peer_of(struct vp_repl *r, const struct qmsg *q, int type, int sealed,
			    char *from, size_t fromlen)
{
	struct peer *p;

	pthread_mutex_lock(&r->lock);
	p = !sealed && (type == VP_MSG_AUTH || type == VP_MSG_REFUSED) ?
		repl_peer_at_locked(r, q->src, 0) : NULL;
	if (!p)
		p = repl_peer_at_locked(r, q->src, 1);
	pthread_mutex_unlock(&r->lock);
	if (p)
		snprintf(from, fromlen, "consumer %" PRIu64, p->id);
	else
		snprintf(from, fromlen, "an address that is not a consumer's");
	return p;
}

/*
 * An AUTH: the handshake's last message.  Returns 1 if p proved it holds
 * the secret and is subscribed now (producer_welcome() follows, without
 * the lock), 0 if it is not (and may be gone).
 */
static int producer_auth_locked(struct vp_repl *r, struct peer *p, const struct vp_msg *m)
{
	struct peer *old;

	VP_ASSERT_LOCKED(&r->lock);
	if (p->active)
		return 0;
	if (!repl_mac_ok(r, "VPR1-C", p->nonce_p, p->nonce_c, p->id, m->u.auth.mac)) {
		/*
		 * No REFUSED: an honest consumer with another secret
		 * refused our CHALLENGE already; this AUTH is a guess.
		 */
		pending_drop_locked(r, p, &rl_hello, "it failed authentication (wrong or missing secret_file)");
		return 0;
	}
	if (repl_session_derive(r, &p->sess, p->nonce_c, p->nonce_p, p->id, 1)) {
		repl_peer_drop_locked(r, p, "its session keys could not be derived");
		return 0;
	}
	/* a consumer that started again: its old session ends now that the new one is proven */
	old = repl_peer_at_locked(r, p->addr, 1);
	if (old)
		repl_peer_drop_locked(r, old, "it subscribed again (a new session replaces it)");
	p->last_beat = vp_now();	/* the first heartbeat a second after WELCOME */
	p->active = 1;
	return 1;
}

/* A consumer that just subscribed: WELCOME, its catch-up, its place in the relay tree. */
static void producer_welcome(struct vp_repl *r, struct peer *p)
{
	struct vp_msg w = { .type = VP_MSG_WELCOME };

	w.u.welcome.epoch = r->prod.epoch;
	repl_send_msg(r, p->addr, &p->sess, &w);	/* sealed: the first of the session */
	repl_catch_up(r, p);
	pthread_mutex_lock(&r->lock);
	topo_update_locked(r);
	pthread_mutex_unlock(&r->lock);
}

/* A DONE: p is through with an announce, whose pin may go. */
static void producer_done_locked(struct vp_repl *r, struct peer *p, const struct vp_msg *m)
{
	struct pin *pin;

	VP_ASSERT_LOCKED(&r->lock);
	if (m->u.done.seq > p->done_seq)
		p->done_seq = m->u.done.seq;
	if (m->u.done.status == 0)
		p->versions_done++;
	p->done_at = vp_now();
	LIST_FOREACH(pin, &r->prod.pins, link)
		if (pin->seq == m->u.done.seq) {
			if (m->u.done.status == 0)
				repl_ack_locked(r, pin, p->id);	/* fsync=peers: it holds the version */
			repl_pin_done(pin, p->id);	/* its own: another's DONE releases nothing */
		}
	p->bytes_out += m->u.done.from_producer;
	p->bytes_relayed += m->u.done.from_relay;
	vp_metrics_add(VP_C_BYTES_REPL_OUT, m->u.done.from_producer);
	repl_unpin_locked(r, 0);
}

/* A REFUSED: p does not hold our secret (or we do not hold its). */
static void producer_refused_locked(struct vp_repl *r, struct peer *p, const struct vp_msg *m)
{
	static const char why[] = "it refused authentication (wrong or missing secret_file on one side)";

	VP_ASSERT_LOCKED(&r->lock);
	vp_log_limited(&rl_hello, LOG_WARNING, "repl", "consumer %" PRIu64 " refused us: %s",
		       p->id, m->u.refused.reason);
	if (p->active)
		repl_peer_drop_locked(r, p, why);
	else
		pending_drop_locked(r, p, &rl_hello, why);
}

/* Producer: one received message, opened, checked and handled. */
void repl_producer_handle(struct vp_repl *r, struct qmsg *q)
{
	struct vp_msg *m = malloc(sizeof(*m));
	int type = vp_msg_peek_type(q->buf, q->len);
	int sealed = vp_sess_is_sealed(q->buf, q->len);
	int welcome = 0;
	char from[48];
	struct peer *p;

	if (!m)
		return;
	p = peer_of(r, q, type, sealed, from, sizeof(from));
	if (!sealed && type == VP_MSG_HELLO) {
		/* plain, from anyone: a new consumer, or one that starts again from its own address */
		if (!repl_open_msg(r, NULL, q, m, from, 0))
			producer_hello(r, m, q->src);
		goto out;
	}
	if (!p) {
		repl_refused(r, from, q->len, "only a HELLO is taken from an address that did not say HELLO");
		goto out;
	}
	if (repl_open_msg(r, &p->sess, q, m, from, 0))
		goto out;
	if (m->peer_id != p->id) {	/* the header is a claim; the address is the provider's word */
		repl_refused(r, from, q->len, "its header names another consumer");
		goto out;
	}
	pthread_mutex_lock(&r->lock);
	if (!p->active && m->type != VP_MSG_AUTH && m->type != VP_MSG_REFUSED) {
		pthread_mutex_unlock(&r->lock);
		repl_refused(r, from, q->len, "a handshake takes only AUTH or REFUSED");
		goto out;
	}
	if (q->at > p->last_heard)
		p->last_heard = q->at;	/* when it arrived (consumer.c says why) */
	switch (m->type) {
	case VP_MSG_AUTH:
		welcome = producer_auth_locked(r, p, m);
		break;
	case VP_MSG_DONE:
		producer_done_locked(r, p, m);
		break;
	case VP_MSG_HEARTBEAT:
		break;
	case VP_MSG_ANNOUNCE:		/* only a version offered back */
		if (m->u.announce.flags & VP_ANNOUNCE_RECOVER)
			repl_recover_offer_locked(r, p, m);
		break;
	case VP_MSG_REFUSED:
		producer_refused_locked(r, p, m);
		break;
	default:
		vp_log(LOG_DEBUG, "repl", "unexpected %s from consumer %" PRIu64,
		       vp_msg_type_name(m->type), m->peer_id);
	}
	pthread_mutex_unlock(&r->lock);
	if (welcome)
		producer_welcome(r, p);
out:
	free(m);
}

/*
 * Sends p's outbox, in order, sealed as it goes: sequence numbers in the
 * order of sending.  A peer that has not authenticated gets a moment, not
 * peer_timeout: whoever says HELLO must not hold up the thread (a name
 * that never answers).  A subscribed one gets until it would count as
 * silent; a send that is not done by then stays posted, and the rest wait
 * for the next tick: a link that is slow (bulk reads ahead of our
 * messages on one connection) is not a dead peer, and the beat thread
 * says which it is.  A peer whose sends fail is dropped.
 */
static void peer_send_queued_locked(struct vp_repl *r, struct peer *p)
{
	struct qmsg *q;

	VP_ASSERT_LOCKED(&r->lock);
	while (!p->silent && (q = STAILQ_FIRST(&p->out))) {
		vp_fab_addr addr = p->addr;
		int active = p->active, rc;
		double wait = active ? repl_peer_send_wait_locked(r, p) : 0;

		STAILQ_REMOVE_HEAD(&p->out, link);
		pthread_mutex_unlock(&r->lock);
		rc = active ? repl_send_raw(r, addr, &p->sess, q->buf, q->len, wait) :
			vp_fab_send_untrusted(r->fab, addr, q->buf, q->len, PENDING_SEND_S);
		pthread_mutex_lock(&r->lock);
		if (rc == -EAGAIN) {
			STAILQ_INSERT_HEAD(&p->out, q, link);	/* not taken yet: again next tick */
			break;
		}
		free(q);
		if (rc == -ETIMEDOUT && active)
			break;		/* still posted: it leaves in order, after what is ahead of it */
		if (rc && !(rc == -ETIMEDOUT && !active)) {
			if (active)
				repl_peer_drop_locked(r, p, rc == -ETIMEDOUT ? "sends time out" : "sends fail");
			else
				pending_drop_locked(r, p, &rl_hello, "its address does not take messages");
			break;
		}
	}
}

/*
 * Producer, each tick: ends the handshakes that took too long and the
 * sessions of silent consumers, and sends what the others' outboxes hold.
 */
void repl_peers_tick(struct vp_repl *r, double now)
{
	struct peer *p, *next;

	pthread_mutex_lock(&r->lock);
	for (p = LIST_FIRST(&r->prod.peers); p; p = next) {
		next = LIST_NEXT(p, link);
		if (!p->active && now - p->hello_at > HANDSHAKE_S)
			pending_drop_locked(r, p, &rl_hello, "it did not authenticate in time");
		else if (p->silent)	/* the beat thread found it so */
			repl_peer_drop_locked(r, p, "no heartbeat");
		else
			peer_send_queued_locked(r, p);
	}
	pthread_mutex_unlock(&r->lock);
}
