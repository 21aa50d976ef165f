/*
 * dir: directories and the changes of names and attributes -- mkdir,
 * symlink, unlink, rmdir, rename, setattr, readdir, fsyncdir.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../log.h"
#include "../proto.h"
#include "ns_i.h"

/*
 * What a size change cuts: the handle's or the writers' working copy (a
 * new reference in *target), or, for a closed file, a new version of its
 * own (*commit_new).  Returns 0 or -errno.
 */
static int size_target_locked(struct vp_ns *ns, struct vp_node *n,
			      struct vp_handle *h, struct vp_data **target,
			      int *commit_new)
{
	VP_ASSERT_LOCKED(&ns->lock);
	if (n->type == VP_NODE_DIR)
		return -EISDIR;
	if (n->type != VP_NODE_FILE)
		return -EINVAL;
	if (h && h->writable)
		*target = vp_data_get(h->data);
	else if (n->work)
		*target = vp_data_get(n->work);
	else
		*commit_new = 1;
	return 0;
}

/* Cuts *target (for commit_new: a copy of the latest version, made here). */
static int truncate_target(struct vp_ns *ns, struct vp_node *n, uint64_t size,
			   int commit_new, struct vp_data **target)
{
	struct vp_data *base = NULL;
	int rc;

	if (commit_new) {
		/* truncate(2) of a closed file: a commit point of its own */
		rc = vp_node_data(ns, n, &base);
		if (rc)
			return rc;
		*target = vp_data_clone(base);
		vp_data_put(base);
		if (!*target)
			return -ENOMEM;
	}
	return *target ? vp_data_truncate(*target, size, ns->cfg.cache_wait) : 0;
}

/*
 * Makes the cut bytes the file's: a commit for a closed file (*decide set
 * when vp_publish_decide() is owed, *target then used up), else a dirty
 * working copy.  May drop ns->lock to cut a writer's copy that came
 * meanwhile.  Returns 0 or -errno.
 */
static int apply_size_locked(struct vp_ns *ns, struct vp_node *n, uint64_t size,
			     int commit_new, struct vp_data **target,
			     int *decide)
{
	int rc = 0;

	VP_ASSERT_LOCKED(&ns->lock);
	if (commit_new && !n->work) {
		*decide = vp_commit_locked(ns, n, *target);
		*target = NULL;
	} else if (commit_new) {
		/* a writer opened meanwhile: cut its copy too */
		pthread_mutex_unlock(&ns->lock);
		rc = vp_data_truncate(n->work, size, ns->cfg.cache_wait);
		if (rc)
			vp_work_failed(n, rc);
		pthread_mutex_lock(&ns->lock);
		vp_mark_dirty(n);
	} else {
		vp_mark_dirty(n);
	}
	n->mtime = n->ctime = vp_wall_now();
	return rc;
}

/* Mode, owner and times; logged for the PFS. */
static void apply_attrs_locked(struct vp_ns *ns, struct vp_node *n,
			       const struct vp_setattr *sa)
{
	VP_ASSERT_LOCKED(&ns->lock);
	if (sa->set_mode)
		n->mode = (n->mode & S_IFMT) | (sa->mode & 07777);
	if (sa->set_uid)
		n->uid = sa->uid;
	if (sa->set_gid)
		n->gid = sa->gid;
	if (sa->set_atime)
		n->atime = sa->atime_now ? vp_wall_now() : sa->atime;
	if (sa->set_mtime) {
		n->mtime = sa->mtime_now ? vp_wall_now() : sa->mtime;
		/* through a writer (cp -p's futimens before close): the commit keeps it */
		if (n->work)
			__atomic_store_n(&n->work_mtime_ns, vp_ts_ns(n->mtime) ? vp_ts_ns(n->mtime) : 1,
					 __ATOMIC_RELAXED);
	}
	if (sa->set_mode || sa->set_uid || sa->set_gid || sa->set_atime ||
	    sa->set_mtime) {
		n->ctime = vp_wall_now();
		if (n->parent || n == ns->root)
			vp_flush_log_locked(ns, OP_ATTR, n, NULL, NULL, NULL);
	}
	/* a special node's mode reaches consumers as the node made again, and its other names linked again */
	if (sa->set_mode && n->type == VP_NODE_SPECIAL && n->parent) {
		struct vp_node *l;

		vp_note_op_locked(ns, VP_OP_MKNOD, n, NULL, NULL);
		LIST_FOREACH(l, &n->links, link_link)
			if (l->parent)
				vp_note_op_locked(ns, VP_OP_LINK, l, NULL, NULL);
	}
}

