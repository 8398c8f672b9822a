//! Virtual storage areas (VSAs): their records, their backing files and the rules for
//! attaching to the volume in one.
//!
//! A VSA is one preallocated file, `<data_dir>/vsa/<name>.img` (mode 0600, owned by the
//! daemon's user), filled with zeros when it is made or grown (written, not only
//! `fallocate`d, so that a later `fdatasync` on it is a pure data flush). Its record — name,
//! size, creating uid, and the process that owns its volume (pid, start time, RPC socket) —
//! lives in the store beside the grants ([`Change::PutVsa`]) and survives a restart.
//!
//! Rules (first refusal wins):
//! * names are 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-` ([`check_name`]);
//! * sizes are rounded up to 4096, at least 4096, at most the daemon's limit and the free
//!   space of the data directory's file system;
//! * only the creating uid and root may resize, delete or attach;
//! * the first process to attach read-write while no live process owns the volume becomes
//!   its owner and gets the backing fd (read-write); every later attach is told the owner's
//!   socket and gets no fd; a read-only attach always gets a read-only fd;
//! * ownership ends with `volume_detach` by the owner or the owner's death (pidfd, and at
//!   start-up and at every look the recorded start time is compared with the process's, so a
//!   reused pid is not taken for the owner);
//! * delete and shrink are refused while a live process owns the volume; shrinking below
//!   what the volume in it uses is refused ([`UsedProbe`]).
//!
//! Nothing here is on a data path: the zero-fill of a large VSA blocks the daemon's one
//! thread for its duration (about a second per GiB on these machines).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use arrakis_backends::proto::{ErrorKind, Name, Request, Response, VolumeRole, VsaInfo};
use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};

use super::host::Host;
use super::rules::{Caller, Change};

/// The unit of VSA sizes: sizes are rounded up to it.
pub const BLOCK: u64 = 4096;
/// Zeros are written in chunks of this many bytes.
pub const CHUNK: usize = 1 << 20;
/// Longest Unix socket path (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The process that owns a volume, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRec {
    /// Its pid.
    pub pid: u32,
    /// Its start time (`/proc/PID/stat` field 22): with the pid, its identity.
    pub start: u64,
    /// Where it serves the volume by RPC.
    pub socket: String,
}

/// A VSA as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsaRec {
    /// Name (also the backing file's stem and the volume's name).
    pub name: Name,
    /// Bytes, a multiple of [`BLOCK`].
    pub size: u64,
    /// The uid that created it.
    pub uid: u32,
    /// Creation time (Unix seconds).
    pub created: u64,
    /// The process that owns its volume, if one was recorded (it may have died since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerRec>,
}

/// How many bytes the volume inside a backing file uses: `Ok(None)` if the file holds no
/// volume yet (never formatted), `Err` with the reason if that cannot be told (a corrupt
/// image, or a build that cannot read volumes).
pub type UsedProbe = fn(&File) -> Result<Option<u64>, String>;

/// The probe this build uses: the volume's own count of used blocks
/// ([`arrakis_core::fs::fsck::used_blocks`], read-only, after journal recovery). Both
/// superblock slots (blocks 0 and 1) all zeros means never formatted: no volume.
pub fn used_bytes(f: &File) -> Result<Option<u64>, String> {
    let mut head = vec![0u8; 2 * BLOCK as usize];
    let len = f.metadata().map_err(|e| format!("cannot stat the backing file: {e}"))?.len();
    let n = (len.min(head.len() as u64)) as usize;
    f.read_exact_at(&mut head[..n], 0).map_err(|e| format!("cannot read the backing file: {e}"))?;
    if head.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let fd = f.try_clone().map_err(|e| format!("cannot duplicate the backing fd: {e}"))?;
    let dev = arrakis_core::fs::dev::FileDev::new(fd.into(), len);
    match arrakis_core::fs::fsck::used_blocks(&dev) {
        Ok(blocks) => Ok(Some(blocks.saturating_mul(BLOCK))),
        Err(e) => Err(format!(
            "cannot tell how much of it its volume uses ({e}); check it with `arrakis fsck` first"
        )),
    }
}

/// Where the VSAs live and how large they may be.
#[derive(Debug, Clone)]
pub struct VsaConfig {
    /// The directory of the backing files (`<state_dir>/vsa`).
    pub dir: PathBuf,
    /// The daemon's run directory: owners' RPC sockets go there.
    pub run_dir: PathBuf,
    /// Largest VSA, in bytes.
    pub max_size: u64,
}

