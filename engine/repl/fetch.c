/*
 * repl/fetch.c: consumer: the reads of an announce's chunks, from our relay
 * first and the producer for the rest, each checked as it lands; the cache
 * slabs they land in, and GPU-direct stages.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "../clock.h"
#include "../gpu.h"
#include "../log.h"
#include "../mfile.h"
#include "../pool.h"
#include "repl_i.h"

/*
 * The pool's slab callback: each new slab of cache memory is registered
 * with the fabric once, as a local read target.
 */
void repl_on_slab(void *arg, void *base, size_t len)
{
	struct vp_repl *r = arg;
	struct slab_mr *s;
	int rc;

	pthread_mutex_lock(&r->slab_lock);
	if (r->nslabs == MAX_SLABS) {
		vp_log(LOG_ERR, "repl", "too many cache slabs to register; replication of new data will fail");
		goto out_unlock;
	}
	s = &r->slabs[r->nslabs];
	/* a read target; what peers may read is registered per transfer */
	rc = vp_fab_mr_reg_local(r->fab, base, len, &s->mr);
	if (rc) {
		vp_log(LOG_ERR, "repl", "registering %zu bytes of cache with the fabric: %s",
		       len, strerror(-rc));
		goto out_unlock;
	}
	s->base = base;
	s->len = len;
	r->nslabs++;
out_unlock:
	pthread_mutex_unlock(&r->slab_lock);
}

struct slab_mr *repl_slab_of(struct vp_repl *r, const void *mem)
{
	struct slab_mr *found = NULL;

	pthread_mutex_lock(&r->slab_lock);
	for (unsigned int i = 0; i < r->nslabs && !found; i++)
		if ((const char *)mem >= r->slabs[i].base &&
		    (const char *)mem < r->slabs[i].base + r->slabs[i].len)
			found = &r->slabs[i];
	if (!found) {
		struct land *l;

		LIST_FOREACH(l, &r->cons.lands, link)
			if (l->reg.mr && (const char *)mem >= l->reg.base &&
			    (const char *)mem < l->reg.base + l->reg.len) {
				found = &l->reg;
				break;
			}
	}
	pthread_mutex_unlock(&r->slab_lock);
	return found;
}

/* ---- landings (repl_i.h) ---- */

struct land *repl_land_new(struct vp_repl *r, uint64_t reserve, int *err)
{
	struct land *l = calloc(1, sizeof(*l));

	if (!l) {
		*err = -ENOMEM;
		return NULL;
	}
	l->mf = vp_mfile_new(r->pool, err);
	if (!l->mf) {
		free(l);
		return NULL;
	}
	l->reserve = (size_t)reserve;
	l->base = vp_mfile_land_map(l->mf, l->reserve, err);
	if (!l->base) {
		vp_log(LOG_ERR, "repl", "mapping %" PRIu64 " bytes of a memory file for the network to land in: %s",
		       reserve, strerror(-*err));
		vp_mfile_put(l->mf);
		free(l);
		return NULL;
	}
	l->reg.base = l->base;
	pthread_mutex_lock(&r->slab_lock);
	LIST_INSERT_HEAD(&r->cons.lands, l, link);
	pthread_mutex_unlock(&r->slab_lock);
	return l;
}

struct land *repl_land_of(struct vp_repl *r, const void *mem)
{
	struct land *l;

	pthread_mutex_lock(&r->slab_lock);
	LIST_FOREACH(l, &r->cons.lands, link)
		if ((const char *)mem >= l->base && (const char *)mem < l->base + l->reserve)
			break;
	pthread_mutex_unlock(&r->slab_lock);
	return l;
}

int repl_land_grow(struct vp_repl *r, struct land *l, uint64_t size, double wait_s)
{
	size_t want = (size_t)((size + 4095) & ~4095ULL);
	struct vp_fab_mr *mr = NULL, *old;
	int rc;

	if (l->tainted)
		return -EAGAIN;
	if (size > l->reserve)
		return -EFBIG;
	rc = vp_mfile_land_grow(l->mf, size, wait_s);
	if (rc)
		return rc;
	if (size > l->size)
		l->size = size;
	if (want <= l->reg.len)
		return 0;
	/* no read is posted into it between fetches (else it is tainted): a new registration, the old one closed */
	rc = vp_fab_mr_reg_local(r->fab, l->base, want, &mr);
	if (rc) {
		vp_log(LOG_ERR, "repl", "registering %zu bytes of a memory file with the fabric: %s",
		       want, strerror(-rc));
		return rc;
	}
	pthread_mutex_lock(&r->slab_lock);
	old = l->reg.mr;
	l->reg.mr = mr;
	l->reg.len = want;
	pthread_mutex_unlock(&r->slab_lock);
	vp_fab_mr_close(old);
	return 0;
}

