#!/usr/bin/env bash
# End-to-end test of the emulator backend (issue 4, acceptance 1-3): unmodified memcached
# (4 worker threads) and redis-server run under `arrakis run --backend emulator`, which starts
# the control daemon (and it the software switch) on first use. Their clients run at the same
# time under the shim (frames through the switch: the bypass path) and without it (kernel
# clients, through the listeners' kernel halves); every request is counted and the data
# compared byte for byte. Then the control plane's promises:
#   * a bind to a port another container holds is refused (EADDRINUSE);
#   * revoking a server's grant stops an established bypass connection at once, and the drop
#     shows in `arrakis stats`;
#   * `kill -9` of a container frees its ports for the next container;
#   * killing the daemon while redis-benchmark runs through the switch fails no request, and
#     the restarted daemon lists the same grants.
# Everything runs on 127.0.0.1 with a private run directory; every step is bounded in time
# and everything started here is stopped on exit. Exits non-zero with a FAIL: line.
#
# usage: compat-tests/e2e/emulator.sh
#   ARRAKIS_SKIP_BUILD=1  use the existing target/release build
#   KEEP_WORK=1           keep the scratch directory (logs, daemon store)
set -euo pipefail
# shellcheck source=../../examples/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../examples/lib.sh"

ensure_packages memcached:memcached memcslap:libmemcached-tools memccp:libmemcached-tools \
  memccat:libmemcached-tools redis-server:redis-server redis-cli:redis-tools \
  redis-benchmark:redis-tools python3:python3
if [ -n "${ARRAKIS_SKIP_BUILD:-}" ]; then
  [ -x "$ARRAKIS" ] && [ -f "$SHIM" ] || die "ARRAKIS_SKIP_BUILD is set but $ARRAKIS or $SHIM is missing"
else
  build_arrakis
fi
START=$SECONDS

# A private daemon: its socket, store, switch and log live here.
export ARRAKIS_RUN_DIR=$WORK/run
unset ARRAKIS_SOCKET ARRAKIS_STATE_DIR ARRAKIS_BACKEND ARRAKIS_KERNEL_CLIENTS
EMU=("$ARRAKIS" run --backend emulator --)

# Also stop the daemon and the switch (they outlive the processes that started them).
stop_control_plane() {
  pkill -KILL -f -- "$ARRAKIS_RUN_DIR" 2>/dev/null || true
  pkill -KILL -f -- "$ARRAKIS (daemon|switch)" 2>/dev/null || true
}
emu_cleanup() {
  stop_control_plane
  cleanup
}
trap emu_cleanup EXIT

# json EXPR: evaluate a Python expression over the JSON document on stdin (bound to `d`).
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
adm() { timeout 10 "$ARRAKIS" "$@" --json; }

daemon_pid() { adm status 2>/dev/null | json 'd["daemon"]["pid"]' 2>/dev/null; }

# traffic PID FIELD: a switch counter of container PID (0 if the switch has not seen it).
traffic() {
  adm stats | json "next((c.get('$2', 0) for c in (d.get('switch') or {}).get('containers', []) if c['pid'] == $1), 0)"
}
# bypassed NAME FRAMES BOUND MIN: the shim's clients of NAME took the bypass path: either MIN
# frames went through the switch, or their flows got secure bindings (BOUND sides handed to
# the server) after their first frames did.
bypassed() {
  [ "$2" -ge "$4" ] || { [ "$3" -ge 1 ] && [ "$2" -ge 4 ]; } ||
    die "the switch delivered only $2 frames to $1 and gave it $3 secure bindings: the shim's clients did not take the bypass"
}
# all_drops: the switch's drops over all its ports; drops_above N: more than N.
all_drops() {
  adm stats | json "sum(sum(c['drops'].values()) for c in (d.get('switch') or {}).get('containers', []))"
}
drops_above() { [ "$(all_drops)" -gt "$1" ]; }
# grants_of PID: the grants PID holds, one "id filter" per line, sorted.
grants_of() {
  adm filters | json "'\n'.join(sorted(f\"{g['id']} {json.dumps(g['filter'], sort_keys=True)}\" for g in d['grants'] if $1 in g['holders']))"
}

