/*
 * repl/relay.c: consumer: its place in the relay tree (TOPO), the offers of
 * checked chunks to its children, and what stays exposed and pinned for them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "../clock.h"
#include "../data.h"
#include "../lock.h"
#include "../log.h"
#include "repl_i.h"

/* Sends m to another consumer of the tree, sealed with the edge's session, with a short deadline. */
static int relay_send(struct vp_repl *r, vp_fab_addr to, struct vp_sess *s, struct vp_msg *m)
{
	m->peer_id = r->cons.my_id;
	return repl_encode_send(r, to, s, m, RELAY_SEND_S);
}

static struct exposure *expose_find(struct vp_repl *r, const void *mem)
{
	for (size_t i = 0; i < r->relay.nexpo; i++)
		if (r->relay.expo[i].mem == mem)
			return &r->relay.expo[i];
	return NULL;
}

/*
 * Registers a checked chunk of announce seq for our children's remote
 * reads (its file bytes only), or finds its registration; *key and *addr
 * are what an offer names.  The registration lasts until the announce's
 * relay pin goes (repl_unexpose_seq) or the chunk does (repl_unexpose_mem): chunk
 * memory goes back to the pool only after that.  Returns 0 or -errno.
 */
static int expose(struct vp_repl *r, void *mem, size_t len, uint64_t seq, uint64_t *key,
		  uint64_t *addr)
{
	struct exposure *e = expose_find(r, mem);
	int rc;

	if (e && e->len == len) {
		e->seq = seq;
		*key = e->key;
		*addr = e->raddr;
		return 0;
	}
	if (e)
		return -EINVAL;		/* the same chunk, another length: not offered */
	if (r->relay.nexpo == r->relay.cap_expo) {
		size_t cap = r->relay.cap_expo ? r->relay.cap_expo * 2 : 64;
		struct exposure *more = realloc(r->relay.expo, cap * sizeof(*more));

		if (!more)
			return -ENOMEM;
		r->relay.expo = more;
		r->relay.cap_expo = cap;
	}
	e = &r->relay.expo[r->relay.nexpo];
	rc = vp_fab_mr_reg(r->fab, mem, len, &e->mr, &e->key, &e->raddr);
	if (rc)
		return rc;
	e->mem = mem;
	e->len = len;
	e->seq = seq;
	r->relay.nexpo++;
	*key = e->key;
	*addr = e->raddr;
	return 0;
}

static void unexpose_at(struct vp_repl *r, size_t i)
{
	vp_fab_mr_close(r->relay.expo[i].mr);
	r->relay.expo[i] = r->relay.expo[--r->relay.nexpo];
}

/* Our children can no longer read the chunks of announce seq (0: of any). */
void repl_unexpose_seq(struct vp_repl *r, uint64_t seq)
{
	for (size_t i = r->relay.nexpo; i-- > 0;)
		if (!seq || r->relay.expo[i].seq == seq)
			unexpose_at(r, i);
}

/* ... nor the chunk at mem (it goes back to the pool, or elsewhere). */
void repl_unexpose_mem(struct vp_repl *r, const void *mem)
{
	for (size_t i = r->relay.nexpo; i-- > 0;)
		if (r->relay.expo[i].mem == mem)
			unexpose_at(r, i);
}

/* The chunk at mem now belongs to announce seq (a preview's chunk, taken by its version). */
void repl_expose_reseq(struct vp_repl *r, const void *mem, uint64_t seq)
{
	struct exposure *e = expose_find(r, mem);

	if (e)
		e->seq = seq;
}

/* Starts the offers of announce a to our children. */
void repl_offer_begin(struct vp_repl *r, const announce_t *a)
{
	if (!r->relay.offer && !(r->relay.offer = calloc(1, sizeof(*r->relay.offer))))
		return;
	if (r->relay.offer->type == VP_MSG_CHUNKS && r->relay.offer->u.chunks.seq == a->seq)
		return;
	r->relay.offer->type = VP_MSG_CHUNKS;
	r->relay.offer->u.chunks.seq = a->seq;
	r->relay.offer->u.chunks.nchunks = a->nchunks;
	r->relay.offer->u.chunks.count = 0;
}