/* Unlinks l from the landings in use; its registration, closed, unless a read may still use it. */
static void land_unlink(struct vp_repl *r, struct land *l)
{
	struct vp_fab_mr *mr;

	pthread_mutex_lock(&r->slab_lock);
	LIST_REMOVE(l, link);
	mr = l->tainted ? NULL : l->reg.mr;
	if (mr)
		l->reg.mr = NULL;
	pthread_mutex_unlock(&r->slab_lock);
	vp_fab_mr_close(mr);
}

static void land_free(struct land *l)
{
	vp_fab_mr_close(l->reg.mr);
	vp_mfile_put(l->mf);
	free(l);
}

void repl_land_release(struct vp_repl *r, struct land *l, uint64_t off, uint64_t len)
{
	for (size_t k = 0; k < l->nbad && k < LAND_MAX_BAD; k++)
		if (l->bad[k] < off + len && off < l->bad[k] + vp_pool_chunk_size(r->pool))
			return;		/* a read given up on may land there */
	if (l->nbad <= LAND_MAX_BAD)
		(void)vp_mfile_land_zero(l->mf, off, len);	/* best effort: it only frees memory */
}

/* A tainted landing: every page but those a read given up on may write goes now. */
static void land_shrink(struct vp_repl *r, struct land *l)
{
	uint64_t cs = vp_pool_chunk_size(r->pool);

	for (uint64_t off = 0; off < l->size; off += cs)
		repl_land_release(r, l, off, off + cs > l->size ? l->size - off : cs);
}

void repl_land_put(struct vp_repl *r, struct land *l)
{
	if (!l)
		return;
	land_unlink(r, l);
	if (l->tainted) {
		land_shrink(r, l);
		LIST_INSERT_HEAD(&r->cons.dead_lands, l, link);	/* freed by repl_quarantine_release */
		return;
	}
	land_free(l);
}

struct vp_mfile *repl_land_seal(struct vp_repl *r, struct land *l, uint64_t size, int *err)
{
	struct vp_mfile *mf;

	if (l->tainted) {
		*err = -EAGAIN;
		repl_land_put(r, l);
		return NULL;
	}
	land_unlink(r, l);	/* every read into it is over: its registration goes first */
	*err = vp_mfile_land_finish(l->mf, size);
	if (*err) {
		/* where it is mapped now is not known: kept, as if a read could still land */
		l->tainted = 1;
		LIST_INSERT_HEAD(&r->cons.dead_lands, l, link);
		return NULL;
	}
	mf = l->mf;
	free(l);
	return mf;
}

void repl_lands_fabric_gone(struct vp_repl *r, int closed)
{
	struct land *l;

	if (closed) {
		while ((l = LIST_FIRST(&r->cons.dead_lands))) {
			LIST_REMOVE(l, link);
			land_free(l);
		}
		return;
	}
	pthread_mutex_lock(&r->slab_lock);
	LIST_FOREACH(l, &r->cons.lands, link) {
		vp_fab_mr_close(l->reg.mr);
		l->reg.mr = NULL;
	}
	LIST_FOREACH(l, &r->cons.dead_lands, link) {
		vp_fab_mr_close(l->reg.mr);
		l->reg.mr = NULL;
	}
	pthread_mutex_unlock(&r->slab_lock);
}

/*
 * Chunk i of announce a arrived in mem and matched its hash, while later
 * reads are still in flight: on to the GPU tier's stage (unless it landed
 * there: staged) and to our relay children.
 */
static void chunk_ready(struct vp_repl *r, const announce_t *a, uint32_t i, const void *mem,
			size_t len, int staged)
{
	if (!staged)
		vp_gpu_stage_copy(r->cons.gst, (uint64_t)i * a->chunk_size, mem, len);
	repl_offer_chunk(r, a, i, mem);
	repl_offer_flush(r, 0);
}

