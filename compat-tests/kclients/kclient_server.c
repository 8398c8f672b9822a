/* A server under the shim whose listener must take both kinds of client: one of the
 * library OS (in this process) and ordinary kernel clients (another process, not under the
 * shim: the test harness). Prints "#lib=1" when the listener is a library-OS socket (its
 * fd is an eventfd placeholder), then "port N", then one line per client served; the
 * harness connects when it reads the port. Every wait is bounded (alarm). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static void die(const char *what)
{
    printf("FAILED %s: %s\n", what, strerror(errno));
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

/* Reads one message and answers "echo:" + it; prints who it came from. */
static void serve(int s, const char *who)
{
    char buf[64];
    ssize_t n = recv(s, buf, sizeof buf - 1, 0);
    if (n <= 0)
        die("recv");
    buf[n] = 0;
    char out[80];
    int m = snprintf(out, sizeof out, "echo:%s", buf);
    if (send(s, out, (size_t)m, MSG_NOSIGNAL) != m)
        die("send");
    printf("%s client: got \"%s\" (accepted fd is %s)\n", who, buf, is_lib(s) ? "library" : "kernel");
    fflush(stdout);
    close(s);
}

int main(void)
{
    alarm(20);
    setvbuf(stdout, NULL, _IOLBF, 0);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(l, (struct sockaddr *)&a, sizeof a) < 0)
        die("bind");
    socklen_t al = sizeof a;
    getsockname(l, (struct sockaddr *)&a, &al);
    if (listen(l, 16) < 0)
        die("listen");
    printf("#lib=%d\n", is_lib(l));
    /* 1. a client in this process */
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, (struct sockaddr *)&a, sizeof a) < 0)
        die("connect");
    send(c, "inproc", 6, 0);
    serve(accept(l, NULL, NULL), "in-process");
    char buf[64];
    ssize_t n = recv(c, buf, sizeof buf, 0);
    printf("in-process reply: %.*s\n", (int)(n < 0 ? 0 : n), buf);
    close(c);
    printf("port %d\n", ntohs(a.sin_port));
    /* 2. a kernel client, blocking accept */
    struct sockaddr_in peer;
    socklen_t pl = sizeof peer;
    int s = accept(l, (struct sockaddr *)&peer, &pl);
    if (s < 0)
        die("accept");
    printf("kernel peer is loopback: %d\n", peer.sin_addr.s_addr == htonl(INADDR_LOOPBACK));
    serve(s, "first kernel");
    /* 3. a kernel client announced by epoll */
    int ep = epoll_create1(0);
    struct epoll_event e = {.events = EPOLLIN, .data.u64 = 7};
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &e);
    struct epoll_event got;
    int k = epoll_wait(ep, &got, 1, 10000);
    printf("epoll_wait = %d data=%llu\n", k, (unsigned long long)got.data.u64);
    serve(accept4(l, NULL, NULL, SOCK_CLOEXEC), "second kernel");
    close(l);
    printf("done\n");
    return 0;
}
