#!/usr/bin/env bash
# Interposition cost of the shim on the kernel path, two ways:
#  1. instructions (valgrind --tool=callgrind) natively and with libarrakis.so preloaded:
#     per call of write(2) of 1 byte to /dev/null, read(2) of 1 byte from /dev/zero and
#     epoll_wait on a ready level-triggered eventfd (examples/bench/syscalls.c), and per GET
#     served by redis-server at 1 and 50 connections. Start-up is subtracted by running each
#     at two counts: (I2 - I1) / (N2 - N1).
#  2. redis GET latency at one connection: one redis-server natively and one under
#     `arrakis run`, both pinned to one CPU and idle except while measured; the clients
#     (always native) alternate between them so that the neighbours' noise on this shared
#     machine falls on both alike: redis-benchmark in ABBA rounds, and getlat
#     (examples/bench/getlat.c), which alternates batches of 250 GETs and times each one.
# Progress goes to stderr; stdout gets a Markdown summary for docs/BENCHMARKS.md.
#
# usage: examples/bench-interpose.sh
#   ROUNDS=16 REQUESTS=10000   redis-benchmark rounds per mode, GETs per run
#   GETLAT_ROUNDS=200          getlat rounds (250 GETs per server each)
#   N1=100000 N2=200000        callgrind: iteration counts of the syscall loop
#   RN1=5000 RN2=10000         callgrind: GETs served by redis-server
#   ARRAKIS_SKIP_BUILD=1       use the existing target/release build
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS=${ROUNDS:-16}
REQUESTS=${REQUESTS:-10000}
GETLAT_ROUNDS=${GETLAT_ROUNDS:-200}
RN1=${RN1:-5000}
RN2=${RN2:-10000}
N1=${N1:-100000}
N2=${N2:-200000}

ensure_packages cc:gcc valgrind:valgrind redis-server:redis-server \
  redis-cli:redis-tools redis-benchmark:redis-tools
if [ -n "${ARRAKIS_SKIP_BUILD:-}" ]; then
  [ -x "$ARRAKIS" ] && [ -f "$SHIM" ] || die "ARRAKIS_SKIP_BUILD is set but $ARRAKIS or $SHIM is missing"
else
  build_arrakis
fi
START=$SECONDS

# --- 1. instructions per call -----------------------------------------------------------

PROG=$WORK/syscalls
cc -O2 -Wall -Wextra -o "$PROG" "$ROOT/examples/bench/syscalls.c" || die "cannot compile examples/bench/syscalls.c"

# callgrind_totals FILE: print "TOTAL SHIM" for a callgrind output file: all instructions the
# process executed, and those in code of libarrakis.so (self cost). Callgrind's format:
# "ob=(id) name" switches the object ("cob=" names a call target's, and may be where an id's
# name is defined), a cost line is "position Ir", and the cost line after "calls=" is the
# call's inclusive cost, counted already where it was spent.
callgrind_totals() {
  local total
  total=$(awk '$1 == "summary:" { print $2 }' "$1")
  [ -n "$total" ] || die "no instruction total in $1"
  printf '%s ' "$total"
  awk '
    /^c?ob=/ {
      s = substr($0, index($0, "=") + 1); n = s
      if (match(s, /^\([0-9]+\)/)) {
        id = substr(s, 1, RLENGTH); rest = substr(s, RLENGTH + 2)
        if (rest != "") name[id] = rest
        n = name[id]
      }
      if ($0 ~ /^ob=/) ob = n
      next
    }
    /^calls=/ { skip = 1; next }
    /^[0-9+*-]/ { if (skip) { skip = 0; next } if (ob ~ /libarrakis\.so$/) sum += $2 }
    END { print sum + 0 }' "$1"
}

# preload MODE: LD_PRELOAD for a callgrind run: the shim, or nothing (valgrind adds its own
# preloads to either).
preload() { if [ "$1" = shim ]; then echo "LD_PRELOAD=$SHIM"; else echo "LD_PRELOAD="; fi; }

