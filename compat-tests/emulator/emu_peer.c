/* compat-cflags: -O2 */
/* A peer for the emulator backend's end-to-end test (tests/emulator.rs). One program, several
 * roles, chosen by argv[1]:
 *
 *   server TCP UDP         TCP echo on 127.0.0.1:TCP (a thread per connection) and UDP echo
 *                          on 127.0.0.1:UDP; prints "#lib=N" (1 if the listener is a
 *                          library-OS socket: its fd is an eventfd placeholder), then
 *                          "ready", then "eof" (or "error ERRNO") each time a connection
 *                          ends; runs until killed (alarm: 120 s).
 *   epollsrv TCP UDP       the TCP echo as memcached is built: the main thread makes the
 *                          first epoll instance and waits on it for the (non-blocking)
 *                          listener alone; it hands each connection through a pipe to a
 *                          worker thread, which serves every connection from an epoll of
 *                          its own; UDP echo as for `server`. Prints as `server`.
 *   hold TCP               connects to 127.0.0.1:TCP, checks one echo and exits without
 *                          closing the socket: the exit must end the connection (FIN).
 *   client TCP UDP N BYTES N connections at once to 127.0.0.1:TCP, each sends BYTES of a
 *                          pattern and checks the echo byte by byte; then 16 UDP datagrams
 *                          to 127.0.0.1:UDP and back. Prints "#lib=N" for the first
 *                          connection, "tcp ok N BYTES", "udp ok 16".
 *   pingpong TCP UDP N     one connection to 127.0.0.1:TCP and one UDP socket: N echo round
 *                          trips of a short message on each (a long-lived flow: under the
 *                          emulator it gets a secure binding and leaves the switch); prints
 *                          "pingpong ok N".
 *   connect PORT           connects to 127.0.0.1:PORT (a server not under the shim), sends
 *                          "hello", prints the answer and "#lib=N" after the connect.
 *   bind PROTO PORT        binds a tcp or udp socket to 127.0.0.1:PORT; prints "bind ok" or
 *                          "bind EADDRINUSE" (or the errno's name).
 *   rebind PROTO P1 P2     binds a PROTO socket to 127.0.0.1:P1 and prints "first ok" (or the
 *                          errno), waits for a line on standard input, then binds another to
 *                          P2 and prints "second ok" (or the errno): the daemon can be
 *                          restarted in between.
 *   fork TCP               connects to 127.0.0.1:TCP (the echo server) and forks. The child
 *                          polls the inherited connection, on which an echo waits unread
 *                          ("child poll: 1 revents=0x1" natively), peeks at it (prints
 *                          "child inherited: " and the errno's name, or "readable" as
 *                          natively), then opens a new connection and checks its echo
 *                          ("child new: ok lib=N"). The parent, after the child exits,
 *                          checks its own connection's echo ("parent: ok lib=N").
 *   nbrecv TCP N           one non-blocking connection to the echo server: N echoes of
 *                          1..3000 bytes, read until EAGAIN and then waited for in poll (or,
 *                          every other echo, read again at once); counts reads that found
 *                          nothing right after poll said readable ("lied", 0 natively); then
 *                          reads the end of input after its SHUT_WR and after a SHUT_RD of a
 *                          second connection. Prints "nbrecv ok N lib=N lied L eof 0
 *                          shut_rd EAGAIN then 0".
 *   bigsink 4|6            a UDP echo on 127.0.0.1 or ::1, port 0, for datagrams of up to
 *                          65,527 bytes; prints "port P lib=N", "ready"; runs until killed (alarm:
 *                          120 s).
 *   bigudp 4|6 PORT        sends datagrams of 1 byte to the family's largest (65,507 bytes
 *                          over IPv4, 65,527 over IPv6) to the sink at PORT, each a
 *                          pattern, and checks each echo whole; prints "big SIZE ok" (or
 *                          "lost", "short N", "differs", "send ERRNO") for each, then
 *                          "lib=N".
 *
 * Every wait is bounded (alarm, SO_RCVTIMEO). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what)
{
    printf("FAILED %s: %s\n", what, strerror(errno));
    fflush(stdout);
    exit(1);
}

static int is_lib(int fd)
{
    char p[64], b[128];
    snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(p, b, sizeof b - 1);
    b[n < 0 ? 0 : n] = 0;
    return strstr(b, "eventfd") != NULL;
}

static struct sockaddr_in lo(int port)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

/* A TCP connection to 127.0.0.1:PORT; dies with WHAT on failure. */
static int connect_lo(int port, const char *what)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = lo(port);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0)
        die(what);
    return fd;
}

