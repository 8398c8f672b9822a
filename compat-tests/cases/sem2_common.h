/* Helpers of the second series of socket-semantics programs (sem2_*.c), on
 * top of sem_common.h: epoll_wait printers, a listener whose accept queue is
 * full (connects to it stay in progress), the ephemeral port range, a thread
 * that runs one blocking call, a thread that signals another one while it
 * sleeps in the kernel, and a TCP pair whose send path is filled until it no
 * longer moves. Only ew() and ew_collect() print. */
#ifndef COMPAT_SEM2_COMMON_H
#define COMPAT_SEM2_COMMON_H

#include "sem_common.h"

#include <sys/eventfd.h>
#include <limits.h>

/* epoll_ctl with events and data.u64. */
static __attribute__((unused)) int ctl(int ep, int op, int fd, uint32_t events, uint64_t data)
{
    struct epoll_event e = {.events = events, .data.u64 = data};
    return epoll_ctl(ep, op, fd, &e);
}

/* Format epoll events "{data:EVENTS}..." sorted by data (or in the order
 * returned when `sorted` is 0). */
static __attribute__((unused)) const char *evlist(struct epoll_event *ev, long n, int sorted)
{
    static char b[1024];
    if (sorted)
        for (long i = 1; i < n; i++)
            for (long j = i; j > 0 && ev[j - 1].data.u64 > ev[j].data.u64; j--) {
                struct epoll_event t = ev[j];
                ev[j] = ev[j - 1];
                ev[j - 1] = t;
            }
    b[0] = 0;
    for (long i = 0; i < n; i++)
        snprintf(b + strlen(b), sizeof b - strlen(b), " {%llu:%s}",
                 (unsigned long long)ev[i].data.u64, evname(ev[i].events));
    return b;
}

/* epoll_wait, printed with events sorted by data. A timeout of 0 prints "0",
 * up to 10 ms "10ms", longer ones "long" (used only where an event is due). */
static __attribute__((unused)) long ew(int ep, int max, int timeout)
{
    struct epoll_event ev[32];
    long n = epoll_wait(ep, ev, max, timeout);
    if (n < 0) {
        O("epoll_wait(max=%d) = -1 %s", max, en(errno));
        return n;
    }
    O("epoll_wait(max=%d, %s) = %ld%s", max,
      timeout == 0 ? "0" : timeout < 0 ? "-1" : timeout <= 10 ? "10ms" : "long", n,
      evlist(ev, n, 1));
    return n;
}

/* epoll_wait until events for `want` distinct data values came (up to 5 s),
 * then print them merged and sorted by data; for edge-triggered entries whose
 * edges may arrive one by one. */
static __attribute__((unused)) void ew_collect(int ep, int want)
{
    struct epoll_event all[32];
    long n = 0;
    for (int k = 0; k < 500 && n < want; k++) {
        struct epoll_event ev[32];
        long r = epoll_wait(ep, ev, 32, 10);
        for (long i = 0; i < r; i++) {
            long j = 0;
            while (j < n && all[j].data.u64 != ev[i].data.u64)
                j++;
            if (j == n)
                all[n++] = ev[i];
            else
                all[j].events |= ev[i].events;
        }
    }
    O("collected %ld%s", n, evlist(all, n, 1));
}

/* A listener with backlog 0 whose accept queue is full (one connection,
 * *queued, completed and never accepted): further SYNs are dropped, so a
 * connect to it stays in progress (the SYN is retried after about 1 s). */
static __attribute__((unused)) int full_listener(int fam, addr_t *a, int *queued)
{
    int l = (int)MUST(socket(fam, SOCK_STREAM, 0));
    loop_addr(fam, a, 0);
    MUST(bind(l, SA(a), a->len));
    MUST(listen(l, 0));
    local_of(l, a);
    *queued = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(connect(*queued, SA(a), a->len));
    return l;
}

/* /proc/sys/net/ipv4/ip_local_port_range (also used for IPv6). */
static __attribute__((unused)) void port_range(int *lo, int *hi)
{
    *lo = 32768;
    *hi = 60999;
    int fd = open("/proc/sys/net/ipv4/ip_local_port_range", O_RDONLY);
    if (fd < 0)
        return;
    char b[64];
    long n = read(fd, b, sizeof b - 1);
    close(fd);
    if (n <= 0)
        return;
    b[n] = 0;
    sscanf(b, "%d %d", lo, hi);
}

