/*
 * viperfs_client: a small C client library for local processes that talk
 * to a viperfs daemon (viperctl uses it too).  Link with -lviperfs_client
 * -ljansson (Debian: libjansson-dev); it reads the daemon's JSON answers.
 *
 * GPU export: an inference server on a consumer node maps the weights
 * straight from the GPU tier, with no trip through host memory:
 *
 *	struct vpc_gpu_export e;
 *	char err[256];
 *
 *	if (vpc_gpu_export("/mnt/models/model.pt", &e, err, sizeof(err)))
 *		fail(err);
 *	cudaIpcOpenMemHandle(&ptr, *(cudaIpcMemHandle_t *)e.handle,
 *			     cudaIpcMemLazyEnablePeerAccess);
 *	... use e.size bytes at ptr (version e.version) ...
 *	cudaIpcCloseMemHandle(ptr);
 *	vpc_gpu_release(&e);
 *
 * The device memory stays valid, even when a newer version replaces it in
 * the tier, until vpc_gpu_release() (or the process exits: the lease is
 * the open control connection).
 */
#ifndef VIPERFS_CLIENT_H
#define VIPERFS_CLIENT_H

#include <stddef.h>
#include <stdint.h>

/*
 * Finds the viperfs mount holding path: fills root (the mount's root) and
 * rel (path inside it), both PATH_MAX.  Returns 0, -ENOTSUP (not in a
 * viperfs mount), -ENOTCONN (in a FUSE mount whose daemon is gone) or
 * -errno.
 */
int vpc_find_mount(const char *path, char *root, char *rel);

/*
 * Connects to the daemon of the mount at root.  Returns a socket, or -1
 * with a message on stderr and errno set (ECONNREFUSED, ENOENT: the
 * daemon is gone or its socket was removed).
 */
int vpc_connect(const char *root);

struct vpc_gpu_export {
	int fd;				/* the lease: the open control connection */
	unsigned char handle[64];	/* cudaIpcMemHandle_t */
	uint64_t version, size;
	int device;			/* the CUDA device the memory is on */
};

/*
 * Exports the GPU-resident newest version of the file at path.  Returns 0,
 * or -1 with a message in err (the tier is off, the file is not mirrored,
 * the daemon cannot be reached).
 */
int vpc_gpu_export(const char *path, struct vpc_gpu_export *e, char *err, size_t errlen);
/* Ends the lease; the daemon may then free the memory. */
void vpc_gpu_release(struct vpc_gpu_export *e);

#endif
