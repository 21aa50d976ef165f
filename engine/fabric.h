/*
 * fabric: the libfabric transport of replication (FI_EP_RDM).
 *
 * One struct vp_fab is one endpoint with its fabric, domain, address
 * vector and completion queue, and a progress thread that reads the CQ.
 * It gives: messages (copied into registered, pre-posted buffers; a
 * callback per received message), memory registration for RMA, and RMA
 * reads of a peer's registered memory, pipelined, each with a deadline.
 *
 * DESIGN:
 *  - The provider is cfg'd (FI_PROVIDER wins, as libfabric users expect);
 *    the default is "tcp;ofi_rxm".  We ask for the mr_mode bits that
 *    verbs, EFA and CXI need (FI_MR_LOCAL, VIRT_ADDR, ALLOCATED, PROV_KEY,
 *    ENDPOINT) and honour whichever the provider keeps, so the same code
 *    runs on RDMA fabrics.
 *  - The owner of registered memory must drive progress even when the
 *    peer only reads: the progress thread always runs.
 *  - A dead peer often yields no completion at all: every wait has a
 *    deadline; an operation past it is reported -ETIMEDOUT (its context
 *    stays owned by the fabric until the provider lets go of it).
 *
 * THREADING: thread-safe (FI_THREAD_SAFE domain); callbacks run on the
 * progress thread and must not block for long.
 */
#ifndef VP_FABRIC_H
#define VP_FABRIC_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct vp_fab;
struct vp_fab_mr;

typedef uint64_t vp_fab_addr;	/* an fi_addr_t */
#define VP_FAB_ADDR_UNKNOWN UINT64_MAX	/* a sender not in the address vector (FI_ADDR_NOTAVAIL) */

#define VP_FAB_MAX_MSG (64u << 10)	/* largest control message */
#define VP_FAB_NAME_MAX 64		/* largest endpoint name */

/*
 * Called on the progress thread for each message received; msg is valid
 * during the call only.  src is the sender as the provider saw it
 * (FI_SOURCE): the address vector entry its connection maps to, or
 * VP_FAB_ADDR_UNKNOWN for a sender that was never inserted.  Header
 * fields are the sender's word; src is the provider's.
 */
typedef void (*vp_fab_recv_cb)(void *arg, vp_fab_addr src, const void *msg, size_t len);

#define VP_FAB_LISTEN 1u	/* bind node:service */
#define VP_FAB_HMEM 2u		/* open with FI_HMEM if the provider has it (GPU-direct) */

/*
 * Opens an endpoint.  provider: NULL or "" for $FI_PROVIDER or the
 * default.  With VP_FAB_LISTEN in flags, node:service is the local
 * address to bind (node may be NULL: any); otherwise the endpoint takes
 * any local address.  With VP_FAB_HMEM, the endpoint is opened with
 * FI_HMEM where the provider offers it, so that vp_fab_mr_reg_dev() can
 * register CUDA device memory.  Returns NULL with a message in err.
 */
struct vp_fab *vp_fab_open(const char *provider, const char *node,
			   const char *service, unsigned int flags, vp_fab_recv_cb cb,
			   void *cb_arg, char *err, size_t errlen);
/*
 * Stops the progress thread and frees everything.  Registered memory must
 * be closed first.  An endpoint that vp_fab_shutdown() left open is kept
 * (reachable) until the process ends.
 */
void vp_fab_close(struct vp_fab *fab);
/*
 * The first half of vp_fab_close(): stops the progress thread and closes
 * the endpoint, which ends every posted operation.  Then the caller's
 * registrations may go (a read given up on names its local memory's:
 * closing that first crashed libfabric's tcp provider at exit), and
 * vp_fab_close() does the rest.  Nothing may be sent or read after it.
 * With reads given up on still posted (a link cut), the endpoint stays
 * open instead (closing it under them crashed rxm), and nothing lands:
 * no thread progresses it any more.
 */