/// Every VSA.
#[derive(Debug)]
pub struct Vsas {
    recs: BTreeMap<String, VsaRec>,
    cfg: VsaConfig,
    /// How a shrink learns what the volume uses.
    pub probe: UsedProbe,
    changes: Vec<Change>,
    /// Files to remove once the changes are stored (a deleted VSA's backing file, an ended
    /// owner's socket).
    unlink: Vec<PathBuf>,
    /// New owners, to watch for their death: (pid, start time).
    new_owners: Vec<(u32, u64)>,
}

/// Whether `name` may name a VSA: it becomes a file name and appears in
/// `ARRAKIS_VOLUMES=NAME:/path,...`, so only `A-Z a-z 0-9 . _ -`, not first `.` or `-`.
pub fn check_name(name: &str) -> Result<(), ErrorKind> {
    let bad = |reason: &str| ErrorKind::VsaName { name: name.to_owned(), reason: reason.to_owned() };
    const ALLOWED: &str =
        "use 1 to 64 of the letters, digits, '.', '_' and '-', not starting with '.' or '-'";
    if name.is_empty() || name.len() > arrakis_backends::proto::MAX_NAME {
        return Err(bad(ALLOWED));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err(bad(&format!("it starts with '{}'; {ALLOWED}", &name[..1])));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(bad(&format!("it contains {c:?}; {ALLOWED}")));
    }
    Ok(())
}

/// `size` rounded up to [`BLOCK`], or `None` on overflow.
pub fn round_size(size: u64) -> Option<u64> {
    size.checked_add(BLOCK - 1).map(|s| s / BLOCK * BLOCK)
}

/// Writes zeros over `from..to` of `f` in [`CHUNK`]s, then flushes them (`fdatasync`).
pub fn zero_fill(f: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; CHUNK];
    let mut off = from;
    while off < to {
        let n = (to - off).min(CHUNK as u64) as usize;
        f.write_all_at(&zeros[..n], off)?;
        off += n as u64;
    }
    f.sync_data()
}

/// Bytes free for an unprivileged user on the file system of `dir`.
fn free_bytes(dir: &Path) -> io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// A short stable hash, for socket names that would be too long.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn human(bytes: u64) -> String {
    crate::volume::human_size(bytes)
}

impl Vsas {
    /// The VSAs the store held.
    pub fn new(cfg: VsaConfig, recs: Vec<VsaRec>) -> Vsas {
        Vsas {
            recs: recs.into_iter().map(|r| (r.name.as_str().to_owned(), r)).collect(),
            cfg,
            probe: used_bytes,
            changes: Vec::new(),
            unlink: Vec::new(),
            new_owners: Vec::new(),
        }
    }

    /// Where they live.
    pub fn config(&self) -> &VsaConfig {
        &self.cfg
    }

