//! VSAs end to end: a daemon in a temporary directory, the `arrakis vsa` and `arrakis fsck`
//! commands, and this process attaching to a volume through the client API.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrakis_backends::proto::client::Client;
use arrakis_backends::proto::VolumeRole;
use arrakis_core::fs::dev::FileDev;
use arrakis_core::fs::volume::Volume;

const ARRAKIS: &str = env!("CARGO_BIN_EXE_arrakis");

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The daemon, killed and reaped on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(name: &str) -> (Dir, Guard) {
    let d = std::env::temp_dir().join(format!("arrakis-vsa-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let child = Command::new(ARRAKIS)
        .args(["daemon", "--max-vsa-size", "8M", "--socket"])
        .arg(d.join("run/ctl.sock"))
        .arg("--state-dir")
        .arg(d.join("state"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let g = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Client::connect(&d.join("run/ctl.sock")).is_err() {
        assert!(Instant::now() < deadline, "the daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Dir(d), g)
}

/// Runs `arrakis ARGS --socket S`: exit code, stdout, stderr.
fn cli(d: &Dir, args: &[&str]) -> (i32, String, String) {
    let out =
        Command::new(ARRAKIS).args(args).arg("--socket").arg(d.0.join("run/ctl.sock")).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn vsa_commands_attach_and_fsck() {
    let (d, _daemon) = start("cmds");
    let (code, out, err) = cli(&d, &["vsa", "create", "vol", "1M"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 MiB"), "{out}");
    let (code, _, err) = cli(&d, &["vsa", "create", "big", "9M"]);
    assert!(code != 0 && err.contains("--max-vsa-size"), "{err}");
    let (code, out, _) = cli(&d, &["vsa", "list", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["vsas"][0]["name"], "vol");
    assert_eq!(v["vsas"][0]["size"], 1 << 20);

    // Never formatted: fsck finds no volume (1); a missing VSA is an error (2).
    assert_eq!(cli(&d, &["fsck", "vol"]).0, 1);
    assert_eq!(cli(&d, &["fsck", "nope"]).0, 2);
    assert_eq!(cli(&d, &["fsck", "--image", "/nonexistent/x.img"]).0, 2);

    // This process owns it: the fd is the VSA's file; it formats a volume there.
    let mut c = Client::connect(&d.0.join("run/ctl.sock")).unwrap();
    let (vsa, role, fd) = c.volume_attach("vol", None, false).unwrap();
    assert!(matches!(role, VolumeRole::Owner { .. }), "{role:?}");
    assert_eq!(vsa.owner, Some(std::process::id()));
    let fd = fd.unwrap();
    let dev = Arc::new(FileDev::new(fd, vsa.size));
    match Volume::format(dev) {
        Ok(v) => drop(v),
        Err(e) => panic!("format: {e}"),
    }
    // While it owns it: fsck, delete and shrink are refused naming the owner.
    let me = std::process::id().to_string();
    let (code, _, err) = cli(&d, &["fsck", "vol"]);
    assert!(code == 2 && err.contains(&me), "{err}");
    let (code, _, err) = cli(&d, &["vsa", "delete", "vol"]);
    assert!(code != 0 && err.contains(&me), "{err}");
    let (code, _, err) = cli(&d, &["vsa", "resize", "vol", "64K"]);
    assert!(code != 0 && err.contains(&me), "{err}");
    // Growing is allowed.
    assert_eq!(cli(&d, &["vsa", "resize", "vol", "2M"]).0, 0);
    c.volume_detach("vol").unwrap();

    // Clean now; a copy of its image too.
    let (code, out, err) = cli(&d, &["fsck", "vol"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("clean"), "{out}");
    let img = d.0.join("state/vsa/vol.img");
    let copy = d.0.join("copy.img");
    std::fs::copy(&img, &copy).unwrap();
    assert_eq!(cli(&d, &["fsck", "--image", copy.to_str().unwrap()]).0, 0);
    // --repair attaches as owner and detaches at the end.
    let (code, out, err) = cli(&d, &["fsck", "vol", "--repair"]);
    assert!(code == 0 || code == 1, "{out}{err}");
    let (_, out, _) = cli(&d, &["vsa", "list"]);
    assert!(out.lines().nth(1).is_some_and(|l| l.trim_end().ends_with('-')), "{out}");
    // Shrinking below the volume's use is refused; to exactly it not (it fits).
    let (code, _, err) = cli(&d, &["vsa", "resize", "vol", "4096"]);
    assert!(code != 0 && err.contains("uses"), "{err}");
    assert_eq!(cli(&d, &["vsa", "delete", "vol"]).0, 0);
    assert!(!img.exists());
}
