/* posix_spawn as linked by a program built against glibc < 2.15 (symbol version GLIBC_2.2.5):
 * glibc's compat posix_spawn runs a script without "#!" through /bin/sh (SPAWN_XFLAGS_TRY_SHELL). */
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <stdlib.h>
#include <sys/stat.h>
__asm__(".symver posix_spawn, posix_spawn@GLIBC_2.2.5");
extern char **environ;
int main(void) {
  const char *s = "./noshebang.sh";
  FILE *f = fopen(s, "w"); fputs("echo script ran; exit 7\n", f); fclose(f); chmod(s, 0755);
  pid_t pid; char *argv[] = {(char *)s, NULL};
  int r = posix_spawn(&pid, s, NULL, NULL, argv, environ);
  if (r) { printf("posix_spawn = %s\n", strerror(r)); return 1; }
  int st; waitpid(pid, &st, 0);
  printf("posix_spawn = 0, child exit %d\n", WEXITSTATUS(st));
  return 0;
}
