/* ns: see ns.h and ns_i.h. */
#define _GNU_SOURCE
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "gpu.h"
#include "json.h"
#include "metrics.h"
#include "ns_i.h"
#include "repl.h"

#define CHUNK_SIZE (1u << 20)
#define VP_NAME_MAX 255
#define XATTR_VERSION "user.viperfs.version"
#define XATTR_STATE "user.viperfs.state"
#define XATTR_CONTROL "user.viperfs.control"

static struct timespec wall_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return ts;
}

/* ---- nodes and hash tables ------------------------------------------ */

static size_t name_hash(uint64_t parent, const char *name, size_t size)
{
	uint64_t h = 1469598103934665603ULL ^ parent;

	for (; *name; name++)
		h = (h ^ (unsigned char)*name) * 1099511628211ULL;
	return (size_t)(h % size);
}

void vp_node_get(struct vp_node *n)
{
	int old = __atomic_fetch_add(&n->refs, 1, __ATOMIC_RELAXED);

	assert(old > 0);
	(void)old;
}

static void ino_remove_locked(struct vp_ns *ns, struct vp_node *n)
{
	struct vp_node **p = &ns->by_ino[n->ino % ns->hash_size];

	while (*p && *p != n)
		p = &(*p)->ino_next;
	if (*p)
		*p = n->ino_next;
	ns->nnodes--;
}

static void node_free(struct vp_node *n)
{
	free(n->name);
	free(n->pfs_name);
	free(n->symlink);
	free(n);
}

/* Drops a reference; the last one frees the node.  ns->lock held. */
void vp_node_put(struct vp_ns *ns, struct vp_node *n)
{
	while (n && __atomic_sub_fetch(&n->refs, 1, __ATOMIC_ACQ_REL) == 0) {
		struct vp_node *pfs_parent = n->pfs_parent;

		assert(!n->parent);
		ino_remove_locked(ns, n);
		vp_lru_del_locked(ns, n);
		vp_data_put(n->cur);
		vp_data_put(n->work);
		node_free(n);
		n = pfs_parent;	/* drop the PFS place's ref, iteratively */
	}
}

static void rehash_locked(struct vp_ns *ns)
{
	size_t size = ns->hash_size * 4;
	struct vp_node **by_name = calloc(size, sizeof(*by_name));
	struct vp_node **by_ino = calloc(size, sizeof(*by_ino));

	if (!by_name || !by_ino) {
		free(by_name);
		free(by_ino);
		return;		/* longer chains, still correct */
	}
	for (size_t i = 0; i < ns->hash_size; i++) {
		struct vp_node *n, *next;

		for (n = ns->by_ino[i]; n; n = next) {
			next = n->ino_next;
			n->ino_next = by_ino[n->ino % size];
			by_ino[n->ino % size] = n;
		}
		for (n = ns->by_name[i]; n; n = next) {
			size_t h = name_hash(n->parent->ino, n->name, size);

			next = n->hash_next;
			n->hash_next = by_name[h];
			by_name[h] = n;
		}
	}
	free(ns->by_name);
	free(ns->by_ino);
	ns->by_name = by_name;
	ns->by_ino = by_ino;
	ns->hash_size = size;
}

static struct vp_node *node_new_locked(struct vp_ns *ns, enum vp_node_type type,
				       mode_t mode, uid_t uid, gid_t gid)
{
	struct vp_node *n = calloc(1, sizeof(*n));

	if (!n)
		return NULL;
	n->refs = 1;		/* the caller's, usually the link */
	n->ino = ns->next_ino++;
	n->type = type;
	n->mode = mode;
	n->uid = uid;
	n->gid = gid;
	n->atime = n->mtime = n->ctime = wall_now();
	n->pfs_version = VP_NO_VERSION;
	n->flushing_version = VP_NO_VERSION;
	n->kcache_version = VP_NO_VERSION;
	if (ns->nnodes >= ns->hash_size)
		rehash_locked(ns);
	n->ino_next = ns->by_ino[n->ino % ns->hash_size];
	ns->by_ino[n->ino % ns->hash_size] = n;
	ns->nnodes++;
	return n;
}

static struct vp_node *ino_find_locked(struct vp_ns *ns, uint64_t ino)
{
	struct vp_node *n = ns->by_ino[ino % ns->hash_size];

	while (n && n->ino != ino)
		n = n->ino_next;
	return n;
}

static struct vp_node *child_find_locked(struct vp_ns *ns,
					 struct vp_node *dir, const char *name)
{
	struct vp_node *n = ns->by_name[name_hash(dir->ino, name, ns->hash_size)];

	while (n && (n->parent != dir || strcmp(n->name, name)))
		n = n->hash_next;
	return n;
}

/* Links n (whose ref the link takes over) as dir/name.  ns->lock held. */
static int link_locked(struct vp_ns *ns, struct vp_node *dir,
		       struct vp_node *n, const char *name)
{
	size_t h;
	char *copy = strdup(name);

	if (!copy)
		return -ENOMEM;
	free(n->name);
	n->name = copy;
	n->parent = dir;
	h = name_hash(dir->ino, name, ns->hash_size);
	n->hash_next = ns->by_name[h];
	ns->by_name[h] = n;
	n->sib_prev = NULL;
	n->sib_next = dir->children;
	if (dir->children)
		dir->children->sib_prev = n;
	dir->children = n;
	dir->nchildren++;
	if (n->type == VP_NODE_DIR)
		dir->nsubdirs++;
	dir->mtime = dir->ctime = wall_now();
	return 0;
}

/* Takes n out of its directory without dropping the link's ref. */
static void detach_locked(struct vp_ns *ns, struct vp_node *n)
{
	struct vp_node *dir = n->parent;
	struct vp_node **p = &ns->by_name[name_hash(dir->ino, n->name, ns->hash_size)];

	while (*p != n)
		p = &(*p)->hash_next;
	*p = n->hash_next;
	if (n->sib_prev)
		n->sib_prev->sib_next = n->sib_next;
	else
		dir->children = n->sib_next;
	if (n->sib_next)
		n->sib_next->sib_prev = n->sib_prev;
	dir->nchildren--;
	if (n->type == VP_NODE_DIR)
		dir->nsubdirs--;
	dir->mtime = dir->ctime = wall_now();
	n->parent = NULL;
	n->ctime = wall_now();
}

/* Unlinks n and drops the link's reference. */
static void unlink_locked(struct vp_ns *ns, struct vp_node *n)
{
	if (n->type == VP_NODE_FILE)
		vp_gpu_forget(ns->gpu, n->ino);	/* its mirror leaves the GPU */
	detach_locked(ns, n);
	vp_node_put(ns, n);
}

void vp_lru_add_locked(struct vp_ns *ns, struct vp_node *n)
{
	vp_lru_del_locked(ns, n);
	n->lru_prev = ns->lru_tail;
	n->lru_next = NULL;
	if (ns->lru_tail)
		ns->lru_tail->lru_next = n;
	else
		ns->lru_head = n;
	ns->lru_tail = n;
	n->in_lru = 1;
}

void vp_lru_del_locked(struct vp_ns *ns, struct vp_node *n)
{
	if (!n->in_lru)
		return;
	if (n->lru_prev)
		n->lru_prev->lru_next = n->lru_next;
	else
		ns->lru_head = n->lru_next;
	if (n->lru_next)
		n->lru_next->lru_prev = n->lru_prev;
	else
		ns->lru_tail = n->lru_prev;
	n->lru_prev = n->lru_next = NULL;
	n->in_lru = 0;
}

/* ---- paths ----------------------------------------------------------- */

/* Builds a path by walking up parent links (live or PFS places). */
static int build_path(struct vp_ns *ns, struct vp_node *n, int pfs, char *buf,
		      size_t len)
{
	const char *parts[PATH_MAX / 2];
	size_t nparts = 0, used = 0;

	while (n != ns->root) {
		const char *name = pfs ? n->pfs_name : n->name;
		struct vp_node *up = pfs ? n->pfs_parent : n->parent;

		if (!up || !name || nparts == sizeof(parts) / sizeof(parts[0]))
			return -ENOENT;
		parts[nparts++] = name;
		n = up;
	}
	buf[0] = '\0';
	while (nparts--) {
		size_t l = strlen(parts[nparts]);

		if (used + l + 2 > len)
			return -ENAMETOOLONG;
		if (used)
			buf[used++] = '/';
		memcpy(buf + used, parts[nparts], l + 1);
		used += l;
	}
	return 0;
}

int vp_pfs_path_locked(struct vp_ns *ns, struct vp_node *n, char *buf,
		       size_t len)
{
	return build_path(ns, n, 1, buf, len);
}

static int live_path_locked(struct vp_ns *ns, struct vp_node *n, char *buf,
			    size_t len)
{
	return build_path(ns, n, 0, buf, len);
}

/*
 * Checks a name for a new entry in dir.  The PFS path it will have must
 * fit PATH_MAX with room for the staging name.
 */
static int check_new_name_locked(struct vp_ns *ns, struct vp_node *dir,
				 const char *name)
{
	char path[PATH_MAX];
	size_t len = strlen(name);

	if (len == 0 || strchr(name, '/') || !strcmp(name, ".") ||
	    !strcmp(name, ".."))
		return -EINVAL;
	if (len > VP_NAME_MAX)
		return -ENAMETOOLONG;
	if (dir == ns->root && !strcmp(name, VP_STAGING_DIR)) {
		vp_log(LOG_WARNING, "fs", "refused to create '%s': the name is reserved for viperfs' staging folder",
		       name);
		return -EPERM;
	}
	if (live_path_locked(ns, dir, path, sizeof(path) - 80 - len))
		return -ENAMETOOLONG;
	return 0;
}

/* ---- attributes ------------------------------------------------------ */

static uint64_t node_size_locked(struct vp_node *n)
{
	if (n->type == VP_NODE_SYMLINK)
		return strlen(n->symlink);
	if (n->type == VP_NODE_DIR)
		return 4096;
	if (n->work)
		return vp_data_size(n->work);
	return n->size;
}

static void fill_stat_locked(struct vp_node *n, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = n->ino;
	st->st_mode = n->mode;
	st->st_nlink = n->type == VP_NODE_DIR ? 2 + n->nsubdirs : 1;
	st->st_uid = n->uid;
	st->st_gid = n->gid;
	st->st_size = (off_t)node_size_locked(n);
	st->st_blocks = (st->st_size + 511) / 512;
	st->st_blksize = CHUNK_SIZE;
	st->st_atim = n->atime;
	st->st_mtim = n->mtime;
	st->st_ctim = n->ctime;
}

/* ---- loading from the PFS ------------------------------------------- */

static uint64_t read_version_xattr(int dirfd, const char *name)
{
	char buf[32];
	ssize_t n;
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);

	if (fd < 0)
		return 0;
	n = fgetxattr(fd, XATTR_VERSION, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	return strtoull(buf, NULL, 10);
}

struct pfs_entry {
	char *name;
	struct stat st;
	char *target;
	uint64_t version;
};

/* Reads a PFS directory into a new array.  No ns->lock held. */
static int read_pfs_dir(int fd, int is_root, struct pfs_entry **out, size_t *count)
{
	int dfd = dup(fd);
	DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
	struct pfs_entry *ents = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;

	if (!d) {
		if (dfd >= 0)
			close(dfd);
		return -errno;
	}
	while ((de = readdir(d))) {
		struct pfs_entry *e;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (is_root && !strcmp(de->d_name, VP_STAGING_DIR))
			continue;
		if (strlen(de->d_name) > VP_NAME_MAX)
			continue;
		if (n == cap) {
			struct pfs_entry *more;

			cap = cap ? cap * 2 : 32;
			more = realloc(ents, cap * sizeof(*ents));
			if (!more)
				break;
			ents = more;
		}
		e = &ents[n];
		memset(e, 0, sizeof(*e));
		if (fstatat(fd, de->d_name, &e->st, AT_SYMLINK_NOFOLLOW))
			continue;
		if (!S_ISREG(e->st.st_mode) && !S_ISDIR(e->st.st_mode) &&
		    !S_ISLNK(e->st.st_mode))
			continue;	/* sockets, devices: not model files */
		if (S_ISLNK(e->st.st_mode)) {
			char buf[PATH_MAX];
			ssize_t l = readlinkat(fd, de->d_name, buf, sizeof(buf) - 1);

			if (l < 0)
				continue;
			buf[l] = '\0';
			e->target = strdup(buf);
		}
		if (S_ISREG(e->st.st_mode))
			e->version = read_version_xattr(fd, de->d_name);
		e->name = strdup(de->d_name);
		if (!e->name)
			break;
		n++;
	}
	closedir(d);
	*out = ents;
	*count = n;
	return 0;
}

/*
 * Makes sure dir's entries from the PFS are in the tree.  No locks held on
 * entry.  Returns 0 or -errno (a PFS that cannot be read is an -EIO).
 */
