//! Mounts (path prefix → volume), path resolution and the library OS's cwd.
//!
//! `ARRAKIS_VOLUMES=NAME:/abs/path[:ro],...` (set by `arrakis run --volume`) names the mounts.
//! A path whose walk enters a mount's directory is served by the library OS; every other path
//! stays on the kernel, untouched. With no mounts configured the shim asks only
//! [`active`] (one atomic load) and nothing here allocates.
//!
//! **Resolution** ([`Table::resolve`]) is Linux's walk with one simplification on the kernel
//! side: the part of a path outside every mount is resolved lexically (`.` dropped, `..` pops
//! a component, repeated slashes collapse); kernel symlinks are not followed to find out
//! whether a path enters a mount (a symlink *to* a mount's directory reaches the kernel's
//! directory below it, not the volume). Inside a mount the walk is the volume's: each
//! component is looked up, a file in the middle is `ENOTDIR`, `..` at the mount's root leaves
//! the mount for the kernel directory that holds it, a trailing slash requires a directory.
//!
//! **The cwd.** After `chdir` into a mount, the library OS keeps the cwd (volume, inode, path);
//! relative paths resolve from it and `getcwd` returns its path. The kernel's cwd moves to the
//! mount's directory on the kernel if that exists, else to the directory that holds the mount
//! (so that children and kernel-relative calls land next to it); a `chdir` outside every mount
//! makes the kernel's cwd the truth again. A process that starts with its kernel cwd inside a
//! mount's path starts with the library cwd there (at the mount's root if the rest of the path
//! does not exist on the volume).
//!
//! **Where a volume comes from** ([`attach`], one function): with the loopback backend, an
//! in-memory volume made at first use, per process; otherwise the daemon's `VolumeAttach`:
//! as the owner the process mounts the VSA's fd itself and serves it to others by RPC on the
//! socket the daemon named, or it reaches the owner by RPC.
//!
//! **fork**: the child must never write its parent's volume metadata. Before `fork` every
//! volume this process owns is served on a Unix socket (the daemon's, or a private one for
//! the loopback backend); in the child ([`after_fork_child`]) each becomes an RPC client of
//! that socket and the parent's `Volume` object is leaked (`mem::forget`: its locks may be
//! held by threads that do not exist in the child).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use super::{FileSystem, FileType, FsError, FsResult, Ino, ROOT};
use crate::config::Backend;
use crate::error::{Errno, SysResult};

/// `f_type` of a volume in `statfs`: "ARRK".
pub const MAGIC: i64 = 0x4152_524B;

/// One mount as `ARRAKIS_VOLUMES` gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// The VSA's (and volume's) name.
    pub name: String,
    /// Absolute, normalised path of the mount's directory (never `/`).
    pub path: Vec<u8>,
    /// Mounted read-only: writes fail with `EROFS`.
    pub read_only: bool,
}

/// Parses `NAME:/abs/path[:ro],NAME2:/path2`. Errors name the bad entry.
pub fn parse_volumes(s: &str) -> Result<Vec<Spec>, String> {
    let mut out: Vec<Spec> = Vec::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let mut parts = entry.splitn(3, ':');
        let name = parts.next().unwrap_or_default();
        let path = parts.next().unwrap_or_default();
        let read_only = match parts.next() {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(o) => return Err(format!("{entry:?}: unknown option {o:?} (only `ro` and `rw`)")),
        };
        if name.is_empty() || !path.starts_with('/') {
            return Err(format!("{entry:?} is not NAME:/absolute/path[:ro]"));
        }
        let comps = components(path.as_bytes());
        if comps.iter().any(|c| *c == b"." || *c == b"..") || comps.is_empty() {
            return Err(format!("{entry:?}: the path must be absolute, without `.` or `..`, and not `/`"));
        }
        let norm = join(&comps);
        if out.iter().any(|m| m.path == norm || m.name == name) {
            return Err(format!("{entry:?}: the same name or path is mounted twice"));
        }
        out.push(Spec { name: name.to_string(), path: norm, read_only });
    }
    Ok(out)
}

fn components(p: &[u8]) -> Vec<&[u8]> {
    p.split(|&b| b == b'/').filter(|c| !c.is_empty()).collect()
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    if comps.is_empty() {
        return b"/".to_vec();
    }
    let mut v = Vec::with_capacity(comps.iter().map(|c| c.len() + 1).sum());
    for c in comps {
        v.push(b'/');
        v.extend_from_slice(c);
    }
    v
}

/// How this process reaches a mount's volume.
enum Reach {
    /// Not attached yet (first use attaches).
    Unattached,
    /// Attaching failed: every call on the mount fails with this error.
    Failed(Errno),
    /// This process owns the volume; `socket` is where it serves it (once it does).
    Owner { fs: Arc<dyn FileSystem>, socket: Option<std::path::PathBuf> },
    /// Another process (the owner, or the parent after fork) serves it at `socket`; the
    /// client is made at first use.
    Remote { fs: Option<Arc<dyn FileSystem>>, socket: std::path::PathBuf },
}