/*
 * Chunk memory a timed-out read may still write: not reused until the
 * fabric has no read it gave up on still posted (then none can land), or
 * it is closed.
 */
void repl_quarantine(struct vp_repl *r, void *mem)
{
	struct land *l = mem ? repl_land_of(r, mem) : NULL;
	void **q;

	repl_unexpose_mem(r, mem);
	if (l) {
		/* the memory file is kept until no such read is left; only these chunks matter then */
		l->tainted = 1;
		if (l->nbad < LAND_MAX_BAD)
			l->bad[l->nbad] = (uint64_t)((char *)mem - l->base);
		l->nbad++;
		return;
	}
	q = realloc(r->cons.quarantine, (r->cons.nquarantine + 1) * sizeof(*q));
	if (!q)
		return;		/* leaked rather than reused */
	r->cons.quarantine = q;
	q[r->cons.nquarantine++] = mem;
}

void repl_quarantine_release(struct vp_repl *r)
{
	struct land *l;

	if ((!r->cons.nquarantine && LIST_EMPTY(&r->cons.dead_lands)) || vp_fab_orphan_reads(r->fab))
		return;
	/* every read given up on has completed or failed since: nothing lands there now */
	while ((l = LIST_FIRST(&r->cons.dead_lands))) {
		LIST_REMOVE(l, link);
		vp_log(LOG_DEBUG, "repl", "a memory file that reads given up on could still write is freed: those reads are over");
		land_free(l);
	}
	if (!r->cons.nquarantine)
		return;
	vp_log(LOG_DEBUG, "repl", "%zu quarantined chunk(s) back to the cache: the reads given up on are over",
	       r->cons.nquarantine);
	for (size_t i = 0; i < r->cons.nquarantine; i++)
		vp_pool_put_chunk(r->pool, r->cons.quarantine[i]);
	r->cons.nquarantine = 0;
}

typedef typeof(((struct vp_msg *)0)->u.chunks) chunks_t;

/*
 * A fetch from our relay (relay_fetch): the chunks of need[0..n) that it
 * offers for announce a, read into mem as it offers them.
 */
struct relay_fetch {
	const announce_t *a;
	void **mem;
	const uint32_t *need;
	uint8_t *got;			/* slot in need -> arrived and matched */
	int32_t *pos;			/* chunk -> slot in need, -1: not needed */
	struct vp_chunk_offer *offer;	/* slot -> where the relay has it */
	uint8_t *offered;		/* slot -> offered already */
	uint32_t *fifo;			/* the slots offered, in order */
	size_t head, tail;		/* of fifo: read up to head */
	struct vp_msg *m;		/* room to open offers in */
	int last;			/* the relay said LAST (or we stop) */
};

/* Checks each chunk read from the relay; offers it on to our children. */
struct rverify {
	struct vp_repl *r;
	struct relay_fetch *rf;
	const struct vp_fab_read_req *reqs;
	const uint32_t *idx;		/* request -> chunk */
	size_t ngot;
	uint64_t bytes;
};

static void relay_verify(void *arg, size_t req)
{
	struct rverify *v = arg;
	uint32_t i = v->idx[req];

	if (XXH3_64bits(v->reqs[req].local, v->reqs[req].len) != v->r->cons.asm_refs[i].hash) {
		vp_log(LOG_WARNING, "repl", "relay: chunk %u from consumer %" PRIu64 " does not match its hash; the producer serves it",
		       i, v->r->relay.parent_id);
		return;
	}
	v->rf->got[v->rf->pos[i]] = 1;
	v->ngot++;
	v->bytes += v->reqs[req].len;
	chunk_ready(v->r, v->rf->a, i, v->reqs[req].local, v->reqs[req].len, 0);
}

/* Queues the chunks of need that offer c names, each once, in rf->fifo. */
static void relay_note_offer(struct relay_fetch *rf, const chunks_t *c)
{
	for (uint32_t o = 0; o < c->count; o++) {
		int32_t k = rf->pos[c->chunk[o].idx];

		if (k < 0 || rf->offered[k])
			continue;
		rf->offered[k] = 1;
		rf->offer[k] = c->chunk[o];
		rf->fifo[rf->tail++] = (uint32_t)k;
	}
	rf->last |= (c->flags & VP_CHUNKS_LAST) != 0;
}

