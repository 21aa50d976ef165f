/*
 * repl/producer.c: producer: the namespace's events, turned into announces (with
 * the pins that keep their bytes readable) and operations; catch-up; the tick.
 */
#define _GNU_SOURCE
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "../clock.h"
#include "../data.h"
#include "../gpu.h"
#include "../lock.h"
#include "../log.h"
#include "../ns.h"
#include "../pool.h"
#include "repl_i.h"

/* Appends e to the producer's ordered event queue and wakes the thread. */
static void event_append(struct vp_repl *r, struct event *e)
{
	pthread_mutex_lock(&r->lock);
	STAILQ_INSERT_TAIL(&r->prod.events, e, link);
	pthread_cond_signal(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

/*
 * The namespace's hooks run with ns->lock held, which keeps the events in
 * the namespace's order.  That lock is the namespace's own (ns.h gives no
 * way to assert it); r->lock, taken inside, follows it (lock.h).
 */
void vp_repl_note_op_locked(struct vp_repl *r, enum vp_op_kind kind,
			    const char *path, const char *path2, uint32_t mode, uint64_t rdev)
{
	struct event *e;

	if (!r || r->consumer)
		return;
	assert(vp_ns_lock_held(r->ns));
	e = calloc(1, sizeof(*e));
	if (!e || !(e->path = strdup(path)) || !(e->path2 = strdup(path2 ? path2 : ""))) {
		if (e)
			free(e->path);
		free(e);
		vp_log(LOG_ERR, "repl", "out of memory: consumers will miss a change to '%s'", path);
		return;
	}
	e->kind = kind;
	e->mode = kind == VP_OP_MKNOD ? mode : mode & 07777;
	e->rdev = rdev;
	vp_log(LOG_DEBUG, "repl", "noted op %u on '%s'", kind, path);
	event_append(r, e);
}

/*
 * Latest wins: queued, unsent versions and previews of path are dropped;
 * with previews_only, only previews (a preview never replaces a version).
 */
static void drop_queued_versions(struct vp_repl *r, const char *path, int previews_only)
{
	struct event *o;

	pthread_mutex_lock(&r->lock);
	STAILQ_FOREACH(o, &r->prod.events, link) {
		if (o->is_version && o->data && !strcmp(o->path, path) &&
		    (o->is_preview || !previews_only)) {
			vp_data_put(o->data);
			o->data = NULL;
		}
	}
	pthread_mutex_unlock(&r->lock);
}

void vp_repl_note_version_locked(struct vp_repl *r, const struct vp_ns_entry *v)
{
	struct event *e;

	if (!r || r->consumer)
		return;
	assert(vp_ns_lock_held(r->ns));
	e = calloc(1, sizeof(*e));
	if (!e || !(e->path = strdup(v->path))) {
		free(e);
		vp_log(LOG_ERR, "repl", "out of memory: consumers will miss version %" PRIu64 " of '%s'",
		       v->version, v->path);
		return;
	}
	e->is_version = 1;
	e->ino = v->ino;
	e->data = vp_data_get(v->d);
	e->version = v->version;
	e->epoch = v->epoch;
	e->mode = v->mode & 07777;
	e->mtime_ns = v->mtime_ns;
	drop_queued_versions(r, v->path, 0);
	event_append(r, e);
}

void vp_repl_note_preview(struct vp_repl *r, const struct vp_ns_entry *v)
{
	struct event *e;

	if (!r || r->consumer) {
		vp_data_put(v->d);
		return;
	}
	e = calloc(1, sizeof(*e));
	if (!e || !(e->path = strdup(v->path))) {
		free(e);
		vp_data_put(v->d);
		return;		/* a preview is an optimisation: the version ships at commit */
	}
	e->is_version = e->is_preview = 1;
	e->ino = v->ino;
	e->data = v->d;
	e->version = v->version;
	e->epoch = v->epoch;
	e->mode = v->mode & 07777;
	drop_queued_versions(r, v->path, 1);	/* an unsent older preview */
	event_append(r, e);
}

void repl_ack_locked(struct vp_repl *r, const struct pin *pin, uint64_t id)
{
	VP_ASSERT_LOCKED(&r->lock);
	for (unsigned int i = 0; i < pin->nwaiting; i++)
		if (id && pin->waiting[i] == id) {	/* once per consumer: the pin forgets it next */
			__atomic_add_fetch(&pin->data->peers_held, 1, __ATOMIC_RELAXED);
			pthread_cond_broadcast(&r->prod.held_cond);
			return;
		}
}

/* The consumers that said they hold d's version. */
static unsigned int held_count_locked(struct vp_repl *r, const struct vp_data *d)
{
	VP_ASSERT_LOCKED(&r->lock);
	return __atomic_load_n(&d->peers_held, __ATOMIC_RELAXED);
}

static unsigned int active_peers_locked(struct vp_repl *r)
{
	struct peer *p;
	unsigned int n = 0;

	VP_ASSERT_LOCKED(&r->lock);
	LIST_FOREACH(p, &r->prod.peers, link)
		n += peer_live(p);
	return n;
}

unsigned int vp_repl_held_by(struct vp_repl *r, const struct vp_data *d, unsigned int want,
			     double wait_s)
{
	double now = vp_now(), deadline = now + wait_s, short_since = 0;
	unsigned int n;

	if (!r || r->consumer)
		return 0;
	pthread_mutex_lock(&r->lock);
	for (;;) {
		struct timespec ts;

		n = held_count_locked(r, d);
		now = vp_now();
		if (n >= want || now >= deadline || r->stop)
			break;
		if (active_peers_locked(r) < want) {
			if (!short_since)
				short_since = now;
			else if (now - short_since > r->cfg.peer_timeout)
				break;	/* not enough consumers to hold it */
		} else {
			short_since = 0;
		}
		vp_abstime(&ts, now + 0.5 < deadline ? now + 0.5 : deadline);
		pthread_cond_timedwait(&r->prod.held_cond, &r->lock, &ts);
	}
	pthread_mutex_unlock(&r->lock);
	return n;
}

int vp_repl_held_all(struct vp_repl *r, const struct vp_data *d, double wait_s)
{
	double deadline = vp_now() + wait_s;
	int all;

	if (!r || r->consumer)
		return 1;
	pthread_mutex_lock(&r->lock);
	for (;;) {
		struct timespec ts;
		double now;

		all = held_count_locked(r, d) >= active_peers_locked(r);
		now = vp_now();
		if (all || r->stop || now >= deadline)
			break;
		/* a consumer that dies stops counting: look again every 0.5 s */
		vp_abstime(&ts, now + 0.5 < deadline ? now + 0.5 : deadline);
		pthread_cond_timedwait(&r->prod.held_cond, &r->lock, &ts);
	}
	pthread_mutex_unlock(&r->lock);
	return all;
}

/* Consumer id is done with pin (said DONE, or left); another id changes nothing. */
void repl_pin_done(struct pin *pin, uint64_t id)
{
	for (unsigned int i = 0; i < pin->nwaiting; i++)
		if (pin->waiting[i] == id)
			pin->waiting[i] = 0;
}

/* 1 if some consumer still reads pin. */
static int pin_waited(const struct pin *pin)
{
	for (unsigned int i = 0; i < pin->nwaiting; i++)
		if (pin->waiting[i])
			return 1;
	return 0;
}

void repl_pin_free(struct pin *pin, struct vp_gpu *g)
{
	for (uint32_t i = 0; i < pin->nmrs; i++)
		vp_fab_mr_close(pin->mrs[i]);	/* no peer can read it any more */
	free(pin->mrs);
	free(pin->waiting);
	vp_fab_mr_close(pin->dev_mr);
	vp_gpu_lease_release(g, pin->lease);
	vp_data_put(pin->data);
	free(pin);
}

/*
 * GPU-direct on the producer: when the tier holds a complete mirror of
 * this very version, the announce points consumers into it (the pin
 * keeps it leased and registered until they are done).  A version whose
 * mirror is still being made goes from the host cache: waiting for the
 * host-to-device copy would only delay the consumers.
 */
static void serve_from_gpu(struct vp_repl *r, const char *path, uint64_t ino,
			   uint64_t version, uint64_t size, struct pin *pin)
{
	struct vp_gpu *g = r->gpu;
	uint64_t msize;
	void *mem;
	int rc;

	if (!g || !size)
		return;
	pin->lease = vp_gpu_hold(g, ino, version, &mem, &msize);
	if (!pin->lease)
		return;		/* not mirrored (yet) */
	rc = vp_fab_mr_reg_dev(r->fab, mem, (size_t)msize, r->cuda_dev, VP_FAB_MR_REMOTE_READ,
			       &pin->dev_mr, &pin->dev_key, &pin->dev_raddr);
	if (rc) {
		pin->dev_mr = NULL;
		vp_gpu_lease_release(g, pin->lease);
		pin->lease = NULL;
		vp_log(LOG_WARNING, "repl", "'%s' version %" PRIu64 ": registering its GPU mirror with the fabric: %s; served from the host cache",
		       path, version, strerror(-rc));
		return;
	}
	vp_log(LOG_DEBUG, "repl", "'%s' version %" PRIu64 ": served from its GPU mirror", path, version);
}

/*
 * Registers the chunks of a version for remote reads, for as long as the
 * pin lasts (the consumers' transfer), and fills refs with where they
 * are.  Each chunk is registered for its file bytes only: the rest of a
 * last, partial chunk is never readable.  Returns 0 or -errno.
 */
int repl_pin_register(struct vp_repl *r, struct pin *pin, struct vp_data *d, uint64_t size,
			uint32_t chunk, uint32_t nchunks, const uint64_t *hashes,
			struct vp_chunk_ref *refs)
{
	pin->mrs = calloc(nchunks ? nchunks : 1, sizeof(*pin->mrs));
	if (!pin->mrs)
		return -ENOMEM;
	pin->nmrs = nchunks;
	for (uint32_t i = 0; i < nchunks; i++) {
		const void *mem = vp_data_chunk_mem(d, i);
		uint64_t start = (uint64_t)i * chunk;
		size_t len = (size_t)(size - start < chunk ? size - start : chunk);
		int rc;

		refs[i] = (struct vp_chunk_ref){ 0 };
		if (!mem)
			continue;	/* a hole */
		refs[i].hash = hashes[i];
		if (pin->dev_mr) {	/* the same bytes, in the GPU mirror */
			refs[i].key = pin->dev_key;
			refs[i].addr = pin->dev_raddr + start;
			continue;
		}
		rc = vp_fab_mr_reg(r->fab, (void *)mem, len, &pin->mrs[i], &refs[i].key,
				   &refs[i].addr);
		if (rc)
			return rc;
	}
	return 0;
}

/*
 * Fills in the chunk list's part of announce a (size, chunks, checksum)
 * for d, and the next seq; *hashes gets the chunk hashes (the caller
 * frees them).  Returns 0, -ENODATA (d is not all in the cache) or -errno.
 */
int repl_announce_hash(struct vp_repl *r, struct vp_data *d, announce_t *a, int preview,
			 uint64_t **hashes)
{
	uint32_t chunk = (uint32_t)vp_pool_chunk_size(r->pool);
	uint64_t size = vp_data_size(d);
	uint32_t nchunks;
	int rc;

	if (preview)
		size = size / chunk * chunk;	/* the finished chunks only */
	nchunks = (uint32_t)((size + chunk - 1) / chunk);
	if (!vp_data_fully_resident(d)) {
		vp_log(LOG_INFO, "repl", "'%s' version %" PRIu64 " is not in the cache; consumers will read it from the PFS",
		       a->path, a->version);
		return -ENODATA;
	}
	*hashes = calloc(nchunks ? nchunks : 1, sizeof(**hashes));
	rc = *hashes ? vp_data_chunk_hashes(d, *hashes, nchunks) : -ENOMEM;
	if (rc)
		return rc;
	a->size = size;
	a->chunk_size = chunk;
	a->nchunks = nchunks;
	a->checksum = list_checksum(*hashes, nchunks, size);
	pthread_mutex_lock(&r->lock);
	a->seq = ++r->prod.seq;
	pthread_mutex_unlock(&r->lock);
	return 0;
}

/* A new pin of d for announce a (from the GPU mirror if it can); NULL: no memory. */
static struct pin *pin_new(struct vp_repl *r, const struct vp_ns_entry *v,
			   const announce_t *a)
{
	struct pin *pin = calloc(1, sizeof(*pin));

	if (!pin)
		return NULL;
	pin->seq = a->seq;
	pin->data = vp_data_get(v->d);
	pin->since = vp_now();
	if (r->direct && !(a->flags & VP_ANNOUNCE_PREVIEW))
		serve_from_gpu(r, v->path, v->ino, a->version, a->size, pin);
	return pin;
}

/*
 * Queues the ANNOUNCE messages of m (several for big files, refs naming
 * every chunk) on every active peer, or only on one (a catch-up).  The
 * pin waits for those peers, by id: only they release it.  It is kept
 * if some peer got the announce (*pinp is then NULL).  Returns 0 or -errno.
 */
static int announce_queue_locked(struct vp_repl *r, struct vp_msg *m,
				 const struct vp_chunk_ref *refs, struct peer *only,
				 struct pin **pinp)
{
	announce_t *a = &m->u.announce;
	struct pin *pin = *pinp;
	unsigned int n = 0, npeers = 0;
	struct peer *p;

	VP_ASSERT_LOCKED(&r->lock);
	LIST_FOREACH(p, &r->prod.peers, link)
		n += peer_live(p) && (!only || p == only);
	pin->waiting = calloc(n ? n : 1, sizeof(*pin->waiting));
	if (!pin->waiting)
		return -ENOMEM;
	for (uint32_t first = 0; first < a->nchunks || first == 0;
	     first += VP_PROTO_CHUNKS_PER_MSG) {
		announce_piece(a, refs, first);
		LIST_FOREACH(p, &r->prod.peers, link) {
			struct qmsg *q;

			if (!peer_live(p) || (only && p != only))
				continue;
			q = repl_qmsg_of(m);
			if (q) {
				repl_peer_queue_locked(r, p, q);
				if (first == 0)
					pin->waiting[npeers++] = p->id;
			}
		}
		if (a->nchunks == 0)
			break;
	}
	pin->nwaiting = npeers;
	if (npeers && pin->dev_mr) {
		r->prod.gpu_versions_out++;
		r->prod.gpu_bytes_out += a->size;
	}
	if (npeers) {
		LIST_INSERT_HEAD(&r->prod.pins, pin, link);
		*pinp = NULL;
	}
	return 0;
}

/*
 * Announces a version: its chunks registered for the consumers' reads
 * and pinned until they are done, its ANNOUNCE messages queued on every
 * active peer (or only on one, for a catch-up).  Called with no lock
 * held; takes r->lock to queue.  Returns 0 or -errno.
 */
static int announce(struct vp_repl *r, const struct vp_ns_entry *v,
		    struct peer *only, int preview)
{
	struct vp_msg *m = calloc(1, sizeof(*m));
	struct vp_chunk_ref *refs = NULL;
	uint64_t *hashes = NULL;
	struct pin *pin = NULL;
	announce_t *a;
	int rc;

	if (!m)
		return -ENOMEM;
	m->type = VP_MSG_ANNOUNCE;
	a = &m->u.announce;
	a->version = v->version;
	a->epoch = v->epoch;
	a->mode = v->mode;
	a->flags = preview ? VP_ANNOUNCE_PREVIEW : 0;
	if (!only && r->cfg.relay_fanout)
		a->flags |= VP_ANNOUNCE_RELAY;	/* the whole tree gets it */
	a->mtime_ns = v->mtime_ns;
	snprintf(a->path, sizeof(a->path), "%s", v->path);
	rc = repl_announce_hash(r, v->d, a, preview, &hashes);
	if (rc)
		goto out;
	pin = pin_new(r, v, a);
	if (!pin) {
		rc = -ENOMEM;
		goto out;
	}
	refs = calloc(a->nchunks ? a->nchunks : 1, sizeof(*refs));
	rc = refs ? repl_pin_register(r, pin, v->d, a->size, a->chunk_size, a->nchunks, hashes, refs) :
		-ENOMEM;
	pthread_mutex_lock(&r->lock);
	if (!rc)
		rc = announce_queue_locked(r, m, refs, only, &pin);
	pthread_cond_signal(&r->cond);
	pthread_mutex_unlock(&r->lock);
	if (rc)
		vp_log(LOG_ERR, "repl", "'%s' version %" PRIu64 ": registering its chunks with the fabric: %s; not replicated",
		       v->path, v->version, strerror(-rc));
out:
	if (pin)
		repl_pin_free(pin, r->gpu);
	free(refs);
	free(hashes);
	free(m);
	return rc;
}

static void queue_op(struct vp_repl *r, enum vp_op_kind kind, const char *path,
		     const char *path2, uint32_t mode, uint64_t rdev, struct peer *only,
		     const struct vp_ns_entry *keep)
{
	struct vp_msg *m = calloc(1, sizeof(*m));
	struct peer *p;

	if (!m)
		return;
	m->type = VP_MSG_OP;
	m->u.op.kind = kind;
	m->u.op.mode = mode;
	m->u.op.rdev = rdev;
	snprintf(m->u.op.path, sizeof(m->u.op.path), "%s", path);
	snprintf(m->u.op.path2, sizeof(m->u.op.path2), "%s", path2 ? path2 : "");
	if (keep) {	/* KEEP: which version the PFS has */
		m->u.op.version = keep->version;
		m->u.op.epoch = keep->epoch;
	}
	pthread_mutex_lock(&r->lock);
	m->u.op.seq = ++r->prod.seq;
	LIST_FOREACH(p, &r->prod.peers, link) {
		if (peer_live(p) && (!only || p == only)) {
			struct qmsg *q = repl_qmsg_of(m);

			if (q)
				repl_peer_queue_locked(r, p, q);
		}
	}
	pthread_mutex_unlock(&r->lock);
	free(m);
}

/* An entry of the tree, as a catch-up names it. */
struct snap_item {
	STAILQ_ENTRY(snap_item) link;
	struct vp_ns_entry e;	/* path and target: the copies below; d: a reference */
	char *path, *target;
};

struct snap_arg {
	STAILQ_HEAD(, snap_item) items;
};

/* Collects the tree under ns->lock; announced afterwards, without it. */
static void snap_cb(void *arg, const struct vp_ns_entry *e)
{
	struct snap_arg *a = arg;
	struct snap_item *it = calloc(1, sizeof(*it));

	if (!it || !(it->path = strdup(e->path))) {
		free(it);
		return;
	}
	it->target = e->target ? strdup(e->target) : NULL;
	it->e = *e;
	it->e.path = it->path;
	it->e.target = it->target;
	it->e.mode = e->type == VP_ENTRY_SPECIAL ? e->mode : e->mode & 07777;	/* MKNOD: its type */
	it->e.d = e->d ? vp_data_get(e->d) : NULL;
	STAILQ_INSERT_TAIL(&a->items, it, link);
}

/*
 * A new consumer's catch-up: the whole tree, queued on p alone, then
 * SYNC_END.  It names also the PFS directories nobody opened yet: the
 * consumer removes what the catch-up does not name.
 */
void repl_catch_up(struct vp_repl *r, struct peer *p)
{
	struct snap_arg a;
	struct vp_msg m = { .type = VP_MSG_SYNC_END };
	struct snap_item *it;
	unsigned int files = 0;
	struct qmsg *q;

	STAILQ_INIT(&a.items);
	vp_ns_load_all(r->ns);
	vp_ns_snapshot(r->ns, snap_cb, &a);
	while ((it = STAILQ_FIRST(&a.items))) {
		int live;

		STAILQ_REMOVE_HEAD(&a.items, link);
		pthread_mutex_lock(&r->lock);
		live = peer_live(p);	/* one that fell silent meanwhile gets no more (beat.c) */
		pthread_mutex_unlock(&r->lock);
		if (!live)	/* nothing queued; the item is freed below */
			goto next;
		if (it->e.type == VP_ENTRY_DIR)
			queue_op(r, VP_OP_MKDIR, it->path, NULL, it->e.mode, 0, p, NULL);
		else if (it->e.type == VP_ENTRY_SYMLINK)
			queue_op(r, VP_OP_SYMLINK, it->path, it->target, 0, 0, p, NULL);
		else if (it->e.type == VP_ENTRY_SPECIAL)
			queue_op(r, VP_OP_MKNOD, it->path, NULL, it->e.mode, it->e.rdev, p, NULL);
		else if (it->e.type == VP_ENTRY_LINK)	/* after every node: its own name is there */
			queue_op(r, VP_OP_LINK, it->path, it->target, 0, 0, p, NULL);
		else if (it->e.d && !announce(r, &it->e, p, 0))
			files++;
		else
			queue_op(r, VP_OP_KEEP, it->path, NULL, 0, 0, p, &it->e);	/* on the PFS only */
next:
		vp_data_put(it->e.d);
		free(it->path);
		free(it->target);
		free(it);
	}
	pthread_mutex_lock(&r->lock);
	m.u.sync_end.seq = r->prod.seq;
	q = repl_qmsg_of(&m);
	if (q)
		repl_peer_queue_locked(r, p, q);
	pthread_mutex_unlock(&r->lock);
	repl_log_gpu_path(r, "consumer", p->id);
	vp_log(LOG_INFO, "repl", "consumer %" PRIu64 " subscribed; catch-up of %u file version(s) queued",
	       p->id, files);
}

/*
 * Lets go of the pins no consumer reads any more, or that waited for
 * longer than PIN_TIMEOUT; all_for_dead_peer: of every pin.
 */
void repl_unpin_locked(struct vp_repl *r, int all_for_dead_peer)
{
	struct pin *pin, *next;
	double now = vp_now();

	VP_ASSERT_LOCKED(&r->lock);
	for (pin = LIST_FIRST(&r->prod.pins); pin; pin = next) {
		next = LIST_NEXT(pin, link);
		if (!pin_waited(pin) || all_for_dead_peer ||
		    now - pin->since > PIN_TIMEOUT) {
			LIST_REMOVE(pin, link);
			repl_pin_free(pin, r->gpu);
		}
	}
}

/* Frees an event (and its data reference). */
void repl_event_free(struct event *e)
{
	vp_data_put(e->data);
	free(e->path);
	free(e->path2);
	free(e);
}

/* Turns the namespace's events, in order, into announces and operations. */
static void producer_ship_events(struct vp_repl *r)
{
	for (;;) {
		struct event *e;

		pthread_mutex_lock(&r->lock);
		e = STAILQ_FIRST(&r->prod.events);
		if (e)
			STAILQ_REMOVE_HEAD(&r->prod.events, link);
		pthread_mutex_unlock(&r->lock);
		if (!e)
			break;
		if (e->is_version && e->data) {
			struct vp_ns_entry v = {
				.type = VP_ENTRY_FILE, .path = e->path, .ino = e->ino,
				.mode = e->mode, .d = e->data, .version = e->version,
				.epoch = e->epoch, .mtime_ns = e->mtime_ns,
			};

			announce(r, &v, NULL, e->is_preview);
		}
		else if (!e->is_version)
			queue_op(r, e->kind, e->path, e->path2, e->mode, e->rdev, NULL, NULL);
		repl_event_free(e);
	}
}

/*
 * The producer's work between messages: events, outboxes, silent
 * consumers dropped (their heartbeats are beat.c's), and once a second
 * the pins that expired.
 */
void repl_producer_tick(struct vp_repl *r, double *last_unpin)
{
	double now = vp_now();

	producer_ship_events(r);
	repl_recover_tick(r);	/* versions consumers offer back */
	repl_quarantine_release(r);	/* chunks of reads back it gave up on */
	repl_peers_tick(r, now);
	if (now - *last_unpin >= 1.0) {
		*last_unpin = now;
		pthread_mutex_lock(&r->lock);
		repl_unpin_locked(r, 0);
		pthread_mutex_unlock(&r->lock);
	}
}
