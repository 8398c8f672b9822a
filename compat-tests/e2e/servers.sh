#!/usr/bin/env bash
# End-to-end test: unmodified memcached (4 worker threads) and redis-server run under
# `arrakis run`, driven by their own load tools (memcslap, redis-benchmark), with byte-exact
# data checks, a forking BGSAVE and a restart that loads the saved snapshot.
# Servers listen on random free ports on 127.0.0.1; every step is bounded in time and the
# servers are stopped on exit. Exits non-zero with a FAIL: line on the first failure.
#
# usage: compat-tests/e2e/servers.sh
#   ARRAKIS_SKIP_BUILD=1  use the existing target/release build instead of `cargo build --release`
#   KEEP_WORK=1           keep the scratch directory (server logs, dump.rdb) for inspection
#   ARRAKIS_BACKEND=loopback ARRAKIS_KERNEL_CLIENTS=1
#                         the servers' sockets on the library OS; the clients (not under the
#                         shim) reach them through the listeners' kernel halves. The script
#                         then also checks that each server's listener is the library OS's.
set -euo pipefail
# shellcheck source=../../examples/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../examples/lib.sh"

ensure_packages memcached:memcached memcslap:libmemcached-tools memccp:libmemcached-tools \
  memccat:libmemcached-tools redis-server:redis-server redis-cli:redis-tools \
  redis-benchmark:redis-tools
if [ -n "${ARRAKIS_SKIP_BUILD:-}" ]; then
  [ -x "$ARRAKIS" ] && [ -f "$SHIM" ] || die "ARRAKIS_SKIP_BUILD is set but $ARRAKIS or $SHIM is missing"
else
  build_arrakis
fi
START=$SECONDS

# check_library_sockets PID NAME PORT: under ARRAKIS_BACKEND=loopback with
# ARRAKIS_KERNEL_CLIENTS=1, the kernel socket listening on PORT must be the hidden kernel half
# of a library-OS listener (an fd the library OS placed at or above 3/4 of the process's fd
# limit), not a socket of the program's own numbering.
check_library_sockets() {
  local pid=$1 name=$2 port=$3 inode fd soft
  [ "${ARRAKIS_BACKEND:-kernel}" = loopback ] && [ "${ARRAKIS_KERNEL_CLIENTS:-0}" = 1 ] || return 0
  inode=$(ss -Hltne "sport = :$port" | grep -o 'ino:[0-9]*' | head -1 | cut -d: -f2)
  [ -n "$inode" ] || die "$name: no kernel socket listens on port $port"
  fd=$(find "/proc/$pid/fd" -lname "socket:\\[$inode\\]" -printf '%f\n' 2>/dev/null | head -1)
  [ -n "$fd" ] || die "$name: the kernel listener on port $port is not one of pid $pid's fds"
  soft=$(awk '/Max open files/ {print $4}' "/proc/$pid/limits")
  [ "$fd" -ge $((soft * 3 / 4)) ] ||
    die "$name: the kernel listener on port $port is fd $fd, the program's own (not a library-OS listener's kernel half)"
  say "$name (pid $pid): its listener on port $port is the library OS's (kernel half at hidden fd $fd)"
}

# --- memcached --------------------------------------------------------------------------

# slap PORT TEST CONCURRENCY COUNT: memcslap run; fails on any error message or on a key
# count other than CONCURRENCY*COUNT in its report (memcslap exits 0 even when every
# request failed, so its exit status alone proves nothing).
slap() {
  local port=$1 test=$2 conc=$3 count=$4 out rc=0
  out=$(timeout 60 memcslap --servers="127.0.0.1:$port" --test="$test" --concurrency="$conc" \
    --execute-number="$count" --tcp-nodelay 2>&1) || rc=$?
  if [ "$rc" -ne 0 ] || printf '%s\n' "$out" | grep -Eqi 'error|fail'; then
    printf '%s\n' "$out" >&2
    die "memcslap --test=$test failed (exit $rc)"
  fi
  printf '%s\n' "$out" | grep -Eq "Time to $test +$((conc * count)) keys by +$conc threads" || {
    printf '%s\n' "$out" >&2
    die "memcslap --test=$test did not report $((conc * count)) keys by $conc threads"
  }
  say "memcslap --test=$test: $((conc * count)) keys by $conc threads, no errors"
}