/* The mode a write by an unprivileged caller leaves: no setuid, no setgid where group may execute. */
static uint32_t killed_mode(uint32_t mode)
{
	mode &= ~(uint32_t)S_ISUID;
	if ((mode & (S_ISGID | S_IXGRP)) == (S_ISGID | S_IXGRP))
		mode &= ~(uint32_t)S_ISGID;
	return mode;
}

void vp_ns_write_kills_privs(struct vp_ns *ns, const struct vp_caller *who,
			     struct vp_handle *h)
{
	struct vp_node *n = h->node;
	struct vp_setattr sa = { .set_mode = 1 };

	if (!who || vp_caller_uid(who) == 0 || !h->writable)
		return;		/* root has CAP_FSETID (the daemon cannot see finer capabilities) */
	pthread_mutex_lock(&ns->lock);
	sa.mode = killed_mode(n->mode);
	if (sa.mode != n->mode) {
		const struct vp_ns_kernel *k = vp_kernel_of(ns);

		apply_attrs_locked(ns, n, &sa);
		if (k && k->inval_attr)
			k->inval_attr(ns->kernel_arg, n->ino);
	}
	pthread_mutex_unlock(&ns->lock);
}

int vp_ns_setattr(struct vp_ns *ns, const struct vp_caller *who, uint64_t ino,
		  const struct vp_setattr *sa, struct vp_handle *h,
		  struct stat *st)
{
	struct vp_node *n;
	struct vp_data *target = NULL;
	int rc = 0, commit_new = 0, decide = 0;
	uint64_t decide_version = 0;

	pthread_mutex_lock(&ns->lock);
	n = vp_node_find_locked(ns, ino);
	if (!n) {
		pthread_mutex_unlock(&ns->lock);
		return -ESTALE;
	}
	vp_node_get(n);
	rc = vp_replica_refuse_locked(ns, who, "changing", n->name ? n->name : "/");
	if (!rc && sa->set_size)
		rc = size_target_locked(ns, n, h, &target, &commit_new);
	if (rc)
		goto out_unlock;
	pthread_mutex_unlock(&ns->lock);

	if (sa->set_size)
		rc = truncate_target(ns, n, sa->size, commit_new, &target);
	if (rc && !commit_new)
		vp_work_failed(n, rc);	/* a writer's copy half cut: never a version */

	pthread_mutex_lock(&ns->lock);
	if (rc)
		goto out_unlock;
	if (target) {
		rc = apply_size_locked(ns, n, sa->size, commit_new, &target,
				       &decide);
		decide_version = n->version;
	}
	apply_attrs_locked(ns, n, sa);
	vp_node_stat_locked(ns, n, st);
out_unlock:
	pthread_mutex_unlock(&ns->lock);
	if (decide)
		vp_publish_decide(ns, n, decide_version);
	vp_node_put_unlocked(ns, n);
	if (target)
		vp_data_put(target);
	return rc;
}

