#!/usr/bin/env bash
# The whole test suite of Arrakis for Linux: the README's test command, and what .ci/run runs.
#   1. lint: cargo fmt --check, cargo clippy -D warnings
#   2. build and unit tests; the differential suite (native vs shim, compat-tests/tests)
#   3. end-to-end with real servers (memcached, redis) under the shim, sockets on the kernel
#      and on the library OS (kernel clients through the listeners' kernel halves), and on
#      the emulator backend (daemon, switch, clients under the shim and not, control plane),
#      and redis with its files on a virtual storage area (kill -9, FUSE, fsck)
#   4. a sweep of 28 real programs (java, node, nginx, postgres, git, ...) native vs shim
#   5. external suites (CPython's regression tests, tornado; CPython's socket and event-loop
#      tests with sockets on the library OS) native vs shim
# Every step is bounded in time; the script stops at the first failing step.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
step() { printf '\n=== %s (%ds)\n' "$*" $((SECONDS - start)); }

step "dependencies"
compat-tests/install-deps.sh

step "lint"
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings

step "build and unit + differential tests"
cargo build --release
cargo test --release --workspace

step "end-to-end: memcached and redis under the shim"
compat-tests/e2e/servers.sh
step "end-to-end: the same servers with their sockets on the library OS, clients on the kernel"
ARRAKIS_BACKEND=loopback ARRAKIS_KERNEL_CLIENTS=1 ARRAKIS_SKIP_BUILD=1 compat-tests/e2e/servers.sh

step "end-to-end: the emulator backend (daemon, switch, bypass and kernel clients, revoke, kill -9, daemon restart)"
ARRAKIS_SKIP_BUILD=1 compat-tests/e2e/emulator.sh
step "end-to-end: redis (appendfsync always) on a VSA: kill -9 rounds, BGSAVE/BGREWRITEAOF, arrakis run views, FUSE, fsck"
ARRAKIS_SKIP_BUILD=1 compat-tests/e2e/storage.sh
step "end-to-end: the switch's uplink (tun in a network namespace the test creates)"
ARRAKIS_SKIP_BUILD=1 compat-tests/e2e/uplink.sh

step "sweep of real programs, native vs shim"
SWEEP_NO_BUILD=1 SWEEP_REQUIRE_ALL=1 compat-tests/sweep/run.sh

step "external suites: CPython and tornado (kernel sockets), CPython's net tests (loopback), native vs shim"
compat-tests/external/run.sh cpython tornado cpython-net

step "all tests passed in $((SECONDS - start)) s"