/// One mounted volume.
pub struct Mount {
    /// The VSA's name.
    pub name: String,
    /// The mount's directory (absolute, normalised).
    pub path: Vec<u8>,
    /// Writes fail with `EROFS`.
    pub read_only: bool,
    /// `st_dev` of every inode on it.
    pub dev: u64,
    comps: Vec<Vec<u8>>,
    reach: Mutex<Reach>,
    backend: Backend,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mount({} at {})", self.name, String::from_utf8_lossy(&self.path))
    }
}

impl Mount {
    fn new(spec: &Spec, idx: usize, backend: Backend) -> Mount {
        Mount {
            name: spec.name.clone(),
            path: spec.path.clone(),
            read_only: spec.read_only,
            // Major 0 (anonymous devices), a minor no kernel file system of these machines uses.
            dev: makedev(0, 0xA00 + idx as u64),
            comps: components(&spec.path).into_iter().map(<[u8]>::to_vec).collect(),
            reach: Mutex::new(Reach::Unattached),
            backend,
        }
    }

    /// A mount served by `fs` (tests, and tools that already hold a volume).
    pub fn with_fs(spec: &Spec, idx: usize, fs: Arc<dyn FileSystem>) -> Mount {
        let m = Mount::new(spec, idx, Backend::Loopback);
        *m.lock() = Reach::Owner { fs, socket: None };
        m
    }

    fn lock(&self) -> MutexGuard<'_, Reach> {
        self.reach.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The volume, attaching it at first use.
    pub fn fs(&self) -> SysResult<Arc<dyn FileSystem>> {
        let mut r = self.lock();
        match &mut *r {
            Reach::Owner { fs, .. } => return Ok(fs.clone()),
            Reach::Remote { fs: Some(fs), .. } => return Ok(fs.clone()),
            Reach::Failed(e) => return Err(*e),
            Reach::Remote { fs: slot @ None, socket } => {
                let daemon = self.backend != Backend::Loopback;
                let c = match connect(daemon.then_some(self.name.as_str()), socket) {
                    Ok(c) => c,
                    // The parent that served it before fork is gone: ask the daemon.
                    Err(_) if daemon => match attach_daemon(&self.name) {
                        Ok(Reach::Owner { fs, socket: Some(s) }) => {
                            *r = Reach::Owner { fs: fs.clone(), socket: Some(s) };
                            return Ok(fs);
                        }
                        Ok(Reach::Remote { fs: Some(c), socket: s }) => {
                            *r = Reach::Remote { fs: Some(c.clone()), socket: s };
                            return Ok(c);
                        }
                        Ok(_) => return Err(Errno::EIO),
                        Err(e) => {
                            tracing::error!(volume = %self.name, "cannot reach the volume: {e}");
                            return Err(Errno::from(e));
                        }
                    },
                    Err(e) => {
                        tracing::error!(volume = %self.name, "cannot reach the volume: {e}");
                        return Err(Errno::from(e));
                    }
                };
                *slot = Some(c.clone());
                return Ok(c);
            }
            Reach::Unattached => {}
        }
        match attach(self) {
            Ok(reach) => {
                *r = reach;
                drop(r);
                self.fs()
            }
            Err(e) => {
                tracing::error!(volume = %self.name, path = %String::from_utf8_lossy(&self.path),
                    "cannot attach the volume; calls under its path fail: {e}");
                let errno = Errno::from(e);
                *r = Reach::Failed(errno);
                Err(errno)
            }
        }
    }
}

/// `makedev` as glibc encodes it.
pub const fn makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xffff_f000) << 32) | ((major & 0xfff) << 8) | ((minor & 0xffff_ff00) << 12) | (minor & 0xff)
}

/// Where a volume comes from: the one function that decides (see the module doc).
fn attach(m: &Mount) -> FsResult<Reach> {
    match m.backend {
        Backend::Loopback => Ok(Reach::Owner { fs: loopback_volume()?, socket: None }),
        _ => attach_daemon(&m.name),
    }
}

/// Through the daemon: the owner of volume `name` answering by RPC, or this process as the
/// owner. The owner the daemon names may not serve yet (it binds its socket after the
/// daemon's answer) or may be exiting (the daemon learns of its death a moment later): ask
/// again until the owner answers or this process becomes the owner.
fn attach_daemon(name: &str) -> FsResult<Reach> {
    let deadline = std::time::Instant::now() + ATTACH_PATIENCE;
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        let att = crate::net::control::volume_attach(name).map_err(|what| FsError::Remote { what })?;
        let socket = match att {
            crate::net::control::VolumeAttachment::Owner { socket, fd, size } => {
                let socket = std::path::PathBuf::from(socket);
                if serving(name).as_ref() == Some(&socket) {
                    // This process already owns and serves it (it became the owner when a
                    // client of its found the old owner gone): never mount it twice.
                    socket
                } else {
                    let vol = owned_volume(fd, size)?;
                    serve(&socket, vol.clone())?;
                    SERVED.lock().unwrap_or_else(|e| e.into_inner()).push((
                        std::process::id(),
                        name.to_string(),
                        socket.clone(),
                    ));
                    return Ok(Reach::Owner { fs: vol, socket: Some(socket) });
                }
            }
            crate::net::control::VolumeAttachment::Remote { socket } => std::path::PathBuf::from(socket),
        };
        match connect(Some(name), &socket) {
            Ok(c) => return Ok(Reach::Remote { fs: Some(c), socket }),
            Err(e) if std::time::Instant::now() >= deadline => {
                return Err(FsError::Remote {
                    what: format!(
                        "the owner of volume {name} does not answer on {} after {} s ({e}); see \
                         `arrakis vsa list` for the owner, and stop it if it hangs",
                        socket.display(),
                        ATTACH_PATIENCE.as_secs()
                    ),
                })
            }
            Err(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
        }
    }
}

