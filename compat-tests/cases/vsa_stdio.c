/* stdio on a volume: fopen modes, fwrite/fprintf/fputs/fputc, fflush, fseek/ftell/rewind,
 * fread/fgets/getline/fscanf/ungetc, fclose/fileno, freopen, fdopen, mkstemp, and redis's
 * save patterns: the RDB (stdio to a temp file, fflush, fsync(fileno), fclose, rename) and
 * the AOF (O_APPEND writes, fdatasync, a manifest replaced by rename, a directory fsync).
 * Everything under mnt/ (see vsa_common.h). */
#include "vsa_common.h"

static void fopen_cases(void)
{
    FILE *f;
    char buf[256];

    CASE("fopen_w_write_read");
    f = TP(fopen("mnt/s1", "w"));
    T(fwrite("hello ", 1, 6, f));
    T(fprintf(f, "%s %d\n", "number", 42));
    T(fputs("line two\n", f));
    T(fputc('!', f));
    T(ftell(f));
    T(fclose(f));
    cat("content", "mnt/s1");
    st_path("mnt/s1");

    CASE("fopen_r_reads");
    f = TP(fopen("mnt/s1", "r"));
    TP(fgets(buf, sizeof buf, f));
    show("line1", buf, (long)strlen(buf));
    TP(fgets(buf, sizeof buf, f));
    show("line2", buf, (long)strlen(buf));
    T(fgetc(f));
    T(fgetc(f));
    T(feof(f));
    T(ferror(f));
    T(fwrite("x", 1, 1, f));
    T(ferror(f));
    T(fclose(f));

    CASE("fopen_errors");
    TP(fopen("mnt/missing", "r"));
    TP(fopen("mnt/nodir/x", "w"));
    TP(fopen("mnt/s1/x", "w"));
    MUST(mkdir("mnt/dir", 0755));
    TP(fopen("mnt/dir", "w"));
    f = TP(fopen("mnt/dir", "r"));
    if (f) {
        T(fread(buf, 1, 10, f));
        T(ferror(f));
        fclose(f);
    }
    TP(fopen("mnt/s1", "wx"));
    TP(fopen("mnt/s1", "q"));

    CASE("fopen_modes");
    f = TP(fopen("mnt/s2", "wx"));
    O("flags=%s", flflags(fileno(f)));
    fclose(f);
    f = TP(fopen("mnt/s2", "a"));
    O("flags=%s", flflags(fileno(f)));
    fputs("a1", f);
    fclose(f);
    f = TP(fopen("mnt/s2", "a+"));
    O("flags=%s", flflags(fileno(f)));
    T(fread(buf, 1, sizeof buf, f));
    show("a+ reads from start", buf, 2);
    fputs("a2", f);
    T(fseek(f, 0, SEEK_SET));
    fputs("a3", f);
    fclose(f);
    cat("after appends", "mnt/s2");
    f = TP(fopen("mnt/s2", "r+"));
    O("flags=%s", flflags(fileno(f)));
    fputs("RR", f);
    fclose(f);
    cat("after r+", "mnt/s2");
    f = TP(fopen("mnt/s2", "w+"));
    O("flags=%s", flflags(fileno(f)));
    T(ftell(f));
    fputs("fresh", f);
    rewind(f);
    long n = T(fread(buf, 1, sizeof buf, f));
    show("w+", buf, n);
    fclose(f);
    f = TP(fopen("mnt/s2", "re"));
    O("fd=%s", fdflags(fileno(f)));
    fclose(f);
    f = TP(fopen64("mnt/s2", "r"));
    fclose(f);

    CASE("fseek_ftell");
    f = fopen("mnt/s3", "w+");
    for (int i = 0; i < 1000; i++)
        fprintf(f, "%04d,", i);
    T(ftell(f));
    T(fseek(f, 0, SEEK_END));
    T(ftell(f));
    T(fseek(f, 10, SEEK_SET));
    n = T(fread(buf, 1, 10, f));
    show("at 10", buf, n);
    T(fseek(f, -5, SEEK_END));
    n = T(fread(buf, 1, 10, f));
    show("tail", buf, n);
    T(feof(f));
    T(fseek(f, -1, SEEK_SET));
    T(fseeko(f, 100, SEEK_SET));
    T(ftello(f));
    fpos_t pos;
    T(fgetpos(f, &pos));
    T(fseek(f, 0, SEEK_SET));
    T(fsetpos(f, &pos));
    T(ftell(f));
    T(fseek(f, 100000, SEEK_SET));
    T(fputc('E', f));
    T(fflush(f));
    st_fd("sparse end", fileno(f));
    T(fclose(f));

    CASE("getline_fscanf_ungetc");
    f = fopen("mnt/s4", "w");
    fputs("alpha 1\nbeta 22\n\nlast-no-newline", f);
    fclose(f);
    f = fopen("mnt/s4", "r");
    char *ln = NULL;
    size_t cap = 0;
    ssize_t r;
    while ((r = getline(&ln, &cap, f)) >= 0)
        show("getline", ln, (long)r);
    free(ln);
    rewind(f);
    char word[32];
    int num = 0;
    T(fscanf(f, "%31s %d", word, &num));
    O("word=%s num=%d", word, num);
    int c = fgetc(f);
    T(ungetc(c, f));
    T(fgetc(f));
    T(ungetc('Z', f));
    T(fgetc(f));
    T(fclose(f));

    CASE("fileno_and_close");
    f = fopen("mnt/s4", "r");
    int fd = fileno(f);
    O("fileno valid=%d", fcntl(fd, F_GETFD) >= 0);
    T(lseek(fd, 0, SEEK_CUR));
    T(fgetc(f));
    O("buffered: fd offset past 1=%d", lseek(fd, 0, SEEK_CUR) > 1);
    T(fclose(f));
    T(fcntl(fd, F_GETFD));

    CASE("setvbuf_unbuffered");
    f = fopen("mnt/s5", "w");
    T(setvbuf(f, NULL, _IONBF, 0));
    fputs("direct", f);
    st_path("mnt/s5");
    fclose(f);
    f = fopen("mnt/s5", "a");
    T(setvbuf(f, NULL, _IOFBF, 1 << 16));
    fputs("-buffered", f);
    st_path("mnt/s5");
    T(fflush(NULL));
    st_path("mnt/s5");
    fclose(f);

    CASE("freopen");
    f = fopen("mnt/s1", "r");
    f = TP(freopen("mnt/s5", "r", f));
    n = T(fread(buf, 1, sizeof buf, f));
    show("reopened", buf, n);
    f = TP(freopen(NULL, "a", f));
    if (f) {
        fputs("+re", f);
        fclose(f);
    }
    cat("content", "mnt/s5");
    f = fopen("mnt/s5", "r");
    TP(freopen("mnt/missing", "r", f));

    CASE("fdopen");
    fd = (int)MUST(open("mnt/s6", O_CREAT | O_RDWR, 0644));
    MUST(write(fd, "raw-", 4));
    f = TP(fdopen(fd, "a"));
    fputs("stdio", f);
    T(fflush(f));
    T(lseek(fd, 0, SEEK_CUR));
    T(fclose(f));
    cat("content", "mnt/s6");
    fd = (int)MUST(open("mnt/s6", O_RDONLY));
    TP(fdopen(fd, "w"));
    f = TP(fdopen(fd, "r"));
    n = T(fread(buf, 1, 4, f));
    show("read", buf, n);
    fclose(f);
    fd = (int)MUST(open("mnt/s6", O_RDONLY));
    f = fdopen(fd, "r");
    MUST(lseek(fd, 4, SEEK_SET));
    n = T(fread(buf, 1, sizeof buf, f));
    show("from fd offset", buf, n);
    fclose(f);

    CASE("mkstemp");
    char tmpl[] = "mnt/tmp-XXXXXX";
    fd = (int)T(mkstemp(tmpl) >= 0);
    fd = open(tmpl, O_RDWR);
    st_fd("tmp", fd);
    O("name kept prefix=%d len=%zu", strncmp(tmpl, "mnt/tmp-", 8) == 0, strlen(tmpl));
    T(unlink(tmpl));
    close(fd);
    char bad[] = "mnt/tmp-XXXX";
    T(mkstemp(bad));
    char badd[] = "mnt/nodir/tmp-XXXXXX";
    T(mkstemp(badd));
    char dt[] = "mnt/dtmp-XXXXXX";
    char *dn = mkdtemp(dt);
    O("mkdtemp ok=%d", dn != NULL);
    if (dn) {
        struct stat ds;
        MUST(stat(dn, &ds));
        show_st("dtmp", &ds);
        O("rmdir=%d", rmdir(dn));
    }
}