int vp_ns_prepare_new(struct vp_ns *ns, const struct vp_caller *who,
		      uint64_t parent, const char *name, struct vp_node **dirp)
{
	int rc = vp_ns_get_dir(ns, parent, dirp);

	if (rc)
		return rc;
	pthread_mutex_lock(&ns->lock);
	if (!(*dirp)->parent && *dirp != ns->root)
		rc = -ENOENT;	/* the directory was removed */
	else
		rc = vp_check_name_locked(ns, *dirp, name);
	if (!rc && who)		/* the daemon writes the schedule file there itself */
		rc = vp_reserved_name_locked(ns, *dirp, name);
	if (!rc)
		rc = vp_replica_refuse_locked(ns, who, "creating", name);
	if (!rc && vp_node_child_locked(ns, *dirp, name))
		rc = -EEXIST;
	if (rc) {
		vp_node_put(ns, *dirp);
		pthread_mutex_unlock(&ns->lock);
	}
	return rc;	/* on success, ns->lock is held */
}

/*
 * The end of mkdir, mknod and symlink: links new node n (its ref goes to the
 * link) as dir/name, logs and tells it, and gives the kernel's lookup its
 * reference; drops dir's and ns->lock.  n NULL: out of memory.
 */
static int finish_new(struct vp_ns *ns, struct vp_node *dir, struct vp_node *n,
		      const char *name, enum flush_op_type op, enum vp_op_kind kind,
		      struct stat *st)
{
	int rc = n ? vp_node_link_locked(ns, dir, n, name) : -ENOMEM;

	if (!rc) {
		vp_flush_log_locked(ns, op, n, dir, name, NULL);
		vp_note_op_locked(ns, kind, n, NULL, NULL);
		vp_node_get(n);		/* the kernel's lookup */
		n->nlookup++;
		vp_node_stat_locked(ns, n, st);
	} else if (n) {
		vp_node_put(ns, n);
	}
	vp_node_put(ns, dir);
	pthread_mutex_unlock(&ns->lock);
	return rc;
}

int vp_ns_mkdir(struct vp_ns *ns, const struct vp_caller *who, uint64_t parent,
		const char *name, mode_t mode, struct stat *st)
{
	struct vp_node *dir, *n;
	int rc = vp_ns_prepare_new(ns, who, parent, name, &dir);

	if (rc)
		return rc;
	n = vp_node_new_locked(ns, VP_NODE_DIR, S_IFDIR | (mode & 07777),
			       vp_caller_uid(who), vp_caller_gid(who));
	if (n)
		n->loaded = 1;
	return finish_new(ns, dir, n, name, OP_MKDIR, VP_OP_MKDIR, st);
}

int vp_ns_mknod(struct vp_ns *ns, const struct vp_caller *who, uint64_t parent,
		const char *name, uint32_t mode, uint64_t rdev, struct stat *st)
{
	struct vp_node *dir, *n;
	int rc;

	if (!S_ISFIFO(mode) && !S_ISSOCK(mode) && !S_ISCHR(mode) && !S_ISBLK(mode))
		return -EINVAL;
	rc = vp_ns_prepare_new(ns, who, parent, name, &dir);
	if (rc)
		return rc;
	n = vp_node_new_locked(ns, VP_NODE_SPECIAL, mode & (S_IFMT | 07777),
			       vp_caller_uid(who), vp_caller_gid(who));
	if (n)
		n->rdev = S_ISCHR(mode) || S_ISBLK(mode) ? (dev_t)rdev : 0;
	return finish_new(ns, dir, n, name, OP_MKNOD, VP_OP_MKNOD, st);
}

int vp_ns_symlink(struct vp_ns *ns, const struct vp_caller *who,
		  uint64_t parent, const char *name, const char *target,
		  struct stat *st)
{
	struct vp_node *dir, *n;
	int rc;

	if (strlen(target) >= PATH_MAX)
		return -ENAMETOOLONG;
	rc = vp_ns_prepare_new(ns, who, parent, name, &dir);
	if (rc)
		return rc;
	n = vp_node_new_locked(ns, VP_NODE_SYMLINK, S_IFLNK | 0777,
			       vp_caller_uid(who), vp_caller_gid(who));
	if (n && !(n->symlink = strdup(target))) {
		vp_node_put(ns, n);
		n = NULL;
	}
	return finish_new(ns, dir, n, name, OP_SYMLINK, VP_OP_SYMLINK, st);
}

