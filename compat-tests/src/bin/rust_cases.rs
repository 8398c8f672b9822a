//! Differential cases written against Rust's std (and `libc` where std has no
//! wrapper): std::fs, std::net (TCP/UDP over 127.0.0.1 and ::1), Unix
//! sockets, std::process (posix_spawn and fork+exec paths) and threads.
//!
//! Prints `case: observation` lines like the C programs, and the `#shim=`
//! meta line at start (also in every child it spawns, whose output is relayed
//! with `#` lines passed through untouched). `rust_cases child CASE MODE` is
//! the child mode.

use std::borrow::Borrow;
use std::ffi::{CStr, CString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

fn line(s: &str) {
    let mut out = io::stdout().lock();
    // A failed write to stdout cannot be reported anywhere better.
    let _ = out.write_all(s.as_bytes());
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// One observation line under `case`.
fn obs(case: &str, msg: impl AsRef<str>) {
    line(&format!("{case}: {}", msg.as_ref()));
}

/// errno value -> symbolic name.
fn errname(e: i32) -> String {
    extern "C" {
        fn strerrorname_np(errnum: libc::c_int) -> *const libc::c_char;
    }
    // SAFETY: strerrorname_np takes any int and returns NULL or a pointer
    // to a static NUL-terminated string.
    let p = unsafe { strerrorname_np(e) };
    if p.is_null() {
        format!("E#{e}")
    } else {
        // SAFETY: non-NULL results point to static C strings.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// "ok(value)" or "err(Kind ERRNO)".
fn res<T: std::fmt::Debug, E: Borrow<io::Error>>(r: &Result<T, E>) -> String {
    match r {
        Ok(v) => format!("ok({v:?})"),
        Err(e) => err(e.borrow()),
    }
}

fn err(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("err({:?} {})", e.kind(), errname(n)),
        None => format!("err({:?})", e.kind()),
    }
}

fn last_errno() -> String {
    errname(io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

/// Whether `read` resolves into libarrakis (the shim-presence meta line).
fn shim_meta() {
    let name = CString::new("read").expect("no NUL");
    // SAFETY: dlsym with RTLD_DEFAULT and a valid C string.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let mut shim = 0;
    // SAFETY: dladdr only inspects the address and fills `info`.
    if !p.is_null() && unsafe { libc::dladdr(p, &mut info) } != 0 && !info.dli_fname.is_null() {
        // SAFETY: dli_fname is a NUL-terminated path owned by the loader.
        let f = unsafe { CStr::from_ptr(info.dli_fname) }.to_string_lossy();
        if f.contains("libarrakis") {
            shim = 1;
        }
    }
    line(&format!("#shim={shim}"));
}

fn open_fds() -> String {
    let mut v: Vec<i32> = match fs::read_dir("/proc/self/fd") {
        Ok(d) => d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect(),
        Err(e) => return err(&e),
    };
    v.sort_unstable();
    format!("{v:?}")
}

fn cloexec(fd: i32) -> String {
    // SAFETY: F_GETFD on any int is harmless.
    let f = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if f < 0 {
        last_errno()
    } else if f & libc::FD_CLOEXEC != 0 {
        "CLOEXEC".into()
    } else {
        "-".into()
    }
}

// ---- child mode -----------------------------------------------------------

fn child_main(args: &[String]) -> i32 {
    let case = args.get(2).map(String::as_str).unwrap_or("child");
    match args.get(3).map(String::as_str) {
        Some("env") => {
            let mut vars: Vec<String> = std::env::vars_os()
                .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
                .filter(|kv| !kv.starts_with("LD_PRELOAD=") && !kv.starts_with("ARRAKIS_"))
                .collect();
            vars.sort();
            obs(case, format!("child env {vars:?}"));
            obs(case, format!("child fds {}", open_fds()));
            0
        }
        Some("upper") => {
            let mut s = String::new();
            let r = io::stdin().read_to_string(&mut s);
            obs(case, format!("child read {}", res(&r)));
            print!("{}", s.to_uppercase());
            let _ = io::stdout().flush();
            0
        }
        Some("exit") => args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1),
        _ => 2,
    }
}

// ---- files ----------------------------------------------------------------

fn fs_cases() {
    let c = "rs_fs_write_read";
    obs(c, res(&fs::write("a.txt", b"hello from rust\n")));
    obs(c, res(&fs::read_to_string("a.txt")));
    obs(c, res(&fs::read("a.txt").map(|v| v.len())));

    let c = "rs_fs_metadata";
    let m = fs::metadata("a.txt");
    obs(c, res(&m.map(|m| (m.is_file(), m.len(), format!("{:o}", m.permissions().mode()), m.nlink()))));
    obs(c, res(&fs::set_permissions("a.txt", fs::Permissions::from_mode(0o600))));
    obs(c, res(&fs::metadata("a.txt").map(|m| format!("{:o}", m.mode() & 0o7777))));
    obs(c, res(&fs::symlink_metadata(".").map(|m| m.is_dir())));

    let c = "rs_fs_errors";
    obs(c, res(&File::open("missing.txt").map(|_| ())));
    obs(c, res(&fs::create_dir(".")));
    obs(c, res(&fs::remove_file(".")));
    obs(c, res(&fs::read_dir("a.txt").map(|_| ())));
    obs(c, res(&OpenOptions::new().write(true).create_new(true).open("a.txt").map(|_| ())));
    obs(c, res(&fs::read_to_string("a.txt/x")));
    obs(c, res(&fs::remove_dir("missing-dir")));
    obs(c, res(&File::create("missing-dir/x").map(|_| ())));

    let c = "rs_fs_dirs";
    obs(c, res(&fs::create_dir_all("d1/d2/d3")));
    for n in ["d1/f1", "d1/f2", "d1/d2/f3"] {
        obs(c, res(&fs::write(n, n)));
    }
    let mut names: Vec<String> = fs::read_dir("d1")
        .map(|d| d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned())).collect())
        .unwrap_or_default();
    names.sort();
    obs(c, format!("entries {names:?}"));
    obs(c, res(&fs::remove_dir("d1")));
    obs(c, res(&fs::remove_dir_all("d1")));
    obs(c, res(&fs::metadata("d1").map(|_| ())));

    let c = "rs_fs_rename_links";
    obs(c, res(&fs::write("r1", b"r1")));
    obs(c, res(&fs::rename("r1", "r2")));
    obs(c, res(&fs::rename("r1", "r3")));
    obs(c, res(&fs::copy("r2", "r2copy")));
    obs(c, res(&fs::hard_link("r2", "r2hard")));
    obs(c, res(&fs::metadata("r2").map(|m| m.nlink())));
    obs(c, res(&std::os::unix::fs::symlink("r2", "r2sym")));
    obs(c, res(&fs::read_link("r2sym")));
    obs(c, res(&fs::symlink_metadata("r2sym").map(|m| m.file_type().is_symlink())));
    obs(c, res(&fs::canonicalize("r2sym").map(|p| p.file_name().map(|s| s.to_owned()))));

    let c = "rs_file_seek_set_len_sync";
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open("s.dat");
    match f {
        Ok(mut f) => {
            obs(c, res(&f.write_all(b"0123456789")));
            obs(c, res(&f.seek(SeekFrom::Start(3))));
            let mut b = [0u8; 4];
            obs(c, res(&f.read(&mut b)));
            obs(c, format!("data {:?}", String::from_utf8_lossy(&b)));
            obs(c, res(&f.seek(SeekFrom::End(-2))));
            obs(c, res(&f.seek(SeekFrom::Current(-100))));
            obs(c, res(&f.set_len(4)));
            obs(c, res(&f.metadata().map(|m| m.len())));
            obs(c, res(&f.sync_all()));
            obs(c, res(&f.sync_data()));
            obs(c, res(&f.stream_position()));
        }
        Err(e) => obs(c, err(&e)),
    }

    let c = "rs_file_append_and_lines";
    for s in ["one\n", "two\n", "three\n"] {
        let r = OpenOptions::new()
            .append(true)
            .create(true)
            .open("log.txt")
            .and_then(|mut f| f.write_all(s.as_bytes()));
        obs(c, res(&r));
    }
    match File::open("log.txt") {
        Ok(f) => {
            let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
            obs(c, format!("lines {lines:?}"));
        }
        Err(e) => obs(c, err(&e)),
    }
}

// ---- network --------------------------------------------------------------

fn loopback(v6: bool) -> SocketAddr {
    if v6 {
        SocketAddr::from((Ipv6Addr::LOCALHOST, 0))
    } else {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    }
}

fn tcp_cases(v6: bool) {
    let sfx = if v6 { "v6" } else { "v4" };
    let c = format!("rs_tcp_echo_{sfx}");
    let c = c.as_str();
    let l = match TcpListener::bind(loopback(v6)) {
        Ok(l) => l,
        Err(e) => return obs(c, err(&e)),
    };
    let la = l.local_addr().expect("local_addr");
    obs(c, format!("listener ip={} port_set={}", la.ip(), la.port() != 0));
    let server = thread::spawn(move || -> io::Result<usize> {
        let (mut s, peer) = l.accept()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf)?;
        s.write_all(&buf[..n].to_ascii_uppercase())?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)?;
        Ok(peer.ip().is_loopback() as usize + rest.len())
    });
    match TcpStream::connect(la) {
        Ok(mut s) => {
            obs(c, res(&s.peer_addr().map(|a| a == la)));
            obs(c, res(&s.local_addr().map(|a| a.ip())));
            obs(c, res(&s.write_all(b"ping")));
            let mut buf = [0u8; 16];
            let n = s.read(&mut buf);
            obs(c, res(&n));
            obs(c, format!("data {:?}", String::from_utf8_lossy(&buf[..*n.as_ref().unwrap_or(&0)])));
            obs(c, res(&s.write_all(b"tail")));
            obs(c, res(&s.shutdown(std::net::Shutdown::Write)));
            obs(c, res(&s.read(&mut buf)));
        }
        Err(e) => obs(c, err(&e)),
    }
    obs(c, format!("server {:?}", server.join().map(|r| res(&r))));

    let c = format!("rs_tcp_nonblocking_timeouts_{sfx}");
    let c = c.as_str();
    let l = TcpListener::bind(loopback(v6)).expect("bind");
    obs(c, res(&l.set_nonblocking(true)));
    obs(c, res(&l.accept().map(|_| ())));
    let la = l.local_addr().expect("addr");
    let mut s = TcpStream::connect(la).expect("connect");
    let mut buf = [0u8; 8];
    obs(c, res(&s.set_read_timeout(Some(Duration::from_millis(30)))));
    obs(c, res(&s.read_timeout()));
    obs(c, res(&s.read(&mut buf)));
    obs(c, res(&s.set_read_timeout(Some(Duration::ZERO))));
    obs(c, res(&s.set_nonblocking(true)));
    obs(c, res(&s.read(&mut buf)));
    obs(c, res(&s.peek(&mut buf)));
    obs(c, res(&s.set_nodelay(true)));
    obs(c, res(&s.nodelay()));
    obs(c, res(&s.set_ttl(42)));
    obs(c, res(&s.ttl()));
    obs(c, res(&s.take_error()));
    let fd = s.as_raw_fd();
    match s.try_clone() {
        Ok(d) => {
            obs(c, format!("try_clone fd={} (orig {fd}) flags={}", d.as_raw_fd(), cloexec(d.as_raw_fd())))
        }
        Err(e) => obs(c, err(&e)),
    }

    let c = format!("rs_tcp_refused_{sfx}");
    let c = c.as_str();
    // A bound, non-listening socket: connecting to its port is refused.
    let fam = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain socket(2); the fd is owned below.
    let raw = unsafe { libc::socket(fam, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return obs(c, format!("socket failed {}", last_errno()));
    }
    // SAFETY: raw is a fresh fd we own.
    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
    let addr = match bind_loopback(owned.as_raw_fd(), v6) {
        Ok(a) => a,
        Err(e) => return obs(c, err(&e)),
    };
    obs(c, res(&TcpStream::connect(addr).map(|_| ())));
    obs(c, res(&TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map(|_| ())));
    drop(owned);
}

/// Bind `fd` to an ephemeral loopback port and return the address.
fn bind_loopback(fd: i32, v6: bool) -> io::Result<SocketAddr> {
    // SAFETY: zeroed sockaddr structs are valid; lengths match the types.
    unsafe {
        if v6 {
            let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_addr.s6_addr = Ipv6Addr::LOCALHOST.octets();
            let mut len = std::mem::size_of_val(&sa) as libc::socklen_t;
            if libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len) != 0
                || libc::getsockname(fd, &mut sa as *mut _ as *mut libc::sockaddr, &mut len) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(SocketAddr::from((Ipv6Addr::LOCALHOST, u16::from_be(sa.sin6_port))))
        } else {
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
            let mut len = std::mem::size_of_val(&sa) as libc::socklen_t;
            if libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len) != 0
                || libc::getsockname(fd, &mut sa as *mut _ as *mut libc::sockaddr, &mut len) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, u16::from_be(sa.sin_port))))
        }
    }
}

