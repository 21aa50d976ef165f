/*
 * node: the namespace's nodes and names -- references, the inode and name
 * hash tables, links, the LRU of clean files, paths, lookup, attributes.
 */
#define _GNU_SOURCE
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../log.h"
#include "ns_i.h"

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

void vp_node_free(struct vp_node *n)
{
	vp_kino_put(n->kino);
	free(n->name);
	free(n->pfs_name);
	free(n->symlink);
	free(n);
}

void vp_node_put(struct vp_ns *ns, struct vp_node *n)
{
	VP_ASSERT_LOCKED(&ns->lock);
	while (n && __atomic_sub_fetch(&n->refs, 1, __ATOMIC_ACQ_REL) == 0) {
		struct vp_node *pfs_parent = n->pfs_parent;

		assert(!n->parent);
		assert(!LIST_FIRST(&n->links));	/* each holds a ref */
		if (n->type == VP_NODE_LINK) {
			LIST_REMOVE(n, link_link);
			vp_node_put(ns, n->inode);	/* not a link: no deeper */
		} else {
			LIST_REMOVE(n, ino_link);
			ns->nnodes--;
		}
		vp_lru_del_locked(ns, n);
		if (n->in_pfs_ino)
			LIST_REMOVE(n, pfs_ino_link);
		vp_data_put(n->cur);
		vp_data_put(n->work);
		vp_node_free(n);
		n = pfs_parent;	/* drop the PFS place's ref, iteratively */
	}
}

void vp_node_put_unlocked(struct vp_ns *ns, struct vp_node *n)
{
	pthread_mutex_lock(&ns->lock);
	vp_node_put(ns, n);
	pthread_mutex_unlock(&ns->lock);
}

/* Grows both hash tables fourfold; on failure the chains grow longer. */
static void rehash_locked(struct vp_ns *ns)
{
	size_t size = ns->hash_size * 4;
	struct vp_node_list *by_name = calloc(size, sizeof(*by_name));
	struct vp_node_list *by_ino = calloc(size, sizeof(*by_ino));

	VP_ASSERT_LOCKED(&ns->lock);
	if (!by_name || !by_ino) {
		free(by_name);
		free(by_ino);
		return;		/* longer chains, still correct */
	}
	for (size_t i = 0; i < ns->hash_size; i++) {
		struct vp_node *n;

		while ((n = LIST_FIRST(&ns->by_ino[i]))) {
			LIST_REMOVE(n, ino_link);
			LIST_INSERT_HEAD(&by_ino[n->ino % size], n, ino_link);
		}
		while ((n = LIST_FIRST(&ns->by_name[i]))) {
			LIST_REMOVE(n, name_link);
			LIST_INSERT_HEAD(&by_name[name_hash(n->parent->ino, n->name, size)],
					 n, name_link);
		}
	}
	free(ns->by_name);
	free(ns->by_ino);
	ns->by_name = by_name;
	ns->by_ino = by_ino;
	ns->hash_size = size;
}

struct vp_node *vp_node_new_locked(struct vp_ns *ns, enum vp_node_type type,
				   mode_t mode, uid_t uid, gid_t gid)
{
	struct vp_node *n;

	VP_ASSERT_LOCKED(&ns->lock);
	n = calloc(1, sizeof(*n));
	if (!n)
		return NULL;
	n->refs = 1;		/* the caller's, usually the link */
	n->ino = ns->next_ino++;
	n->type = type;
	n->mode = mode;
	n->uid = uid;
	n->gid = gid;
	n->atime = n->mtime = n->ctime = vp_wall_now();
	n->pfs_version = VP_NO_VERSION;
	n->flushing_version = VP_NO_VERSION;
	n->kcache_version = VP_NO_VERSION;
	LIST_INIT(&n->children);
	LIST_INIT(&n->links);
	if (ns->nnodes >= ns->hash_size)
		rehash_locked(ns);
	LIST_INSERT_HEAD(&ns->by_ino[n->ino % ns->hash_size], n, ino_link);
	ns->nnodes++;
	return n;
}

struct vp_node *vp_link_new_locked(struct vp_ns *ns, struct vp_node *inode)
{
	struct vp_node *l;

