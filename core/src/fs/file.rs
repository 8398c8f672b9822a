//! Descriptor-level objects: open files and directories on a volume, their offsets and flags,
//! and the path operations the shim routes here once [`super::mount`] has resolved a path.
//!
//! An open file ([`OpenFile`]) is Linux's `struct file`: one inode, one offset shared by every
//! fd `dup`ed from it (the fd table shares the `Arc`), the status flags (`O_APPEND`,
//! `O_NONBLOCK`, the access mode) and an `open`/`release` pair on the file system that keeps
//! an unlinked file alive while it is open. `read`/`write` at the offset hold the offset's
//! lock across the file-system call, as Linux's `f_pos_lock` does, so two threads sharing an
//! fd never read the same bytes. An open directory ([`OpenDir`]) serves `getdents64`,
//! `readdir`, `fchdir` and the `*at` calls.
//!
//! After `fork` the child's copies of these objects keep working through the RPC client of
//! the mount (the mount swaps its volume; objects reach it through the mount at every call).
//! The offset is the child's own copy from the moment of the fork (Linux shares it between
//! parent and child); `O_APPEND` writes still land at the end. A child never calls `release`
//! on its parent's open (the parent's close does), so an inherited file unlinked and closed by
//! the parent fails in the child with `ESTALE`/`ENOENT`.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use super::mount::{Loc, Mount};
use super::{Attr, FileSystem, FileType, Ino, RenameFlags, SetAttr, StatFs, Time, WriteAt, ROOT};
use crate::error::{Errno, SysResult};
use crate::fd::{FdKind, FdObject};

/// Open flags, Linux x86_64 values (core does not link libc).
pub mod flags {
    /// Access mode mask.
    pub const O_ACCMODE: i32 = 0o3;
    /// Read only.
    pub const O_RDONLY: i32 = 0;
    /// Write only.
    pub const O_WRONLY: i32 = 0o1;
    /// Read and write.
    pub const O_RDWR: i32 = 0o2;
    /// Create.
    pub const O_CREAT: i32 = 0o100;
    /// With `O_CREAT`: fail if it exists.
    pub const O_EXCL: i32 = 0o200;
    /// Truncate.
    pub const O_TRUNC: i32 = 0o1000;
    /// Append.
    pub const O_APPEND: i32 = 0o2000;
    /// Non-blocking.
    pub const O_NONBLOCK: i32 = 0o4000;
    /// Must be a directory.
    pub const O_DIRECTORY: i32 = 0o200000;
    /// Do not follow a final symlink.
    pub const O_NOFOLLOW: i32 = 0o400000;
    /// Close on exec (the placeholder's).
    pub const O_CLOEXEC: i32 = 0o2000000;
    /// Path-only descriptor.
    pub const O_PATH: i32 = 0o10000000;
    /// `O_TMPFILE` (includes `O_DIRECTORY`).
    pub const O_TMPFILE: i32 = 0o20200000;
    /// Large-file flag the kernel reports in `F_GETFL` on 64-bit.
    pub const O_LARGEFILE: i32 = 0o100000;
    /// Synchronous writes.
    pub const O_SYNC: i32 = 0o4010000;
    /// Synchronous data writes.
    pub const O_DSYNC: i32 = 0o10000;
    /// Flags `F_SETFL` may change.
    pub const SETFL_MASK: i32 = O_APPEND | O_NONBLOCK | 0o20000 /* O_ASYNC */ | 0o40000 /* O_DIRECT */ | 0o1000000 /* O_NOATIME */;
}
use flags::*;

/// Who is asking: effective uid and gid, and the umask for creations.
#[derive(Clone, Copy, Debug)]
pub struct Cred {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// The process's umask.
    pub umask: u32,
}

impl Cred {
    /// The calling process's credentials and umask.
    pub fn current() -> Cred {
        let uid = rustix::process::geteuid().as_raw();
        let gid = rustix::process::getegid().as_raw();
        Cred { uid, gid, umask: current_umask() }
    }
}

/// The umask (read by setting and restoring it: two system calls, no allocation).
fn current_umask() -> u32 {
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    rustix::process::umask(old);
    old.as_raw_mode()
}

