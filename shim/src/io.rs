//! Reads, writes and descriptor management: `read`/`write` and their vector, positional and
//! fortified forms, `sendfile`, `lseek`, `fsync`, `ftruncate`, `close`, `dup*`, `fcntl`,
//! `ioctl`, and the fd-creating `pipe`/`eventfd`.

use arrakis_core::fd::table;
use arrakis_core::Errno;
use libc::{c_int, c_uint, c_ulong, c_void, iovec, off64_t, off_t, size_t, ssize_t};
use libc::{SYS_fdatasync, SYS_fsync, SYS_ftruncate, SYS_lseek, SYS_pread64, SYS_preadv, SYS_pwrite64};
use libc::{SYS_pwritev, SYS_read, SYS_readv, SYS_write, SYS_writev};

use crate::{errno, lib};

fd_passthrough! {
    @files
    fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t = sys(SYS_read);
    fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t = sys(SYS_write);
    fn readv(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t = sys(SYS_readv);
    fn writev(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t = sys(SYS_writev);
    fn pread(fd: c_int, buf: *mut c_void, n: size_t, off: off_t) -> ssize_t = sys(SYS_pread64);
    fn pread64(fd: c_int, buf: *mut c_void, n: size_t, off: off64_t) -> ssize_t = sys(SYS_pread64);
    fn pwrite(fd: c_int, buf: *const c_void, n: size_t, off: off_t) -> ssize_t = sys(SYS_pwrite64);
    fn pwrite64(fd: c_int, buf: *const c_void, n: size_t, off: off64_t) -> ssize_t = sys(SYS_pwrite64);
    fn preadv(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t) -> ssize_t = sys(SYS_preadv);
    fn preadv64(fd: c_int, iov: *const iovec, cnt: c_int, off: off64_t) -> ssize_t = sys(SYS_preadv);
    fn pwritev(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t) -> ssize_t = sys(SYS_pwritev);
    fn pwritev64(fd: c_int, iov: *const iovec, cnt: c_int, off: off64_t) -> ssize_t = sys(SYS_pwritev);
    fn preadv2(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t, flags: c_int) -> ssize_t;
    fn preadv64v2(fd: c_int, iov: *const iovec, cnt: c_int, off: off64_t, flags: c_int) -> ssize_t;
    fn pwritev2(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t, flags: c_int) -> ssize_t;
    fn pwritev64v2(fd: c_int, iov: *const iovec, cnt: c_int, off: off64_t, flags: c_int) -> ssize_t;
    fn lseek(fd: c_int, off: off_t, whence: c_int) -> off_t = sys(SYS_lseek);
    fn lseek64(fd: c_int, off: off64_t, whence: c_int) -> off64_t = sys(SYS_lseek);
    fn fsync(fd: c_int) -> c_int = sys(SYS_fsync);
    fn fdatasync(fd: c_int) -> c_int = sys(SYS_fdatasync);
    fn ftruncate(fd: c_int, len: off_t) -> c_int = sys(SYS_ftruncate);
    fn ftruncate64(fd: c_int, len: off64_t) -> c_int = sys(SYS_ftruncate);
    // Fortified forms: the kernel path calls glibc's own checking version, so an overflow
    // aborts exactly as it would natively.
    fn __read_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t) -> ssize_t;
    fn __pread_chk(fd: c_int, buf: *mut c_void, n: size_t, off: off_t, buflen: size_t) -> ssize_t;
    fn __pread64_chk(fd: c_int, buf: *mut c_void, n: size_t, off: off64_t, buflen: size_t) -> ssize_t;
}

export! {
    /// Interposed `sendfile`: kernel fds pass through; to a library-OS socket the shim
    /// copies (see `libos::sendfile`); from one, `EINVAL`/`ESPIPE` as Linux for sockets.
    ///
    /// # Safety
    /// The C contract of `sendfile(2)`.
    fn sendfile(out_fd: c_int, in_fd: c_int, off: *mut off_t, n: size_t) -> ssize_t {
        fast if table().is_kernel(out_fd) && table().is_kernel(in_fd);
        if table().is_kernel(out_fd) && table().is_kernel(in_fd) {
            return real!(sendfile(out_fd, in_fd, off, n));
        }
        // SAFETY: the caller's offset pointer (off_t is 64-bit here).
        unsafe { crate::libos::sendfile(out_fd, in_fd, off.cast(), n) }
    }
}

/// Interposed `sendfile64`.
///
/// # Safety
/// The C contract of `sendfile64(2)`.
#[no_mangle]
pub unsafe extern "C" fn sendfile64(out_fd: c_int, in_fd: c_int, off: *mut off64_t, n: size_t) -> ssize_t {
    if table().is_kernel(out_fd) && table().is_kernel(in_fd) {
        return real!(sendfile64(out_fd, in_fd, off, n));
    }
    // SAFETY: the caller's offset pointer.
    unsafe { crate::libos::sendfile(out_fd, in_fd, off.cast(), n) }
}

export! {
    /// Interposed `close`. A kernel fd passes through. A library-OS fd leaves the table, its
    /// kernel placeholder is closed, and the object is released when its last fd goes.
    ///
    /// # Safety
    /// The C contract of `close(2)`.
    fn close(fd: c_int) -> c_int {
        fast if table().is_kernel(fd);
        if table().is_kernel(fd) || lib::inside() {
            return real!(close(fd) else sys(libc::SYS_close, fd));
        }
        lib::guarded("close", || {
            let obj = table().remove(fd);
            let r = real!(close(fd) else sys(libc::SYS_close, fd));
            if r < 0 {
                return Err(Errno(errno::get()));
            }
            drop(obj);
            Ok(r)
        })
    }
}

/// Interposed `close_range`: the kernel closes the range; the table forgets the library-OS
/// objects in it (unless only `CLOSE_RANGE_CLOEXEC` was asked for).
///
/// # Safety
/// The C contract of `close_range(2)`.
#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    let r = real!(close_range(first, last, flags) else sys(libc::SYS_close_range, first, last, flags));
    if r == 0 && flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0 && table().any_library_fds() {
        let _e = errno::Saved::new();
        let stale = table().remove_range(first, last);
        drop(stale);
    }
    r
}