static __attribute__((unused)) long proc_long(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    char b[64];
    long n = read(fd, b, sizeof b - 1);
    close(fd);
    if (n <= 0)
        return -1;
    b[n] = 0;
    return atol(b);
}

/* Sleep `ms`, then: is the call whose thread sets `done` still blocked? */
static __attribute__((unused)) int still_blocked_after(atomic_int *done, int ms)
{
    usleep((useconds_t)ms * 1000);
    return !atomic_load(done);
}

/* ---- a thread that runs one blocking call ---- */

struct bcall {
    long (*fn)(struct bcall *);
    int fd;
    int flags;
    addr_t addr;
    char buf[256];
    long want;
    void *p;
    /* results */
    pid_t tid;
    atomic_int started;
    atomic_int done;
    long ret;
    int err;
    char note[256];
};

static __attribute__((unused)) void *bcall_thread(void *arg)
{
    struct bcall *b = arg;
    b->tid = gettid();
    atomic_store(&b->started, 1);
    errno = 0;
    b->ret = b->fn(b);
    b->err = errno;
    atomic_store(&b->done, 1);
    return NULL;
}

/* Start the call in a thread and return once it sleeps in the kernel. */
static __attribute__((unused)) void bcall_start(struct bcall *b, pthread_t *th)
{
    atomic_store(&b->started, 0);
    atomic_store(&b->done, 0);
    pthread_create(th, NULL, bcall_thread, b);
    while (!atomic_load(&b->started))
        usleep(500);
    wait_sleeping(b->tid);
}

/* "name = value" or "name = -1 ERR" of a finished call. */
static __attribute__((unused)) void bcall_report(struct bcall *b, const char *name)
{
    if (b->ret < 0)
        O("%s = -1 %s", name, en(b->err));
    else
        O("%s = %ld", name, b->ret);
}

/* ---- a thread that signals a blocked thread ---- */

struct sigger {
    pid_t tid;          /* the target, sleeping in the call under test */
    pthread_t target;
    int sig;
    atomic_int done;    /* set by the target once its call returned */
    volatile sig_atomic_t *hits; /* the handler's counter */
    void (*act)(struct sigger *); /* after two handled signals, once */
    void *p;
    int acted;
};

static __attribute__((unused)) void *sigger_thread(void *arg)
{
    struct sigger *h = arg;
    for (int i = 0; i < 1000 && !atomic_load(&h->done); i++) {
        wait_sleeping(h->tid);
        if (atomic_load(&h->done))
            break;
        pthread_kill(h->target, h->sig);
        usleep(5000);
        if (!h->acted && h->act && *h->hits >= 2 && tid_sleeping(h->tid)) {
            h->acted = 1;
            h->act(h);
        }
    }
    return NULL;
}

/* Start signalling the calling thread; call sigger_stop after the call. */
static __attribute__((unused)) void sigger_start(struct sigger *h, pthread_t *th)
{
    h->tid = gettid();
    h->target = pthread_self();
    atomic_store(&h->done, 0);
    h->acted = 0;
    pthread_create(th, NULL, sigger_thread, h);
}

static __attribute__((unused)) void sigger_stop(struct sigger *h, pthread_t th)
{
    atomic_store(&h->done, 1);
    pthread_join(th, NULL);
}

/* A connected TCP pair with small buffers (client send, server receive), so
 * that filling it is quick and stays put once the server's window closed. */
static __attribute__((unused)) void tcp_pair_small(int fam, int *cli, int *srv)
{
    tcp_pair(fam, cli, srv);
    int small = 4096;
    MUST(setsockopt(*cli, SOL_SOCKET, SO_SNDBUF, &small, sizeof small));
    MUST(setsockopt(*srv, SOL_SOCKET, SO_RCVBUF, &small, sizeof small));
}

/* Fill the path from `c` to its peer (which does not read) until sends are
 * refused, waiting until the sender's and receiver's queues settle. */
static __attribute__((unused)) long fill_settled(int c)
{
    long total = 0;
    int quiet = 0;
    for (int round = 0; round < 100 && quiet < 3; round++) {
        int eagain;
        long n = fill_until_eagain(c, 0, &eagain);
        total += n;
        quiet = n == 0 ? quiet + 1 : 0;
        usleep(20000);
    }
    return total;
}

#endif