/// `access` bits.
pub const R_OK: u32 = 4;
/// Write.
pub const W_OK: u32 = 2;
/// Execute/search.
pub const X_OK: u32 = 1;

/// The `R_OK|W_OK` bits an open with access mode `acc` (and `O_TRUNC` if `truncates`) needs.
fn access_wanted(acc: i32, truncates: bool) -> u32 {
    let mode = match acc {
        O_RDONLY => R_OK,
        O_WRONLY => W_OK,
        _ => R_OK | W_OK,
    };
    if truncates {
        mode | W_OK
    } else {
        mode
    }
}

/// Whether `cred` may do `want` (`R_OK|W_OK|X_OK` bits) on an inode with `attr`, as Linux's
/// `generic_permission` (root may do anything but execute a file with no x bit).
pub fn permitted(attr: &Attr, cred: &Cred, want: u32) -> bool {
    if cred.uid == 0 {
        return want & X_OK == 0 || attr.kind == FileType::Dir || attr.perm & 0o111 != 0;
    }
    let bits = if attr.uid == cred.uid {
        (attr.perm >> 6) & 7
    } else if attr.gid == cred.gid {
        (attr.perm >> 3) & 7
    } else {
        attr.perm & 7
    };
    bits & want == want
}

fn pid() -> u32 {
    std::process::id()
}

/// An open regular file.
pub struct OpenFile {
    mount: Arc<Mount>,
    ino: Ino,
    /// Access mode and status flags (`O_APPEND`, `O_NONBLOCK`, ...).
    status: AtomicI32,
    offset: Mutex<u64>,
    /// The process that opened it (the one whose close releases it).
    opener: u32,
}

impl std::fmt::Debug for OpenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpenFile({:?}, ino {})", self.mount, self.ino)
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        if self.opener == pid() {
            if let Ok(fs) = self.mount.fs() {
                let _ = fs.release(self.ino);
            }
        }
    }
}

/// An open directory.
pub struct OpenDir {
    mount: Arc<Mount>,
    ino: Ino,
    parent: Ino,
    path: Vec<u8>,
    status: AtomicI32,
    /// Position: 0 next is `.`, 1 next is `..`, `2 + c` next is the volume's cookie `c`.
    pos: Mutex<u64>,
    opener: u32,
}

impl std::fmt::Debug for OpenDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpenDir({:?}, {})", self.mount, String::from_utf8_lossy(&self.path))
    }
}

impl Drop for OpenDir {
    fn drop(&mut self) {
        if self.opener == pid() {
            if let Ok(fs) = self.mount.fs() {
                let _ = fs.release(self.ino);
            }
        }
    }
}

macro_rules! fd_object {
    ($t:ty) => {
        impl FdObject for $t {
            fn kind(&self) -> FdKind {
                FdKind::File
            }
            fn as_any(&self) -> &dyn std::any::Any {
                self
            }
            fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
                self
            }
        }
    };
}
fd_object!(OpenFile);
fd_object!(OpenDir);

/// What `open` made.
pub enum Opened {
    /// A regular file.
    File(Arc<OpenFile>),
    /// A directory.
    Dir(Arc<OpenDir>),
}

impl Opened {
    /// As the fd table's object.
    pub fn into_object(self) -> Arc<dyn FdObject> {
        match self {
            Opened::File(f) => f,
            Opened::Dir(d) => d,
        }
    }
}

fn rofs(loc: &Loc) -> SysResult<()> {
    if loc.mount.read_only {
        Err(Errno::EROFS)
    } else {
        Ok(())
    }
}

/// The name and parent a creating or removing call works on: `EEXIST`/`EBUSY`-like errors
/// for paths that end at `.`, `..` or a mount's root are the caller's (`none`).
fn named(loc: &Loc, none: Errno) -> SysResult<&[u8]> {
    loc.name.as_deref().ok_or(none)
}

