/* Threads, signals and timeouts around blocking socket calls, second series,
 * over 127.0.0.1 and ::1 (suffix _v4/_v6): a blocking connect (to a listener
 * whose accept queue is full) interrupted by a signal with and without
 * SA_RESTART and with SO_SNDTIMEO, SO_SNDTIMEO expiry on connect and send,
 * SO_RCVTIMEO expiry on accept/recvfrom/recvmsg/read and with MSG_WAITALL,
 * SO_RCVTIMEO making accept return EINTR despite SA_RESTART, UDP recvfrom
 * and EINTR, poll/select/epoll_wait/ppoll returning EINTR despite
 * SA_RESTART, MSG_WAITALL cut short by a signal, waits with timeout -1 woken
 * by another thread, accept4 flags from a blocked accept, two threads
 * accepting, a blocked recv surviving close() of its fd in another thread,
 * a blocked UDP recvfrom woken by shutdown, a blocked send woken by a reset.
 * The signalling thread acts only while the target sleeps in the kernel and
 * keeps signalling until the call returns; threads print nothing. */
#include "sem2_common.h"

static volatile sig_atomic_t hits;
static void on_usr1(int sig)
{
    (void)sig;
    hits++;
}

static void handler(int flags)
{
    on_signal(SIGUSR1, on_usr1, flags);
    hits = 0;
}

/* ---- connect ---- */

static void accept_one(struct sigger *h)
{
    int l = *(int *)h->p;
    int s = accept(l, NULL, NULL);
    if (s >= 0)
        close(s);
}

static void connects(int fam)
{
    addr_t a, pa;
    int q, err;
    socklen_t el;
    pthread_t th;
    struct sigger h;

    CASE(nm("thread_connect_eintr_no_restart", fam));
    int l = full_listener(fam, &a, &q);
    int c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    handler(0);
    h = (struct sigger){.sig = SIGUSR1, .hits = &hits};
    sigger_start(&h, &th);
    T(connect(c, SA(&a), a.len));
    sigger_stop(&h, th);
    O("handler ran: %s", hits > 0 ? "yes" : "no");
    poll1("OUT 10ms", c, POLLOUT, 10); /* the attempt goes on in the background */
    pa.len = sizeof pa.ss;
    T(getpeername(c, SA(&pa), &pa.len));
    err = -1;
    el = sizeof err;
    T(getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &el));
    O("SO_ERROR=%s", en(err));
    MUST(fcntl(c, F_SETFL, O_NONBLOCK));
    T(connect(c, SA(&a), a.len));
    close(c);

    CASE(nm("thread_connect_sndtimeo_expires", fam));
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    struct timeval tv = {0, 50000};
    T(setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv));
    T(connect(c, SA(&a), a.len));
    poll1("OUT 10ms", c, POLLOUT, 10);
    T(connect(c, SA(&a), a.len)); /* still in progress: waits again, times out again */
    MUST(fcntl(c, F_SETFL, O_NONBLOCK));
    T(connect(c, SA(&a), a.len));
    close(c);

    CASE(nm("thread_connect_sndtimeo_eintr_despite_restart", fam));
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    tv = (struct timeval){5, 0};
    T(setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv));
    handler(SA_RESTART);
    h = (struct sigger){.sig = SIGUSR1, .hits = &hits};
    sigger_start(&h, &th);
    T(connect(c, SA(&a), a.len));
    sigger_stop(&h, th);
    O("handler ran: %s", hits > 0 ? "yes" : "no");
    close(c);

    CASE(nm("thread_connect_restarted_sa_restart", fam));
    /* The helper signals twice, then accepts the queued connection: the
     * restarted connect completes once the SYN is retried (about 1 s). */
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    handler(SA_RESTART);
    h = (struct sigger){.sig = SIGUSR1, .hits = &hits, .act = accept_one, .p = &l};
    sigger_start(&h, &th);
    T(connect(c, SA(&a), a.len));
    sigger_stop(&h, th);
    O("handler ran: %s, helper made room: %d", hits > 0 ? "yes" : "no", h.acted);
    peer_of(c, &pa);
    O("peer == listener: %d", same_addr(&pa, &a));
    int s = accept(l, NULL, NULL);
    O("accepted: %d", s >= 0);
    T(send(c, "done", 4, 0));
    char buf[8];
    long n = T(recv(s, buf, sizeof buf, 0));
    show("got", buf, n);
    close(s);
    close(c);
    close(q);
    close(l);
    signal(SIGUSR1, SIG_IGN);
}

