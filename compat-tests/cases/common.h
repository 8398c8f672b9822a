/*
 * Shared helpers for the differential test programs (header-only).
 *
 * Every program prints observation lines `case_name: ...` on stdout.  The
 * harness runs each program natively and under the shim and compares the
 * lines case by case.  Lines starting with `#` are meta lines and are not
 * compared; `#shim=0|1` (printed by the constructor below, so also by every
 * exec'd child) tells whether `read` resolves into libarrakis.
 *
 * Rules for observations: print return values, errno NAMES, data and fd
 * numbers; never pids, ports, inode numbers, addresses or times.
 *
 * Output goes through write(2) on fd 1, unbuffered, so fork() never
 * duplicates buffered lines.
 */
#ifndef COMPAT_COMMON_H
#define COMPAT_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

/* The case whose observations are being printed. */
static const char *cur_case = "setup";

#define CASE(name) (cur_case = (name))

static __attribute__((unused)) void out_raw(const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = write(1, s, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            _exit(99);
        }
        s += w;
        n -= (size_t)w;
    }
}

/* Print one raw line (a newline is appended). Preserves errno. */
__attribute__((format(printf, 1, 2), unused)) static void line(const char *fmt, ...)
{
    int saved = errno;
    char buf[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if (n > (int)sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    out_raw(buf, (size_t)n);
    errno = saved;
}

/* errno value -> symbolic name ("EBADF"); "0" for no error. */
static __attribute__((unused)) const char *en(int e)
{
    static char unk[32];
    if (e == 0)
        return "0";
    const char *n = strerrorname_np(e);
    if (n)
        return n;
    snprintf(unk, sizeof unk, "E#%d", e);
    return unk;
}

/* Observation under the current case. */
#define O(...) obs_(__VA_ARGS__)
__attribute__((format(printf, 1, 2), unused)) static void obs_(const char *fmt, ...)
{
    int saved = errno;
    char buf[8000];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    line("%s: %s", cur_case, buf);
    errno = saved;
}

static __attribute__((unused)) void report_rc(const char *expr, long r, int e)
{
    if (r == -1)
        line("%s: %s = -1 %s", cur_case, expr, en(e));
    else
        line("%s: %s = %ld", cur_case, expr, r);
}

/* Evaluate a call returning int/ssize_t, print "expr = value" or
 * "expr = -1 ERRNAME", and yield the value. */
#define T(expr)                                                                \
    ({                                                                         \
        errno = 0;                                                             \
        long _r = (long)(expr);                                                \
        int _e = errno;                                                        \
        report_rc(#expr, _r, _e);                                              \
        errno = _e;                                                            \
        _r;                                                                    \
    })

/* Same for pointer-returning calls: prints "ptr" or "NULL ERRNAME". */
#define TP(expr)                                                               \
    ({                                                                         \
        errno = 0;                                                             \
        void *_p = (void *)(expr);                                             \
        int _e = errno;                                                        \
        if (_p)                                                                \
            line("%s: %s = ptr", cur_case, #expr);                             \
        else                                                                   \
            line("%s: %s = NULL %s", cur_case, #expr, en(_e));                 \
        errno = _e;                                                            \
        _p;                                                                    \
    })

/* Run a call silently; abort the program (exit 98) if it fails. For setup
 * steps whose result is not an observation. */
#define MUST(expr)                                                             \
    ({                                                                         \
        errno = 0;                                                             \
        long _r = (long)(expr);                                                \
        if (_r == -1) {                                                        \
            line("%s: SETUP FAILED %s: %s (line %d)", cur_case, #expr,         \
                 en(errno), __LINE__);                                         \
            _exit(98);                                                         \
        }                                                                      \
        _r;                                                                    \
    })

/* Print bytes readably: printable ASCII as is, others as \xNN. */
static __attribute__((unused)) void show(const char *label, const void *buf, long n)
{
    char tmp[1024];
    size_t k = 0;
    const unsigned char *p = buf;
    if (n < 0)
        n = 0;
    for (long i = 0; i < n && k + 5 < sizeof tmp; i++) {
        if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\')
            tmp[k++] = (char)p[i];
        else
            k += (size_t)snprintf(tmp + k, sizeof tmp - k, "\\x%02x", p[i]);
    }
    tmp[k] = 0;
    O("%s=\"%s\" (%ld bytes)", label, tmp, n);
}

/* FNV-1a checksum for bulk data. */
static __attribute__((unused)) uint32_t fnv(const void *buf, size_t n, uint32_t h)
{
    const unsigned char *p = buf;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 16777619u;
    }
    return h;
}
#define FNV_INIT 2166136261u

/* The fd-flag word as text: "CLOEXEC" or "-". */
static __attribute__((unused)) const char *fdflags(int fd)
{
    int f = fcntl(fd, F_GETFD);
    if (f < 0)
        return en(errno);
    return (f & FD_CLOEXEC) ? "CLOEXEC" : "-";
}

/* Status flags that matter, as text. */
static __attribute__((unused)) const char *flflags(int fd)
{
    static char bufs[4][128];
    static int k;
    char *b = bufs[k++ & 3];
    int f = fcntl(fd, F_GETFL);
    if (f < 0)
        return en(errno);
    const char *acc = (f & O_ACCMODE) == O_RDONLY   ? "RDONLY"
                      : (f & O_ACCMODE) == O_WRONLY ? "WRONLY"
                                                    : "RDWR";
    snprintf(b, 128, "%s%s%s", acc, (f & O_NONBLOCK) ? "|NONBLOCK" : "",
             (f & O_APPEND) ? "|APPEND" : "");
    return b;
}

/* Sorted list of open fds from /proc/self/fd (the directory's own fd
 * included, as Linux lists it). */
static __attribute__((unused)) void list_fds(const char *label)
{
    int fds[1024];
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d) {
        O("%s: opendir failed %s", label, en(errno));
        return;
    }
    struct dirent *de;
    while ((de = readdir(d)) && n < 1024) {
        if (de->d_name[0] == '.')
            continue;
        fds[n++] = atoi(de->d_name);
    }
    closedir(d);
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && fds[j - 1] > fds[j]; j--) {
            int t = fds[j];
            fds[j] = fds[j - 1];
            fds[j - 1] = t;
        }
    char b[4096];
    size_t k = 0;
    b[0] = 0;
    for (int i = 0; i < n && k < sizeof b - 16; i++)
        k += (size_t)snprintf(b + k, sizeof b - k, "%s%d", i ? "," : "", fds[i]);
    O("%s=[%s]", label, b);
}

/* Print the environment sorted, without LD_PRELOAD and ARRAKIS_* (the shim
 * re-injects those on exec). */
static __attribute__((unused)) int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}
static __attribute__((unused)) void print_env(const char *label)
{
    extern char **environ;
    char *v[512];
    int n = 0;
    for (char **e = environ; e && *e && n < 512; e++) {
        if (strncmp(*e, "LD_PRELOAD=", 11) == 0 || strncmp(*e, "ARRAKIS_", 8) == 0)
            continue;
        v[n++] = *e;
    }
    qsort(v, (size_t)n, sizeof v[0], cmp_str);
    O("%s: %d vars", label, n);
    for (int i = 0; i < n; i++)
        O("%s[%d]=%s", label, i, v[i]);
}

/* Install a handler (flags e.g. SA_RESTART or 0). */
static __attribute__((unused)) void on_signal(int sig, void (*h)(int), int flags)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = h;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
}