/// `open`/`openat`/`creat` on a volume path.
pub fn open(loc: &Loc, oflags: i32, mode: u32, cred: &Cred) -> SysResult<Opened> {
    let fs = &loc.fs;
    if oflags & O_TMPFILE == O_TMPFILE {
        return Err(Errno::EOPNOTSUPP);
    }
    let acc = oflags & O_ACCMODE;
    let path_only = oflags & O_PATH != 0;
    let writes = !path_only && (acc == O_WRONLY || acc == O_RDWR);
    if acc == O_ACCMODE && !path_only {
        return Err(Errno::EINVAL);
    }
    // Linux refuses the ambiguous O_CREAT | O_DIRECTORY before looking at the path.
    if oflags & O_CREAT != 0 && oflags & O_DIRECTORY != 0 && !path_only {
        return Err(Errno::EINVAL);
    }
    // O_TRUNC asks for write access (Linux: EISDIR on a directory, W_OK on a file).
    let truncates = !path_only && oflags & O_TRUNC != 0;
    let (ino, created) = match loc.ino {
        Some(ino) => {
            if oflags & O_CREAT != 0 && oflags & O_EXCL != 0 && !path_only {
                return Err(Errno::EEXIST);
            }
            (ino, false)
        }
        None if oflags & O_CREAT != 0 && !path_only => {
            if loc.dir_required {
                return Err(Errno::EISDIR);
            }
            rofs(loc)?;
            let name = named(loc, Errno::EISDIR)?;
            let pattr = fs.getattr(loc.parent)?;
            if !permitted(&pattr, cred, W_OK | X_OK) {
                return Err(Errno::EACCES);
            }
            let (ino, created) = fs.create(
                loc.parent,
                name,
                mode & 0o7777 & !cred.umask,
                cred.uid,
                cred.gid,
                oflags & O_EXCL != 0,
            )?;
            (ino, created)
        }
        None => return Err(Errno::ENOENT),
    };
    let attr = fs.getattr(ino)?;
    if loc.dir_required && attr.kind != FileType::Dir {
        return Err(Errno::ENOTDIR);
    }
    let status = (oflags & (O_ACCMODE | O_APPEND | O_NONBLOCK | O_PATH | O_SYNC | O_DSYNC)) | O_LARGEFILE;
    match attr.kind {
        FileType::Dir => {
            if oflags & O_CREAT != 0 && !path_only && loc.ino.is_some() {
                return Err(Errno::EISDIR);
            }
            if writes || truncates {
                return Err(Errno::EISDIR);
            }
            if !path_only && !permitted(&attr, cred, R_OK) {
                return Err(Errno::EACCES);
            }
            fs.open(ino)?;
            let parent = if ino == ROOT { ROOT } else { loc.parent };
            Ok(Opened::Dir(Arc::new(OpenDir {
                mount: loc.mount.clone(),
                ino,
                parent,
                path: loc.path.clone(),
                status: AtomicI32::new(status),
                pos: Mutex::new(0),
                opener: pid(),
            })))
        }
        FileType::File => {
            if oflags & O_DIRECTORY != 0 {
                return Err(Errno::ENOTDIR);
            }
            if !path_only && !created && !permitted(&attr, cred, access_wanted(acc, truncates)) {
                return Err(Errno::EACCES);
            }
            if writes || truncates {
                rofs(loc)?;
            }
            if truncates && attr.size != 0 {
                fs.setattr(ino, SetAttr { size: Some(0), ..SetAttr::default() })?;
            }
            fs.open(ino)?;
            Ok(Opened::File(Arc::new(OpenFile {
                mount: loc.mount.clone(),
                ino,
                status: AtomicI32::new(status),
                offset: Mutex::new(0),
                opener: pid(),
            })))
        }
    }
}

/// `stat`/`lstat` of a volume path: the attributes and the mount's `st_dev`.
pub fn stat(loc: &Loc) -> SysResult<(Attr, u64)> {
    let ino = loc.ino.ok_or(Errno::ENOENT)?;
    let attr = loc.fs.getattr(ino)?;
    if loc.dir_required && attr.kind != FileType::Dir {
        return Err(Errno::ENOTDIR);
    }
    Ok((attr, loc.mount.dev))
}

