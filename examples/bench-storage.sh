#!/usr/bin/env bash
# Files on the kernel versus files on a virtual storage area (issue 5, acceptance 6), in one
# run, ratios printed. Kernel path: a program natively on a kernel directory. VSA path: the
# same program under `arrakis run --backend $BENCH_BACKEND --volume NAME:DIR`, its files on
# a VSA whose backing file the daemon keeps under ARRAKIS_DATA_DIR, inside this run's scratch
# directory: the same device as the kernel directory.
#   floor    examples/bench/fileio.c floor: 4 KiB pwrite + fdatasync on a preallocated,
#            zero-filled file (natively): the cost of a flush on this device (p50, p99)
#   fsync    4 KiB append + fsync latency (p50, p99)
#   seq      sequential write (1 MiB writes, then fsync) and read of SEQ_MIB MiB (MiB/s)
#   rand     random 4 KiB preads and pwrites (+ one fsync) on that file (operations/s)
#   redis    redis-server with appendonly yes, appendfsync always, its dir on the kernel
#            directory or on the VSA; redis-benchmark -t set at 1 connection (rps, p50) and 50
#            connections (rps). On the VSA path with BENCH_BACKEND=emulator the server's and
#            the client's sockets are on the library OS too (both under arrakis run); with
#            kernel, only the files differ.
# Runs alternate between the paths (kernel vsa, vsa kernel, ...) so the noise of a shared
# machine falls on both; the floor is measured once per round; the table gives medians over
# the rounds. Reads on the kernel path come from the page cache (the file was just written),
# as a real program's would. Progress goes to stderr; stdout gets a Markdown summary for
# docs/BENCHMARKS.md.
#
# usage: examples/bench-storage.sh [--no-build]
#   ROUNDS=3              runs per path (1..20)
#   FLOOR_N=1000          timed floor operations per round
#   FSYNC_N=1000          timed append+fsync operations per run
#   SEQ_MIB=64            MiB written and read sequentially
#   RAND_N=20000          random reads, and random writes, per run
#   REDIS_N=5000          SETs at 1 connection (at 50 connections: 4 x REDIS_N)
#   VSA_SIZE=1G           size of each of the two VSAs the script creates
#   BENCH_BACKEND=emulator  the backend of the VSA path (emulator or kernel)
#   BENCH_MAX_SECONDS=1800  stop with an error if the runs take longer
#   PATHS="kernel vsa"    the paths to run (one alone gives no ratios: a check of the script)
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bench_args "$@"
ROUNDS=${ROUNDS:-3}
FLOOR_N=${FLOOR_N:-1000}
FSYNC_N=${FSYNC_N:-1000}
SEQ_MIB=${SEQ_MIB:-64}
RAND_N=${RAND_N:-20000}
REDIS_N=${REDIS_N:-5000}
VSA_SIZE=${VSA_SIZE:-1G}
BENCH_BACKEND=${BENCH_BACKEND:-emulator}
BENCH_MAX_SECONDS=${BENCH_MAX_SECONDS:-1800}
for v in ROUNDS FLOOR_N FSYNC_N SEQ_MIB RAND_N REDIS_N BENCH_MAX_SECONDS; do
  [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -ge 1 ] || die "$v=${!v} is not a positive number"
done
[ "$ROUNDS" -le 20 ] || die "ROUNDS=$ROUNDS: use 1..20"
[ "$FLOOR_N" -le 100000 ] && [ "$FSYNC_N" -le 100000 ] || die "FLOOR_N and FSYNC_N: at most 100000"
[ "$SEQ_MIB" -le 4096 ] && [ "$RAND_N" -le 10000000 ] && [ "$REDIS_N" -le 1000000 ] ||
  die "SEQ_MIB <= 4096, RAND_N <= 10000000, REDIS_N <= 1000000"
[ "$REDIS_N" -ge 100 ] || die "REDIS_N must be >= 100"
[[ $VSA_SIZE =~ ^[0-9]+[KMGT]?$ ]] || die "VSA_SIZE=$VSA_SIZE: a size like 1G or 512M"
case $BENCH_BACKEND in emulator | kernel) ;; *) die "BENCH_BACKEND=$BENCH_BACKEND: use emulator or kernel" ;; esac
PATHS=${PATHS:-kernel vsa}
read -r -a ORDER <<<"$PATHS"
[ ${#ORDER[@]} -ge 1 ] || die "PATHS is empty"
for p in "${ORDER[@]}"; do
  case $p in kernel | vsa) ;; *) die "PATHS: unknown path $p (kernel, vsa)" ;; esac
