#!/usr/bin/env bash
# End-to-end test of storage on the data plane (issue 5, acceptance 1 and 5): unmodified
# redis-server keeps its directory on a virtual storage area (VSA) — `arrakis run --volume
# redis-data:DIR` — with `appendonly yes` and `appendfsync always`.
#   a. kill -9: a writer on the kernel path sends SET k<round>:<i> sequentially and records
#      every acknowledged key; redis is killed with SIGKILL at a random moment; after the
#      restart every acknowledged key must be there with its value. KILL_ROUNDS rounds (at
#      least 20). Then BGSAVE and BGREWRITEAOF (forked children writing through the parent's
#      volume) must succeed (INFO persistence), the restarted server must load the rewritten
#      AOF, and a server started with `appendonly no` must load the RDB.
#   b. cross-process: while redis runs and after it stops, `arrakis run --volume
#      redis-data:VIEW -- ls -l VIEW` lists redis's files and `... -- cat VIEW/FILE` prints
#      them; the bytes are compared (sha256) with what the FUSE mount shows.
#   c. `arrakis mount redis-data DIR` (FUSE): plain `sha256sum` and `find` (not under the
#      shim) see the same files and bytes as `arrakis run -- cat`; redis-check-aof and
#      redis-check-rdb accept them; then unmount.
#   d. `arrakis fsck redis-data` finds the volume clean after all that.
# The kernel directories used as mount points must stay empty: redis's files live on the
# volume only. Everything runs on 127.0.0.1 with a private daemon (ARRAKIS_RUN_DIR) and data
# directory (ARRAKIS_DATA_DIR) under the scratch directory; every loop and wait is bounded;
# the daemon, redis, FUSE mounts and clients started here are stopped on exit. Exits non-zero
# with a FAIL: line; prints one PASS line per part.
#
# usage: compat-tests/e2e/storage.sh
#   ARRAKIS_SKIP_BUILD=1    use the existing target/release build
#   KEEP_WORK=1             keep the scratch directory (logs, daemon store, acknowledged keys)
#   KILL_ROUNDS=20          kill -9 rounds (the acceptance asks for at least 20)
#   STORAGE_BACKEND=emulator  the network backend redis runs with (emulator or kernel)
#   STORAGE_SELFTEST=1      check this script's own logic with redis natively on a kernel
#                           directory: no daemon, shim, volume, FUSE or fsck (parts b-d only
#                           compare the kernel directory with itself). Not a test of Arrakis.
set -euo pipefail
# shellcheck source=../../examples/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../examples/lib.sh"

ensure_packages redis-server:redis-server redis-cli:redis-tools redis-check-aof:redis-server \
  python3:python3 fusermount3:fuse3 sha256sum:coreutils
if [ -n "${ARRAKIS_SKIP_BUILD:-}" ]; then
  [ -x "$ARRAKIS" ] && [ -f "$SHIM" ] || die "ARRAKIS_SKIP_BUILD is set but $ARRAKIS or $SHIM is missing"
else
  build_arrakis
fi
KILL_ROUNDS=${KILL_ROUNDS:-20}
[[ $KILL_ROUNDS =~ ^[0-9]+$ ]] && [ "$KILL_ROUNDS" -ge 1 ] && [ "$KILL_ROUNDS" -le 500 ] ||
  die "KILL_ROUNDS=$KILL_ROUNDS: use 1..500 (the acceptance asks for at least 20)"
BACKEND=${STORAGE_BACKEND:-emulator}
case $BACKEND in emulator | kernel) ;; *) die "STORAGE_BACKEND=$BACKEND: use emulator or kernel" ;; esac
SELFTEST=${STORAGE_SELFTEST:-}
[ -n "$SELFTEST" ] || [ -e /dev/fuse ] || die "/dev/fuse is missing: the FUSE part needs it (modprobe fuse)"
START=$SECONDS

