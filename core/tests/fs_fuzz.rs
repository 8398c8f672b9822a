//! Fuzzing of the on-disk format reader (issue 5, acceptance point 4) and a model-based test
//! of random operation sequences with remounts.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrakis_core::fs::dev::{BlockDev, MemDev, BLOCK};
use arrakis_core::fs::volume::{FormatOptions, Volume};
use arrakis_core::fs::{fsck, FileSystem, FileType, FsError, RenameFlags, SetAttr, WriteAt, ROOT};
use proptest::prelude::*;

const DEV_BYTES: u64 = 1 << 20;

/// A small valid image with files, directories, a journal with records and data blocks.
fn valid_image() -> MemDev {
    let d = MemDev::new(DEV_BYTES);
    let v = Volume::format_with(Arc::new(d.clone()), FormatOptions { journal_blocks: Some(32) }).unwrap();
    let dir = v.mkdir(ROOT, b"dir", 0o755, 0, 0).unwrap();
    let (f, _) = v.create(dir, b"file", 0o644, 0, 0, true).unwrap();
    v.write(f, WriteAt::Offset(0), &vec![5u8; 40_000]).unwrap();
    v.sync_all().unwrap();
    let (g, _) = v.create(ROOT, b"aof", 0o644, 0, 0, true).unwrap();
    for i in 0..5u8 {
        v.write(g, WriteAt::Append, &[i; 100]).unwrap();
    }
    v.rename(ROOT, b"aof", dir, b"aof2", RenameFlags::default()).unwrap();
    v.fsync(g, true).unwrap();
    // Leave the journal non-empty: no drop-time checkpoint on this device.
    let img = d.snapshot();
    drop(v);
    img
}

fn no_panic_on(dev: MemDev) {
    let _ = fsck::check(&dev);
    let _ = fsck::used_blocks(&dev);
    if let Ok(v) = Volume::open(Arc::new(dev.snapshot())) {
        // Whatever mounted must be usable.
        let _ = v.readdir(ROOT, 0, 100);
        let _ = v.create(ROOT, b"new", 0o644, 0, 0, true);
    }
    let _ = fsck::repair(&dev);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Arbitrary bytes as an image: Ok or an error, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(blocks in proptest::collection::vec((0u64..64, proptest::collection::vec(any::<u8>(), 0..BLOCK)), 0..8)) {
        let d = MemDev::new(64 * BLOCK as u64);
        for (b, bytes) in blocks {
            let mut blk = vec![0u8; BLOCK];
            blk[..bytes.len()].copy_from_slice(&bytes);
            d.write(b, &blk).unwrap();
        }
        no_panic_on(d);
    }

    /// A valid image with random byte corruptions: never a panic.
    #[test]
    fn corrupted_valid_image_never_panics(pokes in proptest::collection::vec((0u64..DEV_BYTES / 8, any::<u8>()), 1..16)) {
        let d = valid_image();
        // Bias towards the metadata at the front of the device.
        for (at, val) in pokes {
            d.poke(at, val);
        }
        no_panic_on(d);
    }

    /// Whole blocks replaced by random or copied blocks: never a panic.
    #[test]
    fn scrambled_blocks_never_panic(ops in proptest::collection::vec((0u64..64, 0u64..64, any::<bool>()), 1..6)) {
        let d = valid_image();
        for (dst, src, zero) in ops {
            let mut b = vec![0u8; BLOCK];
            if !zero {
                d.read(src, &mut b).unwrap();
            }
            d.write(dst, &b).unwrap();
        }
        no_panic_on(d);
    }
}

