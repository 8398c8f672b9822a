//! Crash consistency (issue 5, acceptance point 3): a scripted workload runs on a `CutDev`
//! that cuts the write stream after every possible block write; after each cut the image must
//! pass fsck and hold exactly the state after some operation at or beyond the last fsync that
//! returned before the cut (in fact: the last operation that completed before the cut, or the
//! one cut in the middle, since a `write` reaches the device before it returns).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrakis_core::fs::dev::{CutDev, MemDev};
use arrakis_core::fs::volume::{FormatOptions, Volume};
use arrakis_core::fs::{fsck, FileSystem, FileType, Ino, RenameFlags, SetAttr, WriteAt, ROOT};

/// path -> Some(bytes) for a file, None for a directory.
type Tree = BTreeMap<String, Option<Vec<u8>>>;

struct Run<'a> {
    v: Volume,
    dev: &'a CutDev,
    model: Tree,
    /// Model after each completed operation (index 0: before the first).
    snaps: Vec<Tree>,
    /// Operations completed before the cut.
    done_before_cut: usize,
    /// Index of the last snapshot made durable by an fsync that returned before the cut.
    durable: usize,
}

impl Run<'_> {
    fn step(&mut self) {
        self.snaps.push(self.model.clone());
        if !self.dev.is_cut() {
            self.done_before_cut = self.snaps.len() - 1;
        }
    }
    fn fsync(&mut self, ino: Ino) {
        self.v.fsync(ino, true).unwrap();
        if !self.dev.is_cut() {
            self.durable = self.snaps.len() - 1;
        }
    }
    fn ino(&self, path: &str) -> Ino {
        self.v.lookup_path(path.as_bytes()).unwrap()
    }
    fn create(&mut self, dir: &str, name: &str) -> Ino {
        let d = self.ino(dir);
        let (f, _) = self.v.create(d, name.as_bytes(), 0o644, 0, 0, true).unwrap();
        self.model.insert(join(dir, name), Some(Vec::new()));
        self.step();
        f
    }
    fn mkdir(&mut self, dir: &str, name: &str) {
        let d = self.ino(dir);
        self.v.mkdir(d, name.as_bytes(), 0o755, 0, 0).unwrap();
        self.model.insert(join(dir, name), None);
        self.step();
    }
    fn write(&mut self, path: &str, off: Option<u64>, data: &[u8]) {
        let f = self.ino(path);
        let at = off.map_or(WriteAt::Append, WriteAt::Offset);
        let pos = self.v.write(f, at, data).unwrap() as usize;
        let cur = self.model.get_mut(path).unwrap().as_mut().unwrap();
        if cur.len() < pos + data.len() {
            cur.resize(pos + data.len(), 0);
        }
        cur[pos..pos + data.len()].copy_from_slice(data);
        self.step();
    }
    fn truncate(&mut self, path: &str, size: u64) {
        let f = self.ino(path);
        self.v.setattr(f, SetAttr { size: Some(size), ..Default::default() }).unwrap();
        self.model.get_mut(path).unwrap().as_mut().unwrap().resize(size as usize, 0);
        self.step();
    }
    fn rename(&mut self, from: &str, to: &str) {
        let (fd, fname) = split(from);
        let (td, tname) = split(to);
        let (a, b) = (self.ino(fd), self.ino(td));
        self.v.rename(a, fname.as_bytes(), b, tname.as_bytes(), RenameFlags::default()).unwrap();
        let moved: Vec<(String, Option<Vec<u8>>)> = self
            .model
            .iter()
            .filter(|(k, _)| *k == from || k.starts_with(&format!("{from}/")))
            .map(|(k, x)| (k.clone(), x.clone()))
            .collect();
        self.model.remove(to);
        for (k, x) in moved {
            self.model.remove(&k);
            self.model.insert(format!("{to}{}", &k[from.len()..]), x);
        }
        self.step();
    }
    fn unlink(&mut self, path: &str) {
        let (d, n) = split(path);
        let d = self.ino(d);
        self.v.unlink(d, n.as_bytes()).unwrap();
        self.model.remove(path);
        self.step();
    }
    fn rmdir(&mut self, path: &str) {
        let (d, n) = split(path);
        let d = self.ino(d);
        self.v.rmdir(d, n.as_bytes()).unwrap();
        self.model.remove(path);
        self.step();
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn split(path: &str) -> (&str, &str) {
    let i = path.rfind('/').unwrap();
    (if i == 0 { "/" } else { &path[..i] }, &path[i + 1..])
}

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8).collect()
}

