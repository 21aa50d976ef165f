/* tbucket: see tbucket.h. */
#define _GNU_SOURCE
#include "tbucket.h"

#include <time.h>

void vp_tbucket_init(struct tbucket *tb, uint64_t rate, uint64_t burst,
		     double (*clock)(void))
{
	pthread_mutex_init(&tb->lock, NULL);
	tb->rate = (double)rate;
	tb->burst = (double)burst;
	tb->tokens = (double)burst;
	tb->clock = clock;
	tb->last = clock();
}

void vp_tbucket_release(struct tbucket *tb)
{
	pthread_mutex_destroy(&tb->lock);
}

double vp_tbucket_reserve(struct tbucket *tb, uint64_t n)
{
	double now, wait = 0;

	if (tb->rate <= 0)
		return 0;
	pthread_mutex_lock(&tb->lock);
	now = tb->clock();
	tb->tokens += (now - tb->last) * tb->rate;
	if (tb->tokens > tb->burst)
		tb->tokens = tb->burst;
	tb->last = now;
	tb->tokens -= (double)n;
	if (tb->tokens < 0)
		wait = -tb->tokens / tb->rate;
	pthread_mutex_unlock(&tb->lock);
	return wait;
}

void vp_tbucket_take(struct tbucket *tb, uint64_t n)
{
	double wait = vp_tbucket_reserve(tb, n);
	struct timespec ts;

	if (wait <= 0)
		return;
	ts.tv_sec = (time_t)wait;
	ts.tv_nsec = (long)((wait - (double)ts.tv_sec) * 1e9);
	while (nanosleep(&ts, &ts))
		;
}