	VP_ASSERT_LOCKED(&ns->lock);
	assert(inode->type != VP_NODE_LINK && inode->type != VP_NODE_DIR);
	l = calloc(1, sizeof(*l));
	if (!l)
		return NULL;
	l->refs = 1;		/* the caller's, usually the link */
	l->ino = inode->ino;	/* as it was then (readdir asks the inode); never in the inode hash */
	l->type = VP_NODE_LINK;
	l->mode = inode->mode & S_IFMT;	/* the type, for readdir; the rest is the inode's */
	l->pfs_version = VP_NO_VERSION;
	l->flushing_version = VP_NO_VERSION;
	l->kcache_version = VP_NO_VERSION;
	LIST_INIT(&l->children);
	LIST_INIT(&l->links);
	vp_node_get(inode);
	l->inode = inode;
	LIST_INSERT_HEAD(&inode->links, l, link_link);
	return l;
}

unsigned int vp_node_nlink_locked(struct vp_ns *ns, struct vp_node *inode)
{
	unsigned int count;
	struct vp_node *l;

	VP_ASSERT_LOCKED(&ns->lock);
	count = inode->parent || inode == ns->root ? 1 : 0;
	LIST_FOREACH(l, &inode->links, link_link)
		if (l->parent)
			count++;
	return count;
}

struct vp_node *vp_node_other_name_locked(struct vp_node *inode)
{
	struct vp_node *l;

	LIST_FOREACH(l, &inode->links, link_link)
		if (l->parent)
			break;
	return l;
}

void vp_node_remove_name_locked(struct vp_ns *ns, struct vp_node *n,
				enum vp_op_kind kind)
{
	struct vp_node *inode = vp_node_inode(n);
	struct vp_node *other = n == inode ? vp_node_other_name_locked(n) : NULL;
	struct vp_node *dir, *from = n->parent;
	struct timespec mtime, ctime;
	char *name;

	VP_ASSERT_LOCKED(&ns->lock);
	if (n == inode && !other)
		vp_flush_cancel_locked(ns, n);	/* the last name: its bytes need not reach the PFS */
	vp_flush_log_locked(ns, OP_UNLINK, n, NULL, NULL, other);
	vp_note_op_locked(ns, kind, n, NULL, NULL);
	if (!other) {
		vp_node_unlink_locked(ns, n);
		inode->ctime = vp_wall_now();	/* its link count changed */
		return;
	}
	/* the inode takes other's place; other's directory is unchanged */
	dir = other->parent;
	mtime = dir->mtime;
	ctime = dir->ctime;
	name = other->name;
	other->name = NULL;
	vp_node_detach_locked(ns, other);
	vp_node_detach_locked(ns, n);
	vp_node_link_name_locked(ns, dir, n, name);
	if (dir != from) {	/* unless the name that went was there too */
		dir->mtime = mtime;
		dir->ctime = ctime;
	}
	vp_node_put(ns, other);		/* its link's */
}

/*
 * The kernel must look dir/name up again (its dentry names another inode
 * now): told by vp_ns_installed() before it raises the events, or at once
 * (queued) without memory to remember it.
 */
static void inval_name_locked(struct vp_ns *ns, struct vp_node *dir, const char *name)
{
	struct vp_stale_name *sn = ns->stale_names;

	VP_ASSERT_LOCKED(&ns->lock);
	if (ns->nstale_names == ns->cap_stale_names) {
		size_t cap = ns->cap_stale_names ? ns->cap_stale_names * 2 : 8;

		sn = realloc(ns->stale_names, cap * sizeof(*sn));
		if (sn) {
			ns->stale_names = sn;
			ns->cap_stale_names = cap;
		}
	}
	if (sn && (sn[ns->nstale_names].name = strdup(name))) {
		sn[ns->nstale_names++].parent = dir->ino;
		return;
	}
	vp_kernel_inval_entry(ns, dir->ino, name);
}

void vp_node_take_names_locked(struct vp_ns *ns, struct vp_node *n,
			       struct vp_node *victim)
{
	struct vp_node *old = vp_node_inode(victim), *l, *next;