done
WANT_VSA=
[[ " ${ORDER[*]} " == *" vsa "* ]] && WANT_VSA=1

ensure_packages cc:gcc redis-server:redis-server redis-cli:redis-tools redis-benchmark:redis-tools \
  python3:python3
if [ -n "$WANT_VSA" ]; then
  if [ -n "$NO_BUILD" ]; then
    [ -x "$ARRAKIS" ] && [ -f "$SHIM" ] || die "--no-build given but $ARRAKIS or $SHIM is missing"
  else
    build_arrakis
  fi
fi
FILEIO=$WORK/fileio
cc -O2 -Wall -Wextra -o "$FILEIO" "$ROOT/examples/bench/fileio.c" || die "cannot compile fileio.c"

# A private daemon; the VSAs' backing files live in the scratch directory (same device).
export ARRAKIS_RUN_DIR=$WORK/run
export ARRAKIS_DATA_DIR=$WORK/data
unset ARRAKIS_SOCKET ARRAKIS_STATE_DIR ARRAKIS_BACKEND ARRAKIS_KERNEL_CLIENTS ARRAKIS_VOLUMES
mkdir -p "$ARRAKIS_RUN_DIR" "$ARRAKIS_DATA_DIR"
DAEMON_PID=
bench_cleanup() {
  pkill -KILL -f -- "$ARRAKIS_RUN_DIR" 2>/dev/null || true
  [ -n "$DAEMON_PID" ] && kill -KILL "$DAEMON_PID" 2>/dev/null || true
  cleanup
}
trap bench_cleanup EXIT
START=$SECONDS

# Kernel directories, and the VSAs' mount points (kernel directories that must stay empty).
KFILES=$WORK/kernel/files
KREDIS=$WORK/kernel/redis
VFILES=$WORK/vsa/files
VREDIS=$WORK/vsa/redis
mkdir -p "$KFILES" "$KREDIS" "$VFILES" "$VREDIS"
[ "$(stat -c %d "$KFILES")" = "$(stat -c %d "$ARRAKIS_DATA_DIR")" ] ||
  die "the kernel directory and the VSAs' data directory are on different devices"

if [ -n "$WANT_VSA" ]; then
  start_bg "$WORK/daemon.log" "$ARRAKIS" daemon
  DAEMON_PID=$BG_PID
  poll 10 test -S "$ARRAKIS_RUN_DIR/ctl.sock" || { cat "$WORK/daemon.log" >&2; die "the daemon did not start"; }
  for vol in bench-files bench-redis; do
    timeout 120 "$ARRAKIS" vsa create "$vol" "$VSA_SIZE" >"$WORK/vsa-create.out" 2>&1 ||
      { cat "$WORK/vsa-create.out" >&2; die "arrakis vsa create $vol $VSA_SIZE failed"; }
  done
  say "daemon pid $DAEMON_PID; VSAs bench-files and bench-redis ($VSA_SIZE each) under $ARRAKIS_DATA_DIR"
fi

# on PATH VOLUME DIR CMD...: CMD natively (kernel) or under arrakis run with VOLUME at DIR.
on() {
  local path=$1 vol=$2 dir=$3
  shift 3
  if [ "$path" = vsa ]; then
    timeout -k 5 600 "$ARRAKIS" run --backend "$BENCH_BACKEND" --volume "$vol:$dir" -- "$@"
  else
    timeout -k 5 600 "$@"
  fi
}

# record NAME VALUE: appends VALUE to this round's series NAME.
record() { echo "$2" >>"$WORK/m.$1"; }
# field OUT NAME: the value of line "NAME value" in OUT.
field() { awk -v n="$2" '$1 == n { print $2; found = 1 } END { exit !found }' "$1" || die "fileio printed no $2"; }
# expect_vsa OUT PATH: fileio's #vsa= line matches the path (the files really were where meant).
expect_vsa() {
  local want=0 got
  [ "$2" = vsa ] && want=1
  got=$(awk -F= '$1 == "#vsa" { print $2; exit }' "$1")
  [ "$got" = "$want" ] || die "fileio on the $2 path reported #vsa=${got:-none}: its files were not where meant"
}
kernel_dir_empty() {
  [ -z "$(ls -A "$1")" ] || { ls -la "$1" >&2; die "$2: files appeared in the kernel directory $1 (mount point of a VSA)"; }
}

