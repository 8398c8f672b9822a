#!/usr/bin/env bash
# Kernel path versus the emulator path (issue 4, acceptance 5), in one run, ratios printed.
# Both ends of every test are separate processes: on the kernel path they run natively over
# kernel loopback sockets; on the emulator path both run under `arrakis run --backend
# emulator` (the library OS's TCP/UDP, frames through the software switch in shared memory).
#   redis    redis-server; redis-benchmark -t set,get at 1 and 50 connections (rps, p50)
#   memcached  memcached -t 4; memcslap --test=set/get at 1 and 50 concurrency (keys/s);
#              examples/bench/mclat.c at 1 connection: set and get latency (p50), as memcslap
#              reports none
#   udp      examples/bench/udpecho.c: 64-byte datagram round trips (p50, mean)
# Runs alternate between the paths (kernel emulator, emulator kernel, ...) so the noise of a
# shared machine falls on both; the table gives medians over the rounds. CPU per request is
# the CPU time (user + system, /proc and getrusage) of the client, the server and, on the
# emulator path, the arrakis daemon and switch processes, divided by the requests made.
# Progress goes to stderr; stdout gets a Markdown summary for docs/BENCHMARKS.md.
#
# usage: examples/bench-emulator.sh [--no-build]
#   ROUNDS=3            runs per path (1..20)
#   REDIS_N=20000       requests per redis-benchmark test (at 1 connection: REDIS_N / 4)
#   MC_N=50000          keys per memcslap run at concurrency 1
#   MC50_N=3000         keys per memcslap thread at concurrency 50 (150,000 in all): long
#                       enough that the fifty connections' set-up (on the emulator path
#                       ≈1 ms of CPU each: the handshakes through the switch, the secure
#                       bindings) does not decide the CPU per request, as it did at 1,000
#   MC50_PAIRS=12       extra runs of memcached get and of set at 50 connections, in pairs
#                       (kernel then emulator, then the other way round), each on a fresh
#                       server: those rows' CPU per request are the closest of the table
#                       (5-10 % apart), and a run's CPU swings by a third with the host's
#                       load, so each takes ROUNDS + MC50_PAIRS runs a path and a row of the
#                       pairs' ratios, with how many pairs the emulator path won and a sign
#                       test of that count
#   UDP_N=20000         timed datagram round trips (after 2000 untimed)
#   MCLAT_N=20000       timed mclat sets, and as many gets (after 1000 untimed of each)
#   BENCH_MAX_SECONDS=1800   stop with an error if the runs take longer
#   PATHS="kernel emulator"  the paths to run (one alone gives no ratios: a check of the script)
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bench_args "$@"
ROUNDS=${ROUNDS:-3}
REDIS_N=${REDIS_N:-20000}
MC_N=${MC_N:-50000}
MC50_N=${MC50_N:-3000}
MC50_PAIRS=${MC50_PAIRS:-12}
UDP_N=${UDP_N:-20000}
MCLAT_N=${MCLAT_N:-20000}
BENCH_MAX_SECONDS=${BENCH_MAX_SECONDS:-1800}
for v in ROUNDS REDIS_N MC_N MC50_N MC50_PAIRS UDP_N MCLAT_N BENCH_MAX_SECONDS; do
  [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -ge 1 ] || die "$v=${!v} is not a positive number"
done
[ "$ROUNDS" -le 20 ] || die "ROUNDS=$ROUNDS: use 1..20"
[ "$REDIS_N" -ge 400 ] && [ "$MC_N" -ge 500 ] || die "REDIS_N must be >= 400 and MC_N >= 500"

ensure_packages cc:gcc memcached:memcached memcslap:libmemcached-tools redis-server:redis-server \
  redis-cli:redis-tools redis-benchmark:redis-tools python3:python3
if [ -n "$NO_BUILD" ]; then
  [ -x "$ARRAKIS" ] && [ -f "$SHIM" ] || die "--no-build given but $ARRAKIS or $SHIM is missing"
else
  build_arrakis
fi
UDPECHO=$WORK/udpecho
cc -O2 -Wall -Wextra -o "$UDPECHO" "$ROOT/examples/bench/udpecho.c" || die "cannot compile udpecho.c"
MCLAT=$WORK/mclat
cc -O2 -Wall -Wextra -o "$MCLAT" "$ROOT/examples/bench/mclat.c" || die "cannot compile mclat.c"

