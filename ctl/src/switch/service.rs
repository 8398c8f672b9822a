//! The switch process, `arrakis switch --socket RUN_DIR/switch.sock`: the data plane apart
//! from the daemon, so the daemon can die and restart without a frame lost.
//!
//! One thread, one epoll set: the NICs' doorbells (the [`Switch`]'s), the listening socket
//! and the one control connection ([`channel`](super::channel)). It forwards frames whether or
//! not a daemon is connected; a daemon that connects (a restarted one) replaces the previous
//! connection, lists the ports and takes their fds back ([`Cmd::List`], [`Cmd::Fds`]). A
//! fresh switch holds every frame until the daemon has attached all the NICs and says
//! [`Cmd::Forward`]. While
//! frames flow it looks at the control connection every millisecond; idle it sleeps on
//! everything at once. A control message that does not decode or validate closes the
//! connection with a log line; nothing a peer sends can make it panic.
//!
//! It keeps a dup of each NIC's three fds (to hand back) and a pidfd of each port's
//! container. With no daemon connected and no port's container alive it exits after
//! [`ALONE_EXIT`]: a switch outlives its daemon only while it has traffic to carry.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrakis_backends::emulator::filter::Flow;
use arrakis_backends::emulator::ring::{Consumer, Doorbell, Producer, Region, Ring};
use arrakis_backends::emulator::SwitchPort;
use arrakis_backends::proto::{Name, Proto};
use rustix::event::{poll, PollFd, PollFlags};

use super::channel::{self, ChannelError, Cmd, PortCounters, PortEntry, Received, Receiver, Reply};
use super::{DropReason, PortId, PortStats, SpinPolicy, Switch, FOREIGN, SLEEP_CAP};

/// How long a switch with no daemon and no live container waits before it exits.
pub const ALONE_EXIT: Duration = Duration::from_secs(5);
/// How often a busy switch looks at its control connection.
const LOOK_EVERY: Duration = Duration::from_millis(1);
/// Most control messages answered per wake-up (the rest on the next turn).
const BATCH: usize = 64;
/// Send timeout of replies (the daemon reads each reply at once).
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

const LISTEN: u64 = FOREIGN;
const CONN: u64 = FOREIGN + 1;

struct Attached {
    id: PortId,
    pid: u32,
    name: Name,
    /// Region, doorbell to the container, doorbell to the switch.
    fds: [OwnedFd; 3],
    /// The container, to notice when none is left.
    pidfd: Option<OwnedFd>,
}

/// The switch and its control side.
pub struct Service {
    sw: Switch,
    listener: UnixListener,
    conn: Option<(UnixStream, Receiver)>,
    ports: BTreeMap<u64, Attached>,
    uid: u32,
    /// False until the daemon says [`Cmd::Forward`]: frames wait in the tx rings.
    forwarding: bool,
}

/// A port's drops as `arrakis stats` names them, the reasons that happened only.
fn drops_by_reason(s: &PortStats) -> BTreeMap<String, u64> {
    let d = s.drops;
    [
        (DropReason::SrcNotGranted.as_str(), d.src_not_granted),
        (DropReason::NoRoute.as_str(), d.no_route),
        (DropReason::Malformed.as_str(), d.malformed),
        (DropReason::Unsupported.as_str(), d.unsupported),
        (DropReason::QueueFull.as_str(), d.queue_full),
        ("bad-desc", s.bad_desc),
        ("bad-index", s.bad_index),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(k, n)| (k.to_owned(), n))
    .collect()
}

fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 0)?)
}

/// The switch's end of a NIC from its three fds (validating the region). The indices live in
/// the shared region, so a port rebuilt on a region another switch served resumes where that
/// one stopped.
pub fn port_from_fds(region: OwnedFd, to_container: OwnedFd, to_switch: OwnedFd) -> io::Result<SwitchPort> {
    let region = Arc::new(Region::attach(region)?);
    Ok(SwitchPort {
        tx: Consumer::new(region.clone(), Ring::Tx),
        rx: Producer::new(region, Ring::Rx),
        bell: Doorbell::from_fd(to_switch),
        peer: Doorbell::from_fd(to_container),
    })
}

fn log(msg: std::fmt::Arguments<'_>) {
    eprintln!("arrakis switch: {msg}");
}

