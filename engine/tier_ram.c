/* tier_ram: the tier interface over host memory; see tier.h. */
#define _GNU_SOURCE
#include "tier.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct vp_tier {
	int dev;
};

static struct vp_tier *ram_open(int dev, char *why, size_t whylen)
{
	struct vp_tier *t = calloc(1, sizeof(*t));

	if (!t)
		snprintf(why, whylen, "out of memory");
	else
		t->dev = dev;
	return t;
}

static void ram_close(struct vp_tier *t)
{
	free(t);
}

static const char *ram_device_name(struct vp_tier *t)
{
	(void)t;
	return "host memory";
}

static int ram_mem_info(struct vp_tier *t, uint64_t *free_bytes, uint64_t *total_bytes)
{
	long pages = sysconf(_SC_AVPHYS_PAGES), all = sysconf(_SC_PHYS_PAGES);
	long page = sysconf(_SC_PAGESIZE);

	(void)t;
	*free_bytes = pages > 0 ? (uint64_t)pages * (uint64_t)page : 0;
	*total_bytes = all > 0 ? (uint64_t)all * (uint64_t)page : 0;
	return 0;
}

static int ram_alloc(struct vp_tier *t, uint64_t size, void **mem)
{
	(void)t;
	*mem = malloc(size ? size : 1);
	return *mem ? 0 : -ENOMEM;
}

static void ram_free(struct vp_tier *t, void *mem)
{
	(void)t;
	free(mem);
}

static int ram_copy_in(struct vp_tier *t, void *mem, uint64_t off, const void *src, size_t len)
{
	(void)t;
	memcpy((char *)mem + off, src, len);
	return 0;
}

static int ram_copy_out(struct vp_tier *t, void *dst, const void *mem, uint64_t off, size_t len)
{
	(void)t;
	memcpy(dst, (const char *)mem + off, len);
	return 0;
}

static int ram_sync(struct vp_tier *t)
{
	(void)t;
	return 0;
}

/*
 * Host memory has no IPC handle another process could map: the "handle"
 * is the address and this pid, enough to test the lease plumbing.
 */
static int ram_export_ipc(struct vp_tier *t, void *mem, void *out)
{
	pid_t pid = getpid();

	(void)t;
	memset(out, 0, VP_TIER_IPC_HANDLE);
	memcpy(out, &mem, sizeof(mem));
	memcpy((char *)out + sizeof(mem), &pid, sizeof(pid));
	return 0;
}

const struct vp_tier_ops vp_tier_ram = {
	.name = "ram",
	.open = ram_open,
	.close = ram_close,
	.device_name = ram_device_name,
	.mem_info = ram_mem_info,
	.alloc = ram_alloc,
	.free = ram_free,
	.copy_in = ram_copy_in,
	.copy_out = ram_copy_out,
	.sync = ram_sync,
	.export_ipc = ram_export_ipc,
};

const struct vp_tier_ops *vp_tier_gpu_ops(const char **why)
{
#ifdef VP_HAVE_CUDA
	*why = NULL;
	return &vp_tier_cuda;
#else
	*why = "this viperfs was built without the CUDA runtime (no /usr/local/cuda or $CUDA_HOME at build time)";
	return NULL;
#endif
}
