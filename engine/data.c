/* data: see data.h. */
#define _GNU_SOURCE
#include "data.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "lock.h"
#include "mfile.h"
#include "pool.h"

struct vp_chunk {
	int refs;		/* atomic */
	void *mem;		/* from the pool, chunk_size bytes */
	/*
	 * Cached xxh3 of the first hash_len - 1 bytes; hash_len 0: none.
	 * Set once the chunk is shared (immutable), cleared by the one owner
	 * before it writes.  Atomic: two datas sharing it may hash at once.
	 */
	uint64_t hash;
	uint64_t hash_len;
};

/* Largest file: 16 TiB with 1 MiB chunks keeps slot arrays sane. */
#define VP_DATA_MAX_BYTES (1ULL << 44)

/* Reads of holes point here; in .bss, so it costs no memory until read. */
static char zero_region[4 << 20];

static struct vp_chunk *chunk_new(struct vp_pool *pool, double wait_s,
				  int *err)
{
	struct vp_chunk *c = malloc(sizeof(*c));

	if (!c) {
		*err = -ENOMEM;
		return NULL;
	}
	c->mem = vp_pool_get_chunk(pool, wait_s, err);
	if (!c->mem) {
		free(c);
		return NULL;
	}
	c->refs = 1;
	c->hash_len = 0;
	return c;
}

static void chunk_get(struct vp_chunk *c)
{
	int old = __atomic_fetch_add(&c->refs, 1, __ATOMIC_RELAXED);

	assert(old > 0);
	(void)old;
}

static void chunk_put(struct vp_pool *pool, struct vp_chunk *c)
{
	if (__atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0) {
		vp_pool_put_chunk(pool, c->mem);
		free(c);
	}
}

static struct vp_data *data_alloc(struct vp_pool *pool)
{
	struct vp_data *d = calloc(1, sizeof(*d));

	if (!d)
		return NULL;
	d->refs = 1;
	pthread_mutex_init(&d->lock, NULL);
	d->pool = pool;
	d->chunk_size = vp_pool_chunk_size(pool);
	d->backing_fd = -1;
	return d;
}

struct vp_data *vp_data_new(struct vp_pool *pool)
{
	return data_alloc(pool);
}

struct vp_data *vp_data_new_mfile(struct vp_pool *pool, int *err)
{
	struct vp_data *d = data_alloc(pool);

	if (!d) {
		*err = -ENOMEM;
		return NULL;
	}
	d->mf = vp_mfile_new(pool, err);
	if (!d->mf) {
		vp_data_put(d);
		return NULL;
	}
	return d;
}

struct vp_data *vp_data_from_mfile(struct vp_pool *pool, struct vp_mfile *mf)
{
	struct vp_data *d = vp_mfile_sealed(mf) ? data_alloc(pool) : NULL;

	if (!d) {
		vp_mfile_put(mf);
		return NULL;
	}
	d->mf = mf;
	d->size = mf->size;
	return d;
}

/* A new data sharing src's memory file; src->lock held. */
static struct vp_data *share_mfile_locked(struct vp_data *src, int view)
{
	struct vp_data *d;

	VP_ASSERT_LOCKED(&src->lock);
	d = data_alloc(src->pool);
	if (!d)
		return NULL;
	d->mf = vp_mfile_get(src->mf);
	d->size = src->size;
	d->view = view;
	return d;
}

struct vp_data *vp_data_view(struct vp_data *src)
{
	struct vp_data *d;

	if (!src->mf)
		return vp_data_clone(src);
	pthread_mutex_lock(&src->lock);
	d = share_mfile_locked(src, 1);
	pthread_mutex_unlock(&src->lock);
	return d;
}

void vp_data_seal(struct vp_data *d)
{
	if (d && d->mf && !d->view && !vp_mfile_sealed(d->mf))
		vp_mfile_seal(d->mf);
}

int vp_data_fd(struct vp_data *d)
{
	return d && d->mf && !d->view && vp_mfile_sealed(d->mf) ? d->mf->rofd : -1;
}