static int ensure_loaded(struct vp_ns *ns, struct vp_node *dir)
{
	char path[PATH_MAX];
	struct pfs_entry *ents = NULL;
	size_t count = 0;
	int fd, rc = 0;

	pthread_mutex_lock(&ns->lock);
	rc = dir->loaded;
	if (!rc && ns->replica_loaded)
		rc = dir->loaded = 1;	/* a replica's tree comes from the producer now */
	pthread_mutex_unlock(&ns->lock);
	if (rc)
		return 0;

	pthread_mutex_lock(&ns->pfs_lock);
	pthread_mutex_lock(&ns->lock);
	if (dir->loaded) {
		rc = 0;
		goto out_unlock;
	}
	if (vp_pfs_path_locked(ns, dir, path, sizeof(path))) {
		dir->loaded = 1;	/* not on the PFS: nothing to read */
		rc = 0;
		goto out_unlock;
	}
	pthread_mutex_unlock(&ns->lock);

	fd = vp_pfs_open_dir(ns->pfs_root_fd, path);
	if (fd >= 0) {
		rc = read_pfs_dir(fd, dir == ns->root, &ents, &count);
		close(fd);
	} else {
		rc = fd;
	}
	pthread_mutex_lock(&ns->lock);
	if (rc) {
		vp_log(LOG_ERR, "fs", "reading directory '%s' on the PFS '%s': %s",
		       path, ns->pfs_dir, strerror(-rc));
		rc = rc == -ENOENT ? 0 : -EIO;
		if (!rc)
			dir->loaded = 1;
		goto out_unlock;
	}
	for (size_t i = 0; i < count; i++) {
		struct pfs_entry *e = &ents[i];
		enum vp_node_type type = S_ISDIR(e->st.st_mode) ? VP_NODE_DIR :
			S_ISLNK(e->st.st_mode) ? VP_NODE_SYMLINK : VP_NODE_FILE;
		struct vp_node *n;

		if (child_find_locked(ns, dir, e->name))
			continue;
		n = node_new_locked(ns, type, e->st.st_mode, e->st.st_uid,
				    e->st.st_gid);
		if (!n) {
			rc = -ENOMEM;
			break;
		}
		n->atime = e->st.st_atim;
		n->mtime = e->st.st_mtim;
		n->ctime = e->st.st_ctim;
		n->symlink = e->target;
		e->target = NULL;
		n->size = (uint64_t)e->st.st_size;
		n->version = e->version;
		n->pfs_version = n->version;
		vp_node_get(dir);
		n->pfs_parent = dir;
		n->pfs_name = strdup(e->name);
		if (!n->pfs_name || link_locked(ns, dir, n, e->name)) {
			n->parent = NULL;
			vp_node_put(ns, n);
			rc = -ENOMEM;
			break;
		}
	}
	if (!rc)
		dir->loaded = 1;
out_unlock:
	pthread_mutex_unlock(&ns->lock);
	pthread_mutex_unlock(&ns->pfs_lock);
	for (size_t i = 0; i < count; i++) {
		free(ents[i].name);
		free(ents[i].target);
	}
	free(ents);
	return rc;
}

/*
 * Returns a new reference to the bytes of n's latest version, reading
 * them lazily from the PFS if they are not in the cache.  No locks held.
 */
/*
 * The bytes of version `version` of n from its GPU mirror, as a new data
 * in the cache, or NULL (no mirror, no room in the cache soon enough).
 * No locks held.
 */
static struct vp_data *gpu_load(struct vp_ns *ns, struct vp_node *n, uint64_t version)
{
	size_t chunk = vp_pool_chunk_size(ns->pool);
	uint64_t size;
	size_t nchunks;
	void **mem;
	struct vp_data *d = NULL;
	int err = 0;

	if (!ns->gpu || (size = vp_gpu_mirror_size(ns->gpu, n->ino, version)) == UINT64_MAX)
		return NULL;
	nchunks = (size_t)((size + chunk - 1) / chunk);
	mem = calloc(nchunks ? nchunks : 1, sizeof(*mem));
	if (!mem)
		return NULL;
	for (size_t i = 0; i < nchunks && !err; i++) {
		uint64_t off = (uint64_t)i * chunk;
		size_t len = size - off < chunk ? (size_t)(size - off) : chunk;

		/* a short wait: the evictor frees clean versions under pressure */
		mem[i] = vp_pool_get_chunk(ns->pool, ns->cfg.cache_wait < 1 ? ns->cfg.cache_wait : 1, &err);
		if (!mem[i] || vp_gpu_read(ns->gpu, n->ino, version, mem[i], len, off) != (ssize_t)len)
			err = err ? err : -EIO;
	}
	if (!err)
		d = vp_data_adopt(ns->pool, mem, nchunks, size);	/* takes the chunks */
	else
		for (size_t i = 0; i < nchunks; i++)
			if (mem[i])
				vp_pool_put_chunk(ns->pool, mem[i]);
	free(mem);
	return d;
}

static int version_data(struct vp_ns *ns, struct vp_node *n,
			struct vp_data **out)
{
	char path[PATH_MAX];
	struct vp_data *d;
	struct stat st;
	uint64_t version;
	int fd, rc;

	pthread_mutex_lock(&ns->lock);
	if (n->cur) {
		*out = vp_data_get(n->cur);
		pthread_mutex_unlock(&ns->lock);
		return 0;
	}
	version = n->version;
	pthread_mutex_unlock(&ns->lock);

	/* evicted from RAM but mirrored in GPU memory: back from there, not the PFS */
	d = gpu_load(ns, n, version);
	if (d) {
		pthread_mutex_lock(&ns->lock);
		if (!n->cur && n->version == version) {
			n->cur = d;
			n->size = vp_data_size(d);
			if (!n->work)
				vp_lru_add_locked(ns, n);
			d = NULL;
		}
		*out = vp_data_get(n->cur ? n->cur : d);
		pthread_mutex_unlock(&ns->lock);
		vp_data_put(d);
		return 0;
	}

	pthread_mutex_lock(&ns->pfs_lock);
	pthread_mutex_lock(&ns->lock);
	if (n->cur) {
		*out = vp_data_get(n->cur);
		rc = 0;
		goto out_unlock;
	}
	version = n->version;
	if (n->pfs_version != version) {
		/* a version nobody wrote and that is not on the PFS: empty */
		rc = -EIO;
		vp_log(LOG_ERR, "fs", "file ino %" PRIu64 " has no bytes in the cache and none on the PFS",
		       n->ino);
		goto out_unlock;
	}
	rc = vp_pfs_path_locked(ns, n, path, sizeof(path));
	pthread_mutex_unlock(&ns->lock);
	if (rc) {
		pthread_mutex_unlock(&ns->pfs_lock);
		return -EIO;
	}
	fd = vp_pfs_openat(ns->pfs_root_fd, path, O_RDONLY | O_NOFOLLOW, 0);
	if (fd < 0 || fstat(fd, &st)) {
		rc = fd < 0 ? fd : -errno;
		vp_log(LOG_ERR, "fs", "reading '%s' from the PFS '%s': %s",
		       path, ns->pfs_dir, strerror(-rc));
		if (fd >= 0)
			close(fd);
		pthread_mutex_unlock(&ns->pfs_lock);
		return -EIO;
	}
	d = vp_data_new_backed(ns->pool, fd, (uint64_t)st.st_size);
	pthread_mutex_lock(&ns->lock);
	if (!d) {
		rc = -ENOMEM;
	} else if (n->cur) {
		vp_data_put(d);
		*out = vp_data_get(n->cur);
		rc = 0;
	} else {
		n->cur = d;
		n->size = vp_data_size(d);
		*out = vp_data_get(d);
		if (!n->work)
			vp_lru_add_locked(ns, n);
		rc = 0;
	}
out_unlock:
	pthread_mutex_unlock(&ns->lock);
	pthread_mutex_unlock(&ns->pfs_lock);
	return rc;
}

/* Loads every directory below dir from the PFS.  No locks held. */
static void load_tree(struct vp_ns *ns, struct vp_node *dir)
{
	struct vp_node **subdirs = NULL;
	size_t n = 0;

	if (ensure_loaded(ns, dir))
		return;
	pthread_mutex_lock(&ns->lock);
	subdirs = calloc(dir->nsubdirs + 1, sizeof(*subdirs));
	for (struct vp_node *c = dir->children; c && subdirs; c = c->sib_next) {
		if (c->type == VP_NODE_DIR && n < dir->nsubdirs) {
			vp_node_get(c);
			subdirs[n++] = c;
		}
	}
	pthread_mutex_unlock(&ns->lock);
	for (size_t i = 0; i < n; i++) {
		load_tree(ns, subdirs[i]);
		pthread_mutex_lock(&ns->lock);
		vp_node_put(ns, subdirs[i]);
		pthread_mutex_unlock(&ns->lock);
	}
	free(subdirs);
}

/* ---- lifecycle ------------------------------------------------------- */

