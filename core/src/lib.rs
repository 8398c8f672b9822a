//! Arrakis/P, the library OS. Everything here is safe Rust; the only way in from a program is
//! the `shim` crate, which turns C calls into calls on this crate and errors into `errno`.
//!
//! Layers, top to bottom:
//!
//! ```text
//!   shim (C ABI, unsafe)   extern "C" read/write/socket/...: look the fd up, dispatch or pass through
//!   core::fd               descriptor table: kernel fd number -> kind (+ library-OS object)
//!   core::{net,event,fs}   library-OS objects (later issues): sockets, epoll, files on VSAs
//!   backends               devices: loopback, emulator, vfio (later issues)
//! ```
//!
//! A call on a kernel fd never enters this crate beyond one lock-free table lookup
//! ([`fd::FdTable::kind`]); the shim then calls the real libc function. Errors produced by the
//! library OS are [`Errno`] values and become the C `errno` in exactly one place (the shim's
//! `errno::fail`).
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod event;
pub mod exec;
pub mod fd;
pub mod fs;
pub mod keeper;
pub mod log;
pub mod net;

pub use error::{Errno, SysResult};
pub use fd::{FdKind, FdObject, FdTable};