/* ---- timeouts ---- */

static void timeouts(int fam)
{
    addr_t a, ua;
    char buf[16];
    long n;
    struct timeval tv = {0, 30000};
    pthread_t th;
    struct sigger h;

    CASE(nm("so_rcvtimeo_expiry_everywhere", fam));
    int l = listener(fam, SOCK_STREAM, &a);
    T(setsockopt(l, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv));
    T(accept(l, NULL, NULL));
    T(accept4(l, NULL, NULL, SOCK_CLOEXEC));
    int x = udp_sock(fam, &ua);
    T(setsockopt(x, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv));
    T(recvfrom(x, buf, sizeof buf, 0, NULL, NULL));
    struct iovec iv = {buf, sizeof buf};
    struct msghdr mh = {.msg_iov = &iv, .msg_iovlen = 1};
    T(recvmsg(x, &mh, 0));
    T(read(x, buf, sizeof buf));
    int c, s;
    tcp_pair(fam, &c, &s);
    T(setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv));
    T(readv(s, &iv, 1));
    T(send(c, "abc", 3, 0));
    wait_bytes(s, 3);
    n = T(recv(s, buf, 10, MSG_WAITALL)); /* the timeout ends it with what came */
    show("got", buf, n);
    close(c);
    close(s);
    close(x);

    CASE(nm("so_rcvtimeo_accept_eintr_despite_restart", fam));
    tv = (struct timeval){5, 0};
    T(setsockopt(l, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv));
    handler(SA_RESTART);
    h = (struct sigger){.sig = SIGUSR1, .hits = &hits};
    sigger_start(&h, &th);
    T(accept(l, NULL, NULL));
    sigger_stop(&h, th);
    O("handler ran: %s", hits > 0 ? "yes" : "no");
    close(l);
    signal(SIGUSR1, SIG_IGN);

    CASE(nm("so_sndtimeo_expiry_full_buffer", fam));
    tcp_pair_small(fam, &c, &s);
    long sent = fill_settled(c);
    tv = (struct timeval){0, 30000};
    T(setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv));
    T(send(c, "x", 1, 0));
    T(write(c, "x", 1));
    long got = drain(s, sent);
    O("peer received everything sent: %d", got == sent);
    close(c);
    close(s);
}

/* ---- EINTR on UDP and on the waiting calls ---- */

static void send_to_target(struct sigger *h)
{
    addr_t *a = h->p;
    int y = socket(a->ss.ss_family, SOCK_DGRAM, 0);
    sendto(y, "late", 4, 0, SA(a), a->len);
    close(y);
}

