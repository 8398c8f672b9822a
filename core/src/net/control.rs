//! The library OS's side of the control plane (`ARRAKIS_BACKEND=emulator`): its connection
//! to the `arrakis` daemon, the virtual NIC it asks for at start-up, the grants its sockets
//! hold, and the daemon's answer to "does a container serve this destination?".
//!
//! Owns: the connection (one per process, behind a mutex, at a hidden close-on-exec fd), the
//! grant book (which (protocol, address, port) this process holds a grant for and how many of
//! its sockets use each), the queue of revocations and the thread that sends them. Must not:
//! call the daemon while the world lock is held (a daemon call can take seconds when the
//! daemon restarts), or touch anything in a forked child (the connection speaks for the
//! parent, whose pid the daemon took from `SO_PEERCRED`): every entry point checks the pid
//! first, without taking a lock a thread of the parent could have held at `fork`.
//!
//! Wire format and rules are the daemon's (`backends::proto`, docs/ARCHITECTURE.md, "Control
//! protocol"). The small client here speaks it over a socket the library OS placed itself,
//! so that the fd is out of the program's numbering (`proto::client::Client` opens its own).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arrakis_backends::any::AnyDevice;
use arrakis_backends::emulator::filter::Flow;
use arrakis_backends::emulator::{BindingFds, EmulatorNic, NicFds};
use arrakis_backends::proto::{
    self, client::WireError, Direction, ErrorKind, Filter, GrantId, Name, NicInfo, Outcome, PortRange, Proto,
    Request, Response,
};
use rustix::net::AddressFamily;

use super::stack::Ephemeral;
use crate::error::Errno;

/// The daemon's socket: `$ARRAKIS_SOCKET`, else `ctl.sock` in `$ARRAKIS_RUN_DIR`, else
/// `/run/arrakis/ctl.sock`.
pub use arrakis_backends::proto::default_socket;

/// How long start-up waits for the daemon to answer.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a grant keeps trying to reach a daemon that is down (it may be restarting).
pub const GRANT_PATIENCE: Duration = Duration::from_secs(10);
/// Pause between two attempts to reach the daemon.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long one request waits for its answer once the daemon is connected.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a lookup or a revocation waits: neither may hold the program up.
const SHORT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why start-up could not attach the process to the switch.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No daemon answers at the socket.
    #[error(
        "no arrakis daemon at {path}: {source}; start one with `arrakis daemon` or run the program \
         with `arrakis run`; every socket of this process stays on the kernel path"
    )]
    NoDaemon {
        /// The socket.
        path: String,
        /// What connect said.
        source: io::Error,
    },
    /// The daemon answered but refused or failed.
    #[error(
        "the arrakis daemon at {path} did not attach this process to its switch: {reason}; \
         every socket of this process stays on the kernel path"
    )]
    Refused {
        /// The socket.
        path: String,
        /// What went wrong, with the daemon's fix if it gave one.
        reason: String,
    },
}

/// Why a request failed.
#[derive(Debug)]
enum CallError {
    /// The connection is gone or never came up: reconnecting may help.
    Io(io::Error),
    /// The daemon answered with something this client cannot use.
    Protocol(String),
    /// The daemon refused.
    Refused(proto::ErrorReply),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Io(e) => write!(f, "{e}"),
            CallError::Protocol(s) => write!(f, "bad reply: {s}"),
            CallError::Refused(r) => write!(f, "{}", r.message),
        }
    }
}

/// One connection to the daemon, past `hello`.
struct Conn {
    stream: UnixStream,
    seq: u32,
    /// The protocol version the daemon agreed to in `hello`.
    version: u16,
}

