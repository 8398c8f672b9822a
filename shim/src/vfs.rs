//! Files on volumes: C arguments become safe Rust values, `core::fs` does the work.
//!
//! Exports for path calls ask [`arrakis_core::fs::mount::active`] first (one atomic load; no
//! mount configured → tail jump to libc). Otherwise the path is resolved
//! ([`with_path`]): a kernel path goes to libc unchanged (or rewritten to an absolute path
//! when the walk passed through a mount or started in a library cwd), a volume path to
//! `core::fs::file`. Fd calls on library files come here from the exports' slow paths
//! (`fd_passthrough!` dispatches `FdKind::File` to this module).
//!
//! Directory streams (`DIR *`) and stdio streams (`FILE *`) on volumes are the shim's own:
//! a `DIR *` we return is a [`LibDir`] in a registry (kernel `DIR *`s pass through untouched),
//! a `FILE *` is glibc's `fopencookie` stream whose callbacks call the library OS, with a
//! registry `FILE *` → fd for `fileno`.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arrakis_core::fd::table;
use arrakis_core::fs::file::{self as vf, Cred, OpenDir, OpenFile};
use arrakis_core::fs::mount::{self, Base, Loc, Target};
use arrakis_core::fs::{Attr, FileType, SetAttr};
use arrakis_core::{Errno, FdKind, SysResult};
use libc::{c_char, c_int, c_uint, c_void, iovec, off64_t, off_t, size_t, ssize_t, DIR, FILE};

use crate::{errno, lib, Fail};

type Stat = c_void;

// ---- lookups ------------------------------------------------------------------------------

/// The open file at `fd`, if it is one of ours.
pub(crate) fn file(fd: c_int) -> Option<Arc<OpenFile>> {
    table().get(fd)?.into_any().downcast::<OpenFile>().ok()
}

/// The open directory at `fd`, if it is one of ours.
pub(crate) fn dir(fd: c_int) -> Option<Arc<OpenDir>> {
    table().get(fd)?.into_any().downcast::<OpenDir>().ok()
}

/// Whether `fd` is a library file or directory.
#[inline]
pub(crate) fn is_file(fd: c_int) -> bool {
    table().kind(fd) == FdKind::File
}

