//! [`Volume`]: the file system inside a VSA, implementing [`super::FileSystem`].
//!
//! The whole metadata (inodes, directories, block maps) lives in memory; every change is an
//! [`Op`] that is applied in memory and written to the journal before the call returns (the
//! on-disk format and recovery are specified in [`super::layout`]). File data of small
//! writes travels inline in the journal record and stays in memory (a dirty block) until the
//! next checkpoint writes it to a fresh block; whole blocks of large writes go straight to
//! fresh blocks, the record carrying their checksums. Clean blocks are read through a bounded
//! cache. One mutex guards the state; it is held across device I/O (bounded) but never across
//! anything else that may block.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use super::dev::{BlockDev, BLOCK};
use super::journal::Op;
use super::layout::{
    corrupt, crc, decode_cp_block, decode_record_header, encode_cp_block, encode_record, record_blocks,
    record_payload, Dec, Enc, Superblock, CP_PAYLOAD, JOURNAL_START, MAX_FILE_SIZE, MD_MAGIC,
};
use super::{
    Attr, DirEntry, FileSystem, FileType, FsError, FsResult, Ino, RenameFlags, SetAttr, StatFs, Time,
    WriteAt, NAME_MAX, ROOT,
};
use crate::error::Errno;

const BS: u64 = BLOCK as u64;
/// Writes up to this many bytes go entirely inline in the journal.
const INLINE_MAX: usize = 16 * 1024;
/// Largest inline piece per record.
const INLINE_CHUNK: usize = 32 * 1024;
/// Most blocks per map record.
const MAP_CHUNK: u64 = 256;
/// Clean blocks kept in the read cache.
const CACHE_BLOCKS: usize = 2048;
/// Smallest journal.
pub const MIN_JOURNAL: u64 = 32;

fn posix(e: Errno) -> FsError {
    FsError::Posix(e)
}

/// Checks one name component: `EINVAL` for empty, `.`, `..`, `/` or NUL; `ENAMETOOLONG`.
pub fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > NAME_MAX {
        return Err(posix(Errno::ENAMETOOLONG));
    }
    if name.is_empty() || name == b"." || name == b".." || name.iter().any(|&c| c == b'/' || c == 0) {
        return Err(posix(Errno::EINVAL));
    }
    Ok(())
}

/// One block of a file: on the device, or (dirty) only in memory and in the journal.
pub(crate) enum Blk {
    Disk(u64),
    Mem(Box<[u8]>),
}

/// An inode in memory.
pub(crate) struct Inode {
    pub kind: FileType,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    /// A directory's parent (ROOT for the root); 0 for files.
    pub parent: Ino,
    /// Directory: name -> (inode, slot).
    pub entries: BTreeMap<Vec<u8>, (Ino, u64)>,
    /// Directory: slot -> name (readdir order and cookies).
    pub slots: BTreeMap<u64, Vec<u8>>,
    pub next_slot: u64,
    /// File: file block -> where its data is.
    pub blocks: BTreeMap<u64, Blk>,
}

impl Inode {
    fn new(kind: FileType, perm: u32, uid: u32, gid: u32, time: Time, parent: Ino) -> Inode {
        Inode {
            kind,
            perm: perm & 0o7777,
            uid,
            gid,
            nlink: if kind == FileType::Dir { 2 } else { 1 },
            size: 0,
            atime: time,
            mtime: time,
            ctime: time,
            parent,
            entries: BTreeMap::new(),
            slots: BTreeMap::new(),
            next_slot: 0,
            blocks: BTreeMap::new(),
        }
    }

    fn add_entry(&mut self, name: &[u8], ino: Ino) {
        let slot = self.next_slot;
        self.next_slot += 1;
        self.entries.insert(name.to_vec(), (ino, slot));
        self.slots.insert(slot, name.to_vec());
    }

    fn remove_entry(&mut self, name: &[u8]) -> Option<Ino> {
        let (ino, slot) = self.entries.remove(name)?;
        self.slots.remove(&slot);
        Some(ino)
    }
}

/// Free-space bitmap: a set bit is a block in use (or freed but not yet reusable).
pub(crate) struct Alloc {
    words: Vec<u64>,
    pub total: u64,
    pub free: u64,
    /// Freed since the last checkpoint; reusable after the next one.
    pub pending: Vec<u64>,
    hint: usize,
}

impl Alloc {
    fn new(total: u64) -> Alloc {
        let n = usize::try_from(total.div_ceil(64)).unwrap_or(0);
        let mut a = Alloc { words: vec![0; n], total, free: total, pending: Vec::new(), hint: 0 };
        // Bits past the end stay set so they are never handed out.
        for b in total..(n as u64 * 64) {
            a.words[(b / 64) as usize] |= 1 << (b % 64);
        }
        a
    }

    pub fn is_used(&self, b: u64) -> bool {
        b >= self.total || self.words[(b / 64) as usize] & (1 << (b % 64)) != 0
    }

    /// Marks `b` used; false if out of range or already used.
    pub fn claim(&mut self, b: u64) -> bool {
        if self.is_used(b) {
            return false;
        }
        self.words[(b / 64) as usize] |= 1 << (b % 64);
        self.free -= 1;
        true
    }

    fn release(&mut self, b: u64) {
        if b < self.total && self.is_used(b) {
            self.words[(b / 64) as usize] &= !(1 << (b % 64));
            self.free += 1;
            self.hint = self.hint.min((b / 64) as usize);
        }
    }

    /// The lowest free block (keeps volumes packed at the front, so they can shrink).
    fn alloc(&mut self) -> Option<u64> {
        let mut i = self.hint;
        while i < self.words.len() {
            let w = self.words[i];
            if w != u64::MAX {
                let b = i as u64 * 64 + u64::from((!w).trailing_zeros());
                self.hint = i;
                if self.claim(b) {
                    return Some(b);
                }
                return None;
            }
            i += 1;
        }
        self.hint = self.words.len();
        None
    }

    /// Highest block in use + 1.
    pub fn used_end(&self) -> u64 {
        for (i, &w) in self.words.iter().enumerate().rev() {
            let mut w = w;
            if i == self.words.len() - 1 {
                let valid = self.total - i as u64 * 64;
                if valid < 64 {
                    w &= (1u64 << valid) - 1;
                }
            }
            if w != 0 {
                return i as u64 * 64 + 64 - u64::from(w.leading_zeros());
            }
        }
        0
    }
}

/// A bounded cache of clean device blocks.
struct Cache {
    map: HashMap<u64, Arc<[u8]>>,
    order: VecDeque<u64>,
}

impl Cache {
    fn get(&self, b: u64) -> Option<Arc<[u8]>> {
        self.map.get(&b).cloned()
    }
    fn insert(&mut self, b: u64, data: Arc<[u8]>) {
        if self.map.insert(b, data).is_none() {
            self.order.push_back(b);
        }
        while self.map.len() > CACHE_BLOCKS {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        if self.order.len() > 2 * CACHE_BLOCKS {
            let map = &self.map;
            let mut seen = HashSet::new();
            self.order.retain(|b| map.contains_key(b) && seen.insert(*b));
        }
    }
    fn remove(&mut self, b: u64) {
        self.map.remove(&b);
    }
}

/// How a volume image is loaded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    /// Read-write mount: recovery, orphans freed, a checkpoint.
    Mount,
    /// Read-only: recovery in memory only.
    ReadOnly,
    /// fsck check: like read-only, problems collected instead of refused.
    Check,
    /// fsck repair: problems fixed, a damaged journal cut at the damage.
    Repair,
}

/// Counts from loading an image.
#[derive(Clone, Debug, Default)]
pub(crate) struct LoadInfo {
    pub problems: Vec<String>,
    pub fixed: Vec<String>,
    pub replayed: u64,
    pub orphans: u64,
}

