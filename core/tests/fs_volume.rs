//! Unit tests of every `FileSystem` operation on a `Volume`, error cases, and remount
//! persistence.

use std::sync::Arc;

use arrakis_core::fs::dev::{BlockDev, MemDev, BLOCK};
use arrakis_core::fs::volume::{FormatOptions, Volume};
use arrakis_core::fs::{fsck, FileSystem, FileType, FsError, RenameFlags, SetAttr, Time, WriteAt, ROOT};
use arrakis_core::Errno;

fn vol(mb: u64) -> (MemDev, Volume) {
    let d = MemDev::new(mb << 20);
    let v = Volume::format(Arc::new(d.clone())).unwrap();
    (d, v)
}

fn err<T: std::fmt::Debug>(r: Result<T, FsError>) -> Errno {
    match r {
        Err(FsError::Posix(e)) => e,
        other => panic!("expected a POSIX error, got {other:?}"),
    }
}

fn read_all(v: &Volume, ino: u64) -> Vec<u8> {
    let size = v.getattr(ino).unwrap().size;
    let mut b = vec![0u8; size as usize];
    assert_eq!(v.read(ino, 0, &mut b).unwrap(), size as usize);
    b
}

fn names(v: &Volume, dir: u64) -> Vec<String> {
    let mut out = Vec::new();
    let mut cookie = 0;
    loop {
        let page = v.readdir(dir, cookie, 2).unwrap();
        if page.is_empty() {
            break;
        }
        for (e, c) in page {
            out.push(String::from_utf8(e.name).unwrap());
            cookie = c;
        }
    }
    out.sort();
    out
}

#[test]
fn create_lookup_getattr() {
    let (_, v) = vol(4);
    let (f, created) = v.create(ROOT, b"a", 0o644, 5, 6, true).unwrap();
    assert!(created);
    assert_eq!(v.lookup(ROOT, b"a").unwrap(), f);
    let a = v.getattr(f).unwrap();
    assert_eq!((a.kind, a.perm, a.uid, a.gid, a.nlink, a.size), (FileType::File, 0o644, 5, 6, 1, 0));
    assert_eq!(v.create(ROOT, b"a", 0o600, 0, 0, false).unwrap(), (f, false));
    assert_eq!(err(v.create(ROOT, b"a", 0o600, 0, 0, true)), Errno::EEXIST);
    assert_eq!(err(v.lookup(ROOT, b"zz")), Errno::ENOENT);
    assert_eq!(err(v.lookup(f, b"x")), Errno::ENOTDIR);
    assert_eq!(err(v.create(f, b"x", 0o644, 0, 0, true)), Errno::ENOTDIR);
    assert_eq!(err(v.getattr(999)), Errno::ENOENT);
    for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
        assert_eq!(err(v.create(ROOT, bad, 0o644, 0, 0, true)), Errno::EINVAL);
        assert_eq!(err(v.mkdir(ROOT, bad, 0o755, 0, 0)), Errno::EINVAL);
    }
    assert_eq!(err(v.create(ROOT, &[b'x'; 256], 0o644, 0, 0, true)), Errno::ENAMETOOLONG);
    v.create(ROOT, &[b'x'; 255], 0o644, 0, 0, true).unwrap();
    let r = v.getattr(ROOT).unwrap();
    assert_eq!((r.kind, r.nlink), (FileType::Dir, 2));
}