/// `access`/`faccessat`.
pub fn access(loc: &Loc, mode: u32, cred: &Cred) -> SysResult<()> {
    let (attr, _) = stat(loc)?;
    if mode & W_OK != 0 && loc.mount.read_only {
        return Err(Errno::EROFS);
    }
    if mode & 7 != 0 && !permitted(&attr, cred, mode & 7) {
        return Err(Errno::EACCES);
    }
    Ok(())
}

/// `mkdir`/`mkdirat`.
pub fn mkdir(loc: &Loc, mode: u32, cred: &Cred) -> SysResult<()> {
    if loc.ino.is_some() {
        return Err(Errno::EEXIST);
    }
    let name = named(loc, Errno::EEXIST)?;
    rofs(loc)?;
    let pattr = loc.fs.getattr(loc.parent)?;
    if !permitted(&pattr, cred, W_OK | X_OK) {
        return Err(Errno::EACCES);
    }
    loc.fs.mkdir(loc.parent, name, mode & 0o7777 & !cred.umask, cred.uid, cred.gid)?;
    Ok(())
}

/// `unlink`/`unlinkat`.
pub fn unlink(loc: &Loc) -> SysResult<()> {
    let ino = loc.ino.ok_or(Errno::ENOENT)?;
    let Some(name) = loc.name.as_deref() else {
        return Err(if ino == ROOT && loc.path == loc.mount.path { Errno::EBUSY } else { Errno::EISDIR });
    };
    if loc.dir_required {
        let attr = loc.fs.getattr(ino)?;
        return Err(if attr.kind == FileType::Dir { Errno::EISDIR } else { Errno::ENOTDIR });
    }
    rofs(loc)?;
    loc.fs.unlink(loc.parent, name)?;
    Ok(())
}

/// `rmdir`/`unlinkat(AT_REMOVEDIR)`.
pub fn rmdir(loc: &Loc) -> SysResult<()> {
    let ino = loc.ino.ok_or(Errno::ENOENT)?;
    let Some(name) = loc.name.as_deref() else {
        // rmdir("d/.") is EINVAL, rmdir("d/..") ENOTEMPTY (whatever `d/..` is), a mount's
        // root EBUSY, as Linux.
        return Err(match loc.last_dots {
            1 => Errno::EINVAL,
            2 => Errno::ENOTEMPTY,
            _ => Errno::EBUSY,
        });
    };
    let _ = ino;
    rofs(loc)?;
    loc.fs.rmdir(loc.parent, name)?;
    Ok(())
}

/// `rename`/`renameat2` within one volume (`EXDEV` across mounts: the caller checks).
pub fn rename(from: &Loc, to: &Loc, rflags: RenameFlags) -> SysResult<()> {
    if !Arc::ptr_eq(&from.mount, &to.mount) {
        return Err(Errno::EXDEV);
    }
    let src_ino = from.ino.ok_or(Errno::ENOENT)?;
    let (Some(a), Some(b)) = (from.name.as_deref(), to.name.as_deref()) else {
        return Err(Errno::EBUSY);
    };
    if rflags.noreplace && to.ino.is_some() {
        // Even onto itself, as Linux.
        return Err(Errno::EEXIST);
    }
    let src = from.fs.getattr(src_ino)?;
    if (from.dir_required || to.dir_required) && src.kind != FileType::Dir {
        return Err(Errno::ENOTDIR);
    }
    rofs(from)?;
    from.fs.rename(from.parent, a, to.parent, b, rflags)?;
    Ok(())
}

/// `truncate` by path.
pub fn truncate(loc: &Loc, len: i64, cred: &Cred) -> SysResult<()> {
    if len < 0 {
        return Err(Errno::EINVAL);
    }
    let (attr, _) = stat(loc)?;
    if attr.kind == FileType::Dir {
        return Err(Errno::EISDIR);
    }
    rofs(loc)?;
    if !permitted(&attr, cred, W_OK) {
        return Err(Errno::EACCES);
    }
    loc.fs.setattr(attr.ino, SetAttr { size: Some(len as u64), ..SetAttr::default() })?;
    Ok(())
}