fn io_err(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

impl Conn {
    /// Connects at a hidden, close-on-exec fd and says hello.
    fn open(path: &Path, timeout: Duration) -> Result<Conn, CallError> {
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| CallError::Io(io_err(e)))?;
        let fd = crate::event::hide(fd);
        let addr = rustix::net::SocketAddrUnix::new(path).map_err(|e| CallError::Io(io_err(e)))?;
        loop {
            match rustix::net::connect(&fd, &addr) {
                Ok(()) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(CallError::Io(io_err(e))),
            }
        }
        let stream = UnixStream::from(fd);
        let mut c = Conn { stream, seq: 0, version: 0 };
        match c.call(Request::Hello { min: proto::MIN_VERSION, max: proto::VERSION }, timeout)?.0 {
            Response::Hello { version, .. } if version >= 2 => {
                c.version = version;
                Ok(c)
            }
            Response::Hello { version, daemon } => Err(CallError::Protocol(format!(
                "the daemon ({daemon}) speaks protocol {version}; the emulator backend needs 2 \
                 (update the daemon)"
            ))),
            other => Err(CallError::Protocol(format!("unexpected answer to hello: {other:?}"))),
        }
    }

    /// Sends one request and reads its reply (and the fds that came with it).
    fn call(&mut self, req: Request, timeout: Duration) -> Result<(Response, Vec<OwnedFd>), CallError> {
        self.stream.set_read_timeout(Some(timeout)).map_err(CallError::Io)?;
        self.stream.set_write_timeout(Some(timeout)).map_err(CallError::Io)?;
        self.seq = self.seq.wrapping_add(1);
        let (outcome, fds) =
            proto::client::exchange(&self.stream, self.seq, req, &[]).map_err(|e| match e {
                WireError::Io(e) => CallError::Io(e),
                WireError::Protocol(why) => CallError::Protocol(why),
            })?;
        // Out of the program's numbering at once.
        let fds = fds.into_iter().map(crate::event::hide).collect();
        match outcome {
            Outcome::Ok(r) => Ok((r, fds)),
            Outcome::Err(e) => Err(CallError::Refused(e)),
        }
    }
}

/// A grant as the process's sockets share it: protocol, local address (v4-mapped addresses
/// as IPv4), port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrantKey {
    /// TCP (else UDP).
    pub tcp: bool,
    /// The local address the socket bound.
    pub addr: IpAddr,
    /// The port.
    pub port: u16,
}

impl GrantKey {
    /// The key for a socket of `tcp`/UDP bound to `addr`.
    pub fn new(tcp: bool, addr: SocketAddr) -> GrantKey {
        let ip = match addr.ip() {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4),
            a => a,
        };
        GrantKey { tcp, addr: ip, port: addr.port() }
    }

    fn proto(&self) -> Proto {
        if self.tcp {
            Proto::Tcp
        } else {
            Proto::Udp
        }
    }
}

/// Which grants the process holds and how many of its sockets use each: one grant per
/// (protocol, address, port), shared by every socket on it (`SO_REUSEADDR`/`SO_REUSEPORT`
/// among the process's own sockets, connections accepted from a granted listener), revoked
/// when the last one lets go. Pure bookkeeping: the daemon calls happen elsewhere.
#[derive(Debug, Default)]
pub struct GrantBook {
    held: HashMap<GrantKey, (GrantId, usize)>,
}

impl GrantBook {
    /// One more socket on `key` if the process holds it (`true`); `false` if a grant must be
    /// asked for.
    pub fn share(&mut self, key: &GrantKey) -> bool {
        match self.held.get_mut(key) {
            Some((_, n)) => {
                *n += 1;
                true
            }
            None => false,
        }
    }

    /// Records a new grant for `key`, used by one socket. A grant already recorded (asked
    /// twice) is shared instead, and the new one is returned to be revoked.
    pub fn insert(&mut self, key: GrantKey, id: GrantId) -> Option<GrantId> {
        if self.share(&key) {
            return Some(id);
        }
        self.held.insert(key, (id, 1));
        None
    }

    /// One socket less on `key`; the grant to revoke when it was the last.
    pub fn release(&mut self, key: &GrantKey) -> Option<GrantId> {
        let (id, n) = self.held.get_mut(key)?;
        *n -= 1;
        if *n > 0 {
            return None;
        }
        let id = *id;
        self.held.remove(key);
        Some(id)
    }

    /// How many sockets use `key` (0: no grant).
    pub fn users(&self, key: &GrantKey) -> usize {
        self.held.get(key).map_or(0, |&(_, n)| n)
    }

