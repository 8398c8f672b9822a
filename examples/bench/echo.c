/*
 * echo: in-process TCP round trip and throughput over the loopback address. One process, two
 * threads: a server thread and the measuring client (main). Run natively it measures kernel
 * loopback sockets; under LD_PRELOAD=libarrakis.so ARRAKIS_BACKEND=loopback the same binary
 * measures the library OS's user-level TCP (examples/bench-tcp.sh runs both, interleaved).
 *
 * (a) round trip: one connection, TCP_NODELAY on both ends; the client writes 64 bytes, the
 *     server echoes what it reads, the client reads the 64 bytes back and checks them. WARMUP
 *     untimed round trips, then N timed ones, each timed with CLOCK_MONOTONIC.
 * (b) throughput: a second connection streams BYTES one way in 128 KiB writes; the server
 *     reads in 128 KiB reads and discards (so the number is what one sender can push to one
 *     receiver, not doubled by an echo), and after EOF it replies with the count it received.
 *     The time runs from the first write until that reply has arrived, so it covers the
 *     delivery of the last byte.
 *
 * usage: echo [-n N] [-w WARMUP] [-b BYTES] [-t SECONDS] [-p CLIENT_CPU,SERVER_CPU]
 *   defaults: N 20000, WARMUP 2000, BYTES 512 MiB (K/M/G suffixes), watchdog 300 s
 *   -p pins the client (main) thread and the server thread to one CPU each (they may be the
 *      same CPU); without it both run wherever the scheduler (or taskset) puts them.
 * Output, one "key value" per line (times in microseconds, MB = 10^6 bytes):
 *   #shim=0|1        libarrakis.so is mapped in this process
 *   #lib=0|1         the sockets were kernel sockets (/proc/self/fd/N is "socket:[...]") or the
 *                    library OS's (an eventfd placeholder, "anon_inode:[eventfd]")
 *   rtt_samples N, rtt_us_p50, rtt_us_p99, rtt_us_mean, rtt_us_min, rtt_us_max
 *   tput_bytes, tput_s, tput_MBps
 * Errors go to stderr with exit status 1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#define MSG 64
#define CHUNK (128 * 1024)

static int kernel_socks, lib_socks; /* touched under classify_lock */
static pthread_mutex_t classify_lock = PTHREAD_MUTEX_INITIALIZER;

#define DIE_ERRNO(what) die("%s: %s", what, strerror(errno))

static void on_alarm(int sig)
{
	(void)sig;
	static const char m[] = "echo: watchdog: the benchmark did not finish in time\n";
	ssize_t r = write(2, m, sizeof m - 1);
	(void)r;
	_exit(1);
}

static void classify(int fd)
{
	char path[64], target[256];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, target, sizeof target - 1);
	if (n < 0)
		DIE_ERRNO("readlink /proc/self/fd");
	target[n] = 0;
	pthread_mutex_lock(&classify_lock);
	if (strncmp(target, "socket:[", 8) == 0)
		kernel_socks++;
	else if (strcmp(target, "anon_inode:[eventfd]") == 0)
		lib_socks++;
	else
		die("fd %d is neither a kernel socket nor an eventfd placeholder: %s", fd, target);
	pthread_mutex_unlock(&classify_lock);
}

static int shim_mapped(void)
{
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		DIE_ERRNO("open /proc/self/maps");
	char line[4096];
	int found = 0;
	while (!found && fgets(line, sizeof line, f))
		found = strstr(line, "libarrakis") != NULL;
	fclose(f);
	return found;
}

static void nodelay(int fd)
{
	int one = 1;
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
		DIE_ERRNO("setsockopt(TCP_NODELAY)");
}

static void write_all(int fd, const void *buf, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, buf, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			DIE_ERRNO("write");
		buf = (const char *)buf + w;
		n -= (size_t)w;
	}
}

/* Reads exactly n bytes; dies at EOF or on an error. */
static void read_all(int fd, void *buf, size_t n, const char *what)
{
	while (n > 0) {
		ssize_t r = read(fd, buf, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			die("%s: read: %s", what, strerror(errno));
		if (r == 0)
			die("%s: unexpected EOF", what);
		buf = (char *)buf + r;
		n -= (size_t)r;
	}
}

static int listener;
static struct sockaddr_in addr;
static int client_cpu = -1, server_cpu = -1;

/* Pins the calling thread to one CPU (-p); does nothing when cpu < 0. */
static void pin(int cpu)
{
	if (cpu < 0)
		return;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if ((errno = pthread_setaffinity_np(pthread_self(), sizeof set, &set)) != 0)
		die("pin to CPU %d: %s", cpu, strerror(errno));
}

/* Serves two connections: the first byte of each says echo ('E') or sink ('S'). */
static void *server(void *arg)
{
	(void)arg;
	pin(server_cpu);
	char *buf = malloc(CHUNK);
	if (!buf)
		die("out of memory");
	for (int conn = 0; conn < 2; conn++) {
		int fd = accept(listener, NULL, NULL);
		if (fd < 0)
			DIE_ERRNO("accept");
		classify(fd);
		nodelay(fd);
		char mode;
		read_all(fd, &mode, 1, "server: mode byte");
		uint64_t total = 0;
		for (;;) {
			ssize_t r = read(fd, buf, mode == 'E' ? MSG * 16 : CHUNK);
			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0)
				DIE_ERRNO("server: read");
			if (r == 0)
				break;
			if (mode == 'E')
				write_all(fd, buf, (size_t)r);
			total += (uint64_t)r;
		}
		if (mode == 'S')
			write_all(fd, &total, sizeof total);
		if (close(fd) != 0)
			DIE_ERRNO("server: close");
	}
	free(buf);
	return NULL;
}