/// `chmod`/`chown`/`utimensat` by path: the change, checked against the read-only mount.
pub fn setattr(loc: &Loc, set: SetAttr) -> SysResult<()> {
    let (attr, _) = stat(loc)?;
    rofs(loc)?;
    loc.fs.setattr(attr.ino, set)?;
    Ok(())
}

/// `statfs` of a mount.
pub fn statfs(mount: &Mount) -> SysResult<StatFs> {
    Ok(mount.fs()?.statfs()?)
}

fn off_ok(v: u64) -> SysResult<u64> {
    if v > i64::MAX as u64 {
        Err(Errno::EINVAL)
    } else {
        Ok(v)
    }
}

/// `lseek` whence values.
pub mod whence {
    /// From the start.
    pub const SEEK_SET: i32 = 0;
    /// From the offset.
    pub const SEEK_CUR: i32 = 1;
    /// From the end.
    pub const SEEK_END: i32 = 2;
    /// Next data.
    pub const SEEK_DATA: i32 = 3;
    /// Next hole.
    pub const SEEK_HOLE: i32 = 4;
}

fn seek_to(cur: u64, size: u64, off: i64, wh: i32) -> SysResult<u64> {
    use whence::*;
    let base: i128 = match wh {
        SEEK_SET => 0,
        SEEK_CUR => cur as i128,
        SEEK_END => size as i128,
        SEEK_DATA => {
            if off < 0 || off as u64 >= size {
                return Err(Errno::ENXIO);
            }
            return Ok(off as u64);
        }
        SEEK_HOLE => {
            if off < 0 || off as u64 >= size {
                return Err(Errno::ENXIO);
            }
            return Ok(size);
        }
        _ => return Err(Errno::EINVAL),
    };
    let to = base + off as i128;
    if to < 0 || to > i64::MAX as i128 {
        return Err(Errno::EINVAL);
    }
    Ok(to as u64)
}

impl OpenFile {
    /// The mount it is on.
    pub fn mount(&self) -> &Arc<Mount> {
        &self.mount
    }

    /// The inode.
    pub fn ino(&self) -> Ino {
        self.ino
    }

    fn fs(&self) -> SysResult<Arc<dyn FileSystem>> {
        self.mount.fs()
    }

    /// `F_GETFL`.
    pub fn status(&self) -> i32 {
        self.status.load(Ordering::Acquire)
    }

    /// A new open file description of the same file with `oflags` (`freopen(NULL, mode, f)`,
    /// which Linux does by opening `/proc/self/fd/N` again): the permissions are checked
    /// anew, `O_TRUNC` truncates, the offset starts at 0.
    pub fn reopen(&self, oflags: i32, cred: &Cred) -> SysResult<Arc<OpenFile>> {
        let acc = oflags & O_ACCMODE;
        if acc == O_ACCMODE {
            return Err(Errno::EINVAL);
        }
        let fs = self.fs()?;
        let attr = fs.getattr(self.ino)?;
        let truncates = oflags & O_TRUNC != 0;
        let writes = acc != O_RDONLY || truncates;
        if !permitted(&attr, cred, access_wanted(acc, truncates)) {
            return Err(Errno::EACCES);
        }
        if writes && self.mount.read_only {
            return Err(Errno::EROFS);
        }
        if truncates && attr.size != 0 {
            fs.setattr(self.ino, SetAttr { size: Some(0), ..SetAttr::default() })?;
        }
        fs.open(self.ino)?;
        let status = (oflags & (O_ACCMODE | O_APPEND | O_NONBLOCK | O_SYNC | O_DSYNC)) | O_LARGEFILE;
        Ok(Arc::new(OpenFile {
            mount: self.mount.clone(),
            ino: self.ino,
            status: AtomicI32::new(status),
            offset: Mutex::new(0),
            opener: pid(),
        }))
    }

    /// `F_SETFL`: only `O_APPEND`, `O_NONBLOCK` (and the flags Linux ignores) change.
    pub fn set_status(&self, new: i32) {
        let old = self.status.load(Ordering::Acquire);
        self.status.store((old & !SETFL_MASK) | (new & SETFL_MASK), Ordering::Release);
    }