	VP_ASSERT_LOCKED(&ns->lock);
	assert(n->type == VP_NODE_FILE && old->type == VP_NODE_FILE && n != old);
	for (l = LIST_FIRST(&old->links); l; l = next) {
		next = LIST_NEXT(l, link_link);
		if (l == victim || !l->parent)
			continue;
		LIST_REMOVE(l, link_link);
		vp_node_get(n);
		l->inode = n;
		LIST_INSERT_HEAD(&n->links, l, link_link);
		vp_node_put(ns, old);	/* l's, which old's other refs outlive */
		inval_name_locked(ns, l->parent, l->name);
	}
	if (victim != old && old->parent) {
		/* old's own place becomes a name of n */
		struct vp_node *dir = old->parent;
		struct timespec mtime = dir->mtime, ctime = dir->ctime;
		char *name = old->name;

		l = vp_link_new_locked(ns, n);
		if (!l)
			return;	/* that name keeps the old inode */
		old->name = NULL;
		vp_note_unlink_locked(ns, old);	/* its last name: its mirror leaves the GPU */
		vp_node_detach_locked(ns, old);
		vp_node_link_name_locked(ns, dir, l, name);
		dir->mtime = mtime;
		dir->ctime = ctime;
		inval_name_locked(ns, dir, name);
		vp_node_put(ns, old);	/* its place's */
	}
}

struct vp_node *vp_node_find_locked(struct vp_ns *ns, uint64_t ino)
{
	struct vp_node *n;

	VP_ASSERT_LOCKED(&ns->lock);
	LIST_FOREACH(n, &ns->by_ino[ino % ns->hash_size], ino_link)
		if (n->ino == ino)
			break;
	return n;
}

struct vp_node *vp_node_by_ino(struct vp_ns *ns, uint64_t ino)
{
	struct vp_node *n;

	pthread_mutex_lock(&ns->lock);
	n = vp_node_find_locked(ns, ino);
	if (n)
		vp_node_get(n);
	pthread_mutex_unlock(&ns->lock);
	return n;
}

struct vp_node *vp_node_child_locked(struct vp_ns *ns, struct vp_node *dir,
				     const char *name)
{
	struct vp_node *n;

	VP_ASSERT_LOCKED(&ns->lock);
	LIST_FOREACH(n, &ns->by_name[name_hash(dir->ino, name, ns->hash_size)],
		     name_link)
		if (n->parent == dir && !strcmp(n->name, name))
			break;
	return n;
}

void vp_node_link_name_locked(struct vp_ns *ns, struct vp_node *dir,
			      struct vp_node *n, char *name)
{
	VP_ASSERT_LOCKED(&ns->lock);
	free(n->name);
	n->name = name;
	n->parent = dir;
	LIST_INSERT_HEAD(&ns->by_name[name_hash(dir->ino, name, ns->hash_size)],
			 n, name_link);
	LIST_INSERT_HEAD(&dir->children, n, sib_link);
	dir->nchildren++;
	if (n->type == VP_NODE_DIR)
		dir->nsubdirs++;
	dir->mtime = dir->ctime = vp_wall_now();
}

int vp_node_link_locked(struct vp_ns *ns, struct vp_node *dir,
			struct vp_node *n, const char *name)
{
	char *copy;

	VP_ASSERT_LOCKED(&ns->lock);
	copy = strdup(name);
	if (!copy)
		return -ENOMEM;
	vp_node_link_name_locked(ns, dir, n, copy);
	return 0;
}

void vp_node_detach_locked(struct vp_ns *ns, struct vp_node *n)
{
	struct vp_node *dir = n->parent;

	VP_ASSERT_LOCKED(&ns->lock);
	LIST_REMOVE(n, name_link);
	LIST_REMOVE(n, sib_link);
	dir->nchildren--;
	if (n->type == VP_NODE_DIR)
		dir->nsubdirs--;
	dir->mtime = dir->ctime = vp_wall_now();
	n->parent = NULL;
	n->ctime = vp_wall_now();
}

void vp_node_unlink_locked(struct vp_ns *ns, struct vp_node *n)
{
	VP_ASSERT_LOCKED(&ns->lock);
	if (n->type == VP_NODE_FILE)
		vp_note_unlink_locked(ns, n);	/* its mirror leaves the GPU */
	vp_node_detach_locked(ns, n);
	vp_node_put(ns, n);
}

/* Puts n at the LRU's tail: the most recently used clean file. */
void vp_lru_add_locked(struct vp_ns *ns, struct vp_node *n)
{
	VP_ASSERT_LOCKED(&ns->lock);
	vp_lru_del_locked(ns, n);
	TAILQ_INSERT_TAIL(&ns->lru, n, lru_link);
	n->in_lru = 1;
}

void vp_lru_del_locked(struct vp_ns *ns, struct vp_node *n)
{
	VP_ASSERT_LOCKED(&ns->lock);
	if (!n->in_lru)
		return;
	TAILQ_REMOVE(&ns->lru, n, lru_link);
	n->in_lru = 0;
}

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
	VP_ASSERT_LOCKED(&ns->lock);
	return build_path(ns, n, 1, buf, len);
}

