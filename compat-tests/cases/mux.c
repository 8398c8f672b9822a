/* Readiness: epoll_create/epoll_create1/epoll_ctl/epoll_wait/epoll_pwait
 * (level, edge, oneshot, nested, dup'd registrations, errors), poll/ppoll,
 * select/pselect. Timeouts are short and only "timed out or not" is shown. */
#include "net_common.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/select.h>

static volatile sig_atomic_t usr1;
static void on_usr1(int sig)
{
    (void)sig;
    usr1++;
}

static const char *evs(uint32_t e)
{
    static char bufs[4][128];
    static int k;
    char *b = bufs[k++ & 3];
    static const struct flag_name t[] = {{EPOLLIN, "IN"},   {EPOLLOUT, "OUT"}, {EPOLLERR, "ERR"}, {EPOLLHUP, "HUP"},
             {EPOLLPRI, "PRI"}, {EPOLLRDHUP, "RDHUP"}};
    return flag_names(e, t, sizeof t / sizeof t[0], b, 128);
}

/* epoll_wait and print the events sorted by data.u64. */
static long ewait(int ep, int max, int timeout)
{
    struct epoll_event ev[16];
    long n = epoll_wait(ep, ev, max, timeout);
    int e = errno;
    if (n < 0) {
        O("epoll_wait(max=%d, %d) = -1 %s", max, timeout, en(e));
        return n;
    }
    for (long i = 1; i < n; i++)
        for (long j = i; j > 0 && ev[j - 1].data.u64 > ev[j].data.u64; j--) {
            struct epoll_event t = ev[j];
            ev[j] = ev[j - 1];
            ev[j - 1] = t;
        }
    char b[512] = "";
    for (long i = 0; i < n; i++)
        snprintf(b + strlen(b), sizeof b - strlen(b), " {%llu:%s}",
                 (unsigned long long)ev[i].data.u64, evs(ev[i].events));
    O("epoll_wait(max=%d, %d) = %ld%s", max, timeout, n, b);
    return n;
}

static int add(int ep, int fd, uint32_t events, uint64_t data)
{
    struct epoll_event e = {.events = events, .data.u64 = data};
    return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
}

