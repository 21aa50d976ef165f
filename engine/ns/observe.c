/*
 * observe: what the namespace tells other subsystems (ns.h's observers:
 * replication, the GPU tier), and the list they register in.  The list
 * is written under ns->lock; the notes run under it, except on_preview
 * (file.c), which runs on a copy.
 */
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "ns_i.h"

int vp_ns_observe(struct vp_ns *ns, const struct vp_ns_observer *ops, void *arg)
{
	int rc = -ENOSPC;

	pthread_mutex_lock(&ns->lock);
	if (ns->nobservers < VP_NS_MAX_OBSERVERS) {
		ns->observers[ns->nobservers].ops = ops;
		ns->observers[ns->nobservers++].arg = arg;
		rc = 0;
	}
	pthread_mutex_unlock(&ns->lock);
	return rc;
}

void vp_ns_unobserve(struct vp_ns *ns, const struct vp_ns_observer *ops,
		     void *arg)
{
	pthread_mutex_lock(&ns->lock);
	for (unsigned int i = 0; i < ns->nobservers; i++) {
		if (ns->observers[i].ops != ops || ns->observers[i].arg != arg)
			continue;
		memmove(&ns->observers[i], &ns->observers[i + 1],
			(ns->nobservers - i - 1) * sizeof(ns->observers[0]));
		ns->nobservers--;
		break;
	}
	pthread_mutex_unlock(&ns->lock);
}

/* Every registered observer, in the order of registration (ns->lock held). */
#define VP_FOREACH_OBSERVER(o, ns) \
	for ((o) = (ns)->observers; (o) < (ns)->observers + (ns)->nobservers; (o)++)

/*
 * Whether an observer has the callback at offset off of struct
 * vp_ns_observer: what is only worth computing for someone.
 */
static int observed_locked(struct vp_ns *ns, size_t off)
{
	const struct vp_observer_slot *o;
	void (*fn)(void);

	VP_ASSERT_LOCKED(&ns->lock);
	VP_FOREACH_OBSERVER(o, ns) {
		memcpy(&fn, (const char *)o->ops + off, sizeof(fn));
		if (fn)
			return 1;
	}
	return 0;
}

void vp_note_commit_locked(struct vp_ns *ns, struct vp_node *n)
{
	const struct vp_observer_slot *o;

	VP_ASSERT_LOCKED(&ns->lock);
	VP_FOREACH_OBSERVER(o, ns)
		if (o->ops->on_commit)
			o->ops->on_commit(o->arg, n->ino, n->version, n->cur);
}

void vp_note_unlink_locked(struct vp_ns *ns, struct vp_node *n)
{
	const struct vp_observer_slot *o;

	VP_ASSERT_LOCKED(&ns->lock);
	VP_FOREACH_OBSERVER(o, ns)
		if (o->ops->on_unlink)
			o->ops->on_unlink(o->arg, n->ino);
}

unsigned int vp_preview_observers_locked(struct vp_ns *ns,
					 struct vp_observer_slot *out)
{
	const struct vp_observer_slot *o;
	unsigned int count = 0;

	VP_ASSERT_LOCKED(&ns->lock);
	VP_FOREACH_OBSERVER(o, ns)
		if (o->ops->on_preview)
			out[count++] = *o;
	return count;
}

/*
 * A path removed (unlinked, renamed away) in this run: a consumer's offer
 * of a file the producer does not have is taken back only if the path was
 * not removed here (recover.c).  Open addressing on xxh3 of the path; a
 * collision only refuses an offer.  Full: every such offer is refused.
 */
static void tomb_add_locked(struct vp_ns *ns, const char *path)
{
	uint64_t h = XXH3_64bits(path, strlen(path)) | 1;

	VP_ASSERT_LOCKED(&ns->lock);
	if (!ns->tombs && !(ns->tombs = calloc(VP_TOMBS, sizeof(*ns->tombs))))
		return;
	for (size_t i = h % VP_TOMBS, k = 0; k < VP_TOMBS && ns->ntombs < VP_TOMBS; i = (i + 1) % VP_TOMBS, k++) {
		if (ns->tombs[i] == h)
			return;
		if (!ns->tombs[i]) {
			ns->tombs[i] = h;
			ns->ntombs++;
			return;
		}
	}
}