static void timeouts(int fd, int secs)
{
    struct timeval tv = {secs, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void *echo_conn(void *arg)
{
    int c = (int)(long)arg;
    static __thread unsigned char buf[65536];
    timeouts(c, 30);
    for (;;) {
        ssize_t n = read(c, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0)
            printf("eof\n");
        if (n < 0)
            printf("error %s\n", strerrorname_np(errno));
        if (n <= 0)
            break;
        if (write_all(c, buf, (size_t)n) < 0)
            break;
    }
    close(c);
    return NULL;
}

/* Echoes every datagram on UDP socket ARG, up to the largest (65,527 bytes over IPv6). */
static void *udp_echo(void *arg)
{
    int u = (int)(long)arg;
    static __thread unsigned char buf[65536];
    for (;;) {
        struct sockaddr_storage from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(u, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("udp recvfrom");
        if (sendto(u, buf, (size_t)n, 0, (struct sockaddr *)&from, fl) < 0)
            die("udp sendto");
    }
    return NULL;
}

/* The servers' TCP listener on 127.0.0.1:TPORT (with FLAGS for socket(2)) and UDP socket on
 * 127.0.0.1:UPORT. */
static void listen_both(int tport, int uport, int flags, int *l_out, int *u_out)
{
    int l = socket(AF_INET, SOCK_STREAM | flags, 0);
    if (l < 0)
        die("socket");
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = lo(tport);
    if (bind(l, (struct sockaddr *)&a, sizeof a) < 0)
        die("bind tcp");
    if (listen(l, 64) < 0)
        die("listen");
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    if (u < 0)
        die("udp socket");
    struct sockaddr_in ua = lo(uport);
    if (bind(u, (struct sockaddr *)&ua, sizeof ua) < 0)
        die("bind udp");
    *l_out = l;
    *u_out = u;
}

static int server(int tport, int uport)
{
    alarm(120);
    int l, u;
    listen_both(tport, uport, 0, &l, &u);
    pthread_t t;
    if (pthread_create(&t, NULL, udp_echo, (void *)(long)u) != 0)
        die("pthread_create");
    printf("#lib=%d\nready\n", is_lib(l) && is_lib(u));
    fflush(stdout);
    for (;;) {
        int c = accept(l, NULL, NULL);
        if (c < 0 && errno == EINTR)
            continue;
        if (c < 0)
            die("accept");
        if (pthread_create(&t, NULL, echo_conn, (void *)(long)c) != 0)
            die("pthread_create");
        pthread_detach(t);
    }
    return 0;
}

static void *epoll_worker(void *arg)
{
    int pipe_rd = (int)(long)arg;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("worker epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = pipe_rd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, pipe_rd, &ev) < 0)
        die("worker epoll_ctl pipe");
    static unsigned char buf[65536];
    for (;;) {
        struct epoll_event evs[64];
        int n = epoll_wait(ep, evs, 64, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("worker epoll_wait");
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == pipe_rd) {
                int c;
                if (read(pipe_rd, &c, sizeof c) != sizeof c)
                    die("worker read pipe");
                timeouts(c, 30);
                struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev) < 0)
                    die("worker epoll_ctl conn");
                continue;
            }
            ssize_t r = read(fd, buf, sizeof buf);
            if (r < 0 && errno == EINTR)
                continue;
            if (r > 0 && write_all(fd, buf, (size_t)r) == 0)
                continue;
            if (r == 0)
                printf("eof\n");
            else
                printf("error %s\n", strerrorname_np(errno));
            epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
            close(fd);
        }
    }
    return NULL;
}

static int epoll_server(int tport, int uport)
{
    alarm(120);
    /* The main thread's instance first, as memcached's. */
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    int l, u;
    listen_both(tport, uport, SOCK_NONBLOCK, &l, &u);
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        die("pipe2");
    pthread_t t;
    if (pthread_create(&t, NULL, udp_echo, (void *)(long)u) != 0 ||
        pthread_create(&t, NULL, epoll_worker, (void *)(long)p[0]) != 0)
        die("pthread_create");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = l};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev) < 0)
        die("epoll_ctl listener");
    printf("#lib=%d\nready\n", is_lib(l) && is_lib(u));
    fflush(stdout);
    for (;;) {
        struct epoll_event evs[4];
        int n = epoll_wait(ep, evs, 4, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("epoll_wait");
        for (;;) {
            int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
            if (c < 0 && (errno == EAGAIN || errno == EINTR))
                break;
            if (c < 0)
                die("accept4");
            if (write(p[1], &c, sizeof c) != sizeof c)
                die("write pipe");
        }
    }
    return 0;
}