# callgrind_prog MODE CALL N: the syscall loop under callgrind; prints "TOTAL SHIM".
callgrind_prog() {
  local out=$WORK/callgrind.$1.$2.$3
  timeout 120 env "$(preload "$1")" valgrind -q --tool=callgrind --callgrind-out-file="$out" \
    "$PROG" "$2" "$3" >"$out.log" 2>&1 || {
    cat "$out.log" >&2
    die "$PROG $2 $3 failed under callgrind ($1)"
  }
  callgrind_totals "$out"
}

# callgrind_redis MODE CONNS N: redis-server under callgrind serving N GETs from
# redis-benchmark at CONNS connections, then SHUTDOWN NOSAVE; prints "TOTAL SHIM". --hz 1:
# the timer work (serverCron) follows wall time, which callgrind stretches unevenly.
callgrind_redis() {
  local out=$WORK/callgrind.redis.$1.$2.$3 port rc=0
  port=$(free_port)
  mkdir -p "$WORK/cg-redis"
  start_bg "$out.log" timeout 300 env "$(preload "$1")" valgrind -q --tool=callgrind \
    --callgrind-out-file="$out" redis-server --port "$port" --bind 127.0.0.1 \
    --dir "$WORK/cg-redis" --save '' --appendonly no --logfile '' --hz 1
  wait_tcp "$port" "$BG_PID" 60 || {
    cat "$out.log" >&2
    die "redis-server under callgrind ($1) did not come up"
  }
  rcli "$port" SET key:__rand_int__ xxx >/dev/null
  redis_bench "$port" -t get -c "$2" -n "$3" >/dev/null
  rcli "$port" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
  wait_exit "$BG_PID" 60 || rc=$?
  [ "$rc" -eq 0 ] || {
    tail -20 "$out.log" >&2
    die "redis-server under callgrind ($1) exited with status $rc"
  }
  callgrind_totals "$out"
}

# measure KEY RUNNER MODE ARGS...: run "RUNNER MODE ARGS... N" at two counts and set
# PER[KEY] and IN_SHIM[KEY] to the instructions per unit, start-up subtracted.
declare -A PER IN_SHIM
measure() {
  local key=$1 runner=$2 mode=$3 n1=$4 n2=$5 t1 s1 t2 s2 r
  shift 5
  r=$("$runner" "$mode" "$@" "$n1")
  read -r t1 s1 <<<"$r"
  r=$("$runner" "$mode" "$@" "$n2")
  read -r t2 s2 <<<"$r"
  PER[$key]=$(awk -v a="$t1" -v b="$t2" -v n1="$n1" -v n2="$n2" 'BEGIN { printf "%.1f", (b - a) / (n2 - n1) }')
  IN_SHIM[$key]=$(awk -v a="$s1" -v b="$s2" -v n1="$n1" -v n2="$n2" 'BEGIN { printf "%.1f", (b - a) / (n2 - n1) }')
  if [ "$mode" = shim ]; then
    # Proof the calls went through the shim: at least one instruction per unit in it.
    awk -v x="${IN_SHIM[$key]}" 'BEGIN { exit !(x >= 1) }' ||
      die "$key: callgrind saw no libarrakis.so code per unit: valgrind did not load the shim ($SHIM)"
  else
    [ "${IN_SHIM[$key]}" = 0.0 ] || die "$key: libarrakis.so code ran in a native run"
  fi
  say "$key: ${PER[$key]} instructions per unit (${IN_SHIM[$key]} in libarrakis.so)"
}

for call in write read epoll_wait; do
  for mode in native shim; do
    measure "$call.$mode" callgrind_prog "$mode" "$N1" "$N2" "$call"
  done
done
for conns in 1 50; do
  for mode in native shim; do
    measure "get$conns.$mode" callgrind_redis "$mode" "$RN1" "$RN2" "$conns"
  done
done

# --- 2. redis GET latency ---------------------------------------------------------------

