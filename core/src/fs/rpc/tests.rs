//! Tests of the RPC protocol: a [`Client`] against a server over Unix sockets, error mapping,
//! concurrency, time-outs, release on disconnect, and fuzzing of [`serve_stream`].

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::sync::atomic::AtomicU64;

use proptest::prelude::*;

use super::*;
use crate::fs::ROOT;

// ---------------------------------------------------------------------------------------------
// A minimal in-memory file system, for these tests only.

struct Node {
    attr: Attr,
    data: Vec<u8>,
    children: BTreeMap<Vec<u8>, Ino>,
    opens: u32,
    linked: bool,
}

#[derive(Default)]
struct MemInner {
    nodes: HashMap<Ino, Node>,
    next: Ino,
}

/// Files past this size are refused (EFBIG), so hostile offsets cannot allocate much.
const MEM_MAX_FILE: u64 = 64 << 20;

struct MemFs {
    inner: Mutex<MemInner>,
    /// Returned by the next `statfs`, to test error mapping.
    fail_next_statfs: Mutex<Option<FsError>>,
    /// Opens minus releases.
    open_total: AtomicU64,
}

fn new_attr(ino: Ino, kind: FileType, perm: u32, uid: u32, gid: u32) -> Attr {
    let now = Time::now();
    Attr {
        ino,
        kind,
        perm: perm & 0o7777,
        nlink: if kind == FileType::Dir { 2 } else { 1 },
        uid,
        gid,
        size: if kind == FileType::Dir { 4096 } else { 0 },
        blocks: 0,
        atime: now,
        mtime: now,
        ctime: now,
    }
}

impl MemFs {
    fn new() -> Arc<MemFs> {
        let mut inner = MemInner { nodes: HashMap::new(), next: 2 };
        inner.nodes.insert(
            ROOT,
            Node {
                attr: new_attr(ROOT, FileType::Dir, 0o755, 0, 0),
                data: Vec::new(),
                children: BTreeMap::new(),
                opens: 0,
                linked: true,
            },
        );
        Arc::new(MemFs {
            inner: Mutex::new(inner),
            fail_next_statfs: Mutex::new(None),
            open_total: AtomicU64::new(0),
        })
    }

    fn exists(&self, ino: Ino) -> bool {
        lock(&self.inner).nodes.contains_key(&ino)
    }
}

fn enoent<T>() -> FsResult<T> {
    Err(FsError::Posix(Errno::ENOENT))
}

fn mem_check(name: &[u8]) -> FsResult<()> {
    check_name(name).map_err(FsError::Posix)?;
    if name == b"." || name == b".." {
        return Err(FsError::Posix(Errno::EINVAL));
    }
    Ok(())
}

impl MemInner {
    fn dir(&mut self, ino: Ino) -> FsResult<&mut Node> {
        match self.nodes.get_mut(&ino) {
            Some(n) if n.attr.kind == FileType::Dir => Ok(n),
            Some(_) => Err(FsError::Posix(Errno::ENOTDIR)),
            None => enoent(),
        }
    }

    fn add(&mut self, dir: Ino, name: &[u8], kind: FileType, perm: u32, uid: u32, gid: u32) -> FsResult<Ino> {
        let ino = self.next;
        self.next += 1;
        self.dir(dir)?.children.insert(name.to_vec(), ino);
        let node = Node {
            attr: new_attr(ino, kind, perm, uid, gid),
            data: Vec::new(),
            children: BTreeMap::new(),
            opens: 0,
            linked: true,
        };
        self.nodes.insert(ino, node);
        Ok(ino)
    }

    fn drop_link(&mut self, ino: Ino) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.linked = false;
            if n.opens == 0 {
                self.nodes.remove(&ino);
            }
        }
    }
}

impl FileSystem for MemFs {
    fn lookup(&self, dir: Ino, name: &[u8]) -> FsResult<Ino> {
        mem_check(name)?;
        let mut g = lock(&self.inner);
        g.dir(dir)?.children.get(name).copied().ok_or(FsError::Posix(Errno::ENOENT))
    }

    fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        lock(&self.inner).nodes.get(&ino).map(|n| n.attr).ok_or(FsError::Posix(Errno::ENOENT))
    }

    fn setattr(&self, ino: Ino, set: SetAttr) -> FsResult<Attr> {
        let mut g = lock(&self.inner);
        let n = g.nodes.get_mut(&ino).ok_or(FsError::Posix(Errno::ENOENT))?;
        if let Some(size) = set.size {
            if n.attr.kind == FileType::Dir {
                return Err(FsError::Posix(Errno::EISDIR));
            }
            if size > MEM_MAX_FILE {
                return Err(FsError::Posix(Errno::EFBIG));
            }
            n.data.resize(size as usize, 0);
            n.attr.size = size;
        }
        if let Some(p) = set.perm {
            n.attr.perm = p & 0o7777;
        }
        if let Some(u) = set.uid {
            n.attr.uid = u;
        }
        if let Some(g) = set.gid {
            n.attr.gid = g;
        }
        if let Some(t) = set.atime {
            n.attr.atime = t;
        }
        if let Some(t) = set.mtime {
            n.attr.mtime = t;
        }
        Ok(n.attr)
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
        mem_check(name)?;
        let mut g = lock(&self.inner);
        if let Some(&ino) = g.dir(dir)?.children.get(name) {
            if exclusive {
                return Err(FsError::Posix(Errno::EEXIST));
            }
            if g.nodes.get(&ino).is_some_and(|n| n.attr.kind == FileType::Dir) {
                return Err(FsError::Posix(Errno::EISDIR));
            }
            return Ok((ino, false));
        }
        Ok((g.add(dir, name, FileType::File, perm, uid, gid)?, true))
    }

    fn mkdir(&self, dir: Ino, name: &[u8], perm: u32, uid: u32, gid: u32) -> FsResult<Ino> {
        mem_check(name)?;
        let mut g = lock(&self.inner);
        if g.dir(dir)?.children.contains_key(name) {
            return Err(FsError::Posix(Errno::EEXIST));
        }
        g.add(dir, name, FileType::Dir, perm, uid, gid)
    }

    fn unlink(&self, dir: Ino, name: &[u8]) -> FsResult<()> {
        mem_check(name)?;
        let mut g = lock(&self.inner);
        let ino = *g.dir(dir)?.children.get(name).ok_or(FsError::Posix(Errno::ENOENT))?;
        if g.nodes.get(&ino).is_some_and(|n| n.attr.kind == FileType::Dir) {
            return Err(FsError::Posix(Errno::EISDIR));
        }
        g.dir(dir)?.children.remove(name);
        g.drop_link(ino);
        Ok(())
    }

    fn rmdir(&self, dir: Ino, name: &[u8]) -> FsResult<()> {
        mem_check(name)?;
        let mut g = lock(&self.inner);
        let ino = *g.dir(dir)?.children.get(name).ok_or(FsError::Posix(Errno::ENOENT))?;
        if !g.dir(ino)?.children.is_empty() {
            return Err(FsError::Posix(Errno::ENOTEMPTY));
        }
        g.dir(dir)?.children.remove(name);
        g.drop_link(ino);
        Ok(())
    }

    fn rename(&self, dir: Ino, name: &[u8], newdir: Ino, newname: &[u8], flags: RenameFlags) -> FsResult<()> {
        mem_check(name)?;
        mem_check(newname)?;
        let mut g = lock(&self.inner);
        g.dir(newdir)?;
        let ino = *g.dir(dir)?.children.get(name).ok_or(FsError::Posix(Errno::ENOENT))?;
        let target = g.dir(newdir)?.children.get(newname).copied();
        if flags.exchange {
            let Some(t) = target else { return enoent() };
            g.dir(dir)?.children.insert(name.to_vec(), t);
            g.dir(newdir)?.children.insert(newname.to_vec(), ino);
            return Ok(());
        }
        if target.is_some() && flags.noreplace {
            return Err(FsError::Posix(Errno::EEXIST));
        }
        g.dir(dir)?.children.remove(name);
        g.dir(newdir)?.children.insert(newname.to_vec(), ino);
        if let Some(t) = target.filter(|&t| t != ino) {
            g.drop_link(t);
        }
        Ok(())
    }

    fn readdir(&self, dir: Ino, cookie: u64, max: usize) -> FsResult<Vec<(DirEntry, u64)>> {
        let mut g = lock(&self.inner);
        let kids: Vec<(Vec<u8>, Ino)> = g.dir(dir)?.children.iter().map(|(k, &v)| (k.clone(), v)).collect();
        let start = usize::try_from(cookie).unwrap_or(usize::MAX);
        Ok(kids
            .into_iter()
            .enumerate()
            .skip(start)
            .take(max)
            .map(|(i, (name, ino))| {
                let kind = g.nodes.get(&ino).map_or(FileType::File, |n| n.attr.kind);
                (DirEntry { name, ino, kind }, i as u64 + 1)
            })
            .collect())
    }

    fn read(&self, ino: Ino, off: u64, buf: &mut [u8]) -> FsResult<usize> {
        let g = lock(&self.inner);
        let n = g.nodes.get(&ino).ok_or(FsError::Posix(Errno::ENOENT))?;
        if n.attr.kind == FileType::Dir {
            return Err(FsError::Posix(Errno::EISDIR));
        }
        let start = usize::try_from(off).unwrap_or(usize::MAX).min(n.data.len());
        let len = buf.len().min(n.data.len() - start);
        buf[..len].copy_from_slice(&n.data[start..start + len]);
        Ok(len)
    }

    fn write(&self, ino: Ino, at: WriteAt, data: &[u8]) -> FsResult<u64> {
        let mut g = lock(&self.inner);
        let n = g.nodes.get_mut(&ino).ok_or(FsError::Posix(Errno::ENOENT))?;
        if n.attr.kind == FileType::Dir {
            return Err(FsError::Posix(Errno::EISDIR));
        }
        let off = match at {
            WriteAt::Offset(o) => o,
            WriteAt::Append => n.data.len() as u64,
        };
        let end = off.checked_add(data.len() as u64).filter(|&e| e <= MEM_MAX_FILE);
        let Some(end) = end else { return Err(FsError::Posix(Errno::EFBIG)) };
        if n.data.len() < end as usize {
            n.data.resize(end as usize, 0);
        }
        n.data[off as usize..end as usize].copy_from_slice(data);
        n.attr.size = n.data.len() as u64;
        Ok(off)
    }

    fn fsync(&self, ino: Ino, _datasync: bool) -> FsResult<()> {
        self.getattr(ino).map(|_| ())
    }

    fn open(&self, ino: Ino) -> FsResult<()> {
        let mut g = lock(&self.inner);
        let n = g.nodes.get_mut(&ino).ok_or(FsError::Posix(Errno::ENOENT))?;
        n.opens += 1;
        self.open_total.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn release(&self, ino: Ino) -> FsResult<()> {
        let mut g = lock(&self.inner);
        let n = g.nodes.get_mut(&ino).ok_or(FsError::Posix(Errno::ENOENT))?;
        if n.opens == 0 {
            return Err(FsError::Posix(Errno::EINVAL));
        }
        n.opens -= 1;
        self.open_total.fetch_sub(1, Ordering::SeqCst);
        if n.opens == 0 && !n.linked {
            g.nodes.remove(&ino);
        }
        Ok(())
    }

    fn statfs(&self) -> FsResult<StatFs> {
        if let Some(e) = lock(&self.fail_next_statfs).take() {
            return Err(e);
        }
        let files = lock(&self.inner).nodes.len() as u64;
        Ok(StatFs { block_size: 4096, blocks: 1000, free: 900, files })
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "arrakis-rpc-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn server() -> (TempDir, Arc<MemFs>, Server, PathBuf) {
    let dir = TempDir::new("srv");
    let fs = MemFs::new();
    let sock = dir.0.join("vol.sock");
    let srv = serve_unix(&sock, fs.clone()).expect("serve_unix");
    (dir, fs, srv, sock)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn posix<T: std::fmt::Debug>(r: FsResult<T>) -> Errno {
    match r {
        Err(FsError::Posix(e)) => e,
        other => panic!("expected a POSIX error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Client against server

#[test]
fn every_op_round_trips() {
    let (_d, fs, _srv, sock) = server();
    let c = Client::connect_unix(&sock).unwrap();

    let d = c.mkdir(ROOT, b"dir", 0o750, 10, 20).unwrap();
    assert_eq!(c.lookup(ROOT, b"dir").unwrap(), d);
    let (f, created) = c.create(d, b"file", 0o640, 10, 20, true).unwrap();
    assert!(created);
    assert_eq!(c.create(d, b"file", 0o640, 10, 20, false).unwrap(), (f, false));
    assert_eq!(c.getattr(f).unwrap(), fs.getattr(f).unwrap());
    assert_eq!(c.getattr(d).unwrap().kind, FileType::Dir);

    assert_eq!(c.write(f, WriteAt::Offset(0), b"hello").unwrap(), 0);
    assert_eq!(c.write(f, WriteAt::Append, b" world").unwrap(), 5);
    let mut buf = [0u8; 64];
    let n = c.read(f, 0, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello world");
    assert_eq!(c.read(f, 6, &mut buf[..3]).unwrap(), 3);
    assert_eq!(&buf[..3], b"wor");
    assert_eq!(c.read(f, 100, &mut buf).unwrap(), 0);
    assert_eq!(c.write(f, WriteAt::Offset(0), b"").unwrap(), 0);

    let t = Time { sec: 1_700_000_000, nsec: 123 };
    let set =
        SetAttr { perm: Some(0o600), uid: Some(1), gid: None, size: Some(5), atime: Some(t), mtime: Some(t) };
    let a = c.setattr(f, set).unwrap();
    assert_eq!((a.perm, a.uid, a.gid, a.size, a.atime, a.mtime), (0o600, 1, 20, 5, t, t));
    assert_eq!(a, fs.getattr(f).unwrap());

    c.fsync(f, true).unwrap();
    c.fsync(f, false).unwrap();

    let (g, _) = c.create(d, b"g", 0o644, 0, 0, true).unwrap();
    let ents = c.readdir(d, 0, 100).unwrap();
    let names: Vec<&[u8]> = ents.iter().map(|(e, _)| &e.name[..]).collect();
    assert_eq!(names, vec![&b"file"[..], &b"g"[..]]);
    assert_eq!(ents[0].0.ino, f);
    assert_eq!(ents[0].0.kind, FileType::File);
    let rest = c.readdir(d, ents[0].1, 100).unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].0.ino, g);
    assert!(c.readdir(d, ents[1].1, 100).unwrap().is_empty());

    c.rename(d, b"g", ROOT, b"g2", RenameFlags::default()).unwrap();
    assert_eq!(c.lookup(ROOT, b"g2").unwrap(), g);
    let noreplace = RenameFlags { noreplace: true, exchange: false };
    assert_eq!(posix(c.rename(ROOT, b"g2", d, b"file", noreplace)), Errno::EEXIST);
    c.rename(ROOT, b"g2", d, b"file", RenameFlags { noreplace: false, exchange: true }).unwrap();
    assert_eq!(c.lookup(d, b"file").unwrap(), g);
    assert_eq!(c.lookup(ROOT, b"g2").unwrap(), f);

    c.open(f).unwrap();
    c.release(f).unwrap();
    assert_eq!(posix(c.release(f)), Errno::EINVAL);

    let s = c.statfs().unwrap();
    assert_eq!(s, fs.statfs().unwrap());

    c.unlink(ROOT, b"g2").unwrap();
    c.unlink(d, b"file").unwrap();
    c.rmdir(ROOT, b"dir").unwrap();
    assert!(c.readdir(ROOT, 0, 10).unwrap().is_empty());
}

#[test]
fn errors_map_faithfully() {
    let (_d, fs, _srv, sock) = server();
    let c = Client::connect_unix(&sock).unwrap();
    assert_eq!(posix(c.lookup(ROOT, b"nope")), Errno::ENOENT);
    let d = c.mkdir(ROOT, b"d", 0o755, 0, 0).unwrap();
    assert_eq!(posix(c.mkdir(ROOT, b"d", 0o755, 0, 0)), Errno::EEXIST);
    c.create(d, b"x", 0o644, 0, 0, true).unwrap();
    assert_eq!(posix(c.rmdir(ROOT, b"d")), Errno::ENOTEMPTY);
    assert_eq!(posix(c.unlink(ROOT, b"d")), Errno::EISDIR);
    assert_eq!(posix(c.lookup(c.lookup(d, b"x").unwrap(), b"y")), Errno::ENOTDIR);
    let mut b = [0u8; 4];
    assert_eq!(posix(c.read(d, 0, &mut b)), Errno::EISDIR);
    assert_eq!(posix(c.getattr(9999)), Errno::ENOENT);
    // Names are checked on both sides; the client's check answers first.
    assert_eq!(posix(c.lookup(ROOT, &[b'a'; 256])), Errno::ENAMETOOLONG);
    assert_eq!(posix(c.lookup(ROOT, b"a/b")), Errno::EINVAL);
    assert_eq!(posix(c.lookup(ROOT, b"")), Errno::EINVAL);
    assert_eq!(posix(c.create(ROOT, b"a\0", 0, 0, 0, true)), Errno::EINVAL);
    assert_eq!(posix(c.lookup(ROOT, b"..")), Errno::EINVAL);
    c.lookup(ROOT, &[b'a'; 255]).map(|_| ()).unwrap_or_else(|e| assert_eq!(e, FsError::Posix(Errno::ENOENT)));

    for e in [
        FsError::Corrupt { what: "inode table block 7: bad checksum".into() },
        FsError::Device { what: "pwrite: EIO (é)".into() },
        FsError::Remote { what: "the owner's owner went away".into() },
        FsError::Posix(Errno::ENOSPC),
        FsError::Posix(Errno(4000)),
    ] {
        *lock(&fs.fail_next_statfs) = Some(e.clone());
        assert_eq!(c.statfs(), Err(e));
    }
    // A long text is cut, on a character boundary.
    *lock(&fs.fail_next_statfs) = Some(FsError::Device { what: "é".repeat(3000) });
    match c.statfs() {
        Err(FsError::Device { what }) => assert_eq!(what, "é".repeat(MAX_MESSAGE / 2)),
        other => panic!("{other:?}"),
    }
    // The connection is still good after all of that.
    assert!(c.statfs().is_ok());
}

#[test]
fn large_reads_and_writes_are_split_and_appends_stay_atomic() {
    let (_d, fs, _srv, sock) = server();
    let c = Arc::new(Client::connect_unix(&sock).unwrap());
    let (f, _) = c.create(ROOT, b"big", 0o644, 0, 0, true).unwrap();
    let data: Vec<u8> = (0..(3 * MAX_DATA + 12345)).map(|i| (i % 251) as u8).collect();
    assert_eq!(c.write(f, WriteAt::Offset(7), &data).unwrap(), 7);
    let mut back = vec![0u8; data.len() + 100];
    assert_eq!(c.read(f, 7, &mut back).unwrap(), data.len());
    assert_eq!(&back[..data.len()], &data[..]);
    c.setattr(f, SetAttr { size: Some(0), ..SetAttr::default() }).unwrap();

    // Four threads append records of 2.5 MiB each: each record lands whole.
    let rec = MAX_DATA * 5 / 2;
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                for _ in 0..2 {
                    let off = c.write(f, WriteAt::Append, &vec![b'a' + t; rec]).unwrap();
                    assert_eq!(off % rec as u64, 0);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut all = vec![0u8; 8 * rec];
    assert_eq!(fs.read(f, 0, &mut all).unwrap(), 8 * rec);
    let mut counts = [0; 4];
    for r in all.chunks(rec) {
        assert!(r.iter().all(|&b| b == r[0]), "an append was interleaved with another");
        counts[usize::from(r[0] - b'a')] += 1;
    }
    assert_eq!(counts, [2, 2, 2, 2]);
}

#[test]
fn many_threads_share_one_client() {
    let (_d, fs, _srv, sock) = server();
    let c = Arc::new(Client::connect_unix(&sock).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                let name = format!("t{t}");
                let d = c.mkdir(ROOT, name.as_bytes(), 0o755, 0, 0).unwrap();
                for i in 0..50 {
                    let (f, _) = c.create(d, format!("f{i}").as_bytes(), 0o644, 0, 0, true).unwrap();
                    let body = format!("thread {t} file {i}");
                    c.write(f, WriteAt::Offset(0), body.as_bytes()).unwrap();
                    let mut b = [0u8; 64];
                    let n = c.read(f, 0, &mut b).unwrap();
                    assert_eq!(&b[..n], body.as_bytes());
                }
                assert_eq!(c.readdir(d, 0, 1000).unwrap().len(), 50);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(fs.readdir(ROOT, 0, 100).unwrap().len(), 8);
    // Several clients at once, too.
    let clients: Vec<_> = (0..4).map(|_| Client::connect_unix(&sock).unwrap()).collect();
    for c in &clients {
        assert_eq!(c.readdir(ROOT, 0, 100).unwrap().len(), 8);
    }
}

#[test]
fn a_server_that_never_answers_times_out() {
    let dir = TempDir::new("mute");
    // Accepts, and never sends a byte.
    let sock = dir.0.join("mute.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let held = std::thread::spawn(move || {
        let s = l.accept();
        std::thread::sleep(Duration::from_secs(2));
        drop(s);
    });
    let t = Instant::now();
    let e = Client::connect_unix_timeout(&sock, Duration::from_millis(300)).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2));
    let FsError::Remote { what } = &e else { panic!("{e:?}") };
    assert!(what.contains("mute.sock") && what.contains("hello") && what.contains("no answer"), "{what}");
    assert_eq!(Errno::from(e), Errno::EIO);
    held.join().unwrap();

    // Answers the hello, then never answers a request.
    let sock = dir.0.join("half.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let held = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut h = [0u8; HELLO_LEN];
        s.read_exact(&mut h).unwrap();
        s.write_all(&hello(VERSION, 0)).unwrap();
        std::thread::sleep(Duration::from_secs(2));
    });
    let c = Client::connect_unix_timeout(&sock, Duration::from_millis(300)).unwrap();
    let t = Instant::now();
    let e = c.getattr(ROOT).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2));
    let FsError::Remote { what } = &e else { panic!("{e:?}") };
    assert!(what.contains("half.sock") && what.contains("getattr") && what.contains("no answer"), "{what}");
    held.join().unwrap();
    // The server is gone now: the next request tries to reconnect, and says so.
    let FsError::Remote { what } = c.statfs().unwrap_err() else { panic!() };
    assert!(what.contains("connect"), "{what}");
}

