/*
 * repl_i.h: the private header of repl (repl.h), shared by its files, one
 * per object, as libfabric's tcp provider has xnet.h and xnet_*.c:
 *
 *   thread.c    the object: new/free, the repl thread, status and metrics
 *   beat.c      liveness: the beat thread's heartbeats and silences
 *   msg.c       messages: the inbox the fabric fills, opening, sealing, sending
 *   auth.c      the keys: the secret, handshake MACs, sessions, relay edge keys
 *   producer.c  producer: events, announces and their pins, catch-up, the tick
 *   peer.c      producer: the consumers it serves (handshake, DONE, relay tree)
 *   consumer.c  consumer: the subscription's state machine, catch-up's end
 *   announce.c  consumer: an announce, assembled, planned, fetched, installed
 *   fetch.c     consumer: chunk reads from the relay and the producer, checked
 *   relay.c     consumer: its place in the relay tree, offers to its children
 *
 * THREADING: the fabric's progress thread only queues what it receives
 * (repl_on_recv); the namespace's hooks only queue events; the beat
 * thread (beat.c) only sends heartbeats and marks silent peers, never
 * waiting on the network.  Everything else runs on the repl thread, which
 * owns the sessions, the consumer's state and the relay's.  Every sealed
 * send is sealed and posted under r->tx_lock, which orders the two
 * threads' messages on one session; the beat thread seals only under
 * r->lock too, and a session it beats on is derived and cleared only
 * under r->lock.  r->lock protects what those threads share, as
 * each field says; r->slab_lock the slab table.  The lock order is the
 * one table in lock.h.  Functions named _locked assert r->lock; the
 * namespace's hooks (vp_repl_note_*_locked) run under ns->lock instead,
 * which ns.h gives no way to assert.
 *
 * Cross-file functions are named repl_*; those of one file are static.
 */
#ifndef VP_REPL_I_H
#define VP_REPL_I_H

#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/types.h>
#include <xxhash.h>

#include "../config.h"
#include "../fabric.h"
#include "../proto.h"
#include "../sess.h"
#include "../repl.h"

struct vp_data;
struct vp_gpu;
struct vp_gpu_lease;
struct vp_gpu_stage;

#define MAX_SLABS 1024
#define PIN_TIMEOUT 120.0
#define RELAY_PIN_TIMEOUT 30.0	/* a relay keeps a version for its children at most this long */
#define RELAY_QUEUE_BYTES (16u << 20)	/* CHUNKS a consumer holds for announces still ahead */
#define RELAY_SEND_S 1.0	/* deadline of an offer to a child */
#define RELAY_BATCH 16		/* chunks read from a relay per batch */
#define ALIVE_SIGN_MAX 512	/* producer: messages checked on arrival as signs of life (beat.c) */
#define RECOVER_TICK_S 0.5	/* producer: offers back taken per tick, at most this long */
#define RELAY_QUIET_S 30.0	/* a relay that failed us is not read from for this long */
#define INBOX_BYTES (64u << 20)	/* received messages waiting for the repl thread */
#define MAX_PENDING 1024	/* producer: consumers between HELLO and AUTH; the oldest goes first */
#define MAX_PENDING_PER_HOST 4	/* ... of them naming one host */
#define HANDSHAKE_S 3.0		/* producer: a consumer has this long from HELLO to AUTH */
#define PENDING_SEND_S 0.001	/* a send to a consumer that has not authenticated: one try, this long */
#define PENDING_INBOX_BYTES (1u << 20)	/* messages from senders that are not subscribed consumers */
#define ENCODE_MAX (VP_FAB_MAX_MSG - VP_SESS_OVERHEAD)	/* room for the seal */

struct qmsg {			/* a message, raw, queued */
	STAILQ_ENTRY(qmsg) link;
	vp_fab_addr src;	/* where it came from (received ones), as the provider says */
	int opened;		/* opened and checked already: plaintext (an offer put back) */
	int pending;		/* counted in pending_bytes (from no subscribed consumer) */
	double at;		/* vp_now() when it arrived: liveness counts from there, not from its handling */
	size_t len;
	uint8_t buf[];
};
STAILQ_HEAD(qmsg_list, qmsg);

