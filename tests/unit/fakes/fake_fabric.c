/*
 * A fake of engine/fabric.h in memory, for the replication tests.
 *
 * - Endpoints are named by a struct sockaddr_in (127.0.0.1 or the node
 *   given, and the service as the port; "0" takes a free port), so that
 *   what repl.c does with names (same_host) works unchanged.
 * - vp_fab_send() copies the message into the receiving endpoint's inbox;
 *   a progress thread of that endpoint hands it to its receive callback,
 *   with src as the receiver's address vector has the sender
 *   (VP_FAB_ADDR_UNKNOWN if it never inserted it), as FI_SOURCE does.
 *   A send to a name nobody listens on is lost without an error (as a
 *   datagram to a dead peer would be).
 * - vp_fab_read() copies out of the peer's registrations, checking the key,
 *   the bounds and the remote-read permission (-EIO otherwise).
 * - Faults, set by the test through fake_fab (under fake_fab.lock): drop
 *   messages (send says 0, nothing arrives), fail sends (-EIO), fail
 *   reads (-EIO), each for the next N, optionally only for messages from
 *   one port.
 *
 * Included by the unit tests (#include "fakes/fake_fabric.c"): the test's
 * definitions of the vp_fab_* symbols come first, so the linker never
 * pulls engine/fabric.o out of libviper.a.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include "../../../engine/fabric.h"

#define FAKE_FAB_AV_MAX 64

struct fake_msg {
	STAILQ_ENTRY(fake_msg) link;
	struct sockaddr_in from;
	size_t len;
	unsigned char buf[];
};

struct fake_av_entry {
	struct sockaddr_in name;
	unsigned int refs;		/* 0: a free slot */
};

struct vp_fab_mr {
	LIST_ENTRY(vp_fab_mr) link;
	struct vp_fab *fab;
	unsigned char *buf;
	size_t len;
	uint64_t key;
	int remote;			/* VP_FAB_MR_REMOTE_READ was asked for */
};

struct vp_fab {
	LIST_ENTRY(vp_fab) link;	/* in fake_fab.endpoints */
	struct sockaddr_in name;
	vp_fab_recv_cb cb;
	void *cb_arg;
	/* all below: protected by fake_fab.lock */
	struct fake_av_entry av[FAKE_FAB_AV_MAX];
	LIST_HEAD(, vp_fab_mr) mrs;
	STAILQ_HEAD(, fake_msg) inbox;
	pthread_cond_t cond;
	int stop;
	pthread_t thread;
};

/* The whole fake fabric: every endpoint, the faults, the counters. */
static struct {
	pthread_mutex_t lock;
	LIST_HEAD(, vp_fab) endpoints;
	uint16_t next_port;
	uint64_t next_key;
	/* faults: each counts down; *_port 0 means from any endpoint */
	unsigned int drop_sends, fail_sends, fail_reads;
	uint16_t drop_port, fail_port;
	/* counters */
	unsigned long sent, delivered, dropped, reads, bytes_read, failed_reads;
} fake_fab = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.endpoints = LIST_HEAD_INITIALIZER(fake_fab.endpoints),
	.next_port = 40000,
	.next_key = 0x9e3779b97f4a7c15ull,
};

/* Clears the faults and counters; call between tests, with no endpoint open. */
static void fake_fab_reset(void)
{
	pthread_mutex_lock(&fake_fab.lock);
	fake_fab.drop_sends = fake_fab.fail_sends = fake_fab.fail_reads = 0;
	fake_fab.drop_port = fake_fab.fail_port = 0;
	fake_fab.sent = fake_fab.delivered = fake_fab.dropped = 0;
	fake_fab.reads = fake_fab.bytes_read = fake_fab.failed_reads = 0;
	pthread_mutex_unlock(&fake_fab.lock);
}

/* Reads one of fake_fab's counters. */
static unsigned long fake_fab_count(const unsigned long *counter)
{
	unsigned long n;

	pthread_mutex_lock(&fake_fab.lock);
	n = *counter;
	pthread_mutex_unlock(&fake_fab.lock);
	return n;
}