/// How long [`attach_daemon`] waits for an owner that does not answer yet.
const ATTACH_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Volumes this process owns through the daemon: (pid, name, socket it serves them on).
static SERVED: Mutex<Vec<(u32, String, std::path::PathBuf)>> = Mutex::new(Vec::new());

/// The socket on which this process (not a parent before fork) serves volume `name`.
fn serving(name: &str) -> Option<std::path::PathBuf> {
    let me = std::process::id();
    let v = SERVED.lock().unwrap_or_else(|e| e.into_inner());
    v.iter().find(|(pid, n, _)| *pid == me && n == name).map(|(_, _, s)| s.clone())
}

/// Size of a loopback-backend volume.
const LOOPBACK_BYTES: u64 = 256 << 20;

/// A fresh in-memory volume (loopback backend).
fn loopback_volume() -> FsResult<Arc<dyn FileSystem>> {
    let dev = Arc::new(super::dev::MemDev::new(LOOPBACK_BYTES));
    Ok(Arc::new(super::volume::Volume::format(dev)?))
}

/// The volume on a VSA this process owns.
fn owned_volume(fd: std::os::fd::OwnedFd, size: u64) -> FsResult<Arc<dyn FileSystem>> {
    let dev = Arc::new(super::dev::FileDev::new(fd, size));
    Ok(Arc::new(super::volume::Volume::open_or_format(dev)?))
}

/// Serves `fs` to other processes on `socket` (the RPC server runs on its own threads and
/// lives as long as the process).
fn serve(socket: &std::path::Path, fs: Arc<dyn FileSystem>) -> FsResult<()> {
    let server = super::rpc::serve_unix(socket, fs)?;
    std::mem::forget(server);
    Ok(())
}

/// An RPC client of the volume served at `socket`. With the volume's `name` (a daemon's
/// VSA), the client asks the daemon again when the socket stops answering (the owner
/// exited), and this process may become the owner.
fn connect(name: Option<&str>, socket: &std::path::Path) -> FsResult<Arc<dyn FileSystem>> {
    let c = super::rpc::Client::connect_unix(socket)?;
    let Some(name) = name else { return Ok(Arc::new(c)) };
    let name = name.to_string();
    let again: super::rpc::Rediscover = Box::new(move || match attach_daemon(&name)? {
        Reach::Owner { socket: Some(s), .. } | Reach::Remote { socket: s, .. } => Ok(s),
        _ => Err(FsError::Remote { what: format!("volume {name}: the daemon named no server") }),
    });
    Ok(Arc::new(c.rediscover(again)))
}

/// The library OS's cwd.
#[derive(Clone, Debug)]
enum Cwd {
    /// The kernel's cwd is the cwd.
    Kernel,
    /// Inside a mount.
    Volume { mount: usize, ino: Ino, path: Vec<u8> },
}

/// The mount table and the cwd.
pub struct Table {
    mounts: Vec<Arc<Mount>>,
    cwd: Mutex<Cwd>,
    /// The kernel cwd as last read (reset by every chdir the shim sees).
    kcwd: Mutex<Option<Vec<u8>>>,
    /// Whether the initial kernel cwd was checked against the mounts.
    cwd_checked: AtomicBool,
}

/// Where a path leads.
pub enum Target {
    /// To the kernel: with the path as given (`None`), or rewritten to this absolute path
    /// (the walk went through a mount and out again, or started from a library cwd or dir).
    Kernel(Option<Vec<u8>>),
    /// Onto a volume.
    Volume(Loc),
}

/// A resolved place on a volume.
#[derive(Clone)]
pub struct Loc {
    /// The mount.
    pub mount: Arc<Mount>,
    /// Its volume.
    pub fs: Arc<dyn FileSystem>,
    /// The directory that holds the last component (for the mount's root: the root).
    pub parent: Ino,
    /// The last component; `None` when the path ends at a directory by `.`, `..` or the
    /// mount's root.
    pub name: Option<Vec<u8>>,
    /// The inode the path names, `None` if the last component does not exist.
    pub ino: Option<Ino>,
    /// The path ended with a slash (or `.`/`..`): it must name a directory.
    pub dir_required: bool,
    /// The absolute, normalised path.
    pub path: Vec<u8>,
    /// The path's last component was `.` (1) or `..` (2); else 0.
    pub last_dots: u8,
}