/// The caller's path (`EFAULT` for null).
///
/// # Safety
/// `p` must be null or a NUL-terminated string.
pub(crate) unsafe fn cpath<'a>(p: *const c_char) -> SysResult<&'a [u8]> {
    if p.is_null() {
        return Err(Errno::EFAULT);
    }
    // SAFETY: caller's contract.
    Ok(unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// Where a path call goes.
pub(crate) enum Route {
    /// The kernel, with this path (the caller's, or an absolute rewrite).
    Kernel(Option<CString>),
    /// A volume.
    Volume(Loc),
}

/// Runs library-OS code that returns a value (not through `errno`): depth counted, panics
/// caught.
pub(crate) fn catch<T>(call: &'static str, f: impl FnOnce() -> SysResult<T>) -> SysResult<T> {
    lib::guarded(call, || Ok(Some(f()))).unwrap_or(Err(Errno::ENOTRECOVERABLE))
}

impl<T> Fail for Option<T> {
    fn fail() -> Self {
        None
    }
}

/// Resolves `path` relative to `dirfd`.
pub(crate) fn resolve(dirfd: c_int, path: &[u8], call: &'static str) -> SysResult<Route> {
    let Some(t) = mount::table() else { return Ok(Route::Kernel(None)) };
    catch(call, || {
        let relative = path.first() != Some(&b'/');
        if relative && dirfd < 0 && dirfd != libc::AT_FDCWD {
            return Err(Errno::EBADF);
        }
        let target = if dirfd == libc::AT_FDCWD || !relative {
            t.resolve(Base::Cwd, path)?
        } else {
            match table().kind(dirfd) {
                FdKind::Kernel => t.resolve(Base::KernelFd(dirfd), path)?,
                FdKind::File => match dir(dirfd) {
                    Some(d) => {
                        t.resolve(Base::Dir { mount: d.mount(), ino: d.ino(), path: d.path() }, path)?
                    }
                    None => return Err(Errno::ENOTDIR),
                },
                _ => return Err(Errno::ENOTDIR),
            }
        };
        Ok(match target {
            Target::Kernel(None) => Route::Kernel(None),
            Target::Kernel(Some(p)) => Route::Kernel(Some(CString::new(p).map_err(|_| Errno::EINVAL)?)),
            Target::Volume(l) => Route::Volume(l),
        })
    })
}

/// A path call: resolve, then the kernel (`kernel(path)`, with the caller's or a rewritten
/// path) or the library OS (`volume(loc)`, errors to `errno`).
///
/// # Safety
/// `path` must be null or a NUL-terminated string.
pub(crate) unsafe fn with_path<T: Fail>(
    dirfd: c_int,
    path: *const c_char,
    call: &'static str,
    kernel: impl FnOnce(*const c_char) -> T,
    volume: impl FnOnce(Loc) -> SysResult<T>,
) -> T {
    // SAFETY: caller's contract.
    let Ok(bytes) = (unsafe { cpath(path) }) else { return kernel(path) };
    if bytes.is_empty() {
        return kernel(path);
    }
    let saved = errno::Saved::new();
    let r = resolve(dirfd, bytes, call);
    drop(saved);
    match r {
        Err(e) => errno::fail(e),
        Ok(Route::Kernel(None)) => kernel(path),
        Ok(Route::Kernel(Some(p))) => kernel(p.as_ptr()),
        Ok(Route::Volume(loc)) => lib::guarded(call, || volume(loc)),
    }
}

/// Two-path calls (`rename`): both on the kernel → `kernel(old, new)`; both on one volume →
/// `volume`; otherwise `EXDEV`.
///
/// # Safety
/// Both paths must be null or NUL-terminated strings.
pub(crate) unsafe fn with_paths<T: Fail>(
    (d1, p1): (c_int, *const c_char),
    (d2, p2): (c_int, *const c_char),
    call: &'static str,
    kernel: impl FnOnce(*const c_char, *const c_char) -> T,
    volume: impl FnOnce(Loc, Loc) -> SysResult<T>,
) -> T {
    // SAFETY: caller's contract.
    let (Ok(b1), Ok(b2)) = (unsafe { cpath(p1) }, unsafe { cpath(p2) }) else { return kernel(p1, p2) };
    if b1.is_empty() || b2.is_empty() {
        return kernel(p1, p2);
    }
    let saved = errno::Saved::new();
    let r = resolve(d1, b1, call).and_then(|r1| Ok((r1, resolve(d2, b2, call)?)));
    // Restore the caller's errno before failing, not after.
    drop(saved);
    let (r1, r2) = match r {
        Ok(r) => r,
        Err(e) => return errno::fail(e),
    };
    match (r1, r2) {
        (Route::Kernel(a), Route::Kernel(b)) => {
            let a = a.as_ref().map_or(p1, |c| c.as_ptr());
            let b = b.as_ref().map_or(p2, |c| c.as_ptr());
            kernel(a, b)
        }
        (Route::Volume(a), Route::Volume(b)) => lib::guarded(call, || volume(a, b)),
        _ => errno::fail(Errno::EXDEV),
    }
}

// ---- open ------------------------------------------------------------------------------------

/// Makes the placeholder (an eventfd: cheap, `F_SETFD`/`F_GETFD`/`dup*`/`close` keep their
/// meaning) and installs `obj` at its number.
fn install(obj: Arc<dyn arrakis_core::FdObject>, cloexec: bool) -> SysResult<c_int> {
    let ph = arrakis_core::net::socket::placeholder(false, cloexec)?;
    let fd = rustix::fd::IntoRawFd::into_raw_fd(ph);
    match table().install(fd, obj) {
        Ok(stale) => {
            drop(stale);
            Ok(fd)
        }
        Err(e) => {
            real!(close(fd) else sys(libc::SYS_close, fd));
            Err(e)
        }
    }
}

/// `open` on a volume path: the new fd.
pub(crate) fn open(loc: Loc, flags: c_int, mode: c_uint) -> SysResult<c_int> {
    let cred = Cred::current();
    let o = vf::open(&loc, flags, mode, &cred)?;
    install(o.into_object(), flags & libc::O_CLOEXEC != 0)
}

/// `open`'s mode argument only exists with `O_CREAT`/`O_TMPFILE`.
pub(crate) fn mode_of(flags: c_int, mode: c_uint) -> c_uint {
    if flags & libc::O_CREAT != 0 || flags & libc::O_TMPFILE == libc::O_TMPFILE {
        mode
    } else {
        0
    }
}

// ---- stat ------------------------------------------------------------------------------------

fn mode_bits(a: &Attr) -> u32 {
    (match a.kind {
        FileType::Dir => libc::S_IFDIR,
        FileType::File => libc::S_IFREG,
    }) | (a.perm & 0o7777)
}

/// Fills a `struct stat` (x86_64: also `stat64` and `__xstat` version 1).
///
/// # Safety
/// `buf` must point to a writable `struct stat`.
unsafe fn fill_stat(buf: *mut Stat, a: &Attr, dev: u64) -> SysResult<c_int> {
    if buf.is_null() {
        return Err(Errno::EFAULT);
    }
    // SAFETY: an all-zero stat is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    st.st_dev = dev;
    st.st_ino = a.ino;
    st.st_nlink = a.nlink as u64;
    st.st_mode = mode_bits(a);
    st.st_uid = a.uid;
    st.st_gid = a.gid;
    st.st_size = a.size as i64;
    st.st_blksize = 4096;
    st.st_blocks = a.blocks as i64;
    st.st_atime = a.atime.sec;
    st.st_atime_nsec = a.atime.nsec as i64;
    st.st_mtime = a.mtime.sec;
    st.st_mtime_nsec = a.mtime.nsec as i64;
    st.st_ctime = a.ctime.sec;
    st.st_ctime_nsec = a.ctime.nsec as i64;
    // SAFETY: caller's contract.
    unsafe { buf.cast::<libc::stat>().write_unaligned(st) };
    Ok(0)
}

/// Fills a `struct statx`.
///
/// # Safety
/// `buf` must point to a writable `struct statx`.
unsafe fn fill_statx(buf: *mut c_void, a: &Attr, dev: u64) -> SysResult<c_int> {
    if buf.is_null() {
        return Err(Errno::EFAULT);
    }
    let ts = |t: arrakis_core::fs::Time| {
        // SAFETY: an all-zero statx_timestamp is valid.
        let mut x: libc::statx_timestamp = unsafe { std::mem::zeroed() };
        x.tv_sec = t.sec;
        x.tv_nsec = t.nsec;
        x
    };
    // SAFETY: an all-zero statx is valid.
    let mut sx: libc::statx = unsafe { std::mem::zeroed() };
    sx.stx_mask = libc::STATX_BASIC_STATS;
    sx.stx_blksize = 4096;
    sx.stx_nlink = a.nlink;
    sx.stx_uid = a.uid;
    sx.stx_gid = a.gid;
    sx.stx_mode = mode_bits(a) as u16;
    sx.stx_ino = a.ino;
    sx.stx_size = a.size;
    sx.stx_blocks = a.blocks;
    sx.stx_atime = ts(a.atime);
    sx.stx_mtime = ts(a.mtime);
    sx.stx_ctime = ts(a.ctime);
    sx.stx_dev_major = libc::major(dev);
    sx.stx_dev_minor = libc::minor(dev);
    // SAFETY: caller's contract.
    unsafe { buf.cast::<libc::statx>().write_unaligned(sx) };
    Ok(0)
}

/// `stat`-family on a volume path.
///
/// # Safety
/// `buf` must point to a writable `struct stat`.
pub(crate) unsafe fn stat_loc(loc: &Loc, buf: *mut Stat) -> SysResult<c_int> {
    let (a, dev) = vf::stat(loc)?;
    // SAFETY: caller's contract.
    unsafe { fill_stat(buf, &a, dev) }
}

/// `statx` on a volume path.
///
/// # Safety
/// `buf` must point to a writable `struct statx`.
pub(crate) unsafe fn statx_loc(loc: &Loc, buf: *mut c_void) -> SysResult<c_int> {
    let (a, dev) = vf::stat(loc)?;
    // SAFETY: caller's contract.
    unsafe { fill_statx(buf, &a, dev) }
}

/// The attributes of a library fd (file or directory).
fn fd_stat(fd: c_int) -> SysResult<(Attr, u64)> {
    if let Some(f) = file(fd) {
        return f.stat();
    }
    if let Some(d) = dir(fd) {
        return d.stat();
    }
    Err(Errno::EBADF)
}

/// `fstat` on a library fd.
///
/// # Safety
/// `buf` must point to a writable `struct stat`.
pub(crate) unsafe fn fstat(fd: c_int, buf: *mut Stat) -> c_int {
    lib::guarded("fstat", || {
        let (a, dev) = fd_stat(fd)?;
        // SAFETY: caller's contract.
        unsafe { fill_stat(buf, &a, dev) }
    })
}

/// `statx` on a library fd (`AT_EMPTY_PATH`).
///
/// # Safety
/// `buf` must point to a writable `struct statx`.
pub(crate) unsafe fn fstatx(fd: c_int, buf: *mut c_void) -> c_int {
    lib::guarded("statx", || {
        let (a, dev) = fd_stat(fd)?;
        // SAFETY: caller's contract.
        unsafe { fill_statx(buf, &a, dev) }
    })
}

fn fill_statfs(buf: *mut libc::statfs, m: &mount::Mount) -> SysResult<c_int> {
    if buf.is_null() {
        return Err(Errno::EFAULT);
    }
    let s = vf::statfs(m)?;
    // SAFETY: an all-zero statfs is valid.
    let mut f: libc::statfs = unsafe { std::mem::zeroed() };
    f.f_type = mount::MAGIC;
    f.f_bsize = s.block_size as i64;
    f.f_frsize = s.block_size as i64;
    f.f_blocks = s.blocks;
    f.f_bfree = s.free;
    f.f_bavail = s.free;
    f.f_files = s.files + s.free;
    f.f_ffree = s.free;
    f.f_namelen = 255;
    // SAFETY: fsid is two ints; a per-mount value.
    unsafe {
        let p = std::ptr::addr_of_mut!(f.f_fsid).cast::<[c_int; 2]>();
        *p = [m.dev as c_int, mount::MAGIC as c_int];
    }
    // SAFETY: caller's buffer (checked non-null).
    unsafe { buf.write_unaligned(f) };
    Ok(0)
}

fn fill_statvfs(buf: *mut libc::statvfs, m: &mount::Mount) -> SysResult<c_int> {
    if buf.is_null() {
        return Err(Errno::EFAULT);
    }
    let s = vf::statfs(m)?;
    // SAFETY: an all-zero statvfs is valid.
    let mut f: libc::statvfs = unsafe { std::mem::zeroed() };
    f.f_bsize = s.block_size as u64;
    f.f_frsize = s.block_size as u64;
    f.f_blocks = s.blocks;
    f.f_bfree = s.free;
    f.f_bavail = s.free;
    f.f_files = s.files + s.free;
    f.f_ffree = s.free;
    f.f_favail = s.free;
    f.f_fsid = m.dev;
    f.f_namemax = 255;
    f.f_flag = if m.read_only { libc::ST_RDONLY } else { 0 } | libc::ST_NOATIME;
    // SAFETY: caller's buffer (checked non-null).
    unsafe { buf.write_unaligned(f) };
    Ok(0)
}

/// `statfs` on a volume path.
pub(crate) fn statfs_loc(loc: &Loc, buf: *mut libc::statfs) -> SysResult<c_int> {
    vf::stat(loc)?;
    fill_statfs(buf, &loc.mount)
}

/// `statvfs` on a volume path.
pub(crate) fn statvfs_loc(loc: &Loc, buf: *mut libc::statvfs) -> SysResult<c_int> {
    vf::stat(loc)?;
    fill_statvfs(buf, &loc.mount)
}

fn fd_mount(fd: c_int) -> SysResult<Arc<mount::Mount>> {
    if let Some(f) = file(fd) {
        return Ok(f.mount().clone());
    }
    if let Some(d) = dir(fd) {
        return Ok(d.mount().clone());
    }
    Err(Errno::EBADF)
}

/// `fstatfs` on a library fd.
pub(crate) fn fstatfs(fd: c_int, buf: *mut libc::statfs) -> c_int {
    lib::guarded("fstatfs", || fill_statfs(buf, &*fd_mount(fd)?))
}

/// `fstatvfs` on a library fd.
pub(crate) fn fstatvfs(fd: c_int, buf: *mut libc::statvfs) -> c_int {
    lib::guarded("fstatvfs", || fill_statvfs(buf, &*fd_mount(fd)?))
}

// ---- attribute changes ------------------------------------------------------------------------

/// The `SetAttr` of `utimensat`'s `times` (null: both now).
///
/// # Safety
/// `times` must be null or point to two `timespec`s.
pub(crate) unsafe fn utimens_set(times: *const libc::timespec) -> SysResult<SetAttr> {
    if times.is_null() {
        let now = arrakis_core::fs::Time::now();
        return Ok(SetAttr { atime: Some(now), mtime: Some(now), ..SetAttr::default() });
    }
    // SAFETY: caller's contract.
    let (a, m) = unsafe { (*times, *times.add(1)) };
    Ok(SetAttr {
        atime: vf::utime(a.tv_sec, a.tv_nsec)?,
        mtime: vf::utime(m.tv_sec, m.tv_nsec)?,
        ..SetAttr::default()
    })
}

/// The `SetAttr` of `utimes`' `timeval`s (null: both now).
///
/// # Safety
/// `tv` must be null or point to two `timeval`s.
pub(crate) unsafe fn utimes_set(tv: *const libc::timeval) -> SysResult<SetAttr> {
    if tv.is_null() {
        // SAFETY: null means now.
        return unsafe { utimens_set(std::ptr::null()) };
    }
    // SAFETY: caller's contract.
    let (a, m) = unsafe { (*tv, *tv.add(1)) };
    let t = |v: libc::timeval| -> SysResult<Option<arrakis_core::fs::Time>> {
        if !(0..1_000_000).contains(&v.tv_usec) {
            return Err(Errno::EINVAL);
        }
        Ok(Some(arrakis_core::fs::Time { sec: v.tv_sec, nsec: (v.tv_usec * 1000) as u32 }))
    };
    Ok(SetAttr { atime: t(a)?, mtime: t(m)?, ..SetAttr::default() })
}

/// `chown`'s ids (`-1` leaves one).
pub(crate) fn chown_set(uid: libc::uid_t, gid: libc::gid_t) -> SetAttr {
    SetAttr {
        uid: (uid != u32::MAX).then_some(uid),
        gid: (gid != u32::MAX).then_some(gid),
        ..SetAttr::default()
    }
}

/// `chmod`'s mode.
pub(crate) fn chmod_set(mode: libc::mode_t) -> SetAttr {
    SetAttr { perm: Some(mode & 0o7777), ..SetAttr::default() }
}

/// `fchmod`/`fchown`/`futimens` on a library fd.
pub(crate) fn fsetattr(fd: c_int, call: &'static str, set: impl FnOnce() -> SysResult<SetAttr>) -> c_int {
    lib::guarded(call, || {
        let set = set()?;
        if let Some(f) = file(fd) {
            f.setattr(set)?;
        } else if let Some(d) = dir(fd) {
            d.setattr(set)?;
        } else {
            return Err(Errno::EBADF);
        }
        Ok(0)
    })
}

// ---- fd calls (dispatched by fd_passthrough! for FdKind::File) ------------------------------

fn with_file<T: Fail>(fd: c_int, call: &'static str, f: impl FnOnce(&OpenFile) -> SysResult<T>) -> T {
    lib::guarded(call, || match file(fd) {
        Some(o) => f(&o),
        None if dir(fd).is_some() => Err(Errno::EISDIR),
        None => Err(Errno::EBADF),
    })
}

/// As [`with_file`] for the writing calls: a directory is never open for writing, so Linux
/// answers `EBADF` (the mode check comes before the file type).
fn with_wfile<T: Fail>(fd: c_int, call: &'static str, f: impl FnOnce(&OpenFile) -> SysResult<T>) -> T {
    lib::guarded(call, || match file(fd) {
        Some(o) => f(&o),
        None => Err(Errno::EBADF),
    })
}

/// # Safety
/// `iov[..cnt]` must be readable.
unsafe fn iovs<'a>(iov: *const iovec, cnt: c_int) -> SysResult<Vec<&'a mut [u8]>> {
    if !(0..=1024).contains(&cnt) {
        return Err(Errno::EINVAL);
    }
    if cnt == 0 {
        return Ok(Vec::new());
    }
    if iov.is_null() {
        return Err(Errno::EFAULT);
    }
    // SAFETY: caller's contract.
    let v = unsafe { std::slice::from_raw_parts(iov, cnt as usize) };
    let mut total = 0usize;
    let mut out = Vec::with_capacity(v.len());
    for e in v {
        total = total.checked_add(e.iov_len).filter(|&t| t <= isize::MAX as usize).ok_or(Errno::EINVAL)?;
        if e.iov_len == 0 {
            continue;
        }
        if e.iov_base.is_null() {
            return Err(Errno::EFAULT);
        }
        // SAFETY: the caller's buffer of that length.
        out.push(unsafe { std::slice::from_raw_parts_mut(e.iov_base.cast::<u8>(), e.iov_len) });
    }
    Ok(out)
}

/// # Safety
/// `buf` must hold `n` writable bytes.
unsafe fn one_mut<'a>(buf: *mut c_void, n: size_t) -> SysResult<Vec<&'a mut [u8]>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if buf.is_null() {
        return Err(Errno::EFAULT);
    }
    // SAFETY: caller's contract.
    Ok(vec![unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), n.min(isize::MAX as usize)) }])
}

