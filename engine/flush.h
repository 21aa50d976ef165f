/*
 * flush: the background writer that replays the namespace's flush log on
 * the PFS (its functions are declared in ns_i.h; this header explains it).
 *
 * DESIGN: every namespace change (mkdir, symlink, rename, unlink, attribute
 * change) and every committed file version is appended to one log, in
 * order.  The dispatcher thread replays the log on the PFS strictly in
 * order, so the PFS always shows a state the mount went through (with
 * coalesced file contents), whatever crashes or fails.
 *
 *  - A DATA entry names a file and a version.  Under flush=latest and
 *    flush=every:N, a newer version of the same file replaces the one in a
 *    queued entry (coalescing); under flush=all each version has its own.
 *  - Workers (flush_inflight of them) write DATA entries ahead of time,
 *    in parallel, into files in PFS_DIR/.viperfs-staging, paced by the
 *    flush_bw token bucket, and fsync them.  The dispatcher publishes a
 *    staged file with one rename() into its final name when its turn
 *    comes, then fsyncs the directory: the PFS never holds a partial file
 *    under a final name.  A restart deletes leftovers in the staging folder.
 *  - A failed PFS operation is retried with exponential back-off up to
 *    flush_retry_max, in place, so nothing behind it overtakes it; the
 *    data stays in the cache and the log says so.  Errors that retrying
 *    cannot mend (the target vanished from the PFS) are logged and skipped.
 *  - flush_interval holds entries back that long after they were queued,
 *    so bursts of versions coalesce.  Forced entries (viperctl flush,
 *    fsync=pfs, unmount) go at once.
 *  - The evictor thread answers cache pressure: it drops the cached bytes
 *    of versions that are on the PFS, least recently opened first.
 *
 * THREADING: the log and all node fields are protected by ns->lock;
 * PFS namespace calls are made holding ns->pfs_lock only.
 */
#ifndef VP_FLUSH_H
#define VP_FLUSH_H
#include "ns_i.h"
#endif
