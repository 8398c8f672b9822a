/* Helpers for the socket-semantics programs (*_sem.c): per-family case
 * names, event decoding, waiting helpers, signal-from-another-thread and a
 * watchdog. Everything here is silent; observations go through O()/T(). */
#ifndef COMPAT_SEM_COMMON_H
#define COMPAT_SEM_COMMON_H

#include "net_common.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/time.h>
#include <linux/sockios.h>

/* Case name with the family as suffix ("tcp_x_v4"). Never freed. */
static __attribute__((unused)) const char *nm(const char *base, int fam)
{
    char b[160];
    snprintf(b, sizeof b, "%s_%s", base, fam == AF_INET ? "v4" : "v6");
    return strdup(b);
}

/* A watchdog: the program dies (and the harness reports it) instead of
 * hanging. SIGALRM's default action terminates. */
static __attribute__((unused)) void watchdog(int secs)
{
    signal(SIGALRM, SIG_DFL);
    alarm((unsigned)secs);
}

/* poll revents / epoll events as names. */
static __attribute__((unused)) const char *evname(uint32_t e)
{
    static char bufs[8][160];
    static int k;
    char *b = bufs[k++ & 7];
    static const struct flag_name t[] = {{POLLIN, "IN"},      {POLLPRI, "PRI"},   {POLLOUT, "OUT"},
             {POLLERR, "ERR"},    {POLLHUP, "HUP"},   {POLLNVAL, "NVAL"},
             {POLLRDNORM, "RDNORM"}, {POLLRDBAND, "RDBAND"}, {POLLWRNORM, "WRNORM"},
             {POLLWRBAND, "WRBAND"}, {POLLRDHUP, "RDHUP"}};
    return flag_names(e, t, sizeof t / sizeof t[0], b, 160);
}

/* poll one fd for `events` with `ms` timeout; prints "poll(what) = n revents=..." */
static __attribute__((unused)) int poll1(const char *what, int fd, short events, int ms)
{
    struct pollfd p = {.fd = fd, .events = events};
    int r = poll(&p, 1, ms);
    if (r < 0)
        O("poll(%s) = -1 %s", what, en(errno));
    else
        O("poll(%s) = %d revents=%s", what, r, evname((uint16_t)p.revents));
    return r < 0 ? r : p.revents;
}

/* Silent: wait (up to 5 s) until fd reports any of `events`. Returns revents. */
static __attribute__((unused)) int wait_ev(int fd, short events)
{
    for (int i = 0; i < 500; i++) {
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, 10);
        if (r > 0 && (p.revents & (events | POLLERR | POLLHUP | POLLNVAL))) {
            if ((events & POLLERR) && !(p.revents & POLLERR))
                continue;
            return p.revents;
        }
    }
    return 0;
}

/* Silent: wait until a pending socket error (e.g. after RST) is visible. */
static __attribute__((unused)) int wait_err(int fd)
{
    for (int i = 0; i < 500; i++) {
        struct pollfd p = {.fd = fd, .events = 0};
        if (poll(&p, 1, 10) > 0 && (p.revents & POLLERR))
            return 1;
    }
    return 0;
}

/* Silent: wait until FIONREAD reports at least n bytes (up to 5 s). */
static __attribute__((unused)) int wait_bytes(int fd, int n)
{
    for (int i = 0; i < 500; i++) {
        int v = 0;
        if (ioctl(fd, FIONREAD, &v) == 0 && v >= n)
            return 1;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        poll(&p, 1, 10);
    }
    return 0;
}

/* Connected TCP pair; optional listener kept open (*lp) or closed (lp NULL). */
static __attribute__((unused)) void tcp_pair_l(int fam, int *cli, int *srv, int *lp, addr_t *la)
{
    addr_t a;
    int l = listener(fam, SOCK_STREAM, &a);
    *cli = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(connect(*cli, SA(&a), a.len));
    *srv = (int)MUST(accept(l, NULL, NULL));
    if (la)
        *la = a;
    if (lp)
        *lp = l;
    else
        close(l);
}

/* Bound UDP socket on the loopback, address in *a. */
static __attribute__((unused)) int udp_sock(int fam, addr_t *a)
{
    int s = (int)MUST(socket(fam, SOCK_DGRAM, 0));
    loop_addr(fam, a, 0);
    MUST(bind(s, SA(a), a->len));
    local_of(s, a);
    return s;
}

/* Fill a socket's send path with non-blocking sends until EAGAIN.
 * Returns bytes sent; *eagain set when EAGAIN/EWOULDBLOCK ended it. */
static __attribute__((unused)) long fill_until_eagain(int fd, int use_write, int *eagain)
{
    static char chunk[16384];
    long total = 0;
    *eagain = 0;
    for (int i = 0; i < 100000; i++) {
        long n = use_write ? write(fd, chunk, sizeof chunk)
                           : send(fd, chunk, sizeof chunk, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                *eagain = 1;
            break;
        }
        total += n;
    }
    return total;
}

/* Silent: read until `want` bytes arrived (or EOF/error), waiting up to 5 s
 * overall for each chunk. Returns the byte count. */
static __attribute__((unused)) long drain(int fd, long want)
{
    static char buf[65536];
    long got = 0;
    while (got < want) {
        if (!(wait_ev(fd, POLLIN) & (POLLIN | POLLHUP | POLLERR)))
            break;
        long n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n <= 0)
            break;
        got += n;
    }
    return got;
}

static __attribute__((unused)) int sockopt_int(int fd, int level, int opt)
{
    int v = -12345;
    socklen_t l = sizeof v;
    if (getsockopt(fd, level, opt, &v, &l) < 0)
        return -errno - 100000;
    return v;
}

static __attribute__((unused)) int in_ephemeral(const addr_t *a)
{
    int p = port_of(a);
    return p >= 32768 && p <= 60999;
}

/* Is thread `tid` asleep in the kernel (state S)? */
static __attribute__((unused)) int tid_sleeping(pid_t tid)
{
    char path[64], st[512];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", (int)tid);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return 0;
    long n = read(fd, st, sizeof st - 1);
    close(fd);
    if (n <= 0)
        return 0;
    st[n] = 0;
    char *rp = strrchr(st, ')');
    return rp && rp[1] == ' ' && rp[2] == 'S';
}

/* Silent: wait (up to 5 s) until thread `tid` sleeps in the kernel, then a
 * little longer so it is really inside the call under test. */
static __attribute__((unused)) void wait_sleeping(pid_t tid)
{
    for (int i = 0; i < 5000 && !tid_sleeping(tid); i++)
        usleep(1000);
    usleep(3000);
}

#endif