static int remove_entry(struct vp_ns *ns, const struct vp_caller *who,
			uint64_t parent, const char *name, int want_dir)
{
	struct vp_node *dir, *n;
	int rc = vp_ns_get_dir(ns, parent, &dir);

	if (rc)
		return rc;
	pthread_mutex_lock(&ns->lock);
	/* a read-only replica refuses first, as the VFS does for a read-only mount */
	rc = vp_replica_refuse_locked(ns, who, want_dir ? "rmdir" : "unlink", name);
	n = rc ? NULL : vp_node_child_locked(ns, dir, name);
	if (n)
		vp_node_get(n);
	pthread_mutex_unlock(&ns->lock);
	if (!n) {
		rc = rc ? rc : -ENOENT;
		goto out_put_dir;
	}
	if (want_dir && n->type == VP_NODE_DIR)
		rc = vp_ns_load_dir(ns, n);	/* to know if it is empty */

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
	} else {
		vp_node_remove_name_locked(ns, n, want_dir ? VP_OP_RMDIR : VP_OP_UNLINK);
	}
out_unlock:
	vp_node_put(ns, n);
	pthread_mutex_unlock(&ns->lock);
out_put_dir:
	vp_node_put_unlocked(ns, dir);
	return rc;
}

int vp_ns_unlink(struct vp_ns *ns, const struct vp_caller *who,
		 uint64_t parent, const char *name)
{
	return remove_entry(ns, who, parent, name, 0);
}

int vp_ns_rmdir(struct vp_ns *ns, const struct vp_caller *who,
		uint64_t parent, const char *name)
{
	return remove_entry(ns, who, parent, name, 1);
}

/* Whether victim (or NULL) may be replaced by n, by type: 0 or -errno. */
static int check_victim(struct vp_node *n, struct vp_node *victim)
{
	if (!victim)
		return 0;
	if (victim->type == VP_NODE_DIR && n->type != VP_NODE_DIR)
		return -EISDIR;
	if (victim->type != VP_NODE_DIR && n->type == VP_NODE_DIR)
		return -ENOTDIR;
	if (victim->type == VP_NODE_DIR && victim->nchildren)
		return -ENOTEMPTY;
	return 0;
}

/*
 * Finds dir/name (in *np) and checks that it may become newdir/newname,
 * replacing victim.  Returns 0, 1 for a rename onto itself (nothing to
 * do), or -errno.
 */
static int rename_check_locked(struct vp_ns *ns, struct vp_node *dir,
			       const char *name, struct vp_node *newdir,
			       const char *newname, struct vp_node *victim,
			       unsigned int flags, struct vp_node **np)
{
	struct vp_node *n;
	int rc;

	VP_ASSERT_LOCKED(&ns->lock);
	n = vp_node_child_locked(ns, dir, name);
	if (!n)
		return -ENOENT;
	if (victim != vp_node_child_locked(ns, newdir, newname))
		return -EBUSY;	/* raced with another change: let the caller retry */
	rc = vp_check_name_locked(ns, newdir, newname);
	if (!rc)
		rc = vp_reserved_name_locked(ns, newdir, newname);
	if (rc)
		return rc;
	if (victim && vp_node_inode(victim) == vp_node_inode(n))
		return 1;	/* two names of one inode: rename does nothing (POSIX) */
	if (victim && (flags & 1))
		return -EEXIST;
	if (n->type == VP_NODE_DIR)
		for (struct vp_node *up = newdir; up; up = up->parent)
			if (up == n)
				return -EINVAL;
	rc = check_victim(n, victim);
	*np = n;
	return rc;
}

