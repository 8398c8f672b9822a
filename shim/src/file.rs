//! File calls by path and by fd: the `open` family, `creat`, the `stat` family (including
//! glibc's old `__xstat` ABI and `statx`), `truncate`, `unlink`, `rename`, `mkdir`, `rmdir`,
//! `access`, `chdir`/`getcwd`, `realpath`, attribute changes, directories (`DIR *`) and the
//! stdio entry points that open, identify or close files.
//!
//! A path call's fast path is one atomic load: no mount configured (`ARRAKIS_VOLUMES` unset)
//! and, for `*at` calls, a kernel directory fd → tail jump to libc. Otherwise the path is
//! resolved (`vfs::with_path`): kernel paths go to libc, volume paths to the library OS.

use arrakis_core::fd::table;
use arrakis_core::fs::file as vf;
use arrakis_core::fs::mount;
use arrakis_core::fs::RenameFlags;
use arrakis_core::Errno;
use libc::{
    c_char, c_int, c_uint, c_void, dirent, dirent64, mode_t, off64_t, off_t, size_t, ssize_t, DIR, FILE,
};
use libc::{gid_t, uid_t, AT_FDCWD};

use crate::{errno, io, lib, vfs};

type Stat = c_void;

/// A path export: fast when no mount exists and the directory fd (if any) is a kernel fd;
/// else `vfs::with_path` picks `kernel` (with the path to use bound to `$kp`) or `volume`.
macro_rules! path_call {
    ($( fn $name:ident ( $($a:ident : $t:ty),* $(,)? ) -> $ret:ty
        [$dirfd:expr, $path:ident]
        kernel |$kp:ident| $kernel:expr;
        volume |$loc:ident| $vol:expr; )*) => {$(
        export! {
            /// Interposed: kernel paths pass through to libc; paths under a mount go to the
            /// library OS.
            ///
            /// # Safety
            /// The C contract of the libc function of the same name.
            fn $name($($a: $t),*) -> $ret {
                fast if !mount::active() && table().is_kernel($dirfd);
                if lib::inside() {
                    let $kp = $path;
                    return $kernel;
                }
                // SAFETY: the caller's path.
                #[allow(unused_unsafe)]
                unsafe {
                    vfs::with_path($dirfd, $path, stringify!($name), |$kp| $kernel, |$loc| $vol)
                }
            }
        }
    )*};
}

fn cred() -> vf::Cred {
    vf::Cred::current()
}