int vp_ns_removed_this_run(struct vp_ns *ns, const char *path)
{
	uint64_t h = XXH3_64bits(path, strlen(path)) | 1;
	int found = 0;

	pthread_mutex_lock(&ns->lock);
	if (ns->ntombs >= VP_TOMBS)
		found = 1;
	for (size_t i = h % VP_TOMBS, k = 0; ns->tombs && !found && k < VP_TOMBS && ns->tombs[i];
	     i = (i + 1) % VP_TOMBS, k++)
		found = ns->tombs[i] == h;
	pthread_mutex_unlock(&ns->lock);
	return found;
}

void vp_note_op_locked(struct vp_ns *ns, enum vp_op_kind kind,
		       struct vp_node *n, struct vp_node *newdir,
		       const char *newname)
{
	char path[PATH_MAX], path2[PATH_MAX] = "";
	const struct vp_observer_slot *o;

	VP_ASSERT_LOCKED(&ns->lock);
	if (ns->replica || !observed_locked(ns, offsetof(struct vp_ns_observer, on_op)) ||
	    vp_live_path_locked(ns, n, path, sizeof(path)))
		return;
	if (kind == VP_OP_RENAME) {
		char dpath[PATH_MAX];

		if (vp_live_path_locked(ns, newdir, dpath, sizeof(dpath)) ||
		    snprintf(path2, sizeof(path2), "%s%s%s", dpath, *dpath ? "/" : "",
			     newname) >= (int)sizeof(path2))
			return;
	} else if (kind == VP_OP_SYMLINK) {
		snprintf(path2, sizeof(path2), "%s", n->symlink);
	} else if (kind == VP_OP_LINK) {	/* path: the new name; path2: the inode's own */
		if (vp_live_path_locked(ns, vp_node_inode(n), path2, sizeof(path2)))
			return;
		n = vp_node_inode(n);
	}
	if (kind == VP_OP_UNLINK || kind == VP_OP_RENAME)
		tomb_add_locked(ns, path);
	VP_FOREACH_OBSERVER(o, ns)
		if (o->ops->on_op)
			o->ops->on_op(o->arg, kind, path, path2, n->mode, n->rdev);
}

void vp_note_version_locked(struct vp_ns *ns, struct vp_node *n)
{
	const struct vp_observer_slot *o;
	char path[PATH_MAX];

	VP_ASSERT_LOCKED(&ns->lock);
	if (ns->replica || !n->cur ||
	    !observed_locked(ns, offsetof(struct vp_ns_observer, on_version)) ||
	    vp_live_path_locked(ns, n, path, sizeof(path)))
		return;
	struct vp_ns_entry e = {
		.type = VP_ENTRY_FILE, .path = path, .ino = n->ino, .mode = n->mode,
		.d = n->cur, .version = n->version, .epoch = n->epoch, .mtime_ns = vp_ts_ns(n->mtime),
	};

	VP_FOREACH_OBSERVER(o, ns)
		if (o->ops->on_version)
			o->ops->on_version(o->arg, &e);
}

unsigned int vp_held_count_locked(struct vp_ns *ns, const struct vp_data *d)
{
	const struct vp_observer_slot *o;
	unsigned int n = 0;

	VP_ASSERT_LOCKED(&ns->lock);
	VP_FOREACH_OBSERVER(o, ns)
		if (o->ops->held_by)
			n += o->ops->held_by(o->arg, d, 0, 0);
	return n;
}

int vp_held_all_wait(struct vp_ns *ns, const struct vp_data *d, double wait_s)
{
	struct vp_observer_slot obs[VP_NS_MAX_OBSERVERS];
	const struct vp_observer_slot *o;
	unsigned int nobs = 0;
	int all = 1;

	pthread_mutex_lock(&ns->lock);
	VP_FOREACH_OBSERVER(o, ns)
		if (o->ops->held_all)
			obs[nobs++] = *o;
	pthread_mutex_unlock(&ns->lock);
	for (unsigned int i = 0; i < nobs; i++)
		all &= obs[i].ops->held_all(obs[i].arg, d, wait_s);
	return all;
}

unsigned int vp_held_wait(struct vp_ns *ns, const struct vp_data *d, unsigned int want,
			  double wait_s)
{
	struct vp_observer_slot obs[VP_NS_MAX_OBSERVERS];
	const struct vp_observer_slot *o;
	unsigned int nobs = 0, n = 0;

	pthread_mutex_lock(&ns->lock);
	VP_FOREACH_OBSERVER(o, ns)
		if (o->ops->held_by)
			obs[nobs++] = *o;
	pthread_mutex_unlock(&ns->lock);
	for (unsigned int i = 0; i < nobs; i++)
		n += obs[i].ops->held_by(obs[i].arg, d, want, wait_s);
	return n;
}