/* Moves n to newdir/newname (the name's copy: the link takes it) for who. */
static void rename_apply_locked(struct vp_ns *ns, const struct vp_caller *who,
				struct vp_node *n, struct vp_node *newdir,
				char *newname, struct vp_node *victim)
{
	/* any name of a file: its count goes on */
	int victim_file = victim && vp_node_inode(victim)->type == VP_NODE_FILE;
	uint64_t victim_version = victim_file ? vp_node_inode(victim)->version : 0;

	VP_ASSERT_LOCKED(&ns->lock);
	if (victim && ns->replica && vp_is_installer_locked(ns, who) && n->type == VP_NODE_FILE &&
	    vp_node_inode(victim)->type == VP_NODE_FILE && vp_node_inode(victim) != n &&
	    vp_node_nlink_locked(ns, vp_node_inode(victim)) > 1)
		vp_node_take_names_locked(ns, n, victim);	/* a new version under every name */
	if (victim && victim->type != VP_NODE_LINK && vp_node_other_name_locked(victim)) {
		/*
		 * An inode with other names: only this name goes (the inode
		 * takes another's place), logged as an unlink before the rename.
		 */
		vp_node_remove_name_locked(ns, victim, VP_OP_UNLINK);
		victim = NULL;
	}
	vp_flush_log_locked(ns, OP_RENAME, n, newdir, newname, victim);
	vp_note_op_locked(ns, VP_OP_RENAME, n, newdir, newname);
	if (victim) {
		if (victim->type != VP_NODE_LINK)
			vp_flush_cancel_locked(ns, victim);
		vp_node_unlink_locked(ns, victim);
		vp_node_inode(victim)->ctime = vp_wall_now();
	}
	/* versions are per path: a file renamed over another continues its count */
	if (victim_file && n->type == VP_NODE_FILE &&
	    n->version <= victim_version && !vp_is_installer_locked(ns, who))
		n->version = victim_version + 1;
	vp_node_detach_locked(ns, n);
	vp_node_inode(n)->ctime = n->ctime;	/* a link node's rename changes its inode */
	vp_node_link_name_locked(ns, newdir, n, newname);
	vp_event_renamed_locked(ns, who, n);
}

/*
 * The victim at newdir/newname with a reference (NULL: none), its entries
 * loaded if it is a directory (to know if it is empty).
 */
static int get_victim(struct vp_ns *ns, struct vp_node *newdir,
		      const char *newname, struct vp_node **victimp)
{
	struct vp_node *victim;

	pthread_mutex_lock(&ns->lock);
	victim = vp_node_child_locked(ns, newdir, newname);
	if (victim)
		vp_node_get(victim);
	pthread_mutex_unlock(&ns->lock);
	*victimp = victim;
	if (victim && victim->type == VP_NODE_DIR)
		return vp_ns_load_dir(ns, victim);
	return 0;
}

int vp_ns_rename(struct vp_ns *ns, const struct vp_caller *who,
		 uint64_t parent, const char *name, uint64_t newparent,
		 const char *newname, unsigned int flags)
{
	struct vp_node *dir, *newdir = NULL, *n = NULL, *victim = NULL;
	char *copy = NULL;
	int rc;

	if (flags & ~1u)	/* RENAME_NOREPLACE is 1; EXCHANGE, WHITEOUT: no */
		return -EINVAL;
	rc = vp_ns_get_dir(ns, parent, &dir);
	if (rc)
		return rc;
	rc = vp_ns_get_dir(ns, newparent, &newdir);
	if (rc)
		goto out_put_dir;
	rc = get_victim(ns, newdir, newname, &victim);
	if (rc)
		goto out_put;
	copy = strdup(newname);	/* first: nothing may fail once the log has it */
	if (!copy) {
		rc = -ENOMEM;
		goto out_put;
	}

	pthread_mutex_lock(&ns->lock);
	/* a read-only replica refuses first, as the VFS does for a read-only mount */
	rc = vp_replica_refuse_locked(ns, who, "rename", name);
	if (rc == 0)
		rc = rename_check_locked(ns, dir, name, newdir, newname, victim, flags,
					 &n);
	if (rc == 0) {
		rename_apply_locked(ns, who, n, newdir, copy, victim);
		copy = NULL;	/* the link owns it */
	}
	pthread_mutex_unlock(&ns->lock);
	if (rc > 0)
		rc = 0;
out_put:
	free(copy);
	pthread_mutex_lock(&ns->lock);
	if (victim)
		vp_node_put(ns, victim);
	vp_node_put(ns, newdir);
	pthread_mutex_unlock(&ns->lock);
out_put_dir:
	vp_node_put_unlocked(ns, dir);
	return rc;
}