int vp_live_path_locked(struct vp_ns *ns, struct vp_node *n, char *buf,
			size_t len)
{
	VP_ASSERT_LOCKED(&ns->lock);
	return build_path(ns, n, 0, buf, len);
}

struct vp_node *vp_resolve_locked(struct vp_ns *ns, const char *path)
{
	struct vp_node *n = ns->root;
	char copy[PATH_MAX], *save = NULL, *part;

	VP_ASSERT_LOCKED(&ns->lock);
	if (strlen(path) >= sizeof(copy))
		return NULL;
	strcpy(copy, path);
	for (part = strtok_r(copy, "/", &save); part && n;
	     part = strtok_r(NULL, "/", &save)) {
		if (!strcmp(part, "."))
			continue;
		n = n->type == VP_NODE_DIR ? vp_node_child_locked(ns, n, part) : NULL;
	}
	return vp_node_inode(n);
}

int vp_reserved_name_locked(struct vp_ns *ns, struct vp_node *dir, const char *name)
{
	static struct vp_ratelimit rl = VP_RATELIMIT_INIT(10, 60.0);

	VP_ASSERT_LOCKED(&ns->lock);
	if (dir != ns->root || strncmp(name, VP_RESERVED_PREFIX, strlen(VP_RESERVED_PREFIX)))
		return 0;
	vp_log_limited(&rl, LOG_WARNING, "fs", "refused '%s': names that begin with '" VP_RESERVED_PREFIX "' at the root are reserved for viperfs (its staging folder on the PFS, replicas' incoming folder, the schedule)",
	       name);
	return -EPERM;
}

/*
 * Checks a name for a new entry in dir.  The PFS path it will have must
 * fit PATH_MAX with room for the staging name.
 */
int vp_check_name_locked(struct vp_ns *ns, struct vp_node *dir,
			 const char *name)
{
	char path[PATH_MAX];
	size_t len = strlen(name);

	VP_ASSERT_LOCKED(&ns->lock);
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
	/*
	 * The whole path from the root fits PATH_MAX, as on a local file
	 * system: staging names live in the staging folder, and every path
	 * on the PFS and on a replica is opened from a directory descriptor.
	 */
	if (vp_live_path_locked(ns, dir, path, sizeof(path)) ||
	    strlen(path) + (*path ? 1 : 0) + len >= PATH_MAX)
		return -ENAMETOOLONG;
	return 0;
}

uint64_t vp_node_size_locked(struct vp_ns *ns, struct vp_node *n)
{
	VP_ASSERT_LOCKED(&ns->lock);
	n = vp_node_inode(n);
	if (n->type == VP_NODE_SYMLINK)
		return strlen(n->symlink);
	if (n->type == VP_NODE_DIR)
		return 4096;
	if (n->work)
		return vp_data_size(n->work);
	return n->size;
}

void vp_node_stat_locked(struct vp_ns *ns, struct vp_node *n, struct stat *st)
{
	VP_ASSERT_LOCKED(&ns->lock);
	n = vp_node_inode(n);
	memset(st, 0, sizeof(*st));
	st->st_ino = n->ino;
	st->st_mode = n->mode;
	/* unlinked (or removed) while still open: no name holds it, as POSIX has it */
	if (!n->parent && n != ns->root)
		st->st_nlink = 0;
	else if (n->type == VP_NODE_DIR)
		st->st_nlink = 2 + n->nsubdirs;
	else
		st->st_nlink = vp_node_nlink_locked(ns, n);
	st->st_uid = n->uid;
	st->st_gid = n->gid;
	st->st_rdev = n->rdev;
	st->st_size = (off_t)vp_node_size_locked(ns, n);
	st->st_blocks = (st->st_size + 511) / 512;
	st->st_blksize = VP_CHUNK_SIZE;
	st->st_atim = n->atime;
	st->st_mtim = n->mtime;
	st->st_ctim = n->ctime;
}

int vp_ns_lookup(struct vp_ns *ns, uint64_t parent, const char *name,
		 struct stat *st)
{
	struct vp_node *dir, *n;
	int rc;

