/* lock.c: the thread id behind VP_ASSERT_LOCKED (lock.h). */
#define _GNU_SOURCE
#include <pthread.h>
#include <unistd.h>

#include "lock.h"

static __thread pid_t tid;

/* A forked child's thread has a new id: the parent's cached one must go. */
static void tid_forget(void)
{
	tid = 0;
}

static void tid_atfork_once(void)
{
	pthread_atfork(NULL, NULL, tid_forget);
}

pid_t vp_tid(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;

	if (!tid) {
		pthread_once(&once, tid_atfork_once);
		tid = gettid();
	}
	return tid;
}
