#!/usr/bin/env bash
# End-to-end test of the switch's uplink: containers under `arrakis run --backend emulator`
# reach a host that is not under the shim, and such a host reaches them, through a tun
# interface, all inside a network namespace this test creates (nothing leaves it):
#   netns  arkup0 10.77.0.1/24 (the kernel's side: "the host outside")
#   switch uplink arkup0; every container has 10.77.0.2/24 on the switch
# 1. a container's TCP client and UDP client reach kernel echo servers on 10.77.0.1, with
#    library-OS sockets (not handed to the kernel), bytes checked;
# 2. a kernel client connects to 10.77.0.2, where a container listens, and gets its echo;
# 3. `arrakis stats` counts the frames through the uplink;
# 4. two hosts' switches, connected by routing their uplink networks: a second namespace (a
#    second host, its own daemon and switch, uplink arkup1, containers at 10.77.0.130/24)
#    joined to the first by a veth pair, the kernels forwarding between them. A container on
#    one host and a container on the other talk TCP and UDP, on library-OS sockets at both
#    ends, and both switches count the frames through their uplinks.
# Needs root (network namespaces, tun). Every step is bounded in time; the namespace and
# everything started here go on exit.
#
# usage: compat-tests/e2e/uplink.sh    (ARRAKIS_SKIP_BUILD=1, KEEP_WORK=1 as the others)
set -euo pipefail
# shellcheck source=../../examples/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../examples/lib.sh"

[ "$(id -u)" -eq 0 ] || die "the uplink test creates a network namespace and a tun interface: run it as root"
ensure_packages ip:iproute2 python3:python3
if [ -n "${ARRAKIS_SKIP_BUILD:-}" ]; then
  [ -x "$ARRAKIS" ] && [ -f "$SHIM" ] || die "ARRAKIS_SKIP_BUILD is set but $ARRAKIS or $SHIM is missing"
else
  build_arrakis
fi
START=$SECONDS

NS=arrakis-up-$$
NS2=arrakis-up2-$$
RUN2=$WORK/second-host
export ARRAKIS_RUN_DIR=$WORK/run
unset ARRAKIS_SOCKET ARRAKIS_STATE_DIR ARRAKIS_BACKEND ARRAKIS_KERNEL_CLIENTS
up_cleanup() {
  pkill -KILL -f -- "$ARRAKIS_RUN_DIR" 2>/dev/null || true
  pkill -KILL -f -- "$RUN2" 2>/dev/null || true
  local ns
  for ns in "$NS" "$NS2"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  cleanup
}
trap up_cleanup EXIT
in_ns() { ip netns exec "$NS" "$@"; }

ip netns add "$NS" || die "ip netns add $NS failed"
in_ns ip link set lo up
in_ns ip tuntap add dev arkup0 mode tun || die "cannot create the tun interface (modprobe tun?)"
in_ns ip addr add 10.77.0.1/24 dev arkup0
in_ns ip link set arkup0 up
say "namespace $NS: arkup0 10.77.0.1/24"

start_bg "$WORK/daemon.log" ip netns exec "$NS" "$ARRAKIS" daemon --uplink arkup0 --uplink-addr 10.77.0.2/24
poll 10 test -S "$ARRAKIS_RUN_DIR/ctl.sock" || { cat "$WORK/daemon.log" >&2; die "the daemon did not start"; }

# Kernel echo servers on the outside host (not under the shim).
ECHO_PY='
import socket, sys, threading
port = int(sys.argv[2])
def tcp():
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((sys.argv[1], port)); l.listen()
    while True:
        c, _ = l.accept()
        def serve(c):
            while (b := c.recv(65536)):
                c.sendall(b)
            c.close()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((sys.argv[1], port))
    while True:
        b, a = u.recvfrom(65536); u.sendto(b, a)
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
tcp()
'
start_bg "$WORK/outside.log" timeout 120 ip netns exec "$NS" python3 -c "$ECHO_PY" 10.77.0.1 7000
poll 10 grep -q ready "$WORK/outside.log" || die "the outside echo server did not start"

# 1. A container's clients reach the outside host through the uplink.
CLIENT_PY='
import os, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
def lib(s):
    return not os.readlink(f"/proc/self/fd/{s.fileno()}").startswith("socket:")