/*
 * Takes the relay's offers for rf's announce out of the relay queue
 * (those for announces still ahead go back, opened: their seal is spent)
 * and queues the offered chunks of need.
 */
static void relay_take_offers(struct vp_repl *r, struct relay_fetch *rf)
{
	struct qmsg_list list = STAILQ_HEAD_INITIALIZER(list);
	struct qmsg_list later = STAILQ_HEAD_INITIALIZER(later);
	const chunks_t *c = &rf->m->u.chunks;
	size_t later_bytes = 0;
	struct qmsg *q, *o;

	repl_rin_take(r, &list);
	while ((q = STAILQ_FIRST(&list))) {
		STAILQ_REMOVE_HEAD(&list, link);
		if (!r->relay.parent_id || q->src != r->relay.parent_addr) {
			repl_refused(r, "a consumer that is not our relay", q->len, "only our relay offers chunks");
		} else if (repl_open_msg(r, &r->relay.parent_sess, q, rf->m, "our relay", 0)) {
			;	/* refused */
		} else if (rf->m->type != VP_MSG_CHUNKS || rf->m->peer_id != r->relay.parent_id) {
			repl_refused(r, "our relay", q->len, "not an offer of its own");
		} else if (c->seq > rf->a->seq && (o = repl_qmsg_of(rf->m))) {
			o->src = r->relay.parent_addr;
			o->opened = 1;
			STAILQ_INSERT_TAIL(&later, o, link);
			later_bytes += o->len;
		} else if (c->seq == rf->a->seq && c->nchunks == rf->a->nchunks) {
			relay_note_offer(rf, c);
		}	/* else: stale, or not from our relay */
		free(q);
	}
	if (!STAILQ_EMPTY(&later))
		repl_rin_unget(r, &later, later_bytes);
}

/* The next batch of offered chunks to read, at most RELAY_BATCH, into reqs and idx. */
static size_t relay_batch(struct vp_repl *r, struct relay_fetch *rf,
			  struct vp_fab_read_req *reqs, uint32_t *idx, uint64_t *bytes)
{
	size_t nreq = 0;

	while (rf->head < rf->tail && nreq < RELAY_BATCH) {
		uint32_t k = rf->fifo[rf->head++], i = rf->need[k];
		struct slab_mr *s = rf->mem[i] ? repl_slab_of(r, rf->mem[i]) : NULL;

		if (!s)
			continue;	/* the producer serves it */
		idx[nreq] = i;
		reqs[nreq].mr = s->mr;
		reqs[nreq].local = rf->mem[i];
		reqs[nreq].len = (size_t)chunk_len(rf->a, i);
		reqs[nreq].remote_addr = rf->offer[k].addr;
		reqs[nreq].key = rf->offer[k].key;
		*bytes += reqs[nreq].len;
		nreq++;
	}
	return nreq;
}

/*
 * Reads a batch from our relay, each chunk checked as it lands; *ngot
 * says how many arrived and matched.  Returns 0 or the read's -errno:
 * then reads may still land in the chunks that did not arrive, which are
 * quarantined and replaced.
 */
static int relay_read(struct vp_repl *r, struct relay_fetch *rf, struct vp_fab_read_req *reqs,
		      const uint32_t *idx, size_t nreq, uint64_t bytes, size_t *ngot)
{
	struct rverify v = { .r = r, .rf = rf, .reqs = reqs, .idx = idx };
	/* short batches, short deadlines: a dead relay costs seconds, not a file's time */
	double wait = r->cfg.relay_wait < r->cfg.peer_timeout / 2 ?
		      r->cfg.relay_wait : r->cfg.peer_timeout / 2;
	int rc = vp_fab_read_cb(r->fab, r->relay.parent_addr, reqs, nreq, r->cfg.repl_inflight,
				wait + (double)bytes / 50e6, relay_verify, &v);

	*ngot = v.ngot;
	r->cons.bytes_relay_in += v.bytes;
	r->cons.from_relay += v.bytes;
	if (!rc)
		return 0;
	vp_log(LOG_WARNING, "repl", "relay: reads from consumer %" PRIu64 " failed (%s); the producer serves the rest of '%s', and what follows for %.0f s or until the tree changes",
	       r->relay.parent_id, strerror(-rc), rf->a->path, RELAY_QUIET_S);
	r->relay.parent_quiet_until = vp_now() + RELAY_QUIET_S;
	for (size_t q = 0; q < nreq; q++) {
		uint32_t i = idx[q];
		int err;

		if (rf->got[rf->pos[i]])
			continue;
		repl_quarantine(r, rf->mem[i]);
		rf->mem[i] = vp_pool_get_chunk(r->pool, r->cfg.cache_wait, &err);
	}
	return rc;
}