#[test]
fn a_client_that_goes_away_releases_what_it_had_open() {
    let (_d, fs, srv, sock) = server();
    let c = Client::connect_unix(&sock).unwrap();
    let (f, _) = c.create(ROOT, b"tmp", 0o644, 0, 0, true).unwrap();
    c.open(f).unwrap();
    c.open(f).unwrap();
    c.unlink(ROOT, b"tmp").unwrap();
    // Still readable: open.
    assert_eq!(c.write(f, WriteAt::Append, b"x").unwrap(), 0);
    assert!(fs.exists(f));
    assert_eq!(fs.open_total.load(Ordering::SeqCst), 2);
    assert_eq!(srv.connections(), 1);
    drop(c);
    wait_until("the server to release the inode", || !fs.exists(f));
    assert_eq!(fs.open_total.load(Ordering::SeqCst), 0);
    wait_until("the connection to end", || srv.connections() == 0);

    // Another client cannot release inodes it did not open.
    let (g, _) = fs.create(ROOT, b"kept", 0o644, 0, 0, true).unwrap();
    fs.open(g).unwrap();
    let mut s = UnixStream::connect(&sock).unwrap();
    raw_hello(&mut s);
    let (kind, _) = raw_call(&mut s, 1, Op::Release as u8, &Req::Release { ino: g }.encode());
    assert_eq!(kind, KIND_ERR);
    assert_eq!(fs.open_total.load(Ordering::SeqCst), 1);
}

