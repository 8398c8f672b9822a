//! The FUSE export end to end: a volume formatted in an image file is mounted with
//! `arrakis mount --image`, written and read through the mount with plain `std::fs` and
//! `sha256sum`, unmounted with `umount`, and the image is then opened as a volume to check that
//! the files are in it. A read-only mount refuses writes and unmounts itself on SIGTERM.
//!
//! Needs /dev/fuse and the right to mount (root, or `fusermount3` from Debian's `fuse3`).
//! Without them the test fails saying what is missing, unless `ARRAKIS_ALLOW_SKIP=1`.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrakis_core::fs::dev::{BlockDev, FileDev};
use arrakis_core::fs::volume::Volume;
use arrakis_core::fs::{FileSystem, WriteAt, ROOT};

mod common;

use common::ARRAKIS;

const PATIENCE: Duration = Duration::from_secs(15);
const IMAGE_BYTES: u64 = 64 << 20;

/// `Some(reason)` if FUSE mounts cannot work here.
fn fuse_missing() -> Option<String> {
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        return Some(format!(
            "cannot open /dev/fuse ({e}); load the fuse module or give the container the device"
        ));
    }
    let fss = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fss.lines().any(|l| l.split_whitespace().last() == Some("fuse")) {
        return Some("the kernel has no fuse file system (/proc/filesystems)".into());
    }
    let root = rustix::process::geteuid().is_root();
    if !root && which("fusermount3").is_none() {
        return Some("not root and no fusermount3 (Debian package fuse3)".into());
    }
    None
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(prog)).find(|p| p.is_file()))
}