int vp_ns_link(struct vp_ns *ns, const struct vp_caller *who, uint64_t ino,
	       uint64_t newparent, const char *newname, struct stat *st)
{
	struct vp_node *dir, *n, *l = NULL;
	int rc = vp_ns_prepare_new(ns, who, newparent, newname, &dir);

	if (rc)
		return rc;	/* ns->lock is held from here on */
	n = vp_node_find_locked(ns, ino);
	if (!n) {
		struct vp_alias *a = vp_alias_find_locked(ns, ino);

		n = a ? a->node : NULL;	/* a re-keyed inode: the node it is now */
	}
	if (!n)
		rc = -ESTALE;
	else if (n->type == VP_NODE_DIR)
		rc = -EPERM;	/* no hard links to directories (POSIX allows it, Linux does not) */
	else if (!n->parent)
		rc = -ENOENT;	/* no name left: the kernel's rule for an unlinked file */
	else if (vp_node_nlink_locked(ns, n) >= VP_LINK_MAX)
		rc = -EMLINK;
	else if (!(l = vp_link_new_locked(ns, n)))
		rc = -ENOMEM;
	else
		rc = vp_node_link_locked(ns, dir, l, newname);
	if (rc) {
		if (l)
			vp_node_put(ns, l);
		goto out_unlock;
	}
	n->ctime = vp_wall_now();
	vp_flush_log_locked(ns, OP_LINK, l, dir, newname, NULL);
	vp_note_op_locked(ns, VP_OP_LINK, l, NULL, NULL);
	vp_event_record_locked(ns, l);	/* the new name holds the inode's version */
	vp_node_get(n);		/* the kernel's lookup */
	n->nlookup++;
	vp_node_stat_locked(ns, n, st);
out_unlock:
	vp_node_put(ns, dir);
	pthread_mutex_unlock(&ns->lock);
	return rc;
}

int vp_ns_fsyncdir(struct vp_ns *ns, uint64_t ino)
{
	struct vp_flush_progress p;
	int rc;

	(void)ino;
	/* fsync=peers: names reach consumers as operations, which nobody acknowledges */
	if (ns->cfg.fsync_mode == VP_FSYNC_CACHE || ns->cfg.fsync_mode == VP_FSYNC_PEERS)
		return 0;
	/* every entry logged so far, so the directory's own changes are in */
	rc = vp_ns_flush_start(ns, "", &p);
	while (rc == 0)
		rc = vp_ns_flush_poll(ns, &p, 1.0);
	return rc < 0 ? rc : 0;
}

int vp_ns_opendir(struct vp_ns *ns, uint64_t ino, struct vp_dir **dp)
{
	struct vp_node *dir;
	struct vp_dir *d;
	size_t i = 0;
	int rc = vp_ns_get_dir(ns, ino, &dir);

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
	for (struct vp_node *c = LIST_FIRST(&dir->children); c;
	     c = LIST_NEXT(c, sib_link)) {
		if (dir == ns->root && ns->replica && !strcmp(c->name, VP_INCOMING_DIR))
			continue;	/* hidden: watchers must never add a watch there */
		d->ents[i].ino = vp_node_inode(c)->ino;	/* a link node's inode may be re-keyed */
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
