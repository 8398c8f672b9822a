/* A volume shared with forked children (redis's BGSAVE and BGREWRITEAOF shape): a child
 * reads what the parent wrote, writes new files, renames, creates and removes directories,
 * inherits a cwd inside the mount; the parent sees it all after waitpid. Also threads
 * creating files in one directory at once. No exec: a program exec'd under the loopback
 * backend would get a fresh volume. Everything under mnt/ (see vsa_common.h). */
#include "vsa_common.h"

#include <pthread.h>

/* Fork, run fn in the child (it may print: the parent waits), print its exit status. */
static void in_child(const char *label, void (*fn)(void))
{
    pid_t p = fork();
    if (p < 0) {
        O("fork = -1 %s", en(errno));
        return;
    }
    if (p == 0) {
        fn();
        _exit(0);
    }
    int st = 0;
    while (waitpid(p, &st, 0) < 0 && errno == EINTR)
        ;
    show_status(label, st);
}

static void child_reads_and_writes(void)
{
    fstype_meta("mnt");
    cat("child reads parent's file", "mnt/parent.txt");
    int fd = (int)T(open("mnt/child.txt", O_CREAT | O_EXCL | O_WRONLY, 0640));
    T(write(fd, "written by the child", 20));
    T(fsync(fd));
    T(close(fd));
}

static void child_big_write(void)
{
    unsigned char buf[8192];
    uint32_t st = 5, h = FNV_INIT;
    FILE *f = fopen("mnt/temp-child.rdb", "w");
    if (!f)
        _exit(3);
    for (int i = 0; i < 256; i++) {
        fill_pattern(buf, sizeof buf, &st);
        h = fnv(buf, sizeof buf, h);
        if (fwrite(buf, 1, sizeof buf, f) != sizeof buf)
            _exit(4);
    }
    if (fflush(f) != 0 || fsync(fileno(f)) != 0 || fclose(f) != 0)
        _exit(5);
    if (rename("mnt/temp-child.rdb", "mnt/child.rdb") != 0)
        _exit(6);
    O("child checksum=%08x", h);
}

static void child_dirs(void)
{
    T(mkdir("mnt/cdir", 0755));
    put("mnt/cdir/a", "a");
    put("mnt/cdir/b", "b");
    T(unlink("mnt/parent-doomed"));
    T(rmdir("mnt/parent-dir"));
    T(rename("mnt/parent-renamed", "mnt/cdir/renamed"));
    ls("mnt/cdir");
}

static void child_in_cwd(void)
{
    show_cwd();
    put("child-in-cwd", "relative to the inherited cwd");
    cat("sees parent's", "here.txt");
}

static void child_errors(void)
{
    T(open("mnt/missing", O_RDONLY));
    T(mkdir("mnt/cdir", 0755));
    T(rmdir("mnt/cdir"));
    T(open("mnt/child.txt", O_CREAT | O_EXCL | O_WRONLY, 0644));
    struct stat s;
    if (T(stat("mnt/child.txt", &s)) == 0)
        show_st("child.txt", &s);
}

static void grandchild(void)
{
    put("mnt/grandchild.txt", "two forks down");
}
static void child_forks_again(void)
{
    in_child("grandchild", grandchild);
    cat("child sees grandchild's", "mnt/grandchild.txt");
}

static void child_append(void)
{
    int fd = open("mnt/shared.log", O_WRONLY | O_APPEND);
    for (int i = 0; i < 50; i++)
        if (write(fd, "child-line\n", 11) != 11)
            _exit(7);
    close(fd);
}

static void *thread_creator(void *arg)
{
    long id = (long)arg;
    char p[64];
    for (int i = 0; i < 50; i++) {
        snprintf(p, sizeof p, "mnt/threads/t%ld-%02d", id, i);
        int fd = open(p, O_CREAT | O_EXCL | O_WRONLY, 0644);
        if (fd < 0)
            return (void *)1;
        if (write(fd, p, strlen(p)) != (ssize_t)strlen(p))
            return (void *)2;
        close(fd);
    }
    return NULL;
}

int main(void)
{
    vsa_start();

    CASE("fork_child_reads_writes");
    put("mnt/parent.txt", "from the parent");
    in_child("child", child_reads_and_writes);
    cat("parent reads child's file", "mnt/child.txt");
    st_path("mnt/child.txt");

    CASE("fork_child_stdio_rename");
    in_child("child", child_big_write);
    {
        int fd = open("mnt/child.rdb", O_RDONLY);
        unsigned char buf[8192];
        uint32_t h = FNV_INIT;
        long n, total = 0;
        while (fd >= 0 && (n = read(fd, buf, sizeof buf)) > 0) {
            h = fnv(buf, (size_t)n, h);
            total += n;
        }
        if (fd >= 0)
            close(fd);
        O("parent reads %ld bytes checksum=%08x", total, h);
        T(access("mnt/temp-child.rdb", F_OK));
    }

    CASE("fork_child_dirs");
    put("mnt/parent-doomed", "x");
    MUST(mkdir("mnt/parent-dir", 0755));
    put("mnt/parent-renamed", "moved by the child");
    in_child("child", child_dirs);
    ls("mnt");
    cat("renamed", "mnt/cdir/renamed");

    CASE("fork_child_inherits_cwd");
    MUST(mkdir("mnt/wd", 0755));
    put("mnt/wd/here.txt", "parent's, in the cwd");
    MUST(chdir("mnt/wd"));
    in_child("child", child_in_cwd);
    MUST(chdir(run_dir));
    cat("parent", "mnt/wd/child-in-cwd");

    CASE("fork_child_errors");
    in_child("child", child_errors);

    CASE("fork_grandchild");
    in_child("child", child_forks_again);
    cat("parent", "mnt/grandchild.txt");

    CASE("fork_child_appends_parent_reads");
    put("mnt/shared.log", "parent-first\n");
    in_child("child", child_append);
    {
        int fd = (int)MUST(open("mnt/shared.log", O_WRONLY | O_APPEND));
        T(write(fd, "parent-last\n", 12));
        close(fd);
    }
    st_path("mnt/shared.log");

    CASE("parent_file_open_across_fork");
    /* The parent's own descriptor keeps working after a child came and went. */
    int pfd = (int)MUST(open("mnt/parent.txt", O_RDWR));
    MUST(lseek(pfd, 5, SEEK_SET));
    in_child("child", grandchild);
    char b[64];
    long n = T(read(pfd, b, sizeof b));
    show("parent fd", b, n);
    T(write(pfd, "+after", 6));
    close(pfd);
    cat("content", "mnt/parent.txt");

    CASE("threads_create_in_one_dir");
    MUST(mkdir("mnt/threads", 0755));
    pthread_t t[4];
    for (long i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, thread_creator, (void *)i);
    int bad = 0;
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(t[i], &r);
        bad += r != NULL;
    }
    O("thread errors=%d", bad);
    DIR *d = opendir("mnt/threads");
    int count = 0;
    while (d && readdir(d))
        count++;
    if (d)
        closedir(d);
    O("entries=%d", count);
    return 0;
}