/// The state behind the lock.
pub(crate) struct Inner {
    pub inodes: HashMap<Ino, Inode>,
    pub next_ino: Ino,
    pub alloc: Alloc,
    dirty: u64,
    mapped: u64,
    name_bytes: u64,
    opens: HashMap<Ino, u32>,
    pub sb: Superblock,
    pub cp_blocks: Vec<u64>,
    jpos: u64,
    seq: u64,
    cache: Cache,
    failed: Option<String>,
    readonly: bool,
    /// Replaying the journal: unlinked inodes stay (later records may still write to them,
    /// as an open descriptor did); orphans are freed after recovery.
    replaying: bool,
    pub checkpoints: u64,
}

fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Time::now().nsec as u64);
    h.finish()
}

impl Inner {
    fn empty(dev_blocks: u64, sb: Superblock) -> Inner {
        Inner {
            inodes: HashMap::new(),
            next_ino: ROOT + 1,
            alloc: Alloc::new(dev_blocks),
            dirty: 0,
            mapped: 0,
            name_bytes: 0,
            opens: HashMap::new(),
            sb,
            cp_blocks: Vec::new(),
            jpos: 0,
            seq: sb.journal_seq,
            cache: Cache { map: HashMap::new(), order: VecDeque::new() },
            failed: None,
            readonly: false,
            replaying: false,
            checkpoints: 0,
        }
    }

    pub fn data_start(&self) -> u64 {
        self.sb.journal_start + self.sb.journal_len
    }

    fn get(&self, ino: Ino) -> FsResult<&Inode> {
        self.inodes.get(&ino).ok_or(posix(Errno::ENOENT))
    }

