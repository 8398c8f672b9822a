/* Signals against blocking calls: EINTR without SA_RESTART, transparent
 * restart with SA_RESTART, calls that never restart (poll, select,
 * epoll_wait), a handler that itself calls write(), and a signal sent by
 * another thread. An interval timer keeps firing until the blocked call
 * returns, so no case depends on timing. */
#include "net_common.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/time.h>

static volatile sig_atomic_t hits;
static int wake_fd = -1; /* the handler writes one byte here when >= 0 */

static void handler(int sig)
{
    (void)sig;
    int saved = errno;
    hits++;
    if (wake_fd >= 0)
        write(wake_fd, "!", 1);
    errno = saved;
}

static void timer_on(void)
{
    struct itimerval it = {{0, 20000}, {0, 20000}};
    setitimer(ITIMER_REAL, &it, NULL);
}

static void timer_off(void)
{
    struct itimerval it = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &it, NULL);
}

static void arm(int flags, int wfd)
{
    hits = 0;
    wake_fd = wfd;
    on_signal(SIGALRM, handler, flags);
    timer_on();
}

static void disarm(void)
{
    timer_off();
    wake_fd = -1;
    O("handler ran: %s", hits > 0 ? "yes" : "no");
}

/* A thread that sends `sig` to the main thread once the main thread is
 * asleep in the kernel (state S in /proc), i.e. blocked in the call under
 * test. */
static pid_t main_tid;
static pthread_t main_pt, signaller;
static int signaller_sig;

static void *signal_when_blocked_thread(void *arg)
{
    (void)arg;
    char path[64], st[512];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", (int)main_tid);
    for (int i = 0; i < 5000; i++) {
        int fd = open(path, O_RDONLY);
        long n = fd >= 0 ? read(fd, st, sizeof st - 1) : -1;
        if (fd >= 0)
            close(fd);
        if (n > 0) {
            st[n] = 0;
            char *rp = strrchr(st, ')');
            if (rp && rp[1] == ' ' && rp[2] == 'S')
                break;
        }
        usleep(1000);
    }
    usleep(2000);
    pthread_kill(main_pt, signaller_sig);
    return NULL;
}

static void signal_when_blocked(int sig)
{
    main_tid = gettid();
    main_pt = pthread_self();
    signaller_sig = sig;
    pthread_create(&signaller, NULL, signal_when_blocked_thread, NULL);
}

static void join_signaller(void)
{
    pthread_join(signaller, NULL);
}

static void pipe_cases(void)
{
    int p[2];
    char buf[16];
    long n;

    CASE("eintr_read_pipe");
    MUST(pipe(p));
    arm(0, -1);
    T(read(p[0], buf, sizeof buf));
    disarm();

    CASE("restart_read_pipe");
    arm(SA_RESTART, p[1]); /* handler feeds the pipe; read restarts and gets it */
    n = T(read(p[0], buf, 1));
    disarm();
    show("data", buf, n);
    close(p[0]);
    close(p[1]);
    MUST(pipe(p));

    CASE("eintr_read_pipe_with_data_written_by_handler");
    /* The handler writes, but without SA_RESTART read fails. The signal must
     * arrive while read is blocked, so a thread waits for that first. */
    hits = 0;
    wake_fd = p[1];
    on_signal(SIGUSR1, handler, 0);
    signal_when_blocked(SIGUSR1);
    T(read(p[0], buf, 1));
    join_signaller();
    wake_fd = -1;
    O("handler ran: %s", hits > 0 ? "yes" : "no");
    n = T(read(p[0], buf, 1));
    show("data", buf, n);
    close(p[0]);
    close(p[1]);

    CASE("eintr_readv_pipe");
    MUST(pipe(p));
    struct iovec v = {buf, sizeof buf};
    arm(0, -1);
    T(readv(p[0], &v, 1));
    disarm();

    CASE("restart_readv_pipe");
    arm(SA_RESTART, p[1]);
    v.iov_len = 1;
    n = T(readv(p[0], &v, 1));
    disarm();
    show("data", buf, n);
    close(p[0]);
    close(p[1]);

    CASE("eintr_write_full_pipe");
    MUST(pipe(p));
    fcntl(p[1], F_SETPIPE_SZ, 4096);
    fcntl(p[1], F_SETFL, O_NONBLOCK);
    while (write(p[1], "0123456789abcdef", 16) > 0)
        ;
    fcntl(p[1], F_SETFL, 0);
    arm(0, -1);
    T(write(p[1], "x", 1));
    disarm();
    close(p[0]);
    close(p[1]);
}

