//! What the plumbing tests share: a temporary run directory, guards that kill what a test
//! started (the daemon, the switch it started, the container children) even when the test
//! fails, and the container child: a process that registers, takes a NIC and moves
//! hand-built UDP frames through it on command (lines on its stdin, answers on its stdout).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use arrakis_backends::emulator::{EmulatorNic, NicFds};
use arrakis_backends::proto::client::{Client, ClientError};
use arrakis_backends::proto::{Direction, Filter, PortRange, Proto};
use arrakis_backends::smoltcp::phy::{Device, RxToken as _, TxToken as _};
use arrakis_backends::smoltcp::time::Instant as SmolInstant;
use arrakis_backends::NetDevice;

pub const ARRAKIS: &str = env!("CARGO_BIN_EXE_arrakis");
/// Longest wait of any step; a test that waits longer has failed.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// A temporary directory holding `run/` (sockets, pid files, logs) and `state/`; removed
/// on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("arrakis-plumb-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("run")).unwrap();
        Dir(d)
    }
    pub fn run(&self) -> PathBuf {
        self.0.join("run")
    }
    pub fn socket(&self) -> PathBuf {
        self.run().join("ctl.sock")
    }
    /// The switch's pid, from its pid file, if it is an `arrakis switch` of this directory.
    pub fn switch_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.run().join("switch.pid")).ok()?.trim().parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        (cmd.contains("switch") && cmd.contains(&*self.run().to_string_lossy())).then_some(pid)
    }
    pub fn kill_switch(&self) {
        if let Some(pid) = self.switch_pid() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        // The switch outlives the daemon by design: the test's directory takes it along.
        self.kill_switch();
        if std::thread::panicking() {
            for log in ["daemon.log", "switch.log"] {
                let text = std::fs::read_to_string(self.run().join(log)).unwrap_or_default();
                eprintln!("--- {log}:\n{text}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Guard(pub Child);

impl Guard {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn start_daemon(dir: &Dir) -> Guard {
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(dir.run().join("daemon.log")).unwrap();
    let child = Command::new(ARRAKIS)
        .arg("daemon")
        .arg("--socket")
        .arg(dir.socket())
        .arg("--state-dir")
        .arg(dir.0.join("state"))
        .stdin(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let g = Guard(child);
    wait_for("the daemon", || Client::connect(&dir.socket()).is_ok());
    g
}

/// Runs the CLI against the test's daemon: (success, stdout, stderr).
pub fn cli(dir: &Dir, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(ARRAKIS)
        .args(args)
        .env("ARRAKIS_RUN_DIR", dir.run())
        .env_remove("ARRAKIS_SOCKET")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

pub fn json(dir: &Dir, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    let (ok, out, err) = cli(dir, &a);
    assert!(ok, "arrakis {args:?}: {err}");
    serde_json::from_str(&out).unwrap()
}

/// The switch's counters of container `pid` (`arrakis stats --json`).
pub fn traffic(dir: &Dir, pid: u32) -> serde_json::Value {
    let v = json(dir, &["stats"]);
    v["switch"]["containers"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["pid"].as_u64() == Some(u64::from(pid))).cloned())
        .unwrap_or(serde_json::Value::Null)
}

/// An IPv4 UDP frame 127.0.0.1:`src` → 127.0.0.1:`dst` (header checksum set, UDP checksum 0).
pub fn udp4(src: u16, dst: u16, payload: &[u8]) -> Vec<u8> {
    let total = (28 + payload.len()) as u16;
    let mut f = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1];
    f[2..4].copy_from_slice(&total.to_be_bytes());
    let sum: u32 = f.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    f[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&src.to_be_bytes());
    f.extend_from_slice(&dst.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// (source port, destination port, payload) of a frame built by [`udp4`].
pub fn parse_udp4(f: &[u8]) -> Option<(u16, u16, Vec<u8>)> {
    if f.len() < 28 || f[0] != 0x45 || f[9] != 17 {
        return None;
    }
    Some((u16::from_be_bytes([f[20], f[21]]), u16::from_be_bytes([f[22], f[23]]), f[28..].to_vec()))
}

/// A container child, driven line by line.
pub struct Container {
    pub guard: Guard,
    /// Its first line: `ready {NicInfo as JSON}`.
    pub ready: serde_json::Value,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Container {
    /// Starts the child helper `helper` (a `#[test]` of the calling test binary that acts
    /// only when `ARRAKIS_TEST_CHILD` is set) as container `name` granted `udp` ports.
    pub fn start(dir: &Dir, helper: &str, name: &str, udp: &[u16]) -> Container {
        let ports: Vec<String> = udp.iter().map(u16::to_string).collect();
        let mut ch = Command::new(std::env::current_exe().unwrap())
            .args([helper, "--exact", "--nocapture", "--test-threads=1"])
            .env("ARRAKIS_TEST_CHILD", name)
            .env("ARRAKIS_SOCKET", dir.socket())
            .env("ARRAKIS_TEST_UDP", ports.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = ch.stdin.take().unwrap();
        let stdout = BufReader::new(ch.stdout.take().unwrap());
        let mut c = Container { guard: Guard(ch), ready: serde_json::Value::Null, stdin, stdout };
        let ready = c.answer();
        let info = ready.strip_prefix("ready ").unwrap_or_else(|| panic!("{ready}"));
        c.ready = serde_json::from_str(info).unwrap();
        c
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// The next answer line (the test harness prints its own lines too: skipped).
    pub fn answer(&mut self) -> String {
        let mut line = String::new();
        for _ in 0..1000 {
            line.clear();
            if self.stdout.read_line(&mut line).unwrap_or(0) == 0 {
                panic!("the container child died");
            }
            if let Some(rest) = line.trim().strip_prefix("@ ") {
                return rest.to_owned();
            }
        }
        panic!("the container child said nothing useful")
    }

    pub fn send_line(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    pub fn ask(&mut self, cmd: &str) -> String {
        self.send_line(cmd);
        self.answer()
    }
}

/// The child's side: what `helper` tests run. Returns at once unless this process is a child.
///
/// Commands: `send SRC DST TEXT` (one frame), `recv` (the next frame: `got SRC DST TEXT` or
/// `none` after the patience), `echo N` (reflect N frames back, swapping ports), `burst SRC
/// DST N` (N numbered frames, at most 32 unanswered, counting echoes: `burst N ECHOED`),
/// `nic` (a fresh NIC), `grant PORT` (udp, both directions, any address).
pub fn child_main() {
    let Ok(name) = std::env::var("ARRAKIS_TEST_CHILD") else { return };
    let socket = std::env::var("ARRAKIS_SOCKET").unwrap();
    let mut client = Client::connect(Path::new(&socket)).unwrap();
    client.register(&name).unwrap();
    for p in std::env::var("ARRAKIS_TEST_UDP").unwrap_or_default().split(',').filter(|s| !s.is_empty()) {
        client.grant(udp_filter(p.parse().unwrap())).unwrap();
    }
    let (info, fds) = client.nic().unwrap();
    let mut nic = make_nic(fds);
    // A daemon restarted under the child: connect again (registering again is a no-op).
    let again = |client: &mut Client| {
        *client = Client::connect(Path::new(&socket)).unwrap();
        client.register(&name).unwrap();
    };
    say(&format!("ready {}", serde_json::to_string(&info).unwrap()));
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { return };
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["send", src, dst, text] => {
                send(&mut nic, &udp4(src.parse().unwrap(), dst.parse().unwrap(), text.as_bytes()));
                say("sent");
            }
            ["recv"] => match recv(&mut nic, PATIENCE) {
                Some((s, d, p)) => say(&format!("got {s} {d} {}", String::from_utf8_lossy(&p))),
                None => say("none"),
            },
            ["echo", n] => {
                say("echoing");
                let n: u64 = n.parse().unwrap();
                let mut done = 0;
                while done < n {
                    let Some((s, d, p)) = recv(&mut nic, PATIENCE) else { break };
                    send(&mut nic, &udp4(d, s, &p));
                    done += 1;
                }
                say(&format!("echoed {done}"));
            }
            ["burst", src, dst, n] => {
                let (src, dst, n): (u16, u16, u64) =
                    (src.parse().unwrap(), dst.parse().unwrap(), n.parse().unwrap());
                let (mut sent, mut echoed) = (0u64, 0u64);
                while echoed < n {
                    while sent < n && sent - echoed < 32 {
                        send(&mut nic, &udp4(src, dst, sent.to_string().as_bytes()));
                        sent += 1;
                    }
                    match recv(&mut nic, PATIENCE) {
                        Some((_, _, p)) if p == echoed.to_string().as_bytes() => echoed += 1,
                        Some(_) => break, // out of order or foreign: counted as a failure
                        None => break,
                    }
                }
                say(&format!("burst {sent} {echoed}"));
            }
            ["nic"] => {
                let (info, fds) = client
                    .nic()
                    .or_else(|_| {
                        again(&mut client);
                        client.nic()
                    })
                    .unwrap();
                nic = make_nic(fds);
                say(&format!("nic {}", serde_json::to_string(&info).unwrap()));
            }
            ["grant", port] => match client.grant(udp_filter(port.parse().unwrap())).or_else(|e| {
                if !matches!(e, ClientError::Io { .. }) {
                    return Err(e);
                }
                again(&mut client);
                client.grant(udp_filter(port.parse().unwrap()))
            }) {
                Ok((id, _)) => say(&format!("granted {id}")),
                Err(e) => say(&format!("refused {e}")),
            },
            _ => say("what?"),
        }
    }
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

pub fn udp_filter(port: u16) -> Filter {
    Filter::new(Direction::Both, Proto::Udp, "::".parse().unwrap(), PortRange::one(port).unwrap(), vec![])
        .unwrap()
}

fn say(s: &str) {
    println!("\n@ {s}");
    std::io::stdout().flush().unwrap();
}

fn make_nic(fds: [OwnedFd; 3]) -> EmulatorNic {
    let [region, to_container, to_switch] = fds;
    EmulatorNic::from_fds(NicFds { region, to_container, to_switch }).unwrap()
}

/// Waits (on the doorbell, in slices) until `ready` says yes or the patience runs out.
fn wait_nic(
    nic: &mut EmulatorNic,
    deadline: Instant,
    mut ready: impl FnMut(&mut EmulatorNic) -> bool,
) -> bool {
    // As the library OS does after each pass: ring the doorbells the pass asked for (the
    // switch's, when it sleeps; a peer's). Without this the switch saw these frames only when
    // it happened to poll, or after its sleep cap.
    let ring = |nic: &mut EmulatorNic| {
        let mut due = Vec::new();
        nic.take_rings(&mut due);
        due.iter().for_each(|d| d.ring());
    };
    while Instant::now() < deadline {
        if ready(nic) {
            ring(nic);
            return true;
        }
        ring(nic);
        if nic.prepare_sleep() {
            if let Some(fd) = nic.doorbell() {
                let mut p = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
                let slice = rustix::event::Timespec { tv_sec: 0, tv_nsec: 50_000_000 };
                let _ = rustix::event::poll(&mut p, Some(&slice));
            }
            nic.ack_doorbell();
        }
    }
    false
}

fn send(nic: &mut EmulatorNic, frame: &[u8]) {
    let deadline = Instant::now() + PATIENCE;
    let ok = wait_nic(nic, deadline, |n| match n.transmit(SmolInstant::now()) {
        Some(t) => {
            t.consume(frame.len(), |b| b.copy_from_slice(frame));
            true
        }
        None => false,
    });
    assert!(ok, "the NIC's tx ring stayed full");
}

fn recv(nic: &mut EmulatorNic, patience: Duration) -> Option<(u16, u16, Vec<u8>)> {
    let mut got = None;
    wait_nic(nic, Instant::now() + patience, |n| match n.receive(SmolInstant::now()) {
        Some((rx, _)) => {
            got = rx.consume(parse_udp4);
            true
        }
        None => false,
    });
    got
}