static int connect_mode(char mode)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		DIE_ERRNO("socket");
	if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0)
		DIE_ERRNO("connect");
	classify(fd);
	nodelay(fd);
	write_all(fd, &mode, 1);
	return fd;
}

static unsigned long long parse(const char *s, int suffixes)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *s == '-')
		die("bad number: %s", s);
	if (*end && suffixes && !end[1]) {
		int shift = *end == 'K' ? 10 : *end == 'M' ? 20 : *end == 'G' ? 30 : -1;
		if (shift < 0)
			die("bad size suffix: %s", s);
		return v << shift;
	}
	if (*end)
		die("bad number: %s", s);
	return v;
}

int main(int argc, char **argv)
{
	long n = 20000, warmup = 2000;
	unsigned long long bytes = 512ull << 20;
	unsigned timeout = 300;
	int opt;
	while ((opt = getopt(argc, argv, "n:w:b:t:p:")) != -1) {
		switch (opt) {
		case 'n': n = (long)parse(optarg, 0); break;
		case 'w': warmup = (long)parse(optarg, 0); break;
		case 'b': bytes = parse(optarg, 1); break;
		case 't': timeout = (unsigned)parse(optarg, 0); break;
		case 'p':
			if (sscanf(optarg, "%d,%d", &client_cpu, &server_cpu) != 2 || client_cpu < 0 ||
			    server_cpu < 0)
				die("-p wants CLIENT_CPU,SERVER_CPU: %s", optarg);
			break;
		default:
			fprintf(stderr, "usage: echo [-n N] [-w WARMUP] [-b BYTES] [-t SECONDS] "
					"[-p CLIENT_CPU,SERVER_CPU]\n");
			return 2;
		}
	}
	if (n <= 0 || bytes == 0 || timeout == 0 || optind != argc)
		die("usage: echo [-n N>0] [-w WARMUP] [-b BYTES>0] [-t SECONDS>0]");
	signal(SIGALRM, on_alarm);
	signal(SIGPIPE, SIG_IGN);
	alarm(timeout);
	pin(client_cpu);
	printf("#shim=%d\n", shim_mapped());

	listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (listener < 0)
		DIE_ERRNO("socket (listener)");
	addr.sin_family = AF_INET;
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t len = sizeof addr;
	if (bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(listener, 8) != 0 ||
	    getsockname(listener, (struct sockaddr *)&addr, &len) != 0)
		DIE_ERRNO("listener on 127.0.0.1");
	classify(listener);
	pthread_t t;
	if ((errno = pthread_create(&t, NULL, server, NULL)) != 0)
		DIE_ERRNO("pthread_create");

	/* (a) round trips */
	double *s = malloc(sizeof(double) * (size_t)n);
	if (!s)
		die("out of memory");
	int fd = connect_mode('E');
	unsigned char out[MSG], in[MSG];
	for (long i = -warmup; i < n; i++) {
		for (int k = 0; k < MSG; k++)
			out[k] = (unsigned char)(i * 31 + k);
		double t0 = now_ns();
		write_all(fd, out, MSG);
		read_all(fd, in, MSG, "round trip");
		double t1 = now_ns();
		if (memcmp(in, out, MSG) != 0)
			die("round trip %ld: the echo differs from what was sent", i);
		if (i >= 0)
			s[i] = t1 - t0;
	}
	if (close(fd) != 0)
		DIE_ERRNO("close");

	/* (b) throughput */
	unsigned char *buf = malloc(CHUNK);
	if (!buf)
		die("out of memory");
	for (int k = 0; k < CHUNK; k++)
		buf[k] = (unsigned char)(k * 7);
	fd = connect_mode('S');
	double t0 = now_ns();
	for (unsigned long long left = bytes; left > 0;) {
		size_t c = left < CHUNK ? (size_t)left : CHUNK;
		write_all(fd, buf, c);
		left -= c;
	}
	if (shutdown(fd, SHUT_WR) != 0)
		DIE_ERRNO("shutdown");
	uint64_t got;
	read_all(fd, &got, sizeof got, "the receiver's count");
	double t1 = now_ns();
	if (got != bytes)
		die("the receiver counted %llu bytes, %llu were sent", (unsigned long long)got, bytes);
	if (close(fd) != 0)
		DIE_ERRNO("close");
	if ((errno = pthread_join(t, NULL)) != 0)
		DIE_ERRNO("pthread_join");
	close(listener);
	alarm(0);

	if (kernel_socks && lib_socks)
		die("mixed sockets: %d kernel sockets and %d library-OS sockets", kernel_socks,
		    lib_socks);
	printf("#lib=%d\n", lib_socks ? 1 : 0);
	double sum = 0;
	for (long i = 0; i < n; i++)
		sum += s[i];
	qsort(s, (size_t)n, sizeof *s, cmp_double);
	printf("rtt_samples %ld\n", n);
	printf("rtt_us_p50 %.2f\n", s[n / 2] / 1e3);
	printf("rtt_us_p99 %.2f\n", s[(n * 99) / 100] / 1e3);
	printf("rtt_us_mean %.2f\n", sum / (double)n / 1e3);
	printf("rtt_us_min %.2f\n", s[0] / 1e3);
	printf("rtt_us_max %.2f\n", s[n - 1] / 1e3);
	double secs = (t1 - t0) / 1e9;
	printf("tput_bytes %llu\n", bytes);
	printf("tput_s %.3f\n", secs);
	printf("tput_MBps %.1f\n", (double)bytes / secs / 1e6);
	free(s);
	free(buf);
	return 0;
}
