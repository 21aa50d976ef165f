/*
 * gpu: the GPU tier's placement.  The newest version of each file is
 * mirrored into device memory after its commit, within gpu_cache and
 * never past what the device has free.  A newer version replaces the
 * mirror of the older one (the older stays in RAM, or on the PFS); when
 * the budget is short, the mirrors used least recently go first.
 *
 * Local processes can map a mirror through a CUDA IPC handle
 * (vp_gpu_export): the mirror then stays allocated, even after a newer
 * version replaces it, until the lease is released.
 *
 * A consumer stages a version into device memory while its chunks still
 * arrive (vp_gpu_stage_*): each chunk goes to the device as soon as it is
 * here and checked, overlapping the network with the host-to-device copy.
 * The version's mirror then takes the staged memory without a copy.
 *
 * DESIGN: vp_gpu_mirror() only queues (it is called under the namespace
 * lock); one worker thread copies the bytes in through the tier.  A newer
 * request for a file replaces a queued older one (latest wins).  If the
 * device fails, the tier turns itself off, says so once, and the mount
 * goes on from RAM.
 *
 * THREADING: every function is thread-safe, except that one stage is
 * used by one thread at a time (its copies and its bind or abort).  The
 * worker never takes the namespace lock.  Lock order (g->lock,
 * g->tier_lock): lock.h.
 */
#ifndef VP_GPU_H
#define VP_GPU_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "tier.h"

struct vp_data;
struct vp_gpu;
struct vp_gpu_lease;
struct vp_gpu_stage;

/*
 * Opens the tier (ops, device dev) with a budget of bytes.  Returns NULL
 * with the reason in why when there is no usable device.
 */
struct vp_gpu *vp_gpu_new(const struct vp_tier_ops *ops, int dev, uint64_t budget,
			  char *why, size_t whylen);
/*
 * Pins the pool's slabs for the device (now and as they come), so that
 * mirrors copy straight from the cache.  The pool must outlive g.
 */
struct vp_pool;
void vp_gpu_attach_pool(struct vp_gpu *g, struct vp_pool *pool);
/* Stops the worker, frees every mirror (leases included), closes the tier. */
void vp_gpu_free(struct vp_gpu *g);

/* Queues a mirror of version `version` of file id; takes a reference to d. */
void vp_gpu_mirror(struct vp_gpu *g, uint64_t id, uint64_t version, struct vp_data *d);
/* The file is gone: its mirror (unless leased) is freed. */
void vp_gpu_forget(struct vp_gpu *g, uint64_t id);
/* Waits until every queued mirror is done (tests, tools). */
void vp_gpu_drain(struct vp_gpu *g);

/*
 * Copies len bytes at off of the mirror of (id, version) into buf, through
 * the staging buffers.  Returns bytes copied, or -ENOENT when that version
 * is not mirrored (any more), -EIO on a device error.
 */
ssize_t vp_gpu_read(struct vp_gpu *g, uint64_t id, uint64_t version, void *buf,
		    size_t len, uint64_t off);

/* The size of the mirror of (id, version), or UINT64_MAX if there is none. */
uint64_t vp_gpu_mirror_size(struct vp_gpu *g, uint64_t id, uint64_t version);

/*
 * Exports the mirror of file id: fills handle[VP_TIER_IPC_HANDLE], its
 * version and size, and returns a lease that keeps the device memory
 * until vp_gpu_lease_release().  -ENOENT if the file is not mirrored.
 */
int vp_gpu_export(struct vp_gpu *g, uint64_t id, void *handle, uint64_t *version,
		  uint64_t *size, struct vp_gpu_lease **lease);
void vp_gpu_lease_release(struct vp_gpu *g, struct vp_gpu_lease *lease);

