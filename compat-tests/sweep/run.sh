#!/usr/bin/env bash
# Compatibility sweep: real programs written by others, run natively and under
# `arrakis run`, with stdout, stderr and exit status compared. In this build every fd is a
# kernel fd, so a program under the shim must behave exactly as natively.
#
# usage: compat-tests/sweep/run.sh [CASE...]        (no CASE: all; --list lists them)
#   SWEEP_KEEP=1     keep the scratch directory ($SWEEP_WORK, default a mktemp dir)
#   SWEEP_NO_BUILD=1 do not run `cargo build --release` first
#   SWEEP_REQUIRE_ALL=1  a skipped case (missing program) fails the run, as in CI
#
# Each case is a function c_NAME below that runs its program(s) through "${RUN[@]}" — empty
# natively, `arrakis run --` under the shim — in a fresh directory, and prints what it
# observed to stdout. The harness runs every case in both modes (native first), each in its
# own `timeout` (which kills the case's whole process group, servers included) with stdin
# from /dev/null, and compares:
#   * exit status of the case (a case exits with its program's status);
#   * stdout, after the case's own normalisation (see NORMALISED below and each case);
#   * stderr, after the same normalisation (an extra line under the shim is a difference).
# A case that differs is run once more in both modes; if the re-run agrees, it is reported
# FLAKY (timing), otherwise DIFF. Servers listen only on 127.0.0.1 on free ports picked at
# run time; every load run is bounded in time. The shim must be mapped in shim mode and
# absent natively: each case that starts a server checks that in the server's processes.
#
# NORMALISED (the only things rewritten before comparing, all genuinely variable):
#   * the scratch directory path of the mode (…/native, …/shim) -> <DIR>;
#   * numbers that are ports (":NNNNN" after 127.0.0.1/localhost) -> <PORT>;
#   * cases print no pids, times or rates; wrk and pgbench print only pass/fail facts
#     (error counts, non-2xx counts, "requests > 0"), never throughput.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ARRAKIS=${CARGO_TARGET_DIR:-$ROOT/target}/release/arrakis
SHIM=${CARGO_TARGET_DIR:-$ROOT/target}/release/libarrakis.so
PROGS=$HERE/progs

# ------------------------------------------------------------------ helpers for cases

