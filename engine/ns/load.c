/*
 * load: the namespace read from the PFS -- directories on first lookup or
 * readdir, file bytes on first open (or back from the GPU mirror), whole
 * trees for replicas and warm-ups.  Both lazy loads are double-checked:
 * a look under ns->lock, then again under pfs_lock and ns->lock, with the
 * PFS read in between under pfs_lock alone (pfs_load below).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "../log.h"
#include "ns_i.h"

#define XATTR_VERSION "user.viperfs.version"
#define XATTR_EPOCH "user.viperfs.epoch"

static uint64_t read_xattr_u64(int fd, const char *name)
{
	char buf[32];
	ssize_t n = fgetxattr(fd, name, buf, sizeof(buf) - 1);

	if (n <= 0)
		return 0;
	buf[n] = '\0';
	return strtoull(buf, NULL, 10);
}

/* The version (and the epoch of the run that wrote it) a flush left on name. */
static uint64_t read_version_xattr(int dirfd, const char *name, uint64_t *epoch)
{
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	uint64_t v;

	*epoch = 0;
	if (fd < 0)
		return 0;
	v = read_xattr_u64(fd, XATTR_VERSION);
	*epoch = read_xattr_u64(fd, XATTR_EPOCH);
	close(fd);
	return v;
}

struct pfs_entry {
	char *name;
	struct stat st;			/* a stand-in's type and rdev are the node's */
	char *target;
	uint64_t version, epoch;
};

/*
 * A regular file on the PFS that stands in for a special node the PFS
 * refused (flush.c, replay_mknod): the node's type, rdev, mode and owner
 * put into st.  Only a stand-in the daemon made counts: owned by us, mode
 * 0600, one link.  Anyone who may write the PFS can set a user.* xattr on
 * a file of theirs, and must not get a device node in the mount.
 */