/// # Safety
/// `buf` must hold `n` readable bytes.
unsafe fn one<'a>(buf: *const c_void, n: size_t) -> SysResult<Vec<&'a [u8]>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if buf.is_null() {
        return Err(Errno::EFAULT);
    }
    // SAFETY: caller's contract.
    Ok(vec![unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), n.min(isize::MAX as usize)) }])
}

fn ro(v: Vec<&mut [u8]>) -> Vec<&[u8]> {
    v.into_iter().map(|b| &*b).collect()
}

/// # Safety
/// The C contract of `read(2)`.
pub(crate) unsafe fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
    // SAFETY: caller's contract.
    with_file(fd, "read", |f| Ok(f.read(&mut unsafe { one_mut(buf, n)? })? as ssize_t))
}

/// # Safety
/// The C contract of `write(2)`.
pub(crate) unsafe fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t {
    // SAFETY: caller's contract.
    with_wfile(fd, "write", |f| Ok(f.write(&unsafe { one(buf, n)? })? as ssize_t))
}

/// # Safety
/// The C contract of `readv(2)`.
pub(crate) unsafe fn readv(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    // SAFETY: caller's contract.
    with_file(fd, "readv", |f| Ok(f.read(&mut unsafe { iovs(iov, cnt)? })? as ssize_t))
}