/* Sends the offers gathered for our children; LAST ends the announce. */
void repl_offer_flush(struct vp_repl *r, int last)
{
	struct vp_msg *o = r->relay.offer;

	if (!o || o->type != VP_MSG_CHUNKS || !r->relay.nchildren || (!o->u.chunks.count && !last))
		return;
	o->u.chunks.flags = last ? VP_CHUNKS_LAST : 0;
	for (unsigned int i = 0; i < r->relay.nchildren; i++) {
		struct relay_child *c = &r->relay.children[i];

		if (c->dead)
			continue;
		if (relay_send(r, c->addr, &c->sess, o)) {
			c->dead = 1;
			vp_log(LOG_WARNING, "repl", "relay: consumer %" PRIu64 " does not take our offers; it reads from the producer until the tree changes",
			       c->id);
		}
	}
	o->u.chunks.count = 0;
}

/* Offers chunk i of the relayed announce a, checked, in our memory at mem. */
void repl_offer_chunk(struct vp_repl *r, const announce_t *a, uint32_t i, const void *mem)
{
	struct vp_chunk_offer *c;
	uint64_t key, addr;

	if (!r->relay.nchildren || !(a->flags & VP_ANNOUNCE_RELAY) || !mem)
		return;
	repl_offer_begin(r, a);
	if (!r->relay.offer || expose(r, (void *)mem, (size_t)chunk_len(a, i), a->seq, &key, &addr))
		return;
	c = &r->relay.offer->u.chunks.chunk[r->relay.offer->u.chunks.count++];
	c->idx = i;
	c->addr = addr;
	c->key = key;
	if (r->relay.offer->u.chunks.count == VP_PROTO_CHUNKS_PER_MSG)
		repl_offer_flush(r, 0);
}

/*
 * Keeps d (announce seq) for the children we offered it to, until they
 * are done; its chunks stay exposed as long.  Returns 1 if it did.
 */
int repl_rpin_add(struct vp_repl *r, uint64_t seq, struct vp_data *d)
{
	struct relay_pin *pin;
	unsigned int n = 0;

	if (!r->relay.nchildren || !(pin = calloc(1, sizeof(*pin))))
		return 0;
	for (unsigned int i = 0; i < r->relay.nchildren; i++)
		if (!r->relay.children[i].dead)
			pin->waiting[n++] = r->relay.children[i].id;
	pin->seq = seq;
	pin->data = vp_data_get(d);
	pin->since = vp_now();
	LIST_INSERT_HEAD(&r->relay.rpins, pin, link);
	return 1;
}

/* Lets go of relay pins no child waits on (all: every pin). */
void repl_rpin_sweep(struct vp_repl *r, int all)
{
	struct relay_pin *pin, *next;
	double now = vp_now();

	for (pin = LIST_FIRST(&r->relay.rpins); pin; pin = next) {
		int waiting = 0;

		next = LIST_NEXT(pin, link);
		for (unsigned int i = 0; i < VP_PROTO_MAX_CHILDREN; i++)
			waiting |= pin->waiting[i] != 0;
		if (all || !waiting || now - pin->since > RELAY_PIN_TIMEOUT) {
			LIST_REMOVE(pin, link);
			repl_unexpose_seq(r, pin->seq);	/* before its chunks can go */
			vp_data_put(pin->data);
			free(pin);
		}
	}
}

/* Child is done with seq (seq 0: with everything, it left the tree). */
void repl_rpin_done(struct vp_repl *r, uint64_t child, uint64_t seq)
{
	struct relay_pin *pin;

	LIST_FOREACH(pin, &r->relay.rpins, link)
		if (!seq || pin->seq == seq)
			for (unsigned int i = 0; i < VP_PROTO_MAX_CHILDREN; i++)
				if (pin->waiting[i] == child)
					pin->waiting[i] = 0;
	repl_rpin_sweep(r, 0);
}