    fn readable(&self) -> SysResult<()> {
        let s = self.status();
        if s & O_PATH != 0 || s & O_ACCMODE == O_WRONLY {
            return Err(Errno::EBADF);
        }
        Ok(())
    }

    fn writable(&self) -> SysResult<()> {
        let s = self.status();
        if s & O_PATH != 0 || s & O_ACCMODE == O_RDONLY {
            return Err(Errno::EBADF);
        }
        Ok(())
    }

    fn sync_if_asked(&self, fs: &dyn FileSystem) -> SysResult<()> {
        let s = self.status();
        if s & O_DSYNC != 0 {
            fs.fsync(self.ino, s & O_SYNC != O_SYNC)?;
        }
        Ok(())
    }

    /// `readv` at the offset, advancing it.
    pub fn read(&self, bufs: &mut [&mut [u8]]) -> SysResult<usize> {
        self.readable()?;
        let fs = self.fs()?;
        let mut off = self.offset.lock().unwrap_or_else(|e| e.into_inner());
        let n = read_into(&*fs, self.ino, *off, bufs)?;
        *off += n as u64;
        Ok(n)
    }

    /// `preadv`.
    pub fn pread(&self, bufs: &mut [&mut [u8]], at: i64) -> SysResult<usize> {
        self.readable()?;
        if at < 0 {
            return Err(Errno::EINVAL);
        }
        read_into(&*self.fs()?, self.ino, at as u64, bufs)
    }

    /// `writev` at the offset (or the end with `O_APPEND`), advancing it.
    pub fn write(&self, bufs: &[&[u8]]) -> SysResult<usize> {
        self.writable()?;
        let fs = self.fs()?;
        let data = gather(bufs);
        let mut off = self.offset.lock().unwrap_or_else(|e| e.into_inner());
        if data.is_empty() {
            return Ok(0);
        }
        let at = if self.status() & O_APPEND != 0 { WriteAt::Append } else { WriteAt::Offset(*off) };
        if let WriteAt::Offset(o) = at {
            off_ok(o.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?).map_err(|_| Errno::EFBIG)?;
        }
        let wrote_at = fs.write(self.ino, at, &data)?;
        *off = wrote_at + data.len() as u64;
        drop(off);
        self.sync_if_asked(&*fs)?;
        Ok(data.len())
    }

    /// `pwritev` (at the end with `O_APPEND`, as Linux does).
    pub fn pwrite(&self, bufs: &[&[u8]], at: i64) -> SysResult<usize> {
        self.writable()?;
        if at < 0 {
            return Err(Errno::EINVAL);
        }
        let fs = self.fs()?;
        let data = gather(bufs);
        if data.is_empty() {
            return Ok(0);
        }
        let w = if self.status() & O_APPEND != 0 { WriteAt::Append } else { WriteAt::Offset(at as u64) };
        fs.write(self.ino, w, &data)?;
        self.sync_if_asked(&*fs)?;
        Ok(data.len())
    }

    /// `lseek`.
    pub fn lseek(&self, off: i64, wh: i32) -> SysResult<u64> {
        let fs = self.fs()?;
        let mut cur = self.offset.lock().unwrap_or_else(|e| e.into_inner());
        let size =
            if wh == whence::SEEK_SET || wh == whence::SEEK_CUR { 0 } else { fs.getattr(self.ino)?.size };
        *cur = seek_to(*cur, size, off, wh)?;
        Ok(*cur)
    }

    /// `ftruncate`.
    pub fn truncate(&self, len: i64) -> SysResult<()> {
        if len < 0 {
            return Err(Errno::EINVAL);
        }
        let s = self.status();
        if s & O_PATH != 0 {
            return Err(Errno::EBADF);
        }
        if s & O_ACCMODE == O_RDONLY {
            return Err(Errno::EINVAL);
        }
        if self.mount.read_only {
            return Err(Errno::EROFS);
        }
        self.fs()?.setattr(self.ino, SetAttr { size: Some(len as u64), ..SetAttr::default() })?;
        Ok(())
    }

