/* Starts argv[1..] with an environment that has a duplicate name (getenv returns the first),
 * an entry without '=' and a non-alphabetical order: what `arrakis run` passes on is compared. */
#include <unistd.h>
int main(int argc, char **argv) {
  char *envp[] = {"Z=1", "A=2", "Z=dup", "NOEQUALS", "PATH=/usr/bin:/bin", NULL};
  if (argc < 2) return 2;
  execve(argv[1], argv + 1, envp);
  return 127;
}
