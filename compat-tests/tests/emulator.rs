//! The library OS over the emulator backend (`ARRAKIS_BACKEND=emulator`), end to end:
//! programs under the shim register with a daemon, get a virtual NIC and talk to each other
//! through the switch; ports outside their blocks are granted at `bind`; destinations no
//! container serves go to the kernel.
//!
//! `emulator/emu_peer.c` plays every role: a TCP+UDP echo server under the shim; a client
//! under the shim (4 connections at once, 1 MiB each way checked byte by byte, 16 UDP
//! datagrams); a kernel client of the same server (this test process, not under the shim:
//! it reaches the listener's kernel half); a client under the shim of a server not under it
//! (this test process: the socket is handed to the kernel); a `bind` to the server's ports
//! from another container (`EADDRINUSE`, for UDP too, where no kernel socket holds the
//! port); and a `fork` (the child's inherited library socket is `ENETDOWN`, its new socket
//! is the kernel's, the parent's connection goes on).
//!
//! Two daemons: [`fake_daemon`](compat_tests::fake_daemon) (the library OS by itself) and
//! the real `arrakis daemon` with its switch (from target/release, next to the shim).
//!
//! Needs the shim built first (`cargo build --release`, or `ARRAKIS_SHIM=...`) and gcc.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use compat_tests::fake_daemon::FakeDaemon;
use compat_tests::runner::{base_env, build_c, locate_shim, shim_candidates};

/// How long any program of the test may run.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

struct Setup {
    shim: PathBuf,
    peer: PathBuf,
    dir: PathBuf,
}

fn setup(name: &str) -> Setup {
    let shim = locate_shim(&shim_candidates(Path::new(env!("CARGO_TARGET_TMPDIR"))))
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test dir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("emulator/emu_peer.c");
    let peer = dir.join("emu_peer");
    build_c(&src, &peer).unwrap_or_else(|e| panic!("{e}"));
    Setup { shim, peer, dir }
}

impl Setup {
    /// `emu_peer args` under the shim with the emulator backend, talking to `socket`.
    fn under_shim(&self, socket: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.peer);
        cmd.args(args)
            .env_clear()
            .envs(base_env())
            .env("LD_PRELOAD", &self.shim)
            .env("ARRAKIS_BACKEND", "emulator")
            .env("ARRAKIS_SOCKET", socket)
            .env("ARRAKIS_LOG", "info")
            .env("ARRAKIS_LOG_FILE", self.dir.join("shim.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("shim.log")).unwrap_or_default()
    }
}

/// Runs `cmd` to its end (killed after [`RUN_TIMEOUT`]); its output lines.
fn run(mut cmd: Command) -> Vec<String> {
    let mut child = cmd.spawn().expect("start the program");
    let out = child.stdout.take().expect("piped stdout");
    let err = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(out).read_to_string(&mut s);
        let mut e = String::new();
        let _ = BufReader::new(err).read_to_string(&mut e);
        let _ = tx.send((s, e));
    });
    let end = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    let lines: Vec<String> = out.lines().map(str::to_string).collect();
    assert!(status.is_some_and(|s| s.success()), "{cmd:?} failed ({status:?}): {lines:?}\nstderr: {err}");
    lines
}

/// A server under the shim, running until dropped.
struct Server {
    child: Child,
    /// What it printed up to "ready".
    lines: Vec<String>,
    /// What it prints after.
    rx: mpsc::Receiver<String>,
    /// Its TCP and UDP ports.
    ports: (u16, u16),
}