    /// `fallocate(mode 0)`/`posix_fallocate`: extends the file to `off + len` if shorter.
    pub fn allocate(&self, off: i64, len: i64) -> SysResult<()> {
        if off < 0 || len <= 0 {
            return Err(Errno::EINVAL);
        }
        self.writable()?;
        let end = (off as u64).checked_add(len as u64).ok_or(Errno::EFBIG)?;
        off_ok(end).map_err(|_| Errno::EFBIG)?;
        let fs = self.fs()?;
        if fs.getattr(self.ino)?.size < end {
            fs.setattr(self.ino, SetAttr { size: Some(end), ..SetAttr::default() })?;
        }
        Ok(())
    }

    /// `fsync`/`fdatasync`.
    pub fn fsync(&self, datasync: bool) -> SysResult<()> {
        Ok(self.fs()?.fsync(self.ino, datasync)?)
    }

    /// `fstat`.
    pub fn stat(&self) -> SysResult<(Attr, u64)> {
        Ok((self.fs()?.getattr(self.ino)?, self.mount.dev))
    }

    /// `fchmod`/`fchown`/`futimens`.
    pub fn setattr(&self, set: SetAttr) -> SysResult<()> {
        if self.mount.read_only {
            return Err(Errno::EROFS);
        }
        self.fs()?.setattr(self.ino, set)?;
        Ok(())
    }
}

fn gather(bufs: &[&[u8]]) -> std::borrow::Cow<'static, [u8]> {
    // One buffer for the file system's one atomic write; a single buffer is copied too,
    // which keeps the lifetime simple (writes are bounded by the caller's memory anyway).
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let mut v = Vec::with_capacity(total);
    for b in bufs {
        v.extend_from_slice(b);
    }
    std::borrow::Cow::Owned(v)
}

fn read_into(fs: &dyn FileSystem, ino: Ino, mut off: u64, bufs: &mut [&mut [u8]]) -> SysResult<usize> {
    let mut total = 0;
    for b in bufs.iter_mut() {
        if b.is_empty() {
            continue;
        }
        let n = fs.read(ino, off, b)?;
        total += n;
        off += n as u64;
        if n < b.len() {
            break;
        }
    }
    Ok(total)
}

/// `d_type` values.
const DT_DIR: u8 = 4;
const DT_REG: u8 = 8;

/// One directory entry as `readdir` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dirent {
    /// Inode.
    pub ino: Ino,
    /// Position after this entry (`telldir`, `d_off`).
    pub off: i64,
    /// `DT_DIR` or `DT_REG`.
    pub dtype: u8,
    /// The name.
    pub name: Vec<u8>,
}

impl OpenDir {
    /// The mount it is on.
    pub fn mount(&self) -> &Arc<Mount> {
        &self.mount
    }

    /// The directory's inode.
    pub fn ino(&self) -> Ino {
        self.ino
    }

    /// The directory's absolute path (as it was opened).
    pub fn path(&self) -> &[u8] {
        &self.path
    }

    /// `F_GETFL`.
    pub fn status(&self) -> i32 {
        self.status.load(Ordering::Acquire) | O_DIRECTORY
    }

    /// `F_SETFL`.
    pub fn set_status(&self, new: i32) {
        let old = self.status.load(Ordering::Acquire);
        self.status.store((old & !SETFL_MASK) | (new & SETFL_MASK), Ordering::Release);
    }

    /// `fstat`.
    pub fn stat(&self) -> SysResult<(Attr, u64)> {
        Ok((self.mount.fs()?.getattr(self.ino)?, self.mount.dev))
    }

    /// `fchmod`, ... on the directory.
    pub fn setattr(&self, set: SetAttr) -> SysResult<()> {
        if self.mount.read_only {
            return Err(Errno::EROFS);
        }
        self.mount.fs()?.setattr(self.ino, set)?;
        Ok(())
    }

    /// `fsync` on a directory: names durable.
    pub fn fsync(&self, datasync: bool) -> SysResult<()> {
        Ok(self.mount.fs()?.fsync(self.ino, datasync)?)
    }