export ARRAKIS_RUN_DIR=$WORK/run
unset ARRAKIS_SOCKET ARRAKIS_STATE_DIR ARRAKIS_BACKEND ARRAKIS_KERNEL_CLIENTS
bench_cleanup() {
  pkill -KILL -f -- "$ARRAKIS_RUN_DIR" 2>/dev/null || true
  pkill -KILL -f -- "$ARRAKIS (daemon|switch)" 2>/dev/null || true
  cleanup
}
trap bench_cleanup EXIT
START=$SECONDS

# record NAME VALUE: appends VALUE to this round's series NAME.
record() { echo "$2" >>"$WORK/m.$1"; }

run_redis() {
  local path=$1 port pid cpu out n conns t
  port=$(free_port)
  launch "$path" "$WORK/redis.$path.log" redis-server --port "$port" --bind 127.0.0.1 --save '' \
    --appendonly no --daemonize no --logfile '' --dir "$WORK"
  pid=$BG_PID
  wait_tcp "$port" "$pid" 20 || { tail "$WORK/redis.$path.log" >&2; die "redis ($path) did not start"; }
  check_path "$path" "$pid" redis-server
  for conns in 1 50; do
    n=$REDIS_N
    [ "$conns" = 1 ] && n=$((REDIS_N / 4))
    cpu=$(measured "$path" "$pid" "$WORK/rb.out" redis-benchmark -h 127.0.0.1 -p "$port" --csv -t set,get \
      -n "$n" -c "$conns") || die "redis-benchmark ($path, $conns conns) failed"
    out=$(cat "$WORK/rb.out")
    for t in SET GET; do
      record "redis_${t}_c${conns}_rps.$path" "$(csv_field "$out" "$t" rps)"
      record "redis_${t}_c${conns}_p50.$path" "$(csv_field "$out" "$t" p50)"
    done
    record "redis_c${conns}_cpu_us.$path" "$(per_request "$cpu" "$((2 * n))")"
  done
  stop_pid "$pid" 10 || true
}

run_memcached() {
  local path=$1 port pid cpu conc n t secs keys
  launch_memcached "$path" "$WORK/mc.$path.log"
  port=$MC_PORT
  pid=$MC_PID
  # Latency at one connection, first (after memcslap's 50 connections the server's NIC would
  # for a while have too many flows to ask for secure bindings): mclat's sets, then its gets.
  cpu=$(measured "$path" "$pid" "$WORK/mclat.out" "$MCLAT" "$port" -n "$MCLAT_N") ||
    { cat "$WORK/mclat.out" >&2; die "mclat ($path) failed"; }
  local lib
  lib=$(awk -F= '$1 == "#lib" { print $2 }' "$WORK/mclat.out")
  if [ "$path" = emulator ]; then [ "$lib" = 1 ] || die "mclat under the emulator used a kernel socket"
  else [ "$lib" = 0 ] || die "mclat on the kernel path used a library socket"; fi
  for t in set get; do
    record "mc_${t}_c1_p50.$path" "$(awk -v k="${t}_us_p50" '$1 == k { print $2 }' "$WORK/mclat.out")"
  done
  record "mclat_cpu_us.$path" "$(per_request "$cpu" "$((2 * (MCLAT_N + 1000)))")"
  for conc in 1 50; do
    n=$MC_N
    [ "$conc" = 50 ] && n=$MC50_N
    for t in set get; do
      cpu=$(measured "$path" "$pid" "$WORK/slap.out" memcslap --servers="127.0.0.1:$port" --test="$t" \
        --concurrency="$conc" --execute-number="$n" --tcp-nodelay) || die "memcslap ($path) failed"
      grep -Eqi 'error|fail' "$WORK/slap.out" && { cat "$WORK/slap.out" >&2; die "memcslap ($path) reported errors"; }
      # "Time to get 24762 keys by 1 threads: 4.142 seconds." (a get run asks for a random
      # subset of the keys it set first).
      read -r keys secs < <(awk -v t="$t" '$1 == "Time" && $3 == t && $6 == "by" { print $4, $(NF - 1) }' "$WORK/slap.out") ||
        { cat "$WORK/slap.out" >&2; die "memcslap ($path): no \"Time to $t ... by\" line"; }
      # The CPU covers the whole run: a get run first sets its n keys ("Time to set N keys",
      # from one thread whatever the concurrency), then gets.
      local reqs=$keys
      [ "$t" = get ] && reqs=$((keys + n))
      record "mc_${t}_c${conc}_kps.$path" "$(awk -v k="$keys" -v s="$secs" 'BEGIN { printf "%.0f", k / s }')"
      record "mc_${t}_c${conc}_cpu_us.$path" "$(per_request "$cpu" "$reqs")"
    done
  done
  stop_pid "$pid" 10 || true
}

