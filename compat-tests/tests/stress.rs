//! The TCP stress test (`stress/tcp_stress.c`) at its full acceptance sizes: one connection
//! carrying 1 GiB with every byte checked, 100,000 short connections through one listener, and
//! a burst of 1,000 non-blocking connects completed from the backlog before any accept. Each
//! phase runs as its own process, natively and then with `LD_PRELOAD=libarrakis.so`, one run
//! at a time (the machines have two shared cores), each killed after `RUN_TIMEOUT`.
//!
//! Every run must exit 0 and print one `PHASE: ok` summary line; its `#shim=` line must read 0
//! natively and 1 under the shim (the preload took effect), and its `#lib=` line tells who
//! served the sockets: 0 for kernel sockets (`/proc/self/fd/N` is `socket:[...]`), 1 for the
//! library OS's (an eventfd placeholder). Natively it must be 0.
//!
//! Under the shim the sockets must be the library OS's: `ARRAKIS_BACKEND=loopback`, `#lib=1`.
//! `ARRAKIS_STRESS_KERNEL=1` runs the shim with the kernel backend instead (and expects
//! `#lib=0`): the same sizes through the shim's pass-through path.
//!
//! Needs the shim built first (`cargo build --release`, or `ARRAKIS_SHIM=...`) and gcc.
//! `STRESS_TIMEOUT` (seconds per phase, default 300) is passed to the program.
//! Run alone with: `cargo test --release -p compat-tests --test stress -- --nocapture`.

use std::fs::{self, File};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use compat_tests::runner::{base_env, build_c, locate_shim, shim_candidates, RunResult};

/// Backstop per run: the program's own deadline (300 s per phase) and watchdog fire first.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// The phases and their acceptance sizes.
const PHASES: &[(&str, &str)] = &[("bulk", "1073741824"), ("short", "100000"), ("burst", "1000")];

/// The environment variable that makes the shim runs use the kernel backend.
const LOOPBACK_GATE: &str = "ARRAKIS_STRESS_KERNEL";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Kernel,
    Loopback,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Kernel => "kernel",
            Backend::Loopback => "loopback",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Native,
    Shim(Backend),
}

impl Mode {
    fn label(self) -> String {
        match self {
            Mode::Native => "native".into(),
            Mode::Shim(b) => format!("shim-{}", b.name()),
        }
    }

    /// The `#lib=` value the run must print.
    fn expected_lib(self) -> &'static str {
        match self {
            Mode::Native | Mode::Shim(Backend::Kernel) => "0",
            Mode::Shim(Backend::Loopback) => "1",
        }
    }
}

/// The backend of the shim runs: the loopback backend unless `ARRAKIS_STRESS_KERNEL=1`.
fn shim_backend() -> Backend {
    if std::env::var(LOOPBACK_GATE).is_ok_and(|v| v == "1") {
        Backend::Kernel
    } else {
        Backend::Loopback
    }
}

/// Runs `program args` in a fresh `dir` with the harness's minimal environment, plus
/// `STRESS_TIMEOUT` if the caller set it and, under the shim, the caller's `ARRAKIS_*`
/// variables (log settings), `ARRAKIS_BACKEND` and `LD_PRELOAD`. Output goes to files in
/// `dir`; the process group is killed after `RUN_TIMEOUT` and again after exit.
fn run_one(program: &Path, args: &[&str], dir: &Path, mode: Mode, shim: &Path) -> io::Result<RunResult> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::create_dir_all(dir)?;
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .envs(base_env())
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?)
        .process_group(0);
    if let Some(t) = std::env::var_os("STRESS_TIMEOUT") {
        cmd.env("STRESS_TIMEOUT", t);
    }
    if let Mode::Shim(backend) = mode {
        for (k, v) in std::env::vars_os() {
            let name = k.to_string_lossy();
            if name.starts_with("ARRAKIS_") && name != LOOPBACK_GATE {
                cmd.env(&k, v);
            }
        }
        cmd.env("ARRAKIS_BACKEND", backend.name()).env("LD_PRELOAD", shim);
    }
    // SAFETY: close_range is async-signal-safe; it marks fds >= 3 close-on-exec so the program
    // starts with 0, 1 and 2 only, whatever the test runner holds.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    let pgid = child.id() as i32;
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if start.elapsed() > RUN_TIMEOUT {
            timed_out = true;
            // SAFETY: signalling our own child's process group.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            break child.wait().ok();
        }
        thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    // SAFETY: as above; ESRCH when nothing is left is fine.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let read = |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
    Ok(RunResult { stdout: read(&out_path), stderr: read(&err_path), status, timed_out, elapsed })
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Values of the `#NAME=` meta lines.
fn meta(stdout: &str, name: &str) -> Vec<String> {
    let prefix = format!("#{name}=");
    stdout.lines().filter_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().to_string()).collect()
}