static void eintr(int fam)
{
    addr_t ua;
    char buf[16];
    long n;
    pthread_t th;
    struct sigger h;

    CASE(nm("thread_udp_recvfrom_eintr_no_restart", fam));
    int x = udp_sock(fam, &ua);
    handler(0);
    h = (struct sigger){.sig = SIGUSR1, .hits = &hits};
    sigger_start(&h, &th);
    T(recvfrom(x, buf, sizeof buf, 0, NULL, NULL));
    sigger_stop(&h, th);
    O("handler ran: %s", hits > 0 ? "yes" : "no");

    CASE(nm("thread_udp_recvfrom_restarted_sa_restart", fam));
    handler(SA_RESTART);
    h = (struct sigger){.sig = SIGUSR1, .hits = &hits, .act = send_to_target, .p = &ua};
    sigger_start(&h, &th);
    n = T(recvfrom(x, buf, sizeof buf, 0, NULL, NULL));
    sigger_stop(&h, th);
    show("got", buf, n);
    O("handler ran: %s", hits > 0 ? "yes" : "no");

    CASE(nm("thread_waits_eintr_despite_restart", fam));
    /* poll, select, epoll_wait and ppoll are never restarted */
    int c, s;
    tcp_pair(fam, &c, &s);
    int ep = (int)MUST(epoll_create1(0));
    ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN, 1);
    ctl(ep, EPOLL_CTL_ADD, x, EPOLLIN, 2);
    struct pollfd pf[2] = {{s, POLLIN, 0}, {x, POLLIN, 0}};
    for (int k = 0; k < 5; k++) {
        handler(SA_RESTART);
        h = (struct sigger){.sig = SIGUSR1, .hits = &hits};
        sigger_start(&h, &th);
        errno = 0;
        long r = -2;
        const char *what = "?";
        if (k == 0) {
            what = "poll(-1)";
            r = poll(pf, 2, -1);
        } else if (k == 1) {
            what = "select(NULL)";
            fd_set rs;
            FD_ZERO(&rs);
            FD_SET(s, &rs);
            FD_SET(x, &rs);
            r = select((s > x ? s : x) + 1, &rs, NULL, NULL, NULL);
        } else if (k == 2) {
            what = "epoll_wait(-1)";
            struct epoll_event ev;
            r = epoll_wait(ep, &ev, 1, -1);
        } else if (k == 3) {
            what = "ppoll(NULL)";
            r = ppoll(pf, 2, NULL, NULL);
        } else {
            what = "poll(5000)";
            r = poll(pf, 2, 5000);
        }
        int e = errno;
        sigger_stop(&h, th);
        O("%s = %ld %s, handler ran: %s", what, r, r < 0 ? en(e) : "", hits > 0 ? "yes" : "no");
    }
    close(ep);
    close(c);
    close(s);
    close(x);

    CASE(nm("thread_signal_vs_wait_masks", fam));
    /* A signal sent by another thread while ppoll/pselect/epoll_pwait waits:
     * blocked by the call's mask it does not interrupt (the wait times out),
     * let through by it the call fails with EINTR. */
    tcp_pair(fam, &c, &s);
    ep = (int)MUST(epoll_create1(0));
    ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN, 1);
    sigset_t blockmask, nomask;
    sigemptyset(&blockmask);
    sigaddset(&blockmask, SIGUSR1);
    sigemptyset(&nomask);
    for (int k = 0; k < 6; k++) {
        int blocked = k < 3;
        sigset_t *m = blocked ? &blockmask : &nomask;
        int ms = blocked ? 200 : 5000;
        handler(SA_RESTART);
        h = (struct sigger){.sig = SIGUSR1, .hits = &hits};
        sigger_start(&h, &th);
        errno = 0;
        long r;
        const char *what;
        if (k % 3 == 0) {
            what = "ppoll";
            struct pollfd p1 = {s, POLLIN, 0};
            struct timespec ts = {0, ms * 1000000L};
            if (ms >= 1000)
                ts = (struct timespec){ms / 1000, 0};
            r = ppoll(&p1, 1, &ts, m);
        } else if (k % 3 == 1) {
            what = "pselect";
            fd_set rs;
            FD_ZERO(&rs);
            FD_SET(s, &rs);
            struct timespec ts = {0, ms * 1000000L};
            if (ms >= 1000)
                ts = (struct timespec){ms / 1000, 0};
            r = pselect(s + 1, &rs, NULL, NULL, &ts, m);
        } else {
            what = "epoll_pwait";
            struct epoll_event ev;
            r = epoll_pwait(ep, &ev, 1, ms, m);
        }
        int e = errno;
        sigger_stop(&h, th);
        if (blocked)
            O("%s, SIGUSR1 in the mask = %ld %s", what, r, r < 0 ? en(e) : "(timed out)");
        else
            O("%s, empty mask = %ld %s, handler ran: %s", what, r, r < 0 ? en(e) : "", hits > 0 ? "yes" : "no");
    }
    close(ep);
    close(c);
    close(s);

    CASE(nm("thread_waitall_cut_by_signal", fam));
    for (int k = 0; k < 2; k++) {
        tcp_pair(fam, &c, &s);
        T(send(c, "abc", 3, 0));
        wait_bytes(s, 3);
        handler(k == 0 ? 0 : SA_RESTART);
        h = (struct sigger){.sig = SIGUSR1, .hits = &hits};
        sigger_start(&h, &th);
        n = T(recv(s, buf, 10, MSG_WAITALL)); /* returns what it has, no EINTR */
        sigger_stop(&h, th);
        O("%s: handler ran: %s", k == 0 ? "no restart" : "SA_RESTART", hits > 0 ? "yes" : "no");
        show("got", buf, n);
        close(c);
        close(s);
    }
    signal(SIGUSR1, SIG_IGN);
}

/* ---- blocked in a helper thread, woken by the main thread ---- */

static long do_epoll_wait(struct bcall *b)
{
    struct epoll_event ev;
    long r = epoll_wait(b->fd, &ev, 1, -1);
    if (r == 1)
        snprintf(b->note, sizeof b->note, "%llu:%s", (unsigned long long)ev.data.u64, evname(ev.events));
    return r;
}