# --- memcached: clients under the shim and on the kernel at once ------------------------

# slap_check OUT TEST CONC COUNT WHO: memcslap's report must show no error and CONC*COUNT keys.
slap_check() {
  local out=$1 test=$2 conc=$3 count=$4 who=$5
  if grep -Eqi 'error|fail' "$out"; then
    cat "$out" >&2
    die "memcslap --test=$test ($who) reported errors"
  fi
  grep -Eq "Time to $test +$((conc * count)) keys by +$conc threads" "$out" || {
    cat "$out" >&2
    die "memcslap --test=$test ($who) did not report $((conc * count)) keys by $conc threads"
  }
}

# slap_both PORT TEST CONC COUNT: memcslap under the shim and natively, concurrently.
slap_both() {
  local port=$1 test=$2 conc=$3 count=$4 a b rc=0
  local args=(memcslap --servers="127.0.0.1:$port" --test="$test" --concurrency="$conc"
    --execute-number="$count" --tcp-nodelay)
  timeout 120 "${EMU[@]}" "${args[@]}" >"$WORK/slap-shim.out" 2>&1 &
  a=$!
  timeout 120 "${args[@]}" >"$WORK/slap-kernel.out" 2>&1 &
  b=$!
  wait "$a" || rc=$?
  [ "$rc" -eq 0 ] || { cat "$WORK/slap-shim.out" >&2; die "memcslap under the shim exited $rc"; }
  wait "$b" || rc=$?
  [ "$rc" -eq 0 ] || { cat "$WORK/slap-kernel.out" >&2; die "memcslap (kernel) exited $rc"; }
  slap_check "$WORK/slap-shim.out" "$test" "$conc" "$count" "under the shim"
  slap_check "$WORK/slap-kernel.out" "$test" "$conc" "$count" kernel
  say "memcslap --test=$test: $((conc * count)) keys by $conc threads under the shim and as many on the kernel, at once, no errors"
}

test_memcached() {
  local port pid user=() sets0 after rx0 rx1 b0 b1 f
  port=$(free_port)
  [ "$(id -u)" -eq 0 ] && user=(-u root)
  say "memcached -t 4 under arrakis run --backend emulator on 127.0.0.1:$port (starts the daemon)"
  start_bg "$WORK/memcached.log" "${EMU[@]}" memcached -l 127.0.0.1 -p "$port" -U 0 -t 4 -m 64 \
    -c 1024 "${user[@]}"
  local launched=$BG_PID
  wait_tcp "$port" "$launched" 20 || {
    cat "$WORK/memcached.log" >&2
    die "memcached did not come up under the emulator"
  }
  pid=$(mc_stat "$port" pid)
  check_shim_mapped "$pid" memcached
  say "daemon pid $(daemon_pid) at $ARRAKIS_RUN_DIR (started by arrakis run)"
  [ -n "$(grants_of "$pid")" ] || die "memcached (pid $pid) holds no grant"
  [ "$(mc_stat "$port" threads)" = 4 ] || die "memcached does not report 4 worker threads"

  rx0=$(traffic "$pid" rx_frames)
  b0=$(traffic "$pid" bound)
  sets0=$(mc_stat "$port" cmd_set)
  slap_both "$port" set 4 5000
  after=$(mc_stat "$port" cmd_set)
  [ $((after - sets0)) -eq 40000 ] || die "memcached counted $((after - sets0)) sets, expected 40000"
  slap_both "$port" get 4 5000
  rx1=$(traffic "$pid" rx_frames)
  b1=$(traffic "$pid" bound)
  # Half the requests came by the emulator: at least one frame each, through the switch or
  # on a secure binding.
  bypassed memcached $((rx1 - rx0)) $((b1 - b0)) 20000
  say "memcached: 40000 sets counted; the switch delivered $((rx1 - rx0)) frames to it and gave it $((b1 - b0)) secure bindings"

  # Data both ways: written through the bypass, read on the kernel path, and back.
  mkdir -p "$WORK/mc"
  head -c 300000 /dev/urandom >"$WORK/mc/blob.bin"
  printf 'hello\r\nEND\r\n\0\377 tail' >"$WORK/mc/tricky.bin"
  (cd "$WORK/mc" && timeout 30 "${EMU[@]}" memccp --servers="127.0.0.1:$port" blob.bin) ||
    die "memccp under the shim failed"
  (cd "$WORK/mc" && timeout 30 memccp --servers="127.0.0.1:$port" tricky.bin) || die "memccp failed"
  timeout 30 memccat --servers="127.0.0.1:$port" blob.bin >"$WORK/mc/blob.kernel" || die "memccat failed"
  timeout 30 "${EMU[@]}" memccat --servers="127.0.0.1:$port" tricky.bin >"$WORK/mc/tricky.shim" ||
    die "memccat under the shim failed"
  { cat "$WORK/mc/blob.bin"; echo; } | cmp -s - "$WORK/mc/blob.kernel" ||
    die "a value set through the bypass read back different on the kernel path"
  { cat "$WORK/mc/tricky.bin"; echo; } | cmp -s - "$WORK/mc/tricky.shim" ||
    die "a value set on the kernel path read back different through the bypass"
  say "memcached: values written on one path read back byte-exact on the other"

  alive "$pid" || die "memcached died"
  local rc=0
  stop_pid "$launched" 10 || rc=$?
  [ "$rc" -eq 0 ] || { tail -20 "$WORK/memcached.log" >&2; die "memcached exited with status $rc on SIGTERM"; }
}

