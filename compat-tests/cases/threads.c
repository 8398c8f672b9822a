/* Several threads doing I/O at once: private pipes, one shared pipe with
 * atomic (< PIPE_BUF) messages, socketpair echo servers, TCP clients against
 * one acceptor, concurrent fd allocation, pwrite to disjoint file regions,
 * and a reader blocked in one thread woken by another. Only totals and
 * checksums are printed, after the threads are joined. */
#include "net_common.h"

#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

#define NT 4

struct pipe_job {
    int rfd, wfd, id;
    long bytes;
    uint32_t h;
};

static void *pipe_writer(void *arg)
{
    struct pipe_job *j = arg;
    char msg[64];
    for (int i = 0; i < 2000; i++) {
        int n = snprintf(msg, sizeof msg, "t%d-m%d;", j->id, i);
        if (write(j->wfd, msg, (size_t)n) != n)
            break;
    }
    close(j->wfd);
    return NULL;
}

static void *pipe_reader(void *arg)
{
    struct pipe_job *j = arg;
    char buf[1000];
    long r;
    j->h = FNV_INIT;
    while ((r = read(j->rfd, buf, sizeof buf)) > 0) {
        j->h = fnv(buf, (size_t)r, j->h);
        j->bytes += r;
    }
    close(j->rfd);
    return NULL;
}

static void private_pipes(void)
{
    CASE("threads_private_pipes");
    struct pipe_job jobs[NT];
    pthread_t w[NT], r[NT];
    for (int i = 0; i < NT; i++) {
        int p[2];
        MUST(pipe(p));
        jobs[i] = (struct pipe_job){.rfd = p[0], .wfd = p[1], .id = i};
    }
    for (int i = 0; i < NT; i++) {
        pthread_create(&r[i], NULL, pipe_reader, &jobs[i]);
        pthread_create(&w[i], NULL, pipe_writer, &jobs[i]);
    }
    for (int i = 0; i < NT; i++) {
        pthread_join(w[i], NULL);
        pthread_join(r[i], NULL);
    }
    for (int i = 0; i < NT; i++)
        O("pipe %d: bytes=%ld fnv=%08x", i, jobs[i].bytes, jobs[i].h);
    list_fds("fds after");
}

struct shared_job {
    int wfd, id;
};

static void *shared_writer(void *arg)
{
    struct shared_job *j = arg;
    char msg[100];
    for (int i = 0; i < 500; i++) {
        memset(msg, 'a' + j->id, sizeof msg);
        msg[0] = (char)('0' + j->id);
        msg[99] = '\n';
        if (write(j->wfd, msg, sizeof msg) != (long)sizeof msg)
            break;
    }
    return NULL;
}

static void shared_pipe(void)
{
    CASE("threads_shared_pipe_atomic_writes");
    int p[2];
    MUST(pipe(p));
    pthread_t th[NT];
    struct shared_job jobs[NT];
    for (int i = 0; i < NT; i++) {
        jobs[i] = (struct shared_job){.wfd = p[1], .id = i};
        pthread_create(&th[i], NULL, shared_writer, &jobs[i]);
    }
    /* read whole 100-byte records; each must be from one writer */
    long per[NT] = {0}, torn = 0, total = 0;
    char rec[100];
    size_t have = 0;
    for (;;) {
        if (total == NT * 500)
            break;
        long r = read(p[0], rec + have, sizeof rec - have);
        if (r <= 0)
            break;
        have += (size_t)r;
        if (have < sizeof rec)
            continue;
        have = 0;
        total++;
        int id = rec[0] - '0';
        int ok = id >= 0 && id < NT && rec[99] == '\n';
        for (int k = 1; ok && k < 99; k++)
            ok = rec[k] == 'a' + id;
        if (ok)
            per[id]++;
        else
            torn++;
    }
    for (int i = 0; i < NT; i++)
        pthread_join(th[i], NULL);
    O("records=%ld torn=%ld per-writer=%ld,%ld,%ld,%ld", total, torn, per[0], per[1], per[2],
      per[3]);
    close(p[0]);
    close(p[1]);
}

