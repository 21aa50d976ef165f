/* fabric: see fabric.h. */
#define _GNU_SOURCE
#include "fabric.h"

#include <errno.h>
#include <pthread.h>
#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <netinet/in.h>
#include <openssl/rand.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include "clock.h"
#include "lock.h"
#include "log.h"

#define DEFAULT_PROVIDER "tcp;ofi_rxm"
#define N_RECV 32
#define N_SEND 64		/* send slots (a bitmap of 64) */
#define N_SEND_UNTRUSTED 16	/* the last ones: sends to peers that have not authenticated */

enum op_kind { OP_RECV, OP_SEND, OP_READ };

/*
 * The context of one posted operation.  FI_CONTEXT mode: the provider
 * may use the struct fi_context at its head.
 */
struct op {
	struct fi_context fictx;	/* first */
	enum op_kind kind;
	int done;			/* protected by fab->lock */
	int abandoned;			/* sends: nobody waits; the completion frees the slot */
	int detached;			/* ... for it was a VP_FAB_SEND_NOW (not a timeout: not stuck) */
	uint8_t peer[VP_FAB_NAME_MAX];	/* sends: the destination's address (peer_len 0: not known) */
	size_t peer_len;
	int status;			/* 0 or -errno, protected by fab->lock */
	unsigned int index;		/* recv/send buffer slot */
	struct batch *batch;		/* reads */
	size_t req;			/* reads: index in the request array */
};

struct batch {
	unsigned int outstanding;	/* protected by fab->lock */
	int failed;
	SLIST_ENTRY(batch) next;	/* on fab->orphans */
	size_t ndone;			/* protected by fab->lock */
	size_t done[];			/* requests completed, in order */
};

struct vp_fab_mr {
	struct vp_fab *fab;
	struct fid_mr *mr;
};

struct vp_fab {
	struct fi_info *info;
	struct fid_fabric *fabric;
	struct fid_domain *domain;
	struct fid_ep *ep;
	struct fid_cq *cq;
	struct fid_av *av;
	uint64_t mr_mode;		/* what the provider kept */
	int hmem;			/* the provider offers FI_HMEM (device memory) */
	int hmem_on;			/* ... and the endpoint was opened with it */
	char provider[64];
	vp_fab_recv_cb cb;
	void *cb_arg;

	char *buf;			/* N_RECV + N_SEND message buffers */
	struct fid_mr *buf_mr;
	void *buf_desc;
	struct op recv_ops[N_RECV];
	struct op send_ops[N_SEND];

	pthread_t progress;
	int stop;			/* atomic */
	pthread_mutex_t lock;
	pthread_cond_t cond;		/* an operation completed */
	uint64_t send_busy;		/* bitmap of send slots in use, protected by lock */
	SLIST_HEAD(, batch) orphans;	/* timed-out reads still posted; protected by lock */
	int cancel;			/* vp_fab_cancel_reads(); protected by lock */
	int shut;			/* vp_fab_shutdown() ran */
	int kept;			/* ... with reads still posted: left open (vp_fab_close) */
	struct vp_fab *kept_next;
};

int vp_fab_errno(int rc)
{
	if (rc >= 0)
		return rc;
	switch (-rc) {
	case FI_EAGAIN: return -EAGAIN;
	case FI_ETIMEDOUT: return -ETIMEDOUT;
	case FI_ENOMEM: return -ENOMEM;
	case FI_ENODATA: return -ENODATA;
	case FI_ECANCELED: return -ECANCELED;
	case FI_ECONNREFUSED: return -ECONNREFUSED;
	case FI_EHOSTUNREACH: return -EHOSTUNREACH;
	default:
		return -rc < 256 ? rc : -EIO;	/* libfabric reuses errno values below 256 */
	}
}

static char *recv_buf(struct vp_fab *fab, unsigned int i)
{
	return fab->buf + (size_t)i * VP_FAB_MAX_MSG;
}

static char *send_buf(struct vp_fab *fab, unsigned int i)
{
	return fab->buf + (size_t)(N_RECV + i) * VP_FAB_MAX_MSG;
}

static int post_recv(struct vp_fab *fab, unsigned int i)
{
	struct op *op = &fab->recv_ops[i];
	int rc;

	op->kind = OP_RECV;
	op->index = i;
	do {
		rc = (int)fi_recv(fab->ep, recv_buf(fab, i), VP_FAB_MAX_MSG,
				  fab->buf_desc, FI_ADDR_UNSPEC, &op->fictx);
	} while (rc == -FI_EAGAIN && (fi_cq_read(fab->cq, NULL, 0), 1));
	return vp_fab_errno(rc);
}