#[test]
fn shutdown_closes_connections_and_removes_the_socket() {
    let (_d, fs, srv, sock) = server();
    let c = Client::connect_unix(&sock).unwrap();
    let (f, _) = c.create(ROOT, b"o", 0o644, 0, 0, true).unwrap();
    c.open(f).unwrap();
    srv.shutdown();
    assert!(!sock.exists());
    assert_eq!(fs.open_total.load(Ordering::SeqCst), 0);
    assert!(matches!(c.getattr(f), Err(FsError::Remote { .. })));
    // A stale socket file is replaced by the next server.
    let l = UnixListener::bind(&sock).unwrap();
    drop(l);
    assert!(sock.exists());
    let srv = serve_unix(&sock, fs.clone()).unwrap();
    // And the client reconnects, re-opening what it holds open.
    assert_eq!(c.getattr(f).unwrap().ino, f);
    assert_eq!(fs.open_total.load(Ordering::SeqCst), 1);
    c.release(f).unwrap();
    assert_eq!(fs.open_total.load(Ordering::SeqCst), 0);
    // A second server on a live socket is refused.
    assert!(serve_unix(&sock, fs.clone()).is_err());
    drop(srv);
}

#[test]
fn tcp_works_too() {
    let fs = MemFs::new();
    let srv = serve_tcp("127.0.0.1:0", fs.clone()).unwrap();
    let c = Client::connect_tcp(srv.local_addr().unwrap()).unwrap();
    let (f, _) = c.create(ROOT, b"t", 0o644, 0, 0, true).unwrap();
    c.write(f, WriteAt::Offset(0), b"over tcp").unwrap();
    assert_eq!(fs.getattr(f).unwrap().size, 8);
    srv.shutdown();
}

