//! Differential test harness for the Arrakis shim.
//!
//! The same small programs (C sources in `cases/`, plus the Rust program
//! `src/bin/rust_cases.rs`) run natively and with `LD_PRELOAD=libarrakis.so`;
//! each prints `case: observation` lines, and the harness
//! (`tests/differential.rs`) compares them case by case.
//!
//! * [`observe`] parses output into cases and renders per-case diffs.
//! * [`runner`] builds the C programs, locates the shim and runs a program in
//!   a fresh directory with a timeout.
//! * [`fake_daemon`] stands in for `arrakis daemon` and its switch when testing the library
//!   OS's emulator backend by itself.
//!
//! See `README.md` for how cases are written.

pub mod fake_daemon;
pub mod observe;
pub mod runner;
