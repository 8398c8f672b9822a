//! Building the C case programs, locating the shim, and running a program
//! (natively or preloaded) in a fresh directory with a timeout.
//!
//! Every run gets the same minimal environment, stdin from /dev/null, only
//! fds 0-2 (everything else the harness holds is marked close-on-exec), and
//! its own process group so a timeout can kill forked children too.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// gcc flags shared by every case program.
pub const BASE_CFLAGS: &[&str] = &[
    "-std=gnu11",
    "-D_GNU_SOURCE",
    "-g",
    "-pthread",
    "-Wall",
    "-Wextra",
    // The cases pass bad pointers and sizes on purpose.
    "-Wno-stringop-overflow",
    "-Wno-stringop-overread",
    "-Wno-nonnull",
    "-Wno-restrict",
    "-Wno-unused-result",
];

/// Marker in the first lines of a case source giving extra gcc flags, e.g.
/// `/* compat-cflags: -O2 -D_FORTIFY_SOURCE=2 */`. Without it, `-O0`.
pub const CFLAGS_MARKER: &str = "compat-cflags:";

/// Extra flags declared by a source file (see [`CFLAGS_MARKER`]).
pub fn declared_cflags(source: &str) -> Vec<String> {
    for line in source.lines().take(5) {
        if let Some((_, rest)) = line.split_once(CFLAGS_MARKER) {
            let rest = rest.trim().trim_end_matches("*/");
            return rest.split_whitespace().map(str::to_string).collect();
        }
    }
    vec!["-O0".to_string()]
}

/// Compile `src` into `out` with gcc. Errors carry gcc's output.
pub fn build_c(src: &Path, out: &Path) -> Result<(), String> {
    let text = fs::read_to_string(src).map_err(|e| format!("{}: {e}", src.display()))?;
    let include = src.parent().unwrap_or(Path::new("."));
    let mut cmd = Command::new("gcc");
    cmd.args(BASE_CFLAGS)
        .args(declared_cflags(&text))
        .arg("-I")
        .arg(include)
        .arg("-o")
        .arg(out)
        .arg(src)
        .arg("-ldl");
    let o = cmd
        .output()
        .map_err(|e| format!("cannot run gcc ({e}); the C cases need gcc (apt-get install gcc)"))?;
    if !o.status.success() {
        return Err(format!("gcc failed for {}:\n{}", src.display(), String::from_utf8_lossy(&o.stderr)));
    }
    Ok(())
}

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Where a test looks for `libarrakis.so` (after `ARRAKIS_SHIM`): `$CARGO_TARGET_DIR/release`,
/// the target directory of the test's `CARGO_TARGET_TMPDIR` (`<target>/tmp`), and the
/// workspace's `target/release`.
pub fn shim_candidates(target_tmpdir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        v.push(PathBuf::from(t).join("release/libarrakis.so"));
    }
    if let Some(target) = target_tmpdir.parent() {
        v.push(target.join("release/libarrakis.so"));
    }
    v.push(workspace_root().join("target/release/libarrakis.so"));
    v
}

/// The shim to test: `$ARRAKIS_SHIM`, else the first existing candidate.
/// The error says how to build it.
pub fn locate_shim(candidates: &[PathBuf]) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("ARRAKIS_SHIM") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(fs::canonicalize(&p).unwrap_or(p))
        } else {
            Err(format!(
                "ARRAKIS_SHIM={} does not exist; build the shim with `cargo build --release` \
                 at the workspace root or point ARRAKIS_SHIM at libarrakis.so",
                p.display()
            ))
        };
    }
    for c in candidates {
        if c.is_file() {
            return Ok(fs::canonicalize(c).unwrap_or_else(|_| c.clone()));
        }
    }
    let tried: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    Err(format!(
        "libarrakis.so not found (looked at: {}). Build it first with `cargo build --release` \
         at the workspace root, or set ARRAKIS_SHIM=/path/to/libarrakis.so. The differential \
         test does not run without the shim.",
        tried.join(", ")
    ))
}