# need CMD...: skip the case (exit 77, verdict SKIP) unless every CMD is installed.
need() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || { echo "SKIP: $c not installed"; exit 77; }
  done
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_port PORT SECONDS: until something accepts on 127.0.0.1:PORT.
wait_port() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# expect_shim WHAT PID...: checks libarrakis is mapped in all of PID... and their children
# under the shim and in none natively; prints one line, the same in both modes when correct.
expect_shim() {
  local what=$1 pids=() p mapped=0 total=0
  shift
  for p in "$@"; do
    pids+=("$p")
    pids+=($(cat /proc/"$p"/task/*/children 2>/dev/null))
  done
  for p in "${pids[@]}"; do
    [ -r "/proc/$p/maps" ] || continue
    total=$((total + 1))
    grep -q libarrakis "/proc/$p/maps" 2>/dev/null && mapped=$((mapped + 1))
  done
  if [ "$MODE" = shim ]; then
    [ "$mapped" -eq "$total" ] && [ "$total" -gt 0 ] && echo "$what: shim as expected" ||
      echo "$what: shim mapped in $mapped of $total processes (expected all)"
  else
    [ "$mapped" -eq 0 ] && echo "$what: shim as expected" || echo "$what: shim mapped natively?!"
  fi
}

# bg LOG CMD...: start CMD (through RUN) in the background; its pid in BG.
bg() {
  local log=$1
  shift
  "${RUN[@]}" "$@" >"$log" 2>&1 </dev/null &
  BG=$!
  BGPIDS+=("$BG")
}

case_cleanup() {
  local p
  for p in "${BGPIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${BGPIDS[@]}"; do
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
  done
  [ -n "${PGDATA_STOP:-}" ] && runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$PGDATA_STOP" \
    -m immediate stop >/dev/null 2>&1
  return 0
}

# ------------------------------------------------------------------ the cases

CASES=(java_sweep java_vfork javac node perl tclsh python gcc make git tar cp_find sort xargs
  sqlite compress script_pty strace gdb openssl preload_stack env_order sigpipe sigpipe_ignored
  python_smallstack nginx_wrk haproxy postgres)

c_java_sweep() { need java; "${RUN[@]}" java -Xss512k -cp "$JCLASSES" Sweep; }

# The same program with the JDK's older launch mechanisms: VFORK (the child runs on the
# parent thread's stack until it execs) and FORK.
c_java_vfork() {
  need java
  local m rc=0
  for m in VFORK FORK; do
    echo "launchMechanism=$m"
    "${RUN[@]}" java -Djdk.lang.Process.launchMechanism=$m -cp "$JCLASSES" Sweep | grep -E 'child|spawn|children|done' || rc=1
  done
  return $rc
}

c_javac() {
  need javac
  cp "$PROGS/Sweep.java" . && "${RUN[@]}" javac -d out Sweep.java &&
    find out -name '*.class' | sort | xargs sha256sum
}

c_node() { need node; "${RUN[@]}" node "$PROGS/sweep.js"; }
c_perl() { need perl; "${RUN[@]}" perl "$PROGS/sweep.pl"; }
c_tclsh() { need tclsh; "${RUN[@]}" tclsh "$PROGS/sweep.tcl"; }
c_python() { "${RUN[@]}" "$PY" "$PROGS/sweep.py"; }

c_gcc() {
  need gcc objdump nm
  cat >hello.c <<'EOF'
#include <stdio.h>
#include <math.h>
#include <pthread.h>
static void *t(void *a) { return a; }
int main(int argc, char **argv) {
  pthread_t th; void *r;
  pthread_create(&th, 0, t, argv[0]); pthread_join(th, &r);
  printf("hello %d %.3f %d\n", argc, sqrt(2.0), r == argv[0]);
  return 3;
}
EOF
  "${RUN[@]}" gcc -O2 -Wall -pipe -o hello hello.c -lm -lpthread || return
  "${RUN[@]}" ./hello x y
  echo "hello exit=$?"
  "${RUN[@]}" gcc -O2 -c hello.c -o hello.o && "${RUN[@]}" gcc -o hello2 hello.o -lm -lpthread &&
    "${RUN[@]}" sh -c 'objdump -d hello2 | tail -n +3 | sha256sum' &&
    echo "shared object:" && "${RUN[@]}" gcc -shared -fPIC -o libx.so hello.c && nm -D libx.so | grep -c ' T '
}

c_make() {
  need make gcc
  local i
  for i in 1 2 3 4 5 6; do printf 'int f%d(void) { return %d; }\n' "$i" "$i" >"f$i.c"; done
  printf '#include <stdio.h>\nint f1(void),f2(void),f3(void),f4(void),f5(void),f6(void);\nint main(void){printf("%%d\\n",f1()+f2()+f3()+f4()+f5()+f6());return 0;}\n' >main.c
  cat >Makefile <<'EOF'
OBJS = main.o f1.o f2.o f3.o f4.o f5.o f6.o
prog: $(OBJS)
	$(CC) -o $@ $(OBJS)
%.o: %.c
	$(CC) -O2 -c $< -o $@
gen.txt: prog
	./prog > $@ && echo generated
.PHONY: check
check: gen.txt
	@cat gen.txt; test "$$(cat gen.txt)" = 21
EOF
  "${RUN[@]}" make -j2 --no-print-directory -s check && "${RUN[@]}" make -j2 --no-print-directory -q check
  echo "up to date: $?"
  "${RUN[@]}" make -j2 --no-print-directory -s nosuchtarget
  echo "make nosuchtarget exit=$?"
}

c_git() {
  need git
  export GIT_AUTHOR_DATE='2020-01-01T00:00:00Z' GIT_COMMITTER_DATE='2020-01-01T00:00:00Z'
  export GIT_AUTHOR_NAME=Sweep GIT_AUTHOR_EMAIL=s@example.invalid
  export GIT_COMMITTER_NAME=Sweep GIT_COMMITTER_EMAIL=s@example.invalid
  export GIT_CONFIG_NOSYSTEM=1 HOME=$PWD
  local g=("${RUN[@]}" git -c init.defaultBranch=main -c gc.auto=0 -c core.pager=cat)
  "${g[@]}" init -q repo && cd repo || return
  local i
  for i in $(seq 1 30); do seq 1 $((i * 100)) >"file$i"; done
  "${g[@]}" add . && "${g[@]}" commit -q -m first || return
  for i in $(seq 1 10); do echo "change $i" >>"file$i"; done
  "${g[@]}" commit -q -am second && "${g[@]}" log --format='%H %s' && "${g[@]}" gc -q &&
    "${g[@]}" count-objects -v | grep -E '^(count|in-pack|packs)' && "${g[@]}" fsck --full 2>&1 &&
    "${g[@]}" diff HEAD~1 --stat | tail -1 &&
    "${g[@]}" clone -q . ../clone && "${g[@]}" -C ../clone log --oneline | wc -l &&
    "${g[@]}" grep -c 'change' -- 'file1*' && "${g[@]}" status --porcelain
}

c_tar() {
  need tar xz
  mkdir -p src/a/b && seq 1 100000 >src/a/big && echo x >src/a/b/small && ln -s big src/a/link
  "${RUN[@]}" tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -czf t.tgz src &&
    "${RUN[@]}" tar tzf t.tgz && sha256sum <t.tgz && mkdir out && "${RUN[@]}" tar xzf t.tgz -C out &&
    diff -r src out/src && echo same && "${RUN[@]}" tar -cJf t.txz src && "${RUN[@]}" tar -xJOf t.txz src/a/b/small
}

c_cp_find() {
  mkdir -p t/d1/d2 t/d3 && seq 1 20000 >t/d1/f && printf 'x' >t/d1/d2/g && ln -s ../d1/f t/d3/l &&
    chmod 640 t/d1/f && mkfifo t/fifo && find t -depth -exec touch -h -d @1000000 {} + &&
    touch -d @2000000 t/d1/d2/g
  "${RUN[@]}" cp -a t t2 && "${RUN[@]}" find t2 -printf '%P %y %m %s %T@ %l\n' | LC_ALL=C sort &&
    "${RUN[@]}" find t2 -name '*' -type f -newer t2/d1/f -print | LC_ALL=C sort &&
    "${RUN[@]}" find t2 -type f -exec sha256sum {} + | LC_ALL=C sort &&
    "${RUN[@]}" cp -r --reflink=auto t t3 && "${RUN[@]}" du -sb t3/d1 | cut -f1
}

c_sort() {
  "$PY" -c '
import random
r = random.Random(7)
with open("in.txt", "w") as f:
    for _ in range(600000): f.write("%08x %d\n" % (r.getrandbits(32), r.randrange(1000)))'
  mkdir tmp
  "${RUN[@]}" sort -S 1M -T tmp --parallel=2 in.txt | sha256sum &&
    "${RUN[@]}" sort -S 1M -T tmp -k2,2n -s in.txt | sha256sum &&
    "${RUN[@]}" sort -u -S 512K -T tmp in.txt | wc -l && ls tmp | wc -l
}

c_xargs() {
  seq 1 400 | "${RUN[@]}" xargs -P4 -n7 sh -c 'for a; do echo $((a * a)); done' sh | sort -n | sha256sum &&
    seq 1 50 | "${RUN[@]}" xargs -P2 -I{} sh -c 'test {} -ne 33' ; echo "xargs exit=$?"
}

c_sqlite() {
  need sqlite3
  "${RUN[@]}" sqlite3 db.sqlite <<'EOF'
PRAGMA journal_mode=WAL;
CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INT);
BEGIN;
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 20000)
INSERT INTO t(v, n) SELECT hex(x), x % 97 FROM c;
COMMIT;
CREATE INDEX tn ON t(n);
SELECT count(*), sum(n), max(v) FROM t;
SELECT n, count(*) FROM t GROUP BY n ORDER BY n LIMIT 3;
PRAGMA integrity_check;
VACUUM;
PRAGMA wal_checkpoint(TRUNCATE);
EOF
  "${RUN[@]}" sqlite3 db.sqlite 'SELECT count(*) FROM t WHERE n = 5' '.tables'
}

c_compress() {
  need zstd xz
  seq 1 300000 >in && "${RUN[@]}" zstd -q -T2 -3 in -o in.zst && "${RUN[@]}" zstd -q -d -c in.zst | sha256sum &&
    "${RUN[@]}" xz -T2 -k -6 in && "${RUN[@]}" xz -d -c in.xz | sha256sum && "${RUN[@]}" gzip -c in | gzip -dc | wc -l
}

# A pseudo-terminal: script(1) runs a shell on a pty (forkpty, poll/select, signals).
c_script_pty() {
  need script
  "${RUN[@]}" script -q -e -c 'test -t 0 && test -t 1 && echo "on a tty"; stty size >/dev/null && echo stty ok; exit 3' \
    /dev/null | tr -d '\r'
  echo "script exit=${PIPESTATUS[0]}"
}

# strace itself (ptrace, waitpid, a forked tracee that execs).
c_strace() {
  need strace
  "${RUN[@]}" strace -f -qq -e trace=none -e signal=none sh -c 'sh -c "exit 2"; exit 4' 2>&1
  echo "strace exit=$?"
}

c_gdb() {
  need gdb gcc
  printf '#include <stdlib.h>\nint f(int x){ if (x > 2) abort(); return f(x + 1); }\nint main(void){ return f(0); }\n' >crash.c
  gcc -g -O0 -o crash crash.c || return
  "${RUN[@]}" gdb -q -batch -nx -ex 'set startup-with-shell off' -ex run -ex 'bt 5' -ex 'info frame' ./crash 2>&1 |
    grep -E '^#[0-9]|signal|exited' | sed -e 's/0x[0-9a-f]*/ADDR/g' -e 's/process [0-9]*/process PID/'
}

# TLS on 127.0.0.1: openssl s_server -www, driven by s_client and curl.
c_openssl() {
  need openssl curl
  local port
  port=$(free_port)
  openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem -days 1 -subj /CN=localhost 2>/dev/null
  # -naccept 4: wait_port's probe connection is one of them.
  bg server.log openssl s_server -accept "127.0.0.1:$port" -cert cert.pem -key key.pem -www -naccept 4
  wait_port "$port" 15 || { cat server.log; return 1; }
  expect_shim s_server "$BG"
  printf 'GET / HTTP/1.0\r\n\r\n' | "${RUN[@]}" timeout 10 openssl s_client -connect "127.0.0.1:$port" -quiet \
    -verify_quiet 2>/dev/null | head -1 | tr -d '\r'
  "${RUN[@]}" curl -sk --max-time 10 -o /dev/null -w '%{http_code} %{ssl_verify_result}\n' "https://127.0.0.1:$port/"
  "${RUN[@]}" curl -sk --max-time 10 "https://127.0.0.1:$port/" | grep -c -i -E "cipher|protocol"
  wait "$BG"
  echo "s_server exit=$?"
}

# Other LD_PRELOAD libraries under the shim (it goes first and chains to them).
c_preload_stack() {
  need fakeroot faketime eatmydata
  "${RUN[@]}" fakeroot sh -c 'touch f; chown 123:45 f; mknod dev c 1 3; stat -c "%n %u %g %F" f dev;
    tar cf - f dev | tar tvf - | cut -c1-25'
  "${RUN[@]}" faketime '2001-02-03 04:05:06' sh -c 'date -u +%F; touch x; stat -c %y x | cut -c1-10'
  "${RUN[@]}" eatmydata sh -c 'dd if=/dev/zero of=f bs=4k count=100 oflag=sync status=none && sync && stat -c %s f'
}

# The environment a program starts with, in order (LD_PRELOAD and ARRAKIS_*, which the shim
# adds by design, are left out).
c_env_order() {
  env -i ZED=1 ALPHA=2 MID=3 PATH=/usr/bin:/bin "${RUN[@]}" env | grep -v -E '^(LD_PRELOAD|ARRAKIS_[A-Z_]*)='
}

# SIGPIPE: `yes` writing into a pipe whose reader has gone.
c_sigpipe() {
  "${RUN[@]}" yes | head -n 2
  echo "pipestatus=${PIPESTATUS[*]}"
}

# The same with SIGPIPE ignored by the caller (as a CI runner or a daemon may leave it):
# natively `yes` inherits the ignored disposition, gets EPIPE, reports it and exits 1.
c_sigpipe_ignored() {
  trap '' PIPE
  "${RUN[@]}" yes | head -n 2
  echo "pipestatus=${PIPESTATUS[*]}"
  "${RUN[@]}" grep SigIgn /proc/self/status
}

# A program that sets a small thread stack (threading.stack_size's documented minimum is
# 32 KiB) and starts a subprocess from that thread: CPython's _posixsubprocess vforks and
# calls execve on the thread's stack.
c_python_smallstack() {
  "${RUN[@]}" "$PY" -c '
import subprocess, threading
for size in (32768, 65536, 1 << 20):
    threading.stack_size(size)
    out = []
    t = threading.Thread(target=lambda: out.append(subprocess.run(["echo", "hi"], capture_output=True)))
    t.start(); t.join()
    print("stack %7d: subprocess.run rc=%d stdout=%r" % (size, out[0].returncode, out[0].stdout))'
  # os.posix_spawn from such a thread: the spawn runs in the calling process itself.
  "${RUN[@]}" "$PY" -c '
import os, threading
threading.stack_size(32768)
r = []
t = threading.Thread(target=lambda: r.append(os.waitpid(os.posix_spawn("/bin/true", ["true"], os.environ), 0)[1]))
t.start(); t.join()
print("stack   32768: os.posix_spawn wait status", r)'
}

c_nginx_wrk() {
  need nginx curl wrk
  local port
  port=$(free_port)
  mkdir -p html logs tmp
  "$PY" -c 'import os; open("html/big.bin","wb").write(bytes(range(256))*4096)'
  echo "hello nginx" >html/index.html
  cat >nginx.conf <<EOF
daemon off;
master_process on;
worker_processes 2;
pid $PWD/nginx.pid;
error_log $PWD/logs/error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path $PWD/tmp/body; proxy_temp_path $PWD/tmp/proxy;
  fastcgi_temp_path $PWD/tmp/fcgi; uwsgi_temp_path $PWD/tmp/uwsgi; scgi_temp_path $PWD/tmp/scgi;
  sendfile on; tcp_nopush on; keepalive_timeout 10;
  server {
    listen 127.0.0.1:$port;
    root $PWD/html;
    location /status { return 200 "ok\n"; }
  }
}
EOF
  bg nginx.out nginx -p "$PWD" -c "$PWD/nginx.conf"
  wait_port "$port" 15 || { echo "nginx did not start"; cat nginx.out logs/error.log; return 1; }
  sleep 0.3
  expect_shim nginx "$BG"
  "${RUN[@]}" curl -s --max-time 10 "http://127.0.0.1:$port/"
  "${RUN[@]}" curl -s --max-time 10 "http://127.0.0.1:$port/big.bin" | sha256sum
  "${RUN[@]}" curl -s --max-time 10 -o /dev/null -w '%{http_code}\n' "http://127.0.0.1:$port/nope"
  "${RUN[@]}" curl -s --max-time 10 -r 100-199 "http://127.0.0.1:$port/big.bin" | sha256sum
  # wrk: bounded (3 s, 2 threads, 16 connections); only error facts are printed.
  "${RUN[@]}" timeout 20 wrk -t2 -c16 -d3s "http://127.0.0.1:$port/status" >wrk.out 2>&1
  echo "wrk exit=$?"
  awk '/requests in/ { print "wrk requests>0:", ($1 > 0) }
       /Socket errors/ { print "wrk socket errors:", $0 }
       /Non-2xx/ { print "wrk non-2xx:", $NF }' wrk.out
  "${RUN[@]}" timeout 20 wrk -t1 -c4 -d2s "http://127.0.0.1:$port/big.bin" >wrk2.out 2>&1
  echo "wrk big exit=$? errors=$(grep -c -E 'Socket errors|Non-2xx' wrk2.out)"
  kill -QUIT "$BG"
  wait "$BG"
  echo "nginx exit=$?"
  grep -v -E '\[notice\]' logs/error.log | sed 's/^[0-9/]* [0-9:]* //; s/#[0-9]*/#N/; s/[0-9]*#[0-9]*/P#T/' || true
}

c_haproxy() {
  need haproxy curl
  local be fe i
  be=$(free_port)
  fe=$(free_port)
  mkdir www && seq 1 5000 >www/data.txt
  bg backend.log "$PY" -m http.server "$be" --bind 127.0.0.1 --directory www
  local bepid=$BG
  cat >haproxy.cfg <<EOF
global
  maxconn 200
defaults
  mode http
  timeout connect 5s
  timeout client 10s
  timeout server 10s
frontend fe
  bind 127.0.0.1:$fe
  default_backend be
backend be
  server s1 127.0.0.1:$be
EOF
  "${RUN[@]}" haproxy -c -q -f haproxy.cfg
  echo "haproxy -c exit=$?"
  bg haproxy.log haproxy -db -f haproxy.cfg
  wait_port "$be" 15 && wait_port "$fe" 15 || { echo "servers did not start"; cat backend.log haproxy.log; return 1; }
  expect_shim haproxy "$BG"
  expect_shim http.server "$bepid"
  for i in $(seq 1 20); do
    "${RUN[@]}" curl -s --max-time 10 "http://127.0.0.1:$fe/data.txt" | sha256sum
  done | uniq -c
  "${RUN[@]}" curl -s --max-time 10 -o /dev/null -w '%{http_code}\n' "http://127.0.0.1:$fe/missing"
  kill -USR1 "$BG" # soft stop
  wait "$BG"
  echo "haproxy exit=$?"
}

c_postgres() {
  local port bin=/usr/lib/postgresql/15/bin
  [ -x $bin/initdb ] || { echo "SKIP: postgresql 15 not installed"; exit 77; }
  need runuser psql
  port=$(free_port)
  mkdir pg && chown postgres: pg
  # runuser drops to the postgres user; under the shim the whole chain is preloaded.
  local as=("${RUN[@]}" runuser -u postgres --)
  "${as[@]}" $bin/initdb -D "$PWD/pg" -A trust -U postgres --no-sync >initdb.log 2>&1
  echo "initdb exit=$?"
  PGDATA_STOP=$PWD/pg
  "${as[@]}" $bin/pg_ctl -D "$PWD/pg" -l "$PWD/pg/log" -w -t 30 \
    -o "-k $PWD/pg -p $port -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=30" start >/dev/null
  echo "pg_ctl start exit=$?"
  expect_shim postgres "$(head -1 pg/postmaster.pid)"
  local psql=("${RUN[@]}" psql -X -q -A -t -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1)
  "${psql[@]}" -c "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g" &&
    "${psql[@]}" -c "SELECT count(*), max(v) FROM t" && "${psql[@]}" -c "CREATE INDEX ON t(v)" &&
    "${psql[@]}" -c "SET max_parallel_workers_per_gather=2; SET parallel_setup_cost=0; SET parallel_tuple_cost=0; SELECT sum(id) FROM t"
  "${RUN[@]}" $bin/pgbench -h 127.0.0.1 -p "$port" -U postgres -i -q -s 1 postgres >pgbench-init.log 2>&1
  echo "pgbench -i exit=$?"
  "${RUN[@]}" timeout 30 $bin/pgbench -h 127.0.0.1 -p "$port" -U postgres -c 4 -j 2 -T 3 postgres >pgbench.log 2>&1
  echo "pgbench exit=$? failed=$(awk -F'[: ]+' '/number of failed transactions/ {print $5}' pgbench.log)"
  "${psql[@]}" -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE false"
  "${as[@]}" $bin/pg_ctl -D "$PWD/pg" -m fast -w stop >/dev/null
  echo "pg_ctl stop exit=$?"
  PGDATA_STOP=
  grep -E 'ERROR|FATAL|PANIC|terminated by signal' pg/log | grep -v 'database system is shut down' || true
}

# ------------------------------------------------------------------ one case, one mode

run_one() { # run_one CASE MODE DIR   (in a fresh `bash` under timeout)
  MODE=$2
  if [ "$MODE" = shim ]; then RUN=("$ARRAKIS" run --); else RUN=(); fi
  BGPIDS=()
  PGDATA_STOP=
  trap case_cleanup EXIT
  trap 'exit 143' TERM
  cd "$3" || exit 99
  "c_$1"
}

# ------------------------------------------------------------------ the harness

if [ "${1:-}" = --one ]; then
  shift
  # shellcheck disable=SC2034
  PY=$(cat "$SWEEP_WORK/python")
  JCLASSES=$SWEEP_WORK/jclasses
  run_one "$@"
  exit
fi
if [ "${1:-}" = --list ]; then
  printf '%s\n' "${CASES[@]}"
  exit 0
fi

SELECTED=("$@")
[ ${#SELECTED[@]} -eq 0 ] && SELECTED=("${CASES[@]}")
for c in "${SELECTED[@]}"; do
  declare -F "c_$c" >/dev/null || { echo "no such case: $c (--list)" >&2; exit 2; }
done

if [ -z "${SWEEP_NO_BUILD:-}" ]; then
  (cd "$ROOT" && timeout 900 cargo build --release -q) || { echo "cargo build failed" >&2; exit 2; }
fi
[ -x "$ARRAKIS" ] && [ -f "$SHIM" ] || { echo "missing $ARRAKIS or $SHIM" >&2; exit 2; }

export SWEEP_WORK=${SWEEP_WORK:-$(mktemp -d /tmp/arrakis-sweep.XXXXXX)}
mkdir -p "$SWEEP_WORK"
[ -n "${SWEEP_KEEP:-}" ] || trap 'rm -rf "$SWEEP_WORK"' EXIT
# The real interpreter, not a pyenv shim script.
python3 -c 'import os, sys; print(os.path.realpath(sys.executable))' >"$SWEEP_WORK/python"
PY=$(cat "$SWEEP_WORK/python")
unset LD_PRELOAD
for v in $(env | grep -o '^ARRAKIS_[A-Z_]*'); do unset "$v"; done
export LC_ALL=C TZ=UTC

# Preflight: the comparison is vacuous unless the shim is really loaded under arrakis run.
"$ARRAKIS" run -- grep -q libarrakis /proc/self/maps || { echo "shim not mapped under arrakis run" >&2; exit 2; }
! grep -q libarrakis /proc/self/maps || { echo "shim mapped natively" >&2; exit 2; }

# Compile the Java program once (natively; javac under the shim is a case of its own).
if printf '%s\n' "${SELECTED[@]}" | grep -q '^java'; then
  mkdir -p "$SWEEP_WORK/jclasses" && javac -d "$SWEEP_WORK/jclasses" "$PROGS/Sweep.java" ||
    { echo "javac failed" >&2; exit 2; }
fi

normalise() { # normalise FILE MODEDIR
  sed -e "s#$2#<DIR>#g" \
    -e 's#\(127\.0\.0\.1\|localhost\|\[::1\]\):[0-9][0-9]*#\1:<PORT>#g' "$1"
}

# run CASE MODE ATTEMPT -> files in $SWEEP_WORK/out/CASE.MODE.ATTEMPT.{out,err,rc,secs}
run_mode() {
  local c=$1 m=$2 a=$3 dir="$SWEEP_WORK/run/$1.$2.$3" o="$SWEEP_WORK/out/$1.$2.$3" t0=$SECONDS rc
  rm -rf "$dir" && mkdir -p "$dir" "$SWEEP_WORK/out"
  chmod 755 "$dir" "$SWEEP_WORK" "$SWEEP_WORK/run"
  timeout -k 5 "${SWEEP_CASE_TIMEOUT:-90}" "$0" --one "$c" "$m" "$dir" >"$o.raw.out" 2>"$o.raw.err" </dev/null
  rc=$?
  echo "$rc" >"$o.rc"
  echo $((SECONDS - t0)) >"$o.secs"
  normalise "$o.raw.out" "$dir" >"$o.out"
  normalise "$o.raw.err" "$dir" >"$o.err"
}

same() { # same CASE ATTEMPT: native and shim agree?
  local n="$SWEEP_WORK/out/$1.native.$2" s="$SWEEP_WORK/out/$1.shim.$2"
  cmp -s "$n.rc" "$s.rc" && cmp -s "$n.out" "$s.out" && cmp -s "$n.err" "$s.err"
}

START=$SECONDS
declare -A VERDICT
for c in "${SELECTED[@]}"; do
  run_mode "$c" native 1
  run_mode "$c" shim 1
  if [ "$(cat "$SWEEP_WORK/out/$c.native.1.rc")" = 77 ] && grep -q '^SKIP:' "$SWEEP_WORK/out/$c.native.1.out"; then
    VERDICT[$c]=SKIP
  elif same "$c" 1; then
    VERDICT[$c]=same
  else
    run_mode "$c" native 2
    run_mode "$c" shim 2
    if same "$c" 2; then VERDICT[$c]=FLAKY; else VERDICT[$c]=DIFF; fi
  fi
  printf '%-18s %s\n' "$c" "${VERDICT[$c]}" >&2
done

# ------------------------------------------------------------------ report

printf '\n%-18s %-9s %-9s %-8s %-8s %-9s %s\n' case native shim stdout stderr 'secs n/s' verdict
printf -- '-%.0s' {1..80}
echo
ndiff=0
for c in "${SELECTED[@]}"; do
  n="$SWEEP_WORK/out/$c.native.1" s="$SWEEP_WORK/out/$c.shim.1"
  so=same se=same
  cmp -s "$n.out" "$s.out" || so=DIFF
  cmp -s "$n.err" "$s.err" || se=DIFF
  printf '%-18s rc=%-6s rc=%-6s %-8s %-8s %4s/%-4s %s\n' "$c" "$(cat "$n.rc")" "$(cat "$s.rc")" "$so" "$se" \
    "$(cat "$n.secs")" "$(cat "$s.secs")" "${VERDICT[$c]}"
  [ "${VERDICT[$c]}" = DIFF ] && ndiff=$((ndiff + 1))
done
echo
for c in "${SELECTED[@]}"; do
  case ${VERDICT[$c]} in same | SKIP) continue ;; esac
  n="$SWEEP_WORK/out/$c.native.1" s="$SWEEP_WORK/out/$c.shim.1"
  echo "=== $c (${VERDICT[$c]}): native rc=$(cat "$n.rc"), shim rc=$(cat "$s.rc")"
  diff -u --label "native stdout" --label "shim stdout" "$n.out" "$s.out" | head -40
  diff -u --label "native stderr" --label "shim stderr" "$n.err" "$s.err" | head -40
done
nskip=0
for c in "${SELECTED[@]}"; do [ "${VERDICT[$c]}" = SKIP ] && nskip=$((nskip + 1)); done
echo "sweep: ${#SELECTED[@]} cases, $ndiff differ, $nskip skipped, $((SECONDS - START)) s; work dir $SWEEP_WORK${SWEEP_KEEP:+ (kept)}"
[ "$ndiff" -eq 0 ] || exit 1
if [ -n "${SWEEP_REQUIRE_ALL:-}" ] && [ "$nskip" -ne 0 ]; then
  echo "sweep: $nskip case(s) skipped for missing programs; compat-tests/install-deps.sh installs them" >&2
  exit 1
fi
