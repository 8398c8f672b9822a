/* poll/ppoll/select/pselect over TCP and UDP sockets (127.0.0.1 and ::1,
 * suffix _v4/_v6) mixed with pipes: readiness of each kind, timeouts (only
 * "timed out or not"), POLLNVAL for a closed fd, POLLRDHUP, and signal masks
 * that keep a pending signal blocked (no EINTR) or unblock it (EINTR). fds
 * stay far below FD_SETSIZE. */
#include "sem_common.h"

static volatile sig_atomic_t usr1;
static void on_usr1(int sig)
{
    (void)sig;
    usr1++;
}

static void show_pfds(struct pollfd *p, int n, const char **names)
{
    for (int i = 0; i < n; i++)
        O("  %s: %s", names[i], evname((uint16_t)p[i].revents));
}

static void mixed(int fam)
{
    int c, s, l, p[2];
    addr_t a, ua, ub;
    char buf[16];

    CASE(nm("poll_mixed_readiness", fam));
    tcp_pair_l(fam, &c, &s, &l, &a);
    int x = udp_sock(fam, &ua);
    int y = udp_sock(fam, &ub);
    MUST(pipe(p));
    const char *names[7] = {"tcp-client", "tcp-server", "listener", "udp-x", "udp-y", "pipe-r", "pipe-w"};
    struct pollfd pf[7] = {
        {c, POLLIN | POLLOUT, 0}, {s, POLLIN | POLLOUT, 0}, {l, POLLIN | POLLOUT, 0},
        {x, POLLIN | POLLOUT, 0}, {y, POLLIN, 0},           {p[0], POLLIN, 0},
        {p[1], POLLOUT, 0}};
    T(poll(pf, 7, 0));
    show_pfds(pf, 7, names);
    T(send(c, "t", 1, 0));
    T(sendto(y, "u", 1, 0, SA(&ua), ua.len));
    T(write(p[1], "p", 1));
    int nc = (int)MUST(socket(fam, SOCK_STREAM, 0));
    MUST(connect(nc, SA(&a), a.len));
    wait_readable(s);
    wait_readable(x);
    wait_readable(l);
    T(poll(pf, 7, 0));
    show_pfds(pf, 7, names);
    close(nc);

    CASE(nm("select_mixed_readiness", fam));
    fd_set r, w;
    FD_ZERO(&r);
    FD_ZERO(&w);
    int fds[5] = {s, l, x, p[0], c};
    int maxfd = 0;
    for (int i = 0; i < 5; i++) {
        FD_SET(fds[i], &r);
        if (fds[i] > maxfd)
            maxfd = fds[i];
    }
    FD_SET(c, &w);
    FD_SET(p[1], &w);
    if (p[1] > maxfd)
        maxfd = p[1];
    struct timeval tv = {0, 0};
    T(select(maxfd + 1, &r, &w, NULL, &tv));
    O("r: tcp-server=%d listener=%d udp=%d pipe=%d tcp-client=%d", FD_ISSET(s, &r) != 0,
      FD_ISSET(l, &r) != 0, FD_ISSET(x, &r) != 0, FD_ISSET(p[0], &r) != 0, FD_ISSET(c, &r) != 0);
    O("w: tcp-client=%d pipe=%d", FD_ISSET(c, &w) != 0, FD_ISSET(p[1], &w) != 0);
    recv(s, buf, sizeof buf, 0);
    recv(x, buf, sizeof buf, 0);
    read(p[0], buf, sizeof buf);
    int acc = accept(l, NULL, NULL);
    close(acc);
    FD_ZERO(&r);
    for (int i = 0; i < 5; i++)
        FD_SET(fds[i], &r);
    tv = (struct timeval){0, 10000};
    long n = T(select(maxfd + 1, &r, NULL, NULL, &tv));
    O("timed out: %d", n == 0);

    CASE(nm("poll_timeouts", fam));
    struct pollfd q[3] = {{s, POLLIN, 0}, {x, POLLIN, 0}, {p[0], POLLIN, 0}};
    n = T(poll(q, 3, 10));
    O("timed out: %d", n == 0);
    struct timespec ts = {0, 10000000};
    n = T(ppoll(q, 3, &ts, NULL));
    O("timed out: %d", n == 0);
    T(send(c, "late", 4, 0));
    n = T(poll(q, 3, 5000));
    O("timed out: %d revents=%s", n == 0, evname((uint16_t)q[0].revents));
    recv(s, buf, sizeof buf, 0);

    CASE(nm("poll_nval_closed_socket", fam));
    int dead = (int)MUST(socket(fam, SOCK_STREAM, 0));
    close(dead);
    struct pollfd v[3] = {{dead, POLLIN, 0}, {-1, POLLIN, 0}, {c, POLLOUT, 0}};
    T(poll(v, 3, 0));
    O("closed=%s negative=%s live=%s", evname((uint16_t)v[0].revents), evname((uint16_t)v[1].revents),
      evname((uint16_t)v[2].revents));
    FD_ZERO(&r);
    FD_SET(dead, &r);
    tv = (struct timeval){0, 0};
    T(select(dead + 1, &r, NULL, NULL, &tv));

    CASE(nm("poll_events_zero_still_hup", fam));
    struct pollfd z = {s, 0, 0};
    T(poll(&z, 1, 0));
    O("revents=%s", evname((uint16_t)z.revents));
    T(shutdown(c, SHUT_RDWR));
    T(shutdown(s, SHUT_WR));
    wait_ev(s, POLLRDHUP);
    z.revents = 0;
    T(poll(&z, 1, 0));
    O("revents=%s", evname((uint16_t)z.revents));

    CASE(nm("poll_rdhup_and_select_eof", fam));
    int c2, s2;
    tcp_pair(fam, &c2, &s2);
    struct pollfd h = {s2, POLLIN | POLLRDHUP, 0};
    T(poll(&h, 1, 0));
    T(close(c2));
    n = T(poll(&h, 1, 5000));
    O("revents=%s", evname((uint16_t)h.revents));
    FD_ZERO(&r);
    FD_SET(s2, &r);
    tv = (struct timeval){0, 0};
    T(select(s2 + 1, &r, NULL, NULL, &tv));
    O("readable at EOF: %d", FD_ISSET(s2, &r) != 0);
    T(recv(s2, buf, sizeof buf, 0));
    close(s2);

    close(c);
    close(s);
    close(l);
    close(x);
    close(y);
    close(p[0]);
    close(p[1]);
}

