/*
 * syscalls: call one POSIX function N times in a loop, for counting the instructions an
 * interposed call costs (run it under `valgrind --tool=callgrind`, natively and with the
 * shim preloaded, at two values of N, and divide the difference).
 *
 * usage: syscalls write|read|epoll_wait N
 *   write       write(2) of 1 byte to /dev/null
 *   read        read(2) of 1 byte from /dev/zero
 *   epoll_wait  epoll_wait(timeout 0) on an epoll set holding one level-triggered eventfd
 *               whose counter is non-zero, so every call returns 1 ready event
 *
 * Every call's result is checked; the program exits 1 on the first wrong one.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

static int fail(const char *what)
{
	fprintf(stderr, "syscalls: %s: %s\n", what, strerror(errno));
	return 1;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: syscalls write|read|epoll_wait N\n");
		return 2;
	}
	const char *mode = argv[1];
	long n = strtol(argv[2], NULL, 10);
	char byte = 'x';

	if (strcmp(mode, "write") == 0) {
		int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
		if (fd < 0)
			return fail("open /dev/null");
		for (long i = 0; i < n; i++)
			if (write(fd, &byte, 1) != 1)
				return fail("write");
	} else if (strcmp(mode, "read") == 0) {
		int fd = open("/dev/zero", O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return fail("open /dev/zero");
		for (long i = 0; i < n; i++)
			if (read(fd, &byte, 1) != 1 || byte != 0)
				return fail("read");
	} else if (strcmp(mode, "epoll_wait") == 0) {
		int efd = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK);
		int ep = epoll_create1(EPOLL_CLOEXEC);
		if (efd < 0 || ep < 0)
			return fail("eventfd/epoll_create1");
		struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 42 };
		if (epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev) != 0)
			return fail("epoll_ctl");
		struct epoll_event out[8];
		for (long i = 0; i < n; i++)
			if (epoll_wait(ep, out, 8, 0) != 1 || out[0].data.u64 != 42)
				return fail("epoll_wait");
	} else {
		fprintf(stderr, "syscalls: unknown mode %s\n", mode);
		return 2;
	}
	return 0;
}