/* The number of endpoints open now (a test checks that all were closed). */
static unsigned int fake_fab_open_endpoints(void)
{
	unsigned int n = 0;
	struct vp_fab *f;

	pthread_mutex_lock(&fake_fab.lock);
	LIST_FOREACH(f, &fake_fab.endpoints, link)
		n++;
	pthread_mutex_unlock(&fake_fab.lock);
	return n;
}

static int fake_name_eq(const struct sockaddr_in *a, const struct sockaddr_in *b)
{
	return a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
}

/* fake_fab.lock held. */
static struct vp_fab *fake_endpoint_named(const struct sockaddr_in *name)
{
	struct vp_fab *f;

	LIST_FOREACH(f, &fake_fab.endpoints, link)
		if (fake_name_eq(&f->name, name))
			return f;
	return NULL;
}

static int fake_name_of(const char *node, const char *service, struct sockaddr_in *out)
{
	memset(out, 0, sizeof(*out));
	out->sin_family = AF_INET;
	if (inet_pton(AF_INET, node && *node ? node : "127.0.0.1", &out->sin_addr) != 1)
		return -EINVAL;
	out->sin_port = htons((uint16_t)atoi(service ? service : "0"));
	return 0;
}

static void *fake_progress(void *arg)
{
	struct vp_fab *fab = arg;

	pthread_mutex_lock(&fake_fab.lock);
	while (!fab->stop) {
		struct fake_msg *m = STAILQ_FIRST(&fab->inbox);
		vp_fab_addr src = VP_FAB_ADDR_UNKNOWN;

		if (!m) {
			pthread_cond_wait(&fab->cond, &fake_fab.lock);
			continue;
		}
		STAILQ_REMOVE_HEAD(&fab->inbox, link);
		for (size_t i = 0; i < FAKE_FAB_AV_MAX; i++)
			if (fab->av[i].refs && fake_name_eq(&fab->av[i].name, &m->from))
				src = i;
		fake_fab.delivered++;
		pthread_mutex_unlock(&fake_fab.lock);
		fab->cb(fab->cb_arg, src, m->buf, m->len);
		free(m);
		pthread_mutex_lock(&fake_fab.lock);
	}
	pthread_mutex_unlock(&fake_fab.lock);
	return NULL;
}

struct vp_fab *vp_fab_open(const char *provider, const char *node,
			   const char *service, unsigned int flags, vp_fab_recv_cb cb,
			   void *cb_arg, char *err, size_t errlen)
{
	struct vp_fab *fab = calloc(1, sizeof(*fab));

	(void)provider;
	if (!fab) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if (fake_name_of(node, (flags & VP_FAB_LISTEN) ? service : "0", &fab->name)) {
		snprintf(err, errlen, "fake fabric: '%s' is not an IPv4 address", node);
		free(fab);
		return NULL;
	}
	fab->cb = cb;
	fab->cb_arg = cb_arg;
	LIST_INIT(&fab->mrs);
	STAILQ_INIT(&fab->inbox);
	pthread_cond_init(&fab->cond, NULL);
	pthread_mutex_lock(&fake_fab.lock);
	if (!fab->name.sin_port)
		fab->name.sin_port = htons(fake_fab.next_port++);
	if (fake_endpoint_named(&fab->name)) {
		pthread_mutex_unlock(&fake_fab.lock);
		snprintf(err, errlen, "fake fabric: address in use");
		pthread_cond_destroy(&fab->cond);
		free(fab);
		return NULL;
	}
	LIST_INSERT_HEAD(&fake_fab.endpoints, fab, link);
	pthread_mutex_unlock(&fake_fab.lock);
	if (pthread_create(&fab->thread, NULL, fake_progress, fab)) {
		snprintf(err, errlen, "fake fabric: cannot start the progress thread");
		pthread_mutex_lock(&fake_fab.lock);
		LIST_REMOVE(fab, link);
		pthread_mutex_unlock(&fake_fab.lock);
		pthread_cond_destroy(&fab->cond);
		free(fab);
		return NULL;
	}
	return fab;
}