/// After the kernel made `new` a copy of `old`, bring the table in line. Returns `new`, or
/// fails with `EMFILE` (closing `new`) if a library-OS object cannot live at that number.
fn after_dup(old: c_int, new: c_int) -> c_int {
    if new < 0 || (table().is_kernel(old) && table().is_kernel(new)) {
        return new;
    }
    let saved = errno::Saved::new();
    lib::guarded("dup", || match table().duplicated(old, new) {
        Ok(previous) => {
            drop(previous);
            Ok(new)
        }
        Err(e) => {
            real!(close(new) else sys(libc::SYS_close, new));
            std::mem::forget(saved);
            Err(e)
        }
    })
}

/// Interposed `dup`.
///
/// # Safety
/// The C contract of `dup(2)`.
#[no_mangle]
pub unsafe extern "C" fn dup(old: c_int) -> c_int {
    after_dup(old, real!(dup(old) else sys(libc::SYS_dup, old)))
}

/// Interposed `dup2`: duplicating over an open library-OS fd releases it, as the kernel
/// closes the placeholder.
///
/// # Safety
/// The C contract of `dup2(2)`.
#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    let r = real!(dup2(old, new) else sys(libc::SYS_dup2, old, new));
    if old == new {
        return r;
    }
    after_dup(old, r)
}

/// Interposed `dup3`.
///
/// # Safety
/// The C contract of `dup3(2)`.
#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    after_dup(old, real!(dup3(old, new, flags) else sys(libc::SYS_dup3, old, new, flags)))
}

fn fcntl_common(fd: c_int, cmd: c_int, arg: c_ulong, call: &'static str) -> c_int {
    // A library-OS fd's placeholder carries its flags and FD_CLOEXEC, so fcntl goes to the
    // kernel for every fd; O_NONBLOCK is mirrored into the object afterwards.
    // The third argument is an int or a pointer by `cmd`; passed on as the register it came in.
    if !table().is_kernel(fd) && !lib::inside() && crate::vfs::is_file(fd) && crate::vfs::is_lock_cmd(cmd) {
        return crate::vfs::fcntl_lock(cmd, arg);
    }
    let r = if call == "fcntl64" {
        real!(fcntl64(fd, cmd, arg) else sys(libc::SYS_fcntl, fd, cmd, arg))
    } else {
        real!(fcntl(fd, cmd, arg) else sys(libc::SYS_fcntl, fd, cmd, arg))
    };
    match cmd {
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => after_dup(fd, r),
        libc::F_SETFL | libc::F_GETFL if crate::vfs::is_file(fd) => crate::vfs::fcntl(fd, cmd, arg, r),
        libc::F_SETFL if !table().is_kernel(fd) => crate::libos::fcntl(fd, cmd, arg, r),
        _ => r,
    }
}

