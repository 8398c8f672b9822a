/*
 * getlat: redis GET round-trip latency at one connection, against two servers at once, in
 * finely interleaved batches, timed per request with CLOCK_MONOTONIC.
 *
 * redis-benchmark reports percentiles from a coarse histogram (steps of ~8 us near 70 us) and
 * one run per server; on a shared, noisy machine the neighbours then change between the runs.
 * getlat keeps one connection to each server and alternates batches of BATCH GETs between
 * them (A B B A ...), so both see the same conditions, and keeps every sample.
 *
 * usage: getlat PORT_A PORT_B ROUNDS BATCH
 *   The key "key:__rand_int__" must hold "xxx" on both servers (127.0.0.1).
 * Prints one line per server: "PORT p50_us mean_us p99_us samples".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char REQUEST[] = "*2\r\n$3\r\nGET\r\n$16\r\nkey:__rand_int__\r\n";
static const char REPLY[] = "$3\r\nxxx\r\n";

static void die(const char *what)
{
	fprintf(stderr, "getlat: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int connect_to(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket");
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
		die("connect");
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	return fd;
}

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* One GET; returns its round-trip time in ns. */
static double get_once(int fd)
{
	char buf[64];
	size_t want = sizeof REPLY - 1, got = 0;
	double t0 = now_ns();
	if (write(fd, REQUEST, sizeof REQUEST - 1) != (ssize_t)(sizeof REQUEST - 1))
		die("write");
	while (got < want) {
		ssize_t n = read(fd, buf + got, sizeof buf - got);
		if (n <= 0)
			die(n == 0 ? "read: server closed the connection" : "read");
		got += n;
	}
	double t1 = now_ns();
	if (got != want || memcmp(buf, REPLY, want) != 0) {
		fprintf(stderr, "getlat: unexpected reply (set key:__rand_int__ to xxx first)\n");
		exit(1);
	}
	return t1 - t0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static void report(int port, double *s, long n)
{
	double sum = 0;
	for (long i = 0; i < n; i++)
		sum += s[i];
	qsort(s, n, sizeof *s, cmp_double);
	printf("%d %.2f %.2f %.2f %ld\n", port, s[n / 2] / 1e3, sum / n / 1e3, s[n * 99 / 100] / 1e3, n);
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: getlat PORT_A PORT_B ROUNDS BATCH\n");
		return 2;
	}
	int port[2] = { atoi(argv[1]), atoi(argv[2]) };
	long rounds = atol(argv[3]), batch = atol(argv[4]);
	if (rounds <= 0 || batch <= 0)
		return 2;
	int fd[2] = { connect_to(port[0]), connect_to(port[1]) };
	double *samples[2];
	long count[2] = { 0, 0 };
	for (int s = 0; s < 2; s++)
		if (!(samples[s] = malloc(sizeof(double) * rounds * batch)))
			die("malloc");
	for (long r = 0; r < rounds; r++) {
		for (int k = 0; k < 2; k++) {
			int s = (r % 2) ? 1 - k : k; /* A B, B A, A B, ... */
			for (long i = 0; i < batch; i++)
				samples[s][count[s]++] = get_once(fd[s]);
		}
	}
	for (int s = 0; s < 2; s++)
		report(port[s], samples[s], count[s]);
	return 0;
}