#[test]
fn mkdir_rmdir_nlink() {
    let (_, v) = vol(4);
    let d = v.mkdir(ROOT, b"d", 0o755, 0, 0).unwrap();
    assert_eq!(v.getattr(ROOT).unwrap().nlink, 3);
    assert_eq!(v.getattr(d).unwrap().nlink, 2);
    let e = v.mkdir(d, b"e", 0o755, 0, 0).unwrap();
    assert_eq!(v.getattr(d).unwrap().nlink, 3);
    assert_eq!(err(v.mkdir(ROOT, b"d", 0o755, 0, 0)), Errno::EEXIST);
    assert_eq!(err(v.rmdir(ROOT, b"d")), Errno::ENOTEMPTY);
    let (f, _) = v.create(d, b"f", 0o644, 0, 0, true).unwrap();
    assert_eq!(err(v.rmdir(d, b"f")), Errno::ENOTDIR);
    assert_eq!(err(v.unlink(d, b"e")), Errno::EISDIR);
    assert_eq!(err(v.read(d, 0, &mut [0u8; 4])), Errno::EISDIR);
    assert_eq!(err(v.write(d, WriteAt::Offset(0), b"x")), Errno::EISDIR);
    assert_eq!(err(v.readdir(f, 0, 10)), Errno::ENOTDIR);
    assert_eq!(names(&v, d), vec!["e", "f"]);
    v.rmdir(d, b"e").unwrap();
    assert_eq!(err(v.getattr(e)), Errno::ENOENT);
    v.unlink(d, b"f").unwrap();
    v.rmdir(ROOT, b"d").unwrap();
    assert_eq!(v.getattr(ROOT).unwrap().nlink, 2);
    assert_eq!(err(v.rmdir(ROOT, b"d")), Errno::ENOENT);
}

#[test]
fn write_read_holes_truncate() {
    let (_, v) = vol(8);
    let (f, _) = v.create(ROOT, b"f", 0o644, 0, 0, true).unwrap();
    assert_eq!(v.write(f, WriteAt::Offset(0), b"hello").unwrap(), 0);
    assert_eq!(v.write(f, WriteAt::Append, b" world").unwrap(), 5);
    assert_eq!(read_all(&v, f), b"hello world");
    // A hole.
    v.write(f, WriteAt::Offset(10000), b"Z").unwrap();
    let all = read_all(&v, f);
    assert_eq!(all.len(), 10001);
    assert!(all[11..10000].iter().all(|&b| b == 0));
    // Large write (copy-on-write path), unaligned.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + 3) as u8).collect();
    v.write(f, WriteAt::Offset(123), &big).unwrap();
    let all = read_all(&v, f);
    assert_eq!(&all[123..123 + big.len()], &big[..]);
    assert_eq!(&all[..5], b"hello");
    // Truncate down inside a block, then up: the tail reads zeros.
    let a = v.setattr(f, SetAttr { size: Some(1000), ..Default::default() }).unwrap();
    assert_eq!(a.size, 1000);
    v.setattr(f, SetAttr { size: Some(50_000), ..Default::default() }).unwrap();
    let all = read_all(&v, f);
    assert_eq!(&all[123..1000], &big[..877]);
    assert!(all[1000..].iter().all(|&b| b == 0));
    let mut buf = [0u8; 10];
    assert_eq!(v.read(f, 50_000, &mut buf).unwrap(), 0);
    assert_eq!(v.read(f, 49_995, &mut buf).unwrap(), 5);
    assert_eq!(err(v.write(f, WriteAt::Offset(1 << 44), b"x")), Errno::EFBIG);
    assert_eq!(err(v.setattr(ROOT, SetAttr { size: Some(0), ..Default::default() })), Errno::EISDIR);
    // Empty write.
    assert_eq!(v.write(f, WriteAt::Offset(7), b"").unwrap(), 7);
    // Attributes.
    let t = Time { sec: 1000, nsec: 5 };
    let a = v
        .setattr(
            f,
            SetAttr {
                perm: Some(0o4755),
                uid: Some(9),
                gid: Some(8),
                atime: Some(t),
                mtime: Some(t),
                size: None,
            },
        )
        .unwrap();
    assert_eq!((a.perm, a.uid, a.gid, a.atime, a.mtime), (0o4755, 9, 8, t, t));
    assert!(a.ctime > t);
}