#[test]
fn checksum_failures_are_refused_as_corrupt() {
    // Both superblocks damaged.
    let d = valid_image();
    d.poke(20, 0x55);
    d.poke(BLOCK as u64 + 20, 0x55);
    assert!(matches!(Volume::open(Arc::new(d.clone())), Err(FsError::Corrupt { .. })));
    let r = fsck::check(&d).unwrap();
    assert!(!r.ok);
    assert!(r.problems[0].contains("superblock"), "{r}");
    // The live checkpoint damaged: no silent fallback to an older one.
    let d = valid_image();
    let v = Volume::open_readonly(Arc::new(d.snapshot())).unwrap();
    drop(v);
    let mut sb0 = vec![0u8; BLOCK];
    let mut sb1 = vec![0u8; BLOCK];
    d.read(0, &mut sb0).unwrap();
    d.read(1, &mut sb1).unwrap();
    let gen = |b: &[u8]| u64::from_le_bytes(b[16..24].try_into().unwrap());
    let cp_first = |b: &[u8]| u64::from_le_bytes(b[64..72].try_into().unwrap());
    let live = if gen(&sb0) > gen(&sb1) { &sb0 } else { &sb1 };
    d.poke(cp_first(live) * BLOCK as u64 + 100, 0xEE);
    match Volume::open(Arc::new(d.clone())) {
        Err(FsError::Corrupt { what }) => assert!(what.contains("checkpoint"), "{what}"),
        other => panic!("expected Corrupt, got {:?}", other.err()),
    }
    let r = fsck::check(&d).unwrap();
    assert!(!r.ok);
    println!("{r}");
}

#[test]
fn damaged_journal_middle_is_refused_and_repaired() {
    let d = valid_image();
    // The journal holds records at blocks 2..; damage the first one's payload.
    d.poke(2 * BLOCK as u64 + 50, 0xFF);
    assert!(matches!(Volume::open(Arc::new(d.clone())), Err(FsError::Corrupt { .. })));
    assert!(!fsck::check(&d).unwrap().ok);
    let r = fsck::repair(&d).unwrap();
    assert!(r.ok, "{r}");
    assert!(!r.fixed.is_empty());
    println!("{r}");
    assert!(fsck::check(&d).unwrap().ok);
    let v = Volume::open(Arc::new(d)).unwrap();
    assert!(v.lookup_path(b"dir/file").is_ok());
}

#[test]
fn fsck_reports_counts() {
    let d = valid_image();
    let r = fsck::check(&d).unwrap();
    assert!(r.ok, "{r}");
    assert_eq!((r.files, r.dirs), (2, 2));
    assert!(r.replayed >= 7, "{r}");
    assert!(r.used_blocks > 34 && r.used_blocks <= d.blocks());
    assert!(format!("{r}").contains("clean"));
}

// ---- Model-based: random operations with remounts against an in-memory model.

#[derive(Clone, Debug)]
enum MOp {
    Create(u8),
    Mkdir(u8),
    /// name, offset (None: append), length, seed
    Write(u8, Option<u16>, u16, u8),
    Truncate(u8, u16),
    Unlink(u8),
    Rmdir(u8),
    Rename(u8, u8),
    Sync,
    Remount,
    Crash,
}

fn mop() -> impl Strategy<Value = MOp> {
    let n = 0u8..5;
    prop_oneof![
        3 => n.clone().prop_map(MOp::Create),
        1 => n.clone().prop_map(MOp::Mkdir),
        4 => (n.clone(), any::<u16>(), any::<u16>(), any::<u8>()).prop_map(|(a, o, l, s)| MOp::Write(a, Some(o), l, s)),
        3 => (n.clone(), 0u16..3000, any::<u8>()).prop_map(|(a, l, s)| MOp::Write(a, None, l, s)),
        2 => (n.clone(), any::<u16>()).prop_map(|(a, l)| MOp::Truncate(a, l)),
        2 => n.clone().prop_map(MOp::Unlink),
        1 => n.clone().prop_map(MOp::Rmdir),
        2 => (n.clone(), n.clone()).prop_map(|(a, b)| MOp::Rename(a, b)),
        1 => Just(MOp::Sync),
        1 => Just(MOp::Remount),
        1 => Just(MOp::Crash),
    ]
}

type Model = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

fn name(i: u8) -> Vec<u8> {
    vec![b'a' + i]
}

