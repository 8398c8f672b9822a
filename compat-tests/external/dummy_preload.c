/* A pass-through LD_PRELOAD interposer, used only by `run.sh --dummy` to check the
 * runner's plumbing (launcher, preflight, diffing) before the real shim exists.
 * Every wrapper forwards to the next definition (libc) unchanged, so the test outcomes
 * must be identical to a native run. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#define NEXT(name) static __typeof__(name) *next_; \
    if (!next_) next_ = (__typeof__(name) *)dlsym(RTLD_NEXT, #name);

int socket(int domain, int type, int protocol) {
    NEXT(socket) return next_(domain, type, protocol);
}
int close(int fd) { NEXT(close) return next_(fd); }
ssize_t read(int fd, void *buf, size_t n) { NEXT(read) return next_(fd, buf, n); }
ssize_t write(int fd, const void *buf, size_t n) { NEXT(write) return next_(fd, buf, n); }
int connect(int fd, const struct sockaddr *a, socklen_t l) {
    NEXT(connect) return next_(fd, a, l);
}
int accept4(int fd, struct sockaddr *a, socklen_t *l, int flags) {
    NEXT(accept4) return next_(fd, a, l, flags);
}
ssize_t recv(int fd, void *buf, size_t n, int flags) {
    NEXT(recv) return next_(fd, buf, n, flags);
}
ssize_t send(int fd, const void *buf, size_t n, int flags) {
    NEXT(send) return next_(fd, buf, n, flags);
}
int poll(struct pollfd *fds, nfds_t n, int timeout) {
    NEXT(poll) return next_(fds, n, timeout);
}
int epoll_wait(int epfd, struct epoll_event *ev, int max, int timeout) {
    NEXT(epoll_wait) return next_(epfd, ev, max, timeout);
}
int select(int n, fd_set *r, fd_set *w, fd_set *e, struct timeval *t) {
    NEXT(select) return next_(n, r, w, e, t);
}