    /// Takes the changes made since the last call.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// Takes the files to remove now that the changes are stored.
    pub fn take_unlinks(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.unlink)
    }

    /// Forgets what was queued (the store refused the changes).
    pub fn drop_pending(&mut self) {
        self.changes.clear();
        self.unlink.clear();
        self.new_owners.clear();
    }

    /// Takes the owners made since the last call (pid, start time), to watch.
    pub fn take_new_owners(&mut self) -> Vec<(u32, u64)> {
        std::mem::take(&mut self.new_owners)
    }

    /// Every record.
    pub fn records(&self) -> impl Iterator<Item = &VsaRec> {
        self.recs.values()
    }

    /// Every recorded owner: (pid, start time).
    pub fn owners(&self) -> Vec<(u32, u64)> {
        self.recs.values().filter_map(|r| r.owner.as_ref().map(|o| (o.pid, o.start))).collect()
    }

    /// The backing file of VSA `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.cfg.dir.join(format!("{name}.img"))
    }

    /// The RPC socket an owner `pid` of volume `name` binds.
    pub fn socket_path(&self, name: &str, pid: u32) -> String {
        let p = self.cfg.run_dir.join(format!("vol-{name}-{pid}.sock"));
        if p.as_os_str().len() <= MAX_SOCKET_PATH {
            return p.display().to_string();
        }
        self.cfg.run_dir.join(format!("vol-{:016x}-{pid}.sock", fnv(name))).display().to_string()
    }

    fn info(r: &VsaRec) -> VsaInfo {
        VsaInfo { name: r.name.clone(), size: r.size, uid: r.uid, owner: r.owner.as_ref().map(|o| o.pid) }
    }

    /// Ends the ownership of every volume whose recorded owner is no longer running (gone, or
    /// its pid now another process's). Returns the VSAs whose owner ended.
    pub fn reclaim_stale(&mut self, host: &dyn Host) -> Vec<String> {
        let stale: Vec<(u32, u64)> = self
            .owners()
            .into_iter()
            .filter(|&(pid, start)| host.process(pid).map(|p| p.0) != Some(start))
            .collect();
        stale.into_iter().flat_map(|(pid, start)| self.owner_gone(pid, start)).collect()
    }

    /// The process `pid` that started at `start` is gone: the volumes it owned have no owner.
    pub fn owner_gone(&mut self, pid: u32, start: u64) -> Vec<String> {
        let mut ended = Vec::new();
        for r in self.recs.values_mut() {
            if r.owner.as_ref().is_some_and(|o| o.pid == pid && o.start == start) {
                if let Some(o) = r.owner.take() {
                    self.unlink.push(PathBuf::from(o.socket));
                }
                self.changes.push(Change::PutVsa(r.clone()));
                ended.push(r.name.as_str().to_owned());
            }
        }
        ended
    }

    /// The live owner of `name`, clearing a stale one.
    fn live_owner(&mut self, name: &str, host: &dyn Host) -> Option<OwnerRec> {
        let o = self.recs.get(name)?.owner.clone()?;
        if host.process(o.pid).map(|p| p.0) == Some(o.start) {
            return Some(o);
        }
        self.owner_gone(o.pid, o.start);
        None
    }

    /// Carries out a VSA or volume request; the fd to send with the answer, if any. A
    /// refusal changes nothing (except forgetting an owner found dead).
    pub fn handle(
        &mut self,
        caller: Caller,
        req: Request,
        host: &dyn Host,
    ) -> Result<(Response, Option<OwnedFd>), ErrorKind> {
        match req {
            Request::VsaCreate { name, size } => {
                let r = self.create(caller, name.as_str(), size, host)?;
                Ok((Response::Vsa { vsa: Self::info(&r) }, None))
            }
            Request::VsaResize { name, size } => {
                self.resize(caller, name.as_str(), size, host).map(|vsa| (Response::Vsa { vsa }, None))
            }
            Request::VsaDelete { name } => {
                self.delete(caller, name.as_str(), host)?;
                Ok((Response::VsaDeleted { name }, None))
            }
            Request::VsaList {} => {
                let names: Vec<String> = self.recs.keys().cloned().collect();
                for n in &names {
                    self.live_owner(n, host);
                }
                Ok((Response::Vsas { vsas: self.recs.values().map(Self::info).collect() }, None))
            }
            Request::VolumeAttach { name, create, read_only } => {
                self.attach(caller, name.as_str(), create, read_only, host)
            }
            Request::VolumeDetach { name } => {
                self.detach(caller, name.as_str(), host)?;
                Ok((Response::VolumeDetached { name }, None))
            }
            _ => Err(ErrorKind::BadRequest { reason: "not a VSA or volume request".into() }),
        }
    }

    fn get(&self, name: &str) -> Result<&VsaRec, ErrorKind> {
        self.recs.get(name).ok_or_else(|| ErrorKind::NoVsa { name: name.to_owned() })
    }

    /// The VSA, if `caller` may act on it.
    fn permitted(&self, caller: Caller, name: &str) -> Result<&VsaRec, ErrorKind> {
        let r = self.get(name)?;
        if caller.uid != 0 && caller.uid != r.uid {
            return Err(ErrorKind::VsaNotPermitted { name: name.to_owned(), uid: caller.uid, owner: r.uid });
        }
        Ok(r)
    }

    fn storage(name: &str, what: &str, path: &Path, e: impl std::fmt::Display) -> ErrorKind {
        ErrorKind::VsaStorage { name: name.to_owned(), reason: format!("{what} {}: {e}", path.display()) }
    }

    /// Checks that `more` bytes may be added to a VSA that becomes `total` bytes.
    fn check_room(&self, name: &str, total: u64, more: u64) -> Result<(), ErrorKind> {
        let size = |reason: String| ErrorKind::VsaSize { name: name.to_owned(), reason };
        if total > self.cfg.max_size {
            return Err(size(format!(
                "{} ({total} bytes) is over the daemon's limit of {} ({} bytes); ask for less, or start \
                 the daemon with a larger --max-vsa-size",
                human(total),
                human(self.cfg.max_size),
                self.cfg.max_size
            )));
        }
        let probe_dir = if self.cfg.dir.is_dir() {
            self.cfg.dir.as_path()
        } else {
            self.cfg.dir.parent().unwrap_or(Path::new("/"))
        };
        let free = free_bytes(probe_dir)
            .map_err(|e| Self::storage(name, "cannot read the free space of", probe_dir, e))?;
        if more > free {
            return Err(size(format!(
                "{} more bytes are needed but the file system of {} has {free} free; free some space \
                 or ask for less",
                more,
                probe_dir.display()
            )));
        }
        Ok(())
    }

    fn rounded(name: &str, size: u64) -> Result<u64, ErrorKind> {
        match round_size(size) {
            Some(0) => Err(ErrorKind::VsaSize {
                name: name.to_owned(),
                reason: format!("a size of 0 bytes cannot hold a volume; ask for at least {BLOCK} bytes"),
            }),
            Some(s) => Ok(s),
            None => Err(ErrorKind::VsaSize {
                name: name.to_owned(),
                reason: format!("{size} bytes is too large; ask for less"),
            }),
        }
    }

    fn open(path: &Path, flags: OFlags) -> io::Result<File> {
        let fd =
            rustix::fs::open(path, flags | OFlags::CLOEXEC | OFlags::NOFOLLOW, Mode::from_raw_mode(0o600))?;
        Ok(File::from(fd))
    }

    fn create(
        &mut self,
        caller: Caller,
        name: &str,
        size: u64,
        host: &dyn Host,
    ) -> Result<VsaRec, ErrorKind> {
        check_name(name)?;
        if self.recs.contains_key(name) {
            return Err(ErrorKind::VsaExists { name: name.to_owned() });
        }
        let size = Self::rounded(name, size)?;
        self.check_room(name, size, size)?;
        let dir = &self.cfg.dir;
        if !dir.is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Self::storage(name, "cannot create the directory", dir, e))?;
        }
        // Made under a temporary name and renamed into place once full, so a crash never
        // leaves a short file under the VSA's name (a stale temporary is overwritten).
        let path = self.path(name);
        let tmp = self.cfg.dir.join(format!("{name}.img.new"));
        let made = (|| -> io::Result<()> {
            let f = Self::open(&tmp, OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC)?;
            zero_fill(&f, 0, size)?;
            std::fs::rename(&tmp, &path)?;
            File::open(&self.cfg.dir)?.sync_all()
        })();
        if let Err(e) = made {
            let _ = std::fs::remove_file(&tmp);
            return Err(Self::storage(name, "cannot make", &path, e));
        }
        let r = VsaRec { name: Name::lossy(name), size, uid: caller.uid, created: host.now(), owner: None };
        self.recs.insert(name.to_owned(), r.clone());
        self.changes.push(Change::PutVsa(r.clone()));
        Ok(r)
    }

    fn resize(
        &mut self,
        caller: Caller,
        name: &str,
        size: u64,
        host: &dyn Host,
    ) -> Result<VsaInfo, ErrorKind> {
        let old = self.permitted(caller, name)?.size;
        let new = Self::rounded(name, size)?;
        let path = self.path(name);
        if new > old {
            self.check_room(name, new, new - old)?;
            let f = Self::open(&path, OFlags::WRONLY)
                .map_err(|e| Self::storage(name, "cannot open", &path, e))?;
            // From the file's real end: a shrink whose record was not stored may have left it
            // shorter than the record says.
            let len = f.metadata().map_err(|e| Self::storage(name, "cannot stat", &path, e))?.len();
            zero_fill(&f, len.min(old), new).map_err(|e| Self::storage(name, "cannot grow", &path, e))?;
        } else if new < old {
            if let Some(o) = self.live_owner(name, host) {
                return Err(ErrorKind::VsaOwned {
                    name: name.to_owned(),
                    pid: o.pid,
                    action: "shrink".into(),
                });
            }
            let f =
                Self::open(&path, OFlags::RDWR).map_err(|e| Self::storage(name, "cannot open", &path, e))?;
            let size_err = |reason: String| ErrorKind::VsaSize { name: name.to_owned(), reason };
            match (self.probe)(&f) {
                Ok(None) => {}
                Ok(Some(used)) if used <= new => {}
                Ok(Some(used)) => {
                    return Err(size_err(format!(
                        "its volume uses {used} bytes, more than the {new} asked for; remove files first \
                         or ask for at least {}",
                        round_size(used).unwrap_or(used)
                    )))
                }
                Err(reason) => return Err(size_err(format!("cannot shrink: {reason}"))),
            }
            f.set_len(new)
                .and_then(|()| f.sync_all())
                .map_err(|e| Self::storage(name, "cannot shrink", &path, e))?;
        }
        let Some(r) = self.recs.get_mut(name) else { return Err(ErrorKind::NoVsa { name: name.to_owned() }) };
        r.size = new;
        let r = r.clone();
        self.changes.push(Change::PutVsa(r.clone()));
        Ok(Self::info(&r))
    }

    fn delete(&mut self, caller: Caller, name: &str, host: &dyn Host) -> Result<(), ErrorKind> {
        self.permitted(caller, name)?;
        if let Some(o) = self.live_owner(name, host) {
            return Err(ErrorKind::VsaOwned { name: name.to_owned(), pid: o.pid, action: "delete".into() });
        }
        self.recs.remove(name);
        self.changes.push(Change::DelVsa(name.to_owned()));
        self.unlink.push(self.path(name));
        Ok(())
    }

    fn attach(
        &mut self,
        caller: Caller,
        name: &str,
        create: Option<u64>,
        read_only: bool,
        host: &dyn Host,
    ) -> Result<(Response, Option<OwnedFd>), ErrorKind> {
        if !self.recs.contains_key(name) {
            match create {
                Some(size) => {
                    self.create(caller, name, size, host)?;
                }
                None => return Err(ErrorKind::NoVsa { name: name.to_owned() }),
            }
        }
        self.permitted(caller, name)?;
        let path = self.path(name);
        let open = |flags| {
            Self::open(&path, flags).map(OwnedFd::from).map_err(|e| {
                let fix = if e.kind() == io::ErrorKind::NotFound {
                    " (the file is gone: delete the VSA and create it again)"
                } else {
                    ""
                };
                Self::storage(name, &format!("cannot open{fix}"), &path, e)
            })
        };
        let owner = self.live_owner(name, host);
        let r = match (read_only, owner) {
            (true, _) => {
                let fd = open(OFlags::RDONLY)?;
                (VolumeRole::ReadOnly {}, Some(fd))
            }
            (false, Some(o)) if o.pid != caller.pid => {
                (VolumeRole::Remote { socket: o.socket.clone(), owner: o.pid }, None)
            }
            (false, Some(o)) => {
                // The owner again (after an exec, say): same socket, a fresh fd.
                let fd = open(OFlags::RDWR)?;
                (VolumeRole::Owner { socket: o.socket }, Some(fd))
            }
            (false, None) => {
                let start = match (caller.pid, host.process(caller.pid)) {
                    (0, _) | (_, None) => {
                        return Err(ErrorKind::Internal {
                            reason: format!(
                                "cannot see process {} (another pid namespace?), so it cannot own volume \
                                 \"{name}\"; run it in the daemon's pid namespace",
                                caller.pid
                            ),
                        })
                    }
                    (_, Some((start, _))) => start,
                };
                let fd = open(OFlags::RDWR)?;
                let socket = self.socket_path(name, caller.pid);
                let Some(rec) = self.recs.get_mut(name) else {
                    return Err(ErrorKind::NoVsa { name: name.to_owned() });
                };
                rec.owner = Some(OwnerRec { pid: caller.pid, start, socket: socket.clone() });
                let rec = rec.clone();
                self.changes.push(Change::PutVsa(rec));
                self.new_owners.push((caller.pid, start));
                (VolumeRole::Owner { socket }, Some(fd))
            }
        };
        let vsa = Self::info(self.get(name)?);
        Ok((Response::VolumeAttached { vsa, role: r.0 }, r.1))
    }

    fn detach(&mut self, caller: Caller, name: &str, host: &dyn Host) -> Result<(), ErrorKind> {
        self.get(name)?;
        match self.live_owner(name, host) {
            Some(o) if o.pid == caller.pid => {
                self.owner_gone(o.pid, o.start);
                Ok(())
            }
            o => Err(ErrorKind::NotVolumeOwner {
                name: name.to_owned(),
                pid: caller.pid,
                owner: o.map_or("it has no owner".into(), |o| format!("pid {} owns it", o.pid)),
            }),
        }
    }
}

