//! File calls by path and by fd: the `open` family, `creat`, the `stat` family (including
//! glibc's old `__xstat` ABI and `statx`), `truncate`, `unlink`, `rename`, `mkdir`, `rmdir`,
//! `access`, directories and the stdio entry points that open or close files. In this build
//! no path is mounted on a VSA, so path calls pass through; calls relative to a directory fd
//! or on an fd check that the fd is a kernel fd.

use arrakis_core::fd::table;
use libc::{c_char, c_int, c_uint, c_void, dirent, dirent64, mode_t, off64_t, off_t, DIR, FILE};
use libc::{SYS_access, SYS_faccessat, SYS_fstat, SYS_mkdir, SYS_mkdirat, AT_FDCWD};
use libc::{SYS_newfstatat, SYS_openat, SYS_rename, SYS_renameat, SYS_rmdir, SYS_truncate};
use libc::{SYS_unlink, SYS_unlinkat};

use crate::lib;

type Stat = c_void;

passthrough! {
    fn open(path: *const c_char, flags: c_int, mode: c_uint) -> c_int = sys(SYS_openat, AT_FDCWD) => created;
    fn open64(path: *const c_char, flags: c_int, mode: c_uint) -> c_int = sys(SYS_openat, AT_FDCWD) => created;
    fn __open_2(path: *const c_char, flags: c_int) -> c_int => created;
    fn __open64_2(path: *const c_char, flags: c_int) -> c_int => created;
    fn creat(path: *const c_char, mode: mode_t) -> c_int => created;
    fn creat64(path: *const c_char, mode: mode_t) -> c_int => created;
    fn stat(path: *const c_char, buf: *mut Stat) -> c_int;
    fn stat64(path: *const c_char, buf: *mut Stat) -> c_int;
    fn lstat(path: *const c_char, buf: *mut Stat) -> c_int;
    fn lstat64(path: *const c_char, buf: *mut Stat) -> c_int;
    fn __xstat(ver: c_int, path: *const c_char, buf: *mut Stat) -> c_int;
    fn __xstat64(ver: c_int, path: *const c_char, buf: *mut Stat) -> c_int;
    fn __lxstat(ver: c_int, path: *const c_char, buf: *mut Stat) -> c_int;
    fn __lxstat64(ver: c_int, path: *const c_char, buf: *mut Stat) -> c_int;
    fn truncate(path: *const c_char, len: off_t) -> c_int = sys(SYS_truncate);
    fn truncate64(path: *const c_char, len: off64_t) -> c_int = sys(SYS_truncate);
    fn unlink(path: *const c_char) -> c_int = sys(SYS_unlink);
    fn rename(old: *const c_char, new: *const c_char) -> c_int = sys(SYS_rename);
    fn mkdir(path: *const c_char, mode: mode_t) -> c_int = sys(SYS_mkdir);
    fn rmdir(path: *const c_char) -> c_int = sys(SYS_rmdir);
    fn access(path: *const c_char, mode: c_int) -> c_int = sys(SYS_access);
    fn opendir(path: *const c_char) -> *mut DIR => created_dir;
    fn readdir(dir: *mut DIR) -> *mut dirent;
    fn readdir64(dir: *mut DIR) -> *mut dirent64;
    fn closedir(dir: *mut DIR) -> c_int;
    fn fopen(path: *const c_char, mode: *const c_char) -> *mut FILE => created_file;
    fn fopen64(path: *const c_char, mode: *const c_char) -> *mut FILE => created_file;
    fn fclose(fp: *mut FILE) -> c_int;
}

fd_passthrough! {
    fn openat(dirfd: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int = sys(SYS_openat) => created;
    fn openat64(dirfd: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int = sys(SYS_openat) => created;
    fn __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int => created;
    fn __openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int => created;
    fn fstat(fd: c_int, buf: *mut Stat) -> c_int = sys(SYS_fstat);
    fn fstat64(fd: c_int, buf: *mut Stat) -> c_int = sys(SYS_fstat);
    fn fstatat(dirfd: c_int, path: *const c_char, buf: *mut Stat, flags: c_int) -> c_int = sys(SYS_newfstatat);
    fn fstatat64(dirfd: c_int, path: *const c_char, buf: *mut Stat, flags: c_int) -> c_int = sys(SYS_newfstatat);
    fn statx(dirfd: c_int, path: *const c_char, flags: c_int, mask: c_uint, buf: *mut c_void) -> c_int
        = sys(libc::SYS_statx);
    fn unlinkat(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int = sys(SYS_unlinkat);
    fn mkdirat(dirfd: c_int, path: *const c_char, mode: mode_t) -> c_int = sys(SYS_mkdirat);
    fn faccessat(dirfd: c_int, path: *const c_char, mode: c_int, flags: c_int) -> c_int = sys(SYS_faccessat);
    fn fdopendir(fd: c_int) -> *mut DIR;
    fn fdopen(fd: c_int, mode: *const c_char) -> *mut FILE;
    // glibc's pre-2.33 stat ABI: the version comes first.
    fn __fxstat([ver: c_int] fd: c_int, buf: *mut Stat) -> c_int;
    fn __fxstat64([ver: c_int] fd: c_int, buf: *mut Stat) -> c_int;
    fn __fxstatat([ver: c_int] dirfd: c_int, path: *const c_char, buf: *mut Stat, flags: c_int) -> c_int;
    fn __fxstatat64([ver: c_int] dirfd: c_int, path: *const c_char, buf: *mut Stat, flags: c_int) -> c_int;
}

/// Interposed `renameat`.
///
/// # Safety
/// The C contract of `renameat(2)`.
#[no_mangle]
pub unsafe extern "C" fn renameat(
    olddir: c_int,
    old: *const c_char,
    newdir: c_int,
    new: *const c_char,
) -> c_int {
    if table().is_kernel(olddir) && table().is_kernel(newdir) {
        return real!(renameat(olddir, old, newdir, new) else sys(SYS_renameat, olddir, old, newdir, new));
    }
    lib::unsupported(if table().is_kernel(olddir) { newdir } else { olddir }, "renameat")
}

/// Interposed `renameat2`.
///
/// # Safety
/// The C contract of `renameat2(2)`.
#[no_mangle]
pub unsafe extern "C" fn renameat2(
    olddir: c_int,
    old: *const c_char,
    newdir: c_int,
    new: *const c_char,
    flags: c_uint,
) -> c_int {
    if table().is_kernel(olddir) && table().is_kernel(newdir) {
        return real!(renameat2(olddir, old, newdir, new, flags));
    }
    lib::unsupported(if table().is_kernel(olddir) { newdir } else { olddir }, "renameat2")
}