impl Service {
    /// A switch serving `listener` (non-blocking, watched).
    pub fn new(listener: UnixListener) -> io::Result<Service> {
        listener.set_nonblocking(true)?;
        let mut sw = Switch::new()?;
        sw.watch(&listener, LISTEN)?;
        Ok(Service {
            sw,
            listener,
            conn: None,
            ports: BTreeMap::new(),
            uid: rustix::process::getuid().as_raw(),
            forwarding: false,
        })
    }

    /// Runs until `stop` is set, or, with `alone_exit`, until it has been without daemon and
    /// without a live container that long.
    pub fn run(&mut self, stop: &AtomicBool, alone_exit: Option<Duration>) -> io::Result<()> {
        let mut last_work = Instant::now();
        let mut last_look = Instant::now();
        let mut alone_since: Option<Instant> = None;
        let mut last_alone_check = Instant::now();
        let mut fired = Vec::new();
        let mut policy = SpinPolicy::default();
        // Polling after work found nothing yet: the next frame is a spin's hit.
        let mut spinning = false;
        while !stop.load(Ordering::Relaxed) {
            fired.clear();
            if !self.forwarding {
                // Holding: only the control side is served (doorbells are drained, frames
                // stay in the rings).
                self.sw.wait(SLEEP_CAP, &mut fired)?;
            } else if self.sw.poll() > 0 {
                if std::mem::take(&mut spinning) {
                    policy.hit();
                }
                last_work = Instant::now();
                if last_look.elapsed() >= LOOK_EVERY {
                    self.sw.check(&mut fired)?;
                    last_look = Instant::now();
                }
            } else if policy.may_spin(Instant::now()) && last_work.elapsed() < self.sw.spin {
                spinning = true;
                std::hint::spin_loop();
                if last_look.elapsed() >= LOOK_EVERY {
                    self.sw.check(&mut fired)?;
                    last_look = Instant::now();
                }
            } else {
                if std::mem::take(&mut spinning) {
                    policy.miss(Instant::now(), self.sw.spin);
                }
                self.sw.sleep(SLEEP_CAP, &mut fired)?;
                last_work = Instant::now();
                last_look = last_work;
            }
            for &t in &fired {
                match t {
                    LISTEN => self.accept(),
                    CONN => self.serve_conn(),
                    _ => {}
                }
            }
            // Closed and lonely bindings: at most every 100 ms, nothing without bindings (an
            // idle switch wakes no more often than its sleep cap).
            self.sw.maybe_gc_bindings();
            if let Some(limit) = alone_exit {
                if last_alone_check.elapsed() >= SLEEP_CAP {
                    last_alone_check = Instant::now();
                    if self.conn.is_none() && !self.any_container_alive() {
                        let since = *alone_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= limit {
                            log(format_args!("no daemon and no live container for {limit:?}; exiting"));
                            return Ok(());
                        }
                    } else {
                        alone_since = None;
                    }
                }
            }
        }
        Ok(())
    }