impl std::fmt::Debug for Loc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Loc({:?}, {})", self.mount, String::from_utf8_lossy(&self.path))
    }
}

/// What a relative path starts from.
pub enum Base<'a> {
    /// The cwd (`AT_FDCWD`).
    Cwd,
    /// A directory open on a volume.
    Dir { mount: &'a Arc<Mount>, ino: Ino, path: &'a [u8] },
    /// A kernel directory fd, whose path the kernel knows (`/proc/self/fd`).
    KernelFd(i32),
}

static ACTIVE: AtomicBool = AtomicBool::new(false);
static TABLE: OnceLock<Table> = OnceLock::new();

/// Whether any mount is configured. One atomic load: the kernel path's only cost.
#[inline]
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Sets up the process's mounts (the shim's constructor, once).
pub fn configure(specs: &[Spec], backend: Backend) {
    if specs.is_empty() {
        return;
    }
    if TABLE.set(Table::new(specs, backend)).is_ok() {
        ACTIVE.store(true, Ordering::Release);
    }
}

/// The process's mount table, if any mount is configured.
pub fn table() -> Option<&'static Table> {
    TABLE.get()
}

impl Table {
    /// A table of `specs`, volumes attached at first use.
    pub fn new(specs: &[Spec], backend: Backend) -> Table {
        Table::of(specs.iter().enumerate().map(|(i, s)| Arc::new(Mount::new(s, i, backend))).collect())
    }

    /// A table of these mounts.
    pub fn of(mounts: Vec<Arc<Mount>>) -> Table {
        Table {
            mounts,
            cwd: Mutex::new(Cwd::Kernel),
            kcwd: Mutex::new(None),
            cwd_checked: AtomicBool::new(false),
        }
    }

    /// The mounts.
    pub fn mounts(&self) -> &[Arc<Mount>] {
        &self.mounts
    }

    fn kernel_cwd(&self) -> SysResult<Vec<u8>> {
        let mut k = self.kcwd.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = &*k {
            return Ok(p.clone());
        }
        let p = rustix::process::getcwd(Vec::new()).map_err(|e| Errno(e.raw_os_error()))?.into_bytes();
        *k = Some(p.clone());
        Ok(p)
    }

    /// A process whose kernel cwd starts inside a mount's path starts with its library cwd
    /// there (see the module doc). Checked once, at the first resolution.
    fn check_initial_cwd(&self) {
        if self.cwd_checked.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(k) = self.kernel_cwd() else { return };
        let comps = components(&k);
        let Some(i) = self.mounts.iter().position(|m| starts_with(&comps, &m.comps)) else { return };
        let m = &self.mounts[i];
        let loc = match self.resolve(Base::Cwd, &k) {
            Ok(Target::Volume(l)) if l.ino.is_some() => l,
            _ => {
                *self.cwd.lock().unwrap_or_else(|e| e.into_inner()) =
                    Cwd::Volume { mount: i, ino: ROOT, path: m.path.clone() };
                return;
            }
        };
        if let Some(ino) = loc.ino {
            if matches!(loc.fs.getattr(ino).map(|a| a.kind), Ok(FileType::Dir)) {
                *self.cwd.lock().unwrap_or_else(|e| e.into_inner()) =
                    Cwd::Volume { mount: i, ino, path: loc.path };
            }
        }
    }

    /// The library cwd's path, if it is inside a mount (`getcwd`).
    pub fn cwd(&self) -> Option<Vec<u8>> {
        self.check_initial_cwd();
        match &*self.cwd.lock().unwrap_or_else(|e| e.into_inner()) {
            Cwd::Kernel => None,
            Cwd::Volume { path, .. } => Some(path.clone()),
        }
    }

    /// `chdir` to a volume directory: the library cwd becomes `loc`. Returns the kernel
    /// directory the kernel's cwd should move to (see the module doc); the caller tries the
    /// first and falls back to the second.
    pub fn chdir_volume(&self, loc: &Loc) -> SysResult<[Vec<u8>; 2]> {
        let ino = loc.ino.ok_or(Errno::ENOENT)?;
        if loc.fs.getattr(ino)?.kind != FileType::Dir {
            return Err(Errno::ENOTDIR);
        }
        let idx = self.mounts.iter().position(|m| Arc::ptr_eq(m, &loc.mount)).ok_or(Errno::ENOENT)?;
        *self.cwd.lock().unwrap_or_else(|e| e.into_inner()) =
            Cwd::Volume { mount: idx, ino, path: loc.path.clone() };
        *self.kcwd.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.cwd_checked.store(true, Ordering::Release);
        let m = &loc.mount;
        let parent = {
            let c: Vec<&[u8]> = m.comps.iter().map(Vec::as_slice).collect();
            join(&c[..c.len() - 1])
        };
        Ok([m.path.clone(), parent])
    }

    /// The kernel's cwd changed (a `chdir`/`fchdir` to a kernel directory): it is the cwd.
    pub fn chdir_kernel(&self) {
        *self.cwd.lock().unwrap_or_else(|e| e.into_inner()) = Cwd::Kernel;
        *self.kcwd.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.cwd_checked.store(true, Ordering::Release);
    }

