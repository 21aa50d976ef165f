/*
 * recover: producer runs (epochs), and what a restarted producer takes
 * back from its consumers.
 *
 * Each start of a producer is an epoch (vp_ns_epoch), and versions are
 * ordered by (epoch, version).  A restarted producer numbers each path
 * from what the PFS kept, so a consumer may hold a later version of the
 * run before: one that reached it and not the PFS.  On the consumer, the
 * catch-up's ANNOUNCEs and KEEPs are reconciled against what it holds
 * (repl_reconcile):
 *
 *   TAKE   the producer's version is later: fetched and installed, even
 *          with a lower number, when it is of a later run;
 *   SAME   the same number and bytes, of another run: stamped with the
 *          producer's epoch, not installed again (no event);
 *   SKIP   we hold it, or a later one of the producer's own run;
 *   AHEAD  we hold a later version of a run before the producer's, which
 *          the producer lacks: kept, and said (the log, status "ahead",
 *          a DONE with VP_DONE_AHEAD), and offered back (an ANNOUNCE with
 *          VP_ANNOUNCE_RECOVER, its chunks registered for the producer's
 *          reads, until the producer's RELAY_DONE or PIN_TIMEOUT).
 *
 * The producer, on a RECOVER announce, numbers the path's next version
 * after it whatever else happens, and (recover=on) reads it back, checks
 * every chunk's hash and the list's checksum, and commits it under its
 * own number in this run: flushed, and announced to every consumer (the
 * one that offered it finds the same bytes: SAME).  One version at a time,
 * on the repl thread, between the other messages.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "../clock.h"
#include "../data.h"
#include "../lock.h"
#include "../log.h"
#include "../ns.h"
#include "../pool.h"
#include "repl_i.h"

#define OFFER_TIMEOUT 120.0	/* a consumer's offer waits this long for the producer's reads */
#define MAX_OFFERS_QUEUED 4096	/* producer: complete offers of one consumer waiting to be read */

/* (e1, v1) against (e2, v2): <0, 0, >0. */
static int stamp_cmp(uint64_t e1, uint64_t v1, uint64_t e2, uint64_t v2)
{
	if (e1 != e2)
		return e1 < e2 ? -1 : 1;
	return v1 < v2 ? -1 : v1 > v2;
}

/* True if d holds, byte for byte, the chunk list of checksum sum (size bytes). */
static int same_bytes(struct vp_repl *r, struct vp_data *d, uint64_t size, uint64_t sum)
{
	uint32_t chunk = (uint32_t)vp_pool_chunk_size(r->pool);
	uint32_t n = (uint32_t)((size + chunk - 1) / chunk);
	uint64_t *hashes;
	int same = 0;

	if (!d || vp_data_size(d) != size || !vp_data_fully_resident(d))
		return 0;
	hashes = calloc(n ? n : 1, sizeof(*hashes));
	if (hashes && !vp_data_chunk_hashes(d, hashes, n))
		same = list_checksum(hashes, n, size) == sum;
	free(hashes);
	return same;
}

enum repl_verdict repl_reconcile(struct vp_repl *r, const char *path, uint64_t epoch,
				 uint64_t version, const uint64_t *checksum, uint64_t size,
				 uint64_t *have_v, uint64_t *have_e)
{
	struct vp_ns_stamp st;
	int c;

	if (vp_ns_path_stamp(r->ns, path, &st))
		return REPL_TAKE;
	*have_v = st.version;
	*have_e = st.epoch;
	c = stamp_cmp(*have_e, *have_v, epoch, version);
	if (c < 0) {
		if (checksum && *have_v == version) {
			struct vp_data *d = vp_ns_path_data(r->ns, path);
			int same = same_bytes(r, d, size, *checksum);

			vp_data_put(d);
			if (same)
				return REPL_SAME;
		}
		return REPL_TAKE;
	}
	/* later than the producer's, and neither is of its own run: it lost ours */
	if (c > 0 && *have_e < r->cons.epoch && epoch < r->cons.epoch)
		return REPL_AHEAD;
	return REPL_SKIP;
}

static int ahead_find_locked(struct vp_repl *r, const char *path)
{
	VP_ASSERT_LOCKED(&r->lock);
	for (size_t i = 0; i < r->cons.nahead; i++)
		if (!strcmp(r->cons.ahead[i], path))
			return (int)i;
	return -1;
}