static void epoll_cases(void)
{
    int p[2], q[2];
    char buf[64];
    struct epoll_event e = {.events = EPOLLIN};

    CASE("epoll_create");
    int ep = (int)T(epoll_create(1));
    O("%s", fdflags(ep));
    T(epoll_create(0));
    T(epoll_create(-1));
    int ep1 = (int)T(epoll_create1(EPOLL_CLOEXEC));
    O("%s", fdflags(ep1));
    T(epoll_create1(0x1234));
    close(ep1);

    CASE("epoll_ctl_errors");
    MUST(pipe(p));
    T(epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &e));
    T(epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &e));
    T(epoll_ctl(ep, EPOLL_CTL_MOD, p[1], &e));
    T(epoll_ctl(ep, EPOLL_CTL_DEL, p[1], NULL));
    T(epoll_ctl(-1, EPOLL_CTL_ADD, p[1], &e));
    T(epoll_ctl(ep, EPOLL_CTL_ADD, -1, &e));
    T(epoll_ctl(ep, EPOLL_CTL_ADD, ep, &e));
    T(epoll_ctl(p[0], EPOLL_CTL_ADD, p[1], &e));
    T(epoll_ctl(ep, 99, p[1], &e));
    T(epoll_ctl(ep, EPOLL_CTL_ADD, p[1], (struct epoll_event *)1));
    int f = (int)MUST(open("regular", O_CREAT | O_RDWR, 0644));
    T(epoll_ctl(ep, EPOLL_CTL_ADD, f, &e));
    close(f);
    e.events = EPOLLIN | EPOLLEXCLUSIVE;
    T(epoll_ctl(ep, EPOLL_CTL_ADD, p[1], &e));
    T(epoll_ctl(ep, EPOLL_CTL_MOD, p[1], &e));
    T(epoll_ctl(ep, EPOLL_CTL_DEL, p[0], NULL));
    T(epoll_ctl(ep, EPOLL_CTL_DEL, p[1], NULL));
    close(ep);
    close(p[0]);
    close(p[1]);

    CASE("epoll_wait_errors");
    ep = (int)MUST(epoll_create1(0));
    struct epoll_event out[2];
    T(epoll_wait(ep, out, 0, 0));
    T(epoll_wait(ep, out, -1, 0));
    T(epoll_wait(-1, out, 1, 0));
    MUST(pipe(p));
    T(epoll_wait(p[0], out, 1, 0));
    add(ep, p[0], EPOLLIN, 1);
    MUST(write(p[1], "x", 1));
    T(epoll_wait(ep, (struct epoll_event *)1, 1, 0));
    close(p[0]);
    close(p[1]);
    close(ep);

    CASE("epoll_level_triggered");
    ep = (int)MUST(epoll_create1(0));
    MUST(pipe(p));
    T(add(ep, p[0], EPOLLIN, 7));
    ewait(ep, 8, 0);
    T(write(p[1], "ab", 2));
    ewait(ep, 8, 0);
    ewait(ep, 8, 0); /* still readable: reported again */
    T(read(p[0], buf, 1));
    ewait(ep, 8, 0);
    T(read(p[0], buf, 1));
    ewait(ep, 8, 0);
    close(p[0]);
    close(p[1]);
    close(ep);

    CASE("epoll_edge_triggered");
    ep = (int)MUST(epoll_create1(0));
    MUST(pipe(p));
    T(add(ep, p[0], EPOLLIN | EPOLLET, 8));
    T(write(p[1], "ab", 2));
    ewait(ep, 8, 0);
    ewait(ep, 8, 0); /* no new edge */
    T(read(p[0], buf, 1));
    ewait(ep, 8, 0);
    T(write(p[1], "c", 1));
    ewait(ep, 8, 0); /* new data: new edge */
    ewait(ep, 8, 0);
    close(p[0]);
    close(p[1]);
    close(ep);

    CASE("epoll_oneshot");
    ep = (int)MUST(epoll_create1(0));
    MUST(pipe(p));
    T(add(ep, p[0], EPOLLIN | EPOLLONESHOT, 9));
    T(write(p[1], "a", 1));
    ewait(ep, 8, 0);
    ewait(ep, 8, 0); /* disarmed */
    T(write(p[1], "b", 1));
    ewait(ep, 8, 0);
    e.events = EPOLLIN | EPOLLONESHOT;
    e.data.u64 = 10;
    T(epoll_ctl(ep, EPOLL_CTL_MOD, p[0], &e));
    ewait(ep, 8, 0);
    ewait(ep, 8, 0);
    T(epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &e));
    close(p[0]);
    close(p[1]);
    close(ep);

    CASE("epoll_mod_del");
    ep = (int)MUST(epoll_create1(0));
    MUST(pipe(p));
    T(add(ep, p[1], EPOLLIN, 11));
    ewait(ep, 8, 0);
    e.events = EPOLLOUT;
    e.data.u64 = 12;
    T(epoll_ctl(ep, EPOLL_CTL_MOD, p[1], &e));
    ewait(ep, 8, 0);
    T(epoll_ctl(ep, EPOLL_CTL_DEL, p[1], NULL));
    ewait(ep, 8, 0);
    close(p[0]);
    close(p[1]);
    close(ep);

    CASE("epoll_hup_err");
    ep = (int)MUST(epoll_create1(0));
    MUST(pipe(p));
    MUST(pipe(q));
    add(ep, p[0], EPOLLIN, 1);
    add(ep, q[1], EPOLLOUT, 2);
    close(p[1]);
    close(q[0]);
    ewait(ep, 8, 0);
    close(p[0]);
    close(q[1]);
    close(ep);

    CASE("epoll_multiple_and_maxevents");
    ep = (int)MUST(epoll_create1(0));
    int ps[4][2];
    for (int i = 0; i < 4; i++) {
        MUST(pipe(ps[i]));
        add(ep, ps[i][0], EPOLLIN, (uint64_t)(100 + i));
    }
    MUST(write(ps[0][1], "x", 1));
    MUST(write(ps[2][1], "x", 1));
    MUST(write(ps[3][1], "x", 1));
    ewait(ep, 8, 0);
    long got = 0;
    for (int r = 0; r < 3; r++) {
        struct epoll_event one[1];
        long n = epoll_wait(ep, one, 1, 0);
        got += n;
    }
    O("three max=1 waits returned %ld events total", got);
    for (int i = 0; i < 4; i++) {
        close(ps[i][0]);
        close(ps[i][1]);
    }
    close(ep);

    CASE("epoll_timeout");
    ep = (int)MUST(epoll_create1(0));
    MUST(pipe(p));
    add(ep, p[0], EPOLLIN, 1);
    ewait(ep, 8, 10);
    ewait(ep, 8, 0);
    close(p[0]);
    close(p[1]);
    close(ep);

    CASE("epoll_close_removes");
    ep = (int)MUST(epoll_create1(0));
    MUST(pipe(p));
    add(ep, p[0], EPOLLIN, 21);
    MUST(write(p[1], "x", 1));
    close(p[0]);
    ewait(ep, 8, 0);
    close(p[1]);
    close(ep);

    CASE("epoll_dup_keeps_registration");
    ep = (int)MUST(epoll_create1(0));
    MUST(pipe(p));
    add(ep, p[0], EPOLLIN, 22);
    int d = (int)MUST(dup(p[0]));
    close(p[0]);
    MUST(write(p[1], "x", 1));
    ewait(ep, 8, 0); /* the description is still registered */
    T(epoll_ctl(ep, EPOLL_CTL_DEL, d, NULL)); /* the key is the old fd */
    close(d);
    ewait(ep, 8, 0);
    close(p[1]);
    close(ep);

    CASE("epoll_nested");
    int outer = (int)MUST(epoll_create1(0));
    int inner = (int)MUST(epoll_create1(0));
    MUST(pipe(p));
    add(inner, p[0], EPOLLIN, 31);
    T(add(outer, inner, EPOLLIN, 32));
    ewait(outer, 8, 0);
    MUST(write(p[1], "x", 1));
    ewait(outer, 8, 0);
    ewait(inner, 8, 0);
    T(add(inner, outer, EPOLLIN, 33)); /* loop */
    close(p[0]);
    close(p[1]);
    close(inner);
    close(outer);

    CASE("epoll_same_fd_two_sets");
    int e1 = (int)MUST(epoll_create1(0));
    int e2 = (int)MUST(epoll_create1(0));
    MUST(pipe(p));
    add(e1, p[0], EPOLLIN | EPOLLET, 41);
    add(e2, p[0], EPOLLIN, 42);
    MUST(write(p[1], "x", 1));
    ewait(e1, 8, 0);
    ewait(e2, 8, 0);
    ewait(e1, 8, 0);
    ewait(e2, 8, 0);
    close(p[0]);
    close(p[1]);
    close(e1);
    close(e2);

    CASE("epoll_sockets");
    ep = (int)MUST(epoll_create1(0));
    addr_t a;
    int l = listener(AF_INET, SOCK_STREAM, &a);
    add(ep, l, EPOLLIN, 51);
    ewait(ep, 8, 0);
    int c = (int)MUST(socket(AF_INET, SOCK_STREAM, 0));
    MUST(connect(c, SA(&a), a.len));
    ewait(ep, 8, 1000);
    int s = (int)MUST(accept(l, NULL, NULL));
    add(ep, s, EPOLLIN | EPOLLRDHUP, 52);
    add(ep, c, EPOLLOUT, 53);
    ewait(ep, 8, 0);
    MUST(send(c, "hi", 2, 0));
    ewait(ep, 8, 1000);
    recv(s, buf, sizeof buf, 0);
    MUST(shutdown(c, SHUT_WR));
    ewait(ep, 8, 1000);
    close(c);
    close(s);
    close(l);
    close(ep);

    CASE("epoll_eventfd");
    ep = (int)MUST(epoll_create1(0));
    int ev = (int)MUST(eventfd(0, EFD_NONBLOCK));
    add(ep, ev, EPOLLIN | EPOLLOUT, 61);
    ewait(ep, 8, 0);
    uint64_t one = 1;
    MUST(write(ev, &one, sizeof one));
    ewait(ep, 8, 0);
    close(ev);
    close(ep);

    CASE("epoll_pwait");
    ep = (int)MUST(epoll_create1(0));
    MUST(pipe(p));
    add(ep, p[0], EPOLLIN, 71);
    sigset_t block, empty;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigemptyset(&empty);
    on_signal(SIGUSR1, on_usr1, SA_RESTART);
    T(epoll_pwait(ep, out, 2, 0, &block));
    T(epoll_pwait(ep, out, 2, 10, NULL));
    sigprocmask(SIG_BLOCK, &block, NULL);
    usr1 = 0;
    raise(SIGUSR1); /* stays pending */
    O("handled before pwait: %d", (int)usr1);
    T(epoll_pwait(ep, out, 2, 5000, &empty)); /* unblocks it: EINTR */
    O("handled after pwait: %d", (int)usr1);
    sigprocmask(SIG_UNBLOCK, &block, NULL);
    MUST(write(p[1], "x", 1));
    long n = T(epoll_pwait(ep, out, 2, 1000, &block));
    if (n > 0)
        O("data=%llu events=%s", (unsigned long long)out[0].data.u64, evs(out[0].events));
    close(p[0]);
    close(p[1]);
    close(ep);
}