# Where the client runs decides the latency on a VM: a client on the server's CPU wakes the
# server with a local context switch (~17 us a GET here); a client on the other CPU has to
# wake a halted vCPU (~70 us). Left to the scheduler, each run lands on one or the other, which
# swamps a few per cent. So both servers are pinned to one CPU and every client is pinned too.
NCPU=$(nproc)
SCPU=$((NCPU - 1)) # the servers' CPU
NPORT=$(free_port)
start_redis native "$NPORT" "$WORK/redis-native" "$WORK/redis-native.log" "$SCPU"
SPORT=$(free_port)
[ "$SPORT" != "$NPORT" ] || SPORT=$(free_port)
start_redis shim "$SPORT" "$WORK/redis-shim" "$WORK/redis-shim.log" "$SCPU"
CLIENT_CPU=$SCPU
for port in "$NPORT" "$SPORT"; do
  rcli "$port" SET key:__rand_int__ xxx >/dev/null
  redis_bench "$port" -t get -c 1 -n 2000 >/dev/null # warm-up, discarded
done

# 2a. redis-benchmark -t get -c 1 on the servers' CPU, one run per mode per round, ABBA.
: >"$WORK/redis.native"
: >"$WORK/redis.shim"
bench_get() { # MODE PORT: one run, appends "p50_ms avg_ms rps" to $WORK/redis.MODE
  local csv p50 avg rps
  csv=$(redis_bench "$2" -t get -c 1 -n "$REQUESTS")
  p50=$(csv_field "$csv" GET p50)
  avg=$(csv_field "$csv" GET avg)
  rps=$(csv_field "$csv" GET rps)
  echo "$p50 $avg $rps" >>"$WORK/redis.$1"
}
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then
    bench_get native "$NPORT"
    bench_get shim "$SPORT"
  else
    bench_get shim "$SPORT"
    bench_get native "$NPORT"
  fi
  say "redis-benchmark round $round/$ROUNDS: p50 native $(tail -1 "$WORK/redis.native" | cut -d' ' -f1) ms, shim $(tail -1 "$WORK/redis.shim" | cut -d' ' -f1) ms"
done

declare -A P50 AVG RPS
for mode in native shim; do
  P50[$mode]=$(cut -d' ' -f1 "$WORK/redis.$mode" | median)
  AVG[$mode]=$(cut -d' ' -f2 "$WORK/redis.$mode" | mean)
  RPS[$mode]=$(cut -d' ' -f3 "$WORK/redis.$mode" | median)
done
# The two runs of one round ran back to back: their ratio cancels most of the drift.
PAIRED=$(paste -d' ' "$WORK/redis.native" "$WORK/redis.shim" | awk '{ print $5 / $2 }' | median)

# 2b. getlat: one connection to each server, batches of 250 GETs alternating between them,
# every GET timed; from the servers' CPU and, given two CPUs, from another one.
GETLAT=$WORK/getlat
cc -O2 -Wall -Wextra -o "$GETLAT" "$ROOT/examples/bench/getlat.c" || die "cannot compile examples/bench/getlat.c"
declare -A GL # GL[place.mode] = "p50_us mean_us p99_us"
places=(same)
[ "$NCPU" -gt 1 ] && places+=(other)
for place in "${places[@]}"; do
  cpu=$SCPU
  [ "$place" = other ] && cpu=0
  out=$(timeout 120 taskset -c "$cpu" "$GETLAT" "$NPORT" "$SPORT" "$GETLAT_ROUNDS" 250) ||
    die "getlat (client on the $place CPU) failed"
  GL[$place.native]=$(awk -v p="$NPORT" '$1 == p { print $2, $3, $4 }' <<<"$out")
  GL[$place.shim]=$(awk -v p="$SPORT" '$1 == p { print $2, $3, $4 }' <<<"$out")
  say "getlat, client on the $place CPU: p50 mean p99 (us) native ${GL[$place.native]}, shim ${GL[$place.shim]}"