# A private daemon: socket, store and VSA backing files live here.
export ARRAKIS_RUN_DIR=$WORK/run
export ARRAKIS_DATA_DIR=$WORK/data
unset ARRAKIS_SOCKET ARRAKIS_STATE_DIR ARRAKIS_BACKEND ARRAKIS_KERNEL_CLIENTS ARRAKIS_VOLUMES
mkdir -p "$ARRAKIS_RUN_DIR" "$ARRAKIS_DATA_DIR"
VOL=redis-data
RDIR=$WORK/mnt/redis # redis's --dir: the volume's mount point inside redis (a kernel dir that stays empty)
VIEW=$WORK/mnt/view  # where `arrakis run --volume` tools see the volume
FUSE_DIR=$WORK/fuse  # the FUSE mount point
ACKED=$WORK/acked    # every acknowledged "key value", all rounds
if [ -n "$SELFTEST" ]; then
  VIEW=$RDIR
  FUSE_DIR=$RDIR
  say "STORAGE_SELFTEST: redis natively on the kernel directory $RDIR; nothing of Arrakis is tested"
fi
mkdir -p "$RDIR" "$VIEW" "$FUSE_DIR"
: >"$ACKED"
FUSE_PID=

storage_cleanup() {
  if grep -qs " $FUSE_DIR fuse" /proc/mounts; then
    timeout 10 fusermount3 -u -z "$FUSE_DIR" 2>/dev/null || umount -l "$FUSE_DIR" 2>/dev/null || true
  fi
  [ -n "$FUSE_PID" ] && kill -KILL "$FUSE_PID" 2>/dev/null || true
  # The daemon (and the switch it starts) outlive the processes that started them.
  pkill -KILL -f -- "$ARRAKIS_RUN_DIR" 2>/dev/null || true
  [ -n "${DAEMON_PID:-}" ] && kill -KILL "$DAEMON_PID" 2>/dev/null || true
  cleanup
}
trap storage_cleanup EXIT

# arun CMD...: CMD under the shim with the volume mounted at $VIEW, bounded in time.
arun() {
  if [ -n "$SELFTEST" ]; then
    timeout 60 "$@"
  else
    timeout 60 "$ARRAKIS" run --backend "$BACKEND" --volume "$VOL:$VIEW" -- "$@"
  fi
}

# kernel_dirs_empty WHEN: the kernel directories under the mount points hold nothing.
kernel_dirs_empty() {
  local d
  [ -z "$SELFTEST" ] || return 0
  for d in "$RDIR" "$VIEW"; do
    [ -z "$(ls -A "$d")" ] || {
      ls -la "$d" >&2
      die "$1: the kernel directory $d is not empty: files went to the kernel instead of the volume"
    }
  done
}

# --- the daemon -------------------------------------------------------------------------

if [ -z "$SELFTEST" ]; then
  start_bg "$WORK/daemon.log" "$ARRAKIS" daemon
  DAEMON_PID=$BG_PID
  poll 10 test -S "$ARRAKIS_RUN_DIR/ctl.sock" || { cat "$WORK/daemon.log" >&2; die "the daemon did not start"; }
  say "daemon pid $DAEMON_PID, run dir $ARRAKIS_RUN_DIR, data dir $ARRAKIS_DATA_DIR"
fi

# --- redis --------------------------------------------------------------------------------

# start_redis_vsa LOG [EXTRA ARGS...]: redis-server under the shim with its dir on the volume,
# AOF with fsync on every write, no automatic RDB snapshots. Sets PORT, BG_PID, REDIS_PID.
start_redis_vsa() {
  local log=$1
  shift
  local launch=("$ARRAKIS" run --backend "$BACKEND" --volume "$VOL:$RDIR" --)
  [ -z "$SELFTEST" ] || launch=()
  PORT=$(free_port)
  start_bg "$log" "${launch[@]}" \
    redis-server --port "$PORT" --bind 127.0.0.1 --dir "$RDIR" --dbfilename dump.rdb --save '' \
    --appendonly yes --appendfsync always --appenddirname appendonlydir --daemonize no \
    --logfile '' --protected-mode yes --loglevel notice "$@"
  wait_tcp "$PORT" "$BG_PID" 60 || {
    tail -30 "$log" >&2
    die "redis-server did not come up on the volume (port $PORT)"
  }
  REDIS_PID=$(redis_info "$PORT" process_id) || die "no process_id from redis"
  [ "$REDIS_PID" = "$BG_PID" ] || SERVER_PIDS+=("$REDIS_PID")
  [ -n "$SELFTEST" ] || check_shim_mapped "$REDIS_PID" redis-server >/dev/null
  [ "$(redis_info "$PORT" loading)" = 0 ] || poll 60 loaded "$PORT" || die "redis is still loading after 60 s"
}
loaded() { [ "$(redis_info "$1" loading)" = 0 ]; }