    /// Resolves `path` from `base` (see the module doc). `ENOENT` for an empty path.
    pub fn resolve(&self, base: Base<'_>, path: &[u8]) -> SysResult<Target> {
        if path.is_empty() {
            return Err(Errno::ENOENT);
        }
        if path.len() >= 4096 {
            return Err(Errno::ENAMETOOLONG);
        }
        // Where the walk starts: the absolute path of the base, and the volume state there.
        let mut rewritten = false;
        let mut start: Vec<u8>;
        let mut vol_start: Option<(usize, Ino, Vec<u8>)> = None;
        if path[0] == b'/' {
            start = Vec::new();
        } else {
            match base {
                Base::Cwd => {
                    self.check_initial_cwd();
                    let cwd = self.cwd.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    match cwd {
                        Cwd::Kernel => start = self.kernel_cwd()?,
                        Cwd::Volume { mount, ino, path: p } => {
                            rewritten = true;
                            start = p.clone();
                            vol_start = Some((mount, ino, p));
                        }
                    }
                }
                Base::Dir { mount, ino, path: p } => {
                    rewritten = true;
                    start = p.to_vec();
                    let idx = self.mounts.iter().position(|m| Arc::ptr_eq(m, mount)).ok_or(Errno::EBADF)?;
                    vol_start = Some((idx, ino, p.to_vec()));
                }
                Base::KernelFd(fd) => {
                    match std::fs::read_link(format!("/proc/self/fd/{fd}")) {
                        Ok(p) => start = std::os::unix::ffi::OsStringExt::into_vec(p.into_os_string()),
                        // The kernel will say what is wrong with the fd.
                        Err(_) => return Ok(Target::Kernel(None)),
                    }
                    if start.first() != Some(&b'/') {
                        return Ok(Target::Kernel(None));
                    }
                }
            }
        }
        let _ = &mut start;
        self.walk(&start, vol_start, path, rewritten)
    }

    fn walk(
        &self,
        start: &[u8],
        vol_start: Option<(usize, Ino, Vec<u8>)>,
        path: &[u8],
        mut rewritten: bool,
    ) -> SysResult<Target> {
        let mut stack: Vec<&[u8]> = if path[0] == b'/' { Vec::new() } else { components(start) };
        // Inside a volume: the mount, its fs, the inode stack from its root.
        struct In {
            idx: usize,
            fs: Arc<dyn FileSystem>,
            inos: Vec<Ino>,
        }
        let mut inside: Option<In> = None;
        if path[0] != b'/' {
            if let Some((idx, ino, _)) = vol_start {
                let m = &self.mounts[idx];
                // The inode chain from the root is not known for a cwd/dir deep inside:
                // rebuild it by walking the path below the mount (cheap lookups).
                let below: Vec<&[u8]> = stack[m.comps.len().min(stack.len())..].to_vec();
                let fs = m.fs()?;
                let mut inos = vec![ROOT];
                for c in &below {
                    let cur = *inos.last().unwrap_or(&ROOT);
                    match fs.lookup(cur, c) {
                        Ok(i) => inos.push(i),
                        Err(_) => break,
                    }
                }
                if inos.len() != below.len() + 1 || *inos.last().unwrap_or(&ROOT) != ino {
                    // The directory moved or went away: only `..` from it cannot be followed.
                    inos = vec![ino];
                }
                inside = Some(In { idx, fs, inos });
            }
        }
        let comps = components(path);
        let trailing = path.last() == Some(&b'/');
        let n = comps.len();
        let mut last_name: Option<Vec<u8>> = None;
        let mut last_ino: Option<Ino> = None;
        let mut parent: Ino = ROOT;
        // A walk that starts at `/` and names a mount's directory exactly enters it.
        if inside.is_none() {
            if let Some(idx) = self.mount_at(&stack) {
                inside = Some(In { idx, fs: self.mounts[idx].fs()?, inos: vec![ROOT] });
            }
        }
        for (i, c) in comps.iter().enumerate() {
            let last = i + 1 == n;
            let ends_dir = last && (*c == b"." || *c == b"..");
            match &mut inside {
                None => {
                    match *c {
                        b"." => {}
                        b".." => {
                            stack.pop();
                        }
                        name => stack.push(name),
                    }
                    if let Some(idx) = self.mount_at(&stack) {
                        rewritten = true;
                        inside = Some(In { idx, fs: self.mounts[idx].fs()?, inos: vec![ROOT] });
                        if last {
                            parent = ROOT;
                            last_ino = Some(ROOT);
                        }
                    }
                }
                Some(w) => match *c {
                    b"." => {
                        if ends_dir {
                            let cur = *w.inos.last().unwrap_or(&ROOT);
                            last_ino = Some(cur);
                            parent = w.inos.iter().rev().nth(1).copied().unwrap_or(cur);
                        }
                    }
                    b".." => {
                        stack.pop();
                        if w.inos.len() <= 1 {
                            // Out of the mount, to the kernel directory that holds it.
                            inside = None;
                            rewritten = true;
                            if let Some(idx) = self.mount_at(&stack) {
                                inside = Some(In { idx, fs: self.mounts[idx].fs()?, inos: vec![ROOT] });
                            }
                        } else {
                            w.inos.pop();
                        }
                        if ends_dir {
                            if let Some(w) = &inside {
                                let cur = *w.inos.last().unwrap_or(&ROOT);
                                last_ino = Some(cur);
                                parent = w.inos.iter().rev().nth(1).copied().unwrap_or(cur);
                            }
                        }
                    }
                    name => {
                        if name.len() > super::NAME_MAX {
                            return Err(Errno::ENAMETOOLONG);
                        }
                        let cur = *w.inos.last().unwrap_or(&ROOT);
                        stack.push(name);
                        if last {
                            parent = cur;
                            last_name = Some(name.to_vec());
                            last_ino = match w.fs.lookup(cur, name) {
                                Ok(ino) => Some(ino),
                                Err(FsError::Posix(Errno::ENOENT)) => None,
                                Err(e) => return Err(e.into()),
                            };
                        } else {
                            let ino = w.fs.lookup(cur, name)?;
                            if w.fs.getattr(ino)?.kind != FileType::Dir {
                                return Err(Errno::ENOTDIR);
                            }
                            w.inos.push(ino);
                        }
                    }
                },
            }
        }
        match inside {
            None => {
                if !rewritten {
                    return Ok(Target::Kernel(None));
                }
                let mut p = join(&stack);
                if trailing && p.len() > 1 {
                    p.push(b'/');
                }
                Ok(Target::Kernel(Some(p)))
            }
            Some(w) => {
                let m = self.mounts[w.idx].clone();
                if n == 0 || (last_name.is_none() && last_ino.is_none()) {
                    // The path named the mount's root (or a directory reached by `..`/`.`
                    // whose last step was a plain re-entry).
                    let cur = *w.inos.last().unwrap_or(&ROOT);
                    last_ino = Some(cur);
                    parent = w.inos.iter().rev().nth(1).copied().unwrap_or(cur);
                }
                let last_dot = comps.last().is_some_and(|c| *c == b"." || *c == b"..");
                Ok(Target::Volume(Loc {
                    mount: m,
                    fs: w.fs,
                    parent,
                    name: last_name,
                    ino: last_ino,
                    dir_required: trailing || last_dot,
                    path: join(&stack),
                    last_dots: match comps.last() {
                        Some(&b".") => 1,
                        Some(&b"..") => 2,
                        _ => 0,
                    },
                }))
            }
        }
    }