s = socket.create_connection((host, port), timeout=10)
data = os.urandom(200000)
s.sendall(data)
got = b""
while len(got) < len(data):
    b = s.recv(65536)
    assert b, "EOF before the echo was complete"
    got += b
assert got == data, "the TCP echo differs"
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)
u.sendto(b"over the uplink", (host, port))
assert u.recvfrom(100)[0] == b"over the uplink", "the UDP echo differs"
print("tcp+udp ok lib=%d,%d" % (lib(s), lib(u)))
'
out=$(timeout 60 ip netns exec "$NS" "$ARRAKIS" run --backend emulator -- python3 -c "$CLIENT_PY" 10.77.0.1 7000) ||
  die "the container's clients could not reach 10.77.0.1 through the uplink: $out"
[ "$out" = "tcp+udp ok lib=1,1" ] || die "the container's clients: $out (expected library-OS sockets on both)"
say "a container's TCP (200000 bytes) and UDP clients reached 10.77.0.1 through the uplink, on library-OS sockets"

# 2. A kernel client outside reaches a container's listener at 10.77.0.2.
SERVER_PY='
import socket, sys
l = socket.socket(); l.bind(("0.0.0.0", int(sys.argv[1]))); l.listen()
print("ready", flush=True)
c, a = l.accept()
while (b := c.recv(65536)):
    c.sendall(b)
print("served", a[0], flush=True)
'
start_bg "$WORK/inside.log" timeout 60 ip netns exec "$NS" "$ARRAKIS" run --backend emulator -- python3 -c "$SERVER_PY" 7100
poll 10 grep -q ready "$WORK/inside.log" || { cat "$WORK/inside.log" >&2; die "the container's server did not start"; }
KCLIENT_PY='
import os, socket
s = socket.create_connection(("10.77.0.2", 7100), timeout=10)
data = os.urandom(100000)
s.sendall(data)
got = b""
while len(got) < len(data):
    b = s.recv(65536)
    assert b, "EOF before the echo was complete"
    got += b
assert got == data, "the echo from the container differs"
s.close()
print("ok")
'
out=$(timeout 30 ip netns exec "$NS" python3 -c "$KCLIENT_PY") || die "a kernel client could not reach the container at 10.77.0.2: $out"
poll 10 grep -q "served 10.77.0.1" "$WORK/inside.log" || { cat "$WORK/inside.log" >&2; die "the container did not see the outside client"; }
say "a kernel client at 10.77.0.1 reached the container listening on 10.77.0.2 through the uplink"