path_call! {
    fn open(path: *const c_char, flags: c_int, mode: c_uint) -> c_int [AT_FDCWD, path]
        kernel |p| io::created(real!(open(p, flags, mode) else sys(libc::SYS_openat, AT_FDCWD, p, flags, mode)));
        volume |l| vfs::open(l, flags, vfs::mode_of(flags, mode));
    fn open64(path: *const c_char, flags: c_int, mode: c_uint) -> c_int [AT_FDCWD, path]
        kernel |p| io::created(real!(open64(p, flags, mode) else sys(libc::SYS_openat, AT_FDCWD, p, flags, mode)));
        volume |l| vfs::open(l, flags, vfs::mode_of(flags, mode));
    fn __open_2(path: *const c_char, flags: c_int) -> c_int [AT_FDCWD, path]
        kernel |p| io::created(real!(__open_2(p, flags)));
        volume |l| vfs::open(l, flags, 0);
    fn __open64_2(path: *const c_char, flags: c_int) -> c_int [AT_FDCWD, path]
        kernel |p| io::created(real!(__open64_2(p, flags)));
        volume |l| vfs::open(l, flags, 0);
    fn creat(path: *const c_char, mode: mode_t) -> c_int [AT_FDCWD, path]
        kernel |p| io::created(real!(creat(p, mode)));
        volume |l| vfs::open(l, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, mode);
    fn creat64(path: *const c_char, mode: mode_t) -> c_int [AT_FDCWD, path]
        kernel |p| io::created(real!(creat64(p, mode)));
        volume |l| vfs::open(l, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, mode);
    fn openat(dirfd: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int [dirfd, path]
        kernel |p| io::created(real!(openat(dirfd, p, flags, mode) else sys(libc::SYS_openat, dirfd, p, flags, mode)));
        volume |l| vfs::open(l, flags, vfs::mode_of(flags, mode));
    fn openat64(dirfd: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int [dirfd, path]
        kernel |p| io::created(real!(openat64(dirfd, p, flags, mode) else sys(libc::SYS_openat, dirfd, p, flags, mode)));
        volume |l| vfs::open(l, flags, vfs::mode_of(flags, mode));
    fn __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int [dirfd, path]
        kernel |p| io::created(real!(__openat_2(dirfd, p, flags)));
        volume |l| vfs::open(l, flags, 0);
    fn __openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int [dirfd, path]
        kernel |p| io::created(real!(__openat64_2(dirfd, p, flags)));
        volume |l| vfs::open(l, flags, 0);

    fn stat(path: *const c_char, buf: *mut Stat) -> c_int [AT_FDCWD, path]
        kernel |p| real!(stat(p, buf));
        volume |l| vfs::stat_loc(&l, buf);
    fn stat64(path: *const c_char, buf: *mut Stat) -> c_int [AT_FDCWD, path]
        kernel |p| real!(stat64(p, buf));
        volume |l| vfs::stat_loc(&l, buf);
    fn lstat(path: *const c_char, buf: *mut Stat) -> c_int [AT_FDCWD, path]
        kernel |p| real!(lstat(p, buf));
        volume |l| vfs::stat_loc(&l, buf);
    fn lstat64(path: *const c_char, buf: *mut Stat) -> c_int [AT_FDCWD, path]
        kernel |p| real!(lstat64(p, buf));
        volume |l| vfs::stat_loc(&l, buf);
    fn __xstat(ver: c_int, path: *const c_char, buf: *mut Stat) -> c_int [AT_FDCWD, path]
        kernel |p| real!(__xstat(ver, p, buf));
        volume |l| vfs::stat_loc(&l, buf);
    fn __xstat64(ver: c_int, path: *const c_char, buf: *mut Stat) -> c_int [AT_FDCWD, path]
        kernel |p| real!(__xstat64(ver, p, buf));
        volume |l| vfs::stat_loc(&l, buf);
    fn __lxstat(ver: c_int, path: *const c_char, buf: *mut Stat) -> c_int [AT_FDCWD, path]
        kernel |p| real!(__lxstat(ver, p, buf));
        volume |l| vfs::stat_loc(&l, buf);
    fn __lxstat64(ver: c_int, path: *const c_char, buf: *mut Stat) -> c_int [AT_FDCWD, path]
        kernel |p| real!(__lxstat64(ver, p, buf));
        volume |l| vfs::stat_loc(&l, buf);

    fn truncate(path: *const c_char, len: off_t) -> c_int [AT_FDCWD, path]
        kernel |p| real!(truncate(p, len) else sys(libc::SYS_truncate, p, len));
        volume |l| vf::truncate(&l, len, &cred()).map(|()| 0);
    fn truncate64(path: *const c_char, len: off64_t) -> c_int [AT_FDCWD, path]
        kernel |p| real!(truncate64(p, len) else sys(libc::SYS_truncate, p, len));
        volume |l| vf::truncate(&l, len, &cred()).map(|()| 0);
    fn unlink(path: *const c_char) -> c_int [AT_FDCWD, path]
        kernel |p| real!(unlink(p) else sys(libc::SYS_unlink, p));
        volume |l| vf::unlink(&l).map(|()| 0);
    fn unlinkat(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int [dirfd, path]
        kernel |p| real!(unlinkat(dirfd, p, flags) else sys(libc::SYS_unlinkat, dirfd, p, flags));
        volume |l| {
            if flags & !libc::AT_REMOVEDIR != 0 {
                return Err(Errno::EINVAL);
            }
            if flags & libc::AT_REMOVEDIR != 0 { vf::rmdir(&l) } else { vf::unlink(&l) }.map(|()| 0)
        };
    fn mkdir(path: *const c_char, mode: mode_t) -> c_int [AT_FDCWD, path]
        kernel |p| real!(mkdir(p, mode) else sys(libc::SYS_mkdir, p, mode));
        volume |l| vf::mkdir(&l, mode, &cred()).map(|()| 0);
    fn mkdirat(dirfd: c_int, path: *const c_char, mode: mode_t) -> c_int [dirfd, path]
        kernel |p| real!(mkdirat(dirfd, p, mode) else sys(libc::SYS_mkdirat, dirfd, p, mode));
        volume |l| vf::mkdir(&l, mode, &cred()).map(|()| 0);
    fn rmdir(path: *const c_char) -> c_int [AT_FDCWD, path]
        kernel |p| real!(rmdir(p) else sys(libc::SYS_rmdir, p));
        volume |l| vf::rmdir(&l).map(|()| 0);
    fn access(path: *const c_char, mode: c_int) -> c_int [AT_FDCWD, path]
        kernel |p| real!(access(p, mode) else sys(libc::SYS_access, p, mode));
        volume |l| access_check(&l, mode);
    fn eaccess(path: *const c_char, mode: c_int) -> c_int [AT_FDCWD, path]
        kernel |p| real!(eaccess(p, mode));
        volume |l| access_check(&l, mode);
    fn euidaccess(path: *const c_char, mode: c_int) -> c_int [AT_FDCWD, path]
        kernel |p| real!(euidaccess(p, mode));
        volume |l| access_check(&l, mode);
    fn faccessat(dirfd: c_int, path: *const c_char, mode: c_int, flags: c_int) -> c_int [dirfd, path]
        kernel |p| real!(faccessat(dirfd, p, mode, flags) else sys(libc::SYS_faccessat, dirfd, p, mode));
        volume |l| access_check(&l, mode);

    fn chmod(path: *const c_char, mode: mode_t) -> c_int [AT_FDCWD, path]
        kernel |p| real!(chmod(p, mode));
        volume |l| vf::setattr(&l, vfs::chmod_set(mode)).map(|()| 0);
    fn fchmodat(dirfd: c_int, path: *const c_char, mode: mode_t, flags: c_int) -> c_int [dirfd, path]
        kernel |p| real!(fchmodat(dirfd, p, mode, flags));
        volume |l| vf::setattr(&l, vfs::chmod_set(mode)).map(|()| 0);
    fn chown(path: *const c_char, uid: uid_t, gid: gid_t) -> c_int [AT_FDCWD, path]
        kernel |p| real!(chown(p, uid, gid));
        volume |l| vf::setattr(&l, vfs::chown_set(uid, gid)).map(|()| 0);
    fn lchown(path: *const c_char, uid: uid_t, gid: gid_t) -> c_int [AT_FDCWD, path]
        kernel |p| real!(lchown(p, uid, gid));
        volume |l| vf::setattr(&l, vfs::chown_set(uid, gid)).map(|()| 0);
    fn fchownat(dirfd: c_int, path: *const c_char, uid: uid_t, gid: gid_t, flags: c_int) -> c_int [dirfd, path]
        kernel |p| real!(fchownat(dirfd, p, uid, gid, flags));
        volume |l| vf::setattr(&l, vfs::chown_set(uid, gid)).map(|()| 0);
    fn utimes(path: *const c_char, tv: *const libc::timeval) -> c_int [AT_FDCWD, path]
        kernel |p| real!(utimes(p, tv));
        // SAFETY: the caller's timevals.
        volume |l| vf::setattr(&l, unsafe { vfs::utimes_set(tv)? }).map(|()| 0);
    fn lutimes(path: *const c_char, tv: *const libc::timeval) -> c_int [AT_FDCWD, path]
        kernel |p| real!(lutimes(p, tv));
        // SAFETY: the caller's timevals.
        volume |l| vf::setattr(&l, unsafe { vfs::utimes_set(tv)? }).map(|()| 0);
    fn utime(path: *const c_char, t: *const libc::utimbuf) -> c_int [AT_FDCWD, path]
        kernel |p| real!(utime(p, t));
        volume |l| {
            let set = if t.is_null() {
                // SAFETY: null means now.
                unsafe { vfs::utimes_set(std::ptr::null())? }
            } else {
                // SAFETY: the caller's utimbuf.
                let u = unsafe { *t };
                let at = |s| Some(arrakis_core::fs::Time { sec: s, nsec: 0 });
                arrakis_core::fs::SetAttr { atime: at(u.actime), mtime: at(u.modtime), ..Default::default() }
            };
            vf::setattr(&l, set).map(|()| 0)
        };

    fn readlink(path: *const c_char, buf: *mut c_char, n: size_t) -> ssize_t [AT_FDCWD, path]
        kernel |p| real!(readlink(p, buf, n));
        volume |l| vfs::readlink_loc(&l);
    fn readlinkat(dirfd: c_int, path: *const c_char, buf: *mut c_char, n: size_t) -> ssize_t [dirfd, path]
        kernel |p| real!(readlinkat(dirfd, p, buf, n));
        volume |l| vfs::readlink_loc(&l);
    fn statfs(path: *const c_char, buf: *mut libc::statfs) -> c_int [AT_FDCWD, path]
        kernel |p| real!(statfs(p, buf));
        volume |l| vfs::statfs_loc(&l, buf);
    fn statfs64(path: *const c_char, buf: *mut libc::statfs) -> c_int [AT_FDCWD, path]
        kernel |p| real!(statfs64(p, buf));
        volume |l| vfs::statfs_loc(&l, buf);
    fn statvfs(path: *const c_char, buf: *mut libc::statvfs) -> c_int [AT_FDCWD, path]
        kernel |p| real!(statvfs(p, buf));
        volume |l| vfs::statvfs_loc(&l, buf);
    fn statvfs64(path: *const c_char, buf: *mut libc::statvfs) -> c_int [AT_FDCWD, path]
        kernel |p| real!(statvfs64(p, buf));
        volume |l| vfs::statvfs_loc(&l, buf);
    fn getxattr(path: *const c_char, name: *const c_char, v: *mut c_void, n: size_t) -> ssize_t [AT_FDCWD, path]
        kernel |p| real!(getxattr(p, name, v, n));
        volume |l| vfs::xattr_loc(&l, false);
    fn lgetxattr(path: *const c_char, name: *const c_char, v: *mut c_void, n: size_t) -> ssize_t [AT_FDCWD, path]
        kernel |p| real!(lgetxattr(p, name, v, n));
        volume |l| vfs::xattr_loc(&l, false);
    fn listxattr(path: *const c_char, list: *mut c_char, n: size_t) -> ssize_t [AT_FDCWD, path]
        kernel |p| real!(listxattr(p, list, n));
        volume |l| vfs::xattr_loc(&l, true);
    fn llistxattr(path: *const c_char, list: *mut c_char, n: size_t) -> ssize_t [AT_FDCWD, path]
        kernel |p| real!(llistxattr(p, list, n));
        volume |l| vfs::xattr_loc(&l, true);

    fn chdir(path: *const c_char) -> c_int [AT_FDCWD, path]
        kernel |p| vfs::chdir_kernel_done(real!(chdir(p) else sys(libc::SYS_chdir, p)));
        volume |l| vfs::chdir(l);
    fn opendir(path: *const c_char) -> *mut DIR [AT_FDCWD, path]
        kernel |p| io::created_dir(real!(opendir(p)));
        volume |l| vfs::opendir(l);
    fn fopen(path: *const c_char, mode: *const c_char) -> *mut FILE [AT_FDCWD, path]
        kernel |p| io::created_file(real!(fopen(p, mode)));
        // SAFETY: the caller's mode string.
        volume |l| unsafe { vfs::fopen(l, mode) };
    fn fopen64(path: *const c_char, mode: *const c_char) -> *mut FILE [AT_FDCWD, path]
        kernel |p| io::created_file(real!(fopen64(p, mode)));
        // SAFETY: the caller's mode string.
        volume |l| unsafe { vfs::fopen(l, mode) };
}

macro_rules! freopen_call {
    ($($name:ident),*) => {$(
        export! {
            /// Interposed `freopen`: a volume path, or one of our streams (which glibc's
            /// freopen cannot reopen: they are cookie streams), is handled here; the rest
            /// passes through to libc.
            ///
            /// # Safety
            /// The C contract of `freopen(3)`.
            fn $name(path: *const c_char, mode: *const c_char, fp: *mut FILE) -> *mut FILE {
                fast if !mount::active();
                if lib::inside() {
                    return real!($name(path, mode, fp));
                }
                let ours = vfs::stream_fd(fp);
                if path.is_null() {
                    return match ours {
                        // SAFETY: the caller's mode and our stream.
                        Some(fd) => lib::guarded(stringify!($name), || unsafe { vfs::freopen_same(fd, mode, fp) }),
                        None => io::created_file(real!($name(path, mode, fp))),
                    };
                }
                let k = |p| match ours {
                    // SAFETY: the caller's path, mode and our stream.
                    Some(_) => unsafe { vfs::freopen_kernel(p, mode, fp) },
                    None => io::created_file(real!($name(p, mode, fp))),
                };
                // SAFETY: the caller's mode and stream.
                let v = |l| unsafe { vfs::freopen_volume(l, mode, fp) };
                // SAFETY: the caller's path.
                unsafe { vfs::with_path(AT_FDCWD, path, stringify!($name), k, v) }
            }
        }
    )*};
}

freopen_call!(freopen, freopen64);

fn access_check(l: &mount::Loc, mode: c_int) -> arrakis_core::SysResult<c_int> {
    if mode & !7 != 0 {
        return Err(Errno::EINVAL);
    }
    vf::access(l, mode as u32, &cred()).map(|()| 0)
}

/// `fstatat`-like calls: `AT_EMPTY_PATH` with an empty path is `fstat` of the directory fd.
macro_rules! fstatat_call {
    ($( fn $name:ident ( $([$v:ident : $vt:ty])? $dirfd:ident : c_int, $path:ident : *const c_char, $buf:ident : *mut Stat, $flags:ident : c_int ) = $real:ident; )*) => {$(
        export! {
            /// Interposed `fstatat` form.
            ///
            /// # Safety
            /// The C contract of the libc function of the same name.
            fn $name($($v: $vt,)? $dirfd: c_int, $path: *const c_char, $buf: *mut Stat, $flags: c_int) -> c_int {
                fast if !mount::active() && table().is_kernel($dirfd);
                if lib::inside() || ($flags & libc::AT_EMPTY_PATH != 0 && table().is_kernel($dirfd)
                    && !$path.is_null() && unsafe { *$path } == 0) {
                    return real!($real($($v,)? $dirfd, $path, $buf, $flags));
                }
                if $flags & !(libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT | libc::AT_EMPTY_PATH) != 0 {
                    return errno::fail(Errno::EINVAL);
                }
                if $flags & libc::AT_EMPTY_PATH != 0 && !$path.is_null() && unsafe { *$path } == 0 {
                    // SAFETY: the caller's buffer.
                    return unsafe { vfs::fstat($dirfd, $buf) };
                }
                let k = |p| real!($real($($v,)? $dirfd, p, $buf, $flags));
                let v = |l| vfs::stat_loc(&l, $buf);
                // SAFETY: the caller's path(s) and buffers.
                unsafe { vfs::with_path($dirfd, $path, stringify!($name), k, v) }
            }
        }
    )*};
}

fstatat_call! {
    fn fstatat(dirfd: c_int, path: *const c_char, buf: *mut Stat, flags: c_int) = fstatat;
    fn fstatat64(dirfd: c_int, path: *const c_char, buf: *mut Stat, flags: c_int) = fstatat64;
    fn __fxstatat([ver: c_int] dirfd: c_int, path: *const c_char, buf: *mut Stat, flags: c_int) = __fxstatat;
    fn __fxstatat64([ver: c_int] dirfd: c_int, path: *const c_char, buf: *mut Stat, flags: c_int) = __fxstatat64;
}

export! {
    /// Interposed `statx`.
    ///
    /// # Safety
    /// The C contract of `statx(2)`.
    fn statx(dirfd: c_int, path: *const c_char, flags: c_int, mask: c_uint, buf: *mut c_void) -> c_int {
        fast if !mount::active() && table().is_kernel(dirfd);
        // SAFETY: the caller's path (checked non-null).
        let empty = !path.is_null() && unsafe { *path } == 0;
        if lib::inside() || (empty && table().is_kernel(dirfd)) {
            return real!(statx(dirfd, path, flags, mask, buf) else sys(libc::SYS_statx, dirfd, path, flags, mask, buf));
        }
        if empty && flags & libc::AT_EMPTY_PATH != 0 {
            // SAFETY: the caller's buffer.
            return unsafe { vfs::fstatx(dirfd, buf) };
        }
        let k = |p| real!(statx(dirfd, p, flags, mask, buf) else sys(libc::SYS_statx, dirfd, p, flags, mask, buf));
        let v = |l| vfs::statx_loc(&l, buf);
        // SAFETY: the caller's path(s) and buffers.
        unsafe { vfs::with_path(dirfd, path, "statx", k, v) }
    }
}

export! {
    /// Interposed `utimensat`.
    ///
    /// # Safety
    /// The C contract of `utimensat(2)`.
    fn utimensat(dirfd: c_int, path: *const c_char, times: *const libc::timespec, flags: c_int) -> c_int {
        fast if !mount::active() && table().is_kernel(dirfd);
        if lib::inside() {
            return real!(utimensat(dirfd, path, times, flags));
        }
        if path.is_null() {
            // utimensat(fd, NULL, ...) is futimens.
            if vfs::is_file(dirfd) {
                // SAFETY: the caller's timespecs.
                return vfs::fsetattr(dirfd, "utimensat", || unsafe { vfs::utimens_set(times) });
            }
            return real!(utimensat(dirfd, path, times, flags));
        }
        let k = |p| real!(utimensat(dirfd, p, times, flags));
        let v = |l| vf::setattr(&l, vfs::utimens_set(times)?).map(|()| 0);
        // SAFETY: the caller's path(s) and buffers.
        unsafe { vfs::with_path(dirfd, path, "utimensat", k, v) }
    }
}

fn rename_flags(flags: c_uint) -> arrakis_core::SysResult<RenameFlags> {
    let known = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE;
    if flags & !known != 0 || flags & known == known {
        return Err(Errno::EINVAL);
    }
    Ok(RenameFlags {
        noreplace: flags & libc::RENAME_NOREPLACE != 0,
        exchange: flags & libc::RENAME_EXCHANGE != 0,
    })
}

export! {
    /// Interposed `rename`.
    ///
    /// # Safety
    /// The C contract of `rename(2)`.
    fn rename(old: *const c_char, new: *const c_char) -> c_int {
        fast if !mount::active();
        if lib::inside() {
            return real!(rename(old, new) else sys(libc::SYS_rename, old, new));
        }
        let k = |a, b| real!(rename(a, b) else sys(libc::SYS_rename, a, b));
        let v = |a, b| vf::rename(&a, &b, RenameFlags::default()).map(|()| 0);
        // SAFETY: the caller's path(s) and buffers.
        unsafe { vfs::with_paths((AT_FDCWD, old), (AT_FDCWD, new), "rename", k, v) }
    }
}

export! {
    /// Interposed `renameat`.
    ///
    /// # Safety
    /// The C contract of `renameat(2)`.
    fn renameat(olddir: c_int, old: *const c_char, newdir: c_int, new: *const c_char) -> c_int {
        fast if !mount::active() && table().is_kernel(olddir) && table().is_kernel(newdir);
        if lib::inside() {
            return real!(renameat(olddir, old, newdir, new) else sys(libc::SYS_renameat, olddir, old, newdir, new));
        }
        let k = |a, b| real!(renameat(olddir, a, newdir, b) else sys(libc::SYS_renameat, olddir, a, newdir, b));
        let v = |a, b| vf::rename(&a, &b, RenameFlags::default()).map(|()| 0);
        // SAFETY: the caller's path(s) and buffers.
        unsafe { vfs::with_paths((olddir, old), (newdir, new), "renameat", k, v) }
    }
}

export! {
    /// Interposed `renameat2`.
    ///
    /// # Safety
    /// The C contract of `renameat2(2)`.
    fn renameat2(olddir: c_int, old: *const c_char, newdir: c_int, new: *const c_char, flags: c_uint) -> c_int {
        fast if !mount::active() && table().is_kernel(olddir) && table().is_kernel(newdir);
        if lib::inside() {
            return real!(renameat2(olddir, old, newdir, new, flags));
        }
        let k = |a, b| real!(renameat2(olddir, a, newdir, b, flags));
        let v = |a, b| vf::rename(&a, &b, rename_flags(flags)?).map(|()| 0);
        // SAFETY: the caller's path(s) and buffers.
        unsafe { vfs::with_paths((olddir, old), (newdir, new), "renameat2", k, v) }
    }
}

// ---- fd calls --------------------------------------------------------------------------------

fd_passthrough! {
    @files
    fn fstat(fd: c_int, buf: *mut Stat) -> c_int = sys(libc::SYS_fstat);
    fn fstat64(fd: c_int, buf: *mut Stat) -> c_int = sys(libc::SYS_fstat);
    fn fdopendir(fd: c_int) -> *mut DIR;
    fn fdopen(fd: c_int, mode: *const c_char) -> *mut FILE;
    // glibc's pre-2.33 stat ABI: the version comes first.
    fn __fxstat([ver: c_int] fd: c_int, buf: *mut Stat) -> c_int;
    fn __fxstat64([ver: c_int] fd: c_int, buf: *mut Stat) -> c_int;
}

/// Fd exports answered by the library OS for library files and by libc otherwise.
macro_rules! fd_call {
    ($( fn $name:ident ( $fd:ident : c_int $(, $a:ident : $t:ty)* ) -> $ret:ty => $lib:expr; )*) => {$(
        export! {
            /// Interposed: a kernel fd passes straight through to libc.
            ///
            /// # Safety
            /// The C contract of the libc function of the same name.
            fn $name($fd: c_int $(, $a: $t)*) -> $ret {
                fast if !vfs::is_file($fd);
                if !vfs::is_file($fd) || lib::inside() {
                    return real!($name($fd $(, $a)*));
                }
                $lib
            }
        }
    )*};
}

fd_call! {
    fn fstatfs(fd: c_int, buf: *mut libc::statfs) -> c_int => vfs::fstatfs(fd, buf);
    fn fstatfs64(fd: c_int, buf: *mut libc::statfs) -> c_int => vfs::fstatfs(fd, buf);
    fn fstatvfs(fd: c_int, buf: *mut libc::statvfs) -> c_int => vfs::fstatvfs(fd, buf);
    fn fstatvfs64(fd: c_int, buf: *mut libc::statvfs) -> c_int => vfs::fstatvfs(fd, buf);
    fn fchmod(fd: c_int, mode: mode_t) -> c_int => vfs::fsetattr(fd, "fchmod", || Ok(vfs::chmod_set(mode)));
    fn fchown(fd: c_int, uid: uid_t, gid: gid_t) -> c_int => vfs::fsetattr(fd, "fchown", || Ok(vfs::chown_set(uid, gid)));
    // SAFETY: the caller's timespecs.
    fn futimens(fd: c_int, times: *const libc::timespec) -> c_int
        => vfs::fsetattr(fd, "futimens", || unsafe { vfs::utimens_set(times) });
    // SAFETY: the caller's timevals.
    fn futimes(fd: c_int, tv: *const libc::timeval) -> c_int
        => vfs::fsetattr(fd, "futimes", || unsafe { vfs::utimes_set(tv) });
    fn fchdir(fd: c_int) -> c_int => lib::guarded("fchdir", || {
        let d = vfs::dir(fd).ok_or(Errno::ENOTDIR)?;
        let t = mount::table().ok_or(Errno::ENOTDIR)?;
        match t.resolve(mount::Base::Cwd, d.path())? {
            mount::Target::Volume(l) => vfs::chdir(l),
            mount::Target::Kernel(_) => Err(Errno::ENOENT),
        }
    });
    fn flock(fd: c_int, op: c_int) -> c_int => {
        let _ = op;
        0
    };
    fn posix_fadvise(fd: c_int, off: off_t, len: off_t, advice: c_int) -> c_int => {
        let _ = (off, len, advice);
        0
    };
    fn posix_fadvise64(fd: c_int, off: off64_t, len: off64_t, advice: c_int) -> c_int => {
        let _ = (off, len, advice);
        0
    };
    fn fallocate(fd: c_int, mode: c_int, off: off_t, len: off_t) -> c_int
        => lib::guarded("fallocate", || vfs::fallocate(fd, mode, off, len));
    fn fallocate64(fd: c_int, mode: c_int, off: off64_t, len: off64_t) -> c_int
        => lib::guarded("fallocate", || vfs::fallocate(fd, mode, off, len));
    // posix_fallocate returns the error number instead of setting errno.
    fn posix_fallocate(fd: c_int, off: off_t, len: off_t) -> c_int => {
        let _e = errno::Saved::new();
        if lib::guarded("posix_fallocate", || vfs::fallocate(fd, 0, off, len)) < 0 { errno::get() } else { 0 }
    };
    fn posix_fallocate64(fd: c_int, off: off64_t, len: off64_t) -> c_int => {
        let _e = errno::Saved::new();
        if lib::guarded("posix_fallocate", || vfs::fallocate(fd, 0, off, len)) < 0 { errno::get() } else { 0 }
    };
    fn syncfs(fd: c_int) -> c_int => vfs::syncfs(fd);
    // SAFETY: the caller's buffer.
    fn getdents64(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t => unsafe { vfs::getdents64(fd, buf, n) };
    fn fgetxattr(fd: c_int, name: *const c_char, v: *mut c_void, n: size_t) -> ssize_t => {
        let _ = (name, v, n);
        errno::fail(Errno::ENODATA)
    };
    fn flistxattr(fd: c_int, list: *mut c_char, n: size_t) -> ssize_t => {
        let _ = (list, n);
        0
    };
}

export! {
    /// Interposed `mmap`: a library file cannot be mapped (`ENODEV`, as a file system
    /// without mmap support answers).
    ///
    /// # Safety
    /// The C contract of `mmap(2)`.
    fn mmap(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, off: off_t) -> *mut c_void {
        fast if !vfs::is_file(fd) || flags & libc::MAP_ANONYMOUS != 0;
        if vfs::is_file(fd) && flags & libc::MAP_ANONYMOUS == 0 && !lib::inside() {
            errno::set(libc::ENODEV);
            return libc::MAP_FAILED;
        }
        match crate::real::mmap() {
            // SAFETY: the caller's arguments.
            Some(f) => unsafe { f(addr, len, prot, flags, fd, off) },
            None => {
                errno::set(libc::ENOSYS);
                libc::MAP_FAILED
            }
        }
    }
}

export! {
    /// Interposed `mmap64`.
    ///
    /// # Safety
    /// The C contract of `mmap(2)`.
    fn mmap64(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, off: off64_t) -> *mut c_void {
        fast if !vfs::is_file(fd) || flags & libc::MAP_ANONYMOUS != 0;
        if vfs::is_file(fd) && flags & libc::MAP_ANONYMOUS == 0 && !lib::inside() {
            errno::set(libc::ENODEV);
            return libc::MAP_FAILED;
        }
        match crate::real::mmap64() {
            // SAFETY: the caller's arguments.
            Some(f) => unsafe { f(addr, len, prot, flags, fd, off) },
            None => {
                errno::set(libc::ENOSYS);
                libc::MAP_FAILED
            }
        }
    }
}

export! {
    /// Interposed `copy_file_range`: with a library fd, `EXDEV` (callers such as `cp` fall
    /// back to read/write).
    ///
    /// # Safety
    /// The C contract of `copy_file_range(2)`.
    fn copy_file_range(fd_in: c_int, off_in: *mut off64_t, fd_out: c_int, off_out: *mut off64_t, len: size_t, flags: c_uint) -> ssize_t {
        fast if !vfs::is_file(fd_in) && !vfs::is_file(fd_out);
        if (vfs::is_file(fd_in) || vfs::is_file(fd_out)) && !lib::inside() {
            return errno::fail(Errno::EXDEV);
        }
        real!(copy_file_range(fd_in, off_in, fd_out, off_out, len, flags))
    }
}

/// Interposed `sync`: the kernel's, then every attached volume's.
///
/// # Safety
/// None.
#[no_mangle]
pub unsafe extern "C" fn sync() {
    if let Some(f) = crate::real::sync() {
        // SAFETY: no arguments.
        unsafe { f() };
    }
    if mount::active() && !lib::inside() {
        let _e = errno::Saved::new();
        let _ = lib::guarded("sync", || {
            if let Some(t) = mount::table() {
                for m in t.mounts() {
                    if let Ok(fs) = m.fs() {
                        let _ = fs.fsync(arrakis_core::fs::ROOT, false);
                    }
                }
            }
            Ok(0)
        });
    }
}

// ---- cwd, realpath ---------------------------------------------------------------------------

export! {
    /// Interposed `getcwd`: the library cwd's path when it is on a volume.
    ///
    /// # Safety
    /// The C contract of `getcwd(3)`.
    fn getcwd(buf: *mut c_char, size: size_t) -> *mut c_char {
        fast if !mount::active();
        if !lib::inside() {
            if let Some(p) = vfs::library_cwd() {
                if !buf.is_null() && size == 0 {
                    return errno::fail(Errno::EINVAL);
                }
                let p = match p {
                    Ok(p) => p,
                    Err(e) => return errno::fail(e),
                };
                // SAFETY: the caller's buffer of `size` bytes, or null.
                return lib::guarded("getcwd", || unsafe { vfs::out_string(&p, buf, size) });
            }
        }
        real!(getcwd(buf, size))
    }
}

export! {
    /// Interposed `get_current_dir_name`.
    ///
    /// # Safety
    /// The C contract of `get_current_dir_name(3)`.
    fn get_current_dir_name() -> *mut c_char {
        fast if !mount::active();
        if !lib::inside() {
            if let Some(p) = vfs::library_cwd() {
                let p = match p {
                    Ok(p) => p,
                    Err(e) => return errno::fail(e),
                };
                // SAFETY: a fresh malloc'd copy.
                return lib::guarded("get_current_dir_name", || unsafe { vfs::out_string(&p, std::ptr::null_mut(), 0) });
            }
        }
        real!(get_current_dir_name())
    }
}

/// `realpath` for a path on a volume; `None` → the kernel's realpath.
///
/// # Safety
/// `path` must be null or NUL-terminated; `out` null or `PATH_MAX` bytes.
unsafe fn realpath_common(path: *const c_char, out: *mut c_char) -> Option<*mut c_char> {
    if !mount::active() || lib::inside() || path.is_null() {
        return None;
    }
    // SAFETY: caller's contract.
    let bytes = unsafe { vfs::cpath(path) }.ok()?;
    if bytes.is_empty() {
        return None;
    }
    let saved = errno::Saved::new();
    match vfs::resolve(AT_FDCWD, bytes, "realpath") {
        Ok(vfs::Route::Kernel(None)) => None,
        Ok(vfs::Route::Kernel(Some(p))) => {
            drop(saved);
            // The walk left a mount or started in one: the kernel finishes the absolute path.
            let r = real!(realpath(p.as_ptr(), out));
            Some(r)
        }
        Ok(vfs::Route::Volume(l)) => {
            std::mem::forget(saved);
            // SAFETY: caller's buffer (PATH_MAX bytes) or null.
            Some(lib::guarded("realpath", || unsafe {
                vfs::out_string(
                    &vfs::realpath_loc(&l)?,
                    out,
                    if out.is_null() { 0 } else { libc::PATH_MAX as usize },
                )
            }))
        }
        Err(e) => {
            std::mem::forget(saved);
            Some(errno::fail(e))
        }
    }
}

/// Interposed `realpath`.
///
/// # Safety
/// The C contract of `realpath(3)`.
#[no_mangle]
pub unsafe extern "C" fn realpath(path: *const c_char, out: *mut c_char) -> *mut c_char {
    // SAFETY: caller's contract.
    match unsafe { realpath_common(path, out) } {
        Some(r) => r,
        None => real!(realpath(path, out)),
    }
}

/// Interposed `__realpath_chk`.
///
/// # Safety
/// The C contract of `__realpath_chk`.
#[no_mangle]
pub unsafe extern "C" fn __realpath_chk(
    path: *const c_char,
    out: *mut c_char,
    outlen: size_t,
) -> *mut c_char {
    // SAFETY: caller's contract.
    match unsafe { realpath_common(path, out) } {
        Some(r) => r,
        None => real!(__realpath_chk(path, out, outlen)),
    }
}

/// Interposed `canonicalize_file_name`.
///
/// # Safety
/// The C contract of `canonicalize_file_name(3)`.
#[no_mangle]
pub unsafe extern "C" fn canonicalize_file_name(path: *const c_char) -> *mut c_char {
    // SAFETY: caller's contract.
    match unsafe { realpath_common(path, std::ptr::null_mut()) } {
        Some(r) => r,
        None => real!(canonicalize_file_name(path)),
    }
}

// ---- directory streams -----------------------------------------------------------------------

macro_rules! dir_call {
    ($( fn $name:ident ( $d:ident : *mut DIR $(, $a:ident : $t:ty)* ) -> $ret:ty => $lib:expr; )*) => {$(
        export! {
            /// Interposed: a kernel `DIR *` passes through to libc; ours are the library OS's.
            ///
            /// # Safety
            /// The C contract of the libc function of the same name.
            fn $name($d: *mut DIR $(, $a: $t)*) -> $ret {
                fast if !vfs::is_libdir($d);
                if !vfs::is_libdir($d) {
                    return real!($name($d $(, $a)*));
                }
                $lib
            }
        }
    )*};
}

dir_call! {
    fn readdir(d: *mut DIR) -> *mut dirent => vfs::readdir64(d).cast();
    fn readdir64(d: *mut DIR) -> *mut dirent64 => vfs::readdir64(d);
    // SAFETY: the caller's entry and result pointers.
    fn readdir_r(d: *mut DIR, e: *mut dirent, r: *mut *mut dirent) -> c_int
        => unsafe { vfs::readdir64_r(d, e.cast(), r.cast()) };
    // SAFETY: as above.
    fn readdir64_r(d: *mut DIR, e: *mut dirent64, r: *mut *mut dirent64) -> c_int
        => unsafe { vfs::readdir64_r(d, e, r) };
    fn closedir(d: *mut DIR) -> c_int => vfs::closedir(d);
    fn dirfd(d: *mut DIR) -> c_int => vfs::dirfd(d);
    fn telldir(d: *mut DIR) -> libc::c_long => vfs::dir_seek(d, None);
}

/// Interposed `rewinddir`.
///
/// # Safety
/// The C contract of `rewinddir(3)`.
#[no_mangle]
pub unsafe extern "C" fn rewinddir(d: *mut DIR) {
    if vfs::is_libdir(d) {
        vfs::dir_seek(d, Some(0));
    } else if let Some(f) = crate::real::rewinddir() {
        // SAFETY: the caller's stream.
        unsafe { f(d) }
    }
}

/// Interposed `seekdir`.
///
/// # Safety
/// The C contract of `seekdir(3)`.
#[no_mangle]
pub unsafe extern "C" fn seekdir(d: *mut DIR, pos: libc::c_long) {
    if vfs::is_libdir(d) {
        vfs::dir_seek(d, Some(pos));
    } else if let Some(f) = crate::real::seekdir() {
        // SAFETY: the caller's stream.
        unsafe { f(d, pos) }
    }
}

type Filter = Option<unsafe extern "C" fn(*const dirent64) -> c_int>;
type Compar = Option<unsafe extern "C" fn(*mut *const dirent64, *mut *const dirent64) -> c_int>;

/// `scandir` on a volume directory: our `opendir`/`readdir`, the caller's filter, `qsort`
/// with the caller's comparison, as glibc's scandir.
///
/// # Safety
/// The C contract of `scandir(3)`.
unsafe fn scandir_lib(d: *mut DIR, out: *mut *mut *mut dirent64, filter: Filter, compar: Compar) -> c_int {
    let mut v: Vec<*mut dirent64> = Vec::new();
    loop {
        let e = vfs::readdir64(d);
        if e.is_null() {
            break;
        }
        // SAFETY: the caller's filter on our entry.
        if let Some(f) = filter {
            if unsafe { f(e) } == 0 {
                continue;
            }
        }
        // SAFETY: a malloc'd copy the caller frees.
        let c = unsafe { libc::malloc(std::mem::size_of::<dirent64>()) }.cast::<dirent64>();
        if c.is_null() {
            for p in v {
                // SAFETY: our malloc'd copies.
                unsafe { libc::free(p.cast()) };
            }
            vfs::closedir(d);
            return errno::fail(Errno::ENOMEM);
        }
        // SAFETY: both are dirent64.
        unsafe { std::ptr::copy_nonoverlapping(e, c, 1) };
        v.push(c);
    }
    vfs::closedir(d);
    let n = v.len();
    // SAFETY: a malloc'd array the caller frees.
    let arr =
        unsafe { libc::malloc(std::mem::size_of::<*mut dirent64>() * n.max(1)) }.cast::<*mut dirent64>();
    if arr.is_null() {
        return errno::fail(Errno::ENOMEM);
    }
    // SAFETY: `arr` holds n pointers; the caller's output pointer.
    unsafe {
        std::ptr::copy_nonoverlapping(v.as_ptr(), arr, n);
        if let Some(c) = compar {
            type Cmp = unsafe extern "C" fn(*const c_void, *const c_void) -> c_int;
            let c: Cmp = std::mem::transmute::<
                unsafe extern "C" fn(*mut *const dirent64, *mut *const dirent64) -> c_int,
                Cmp,
            >(c);
            libc::qsort(arr.cast(), n, std::mem::size_of::<*mut dirent64>(), Some(c));
        }
        *out = arr;
    }
    n as c_int
}

macro_rules! scandir_call {
    ($($name:ident),*) => {$(
        /// Interposed `scandir` form (glibc's calls its opendir internally).
        ///
        /// # Safety
        /// The C contract of `scandir(3)`.
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, out: *mut *mut *mut dirent64, filter: Filter, compar: Compar) -> c_int {
            if !mount::active() || lib::inside() {
                return real!($name(path, out, filter, compar));
            }
            // SAFETY: the caller's path.
            let Ok(bytes) = (unsafe { vfs::cpath(path) }) else { return real!($name(path, out, filter, compar)) };
            let d = match vfs::resolve(AT_FDCWD, bytes, "scandir") {
                Ok(vfs::Route::Kernel(None)) => return real!($name(path, out, filter, compar)),
                Ok(vfs::Route::Kernel(Some(p))) => return real!($name(p.as_ptr(), out, filter, compar)),
                Ok(vfs::Route::Volume(l)) => lib::guarded("scandir", || vfs::opendir(l)),
                Err(e) => return errno::fail(e),
            };
            if d.is_null() {
                return -1;
            }
            // SAFETY: our stream; the caller's output and callbacks.
            unsafe { scandir_lib(d, out, filter, compar) }
        }
    )*};
}

scandir_call!(scandir, scandir64);

// ---- stdio -----------------------------------------------------------------------------------

export! {
    /// Interposed `fileno`: the library fd of our streams (files on volumes, and library-OS
    /// sockets given to `fdopen`).
    ///
    /// # Safety
    /// The C contract of `fileno(3)`.
    fn fileno(fp: *mut FILE) -> c_int {
        fast if !vfs::has_streams();
        if let Some(fd) = vfs::stream_fd(fp) {
            return fd;
        }
        real!(fileno(fp))
    }
}

export! {
    /// Interposed `fileno_unlocked`.
    ///
    /// # Safety
    /// The C contract of `fileno_unlocked(3)`.
    fn fileno_unlocked(fp: *mut FILE) -> c_int {
        fast if !vfs::has_streams();
        if let Some(fd) = vfs::stream_fd(fp) {
            return fd;
        }
        real!(fileno_unlocked(fp))
    }
}

passthrough! {
    fn fclose(fp: *mut FILE) -> c_int;
}

// ---- temporary files -------------------------------------------------------------------------

/// What a `mkstemp`-family call makes.
#[derive(Clone, Copy)]
enum Temp {
    /// A file opened `O_RDWR | O_CREAT | O_EXCL` plus these flags.
    File(c_int),
    /// A directory (`mkdtemp`).
    Dir,
}

/// A fresh 6-letter name from the letters glibc uses.
fn temp_letters() -> [u8; 6] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    const CHARS: &[u8; 62] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let t =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut x =
        t ^ (u64::from(std::process::id()) << 32) ^ SEQ.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    let mut out = [0u8; 6];
    for c in &mut out {
        // splitmix64 step
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        *c = CHARS[(z % 62) as usize];
    }
    out
}

/// The `mkstemp` family for a template on a volume: `Ok(None)` when the template is a kernel
/// path (the caller runs libc's), else the fd (or 0 for a directory) with the template filled in.
///
/// # Safety
/// `tmpl` must be null or a writable NUL-terminated string.
unsafe fn mktemp_volume(
    tmpl: *mut c_char,
    suffix: c_int,
    what: Temp,
    call: &'static str,
) -> Result<Option<c_int>, Errno> {
    // SAFETY: caller's contract.
    let bytes = unsafe { vfs::cpath(tmpl) }?;
    let len = bytes.len();
    let suffix = usize::try_from(suffix).map_err(|_| Errno::EINVAL)?;
    if len < 6 + suffix || &bytes[len - 6 - suffix..len - suffix] != b"XXXXXX" {
        return Err(Errno::EINVAL);
    }
    let at = len - 6 - suffix;
    let saved = errno::Saved::new();
    let route = vfs::resolve(AT_FDCWD, bytes, call);
    drop(saved);
    match route? {
        vfs::Route::Kernel(_) => return Ok(None),
        vfs::Route::Volume(_) => {}
    }
    for _ in 0..238_328 {
        let letters = temp_letters();
        // SAFETY: the caller's writable template; `at + 6 <= len`.
        unsafe { std::ptr::copy_nonoverlapping(letters.as_ptr().cast::<c_char>(), tmpl.add(at), 6) };
        // SAFETY: as above, still NUL-terminated.
        let bytes = unsafe { vfs::cpath(tmpl) }?;
        let loc = match vfs::resolve(AT_FDCWD, bytes, call)? {
            vfs::Route::Volume(l) => l,
            vfs::Route::Kernel(_) => return Err(Errno::EXDEV),
        };
        let r = vfs::catch(call, || match what {
            Temp::File(flags) => vfs::open(loc, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | flags, 0o600),
            Temp::Dir => vf::mkdir(&loc, 0o700, &cred()).map(|()| 0),
        });
        match r {
            Err(Errno::EEXIST) => continue,
            r => return r.map(Some),
        }
    }
    Err(Errno::EEXIST)
}

macro_rules! mkstemp_call {
    ($( fn $name:ident ( $t:ident $(, $a:ident)* ) [$suffix:expr, $flags:expr] );* $(;)?) => {$(
        export! {
            /// Interposed: a template on a volume is made there (glibc's own calls its
            /// internal open); the rest passes through to libc.
            ///
            /// # Safety
            /// The C contract of `mkstemp(3)`.
            fn $name($t: *mut c_char $(, $a: c_int)*) -> c_int {
                fast if !mount::active();
                if lib::inside() {
                    return real!($name($t $(, $a)*));
                }
                // SAFETY: the caller's template.
                match unsafe { mktemp_volume($t, $suffix, Temp::File($flags & !libc::O_ACCMODE), stringify!($name)) } {
                    Ok(Some(fd)) => fd,
                    Ok(None) => io::created(real!($name($t $(, $a)*))),
                    Err(e) => errno::fail(e),
                }
            }
        }
    )*};
}

mkstemp_call! {
    fn mkstemp(t) [0, 0];
    fn mkstemp64(t) [0, 0];
    fn mkostemp(t, flags) [0, flags];
    fn mkostemp64(t, flags) [0, flags];
    fn mkstemps(t, suffix) [suffix, 0];
    fn mkstemps64(t, suffix) [suffix, 0];
    fn mkostemps(t, suffix, flags) [suffix, flags];
    fn mkostemps64(t, suffix, flags) [suffix, flags];
}

export! {
    /// Interposed `mkdtemp`: a template on a volume is made there.
    ///
    /// # Safety
    /// The C contract of `mkdtemp(3)`.
    fn mkdtemp(t: *mut c_char) -> *mut c_char {
        fast if !mount::active();
        if lib::inside() {
            return real!(mkdtemp(t));
        }
        // SAFETY: the caller's template.
        match unsafe { mktemp_volume(t, 0, Temp::Dir, "mkdtemp") } {
            Ok(Some(_)) => t,
            Ok(None) => real!(mkdtemp(t)),
            Err(e) => errno::fail(e),
        }
    }
}

// ---- syscall(2) ------------------------------------------------------------------------------

type Long = libc::c_long;

/// The raw system call, for the moment before the real `syscall` is resolved.
///
/// # Safety
/// The contract of system call `n` with these arguments.
#[cfg(target_arch = "x86_64")]
unsafe fn raw_syscall(n: Long, a: Long, b: Long, c: Long, d: Long, e: Long, f: Long) -> Long {
    let r: Long;
    // SAFETY: the x86_64 Linux system call convention; the kernel clobbers rcx and r11 only;
    // the caller's contract covers what the call does.
    unsafe {
        std::arch::asm!("syscall", inlateout("rax") n => r, in("rdi") a, in("rsi") b, in("rdx") c,
            in("r10") d, in("r8") e, in("r9") f, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    if (-4095..0).contains(&r) {
        errno::fail(Errno(-r as i32))
    } else {
        r
    }
}

/// # Safety
/// None: without the real `syscall` there is no portable way to make the call.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn raw_syscall(_n: Long, _a: Long, _b: Long, _c: Long, _d: Long, _e: Long, _f: Long) -> Long {
    errno::nosys()
}

export! {
    /// Interposed `syscall(2)`: the calls programs make directly on files (`renameat2`,
    /// which glibc long had no wrapper for, and `getdents64` on a library directory) go to
    /// the library OS; everything else, and everything while no mount exists, to libc's
    /// `syscall`. C declares it variadic; on the supported ABIs the integer arguments sit in
    /// the same registers (and stack slot) as six fixed ones, which is how glibc reads them
    /// too.
    ///
    /// # Safety
    /// The C contract of `syscall(2)` for system call `n`.
    fn syscall(n: Long, a: Long, b: Long, c: Long, d: Long, e: Long, f: Long) -> Long {
        fast if !mount::active();
        // Only calls whose library paths never come back here through `syscall`: the shim's
        // own raw fallbacks use it, and so does std (futexes).
        if !lib::inside() {
            match n {
                // SAFETY: the caller's arguments to renameat2(2).
                libc::SYS_renameat2 => {
                    return Long::from(unsafe {
                        renameat2(a as c_int, b as *const c_char, c as c_int, d as *const c_char, e as c_uint)
                    });
                }
                libc::SYS_getdents64 if vfs::is_file(a as c_int) => {
                    // SAFETY: the caller's buffer of `c` bytes.
                    return unsafe { vfs::getdents64(a as c_int, b as *mut c_void, c as size_t) } as Long;
                }
                _ => {}
            }
        }
        match crate::real::syscall() {
            // SAFETY: the caller's arguments, unchanged, to libc's syscall.
            Some(real) => unsafe { real(n, a, b, c, d, e, f) },
            // SAFETY: as above, straight to the kernel.
            None => unsafe { raw_syscall(n, a, b, c, d, e, f) },
        }
    }
}