run_floor() {
  local out=$WORK/floor.out
  timeout 600 "$FILEIO" floor "$WORK/floor.dat" "$FLOOR_N" >"$out" || die "fileio floor failed"
  record floor_p50 "$(field "$out" floor_us_p50)"
  record floor_p99 "$(field "$out" floor_us_p99)"
}

run_files() {
  local path=$1 dir=$KFILES out=$WORK/files.out
  [ "$path" = vsa ] && dir=$VFILES
  on "$path" bench-files "$dir" "$FILEIO" fsync "$dir" "$FSYNC_N" >"$out" || die "fileio fsync ($path) failed"
  expect_vsa "$out" "$path"
  record "fsync_p50.$path" "$(field "$out" write_fsync_us_p50)"
  record "fsync_p99.$path" "$(field "$out" write_fsync_us_p99)"
  on "$path" bench-files "$dir" "$FILEIO" seq "$dir" "$SEQ_MIB" >"$out" || die "fileio seq ($path) failed"
  expect_vsa "$out" "$path"
  record "seq_write.$path" "$(field "$out" seq_write_mibps)"
  record "seq_read.$path" "$(field "$out" seq_read_mibps)"
  on "$path" bench-files "$dir" "$FILEIO" rand "$dir" "$SEQ_MIB" "$RAND_N" >"$out" || die "fileio rand ($path) failed"
  expect_vsa "$out" "$path"
  record "rand_read.$path" "$(field "$out" rand_read_iops)"
  record "rand_write.$path" "$(field "$out" rand_write_iops)"
  [ "$path" = vsa ] && kernel_dir_empty "$VFILES" "fileio on the VSA"
  return 0
}

# bench_client PATH PORT ARGS...: redis-benchmark --csv against PORT (under the shim on the VSA
# path with the emulator backend, so both ends use the library OS's sockets).
bench_client() {
  local path=$1 port=$2 err=$WORK/rb.err rc=0 pre=()
  shift 2
  [ "$path" = vsa ] && [ "$BENCH_BACKEND" = emulator ] && pre=("$ARRAKIS" run --backend emulator --)
  timeout -k 5 300 "${pre[@]}" redis-benchmark -h 127.0.0.1 -p "$port" --csv "$@" >"$WORK/rb.out" 2>"$err" || rc=$?
  if [ "$rc" -ne 0 ] || [ -s "$err" ]; then
    cat "$err" >&2
    die "redis-benchmark $* ($path) failed (exit $rc)"
  fi
  cat "$WORK/rb.out"
}

run_redis() {
  local path=$1 dir=$KREDIS port pid out launch=()
  [ "$path" = vsa ] && dir=$VREDIS && launch=("$ARRAKIS" run --backend "$BENCH_BACKEND" --volume "bench-redis:$dir" --)
  port=$(free_port)
  start_bg "$WORK/redis.$path.log" "${launch[@]}" redis-server --port "$port" --bind 127.0.0.1 \
    --dir "$dir" --save '' --appendonly yes --appendfsync always --auto-aof-rewrite-percentage 0 \
    --daemonize no --logfile '' --protected-mode yes
  pid=$BG_PID
  wait_tcp "$port" "$pid" 60 || { tail "$WORK/redis.$path.log" >&2; die "redis ($path) did not start"; }
  if [ "$path" = vsa ]; then
    check_shim_mapped "$pid" redis-server >/dev/null 2>&1 || die "redis-server (vsa path) is not under the shim"
  else
    check_shim_absent "$pid" redis-server
  fi
  [ "$(redis_info "$port" aof_enabled)" = 1 ] || die "redis ($path) does not have the AOF on"
  out=$(bench_client "$path" "$port" -t set -n "$REDIS_N" -c 1)
  record "redis_c1_rps.$path" "$(csv_field "$out" SET rps)"
  record "redis_c1_p50.$path" "$(csv_field "$out" SET p50)"
  out=$(bench_client "$path" "$port" -t set -n $((REDIS_N * 4)) -c 50)
  record "redis_c50_rps.$path" "$(csv_field "$out" SET rps)"
  [ "$(redis_info "$port" aof_last_write_status)" = ok ] || die "redis ($path): AOF write errors"
  stop_pid "$pid" 20 || true
  forget_pids "$pid"
  [ "$path" = vsa ] && kernel_dir_empty "$VREDIS" "redis on the VSA"
  return 0
}

