/* repl: see repl.h. */
#define _GNU_SOURCE
#include "repl.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "clock.h"
#include "data.h"
#include "fabric.h"
#include "gpu.h"
#include "log.h"
#include "metrics.h"
#include "ns.h"
#include "pool.h"
#include "safepath.h"
#include "sess.h"

#define MAX_SLABS 1024
#define PIN_TIMEOUT 120.0
#define RELAY_PIN_TIMEOUT 30.0	/* a relay keeps a version for its children at most this long */
#define RELAY_QUEUE_BYTES (16u << 20)	/* CHUNKS a consumer holds for announces still ahead */
#define RELAY_SEND_S 1.0	/* deadline of an offer to a child */
#define RELAY_BATCH 16		/* chunks read from a relay per batch */
#define INBOX_BYTES (64u << 20)	/* received messages waiting for the repl thread */
#define MAX_PENDING 1024	/* producer: consumers between HELLO and AUTH; the oldest goes first */
#define MAX_PENDING_PER_HOST 4	/* ... of them naming one host */
#define HANDSHAKE_S 3.0		/* producer: a consumer has this long from HELLO to AUTH */
#define PENDING_SEND_S 0.001	/* a send to a consumer that has not authenticated: one try, this long */
#define PENDING_INBOX_BYTES (1u << 20)	/* messages from senders that are not subscribed consumers */
#define ENCODE_MAX (VP_FAB_MAX_MSG - VP_SESS_OVERHEAD)	/* room for the seal */

/* Messages that peers (or anyone on the network) can cause, logged within limits. */
static struct vp_ratelimit rl_refused = VP_RATELIMIT_INIT(10, 60.0);
static struct vp_ratelimit rl_hello = VP_RATELIMIT_INIT(10, 60.0);
static struct vp_ratelimit rl_announce = VP_RATELIMIT_INIT(10, 60.0);
static struct vp_ratelimit rl_evict = VP_RATELIMIT_INIT(10, 60.0);

struct qmsg {			/* a message, raw, queued */
	struct qmsg *next;
	vp_fab_addr src;	/* where it came from (received ones), as the provider says */
	int opened;		/* opened and checked already: plaintext (an offer put back) */
	int pending;		/* counted in pending_bytes (from no subscribed consumer) */
	size_t len;
	uint8_t buf[];
};

struct event {			/* producer: a change to ship, in order */
	struct event *next;
	int is_version;
	int is_preview;		/* with is_version: finished chunks of a version being written */
	enum vp_op_kind kind;
	char *path, *path2;
	uint32_t mode;
	struct vp_data *data;	/* versions: ref */
	uint64_t version;
	int64_t mtime_ns;
};

struct pin {			/* producer: bytes consumers may still be reading */
	struct pin *next;
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

struct peer {
	struct peer *next;
	uint64_t id;
	vp_fab_addr addr;
	int active;
	uint8_t nonce_c[VP_PROTO_NONCE], nonce_p[VP_PROTO_NONCE];
	struct vp_sess sess;	/* on once it authenticated (with a secret) */
	double hello_at;	/* its HELLO: it has HANDSHAKE_S to authenticate */
	double last_heard;
	struct qmsg *out_head, *out_tail;
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
	struct relay_pin *next;
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
	struct event *ev_head, *ev_tail;	/* protected by r->lock */
	/* protected by r->lock; only the repl thread adds or frees peers */
	struct peer *peers;
	uint64_t next_peer_id;
	uint64_t edge_gens;		/* relay edges made so far */
	uint64_t seq;
	struct pin *pins;
	uint64_t gpu_versions_out, gpu_bytes_out;	/* announced from the tier */
};

/* Consumer: its subscription, transfers and installs; repl thread only unless said. */
struct vp_repl_consumer {
	char mnt[PATH_MAX];
	int resync;			/* a producer message was lost; protected by r->lock */
	double refetch_after;		/* a fetch failed then */
	double resub_at, resub_backoff;	/* the last resubscribe we chose, and the wait before another */
	vp_fab_addr producer;
	enum consumer_state state;
	uint64_t my_id;
	uint8_t nonce_c[VP_PROTO_NONCE];
	struct vp_sess sess;		/* with the producer (with a secret, from AUTH on) */
	double last_heard, last_hello, last_beat;
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
	struct prefetch *prefetch;	/* chunks of versions still being written */
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
};

/* Consumer: its place in the relay tree (TOPO); repl thread only unless said. */
struct vp_repl_relay {
	uint64_t parent_id;		/* the consumer we read relayed chunks from, 0: none */
	vp_fab_addr parent_addr;
	uint8_t parent_name[VP_PROTO_NAME_MAX];
	uint16_t parent_name_len;
	uint8_t parent_key[VP_PROTO_EDGE_KEY];
	struct vp_sess parent_sess;
	struct exposure *expo;		/* chunks exposed to our children */
	size_t nexpo, cap_expo;
	struct relay_child children[VP_PROTO_MAX_CHILDREN];
	unsigned int nchildren;
	struct relay_pin *rpins;
	struct vp_msg *offer;		/* CHUNKS being filled for our children */
	/* CHUNKS received, waiting for their announce, protected by r->lock */
	struct qmsg *rin_head, *rin_tail;
	size_t rin_bytes;
};

struct vp_repl {
	struct vp_ns *ns;
	struct vp_config cfg;
	int consumer;
	struct vp_fab *fab;
	struct vp_pool *pool;
	uint8_t secret[512];
	size_t secret_len;
	uint64_t refused;			/* messages dropped: atomic */
	/* GPU-direct (gpu_direct=auto, a tier whose memory the fabric can register) */
	int direct;			/* 0: host-staged path; atomic */
	int cuda_dev;			/* the tier's CUDA device, -1: host memory (gpu_tier=ram) */

	pthread_mutex_t lock;
	pthread_cond_t cond;
	int stop;				/* protected by lock */
	struct qmsg *in_head, *in_tail;		/* received, protected by lock */
	size_t in_bytes;			/* of in_head's messages, protected by lock */
	size_t pending_bytes;			/* ... of those from no subscribed consumer, protected by lock */
	pthread_t thread;
	int thread_started;

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
	struct prefetch *next;
	char *path;
	uint64_t version;
	uint32_t n;			/* slots in mem and hash */
	void **mem;			/* pool chunks, or NULL */
	uint64_t *hash;			/* of each chunk in mem */
};

/* The path model bytes take through this node's GPU tier, for the log and status. */
static const char *gpu_path(struct vp_repl *r)
{
	if (!vp_ns_gpu(r->ns))
		return "none";
	return __atomic_load_n(&r->direct, __ATOMIC_RELAXED) ? "direct" : "host-staged";
}

/*
 * With the GPU tier on, says which path model bytes take to or from a
 * peer.  GPU-direct: a consumer's RMA reads land in its tier's memory
 * (registered with FI_MR_HMEM for CUDA), and a producer points its
 * announces into its own tier when the version's mirror is complete.
 * Otherwise bytes travel between host caches, and a consumer copies each
 * chunk to its tier as soon as it arrived and matched its hash.
 */
static void log_gpu_path(struct vp_repl *r, const char *role, uint64_t id)
{
	if (!vp_ns_gpu(r->ns))
		return;
	if (r->direct)
		vp_log(LOG_NOTICE, "repl", "%s %" PRIu64 ": GPU-direct path (%s); %s",
		       role, id, r->cuda_dev >= 0 ? "CUDA device memory registered with FI_HMEM" :
		       "the tier is host memory (gpu_tier=ram), registered as such",
		       r->consumer ? "the producer's chunks land in this node's GPU tier, then are copied to the host cache" :
		       "versions whose GPU mirror is complete are served from it, others from the host cache");
	else
		vp_log(LOG_NOTICE, "repl", "%s %" PRIu64 ": host-staged path (host cache -> network -> host cache, each chunk on to this node's GPU tier as it arrives); %s",
		       role, id, !strcmp(r->cfg.gpu_direct, "off") ? "gpu_direct=off" :
		       r->cuda_dev < 0 || vp_fab_has_hmem(r->fab) ? "GPU-direct was turned off after a failure (above)" :
		       "the provider has no FI_HMEM");
}

/* ---- authentication --------------------------------------------------- */

static void mac_of(struct vp_repl *r, const char *role, const uint8_t *n1,
		   const uint8_t *n2, uint64_t id, uint8_t *out)
{
	vp_sess_handshake_mac(r->secret, r->secret_len, role, n1, n2, id, out);
}

static int mac_ok(struct vp_repl *r, const char *role, const uint8_t *n1,
		  const uint8_t *n2, uint64_t id, const uint8_t *got)
{
	uint8_t want[VP_PROTO_MAC];

	mac_of(r, role, n1, n2, id, want);
	return CRYPTO_memcmp(want, got, VP_PROTO_MAC) == 0;
}

static int load_secret(struct vp_repl *r, char *err, size_t errlen)
{
	FILE *f;
	size_t n;

	if (!r->cfg.secret_file[0]) {
		vp_log(LOG_WARNING, "repl", "no secret_file: peers are checked by address only, and messages are not sealed: anyone on the fabric network can read what is announced and inject messages; set one on every node");
		return 0;
	}
	f = fopen(r->cfg.secret_file, "re");
	if (!f) {
		int saved = errno;	/* snprintf may change it */

		snprintf(err, errlen, "secret_file '%s': %s", r->cfg.secret_file, strerror(saved));
		return -saved;
	}
	{
		struct stat st;

		if (!fstat(fileno(f), &st) && (st.st_mode & 077))
			vp_log(LOG_WARNING, "repl", "secret_file '%s' is readable by other users (mode %04o); chmod 600 it",
			       r->cfg.secret_file, (unsigned int)(st.st_mode & 07777));
	}
	n = fread(r->secret, 1, sizeof(r->secret), f);
	fclose(f);
	while (n && (r->secret[n - 1] == '\n' || r->secret[n - 1] == '\r'))
		n--;
	if (n < 16) {
		snprintf(err, errlen, "secret_file '%s' holds %zu bytes; use at least 16 (e.g. openssl rand -hex 32)",
			 r->cfg.secret_file, n);
		OPENSSL_cleanse(r->secret, sizeof(r->secret));
		return -EINVAL;
	}
	/* what the file says is stretched once: a CHALLENGE is no cheap oracle for guesses */
	{
		uint8_t key[VP_SESS_KEY];
		int rc = vp_sess_stretch(r->secret, n, key);

		OPENSSL_cleanse(r->secret, sizeof(r->secret));
		memcpy(r->secret, key, sizeof(key));
		OPENSSL_cleanse(key, sizeof(key));
		if (rc) {
			snprintf(err, errlen, "secret_file '%s': cannot derive its key", r->cfg.secret_file);
			return -EIO;
		}
	}
	n = VP_SESS_KEY;
	r->secret_len = n;
	RAND_bytes(r->prod.edge_secret, sizeof(r->prod.edge_secret));
	return 0;
}

/*
 * The session of an authenticated consumer: keys from the secret and
 * both nonces (sess.h); the producer sends with the first half.
 */
static int session_derive(struct vp_repl *r, struct vp_sess *s, const uint8_t *nonce_c,
			  const uint8_t *nonce_p, uint64_t id, int producer)
{
	uint8_t salt[2 * VP_PROTO_NONCE];

	vp_sess_clear(s);
	if (!r->secret_len)
		return 0;	/* no secret: nothing to seal with */
	memcpy(salt, nonce_c, VP_PROTO_NONCE);
	memcpy(salt + VP_PROTO_NONCE, nonce_p, VP_PROTO_NONCE);
	return vp_sess_derive(s, r->secret, r->secret_len, salt, sizeof(salt), "session", id,
			      producer);
}

/*
 * Producer: the key of the relay edge parent -> child, for both ends'
 * TOPO.  gen is the edge's generation: an edge made again (the tree
 * changed and changed back) gets a new key, so no key ever starts its
 * sequence numbers twice.
 */
static void edge_key_of(struct vp_repl *r, uint64_t parent, uint64_t child, uint64_t gen,
			uint8_t *out)
{
	uint8_t msg[4 + 24];
	unsigned int len = VP_PROTO_EDGE_KEY;

	if (!r->secret_len) {
		memset(out, 0, VP_PROTO_EDGE_KEY);
		return;
	}
	memcpy(msg, "edge", 4);
	for (int i = 0; i < 8; i++) {
		msg[4 + i] = (uint8_t)(parent >> (8 * i));
		msg[12 + i] = (uint8_t)(child >> (8 * i));
		msg[20 + i] = (uint8_t)(gen >> (8 * i));
	}
	HMAC(EVP_sha256(), r->prod.edge_secret, sizeof(r->prod.edge_secret), msg, sizeof(msg), out, &len);
}

/* Consumer: the session of a relay edge, from the key its TOPO gave. */
static void edge_session(struct vp_repl *r, struct vp_sess *s, const uint8_t *key,
			 uint64_t parent, uint64_t child, int i_am_parent)
{
	uint8_t salt[16];

	vp_sess_clear(s);
	if (!r->secret_len)
		return;
	for (int i = 0; i < 8; i++) {
		salt[i] = (uint8_t)(parent >> (8 * i));
		salt[8 + i] = (uint8_t)(child >> (8 * i));
	}
	if (vp_sess_derive(s, key, VP_PROTO_EDGE_KEY, salt, sizeof(salt), "relay", child,
			   i_am_parent))
		vp_log(LOG_ERR, "repl", "relay: cannot derive the keys of an edge; its messages will be refused");
}

/*
 * A message that we drop: counted (status, metrics) and logged within
 * limits, since anyone who reaches the port can cause it.
 */
static void refused(struct vp_repl *r, const char *from, size_t len, const char *why)
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
static int open_msg(struct vp_repl *r, struct vp_sess *s, const struct qmsg *q,
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
	refused(r, from, q->len, why);
	return -1;
}

/* ---- memory registration ---------------------------------------------- */

static void on_slab(void *arg, void *base, size_t len)
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

static struct slab_mr *slab_of(struct vp_repl *r, const void *mem)
{
	struct slab_mr *found = NULL;

