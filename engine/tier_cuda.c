/* tier_cuda: the tier interface over the CUDA runtime; see tier.h. */
#ifdef VP_HAVE_CUDA
#define _GNU_SOURCE
#include "tier.h"

#include <cuda_runtime_api.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define NSTAGE 4			/* pinned staging buffers, one stream each */
#define STAGE_BYTES (8u << 20)
#define MAX_REG 1024			/* registered host ranges (64 MiB cache slabs) */

struct vp_tier {
	int dev;
	char name[256];
	void *stage[NSTAGE];		/* cudaHostAlloc: pinned */
	cudaStream_t stream[NSTAGE];
	cudaEvent_t done[NSTAGE];	/* the last copy out of stage[i] finished */
	unsigned int next;
	int error;			/* first asynchronous failure, -EIO */
	pthread_mutex_t reg_lock;
	struct { char *base; size_t len; } reg[MAX_REG];	/* pinned host ranges, protected by reg_lock */
	unsigned int nreg;
};

static int cuda_err(struct vp_tier *t, cudaError_t e, const char *what)
{
	if (e == cudaSuccess)
		return 0;
	vp_log(LOG_ERR, "gpu", "%s on device %d: %s", what, t ? t->dev : -1, cudaGetErrorString(e));
	if (t && !t->error)
		t->error = -EIO;
	return e == cudaErrorMemoryAllocation ? -ENOMEM : -EIO;
}

static void cuda_close(struct vp_tier *t)
{
	if (!t)
		return;
	cudaSetDevice(t->dev);
	for (unsigned int i = 0; i < t->nreg; i++)
		cudaHostUnregister(t->reg[i].base);
	pthread_mutex_destroy(&t->reg_lock);
	for (int i = 0; i < NSTAGE; i++) {
		if (t->done[i])
			cudaEventDestroy(t->done[i]);
		if (t->stream[i])
			cudaStreamDestroy(t->stream[i]);
		if (t->stage[i])
			cudaFreeHost(t->stage[i]);
	}
	free(t);
}

static struct vp_tier *cuda_open(int dev, char *why, size_t whylen)
{
	struct cudaDeviceProp prop;
	struct vp_tier *t;
	cudaError_t e;
	int n = 0;

	e = cudaGetDeviceCount(&n);
	if (e != cudaSuccess) {
		snprintf(why, whylen, "cudaGetDeviceCount: %s", cudaGetErrorString(e));
		return NULL;
	}
	if (n == 0 || dev < 0 || dev >= n) {
		snprintf(why, whylen, "gpu_device=%d, but this node has %d CUDA device(s)", dev, n);
		return NULL;
	}
	t = calloc(1, sizeof(*t));
	if (!t) {
		snprintf(why, whylen, "out of memory");
		return NULL;
	}
	t->dev = dev;
	pthread_mutex_init(&t->reg_lock, NULL);
	if ((e = cudaSetDevice(dev)) != cudaSuccess ||
	    (e = cudaGetDeviceProperties(&prop, dev)) != cudaSuccess)
		goto err;
	snprintf(t->name, sizeof(t->name), "%s", prop.name);
	for (int i = 0; i < NSTAGE; i++) {
		if ((e = cudaHostAlloc(&t->stage[i], STAGE_BYTES, cudaHostAllocDefault)) != cudaSuccess ||
		    (e = cudaStreamCreateWithFlags(&t->stream[i], cudaStreamNonBlocking)) != cudaSuccess ||
		    (e = cudaEventCreateWithFlags(&t->done[i], cudaEventDisableTiming)) != cudaSuccess)
			goto err;
	}
	return t;
err:
	snprintf(why, whylen, "device %d: %s", dev, cudaGetErrorString(e));
	cuda_close(t);
	return NULL;
}

static const char *cuda_device_name(struct vp_tier *t)
{
	return t->name;
}

static int cuda_mem_info(struct vp_tier *t, uint64_t *free_bytes, uint64_t *total_bytes)
{
	size_t f = 0, tot = 0;
	int rc = cuda_err(t, cudaSetDevice(t->dev), "cudaSetDevice");

	if (!rc)
		rc = cuda_err(t, cudaMemGetInfo(&f, &tot), "cudaMemGetInfo");
	*free_bytes = f;
	*total_bytes = tot;
	return rc;
}