static void poll_cases(void)
{
    int p[2], q[2];
    struct pollfd fds[4];

    CASE("poll_basic");
    MUST(pipe(p));
    fds[0] = (struct pollfd){.fd = p[0], .events = POLLIN};
    fds[1] = (struct pollfd){.fd = p[1], .events = POLLOUT};
    T(poll(fds, 2, 0));
    O("revents=0x%x,0x%x", fds[0].revents, fds[1].revents);
    MUST(write(p[1], "x", 1));
    T(poll(fds, 2, 0));
    O("revents=0x%x,0x%x", fds[0].revents, fds[1].revents);
    fds[0].events = POLLIN | POLLOUT | POLLPRI;
    T(poll(fds, 1, 0));
    O("revents=0x%x", fds[0].revents);

    CASE("poll_timeout");
    char c;
    read(p[0], &c, 1);
    fds[0].events = POLLIN;
    T(poll(fds, 1, 10));
    T(poll(NULL, 0, 10));

    CASE("poll_nval_negative_fd");
    MUST(pipe(q));
    close(q[0]);
    fds[0] = (struct pollfd){.fd = q[0], .events = POLLIN};
    fds[1] = (struct pollfd){.fd = -1, .events = POLLIN};
    fds[2] = (struct pollfd){.fd = q[1], .events = POLLOUT};
    T(poll(fds, 3, 0));
    O("revents=0x%x,0x%x,0x%x", fds[0].revents, fds[1].revents, fds[2].revents);
    close(q[1]);

    CASE("poll_hup");
    MUST(pipe(q));
    MUST(write(q[1], "z", 1));
    close(q[1]);
    fds[0] = (struct pollfd){.fd = q[0], .events = POLLIN};
    T(poll(fds, 1, 0));
    O("revents=0x%x", fds[0].revents);
    read(q[0], &c, 1);
    T(poll(fds, 1, 0));
    O("revents=0x%x", fds[0].revents);
    close(q[0]);

    CASE("poll_errors");
    T(poll((struct pollfd *)1, 1, 0));
    T(poll(fds, 0x7fffffff, 0));

    CASE("ppoll");
    fds[0] = (struct pollfd){.fd = p[0], .events = POLLIN};
    struct timespec ts = {0, 10000000};
    T(ppoll(fds, 1, &ts, NULL));
    MUST(write(p[1], "y", 1));
    T(ppoll(fds, 1, &ts, NULL));
    O("revents=0x%x", fds[0].revents);
    read(p[0], &c, 1);
    sigset_t block, empty;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigemptyset(&empty);
    on_signal(SIGUSR1, on_usr1, 0);
    sigprocmask(SIG_BLOCK, &block, NULL);
    usr1 = 0;
    raise(SIGUSR1);
    T(ppoll(fds, 1, NULL, &empty));
    O("handled=%d", (int)usr1);
    sigprocmask(SIG_UNBLOCK, &block, NULL);
    ts.tv_nsec = -1;
    T(ppoll(fds, 1, &ts, NULL));

    CASE("select_basic");
    fd_set r, w;
    FD_ZERO(&r);
    FD_ZERO(&w);
    FD_SET(p[0], &r);
    FD_SET(p[1], &w);
    struct timeval tv = {0, 0};
    T(select(p[1] + 1, &r, &w, NULL, &tv));
    O("r=%d w=%d", FD_ISSET(p[0], &r), FD_ISSET(p[1], &w));
    MUST(write(p[1], "s", 1));
    FD_ZERO(&r);
    FD_SET(p[0], &r);
    tv = (struct timeval){0, 0};
    T(select(p[0] + 1, &r, NULL, NULL, &tv));
    O("r=%d", FD_ISSET(p[0], &r));
    read(p[0], &c, 1);

    CASE("select_timeout");
    FD_ZERO(&r);
    FD_SET(p[0], &r);
    tv = (struct timeval){0, 10000};
    T(select(p[0] + 1, &r, NULL, NULL, &tv));
    O("r=%d remaining<=10ms:%d", FD_ISSET(p[0], &r), tv.tv_sec == 0 && tv.tv_usec <= 10000);
    tv = (struct timeval){0, 10000};
    T(select(0, NULL, NULL, NULL, &tv));

    CASE("select_errors");
    MUST(pipe(q));
    close(q[1]);
    FD_ZERO(&r);
    FD_SET(q[1], &r);
    tv = (struct timeval){0, 0};
    T(select(q[1] + 1, &r, NULL, NULL, &tv));
    close(q[0]);
    T(select(-1, NULL, NULL, NULL, &tv));
    tv = (struct timeval){0, -5};
    T(select(0, NULL, NULL, NULL, &tv));

    CASE("select_hup_exceptfds");
    MUST(pipe(q));
    close(q[1]);
    fd_set x;
    FD_ZERO(&r);
    FD_ZERO(&x);
    FD_SET(q[0], &r);
    FD_SET(q[0], &x);
    tv = (struct timeval){0, 0};
    T(select(q[0] + 1, &r, NULL, &x, &tv));
    O("r=%d x=%d", FD_ISSET(q[0], &r), FD_ISSET(q[0], &x));
    close(q[0]);

    CASE("pselect");
    FD_ZERO(&r);
    FD_SET(p[0], &r);
    ts = (struct timespec){0, 10000000};
    T(pselect(p[0] + 1, &r, NULL, NULL, &ts, NULL));
    O("r=%d ts unchanged=%d", FD_ISSET(p[0], &r), ts.tv_nsec == 10000000);
    sigprocmask(SIG_BLOCK, &block, NULL);
    usr1 = 0;
    raise(SIGUSR1);
    FD_ZERO(&r);
    FD_SET(p[0], &r);
    T(pselect(p[0] + 1, &r, NULL, NULL, NULL, &empty));
    O("handled=%d", (int)usr1);
    sigprocmask(SIG_UNBLOCK, &block, NULL);
    MUST(write(p[1], "p", 1));
    FD_ZERO(&r);
    FD_SET(p[0], &r);
    T(pselect(p[0] + 1, &r, NULL, NULL, &ts, &block));
    O("r=%d", FD_ISSET(p[0], &r));
    close(p[0]);
    close(p[1]);
}

int main(void)
{
    epoll_cases();
    poll_cases();
    return 0;
}
