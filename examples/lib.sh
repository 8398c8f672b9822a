# shellcheck shell=bash
# Helpers shared by the end-to-end tests (compat-tests/e2e/), the demo and the benchmarks
# (examples/). Source this file from a script that runs `set -euo pipefail`; it defines
# functions and variables and installs an EXIT trap that stops every server the script
# started and removes its scratch directory. Network use is 127.0.0.1 only.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
ARRAKIS=$TARGET_DIR/release/arrakis
SHIM=$TARGET_DIR/release/libarrakis.so

die() {
  echo "FAIL: $*" >&2
  exit 1
}
say() { echo "== $*" >&2; }

# --- packages ---------------------------------------------------------------------------

# ensure_packages CMD:PACKAGE...: install the Debian packages whose commands are missing.
# `apt-get update` runs once, and only when something is missing.
ensure_packages() {
  local pair missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "need root or sudo to install: ${missing[*]}"
    sudo=(sudo)
  fi
  say "installing ${missing[*]}"
  timeout 300 "${sudo[@]}" apt-get update -q >&2 || die "apt-get update failed"
  timeout 600 "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || die "${pair%%:*} still missing after installing ${pair#*:}"
  done
}

# build_arrakis: `cargo build --release` at the workspace root (a no-op when up to date),
# then check that the launcher and the shim are there.
build_arrakis() {
  say "cargo build --release"
  (cd "$ROOT" && timeout 900 cargo build --release) || die "cargo build --release failed"
  [ -x "$ARRAKIS" ] || die "$ARRAKIS missing after the build"
  [ -f "$SHIM" ] || die "$SHIM missing after the build"
}

# alive PID: PID exists and is not a zombie (an exited child not yet waited for).
alive() {
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}
dead() { ! alive "$1"; }

# poll SECONDS CMD...: run CMD every 0.1 s until it succeeds; returns 1 if it has not within
# SECONDS.
poll() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# --- scratch directory and cleanup ------------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/arrakis-e2e.XXXXXX")
SERVER_PIDS=()

all_dead() {
  local pid
  for pid in "$@"; do
    dead "$pid" || return 1
  done
}

cleanup() {
  local pid
  for pid in "${SERVER_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  poll 5 all_dead "${SERVER_PIDS[@]}" || true
  for pid in "${SERVER_PIDS[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ -n "${KEEP_WORK:-}" ]; then
    echo "scratch directory kept: $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- processes and ports ----------------------------------------------------------------

# free_port: print a TCP/UDP port that no socket on this host uses, listening or not. It is
# drawn below the kernel's ephemeral range (ip_local_port_range), so a client connection made
# later in the run cannot take it by chance; a connected socket that already holds the port
# (ESTAB, FIN-WAIT, ...) also rules it out, as it would make a server's bind fail on Linux.
free_port() {
  local lo=32768 hi port _
  read -r lo _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
  hi=$((lo > 20000 ? lo : 32768))
  for _ in $(seq 1 50); do
    port=$((10000 + (RANDOM * 32768 + RANDOM) % (hi - 10000)))
    if ! port_in_use "$port"; then
      echo "$port"
      return 0
    fi
  done
  die "no free port found"
}

# port_in_use PORT: some kernel socket (TCP or UDP, IPv4 or IPv6, any state but TIME-WAIT) has
# PORT as its local port, or something accepts connections on it.
port_in_use() {
  local hex
  hex=$(printf '%04X' "$1")
  awk -v p="$hex" 'FNR > 1 { split($2, a, ":"); if (a[length(a)] == p && $4 != "06") f = 1 }
    END { exit !f }' /proc/net/tcp /proc/net/tcp6 /proc/net/udp /proc/net/udp6 2>/dev/null ||
    tcp_open "$1"
}

# tcp_open PORT: something accepts connections on 127.0.0.1:PORT.
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_bg LOG CMD...: start CMD in the background with its output in LOG; its pid goes to
# BG_PID and onto the cleanup list. (Not in $(...): the server must be this shell's child.)
start_bg() {
  local log=$1
  shift
  "$@" >"$log" 2>&1 </dev/null &
  BG_PID=$!
  SERVER_PIDS+=("$BG_PID")
}

# wait_tcp PORT PID [SECONDS]: wait until 127.0.0.1:PORT accepts; fail if PID exits first.
up_or_dead() { tcp_open "$1" || dead "$2"; }
wait_tcp() {
  poll "${3:-20}" up_or_dead "$1" "$2" && tcp_open "$1"
}

# forget_pids PID...: the PIDs are dead (waited for); drop them from the cleanup list, whose
# kill at exit could otherwise hit a process that reused the number.
forget_pids() {
  local keep=() p q drop
  for p in "${SERVER_PIDS[@]}"; do
    drop=
    for q in "$@"; do [ "$p" = "$q" ] && drop=1; done
    [ -n "$drop" ] || keep+=("$p")
  done
  SERVER_PIDS=("${keep[@]}")
}

# stop_pid PID [SECONDS]: SIGTERM, wait up to SECONDS, then SIGKILL. Returns PID's status.
stop_pid() {
  local pid=$1 rc=0
  kill -TERM "$pid" 2>/dev/null || true
  poll "${2:-10}" dead "$pid" || kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" || rc=$?
  return "$rc"
}

# wait_exit PID [SECONDS]: wait for PID to exit on its own; returns its status, 124 on timeout.
wait_exit() {
  local pid=$1 rc=0
  if ! poll "${2:-10}" dead "$pid"; then
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return 124
  fi
  wait "$pid" || rc=$?
  return "$rc"
}

# check_shim_mapped PID WHAT: fail unless the shim is mapped into PID.
check_shim_mapped() {
  local pid=$1 what=$2
  grep -q 'libarrakis\.so' "/proc/$pid/maps" 2>/dev/null ||
    die "$what (pid $pid) does not have libarrakis.so mapped: it is not running under the shim"
  say "$what (pid $pid) runs with $(grep -m1 -o '/[^ ]*libarrakis\.so' "/proc/$pid/maps") mapped"
}

# check_shim_absent PID WHAT: fail if the shim is mapped into PID (the native baseline).
check_shim_absent() {
  local pid=$1 what=$2
  if grep -q 'libarrakis\.so' "/proc/$pid/maps" 2>/dev/null; then
    die "$what (pid $pid) has libarrakis.so mapped but should run natively"
  fi
}

# --- memcached --------------------------------------------------------------------------

# mc_stat PORT NAME: one value of memcached's `stats`, over the text protocol.
mc_stat() {
  local port=$1 name=$2
  (
    exec 3<>"/dev/tcp/127.0.0.1/$port"
    printf 'stats\r\nquit\r\n' >&3
    timeout 5 cat <&3
  ) | tr -d '\r' | awk -v n="$name" '$1 == "STAT" && $2 == n { print $3; found = 1 } END { exit !found }' ||
    die "memcached on port $port: no stat $name"
}

# --- redis ------------------------------------------------------------------------------

rcli() {
  local port=$1
  shift
  timeout 10 redis-cli -h 127.0.0.1 -p "$port" "$@"
}

# redis_info PORT FIELD: one field of INFO (e.g. process_id, rdb_saves).
redis_info() {
  rcli "$1" INFO | tr -d '\r' | awk -F: -v f="$2" '$1 == f { print $2; found = 1 } END { exit !found }'
}

# start_redis MODE PORT DIR LOG [CPU]: redis-server on 127.0.0.1:PORT with its data in DIR,
# natively (MODE=native) or under `arrakis run` (MODE=shim), pinned to CPU if given. No config
# file: no /etc/redis settings, no automatic snapshots, no AOF. Sets BG_PID (the launched
# process) and REDIS_PID (the server, read from INFO) and checks that the shim is (or is not)
# mapped.
start_redis() {
  local mode=$1 port=$2 dir=$3 log=$4 cpu=${5:-} launch=()
  [ -n "$cpu" ] && launch=(taskset -c "$cpu")
  [ "$mode" = shim ] && launch+=("$ARRAKIS" run --)
  mkdir -p "$dir"
  start_bg "$log" "${launch[@]}" redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" \
    --dbfilename dump.rdb --save '' --appendonly no --daemonize no --logfile '' \
    --protected-mode yes --loglevel notice
  wait_tcp "$port" "$BG_PID" 20 || {
    tail -20 "$log" >&2
    die "redis-server ($mode) did not come up on port $port"
  }
  REDIS_PID=$(redis_info "$port" process_id) || die "no process_id from redis ($mode)"
  [ "$REDIS_PID" = "$BG_PID" ] || SERVER_PIDS+=("$REDIS_PID")
  if [ "$mode" = shim ]; then
    check_shim_mapped "$REDIS_PID" "redis-server"
  else
    check_shim_absent "$REDIS_PID" "redis-server"
  fi
}

# redis_bench PORT ARGS...: redis-benchmark --csv against 127.0.0.1:PORT, bounded in time,
# pinned to CPU $CLIENT_CPU if that is set. Prints the CSV; fails on a non-zero exit, a
# timeout or anything on stderr.
redis_bench() {
  local port=$1 err rc=0 out pin=()
  shift
  [ -n "${CLIENT_CPU:-}" ] && pin=(taskset -c "$CLIENT_CPU")
  err=$(mktemp "$WORK/bench-err.XXXXXX")
  out=$(timeout 120 "${pin[@]}" redis-benchmark -h 127.0.0.1 -p "$port" --csv "$@" 2>"$err") || rc=$?
  if [ "$rc" -ne 0 ] || [ -s "$err" ]; then
    cat "$err" >&2
    die "redis-benchmark $* on port $port failed (exit $rc)"
  fi
  rm -f "$err"
  printf '%s\n' "$out"
}

# csv_field CSV TEST COLUMN: COLUMN (rps, avg, min, p50, p95, p99, max) of TEST in the
# output of redis-benchmark --csv. Fails if the test is missing.
csv_field() {
  local col
  case $3 in
    rps) col=2 ;; avg) col=3 ;; min) col=4 ;; p50) col=5 ;; p95) col=6 ;; p99) col=7 ;; max) col=8 ;;
    *) die "csv_field: unknown column $3" ;;
  esac
  printf '%s\n' "$1" | tr -d '"' |
    awk -F, -v t="$2" -v c="$col" '$1 == t { print $c; found = 1 } END { exit !found }' ||
    die "redis-benchmark output has no $2 line"
}