static int cuda_alloc(struct vp_tier *t, uint64_t size, void **mem)
{
	int rc = cuda_err(t, cudaSetDevice(t->dev), "cudaSetDevice");

	*mem = NULL;
	if (!rc) {
		/* cudaMalloc, never cudaMallocManaged: the bytes stay on the device */
		cudaError_t e = cudaMalloc(mem, size ? size : 1);

		if (e == cudaErrorMemoryAllocation) {
			cudaGetLastError();	/* not sticky: the device is fine */
			return -ENOMEM;
		}
		rc = cuda_err(t, e, "cudaMalloc");
	}
	return rc;
}

static void cuda_free(struct vp_tier *t, void *mem)
{
	cudaSetDevice(t->dev);
	cuda_err(t, cudaFree(mem), "cudaFree");
}

/* The next staging buffer, once the copy that last used it has finished. */
static int take_stage(struct vp_tier *t, unsigned int *slot)
{
	*slot = t->next++ % NSTAGE;
	return cuda_err(t, cudaEventSynchronize(t->done[*slot]), "cudaEventSynchronize");
}

/*
 * Pins a host range (flags: cudaHostRegisterDefault, or ReadOnly for a
 * read-only mapping); the CUDA call runs with no lock held (is_pinned()
 * is on the copy path).
 */
static int register_range(struct vp_tier *t, void *base, size_t len, unsigned int flags)
{
	int full, rc;

	pthread_mutex_lock(&t->reg_lock);
	full = t->nreg == MAX_REG;
	pthread_mutex_unlock(&t->reg_lock);
	if (full)
		return -ENOSPC;
	cudaSetDevice(t->dev);
	rc = cuda_err(NULL, cudaHostRegister(base, len, flags), "cudaHostRegister");
	if (rc)
		return rc;
	pthread_mutex_lock(&t->reg_lock);
	full = t->nreg == MAX_REG;	/* (another range came meanwhile) */
	if (!full) {
		t->reg[t->nreg].base = base;
		t->reg[t->nreg].len = len;
		t->nreg++;
	}
	pthread_mutex_unlock(&t->reg_lock);
	if (full) {
		cudaHostUnregister(base);
		return -ENOSPC;
	}
	return 0;
}

static int cuda_register_host(struct vp_tier *t, void *base, size_t len)
{
	return register_range(t, base, len, cudaHostRegisterDefault);
}

/* A sealed memory file's read-only mapping, where the device can pin one. */
static int cuda_pin_host_ro(struct vp_tier *t, const void *base, size_t len)
{
	int ro = 0;

	if (cudaDeviceGetAttribute(&ro, cudaDevAttrHostRegisterReadOnlySupported, t->dev) != cudaSuccess || !ro)
		return -ENOTSUP;
	return register_range(t, (void *)(uintptr_t)base, len, cudaHostRegisterReadOnly);
}

static void cuda_unpin_host(struct vp_tier *t, const void *base)
{
	int found = 0;

	pthread_mutex_lock(&t->reg_lock);
	for (unsigned int i = 0; i < t->nreg && !found; i++) {
		if (t->reg[i].base != base)
			continue;
		t->reg[i] = t->reg[--t->nreg];
		found = 1;
	}
	pthread_mutex_unlock(&t->reg_lock);
	if (found) {
		cudaSetDevice(t->dev);
		cuda_err(NULL, cudaHostUnregister((void *)(uintptr_t)base), "cudaHostUnregister");
	}
}

/* True if [src, src+len) lies in pinned (registered) host memory. */
static int is_pinned(struct vp_tier *t, const void *src, size_t len)
{
	const char *p = src;
	int found = 0;

	pthread_mutex_lock(&t->reg_lock);
	for (unsigned int i = 0; i < t->nreg && !found; i++)
		found = p >= t->reg[i].base && p + len <= t->reg[i].base + t->reg[i].len;
	pthread_mutex_unlock(&t->reg_lock);
	return found;
}

static int cuda_copy_in(struct vp_tier *t, void *mem, uint64_t off, const void *src, size_t len)
{
	int rc = cuda_err(t, cudaSetDevice(t->dev), "cudaSetDevice");

	if (!rc && is_pinned(t, src, len)) {
		/* the cache's own pinned memory: straight to the device, streams in turn */
		unsigned int s = t->next++ % NSTAGE;

		rc = cuda_err(t, cudaMemcpyAsync((char *)mem + off, src, len,
						 cudaMemcpyHostToDevice, t->stream[s]),
			      "cudaMemcpyAsync to the device");
		return rc;
	}
	while (!rc && len) {
		size_t n = len < STAGE_BYTES ? len : STAGE_BYTES;
		unsigned int s;

		rc = take_stage(t, &s);
		if (rc)
			break;
		/* the host copy into stage s overlaps the DMA out of the others */
		memcpy(t->stage[s], src, n);
		rc = cuda_err(t, cudaMemcpyAsync((char *)mem + off, t->stage[s], n,
						 cudaMemcpyHostToDevice, t->stream[s]),
			      "cudaMemcpyAsync to the device");
		if (!rc)
			rc = cuda_err(t, cudaEventRecord(t->done[s], t->stream[s]), "cudaEventRecord");
		src = (const char *)src + n;
		off += n;
		len -= n;
	}
	return rc;
}

