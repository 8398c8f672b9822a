/* Threads and blocking sockets over 127.0.0.1 and ::1 (suffix _v4/_v6):
 * several threads doing blocking send/recv on their own connections, a
 * blocking recv/accept interrupted by a signal (EINTR without SA_RESTART,
 * transparently restarted with SA_RESTART), accept blocked in one thread
 * while another connects, blocked calls woken by shutdown, reset, EOF, data
 * or a drained peer. Helper threads act only once the blocked thread sleeps
 * in the kernel, and keep signalling until the blocked call returns, so no
 * observation depends on timing. Threads print nothing; results are printed
 * after pthread_join. */
#include "sem_common.h"

static volatile sig_atomic_t hits;
static void on_usr1(int sig)
{
    (void)sig;
    hits++;
}

/* ---- several threads, own connections ---- */

struct conn {
    int fam;
    int idx;
    long result; /* 1 = all echoed correctly */
};

static void *echo_pair(void *arg)
{
    struct conn *k = arg;
    int c, s;
    tcp_pair(k->fam, &c, &s);
    struct timeval tv = {5, 0};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    k->result = 1;
    for (int round = 0; round < 50; round++) {
        char msg[32], got[32];
        int n = snprintf(msg, sizeof msg, "t%d-r%d", k->idx, round);
        if (send(c, msg, (size_t)n, 0) != n || recv(s, got, (size_t)n, MSG_WAITALL) != n ||
            send(s, got, (size_t)n, 0) != n || recv(c, got, (size_t)n, MSG_WAITALL) != n ||
            memcmp(msg, got, (size_t)n) != 0) {
            k->result = 0;
            break;
        }
    }
    close(c);
    close(s);
    return NULL;
}