#[test]
fn socketpair_and_version_negotiation() {
    let fs = MemFs::new();
    let (a, b) = UnixStream::pair().unwrap();
    let fs2: Arc<dyn FileSystem> = fs.clone();
    let t = std::thread::spawn(move || serve_stream(b, fs2));
    let c = Client::from_unix_stream(a, "pair", DEFAULT_TIMEOUT).unwrap();
    c.mkdir(ROOT, b"p", 0o700, 0, 0).unwrap();
    drop(c);
    assert_eq!(t.join().unwrap(), Ok(()));

    // A client speaking only versions 2..=3 gets version 0 and a closed connection.
    let mut out = Vec::new();
    let mut input = hello(2, 3).to_vec();
    input.extend_from_slice(&header(0, 1, Op::Statfs as u8, KIND_REQUEST));
    let r = serve_stream(Mem { input: Cursor::new(input), output: &mut out }, fs.clone());
    assert!(r.is_err());
    assert_eq!(out.len(), HELLO_LEN);
    assert_eq!(&out[..4], &MAGIC);
    assert_eq!(u16::from_le_bytes([out[4], out[5]]), 0);
    // Bad magic: no answer at all.
    let mut out = Vec::new();
    let r = serve_stream(Mem { input: Cursor::new(b"GET / HTTP/1.1\r\n".to_vec()), output: &mut out }, fs);
    assert!(r.is_err());
    assert!(out.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Raw frames and fuzzing

/// An in-memory stream: reads come from `input`, writes go to `output`.
struct Mem<'a> {
    input: Cursor<Vec<u8>>,
    output: &'a mut Vec<u8>,
}

impl Read for Mem<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Mem<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn raw_hello(s: &mut UnixStream) {
    s.write_all(&hello(VERSION, VERSION)).unwrap();
    let mut h = [0u8; HELLO_LEN];
    s.read_exact(&mut h).unwrap();
    assert_eq!(u16::from_le_bytes([h[4], h[5]]), VERSION);
}

fn raw_call(s: &mut UnixStream, seq: u64, op: u8, payload: &[u8]) -> (u8, Vec<u8>) {
    s.write_all(&header(payload.len(), seq, op, KIND_REQUEST)).unwrap();
    s.write_all(payload).unwrap();
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h).unwrap();
    let h = parse_header(&h).unwrap();
    assert_eq!((h.seq, h.op), (seq, op));
    let mut b = vec![0u8; h.len];
    s.read_exact(&mut b).unwrap();
    (h.kind, b)
}