/* Describe a wait status. */
static __attribute__((unused)) void show_status(const char *label, int st)
{
    if (WIFEXITED(st))
        O("%s: exited %d", label, WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        O("%s: killed by %s", label, sigabbrev_np(WTERMSIG(st)));
    else
        O("%s: status 0x%x", label, st);
}

/* Meta line: is `read` served by libarrakis? Runs before main, so also in
 * every exec'd child. */
__attribute__((constructor)) static void shim_meta(void)
{
    Dl_info info;
    int shim = 0;
    void *p = dlsym(RTLD_DEFAULT, "read");
    if (p && dladdr(p, &info) && info.dli_fname && strstr(info.dli_fname, "libarrakis"))
        shim = 1;
    line("#shim=%d", shim);
}

/* A unique-per-process tag for abstract socket names, so concurrent runs of
 * the same program never collide. Never printed. */
static __attribute__((unused)) const char *uniq(const char *base)
{
    static char b[4][108];
    static int k;
    char *s = b[k++ & 3];
    snprintf(s, 108, "arrakis-compat-%s-%d", base, (int)getpid());
    return s;
}

/* One bit of a flag word and its name, for flag_names(). */
struct flag_name {
    uint32_t bit;
    const char *n;
};

/* "IN|OUT|0x40": the names of the bits of `e` found in `t`, then any bits left over in hex;
 * "0" when no bit is set. Writes into `b` (`cap` bytes) and returns it. */
static __attribute__((unused)) const char *flag_names(uint32_t e, const struct flag_name *t, size_t n, char *b,
                                                      size_t cap)
{
    b[0] = 0;
    for (size_t i = 0; i < n; i++)
        if (e & t[i].bit) {
            strcat(b, b[0] ? "|" : "");
            strcat(b, t[i].n);
            e &= ~t[i].bit;
        }
    if (e)
        snprintf(b + strlen(b), cap - strlen(b), "%s0x%x", b[0] ? "|" : "", e);
    if (!b[0])
        strcpy(b, "0");
    return b;
}

#endif