static void read_stand_in(int dirfd, const char *name, struct stat *st)
{
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	char buf[96];
	unsigned int type, mode, uid, gid;
	unsigned long long rdev;
	struct stat now;
	ssize_t n;

	if (fd < 0)
		return;
	/* the file opened, not the name listed: it may have been swapped meanwhile */
	n = fstat(fd, &now) || !S_ISREG(now.st_mode) || now.st_size != 0 ||
	    now.st_uid != geteuid() || (now.st_mode & 07777) != 0600 || now.st_nlink != 1 ? -1 :
	    fgetxattr(fd, VP_NODE_XATTR, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return;
	buf[n] = '\0';
	if (sscanf(buf, "%o %llu %o %u %u", &type, &rdev, &mode, &uid, &gid) != 5 ||
	    (type != S_IFIFO && type != S_IFSOCK && type != S_IFCHR && type != S_IFBLK))
		return;
	st->st_mode = type | (mode & 07777 & ~(unsigned int)(S_ISUID | S_ISGID));
	st->st_rdev = (dev_t)rdev;
	st->st_uid = uid;
	st->st_gid = gid;
}

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
		if (is_root && !strncmp(de->d_name, VP_RESERVED_PREFIX, strlen(VP_RESERVED_PREFIX)) &&
		    strcmp(de->d_name, VP_SCHEDULE_FILE)) {
			static struct vp_ratelimit rl = VP_RATELIMIT_INIT(10, 60.0);

			if (strcmp(de->d_name, VP_STAGING_DIR) && strcmp(de->d_name, VP_EPOCH_FILE))
				vp_log_limited(&rl, LOG_WARNING, "pfs", "'%s' on the PFS is not shown: names that begin with '" VP_RESERVED_PREFIX "' at the root are reserved for viperfs",
				       de->d_name);
			continue;
		}
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
		if (S_ISREG(e->st.st_mode) && e->st.st_size == 0)
			read_stand_in(fd, de->d_name, &e->st);
		if (S_ISLNK(e->st.st_mode)) {
			char buf[PATH_MAX];
			ssize_t l = readlinkat(fd, de->d_name, buf, sizeof(buf) - 1);

			if (l < 0)
				continue;
			buf[l] = '\0';
			e->target = strdup(buf);
		}
		if (S_ISREG(e->st.st_mode))
			e->version = read_version_xattr(fd, de->d_name, &e->epoch);
		if (!S_ISREG(e->st.st_mode) && !S_ISDIR(e->st.st_mode) && !S_ISLNK(e->st.st_mode))
			e->st.st_size = 0;	/* FIFOs, sockets, devices: no bytes of ours */
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
 * One lazy load from the PFS, double-checked.  Each kind of load says:
 *  - done_locked: whether there is nothing (left) to load: >0 done, 0 go
 *    on, <0 an error (believed only on the second look, under pfs_lock);
 *  - no_place_locked: what to do when n has no PFS place;
 *  - read: the PFS I/O on path, with pfs_lock held and ns->lock not;
 *  - install_locked: puts what read() found into the tree (rc is read's).
 * All callbacks return 0 or -errno, and share arg.
 */
struct pfs_loader {
	int (*done_locked)(struct vp_ns *ns, struct vp_node *n, void *arg);
	int (*no_place_locked)(struct vp_ns *ns, struct vp_node *n, void *arg);
	int (*read)(struct vp_ns *ns, const char *path, void *arg);
	int (*install_locked)(struct vp_ns *ns, struct vp_node *n,
			      const char *path, int rc, void *arg);
};

/* Runs a load of n.  No locks held on entry.  Returns 0 or -errno. */
static int pfs_load(struct vp_ns *ns, struct vp_node *n,
		    const struct pfs_loader *ld, void *arg)
{
	char path[PATH_MAX];
	int rc;

	pthread_mutex_lock(&ns->lock);
	rc = ld->done_locked(ns, n, arg);
	pthread_mutex_unlock(&ns->lock);
	if (rc > 0)
		return 0;

	pthread_mutex_lock(&ns->pfs_lock);
	pthread_mutex_lock(&ns->lock);
	rc = ld->done_locked(ns, n, arg);
	if (rc)
		goto out_unlock;
	if (vp_pfs_path_locked(ns, n, path, sizeof(path))) {
		rc = ld->no_place_locked(ns, n, arg);
		goto out_unlock;
	}
	pthread_mutex_unlock(&ns->lock);
	rc = ld->read(ns, path, arg);
	pthread_mutex_lock(&ns->lock);
	rc = ld->install_locked(ns, n, path, rc, arg);
out_unlock:
	pthread_mutex_unlock(&ns->lock);
	pthread_mutex_unlock(&ns->pfs_lock);
	return rc > 0 ? 0 : rc;
}

/* ---- directories ---- */

struct dir_load {
	struct pfs_entry *ents;
	size_t count;
	int names_elsewhere;		/* a file has names on the PFS not in the tree yet */
};

static int dir_done_locked(struct vp_ns *ns, struct vp_node *dir, void *arg)
{
	VP_ASSERT_LOCKED(&ns->lock);
	(void)arg;
	if (!dir->loaded && ns->replica_loaded)
		dir->loaded = 1;	/* a replica's tree comes from the producer now */
	return dir->loaded;
}

static int dir_no_place_locked(struct vp_ns *ns, struct vp_node *dir, void *arg)
{
	VP_ASSERT_LOCKED(&ns->lock);
	(void)arg;
	dir->loaded = 1;	/* not on the PFS: nothing to read */
	return 0;
}

static int dir_read(struct vp_ns *ns, const char *path, void *arg)
{
	struct dir_load *dl = arg;
	int fd, rc;

	fd = vp_pfs_open_dir(ns->pfs_root_fd, path);
	if (fd < 0)
		return fd;
	rc = read_pfs_dir(fd, !*path, &dl->ents, &dl->count);
	close(fd);
	return rc;
}

static size_t pfs_ino_bucket(dev_t dev, ino_t ino)
{
	return (size_t)(((uint64_t)dev * 1099511628211ULL ^ (uint64_t)ino) % VP_PFS_INO_BUCKETS);
}

/* The node loaded from the PFS inode (dev, ino) that still has a name, or NULL. */
static struct vp_node *pfs_ino_find_locked(struct vp_ns *ns, dev_t dev, ino_t ino)
{
	struct vp_node *n;

	VP_ASSERT_LOCKED(&ns->lock);
	if (!ns->by_pfs_ino)
		return NULL;
	LIST_FOREACH(n, &ns->by_pfs_ino[pfs_ino_bucket(dev, ino)], pfs_ino_link)
		if (n->pfs_dev == dev && n->pfs_ino == ino && n->parent)
			break;
	return n;
}

/* Remembers that n was loaded from the PFS inode (dev, ino), which has other names. */
static void pfs_ino_add_locked(struct vp_ns *ns, struct vp_node *n, dev_t dev, ino_t ino)
{
	VP_ASSERT_LOCKED(&ns->lock);
	if (!ns->by_pfs_ino &&
	    !(ns->by_pfs_ino = calloc(VP_PFS_INO_BUCKETS, sizeof(*ns->by_pfs_ino))))
		return;		/* its other names load as files of their own */
	n->pfs_dev = dev;
	n->pfs_ino = ino;
	n->in_pfs_ino = 1;
	LIST_INSERT_HEAD(&ns->by_pfs_ino[pfs_ino_bucket(dev, ino)], n, pfs_ino_link);
}

/*
 * PFS entry e is another name of inode (a hard link there): a link node in
 * dir at its PFS place.  If the inode has had a new version flushed since
 * it was loaded, this name on the PFS still holds the old file: it is
 * linked again.  0 or -ENOMEM.
 */
static int add_link_locked(struct vp_ns *ns, struct vp_node *dir,
			   struct vp_node *inode, struct pfs_entry *e)
{
	struct vp_node *l = vp_link_new_locked(ns, inode);

	VP_ASSERT_LOCKED(&ns->lock);
	if (!l)
		return -ENOMEM;
	vp_node_get(dir);
	l->pfs_parent = dir;
	l->pfs_name = strdup(e->name);
	if (!l->pfs_name || vp_node_link_locked(ns, dir, l, e->name)) {
		l->parent = NULL;
		vp_node_put(ns, l);
		return -ENOMEM;
	}
	if (inode->type == VP_NODE_FILE && e->version != inode->pfs_version)
		vp_flush_log_locked(ns, OP_LINK, l, dir, e->name, NULL);
	return 0;
}

/*
 * A node for PFS entry e, linked in dir at its PFS place; or, for another
 * name of a PFS inode already loaded, a link node of its node.  0 or
 * -ENOMEM.
 */
static int add_entry_locked(struct vp_ns *ns, struct vp_node *dir,
			    struct pfs_entry *e)
{
	enum vp_node_type type = S_ISDIR(e->st.st_mode) ? VP_NODE_DIR :
		S_ISLNK(e->st.st_mode) ? VP_NODE_SYMLINK :
		S_ISREG(e->st.st_mode) ? VP_NODE_FILE : VP_NODE_SPECIAL;
	int linked = type != VP_NODE_DIR && e->st.st_nlink > 1;
	struct vp_node *n;

	VP_ASSERT_LOCKED(&ns->lock);
	/*
	 * Even with one link left: a new version flushed under the node's
	 * own name replaced its file there, and this name holds the old one.
	 */
	if (type != VP_NODE_DIR) {
		n = pfs_ino_find_locked(ns, e->st.st_dev, e->st.st_ino);
		if (n && n->type == type)
			return add_link_locked(ns, dir, n, e);
	}
	n = vp_node_new_locked(ns, type, e->st.st_mode, e->st.st_uid,
			       e->st.st_gid);
	if (!n)
		return -ENOMEM;
	n->atime = e->st.st_atim;
	n->mtime = e->st.st_mtim;
	n->ctime = e->st.st_ctim;
	n->symlink = e->target;
	e->target = NULL;
	if (type == VP_NODE_SPECIAL)
		n->rdev = S_ISCHR(e->st.st_mode) || S_ISBLK(e->st.st_mode) ? e->st.st_rdev : 0;
	n->size = (uint64_t)e->st.st_size;
	n->version = e->version;
	n->epoch = e->epoch;
	n->pfs_version = n->version;
	vp_node_get(dir);
	n->pfs_parent = dir;
	n->pfs_name = strdup(e->name);
	if (!n->pfs_name || vp_node_link_locked(ns, dir, n, e->name)) {
		n->parent = NULL;
		vp_node_put(ns, n);
		return -ENOMEM;
	}
	if (linked)
		pfs_ino_add_locked(ns, n, e->st.st_dev, e->st.st_ino);
	return 0;
}

static int dir_install_locked(struct vp_ns *ns, struct vp_node *dir,
			      const char *path, int rc, void *arg)
{
	struct dir_load *dl = arg;

	VP_ASSERT_LOCKED(&ns->lock);
	if (rc) {
		vp_log(LOG_ERR, "fs", "reading directory '%s' on the PFS '%s': %s",
		       path, ns->pfs_dir, strerror(-rc));
		if (rc != -ENOENT)
			return -EIO;
		dir->loaded = 1;
		return 0;
	}
	for (size_t i = 0; i < dl->count && !rc; i++) {
		struct pfs_entry *e = &dl->ents[i];
		struct vp_node *n;

		if (vp_node_child_locked(ns, dir, e->name))
			continue;
		rc = add_entry_locked(ns, dir, e);
		n = rc || S_ISDIR(e->st.st_mode) || e->st.st_nlink < 2 ? NULL :
			vp_node_inode(vp_node_child_locked(ns, dir, e->name));
		if (n && vp_node_nlink_locked(ns, n) < e->st.st_nlink)
			dl->names_elsewhere = 1;
	}
	if (!rc)
		dir->loaded = 1;
	return rc;
}

static const struct pfs_loader dir_loader = {
	.done_locked = dir_done_locked,
	.no_place_locked = dir_no_place_locked,
	.read = dir_read,
	.install_locked = dir_install_locked,
};

/* A PFS that cannot be read is an -EIO. */
/*
 * A PFS file with names in directories not read yet: the whole tree is
 * read now, once, so that its link count and every name are known (tar
 * -H, rsync -H and find -links trust st_nlink) and a new version reaches
 * every name on the PFS.  A load that comes meanwhile does not wait for it.
 */
static void load_other_names(struct vp_ns *ns)
{
	static struct vp_ratelimit rl = VP_RATELIMIT_INIT(1, 3600.0);

	if (__atomic_exchange_n(&ns->loading_names, 1, __ATOMIC_ACQ_REL))
		return;		/* under way (this is part of it, or another thread's) */
	vp_log_limited(&rl, LOG_INFO, "fs", "a file on the PFS '%s' has hard links in directories not read yet: reading the whole PFS tree once",
		       ns->pfs_dir);
	vp_ns_load_tree(ns, ns->root);
	__atomic_store_n(&ns->loading_names, 0, __ATOMIC_RELEASE);
}

int vp_ns_load_dir(struct vp_ns *ns, struct vp_node *dir)
{
	struct dir_load dl = { NULL, 0, 0 };
	int rc = pfs_load(ns, dir, &dir_loader, &dl);

	for (size_t i = 0; i < dl.count; i++) {
		free(dl.ents[i].name);
		free(dl.ents[i].target);
	}
	free(dl.ents);
	if (!rc && dl.names_elsewhere)
		load_other_names(ns);
	return rc;
}

/* Loads every directory below dir from the PFS.  No locks held. */
void vp_ns_load_tree(struct vp_ns *ns, struct vp_node *dir)
{
	struct vp_node **subdirs = NULL;
	size_t n = 0;

	if (vp_ns_load_dir(ns, dir))
		return;
	pthread_mutex_lock(&ns->lock);
	subdirs = calloc(dir->nsubdirs + 1, sizeof(*subdirs));
	for (struct vp_node *c = LIST_FIRST(&dir->children); c && subdirs;
	     c = LIST_NEXT(c, sib_link)) {
		if (c->type == VP_NODE_DIR && n < dir->nsubdirs) {
			vp_node_get(c);
			subdirs[n++] = c;
		}
	}
	pthread_mutex_unlock(&ns->lock);
	for (size_t i = 0; i < n; i++) {
		vp_ns_load_tree(ns, subdirs[i]);
		pthread_mutex_lock(&ns->lock);
		vp_node_put(ns, subdirs[i]);
		pthread_mutex_unlock(&ns->lock);
	}
	free(subdirs);
}

void vp_ns_load_all(struct vp_ns *ns)
{
	vp_ns_load_tree(ns, ns->root);
}

/* Finds a directory by inode, loaded; returns it with a ref, or -errno. */
int vp_ns_get_dir(struct vp_ns *ns, uint64_t ino, struct vp_node **out)
{
	struct vp_node *dir = vp_node_by_ino(ns, ino);
	int rc;

	if (!dir)
		return -ESTALE;
	if (dir->type != VP_NODE_DIR) {
		rc = -ENOTDIR;
		goto err_put;
	}
	rc = vp_ns_load_dir(ns, dir);
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

/*
 * Resolves path, reading directories from the PFS on the way.  Returns
 * the node with a reference, or NULL.  No locks held.
 */
struct vp_node *vp_resolve_loading(struct vp_ns *ns, const char *path)
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
		if (n->type == VP_NODE_DIR && !vp_ns_load_dir(ns, n)) {
			pthread_mutex_lock(&ns->lock);
			c = vp_node_child_locked(ns, n, part);
			if (c)
				vp_node_get(c);
			pthread_mutex_unlock(&ns->lock);
		}
		vp_node_put_unlocked(ns, n);
		n = c;
	}
	if (n && n->type == VP_NODE_LINK) {	/* the name's inode */
		struct vp_node *inode = n->inode;

		vp_node_get(inode);	/* n's reference holds it meanwhile */
		vp_node_put_unlocked(ns, n);
		n = inode;
	}
	return n;
}

uint64_t vp_tier_size(struct vp_ns *ns, uint64_t ino, uint64_t version)
{
	return ns->tier ? ns->tier->size(ns->tier_arg, ino, version) : UINT64_MAX;
}

/*
 * The bytes of version `version` of n from the tier below the cache (the
 * GPU mirror), as a new data in the cache, or NULL (no copy there, no room
 * in the cache soon enough).  No locks held.
 */
static struct vp_data *tier_load(struct vp_ns *ns, struct vp_node *n, uint64_t version)
{
	size_t chunk = vp_pool_chunk_size(ns->pool);
	uint64_t size;
	size_t nchunks;
	void **mem;
	struct vp_data *d = NULL;
	int err = 0;

	if ((size = vp_tier_size(ns, n->ino, version)) == UINT64_MAX)
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
		if (!mem[i] ||
		    ns->tier->read(ns->tier_arg, n->ino, version, mem[i], len, off) != (ssize_t)len)
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

/* ---- file bytes ---- */

struct file_load {
	struct vp_data *out;	/* the result: a new reference */
	struct vp_data *read;	/* what file_read() read */
	int unwritten;		/* a version that is neither cached nor on the PFS */
};

static int file_done_locked(struct vp_ns *ns, struct vp_node *n, void *arg)
{
	struct file_load *fl = arg;

	VP_ASSERT_LOCKED(&ns->lock);
	if (n->cur) {
		fl->out = vp_data_get(n->cur);
		return 1;
	}
	fl->unwritten = n->pfs_version != n->version;
	return fl->unwritten ? -EIO : 0;
}

static int file_no_place_locked(struct vp_ns *ns, struct vp_node *n, void *arg)
{
	VP_ASSERT_LOCKED(&ns->lock);
	(void)n;
	(void)arg;
	return -EIO;
}

static int file_read(struct vp_ns *ns, const char *path, void *arg)
{
	struct file_load *fl = arg;
	struct stat st;
	int fd, rc;

	fd = vp_pfs_openat(ns->pfs_root_fd, path, O_RDONLY | O_NOFOLLOW, 0);
	if (fd < 0 || fstat(fd, &st)) {
		rc = fd < 0 ? fd : -errno;
		vp_log(LOG_ERR, "fs", "reading '%s' from the PFS '%s': %s",
		       path, ns->pfs_dir, strerror(-rc));
		if (fd >= 0)
			close(fd);
		return -EIO;
	}
	fl->read = vp_data_new_backed(ns->pool, fd, (uint64_t)st.st_size);	/* takes fd */
	return fl->read ? 0 : -ENOMEM;
}

/* Makes d (whose reference it takes) n's cached bytes, unless some are. */
static struct vp_data *adopt_cur_locked(struct vp_ns *ns, struct vp_node *n,
					struct vp_data *d)
{
	VP_ASSERT_LOCKED(&ns->lock);
	if (n->cur) {
		vp_data_put(d);
		return vp_data_get(n->cur);
	}
	n->cur = d;
	n->size = vp_data_size(d);
	if (!n->work)
		vp_lru_add_locked(ns, n);
	return vp_data_get(d);
}

static int file_install_locked(struct vp_ns *ns, struct vp_node *n,
			       const char *path, int rc, void *arg)
{
	struct file_load *fl = arg;

	VP_ASSERT_LOCKED(&ns->lock);
	(void)path;
	if (rc)
		return rc;
	fl->out = adopt_cur_locked(ns, n, fl->read);
	fl->read = NULL;
	return 0;
}

static const struct pfs_loader file_loader = {
	.done_locked = file_done_locked,
	.no_place_locked = file_no_place_locked,
	.read = file_read,
	.install_locked = file_install_locked,
};

/*
 * Version `version` of n from the tier below (its GPU mirror), made n's
 * cached bytes if it is still the latest; a new reference in *out.
 * Returns 0, or -ENOENT without a copy there.  No locks held.
 */
static int tier_reload(struct vp_ns *ns, struct vp_node *n, uint64_t version,
		      struct vp_data **out)
{
	struct vp_data *d = tier_load(ns, n, version);

	if (!d)
		return -ENOENT;
	pthread_mutex_lock(&ns->lock);
	if (n->cur || n->version == version)
		*out = adopt_cur_locked(ns, n, d);
	else
		*out = d;	/* a newer version came meanwhile: this one, uncached */
	pthread_mutex_unlock(&ns->lock);
	return 0;
}

int vp_node_data(struct vp_ns *ns, struct vp_node *n, struct vp_data **out)
{
	struct file_load fl = { NULL, NULL, 0 };
	uint64_t version;
	int rc;

	pthread_mutex_lock(&ns->lock);
	if (n->cur) {
		*out = vp_data_get(n->cur);
		pthread_mutex_unlock(&ns->lock);
		return 0;
	}
	version = n->version;
	pthread_mutex_unlock(&ns->lock);

	/* evicted from RAM but mirrored in GPU memory: back from there, not the PFS */
	if (!tier_reload(ns, n, version, out))
		return 0;
	rc = pfs_load(ns, n, &file_loader, &fl);
	if (rc == -EIO && fl.unwritten)
		vp_log(LOG_ERR, "fs", "file ino %" PRIu64 " has no bytes in the cache and none on the PFS",
		       n->ino);
	if (!rc)
		*out = fl.out;
	return rc;
}

int vp_ns_on_pfs(struct vp_ns *ns, const char *path)
{
	int fd = vp_pfs_openat(ns->pfs_root_fd, path, O_PATH | O_NOFOLLOW | O_CLOEXEC, 0);

	if (fd < 0)
		return fd != -ENOENT;	/* an error other than absence: take it as there */
	close(fd);
	return 1;
}

struct vp_data *vp_ns_pfs_copy(struct vp_ns *ns, const char *path, uint64_t version,
			       uint32_t *mode, int *err)
{
	/* O_NONBLOCK: a FIFO put there must not hold the repl thread in open() */
	int fd = vp_pfs_openat(ns->pfs_root_fd, path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0);
	struct vp_data *d = NULL;
	struct stat st;
	char *buf = NULL;
	uint64_t off = 0;

	*err = fd < 0 ? fd : 0;
	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
		*err = -EINVAL;
		goto out;
	}
	if ((uint64_t)st.st_size > ns->cfg.ram_cache) {
		*err = -EFBIG;		/* it could never fit: not one chunk of it is read */
		goto out;
	}
	if (read_xattr_u64(fd, XATTR_VERSION) != version) {
		*err = -ESTALE;		/* the PFS moved on (or not yet) */
		goto out;
	}
	*mode = st.st_mode & 07777;
	d = vp_ns_work_data(ns);
	buf = malloc(1 << 20);
	if (!d || !buf) {
		*err = -ENOMEM;
		goto out;
	}
	while (off < (uint64_t)st.st_size) {
		ssize_t n = pread(fd, buf, 1 << 20, (off_t)off);
		ssize_t w;

		if (n <= 0) {
			*err = n < 0 ? -errno : -EIO;
			break;
		}
		w = vp_data_write(d, buf, (size_t)n, off, ns->cfg.cache_wait);
		if (w != n) {
			*err = w < 0 ? (int)w : -EIO;
			break;
		}
		off += (uint64_t)n;
	}
out:
	if (*err) {
		vp_data_put(d);
		d = NULL;
	}
	free(buf);
	close(fd);
	return d;
}