impl Server {
    fn start(mut cmd: Command) -> Server {
        let mut child = cmd.spawn().expect("start the server");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { return };
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let mut lines = Vec::new();
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) if l == "ready" => return Server { child, lines, rx, ports: (0, 0) },
                Ok(l) => lines.push(l),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the server did not get ready: {lines:?}");
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the server prints (bounded wait).
    fn next_line(&self) -> Option<String> {
        self.rx.recv_timeout(Duration::from_secs(20)).ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port of 127.0.0.1 free in the kernel for TCP and UDP, below the kernel's ephemeral
/// range and the daemons' blocks (so no container owns it by accident). Never the same
/// twice in this test process (its tests run in parallel).
fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 1_000) as u16 * 8;
    (0..200)
        .map(|_| base + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
        .find(|&p| {
            TcpListener::bind(("127.0.0.1", p)).is_ok() && std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
        })
        .expect("a free port")
}

/// A server not under the shim: answers each connection with "kernel:" + what it read.
fn kernel_server() -> (u16, std::thread::JoinHandle<()>) {
    let port = free_port();
    let l = TcpListener::bind(("127.0.0.1", port)).expect("kernel server");
    let h = std::thread::spawn(move || {
        if let Ok((mut c, _)) = l.accept() {
            let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
            let mut b = [0u8; 64];
            let n = c.read(&mut b).unwrap_or(0);
            let _ = c.write_all(&[b"kernel:".as_slice(), &b[..n]].concat());
        }
    });
    (port, h)
}

/// Everything the two daemons must both get right. Returns the server, still running (its
/// counters live as long as it does).
fn scenario(s: &Setup, socket: &Path) -> Server {
    let (tport, uport) = (free_port(), free_port());
    let (t, u) = (tport.to_string(), uport.to_string());
    let mut server = Server::start(s.under_shim(socket, &["server", &t, &u]));
    server.ports = (tport, uport);
    assert_eq!(server.lines, ["#lib=1"], "the server's sockets are the library OS's\n{}", s.log());

    // A client under the shim: several connections, MiB of data, UDP — all through the switch.
    let out = run(s.under_shim(socket, &["client", &t, &u, "4", "1048576"]));
    assert_eq!(out, ["#lib=1", "tcp ok 4 1048576", "udp lib=1", "udp ok 16"], "{}", s.log());

    // The client's four connections ended with its close()s.
    for _ in 0..4 {
        assert_eq!(server.next_line().as_deref(), Some("eof"), "{}", s.log());
    }
    // A client that exits without closing its connection: the exit sends its FIN, as the
    // kernel does for a dying process (else the server would hold the connection for ever).
    let out = run(s.under_shim(socket, &["hold", &t]));
    assert_eq!(out, ["hold ok"]);
    assert_eq!(server.next_line().as_deref(), Some("eof"), "{}", s.log());

    // A kernel client of the same server reaches its listener's kernel half.
    let mut c = TcpStream::connect(("127.0.0.1", tport)).expect("kernel client connects");
    c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    c.write_all(b"from the kernel").expect("send");
    let mut b = [0u8; 15];
    c.read_exact(&mut b).expect("the echo");
    assert_eq!(&b, b"from the kernel");
    drop(c);

    // A server not under the shim, from under the shim: the socket goes to the kernel.
    let (kport, kserver) = kernel_server();
    let out = run(s.under_shim(socket, &["connect", &kport.to_string()]));
    assert_eq!(out, ["#lib=0", "answer kernel:hello"], "{}", s.log());
    kserver.join().expect("kernel server");

    // The server's ports belong to its container: another container's bind is refused.
    let out = run(s.under_shim(socket, &["bind", "udp", &u]));
    assert_eq!(out, ["bind EADDRINUSE"], "UDP: only the grant holds the port\n{}", s.log());
    let out = run(s.under_shim(socket, &["bind", "tcp", &t]));
    assert_eq!(out, ["bind EADDRINUSE"]);
    // A port nobody holds is granted.
    let free = free_port().to_string();
    let out = run(s.under_shim(socket, &["bind", "udp", &free]));
    assert_eq!(out, ["bind ok"]);

    // fork: the child never drives the parent's NIC.
    let out = run(s.under_shim(socket, &["fork", &t]));
    assert_eq!(
        out,
        [
            "child poll: 1 revents=0x20",
            "child inherited: ENETDOWN",
            "child new: ok lib=0",
            "parent: ok lib=1"
        ],
        "{}",
        s.log()
    );
    server
}

#[test]
fn emulator_backend_over_a_fake_daemon() {
    let s = setup("emulator-fake");
    let daemon = FakeDaemon::start(&s.dir).expect("fake daemon");
    let server = scenario(&s, &daemon.socket);
    let pid = server.pid();
    // The client's 4 MiB (4 connections of 1 MiB) need at least this many full frames.
    let frames = (4 << 20) / u64::from(arrakis_backends::emulator::Geometry::default().buf_size);
    let delivered = daemon.delivered_to(pid);
    assert!(
        delivered > frames,
        "the server's frames went through the switch: {delivered} of {frames} or more"
    );
    let names = daemon.names();
    assert!(names.iter().any(|n| n == "emu_peer"), "registered under the program's name: {names:?}");
    // Grants at bind: the server's two ports and the free one (and the refused ones asked).
    let grants = daemon
        .requests()
        .iter()
        .filter(|(_, r)| matches!(r, arrakis_backends::proto::Request::Grant { .. }))
        .count();
    assert!(grants >= 5, "grants asked: {grants}");
}

/// `arrakis daemon` (next to the shim) in the test's directory; it starts its switch on the
/// first NIC. Stopped (daemon and switch) on drop.
struct RealDaemon {
    bin: PathBuf,
    socket: PathBuf,
    dir: PathBuf,
    child: Child,
}

impl RealDaemon {
    fn start(s: &Setup) -> RealDaemon {
        let bin = s.shim.parent().expect("the shim's directory").join("arrakis");
        assert!(bin.is_file(), "{} not built: run `cargo build --release`", bin.display());
        let socket = s.dir.join("ctl.sock");
        let child = Self::spawn(&bin, &socket, &s.dir);
        RealDaemon { bin, socket, dir: s.dir.clone(), child }
    }