    fn any_container_alive(&self) -> bool {
        self.ports.values().any(|a| match &a.pidfd {
            // A pidfd is readable once its process exited.
            Some(fd) => {
                let mut p = [PollFd::new(fd, PollFlags::IN)];
                matches!(poll(&mut p, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 })), Ok(0))
            }
            None => rustix::process::test_kill_process(
                rustix::process::Pid::from_raw(a.pid as i32).unwrap_or(rustix::process::Pid::INIT),
            )
            .is_ok(),
        })
    }

    fn accept(&mut self) {
        // Bounded: a listener backlog is finite, and each turn takes one connection or stops.
        for _ in 0..64 {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let uid = rustix::net::sockopt::socket_peercred(&stream).map(|c| c.uid.as_raw());
            if !matches!(uid, Ok(u) if u == self.uid || u == 0) {
                log(format_args!("refused a control connection from uid {uid:?}"));
                continue;
            }
            if stream.set_write_timeout(Some(REPLY_TIMEOUT)).is_err() {
                continue;
            }
            if let Some((old, _)) = self.conn.take() {
                self.sw.unwatch(&old);
                log(format_args!("a new daemon connected; the previous connection is closed"));
            }
            if self.sw.watch(&stream, CONN).is_ok() {
                self.conn = Some((stream, Receiver::new()));
            }
        }
    }

    fn drop_conn(&mut self, why: Option<String>) {
        if let Some((s, _)) = self.conn.take() {
            self.sw.unwatch(&s);
        }
        if let Some(why) = why {
            log(format_args!("closing the control connection: {why}"));
        }
    }

    /// Answers what the daemon sent, at most [`BATCH`] messages per call.
    fn serve_conn(&mut self) {
        for _ in 0..BATCH {
            let Some((stream, rx)) = self.conn.as_mut() else { return };
            let (body, fds) = match rx.read(stream, true) {
                Ok(Received::Frame(b, f)) => (b, f),
                Ok(Received::More) => return,
                Err(ChannelError::Closed) => return self.drop_conn(None),
                Err(e) => return self.drop_conn(Some(e.to_string())),
            };
            let cmd = match channel::decode_cmd(&body, fds.len()) {
                Ok(c) => c,
                Err(e) => return self.drop_conn(Some(format!("bad message: {e}"))),
            };
            let fds_of = match cmd {
                Cmd::Fds { port } => Some(port),
                _ => None,
            };
            let (reply, out_fds) = match self.handle(cmd, fds) {
                Handled::Reply(r) => (r, Vec::new()),
                Handled::WithFds(r, f) => (r, f),
            };
            let Some((stream, _)) = self.conn.as_ref() else { return };
            let sent = match (&reply, fds_of.and_then(|p| self.ports.get(&p))) {
                (Reply::Fds {}, Some(a)) => {
                    channel::send(stream, &reply, &[a.fds[0].as_fd(), a.fds[1].as_fd(), a.fds[2].as_fd()])
                }
                (Reply::Fds {}, None) => {
                    channel::send(stream, &Reply::Err { reason: "no such port".into() }, &[])
                }
                (r, _) => {
                    let borrowed: Vec<BorrowedFd<'_>> = out_fds.iter().map(|f| f.as_fd()).collect();
                    channel::send(stream, r, &borrowed)
                }
            };
            if let Err(e) = sent {
                return self.drop_conn(Some(format!("cannot reply: {e}")));
            }
        }
    }

    fn handle(&mut self, cmd: Cmd, fds: Vec<OwnedFd>) -> Handled {
        if let Cmd::Bind { port, proto, local, remote } = cmd {
            return self.bind(port, proto, local, remote);
        }
        Handled::Reply(self.handle_plain(cmd, fds))
    }

    /// [`Cmd::Bind`]: the switch's checks and the binding's fds.
    fn bind(&mut self, port: u64, proto: Proto, local: SocketAddr, remote: SocketAddr) -> Handled {
        let Some(a) = self.ports.get(&port) else {
            return Handled::Reply(Reply::Err { reason: format!("no port {port}") });
        };
        match self.sw.bind(a.id, Flow { proto: proto.into(), src: local, dst: remote }) {
            Ok((info, f)) => Handled::WithFds(
                Reply::Bound {
                    side: info.side,
                    slot: info.slot,
                    id: info.id,
                    peer: info.peer,
                    role: info.role,
                    bit: info.bit,
                },
                vec![f.region, f.peer_bell, f.summary],
            ),
            Err(e) => Handled::Reply(Reply::Err { reason: e.to_string() }),
        }
    }

    fn handle_plain(&mut self, cmd: Cmd, fds: Vec<OwnedFd>) -> Reply {
        let err = |reason: String| Reply::Err { reason };
        let id_of = |s: &Service, port: u64| s.ports.get(&port).map(|a| a.id);
        match cmd {
            Cmd::Attach { port, pid, name, grants } => {
                if self.ports.contains_key(&port) {
                    return err(format!("port {port} is attached already"));
                }
                if self.ports.len() >= channel::MAX_PORTS {
                    return err(format!("the switch holds {} ports already", channel::MAX_PORTS));
                }
                let Ok(grants) = grants.to_grants() else { return err("bad grants".into()) };
                let Ok([region, to_container, to_switch]) = <[OwnedFd; 3]>::try_from(fds) else {
                    return err("an attach carries three fds".into());
                };
                let kept = match (dup(region.as_fd()), dup(to_container.as_fd()), dup(to_switch.as_fd())) {
                    (Ok(a), Ok(b), Ok(c)) => [a, b, c],
                    _ => return err("cannot keep the NIC's fds (out of fds?)".into()),
                };
                let nic = match port_from_fds(region, to_container, to_switch) {
                    Ok(n) => n,
                    Err(e) => return err(format!("bad NIC: {e}")),
                };
                let id = match self.sw.attach(name.as_str(), nic, grants) {
                    Ok(id) => id,
                    Err(e) => return err(format!("cannot attach: {e}")),
                };
                log(format_args!(
                    "attached port {port} of container {pid} ({})",
                    self.sw.name(id).unwrap_or("?")
                ));
                let pidfd = rustix::process::Pid::from_raw(pid as i32)
                    .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok());
                self.ports.insert(port, Attached { id, pid, name, fds: kept, pidfd });
                Reply::Ok {}
            }
            Cmd::SetGrants { port, grants } => match (id_of(self, port), grants.to_grants()) {
                (Some(id), Ok(g)) => {
                    self.sw.set_grants(id, g);
                    Reply::Ok {}
                }
                (None, _) => err(format!("no port {port}")),
                (_, Err(e)) => err(e),
            },
            Cmd::Detach { port } => match self.ports.remove(&port) {
                Some(a) => {
                    let _ = self.sw.stop_capture(a.id);
                    self.sw.detach(a.id);
                    Reply::Ok {}
                }
                None => err(format!("no port {port}")),
            },
            Cmd::Stats {} => Reply::Stats {
                ports: self
                    .ports
                    .iter()
                    .filter_map(|(&port, a)| {
                        let s = self.sw.stats(a.id)?;
                        Some(PortCounters {
                            port,
                            pid: a.pid,
                            tx_frames: s.tx_frames,
                            tx_bytes: s.tx_bytes,
                            rx_frames: s.rx_frames,
                            rx_bytes: s.rx_bytes,
                            drops: drops_by_reason(&s),
                            capturing: self.sw.capturing(a.id),
                            bindings: s.bindings,
                            bound: s.bound,
                        })
                    })
                    .collect(),
                uplink: self.sw.uplink_stats().map(|(_, s)| PortCounters {
                    port: 0,
                    pid: 0,
                    tx_frames: s.tx_frames,
                    tx_bytes: s.tx_bytes,
                    rx_frames: s.rx_frames,
                    rx_bytes: s.rx_bytes,
                    drops: drops_by_reason(&s),
                    capturing: None,
                    bindings: 0,
                    bound: 0,
                }),
            },
            Cmd::Capture { port, limit } => {
                let Some(id) = id_of(self, port) else { return err(format!("no port {port}")) };
                let Some(fd) = fds.into_iter().next() else { return err("a capture carries one fd".into()) };
                match self.sw.capture(id, Box::new(std::fs::File::from(fd)), limit) {
                    Ok(()) => Reply::Ok {},
                    Err(e) => err(format!("cannot write the capture: {e}")),
                }
            }
            Cmd::StopCapture { port } => match id_of(self, port) {
                Some(id) => match self.sw.stop_capture(id) {
                    Ok(frames) => Reply::Stopped { frames },
                    Err(e) => err(format!("cannot flush the capture: {e}")),
                },
                None => err(format!("no port {port}")),
            },
            Cmd::List {} => Reply::Ports {
                pid: std::process::id(),
                ports: self
                    .ports
                    .iter()
                    .map(|(&port, a)| PortEntry { port, pid: a.pid, name: a.name.clone() })
                    .collect(),
            },
            Cmd::Fds { port } => {
                if !self.ports.contains_key(&port) {
                    return err(format!("no port {port}"));
                }
                Reply::Fds {}
            }
            Cmd::Forward {} => {
                if !self.forwarding {
                    log(format_args!("forwarding ({} port(s))", self.ports.len()));
                }
                self.forwarding = true;
                Reply::Ok {}
            }
            Cmd::Bind { .. } => err("bind is answered apart".into()),
        }
    }
}