/* One poll of fd for events, without waiting; prints what it reported under label. */
static void poll_now(int fd, short events, const char *label)
{
    struct pollfd q = {fd, events, 0};
    int n = poll(&q, 1, 0);
    O("%s: poll = %d revents=%s", label, n, evname((uint16_t)q.revents));
}

/* poll for input alone on one socket whose data waits (the shim answers this without its
 * lock): each combination of asked bits, nothing stale once the data is read, and end of
 * input behind queued data still reported. */
static void input_alone(int fam)
{
    int c, s;
    char buf[16];
    addr_t ua, ub;

    CASE(nm("poll_input_alone", fam));
    tcp_pair(fam, &c, &s);
    poll_now(s, POLLIN, "nothing yet");
    T(send(c, "abc", 3, 0));
    struct pollfd q = {s, POLLIN, 0};
    T(poll(&q, 1, 5000));
    O("queued: %s", evname((uint16_t)q.revents));
    poll_now(s, POLLIN | POLLRDNORM, "in|rdnorm");
    poll_now(s, POLLRDNORM, "rdnorm");
    poll_now(s, POLLIN | POLLOUT, "in|out");
    poll_now(s, POLLIN | POLLRDHUP, "in|rdhup");
    T(recv(s, buf, 2, 0));
    poll_now(s, POLLIN, "one byte left");
    T(recv(s, buf, sizeof buf, 0));
    poll_now(s, POLLIN, "drained");
    T(send(c, "de", 2, 0));
    T(shutdown(c, SHUT_WR));
    wait_ev(s, POLLRDHUP);
    poll_now(s, POLLIN | POLLRDHUP, "data then eof, in|rdhup");
    poll_now(s, POLLIN, "data then eof, in");
    T(recv(s, buf, sizeof buf, 0));
    T(recv(s, buf, sizeof buf, 0));
    close(c);
    close(s);

    CASE(nm("poll_input_alone_udp", fam));
    int x = udp_sock(fam, &ua);
    int y = udp_sock(fam, &ub);
    poll_now(x, POLLIN, "nothing yet");
    T(sendto(y, "one", 3, 0, SA(&ua), ua.len));
    T(sendto(y, "two", 3, 0, SA(&ua), ua.len));
    struct pollfd u = {x, POLLIN, 0};
    T(poll(&u, 1, 5000));
    O("queued: %s", evname((uint16_t)u.revents));
    T(recv(x, buf, sizeof buf, 0));
    wait_readable(x);
    poll_now(x, POLLIN, "second");
    T(recv(x, buf, sizeof buf, 0));
    poll_now(x, POLLIN, "drained");
    fd_set r;
    FD_ZERO(&r);
    FD_SET(x, &r);
    struct timeval tv = {0, 0};
    T(select(x + 1, &r, NULL, NULL, &tv));
    close(x);
    close(y);
}

