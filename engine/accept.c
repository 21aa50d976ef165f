/* accept: see accept.h. */
#define _GNU_SOURCE
#include "accept.h"

#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <sys/socket.h>

int vp_accept_until(int listen_fd, int stop_fd)
{
	for (;;) {
		struct pollfd pfd[2] = {
			{ .fd = listen_fd, .events = POLLIN },
			{ .fd = stop_fd, .events = POLLIN },
		};
		int fd;

		if (poll(pfd, 2, -1) < 0 && errno != EINTR)
			return -1;
		if (pfd[1].revents)
			return -1;
		if (!(pfd[0].revents & POLLIN))
			continue;
		fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd >= 0)
			return fd;
	}
}