/// What [`Service::handle`] answers: a reply, and fds that ride on it.
enum Handled {
    Reply(Reply),
    WithFds(Reply, Vec<OwnedFd>),
}

/// Binds the switch's socket (0600: only the daemon's user talks to the switch), replacing a
/// stale one; refuses if a switch answers there.
pub fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    use anyhow::{bail, Context};
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if std::fs::symlink_metadata(socket).is_ok() {
        if UnixStream::connect(socket).is_ok() {
            bail!("a switch already answers at {}", socket.display());
        }
        std::fs::remove_file(socket)
            .with_context(|| format!("cannot remove the stale {}", socket.display()))?;
    }
    let l = UnixListener::bind(socket).with_context(|| format!("cannot listen at {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set the mode of {}", socket.display()))?;
    Ok(l)
}

/// `arrakis switch --socket PATH`: leaves the daemon's session (a Ctrl-C or hang-up aimed at
/// the daemon must not reach the data plane), binds, writes `switch.pid` beside the socket
/// and serves until alone for [`ALONE_EXIT`].
pub fn main(socket: &Path, uplink: Option<&str>) -> anyhow::Result<()> {
    use anyhow::Context;
    let _ = rustix::process::setsid();
    // The uplink first: a switch that cannot open it must not take the socket.
    let tap = match uplink {
        Some(name) => Some(arrakis_backends::emulator::tap::Tap::open(name).with_context(|| {
            format!(
                "the uplink {name}: create it first (ip tuntap add dev {name} mode tun; \
                 ip addr add ADDR/PREFIX dev {name}; ip link set {name} up)"
            )
        })?),
        None => None,
    };
    let listener = bind(socket)?;
    if let Some(dir) = socket.parent() {
        let pid_file = dir.join(channel::PID_NAME);
        std::fs::write(&pid_file, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write {}", pid_file.display()))?;
    }
    log(format_args!("listening on {} (pid {})", socket.display(), std::process::id()));
    let mut s = Service::new(listener)?;
    if let Some(v) = std::env::var_os("ARRAKIS_SWITCH_SPIN_US") {
        match v.to_str().and_then(|v| v.trim().parse::<u64>().ok()).filter(|&us| us <= 1_000_000) {
            Some(us) => s.sw.spin = Duration::from_micros(us),
            None => log(format_args!(
                "ARRAKIS_SWITCH_SPIN_US={v:?} is not 0 to 1000000 microseconds; using {} us",
                s.sw.spin.as_micros()
            )),
        }
    }
    if let Some(tap) = tap {
        log(format_args!("uplink {}", tap.name()));
        s.sw.set_uplink(tap)?;
    }
    let stop = AtomicBool::new(false);
    s.run(&stop, Some(ALONE_EXIT)).context("the switch's loop failed")
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use arrakis_backends::emulator::{create, Geometry};
    use proptest::prelude::*;

    use super::*;
    use crate::switch::channel::GrantsMsg;

    /// What the test writes into the channel: a command (an attach with a real NIC's fds)
    /// or raw bytes.
    #[derive(Debug, Clone)]
    enum Step {
        Cmd(Cmd),
        AttachWithFds(u64),
        Raw(Vec<u8>),
    }

    fn step() -> impl Strategy<Value = Step> {
        let cmd = prop_oneof![
            (0u64..6).prop_map(|port| Cmd::Detach { port }),
            Just(Cmd::Stats {}),
            Just(Cmd::List {}),
            Just(Cmd::Forward {}),
            (0u64..6).prop_map(|port| Cmd::Fds { port }),
            (0u64..6).prop_map(|port| Cmd::StopCapture { port }),
            (0u64..6, 0u16..3, 0u16..3).prop_map(|(port, lo, hi)| Cmd::SetGrants {
                port,
                grants: GrantsMsg {
                    addrs: vec![],
                    filters: vec![channel::FilterMsg {
                        dir: arrakis_backends::proto::Direction::Both,
                        proto: arrakis_backends::proto::Proto::Udp,
                        local: None,
                        lo,
                        hi,
                        peers: vec![],
                    }],
                },
            }),
            // Binds, valid or not (port 0, a wildcard, mixed families).
            (
                0u64..6,
                any::<bool>(),
                prop::sample::select(vec![
                    "127.0.0.1:5000",
                    "127.0.0.1:0",
                    "0.0.0.0:1",
                    "[::1]:7",
                    "[::ffff:127.0.0.1]:9"
                ]),
                prop::sample::select(vec!["127.0.0.1:6379", "[::1]:6379", "224.0.0.1:5"]),
            )
                .prop_map(|(port, udp, l, r)| Cmd::Bind {
                    port,
                    proto: if udp {
                        arrakis_backends::proto::Proto::Udp
                    } else {
                        arrakis_backends::proto::Proto::Tcp
                    },
                    local: l.parse().unwrap(),
                    remote: r.parse().unwrap(),
                }),
            // An attach without its fds: invalid.
            (0u64..6).prop_map(|port| Cmd::Attach {
                port,
                pid: 1,
                name: Name::lossy("x"),
                grants: GrantsMsg::default()
            }),
        ];
        prop_oneof![
            4 => cmd.prop_map(Step::Cmd),
            2 => (0u64..6).prop_map(Step::AttachWithFds),
            1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Step::Raw),
        ]
    }

    fn service(tag: &str) -> (Service, PathBuf) {
        let dir = std::env::temp_dir().join(format!("arrakis-switch-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let l = bind(&dir.join("s.sock")).unwrap();
        (Service::new(l).unwrap(), dir)
    }

    use std::path::PathBuf;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Whatever the daemon's end writes, the switch neither panics nor hangs, and every
        /// port it holds was asked for by a valid attach (with its three fds).
        #[test]
        fn the_channel_survives_any_byte_stream(steps in prop::collection::vec(step(), 1..16)) {
            let (mut s, dir) = service("fuzz");
            let (ours, theirs) = UnixStream::pair().unwrap();
            theirs.set_nonblocking(true).unwrap();
            ours.set_nonblocking(true).unwrap();
            s.conn = Some((theirs, Receiver::new()));
            let mut valid_attaches = Vec::new();
            let mut nics = Vec::new();
            for st in &steps {
                let sent = match st {
                    Step::Cmd(c) => channel::send(&ours, c, &[]).is_ok(),
                    Step::AttachWithFds(port) => {
                        let (fds, _end) = create(Geometry { ring_size: 2, buf_size: 256 }).unwrap();
                        let c = Cmd::Attach { port: *port, pid: 1, name: Name::lossy("n"), grants: GrantsMsg::default() };
                        let ok = channel::send(&ours, &c, &[fds.region.as_fd(), fds.to_container.as_fd(), fds.to_switch.as_fd()]).is_ok();
                        nics.push(fds);
                        if ok {
                            valid_attaches.push(*port);
                        }
                        ok
                    }
                    Step::Raw(b) => rustix::net::send(&ours, b, rustix::net::SendFlags::NOSIGNAL).is_ok(),
                };
                // Serve after each write (bounded: each call answers at most BATCH messages
                // and returns when nothing complete is left).
                for _ in 0..4 {
                    s.serve_conn();
                }
                // Drain the replies so the pair never fills.
                let mut sink = [0u8; 65536];
                for _ in 0..64 {
                    match rustix::net::recv(&ours, &mut sink, rustix::net::RecvFlags::DONTWAIT) {
                        Ok((n, _)) if n > 0 => {}
                        _ => break,
                    }
                }
                if !sent || s.conn.is_none() {
                    break;
                }
            }
            for port in s.ports.keys() {
                prop_assert!(valid_attaches.contains(port), "port {port} attached without a valid attach");
            }
            prop_assert!(s.ports.len() <= valid_attaches.len());
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Reads one reply from the daemon's end.
    fn reply(ours: &UnixStream) -> (Reply, Vec<OwnedFd>) {
        ours.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rx = Receiver::new();
        for _ in 0..8 {
            if let Received::Frame(body, fds) = rx.read(ours, false).unwrap() {
                let n = fds.len();
                return (channel::decode_reply(&body, n).unwrap(), fds);
            }
        }
        panic!("no reply");
    }

    #[test]
    fn a_bind_over_the_channel_hands_out_both_sides_and_stats_count_them() {
        use arrakis_backends::proto::{Direction, Proto};
        let (mut s, dir) = service("bind");
        let (ours, theirs) = UnixStream::pair().unwrap();
        theirs.set_nonblocking(true).unwrap();
        s.conn = Some((theirs, Receiver::new()));
        let grants = |lo, hi| GrantsMsg {
            addrs: vec!["127.0.0.1".parse().unwrap()],
            filters: vec![channel::FilterMsg {
                dir: Direction::Both,
                proto: Proto::Tcp,
                local: None,
                lo,
                hi,
                peers: vec![],
            }],
        };
        let mut nics = Vec::new();
        for (port, g) in [(1u64, grants(40000, 40999)), (2, grants(80, 80))] {
            let (fds, _end) = create(Geometry::default()).unwrap();
            let c = Cmd::Attach { port, pid: 1, name: Name::lossy("n"), grants: g };
            channel::send(&ours, &c, &[fds.region.as_fd(), fds.to_container.as_fd(), fds.to_switch.as_fd()])
                .unwrap();
            s.serve_conn();
            assert_eq!(reply(&ours).0, Reply::Ok {});
            nics.push(fds);
        }
        let bind = |port, local: &str, remote: &str| Cmd::Bind {
            port,
            proto: Proto::Tcp,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
        };
        channel::send(&ours, &bind(1, "127.0.0.1:40001", "127.0.0.1:80"), &[]).unwrap();
        s.serve_conn();
        let (r0, f0) = reply(&ours);
        let Reply::Bound { side: 0, slot, id, role: 0, bit, .. } = r0 else { panic!("{r0:?}") };
        assert_eq!(f0.len(), 3);
        let nic_a = Region::attach(dup(nics[0].region.as_fd()).unwrap()).unwrap();
        assert_eq!(nic_a.slot(slot as usize).unwrap().load(Ordering::Acquire), id);
        let mut f0 = f0.into_iter();
        assert!(Region::attach_binding(f0.next().unwrap()).is_ok());
        let page0 = arrakis_backends::emulator::ring::Summary::attach(f0.nth(1).unwrap()).unwrap();

        channel::send(&ours, &bind(2, "127.0.0.1:80", "127.0.0.1:40001"), &[]).unwrap();
        s.serve_conn();
        let (r1, f1) = reply(&ours);
        // The other container of the pair: the other role, the same bit of the same page.
        assert!(
            matches!(r1, Reply::Bound { side: 1, id: i, role: 1, bit: b, .. } if i == id && b == bit),
            "{r1:?}"
        );
        assert_eq!(f1.len(), 3);
        let page1 = arrakis_backends::emulator::ring::Summary::attach(dup(f1[2].as_fd()).unwrap()).unwrap();
        assert_eq!(page0.identity().unwrap(), page1.identity().unwrap());

        // A refusal is a reply, and the channel stays.
        channel::send(&ours, &bind(2, "127.0.0.1:80", "127.0.0.1:41000"), &[]).unwrap();
        s.serve_conn();
        let (r, f) = reply(&ours);
        assert!(matches!(&r, Reply::Err { reason } if reason.contains("no container")), "{r:?}");
        assert!(f.is_empty() && s.conn.is_some());
        channel::send(&ours, &bind(9, "127.0.0.1:80", "127.0.0.1:40001"), &[]).unwrap();
        s.serve_conn();
        assert!(matches!(reply(&ours).0, Reply::Err { .. }));

        channel::send(&ours, &Cmd::Stats {}, &[]).unwrap();
        s.serve_conn();
        let Reply::Stats { ports, .. } = reply(&ours).0 else { panic!("no stats") };
        assert_eq!(ports.iter().map(|p| p.bindings).collect::<Vec<_>>(), vec![1, 1]);

        // Detaching B revokes the binding in A's NIC.
        channel::send(&ours, &Cmd::Detach { port: 2 }, &[]).unwrap();
        s.serve_conn();
        assert_eq!(reply(&ours).0, Reply::Ok {});
        assert_eq!(nic_a.slot(slot as usize).unwrap().load(Ordering::Acquire), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_clean_stream_attaches_and_a_bad_message_closes_the_channel() {
        let (mut s, dir) = service("clean");
        let (ours, theirs) = UnixStream::pair().unwrap();
        theirs.set_nonblocking(true).unwrap();
        s.conn = Some((theirs, Receiver::new()));
        let (fds, _end) = create(Geometry { ring_size: 2, buf_size: 256 }).unwrap();
        let c = Cmd::Attach { port: 7, pid: 1, name: Name::lossy("n"), grants: GrantsMsg::default() };
        channel::send(&ours, &c, &[fds.region.as_fd(), fds.to_container.as_fd(), fds.to_switch.as_fd()])
            .unwrap();
        s.serve_conn();
        assert_eq!(s.ports.keys().copied().collect::<Vec<_>>(), vec![7]);
        rustix::net::send(&ours, &[3, 0, 0, 0, b'{', b'}', b'x'], rustix::net::SendFlags::NOSIGNAL).unwrap();
        s.serve_conn();
        assert!(s.conn.is_none(), "a bad message closes the channel");
        assert_eq!(s.ports.len(), 1, "and changes nothing");
        let _ = std::fs::remove_dir_all(dir);
    }
}
