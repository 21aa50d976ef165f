/*
 * tbucket: a token bucket that paces PFS writes to a byte rate.
 *
 * THREADING: thread-safe; vp_tbucket_take() sleeps outside the lock.
 */
#ifndef VP_TBUCKET_H
#define VP_TBUCKET_H

#include <pthread.h>
#include <stdint.h>

struct tbucket {
	pthread_mutex_t lock;
	double rate;		/* bytes per second, 0: unlimited */
	double burst;		/* most tokens that may pile up */
	double tokens;		/* protected by lock; may go negative (debt) */
	double last;		/* protected by lock: time of the last refill */
	double (*clock)(void);	/* seconds; replaceable for tests */
};

/* Sets up a bucket for rate bytes/s with burst bytes of slack. */
void vp_tbucket_init(struct tbucket *tb, uint64_t rate, uint64_t burst,
		     double (*clock)(void));
void vp_tbucket_release(struct tbucket *tb);

/*
 * Takes n bytes' worth of tokens.  Returns the seconds the caller must
 * wait before sending them (0 when there are tokens): the debt is taken
 * at once so concurrent callers queue fairly.
 */
double vp_tbucket_reserve(struct tbucket *tb, uint64_t n);

/* vp_tbucket_reserve(), then sleeps for what it says.  May block. */
void vp_tbucket_take(struct tbucket *tb, uint64_t n);

#endif