struct conn {
    int fd;
    size_t bytes;
    int ok;
};

static unsigned char pattern(size_t i, int fd)
{
    return (unsigned char)(i * 7 + i / 251 + (size_t)fd);
}

static void *sender(void *arg)
{
    struct conn *c = arg;
    unsigned char buf[16384];
    size_t off = 0;
    while (off < c->bytes) {
        size_t n = c->bytes - off < sizeof buf ? c->bytes - off : sizeof buf;
        for (size_t i = 0; i < n; i++)
            buf[i] = pattern(off + i, c->fd);
        if (write_all(c->fd, buf, n) < 0)
            die("client write");
        off += n;
    }
    shutdown(c->fd, SHUT_WR);
    return NULL;
}

static void *receiver(void *arg)
{
    struct conn *c = arg;
    unsigned char buf[16384];
    size_t off = 0;
    for (;;) {
        ssize_t n = read(c->fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("client read");
        if (n == 0)
            break;
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] != pattern(off + (size_t)i, c->fd)) {
                printf("FAILED byte %zu of connection fd %d\n", off + (size_t)i, c->fd);
                fflush(stdout);
                exit(1);
            }
        off += (size_t)n;
    }
    c->ok = off == c->bytes;
    return NULL;
}

static int client(int tport, int uport, int nconn, size_t bytes)
{
    alarm(120);
    struct conn cs[16];
    pthread_t ts[32];
    if (nconn > 16)
        nconn = 16;
    for (int i = 0; i < nconn; i++) {
        int fd = connect_lo(tport, "connect");
        if (i == 0) {
            printf("#lib=%d\n", is_lib(fd));
            fflush(stdout);
        }
        timeouts(fd, 30);
        cs[i] = (struct conn){fd, bytes, 0};
    }
    for (int i = 0; i < nconn; i++) {
        pthread_create(&ts[2 * i], NULL, sender, &cs[i]);
        pthread_create(&ts[2 * i + 1], NULL, receiver, &cs[i]);
    }
    int good = 0;
    for (int i = 0; i < nconn; i++) {
        pthread_join(ts[2 * i], NULL);
        pthread_join(ts[2 * i + 1], NULL);
        good += cs[i].ok;
        close(cs[i].fd);
    }
    if (good != nconn) {
        printf("FAILED %d of %d connections came back whole\n", nconn - good, nconn);
        return 1;
    }
    printf("tcp ok %d %zu\n", nconn, bytes);
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    if (u < 0)
        die("udp socket");
    timeouts(u, 5);
    struct sockaddr_in ua = lo(uport);
    for (int i = 0; i < 16; i++) {
        char msg[64], got[64];
        int n = snprintf(msg, sizeof msg, "datagram %d", i);
        if (sendto(u, msg, (size_t)n, 0, (struct sockaddr *)&ua, sizeof ua) != n)
            die("udp sendto");
        ssize_t r = recv(u, got, sizeof got, 0);
        if (r < 0)
            die("udp recv");
        if (r != n || memcmp(got, msg, (size_t)n) != 0) {
            printf("FAILED datagram %d came back wrong\n", i);
            return 1;
        }
    }
    printf("udp lib=%d\nudp ok 16\n", is_lib(u));
    return 0;
}

static int connect_kernel(int port)
{
    alarm(30);
    int fd = connect_lo(port, "connect");
    printf("#lib=%d\n", is_lib(fd));
    timeouts(fd, 10);
    if (write_all(fd, (const unsigned char *)"hello", 5) < 0)
        die("write");
    char buf[64];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    if (n < 0)
        die("read");
    buf[n] = 0;
    printf("answer %s\n", buf);
    return 0;
}