int vp_data_backing_fd(struct vp_data *d)
{
	int fd = -1;

	if (!d)
		return -1;
	pthread_mutex_lock(&d->lock);
	if (!d->mf && d->pristine && d->backing_fd >= 0 && d->backing_limit == d->size) {
		size_t n = (d->size + d->chunk_size - 1) / d->chunk_size, held = 0;

		for (size_t i = 0; i < n && i < d->nslots; i++)
			held += d->slots[i] != NULL;
		if (held < n || n == 0)
			fd = d->backing_fd;	/* not all in the cache (warm): the PFS file */
	}
	pthread_mutex_unlock(&d->lock);
	return fd;
}

ssize_t vp_data_copy_out(struct vp_data *d, int out_fd, uint64_t off, size_t len)
{
	if (vp_data_fd(d) < 0)
		return -ENOTSUP;
	return vp_mfile_copy_out(d->mf, out_fd, off, len, off);
}

/*
 * Before a write or truncate of a data whose memory file is sealed
 * (shared with a committed version): its own copy of the first keep
 * bytes.  d->lock held.  Returns 0 or -errno.
 */
static int mfile_own_locked(struct vp_data *d, uint64_t keep, double wait_s)
{
	struct vp_mfile *mf;
	int err = 0;

	VP_ASSERT_LOCKED(&d->lock);
	if (d->view)
		return -EBADF;
	if (!vp_mfile_sealed(d->mf))
		return 0;
	mf = vp_mfile_copy(d->mf, keep < d->size ? keep : d->size, wait_s, &err);
	if (!mf)
		return err;
	vp_mfile_put(d->mf);
	d->mf = mf;
	return 0;
}

/*
 * A write into d's memory file (its own copy first, if it is shared
 * sealed): buf's bytes, or (buf NULL) what fill puts there.  d->lock held.
 */
static ssize_t write_mfile_locked(struct vp_data *d, uint64_t off, size_t len, double wait_s,
				  const void *buf,
				  ssize_t (*fill)(void *arg, int fd, uint64_t off, size_t len),
				  void *arg)
{
	int rc = mfile_own_locked(d, d->size, wait_s);
	ssize_t n;

	if (rc)
		return rc;
	n = buf ? vp_mfile_pwrite(d->mf, buf, len, off, wait_s) :
		  vp_mfile_write_fd(d->mf, off, len, wait_s, fill, arg);
	if (n > 0 && off + (uint64_t)n > d->size)
		__atomic_store_n(&d->size, off + (uint64_t)n, __ATOMIC_RELEASE);
	return n;
}

/*
 * Makes room for n slots in a data no other thread can see yet (one
 * being made); reserve_slots_locked() is the same for any other.
 */
static int reserve_slots_new(struct vp_data *d, size_t n)
{
	struct vp_chunk **slots;
	size_t cap = d->nslots ? d->nslots : 16;

	if (n <= d->nslots)
		return 0;
	while (cap < n)
		cap *= 2;
	slots = realloc(d->slots, cap * sizeof(*slots));
	if (!slots)
		return -ENOMEM;
	memset(slots + d->nslots, 0, (cap - d->nslots) * sizeof(*slots));
	d->slots = slots;
	d->nslots = cap;
	return 0;
}

/* Makes room for n slots.  Called with d->lock held. */
static int reserve_slots_locked(struct vp_data *d, size_t n)
{
	VP_ASSERT_LOCKED(&d->lock);
	return reserve_slots_new(d, n);
}

struct vp_data *vp_data_new_backed(struct vp_pool *pool, int fd, uint64_t size)
{
	struct vp_data *d = data_alloc(pool);

	if (!d) {
		close(fd);
		return NULL;
	}
	d->backing_fd = fd;
	d->size = size;
	d->backing_limit = size;
	d->pristine = 1;
	if (reserve_slots_new(d, (size + d->chunk_size - 1) / d->chunk_size)) {
		vp_data_put(d);
		return NULL;
	}
	return d;
}

struct vp_data *vp_data_clone(struct vp_data *src)
{
	struct vp_data *d = data_alloc(src->pool);