fn udp_cases(v6: bool) {
    let sfx = if v6 { "v6" } else { "v4" };
    let c = format!("rs_udp_{sfx}");
    let c = c.as_str();
    let (a, b) = match (UdpSocket::bind(loopback(v6)), UdpSocket::bind(loopback(v6))) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return obs(c, err(&e)),
    };
    let aa = a.local_addr().expect("addr");
    let ba = b.local_addr().expect("addr");
    obs(c, res(&b.send_to(b"datagram-1", aa)));
    obs(c, res(&b.send_to(b"dg2", aa)));
    let mut buf = [0u8; 64];
    let r = a.peek_from(&mut buf);
    obs(c, res(&r.as_ref().map(|(n, from)| (*n, *from == ba))));
    let r = a.recv_from(&mut buf);
    obs(c, res(&r.as_ref().map(|(n, from)| (*n, *from == ba))));
    obs(c, format!("data {:?}", String::from_utf8_lossy(&buf[..r.map(|x| x.0).unwrap_or(0)])));
    let mut small = [0u8; 2];
    obs(c, res(&a.recv(&mut small)));
    obs(c, res(&a.set_nonblocking(true)));
    obs(c, res(&a.recv(&mut buf)));
    obs(c, res(&b.send(b"x")));
    obs(c, res(&b.connect(aa)));
    obs(c, res(&b.peer_addr().map(|p| p == aa)));
    obs(c, res(&b.send(b"connected")));
    obs(c, res(&a.set_nonblocking(false)));
    obs(c, res(&a.set_read_timeout(Some(Duration::from_secs(5)))));
    obs(c, res(&a.recv(&mut buf)));
    obs(c, res(&a.set_read_timeout(Some(Duration::from_millis(20)))));
    obs(c, res(&a.recv(&mut buf)));
    obs(c, res(&a.set_broadcast(true)));
    obs(c, res(&a.broadcast()));
    obs(c, res(&b.send_to(&[0u8; 70000], aa)));
}

