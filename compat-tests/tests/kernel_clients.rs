//! A listener of the library OS also serves kernel clients (`ARRAKIS_KERNEL_CLIENTS=1`):
//! `kclients/kclient_server.c` runs under the shim with `ARRAKIS_BACKEND=loopback`, serves a
//! client of its own process through the library OS, then two clients of this test process
//! (not under the shim, so plain kernel sockets) — one through a blocking `accept`, one
//! announced by `epoll_wait` — and each must get its echo. Natively the same program must
//! print the same lines (bar `#lib=` and who accepted).
//!
//! Needs the shim built first (`cargo build --release`, or `ARRAKIS_SHIM=...`) and gcc.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use compat_tests::runner::{base_env, build_c, locate_shim, shim_candidates};

/// Runs the server (under the shim if `shim` is given), plays the two kernel clients, and
/// returns its output lines.
fn run(program: &Path, shim: Option<&Path>) -> Vec<String> {
    let mut cmd = Command::new(program);
    cmd.env_clear().envs(base_env()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    if let Some(s) = shim {
        cmd.env("LD_PRELOAD", s).env("ARRAKIS_BACKEND", "loopback").env("ARRAKIS_KERNEL_CLIENTS", "1");
    }
    let mut child = cmd.spawn().expect("start the server");
    let out = child.stdout.take().expect("piped stdout");
    let mut lines = Vec::new();
    let mut reader = BufReader::new(out);
    let mut port = None;
    let mut line = String::new();
    while reader.read_line(&mut line).expect("read the server's output") > 0 {
        let l = line.trim_end().to_string();
        line.clear();
        if let Some(p) = l.strip_prefix("port ") {
            port = p.parse::<u16>().ok();
            lines.push(l);
            break;
        }
        lines.push(l);
    }
    let port = port.unwrap_or_else(|| panic!("the server printed no port: {lines:?}"));
    for msg in ["first", "second"] {
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("kernel client connects");
        c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        c.write_all(msg.as_bytes()).expect("send");
        let mut reply = String::new();
        c.read_to_string(&mut reply).expect("the echo comes back");
        assert_eq!(reply, format!("echo:{msg}"), "kernel client {msg}");
    }
    for l in reader.lines() {
        lines.push(l.expect("read the server's output"));
    }
    let status = child.wait().expect("wait for the server");
    assert!(status.success(), "the server failed ({status}): {lines:?}");
    lines
}

#[test]
fn library_listener_serves_kernel_clients() {
    let shim = locate_shim(&shim_candidates(Path::new(env!("CARGO_TARGET_TMPDIR"))))
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kclients");
    std::fs::create_dir_all(&dir).expect("create the build dir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("kclients/kclient_server.c");
    let bin = dir.join("kclient_server");
    build_c(&src, &bin).unwrap_or_else(|e| panic!("{e}"));

    let native = run(&bin, None);
    let shimmed = run(&bin, Some(&shim));
    println!("native: {native:#?}\nshim: {shimmed:#?}");
    assert_eq!(native.first().map(String::as_str), Some("#lib=0"));
    assert_eq!(shimmed.first().map(String::as_str), Some("#lib=1"), "the listener must be the library OS's");
    // Under the shim the in-process client is served by the library OS, the others by the
    // kernel half; natively all are kernel sockets. Everything else is the same.
    assert!(
        shimmed.iter().any(|l| l == "in-process client: got \"inproc\" (accepted fd is library)"),
        "{shimmed:?}"
    );
    assert!(
        shimmed.iter().any(|l| l == "first kernel client: got \"first\" (accepted fd is kernel)"),
        "{shimmed:?}"
    );
    assert!(
        shimmed.iter().any(|l| l == "second kernel client: got \"second\" (accepted fd is kernel)"),
        "{shimmed:?}"
    );
    let strip = |v: &[String]| -> Vec<String> {
        v.iter()
            .filter(|l| !l.starts_with("#lib=") && !l.starts_with("port "))
            .map(|l| l.split(" (accepted fd is").next().unwrap_or(l).to_string())
            .collect()
    };
    assert_eq!(strip(&native), strip(&shimmed));
}