/* Waits a moment (not past quiet) for the relay's next offer; 1 if we stop. */
static int relay_wait_offers(struct vp_repl *r, double quiet)
{
	int stop;

	pthread_mutex_lock(&r->lock);
	if (STAILQ_EMPTY(&r->relay.rin) && !r->stop) {
		struct timespec ts;
		double until = vp_now() + 0.05;

		vp_abstime(&ts, until < quiet ? until : quiet);
		pthread_cond_timedwait(&r->cond, &r->lock, &ts);
	}
	stop = r->stop;
	pthread_mutex_unlock(&r->lock);
	return stop;
}

/*
 * Reads from our relay the chunks of need that it offers for announce a,
 * as it offers them, in batches of RELAY_BATCH, until all are here, it
 * said LAST and nothing offered is left, or it offers nothing for
 * relay_wait.  got[k] is set for each chunk that arrived and matched.
 * Returns how many are still missing.
 */
static size_t relay_fetch(struct vp_repl *r, const announce_t *a, void **mem,
			  const uint32_t *need, size_t n, uint8_t *got)
{
	struct relay_fetch rf = {
		.a = a, .mem = mem, .need = need, .got = got,
		.pos = malloc((a->nchunks ? a->nchunks : 1) * sizeof(*rf.pos)),
		.offer = calloc(n ? n : 1, sizeof(*rf.offer)),
		.offered = calloc(n ? n : 1, 1),
		.fifo = calloc(n ? n : 1, sizeof(*rf.fifo)),
		.m = malloc(sizeof(*rf.m)),
	};
	struct vp_fab_read_req reqs[RELAY_BATCH];
	uint32_t idx[RELAY_BATCH];
	double quiet = vp_now() + r->cfg.relay_wait;
	size_t left = n;

	if (!rf.pos || !rf.offer || !rf.offered || !rf.fifo || !rf.m)
		goto out;
	memset(rf.pos, 0xff, (a->nchunks ? a->nchunks : 1) * sizeof(*rf.pos));
	for (size_t k = 0; k < n; k++)
		rf.pos[need[k]] = (int32_t)k;
	while (left && !(rf.last && rf.head == rf.tail)) {
		uint64_t bytes = 0;
		size_t nreq, ngot;

		relay_take_offers(r, &rf);
		nreq = relay_batch(r, &rf, reqs, idx, &bytes);
		if (nreq) {
			int rc = relay_read(r, &rf, reqs, idx, nreq, bytes, &ngot);

			left -= ngot;
			if (rc)
				break;
			quiet = vp_now() + r->cfg.relay_wait;
			continue;
		}
		if (rf.last)
			break;
		if (vp_now() > quiet) {
			vp_log(LOG_INFO, "repl", "relay: consumer %" PRIu64 " offered nothing of '%s' for %.1f s; the producer serves the rest, and what follows for %.0f s or until the tree changes",
			       r->relay.parent_id, a->path, r->cfg.relay_wait, RELAY_QUIET_S);
			r->relay.parent_quiet_until = vp_now() + RELAY_QUIET_S;
			break;
		}
		if (relay_wait_offers(r, quiet))
			rf.last = 1;
	}
out:
	free(rf.pos);
	free(rf.offer);
	free(rf.offered);
	free(rf.fifo);
	free(rf.m);
	return left;
}

/* Checks each chunk read from the producer as it lands, while the next reads are in flight; offers it on. */
struct verify {
	struct vp_repl *r;
	const announce_t *a;
	const struct vp_fab_read_req *reqs;
	const uint32_t *fetched;	/* request -> chunk index */
	void **mem;			/* the host chunks */
	int direct;			/* reads land in the GPU stage */
	int bad;			/* -EBADMSG: bad_idx does not match its hash; or the tier's -errno */
	uint32_t bad_idx;
};