struct event {			/* producer: a change to ship, in order */
	STAILQ_ENTRY(event) link;
	int is_version;
	int is_preview;		/* with is_version: finished chunks of a version being written */
	enum vp_op_kind kind;
	char *path, *path2;
	uint32_t mode;		/* MKNOD: with the type bits */
	uint64_t rdev;		/* MKNOD: the device number */
	uint64_t ino;		/* versions: the file on this node (its GPU mirror's key) */
	struct vp_data *data;	/* versions: ref */
	uint64_t version, epoch;
	int64_t mtime_ns;
};
STAILQ_HEAD(event_list, event);

struct pin {			/* producer: bytes consumers may still be reading */
	LIST_ENTRY(pin) link;
	uint64_t seq;
	struct vp_data *data;
	struct vp_fab_mr **mrs;	/* each chunk, registered for remote reads while pinned */
	uint32_t nmrs;
	struct vp_gpu_lease *lease;	/* GPU-direct: the mirror the announce points into */
	struct vp_fab_mr *dev_mr;	/* ... registered with the fabric */
	uint64_t dev_key, dev_raddr;
	uint64_t *waiting;	/* ids of the consumers that have not said DONE, 0: done */
	unsigned int nwaiting;	/* slots in waiting */
	double since;
};
LIST_HEAD(pin_list, pin);

struct recovery;		/* producer: a RECOVER announce being taken (recover.c) */
LIST_HEAD(recovery_list, recovery);

/* What a consumer does with the producer's version of a path (recover.c). */
enum repl_verdict {
	REPL_TAKE,		/* later than ours: fetch and install */
	REPL_SAME,		/* our bytes, of another run: stamp, do not install */
	REPL_SKIP,		/* ours is as new, or a later one is coming */
	REPL_AHEAD,		/* ours is later, and the producer lost it: keep, say, offer back */
};

struct peer {			/* producer: a consumer, subscribed or in its handshake */
	LIST_ENTRY(peer) link;
	uint64_t id;
	vp_fab_addr addr;
	int active;
	uint8_t nonce_c[VP_PROTO_NONCE], nonce_p[VP_PROTO_NONCE];
	struct vp_sess sess;	/* on once it authenticated (with a secret) */
	double hello_at;	/* its HELLO: it has HANDSHAKE_S to authenticate */
	double last_heard;	/* its last message handled (protected by r->lock) */
	double last_rx;		/* its last message's arrival, on the progress thread (r->lock) */
	int silent;		/* the beat thread found it silent: no more sends, dropped next tick (r->lock) */
	double last_beat;	/* the beat thread's last heartbeat to it (r->lock) */
	struct qmsg_list out;	/* to send, in order; protected by r->lock */
	uint64_t sent_seq, done_seq;
	uint64_t versions_done;
	uint64_t bytes_out;	/* bytes it read from our memory (its DONEs say) */
	uint64_t bytes_relayed;	/* bytes it read from its relay instead */
	double done_at;		/* vp_now() of its last DONE */
	uint8_t name[VP_PROTO_NAME_MAX];	/* its endpoint, for the relay tree */
	uint16_t name_len;
	uint64_t relay_parent;	/* the consumer it reads relayed chunks from, 0: none */
	uint64_t edge_gen;	/* of the edge from relay_parent: a new edge, a new key */
	uint64_t topo_sig;	/* of the TOPO it was sent last */
};
LIST_HEAD(peer_list, peer);

struct relay_child {		/* consumer: a consumer we relay chunks to */
	uint64_t id;
	vp_fab_addr addr;
	uint8_t name[VP_PROTO_NAME_MAX];
	uint16_t name_len;
	uint8_t key[VP_PROTO_EDGE_KEY];	/* the edge's, from the TOPO */
	struct vp_sess sess;	/* the edge's session (with a secret) */
	int dead;		/* an offer to it failed; skipped until the next TOPO */
};

struct exposure {		/* consumer: a chunk our relay children may read */
	void *mem;
	size_t len;
	struct vp_fab_mr *mr;
	uint64_t key, raddr;
	uint64_t seq;		/* the announce it was offered for */
};

struct relay_pin {		/* consumer: a version our children may still read */
	LIST_ENTRY(relay_pin) link;
	uint64_t seq;
	struct vp_data *data;
	uint64_t waiting[VP_PROTO_MAX_CHILDREN];	/* child ids, 0: done */
	double since;
};

struct slab_mr {			/* cache memory, registered as a local read target only */
	char *base;
	size_t len;
	struct vp_fab_mr *mr;
};