static long do_poll(struct bcall *b)
{
    struct pollfd p[2] = {{b->fd, POLLIN, 0}, {b->flags, POLLIN, 0}};
    long r = poll(p, 2, -1);
    snprintf(b->note, sizeof b->note, "%s,%s", evname((uint16_t)p[0].revents), evname((uint16_t)p[1].revents));
    return r;
}

static long do_select(struct bcall *b)
{
    fd_set r;
    FD_ZERO(&r);
    FD_SET(b->fd, &r);
    FD_SET(b->flags, &r);
    long n = select((b->fd > b->flags ? b->fd : b->flags) + 1, &r, NULL, NULL, NULL);
    snprintf(b->note, sizeof b->note, "first=%d second=%d", FD_ISSET(b->fd, &r) != 0,
             FD_ISSET(b->flags, &r) != 0);
    return n;
}

static long do_ppoll(struct bcall *b)
{
    struct pollfd p = {b->fd, POLLIN, 0};
    sigset_t m;
    sigemptyset(&m);
    long r = ppoll(&p, 1, NULL, &m);
    snprintf(b->note, sizeof b->note, "%s", evname((uint16_t)p.revents));
    return r;
}

static long do_accept4(struct bcall *b)
{
    return accept4(b->fd, NULL, NULL, b->flags);
}

static long do_recv(struct bcall *b)
{
    return recv(b->fd, b->buf, sizeof b->buf, 0);
}

static long do_recvfrom(struct bcall *b)
{
    b->addr.len = sizeof b->addr.ss;
    return recvfrom(b->fd, b->buf, sizeof b->buf, 0, SA(&b->addr), &b->addr.len);
}

static long do_send1(struct bcall *b)
{
    return send(b->fd, "x", 1, MSG_NOSIGNAL);
}

