//! The daemon's side of the data plane: the containers' NICs and the switch process that
//! forwards their frames.
//!
//! [`Plane`] is what the sessions need (attach a fresh NIC, set a port's grants, detach,
//! counters, captures); [`SwitchLink`] is the real one and [`switch_grants`] turns a
//! container's protocol grants into the switch's view. The daemon keeps a dup of every NIC's
//! three fds: if the switch dies, [`SwitchLink`] starts another and attaches every NIC again
//! (the ring indices live in the shared region, so traffic resumes where it stopped); if the
//! daemon dies, the switch goes on, and the next daemon takes the ports back
//! ([`SwitchLink::open`]). Changes go to `nics` first, then to the switch: whatever the
//! switch missed, a restart re-applies from `nics`.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrakis_backends::emulator::filter::{self as emu, Grants};
use arrakis_backends::emulator::{create, BindingFds, BindingInfo, Geometry, NicFds};
use arrakis_backends::proto::{ContainerTraffic, Direction, Filter, Name, Proto, SwitchStats};

use super::rules::Registry;
use crate::switch::channel::{self, Cmd, GrantsMsg, Reply};

/// The addresses every container has on the switch: all containers address each other as
/// loopback, and the switch routes by the grants' ports alone.
pub const CONTAINER_ADDRS: [IpAddr; 2] = [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)];
/// How long the daemon waits for a switch it started to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the daemon waits for one answer of the switch.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// An address as frames carry it: a v4-mapped IPv6 address is its IPv4 address.
fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        a => a,
    }
}

/// The switch's form of a protocol filter, or why the switch cannot enforce it exactly (the
/// grant is then refused: a filter is never silently widened).
///
/// Local `::` is any of the container's addresses, `0.0.0.0` any of its IPv4 ones. Peers: an address
/// without ports is enforced; `::` alone means any peer; a peer with ports, or `0.0.0.0`
/// (any IPv4 peer only), cannot be expressed.
pub fn switch_filter(f: &Filter) -> Result<emu::Filter, String> {
    let local = match f.local() {
        IpAddr::V6(a) if a.is_unspecified() => None,
        // Any of the container's IPv4 addresses (loopback, and its uplink address if any).
        a @ IpAddr::V4(v4) if v4.is_unspecified() => Some(a),
        a => Some(canonical(a)),
    };
    let mut peers = Vec::with_capacity(f.peers().len());
    for p in f.peers() {
        if let Some(ports) = p.ports {
            return Err(format!(
                "peer {p} limits the peer's ports ({ports}), which the emulator's switch cannot \
                 enforce; grant the peer's address without ports"
            ));
        }
        match p.addr {
            IpAddr::V6(a) if a.is_unspecified() => {
                // Any peer: the whole list allows any.
                peers.clear();
                break;
            }
            IpAddr::V4(a) if a.is_unspecified() => {
                return Err("peer 0.0.0.0 (any IPv4 peer) cannot be enforced by the emulator's switch; \
                            use :: for any peer or list the peers' addresses"
                    .into())
            }
            a => peers.push(canonical(a)),
        }
    }
    Ok(emu::Filter {
        direction: match f.direction() {
            Direction::In => emu::Direction::Ingress,
            Direction::Out => emu::Direction::Egress,
            Direction::Both => emu::Direction::Both,
        },
        proto: f.proto().into(),
        local,
        ports: f.ports().lo()..=f.ports().hi(),
        peers,
    })
}

/// What container `pid` may send and receive on the switch: every grant it holds. A stored
/// grant the switch cannot express (made before the rule existed) is left out: narrower,
/// never wider.
pub fn switch_grants(reg: &Registry, pid: u32) -> Grants {
    let mut addrs = CONTAINER_ADDRS.to_vec();
    addrs.extend(reg.uplink().map(|a| a.addr()));
    Grants {
        addrs,
        filters: reg
            .grants()
            .filter(|g| g.holders.contains(&pid))
            .filter_map(|g| switch_filter(&g.filter).ok())
            .collect(),
    }
}