static void *echo_server(void *arg)
{
    int fd = *(int *)arg;
    char buf[512];
    long r;
    while ((r = recv(fd, buf, sizeof buf, 0)) > 0)
        if (send(fd, buf, (size_t)r, 0) != r)
            break;
    close(fd);
    return NULL;
}

struct echo_client {
    int fd, id;
    long ok;
};

static void *echo_client(void *arg)
{
    struct echo_client *c = arg;
    char out[64], in[64];
    for (int i = 0; i < 300; i++) {
        int n = snprintf(out, sizeof out, "c%d-%d", c->id, i);
        if (send(c->fd, out, (size_t)n, 0) != n)
            break;
        long got = 0;
        while (got < n) {
            long r = recv(c->fd, in + got, (size_t)(n - got), 0);
            if (r <= 0)
                break;
            got += r;
        }
        if (got == n && memcmp(in, out, (size_t)n) == 0)
            c->ok++;
    }
    shutdown(c->fd, SHUT_WR);
    return NULL;
}

static void socketpair_echo(void)
{
    CASE("threads_socketpair_echo");
    pthread_t srv[NT], cli[NT];
    int sfd[NT];
    struct echo_client cs[NT];
    for (int i = 0; i < NT; i++) {
        int sv[2];
        MUST(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
        sfd[i] = sv[1];
        cs[i] = (struct echo_client){.fd = sv[0], .id = i};
    }
    for (int i = 0; i < NT; i++) {
        pthread_create(&srv[i], NULL, echo_server, &sfd[i]);
        pthread_create(&cli[i], NULL, echo_client, &cs[i]);
    }
    for (int i = 0; i < NT; i++) {
        pthread_join(cli[i], NULL);
        pthread_join(srv[i], NULL);
        close(cs[i].fd);
    }
    O("round trips ok: %ld,%ld,%ld,%ld", cs[0].ok, cs[1].ok, cs[2].ok, cs[3].ok);
}

static addr_t tcp_addr;
static int tcp_listener;

static void *acceptor(void *arg)
{
    (void)arg;
    pthread_t th[NT];
    int fds[NT];
    for (int i = 0; i < NT; i++) {
        fds[i] = accept(tcp_listener, NULL, NULL);
        pthread_create(&th[i], NULL, echo_server, &fds[i]);
    }
    for (int i = 0; i < NT; i++)
        pthread_join(th[i], NULL);
    return NULL;
}

static void *tcp_client(void *arg)
{
    struct echo_client *c = arg;
    c->fd = socket(AF_INET6, SOCK_STREAM, 0);
    if (connect(c->fd, SA(&tcp_addr), tcp_addr.len) != 0)
        return NULL;
    echo_client(c);
    char b;
    recv(c->fd, &b, 1, 0);
    close(c->fd);
    return NULL;
}

static void tcp_echo(void)
{
    CASE("threads_tcp_echo");
    tcp_listener = listener(AF_INET6, SOCK_STREAM, &tcp_addr);
    pthread_t acc, cli[NT];
    struct echo_client cs[NT];
    pthread_create(&acc, NULL, acceptor, NULL);
    for (int i = 0; i < NT; i++) {
        cs[i] = (struct echo_client){.id = i};
        pthread_create(&cli[i], NULL, tcp_client, &cs[i]);
    }
    for (int i = 0; i < NT; i++)
        pthread_join(cli[i], NULL);
    pthread_join(acc, NULL);
    close(tcp_listener);
    O("round trips ok: %ld,%ld,%ld,%ld", cs[0].ok, cs[1].ok, cs[2].ok, cs[3].ok);
}

static void *fd_churn(void *arg)
{
    long *fails = arg;
    for (int i = 0; i < 500; i++) {
        int p[2];
        if (pipe(p) != 0) {
            (*fails)++;
            continue;
        }
        int d = dup(p[0]);
        int s = socket(AF_UNIX, SOCK_DGRAM, 0);
        int f = open("/dev/null", O_RDONLY);
        if (d < 0 || s < 0 || f < 0)
            (*fails)++;
        close(p[0]);
        close(p[1]);
        close(d);
        close(s);
        close(f);
    }
    return NULL;
}

static void fd_alloc(void)
{
    CASE("threads_fd_alloc_churn");
    pthread_t th[NT];
    long fails[NT] = {0};
    for (int i = 0; i < NT; i++)
        pthread_create(&th[i], NULL, fd_churn, &fails[i]);
    for (int i = 0; i < NT; i++)
        pthread_join(th[i], NULL);
    O("fails=%ld,%ld,%ld,%ld", fails[0], fails[1], fails[2], fails[3]);
    list_fds("fds after");
    int p[2];
    T(pipe(p));
    O("next fds=%d,%d", p[0], p[1]);
    close(p[0]);
    close(p[1]);
}

struct pw_job {
    int fd, id;
};

static void *pwriter(void *arg)
{
    struct pw_job *j = arg;
    char blk[4096];
    memset(blk, 'A' + j->id, sizeof blk);
    for (int i = 0; i < 16; i++)
        pwrite(j->fd, blk, sizeof blk, ((off_t)i * NT + j->id) * (off_t)sizeof blk);
    return NULL;
}

static void file_pwrite(void)
{
    CASE("threads_pwrite_disjoint");
    int fd = (int)MUST(open("pw.dat", O_CREAT | O_RDWR | O_TRUNC, 0644));
    pthread_t th[NT];
    struct pw_job jobs[NT];
    for (int i = 0; i < NT; i++) {
        jobs[i] = (struct pw_job){.fd = fd, .id = i};
        pthread_create(&th[i], NULL, pwriter, &jobs[i]);
    }
    for (int i = 0; i < NT; i++)
        pthread_join(th[i], NULL);
    struct stat st;
    fstat(fd, &st);
    long bad = 0;
    char blk[4096];
    for (int k = 0; k < 16 * NT; k++) {
        if (pread(fd, blk, sizeof blk, (off_t)k * (off_t)sizeof blk) != (long)sizeof blk) {
            bad++;
            continue;
        }
        for (size_t i = 0; i < sizeof blk; i++)
            if (blk[i] != 'A' + k % NT) {
                bad++;
                break;
            }
    }
    O("size=%lld bad blocks=%ld", (long long)st.st_size, bad);
    close(fd);
}

static int wake_pipe[2];
static void *blocked_reader(void *arg)
{
    long *res = arg;
    char buf[16];
    res[0] = read(wake_pipe[0], buf, sizeof buf);
    res[1] = res[0] > 0 ? buf[0] : 0;
    return NULL;
}

static void *epoll_waiter(void *arg)
{
    int *fds = arg;
    struct epoll_event e;
    long n = epoll_wait(fds[0], &e, 1, 5000);
    fds[2] = (int)n;
    fds[3] = n > 0 ? (int)e.data.u64 : -1;
    return NULL;
}

static void cross_thread_wakeups(void)
{
    CASE("threads_blocked_read_woken");
    MUST(pipe(wake_pipe));
    long res[2] = {0, 0};
    pthread_t th;
    pthread_create(&th, NULL, blocked_reader, res);
    usleep(20000);
    T(write(wake_pipe[1], "W", 1));
    pthread_join(th, NULL);
    O("reader got %ld byte(s): %c", res[0], (char)res[1]);
    close(wake_pipe[0]);
    close(wake_pipe[1]);

    CASE("threads_epoll_woken_by_eventfd");
    int ep = (int)MUST(epoll_create1(0));
    int ev = (int)MUST(eventfd(0, 0));
    struct epoll_event e = {.events = EPOLLIN, .data.u64 = 77};
    MUST(epoll_ctl(ep, EPOLL_CTL_ADD, ev, &e));
    int fds[4] = {ep, ev, 0, 0};
    pthread_create(&th, NULL, epoll_waiter, fds);
    usleep(20000);
    uint64_t one = 1;
    T(write(ev, &one, sizeof one));
    pthread_join(th, NULL);
    O("epoll_wait=%d data=%d", fds[2], fds[3]);
    close(ev);
    close(ep);
}

int main(void)
{
    private_pipes();
    shared_pipe();
    socketpair_echo();
    tcp_echo();
    fd_alloc();
    file_pwrite();
    cross_thread_wakeups();
    return 0;
}