# median: the median of the numbers on stdin, one per line.
median() {
  sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) exit 1; if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# mean: the arithmetic mean of the numbers on stdin, one per line.
mean() {
  awk '{ s += $1 } END { if (NR == 0) exit 1; printf "%.4f\n", s / NR }'
}

# The benchmarks' command line: `--no-build` (sets NO_BUILD=1, as ARRAKIS_SKIP_BUILD does) and
# `--help` (prints the script's header comment). Call as `bench_args "$@"`.
bench_args() {
  NO_BUILD=${ARRAKIS_SKIP_BUILD:-}
  local arg
  for arg in "$@"; do
    case $arg in
      --no-build) NO_BUILD=1 ;;
      -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
        exit 0
        ;;
      *) die "unknown argument: $arg (usage: $0 [--no-build])" ;;
    esac
  done
}

# --- CPU accounting for the benchmarks -----------------------------------------------------

TCK=$(getconf CLK_TCK)

# cpu_of PID...: CPU seconds (user + system, all threads) the processes used so far.
cpu_of() {
  local pid t=0 v
  for pid in "$@"; do
    v=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{ print $12 + $13 }') || v=0
    t=$((t + ${v:-0}))
  done
  awk -v t="$t" -v h="$TCK" 'BEGIN { printf "%.4f\n", t / h }'
}
# plane_pids PATH: the arrakis daemon and switch serving $ARRAKIS_RUN_DIR (the emulator
# path's control and data plane outside the two ends): the `arrakis` processes whose command
# line names that directory (`--socket DIR/ctl.sock`, `DIR/switch.sock`), zombies left out;
# none on the kernel path. Another run's plane — killed and not yet reaped, or still
# exiting — is never counted: one exiting between the two readings once made a kernel run's
# CPU negative, and under bench-builds.sh (which kills each build's plane after its run) it
# left the next emulator run without its plane's CPU. Read once per run, so both readings
# sum the same processes.
plane_pids() {
  [ "$1" = emulator ] || return 0
  local pid dir=${ARRAKIS_RUN_DIR:-/run/arrakis}
  for pid in $(pgrep -x arrakis); do
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir/" || continue
    [ "$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" = Z ] && continue
    echo "$pid"
  done
}
# plane_cpu PIDS...: cpu_of the plane processes; stops the benchmark if one of them has gone
# (its CPU would be lost from the second reading).
plane_cpu() {
  local pid
  for pid in "$@"; do
    [ -e "/proc/$pid/stat" ] || die "arrakis process $pid (daemon or switch) exited during a run"
  done
  cpu_of "$@"
}