# --- redis ------------------------------------------------------------------------------

# bench_both PORT N: redis-benchmark (SET, GET, INCR, 50 connections) under the shim and on
# the kernel at once; the INCR counter must grow by exactly 2N.
bench_both() {
  local port=$1 n=$2 a b rc=0 before v
  before=$(rcli "$port" GET counter:__rand_int__)
  before=${before:-0}
  local args=(redis-benchmark -h 127.0.0.1 -p "$port" --csv -t set,get,incr -n "$n" -c 50)
  timeout 120 "${EMU[@]}" "${args[@]}" >"$WORK/rb-shim.out" 2>"$WORK/rb-shim.err" &
  a=$!
  timeout 120 "${args[@]}" >"$WORK/rb-kernel.out" 2>"$WORK/rb-kernel.err" &
  b=$!
  wait "$a" || rc=$?
  [ "$rc" -eq 0 ] && [ ! -s "$WORK/rb-shim.err" ] || {
    cat "$WORK/rb-shim.err" >&2
    die "redis-benchmark under the shim failed (exit $rc)"
  }
  wait "$b" || rc=$?
  [ "$rc" -eq 0 ] && [ ! -s "$WORK/rb-kernel.err" ] || {
    cat "$WORK/rb-kernel.err" >&2
    die "redis-benchmark (kernel) failed (exit $rc)"
  }
  for f in shim kernel; do
    for v in SET GET INCR; do
      csv_field "$(cat "$WORK/rb-$f.out")" "$v" rps | awk '$1 > 0 { ok = 1 } END { exit !ok }' ||
        die "redis-benchmark ($f): no throughput for $v"
    done
  done
  v=$(rcli "$port" GET counter:__rand_int__)
  [ "$v" = "$((before + 2 * n))" ] || die "INCR counter is $v, expected $((before + 2 * n))"
  say "redis-benchmark: $n SET/GET/INCR under the shim and $n on the kernel at once; all $((2 * n)) INCRs applied"
}

