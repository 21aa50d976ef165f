/* ll: the FUSE low-level operations table (ll.c). */
#ifndef VPFS_LL_H
#define VPFS_LL_H

struct fuse_lowlevel_ops;

/* userdata of the session must be the struct vp_ns *. */
extern const struct fuse_lowlevel_ops vpfs_ops;

#endif