/// Fails with `why`, or skips (returns) under `ARRAKIS_ALLOW_SKIP=1`.
fn unavailable(why: &str) {
    if std::env::var("ARRAKIS_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("SKIPPED: FUSE is unavailable: {why}");
        return;
    }
    panic!("FUSE is unavailable: {why} (set ARRAKIS_ALLOW_SKIP=1 to skip this test)");
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("arrakis-fuse-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("mnt")).unwrap();
        TempDir(d.canonicalize().unwrap())
    }
    fn mnt(&self) -> PathBuf {
        self.0.join("mnt")
    }
    fn image(&self) -> PathBuf {
        self.0.join("volume.img")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn is_mounted(dir: &Path) -> bool {
    let want = dir.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// A running `arrakis mount`; on drop, unmounts (lazily) and kills it if the test failed.
struct Mount {
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
}

impl Mount {
    /// Starts `arrakis mount --image IMAGE DIR [extra]`; `Err` with the reason if mounting
    /// did not work here.
    fn start(image: &Path, dir: &Path, extra: &[&str]) -> Result<Mount, String> {
        let mut args: Vec<OsString> = vec!["--image".into(), image.into(), dir.into()];
        args.extend(extra.iter().map(OsString::from));
        Mount::spawn(&args, dir)
    }

    /// Starts `arrakis mount ARGS` and waits for `dir` to be mounted.
    fn spawn(args: &[OsString], dir: &Path) -> Result<Mount, String> {
        let log = dir.with_extension("log");
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(ARRAKIS)
            .arg("mount")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .unwrap();
        let mut m = Mount { child: Some(child), dir: dir.to_path_buf(), log };
        let t = Instant::now();
        while !is_mounted(dir) {
            if let Some(st) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                m.child = None;
                return Err(format!("arrakis mount exited ({st}) without mounting: {}", m.log_text()));
            }
            if t.elapsed() > PATIENCE {
                return Err(format!("{} not mounted after {PATIENCE:?}: {}", dir.display(), m.log_text()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(m)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for `arrakis mount` to exit after an unmount; it must exit cleanly.
    fn wait_exit(&mut self) {
        let mut child = self.child.take().expect("running");
        let t = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                assert!(st.success(), "arrakis mount failed ({st}): {}", self.log_text());
                break;
            }
            assert!(
                t.elapsed() < PATIENCE,
                "arrakis mount still running after the unmount: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!is_mounted(&self.dir));
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn image_volume(path: &Path, read_only: bool) -> Volume {
    let f = OpenOptions::new().read(true).write(!read_only).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let dev: Arc<dyn BlockDev> = Arc::new(FileDev::new(OwnedFd::from(f), len));
    if read_only {
        Volume::open_readonly(dev).unwrap()
    } else {
        Volume::open(dev).unwrap()
    }
}

fn read_all(vol: &Volume, path: &str) -> Vec<u8> {
    let ino = vol.lookup_path(path.as_bytes()).unwrap_or_else(|e| panic!("{path} not in the image: {e}"));
    let size = vol.getattr(ino).unwrap().size as usize;
    let mut buf = vec![0u8; size];
    assert_eq!(vol.read(ino, 0, &mut buf).unwrap(), size);
    buf
}

fn sha256sum(dir: &Path, files: &[&str]) -> String {
    let out = Command::new("sha256sum").args(files).current_dir(dir).output().expect("run sha256sum");
    assert!(out.status.success(), "sha256sum in {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn a_volume_image_through_fuse() {
    if let Some(why) = fuse_missing() {
        return unavailable(&why);
    }
    let tmp = TempDir::new("rw");
    let mnt = tmp.mnt();
    // A volume with one file in it already.
    {
        let f =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(tmp.image()).unwrap();
        f.set_len(IMAGE_BYTES).unwrap();
        let vol = Volume::format(Arc::new(FileDev::new(OwnedFd::from(f), IMAGE_BYTES))).unwrap();
        let (ino, _) = vol.create(ROOT, b"pre.txt", 0o644, 0, 0, true).unwrap();
        vol.write(ino, WriteAt::Offset(0), b"written before the mount\n").unwrap();
        vol.sync_all().unwrap();
    }

    let mut m = match Mount::start(&tmp.image(), &mnt, &[]) {
        Ok(m) => m,
        Err(why) => return unavailable(&why),
    };

    // What was there.
    assert_eq!(std::fs::read(mnt.join("pre.txt")).unwrap(), b"written before the mount\n");

    // Files and directories written through the mount, the same bytes in a kernel directory.
    let kernel = tmp.0.join("kernel");
    std::fs::create_dir_all(kernel.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(mnt.join("sub/deeper")).unwrap();
    let big = pseudo_random(3 * 1024 * 1024 + 4321, 7);
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("hello.txt", b"hello, volume\n".to_vec()),
        ("sub/big.bin", big.clone()),
        ("sub/deeper/empty", Vec::new()),
        ("sub/deeper/lines.txt", (0..5000).map(|i| format!("line {i}\n")).collect::<String>().into_bytes()),
    ];
    for (name, data) in &files {
        std::fs::write(mnt.join(name), data).unwrap();
        std::fs::write(kernel.join(name), data).unwrap();
    }
    // Appends, in place writes, truncation, rename, unlink, chmod.
    for d in [&mnt, &kernel] {
        let mut f = OpenOptions::new().append(true).open(d.join("hello.txt")).unwrap();
        f.write_all(b"appended\n").unwrap();
        f.sync_all().unwrap();
        drop(f);
        let mut f = OpenOptions::new().write(true).open(d.join("sub/big.bin")).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"PATCHED", 1_000_000).unwrap();
        f.flush().unwrap();
        drop(f);
        std::fs::write(d.join("doomed"), b"x").unwrap();
        std::fs::remove_file(d.join("doomed")).unwrap();
        std::fs::write(d.join("tmp-rdb"), b"REDIS0011 snapshot").unwrap();
        std::fs::rename(d.join("tmp-rdb"), d.join("dump.rdb")).unwrap();
        std::fs::set_permissions(d.join("dump.rdb"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let f = OpenOptions::new().write(true).open(d.join("sub/deeper/lines.txt")).unwrap();
        f.set_len(1000).unwrap();
    }
    let names =
        ["pre.txt", "hello.txt", "dump.rdb", "sub/big.bin", "sub/deeper/empty", "sub/deeper/lines.txt"];
    std::fs::write(kernel.join("pre.txt"), b"written before the mount\n").unwrap();
    let via_fuse = sha256sum(&mnt, &names);
    assert_eq!(
        via_fuse,
        sha256sum(&kernel, &names),
        "sha256sum differs between the mount and the kernel copy"
    );

    // Metadata and listings.
    let md = std::fs::metadata(mnt.join("sub/big.bin")).unwrap();
    assert_eq!(md.len(), big.len() as u64);
    assert!(md.is_file());
    assert_eq!(std::fs::metadata(mnt.join("dump.rdb")).unwrap().permissions().mode() & 0o7777, 0o600);
    let mut top: Vec<String> =
        std::fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    top.sort();
    assert_eq!(top, ["dump.rdb", "hello.txt", "pre.txt", "sub"]);
    assert!(std::fs::metadata(mnt.join("sub")).unwrap().is_dir());
    let err = std::fs::remove_dir(mnt.join("sub")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(39), "rmdir of a non-empty directory: {err}"); // ENOTEMPTY
    let err = std::fs::read(mnt.join("nope")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    let mut buf = Vec::new();
    std::fs::File::open(mnt.join("sub/big.bin")).unwrap().read_to_end(&mut buf).unwrap();
    assert_eq!(buf.len(), big.len());
    assert_eq!(&buf[..1_000_000], &big[..1_000_000]);
    assert_eq!(&buf[1_000_000..1_000_007], b"PATCHED");

    // Unmount as a user would; the server exits by itself.
    let st = match which("fusermount3") {
        Some(fm) if !rustix::process::geteuid().is_root() => Command::new(fm).arg("-u").arg(&mnt).status(),
        _ => Command::new("umount").arg(&mnt).status(),
    };
    assert!(st.unwrap().success(), "unmount failed");
    m.wait_exit();

    // Everything is in the image.
    let vol = image_volume(&tmp.image(), true);
    for n in names {
        assert_eq!(read_all(&vol, n), std::fs::read(kernel.join(n)).unwrap(), "{n} in the image");
    }
    assert!(vol.lookup_path(b"doomed").is_err());
    assert!(vol.lookup_path(b"tmp-rdb").is_err());
}

#[test]
fn a_read_only_mount_refuses_writes_and_stops_on_sigterm() {
    if let Some(why) = fuse_missing() {
        return unavailable(&why);
    }
    let tmp = TempDir::new("ro");
    let mnt = tmp.mnt();
    {
        let f =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(tmp.image()).unwrap();
        f.set_len(IMAGE_BYTES).unwrap();
        let vol = Volume::format(Arc::new(FileDev::new(OwnedFd::from(f), IMAGE_BYTES))).unwrap();
        let d = vol.mkdir(ROOT, b"data", 0o755, 0, 0).unwrap();
        let (ino, _) = vol.create(d, b"keys", 0o644, 0, 0, true).unwrap();
        vol.write(ino, WriteAt::Offset(0), b"k1 v1\n").unwrap();
        vol.sync_all().unwrap();
    }
    let before = std::fs::read(tmp.image()).unwrap();
    let mut m = match Mount::start(&tmp.image(), &mnt, &["--read-only"]) {
        Ok(m) => m,
        Err(why) => return unavailable(&why),
    };
    assert_eq!(std::fs::read(mnt.join("data/keys")).unwrap(), b"k1 v1\n");
    let erofs = Some(30);
    assert_eq!(std::fs::write(mnt.join("new"), b"x").unwrap_err().raw_os_error(), erofs);
    assert_eq!(OpenOptions::new().write(true).open(mnt.join("data/keys")).unwrap_err().raw_os_error(), erofs);
    assert_eq!(std::fs::create_dir(mnt.join("d")).unwrap_err().raw_os_error(), erofs);
    assert_eq!(std::fs::remove_file(mnt.join("data/keys")).unwrap_err().raw_os_error(), erofs);

    let pid = m.child.as_ref().unwrap().id();
    let st = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    assert!(st.success());
    m.wait_exit();
    assert!(m.log_text().contains("unmounting"), "{}", m.log_text());
    assert!(std::fs::read(tmp.image()).unwrap() == before, "a read-only mount changed the image");
}

/// Two mounts of one VSA through the daemon: the first becomes the volume's owner (it opens
/// the VSA and serves RPC), the second reaches it by RPC; each sees what the other writes, and
/// the files outlive both.
#[test]
fn a_vsa_mounted_twice_through_the_daemon() {
    if let Some(why) = fuse_missing() {
        return unavailable(&why);
    }
    let dir = common::Dir::new("fuse-vsa");
    let _daemon = common::start_daemon(&dir);
    let (ok, _, err) = common::cli(&dir, &["vsa", "create", "shared", "64M"]);
    assert!(ok, "vsa create: {err}");
    let m1 = dir.0.join("owner");
    let m2 = dir.0.join("remote");
    std::fs::create_dir_all(&m1).unwrap();
    std::fs::create_dir_all(&m2).unwrap();
    let args = |m: &Path| -> Vec<OsString> {
        vec!["--socket".into(), dir.socket().into(), "shared".into(), m.into()]
    };
    let mut owner = match Mount::spawn(&args(&m1), &m1) {
        Ok(m) => m,
        Err(why) => return unavailable(&why),
    };
    std::fs::create_dir(m1.join("logs")).unwrap();
    std::fs::write(m1.join("logs/a.log"), b"from the owner\n").unwrap();
    let mut remote = Mount::spawn(&args(&m2), &m2).unwrap_or_else(|e| panic!("second mount: {e}"));
    assert_eq!(std::fs::read(m2.join("logs/a.log")).unwrap(), b"from the owner\n");
    let big = pseudo_random(2 * 1024 * 1024 + 99, 3);
    std::fs::write(m2.join("logs/b.bin"), &big).unwrap();
    let mut f = OpenOptions::new().append(true).open(m2.join("logs/a.log")).unwrap();
    f.write_all(b"from the remote\n").unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(std::fs::read(m1.join("logs/b.bin")).unwrap(), big);
    assert_eq!(std::fs::read(m1.join("logs/a.log")).unwrap(), b"from the owner\nfrom the remote\n");
    let names = ["logs/a.log", "logs/b.bin"];
    assert_eq!(sha256sum(&m1, &names), sha256sum(&m2, &names));

    // The remote first (it holds the owner's RPC connection), then the owner, by SIGTERM.
    assert!(Command::new("umount").arg(&m2).status().unwrap().success());
    remote.wait_exit();
    let pid = owner.child.as_ref().unwrap().id();
    assert!(Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap().success());
    owner.wait_exit();

    // A new owner finds the files.
    let mut again = Mount::spawn(&args(&m2), &m2).unwrap_or_else(|e| panic!("third mount: {e}"));
    assert_eq!(std::fs::read(m2.join("logs/b.bin")).unwrap(), big);
    assert!(Command::new("umount").arg(&m2).status().unwrap().success());
    again.wait_exit();
}
