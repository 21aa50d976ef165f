/*
 * tier: device memory that holds copies of cached file bytes (the GPU
 * tier), behind one small interface with three implementations:
 *   vp_tier_cuda  the CUDA runtime (compiled in when the build finds it:
 *                 /usr/local/cuda or $CUDA_HOME; VP_HAVE_CUDA)
 *   vp_tier_ram   host memory: the same code paths with no device, for
 *                 tools and as the reference in tests
 *   a fake device in tests/unit/fakes/, with capacity, injected errors and
 *   asynchronous completion, for the placement logic's unit tests.
 *
 * DESIGN: copies are asynchronous.  copy_in/copy_out queue the work and
 * return; sync() waits for everything queued on the tier.  The CUDA
 * implementation stages through pinned buffers (cudaHostAlloc) on several
 * streams, so the host-side memcpy of one piece overlaps the DMA of the
 * previous ones.  Managed memory is never used; alloc never asks for more
 * than the device reports free.
 *
 * THREADING: one tier is driven by one thread at a time (the GPU worker);
 * open() and close() are not thread-safe.
 */
#ifndef VP_TIER_H
#define VP_TIER_H

#include <stddef.h>
#include <stdint.h>

#define VP_TIER_IPC_HANDLE 64		/* bytes of an exported handle (cudaIpcMemHandle_t) */

struct vp_tier;

struct vp_tier_ops {
	const char *name;
	/*
	 * Device memory the network can write into only through FI_HMEM
	 * (CUDA); 0: the tier's "device" memory is host memory (ram, fake),
	 * which any provider registers.
	 */
	int device_mem;
	/* Opens device dev; NULL with the reason in why if there is none. */
	struct vp_tier *(*open)(int dev, char *why, size_t whylen);
	void (*close)(struct vp_tier *t);
	/* A short description of the device, e.g. "NVIDIA H100 80GB HBM3". */
	const char *(*device_name)(struct vp_tier *t);
	int (*mem_info)(struct vp_tier *t, uint64_t *free_bytes, uint64_t *total_bytes);
	/* Returns 0 with *mem set, or -ENOMEM / -EIO. */
	int (*alloc)(struct vp_tier *t, uint64_t size, void **mem);
	void (*free)(struct vp_tier *t, void *mem);
	/* Queue a copy host -> device (off bytes into mem) or device -> host. */
	int (*copy_in)(struct vp_tier *t, void *mem, uint64_t off, const void *src, size_t len);
	int (*copy_out)(struct vp_tier *t, void *dst, const void *mem, uint64_t off, size_t len);
	/* Waits for every queued copy; returns 0 or the first error (-EIO). */
	int (*sync)(struct vp_tier *t);
	/* Fills out[VP_TIER_IPC_HANDLE] with a handle another process can map. */
	int (*export_ipc)(struct vp_tier *t, void *mem, void *out);
	/*
	 * Pins host memory (the cache's slabs) so that copy_in from it goes
	 * straight to the device, without the staging copy.  Thread-safe,
	 * unlike the rest; may be NULL.  Undone at close().
	 */
	int (*register_host)(struct vp_tier *t, void *base, size_t len);
	/*
	 * Pins a read-only host mapping (a version's sealed memory file) for
	 * the copies that follow, as register_host, until unpin_host(base).
	 * Returns 0 or -errno (then copies go through staging).  May be NULL.
	 */
	int (*pin_host_ro)(struct vp_tier *t, const void *base, size_t len);
	void (*unpin_host)(struct vp_tier *t, const void *base);
};

extern const struct vp_tier_ops vp_tier_ram;
#ifdef VP_HAVE_CUDA
extern const struct vp_tier_ops vp_tier_cuda;
#endif

/* The GPU tier this build has: CUDA, or NULL (with why) when built without. */
const struct vp_tier_ops *vp_tier_gpu_ops(const char **why);

#endif
