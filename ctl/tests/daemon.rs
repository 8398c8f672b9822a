//! The daemon end to end: started in a temporary directory, talked to from child processes
//! and with raw bytes, killed and restarted. Every daemon and child is killed when its guard
//! drops, so a failing test leaves nothing running.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrakis_backends::proto::client::{Client, ClientError};
use arrakis_backends::proto::frame::encode;
use arrakis_backends::proto::{
    decode_reply, Direction, ErrorKind, Filter, Outcome, PortRange, Proto, Request, RequestFrame, Response,
};

const ARRAKIS: &str = env!("CARGO_BIN_EXE_arrakis");

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("arrakis-ctl-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn socket(&self) -> PathBuf {
        self.0.join("run/ctl.sock")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_daemon(dir: &Dir) -> Guard {
    let child = Command::new(ARRAKIS)
        .args(["daemon", "--frame-timeout-ms", "300", "--max-grants", "8"])
        .arg("--socket")
        .arg(dir.socket())
        .arg("--state-dir")
        .arg(dir.0.join("state"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let g = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Client::connect(&dir.socket()).is_err() {
        assert!(Instant::now() < deadline, "the daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    g
}

fn tcp(port: u16) -> Filter {
    Filter::new(Direction::In, Proto::Tcp, "0.0.0.0".parse().unwrap(), PortRange::one(port).unwrap(), vec![])
        .unwrap()
}

/// A port nobody uses now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The child side: registers, asks for a port, prints the outcome, waits for stdin to close.
#[test]
fn child_helper() {
    let (Ok(socket), Ok(port)) = (std::env::var("ARRAKIS_TEST_SOCKET"), std::env::var("ARRAKIS_TEST_PORT"))
    else {
        return; // Not a child: nothing to do.
    };
    let mut c = Client::connect(Path::new(&socket)).unwrap();
    c.register("test-child").unwrap();
    match c.grant(tcp(port.parse().unwrap())) {
        Ok((id, _)) => println!("\ngranted {id}"),
        Err(e) => println!("\nrefused {e}"),
    }
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// Starts a child container asking for `port`; returns it and its first answer line.
fn child(dir: &Dir, port: u16) -> (Guard, String) {
    let mut ch = Command::new(std::env::current_exe().unwrap())
        .args(["child_helper", "--exact", "--nocapture", "--test-threads=1"])
        .env("ARRAKIS_TEST_SOCKET", dir.socket())
        .env("ARRAKIS_TEST_PORT", port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(ch.stdout.take().unwrap());
    let g = Guard(ch);
    for line in out.lines() {
        let line = line.unwrap();
        if line.starts_with("granted ") || line.starts_with("refused ") {
            return (g, line);
        }
    }
    panic!("the child said nothing");
}

fn cli(dir: &Dir, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(ARRAKIS).args(args).arg("--socket").arg(dir.socket()).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn grants(dir: &Dir) -> Vec<(u64, Vec<u32>)> {
    let (ok, out, err) = cli(dir, &["filters", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let holders =
                g["holders"].as_array().unwrap().iter().map(|h| h.as_u64().unwrap() as u32).collect();
            (g["id"].as_u64().unwrap(), holders)
        })
        .collect()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn grants_conflict_survive_a_restart_are_revoked_and_reclaimed_after_kill_9() {
    let dir = Dir::new("life");
    let mut daemon = start_daemon(&dir);
    let port = free_port();
    let (a, line) = child(&dir, port);
    let a_pid = a.0.id();
    assert!(line.starts_with("granted "), "{line}");
    let id: u64 = line["granted ".len()..].parse().unwrap();
    // Another container is refused, with the holder named.
    let (_b, line) = child(&dir, port);
    assert!(
        line.contains(&format!("port {port}/tcp is held by container {a_pid} (test-child) under grant {id}")),
        "{line}"
    );
    assert_eq!(grants(&dir), vec![(id, vec![a_pid])]);

    // kill -9 the daemon and start it again: the grant is still there.
    drop(daemon);
    daemon = start_daemon(&dir);
    assert_eq!(grants(&dir), vec![(id, vec![a_pid])]);
    let (ok, out, _) = cli(&dir, &["status"]);
    assert!(ok && out.contains("test-child"), "{out}");

    // Revoked from the CLI, the port is free for the next container.
    let (ok, out, err) = cli(&dir, &["revoke", &id.to_string()]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("revoked grant {id}"));
    let (c, line) = child(&dir, port);
    assert!(line.starts_with("granted "), "{line}");
    let c_pid = c.0.id();
    let id2: u64 = line["granted ".len()..].parse().unwrap();

    // kill -9 of the container: its grant is reclaimed, the port free again.
    drop(c);
    wait_for("reclamation", || grants(&dir).iter().all(|g| g.0 != id2));
    let (ok, out, _) = cli(&dir, &["stats", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["daemon"]["reclaimed"].as_u64().unwrap() >= 1, "{out}");
    assert!(v["switch"].is_null());
    let (_d, line) = child(&dir, port);
    assert!(line.starts_with("granted "), "{line}");
    assert!(!grants(&dir).iter().any(|g| g.1.contains(&c_pid)));
    drop(daemon);
}

#[test]
fn a_container_dead_while_the_daemon_was_down_is_reclaimed_at_start() {
    let dir = Dir::new("stale");
    let daemon = start_daemon(&dir);
    let (a, line) = child(&dir, free_port());
    assert!(line.starts_with("granted "), "{line}");
    drop(daemon);
    drop(a);
    let _daemon = start_daemon(&dir);
    assert_eq!(grants(&dir), vec![]);
}

#[test]
fn a_port_held_by_the_kernel_is_refused() {
    let dir = Dir::new("kernel");
    let _daemon = start_daemon(&dir);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (_a, line) = child(&dir, port);
    assert!(
        line.contains(&format!("port {port}/tcp is in use by a kernel socket on 127.0.0.1 (LISTEN)")),
        "{line}"
    );
}

fn read_reply(s: &mut UnixStream) -> Option<arrakis_backends::proto::ReplyFrame> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h).ok()?;
    let mut body = vec![0u8; u32::from_le_bytes(h) as usize];
    s.read_exact(&mut body).ok()?;
    decode_reply(&body).ok()
}

#[test]
fn garbage_truncated_and_oversized_frames_get_clean_errors() {
    let dir = Dir::new("garbage");
    let _daemon = start_daemon(&dir);
    let connect = || {
        let s = UnixStream::connect(dir.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    };

    // A well-framed body that is not JSON: an error, and the connection goes on.
    let mut s = connect();
    s.write_all(&[5, 0, 0, 0, b'h', b'e', b'l', b'l', b'o']).unwrap();
    let r = read_reply(&mut s).unwrap();
    assert!(
        matches!(r.result, Outcome::Err(ref e) if matches!(e.kind, ErrorKind::BadRequest { .. })),
        "{r:?}"
    );
    // A request before hello.
    s.write_all(&encode(&RequestFrame { seq: 9, req: Request::Stats {} }).unwrap()).unwrap();
    let r = read_reply(&mut s).unwrap();
    assert_eq!(r.seq, 9);
    assert!(matches!(r.result, Outcome::Err(ref e) if e.kind == ErrorKind::HelloFirst));
    // A version nobody speaks.
    s.write_all(&encode(&RequestFrame { seq: 10, req: Request::Hello { min: 100, max: 109 } }).unwrap())
        .unwrap();
    let r = read_reply(&mut s).unwrap();
    assert!(matches!(r.result, Outcome::Err(ref e) if matches!(e.kind, ErrorKind::Version { .. })));

    // An oversized header: an error, then the daemon closes.
    let mut s = connect();
    s.write_all(&u32::MAX.to_le_bytes()).unwrap();
    let r = read_reply(&mut s).unwrap();
    assert!(matches!(r.result, Outcome::Err(ref e) if e.message.contains("over the limit")), "{r:?}");
    assert_eq!(s.read(&mut [0u8; 16]).unwrap(), 0);

    // A truncated frame: the daemon drops the client after the frame timeout (300 ms here).
    let mut s = connect();
    s.write_all(&[100, 0, 0, 0, b'{']).unwrap();
    let t = Instant::now();
    assert_eq!(s.read(&mut [0u8; 16]).unwrap(), 0);
    assert!(t.elapsed() < Duration::from_secs(4));

    // A client that sends garbage without end, and one that connects and never speaks, do
    // not stop the daemon from answering others.
    let _idle = connect();
    let mut s = connect();
    let junk = vec![0x41u8; 100_000];
    let _ = s.write_all(&junk);
    let mut c = Client::connect(&dir.socket()).unwrap();
    assert!(matches!(c.call(Request::Status {}), Ok(Response::Status { .. })));
}

#[test]
fn the_cli_says_how_to_start_a_missing_daemon() {
    let dir = Dir::new("absent");
    let (ok, _, err) = cli(&dir, &["status"]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "no arrakis daemon at {}: start one with `arrakis daemon`",
            dir.socket().display()
        )),
        "{err}"
    );
    assert!(matches!(Client::connect(&dir.socket()), Err(ClientError::NoDaemon { .. })));
}

#[test]
fn a_second_daemon_and_a_corrupt_store_are_refused_with_the_fix() {
    let dir = Dir::new("second");
    let _daemon = start_daemon(&dir);
    let out = Command::new(ARRAKIS)
        .arg("daemon")
        .arg("--socket")
        .arg(dir.socket())
        .arg("--state-dir")
        .arg(dir.0.join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another arrakis daemon") || err.contains("already listens"), "{err}");

    let bad = Dir::new("corrupt");
    std::fs::create_dir_all(bad.0.join("state")).unwrap();
    std::fs::write(bad.0.join("state/state.redb"), b"definitely not redb").unwrap();
    let out = Command::new(ARRAKIS)
        .arg("daemon")
        .arg("--socket")
        .arg(bad.socket())
        .arg("--state-dir")
        .arg(bad.0.join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("state.redb is corrupt") && err.contains("move it aside"), "{err}");
}