    /// Grants held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether no grant is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// What `bind` to an explicit port gets from [`acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// The port is the container's own (an ephemeral block), or the emulator is not in use:
    /// nothing to hold.
    NotNeeded,
    /// The process holds a grant there; the socket counts as one of its users (give it back
    /// with [`release`]).
    Held(GrantKey),
    /// The daemon refused in a way Linux's `bind` would: `EADDRINUSE` (another container or a
    /// kernel socket holds the port), `EACCES` (a privileged port).
    Refused(Errno),
    /// Anything else (quota, daemon down for [`GRANT_PATIENCE`], daemon error): this socket
    /// goes to the kernel. The reason, for the one log line.
    Kernel(String),
}

/// The process's attachment to the daemon.
struct Control {
    /// The process that attached (a forked child is not it).
    pid: u32,
    path: PathBuf,
    name: String,
    blocks: Ephemeral,
    conn: Mutex<Option<Conn>>,
    book: Mutex<GrantBook>,
    /// Work for the background thread: revocations, and flows to ask a binding for.
    revokes: Mutex<Vec<Job>>,
    revoke_cv: Condvar,
    /// Pid whose background thread runs.
    revoker: AtomicU32,
    /// The daemon does not know `bind` (an older one): stop asking.
    no_bind: AtomicBool,
}

/// Work for the background thread ([`Control::revoker`]).
enum Job {
    Revoke(GrantId),
    Bind(Flow),
}

/// Secure bindings asked for (`ARRAKIS_BINDINGS`, [`super::set_bindings`]).
pub(crate) static BINDINGS: AtomicBool = AtomicBool::new(true);

static CONTROL: OnceLock<Control> = OnceLock::new();

fn control() -> Option<&'static Control> {
    CONTROL.get().filter(|c| c.pid == std::process::id())
}

/// Whether this process is attached to the emulator's switch (not in a forked child).
pub fn active() -> bool {
    control().is_some()
}

/// The ephemeral port blocks the daemon gave this process.
pub fn blocks() -> Option<Ephemeral> {
    control().map(|c| c.blocks)
}

/// A `hello` and `register` on a fresh connection.
fn connect_registered(path: &Path, name: &str, timeout: Duration) -> Result<Conn, CallError> {
    let mut c = Conn::open(path, timeout)?;
    match c.call(Request::Register { name: Name::lossy(name) }, timeout)?.0 {
        Response::Registered { .. } => Ok(c),
        other => Err(CallError::Protocol(format!("unexpected answer to register: {other:?}"))),
    }
}

/// Attaches the process to the daemon's switch: connect (at a hidden, close-on-exec fd),
/// register as `name`, ask for the NIC, build it and make it the network world's device with
/// the NIC's port blocks as ephemeral ranges. Must run before the first socket (the shim's
/// constructor). On error nothing is attached and the world stays the loopback.
pub fn start(name: &str, path: &Path) -> Result<NicInfo, StartError> {
    let show = path.display().to_string();
    let refused = |reason: String| StartError::Refused { path: show.clone(), reason };
    let mut conn = match connect_registered(path, name, START_TIMEOUT) {
        Ok(c) => c,
        Err(CallError::Io(source)) => return Err(StartError::NoDaemon { path: show, source }),
        Err(e) => return Err(refused(e.to_string())),
    };
    let (info, fds) = match conn.call(Request::Nic {}, START_TIMEOUT) {
        Ok((Response::Nic { nic }, fds)) => (nic, fds),
        Ok((other, _)) => return Err(refused(format!("unexpected answer to nic: {other:?}"))),
        Err(e) => return Err(refused(e.to_string())),
    };
    let Ok([region, to_container, to_switch]) = <[OwnedFd; 3]>::try_from(fds) else {
        return Err(refused("the nic reply did not carry its 3 fds".into()));
    };
    let blocks = Ephemeral::new(
        (info.tcp_ports.lo(), info.tcp_ports.hi()),
        (info.udp_ports.lo(), info.udp_ports.hi()),
    )
    .ok_or_else(|| refused("the nic reply's port blocks are empty".into()))?;
    let mut nic = EmulatorNic::from_fds(NicFds { region, to_container, to_switch })
        .map_err(|e| refused(format!("the NIC's region is not usable: {e}")))?;
    nic.set_bindings(BINDINGS.load(SeqCst));
    if let Some(&u) = info.addrs.first() {
        super::world::set_uplink(u);
    }
    if super::world::attach_device_with(AnyDevice::from(nic), blocks).is_err() {
        return Err(refused("the network world already exists (a socket was made before start-up)".into()));
    }
    let c = Control {
        pid: std::process::id(),
        path: path.to_path_buf(),
        name: name.to_string(),
        blocks,
        conn: Mutex::new(Some(conn)),
        book: Mutex::new(GrantBook::default()),
        revokes: Mutex::new(Vec::new()),
        revoke_cv: Condvar::new(),
        revoker: AtomicU32::new(0),
        no_bind: AtomicBool::new(false),
    };
    if CONTROL.set(c).is_err() {
        return Err(refused("already attached".into()));
    }
    Ok(info)
}