void repl_ahead_clear(struct vp_repl *r, const char *path)
{
	int i;

	pthread_mutex_lock(&r->lock);
	if (!path) {
		for (size_t k = 0; k < r->cons.nahead; k++)
			free(r->cons.ahead[k]);
		r->cons.nahead = 0;
	} else if ((i = ahead_find_locked(r, path)) >= 0) {
		free(r->cons.ahead[i]);
		r->cons.ahead[i] = r->cons.ahead[--r->cons.nahead];
	}
	pthread_mutex_unlock(&r->lock);
}

static void ahead_add(struct vp_repl *r, const char *path)
{
	char **grown, *copy;

	pthread_mutex_lock(&r->lock);
	if (ahead_find_locked(r, path) < 0 && (copy = strdup(path))) {
		grown = realloc(r->cons.ahead, (r->cons.nahead + 1) * sizeof(*grown));
		if (grown) {
			r->cons.ahead = grown;
			r->cons.ahead[r->cons.nahead++] = copy;
		} else {
			free(copy);
		}
	}
	pthread_mutex_unlock(&r->lock);
}

/*
 * Offers version (epoch, version) of path back to the producer: an
 * ANNOUNCE with RECOVER whose chunks the producer may read until it says
 * RELAY_DONE.  Returns 0 or -errno.
 */
static int offer_back(struct vp_repl *r, const char *path, uint64_t version, uint64_t epoch)
{
	struct vp_data *d = vp_ns_path_data(r->ns, path);
	struct vp_msg *m = calloc(1, sizeof(*m));
	struct vp_chunk_ref *refs = NULL;
	uint64_t *hashes = NULL;
	struct pin *pin = NULL;
	struct vp_ns_stamp st;
	announce_t *a;
	int rc = -ENOMEM;

	if (!d || !m)
		goto out;
	m->type = VP_MSG_ANNOUNCE;
	a = &m->u.announce;
	a->version = version;
	a->epoch = epoch;
	a->flags = VP_ANNOUNCE_RECOVER;
	snprintf(a->path, sizeof(a->path), "%s", path);
	rc = vp_ns_path_stamp(r->ns, path, &st);
	if (!rc && (st.version != version || st.epoch != epoch))
		rc = -ESTALE;
	a->mode = st.mode;
	a->mtime_ns = st.mtime_ns;
	if (!rc)
		rc = repl_announce_hash(r, d, a, 0, &hashes);
	if (rc)
		goto out;
	pin = calloc(1, sizeof(*pin));
	refs = calloc(a->nchunks ? a->nchunks : 1, sizeof(*refs));
	rc = -ENOMEM;
	if (!pin || !refs)
		goto out;
	pin->seq = a->seq;
	pin->data = vp_data_get(d);
	pin->since = vp_now();
	rc = repl_pin_register(r, pin, d, a->size, a->chunk_size, a->nchunks, hashes, refs);
	if (rc)
		goto out;
	for (uint32_t first = 0; first < a->nchunks || first == 0; first += VP_PROTO_CHUNKS_PER_MSG) {
		announce_piece(a, refs, first);
		repl_consumer_send(r, m);
		if (!a->nchunks)
			break;
	}
	LIST_INSERT_HEAD(&r->cons.offers, pin, link);
	pin = NULL;
out:
	if (pin)
		repl_pin_free(pin, r->gpu);
	vp_data_put(d);
	free(refs);
	free(hashes);
	free(m);
	return rc;
}

void repl_consumer_ahead(struct vp_repl *r, const char *path, uint64_t seq,
			 uint64_t have_v, uint64_t have_e, uint64_t their_v)
{
	struct vp_msg m = { .type = VP_MSG_DONE };
	int rc;

	ahead_add(r, path);
	m.u.done.seq = seq;
	m.u.done.version = have_v;
	m.u.done.epoch = have_e;
	m.u.done.status = VP_DONE_AHEAD;
	repl_consumer_send(r, &m);
	rc = offer_back(r, path, have_v, have_e);
	if (their_v)
		vp_log(LOG_WARNING, "repl", "holds '%s' version %" PRIu64 ", which the producer does not have (its run began after ours; it has version %" PRIu64 "): kept, and %s",
		       path, have_v, their_v, rc ? "cannot be offered back" : "offered back to it");
	else
		vp_log(LOG_WARNING, "repl", "holds '%s' version %" PRIu64 ", which the producer does not have (its run began after ours; the file is not on the PFS): kept, and %s",
		       path, have_v, rc ? "cannot be offered back" : "offered back to it");
	if (rc)
		vp_log(LOG_WARNING, "repl", "offering '%s' back: %s", path, strerror(-rc));
	repl_publish_stats(r);
}