/// # Safety
/// The C contract of `writev(2)`.
pub(crate) unsafe fn writev(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    // SAFETY: caller's contract.
    with_wfile(fd, "writev", |f| Ok(f.write(&ro(unsafe { iovs(iov, cnt)? }))? as ssize_t))
}

/// # Safety
/// The C contract of `pread(2)`.
pub(crate) unsafe fn pread64(fd: c_int, buf: *mut c_void, n: size_t, off: off64_t) -> ssize_t {
    // SAFETY: caller's contract.
    with_file(fd, "pread", |f| Ok(f.pread(&mut unsafe { one_mut(buf, n)? }, off)? as ssize_t))
}

/// # Safety
/// The C contract of `pwrite(2)`.
pub(crate) unsafe fn pwrite64(fd: c_int, buf: *const c_void, n: size_t, off: off64_t) -> ssize_t {
    // SAFETY: caller's contract.
    with_wfile(fd, "pwrite", |f| Ok(f.pwrite(&unsafe { one(buf, n)? }, off)? as ssize_t))
}

/// # Safety
/// The C contract of `preadv(2)`.
pub(crate) unsafe fn preadv64(fd: c_int, iov: *const iovec, cnt: c_int, off: off64_t) -> ssize_t {
    // SAFETY: caller's contract.
    with_file(fd, "preadv", |f| {
        let mut b = unsafe { iovs(iov, cnt)? };
        Ok(if off == -1 { f.read(&mut b)? } else { f.pread(&mut b, off)? } as ssize_t)
    })
}

/// # Safety
/// The C contract of `pwritev(2)`.
pub(crate) unsafe fn pwritev64(fd: c_int, iov: *const iovec, cnt: c_int, off: off64_t) -> ssize_t {
    // SAFETY: caller's contract.
    with_wfile(fd, "pwritev", |f| {
        let b = ro(unsafe { iovs(iov, cnt)? });
        Ok(if off == -1 { f.write(&b)? } else { f.pwrite(&b, off)? } as ssize_t)
    })
}

macro_rules! alias {
    ($($name:ident($($a:ident: $t:ty),*) -> $ret:ty => $to:ident($($b:expr),*);)*) => {$(
        /// # Safety
        /// The C contract of the function of the same name.
        pub(crate) unsafe fn $name($($a: $t),*) -> $ret {
            // SAFETY: same contract.
            unsafe { $to($($b),*) }
        }
    )*};
}

alias! {
    pread(fd: c_int, b: *mut c_void, n: size_t, o: off_t) -> ssize_t => pread64(fd, b, n, o);
    pwrite(fd: c_int, b: *const c_void, n: size_t, o: off_t) -> ssize_t => pwrite64(fd, b, n, o);
    preadv(fd: c_int, v: *const iovec, c: c_int, o: off_t) -> ssize_t => preadv64(fd, v, c, o);
    pwritev(fd: c_int, v: *const iovec, c: c_int, o: off_t) -> ssize_t => pwritev64(fd, v, c, o);
    preadv2(fd: c_int, v: *const iovec, c: c_int, o: off_t, _f: c_int) -> ssize_t => preadv64(fd, v, c, o);
    preadv64v2(fd: c_int, v: *const iovec, c: c_int, o: off64_t, _f: c_int) -> ssize_t => preadv64(fd, v, c, o);
    pwritev2(fd: c_int, v: *const iovec, c: c_int, o: off_t, _f: c_int) -> ssize_t => pwritev64(fd, v, c, o);
    pwritev64v2(fd: c_int, v: *const iovec, c: c_int, o: off64_t, _f: c_int) -> ssize_t => pwritev64(fd, v, c, o);
    fstat64(fd: c_int, b: *mut Stat) -> c_int => fstat(fd, b);
    __fxstat(_v: c_int, fd: c_int, b: *mut Stat) -> c_int => fstat(fd, b);
    __fxstat64(_v: c_int, fd: c_int, b: *mut Stat) -> c_int => fstat(fd, b);
    lseek(fd: c_int, o: off_t, w: c_int) -> off_t => lseek64(fd, o, w);
    ftruncate(fd: c_int, l: off_t) -> c_int => ftruncate64(fd, l);
}

