#!/usr/bin/env bash
# In-process TCP on the library OS versus the same program on kernel loopback sockets, in one
# run, ratios printed. examples/bench/echo.c is one process with a server thread: (a) 64-byte
# round trips over one connection with TCP_NODELAY on both ends (p50, p99, mean), (b) a one-way
# stream (1 GiB by default) to a receiver that discards it (MB/s). It runs natively ("kernel")
# and with LD_PRELOAD=libarrakis.so ARRAKIS_BACKEND=loopback ("arrakis"), alternately (kernel
# arrakis, arrakis kernel, ...) so that the neighbours' noise on a shared machine falls on both
# alike, in two thread placements, each for both modes:
#   1cpu  both threads pinned to one CPU (taskset): they wake each other with a local context
#         switch, which is stable;
#   2cpu  the client thread pinned to one CPU and the server thread to another (echo -p): every
#         wake-up crosses CPUs, which on this VM's vCPUs costs ~30 us each way when the other
#         vCPU has gone idle (left to the scheduler, such wake-ups land on some runs and not
#         others, so the placement is fixed instead).
# echo prints "#lib=1" when its sockets were the library OS's (eventfd placeholders) and
# "#lib=0" when they were kernel sockets; an "arrakis" run on kernel sockets (a build without
# the loopback backend) gives a warning, and its ratios only show the shim's interposition.
# Progress goes to stderr; stdout gets a Markdown summary for docs/BENCHMARKS.md.
#
# usage: examples/bench-tcp.sh [--no-build]
#   --no-build, ARRAKIS_SKIP_BUILD=1   use the existing target/release build
#   ROUNDS=5              runs per mode and placement (1..50)
#   RTT_N=20000 WARMUP=2000   timed and untimed round trips per run
#   TPUT_MB=1024          MiB streamed per run (512 MiB take only ~0.2 s on the kernel here)
#   PLACEMENTS="1cpu 2cpu"    which placements to run (2cpu needs two CPUs)
#   BENCH_CPUS=N          the CPU of the 1cpu placement (default: the last CPU)
#   BENCH_CPU_PAIR=C,S    client and server CPUs of the 2cpu placement (default: last,0)
#   RUN_TIMEOUT=300       seconds per echo run; BENCH_MAX_SECONDS=3600 for all the runs
#   Library-OS settings (ARRAKIS_SPIN_US, ...) in the environment reach the arrakis runs.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bench_args "$@"

ROUNDS=${ROUNDS:-5}
RTT_N=${RTT_N:-20000}
WARMUP=${WARMUP:-2000}
TPUT_MB=${TPUT_MB:-1024}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
BENCH_MAX_SECONDS=${BENCH_MAX_SECONDS:-3600}
PLACEMENTS=${PLACEMENTS:-1cpu 2cpu}
for v in ROUNDS RTT_N WARMUP TPUT_MB RUN_TIMEOUT BENCH_MAX_SECONDS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v=${!v} is not a number"
done
if [ "$ROUNDS" -lt 1 ] || [ "$ROUNDS" -gt 50 ]; then die "ROUNDS=$ROUNDS: use 1..50"; fi
if [ "$RTT_N" -lt 1 ] || [ "$TPUT_MB" -lt 1 ]; then die "RTT_N and TPUT_MB must be at least 1"; fi
[ "$RUN_TIMEOUT" -ge 20 ] || die "RUN_TIMEOUT=$RUN_TIMEOUT: use at least 20 s"

ensure_packages cc:gcc
if [ -n "$NO_BUILD" ]; then
  [ -f "$SHIM" ] || die "--no-build (or ARRAKIS_SKIP_BUILD) given but $SHIM is missing; run cargo build --release"
else
  build_arrakis
fi