done
alive "$REDIS_PID" || die "redis-server under the shim died during the benchmark"

# --- report -----------------------------------------------------------------------------

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b / a }'; }
us() { awk -v a="$1" 'BEGIN { printf "%.1f", a * 1000 }'; }
field() { cut -d' ' -f"$2" <<<"$1"; }
CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
cat <<EOF
Machine: $NCPU CPUs, ${CPU:-unknown CPU}, Linux $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)
Shim: $SHIM ($(stat -c %s "$SHIM") bytes), built from $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo "an unknown tree")

### Instructions per call (callgrind, (I($N2) - I($N1)) / $((N2 - N1)))

| call | native | shim | extra | ratio | of which in libarrakis.so |
|---|---:|---:|---:|---:|---:|
EOF
for call in write read epoll_wait; do
  n=${PER[$call.native]} s=${PER[$call.shim]}
  printf '| %s | %s | %s | %s | %s | %s |\n' "\`$call\`" "$n" "$s" \
    "$(awk -v a="$n" -v b="$s" 'BEGIN { printf "%+.1f", b - a }')" "$(ratio "$n" "$s")" "${IN_SHIM[$call.shim]}"
done
cat <<EOF

redis-server, user-space instructions per GET served (redis-benchmark -t get, (I($RN2) - I($RN1)) / $((RN2 - RN1))).
The totals move by a few per cent from run to run (how many requests one event-loop pass
serves depends on timing); the code in libarrakis.so is the shim's exact share:

| connections | native | shim | in libarrakis.so | libarrakis.so / native |
|---|---:|---:|---:|---:|
EOF
for conns in 1 50; do
  n=${PER[get$conns.native]} s=${PER[get$conns.shim]} i=${IN_SHIM[get$conns.shim]}
  printf '| %s | %s | %s | %s | %s |\n' "$conns" "$n" "$s" "$i" \
    "$(awk -v a="$n" -v b="$i" 'BEGIN { printf "%.1f%%", 100 * b / a }')"
done
cat <<EOF

### redis GET, 1 connection, both servers pinned to CPU $SCPU

getlat, $GETLAT_ROUNDS rounds of 250 GETs per server, alternating (µs):

| client | native p50 | shim p50 | p50 ratio | native mean | shim mean | mean ratio | native p99 | shim p99 |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
EOF
for place in "${places[@]}"; do
  n=${GL[$place.native]} s=${GL[$place.shim]}
  echo "| $place CPU | $(field "$n" 1) | $(field "$s" 1) | $(ratio "$(field "$n" 1)" "$(field "$s" 1)") |" \
    "$(field "$n" 2) | $(field "$s" 2) | $(ratio "$(field "$n" 2)" "$(field "$s" 2)") | $(field "$n" 3) | $(field "$s" 3) |"
done
cat <<EOF

redis-benchmark -t get -c 1 -n $REQUESTS, client on CPU $SCPU, $ROUNDS rounds per mode, ABBA order:

| | native | shim | shim / native |
|---|---:|---:|---:|
| p50 latency (µs, median of rounds) | $(us "${P50[native]}") | $(us "${P50[shim]}") | $(ratio "${P50[native]}" "${P50[shim]}") |
| mean latency (µs, mean of rounds) | $(us "${AVG[native]}") | $(us "${AVG[shim]}") | $(ratio "${AVG[native]}" "${AVG[shim]}") |
| requests/s (median of rounds) | ${RPS[native]} | ${RPS[shim]} | $(ratio "${RPS[native]}" "${RPS[shim]}") |
| mean latency, median of the per-round ratios | | | $(awk -v r="$PAIRED" 'BEGIN { printf "%.3f", r }') |

- per-round p50 (ms), native: $(cut -d' ' -f1 "$WORK/redis.native" | tr '\n' ' ')
- per-round p50 (ms), shim: $(cut -d' ' -f1 "$WORK/redis.shim" | tr '\n' ' ')
EOF
say "done in $((SECONDS - START)) s"
