#!/usr/bin/env bash
# Installs what the tests and demos need, only if something is missing: Debian's servers and
# tools (apt-get update once, then install), and tornado from PyPI for the external suites.
# Idempotent; safe to run on every test run.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have memcached || need+=(memcached)
have redis-server || need+=(redis-server)
have redis-benchmark || need+=(redis-tools)
have memcslap || need+=(libmemcached-tools)
have valgrind || need+=(valgrind)
have strace || need+=(strace)
have gcc || need+=(gcc)
# The storage end-to-end test's FUSE mount (compat-tests/e2e/storage.sh).
have fusermount3 || need+=(fuse3)
# The sweep of real programs (compat-tests/sweep/run.sh).
have nginx || need+=(nginx-light)
have haproxy || need+=(haproxy)
have wrk || need+=(wrk)
have sqlite3 || need+=(sqlite3)
have tclsh || need+=(tcl)
have fakeroot || need+=(fakeroot)
have faketime || need+=(faketime)
have eatmydata || need+=(eatmydata)
have zstd || need+=(zstd)
have xz || need+=(xz-utils)
have curl || need+=(curl)
have openssl || need+=(openssl)
have gdb || need+=(gdb)
have script || need+=(bsdutils)
have java || need+=(default-jdk-headless)
have javac || need+=(default-jdk-headless)
have node || need+=(nodejs)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Each package once (java and javac share one).
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian starts the packaged servers on their default ports; the tests run their own.
for svc in redis-server memcached nginx haproxy postgresql; do
  if command -v systemctl >/dev/null 2>&1; then systemctl stop "$svc" >/dev/null 2>&1 || true; fi
  if command -v service >/dev/null 2>&1; then service "$svc" stop >/dev/null 2>&1 || true; fi
done

PY=${PYTHON:-python3}
if ! "$PY" -c 'import tornado' >/dev/null 2>&1; then
  echo "install-deps: pip install tornado"
  "$PY" -m pip install -q tornado
fi