# start_redis_emu PORT DIR LOG: redis-server under the emulator; sets BG_PID and REDIS_PID.
start_redis_emu() {
  local port=$1 dir=$2 log=$3
  mkdir -p "$dir"
  start_bg "$log" "${EMU[@]}" redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" \
    --dbfilename dump.rdb --save '' --appendonly no --daemonize no --logfile '' \
    --protected-mode yes --loglevel notice
  wait_tcp "$port" "$BG_PID" 20 || {
    tail -20 "$log" >&2
    die "redis-server did not come up under the emulator on port $port"
  }
  REDIS_PID=$(redis_info "$port" process_id) || die "no process_id from redis"
  [ "$REDIS_PID" = "$BG_PID" ] || SERVER_PIDS+=("$REDIS_PID")
  check_shim_mapped "$REDIS_PID" redis-server
}

# A client under the shim that keeps one connection to redis: PING until told to stop on
# stdin, then PING again and report whether an answer came within 2 s.
HOLD_PY='
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
for _ in range(100):
    s.sendall(b"PING\r\n")
    assert s.recv(64) == b"+PONG\r\n"
print("ready", flush=True)
sys.stdin.readline()
s.settimeout(2)
try:
    s.sendall(b"PING\r\n")
    r = s.recv(64)
    print("answered" if r else "closed", flush=True)
except (socket.timeout, OSError):
    print("silent", flush=True)
'

BIND_PY='
import errno, socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen()
    print("bound")
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))
'

test_redis() {
  local port dir rx0 rx1 b0 b1 gid hold d0 d1 out
  port=$(free_port)
  dir=$WORK/redis
  say "redis-server under arrakis run --backend emulator on 127.0.0.1:$port"
  start_redis_emu "$port" "$dir" "$WORK/redis.log"
  rx0=$(traffic "$REDIS_PID" rx_frames)
  b0=$(traffic "$REDIS_PID" bound)
  bench_both "$port" 20000
  rx1=$(traffic "$REDIS_PID" rx_frames)
  b1=$(traffic "$REDIS_PID" bound)
  bypassed redis $((rx1 - rx0)) $((b1 - b0)) 60000
  say "redis: the switch delivered $((rx1 - rx0)) frames to it and gave it $((b1 - b0)) secure bindings"

  # Data: a blob through the bypass, read back on both paths.
  head -c 200000 /dev/urandom >"$WORK/blob"
  [ "$(timeout 20 "${EMU[@]}" redis-cli -h 127.0.0.1 -p "$port" -x SET known:blob <"$WORK/blob")" = OK ] ||
    die "SET through the bypass failed"
  { cat "$WORK/blob"; echo; } >"$WORK/blob.nl"
  rcli "$port" GET known:blob | cmp -s - "$WORK/blob.nl" || die "GET on the kernel path returned different bytes"
  timeout 20 "${EMU[@]}" redis-cli -h 127.0.0.1 -p "$port" GET known:blob | cmp -s - "$WORK/blob.nl" ||
    die "GET through the bypass returned different bytes"
  say "redis: a 200000-byte value read back byte-exact on both paths"

  # Acceptance 2: a port another container holds is refused.
  out=$(timeout 20 "${EMU[@]}" python3 -c "$BIND_PY" "$port")
  [ "$out" = EADDRINUSE ] || die "binding redis's port from another container gave: $out (expected EADDRINUSE)"
  say "another container's bind to port $port: EADDRINUSE"

  # Revocation stops an established bypass connection at once.
  gid=$(adm filters | json "[g['id'] for g in d['grants'] if $REDIS_PID in g['holders'] and g['filter']['ports']['lo'] == $port][0]")
  mkfifo "$WORK/hold.in"
  timeout 60 "${EMU[@]}" python3 -c "$HOLD_PY" "$port" <"$WORK/hold.in" >"$WORK/hold.out" 2>&1 &
  hold=$!
  exec 7>"$WORK/hold.in"
  poll 20 grep -qs ready "$WORK/hold.out" || { cat "$WORK/hold.out" >&2; die "the holding client did not connect"; }
  d0=$(all_drops)
  timeout 10 "$ARRAKIS" revoke "$gid" >/dev/null || die "arrakis revoke $gid failed"
  echo go >&7
  exec 7>&-
  # The client's PING (and its retransmissions) are dropped while it waits 2 s for an answer;
  # the drops are charged to its port, so read them before it exits.
  poll 2 drops_above "$d0" || die "arrakis stats shows no new drop after the revocation"
  d1=$(all_drops)
  wait "$hold" || true
  [ "$(cat "$WORK/hold.out")" = "$(printf 'ready\nsilent')" ] || {
    cat "$WORK/hold.out" >&2
    die "after arrakis revoke $gid the bypass connection still got an answer"
  }
  say "revoking grant $gid silenced the established bypass connection; the switch's drops went from $d0 to $d1"
  rcli "$port" PING | grep -q PONG || die "the kernel path to redis stopped with the revocation"

  # kill -9 frees the container's ports for the next one.
  kill -KILL "$REDIS_PID"
  wait "$BG_PID" 2>/dev/null || true
  out=
  for _ in $(seq 1 50); do
    out=$(timeout 20 "${EMU[@]}" python3 -c "$BIND_PY" "$port")
    [ "$out" = bound ] && break
    sleep 0.1
  done
  [ "$out" = bound ] || die "after kill -9 of redis, its port $port stayed refused: $out"
  say "kill -9 of redis freed port $port for the next container"
}