#[cfg(test)]
pub mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::super::rules::tests::FakeHost;
    use super::super::store::{Store, FILE};
    use super::*;

    /// A fresh directory for one test's data and run directories.
    pub fn tmp(tag: &str) -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "arrakis-vsa-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    pub fn config(d: &Path) -> VsaConfig {
        VsaConfig { dir: d.join("vsa"), run_dir: d.join("run"), max_size: 1 << 20 }
    }

    const A: Caller = Caller { pid: 100, uid: 1000 };
    const B: Caller = Caller { pid: 200, uid: 1000 };
    const OTHER: Caller = Caller { pid: 300, uid: 2000 };
    const ROOT: Caller = Caller { pid: 400, uid: 0 };

    fn host() -> FakeHost {
        let mut h = FakeHost::default();
        for c in [A, B, OTHER, ROOT] {
            h.procs.insert(c.pid, (u64::from(c.pid) * 7, 1));
        }
        h
    }

    fn name(s: &str) -> Name {
        Name::lossy(s)
    }

    fn attach(
        v: &mut Vsas,
        h: &FakeHost,
        c: Caller,
        n: &str,
        ro: bool,
    ) -> Result<(VolumeRole, Option<OwnedFd>), ErrorKind> {
        match v.handle(c, Request::VolumeAttach { name: name(n), create: None, read_only: ro }, h)? {
            (Response::VolumeAttached { role, .. }, fd) => Ok((role, fd)),
            other => panic!("{other:?}"),
        }
    }

    fn fd_path(fd: &OwnedFd) -> PathBuf {
        use std::os::fd::AsRawFd;
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap()
    }

    #[test]
    fn names_and_sizes_are_checked() {
        for ok in ["redis-data", "a", "x.y_z-1", &"n".repeat(64)] {
            check_name(ok).unwrap();
        }
        for bad in ["", ".hidden", "-x", "a/b", "a:b", "a,b", "a b", "é", &"n".repeat(65), ".."] {
            assert!(matches!(check_name(bad), Err(ErrorKind::VsaName { .. })), "{bad}");
        }
        assert_eq!(round_size(1), Some(4096));
        assert_eq!(round_size(4096), Some(4096));
        assert_eq!(round_size(0), Some(0));
        assert_eq!(round_size(u64::MAX), None);
        let d = tmp("sizes");
        let (mut v, h) = (Vsas::new(config(&d), vec![]), host());
        for size in [0, u64::MAX, 2 << 20] {
            let e = v.handle(A, Request::VsaCreate { name: name("x"), size }, &h).unwrap_err();
            assert!(matches!(e, ErrorKind::VsaSize { .. }), "{e:?}");
        }
        assert!(v.records().next().is_none() && v.take_changes().is_empty());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_vsa_is_a_zeroed_file_of_its_size_and_mode_0600() {
        let d = tmp("file");
        let (mut v, h) = (Vsas::new(config(&d), vec![]), host());
        let (r, _) = v.handle(A, Request::VsaCreate { name: name("data"), size: 5000 }, &h).unwrap();
        assert_eq!(
            r,
            Response::Vsa { vsa: VsaInfo { name: name("data"), size: 8192, uid: 1000, owner: None } }
        );
        let p = v.path("data");
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!((meta.len(), meta.permissions().mode() & 0o777), (8192, 0o600));
        // Written, not sparse: every block allocated.
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 >= 8192, "{} blocks", meta.blocks());
        assert!(std::fs::read(&p).unwrap().iter().all(|&b| b == 0));
        assert!(!d.join("vsa/data.img.new").exists());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn the_first_attach_owns_the_others_are_remote_until_it_dies() {
        let d = tmp("own");
        let (mut v, mut h) = (Vsas::new(config(&d), vec![]), host());
        v.handle(A, Request::VsaCreate { name: name("vol"), size: 4096 }, &h).unwrap();
        let (role, fd) = attach(&mut v, &h, A, "vol", false).unwrap();
        let socket = v.socket_path("vol", 100);
        assert_eq!(role, VolumeRole::Owner { socket: socket.clone() });
        assert!(socket.ends_with("/run/vol-vol-100.sock"), "{socket}");
        assert_eq!(fd_path(&fd.unwrap()), v.path("vol"));
        assert_eq!(v.take_new_owners(), vec![(100, 700)]);
        // Same uid, another process: remote, no fd. Another uid: refused. Root: remote.
        assert_eq!(
            attach(&mut v, &h, B, "vol", false).unwrap().0,
            VolumeRole::Remote { socket: socket.clone(), owner: 100 }
        );
        assert!(attach(&mut v, &h, B, "vol", false).unwrap().1.is_none());
        assert!(matches!(attach(&mut v, &h, OTHER, "vol", false), Err(ErrorKind::VsaNotPermitted { .. })));
        assert!(matches!(attach(&mut v, &h, OTHER, "vol", true), Err(ErrorKind::VsaNotPermitted { .. })));
        assert!(matches!(
            attach(&mut v, &h, ROOT, "vol", false),
            Ok((VolumeRole::Remote { owner: 100, .. }, None))
        ));
        // Read-only: a read-only fd whoever owns it.
        let (role, fd) = attach(&mut v, &h, B, "vol", true).unwrap();
        assert_eq!(role, VolumeRole::ReadOnly {});
        let fl = rustix::fs::fcntl_getfl(fd.unwrap()).unwrap();
        assert_eq!(fl & OFlags::ACCMODE, OFlags::RDONLY);
        // Delete and shrink refused while owned; only the owner detaches.
        let e = v.handle(A, Request::VsaDelete { name: name("vol") }, &h).unwrap_err();
        assert!(e.to_string().contains("owned by pid 100"), "{e}");
        assert!(matches!(
            v.handle(B, Request::VolumeDetach { name: name("vol") }, &h),
            Err(ErrorKind::NotVolumeOwner { pid: 200, .. })
        ));
        // The owner dies (its pidfd fires): the next attach owns.
        assert_eq!(v.owner_gone(100, 700), vec!["vol".to_owned()]);
        assert_eq!(
            attach(&mut v, &h, B, "vol", false).unwrap().0,
            VolumeRole::Owner { socket: v.socket_path("vol", 200) }
        );
        // B's pid is reused by another process before its death was noticed: not the owner.
        h.procs.insert(200, (1, 1));
        assert_eq!(
            attach(&mut v, &h, A, "vol", false).unwrap().0,
            VolumeRole::Owner { socket: v.socket_path("vol", 100) }
        );
        v.handle(A, Request::VolumeDetach { name: name("vol") }, &h).unwrap();
        v.handle(A, Request::VsaDelete { name: name("vol") }, &h).unwrap();
        assert_eq!(v.take_unlinks().last(), Some(&v.path("vol")));
        assert!(matches!(attach(&mut v, &h, A, "vol", false), Err(ErrorKind::NoVsa { .. })));
        // create: a missing VSA is made first, owned by the caller's uid.
        let r = v.handle(
            OTHER,
            Request::VolumeAttach { name: name("new"), create: Some(1), read_only: false },
            &h,
        );
        assert!(
            matches!(
                r,
                Ok((
                    Response::VolumeAttached {
                        vsa: VsaInfo { size: 4096, uid: 2000, owner: Some(300), .. },
                        ..
                    },
                    Some(_)
                ))
            ),
            "{r:?}"
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn resize_grows_with_zeros_and_shrinks_only_unowned_and_above_the_used_size() {
        let d = tmp("resize");
        let (mut v, h) = (Vsas::new(config(&d), vec![]), host());
        v.handle(A, Request::VsaCreate { name: name("r"), size: 8192 }, &h).unwrap();
        let resize = |v: &mut Vsas, c: Caller, size: u64| {
            v.handle(c, Request::VsaResize { name: name("r"), size }, &h)
        };
        assert!(matches!(resize(&mut v, OTHER, 16384), Err(ErrorKind::VsaNotPermitted { .. })));
        resize(&mut v, A, 12000).unwrap();
        assert_eq!(std::fs::metadata(v.path("r")).unwrap().len(), 12288);
        assert!(matches!(resize(&mut v, ROOT, 2 << 20), Err(ErrorKind::VsaSize { .. })));
        // A formatted volume: below its used end refused, at or above it allowed.
        {
            use std::sync::Arc;
            resize(&mut v, A, 1 << 20).unwrap();
            let fd: OwnedFd = Vsas::open(&v.path("r"), OFlags::RDWR).unwrap().into();
            let dev = Arc::new(arrakis_core::fs::dev::FileDev::new(fd, 1 << 20));
            match arrakis_core::fs::volume::Volume::format(dev.clone()) {
                Ok(vol) => drop(vol),
                Err(e) => panic!("format: {e}"),
            }
            let used = arrakis_core::fs::fsck::used_blocks(dev.as_ref()).unwrap() * BLOCK;
            assert!(used > BLOCK && used < 1 << 20, "{used}");
            let e = resize(&mut v, A, used - BLOCK).unwrap_err();
            assert!(e.to_string().contains(&format!("uses {used} bytes")), "{e}");
            resize(&mut v, A, used).unwrap();
            assert_eq!(std::fs::metadata(v.path("r")).unwrap().len(), used);
            // A damaged one: refused, naming fsck.
            std::fs::write(v.path("r"), vec![0xa5u8; used as usize]).unwrap();
            let e = resize(&mut v, A, 4096).unwrap_err();
            assert!(e.to_string().contains("arrakis fsck"), "{e}");
            std::fs::write(v.path("r"), vec![0u8; used as usize]).unwrap();
        }
        // Never formatted: any size.
        resize(&mut v, A, 8192).unwrap();
        resize(&mut v, A, 12288).unwrap();
        // With a probe: below the used size refused, above it allowed, no volume allowed.
        v.probe = |_| Ok(Some(8000));
        let e = resize(&mut v, A, 4096).unwrap_err();
        assert!(e.to_string().contains("uses 8000 bytes"), "{e}");
        resize(&mut v, A, 8192).unwrap();
        assert_eq!(std::fs::metadata(v.path("r")).unwrap().len(), 8192);
        v.probe = |_| Ok(None);
        // Owned: grow yes, shrink no.
        attach(&mut v, &h, A, "r", false).unwrap();
        assert!(matches!(resize(&mut v, A, 4096), Err(ErrorKind::VsaOwned { pid: 100, .. })));
        resize(&mut v, A, 16384).unwrap();
        let f = std::fs::read(v.path("r")).unwrap();
        assert!(f.len() == 16384 && f.iter().all(|&b| b == 0));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn vsas_and_their_owners_survive_a_restart_and_dead_owners_are_released() {
        let d = tmp("restart");
        let store_path = d.join(FILE);
        let h = host();
        {
            let (store, loaded) = Store::open(&store_path).unwrap();
            let mut v = Vsas::new(config(&d), loaded.vsas);
            v.handle(A, Request::VsaCreate { name: name("keep"), size: 4096 }, &h).unwrap();
            v.handle(B, Request::VsaCreate { name: name("owned"), size: 4096 }, &h).unwrap();
            v.handle(B, Request::VsaCreate { name: name("gone"), size: 4096 }, &h).unwrap();
            attach(&mut v, &h, B, "owned", false).unwrap();
            v.handle(B, Request::VsaDelete { name: name("gone") }, &h).unwrap();
            store.commit(&v.take_changes()).unwrap();
        }
        let (_store, loaded) = Store::open(&store_path).unwrap();
        let mut v = Vsas::new(config(&d), loaded.vsas);
        let names: Vec<&str> = v.records().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["keep", "owned"]);
        assert_eq!(v.owners(), vec![(200, 1400)]);
        // The owner still runs: still the owner.
        assert!(v.reclaim_stale(&h).is_empty());
        assert!(matches!(
            attach(&mut v, &h, A, "owned", false),
            Ok((VolumeRole::Remote { owner: 200, .. }, None))
        ));
        // It died while the daemon was down (its pid now another process's).
        let mut h2 = host();
        h2.procs.insert(200, (5, 1));
        assert_eq!(v.reclaim_stale(&h2), vec!["owned".to_owned()]);
        assert!(v.take_changes().iter().any(|c| matches!(c, Change::PutVsa(r) if r.owner.is_none())));
        assert!(matches!(attach(&mut v, &h2, A, "owned", false), Ok((VolumeRole::Owner { .. }, Some(_)))));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_schema_1_store_is_upgraded_with_no_vsas() {
        let d = tmp("schema");
        let path = d.join(FILE);
        {
            let db = redb::Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut meta = tx.open_table(redb::TableDefinition::<&str, u64>::new("meta")).unwrap();
                meta.insert("schema", 1).unwrap();
            }
            tx.commit().unwrap();
        }
        let (_s, l) = Store::open(&path).unwrap();
        assert!(l.vsas.is_empty());
        std::fs::remove_dir_all(d).unwrap();
    }
}