/// Parses the server's output: the hello, then replies. Every reply must be well formed.
fn parse_replies(out: &[u8]) -> Vec<(u64, u8, u8)> {
    assert!(out.len() >= HELLO_LEN, "no hello");
    let mut d = &out[HELLO_LEN..];
    let mut v = Vec::new();
    while !d.is_empty() {
        let mut hb = [0u8; HEADER_LEN];
        hb.copy_from_slice(&d[..HEADER_LEN]);
        let h = parse_header(&hb).expect("server sent a bad header");
        assert!(h.kind == KIND_OK || h.kind == KIND_ERR);
        let body = &d[HEADER_LEN..HEADER_LEN + h.len];
        if h.kind == KIND_ERR {
            let op = Op::from_u8(h.op).unwrap_or(Op::Statfs);
            decode_error(body, "fuzz", op).expect("server sent a bad error reply");
        }
        v.push((h.seq, h.op, h.kind));
        d = &d[HEADER_LEN + h.len..];
    }
    v
}

#[test]
fn hostile_frames_get_error_replies_or_close_the_connection() {
    let fs = MemFs::new();
    let mut input = hello(VERSION, VERSION).to_vec();
    let frames: Vec<(u8, Vec<u8>)> = vec![
        (99, vec![]),                                                                        // unknown op
        (Op::Lookup as u8, vec![1, 0, 0, 0, 0, 0, 0, 0, 3, 0]), // name longer than the payload
        (Op::Lookup as u8, [1u64.to_le_bytes().as_slice(), &[3, 0], b"a/b"].concat()), // slash
        (Op::Lookup as u8, [1u64.to_le_bytes().as_slice(), &[0, 1], &[b'a'; 256]].concat()), // too long
        (Op::Getattr as u8, vec![1, 0, 0, 0, 0, 0, 0, 0, 9]),   // trailing byte
        (Op::Read as u8, Req::Read { ino: 1, off: 0, len: u32::MAX }.encode()), // read too large
        (Op::Readdir as u8, Req::Readdir { dir: 1, cookie: u64::MAX, max: u32::MAX }.encode()),
        (Op::Write as u8, [&[1u8, 0, 0, 0, 0, 0, 0, 0, 1][..], &[5; 8], &u32::MAX.to_le_bytes()].concat()),
        (Op::Release as u8, Req::Release { ino: 1 }.encode()), // never opened here
        (Op::Fsync as u8, vec![1, 0, 0, 0, 0, 0, 0, 0, 7]),    // bad boolean
        (Op::Setattr as u8, vec![0xff; 60]),
        (Op::Statfs as u8, vec![]), // a good one still works
    ];
    for (i, (op, p)) in frames.iter().enumerate() {
        input.extend_from_slice(&header(p.len(), i as u64, *op, KIND_REQUEST));
        input.extend_from_slice(p);
    }
    // Then a header claiming 4 GiB: the connection ends without allocating it.
    input.extend_from_slice(&header(0, 99, Op::Statfs as u8, KIND_REQUEST));
    let n = input.len();
    input[n - 16..n - 12].copy_from_slice(&u32::MAX.to_le_bytes());
    input.extend_from_slice(&header(0, 100, Op::Statfs as u8, KIND_REQUEST));
    let mut out = Vec::new();
    let r = serve_stream(Mem { input: Cursor::new(input), output: &mut out }, fs);
    assert!(matches!(r, Err(FsError::Remote { .. })), "{r:?}");
    let replies = parse_replies(&out);
    assert_eq!(replies.len(), frames.len());
    let kinds: Vec<u8> = replies.iter().map(|r| r.2).collect();
    let mut want = vec![KIND_ERR; frames.len()];
    want[6] = KIND_OK; // readdir from a far cookie: empty
    *want.last_mut().unwrap() = KIND_OK;
    assert_eq!(kinds, want);
    // The name errors are POSIX ones.
    let mut s = UnixStream::pair().unwrap();
    let fs2: Arc<dyn FileSystem> = MemFs::new();
    let t = std::thread::spawn(move || serve_stream(s.1, fs2));
    raw_hello(&mut s.0);
    let (k, body) = raw_call(
        &mut s.0,
        1,
        Op::Mkdir as u8,
        &[&[1u8, 0, 0, 0, 0, 0, 0, 0][..], &[0; 12], &[1, 0, 0]].concat(),
    );
    assert_eq!(k, KIND_ERR);
    assert_eq!(decode_error(&body, "x", Op::Mkdir).unwrap(), FsError::Posix(Errno::EINVAL));
    drop(s.0);
    assert_eq!(t.join().unwrap(), Ok(()));
}

