/* Directories on a volume: mkdir/rmdir/unlink errors, rename in all its forms (renameat2
 * NOREPLACE/EXCHANGE), readdir listings (sorted before printing), opendir/fdopendir/
 * rewinddir, many files in one directory, deep paths, chdir/fchdir/getcwd into the mount,
 * relative and *at calls, realpath. Everything under mnt/ (see vsa_common.h). */
#include "vsa_common.h"

#include <sys/syscall.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#define RENAME_EXCHANGE (1 << 1)
#endif

static int do_renameat2(int ofd, const char *o, int nfd, const char *n, unsigned flags)
{
    return (int)syscall(SYS_renameat2, ofd, o, nfd, n, flags);
}

static void mkdir_cases(void)
{
    CASE("mkdir_rmdir");
    T(mkdir("mnt/a", 0755));
    st_path("mnt/a");
    T(mkdir("mnt/a", 0755));
    T(mkdir("mnt/a/b", 0700));
    st_path("mnt/a/b");
    T(rmdir("mnt/a/b"));
    T(rmdir("mnt/a/b"));
    T(access("mnt/a/b", F_OK));

    CASE("mkdir_errors");
    put("mnt/f", "file");
    T(mkdir("mnt/f", 0755));
    T(mkdir("mnt/f/x", 0755));
    T(mkdir("mnt/none/x", 0755));
    T(mkdir("mnt/a/", 0755));

    CASE("rmdir_errors");
    put("mnt/a/inner", "x");
    T(rmdir("mnt/a"));
    T(rmdir("mnt/f"));
    T(rmdir("mnt/missing"));
    T(rmdir("mnt/a/inner/x"));
    T(rmdir("mnt/a/."));
    T(rmdir("mnt/a/.."));

    CASE("unlink_errors");
    T(unlink("mnt/a"));
    T(unlink("mnt/missing"));
    T(unlink("mnt/f/x"));
    T(unlink("mnt/none/x"));
    T(unlink("mnt/a/inner"));
    T(unlink("mnt/a/inner"));
    T(rmdir("mnt/a"));

    CASE("unlinkat_mkdirat");
    int dfd = (int)MUST(open("mnt", O_RDONLY | O_DIRECTORY));
    T(mkdirat(dfd, "at", 0755));
    T(mkdirat(dfd, "at", 0755));
    int fd = (int)T(openat(dfd, "at/file", O_CREAT | O_WRONLY, 0644) >= 0);
    (void)fd;
    T(unlinkat(dfd, "at", 0));
    T(unlinkat(dfd, "at", AT_REMOVEDIR));
    T(unlinkat(dfd, "at/file", AT_REMOVEDIR));
    T(unlinkat(dfd, "at/file", 0));
    T(unlinkat(dfd, "at", AT_REMOVEDIR));
    T(unlinkat(dfd, "at", 0x4000));
    close(dfd);
}