#[test]
fn times_update() {
    let (_, v) = vol(4);
    let (f, _) = v.create(ROOT, b"f", 0o644, 0, 0, true).unwrap();
    let old = Time { sec: 1, nsec: 0 };
    v.setattr(f, SetAttr { mtime: Some(old), ..Default::default() }).unwrap();
    v.setattr(ROOT, SetAttr { mtime: Some(old), ..Default::default() }).unwrap();
    v.write(f, WriteAt::Append, b"x").unwrap();
    assert!(v.getattr(f).unwrap().mtime > old);
    v.setattr(f, SetAttr { mtime: Some(old), ..Default::default() }).unwrap();
    v.setattr(f, SetAttr { size: Some(0), ..Default::default() }).unwrap();
    assert!(v.getattr(f).unwrap().mtime > old);
    v.create(ROOT, b"g", 0o644, 0, 0, true).unwrap();
    assert!(v.getattr(ROOT).unwrap().mtime > old);
    v.setattr(ROOT, SetAttr { mtime: Some(old), ..Default::default() }).unwrap();
    v.unlink(ROOT, b"g").unwrap();
    assert!(v.getattr(ROOT).unwrap().mtime > old);
    v.setattr(ROOT, SetAttr { mtime: Some(old), ..Default::default() }).unwrap();
    v.rename(ROOT, b"f", ROOT, b"h", RenameFlags::default()).unwrap();
    assert!(v.getattr(ROOT).unwrap().mtime > old);
}

#[test]
fn rename_semantics() {
    let (_, v) = vol(4);
    let (a, _) = v.create(ROOT, b"a", 0o644, 0, 0, true).unwrap();
    let (b, _) = v.create(ROOT, b"b", 0o644, 0, 0, true).unwrap();
    v.write(a, WriteAt::Offset(0), b"A").unwrap();
    let d = v.mkdir(ROOT, b"d", 0o755, 0, 0).unwrap();
    let e = v.mkdir(d, b"e", 0o755, 0, 0).unwrap();
    let noreplace = RenameFlags { noreplace: true, exchange: false };
    let exchange = RenameFlags { noreplace: false, exchange: true };
    assert_eq!(err(v.rename(ROOT, b"a", ROOT, b"b", noreplace)), Errno::EEXIST);
    assert_eq!(err(v.rename(ROOT, b"a", ROOT, b"d", RenameFlags::default())), Errno::EISDIR);
    assert_eq!(err(v.rename(ROOT, b"d", ROOT, b"a", RenameFlags::default())), Errno::ENOTDIR);
    assert_eq!(err(v.rename(ROOT, b"d", e, b"x", RenameFlags::default())), Errno::EINVAL);
    assert_eq!(err(v.rename(ROOT, b"d", d, b"x", RenameFlags::default())), Errno::EINVAL);
    assert_eq!(err(v.rename(ROOT, b"nope", ROOT, b"x", RenameFlags::default())), Errno::ENOENT);
    assert_eq!(err(v.rename(ROOT, b"a", ROOT, b"nope", exchange)), Errno::ENOENT);
    v.rename(ROOT, b"a", ROOT, b"a", RenameFlags::default()).unwrap();
    // Replace b by a: b's inode is gone.
    v.rename(ROOT, b"a", ROOT, b"b", RenameFlags::default()).unwrap();
    assert_eq!(v.lookup(ROOT, b"b").unwrap(), a);
    assert_eq!(err(v.getattr(b)), Errno::ENOENT);
    assert_eq!(err(v.lookup(ROOT, b"a")), Errno::ENOENT);
    // Move a directory: link counts follow.
    let f = v.mkdir(ROOT, b"f", 0o755, 0, 0).unwrap();
    v.rename(d, b"e", f, b"e2", RenameFlags::default()).unwrap();
    assert_eq!(v.getattr(d).unwrap().nlink, 2);
    assert_eq!(v.getattr(f).unwrap().nlink, 3);
    // Replace an empty directory; a non-empty one refuses.
    assert_eq!(err(v.rename(ROOT, b"d", ROOT, b"f", RenameFlags::default())), Errno::ENOTEMPTY);
    v.rename(ROOT, b"f", ROOT, b"d", RenameFlags::default()).unwrap();
    assert_eq!(v.lookup(ROOT, b"d").unwrap(), f);
    assert_eq!(v.getattr(ROOT).unwrap().nlink, 3);
    // Exchange a file and a directory across directories.
    let (g, _) = v.create(f, b"g", 0o644, 0, 0, true).unwrap();
    v.rename(ROOT, b"b", f, b"e2", exchange).unwrap();
    assert_eq!(v.lookup(ROOT, b"b").unwrap(), e);
    assert_eq!(v.lookup(f, b"e2").unwrap(), a);
    assert_eq!(v.getattr(f).unwrap().nlink, 2);
    assert_eq!(v.getattr(ROOT).unwrap().nlink, 4);
    assert_eq!(v.lookup_path(b"/b/..").unwrap(), ROOT);
    let _ = g;
    assert!(fsck::check(v.device().as_ref()).unwrap().ok);
}