# 3. The uplink's counters.
read -r tx rx < <("$ARRAKIS" stats --json | python3 -c '
import json, sys
u = json.load(sys.stdin)["switch"]["uplink"]
print(u["tx_frames"], u["rx_frames"])') || die "arrakis stats shows no uplink"
[ "$tx" -gt 100 ] && [ "$rx" -gt 100 ] || die "the uplink counted only $tx frames out and $rx in"
say "arrakis stats: $tx frames out through the uplink, $rx in"

# 4. A second host: its own namespace, daemon, switch and uplink, routed to the first.
#      first host (NS)                               second host (NS2)
#      arkup0 10.77.0.1/24, veth 10.77.9.1/30  <->   veth 10.77.9.2/30, arkup1 10.77.0.129/25
#      containers 10.77.0.2/24                       containers 10.77.0.130/24
#    The /25 route to the second host's half is more specific than arkup0's /24, so each
#    kernel forwards the other half to its neighbour; the containers see one /24.
uplink_bytes() { # RUN_DIR -> "tx rx" frames through that daemon's switch's uplink
  ARRAKIS_RUN_DIR=$1 "$ARRAKIS" stats --json | python3 -c '
import json, sys
u = json.load(sys.stdin)["switch"]["uplink"]
print(u["tx_frames"], u["rx_frames"])'
}
ip netns add "$NS2" || die "ip netns add $NS2 failed"
in_ns2() { ip netns exec "$NS2" "$@"; }
in_ns2 ip link set lo up
ip link add arkv0 netns "$NS" type veth peer name arkv1 netns "$NS2" || die "cannot create the veth pair"
in_ns ip addr add 10.77.9.1/30 dev arkv0
in_ns ip link set arkv0 up
in_ns2 ip addr add 10.77.9.2/30 dev arkv1
in_ns2 ip link set arkv1 up
in_ns2 ip tuntap add dev arkup1 mode tun || die "cannot create the second host's tun interface"
in_ns2 ip addr add 10.77.0.129/25 dev arkup1
in_ns2 ip link set arkup1 up
in_ns ip route add 10.77.0.128/25 via 10.77.9.2
in_ns2 ip route add 10.77.0.0/24 via 10.77.9.1
in_ns sysctl -qw net.ipv4.ip_forward=1
in_ns2 sysctl -qw net.ipv4.ip_forward=1
mkdir -p "$RUN2"
start_bg "$WORK/daemon2.log" env ARRAKIS_RUN_DIR="$RUN2" ip netns exec "$NS2" "$ARRAKIS" daemon \
  --uplink arkup1 --uplink-addr 10.77.0.130/24
poll 10 test -S "$RUN2/ctl.sock" || { cat "$WORK/daemon2.log" >&2; die "the second host's daemon did not start"; }
read -r tx1 rx1 < <(uplink_bytes "$ARRAKIS_RUN_DIR") || die "arrakis stats shows no uplink on the first host"
# The second host's container: TCP and UDP echo on 0.0.0.0:7300, reporting its sockets.
SERVER2_PY='
import os, socket, sys, threading
port = int(sys.argv[1])
def lib(s):
    return int(not os.readlink(f"/proc/self/fd/{s.fileno()}").startswith("socket:"))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", port))
def udp():
    b, a = u.recvfrom(65536); u.sendto(b, a)
    print("udp from", a[0], "lib=%d" % lib(u), flush=True)
threading.Thread(target=udp, daemon=True).start()
l = socket.socket(); l.bind(("0.0.0.0", port)); l.listen()
print("ready", flush=True)
c, a = l.accept()
while (b := c.recv(65536)):
    c.sendall(b)
print("served", a[0], "lib=%d" % lib(c), flush=True)
'
start_bg "$WORK/host2.log" timeout 60 env ARRAKIS_RUN_DIR="$RUN2" ip netns exec "$NS2" \
  "$ARRAKIS" run --backend emulator -- python3 -c "$SERVER2_PY" 7300
poll 10 grep -q ready "$WORK/host2.log" || { cat "$WORK/host2.log" >&2; die "the second host's container did not start"; }
out=$(timeout 60 ip netns exec "$NS" "$ARRAKIS" run --backend emulator -- python3 -c "$CLIENT_PY" 10.77.0.130 7300) ||
  die "a container on the first host could not reach the second host's container at 10.77.0.130: $out"
[ "$out" = "tcp+udp ok lib=1,1" ] || die "the first host's container: $out (expected library-OS sockets on both)"
poll 10 grep -q "served 10.77.0.2 lib=1" "$WORK/host2.log" ||
  { cat "$WORK/host2.log" >&2; die "the second host's container did not serve 10.77.0.2 on a library-OS socket"; }
grep -q "udp from 10.77.0.2 lib=1" "$WORK/host2.log" ||
  { cat "$WORK/host2.log" >&2; die "the second host's container did not echo UDP from 10.77.0.2 on a library-OS socket"; }
read -r tx1b rx1b < <(uplink_bytes "$ARRAKIS_RUN_DIR") || die "arrakis stats shows no uplink on the first host"
read -r tx2 rx2 < <(uplink_bytes "$RUN2") || die "arrakis stats shows no uplink on the second host"
[ $((tx1b - tx1)) -gt 100 ] && [ $((rx1b - rx1)) -gt 100 ] && [ "$tx2" -gt 100 ] && [ "$rx2" -gt 100 ] ||
  die "the uplinks counted too few frames: first host $((tx1b - tx1)) out, $((rx1b - rx1)) in; second host $tx2 out, $rx2 in"
say "two hosts' switches: a container at 10.77.0.2 and one at 10.77.0.130 exchanged TCP (200000 bytes) and UDP,
   library-OS sockets at both ends; uplink frames out/in: first host $((tx1b - tx1))/$((rx1b - rx1)), second $tx2/$rx2"
echo "PASS: the switch's uplink, both directions, and two hosts' switches connected ($((SECONDS - START)) s)"