/*
 * Consumer: a landing, the memory file that a version's chunks are read
 * into by the fabric, each at its own offset (chunk i at i * chunk_size),
 * through a writable mapping (mfile.h).  Once every chunk is in and
 * checked, that file, sealed, is the version: no copy, one copy of the
 * bytes on the node.  A preview's landing becomes its version's.  A read
 * given up on may still land: the landing is then tainted, never sealed
 * nor reused, and freed once the fabric has no such read left.
 */
#define LAND_MAX_BAD 8

struct land {
	LIST_ENTRY(land) link;		/* cons.lands, or cons.dead_lands once given up */
	struct vp_mfile *mf;
	char *base;			/* the writable mapping, reserve bytes of address space */
	size_t reserve;
	uint64_t size;			/* the file's size now (grown to) */
	struct slab_mr reg;		/* [base, base + reg.len) registered; protected by slab_lock */
	int tainted;
	uint64_t bad[LAND_MAX_BAD];	/* offsets of the chunks a read given up on may write */
	size_t nbad;			/* more than LAND_MAX_BAD: all of it is kept */
};
LIST_HEAD(land_list, land);

/* A consumer's subscription, in the order it goes through. */
enum consumer_state {
	CONS_IDLE,		/* no session: a HELLO goes out every second */
	CONS_HELLO_SENT,	/* waiting for the CHALLENGE */
	CONS_CHALLENGED,	/* AUTH sent, waiting for WELCOME (or REFUSED) */
	CONS_SUBSCRIBED,	/* in a session: announces and operations are applied */
};

/* Producer: what it serves, and to whom. */
struct vp_repl_producer {
	uint8_t edge_secret[32];	/* relay edge keys are HMACs under it */
	struct event_list events;	/* to ship, in order; protected by r->lock */
	/* protected by r->lock; only the repl thread adds or frees peers */
	struct peer_list peers;
	uint64_t next_peer_id;
	uint64_t edge_gens;		/* relay edges made so far */
	uint64_t seq;
	struct pin_list pins;
	uint64_t gpu_versions_out, gpu_bytes_out;	/* announced from the tier */
	struct recovery_list recoveries;	/* offers back from consumers; protected by r->lock */
	uint64_t recovered;		/* versions taken back from consumers (repl thread; status reads it) */
	uint64_t ahead_seen;		/* versions consumers held that this run lacked */
	uint64_t epoch;			/* this run's (vp_ns_epoch), for WELCOME */
	/* fsync=peers: broadcast (under lock) on each DONE counted in a data's peers_held */
	pthread_cond_t held_cond;
};