impl Control {
    /// Runs `f` on the connection, connecting first if there is none; an I/O error drops the
    /// connection (the next call reconnects).
    fn with_conn<T>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&mut Conn) -> Result<T, CallError>,
    ) -> Result<T, CallError> {
        let mut slot = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(connect_registered(&self.path, &self.name, timeout)?);
        }
        let Some(conn) = slot.as_mut() else { return Err(CallError::Protocol("no connection".into())) };
        let r = f(conn);
        if matches!(r, Err(CallError::Io(_) | CallError::Protocol(_))) {
            *slot = None;
        }
        r
    }

    /// Asks for a grant, retrying while the daemon cannot be reached, up to `patience`.
    fn ask(&self, filter: &Filter, patience: Duration) -> Result<GrantId, CallError> {
        let end = Instant::now() + patience;
        let tries = (patience.as_millis() / RETRY_PAUSE.as_millis()).max(1) + 1;
        let mut last = CallError::Protocol("not tried".into());
        for _ in 0..tries {
            let r = self.with_conn(CALL_TIMEOUT, |c| {
                match c.call(Request::Grant { filter: filter.clone() }, CALL_TIMEOUT)?.0 {
                    Response::Granted { grant, .. } => Ok(grant.id),
                    other => Err(CallError::Protocol(format!("unexpected answer to grant: {other:?}"))),
                }
            });
            match r {
                Ok(id) => return Ok(id),
                // A daemon restarted from a lost store no longer knows the container: register
                // again (a new connection does) and ask once more.
                Err(CallError::Refused(e)) if matches!(e.kind, ErrorKind::NotRegistered { .. }) => {
                    *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    last = CallError::Refused(e);
                }
                Err(e @ CallError::Refused(_)) => return Err(e),
                Err(e) => last = e,
            }
            if Instant::now() + RETRY_PAUSE > end {
                break;
            }
            std::thread::sleep(RETRY_PAUSE);
        }
        Err(last)
    }

    fn queue_revoke(&'static self, id: GrantId) {
        self.queue(std::iter::once(Job::Revoke(id)));
    }

    fn queue(&'static self, jobs: impl Iterator<Item = Job>) {
        self.revokes.lock().unwrap_or_else(|e| e.into_inner()).extend(jobs);
        self.revoke_cv.notify_one();
        let pid = std::process::id();
        if self.revoker.swap(pid, SeqCst) == pid {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("arrakis-control".into())
            .stack_size(128 * 1024)
            .spawn(move || self.revoker());
        if let Err(e) = spawned {
            self.revoker.store(0, SeqCst);
            tracing::warn!(error = %e, "no control thread: grants stay until the process exits, flows stay on the switch");
        }
    }

    /// The background thread: sends queued revocations, one attempt each (a failed one is
    /// fine: the daemon reclaims a container's grants when it exits), and asks for bindings,
    /// installing each in the NIC.
    fn revoker(&self) {
        let _ = nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&nix::sys::signal::SigSet::all()),
            None,
        );
        loop {
            let jobs = {
                let mut q = self.revokes.lock().unwrap_or_else(|e| e.into_inner());
                while q.is_empty() {
                    q = self
                        .revoke_cv
                        .wait_timeout(q, Duration::from_secs(60))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                std::mem::take(&mut *q)
            };
            for job in jobs {
                match job {
                    Job::Revoke(id) => {
                        let r = self.with_conn(SHORT_TIMEOUT, |c| {
                            c.call(Request::Revoke { id }, SHORT_TIMEOUT).map(|_| ())
                        });
                        if let Err(e) = r {
                            tracing::debug!(grant = id.0, error = %e, "revocation failed; the daemon reclaims it when the process exits");
                        }
                    }
                    Job::Bind(flow) => self.bind(flow),
                }
            }
        }
    }
}