static int bind_one(const char *proto, int port)
{
    int fd = socket(AF_INET, strcmp(proto, "udp") == 0 ? SOCK_DGRAM : SOCK_STREAM, 0);
    if (fd < 0)
        die("socket");
    struct sockaddr_in a = lo(port);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0)
        printf("bind ok\n");
    else
        printf("bind %s\n", errno == EADDRINUSE ? "EADDRINUSE" : strerror(errno));
    return 0;
}

static void bind_print(const char *what, const char *proto, int port)
{
    int fd = socket(AF_INET, strcmp(proto, "udp") == 0 ? SOCK_DGRAM : SOCK_STREAM, 0);
    if (fd < 0)
        die("socket");
    struct sockaddr_in a = lo(port);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0)
        printf("%s ok lib=%d\n", what, is_lib(fd));
    else
        printf("%s %s\n", what, strerrorname_np(errno));
    fflush(stdout);
}

static int rebind(const char *proto, int p1, int p2)
{
    alarm(60);
    bind_print("first", proto, p1);
    char line[16];
    if (!fgets(line, sizeof line, stdin))
        die("stdin");
    bind_print("second", proto, p2);
    return 0;
}

static int echo_once(int fd, const char *msg)
{
    size_t n = strlen(msg);
    if (write_all(fd, (const unsigned char *)msg, n) < 0)
        return -1;
    char buf[64];
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, sizeof buf - got);
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return memcmp(buf, msg, n) == 0 ? 0 : -1;
}

