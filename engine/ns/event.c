/*
 * event: what the namespace tells watchers -- the ring of version events
 * for watch, wait and on_update -- and on a consumer the installer:
 * staged versions, the refusal of every other change, and the events held
 * back until the installer's rename returns.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../log.h"
#include "ns_i.h"

void vp_ns_set_installer(struct vp_ns *ns, pid_t tid)
{
	pthread_mutex_lock(&ns->lock);
	ns->installer_tid = tid;
	pthread_mutex_unlock(&ns->lock);
}

int vp_is_installer_locked(struct vp_ns *ns, const struct vp_caller *who)
{
	VP_ASSERT_LOCKED(&ns->lock);
	return ns->installer_tid && who && who->tid == ns->installer_tid;
}

int vp_replica_refuse_locked(struct vp_ns *ns, const struct vp_caller *who,
			     const char *what, const char *name)
{
	VP_ASSERT_LOCKED(&ns->lock);
	if (!ns->replica || vp_is_installer_locked(ns, who))
		return 0;
	vp_log(LOG_NOTICE, "fs", "%s '%s' refused: this mount is a replica of '%s' and is read-only",
	       what, name, ns->cfg.subscribe);
	return -EROFS;
}

int vp_ns_stage_install(struct vp_ns *ns, const char *path, struct vp_data *d,
			uint64_t version, uint64_t epoch, uint32_t mode)
{
	struct install *in = calloc(1, sizeof(*in));

	if (!in || !(in->path = strdup(path))) {
		free(in);
		return -ENOMEM;
	}
	in->data = vp_data_get(d);
	in->version = version;
	in->epoch = epoch;
	in->mode = mode;
	pthread_mutex_lock(&ns->lock);
	LIST_INSERT_HEAD(&ns->installs, in, link);
	pthread_mutex_unlock(&ns->lock);
	return 0;
}

void vp_ns_unstage_install(struct vp_ns *ns, const char *path)
{
	struct install *in;

	pthread_mutex_lock(&ns->lock);
	LIST_FOREACH(in, &ns->installs, link)
		if (!strcmp(in->path, path))
			break;
	if (in)
		LIST_REMOVE(in, link);
	pthread_mutex_unlock(&ns->lock);
	vp_install_free(in);
}

/* Or NULL.  Only for the installer thread. */
struct install *vp_take_install_locked(struct vp_ns *ns,
				       const struct vp_caller *who,
				       struct vp_node *dir, const char *name)
{
	char path[PATH_MAX], full[PATH_MAX];
	struct install *in;

	VP_ASSERT_LOCKED(&ns->lock);
	if (LIST_EMPTY(&ns->installs) || !vp_is_installer_locked(ns, who) ||
	    vp_live_path_locked(ns, dir, path, sizeof(path)))
		return NULL;
	if (snprintf(full, sizeof(full), "%s%s%s", path, *path ? "/" : "", name) >= (int)sizeof(full))
		return NULL;
	LIST_FOREACH(in, &ns->installs, link)
		if (!strcmp(in->path, full))
			break;
	if (in)
		LIST_REMOVE(in, link);
	return in;
}

void vp_install_free(struct install *in)
{
	if (!in)
		return;
	vp_data_put(in->data);
	free(in->path);
	free(in);
}

void vp_installs_release(struct vp_ns *ns)
{
	struct install *in;

	for (size_t i = 0; i < ns->nstale_names; i++)
		free(ns->stale_names[i].name);
	free(ns->stale_names);
	ns->stale_names = NULL;
	ns->nstale_names = ns->cap_stale_names = 0;

	while ((in = LIST_FIRST(&ns->installs))) {
		LIST_REMOVE(in, link);
		vp_install_free(in);
	}
}

