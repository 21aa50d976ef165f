/*
 * A fake PFS for the unit tests: a temporary directory, optionally a small
 * tmpfs of its own, so that the tests can make it fail the way a real
 * parallel file system does: full (ENOSPC: the tmpfs is too small, then
 * grown), or read-only (EROFS: remounted ro, then rw).  engine/pfs.c
 * resolves every path beneath the PFS root with openat2, and the flush
 * writes through ordinary file descriptors, so errors come from the file
 * system itself, as they would on Lustre or GPFS.
 *
 * Mounting needs CAP_SYS_ADMIN: fake_pfs_init() returns -EPERM without it,
 * and the test skips what needs it.
 *
 * Included by the unit tests (#include "fakes/fake_pfs.c").
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>

struct fake_pfs {
	char dir[64];
	int mounted;
};

/* A new PFS directory; tmpfs_size ("1m"), if not NULL, mounts a tmpfs of that size there. */
static int fake_pfs_init(struct fake_pfs *p, const char *tmpfs_size)
{
	char opts[64];

	memset(p, 0, sizeof(*p));
	strcpy(p->dir, "/tmp/vp-test-fakepfs-XXXXXX");
	if (!mkdtemp(p->dir))
		return -errno;
	if (!tmpfs_size)
		return 0;
	snprintf(opts, sizeof(opts), "size=%s,mode=0755", tmpfs_size);
	if (mount("tmpfs", p->dir, "tmpfs", 0, opts)) {
		int saved = errno;

		rmdir(p->dir);
		p->dir[0] = '\0';
		return -saved;
	}
	p->mounted = 1;
	return 0;
}

/* Remounts the tmpfs with a new size ("16m"), ro (readonly 1) or rw (0). */
static int fake_pfs_remount(struct fake_pfs *p, const char *size, int readonly)
{
	char opts[64];

	snprintf(opts, sizeof(opts), "size=%s", size);
	if (mount("tmpfs", p->dir, "tmpfs", MS_REMOUNT | (readonly ? MS_RDONLY : 0), opts))
		return -errno;
	return 0;
}

/* Unmounts (lazily: nothing may hold it up) and removes the directory. */
static int fake_pfs_release(struct fake_pfs *p)
{
	char cmd[128];

	if (!p->dir[0])
		return 0;
	if (p->mounted && umount2(p->dir, MNT_DETACH))
		return -errno;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", p->dir);
	return system(cmd) ? -EIO : 0;
}