static void verify_chunk(void *arg, size_t req)
{
	struct verify *v = arg;
	uint32_t idx = v->fetched[req];
	void *host = v->mem[idx];
	int rc;

	if (v->bad)
		return;
	if (v->direct) {	/* it landed in the GPU tier: on to the host cache */
		rc = vp_gpu_stage_landed(v->r->cons.gst, (uint64_t)idx * v->a->chunk_size, host,
					 v->reqs[req].len);
		if (rc) {
			v->bad = rc;
			return;
		}
	}
	if (XXH3_64bits(host, v->reqs[req].len) != v->r->cons.asm_refs[idx].hash) {
		v->bad = -EBADMSG;
		v->bad_idx = idx;
		return;
	}
	repl_consumer_heard(v->r, vp_now());	/* a read from the producer completed: it is alive */
	chunk_ready(v->r, v->a, idx, host, v->reqs[req].len, v->direct);
}

/*
 * A relayed announce: what we hold already of it (chunks not in
 * need[0..n): reused, or fetched early) goes to our children first.
 */
static void offer_held(struct vp_repl *r, const announce_t *a, void **mem,
		       const uint32_t *need, size_t n)
{
	uint8_t *needed = calloc(a->nchunks ? a->nchunks : 1, 1);

	repl_offer_begin(r, a);
	for (size_t k = 0; needed && k < n; k++)
		needed[need[k]] = 1;
	for (uint32_t i = 0; needed && i < a->nchunks; i++)
		if (!needed[i] && mem[i] && r->cons.asm_refs[i].key)
			repl_offer_chunk(r, a, i, mem[i]);
	free(needed);
	repl_offer_flush(r, 0);
}

/*
 * Reads reqs[0..nreq) (of bytes in all; idx: request -> chunk) from the
 * producer, each chunk checked as it lands.  Given up after peer_timeout
 * without a chunk: a slow producer is waited for.  Returns 0, -EBADMSG
 * (*bad_idx does not match its hash) or -errno.
 */
static int producer_read(struct vp_repl *r, const announce_t *a, void **mem,
			 const struct vp_fab_read_req *reqs, const uint32_t *idx, size_t nreq,
			 uint64_t bytes, uint32_t *bad_idx)
{
	struct verify v = { .r = r, .a = a, .reqs = reqs, .fetched = idx, .mem = mem,
			    .direct = r->cons.gst_mr != NULL };
	int rc = vp_fab_read_cb(r->fab, r->cons.producer, reqs, nreq, r->cfg.repl_inflight,
				r->cfg.peer_timeout, verify_chunk, &v);

	r->cons.from_producer += bytes;
	r->cons.bytes_producer_in += bytes;
	if (!rc && v.direct)
		r->cons.bytes_direct_in += bytes;
	if (!rc && v.bad) {
		*bad_idx = v.bad_idx;
		rc = v.bad;
	}
	return rc;
}

/*
 * Fetches chunks need[0..n) of announce a into mem[chunk] (the caller's
 * pool chunks), each checked against its hash as it lands and offered to
 * our relay children.  A relayed announce reads first from our relay;
 * the producer serves the rest.  Returns 0, -EBADMSG (a chunk from the
 * producer does not match its hash; *bad_idx says which), or -errno.
 */
