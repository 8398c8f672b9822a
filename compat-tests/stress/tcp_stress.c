/* compat-cflags: -O2 */
/*
 * tcp_stress: a single-process TCP stress test (threads only, no fork) that judges the library
 * OS's user-level TCP (ARRAKIS_BACKEND=loopback: client and server in one process, no kernel)
 * and runs unchanged on kernel sockets.
 *
 * usage: tcp_stress [-t SECONDS] [-c CLIENTS] [-6] PHASE [COUNT]
 *   bulk [BYTES]   one connection, BYTES (default 1 GiB; K/M/G suffixes) of a deterministic
 *                  pseudo-random stream written in chunks of varying size, every byte checked
 *                  by a reader with varying read sizes, then the exact count, a half-close
 *                  handshake and EOF both ways; prints MB/s (10^6 bytes/s)
 *   short [N]      N (default 100,000) short connections through one listener (backlog 1024):
 *                  16-byte request with index and checksum, 16-byte reply, the SERVER closes
 *                  first, the client checks the reply and EOF; CLIENTS client threads (default
 *                  2) against one server thread
 *   burst [N]      N (default 1000, at most the backlog 1024) non-blocking connects, all issued
 *                  before any accept; every one must complete with SO_ERROR 0 while nobody
 *                  accepts (Linux queues them in the backlog); then N accepts, 16 bytes each
 *                  way on every connection, a half-close and EOF each way, close
 *   all            bulk, short and burst with their defaults
 *   -t SECONDS     deadline of each phase (default $STRESS_TIMEOUT, else 300); checked in every
 *                  loop, and an alarm() watchdog kills the process a few seconds after it
 *   -6             use ::1 instead of 127.0.0.1
 *
 * Output: "#shim=0|1" (libarrakis.so mapped in this process or not), then per phase
 * "#lib=0|1" (0: the phase's sockets were kernel sockets, /proc/self/fd/N reads
 * "socket:[...]"; 1: they were the library OS's, whose placeholder fd is an eventfd,
 * "anon_inode:[eventfd]"; a mix is a failure) and one summary line "PHASE: ok ...".
 * Any failure prints "tcp_stress: FAIL [PHASE]: what went wrong" on stderr and exits 1.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BACKLOG 1024
#define MSG_LEN 16
#define MAGIC_REQ 0x41524b53u /* "ARKS" */
#define MAGIC_REP 0x534b5241u /* "SKRA" */

/* --- settings and global state ------------------------------------------------------------ */

static int g_timeout = 300; /* seconds per phase */
static int g_family = AF_INET;
static int g_clients = 2; /* client threads of the short phase */

/* The running phase and two progress counters, for failure and watchdog messages. */
static const char *volatile g_phase = "setup";
static const char *volatile g_prog_a_name = "-";
static const char *volatile g_prog_b_name = "-";
static atomic_long g_prog_a, g_prog_b;
static double g_deadline; /* CLOCK_MONOTONIC seconds */

/* Sockets seen in the running phase, by kind. */
static atomic_long g_kernel_socks, g_lib_socks;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

__attribute__((format(printf, 1, 2), noreturn)) static void fail(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fflush(stdout);
    fprintf(stderr, "tcp_stress: FAIL [%s]: %s (progress: %s %ld, %s %ld)\n", g_phase, msg,
            g_prog_a_name, atomic_load(&g_prog_a), g_prog_b_name, atomic_load(&g_prog_b));
    fflush(stderr);
    _exit(1); /* not exit(): other threads are still running */
}

/* fail() with strerror(errno) appended. */
#define FAIL_ERRNO(...)                                                                     \
    do {                                                                                    \
        int e_ = errno;                                                                     \
        char w_[512];                                                                       \
        snprintf(w_, sizeof w_, __VA_ARGS__);                                               \
        fail("%s: %s (errno %d)", w_, strerror(e_), e_);                                    \
    } while (0)

static void check_deadline(const char *doing)
{
    if (now() > g_deadline)
        fail("deadline of %d s passed while %s", g_timeout, doing);
}