#[test]
fn unlinked_open_file_lives_until_release() {
    let (d, v) = vol(4);
    let (f, _) = v.create(ROOT, b"f", 0o644, 0, 0, true).unwrap();
    v.write(f, WriteAt::Offset(0), &vec![7u8; 50_000]).unwrap();
    v.open(f).unwrap();
    v.unlink(ROOT, b"f").unwrap();
    assert_eq!(v.getattr(f).unwrap().nlink, 0);
    v.write(f, WriteAt::Append, b"more").unwrap();
    assert_eq!(read_all(&v, f).len(), 50_004);
    // A mount now (as after a crash) frees the orphan.
    let img = d.snapshot();
    let r = fsck::check(&img).unwrap();
    assert!(r.ok, "{r}");
    let v2 = Volume::open(Arc::new(img)).unwrap();
    assert_eq!(err(v2.getattr(f)), Errno::ENOENT);
    drop(v2);
    v.release(f).unwrap();
    assert_eq!(err(v.getattr(f)), Errno::ENOENT);
}

#[test]
fn remount_persistence() {
    let d = MemDev::new(16 << 20);
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (f, g, sub);
    {
        let v = Volume::format(Arc::new(d.clone())).unwrap();
        sub = v.mkdir(ROOT, b"sub", 0o700, 1, 2).unwrap();
        f = v.create(sub, b"f", 0o600, 3, 4, true).unwrap().0;
        g = v.create(ROOT, b"g", 0o644, 0, 0, true).unwrap().0;
        v.write(f, WriteAt::Offset(0), &big).unwrap();
        v.write(g, WriteAt::Append, b"aof line 1\n").unwrap();
        v.fsync(g, true).unwrap();
        v.write(g, WriteAt::Append, b"aof line 2\n").unwrap();
        // No sync: the journal holds the last writes (like a kill -9).
        let img = d.snapshot();
        let v2 = Volume::open(Arc::new(img)).unwrap();
        assert_eq!(read_all(&v2, g), b"aof line 1\naof line 2\n");
        assert_eq!(read_all(&v2, f), big);
    }
    let v = Volume::open(Arc::new(d.clone())).unwrap();
    assert_eq!(v.lookup_path(b"sub/f").unwrap(), f);
    assert_eq!(v.lookup(ROOT, b"g").unwrap(), g);
    assert_eq!(read_all(&v, f), big);
    let a = v.getattr(sub).unwrap();
    assert_eq!((a.perm, a.uid, a.gid, a.nlink), (0o700, 1, 2, 2));
    assert_eq!(names(&v, ROOT), vec!["g", "sub"]);
    // New inode numbers are not reused.
    let (h, _) = v.create(ROOT, b"h", 0o644, 0, 0, true).unwrap();
    assert!(h > g && h > f);
    assert!(v.used_blocks() <= d.blocks());
    assert_eq!(fsck::used_blocks(&d.snapshot()).unwrap(), v.used_blocks());
}