/* Consumer: its subscription, transfers and installs; repl thread only unless said. */
struct vp_repl_consumer {
	char mnt[PATH_MAX];
	int resync;			/* a producer message was lost; protected by r->lock */
	double refetch_after;		/* a fetch failed then */
	double resub_at, resub_backoff;	/* the last resubscribe we chose, and the wait before another */
	const char *resub_why;		/* a resubscribe the back-off deferred (a literal), or NULL */
	double auth_backoff;		/* after a failed handshake: the wait before the next HELLO */
	double hello_after;		/* no HELLO before (vp_now()) */
	vp_fab_addr producer;
	enum consumer_state state;
	uint64_t my_id;
	uint8_t nonce_c[VP_PROTO_NONCE];
	struct vp_sess sess;		/* with the producer (with a secret, from AUTH on) */
	double last_heard, last_hello;
	double last_rx;			/* protected by lock: the last arrival from the producer (a message, or a read's completion) */
	/* the beat thread's, protected by r->lock: */
	int beat_on;			/* subscribed: heartbeats go to the producer, and silence is watched */
	uint64_t beat_id;		/* ... with this id in their header (my_id) */
	double last_beat;		/* the last heartbeat */
	int silent;			/* the producer was silent for peer_timeout: the session is over */
	int mnt_fd;			/* open only during one install or operation */
	dev_t mnt_dev;			/* the FUSE mount's device */
	struct vp_msg *asm_msg;		/* ANNOUNCE being assembled */
	struct vp_chunk_ref *asm_refs;
	uint32_t asm_got;
	uint64_t installed, skipped, bytes_in, bytes_reused, checksum_errors;
	char **seen;			/* paths the running catch-up named */
	size_t nseen, cap_seen;
	int syncing;			/* between WELCOME and SYNC_END */
	double last_transfer_s;
	/* a copy of the thread's counters for status, protected by r->lock */
	struct {
		enum consumer_state state;
		uint64_t installed, skipped, bytes_in, bytes_reused, bytes_streamed;
		uint64_t bytes_streamed_used, checksum_errors;
		uint64_t bytes_relay_in, bytes_relay_fallback, bytes_producer_in, parent_id;
		uint64_t bytes_direct_in;
		uint64_t children[VP_PROTO_MAX_CHILDREN];
		unsigned int nchildren;
		double last_transfer_s, last_heard;
	} pub;
	LIST_HEAD(, prefetch) prefetch;	/* chunks of versions still being written */
	struct land_list lands;		/* landings in use (repl_slab_of looks there); protected by slab_lock */
	struct land_list dead_lands;	/* tainted: until no read given up on is left */
	uint64_t bytes_streamed;	/* fetched from previews */
	uint64_t bytes_streamed_used;	/* of those, still valid at the version's commit */
	uint64_t bytes_relay_in;	/* read from the relay */
	uint64_t bytes_relay_fallback;	/* the relay did not offer in time: read from the producer */
	uint64_t bytes_producer_in;	/* read from the producer, previews included */
	uint64_t bytes_direct_in;	/* read from the network straight into the tier */
	uint64_t from_producer, from_relay;	/* of the announce being fetched, for its DONE */
	struct vp_gpu_stage *gst;	/* the version being fetched, going to the GPU tier chunk by chunk */
	struct vp_fab_mr *gst_mr;	/* GPU-direct: gst's memory, registered; the producer's chunks land there */
	struct vp_fab_mr **dead_mrs;	/* of quarantined stages: closed with the fabric */
	size_t ndead_mrs;
	void **quarantine;		/* chunks a timed-out read may still write */
	size_t nquarantine;
	uint64_t epoch;			/* the producer's run (WELCOME) */
	int new_run;			/* its first catch-up in this run: unnamed files it never knew are offered back */
	char **ahead;			/* paths we hold later than the producer does; protected by r->lock */
	size_t nahead;
	struct pin_list offers;		/* versions offered back to the producer, until its RELAY_DONE */
};

/* Consumer: its place in the relay tree (TOPO); repl thread only unless said. */
struct vp_repl_relay {
	uint64_t parent_id;		/* the consumer we read relayed chunks from, 0: none */
	vp_fab_addr parent_addr;
	uint8_t parent_name[VP_PROTO_NAME_MAX];
	uint16_t parent_name_len;
	uint8_t parent_key[VP_PROTO_EDGE_KEY];
	struct vp_sess parent_sess;
	double parent_quiet_until;	/* it offered nothing (or its reads failed): the producer serves until then */
	struct exposure *expo;		/* chunks exposed to our children */
	size_t nexpo, cap_expo;
	struct relay_child children[VP_PROTO_MAX_CHILDREN];
	unsigned int nchildren;
	LIST_HEAD(, relay_pin) rpins;
	struct vp_msg *offer;		/* CHUNKS being filled for our children */
	/* CHUNKS received, waiting for their announce, protected by r->lock */
	struct qmsg_list rin;
	size_t rin_bytes;
};

/*
 * The replication of one mount, as producer or consumer (r->consumer):
 * shared fields first, then each role's in a sub-struct of its own.
 */
struct vp_repl {
	struct vp_ns *ns;
	struct vp_gpu *gpu;		/* the GPU tier (borrowed), or NULL */
	struct vp_config cfg;
	int consumer;
	struct vp_fab *fab;
	struct vp_pool *pool;
	uint8_t secret[512];
	size_t secret_len;
	uint64_t refused;			/* messages dropped: atomic */
	/* GPU-direct (gpu_direct=auto, a tier whose memory the fabric can register) */
	int direct;			/* 0: host-staged path; atomic (status reads it) */
	int cuda_dev;			/* the tier's CUDA device, -1: host memory (gpu_tier=ram) */

	pthread_mutex_t lock;
	pthread_cond_t cond;
	int stop;				/* protected by lock */
	struct qmsg_list in;			/* received, protected by lock */
	size_t in_bytes;			/* of in's messages, protected by lock */
	size_t pending_bytes;			/* ... of those from no subscribed consumer, protected by lock */
	pthread_t thread;
	int thread_started;
	pthread_mutex_t tx_lock;		/* sealing and posting a message (THREADING above) */
	pthread_cond_t beat_cond;		/* with lock: the beat thread's sleep, cut short by stop */
	pthread_t beat_thread;
	int beat_started;