/* Async-signal-safe output for the watchdog. */
static void sig_puts(const char *s)
{
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(2, s, n);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

static void sig_putl(long v)
{
    char buf[24];
    int i = (int)sizeof buf;
    buf[--i] = 0;
    int neg = v < 0;
    unsigned long u = neg ? 0UL - (unsigned long)v : (unsigned long)v;
    do {
        buf[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u && i > 1);
    if (neg)
        buf[--i] = '-';
    sig_puts(buf + i);
}

static void on_alarm(int sig)
{
    (void)sig;
    sig_puts("tcp_stress: FAIL [");
    sig_puts(g_phase);
    sig_puts("]: watchdog: the phase did not finish within ");
    sig_putl(g_timeout);
    sig_puts(" s (a call blocked for good?); progress: ");
    sig_puts(g_prog_a_name);
    sig_puts(" ");
    sig_putl(atomic_load(&g_prog_a));
    sig_puts(", ");
    sig_puts(g_prog_b_name);
    sig_puts(" ");
    sig_putl(atomic_load(&g_prog_b));
    sig_puts("\n");
    _exit(1);
}

static void phase_begin(const char *name, const char *a, const char *b)
{
    g_phase = name;
    g_prog_a_name = a;
    g_prog_b_name = b;
    atomic_store(&g_prog_a, 0);
    atomic_store(&g_prog_b, 0);
    atomic_store(&g_kernel_socks, 0);
    atomic_store(&g_lib_socks, 0);
    g_deadline = now() + g_timeout;
    alarm((unsigned)g_timeout + 5);
}

/* Prints the phase's "#lib=" line; a phase with sockets of both kinds fails. */
static void phase_end(void)
{
    alarm(0);
    long k = atomic_load(&g_kernel_socks), l = atomic_load(&g_lib_socks);
    if (k + l == 0)
        fail("no socket was classified (bug in tcp_stress)");
    if (k && l)
        fail("mixed sockets: %ld kernel sockets and %ld library-OS sockets in one phase", k, l);
    printf("#lib=%d\n", l ? 1 : 0);
}

/* --- socket classification ----------------------------------------------------------------- */

/* Records whether fd is a kernel socket ("socket:[ino]") or a library-OS socket (its placeholder
 * is an eventfd, "anon_inode:[eventfd]"); anything else fails. */
static void classify(int fd, const char *what)
{
    char path[64], target[256];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, target, sizeof target - 1);
    if (n < 0)
        FAIL_ERRNO("readlink %s (%s)", path, what);
    target[n] = 0;
    if (strncmp(target, "socket:[", 8) == 0)
        atomic_fetch_add(&g_kernel_socks, 1);
    else if (strcmp(target, "anon_inode:[eventfd]") == 0)
        atomic_fetch_add(&g_lib_socks, 1);
    else
        fail("%s (fd %d) is neither a kernel socket nor an eventfd placeholder: %s -> %s", what, fd,
             path, target);
}

/* "#shim=1" if libarrakis.so is mapped into this process. */
static int shim_mapped(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f)
        FAIL_ERRNO("open /proc/self/maps");
    char line[4096];
    int found = 0;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, "libarrakis") != NULL;
    fclose(f);
    return found;
}

/* --- socket helpers ------------------------------------------------------------------------ */

static socklen_t loopback_addr(struct sockaddr_storage *ss, int port)
{
    memset(ss, 0, sizeof *ss);
    if (g_family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_addr = in6addr_loopback;
        s6->sin6_port = htons((uint16_t)port);
        return sizeof *s6;
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    s4->sin_family = AF_INET;
    s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s4->sin_port = htons((uint16_t)port);
    return sizeof *s4;
}

/* A listener on the loopback address, ephemeral port; *addr gets its name. */
static int make_listener(int backlog, struct sockaddr_storage *addr, socklen_t *len)
{
    int fd = socket(g_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        FAIL_ERRNO("socket (listener)");
    socklen_t l = loopback_addr(addr, 0);
    if (bind(fd, (struct sockaddr *)addr, l) != 0)
        FAIL_ERRNO("bind (listener) to the loopback address, port 0");
    if (listen(fd, backlog) != 0)
        FAIL_ERRNO("listen(%d)", backlog);
    *len = sizeof *addr;
    if (getsockname(fd, (struct sockaddr *)addr, len) != 0)
        FAIL_ERRNO("getsockname (listener)");
    int port = g_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)addr)->sin6_port)
                                    : ntohs(((struct sockaddr_in *)addr)->sin_port);
    if (port == 0)
        fail("getsockname of the listener shows port 0 after bind + listen");
    classify(fd, "listener");
    return fd;
}