# WRITER PORT PREFIX OUT SECONDS: SET PREFIX:<i> sequentially until the connection drops (or
# SECONDS pass); appends "key value" to OUT after each +OK. Exit 0 when the server went away
# (or time ran out), 2 on a wrong reply.
WRITER_PY='
import socket, sys, time
port, prefix, out, limit = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
def enc(*a):
    b = b"*%d\r\n" % len(a)
    for x in a:
        x = x.encode()
        b += b"$%d\r\n%s\r\n" % (len(x), x)
    return b
s = socket.create_connection(("127.0.0.1", port), timeout=10)
buf = b""
deadline = time.monotonic() + limit
with open(out, "a", buffering=1) as f:
    i = 0
    while time.monotonic() < deadline and i < 10000000:
        key, val = "%s:%d" % (prefix, i), "v%d-%s" % (i, "x" * (i % 97))
        try:
            s.sendall(enc("SET", key, val))
            while b"\r\n" not in buf:
                d = s.recv(4096)
                if not d:
                    raise ConnectionError("closed")
                buf += d
        except OSError:
            sys.exit(0)
        reply, buf = buf.split(b"\r\n", 1)
        if reply != b"+OK":
            print("SET %s: %r" % (key, reply), file=sys.stderr)
            sys.exit(2)
        f.write("%s %s\n" % (key, val))
        i += 1
'

# CHECK_PY PORT FILE: every "key value" of FILE reads back with that value (pipelined GETs).
# Prints the number checked; exit 1 listing the first mismatches.
CHECK_PY='
import socket, sys
port, path = int(sys.argv[1]), sys.argv[2]
pairs = [l.rstrip("\n").split(" ", 1) for l in open(path) if l.strip()]
s = socket.create_connection(("127.0.0.1", port), timeout=30)
f = s.makefile("rb")
bad = []
for at in range(0, len(pairs), 1000):
    batch = pairs[at:at + 1000]
    s.sendall(b"".join(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(k), k.encode()) for k, _ in batch))
    for k, v in batch:
        h = f.readline()
        if h.startswith(b"$-1"):
            got = None
        elif h.startswith(b"$"):
            got = f.read(int(h[1:]) + 2)[:-2].decode()
        else:
            got = "reply " + h.decode().strip()
        if got != v and len(bad) < 10:
            bad.append("%s: expected %r, got %r" % (k, v, got))
if bad:
    print("\n".join(bad), file=sys.stderr)
    sys.exit(1)
print(len(pairs))
'

acked_above() { [ "$(wc -l <"$ACKED")" -gt "$1" ]; }

# check_acked PORT WHAT: every acknowledged key so far is present with its value.
check_acked() {
  local n
  n=$(timeout 120 python3 -c "$CHECK_PY" "$1" "$ACKED") ||
    die "$2: acknowledged writes are missing or wrong after the restart (above; $(wc -l <"$ACKED") acknowledged)"
  CHECKED=$n
}

# persistence_done PORT FIELD_IN_PROGRESS COUNTER BEFORE: the background job finished.
persistence_done() {
  local info
  info=$(rcli "$1" INFO persistence | tr -d '\r') || return 1
  awk -F: -v p="$2" -v c="$3" -v b="$4" '
    $1 == p { prog = $2 } $1 == "aof_rewrite_scheduled" { sched = $2 } $1 == c { n = $2 }
    END { exit !(prog == 0 && (sched == "" || sched == 0) && n > b) }' <<<"$info"
}

# --- a. kill -9 rounds --------------------------------------------------------------------

