/*
 * flushlog: the flush log as the namespace writes it -- every namespace
 * change and every committed version appended in order, a newer version
 * coalesced into a queued entry, an unlinked file's bytes dropped.  The
 * flusher (flush.c) replays it on the PFS; the log and struct vp_flush
 * are protected by ns->lock.
 */
#include <stdlib.h>
#include <string.h>

#include "../log.h"
#include "ns_i.h"

struct flush_op *vp_flush_log_locked(struct vp_ns *ns, enum flush_op_type type,
				     struct vp_node *node,
				     struct vp_node *parent, const char *name,
				     struct vp_node *victim)
{
	struct flush_op *op;

	VP_ASSERT_LOCKED(&ns->lock);
	if (ns->replica)
		return NULL;	/* consumers never write the PFS */
	op = calloc(1, sizeof(*op));
	if (!op || (name && !(op->name = strdup(name)))) {
		/* without memory the PFS would miss this change: say so */
		vp_log(LOG_CRIT, "flush", "out of memory: a namespace change will not reach the PFS");
		free(op);
		return NULL;
	}
	op->seq = ns->flush.next_seq++;
	op->type = type;
	op->state = OPS_QUEUED;
	vp_node_get(node);
	op->node = node;
	if (parent) {
		vp_node_get(parent);
		op->parent = parent;
	}
	if (victim) {
		vp_node_get(victim);
		op->victim = victim;
	}
	op->version = VP_NO_VERSION;
	op->queued_at = vp_now();
	TAILQ_INSERT_TAIL(&ns->flush.log, op, link);
	pthread_cond_broadcast(&ns->flush.cond);
	return op;
}

void vp_flush_commit_locked(struct vp_ns *ns, struct vp_node *n, int force)
{
	struct flush_op *op = n->pending;

	VP_ASSERT_LOCKED(&ns->lock);
	if (ns->replica)
		return;
	if (!force && ns->cfg.flush_policy == VP_FLUSH_EVERY &&
	    n->version % ns->cfg.flush_every != 0) {
		ns->flush.st_skipped_versions++;
		return;
	}
	if (op && ns->cfg.flush_policy != VP_FLUSH_ALL) {
		/* coalesce: the queued entry now writes the newer version */
		vp_data_put(op->data);
		op->data = vp_data_get(n->cur);
		op->version = n->version;
		op->epoch = n->epoch;
		op->size = n->size;
		op->forced |= force;
		ns->flush.st_skipped_versions++;
		pthread_cond_broadcast(&ns->flush.cond);
		return;
	}
	op = vp_flush_log_locked(ns, OP_DATA, n, n->parent, n->name, NULL);
	if (!op)
		return;
	op->data = vp_data_get(n->cur);
	op->version = n->version;
	op->epoch = n->epoch;
	op->size = n->size;
	op->forced = force;
	n->pending = op;
}

void vp_flush_cancel_locked(struct vp_ns *ns, struct vp_node *n)
{
	struct flush_op *op = n->pending;

	VP_ASSERT_LOCKED(&ns->lock);
	if (!op)
		return;
	vp_data_put(op->data);
	op->data = NULL;
	op->size = 0;
	n->pending = NULL;
}

void vp_flush_queue_locked(struct vp_ns *ns, struct vp_flush_queue *q)
{
	struct flush_op *op;

	VP_ASSERT_LOCKED(&ns->lock);
	memset(q, 0, sizeof(*q));
	TAILQ_FOREACH(op, &ns->flush.log, link) {
		q->ops++;
		if (op->type == OP_DATA && op->data) {
			q->data_bytes += op->size;
			if (!q->oldest || op->queued_at < q->oldest)
				q->oldest = op->queued_at;
		}
	}
}
