#!/usr/bin/env bash
# The quick-start demo: unmodified redis-server on the kernel path and under `arrakis run`,
# same configuration, driven by redis-benchmark (GET and SET, 1 and 50 connections) in
# alternating rounds, then a table of requests/s and p50 latency for both and their ratio.
# On a fresh Debian machine it installs what is missing and builds the workspace first.
#
# usage: examples/demo.sh
#   ROUNDS=7              rounds per mode and connection count (alternating order)
#   ARRAKIS_SKIP_BUILD=1  use the existing target/release build
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS=${ROUNDS:-7}

command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (https://rustup.rs) first"
ensure_packages cc:gcc redis-server:redis-server redis-cli:redis-tools redis-benchmark:redis-tools
if [ -n "${ARRAKIS_SKIP_BUILD:-}" ]; then
  [ -x "$ARRAKIS" ] && [ -f "$SHIM" ] || die "ARRAKIS_SKIP_BUILD is set but $ARRAKIS or $SHIM is missing"
else
  build_arrakis
fi
START=$SECONDS

# Both servers on the last CPU, the client on the first: left to the scheduler, a run's
# latency depends mostly on whether client and server happen to share a vCPU.
SCPU=$(($(nproc) - 1))
CLIENT_CPU=0
declare -A PORT
PORT[native]=$(free_port)
start_redis native "${PORT[native]}" "$WORK/native" "$WORK/native.log" "$SCPU"
PORT[shim]=$(free_port)
[ "${PORT[shim]}" != "${PORT[native]}" ] || PORT[shim]=$(free_port)
start_redis shim "${PORT[shim]}" "$WORK/shim" "$WORK/shim.log" "$SCPU"
SHIM_PID=$REDIS_PID
for mode in native shim; do
  redis_bench "${PORT[$mode]}" -t set,get -c 1 -n 1000 >/dev/null # warm-up
done

# run MODE CONNS: one redis-benchmark run; appends "TEST CONNS RPS P50" lines to $WORK/results.MODE.
run() {
  local mode=$1 conns=$2 csv test rps p50 n=5000
  [ "$conns" -gt 1 ] && n=20000
  csv=$(redis_bench "${PORT[$mode]}" -t set,get -c "$conns" -n "$n")
  for test in GET SET; do
    rps=$(csv_field "$csv" "$test" rps)
    p50=$(csv_field "$csv" "$test" p50)
    echo "$test $conns $rps $p50" >>"$WORK/results.$mode"
  done
}
: >"$WORK/results.native"
: >"$WORK/results.shim"
for conns in 1 50; do
  for round in $(seq 1 "$ROUNDS"); do
    say "$conns connection(s), round $round/$ROUNDS"
    if [ $((round % 2)) -eq 1 ]; then
      run native "$conns"
      run shim "$conns"
    else
      run shim "$conns"
      run native "$conns"
    fi
  done
done
alive "$SHIM_PID" || die "redis-server under the shim died"

# results_of MODE TEST CONNS COLUMN(3=rps, 4=p50): that column of every round, one per line.
results_of() { awk -v t="$2" -v c="$3" -v k="$4" '$1 == t && $2 == c { print $k }' "$WORK/results.$1"; }

echo
echo "redis-server $(redis-server --version | grep -o 'v=[^ ]*' | cut -c3-): kernel path vs arrakis run," \
  "median of $ROUNDS alternating rounds (servers on CPU $SCPU, redis-benchmark on CPU $CLIENT_CPU)"
printf '%-4s %5s | %12s %12s %6s %7s | %10s %9s %6s\n' test conns "native req/s" "shim req/s" ratio noise \
  "native p50" "shim p50" ratio
printf '%s\n' "-----------+--------------------------------------------+-----------------------------"
for conns in 1 50; do
  for test in GET SET; do
    nr=$(results_of native "$test" "$conns" 3 | median)
    sr=$(results_of shim "$test" "$conns" 3 | median)
    np=$(results_of native "$test" "$conns" 4 | median)
    sp=$(results_of shim "$test" "$conns" 4 | median)
    # noise: how far apart the native runs alone were, (max - min) / median.
    noise=$(results_of native "$test" "$conns" 3 | sort -g | awk -v m="$nr" 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f%%", 100 * (hi - lo) / m }')
    awk -v t="$test" -v c="$conns" -v nr="$nr" -v sr="$sr" -v np="$np" -v sp="$sp" -v noise="$noise" 'BEGIN {
      printf "%-4s %5d | %12.0f %12.0f %6.2f %7s | %8.0fus %7.0fus %6.2f\n", t, c, nr, sr, sr / nr, noise, np * 1000, sp * 1000, sp / np }'
  done
done
echo "ratio = shim / native (req/s: above 1 is better; p50: below 1 is better)."
echo "noise = spread of the native runs alone, (max - min) / median: ratios inside it are the machine's."
echo "p50 comes from redis-benchmark's histogram, in steps of about 8us near 70us."
say "done in $((SECONDS - START)) s"