	if (!d)
		return NULL;
	pthread_mutex_lock(&src->lock);
	if (src->mf) {
		vp_data_put(d);
		if (!src->view && vp_mfile_seal(src->mf))
			d = NULL;
		else
			d = share_mfile_locked(src, src->view);
		pthread_mutex_unlock(&src->lock);
		return d;
	}
	if (reserve_slots_new(d, src->nslots))
		goto err_unlock;
	if (src->backing_fd >= 0) {
		d->backing_fd = fcntl(src->backing_fd, F_DUPFD_CLOEXEC, 0);
		if (d->backing_fd < 0)
			goto err_unlock;
	}
	for (size_t i = 0; i < src->nslots; i++) {
		if (src->slots[i]) {
			chunk_get(src->slots[i]);
			d->slots[i] = src->slots[i];
		}
	}
	d->size = src->size;
	d->backing_limit = src->backing_limit;
	d->pristine = src->pristine;
	d->resident = src->resident;
	pthread_mutex_unlock(&src->lock);
	return d;

err_unlock:
	pthread_mutex_unlock(&src->lock);
	vp_data_put(d);
	return NULL;
}

struct vp_data *vp_data_get(struct vp_data *d)
{
	int old = __atomic_fetch_add(&d->refs, 1, __ATOMIC_RELAXED);

	assert(old > 0);
	(void)old;
	return d;
}

