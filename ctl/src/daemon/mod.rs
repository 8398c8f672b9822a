//! `arrakis daemon`: the control plane.
//!
//! * [`host`] — what the daemon reads from the host (`/proc`), behind a trait;
//! * [`rules`] — containers, grants and the rules that decide a request;
//! * [`store`] — the crash-safe store the grants and VSAs survive a restart in;
//! * [`vsa`] — virtual storage areas: backing files, and who owns the volume in each;
//! * [`session`] — one client's protocol state, and the answer to one frame;
//! * [`server`] — the event loop: the socket, the clients, the containers' pidfds.
//!
//! * [`plane`] — the containers' NICs and the switch process that forwards their frames.
//!
//! The daemon is control plane only: nothing here is on a data path, and a daemon that is
//! down only delays new grants. The software switch (data plane) runs in its own process
//! (`crate::switch::service`), which the daemon starts, supervises and adopts.
pub mod host;
pub mod plane;
pub mod rules;
pub mod server;
pub mod session;
pub mod store;
pub mod vsa;

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use arrakis_backends::proto::IfAddr;

use self::host::RealHost;
use self::rules::{Limits, Registry};
use self::session::Daemon;
use self::store::Store;

/// How the daemon is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Unix socket to listen on.
    pub socket: PathBuf,
    /// Where the store lives.
    pub state_dir: PathBuf,
    /// Per-container quota.
    pub limits: Limits,
    /// How long a client may take to finish a frame it started.
    pub frame_timeout: Duration,
    /// The switch's uplink: a tun interface, and the address containers have on it.
    pub uplink: Option<(String, IfAddr)>,
    /// Largest VSA, in bytes.
    pub max_vsa_size: u64,
}

/// Creates `dir` (and its parents) with `mode` if it is missing; an existing directory is
/// left as it is (an administrator may have chosen its mode).
fn make_dir(dir: &Path, mode: u32) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .with_context(|| format!("cannot create {}; create it or choose another path", dir.display()))
}

/// Binds the socket, removing a stale one (a socket file nobody answers on).
fn bind(socket: &Path) -> Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(socket) {
        if !meta.file_type().is_socket() {
            bail!("{} exists and is not a socket; remove it or choose another --socket", socket.display());
        }
        match UnixStream::connect(socket) {
            Ok(_) => bail!(
                "an arrakis daemon already listens at {}; stop it first (`arrakis status` shows its pid)",
                socket.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(socket)
                    .with_context(|| format!("cannot remove the stale socket {}", socket.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot check the socket {}", socket.display())),
        }
    }
    let l = UnixListener::bind(socket).with_context(|| format!("cannot listen at {}", socket.display()))?;
    // Any local user may register its processes: the rules, not the socket's mode, decide
    // what each uid may do.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("cannot set the mode of {}", socket.display()))?;
    Ok(l)
}

/// Runs the daemon in the foreground; returns only on a fatal error.
pub fn run(cfg: &Config) -> Result<()> {
    if let Some(dir) = cfg.socket.parent() {
        make_dir(dir, 0o755)?;
    }
    make_dir(&cfg.state_dir, 0o700)?;
    let store_path = cfg.state_dir.join(store::FILE);
    let (store, loaded) = Store::open(&store_path)?;
    let host = RealHost;
    let mut registry = Registry::new(cfg.limits, loaded.containers, loaded.grants, loaded.next_id);
    let alive = registry.reclaim_stale(&host);
    let stale = registry.counters.reclaimed;
    let exe = std::env::current_exe().context("cannot find the arrakis binary's own path")?;
    let plane = plane::SwitchLink::open(
        plane::switch_socket(&cfg.socket),
        exe,
        cfg.uplink.as_ref().map(|(name, _)| name.clone()),
    );
    registry.set_uplink(cfg.uplink.as_ref().map(|&(_, a)| a));
    let run_dir = cfg.socket.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let mut vsas = vsa::Vsas::new(
        vsa::VsaConfig { dir: cfg.state_dir.join("vsa"), run_dir, max_size: cfg.max_vsa_size },
        loaded.vsas,
    );
    let orphaned = vsas.reclaim_stale(&host);
    let mut daemon = Daemon {
        registry,
        host: Box::new(host),
        store: Some(store),
        socket: cfg.socket.clone(),
        started: Instant::now(),
        plane: Box::new(plane),
        vsas,
    };
    daemon.persist().map_err(|e| anyhow::anyhow!("{e}"))?;
    // Ports a running switch kept for containers that died meanwhile go; the others get
    // their grants from the store.
    daemon.sync_plane();
    let listener = bind(&cfg.socket)?;
    eprintln!(
        "arrakis daemon: listening on {} (store {}; {} container(s), {} grant(s) and {} VSA(s) restored, \
         {stale} stale container(s) reclaimed, {} volume(s) whose owner died released)",
        cfg.socket.display(),
        store_path.display(),
        alive.len(),
        daemon.registry.grants().count(),
        daemon.vsas.records().count(),
        orphaned.len(),
    );
    let mut server = server::Server::new(listener, daemon, cfg.frame_timeout)?;
    server.run().context("the daemon's event loop failed")
}