part_kill() {
  local round wpid before after pause rc total_killed=0
  say "a. $KILL_ROUNDS rounds: SET with appendfsync always, kill -9 at a random moment, restart, check"
  for round in $(seq 1 "$KILL_ROUNDS"); do
    start_redis_vsa "$WORK/redis.$round.log"
    if [ "$round" -gt 1 ]; then
      check_acked "$PORT" "round $round"
    fi
    before=$(wc -l <"$ACKED")
    timeout 120 python3 -c "$WRITER_PY" "$PORT" "k$round" "$ACKED" 90 2>"$WORK/writer.$round.err" &
    wpid=$!
    # At least one acknowledged write before the kill, then a random 50 ms .. 1.5 s more.
    poll 30 acked_above "$before" || {
      cat "$WORK/writer.$round.err" >&2
      die "round $round: no write acknowledged within 30 s"
    }
    pause=$(awk -v r="$RANDOM" 'BEGIN { printf "%.2f", 0.05 + (r % 146) / 100 }')
    sleep "$pause"
    alive "$wpid" || { cat "$WORK/writer.$round.err" >&2; die "round $round: the writer stopped before the kill"; }
    kill -KILL "$REDIS_PID"
    wait "$BG_PID" 2>/dev/null || true
    rc=0
    wait "$wpid" || rc=$?
    [ "$rc" -eq 0 ] || { cat "$WORK/writer.$round.err" >&2; die "round $round: the writer failed (exit $rc)"; }
    poll 10 dead "$REDIS_PID" || die "round $round: redis (pid $REDIS_PID) survived kill -9"
    forget_pids "$REDIS_PID" "$BG_PID"
    after=$(wc -l <"$ACKED")
    total_killed=$((total_killed + 1))
    say "round $round: killed redis after ${pause}s more; $((after - before)) writes acknowledged this round, $after in all"
  done
  start_redis_vsa "$WORK/redis.check.log"
  check_acked "$PORT" "after the last kill"
  kernel_dirs_empty "after the kill rounds"
  echo "PASS a. kill -9: $total_killed rounds, all $CHECKED acknowledged writes present after each restart"
}

# --- a (cont.). BGSAVE and BGREWRITEAOF, and loading their files -----------------------------

part_background() {
  local n0 st log
  # A few more acknowledged writes so the rewrite has something beyond the last kill.
  timeout 60 python3 -c "$WRITER_PY" "$PORT" bg "$ACKED" 2 2>"$WORK/writer.bg.err" ||
    { cat "$WORK/writer.bg.err" >&2; die "writes before BGSAVE failed"; }

  n0=$(redis_info "$PORT" rdb_saves)
  [ "$(rcli "$PORT" BGSAVE)" = "Background saving started" ] || die "BGSAVE was refused"
  poll 120 persistence_done "$PORT" rdb_bgsave_in_progress rdb_saves "$n0" || die "BGSAVE did not finish within 120 s"
  st=$(redis_info "$PORT" rdb_last_bgsave_status)
  [ "$st" = ok ] || { tail -20 "$WORK/redis.check.log" >&2; die "BGSAVE failed: rdb_last_bgsave_status:$st"; }
  cp "$ACKED" "$WORK/acked.at-bgsave"

  n0=$(redis_info "$PORT" aof_rewrites)
  rcli "$PORT" BGREWRITEAOF | grep -q 'rewriting' || die "BGREWRITEAOF was refused"
  poll 120 persistence_done "$PORT" aof_rewrite_in_progress aof_rewrites "$n0" ||
    die "BGREWRITEAOF did not finish within 120 s"
  st=$(redis_info "$PORT" aof_last_bgrewrite_status)
  [ "$st" = ok ] || { tail -20 "$WORK/redis.check.log" >&2; die "BGREWRITEAOF failed: aof_last_bgrewrite_status:$st"; }
  st=$(redis_info "$PORT" aof_last_write_status)
  [ "$st" = ok ] || die "aof_last_write_status:$st after the rewrite"
  timeout 60 python3 -c "$WRITER_PY" "$PORT" after-rewrite "$ACKED" 1 2>"$WORK/writer.ar.err" ||
    { cat "$WORK/writer.ar.err" >&2; die "writes after BGREWRITEAOF failed"; }
  say "BGSAVE and BGREWRITEAOF succeeded (forked children writing through the parent's volume)"

  # Restart from the rewritten AOF: base file (RDB preamble) + increments.
  kill -KILL "$REDIS_PID"
  wait "$BG_PID" 2>/dev/null || true
  poll 10 dead "$REDIS_PID" || die "redis survived kill -9"
  forget_pids "$REDIS_PID" "$BG_PID"
  log=$WORK/redis.after-rewrite.log
  start_redis_vsa "$log"
  check_acked "$PORT" "restart after BGREWRITEAOF"
  grep -Eq 'DB loaded from base file appendonly\.aof\.[0-9]+\.base\.rdb' "$log" || {
    tail -20 "$log" >&2
    die "the restarted redis did not load the rewritten AOF's base file"
  }
  rcli "$PORT" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
  wait_exit "$BG_PID" 30 || die "redis did not exit on SHUTDOWN"
  forget_pids "$REDIS_PID" "$BG_PID"

  # The RDB from BGSAVE: a server without AOF loads dump.rdb.
  log=$WORK/redis.rdb.log
  start_redis_vsa "$log" --appendonly no
  grep -q 'DB loaded from disk' "$log" || { tail -20 "$log" >&2; die "redis did not load dump.rdb from the volume"; }
  timeout 120 python3 -c "$CHECK_PY" "$PORT" "$WORK/acked.at-bgsave" >/dev/null ||
    die "dump.rdb (BGSAVE) lacks writes acknowledged before the BGSAVE"
  rcli "$PORT" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
  wait_exit "$BG_PID" 30 || die "redis did not exit on SHUTDOWN"
  forget_pids "$REDIS_PID" "$BG_PID"

  start_redis_vsa "$WORK/redis.final.log"
  check_acked "$PORT" "restart after the RDB check"
  kernel_dirs_empty "after BGSAVE and BGREWRITEAOF"
  echo "PASS a. BGSAVE and BGREWRITEAOF: status ok; the restarted server loaded the rewritten AOF ($CHECKED writes) and another the RDB"
}

