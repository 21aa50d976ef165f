/*
 * gpu_observer: the GPU tier's faces to the namespace (ns.h) and to the
 * metrics endpoint.  As an observer it mirrors every committed version and
 * forgets unlinked files; as the tier below the RAM cache it gives the
 * namespace the bytes back.  fs/main.c registers both.
 */
#include <inttypes.h>
#include <stdio.h>

#include "gpu.h"
#include "ns.h"

static void gpu_on_commit(void *arg, uint64_t ino, uint64_t version,
			  struct vp_data *d)
{
	vp_gpu_mirror(arg, ino, version, d);	/* only queues: the newest wins */
}

static void gpu_on_unlink(void *arg, uint64_t ino)
{
	vp_gpu_forget(arg, ino);
}

const struct vp_ns_observer vp_gpu_ns_observer = {
	.on_commit = gpu_on_commit,
	.on_unlink = gpu_on_unlink,
};

static uint64_t gpu_size(void *arg, uint64_t ino, uint64_t version)
{
	return vp_gpu_mirror_size(arg, ino, version);
}

static ssize_t gpu_read(void *arg, uint64_t ino, uint64_t version, void *buf,
			size_t len, uint64_t off)
{
	return vp_gpu_read(arg, ino, version, buf, len, off);
}

static void gpu_usage(void *arg, uint64_t *used, uint64_t *budget)
{
	struct vp_gpu_stats st;

	vp_gpu_get_stats(arg, &st);
	*used = st.used;
	*budget = st.budget;
}

const struct vp_ns_tier vp_gpu_ns_tier = {
	.name = "gpu",
	.size = gpu_size,
	.read = gpu_read,
	.usage = gpu_usage,
};

void vp_gpu_metrics(struct vp_gpu *g, FILE *out)
{
	struct vp_gpu_stats st;

	if (!g)
		return;
	vp_gpu_get_stats(g, &st);
	fprintf(out, "# HELP viperfs_gpu_mirrors Files whose newest version is mirrored in GPU memory.\n"
		"# TYPE viperfs_gpu_mirrors gauge\nviperfs_gpu_mirrors %" PRIu64 "\n", st.files);
}
