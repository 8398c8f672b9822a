//! What `arrakis run --backend emulator` needs before it execs the program: a control
//! daemon at the socket ([`arrakis_backends::proto::default_socket`]: `$ARRAKIS_SOCKET`, else
//! `ctl.sock` in `$ARRAKIS_RUN_DIR`, else in `/run/arrakis`). If none answers, one is started
//! detached and waited for ([`ensure_daemon`]); the daemon starts the switch itself.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use arrakis_backends::proto::client::{Client, ClientError};

/// How long the launcher waits for a daemon it started to answer `hello`.
pub const START_TIMEOUT: Duration = Duration::from_secs(5);

/// Makes sure a daemon answers at `socket`, starting one if none does.
///
/// The daemon is started as `arrakis daemon --setsid --socket SOCKET` with stdin from
/// `/dev/null` and stdout and stderr appended to `daemon.log` beside the socket; it leaves
/// the launcher's session at once, so the terminal's Ctrl-C and hang-up do not reach it. The
/// launcher's own fds (this client's socket, the log file) are close-on-exec, so the program
/// it then execs inherits none of them. The daemon stays the program's child (the launcher
/// execs into the program); when it exits it is reaped by whoever reaps the program's
/// children — a daemon normally outlives the program.
pub fn ensure_daemon(socket: &Path) -> Result<()> {
    match Client::connect(socket) {
        Ok(_) => return Ok(()),
        Err(ClientError::NoDaemon { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let dir = socket.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create the run directory {}; set ARRAKIS_RUN_DIR to a directory you own, \
             or start `arrakis daemon` yourself",
            dir.display()
        )
    })?;
    let log_path = dir.join("daemon.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open the daemon's log {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the arrakis binary's own path")?;
    let mut child = Command::new(exe)
        .args(["daemon", "--setsid", "--socket"])
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("cannot share the daemon's log")?)
        .stderr(log)
        .spawn()
        .context("cannot start the arrakis daemon")?;
    let deadline = Instant::now() + START_TIMEOUT;
    // Bounded by the deadline: 20 ms per turn.
    loop {
        match Client::connect(socket) {
            Ok(_) => return Ok(()),
            Err(ClientError::NoDaemon { .. }) if Instant::now() < deadline => {}
            Err(e) if Instant::now() < deadline && matches!(e, ClientError::Io { .. }) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "started an arrakis daemon for {} but it did not answer within {START_TIMEOUT:?} \
                     ({e}); see {}",
                    socket.display(),
                    log_path.display()
                );
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            bail!(
                "the arrakis daemon started for {} exited at once ({st}); see {}",
                socket.display(),
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