/// Everything wrong with one run; empty if it passed.
fn check(phase: &str, mode: Mode, r: &RunResult) -> Vec<String> {
    let mut problems = Vec::new();
    if r.timed_out || !r.status.is_some_and(|s| s.success()) {
        problems.push(format!("the run failed: {}", r.status_text()));
    }
    let shim = meta(&r.stdout, "shim");
    let want_shim = if mode == Mode::Native { "0" } else { "1" };
    if shim != [want_shim] {
        problems.push(format!(
            "#shim= lines {shim:?}, expected [\"{want_shim}\"] (1: libarrakis.so is mapped in the \
             process; under the shim 0 means LD_PRELOAD did not take effect)"
        ));
    }
    let lib = meta(&r.stdout, "lib");
    let want_lib = mode.expected_lib();
    if lib != [want_lib] {
        let why = match mode {
            Mode::Shim(Backend::Loopback) => {
                "under ARRAKIS_BACKEND=loopback the sockets must be the library OS's (#lib=1); \
                 #lib=0 means they were kernel sockets: the library OS did not serve this run"
            }
            _ => "without the loopback backend every socket must be a kernel socket (#lib=0)",
        };
        problems.push(format!("#lib= lines {lib:?}, expected [\"{want_lib}\"]: {why}"));
    }
    if !r.stdout.lines().any(|l| l.starts_with(&format!("{phase}: ok"))) {
        problems.push(format!("no \"{phase}: ok\" summary line"));
    }
    problems
}

fn summary(phase: &str, r: &RunResult) -> String {
    let ok = format!("{phase}: ok");
    r.stdout
        .lines()
        .find(|l| l.starts_with(&ok))
        .or_else(|| r.stderr.lines().find(|l| l.contains("FAIL")))
        .unwrap_or("-")
        .to_string()
}

#[test]
fn tcp_stress_full_size() {
    let started = Instant::now();
    let shim = locate_shim(&shim_candidates(Path::new(env!("CARGO_TARGET_TMPDIR"))))
        .unwrap_or_else(|e| panic!("{e}"));
    let backend = shim_backend();
    println!("shim under test: {} (shim runs with ARRAKIS_BACKEND={})", shim.display(), backend.name());
    if backend == Backend::Kernel {
        println!("note: {LOOPBACK_GATE}=1: the shim runs use the kernel backend and expect #lib=0");
    }

    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("stress");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("stress/tcp_stress.c");
    let prog = tmp.join("bin/tcp_stress");
    fs::create_dir_all(tmp.join("bin")).expect("create the bin directory");
    build_c(&src, &prog).unwrap_or_else(|e| panic!("{e}"));

    let modes = [Mode::Native, Mode::Shim(backend)];
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    for &(phase, size) in PHASES {
        for mode in modes {
            let dir = tmp.join("runs").join(format!("{phase}-{}", mode.label()));
            let r = run_one(&prog, &[phase, size], &dir, mode, &shim)
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", prog.display()));
            let line = summary(phase, &r);
            println!(
                "{:<14} {:<6} {:<10} {:>7.1}s  {line}",
                mode.label(),
                phase,
                r.status_text(),
                r.elapsed.as_secs_f64()
            );
            let bad = check(phase, mode, &r);
            if !bad.is_empty() {
                problems.push(format!(
                    "{phase} {size} ({}): {}\nstdout (tail):\n{}\nstderr (tail):\n{}",
                    mode.label(),
                    bad.join("; "),
                    tail(&r.stdout, 10),
                    tail(&r.stderr, 20)
                ));
            }
            rows.push((mode.label(), phase, r.status_text(), r.elapsed, line));
        }
    }

    println!("\n{:<14} {:<6} {:<10} {:>8}  summary", "mode", "phase", "status", "elapsed");
    for (mode, phase, status, elapsed, line) in &rows {
        println!("{mode:<14} {phase:<6} {status:<10} {:>7.1}s  {line}", elapsed.as_secs_f64());
    }
    println!("total {:.1}s", started.elapsed().as_secs_f64());
    if !problems.is_empty() {
        panic!("\n{} failing run(s):\n\n{}\n", problems.len(), problems.join("\n--------------------\n"));
    }
}
