/* Helpers shared by the benchmark programs in examples/bench (each compiled alone with
 * `cc -O2 FILE.c`; this header is found beside it). */
#ifndef ARRAKIS_BENCH_H
#define ARRAKIS_BENCH_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Prints "PROGRAM: message" on stderr (after flushing stdout) and exits with status 1. */
__attribute__((format(printf, 1, 2), noreturn)) static void die(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	fflush(stdout);
	fprintf(stderr, "%s: %s\n", program_invocation_short_name, msg);
	_exit(1);
}

/* CLOCK_MONOTONIC in nanoseconds. */
static inline double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* qsort comparison of doubles. */
static inline int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* 1 if fd is not a kernel socket (under the shim a library-OS socket's fd is the library OS's
 * eventfd placeholder), 0 if it is. */
static inline int is_lib_socket(int fd)
{
	char path[64], target[256];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, target, sizeof target - 1);
	if (n < 0)
		die("readlink %s: %s", path, strerror(errno));
	target[n] = 0;
	return strncmp(target, "socket:[", 8) != 0;
}

#endif