void vp_data_put(struct vp_data *d)
{
	if (!d || __atomic_sub_fetch(&d->refs, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	for (size_t i = 0; i < d->nslots; i++)
		if (d->slots[i])
			chunk_put(d->pool, d->slots[i]);
	if (d->backing_fd >= 0)
		close(d->backing_fd);
	vp_mfile_put(d->mf);
	free(d->slots);
	pthread_mutex_destroy(&d->lock);
	free(d);
}

uint64_t vp_data_size(struct vp_data *d)
{
	return __atomic_load_n(&d->size, __ATOMIC_ACQUIRE);
}

uint64_t vp_data_resident(struct vp_data *d)
{
	uint64_t r;

	pthread_mutex_lock(&d->lock);
	r = d->mf ? d->size : d->resident;
	pthread_mutex_unlock(&d->lock);
	return r;
}

const void *vp_data_sealed_map(struct vp_data *d, uint64_t *len)
{
	const void *map = NULL;

	pthread_mutex_lock(&d->lock);
	if (d->mf && vp_mfile_sealed(d->mf) && d->size) {
		map = vp_mfile_map(d->mf, d->size);
		*len = d->size;
	}
	pthread_mutex_unlock(&d->lock);
	return map;
}

int vp_data_fully_resident(struct vp_data *d)
{
	int full = 1;

	pthread_mutex_lock(&d->lock);
	if (d->backing_fd >= 0) {
		size_t n = (d->backing_limit + d->chunk_size - 1) / d->chunk_size;

		for (size_t i = 0; i < n && full; i++)
			full = d->slots[i] != NULL;
	}
	pthread_mutex_unlock(&d->lock);
	return full;
}

/*
 * Fills mem with the bytes that chunk idx has when its slot is empty:
 * backing file bytes below backing_limit, zeros after.  Called with
 * d->lock held.  Returns 0 or -EIO.
 */
static int fill_empty_locked(struct vp_data *d, size_t idx, void *mem)
{
	uint64_t start = (uint64_t)idx * d->chunk_size;
	size_t from_file = 0;

	VP_ASSERT_LOCKED(&d->lock);
	if (d->backing_fd >= 0 && start < d->backing_limit) {
		uint64_t avail = d->backing_limit - start;

		from_file = avail < d->chunk_size ? (size_t)avail : d->chunk_size;
		for (size_t done = 0; done < from_file;) {
			ssize_t n = pread(d->backing_fd, (char *)mem + done,
					  from_file - done, (off_t)(start + done));

			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0)
				return -EIO;
			if (n == 0) {	/* the file shrank under us: zeros */
				from_file = done;
				break;
			}
			done += (size_t)n;
		}
	}
	memset((char *)mem + from_file, 0, d->chunk_size - from_file);
	return 0;
}

/*
 * Makes slot idx a chunk this data alone holds, ready to be written.
 * If whole is set the caller overwrites all of it, so no fill is needed.
 * Called with d->lock held; may block for space.
 */
static int own_chunk_locked(struct vp_data *d, size_t idx, int whole,
			    double wait_s)
{
	struct vp_chunk *old = d->slots[idx], *c;
	int err;

	VP_ASSERT_LOCKED(&d->lock);
	if (old && __atomic_load_n(&old->refs, __ATOMIC_ACQUIRE) == 1) {
		__atomic_store_n(&old->hash_len, 0, __ATOMIC_RELEASE);	/* about to change */
		return 0;
	}
	c = chunk_new(d->pool, wait_s, &err);
	if (!c)
		return err;
	if (old)
		memcpy(c->mem, old->mem, d->chunk_size);
	else if (!whole && (err = fill_empty_locked(d, idx, c->mem))) {
		chunk_put(d->pool, c);
		return err;
	}
	if (old)
		chunk_put(d->pool, old);
	else
		d->resident += d->chunk_size;
	d->slots[idx] = c;
	return 0;
}

ssize_t vp_data_write(struct vp_data *d, const void *buf, size_t len,
		      uint64_t off, double wait_s)
{
	const char *src = buf;
	size_t done = 0;
	int rc = 0;

	if (off > VP_DATA_MAX_BYTES || len > VP_DATA_MAX_BYTES - off)
		return -EFBIG;
	if (len == 0)
		return 0;
	pthread_mutex_lock(&d->lock);
	if (d->mf) {
		ssize_t n = write_mfile_locked(d, off, len, wait_s, buf, NULL, NULL);

		pthread_mutex_unlock(&d->lock);
		return n;
	}
	rc = reserve_slots_locked(d, (off + len + d->chunk_size - 1) / d->chunk_size);
	if (rc)
		goto out_unlock;
	d->pristine = 0;
	while (done < len) {
		uint64_t pos = off + done;
		size_t idx = pos / d->chunk_size;
		size_t in = pos % d->chunk_size;
		size_t n = d->chunk_size - in;
		int whole;

		if (n > len - done)
			n = len - done;
		/* a chunk wholly past the old end needs no fill either */
		whole = n == d->chunk_size ||
			((uint64_t)idx * d->chunk_size >= d->size &&
			 (uint64_t)idx * d->chunk_size >= d->backing_limit &&
			 in == 0);
		rc = own_chunk_locked(d, idx, whole, wait_s);
		if (rc)
			break;
		if (whole && n < d->chunk_size)
			memset((char *)d->slots[idx]->mem + n, 0, d->chunk_size - n);
		memcpy((char *)d->slots[idx]->mem + in, src + done, n);
		done += n;
		if (off + done > d->size)
			__atomic_store_n(&d->size, off + done, __ATOMIC_RELEASE);
	}
out_unlock:
	pthread_mutex_unlock(&d->lock);
	return done ? (ssize_t)done : rc;
}

ssize_t vp_data_write_fd(struct vp_data *d, uint64_t off, size_t len, double wait_s,
			 ssize_t (*fill)(void *arg, int fd, uint64_t off, size_t len), void *arg)
{
	ssize_t n;

	if (!d->mf)
		return -ENOTSUP;
	if (off > VP_DATA_MAX_BYTES || len > VP_DATA_MAX_BYTES - off)
		return -EFBIG;
	if (len == 0)
		return 0;
	pthread_mutex_lock(&d->lock);
	n = write_mfile_locked(d, off, len, wait_s, NULL, fill, arg);
	pthread_mutex_unlock(&d->lock);
	return n;
}

int vp_data_fallocate(struct vp_data *d, uint64_t off, uint64_t len, int keep_size,
		      double wait_s)
{
	int rc;

	if (off > VP_DATA_MAX_BYTES || len > VP_DATA_MAX_BYTES - off)
		return -EFBIG;
	pthread_mutex_lock(&d->lock);
	if (!d->mf) {
		pthread_mutex_unlock(&d->lock);
		return -EOPNOTSUPP;
	}
	rc = mfile_own_locked(d, d->size, wait_s);
	if (!rc)
		rc = vp_mfile_fallocate(d->mf, off, len, keep_size, wait_s);
	if (!rc && !keep_size && off + len > d->size)
		__atomic_store_n(&d->size, off + len, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&d->lock);
	return rc;
}

int vp_data_truncate(struct vp_data *d, uint64_t size, double wait_s)
{
	int rc = 0;

	if (size > VP_DATA_MAX_BYTES)
		return -EFBIG;
	pthread_mutex_lock(&d->lock);
	if (d->mf) {
		rc = mfile_own_locked(d, size, wait_s);
		if (!rc)
			rc = vp_mfile_truncate(d->mf, size);
		if (!rc)
			__atomic_store_n(&d->size, size, __ATOMIC_RELEASE);
		goto out_unlock;
	}
	if (size != d->size)
		d->pristine = 0;
	if (size < d->size) {
		size_t keep = (size + d->chunk_size - 1) / d->chunk_size;
		size_t tail = size % d->chunk_size;

		/* zero the cut part of the last chunk, so growing reads zeros */
		if (tail && keep <= d->nslots &&
		    (d->slots[keep - 1] || (d->backing_fd >= 0 &&
		     (uint64_t)(keep - 1) * d->chunk_size < d->backing_limit))) {
			rc = own_chunk_locked(d, keep - 1, 0, wait_s);
			if (rc)
				goto out_unlock;
			memset((char *)d->slots[keep - 1]->mem + tail, 0,
			       d->chunk_size - tail);
		}
		for (size_t i = keep; i < d->nslots; i++) {
			if (d->slots[i]) {
				chunk_put(d->pool, d->slots[i]);
				d->slots[i] = NULL;
				d->resident -= d->chunk_size;
			}
		}
		if (d->backing_limit > size)
			d->backing_limit = size;
	} else {
		rc = reserve_slots_locked(d, (size + d->chunk_size - 1) / d->chunk_size);
		if (rc)
			goto out_unlock;
	}
	__atomic_store_n(&d->size, size, __ATOMIC_RELEASE);
out_unlock:
	pthread_mutex_unlock(&d->lock);
	return rc;
}

/* vp_data_read() of a memory file: one segment in its mapping.  d->lock held. */
static int read_mfile_locked(struct vp_data *d, uint64_t off, size_t len, struct vp_read *rd)
{
	const char *map;

	VP_ASSERT_LOCKED(&d->lock);
	map = vp_mfile_map(d->mf, d->size);
	if (!map)
		return -ENOMEM;
	/* pieces no larger than a read of chunks gives (the flush paces by them) */
	if (len > VP_READ_MAX_SEGS * d->chunk_size)
		len = VP_READ_MAX_SEGS * d->chunk_size;
	rd->mf = vp_mfile_get(d->mf);
	rd->seg[0].ptr = map + off;
	rd->seg[0].len = len;
	rd->nseg = 1;
	rd->len = len;
	rd->hits = 1;
	return 0;
}

ssize_t vp_data_read(struct vp_data *d, uint64_t off, size_t len,
		     struct vp_read *rd)
{
	int rc = 0;

	memset(rd, 0, sizeof(*rd));
	rd->pool = d->pool;
	pthread_mutex_lock(&d->lock);
	if (off >= d->size)
		goto out_unlock;
	if (len > d->size - off)
		len = (size_t)(d->size - off);
	if (d->mf) {
		rc = read_mfile_locked(d, off, len, rd);
		goto out_unlock;
	}
	while (rd->len < len && rd->nseg < VP_READ_MAX_SEGS) {
		uint64_t pos = off + rd->len;
		size_t idx = pos / d->chunk_size;
		size_t in = pos % d->chunk_size;
		size_t n = d->chunk_size - in;
		struct vp_chunk *c = idx < d->nslots ? d->slots[idx] : NULL;
		struct vp_read_seg *seg = &rd->seg[rd->nseg];

		if (n > len - rd->len)
			n = len - rd->len;
		if (!c && d->backing_fd >= 0 &&
		    (uint64_t)idx * d->chunk_size < d->backing_limit) {
			/* cache the PFS bytes if there is room, else bounce */
			rd->misses++;
			c = chunk_new(d->pool, 0, &rc);
			if (c) {
				rc = fill_empty_locked(d, idx, c->mem);
				if (rc) {
					chunk_put(d->pool, c);
					break;
				}
				d->slots[idx] = c;
				d->resident += d->chunk_size;
			} else {
				void *tmp = malloc(d->chunk_size);

				rc = tmp ? fill_empty_locked(d, idx, tmp) : -ENOMEM;
				if (rc) {
					free(tmp);
					break;
				}
				rd->bounce[rd->nseg] = tmp;
				seg->ptr = (char *)tmp + in;
			}
		} else if (c) {
			rd->hits++;
		}
		if (c) {
			chunk_get(c);
			rd->held[rd->nseg] = c;
			seg->ptr = (char *)c->mem + in;
		} else if (!rd->bounce[rd->nseg]) {
			if (n > sizeof(zero_region))
				n = sizeof(zero_region);
			seg->ptr = zero_region;
		}
		seg->len = n;
		rd->nseg++;
		rd->len += n;
	}
out_unlock:
	pthread_mutex_unlock(&d->lock);
	if (rd->len == 0 && rc) {
		vp_read_release(rd);
		return rc;
	}
	return (ssize_t)rd->len;
}

void vp_read_release(struct vp_read *rd)
{
	for (unsigned int i = 0; i < rd->nseg; i++) {
		if (rd->held[i])
			chunk_put(rd->pool, rd->held[i]);
		free(rd->bounce[i]);
	}
	vp_mfile_put(rd->mf);
	rd->mf = NULL;
	rd->nseg = 0;
	rd->len = 0;
}

struct vp_data *vp_data_adopt(struct vp_pool *pool, void **mem, size_t n,
			      uint64_t size)
{
	struct vp_data *d = data_alloc(pool);
	size_t i = 0;

	if (!d || reserve_slots_new(d, n ? n : 1))
		goto err;
	for (; i < n; i++) {
		struct vp_chunk *c;

		if (!mem[i])
			continue;
		c = calloc(1, sizeof(*c));
		if (!c)
			goto err;
		c->refs = 1;
		c->mem = mem[i];
		d->slots[i] = c;
		d->resident += d->chunk_size;
	}
	/* zero the tail of the last chunk: bytes past size read as zeros */
	if (n && mem[n - 1] && size % d->chunk_size)
		memset((char *)mem[n - 1] + size % d->chunk_size, 0,
		       d->chunk_size - size % d->chunk_size);
	d->size = size;
	return d;
err:
	for (; i < n; i++)
		if (mem[i])
			vp_pool_put_chunk(pool, mem[i]);
	vp_data_put(d);
	return NULL;
}

const void *vp_data_chunk_mem(struct vp_data *d, size_t idx)
{
	const void *mem = NULL;

	pthread_mutex_lock(&d->lock);
	if (d->mf) {
		const char *map = (uint64_t)idx * d->chunk_size < d->size ?
				  vp_mfile_map(d->mf, d->size) : NULL;

		mem = map ? map + idx * d->chunk_size : NULL;
	} else if (idx < d->nslots && d->slots[idx])
		mem = d->slots[idx]->mem;
	pthread_mutex_unlock(&d->lock);
	return mem;
}

ssize_t vp_data_pread(struct vp_data *d, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		struct vp_read rd;
		ssize_t n = vp_data_read(d, off + done, len - done, &rd);

		if (n <= 0) {
			if (n < 0 && done == 0)
				return n;
			break;
		}
		for (unsigned int i = 0; i < rd.nseg; i++) {
			memcpy((char *)buf + done, rd.seg[i].ptr, rd.seg[i].len);
			done += rd.seg[i].len;
		}
		vp_read_release(&rd);
	}
	return (ssize_t)done;
}

