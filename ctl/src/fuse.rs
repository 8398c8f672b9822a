//! The FUSE export: `arrakis mount` shows a volume's files to programs that are not under the
//! shim (backup tools, `grep -r`, `sha256sum`), the "semantic names" upcall of the seed paper.
//!
//! [`serve`] mounts a directory with the `fuser` crate, which mounts with `mount(2)` itself when
//! run as root (no `fusermount3` needed; other users need the `fuse3` package's setuid helper),
//! and answers the kernel's requests from any [`FileSystem`]: the volume opened locally, or a
//! remote volume through [`arrakis_core::fs::rpc::Client`]. Inode numbers are the volume's own
//! (the FUSE root is 1, [`fs::ROOT`]).
//!
//! Served: lookup, getattr, setattr (mode, owner, size, times), readdir (with `.` and `..`),
//! open/release (an open file survives `unlink` until it is closed), read, write (`O_APPEND`
//! writes append atomically at the volume's end of file), create, mkdir, unlink, rmdir, rename
//! (with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`), fsync/fsyncdir, statfs, access. Symbolic
//! and hard links, device nodes, FIFOs and extended attributes are not supported by volumes
//! (`EPERM`/`ENOTSUP`). The kernel checks permissions (`default_permissions`). Attributes and
//! names are cached by the kernel for one second, and file contents until the next `open`
//! (close-to-open consistency, as NFS gives): changes made by the owner show within a second.
//!
//! The mount lasts until it is unmounted (`umount DIR`, `fusermount3 -u DIR`) or the process
//! gets SIGTERM or SIGINT, when it unmounts itself (lazily if files are still open in it).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use arrakis_core::fs::dev::{BlockDev, FileDev};
use arrakis_core::fs::volume::Volume;
use arrakis_core::fs::{self, rpc, FileSystem, FsError, Ino, RenameFlags, SetAttr, Time, WriteAt};
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, MountOption, OpenFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use nix::sys::signal::{SigSet, Signal};

/// How long the kernel may cache names and attributes.
const TTL: Duration = Duration::from_secs(1);

/// Entries asked of the volume per readdir batch.
const READDIR_BATCH: usize = 128;

/// Blocks SIGTERM and SIGINT in the calling thread (and so in every thread it starts later),
/// so that [`serve`] receives them and unmounts instead of the process dying with a mount
/// left behind. Call it before starting any thread that must not take those signals.
pub fn block_exit_signals() -> Result<()> {
    exit_signals().thread_block().context("cannot block SIGTERM/SIGINT")
}

fn exit_signals() -> SigSet {
    let mut s = SigSet::empty();
    s.add(Signal::SIGTERM);
    s.add(Signal::SIGINT);
    s
}

/// Mounts `dir` and serves `fs` there until the mount is unmounted or the process gets
/// SIGTERM/SIGINT (then unmounts cleanly). With `read_only`, the mount is read-only and every
/// change is refused with `EROFS`.
pub fn serve(fs: Arc<dyn FileSystem>, dir: &Path, read_only: bool) -> Result<()> {
    block_exit_signals()?;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("arrakis".into()),
        MountOption::Subtype("arrakis".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        if read_only { MountOption::RO } else { MountOption::RW },
    ];
    config.n_threads = Some(2);
    let mut session = fuser::Session::new(Export { fs, read_only }, dir, &config).with_context(|| {
        format!(
            "cannot mount {} with FUSE (is /dev/fuse there, and are we root or is fusermount3 from \
             the fuse3 package installed?)",
            dir.display()
        )
    })?;
    let unmounter = session.unmount_callable();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        let dir = dir.to_path_buf();
        std::thread::Builder::new()
            .name("arrakis-fuse-signals".into())
            .spawn(move || watch_signals(unmounter, &dir, &done))
            .context("cannot start the signal thread")?
    };
    let r = session.run();
    done.store(true, Ordering::SeqCst);
    let _ = watcher.join();
    r.with_context(|| format!("FUSE session on {}", dir.display()))
}