run_udp() {
  local path=$1 port pid cpu lib
  port=$(free_port)
  launch "$path" "$WORK/udp.$path.log" "$UDPECHO" server "$port" 600
  pid=$BG_PID
  poll 20 grep -q ready "$WORK/udp.$path.log" || { cat "$WORK/udp.$path.log" >&2; die "udpecho server ($path) did not start"; }
  cpu=$(measured "$path" "$pid" "$WORK/udp.out" "$UDPECHO" client "$port" -n "$UDP_N" -q) ||
    { cat "$WORK/udp.out" >&2; die "udpecho client ($path) failed"; }
  lib=$(awk -F= '$1 == "#lib" { print $2 }' "$WORK/udp.out")
  if [ "$path" = emulator ]; then [ "$lib" = 1 ] || die "udpecho client under the emulator used a kernel socket"
  else [ "$lib" = 0 ] || die "udpecho client on the kernel path used a library socket"; fi
  record "udp_p50.$path" "$(awk '$1 == "rtt_us_p50" { print $2 }' "$WORK/udp.out")"
  record "udp_mean.$path" "$(awk '$1 == "rtt_us_mean" { print $2 }' "$WORK/udp.out")"
  record "udp_cpu_us.$path" "$(per_request "$cpu" "$((UDP_N + 2000))")"
  wait_exit "$pid" 10 || true
}

# within_budget: stops the benchmark once the runs have taken BENCH_MAX_SECONDS.
within_budget() {
  [ $((SECONDS - START)) -lt "$BENCH_MAX_SECONDS" ] || die "the runs took longer than BENCH_MAX_SECONDS=$BENCH_MAX_SECONDS s"
}

# in_order N: the paths (ORDER) for round or pair N, one a line: as given when N is odd,
# reversed when it is even, so the noise of a shared machine falls on every path.
in_order() {
  if [ $(($1 % 2)) -eq 1 ]; then printf '%s\n' "${ORDER[@]}"; else printf '%s\n' "${ORDER[@]}" | tac; fi
}

# run_mc50_pairs: MC50_PAIRS pairs of memcached runs at 50 connections for each of get and
# set, the paths' order alternating, each on a fresh server; their CPU per request joins the
# rounds' series, and each pair's emulator ÷ kernel goes to its own.
run_mc50_pairs() {
  local i t p cpu k e
  for i in $(seq 1 "$MC50_PAIRS"); do
    for t in get set; do
      within_budget
      k='' e=''
      for p in $(in_order "$i"); do
        cpu=$(memcslap_cpu "$p" "$t" "$MC50_N" 50 "$t, $p path, pair $i") || die "memcslap ($t, $p path, pair $i) failed"
        say "memcached $t at 50 connections, pair $i/$MC50_PAIRS: $p path: $cpu µs a request"
        record "mc_${t}_c50_cpu_us.$p" "$cpu"
        if [ "$p" = kernel ]; then k=$cpu; else e=$cpu; fi
      done
      [ -n "$k" ] && [ -n "$e" ] && record "mc50_${t}_pair_ratio" "$(awk -v k="$k" -v e="$e" 'BEGIN { printf "%.4f", e / k }')"
    done
  done
  return 0
}

run_path() {
  within_budget
  say "round $2/$ROUNDS: $1 path"
  run_redis "$1"
  run_memcached "$1"
  run_udp "$1"
}

PATHS=${PATHS:-kernel emulator}
read -r -a ORDER <<<"$PATHS"
for p in "${ORDER[@]}"; do
  case $p in kernel | emulator) ;; *) die "PATHS: unknown path $p (kernel, emulator)" ;; esac
done
for round in $(seq 1 "$ROUNDS"); do
  for p in $(in_order "$round"); do run_path "$p" "$round"; done
done
run_mc50_pairs
for p in kernel emulator; do
  [[ " ${ORDER[*]} " == *" $p "* ]] && continue
  for f in "$WORK"/m.*.kernel "$WORK"/m.*.emulator; do
    [ -e "$f" ] && touch "${f%.*}.$p"
  done