/* Handles one completion (or error completion).  No lock held. */
static void complete(struct vp_fab *fab, struct op *op, int status, size_t len,
		     fi_addr_t src)
{
	if (op->kind == OP_RECV) {
		if (status == 0 && fab->cb)
			fab->cb(fab->cb_arg, src == FI_ADDR_NOTAVAIL ? VP_FAB_ADDR_UNKNOWN : src,
				recv_buf(fab, op->index), len);
		if (!__atomic_load_n(&fab->stop, __ATOMIC_RELAXED) &&
		    post_recv(fab, op->index))
			vp_log(LOG_ERR, "fabric", "could not re-post a receive buffer");
		return;
	}
	pthread_mutex_lock(&fab->lock);
	if (op->kind == OP_READ) {
		struct batch *b = op->batch;

		if (status)
			b->failed = status;
		else
			b->done[b->ndone++] = op->req;
		b->outstanding--;
		free(op);
	} else if (op->abandoned) {
		op->abandoned = 0;	/* nobody waits for it: the slot is free again */
		op->detached = 0;
		fab->send_busy &= ~(1ULL << op->index);
	} else {
		op->status = status;
		op->done = 1;
	}
	pthread_cond_broadcast(&fab->cond);
	pthread_mutex_unlock(&fab->lock);
}

static void *progress_main(void *arg)
{
	struct vp_fab *fab = arg;

	while (!__atomic_load_n(&fab->stop, __ATOMIC_RELAXED)) {
		struct fi_cq_data_entry ent[16];
		fi_addr_t src[16];
		ssize_t n = fi_cq_sreadfrom(fab->cq, ent, 16, src, NULL, 100);

		if (n == -FI_EAVAIL) {
			struct fi_cq_err_entry e = { 0 };

			if (fi_cq_readerr(fab->cq, &e, 0) > 0 && e.op_context) {
				struct op *op = e.op_context;

				if (op->kind != OP_RECV || e.err != FI_ECANCELED)
					vp_log(LOG_DEBUG, "fabric", "operation failed: %s",
					       fi_strerror(e.err));
				complete(fab, op, e.err == FI_ECANCELED ? -ECANCELED : -EIO, 0,
					 FI_ADDR_NOTAVAIL);
			}
			continue;
		}
		if (n == -FI_EAGAIN || n == -FI_ETIMEDOUT || n == -FI_EINTR)
			continue;
		if (n < 0) {
			/* no wait object: poll */
			if (n == -FI_ENOSYS) {
				n = fi_cq_readfrom(fab->cq, ent, 16, src);
				if (n == -FI_EAGAIN) {
					struct timespec ts = { 0, 50000 };

					nanosleep(&ts, NULL);
					continue;
				}
			}
			if (n < 0)
				continue;
		}
		for (ssize_t i = 0; i < n; i++)
			complete(fab, ent[i].op_context, 0, ent[i].len, src[i]);
	}
	return NULL;
}

/* ---- opening and closing: start steps, each with its undo ------------ */

/* The hints of an RDM endpoint with what replication needs, or NULL. */
static struct fi_info *make_hints(const char *provider)
{
	struct fi_info *hints = fi_allocinfo();

	if (!hints)
		return NULL;
	hints->ep_attr->type = FI_EP_RDM;
	/* FI_SOURCE: every message says which peer's connection it came on */
	hints->caps = FI_MSG | FI_RMA | FI_READ | FI_REMOTE_READ | FI_SOURCE;
	hints->mode = FI_CONTEXT;
	hints->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR |
		FI_MR_ALLOCATED | FI_MR_PROV_KEY | FI_MR_ENDPOINT;
	hints->domain_attr->threading = FI_THREAD_SAFE;
	hints->fabric_attr->prov_name = strdup(provider);
	if (!hints->fabric_attr->prov_name) {
		fi_freeinfo(hints);
		return NULL;
	}
	return hints;
}

/*
 * Finds the provider's fi_info into fab->info.  Would the provider move
 * device memory (GPU-direct)?  With VP_FAB_HMEM the endpoint is opened
 * with FI_HMEM when it does; otherwise it is only asked, for the log.
 * Returns 0 or -1 with a message in err.
 */
static int get_info(struct vp_fab *fab, const char *node, const char *service,
		    unsigned int flags, char *err, size_t errlen)
{
	/*
	 * A named address is where the endpoint binds, listening or not: left
	 * to itself, the provider binds a consumer to the first address of any
	 * interface, which may be one the producer cannot answer (a bridge's
	 * link-local IPv6).
	 */
	const char *bind_node = node, *bind_service = node || service ? service : NULL;
	uint64_t gflags = node || service ? FI_SOURCE : 0;
	struct fi_info *hints = make_hints(fab->provider), *h = NULL;
	int rc;

	if (!hints) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	hints->caps |= FI_HMEM;
	hints->domain_attr->mr_mode |= FI_MR_HMEM;
	fab->hmem = fi_getinfo(FI_VERSION(1, 17), bind_node, bind_service, gflags,
			       hints, &h) == 0;
	hints->caps &= ~FI_HMEM;
	hints->domain_attr->mr_mode &= ~(uint64_t)FI_MR_HMEM;
	if (fab->hmem && (flags & VP_FAB_HMEM))
		fab->info = h;
	else if (h)
		fi_freeinfo(h);
	fab->hmem_on = fab->info != NULL;
	rc = fab->info ? 0 : fi_getinfo(FI_VERSION(1, 17), bind_node, bind_service,
					gflags, hints, &fab->info);
	fi_freeinfo(hints);
	if (rc) {
		snprintf(err, errlen, "no libfabric provider '%s' for an RDM endpoint%s%s%s%s: %s",
			 fab->provider, bind_node ? " on " : "", bind_node ? bind_node : "",
			 bind_node && bind_service ? ":" : "", bind_node && bind_service ? bind_service : "",
			 fi_strerror(-rc));
		return -1;
	}
	fab->mr_mode = fab->info->domain_attr->mr_mode;
	return 0;
}

