/*
 * lock.h: the engine's one lock-order table, and the assert that a lock is held.
 *
 * LOCK ORDER.  A thread may take a lock only while it holds none of the
 * locks below it in this table; the "leaf" locks are taken last and
 * nothing (no I/O, no call into another subsystem, no callback) runs
 * under them.  docs/design.md ("Locks") links here; no other file
 * restates the order.
 *
 *   rank  lock                  owner        may be followed by
 *   ----  --------------------  -----------  -------------------------------------
 *    0    d->repl_lock          fs/main.c    repl->lock (the metrics text reads
 *                                            the repl it guards against its free)
 *    0b   ll.pt_lock            fs/ll.c      ns->lock (the passthrough bookkeeping
 *                                            of ns/pt.c), and the backing-file
 *                                            ioctls under it; ll.lock (the
 *                                            notifier's queue) is a leaf, taken
 *                                            under ns->lock (the re-keying hook)
 *    1    ns->pfs_lock          ns (pfs)     2..
 *    2    ns->lock              ns           3.. ; never held across PFS I/O
 *                                            except pfs_lock's metadata calls
 *    3    repl->lock            repl         g->lock (a pin's lease released),
 *                                            pool->lock (a pin's last data put:
 *                                            no data->lock),
 *                                            fab->lock (its MRs closed); the
 *                                            observer hook takes it under
 *                                            ns->lock and only queues
 *    3a   repl->tx_lock         repl         fab->lock (a send posted); a
 *                                            message is sealed and posted under
 *                                            it, taken under repl->lock or alone
 *    3b   g->lock               gpu          pool->lock; taken under ns->lock
 *                                            (mirror, forget) and repl->lock
 *    4    ns->handles_lock,     ns           leaf
 *         ns->events.lock       ns (event)   leaf (the event ring; watchers
 *                                            wait on it, not on ns->lock)
 *    5    data->lock            data         pool->lock, and the slab callbacks
 *                                            (6, 7) of a chunk it allocates;
 *                                            never taken with ns->lock held
 *    5b   mf->lock              mfile        pool->lock (charges, which may wait
 *                                            for space); taken under data->lock,
 *                                            and under ns->lock to seal a
 *                                            version nobody writes any more
 *    6    g->tier_lock          gpu          t->reg_lock (the tier, CUDA);
 *                                            never under g->lock
 *    7    repl->slab_lock       repl         fabric registration
 *    8    t->reg_lock           tier_cuda    leaf (cudaHostRegister runs
 *                                            with no lock)
 *    9    pool->lock            pool         leaf: slab callbacks run after
 *                                            its unlock, one at a time
 *   10    fab->lock             fabric       leaf
 *   11    s->lock (sched),      sched,       leaf
 *         tb->lock (tbucket),   tbucket,
 *         ctl->lock,            ctl,
 *         f->evict_lock,        flush        (the pool's pressure callback,
 *                                            under data->lock)
 *         sp->lock              mfile        (the spare: taken under mf->lock
 *                                            to drop it, under data->lock
 *                                            and ns->lock to take it; the
 *                                            spare is put after its unlock)
 *   12    log_lock              log          leaf; the one lock held across
 *                                            I/O (the write to the log sink)
 *
 * A function whose name ends in _locked is called with its object's lock
 * held, and says so first thing with VP_ASSERT_LOCKED, as libfabric's
 * xnet functions assert xnet_progress_locked().
 */
#ifndef VP_LOCK_H
#define VP_LOCK_H

#include <assert.h>
#include <pthread.h>
#include <stdbool.h>
#include <sys/types.h>

/* The calling thread's id, cached per thread (gettid() is a system call). */
pid_t vp_tid(void);

/*
 * True if the calling thread holds mu.  glibc records the owner's thread
 * id in every mutex it locks (normal ones included) and clears it on
 * unlock, and a condition wait restores it; elsewhere this is always true.
 * vp_tid() forgets its cached id in a forked child.
 */
static inline bool vp_lock_held(const pthread_mutex_t *mu)
{
#if defined(__GLIBC__)
	return mu->__data.__owner == vp_tid();
#else
	(void)mu;
	return true;
#endif
}

#define VP_ASSERT_LOCKED(mu) assert(vp_lock_held(mu))
#define VP_ASSERT_UNLOCKED(mu) assert(!vp_lock_held(mu))

#endif