# --- b and c. the files from other processes: arrakis run and FUSE ---------------------------

# shim_listing OUT: "relpath size" of every file on the volume, through `arrakis run -- find`.
shim_listing() {
  arun find "$VIEW" -type f -printf '%P %s\n' | LC_ALL=C sort >"$1" ||
    die "arrakis run --volume $VOL:$VIEW -- find failed"
}
# shim_shas LISTING OUT: "relpath sha256" of each file, read by `arrakis run -- cat`.
shim_shas() {
  local f _ sum
  : >"$2"
  while read -r f _; do
    sum=$(arun cat "$VIEW/$f" | sha256sum | cut -d' ' -f1) || die "arrakis run -- cat $VIEW/$f failed"
    echo "$f $sum" >>"$2"
  done <"$1"
}

mount_fuse() {
  [ -z "$SELFTEST" ] || return 0
  start_bg "$WORK/fuse.log" timeout 600 "$ARRAKIS" mount "$VOL" "$FUSE_DIR"
  FUSE_PID=$BG_PID
  poll 30 grep -qs " $FUSE_DIR fuse" /proc/mounts || {
    cat "$WORK/fuse.log" >&2
    die "arrakis mount $VOL $FUSE_DIR: no FUSE mount appeared within 30 s"
  }
}
unmount_fuse() {
  [ -z "$SELFTEST" ] || return 0
  local rc=0
  timeout 20 fusermount3 -u "$FUSE_DIR" || die "fusermount3 -u $FUSE_DIR failed"
  wait_exit "$FUSE_PID" 20 || rc=$?
  [ "$rc" -ne 124 ] || { cat "$WORK/fuse.log" >&2; die "arrakis mount did not exit within 20 s of the unmount"; }
  [ "$rc" -eq 0 ] || { tail -5 "$WORK/fuse.log" >&2; say "(arrakis mount exited with status $rc after the unmount)"; }
  forget_pids "$FUSE_PID"
  FUSE_PID=
  ! grep -qs " $FUSE_DIR fuse" /proc/mounts || die "$FUSE_DIR is still mounted"
}

