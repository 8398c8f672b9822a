//! Demos and benchmarks: unmodified servers under the shim versus the kernel path.
//!
//! Everything here is a script; this crate only keeps the directory a workspace member.
//!
//! * `demo.sh` — the README's quick start: redis-server natively and under `arrakis run`,
//!   redis-benchmark against both, a table of requests/s and p50 latency.
//! * `bench-interpose.sh` — the interposition cost on the kernel path: instructions per call
//!   (callgrind) for `write`, `read`, `epoll_wait` and per redis GET, and redis GET latency
//!   with the two servers interleaved. Results go to `docs/BENCHMARKS.md`.
//! * `bench/syscalls.c`, `bench/getlat.c` — the C helpers those scripts compile with `cc`.
//! * `lib.sh` — shell helpers shared with `compat-tests/e2e/servers.sh` (packages, ports,
//!   starting and stopping servers, checking that the shim is mapped).
