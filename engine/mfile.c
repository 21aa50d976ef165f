/* mfile: see mfile.h. */
#define _GNU_SOURCE
#include "mfile.h"

#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "clock.h"
#include "lock.h"
#include "log.h"
#include "pool.h"

/* The budget is charged ahead in steps of this much. */
#define ALLOC_STEP (8ULL << 20)
#define PAGE_ROUND(x) (((x) + 4095) & ~4095ULL)

static void written_locked(struct vp_mfile *mf, uint64_t off, size_t len);

static struct vp_mfile *spare_take(struct vp_mspare *sp);

/* ---- huge pages ---- */

static pthread_once_t huge_once = PTHREAD_ONCE_INIT;
static size_t huge_size;		/* 0: memory files get 4 KiB pages */
static char huge_mode[16] = "unknown";

/*
 * Memory files get 2 MiB pages where the admin lets shmem have them
 * (/sys/kernel/mm/transparent_hugepage/shmem_enabled: advise, within_size,
 * always or force; memfds follow that knob, not the per-size ones).  A
 * fresh page of 4 KiB costs its allocation, zeroing and mapping: 0.55 s a
 * GiB here, against 0.04 s in 2 MiB pages, so a landing pays far less for
 * pages no spare made ahead.
 */
static void huge_probe(void)
{
	char buf[128], *l, *r;
	unsigned long pmd = 0;
	FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/shmem_enabled", "r");

	if (!f)
		return;
	if (fgets(buf, sizeof(buf), f) && (l = strchr(buf, '[')) && (r = strchr(l, ']')) &&
	    (size_t)(r - l - 1) < sizeof(huge_mode)) {
		memcpy(huge_mode, l + 1, (size_t)(r - l - 1));
		huge_mode[r - l - 1] = '\0';
	}
	fclose(f);
	if (strcmp(huge_mode, "advise") && strcmp(huge_mode, "within_size") &&
	    strcmp(huge_mode, "always") && strcmp(huge_mode, "force"))
		return;
	f = fopen("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", "r");
	if (f) {
		if (fscanf(f, "%lu", &pmd) != 1)
			pmd = 0;
		fclose(f);
	}
	/* a power of two, a whole number of base pages */
	if (pmd >= 8192 && !(pmd & (pmd - 1)))
		huge_size = pmd;
}

size_t vp_mfile_huge(const char **mode)
{
	pthread_once(&huge_once, huge_probe);
	if (mode)
		*mode = huge_mode;
	return huge_size;
}

/*
 * len bytes of address space at a huge page's boundary, mapped to nothing
 * (for a MAP_FIXED or MREMAP_FIXED of a memory file over it), or NULL
 * where memory files get no huge pages or none is left: a mapping that
 * is not aligned is mapped by 4 KiB entries, even over 2 MiB pages.
 */