/// # Safety
/// The C contract of `__read_chk`.
pub(crate) unsafe fn __read_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t) -> ssize_t {
    if n > buflen {
        chk_fail();
    }
    // SAFETY: same contract.
    unsafe { read(fd, buf, n) }
}

/// # Safety
/// The C contract of `__pread_chk`.
pub(crate) unsafe fn __pread_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    off: off_t,
    buflen: size_t,
) -> ssize_t {
    if n > buflen {
        chk_fail();
    }
    // SAFETY: same contract.
    unsafe { pread64(fd, buf, n, off) }
}

/// # Safety
/// The C contract of `__pread64_chk`.
pub(crate) unsafe fn __pread64_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    off: off64_t,
    buflen: size_t,
) -> ssize_t {
    if n > buflen {
        chk_fail();
    }
    // SAFETY: same contract.
    unsafe { pread64(fd, buf, n, off) }
}

fn chk_fail() -> ! {
    extern "C" {
        fn __chk_fail() -> !;
    }
    // SAFETY: glibc's fortify failure: prints and aborts.
    unsafe { __chk_fail() }
}

/// # Safety
/// None beyond the C contract.
pub(crate) unsafe fn lseek64(fd: c_int, off: off64_t, wh: c_int) -> off64_t {
    lib::guarded("lseek", || {
        if let Some(d) = dir(fd) {
            return Ok(d.lseek(off, wh)? as off64_t);
        }
        match file(fd) {
            Some(f) => Ok(f.lseek(off, wh)? as off64_t),
            None => Err(Errno::EBADF),
        }
    })
}

/// # Safety
/// None beyond the C contract.
pub(crate) unsafe fn ftruncate64(fd: c_int, len: off64_t) -> c_int {
    lib::guarded("ftruncate", || match file(fd) {
        Some(f) => f.truncate(len).map(|()| 0),
        None => Err(Errno::EINVAL),
    })
}

fn sync_fd(fd: c_int, datasync: bool) -> c_int {
    lib::guarded("fsync", || {
        if let Some(d) = dir(fd) {
            d.fsync(datasync)?;
            return Ok(0);
        }
        match file(fd) {
            Some(f) => f.fsync(datasync).map(|()| 0),
            None => Err(Errno::EBADF),
        }
    })
}

/// # Safety
/// None.
pub(crate) unsafe fn fsync(fd: c_int) -> c_int {
    sync_fd(fd, false)
}

/// # Safety
/// None.
pub(crate) unsafe fn fdatasync(fd: c_int) -> c_int {
    sync_fd(fd, true)
}

/// `syncfs` on a library fd: the whole volume.
pub(crate) fn syncfs(fd: c_int) -> c_int {
    lib::guarded("syncfs", || {
        let m = fd_mount(fd)?;
        m.fs()?.fsync(arrakis_core::fs::ROOT, false)?;
        Ok(0)
    })
}

/// `fallocate`/`posix_fallocate` (mode 0 or `FALLOC_FL_KEEP_SIZE`) on a library file.
pub(crate) fn fallocate(fd: c_int, mode: c_int, off: off64_t, len: off64_t) -> SysResult<c_int> {
    let f = file(fd).ok_or(if dir(fd).is_some() { Errno::EISDIR } else { Errno::EBADF })?;
    match mode {
        0 => f.allocate(off, len).map(|()| 0),
        libc::FALLOC_FL_KEEP_SIZE => {
            if off < 0 || len <= 0 {
                return Err(Errno::EINVAL);
            }
            Ok(0)
        }
        _ => Err(Errno::EOPNOTSUPP),
    }
}

/// `fcntl` on a library fd, after the kernel ran it on the placeholder (`r`).
pub(crate) fn fcntl(fd: c_int, cmd: c_int, arg: libc::c_ulong, r: c_int) -> c_int {
    match cmd {
        libc::F_GETFL => lib::guarded("fcntl", || {
            if let Some(f) = file(fd) {
                return Ok(f.status());
            }
            if let Some(d) = dir(fd) {
                return Ok(d.status());
            }
            Ok(r)
        }),
        libc::F_SETFL => {
            if r >= 0 {
                if let Some(f) = file(fd) {
                    f.set_status(arg as c_int);
                } else if let Some(d) = dir(fd) {
                    d.set_status(arg as c_int);
                }
            }
            r
        }
        _ => r,
    }
}

/// Advisory record locks on a library file: one process per volume file in practice (a
/// forked child reaches the volume through its parent), so they succeed; `F_GETLK` reports
/// the range unlocked.
pub(crate) fn fcntl_lock(cmd: c_int, arg: libc::c_ulong) -> c_int {
    match cmd {
        libc::F_GETLK | libc::F_OFD_GETLK => {
            let p = arg as *mut libc::flock;
            if p.is_null() {
                return errno::fail(Errno::EFAULT);
            }
            // SAFETY: the caller's struct flock.
            unsafe { (*p).l_type = libc::F_UNLCK as i16 };
            0
        }
        _ => 0,
    }
}

/// The `fcntl` commands answered by the library OS for a library fd.
pub(crate) fn is_lock_cmd(cmd: c_int) -> bool {
    matches!(
        cmd,
        libc::F_GETLK
            | libc::F_SETLK
            | libc::F_SETLKW
            | libc::F_OFD_GETLK
            | libc::F_OFD_SETLK
            | libc::F_OFD_SETLKW
    )
}

/// `getdents64` on a library directory.
///
/// # Safety
/// `buf` must hold `n` writable bytes.
pub(crate) unsafe fn getdents64(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
    lib::guarded("getdents64", || {
        let Some(d) = dir(fd) else {
            return Err(if file(fd).is_some() { Errno::ENOTDIR } else { Errno::EBADF });
        };
        if buf.is_null() {
            return Err(Errno::EFAULT);
        }
        // SAFETY: caller's contract.
        let b = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), n.min(isize::MAX as usize)) };
        Ok(d.getdents64(b)? as ssize_t)
    })
}

// ---- directory streams ------------------------------------------------------------------------

/// A `DIR *` of ours: the fd of an open library directory and the entry `readdir` returned.
struct LibDir {
    fd: c_int,
    ent: libc::dirent64,
}

/// Our `DIR *`s (address → the boxed stream), and how many there are (the fast check).
static DIRS: Mutex<Option<HashMap<usize, Box<LibDir>>>> = Mutex::new(None);
static NDIRS: AtomicUsize = AtomicUsize::new(0);

/// Whether `d` is one of our streams. One atomic load while there are none.
#[inline]
pub(crate) fn is_libdir(d: *mut DIR) -> bool {
    NDIRS.load(Ordering::Acquire) != 0
        && DIRS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|m| m.contains_key(&(d as usize)))
}