/* The fake's reads are synchronous: none is ever left posted. */
void vp_fab_shutdown(struct vp_fab *fab)
{
	(void)fab;
}

void vp_fab_cancel_reads(struct vp_fab *fab)
{
	(void)fab;	/* the fake's reads never wait */
}

unsigned int vp_fab_orphan_reads(struct vp_fab *fab)
{
	(void)fab;
	return 0;
}

void vp_fab_close(struct vp_fab *fab)
{
	struct fake_msg *m;

	if (!fab)
		return;
	pthread_mutex_lock(&fake_fab.lock);
	fab->stop = 1;
	LIST_REMOVE(fab, link);		/* no new message can arrive */
	pthread_cond_signal(&fab->cond);
	pthread_mutex_unlock(&fake_fab.lock);
	pthread_join(fab->thread, NULL);
	while ((m = STAILQ_FIRST(&fab->inbox))) {
		STAILQ_REMOVE_HEAD(&fab->inbox, link);
		free(m);
	}
	if (!LIST_EMPTY(&fab->mrs))
		fprintf(stderr, "fake fabric: an endpoint was closed with memory still registered\n");
	pthread_cond_destroy(&fab->cond);
	free(fab);
}

const char *vp_fab_provider(const struct vp_fab *fab)
{
	(void)fab;
	return "fake";
}

int vp_fab_has_hmem(const struct vp_fab *fab)
{
	(void)fab;
	return 0;
}

int vp_fab_name(struct vp_fab *fab, void *buf, size_t len)
{
	if (len < sizeof(fab->name))
		return -ENOBUFS;
	memcpy(buf, &fab->name, sizeof(fab->name));
	return (int)sizeof(fab->name);
}

/* Same name, same address (with a reference more), as an AV does. */
static int fake_av_insert(struct vp_fab *fab, const struct sockaddr_in *name, vp_fab_addr *out)
{
	int rc = -ENOSPC;
	size_t free_slot = FAKE_FAB_AV_MAX;

	pthread_mutex_lock(&fake_fab.lock);
	for (size_t i = 0; i < FAKE_FAB_AV_MAX; i++) {
		if (fab->av[i].refs && fake_name_eq(&fab->av[i].name, name)) {
			fab->av[i].refs++;
			*out = i;
			rc = 0;
			break;
		}
		if (!fab->av[i].refs && free_slot == FAKE_FAB_AV_MAX)
			free_slot = i;
	}
	if (rc && free_slot < FAKE_FAB_AV_MAX) {
		fab->av[free_slot].name = *name;
		fab->av[free_slot].refs = 1;
		*out = free_slot;
		rc = 0;
	}
	pthread_mutex_unlock(&fake_fab.lock);
	return rc;
}

int vp_fab_insert_name(struct vp_fab *fab, const void *name, size_t len,
		       vp_fab_addr *out)
{
	struct sockaddr_in sin;

	if (len != sizeof(sin))
		return -EINVAL;
	memcpy(&sin, name, sizeof(sin));
	if (sin.sin_family != AF_INET)
		return -EINVAL;
	return fake_av_insert(fab, &sin, out);
}

int vp_fab_insert_host(struct vp_fab *fab, const char *node,
		       const char *service, vp_fab_addr *out)
{
	struct sockaddr_in sin;
	int rc = fake_name_of(node, service, &sin);

	return rc ? rc : fake_av_insert(fab, &sin, out);
}

void vp_fab_remove(struct vp_fab *fab, vp_fab_addr addr)
{
	pthread_mutex_lock(&fake_fab.lock);
	if (addr < FAKE_FAB_AV_MAX && fab->av[addr].refs)
		fab->av[addr].refs--;
	pthread_mutex_unlock(&fake_fab.lock);
}