test_memcached() {
  local port pid user=() hits0 miss0 sets0 after f
  port=$(free_port)
  [ "$(id -u)" -eq 0 ] && user=(-u root) # memcached refuses to run as root without -u
  say "memcached -t 4 under arrakis run on 127.0.0.1:$port"
  start_bg "$WORK/memcached.log" "$ARRAKIS" run -- memcached -l 127.0.0.1 -p "$port" -U 0 \
    -t 4 -m 64 -c 1024 "${user[@]}"
  local launched=$BG_PID
  wait_tcp "$port" "$launched" 20 || {
    cat "$WORK/memcached.log" >&2
    die "memcached did not come up under the shim"
  }
  pid=$(mc_stat "$port" pid)
  [ "$pid" = "$launched" ] || SERVER_PIDS+=("$pid")
  check_shim_mapped "$pid" memcached
  check_library_sockets "$pid" memcached "$port"
  [ "$(mc_stat "$port" threads)" = 4 ] || die "memcached does not report 4 worker threads"

  # Load: memcslap sets, then gets (it loads COUNT keys first), then multi-gets.
  sets0=$(mc_stat "$port" cmd_set)
  slap "$port" set 4 5000
  after=$(mc_stat "$port" cmd_set)
  [ $((after - sets0)) -eq 20000 ] || die "memcached counted $((after - sets0)) sets, expected 20000"

  hits0=$(mc_stat "$port" get_hits)
  miss0=$(mc_stat "$port" get_misses)
  slap "$port" get 4 5000
  slap "$port" mget 4 2000
  after=$(mc_stat "$port" get_misses)
  [ "$after" -eq "$miss0" ] || die "memcached counted $((after - miss0)) get misses under memcslap, expected 0"
  after=$(mc_stat "$port" get_hits)
  [ $((after - hits0)) -ge 20000 ] || die "memcached counted only $((after - hits0)) get hits, expected >= 20000"
  say "memcached: $((after - hits0)) get hits, 0 misses"

  # Data: binary blobs through memccp, back through memccat, compared byte for byte
  # (memccat appends one newline). 300 KB of random bytes spans many reads and writes.
  mkdir -p "$WORK/mc"
  head -c 300000 /dev/urandom >"$WORK/mc/blob.bin"
  printf 'hello\r\nEND\r\n\0\377 tail' >"$WORK/mc/tricky.bin"
  : >"$WORK/mc/empty.bin"
  timeout 20 memccp --servers="127.0.0.1:$port" "$WORK/mc/blob.bin" "$WORK/mc/tricky.bin" \
    "$WORK/mc/empty.bin" || die "memccp failed"
  for f in blob.bin tricky.bin empty.bin; do
    timeout 20 memccat --servers="127.0.0.1:$port" "$f" >"$WORK/mc/$f.out" ||
      die "memccat $f failed"
    { cat "$WORK/mc/$f"; echo; } | cmp -s - "$WORK/mc/$f.out" ||
      die "memcached returned different bytes for $f"
  done
  if timeout 20 memccat --servers="127.0.0.1:$port" no-such-key >/dev/null 2>&1; then
    die "memccat found a key that was never set"
  fi
  say "memcached: 3 values (300000, 20 and 0 bytes) read back byte-exact"

  alive "$pid" || die "memcached died"
  check_shim_mapped "$pid" memcached
  local rc=0
  stop_pid "$launched" 10 || rc=$?
  [ "$rc" -eq 0 ] || { # memcached handles SIGTERM and exits 0, natively
    tail -20 "$WORK/memcached.log" >&2
    die "memcached under the shim exited with status $rc on SIGTERM"
  }
}

# --- redis ------------------------------------------------------------------------------

# expect_get PORT KEY FILE: GET KEY must return exactly FILE's bytes (redis-cli adds a newline).
expect_get() {
  rcli "$1" GET "$2" >"$WORK/get.out" || die "GET $2 failed"
  { cat "$3"; echo; } | cmp -s - "$WORK/get.out" || die "GET $2 returned different bytes"
}

# bgsave_done PORT SAVES: no BGSAVE in progress and more than SAVES saves since start-up.
bgsave_done() {
  [ "$(redis_info "$1" rdb_bgsave_in_progress)" = 0 ] && [ "$(redis_info "$1" rdb_saves)" -gt "$2" ]
}