	pthread_mutex_t slab_lock;
	struct slab_mr slabs[MAX_SLABS];	/* protected by slab_lock */
	unsigned int nslabs;

	struct vp_repl_producer prod;
	struct vp_repl_consumer cons;
	struct vp_repl_relay relay;
};

/*
 * Consumer: the chunks a producer previewed of a version it is still
 * writing, by path.  The version's ANNOUNCE takes every chunk whose hash
 * still matches; the rest are fetched then.  Repl thread only.
 */
struct prefetch {
	LIST_ENTRY(prefetch) link;
	char *path;
	uint64_t version;
	uint32_t n;			/* slots in mem and hash */
	struct land *land;		/* where its chunks land; NULL: none yet */
	void **mem;			/* chunk -> in land, NULL: not fetched */
	uint64_t *hash;			/* of each chunk in mem */
	double touched;			/* vp_now() of its last preview */
};

#define PREFETCH_IDLE_S 60.0	/* a preview with no news this long is dropped (its file was never committed) */

typedef typeof(((struct vp_msg *)0)->u.announce) announce_t;

/* The length of chunk i of announce a (the last one may be short). */
static inline uint64_t chunk_len(const announce_t *a, uint32_t i)
{
	uint64_t start = (uint64_t)i * a->chunk_size, len = a->size - start;

	return len > a->chunk_size ? a->chunk_size : len;
}

/*
 * A version's checksum: the xxh3 of its chunk hashes, seeded with the
 * size.  Each chunk is checked on arrival against its own hash, and the
 * list of hashes against this, so no second pass over the bytes is needed.
 */
static inline uint64_t list_checksum(const uint64_t *hashes, uint32_t n, uint64_t size)
{
	return XXH3_64bits_withSeed(hashes, (size_t)n * sizeof(*hashes), size);
}

/*
 * Makes a the piece of a version's chunk list that starts at chunk first
 * (big files take several ANNOUNCEs): first, count and the refs of it.
 */
static inline void announce_piece(announce_t *a, const struct vp_chunk_ref *refs, uint32_t first)
{
	a->first = first;
	a->count = a->nchunks - first < VP_PROTO_CHUNKS_PER_MSG ?
		a->nchunks - first : VP_PROTO_CHUNKS_PER_MSG;
	memcpy(a->chunk, refs + first, a->count * sizeof(*refs));
}

/* Frees every message of list, which is left empty. */
static inline void qmsg_list_free(struct qmsg_list *list)
{
	struct qmsg *q;

	while ((q = STAILQ_FIRST(list))) {
		STAILQ_REMOVE_HEAD(list, link);
		free(q);
	}
}

/* thread.c */
void repl_log_gpu_path(struct vp_repl *r, const char *role, uint64_t id);

/* A subscribed consumer the beat thread has not found silent: it gets messages, pins, a place in the tree. */
static inline int peer_live(const struct peer *p)
{
	return p->active && !p->silent;
}

/* beat.c */
#define BEAT_S 1.0		/* a heartbeat to each peer this often */
#define BEAT_TICK_S 0.1		/* silences are checked this often */
void *repl_beat_main(void *arg);
/* Producer: seconds a send to p may wait before p counts as silent (at least 0.2). */
double repl_peer_send_wait_locked(struct vp_repl *r, const struct peer *p);

/* auth.c */
void repl_mac_of(struct vp_repl *r, const char *role, const uint8_t *n1,
		 const uint8_t *n2, uint64_t id, uint8_t *out);
int repl_mac_ok(struct vp_repl *r, const char *role, const uint8_t *n1,
		const uint8_t *n2, uint64_t id, const uint8_t *got);
int repl_load_secret(struct vp_repl *r, char *err, size_t errlen);
int repl_session_derive(struct vp_repl *r, struct vp_sess *s, const uint8_t *nonce_c,
			const uint8_t *nonce_p, uint64_t id, int producer);
void repl_edge_key_of(struct vp_repl *r, uint64_t parent, uint64_t child, uint64_t gen,
		      uint8_t *out);
void repl_edge_session(struct vp_repl *r, struct vp_sess *s, const uint8_t *key,
		       uint64_t parent, uint64_t child, int i_am_parent);

/* msg.c */
void repl_refused(struct vp_repl *r, const char *from, size_t len, const char *why);
int repl_open_msg(struct vp_repl *r, struct vp_sess *s, const struct qmsg *q,
		  struct vp_msg *m, const char *from, int clear_type);