/// `arrakis mount --image FILE DIR`: opens the volume in an image file directly (no daemon;
/// a file whose first two blocks are zeros is formatted first, unless `read_only`) and serves
/// it at `dir` until unmounted. The volume is checkpointed before returning.
pub fn mount_image(image: &Path, dir: &Path, read_only: bool) -> Result<()> {
    block_exit_signals()?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(image)
        .with_context(|| format!("cannot open the volume image {}", image.display()))?;
    let len = file.metadata().with_context(|| format!("cannot stat {}", image.display()))?.len();
    let dev: Arc<dyn BlockDev> = Arc::new(FileDev::new(std::os::fd::OwnedFd::from(file), len));
    let vol = if read_only { Volume::open_readonly(dev) } else { Volume::open_or_format(dev) }
        .with_context(|| format!("cannot open the volume in {}", image.display()))?;
    serve_volume(Arc::new(vol), dir, read_only, None)
}

/// `arrakis mount VOLUME DIR`: attaches to the volume through the daemon at `daemon`
/// ([`crate::volume::attach_volume`]) and serves it at `dir`. If no process owns the volume,
/// this one becomes its owner: it opens the VSA itself and also serves the volume by RPC on the
/// socket the daemon names, for as long as it is mounted, then detaches. Otherwise it reaches
/// the owner by RPC. `read_only` makes the FUSE mount read-only; the attach is the same (so a
/// read-only mount never reads an image a live owner is writing).
pub fn mount_volume(daemon: &Path, name: &str, dir: &Path, read_only: bool) -> Result<()> {
    use crate::volume::{attach_volume, Attached};
    block_exit_signals()?;
    let mut ctl = arrakis_backends::proto::client::Client::connect(daemon)?;
    match attach_volume(&mut ctl, name)? {
        Attached::Owner { vsa, fd, socket } => {
            let dev: Arc<dyn BlockDev> = Arc::new(FileDev::new(fd, vsa.size));
            let vol =
                Arc::new(Volume::open_or_format(dev).with_context(|| format!("cannot open volume {name}"))?);
            let server = rpc::serve_unix(&socket, vol.clone())
                .with_context(|| format!("cannot serve volume {name} on {}", socket.display()))?;
            let r = serve_volume(vol, dir, read_only, Some(server));
            // Ownership ends with the process anyway; say so early.
            if let Err(e) = ctl.volume_detach(name) {
                eprintln!("arrakis mount: detaching volume {name}: {e}");
            }
            r
        }
        Attached::Remote { socket, owner, .. } => {
            drop(ctl);
            let client = rpc::Client::connect_unix(&socket).with_context(|| {
                format!("cannot reach volume {name}'s owner (pid {owner}) at {}", socket.display())
            })?;
            // When the owner exits, ask the daemon again: reach the new owner, or become it
            // (serving the volume by RPC for the rest of this process's life).
            let (daemon, vname) = (daemon.to_path_buf(), name.to_string());
            let again: rpc::Rediscover = Box::new(move || {
                let fail =
                    |e: String| arrakis_core::fs::FsError::Remote { what: format!("volume {vname}: {e}") };
                let mut ctl = arrakis_backends::proto::client::Client::connect(&daemon)
                    .map_err(|e| fail(format!("no arrakis daemon at {}: {e}", daemon.display())))?;
                match attach_volume(&mut ctl, &vname).map_err(|e| fail(format!("{e:#}")))? {
                    Attached::Remote { socket, .. } => Ok(socket),
                    Attached::Owner { vsa, fd, socket } => {
                        let dev: Arc<dyn BlockDev> = Arc::new(FileDev::new(fd, vsa.size));
                        let vol = Arc::new(Volume::open_or_format(dev)?);
                        std::mem::forget(rpc::serve_unix(&socket, vol)?);
                        Ok(socket)
                    }
                }
            });
            serve(Arc::new(client.rediscover(again)), dir, read_only)
        }
    }
}

/// Serves a local volume at `dir`, then stops `server` (its RPC clients) and checkpoints.
fn serve_volume(vol: Arc<Volume>, dir: &Path, read_only: bool, server: Option<rpc::Server>) -> Result<()> {
    let r = serve(vol.clone(), dir, read_only);
    if let Some(s) = server {
        s.shutdown();
    }
    // A read-only volume has nothing to checkpoint (sync_all returns at once).
    let synced = vol.sync_all().context("cannot checkpoint the volume");
    r.and(synced)
}