/// A stream over the library directory at `fd` (which it owns from now on).
pub(crate) fn new_libdir(fd: c_int) -> *mut DIR {
    // SAFETY: an all-zero dirent64 is valid.
    let mut b = Box::new(LibDir { fd, ent: unsafe { std::mem::zeroed() } });
    let p = (&mut *b as *mut LibDir).cast::<DIR>();
    DIRS.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashMap::new).insert(p as usize, b);
    NDIRS.fetch_add(1, Ordering::AcqRel);
    p
}

fn libdir_fd(d: *mut DIR) -> Option<c_int> {
    DIRS.lock().unwrap_or_else(|e| e.into_inner()).as_ref()?.get(&(d as usize)).map(|b| b.fd)
}

/// `opendir` on a volume path.
pub(crate) fn opendir(loc: Loc) -> SysResult<*mut DIR> {
    let fd = open(loc, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC, 0)?;
    Ok(new_libdir(fd))
}

/// `fdopendir` on a library fd.
///
/// # Safety
/// None.
pub(crate) unsafe fn fdopendir(fd: c_int) -> *mut DIR {
    lib::guarded("fdopendir", || {
        if dir(fd).is_none() {
            return Err(if file(fd).is_some() { Errno::ENOTDIR } else { Errno::EBADF });
        }
        Ok(new_libdir(fd))
    })
}

/// `readdir64` on our stream: the next entry, or null at the end (errno untouched).
pub(crate) fn readdir64(d: *mut DIR) -> *mut libc::dirent64 {
    let Some(fd) = libdir_fd(d) else { return errno::fail(Errno::EBADF) };
    let Some(od) = dir(fd) else { return errno::fail(Errno::EBADF) };
    let saved = errno::Saved::new();
    let next = match catch("readdir", || od.next_entries(1)) {
        Ok(v) => v.into_iter().next(),
        Err(e) => {
            std::mem::forget(saved);
            return errno::fail(e);
        }
    };
    let Some(e) = next else { return std::ptr::null_mut() };
    let mut guard = DIRS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(b) = guard.as_mut().and_then(|m| m.get_mut(&(d as usize))) else {
        return std::ptr::null_mut();
    };
    let ent = &mut b.ent;
    ent.d_ino = e.ino;
    ent.d_off = e.off;
    ent.d_type = e.dtype;
    let n = e.name.len().min(ent.d_name.len() - 1);
    for (i, &c) in e.name[..n].iter().enumerate() {
        ent.d_name[i] = c as c_char;
    }
    ent.d_name[n] = 0;
    ent.d_reclen = ((19 + n + 1).next_multiple_of(8)) as u16;
    // The box does not move while it is in the map; the entry stays valid until the next
    // readdir or closedir on this stream, as POSIX says.
    ent as *mut libc::dirent64
}

/// `readdir64_r` on our stream.
///
/// # Safety
/// `entry` and `result` must be writable.
pub(crate) unsafe fn readdir64_r(
    d: *mut DIR,
    entry: *mut libc::dirent64,
    result: *mut *mut libc::dirent64,
) -> c_int {
    let saved = errno::Saved::new();
    errno::set(0);
    let p = readdir64(d);
    let e = errno::get();
    drop(saved);
    // SAFETY: caller's contract.
    unsafe {
        if p.is_null() {
            *result = std::ptr::null_mut();
            return e;
        }
        std::ptr::copy_nonoverlapping(p, entry, 1);
        *result = entry;
    }
    0
}

/// `closedir` on our stream.
pub(crate) fn closedir(d: *mut DIR) -> c_int {
    let b = DIRS.lock().unwrap_or_else(|e| e.into_inner()).as_mut().and_then(|m| m.remove(&(d as usize)));
    let Some(b) = b else { return errno::fail(Errno::EBADF) };
    NDIRS.fetch_sub(1, Ordering::AcqRel);
    // SAFETY: closing the stream's own fd through our close (releases the library object).
    unsafe { crate::io::close(b.fd) }
}

/// `dirfd` of our stream.
pub(crate) fn dirfd(d: *mut DIR) -> c_int {
    libdir_fd(d).unwrap_or_else(|| errno::fail(Errno::EINVAL))
}

/// `seekdir`/`rewinddir`/`telldir` on our stream.
pub(crate) fn dir_seek(d: *mut DIR, to: Option<i64>) -> i64 {
    let Some(od) = libdir_fd(d).and_then(dir) else { return errno::fail(Errno::EBADF) };
    match to {
        Some(p) => {
            let _ = od.lseek(p, libc::SEEK_SET);
            0
        }
        None => od.tell() as i64,
    }
}

// ---- stdio ------------------------------------------------------------------------------------

/// `FILE *` (address) → the library fd under it, for `fileno`.
static FILES: Mutex<Option<HashMap<usize, c_int>>> = Mutex::new(None);
static NFILES: AtomicUsize = AtomicUsize::new(0);

/// Whether any stream of ours is open (one atomic load).
#[inline]
pub(crate) fn has_streams() -> bool {
    NFILES.load(Ordering::Acquire) != 0
}

/// The library fd of one of our streams.
#[inline]
pub(crate) fn stream_fd(fp: *mut FILE) -> Option<c_int> {
    if !has_streams() {
        return None;
    }
    FILES.lock().unwrap_or_else(|e| e.into_inner()).as_ref()?.get(&(fp as usize)).copied()
}

/// The cookie of our streams: the fd (boxed, freed by the close callback).
struct Cookie {
    fd: c_int,
    fp: usize,
}

extern "C" fn ck_read(c: *mut c_void, buf: *mut c_char, n: size_t) -> ssize_t {
    // SAFETY: `c` is the cookie we gave fopencookie; `buf` is stdio's buffer of `n` bytes.
    let fd = unsafe { (*c.cast::<Cookie>()).fd };
    // SAFETY: as above.
    unsafe { crate::io::read(fd, buf.cast(), n) }
}

extern "C" fn ck_write(c: *mut c_void, buf: *const c_char, n: size_t) -> ssize_t {
    // SAFETY: as in ck_read.
    let fd = unsafe { (*c.cast::<Cookie>()).fd };
    // stdio expects all of it or an error: a volume writes all or fails; a socket may take
    // part, and then the rest is written, stopping at the first error (EINTR included), as
    // glibc's `_IO_new_file_write` does for a kernel fd.
    let mut done = 0;
    while done < n {
        // SAFETY: as in ck_read; `done < n`, so the rest lies in stdio's buffer.
        let r = unsafe { crate::io::write(fd, buf.add(done).cast(), n - done) };
        if r <= 0 {
            // glibc's cookie write: fewer bytes than asked for mark the stream's error.
            break;
        }
        done += r as usize;
    }
    done as ssize_t
}