void repl_on_recv(void *arg, vp_fab_addr src, const void *msg, size_t len);
int repl_send_raw(struct vp_repl *r, vp_fab_addr to, struct vp_sess *s, const void *buf,
		  size_t len, double deadline_s);
int repl_send_flags(struct vp_repl *r, vp_fab_addr to, struct vp_sess *s, const void *buf,
		    size_t len, double deadline_s, unsigned int flags);
int repl_encode_send(struct vp_repl *r, vp_fab_addr to, struct vp_sess *s, struct vp_msg *m,
		     double deadline_s);
int repl_send_msg(struct vp_repl *r, vp_fab_addr to, struct vp_sess *s, struct vp_msg *m);
struct qmsg *repl_qmsg_of(struct vp_msg *m);

/* fetch.c */
void repl_on_slab(void *arg, void *base, size_t len);
/*
 * A chunk a read given up on may still write: kept out of the pool until
 * the fabric has no such read left (repl_quarantine_release, each tick).
 */
void repl_quarantine(struct vp_repl *r, void *mem);
void repl_quarantine_release(struct vp_repl *r);
/* The registered slab (or landing) that holds mem; NULL: none. */
struct slab_mr *repl_slab_of(struct vp_repl *r, const void *mem);
/*
 * Landings (struct land): a new one of reserve bytes; grown to size
 * (charged, waiting up to wait_s; registered with the fabric), 0 or
 * -errno; the landing holding mem (NULL: none); given up (tainted: kept
 * until the fabric has no read left that could land there; else freed);
 * sealed at size as the version's memory file (yours), NULL with *err
 * set (tainted: -EAGAIN; the landing is gone either way).
 */
struct land *repl_land_new(struct vp_repl *r, uint64_t reserve, int *err);
int repl_land_grow(struct vp_repl *r, struct land *l, uint64_t size, double wait_s);
struct land *repl_land_of(struct vp_repl *r, const void *mem);
void repl_land_put(struct vp_repl *r, struct land *l);
/* The pages of [off, off + len) of l go (uncharged), unless a read given up on may write there. */
void repl_land_release(struct vp_repl *r, struct land *l, uint64_t off, uint64_t len);
struct vp_mfile *repl_land_seal(struct vp_repl *r, struct land *l, uint64_t size, int *err);
/*
 * The fabric is going: closed 0, every landing's registration closes
 * (before the fabric does); closed 1, the given-up landings are freed
 * (after it did: no read can land then).
 */
void repl_lands_fabric_gone(struct vp_repl *r, int closed);
int repl_fetch_chunks(struct vp_repl *r, const announce_t *a, void **mem,
		      const uint32_t *need, size_t n, uint32_t *bad_idx);
void repl_stage_register(struct vp_repl *r);
void repl_stage_unregister(struct vp_repl *r, int rc);

/* relay.c */
void repl_unexpose_seq(struct vp_repl *r, uint64_t seq);
void repl_unexpose_mem(struct vp_repl *r, const void *mem);
void repl_expose_reseq(struct vp_repl *r, const void *mem, uint64_t seq);
void repl_offer_begin(struct vp_repl *r, const announce_t *a);
void repl_offer_flush(struct vp_repl *r, int last);
void repl_offer_chunk(struct vp_repl *r, const announce_t *a, uint32_t i, const void *mem);
int repl_rpin_add(struct vp_repl *r, uint64_t seq, struct vp_data *d);
void repl_rpin_sweep(struct vp_repl *r, int all);
void repl_rpin_done(struct vp_repl *r, uint64_t child, uint64_t seq);
void repl_relay_end(struct vp_repl *r, const announce_t *a);
void repl_rin_push_locked(struct vp_repl *r, struct qmsg *q);
void repl_rin_take(struct vp_repl *r, struct qmsg_list *list);
void repl_rin_unget(struct vp_repl *r, struct qmsg_list *list, size_t bytes);
void repl_rin_clear(struct vp_repl *r);
void repl_relay_topo(struct vp_repl *r, const struct vp_msg *m);
void repl_relay_reset(struct vp_repl *r);

/* producer.c */
void repl_pin_done(struct pin *pin, uint64_t id);
/*
 * Consumer id said DONE (installed) for pin's bytes: fsync=peers counts
 * it in the data, once (only while the pin waits for id; call before
 * repl_pin_done).
 */
