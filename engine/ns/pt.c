/*
 * pt: which opens the kernel may serve by FUSE passthrough, straight from
 * a version's sealed memory file, and the re-keying of inodes that keeps
 * the kernel's rules (ns_i.h, struct vp_kino).
 *
 * A read-only open gets passthrough when its bytes are a sealed memory
 * file and no open of the same kernel inode goes through the daemon.  Every other open goes through the daemon
 * (direct_io, so it never puts the inode in the kernel's caching mode).
 * A writer, or a new version, on an inode that passthrough readers hold
 * moves the node to a new inode number: the readers keep the old inode
 * and its backing file until they close it, as they keep the old version.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "ns_i.h"
#include "../log.h"
#include "../metrics.h"

void vp_ns_set_passthrough(struct vp_ns *ns, int on)
{
	pthread_mutex_lock(&ns->lock);
	ns->pt_on = on;
	pthread_mutex_unlock(&ns->lock);
}

void vp_ns_set_kernel(struct vp_ns *ns, const struct vp_ns_kernel *ops, void *arg)
{
	ns->kernel_arg = arg;
	__atomic_store_n(&ns->kernel, ops, __ATOMIC_RELEASE);
}

void vp_ns_set_read_path(struct vp_ns *ns, const char *mode, const char *why)
{
	pthread_mutex_lock(&ns->lock);
	snprintf(ns->read_path, sizeof(ns->read_path), "%s", mode);
	snprintf(ns->read_path_why, sizeof(ns->read_path_why), "%s", why);
	pthread_mutex_unlock(&ns->lock);
}

uint64_t vp_ns_handle_size(struct vp_handle *h)
{
	return vp_data_size(h->data);
}

void vp_ns_count_read(struct vp_ns *ns, size_t n)
{
	__atomic_add_fetch(&ns->st_bytes_read, (uint64_t)n, __ATOMIC_RELAXED);
	vp_metrics_add(VP_C_BYTES_READ, (uint64_t)n);
}

int vp_ns_handle_fd(struct vp_handle *h)
{
	return h->writable ? -1 : vp_data_fd(h->data);
}

void vp_kino_put(struct vp_kino *k)
{
	if (k && --k->refs == 0)
		free(k);
}

int vp_pt_busy_locked(struct vp_ns *ns, struct vp_node *n)
{
	VP_ASSERT_LOCKED(&ns->lock);
	return ns->pt_on && n->kino && n->kino->pt_opens > 0;
}

int vp_kino_readers_locked(struct vp_ns *ns, struct vp_node *n)
{
	VP_ASSERT_LOCKED(&ns->lock);
	return n->kino && n->kino->pt_opens + n->kino->np_opens > 0;
}

struct vp_alias *vp_alias_find_locked(struct vp_ns *ns, uint64_t ino)
{
	struct vp_alias *a;

	VP_ASSERT_LOCKED(&ns->lock);
	LIST_FOREACH(a, &ns->aliases, link)
		if (a->ino == ino)
			return a;
	return NULL;
}

void vp_alias_forget_locked(struct vp_ns *ns, struct vp_alias *a, uint64_t nlookup)
{
	struct vp_node *n = a->node;

	VP_ASSERT_LOCKED(&ns->lock);
	if (nlookup > a->nlookup)
		nlookup = a->nlookup;
	a->nlookup -= nlookup;
	if (a->nlookup == 0) {
		LIST_REMOVE(a, link);
		free(a);
	}
	while (nlookup--)
		vp_node_put(ns, n);	/* a->node is not used again once freed */
}

void vp_aliases_release(struct vp_ns *ns)
{
	struct vp_alias *a;

	while ((a = LIST_FIRST(&ns->aliases))) {
		LIST_REMOVE(a, link);
		free(a);
	}
}

void vp_rekey_locked(struct vp_ns *ns, struct vp_node *n)
{
	uint64_t old = n->ino;

	VP_ASSERT_LOCKED(&ns->lock);
	if (n->nlookup) {
		struct vp_alias *a = calloc(1, sizeof(*a));

		if (a) {	/* without it, the kernel's forget of old finds nothing: a leaked node */
			a->ino = old;
			a->node = n;
			a->nlookup = n->nlookup;
			LIST_INSERT_HEAD(&ns->aliases, a, link);
		}
		n->nlookup = 0;
	}
	LIST_REMOVE(n, ino_link);
	n->ino = ns->next_ino++;
	LIST_INSERT_HEAD(&ns->by_ino[n->ino % ns->hash_size], n, ino_link);
	vp_kino_put(n->kino);
	n->kino = NULL;
	vp_log(LOG_DEBUG, "fs", "'%s': inode %" PRIu64 " is now %" PRIu64 " (passthrough readers keep the old one)",
	       n->name ? n->name : "?", old, n->ino);
	if (n->parent)
		vp_kernel_inval_entry(ns, n->parent->ino, n->name);
}