void repl_offers_done(struct vp_repl *r, uint64_t seq, int all)
{
	struct pin *pin, *next;
	double now = vp_now();

	for (pin = LIST_FIRST(&r->cons.offers); pin; pin = next) {
		next = LIST_NEXT(pin, link);
		if (all || pin->seq == seq || now - pin->since > OFFER_TIMEOUT) {
			LIST_REMOVE(pin, link);
			repl_pin_free(pin, r->gpu);	/* no peer reads it any more */
		}
	}
}

/* ---- producer ---- */

struct recovery {		/* producer: a RECOVER announce, assembled */
	LIST_ENTRY(recovery) link;
	uint64_t peer;
	vp_fab_addr addr;
	struct vp_msg *m;	/* its first piece */
	struct vp_chunk_ref *refs;
	uint32_t got;
	int complete;
};

static void recovery_free(struct recovery *rc)
{
	if (!rc)
		return;
	free(rc->refs);
	free(rc->m);
	free(rc);
}

void repl_recover_offer_locked(struct vp_repl *r, struct peer *p, struct vp_msg *m)
{
	announce_t *a = &m->u.announce;
	struct recovery *job;

	VP_ASSERT_LOCKED(&r->lock);
	LIST_FOREACH(job, &r->prod.recoveries, link)
		if (job->peer == p->id && !job->complete && job->m->u.announce.seq == a->seq)
			break;
	if (!job) {
		struct recovery *old, *next;
		unsigned int queued = 0;
		uint64_t bytes = a->size;

		if (a->first != 0 || a->size > r->cfg.ram_cache)
			return;		/* a piece of an offer we dropped, or more than the cache holds */
		/* our chunk layout, a sane number, a run before ours: else it is never read */
		if (a->chunk_size != vp_pool_chunk_size(r->pool) || !a->version ||
		    a->version >= (1ULL << 48) || a->epoch >= r->prod.epoch) {
			vp_log(LOG_WARNING, "repl", "consumer %" PRIu64 " offers '%s' version %" PRIu64 " back with a chunk size, number or run we cannot take: refused",
			       p->id, a->path, a->version);
			return;
		}
		/* one offer being assembled per consumer, and a few complete ones queued */
		for (old = LIST_FIRST(&r->prod.recoveries); old; old = next) {
			next = LIST_NEXT(old, link);
			if (old->peer != p->id)
				continue;
			if (!old->complete) {
				LIST_REMOVE(old, link);
				recovery_free(old);
			} else {
				queued++;
				bytes += old->m->u.announce.size;
			}
		}
		/* what an honest consumer can hold: its offers fit in a cache like ours */
		if (queued >= MAX_OFFERS_QUEUED || bytes > 2 * r->cfg.ram_cache) {
			vp_log(LOG_WARNING, "repl", "consumer %" PRIu64 " offers '%s' back while %u of its offers wait: dropped (it offers again at its next catch-up)",
			       p->id, a->path, queued);
			return;
		}
		job = calloc(1, sizeof(*job));
		if (!job || !(job->m = malloc(sizeof(*m))) ||
		    !(job->refs = calloc(a->nchunks ? a->nchunks : 1, sizeof(*job->refs)))) {
			recovery_free(job);
			return;
		}
		memcpy(job->m, m, sizeof(*m));
		job->peer = p->id;
		job->addr = p->addr;
		LIST_INSERT_HEAD(&r->prod.recoveries, job, link);
	} else if (a->first != job->got || a->nchunks != job->m->u.announce.nchunks ||
		   a->chunk_size != job->m->u.announce.chunk_size || a->size != job->m->u.announce.size ||
		   a->checksum != job->m->u.announce.checksum || a->epoch != job->m->u.announce.epoch ||
		   a->version != job->m->u.announce.version ||
		   strcmp(a->path, job->m->u.announce.path)) {
		return;
	}
	memcpy(job->refs + a->first, a->chunk, a->count * sizeof(*a->chunk));
	job->got += a->count;
	if (job->got >= job->m->u.announce.nchunks) {
		job->complete = 1;
		pthread_cond_signal(&r->cond);
	}
}