/// Why no binding was made ([`Plane::bind`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindError {
    /// The container has no NIC on the switch.
    NoNic,
    /// The switch refused: its reason (the checks of `switch::bind`).
    Refused(String),
    /// The switch could not be reached or answered nonsense.
    Failed(String),
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindError::NoNic => {
                f.write_str("the container has no NIC on the switch; ask for one (nic) before binding")
            }
            BindError::Refused(r) => f.write_str(r),
            BindError::Failed(r) => write!(f, "the switch failed: {r}"),
        }
    }
}

/// The data plane as the sessions see it. Ports are named by their container's pid: a
/// container has at most one NIC.
pub trait Plane {
    /// Makes a fresh NIC for `pid` and attaches it with `grants`, detaching the container's
    /// previous one; returns the container's fds.
    fn attach(&mut self, pid: u32, name: &Name, grants: Grants) -> Result<NicFds, String>;
    /// Replaces the grants of `pid`'s port.
    fn set_grants(&mut self, pid: u32, grants: Grants);
    /// Detaches `pid`'s port, if it has one.
    fn detach(&mut self, pid: u32);
    /// The containers with a port, and the grants last set on it.
    fn attached(&self) -> Vec<(u32, Grants)>;
    /// The switch's counters, if a switch runs.
    fn stats(&mut self) -> Option<SwitchStats>;
    /// Starts capturing `pid`'s frames into `out`, at most `limit` of them.
    fn capture(&mut self, pid: u32, out: OwnedFd, limit: Option<u64>) -> Result<(), String>;
    /// Stops `pid`'s capture; the frames it wrote.
    fn stop_capture(&mut self, pid: u32) -> Result<Option<u64>, String>;
    /// A secure binding for a flow of `pid`'s container (`local` is its end; both ends as
    /// frames carry them): what the switch handed out and the two fds (binding region, the
    /// peer's doorbell).
    fn bind(
        &mut self,
        pid: u32,
        proto: Proto,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<(BindingInfo, BindingFds), BindError>;
    /// The switch process's pidfd and a number that changes whenever it does, to watch.
    fn switch_pidfd(&self) -> Option<(u64, BorrowedFd<'_>)> {
        None
    }
    /// The switch process exited: start another and attach every NIC again.
    fn switch_died(&mut self) {}
}

/// A NIC the daemon keeps.
struct Nic {
    port: u64,
    name: Name,
    /// The daemon's own copies (region, doorbell to the container, doorbell to the switch).
    fds: NicFds,
    grants: Grants,
}

/// The switch process the daemon talks to.
struct SwitchProc {
    pid: u32,
    pidfd: OwnedFd,
    /// Set when this daemon started it (to reap it).
    child: Option<Child>,
}

/// The real data plane: a switch process at `RUN_DIR/switch.sock`, started on the first NIC
/// if none answers, supervised through its pidfd.
pub struct SwitchLink {
    socket: PathBuf,
    exe: PathBuf,
    /// The tun interface a switch this daemon starts opens as its uplink.
    uplink: Option<String>,
    conn: Option<UnixStream>,
    proc_: Option<SwitchProc>,
    generation: u64,
    nics: BTreeMap<u32, Nic>,
    next_port: u64,
    /// Switch processes started (the first included).
    pub starts: u64,
}

fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 0)?)
}

fn dup_nic(f: &NicFds) -> io::Result<NicFds> {
    Ok(NicFds {
        region: dup(f.region.as_fd())?,
        to_container: dup(f.to_container.as_fd())?,
        to_switch: dup(f.to_switch.as_fd())?,
    })
}

fn log(msg: std::fmt::Arguments<'_>) {
    eprintln!("arrakis daemon: {msg}");
}