    fn get_mut(&mut self, ino: Ino) -> FsResult<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(posix(Errno::ENOENT))
    }

    /// A directory that can take new entries.
    fn live_dir(&self, ino: Ino) -> FsResult<&Inode> {
        let d = self.get(ino)?;
        if d.kind != FileType::Dir {
            return Err(posix(Errno::ENOTDIR));
        }
        if d.nlink == 0 {
            return Err(posix(Errno::ENOENT));
        }
        Ok(d)
    }

    fn meta_reserve(&self) -> u64 {
        let bytes = self.inodes.len() as u64 * 100 + self.name_bytes + (self.mapped + self.dirty) * 20 + 64;
        bytes / CP_PAYLOAD as u64 + 2
    }

    /// Free blocks a program may still fill.
    fn avail(&self) -> u64 {
        self.alloc.free.saturating_sub(self.dirty + self.meta_reserve())
    }

    fn pend(&mut self, b: u64) {
        self.alloc.pending.push(b);
        self.cache.remove(b);
    }

    fn drop_blk(&mut self, blk: Blk) {
        match blk {
            Blk::Disk(b) => {
                self.mapped -= 1;
                self.pend(b);
            }
            Blk::Mem(_) => self.dirty -= 1,
        }
    }

    fn free_inode(&mut self, ino: Ino) {
        if let Some(inode) = self.inodes.remove(&ino) {
            for (_, blk) in inode.blocks {
                self.drop_blk(blk);
            }
        }
        self.opens.remove(&ino);
    }

    fn read_block(&mut self, dev: &dyn BlockDev, b: u64) -> FsResult<Arc<[u8]>> {
        if let Some(d) = self.cache.get(b) {
            return Ok(d);
        }
        let mut buf = vec![0u8; BLOCK];
        dev.read(b, &mut buf)?;
        let d: Arc<[u8]> = buf.into();
        self.cache.insert(b, d.clone());
        Ok(d)
    }

    /// Makes file block `fb` of `ino` a dirty in-memory block (loading its data).
    fn make_mem(&mut self, dev: &dyn BlockDev, ino: Ino, fb: u64) -> FsResult<()> {
        let cur = match self.get(ino)?.blocks.get(&fb) {
            Some(Blk::Mem(_)) => return Ok(()),
            Some(Blk::Disk(b)) => Some(*b),
            None => None,
        };
        let data: Box<[u8]> = match cur {
            Some(b) => {
                let d = self.read_block(dev, b)?;
                self.pend(b);
                self.mapped -= 1;
                d.to_vec().into_boxed_slice()
            }
            None => vec![0u8; BLOCK].into_boxed_slice(),
        };
        self.dirty += 1;
        self.get_mut(ino)?.blocks.insert(fb, Blk::Mem(data));
        Ok(())
    }

    fn truncate(&mut self, dev: &dyn BlockDev, ino: Ino, new: u64) -> FsResult<()> {
        let old = self.get(ino)?.size;
        if new < old {
            let keep = new.div_ceil(BS);
            let gone = self.get_mut(ino)?.blocks.split_off(&keep);
            for (_, blk) in gone {
                self.drop_blk(blk);
            }
            let part = (new % BS) as usize;
            if part != 0 && self.get(ino)?.blocks.contains_key(&(new / BS)) {
                self.make_mem(dev, ino, new / BS)?;
                if let Some(Blk::Mem(d)) = self.get_mut(ino)?.blocks.get_mut(&(new / BS)) {
                    d[part..].fill(0);
                }
            }
        }
        self.get_mut(ino)?.size = new;
        Ok(())
    }

    fn is_under(&self, mut d: Ino, top: Ino) -> bool {
        for _ in 0..=self.inodes.len() {
            if d == top {
                return true;
            }
            if d == ROOT {
                return false;
            }
            match self.inodes.get(&d) {
                Some(i) => d = i.parent,
                None => return false,
            }
        }
        false
    }

    /// Applies one operation: checks everything first, changes nothing on error.
    fn apply(&mut self, dev: &dyn BlockDev, op: &Op) -> FsResult<()> {
        match op {
            Op::Create { dir, name, ino, perm, uid, gid, time }
            | Op::Mkdir { dir, name, ino, perm, uid, gid, time } => {
                check_name(name)?;
                let is_dir = matches!(op, Op::Mkdir { .. });
                let d = self.live_dir(*dir)?;
                if d.entries.contains_key(name) {
                    return Err(posix(Errno::EEXIST));
                }
                if self.inodes.contains_key(ino) || *ino <= ROOT {
                    return Err(corrupt(format!("inode {ino} created twice")));
                }
                let kind = if is_dir { FileType::Dir } else { FileType::File };
                self.inodes
                    .insert(*ino, Inode::new(kind, *perm, *uid, *gid, *time, if is_dir { *dir } else { 0 }));
                let d = self.get_mut(*dir)?;
                d.add_entry(name, *ino);
                d.mtime = *time;
                d.ctime = *time;
                if is_dir {
                    d.nlink += 1;
                }
                self.next_ino = self.next_ino.max(ino + 1);
                self.name_bytes += name.len() as u64 + 17;
            }
            Op::Unlink { dir, name, time } | Op::Rmdir { dir, name, time } => {
                let rmdir = matches!(op, Op::Rmdir { .. });
                check_name(name)?;
                let d = self.live_dir(*dir)?;
                let ino = d.entries.get(name).ok_or(posix(Errno::ENOENT))?.0;
                let t = self.get(ino)?;
                match (rmdir, t.kind) {
                    (false, FileType::Dir) => return Err(posix(Errno::EISDIR)),
                    (true, FileType::File) => return Err(posix(Errno::ENOTDIR)),
                    (true, FileType::Dir) if !t.entries.is_empty() => return Err(posix(Errno::ENOTEMPTY)),
                    _ => {}
                }
                let d = self.get_mut(*dir)?;
                d.remove_entry(name);
                d.mtime = *time;
                d.ctime = *time;
                if rmdir {
                    d.nlink -= 1;
                }
                self.name_bytes -= name.len() as u64 + 17;
                let t = self.get_mut(ino)?;
                t.nlink = 0;
                t.ctime = *time;
                if !self.replaying && !self.opens.contains_key(&ino) {
                    self.free_inode(ino);
                }
            }
            Op::Rename { dir, name, newdir, newname, noreplace, exchange, time } => {
                self.apply_rename(*dir, name, *newdir, newname, *noreplace, *exchange, *time)?;
            }
            Op::SetAttr { ino, perm, uid, gid, size, atime, mtime, time } => {
                let i = self.get(*ino)?;
                if size.is_some() && i.kind == FileType::Dir {
                    return Err(posix(Errno::EISDIR));
                }
                if size.is_some_and(|s| s > MAX_FILE_SIZE) {
                    return Err(posix(Errno::EFBIG));
                }
                if let Some(s) = size {
                    self.truncate(dev, *ino, *s)?;
                }
                let i = self.get_mut(*ino)?;
                if size.is_some() {
                    i.mtime = *time;
                }
                if let Some(p) = perm {
                    i.perm = p & 0o7777;
                }
                if let Some(u) = uid {
                    i.uid = *u;
                }
                if let Some(g) = gid {
                    i.gid = *g;
                }
                if let Some(t) = atime {
                    i.atime = *t;
                }
                if let Some(t) = mtime {
                    i.mtime = *t;
                }
                i.ctime = *time;
            }
            Op::Write { ino, off, data, time } => {
                let i = self.get(*ino)?;
                if i.kind == FileType::Dir {
                    return Err(posix(Errno::EISDIR));
                }
                let end = off
                    .checked_add(data.len() as u64)
                    .filter(|&e| e <= MAX_FILE_SIZE)
                    .ok_or(posix(Errno::EFBIG))?;
                let mut pos = *off;
                while pos < end {
                    let fb = pos / BS;
                    let at = (pos % BS) as usize;
                    let n = (BLOCK - at).min((end - pos) as usize);
                    self.make_mem(dev, *ino, fb)?;
                    let src = &data[(pos - off) as usize..(pos - off) as usize + n];
                    if let Some(Blk::Mem(d)) = self.get_mut(*ino)?.blocks.get_mut(&fb) {
                        d[at..at + n].copy_from_slice(src);
                    }
                    pos += n as u64;
                }
                let i = self.get_mut(*ino)?;
                i.size = i.size.max(end);
                i.mtime = *time;
                i.ctime = *time;
            }
            Op::Map { ino, first, blocks, time } => {
                let i = self.get(*ino)?;
                if i.kind == FileType::Dir {
                    return Err(posix(Errno::EISDIR));
                }
                let end = first
                    .checked_add(blocks.len() as u64)
                    .and_then(|b| b.checked_mul(BS))
                    .filter(|&e| e <= MAX_FILE_SIZE)
                    .ok_or(posix(Errno::EFBIG))?;
                for (k, (db, _)) in blocks.iter().enumerate() {
                    let old = self.get_mut(*ino)?.blocks.insert(first + k as u64, Blk::Disk(*db));
                    self.mapped += 1;
                    if let Some(old) = old {
                        self.drop_blk(old);
                    }
                }
                let i = self.get_mut(*ino)?;
                i.size = i.size.max(end);
                i.mtime = *time;
                i.ctime = *time;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_rename(
        &mut self,
        dir: Ino,
        name: &[u8],
        newdir: Ino,
        newname: &[u8],
        noreplace: bool,
        exchange: bool,
        time: Time,
    ) -> FsResult<()> {
        check_name(name)?;
        check_name(newname)?;
        if noreplace && exchange {
            return Err(posix(Errno::EINVAL));
        }
        let src = self.live_dir(dir)?.entries.get(name).ok_or(posix(Errno::ENOENT))?.0;
        let dst = self.live_dir(newdir)?.entries.get(newname).map(|e| e.0);
        let skind = self.get(src)?.kind;
        if exchange {
            let dst = dst.ok_or(posix(Errno::ENOENT))?;
            if dst == src {
                return Ok(());
            }
            let dkind = self.get(dst)?.kind;
            if (skind == FileType::Dir && self.is_under(newdir, src))
                || (dkind == FileType::Dir && self.is_under(dir, dst))
            {
                return Err(posix(Errno::EINVAL));
            }
            if let Some(e) = self.get_mut(dir)?.entries.get_mut(name) {
                e.0 = dst;
            }
            if let Some(e) = self.get_mut(newdir)?.entries.get_mut(newname) {
                e.0 = src;
            }
            if skind == FileType::Dir {
                self.get_mut(src)?.parent = newdir;
            }
            if dkind == FileType::Dir {
                self.get_mut(dst)?.parent = dir;
            }
            if dir != newdir && skind != dkind {
                let (from, to) = if skind == FileType::Dir { (dir, newdir) } else { (newdir, dir) };
                self.get_mut(from)?.nlink -= 1;
                self.get_mut(to)?.nlink += 1;
            }
            for i in [src, dst] {
                self.get_mut(i)?.ctime = time;
            }
        } else {
            if let Some(dst) = dst {
                if dst == src {
                    return Ok(());
                }
                if noreplace {
                    return Err(posix(Errno::EEXIST));
                }
                let t = self.get(dst)?;
                match (skind, t.kind) {
                    (FileType::Dir, FileType::File) => return Err(posix(Errno::ENOTDIR)),
                    (FileType::File, FileType::Dir) => return Err(posix(Errno::EISDIR)),
                    (FileType::Dir, FileType::Dir) if !t.entries.is_empty() => {
                        return Err(posix(Errno::ENOTEMPTY))
                    }
                    _ => {}
                }
            }
            if skind == FileType::Dir && self.is_under(newdir, src) {
                return Err(posix(Errno::EINVAL));
            }
            self.get_mut(dir)?.remove_entry(name);
            self.name_bytes -= name.len() as u64 + 17;
            if let Some(dst) = dst {
                self.get_mut(newdir)?.remove_entry(newname);
                self.name_bytes -= newname.len() as u64 + 17;
                let t = self.get_mut(dst)?;
                t.nlink = 0;
                t.ctime = time;
                if t.kind == FileType::Dir {
                    self.get_mut(newdir)?.nlink -= 1;
                }
                if !self.replaying && !self.opens.contains_key(&dst) {
                    self.free_inode(dst);
                }
            }
            self.get_mut(newdir)?.add_entry(newname, src);
            self.name_bytes += newname.len() as u64 + 17;
            if skind == FileType::Dir {
                self.get_mut(src)?.parent = newdir;
                self.get_mut(dir)?.nlink -= 1;
                self.get_mut(newdir)?.nlink += 1;
            }
            self.get_mut(src)?.ctime = time;
        }
        for d in [dir, newdir] {
            let d = self.get_mut(d)?;
            d.mtime = time;
            d.ctime = time;
        }
        Ok(())
    }

    fn writable(&self) -> FsResult<()> {
        if let Some(why) = &self.failed {
            return Err(FsError::Device { what: format!("volume stopped after an earlier failure: {why}") });
        }
        if self.readonly {
            return Err(posix(Errno::EROFS));
        }
        Ok(())
    }

    /// Makes sure `need` more blocks (plus what a checkpoint needs) are free.
    fn ensure_space(&mut self, dev: &dyn BlockDev, need: u64) -> FsResult<()> {
        if need == 0 || self.avail() >= need {
            return Ok(());
        }
        if !self.alloc.pending.is_empty() {
            self.checkpoint(dev)?;
            if self.avail() >= need {
                return Ok(());
            }
        }
        Err(posix(Errno::ENOSPC))
    }

    /// Applies `op` and writes its journal record.
    fn commit(&mut self, dev: &dyn BlockDev, op: Op, need: u64) -> FsResult<()> {
        self.writable()?;
        let payload = op.encode();
        let n = record_blocks(payload.len());
        if n > self.sb.journal_len {
            return Err(posix(Errno::EFBIG));
        }
        if self.jpos + n > self.sb.journal_len {
            self.checkpoint(dev)?;
        }
        self.ensure_space(dev, need)?;
        self.apply(dev, &op)?;
        let rec = encode_record(self.sb.vol_id, self.sb.generation, self.seq, &payload);
        if let Err(e) = dev.write(self.sb.journal_start + self.jpos, &rec) {
            self.failed = Some(e.to_string());
            return Err(e);
        }
        self.jpos += n;
        self.seq += 1;
        Ok(())
    }

    fn write_inline(
        &mut self,
        dev: &dyn BlockDev,
        ino: Ino,
        off: u64,
        data: &[u8],
        time: Time,
    ) -> FsResult<()> {
        for (k, piece) in data.chunks(INLINE_CHUNK).enumerate() {
            let o = off + (k * INLINE_CHUNK) as u64;
            let need = (o + piece.len() as u64).div_ceil(BS) - o / BS;
            self.commit(dev, Op::Write { ino, off: o, data: piece.to_vec(), time }, need)?;
        }
        Ok(())
    }

    /// Writes whole blocks copy-on-write to fresh device blocks, then their map record.
    fn write_map(
        &mut self,
        dev: &dyn BlockDev,
        ino: Ino,
        first: u64,
        data: &[u8],
        time: Time,
    ) -> FsResult<()> {
        let k = (data.len() / BLOCK) as u64;
        self.writable()?;
        self.ensure_space(dev, k)?;
        let mut got = Vec::with_capacity(k as usize);
        for _ in 0..k {
            match self.alloc.alloc() {
                Some(b) => got.push(b),
                None => {
                    for b in got {
                        self.alloc.release(b);
                    }
                    return Err(posix(Errno::ENOSPC));
                }
            }
        }
        let res = (|| {
            let mut i = 0usize;
            while i < got.len() {
                let mut j = i + 1;
                while j < got.len() && got[j] == got[j - 1] + 1 {
                    j += 1;
                }
                dev.write(got[i], &data[i * BLOCK..j * BLOCK])?;
                i = j;
            }
            Ok(())
        })();
        if let Err(e) = res {
            self.failed = Some(format!("{e}"));
            return Err(e);
        }
        let blocks: Vec<(u64, u32)> =
            got.iter().enumerate().map(|(i, &b)| (b, crc(&[&data[i * BLOCK..(i + 1) * BLOCK]]))).collect();
        if let Err(e) = self.commit(dev, Op::Map { ino, first, blocks, time }, 0) {
            if self.failed.is_none() {
                for b in got {
                    self.alloc.release(b);
                }
            }
            return Err(e);
        }
        Ok(())
    }

    /// The metadata image (checkpoint payload). Every file block must be on the device.
    fn encode_meta(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.bytes(MD_MAGIC);
        e.u64(self.next_ino);
        e.u64(self.inodes.len() as u64);
        let mut inos: Vec<&Ino> = self.inodes.keys().collect();
        inos.sort();
        for ino in inos {
            let i = &self.inodes[ino];
            e.u64(*ino);
            e.u8(if i.kind == FileType::File { 1 } else { 2 });
            e.u32(i.perm);
            e.u32(i.uid);
            e.u32(i.gid);
            e.u32(i.nlink);
            e.u64(i.size);
            e.time(i.atime);
            e.time(i.mtime);
            e.time(i.ctime);
            e.u64(i.parent);
            if i.kind == FileType::Dir {
                e.u64(i.next_slot);
                e.u32(i.entries.len() as u32);
                for (slot, name) in &i.slots {
                    let child = i.entries.get(name).map_or(0, |x| x.0);
                    e.u64(*slot);
                    e.u64(child);
                    e.u8(name.len() as u8);
                    e.bytes(name);
                }
            } else {
                let mut runs: Vec<(u64, u64, u32)> = Vec::new();
                for (fb, blk) in &i.blocks {
                    let Blk::Disk(db) = blk else { continue };
                    match runs.last_mut() {
                        Some((f, d, n))
                            if *f + u64::from(*n) == *fb && *d + u64::from(*n) == *db && *n < u32::MAX =>
                        {
                            *n += 1
                        }
                        _ => runs.push((*fb, *db, 1)),
                    }
                }
                e.u32(runs.len() as u32);
                for (f, d, n) in runs {
                    e.u64(f);
                    e.u64(d);
                    e.u32(n);
                }
            }
        }
        e.buf
    }

    /// Writes dirty blocks and a new metadata image, then the next superblock (see
    /// [`super::layout`], "Checkpoint procedure").
    pub(crate) fn checkpoint(&mut self, dev: &dyn BlockDev) -> FsResult<()> {
        if self.readonly {
            return Ok(());
        }
        if let Some(why) = &self.failed {
            return Err(FsError::Device { what: format!("volume stopped after an earlier failure: {why}") });
        }
        let r = self.checkpoint_inner(dev);
        if let Err(FsError::Device { what }) = &r {
            self.failed = Some(what.clone());
        }
        r
    }

    fn checkpoint_inner(&mut self, dev: &dyn BlockDev) -> FsResult<()> {
        // 1. Dirty blocks to fresh blocks.
        let mut todo: Vec<(Ino, u64)> = Vec::new();
        for (ino, i) in &self.inodes {
            for (fb, blk) in &i.blocks {
                if matches!(blk, Blk::Mem(_)) {
                    todo.push((*ino, *fb));
                }
            }
        }
        todo.sort_unstable();
        let mut run: Vec<u8> = Vec::new();
        let mut run_start = 0u64;
        let mut run_len = 0u64;
        for (ino, fb) in todo {
            let b = self.alloc.alloc().ok_or(posix(Errno::ENOSPC))?;
            let Some(i) = self.inodes.get_mut(&ino) else { continue };
            let Some(Blk::Mem(data)) = i.blocks.insert(fb, Blk::Disk(b)) else { continue };
            self.dirty -= 1;
            self.mapped += 1;
            if run_len > 0 && (run_start + run_len != b || run_len >= 256) {
                dev.write(run_start, &run)?;
                run.clear();
                run_len = 0;
            }
            if run_len == 0 {
                run_start = b;
            }
            run.extend_from_slice(&data);
            run_len += 1;
            self.cache.insert(b, Arc::from(data));
        }
        if run_len > 0 {
            dev.write(run_start, &run)?;
        }
        // 2. The metadata image, as a chain.
        let payload = self.encode_meta();
        let n = payload.len().div_ceil(CP_PAYLOAD).max(1);
        let mut blocks = Vec::with_capacity(n);
        for _ in 0..n {
            match self.alloc.alloc() {
                Some(b) => blocks.push(b),
                None => {
                    for b in blocks {
                        self.alloc.release(b);
                    }
                    return Err(posix(Errno::ENOSPC));
                }
            }
        }
        let generation = self.sb.generation + 1;
        let mut i = 0usize;
        while i < n {
            let mut j = i + 1;
            while j < n && blocks[j] == blocks[j - 1] + 1 {
                j += 1;
            }
            let mut buf = Vec::with_capacity((j - i) * BLOCK);
            for k in i..j {
                let next = blocks.get(k + 1).copied().unwrap_or(u64::MAX);
                let lo = k * CP_PAYLOAD;
                let hi = (lo + CP_PAYLOAD).min(payload.len());
                buf.extend_from_slice(&encode_cp_block(generation, k as u64, next, &payload[lo.min(hi)..hi]));
            }
            dev.write(blocks[i], &buf)?;
            i = j;
        }
        dev.flush()?;
        // 3. The superblock.
        let sb = Superblock {
            generation,
            journal_seq: self.seq,
            cp_first: blocks[0],
            cp_blocks: n as u64,
            cp_len: payload.len() as u64,
            cp_crc: crc(&[&payload]),
            ..self.sb
        };
        dev.write(sb.slot(), &sb.encode())?;
        dev.flush()?;
        // 4. Old checkpoint and everything freed since become free.
        for b in std::mem::take(&mut self.cp_blocks) {
            self.alloc.release(b);
            self.cache.remove(b);
        }
        for b in std::mem::take(&mut self.alloc.pending) {
            self.alloc.release(b);
            self.cache.remove(b);
        }
        self.cp_blocks = blocks;
        self.sb = sb;
        self.jpos = 0;
        self.checkpoints += 1;
        Ok(())
    }

    /// Builds a fresh volume's state (root directory only) for a device of `dev_blocks`.
    fn fresh(dev_blocks: u64, journal_len: u64) -> Inner {
        let sb = Superblock {
            generation: 0,
            vol_id: random_u64(),
            blocks: dev_blocks,
            journal_start: JOURNAL_START,
            journal_len,
            journal_seq: 1,
            cp_first: 0,
            cp_blocks: 0,
            cp_len: 0,
            cp_crc: 0,
        };
        let mut s = Inner::empty(dev_blocks, sb);
        for b in 0..s.data_start() {
            s.alloc.claim(b);
        }
        let now = Time::now();
        let mut root = Inode::new(
            FileType::Dir,
            0o755,
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
            now,
            ROOT,
        );
        root.nlink = 2;
        s.inodes.insert(ROOT, root);
        s
    }

    /// Loads an image: superblock, checkpoint, journal replay (see [`super::layout`]).
    pub(crate) fn load(dev: &dyn BlockDev, mode: Mode) -> FsResult<(Inner, LoadInfo)> {
        let dev_blocks = dev.blocks();
        if dev_blocks < JOURNAL_START + 1 {
            return Err(corrupt(format!("device of {dev_blocks} blocks is too small to hold a volume")));
        }
        let mut info = LoadInfo::default();
        // 1. Superblocks.
        let mut best: Option<Superblock> = None;
        let mut why = Vec::new();
        for slot in 0..2u64 {
            let mut b = vec![0u8; BLOCK];
            dev.read(slot, &mut b)?;
            match Superblock::decode(&b, slot, dev_blocks) {
                Ok(sb) => {
                    if best.is_none_or(|x| sb.generation > x.generation) {
                        best = Some(sb);
                    }
                }
                Err(e) => why.push(format!("{e}")),
            }
        }
        let sb = best.ok_or_else(|| corrupt(format!("no valid superblock ({})", why.join("; "))))?;
        let mut s = Inner::empty(dev_blocks, sb);
        s.readonly = !matches!(mode, Mode::Mount | Mode::Repair);
        let data_start = s.data_start();
        for b in 0..data_start {
            s.alloc.claim(b);
        }
        // 2. The checkpoint chain.
        let mut payload = Vec::new();
        let mut b = sb.cp_first;
        let mut buf = vec![0u8; BLOCK];
        for index in 0..sb.cp_blocks {
            if b < data_start || !s.alloc.claim(b) {
                return Err(corrupt(format!(
                    "checkpoint chain index {index} points at block {b}, outside the pool or used twice"
                )));
            }
            s.cp_blocks.push(b);
            dev.read(b, &mut buf)?;
            let (p, next) = decode_cp_block(&buf, b, sb.generation, index)?;
            payload.extend_from_slice(p);
            b = next;
        }
        if payload.len() as u64 != sb.cp_len || crc(&[&payload]) != sb.cp_crc {
            return Err(corrupt(format!(
                "checkpoint of generation {} at block {}: payload checksum mismatch",
                sb.generation, sb.cp_first
            )));
        }
        s.decode_meta(&payload, mode, &mut info)?;
        // 3. Journal replay.
        s.replaying = true;
        s.replay(dev, mode, &mut info)?;
        s.replaying = false;
        // 4. Semantic checks.
        s.check_tree(mode == Mode::Repair, &mut info)?;
        if matches!(mode, Mode::Mount | Mode::ReadOnly) && !info.problems.is_empty() {
            return Err(corrupt(format!(
                "{} problem(s), first: {}",
                info.problems.len(),
                info.problems.first().map_or("", String::as_str)
            )));
        }
        let orphans: Vec<Ino> =
            s.inodes.iter().filter(|(i, x)| **i != ROOT && x.nlink == 0).map(|(i, _)| *i).collect();
        info.orphans = orphans.len() as u64;
        if matches!(mode, Mode::Mount | Mode::Repair) {
            for o in orphans {
                s.free_inode(o);
            }
            s.checkpoint(dev)?;
        }
        Ok((s, info))
    }

    fn decode_meta(&mut self, payload: &[u8], mode: Mode, info: &mut LoadInfo) -> FsResult<()> {
        let mut d = Dec::new(payload, "metadata image");
        if d.bytes(4)? != MD_MAGIC {
            return Err(corrupt("metadata image: bad magic"));
        }
        self.next_ino = d.u64()?;
        let n = d.count(61, true)?;
        let data_start = self.data_start();
        for _ in 0..n {
            let ino = d.u64()?;
            let kind = match d.u8()? {
                1 => FileType::File,
                2 => FileType::Dir,
                k => return Err(corrupt(format!("metadata image: inode {ino} has unknown kind {k}"))),
            };
            let (perm, uid, gid, nlink, size) = (d.u32()?, d.u32()?, d.u32()?, d.u32()?, d.u64()?);
            if size > MAX_FILE_SIZE {
                return Err(corrupt(format!("metadata image: inode {ino} size {size} too large")));
            }
            let (atime, mtime, ctime, parent) = (d.time()?, d.time()?, d.time()?, d.u64()?);
            let mut inode = Inode::new(kind, perm, uid, gid, atime, parent);
            inode.nlink = nlink;
            inode.size = size;
            inode.mtime = mtime;
            inode.ctime = ctime;
            if kind == FileType::Dir {
                inode.next_slot = d.u64()?;
                let ne = d.count(17, false)?;
                for _ in 0..ne {
                    let slot = d.u64()?;
                    let child = d.u64()?;
                    let len = d.u8()? as usize;
                    let name = d.bytes(len)?;
                    if check_name(name).is_err() {
                        return Err(corrupt(format!("metadata image: directory {ino} has an invalid name")));
                    }
                    if slot >= inode.next_slot
                        || inode.slots.contains_key(&slot)
                        || inode.entries.contains_key(name)
                    {
                        return Err(corrupt(format!(
                            "metadata image: directory {ino} has a duplicate entry or slot"
                        )));
                    }
                    inode.entries.insert(name.to_vec(), (child, slot));
                    inode.slots.insert(slot, name.to_vec());
                    self.name_bytes += len as u64 + 17;
                }
            } else {
                let nr = d.count(20, false)?;
                for _ in 0..nr {
                    let (fb, db, cnt) = (d.u64()?, d.u64()?, u64::from(d.u32()?));
                    let ok = cnt > 0
                        && fb.checked_add(cnt).is_some_and(|e| e <= MAX_FILE_SIZE / BS)
                        && db.checked_add(cnt).is_some_and(|e| e <= self.alloc.total);
                    if !ok {
                        return Err(corrupt(format!(
                            "metadata image: inode {ino} maps {cnt} block(s) at {db} (file block {fb}) outside the device"
                        )));
                    }
                    for k in 0..cnt {
                        let (f, b) = (fb + k, db + k);
                        if inode.blocks.contains_key(&f) {
                            return Err(corrupt(format!(
                                "metadata image: inode {ino} maps file block {f} twice"
                            )));
                        }
                        if b < data_start || !self.alloc.claim(b) {
                            info.problems.push(format!(
                                "inode {ino} file block {f} uses block {b}, which is reserved or used by another structure"
                            ));
                            if mode == Mode::Repair {
                                info.fixed.push(format!("dropped block {b} from inode {ino} (a hole now)"));
                            }
                            continue;
                        }
                        inode.blocks.insert(f, Blk::Disk(b));
                        self.mapped += 1;
                    }
                }
            }
            if self.inodes.insert(ino, inode).is_some() {
                return Err(corrupt(format!("metadata image: inode {ino} appears twice")));
            }
        }
        if d.remaining() != 0 {
            return Err(corrupt("metadata image: trailing bytes"));
        }
        Ok(())
    }

    /// Reads one journal record at journal offset `pos` expecting `seq`: `(op, blocks)`, or
    /// `None` if there is no valid record there.
    fn read_record(
        &self,
        dev: &dyn BlockDev,
        pos: u64,
        seq: Option<u64>,
    ) -> FsResult<Option<(Vec<u8>, u64, u64)>> {
        let jl = self.sb.journal_len;
        let mut head = vec![0u8; BLOCK];
        dev.read(self.sb.journal_start + pos, &mut head)?;
        let Some(h) = decode_record_header(&head) else { return Ok(None) };
        if h.vol_id != self.sb.vol_id || h.generation != self.sb.generation || seq.is_some_and(|s| s != h.seq)
        {
            return Ok(None);
        }
        let n = u64::from(h.nblocks);
        if n == 0 || pos + n > jl {
            return Ok(None);
        }
        let mut rec = head;
        if n > 1 {
            rec.resize(n as usize * BLOCK, 0);
            dev.read(self.sb.journal_start + pos + 1, &mut rec[BLOCK..])?;
        }
        Ok(record_payload(&h, &rec).map(|p| (p.to_vec(), n, h.seq)))
    }

    fn replay(&mut self, dev: &dyn BlockDev, mode: Mode, info: &mut LoadInfo) -> FsResult<()> {
        let jl = self.sb.journal_len;
        let mut pos = 0u64;
        self.seq = self.sb.journal_seq;
        let mut stop = "end of the journal";
        while pos < jl {
            let Some((payload, n, _)) = self.read_record(dev, pos, Some(self.seq))? else {
                stop = "invalid record";
                break;
            };
            let op = Op::decode(&payload).map_err(|e| {
                corrupt(format!("journal record {} at block {}: {e}", self.seq, self.sb.journal_start + pos))
            })?;
            if let Op::Map { blocks, .. } = &op {
                let mut ok = true;
                let mut buf = vec![0u8; BLOCK];
                for (b, c) in blocks {
                    if *b < self.data_start() || *b >= self.alloc.total || self.alloc.is_used(*b) {
                        return Err(corrupt(format!(
                            "journal record {} at block {}: maps block {b}, which is in use",
                            self.seq,
                            self.sb.journal_start + pos
                        )));
                    }
                    dev.read(*b, &mut buf)?;
                    if crc(&[&buf]) != *c {
                        ok = false;
                        break;
                    }
                }
                if !ok {
                    stop = "data of a map record never reached the device";
                    break;
                }
                for (b, _) in blocks {
                    self.alloc.claim(*b);
                }
            }
            self.apply(dev, &op).map_err(|e| {
                corrupt(format!(
                    "journal record {} at block {} cannot be applied: {e}",
                    self.seq,
                    self.sb.journal_start + pos
                ))
            })?;
            pos += n;
            self.seq += 1;
            info.replayed += 1;
        }
        // A valid later record of this generation means damage in the middle, not a torn tail.
        let mut p = pos + 1;
        while p < jl {
            if let Some((_, _, s)) = self.read_record(dev, p, None)? {
                if s > self.seq {
                    let msg = format!(
                        "journal damaged at block {} (record {}: {stop}) but record {s} at block {} follows",
                        self.sb.journal_start + pos,
                        self.seq,
                        self.sb.journal_start + p
                    );
                    if mode == Mode::Repair {
                        info.fixed.push(format!("cut the journal at its damage: {msg}"));
                    } else if mode == Mode::Check {
                        info.problems.push(msg);
                    } else {
                        return Err(corrupt(msg));
                    }
                    break;
                }
            }
            p += 1;
        }
        self.jpos = pos;
        Ok(())
    }

    /// Checks (and with `fix`, repairs) the directory tree and links.
    fn check_tree(&mut self, fix: bool, info: &mut LoadInfo) -> FsResult<()> {
        match self.inodes.get(&ROOT) {
            Some(r) if r.kind == FileType::Dir => {}
            _ => return Err(corrupt("the root directory (inode 1) is missing or not a directory")),
        }
        let mut inos: Vec<Ino> = self.inodes.keys().copied().collect();
        inos.sort_unstable();
        let mut problems = Vec::new();
        // References.
        let mut refs: HashMap<Ino, Ino> = HashMap::new();
        for &d in &inos {
            let names: Vec<(Vec<u8>, Ino)> = match self.inodes.get(&d) {
                Some(i) => i.entries.iter().map(|(n, e)| (n.clone(), e.0)).collect(),
                None => continue,
            };
            for (name, child) in names {
                let bad = if !self.inodes.contains_key(&child) {
                    Some(format!(
                        "directory {d} entry {:?} names missing inode {child}",
                        String::from_utf8_lossy(&name)
                    ))
                } else if child == ROOT || refs.contains_key(&child) {
                    Some(format!(
                        "inode {child} has a second name {:?} in directory {d}",
                        String::from_utf8_lossy(&name)
                    ))
                } else {
                    refs.insert(child, d);
                    None
                };
                if let Some(p) = bad {
                    if fix {
                        if let Some(i) = self.inodes.get_mut(&d) {
                            i.remove_entry(&name);
                            self.name_bytes -= name.len() as u64 + 17;
                        }
                        info.fixed.push(format!("removed: {p}"));
                    }
                    problems.push(p);
                }
            }
        }
        // Reachability.
        let mut seen: HashSet<Ino> = HashSet::new();
        let mut stack = vec![ROOT];
        while let Some(d) = stack.pop() {
            if !seen.insert(d) {
                continue;
            }
            if let Some(i) = self.inodes.get(&d) {
                for (child, _) in i.entries.values() {
                    if refs.get(child) == Some(&d) {
                        stack.push(*child);
                    }
                }
            }
        }
        for &i in &inos {
            if seen.contains(&i) {
                continue;
            }
            let Some(x) = self.inodes.get(&i) else { continue };
            if x.nlink == 0 && !refs.contains_key(&i) {
                continue; // an orphan: freed at mount
            }
            problems.push(format!("inode {i} is not reachable from the root"));
            if fix {
                if let Some(p) = refs.remove(&i) {
                    let names: Vec<Vec<u8>> = self
                        .inodes
                        .get(&p)
                        .map(|d| d.entries.iter().filter(|e| e.1 .0 == i).map(|e| e.0.clone()).collect())
                        .unwrap_or_default();
                    for n in names {
                        if let Some(d) = self.inodes.get_mut(&p) {
                            d.remove_entry(&n);
                        }
                    }
                }
                let name = format!("lost+found-{i}").into_bytes();
                if let Some(r) = self.inodes.get_mut(&ROOT) {
                    r.add_entry(&name, i);
                }
                refs.insert(i, ROOT);
                if let Some(x) = self.inodes.get_mut(&i) {
                    if x.kind == FileType::Dir {
                        x.parent = ROOT;
                    }
                }
                info.fixed.push(format!("linked unreachable inode {i} into the root as lost+found-{i}"));
            }
        }
        // Parents, links, blocks past the end.
        for &i in &inos {
            let subdirs = match self.inodes.get(&i) {
                Some(x) => x
                    .entries
                    .values()
                    .filter(|(c, _)| self.inodes.get(c).is_some_and(|c| c.kind == FileType::Dir))
                    .count() as u32,
                None => continue,
            };
            let parent = if i == ROOT { Some(ROOT) } else { refs.get(&i).copied() };
            let Some(x) = self.inodes.get_mut(&i) else { continue };
            let want = match (x.kind, parent) {
                (FileType::Dir, Some(_)) => 2 + subdirs,
                (_, None) => 0,
                (FileType::File, Some(_)) => 1,
            };
            if x.kind == FileType::Dir && parent.is_some_and(|p| p != x.parent) {
                problems.push(format!(
                    "directory {i} records parent {} but is listed in {}",
                    x.parent,
                    parent.unwrap_or(0)
                ));
                if fix {
                    x.parent = parent.unwrap_or(ROOT);
                    info.fixed.push(format!("set the parent of directory {i}"));
                }
            }
            if x.nlink != want {
                problems.push(format!("inode {i} has link count {} instead of {want}", x.nlink));
                if fix {
                    x.nlink = want;
                    info.fixed.push(format!("set the link count of inode {i} to {want}"));
                }
            }
            if x.kind == FileType::File {
                let keep = x.size.div_ceil(BS);
                if x.blocks.range(keep..).next().is_some() {
                    problems.push(format!("inode {i} maps blocks past its size {}", x.size));
                    if fix {
                        let gone = x.blocks.split_off(&keep);
                        for (_, blk) in gone {
                            self.drop_blk(blk);
                        }
                        info.fixed.push(format!("dropped the blocks of inode {i} past its end"));
                    }
                }
            } else if !x.blocks.is_empty() {
                return Err(corrupt(format!("directory {i} maps data blocks")));
            }
        }
        let max = inos.last().copied().unwrap_or(ROOT);
        if self.next_ino <= max {
            problems
                .push(format!("next inode number {} is not above the highest inode {max}", self.next_ino));
            if fix {
                self.next_ino = max + 1;
                info.fixed.push("raised the next inode number".into());
            }
        }
        info.problems.extend(problems);
        Ok(())
    }

    fn attr(&self, ino: Ino) -> FsResult<Attr> {
        let i = self.get(ino)?;
        let (size, blocks) = match i.kind {
            FileType::Dir => (BS, 8),
            FileType::File => (i.size, i.blocks.len() as u64 * 8),
        };
        Ok(Attr {
            ino,
            kind: i.kind,
            perm: i.perm,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            size,
            blocks,
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
        })
    }

    /// Highest block in use + 1 (including blocks the durable checkpoint still refers to).
    pub(crate) fn used_end(&self) -> u64 {
        self.alloc.used_end()
    }

    /// Files and directories.
    pub(crate) fn counts(&self) -> (u64, u64) {
        let dirs = self.inodes.values().filter(|i| i.kind == FileType::Dir).count() as u64;
        (self.inodes.len() as u64 - dirs, dirs)
    }
}

/// Options for [`Volume::format_with`].
#[derive(Clone, Copy, Debug, Default)]
pub struct FormatOptions {
    /// Journal size in blocks (default: 1/32 of the device, between 32 and 8192 blocks).
    pub journal_blocks: Option<u64>,
}

/// A volume: the file system inside a VSA.
pub struct Volume {
    dev: Arc<dyn BlockDev>,
    inner: Mutex<Inner>,
}

impl Volume {
    /// Formats `dev` (destroying what it holds) and mounts the empty volume.
    pub fn format(dev: Arc<dyn BlockDev>) -> FsResult<Volume> {
        Volume::format_with(dev, FormatOptions::default())
    }

    /// [`Volume::format`] with options.
    pub fn format_with(dev: Arc<dyn BlockDev>, opts: FormatOptions) -> FsResult<Volume> {
        let blocks = dev.blocks();
        let jl = opts.journal_blocks.unwrap_or((blocks / 32).clamp(MIN_JOURNAL, 8192)).max(MIN_JOURNAL);
        if blocks < JOURNAL_START + jl + 16 {
            return Err(FsError::Posix(Errno::ENOSPC));
        }
        let mut s = Inner::fresh(blocks, jl);
        let zero = vec![0u8; 2 * BLOCK];
        dev.write(0, &zero)?;
        s.checkpoint(&*dev)?;
        Ok(Volume { dev, inner: Mutex::new(s) })
    }

    /// Mounts `dev` read-write: recovery, orphans freed, a checkpoint. A damaged image is
    /// refused with [`FsError::Corrupt`].
    pub fn open(dev: Arc<dyn BlockDev>) -> FsResult<Volume> {
        let (s, _) = Inner::load(&*dev, Mode::Mount)?;
        Ok(Volume { dev, inner: Mutex::new(s) })
    }

    /// Mounts `dev` read-only (recovery in memory only; nothing is written). Changes fail
    /// with `EROFS`.
    pub fn open_readonly(dev: Arc<dyn BlockDev>) -> FsResult<Volume> {
        let (s, _) = Inner::load(&*dev, Mode::ReadOnly)?;
        Ok(Volume { dev, inner: Mutex::new(s) })
    }

    /// Formats a fresh VSA (both superblock blocks all zeros), opens anything else.
    pub fn open_or_format(dev: Arc<dyn BlockDev>) -> FsResult<Volume> {
        if dev.blocks() >= 2 {
            let mut b = vec![0u8; 2 * BLOCK];
            dev.read(0, &mut b)?;
            if b.iter().all(|&x| x == 0) {
                return Volume::format(dev);
            }
        }
        Volume::open(dev)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Highest block in use + 1: the volume cannot shrink below this.
    pub fn used_blocks(&self) -> u64 {
        self.lock().used_end()
    }

    /// Checkpoints: every change so far is durable and the journal is empty.
    pub fn sync_all(&self) -> FsResult<()> {
        let mut g = self.lock();
        if g.readonly {
            return Ok(());
        }
        g.checkpoint(&*self.dev)
    }

    /// Checkpoints taken since mount (including the one at mount).
    pub fn checkpoints(&self) -> u64 {
        self.lock().checkpoints
    }

    /// The device underneath.
    pub fn device(&self) -> &Arc<dyn BlockDev> {
        &self.dev
    }

    /// Walks a `/`-separated path from the root (empty components and `.` skipped, `..`
    /// followed). A convenience for tools and tests.
    pub fn lookup_path(&self, path: &[u8]) -> FsResult<Ino> {
        let g = self.lock();
        let mut cur = ROOT;
        for c in path.split(|&b| b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => cur = g.get(cur)?.parent.max(ROOT),
                name => {
                    check_name(name)?;
                    let d = g.get(cur)?;
                    if d.kind != FileType::Dir {
                        return Err(posix(Errno::ENOTDIR));
                    }
                    cur = d.entries.get(name).ok_or(posix(Errno::ENOENT))?.0;
                }
            }
        }
        Ok(cur)
    }

    fn mutate<T>(&self, f: impl FnOnce(&mut Inner, &dyn BlockDev) -> FsResult<T>) -> FsResult<T> {
        let mut g = self.lock();
        g.writable()?;
        f(&mut g, &*self.dev)
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let dev = self.dev.clone();
        let g = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        if !g.readonly && g.failed.is_none() && (g.jpos > 0 || g.dirty > 0) {
            let _ = g.checkpoint(&*dev);
        }
    }
}

impl FileSystem for Volume {
    fn lookup(&self, dir: Ino, name: &[u8]) -> FsResult<Ino> {
        check_name(name)?;
        let g = self.lock();
        let d = g.get(dir)?;
        if d.kind != FileType::Dir {
            return Err(posix(Errno::ENOTDIR));
        }
        Ok(d.entries.get(name).ok_or(posix(Errno::ENOENT))?.0)
    }

    fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        self.lock().attr(ino)
    }

    fn setattr(&self, ino: Ino, set: SetAttr) -> FsResult<Attr> {
        self.mutate(|g, dev| {
            let i = g.get(ino)?;
            if set.size.is_some() && i.kind == FileType::Dir {
                return Err(posix(Errno::EISDIR));
            }
            let need = match set.size {
                Some(s) if s < i.size && s % BS != 0 => 1,
                _ => 0,
            };
            let op = Op::SetAttr {
                ino,
                perm: set.perm,
                uid: set.uid,
                gid: set.gid,
                size: set.size,
                atime: set.atime,
                mtime: set.mtime,
                time: Time::now(),
            };
            g.commit(dev, op, need)?;
            g.attr(ino)
        })
    }

    fn create(
        &self,
        dir: Ino,
        name: &[u8],
        perm: u32,
        uid: u32,
        gid: u32,
        exclusive: bool,
    ) -> FsResult<(Ino, bool)> {
        check_name(name)?;
        let mut g = self.lock();
        let d = g.get(dir)?;
        if d.kind != FileType::Dir {
            return Err(posix(Errno::ENOTDIR));
        }
        if let Some(&(ino, _)) = d.entries.get(name) {
            if exclusive {
                return Err(posix(Errno::EEXIST));
            }
            if g.get(ino)?.kind == FileType::Dir {
                return Err(posix(Errno::EISDIR));
            }
            return Ok((ino, false));
        }
        g.writable()?;
        let ino = g.next_ino;
        let op = Op::Create { dir, name: name.to_vec(), ino, perm, uid, gid, time: Time::now() };
        g.commit(&*self.dev, op, 1)?;
        Ok((ino, true))
    }

    fn mkdir(&self, dir: Ino, name: &[u8], perm: u32, uid: u32, gid: u32) -> FsResult<Ino> {
        check_name(name)?;
        self.mutate(|g, dev| {
            let ino = g.next_ino;
            g.live_dir(dir)?;
            g.commit(dev, Op::Mkdir { dir, name: name.to_vec(), ino, perm, uid, gid, time: Time::now() }, 1)?;
            Ok(ino)
        })
    }

    fn unlink(&self, dir: Ino, name: &[u8]) -> FsResult<()> {
        check_name(name)?;
        self.mutate(|g, dev| g.commit(dev, Op::Unlink { dir, name: name.to_vec(), time: Time::now() }, 0))
    }

    fn rmdir(&self, dir: Ino, name: &[u8]) -> FsResult<()> {
        check_name(name)?;
        self.mutate(|g, dev| g.commit(dev, Op::Rmdir { dir, name: name.to_vec(), time: Time::now() }, 0))
    }

    fn rename(&self, dir: Ino, name: &[u8], newdir: Ino, newname: &[u8], flags: RenameFlags) -> FsResult<()> {
        check_name(name)?;
        check_name(newname)?;
        self.mutate(|g, dev| {
            // A rename that changes nothing is not journalled.
            let src = g.live_dir(dir)?.entries.get(name).map(|e| e.0);
            let dst = g.live_dir(newdir)?.entries.get(newname).map(|e| e.0);
            if src.is_some() && src == dst && !(flags.noreplace && flags.exchange) {
                return Ok(());
            }
            let op = Op::Rename {
                dir,
                name: name.to_vec(),
                newdir,
                newname: newname.to_vec(),
                noreplace: flags.noreplace,
                exchange: flags.exchange,
                time: Time::now(),
            };
            g.commit(dev, op, 0)
        })
    }

    fn readdir(&self, dir: Ino, cookie: u64, max: usize) -> FsResult<Vec<(DirEntry, u64)>> {
        let g = self.lock();
        let d = g.get(dir)?;
        if d.kind != FileType::Dir {
            return Err(posix(Errno::ENOTDIR));
        }
        let mut out = Vec::new();
        for (slot, name) in d.slots.range(cookie..).take(max) {
            let Some(&(ino, _)) = d.entries.get(name) else { continue };
            let kind = g.get(ino).map(|i| i.kind).unwrap_or(FileType::File);
            out.push((DirEntry { name: name.clone(), ino, kind }, slot + 1));
        }
        Ok(out)
    }

    fn read(&self, ino: Ino, off: u64, buf: &mut [u8]) -> FsResult<usize> {
        let mut g = self.lock();
        let g = &mut *g;
        let i = g.get(ino)?;
        if i.kind == FileType::Dir {
            return Err(posix(Errno::EISDIR));
        }
        if off >= i.size {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(i.size - off) as usize;
        let mut done = 0usize;
        while done < n {
            let pos = off + done as u64;
            let fb = pos / BS;
            let at = (pos % BS) as usize;
            let k = (BLOCK - at).min(n - done);
            let dst = &mut buf[done..done + k];
            let disk = match g.inodes.get(&ino).and_then(|i| i.blocks.get(&fb)) {
                Some(Blk::Mem(d)) => {
                    dst.copy_from_slice(&d[at..at + k]);
                    None
                }
                Some(Blk::Disk(b)) => Some(*b),
                None => {
                    dst.fill(0);
                    None
                }
            };
            if let Some(b) = disk {
                let d = g.read_block(&*self.dev, b)?;
                dst.copy_from_slice(&d[at..at + k]);
            }
            done += k;
        }
        Ok(n)
    }

    fn write(&self, ino: Ino, at: WriteAt, data: &[u8]) -> FsResult<u64> {
        self.mutate(|g, dev| {
            let i = g.get(ino)?;
            if i.kind == FileType::Dir {
                return Err(posix(Errno::EISDIR));
            }
            let off = match at {
                WriteAt::Offset(o) => o,
                WriteAt::Append => i.size,
            };
            let end = off
                .checked_add(data.len() as u64)
                .filter(|&e| e <= MAX_FILE_SIZE)
                .ok_or(posix(Errno::EFBIG))?;
            if data.is_empty() {
                return Ok(off);
            }
            let time = Time::now();
            let first_full = off.div_ceil(BS) * BS;
            let last_full = end / BS * BS;
            if data.len() <= INLINE_MAX || first_full >= last_full {
                g.ensure_space(dev, (end.div_ceil(BS) - off / BS) + 1)?;
                g.write_inline(dev, ino, off, data, time)?;
                return Ok(off);
            }
            g.ensure_space(dev, end.div_ceil(BS) - off / BS + 1)?;
            if first_full > off {
                g.write_inline(dev, ino, off, &data[..(first_full - off) as usize], time)?;
            }
            let mut fb = first_full / BS;
            while fb < last_full / BS {
                let k = MAP_CHUNK.min(last_full / BS - fb);
                let lo = (fb * BS - off) as usize;
                g.write_map(dev, ino, fb, &data[lo..lo + (k * BS) as usize], time)?;
                fb += k;
            }
            if end > last_full {
                g.write_inline(dev, ino, last_full, &data[(last_full - off) as usize..], time)?;
            }
            Ok(off)
        })
    }

    fn fsync(&self, ino: Ino, _datasync: bool) -> FsResult<()> {
        let g = self.lock();
        g.get(ino)?;
        if let Some(why) = &g.failed {
            return Err(FsError::Device { what: format!("volume stopped after an earlier failure: {why}") });
        }
        if g.readonly {
            return Ok(());
        }
        self.dev.flush()
    }

    fn open(&self, ino: Ino) -> FsResult<()> {
        let mut g = self.lock();
        g.get(ino)?;
        *g.opens.entry(ino).or_insert(0) += 1;
        Ok(())
    }

    fn release(&self, ino: Ino) -> FsResult<()> {
        let mut g = self.lock();
        let Some(c) = g.opens.get_mut(&ino) else { return Ok(()) };
        *c -= 1;
        if *c == 0 {
            g.opens.remove(&ino);
            if g.inodes.get(&ino).is_some_and(|i| i.nlink == 0) {
                // Not journalled: an orphan in the journal or checkpoint is freed at mount.
                g.free_inode(ino);
            }
        }
        Ok(())
    }

    fn statfs(&self) -> FsResult<StatFs> {
        let g = self.lock();
        Ok(StatFs {
            block_size: BLOCK as u32,
            blocks: g.alloc.total,
            free: g.avail(),
            files: g.inodes.len() as u64,
        })
    }
}