/* Takes one from *count if the fault applies to a message from port. */
static int fake_fault(unsigned int *count, uint16_t only_port, uint16_t port)
{
	if (!*count || (only_port && only_port != port))
		return 0;
	(*count)--;
	return 1;
}

/* Delivers m (or drops or fails it, as the faults say); takes m.  Returns 0 or -errno. */
static int fake_post(struct vp_fab *fab, vp_fab_addr dest, struct fake_msg *m)
{
	uint16_t port = ntohs(fab->name.sin_port);
	struct vp_fab *to;
	int rc = 0;

	m->from = fab->name;
	pthread_mutex_lock(&fake_fab.lock);
	if (dest >= FAKE_FAB_AV_MAX || !fab->av[dest].refs) {
		rc = -EINVAL;
	} else if (fake_fault(&fake_fab.fail_sends, fake_fab.fail_port, port)) {
		rc = -EIO;
	} else if (fake_fault(&fake_fab.drop_sends, fake_fab.drop_port, port)) {
		fake_fab.dropped++;
	} else if ((to = fake_endpoint_named(&fab->av[dest].name))) {
		STAILQ_INSERT_TAIL(&to->inbox, m, link);
		pthread_cond_signal(&to->cond);
		m = NULL;
		fake_fab.sent++;
	}
	pthread_mutex_unlock(&fake_fab.lock);
	free(m);
	return rc;
}

/* Made under order and delivered under it, so messages arrive in the order they were made. */
int vp_fab_send_made(struct vp_fab *fab, vp_fab_addr dest, pthread_mutex_t *order,
		     vp_fab_make_cb make, void (*unmake)(void *arg), void *arg,
		     double deadline_s, unsigned int flags)
{
	struct fake_msg *m = malloc(sizeof(*m) + VP_FAB_MAX_MSG);
	ssize_t len;
	int rc;

	(void)deadline_s;
	(void)flags;
	if (!m)
		return -ENOMEM;
	if (order)
		pthread_mutex_lock(order);
	len = make(arg, m->buf, VP_FAB_MAX_MSG);
	if (len < 0) {
		free(m);
		rc = (int)len;
	} else {
		m->len = (size_t)len;
		rc = fake_post(fab, dest, m);
		if (rc && unmake)
			unmake(arg);
	}
	if (order)
		pthread_mutex_unlock(order);
	return rc;
}

int vp_fab_send(struct vp_fab *fab, vp_fab_addr dest, const void *msg,
		size_t len, double deadline_s)
{
	struct fake_msg *m;

	(void)deadline_s;
	if (len > VP_FAB_MAX_MSG)
		return -EMSGSIZE;
	m = malloc(sizeof(*m) + len);
	if (!m)
		return -ENOMEM;
	m->len = len;
	memcpy(m->buf, msg, len);
	return fake_post(fab, dest, m);
}

int vp_fab_send_untrusted(struct vp_fab *fab, vp_fab_addr dest, const void *msg,
			  size_t len, double wait_s)
{
	return vp_fab_send(fab, dest, msg, len, wait_s);
}

static int fake_mr_new(struct vp_fab *fab, void *buf, size_t len, int remote,
		       struct vp_fab_mr **mrp, uint64_t *key, uint64_t *remote_addr)
{
	struct vp_fab_mr *mr = calloc(1, sizeof(*mr));

	if (!mr)
		return -ENOMEM;
	mr->fab = fab;
	mr->buf = buf;
	mr->len = len;
	mr->remote = remote;
	pthread_mutex_lock(&fake_fab.lock);
	/* not a sequence (fabric.h): a step of an odd constant, then mixed */
	fake_fab.next_key += 0x9e3779b97f4a7c15ull;
	mr->key = fake_fab.next_key ^ (fake_fab.next_key >> 29);
	LIST_INSERT_HEAD(&fab->mrs, mr, link);
	pthread_mutex_unlock(&fake_fab.lock);
	if (key)
		*key = mr->key;
	if (remote_addr)
		*remote_addr = (uint64_t)(uintptr_t)buf;	/* FI_MR_VIRT_ADDR */
	*mrp = mr;
	return 0;
}