/* n's kino for its present inode number, made if needed.  ns->lock held. */
static struct vp_kino *kino_of_locked(struct vp_ns *ns, struct vp_node *n)
{
	VP_ASSERT_LOCKED(&ns->lock);
	if (!n->kino) {
		n->kino = calloc(1, sizeof(*n->kino));
		if (!n->kino)
			return NULL;
		n->kino->refs = 1;
		n->kino->ino = n->ino;
		n->kino->backing_fd = -1;
	}
	return n->kino;
}

void vp_ns_set_passthrough_pfs(struct vp_ns *ns, int on)
{
	pthread_mutex_lock(&ns->lock);
	ns->pt_pfs_off = !on;
	pthread_mutex_unlock(&ns->lock);
}

/*
 * The file the kernel may read h from: its sealed memory file, or, for a
 * version on the PFS only whose bytes are the PFS file's, unchanged, that
 * file (*pfs 1).  -1: none.  ns->lock held.
 */
static int pt_fd_locked(struct vp_ns *ns, struct vp_handle *h, int *pfs)
{
	int fd = vp_ns_handle_fd(h);

	VP_ASSERT_LOCKED(&ns->lock);
	*pfs = 0;
	if (fd < 0 && !h->writable && !ns->pt_pfs_off) {
		fd = vp_data_backing_fd(h->data);
		*pfs = fd >= 0;
	}
	return fd;
}

enum vp_pt vp_ns_pt_open(struct vp_ns *ns, struct vp_handle *h, int *fd, int *id, int *pfs)
{
	struct vp_node *n = h->node;
	enum vp_pt how = VP_PT_NONE;
	struct vp_kino *k;
	int bfd;

	pthread_mutex_lock(&ns->lock);
	bfd = pt_fd_locked(ns, h, pfs);
	k = kino_of_locked(ns, n);
	if (!k)
		goto out_unlock;	/* no memory: through the daemon, uncounted */
	k->refs++;
	h->kino = k;
	/*
	 * A sealed version, even with a writer still open (a RELEASE not in
	 * yet, or a writer that has not written since the commit): its
	 * handles are direct_io, which the kernel lets a backing file share
	 * the inode with, and its next write goes to a copy.
	 */
	if (ns->pt_on && bfd >= 0 && !k->np_opens) {
		if (k->pt_opens && k->backing_fd == bfd) {
			*id = k->backing_id;
			how = VP_PT_SHARE;
			k->pt_opens++;
			h->pt = 1;
		} else if (!k->pt_opens) {
			*fd = bfd;
			how = VP_PT_REGISTER;	/* vp_ns_pt_set() counts it */
			h->pt = 1;
		}
		/* else another version holds this inode: re-keying prevents it */
	}
	if (how == VP_PT_NONE)
		k->np_opens++;
out_unlock:
	pthread_mutex_unlock(&ns->lock);
	return how;
}

void vp_ns_pt_set(struct vp_ns *ns, struct vp_handle *h, int id, int fd)
{
	struct vp_kino *k = h->kino;

	pthread_mutex_lock(&ns->lock);
	if (id > 0) {
		k->pt_opens++;
		k->backing_id = id;
		k->backing_fd = fd;	/* the one registered (a warm since may have changed the choice) */
	} else {
		h->pt = 0;
		k->np_opens++;
	}
	pthread_mutex_unlock(&ns->lock);
}

int vp_ns_pt_close(struct vp_ns *ns, struct vp_handle *h)
{
	struct vp_kino *k = h->kino;
	int id = 0;

	if (!k)
		return 0;
	pthread_mutex_lock(&ns->lock);
	if (h->pt) {
		if (--k->pt_opens == 0) {
			id = k->backing_id;
			k->backing_id = 0;
			k->backing_fd = -1;
		}
	} else {
		k->np_opens--;
	}
	h->kino = NULL;
	vp_kino_put(k);
	pthread_mutex_unlock(&ns->lock);
	return id;
}