NCPU=$(nproc)
command -v taskset >/dev/null 2>&1 || die "taskset not found (util-linux): the placements need it"
CPU1=${BENCH_CPUS:-$((NCPU - 1))}
[[ $CPU1 =~ ^[0-9]+$ ]] || die "BENCH_CPUS=$CPU1: one CPU number"
taskset -c "$CPU1" true 2>/dev/null || die "taskset -c $CPU1 fails: BENCH_CPUS must be a CPU of this machine (0-$((NCPU - 1)))"
PAIR=${BENCH_CPU_PAIR:-$((NCPU - 1)),0}
[[ $PAIR =~ ^[0-9]+,[0-9]+$ ]] || die "BENCH_CPU_PAIR=$PAIR: two CPU numbers, CLIENT,SERVER"
declare -A PIN_CMD PIN_ARGS PIN_DESC
for pl in $PLACEMENTS; do
  case $pl in
    1cpu)
      PIN_CMD[$pl]="taskset -c $CPU1"
      PIN_ARGS[$pl]=""
      PIN_DESC[$pl]="one CPU: both threads on CPU $CPU1 (taskset)"
      ;;
    2cpu)
      [ "$NCPU" -ge 2 ] || die "PLACEMENTS has 2cpu but this machine has $NCPU CPU"
      [ "${PAIR%,*}" != "${PAIR#*,}" ] || die "BENCH_CPU_PAIR=$PAIR: two different CPUs"
      taskset -c "$PAIR" true 2>/dev/null || die "taskset -c $PAIR fails: BENCH_CPU_PAIR must be CPUs of this machine"
      PIN_CMD[$pl]="taskset -c $PAIR"
      PIN_ARGS[$pl]="-p $PAIR"
      PIN_DESC[$pl]="two CPUs: client thread on CPU ${PAIR%,*}, server thread on CPU ${PAIR#*,} (echo -p)"
      ;;
    *) die "PLACEMENTS: unknown placement $pl (use 1cpu and/or 2cpu)" ;;
  esac
done

ECHO=$WORK/echo
cc -O2 -Wall -Wextra -pthread -o "$ECHO" "$ROOT/examples/bench/echo.c" || die "cannot compile examples/bench/echo.c"
START=$SECONDS

# value FILE KEY: the value of "KEY value" (or "#KEY=value") in echo's output FILE.
value() {
  awk -v k="$2" '$1 == k { print $2; found = 1 } index($0, "#" k "=") == 1 { print substr($0, length(k) + 3); found = 1 }
    END { exit !found }' "$1" || die "no $2 in $1: $(cat "$1")"
}

METRICS=(rtt_us_p50 rtt_us_p99 rtt_us_mean tput_MBps)
KERNEL_SOCKETS_UNDER_SHIM=0

# run_echo PLACEMENT MODE ROUND: one run of echo; appends its metrics to
# $WORK/PLACEMENT.MODE.METRIC.
run_echo() {
  local pl=$1 mode=$2 round=$3 out=$WORK/echo.$1.$2.$3 rc=0 envs=() m shim lib pin extra
  read -r -a pin <<<"${PIN_CMD[$pl]}"
  read -r -a extra <<<"${PIN_ARGS[$pl]}"
  [ $((SECONDS - START)) -lt "$BENCH_MAX_SECONDS" ] ||
    die "the runs took longer than BENCH_MAX_SECONDS=$BENCH_MAX_SECONDS s; stopped before $mode round $round"
  if [ "$mode" = arrakis ]; then
    envs=(LD_PRELOAD="$SHIM" ARRAKIS_BACKEND=loopback)
  else
    envs=(-u LD_PRELOAD)
  fi
  # env runs under taskset and natively; only echo itself gets the preload.
  timeout -k 5 "$RUN_TIMEOUT" "${pin[@]}" env "${envs[@]}" "$ECHO" -n "$RTT_N" -w "$WARMUP" \
    -b "${TPUT_MB}M" -t $((RUN_TIMEOUT - 10)) "${extra[@]}" >"$out" 2>"$out.err" || rc=$?
  if [ "$rc" -ne 0 ]; then
    cat "$out" "$out.err" >&2
    [ "$rc" -eq 124 ] && die "echo ($mode, round $round) did not finish within $RUN_TIMEOUT s"
    die "echo ($mode, round $round) failed with exit status $rc"
  fi
  shim=$(value "$out" shim)
  lib=$(value "$out" lib)
  if [ "$mode" = arrakis ]; then
    [ "$shim" = 1 ] || die "echo (arrakis, round $round): libarrakis.so was not mapped ($SHIM not preloaded?)"
    if [ "$lib" != 1 ]; then
      KERNEL_SOCKETS_UNDER_SHIM=$((KERNEL_SOCKETS_UNDER_SHIM + 1))
      say "WARNING: arrakis round $round: echo's sockets were kernel sockets (#lib=$lib), not the library OS's"
    fi
  else
    [ "$shim" = 0 ] || die "echo (kernel, round $round) has libarrakis.so mapped but should run natively"
    [ "$lib" = 0 ] || die "echo (kernel, round $round) reports library-OS sockets (#lib=$lib) without the shim"
  fi
  for m in "${METRICS[@]}"; do
    value "$out" "$m" >>"$WORK/$pl.$mode.$m"
  done
  say "$pl $mode round $round/$ROUNDS: rtt p50 $(value "$out" rtt_us_p50) us, p99 $(value "$out" rtt_us_p99) us, $(value "$out" tput_MBps) MB/s"
}