int vp_data_chunk_hashes(struct vp_data *d, uint64_t *hashes, size_t n)
{
	int rc = 0;

	pthread_mutex_lock(&d->lock);
	for (size_t i = 0; i < n; i++) {
		uint64_t start = (uint64_t)i * d->chunk_size, len;
		struct vp_chunk *c = i < d->nslots ? d->slots[i] : NULL;

		if (start >= d->size) {
			hashes[i] = 0;
			continue;
		}
		len = d->size - start < d->chunk_size ? d->size - start : d->chunk_size;
		if (d->mf) {
			hashes[i] = vp_mfile_chunk_hash(d->mf, i, d->chunk_size, (size_t)len);
			continue;
		}
		if (!c) {
			if (d->backing_fd >= 0 && start < d->backing_limit) {
				rc = -ENODATA;	/* on the PFS, not here */
				break;
			}
			hashes[i] = 0;	/* a hole */
			continue;
		}
		if (__atomic_load_n(&c->hash_len, __ATOMIC_ACQUIRE) == len + 1) {
			hashes[i] = __atomic_load_n(&c->hash, __ATOMIC_RELAXED);
			continue;
		}
		hashes[i] = XXH3_64bits(c->mem, (size_t)len);
		__atomic_store_n(&c->hash, hashes[i], __ATOMIC_RELAXED);
		__atomic_store_n(&c->hash_len, len + 1, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&d->lock);
	return rc;
}