run_path() {
  [ $((SECONDS - START)) -lt "$BENCH_MAX_SECONDS" ] || die "the runs took longer than BENCH_MAX_SECONDS=$BENCH_MAX_SECONDS s"
  say "round $2/$ROUNDS: $1 path"
  run_files "$1"
  run_redis "$1"
}

for round in $(seq 1 "$ROUNDS"); do
  say "round $round/$ROUNDS: the floor"
  run_floor
  if [ $((round % 2)) -eq 1 ]; then
    for p in "${ORDER[@]}"; do run_path "$p" "$round"; done
  else
    for ((i = ${#ORDER[@]} - 1; i >= 0; i--)); do run_path "${ORDER[i]}" "$round"; done
  fi
done
for p in kernel vsa; do
  [[ " ${ORDER[*]} " == *" $p "* ]] && continue
  for f in "$WORK"/m.*.kernel "$WORK"/m.*.vsa; do
    [ -e "$f" ] && touch "${f%.*}.$p"
  done
done

# --- report -----------------------------------------------------------------------------

med() { median <"$WORK/m.$1" 2>/dev/null || echo 0; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == 0 || b == 0) print "n/a"; else printf "%.3f", b / a }'; }
row() { # row LABEL SERIES BETTER
  local k v
  k=$(med "$2.kernel")
  v=$(med "$2.vsa")
  echo "| $1 | $k | $v | $(ratio "$k" "$v") | $3 |"
}
FLOOR=$(med floor_p50)
FLOOR99=$(med floor_p99)
# over_floor SERIES SCALE: the path's median over the floor's (SCALE 1000 for redis's ms).
over_floor() {
  local k v
  k=$(awk -v x="$(med "$1.kernel")" -v s="$2" 'BEGIN { print x * s }')
  v=$(awk -v x="$(med "$1.vsa")" -v s="$2" 'BEGIN { print x * s }')
  echo "$(ratio "$FLOOR" "$k") | $(ratio "$FLOOR" "$v")"
}
CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
cat <<EOF
Machine: $(nproc) CPUs (nproc), ${CPU:-unknown CPU}, Linux $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)
Device: $(df --output=source,fstype "$WORK" | tail -1 | tr -s ' '); VSA path backend: $BENCH_BACKEND
Build: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo "an unknown tree"); $ROUNDS rounds per path, alternating; medians.

The floor (4 KiB pwrite + fdatasync on a preallocated file, kernel): p50 $FLOOR µs, p99 $FLOOR99 µs.

| metric | kernel | VSA | VSA / kernel | better |
|---|---:|---:|---:|---|
$(row "4 KiB write+fsync, p50 (µs)" fsync_p50 lower)
$(row "4 KiB write+fsync, p99 (µs)" fsync_p99 lower)
$(row "sequential write, $SEQ_MIB MiB + fsync (MiB/s)" seq_write higher)
$(row "sequential read (MiB/s)" seq_read higher)
$(row "random 4 KiB read (ops/s)" rand_read higher)
$(row "random 4 KiB write + 1 fsync (ops/s)" rand_write higher)
$(row "redis SET appendfsync always, 1 conn (req/s)" redis_c1_rps higher)
$(row "redis SET appendfsync always, 1 conn, p50 (ms)" redis_c1_p50 lower)
$(row "redis SET appendfsync always, 50 conns (req/s)" redis_c50_rps higher)

| over the floor (p50 / floor p50) | kernel | VSA |
|---|---:|---:|
| 4 KiB write+fsync | $(over_floor fsync_p50 1) |
| redis SET, 1 conn | $(over_floor redis_c1_p50 1000) |
EOF
say "done in $((SECONDS - START)) s"