static void rename_cases(void)
{
    CASE("rename_file");
    put("mnt/r1", "one");
    T(rename("mnt/r1", "mnt/r2"));
    T(access("mnt/r1", F_OK));
    cat("r2", "mnt/r2");

    CASE("rename_over_file");
    put("mnt/r3", "three");
    T(rename("mnt/r2", "mnt/r3"));
    cat("r3", "mnt/r3");
    T(access("mnt/r2", F_OK));
    st_path("mnt/r3");

    CASE("rename_self");
    T(rename("mnt/r3", "mnt/r3"));
    cat("r3", "mnt/r3");
    MUST(mkdir("mnt/rd", 0755));
    T(rename("mnt/rd", "mnt/rd"));

    CASE("rename_file_dir_mismatch");
    T(rename("mnt/r3", "mnt/rd"));
    T(rename("mnt/rd", "mnt/r3"));
    T(rename("mnt/missing", "mnt/x"));
    T(rename("mnt/r3", "mnt/none/x"));
    T(rename("mnt/r3/x", "mnt/y"));
    T(rename("mnt/r3", ""));

    CASE("rename_dir_over_empty_dir");
    MUST(mkdir("mnt/rd/sub", 0755));
    put("mnt/rd/sub/f", "in sub");
    MUST(mkdir("mnt/empty", 0755));
    T(rename("mnt/rd", "mnt/empty"));
    T(access("mnt/rd", F_OK));
    cat("moved", "mnt/empty/sub/f");
    st_path("mnt/empty");

    CASE("rename_dir_over_nonempty");
    MUST(mkdir("mnt/full", 0755));
    put("mnt/full/x", "x");
    T(rename("mnt/empty", "mnt/full"));
    cat("untouched", "mnt/full/x");

    CASE("rename_dir_into_itself");
    T(rename("mnt/empty", "mnt/empty/sub/inner"));
    T(rename("mnt/empty", "mnt/empty/new"));
    T(rename("mnt/empty/sub", "mnt/empty/sub/deeper"));
    T(rename("mnt/empty/sub/..", "mnt/x"));

    CASE("rename_dir_across");
    T(rename("mnt/empty/sub", "mnt/full/sub"));
    ls("mnt/full");
    ls("mnt/empty");
    st_path("mnt/empty");
    st_path("mnt/full");
    cat("moved", "mnt/full/sub/f");

    CASE("rename_parent_over_child");
    T(rename("mnt/full/sub", "mnt/full"));

    CASE("renameat");
    int dfd = (int)MUST(open("mnt", O_RDONLY | O_DIRECTORY));
    int sfd = (int)MUST(open("mnt/full", O_RDONLY | O_DIRECTORY));
    T(renameat(dfd, "r3", sfd, "r3-moved"));
    cat("moved", "mnt/full/r3-moved");
    T(renameat(sfd, "r3-moved", AT_FDCWD, "mnt/r3"));
    cat("back", "mnt/r3");
    T(renameat(-1, "r3", dfd, "x"));

    CASE("renameat2_noreplace");
    put("mnt/n1", "n1");
    put("mnt/n2", "n2");
    T(do_renameat2(dfd, "n1", dfd, "n2", RENAME_NOREPLACE));
    cat("n2", "mnt/n2");
    T(do_renameat2(dfd, "n1", dfd, "n3", RENAME_NOREPLACE));
    cat("n3", "mnt/n3");
    T(access("mnt/n1", F_OK));
    T(do_renameat2(dfd, "n3", dfd, "n3", RENAME_NOREPLACE));

    CASE("renameat2_exchange");
    T(do_renameat2(dfd, "n2", dfd, "n3", RENAME_EXCHANGE));
    cat("n2", "mnt/n2");
    cat("n3", "mnt/n3");
    T(do_renameat2(dfd, "n2", dfd, "full", RENAME_EXCHANGE));
    cat("full now", "mnt/full");
    st_path("mnt/n2");
    T(do_renameat2(dfd, "n2", dfd, "full", RENAME_EXCHANGE));
    T(do_renameat2(dfd, "n2", dfd, "missing", RENAME_EXCHANGE));
    T(do_renameat2(dfd, "n2", dfd, "n3", RENAME_EXCHANGE | RENAME_NOREPLACE));
    T(do_renameat2(dfd, "n2", dfd, "n3", 0x80));
    close(sfd);
    close(dfd);
}