static int cuda_copy_out(struct vp_tier *t, void *dst, const void *mem, uint64_t off, size_t len)
{
	size_t piece[NSTAGE] = { 0 };
	char *out[NSTAGE] = { 0 };
	unsigned int queued = 0, done = 0;
	int rc = cuda_err(t, cudaSetDevice(t->dev), "cudaSetDevice");

	/* reads see every copy queued before them, on any stream */
	for (int i = 0; !rc && i < NSTAGE; i++)
		rc = cuda_err(t, cudaStreamSynchronize(t->stream[i]), "cudaStreamSynchronize");
	if (!rc && is_pinned(t, dst, len)) {
		/* into the cache's own pinned memory: straight from the device */
		rc = cuda_err(t, cudaMemcpyAsync(dst, (const char *)mem + off, len,
						 cudaMemcpyDeviceToHost, t->stream[0]),
			      "cudaMemcpyAsync from the device");
		if (!rc)
			rc = cuda_err(t, cudaStreamSynchronize(t->stream[0]), "cudaStreamSynchronize");
		return rc;
	}
	/* up to NSTAGE pieces in flight; each is copied out of its stage in order */
	while (!rc && (len || done < queued)) {
		if (len && queued - done < NSTAGE) {
			unsigned int s = queued % NSTAGE;
			size_t n = len < STAGE_BYTES ? len : STAGE_BYTES;

			rc = cuda_err(t, cudaMemcpyAsync(t->stage[s], (const char *)mem + off, n,
							 cudaMemcpyDeviceToHost, t->stream[s]),
				      "cudaMemcpyAsync from the device");
			if (!rc)
				rc = cuda_err(t, cudaEventRecord(t->done[s], t->stream[s]),
					      "cudaEventRecord");
			piece[s] = n;
			out[s] = dst;
			dst = (char *)dst + n;
			off += n;
			len -= n;
			queued++;
			continue;
		}
		{
			unsigned int s = done % NSTAGE;

			rc = cuda_err(t, cudaEventSynchronize(t->done[s]), "cudaEventSynchronize");
			if (!rc)
				memcpy(out[s], t->stage[s], piece[s]);
			done++;
		}
	}
	return rc;
}

static int cuda_sync(struct vp_tier *t)
{
	int rc = cuda_err(t, cudaSetDevice(t->dev), "cudaSetDevice");

	for (int i = 0; !rc && i < NSTAGE; i++)
		rc = cuda_err(t, cudaStreamSynchronize(t->stream[i]), "cudaStreamSynchronize");
	if (!rc && t->error)
		rc = t->error;
	t->error = 0;
	return rc;
}

static int cuda_export_ipc(struct vp_tier *t, void *mem, void *out)
{
	cudaIpcMemHandle_t h;
	int rc = cuda_err(t, cudaSetDevice(t->dev), "cudaSetDevice");

	if (!rc)
		rc = cuda_err(t, cudaIpcGetMemHandle(&h, mem), "cudaIpcGetMemHandle");
	if (!rc)
		memcpy(out, &h, sizeof(h) < VP_TIER_IPC_HANDLE ? sizeof(h) : VP_TIER_IPC_HANDLE);
	return rc;
}

const struct vp_tier_ops vp_tier_cuda = {
	.name = "cuda",
	.device_mem = 1,
	.open = cuda_open,
	.close = cuda_close,
	.device_name = cuda_device_name,
	.mem_info = cuda_mem_info,
	.alloc = cuda_alloc,
	.free = cuda_free,
	.copy_in = cuda_copy_in,
	.copy_out = cuda_copy_out,
	.sync = cuda_sync,
	.export_ipc = cuda_export_ipc,
	.register_host = cuda_register_host,
	.pin_host_ro = cuda_pin_host_ro,
	.unpin_host = cuda_unpin_host,
};
#else
/* Built without the CUDA runtime: the GPU tier is off (vp_tier_gpu_ops says why). */
typedef int vp_tier_cuda_compiled_out;
#endif