static void socket_cases(void)
{
    int sv[2];
    char buf[16];
    long n;

    CASE("eintr_recv");
    MUST(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    arm(0, -1);
    T(recv(sv[0], buf, sizeof buf, 0));
    disarm();

    CASE("restart_recv");
    arm(SA_RESTART, sv[1]);
    n = T(recv(sv[0], buf, 1, 0));
    disarm();
    show("data", buf, n);

    CASE("eintr_recvfrom_recvmsg");
    arm(0, -1);
    T(recvfrom(sv[0], buf, sizeof buf, 0, NULL, NULL));
    struct iovec v = {buf, sizeof buf};
    struct msghdr mh = {.msg_iov = &v, .msg_iovlen = 1};
    T(recvmsg(sv[0], &mh, 0));
    disarm();
    /* drain the bytes (none: wake_fd was -1) */
    T(recv(sv[0], buf, sizeof buf, MSG_DONTWAIT));
    close(sv[0]);
    close(sv[1]);

    CASE("eintr_accept");
    addr_t a;
    int l = listener(AF_INET, SOCK_STREAM, &a);
    arm(0, -1);
    T(accept(l, NULL, NULL));
    disarm();
    close(l);

    CASE("eintr_recv_with_rcvtimeo_no_restart");
    /* With SO_RCVTIMEO set, SA_RESTART does not restart (man 7 signal). */
    MUST(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    struct timeval tv = {5, 0};
    setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    arm(SA_RESTART, -1);
    T(recv(sv[0], buf, sizeof buf, 0));
    disarm();
    close(sv[0]);
    close(sv[1]);
}

static void mux_cases(void)
{
    int p[2];
    MUST(pipe(p));

    CASE("eintr_poll_even_with_restart");
    struct pollfd pf = {.fd = p[0], .events = POLLIN};
    arm(SA_RESTART, -1);
    T(poll(&pf, 1, -1));
    disarm();

    CASE("eintr_poll_with_timeout");
    arm(SA_RESTART, -1);
    T(poll(&pf, 1, 5000));
    disarm();

    CASE("eintr_select_even_with_restart");
    fd_set r;
    FD_ZERO(&r);
    FD_SET(p[0], &r);
    arm(SA_RESTART, -1);
    T(select(p[0] + 1, &r, NULL, NULL, NULL));
    disarm();

    CASE("eintr_epoll_wait_even_with_restart");
    int ep = (int)MUST(epoll_create1(0));
    struct epoll_event e = {.events = EPOLLIN};
    MUST(epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &e));
    arm(SA_RESTART, -1);
    T(epoll_wait(ep, &e, 1, -1));
    disarm();

    CASE("epoll_wait_wakes_on_handler_write");
    arm(0, p[1]);
    long n;
    do
        n = epoll_wait(ep, &e, 1, -1);
    while (n < 0 && errno == EINTR);
    disarm();
    O("epoll_wait=%ld events=0x%x", n, e.events);
    close(ep);
    close(p[0]);
    close(p[1]);
}

/* The handler writes a line to stdout while main is blocked in read(). */
static void write_line_handler(int sig)
{
    (void)sig;
    static const char msg[] = "signal_handler_write: written from inside the handler\n";
    int saved = errno;
    hits++;
    if (hits == 1)
        write(1, msg, sizeof msg - 1);
    if (wake_fd >= 0)
        write(wake_fd, "h", 1);
    errno = saved;
}

static void handler_write_case(void)
{
    int p[2];
    char c = 0;
    CASE("signal_handler_write");
    MUST(pipe(p));
    hits = 0;
    wake_fd = p[1];
    on_signal(SIGALRM, write_line_handler, SA_RESTART);
    timer_on();
    long n = T(read(p[0], &c, 1));
    timer_off();
    wake_fd = -1;
    show("data", &c, n);
    close(p[0]);
    close(p[1]);
}

static pthread_t main_thread;
static atomic_int done;

static void *killer(void *arg)
{
    (void)arg;
    while (!atomic_load(&done)) {
        pthread_kill(main_thread, SIGUSR1);
        usleep(10000);
    }
    return NULL;
}

static void thread_signal_case(void)
{
    int p[2];
    char buf[4];
    CASE("eintr_from_other_thread");
    MUST(pipe(p));
    hits = 0;
    wake_fd = -1;
    on_signal(SIGUSR1, handler, 0);
    main_thread = pthread_self();
    atomic_store(&done, 0);
    pthread_t th;
    pthread_create(&th, NULL, killer, NULL);
    T(read(p[0], buf, sizeof buf));
    atomic_store(&done, 1);
    pthread_join(th, NULL);
    O("handler ran: %s", hits > 0 ? "yes" : "no");

    CASE("restart_from_other_thread");
    hits = 0;
    wake_fd = p[1];
    on_signal(SIGUSR1, handler, SA_RESTART);
    atomic_store(&done, 0);
    pthread_create(&th, NULL, killer, NULL);
    long n = T(read(p[0], buf, 1));
    atomic_store(&done, 1);
    pthread_join(th, NULL);
    wake_fd = -1;
    show("data", buf, n);
    close(p[0]);
    close(p[1]);
}

static void alarm_case(void)
{
    int p[2];
    char buf[4];
    CASE("eintr_alarm");
    MUST(pipe(p));
    hits = 0;
    wake_fd = -1;
    on_signal(SIGALRM, handler, 0);
    alarm(1);
    T(read(p[0], buf, sizeof buf));
    alarm(0);
    O("handler ran: %s", hits > 0 ? "yes" : "no");
    close(p[0]);
    close(p[1]);
}

int main(void)
{
    pipe_cases();
    socket_cases();
    mux_cases();
    handler_write_case();
    thread_signal_case();
    alarm_case();
    return 0;
}