# compare_views WHEN: ls -l through the shim shows redis's files; arrakis run -- cat and plain
# sha256sum on the FUSE mount agree on every file's bytes; redis's checkers accept them.
compare_views() {
  local when=$1 tag=$2 f _ a b
  arun ls -l "$VIEW" >"$WORK/ls.$tag" || die "$when: arrakis run -- ls -l $VIEW failed"
  arun ls -l "$VIEW/appendonlydir" >>"$WORK/ls.$tag" || die "$when: arrakis run -- ls -l $VIEW/appendonlydir failed"
  for f in dump.rdb appendonlydir appendonly.aof.manifest; do
    grep -q " $f\$" "$WORK/ls.$tag" || { cat "$WORK/ls.$tag" >&2; die "$when: ls -l through the shim does not show $f"; }
  done
  grep -Eq ' appendonly\.aof\.[0-9]+\.base\.rdb$' "$WORK/ls.$tag" &&
    grep -Eq ' appendonly\.aof\.[0-9]+\.incr\.aof$' "$WORK/ls.$tag" ||
    { cat "$WORK/ls.$tag" >&2; die "$when: ls -l through the shim does not show the AOF's base and incr files"; }

  shim_listing "$WORK/files.$tag"
  shim_shas "$WORK/files.$tag" "$WORK/shas.$tag"
  mount_fuse
  (cd "$FUSE_DIR" && timeout 60 find . -type f -printf '%P %s\n' | LC_ALL=C sort) >"$WORK/files.fuse.$tag" ||
    die "$when: find on the FUSE mount failed"
  diff -u "$WORK/files.$tag" "$WORK/files.fuse.$tag" >&2 ||
    die "$when: the FUSE mount lists other files or sizes than arrakis run -- find (above)"
  : >"$WORK/shas.fuse.$tag"
  while read -r f _; do
    echo "$f $(timeout 60 sha256sum "$FUSE_DIR/$f" | cut -d' ' -f1)" >>"$WORK/shas.fuse.$tag"
  done <"$WORK/files.fuse.$tag"
  diff -u "$WORK/shas.$tag" "$WORK/shas.fuse.$tag" >&2 ||
    die "$when: sha256 through arrakis run -- cat differs from plain sha256sum on the FUSE mount (above)"
  timeout 60 redis-check-rdb "$FUSE_DIR/dump.rdb" >"$WORK/check-rdb.$tag" 2>&1 ||
    { cat "$WORK/check-rdb.$tag" >&2; die "$when: redis-check-rdb rejects dump.rdb as the FUSE mount shows it"; }
  timeout 60 redis-check-aof "$FUSE_DIR/appendonlydir/appendonly.aof.manifest" >"$WORK/check-aof.$tag" 2>&1 ||
    { cat "$WORK/check-aof.$tag" >&2; die "$when: redis-check-aof rejects the AOF as the FUSE mount shows it"; }
  unmount_fuse
  a=$(wc -l <"$WORK/files.$tag")
  b=$(awk '{ s += $2 } END { print s + 0 }' "$WORK/files.$tag")
  say "$when: $a files, $b bytes; ls -l, cat and the FUSE mount agree; redis-check-rdb/aof accept them"
}

part_views() {
  # Quiet the server (no writer runs now): the files do not change while they are compared.
  compare_views "while redis runs" running
  cp "$WORK/shas.running" "$WORK/shas.before-stop"
  rcli "$PORT" SHUTDOWN >/dev/null 2>&1 || true
  wait_exit "$BG_PID" 30 || die "redis did not exit on SHUTDOWN"
  forget_pids "$REDIS_PID" "$BG_PID"
  compare_views "after redis stopped" stopped
  kernel_dirs_empty "after the cross-process reads"
  echo "PASS b. arrakis run --volume $VOL:VIEW -- ls -l/cat show redis's files while it runs and after it stops"
  echo "PASS c. arrakis mount $VOL DIR: plain sha256sum equals arrakis run -- cat for every file, both times; unmounted"
}

# --- d. fsck --------------------------------------------------------------------------------

part_fsck() {
  local rc=0
  if [ -n "$SELFTEST" ]; then
    echo "PASS d. (STORAGE_SELFTEST: no fsck)"
    return 0
  fi
  timeout 300 "$ARRAKIS" fsck "$VOL" >"$WORK/fsck.out" 2>&1 || rc=$?
  [ "$rc" -eq 0 ] || { cat "$WORK/fsck.out" >&2; die "arrakis fsck $VOL exited $rc"; }
  timeout 10 "$ARRAKIS" vsa list >"$WORK/vsa-list.out" 2>&1 || { cat "$WORK/vsa-list.out" >&2; die "arrakis vsa list failed"; }
  grep -qw -- "$VOL" "$WORK/vsa-list.out" || { cat "$WORK/vsa-list.out" >&2; die "arrakis vsa list does not show $VOL"; }
  # The data is still all there for a last server.
  start_redis_vsa "$WORK/redis.last.log"
  check_acked "$PORT" "after fsck"
  rcli "$PORT" SHUTDOWN >/dev/null 2>&1 || true
  wait_exit "$BG_PID" 30 || die "redis did not exit on SHUTDOWN"
  forget_pids "$REDIS_PID" "$BG_PID"
  echo "PASS d. arrakis fsck $VOL: clean; a last restart still has all $CHECKED acknowledged writes"
}

part_kill
part_background
part_views
part_fsck
echo "PASS: redis with appendfsync always on a VSA ($KILL_ROUNDS kill -9 rounds, BGSAVE, BGREWRITEAOF), cross-process views, FUSE, fsck ($((SECONDS - START)) s)"