struct vp_ns *vp_ns_new(const struct vp_config *cfg, const char *pfs_dir,
			char *err, size_t errlen)
{
	struct vp_ns *ns = calloc(1, sizeof(*ns));
	struct stat st;
	int rc;

	if (!ns) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	ns->cfg = *cfg;
	ns->pfs_root_fd = ns->staging_fd = -1;
	if (!realpath(pfs_dir, ns->pfs_dir)) {
		snprintf(err, errlen, "PFS directory '%s': %s; create it or name another",
			 pfs_dir, strerror(errno));
		goto err_free;
	}
	ns->pfs_root_fd = vp_pfs_open_root(ns->pfs_dir, err, errlen);
	if (ns->pfs_root_fd < 0)
		goto err_free;
	ns->replica = cfg->subscribe[0] != 0;
	if (ns->replica) {
		/* a consumer never writes the PFS: the producer owns staging */
		ns->staging_fd = -1;
		goto staging_done;
	}
	if (mkdirat(ns->pfs_root_fd, VP_STAGING_DIR, 0700) && errno != EEXIST) {
		snprintf(err, errlen, "cannot create staging folder '%s/%s': %s",
			 ns->pfs_dir, VP_STAGING_DIR, strerror(errno));
		goto err_close;
	}
	ns->staging_fd = openat(ns->pfs_root_fd, VP_STAGING_DIR,
				O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (ns->staging_fd < 0) {
		snprintf(err, errlen, "cannot open staging folder '%s/%s': %s",
			 ns->pfs_dir, VP_STAGING_DIR, strerror(errno));
		goto err_close;
	}
	vp_pfs_clear_staging(ns->staging_fd);
staging_done:

	ns->pool = vp_pool_new(CHUNK_SIZE, cfg->ram_cache, cfg->ram_prefault);
	if (!ns->pool) {
		snprintf(err, errlen, "cannot set up a RAM cache of %llu bytes: %s (ram_cache must be at least 1M)",
			 (unsigned long long)cfg->ram_cache, strerror(errno));
		goto err_close;
	}
	vp_pool_set_pressure_cb(ns->pool, vp_flush_pressure, ns);
	if (cfg->publish == VP_PUBLISH_SCHEDULE) {
		ns->sched = vp_sched_new(cfg, err, errlen);
		if (!ns->sched) {
			vp_pool_free(ns->pool);
			goto err_close;
		}
	}
	vp_tbucket_init(&ns->flush_bucket, cfg->flush_bw,
			cfg->flush_bw ? (cfg->flush_bw / 8 > CHUNK_SIZE ? cfg->flush_bw / 8 : CHUNK_SIZE) : 0,
			vp_now);
	pthread_mutex_init(&ns->pfs_lock, NULL);
	pthread_mutex_init(&ns->lock, NULL);
	pthread_mutex_init(&ns->handles_lock, NULL);
	vp_cond_init_monotonic(&ns->flush_cond);
	vp_cond_init_monotonic(&ns->worker_cond);
	vp_cond_init_monotonic(&ns->evict_cond);
	vp_cond_init_monotonic(&ns->event_cond);
	vp_cond_init_monotonic(&ns->idle_cond);

	ns->hash_size = 1024;
	ns->by_name = calloc(ns->hash_size, sizeof(*ns->by_name));
	ns->by_ino = calloc(ns->hash_size, sizeof(*ns->by_ino));
	ns->next_ino = VP_ROOT_INO;
	ns->next_seq = 1;
	if (!ns->by_name || !ns->by_ino) {
		snprintf(err, errlen, "out of memory");
		goto err_pool;
	}
	fstat(ns->pfs_root_fd, &st);
	ns->root = node_new_locked(ns, VP_NODE_DIR, st.st_mode, st.st_uid,
				   st.st_gid);
	if (!ns->root) {
		snprintf(err, errlen, "out of memory");
		goto err_pool;
	}
	ns->root->atime = st.st_atim;
	ns->root->mtime = st.st_mtim;
	ns->root->ctime = st.st_ctim;
	rc = vp_flush_start(ns);
	if (rc) {
		snprintf(err, errlen, "cannot start flush threads: %s",
			 strerror(-rc));
		goto err_root;
	}
	if (ns->replica) {
		/*
		 * A replica reads the PFS tree once, now: its fallback copy.
		 * Later lazy loads of the shared PFS would race with the
		 * producer's replayed changes (a directory renamed into place
		 * on the PFS before the rename arrives here).
		 */
		load_tree(ns, ns->root);
		ns->replica_loaded = 1;
	}
	return ns;

err_root:
	node_free(ns->root);
err_pool:
	free(ns->by_name);
	free(ns->by_ino);
	vp_pool_free(ns->pool);
	vp_sched_free(ns->sched);
err_close:
	if (ns->staging_fd >= 0)
		close(ns->staging_fd);
	close(ns->pfs_root_fd);
err_free:
	free(ns);
	return NULL;
}

const struct vp_config *vp_ns_config(struct vp_ns *ns)
{
	return &ns->cfg;
}

void vp_ns_set_control_path(struct vp_ns *ns, const char *path)
{
	pthread_mutex_lock(&ns->lock);
	snprintf(ns->control_path, sizeof(ns->control_path), "%s", path);
	pthread_mutex_unlock(&ns->lock);
}

/* Queues a forced flush of every unflushed file below n.  ns->lock held. */
static void force_subtree_locked(struct vp_ns *ns, struct vp_node *n)
{
	if (n->type == VP_NODE_DIR) {
		for (struct vp_node *c = n->children; c; c = c->sib_next)
			force_subtree_locked(ns, c);
		return;
	}
	if (n->type != VP_NODE_FILE || !n->cur)
		return;
	if (n->pending && n->pending->version == n->version) {
		n->pending->forced = 1;
		return;
	}
	/* a queued entry with an older version (flush=every:N) takes the newest */
	if (n->pfs_version != n->version && n->flushing_version != n->version)
		vp_flush_commit_locked(ns, n, 1);
}

static unsigned int count_unflushed_locked(struct vp_ns *ns, struct vp_node *n,
					   int report)
{
	unsigned int count = 0;

	if (n->type == VP_NODE_DIR) {
		for (struct vp_node *c = n->children; c; c = c->sib_next)
			count += count_unflushed_locked(ns, c, report);
	} else if (n->type == VP_NODE_FILE && n->cur &&
		   n->pfs_version != n->version) {
		char path[PATH_MAX];

		count++;
		if (report && !live_path_locked(ns, n, path, sizeof(path)))
			vp_log(LOG_ERR, "flush", "'%s' version %" PRIu64 " (%" PRIu64 " bytes) did not reach the PFS '%s' before exit",
			       path, n->version, n->size, ns->pfs_dir);
	}
	return count;
}

unsigned int vp_ns_free(struct vp_ns *ns)
{
	struct vp_flush_progress p;
	double deadline;
	unsigned int left;
	int rc;

	/*
	 * Handles whose RELEASE the kernel still had queued when the loop
	 * stopped: released now, as that RELEASE would have (a last close
	 * commits), so that their versions are flushed below.
	 */
	for (;;) {
		struct vp_handle *h;

		pthread_mutex_lock(&ns->handles_lock);
		h = ns->handles;
		pthread_mutex_unlock(&ns->handles_lock);
		if (!h)
			break;
		vp_ns_release(ns, h);
	}
	if (vp_ns_flush_start(ns, "", &p) == 0) {
		deadline = ns->cfg.unmount_wait > 0 ?
			vp_now() + ns->cfg.unmount_wait : 0;
		if (p.ops_left)
			vp_log(LOG_NOTICE, "flush", "unmount: writing %" PRIu64 " bytes still pending to the PFS",
			       p.bytes_total);
		do {
			double wait = 1.0;

			if (deadline && deadline - vp_now() < wait)
				wait = deadline - vp_now();
			if (wait <= 0)
				break;
			rc = vp_ns_flush_poll(ns, &p, wait);
		} while (rc == 0);
	}
	pthread_mutex_lock(&ns->lock);
	left = ns->replica ? 0 : count_unflushed_locked(ns, ns->root, 1);
	pthread_mutex_unlock(&ns->lock);
	vp_flush_stop(ns);

	/* the kernel is gone: free every node whatever its count */
	for (size_t i = 0; i < ns->hash_size; i++) {
		struct vp_node *n, *next;

		for (n = ns->by_ino[i]; n; n = next) {
			next = n->ino_next;
			vp_data_put(n->cur);
			vp_data_put(n->work);
			node_free(n);
		}
	}
	free(ns->by_name);
	free(ns->by_ino);
	vp_pool_free(ns->pool);
	vp_sched_free(ns->sched);
	vp_tbucket_release(&ns->flush_bucket);
	if (ns->staging_fd >= 0)
		close(ns->staging_fd);
	close(ns->pfs_root_fd);
	while (ns->installs) {
		struct install *in = ns->installs;

		ns->installs = in->next;
		vp_data_put(in->data);
		free(in->path);
		free(in);
	}
	pthread_cond_destroy(&ns->flush_cond);
	pthread_cond_destroy(&ns->worker_cond);
	pthread_cond_destroy(&ns->evict_cond);
	pthread_cond_destroy(&ns->event_cond);
	pthread_cond_destroy(&ns->idle_cond);
	for (size_t i = 0; i < 256; i++)
		free(ns->events[i].path);
	pthread_mutex_destroy(&ns->lock);
	pthread_mutex_destroy(&ns->handles_lock);
	pthread_mutex_destroy(&ns->pfs_lock);
	free(ns);
	return left;
}

static struct vp_node *resolve_locked(struct vp_ns *ns, const char *path);
static void load_tree(struct vp_ns *ns, struct vp_node *dir);

/* ---- replication ---------------------------------------------------- */

static __thread pid_t caller_tid;

void vp_ns_set_caller(pid_t tid)
{
	caller_tid = tid;
}

void vp_ns_set_installer(struct vp_ns *ns, pid_t tid)
{
	pthread_mutex_lock(&ns->lock);
	ns->installer_tid = tid;
	pthread_mutex_unlock(&ns->lock);
}

void vp_ns_set_repl(struct vp_ns *ns, struct vp_repl *repl)
{
	pthread_mutex_lock(&ns->lock);
	ns->repl = repl;
	pthread_mutex_unlock(&ns->lock);
}

struct vp_pool *vp_ns_pool(struct vp_ns *ns)
{
	return ns->pool;
}

static int is_installer_locked(struct vp_ns *ns)
{
	return ns->installer_tid && caller_tid == ns->installer_tid;
}

static void record_event_at_locked(struct vp_ns *ns, struct vp_node *n, double when);

void vp_ns_installed(struct vp_ns *ns)
{
	pthread_mutex_lock(&ns->lock);
	for (unsigned int i = 0; i < ns->ndeferred; i++) {
		/* stamped with the rename's time: the version was in place then */
		record_event_at_locked(ns, ns->deferred[i], ns->deferred_at[i]);
		vp_node_put(ns, ns->deferred[i]);
	}
	ns->ndeferred = 0;
	pthread_mutex_unlock(&ns->lock);
}

/* On a consumer, refuses changes that do not come from the installer. */
static int replica_refuse_locked(struct vp_ns *ns, const char *what,
				 const char *name)
{
	if (!ns->replica || is_installer_locked(ns))
		return 0;
	vp_log(LOG_NOTICE, "fs", "%s '%s' refused: this mount is a replica of '%s' and is read-only",
	       what, name, ns->cfg.subscribe);
	return -EROFS;
}

int vp_ns_stage_install(struct vp_ns *ns, const char *path, struct vp_data *d,
			uint64_t version, uint32_t mode)
{
	struct install *in = calloc(1, sizeof(*in));

	if (!in || !(in->path = strdup(path))) {
		free(in);
		return -ENOMEM;
	}
	in->data = vp_data_get(d);
	in->version = version;
	in->mode = mode;
	pthread_mutex_lock(&ns->lock);
	in->next = ns->installs;
	ns->installs = in;
	pthread_mutex_unlock(&ns->lock);
	return 0;
}

void vp_ns_unstage_install(struct vp_ns *ns, const char *path)
{
	pthread_mutex_lock(&ns->lock);
	for (struct install **pp = &ns->installs; *pp; pp = &(*pp)->next) {
		struct install *in = *pp;

		if (!strcmp(in->path, path)) {
			*pp = in->next;
			vp_data_put(in->data);
			free(in->path);
			free(in);
			break;
		}
	}
	pthread_mutex_unlock(&ns->lock);
}

/*
 * The staged install for dir/name, taken out of the list (you own it), or
 * NULL.  Only for the installer thread.  ns->lock held.
 */
static struct install *take_install_locked(struct vp_ns *ns, struct vp_node *dir,
					   const char *name)
{
	char path[PATH_MAX], full[PATH_MAX];

	if (!ns->installs || !is_installer_locked(ns) ||
	    live_path_locked(ns, dir, path, sizeof(path)))
		return NULL;
	if (snprintf(full, sizeof(full), "%s%s%s", path, *path ? "/" : "", name) >= (int)sizeof(full))
		return NULL;
	for (struct install **pp = &ns->installs; *pp; pp = &(*pp)->next) {
		struct install *in = *pp;

		if (!strcmp(in->path, full)) {
			*pp = in->next;
			return in;
		}
	}
	return NULL;
}

static void install_free(struct install *in)
{
	if (!in)
		return;
	vp_data_put(in->data);
	free(in->path);
	free(in);
}

int vp_ns_install_hidden(struct vp_ns *ns, const char *name, struct vp_data *d,
			 uint64_t version, uint32_t mode)
{
	struct vp_node *dir, *n, *old;
	int rc = 0;

	pthread_mutex_lock(&ns->lock);
	dir = child_find_locked(ns, ns->root, VP_INCOMING_DIR);
	if (!dir) {
		dir = node_new_locked(ns, VP_NODE_DIR, S_IFDIR | 0700, 0, 0);
		if (!dir || link_locked(ns, ns->root, dir, VP_INCOMING_DIR)) {
			if (dir)
				vp_node_put(ns, dir);
			rc = -ENOMEM;
			goto out_unlock;
		}
		dir->loaded = 1;
	}
	old = child_find_locked(ns, dir, name);
	if (old)
		unlink_locked(ns, old);
	n = node_new_locked(ns, VP_NODE_FILE, S_IFREG | (mode & 07777), 0, 0);
	if (!n || link_locked(ns, dir, n, name)) {
		if (n)
			vp_node_put(ns, n);
		rc = -ENOMEM;
		goto out_unlock;
	}
	n->cur = vp_data_get(d);
	n->size = vp_data_size(d);
	n->version = version;
	/* the GPU tier mirrors it (taking what was staged while it arrived) */
	vp_gpu_mirror(ns->gpu, n->ino, version, d);
out_unlock:
	pthread_mutex_unlock(&ns->lock);
	return rc;
}

struct vp_data *vp_ns_path_data(struct vp_ns *ns, const char *path)
{
	struct vp_data *d = NULL;
	struct vp_node *n;

	pthread_mutex_lock(&ns->lock);
	n = resolve_locked(ns, path);
	if (n && n->type == VP_NODE_FILE && n->cur)
		d = vp_data_get(n->cur);
	pthread_mutex_unlock(&ns->lock);
	return d;
}

uint64_t vp_ns_path_version(struct vp_ns *ns, const char *path)
{
	struct vp_node *n;
	uint64_t v = UINT64_MAX;

	pthread_mutex_lock(&ns->lock);
	n = resolve_locked(ns, path);
	if (n && n->type == VP_NODE_FILE)
		v = n->version;
	pthread_mutex_unlock(&ns->lock);
	return v;
}

static int64_t ts_ns(struct timespec t)
{
	return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void snapshot_locked(struct vp_ns *ns, struct vp_node *dir,
			    vp_ns_snapshot_cb cb, void *arg)
{
	char path[PATH_MAX];

	for (struct vp_node *c = dir->children; c; c = c->sib_next) {
		if (live_path_locked(ns, c, path, sizeof(path)))
			continue;
		if (c->type == VP_NODE_DIR) {
			cb(arg, 0, path, NULL, c->mode, NULL, 0, ts_ns(c->mtime));
			snapshot_locked(ns, c, cb, arg);
		} else if (c->type == VP_NODE_SYMLINK) {
			cb(arg, 2, path, c->symlink, c->mode, NULL, 0, ts_ns(c->mtime));
		} else if (c->version > 0 || c->cur) {
			cb(arg, 1, path, NULL, c->mode, c->cur, c->version, ts_ns(c->mtime));
		}
	}
}

void vp_ns_load_all(struct vp_ns *ns)
{
	load_tree(ns, ns->root);
}

void vp_ns_snapshot(struct vp_ns *ns, vp_ns_snapshot_cb cb, void *arg)
{
	pthread_mutex_lock(&ns->lock);
	snapshot_locked(ns, ns->root, cb, arg);
	pthread_mutex_unlock(&ns->lock);
}

/* Tells the replication engine about a namespace change.  ns->lock held. */
static void note_op_locked(struct vp_ns *ns, enum vp_op_kind kind,
			   struct vp_node *n, struct vp_node *newdir,
			   const char *newname)
{
	char path[PATH_MAX], path2[PATH_MAX] = "";

	if (!ns->repl || ns->replica || live_path_locked(ns, n, path, sizeof(path)))
		return;
	if (kind == VP_OP_RENAME) {
		char dpath[PATH_MAX];

		if (live_path_locked(ns, newdir, dpath, sizeof(dpath)) ||
		    snprintf(path2, sizeof(path2), "%s%s%s", dpath, *dpath ? "/" : "",
			     newname) >= (int)sizeof(path2))
			return;
	} else if (kind == VP_OP_SYMLINK) {
		snprintf(path2, sizeof(path2), "%s", n->symlink);
	}
	vp_repl_note_op_locked(ns->repl, kind, path, path2, n->mode);
}

/* Ships n's newest version to consumers.  ns->lock held. */
static void note_version_locked(struct vp_ns *ns, struct vp_node *n)
{
	char path[PATH_MAX];

	if (!ns->repl || ns->replica || !n->cur ||
	    live_path_locked(ns, n, path, sizeof(path)))
		return;
	vp_repl_note_version_locked(ns->repl, path, n->cur, n->version, n->mode,
				    ts_ns(n->mtime));
}

/* ---- names ----------------------------------------------------------- */

/* Returns the node of ino with a new reference, or NULL.  No lock held. */
static struct vp_node *get_node(struct vp_ns *ns, uint64_t ino)
{
	struct vp_node *n;

	pthread_mutex_lock(&ns->lock);
	n = ino_find_locked(ns, ino);
	if (n)
		vp_node_get(n);
	pthread_mutex_unlock(&ns->lock);
	return n;
}

/* Finds a directory by inode, loaded; returns it with a ref, or -errno. */
static int get_loaded_dir(struct vp_ns *ns, uint64_t ino, struct vp_node **out)
{
	struct vp_node *dir = get_node(ns, ino);
	int rc;

	if (!dir)
		return -ESTALE;
	if (dir->type != VP_NODE_DIR) {
		rc = -ENOTDIR;
		goto err_put;
	}
	rc = ensure_loaded(ns, dir);
	if (rc)
		goto err_put;
	*out = dir;
	return 0;
err_put:
	pthread_mutex_lock(&ns->lock);
	vp_node_put(ns, dir);
	pthread_mutex_unlock(&ns->lock);
	return rc;
}

static void put_unlocked(struct vp_ns *ns, struct vp_node *n)
{
	pthread_mutex_lock(&ns->lock);
	vp_node_put(ns, n);
	pthread_mutex_unlock(&ns->lock);
}

int vp_ns_lookup(struct vp_ns *ns, uint64_t parent, const char *name,
		 struct stat *st)
{
	struct vp_node *dir, *n;
	int rc;

	if (strlen(name) > VP_NAME_MAX)
		return -ENAMETOOLONG;
	rc = get_loaded_dir(ns, parent, &dir);
	if (rc)
		return rc;
	pthread_mutex_lock(&ns->lock);
	n = child_find_locked(ns, dir, name);
	if (n) {
		vp_node_get(n);		/* the kernel's lookup */
		fill_stat_locked(n, st);
	} else {
		rc = -ENOENT;
	}
	vp_node_put(ns, dir);
	pthread_mutex_unlock(&ns->lock);
	return rc;
}

void vp_ns_forget(struct vp_ns *ns, uint64_t ino, uint64_t nlookup)
{
	struct vp_node *n;

	if (ino == VP_ROOT_INO)
		return;
	pthread_mutex_lock(&ns->lock);
	n = ino_find_locked(ns, ino);
	/* one put per kernel lookup; stop if a put frees the node */
	for (; n && nlookup; nlookup--) {
		int last = __atomic_load_n(&n->refs, __ATOMIC_RELAXED) == 1;

		vp_node_put(ns, n);
		if (last)
			break;
	}
	pthread_mutex_unlock(&ns->lock);
}

int vp_ns_getattr(struct vp_ns *ns, uint64_t ino, struct stat *st)
{
	struct vp_node *n;
	int rc = 0;

	pthread_mutex_lock(&ns->lock);
	n = ino_find_locked(ns, ino);
	if (n)
		fill_stat_locked(n, st);
	else
		rc = -ESTALE;
	pthread_mutex_unlock(&ns->lock);
	return rc;
}

static double wall_seconds(void)
{
	struct timespec now;

	clock_gettime(CLOCK_REALTIME, &now);
	return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

/* Records that path now holds n's newest version, now.  ns->lock held. */
static void record_event_locked(struct vp_ns *ns, struct vp_node *n)
{
	record_event_at_locked(ns, n, wall_seconds());
}

/* The same, as of when (wall-clock seconds).  ns->lock held. */
static void record_event_at_locked(struct vp_ns *ns, struct vp_node *n, double when)
{
	char path[PATH_MAX];
	struct vp_event_rec *e;

	if (n->type != VP_NODE_FILE || live_path_locked(ns, n, path, sizeof(path)) ||
	    !strncmp(path, VP_INCOMING_DIR "/", sizeof(VP_INCOMING_DIR)))
		return;
	e = &ns->events[(ns->event_seq + 1) % 256];
	free(e->path);
	e->path = strdup(path);
	if (!e->path)
		return;
	e->seq = ++ns->event_seq;
	e->version = n->version;
	e->size = n->size;
	e->time = when;
	pthread_cond_broadcast(&ns->event_cond);
}

uint64_t vp_ns_event_seq(struct vp_ns *ns)
{
	uint64_t seq;

	pthread_mutex_lock(&ns->lock);
	seq = ns->event_seq;
	pthread_mutex_unlock(&ns->lock);
	return seq;
}

static int under(const char *path, const char *prefix)
{
	size_t l;

	while (*prefix == '/')
		prefix++;
	l = strlen(prefix);
	while (l && prefix[l - 1] == '/')
		l--;
	return l == 0 || (!strncmp(path, prefix, l) && (path[l] == '\0' || path[l] == '/'));
}

int vp_ns_next_event(struct vp_ns *ns, uint64_t *seq, const char *prefix,
		     double wait_s, struct vp_event *ev)
{
	double deadline = vp_now() + wait_s;
	int rc = 0;

	pthread_mutex_lock(&ns->lock);
	for (;;) {
		struct timespec ts;

		if (ns->event_seq > *seq + 256) {
			*seq = ns->event_seq - 256;
			rc = -EOVERFLOW;
			break;
		}
		while (*seq < ns->event_seq) {
			struct vp_event_rec *e = &ns->events[(*seq + 1) % 256];

			(*seq)++;
			if (e->seq == *seq && e->path && under(e->path, prefix)) {
				ev->seq = e->seq;
				snprintf(ev->path, sizeof(ev->path), "%s", e->path);
				ev->version = e->version;
				ev->size = e->size;
				ev->time = e->time;
				rc = 1;
				goto out_unlock;
			}
		}
		if (vp_now() >= deadline)
			break;
		vp_abstime(&ts, deadline);
		pthread_cond_timedwait(&ns->event_cond, &ns->lock, &ts);
	}
out_unlock:
	pthread_mutex_unlock(&ns->lock);
	return rc;
}

/* The loss log and the schedule file flush as usual under publish=schedule. */
static int policy_exempt_locked(struct vp_ns *ns, struct vp_node *n)
{
	return n == resolve_locked(ns, ns->cfg.loss_log) ||
	       (n->parent == ns->root && !strcmp(n->name, VP_SCHEDULE_FILE));
}

/*
 * Commits n's working copy as a new version.  ns->lock held.  Returns 1
 * when the publish=schedule policy must decide on it: the caller then
 * calls publish_decide() with no lock held.
 */
static int commit_locked(struct vp_ns *ns, struct vp_node *n,
			 struct vp_data *bytes)
{
	vp_lru_del_locked(ns, n);
	vp_data_put(n->cur);
	n->cur = bytes;
	n->size = vp_data_size(bytes);
	n->version++;
	n->mtime = n->ctime = wall_now();
	__atomic_store_n(&n->streamed, 0, __ATOMIC_RELAXED);	/* the next version streams anew */
	ns->st_commits++;
	vp_metrics_add(VP_C_VERSIONS, 1);
	if (n->parent)
		vp_gpu_mirror(ns->gpu, n->ino, n->version, bytes);	/* queued: the newest goes to the GPU */
	record_event_locked(ns, n);
	if (!n->parent || ns->replica)
		return 0;	/* consumers never flush: the producer does */
	if (ns->sched && !policy_exempt_locked(ns, n))
		return 1;
	vp_flush_commit_locked(ns, n, 0);
	note_version_locked(ns, n);
	return 0;
}

static double median_stall_locked(struct vp_ns *ns);
static void versions_locked(struct vp_ns *ns, struct vp_node *n, FILE *out,
			    int *first);
static void write_internal_file(struct vp_ns *ns, const char *name,
				const char *text);

/*
 * publish=schedule: reads the loss log, asks the policy, and queues the
 * flush of n's version if it is selected.  No locks held; n is borrowed
 * (the caller holds a reference).
 */
static void publish_decide(struct vp_ns *ns, struct vp_node *n, uint64_t version)
{
	struct vp_sched_decision d;
	struct vp_losslog log = { 0 }, *logp = NULL;
	struct vp_node *logn;
	struct vp_data *bytes = NULL;
	char path[PATH_MAX], err[256];
	double stall, lag;

	pthread_mutex_lock(&ns->lock);
	logn = resolve_locked(ns, ns->cfg.loss_log);
	if (logn && logn->type == VP_NODE_FILE) {
		vp_node_get(logn);
		if (logn->work)
			bytes = vp_data_get(logn->work);
	} else {
		logn = NULL;
	}
	stall = median_stall_locked(ns);
	lag = ns->st_flushed_versions ? ns->st_lag_sum / (double)ns->st_flushed_versions : 0;
	pthread_mutex_unlock(&ns->lock);
	if (logn && !bytes && version_data(ns, logn, &bytes))
		bytes = NULL;
	if (bytes) {
		uint64_t size = vp_data_size(bytes);
		char *buf = size ? malloc(size) : NULL;

		if (buf && vp_data_pread(bytes, buf, size, 0) == (ssize_t)size &&
		    vp_losslog_parse(buf, size, ns->cfg.loss_log, &log, err, sizeof(err)) == 0)
			logp = &log;
		free(buf);
		vp_data_put(bytes);
	}
	vp_sched_decide(ns->sched, logp, vp_now(), stall, lag, &d);

	pthread_mutex_lock(&ns->lock);
	if (logn)
		vp_node_put(ns, logn);
	if (d.selected && n->version == version && n->parent && n->cur) {
		vp_flush_commit_locked(ns, n, 0);
		note_version_locked(ns, n);
	}
	else if (!d.selected)
		ns->st_skipped_versions++;
	if (live_path_locked(ns, n, path, sizeof(path)))
		strcpy(path, "(unlinked)");
	pthread_mutex_unlock(&ns->lock);
	vp_log(d.selected ? LOG_INFO : LOG_DEBUG, "plan",
	       "'%s' version %llu at iteration %llu: %s (%s)", path,
	       (unsigned long long)version, (unsigned long long)d.iteration,
	       d.selected ? "published" : "kept on this node only", d.why);
	vp_losslog_release(&log);
	if (d.replanned) {
		char *json = vp_sched_json(ns->sched);

		if (json)
			write_internal_file(ns, VP_SCHEDULE_FILE, json);
		free(json);
	}
}

int vp_ns_setattr(struct vp_ns *ns, uint64_t ino, const struct vp_setattr *sa,
		  struct vp_handle *h, struct stat *st)
{
	struct vp_node *n;
	struct vp_data *target = NULL;
	int rc = 0, commit_new = 0, decide = 0;
	uint64_t decide_version = 0;

	pthread_mutex_lock(&ns->lock);
	n = ino_find_locked(ns, ino);
	if (!n) {
		pthread_mutex_unlock(&ns->lock);
		return -ESTALE;
	}
	vp_node_get(n);
	rc = replica_refuse_locked(ns, "changing", n->name ? n->name : "/");
	if (rc)
		goto out_unlock;
	if (sa->set_size) {
		if (n->type == VP_NODE_DIR) {
			rc = -EISDIR;
			goto out_unlock;
		}
		if (n->type != VP_NODE_FILE) {
			rc = -EINVAL;
			goto out_unlock;
		}
		if (h && h->writable)
			target = vp_data_get(h->data);
		else if (n->work)
			target = vp_data_get(n->work);
		else
			commit_new = 1;
	}
	pthread_mutex_unlock(&ns->lock);

	if (commit_new) {
		/* truncate(2) of a closed file: a commit point of its own */
		struct vp_data *base = NULL;

		rc = version_data(ns, n, &base);
		if (!rc) {
			target = vp_data_clone(base);
			vp_data_put(base);
			if (!target)
				rc = -ENOMEM;
		}
	}
	if (target && !rc)
		rc = vp_data_truncate(target, sa->size, ns->cfg.cache_wait);

	pthread_mutex_lock(&ns->lock);
	if (rc)
		goto out_unlock;
	if (target) {
		if (commit_new && !n->work) {
			decide = commit_locked(ns, n, target);
			decide_version = n->version;
			target = NULL;
		} else if (commit_new) {
			/* a writer opened meanwhile: cut its copy too */
			pthread_mutex_unlock(&ns->lock);
			rc = vp_data_truncate(n->work, sa->size, ns->cfg.cache_wait);
			pthread_mutex_lock(&ns->lock);
			__atomic_store_n(&n->dirty, 1, __ATOMIC_RELEASE);
		} else {
			__atomic_store_n(&n->dirty, 1, __ATOMIC_RELEASE);
		}
		n->mtime = n->ctime = wall_now();
	}
	if (sa->set_mode)
		n->mode = (n->mode & S_IFMT) | (sa->mode & 07777);
	if (sa->set_uid)
		n->uid = sa->uid;
	if (sa->set_gid)
		n->gid = sa->gid;
	if (sa->set_atime)
		n->atime = sa->atime_now ? wall_now() : sa->atime;
	if (sa->set_mtime)
		n->mtime = sa->mtime_now ? wall_now() : sa->mtime;
	if (sa->set_mode || sa->set_uid || sa->set_gid || sa->set_atime ||
	    sa->set_mtime) {
		n->ctime = wall_now();
		if (n->parent || n == ns->root)
			vp_flush_log_locked(ns, OP_ATTR, n, NULL, NULL, NULL);
	}
	fill_stat_locked(n, st);
out_unlock:
	pthread_mutex_unlock(&ns->lock);
	if (decide)
		publish_decide(ns, n, decide_version);
	put_unlocked(ns, n);
	if (target)
		vp_data_put(target);
	return rc;
}

/* Common start of mkdir/symlink/create: a loaded dir and a free name. */
static int prepare_new(struct vp_ns *ns, uint64_t parent, const char *name,
		       struct vp_node **dirp)
{
	int rc = get_loaded_dir(ns, parent, dirp);

	if (rc)
		return rc;
	pthread_mutex_lock(&ns->lock);
	if (!(*dirp)->parent && *dirp != ns->root)
		rc = -ENOENT;	/* the directory was removed */
	else
		rc = check_new_name_locked(ns, *dirp, name);
	if (!rc)
		rc = replica_refuse_locked(ns, "creating", name);
	if (!rc && child_find_locked(ns, *dirp, name))
		rc = -EEXIST;
	if (rc) {
		vp_node_put(ns, *dirp);
		pthread_mutex_unlock(&ns->lock);
	}
	return rc;	/* on success, ns->lock is held */
}

int vp_ns_mkdir(struct vp_ns *ns, uint64_t parent, const char *name,
		mode_t mode, uid_t uid, gid_t gid, struct stat *st)
{
	struct vp_node *dir, *n;
	int rc = prepare_new(ns, parent, name, &dir);

	if (rc)
		return rc;
	n = node_new_locked(ns, VP_NODE_DIR, S_IFDIR | (mode & 07777), uid, gid);
	if (!n) {
		rc = -ENOMEM;
		goto out_unlock;
	}
	n->loaded = 1;
	rc = link_locked(ns, dir, n, name);
	if (rc) {
		vp_node_put(ns, n);
		goto out_unlock;
	}
	vp_flush_log_locked(ns, OP_MKDIR, n, dir, name, NULL);
	note_op_locked(ns, VP_OP_MKDIR, n, NULL, NULL);
	vp_node_get(n);		/* the kernel's lookup */
	fill_stat_locked(n, st);
out_unlock:
	vp_node_put(ns, dir);
	pthread_mutex_unlock(&ns->lock);
	return rc;
}

int vp_ns_symlink(struct vp_ns *ns, uint64_t parent, const char *name,
		  const char *target, uid_t uid, gid_t gid, struct stat *st)
{
	struct vp_node *dir, *n;
	int rc;

	if (strlen(target) >= PATH_MAX)
		return -ENAMETOOLONG;
	rc = prepare_new(ns, parent, name, &dir);
	if (rc)
		return rc;
	n = node_new_locked(ns, VP_NODE_SYMLINK, S_IFLNK | 0777, uid, gid);
	if (!n || !(n->symlink = strdup(target))) {
		if (n)
			vp_node_put(ns, n);
		rc = -ENOMEM;
		goto out_unlock;
	}
	rc = link_locked(ns, dir, n, name);
	if (rc) {
		vp_node_put(ns, n);
		goto out_unlock;
	}
	vp_flush_log_locked(ns, OP_SYMLINK, n, dir, name, NULL);
	note_op_locked(ns, VP_OP_SYMLINK, n, NULL, NULL);
	vp_node_get(n);
	fill_stat_locked(n, st);
out_unlock:
	vp_node_put(ns, dir);
	pthread_mutex_unlock(&ns->lock);
	return rc;
}

int vp_ns_readlink(struct vp_ns *ns, uint64_t ino, char *buf, size_t len)
{
	struct vp_node *n;
	int rc = 0;

	pthread_mutex_lock(&ns->lock);
	n = ino_find_locked(ns, ino);
	if (!n)
		rc = -ESTALE;
	else if (n->type != VP_NODE_SYMLINK)
		rc = -EINVAL;
	else if (strlen(n->symlink) >= len)
		rc = -ENAMETOOLONG;
	else
		strcpy(buf, n->symlink);
	pthread_mutex_unlock(&ns->lock);
	return rc;
}

static int remove_entry(struct vp_ns *ns, uint64_t parent, const char *name,
			int want_dir)
{
	struct vp_node *dir, *n;
	int rc = get_loaded_dir(ns, parent, &dir);

	if (rc)
		return rc;
	pthread_mutex_lock(&ns->lock);
	n = child_find_locked(ns, dir, name);
	if (n)
		vp_node_get(n);
	pthread_mutex_unlock(&ns->lock);
	if (!n) {
		rc = -ENOENT;
		goto out_put_dir;
	}
	if (want_dir && n->type == VP_NODE_DIR)
		rc = ensure_loaded(ns, n);	/* to know if it is empty */

	pthread_mutex_lock(&ns->lock);
	if (rc)
		goto out_unlock;
	if (n->parent != dir) {
		rc = -ENOENT;	/* moved meanwhile */
	} else if (want_dir && n->type != VP_NODE_DIR) {
		rc = -ENOTDIR;
	} else if (!want_dir && n->type == VP_NODE_DIR) {
		rc = -EISDIR;
	} else if (want_dir && n->nchildren) {
		rc = -ENOTEMPTY;
	} else if (!(rc = replica_refuse_locked(ns, want_dir ? "rmdir" : "unlink", name))) {
		vp_flush_cancel_locked(ns, n);
		vp_flush_log_locked(ns, OP_UNLINK, n, NULL, NULL, NULL);
		note_op_locked(ns, want_dir ? VP_OP_RMDIR : VP_OP_UNLINK, n, NULL, NULL);
		unlink_locked(ns, n);
	}
out_unlock:
	vp_node_put(ns, n);
	pthread_mutex_unlock(&ns->lock);
out_put_dir:
	put_unlocked(ns, dir);
	return rc;
}

int vp_ns_unlink(struct vp_ns *ns, uint64_t parent, const char *name)
{
	return remove_entry(ns, parent, name, 0);
}

int vp_ns_rmdir(struct vp_ns *ns, uint64_t parent, const char *name)
{
	return remove_entry(ns, parent, name, 1);
}

int vp_ns_rename(struct vp_ns *ns, uint64_t parent, const char *name,
		 uint64_t newparent, const char *newname, unsigned int flags)
{
	struct vp_node *dir, *newdir = NULL, *n = NULL, *victim = NULL;
	int rc;

	if (flags & ~1u)	/* RENAME_NOREPLACE is 1; EXCHANGE, WHITEOUT: no */
		return -EINVAL;
	rc = get_loaded_dir(ns, parent, &dir);
	if (rc)
		return rc;
	rc = get_loaded_dir(ns, newparent, &newdir);
	if (rc)
		goto out_put_dir;
	pthread_mutex_lock(&ns->lock);
	victim = child_find_locked(ns, newdir, newname);
	if (victim)
		vp_node_get(victim);
	pthread_mutex_unlock(&ns->lock);
	if (victim && victim->type == VP_NODE_DIR) {
		rc = ensure_loaded(ns, victim);
		if (rc)
			goto out_put;
	}

	pthread_mutex_lock(&ns->lock);
	n = child_find_locked(ns, dir, name);
	if (!n) {
		rc = -ENOENT;
		goto out_unlock;
	}
	if (victim != child_find_locked(ns, newdir, newname)) {
		rc = -EBUSY;	/* raced with another change: let the caller retry */
		goto out_unlock;
	}
	rc = check_new_name_locked(ns, newdir, newname);
	if (rc)
		goto out_unlock;
	if (victim == n)
		goto out_unlock;
	if (victim && (flags & 1)) {
		rc = -EEXIST;
		goto out_unlock;
	}
	if (n->type == VP_NODE_DIR) {
		for (struct vp_node *up = newdir; up; up = up->parent) {
			if (up == n) {
				rc = -EINVAL;
				goto out_unlock;
			}
		}
	}
	if (victim) {
		if (victim->type == VP_NODE_DIR && n->type != VP_NODE_DIR)
			rc = -EISDIR;
		else if (victim->type != VP_NODE_DIR && n->type == VP_NODE_DIR)
			rc = -ENOTDIR;
		else if (victim->type == VP_NODE_DIR && victim->nchildren)
			rc = -ENOTEMPTY;
		if (rc)
			goto out_unlock;
	}
	rc = replica_refuse_locked(ns, "rename", name);
	if (rc)
		goto out_unlock;
	vp_flush_log_locked(ns, OP_RENAME, n, newdir, newname, victim);
	note_op_locked(ns, VP_OP_RENAME, n, newdir, newname);
	if (victim) {
		vp_flush_cancel_locked(ns, victim);
		unlink_locked(ns, victim);
	}
	/* versions are per path: a file renamed over another continues its count */
	if (victim && victim->type == VP_NODE_FILE && n->type == VP_NODE_FILE &&
	    n->version <= victim->version)
		n->version = victim->version + 1;
	detach_locked(ns, n);
	rc = link_locked(ns, newdir, n, newname);
	assert(rc == 0 || rc == -ENOMEM);
	if (ns->replica && is_installer_locked(ns) && ns->ndeferred < 16) {
		vp_node_get(n);		/* raised once the kernel sees the new name */
		ns->deferred_at[ns->ndeferred] = wall_seconds();
		ns->deferred[ns->ndeferred++] = n;
	} else {
		record_event_locked(ns, n);
	}
out_unlock:
	pthread_mutex_unlock(&ns->lock);
out_put:
	pthread_mutex_lock(&ns->lock);
	if (victim)
		vp_node_put(ns, victim);
	vp_node_put(ns, newdir);
	pthread_mutex_unlock(&ns->lock);
out_put_dir:
	put_unlocked(ns, dir);
	return rc;
}

int vp_ns_statfs(struct vp_ns *ns, struct statvfs *sv)
{
	if (fstatvfs(ns->pfs_root_fd, sv))
		return -errno;
	sv->f_namemax = VP_NAME_MAX;
	return 0;
}

/* ---- files ----------------------------------------------------------- */

/* The process (thread group) of thread tid, from /proc; 0 if unknown. */
static pid_t tgid_of(pid_t tid)
{
	char path[64], line[128];
	pid_t tgid = 0;
	FILE *f;

	if (tid <= 0)
		return 0;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)tid);
	f = fopen(path, "re");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Tgid: %d", &tgid) == 1)
			break;
	fclose(f);
	return tgid;
}

static struct vp_handle *handle_new(struct vp_ns *ns, struct vp_node *n,
				    struct vp_data *d, int writable)
{
	struct vp_handle *h = calloc(1, sizeof(*h));

	if (!h)
		return NULL;
	if (writable)
		h->owner = tgid_of(caller_tid);
	__atomic_add_fetch(&ns->open_handles, 1, __ATOMIC_RELAXED);
	vp_node_get(n);
	h->node = n;
	h->data = d;	/* takes the caller's reference */
	h->writable = writable;
	pthread_mutex_lock(&ns->handles_lock);
	h->next = ns->handles;
	if (h->next)
		h->next->prev = h;
	ns->handles = h;
	pthread_mutex_unlock(&ns->handles_lock);
	return h;
}

int vp_handle_writable(const struct vp_handle *h)
{
	return h->writable;
}

static int release_locked(struct vp_ns *ns, struct vp_node *n,
			  struct vp_data *d, int writable, uint64_t *version);

/*
 * Opens n.  No locks held on entry.  For a writable open the working copy
 * is made (a clone of the latest version, or empty with O_TRUNC).
 */
static int open_node(struct vp_ns *ns, struct vp_node *n, int flags,
		     struct vp_handle **hp, int *keep_cache)
{
	int writable = (flags & O_ACCMODE) != O_RDONLY;
	struct vp_data *d = NULL, *base = NULL;
	int rc = 0;

	*keep_cache = 0;
	if (n->type == VP_NODE_DIR)
		return -EISDIR;
	if (n->type != VP_NODE_FILE)
		return -ELOOP;

	pthread_mutex_lock(&ns->lock);
	if (writable && (rc = replica_refuse_locked(ns, "writing", n->name ? n->name : "?"))) {
		pthread_mutex_unlock(&ns->lock);
		return rc;
	}
	if (writable && n->parent && !n->work) {
		struct install *in = take_install_locked(ns, n->parent, n->name);

		if (in) {
			/* a replicated version replaces this file, attached as is */
			n->work = vp_data_get(in->data);
			n->work_started = vp_now();
			n->writers++;
			n->version = in->version - 1;
			n->mode = S_IFREG | (in->mode & 07777);
			__atomic_store_n(&n->dirty, 1, __ATOMIC_RELEASE);
			vp_lru_del_locked(ns, n);
			d = vp_data_get(n->work);
			install_free(in);
			pthread_mutex_unlock(&ns->lock);
			goto make_handle;
		}
	}
	if (n->work) {
		d = vp_data_get(n->work);
	} else if (!writable && n->cur) {
		d = vp_data_get(n->cur);
		*keep_cache = n->kcache_version == n->version;
		n->kcache_version = n->version;
		if (n->in_lru)
			vp_lru_add_locked(ns, n);	/* most recently used */
	}
	pthread_mutex_unlock(&ns->lock);

	if (!d && (!writable || !(flags & O_TRUNC))) {
		rc = version_data(ns, n, &base);
		if (rc)
			return rc;
		if (!writable) {
			d = base;
			base = NULL;
			pthread_mutex_lock(&ns->lock);
			n->kcache_version = n->version;
			pthread_mutex_unlock(&ns->lock);
		}
	}
	if (!d) {
		d = base ? vp_data_clone(base) : vp_data_new(ns->pool);
		vp_data_put(base);
		if (!d)
			return -ENOMEM;
	}

	pthread_mutex_lock(&ns->lock);
	if (writable) {
		if (!n->work) {
			n->work = vp_data_get(d);
			n->work_started = vp_now();
		} else if (n->work != d) {
			vp_data_put(d);		/* another writer won the race */
			d = vp_data_get(n->work);
		}
		n->writers++;
		vp_lru_del_locked(ns, n);
	}
	pthread_mutex_unlock(&ns->lock);

	if (writable && (flags & O_TRUNC) && vp_data_size(d)) {
		rc = vp_data_truncate(d, 0, ns->cfg.cache_wait);
		if (rc)
			vp_log(LOG_ERR, "fs", "truncate at open: %s", strerror(-rc));
	}
	if (writable && (flags & O_TRUNC))
		__atomic_store_n(&n->dirty, 1, __ATOMIC_RELEASE);
make_handle:
	*hp = handle_new(ns, n, d, writable);
	if (!*hp) {
		vp_node_get(n);
		pthread_mutex_lock(&ns->lock);
		release_locked(ns, n, d, writable, NULL);	/* nothing was written */
		pthread_mutex_unlock(&ns->lock);
		return -ENOMEM;
	}
	return 0;
}

int vp_ns_open(struct vp_ns *ns, uint64_t ino, int flags,
	       struct vp_handle **hp, int *keep_cache)
{
	struct vp_node *n = get_node(ns, ino);
	int rc;

	if (!n)
		return -ESTALE;
	rc = open_node(ns, n, flags, hp, keep_cache);
	put_unlocked(ns, n);
	return rc;
}

int vp_ns_create(struct vp_ns *ns, uint64_t parent, const char *name,
		 mode_t mode, int flags, uid_t uid, gid_t gid,
		 struct stat *st, struct vp_handle **hp)
{
	struct vp_node *dir, *n;
	struct vp_data *d;
	int rc, keep_cache;

	rc = prepare_new(ns, parent, name, &dir);
	if (rc == -EEXIST && !(flags & O_EXCL)) {
		/* lost a race with another creator: open what is there */
		rc = vp_ns_lookup(ns, parent, name, st);
		if (rc)
			return rc;
		rc = vp_ns_open(ns, st->st_ino, flags, hp, &keep_cache);
		if (rc)
			vp_ns_forget(ns, st->st_ino, 1);
		return rc;
	}
	if (rc)
		return rc;
	d = vp_data_new(ns->pool);
	n = d ? node_new_locked(ns, VP_NODE_FILE, S_IFREG | (mode & 07777), uid, gid) : NULL;
	if (!n) {
		vp_data_put(d);
		rc = -ENOMEM;
		goto out_unlock;
	}
	rc = link_locked(ns, dir, n, name);
	if (rc) {
		vp_node_put(ns, n);
		vp_data_put(d);
		goto out_unlock;
	}
	{
		struct install *in = take_install_locked(ns, dir, name);

		if (in) {
			/* the replicated bytes are the new file's: no copy */
			vp_data_put(d);
			d = vp_data_get(in->data);
			n->version = in->version - 1;	/* the commit makes it in->version */
			n->mode = S_IFREG | (in->mode & 07777);
			install_free(in);
		}
	}
	n->work = vp_data_get(d);
	n->work_started = vp_now();
	n->writers = 1;
	n->dirty = 1;		/* even an empty file is a version */
	*hp = handle_new(ns, n, d, 1);
	if (!*hp) {
		rc = -ENOMEM;	/* the empty file stays, with no writer */
		n->writers = 0;
		vp_data_put(n->work);
		n->work = NULL;
		vp_data_put(d);
		if (commit_locked(ns, n, vp_data_new(ns->pool)))
			vp_flush_commit_locked(ns, n, 0);	/* an empty file: just keep it */
		goto out_unlock;
	}
	vp_node_get(n);		/* the kernel's lookup */
	fill_stat_locked(n, st);
out_unlock:
	vp_node_put(ns, dir);
	pthread_mutex_unlock(&ns->lock);
	return rc;
}

/*
 * Drops what a handle holds; the last writer commits.  ns->lock held.
 * Returns 1 (with the version in *version) when publish_decide() is owed.
 */
static int release_locked(struct vp_ns *ns, struct vp_node *n,
			  struct vp_data *d, int writable, uint64_t *version)
{
	int decide = 0;

	if (writable) {
		assert(n->writers > 0);
		if (--n->writers == 0) {
			struct vp_data *work = n->work;

			n->work = NULL;
			if (__atomic_exchange_n(&n->dirty, 0, __ATOMIC_ACQ_REL)) {
				/* the producer's stall for this checkpoint: open to close */
				ns->st_stalls[ns->st_stall_n++ % 64] = vp_now() - n->work_started;
				decide = commit_locked(ns, n, work);
				if (version)
					*version = n->version;
			}
			else
				vp_data_put(work);
			if (n->cur && n->pfs_version == n->version)
				vp_lru_add_locked(ns, n);
		}
	}
	vp_data_put(d);
	vp_node_put(ns, n);
	return decide;
}

int vp_ns_release(struct vp_ns *ns, struct vp_handle *h)
{
	struct vp_node *n = h->node;
	uint64_t version = 0;
	int decide;

	pthread_mutex_lock(&ns->handles_lock);
	if (h->prev)
		h->prev->next = h->next;
	else
		ns->handles = h->next;
	if (h->next)
		h->next->prev = h->prev;
	pthread_mutex_unlock(&ns->handles_lock);
	pthread_mutex_lock(&ns->lock);
	vp_node_get(n);		/* for publish_decide, after the handle's is gone */
	decide = release_locked(ns, n, h->data, h->writable, &version);
	if (__atomic_sub_fetch(&ns->open_handles, 1, __ATOMIC_RELAXED) == 0)
		pthread_cond_broadcast(&ns->idle_cond);
	pthread_mutex_unlock(&ns->lock);
	free(h);
	if (decide)
		publish_decide(ns, n, version);
	put_unlocked(ns, n);
	return 0;
}

/*
 * Streaming: once the working copy has grown repl_stream bytes past what
 * was last offered, consumers get a preview of its finished chunks (a COW
 * snapshot: the writer copies a chunk before it changes one the snapshot
 * holds).  No locks held; the CAS keeps concurrent writers to one preview.
 */
static void maybe_preview(struct vp_ns *ns, struct vp_handle *h)
{
	struct vp_node *n = h->node;
	uint64_t size, done, full, chunk, version;
	char path[PATH_MAX];
	struct vp_data *snap;
	uint32_t mode;

	if (!ns->repl || ns->replica || !ns->cfg.repl_stream)
		return;
	size = vp_data_size(h->data);
	done = __atomic_load_n(&n->streamed, __ATOMIC_RELAXED);
	if (size < done + ns->cfg.repl_stream)
		return;
	chunk = vp_pool_chunk_size(ns->pool);
	full = size / chunk * chunk;
	if (full <= done ||
	    !__atomic_compare_exchange_n(&n->streamed, &done, full, 0,
					 __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		return;
	pthread_mutex_lock(&ns->lock);
	if (!n->parent || live_path_locked(ns, n, path, sizeof(path))) {
		pthread_mutex_unlock(&ns->lock);
		return;
	}
	version = n->version + 1;
	mode = n->mode;
	pthread_mutex_unlock(&ns->lock);
	snap = vp_data_clone(h->data);
	if (snap)
		vp_repl_note_preview(ns->repl, path, snap, version, mode);
}

ssize_t vp_ns_write(struct vp_ns *ns, struct vp_handle *h, const void *buf,
		    size_t len, uint64_t off)
{
	ssize_t n;

	if (!h->writable)
		return -EBADF;
	n = vp_data_write(h->data, buf, len, off, ns->cfg.cache_wait);
	if (n > 0) {
		__atomic_store_n(&h->wrote, 1, __ATOMIC_RELAXED);
		maybe_preview(ns, h);
		__atomic_store_n(&h->node->dirty, 1, __ATOMIC_RELEASE);
		__atomic_add_fetch(&ns->st_bytes_written, (uint64_t)n, __ATOMIC_RELAXED);
		vp_metrics_add(VP_C_BYTES_WRITTEN, (uint64_t)n);
	} else if (n == -ENOSPC) {
		vp_log(LOG_WARNING, "cache",
		       "write refused: the RAM cache (ram_cache) is full of data not yet on the PFS and none was freed in %.1f s; raise ram_cache or flush_bw",
		       ns->cfg.cache_wait);
	}
	return n;
}

ssize_t vp_ns_read(struct vp_ns *ns, struct vp_handle *h, uint64_t off,
		   size_t len, struct vp_read *rd)
{
	ssize_t n = vp_data_read(h->data, off, len, rd);

	if (n > 0) {
		__atomic_add_fetch(&ns->st_bytes_read, (uint64_t)n, __ATOMIC_RELAXED);
		vp_metrics_add(VP_C_BYTES_READ, (uint64_t)n);
	}
	if (rd->hits)
		vp_metrics_add(VP_C_CACHE_HITS, rd->hits);
	if (rd->misses)
		vp_metrics_add(VP_C_CACHE_MISSES, rd->misses);
	return n;
}

/*
 * Commits what h's writers wrote so far as a version, as a copy-on-write
 * snapshot: the working copy goes on.  No locks held.  Returns 0 or -errno.
 */
static int commit_snapshot(struct vp_ns *ns, struct vp_handle *h)
{
	struct vp_node *n = h->node;
	struct vp_data *snap;
	uint64_t version;
	int decide;

	if (!h->writable || !__atomic_exchange_n(&n->dirty, 0, __ATOMIC_ACQ_REL))
		return 0;
	snap = vp_data_clone(h->data);
	if (!snap) {
		__atomic_store_n(&n->dirty, 1, __ATOMIC_RELEASE);
		return -ENOMEM;
	}
	pthread_mutex_lock(&ns->lock);
	ns->st_stalls[ns->st_stall_n++ % 64] = vp_now() - n->work_started;
	decide = commit_locked(ns, n, snap);
	version = n->version;
	pthread_mutex_unlock(&ns->lock);
	if (decide)
		publish_decide(ns, n, version);
	return 0;
}

int vp_ns_flush(struct vp_ns *ns, struct vp_handle *h)
{
	pid_t tgid;
	int last;

	if (!h->writable)
		return 0;
	/*
	 * FLUSH comes with every close() of a descriptor, so two kinds wait
	 * for the handle's last close (RELEASE) instead of committing here:
	 * - nothing written through this handle yet: a shell's `cmd > file`
	 *   closes its copy after dup2(), before cmd writes a byte (an empty
	 *   version would reach watchers and consumers);
	 * - a close by another process of a copy it inherited (fork,
	 *   close-on-exec at exec, a DataLoader worker exiting): that must not
	 *   commit a half-written file.  The cheap check goes first.
	 */
	if (!__atomic_load_n(&h->wrote, __ATOMIC_RELAXED))
		return 0;
	tgid = tgid_of(caller_tid);
	if (h->owner && tgid && tgid != h->owner)
		return 0;
	pthread_mutex_lock(&ns->lock);
	last = h->node->writers == 1;
	pthread_mutex_unlock(&ns->lock);
	/*
	 * close() waits for FLUSH but not for RELEASE, so the version is
	 * committed here, where the writer waits, when this is the last
	 * writable handle: once close() returns, everyone sees the version.
	 */
	return last ? commit_snapshot(ns, h) : 0;
}

int vp_ns_fsync(struct vp_ns *ns, struct vp_handle *h)
{
	struct vp_node *n = h->node;
	struct vp_flush_progress p;
	char path[PATH_MAX];
	int rc;

	if (ns->cfg.fsync_mode == VP_FSYNC_CACHE)
		return 0;
	/* fsync=pfs: make what was written a version, and wait for the PFS */
	rc = commit_snapshot(ns, h);
	if (rc)
		return rc;
	pthread_mutex_lock(&ns->lock);
	rc = live_path_locked(ns, n, path, sizeof(path));
	pthread_mutex_unlock(&ns->lock);
	if (rc)
		return 0;	/* unlinked: nothing will reach the PFS */
	rc = vp_ns_flush_start(ns, path, &p);
	while (rc == 0)
		rc = vp_ns_flush_poll(ns, &p, 1.0);
	return rc < 0 ? rc : 0;
}

/*
 * Replaces root/name with text, as a new version, through the namespace
 * (not the mount).  Used for the schedule file.  No locks held.
 */
static void write_internal_file(struct vp_ns *ns, const char *name,
				const char *text)
{
	struct vp_handle *h;
	struct stat st;
	int keep, rc;

	rc = vp_ns_lookup(ns, VP_ROOT_INO, name, &st);
	if (rc == 0) {
		rc = vp_ns_open(ns, st.st_ino, O_WRONLY | O_TRUNC, &h, &keep);
		vp_ns_forget(ns, st.st_ino, 1);
	} else if (rc == -ENOENT) {
		rc = vp_ns_create(ns, VP_ROOT_INO, name, 0644, O_WRONLY | O_CREAT,
				  0, 0, &st, &h);
		if (rc == 0)
			vp_ns_forget(ns, st.st_ino, 1);
	}
	if (rc) {
		vp_log(LOG_WARNING, "plan", "could not write '%s': %s", name, strerror(-rc));
		return;
	}
	if (vp_ns_write(ns, h, text, strlen(text), 0) < 0)
		vp_log(LOG_WARNING, "plan", "could not write '%s'", name);
	vp_ns_release(ns, h);
}

int vp_ns_fsyncdir(struct vp_ns *ns, uint64_t ino)
{
	struct vp_flush_progress p;
	int rc;

	(void)ino;
	if (ns->cfg.fsync_mode == VP_FSYNC_CACHE)
		return 0;
	/* every entry logged so far, so the directory's own changes are in */
	rc = vp_ns_flush_start(ns, "", &p);
	while (rc == 0)
		rc = vp_ns_flush_poll(ns, &p, 1.0);
	return rc < 0 ? rc : 0;
}

/* ---- directories ----------------------------------------------------- */

int vp_ns_opendir(struct vp_ns *ns, uint64_t ino, struct vp_dir **dp)
{
	struct vp_node *dir;
	struct vp_dir *d;
	size_t i = 0;
	int rc = get_loaded_dir(ns, ino, &dir);

	if (rc)
		return rc;
	pthread_mutex_lock(&ns->lock);
	d = calloc(1, sizeof(*d));
	if (d)
		d->ents = calloc(dir->nchildren + 2, sizeof(*d->ents));
	if (!d || !d->ents) {
		rc = -ENOMEM;
		goto out_unlock;
	}
	d->ents[i].ino = dir->ino;
	d->ents[i].type = S_IFDIR;
	d->ents[i++].name = strdup(".");
	d->ents[i].ino = dir->parent ? dir->parent->ino : dir->ino;
	d->ents[i].type = S_IFDIR;
	d->ents[i++].name = strdup("..");
	for (struct vp_node *c = dir->children; c; c = c->sib_next) {
		if (dir == ns->root && ns->replica && !strcmp(c->name, VP_INCOMING_DIR))
			continue;	/* hidden: watchers must never add a watch there */
		d->ents[i].ino = c->ino;
		d->ents[i].type = c->mode & S_IFMT;
		d->ents[i++].name = strdup(c->name);
	}
	d->n = i;
	for (i = 0; i < d->n; i++)
		if (!d->ents[i].name)
			rc = -ENOMEM;
out_unlock:
	vp_node_put(ns, dir);
	pthread_mutex_unlock(&ns->lock);
	if (rc) {
		vp_ns_releasedir(d);
		return rc;
	}
	*dp = d;
	return 0;
}

const struct vp_dirent *vp_dir_entry(const struct vp_dir *dir, size_t i)
{
	return i < dir->n ? &dir->ents[i] : NULL;
}

void vp_ns_releasedir(struct vp_dir *dir)
{
	if (!dir)
		return;
	if (dir->ents)
		for (size_t i = 0; i < dir->n; i++)
			free(dir->ents[i].name);
	free(dir->ents);
	free(dir);
}

/* ---- xattrs, status -------------------------------------------------- */

static const char *state_locked(struct vp_node *n)
{
	if (n->pfs_version == n->version)
		return "flushed";
	if (n->flushing_version == n->version)
		return "flushing";
	return "cached";
}

static ssize_t copy_value(const char *value, char *buf, size_t len)
{
	size_t l = strlen(value);

	if (len == 0)
		return (ssize_t)l;
	if (l > len)
		return -ERANGE;
	memcpy(buf, value, l);
	return (ssize_t)l;
}

ssize_t vp_ns_getxattr(struct vp_ns *ns, uint64_t ino, const char *name,
		       char *buf, size_t len)
{
	char value[PATH_MAX];
	struct vp_node *n;
	ssize_t rc = -ENODATA;

	pthread_mutex_lock(&ns->lock);
	n = ino_find_locked(ns, ino);
	if (!n) {
		rc = -ESTALE;
		goto out_unlock;
	}
	value[0] = '\0';
	if (n->type == VP_NODE_FILE && !strcmp(name, XATTR_VERSION))
		snprintf(value, sizeof(value), "%" PRIu64, n->version);
	else if (n->type == VP_NODE_FILE && !strcmp(name, XATTR_STATE))
		snprintf(value, sizeof(value), "%s", state_locked(n));
	else if (n == ns->root && !strcmp(name, XATTR_CONTROL) &&
		 ns->control_path[0])
		snprintf(value, sizeof(value), "%s", ns->control_path);
	else
		goto out_unlock;
	rc = copy_value(value, buf, len);
out_unlock:
	pthread_mutex_unlock(&ns->lock);
	return rc;
}

ssize_t vp_ns_listxattr(struct vp_ns *ns, uint64_t ino, char *buf, size_t len)
{
	static const char file_names[] = XATTR_VERSION "\0" XATTR_STATE;
	static const char root_names[] = XATTR_CONTROL;
	struct vp_node *n;
	const char *names = "";
	size_t l = 0;

	pthread_mutex_lock(&ns->lock);
	n = ino_find_locked(ns, ino);
	if (n && n->type == VP_NODE_FILE) {
		names = file_names;
		l = sizeof(file_names);
	} else if (n == ns->root && ns->control_path[0]) {
		names = root_names;
		l = sizeof(root_names);
	}
	pthread_mutex_unlock(&ns->lock);
	if (!n)
		return -ESTALE;
	if (len == 0)
		return (ssize_t)l;
	if (l > len)
		return -ERANGE;
	memcpy(buf, names, l);
	return (ssize_t)l;
}

/* Finds a node by its live path ("" or "/" is the root).  ns->lock held. */
static struct vp_node *resolve_locked(struct vp_ns *ns, const char *path)
{
	struct vp_node *n = ns->root;
	char copy[PATH_MAX], *save = NULL, *part;

	if (strlen(path) >= sizeof(copy))
		return NULL;
	strcpy(copy, path);
	for (part = strtok_r(copy, "/", &save); part && n;
	     part = strtok_r(NULL, "/", &save)) {
		if (!strcmp(part, "."))
			continue;
		n = n->type == VP_NODE_DIR ? child_find_locked(ns, n, part) : NULL;
	}
	return n;
}

int vp_ns_flush_start(struct vp_ns *ns, const char *path,
		      struct vp_flush_progress *p)
{
	struct vp_node *n;
	int rc = 0;

	memset(p, 0, sizeof(*p));
	pthread_mutex_lock(&ns->lock);
	n = resolve_locked(ns, path);
	if (!n) {
		rc = -ENOENT;
		goto out_unlock;
	}
	force_subtree_locked(ns, n);
	p->target_seq = ns->next_seq - 1;
	if (p->target_seq > ns->force_seq)
		ns->force_seq = p->target_seq;
	pthread_cond_broadcast(&ns->flush_cond);
out_unlock:
	pthread_mutex_unlock(&ns->lock);
	if (!rc)
		vp_ns_flush_poll(ns, p, 0);
	return rc;
}

int vp_ns_flush_poll(struct vp_ns *ns, struct vp_flush_progress *p,
		     double wait_s)
{
	uint64_t left_bytes = 0, left_ops = 0;
	int rc;

	pthread_mutex_lock(&ns->lock);
	if (wait_s > 0 && ns->done_seq < p->target_seq) {
		struct timespec ts;
		vp_abstime(&ts, vp_now() + wait_s);
		pthread_cond_timedwait(&ns->flush_cond, &ns->lock, &ts);
	}
	for (struct flush_op *op = ns->log_head; op && op->seq <= p->target_seq;
	     op = op->next) {
		left_ops++;
		if (op->type == OP_DATA && op->data)
			left_bytes += op->size - __atomic_load_n(&op->written, __ATOMIC_RELAXED);
	}
	if (p->bytes_total < left_bytes + p->bytes_done)
		p->bytes_total = left_bytes + p->bytes_done;
	p->bytes_done = p->bytes_total - left_bytes;
	p->ops_left = left_ops;
	p->last_error = ns->last_error;
	rc = ns->done_seq >= p->target_seq;
	pthread_mutex_unlock(&ns->lock);
	return rc;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/*
 * The median open-to-close time of the last 64 commits: the producer's
 * stall per checkpoint, robust to a log file held open for hours.
 */
static double median_stall_locked(struct vp_ns *ns)
{
	double v[64];
	size_t n = ns->st_stall_n < 64 ? (size_t)ns->st_stall_n : 64;

	if (!n)
		return 0;
	memcpy(v, ns->st_stalls, n * sizeof(double));
	qsort(v, n, sizeof(double), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

void vp_ns_status_json(struct vp_ns *ns, FILE *out)
{
	struct vp_pool_stats ps;
	uint64_t queued = 0, queued_bytes = 0, files = 0, dirty = 0;

	vp_pool_get_stats(ns->pool, &ps);
	pthread_mutex_lock(&ns->lock);
	for (struct flush_op *op = ns->log_head; op; op = op->next) {
		queued++;
		if (op->type == OP_DATA && op->data)
			queued_bytes += op->size;
	}
	for (size_t i = 0; i < ns->hash_size; i++)
		for (struct vp_node *n = ns->by_ino[i]; n; n = n->ino_next)
			if (n->type == VP_NODE_FILE && n->parent) {
				files++;
				dirty += n->pfs_version != n->version;
			}
	fputs("{\"pfs_dir\":", out);
	vp_json_string(out, ns->pfs_dir);
	fprintf(out, ",\"pid\":%d,\"open_files\":%u,\"unmount_wait_s\":%.3f,"
		"\"tiers\":{\"ram\":{\"budget\":%" PRIu64 ",\"used\":%" PRIu64 "},\"gpu\":",
		(int)getpid(), __atomic_load_n(&ns->open_handles, __ATOMIC_RELAXED),
		ns->cfg.unmount_wait, ps.budget, ps.used);
	if (ns->gpu) {
		vp_gpu_status_json(ns->gpu, out);
	} else if (ns->cfg.gpu_cache) {
		fputs("{\"state\":\"off\",\"reason\":", out);
		vp_json_string(out, ns->gpu_off_reason);
		fputc('}', out);
	} else {
		fputs("null", out);
	}
	fputs("},", out);
	fprintf(out,
		"\"ram\":{\"budget\":%" PRIu64 ",\"used\":%" PRIu64
		",\"mapped\":%" PRIu64 ",\"waits\":%" PRIu64 ",\"enospc\":%" PRIu64 "},"
		"\"files\":%" PRIu64 ",\"unflushed_files\":%" PRIu64 ","
		"\"flush\":{\"queued_ops\":%" PRIu64 ",\"queued_bytes\":%" PRIu64
		",\"preparing\":%u,\"flushed_versions\":%" PRIu64 ",\"flushed_bytes\":%" PRIu64
		",\"skipped_versions\":%" PRIu64 ",\"retries\":%" PRIu64
		",\"last_lag_s\":%.3f,\"mean_lag_s\":%.6f,\"last_error\":\"%s\",\"last_error_path\":",
		ps.budget, ps.used, ps.mapped, ps.waits, ps.enospc,
		files, dirty, queued, queued_bytes, ns->preparing,
		ns->st_flushed_versions, ns->st_flushed_bytes,
		ns->st_skipped_versions, ns->st_retries, ns->st_last_flush_lag,
		ns->st_flushed_versions ? ns->st_lag_sum / (double)ns->st_flushed_versions : 0.0,
		ns->last_error ? strerror(-ns->last_error) : "");
	vp_json_string(out, ns->last_error ? ns->last_error_path : "");	/* a file's name: any bytes */
	fprintf(out, "},"
		"\"commits\":%" PRIu64 ",\"checkpoint_stall_s\":%.6f,\"evictions\":%" PRIu64
		",\"bytes_written\":%" PRIu64 ",\"bytes_read\":%" PRIu64,
		ns->st_commits,
		median_stall_locked(ns),
		ns->st_evictions,
		__atomic_load_n(&ns->st_bytes_written, __ATOMIC_RELAXED),
		__atomic_load_n(&ns->st_bytes_read, __ATOMIC_RELAXED));
	{
		int first = 1;

		fputs(",\"paths\":[", out);
		versions_locked(ns, ns->root, out, &first);
		fputc(']', out);
	}
	pthread_mutex_unlock(&ns->lock);
	fputs(",\"repl\":", out);
	vp_repl_status_json(ns->repl, out);	/* null without replication */
	fputs("}\n", out);
}

static void versions_locked(struct vp_ns *ns, struct vp_node *n, FILE *out,
			    int *first)
{
	char path[PATH_MAX];

	if (n->type == VP_NODE_DIR) {
		for (struct vp_node *c = n->children; c; c = c->sib_next)
			versions_locked(ns, c, out, first);
		return;
	}
	if (n->type != VP_NODE_FILE || live_path_locked(ns, n, path, sizeof(path)))
		return;
	fprintf(out, "%s{\"path\":", *first ? "" : ",");
	vp_json_string(out, path);
	/*
	 * Where its bytes sit: "ram" (the cache holds this version; one loaded
	 * from the PFS fills in as it is read), "gpu" (mirrored), "pfs".  No
	 * data function here: the namespace lock is held.
	 */
	{
		int ram = n->cur != NULL;
		int gpu = vp_gpu_mirror_size(ns->gpu, n->ino, n->version) != UINT64_MAX;
		int pfs = n->pfs_version == n->version;

		fprintf(out, ",\"version\":%" PRIu64 ",\"size\":%" PRIu64 ",\"state\":\"%s\",\"writers\":%u"
			",\"tiers\":[%s%s%s%s%s]}",
			n->version, node_size_locked(n), state_locked(n), n->writers,
			ram ? "\"ram\"" : "", ram && gpu ? "," : "", gpu ? "\"gpu\"" : "",
			(ram || gpu) && pfs ? "," : "", pfs ? "\"pfs\"" : "");
	}
	*first = 0;
}

int vp_ns_versions_json(struct vp_ns *ns, const char *path, FILE *out)
{
	struct vp_node *n;
	int first = 1;

	pthread_mutex_lock(&ns->lock);
	n = resolve_locked(ns, path);
	if (n) {
		fputc('[', out);
		versions_locked(ns, n, out, &first);
		fputs("]\n", out);
	}
	pthread_mutex_unlock(&ns->lock);
	return n ? 0 : -ENOENT;
}

/* ---- operations: busy check, warm-up, metrics ------------------------- */

int vp_ns_wait_idle(struct vp_ns *ns, double wait_s, unsigned int *open)
{
	struct timespec ts;
	int rc = 0;

	vp_abstime(&ts, vp_now() + wait_s);
	pthread_mutex_lock(&ns->lock);
	while (__atomic_load_n(&ns->open_handles, __ATOMIC_RELAXED) &&
	       rc != ETIMEDOUT)
		rc = pthread_cond_timedwait(&ns->idle_cond, &ns->lock, &ts);
	*open = __atomic_load_n(&ns->open_handles, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&ns->lock);
	return *open ? -EBUSY : 0;
}

/*
 * Resolves path, reading directories from the PFS on the way.  Returns
 * the node with a reference, or NULL.  No locks held.
 */
static struct vp_node *resolve_loading(struct vp_ns *ns, const char *path)
{
	char copy[PATH_MAX], *save = NULL, *part;
	struct vp_node *n;

	if (strlen(path) >= sizeof(copy))
		return NULL;
	strcpy(copy, path);
	pthread_mutex_lock(&ns->lock);
	n = ns->root;
	vp_node_get(n);
	pthread_mutex_unlock(&ns->lock);
	for (part = strtok_r(copy, "/", &save); part && n;
	     part = strtok_r(NULL, "/", &save)) {
		struct vp_node *c = NULL;

		if (!strcmp(part, "."))
			continue;
		if (n->type == VP_NODE_DIR && !ensure_loaded(ns, n)) {
			pthread_mutex_lock(&ns->lock);
			c = child_find_locked(ns, n, part);
			if (c)
				vp_node_get(c);
			pthread_mutex_unlock(&ns->lock);
		}
		put_unlocked(ns, n);
		n = c;
	}
	return n;
}

/* Collects the files below n (with references) into *files.  ns->lock held. */
static int collect_files_locked(struct vp_node *n, struct vp_node ***files,
				size_t *count, size_t *cap)
{
	if (n->type == VP_NODE_DIR) {
		for (struct vp_node *c = n->children; c; c = c->sib_next)
			if (collect_files_locked(c, files, count, cap))
				return -ENOMEM;
		return 0;
	}
	if (n->type != VP_NODE_FILE)
		return 0;
	if (*count == *cap) {
		size_t ncap = *cap ? *cap * 2 : 64;
		struct vp_node **nf = realloc(*files, ncap * sizeof(**files));

		if (!nf)
			return -ENOMEM;
		*files = nf;
		*cap = ncap;
	}
	vp_node_get(n);
	(*files)[(*count)++] = n;
	return 0;
}

int vp_ns_warm(struct vp_ns *ns, const char *path, vp_ns_warm_cb cb, void *arg,
	       struct vp_warm_progress *p)
{
	struct vp_node *top = resolve_loading(ns, path), **files = NULL;
	size_t count = 0, cap = 0;
	int rc = 0;

	memset(p, 0, sizeof(*p));
	if (!top)
		return -ENOENT;
	if (top->type == VP_NODE_DIR)
		load_tree(ns, top);
	pthread_mutex_lock(&ns->lock);
	rc = collect_files_locked(top, &files, &count, &cap);
	for (size_t i = 0; i < count; i++)
		p->bytes_total += files[i]->size;
	pthread_mutex_unlock(&ns->lock);
	p->files_total = count;
	put_unlocked(ns, top);
	if (cb && !rc)
		rc = cb(arg, p);
	for (size_t i = 0; i < count && !rc; i++) {
		struct vp_data *d = NULL;
		uint64_t off = 0, size;

		rc = version_data(ns, files[i], &d);
		if (rc) {
			p->errors++;
			rc = 0;
			continue;
		}
		size = vp_data_size(d);
		while (off < size && !rc) {
			struct vp_read rd;
			ssize_t n = vp_data_read(d, off, d->chunk_size, &rd);

			if (n <= 0) {
				p->errors++;
				break;
			}
			vp_read_release(&rd);
			off += (uint64_t)n;
			p->bytes_done += (uint64_t)n;
			if (cb && (off % (64ull << 20)) == 0)
				rc = cb(arg, p);
		}
		p->bytes_cached += vp_data_resident(d) < size ? vp_data_resident(d) : size;
		vp_data_put(d);
		p->files_done++;
		if (cb && !rc)
			rc = cb(arg, p);
	}
	for (size_t i = 0; i < count; i++)
		put_unlocked(ns, files[i]);
	free(files);
	return rc;
}

void vp_ns_metrics(struct vp_ns *ns, FILE *out)
{
	char gpu_used[96] = "", gpu_budget[96] = "";
	struct vp_gpu_stats gs;
	struct vp_pool_stats ps;
	uint64_t queued = 0, queued_bytes = 0, dirty = 0;
	double oldest = 0, now = vp_now();

	vp_pool_get_stats(ns->pool, &ps);
	vp_gpu_get_stats(ns->gpu, &gs);
	if (ns->gpu) {
		snprintf(gpu_used, sizeof(gpu_used), "viperfs_cache_bytes{tier=\"gpu\"} %" PRIu64 "\n", gs.used);
		snprintf(gpu_budget, sizeof(gpu_budget), "viperfs_cache_budget_bytes{tier=\"gpu\"} %" PRIu64 "\n",
			 gs.budget);
	}
	pthread_mutex_lock(&ns->lock);
	for (struct flush_op *op = ns->log_head; op; op = op->next) {
		queued++;
		if (op->type == OP_DATA && op->data) {
			queued_bytes += op->size;
			if (!oldest || op->queued_at < oldest)
				oldest = op->queued_at;
		}
	}
	for (size_t i = 0; i < ns->hash_size; i++)
		for (struct vp_node *n = ns->by_ino[i]; n; n = n->ino_next)
			if (n->type == VP_NODE_FILE && n->parent && n->cur)
				dirty += n->pfs_version != n->version;
	fprintf(out,
		"# HELP viperfs_cache_bytes Bytes of file data held, by tier.\n"
		"# TYPE viperfs_cache_bytes gauge\n"
		"viperfs_cache_bytes{tier=\"ram\"} %" PRIu64 "\n"
		"%s"
		"# HELP viperfs_cache_budget_bytes Budget of each tier.\n"
		"# TYPE viperfs_cache_budget_bytes gauge\n"
		"viperfs_cache_budget_bytes{tier=\"ram\"} %" PRIu64 "\n"
		"%s"
		"# HELP viperfs_flush_queue_ops Namespace operations waiting to reach the PFS.\n"
		"# TYPE viperfs_flush_queue_ops gauge\n"
		"viperfs_flush_queue_ops %" PRIu64 "\n"
		"# HELP viperfs_flush_queue_bytes File bytes waiting to reach the PFS.\n"
		"# TYPE viperfs_flush_queue_bytes gauge\n"
		"viperfs_flush_queue_bytes %" PRIu64 "\n"
		"# HELP viperfs_unflushed_files Files whose latest version is not on the PFS.\n"
		"# TYPE viperfs_unflushed_files gauge\n"
		"viperfs_unflushed_files %" PRIu64 "\n"
		"# HELP viperfs_flush_lag_seconds Age of the oldest version waiting for the PFS (0: none waits).\n"
		"# TYPE viperfs_flush_lag_seconds gauge\n"
		"viperfs_flush_lag_seconds %.6f\n"
		"# HELP viperfs_flush_last_lag_seconds Commit to PFS of the last version flushed.\n"
		"# TYPE viperfs_flush_last_lag_seconds gauge\n"
		"viperfs_flush_last_lag_seconds %.6f\n"
		"# HELP viperfs_flush_errors_total Failed PFS operations (each is retried).\n"
		"# TYPE viperfs_flush_errors_total counter\n"
		"viperfs_flush_errors_total %" PRIu64 "\n"
		"# HELP viperfs_open_files Open file handles on the mount.\n"
		"# TYPE viperfs_open_files gauge\n"
		"viperfs_open_files %u\n",
		ps.used, gpu_used, ps.budget, gpu_budget, queued, queued_bytes, dirty,
		oldest ? now - oldest : 0.0, ns->st_last_flush_lag, ns->st_retries,
		__atomic_load_n(&ns->open_handles, __ATOMIC_RELAXED));
	pthread_mutex_unlock(&ns->lock);
	if (ns->gpu)
		fprintf(out, "# HELP viperfs_gpu_mirrors Files whose newest version is mirrored in GPU memory.\n"
			"# TYPE viperfs_gpu_mirrors gauge\nviperfs_gpu_mirrors %" PRIu64 "\n", gs.files);
	vp_repl_metrics(ns->repl, out);
}

void vp_ns_set_gpu(struct vp_ns *ns, struct vp_gpu *gpu, const char *off_reason)
{
	ns->gpu = gpu;
	vp_gpu_attach_pool(gpu, ns->pool);
	snprintf(ns->gpu_off_reason, sizeof(ns->gpu_off_reason), "%s", off_reason ? off_reason : "");
}

struct vp_gpu *vp_ns_gpu(struct vp_ns *ns)
{
	return ns->gpu;
}

int vp_ns_path_ino(struct vp_ns *ns, const char *path, uint64_t *ino)
{
	struct vp_node *n;
	int rc = -ENOENT;

	pthread_mutex_lock(&ns->lock);
	n = resolve_locked(ns, path);
	if (n && n->type == VP_NODE_FILE) {
		*ino = n->ino;
		rc = 0;
	} else if (n) {
		rc = -EISDIR;
	}
	pthread_mutex_unlock(&ns->lock);
	return rc;
}
