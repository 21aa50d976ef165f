/*
 * repl/announce.c: consumer: an ANNOUNCE, assembled from its pieces, checked,
 * planned (what we hold already), fetched (fetch.c) and installed on the
 * mount by ordinary syscalls; OPs replayed the same way.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "../clock.h"
#include "../data.h"
#include "../gpu.h"
#include "../log.h"
#include "../metrics.h"
#include "../mfile.h"
#include "../ns.h"
#include "../pool.h"
#include "../safepath.h"
#include "repl_i.h"

/* Messages that peers (or anyone on the network) can cause, logged within limits. */
static struct vp_ratelimit rl_announce = VP_RATELIMIT_INIT(10, 60.0);

/*
 * Opens the mount's root for one operation, and checks it is still our
 * FUSE mount: after an unmount, the path is the directory underneath,
 * which must never receive replicated files.  Returns 0 or -errno.
 */
int repl_mount_open(struct vp_repl *r)
{
	struct stat st;

	r->cons.mnt_fd = open(r->cons.mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (r->cons.mnt_fd < 0)
		return -errno;
	if (fstat(r->cons.mnt_fd, &st) || st.st_dev != r->cons.mnt_dev) {
		close(r->cons.mnt_fd);
		r->cons.mnt_fd = -1;
		return -ENOTCONN;
	}
	return 0;
}

/* Closes what repl_mount_open() opened; the namespace raises the events our syscalls held back. */
void repl_mount_close(struct vp_repl *r)
{
	vp_ns_installed(r->ns);	/* our syscalls returned: the kernel sees what they did */
	if (r->cons.mnt_fd >= 0)
		close(r->cons.mnt_fd);
	r->cons.mnt_fd = -1;
}

/*
 * mkdir -p of path's parents on the mount (as the producer has them),
 * contained: a symlink on the way is not followed (safepath.h).
 */
static void make_parents(struct vp_repl *r, const char *path)
{
	int rc = vp_safepath_mkparents(r->cons.mnt_fd, path);

	if (rc)
		vp_log(LOG_DEBUG, "repl", "the directories of '%s': %s", path, strerror(-rc));
}

/*
 * Installs a version by ordinary syscalls on the mount, so that watchers
 * get the events of a local write.  A new file: open(O_CREAT) + close,
 * with the bytes attached by the namespace (IN_CREATE, IN_CLOSE_WRITE).
 * A replaced file: the bytes become a new inode in the hidden incoming
 * folder, renamed over the path in one atomic switch (IN_MOVED_TO), then
 * opened and closed (IN_CLOSE_WRITE).  Readers of the old inode keep it.
 */
static int install(struct vp_repl *r, const char *path, struct vp_data *d,
		   uint64_t version, uint64_t epoch, uint32_t mode, uint64_t seq)
{
	char hidden[64];
	int fd, rc;

	rc = repl_mount_open(r);
	if (rc)
		return rc;
	make_parents(r, path);
	/* over any node (a FIFO that an open would block on, a device): a new inode, renamed in */
	if (vp_ns_path_taken(r->ns, path)) {
		snprintf(hidden, sizeof(hidden), ".viperfs-incoming/%" PRIu64, seq);
		rc = vp_ns_install_hidden(r->ns, hidden + strlen(".viperfs-incoming/"),
					  d, version, epoch, mode);
		if (!rc && (rc = vp_safepath_rename(r->cons.mnt_fd, hidden, path)))
			vp_safepath_unlink(r->cons.mnt_fd, hidden, 0);	/* do not keep its bytes around */
		vp_ns_installed(r->ns);	/* the kernel shows the new file: tell watch and wait */
		if (!rc) {
			fd = vp_safepath_open(r->cons.mnt_fd, path, O_WRONLY | O_NONBLOCK | O_NOCTTY, 0);
			if (fd >= 0)
				close(fd);
		}
		repl_mount_close(r);
		return rc;
	}
	rc = vp_ns_stage_install(r->ns, path, d, version, epoch, mode);
	if (!rc) {
		fd = vp_safepath_open(r->cons.mnt_fd, path, O_WRONLY | O_CREAT | O_NONBLOCK | O_NOCTTY,
				      (mode_t)(mode & 07777));
		if (fd < 0)
			rc = fd;
		else if (close(fd))
			rc = -errno;
		vp_ns_unstage_install(r->ns, path);
	}
	repl_mount_close(r);
	return rc;
}


/*
 * Latest wins: true if an ANNOUNCE of a newer version of path is already
 * waiting in the inbox, so that fetching this one would be wasted.
 */
static int newer_queued(struct vp_repl *r, const char *path, uint64_t version)
{
	struct vp_msg *m = malloc(sizeof(*m));
	int found = 0;
	unsigned int looked = 0;
	struct qmsg *q;

	if (!m)
		return 0;
	pthread_mutex_lock(&r->lock);
	/* bounded: the progress thread waits for this lock */
	for (q = STAILQ_FIRST(&r->in); q && !found && looked++ < 64; q = STAILQ_NEXT(q, link)) {
		static __thread uint8_t plain[VP_FAB_MAX_MSG];
		struct vp_sess peek = r->cons.sess;	/* a copy: the real one opens it later */
		const void *buf = q->buf;
		ssize_t len = (ssize_t)q->len;

		if (q->src != r->cons.producer)
			continue;
		if (peek.on && (len = vp_sess_open(&peek, q->buf, q->len, plain, sizeof(plain), NULL)) < 0)
			continue;
		if (peek.on)
			buf = plain;
		if (vp_msg_decode(buf, (size_t)len, m, NULL) == 0 &&
		    m->type == VP_MSG_ANNOUNCE && m->u.announce.first == 0 &&
		    !(m->u.announce.flags & VP_ANNOUNCE_PREVIEW) &&
		    m->u.announce.version > version && !strcmp(m->u.announce.path, path))
			found = 1;
		vp_sess_clear(&peek);
	}
	pthread_mutex_unlock(&r->lock);
	free(m);
	return found;
}

/* The chunks fetched early of path (from previews); NULL: none. */
static struct prefetch *prefetch_find(struct vp_repl *r, const char *path)
{
	struct prefetch *pf;

	LIST_FOREACH(pf, &r->cons.prefetch, link)
		if (!strcmp(pf->path, path))
			return pf;
	return NULL;
}

/* True if mem is in l's memory. */
static bool in_land(const struct land *l, const void *mem)
{
	return l && (const char *)mem >= l->base && (const char *)mem < l->base + l->reserve;
}

/* Unlinks and frees pf; its landing goes (pool chunks a relay's failure left go back). */
void repl_prefetch_drop(struct vp_repl *r, struct prefetch *pf)
{
	LIST_REMOVE(pf, link);
	for (uint32_t i = 0; i < pf->n; i++)
		if (pf->mem[i]) {
			repl_unexpose_mem(r, pf->mem[i]);	/* a preview's chunks were offered too */
			if (!in_land(pf->land, pf->mem[i]))
				vp_pool_put_chunk(r->pool, pf->mem[i]);
		}
	repl_land_put(r, pf->land);
	free(pf->mem);
	free(pf->hash);
	free(pf->path);
	free(pf);
}

/*
 * Bytes the previews hold: their landings' sizes.  Not the pages charged:
 * a landing that took the spare has them all ahead (up to a quarter of the
 * cache, made for the next version), and counting those stopped every
 * preview after the first install at its first chunk.
 */
static uint64_t prefetch_held(struct vp_repl *r)
{
	struct prefetch *pf;
	uint64_t n = 0;

	LIST_FOREACH(pf, &r->cons.prefetch, link)
		n += pf->land ? pf->land->size : 0;
	return n;
}

/*
 * A committed version of path needs need more bytes of the cache: the
 * spare goes first (a charge found short would drop it anyway), then the
 * previews of other files, least recently fed first, until the budget has
 * them free.  Previews never make a committed version wait or fail.
 */
static void prefetch_give_way(struct vp_repl *r, const char *path, uint64_t need)
{
	if (vp_pool_available(r->pool) >= need)
		return;
	vp_mspare_drop(vp_pool_spare(r->pool));
	while (vp_pool_available(r->pool) < need) {
		struct prefetch *pf, *lru = NULL;

		LIST_FOREACH(pf, &r->cons.prefetch, link)
			if (strcmp(pf->path, path) && (!lru || pf->touched < lru->touched))
				lru = pf;
		if (!lru)
			return;
		vp_log(LOG_DEBUG, "repl", "previews of '%s' version %" PRIu64 " dropped: '%s' needs the room",
		       lru->path, lru->version, path);
		repl_prefetch_drop(r, lru);
	}
}

void repl_prefetch_forget(struct vp_repl *r, const char *path, double idle_s)
{
	struct prefetch *pf, *next;
	size_t len = path ? strlen(path) : 0;
	double now = vp_now();

	for (pf = LIST_FIRST(&r->cons.prefetch); pf; pf = next) {
		next = LIST_NEXT(pf, link);
		if (path ? !strncmp(pf->path, path, len) && (!pf->path[len] || pf->path[len] == '/') :
		    now - pf->touched > idle_s)
			repl_prefetch_drop(r, pf);
	}
}

/* The prefetch entry of path for version, made or grown to n chunks; NULL: no memory. */
static struct prefetch *prefetch_get(struct vp_repl *r, const char *path,
				     uint64_t version, uint32_t n)
{
	struct prefetch *pf = prefetch_find(r, path);

	if (pf && pf->version != version) {
		repl_prefetch_drop(r, pf);	/* chunks of an older version being written */
		pf = NULL;
	}
	if (!pf) {
		uint64_t max = vp_config_max_file_size(&r->cfg), cs = vp_pool_chunk_size(r->pool);
		int err;

		pf = calloc(1, sizeof(*pf));
		if (!pf || !(pf->path = strdup(path))) {
			free(pf);
			return NULL;
		}
		/*
		 * The file's final size is not known yet: address space (only
		 * that) for the largest file we accept, so that the version's
		 * announce takes this landing over whatever its size.  A smaller
		 * one made the announce land anew beside it, the version held
		 * and the preview's bytes with it: a cache of twice the file
		 * could not take the next version.  The bytes previews hold stay
		 * within half of the cache (consumer_preview).
		 */
		pf->land = repl_land_new(r, (max + cs - 1) / cs * cs, &err);
		if (!pf->land) {
			free(pf->path);
			free(pf);
			return NULL;
		}
		pf->version = version;
		LIST_INSERT_HEAD(&r->cons.prefetch, pf, link);
	}
	if (n > pf->n) {
		void **mem = realloc(pf->mem, n * sizeof(*mem));
		uint64_t *hash = mem ? realloc(pf->hash, n * sizeof(*hash)) : NULL;

		if (mem)
			pf->mem = mem;
		if (!mem || !hash)
			return NULL;
		pf->hash = hash;
		memset(pf->mem + pf->n, 0, (n - pf->n) * sizeof(*mem));
		memset(pf->hash + pf->n, 0, (n - pf->n) * sizeof(*hash));
		pf->n = n;
	}
	return pf;
}

/*
 * A preview: fetches the finished chunks not fetched yet (best effort: no
 * waiting for cache space), checks each against its hash, and keeps them
 * for the version's ANNOUNCE.  Nothing is installed.
 */
static void consumer_preview(struct vp_repl *r, const struct vp_msg *m)
{
	const typeof(m->u.announce) *a = &m->u.announce;
	struct prefetch *pf = prefetch_get(r, a->path, a->version, a->nchunks);
	uint32_t *fetched = NULL, bad;
	size_t nreq = 0;
	uint64_t bytes = 0, held, want;
	int rc = -ENOMEM;

	if (!pf)
		goto out;
	pf->touched = vp_now();
	/*
	 * Previews never take more than half of the cache, and give way to a
	 * committed version that needs the room (announce_plan): half lets a
	 * cache of twice the file hold the version and all of the next one's
	 * previews (a quarter moved 640 MiB of a 1 GiB file early, and the
	 * other 384 MiB took 0.46 s after close).
	 */
	held = prefetch_held(r);
	fetched = calloc(a->nchunks ? a->nchunks : 1, sizeof(*fetched));
	if (!fetched)
		goto out;
	want = pf->land->size;
	for (uint32_t i = 0; i < a->nchunks; i++) {
		uint64_t start = (uint64_t)i * a->chunk_size, end = start + chunk_len(a, i);

		if (!r->cons.asm_refs[i].key ||
		    (pf->mem[i] && pf->hash[i] == r->cons.asm_refs[i].hash))
			continue;
		if (end > want && (held + end - want > r->cfg.ram_cache / 2 || end > pf->land->reserve))
			break;
		if (end > want) {
			held += end - want;
			want = end;
		}
		pf->mem[i] = pf->land->base + start;
		pf->hash[i] = 0;
		fetched[nreq++] = i;
		bytes += end - start;
	}
	if (nreq && repl_land_grow(r, pf->land, want, 0)) {
		/*
		 * The cache is full (no waiting for a preview): only what fits
		 * in the landing as it is moves now, the rest at commit.  A chunk
		 * fetched before keeps its place (its hash is 0: fetched again).
		 */
		size_t keep = 0;

		bytes = 0;
		for (size_t k = 0; k < nreq; k++) {
			uint32_t i = fetched[k];
			uint64_t end = (uint64_t)i * a->chunk_size + chunk_len(a, i);

			if (end > pf->land->size) {
				pf->mem[i] = NULL;	/* never fetched: nothing of it is there */
				continue;
			}
			fetched[keep++] = i;
			bytes += chunk_len(a, i);
		}
		nreq = keep;
	}
	/* a relay offers what it holds of the preview; children take those too */
	rc = repl_fetch_chunks(r, a, pf->mem, fetched, nreq, &bad);
	if (!rc && pf->land->tainted)
		rc = -EAGAIN;	/* a relay's read given up on may still land there: not kept */
	if (rc) {
		repl_prefetch_drop(r, pf);	/* nothing half-checked is kept */
		vp_log(LOG_DEBUG, "repl", "preview of '%s' version %" PRIu64 " dropped: %s",
		       a->path, a->version, strerror(-rc));
		goto out;
	}
	for (size_t k = 0; k < nreq; k++)
		pf->hash[fetched[k]] = r->cons.asm_refs[fetched[k]].hash;
	r->cons.bytes_streamed += bytes;
	vp_metrics_add(VP_C_BYTES_REPL_IN, bytes);
	vp_log(LOG_DEBUG, "repl", "preview of '%s' version %" PRIu64 ": %" PRIu64 " bytes fetched early",
	       a->path, a->version, bytes);
out:
	free(fetched);
	repl_say_done(r, a->seq, a->version, rc);
}

/*
 * Sizes are checked before anything is allocated for them: our chunk is
 * the unit of every read, and a file has a quota.  Returns 0, or the
 * -errno announce a is refused with (said in its DONE, counted, logged).
 */
static int announce_refuse(struct vp_repl *r, const announce_t *a)
{
	uint64_t max = vp_config_max_file_size(&r->cfg), ours = vp_pool_chunk_size(r->pool);
	int refuse = 0;

	if (a->chunk_size != ours) {
		vp_log_limited(&rl_announce, LOG_ERR, "repl", "'%s' version %" PRIu64 " refused: its chunk size is not ours (%" PRIu32 " bytes; ours is %" PRIu64 ")",
			       a->path, a->version, a->chunk_size, ours);
		refuse = -EPROTO;
	} else if (a->size > max) {
		vp_log_limited(&rl_announce, LOG_ERR, "repl", "'%s' version %" PRIu64 " refused: larger than max_file_size (%" PRIu64 " bytes; the limit is %" PRIu64 ")",
			       a->path, a->version, a->size, max);
		refuse = -EFBIG;
	}
	if (refuse) {
		__atomic_add_fetch(&r->refused, 1, __ATOMIC_RELAXED);
		repl_say_done(r, a->seq, a->version, refuse);
	}
	return refuse;
}

/* True if a is the next piece of the announce being assembled. */
static bool announce_continues(const struct vp_repl *r, const announce_t *a)
{
	const announce_t *got = r->cons.asm_msg ? &r->cons.asm_msg->u.announce : NULL;

	return got && !strcmp(got->path, a->path) && got->seq == a->seq &&
	       a->first == r->cons.asm_got && got->nchunks == a->nchunks &&
	       got->size == a->size && got->chunk_size == a->chunk_size &&
	       got->version == a->version;
}

/*
 * Adds the ANNOUNCE m (a piece of a version's chunk list: big files take
 * several) to the one being assembled; takes m.  Returns the complete
 * announce once its last piece came (the caller owns it; its chunk list
 * is in r->cons.asm_refs), NULL before.
 */
static struct vp_msg *announce_assemble(struct vp_repl *r, struct vp_msg *m)
{
	announce_t *a = &m->u.announce;

	if (a->first == 0) {
		if (announce_refuse(r, a)) {
			free(m);
			return NULL;
		}
		repl_seen_add(r, a->path);
		free(r->cons.asm_msg);
		free(r->cons.asm_refs);
		r->cons.asm_msg = m;
		r->cons.asm_refs = calloc(a->nchunks ? a->nchunks : 1, sizeof(*r->cons.asm_refs));
		r->cons.asm_got = 0;
		if (!r->cons.asm_refs) {
			r->cons.asm_msg = NULL;
			free(m);
			return NULL;
		}
	} else if (!announce_continues(r, a)) {
		free(m);
		return NULL;	/* a piece of an announce we dropped (or not of this one) */
	}
	memcpy(r->cons.asm_refs + a->first, a->chunk, a->count * sizeof(*a->chunk));
	a->mode &= 01777;	/* no setuid or setgid file from the network (we install as root) */
	r->cons.asm_got += a->count;
	if (m != r->cons.asm_msg)
		free(m);
	m = r->cons.asm_msg;
	if (r->cons.asm_got < m->u.announce.nchunks)
		return NULL;	/* more pieces to come */
	r->cons.asm_msg = NULL;
	return m;
}

/*
 * Never backwards, by (epoch, version) (recover.c): a newer one coming
 * is a SKIP; a preview is only ever taken or skipped.
 */
static enum repl_verdict announce_verdict(struct vp_repl *r, const announce_t *a,
					  uint64_t *have_v, uint64_t *have_e)
{
	int preview = (a->flags & VP_ANNOUNCE_PREVIEW) != 0;
	enum repl_verdict v;

	if (newer_queued(r, a->path, a->version))
		return REPL_SKIP;
	v = repl_reconcile(r, a->path, a->epoch, a->version, preview ? NULL : &a->checksum,
			   a->size, have_v, have_e);
	return preview && v == REPL_AHEAD ? REPL_SKIP : v;
}

/* True if the assembled chunk list matches a's checksum. */
static bool announce_list_ok(struct vp_repl *r, const announce_t *a)
{
	uint64_t *hashes = malloc((a->nchunks ? a->nchunks : 1) * sizeof(*hashes));
	uint64_t sum;

	for (uint32_t i = 0; hashes && i < a->nchunks; i++)
		hashes[i] = r->cons.asm_refs[i].hash;
	sum = hashes ? list_checksum(hashes, a->nchunks, a->size) : 0;
	free(hashes);
	return sum == a->checksum;
}

/* A version being fetched: where each chunk goes, and which must come over the network. */
struct announce_plan {
	struct land *land;	/* the version's memory file, being filled */
	void **mem;		/* chunk -> its place in land (a pool chunk where a relay failed), NULL: a hole */
	uint32_t *need;		/* the chunks to fetch */
	size_t nneed;
	uint64_t reused;	/* bytes unchanged from the version we hold */
	uint64_t streamed;	/* bytes fetched while the file was written (previews) */
	struct vp_data *d;	/* the version, once its chunks are adopted */
};

/*
 * With the GPU tier on, each chunk also goes to the device as soon as it
 * is here and checked, while the next ones are still on the wire.  (Not
 * with holes: device memory is not zeroed.)
 */
static void announce_stage(struct vp_repl *r, const announce_t *a)
{
	int holes = 0;

	if (!r->gpu)
		return;
	for (uint32_t i = 0; i < a->nchunks && !holes; i++)
		holes = !r->cons.asm_refs[i].key;
	if (!holes)
		r->cons.gst = vp_gpu_stage_begin(r->gpu, a->size);
	if (r->cons.gst && r->direct)
		repl_stage_register(r);
}

/*
 * The reuse plan: the version's landing, a preview's when the file was
 * previewed (its chunks are in place already), else a new one; filled
 * already where we can (the same hash in the version we hold, or in a
 * preview of another version: copied, not fetched); the rest goes in
 * pl->need.  Returns 0 or -errno (no cache space).
 */
static int announce_plan(struct vp_repl *r, const announce_t *a, struct announce_plan *pl)
{
	struct prefetch *pf = prefetch_find(r, a->path);
	struct vp_data *old = vp_ns_path_data(r->ns, a->path);
	uint64_t old_size = old ? vp_data_size(old) : 0;
	int rc = 0, taken = 0;

	if (pf && pf->version == a->version && pf->land && !pf->land->tainted &&
	    a->size <= pf->land->reserve) {
		pl->land = pf->land;	/* the chunks fetched while the file was written are in place */
		pf->land = NULL;
		taken = 1;
		for (uint32_t i = a->nchunks; i < pf->n; i++)
			if (pf->mem[i]) {	/* past the version's end: cut at its seal */
				repl_unexpose_mem(r, pf->mem[i]);
				pf->mem[i] = NULL;
			}
	} else {
		uint64_t cs = a->chunk_size;

		pl->land = repl_land_new(r, a->size ? (a->size + cs - 1) / cs * cs : cs, &rc);
	}
	if (pl->land) {
		uint64_t have = vp_mfile_charged(pl->land->mf), want = (a->size + 4095) & ~4095ULL;

		if (want > have)	/* previews of other files give way before we wait */
			prefetch_give_way(r, a->path, want - have);
		rc = repl_land_grow(r, pl->land, a->size, r->cfg.cache_wait);
	}
	for (uint32_t i = 0; !rc && i < a->nchunks; i++) {
		uint64_t start = (uint64_t)i * a->chunk_size, len = chunk_len(a, i);
		uint64_t hash = r->cons.asm_refs[i].hash;
		void *early = pf && i < pf->n ? pf->mem[i] : NULL;
		char *at = pl->land->base + start;
		const void *have_mem;

		if (taken && early)
			pf->mem[i] = NULL;	/* the plan's now */
		if (!r->cons.asm_refs[i].key) {	/* a hole: no page (a preview's bytes, or populated ahead) */
			if (taken && early)
				repl_unexpose_mem(r, early);
			rc = vp_mfile_land_zero(pl->land->mf, start, len);
			continue;
		}
		pl->mem[i] = at;
		if (early && len == a->chunk_size && pf->hash[i] == hash) {
			if (taken)	/* offered as a preview: this announce's now */
				repl_expose_reseq(r, at, a->seq);
			else
				memcpy(at, early, (size_t)len);
			pl->streamed += len;
			vp_gpu_stage_copy(r->cons.gst, start, at, (size_t)len);
			continue;
		}
		if (taken && early)
			repl_unexpose_mem(r, early);	/* bytes written over since: fetched again, here */
		have_mem = old && old_size >= start + len ? vp_data_chunk_mem(old, i) : NULL;
		if (have_mem && XXH3_64bits(have_mem, (size_t)len) == hash) {
			memcpy(at, have_mem, (size_t)len);
			pl->reused += len;
			vp_gpu_stage_copy(r->cons.gst, start, at, (size_t)len);
			continue;
		}
		pl->need[pl->nneed++] = i;
	}
	if (taken)	/* what the loop did not get to (an error): nothing of pf points there */
		for (uint32_t i = 0; i < a->nchunks && i < pf->n; i++)
			if (pf->mem[i]) {
				repl_unexpose_mem(r, pf->mem[i]);
				pf->mem[i] = NULL;
			}
	vp_data_put(old);
	return rc;
}

/*
 * The bytes of a version whose landing a read given up on may still
 * write (a relay that failed us; the producer served those chunks into
 * pool chunks): copied into a sealed memory file of their own.  The
 * chunks offered to our children from the landing are withdrawn (they
 * fall back to the producer).  Rare; NULL with *err set.
 */
static struct vp_data *land_copy(struct vp_repl *r, const announce_t *a,
				 struct announce_plan *pl, int *err)
{
	struct vp_data *d = vp_data_new_mfile(r->pool, err);

	repl_unexpose_seq(r, a->seq);
	for (uint32_t i = 0; d && i < a->nchunks; i++) {
		uint64_t len = chunk_len(a, i);
		ssize_t n;

		if (!pl->mem[i])
			continue;
		n = vp_data_write(d, pl->mem[i], (size_t)len, (uint64_t)i * a->chunk_size,
				  r->cfg.cache_wait);
		if (in_land(pl->land, pl->mem[i]))	/* its pages go as the copy's come */
			repl_land_release(r, pl->land, (char *)pl->mem[i] - pl->land->base, len);
		if (n != (ssize_t)len) {
			*err = n < 0 ? (int)n : -EIO;
			vp_data_put(d);
			d = NULL;
		}
	}
	if (d && (*err = vp_data_truncate(d, a->size, 0))) {
		vp_data_put(d);
		d = NULL;
	}
	if (d) {
		vp_data_seal(d);
		if (vp_data_fd(d) < 0) {	/* not sealed (logged) */
			*err = -EIO;
			vp_data_put(d);
			d = NULL;
		}
	}
	vp_log(LOG_INFO, "repl", "'%s' version %" PRIu64 ": %s out of a memory file a read given up on may still write",
	       a->path, a->version, d ? "copied" : "not copied");
	return d;
}

/*
 * The fetched version becomes ours (its landing sealed: pl->d) and is
 * installed on the mount; DONE says so.  Returns 0 or -errno.
 */
static int announce_install(struct vp_repl *r, const announce_t *a, double t0,
			    struct announce_plan *pl, int *pinned)
{
	struct vp_mfile *mf;
	uint64_t fetched;
	double t_in;
	int rc = 0;

	if (pl->land->tainted) {
		/* a second copy, rare: room for all of it, as the landing may keep every page */
		prefetch_give_way(r, a->path, a->size);
		pl->d = land_copy(r, a, pl, &rc);
	} else {
		/* its pages are the version's: the seal makes them immutable, and nothing is copied */
		mf = repl_land_seal(r, pl->land, a->size, &rc);
		pl->land = NULL;
		pl->d = mf ? vp_data_from_mfile(r->pool, vp_mfile_get(mf)) : NULL;
		if (mf && !pl->d) {
			rc = -ENOMEM;
			repl_unexpose_seq(r, a->seq);	/* before its mapping goes */
		}
		vp_mfile_put(mf);
		free(pl->mem);	/* pointers into the landing */
		pl->mem = NULL;
	}
	if (!pl->d)
		return rc ? rc : -ENOMEM;
	vp_gpu_stage_bind(r->cons.gst, pl->d);	/* the mirror of d, at its commit, takes it */
	r->cons.gst = NULL;
	r->cons.last_transfer_s = vp_now() - t0;
	fetched = a->size - pl->reused - pl->streamed;
	r->cons.bytes_in += fetched;
	r->cons.bytes_reused += pl->reused;
	r->cons.bytes_streamed_used += pl->streamed;
	vp_metrics_add(VP_C_BYTES_REPL_IN, fetched);
	/* status shows the bytes before the watchers hear of the version */
	repl_publish_stats(r);
	t_in = vp_now();
	rc = install(r, a->path, pl->d, a->version, a->epoch, a->mode, a->seq);
	if (rc) {
		vp_log(LOG_ERR, "repl", "installing '%s' version %" PRIu64 ": %s", a->path,
		       a->version, strerror(-rc));
		return rc;
	}
	r->cons.installed++;
	repl_ahead_clear(r, a->path);
	repl_publish_stats(r);
	vp_ns_spare_fit(r->ns, a->size);	/* the next version's pages, made while we are idle */
	if ((a->flags & VP_ANNOUNCE_RELAY) && r->relay.nchildren)
		*pinned = repl_rpin_add(r, a->seq, pl->d);	/* our children may still read it */
	vp_metrics_notify_latency(vp_now() - t_in);
	vp_metrics_add(VP_C_VERSIONS, 1);
	vp_log(LOG_INFO, "repl", "'%s' version %" PRIu64 " installed (%" PRIu64 " bytes in %.3f s after its announce; %" PRIu64 " fetched while it was written, %" PRIu64 " unchanged, %" PRIu64 " from the relay)",
	       a->path, a->version, a->size, r->cons.last_transfer_s, pl->streamed, pl->reused,
	       r->cons.from_relay);
	repl_say_done(r, a->seq, a->version, 0);
	return 0;
}

/*
 * A complete, checked announce of a version we want: planned, fetched
 * and installed.  The caller releases pl.  Returns 0 (DONE said) or
 * -errno (not said yet).
 */
static int announce_version(struct vp_repl *r, const announce_t *a, double t0,
			    struct announce_plan *pl, int *pinned)
{
	uint32_t bad = 0;
	int rc;

	vp_log(LOG_INFO, "repl", "fetching '%s' version %" PRIu64 " (%" PRIu64 " bytes)",
	       a->path, a->version, a->size);
	pl->mem = calloc(a->nchunks ? a->nchunks : 1, sizeof(*pl->mem));
	pl->need = calloc(a->nchunks ? a->nchunks : 1, sizeof(*pl->need));
	if (!pl->mem || !pl->need)
		return -ENOMEM;
	announce_stage(r, a);
	rc = announce_plan(r, a, pl);
	if (rc)
		return rc;
	rc = repl_fetch_chunks(r, a, pl->mem, pl->need, pl->nneed, &bad);
	repl_stage_unregister(r, rc);
	if (rc == -EIO || rc == -ETIMEDOUT)
		r->cons.refetch_after = vp_now();	/* if the producer still speaks, subscribe again */
	if (rc == -EBADMSG) {
		r->cons.checksum_errors++;
		vp_log(LOG_ERR, "repl", "'%s' version %" PRIu64 ": chunk %u does not match its hash; not installed",
		       a->path, a->version, bad);
	}
	if (rc)
		return rc;
	return announce_install(r, a, t0, pl, pinned);
}

/*
 * An announce is over: the GPU stage (if not bound) and the exposures of
 * its chunks (unless a relay pin keeps them) go before its chunks do.
 */
static void announce_end(struct vp_repl *r, const announce_t *a, struct announce_plan *pl,
			 int pinned)
{
	int preview = (a->flags & VP_ANNOUNCE_PREVIEW) != 0;
	struct prefetch *pf;

	vp_gpu_stage_abort(r->cons.gst);
	r->cons.gst = NULL;
	repl_relay_end(r, a);
	if (!pinned && !preview)
		repl_unexpose_seq(r, a->seq);	/* before its chunks go (a preview's stay with it) */
	if (pl->mem)
		for (uint32_t i = 0; i < a->nchunks; i++)
			if (pl->mem[i] && !in_land(pl->land, pl->mem[i]))
				vp_pool_put_chunk(r->pool, pl->mem[i]);	/* a relay's failure left them */
	repl_land_put(r, pl->land);
	free(pl->mem);
	free(pl->need);
	vp_data_put(pl->d);
	if (!preview && (pf = prefetch_find(r, a->path)) && pf->version <= a->version)
		repl_prefetch_drop(r, pf);	/* the version is in (or failed): its previews are done */
}

/*
 * An ANNOUNCE from the producer: assembled; skipped if we have that
 * version or a newer one; its chunk list checked; then kept for later (a
 * preview) or fetched and installed.  Every complete announce gets a
 * DONE.  Takes m.
 */
void repl_consumer_announce(struct vp_repl *r, struct vp_msg *m)
{
	struct announce_plan pl = { 0 };
	enum repl_verdict verdict;
	uint64_t have_v = 0, have_e = 0;
	announce_t *a;
	int rc = 0, pinned = 0;

	m = announce_assemble(r, m);
	if (!m)
		return;
	a = &m->u.announce;
	r->cons.from_producer = r->cons.from_relay = 0;
	verdict = announce_verdict(r, a, &have_v, &have_e);
	if (verdict == REPL_AHEAD) {
		repl_consumer_ahead(r, a->path, a->seq, have_v, have_e, a->version);
	} else if (verdict == REPL_SAME) {
		if (!vp_ns_relabel(r->ns, a->path, a->version, a->epoch))
			repl_ahead_clear(r, a->path);
		vp_log(LOG_INFO, "repl", "'%s' version %" PRIu64 ": the same bytes as ours, now of the producer's run; not installed again",
		       a->path, a->version);
		repl_say_done(r, a->seq, a->version, 0);
	} else if (verdict == REPL_SKIP) {
		if (!(a->flags & VP_ANNOUNCE_PREVIEW))
			r->cons.skipped++;
		vp_log(LOG_DEBUG, "repl", "'%s' version %" PRIu64 " skipped: a newer one is here or coming",
		       a->path, a->version);
		repl_say_done(r, a->seq, a->version, 0);
	} else if (!announce_list_ok(r, a)) {
		r->cons.checksum_errors++;
		vp_log(LOG_ERR, "repl", "'%s' version %" PRIu64 ": the chunk list does not match its checksum; not installed",
		       a->path, a->version);
		repl_say_done(r, a->seq, a->version, -EBADMSG);
	} else if (a->flags & VP_ANNOUNCE_PREVIEW) {
		consumer_preview(r, m);
	} else if ((rc = announce_version(r, a, vp_now(), &pl, &pinned))) {
		repl_say_done(r, a->seq, a->version, rc);
	}
	announce_end(r, a, &pl, pinned);
	/* said once its stage and chunks are let go: the log tells the state that is */
	if (rc && rc != -EBADMSG)	/* -EBADMSG: said already */
		vp_log(LOG_WARNING, "repl", "'%s' version %" PRIu64 " not fetched: %s; keeping the version we have",
		       a->path, a->version, strerror(-rc));
	free(r->cons.asm_refs);
	r->cons.asm_refs = NULL;
	free(m);
}

/*
 * A KEEP of a version later than ours, which the producer has on the PFS
 * only (its cache let it go while we were away): ours is replaced by the
 * PFS copy, if the PFS holds that very version.
 */
static void keep_from_pfs(struct vp_repl *r, const struct vp_msg *m)
{
	const char *p = m->u.op.path;
	struct vp_data *d;
	uint32_t mode = 0644;
	int rc;

	d = vp_ns_pfs_copy(r->ns, p, m->u.op.version, &mode, &rc);
	if (d) {
		rc = install(r, p, d, m->u.op.version, m->u.op.epoch, mode, m->u.op.seq);
		vp_data_put(d);
	}
	if (rc) {
		vp_log(LOG_WARNING, "repl", "'%s': the producer has version %" PRIu64 " on the PFS only, later than ours; reading it from the PFS: %s; keeping ours",
		       p, m->u.op.version, strerror(-rc));
		return;
	}
	r->cons.installed++;
	repl_ahead_clear(r, p);
	vp_log(LOG_INFO, "repl", "'%s' version %" PRIu64 " installed from the PFS (the producer holds it there only)",
	       p, m->u.op.version);
}

/* An OP from the producer, replayed on the mount by the same syscall. */
void repl_consumer_op(struct vp_repl *r, const struct vp_msg *m)
{
	const char *p = m->u.op.path, *p2 = m->u.op.path2;
	mode_t mode = (mode_t)(m->u.op.mode & 01777);	/* no setuid/setgid from the network */
	int rc = repl_mount_open(r);

	if (rc) {
		vp_log(LOG_WARNING, "repl", "the mount '%s' is gone: %s", r->cons.mnt, strerror(-rc));
		return;
	}
	vp_log(LOG_DEBUG, "repl", "replaying op %u on '%s'", m->u.op.kind, p);
	if (m->u.op.kind == VP_OP_MKDIR || m->u.op.kind == VP_OP_SYMLINK ||
	    m->u.op.kind == VP_OP_KEEP || m->u.op.kind == VP_OP_MKNOD || m->u.op.kind == VP_OP_LINK)
		repl_seen_add(r, p);
	switch (m->u.op.kind) {
	/* every path is contained beneath the mount: no symlink on the way is followed */
	case VP_OP_MKDIR:
		make_parents(r, p);
		rc = vp_safepath_mkdir(r->cons.mnt_fd, p, mode);
		if (rc == -EEXIST)
			rc = 0;
		break;
	case VP_OP_MKNOD:	/* the producer's numbers; the mount's nodev keeps a device shut */
		make_parents(r, p);
		vp_safepath_unlink(r->cons.mnt_fd, p, 0);
		rc = vp_safepath_mknod(r->cons.mnt_fd, p,
				       (mode_t)(m->u.op.mode & (S_IFMT | 01777)), (dev_t)m->u.op.rdev);
		break;
	case VP_OP_SYMLINK:	/* the target is data: stored as sent, never followed here */
		make_parents(r, p);
		vp_safepath_unlink(r->cons.mnt_fd, p, 0);
		rc = vp_safepath_symlink(r->cons.mnt_fd, p2, p);
		break;
	case VP_OP_LINK: {	/* p: the new name of the node at p2 */
		uint64_t have = 0, want = 0;

		if (!vp_ns_path_ino(r->ns, p, &have) && !vp_ns_path_ino(r->ns, p2, &want) &&
		    have == want)
			break;	/* already one file (loaded so from the PFS): no events */
		make_parents(r, p);
		vp_safepath_unlink(r->cons.mnt_fd, p, 0);
		rc = vp_safepath_link(r->cons.mnt_fd, p2, p);
		break;
	}
	case VP_OP_RENAME:
		repl_ahead_clear(r, p);
		repl_prefetch_forget(r, p, 0);	/* previews of a file that is not written there any more */
		make_parents(r, p2);
		rc = vp_safepath_rename(r->cons.mnt_fd, p, p2);
		if (rc == -ENOENT)
			rc = 0;
		break;
	case VP_OP_UNLINK:
		repl_ahead_clear(r, p);
		repl_prefetch_forget(r, p, 0);
		rc = vp_safepath_unlink(r->cons.mnt_fd, p, 0);
		vp_log(LOG_DEBUG, "repl", "unlink '%s': %s", p, rc ? strerror(-rc) : "done");
		if (rc == -ENOENT)
			rc = 0;
		break;
	case VP_OP_RMDIR:
		rc = vp_safepath_unlink(r->cons.mnt_fd, p, AT_REMOVEDIR);
		if (rc == -ENOENT)
			rc = 0;
		break;
	case VP_OP_KEEP: {	/* on the PFS only: is ours later, or older? */
		uint64_t have_v = 0, have_e = 0;
		enum repl_verdict v = repl_reconcile(r, p, m->u.op.epoch, m->u.op.version, NULL, 0,
						     &have_v, &have_e);

		repl_mount_close(r);
		if (v == REPL_AHEAD)
			repl_consumer_ahead(r, p, m->u.op.seq, have_v, have_e, m->u.op.version);
		else if (v == REPL_TAKE)
			keep_from_pfs(r, m);	/* ours is older, or we have none */
		return;
	}
	}
	repl_mount_close(r);
	if (rc)
		vp_log(LOG_WARNING, "repl", "replaying an operation on '%s': %s", p, strerror(-rc));
}