# client PATH OUT CMD...: runs CMD (under the shim on the emulator path) with stdout to OUT;
# prints the CPU seconds it used (getrusage of the waited-for child).
client() {
  local path=$1 out=$2
  shift 2
  local pre=()
  [ "$path" = emulator ] && pre=("$ARRAKIS" run --backend emulator --)
  timeout -k 5 300 python3 -c '
import resource, subprocess, sys
with open(sys.argv[1], "wb") as out:
    rc = subprocess.run(sys.argv[2:], stdout=out).returncode
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print("%.4f" % (r.ru_utime + r.ru_stime))
sys.exit(rc)' "$out" "${pre[@]}" "$@"
}

# measured PATH PID OUT CMD...: runs CMD as `client` does (stdout to OUT); prints the CPU
# seconds the client, the server PID and (emulator path) the plane used meanwhile.
measured() {
  local path=$1 pid=$2 out=$3 c0 c1 p0 p1 pp cpu
  shift 3
  c0=$(cpu_of "$pid")
  pp=$(plane_pids "$path")
  # The emulator path's server started its daemon and switch: no plane means a wrong count.
  [ "$path" != emulator ] || [ -n "$pp" ] || die "no arrakis daemon or switch for ${ARRAKIS_RUN_DIR:-/run/arrakis}"
  # A reading that fails stops the run (callers run this in $(...) under `if`, where set -e
  # does not apply: an empty reading would count as 0 CPU).
  p0=$(plane_cpu $pp) || return
  cpu=$(client "$path" "$out" "$@") || return
  c1=$(cpu_of "$pid")
  p1=$(plane_cpu $pp) || return
  awk -v a="$cpu" -v b="$c0" -v c="$c1" -v d="$p0" -v e="$p1" 'BEGIN { printf "%.6f\n", a + c - b + e - d }'
}

