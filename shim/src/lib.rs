//! `libarrakis.so`, the LD_PRELOAD shim of Arrakis for Linux.
//!
//! This crate is the C ABI and nothing else: every export is a thin `extern "C"` wrapper with
//! one shape —
//!
//! 1. fast path, inline: look the fd up in the descriptor table (`arrakis_core::fd::table()`,
//!    lock-free); a kernel fd (every fd, in this build) whose real libc function [`real`] has
//!    resolved → tail jump to it, result and `errno` untouched;
//! 2. everything else in a `#[cold]` function: resolution on demand, fd bookkeeping, and
//!    library-OS fds → safe code in `arrakis_core` inside [`lib::guarded`], which keeps panics
//!    from crossing `extern "C"` and turns the typed error into `errno` in one place.
//!
//! All `unsafe` of the project's C boundary lives here; each block says why it is sound.
//! Variadic C functions (`open`, `fcntl`, `ioctl`) are defined with their fixed register
//! arguments, which is ABI-compatible on x86_64 SysV and AArch64 Linux; `execl*`, whose
//! argument count is unbounded, use a small assembly trampoline (x86_64). redhook is not used:
//! it is unmaintained and cannot hook variadic functions.

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
compile_error!("the Arrakis shim targets x86_64 Linux (glibc): see docs/ARCHITECTURE.md");

use libc::c_int;

#[macro_use]
mod macros;

mod carry;
mod errno;
mod event;
mod file;
mod init;
mod io;
mod lib_path;
mod libos;
mod net;
mod process;
mod real;
mod vfs;

pub(crate) use lib_path as lib;

/// The value an intercepted call returns on failure: `-1` for integers, null for pointers.
pub(crate) trait Fail {
    fn fail() -> Self;
}

macro_rules! impl_fail_int {
    ($($t:ty),*) => { $(impl Fail for $t { #[inline] fn fail() -> Self { -1 } })* };
}
impl_fail_int!(i32, i64, isize);

impl<T> Fail for Vec<T> {
    #[inline]
    fn fail() -> Self {
        Vec::new()
    }
}

impl<A: smallvec::Array> Fail for smallvec::SmallVec<A> {
    #[inline]
    fn fail() -> Self {
        smallvec::SmallVec::new()
    }
}

impl<T> Fail for *mut T {
    #[inline]
    fn fail() -> Self {
        std::ptr::null_mut()
    }
}

/// Converts a raw `syscall(2)` return into the intercepted function's return type.
pub(crate) trait FromSys {
    fn from_sys(r: libc::c_long) -> Self;
}
impl FromSys for i32 {
    #[inline]
    fn from_sys(r: libc::c_long) -> Self {
        r as c_int
    }
}
impl FromSys for i64 {
    #[inline]
    fn from_sys(r: libc::c_long) -> Self {
        r
    }
}
impl FromSys for isize {
    #[inline]
    fn from_sys(r: libc::c_long) -> Self {
        r as isize
    }
}