/* Reads exactly n bytes; returns the number read before EOF (< n only at EOF). */
static size_t read_full(int fd, void *buf, size_t n, const char *what)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            FAIL_ERRNO("%s: read", what);
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return got;
}

static void write_full(int fd, const void *buf, size_t n, const char *what)
{
    size_t put = 0;
    while (put < n) {
        ssize_t w = write(fd, (const char *)buf + put, n - put);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            FAIL_ERRNO("%s: write", what);
        }
        if (w == 0)
            fail("%s: write returned 0", what);
        put += (size_t)w;
    }
}

/* Expects EOF: read must return 0 (not data, not an error such as ECONNRESET). */
static void expect_eof(int fd, const char *what)
{
    char c[64];
    for (;;) {
        ssize_t r = read(fd, c, sizeof c);
        if (r == 0)
            return;
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            FAIL_ERRNO("%s: read where EOF was expected", what);
        fail("%s: %zd unexpected bytes where EOF was expected", what, r);
    }
}

static void xclose(int fd, const char *what)
{
    if (close(fd) != 0)
        FAIL_ERRNO("%s: close", what);
}

static pthread_t spawn(void *(*fn)(void *), void *arg, const char *what)
{
    pthread_t t;
    int e = pthread_create(&t, NULL, fn, arg);
    if (e != 0) {
        errno = e;
        FAIL_ERRNO("pthread_create (%s)", what);
    }
    return t;
}

static void join(pthread_t t, const char *what)
{
    int e = pthread_join(t, NULL);
    if (e != 0) {
        errno = e;
        FAIL_ERRNO("pthread_join (%s)", what);
    }
}

/* --- 16-byte messages ---------------------------------------------------------------------- */

static uint32_t fnv1a(const unsigned char *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* magic, index (64-bit), FNV-1a of the first 12 bytes. */
static void msg_make(unsigned char m[MSG_LEN], uint32_t magic, uint64_t index)
{
    put32(m, magic);
    put32(m + 4, (uint32_t)index);
    put32(m + 8, (uint32_t)(index >> 32));
    put32(m + 12, fnv1a(m, 12));
}

/* Checks magic and checksum; returns the index, or fails naming what. */
static uint64_t msg_check(const unsigned char m[MSG_LEN], uint32_t magic, const char *what)
{
    if (get32(m) != magic || get32(m + 12) != fnv1a(m, 12))
        fail("%s: corrupt message %02x%02x%02x%02x %02x%02x%02x%02x %02x%02x%02x%02x "
             "%02x%02x%02x%02x (bad %s)",
             what, m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9], m[10], m[11], m[12],
             m[13], m[14], m[15], get32(m) != magic ? "magic" : "checksum");
    return (uint64_t)get32(m + 4) | (uint64_t)get32(m + 8) << 32;
}

/* --- the pseudo-random stream (bulk) ------------------------------------------------------- */

/* xorshift64; byte k of the stream is byte k % 8 of the (k / 8)-th output word, little-endian,
 * whatever chunks it is produced in. */
struct stream {
    uint64_t s;
    unsigned char word[8];
    unsigned left; /* bytes of word not yet used */
};

#define STREAM_SEED 0x9e3779b97f4a7c15ull

static uint64_t xorshift64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void store_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void stream_fill(struct stream *g, unsigned char *p, size_t n)
{
    while (n > 0 && g->left > 0) {
        *p++ = g->word[8 - g->left--];
        n--;
    }
    while (n >= 8) {
        store_le64(p, xorshift64(&g->s));
        p += 8;
        n -= 8;
    }
    if (n > 0) {
        store_le64(g->word, xorshift64(&g->s));
        g->left = 8;
        while (n > 0) {
            *p++ = g->word[8 - g->left--];
            n--;
        }
    }
}

#define CHUNK_MAX (256 * 1024)

/* Chunk sizes: mostly 1 B .. 256 KiB uniform, every 8th tiny (1..64 B), every 16th a round
 * size around the 64 KiB boundaries. Sender and receiver use different seeds. */
static size_t next_size(uint64_t *rng, unsigned long i)
{
    static const size_t round_sizes[] = { 1, 1460, 4096, 65535, 65536, 65537, 131072, CHUNK_MAX };
    uint64_t r = xorshift64(rng);
    if (i % 16 == 15)
        return round_sizes[r % (sizeof round_sizes / sizeof round_sizes[0])];
    if (i % 8 == 7)
        return 1 + r % 64;
    return 1 + r % CHUNK_MAX;
}