extern "C" fn ck_seek(c: *mut c_void, pos: *mut off64_t, whence: c_int) -> c_int {
    // SAFETY: as in ck_read; `pos` is stdio's.
    unsafe {
        let fd = (*c.cast::<Cookie>()).fd;
        let r = crate::io::lseek64(fd, *pos, whence);
        if r < 0 {
            return -1;
        }
        *pos = r;
    }
    0
}

extern "C" fn ck_close(c: *mut c_void) -> c_int {
    // SAFETY: the cookie we boxed in `stream`; stdio calls close once.
    let ck = unsafe { Box::from_raw(c.cast::<Cookie>()) };
    if let Some(m) = FILES.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        if m.remove(&ck.fp).is_some() {
            NFILES.fetch_sub(1, Ordering::AcqRel);
        }
    }
    // SAFETY: the stream owned the fd.
    unsafe { crate::io::close(ck.fd) }
}

#[repr(C)]
struct CookieIo {
    read: extern "C" fn(*mut c_void, *mut c_char, size_t) -> ssize_t,
    write: extern "C" fn(*mut c_void, *const c_char, size_t) -> ssize_t,
    seek: extern "C" fn(*mut c_void, *mut off64_t, c_int) -> c_int,
    close: extern "C" fn(*mut c_void) -> c_int,
}

extern "C" {
    fn fopencookie(cookie: *mut c_void, mode: *const c_char, io: CookieIo) -> *mut FILE;
}

/// A stdio stream over library fd `fd` (which it owns from now on).
///
/// # Safety
/// `mode` must be a NUL-terminated string.
pub(crate) unsafe fn stream(fd: c_int, mode: *const c_char) -> SysResult<*mut FILE> {
    let ck = Box::into_raw(Box::new(Cookie { fd, fp: 0 }));
    let io = CookieIo { read: ck_read, write: ck_write, seek: ck_seek, close: ck_close };
    // SAFETY: a valid cookie and mode; the callbacks match glibc's cookie_io_functions_t.
    let fp = unsafe { fopencookie(ck.cast(), mode, io) };
    if fp.is_null() {
        // SAFETY: the cookie was not taken.
        drop(unsafe { Box::from_raw(ck) });
        return Err(Errno(errno::get()));
    }
    // SAFETY: our cookie, alive until ck_close.
    unsafe { (*ck).fp = fp as usize };
    FILES.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashMap::new).insert(fp as usize, fd);
    NFILES.fetch_add(1, Ordering::AcqRel);
    Ok(fp)
}

/// `fopen`'s mode → open flags (`EINVAL` for a bad mode).
pub(crate) fn fopen_flags(mode: &[u8]) -> SysResult<c_int> {
    let mut it = mode.iter();
    let mut f = match it.next() {
        Some(b'r') => libc::O_RDONLY,
        Some(b'w') => libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        Some(b'a') => libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND,
        _ => return Err(Errno::EINVAL),
    };
    for &c in it.take(6) {
        match c {
            b'+' => f = (f & !libc::O_ACCMODE) | libc::O_RDWR,
            b'x' => f |= libc::O_EXCL,
            b'e' => f |= libc::O_CLOEXEC,
            b',' => break,
            _ => {}
        }
    }
    Ok(f)
}

/// `fopen` on a volume path.
///
/// # Safety
/// `mode` must be a NUL-terminated string.
pub(crate) unsafe fn fopen(loc: Loc, mode: *const c_char) -> SysResult<*mut FILE> {
    // SAFETY: caller's contract.
    let flags = fopen_flags(unsafe { cpath(mode)? })?;
    let fd = open(loc, flags, 0o666)?;
    // SAFETY: caller's contract.
    match unsafe { stream(fd, mode) } {
        Ok(fp) => Ok(fp),
        Err(e) => {
            // SAFETY: our own fd.
            unsafe { crate::io::close(fd) };
            Err(e)
        }
    }
}

extern "C" {
    static mut stdin: *mut FILE;
    static mut stdout: *mut FILE;
    static mut stderr: *mut FILE;
}

/// `freopen` gave `new` for `old`: a standard stream's variable follows (glibc keeps the
/// `FILE *`; ours is a new cookie stream).
///
/// # Safety
/// No other thread may be using the standard streams' variables (freopen's own contract for
/// them).
unsafe fn follow_std(old: *mut FILE, new: *mut FILE) {
    if new.is_null() {
        return;
    }
    // SAFETY: glibc's stream variables, read and written as plain pointers; the caller's
    // contract covers concurrent use.
    unsafe {
        for v in
            [std::ptr::addr_of_mut!(stdin), std::ptr::addr_of_mut!(stdout), std::ptr::addr_of_mut!(stderr)]
        {
            if v.read() == old {
                v.write(new);
            }
        }
    }
}

/// Flushes and closes a stream for `freopen` (errors ignored, as POSIX says).
///
/// # Safety
/// `fp` must be a live stream; it is gone afterwards.
unsafe fn close_for_reopen(fp: *mut FILE) {
    let saved = errno::Saved::new();
    // SAFETY: caller's contract.
    unsafe { libc::fclose(fp) };
    drop(saved);
}

/// `freopen(path, mode, fp)` with `path` on a volume: `fp` is closed, a stream of ours on the
/// file replaces it.
///
/// # Safety
/// `mode` must be a NUL-terminated string, `fp` a live stream.
pub(crate) unsafe fn freopen_volume(loc: Loc, mode: *const c_char, fp: *mut FILE) -> SysResult<*mut FILE> {
    // SAFETY: caller's contract.
    unsafe {
        let flags = cpath(mode).and_then(fopen_flags);
        close_for_reopen(fp);
        flags?;
        let new = fopen(loc, mode)?;
        follow_std(fp, new);
        Ok(new)
    }
}

/// `freopen(path, mode, fp)` with `fp` ours and `path` a kernel path: libc's stream replaces it.
///
/// # Safety
/// `path` and `mode` must be NUL-terminated strings, `fp` a live stream.
pub(crate) unsafe fn freopen_kernel(path: *const c_char, mode: *const c_char, fp: *mut FILE) -> *mut FILE {
    // SAFETY: caller's contract.
    unsafe { close_for_reopen(fp) };
    let new = crate::io::created_file(real!(fopen(path, mode)));
    // SAFETY: caller's contract.
    unsafe { follow_std(fp, new) };
    new
}