    fn mount_at(&self, stack: &[&[u8]]) -> Option<usize> {
        self.mounts.iter().position(|m| {
            m.comps.len() == stack.len() && m.comps.iter().zip(stack).all(|(a, b)| a.as_slice() == *b)
        })
    }

    /// Every mount this process owns gets served on a socket (a private one for the loopback
    /// backend) so that a child can reach it after `fork`; then the mounts are locked until
    /// [`ForkGuard::parent`] or [`ForkGuard::child`].
    pub fn fork_prepare(&'static self) -> ForkGuard {
        for m in &self.mounts {
            let mut r = m.lock();
            if let Reach::Owner { fs, socket: s @ None } = &mut *r {
                let path = private_socket(&m.name);
                match serve(&path, fs.clone()) {
                    Ok(()) => {
                        PRIVATE
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((std::process::id(), path.clone()));
                        *s = Some(path)
                    }
                    Err(e) => tracing::warn!(volume = %m.name,
                        "cannot serve the volume to a forked child; the child's calls on it fail: {e}"),
                }
            }
        }
        ForkGuard { guards: self.mounts.iter().map(|m| m.lock()).collect() }
    }
}

fn starts_with(comps: &[&[u8]], prefix: &[Vec<u8>]) -> bool {
    comps.len() >= prefix.len() && prefix.iter().zip(comps).all(|(a, b)| a.as_slice() == *b)
}

