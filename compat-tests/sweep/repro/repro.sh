#!/usr/bin/env bash
# Minimal reproducers for the differences the sweep found: each runs natively and under
# `arrakis run` and prints both results. usage: compat-tests/sweep/repro/repro.sh
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ARRAKIS=${CARGO_TARGET_DIR:-$HERE/../../../target}/release/arrakis
B=$(mktemp -d /tmp/arrakis-repro.XXXXXX)
trap 'rm -rf "$B"' EXIT
cd "$B" || exit 2
for c in smallstack_exec seccomp_exec spawn_compat dupenv; do
  gcc -O2 -pthread -o "$c" "$HERE/$c.c" || exit 2
done
both() { # both TITLE CMD...
  local t=$1
  shift
  echo "=== $t"
  printf '%s\n' "--- native:"; "$@" 2>&1; echo "[exit $?]"
  printf '%s\n' "--- arrakis run:"; "$ARRAKIS" run -- "$@" 2>&1; echo "[exit $?]"
}
both "1. execve from a thread with a 32 KiB stack" ./smallstack_exec 32768
both "2. execve under a seccomp filter that kills on process_vm_readv" ./seccomp_exec
both "3. posix_spawn@GLIBC_2.2.5 (compat) of a script without #!" ./spawn_compat
echo "=== 4. the environment arrakis run passes on (order, duplicates, entries without '=')"
echo "--- native:"; ./dupenv /usr/bin/env
echo "--- arrakis run:"; ./dupenv "$ARRAKIS" run -- /usr/bin/env
echo "=== 5. SIGPIPE ignored by the caller"
echo "--- native:"; bash -c 'trap "" PIPE; yes | head -1; echo "[yes exit ${PIPESTATUS[0]}]"' 2>&1
echo "--- arrakis run:"; bash -c 'trap "" PIPE; "$1" run -- yes | head -1; echo "[yes exit ${PIPESTATUS[0]}]"' _ "$ARRAKIS" 2>&1