/// The scripted workload. Returns the run's snapshots and indices.
fn workload(dev: &Arc<CutDev>) -> (Vec<Tree>, usize, usize) {
    let v = Volume::open(dev.clone()).unwrap();
    let mut r = Run { v, dev, model: Tree::new(), snaps: Vec::new(), done_before_cut: 0, durable: 0 };
    r.model.insert("/".into(), None);
    r.step();
    r.mkdir("/", "data");
    let aof = r.create("/data", "appendonly.aof");
    r.fsync(aof);
    for i in 0..24u32 {
        r.write(
            "/data/appendonly.aof",
            None,
            format!("*3\r\n$3\r\nSET\r\n$5\r\nkey{i:02}\r\n$7\r\nval{i:04}\r\n").as_bytes(),
        );
        if i % 3 != 2 {
            r.fsync(aof);
        }
    }
    let tmp = r.create("/data", "temp-1.rdb");
    r.write("/data/temp-1.rdb", Some(0), &pattern(1, 70_000));
    r.write("/data/temp-1.rdb", Some(5000), &pattern(2, 300));
    r.fsync(tmp);
    r.create("/data", "dump.rdb");
    r.write("/data/dump.rdb", None, b"old dump");
    r.rename("/data/temp-1.rdb", "/data/dump.rdb");
    let d = r.ino("/data");
    r.fsync(d);
    r.mkdir("/", "logs");
    r.mkdir("/logs", "old");
    r.create("/logs/old", "a.log");
    r.write("/logs/old/a.log", None, &pattern(3, 9000));
    r.truncate("/logs/old/a.log", 5000);
    r.truncate("/logs/old/a.log", 12000);
    r.write("/data/dump.rdb", Some(4096), &pattern(4, 8192));
    r.fsync(aof);
    // Unlinked while open: lives on, freed at release (or at the next mount).
    let victim = r.create("/logs", "victim");
    r.write("/logs/victim", None, &pattern(5, 20_000));
    r.v.open(victim).unwrap();
    r.unlink("/logs/victim");
    r.v.write(victim, WriteAt::Append, b"still here").unwrap();
    r.step();
    r.v.release(victim).unwrap();
    r.unlink("/logs/old/a.log");
    r.rmdir("/logs/old");
    r.rename("/logs", "/data/logs");
    r.fsync(aof);
    // A write big enough to force checkpoints and journal wraps.
    let big = r.create("/data", "big");
    r.write("/data/big", Some(1000), &pattern(6, 200_000));
    for i in 0..60u32 {
        r.write("/data/appendonly.aof", None, format!("INCR counter {i}\n").as_bytes());
        r.fsync(aof);
    }
    r.truncate("/data/big", 10);
    r.fsync(big);
    r.create("/", "last");
    // The journal (32 blocks) wrapped: checkpoints at mount, when it filled, and at unmount.
    assert!(r.v.checkpoints() >= 3, "only {} checkpoints", r.v.checkpoints());
    (std::mem::take(&mut r.snaps), r.done_before_cut, r.durable)
}

fn tree_of(v: &Volume) -> Tree {
    let mut t = Tree::new();
    t.insert("/".into(), None);
    let mut stack = vec![("/".to_string(), ROOT)];
    while let Some((path, dir)) = stack.pop() {
        let mut cookie = 0;
        loop {
            let page = v.readdir(dir, cookie, 64).unwrap();
            if page.is_empty() {
                break;
            }
            for (e, c) in page {
                cookie = c;
                let p = join(&path, std::str::from_utf8(&e.name).unwrap());
                match e.kind {
                    FileType::Dir => {
                        t.insert(p.clone(), None);
                        stack.push((p, e.ino));
                    }
                    FileType::File => {
                        let size = v.getattr(e.ino).unwrap().size as usize;
                        let mut b = vec![0u8; size];
                        assert_eq!(v.read(e.ino, 0, &mut b).unwrap(), size);
                        t.insert(p, Some(b));
                    }
                }
            }
        }
    }
    t
}

fn base_image() -> MemDev {
    let base = MemDev::new(2 << 20);
    let v = Volume::format_with(Arc::new(base.clone()), FormatOptions { journal_blocks: Some(32) }).unwrap();
    drop(v);
    base
}

/// One run with a cut after `cut` block writes (None: no cut). Returns (writes, snaps,
/// done_before_cut, durable, surviving image).
fn one_run(base: &MemDev, cut: Option<u64>) -> (u64, Vec<Tree>, usize, usize, MemDev) {
    let dev = Arc::new(CutDev::new(base.snapshot()));
    if let Some(c) = cut {
        dev.cut_after(c);
    }
    // Mounting is part of the workload (it checkpoints): cuts there are covered too.
    let (snaps, done, durable) = workload(&dev);
    let img = dev.image();
    let w = dev.writes();
    (w, snaps, done, durable, img)
}

#[test]
fn every_cut_leaves_a_consistent_image_with_every_fsynced_write() {
    let base = base_image();
    let (w, snaps, done, _, img) = one_run(&base, None);
    assert_eq!(done, snaps.len() - 1);
    // Without a cut (like kill -9 after the last op): everything is there.
    let v = Volume::open(Arc::new(img)).unwrap();
    assert_eq!(&tree_of(&v), snaps.last().unwrap());
    drop(v);
    println!("crash test: workload of {} operations, W = {w} block writes", snaps.len() - 1);
    let mut checked = 0u64;
    for cut in 0..=w {
        let (_, snaps, done, durable, img) = one_run(&base, Some(cut));
        let report = fsck::check(&img).unwrap();
        assert!(report.ok, "cut {cut}: fsck: {report}");
        let v = Volume::open(Arc::new(img.snapshot())).unwrap_or_else(|e| panic!("cut {cut}: mount: {e}"));
        let got = tree_of(&v);
        drop(v);
        // Everything completed before the cut is there; the op cut in the middle may be.
        let ok = got == snaps[done] || snaps.get(done + 1).is_some_and(|s| *s == got);
        assert!(durable <= done, "cut {cut}");
        assert!(
            ok,
            "cut {cut}: recovered tree is not the state after op {done} (or {}): {:?}",
            done + 1,
            got.keys().collect::<Vec<_>>()
        );
        // The recovered image mounts again (recovery is idempotent) and passes fsck.
        let again = fsck::check(&img).unwrap();
        assert!(again.ok, "cut {cut}: second fsck: {again}");
        checked += 1;
    }
    println!("crash test: {checked} cuts checked (0..={w})");
    assert_eq!(checked, w + 1);
}