impl Control {
    /// Asks the daemon for a secure binding of `flow` (as this process sends it) and
    /// installs it in the NIC; a refusal leaves the flow on the switch.
    fn bind(&self, flow: Flow) {
        let refused = |why: &dyn std::fmt::Display| {
            tracing::debug!(?flow, "no binding: {why}");
            super::world::with_emulator(|n| n.binding_refused(flow));
        };
        if self.no_bind.load(SeqCst) {
            return refused(&"the daemon does not make bindings");
        }
        let proto = Proto::from(flow.proto);
        let r = self.with_conn(SHORT_TIMEOUT, |c| {
            // `bind` is protocol 7 (5's reply had no summary page, 6's page no `rung` words):
            // an older daemon is not asked (again).
            if c.version < 7 {
                return Ok(None);
            }
            match c.call(Request::Bind { proto, local: flow.src, remote: flow.dst }, SHORT_TIMEOUT)? {
                (Response::Bound { binding }, fds) => Ok(Some((binding, fds))),
                (other, _) => Err(CallError::Protocol(format!("unexpected answer to bind: {other:?}"))),
            }
        });
        match r {
            Ok(Some((info, fds))) => {
                let Ok([region, peer_bell, summary]) = <[OwnedFd; 3]>::try_from(fds) else {
                    return refused(&"the reply did not carry its 3 fds");
                };
                let fds = BindingFds { region, peer_bell, summary };
                match super::world::with_emulator(|n| n.install_binding(flow, info, fds)) {
                    Some(Err(e)) => tracing::debug!(?flow, "binding not installed: {e}"),
                    Some(Ok(())) => tracing::debug!(?flow, ?info, "bound"),
                    None => {}
                }
            }
            Ok(None) => {
                self.no_bind.store(true, SeqCst);
                refused(&"the daemon speaks a protocol older than 6, without bindings it can use")
            }
            Err(CallError::Refused(e)) => refused(&e.message),
            Err(e) => refused(&e),
        }
    }
}

/// Flows the NIC wants bindings for, from the world's pump (under the world lock): queued
/// for the background thread. Returns the flows it could not queue (no daemon attachment,
/// bindings off): the caller marks them refused.
pub(crate) fn queue_bindings(flows: Vec<Flow>) -> Vec<Flow> {
    match control() {
        Some(c) if BINDINGS.load(Relaxed) && !c.no_bind.load(Relaxed) => {
            c.queue(flows.into_iter().map(Job::Bind));
            Vec::new()
        }
        _ => flows,
    }
}

/// For a `bind` of a socket of `tcp`/UDP to `addr`: the grant it needs, held or refused.
/// Ports of the process's own blocks and port 0 need none. Blocks (it may ask the daemon,
/// which may be restarting, for up to [`GRANT_PATIENCE`]); never call with the world lock.
pub fn acquire(tcp: bool, addr: SocketAddr) -> Grant {
    let Some(c) = control() else { return Grant::NotNeeded };
    if addr.port() == 0 || c.blocks.contains(tcp, addr.port()) {
        return Grant::NotNeeded;
    }
    let key = GrantKey::new(tcp, addr);
    if c.book.lock().unwrap_or_else(|e| e.into_inner()).share(&key) {
        return Grant::Held(key);
    }
    let Some(ports) = PortRange::one(key.port) else { return Grant::NotNeeded };
    let filter = match Filter::new(Direction::Both, key.proto(), key.addr, ports, vec![]) {
        Ok(f) => f,
        Err(e) => return Grant::Kernel(e),
    };
    match c.ask(&filter, GRANT_PATIENCE) {
        Ok(id) => {
            let extra = c.book.lock().unwrap_or_else(|e| e.into_inner()).insert(key, id);
            if let Some(extra) = extra {
                c.queue_revoke(extra);
            }
            Grant::Held(key)
        }
        Err(CallError::Refused(e)) => match e.kind {
            ErrorKind::HeldByContainer { .. } | ErrorKind::HeldByKernel { .. } => {
                tracing::info!("bind {addr}: {}", e.message);
                Grant::Refused(Errno::EADDRINUSE)
            }
            ErrorKind::Privileged { .. } => Grant::Refused(Errno::EACCES),
            _ => Grant::Kernel(e.message),
        },
        Err(e) => Grant::Kernel(e.to_string()),
    }
}

