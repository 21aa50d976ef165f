/*
 * clock: monotonic time for deadlines, one way everywhere.
 *
 * Every timed wait in viperfs uses CLOCK_MONOTONIC (a wall-clock change
 * must not stretch or cut a deadline), so condition variables must be
 * made for it: vp_cond_init_monotonic().
 */
#ifndef VP_CLOCK_H
#define VP_CLOCK_H

#include <pthread.h>
#include <time.h>

/* Seconds on the monotonic clock. */
double vp_now(void);
/* The timespec of monotonic time `when` (seconds), for timedwait. */
void vp_abstime(struct timespec *ts, double when);
/* Initialises cond for timed waits on the monotonic clock. */
void vp_cond_init_monotonic(pthread_cond_t *cond);

#endif