void repl_ack_locked(struct vp_repl *r, const struct pin *pin, uint64_t id);
void repl_pin_free(struct pin *pin, struct vp_gpu *g);
int repl_pin_register(struct vp_repl *r, struct pin *pin, struct vp_data *d, uint64_t size,
		      uint32_t chunk, uint32_t nchunks, const uint64_t *hashes,
		      struct vp_chunk_ref *refs);
int repl_announce_hash(struct vp_repl *r, struct vp_data *d, announce_t *a, int preview,
		       uint64_t **hashes);
void repl_catch_up(struct vp_repl *r, struct peer *p);
void repl_unpin_locked(struct vp_repl *r, int all_for_dead_peer);
void repl_event_free(struct event *e);
void repl_producer_tick(struct vp_repl *r, double *last_unpin);

/* peer.c */
struct peer *repl_peer_at_locked(struct vp_repl *r, vp_fab_addr addr, int active);
void repl_peer_queue_locked(struct vp_repl *r, struct peer *p, struct qmsg *q);
void repl_peer_drop_locked(struct vp_repl *r, struct peer *p, const char *why);
void repl_producer_handle(struct vp_repl *r, struct qmsg *q);
void repl_peers_tick(struct vp_repl *r, double now);
/*
 * The beat thread found p silent for `silence` seconds: it gets nothing
 * more, its pins and outbox are let go, its relay children move up; the
 * repl thread frees it on its next tick.
 */
void repl_peer_silent_locked(struct vp_repl *r, struct peer *p, double silence);

/* consumer.c */
void repl_seen_add(struct vp_repl *r, const char *path);
void repl_seen_clear(struct vp_repl *r);
void repl_say_done(struct vp_repl *r, uint64_t seq, uint64_t version, int status);
void repl_consumer_send(struct vp_repl *r, struct vp_msg *m);
void repl_consumer_handle(struct vp_repl *r, struct qmsg *q);
void repl_publish_stats(struct vp_repl *r);
/*
 * Consumer, repl thread: if the beat thread found the producer silent
 * (nothing arrived from it, messages or completed reads, for
 * peer_timeout), the session is lost now.  Returns -1 then, else 0.
 * Called on every tick and before each message.
 */
int repl_consumer_check_alive(struct vp_repl *r);
/* Consumer: the producer was heard from now (a message arrived, a read completed). */
void repl_consumer_heard(struct vp_repl *r, double at);
void repl_consumer_tick(struct vp_repl *r);

/* announce.c */
int repl_mount_open(struct vp_repl *r);
void repl_mount_close(struct vp_repl *r);
void repl_prefetch_drop(struct vp_repl *r, struct prefetch *pf);
/* Drops the previews of path and below it; path NULL: those idle for idle_s. */
void repl_prefetch_forget(struct vp_repl *r, const char *path, double idle_s);
void repl_consumer_announce(struct vp_repl *r, struct vp_msg *m);
void repl_consumer_op(struct vp_repl *r, const struct vp_msg *m);

/* recover.c */
/*
 * Consumer: what to do with the producer's (epoch, version) of path
 * (checksum and size: its bytes, where known, for REPL_SAME); *have_v and
 * *have_e get ours (unset for REPL_TAKE of a path we lack).
 */
enum repl_verdict repl_reconcile(struct vp_repl *r, const char *path, uint64_t epoch,
				 uint64_t version, const uint64_t *checksum, uint64_t size,
				 uint64_t *have_v, uint64_t *have_e);
/* Consumer: we hold path later than the producer (of seq) does: keep, say, offer back. */
void repl_consumer_ahead(struct vp_repl *r, const char *path, uint64_t seq,
			 uint64_t have_v, uint64_t have_e, uint64_t their_v);
/* Consumer: path (NULL: every path) is no longer ahead of the producer. */
void repl_ahead_clear(struct vp_repl *r, const char *path);
/* Consumer: the producer is done with offer seq (all: with every offer; old ones go too). */
void repl_offers_done(struct vp_repl *r, uint64_t seq, int all);
/* Producer: a piece of a consumer's RECOVER announce (r->lock held). */
void repl_recover_offer_locked(struct vp_repl *r, struct peer *p, struct vp_msg *m);
/* Producer, repl thread: takes back the offers that are complete. */
void repl_recover_tick(struct vp_repl *r);
void repl_recover_free(struct vp_repl *r);

#endif