	pthread_mutex_lock(&r->slab_lock);
	for (unsigned int i = 0; i < r->nslabs && !found; i++)
		if ((const char *)mem >= r->slabs[i].base &&
		    (const char *)mem < r->slabs[i].base + r->slabs[i].len)
			found = &r->slabs[i];
	pthread_mutex_unlock(&r->slab_lock);
	return found;
}

/* ---- messages --------------------------------------------------------- */

/* Appends q to the list head..tail. */
static void qmsg_append(struct qmsg **head, struct qmsg **tail, struct qmsg *q)
{
	if (*tail)
		(*tail)->next = q;
	else
		*head = q;
	*tail = q;
}

/* The consumer at addr: the subscribed one if active, else the one between HELLO and AUTH. */
static struct peer *peer_at_locked(struct vp_repl *r, vp_fab_addr addr, int active)
{
	if (addr == VP_FAB_ADDR_UNKNOWN)
		return NULL;
	for (struct peer *p = r->prod.peers; p; p = p->next)
		if (p->addr == addr && p->active == active)
			return p;
	return NULL;
}

static void on_recv(void *arg, vp_fab_addr src, const void *msg, size_t len)
{
	struct vp_repl *r = arg;
	int type = vp_msg_peek_type(msg, len);
	struct qmsg *q;

	if (type >= 0)
		type &= ~(int)VP_SESS_SEALED;
	/* a consumer hears only from peers it knows; a producer hears HELLOs from anyone */
	if (src == VP_FAB_ADDR_UNKNOWN && (r->consumer || type != VP_MSG_HELLO)) {
		refused(r, "an address that is not one of our peers", len,
			r->consumer ? "a consumer takes messages from its producer and relay peers only" :
			"only a HELLO is taken from an address that did not say HELLO");
		return;
	}
	q = malloc(sizeof(*q) + len);
	if (!q)
		return;		/* dropped; the peer's deadlines cover it */
	q->next = NULL;
	q->src = src;
	q->opened = 0;
	q->pending = 0;
	q->len = len;
	memcpy(q->buf, msg, len);
	pthread_mutex_lock(&r->lock);
	if (r->stop) {
		/* shutting down: the progress thread outlives the repl thread */
		pthread_mutex_unlock(&r->lock);
		free(q);
		return;
	}
	if (!r->consumer) {
		const char *why = NULL;

		if (!peer_at_locked(r, src, 1)) {
			/* anyone: the handshake only, in a small inbox of its own */
			if (type != VP_MSG_HELLO && type != VP_MSG_AUTH && type != VP_MSG_REFUSED)
				why = "only HELLO, AUTH and REFUSED come before a consumer authenticated";
			else if (r->pending_bytes + len > PENDING_INBOX_BYTES)
				why = "the inbox of handshakes is full";
			q->pending = 1;
		} else if (type == VP_MSG_CHUNKS) {
			why = "a producer takes no relay offers";
		}
		if (why) {
			pthread_mutex_unlock(&r->lock);
			free(q);
			refused(r, "an address that is not a subscribed consumer's", len, why);
			return;
		}
		if (q->pending)
			r->pending_bytes += len;
	}
	if (!q->pending && !(r->consumer && type == VP_MSG_CHUNKS) &&
	    r->in_bytes + len > INBOX_BYTES) {
		/* a flood: bounded memory; a consumer that lost a producer message subscribes again */
		if (r->consumer && src == r->cons.producer)
			r->cons.resync = 1;
		pthread_mutex_unlock(&r->lock);
		free(q);
		refused(r, "a peer", len, "the inbox is full");
		return;
	}
	if (r->consumer && type == VP_MSG_CHUNKS) {
		/* a relay's offer: the fetch of its announce takes it, maybe while busy */
		while (r->relay.rin_head && r->relay.rin_bytes + len > RELAY_QUEUE_BYTES) {
			struct qmsg *old = r->relay.rin_head;	/* bounded: the oldest go first */

			r->relay.rin_head = old->next;
			if (!r->relay.rin_head)
				r->relay.rin_tail = NULL;
			r->relay.rin_bytes -= old->len;
			free(old);
		}
		qmsg_append(&r->relay.rin_head, &r->relay.rin_tail, q);
		r->relay.rin_bytes += len;
	} else {
		qmsg_append(&r->in_head, &r->in_tail, q);
		r->in_bytes += len;
	}
	pthread_cond_signal(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

/*
 * Sends an encoded message to `to`, sealed with s when s is on (a
 * session), plain otherwise.  Repl thread only (it owns the sessions).
 */
static int send_raw(struct vp_repl *r, vp_fab_addr to, struct vp_sess *s, const void *buf,
		    size_t len, double deadline_s)
{
	static __thread uint8_t sealed[VP_FAB_MAX_MSG];

	if (s && s->on) {
		ssize_t n = vp_sess_seal(s, buf, len, sealed, sizeof(sealed));

		if (n < 0)
			return (int)n;
		buf = sealed;
		len = (size_t)n;
	}
	return vp_fab_send(r->fab, to, buf, len, deadline_s);
}

static int encode_send(struct vp_repl *r, vp_fab_addr to, struct vp_sess *s, struct vp_msg *m,
		       double deadline_s)
{
	static __thread uint8_t buf[ENCODE_MAX];
	ssize_t n = vp_msg_encode(m, buf, sizeof(buf));

	if (n < 0)
		return (int)n;
	return send_raw(r, to, s, buf, (size_t)n, deadline_s);
}

static int send_msg(struct vp_repl *r, vp_fab_addr to, struct vp_sess *s, struct vp_msg *m)
{
	return encode_send(r, to, s, m, r->cfg.peer_timeout);
}

static struct qmsg *qmsg_of(struct vp_msg *m)
{
	static __thread uint8_t buf[ENCODE_MAX];
	ssize_t n = vp_msg_encode(m, buf, sizeof(buf));
	struct qmsg *q;

	if (n < 0)
		return NULL;
	q = malloc(sizeof(*q) + (size_t)n);
	if (!q)
		return NULL;
	q->next = NULL;
	q->src = VP_FAB_ADDR_UNKNOWN;
	q->opened = 0;
	q->len = (size_t)n;
	memcpy(q->buf, buf, (size_t)n);
	return q;
}

static void peer_queue_locked(struct peer *p, struct qmsg *q)
{
	qmsg_append(&p->out_head, &p->out_tail, q);
}

/* ---- producer ------------------------------------------------------- */

/* Appends e to the producer's ordered event queue and wakes the thread. */
static void event_append(struct vp_repl *r, struct event *e)
{
	pthread_mutex_lock(&r->lock);
	if (r->prod.ev_tail)
		r->prod.ev_tail->next = e;
	else
		r->prod.ev_head = e;
	r->prod.ev_tail = e;
	pthread_cond_signal(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

void vp_repl_note_op_locked(struct vp_repl *r, enum vp_op_kind kind,
			    const char *path, const char *path2, uint32_t mode)
{
	struct event *e;

	if (!r || r->consumer)
		return;
	e = calloc(1, sizeof(*e));
	if (!e || !(e->path = strdup(path)) || !(e->path2 = strdup(path2 ? path2 : ""))) {
		if (e)
			free(e->path);
		free(e);
		vp_log(LOG_ERR, "repl", "out of memory: consumers will miss a change to '%s'", path);
		return;
	}
	e->kind = kind;
	e->mode = mode & 07777;
	vp_log(LOG_DEBUG, "repl", "noted op %u on '%s'", kind, path);
	event_append(r, e);
}

/*
 * Latest wins: queued, unsent versions and previews of path are dropped;
 * with previews_only, only previews (a preview never replaces a version).
 */
static void drop_queued_versions(struct vp_repl *r, const char *path, int previews_only)
{
	pthread_mutex_lock(&r->lock);
	for (struct event *o = r->prod.ev_head; o; o = o->next) {
		if (o->is_version && o->data && !strcmp(o->path, path) &&
		    (o->is_preview || !previews_only)) {
			vp_data_put(o->data);
			o->data = NULL;
		}
	}
	pthread_mutex_unlock(&r->lock);
}

void vp_repl_note_version_locked(struct vp_repl *r, const char *path,
				 struct vp_data *d, uint64_t version,
				 uint32_t mode, int64_t mtime_ns)
{
	struct event *e;

	if (!r || r->consumer)
		return;
	e = calloc(1, sizeof(*e));
	if (!e || !(e->path = strdup(path))) {
		free(e);
		vp_log(LOG_ERR, "repl", "out of memory: consumers will miss version %" PRIu64 " of '%s'",
		       version, path);
		return;
	}
	e->is_version = 1;
	e->data = vp_data_get(d);
	e->version = version;
	e->mode = mode & 07777;
	e->mtime_ns = mtime_ns;
	drop_queued_versions(r, path, 0);
	event_append(r, e);
}

void vp_repl_note_preview(struct vp_repl *r, const char *path, struct vp_data *d,
			  uint64_t version, uint32_t mode)
{
	struct event *e;

	if (!r || r->consumer) {
		vp_data_put(d);
		return;
	}
	e = calloc(1, sizeof(*e));
	if (!e || !(e->path = strdup(path))) {
		free(e);
		vp_data_put(d);
		return;		/* a preview is an optimisation: the version ships at commit */
	}
	e->is_version = e->is_preview = 1;
	e->data = d;
	e->version = version;
	e->mode = mode & 07777;
	drop_queued_versions(r, path, 1);	/* an unsent older preview */
	event_append(r, e);
}

/*
 * A version's checksum: the xxh3 of its chunk hashes, seeded with the
 * size.  Each chunk is checked on arrival against its own hash, and the
 * list of hashes against this, so no second pass over the bytes is needed.
 */
static uint64_t list_checksum(const uint64_t *hashes, uint32_t n, uint64_t size)
{
	return XXH3_64bits_withSeed(hashes, (size_t)n * sizeof(*hashes), size);
}

/* Consumer id is done with pin (said DONE, or left); another id changes nothing. */
static void pin_done(struct pin *pin, uint64_t id)
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

static void pin_free(struct pin *pin, struct vp_gpu *g)
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
static void serve_from_gpu(struct vp_repl *r, const char *path, uint64_t version,
			   uint64_t size, struct pin *pin)
{
	struct vp_gpu *g = vp_ns_gpu(r->ns);
	uint64_t ino, msize;
	void *mem;
	int rc;

	if (!g || !size || vp_ns_path_ino(r->ns, path, &ino))
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
static int pin_register(struct vp_repl *r, struct pin *pin, struct vp_data *d, uint64_t size,
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
 * Encodes the ANNOUNCE messages of a version (several for big files) and
 * queues them on every active peer (or only on one, for a catch-up).
 * Called with no lock held; takes r->lock to queue.
 */
static int announce(struct vp_repl *r, const char *path, struct vp_data *d,
		    uint64_t version, uint32_t mode, int64_t mtime_ns,
		    struct peer *only, int preview)
{
	struct vp_msg *m = calloc(1, sizeof(*m));
	uint64_t size = vp_data_size(d), checksum, seq;
	uint32_t chunk = (uint32_t)vp_pool_chunk_size(r->pool);
	uint32_t nchunks;
	struct pin *pin;
	unsigned int npeers = 0;
	uint64_t *hashes = NULL;
	struct vp_chunk_ref *refs = NULL;
	int rc;

	if (!m)
		return -ENOMEM;
	if (preview)
		size = size / chunk * chunk;	/* the finished chunks only */
	nchunks = (uint32_t)((size + chunk - 1) / chunk);
	if (!vp_data_fully_resident(d)) {
		vp_log(LOG_INFO, "repl", "'%s' version %" PRIu64 " is not in the cache; consumers will read it from the PFS",
		       path, version);
		free(m);
		return -ENODATA;
	}
	hashes = calloc(nchunks ? nchunks : 1, sizeof(*hashes));
	rc = hashes ? vp_data_chunk_hashes(d, hashes, nchunks) : -ENOMEM;
	if (rc) {
		free(hashes);
		free(m);
		return rc;
	}
	checksum = list_checksum(hashes, nchunks, size);
	pthread_mutex_lock(&r->lock);
	seq = ++r->prod.seq;
	pthread_mutex_unlock(&r->lock);
	m->type = VP_MSG_ANNOUNCE;
	m->u.announce.seq = seq;
	m->u.announce.version = version;
	m->u.announce.size = size;
	m->u.announce.checksum = checksum;
	m->u.announce.mode = mode;
	m->u.announce.flags = preview ? VP_ANNOUNCE_PREVIEW : 0;
	if (!only && r->cfg.relay_fanout)
		m->u.announce.flags |= VP_ANNOUNCE_RELAY;	/* the whole tree gets it */
	m->u.announce.mtime_ns = mtime_ns;
	m->u.announce.chunk_size = chunk;
	m->u.announce.nchunks = nchunks;
	snprintf(m->u.announce.path, sizeof(m->u.announce.path), "%s", path);

	pin = calloc(1, sizeof(*pin));
	if (!pin) {
		free(hashes);
		free(m);
		return -ENOMEM;
	}
	pin->seq = seq;
	pin->data = vp_data_get(d);
	pin->since = vp_now();
	if (r->direct && !preview)
		serve_from_gpu(r, path, version, size, pin);
	refs = calloc(nchunks ? nchunks : 1, sizeof(*refs));
	rc = refs ? pin_register(r, pin, d, size, chunk, nchunks, hashes, refs) : -ENOMEM;

	pthread_mutex_lock(&r->lock);
	if (!rc) {	/* the consumers it is for, by id: only they release it */
		unsigned int n = 0;

		for (struct peer *p = r->prod.peers; p; p = p->next)
			n += p->active && (!only || p == only);
		pin->waiting = calloc(n ? n : 1, sizeof(*pin->waiting));
		if (!pin->waiting)
			rc = -ENOMEM;
	}
	for (uint32_t first = 0; !rc && (first < nchunks || first == 0);
	     first += VP_PROTO_CHUNKS_PER_MSG) {
		uint32_t count = nchunks - first < VP_PROTO_CHUNKS_PER_MSG ?
			nchunks - first : VP_PROTO_CHUNKS_PER_MSG;

		m->u.announce.first = first;
		m->u.announce.count = count;
		memcpy(m->u.announce.chunk, refs + first, count * sizeof(*refs));
		for (struct peer *p = r->prod.peers; p; p = p->next) {
			struct qmsg *q;

			if (!p->active || (only && p != only))
				continue;
			q = qmsg_of(m);
			if (q) {
				peer_queue_locked(p, q);
				if (first == 0)
					pin->waiting[npeers++] = p->id;
			}
		}
		if (nchunks == 0)
			break;
	}
	pin->nwaiting = npeers;
	if (!rc && npeers && pin->dev_mr) {
		r->prod.gpu_versions_out++;
		r->prod.gpu_bytes_out += size;
	}
	if (!rc && npeers) {
		pin->next = r->prod.pins;
		r->prod.pins = pin;
		pin = NULL;
	}
	free(hashes);
	free(refs);
	pthread_cond_signal(&r->cond);
	pthread_mutex_unlock(&r->lock);
	if (pin)
		pin_free(pin, vp_ns_gpu(r->ns));
	free(m);
	if (rc)
		vp_log(LOG_ERR, "repl", "'%s' version %" PRIu64 ": registering its chunks with the fabric: %s; not replicated",
		       path, version, strerror(-rc));
	return rc;
}

static void queue_op(struct vp_repl *r, enum vp_op_kind kind, const char *path,
		     const char *path2, uint32_t mode, struct peer *only)
{
	struct vp_msg *m = calloc(1, sizeof(*m));

	if (!m)
		return;
	m->type = VP_MSG_OP;
	m->u.op.kind = kind;
	m->u.op.mode = mode;
	snprintf(m->u.op.path, sizeof(m->u.op.path), "%s", path);
	snprintf(m->u.op.path2, sizeof(m->u.op.path2), "%s", path2 ? path2 : "");
	pthread_mutex_lock(&r->lock);
	m->u.op.seq = ++r->prod.seq;
	for (struct peer *p = r->prod.peers; p; p = p->next) {
		if (p->active && (!only || p == only)) {
			struct qmsg *q = qmsg_of(m);

			if (q)
				peer_queue_locked(p, q);
		}
	}
	pthread_mutex_unlock(&r->lock);
	free(m);
}

struct snap_arg {
	struct vp_repl *r;
	struct peer *peer;
	struct snap_item {
		struct snap_item *next;
		int type;
		char *path, *target;
		uint32_t mode;
		struct vp_data *data;
		uint64_t version;
		int64_t mtime_ns;
	} *head, **tail;
};

/* Collects the tree under ns->lock; announced afterwards, without it. */
static void snap_cb(void *arg, int type, const char *path, const char *target,
		    uint32_t mode, struct vp_data *d, uint64_t version,
		    int64_t mtime_ns)
{
	struct snap_arg *a = arg;
	struct snap_item *it = calloc(1, sizeof(*it));

	if (!it || !(it->path = strdup(path))) {
		free(it);
		return;
	}
	it->type = type;
	it->target = target ? strdup(target) : NULL;
	it->mode = mode & 07777;
	it->data = d ? vp_data_get(d) : NULL;
	it->version = version;
	it->mtime_ns = mtime_ns;
	*a->tail = it;
	a->tail = &it->next;
}

static void catch_up(struct vp_repl *r, struct peer *p)
{
	struct snap_arg a = { .r = r, .peer = p };
	struct vp_msg m = { .type = VP_MSG_SYNC_END };
	unsigned int files = 0;

	a.tail = &a.head;
	/* the whole tree, also PFS directories nobody opened yet: the consumer
	 * removes what the catch-up does not name */
	vp_ns_load_all(r->ns);
	vp_ns_snapshot(r->ns, snap_cb, &a);
	while (a.head) {
		struct snap_item *it = a.head;

		a.head = it->next;
		if (it->type == 0)
			queue_op(r, VP_OP_MKDIR, it->path, NULL, it->mode, p);
		else if (it->type == 2)
			queue_op(r, VP_OP_SYMLINK, it->path, it->target, 0, p);
		else if (it->data && !announce(r, it->path, it->data, it->version,
					       it->mode, it->mtime_ns, p, 0))
			files++;
		else
			queue_op(r, VP_OP_KEEP, it->path, NULL, 0, p);	/* on the PFS only */
		vp_data_put(it->data);
		free(it->path);
		free(it->target);
		free(it);
	}
	pthread_mutex_lock(&r->lock);
	m.u.sync_end.seq = r->prod.seq;
	{
		struct qmsg *q = qmsg_of(&m);

		if (q)
			peer_queue_locked(p, q);
	}
	pthread_mutex_unlock(&r->lock);
	log_gpu_path(r, "consumer", p->id);
	vp_log(LOG_INFO, "repl", "consumer %" PRIu64 " subscribed; catch-up of %u file version(s) queued",
	       p->id, files);
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
	struct peer **act;
	struct vp_msg *m;

	if (!k)
		return;
	for (struct peer *p = r->prod.peers; p; p = p->next)
		n += p->active;
	act = calloc(n ? n : 1, sizeof(*act));
	m = calloc(1, sizeof(*m));
	if (!act || !m) {
		free(act);
		free(m);
		return;
	}
	n = 0;
	for (struct peer *p = r->prod.peers; p; p = p->next)
		if (p->active)
			act[n++] = p;
	qsort(act, n, sizeof(*act), cmp_peer_id);
	for (unsigned int j = 0; j < n; j++) {	/* each new edge: a new generation */
		uint64_t parent = j >= k ? act[j / k - 1]->id : 0;

		if (parent != act[j]->relay_parent || !act[j]->edge_gen)
			act[j]->edge_gen = ++r->prod.edge_gens;
		act[j]->relay_parent = parent;
	}
	for (unsigned int j = 0; j < n; j++) {
		struct peer *p = act[j];
		uint64_t ids[2 * (1 + VP_PROTO_MAX_CHILDREN)] = { 0 }, sig;
		struct qmsg *q;

		memset(m, 0, sizeof(*m));
		m->type = VP_MSG_TOPO;
		if (j >= k) {
			peer_ref_of(&m->u.topo.parent, act[j / k - 1]);
			edge_key_of(r, act[j / k - 1]->id, p->id, p->edge_gen, m->u.topo.parent.key);
			ids[1 + VP_PROTO_MAX_CHILDREN] = p->edge_gen;
		}
		for (unsigned int c = (j + 1) * k; c < (j + 2) * k && c < n; c++) {
			struct vp_peer_ref *ref = &m->u.topo.child[m->u.topo.nchildren++];

			peer_ref_of(ref, act[c]);
			edge_key_of(r, p->id, act[c]->id, act[c]->edge_gen, ref->key);
			ids[2 + VP_PROTO_MAX_CHILDREN + (c - (j + 1) * k)] = act[c]->edge_gen;
		}
		ids[0] = m->u.topo.parent.id;
		for (unsigned int c = 0; c < m->u.topo.nchildren; c++)
			ids[1 + c] = m->u.topo.child[c].id;
		sig = XXH3_64bits(ids, sizeof(ids)) | 1;
		if (sig == p->topo_sig)
			continue;
		q = qmsg_of(m);
		if (!q)
			continue;
		p->topo_sig = sig;
		peer_queue_locked(p, q);
	}
	free(act);
	free(m);
}

static void unpin_locked(struct vp_repl *r, int all_for_dead_peer)
{
	struct pin **pp = &r->prod.pins;
	double now = vp_now();

	while (*pp) {
		struct pin *pin = *pp;

		if (!pin_waited(pin) || all_for_dead_peer ||
		    now - pin->since > PIN_TIMEOUT) {
			*pp = pin->next;
			pin_free(pin, vp_ns_gpu(r->ns));
		} else {
			pp = &pin->next;
		}
	}
}

/* Unlinks and frees p: its queue, its pins, its address, its session. */
static void peer_free_locked(struct vp_repl *r, struct peer *p)
{
	struct peer **pp = &r->prod.peers;

	while (*pp && *pp != p)
		pp = &(*pp)->next;
	if (*pp)
		*pp = p->next;
	while (p->out_head) {
		struct qmsg *q = p->out_head;

		p->out_head = q->next;
		free(q);
	}
	/* its pins (only those that wait for it: an unauthenticated peer has none) */
	for (struct pin *pin = r->prod.pins; pin; pin = pin->next)
		pin_done(pin, p->id);
	unpin_locked(r, 0);
	vp_fab_remove(r->fab, p->addr);
	vp_sess_clear(&p->sess);
	free(p);
	if (!r->stop)
		topo_update_locked(r);	/* its children move up */
}

/* A consumer goes, logged (a handshake's end is logged within limits by pending_drop_locked). */
static void peer_drop_locked(struct vp_repl *r, struct peer *p, const char *why)
{
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
	vp_log_limited(rl, LOG_WARNING, "repl", "a handshake (consumer %" PRIu64 ") was dropped: %s",
		       p->id, why);
	__atomic_add_fetch(&r->refused, 1, __ATOMIC_RELAXED);
	peer_free_locked(r, p);
}

/* Drops the oldest handshake in progress (naming the host of hello's name, if given). */
static void evict_oldest_locked(struct vp_repl *r, const struct vp_msg *hello)
{
	struct peer *oldest = NULL;

	for (struct peer *p = r->prod.peers; p; p = p->next)
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
	other = peer_at_locked(r, addr, 0);
	for (p = r->prod.peers; p; p = p->next) {
		pending += !p->active;
		same += !p->active && same_host(p->name, p->name_len, m->u.hello.name,
						m->u.hello.name_len);
	}
	if (src != VP_FAB_ADDR_UNKNOWN && src != addr)
		why = "it names another address than its own";
	else if (other && src != addr)
		why = "it names the address of a handshake in progress";
	else if (!other && src != addr && peer_at_locked(r, addr, 1))
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
	mac_of(r, "VPR1-P", p->nonce_c, p->nonce_p, p->id, reply.u.challenge.mac);
	q = qmsg_of(&reply);
	if (q)
		peer_queue_locked(p, q);
	p->next = r->prod.peers;
	r->prod.peers = p;
	pthread_cond_signal(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

static void producer_handle(struct vp_repl *r, struct qmsg *q)
{
	struct vp_msg *m = malloc(sizeof(*m));
	int type = vp_msg_peek_type(q->buf, q->len);
	int sealed = vp_sess_is_sealed(q->buf, q->len);
	char from[48];
	struct peer *p;

	if (!m)
		return;
	pthread_mutex_lock(&r->lock);
	/* a handshake's messages go to the handshake at that address, the rest to the session */
	p = !sealed && (type == VP_MSG_AUTH || type == VP_MSG_REFUSED) ?
		peer_at_locked(r, q->src, 0) : NULL;
	if (!p)
		p = peer_at_locked(r, q->src, 1);
	pthread_mutex_unlock(&r->lock);
	if (p)
		snprintf(from, sizeof(from), "consumer %" PRIu64, p->id);
	else
		snprintf(from, sizeof(from), "an address that is not a consumer's");
	if (!sealed && type == VP_MSG_HELLO) {
		/* plain, from anyone: a new consumer, or one that starts again from its own address */
		if (!open_msg(r, NULL, q, m, from, 0))
			producer_hello(r, m, q->src);
		goto out;
	}
	if (!p) {
		refused(r, from, q->len, "only a HELLO is taken from an address that did not say HELLO");
		goto out;
	}
	if (open_msg(r, &p->sess, q, m, from, 0))
		goto out;
	if (m->peer_id != p->id) {	/* the header is a claim; the address is the provider's word */
		refused(r, from, q->len, "its header names another consumer");
		goto out;
	}
	pthread_mutex_lock(&r->lock);
	if (!p->active && m->type != VP_MSG_AUTH && m->type != VP_MSG_REFUSED) {
		pthread_mutex_unlock(&r->lock);
		refused(r, from, q->len, "a handshake takes only AUTH or REFUSED");
		goto out;
	}
	p->last_heard = vp_now();
	switch (m->type) {
	case VP_MSG_AUTH: {
		struct peer *old;

		if (p->active)
			break;
		if (!mac_ok(r, "VPR1-C", p->nonce_p, p->nonce_c, p->id, m->u.auth.mac)) {
			/*
			 * No REFUSED: an honest consumer with another secret
			 * refused our CHALLENGE already; this AUTH is a guess.
			 */
			pending_drop_locked(r, p, &rl_hello, "it failed authentication (wrong or missing secret_file)");
			break;
		}
		if (session_derive(r, &p->sess, p->nonce_c, p->nonce_p, p->id, 1)) {
			peer_drop_locked(r, p, "its session keys could not be derived");
			break;
		}
		/* a consumer that started again: its old session ends now that the new one is proven */
		old = peer_at_locked(r, p->addr, 1);
		if (old)
			peer_drop_locked(r, old, "it subscribed again (a new session replaces it)");
		p->active = 1;
		pthread_mutex_unlock(&r->lock);
		{
			struct vp_msg w = { .type = VP_MSG_WELCOME };

			send_msg(r, p->addr, &p->sess, &w);	/* sealed: the first of the session */
		}
		catch_up(r, p);
		pthread_mutex_lock(&r->lock);
		topo_update_locked(r);
		pthread_mutex_unlock(&r->lock);
		goto out;
	}
	case VP_MSG_DONE:
		if (m->u.done.seq > p->done_seq)
			p->done_seq = m->u.done.seq;
		if (m->u.done.status == 0)
			p->versions_done++;
		p->done_at = vp_now();
		for (struct pin *pin = r->prod.pins; pin; pin = pin->next)
			if (pin->seq == m->u.done.seq)
				pin_done(pin, p->id);	/* its own: another's DONE releases nothing */
		p->bytes_out += m->u.done.from_producer;
		p->bytes_relayed += m->u.done.from_relay;
		vp_metrics_add(VP_C_BYTES_REPL_OUT, m->u.done.from_producer);
		unpin_locked(r, 0);
		break;
	case VP_MSG_HEARTBEAT:
		break;
	case VP_MSG_REFUSED:
		vp_log_limited(&rl_hello, LOG_WARNING, "repl", "consumer %" PRIu64 " refused us: %s",
			       p->id, m->u.refused.reason);
		if (p->active)
			peer_drop_locked(r, p, "it refused authentication (wrong or missing secret_file on one side)");
		else
			pending_drop_locked(r, p, &rl_hello, "it refused authentication (wrong or missing secret_file on one side)");
		break;
	default:
		vp_log(LOG_DEBUG, "repl", "unexpected %s from consumer %" PRIu64,
		       vp_msg_type_name(m->type), m->peer_id);
	}
	pthread_mutex_unlock(&r->lock);
out:
	free(m);
}

static void producer_tick(struct vp_repl *r, double *last_beat)
{
	double now = vp_now();
	struct peer *p, *next;

	/* events, in order */
	for (;;) {
		struct event *e;

		pthread_mutex_lock(&r->lock);
		e = r->prod.ev_head;
		if (e) {
			r->prod.ev_head = e->next;
			if (!r->prod.ev_head)
				r->prod.ev_tail = NULL;
		}
		pthread_mutex_unlock(&r->lock);
		if (!e)
			break;
		if (e->is_version && e->data)
			announce(r, e->path, e->data, e->version, e->mode, e->mtime_ns, NULL,
				 e->is_preview);
		else if (!e->is_version)
			queue_op(r, e->kind, e->path, e->path2, e->mode, NULL);
		vp_data_put(e->data);
		free(e->path);
		free(e->path2);
		free(e);
	}
	/* outboxes */
	pthread_mutex_lock(&r->lock);
	for (p = r->prod.peers; p; p = next) {
		next = p->next;
		if (!p->active && now - p->hello_at > HANDSHAKE_S) {
			pending_drop_locked(r, p, &rl_hello, "it did not authenticate in time");
			continue;
		}
		if (p->active && now - p->last_heard > r->cfg.peer_timeout) {
			peer_drop_locked(r, p, "no heartbeat");
			continue;
		}
		while (p->out_head) {
			struct qmsg *q = p->out_head;
			vp_fab_addr addr = p->addr;
			int active = p->active, rc;

			p->out_head = q->next;
			if (!p->out_head)
				p->out_tail = NULL;
			pthread_mutex_unlock(&r->lock);
			/*
			 * Sealed as it goes: sequence numbers in the order of
			 * sending.  A peer that has not authenticated gets a
			 * moment, not peer_timeout: whoever says HELLO must not
			 * hold up the thread (a name that never answers).
			 */
			rc = active ? send_raw(r, addr, &p->sess, q->buf, q->len, r->cfg.peer_timeout) :
				vp_fab_send_untrusted(r->fab, addr, q->buf, q->len, PENDING_SEND_S);
			pthread_mutex_lock(&r->lock);
			if (rc == -EAGAIN && !active) {
				q->next = p->out_head;	/* not taken yet: again next tick */
				p->out_head = q;
				if (!p->out_tail)
					p->out_tail = q;
				break;
			}
			free(q);
			if (rc && !(rc == -ETIMEDOUT && !active)) {
				if (active)
					peer_drop_locked(r, p, "sends time out");
				else
					pending_drop_locked(r, p, &rl_hello, "its address does not take messages");
				break;
			}
		}
	}
	pthread_mutex_unlock(&r->lock);
	if (now - *last_beat >= 1.0) {
		struct vp_msg hb = { .type = VP_MSG_HEARTBEAT };

		*last_beat = now;
		pthread_mutex_lock(&r->lock);
		hb.u.heartbeat.latest_seq = r->prod.seq;
		unpin_locked(r, 0);
		pthread_mutex_unlock(&r->lock);
		/* only this thread adds or frees peers: the list holds while we send */
		for (p = r->prod.peers; p; p = p->next)
			if (p->active)
				send_msg(r, p->addr, &p->sess, &hb);
	}
}

/* ---- consumer --------------------------------------------------------- */

static int mount_open(struct vp_repl *r);
static void mount_close(struct vp_repl *r);

/* Notes a path (and its parents) as named by the producer's catch-up. */
static void seen_add(struct vp_repl *r, const char *path)
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

static void seen_clear(struct vp_repl *r)
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
	int *types;
	size_t n, cap;
};

static void stale_cb(void *arg, int type, const char *path, const char *target,
		     uint32_t mode, struct vp_data *d, uint64_t version,
		     int64_t mtime_ns)
{
	struct stale_arg *a = arg;
	const char *key = path;

	(void)target;
	(void)mode;
	(void)d;
	(void)version;
	(void)mtime_ns;
	if (!strncmp(path, ".viperfs-", 9) ||
	    (a->r->cons.nseen && bsearch(&key, a->r->cons.seen, a->r->cons.nseen, sizeof(char *), cmp_str)))
		return;
	if (a->n == a->cap) {
		size_t cap = a->cap ? a->cap * 2 : 64;
		char **p = realloc(a->paths, cap * sizeof(*p));
		int *t = p ? realloc(a->types, cap * sizeof(*t)) : NULL;

		if (p)
			a->paths = p;
		if (!t)
			return;
		a->types = t;
		a->cap = cap;
	}
	a->paths[a->n] = strdup(path);
	a->types[a->n] = type;
	if (a->paths[a->n])
		a->n++;
}

/*
 * The catch-up is complete: what it did not name was deleted on the
 * producer while we were away.  Removed by syscalls, so watchers see
 * IN_DELETE; children before their directories.
 */
static void remove_stale(struct vp_repl *r)
{
	struct stale_arg a = { .r = r };

	if (r->cons.nseen)
		qsort(r->cons.seen, r->cons.nseen, sizeof(char *), cmp_str);
	vp_ns_snapshot(r->ns, stale_cb, &a);
	if (a.n && !mount_open(r)) {
		for (size_t i = a.n; i-- > 0;) {
			if (vp_safepath_unlink(r->cons.mnt_fd, a.paths[i], a.types[i] == 0 ? AT_REMOVEDIR : 0) == 0)
				vp_log(LOG_INFO, "repl", "'%s' was deleted on the producer while we were away; removed",
				       a.paths[i]);
		}
		mount_close(r);
	}
	for (size_t i = 0; i < a.n; i++)
		free(a.paths[i]);
	free(a.paths);
	free(a.types);
	seen_clear(r);
	r->cons.syncing = 0;
}

static void consumer_send(struct vp_repl *r, struct vp_msg *m)
{
	m->peer_id = r->cons.my_id;
	if (send_msg(r, r->cons.producer, &r->cons.sess, m))
		vp_log(LOG_DEBUG, "repl", "send of %s to the producer failed", vp_msg_type_name(m->type));
}

/*
 * A heartbeat to the producer once a second: from the tick, and from
 * inside long transfers, so that a consumer busy fetching (or waiting on
 * a dead relay) is not taken for dead.
 */
static void consumer_beat(struct vp_repl *r)
{
	double now = vp_now();

	if (r->cons.state == CONS_SUBSCRIBED && now - r->cons.last_beat >= 1.0) {
		struct vp_msg hb = { .type = VP_MSG_HEARTBEAT };

		r->cons.last_beat = now;
		consumer_send(r, &hb);
	}
}

static void say_done(struct vp_repl *r, uint64_t seq, uint64_t version, int status)
{
	struct vp_msg m = { .type = VP_MSG_DONE };

	m.u.done.seq = seq;
	m.u.done.version = version;
	m.u.done.status = status;
	m.u.done.from_producer = r->cons.from_producer;
	m.u.done.from_relay = r->cons.from_relay;
	consumer_send(r, &m);
}

/*
 * Opens the mount's root for one operation, and checks it is still our
 * FUSE mount: after an unmount, the path is the directory underneath,
 * which must never receive replicated files.  Returns 0 or -errno.
 */
static int mount_open(struct vp_repl *r)
{
	struct stat st;

	r->cons.mnt_fd = open(r->cons.mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (r->cons.mnt_fd < 0)
		return -errno;
	if (fstat(r->cons.mnt_fd, &st) || st.st_dev != r->cons.mnt_dev) {
		close(r->cons.mnt_fd);
		r->cons.mnt_fd = -1;
		return -ENOTCONN;
	}
	return 0;
}

static void mount_close(struct vp_repl *r)
{
	vp_ns_installed(r->ns);	/* our syscalls returned: the kernel sees what they did */
	if (r->cons.mnt_fd >= 0)
		close(r->cons.mnt_fd);
	r->cons.mnt_fd = -1;
}

/*
 * mkdir -p of path's parents on the mount (as the producer has them),
 * contained: a symlink on the way is not followed (safepath.h).
 */
static void make_parents(struct vp_repl *r, const char *path)
{
	int rc = vp_safepath_mkparents(r->cons.mnt_fd, path);

	if (rc)
		vp_log(LOG_DEBUG, "repl", "the directories of '%s': %s", path, strerror(-rc));
}

/*
 * Installs a version by ordinary syscalls on the mount, so that watchers
 * get the events of a local write.  A new file: open(O_CREAT) + close,
 * with the bytes attached by the namespace (IN_CREATE, IN_CLOSE_WRITE).
 * A replaced file: the bytes become a new inode in the hidden incoming
 * folder, renamed over the path in one atomic switch (IN_MOVED_TO), then
 * opened and closed (IN_CLOSE_WRITE).  Readers of the old inode keep it.
 */
static int install(struct vp_repl *r, const char *path, struct vp_data *d,
		   uint64_t version, uint32_t mode, uint64_t seq)
{
	char hidden[64];
	int fd, rc;

	rc = mount_open(r);
	if (rc)
		return rc;
	make_parents(r, path);
	if (vp_ns_path_version(r->ns, path) != UINT64_MAX) {
		snprintf(hidden, sizeof(hidden), ".viperfs-incoming/%" PRIu64, seq);
		rc = vp_ns_install_hidden(r->ns, hidden + strlen(".viperfs-incoming/"),
					  d, version, mode);
		if (!rc && (rc = vp_safepath_rename(r->cons.mnt_fd, hidden, path)))
			vp_safepath_unlink(r->cons.mnt_fd, hidden, 0);	/* do not keep its bytes around */
		vp_ns_installed(r->ns);	/* the kernel shows the new file: tell watch and wait */
		if (!rc) {
			fd = vp_safepath_open(r->cons.mnt_fd, path, O_WRONLY, 0);
			if (fd >= 0)
				close(fd);
		}
		mount_close(r);
		return rc;
	}
	rc = vp_ns_stage_install(r->ns, path, d, version, mode);
	if (!rc) {
		fd = vp_safepath_open(r->cons.mnt_fd, path, O_WRONLY | O_CREAT, (mode_t)(mode & 07777));
		if (fd < 0)
			rc = fd;
		else if (close(fd))
			rc = -errno;
		vp_ns_unstage_install(r->ns, path);
	}
	mount_close(r);
	return rc;
}

/*
 * Latest wins: true if an ANNOUNCE of a newer version of path is already
 * waiting in the inbox, so that fetching this one would be wasted.
 */
static int newer_queued(struct vp_repl *r, const char *path, uint64_t version)
{
	struct vp_msg *m = malloc(sizeof(*m));
	int found = 0;

	if (!m)
		return 0;
	pthread_mutex_lock(&r->lock);
	unsigned int looked = 0;

	/* bounded: the progress thread waits for this lock */
	for (struct qmsg *q = r->in_head; q && !found && looked++ < 64; q = q->next) {
		static __thread uint8_t plain[VP_FAB_MAX_MSG];
		struct vp_sess peek = r->cons.sess;	/* a copy: the real one opens it later */
		const void *buf = q->buf;
		ssize_t len = (ssize_t)q->len;

		if (q->src != r->cons.producer)
			continue;
		if (peek.on && (len = vp_sess_open(&peek, q->buf, q->len, plain, sizeof(plain), NULL)) < 0)
			continue;
		if (peek.on)
			buf = plain;
		if (vp_msg_decode(buf, (size_t)len, m, NULL) == 0 &&
		    m->type == VP_MSG_ANNOUNCE && m->u.announce.first == 0 &&
		    !(m->u.announce.flags & VP_ANNOUNCE_PREVIEW) &&
		    m->u.announce.version > version && !strcmp(m->u.announce.path, path))
			found = 1;
		vp_sess_clear(&peek);
	}
	pthread_mutex_unlock(&r->lock);
	free(m);
	return found;
}

/* ---- relay (consumer side) -------------------------------------------- */

typedef typeof(((struct vp_msg *)0)->u.announce) announce_t;

static uint64_t chunk_len(const announce_t *a, uint32_t i)
{
	uint64_t start = (uint64_t)i * a->chunk_size, len = a->size - start;

	return len > a->chunk_size ? a->chunk_size : len;
}

/* Sends m to another consumer of the tree, sealed with the edge's session, with a short deadline. */
static int relay_send(struct vp_repl *r, vp_fab_addr to, struct vp_sess *s, struct vp_msg *m)
{
	m->peer_id = r->cons.my_id;
	return encode_send(r, to, s, m, RELAY_SEND_S);
}

/* ---- chunks exposed to relay children ----------------------------------- */

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
 * relay pin goes (unexpose_seq) or the chunk does (unexpose_mem): chunk
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
static void unexpose_seq(struct vp_repl *r, uint64_t seq)
{
	for (size_t i = r->relay.nexpo; i-- > 0;)
		if (!seq || r->relay.expo[i].seq == seq)
			unexpose_at(r, i);
}

/* ... nor the chunk at mem (it goes back to the pool, or elsewhere). */
static void unexpose_mem(struct vp_repl *r, const void *mem)
{
	for (size_t i = r->relay.nexpo; i-- > 0;)
		if (r->relay.expo[i].mem == mem)
			unexpose_at(r, i);
}

/* The chunk at mem now belongs to announce seq (a preview's chunk, taken by its version). */
static void expose_reseq(struct vp_repl *r, const void *mem, uint64_t seq)
{
	struct exposure *e = expose_find(r, mem);

	if (e)
		e->seq = seq;
}

/* Starts the offers of announce a to our children. */
static void offer_begin(struct vp_repl *r, const announce_t *a)
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
static void offer_flush(struct vp_repl *r, int last)
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
static void offer_chunk(struct vp_repl *r, const announce_t *a, uint32_t i, const void *mem)
{
	struct vp_chunk_offer *c;
	uint64_t key, addr;

	if (!r->relay.nchildren || !(a->flags & VP_ANNOUNCE_RELAY) || !mem)
		return;
	offer_begin(r, a);
	if (!r->relay.offer || expose(r, (void *)mem, (size_t)chunk_len(a, i), a->seq, &key, &addr))
		return;
	c = &r->relay.offer->u.chunks.chunk[r->relay.offer->u.chunks.count++];
	c->idx = i;
	c->addr = addr;
	c->key = key;
	if (r->relay.offer->u.chunks.count == VP_PROTO_CHUNKS_PER_MSG)
		offer_flush(r, 0);
}

/*
 * Chunk i of announce a arrived in mem and matched its hash, while later
 * reads are still in flight: on to the GPU tier's stage (unless it landed
 * there: staged) and to our relay
 * children, and a heartbeat if one is due (transfers can be long).
 */
static void chunk_ready(struct vp_repl *r, const announce_t *a, uint32_t i, const void *mem,
			size_t len, int staged)
{
	if (!staged)
		vp_gpu_stage_copy(r->cons.gst, (uint64_t)i * a->chunk_size, mem, len);
	offer_chunk(r, a, i, mem);
	offer_flush(r, 0);
	consumer_beat(r);
}

/*
 * Keeps d (announce seq) for the children we offered it to, until they
 * are done; its chunks stay exposed as long.  Returns 1 if it did.
 */
static int rpin_add(struct vp_repl *r, uint64_t seq, struct vp_data *d)
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
	pin->next = r->relay.rpins;
	r->relay.rpins = pin;
	return 1;
}

/* Lets go of relay pins no child waits on (all: every pin). */
static void rpin_sweep(struct vp_repl *r, int all)
{
	struct relay_pin **pp = &r->relay.rpins;
	double now = vp_now();

	while (*pp) {
		struct relay_pin *pin = *pp;
		int waiting = 0;

		for (unsigned int i = 0; i < VP_PROTO_MAX_CHILDREN; i++)
			waiting |= pin->waiting[i] != 0;
		if (all || !waiting || now - pin->since > RELAY_PIN_TIMEOUT) {
			*pp = pin->next;
			unexpose_seq(r, pin->seq);	/* before its chunks can go */
			vp_data_put(pin->data);
			free(pin);
		} else {
			pp = &pin->next;
		}
	}
}

/* Child is done with seq (seq 0: with everything, it left the tree). */
static void rpin_done(struct vp_repl *r, uint64_t child, uint64_t seq)
{
	for (struct relay_pin *pin = r->relay.rpins; pin; pin = pin->next)
		if (!seq || pin->seq == seq)
			for (unsigned int i = 0; i < VP_PROTO_MAX_CHILDREN; i++)
				if (pin->waiting[i] == child)
					pin->waiting[i] = 0;
	rpin_sweep(r, 0);
}

/* Ends a relayed announce: LAST to our children, RELAY_DONE to our relay. */
static void relay_end(struct vp_repl *r, const announce_t *a)
{
	if (!(a->flags & VP_ANNOUNCE_RELAY))
		return;
	if (r->relay.nchildren) {
		offer_begin(r, a);
		offer_flush(r, 1);
	}
	if (r->relay.parent_id) {
		struct vp_msg m = { .type = VP_MSG_RELAY_DONE };

		m.u.relay_done.seq = a->seq;
		relay_send(r, r->relay.parent_addr, &r->relay.parent_sess, &m);
	}
}

/* Takes every offer the relay queue holds, oldest first. */
static struct qmsg *rin_take(struct vp_repl *r)
{
	struct qmsg *q;

	pthread_mutex_lock(&r->lock);
	q = r->relay.rin_head;
	r->relay.rin_head = r->relay.rin_tail = NULL;
	r->relay.rin_bytes = 0;
	pthread_mutex_unlock(&r->lock);
	return q;
}

/* Drops the relay's offers we hold (the relay changed or went away). */
static void rin_clear(struct vp_repl *r)
{
	struct qmsg *q = rin_take(r);

	while (q) {
		struct qmsg *next = q->next;

		free(q);
		q = next;
	}
}

/* Applies a TOPO: our relay and the consumers we serve. */
static void relay_topo(struct vp_repl *r, const struct vp_msg *m)
{
	const struct vp_peer_ref *par = &m->u.topo.parent;
	struct relay_child kids[VP_PROTO_MAX_CHILDREN];
	unsigned int n = 0;

	if (par->id != r->relay.parent_id || par->name_len != r->relay.parent_name_len ||
	    memcmp(par->name, r->relay.parent_name, par->name_len) ||
	    memcmp(par->key, r->relay.parent_key, VP_PROTO_EDGE_KEY)) {
		if (r->relay.parent_id)
			vp_fab_remove(r->fab, r->relay.parent_addr);
		r->relay.parent_id = 0;
		vp_sess_clear(&r->relay.parent_sess);
		rin_clear(r);
		if (par->id && vp_fab_insert_name(r->fab, par->name, par->name_len, &r->relay.parent_addr)) {
			vp_log(LOG_WARNING, "repl", "relay: consumer %" PRIu64 " has an unusable endpoint name; reading from the producer",
			       par->id);
		} else if (par->id) {
			r->relay.parent_id = par->id;
			memcpy(r->relay.parent_name, par->name, par->name_len);
			r->relay.parent_name_len = par->name_len;
			memcpy(r->relay.parent_key, par->key, VP_PROTO_EDGE_KEY);
			edge_session(r, &r->relay.parent_sess, par->key, par->id, r->cons.my_id, 0);
		}
		if (r->relay.parent_id)
			vp_log(LOG_NOTICE, "repl", "relay: reading new versions from consumer %" PRIu64 ", the producer serving what it does not offer within %.1f s",
			       r->relay.parent_id, r->cfg.relay_wait);
		else
			vp_log(LOG_NOTICE, "repl", "relay: reading new versions from the producer");
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
			edge_session(r, &k->sess, c->key, r->cons.my_id, c->id, 1);
			vp_log(LOG_NOTICE, "repl", "relay: serving consumer %" PRIu64 " the chunks we receive", c->id);
		}
		n++;
	}
	for (unsigned int j = 0; j < r->relay.nchildren; j++)
		if (r->relay.children[j].id) {	/* left the tree, or moved */
			rpin_done(r, r->relay.children[j].id, 0);
			vp_fab_remove(r->fab, r->relay.children[j].addr);
			vp_sess_clear(&r->relay.children[j].sess);
		}
	memcpy(r->relay.children, kids, n * sizeof(kids[0]));
	r->relay.nchildren = n;
}

/* Forgets the relay tree (a new subscription gets a new TOPO). */
static void relay_reset(struct vp_repl *r)
{
	struct vp_msg *m = calloc(1, sizeof(*m));

	if (!m)
		return;
	m->type = VP_MSG_TOPO;
	relay_topo(r, m);
	free(m);
	rpin_sweep(r, 1);
}

/*
 * Chunk memory a timed-out read may still write: never reused, and given
 * back to the pool only after the fabric is closed.
 */
static void quarantine(struct vp_repl *r, void *mem)
{
	void **q = realloc(r->cons.quarantine, (r->cons.nquarantine + 1) * sizeof(*q));

	unexpose_mem(r, mem);
	if (!q)
		return;		/* leaked rather than reused */
	r->cons.quarantine = q;
	q[r->cons.nquarantine++] = mem;
}

/* Checks each chunk read from the relay; offers it on to our children. */
struct rverify {
	struct vp_repl *r;
	const announce_t *a;
	const struct vp_fab_read_req *reqs;
	const uint32_t *idx;		/* request -> chunk */
	const int32_t *pos;		/* chunk -> slot in need */
	uint8_t *got;
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
	v->got[v->pos[i]] = 1;
	v->ngot++;
	v->bytes += v->reqs[req].len;
	chunk_ready(v->r, v->a, i, v->reqs[req].local, v->reqs[req].len, 0);
}

/*
 * Takes the relay's offers for announce a out of the relay queue (those
 * for announces still ahead go back) and queues the offered chunks of
 * need, each once, in fifo.  Returns 1 once the relay said LAST.
 */
static int relay_take_offers(struct vp_repl *r, const announce_t *a, const int32_t *pos,
			     struct vp_chunk_offer *offer, uint8_t *offered,
			     uint32_t *fifo, size_t *fifo_tail, struct vp_msg *m)
{
	struct qmsg *list, *later = NULL, **later_tail = &later, *later_last = NULL;
	size_t later_bytes = 0;
	int last = 0;

	list = rin_take(r);
	while (list) {
		struct qmsg *q = list;
		typeof(m->u.chunks) *c = &m->u.chunks;

		list = q->next;
		q->next = NULL;
		if (!r->relay.parent_id || q->src != r->relay.parent_addr) {
			refused(r, "a consumer that is not our relay", q->len, "only our relay offers chunks");
		} else if (open_msg(r, &r->relay.parent_sess, q, m, "our relay", 0)) {
			;	/* refused */
		} else if (m->type != VP_MSG_CHUNKS || m->peer_id != r->relay.parent_id) {
			refused(r, "our relay", q->len, "not an offer of its own");
		} else if (c->seq > a->seq) {
			/* for an announce still ahead: back, opened (its seal is spent) */
			struct qmsg *o = qmsg_of(m);

			free(q);
			if (!o)
				continue;
			o->src = r->relay.parent_addr;
			o->opened = 1;
			*later_tail = o;
			later_tail = &o->next;
			later_last = o;
			later_bytes += o->len;
			continue;
		} else if (c->seq == a->seq && c->nchunks == a->nchunks) {
			for (uint32_t o = 0; o < c->count; o++) {
				int32_t k = pos[c->chunk[o].idx];

				if (k < 0 || offered[k])
					continue;
				offered[k] = 1;
				offer[k] = c->chunk[o];
				fifo[(*fifo_tail)++] = (uint32_t)k;
			}
			last |= (c->flags & VP_CHUNKS_LAST) != 0;
		}	/* else: stale, or not from our relay */
		free(q);
	}
	if (later) {
		pthread_mutex_lock(&r->lock);
		*later_tail = r->relay.rin_head;
		if (!r->relay.rin_head)
			r->relay.rin_tail = later_last;
		r->relay.rin_head = later;
		r->relay.rin_bytes += later_bytes;
		pthread_mutex_unlock(&r->lock);
	}
	return last;
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
	int32_t *pos = malloc((a->nchunks ? a->nchunks : 1) * sizeof(*pos));
	struct vp_chunk_offer *offer = calloc(n ? n : 1, sizeof(*offer));
	uint8_t *offered = calloc(n ? n : 1, 1);
	uint32_t *fifo = calloc(n ? n : 1, sizeof(*fifo));
	struct vp_fab_read_req reqs[RELAY_BATCH];
	uint32_t idx[RELAY_BATCH];
	struct vp_msg *m = malloc(sizeof(*m));
	double quiet = vp_now() + r->cfg.relay_wait;
	size_t left = n, head = 0, tail = 0;
	int last = 0;

	if (!pos || !offer || !offered || !fifo || !m)
		goto out;
	memset(pos, 0xff, (a->nchunks ? a->nchunks : 1) * sizeof(*pos));
	for (size_t k = 0; k < n; k++)
		pos[need[k]] = (int32_t)k;
	while (left && !(last && head == tail)) {
		size_t nreq = 0;
		uint64_t bytes = 0;

		last |= relay_take_offers(r, a, pos, offer, offered, fifo, &tail, m);
		consumer_beat(r);
		while (head < tail && nreq < RELAY_BATCH) {
			uint32_t k = fifo[head++], i = need[k];
			struct slab_mr *s = mem[i] ? slab_of(r, mem[i]) : NULL;

			if (!s)
				continue;	/* the producer serves it */
			idx[nreq] = i;
			reqs[nreq].mr = s->mr;
			reqs[nreq].local = mem[i];
			reqs[nreq].len = (size_t)chunk_len(a, i);
			reqs[nreq].remote_addr = offer[k].addr;
			reqs[nreq].key = offer[k].key;
			bytes += reqs[nreq].len;
			nreq++;
		}
		if (nreq) {
			struct rverify v = { .r = r, .a = a, .reqs = reqs, .idx = idx, .pos = pos, .got = got };
			/* short batches, short deadlines: a dead relay costs seconds, not a file's time */
			double wait = r->cfg.relay_wait < r->cfg.peer_timeout / 2 ?
				      r->cfg.relay_wait : r->cfg.peer_timeout / 2;
			int rc = vp_fab_read_cb(r->fab, r->relay.parent_addr, reqs, nreq, r->cfg.repl_inflight,
						wait + (double)bytes / 50e6, relay_verify, &v);

			left -= v.ngot;
			r->cons.bytes_relay_in += v.bytes;
			r->cons.from_relay += v.bytes;
			if (rc) {
				vp_log(LOG_WARNING, "repl", "relay: reads from consumer %" PRIu64 " failed (%s); the producer serves the rest of '%s'",
				       r->relay.parent_id, strerror(-rc), a->path);
				/* reads may still land in the chunks that did not arrive */
				for (size_t q = 0; q < nreq; q++) {
					uint32_t i = idx[q];
					int err;

					if (got[pos[i]])
						continue;
					quarantine(r, mem[i]);
					mem[i] = vp_pool_get_chunk(r->pool, r->cfg.cache_wait, &err);
				}
				break;
			}
			quiet = vp_now() + r->cfg.relay_wait;
			continue;
		}
		if (last)
			break;
		if (vp_now() > quiet) {
			vp_log(LOG_INFO, "repl", "relay: consumer %" PRIu64 " offered nothing of '%s' for %.1f s; the producer serves the rest",
			       r->relay.parent_id, a->path, r->cfg.relay_wait);
			break;
		}
		pthread_mutex_lock(&r->lock);
		if (!r->relay.rin_head && !r->stop) {
			struct timespec ts;
			double until = vp_now() + 0.05;

			vp_abstime(&ts, until < quiet ? until : quiet);
			pthread_cond_timedwait(&r->cond, &r->lock, &ts);
		}
		if (r->stop)
			last = 1;
		pthread_mutex_unlock(&r->lock);
	}
out:
	free(pos);
	free(offer);
	free(offered);
	free(fifo);
	free(m);
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
	chunk_ready(v->r, v->a, idx, host, v->reqs[req].len, v->direct);
}

/*
 * Fetches chunks need[0..n) of announce a into mem[chunk] (the caller's
 * pool chunks), each checked against its hash as it lands and offered to
 * our relay children.  A relayed announce reads first from our relay;
 * the producer serves the rest.  Returns 0, -EBADMSG (a chunk from the
 * producer does not match its hash; *bad_idx says which), or -errno.
 */
static int fetch_chunks(struct vp_repl *r, const announce_t *a, void **mem,
			const uint32_t *need, size_t n, uint32_t *bad_idx)
{
	struct vp_fab_read_req *reqs = calloc(n ? n : 1, sizeof(*reqs));
	uint32_t *idx = calloc(n ? n : 1, sizeof(*idx));
	uint8_t *got = calloc(n ? n : 1, 1);
	size_t nreq = 0, missing = n;
	uint64_t bytes = 0;
	int rc = 0;

	if (!reqs || !idx || !got) {
		rc = -ENOMEM;
		goto out;
	}
	if ((a->flags & VP_ANNOUNCE_RELAY) && r->relay.nchildren) {
		uint8_t *needed = calloc(a->nchunks ? a->nchunks : 1, 1);

		offer_begin(r, a);	/* what we hold already goes first */
		for (size_t k = 0; needed && k < n; k++)
			needed[need[k]] = 1;
		for (uint32_t i = 0; needed && i < a->nchunks; i++)
			if (!needed[i] && mem[i] && r->cons.asm_refs[i].key)
				offer_chunk(r, a, i, mem[i]);
		free(needed);
		offer_flush(r, 0);
	}
	if ((a->flags & VP_ANNOUNCE_RELAY) && r->relay.parent_id && n)
		missing = relay_fetch(r, a, mem, need, n, got);
	for (size_t k = 0; k < n; k++) {
		uint32_t i = need[k];
		struct slab_mr *s;

		if (got[k])
			continue;
		if (!mem[i] || !(s = slab_of(r, mem[i]))) {
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
	if ((a->flags & VP_ANNOUNCE_RELAY) && r->relay.parent_id && missing)
		r->cons.bytes_relay_fallback += bytes;
	{
		struct verify v = { .r = r, .a = a, .reqs = reqs, .fetched = idx, .mem = mem,
				    .direct = r->cons.gst_mr != NULL };

		/* given up after peer_timeout without a chunk: a slow producer is waited for */
		rc = vp_fab_read_cb(r->fab, r->cons.producer, reqs, nreq, r->cfg.repl_inflight,
				    r->cfg.peer_timeout, verify_chunk, &v);
		r->cons.from_producer += bytes;
		r->cons.bytes_producer_in += bytes;
		if (!rc && v.direct)
			r->cons.bytes_direct_in += bytes;
		if (!rc && v.bad) {
			*bad_idx = v.bad_idx;
			rc = v.bad;
		}
	}
out:
	free(reqs);
	free(idx);
	free(got);
	return rc;
}

static struct prefetch *prefetch_find(struct vp_repl *r, const char *path)
{
	struct prefetch *pf;

	for (pf = r->cons.prefetch; pf && strcmp(pf->path, path); pf = pf->next)
		;
	return pf;
}

static void prefetch_drop(struct vp_repl *r, struct prefetch *pf)
{
	struct prefetch **pp;

	for (pp = &r->cons.prefetch; *pp && *pp != pf; pp = &(*pp)->next)
		;
	if (*pp)
		*pp = pf->next;
	for (uint32_t i = 0; i < pf->n; i++)
		if (pf->mem[i]) {
			unexpose_mem(r, pf->mem[i]);	/* a preview's chunks were offered too */
			vp_pool_put_chunk(r->pool, pf->mem[i]);
		}
	free(pf->mem);
	free(pf->hash);
	free(pf->path);
	free(pf);
}

/* The prefetch entry of path for version, made or grown to n chunks; NULL: no memory. */
static struct prefetch *prefetch_get(struct vp_repl *r, const char *path,
				     uint64_t version, uint32_t n)
{
	struct prefetch *pf = prefetch_find(r, path);

	if (pf && pf->version != version) {
		prefetch_drop(r, pf);	/* chunks of an older version being written */
		pf = NULL;
	}
	if (!pf) {
		pf = calloc(1, sizeof(*pf));
		if (!pf || !(pf->path = strdup(path))) {
			free(pf);
			return NULL;
		}
		pf->version = version;
		pf->next = r->cons.prefetch;
		r->cons.prefetch = pf;
	}
	if (n > pf->n) {
		void **mem = realloc(pf->mem, n * sizeof(*mem));
		uint64_t *hash = mem ? realloc(pf->hash, n * sizeof(*hash)) : NULL;

		if (mem)
			pf->mem = mem;
		if (!mem || !hash)
			return NULL;
		pf->hash = hash;
		memset(pf->mem + pf->n, 0, (n - pf->n) * sizeof(*mem));
		memset(pf->hash + pf->n, 0, (n - pf->n) * sizeof(*hash));
		pf->n = n;
	}
	return pf;
}

/*
 * A preview: fetches the finished chunks not fetched yet (best effort: no
 * waiting for cache space), checks each against its hash, and keeps them
 * for the version's ANNOUNCE.  Nothing is installed.
 */
static void consumer_preview(struct vp_repl *r, const struct vp_msg *m)
{
	const typeof(m->u.announce) *a = &m->u.announce;
	struct prefetch *pf = prefetch_get(r, a->path, a->version, a->nchunks);
	uint32_t *fetched = NULL, bad;
	size_t nreq = 0;
	uint64_t bytes = 0;
	int rc = -ENOMEM;

	if (!pf)
		goto out;
	fetched = calloc(a->nchunks ? a->nchunks : 1, sizeof(*fetched));
	if (!fetched)
		goto out;
	for (uint32_t i = 0; i < a->nchunks; i++) {
		int err;

		if (!r->cons.asm_refs[i].key ||
		    (pf->mem[i] && pf->hash[i] == r->cons.asm_refs[i].hash))
			continue;
		if (!pf->mem[i] && !(pf->mem[i] = vp_pool_get_chunk(r->pool, 0, &err)))
			break;	/* the cache is full: the rest moves at commit */
		pf->hash[i] = 0;
		fetched[nreq++] = i;
		bytes += a->chunk_size;
	}
	/* a relay offers what it holds of the preview; children take those too */
	rc = fetch_chunks(r, a, pf->mem, fetched, nreq, &bad);
	if (rc) {
		prefetch_drop(r, pf);	/* nothing half-checked is kept */
		vp_log(LOG_DEBUG, "repl", "preview of '%s' version %" PRIu64 " dropped: %s",
		       a->path, a->version, strerror(-rc));
		goto out;
	}
	for (size_t k = 0; k < nreq; k++)
		pf->hash[fetched[k]] = r->cons.asm_refs[fetched[k]].hash;
	r->cons.bytes_streamed += bytes;
	vp_metrics_add(VP_C_BYTES_REPL_IN, bytes);
	vp_log(LOG_DEBUG, "repl", "preview of '%s' version %" PRIu64 ": %" PRIu64 " bytes fetched early",
	       a->path, a->version, bytes);
out:
	free(fetched);
	say_done(r, a->seq, a->version, rc);
}

/*
 * GPU-direct on the consumer: registers the stage's device memory, so
 * that the producer's chunks land there (and are copied on to the host
 * cache as each arrives).  If the fabric refuses it, the host-staged path
 * takes over for good, and the log says so.
 */
static void stage_register(struct vp_repl *r)
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
	log_gpu_path(r, "producer", 0);
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
static void stage_unregister(struct vp_repl *r, int rc)
{
	struct vp_fab_mr **dead;

	if (!r->cons.gst_mr)
		return;
	if (rc == -EBADMSG) {
		__atomic_store_n(&r->direct, 0, __ATOMIC_RELAXED);
		vp_log(LOG_ERR, "repl", "a chunk read GPU-direct does not match its hash once copied to the host; GPU-direct is off on this node from now on");
		log_gpu_path(r, "producer", 0);
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


static void consumer_announce(struct vp_repl *r, struct vp_msg *m)
{
	typeof(m->u.announce) *a = &m->u.announce;
	void **mem = NULL;
	struct vp_data *d = NULL, *old = NULL;
	struct prefetch *pf = NULL;
	uint64_t have, sum, old_size, reused = 0, streamed = 0;
	uint32_t *fetched = NULL, bad = 0;
	size_t nreq = 0;
	double t0, t_in;
	int rc = 0, pinned = 0;

	if (a->first == 0) {
		uint64_t max = vp_config_max_file_size(&r->cfg), ours = vp_pool_chunk_size(r->pool);
		int refuse = 0;

		/*
		 * Sizes are checked before anything is allocated for them: our
		 * chunk is the unit of every read, and a file has a quota.
		 */
		if (a->chunk_size != ours) {
			vp_log_limited(&rl_announce, LOG_ERR, "repl", "'%s' version %" PRIu64 " refused: its chunk size is not ours (%" PRIu32 " bytes; ours is %" PRIu64 ")",
				       a->path, a->version, a->chunk_size, ours);
			refuse = -EPROTO;
		} else if (a->size > max) {
			vp_log_limited(&rl_announce, LOG_ERR, "repl", "'%s' version %" PRIu64 " refused: larger than max_file_size (%" PRIu64 " bytes; the limit is %" PRIu64 ")",
				       a->path, a->version, a->size, max);
			refuse = -EFBIG;
		}
		if (refuse) {
			__atomic_add_fetch(&r->refused, 1, __ATOMIC_RELAXED);
			say_done(r, a->seq, a->version, refuse);
			free(m);
			return;
		}
		seen_add(r, a->path);
		free(r->cons.asm_msg);
		free(r->cons.asm_refs);
		r->cons.asm_msg = m;
		r->cons.asm_refs = calloc(a->nchunks ? a->nchunks : 1, sizeof(*r->cons.asm_refs));
		r->cons.asm_got = 0;
		if (!r->cons.asm_refs)
			goto drop;
	} else if (!r->cons.asm_msg || strcmp(r->cons.asm_msg->u.announce.path, a->path) ||
		   r->cons.asm_msg->u.announce.seq != a->seq || a->first != r->cons.asm_got ||
		   r->cons.asm_msg->u.announce.nchunks != a->nchunks ||
		   r->cons.asm_msg->u.announce.size != a->size ||
		   r->cons.asm_msg->u.announce.chunk_size != a->chunk_size ||
		   r->cons.asm_msg->u.announce.version != a->version) {
		free(m);
		return;		/* a piece of an announce we dropped (or not of this one) */
	}
	memcpy(r->cons.asm_refs + a->first, a->chunk, a->count * sizeof(*a->chunk));
	a->mode &= 01777;	/* no setuid or setgid file from the network (we install as root) */
	r->cons.asm_got += a->count;
	if (m != r->cons.asm_msg)
		free(m);
	m = r->cons.asm_msg;
	a = &m->u.announce;
	if (r->cons.asm_got < a->nchunks)
		return;		/* more pieces to come */
	r->cons.asm_msg = NULL;
	r->cons.from_producer = r->cons.from_relay = 0;

	/* never go backwards; skip what we have */
	have = vp_ns_path_version(r->ns, a->path);
	if ((have != UINT64_MAX && have >= a->version) ||
	    newer_queued(r, a->path, a->version)) {
		if (!(a->flags & VP_ANNOUNCE_PREVIEW))
			r->cons.skipped++;
		vp_log(LOG_DEBUG, "repl", "'%s' version %" PRIu64 " skipped: a newer one is here or coming",
		       a->path, a->version);
		say_done(r, a->seq, a->version, 0);
		goto out_free;
	}
	t0 = vp_now();
	{
		uint64_t *hashes = malloc((a->nchunks ? a->nchunks : 1) * sizeof(*hashes));

		for (uint32_t i = 0; hashes && i < a->nchunks; i++)
			hashes[i] = r->cons.asm_refs[i].hash;
		sum = hashes ? list_checksum(hashes, a->nchunks, a->size) : 0;
		free(hashes);
		if (sum != a->checksum) {
			r->cons.checksum_errors++;
			vp_log(LOG_ERR, "repl", "'%s' version %" PRIu64 ": the chunk list does not match its checksum; not installed",
			       a->path, a->version);
			rc = -EBADMSG;
			goto fail;
		}
	}
	if (a->flags & VP_ANNOUNCE_PREVIEW) {
		consumer_preview(r, m);
		goto out_free;
	}
	vp_log(LOG_INFO, "repl", "fetching '%s' version %" PRIu64 " (%" PRIu64 " bytes)",
	       a->path, a->version, a->size);
	pf = prefetch_find(r, a->path);
	mem = calloc(a->nchunks ? a->nchunks : 1, sizeof(*mem));
	fetched = calloc(a->nchunks ? a->nchunks : 1, sizeof(*fetched));
	if (!mem || !fetched) {
		rc = -ENOMEM;
		goto fail;
	}
	/*
	 * With the GPU tier on, each chunk also goes to the device as soon as
	 * it is here and checked, while the next ones are still on the wire.
	 * (Not with holes: device memory is not zeroed.)
	 */
	if (vp_ns_gpu(r->ns)) {
		int holes = 0;

		for (uint32_t i = 0; i < a->nchunks && !holes; i++)
			holes = !r->cons.asm_refs[i].key;
		if (!holes)
			r->cons.gst = vp_gpu_stage_begin(vp_ns_gpu(r->ns), a->size);
		if (r->cons.gst && r->direct)
			stage_register(r);
	}
	/* chunks the version we hold already has (same hash): copied here, not fetched */
	old = vp_ns_path_data(r->ns, a->path);
	old_size = old ? vp_data_size(old) : 0;
	for (uint32_t i = 0; i < a->nchunks; i++) {
		uint64_t start = (uint64_t)i * a->chunk_size, len = chunk_len(a, i);
		const void *have_mem;
		int err;

		if (!r->cons.asm_refs[i].key)
			continue;	/* a hole */
		if (pf && i < pf->n && pf->mem[i] && len == a->chunk_size &&
		    pf->hash[i] == r->cons.asm_refs[i].hash) {
			mem[i] = pf->mem[i];	/* fetched while the file was written */
			pf->mem[i] = NULL;
			expose_reseq(r, mem[i], a->seq);	/* offered as a preview: this announce's now */
			streamed += len;
			vp_gpu_stage_copy(r->cons.gst, start, mem[i], (size_t)len);
			continue;
		}
		mem[i] = vp_pool_get_chunk(r->pool, r->cfg.cache_wait, &err);
		if (!mem[i]) {
			rc = err;
			goto fail;
		}
		have_mem = old && old_size >= start + len ? vp_data_chunk_mem(old, i) : NULL;
		if (have_mem && XXH3_64bits(have_mem, (size_t)len) == r->cons.asm_refs[i].hash) {
			memcpy(mem[i], have_mem, (size_t)len);
			reused += len;
			vp_gpu_stage_copy(r->cons.gst, start, mem[i], (size_t)len);
			continue;
		}
		fetched[nreq++] = i;
	}
	vp_data_put(old);
	old = NULL;
	rc = fetch_chunks(r, a, mem, fetched, nreq, &bad);
	stage_unregister(r, rc);
	if (rc == -EIO || rc == -ETIMEDOUT)
		r->cons.refetch_after = vp_now();	/* if the producer still speaks, subscribe again */
	if (rc == -EBADMSG) {
		r->cons.checksum_errors++;
		vp_log(LOG_ERR, "repl", "'%s' version %" PRIu64 ": chunk %u does not match its hash; not installed",
		       a->path, a->version, bad);
	}
	if (rc)
		goto fail;
	if (a->nchunks && a->size % a->chunk_size && mem[a->nchunks - 1]) {
		/* pool chunks are reused: nothing of an older file past the end */
		size_t tail = (size_t)(a->size % a->chunk_size);

		memset((char *)mem[a->nchunks - 1] + tail, 0, a->chunk_size - tail);
	}
	d = vp_data_adopt(r->pool, mem, a->nchunks, a->size);
	free(mem);	/* the chunks are adopted, also on failure; the array is ours */
	mem = NULL;
	if (!d) {
		rc = -ENOMEM;
		goto fail;
	}
	vp_gpu_stage_bind(r->cons.gst, d);	/* the mirror of d, at its commit, takes it */
	r->cons.gst = NULL;
	r->cons.last_transfer_s = vp_now() - t0;
	r->cons.bytes_in += a->size - reused - streamed;
	r->cons.bytes_reused += reused;
	r->cons.bytes_streamed_used += streamed;
	vp_metrics_add(VP_C_BYTES_REPL_IN, a->size - reused - streamed);
	t_in = vp_now();
	rc = install(r, a->path, d, a->version, a->mode, a->seq);
	if (rc) {
		vp_log(LOG_ERR, "repl", "installing '%s' version %" PRIu64 ": %s", a->path,
		       a->version, strerror(-rc));
		goto fail;
	}
	r->cons.installed++;
	if ((a->flags & VP_ANNOUNCE_RELAY) && r->relay.nchildren)
		pinned = rpin_add(r, a->seq, d);	/* our children may still read it */
	vp_metrics_notify_latency(vp_now() - t_in);
	vp_metrics_add(VP_C_VERSIONS, 1);
	vp_log(LOG_INFO, "repl", "'%s' version %" PRIu64 " installed (%" PRIu64 " bytes in %.3f s after its announce; %" PRIu64 " fetched while it was written, %" PRIu64 " unchanged, %" PRIu64 " from the relay)",
	       a->path, a->version, a->size, r->cons.last_transfer_s, streamed, reused, r->cons.from_relay);
	say_done(r, a->seq, a->version, 0);
	goto out_free;
fail:
	if (rc != -EBADMSG)	/* said above */
		vp_log(LOG_WARNING, "repl", "'%s' version %" PRIu64 " not fetched: %s; keeping the version we have",
		       a->path, a->version, strerror(-rc));
	say_done(r, a->seq, a->version, rc);
out_free:
	vp_gpu_stage_abort(r->cons.gst);
	r->cons.gst = NULL;
	relay_end(r, a);
	if (!pinned && !(a->flags & VP_ANNOUNCE_PREVIEW))
		unexpose_seq(r, a->seq);	/* before its chunks go (a preview's stay with it) */
	if (mem)
		for (uint32_t i = 0; i < a->nchunks; i++)
			if (mem[i])
				vp_pool_put_chunk(r->pool, mem[i]);
	free(mem);
	free(fetched);
	vp_data_put(old);
	vp_data_put(d);
	if (!(a->flags & VP_ANNOUNCE_PREVIEW) && (pf = prefetch_find(r, a->path)) &&
	    pf->version <= a->version)
		prefetch_drop(r, pf);	/* the version is in (or failed): its previews are done */
drop:
	free(r->cons.asm_refs);
	r->cons.asm_refs = NULL;
	free(m);
}

static void consumer_op(struct vp_repl *r, const struct vp_msg *m)
{
	const char *p = m->u.op.path, *p2 = m->u.op.path2;
	mode_t mode = (mode_t)(m->u.op.mode & 01777);	/* no setuid/setgid from the network */
	int rc = mount_open(r);

	if (rc) {
		vp_log(LOG_WARNING, "repl", "the mount '%s' is gone: %s", r->cons.mnt, strerror(-rc));
		return;
	}
	vp_log(LOG_DEBUG, "repl", "replaying op %u on '%s'", m->u.op.kind, p);
	if (m->u.op.kind == VP_OP_MKDIR || m->u.op.kind == VP_OP_SYMLINK ||
	    m->u.op.kind == VP_OP_KEEP)
		seen_add(r, p);
	switch (m->u.op.kind) {
	/* every path is contained beneath the mount: no symlink on the way is followed */
	case VP_OP_MKDIR:
		make_parents(r, p);
		rc = vp_safepath_mkdir(r->cons.mnt_fd, p, mode);
		if (rc == -EEXIST)
			rc = 0;
		break;
	case VP_OP_SYMLINK:	/* the target is data: stored as sent, never followed here */
		make_parents(r, p);
		vp_safepath_unlink(r->cons.mnt_fd, p, 0);
		rc = vp_safepath_symlink(r->cons.mnt_fd, p2, p);
		break;
	case VP_OP_RENAME:
		make_parents(r, p2);
		rc = vp_safepath_rename(r->cons.mnt_fd, p, p2);
		if (rc == -ENOENT)
			rc = 0;
		break;
	case VP_OP_UNLINK:
		rc = vp_safepath_unlink(r->cons.mnt_fd, p, 0);
		vp_log(LOG_DEBUG, "repl", "unlink '%s': %s", p, rc ? strerror(-rc) : "done");
		if (rc == -ENOENT)
			rc = 0;
		break;
	case VP_OP_RMDIR:
		rc = vp_safepath_unlink(r->cons.mnt_fd, p, AT_REMOVEDIR);
		if (rc == -ENOENT)
			rc = 0;
		break;
	case VP_OP_KEEP:
		break;
	}
	mount_close(r);
	if (rc)
		vp_log(LOG_WARNING, "repl", "replaying an operation on '%s': %s", p, strerror(-rc));
}

/*
 * The session with the producer is over (silence, a lost message, a
 * failed transfer): the last complete versions stay, and the next HELLO
 * starts a new session, whose catch-up brings what we missed.
 */
/* Forgets the reasons to subscribe again (a failed transfer, a lost message). */
static void resync_clear(struct vp_repl *r)
{
	r->cons.refetch_after = 0;
	pthread_mutex_lock(&r->lock);
	r->cons.resync = 0;
	pthread_mutex_unlock(&r->lock);
}

static void consumer_lost(struct vp_repl *r, const char *why)
{
	vp_log(LOG_WARNING, "repl", "%s; keeping the last complete versions and subscribing again", why);
	r->cons.state = CONS_IDLE;
	r->cons.syncing = 0;		/* a catch-up cut short removes nothing */
	seen_clear(r);
	vp_sess_clear(&r->cons.sess);
	resync_clear(r);
}

/*
 * consumer_lost() for a reason of our own (a lost message, a failed
 * transfer), not a silent producer: each costs the producer a catch-up,
 * so such resubscribes back off (5 s, doubling to 5 min; back to 5 s after
 * 10 quiet minutes).  Too soon, the session goes on.
 */
static void consumer_resubscribe(struct vp_repl *r, const char *why)
{
	static struct vp_ratelimit rl = VP_RATELIMIT_INIT(5, 60.0);
	double now = vp_now();

	if (!r->cons.resub_backoff || now - r->cons.resub_at > 600)
		r->cons.resub_backoff = 5;
	if (r->cons.resub_at && now - r->cons.resub_at < r->cons.resub_backoff) {
		vp_log_limited(&rl, LOG_WARNING, "repl", "%s; not subscribing again before %.0f s have passed since the last time",
			       why, r->cons.resub_backoff);
		resync_clear(r);
		return;
	}
	if (r->cons.resub_at)
		r->cons.resub_backoff = r->cons.resub_backoff * 2 > 300 ? 300 : r->cons.resub_backoff * 2;
	r->cons.resub_at = now;
	consumer_lost(r, why);
}

static void consumer_handle(struct vp_repl *r, struct qmsg *q)
{
	struct vp_msg *m = malloc(sizeof(*m));

	if (!m)
		return;
	if (q->src == r->cons.producer) {
		uint64_t last = r->cons.sess.rx.seq;

		/* with a secret, sealed from WELCOME on; a REFUSED may answer our AUTH plain */
		if (open_msg(r, &r->cons.sess, q, m, "the producer", r->cons.state == CONS_CHALLENGED ? VP_MSG_REFUSED : 0))
			goto out;
		if (m->peer_id != 0 || m->type == VP_MSG_RELAY_DONE) {
			refused(r, "the producer", q->len, "its header names a consumer");
			goto out;
		}
		r->cons.last_heard = vp_now();
		if (r->cons.sess.on && r->cons.sess.rx.seq != last + 1 && r->cons.state == CONS_SUBSCRIBED) {
			/* the transport is ordered: a gap is a message we dropped */
			consumer_resubscribe(r, "messages from the producer were lost");
			if (r->cons.state != CONS_SUBSCRIBED)
				goto out;
		}
		if (r->cons.refetch_after && r->cons.last_heard > r->cons.refetch_after && r->cons.state == CONS_SUBSCRIBED) {
			/* the producer is alive, yet a transfer from it failed */
			consumer_resubscribe(r, "a transfer from the producer failed");
			if (r->cons.state != CONS_SUBSCRIBED)
				goto out;
		}
	} else {
		/* only relay children speak to a consumer, each on its edge's session */
		struct relay_child *c = NULL;

		for (unsigned int i = 0; i < r->relay.nchildren && !c; i++)
			if (r->relay.children[i].addr == q->src)
				c = &r->relay.children[i];
		if (!c) {
			refused(r, "an address that is not our producer or a relay child", q->len,
				"a consumer takes messages from its producer and relay peers only");
			goto out;
		}
		if (open_msg(r, &c->sess, q, m, "a relay child", 0))
			goto out;
		if (m->type != VP_MSG_RELAY_DONE || m->peer_id != c->id) {
			refused(r, "a relay child", q->len, "a child only says RELAY_DONE, as itself");
			goto out;
		}
	}
	switch (m->type) {
	case VP_MSG_CHALLENGE: {
		struct vp_msg reply = { .type = VP_MSG_AUTH };

		if (r->cons.state != CONS_HELLO_SENT)
			break;
		if (!mac_ok(r, "VPR1-P", r->cons.nonce_c, m->u.challenge.nonce,
			    m->u.challenge.assigned_id, m->u.challenge.mac)) {
			struct vp_msg no = { .type = VP_MSG_REFUSED };

			vp_log(LOG_ERR, "repl", "the producer failed authentication (wrong or missing secret_file); not subscribing");
			r->cons.my_id = m->u.challenge.assigned_id;
			snprintf(no.u.refused.reason, sizeof(no.u.refused.reason),
				 "the producer failed authentication: the secrets differ");
			consumer_send(r, &no);
			r->cons.my_id = 0;
			r->cons.state = CONS_IDLE;
			break;
		}
		r->cons.my_id = m->u.challenge.assigned_id;
		mac_of(r, "VPR1-C", m->u.challenge.nonce, r->cons.nonce_c, r->cons.my_id, reply.u.auth.mac);
		r->cons.state = CONS_CHALLENGED;
		consumer_send(r, &reply);	/* plain: the last message before the session */
		if (session_derive(r, &r->cons.sess, r->cons.nonce_c, m->u.challenge.nonce, r->cons.my_id, 0)) {
			vp_log(LOG_ERR, "repl", "cannot derive the session keys; not subscribing");
			r->cons.state = CONS_IDLE;
		}
		break;
	}
	case VP_MSG_WELCOME:
		if (r->cons.state == CONS_CHALLENGED) {
			r->cons.state = CONS_SUBSCRIBED;
			seen_clear(r);
			r->cons.syncing = 1;
			relay_reset(r);	/* the producer sends our place in the tree */
			log_gpu_path(r, "producer", 0);
			vp_log(LOG_NOTICE, "repl", "subscribed to the producer at '%s' over '%s'",
			       r->cfg.subscribe, vp_fab_provider(r->fab));
		}
		break;
	case VP_MSG_REFUSED:
		vp_log(LOG_ERR, "repl", "the producer refused us: %s", m->u.refused.reason);
		r->cons.state = CONS_IDLE;
		vp_sess_clear(&r->cons.sess);
		break;
	case VP_MSG_ANNOUNCE:
		if (r->cons.state == CONS_SUBSCRIBED) {
			consumer_announce(r, m);
			return;		/* took m */
		}
		break;
	case VP_MSG_OP:
		if (r->cons.state == CONS_SUBSCRIBED)
			consumer_op(r, m);
		break;
	case VP_MSG_SYNC_END:
		if (r->cons.state != CONS_SUBSCRIBED)
			break;
		if (r->cons.syncing)
			remove_stale(r);
		vp_log(LOG_INFO, "repl", "caught up with the producer");
		break;
	case VP_MSG_TOPO:
		if (r->cons.state == CONS_SUBSCRIBED)
			relay_topo(r, m);
		break;
	case VP_MSG_RELAY_DONE:
		rpin_done(r, m->peer_id, m->u.relay_done.seq);
		break;
	default:
		break;
	}
out:
	free(m);
}

/* Consumer: publishes the repl thread's counters for status and metrics. */
static void publish_stats(struct vp_repl *r)
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

static void consumer_tick(struct vp_repl *r)
{
	double now = vp_now();

	rpin_sweep(r, 0);
	if (!r->relay.parent_id && r->relay.rin_head)
		rin_clear(r);	/* offers from a relay we no longer have */

	if (r->cons.state == CONS_SUBSCRIBED && now - r->cons.last_heard > r->cfg.peer_timeout) {
		char why[384];

		snprintf(why, sizeof(why), "the producer at '%s' is silent for %.0f s",
			 r->cfg.subscribe, now - r->cons.last_heard);
		consumer_lost(r, why);
	} else if (r->cons.state == CONS_SUBSCRIBED) {
		int lost;

		pthread_mutex_lock(&r->lock);
		lost = r->cons.resync;
		pthread_mutex_unlock(&r->lock);
		if (lost)
			consumer_resubscribe(r, "a message from the producer was dropped (our inbox was full)");
	}
	if (r->cons.state < CONS_SUBSCRIBED && now - r->cons.last_hello >= 1.0) {
		struct vp_msg m = { .type = VP_MSG_HELLO };
		int n = vp_fab_name(r->fab, m.u.hello.name, sizeof(m.u.hello.name));

		r->cons.last_hello = now;
		if (n > 0) {
			RAND_bytes(r->cons.nonce_c, VP_PROTO_NONCE);
			memcpy(m.u.hello.nonce, r->cons.nonce_c, VP_PROTO_NONCE);
			m.u.hello.name_len = (uint16_t)n;
			r->cons.state = CONS_HELLO_SENT;
			r->cons.my_id = 0;
			vp_sess_clear(&r->cons.sess);	/* a new handshake, a new session */
			consumer_send(r, &m);
		}
	}
	consumer_beat(r);
}

/* ---- the thread ------------------------------------------------------- */

static void *repl_main(void *arg)
{
	struct vp_repl *r = arg;
	double last_beat = 0;

	if (r->consumer) {
		struct stat st;

		vp_ns_set_installer(r->ns, gettid());
		if (stat(r->cons.mnt, &st) == 0)
			r->cons.mnt_dev = st.st_dev;	/* served by our loop, now running */
		else
			vp_log(LOG_ERR, "repl", "cannot stat the mount '%s': %s", r->cons.mnt, strerror(errno));
	}
	pthread_mutex_lock(&r->lock);
	while (!r->stop) {
		struct qmsg *q = r->in_head;
		struct timespec ts;

		if (q) {
			r->in_head = q->next;
			if (!r->in_head)
				r->in_tail = NULL;
			r->in_bytes -= q->len;
			if (q->pending)
				r->pending_bytes -= q->len;
			pthread_mutex_unlock(&r->lock);
			if (r->consumer) {
				consumer_handle(r, q);
				publish_stats(r);
			} else {
				producer_handle(r, q);
			}
			free(q);
			pthread_mutex_lock(&r->lock);
			continue;
		}
		pthread_mutex_unlock(&r->lock);
		if (r->consumer) {
			consumer_tick(r);
			publish_stats(r);
		} else {
			producer_tick(r, &last_beat);
		}
		pthread_mutex_lock(&r->lock);
		if (r->in_head || r->prod.ev_head || r->stop)
			continue;
		vp_abstime(&ts, vp_now() + 0.1);
		pthread_cond_timedwait(&r->cond, &r->lock, &ts);
	}
	pthread_mutex_unlock(&r->lock);
	return NULL;
}

/*
 * The local address this node uses to reach host:port (a UDP "connect"
 * sends nothing): a consumer's endpoint binds there, so the name it gives
 * the producer is reachable from the producer's network, not loopback.
 */
static int local_ip_towards(const char *host, const char *port, char *out,
			    size_t len)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_DGRAM };
	struct addrinfo *res = NULL;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	int fd, rc = -EHOSTUNREACH;

	if (getaddrinfo(host, port, &hints, &res) || !res)
		return -EHOSTUNREACH;
	fd = socket(res->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) == 0 &&
	    getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
		const void *a = ss.ss_family == AF_INET ?
			(const void *)&((struct sockaddr_in *)&ss)->sin_addr :
			(const void *)&((struct sockaddr_in6 *)&ss)->sin6_addr;

		if (inet_ntop(ss.ss_family, a, out, (socklen_t)len))
			rc = 0;
	}
	if (fd >= 0)
		close(fd);
	freeaddrinfo(res);
	return rc;
}

struct vp_repl *vp_repl_new(struct vp_ns *ns, const struct vp_config *cfg,
			    const char *mountpoint, char *err, size_t errlen)
{
	struct vp_repl *r = calloc(1, sizeof(*r));
	unsigned int fab_flags = VP_FAB_LISTEN;
	char host[256], *colon;

	if (!r) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	r->ns = ns;
	r->cfg = *cfg;
	r->consumer = cfg->subscribe[0] != 0;
	r->cons.mnt_fd = -1;
	r->pool = vp_ns_pool(ns);
	snprintf(r->cons.mnt, sizeof(r->cons.mnt), "%s", mountpoint);
	pthread_mutex_init(&r->lock, NULL);
	pthread_mutex_init(&r->slab_lock, NULL);
	vp_cond_init_monotonic(&r->cond);
	if (load_secret(r, err, errlen))
		goto err_free;
	r->cuda_dev = vp_gpu_cuda_device(vp_ns_gpu(ns));
	if (r->cuda_dev >= 0 && strcmp(cfg->gpu_direct, "off"))
		fab_flags |= VP_FAB_HMEM;
	snprintf(host, sizeof(host), "%s", r->consumer ? cfg->subscribe : cfg->listen);
	colon = strrchr(host, ':');
	if (!colon || !colon[1]) {
		snprintf(err, errlen, "'%s' is not HOST:PORT", host);
		goto err_free;
	}
	*colon = '\0';
	if (!r->consumer && (!*host || !strcmp(host, "0.0.0.0") || !strcmp(host, "::") ||
			     !strcmp(host, "[::]"))) {
		/*
		 * RxM names a peer by the address it listens on: consumers
		 * could not match a wildcard, and their connections hang.
		 */
		snprintf(err, errlen, "listen='%s': give this node's own address on the fabric network, not a wildcard",
			 cfg->listen);
		goto err_free;
	}
	if (!r->secret_len) {
		/*
		 * Not even on loopback: a peer's address is its IP and a port
		 * it names itself, so any local user could subscribe (and read
		 * every cached file) or pose as the producer.
		 */
		if (!cfg->insecure) {
			snprintf(err, errlen, "%s='%s' without a secret_file: anyone who reaches the port (any local user, too) could read the cache and write into the consumers' mounts; set the same secret_file on every node (e.g. openssl rand -hex 32 > /etc/viperfs.secret), or insecure=1 on a network nobody else reaches",
				 r->consumer ? "subscribe" : "listen", r->consumer ? cfg->subscribe : cfg->listen);
			goto err_free;
		}
		vp_log(LOG_WARNING, "repl", "insecure=1: replicating over '%s' without a secret",
		       r->consumer ? cfg->subscribe : cfg->listen);
	}
	if (r->consumer) {
		char local[INET6_ADDRSTRLEN];

		if (local_ip_towards(host, colon + 1, local, sizeof(local))) {
			snprintf(err, errlen, "no route to the producer '%s'", cfg->subscribe);
			goto err_free;
		}
		/* bind where the producer can answer; any port */
		r->fab = vp_fab_open(cfg->fabric_provider, local, "0", fab_flags, on_recv, r,
				     err, errlen);
	} else {
		r->fab = vp_fab_open(cfg->fabric_provider, *host ? host : NULL,
				     colon + 1, fab_flags, on_recv, r, err, errlen);
	}
	if (!r->fab)
		goto err_free;
	/* host memory (gpu_tier=ram) registers anywhere; CUDA memory needs FI_HMEM */
	r->direct = vp_ns_gpu(ns) && strcmp(cfg->gpu_direct, "off") &&
		(r->cuda_dev < 0 || vp_fab_has_hmem(r->fab) == 2);
	if (r->consumer && vp_fab_insert_host(r->fab, host, colon + 1, &r->cons.producer)) {
		snprintf(err, errlen, "cannot resolve the producer '%s' with provider '%s'",
			 cfg->subscribe, vp_fab_provider(r->fab));
		goto err_close;
	}
	vp_pool_set_slab_cb(r->pool, on_slab, r);
	if (pthread_create(&r->thread, NULL, repl_main, r)) {
		snprintf(err, errlen, "cannot start the replication thread");
		goto err_close;
	}
	r->thread_started = 1;
	vp_log(LOG_NOTICE, "repl", "%s %s with libfabric provider '%s'",
	       r->consumer ? "consumer of" : "producer listening on",
	       r->consumer ? cfg->subscribe : cfg->listen, vp_fab_provider(r->fab));
	return r;

err_close:
	vp_pool_set_slab_cb(r->pool, NULL, NULL);
	vp_fab_close(r->fab);
err_free:
	free(r);
	return NULL;
}

void vp_repl_free(struct vp_repl *r)
{
	if (!r)
		return;
	pthread_mutex_lock(&r->lock);
	r->stop = 1;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	if (r->thread_started)
		pthread_join(r->thread, NULL);
	vp_pool_set_slab_cb(r->pool, NULL, NULL);
	pthread_mutex_lock(&r->lock);
	while (r->prod.peers)
		peer_drop_locked(r, r->prod.peers, "shutting down");
	unpin_locked(r, 1);
	while (r->prod.ev_head) {
		struct event *e = r->prod.ev_head;

		r->prod.ev_head = e->next;
		vp_data_put(e->data);
		free(e->path);
		free(e->path2);
		free(e);
	}
	while (r->in_head) {
		struct qmsg *q = r->in_head;

		r->in_head = q->next;
		free(q);
	}
	r->in_tail = NULL;
	pthread_mutex_unlock(&r->lock);
	unexpose_seq(r, 0);
	free(r->relay.expo);
	for (unsigned int i = 0; i < r->nslabs; i++)
		vp_fab_mr_close(r->slabs[i].mr);
	for (size_t i = 0; i < r->cons.ndead_mrs; i++)
		vp_fab_mr_close(r->cons.dead_mrs[i]);
	free(r->cons.dead_mrs);
	vp_fab_close(r->fab);
	for (size_t i = 0; i < r->cons.nquarantine; i++)
		vp_pool_put_chunk(r->pool, r->cons.quarantine[i]);	/* no read can land any more */
	free(r->cons.quarantine);
	rpin_sweep(r, 1);
	rin_clear(r);
	free(r->relay.offer);
	free(r->cons.asm_msg);
	free(r->cons.asm_refs);
	while (r->cons.prefetch)
		prefetch_drop(r, r->cons.prefetch);
	seen_clear(r);
	free(r->cons.seen);
	vp_sess_clear(&r->cons.sess);
	vp_sess_clear(&r->relay.parent_sess);
	for (unsigned int i = 0; i < r->relay.nchildren; i++)
		vp_sess_clear(&r->relay.children[i].sess);
	OPENSSL_cleanse(r->secret, sizeof(r->secret));
	pthread_cond_destroy(&r->cond);
	pthread_mutex_destroy(&r->lock);
	pthread_mutex_destroy(&r->slab_lock);
	free(r);
}

/* Producer: seconds the oldest version p has not fetched has waited. */
static double peer_lag_s_locked(struct vp_repl *r, struct peer *p, double now)
{
	double oldest = now;

	for (struct pin *pin = r->prod.pins; pin; pin = pin->next)
		if (pin->seq > p->done_seq && pin->since < oldest)
			oldest = pin->since;
	return now - oldest;
}

static const char *consumer_state(struct vp_repl *r)
{
	return r->cons.pub.state == CONS_SUBSCRIBED ? "subscribed" : r->cons.pub.state != CONS_IDLE ? "connecting" : "disconnected";
}

void vp_repl_status_json(struct vp_repl *r, FILE *out)
{
	double now = vp_now();

	if (!r) {
		fputs("null", out);
		return;
	}
	pthread_mutex_lock(&r->lock);
	if (r->consumer) {
		fprintf(out, "{\"role\":\"consumer\",\"provider\":\"%s\",\"producer\":\"%s\",\"state\":\"%s\","
			"\"installed\":%" PRIu64 ",\"skipped\":%" PRIu64 ",\"bytes_in\":%" PRIu64 ",\"bytes_reused\":%" PRIu64 ",\"bytes_streamed\":%" PRIu64 ",\"bytes_streamed_used\":%" PRIu64
			",\"checksum_errors\":%" PRIu64 ",\"last_transfer_s\":%.6f"
			",\"last_heard_s\":%.3f,\"relay\":{\"parent\":%" PRIu64 ",\"children\":[",
			vp_fab_provider(r->fab), r->cfg.subscribe, consumer_state(r),
			r->cons.pub.installed, r->cons.pub.skipped, r->cons.pub.bytes_in, r->cons.pub.bytes_reused,
			r->cons.pub.bytes_streamed, r->cons.pub.bytes_streamed_used, r->cons.pub.checksum_errors,
			r->cons.pub.last_transfer_s, r->cons.pub.last_heard > 0 ? now - r->cons.pub.last_heard : -1.0,
			r->cons.pub.parent_id);
		for (unsigned int i = 0; i < r->cons.pub.nchildren; i++)
			fprintf(out, "%s%" PRIu64, i ? "," : "", r->cons.pub.children[i]);
		fprintf(out, "],\"bytes_from_relay\":%" PRIu64 ",\"bytes_relay_fallback\":%" PRIu64 "}"
			",\"gpu_path\":\"%s\",\"bytes_gpu_direct\":%" PRIu64 ",\"sealed\":%s"
			",\"refused_messages\":%" PRIu64 "}",
			r->cons.pub.bytes_relay_in, r->cons.pub.bytes_relay_fallback, gpu_path(r),
			r->cons.pub.bytes_direct_in, r->secret_len ? "true" : "false",
			__atomic_load_n(&r->refused, __ATOMIC_RELAXED));
	} else {
		int first = 1;

		fprintf(out, "{\"role\":\"producer\",\"provider\":\"%s\",\"listen\":\"%s\",\"seq\":%" PRIu64
			",\"gpu_path\":\"%s\",\"gpu_versions_out\":%" PRIu64 ",\"gpu_bytes_out\":%" PRIu64
			",\"sealed\":%s,\"refused_messages\":%" PRIu64 ",\"peers\":[",
			vp_fab_provider(r->fab), r->cfg.listen, r->prod.seq, gpu_path(r),
			r->prod.gpu_versions_out, r->prod.gpu_bytes_out, r->secret_len ? "true" : "false",
			__atomic_load_n(&r->refused, __ATOMIC_RELAXED));
		for (struct peer *p = r->prod.peers; p; p = p->next) {
			fprintf(out, "%s{\"id\":%" PRIu64 ",\"state\":\"%s\",\"active\":%s,\"done_seq\":%" PRIu64
				",\"lag\":%" PRIu64 ",\"lag_s\":%.6f,\"versions_done\":%" PRIu64
				",\"bytes_out\":%" PRIu64 ",\"bytes_relayed\":%" PRIu64 ",\"relay_parent\":%" PRIu64
				",\"last_heard_s\":%.3f}",
				first ? "" : ",", p->id, p->active ? "active" : "authenticating",
				p->active ? "true" : "false",
				p->done_seq, r->prod.seq - p->done_seq, peer_lag_s_locked(r, p, now),
				p->versions_done, p->bytes_out, p->bytes_relayed, p->relay_parent,
				now - p->last_heard);
			first = 0;
		}
		fputs("]}", out);
	}
	pthread_mutex_unlock(&r->lock);
}

void vp_repl_metrics(struct vp_repl *r, FILE *out)
{
	double now = vp_now();

	if (!r)
		return;
	pthread_mutex_lock(&r->lock);
	fputs("# HELP viperfs_repl_refused_messages_total Replication messages refused: from addresses that are not peers, unsealed, forged, replayed, malformed, or over a limit.\n"
	      "# TYPE viperfs_repl_refused_messages_total counter\n", out);
	fprintf(out, "viperfs_repl_refused_messages_total %" PRIu64 "\n",
		__atomic_load_n(&r->refused, __ATOMIC_RELAXED));
	if (r->consumer) {
		fputs("# HELP viperfs_producer_up 1 while this consumer is subscribed to its producer.\n"
		      "# TYPE viperfs_producer_up gauge\n", out);
		fprintf(out, "viperfs_producer_up %d\n", r->cons.pub.state == CONS_SUBSCRIBED);
		fputs("# HELP viperfs_consumer_fetched_bytes_total Bytes of new versions this consumer read, by source (its relay, or the producer).\n"
		      "# TYPE viperfs_consumer_fetched_bytes_total counter\n", out);
		fprintf(out, "viperfs_consumer_fetched_bytes_total{from=\"relay\"} %" PRIu64 "\n",
			r->cons.pub.bytes_relay_in);
		fprintf(out, "viperfs_consumer_fetched_bytes_total{from=\"producer\"} %" PRIu64 "\n",
			r->cons.pub.bytes_producer_in);
	} else {
		fputs("# HELP viperfs_peers Consumers connected to this producer.\n"
		      "# TYPE viperfs_peers gauge\n", out);
		{
			unsigned int n = 0;

			for (struct peer *p = r->prod.peers; p; p = p->next)
				n += p->active;
			fprintf(out, "viperfs_peers %u\n", n);
		}
		fputs("# HELP viperfs_peer_lag_versions Versions announced that a consumer has not fetched yet.\n"
		      "# TYPE viperfs_peer_lag_versions gauge\n", out);
		for (struct peer *p = r->prod.peers; p; p = p->next)
			fprintf(out, "viperfs_peer_lag_versions{peer=\"%" PRIu64 "\"} %" PRIu64 "\n",
				p->id, r->prod.seq - p->done_seq);
		fputs("# HELP viperfs_peer_lag_seconds Age of the oldest version a consumer has not fetched yet.\n"
		      "# TYPE viperfs_peer_lag_seconds gauge\n", out);
		for (struct peer *p = r->prod.peers; p; p = p->next)
			fprintf(out, "viperfs_peer_lag_seconds{peer=\"%" PRIu64 "\"} %.6f\n",
				p->id, peer_lag_s_locked(r, p, now));
		fputs("# HELP viperfs_peer_sent_bytes_total Bytes each consumer read from this producer's memory (relayed bytes excluded).\n"
		      "# TYPE viperfs_peer_sent_bytes_total counter\n", out);
		for (struct peer *p = r->prod.peers; p; p = p->next)
			fprintf(out, "viperfs_peer_sent_bytes_total{peer=\"%" PRIu64 "\"} %" PRIu64 "\n",
				p->id, p->bytes_out);
	}
	pthread_mutex_unlock(&r->lock);
}