/// How to run a program.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Working directory; emptied and recreated before the run.
    pub dir: PathBuf,
    /// Directories to create inside `dir` (relative paths) before the run, e.g. `mnt` for a
    /// volume's mount point.
    pub mkdirs: Vec<PathBuf>,
    /// `Some(shim)` to run with `LD_PRELOAD=shim`.
    pub preload: Option<PathBuf>,
    /// Variables set for this run on top of the base environment (they win over the
    /// caller's `ARRAKIS_*` ones).
    pub env: Vec<(OsString, OsString)>,
    pub timeout: Duration,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub stdout: String,
    pub stderr: String,
    pub status: Option<ExitStatus>,
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl RunResult {
    /// "exit 0", "signal 11", "timed out", ...
    pub fn status_text(&self) -> String {
        if self.timed_out {
            return "timed out".into();
        }
        match self.status {
            Some(s) => match (s.code(), s.signal()) {
                (Some(c), _) => format!("exit {c}"),
                (None, Some(sig)) => format!("signal {sig}"),
                _ => format!("{s:?}"),
            },
            None => "not run".into(),
        }
    }
}

/// The environment every run gets (plus LD_PRELOAD and the caller's
/// `ARRAKIS_*` variables when preloading).
pub fn base_env() -> Vec<(OsString, OsString)> {
    vec![
        ("PATH".into(), "/usr/bin:/bin".into()),
        ("LC_ALL".into(), "C".into()),
        ("HOME".into(), "/nonexistent".into()),
    ]
}

/// Run `spec` to completion or timeout; kills the whole process group on
/// timeout and after exit (stragglers would hold the output pipes).
pub fn run(spec: &RunSpec) -> io::Result<RunResult> {
    if spec.dir.exists() {
        fs::remove_dir_all(&spec.dir)?;
    }
    fs::create_dir_all(&spec.dir)?;
    for d in &spec.mkdirs {
        fs::create_dir_all(spec.dir.join(d))?;
    }
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.dir)
        .env_clear()
        .envs(base_env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(shim) = &spec.preload {
        for (k, v) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ARRAKIS_") {
                cmd.env(k, v);
            }
        }
        cmd.env("LD_PRELOAD", shim);
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    // SAFETY: close_range is async-signal-safe; it only marks fds >= 3
    // close-on-exec, so the child starts with exactly 0, 1 and 2 open
    // whatever the test runner inherited.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    let pgid = child.id() as i32;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if start.elapsed() > spec.timeout {
            timed_out = true;
            // SAFETY: signalling our own child's process group.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            break child.wait().ok();
        }
        thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    // SAFETY: as above; ESRCH when nothing is left is fine.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok(RunResult {
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        status,
        timed_out,
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cflags_marker() {
        assert_eq!(
            declared_cflags("/* compat-cflags: -O2 -D_FORTIFY_SOURCE=2\n * more */"),
            vec!["-O2", "-D_FORTIFY_SOURCE=2"]
        );
        assert_eq!(declared_cflags("/* compat-cflags: -O1 */\n"), vec!["-O1"]);
        assert_eq!(declared_cflags("int main(void) {}"), vec!["-O0"]);
    }

    #[test]
    fn run_captures_output_status_and_timeout() {
        let dir = std::env::temp_dir().join(format!("compat-runner-{}", std::process::id()));
        let spec = RunSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "echo out; echo err >&2; ls /proc/self/fd | wc -l; exit 3".into()],
            dir: dir.join("a"),
            mkdirs: vec!["m/n".into()],
            preload: None,
            env: Vec::new(),
            timeout: Duration::from_secs(10),
        };
        let r = run(&spec).expect("run");
        assert!(dir.join("a/m/n").is_dir());
        assert_eq!(r.status_text(), "exit 3");
        assert_eq!(r.stderr, "err\n");
        // 0, 1, 2, the pipe to wc and ls's directory fd: nothing inherited.
        let mut lines = r.stdout.lines();
        assert_eq!(lines.next(), Some("out"));
        let fds: usize = lines.next().unwrap_or("0").trim().parse().unwrap_or(0);
        assert!(fds <= 5, "unexpected inherited fds: {fds}");

        let spec = RunSpec {
            args: vec!["-c".into(), "sleep 30".into()],
            dir: dir.join("b"),
            timeout: Duration::from_millis(200),
            ..spec
        };
        let r = run(&spec).expect("run");
        assert!(r.timed_out);
        assert!(r.elapsed < Duration::from_secs(10));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_shim_message_says_how_to_build() {
        if std::env::var_os("ARRAKIS_SHIM").is_some() {
            return;
        }
        let e = locate_shim(&[PathBuf::from("/nonexistent/libarrakis.so")]).unwrap_err();
        assert!(e.contains("cargo build --release"), "{e}");
    }
}
