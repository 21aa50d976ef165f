/*
 * repl/thread.c: the repl object: new (start steps, one unwind) and free, the
 * repl thread's loop, status and metrics.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../clock.h"
#include "../data.h"
#include "../gpu.h"
#include "../json.h"
#include "../lock.h"
#include "../log.h"
#include "../ns.h"
#include "../pool.h"
#include "repl_i.h"

/* The path model bytes take through this node's GPU tier, for the log and status. */
static const char *gpu_path(struct vp_repl *r)
{
	if (!r->gpu)
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
void repl_log_gpu_path(struct vp_repl *r, const char *role, uint64_t id)
{
	if (!r->gpu)
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

/* Takes the next received message off the inbox; NULL: none. */
static struct qmsg *inbox_pop_locked(struct vp_repl *r)
{
	struct qmsg *q;

	VP_ASSERT_LOCKED(&r->lock);
	q = STAILQ_FIRST(&r->in);
	if (!q)
		return NULL;
	STAILQ_REMOVE_HEAD(&r->in, link);
	r->in_bytes -= q->len;
	if (q->pending)
		r->pending_bytes -= q->len;
	return q;
}

/*
 * The repl thread: every received message in order, and a tick between
 * them (deadlines, the producer's events), until stop.
 */
static void *repl_main(void *arg)
{
	struct vp_repl *r = arg;
	double last_unpin = 0;

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
		struct qmsg *q = inbox_pop_locked(r);
		struct timespec ts;

		pthread_mutex_unlock(&r->lock);
		if (q && r->consumer) {
			repl_consumer_check_alive(r);
			repl_consumer_handle(r, q);
		}
		else if (q)
			repl_producer_handle(r, q);
		else if (r->consumer)
			repl_consumer_tick(r);
		else
			repl_producer_tick(r, &last_unpin);
		if (r->consumer)
			repl_publish_stats(r);
		free(q);
		pthread_mutex_lock(&r->lock);
		if (q || !STAILQ_EMPTY(&r->in) || !STAILQ_EMPTY(&r->prod.events) || r->stop)
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

/* A new repl object, not started; NULL: no memory. */
static struct vp_repl *repl_alloc(struct vp_ns *ns, struct vp_gpu *gpu,
				  const struct vp_config *cfg, const char *mountpoint)
{
	struct vp_repl *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	r->ns = ns;
	r->gpu = gpu;
	r->cfg = *cfg;
	r->consumer = cfg->subscribe[0] != 0;
	r->pool = vp_ns_pool(ns);
	pthread_mutex_init(&r->lock, NULL);
	pthread_mutex_init(&r->slab_lock, NULL);
	pthread_mutex_init(&r->tx_lock, NULL);
	vp_cond_init_monotonic(&r->cond);
	vp_cond_init_monotonic(&r->beat_cond);
	vp_cond_init_monotonic(&r->prod.held_cond);
	STAILQ_INIT(&r->in);
	STAILQ_INIT(&r->prod.events);
	LIST_INIT(&r->prod.peers);
	LIST_INIT(&r->prod.pins);
	LIST_INIT(&r->prod.recoveries);
	r->prod.epoch = vp_ns_epoch(ns);
	LIST_INIT(&r->cons.offers);
	r->cons.mnt_fd = -1;
	snprintf(r->cons.mnt, sizeof(r->cons.mnt), "%s", mountpoint);
	LIST_INIT(&r->cons.prefetch);
	LIST_INIT(&r->cons.lands);
	LIST_INIT(&r->cons.dead_lands);
	LIST_INIT(&r->relay.rpins);
	STAILQ_INIT(&r->relay.rin);
	r->cuda_dev = vp_gpu_cuda_device(gpu);
	return r;
}

/* Frees what repl_alloc() made, and the secret. */
static void repl_release(struct vp_repl *r)
{
	OPENSSL_cleanse(r->secret, sizeof(r->secret));
	pthread_cond_destroy(&r->cond);
	pthread_cond_destroy(&r->beat_cond);
	pthread_cond_destroy(&r->prod.held_cond);
	pthread_mutex_destroy(&r->lock);
	pthread_mutex_destroy(&r->slab_lock);
	pthread_mutex_destroy(&r->tx_lock);
	free(r);
}

/*
 * Splits the address we listen on or subscribe to into host (of hostlen)
 * and *port (inside host), and checks what the role needs: a producer
 * names its own address, and without a secret only insecure=1 goes on.
 * Returns 0 or -EINVAL with a message in err.
 */
static int repl_check_address(struct vp_repl *r, char *host, size_t hostlen, char **port,
			      char *err, size_t errlen)
{
	const char *addr = r->consumer ? r->cfg.subscribe : r->cfg.listen;
	char *colon;

	snprintf(host, hostlen, "%s", addr);
	colon = strrchr(host, ':');
	if (!colon || !colon[1]) {
		snprintf(err, errlen, "'%s' is not HOST:PORT", host);
		return -EINVAL;
	}
	*colon = '\0';
	*port = colon + 1;
	if (!r->consumer && (!*host || !strcmp(host, "0.0.0.0") || !strcmp(host, "::") ||
			     !strcmp(host, "[::]"))) {
		/*
		 * RxM names a peer by the address it listens on: consumers
		 * could not match a wildcard, and their connections hang.
		 */
		snprintf(err, errlen, "listen='%s': give this node's own address on the fabric network, not a wildcard",
			 r->cfg.listen);
		return -EINVAL;
	}
	if (r->secret_len)
		return 0;
	/*
	 * Not even on loopback: a peer's address is its IP and a port it
	 * names itself, so any local user could subscribe (and read every
	 * cached file) or pose as the producer.
	 */
	if (!r->cfg.insecure) {
		snprintf(err, errlen, "%s='%s' without a secret_file: anyone who reaches the port (any local user, too) could read the cache and write into the consumers' mounts; set the same secret_file on every node (e.g. openssl rand -hex 32 > /etc/viperfs.secret), or insecure=1 on a network nobody else reaches",
			 r->consumer ? "subscribe" : "listen", addr);
		return -EINVAL;
	}
	vp_log(LOG_WARNING, "repl", "insecure=1: replicating over '%s' without a secret", addr);
	return 0;
}

/*
 * Opens the fabric endpoint: a producer's on host:port, a consumer's on
 * the local address that reaches its producer at host:port (any port),
 * with its producer's address resolved.  Returns 0 or -errno with a
 * message in err.
 */
static int repl_open_fabric(struct vp_repl *r, const char *host, const char *port,
			    char *err, size_t errlen)
{
	unsigned int fab_flags = VP_FAB_LISTEN;
	char local[INET6_ADDRSTRLEN];

	if (r->cuda_dev >= 0 && strcmp(r->cfg.gpu_direct, "off"))
		fab_flags |= VP_FAB_HMEM;
	if (r->consumer && local_ip_towards(host, port, local, sizeof(local))) {
		snprintf(err, errlen, "no route to the producer '%s'", r->cfg.subscribe);
		return -EHOSTUNREACH;
	}
	/* a consumer binds where the producer can answer */
	r->fab = vp_fab_open(r->cfg.fabric_provider, r->consumer ? local : *host ? host : NULL,
			     r->consumer ? "0" : port, fab_flags, repl_on_recv, r, err, errlen);
	if (!r->fab)
		return -EIO;
	/* host memory (gpu_tier=ram) registers anywhere; CUDA memory needs FI_HMEM */
	r->direct = r->gpu && strcmp(r->cfg.gpu_direct, "off") &&
		(r->cuda_dev < 0 || vp_fab_has_hmem(r->fab) == 2);
	if (r->consumer && vp_fab_insert_host(r->fab, host, port, &r->cons.producer)) {
		snprintf(err, errlen, "cannot resolve the producer '%s' with provider '%s'",
			 r->cfg.subscribe, vp_fab_provider(r->fab));
		vp_fab_close(r->fab);
		r->fab = NULL;
		return -EHOSTUNREACH;
	}
	return 0;
}

struct vp_repl *vp_repl_new(struct vp_ns *ns, struct vp_gpu *gpu, const struct vp_config *cfg,
			    const char *mountpoint, char *err, size_t errlen)
{
	struct vp_repl *r = repl_alloc(ns, gpu, cfg, mountpoint);
	char host[256], *port;

	if (!r) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if (repl_load_secret(r, err, errlen))
		goto err_release;
	if (repl_check_address(r, host, sizeof(host), &port, err, errlen))
		goto err_release;
	if (repl_open_fabric(r, host, port, err, errlen))
		goto err_release;
	vp_pool_set_slab_cb(r->pool, repl_on_slab, r);
	if (pthread_create(&r->thread, NULL, repl_main, r)) {
		snprintf(err, errlen, "cannot start the replication thread");
		goto err_slab_cb;
	}
	r->thread_started = 1;
	if (pthread_create(&r->beat_thread, NULL, repl_beat_main, r)) {
		snprintf(err, errlen, "cannot start the heartbeat thread");
		goto err_thread;
	}
	r->beat_started = 1;
	vp_log(LOG_NOTICE, "repl", "%s %s with libfabric provider '%s'",
	       r->consumer ? "consumer of" : "producer listening on",
	       r->consumer ? cfg->subscribe : cfg->listen, vp_fab_provider(r->fab));
	return r;

err_thread:
	vp_repl_free(r);	/* the repl thread runs: the whole of it */
	return NULL;
err_slab_cb:
	vp_pool_set_slab_cb(r->pool, NULL, r);
	for (unsigned int i = 0; i < r->nslabs; i++)
		vp_fab_mr_close(r->slabs[i].mr);	/* the slabs the callback registered */
	vp_fab_close(r->fab);
err_release:
	repl_release(r);
	return NULL;
}

/* The producer's state: its consumers, their pins, the events not shipped. */
static void producer_release(struct vp_repl *r)
{
	struct event *e;
	struct peer *p;

	pthread_mutex_lock(&r->lock);
	while ((p = LIST_FIRST(&r->prod.peers)))
		repl_peer_drop_locked(r, p, "shutting down");
	repl_unpin_locked(r, 1);
	while ((e = STAILQ_FIRST(&r->prod.events))) {
		STAILQ_REMOVE_HEAD(&r->prod.events, link);
		repl_event_free(e);
	}
	qmsg_list_free(&r->in);
	pthread_mutex_unlock(&r->lock);
}

/*
 * The fabric, and what it may still touch: the endpoint goes first (it
 * ends every posted read), then the registrations, then the rest of the
 * fabric, and the quarantined chunks only after (no read can land then).
 */
static void fabric_release(struct vp_repl *r)
{
	vp_fab_shutdown(r->fab);
	repl_unexpose_seq(r, 0);
	free(r->relay.expo);
	for (unsigned int i = 0; i < r->nslabs; i++)
		vp_fab_mr_close(r->slabs[i].mr);
	for (size_t i = 0; i < r->cons.ndead_mrs; i++)
		vp_fab_mr_close(r->cons.dead_mrs[i]);
	free(r->cons.dead_mrs);
	repl_lands_fabric_gone(r, 0);
	vp_fab_close(r->fab);
	repl_lands_fabric_gone(r, 1);
	for (size_t i = 0; i < r->cons.nquarantine; i++)
		vp_pool_put_chunk(r->pool, r->cons.quarantine[i]);
	free(r->cons.quarantine);
}

/* The consumer's state: its relay tree, announces, previews and sessions. */
static void consumer_release(struct vp_repl *r)
{
	struct prefetch *pf;

	repl_rpin_sweep(r, 1);
	repl_rin_clear(r);
	free(r->relay.offer);
	free(r->cons.asm_msg);
	free(r->cons.asm_refs);
	while ((pf = LIST_FIRST(&r->cons.prefetch)))
		repl_prefetch_drop(r, pf);
	repl_lands_fabric_gone(r, 1);	/* a tainted one among them: the fabric is gone already */
	repl_seen_clear(r);
	free(r->cons.seen);
	vp_sess_clear(&r->cons.sess);
	vp_sess_clear(&r->relay.parent_sess);
	for (unsigned int i = 0; i < r->relay.nchildren; i++)
		vp_sess_clear(&r->relay.children[i].sess);
}

void vp_repl_free(struct vp_repl *r)
{
	if (!r)
		return;
	pthread_mutex_lock(&r->lock);
	r->stop = 1;
	pthread_cond_broadcast(&r->cond);
	pthread_cond_broadcast(&r->beat_cond);
	pthread_mutex_unlock(&r->lock);
	if (r->fab)
		vp_fab_cancel_reads(r->fab);	/* a fetch from a silent peer ends now */
	if (r->beat_started)
		pthread_join(r->beat_thread, NULL);
	if (r->thread_started)
		pthread_join(r->thread, NULL);
	vp_pool_set_slab_cb(r->pool, NULL, r);
	producer_release(r);
	repl_recover_free(r);	/* offers' registrations, before the fabric */
	fabric_release(r);
	consumer_release(r);
	repl_release(r);
}

/* Producer: seconds the oldest version p has not fetched has waited. */
static double peer_lag_s_locked(struct vp_repl *r, struct peer *p, double now)
{
	double oldest = now;
	struct pin *pin;

	VP_ASSERT_LOCKED(&r->lock);
	LIST_FOREACH(pin, &r->prod.pins, link)
		if (pin->seq > p->done_seq && pin->since < oldest)
			oldest = pin->since;
	return now - oldest;
}

static const char *consumer_state(struct vp_repl *r)
{
	/* a consumer not subscribed is always trying to be (HELLO every second, or after a back-off) */
	return r->cons.pub.state == CONS_SUBSCRIBED && !r->cons.silent ? "subscribed" : "connecting";
}

/* The consumer's status.  r->lock held. */
static json_t *consumer_status_locked(struct vp_repl *r, double now)
{
	const typeof(r->cons.pub) *c = &r->cons.pub;
	json_t *children = json_array(), *ahead = json_array();

	VP_ASSERT_LOCKED(&r->lock);
	for (size_t i = 0; ahead && i < r->cons.nahead; i++)
		if (json_array_append_new(ahead, vp_json_name(r->cons.ahead[i]))) {
			json_decref(ahead);
			ahead = NULL;
		}
	for (unsigned int i = 0; children && i < c->nchildren; i++)
		if (json_array_append_new(children, json_integer((json_int_t)c->children[i]))) {
			json_decref(children);
			children = NULL;
		}
	return json_pack("{s:s,s:s,s:o,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:o,s:o,"
			 "s:{s:I,s:o,s:I,s:I},s:s,s:I,s:b,s:I,s:o}",
			 "role", "consumer",
			 "provider", vp_fab_provider(r->fab),
			 "producer", vp_json_name(r->cfg.subscribe),
			 "state", consumer_state(r),
			 "installed", (json_int_t)c->installed,
			 "skipped", (json_int_t)c->skipped,
			 "bytes_in", (json_int_t)c->bytes_in,
			 "bytes_reused", (json_int_t)c->bytes_reused,
			 "bytes_streamed", (json_int_t)c->bytes_streamed,
			 "bytes_streamed_used", (json_int_t)c->bytes_streamed_used,
			 "checksum_errors", (json_int_t)c->checksum_errors,
			 "last_transfer_s", vp_json_real(c->last_transfer_s),
			 "last_heard_s", vp_json_real(c->last_heard > 0 ? now - c->last_heard : -1.0),
			 "relay",
			 "parent", (json_int_t)c->parent_id,
			 "children", children,
			 "bytes_from_relay", (json_int_t)c->bytes_relay_in,
			 "bytes_relay_fallback", (json_int_t)c->bytes_relay_fallback,
			 "gpu_path", gpu_path(r),
			 "bytes_gpu_direct", (json_int_t)c->bytes_direct_in,
			 "sealed", r->secret_len != 0,
			 "refused_messages", (json_int_t)__atomic_load_n(&r->refused, __ATOMIC_RELAXED),
			 "ahead", ahead);
}

/* One peer of the producer's status.  r->lock held. */
static json_t *peer_status_locked(struct vp_repl *r, struct peer *p, double now)
{
	VP_ASSERT_LOCKED(&r->lock);
	return json_pack("{s:I,s:s,s:b,s:I,s:I,s:o,s:I,s:I,s:I,s:I,s:o}",
			 "id", (json_int_t)p->id,
			 "state", p->silent ? "silent" : p->active ? "active" : "authenticating",
			 "active", peer_live(p),
			 "done_seq", (json_int_t)p->done_seq,
			 "lag", (json_int_t)(r->prod.seq - p->done_seq),
			 "lag_s", vp_json_real(peer_lag_s_locked(r, p, now)),
			 "versions_done", (json_int_t)p->versions_done,
			 "bytes_out", (json_int_t)p->bytes_out,
			 "bytes_relayed", (json_int_t)p->bytes_relayed,
			 "relay_parent", (json_int_t)p->relay_parent,
			 "last_heard_s", vp_json_real(now - p->last_heard));
}

/* The producer's status.  r->lock held. */
static json_t *producer_status_locked(struct vp_repl *r, double now)
{
	json_t *peers = json_array();
	char epoch[24];
	struct peer *p;

	VP_ASSERT_LOCKED(&r->lock);
	/* a string: 19 digits do not survive a JSON reader's doubles */
	snprintf(epoch, sizeof(epoch), "%" PRIu64, r->prod.epoch);
	LIST_FOREACH(p, &r->prod.peers, link)
		if (peers && json_array_append_new(peers, peer_status_locked(r, p, now))) {
			json_decref(peers);
			peers = NULL;
		}
	return json_pack("{s:s,s:s,s:o,s:I,s:s,s:I,s:I,s:b,s:I,s:I,s:I,s:s,s:o}",
			 "role", "producer",
			 "provider", vp_fab_provider(r->fab),
			 "listen", vp_json_name(r->cfg.listen),
			 "seq", (json_int_t)r->prod.seq,
			 "gpu_path", gpu_path(r),
			 "gpu_versions_out", (json_int_t)r->prod.gpu_versions_out,
			 "gpu_bytes_out", (json_int_t)r->prod.gpu_bytes_out,
			 "sealed", r->secret_len != 0,
			 "refused_messages", (json_int_t)__atomic_load_n(&r->refused, __ATOMIC_RELAXED),
			 "recovered", (json_int_t)__atomic_load_n(&r->prod.recovered, __ATOMIC_RELAXED),
			 "ahead_seen", (json_int_t)__atomic_load_n(&r->prod.ahead_seen, __ATOMIC_RELAXED),
			 "epoch", epoch,
			 "peers", peers);
}

json_t *vp_repl_status(struct vp_repl *r)
{
	double now = vp_now();
	json_t *st;

	if (!r)
		return json_null();
	pthread_mutex_lock(&r->lock);
	st = r->consumer ? consumer_status_locked(r, now) : producer_status_locked(r, now);
	pthread_mutex_unlock(&r->lock);
	return st;
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
		fprintf(out, "viperfs_producer_up %d\n", r->cons.pub.state == CONS_SUBSCRIBED && !r->cons.silent);
		fputs("# HELP viperfs_consumer_fetched_bytes_total Bytes of new versions this consumer read, by source (its relay, or the producer).\n"
		      "# TYPE viperfs_consumer_fetched_bytes_total counter\n", out);
		fprintf(out, "viperfs_consumer_fetched_bytes_total{from=\"relay\"} %" PRIu64 "\n",
			r->cons.pub.bytes_relay_in);
		fprintf(out, "viperfs_consumer_fetched_bytes_total{from=\"producer\"} %" PRIu64 "\n",
			r->cons.pub.bytes_producer_in);
	} else {
		struct peer *p;

		fputs("# HELP viperfs_peers Consumers connected to this producer.\n"
		      "# TYPE viperfs_peers gauge\n", out);
		{
			unsigned int n = 0;

			LIST_FOREACH(p, &r->prod.peers, link)
				n += peer_live(p);
			fprintf(out, "viperfs_peers %u\n", n);
		}
		fputs("# HELP viperfs_peer_lag_versions Versions announced that a consumer has not fetched yet.\n"
		      "# TYPE viperfs_peer_lag_versions gauge\n", out);
		LIST_FOREACH(p, &r->prod.peers, link)
			fprintf(out, "viperfs_peer_lag_versions{peer=\"%" PRIu64 "\"} %" PRIu64 "\n",
				p->id, r->prod.seq - p->done_seq);
		fputs("# HELP viperfs_peer_lag_seconds Age of the oldest version a consumer has not fetched yet.\n"
		      "# TYPE viperfs_peer_lag_seconds gauge\n", out);
		LIST_FOREACH(p, &r->prod.peers, link)
			fprintf(out, "viperfs_peer_lag_seconds{peer=\"%" PRIu64 "\"} %.6f\n",
				p->id, peer_lag_s_locked(r, p, now));
		fputs("# HELP viperfs_peer_sent_bytes_total Bytes each consumer read from this producer's memory (relayed bytes excluded).\n"
		      "# TYPE viperfs_peer_sent_bytes_total counter\n", out);
		LIST_FOREACH(p, &r->prod.peers, link)
			fprintf(out, "viperfs_peer_sent_bytes_total{peer=\"%" PRIu64 "\"} %" PRIu64 "\n",
				p->id, p->bytes_out);
	}
	pthread_mutex_unlock(&r->lock);
}