/*
 * Ends a relayed announce: LAST to our children, RELAY_DONE to our relay
 * (unless it failed us lately: its pins expire on their own, and a dead
 * relay would cost every version a send's deadline).
 */
void repl_relay_end(struct vp_repl *r, const announce_t *a)
{
	if (!(a->flags & VP_ANNOUNCE_RELAY))
		return;
	if (r->relay.nchildren) {
		repl_offer_begin(r, a);
		repl_offer_flush(r, 1);
	}
	if (r->relay.parent_id && vp_now() >= r->relay.parent_quiet_until) {
		struct vp_msg m = { .type = VP_MSG_RELAY_DONE };
		int rc;

		m.u.relay_done.seq = a->seq;
		rc = relay_send(r, r->relay.parent_addr, &r->relay.parent_sess, &m);
		if (rc) {
			vp_log(LOG_INFO, "repl", "relay: consumer %" PRIu64 " does not take our messages (%s); the producer serves us for %.0f s or until the tree changes",
			       r->relay.parent_id, strerror(-rc), RELAY_QUIET_S);
			r->relay.parent_quiet_until = vp_now() + RELAY_QUIET_S;
		}
	}
}

/*
 * Queues a relay's offer q for the fetch of its announce, which takes it
 * maybe while busy; takes q.  The queue is bounded: the oldest go first.
 */
void repl_rin_push_locked(struct vp_repl *r, struct qmsg *q)
{
	struct qmsg *old;

	VP_ASSERT_LOCKED(&r->lock);
	while ((old = STAILQ_FIRST(&r->relay.rin)) &&
	       r->relay.rin_bytes + q->len > RELAY_QUEUE_BYTES) {
		STAILQ_REMOVE_HEAD(&r->relay.rin, link);
		r->relay.rin_bytes -= old->len;
		free(old);
	}
	STAILQ_INSERT_TAIL(&r->relay.rin, q, link);
	r->relay.rin_bytes += q->len;
}

/* Moves every offer the relay queue holds into list (empty), oldest first. */
void repl_rin_take(struct vp_repl *r, struct qmsg_list *list)
{
	pthread_mutex_lock(&r->lock);
	STAILQ_CONCAT(list, &r->relay.rin);
	r->relay.rin_bytes = 0;
	pthread_mutex_unlock(&r->lock);
}

/*
 * Puts the offers of list (of bytes in all) back at the head of the relay
 * queue, before those that came since; list is left empty.
 */
void repl_rin_unget(struct vp_repl *r, struct qmsg_list *list, size_t bytes)
{
	pthread_mutex_lock(&r->lock);
	STAILQ_CONCAT(list, &r->relay.rin);
	STAILQ_CONCAT(&r->relay.rin, list);
	r->relay.rin_bytes += bytes;
	pthread_mutex_unlock(&r->lock);
}

/* Drops the relay's offers we hold (the relay changed or went away). */
void repl_rin_clear(struct vp_repl *r)
{
	struct qmsg_list list = STAILQ_HEAD_INITIALIZER(list);

	repl_rin_take(r, &list);
	qmsg_list_free(&list);
}

