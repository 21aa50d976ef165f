/*
 * ns_observer: replication's observer of the namespace (ns.h).  The
 * producer ships what the namespace reports -- its changes, its published
 * versions, previews of versions still being written -- through repl.h's
 * public notes.  fs/main.c registers it with vp_ns_observe(ns, &vp_repl_ns_observer, repl).
 */
#include <stdint.h>
#include <stdio.h>

#include "../data.h"
#include "../ns.h"
#include "../repl.h"

static void repl_on_op(void *arg, enum vp_op_kind kind, const char *path,
		       const char *path2, uint32_t mode, uint64_t rdev)
{
	vp_repl_note_op_locked(arg, kind, path, path2, mode, rdev);
}

static void repl_on_version(void *arg, const struct vp_ns_entry *e)
{
	vp_repl_note_version_locked(arg, e);
}

static void repl_on_preview(void *arg, const struct vp_ns_entry *e)
{
	struct vp_ns_entry own = *e;

	/* the note takes over a reference: its own */
	own.d = vp_data_get(e->d);
	vp_repl_note_preview(arg, &own);
}

static unsigned int repl_held_by(void *arg, const struct vp_data *d, unsigned int want,
				 double wait_s)
{
	return vp_repl_held_by(arg, d, want, wait_s);
}

static int repl_held_all(void *arg, const struct vp_data *d, double wait_s)
{
	return vp_repl_held_all(arg, d, wait_s);
}

const struct vp_ns_observer vp_repl_ns_observer = {
	.on_op = repl_on_op,
	.on_version = repl_on_version,
	.on_preview = repl_on_preview,
	.held_by = repl_held_by,
	.held_all = repl_held_all,
};