# per_request SECONDS N: microseconds of CPU a request.
per_request() { awk -v s="$1" -v n="$2" 'BEGIN { printf "%.2f\n", s * 1e6 / n }'; }

# launch PATH LOG CMD...: starts CMD in the background (BG_PID), under `$ARRAKIS run --backend
# emulator` on the emulator path.
launch() {
  local path=$1 log=$2
  shift 2
  if [ "$path" = emulator ]; then
    start_bg "$log" "$ARRAKIS" run --backend emulator -- "$@"
  else
    start_bg "$log" "$@"
  fi
}

# check_path PATH PID WHAT: PID (a launched server: arrakis run execs it) is under the shim on
# the emulator path and not on the kernel path.
check_path() {
  local path=$1 pid=$2 what=$3
  if [ "$path" = emulator ]; then check_shim_mapped "$pid" "$what" >/dev/null 2>&1 || die "$what is not under the shim"
  else check_shim_absent "$pid" "$what"; fi
}

# launch_memcached PATH LOG: memcached -t 4 on a free port of 127.0.0.1 (as the benchmarks run
# it), launched for PATH and checked; sets MC_PORT and MC_PID.
launch_memcached() {
  local path=$1 log=$2 user=()
  MC_PORT=$(free_port)
  [ "$(id -u)" -eq 0 ] && user=(-u root)
  launch "$path" "$log" memcached -l 127.0.0.1 -p "$MC_PORT" -U 0 -t 4 -m 64 -c 1024 "${user[@]}"
  MC_PID=$BG_PID
  wait_tcp "$MC_PORT" "$MC_PID" 20 || { tail "$log" >&2; die "memcached ($path) did not start"; }
  check_path "$path" "$MC_PID" memcached
}

# memcslap_cpu PATH TEST N CONC WHAT: a fresh memcached (launch_memcached) for PATH and
# `memcslap --test=TEST --concurrency=CONC --execute-number=N` against it (TEST set or get;
# under the shim on the emulator path), checked for errors; prints the CPU µs a request
# (client + server + plane, `measured`; for get, the gets plus the N sets a get run makes
# first). WHAT names the run in errors. The server is stopped before any error: callers run
# this in a subshell, whose SERVER_PIDS the cleanup never sees.
memcslap_cpu() {
  local path=$1 t=$2 n=$3 conc=$4 what=$5 cpu keys='' err=''
  case $t in set | get) ;; *) die "memcslap_cpu: test $t is not set or get" ;; esac
  launch_memcached "$path" "$WORK/mc.log"
  if ! cpu=$(measured "$path" "$MC_PID" "$WORK/slap.out" memcslap --servers="127.0.0.1:$MC_PORT" \
    --test="$t" --concurrency="$conc" --execute-number="$n" --tcp-nodelay); then
    err="memcslap ($what) failed"
  elif grep -Eqi 'error|fail' "$WORK/slap.out"; then
    err="memcslap ($what) reported errors"
  else
    keys=$(awk -v t="$t" '$1 == "Time" && $3 == t && $6 == "by" { print $4 }' "$WORK/slap.out")
    [ -n "$keys" ] || err="memcslap ($what): no \"Time to $t ... by\" line"
  fi
  stop_pid "$MC_PID" 10 || true
  [ -z "$err" ] || { cat "$WORK/slap.out" >&2; die "$err"; }
  if [ "$t" = get ]; then per_request "$cpu" $((keys + n)); else per_request "$cpu" "$keys"; fi
}
