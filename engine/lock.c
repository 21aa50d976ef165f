/* lock.c: the thread id behind VP_ASSERT_LOCKED (lock.h). */
#define _GNU_SOURCE
#include <unistd.h>

#include "lock.h"

pid_t vp_tid(void)
{
	static __thread pid_t tid;

	if (!tid)
		tid = gettid();
	return tid;
}