/// One more socket on a grant the process holds (a connection accepted from a granted
/// listener keeps its port when the listener closes, as on Linux).
pub(crate) fn share(key: &GrantKey) -> bool {
    let Some(c) = control() else { return false };
    c.book.lock().unwrap_or_else(|e| e.into_inner()).share(key)
}

/// A socket lets go of its grant; the last one's revocation is queued for the revoker
/// thread, so this never waits for the daemon.
pub fn release(key: &GrantKey) {
    let Some(c) = control() else { return };
    let id = c.book.lock().unwrap_or_else(|e| e.into_inner()).release(key);
    if let Some(id) = id {
        c.queue_revoke(id);
    }
}

/// Whether some container's grant receives `tcp`/UDP traffic at `to` (the daemon's
/// `lookup`); `None` when the daemon cannot be reached. One attempt, a short timeout.
pub fn lookup(tcp: bool, to: SocketAddr) -> Option<bool> {
    let c = control()?;
    let proto = if tcp { Proto::Tcp } else { Proto::Udp };
    let (ip, port) = (to.ip(), to.port());
    let r = c.with_conn(SHORT_TIMEOUT, |conn| {
        match conn.call(Request::Lookup { proto, addr: ip, port }, SHORT_TIMEOUT)?.0 {
            Response::Lookup { served } => Ok(served),
            other => Err(CallError::Protocol(format!("unexpected answer to lookup: {other:?}"))),
        }
    });
    match r {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::debug!(error = %e, "lookup failed");
            None
        }
    }
}

