/* A library whose constructor runs before the shim's: loaded after libarrakis.so in
 * LD_PRELOAD, it is initialised first. Its calls reach the shim's exports before the shim's
 * constructor has resolved anything; they must behave exactly as natively. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char report[512];

__attribute__((constructor)) static void early(void) {
    write(2, "early-constructor\n", 18);
    int fd = open("/proc/self/cmdline", O_RDONLY);
    char buf[8];
    ssize_t n = read(fd, buf, sizeof buf);
    struct stat st;
    int s = fstat(fd, &st);
    int c = close(fd);
    int bad = close(fd);
    int e = errno;
    FILE *f = fopen("/dev/null", "r");
    int fc = f ? fclose(f) : -2;
    snprintf(report, sizeof report, "early: fd=%d read=%zd fstat=%d close=%d reclose=%d errno=%s fopen=%s fclose=%d\n",
             fd, n, s, c, bad, e == EBADF ? "EBADF" : strerror(e), f ? "ok" : "null", fc);
}

const char *early_report(void) { return report; }