static void woken(int fam)
{
    addr_t a, ua, ub;
    pthread_t th;
    struct bcall b;
    int c, s;
    uint64_t one = 1;

    CASE(nm("thread_wait_minus_one_woken", fam));
    int efd = (int)MUST(eventfd(0, 0));
    int ep = (int)MUST(epoll_create1(0));
    tcp_pair(fam, &c, &s);
    ctl(ep, EPOLL_CTL_ADD, efd, EPOLLIN, 1);
    ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN, 2);
    memset(&b, 0, sizeof b);
    b.fn = do_epoll_wait;
    b.fd = ep;
    bcall_start(&b, &th);
    T(write(efd, &one, sizeof one));
    pthread_join(th, NULL);
    bcall_report(&b, "epoll_wait(-1) on eventfd");
    O("event %s", b.note);
    uint64_t cnt;
    read(efd, &cnt, sizeof cnt);
    memset(&b, 0, sizeof b);
    b.fn = do_epoll_wait;
    b.fd = ep;
    bcall_start(&b, &th);
    T(send(c, "s", 1, 0));
    pthread_join(th, NULL);
    bcall_report(&b, "epoll_wait(-1) on tcp");
    O("event %s", b.note);
    char buf[16];
    recv(s, buf, sizeof buf, 0);
    int x = udp_sock(fam, &ua);
    int y = udp_sock(fam, &ub);
    memset(&b, 0, sizeof b);
    b.fn = do_poll;
    b.fd = efd;
    b.flags = x;
    bcall_start(&b, &th);
    T(sendto(y, "u", 1, 0, SA(&ua), ua.len));
    pthread_join(th, NULL);
    bcall_report(&b, "poll(-1) eventfd+udp");
    O("revents %s", b.note);
    recv(x, buf, sizeof buf, 0);
    int l = listener(fam, SOCK_STREAM, &a);
    memset(&b, 0, sizeof b);
    b.fn = do_select;
    b.fd = efd;
    b.flags = l;
    bcall_start(&b, &th);
    int nc = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(connect(nc, SA(&a), a.len));
    pthread_join(th, NULL);
    bcall_report(&b, "select(NULL) eventfd+listener");
    O("%s", b.note);
    close((int)MUST(accept(l, NULL, NULL)));
    memset(&b, 0, sizeof b);
    b.fn = do_ppoll;
    b.fd = x;
    bcall_start(&b, &th);
    T(sendto(y, "v", 1, 0, SA(&ua), ua.len));
    pthread_join(th, NULL);
    bcall_report(&b, "ppoll(NULL) udp");
    O("revents %s", b.note);
    close(nc);
    close(x);
    close(y);
    close(ep);
    close(efd);
    close(c);
    close(s);

    CASE(nm("thread_accept4_flags_when_woken", fam));
    memset(&b, 0, sizeof b);
    b.fn = do_accept4;
    b.fd = l;
    b.flags = SOCK_NONBLOCK | SOCK_CLOEXEC;
    bcall_start(&b, &th);
    c = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(connect(c, SA(&a), a.len));
    pthread_join(th, NULL);
    O("accept4 returned an fd: %d", b.ret >= 0);
    if (b.ret >= 0) {
        O("%s %s", flflags((int)b.ret), fdflags((int)b.ret));
        close((int)b.ret);
    }
    close(c);
    close(l);

    CASE(nm("thread_two_acceptors", fam));
    l = listener(fam, SOCK_STREAM, &a);
    struct bcall b1, b2;
    pthread_t t1, t2;
    memset(&b1, 0, sizeof b1);
    memset(&b2, 0, sizeof b2);
    b1.fn = b2.fn = do_accept4;
    b1.fd = b2.fd = l;
    bcall_start(&b1, &t1);
    bcall_start(&b2, &t2);
    int c1 = (int)MUST(socket(fam, SOCK_STREAM, 0));
    int c2 = (int)MUST(socket(fam, SOCK_STREAM, 0));
    T(connect(c1, SA(&a), a.len));
    T(connect(c2, SA(&a), a.len));
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    O("both accepted: %d, distinct: %d", b1.ret >= 0 && b2.ret >= 0, b1.ret != b2.ret);
    if (b1.ret >= 0)
        close((int)b1.ret);
    if (b2.ret >= 0)
        close((int)b2.ret);
    close(c1);
    close(c2);
    close(l);

    CASE(nm("thread_recv_survives_close_of_its_fd", fam));
    tcp_pair(fam, &c, &s);
    memset(&b, 0, sizeof b);
    b.fn = do_recv;
    b.fd = s;
    bcall_start(&b, &th);
    T(close(s)); /* the blocked call keeps the socket alive */
    O("still blocked 50 ms after close: %d", still_blocked_after(&b.done, 50));
    T(send(c, "late", 4, 0));
    pthread_join(th, NULL);
    bcall_report(&b, "recv");
    if (b.ret > 0)
        show("got", b.buf, b.ret);
    close(c);

    CASE(nm("thread_udp_recvfrom_woken_by_shutdown", fam));
    x = udp_sock(fam, &ua);
    memset(&b, 0, sizeof b);
    b.fn = do_recvfrom;
    b.fd = x;
    bcall_start(&b, &th);
    T(shutdown(x, SHUT_RD)); /* unconnected: ENOTCONN, but the reader wakes */
    pthread_join(th, NULL);
    bcall_report(&b, "recvfrom");
    close(x);

    CASE(nm("thread_send_blocked_woken_by_reset", fam));
    tcp_pair_small(fam, &c, &s);
    fill_settled(c);
    memset(&b, 0, sizeof b);
    b.fn = do_send1;
    b.fd = c;
    bcall_start(&b, &th);
    struct linger lg = {1, 0};
    T(setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
    T(close(s));
    pthread_join(th, NULL);
    bcall_report(&b, "send");
    T(send(c, "x", 1, MSG_NOSIGNAL));
    close(c);

    CASE(nm("thread_send_blocked_woken_by_shutdown_wr", fam));
    tcp_pair_small(fam, &c, &s);
    long sent = fill_settled(c);
    memset(&b, 0, sizeof b);
    b.fn = do_send1;
    b.fd = c;
    bcall_start(&b, &th);
    T(shutdown(c, SHUT_WR));
    pthread_join(th, NULL);
    bcall_report(&b, "send");
    long got = drain(s, sent + 1);
    O("peer got what was sent before, then EOF: %d", got == sent);
    close(c);
    close(s);
}

int main(void)
{
    watchdog(25);
    signal(SIGPIPE, SIG_IGN);
    int fams[2] = {AF_INET, AF_INET6};
    for (int i = 0; i < 2; i++) {
        connects(fams[i]);
        timeouts(fams[i]);
        eintr(fams[i]);
        woken(fams[i]);
    }
    return 0;
}