test_redis() {
  local port dir n=20000 out v saves0 i status rc=0
  port=$(free_port)
  dir=$WORK/redis
  say "redis-server under arrakis run on 127.0.0.1:$port, data in $dir"
  start_redis shim "$port" "$dir" "$WORK/redis.log"
  check_library_sockets "$REDIS_PID" redis-server "$port"

  # Load: redis-benchmark at 50 and 1 connections. The INCR counter says how many of the
  # requests the server really applied.
  out=$(redis_bench "$port" -t set,get,incr,lpush,lpop,mset -n "$n" -c 50)
  for v in SET GET INCR LPUSH LPOP "MSET (10 keys)"; do
    csv_field "$out" "$v" rps | awk '$1 > 0 { ok = 1 } END { exit !ok }' || die "redis-benchmark: no throughput for $v"
  done
  out=$(redis_bench "$port" -t get,incr -n 5000 -c 1)
  csv_field "$out" GET rps >/dev/null
  v=$(rcli "$port" GET counter:__rand_int__)
  [ "$v" = "$((n + 5000))" ] || die "INCR counter is $v, expected $((n + 5000))"
  say "redis-benchmark: $((n + 5000)) INCRs all applied, no errors"

  # Data: known values, binary-safe, including a 200 KB random blob and an empty string.
  rcli "$port" FLUSHALL >/dev/null
  mkdir -p "$WORK/rd"
  head -c 200000 /dev/urandom >"$WORK/rd/blob"
  printf 'line1\r\nline2\0\377end' >"$WORK/rd/tricky"
  : >"$WORK/rd/empty"
  for v in blob tricky empty; do
    [ "$(rcli "$port" -x SET "known:$v" <"$WORK/rd/$v")" = OK ] || die "SET known:$v failed"
    expect_get "$port" "known:$v" "$WORK/rd/$v"
  done
  for i in $(seq 1 100); do echo "SET num:$i $((i * i))"; done | rcli "$port" >/dev/null
  [ "$(rcli "$port" GET num:77)" = 5929 ] || die "GET num:77 is wrong"
  [ "$(rcli "$port" DBSIZE)" = 103 ] || die "DBSIZE is $(rcli "$port" DBSIZE), expected 103"
  say "redis: 103 keys set and read back byte-exact"

  # BGSAVE forks a child (it inherits the shim) that writes dump.rdb.
  saves0=$(redis_info "$port" rdb_saves)
  v=$(rcli "$port" BGSAVE)
  [ "$v" = "Background saving started" ] || die "BGSAVE answered: $v"
  poll 30 bgsave_done "$port" "$saves0" || die "BGSAVE did not finish within 30 s"
  status=$(redis_info "$port" rdb_last_bgsave_status)
  [ "$status" = ok ] || {
    tail -20 "$WORK/redis.log" >&2
    die "BGSAVE status: $status"
  }
  [ -s "$dir/dump.rdb" ] || die "BGSAVE reported ok but $dir/dump.rdb is missing or empty"
  if command -v redis-check-rdb >/dev/null 2>&1; then
    timeout 20 redis-check-rdb "$dir/dump.rdb" >"$WORK/check-rdb.log" 2>&1 || {
      cat "$WORK/check-rdb.log" >&2
      die "redis-check-rdb rejects the dump written under the shim"
    }
  fi
  say "redis: BGSAVE ok, dump.rdb is $(stat -c %s "$dir/dump.rdb") bytes"

  # A write after the snapshot that SHUTDOWN NOSAVE must not persist: after the restart
  # every key must come from the BGSAVE snapshot.
  rcli "$port" SET after:snapshot 1 >/dev/null
  rcli "$port" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
  wait_exit "$BG_PID" 10 || rc=$?
  [ "$rc" -eq 0 ] || {
    tail -20 "$WORK/redis.log" >&2
    die "redis-server under the shim exited with status $rc after SHUTDOWN NOSAVE"
  }

  say "restarting redis-server under arrakis run from the snapshot"
  start_redis shim "$port" "$dir" "$WORK/redis2.log"
  check_library_sockets "$REDIS_PID" redis-server "$port"
  [ "$(redis_info "$port" rdb_last_load_keys_loaded)" = 103 ] ||
    die "restarted redis loaded $(redis_info "$port" rdb_last_load_keys_loaded) keys, expected 103"
  [ "$(rcli "$port" DBSIZE)" = 103 ] || die "restarted redis has DBSIZE $(rcli "$port" DBSIZE), expected 103"
  [ "$(rcli "$port" EXISTS after:snapshot)" = 0 ] || die "a key written after the snapshot survived SHUTDOWN NOSAVE"
  for v in blob tricky empty; do
    expect_get "$port" "known:$v" "$WORK/rd/$v"
  done
  [ "$(rcli "$port" GET num:100)" = 10000 ] || die "GET num:100 is wrong after the restart"
  say "redis: 103 keys loaded from dump.rdb, byte-exact"

  rc=0
  stop_pid "$BG_PID" 10 || rc=$?
  [ "$rc" -eq 0 ] || {
    tail -20 "$WORK/redis2.log" >&2
    die "redis-server under the shim exited with status $rc on SIGTERM"
  }
}

test_memcached
test_redis
echo "PASS: memcached and redis under arrakis run ($((SECONDS - START)) s)"