static void readdir_cases(void)
{
    CASE("readdir_listing");
    MUST(mkdir("mnt/ls", 0755));
    ls("mnt/ls");
    put("mnt/ls/b", "b");
    put("mnt/ls/a", "a");
    MUST(mkdir("mnt/ls/dir", 0755));
    put("mnt/ls/.dot", "");
    ls("mnt/ls");
    MUST(unlink("mnt/ls/b"));
    ls("mnt/ls");
    ls("mnt/ls/");
    ls("mnt/ls/dir");

    CASE("opendir_errors");
    TP(opendir("mnt/missing"));
    TP(opendir("mnt/ls/a"));
    TP(opendir("mnt/ls/a/"));

    CASE("fdopendir");
    int dfd = (int)MUST(open("mnt/ls", O_RDONLY | O_DIRECTORY));
    DIR *d = TP(fdopendir(dfd));
    O("dirfd same=%d", d && dirfd(d) == dfd);
    if (d) {
        list_stream("fdopendir", d);
        closedir(d);
    }
    T(fcntl(dfd, F_GETFD));
    int ffd = (int)MUST(open("mnt/ls/a", O_RDONLY));
    TP(fdopendir(ffd));
    close(ffd);
    int wfd = (int)MUST(open("mnt/ls", O_RDONLY | O_PATH));
    TP(fdopendir(wfd));
    close(wfd);

    CASE("rewinddir_sees_new_entries");
    d = opendir("mnt/ls");
    list_stream("first", d);
    put("mnt/ls/later", "x");
    rewinddir(d);
    list_stream("after rewind", d);
    MUST(rmdir("mnt/ls/dir"));
    rewinddir(d);
    list_stream("after rmdir", d);
    closedir(d);

    CASE("getdents_direct");
    dfd = (int)MUST(open("mnt/ls", O_RDONLY | O_DIRECTORY));
    char buf[4096];
    long n, total = 0, entries = 0;
    while ((n = syscall(SYS_getdents64, dfd, buf, sizeof buf)) > 0) {
        total += n;
        for (long off = 0; off < n;) {
            struct {
                uint64_t ino;
                int64_t off;
                unsigned short reclen;
                unsigned char type;
                char name[];
            } *e = (void *)(buf + off);
            entries++;
            off += e->reclen;
        }
    }
    O("getdents64 entries=%ld end=%ld", entries, n);
    T(syscall(SYS_getdents64, dfd, buf, 10));
    close(dfd);
    ffd = (int)MUST(open("mnt/ls/a", O_RDONLY));
    T(syscall(SYS_getdents64, ffd, buf, sizeof buf));
    close(ffd);

    CASE("many_files");
    MUST(mkdir("mnt/many", 0755));
    char p[64];
    int bad = 0;
    for (int i = 0; i < 500; i++) {
        snprintf(p, sizeof p, "mnt/many/file-%03d", i);
        int fd = open(p, O_CREAT | O_EXCL | O_WRONLY, 0644);
        if (fd < 0 || write(fd, p, strlen(p)) != (ssize_t)strlen(p))
            bad++;
        if (fd >= 0)
            close(fd);
    }
    O("create errors=%d", bad);
    d = opendir("mnt/many");
    struct dirent *de;
    int count = 0, seen[500] = {0}, dup = 0;
    while (d && (de = readdir(d))) {
        int k;
        if (sscanf(de->d_name, "file-%d", &k) == 1 && k >= 0 && k < 500) {
            dup += seen[k]++;
        }
        count++;
    }
    if (d)
        closedir(d);
    int missing = 0;
    for (int i = 0; i < 500; i++)
        missing += !seen[i];
    O("entries=%d missing=%d duplicates=%d", count, missing, dup);
    bad = 0;
    for (int i = 0; i < 500; i += 7) {
        char b[64];
        snprintf(p, sizeof p, "mnt/many/file-%03d", i);
        int fd = open(p, O_RDONLY);
        long r = fd >= 0 ? read(fd, b, sizeof b) : -1;
        if (r != (long)strlen(p) || memcmp(b, p, (size_t)r) != 0)
            bad++;
        if (fd >= 0)
            close(fd);
    }
    O("content errors=%d", bad);
    bad = 0;
    for (int i = 0; i < 500; i += 2) {
        snprintf(p, sizeof p, "mnt/many/file-%03d", i);
        bad += unlink(p) != 0;
    }
    d = opendir("mnt/many");
    count = 0;
    while (d && (de = readdir(d)))
        count++;
    if (d)
        closedir(d);
    O("unlink errors=%d entries after=%d", bad, count);
    T(rmdir("mnt/many"));
    for (int i = 1; i < 500; i += 2) {
        snprintf(p, sizeof p, "mnt/many/file-%03d", i);
        bad += unlink(p) != 0;
    }
    T(rmdir("mnt/many"));
    O("unlink errors=%d", bad);

    CASE("deep_paths");
    char path[2048] = "mnt";
    bad = 0;
    for (int i = 0; i < 40; i++) {
        size_t l = strlen(path);
        snprintf(path + l, sizeof path - l, "/level-%02d", i);
        bad += mkdir(path, 0755) != 0;
    }
    O("mkdir errors=%d length=%zu", bad, strlen(path));
    strcat(path, "/leaf");
    put(path, "at the bottom");
    cat("leaf", path);
    st_path("mnt/level-00");
    int deep = (int)MUST(open(path, O_RDONLY));
    st_fd("leaf fd", deep);
    close(deep);
    T(rmdir("mnt/level-00"));
}