fn unix_cases() {
    let c = "rs_unix_stream_pair";
    match UnixStream::pair() {
        Ok((mut x, mut y)) => {
            obs(
                c,
                format!(
                    "fds {} {} {} {}",
                    x.as_raw_fd(),
                    y.as_raw_fd(),
                    cloexec(x.as_raw_fd()),
                    cloexec(y.as_raw_fd())
                ),
            );
            obs(c, res(&x.write_all(b"pair-data")));
            let mut buf = [0u8; 32];
            let n = y.read(&mut buf);
            obs(c, res(&n));
            obs(c, res(&x.shutdown(std::net::Shutdown::Write)));
            obs(c, res(&y.read(&mut buf)));
            obs(c, res(&x.set_nonblocking(true)));
            obs(c, res(&x.read(&mut buf)));
            obs(c, res(&x.set_nonblocking(false)));
            drop(y);
            obs(c, res(&x.write(b"x")));
        }
        Err(e) => obs(c, err(&e)),
    }

    let c = "rs_unix_listener_path";
    match UnixListener::bind("rs.sock") {
        Ok(l) => {
            obs(c, res(&l.local_addr().map(|a| a.as_pathname().map(|p| p.to_owned()))));
            let t = thread::spawn(move || -> io::Result<String> {
                let (mut s, _) = l.accept()?;
                let mut v = String::new();
                s.read_to_string(&mut v)?;
                Ok(v)
            });
            match UnixStream::connect("rs.sock") {
                Ok(mut s) => {
                    obs(c, res(&s.peer_addr().map(|a| a.as_pathname().map(|p| p.to_owned()))));
                    obs(c, res(&s.write_all(b"over unix path")));
                }
                Err(e) => obs(c, err(&e)),
            }
            obs(c, format!("server {:?}", t.join().map(|r| res(&r))));
        }
        Err(e) => obs(c, err(&e)),
    }
    obs(c, res(&UnixListener::bind("rs.sock").map(|_| ())));
    obs(c, res(&UnixStream::connect("no-such.sock").map(|_| ())));

    let c = "rs_unix_datagram";
    match (UnixDatagram::bind("dg-a.sock"), UnixDatagram::bind("dg-b.sock")) {
        (Ok(a), Ok(b)) => {
            obs(c, res(&b.send_to(b"dgram", "dg-a.sock")));
            let mut buf = [0u8; 16];
            let r = a.recv_from(&mut buf);
            obs(c, res(&r.as_ref().map(|(n, from)| (*n, from.as_pathname().map(|p| p.to_owned())))));
            obs(c, res(&b.send_to(b"x", "nobody.sock")));
            let (p, q) = UnixDatagram::pair().expect("pair");
            obs(c, res(&p.send(b"p1")));
            obs(c, res(&q.recv(&mut buf)));
            obs(c, res(&q.set_nonblocking(true)));
            obs(c, res(&q.recv(&mut buf)));
        }
        (Err(e), _) | (_, Err(e)) => obs(c, err(&e)),
    }
}

