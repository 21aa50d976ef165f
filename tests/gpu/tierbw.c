/*
 * tierbw: the GPU tier's host<->device bandwidth, as a ratio to a raw
 * cudaMemcpy of pinned memory, measured side by side in one run
 * (make bench-gpu, tests/gpu/run.sh).  Also checks that the bytes come
 * back exactly.
 *
 *   tierbw [SIZE_MiB] [RUNS] [DEVICE]
 *
 * The ratios compare the daemon's own path, to and from the cache's slabs
 * (pinned with cudaHostRegister), with the best case, a cudaMemcpy of
 * memory allocated pinned.  The tier's path for pageable memory, through
 * its pinned staging buffers, is printed too.  Prints medians.
 */
#define _GNU_SOURCE
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../engine/tier.h"

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp);
	return v[n / 2];
}

/*
 * One round trip through the tier: host into dmem, then back into back.
 * Sets the two times; returns the bytes that differ, or -1 on an error.
 */
static long round_trip(struct vp_tier *t, void *dmem, const char *host, char *back,
		       size_t size, double *t_in, double *t_out)
{
	double t0 = now();
	long bad = 0;

	if (vp_tier_cuda.copy_in(t, dmem, 0, host, size) || vp_tier_cuda.sync(t))
		return -1;
	*t_in = now() - t0;
	memset(back, 0, size);
	t0 = now();
	if (vp_tier_cuda.copy_out(t, back, dmem, 0, size))
		return -1;
	*t_out = now() - t0;
	if (memcmp(back, host, size))	/* count the differing bytes only when some differ */
		for (size_t i = 0; i < size; i++)
			bad += back[i] != host[i];
	return bad;
}

#define CHECK(call) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) { \
	fprintf(stderr, "tierbw: %s: %s\n", #call, cudaGetErrorString(e_)); return 1; } } while (0)

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024;
	int runs = argc > 2 ? atoi(argv[2]) : 5, dev = argc > 3 ? atoi(argv[3]) : 0;
	size_t size = mib << 20;
	double t_in[64], t_out[64], t_reg[64], t_regout[64], r_in[64], r_out[64];
	char why[512];
	struct vp_tier *t;
	void *dmem, *pinned;
	char *host, *back;
	size_t bad = 0;

	if (runs < 1 || runs > 64)
		runs = 5;
	t = vp_tier_cuda.open(dev, why, sizeof(why));
	if (!t) {
		fprintf(stderr, "tierbw: no GPU tier: %s\n", why);
		return 2;
	}
	host = malloc(size);
	back = malloc(size);
	if (!host || !back || vp_tier_cuda.alloc(t, size, &dmem)) {
		fprintf(stderr, "tierbw: cannot allocate %zu MiB\n", mib);
		return 1;
	}
	for (size_t i = 0; i < size; i++)
		host[i] = (char)(i * 131 + (i >> 20));
	CHECK(cudaHostAlloc(&pinned, size, cudaHostAllocDefault));
	memcpy(pinned, host, size);
	for (int r = 0; r < runs; r++) {
		long diff = round_trip(t, dmem, host, back, size, &t_in[r], &t_out[r]);
		double t0;

		if (diff < 0)
			return 1;
		bad += (size_t)diff;
		t0 = now();
		CHECK(cudaMemcpy(dmem, pinned, size, cudaMemcpyHostToDevice));
		r_in[r] = now() - t0;
		t0 = now();
		CHECK(cudaMemcpy(pinned, dmem, size, cudaMemcpyDeviceToHost));
		r_out[r] = now() - t0;
	}
	/* the daemon's own path: the cache's slabs are pinned (register_host) */
	if (vp_tier_cuda.register_host(t, host, size) || vp_tier_cuda.register_host(t, back, size)) {
		fprintf(stderr, "tierbw: cudaHostRegister failed\n");
		return 1;
	}
	for (int r = 0; r < runs; r++) {
		long diff = round_trip(t, dmem, host, back, size, &t_reg[r], &t_regout[r]);

		if (diff < 0)
			return 1;
		bad += (size_t)diff;
	}
	{
		double ti = median(t_in, runs), to = median(t_out, runs), tr = median(t_reg, runs);
		double tro = median(t_regout, runs);
		double ri = median(r_in, runs), ro = median(r_out, runs);

		printf("GPU tier bandwidth: %zu MiB, %d runs, medians, device %d (%s)\n", mib, runs, dev,
		       vp_tier_cuda.device_name(t));
		printf("host->device  tier, from the cache's pinned slabs %6.2f GB/s   raw pinned cudaMemcpy %6.2f GB/s   ratio %.2f (target >= 0.8)\n",
		       size / tr / 1e9, size / ri / 1e9, ri / tr);
		printf("host->device  tier, from pageable memory (staging) %6.2f GB/s   ratio %.2f\n",
		       size / ti / 1e9, ri / ti);
		printf("device->host  tier, into the cache's pinned slabs %6.2f GB/s   raw pinned cudaMemcpy %6.2f GB/s   ratio %.2f (target >= 0.8)\n",
		       size / tro / 1e9, size / ro / 1e9, ro / tro);
		printf("device->host  tier, into pageable memory (staging) %6.2f GB/s   ratio %.2f\n",
		       size / to / 1e9, ro / to);
		printf("round trips byte-exact: %s\n", bad ? "NO" : "yes");
		printf("ratio_in=%.3f ratio_out=%.3f exact=%d\n", ri / tr, ro / tro, !bad);
	}
	cudaFreeHost(pinned);
	vp_tier_cuda.free(t, dmem);
	vp_tier_cuda.close(t);
	free(host);
	free(back);
	return bad ? 1 : 0;
}
