/*
 * sched: the daemon's publish=schedule policy.  It follows the loss log
 * the training job writes into the mount, fits it once warm-up is over and
 * again every plan_refit iterations, plans the optimal schedule for the
 * inferences still to come (plan.h), and says for each committed version
 * whether it is one the schedule selects.
 *
 * DESIGN: the version committed when the log says the job is at iteration
 * i is selected if a scheduled iteration s was reached since the last
 * selected version (last < s <= i).  Before warm-up ends there is no
 * schedule and every version is selected (consumers need a model to start
 * with).  t_iter is measured from the log's progress over wall time;
 * t_ckpt and t_load come from the daemon's own measurements; t_infer and
 * M are options (they describe the consumers).  At each re-fit the
 * schedule is planned for the inferences still to come, starting from the
 * version in service, so it stays exact for what remains.
 *
 * A re-plan runs on the policy's own planner thread, from a copy of the
 * inputs: it can take a second, and the writer whose close() asked for it
 * does not wait.  Until the new plan is in place, decisions use the one
 * before; a scheduled iteration passed meanwhile selects the next version.
 *
 * THREADING: thread-safe (an internal mutex); the planner thread calls the
 * on_plan callback with no lock held.
 */
#ifndef VP_SCHED_H
#define VP_SCHED_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "losslog.h"

struct vp_sched;

struct vp_sched_decision {
	int selected;		/* ship and flush this version */
	uint64_t iteration;	/* where the job is, from the log */
	int replanned;		/* a re-plan was asked of the planner thread */
	const char *why;	/* for the log line */
};

/* Returns a new policy, or NULL with a message in err (missing options). */
struct vp_sched *vp_sched_new(const struct vp_config *cfg, char *err,
			      size_t errlen);
/* Stops the planner thread (waits for a plan under way); then frees. */
void vp_sched_free(struct vp_sched *s);

/*
 * fn(arg) is called on the planner thread, with no lock held, each time a
 * new schedule is in place (to write the schedule file).  Set it before the
 * first decision.
 */
void vp_sched_on_plan(struct vp_sched *s, void (*fn)(void *arg), void *arg);

/* Stops the planner thread: a plan under way is finished, one asked for is dropped. */
void vp_sched_stop(struct vp_sched *s);

/* Waits until no re-plan is asked for or under way (tests). */
void vp_sched_settle(struct vp_sched *s);

/*
 * Decides for a version committed at time now (seconds, monotonic), with
 * the loss log as it is now.  t_ckpt and t_load: the daemon's measured
 * stall per checkpoint and transfer time.
 */
void vp_sched_decide(struct vp_sched *s, const struct vp_losslog *log,
		     double now, double t_ckpt, double t_load,
		     struct vp_sched_decision *d);

/*
 * The current schedule as one line of JSON ({"iterations":[...], ...},
 * built with jansson; a number that is not finite is null) in a new
 * malloc'd string (you own it), or NULL when there is none yet (or memory
 * ran out).
 */
char *vp_sched_json(struct vp_sched *s);

#endif