impl SwitchLink {
    /// The link to the switch at `socket`, started with `exe switch --socket SOCKET` when
    /// needed. If a switch answers already (this daemon restarted), its ports are taken
    /// back: the caller reconciles them with the store ([`Plane::attached`] lists them with
    /// empty grants; containers that are gone are detached by the next sync).
    pub fn open(socket: PathBuf, exe: PathBuf, uplink: Option<String>) -> SwitchLink {
        let mut l = SwitchLink {
            socket,
            exe,
            uplink,
            conn: None,
            proc_: None,
            generation: 0,
            nics: BTreeMap::new(),
            next_port: 1,
            starts: 0,
        };
        if l.connect().is_ok() {
            if let Err(e) = l.adopt() {
                log(format_args!("cannot take the running switch's ports back: {e}; restarting it"));
                l.kill();
            }
        }
        l
    }

    /// Connects to a switch that answers at the socket.
    fn connect(&mut self) -> io::Result<()> {
        let s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(CALL_TIMEOUT))?;
        s.set_write_timeout(Some(CALL_TIMEOUT))?;
        let cred = rustix::net::sockopt::socket_peercred(&s)?;
        let pid = cred.pid.as_raw_nonzero().get() as u32;
        if self.proc_.as_ref().map(|p| p.pid) != Some(pid) {
            let pidfd = rustix::process::pidfd_open(cred.pid, rustix::process::PidfdFlags::empty())?;
            self.proc_ = Some(SwitchProc { pid, pidfd, child: None });
            self.generation += 1;
        }
        self.conn = Some(s);
        Ok(())
    }

    /// Takes the ports of a running switch back, with their fds.
    fn adopt(&mut self) -> Result<(), String> {
        let ports = match self.call_once(&Cmd::List {}, &[])? {
            (Reply::Ports { ports, .. }, _) => ports,
            (other, _) => return Err(format!("unexpected reply {other:?}")),
        };
        for p in ports {
            let fds = match self.call_once(&Cmd::Fds { port: p.port }, &[])? {
                (Reply::Fds {}, fds) => fds,
                (other, _) => return Err(format!("unexpected reply {other:?}")),
            };
            let Ok([region, to_container, to_switch]) = <[OwnedFd; 3]>::try_from(fds) else {
                return Err("a port's fds did not come".into());
            };
            self.next_port = self.next_port.max(p.port + 1);
            if let Some(old) = self.nics.insert(
                p.pid,
                Nic {
                    port: p.port,
                    name: p.name,
                    fds: NicFds { region, to_container, to_switch },
                    grants: Grants::default(),
                },
            ) {
                // Two ports of one container: the older goes.
                let _ = self.call_once(&Cmd::Detach { port: old.port }, &[]);
            }
        }
        self.call_once(&Cmd::Forward {}, &[])?;
        log(format_args!(
            "took {} port(s) back from the running switch (pid {})",
            self.nics.len(),
            self.proc_.as_ref().map_or(0, |p| p.pid)
        ));
        Ok(())
    }

    /// One command on the current connection; a failure closes it.
    fn call_once(&mut self, cmd: &Cmd, fds: &[BorrowedFd<'_>]) -> Result<(Reply, Vec<OwnedFd>), String> {
        let Some(s) = &self.conn else { return Err("no switch".into()) };
        match channel::call(s, cmd, fds) {
            Ok((Reply::Err { reason }, _)) => Err(reason),
            Ok(r) => Ok(r),
            Err(e) => {
                self.conn = None;
                Err(e.to_string())
            }
        }
    }

    /// Kills the switch process (it failed to answer), so a fresh one is started.
    fn kill(&mut self) {
        self.conn = None;
        if let Some(p) = self.proc_.take() {
            let _ = rustix::process::pidfd_send_signal(&p.pidfd, rustix::process::Signal::KILL);
            if let Some(mut c) = p.child {
                let _ = c.wait();
            }
        }
    }

    /// Starts a switch process and waits up to [`START_TIMEOUT`] for it to answer.
    fn start(&mut self) -> Result<(), String> {
        let log_file = self.socket.with_file_name("switch.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_file)
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null());
        let mut cmd = Command::new(&self.exe);
        cmd.arg("switch").arg("--socket").arg(&self.socket);
        if let Some(name) = &self.uplink {
            cmd.arg("--uplink").arg(name);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start the switch ({}): {e}", self.exe.display()))?;
        self.starts += 1;
        let pid = child.id();
        let deadline = Instant::now() + START_TIMEOUT;
        let mut child = Some(child);
        // Bounded by the deadline: 20 ms per turn.
        while Instant::now() < deadline {
            if let Some(c) = child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    return Err(format!("the switch exited at start ({st}); see {}", log_file.display()));
                }
            }
            if self.connect().is_ok() {
                if let Some(p) = self.proc_.as_mut() {
                    if p.pid == pid {
                        p.child = child.take();
                    }
                }
                log(format_args!("started the switch (pid {pid}) at {}", self.socket.display()));
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
        Err(format!(
            "the switch did not answer at {} within {START_TIMEOUT:?}; see {}",
            self.socket.display(),
            log_file.display()
        ))
    }

    /// Makes sure a switch answers and holds every NIC: connects (or starts one) and, on a
    /// new connection, attaches every NIC the switch lacks and sets every port's grants.
    fn ensure(&mut self) -> Result<(), String> {
        if self.conn.is_some() {
            return Ok(());
        }
        if self.connect().is_err() {
            self.start()?;
        }
        let present: Vec<u64> = match self.call_once(&Cmd::List {}, &[])? {
            (Reply::Ports { ports, .. }, _) => ports.iter().map(|p| p.port).collect(),
            (other, _) => return Err(format!("unexpected reply {other:?}")),
        };
        let ours: BTreeMap<u64, u32> = self.nics.iter().map(|(&pid, n)| (n.port, pid)).collect();
        for port in &present {
            if !ours.contains_key(port) {
                self.call_once(&Cmd::Detach { port: *port }, &[])?;
            }
        }
        let pids: Vec<u32> = self.nics.keys().copied().collect();
        for pid in pids {
            let Some(n) = self.nics.get(&pid) else { continue };
            let grants = GrantsMsg::from_grants(&n.grants);
            let cmd = if present.contains(&n.port) {
                Cmd::SetGrants { port: n.port, grants }
            } else {
                Cmd::Attach { port: n.port, pid, name: n.name.clone(), grants }
            };
            let fds = if matches!(cmd, Cmd::Attach { .. }) {
                let f = &n.fds;
                vec![dup(f.region.as_fd()), dup(f.to_container.as_fd()), dup(f.to_switch.as_fd())]
                    .into_iter()
                    .collect::<io::Result<Vec<OwnedFd>>>()
                    .map_err(|e| e.to_string())?
            } else {
                Vec::new()
            };
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
            self.call_once(&cmd, &borrowed)?;
        }
        // Every NIC is there: frames held since the start may go.
        self.call_once(&Cmd::Forward {}, &[])?;
        Ok(())
    }

    /// Sends `cmd`; if the switch is unreachable or fails to answer, restarts it (which
    /// re-applies everything in `nics`) and tries once more.
    fn call(&mut self, cmd: &Cmd, fds: &[BorrowedFd<'_>]) -> Result<(Reply, Vec<OwnedFd>), String> {
        let mut last = String::new();
        for attempt in 0..2 {
            if let Err(e) = self.ensure() {
                if attempt == 1 {
                    return Err(e);
                }
                log(format_args!("the switch failed ({e}); restarting it"));
                self.kill();
                continue;
            }
            match self.call_once(cmd, fds) {
                Ok(r) => return Ok(r),
                Err(e) if self.conn.is_some() => return Err(e), // refused, not broken
                Err(e) => {
                    log(format_args!("the switch failed ({e}); restarting it"));
                    self.kill();
                    last = e;
                }
            }
        }
        Err(last)
    }
}

impl Plane for SwitchLink {
    fn attach(&mut self, pid: u32, name: &Name, grants: Grants) -> Result<NicFds, String> {
        self.detach(pid);
        if self.ensure().is_err() {
            // A switch that does not answer is replaced; a second failure is the answer.
            self.kill();
            self.ensure().map_err(|e| format!("no switch: {e}"))?;
        }
        let (fds, port_end) = create(Geometry::default()).map_err(|e| format!("cannot make a NIC: {e}"))?;
        // The switch builds its own end from the fds.
        drop(port_end);
        let theirs = dup_nic(&fds).map_err(|e| format!("cannot make a NIC: {e}"))?;
        let switch_fds = dup_nic(&fds).map_err(|e| format!("cannot make a NIC: {e}"))?;
        let port = self.next_port;
        self.next_port += 1;
        self.nics.insert(pid, Nic { port, name: name.clone(), fds, grants: grants.clone() });
        let cmd = Cmd::Attach { port, pid, name: name.clone(), grants: GrantsMsg::from_grants(&grants) };
        let sf = [switch_fds.region.as_fd(), switch_fds.to_container.as_fd(), switch_fds.to_switch.as_fd()];
        match self.call(&cmd, &sf) {
            Ok(_) => Ok(theirs),
            // A switch (re)started for this call attached it already (from `nics`).
            Err(e) if e.contains("attached already") => Ok(theirs),
            Err(e) => {
                self.nics.remove(&pid);
                Err(format!("the switch did not attach the NIC: {e}"))
            }
        }
    }

    fn set_grants(&mut self, pid: u32, grants: Grants) {
        let Some(n) = self.nics.get_mut(&pid) else { return };
        n.grants = grants;
        let cmd = Cmd::SetGrants { port: n.port, grants: GrantsMsg::from_grants(&n.grants) };
        if let Err(e) = self.call(&cmd, &[]) {
            log(format_args!("cannot set the grants of container {pid}'s port: {e}"));
        }
    }

    fn detach(&mut self, pid: u32) {
        let Some(n) = self.nics.remove(&pid) else { return };
        if self.conn.is_some() || self.proc_.is_some() {
            if let Err(e) = self.call(&Cmd::Detach { port: n.port }, &[]) {
                // A restarted switch does not have it anyway.
                if !e.starts_with("no port") {
                    log(format_args!("cannot detach container {pid}'s port: {e}"));
                }
            }
        }
    }

    fn attached(&self) -> Vec<(u32, Grants)> {
        self.nics.iter().map(|(&pid, n)| (pid, n.grants.clone())).collect()
    }

    fn stats(&mut self) -> Option<SwitchStats> {
        if self.nics.is_empty() && self.conn.is_none() {
            return None;
        }
        let (ports, uplink) = match self.call(&Cmd::Stats {}, &[]) {
            Ok((Reply::Stats { ports, uplink }, _)) => (ports, uplink),
            _ => return None,
        };
        let traffic = |p: channel::PortCounters| ContainerTraffic {
            pid: p.pid,
            tx_frames: p.tx_frames,
            rx_frames: p.rx_frames,
            tx_bytes: p.tx_bytes,
            rx_bytes: p.rx_bytes,
            drops: p.drops,
            bindings: p.bindings,
            bound: p.bound,
        };
        Some(SwitchStats {
            containers: ports.into_iter().map(traffic).collect(),
            uplink: uplink.map(traffic),
        })
    }

    fn capture(&mut self, pid: u32, out: OwnedFd, limit: Option<u64>) -> Result<(), String> {
        let Some(n) = self.nics.get(&pid) else {
            return Err(format!("container {pid} has no NIC on the switch"));
        };
        let cmd = Cmd::Capture { port: n.port, limit };
        self.call(&cmd, &[out.as_fd()]).map(|_| ())
    }

    fn stop_capture(&mut self, pid: u32) -> Result<Option<u64>, String> {
        let Some(n) = self.nics.get(&pid) else {
            return Err(format!("container {pid} has no NIC on the switch"));
        };
        match self.call(&Cmd::StopCapture { port: n.port }, &[])? {
            (Reply::Stopped { frames }, _) => Ok(frames),
            (other, _) => Err(format!("unexpected reply {other:?}")),
        }
    }

    fn bind(
        &mut self,
        pid: u32,
        proto: Proto,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<(BindingInfo, BindingFds), BindError> {
        let Some(n) = self.nics.get(&pid) else { return Err(BindError::NoNic) };
        let cmd = Cmd::Bind { port: n.port, proto, local, remote };
        match self.call(&cmd, &[]) {
            Ok((Reply::Bound { side, slot, id, peer, role, bit }, fds)) => {
                let Ok([region, peer_bell, summary]) = <[OwnedFd; 3]>::try_from(fds) else {
                    return Err(BindError::Failed("the bound reply did not carry three fds".into()));
                };
                Ok((
                    BindingInfo { side, slot, id, peer, role, bit },
                    BindingFds { region, peer_bell, summary },
                ))
            }
            Ok((other, _)) => Err(BindError::Failed(format!("unexpected reply {other:?}"))),
            // The connection is still up: the switch answered with a refusal.
            Err(reason) if self.conn.is_some() => Err(BindError::Refused(reason)),
            Err(reason) => Err(BindError::Failed(reason)),
        }
    }

    fn switch_pidfd(&self) -> Option<(u64, BorrowedFd<'_>)> {
        self.proc_.as_ref().map(|p| (self.generation, p.pidfd.as_fd()))
    }

    fn switch_died(&mut self) {
        let Some(mut p) = self.proc_.take() else { return };
        self.conn = None;
        let status = p.child.as_mut().and_then(|c| c.wait().ok()).map(|s| s.to_string());
        log(format_args!(
            "the switch (pid {}) exited{}; starting another",
            p.pid,
            status.map(|s| format!(" ({s})")).unwrap_or_default()
        ));
        if self.nics.is_empty() {
            return; // started again with the next NIC
        }
        if let Err(e) = self.ensure() {
            log(format_args!("cannot restart the switch: {e}"));
        }
    }
}

/// Where the switch's socket is: beside the daemon's.
pub fn switch_socket(daemon_socket: &Path) -> PathBuf {
    daemon_socket.with_file_name(channel::SOCKET_NAME)
}

/// A data plane that only records, for tests of the sessions.
#[cfg(test)]
pub mod fake {
    use super::*;

    /// Ports by pid with their grants; NICs are real (cheap) so the fds are real.
    #[derive(Default)]
    pub struct FakePlane {
        /// pid → grants last set.
        pub ports: BTreeMap<u32, Grants>,
        /// NICs made.
        pub attaches: u64,
        /// Bindings handed out.
        pub binds: u64,
    }

    impl Plane for FakePlane {
        fn attach(&mut self, pid: u32, _name: &Name, grants: Grants) -> Result<NicFds, String> {
            let geo = Geometry { ring_size: 2, buf_size: 256 };
            let (fds, _port) = create(geo).map_err(|e| e.to_string())?;
            self.ports.insert(pid, grants);
            self.attaches += 1;
            Ok(fds)
        }
        fn set_grants(&mut self, pid: u32, grants: Grants) {
            if let Some(g) = self.ports.get_mut(&pid) {
                *g = grants;
            }
        }
        fn detach(&mut self, pid: u32) {
            self.ports.remove(&pid);
        }
        fn attached(&self) -> Vec<(u32, Grants)> {
            self.ports.iter().map(|(&p, g)| (p, g.clone())).collect()
        }
        fn stats(&mut self) -> Option<SwitchStats> {
            None
        }
        fn capture(&mut self, pid: u32, _out: OwnedFd, _limit: Option<u64>) -> Result<(), String> {
            self.ports.contains_key(&pid).then_some(()).ok_or_else(|| "no NIC".into())
        }
        fn stop_capture(&mut self, pid: u32) -> Result<Option<u64>, String> {
            self.ports.contains_key(&pid).then_some(Some(0)).ok_or_else(|| "no NIC".into())
        }
        /// Hands out a real binding region and doorbell when the asker's grants allow the flow
        /// both ways (the fake has no peers to check).
        fn bind(
            &mut self,
            pid: u32,
            proto: Proto,
            local: SocketAddr,
            remote: SocketAddr,
        ) -> Result<(BindingInfo, BindingFds), BindError> {
            let g = self.ports.get(&pid).ok_or(BindError::NoNic)?;
            let flow = emu::Flow { proto: proto.into(), src: local, dst: remote };
            if !g.may_send(&flow) || !g.may_receive(&flow.reversed()) {
                return Err(BindError::Refused("not granted".into()));
            }
            let region = arrakis_backends::emulator::ring::Region::create_binding(
                arrakis_backends::emulator::binding::GEOMETRY,
            )
            .map_err(|e| BindError::Failed(e.to_string()))?;
            let bell =
                arrakis_backends::emulator::Doorbell::new().map_err(|e| BindError::Failed(e.to_string()))?;
            let summary = arrakis_backends::emulator::ring::Summary::create()
                .map_err(|e| BindError::Failed(e.to_string()))?;
            self.binds += 1;
            let id = u32::try_from(self.binds).unwrap_or(u32::MAX);
            Ok((
                BindingInfo { side: 0, slot: 0, id, peer: 0, role: 0, bit: 0 },
                BindingFds {
                    region: dup(region.fd()).map_err(|e| BindError::Failed(e.to_string()))?,
                    peer_bell: bell.into(),
                    summary: dup(summary.fd()).map_err(|e| BindError::Failed(e.to_string()))?,
                },
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use arrakis_backends::proto::{Peer, PortRange};

    use super::*;

    fn f(local: &str, peers: Vec<Peer>) -> Filter {
        Filter::new(Direction::Both, Proto::Udp, local.parse().unwrap(), PortRange::new(5, 9).unwrap(), peers)
            .unwrap()
    }

    fn peer(a: &str, ports: Option<PortRange>) -> Peer {
        Peer { addr: a.parse().unwrap(), ports }
    }

    #[test]
    fn filters_convert_exactly_or_not_at_all() {
        let s = switch_filter(&f("::", vec![])).unwrap();
        assert_eq!((s.local, s.ports, s.peers.len()), (None, 5..=9, 0));
        assert_eq!(switch_filter(&f("0.0.0.0", vec![])).unwrap().local, Some("0.0.0.0".parse().unwrap()));
        assert_eq!(
            switch_filter(&f("::ffff:127.0.0.1", vec![])).unwrap().local,
            Some("127.0.0.1".parse().unwrap())
        );
        let p =
            switch_filter(&f("::1", vec![peer("10.0.0.1", None), peer("::ffff:10.0.0.2", None)])).unwrap();
        assert_eq!(p.peers, vec!["10.0.0.1".parse::<IpAddr>().unwrap(), "10.0.0.2".parse().unwrap()]);
        assert!(switch_filter(&f("::", vec![peer("10.0.0.1", None), peer("::", None)]))
            .unwrap()
            .peers
            .is_empty());
        assert!(switch_filter(&f("::", vec![peer("10.0.0.1", PortRange::one(53))])).is_err());
        assert!(switch_filter(&f("::", vec![peer("0.0.0.0", None)])).is_err());
    }
}