/// Waits for SIGTERM/SIGINT (checking `done` a few times a second) and unmounts.
fn watch_signals(mut unmounter: fuser::SessionUnmounter, dir: &PathBuf, done: &AtomicBool) {
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let sfd = match SignalFd::with_flags(&exit_signals(), SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "arrakis mount: cannot watch for signals ({e}); unmount with `umount {}`",
                dir.display()
            );
            return;
        }
    };
    while !done.load(Ordering::SeqCst) {
        match sfd.read_signal() {
            Ok(Some(sig)) => {
                eprintln!("arrakis mount: signal {}, unmounting {}", sig.ssi_signo, dir.display());
                if let Err(e) = unmounter.unmount() {
                    // Busy (a file or cwd open in it): detach it now, the kernel finishes later.
                    eprintln!("arrakis mount: unmount: {e}; detaching lazily");
                    if let Err(e) = rustix::mount::unmount(dir, rustix::mount::UnmountFlags::DETACH) {
                        eprintln!("arrakis mount: cannot unmount {}: {e}", dir.display());
                    }
                }
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => {
                eprintln!("arrakis mount: reading signals: {e}");
                return;
            }
        }
    }
}

/// The FUSE file system: a [`FileSystem`] and whether changes are refused.
struct Export {
    fs: Arc<dyn FileSystem>,
    read_only: bool,
}

fn errno(e: FsError) -> Errno {
    if !matches!(e, FsError::Posix(_)) {
        // What the program sees is EIO; the reason goes to the log.
        eprintln!("arrakis mount: {e}");
    }
    Errno::from_i32(arrakis_core::Errno::from(e).0)
}

fn system_time(t: Time) -> SystemTime {
    // Like a timespec: `nsec` counts forward from `sec`, also before the epoch.
    let whole = Duration::from_secs(t.sec.unsigned_abs());
    let base = if t.sec >= 0 { UNIX_EPOCH.checked_add(whole) } else { UNIX_EPOCH.checked_sub(whole) };
    base.and_then(|b| b.checked_add(Duration::from_nanos(u64::from(t.nsec)))).unwrap_or(UNIX_EPOCH)
}

fn volume_time(t: TimeOrNow) -> Time {
    match t {
        TimeOrNow::Now => Time::now(),
        TimeOrNow::SpecificTime(s) => match s.duration_since(UNIX_EPOCH) {
            Ok(d) => Time { sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nsec: d.subsec_nanos() },
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Time { sec: -i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nsec: 0 }
                } else {
                    let sec = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX - 1) - 1;
                    Time { sec, nsec: 1_000_000_000 - d.subsec_nanos() }
                }
            }
        },
    }
}

fn kind(k: fs::FileType) -> FileType {
    match k {
        fs::FileType::File => FileType::RegularFile,
        fs::FileType::Dir => FileType::Directory,
    }
}