/* Closes what open_domain() opened; what was not opened is NULL. */
static void close_domain(struct vp_fab *fab)
{
	if (fab->av)
		fi_close(&fab->av->fid);
	if (fab->cq)
		fi_close(&fab->cq->fid);
	if (fab->domain)
		fi_close(&fab->domain->fid);
	if (fab->fabric)
		fi_close(&fab->fabric->fid);
}

/* Opens the fabric, domain, CQ and AV.  Returns 0 or -1 with err set. */
static int open_domain(struct vp_fab *fab, char *err, size_t errlen)
{
	struct fi_cq_attr cq_attr = { .format = FI_CQ_FORMAT_DATA,
				      .wait_obj = FI_WAIT_UNSPEC, .size = 1024 };
	struct fi_av_attr av_attr = { .type = FI_AV_UNSPEC };
	int rc;

	if ((rc = fi_fabric(fab->info->fabric_attr, &fab->fabric, NULL)) ||
	    (rc = fi_domain(fab->fabric, fab->info, &fab->domain, NULL)) ||
	    (rc = fi_cq_open(fab->domain, &cq_attr, &fab->cq, NULL)) ||
	    (rc = fi_av_open(fab->domain, &av_attr, &fab->av, NULL))) {
		snprintf(err, errlen, "libfabric endpoint with '%s': %s", fab->provider,
			 fi_strerror(-rc));
		close_domain(fab);
		return -1;
	}
	return 0;
}