/* Reads job's chunks from its consumer into pool chunks, each checked; 0 or -errno. */
static int read_back(struct vp_repl *r, struct recovery *job, void **mem)
{
	const announce_t *a = &job->m->u.announce;
	struct vp_fab_read_req *reqs = calloc(a->nchunks ? a->nchunks : 1, sizeof(*reqs));
	uint32_t *idx = calloc(a->nchunks ? a->nchunks : 1, sizeof(*idx));
	size_t n = 0;
	int rc = reqs && idx ? 0 : -ENOMEM;

	for (uint32_t i = 0; !rc && i < a->nchunks; i++) {
		uint64_t start = (uint64_t)i * a->chunk_size;
		size_t len = (size_t)(a->size - start < a->chunk_size ? a->size - start : a->chunk_size);
		struct slab_mr *s;

		mem[i] = vp_pool_get_chunk(r->pool, r->cfg.cache_wait, &rc);
		if (!mem[i])
			break;
		rc = 0;
		memset(mem[i], 0, a->chunk_size);
		if (!job->refs[i].key)
			continue;	/* a hole */
		s = repl_slab_of(r, mem[i]);
		if (!s) {
			rc = -EFAULT;
			break;
		}
		reqs[n] = (struct vp_fab_read_req){ .mr = s->mr, .local = mem[i], .len = len,
						    .remote_addr = job->refs[i].addr,
						    .key = job->refs[i].key };
		idx[n++] = i;
	}
	if (!rc)
		rc = vp_fab_read(r->fab, job->addr, reqs, n, r->cfg.repl_inflight, r->cfg.peer_timeout);
	if (rc == -ETIMEDOUT) {
		for (size_t k = 0; k < n; k++) {	/* a read may land later: not back to the pool yet */
			repl_quarantine(r, mem[idx[k]]);
			mem[idx[k]] = NULL;
		}
	}
	for (size_t k = 0; !rc && k < n; k++)
		if (XXH3_64bits(reqs[k].local, reqs[k].len) != job->refs[idx[k]].hash) {
			vp_log(LOG_ERR, "repl", "'%s' version %" PRIu64 " from consumer %" PRIu64 ": chunk %u does not match its hash; not taken back",
			       a->path, a->version, job->peer, idx[k]);
			rc = -EBADMSG;
		}
	free(reqs);
	free(idx);
	return rc;
}

/* Takes job's version back (recover=on) once the producer still lacks it; 0 or -errno. */
static int take_back(struct vp_repl *r, struct recovery *job)
{
	const announce_t *a = &job->m->u.announce;
	uint64_t hashes_sum, *hashes;
	struct vp_ns_stamp st;
	void **mem;
	struct vp_data *d;
	int rc;

	if (a->epoch >= r->prod.epoch)
		return -EPERM;		/* a version of this run (or a later one) is ours to have */
	if (vp_ns_path_stamp(r->ns, a->path, &st)) {
		if (vp_ns_removed_this_run(r->ns, a->path))
			return -ENOENT;		/* deleted here: not made again */
		st = (struct vp_ns_stamp){ 0 };	/* never here: made */
	} else if (stamp_cmp(st.epoch, st.version, a->epoch, a->version) >= 0 || st.version >= a->version)
		return -ESTALE;		/* it moved on meanwhile */
	hashes = calloc(a->nchunks ? a->nchunks : 1, sizeof(*hashes));
	if (!hashes)
		return -ENOMEM;
	for (uint32_t i = 0; i < a->nchunks; i++)
		hashes[i] = job->refs[i].hash;
	hashes_sum = list_checksum(hashes, a->nchunks, a->size);
	free(hashes);
	if (hashes_sum != a->checksum)
		return -EBADMSG;
	mem = calloc(a->nchunks ? a->nchunks : 1, sizeof(*mem));
	if (!mem)
		return -ENOMEM;
	rc = read_back(r, job, mem);
	if (rc) {
		for (uint32_t i = 0; i < a->nchunks; i++)
			if (mem[i])
				vp_pool_put_chunk(r->pool, mem[i]);
		free(mem);
		return rc;
	}
	d = vp_data_adopt(r->pool, mem, a->nchunks, a->size);
	free(mem);
	if (!d)
		return -ENOMEM;
	rc = vp_ns_recover(r->ns, a->path, d, a->version, st.version, a->mode, a->mtime_ns);
	vp_data_put(d);
	return rc;
}

/*
 * Tells p (if it is still there) that we are done with its offer seq;
 * unlink: first that the path was deleted in this run.
 */
static void offer_release(struct vp_repl *r, uint64_t peer, uint64_t seq, const char *unlink)
{
	struct vp_msg *m = calloc(1, sizeof(*m));
	struct peer *p;
	struct qmsg *q;

	if (!m)
		return;
	pthread_mutex_lock(&r->lock);
	LIST_FOREACH(p, &r->prod.peers, link)
		if (p->id == peer && peer_live(p))
			break;
	if (p && unlink) {
		m->type = VP_MSG_OP;
		m->u.op.kind = VP_OP_UNLINK;
		m->u.op.seq = ++r->prod.seq;
		snprintf(m->u.op.path, sizeof(m->u.op.path), "%s", unlink);
		if ((q = repl_qmsg_of(m)))
			repl_peer_queue_locked(r, p, q);
	}
	memset(m, 0, sizeof(*m));
	m->type = VP_MSG_RELAY_DONE;
	m->u.relay_done.seq = seq;
	if (p && (q = repl_qmsg_of(m)))
		repl_peer_queue_locked(r, p, q);
	pthread_mutex_unlock(&r->lock);
	free(m);
}