static void *huge_area(size_t len)
{
	size_t a = vp_mfile_huge(NULL);
	char *m, *al;

	if (!a)
		return NULL;
	m = mmap(NULL, len + a, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (m == MAP_FAILED)
		return NULL;
	al = (char *)(((uintptr_t)m + a - 1) & ~(uintptr_t)(a - 1));
	if (al > m)
		munmap(m, (size_t)(al - m));
	if (m + len + a > al + len)
		munmap(al + len, (size_t)(m + len + a - (al + len)));
	return al;
}

/* mmap(2) of a memory file, at a huge page's boundary where that helps. */
static void *map_file(size_t len, int prot, int flags, int fd)
{
	void *area = huge_area(len);
	void *m = mmap(area, len, prot, flags | (area ? MAP_FIXED : 0), fd, 0);

	if (m == MAP_FAILED && area)
		munmap(area, len);
	if (m != MAP_FAILED && area && (prot & PROT_WRITE))
		(void)madvise(m, len, MADV_HUGEPAGE);	/* what shmem_enabled=advise asks for */
	return m;
}

static struct vp_mfile *mfile_make(struct vp_pool *pool, int *err)
{
	struct vp_mfile *mf = calloc(1, sizeof(*mf));
	char path[64];

	if (!mf) {
		*err = -ENOMEM;
		return NULL;
	}
	mf->fd = memfd_create("viperfs-version", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (mf->fd < 0) {
		*err = -errno;
		free(mf);
		return NULL;
	}
	/* a read-only description of the same file: its mappings can never be made writable */
	snprintf(path, sizeof(path), "/proc/self/fd/%d", mf->fd);
	mf->rofd = open(path, O_RDONLY | O_CLOEXEC);
	if (mf->rofd < 0) {
		*err = -errno;
		close(mf->fd);
		free(mf);
		return NULL;
	}
	mf->refs = 1;
	mf->pool = pool;
	pthread_mutex_init(&mf->lock, NULL);
	return mf;
}

struct vp_mfile *vp_mfile_new(struct vp_pool *pool, int *err)
{
	struct vp_mfile *mf = spare_take(vp_pool_spare(pool));

	return mf ? mf : mfile_make(pool, err);
}

/*
 * Frees the pages allocated ahead past keep (a spare's that the file did
 * not fill; a cut or a seal does not free pages past an unchanged size).
 * mf->lock held.
 */
static void drop_ahead_locked(struct vp_mfile *mf, uint64_t keep)
{
	VP_ASSERT_LOCKED(&mf->lock);
	keep = PAGE_ROUND(keep);
	if (mf->ahead <= keep)
		return;
	if (fallocate(mf->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		      (off_t)keep, (off_t)(mf->ahead - keep)) != 0)
		vp_log(LOG_WARNING, "mfile", "freeing a spare's unused pages: %s", strerror(errno));
	mf->ahead = keep;
}

struct vp_mfile *vp_mfile_get(struct vp_mfile *mf)
{
	__atomic_add_fetch(&mf->refs, 1, __ATOMIC_RELAXED);
	return mf;
}

void vp_mfile_put(struct vp_mfile *mf)
{
	if (!mf || __atomic_sub_fetch(&mf->refs, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	if (mf->map)
		munmap(mf->map, mf->map_len);
	if (mf->wmap)
		munmap(mf->wmap, mf->wmap_len);
	for (unsigned int i = 0; i < mf->nold; i++)
		munmap(mf->old_maps[i], mf->old_lens[i]);
	free(mf->old_maps);
	free(mf->old_lens);
	free(mf->hashes);
	free(mf->hash_gen);
	free(mf->gen);
	close(mf->rofd);
	close(mf->fd);
	if (mf->alloc)
		vp_pool_uncharge(mf->pool, mf->alloc);
	pthread_mutex_destroy(&mf->lock);
	free(mf);
}

/*
 * Charges the file's pages up to end to the budget, in steps.  The pages
 * themselves come with the write: a write of whole pages into a memfd
 * allocates them without zeroing them first, which fallocate(2) (or a
 * mapping populated ahead) would do, at the cost of a second pass over
 * the memory (measured: clear_page was 41% of the CPU of such a write).
 * mf->lock held.
 */
static int reserve_locked(struct vp_mfile *mf, uint64_t end, double wait_s)
{
	uint64_t want, step;
	int rc;

	VP_ASSERT_LOCKED(&mf->lock);
	end = PAGE_ROUND(end);
	if (end <= mf->alloc)
		return 0;
	want = end - mf->alloc;
	/* ahead by a step, but never charge a step the budget has not got */
	step = want < ALLOC_STEP ? ALLOC_STEP : PAGE_ROUND(want);
	if (vp_pool_charge(mf->pool, step, 0) != 0) {
		step = want;
		/* the spare's memory is anyone's first, even with no wait */
		vp_mspare_drop(vp_pool_spare(mf->pool));
		rc = vp_pool_charge(mf->pool, step, wait_s);
		if (rc)
			return rc;
	}
	mf->alloc += step;
	return 0;
}

struct pwrite_arg {
	const void *buf;
};

/* vp_mfile_pwrite()'s fill: pwrite(2) of the caller's bytes. */
static ssize_t fill_pwrite(void *arg, int fd, uint64_t off, size_t len)
{
	const char *buf = ((struct pwrite_arg *)arg)->buf;
	size_t done = 0;

	while (done < len) {
		ssize_t n = pwrite(fd, buf + done, len - done, (off_t)(off + done));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			if (errno == EPERM)
				vp_log(LOG_CRIT, "mfile", "the kernel refused a write to a sealed version (a bug)");
			return done ? (ssize_t)done : -errno;
		}
		done += (size_t)n;
	}
	return (ssize_t)done;
}

ssize_t vp_mfile_pwrite(struct vp_mfile *mf, const void *buf, size_t len,
			uint64_t off, double wait_s)
{
	struct pwrite_arg a = { buf };

	return vp_mfile_write_fd(mf, off, len, wait_s, fill_pwrite, &a);
}

ssize_t vp_mfile_write_fd(struct vp_mfile *mf, uint64_t off, size_t len, double wait_s,
			  ssize_t (*fill)(void *arg, int fd, uint64_t off, size_t len), void *arg)
{
	ssize_t n;
	int rc;

	pthread_mutex_lock(&mf->lock);
	if (mf->sealed) {
		pthread_mutex_unlock(&mf->lock);
		vp_log(LOG_CRIT, "mfile", "a write to a sealed version was refused (a bug: versions are immutable)");
		return -EPERM;
	}
	rc = reserve_locked(mf, off + len, wait_s);
	pthread_mutex_unlock(&mf->lock);
	if (rc)
		return rc;
	n = fill(arg, mf->fd, off, len);
	if (n <= 0)
		return n < 0 ? n : -EIO;
	pthread_mutex_lock(&mf->lock);
	if (off + (uint64_t)n > mf->size)
		mf->size = off + (uint64_t)n;
	written_locked(mf, off, (size_t)n);
	pthread_mutex_unlock(&mf->lock);
	return n;
}

/*
 * The file was cut (or grown) to size: every page past the new end goes,
 * the ones allocated ahead too, with their charge; the chunks between the
 * two ends changed (cut, or zeros now).  mf->lock held.
 */
static void resized_locked(struct vp_mfile *mf, uint64_t size)
{
	uint64_t keep = PAGE_ROUND(size);

	VP_ASSERT_LOCKED(&mf->lock);
	drop_ahead_locked(mf, size);
	if (keep < mf->alloc) {
		vp_pool_uncharge(mf->pool, mf->alloc - keep);
		mf->alloc = keep;
	}
	if (size != mf->size)
		written_locked(mf, size < mf->size ? size : mf->size,
			       (size_t)(size < mf->size ? mf->size - size : size - mf->size));
	mf->size = size;
}

int vp_mfile_truncate(struct vp_mfile *mf, uint64_t size)
{
	int rc = 0;

	pthread_mutex_lock(&mf->lock);
	if (mf->sealed) {
		rc = -EPERM;
	} else if (ftruncate(mf->fd, (off_t)size) != 0) {
		rc = -errno;
	} else {
		/* a cut frees every page past the new end, the ones allocated ahead too */
		resized_locked(mf, size);
	}
	pthread_mutex_unlock(&mf->lock);
	return rc;
}

int vp_mfile_fallocate(struct vp_mfile *mf, uint64_t off, uint64_t len, int keep_size,
		       double wait_s)
{
	int rc;

	pthread_mutex_lock(&mf->lock);
	if (mf->sealed) {
		pthread_mutex_unlock(&mf->lock);
		vp_log(LOG_CRIT, "mfile", "an fallocate of a sealed version was refused (a bug: versions are immutable)");
		return -EPERM;
	}
	rc = reserve_locked(mf, off + len, wait_s);
	if (!rc && fallocate(mf->fd, keep_size ? FALLOC_FL_KEEP_SIZE : 0, (off_t)off, (off_t)len))
		rc = -errno;
	if (!rc && !keep_size && off + len > mf->size) {
		written_locked(mf, mf->size, (size_t)(off + len - mf->size));	/* zeros now */
		mf->size = off + len;
	}
	pthread_mutex_unlock(&mf->lock);
	return rc;
}

int vp_mfile_seal(struct vp_mfile *mf)
{
	int rc = 0;

	pthread_mutex_lock(&mf->lock);
	if (mf->sealed)
		goto out_unlock;
	if (mf->wmap && !mf->landing) {	/* a mapped spare, written by pwrite: F_SEAL_WRITE wants no writable mapping */
		munmap(mf->wmap, mf->wmap_len);
		mf->wmap = NULL;
		mf->wmap_len = 0;
	}
	if (ftruncate(mf->fd, (off_t)mf->size) != 0) {
		rc = -errno;
		goto out_unlock;
	}
	drop_ahead_locked(mf, mf->size);
	if (mf->alloc > PAGE_ROUND(mf->size)) {
		/* the charge ahead goes back: a sealed file holds its pages only */
		vp_pool_uncharge(mf->pool, mf->alloc - PAGE_ROUND(mf->size));
		mf->alloc = PAGE_ROUND(mf->size);
	}
	if (fcntl(mf->fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW |
		  F_SEAL_SEAL) != 0 && (errno != EBUSY ||
		  fcntl(mf->fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE | F_SEAL_SHRINK | F_SEAL_GROW |
			F_SEAL_SEAL) != 0)) {
		/*
		 * EBUSY: pages pinned for a device (a fabric registration of a
		 * landing that relay children still read): F_SEAL_WRITE waits
		 * for pins, F_SEAL_FUTURE_WRITE does not, and refuses every
		 * write and writable mapping from now on just the same.
		 */
		rc = -errno;
		vp_log(LOG_ERR, "mfile", "sealing a version: %s", strerror(errno));
		goto out_unlock;
	}
	__atomic_store_n(&mf->sealed, 1, __ATOMIC_RELEASE);
out_unlock:
	pthread_mutex_unlock(&mf->lock);
	return rc;
}

struct vp_mfile *vp_mfile_copy(struct vp_mfile *src, uint64_t size,
			       double wait_s, int *err)
{
	struct vp_mfile *mf = vp_mfile_new(src->pool, err);
	ssize_t n;

	if (!mf)
		return NULL;
	pthread_mutex_lock(&mf->lock);
	*err = reserve_locked(mf, size, wait_s);
	pthread_mutex_unlock(&mf->lock);
	if (!*err && size && ftruncate(mf->fd, (off_t)size) != 0)
		*err = -errno;
	if (!*err && size) {
		n = vp_mfile_copy_out(src, mf->fd, 0, (size_t)size, 0);
		if (n != (ssize_t)size)
			*err = n < 0 ? (int)n : -EIO;
	}
	if (*err) {
		vp_mfile_put(mf);
		return NULL;
	}
	mf->size = size;
	return mf;
}

const char *vp_mfile_map(struct vp_mfile *mf, uint64_t len)
{
	const char *map;

	if (!len)
		return NULL;
	pthread_mutex_lock(&mf->lock);
	if (!mf->map || mf->map_len < len) {
		/* grow by doubling; readers may still point into the old one */
		size_t want = mf->map_len ? mf->map_len : PAGE_ROUND(len);
		void *m;

		while (want < len)
			want *= 2;
		if (mf->sealed)
			want = (size_t)PAGE_ROUND(mf->size);
		m = map_file(want, PROT_READ, MAP_SHARED, mf->rofd);
		if (m == MAP_FAILED) {
			pthread_mutex_unlock(&mf->lock);
			return NULL;
		}
		if (mf->map) {
			void **om = realloc(mf->old_maps, (mf->nold + 1) * sizeof(*om));
			size_t *ol = om ? realloc(mf->old_lens, (mf->nold + 1) * sizeof(*ol)) : NULL;

			if (om)
				mf->old_maps = om;
			if (!ol) {
				munmap(m, want);
				pthread_mutex_unlock(&mf->lock);
				return NULL;
			}
			mf->old_lens = ol;
			mf->old_maps[mf->nold] = mf->map;
			mf->old_lens[mf->nold++] = mf->map_len;
		}
		mf->map = m;
		mf->map_len = want;
	}
	map = mf->map;
	pthread_mutex_unlock(&mf->lock);
	return map;
}

/* ---- landing ---- */

char *vp_mfile_land_map(struct vp_mfile *mf, size_t reserve, int *err)
{
	void *m;

	reserve = (size_t)PAGE_ROUND(reserve ? reserve : 1);
	pthread_mutex_lock(&mf->lock);
	if (mf->sealed || mf->landing) {
		pthread_mutex_unlock(&mf->lock);
		*err = -EINVAL;
		return NULL;
	}
	if (mf->wmap) {
		/* a spare's, mapped ahead: its page tables move with it (mremap copies no page) */
		if (mf->wmap_len >= reserve) {
			m = mf->wmap;
		} else {
			void *area = huge_area(reserve);

			m = area ? mremap(mf->wmap, mf->wmap_len, reserve,
					  MREMAP_MAYMOVE | MREMAP_FIXED, area) :
				   mremap(mf->wmap, mf->wmap_len, reserve, MREMAP_MAYMOVE);
			if (m == MAP_FAILED && area)
				munmap(area, reserve);
			if (m != MAP_FAILED && area)
				(void)madvise(m, reserve, MADV_HUGEPAGE);
		}
		if (m == MAP_FAILED) {
			*err = -errno;
			pthread_mutex_unlock(&mf->lock);
			return NULL;
		}
		mf->wmap = m;
		if (reserve > mf->wmap_len)
			mf->wmap_len = reserve;
		mf->landing = 1;
		pthread_mutex_unlock(&mf->lock);
		return m;
	}
	m = map_file(reserve, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, mf->fd);
	if (m == MAP_FAILED) {
		*err = -errno;
		pthread_mutex_unlock(&mf->lock);
		return NULL;
	}
	mf->wmap = m;
	mf->wmap_len = reserve;
	mf->landing = 1;
	pthread_mutex_unlock(&mf->lock);
	return m;
}

int vp_mfile_land_grow(struct vp_mfile *mf, uint64_t size, double wait_s)
{
	struct stat st;
	uint64_t from;
	int rc;

	pthread_mutex_lock(&mf->lock);
	if (!mf->landing || mf->sealed || size > mf->wmap_len) {
		pthread_mutex_unlock(&mf->lock);
		return -EINVAL;
	}
	from = mf->size;
	if (size <= from) {
		pthread_mutex_unlock(&mf->lock);
		return 0;
	}
	rc = reserve_locked(mf, size, wait_s);
	/* a mapped spare's file may be larger already: never cut here (that would free its pages) */
	if (!rc && fstat(mf->fd, &st) != 0)
		rc = -errno;
	if (!rc && size > (uint64_t)st.st_size && ftruncate(mf->fd, (off_t)size) != 0)
		rc = -errno;
	if (!rc)
		mf->size = size;
	pthread_mutex_unlock(&mf->lock);
	if (rc)
		return rc;
	/*
	 * The pages mapped now, in one call: a spare's exist already and are
	 * only mapped; new ones are allocated here, not one fault at a time
	 * under the fabric's copy.  Best effort (MADV_POPULATE_WRITE: 5.14).
	 */
	from &= ~4095ULL;
	(void)madvise(mf->wmap + from, (size_t)(PAGE_ROUND(size) - from), MADV_POPULATE_WRITE);
	return 0;
}

int vp_mfile_land_zero(struct vp_mfile *mf, uint64_t off, uint64_t len)
{
	uint64_t from, to, pages;
	int rc = 0;

	pthread_mutex_lock(&mf->lock);
	if (mf->sealed) {
		rc = -EPERM;
		goto out_unlock;
	}
	if (off >= mf->size)
		goto out_unlock;
	if (off + len > mf->size)
		len = mf->size - off;
	if (fallocate(mf->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) != 0) {
		rc = -errno;
		goto out_unlock;
	}
	/* the whole pages in it are freed: their charge goes back */
	from = PAGE_ROUND(off);
	to = (off + len) & ~4095ULL;
	pages = to > from ? to - from : 0;
	if (pages > mf->alloc)
		pages = mf->alloc;
	mf->alloc -= pages;
	vp_pool_uncharge(mf->pool, pages);
out_unlock:
	pthread_mutex_unlock(&mf->lock);
	return rc;
}

uint64_t vp_mfile_charged(struct vp_mfile *mf)
{
	uint64_t n;

	pthread_mutex_lock(&mf->lock);
	n = mf->alloc;
	pthread_mutex_unlock(&mf->lock);
	return n;
}

int vp_mfile_land_finish(struct vp_mfile *mf, uint64_t size)
{
	size_t keep = (size_t)PAGE_ROUND(size);
	int rc = 0;

	pthread_mutex_lock(&mf->lock);
	if (!mf->landing || mf->sealed || mf->map || size > mf->wmap_len) {
		pthread_mutex_unlock(&mf->lock);
		return -EINVAL;
	}
	if (ftruncate(mf->fd, (off_t)size) != 0) {
		rc = -errno;
		goto out_unlock;
	}
	resized_locked(mf, size);
	/* the same pages, read-only, at the same address: no instant where it is unmapped */
	if (keep && mmap(mf->wmap, keep, PROT_READ, MAP_SHARED | MAP_FIXED, mf->rofd, 0) == MAP_FAILED) {
		rc = -errno;
		vp_log(LOG_ERR, "mfile", "mapping a landed version read-only: %s", strerror(errno));
		goto out_unlock;
	}
	if (mf->wmap_len > keep)
		munmap(mf->wmap + keep, mf->wmap_len - keep);
	mf->map = keep ? mf->wmap : NULL;
	mf->map_len = keep;
	mf->wmap = NULL;
	mf->wmap_len = 0;
	mf->landing = 0;
out_unlock:
	pthread_mutex_unlock(&mf->lock);
	return rc ? rc : vp_mfile_seal(mf);
}

/* Makes the hash arrays cover chunk idx.  mf->lock held.  Returns 0 or -ENOMEM. */
static int hashes_cover_locked(struct vp_mfile *mf, size_t idx)
{
	size_t n = mf->nhashes ? mf->nhashes : 16;
	uint64_t *h;
	uint32_t *hg, *g;

	VP_ASSERT_LOCKED(&mf->lock);
	if (idx < mf->nhashes)
		return 0;
	while (n <= idx)
		n *= 2;
	h = realloc(mf->hashes, n * sizeof(*h));
	if (h)
		mf->hashes = h;
	hg = h ? realloc(mf->hash_gen, n * sizeof(*hg)) : NULL;
	if (hg)
		mf->hash_gen = hg;
	g = hg ? realloc(mf->gen, n * sizeof(*g)) : NULL;
	if (!g)
		return -ENOMEM;
	mf->gen = g;
	memset(mf->hashes + mf->nhashes, 0, (n - mf->nhashes) * sizeof(*h));
	memset(mf->hash_gen + mf->nhashes, 0, (n - mf->nhashes) * sizeof(*hg));
	memset(mf->gen + mf->nhashes, 0, (n - mf->nhashes) * sizeof(*g));
	mf->nhashes = n;
	return 0;
}

/* A write touched [off, off + len): those chunks' cached hashes are stale.  mf->lock held. */
static void written_locked(struct vp_mfile *mf, uint64_t off, size_t len)
{
	VP_ASSERT_LOCKED(&mf->lock);
	if (!len)
		return;
	for (size_t i = (size_t)(off / VP_MFILE_HASH_CHUNK);
	     i <= (size_t)((off + len - 1) / VP_MFILE_HASH_CHUNK) && i < mf->nhashes; i++)
		mf->gen[i]++;
}

uint64_t vp_mfile_chunk_hash(struct vp_mfile *mf, size_t idx, size_t chunk_size,
			     size_t len)
{
	const char *map = vp_mfile_map(mf, (uint64_t)idx * chunk_size + len);
	uint64_t h = 0;
	uint32_t gen = 0;
	int cached = 0, cover;

	if (!map)
		return 0;
	if (chunk_size != VP_MFILE_HASH_CHUNK)
		return XXH3_64bits(map + idx * chunk_size, len);
	pthread_mutex_lock(&mf->lock);
	cover = hashes_cover_locked(mf, idx) == 0;
	if (cover) {
		gen = mf->gen[idx];
		cached = mf->hashes[idx] && mf->hash_gen[idx] == gen;
		h = mf->hashes[idx];
	}
	pthread_mutex_unlock(&mf->lock);
	if (cached)
		return h - 1;
	h = XXH3_64bits(map + idx * chunk_size, len);
	pthread_mutex_lock(&mf->lock);
	if (cover && mf->gen[idx] == gen) {	/* not written meanwhile */
		mf->hashes[idx] = h + 1;
		mf->hash_gen[idx] = gen;
	}
	pthread_mutex_unlock(&mf->lock);
	return h;
}

ssize_t vp_mfile_copy_out(struct vp_mfile *mf, int out_fd, uint64_t off,
			  size_t len, uint64_t out_off)
{
	size_t done = 0;
	int use_sendfile = 0;

	while (done < len) {
		ssize_t n;

		if (!use_sendfile) {
			loff_t in = (loff_t)(off + done), out = (loff_t)(out_off + done);

			n = copy_file_range(mf->rofd, &in, out_fd, &out, len - done, 0);
			if (n < 0 && (errno == EXDEV || errno == EINVAL ||
				      errno == EOPNOTSUPP || errno == ENOSYS)) {
				use_sendfile = 1;	/* across file systems on some kernels */
				continue;
			}
		} else {
			off_t in = (off_t)(off + done);

			if (lseek(out_fd, (off_t)(out_off + done), SEEK_SET) < 0)
				return -errno;
			n = sendfile(out_fd, mf->rofd, &in, len - done);
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return done ? (ssize_t)done : -errno;
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return (ssize_t)done;
}

/* ---- the spare ---- */

struct vp_mspare {
	struct vp_pool *pool;
	uint64_t bytes;			/* protected by lock */
	int mapped;			/* a consumer's: pages mapped and zeroed ahead, for a landing */
	pthread_t thread;
	pthread_mutex_t lock;		/* a leaf: nothing is called under it */
	pthread_cond_t cond;		/* a spare was taken or dropped, or stop */
	/* protected by lock: */
	struct vp_mfile *ready;
	double hold_until;		/* no new spare before (pressure, short budget) */
	int stop;
	int asked;			/* mapped: the next one is asked for (vp_mspare_fit) */
	uint64_t made, taken;
};

/* A memory file with bytes of pages allocated and charged, or NULL. */
static struct vp_mfile *spare_make(struct vp_mspare *sp, uint64_t bytes, int mapped)
{
	struct vp_mfile *mf;
	int err;

	/* only from memory nobody is about to need (the pressure callback drops it) */
	if (vp_pool_available(sp->pool) < bytes + bytes / 4 ||
	    vp_pool_charge(sp->pool, bytes, 0) != 0)
		return NULL;
	mf = mfile_make(sp->pool, &err);
	if (!mf) {
		vp_pool_uncharge(sp->pool, bytes);
		return NULL;
	}
	mf->alloc = bytes;		/* vp_mfile_put() gives the charge back */
	if (mapped) {
		/*
		 * A landing's pages are written by the fabric through a mapping:
		 * a fault would allocate, zero and map each page under the
		 * network's copy (0.55 s a GiB measured here, against 0.08 s for
		 * the copy itself).  All three are done here, ahead, and the
		 * landing takes the mapping as it is (vp_mfile_land_map).
		 */
		void *m = MAP_FAILED;

		if (ftruncate(mf->fd, (off_t)bytes) == 0)
			m = map_file(bytes, PROT_READ | PROT_WRITE, MAP_SHARED, mf->fd);
		if (m == MAP_FAILED || madvise(m, bytes, MADV_POPULATE_WRITE) != 0) {
			vp_log(LOG_WARNING, "mfile", "mapping a spare of %llu bytes ahead: %s",
			       (unsigned long long)bytes, strerror(errno));
			if (m != MAP_FAILED)
				munmap(m, bytes);
			vp_mfile_put(mf);
			return NULL;
		}
		mf->wmap = m;
		mf->wmap_len = bytes;
	} else if (fallocate(mf->fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)bytes) != 0) {
		vp_log(LOG_WARNING, "mfile", "allocating a spare of %llu bytes: %s",
		       (unsigned long long)bytes, strerror(errno));
		vp_mfile_put(mf);
		return NULL;
	}
	mf->ahead = bytes;
	return mf;
}

static void *spare_main(void *arg)
{
	struct vp_mspare *sp = arg;

	if (sp->mapped) {
		/*
		 * A consumer's spare is made right after an install, while the
		 * node's readers load that version: made only with CPU nobody
		 * else wants (its zeroing took a core for 0.55 s a GiB here).
		 */
		struct sched_param none = { 0 };

		pthread_setschedparam(pthread_self(), SCHED_IDLE, &none);
	}

	pthread_mutex_lock(&sp->lock);
	while (!sp->stop) {
		double now = vp_now();
		struct vp_mfile *mf;
		uint64_t bytes;

		/* a mapped spare is made when asked: not while the version that took the last one still lands */
		if (sp->ready || now < sp->hold_until || (sp->mapped && !sp->asked)) {
			struct timespec ts;

			vp_abstime(&ts, sp->ready || now >= sp->hold_until ? now + 3600 : sp->hold_until);
			pthread_cond_timedwait(&sp->cond, &sp->lock, &ts);
			continue;
		}
		bytes = sp->bytes;
		pthread_mutex_unlock(&sp->lock);
		mf = spare_make(sp, bytes, sp->mapped);
		pthread_mutex_lock(&sp->lock);
		if (!mf) {
			sp->hold_until = vp_now() + 1;
			continue;
		}
		if (sp->stop || sp->hold_until > vp_now()) {	/* dropped meanwhile */
			pthread_mutex_unlock(&sp->lock);
			vp_mfile_put(mf);
			pthread_mutex_lock(&sp->lock);
			continue;
		}
		sp->ready = mf;
		sp->asked = 0;
		sp->made++;
		pthread_cond_broadcast(&sp->cond);
	}
	pthread_mutex_unlock(&sp->lock);
	return NULL;
}

struct vp_mspare *vp_mspare_new(struct vp_pool *pool, uint64_t bytes, int mapped)
{
	struct vp_mspare *sp;

	bytes = PAGE_ROUND(bytes);
	if (!bytes)
		return NULL;
	sp = calloc(1, sizeof(*sp));
	if (!sp)
		return NULL;
	sp->pool = pool;
	sp->bytes = bytes;
	sp->mapped = mapped;
	sp->asked = 1;
	pthread_mutex_init(&sp->lock, NULL);
	vp_cond_init_monotonic(&sp->cond);
	if (pthread_create(&sp->thread, NULL, spare_main, sp) != 0) {
		pthread_cond_destroy(&sp->cond);
		pthread_mutex_destroy(&sp->lock);
		free(sp);
		return NULL;
	}
	vp_pool_set_spare(pool, sp);
	return sp;
}

void vp_mspare_free(struct vp_mspare *sp)
{
	if (!sp)
		return;
	vp_pool_set_spare(sp->pool, NULL);
	pthread_mutex_lock(&sp->lock);
	sp->stop = 1;
	pthread_cond_broadcast(&sp->cond);
	pthread_mutex_unlock(&sp->lock);
	pthread_join(sp->thread, NULL);
	vp_mfile_put(sp->ready);
	pthread_cond_destroy(&sp->cond);
	pthread_mutex_destroy(&sp->lock);
	free(sp);
}

static struct vp_mfile *spare_take(struct vp_mspare *sp)
{
	struct vp_mfile *mf;

	if (!sp)
		return NULL;
	pthread_mutex_lock(&sp->lock);
	mf = sp->ready;
	sp->ready = NULL;
	if (mf) {
		sp->taken++;
		pthread_cond_broadcast(&sp->cond);
	}
	pthread_mutex_unlock(&sp->lock);
	return mf;
}

void vp_mspare_drop(struct vp_mspare *sp)
{
	struct vp_mfile *mf;

	if (!sp)
		return;
	pthread_mutex_lock(&sp->lock);
	mf = sp->ready;
	sp->ready = NULL;
	sp->hold_until = vp_now() + 1;	/* and none made while the pressure lasts */
	pthread_mutex_unlock(&sp->lock);
	vp_mfile_put(mf);
}

void vp_mspare_fit(struct vp_mspare *sp, uint64_t bytes)
{
	struct vp_mfile *old = NULL;

	if (!sp)
		return;
	bytes = PAGE_ROUND(bytes);
	pthread_mutex_lock(&sp->lock);
	if (bytes > sp->bytes) {
		sp->bytes = bytes;
		old = sp->ready;	/* too small now: a new one, of the new size */
		sp->ready = NULL;
	}
	sp->asked = 1;
	pthread_cond_broadcast(&sp->cond);
	pthread_mutex_unlock(&sp->lock);
	vp_mfile_put(old);
}

int vp_mspare_wait_ready(struct vp_mspare *sp, double timeout_s)
{
	struct timespec ts;
	int ready;

	vp_abstime(&ts, vp_now() + timeout_s);
	pthread_mutex_lock(&sp->lock);
	while (!sp->ready && !sp->stop &&
	       pthread_cond_timedwait(&sp->cond, &sp->lock, &ts) != ETIMEDOUT)
		;
	ready = sp->ready != NULL;
	pthread_mutex_unlock(&sp->lock);
	return ready;
}

void vp_mspare_get_stats(struct vp_mspare *sp, struct vp_mspare_stats *st)
{
	memset(st, 0, sizeof(*st));
	if (!sp)
		return;
	pthread_mutex_lock(&sp->lock);
	st->ready = sp->ready ? sp->ready->alloc : 0;
	st->made = sp->made;
	st->taken = sp->taken;
	pthread_mutex_unlock(&sp->lock);
}