int vp_ns_install_hidden(struct vp_ns *ns, const char *name, struct vp_data *d,
			 uint64_t version, uint64_t epoch, uint32_t mode)
{
	struct vp_node *dir, *n, *old;
	int rc = 0;

	pthread_mutex_lock(&ns->lock);
	dir = vp_node_child_locked(ns, ns->root, VP_INCOMING_DIR);
	if (!dir) {
		dir = vp_node_new_locked(ns, VP_NODE_DIR, S_IFDIR | 0700, 0, 0);
		if (!dir || vp_node_link_locked(ns, ns->root, dir, VP_INCOMING_DIR)) {
			if (dir)
				vp_node_put(ns, dir);
			rc = -ENOMEM;
			goto out_unlock;
		}
		dir->loaded = 1;
	}
	old = vp_node_child_locked(ns, dir, name);
	if (old)
		vp_node_unlink_locked(ns, old);
	n = vp_node_new_locked(ns, VP_NODE_FILE, S_IFREG | (mode & 07777), 0, 0);
	if (!n || vp_node_link_locked(ns, dir, n, name)) {
		if (n)
			vp_node_put(ns, n);
		rc = -ENOMEM;
		goto out_unlock;
	}
	n->cur = vp_data_get(d);
	n->size = vp_data_size(d);
	n->version = version;
	n->epoch = epoch;
	/* the GPU tier mirrors it (taking what was staged while it arrived) */
	vp_note_commit_locked(ns, n);
out_unlock:
	pthread_mutex_unlock(&ns->lock);
	return rc;
}

void vp_events_init(struct vp_events *ev)
{
	pthread_mutex_init(&ev->lock, NULL);
	vp_cond_init_monotonic(&ev->cond);
}

void vp_events_release(struct vp_events *ev)
{
	for (size_t i = 0; i < VP_EVENT_RING; i++)
		free(ev->ring[i].path);
	pthread_cond_destroy(&ev->cond);
	pthread_mutex_destroy(&ev->lock);
}

/* Records that n's path holds its newest version as of when (wall clock). */
static void record_event_at_locked(struct vp_ns *ns, struct vp_node *n,
				   double when)
{
	struct vp_events *ev = &ns->events;
	char path[PATH_MAX], *copy;
	struct vp_node *inode = vp_node_inode(n);
	struct vp_event_rec *e;

	VP_ASSERT_LOCKED(&ns->lock);
	if (inode->type != VP_NODE_FILE || vp_live_path_locked(ns, n, path, sizeof(path)) ||
	    !strncmp(path, VP_INCOMING_DIR "/", sizeof(VP_INCOMING_DIR)))
		return;
	copy = strdup(path);
	pthread_mutex_lock(&ev->lock);
	e = &ev->ring[(ev->seq + 1) % VP_EVENT_RING];
	free(e->path);
	e->path = copy;
	if (copy) {
		e->seq = ++ev->seq;
		e->version = inode->version;
		e->size = inode->size;
		e->time = when;
		pthread_cond_broadcast(&ev->cond);
	}
	pthread_mutex_unlock(&ev->lock);
}

void vp_event_record_locked(struct vp_ns *ns, struct vp_node *n)
{
	double now = vp_wall_seconds();
	struct vp_node *l;

	VP_ASSERT_LOCKED(&ns->lock);
	record_event_at_locked(ns, n, now);
	if (n->type != VP_NODE_LINK)	/* an inode's version is new under each of its names */
		LIST_FOREACH(l, &n->links, link_link)
			if (l->parent)
				record_event_at_locked(ns, l, now);
}

void vp_event_renamed_locked(struct vp_ns *ns, const struct vp_caller *who,
			     struct vp_node *n)
{
	VP_ASSERT_LOCKED(&ns->lock);
	if (ns->replica && vp_is_installer_locked(ns, who) &&
	    ns->ndeferred < VP_MAX_DEFERRED) {
		vp_node_get(n);		/* raised once the kernel sees the new name */
		ns->deferred_at[ns->ndeferred] = vp_wall_seconds();
		ns->deferred[ns->ndeferred++] = n;
	} else {
		record_event_at_locked(ns, n, vp_wall_seconds());	/* this name only */
	}
}

/* Tells the kernel of the names installs gave new inodes, now.  No lock held. */
static void send_stale_names(struct vp_ns *ns)
{
	struct vp_stale_name *names;
	size_t count;

	pthread_mutex_lock(&ns->lock);
	names = ns->stale_names;
	count = ns->nstale_names;
	ns->stale_names = NULL;
	ns->nstale_names = ns->cap_stale_names = 0;
	pthread_mutex_unlock(&ns->lock);
	for (size_t i = 0; i < count; i++) {
		const struct vp_ns_kernel *k = vp_kernel_of(ns);

		if (k && k->inval_entry_now)
			k->inval_entry_now(ns->kernel_arg, names[i].parent, names[i].name);
		else
			vp_kernel_inval_entry(ns, names[i].parent, names[i].name);
		free(names[i].name);
	}
	free(names);
}