// ---- processes ------------------------------------------------------------

/// Relay a child's stdout: `#` meta lines raw, others under `case`.
fn relay(case: &str, out: &[u8]) {
    for l in String::from_utf8_lossy(out).lines() {
        if l.starts_with('#') {
            line(l);
        } else {
            obs(case, format!("captured| {l}"));
        }
    }
}

fn process_cases(me: &str) {
    let c = "rs_process_output";
    let r =
        Command::new(me).args(["child", c, "env"]).env("RS_MARK", "spawned").stdin(Stdio::null()).output();
    match r {
        Ok(o) => {
            obs(c, format!("status {:?}", o.status.code()));
            relay(c, &o.stdout);
        }
        Err(e) => obs(c, err(&e)),
    }

    // env_clear without pre_exec: std uses posix_spawn with an environment
    // that lacks LD_PRELOAD.
    let c = "rs_process_env_clear_spawn";
    let r = Command::new(me)
        .args(["child", c, "env"])
        .env_clear()
        .env("RS_MARK", "cleared")
        .stdin(Stdio::null())
        .output();
    match r {
        Ok(o) => {
            obs(c, format!("status {:?}", o.status.code()));
            relay(c, &o.stdout);
        }
        Err(e) => obs(c, err(&e)),
    }

    let c = "rs_process_env_clear_fork_exec";
    let mut cmd = Command::new(me);
    cmd.args(["child", c, "env"]).env_clear().env("RS_MARK", "cleared").stdin(Stdio::null());
    // SAFETY: the closure does nothing; it only forces the fork+exec path
    // (execvp) instead of posix_spawn.
    unsafe {
        cmd.pre_exec(|| Ok(()));
    }
    match cmd.output() {
        Ok(o) => {
            obs(c, format!("status {:?}", o.status.code()));
            relay(c, &o.stdout);
        }
        Err(e) => obs(c, err(&e)),
    }

    let c = "rs_process_exit_codes";
    for code in ["0", "3", "77"] {
        let st = Command::new(me).args(["child", c, "exit", code]).stdin(Stdio::null()).status();
        obs(c, res(&st.map(|s| s.code())));
    }
    obs(c, res(&Command::new("./no-such-program").status().map(|_| ())));

    let c = "rs_process_stdin_pipe";
    let child =
        Command::new(me).args(["child", c, "upper"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn();
    match child {
        Ok(mut ch) => {
            if let Some(mut si) = ch.stdin.take() {
                obs(c, res(&si.write_all(b"shout this\n")));
            }
            match ch.wait_with_output() {
                Ok(o) => {
                    obs(c, format!("status {:?}", o.status.code()));
                    relay(c, &o.stdout);
                }
                Err(e) => obs(c, err(&e)),
            }
        }
        Err(e) => obs(c, err(&e)),
    }
}

// ---- threads and raw fds --------------------------------------------------

fn thread_cases() {
    let c = "rs_threads_unix_echo";
    let mut handles = Vec::new();
    for id in 0..4u8 {
        handles.push(thread::spawn(move || -> io::Result<usize> {
            let (mut a, mut b) = UnixStream::pair()?;
            let echo = thread::spawn(move || -> io::Result<()> {
                let mut buf = [0u8; 256];
                loop {
                    let n = b.read(&mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    b.write_all(&buf[..n])?;
                }
            });
            let mut ok = 0;
            for i in 0..200 {
                let msg = format!("t{id}-{i}");
                a.write_all(msg.as_bytes())?;
                let mut got = vec![0u8; msg.len()];
                a.read_exact(&mut got)?;
                if got == msg.as_bytes() {
                    ok += 1;
                }
            }
            a.shutdown(std::net::Shutdown::Write)?;
            echo.join().map_err(|_| io::Error::other("echo thread panicked"))??;
            Ok(ok)
        }));
    }
    let results: Vec<String> = handles
        .into_iter()
        .map(|h| h.join().map(|r| res(&r)).unwrap_or_else(|_| "panicked".into()))
        .collect();
    obs(c, format!("{results:?}"));
    obs(c, format!("fds after {}", open_fds()));

    let c = "rs_libc_pipe_dup";
    let mut p = [0i32; 2];
    // SAFETY: p has room for two fds.
    let r = unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) };
    obs(c, format!("pipe2 = {r} fds={p:?} {} {}", cloexec(p[0]), cloexec(p[1])));
    // SAFETY: dup/dup2/close on fds this function owns; the buffers are valid.
    unsafe {
        let d = libc::dup(p[1]);
        obs(c, format!("dup = {d} {}", cloexec(d)));
        let d2 = libc::dup2(p[1], 30);
        obs(c, format!("dup2 = {d2} {}", cloexec(30)));
        let w = libc::write(30, b"raw".as_ptr().cast(), 3);
        let mut buf = [0u8; 8];
        let n = libc::read(p[0], buf.as_mut_ptr().cast(), buf.len());
        obs(c, format!("write = {w} read = {n} {:?}", String::from_utf8_lossy(&buf[..n.max(0) as usize])));
        let bad = libc::close(-1);
        obs(c, format!("close(-1) = {bad} {}", last_errno()));
        libc::close(d);
        libc::close(30);
        libc::close(p[0]);
        libc::close(p[1]);
    }

    let c = "rs_libc_epoll";
    // SAFETY: epoll/eventfd syscalls on fds owned here; buffers are valid.
    unsafe {
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        let ev = libc::eventfd(0, libc::EFD_NONBLOCK);
        let mut e = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 5 };
        let r = libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, ev, &mut e);
        obs(c, format!("ctl = {r}"));
        let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
        let n = libc::epoll_wait(ep, out.as_mut_ptr(), 4, 10);
        obs(c, format!("wait (timeout) = {n}"));
        let one: u64 = 1;
        libc::write(ev, (&one as *const u64).cast(), 8);
        let n = libc::epoll_wait(ep, out.as_mut_ptr(), 4, 0);
        let (evs, data) = (out[0].events, out[0].u64);
        obs(c, format!("wait = {n} events=0x{evs:x} data={data}"));
        libc::close(ev);
        libc::close(ep);
    }

    let c = "rs_proc_self_fd";
    obs(c, format!("fds {}", open_fds()));
    let f = File::open("/dev/null");
    obs(c, res(&f.as_ref().map(|f| (f.as_raw_fd(), cloexec(f.as_raw_fd())))));
    obs(c, format!("fds {}", open_fds()));
}

fn main() {
    shim_meta();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        std::process::exit(child_main(&args));
    }
    // SAFETY: umask has no memory-safety preconditions.
    unsafe { libc::umask(0o022) };
    let me = std::env::current_exe().expect("current_exe");
    let me = me.to_string_lossy().into_owned();
    fs_cases();
    for v6 in [false, true] {
        tcp_cases(v6);
        udp_cases(v6);
    }
    unix_cases();
    process_cases(&me);
    thread_cases();
}