fn tree(v: &Volume) -> Model {
    let mut m = Model::new();
    for (e, _) in v.readdir(ROOT, 0, 1000).unwrap() {
        let x = match e.kind {
            FileType::Dir => None,
            FileType::File => {
                let size = v.getattr(e.ino).unwrap().size as usize;
                let mut b = vec![0u8; size];
                assert_eq!(v.read(e.ino, 0, &mut b).unwrap(), size);
                Some(b)
            }
        };
        m.insert(e.name, x);
    }
    m
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn random_ops_match_the_model(ops in proptest::collection::vec(mop(), 1..60)) {
        let mut dev = MemDev::new(4 << 20);
        let mut v = Volume::format_with(Arc::new(dev.clone()), FormatOptions { journal_blocks: Some(32) }).unwrap();
        let mut m = Model::new();
        for op in ops {
            match op {
                MOp::Create(a) => {
                    let r = v.create(ROOT, &name(a), 0o644, 0, 0, true);
                    prop_assert_eq!(r.is_ok(), !m.contains_key(&name(a)));
                    if r.is_ok() { m.insert(name(a), Some(Vec::new())); }
                }
                MOp::Mkdir(a) => {
                    let r = v.mkdir(ROOT, &name(a), 0o755, 0, 0);
                    prop_assert_eq!(r.is_ok(), !m.contains_key(&name(a)));
                    if r.is_ok() { m.insert(name(a), None); }
                }
                MOp::Write(a, off, len, seed) if matches!(m.get(&name(a)), Some(Some(_))) => {
                    let ino = v.lookup(ROOT, &name(a)).unwrap();
                    let data: Vec<u8> = (0..len as u32 * 3).map(|i| (i as u8).wrapping_mul(seed) ^ seed).collect();
                    let at = off.map_or(WriteAt::Append, |o| WriteAt::Offset(u64::from(o) * 3));
                    let pos = v.write(ino, at, &data).unwrap() as usize;
                    let f = m.get_mut(&name(a)).unwrap().as_mut().unwrap();
                    if f.len() < pos + data.len() { f.resize(pos + data.len(), 0); }
                    f[pos..pos + data.len()].copy_from_slice(&data);
                }
                MOp::Truncate(a, len) if matches!(m.get(&name(a)), Some(Some(_))) => {
                    let ino = v.lookup(ROOT, &name(a)).unwrap();
                    v.setattr(ino, SetAttr { size: Some(u64::from(len) * 5), ..Default::default() }).unwrap();
                    m.get_mut(&name(a)).unwrap().as_mut().unwrap().resize(len as usize * 5, 0);
                }
                MOp::Write(..) | MOp::Truncate(..) => {}
                MOp::Unlink(a) => {
                    let r = v.unlink(ROOT, &name(a));
                    prop_assert_eq!(r.is_ok(), matches!(m.get(&name(a)), Some(Some(_))));
                    if r.is_ok() { m.remove(&name(a)); }
                }
                MOp::Rmdir(a) => {
                    let r = v.rmdir(ROOT, &name(a));
                    prop_assert_eq!(r.is_ok(), matches!(m.get(&name(a)), Some(None)));
                    if r.is_ok() { m.remove(&name(a)); }
                }
                MOp::Rename(a, b) => {
                    let r = v.rename(ROOT, &name(a), ROOT, &name(b), RenameFlags::default());
                    let expect = match (m.get(&name(a)), m.get(&name(b))) {
                        (None, _) => false,
                        (Some(_), None) => true,
                        (Some(x), Some(y)) => x.is_some() == y.is_some(),
                    };
                    prop_assert_eq!(r.is_ok(), expect, "rename {} -> {}", a, b);
                    if r.is_ok() && a != b {
                        let x = m.remove(&name(a)).unwrap();
                        m.insert(name(b), x);
                    }
                }
                MOp::Sync => v.sync_all().unwrap(),
                MOp::Remount => {
                    drop(v);
                    v = Volume::open(Arc::new(dev.clone())).unwrap();
                }
                MOp::Crash => {
                    // kill -9: the device as it is now, no unmount.
                    dev = dev.snapshot();
                    let old = std::mem::replace(&mut v, Volume::open(Arc::new(dev.clone())).unwrap());
                    std::mem::forget(old);
                }
            }
        }
        prop_assert_eq!(&tree(&v), &m);
        drop(v);
        let r = fsck::check(&dev).unwrap();
        prop_assert!(r.ok, "{}", r);
        let v = Volume::open(Arc::new(dev)).unwrap();
        prop_assert_eq!(&tree(&v), &m);
    }
}
