/*
 * mclat: memcached request latency at one connection, each request timed with
 * CLOCK_MONOTONIC (memcslap reports only throughput). Text protocol, TCP_NODELAY; like
 * libmemcached it waits for each answer in poll() and then reads it.
 *
 * usage: mclat PORT [-n N] [-w WARMUP] [-s SIZE]
 *   WARMUP (default 1000) untimed then N (default 20000) timed "set mclat:I 0 0 SIZE"
 *   (SIZE default 32 bytes; each must answer STORED), then as many "get mclat:I" of the
 *   keys just set (each answer checked byte for byte) — server 127.0.0.1:PORT.
 * Prints one "key value" per line: #lib=0|1 (its socket was a kernel socket or the library
 * OS's eventfd placeholder), samples, set_us_p50, set_us_p99, set_us_mean, get_us_p50,
 * get_us_p99, get_us_mean. Any error or an answer not within 5 s: exit status 1, message on
 * stderr.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#define MAX_SIZE 1024

static void send_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, p, n, 0);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			die("send: %s", strerror(errno));
		p += w;
		n -= (size_t)w;
	}
}

/* Reads exactly `want` bytes (the whole expected answer), waiting in poll() as libmemcached
 * does, and checks them against `expect`. */
static void expect_answer(int fd, const char *expect, size_t want, const char *what, long i)
{
	char in[MAX_SIZE + 128];
	size_t got = 0;
	while (got < want) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int r = poll(&p, 1, 5000);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			die("poll: %s", strerror(errno));
		if (r == 0)
			die("%s %ld: no answer within 5 s", what, i);
		ssize_t n = recv(fd, in + got, want - got, 0);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n < 0)
			die("recv: %s", strerror(errno));
		if (n == 0)
			die("%s %ld: the server closed the connection", what, i);
		got += (size_t)n;
	}
	if (memcmp(in, expect, want) != 0)
		die("%s %ld: unexpected answer \"%.*s\"", what, i, (int)want, in);
}

static void report(const char *name, double *v, long n)
{
	double sum = 0;
	for (long i = 0; i < n; i++)
		sum += v[i];
	qsort(v, (size_t)n, sizeof *v, cmp_double);
	printf("%s_us_p50 %.2f\n", name, v[n / 2]);
	printf("%s_us_p99 %.2f\n", name, v[n * 99 / 100]);
	printf("%s_us_mean %.2f\n", name, sum / (double)n);
}

static long num(const char *s, long lo, long hi)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || *end || v < lo || v > hi)
		die("%s is not a number from %ld to %ld", s, lo, hi);
	return v;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		die("usage: mclat PORT [-n N] [-w WARMUP] [-s SIZE]");
	int port = (int)num(argv[1], 1, 65535);
	long n = 20000, warmup = 1000;
	int size = 32;
	for (int i = 2; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "-n") == 0)
			n = num(argv[i + 1], 1, 10000000);
		else if (strcmp(argv[i], "-w") == 0)
			warmup = num(argv[i + 1], 0, 10000000);
		else if (strcmp(argv[i], "-s") == 0)
			size = (int)num(argv[i + 1], 1, MAX_SIZE);
		else
			die("unknown option %s", argv[i]);
	}
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		die("socket: %s", strerror(errno));
	int one = 1;
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
		die("TCP_NODELAY: %s", strerror(errno));
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((unsigned short)port) };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
		die("connect port %d: %s", port, strerror(errno));
	double *set = malloc(sizeof(double) * (size_t)n), *get = malloc(sizeof(double) * (size_t)n);
	if (!set || !get)
		die("out of memory");
	char req[MAX_SIZE + 128], value[MAX_SIZE + 1], answer[MAX_SIZE + 128];
	for (long i = -warmup; i < n; i++) {
		long key = i + warmup;
		for (int k = 0; k < size; k++)
			value[k] = (char)('a' + (key * 7 + k) % 26);
		int len = snprintf(req, sizeof req, "set mclat:%ld 0 0 %d\r\n%.*s\r\n", key, size, size, value);
		double t0 = now_ns();
		send_all(fd, req, (size_t)len);
		expect_answer(fd, "STORED\r\n", 8, "set", key);
		if (i >= 0)
			set[i] = (now_ns() - t0) / 1e3;
	}
	for (long i = -warmup; i < n; i++) {
		long key = i + warmup;
		for (int k = 0; k < size; k++)
			value[k] = (char)('a' + (key * 7 + k) % 26);
		int len = snprintf(req, sizeof req, "get mclat:%ld\r\n", key);
		int alen = snprintf(answer, sizeof answer, "VALUE mclat:%ld 0 %d\r\n%.*s\r\nEND\r\n", key, size, size, value);
		double t0 = now_ns();
		send_all(fd, req, (size_t)len);
		expect_answer(fd, answer, (size_t)alen, "get", key);
		if (i >= 0)
			get[i] = (now_ns() - t0) / 1e3;
	}
	printf("#lib=%d\n", is_lib_socket(fd));
	printf("samples %ld\n", n);
	report("set", set, n);
	report("get", get, n);
	close(fd);
	return 0;
}