/// `freopen(NULL, mode, fp)` on our stream over library fd `fd`: the same file opened again
/// with the new mode (as Linux's reopening of `/proc/self/fd/N`).
///
/// # Safety
/// `mode` must be a NUL-terminated string, `fp` our live stream over `fd`.
pub(crate) unsafe fn freopen_same(fd: c_int, mode: *const c_char, fp: *mut FILE) -> SysResult<*mut FILE> {
    let old = file(fd);
    // SAFETY: caller's contract.
    let flags = unsafe { cpath(mode) }.and_then(fopen_flags);
    let new = match (&old, flags) {
        (Some(f), Ok(fl)) => {
            f.reopen(fl & !(libc::O_CREAT | libc::O_EXCL), &Cred::current()).map(|o| (o, fl))
        }
        (None, _) => Err(Errno::EBADF),
        (_, Err(e)) => Err(e),
    };
    // SAFETY: caller's contract; the old stream (and its fd) goes first, so the new one
    // gets the lowest free fd as glibc keeps the number.
    unsafe { close_for_reopen(fp) };
    drop(old);
    let (obj, fl) = new?;
    let nfd = install(obj, fl & libc::O_CLOEXEC != 0)?;
    // SAFETY: caller's contract.
    match unsafe { stream(nfd, mode) } {
        Ok(nfp) => {
            // SAFETY: freopen's contract.
            unsafe { follow_std(fp, nfp) };
            Ok(nfp)
        }
        Err(e) => {
            // SAFETY: our own fd.
            unsafe { crate::io::close(nfd) };
            Err(e)
        }
    }
}

// ---- cwd and names ------------------------------------------------------------------------------

/// `chdir` to a volume directory.
pub(crate) fn chdir(loc: Loc) -> SysResult<c_int> {
    let Some(t) = mount::table() else { return Err(Errno::ENOENT) };
    let [first, second] = t.chdir_volume(&loc)?;
    // Move the kernel's cwd next to the mount (see core::fs::mount).
    for p in [first, second] {
        if let Ok(c) = CString::new(p) {
            // SAFETY: a NUL-terminated path.
            if unsafe { libc::syscall(libc::SYS_chdir, c.as_ptr()) } == 0 {
                break;
            }
        }
    }
    Ok(0)
}

/// A kernel `chdir`/`fchdir` succeeded: the kernel's cwd is the cwd again.
pub(crate) fn chdir_kernel_done(r: c_int) -> c_int {
    if r == 0 {
        if let Some(t) = mount::table() {
            t.chdir_kernel();
        }
    }
    r
}

/// `getcwd` when the cwd is on a volume: its path (`ENOENT` once the directory was
/// removed, as Linux), else `None`.
pub(crate) fn library_cwd() -> Option<SysResult<Vec<u8>>> {
    let t = mount::table()?;
    let p = catch("getcwd", || Ok(t.cwd())).ok().flatten()?;
    let saved = errno::Saved::new();
    let alive = catch("getcwd", || match t.resolve(Base::Cwd, &p)? {
        Target::Volume(l) => Ok(l.ino.is_some()),
        Target::Kernel(_) => Ok(true),
    });
    drop(saved);
    Some(match alive {
        Ok(true) => Ok(p),
        Ok(false) | Err(Errno::ENOENT) => Err(Errno::ENOENT),
        Err(_) => Ok(p),
    })
}

/// The normalised path of a volume location (`realpath`).
pub(crate) fn realpath_loc(loc: &Loc) -> SysResult<Vec<u8>> {
    vf::stat(loc)?;
    Ok(loc.path.clone())
}

/// Copies `s` + NUL into the caller's buffer, or a fresh `malloc`ed one if `buf` is null.
///
/// # Safety
/// `buf` must be null or hold `size` bytes.
pub(crate) unsafe fn out_string(s: &[u8], buf: *mut c_char, size: usize) -> SysResult<*mut c_char> {
    if buf.is_null() {
        // SAFETY: malloc; the caller frees.
        let p = unsafe { libc::malloc(s.len() + 1) }.cast::<c_char>();
        if p.is_null() {
            return Err(Errno::ENOMEM);
        }
        // SAFETY: p holds s.len() + 1 bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(s.as_ptr().cast::<c_char>(), p, s.len());
            *p.add(s.len()) = 0;
        }
        return Ok(p);
    }
    if s.len() + 1 > size {
        return Err(Errno(libc::ERANGE));
    }
    // SAFETY: buf holds size >= s.len() + 1 bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr().cast::<c_char>(), buf, s.len());
        *buf.add(s.len()) = 0;
    }
    Ok(buf)
}

/// `readlink` of a volume path: volumes have no symlinks.
pub(crate) fn readlink_loc(loc: &Loc) -> SysResult<ssize_t> {
    vf::stat(loc)?;
    Err(Errno::EINVAL)
}

/// `getxattr`/`listxattr` on a volume: no extended attributes.
pub(crate) fn xattr_loc(loc: &Loc, list: bool) -> SysResult<ssize_t> {
    vf::stat(loc)?;
    if list {
        Ok(0)
    } else {
        Err(Errno::ENODATA)
    }
}

/// `fdopen` on a library fd.
///
/// # Safety
/// `mode` must be a NUL-terminated string.
pub(crate) unsafe fn fdopen(fd: c_int, mode: *const c_char) -> *mut FILE {
    lib::guarded("fdopen", || {
        let status = match (file(fd), dir(fd)) {
            (Some(f), _) => f.status(),
            (None, Some(d)) => d.status(),
            (None, None) => return Err(Errno::EBADF),
        };
        // As glibc: the mode must fit the fd's access mode; "a" turns O_APPEND on.
        // SAFETY: caller's contract.
        let want = fopen_flags(unsafe { cpath(mode)? })?;
        let have = status & libc::O_ACCMODE;
        let ok = match want & libc::O_ACCMODE {
            libc::O_RDONLY => have != libc::O_WRONLY,
            libc::O_WRONLY => have != libc::O_RDONLY,
            _ => have == libc::O_RDWR,
        };
        if !ok || status & libc::O_PATH != 0 {
            return Err(Errno::EINVAL);
        }
        if want & libc::O_APPEND != 0 && status & libc::O_APPEND == 0 {
            if let Some(f) = file(fd) {
                f.set_status(status | libc::O_APPEND);
            }
        }
        // SAFETY: caller's contract.
        unsafe { stream(fd, mode) }
    })
}

/// `ioctl` on a library file.
pub(crate) fn ioctl(fd: c_int, request: libc::c_ulong, arg: libc::c_ulong) -> c_int {
    const FICLONE: libc::c_ulong = 0x4004_9409;
    const FICLONERANGE: libc::c_ulong = 0x4020_940d;
    match request {
        libc::FIOCLEX | libc::FIONCLEX => {
            real!(ioctl(fd, request, arg) else sys(libc::SYS_ioctl, fd, request, arg))
        }
        FICLONE | FICLONERANGE => errno::fail(Errno::EOPNOTSUPP),
        libc::FIONREAD => lib::guarded("ioctl", || {
            let f = file(fd).ok_or(Errno::ENOTTY)?;
            let size = f.stat()?.0.size;
            let pos = f.lseek(0, libc::SEEK_CUR)?;
            let out = arg as *mut c_int;
            if out.is_null() {
                return Err(Errno::EFAULT);
            }
            // SAFETY: the caller's int.
            unsafe { *out = size.saturating_sub(pos).min(c_int::MAX as u64) as c_int };
            Ok(0)
        }),
        _ => errno::fail(Errno::ENOTTY),
    }
}