struct vp_gpu_stats {
	uint64_t budget, used;		/* bytes */
	uint64_t files, leased;		/* mirrors, mirrors held by leases */
	uint64_t mirrored, evicted, failed;	/* mirrors made, evicted, failed */
	uint64_t reads, read_bytes;	/* copies back to the host */
	uint64_t staged, staged_bytes;	/* mirrors that took memory staged while the bytes arrived */
	uint64_t pinned_copies;		/* mirrors copied straight from their pinned memory file */
	int on;				/* 0: off after a device error */
};
void vp_gpu_get_stats(struct vp_gpu *g, struct vp_gpu_stats *st);

/*
 * Consumer: device memory for a version of size bytes that is still
 * arriving, within the budget (the least recently used mirrors make
 * room).  NULL: no tier, off, or no room (the version is mirrored after
 * its commit as usual).
 */
struct vp_gpu_stage *vp_gpu_stage_begin(struct vp_gpu *g, uint64_t size);
/*
 * Copies len bytes of src, the version's bytes at off, to the device now
 * (src may be reused on return).  Each byte must be copied once.  A
 * failure marks the stage failed; bind then drops it.
 */
void vp_gpu_stage_copy(struct vp_gpu_stage *s, uint64_t off, const void *src, size_t len);
/*
 * The version is complete as d: the mirror request of d (after its
 * commit) takes the staged memory.  An incomplete or failed stage is
 * dropped; one nobody takes is freed after a while.  s is gone after.
 */
void vp_gpu_stage_bind(struct vp_gpu_stage *s, struct vp_data *d);
/* Drops a stage (the transfer failed).  s is gone after. */
void vp_gpu_stage_abort(struct vp_gpu_stage *s);
/*
 * GPU-direct: the stage's device memory (its size as begun), for the
 * fabric to write the version's bytes into directly.
 */
void *vp_gpu_stage_mem(struct vp_gpu_stage *s);
uint64_t vp_gpu_stage_size(struct vp_gpu_stage *s);
/*
 * The fabric wrote the version's bytes [off, off + len) straight into the
 * stage's memory: copies them to dst (host memory, filled on return) and
 * counts them as staged, as vp_gpu_stage_copy() would have.  Returns 0,
 * or -EIO / -EINVAL (the stage failed; on -EIO the tier is off).
 */
int vp_gpu_stage_landed(struct vp_gpu_stage *s, uint64_t off, void *dst, size_t len);
/*
 * Drops a stage whose memory a network read that timed out may still
 * write into: the memory stays allocated (and counted) until
 * vp_gpu_free().  s is gone after.
 */
void vp_gpu_stage_quarantine(struct vp_gpu_stage *s);
/*
 * A lease on the mirror of (id, version) with its device memory and size,
 * to serve it to consumers (GPU-direct); the memory stays until
 * vp_gpu_lease_release(), even if a newer version replaces the mirror.
 * NULL if that version is not mirrored (yet).
 */
struct vp_gpu_lease *vp_gpu_hold(struct vp_gpu *g, uint64_t id, uint64_t version,
				 void **mem, uint64_t *size);
/* The CUDA device the tier's memory is on, or -1 when it is host memory (ram, fake). */
int vp_gpu_cuda_device(struct vp_gpu *g);
/* The device ordinal. */
int vp_gpu_device(struct vp_gpu *g);
/*
 * The tier's part of status ("tiers.gpu"): a new reference, or NULL when
 * memory ran out.  Takes g->lock (lock.h), never the namespace lock.
 */
json_t *vp_gpu_status(struct vp_gpu *g);

/*
 * gpu_observer.c: the namespace's observer that mirrors and forgets, and
 * the tier below its cache (ns.h; arg: g); the tier's own gauges in the
 * Prometheus text format (NULL g: nothing).
 */
struct vp_ns_observer;
struct vp_ns_tier;
extern const struct vp_ns_observer vp_gpu_ns_observer;
extern const struct vp_ns_tier vp_gpu_ns_tier;
void vp_gpu_metrics(struct vp_gpu *g, FILE *out);

#endif
