/*
 * beat.c: liveness, on a thread of its own.
 *
 * The repl thread can spend seconds in one transfer (a catch-up's reads,
 * a send to a consumer that stopped reading, a relay that died), and
 * heartbeats sent from it would stop for as long.  The beat thread sends
 * them instead, once a second to each peer, and watches the silences:
 * what arrives from a peer counts, whatever the repl thread is doing (a
 * message, stamped by the progress thread: on the producer only one that
 * opens with the consumer's key, msg.c; a read's completion).
 *
 * It never waits on the network.  A heartbeat takes a send slot now or is
 * tried again at the next check (VP_FAB_SEND_NOW: posted once, its
 * completion frees the slot; refused while another message to that peer
 * is in flight), and it is sealed and posted under r->tx_lock like every
 * other message on its session, so that sequence numbers leave in order.
 * It holds r->lock while it beats, so that the repl thread cannot clear
 * (or free) a session under it: the repl thread derives and clears a
 * session that is beaten on only under r->lock.
 *
 * A peer found silent for peer_timeout is marked so, and the repl thread
 * is woken: the producer sends it nothing more and drops it on its next
 * tick (peer.c); the consumer's session is over (consumer.c), and its
 * status says so at once.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include "../clock.h"
#include "../lock.h"
#include "../log.h"
#include "repl_i.h"

/*
 * One HEARTBEAT to `to`, sealed with s, if it can go now: a free slot, and
 * no other message to it still in flight (which then says we are alive,
 * and must not be overtaken).  Returns 0 if posted; else it is tried
 * again on the next check.
 */
static int beat_locked(struct vp_repl *r, vp_fab_addr to, struct vp_sess *s, uint64_t peer_id,
		       uint64_t latest_seq)
{
	struct vp_msg hb = { .type = VP_MSG_HEARTBEAT, .peer_id = peer_id };
	uint8_t buf[256];
	ssize_t n;
	int rc;

	VP_ASSERT_LOCKED(&r->lock);
	hb.u.heartbeat.latest_seq = latest_seq;
	n = vp_msg_encode(&hb, buf, sizeof(buf));
	if (n < 0)
		return (int)n;
	rc = repl_send_flags(r, to, s, buf, (size_t)n, 0, VP_FAB_SEND_NOW);
	if (rc && rc != -EAGAIN)
		vp_log(LOG_DEBUG, "repl", "a heartbeat was not sent: %s", strerror(-rc));
	return rc;
}

/* Seconds since p was last heard from: an arrival that proved it (msg.c), or a message handled. */
static double peer_silence_locked(struct vp_repl *r, const struct peer *p, double now)
{
	VP_ASSERT_LOCKED(&r->lock);
	return now - (p->last_rx > p->last_heard ? p->last_rx : p->last_heard);
}

double repl_peer_send_wait_locked(struct vp_repl *r, const struct peer *p)
{
	double wait = r->cfg.peer_timeout - peer_silence_locked(r, p, vp_now());

	return wait < 0.2 ? 0.2 : wait;
}

/* Producer: each subscribed consumer gets its heartbeat, or is found silent. */
static void producer_beats_locked(struct vp_repl *r, double now)
{
	struct peer *p;

	VP_ASSERT_LOCKED(&r->lock);
	LIST_FOREACH(p, &r->prod.peers, link) {
		double silence = peer_silence_locked(r, p, now);

		if (!p->active || p->silent)
			continue;
		if (silence > r->cfg.peer_timeout)
			repl_peer_silent_locked(r, p, silence);
		else if (now - p->last_beat >= BEAT_S &&
			 !beat_locked(r, p->addr, &p->sess, 0, r->prod.seq))
			p->last_beat = now;
	}
}

/* Consumer: a heartbeat to the producer, or its silence found. */
static void consumer_beat_locked(struct vp_repl *r, double now)
{
	double silence = now - r->cons.last_rx;

	VP_ASSERT_LOCKED(&r->lock);
	if (!r->cons.beat_on)
		return;
	if (silence > r->cfg.peer_timeout) {
		vp_log(LOG_WARNING, "repl", "the producer at '%s' is silent for %.1f s; keeping the last complete versions and subscribing again",
		       r->cfg.subscribe, silence);
		r->cons.silent = 1;
		r->cons.beat_on = 0;
		pthread_cond_signal(&r->cond);	/* the repl thread ends the session */
	} else if (now - r->cons.last_beat >= BEAT_S &&
		   !beat_locked(r, r->cons.producer, &r->cons.sess, r->cons.beat_id, 0)) {
		r->cons.last_beat = now;
	}
}

void *repl_beat_main(void *arg)
{
	struct vp_repl *r = arg;

	pthread_mutex_lock(&r->lock);
	while (!r->stop) {
		struct timespec ts;
		double now = vp_now();

		if (r->consumer)
			consumer_beat_locked(r, now);
		else
			producer_beats_locked(r, now);
		vp_abstime(&ts, now + BEAT_TICK_S);
		while (!r->stop && pthread_cond_timedwait(&r->beat_cond, &r->lock, &ts) != ETIMEDOUT)
			;
	}
	pthread_mutex_unlock(&r->lock);
	return NULL;
}