static void cwd_cases(void)
{
    char b[PATH_MAX];

    CASE("chdir_into_mount");
    show_cwd();
    MUST(mkdir("mnt/cd", 0755));
    put("mnt/cd/file", "relative");
    T(chdir("mnt"));
    show_cwd();
    cat("relative open", "cd/file");
    T(access("cd/file", R_OK));
    st_path("cd");
    T(chdir("cd"));
    show_cwd();
    cat("relative open", "file");
    put("made-here", "made in cwd");
    T(chdir(".."));
    show_cwd();
    cat("from parent", "cd/made-here");
    ls("cd");
    ls(".");
    T(chdir(".."));
    show_cwd();
    cat("from run dir", "mnt/cd/made-here");

    CASE("chdir_errors");
    T(chdir("mnt/cd/file"));
    T(chdir("mnt/missing"));
    T(chdir("mnt/cd/file/x"));
    show_cwd();

    CASE("fchdir");
    int dfd = (int)MUST(open("mnt/cd", O_RDONLY | O_DIRECTORY));
    T(fchdir(dfd));
    show_cwd();
    cat("relative", "made-here");
    int ffd = (int)MUST(open("file", O_RDONLY));
    T(fchdir(ffd));
    close(ffd);
    show_cwd();
    T(mkdir("sub", 0755));
    T(chdir("sub"));
    show_cwd();
    T(fchdir(dfd));
    show_cwd();
    close(dfd);
    T(fchdir(-1));
    T(chdir(run_dir));
    show_cwd();

    CASE("getcwd_sizes");
    T(chdir("mnt/cd/sub"));
    size_t need = strlen(run_dir) + strlen("/mnt/cd/sub") + 1;
    TP(getcwd(b, need));
    TP(getcwd(b, need - 1));
    TP(getcwd(b, 0));
    char *dyn = getcwd(NULL, 0);
    O("getcwd(NULL)=%s", rel(dyn));
    free(dyn);
    T(chdir(run_dir));

    CASE("cwd_removed");
    MUST(mkdir("mnt/doomed", 0755));
    T(chdir("mnt/doomed"));
    T(rmdir("../doomed"));
    TP(getcwd(b, sizeof b));
    T(open("new", O_CREAT | O_WRONLY, 0644));
    T(chdir(run_dir));

    CASE("at_calls_on_mount_dirfd");
    dfd = (int)MUST(open("mnt", O_RDONLY | O_DIRECTORY));
    int fd = (int)T(openat(dfd, "cd/at-file", O_CREAT | O_RDWR, 0640));
    T(write(fd, "via at", 6));
    close(fd);
    cat("at-file", "mnt/cd/at-file");
    struct stat s;
    if (T(fstatat(dfd, "cd/at-file", &s, 0)) == 0)
        show_st("at-file", &s);
    T(faccessat(dfd, "cd/at-file", R_OK | W_OK, 0));
    T(mkdirat(dfd, "cd/at-dir", 0711));
    st_path("mnt/cd/at-dir");
    int sub = (int)MUST(openat(dfd, "cd", O_RDONLY | O_DIRECTORY));
    T(renameat(sub, "at-file", dfd, "at-moved"));
    cat("moved", "mnt/at-moved");
    T(unlinkat(dfd, "at-moved", 0));
    T(unlinkat(sub, "at-dir", AT_REMOVEDIR));
    T(openat(sub, "../cd/file", O_RDONLY) >= 0);
    T(openat(sub, "missing", O_RDONLY));
    T(mkdirat(sub, "file/x", 0755));
    close(sub);
    close(dfd);

    CASE("realpath");
    char rp[PATH_MAX];
    char *r = realpath("mnt/cd/../cd/./file", rp);
    O("realpath=%s", r ? rel(r) : en(errno));
    r = realpath("mnt//cd/", rp);
    O("realpath=%s", r ? rel(r) : en(errno));
    r = realpath("mnt", rp);
    O("realpath=%s", r ? rel(r) : en(errno));
    r = realpath("mnt/cd/missing", rp);
    O("realpath=%s", r ? rel(r) : en(errno));
    r = realpath("mnt/cd/file/x", rp);
    O("realpath=%s", r ? rel(r) : en(errno));
    MUST(chdir("mnt/cd"));
    r = realpath("sub/../file", rp);
    O("realpath in cwd=%s", r ? rel(r) : en(errno));
    char *dyn2 = realpath(".", NULL);
    O("realpath(.)=%s", rel(dyn2));
    free(dyn2);
    dyn2 = canonicalize_file_name("../cd/sub");
    O("canonicalize_file_name=%s", rel(dyn2));
    free(dyn2);
    MUST(chdir(run_dir));
}

int main(void)
{
    vsa_start();
    mkdir_cases();
    rename_cases();
    readdir_cases();
    cwd_cases();
    return 0;
}