/* Our relay is par now (par->id 0: none, the producer serves everything). */
static void relay_set_parent(struct vp_repl *r, const struct vp_peer_ref *par)
{
	if (r->relay.parent_id)
		vp_fab_remove(r->fab, r->relay.parent_addr);
	r->relay.parent_id = 0;
	r->relay.parent_quiet_until = 0;
	vp_sess_clear(&r->relay.parent_sess);
	repl_rin_clear(r);
	if (par->id && vp_fab_insert_name(r->fab, par->name, par->name_len, &r->relay.parent_addr)) {
		vp_log(LOG_WARNING, "repl", "relay: consumer %" PRIu64 " has an unusable endpoint name; reading from the producer",
		       par->id);
	} else if (par->id) {
		r->relay.parent_id = par->id;
		memcpy(r->relay.parent_name, par->name, par->name_len);
		r->relay.parent_name_len = par->name_len;
		memcpy(r->relay.parent_key, par->key, VP_PROTO_EDGE_KEY);
		repl_edge_session(r, &r->relay.parent_sess, par->key, par->id, r->cons.my_id, 0);
	}
	if (r->relay.parent_id)
		vp_log(LOG_NOTICE, "repl", "relay: reading new versions from consumer %" PRIu64 ", the producer serving what it does not offer within %.1f s",
		       r->relay.parent_id, r->cfg.relay_wait);
	else
		vp_log(LOG_NOTICE, "repl", "relay: reading new versions from the producer");
}

/* Applies a TOPO: our relay and the consumers we serve. */
void repl_relay_topo(struct vp_repl *r, const struct vp_msg *m)
{
	const struct vp_peer_ref *par = &m->u.topo.parent;
	struct relay_child kids[VP_PROTO_MAX_CHILDREN];
	unsigned int n = 0;

	if (par->id != r->relay.parent_id || par->name_len != r->relay.parent_name_len ||
	    memcmp(par->name, r->relay.parent_name, par->name_len) ||
	    memcmp(par->key, r->relay.parent_key, VP_PROTO_EDGE_KEY)) {
		relay_set_parent(r, par);
	}
	for (unsigned int i = 0; i < m->u.topo.nchildren; i++) {
		const struct vp_peer_ref *c = &m->u.topo.child[i];
		struct relay_child *k = &kids[n];
		int kept = 0;

		for (unsigned int j = 0; j < r->relay.nchildren && !kept; j++) {
			struct relay_child *old = &r->relay.children[j];

			if (old->id == c->id && old->name_len == c->name_len &&
			    !memcmp(old->name, c->name, c->name_len) &&
			    !memcmp(old->key, c->key, VP_PROTO_EDGE_KEY)) {
				*k = *old;
				k->dead = 0;
				old->id = 0;	/* moved */
				kept = 1;
			}
		}
		if (!kept) {
			memset(k, 0, sizeof(*k));
			if (vp_fab_insert_name(r->fab, c->name, c->name_len, &k->addr)) {
				vp_log(LOG_WARNING, "repl", "relay: consumer %" PRIu64 " has an unusable endpoint name; not serving it",
				       c->id);
				continue;
			}
			k->id = c->id;
			memcpy(k->name, c->name, c->name_len);
			k->name_len = c->name_len;
			memcpy(k->key, c->key, VP_PROTO_EDGE_KEY);
			repl_edge_session(r, &k->sess, c->key, r->cons.my_id, c->id, 1);
			vp_log(LOG_NOTICE, "repl", "relay: serving consumer %" PRIu64 " the chunks we receive", c->id);
		}
		n++;
	}
	for (unsigned int j = 0; j < r->relay.nchildren; j++)
		if (r->relay.children[j].id) {	/* left the tree, or moved */
			repl_rpin_done(r, r->relay.children[j].id, 0);
			vp_fab_remove(r->fab, r->relay.children[j].addr);
			vp_sess_clear(&r->relay.children[j].sess);
		}
	memcpy(r->relay.children, kids, n * sizeof(kids[0]));
	r->relay.nchildren = n;
}

/* Forgets the relay tree (a new subscription gets a new TOPO). */
void repl_relay_reset(struct vp_repl *r)
{
	struct vp_msg *m = calloc(1, sizeof(*m));

	if (!m)
		return;
	m->type = VP_MSG_TOPO;
	repl_relay_topo(r, m);
	free(m);
	repl_rpin_sweep(r, 1);
}