int vp_fab_mr_reg(struct vp_fab *fab, void *buf, size_t len,
		  struct vp_fab_mr **mr, uint64_t *key, uint64_t *remote_addr)
{
	return fake_mr_new(fab, buf, len, 1, mr, key, remote_addr);
}

int vp_fab_mr_reg_local(struct vp_fab *fab, void *buf, size_t len, struct vp_fab_mr **mr)
{
	return fake_mr_new(fab, buf, len, 0, mr, NULL, NULL);
}

int vp_fab_mr_reg_dev(struct vp_fab *fab, void *buf, size_t len, int cuda_device,
		      unsigned int access, struct vp_fab_mr **mr, uint64_t *key,
		      uint64_t *remote_addr)
{
	if (cuda_device >= 0)
		return -EOPNOTSUPP;	/* the fake has no FI_HMEM */
	return fake_mr_new(fab, buf, len, !!(access & VP_FAB_MR_REMOTE_READ), mr, key,
			   remote_addr);
}

void vp_fab_mr_close(struct vp_fab_mr *mr)
{
	if (!mr)
		return;
	pthread_mutex_lock(&fake_fab.lock);
	LIST_REMOVE(mr, link);
	pthread_mutex_unlock(&fake_fab.lock);
	free(mr);
}

/* One piece; fake_fab.lock held (so no registration goes away meanwhile). */
static int fake_read_one(struct vp_fab *peer, const struct vp_fab_read_req *req)
{
	struct vp_fab_mr *mr;

	LIST_FOREACH(mr, &peer->mrs, link) {
		uint64_t base = (uint64_t)(uintptr_t)mr->buf;

		if (mr->key != req->key || !mr->remote)
			continue;
		if (req->remote_addr < base || req->len > mr->len ||
		    req->remote_addr - base > mr->len - req->len)
			return -EIO;	/* out of the registration's bounds */
		memcpy(req->local, mr->buf + (req->remote_addr - base), req->len);
		return 0;
	}
	return -EIO;			/* no such key: the provider's access error */
}

int vp_fab_read_cb(struct vp_fab *fab, vp_fab_addr src,
		   const struct vp_fab_read_req *reqs, size_t n, unsigned int inflight,
		   double deadline_s, void (*done)(void *arg, size_t req), void *arg)
{
	int rc = 0;

	(void)inflight;
	(void)deadline_s;
	for (size_t i = 0; i < n && !rc; i++) {
		struct vp_fab *peer;

		pthread_mutex_lock(&fake_fab.lock);
		fake_fab.reads++;
		if (src >= FAKE_FAB_AV_MAX || !fab->av[src].refs)
			rc = -EIO;
		else if (!(peer = fake_endpoint_named(&fab->av[src].name)))
			rc = -ETIMEDOUT;	/* nobody there: no completion */
		else if (fake_fault(&fake_fab.fail_reads, fake_fab.fail_port,
				    ntohs(peer->name.sin_port)))
			rc = -EIO;
		else
			rc = fake_read_one(peer, &reqs[i]);
		if (rc)
			fake_fab.failed_reads++;
		else
			fake_fab.bytes_read += reqs[i].len;
		pthread_mutex_unlock(&fake_fab.lock);
		if (!rc && done)
			done(arg, i);
	}
	return rc;
}

int vp_fab_read(struct vp_fab *fab, vp_fab_addr src,
		const struct vp_fab_read_req *reqs, size_t n, unsigned int inflight,
		double deadline_s)
{
	return vp_fab_read_cb(fab, src, reqs, n, inflight, deadline_s, NULL, NULL);
}

int vp_fab_errno(int fi_rc)
{
	return fi_rc > 0 ? -fi_rc : fi_rc;	/* the FI_E* codes below 256 are errno's */
}