static int pingpong(int tport, int uport, int n)
{
    int fd = connect_lo(tport, "pingpong connect");
    timeouts(fd, 10);
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in ua = lo(uport);
    if (u < 0 || connect(u, (struct sockaddr *)&ua, sizeof ua) < 0)
        die("pingpong udp connect");
    timeouts(u, 10);
    for (int i = 0; i < n; i++) {
        char msg[32];
        snprintf(msg, sizeof msg, "ping %d", i);
        if (echo_once(fd, msg) < 0) {
            printf("pingpong tcp failed at %d\n", i);
            return 1;
        }
        size_t len = strlen(msg);
        char buf[64];
        ssize_t r;
        if (send(u, msg, len, 0) != (ssize_t)len || (r = recv(u, buf, sizeof buf, 0)) != (ssize_t)len ||
            memcmp(buf, msg, len) != 0) {
            printf("pingpong udp failed at %d\n", i);
            return 1;
        }
    }
    close(fd);
    close(u);
    printf("pingpong ok %d\n", n);
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int connect_nb(int tport)
{
    int fd = connect_lo(tport, "nbrecv connect");
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

/* Reads until WANT bytes came (or end of input: returns what came), nonblocking: after an
 * EAGAIN either waits in poll (then the next read must find something: poll said so) or,
 * when SPIN, reads again at once, as a busy-polling program does (nothing else runs the
 * stack for it then). Counts the broken promises in *LIED. At most 10 s. */
static ssize_t read_nb(int fd, unsigned char *buf, size_t want, int spin, int *lied)
{
    size_t got = 0;
    int promised = 0;
    double end = now_s() + 10;
    while (got < want) {
        ssize_t r = recv(fd, buf + got, want - got, 0);
        if (r > 0) {
            got += (size_t)r;
            promised = 0;
            continue;
        }
        if (r == 0)
            return (ssize_t)got;
        if (errno != EAGAIN) {
            printf("recv: %s\n", strerrorname_np(errno));
            return -1;
        }
        if (promised)
            (*lied)++;
        promised = 0;
        if (now_s() > end) {
            printf("recv: nothing in 10 s (%zu of %zu bytes)\n", got, want);
            return -1;
        }
        if (spin)
            continue;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int n = poll(&p, 1, 10000);
        if (n != 1 || !(p.revents & (POLLIN | POLLHUP | POLLERR))) {
            printf("poll: %d revents %#x\n", n, p.revents);
            return -1;
        }
        promised = 1;
    }
    return (ssize_t)got;
}

/* Nonblocking reads as memcached's workers and libmemcached's clients do them (read until
 * EAGAIN, then wait): N echoes of 1..3000 bytes, every other one busy-polled; a read after
 * poll said readable never answers EAGAIN; the end of the server's input (after our
 * SHUT_WR) reads as 0, as does our own SHUT_RD. */
static int nbrecv(int tport, int n)
{
    alarm(120);
    int fd = connect_nb(tport);
    int lib = is_lib(fd);
    static unsigned char out[3000], in[3000];
    int lied = 0;
    for (int i = 0; i < n; i++) {
        size_t len = 1 + (size_t)(i * 7919) % sizeof out;
        for (size_t k = 0; k < len; k++)
            out[k] = (unsigned char)(i + k * 31);
        size_t sent = 0;
        double end = now_s() + 10;
        while (sent < len) {
            ssize_t w = send(fd, out + sent, len - sent, 0);
            if (w > 0)
                sent += (size_t)w;
            else if (w < 0 && errno == EAGAIN && now_s() < end)
                continue;
            else
                die("nbrecv send");
        }
        ssize_t r = read_nb(fd, in, len, i % 2, &lied);
        if (r != (ssize_t)len || memcmp(in, out, len) != 0) {
            printf("nbrecv: echo %d wrong (%zd of %zu bytes)\n", i, r, len);
            return 1;
        }
    }
    /* The server reads our end of input and closes: 0, not EAGAIN, once its FIN is in. */
    shutdown(fd, SHUT_WR);
    ssize_t r = read_nb(fd, in, 1, 0, &lied);
    close(fd);
    /* Our own SHUT_RD: 0 at once, with nothing come from the peer. */
    int fd2 = connect_nb(tport);
    ssize_t before = recv(fd2, in, 1, 0);
    int before_errno = errno;
    shutdown(fd2, SHUT_RD);
    ssize_t after = recv(fd2, in, 1, 0);
    close(fd2);
    printf("nbrecv ok %d lib=%d lied %d eof %zd shut_rd %s then %zd\n", n, lib, lied, r,
           before < 0 ? strerrorname_np(before_errno) : "data", after);
    return 0;
}

static int fork_test(int port)
{
    alarm(60);
    int fd = connect_lo(port, "connect");
    timeouts(fd, 10);
    if (echo_once(fd, "before fork") < 0)
        die("echo before fork");
    /* An echo left unread: the connection is readable when the child looks at it. */
    if (write_all(fd, (const unsigned char *)"held", 4) < 0)
        die("write held");
    struct pollfd w = {fd, POLLIN, 0};
    if (poll(&w, 1, 10000) != 1)
        die("the held echo did not come");
    char peek;
    if (recv(fd, &peek, 1, MSG_PEEK) != 1)
        die("peek held");
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        struct pollfd q = {fd, POLLIN, 0};
        int n = poll(&q, 1, 0);
        printf("child poll: %d revents=%#x\n", n, (unsigned)q.revents);
        char b;
        ssize_t r = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        printf("child inherited: %s\n", r < 0 ? strerrorname_np(errno) : "readable");
        int c = connect_lo(port, "child connect");
        timeouts(c, 10);
        printf("child new: %s lib=%d\n", echo_once(c, "from the child") == 0 ? "ok" : "FAILED", is_lib(c));
        fflush(stdout);
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    char held[4];
    size_t got = 0;
    while (got < sizeof held) {
        ssize_t r = read(fd, held + got, sizeof held - got);
        if (r <= 0)
            die("read held");
        got += (size_t)r;
    }
    if (memcmp(held, "held", 4) != 0)
        die("the held echo changed");
    printf("parent: %s lib=%d\n", echo_once(fd, "after fork") == 0 ? "ok" : "FAILED", is_lib(fd));
    return 0;
}

/* The loopback address of family 4 or 6, at `port`. */
static socklen_t lo_of(int fam, int port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    if (fam == 6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((unsigned short)port);
        a->sin6_addr = in6addr_loopback;
        return sizeof *a;
    }
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    *a = lo(port);
    return sizeof *a;
}

static int bigsink(int fam)
{
    alarm(120);
    struct sockaddr_storage ss;
    socklen_t sl = lo_of(fam, 0, &ss);
    int u = socket(ss.ss_family, SOCK_DGRAM, 0);
    if (u < 0 || bind(u, (struct sockaddr *)&ss, sl) < 0)
        die("bigsink bind");
    if (getsockname(u, (struct sockaddr *)&ss, &sl) < 0)
        die("getsockname");
    int port = ntohs(fam == 6 ? ((struct sockaddr_in6 *)&ss)->sin6_port : ((struct sockaddr_in *)&ss)->sin_port);
    printf("port %d lib=%d\nready\n", port, is_lib(u));
    fflush(stdout);
    udp_echo((void *)(long)u);
    return 0;
}

static int bigudp(int fam, int port)
{
    alarm(60);
    static const size_t sizes4[] = {1, 1472, 2048, 16000, 16356, 16357, 16400, 30000, 65000, 65507};
    static const size_t sizes6[] = {1, 1452, 2048, 16000, 16336, 16337, 16400, 30000, 65487, 65488, 65527};
    const size_t *sizes = fam == 6 ? sizes6 : sizes4;
    size_t count = fam == 6 ? sizeof sizes6 / sizeof *sizes6 : sizeof sizes4 / sizeof *sizes4;
    struct sockaddr_storage to;
    socklen_t tl = lo_of(fam, port, &to);
    int u = socket(to.ss_family, SOCK_DGRAM, 0);
    if (u < 0)
        die("socket");
    timeouts(u, 5);
    static unsigned char out[65536], in[65536];
    for (size_t k = 0; k < count; k++) {
        size_t n = sizes[k];
        for (size_t i = 0; i < n; i++)
            out[i] = (unsigned char)(i * 7 + k);
        if (sendto(u, out, n, 0, (struct sockaddr *)&to, tl) != (ssize_t)n) {
            printf("big %zu send %s\n", n, strerrorname_np(errno));
            continue;
        }
        ssize_t r = recv(u, in, sizeof in, 0);
        if (r < 0)
            printf("big %zu %s\n", n, errno == EAGAIN ? "lost" : strerrorname_np(errno));
        else if ((size_t)r != n)
            printf("big %zu short %zd\n", n, r);
        else
            printf("big %zu %s\n", n, memcmp(in, out, n) == 0 ? "ok" : "differs");
    }
    printf("lib=%d\n", is_lib(u));
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 4 && strcmp(argv[1], "server") == 0)
        return server(atoi(argv[2]), atoi(argv[3]));
    if (argc >= 4 && strcmp(argv[1], "epollsrv") == 0)
        return epoll_server(atoi(argv[2]), atoi(argv[3]));
    if (argc >= 6 && strcmp(argv[1], "client") == 0)
        return client(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), (size_t)atol(argv[5]));
    if (argc >= 5 && strcmp(argv[1], "pingpong") == 0)
        return pingpong(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
    if (argc >= 3 && strcmp(argv[1], "connect") == 0)
        return connect_kernel(atoi(argv[2]));
    if (argc >= 4 && strcmp(argv[1], "bind") == 0)
        return bind_one(argv[2], atoi(argv[3]));
    if (argc >= 3 && strcmp(argv[1], "hold") == 0) {
        int fd = connect_lo(atoi(argv[2]), "connect");
        timeouts(fd, 10);
        printf("hold %s\n", echo_once(fd, "held") == 0 ? "ok" : "FAILED");
        return 0;
    }
    if (argc >= 5 && strcmp(argv[1], "rebind") == 0)
        return rebind(argv[2], atoi(argv[3]), atoi(argv[4]));
    if (argc >= 3 && strcmp(argv[1], "fork") == 0)
        return fork_test(atoi(argv[2]));
    if (argc >= 4 && strcmp(argv[1], "nbrecv") == 0)
        return nbrecv(atoi(argv[2]), atoi(argv[3]));
    if (argc >= 3 && strcmp(argv[1], "bigsink") == 0)
        return bigsink(atoi(argv[2]));
    if (argc >= 4 && strcmp(argv[1], "bigudp") == 0)
        return bigudp(atoi(argv[2]), atoi(argv[3]));
    fprintf(stderr, "usage: emu_peer server TCP UDP | epollsrv TCP UDP | client TCP UDP N BYTES | connect PORT | bind tcp|udp PORT | hold TCP | rebind PROTO P1 P2 | fork TCP | nbrecv TCP N | bigsink 4|6 | bigudp 4|6 PORT\n");
    return 2;
}