void vp_ns_installed(struct vp_ns *ns)
{
	send_stale_names(ns);	/* first: a watcher told of a name opens the new inode */
	pthread_mutex_lock(&ns->lock);
	for (unsigned int i = 0; i < ns->ndeferred; i++) {
		struct vp_node *l;

		/* stamped with the rename's time: the version was in place then */
		record_event_at_locked(ns, ns->deferred[i], ns->deferred_at[i]);
		if (ns->deferred[i]->type != VP_NODE_LINK)	/* and under its other names */
			LIST_FOREACH(l, &ns->deferred[i]->links, link_link)
				if (l->parent)
					record_event_at_locked(ns, l, ns->deferred_at[i]);
		vp_node_put(ns, ns->deferred[i]);
	}
	ns->ndeferred = 0;
	pthread_mutex_unlock(&ns->lock);
}

uint64_t vp_ns_event_seq(struct vp_ns *ns)
{
	uint64_t seq;

	pthread_mutex_lock(&ns->events.lock);
	seq = ns->events.seq;
	pthread_mutex_unlock(&ns->events.lock);
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
	struct vp_events *evs = &ns->events;
	double deadline = vp_now() + wait_s;
	int rc = 0;

	pthread_mutex_lock(&evs->lock);
	for (;;) {
		struct timespec ts;

		if (evs->seq > *seq + VP_EVENT_RING) {
			*seq = evs->seq - VP_EVENT_RING;
			rc = -EOVERFLOW;
			break;
		}
		while (*seq < evs->seq) {
			struct vp_event_rec *e = &evs->ring[(*seq + 1) % VP_EVENT_RING];

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
		pthread_cond_timedwait(&evs->cond, &evs->lock, &ts);
	}
out_unlock:
	pthread_mutex_unlock(&evs->lock);
	return rc;
}


/* links: only the link nodes (a second walk, after every node they name) */
static void snapshot_locked(struct vp_ns *ns, struct vp_node *dir,
			    vp_ns_snapshot_cb cb, void *arg, int links)
{
	char path[PATH_MAX], target[PATH_MAX];

	VP_ASSERT_LOCKED(&ns->lock);
	for (struct vp_node *c = LIST_FIRST(&dir->children); c;
	     c = LIST_NEXT(c, sib_link)) {
		if (vp_live_path_locked(ns, c, path, sizeof(path)))
			continue;
		if (links || c->type == VP_NODE_LINK) {
			struct vp_ns_entry e = {
				.type = VP_ENTRY_LINK, .path = path, .target = target,
				.ino = c->inode ? c->inode->ino : c->ino, .mode = c->mode,
			};

			if (c->type == VP_NODE_DIR)
				snapshot_locked(ns, c, cb, arg, links);
			else if (links && c->type == VP_NODE_LINK &&
				 !vp_live_path_locked(ns, c->inode, target, sizeof(target)))
				cb(arg, &e);
			continue;
		}
		struct vp_ns_entry e = {
			.path = path, .ino = c->ino, .mode = c->mode,
			.mtime_ns = vp_ts_ns(c->mtime),
		};

		if (c->type == VP_NODE_DIR) {
			e.type = VP_ENTRY_DIR;
			cb(arg, &e);
			snapshot_locked(ns, c, cb, arg, 0);
		} else if (c->type == VP_NODE_SYMLINK) {
			e.type = VP_ENTRY_SYMLINK;
			e.target = c->symlink;
			cb(arg, &e);
		} else if (c->type == VP_NODE_SPECIAL) {
			e.type = VP_ENTRY_SPECIAL;
			e.rdev = c->rdev;
			cb(arg, &e);
		} else if (c->version > 0 || c->cur) {
			e.type = VP_ENTRY_FILE;
			e.d = c->cur;
			e.version = c->version;
			e.epoch = c->epoch;
			cb(arg, &e);
		}
	}
}

void vp_ns_snapshot(struct vp_ns *ns, vp_ns_snapshot_cb cb, void *arg)
{
	pthread_mutex_lock(&ns->lock);
	snapshot_locked(ns, ns->root, cb, arg, 0);
	snapshot_locked(ns, ns->root, cb, arg, 1);
	pthread_mutex_unlock(&ns->lock);
}
