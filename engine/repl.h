/*
 * repl: replication of committed versions from a producer mount to
 * consumer mounts over libfabric (fabric.h), with the wire protocol of
 * proto.h.
 *
 * PRODUCER (-o listen=ADDR:PORT): the namespace reports every namespace
 * change and every published version, in order (vp_repl_note_*_locked).
 * A dispatcher thread turns them into OP and ANNOUNCE messages for every
 * subscribed consumer.  An ANNOUNCE names the version's chunks by RMA
 * address and key: the pool's slabs are registered with the fabric once,
 * so consumers read the bytes straight out of the producer's cache; the
 * version is pinned (a data reference) until every consumer said DONE or
 * died.  A new consumer first gets a snapshot of the tree (catch-up).
 *
 * CONSUMER (-o subscribe=HOST:PORT): a worker thread authenticates,
 * assembles ANNOUNCEs, reads the chunks into its own pool (zero-copy),
 * checks the xxh3 checksum, and installs the version by ordinary syscalls
 * on its own mount (open+close, rename, mkdir, unlink...), so the kernel
 * raises the inotify events watchers expect.  The namespace recognises
 * the worker's thread id and attaches the received bytes instead of
 * copying them (vp_ns_stage_install).  Everyone else gets EROFS.
 *
 * FAILURES: every wait has a deadline; both sides send a HEARTBEAT each
 * second and a peer silent for peer_timeout is dead.  A dead consumer's
 * pins are dropped; a consumer whose producer died keeps its last complete
 * versions, says so, and keeps trying to reconnect; on reconnect it gets
 * a fresh catch-up and never goes backwards (older versions are skipped).
 *
 * AUTHENTICATION: with secret_file, HELLO/CHALLENGE/AUTH is a mutual
 * challenge-response with HMAC-SHA256 over both nonces; a peer that fails
 * is refused and logged.
 *
 * THREADING: the progress thread of the fabric only queues received
 * messages; all work happens on the repl thread.  The namespace calls the
 * _locked hooks with ns->lock held; the lock order is lock.h's table.
 *
 * The code lives in engine/repl/, one file per object (repl/repl_i.h
 * says which).
 */
#ifndef VP_REPL_H
#define VP_REPL_H

#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "config.h"
#include "proto.h"

struct vp_ns;
struct vp_ns_entry;
struct vp_gpu;
struct vp_data;
struct vp_repl;

/*
 * Starts replication for ns mounted at mountpoint, as producer (listen)
 * or consumer (subscribe), with the GPU tier gpu (borrowed; NULL: none)
 * for GPU-direct transfers.  Returns NULL with a message in err.
 */
struct vp_repl *vp_repl_new(struct vp_ns *ns, struct vp_gpu *gpu, const struct vp_config *cfg,
			    const char *mountpoint, char *err, size_t errlen);
void vp_repl_free(struct vp_repl *r);

/* Producer hooks, called with ns->lock held; they only queue. */
void vp_repl_note_op_locked(struct vp_repl *r, enum vp_op_kind kind,
			    const char *path, const char *path2, uint32_t mode, uint64_t rdev);
/* A version of e->path (e->ino on this node); takes a reference to e->d. */
void vp_repl_note_version_locked(struct vp_repl *r, const struct vp_ns_entry *e);

/*
 * Producer: offers consumers the finished chunks of a version still being
 * written.  Takes over the caller's reference to e->d (a snapshot).  No lock
 * needed; never blocks.
 */
void vp_repl_note_preview(struct vp_repl *r, const struct vp_ns_entry *e);

/*
 * Producer, fsync=peers: how many subscribed consumers hold the version
 * whose bytes are d (the caller keeps a reference: d is its identity), by
 * their DONE; waits up to wait_s for want of them, and no longer than
 * peer_timeout while fewer than want consumers are subscribed.  With
 * wait_s 0 it only counts (ns->lock may be held).
 */
unsigned int vp_repl_held_by(struct vp_repl *r, const struct vp_data *d, unsigned int want,
			     double wait_s);

/*
 * Producer, flush_hold: 1 once every live consumer holds d's version by its
 * DONE (vacuously when none is live), 0 if not within wait_s.
 */
int vp_repl_held_all(struct vp_repl *r, const struct vp_data *d, double wait_s);

/* The status object (role, provider, peers with state and lag: a new reference); NULL r: null. */
json_t *vp_repl_status(struct vp_repl *r);
/* Appends per-peer gauges in the Prometheus text format; NULL r: nothing. */
void vp_repl_metrics(struct vp_repl *r, FILE *out);

/* The namespace's observer that feeds the notes above (repl/ns_observer.c; arg: r). */
extern const struct vp_ns_observer vp_repl_ns_observer;

#endif