void vp_fab_shutdown(struct vp_fab *fab);

/* The provider in use, e.g. "tcp;ofi_rxm". */
const char *vp_fab_provider(const struct vp_fab *fab);
/*
 * 0: the provider has no FI_HMEM; 1: it has, but the endpoint was opened
 * without it; 2: the endpoint can register device memory.
 */
int vp_fab_has_hmem(const struct vp_fab *fab);

/* This endpoint's name, for a peer's vp_fab_insert_name().  Returns its length or -errno. */
int vp_fab_name(struct vp_fab *fab, void *buf, size_t len);
/*
 * Adds a peer by its endpoint name.  A name whose length or address
 * family is not the provider's is refused (-EINVAL) before the provider
 * sees it.  Returns 0 or -errno.
 */
int vp_fab_insert_name(struct vp_fab *fab, const void *name, size_t len,
		       vp_fab_addr *out);
/* Adds a peer by node:service (resolved by the provider).  Returns 0 or -errno. */
int vp_fab_insert_host(struct vp_fab *fab, const char *node,
		       const char *service, vp_fab_addr *out);
void vp_fab_remove(struct vp_fab *fab, vp_fab_addr addr);

/*
 * Sends len bytes (at most VP_FAB_MAX_MSG) to dest and waits for the
 * send completion until deadline_s seconds from now.  May block.  One
 * send to an address is in flight at a time (the next waits for it), so
 * messages to a peer complete there in the order they were sent, whatever
 * the provider does with large ones.  Returns 0; -EAGAIN if the provider took nothing before the deadline
 * (the message was not sent: a peer still connecting, or a full queue);
 * -ETIMEDOUT if it was posted but did not complete in time (it may still
 * arrive); or another -errno.
 */
int vp_fab_send(struct vp_fab *fab, vp_fab_addr dest, const void *msg,
		size_t len, double deadline_s);

/* Makes a message in buf (at most cap bytes): returns its length, or -errno. */
typedef ssize_t (*vp_fab_make_cb)(void *arg, void *buf, size_t cap);

#define VP_FAB_SEND_UNTRUSTED 1u	/* as vp_fab_send_untrusted() */
#define VP_FAB_SEND_NOW 2u		/* a slot now or -EAGAIN, one try to post, and nobody waits */

/*
 * vp_fab_send() of a message made in the send buffer, for messages that
 * must leave in the order they are made (a session's, numbered as they
 * are sealed).  A slot is taken first (waiting as vp_fab_send() does).
 * Then, with *order locked (NULL: none), make() writes the message and
 * the provider is asked once; if it does not take it, unmake() (NULL:
 * none) takes the message back, so its number is free again, order is
 * unlocked, and the post is tried again until the deadline.  The wait
 * for the completion is outside order.  With VP_FAB_SEND_NOW the call
 * never blocks: 0 once posted, and the completion frees the slot; while
 * any send to dest's address is in flight it is refused (-EAGAIN), so a
 * peer that takes nothing holds at most one such slot, and it does not
 * count as a stuck send to it.  Returns as vp_fab_send().
 */
int vp_fab_send_made(struct vp_fab *fab, vp_fab_addr dest, pthread_mutex_t *order,
		     vp_fab_make_cb make, void (*unmake)(void *arg), void *arg,
		     double deadline_s, unsigned int flags);

/*
 * Memory registration.  Keys are random 64-bit values where the provider
 * lets us choose them (no FI_MR_PROV_KEY), never a sequence: on providers
 * without memory protection between peers (tcp), a key is what stands
 * between a peer and the memory, so a key is only ever sent sealed.
 * Remote access is granted per registration and only where asked for.
 * Local registrations (read targets, message buffers) are not made at
 * all where the provider does not need them (no FI_MR_LOCAL): tcp does
 * not enforce access flags, so a registration there is readable by
 * whoever has its key.  Where the provider needs them (verbs, EFA, CXI)
 * they are made without FI_REMOTE_READ, and those providers enforce it.
 */