fn arb_frame() -> impl Strategy<Value = (u8, Vec<u8>)> {
    let name =
        prop_oneof![prop::collection::vec(any::<u8>(), 0..300), "[a-c]{1,3}".prop_map(String::into_bytes),];
    let ino = prop_oneof![Just(1u64), 2u64..12, any::<u64>()];
    prop_oneof![
        // Anything at all.
        (0u8..20, prop::collection::vec(any::<u8>(), 0..200)),
        // Well-formed requests with hostile values.
        (ino.clone(), name.clone()).prop_map(|(dir, n)| {
            let mut e = Enc::default();
            e.u64(dir).u16(n.len() as u16);
            e.0.extend_from_slice(&n);
            (Op::Lookup as u8, e.0)
        }),
        (ino.clone(), name.clone(), any::<bool>()).prop_map(|(dir, n, dirp)| {
            let mut e = Enc::default();
            if dirp {
                e.u64(dir).u32(0o755).u32(0).u32(0).u16(n.len() as u16);
                e.0.extend_from_slice(&n);
                (Op::Mkdir as u8, e.0)
            } else {
                e.u64(dir).u32(0o644).u32(0).u32(0).u8(0).u16(n.len() as u16);
                e.0.extend_from_slice(&n);
                (Op::Create as u8, e.0)
            }
        }),
        (ino.clone(), any::<u64>(), any::<u32>()).prop_map(|(i, off, len)| {
            (
                Op::Read as u8,
                Req::Read { ino: i, off: off % (1 << 30), len: len % (2 * MAX_DATA as u32) }.encode(),
            )
        }),
        (ino.clone(), 0u64..(1 << 20), prop::collection::vec(any::<u8>(), 0..100), any::<bool>()).prop_map(
            |(i, off, d, app)| {
                let at = if app { WriteAt::Append } else { WriteAt::Offset(off) };
                (Op::Write as u8, Req::Write { ino: i, at, data: &d }.encode())
            }
        ),
        (ino.clone(), prop::collection::vec(any::<u8>(), 0..100))
            .prop_map(|(i, d)| (Op::WritePart as u8, Req::WritePart { ino: i, data: &d }.encode())),
        (ino.clone(), any::<u64>(), any::<u32>())
            .prop_map(|(d, c, m)| (Op::Readdir as u8, Req::Readdir { dir: d, cookie: c, max: m }.encode())),
        (ino.clone(), 0u8..4).prop_map(|(i, which)| {
            let r = match which {
                0 => Req::Open { ino: i },
                1 => Req::Release { ino: i },
                2 => Req::Getattr { ino: i },
                _ => Req::Fsync { ino: i, datasync: true },
            };
            (r.op() as u8, r.encode())
        }),
        (ino.clone(), any::<u8>(), 0u64..(1 << 22)).prop_map(|(i, mask, size)| {
            let set = SetAttr {
                perm: (mask & 1 != 0).then_some(0o600),
                size: (mask & 2 != 0).then_some(size),
                ..SetAttr::default()
            };
            (Op::Setattr as u8, Req::Setattr { ino: i, set }.encode())
        }),
        (ino.clone(), ino, "[a-c]{1,2}", "[a-c]{1,2}", 0u8..4).prop_map(|(a, b, n1, n2, f)| {
            let mut e = Enc::default();
            e.u64(a).name(n1.as_bytes()).u64(b).name(n2.as_bytes()).u8(f);
            (Op::Rename as u8, e.0)
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Arbitrary bytes, with or without a valid hello first: the server never panics and
    /// ends when the input does.
    #[test]
    fn fuzz_arbitrary_bytes(with_hello in any::<bool>(), bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let mut input = if with_hello { hello(VERSION, VERSION).to_vec() } else { Vec::new() };
        input.extend_from_slice(&bytes);
        let mut out = Vec::new();
        let _ = serve_stream(Mem { input: Cursor::new(input), output: &mut out }, MemFs::new());
        if with_hello {
            // Whatever it sent is well formed.
            parse_replies(&out);
        }
    }

    /// Well-framed requests with hostile contents: each gets exactly one well-formed reply,
    /// in order, and what the connection opened is released at its end.
    #[test]
    fn fuzz_hostile_requests(frames in prop::collection::vec(arb_frame(), 1..40)) {
        let fs = MemFs::new();
        // Something to find.
        let (f, _) = fs.create(ROOT, b"a", 0o644, 0, 0, true).unwrap();
        fs.write(f, WriteAt::Offset(0), b"data").unwrap();
        fs.mkdir(ROOT, b"b", 0o755, 0, 0).unwrap();
        let mut input = hello(VERSION, VERSION).to_vec();
        for (i, (op, p)) in frames.iter().enumerate() {
            input.extend_from_slice(&header(p.len(), i as u64, *op, KIND_REQUEST));
            input.extend_from_slice(p);
        }
        let mut out = Vec::new();
        let r = serve_stream(Mem { input: Cursor::new(input), output: &mut out }, fs.clone());
        prop_assert_eq!(r, Ok(()));
        let replies = parse_replies(&out);
        prop_assert_eq!(replies.len(), frames.len());
        for (i, (seq, op, _)) in replies.iter().enumerate() {
            prop_assert_eq!(*seq, i as u64);
            prop_assert_eq!(*op, frames[i].0);
        }
        prop_assert_eq!(fs.open_total.load(Ordering::SeqCst), 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Against the real file system

fn volume(mib: u64) -> Arc<crate::fs::volume::Volume> {
    let dev = Arc::new(crate::fs::dev::MemDev::new(mib << 20));
    Arc::new(crate::fs::volume::Volume::format(dev).expect("format"))
}

#[test]
fn a_volume_served_by_rpc() {
    let dir = TempDir::new("vol");
    let vol = volume(64);
    let sock = dir.0.join("vol.sock");
    let srv = serve_unix(&sock, vol.clone()).unwrap();
    let c = Client::connect_unix(&sock).unwrap();

    let d = c.mkdir(ROOT, b"redis", 0o755, 1000, 1000).unwrap();
    let (f, created) = c.create(d, b"appendonly.aof", 0o644, 1000, 1000, true).unwrap();
    assert!(created);
    let big: Vec<u8> = (0..(2 * MAX_DATA + 777)).map(|i| (i * 7 % 256) as u8).collect();
    assert_eq!(c.write(f, WriteAt::Append, &big).unwrap(), 0);
    assert_eq!(c.write(f, WriteAt::Append, b"*3\r\n$3\r\nSET\r\n").unwrap(), big.len() as u64);
    c.fsync(f, true).unwrap();
    let mut back = vec![0u8; big.len() + 100];
    let n = c.read(f, 0, &mut back).unwrap();
    assert_eq!(n, big.len() + 13);
    assert_eq!(&back[..big.len()], &big[..]);
    assert_eq!(c.getattr(f).unwrap(), vol.getattr(f).unwrap());
    assert_eq!(c.lookup(d, b"appendonly.aof").unwrap(), f);

    // rename over an existing file, as redis's BGREWRITEAOF does.
    let (t, _) = c.create(d, b"temp-rewriteaof-1.aof", 0o644, 0, 0, true).unwrap();
    c.write(t, WriteAt::Offset(0), b"rewritten").unwrap();
    c.fsync(t, false).unwrap();
    c.open(f).unwrap();
    c.rename(d, b"temp-rewriteaof-1.aof", d, b"appendonly.aof", RenameFlags::default()).unwrap();
    assert_eq!(c.lookup(d, b"appendonly.aof").unwrap(), t);
    // The replaced file lives while open, and goes when this client goes away.
    assert!(vol.getattr(f).is_ok());
    let names: Vec<Vec<u8>> = c.readdir(d, 0, 100).unwrap().into_iter().map(|(e, _)| e.name).collect();
    assert_eq!(names, vec![b"appendonly.aof".to_vec()]);

    assert_eq!(posix(c.rmdir(ROOT, b"redis")), Errno::ENOTEMPTY);
    assert_eq!(posix(c.mkdir(ROOT, b"redis", 0o755, 0, 0)), Errno::EEXIST);
    assert_eq!(posix(c.lookup(ROOT, b"..")), Errno::EINVAL);
    let s = c.statfs().unwrap();
    assert_eq!(s, vol.statfs().unwrap());
    assert!(s.block_size > 0 && s.free < s.blocks);

    drop(c);
    wait_until("the replaced file to be freed", || vol.getattr(f).is_err());
    assert_eq!(vol.getattr(f), Err(FsError::Posix(Errno::ENOENT)));
    srv.shutdown();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// Hostile requests against the real file system: one well-formed reply each.
    #[test]
    fn fuzz_hostile_requests_on_a_volume(frames in prop::collection::vec(arb_frame(), 1..30)) {
        let vol = volume(4);
        let (f, _) = vol.create(ROOT, b"a", 0o644, 0, 0, true).unwrap();
        vol.write(f, WriteAt::Offset(0), b"data").unwrap();
        vol.mkdir(ROOT, b"b", 0o755, 0, 0).unwrap();
        let mut input = hello(VERSION, VERSION).to_vec();
        for (i, (op, p)) in frames.iter().enumerate() {
            input.extend_from_slice(&header(p.len(), i as u64, *op, KIND_REQUEST));
            input.extend_from_slice(p);
        }
        let mut out = Vec::new();
        let r = serve_stream(Mem { input: Cursor::new(input), output: &mut out }, vol.clone());
        prop_assert_eq!(r, Ok(()));
        prop_assert_eq!(parse_replies(&out).len(), frames.len());
    }
}

#[test]
fn a_client_whose_server_exits_finds_the_new_one() {
    let (dir, fs, a, sock_a) = server();
    let sock_b = dir.0.join("new-owner.sock");
    let asked = Arc::new(AtomicU64::new(0));
    let (b_path, n) = (sock_b.clone(), asked.clone());
    let c = Client::connect_unix(&sock_a).unwrap().rediscover(Box::new(move || {
        n.fetch_add(1, Ordering::SeqCst);
        Ok(b_path.clone())
    }));
    let (f, _) = c.create(ROOT, b"held", 0o644, 0, 0, true).unwrap();
    c.open(f).unwrap();
    assert_eq!(fs.open_total.load(Ordering::SeqCst), 1);
    // The owner exits (its server stops, releasing what the connection held open); the
    // same volume is served elsewhere.
    a.shutdown();
    assert_eq!(fs.open_total.load(Ordering::SeqCst), 0);
    let b = serve_unix(&sock_b, fs.clone()).unwrap();
    // The next call neither fails nor reaches the old socket: the client asks where the
    // volume went, reconnects there and re-opens what it holds open.
    assert_eq!(c.getattr(f).unwrap().ino, f);
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert_eq!(fs.open_total.load(Ordering::SeqCst), 1);
    c.write(f, WriteAt::Offset(0), b"after").unwrap();
    assert_eq!(fs.getattr(f).unwrap().size, 5);
    c.release(f).unwrap();
    assert_eq!(fs.open_total.load(Ordering::SeqCst), 0);
    b.shutdown();
}