fn file_attr(a: &fs::Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: system_time(a.atime),
        mtime: system_time(a.mtime),
        ctime: system_time(a.ctime),
        crtime: system_time(a.ctime),
        kind: kind(a.kind),
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn has_flag(flags: i32, f: rustix::fs::OFlags) -> bool {
    flags as u32 & f.bits() != 0
}

impl Export {
    fn writable(&self) -> Result<(), Errno> {
        if self.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    fn entry(&self, ino: Ino, reply: ReplyEntry) {
        match self.fs.getattr(ino) {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }
}

impl fuser::Filesystem for Export {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(parent.0, name.as_bytes()) {
            Ok(ino) => self.entry(ino, reply),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        let set = SetAttr {
            perm: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(volume_time),
            mtime: mtime.map(volume_time),
        };
        match self.fs.setattr(ino.0, set) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Volumes hold files and directories only (regular files come through `create`).
        reply.error(if self.read_only { Errno::EROFS } else { Errno::EPERM });
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        match self.fs.mkdir(parent.0, name.as_bytes(), mode & !umask & 0o7777, req.uid(), req.gid()) {
            Ok(ino) => self.entry(ino, reply),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        match self.fs.unlink(parent.0, name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        match self.fs.rmdir(parent.0, name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        let known = fuser::RenameFlags::RENAME_NOREPLACE | fuser::RenameFlags::RENAME_EXCHANGE;
        if !(flags - known).is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let f = RenameFlags {
            noreplace: flags.contains(fuser::RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(fuser::RenameFlags::RENAME_EXCHANGE),
        };
        match self.fs.rename(parent.0, name.as_bytes(), newparent.0, newname.as_bytes(), f) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let writes =
            has_flag(flags.0, rustix::fs::OFlags::WRONLY) || has_flag(flags.0, rustix::fs::OFlags::RDWR);
        if writes && self.read_only {
            return reply.error(Errno::EROFS);
        }
        match self.fs.open(ino.0) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        match self.fs.release(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        // The kernel asks for at most max_read (128 KiB by default); cap it regardless.
        let mut buf = vec![0u8; (size as usize).min(4 << 20)];
        match self.fs.read(ino.0, offset, &mut buf) {
            Ok(n) => reply.data(&buf[..n.min(buf.len())]),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        // O_APPEND: at the volume's end of file, which the kernel's cached size may not know.
        let at = if has_flag(flags.0, rustix::fs::OFlags::APPEND) {
            WriteAt::Append
        } else {
            WriteAt::Offset(offset)
        };
        let Ok(n) = u32::try_from(data.len()) else { return reply.error(Errno::EINVAL) };
        match self.fs.write(ino.0, at, data) {
            Ok(_) => reply.written(n),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes are complete when they return; close has nothing to add.
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        match self.fs.fsync(ino.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        match self.fs.fsync(ino.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        // Offsets: 0 before ".", 1 before "..", then 2 + the volume's cookie.
        let dir = ino.0;
        if offset == 0 && reply.add(ino, 1, FileType::Directory, ".") {
            return reply.ok();
        }
        if offset <= 1 {
            // The parent's number is not known without a walk; d_ino of ".." is informational.
            if reply.add(ino, 2, FileType::Directory, "..") {
                return reply.ok();
            }
        }
        let mut cookie = offset.saturating_sub(2);
        loop {
            let batch = match self.fs.readdir(dir, cookie, READDIR_BATCH) {
                Ok(b) => b,
                Err(e) => return reply.error(errno(e)),
            };
            if batch.is_empty() {
                return reply.ok();
            }
            for (ent, next) in batch {
                let off = next.saturating_add(2);
                if reply.add(INodeNo(ent.ino), off, kind(ent.kind), OsStr::from_bytes(&ent.name)) {
                    return reply.ok();
                }
                cookie = next;
            }
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => {
                let ffree = s.free;
                reply.statfs(
                    s.blocks,
                    s.free,
                    s.free,
                    s.files.saturating_add(ffree),
                    ffree,
                    s.block_size,
                    fs::NAME_MAX as u32,
                    s.block_size,
                )
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // The kernel checks permissions (default_permissions); this answers existence and
        // write access on a read-only mount.
        if self.read_only && mask.contains(fuser::AccessFlags::W_OK) {
            return reply.error(Errno::EROFS);
        }
        match self.fs.getattr(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        let exclusive = has_flag(flags, rustix::fs::OFlags::EXCL);
        let perm = mode & !umask & 0o7777;
        let r = self
            .fs
            .create(parent.0, name.as_bytes(), perm, req.uid(), req.gid(), exclusive)
            .and_then(|(ino, _)| self.fs.open(ino).map(|()| ino))
            .and_then(|ino| match self.fs.getattr(ino) {
                Ok(a) => Ok(a),
                Err(e) => {
                    let _ = self.fs.release(ino);
                    Err(e)
                }
            });
        match r {
            Ok(a) => reply.created(&TTL, &file_attr(&a), Generation(0), FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn symlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, _target: &Path, reply: ReplyEntry) {
        reply.error(if self.read_only { Errno::EROFS } else { Errno::EPERM });
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        reply.error(if self.read_only { Errno::EROFS } else { Errno::EPERM });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_convert_both_ways() {
        for t in [
            Time { sec: 0, nsec: 0 },
            Time { sec: 1_700_000_000, nsec: 999_999_999 },
            Time { sec: -5, nsec: 250_000_000 },
            Time { sec: -1, nsec: 0 },
        ] {
            assert_eq!(volume_time(TimeOrNow::SpecificTime(system_time(t))), t, "{t:?}");
        }
    }
}
