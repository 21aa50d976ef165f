/*
 * repl/consumer.c: consumer: the subscription's state machine (HELLO, CHALLENGE,
 * AUTH, WELCOME, and back to idle when the session ends), the end of a
 * catch-up, the tick.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#include "../clock.h"
#include "../log.h"
#include "../ns.h"
#include "../safepath.h"
#include "repl_i.h"

/* Notes a path (and its parents) as named by the producer's catch-up. */
void repl_seen_add(struct vp_repl *r, const char *path)
{
	char buf[PATH_MAX];

	if (!r->cons.syncing)
		return;
	snprintf(buf, sizeof(buf), "%s", path);
	for (;;) {
		char *slash;

		if (r->cons.nseen == r->cons.cap_seen) {
			size_t cap = r->cons.cap_seen ? r->cons.cap_seen * 2 : 256;
			char **more = realloc(r->cons.seen, cap * sizeof(*more));

			if (!more)
				return;
			r->cons.seen = more;
			r->cons.cap_seen = cap;
		}
		r->cons.seen[r->cons.nseen] = strdup(buf);
		if (r->cons.seen[r->cons.nseen])
			r->cons.nseen++;
		slash = strrchr(buf, '/');
		if (!slash)
			break;
		*slash = '\0';
	}
}

void repl_seen_clear(struct vp_repl *r)
{
	for (size_t i = 0; i < r->cons.nseen; i++)
		free(r->cons.seen[i]);
	r->cons.nseen = 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

struct stale_arg {
	struct vp_repl *r;
	char **paths;
	int *types;		/* 0 a directory, 1 a file, 2 a file of a run before the producer's */
	uint64_t (*stamps)[2];	/* files: version, epoch */
	size_t n, cap;
};

static void stale_cb(void *arg, const struct vp_ns_entry *e)
{
	struct stale_arg *a = arg;
	const char *path = e->path, *key = path;

	if (!strncmp(path, ".viperfs-", 9) ||
	    (a->r->cons.nseen && bsearch(&key, a->r->cons.seen, a->r->cons.nseen, sizeof(char *), cmp_str)))
		return;
	if (a->n == a->cap) {
		size_t cap = a->cap ? a->cap * 2 : 64;
		char **p = realloc(a->paths, cap * sizeof(*p));
		int *t = p ? realloc(a->types, cap * sizeof(*t)) : NULL;
		uint64_t (*s)[2] = t ? realloc(a->stamps, cap * sizeof(*s)) : NULL;

		if (p)
			a->paths = p;
		if (t)
			a->types = t;
		if (!s)
			return;
		a->stamps = s;
		a->cap = cap;
	}
	a->paths[a->n] = strdup(path);
	a->types[a->n] = e->type == VP_ENTRY_DIR ? 0 :
		e->type == VP_ENTRY_FILE && a->r->cons.new_run && e->epoch < a->r->cons.epoch ? 2 : 1;
	a->stamps[a->n][0] = e->version;
	a->stamps[a->n][1] = e->epoch;
	if (a->paths[a->n])
		a->n++;
}

/*
 * The catch-up is complete: what it did not name was deleted on the
 * producer while we were away.  Removed by syscalls, so watchers see
 * IN_DELETE; children before their directories.  Except a file of a run
 * before the producer's that is not on the PFS: the producer cannot have
 * deleted what it never knew, so its last run made it and died before
 * the flush.  That one is kept and offered back (recover.c).
 */
static void remove_stale(struct vp_repl *r)
{
	struct stale_arg a = { .r = r };

	if (r->cons.nseen)
		qsort(r->cons.seen, r->cons.nseen, sizeof(char *), cmp_str);
	vp_ns_snapshot(r->ns, stale_cb, &a);
	for (size_t i = 0; i < a.n; i++)
		if (a.types[i] == 2 && !vp_ns_on_pfs(r->ns, a.paths[i])) {
			repl_consumer_ahead(r, a.paths[i], 0, a.stamps[i][0], a.stamps[i][1], 0);
			free(a.paths[i]);
			a.paths[i] = NULL;
		}
	if (a.n && !repl_mount_open(r)) {
		for (size_t i = a.n; i-- > 0;) {
			if (!a.paths[i])
				continue;
			if (vp_safepath_unlink(r->cons.mnt_fd, a.paths[i], a.types[i] == 0 ? AT_REMOVEDIR : 0) == 0)
				vp_log(LOG_INFO, "repl", "'%s' was deleted on the producer while we were away; removed",
				       a.paths[i]);
		}
		repl_mount_close(r);
	}
	for (size_t i = 0; i < a.n; i++)
		free(a.paths[i]);
	free(a.paths);
	free(a.types);
	free(a.stamps);
	repl_seen_clear(r);
	r->cons.syncing = 0;
	r->cons.new_run = 0;
}

/*
 * The last time anything came from the producer: a message (stamped on
 * arrival, so no later than last_heard, its handling) or a read.
 */
static double producer_heard(struct vp_repl *r)
{
	double heard;

	pthread_mutex_lock(&r->lock);
	heard = r->cons.last_rx;
	pthread_mutex_unlock(&r->lock);
	return heard;
}

/*
 * A send to the producer waits no longer than the producer has left
 * before it counts as silent (a send to a dead producer must not delay
 * noticing it), and a HELLO no longer than the next one's second.
 */
void repl_consumer_send(struct vp_repl *r, struct vp_msg *m)
{
	double wait = r->cfg.peer_timeout;

	if (m->type == VP_MSG_HELLO) {
		wait = 1.0;
	} else if (r->cons.state == CONS_SUBSCRIBED) {
		wait = r->cfg.peer_timeout - (vp_now() - producer_heard(r));
		if (wait < 0.2)
			wait = 0.2;
	}
	m->peer_id = r->cons.my_id;
	if (repl_encode_send(r, r->cons.producer, &r->cons.sess, m, wait))
		vp_log(LOG_DEBUG, "repl", "send of %s to the producer failed", vp_msg_type_name(m->type));
}

void repl_consumer_heard(struct vp_repl *r, double at)
{
	pthread_mutex_lock(&r->lock);
	if (at > r->cons.last_rx)
		r->cons.last_rx = at;
	pthread_mutex_unlock(&r->lock);
}

/*
 * The beat thread's part in the session: on from WELCOME (heartbeats go
 * to the producer once a second, and its silence is watched, beat.c),
 * off before the session is cleared or derived again.
 */
static void beats_on(struct vp_repl *r)
{
	double now = vp_now();

	pthread_mutex_lock(&r->lock);
	r->cons.beat_id = r->cons.my_id;
	r->cons.last_beat = now;
	r->cons.silent = 0;
	r->cons.beat_on = 1;
	pthread_mutex_unlock(&r->lock);
}

static void beats_off(struct vp_repl *r)
{
	pthread_mutex_lock(&r->lock);
	r->cons.beat_on = 0;
	r->cons.silent = 0;
	pthread_mutex_unlock(&r->lock);
}

void repl_say_done(struct vp_repl *r, uint64_t seq, uint64_t version, int status)
{
	struct vp_msg m = { .type = VP_MSG_DONE };

	m.u.done.seq = seq;
	m.u.done.version = version;
	m.u.done.status = status;
	m.u.done.from_producer = r->cons.from_producer;
	m.u.done.from_relay = r->cons.from_relay;
	repl_consumer_send(r, &m);
}

/* Forgets the reasons to subscribe again (a failed transfer, a lost message). */
static void resync_clear(struct vp_repl *r)
{
	r->cons.refetch_after = 0;
	pthread_mutex_lock(&r->lock);
	r->cons.resync = 0;
	pthread_mutex_unlock(&r->lock);
}

/*
 * The session with the producer is over (silence, a lost message, a
 * failed transfer): the last complete versions stay, and the next HELLO
 * starts a new session, whose catch-up brings what we missed.
 */
static void consumer_lost(struct vp_repl *r, const char *why)
{
	if (why)	/* NULL: the beat thread said why */
		vp_log(LOG_WARNING, "repl", "%s; keeping the last complete versions and subscribing again", why);
	r->cons.state = CONS_IDLE;
	r->cons.resub_why = NULL;	/* the next session's catch-up brings what it was for */
	r->cons.syncing = 0;		/* a catch-up cut short removes nothing */
	repl_seen_clear(r);
	beats_off(r);
	vp_sess_clear(&r->cons.sess);
	resync_clear(r);
}

/*
 * consumer_lost() for a reason of our own (a lost message, a failed
 * transfer), not a silent producer: each costs the producer a catch-up,
 * so such resubscribes back off (5 s, doubling to 5 min; back to 5 s after
 * 10 quiet minutes).  Too soon, the session goes on and the reason stays:
 * the next message or tick past the back-off subscribes again (what
 * failed is not otherwise fetched again until its next version).
 */
static void consumer_resubscribe(struct vp_repl *r, const char *why)
{
	static struct vp_ratelimit rl = VP_RATELIMIT_INIT(5, 60.0);
	double now = vp_now();

	if (!r->cons.resub_backoff || now - r->cons.resub_at > 600)
		r->cons.resub_backoff = 5;
	if (r->cons.resub_at && now - r->cons.resub_at < r->cons.resub_backoff) {
		vp_log_limited(&rl, LOG_WARNING, "repl", "%s; subscribing again once %.0f s have passed since the last time",
			       why, r->cons.resub_backoff);
		resync_clear(r);
		r->cons.resub_why = why;	/* the tick's, once the back-off is over */
		return;
	}
	if (r->cons.resub_at)
		r->cons.resub_backoff = r->cons.resub_backoff * 2 > 300 ? 300 : r->cons.resub_backoff * 2;
	r->cons.resub_at = now;
	r->cons.resub_why = NULL;
	consumer_lost(r, why);
}

/*
 * Opens a message from the producer into m and checks it.  A gap in the
 * session's sequence numbers (a message we dropped), or a transfer that
 * failed while the producer still speaks, starts a new subscription.
 * Returns 0 if m is to be handled, -1 if not.
 */
static int producer_msg_open(struct vp_repl *r, const struct qmsg *q, struct vp_msg *m)
{
	uint64_t last = r->cons.sess.rx.seq;

	/* with a secret, sealed from WELCOME on; a REFUSED may answer our AUTH plain */
	if (repl_open_msg(r, &r->cons.sess, q, m, "the producer",
			  r->cons.state == CONS_CHALLENGED ? VP_MSG_REFUSED : 0))
		return -1;
	if (m->peer_id != 0 || m->type == VP_MSG_RELAY_DONE) {
		repl_refused(r, "the producer", q->len, "its header names a consumer");
		return -1;
	}
	/*
	 * When it arrived, not now: messages queued behind a long transfer
	 * must not make a producer that died meanwhile look alive.
	 */
	if (q->at > r->cons.last_heard)
		r->cons.last_heard = q->at;
	if (r->cons.sess.on && r->cons.sess.rx.seq != last + 1 && r->cons.state == CONS_SUBSCRIBED) {
		/* the transport is ordered: a gap is a message we dropped */
		consumer_resubscribe(r, "messages from the producer were lost");
		if (r->cons.state != CONS_SUBSCRIBED)
			return -1;
	}
	if (r->cons.refetch_after && r->cons.last_heard > r->cons.refetch_after &&
	    r->cons.state == CONS_SUBSCRIBED) {
		/* the producer is alive, yet a transfer from it failed */
		consumer_resubscribe(r, "a transfer from the producer failed");
		if (r->cons.state != CONS_SUBSCRIBED)
			return -1;
	}
	return 0;
}

/*
 * Opens a message from one of our relay children into m: only they speak
 * to a consumer besides its producer, each on its edge's session, and
 * only to say RELAY_DONE.  Returns 0 if m is to be handled, -1 if not.
 */
static int child_msg_open(struct vp_repl *r, const struct qmsg *q, struct vp_msg *m)
{
	struct relay_child *c = NULL;

	for (unsigned int i = 0; i < r->relay.nchildren && !c; i++)
		if (r->relay.children[i].addr == q->src)
			c = &r->relay.children[i];
	if (!c) {
		repl_refused(r, "an address that is not our producer or a relay child", q->len,
			     "a consumer takes messages from its producer and relay peers only");
		return -1;
	}
	if (repl_open_msg(r, &c->sess, q, m, "a relay child", 0))
		return -1;
	if (m->type != VP_MSG_RELAY_DONE || m->peer_id != c->id) {
		repl_refused(r, "a relay child", q->len, "a child only says RELAY_DONE, as itself");
		return -1;
	}
	return 0;
}

/*
 * A handshake failed: the next HELLO waits, 1 s doubling up to
 * peer_timeout x 4 (a consumer with the wrong secret must not flood the
 * producer, nor either log).  WELCOME resets it.
 */
static double auth_backoff(struct vp_repl *r)
{
	double cap = r->cfg.peer_timeout * 4 > 1 ? r->cfg.peer_timeout * 4 : 1;

	r->cons.auth_backoff = r->cons.auth_backoff ? r->cons.auth_backoff * 2 : 1;
	if (r->cons.auth_backoff > cap)
		r->cons.auth_backoff = cap;
	r->cons.hello_after = vp_now() + r->cons.auth_backoff;
	r->cons.state = CONS_IDLE;
	return r->cons.auth_backoff;
}

/*
 * Why the producer's CHALLENGE does not prove our secret: which side has
 * a secret_file, and which has none.  A MAC made with no key is what a
 * producer without a secret sends.
 */
static void challenge_mismatch(struct vp_repl *r, const struct vp_msg *m, char *mine,
			       size_t minelen, char *theirs, size_t theirslen)
{
	uint8_t keyless[VP_PROTO_MAC];

	vp_sess_handshake_mac(NULL, 0, "VPR1-P", r->cons.nonce_c, m->u.challenge.nonce,
			      m->u.challenge.assigned_id, keyless);
	if (!r->secret_len) {
		snprintf(mine, minelen, "the producer has a secret_file and this consumer has none: set secret_file here to the cluster's secret");
		snprintf(theirs, theirslen, "the consumer has no secret_file, and the producer has one");
	} else if (!CRYPTO_memcmp(keyless, m->u.challenge.mac, VP_PROTO_MAC)) {
		snprintf(mine, minelen, "this consumer has a secret_file ('%s') and the producer has none: set the same secret_file on the producer",
			 r->cfg.secret_file);
		snprintf(theirs, theirslen, "the consumer has a secret_file, and the producer has none");
	} else {
		snprintf(mine, minelen, "the secrets differ: this consumer's secret_file ('%s') is not the producer's",
			 r->cfg.secret_file);
		snprintf(theirs, theirslen, "the consumer's secret_file differs from the producer's");
	}
}

/*
 * A CHALLENGE (in CONS_HELLO_SENT): the producer proves it holds the
 * secret, and we answer with AUTH, the last plain message; or we refuse.
 */
static void consumer_challenge(struct vp_repl *r, const struct vp_msg *m)
{
	struct vp_msg reply = { .type = VP_MSG_AUTH };

	if (!repl_mac_ok(r, "VPR1-P", r->cons.nonce_c, m->u.challenge.nonce,
			 m->u.challenge.assigned_id, m->u.challenge.mac)) {
		struct vp_msg no = { .type = VP_MSG_REFUSED };
		char why[PATH_MAX + 160];
		double wait;

		challenge_mismatch(r, m, why, sizeof(why), no.u.refused.reason,
				   sizeof(no.u.refused.reason));
		r->cons.my_id = m->u.challenge.assigned_id;
		repl_consumer_send(r, &no);
		r->cons.my_id = 0;
		wait = auth_backoff(r);
		vp_log(LOG_ERR, "repl", "authentication with the producer failed: %s; trying again in %.0f s",
		       why, wait);
		return;
	}
	r->cons.my_id = m->u.challenge.assigned_id;
	repl_mac_of(r, "VPR1-C", m->u.challenge.nonce, r->cons.nonce_c, r->cons.my_id,
		    reply.u.auth.mac);
	r->cons.state = CONS_CHALLENGED;
	repl_consumer_send(r, &reply);	/* plain: the last message before the session */
	if (repl_session_derive(r, &r->cons.sess, r->cons.nonce_c, m->u.challenge.nonce,
				r->cons.my_id, 0)) {
		vp_log(LOG_ERR, "repl", "cannot derive the session keys; not subscribing");
		r->cons.state = CONS_IDLE;
	}
}

/* A WELCOME (in CONS_CHALLENGED): subscribed; the catch-up follows. */
static void consumer_welcome(struct vp_repl *r, const struct vp_msg *m)
{
	if (r->cons.epoch && m->u.welcome.epoch != r->cons.epoch)
		vp_log(LOG_NOTICE, "repl", "the producer runs anew (epoch %" PRIu64 ", was %" PRIu64 "): every path is reconciled with its state",
		       m->u.welcome.epoch, r->cons.epoch);
	r->cons.new_run = m->u.welcome.epoch != r->cons.epoch;
	r->cons.epoch = m->u.welcome.epoch;
	repl_ahead_clear(r, NULL);	/* the catch-up says again what is still ahead */
	repl_offers_done(r, 0, 1);
	repl_prefetch_forget(r, NULL, -1);	/* previews of the last session: its versions come whole */
	r->cons.state = CONS_SUBSCRIBED;
	beats_on(r);
	r->cons.auth_backoff = 0;
	repl_seen_clear(r);
	r->cons.syncing = 1;
	repl_relay_reset(r);	/* the producer sends our place in the tree */
	repl_log_gpu_path(r, "producer", 0);
	vp_log(LOG_NOTICE, "repl", "subscribed to the producer at '%s' over '%s'",
	       r->cfg.subscribe, vp_fab_provider(r->fab));
}

/* A SYNC_END (subscribed): the catch-up is complete. */
static void consumer_sync_end(struct vp_repl *r)
{
	if (r->cons.syncing)
		remove_stale(r);
	vp_log(LOG_INFO, "repl", "caught up with the producer");
}

/* Consumer: one received message, opened, checked and handled. */
void repl_consumer_handle(struct vp_repl *r, struct qmsg *q)
{
	struct vp_msg *m = malloc(sizeof(*m));
	int subscribed;

	if (!m)
		return;
	if (q->src == r->cons.producer ? producer_msg_open(r, q, m) : child_msg_open(r, q, m))
		goto out;
	subscribed = r->cons.state == CONS_SUBSCRIBED;
	switch (m->type) {
	case VP_MSG_CHALLENGE:
		if (r->cons.state == CONS_HELLO_SENT)
			consumer_challenge(r, m);
		break;
	case VP_MSG_WELCOME:
		if (r->cons.state == CONS_CHALLENGED)
			consumer_welcome(r, m);
		break;
	case VP_MSG_REFUSED: {
		double wait = auth_backoff(r);

		vp_log(LOG_ERR, "repl", "the producer refused us: %s; trying again in %.0f s",
		       m->u.refused.reason, wait);
		beats_off(r);
		vp_sess_clear(&r->cons.sess);
		break;
	}
	case VP_MSG_ANNOUNCE:
		if (subscribed) {
			repl_consumer_announce(r, m);
			return;		/* took m */
		}
		break;
	case VP_MSG_OP:
		if (subscribed)
			repl_consumer_op(r, m);
		break;
	case VP_MSG_SYNC_END:
		if (subscribed)
			consumer_sync_end(r);
		break;
	case VP_MSG_TOPO:
		if (subscribed)
			repl_relay_topo(r, m);
		break;
	case VP_MSG_RELAY_DONE:
		if (q->src == r->cons.producer)
			repl_offers_done(r, m->u.relay_done.seq, 0);	/* it took (or let go of) an offer */
		else
			repl_rpin_done(r, m->peer_id, m->u.relay_done.seq);
		break;
	default:
		break;
	}
out:
	free(m);
}

/* Consumer: publishes the repl thread's counters for status and metrics. */
void repl_publish_stats(struct vp_repl *r)
{
	pthread_mutex_lock(&r->lock);
	r->cons.pub.state = r->cons.state;
	r->cons.pub.installed = r->cons.installed;
	r->cons.pub.skipped = r->cons.skipped;
	r->cons.pub.bytes_in = r->cons.bytes_in;
	r->cons.pub.bytes_reused = r->cons.bytes_reused;
	r->cons.pub.bytes_streamed = r->cons.bytes_streamed;
	r->cons.pub.bytes_streamed_used = r->cons.bytes_streamed_used;
	r->cons.pub.checksum_errors = r->cons.checksum_errors;
	r->cons.pub.last_transfer_s = r->cons.last_transfer_s;
	r->cons.pub.last_heard = r->cons.last_heard;
	r->cons.pub.bytes_relay_in = r->cons.bytes_relay_in;
	r->cons.pub.bytes_relay_fallback = r->cons.bytes_relay_fallback;
	r->cons.pub.bytes_producer_in = r->cons.bytes_producer_in;
	r->cons.pub.bytes_direct_in = r->cons.bytes_direct_in;
	r->cons.pub.parent_id = r->relay.parent_id;
	r->cons.pub.nchildren = r->relay.nchildren;
	for (unsigned int i = 0; i < r->relay.nchildren; i++)
		r->cons.pub.children[i] = r->relay.children[i].id;
	pthread_mutex_unlock(&r->lock);
}

int repl_consumer_check_alive(struct vp_repl *r)
{
	int silent;

	if (r->cons.state != CONS_SUBSCRIBED)
		return 0;
	pthread_mutex_lock(&r->lock);
	silent = r->cons.silent;
	pthread_mutex_unlock(&r->lock);
	if (!silent)
		return 0;
	consumer_lost(r, NULL);
	repl_publish_stats(r);		/* status says so now */
	return -1;
}

void repl_consumer_tick(struct vp_repl *r)
{
	double now = vp_now();

	repl_rpin_sweep(r, 0);
	repl_offers_done(r, 0, 0);	/* offers the producer never took */
	repl_prefetch_forget(r, NULL, PREFETCH_IDLE_S);	/* previews of files never committed */
	repl_quarantine_release(r);
	if (!r->relay.parent_id && !STAILQ_EMPTY(&r->relay.rin))
		repl_rin_clear(r);	/* offers from a relay we no longer have */

	if (repl_consumer_check_alive(r)) {
		;
	} else if (r->cons.state == CONS_SUBSCRIBED) {
		int lost;

		pthread_mutex_lock(&r->lock);
		lost = r->cons.resync;
		pthread_mutex_unlock(&r->lock);
		if (lost)
			consumer_resubscribe(r, "a message from the producer was dropped (our inbox was full)");
		else if (r->cons.resub_why && now - r->cons.resub_at >= r->cons.resub_backoff)
			consumer_resubscribe(r, r->cons.resub_why);	/* deferred by the back-off */
	}
	if (r->cons.state < CONS_SUBSCRIBED && now - r->cons.last_hello >= 1.0 &&
	    now >= r->cons.hello_after) {
		struct vp_msg m = { .type = VP_MSG_HELLO };
		int n = vp_fab_name(r->fab, m.u.hello.name, sizeof(m.u.hello.name));

		r->cons.last_hello = now;
		if (n > 0) {
			RAND_bytes(r->cons.nonce_c, VP_PROTO_NONCE);
			memcpy(m.u.hello.nonce, r->cons.nonce_c, VP_PROTO_NONCE);
			m.u.hello.name_len = (uint16_t)n;
			r->cons.state = CONS_HELLO_SENT;
			r->cons.my_id = 0;
			beats_off(r);
			vp_sess_clear(&r->cons.sess);	/* a new handshake, a new session */
			repl_consumer_send(r, &m);
		}
	}
}