int repl_fetch_chunks(struct vp_repl *r, const announce_t *a, void **mem,
		      const uint32_t *need, size_t n, uint32_t *bad_idx)
{
	struct vp_fab_read_req *reqs = calloc(n ? n : 1, sizeof(*reqs));
	uint32_t *idx = calloc(n ? n : 1, sizeof(*idx));
	uint8_t *got = calloc(n ? n : 1, 1);
	int relayed = (a->flags & VP_ANNOUNCE_RELAY) != 0, from_relay;
	size_t nreq = 0, missing = n;
	uint64_t bytes = 0;
	int rc = 0;

	if (!reqs || !idx || !got) {
		rc = -ENOMEM;
		goto out;
	}
	if (relayed && r->relay.nchildren)
		offer_held(r, a, mem, need, n);
	/* a relay that failed us lately: the producer serves until it is due again */
	from_relay = relayed && r->relay.parent_id && vp_now() >= r->relay.parent_quiet_until;
	if (from_relay && n)
		missing = relay_fetch(r, a, mem, need, n, got);
	for (size_t k = 0; k < n; k++) {
		uint32_t i = need[k];
		struct slab_mr *s;

		if (got[k])
			continue;
		if (!mem[i] || !(s = repl_slab_of(r, mem[i]))) {
			rc = mem[i] ? -EFAULT : -ENOMEM;
			goto out;
		}
		idx[nreq] = i;
		reqs[nreq].mr = s->mr;
		reqs[nreq].local = mem[i];
		if (r->cons.gst_mr) {	/* GPU-direct: into the tier, then to mem[i] */
			reqs[nreq].mr = r->cons.gst_mr;
			reqs[nreq].local = (char *)vp_gpu_stage_mem(r->cons.gst) + (uint64_t)i * a->chunk_size;
		}
		reqs[nreq].len = (size_t)chunk_len(a, i);
		reqs[nreq].remote_addr = r->cons.asm_refs[i].addr;
		reqs[nreq].key = r->cons.asm_refs[i].key;
		bytes += reqs[nreq].len;
		nreq++;
	}
	if (from_relay && missing)
		r->cons.bytes_relay_fallback += bytes;
	rc = producer_read(r, a, mem, reqs, idx, nreq, bytes, bad_idx);
	if (rc == -ETIMEDOUT && !r->cons.gst_mr) {
		/*
		 * Reads the fabric gave up on may still be posted and land
		 * later (a link that comes back): their chunks must never go
		 * back to the pool, whose free list lives in free chunks (a
		 * consumer crashed there after a link cut).  Which of them is
		 * still posted is not known, so all are kept.
		 */
		for (size_t q = 0; q < nreq; q++) {
			repl_quarantine(r, mem[idx[q]]);
			mem[idx[q]] = NULL;
		}
	}
out:
	free(reqs);
	free(idx);
	free(got);
	return rc;
}

/*
 * GPU-direct on the consumer: registers the stage's device memory, so
 * that the producer's chunks land there (and are copied on to the host
 * cache as each arrives).  If the fabric refuses it, the host-staged path
 * takes over for good, and the log says so.
 */
void repl_stage_register(struct vp_repl *r)
{
	int rc = vp_fab_mr_reg_dev(r->fab, vp_gpu_stage_mem(r->cons.gst),
				   (size_t)vp_gpu_stage_size(r->cons.gst), r->cuda_dev, 0,
				   &r->cons.gst_mr, NULL, NULL);

	if (!rc)
		return;
	r->cons.gst_mr = NULL;
	__atomic_store_n(&r->direct, 0, __ATOMIC_RELAXED);	/* status reads it */
	vp_log(LOG_WARNING, "repl", "registering GPU memory with the fabric: %s; the host-staged path takes over",
	       strerror(-rc));
	repl_log_gpu_path(r, "producer", 0);
}

/*
 * The transfer is over (rc): the stage's registration goes.  After a
 * timeout a read may still land in the stage: its memory and registration
 * stay until the mount ends.  A chunk that landed in device memory and
 * does not match its hash on the host turns GPU-direct off for good: the
 * platform may not make NIC writes visible to the device's copy engine
 * (GPUDirect RDMA without a flush), and every later version would fail
 * the same way.  The host-staged path takes the next versions.
 */
void repl_stage_unregister(struct vp_repl *r, int rc)
{
	struct vp_fab_mr **dead;

	if (!r->cons.gst_mr)
		return;
	if (rc == -EBADMSG) {
		__atomic_store_n(&r->direct, 0, __ATOMIC_RELAXED);
		vp_log(LOG_ERR, "repl", "a chunk read GPU-direct does not match its hash once copied to the host; GPU-direct is off on this node from now on");
		repl_log_gpu_path(r, "producer", 0);
	}
	if (rc == -ETIMEDOUT &&
	    (dead = realloc(r->cons.dead_mrs, (r->cons.ndead_mrs + 1) * sizeof(*dead)))) {
		r->cons.dead_mrs = dead;
		dead[r->cons.ndead_mrs++] = r->cons.gst_mr;
		vp_gpu_stage_quarantine(r->cons.gst);
		r->cons.gst = NULL;
	} else {
		vp_fab_mr_close(r->cons.gst_mr);	/* (out of memory: a late read may land in freed memory) */
	}
	r->cons.gst_mr = NULL;
}
