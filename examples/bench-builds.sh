#!/usr/bin/env bash
# memcached at 50 connections, several builds side by side: the comparison behind the
# "A/B" rows of docs/BENCHMARKS.md. One load, repeated in alternating order so the noise of a
# shared machine falls on every build: `memcached -t 4` and `memcslap --test=get
# --concurrency=50` (or `--test=set`), both under `BUILD/arrakis run --backend emulator` (or
# both native for the build `kernel`). Per run it prints the CPU per request — user + system
# CPU of client, server and (emulator) the arrakis daemon and switch, divided by the requests
# (for get, the gets plus the sets memcslap makes first) — and at the end each build's
# median, min and max, and its median over the first build's.
#
# usage: examples/bench-builds.sh BUILD...
#   BUILD                 `kernel`, or a directory holding `arrakis` and `libarrakis.so`
#                         (target/release, or a copy of it kept from another tree)
#   ROUNDS=6              runs per build (1..50)
#   MC_N=3000             gets (sets) per memcslap thread
#   CONC=50               memcslap threads (one connection each)
#   TEST=get              memcslap's test: get or set
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -ge 1 ] || die "usage: $0 BUILD... (kernel, or a directory with arrakis and libarrakis.so)"
ROUNDS=${ROUNDS:-6}
MC_N=${MC_N:-3000}
CONC=${CONC:-50}
TEST=${TEST:-get}
case $TEST in set | get) ;; *) die "TEST=$TEST: use get or set" ;; esac
for v in ROUNDS MC_N CONC; do
  [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -ge 1 ] || die "$v=${!v} is not a positive number"
done
[ "$ROUNDS" -le 50 ] || die "ROUNDS=$ROUNDS: use 1..50"
BUILDS=("$@")
for b in "${BUILDS[@]}"; do
  [ "$b" = kernel ] && continue
  [ -x "$b/arrakis" ] && [ -f "$b/libarrakis.so" ] ||
    die "build $b: no arrakis and libarrakis.so there (give target/release, or a copy of it)"
done
ensure_packages memcached:memcached memcslap:libmemcached-tools python3:python3
unset ARRAKIS_SOCKET ARRAKIS_STATE_DIR ARRAKIS_BACKEND ARRAKIS_KERNEL_CLIENTS
builds_cleanup() {
  pkill -KILL -f -- "$WORK/run" 2>/dev/null || true
  cleanup
}
trap builds_cleanup EXIT

# one_run INDEX: one memcached + memcslap run of build INDEX; appends its CPU µs a request.
one_run() {
  local i=$1 b=${BUILDS[$1]} path=emulator cpu
  [ "$b" = kernel ] && path=kernel
  [ "$path" = emulator ] && ARRAKIS=$b/arrakis
  export ARRAKIS_RUN_DIR=$WORK/run.$i
  cpu=$(memcslap_cpu "$path" "$TEST" "$MC_N" "$CONC" "$b") || exit 1
  pkill -KILL -f -- "$ARRAKIS_RUN_DIR" 2>/dev/null || true
  echo "$cpu" | tee -a "$WORK/cpu.$i"
}

for round in $(seq 1 "$ROUNDS"); do
  order=$(seq 0 $((${#BUILDS[@]} - 1)))
  [ $((round % 2)) -eq 0 ] && order=$(echo "$order" | tac)
  for i in $order; do
    cpu=$(one_run "$i") || die "run $round of ${BUILDS[$i]} failed"
    say "round $round/$ROUNDS: ${BUILDS[$i]}: $cpu µs a request"
  done
done

base=$(median <"$WORK/cpu.0")
echo "memcslap $TEST, $CONC connections, $MC_N ${TEST}s each; $ROUNDS runs per build, alternating; CPU µs a request (client + server + plane)"
echo
echo "| build | median | min | max | ÷ ${BUILDS[0]} |"
echo "|---|---:|---:|---:|---:|"
for i in "${!BUILDS[@]}"; do
  m=$(median <"$WORK/cpu.$i")
  read -r lo hi < <(sort -n "$WORK/cpu.$i" | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo, hi }')
  echo "| ${BUILDS[$i]} | $m | $lo | $hi | $(awk -v a="$base" -v b="$m" 'BEGIN { printf "%.3f", b / a }') |"
done