# counter_above PORT N: redis-benchmark's INCR counter is above N.
counter_above() {
  local v
  v=$(rcli "$1" GET counter:__rand_int__) || return 1
  [ "${v:-0}" -gt "$2" ]
}

# Acceptance 3: the daemon dies while redis-benchmark runs through the switch.
test_daemon_restart() {
  local port dir before after dpid bench rc=0 n=200000 v
  port=$(free_port)
  dir=$WORK/redis2
  start_redis_emu "$port" "$dir" "$WORK/redis2.log"
  before=$(grants_of "$REDIS_PID")
  timeout 180 "${EMU[@]}" redis-benchmark -h 127.0.0.1 -p "$port" --csv -t incr -n "$n" -c 50 \
    >"$WORK/rb-restart.out" 2>"$WORK/rb-restart.err" &
  bench=$!
  poll 30 counter_above "$port" 1000 || die "redis-benchmark made no progress"
  dpid=$(daemon_pid)
  alive "$bench" || die "redis-benchmark ended before the daemon could be killed; raise n"
  kill -KILL "$dpid"
  say "killed the daemon (pid $dpid) during the benchmark"
  sleep 1
  alive "$bench" || say "(the benchmark finished within a second of the kill)"
  start_bg "$WORK/daemon2.log" "$ARRAKIS" daemon
  poll 10 daemon_pid >/dev/null || { cat "$WORK/daemon2.log" >&2; die "the daemon did not restart"; }
  wait "$bench" || rc=$?
  [ "$rc" -eq 0 ] && [ ! -s "$WORK/rb-restart.err" ] || {
    cat "$WORK/rb-restart.err" >&2
    die "redis-benchmark failed across the daemon's death (exit $rc)"
  }
  v=$(rcli "$port" GET counter:__rand_int__)
  [ "$v" = "$n" ] || die "INCR counter is $v after the daemon's death, expected $n: requests were lost"
  after=$(grants_of "$REDIS_PID")
  [ "$before" = "$after" ] || {
    printf 'before:\n%s\nafter:\n%s\n' "$before" "$after" >&2
    die "the restarted daemon does not list redis's grants as before"
  }
  say "daemon killed mid-benchmark: all $n INCRs applied; the restarted daemon (pid $(daemon_pid)) lists the same $(printf '%s\n' "$after" | wc -l) grant(s)"
  stop_pid "$BG_PID" 10 || true
}

test_memcached
test_redis
test_daemon_restart
echo "PASS: memcached and redis on the emulator backend, kernel and bypass clients, control plane ($((SECONDS - START)) s)"