static void several(int fam)
{
    CASE(nm("threads_blocking_echo_own_connections", fam));
    pthread_t th[4];
    struct conn k[4];
    for (int i = 0; i < 4; i++) {
        k[i] = (struct conn){fam, i, -1};
        pthread_create(&th[i], NULL, echo_pair, &k[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        O("thread %d: %s", i, k[i].result == 1 ? "50 rounds echoed" : "FAILED");
    }
}

/* ---- signals against a blocked call in the main thread ---- */

struct sig_helper {
    pid_t tid;
    pthread_t target;
    atomic_int done;     /* set by the main thread when its call returned */
    int send_fd;         /* >= 0: after two handled signals, send "late" here */
    int connect_fam;     /* != 0: after two handled signals, connect to addr */
    addr_t addr;
    int made;            /* the socket connect_fam made */
};

static void *sig_helper_thread(void *arg)
{
    struct sig_helper *h = arg;
    int acted = 0;
    for (int i = 0; i < 1000 && !atomic_load(&h->done); i++) {
        wait_sleeping(h->tid);
        if (atomic_load(&h->done))
            break;
        pthread_kill(h->target, SIGUSR1);
        usleep(5000);
        if (!acted && hits >= 2 && tid_sleeping(h->tid)) {
            acted = 1;
            if (h->send_fd >= 0)
                send(h->send_fd, "late", 4, MSG_NOSIGNAL);
            if (h->connect_fam) {
                h->made = socket(h->connect_fam, SOCK_STREAM, 0);
                connect(h->made, SA(&h->addr), h->addr.len);
            }
        }
    }
    return NULL;
}

static void start_helper(struct sig_helper *h, pthread_t *th)
{
    h->tid = gettid();
    h->target = pthread_self();
    atomic_store(&h->done, 0);
    pthread_create(th, NULL, sig_helper_thread, h);
}

static void stop_helper(struct sig_helper *h, pthread_t th)
{
    atomic_store(&h->done, 1);
    pthread_join(th, NULL);
}

static void signals_(int fam)
{
    int c, s;
    char buf[16];
    pthread_t th;
    long n;

    CASE(nm("thread_signal_eintr_recv_no_restart", fam));
    tcp_pair(fam, &c, &s);
    on_signal(SIGUSR1, on_usr1, 0);
    hits = 0;
    struct sig_helper h = {.send_fd = -1};
    start_helper(&h, &th);
    T(recv(s, buf, sizeof buf, 0));
    stop_helper(&h, th);
    O("handler ran: %s", hits > 0 ? "yes" : "no");
    T(send(c, "after", 5, 0));
    n = T(recv(s, buf, sizeof buf, 0)); /* the connection is intact */
    show("got", buf, n);
    close(c);
    close(s);

    CASE(nm("thread_signal_restart_recv_sa_restart", fam));
    tcp_pair(fam, &c, &s);
    on_signal(SIGUSR1, on_usr1, SA_RESTART);
    hits = 0;
    h = (struct sig_helper){.send_fd = c};
    start_helper(&h, &th);
    n = T(recv(s, buf, sizeof buf, 0));
    stop_helper(&h, th);
    show("got", buf, n);
    O("handler ran: %s", hits > 0 ? "yes" : "no");
    close(c);
    close(s);

    CASE(nm("thread_signal_eintr_accept_no_restart", fam));
    addr_t a;
    int l = listener(fam, SOCK_STREAM, &a);
    on_signal(SIGUSR1, on_usr1, 0);
    hits = 0;
    h = (struct sig_helper){.send_fd = -1};
    start_helper(&h, &th);
    T(accept(l, NULL, NULL));
    stop_helper(&h, th);
    O("handler ran: %s", hits > 0 ? "yes" : "no");

    CASE(nm("thread_signal_restart_accept_sa_restart", fam));
    on_signal(SIGUSR1, on_usr1, SA_RESTART);
    hits = 0;
    h = (struct sig_helper){.send_fd = -1, .connect_fam = fam, .addr = a, .made = -1};
    start_helper(&h, &th);
    int acc = accept(l, NULL, NULL);
    int acc_err = errno;
    stop_helper(&h, th);
    O("accept: %s", acc >= 0 ? "fd" : en(acc_err));
    O("accepted >= 0: %d handler ran: %s", acc >= 0, hits > 0 ? "yes" : "no");
    if (acc >= 0) {
        addr_t pa, ca;
        peer_of(acc, &pa);
        local_of(h.made, &ca);
        O("peer == helper's socket: %d", same_addr(&pa, &ca));
        close(acc);
    }
    close(h.made);
    close(l);

    CASE(nm("thread_signal_eintr_recv_rcvtimeo_even_with_restart", fam));
    /* SA_RESTART but SO_RCVTIMEO set: Linux does not restart, EINTR */
    tcp_pair(fam, &c, &s);
    struct timeval tv = {5, 0};
    T(setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv));
    on_signal(SIGUSR1, on_usr1, SA_RESTART);
    hits = 0;
    h = (struct sig_helper){.send_fd = -1};
    start_helper(&h, &th);
    T(recv(s, buf, sizeof buf, 0));
    stop_helper(&h, th);
    O("handler ran: %s", hits > 0 ? "yes" : "no");
    close(c);
    close(s);
    signal(SIGUSR1, SIG_IGN);
}

/* ---- blocked in a helper thread, woken by the main thread ---- */

struct blocked {
    int fd;
    int op; /* 0 recv, 1 accept, 2 recvfrom, 3 send-big, 4 epoll_wait, 5 poll, 6 connect */
    pid_t tid;
    atomic_int started;
    long ret;
    int err;
    char buf[64];
    addr_t addr;
    long want;
};

static char bigbuf[4 << 20];

static void *blocked_thread(void *arg)
{
    struct blocked *b = arg;
    b->tid = gettid();
    atomic_store(&b->started, 1);
    errno = 0;
    switch (b->op) {
    case 0:
        b->ret = recv(b->fd, b->buf, sizeof b->buf, 0);
        break;
    case 1:
        b->addr.len = sizeof b->addr.ss;
        b->ret = accept(b->fd, SA(&b->addr), &b->addr.len);
        break;
    case 2:
        b->addr.len = sizeof b->addr.ss;
        b->ret = recvfrom(b->fd, b->buf, sizeof b->buf, 0, SA(&b->addr), &b->addr.len);
        break;
    case 3:
        b->ret = send(b->fd, bigbuf, (size_t)b->want, MSG_NOSIGNAL);
        break;
    case 4: {
        struct epoll_event ev;
        b->ret = epoll_wait(b->fd, &ev, 1, 5000);
        if (b->ret == 1)
            snprintf(b->buf, sizeof b->buf, "%llu:%s", (unsigned long long)ev.data.u64,
                     evname(ev.events));
        break;
    }
    case 5: {
        struct pollfd p = {b->fd, POLLIN, 0};
        b->ret = poll(&p, 1, 5000);
        snprintf(b->buf, sizeof b->buf, "%s", evname((uint16_t)p.revents));
        break;
    }
    case 6:
        b->ret = connect(b->fd, SA(&b->addr), b->addr.len);
        break;
    }
    b->err = errno;
    return NULL;
}

static void start_blocked(struct blocked *b, pthread_t *th)
{
    atomic_store(&b->started, 0);
    pthread_create(th, NULL, blocked_thread, b);
    while (!atomic_load(&b->started))
        usleep(500);
    wait_sleeping(b->tid);
}

static void report(struct blocked *b, const char *what)
{
    if (b->ret < 0)
        O("%s = -1 %s", what, en(b->err));
    else
        O("%s = %s", what, b->op == 1 ? (b->ret >= 0 ? "fd" : "?") : "ok");
}

static void woken(int fam)
{
    int c, s, l;
    addr_t a;
    pthread_t th;
    struct blocked b;

    CASE(nm("thread_accept_blocked_other_connects", fam));
    l = listener(fam, SOCK_STREAM, &a);
    memset(&b, 0, sizeof b);
    b.fd = l;
    b.op = 1;
    start_blocked(&b, &th);
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(connect(c, SA(&a), a.len));
    pthread_join(th, NULL);
    report(&b, "accept");
    addr_t ca;
    local_of(c, &ca);
    O("accepted peer == client: %d", same_addr(&b.addr, &ca));
    if (b.ret >= 0) {
        T(send(c, "hi", 2, 0));
        char x[4];
        T(recv((int)b.ret, x, sizeof x, 0));
        close((int)b.ret);
    }
    close(c);

    CASE(nm("thread_accept_woken_by_shutdown", fam));
    memset(&b, 0, sizeof b);
    b.fd = l;
    b.op = 1;
    start_blocked(&b, &th);
    T(shutdown(l, SHUT_RDWR));
    pthread_join(th, NULL);
    report(&b, "accept");
    close(l);

    CASE(nm("thread_connect_blocking_while_main_accepts", fam));
    l = listener(fam, SOCK_STREAM, &a);
    memset(&b, 0, sizeof b);
    b.fd = (int)MUST(socket(fam, SOCK_STREAM, 0));
    b.op = 6;
    b.addr = a;
    pthread_create(&th, NULL, blocked_thread, &b);
    s = accept(l, NULL, NULL);
    O("accept: %s", s >= 0 ? "fd" : en(errno));
    pthread_join(th, NULL);
    report(&b, "connect");
    addr_t pa;
    peer_of(s, &pa);
    local_of(b.fd, &ca);
    O("accepted peer == thread's socket: %d", same_addr(&pa, &ca));
    close(s);
    close(b.fd);
    close(l);

    CASE(nm("thread_recv_woken_by_data", fam));
    tcp_pair(fam, &c, &s);
    memset(&b, 0, sizeof b);
    b.fd = s;
    b.op = 0;
    start_blocked(&b, &th);
    T(send(c, "wake", 4, 0));
    pthread_join(th, NULL);
    report(&b, "recv");
    show("got", b.buf, b.ret);

    CASE(nm("thread_recv_woken_by_shutdown_rd", fam));
    memset(&b, 0, sizeof b);
    b.fd = s;
    b.op = 0;
    start_blocked(&b, &th);
    T(shutdown(s, SHUT_RD));
    pthread_join(th, NULL);
    O("recv returned %ld %s", b.ret, b.ret < 0 ? en(b.err) : "");
    close(c);
    close(s);

    CASE(nm("thread_recv_woken_by_eof", fam));
    tcp_pair(fam, &c, &s);
    memset(&b, 0, sizeof b);
    b.fd = s;
    b.op = 0;
    start_blocked(&b, &th);
    T(close(c));
    pthread_join(th, NULL);
    O("recv returned %ld %s", b.ret, b.ret < 0 ? en(b.err) : "");
    close(s);

    CASE(nm("thread_recv_woken_by_reset", fam));
    tcp_pair(fam, &c, &s);
    memset(&b, 0, sizeof b);
    b.fd = s;
    b.op = 0;
    start_blocked(&b, &th);
    struct linger lg = {1, 0};
    setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    T(close(c));
    pthread_join(th, NULL);
    O("recv returned %ld %s", b.ret, b.ret < 0 ? en(b.err) : "");
    close(s);

    CASE(nm("thread_send_blocked_until_peer_drains", fam));
    tcp_pair(fam, &c, &s);
    memset(&b, 0, sizeof b);
    b.fd = c;
    b.op = 3;
    b.want = sizeof bigbuf;
    for (size_t i = 0; i < sizeof bigbuf; i++)
        bigbuf[i] = (char)(i * 7 + 3);
    start_blocked(&b, &th); /* sleeps once the buffers are full */
    uint32_t h = FNV_INIT;
    long got = 0;
    static char rb[65536];
    while (got < b.want) {
        long n = recv(s, rb, sizeof rb, 0);
        if (n <= 0)
            break;
        h = fnv(rb, (size_t)n, h);
        got += n;
    }
    pthread_join(th, NULL);
    O("send returned the full length: %d", b.ret == b.want);
    O("received all, in order: %d", got == b.want && h == fnv(bigbuf, sizeof bigbuf, FNV_INIT));
    close(c);
    close(s);

    CASE(nm("thread_udp_recvfrom_woken", fam));
    addr_t ua, ub;
    int x = udp_sock(fam, &ua);
    int y = udp_sock(fam, &ub);
    memset(&b, 0, sizeof b);
    b.fd = x;
    b.op = 2;
    start_blocked(&b, &th);
    T(sendto(y, "dgram", 5, 0, SA(&ua), ua.len));
    pthread_join(th, NULL);
    report(&b, "recvfrom");
    show("got", b.buf, b.ret);
    O("from sender: %d", same_addr(&b.addr, &ub));
    close(x);
    close(y);

    CASE(nm("thread_epoll_wait_woken_by_socket", fam));
    tcp_pair(fam, &c, &s);
    int ep = (int)MUST(epoll_create1(0));
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.u64 = 9};
    MUST(epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev));
    memset(&b, 0, sizeof b);
    b.fd = ep;
    b.op = 4;
    start_blocked(&b, &th);
    T(shutdown(c, SHUT_WR));
    pthread_join(th, NULL);
    O("epoll_wait = %ld %s", b.ret, b.buf);
    close(ep);
    close(c);
    close(s);

    CASE(nm("thread_poll_listener_woken_by_connect", fam));
    l = listener(fam, SOCK_STREAM, &a);
    memset(&b, 0, sizeof b);
    b.fd = l;
    b.op = 5;
    start_blocked(&b, &th);
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(connect(c, SA(&a), a.len));
    pthread_join(th, NULL);
    O("poll = %ld revents=%s", b.ret, b.buf);
    s = (int)T(accept4(l, NULL, NULL, SOCK_CLOEXEC));
    close(s);
    close(c);
    close(l);
}

int main(void)
{
    watchdog(25);
    signal(SIGPIPE, SIG_IGN);
    int fams[2] = {AF_INET, AF_INET6};
    for (int i = 0; i < 2; i++) {
        several(fams[i]);
        signals_(fams[i]);
        woken(fams[i]);
    }
    return 0;
}