/* --- bulk ---------------------------------------------------------------------------------- */

struct bulk_args {
    struct sockaddr_storage addr;
    socklen_t len;
    uint64_t bytes;
    unsigned long writes;
};

static void *bulk_sender(void *p)
{
    struct bulk_args *a = p;
    int fd = socket(g_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        FAIL_ERRNO("sender: socket");
    if (connect(fd, (struct sockaddr *)&a->addr, a->len) != 0)
        FAIL_ERRNO("sender: connect to the listener");
    classify(fd, "sender socket");
    unsigned char *buf = malloc(CHUNK_MAX);
    if (!buf)
        fail("sender: out of memory");
    struct stream g = { .s = STREAM_SEED };
    uint64_t rng = 0x5eed5eed12345678ull, sent = 0;
    unsigned long i = 0;
    while (sent < a->bytes) {
        check_deadline("sending");
        size_t n = next_size(&rng, i++);
        if (n > a->bytes - sent)
            n = (size_t)(a->bytes - sent);
        stream_fill(&g, buf, n);
        size_t off = 0;
        while (off < n) { /* short writes: write the rest */
            ssize_t w = write(fd, buf + off, n - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0)
                FAIL_ERRNO("sender: write of %zu bytes at stream offset %llu", n - off,
                           (unsigned long long)(sent + off));
            if (w == 0)
                fail("sender: write returned 0");
            off += (size_t)w;
            a->writes++;
        }
        sent += n;
        atomic_store(&g_prog_a, (long)sent);
    }
    /* Half-close; the receiver answers with the count it received, then closes. */
    if (shutdown(fd, SHUT_WR) != 0)
        FAIL_ERRNO("sender: shutdown(SHUT_WR)");
    unsigned char ack[8];
    size_t got = read_full(fd, ack, sizeof ack, "sender: reading the receiver's count");
    if (got != sizeof ack)
        fail("sender: EOF after %zu of the 8 bytes of the receiver's count", got);
    uint64_t count = 0;
    for (int k = 0; k < 8; k++)
        count |= (uint64_t)ack[k] << (8 * k);
    if (count != a->bytes)
        fail("sender: the receiver reports %llu bytes, %llu were sent", (unsigned long long)count,
             (unsigned long long)a->bytes);
    expect_eof(fd, "sender: after the receiver's count");
    xclose(fd, "sender");
    free(buf);
    return NULL;
}

static void phase_bulk(uint64_t bytes)
{
    phase_begin("bulk", "bytes sent", "bytes received and checked");
    struct bulk_args a = { .bytes = bytes };
    int lfd = make_listener(1, &a.addr, &a.len);
    double t0 = now();
    pthread_t t = spawn(bulk_sender, &a, "bulk sender");
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        FAIL_ERRNO("accept");
    classify(fd, "accepted socket");
    xclose(lfd, "listener");

    unsigned char *buf = malloc(CHUNK_MAX), *want = malloc(CHUNK_MAX);
    if (!buf || !want)
        fail("receiver: out of memory");
    struct stream g = { .s = STREAM_SEED };
    uint64_t rng = 0xfeedfacecafebeefull, got = 0;
    unsigned long reads = 0, i = 0;
    for (;;) {
        check_deadline("receiving");
        size_t n = next_size(&rng, i++);
        ssize_t r = read(fd, buf, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            FAIL_ERRNO("receiver: read of %zu bytes at stream offset %llu", n,
                       (unsigned long long)got);
        reads++;
        if (r == 0)
            break;
        if ((uint64_t)r > bytes - got)
            fail("receiver: %llu bytes received, more than the %llu sent",
                 (unsigned long long)(got + (uint64_t)r), (unsigned long long)bytes);
        stream_fill(&g, want, (size_t)r);
        if (memcmp(buf, want, (size_t)r) != 0) {
            size_t k = 0;
            while (buf[k] == want[k])
                k++;
            fail("receiver: data mismatch at stream offset %llu: got 0x%02x, expected 0x%02x "
                 "(read of %zd bytes starting at offset %llu)",
                 (unsigned long long)(got + k), buf[k], want[k], r, (unsigned long long)got);
        }
        got += (uint64_t)r;
        atomic_store(&g_prog_b, (long)got);
    }
    double t1 = now();
    if (got != bytes)
        fail("receiver: EOF after %llu bytes, %llu were sent", (unsigned long long)got,
             (unsigned long long)bytes);
    unsigned char ack[8];
    store_le64(ack, got);
    write_full(fd, ack, sizeof ack, "receiver: sending the count");
    xclose(fd, "receiver");
    join(t, "bulk sender");
    free(buf);
    free(want);
    phase_end();
    double s = t1 - t0;
    printf("bulk: ok %llu bytes in %.2f s = %.1f MB/s (%lu writes, %lu reads, every byte "
           "checked)\n",
           (unsigned long long)bytes, s, (double)bytes / s / 1e6, a.writes, reads);
}

/* --- short --------------------------------------------------------------------------------- */

/*
 * Who closes first. On Linux the side that closes first goes to TIME-WAIT for 60 s. If that were
 * the client, each connection would hold its ephemeral client port for 60 s, and the 28,232
 * ports of the default ip_local_port_range (32768-60999) would run out after ~28k connections
 * (connect: EADDRNOTAVAIL) -- unless net.ipv4.tcp_tw_reuse lets connect() take over TIME-WAIT
 * ports (Linux's default, 2, does so on loopback for entries older than 1 s; with it a
 * client-first variant of this phase also passes natively, but that is a Linux-specific rescue
 * that depends on a sysctl and that a user-level stack would have to copy). So the SERVER
 * closes first: the TIME-WAIT entries sit on the server's side, keyed (listener port,
 * client port); they hold no ephemeral port, the client's port is free as soon as its own FIN
 * is acknowledged, and when a later connection picks the same client port again (it will:
 * 100,000 connections cycle through the range several times within 60 s) its SYN meets the
 * server's TIME-WAIT entry, which Linux accepts as a new incarnation of the connection (newer
 * timestamp or higher sequence number; RFC 1122 4.2.2.13, RFC 6191). This is what HTTP
 * servers do, and it works at 100,000 connections with no sysctl. A library OS must do the
 * same: accept a SYN on a tuple in TIME-WAIT, or have connect() skip ports whose tuple is still
 * in TIME-WAIT. The server reads the whole 16-byte request before it closes, so its close sends
 * FIN, not RST.
 */

struct short_state {
    struct sockaddr_storage addr;
    socklen_t len;
    int lfd;
    unsigned long n;
    atomic_ulong next; /* next index a client takes */
    unsigned char *seen; /* per index, set by the server */
};

static void *short_server(void *p)
{
    struct short_state *st = p;
    for (unsigned long i = 0; i < st->n; i++) {
        check_deadline("accepting short connections");
        int fd = accept4(st->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            FAIL_ERRNO("server: accept of connection %lu", i);
        if (i == 0 || i % 1024 == 0)
            classify(fd, "accepted socket");
        unsigned char m[MSG_LEN];
        size_t got = read_full(fd, m, sizeof m, "server: reading a request");
        if (got != sizeof m)
            fail("server: EOF after %zu of the 16 bytes of a request (accept #%lu)", got, i);
        uint64_t idx = msg_check(m, MAGIC_REQ, "server: request");
        if (idx >= st->n)
            fail("server: request with index %llu, only %lu connections",
                 (unsigned long long)idx, st->n);
        if (st->seen[idx])
            fail("server: a second request with index %llu", (unsigned long long)idx);
        st->seen[idx] = 1;
        msg_make(m, MAGIC_REP, idx);
        write_full(fd, m, sizeof m, "server: reply");
        xclose(fd, "server: connection"); /* the server closes first: see above */
        atomic_fetch_add(&g_prog_a, 1);
    }
    return NULL;
}

static void *short_client(void *p)
{
    struct short_state *st = p;
    for (;;) {
        unsigned long idx = atomic_fetch_add(&st->next, 1);
        if (idx >= st->n)
            return NULL;
        if (idx % 64 == 0)
            check_deadline("making short connections");
        char what[96];
        int fd = socket(g_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            FAIL_ERRNO("client: socket for connection %lu", idx);
        if (connect(fd, (struct sockaddr *)&st->addr, st->len) != 0)
            FAIL_ERRNO("client: connect #%lu", idx);
        if (idx == 0 || idx % 1024 == 0)
            classify(fd, "client socket");
        unsigned char m[MSG_LEN];
        msg_make(m, MAGIC_REQ, idx);
        snprintf(what, sizeof what, "client: connection %lu", idx);
        write_full(fd, m, sizeof m, what);
        size_t got = read_full(fd, m, sizeof m, what);
        if (got != sizeof m)
            fail("client: connection %lu: EOF after %zu of the 16 bytes of the reply", idx, got);
        uint64_t r = msg_check(m, MAGIC_REP, what);
        if (r != idx)
            fail("client: connection %lu got the reply for connection %llu", idx,
                 (unsigned long long)r);
        expect_eof(fd, what);
        xclose(fd, what);
        atomic_fetch_add(&g_prog_b, 1);
    }
}

static void phase_short(unsigned long n)
{
    phase_begin("short", "connections served", "connections completed by clients");
    struct short_state st = { .n = n };
    atomic_init(&st.next, 0);
    st.seen = calloc(n ? n : 1, 1);
    if (!st.seen)
        fail("out of memory");
    st.lfd = make_listener(BACKLOG, &st.addr, &st.len);
    double t0 = now();
    pthread_t srv = spawn(short_server, &st, "short server");
    pthread_t *cl = calloc((size_t)g_clients, sizeof *cl);
    if (!cl)
        fail("out of memory");
    for (int i = 0; i < g_clients; i++)
        cl[i] = spawn(short_client, &st, "short client");
    for (int i = 0; i < g_clients; i++)
        join(cl[i], "short client");
    join(srv, "short server");
    double t1 = now();
    for (unsigned long i = 0; i < n; i++)
        if (!st.seen[i])
            fail("the server never saw connection %lu", i);
    xclose(st.lfd, "listener");
    free(st.seen);
    free(cl);
    phase_end();
    printf("short: ok %lu connections in %.2f s = %.0f connections/s (%d client threads, "
           "1 server thread, server closes first)\n",
           n, t1 - t0, (double)n / (t1 - t0), g_clients);
}

/* --- burst --------------------------------------------------------------------------------- */

static void raise_nofile(unsigned long need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        FAIL_ERRNO("getrlimit(RLIMIT_NOFILE)");
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            FAIL_ERRNO("setrlimit(RLIMIT_NOFILE) soft to the hard limit %llu",
                       (unsigned long long)rl.rlim_max);
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need)
        fail("RLIMIT_NOFILE is %llu (hard limit), %lu fds are needed: raise it (ulimit -Hn)",
             (unsigned long long)rl.rlim_cur, need);
}

struct burst_state {
    int lfd;
    unsigned long n;
    int *acc; /* accepted fds */
    unsigned char *seen;
};

/* Accepts all N, then answers each request, then waits for each client's EOF and closes. */
static void *burst_server(void *p)
{
    struct burst_state *st = p;
    for (unsigned long i = 0; i < st->n; i++) {
        check_deadline("accepting the burst");
        int fd = accept4(st->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            FAIL_ERRNO("server: accept #%lu of %lu", i, st->n);
        classify(fd, "accepted socket");
        st->acc[i] = fd;
        atomic_fetch_add(&g_prog_b, 1);
    }
    for (unsigned long i = 0; i < st->n; i++) {
        check_deadline("answering the burst");
        unsigned char m[MSG_LEN];
        size_t got = read_full(st->acc[i], m, sizeof m, "server: reading a request");
        if (got != sizeof m)
            fail("server: EOF after %zu of the 16 bytes of a request (accept #%lu)", got, i);
        uint64_t idx = msg_check(m, MAGIC_REQ, "server: request");
        if (idx >= st->n || st->seen[idx])
            fail("server: request with index %llu (duplicate or out of range)",
                 (unsigned long long)idx);
        st->seen[idx] = 1;
        msg_make(m, MAGIC_REP, idx);
        write_full(st->acc[i], m, sizeof m, "server: reply");
    }
    for (unsigned long i = 0; i < st->n; i++) {
        check_deadline("waiting for the clients' EOF");
        expect_eof(st->acc[i], "server: after the request");
        xclose(st->acc[i], "server: connection");
    }
    return NULL;
}

struct burst_client {
    int fd;
    unsigned got; /* reply bytes read */
    unsigned char reply[MSG_LEN];
};

/* Polls the clients in idx[0..*count) for events; calls step(i) for each ready one, which
 * returns 1 when that client is done with this stage. Compacts idx; loops until *count == 0. */
static void burst_wait(struct burst_client *c, unsigned long *idx, unsigned long count,
                       short events, int (*step)(struct burst_client *, unsigned long, short),
                       const char *stage, struct pollfd *pfd)
{
    while (count > 0) {
        check_deadline(stage);
        for (unsigned long k = 0; k < count; k++)
            pfd[k] = (struct pollfd){ .fd = c[idx[k]].fd, .events = events };
        int r = poll(pfd, count, 100);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            FAIL_ERRNO("poll (%s, %lu sockets)", stage, count);
        unsigned long keep = 0;
        for (unsigned long k = 0; k < count; k++) {
            if (pfd[k].revents & POLLNVAL)
                fail("%s: client %lu: POLLNVAL", stage, idx[k]);
            if (pfd[k].revents == 0 || !step(c, idx[k], pfd[k].revents))
                idx[keep++] = idx[k];
        }
        count = keep;
    }
}

static int burst_connected(struct burst_client *c, unsigned long i, short rev)
{
    int err = -1;
    socklen_t l = sizeof err;
    if (getsockopt(c[i].fd, SOL_SOCKET, SO_ERROR, &err, &l) != 0)
        FAIL_ERRNO("client %lu: getsockopt(SO_ERROR)", i);
    if (err != 0)
        fail("client %lu: connect failed: SO_ERROR %s (%d), poll revents 0x%x", i, strerror(err),
             err, (unsigned)rev);
    if (!(rev & POLLOUT))
        return 0; /* POLLHUP etc. without an error yet: look again */
    /* The request goes out at once: 16 bytes into an empty send buffer are never short. */
    unsigned char m[MSG_LEN];
    msg_make(m, MAGIC_REQ, i);
    ssize_t w = write(c[i].fd, m, sizeof m);
    if (w != (ssize_t)sizeof m) {
        if (w < 0)
            FAIL_ERRNO("client %lu: write of the request", i);
        fail("client %lu: short write of the request: %zd of 16 bytes", i, w);
    }
    atomic_fetch_add(&g_prog_a, 1);
    return 1;
}

static int burst_replied(struct burst_client *c, unsigned long i, short rev)
{
    (void)rev;
    ssize_t r = read(c[i].fd, c[i].reply + c[i].got, MSG_LEN - c[i].got);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (r < 0)
        FAIL_ERRNO("client %lu: read of the reply", i);
    if (r == 0)
        fail("client %lu: EOF after %u of the 16 bytes of the reply", i, c[i].got);
    c[i].got += (unsigned)r;
    if (c[i].got < MSG_LEN)
        return 0;
    char what[64];
    snprintf(what, sizeof what, "client %lu: reply", i);
    uint64_t idx = msg_check(c[i].reply, MAGIC_REP, what);
    if (idx != i)
        fail("client %lu got the reply for client %llu", i, (unsigned long long)idx);
    /* Half-close: the server sees EOF, checks it and closes. */
    if (shutdown(c[i].fd, SHUT_WR) != 0)
        FAIL_ERRNO("client %lu: shutdown(SHUT_WR)", i);
    return 1;
}

static int burst_eof(struct burst_client *c, unsigned long i, short rev)
{
    (void)rev;
    char b[64];
    ssize_t r = read(c[i].fd, b, sizeof b);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (r < 0)
        FAIL_ERRNO("client %lu: read where EOF was expected", i);
    if (r > 0)
        fail("client %lu: %zd unexpected bytes where EOF was expected", i, r);
    xclose(c[i].fd, "client");
    c[i].fd = -1;
    return 1;
}

static void phase_burst(unsigned long n)
{
    phase_begin("burst", "connects completed", "connections accepted");
    if (n == 0 || n > BACKLOG)
        fail("burst N must be 1..%d (the listen backlog): all connects complete before any "
             "accept only while they fit in the backlog",
             BACKLOG);
    raise_nofile(2 * n + 64);
    struct sockaddr_storage addr;
    socklen_t len;
    struct burst_state st = { .n = n };
    st.lfd = make_listener(BACKLOG, &addr, &len);
    struct burst_client *c = calloc(n, sizeof *c);
    unsigned long *idx = calloc(n, sizeof *idx);
    struct pollfd *pfd = calloc(n, sizeof *pfd);
    st.acc = calloc(n, sizeof *st.acc);
    st.seen = calloc(n, 1);
    if (!c || !idx || !pfd || !st.acc || !st.seen)
        fail("out of memory");

    double t0 = now();
    unsigned long inprogress = 0;
    for (unsigned long i = 0; i < n; i++) {
        int fd = socket(g_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
            FAIL_ERRNO("client %lu: socket (%lu fds open)", i, 2 + i);
        classify(fd, "client socket");
        if (connect(fd, (struct sockaddr *)&addr, len) == 0)
            ; /* completed at once: allowed, Linux says EINPROGRESS */
        else if (errno == EINPROGRESS)
            inprogress++;
        else
            FAIL_ERRNO("client %lu: non-blocking connect", i);
        c[i].fd = fd;
        idx[i] = i;
    }
    /* Nobody accepts yet: every connect must complete from the backlog alone. */
    burst_wait(c, idx, n, POLLOUT, burst_connected, "waiting for the connects to complete", pfd);
    double t1 = now();

    pthread_t srv = spawn(burst_server, &st, "burst server");
    for (unsigned long i = 0; i < n; i++)
        idx[i] = i;
    burst_wait(c, idx, n, POLLIN, burst_replied, "waiting for the replies", pfd);
    for (unsigned long i = 0; i < n; i++)
        idx[i] = i;
    burst_wait(c, idx, n, POLLIN, burst_eof, "waiting for the server's EOF", pfd);
    join(srv, "burst server");
    double t2 = now();
    for (unsigned long i = 0; i < n; i++)
        if (!st.seen[i])
            fail("the server never saw client %lu", i);
    xclose(st.lfd, "listener");
    free(c);
    free(idx);
    free(pfd);
    free(st.acc);
    free(st.seen);
    phase_end();
    printf("burst: ok %lu connections (%lu EINPROGRESS, all SO_ERROR 0 before any accept) "
           "connected in %.3f s, exchanged and closed in %.3f s total\n",
           n, inprogress, t1 - t0, t2 - t0);
}

/* --- main ---------------------------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr, "usage: tcp_stress [-t SECONDS] [-c CLIENTS] [-6] bulk [BYTES] | short [N] | "
                    "burst [N] | all\n"
                    "  (BYTES takes K, M, G suffixes; STRESS_TIMEOUT sets the default of -t)\n");
    exit(2);
}

static unsigned long long parse_count(const char *s, int suffixes)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || s[0] == '-')
        usage();
    if (suffixes && *end) {
        int shift = *end == 'K' || *end == 'k' ? 10 : *end == 'M' || *end == 'm' ? 20
                  : *end == 'G' || *end == 'g' ? 30 : -1;
        if (shift < 0 || end[1])
            usage();
        v <<= shift;
    } else if (*end) {
        usage();
    }
    return v;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *env = getenv("STRESS_TIMEOUT");
    if (env && *env)
        g_timeout = (int)parse_count(env, 0);
    int opt;
    while ((opt = getopt(argc, argv, "+t:c:6")) != -1) {
        switch (opt) {
        case 't': g_timeout = (int)parse_count(optarg, 0); break;
        case 'c': g_clients = (int)parse_count(optarg, 0); break;
        case '6': g_family = AF_INET6; break;
        default: usage();
        }
    }
    if (g_timeout <= 0 || g_clients <= 0 || g_clients > 64 || optind >= argc || argc - optind > 2)
        usage();
    const char *phase = argv[optind];
    const char *arg = optind + 1 < argc ? argv[optind + 1] : NULL;

    struct sigaction sa = { .sa_handler = on_alarm };
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGALRM, &sa, NULL) != 0)
        FAIL_ERRNO("sigaction(SIGALRM)");
    signal(SIGPIPE, SIG_IGN); /* a write to a reset connection must fail with EPIPE, visibly */
    printf("#shim=%d\n", shim_mapped());

    if (strcmp(phase, "bulk") == 0) {
        uint64_t bytes = arg ? parse_count(arg, 1) : 1ull << 30;
        phase_bulk(bytes);
    } else if (strcmp(phase, "short") == 0) {
        phase_short(arg ? (unsigned long)parse_count(arg, 0) : 100000);
    } else if (strcmp(phase, "burst") == 0) {
        phase_burst(arg ? (unsigned long)parse_count(arg, 0) : 1000);
    } else if (strcmp(phase, "all") == 0 && !arg) {
        phase_bulk(1ull << 30);
        phase_short(100000);
        phase_burst(1000);
    } else {
        usage();
    }
    return 0;
}