    /// Up to `max` entries from the position, advancing it past those returned.
    pub fn next_entries(&self, max: usize) -> SysResult<Vec<Dirent>> {
        let mut pos = self.pos.lock().unwrap_or_else(|e| e.into_inner());
        let out = self.entries_from(*pos, max)?;
        if let Some(last) = out.last() {
            *pos = last.off as u64;
        }
        Ok(out)
    }

    fn entries_from(&self, pos: u64, max: usize) -> SysResult<Vec<Dirent>> {
        let mut out = Vec::new();
        let mut pos = pos;
        if max == 0 {
            return Ok(out);
        }
        if pos == 0 {
            out.push(Dirent { ino: self.ino, off: 1, dtype: DT_DIR, name: b".".to_vec() });
            pos = 1;
        }
        if pos == 1 && out.len() < max {
            out.push(Dirent { ino: self.parent, off: 2, dtype: DT_DIR, name: b"..".to_vec() });
            pos = 2;
        }
        if out.len() < max && pos >= 2 {
            let fs = self.mount.fs()?;
            let got = fs.readdir(self.ino, pos - 2, max - out.len())?;
            for (e, next) in got {
                let off = next.checked_add(2).filter(|&o| o <= i64::MAX as u64).ok_or(Errno::EOVERFLOW)?;
                let dtype = if e.kind == FileType::Dir { DT_DIR } else { DT_REG };
                out.push(Dirent { ino: e.ino, off: off as i64, dtype, name: e.name });
            }
        }
        Ok(out)
    }

    /// `getdents64`: fills `buf` with `linux_dirent64` records. `EINVAL` if not even one fits.
    pub fn getdents64(&self, buf: &mut [u8]) -> SysResult<usize> {
        let mut pos = self.pos.lock().unwrap_or_else(|e| e.into_inner());
        let mut used = 0;
        loop {
            let batch = self.entries_from(*pos, 64)?;
            if batch.is_empty() {
                return Ok(used);
            }
            for e in batch {
                let reclen = (19 + e.name.len() + 1).next_multiple_of(8);
                if used + reclen > buf.len() {
                    if used == 0 {
                        return Err(Errno::EINVAL);
                    }
                    return Ok(used);
                }
                let r = &mut buf[used..used + reclen];
                r.fill(0);
                r[0..8].copy_from_slice(&e.ino.to_ne_bytes());
                r[8..16].copy_from_slice(&e.off.to_ne_bytes());
                r[16..18].copy_from_slice(&(reclen as u16).to_ne_bytes());
                r[18] = e.dtype;
                r[19..19 + e.name.len()].copy_from_slice(&e.name);
                used += reclen;
                *pos = e.off as u64;
            }
        }
    }

    /// `lseek` on the directory (`rewinddir`, `seekdir`): only `SEEK_SET` and `SEEK_CUR`.
    pub fn lseek(&self, off: i64, wh: i32) -> SysResult<u64> {
        let mut pos = self.pos.lock().unwrap_or_else(|e| e.into_inner());
        let to = match wh {
            whence::SEEK_SET => off,
            whence::SEEK_CUR => (*pos as i64).checked_add(off).ok_or(Errno::EINVAL)?,
            _ => return Err(Errno::EINVAL),
        };
        if to < 0 {
            return Err(Errno::EINVAL);
        }
        *pos = to as u64;
        Ok(*pos)
    }

    /// The position (`telldir`).
    pub fn tell(&self) -> u64 {
        *self.pos.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `utimensat`'s special nanosecond values.
pub const UTIME_NOW: i64 = (1 << 30) - 1;
/// Leave the time.
pub const UTIME_OMIT: i64 = (1 << 30) - 2;

/// A `timespec` from `utimensat` as the change it asks for.
pub fn utime(sec: i64, nsec: i64) -> SysResult<Option<Time>> {
    match nsec {
        UTIME_OMIT => Ok(None),
        UTIME_NOW => Ok(Some(Time::now())),
        n if (0..1_000_000_000).contains(&n) => Ok(Some(Time { sec, nsec: n as u32 })),
        _ => Err(Errno::EINVAL),
    }
}