/// Where a loopback-backend owner serves its volume to forked children.
fn private_socket(name: &str) -> std::path::PathBuf {
    let dir = std::env::var_os("ARRAKIS_RUN_DIR")
        .or_else(|| std::env::var_os("XDG_RUNTIME_DIR"))
        .map(std::path::PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let safe: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    dir.join(format!("arrakis-vol-{}-{safe}.sock", std::process::id()))
}

/// Private sockets this process serves on (pid, path), removed at exit.
static PRIVATE: Mutex<Vec<(u32, std::path::PathBuf)>> = Mutex::new(Vec::new());

/// At exit: removes the private sockets this process served its volumes on.
pub fn at_exit() {
    let me = std::process::id();
    if let Ok(v) = PRIVATE.try_lock() {
        for (pid, p) in v.iter() {
            if *pid == me {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// The mounts locked across `fork` (see [`Table::fork_prepare`]).
pub struct ForkGuard {
    guards: Vec<MutexGuard<'static, Reach>>,
}

impl ForkGuard {
    /// In the parent: unlock.
    pub fn parent(self) {}

    /// In the child: every owned volume becomes a client of the parent's socket; the
    /// parent's objects are leaked, never dropped or touched (their locks may be held).
    pub fn child(mut self) {
        for g in &mut self.guards {
            let old = std::mem::replace(&mut **g, Reach::Unattached);
            match old {
                Reach::Owner { fs, socket: Some(socket) } => {
                    std::mem::forget(fs);
                    **g = Reach::Remote { fs: None, socket };
                }
                Reach::Owner { fs, socket: None } => {
                    std::mem::forget(fs);
                    **g = Reach::Failed(Errno::EIO);
                }
                Reach::Remote { fs, socket } => {
                    // A connection shared with the parent cannot be used by both: reconnect.
                    std::mem::forget(fs);
                    **g = Reach::Remote { fs: None, socket };
                }
                other => **g = other,
            }
        }
    }
}

/// Shortcut for [`Table::fork_prepare`] on the process's table.
pub fn fork_prepare() -> Option<ForkGuard> {
    table().map(Table::fork_prepare)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::file::{self, Cred, Opened};

    fn vol() -> Arc<dyn FileSystem> {
        let dev = Arc::new(crate::fs::dev::MemDev::new(8 << 20));
        Arc::new(crate::fs::volume::Volume::format(dev).unwrap())
    }

    fn table() -> Table {
        let spec = parse_volumes("v:/mnt//data/").unwrap();
        Table::of(vec![Arc::new(Mount::with_fs(&spec[0], 0, vol()))])
    }

    fn cred() -> Cred {
        Cred { uid: 0, gid: 0, umask: 0o022 }
    }

    fn loc(t: &Table, p: &str) -> Loc {
        match t.resolve(Base::Cwd, p.as_bytes()) {
            Ok(Target::Volume(l)) => l,
            Ok(Target::Kernel(k)) => panic!("{p} went to the kernel ({k:?})"),
            Err(e) => panic!("{p}: {e}"),
        }
    }

    fn kernel(t: &Table, p: &str) -> Option<String> {
        match t.resolve(Base::Cwd, p.as_bytes()) {
            Ok(Target::Kernel(k)) => k.map(|k| String::from_utf8(k).unwrap()),
            Ok(Target::Volume(l)) => panic!("{p} went to the volume ({l:?})"),
            Err(e) => panic!("{p}: {e}"),
        }
    }

    #[test]
    fn parses_the_mount_list() {
        let s = parse_volumes("a:/x/y:ro, b:/z").unwrap();
        assert_eq!(s[0], Spec { name: "a".into(), path: b"/x/y".to_vec(), read_only: true });
        assert_eq!(s[1].path, b"/z");
        for bad in ["a:rel", "a:/", "a:/x/../y", "a:/x:rw:zz", ":/x", "a:/x,a:/y", "a:/x:wat"] {
            assert!(parse_volumes(bad).is_err(), "{bad}");
        }
        assert!(parse_volumes("").unwrap().is_empty());
    }

    #[test]
    fn paths_outside_stay_on_the_kernel_untouched() {
        let t = table();
        assert_eq!(kernel(&t, "/etc/passwd"), None);
        assert_eq!(kernel(&t, "/mnt"), None);
        assert_eq!(kernel(&t, "/mnt/dat"), None);
        assert_eq!(kernel(&t, "/mnt/database"), None);
        // Through the mount and out again: rewritten.
        assert_eq!(kernel(&t, "/mnt/data/../other").as_deref(), Some("/mnt/other"));
        assert_eq!(kernel(&t, "/mnt/data/..").as_deref(), Some("/mnt"));
        assert_eq!(t.resolve(Base::Cwd, b"").err(), Some(Errno::ENOENT));
    }

    #[test]
    fn walks_inside_the_volume_like_linux() {
        let t = table();
        let c = cred();
        file::mkdir(&loc(&t, "/mnt/data/d"), 0o755, &c).unwrap();
        let Opened::File(f) = file::open(&loc(&t, "/mnt//data/./d//f"), 0o101, 0o666, &c).unwrap() else {
            panic!("not a file")
        };
        assert_eq!(f.write(&[b"abc"]).unwrap(), 3);
        let l = loc(&t, "/mnt/data/d/../d/f");
        assert_eq!(l.path, b"/mnt/data/d/f");
        assert_eq!(l.ino, Some(f.ino()));
        assert_eq!(file::stat(&l).unwrap().0.size, 3);
        assert_eq!(file::stat(&l).unwrap().0.perm, 0o644);
        // A file in the middle, or with a trailing slash: ENOTDIR.
        assert_eq!(t.resolve(Base::Cwd, b"/mnt/data/d/f/x").err(), Some(Errno::ENOTDIR));
        assert_eq!(t.resolve(Base::Cwd, b"/mnt/data/d/f/..").err(), Some(Errno::ENOTDIR));
        assert_eq!(file::stat(&loc(&t, "/mnt/data/d/f/")).err(), Some(Errno::ENOTDIR));
        assert!(file::stat(&loc(&t, "/mnt/data/d/")).is_ok());
        // Missing: the parent and name for creation; a missing directory in the middle fails.
        let m = loc(&t, "/mnt/data/d/new");
        assert_eq!((m.ino, m.name.as_deref()), (None, Some(&b"new"[..])));
        assert_eq!(t.resolve(Base::Cwd, b"/mnt/data/nope/x").err(), Some(Errno::ENOENT));
        // The mount's root.
        let r = loc(&t, "/mnt/data/");
        assert_eq!((r.ino, r.name.clone()), (Some(ROOT), None));
        assert_eq!(file::rmdir(&r).err(), Some(Errno::EBUSY));
        assert_eq!(file::mkdir(&loc(&t, "/mnt/data/d"), 0o755, &c).err(), Some(Errno::EEXIST));
    }

    #[test]
    fn the_library_cwd_and_directory_bases() {
        let t = table();
        let c = cred();
        file::mkdir(&loc(&t, "/mnt/data/d"), 0o755, &c).unwrap();
        t.chdir_volume(&loc(&t, "/mnt/data/d")).unwrap();
        assert_eq!(t.cwd().as_deref(), Some(&b"/mnt/data/d"[..]));
        let l = loc(&t, "x");
        assert_eq!(l.path, b"/mnt/data/d/x");
        assert_eq!(loc(&t, "..").ino, Some(ROOT));
        assert_eq!(kernel(&t, "../..").as_deref(), Some("/mnt"));
        assert_eq!(kernel(&t, "../../../etc/passwd").as_deref(), Some("/etc/passwd"));
        let Opened::Dir(d) = file::open(&loc(&t, "/mnt/data"), 0o200000, 0, &c).unwrap() else {
            panic!("not a dir")
        };
        let base = Base::Dir { mount: d.mount(), ino: d.ino(), path: d.path() };
        let Ok(Target::Volume(l)) = t.resolve(base, b"d/y") else { panic!("not on the volume") };
        assert_eq!(l.path, b"/mnt/data/d/y");
        t.chdir_kernel();
        assert_eq!(t.cwd(), None);
    }

    #[test]
    fn open_files_share_offsets_append_and_list_directories() {
        let t = table();
        let c = cred();
        let Opened::File(f) = file::open(&loc(&t, "/mnt/data/log"), 0o2102, 0o600, &c).unwrap() else {
            panic!("not a file")
        };
        f.write(&[b"one\n"]).unwrap();
        f.pwrite(&[b"two\n"], 0).unwrap(); // O_APPEND: pwrite appends, as Linux
        assert_eq!(f.lseek(0, 1).unwrap(), 4);
        assert_eq!(f.lseek(0, 2).unwrap(), 8);
        f.lseek(0, 0).unwrap();
        let mut b = [0u8; 16];
        assert_eq!(f.read(&mut [&mut b[..]]).unwrap(), 8);
        assert_eq!(&b[..8], b"one\ntwo\n");
        assert_eq!(f.lseek(-1, 0).err(), Some(Errno::EINVAL));
        assert_eq!(file::open(&loc(&t, "/mnt/data/log"), 0o301, 0o600, &c).err(), Some(Errno::EEXIST));
        assert_eq!(file::open(&loc(&t, "/mnt/data/log"), 0o200000, 0, &c).err(), Some(Errno::ENOTDIR));
        assert_eq!(file::open(&loc(&t, "/mnt/data"), 0o1, 0, &c).err(), Some(Errno::EISDIR));
        let Opened::File(r) = file::open(&loc(&t, "/mnt/data/log"), 0, 0, &c).unwrap() else { panic!() };
        assert_eq!(r.write(&[b"x"]).err(), Some(Errno::EBADF));
        assert_eq!(r.truncate(0).err(), Some(Errno::EINVAL));
        let Opened::Dir(d) = file::open(&loc(&t, "/mnt/data"), 0, 0, &c).unwrap() else { panic!() };
        let names: Vec<Vec<u8>> = d.next_entries(100).unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, vec![b".".to_vec(), b"..".to_vec(), b"log".to_vec()]);
        d.lseek(0, 0).unwrap();
        let mut buf = [0u8; 256];
        let n = d.getdents64(&mut buf).unwrap();
        assert!(n > 0 && buf[19] == b'.');
        assert_eq!(d.getdents64(&mut buf).unwrap(), 0);
        d.lseek(0, 0).unwrap();
        assert_eq!(d.getdents64(&mut buf[..8]).err(), Some(Errno::EINVAL));
        // Unlinked while open: still readable through the open file.
        file::unlink(&loc(&t, "/mnt/data/log")).unwrap();
        assert_eq!(r.pread(&mut [&mut b[..]], 0).unwrap(), 8);
        // Renames within the volume; across mounts EXDEV is the caller's.
        file::mkdir(&loc(&t, "/mnt/data/a"), 0o755, &c).unwrap();
        file::rename(&loc(&t, "/mnt/data/a"), &loc(&t, "/mnt/data/b"), Default::default()).unwrap();
        assert!(loc(&t, "/mnt/data/b").ino.is_some() && loc(&t, "/mnt/data/a").ino.is_none());
    }
}
