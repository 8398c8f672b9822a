/* Execs argv[1..] with an environment no setenv() could build: a repeated name and an
 * entry without '='. */
#include <unistd.h>
int main(int argc, char **argv) {
    char *env[] = {"Z=1", "A=2", "Z=dup", "NOEQUALS", "PATH=/usr/bin:/bin", NULL};
    if (argc < 2)
        return 2;
    execve(argv[1], argv + 1, env);
    return 127;
}