/// How many sockets of this process use the grant for `key` (0: none held). For tests.
pub fn grant_users(key: &GrantKey) -> usize {
    control().map_or(0, |c| c.book.lock().unwrap_or_else(|e| e.into_inner()).users(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> GrantKey {
        GrantKey::new(true, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn a_grant_is_shared_by_its_sockets_and_revoked_after_the_last() {
        let mut b = GrantBook::default();
        let k = key(6379);
        assert!(!b.share(&k), "nothing held yet: ask the daemon");
        assert_eq!(b.insert(k, GrantId(7)), None);
        assert!(b.share(&k));
        assert!(b.share(&k));
        assert_eq!(b.users(&k), 3);
        assert_eq!(b.release(&k), None);
        assert_eq!(b.release(&k), None);
        assert_eq!(b.release(&k), Some(GrantId(7)), "the last user revokes");
        assert_eq!(b.users(&k), 0);
        assert_eq!(b.release(&k), None, "a release without a grant is nothing");
        assert!(b.is_empty());
    }

    #[test]
    fn a_second_grant_for_the_same_key_is_handed_back() {
        let mut b = GrantBook::default();
        let k = key(80);
        assert_eq!(b.insert(k, GrantId(1)), None);
        assert_eq!(b.insert(k, GrantId(2)), Some(GrantId(2)));
        assert_eq!(b.users(&k), 2);
        assert_eq!(b.release(&k), None);
        assert_eq!(b.release(&k), Some(GrantId(1)));
    }

    #[test]
    fn keys_separate_protocols_addresses_and_ports_and_unmap_v4_addresses() {
        let mut b = GrantBook::default();
        let udp = GrantKey::new(false, SocketAddr::from(([127, 0, 0, 1], 53)));
        let tcp = GrantKey::new(true, SocketAddr::from(([127, 0, 0, 1], 53)));
        let any = GrantKey::new(true, SocketAddr::from(([0, 0, 0, 0], 53)));
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:53".parse().unwrap();
        assert_eq!(GrantKey::new(true, mapped), tcp);
        b.insert(udp, GrantId(1));
        b.insert(tcp, GrantId(2));
        b.insert(any, GrantId(3));
        assert_eq!(b.len(), 3);
        assert_eq!(b.release(&tcp), Some(GrantId(2)));
        assert_eq!(b.users(&udp), 1);
        assert_eq!(b.users(&any), 1);
        assert!(!b.share(&key(54)));
    }

    #[test]
    fn not_attached_means_no_grant_and_no_lookup() {
        // This test process never started the emulator backend.
        assert!(!active());
        assert_eq!(acquire(true, "127.0.0.1:6379".parse().unwrap()), Grant::NotNeeded);
        assert_eq!(lookup(true, "127.0.0.1:6379".parse().unwrap()), None);
        release(&key(6379));
    }
}

/// How the daemon says this process reaches a volume ([`volume_attach`]).
#[derive(Debug)]
pub enum VolumeAttachment {
    /// This process owns the volume: mount the VSA behind `fd` (`size` bytes) and serve it
    /// to others on `socket`.
    Owner {
        /// Where to serve it.
        socket: String,
        /// The VSA's backing fd (hidden, close-on-exec).
        fd: OwnedFd,
        /// The VSA's size in bytes.
        size: u64,
    },
    /// Another process owns it: reach it by RPC on `socket`.
    Remote {
        /// The owner's socket.
        socket: String,
    },
}

/// The daemon connection of a process that attaches volumes without the emulator backend
/// (its own registration; the pid that made it, so a forked child makes its own).
static VOLUME_CONN: Mutex<Option<(u32, Conn)>> = Mutex::new(None);

/// Asks the daemon for the volume on VSA `name` (`Request::VolumeAttach`), over the
/// emulator backend's connection if the process has one, else over a connection of its own
/// (registered under the process's name). The error is the line to log.
pub fn volume_attach(name: &str) -> Result<VolumeAttachment, String> {
    let req = Request::VolumeAttach { name: Name::lossy(name), create: None, read_only: false };
    let path = default_socket();
    let reply = match control() {
        Some(c) => c.with_conn(CALL_TIMEOUT, |conn| conn.call(req, CALL_TIMEOUT)),
        None => {
            let mut slot = VOLUME_CONN.lock().unwrap_or_else(|e| e.into_inner());
            let pid = std::process::id();
            if slot.as_ref().is_none_or(|(p, _)| *p != pid) {
                if let Some((_, old)) = slot.take() {
                    // The parent's connection, inherited by fork: it speaks for the parent.
                    std::mem::forget(old);
                }
                let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
                let conn = connect_registered(&path, comm.trim(), START_TIMEOUT)
                    .map_err(|e| format!("no arrakis daemon at {}: {e}", path.display()))?;
                *slot = Some((pid, conn));
            }
            let r = match slot.as_mut() {
                Some((_, conn)) => conn.call(req, CALL_TIMEOUT),
                None => Err(CallError::Protocol("no connection".into())),
            };
            if matches!(r, Err(CallError::Io(_) | CallError::Protocol(_))) {
                *slot = None;
            }
            r
        }
    };
    let (resp, mut fds) =
        reply.map_err(|e| format!("the arrakis daemon did not attach volume {name}: {e}"))?;
    match resp {
        Response::VolumeAttached { vsa, role: proto::VolumeRole::Owner { socket } } => {
            let fd =
                fds.pop().ok_or_else(|| format!("the daemon's reply for volume {name} carried no fd"))?;
            Ok(VolumeAttachment::Owner { socket, fd, size: vsa.size })
        }
        Response::VolumeAttached { role: proto::VolumeRole::Remote { socket, .. }, .. } => {
            Ok(VolumeAttachment::Remote { socket })
        }
        other => Err(format!("unexpected answer to volume_attach {name}: {other:?}")),
    }
}