static void recover_one(struct vp_repl *r, struct recovery *job)
{
	const announce_t *a = &job->m->u.announce;
	double t0 = vp_now();
	int rc = 0;

	/* whatever happens next, no later version of ours repeats its number */
	vp_ns_raise_floor(r->ns, a->path, a->version);
	__atomic_add_fetch(&r->prod.ahead_seen, 1, __ATOMIC_RELAXED);
	vp_log(LOG_WARNING, "repl", "'%s': a consumer holds version %" PRIu64 " of a run before this one, which this run does not have; the next version is numbered after it",
	       a->path, a->version);
	if (!strcmp(r->cfg.recover, "off")) {
		struct vp_ns_stamp st;

		if (vp_ns_path_stamp(r->ns, a->path, &st) && vp_ns_removed_this_run(r->ns, a->path))
			rc = -ENOENT;	/* deleted here: the consumer deletes it too */
		vp_log(LOG_WARNING, "repl", "'%s' version %" PRIu64 " is not taken back (recover=off): consumer %" PRIu64 " keeps it until the next version",
		       a->path, a->version, job->peer);
	} else if ((rc = take_back(r, job))) {
		vp_log(LOG_WARNING, "repl", "'%s' version %" PRIu64 " from consumer %" PRIu64 " not taken back: %s",
		       a->path, a->version, job->peer,
		       rc == -ESTALE ? "this run has a later version" :
		       rc == -ENOENT ? "it was deleted in this run; the consumer deletes it too" :
		       rc == -ENOTDIR ? "its directory is gone" :
		       rc == -EBADMSG ? "its bytes do not match their hashes" :
		       rc == -EPERM ? "it claims a run that is not before this one" : strerror(-rc));
	} else {
		__atomic_add_fetch(&r->prod.recovered, 1, __ATOMIC_RELAXED);
		vp_log(LOG_NOTICE, "repl", "took back '%s' version %" PRIu64 " from consumer %" PRIu64 " (%" PRIu64 " bytes, every chunk hash-checked, in %.3f s): served and flushed as this run's",
		       a->path, a->version, job->peer, a->size, vp_now() - t0);
	}
	offer_release(r, job->peer, a->seq, rc == -ENOENT ? a->path : NULL);
}

/* Frees the offers whose consumer left (or fell silent), complete or not. */
static void recover_sweep(struct vp_repl *r)
{
	struct recovery *job, *next;

	pthread_mutex_lock(&r->lock);
	for (job = LIST_FIRST(&r->prod.recoveries); job; job = next) {
		struct peer *p;

		next = LIST_NEXT(job, link);
		LIST_FOREACH(p, &r->prod.peers, link)
			if (p->id == job->peer && peer_live(p))
				break;
		if (!p) {
			LIST_REMOVE(job, link);
			recovery_free(job);
		}
	}
	pthread_mutex_unlock(&r->lock);
}

/*
 * Takes back complete offers, for RECOVER_TICK_S at most: each is a whole
 * version's reads, and the messages queued meanwhile (DONEs, HELLOs) wait
 * for the repl thread.  An offer whose consumer is gone is not read.
 */
void repl_recover_tick(struct vp_repl *r)
{
	double until = vp_now() + RECOVER_TICK_S;
	struct recovery *job;

	do {
		recover_sweep(r);
		pthread_mutex_lock(&r->lock);
		LIST_FOREACH(job, &r->prod.recoveries, link)
			if (job->complete)
				break;
		if (job)
			LIST_REMOVE(job, link);
		pthread_mutex_unlock(&r->lock);
		if (!job)
			break;
		recover_one(r, job);
		recovery_free(job);
	} while (vp_now() < until);
}

void repl_recover_free(struct vp_repl *r)
{
	struct recovery *job;

	while ((job = LIST_FIRST(&r->prod.recoveries))) {
		LIST_REMOVE(job, link);
		recovery_free(job);
	}
	repl_offers_done(r, 0, 1);
	repl_ahead_clear(r, NULL);
	free(r->cons.ahead);
}