export! {
    /// Interposed `fcntl` (variadic in C: the optional argument arrives in the third integer
    /// register, which is where x86_64 passes it either way).
    ///
    /// # Safety
    /// The C contract of `fcntl(2)`.
    fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
        fast if table().is_kernel(fd) && cmd != libc::F_DUPFD && cmd != libc::F_DUPFD_CLOEXEC;
        fcntl_common(fd, cmd, arg, "fcntl")
    }
}

export! {
    /// Interposed `fcntl64` (what `fcntl` is called under `_FILE_OFFSET_BITS=64`).
    ///
    /// # Safety
    /// The C contract of `fcntl(2)`.
    fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
        fast if table().is_kernel(fd) && cmd != libc::F_DUPFD && cmd != libc::F_DUPFD_CLOEXEC;
        fcntl_common(fd, cmd, arg, "fcntl64")
    }
}

export! {
    /// Interposed `ioctl` (variadic in C; see `fcntl`).
    ///
    /// # Safety
    /// The C contract of `ioctl(2)`.
    fn ioctl(fd: c_int, request: c_ulong, arg: c_ulong) -> c_int {
        fast if table().is_kernel(fd);
        if table().is_kernel(fd) {
            return real!(ioctl(fd, request, arg) else sys(libc::SYS_ioctl, fd, request, arg));
        }
        // SAFETY: the caller's arguments, same contract.
        unsafe { crate::libos::ioctl(fd, request, arg) }
    }
}

/// Records the two fds the kernel just created in `fds`, dropping stale library-OS entries.
///
/// # Safety
/// `fds` must point to two readable ints when `r == 0`.
pub(crate) unsafe fn created_pair(r: c_int, fds: *const c_int) -> c_int {
    if r == 0 && !fds.is_null() && table().any_library_fds() {
        let _e = errno::Saved::new();
        // SAFETY: the kernel just wrote two fds there (caller's contract).
        let (a, b) = unsafe { (*fds, *fds.add(1)) };
        drop(table().kernel_fd_created(a));
        drop(table().kernel_fd_created(b));
    }
    r
}

/// Records one fd the kernel just created (see [`arrakis_core::FdTable::kernel_fd_created`]).
#[inline]
pub(crate) fn created(fd: c_int) -> c_int {
    if fd >= 0 && table().any_library_fds() {
        let _e = errno::Saved::new();
        drop(table().kernel_fd_created(fd));
    }
    fd
}

/// Records the fd under a `DIR` that `opendir` just opened.
pub(crate) fn created_dir(d: *mut libc::DIR) -> *mut libc::DIR {
    if !d.is_null() && table().any_library_fds() {
        // SAFETY: `d` is a live DIR that libc just returned.
        created(unsafe { libc::dirfd(d) });
    }
    d
}

/// Records the fd under a `FILE` that `fopen` just opened.
pub(crate) fn created_file(fp: *mut libc::FILE) -> *mut libc::FILE {
    if !fp.is_null() && table().any_library_fds() {
        // SAFETY: `fp` is a live FILE that libc just returned.
        created(unsafe { libc::fileno(fp) });
    }
    fp
}

/// Interposed `pipe`.
///
/// # Safety
/// The C contract of `pipe(2)`.
#[no_mangle]
pub unsafe extern "C" fn pipe(fds: *mut c_int) -> c_int {
    let r = real!(pipe(fds) else sys(libc::SYS_pipe, fds));
    // SAFETY: on success the kernel wrote two fds to `fds`.
    unsafe { created_pair(r, fds) }
}

/// Interposed `pipe2`.
///
/// # Safety
/// The C contract of `pipe2(2)`.
#[no_mangle]
pub unsafe extern "C" fn pipe2(fds: *mut c_int, flags: c_int) -> c_int {
    let r = real!(pipe2(fds, flags) else sys(libc::SYS_pipe2, fds, flags));
    // SAFETY: on success the kernel wrote two fds to `fds`.
    unsafe { created_pair(r, fds) }
}

/// Interposed `eventfd`.
///
/// # Safety
/// The C contract of `eventfd(2)`.
#[no_mangle]
pub unsafe extern "C" fn eventfd(initval: c_uint, flags: c_int) -> c_int {
    created(real!(eventfd(initval, flags) else sys(libc::SYS_eventfd2, initval, flags)))
}