#[test]
fn journal_wrap_and_checkpoints() {
    let d = MemDev::new(8 << 20);
    let v = Volume::format_with(Arc::new(d.clone()), FormatOptions { journal_blocks: Some(32) }).unwrap();
    let (f, _) = v.create(ROOT, b"aof", 0o644, 0, 0, true).unwrap();
    let mut model = Vec::new();
    for i in 0..500u32 {
        let line = format!("SET key{i} value{i}\n");
        v.write(f, WriteAt::Append, line.as_bytes()).unwrap();
        model.extend_from_slice(line.as_bytes());
        v.fsync(f, true).unwrap();
    }
    assert!(v.checkpoints() > 10);
    assert_eq!(read_all(&v, f), model);
    let v2 = Volume::open(Arc::new(d.snapshot())).unwrap();
    assert_eq!(read_all(&v2, f), model);
}

#[test]
fn enospc_does_not_corrupt() {
    let d = MemDev::new(1 << 20);
    let v = Volume::format(Arc::new(d.clone())).unwrap();
    let (f, _) = v.create(ROOT, b"f", 0o644, 0, 0, true).unwrap();
    let chunk = vec![1u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match v.write(f, WriteAt::Append, &chunk) {
            Ok(_) => written += chunk.len() as u64,
            Err(e) => {
                assert_eq!(err::<()>(Err(e)), Errno::ENOSPC);
                break;
            }
        }
        assert!(written < 2 << 20);
    }
    let size = v.getattr(f).unwrap().size;
    assert!(size >= written);
    // Small writes until full as well.
    while v.write(f, WriteAt::Append, b"x").is_ok() {}
    let st = v.statfs().unwrap();
    assert!(st.free <= 2, "{st:?}");
    v.sync_all().unwrap();
    let r = fsck::check(&d.snapshot()).unwrap();
    assert!(r.ok, "{r}");
    // Deleting makes room again.
    v.unlink(ROOT, b"f").unwrap();
    let (g, _) = v.create(ROOT, b"g", 0o644, 0, 0, true).unwrap();
    v.write(g, WriteAt::Offset(0), &chunk).unwrap();
    drop(v);
    let v = Volume::open(Arc::new(d)).unwrap();
    assert_eq!(read_all(&v, g), chunk);
}

#[test]
fn open_or_format_and_readonly() {
    let d = MemDev::new(4 << 20);
    let v = Volume::open_or_format(Arc::new(d.clone())).unwrap();
    v.create(ROOT, b"x", 0o644, 0, 0, true).unwrap();
    drop(v);
    let v = Volume::open_or_format(Arc::new(d.clone())).unwrap();
    assert!(v.lookup(ROOT, b"x").is_ok());
    drop(v);
    let ro = Volume::open_readonly(Arc::new(d.clone())).unwrap();
    assert_eq!(err(ro.create(ROOT, b"y", 0o644, 0, 0, true)), Errno::EROFS);
    assert!(!ro.create(ROOT, b"x", 0o644, 0, 0, false).unwrap().1);
    // Something that is neither zero nor a volume is refused.
    let junk = MemDev::new(4 << 20);
    junk.write(0, &[0xAB; BLOCK]).unwrap();
    assert!(matches!(Volume::open_or_format(Arc::new(junk)), Err(FsError::Corrupt { .. })));
}

#[test]
fn statfs_and_threads() {
    let (_, v) = vol(16);
    let v = Arc::new(v);
    let st = v.statfs().unwrap();
    assert_eq!(st.block_size, 4096);
    assert!(st.free > 0 && st.files == 1);
    let mut hs = Vec::new();
    for t in 0..4u8 {
        let v = v.clone();
        hs.push(std::thread::spawn(move || {
            let name = format!("t{t}");
            let (f, _) = v.create(ROOT, name.as_bytes(), 0o644, 0, 0, true).unwrap();
            for i in 0..200u32 {
                v.write(f, WriteAt::Append, &i.to_le_bytes()).unwrap();
            }
            v.fsync(f, false).unwrap();
            f
        }));
    }
    for h in hs {
        let f = h.join().unwrap();
        let all = read_all(&v, f);
        assert_eq!(all.len(), 800);
        assert_eq!(&all[796..], &199u32.to_le_bytes());
    }
    assert_eq!(v.statfs().unwrap().files, 5);
}