say "echo: $RTT_N round trips of 64 bytes after $WARMUP, $TPUT_MB MiB one way; $ROUNDS rounds per mode and placement ($PLACEMENTS)"
for round in $(seq 1 "$ROUNDS"); do
  for pl in $PLACEMENTS; do
    if [ $((round % 2)) -eq 1 ]; then
      run_echo "$pl" kernel "$round"
      run_echo "$pl" arrakis "$round"
    else
      run_echo "$pl" arrakis "$round"
      run_echo "$pl" kernel "$round"
    fi
  done
done

# --- report -----------------------------------------------------------------------------

declare -A MED
for pl in $PLACEMENTS; do
  for mode in kernel arrakis; do
    for m in "${METRICS[@]}"; do
      MED[$pl.$mode.$m]=$(median <"$WORK/$pl.$mode.$m")
    done
  done
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == 0) print "n/a"; else printf "%.3f", b / a }'; }
CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
WARNING=
if [ "$KERNEL_SOCKETS_UNDER_SHIM" -gt 0 ]; then
  WARNING="WARNING: in $KERNEL_SOCKETS_UNDER_SHIM arrakis runs echo's sockets were kernel sockets (#lib=0): this build does not serve ARRAKIS_BACKEND=loopback, so the ratios compare the kernel path with itself under the shim."
  echo "$WARNING" >&2
fi
SETTINGS=$(env | grep '^ARRAKIS_' | grep -v '^ARRAKIS_SKIP_BUILD=' | sort | tr '\n' ' ' || true)
cat <<EOF
Machine: $NCPU CPUs (nproc), ${CPU:-unknown CPU}, Linux $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)
Shim: $SHIM, built from $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo "an unknown tree")${SETTINGS:+; library-OS settings: $SETTINGS}

### In-process TCP echo: library OS (ARRAKIS_BACKEND=loopback) vs kernel loopback

examples/bench/echo.c, one process, server thread + client thread; $ROUNDS runs per mode and
placement, alternating; medians of the per-run values. Round trip: $RTT_N timed 64-byte
ping-pongs (after $WARMUP untimed), TCP_NODELAY on both ends. Throughput: $TPUT_MB MiB one way
in 128 KiB writes, the receiver discards, timed until its byte count came back (MB = 10^6 bytes).
EOF
for pl in $PLACEMENTS; do
  cat <<EOF

Placement $pl: ${PIN_DESC[$pl]}

| metric | kernel | arrakis | arrakis / kernel | better |
|---|---:|---:|---:|---|
| round trip p50 (µs) | ${MED[$pl.kernel.rtt_us_p50]} | ${MED[$pl.arrakis.rtt_us_p50]} | $(ratio "${MED[$pl.kernel.rtt_us_p50]}" "${MED[$pl.arrakis.rtt_us_p50]}") | lower |
| round trip p99 (µs) | ${MED[$pl.kernel.rtt_us_p99]} | ${MED[$pl.arrakis.rtt_us_p99]} | $(ratio "${MED[$pl.kernel.rtt_us_p99]}" "${MED[$pl.arrakis.rtt_us_p99]}") | lower |
| round trip mean (µs) | ${MED[$pl.kernel.rtt_us_mean]} | ${MED[$pl.arrakis.rtt_us_mean]} | $(ratio "${MED[$pl.kernel.rtt_us_mean]}" "${MED[$pl.arrakis.rtt_us_mean]}") | lower |
| throughput (MB/s) | ${MED[$pl.kernel.tput_MBps]} | ${MED[$pl.arrakis.tput_MBps]} | $(ratio "${MED[$pl.kernel.tput_MBps]}" "${MED[$pl.arrakis.tput_MBps]}") | higher |

EOF
  for mode in kernel arrakis; do
    for m in "${METRICS[@]}"; do
      echo "- per-run $m, $mode: $(tr '\n' ' ' <"$WORK/$pl.$mode.$m")"
    done
  done
done
[ -z "$WARNING" ] || printf '\n%s\n' "$WARNING"
say "done in $((SECONDS - START)) s"