#define VP_FAB_MR_REMOTE_READ 1u	/* peers may read it with the key */

/*
 * vp_fab_send() to a peer that has not authenticated: from a pool of slots
 * of its own (so such peers can never take the slots of authenticated
 * ones), one attempt to post (-EAGAIN at once if the provider cannot take
 * it, or if a send to that address is already stuck), then up to wait_s
 * for the completion.  Never blocks longer than wait_s.
 */
int vp_fab_send_untrusted(struct vp_fab *fab, vp_fab_addr dest, const void *msg,
			  size_t len, double wait_s);

/*
 * Registers buf[0..len) for remote reads (and local use as a read
 * target).  *key and *remote_addr are what a peer passes to
 * vp_fab_read().  Returns 0 or -errno.
 */
int vp_fab_mr_reg(struct vp_fab *fab, void *buf, size_t len,
		  struct vp_fab_mr **mr, uint64_t *key, uint64_t *remote_addr);
/* Registers buf[0..len) as a local read target only.  Returns 0 or -errno. */
int vp_fab_mr_reg_local(struct vp_fab *fab, void *buf, size_t len, struct vp_fab_mr **mr);
/*
 * Registers CUDA device memory of cuda_device (FI_MR_HMEM), or host
 * memory when cuda_device is -1; access: 0 (a local read target) or
 * VP_FAB_MR_REMOTE_READ.  key and remote_addr may be NULL.  -EOPNOTSUPP
 * when the endpoint has no FI_HMEM; the provider's error when it refuses
 * the memory.
 */
int vp_fab_mr_reg_dev(struct vp_fab *fab, void *buf, size_t len, int cuda_device,
		      unsigned int access, struct vp_fab_mr **mr, uint64_t *key,
		      uint64_t *remote_addr);
void vp_fab_mr_close(struct vp_fab_mr *mr);

struct vp_fab_read_req {
	struct vp_fab_mr *mr;	/* registered memory holding local */
	void *local;		/* target */
	size_t len;
	uint64_t remote_addr;	/* as the peer's vp_fab_mr_reg() said, plus an offset */
	uint64_t key;
};

/*
 * Reads n pieces from src's registered memory into local memory, keeping
 * up to inflight reads outstanding, and waits until all completed, or
 * until deadline_s seconds passed without any read completing (a slow
 * peer that makes progress is waited for; a dead or stopped one is not).
 * Returns 0, -EIO (a piece failed; none is still posted), or -ETIMEDOUT:
 * then reads may still be posted and land later, so their memory must
 * not be reused until vp_fab_close().
 */
int vp_fab_read(struct vp_fab *fab, vp_fab_addr src,
		const struct vp_fab_read_req *reqs, size_t n, unsigned int inflight,
		double deadline_s);
/*
 * vp_fab_read(), and done(arg, i) for each request i as it completes,
 * called in the caller's thread while later reads are still in flight.
 */
int vp_fab_read_cb(struct vp_fab *fab, vp_fab_addr src,
		   const struct vp_fab_read_req *reqs, size_t n, unsigned int inflight,
		   double deadline_s, void (*done)(void *arg, size_t req), void *arg);
/*
 * Shutdown: every wait for reads, now and from now on, ends at once, with
 * -ECANCELED (or -ETIMEDOUT where reads are still posted, as above), so
 * that a fetch from a silent peer does not hold an unmount for its
 * deadline.  Thread-safe; there is no undo.
 */
void vp_fab_cancel_reads(struct vp_fab *fab);

/*
 * Reads that a vp_fab_read() gave up on (-ETIMEDOUT) and that are still
 * posted: once 0, none can land any more, and their memory may be reused.
 */
unsigned int vp_fab_orphan_reads(struct vp_fab *fab);

/* Translates a -FI_E* code (or -errno) to -errno. */
int vp_fab_errno(int fi_rc);

#endif
