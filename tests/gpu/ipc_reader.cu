/*
 * ipc_reader: a second process maps the GPU tier's copy of a file through
 * viperfs's CUDA IPC export and checks it on the device, against the file
 * read through the mount (tests/gpu/run.sh).
 *
 *   ipc_reader PATH
 *
 * Prints one line and exits 0 when the device bytes equal the file's.
 */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "../../tools/viperfs_client.h"
}

/* A position-weighted sum, so that swapped bytes do not cancel out. */
__global__ void weigh(const unsigned char *p, size_t n, unsigned long long *out)
{
	unsigned long long acc = 0;

	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		acc += (unsigned long long)p[i] * (i % 65521 + 1);
	atomicAdd(out, acc);
}

int main(int argc, char **argv)
{
	struct vpc_gpu_export e;
	unsigned long long *d_sum, gpu_sum = 0, file_sum = 0;
	void *ptr = NULL;
	char err[512];
	FILE *f;

	if (argc != 2) {
		fprintf(stderr, "usage: ipc_reader PATH\n");
		return 2;
	}
	if (vpc_gpu_export(argv[1], &e, err, sizeof(err))) {
		fprintf(stderr, "ipc_reader: %s\n", err);
		return 1;
	}
	if (cudaSetDevice(e.device) != cudaSuccess ||
	    cudaIpcOpenMemHandle(&ptr, *(cudaIpcMemHandle_t *)e.handle,
				 cudaIpcMemLazyEnablePeerAccess) != cudaSuccess) {
		fprintf(stderr, "ipc_reader: cudaIpcOpenMemHandle: %s\n",
			cudaGetErrorString(cudaGetLastError()));
		return 1;
	}
	cudaMalloc(&d_sum, sizeof(*d_sum));
	cudaMemset(d_sum, 0, sizeof(*d_sum));
	weigh<<<1024, 256>>>((const unsigned char *)ptr, e.size, d_sum);
	cudaMemcpy(&gpu_sum, d_sum, sizeof(gpu_sum), cudaMemcpyDeviceToHost);
	f = fopen(argv[1], "rb");
	if (f) {
		static unsigned char buf[1 << 20];
		size_t n, at = 0;

		while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
			for (size_t i = 0; i < n; i++, at++)
				file_sum += (unsigned long long)buf[i] * (at % 65521 + 1);
		fclose(f);
	}
	printf("ipc_reader: version %llu, %llu bytes on device %d; device sum %llu, file sum %llu: %s\n",
	       (unsigned long long)e.version, (unsigned long long)e.size, e.device, gpu_sum, file_sum,
	       f && gpu_sum == file_sum ? "OK" : "MISMATCH");
	cudaFree(d_sum);
	cudaIpcCloseMemHandle(ptr);
	vpc_gpu_release(&e);
	return f && gpu_sum == file_sum ? 0 : 1;
}