	if (strlen(name) > VP_NAME_MAX)
		return -ENAMETOOLONG;
	rc = vp_ns_get_dir(ns, parent, &dir);
	if (rc)
		return rc;
	pthread_mutex_lock(&ns->lock);
	n = vp_node_inode(vp_node_child_locked(ns, dir, name));
	if (n) {
		vp_node_get(n);		/* the kernel's lookup */
		n->nlookup++;
		vp_node_stat_locked(ns, n, st);
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
	n = vp_node_find_locked(ns, ino);
	if (!n) {
		struct vp_alias *a = vp_alias_find_locked(ns, ino);

		if (a)
			vp_alias_forget_locked(ns, a, nlookup);
		pthread_mutex_unlock(&ns->lock);
		return;
	}
	n->nlookup -= nlookup < n->nlookup ? nlookup : n->nlookup;
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
	n = vp_node_find_locked(ns, ino);
	if (n) {
		vp_node_stat_locked(ns, n, st);
	} else {
		struct vp_alias *a = vp_alias_find_locked(ns, ino);

		if (a) {	/* a re-keyed node, as its old inode's openers see it */
			vp_node_stat_locked(ns, a->node, st);
			st->st_ino = ino;
		} else {
			rc = -ESTALE;
		}
	}
	pthread_mutex_unlock(&ns->lock);
	return rc;
}

int vp_ns_readlink(struct vp_ns *ns, uint64_t ino, char *buf, size_t len)
{
	struct vp_node *n;
	int rc = 0;

	pthread_mutex_lock(&ns->lock);
	n = vp_node_find_locked(ns, ino);
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

int vp_ns_path_ino(struct vp_ns *ns, const char *path, uint64_t *ino)
{
	struct vp_node *n;
	int rc = -ENOENT;

	pthread_mutex_lock(&ns->lock);
	n = vp_resolve_locked(ns, path);
	if (n && n->type == VP_NODE_FILE) {
		*ino = n->ino;
		rc = 0;
	} else if (n) {
		rc = -EISDIR;
	}
	pthread_mutex_unlock(&ns->lock);
	return rc;
}

struct vp_data *vp_ns_path_data(struct vp_ns *ns, const char *path)
{
	struct vp_data *d = NULL;
	struct vp_node *n;

	pthread_mutex_lock(&ns->lock);
	n = vp_resolve_locked(ns, path);
	if (n && n->type == VP_NODE_FILE && n->cur)
		d = vp_data_get(n->cur);
	pthread_mutex_unlock(&ns->lock);
	return d;
}

uint64_t vp_ns_path_version(struct vp_ns *ns, const char *path)
{
	struct vp_ns_stamp st;

	return vp_ns_path_stamp(ns, path, &st) ? UINT64_MAX : st.version;
}

int vp_ns_path_taken(struct vp_ns *ns, const char *path)
{
	struct vp_node *n;
	int taken;

	pthread_mutex_lock(&ns->lock);
	n = vp_resolve_locked(ns, path);
	taken = n && n->type != VP_NODE_DIR;
	pthread_mutex_unlock(&ns->lock);
	return taken;
}

int vp_ns_path_stamp(struct vp_ns *ns, const char *path, struct vp_ns_stamp *out)
{
	struct vp_node *n;
	int rc = -ENOENT;

	pthread_mutex_lock(&ns->lock);
	n = vp_resolve_locked(ns, path);
	if (n && n->type == VP_NODE_FILE) {
		out->version = n->version;
		out->epoch = n->epoch;
		out->mode = n->mode & 07777;
		out->mtime_ns = vp_ts_ns(n->mtime);
		rc = 0;
	}
	pthread_mutex_unlock(&ns->lock);
	return rc;
}

int vp_ns_raise_floor(struct vp_ns *ns, const char *path, uint64_t version)
{
	struct vp_node *n;
	int rc = -ENOENT;

	pthread_mutex_lock(&ns->lock);
	n = vp_resolve_locked(ns, path);
	if (n && n->type == VP_NODE_FILE) {
		if (version > n->floor)
			n->floor = version;
		rc = 0;
	}
	pthread_mutex_unlock(&ns->lock);
	return rc;
}

int vp_ns_relabel(struct vp_ns *ns, const char *path, uint64_t version,
		  uint64_t epoch)
{
	struct vp_node *n;
	int rc = -ESTALE;

	pthread_mutex_lock(&ns->lock);
	n = vp_resolve_locked(ns, path);
	if (n && n->type == VP_NODE_FILE && n->version == version && !n->work) {
		n->epoch = epoch;
		rc = 0;
	}
	pthread_mutex_unlock(&ns->lock);
	return rc;
}
