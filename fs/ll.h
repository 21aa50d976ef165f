/* ll: the FUSE low-level operations table (ll.c). */
#ifndef VPFS_LL_H
#define VPFS_LL_H

struct fuse_lowlevel_ops;

struct fuse_session;
struct vp_ns;

/*
 * The largest read and write request (1 MiB, the kernel's default
 * fs.fuse.max_pages_limit).  The session's -o max_read must be this too:
 * libfuse 3.17 refuses INIT when init() sets conn->max_read to another value.
 */
#define VPFS_MAX_REQUEST (1u << 20)

/* userdata of the session must be the struct vp_ns *. */
extern const struct fuse_lowlevel_ops vpfs_ops;

/*
 * The notifier thread that sends the namespace's invalidations to the
 * kernel: start it once the session exists, stop it before it goes.
 */
int vpfs_ll_start(struct fuse_session *se, struct vp_ns *ns);
void vpfs_ll_stop(struct vp_ns *ns);

#endif