    /// Starts the daemon and waits (bounded) until it answers.
    fn spawn(bin: &Path, socket: &Path, dir: &Path) -> Child {
        let log = std::fs::File::options().create(true).append(true).open(dir.join("daemon.log"));
        let mut child = Command::new(bin)
            .args(["daemon", "--socket"])
            .arg(socket)
            .arg("--state-dir")
            .arg(dir)
            .env_clear()
            .envs(base_env())
            .env("ARRAKIS_RUN_DIR", dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.expect("daemon log"))
            .spawn()
            .expect("start arrakis daemon");
        let up = (0..200).any(|_| {
            let ok = std::os::unix::net::UnixStream::connect(socket).is_ok();
            if !ok {
                std::thread::sleep(Duration::from_millis(50));
            }
            ok
        });
        if !up {
            let _ = child.kill();
            let _ = child.wait();
            panic!("arrakis daemon did not answer at {}", socket.display());
        }
        child
    }

    /// `kill -9` of the daemon (its switch goes on), then a new one on the same socket and
    /// store.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.bin, &self.socket, &self.dir);
    }

    /// The daemon's counters (`arrakis stats --json`).
    fn stats(&self) -> arrakis_backends::proto::Response {
        let o = Command::new(&self.bin)
            .args(["stats", "--json", "--socket"])
            .arg(&self.socket)
            .output()
            .expect("arrakis stats");
        assert!(o.status.success(), "arrakis stats: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).expect("stats as the daemon's response")
    }
}

impl Drop for RealDaemon {
    fn drop(&mut self) {
        let switch = std::fs::read_to_string(self.dir.join("switch.pid")).ok();
        // SAFETY: signals to the processes this test started (the daemon, its switch).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(pid) = switch.and_then(|p| p.trim().parse::<i32>().ok()).filter(|&p| p > 1) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

#[test]
fn emulator_backend_over_the_daemon_and_its_switch() {
    let s = setup("emulator-daemon");
    let daemon = RealDaemon::start(&s);
    let server = scenario(&s, &daemon.socket);
    let pid = server.pid();
    let arrakis_backends::proto::Response::Stats { switch, .. } = daemon.stats() else {
        panic!("not a stats answer")
    };
    let traffic = switch.expect("the switch reports").containers;
    let before = traffic
        .iter()
        .find(|c| c.pid == pid)
        .unwrap_or_else(|| panic!("server {pid} in {traffic:?}"))
        .clone();
    // 4 MiB came in and went back out; each flow went through the switch until both ends
    // had their secure binding (how much that was depends on timing: the daemon is asked
    // in the background after a flow's first frames).
    assert!(before.rx_frames > 8 && before.tx_frames > 8, "{before:?}");

    // Long-lived flows leave the switch: 2000 TCP and 2000 UDP round trips on one connection
    // and one UDP socket, of which the switch sees only the first few (until both ends have
    // their binding).
    let n = 2000;
    let (t, u) = server.ports;
    let out =
        run(s.under_shim(&daemon.socket, &["pingpong", &t.to_string(), &u.to_string(), &n.to_string()]));
    assert_eq!(out, [format!("pingpong ok {n}")], "{}", s.log());
    let arrakis_backends::proto::Response::Stats { switch, .. } = daemon.stats() else {
        panic!("not a stats answer")
    };
    let traffic = switch.expect("the switch reports").containers;
    let after = traffic.iter().find(|c| c.pid == pid).expect("server still there");
    let through_switch = after.rx_frames - before.rx_frames;
    assert!(
        through_switch < 2 * n / 5,
        "{through_switch} of at least {} frames to the server went through the switch: no binding?\n{after:?}\n{}",
        2 * n,
        s.log()
    );
    // With bindings off, every frame goes through the switch.
    let mut cmd = s.under_shim(&daemon.socket, &["pingpong", &t.to_string(), &u.to_string(), "200"]);
    cmd.env("ARRAKIS_BINDINGS", "0");
    assert_eq!(run(cmd), ["pingpong ok 200"]);
    let arrakis_backends::proto::Response::Stats { switch, .. } = daemon.stats() else {
        panic!("not a stats answer")
    };
    let traffic = switch.expect("the switch reports").containers;
    let last = traffic.iter().find(|c| c.pid == pid).expect("server still there");
    assert!(last.rx_frames - after.rx_frames >= 400, "{last:?} after {after:?}");
    // Nonblocking reads until EAGAIN, then poll or read again at once (the shim answers an
    // EAGAIN without the world lock when nothing waits on the device): no read after poll
    // said readable finds nothing, busy-polling reads get their data, and the ends of input
    // read as 0. Over the bindings, then over the switch's rings.
    let want = |n: u32| format!("nbrecv ok {n} lib=1 lied 0 eof 0 shut_rd EAGAIN then 0");
    let out = run(s.under_shim(&daemon.socket, &["nbrecv", &t.to_string(), "1000"]));
    assert_eq!(out, [want(1000)], "{}", s.log());
    let mut cmd = s.under_shim(&daemon.socket, &["nbrecv", &t.to_string(), "300"]);
    cmd.env("ARRAKIS_BINDINGS", "0");
    assert_eq!(run(cmd), [want(300)], "{}", s.log());
    let log = std::fs::read_to_string(s.dir.join("daemon.log")).unwrap_or_default();
    assert!(log.contains("started the switch"), "{log}");
}

#[test]
fn a_process_under_the_shim_outlives_a_daemon_restart() {
    let s = setup("emulator-restart");
    let mut daemon = RealDaemon::start(&s);
    let (tport, uport) = (free_port(), free_port());
    let (t, u) = (tport.to_string(), uport.to_string());
    let server = Server::start(s.under_shim(&daemon.socket, &["server", &t, &u]));
    assert_eq!(server.lines, ["#lib=1"], "{}", s.log());
    let (p1, p2) = (free_port().to_string(), free_port().to_string());
    let mut cmd = s.under_shim(&daemon.socket, &["rebind", "udp", &p1, &p2]);
    cmd.stdin(Stdio::piped());
    let mut rebind = cmd.spawn().expect("start rebind");
    let mut lines = BufReader::new(rebind.stdout.take().expect("stdout")).lines();
    let first = lines.next().and_then(Result::ok);
    assert_eq!(first.as_deref(), Some("first ok lib=1"), "{}", s.log());

    daemon.restart();
    // The same process asks for its next grant over a new connection to the new daemon.
    let mut stdin = rebind.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("go");
    drop(stdin);
    let second = lines.next().and_then(Result::ok);
    assert_eq!(second.as_deref(), Some("second ok lib=1"), "{}", s.log());
    assert!(rebind.wait().expect("rebind").success());
    // The server's NIC still carries traffic (the new daemon adopted the running switch).
    let out = run(s.under_shim(&daemon.socket, &["client", &t, &u, "2", "65536"]));
    assert_eq!(out, ["#lib=1", "tcp ok 2 65536", "udp lib=1", "udp ok 16"], "{}", s.log());
    drop(server);
}

/// A server built as memcached is (the main thread's epoll, made first, waits for the
/// listener alone; a worker's epoll serves the connections): the main thread's instance,
/// whose every wake-up by the device's doorbell was for the worker, gives the doorbell up,
/// and still accepts the next connection (through its wake eventfd), which takes the
/// doorbell back. Spinning is off in the server, so every frame that arrives while its
/// threads sleep rings the doorbell (deterministically, not by timing).
#[test]
fn an_epoll_woken_only_for_others_gives_up_the_doorbell_and_still_accepts() {
    let s = setup("emulator-bell");
    let daemon = RealDaemon::start(&s);
    let (tport, uport) = (free_port(), free_port());
    let (t, u) = (tport.to_string(), uport.to_string());
    let mut cmd = s.under_shim(&daemon.socket, &["epollsrv", &t, &u]);
    cmd.env("ARRAKIS_LOG", "info,arrakis::libos=debug")
        .env("ARRAKIS_SPIN_US", "0")
        .env("ARRAKIS_SPIN_MAX_US", "0");
    let server = Server::start(cmd);
    assert_eq!(server.lines, ["#lib=1"], "{}", s.log());
    let gave_up = "epoll gives up the device's doorbell";
    let took = "epoll takes the device's doorbell back";

    let out = run(s.under_shim(&daemon.socket, &["pingpong", &t, &u, "300"]));
    assert_eq!(out, ["pingpong ok 300"], "{}", s.log());
    assert_eq!(server.next_line().as_deref(), Some("eof"), "{}", s.log());
    let log = s.log();
    assert!(log.contains(gave_up), "the listener's epoll kept the doorbell:\n{log}");

    // A new connection: the worker (or the progress thread) takes its SYN and wakes the
    // listener's instance, which has events again and takes the doorbell back.
    let out = run(s.under_shim(&daemon.socket, &["pingpong", &t, &u, "50"]));
    assert_eq!(out, ["pingpong ok 50"], "{}", s.log());
    assert_eq!(server.next_line().as_deref(), Some("eof"), "{}", s.log());
    let log = s.log();
    assert!(log.contains(took), "{log}");
}

/// UDP datagrams of every size up to the family's largest (65,507 bytes over IPv4, 65,527
/// over IPv6) go from one container to another and back whole, as on Linux's loopback: the
/// NICs' buffers hold the largest IP packet, so nothing is fragmented or lost in the switch.
/// The same program natively gives the expected lines.
#[test]
fn udp_datagrams_up_to_the_largest_cross_the_switch_whole() {
    let s = setup("emulator-bigudp");
    let daemon = RealDaemon::start(&s);
    let native = |args: &[&str]| {
        let mut c = Command::new(&s.peer);
        c.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    };
    let port_of = |sink: &Server| {
        let l = sink.lines.first().cloned().unwrap_or_default();
        l.split_whitespace().nth(1).map(str::to_owned).unwrap_or_else(|| panic!("no port in {l:?}"))
    };
    for fam in ["4", "6"] {
        let sink = Server::start(native(&["bigsink", fam]));
        let want = run(native(&["bigudp", fam, &port_of(&sink)]));
        drop(sink);
        assert!(
            want.len() > 8 && want.iter().all(|l| l.ends_with(" ok") || l == "lib=0"),
            "natively: {want:?}"
        );

        let sink = Server::start(s.under_shim(&daemon.socket, &["bigsink", fam]));
        assert!(sink.lines.first().is_some_and(|l| l.ends_with("lib=1")), "{:?}\n{}", sink.lines, s.log());
        let got = run(s.under_shim(&daemon.socket, &["bigudp", fam, &port_of(&sink)]));
        let want: Vec<String> =
            want.into_iter().map(|l| if l == "lib=0" { "lib=1".to_owned() } else { l }).collect();
        assert_eq!(got, want, "IPv{fam}\n{}", s.log());
    }
}

#[test]
fn no_daemon_means_the_kernel_path_and_one_warning() {
    let s = setup("emulator-nodaemon");
    let socket = s.dir.join("nobody.sock");
    let mut cmd = s.under_shim(&socket, &["bind", "tcp", "0"]);
    cmd.env("ARRAKIS_LOG", "warn");
    let out = run(cmd);
    assert_eq!(out, ["bind ok"]);
    let log = s.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("arrakis daemon")).collect();
    assert_eq!(warnings.len(), 1, "one line naming the fix: {log}");
    assert!(warnings[0].contains("kernel path"), "{log}");
}