done

# --- report -----------------------------------------------------------------------------

med() { median <"$WORK/m.$1" || echo 0; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == 0) print "n/a"; else printf "%.3f", b / a }'; }
row() { # row LABEL SERIES BETTER
  local k e
  k=$(med "$2.kernel")
  e=$(med "$2.emulator")
  echo "| $1 | $k | $e | $(ratio "$k" "$e") | $3 |"
}
# sign_p N K: the one-sided sign test's p-value for K wins in N pairs, the chance of K or more
# if either path were as likely to win a pair: sum over i >= K of C(N, i) / 2^N.
sign_p() {
  awk -v n="$1" -v k="$2" 'BEGIN { c = 1; s = 0; for (i = 0; i <= n; i++) { if (i >= k) s += c; c = c * (n - i) / (i + 1) }; printf "%.2g", s / 2 ^ n }'
}
# The pairs' row of memcslap test $1 (get, set): how many pairs the emulator path used less
# CPU in (and the sign test's p: below 0.05, the emulator path's lead is not the host's
# noise), and their median ratio.
pairs_row() {
  local f=$WORK/m.mc50_$1_pair_ratio n lower
  [ -s "$f" ] || { echo "| memcached CPU per $1, 50 conns: paired runs | | no pairs | n/a | lower |"; return; }
  n=$(wc -l <"$f")
  lower=$(awk '$1 < 1 { c++ } END { print c + 0 }' "$f")
  echo "| memcached CPU per $1, 50 conns: $n paired runs, median of emulator ÷ kernel | | lower in $lower of $n (sign test p = $(sign_p "$n" "$lower")) | $(median <"$f" | awk '{ printf "%.3f", $1 }') | lower |"
}
CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
cat <<EOF
Machine: $(nproc) CPUs (nproc), ${CPU:-unknown CPU}, Linux $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)
Build: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo "an unknown tree"); $ROUNDS rounds per path, alternating; medians (memcached CPU per set and per get at 50 conns: over the rounds and $MC50_PAIRS alternating pairs of runs each on fresh servers).

| metric | kernel | emulator | emulator / kernel | better |
|---|---:|---:|---:|---|
$(row "redis SET, 1 conn (req/s)" redis_SET_c1_rps higher)
$(row "redis SET, 1 conn, p50 (ms)" redis_SET_c1_p50 lower)
$(row "redis GET, 1 conn (req/s)" redis_GET_c1_rps higher)
$(row "redis GET, 1 conn, p50 (ms)" redis_GET_c1_p50 lower)
$(row "redis CPU per request, 1 conn (µs)" redis_c1_cpu_us lower)
$(row "redis SET, 50 conns (req/s)" redis_SET_c50_rps higher)
$(row "redis GET, 50 conns (req/s)" redis_GET_c50_rps higher)
$(row "redis CPU per request, 50 conns (µs)" redis_c50_cpu_us lower)
$(row "memcached set, 1 conn (keys/s)" mc_set_c1_kps higher)
$(row "memcached get, 1 conn (keys/s)" mc_get_c1_kps higher)
$(row "memcached CPU per set request, 1 conn (µs)" mc_set_c1_cpu_us lower)
$(row "memcached CPU per get request, 1 conn (µs)" mc_get_c1_cpu_us lower)
$(row "memcached set, 1 conn, p50 (µs, mclat)" mc_set_c1_p50 lower)
$(row "memcached get, 1 conn, p50 (µs, mclat)" mc_get_c1_p50 lower)
$(row "memcached CPU per request, 1 conn (µs, mclat)" mclat_cpu_us lower)
$(row "memcached set, 50 conns (keys/s)" mc_set_c50_kps higher)
$(row "memcached get, 50 conns (keys/s)" mc_get_c50_kps higher)
$(row "memcached CPU per set request, 50 conns (µs)" mc_set_c50_cpu_us lower)
$(pairs_row set)
$(row "memcached CPU per get request, 50 conns (µs)" mc_get_c50_cpu_us lower)
$(pairs_row get)
$(row "UDP echo round trip p50 (µs)" udp_p50 lower)
$(row "UDP echo round trip mean (µs)" udp_mean lower)
$(row "UDP CPU per round trip (µs)" udp_cpu_us lower)
EOF
say "done in $((SECONDS - START)) s"