static void redis_patterns(void)
{
    CASE("rdb_save_pattern");
    MUST(mkdir("mnt/redis", 0755));
    put("mnt/redis/dump.rdb", "old snapshot");
    FILE *f = TP(fopen("mnt/redis/temp-1234.rdb", "w"));
    uint32_t st = 99, h = FNV_INIT;
    unsigned char chunk[3000];
    for (int i = 0; i < 200; i++) {
        fill_pattern(chunk, sizeof chunk, &st);
        h = fnv(chunk, sizeof chunk, h);
        if (fwrite(chunk, 1, sizeof chunk, f) != sizeof chunk)
            O("short fwrite at %d", i);
    }
    O("written checksum=%08x", h);
    T(fflush(f));
    T(fsync(fileno(f)));
    T(fclose(f));
    T(rename("mnt/redis/temp-1234.rdb", "mnt/redis/dump.rdb"));
    int dfd = (int)MUST(open("mnt/redis", O_RDONLY));
    T(fsync(dfd));
    close(dfd);
    ls("mnt/redis");
    st_path("mnt/redis/dump.rdb");
    f = fopen("mnt/redis/dump.rdb", "r");
    uint32_t h2 = FNV_INIT;
    size_t n;
    while ((n = fread(chunk, 1, 1000, f)) > 0)
        h2 = fnv(chunk, n, h2);
    O("read back checksum=%08x eof=%d", h2, feof(f));
    fclose(f);

    CASE("aof_append_pattern");
    MUST(mkdir("mnt/redis/appendonlydir", 0755));
    int fd = (int)T(open("mnt/redis/appendonlydir/appendonly.aof.1.incr.aof", O_WRONLY | O_APPEND | O_CREAT, 0644));
    int bad = 0;
    char cmd[128];
    for (int i = 0; i < 200; i++) {
        int k = snprintf(cmd, sizeof cmd, "*3\r\n$3\r\nSET\r\n$%d\r\nk%d\r\n$%d\r\nv%d\r\n", i < 10 ? 2 : i < 100 ? 3 : 4,
                         i, i < 10 ? 2 : i < 100 ? 3 : 4, i);
        if (write(fd, cmd, (size_t)k) != k || fdatasync(fd) != 0)
            bad++;
    }
    O("append or fdatasync errors=%d", bad);
    struct stat s;
    MUST(fstat(fd, &s));
    O("fstat size=%lld", (long long)s.st_size);
    close(fd);
    f = fopen("mnt/redis/appendonlydir/appendonly.aof.manifest.tmp", "w");
    fprintf(f, "file appendonly.aof.1.incr.aof seq 1 type i\n");
    fflush(f);
    fsync(fileno(f));
    fclose(f);
    T(rename("mnt/redis/appendonlydir/appendonly.aof.manifest.tmp", "mnt/redis/appendonlydir/appendonly.aof.manifest"));
    dfd = (int)MUST(open("mnt/redis/appendonlydir", O_RDONLY));
    T(fsync(dfd));
    close(dfd);
    ls("mnt/redis/appendonlydir");
    cat("manifest", "mnt/redis/appendonlydir/appendonly.aof.manifest");
    f = fopen("mnt/redis/appendonlydir/appendonly.aof.1.incr.aof", "r");
    char ln[64];
    int lines = 0;
    h = FNV_INIT;
    while (fgets(ln, sizeof ln, f)) {
        lines++;
        h = fnv(ln, strlen(ln), h);
    }
    fclose(f);
    O("aof lines=%d checksum=%08x", lines, h);

    CASE("aof_truncate_tail");
    fd = (int)MUST(open("mnt/redis/appendonlydir/appendonly.aof.1.incr.aof", O_RDWR | O_APPEND));
    MUST(write(fd, "*3\r\n$3\r\nSE", 10));
    MUST(fstat(fd, &s));
    T(ftruncate(fd, s.st_size - 10));
    T(lseek(fd, 0, SEEK_END));
    close(fd);
    st_path("mnt/redis/appendonlydir/appendonly.aof.1.incr.aof");

    CASE("bg_unlink_pattern");
    fd = (int)MUST(open("mnt/redis/dump.rdb", O_RDONLY));
    T(unlink("mnt/redis/dump.rdb"));
    char b4[4];
    T(read(fd, b4, 4));
    T(close(fd));
    ls("mnt/redis");
}

int main(void)
{
    vsa_start();
    fopen_cases();
    redis_patterns();
    return 0;
}
