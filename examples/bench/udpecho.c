/*
 * udpecho: UDP round trip between two processes over 127.0.0.1. Run natively it measures the
 * kernel's loopback; run both ends under `arrakis run --backend emulator` it measures the
 * library OS's UDP through the emulator's switch (examples/bench-emulator.sh runs both).
 *
 * usage: udpecho server PORT [SECONDS]
 *          echoes every datagram back to its sender until SECONDS (default 300) have passed
 *          or a datagram "quit" arrives.
 *        udpecho client PORT [-n N] [-w WARMUP] [-s SIZE] [-q]
 *          sends SIZE-byte datagrams (default 64) one at a time and waits for each echo
 *          (checked byte for byte): WARMUP (default 2000) untimed, N (default 20000) timed,
 *          each timed with CLOCK_MONOTONIC; -q then tells the server to quit.
 * The client prints, one "key value" per line: #lib=0|1 (its socket was a kernel socket or
 * the library OS's eventfd placeholder), rtt_samples, rtt_us_p50, rtt_us_p99, rtt_us_mean.
 * A lost datagram (no echo within 1 s) is an error: exit status 1, message on stderr.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#define MAX_SIZE 1400

static struct sockaddr_in addr_of(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((unsigned short)port) };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return a;
}

static void server(int port, int seconds)
{
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0)
		die("socket: %s", strerror(errno));
	struct sockaddr_in a = addr_of(port);
	if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0)
		die("bind port %d: %s", port, strerror(errno));
	struct timeval tv = { .tv_sec = 1 };
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0)
		die("SO_RCVTIMEO: %s", strerror(errno));
	printf("ready\n");
	fflush(stdout);
	double end = now_ns() + seconds * 1e9;
	char buf[MAX_SIZE];
	while (now_ns() < end) {
		struct sockaddr_in from;
		socklen_t fl = sizeof from;
		ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			die("recvfrom: %s", strerror(errno));
		}
		if (n == 4 && memcmp(buf, "quit", 4) == 0)
			break;
		if (sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&from, fl) != n)
			die("sendto: %s", strerror(errno));
	}
	close(fd);
}

static void client(int port, long n, long warmup, int size, int quit)
{
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0)
		die("socket: %s", strerror(errno));
	struct sockaddr_in a = addr_of(port);
	if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
		die("connect port %d: %s", port, strerror(errno));
	struct timeval tv = { .tv_sec = 1 };
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0)
		die("SO_RCVTIMEO: %s", strerror(errno));
	double *rtt = malloc(sizeof(double) * (size_t)n);
	if (!rtt)
		die("out of memory");
	char out[MAX_SIZE], in[MAX_SIZE];
	for (long i = -warmup; i < n; i++) {
		for (int k = 0; k < size; k++)
			out[k] = (char)(i * 31 + k);
		double t0 = now_ns();
		if (send(fd, out, (size_t)size, 0) != size)
			die("send: %s", strerror(errno));
		ssize_t r;
		do
			r = recv(fd, in, sizeof in, 0);
		while (r < 0 && errno == EINTR);
		if (r < 0)
			die("datagram %ld: no echo within 1 s (%s)", i + warmup, strerror(errno));
		if (r != size || memcmp(in, out, (size_t)size) != 0)
			die("datagram %ld: the echo differs (%zd bytes)", i + warmup, r);
		if (i >= 0)
			rtt[i] = (now_ns() - t0) / 1e3;
	}
	printf("#lib=%d\n", is_lib_socket(fd));
	if (quit && send(fd, "quit", 4, 0) != 4)
		die("send quit: %s", strerror(errno));
	double sum = 0;
	for (long i = 0; i < n; i++)
		sum += rtt[i];
	qsort(rtt, (size_t)n, sizeof(double), cmp_double);
	printf("rtt_samples %ld\nrtt_us_p50 %.2f\nrtt_us_p99 %.2f\nrtt_us_mean %.2f\n", n, rtt[n / 2],
	       rtt[(long)(n * 0.99)], sum / n);
	free(rtt);
	close(fd);
}

int main(int argc, char **argv)
{
	if (argc < 3)
		die("usage: udpecho server PORT [SECONDS] | udpecho client PORT [-n N] [-w WARMUP] [-s SIZE] [-q]");
	int port = atoi(argv[2]);
	if (port <= 0 || port > 65535)
		die("bad port %s", argv[2]);
	if (strcmp(argv[1], "server") == 0) {
		server(port, argc > 3 ? atoi(argv[3]) : 300);
		return 0;
	}
	if (strcmp(argv[1], "client") != 0)
		die("unknown mode %s", argv[1]);
	long n = 20000, warmup = 2000;
	int size = 64, quit = 0;
	for (int i = 3; i < argc; i++) {
		if (strcmp(argv[i], "-q") == 0)
			quit = 1;
		else if (i + 1 < argc && strcmp(argv[i], "-n") == 0)
			n = atol(argv[++i]);
		else if (i + 1 < argc && strcmp(argv[i], "-w") == 0)
			warmup = atol(argv[++i]);
		else if (i + 1 < argc && strcmp(argv[i], "-s") == 0)
			size = atoi(argv[++i]);
		else
			die("unknown argument %s", argv[i]);
	}
	if (n < 1 || warmup < 0 || size < 1 || size > MAX_SIZE)
		die("bad -n, -w or -s");
	signal(SIGPIPE, SIG_IGN);
	alarm(600);
	client(port, n, warmup, size, quit);
	return 0;
}