/* The message buffers, touched now rather than on the hot path. */
static int alloc_buffers(struct vp_fab *fab, char *err, size_t errlen)
{
	size_t buflen = (size_t)(N_RECV + N_SEND) * VP_FAB_MAX_MSG;

	if (posix_memalign((void **)&fab->buf, 4096, buflen)) {
		fab->buf = NULL;
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	memset(fab->buf, 0, buflen);
	return 0;
}

/*
 * Closes the endpoint, which cancels its posted receives, then the
 * buffers' registration; what was not opened is NULL.
 */
static void close_endpoint(struct vp_fab *fab)
{
	if (fab->ep)
		fi_close(&fab->ep->fid);
	fab->ep = NULL;
	if (fab->buf_mr)
		fi_close(&fab->buf_mr->fid);
	fab->buf_mr = NULL;
}

/*
 * Opens and enables the endpoint, registers the message buffers with it
 * and posts the receives.  Returns 0 or -1 with a message in err.
 */
static int open_endpoint(struct vp_fab *fab, char *err, size_t errlen)
{
	size_t buflen = (size_t)(N_RECV + N_SEND) * VP_FAB_MAX_MSG;
	int rc;

	if ((rc = fi_endpoint(fab->domain, fab->info, &fab->ep, NULL)) ||
	    (rc = fi_ep_bind(fab->ep, &fab->cq->fid, FI_TRANSMIT | FI_RECV)) ||
	    (rc = fi_ep_bind(fab->ep, &fab->av->fid, 0)) ||
	    (rc = fi_enable(fab->ep))) {
		snprintf(err, errlen, "libfabric endpoint with '%s': %s", fab->provider,
			 fi_strerror(-rc));
		goto err_close;
	}
	rc = vp_fab_mr_reg_dev(fab, fab->buf, buflen, -1, 0, (struct vp_fab_mr **)NULL, NULL, NULL);
	if (rc) {
		snprintf(err, errlen, "registering message buffers: %s", strerror(-rc));
		goto err_close;
	}
	for (unsigned int i = 0; i < N_RECV; i++) {
		rc = post_recv(fab, i);
		if (rc) {
			snprintf(err, errlen, "posting receives: %s", strerror(-rc));
			goto err_close;
		}
	}
	return 0;

err_close:
	close_endpoint(fab);
	return -1;
}

/* Stops and joins the progress thread. */
static void stop_progress(struct vp_fab *fab)
{
	__atomic_store_n(&fab->stop, 1, __ATOMIC_RELAXED);
	/* a provider whose sread ignores its timeout (shm: FI_WAIT_YIELD) returns on a signal */
	fi_cq_signal(fab->cq);
	pthread_join(fab->progress, NULL);
}

static struct vp_fab *fab_new(const char *provider, vp_fab_recv_cb cb, void *cb_arg)
{
	struct vp_fab *fab = calloc(1, sizeof(*fab));
	const char *env = getenv("FI_PROVIDER");

	if (!fab)
		return NULL;
	if (!provider || !*provider)
		provider = env && *env ? env : DEFAULT_PROVIDER;
	snprintf(fab->provider, sizeof(fab->provider), "%s", provider);
	fab->cb = cb;
	fab->cb_arg = cb_arg;
	pthread_mutex_init(&fab->lock, NULL);
	vp_cond_init_monotonic(&fab->cond);
	SLIST_INIT(&fab->orphans);
	return fab;
}

static void fab_free(struct vp_fab *fab)
{
	struct batch *b;

	while ((b = SLIST_FIRST(&fab->orphans))) {
		SLIST_REMOVE_HEAD(&fab->orphans, next);
		free(b);
	}
	pthread_cond_destroy(&fab->cond);
	pthread_mutex_destroy(&fab->lock);
	free(fab);
}

struct vp_fab *vp_fab_open(const char *provider, const char *node,
			   const char *service, unsigned int flags, vp_fab_recv_cb cb,
			   void *cb_arg, char *err, size_t errlen)
{
	int listen = !!(flags & VP_FAB_LISTEN);
	struct vp_fab *fab = fab_new(provider, cb, cb_arg);

	if (!fab) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if (get_info(fab, node, service, flags, err, errlen))
		goto err_free_fab;
	if (open_domain(fab, err, errlen))
		goto err_free_info;
	if (alloc_buffers(fab, err, errlen))
		goto err_close_domain;
	if (open_endpoint(fab, err, errlen))
		goto err_free_buffers;
	if (pthread_create(&fab->progress, NULL, progress_main, fab)) {
		snprintf(err, errlen, "cannot start the progress thread");
		goto err_close_endpoint;
	}
	vp_log(LOG_INFO, "fabric", "endpoint open with provider '%s' (mr_mode 0x%llx%s)%s%s%s%s",
	       fab->provider, (unsigned long long)fab->mr_mode,
	       fab->hmem_on ? ", FI_HMEM" : "",
	       listen ? ", listening on " : "", listen && node ? node : "",
	       listen ? ":" : "", listen && service ? service : "");
	return fab;

err_close_endpoint:
	close_endpoint(fab);
err_free_buffers:
	free(fab->buf);
err_close_domain:
	close_domain(fab);
err_free_info:
	fi_freeinfo(fab->info);
err_free_fab:
	fab_free(fab);
	return NULL;
}

/*
 * Fabrics left open by vp_fab_close(): reachable, so that a leak checker
 * does not take them for lost.  Protected by kept_lock.
 */
static struct vp_fab *kept_fabs;
static pthread_mutex_t kept_lock = PTHREAD_MUTEX_INITIALIZER;

void vp_fab_shutdown(struct vp_fab *fab)
{
	unsigned int orphans;

	if (!fab || fab->shut)
		return;
	fab->shut = 1;
	stop_progress(fab);
	/*
	 * Reads we gave up on (a link cut) that are still posted: rxm's
	 * endpoint close walks them and crashes (libfabric 1.17, seen when a
	 * consumer unmounts before a cut link comes back).  With the progress
	 * thread stopped nothing can land any more, so the endpoint is left
	 * open, until the process ends.
	 */
	orphans = vp_fab_orphan_reads(fab);
	if (orphans) {
		vp_log(LOG_INFO, "fabric", "%u reads given up on are still posted; the endpoint stays open until the process ends",
		       orphans);
		fab->kept = 1;
		return;
	}
	/* before any registration goes: a read still posted names its memory's */
	if (fab->ep && !fi_close(&fab->ep->fid))
		fab->ep = NULL;	/* else (FI_EBUSY: registrations bound to it) after them */
}

void vp_fab_close(struct vp_fab *fab)
{
	if (!fab)
		return;
	vp_fab_shutdown(fab);
	if (fab->kept) {
		pthread_mutex_lock(&kept_lock);
		fab->kept_next = kept_fabs;
		kept_fabs = fab;
		pthread_mutex_unlock(&kept_lock);
		return;
	}
	close_endpoint(fab);
	free(fab->buf);
	close_domain(fab);
	fi_freeinfo(fab->info);
	fab_free(fab);
}

const char *vp_fab_provider(const struct vp_fab *fab)
{
	return fab->provider;
}

int vp_fab_has_hmem(const struct vp_fab *fab)
{
	return fab->hmem_on ? 2 : fab->hmem;
}

int vp_fab_name(struct vp_fab *fab, void *buf, size_t len)
{
	size_t l = len;
	int rc = fi_getname(&fab->ep->fid, buf, &l);

	return rc ? vp_fab_errno(rc) : (int)l;
}

/*
 * A peer's endpoint name is network input: the provider reads as many
 * bytes as its address format says, whatever length came with it.  A
 * name must be exactly that long and of that family.
 */
static int check_name(const struct vp_fab *fab, const void *name, size_t len)
{
	size_t want = fab->info->src_addrlen;
	sa_family_t family;

	if (!name || !len || len > VP_FAB_NAME_MAX)
		return -EINVAL;
	switch (fab->info->addr_format) {
	case FI_SOCKADDR_IN:
		want = sizeof(struct sockaddr_in);
		break;
	case FI_SOCKADDR_IN6:
		want = sizeof(struct sockaddr_in6);
		break;
	case FI_SOCKADDR:
		if (len < sizeof(sa_family_t))
			return -EINVAL;
		memcpy(&family, name, sizeof(family));
		want = family == AF_INET ? sizeof(struct sockaddr_in) :
			family == AF_INET6 ? sizeof(struct sockaddr_in6) : 0;
		break;
	case FI_ADDR_STR:	/* read up to its NUL */
		return memchr(name, '\0', len) ? 0 : -EINVAL;
	default:
		break;
	}
	if (!want || len != want)
		return -EINVAL;
	if (fab->info->addr_format == FI_SOCKADDR_IN || fab->info->addr_format == FI_SOCKADDR_IN6) {
		memcpy(&family, name, sizeof(family));
		if (family != (fab->info->addr_format == FI_SOCKADDR_IN ? AF_INET : AF_INET6))
			return -EINVAL;
	}
	return 0;
}

int vp_fab_insert_name(struct vp_fab *fab, const void *name, size_t len,
		       vp_fab_addr *out)
{
	fi_addr_t a;
	int rc = check_name(fab, name, len);

	if (rc)
		return rc;
	if (fi_av_insert(fab->av, name, 1, &a, 0, NULL) != 1)
		return -EINVAL;
	*out = a;
	return 0;
}

int vp_fab_insert_host(struct vp_fab *fab, const char *node,
		       const char *service, vp_fab_addr *out)
{
	struct fi_info *hints = fi_dupinfo(fab->info), *info = NULL;
	int rc;

	if (!hints)
		return -ENOMEM;
	free(hints->src_addr);
	hints->src_addr = NULL;
	hints->src_addrlen = 0;
	free(hints->dest_addr);
	hints->dest_addr = NULL;
	hints->dest_addrlen = 0;
	rc = fi_getinfo(FI_VERSION(1, 17), node, service, 0, hints, &info);
	fi_freeinfo(hints);
	if (rc)
		return vp_fab_errno(rc);
	rc = info->dest_addr ? vp_fab_insert_name(fab, info->dest_addr,
						   info->dest_addrlen, out) : -EHOSTUNREACH;
	fi_freeinfo(info);
	return rc;
}

void vp_fab_remove(struct vp_fab *fab, vp_fab_addr addr)
{
	fi_addr_t a = addr;

	fi_av_remove(fab->av, &a, 1, 0);
}

int vp_fab_mr_reg(struct vp_fab *fab, void *buf, size_t len,
		  struct vp_fab_mr **mrp, uint64_t *key, uint64_t *remote_addr)
{
	return vp_fab_mr_reg_dev(fab, buf, len, -1, VP_FAB_MR_REMOTE_READ, mrp, key, remote_addr);
}

int vp_fab_mr_reg_local(struct vp_fab *fab, void *buf, size_t len, struct vp_fab_mr **mrp)
{
	return vp_fab_mr_reg_dev(fab, buf, len, -1, 0, mrp, NULL, NULL);
}

/* A key a peer cannot guess: 64 random bits (0 is "a hole" on the wire). */
static uint64_t random_key(void)
{
	uint64_t k = 0;

	while (!k)
		if (RAND_bytes((unsigned char *)&k, sizeof(k)) != 1)
			abort();	/* no entropy: no key is safe to hand out */
	return k;
}

int vp_fab_mr_reg_dev(struct vp_fab *fab, void *buf, size_t len, int cuda_device,
		      unsigned int access, struct vp_fab_mr **mrp, uint64_t *key,
		      uint64_t *remote_addr)
{
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	struct fi_mr_attr attr = {
		.mr_iov = &iov,
		.iov_count = 1,
		.access = FI_SEND | FI_RECV | FI_READ |
			  ((access & VP_FAB_MR_REMOTE_READ) ? FI_REMOTE_READ : 0),
		.iface = FI_HMEM_SYSTEM,
	};
	struct fid_mr *mr = NULL;
	int rc, tries = 0;

	if (cuda_device >= 0) {
		if (!fab->hmem_on)
			return -EOPNOTSUPP;	/* opened without FI_HMEM */
		attr.iface = FI_HMEM_CUDA;
		attr.device.cuda = cuda_device;
	}
	/*
	 * Memory that is only ever a local target needs no registration where
	 * the provider does not ask for it (no FI_MR_LOCAL, host memory): then
	 * it has no key, and no peer can read it.  This matters: tcp does not
	 * check a registration's access flags, so a registered buffer is
	 * readable by anyone who has (or guesses) its key.
	 */
	if (!(access & VP_FAB_MR_REMOTE_READ) && !(fab->mr_mode & (FI_MR_LOCAL | FI_MR_HMEM)) &&
	    cuda_device < 0) {
		if (!mrp)
			return 0;	/* the message buffers: no descriptor */
		*mrp = calloc(1, sizeof(**mrp));
		if (!*mrp)
			return -ENOMEM;
		(*mrp)->fab = fab;
		if (key)
			*key = 0;
		if (remote_addr)
			*remote_addr = 0;
		return 0;
	}
	do {
		if (!(fab->mr_mode & FI_MR_PROV_KEY))
			attr.requested_key = random_key();
		rc = fi_mr_regattr(fab->domain, &attr, 0, &mr);
	} while (rc == -FI_ENOKEY && ++tries < 8);	/* a key in use: draw again */
	if (rc)
		return vp_fab_errno(rc);
	if (fab->mr_mode & FI_MR_ENDPOINT) {
		rc = fi_mr_bind(mr, &fab->ep->fid, 0);
		if (!rc)
			rc = fi_mr_enable(mr);
		if (rc) {
			fi_close(&mr->fid);
			return vp_fab_errno(rc);
		}
	}
	if (!mrp) {	/* the message buffers */
		fab->buf_mr = mr;
		fab->buf_desc = fi_mr_desc(mr);
		return 0;
	}
	*mrp = calloc(1, sizeof(**mrp));
	if (!*mrp) {
		fi_close(&mr->fid);
		return -ENOMEM;
	}
	(*mrp)->fab = fab;
	(*mrp)->mr = mr;
	if (key)
		*key = fi_mr_key(mr);
	if (remote_addr)
		*remote_addr = (fab->mr_mode & FI_MR_VIRT_ADDR) ? (uint64_t)(uintptr_t)buf : 0;
	return 0;
}

void vp_fab_mr_close(struct vp_fab_mr *mr)
{
	if (!mr)
		return;
	if (mr->mr)
		fi_close(&mr->mr->fid);
	free(mr);
}

/*
 * The send in flight to the address peer[len], or NULL (protected by
 * fab->lock; there is at most one, take_slot_locked() says why).  A peer
 * is known by its address, not its fi_addr, which libfabric reuses for
 * the next peer.
 */
static const struct op *send_to_locked(struct vp_fab *fab, const uint8_t *peer, size_t len)
{
	VP_ASSERT_LOCKED(&fab->lock);
	for (unsigned int i = 0; i < N_SEND; i++) {
		const struct op *op = &fab->send_ops[i];

		if ((fab->send_busy & (1ULL << i)) && op->peer_len == len &&
		    !memcmp(op->peer, peer, len))
			return op;
	}
	return NULL;
}

/*
 * Takes a send slot from the trusted or the untrusted ones, waiting for
 * one until ts unless nowait.  peer[peer_len] is the destination's
 * address (peer_len 0: not known), recorded in the op.  One send to an
 * address is in flight at a time: the next waits for it (or, nowait, is
 * refused), so that messages complete at the peer in the order they were
 * made (a large message's rendezvous would let a small one sent after it
 * overtake it).  One that a sender gave up on (stuck: on rxm, a send
 * that a dead or stopped peer never takes never completes, not even after
 * fi_av_remove) refuses the next at once.  A VP_FAB_SEND_NOW nobody waits
 * for (detached) is not stuck: it was never given up on.  Returns the
 * slot's op, or NULL: -EAGAIN, nothing posted.
 */
static struct op *take_slot_locked(struct vp_fab *fab, const uint8_t *peer, size_t peer_len,
				   const struct timespec *ts, int untrusted, int nowait)
{
	uint64_t pool = untrusted ? ~0ULL << (N_SEND - N_SEND_UNTRUSTED) :
		~(~0ULL << (N_SEND - N_SEND_UNTRUSTED));
	unsigned int slot;
	struct op *op;

	VP_ASSERT_LOCKED(&fab->lock);
	for (;;) {
		const struct op *last = peer_len ? send_to_locked(fab, peer, peer_len) : NULL;

		if (last && last->abandoned && !last->detached)
			return NULL;	/* stuck: it takes nothing for now */
		if (!last && (fab->send_busy & pool) != pool)
			break;
		if (nowait || pthread_cond_timedwait(&fab->cond, &fab->lock, ts) == ETIMEDOUT)
			return NULL;	/* every slot busy, or the last send to it not done */
	}
	slot = (unsigned int)__builtin_ctzll(~fab->send_busy & pool);
	fab->send_busy |= 1ULL << slot;
	op = &fab->send_ops[slot];
	op->kind = OP_SEND;
	op->index = slot;
	op->done = 0;
	op->abandoned = 0;
	op->detached = 0;
	op->status = 0;
	memcpy(op->peer, peer, peer_len);
	op->peer_len = peer_len;
	return op;
}

/*
 * Gives up waiting for a posted send: the slot stays busy while the
 * provider may still use the buffer, and its completion (or error
 * completion) frees it.  Called with fab->lock held; returns without it.
 */
static void abandon_send_locked(struct vp_fab *fab, struct op *op)
{
	VP_ASSERT_LOCKED(&fab->lock);
	op->abandoned = 1;	/* its address is in it since its slot was taken */
	pthread_mutex_unlock(&fab->lock);
}

/* The message, copied into the send buffer (vp_fab_send()'s make). */
struct copy_arg {
	const void *msg;
	size_t len;
};

static ssize_t copy_make(void *arg, void *buf, size_t cap)
{
	const struct copy_arg *c = arg;

	if (c->len > cap)
		return -EMSGSIZE;
	memcpy(buf, c->msg, c->len);
	return (ssize_t)c->len;
}

int vp_fab_send_made(struct vp_fab *fab, vp_fab_addr dest, pthread_mutex_t *order,
		     vp_fab_make_cb make, void (*unmake)(void *arg), void *arg,
		     double deadline_s, unsigned int flags)
{
	int untrusted = !!(flags & VP_FAB_SEND_UNTRUSTED), now_only = !!(flags & VP_FAB_SEND_NOW);
	double deadline = vp_now() + deadline_s;
	uint8_t peer[VP_FAB_NAME_MAX];
	size_t peer_len = sizeof(peer);	/* 0: its address is not known */
	struct timespec ts;
	struct op *op;
	ssize_t len;
	int rc;

	/* the address: one send in flight to it at a time, and stuck peers told apart */
	if (fi_av_lookup(fab->av, dest, peer, &peer_len) || peer_len > sizeof(peer))
		peer_len = 0;
	vp_abstime(&ts, deadline);
	pthread_mutex_lock(&fab->lock);
	op = take_slot_locked(fab, peer, peer_len, &ts, untrusted, untrusted || now_only);
	pthread_mutex_unlock(&fab->lock);
	if (!op)
		return -EAGAIN;

	for (;;) {
		if (order)
			pthread_mutex_lock(order);
		len = make(arg, send_buf(fab, op->index), VP_FAB_MAX_MSG);
		if (len < 0) {
			rc = (int)len;
		} else {
			if (now_only) {	/* the completion frees the slot; set before it can come */
				pthread_mutex_lock(&fab->lock);
				op->abandoned = 1;
				op->detached = 1;
				pthread_mutex_unlock(&fab->lock);
			}
			rc = (int)fi_send(fab->ep, send_buf(fab, op->index), (size_t)len, fab->buf_desc,
					  dest, &op->fictx);
			if (rc && now_only) {
				pthread_mutex_lock(&fab->lock);
				op->abandoned = 0;
				op->detached = 0;
				pthread_mutex_unlock(&fab->lock);
			}
			if (rc && unmake)
				unmake(arg);	/* never posted: as if never made */
		}
		if (order)
			pthread_mutex_unlock(order);
		if (rc != -FI_EAGAIN || untrusted || now_only || vp_now() > deadline)
			break;
		sched_yield();
	}
	pthread_mutex_lock(&fab->lock);
	if (rc == 0 && now_only) {
		pthread_mutex_unlock(&fab->lock);
		return 0;	/* posted; nobody waits */
	}
	if (rc == 0) {
		while (!op->done)
			if (pthread_cond_timedwait(&fab->cond, &fab->lock, &ts) == ETIMEDOUT &&
			    !op->done) {	/* (a completion may have come as the wait timed out) */
				abandon_send_locked(fab, op);
				return -ETIMEDOUT;
			}
		rc = op->status;
	} else if (len >= 0) {
		rc = rc == -FI_EAGAIN ? -EAGAIN : vp_fab_errno(rc);	/* never posted */
	}
	fab->send_busy &= ~(1ULL << op->index);
	pthread_cond_broadcast(&fab->cond);
	pthread_mutex_unlock(&fab->lock);
	return rc;
}

int vp_fab_send(struct vp_fab *fab, vp_fab_addr dest, const void *msg,
		size_t len, double deadline_s)
{
	struct copy_arg c = { msg, len };

	if (len > VP_FAB_MAX_MSG)
		return -EMSGSIZE;
	return vp_fab_send_made(fab, dest, NULL, copy_make, NULL, &c, deadline_s, 0);
}

int vp_fab_send_untrusted(struct vp_fab *fab, vp_fab_addr dest, const void *msg,
			  size_t len, double wait_s)
{
	struct copy_arg c = { msg, len };

	if (len > VP_FAB_MAX_MSG)
		return -EMSGSIZE;
	return vp_fab_send_made(fab, dest, NULL, copy_make, NULL, &c, wait_s,
				VP_FAB_SEND_UNTRUSTED);
}

int vp_fab_read(struct vp_fab *fab, vp_fab_addr src,
		const struct vp_fab_read_req *reqs, size_t n, unsigned int inflight,
		double deadline_s)
{
	return vp_fab_read_cb(fab, src, reqs, n, inflight, deadline_s, NULL, NULL);
}

/*
 * Posts request i of reqs, a read of the batch b.  Called with fab->lock
 * held; drops it while posting.  Returns 0, -EAGAIN (the provider is
 * busy: nothing posted) or -errno.
 */
static int post_read_locked(struct vp_fab *fab, struct batch *b, vp_fab_addr src,
			    const struct vp_fab_read_req *reqs, size_t i)
{
	struct op *op = calloc(1, sizeof(*op));
	int rc;

	VP_ASSERT_LOCKED(&fab->lock);
	if (!op)
		return -ENOMEM;
	op->kind = OP_READ;
	op->batch = b;
	op->req = i;
	b->outstanding++;
	pthread_mutex_unlock(&fab->lock);
	rc = (int)fi_read(fab->ep, reqs[i].local, reqs[i].len,
			  reqs[i].mr->mr ? fi_mr_desc(reqs[i].mr->mr) : NULL,
			  src, reqs[i].remote_addr, reqs[i].key, &op->fictx);
	pthread_mutex_lock(&fab->lock);
	if (rc) {
		b->outstanding--;
		free(op);
	}
	return rc == -FI_EAGAIN ? -EAGAIN : vp_fab_errno(rc);
}

int vp_fab_read_cb(struct vp_fab *fab, vp_fab_addr src,
		   const struct vp_fab_read_req *reqs, size_t n, unsigned int inflight,
		   double deadline_s, void (*done)(void *arg, size_t req), void *arg)
{
	struct batch *b = calloc(1, sizeof(*b) + n * sizeof(b->done[0]));
	double deadline = vp_now() + deadline_s;
	struct timespec ts;
	size_t next = 0, seen = 0, progress = 0;
	int rc = 0;

	if (!b)
		return -ENOMEM;
	if (inflight == 0)
		inflight = 1;
	vp_abstime(&ts, deadline);
	pthread_mutex_lock(&fab->lock);
	while (next < n || b->outstanding || seen < b->ndone) {
		if (b->failed)
			break;
		if (fab->cancel) {
			rc = -ECANCELED;
			break;
		}
		if (b->ndone != progress) {
			/* a read completed: the peer is alive; the wait starts again */
			progress = b->ndone;
			deadline = vp_now() + deadline_s;
			vp_abstime(&ts, deadline);
		}
		if (seen < b->ndone) {
			/* completed reads: the caller's work on them overlaps the next ones */
			size_t upto = b->ndone;

			pthread_mutex_unlock(&fab->lock);
			for (; seen < upto; seen++)
				if (done)
					done(arg, b->done[seen]);
			pthread_mutex_lock(&fab->lock);
			continue;
		}
		if (next < n && b->outstanding < inflight) {
			int prc = post_read_locked(fab, b, src, reqs, next);

			if (prc == -EAGAIN && vp_now() <= deadline) {
				pthread_mutex_unlock(&fab->lock);
				sched_yield();
				pthread_mutex_lock(&fab->lock);
				continue;
			}
			if (prc) {
				rc = prc == -EAGAIN ? -ETIMEDOUT : prc;
				break;
			}
			next++;
			continue;
		}
		if (pthread_cond_timedwait(&fab->cond, &fab->lock, &ts) == ETIMEDOUT) {
			rc = -ETIMEDOUT;
			break;
		}
	}
	if (!rc && b->failed)
		rc = -EIO;
	if (b->outstanding) {
		/* reads still posted: the batch must outlive them; freed at close */
		SLIST_INSERT_HEAD(&fab->orphans, b, next);
		pthread_mutex_unlock(&fab->lock);
		return -ETIMEDOUT;	/* whatever else failed: their memory may still be written */
	}
	pthread_mutex_unlock(&fab->lock);
	free(b);
	return rc;
}

void vp_fab_cancel_reads(struct vp_fab *fab)
{
	pthread_mutex_lock(&fab->lock);
	fab->cancel = 1;
	pthread_cond_broadcast(&fab->cond);
	pthread_mutex_unlock(&fab->lock);
}

unsigned int vp_fab_orphan_reads(struct vp_fab *fab)
{
	struct batch *b, *next;
	unsigned int n = 0;

	pthread_mutex_lock(&fab->lock);
	for (b = SLIST_FIRST(&fab->orphans); b; b = next) {
		next = SLIST_NEXT(b, next);
		if (b->outstanding) {
			n += b->outstanding;
		} else {
			SLIST_REMOVE(&fab->orphans, b, batch, next);	/* all its reads are over */
			free(b);
		}
	}
	pthread_mutex_unlock(&fab->lock);
	return n;
}