static void masks(int fam)
{
    int c, s, p[2];
    sigset_t block, empty, old;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigemptyset(&empty);
    on_signal(SIGUSR1, on_usr1, SA_RESTART);
    tcp_pair(fam, &c, &s);
    MUST(pipe(p));

    CASE(nm("ppoll_mask_keeps_signal_blocked", fam));
    sigprocmask(SIG_BLOCK, &block, &old);
    usr1 = 0;
    raise(SIGUSR1);
    struct pollfd pf[2] = {{s, POLLIN, 0}, {p[0], POLLIN, 0}};
    struct timespec ts = {0, 10000000};
    long n = T(ppoll(pf, 2, &ts, &block));
    O("timed out: %d handled: %d", n == 0, (int)usr1);

    CASE(nm("ppoll_mask_unblocks_signal", fam));
    ts = (struct timespec){5, 0};
    T(ppoll(pf, 2, &ts, &empty));
    O("handled: %d", (int)usr1);
    sigset_t now;
    sigprocmask(SIG_BLOCK, NULL, &now);
    O("mask restored: %d", sigismember(&now, SIGUSR1));

    CASE(nm("pselect_mask_keeps_signal_blocked", fam));
    usr1 = 0;
    raise(SIGUSR1);
    fd_set r;
    FD_ZERO(&r);
    FD_SET(s, &r);
    FD_SET(p[0], &r);
    int maxfd = s > p[0] ? s : p[0];
    ts = (struct timespec){0, 10000000};
    n = T(pselect(maxfd + 1, &r, NULL, NULL, &ts, &block));
    O("timed out: %d handled: %d", n == 0, (int)usr1);

    CASE(nm("pselect_mask_unblocks_signal", fam));
    FD_ZERO(&r);
    FD_SET(s, &r);
    FD_SET(p[0], &r);
    ts = (struct timespec){5, 0};
    T(pselect(maxfd + 1, &r, NULL, NULL, &ts, &empty));
    O("handled: %d", (int)usr1);

    CASE(nm("ppoll_pselect_ready_with_mask", fam));
    usr1 = 0;
    raise(SIGUSR1);
    T(send(c, "r", 1, 0));
    wait_readable(s);
    ts = (struct timespec){1, 0};
    T(ppoll(pf, 2, &ts, &block));
    O("revents=%s,%s handled: %d", evname((uint16_t)pf[0].revents), evname((uint16_t)pf[1].revents), (int)usr1);
    FD_ZERO(&r);
    FD_SET(s, &r);
    FD_SET(p[0], &r);
    T(pselect(maxfd + 1, &r, NULL, NULL, &ts, &block));
    O("sock=%d pipe=%d handled: %d", FD_ISSET(s, &r) != 0, FD_ISSET(p[0], &r) != 0, (int)usr1);
    sigprocmask(SIG_SETMASK, &old, NULL);
    O("handled after unblock: %d", (int)usr1);

    close(c);
    close(s);
    close(p[0]);
    close(p[1]);
}

int main(void)
{
    watchdog(25);
    signal(SIGPIPE, SIG_IGN);
    int fams[2] = {AF_INET, AF_INET6};
    for (int i = 0; i < 2; i++) {
        mixed(fams[i]);
        input_alone(fams[i]);
        masks(fams[i]);
    }
    return 0;
}
