//! One client's side of the protocol, apart from its socket: bytes in, reply bytes out.
//! [`Daemon`] holds what all sessions share (the registry, the host, the store) and answers
//! a frame; [`Session`] holds one connection's framing and negotiated version. Both are
//! driven by the server's event loop and, in tests, directly with arbitrary bytes.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Instant;

use arrakis_backends::proto::frame::encode;
use arrakis_backends::proto::{
    bind_flow, decode_request, DaemonInfo, ErrorKind, ErrorReply, FrameBuf, Outcome, Proto, ReplyFrame,
    Request, Response, MIN_VERSION, VERSION,
};

use super::host::Host;
use super::plane::{switch_grants, BindError, Plane};
use super::rules::{Caller, Registry};
use super::store::Store;
use super::vsa::Vsas;

/// What every session shares.
pub struct Daemon {
    /// Containers and grants.
    pub registry: Registry,
    /// The outside world.
    pub host: Box<dyn Host>,
    /// The store (`None` in tests of the rules alone).
    pub store: Option<Store>,
    /// The socket, for `status`.
    pub socket: PathBuf,
    /// When the daemon started.
    pub started: Instant,
    /// The containers' NICs and the switch.
    pub plane: Box<dyn Plane>,
    /// The VSAs and their volumes' owners.
    pub vsas: Vsas,
}

/// What the server must do after a frame.
#[derive(Debug, Default)]
pub struct Effects {
    /// Reply bytes to send.
    pub reply: Vec<u8>,
    /// Fds to send with the reply that starts at each offset of `reply` (`SCM_RIGHTS` on its
    /// first byte).
    pub fds: Vec<(usize, Vec<OwnedFd>)>,
    /// The stream lost its framing: close after sending the reply.
    pub close: bool,
    /// A container registered (its pid, to watch for its death).
    pub registered: Option<u32>,
    /// Containers were removed (watches to drop).
    pub removed: bool,
    /// Processes that became a volume's owner (pid, start time), to watch for their death.
    pub owners: Vec<(u32, u64)>,
}

impl Daemon {
    /// Writes the registry's changes to the store. On failure the registry is reloaded from
    /// the store (which is the truth) and the error is returned for the reply.
    pub fn persist(&mut self) -> Result<(), ErrorKind> {
        let mut changes = self.registry.take_changes();
        changes.extend(self.vsas.take_changes());
        if let Some(store) = &self.store {
            if let Err(e) = store.commit(&changes) {
                eprintln!("arrakis daemon: {e}");
                self.vsas.drop_pending();
                if let Ok(l) = store.load() {
                    let counters = self.registry.counters.clone();
                    self.registry = Registry::new(self.registry.limits(), l.containers, l.grants, l.next_id);
                    self.registry.counters = counters;
                    let probe = self.vsas.probe;
                    self.vsas = Vsas::new(self.vsas.config().clone(), l.vsas);
                    self.vsas.probe = probe;
                }
                return Err(ErrorKind::Store { reason: e.to_string() });
            }
        }
        // Only once the store no longer names them: a deleted VSA's file, ended owners'
        // sockets (only if they are sockets: never a file someone put there).
        for path in self.vsas.take_unlinks() {
            let is_socket = |m: &std::fs::Metadata| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_socket()
            };
            let keep = match std::fs::symlink_metadata(&path) {
                Ok(m) => !(m.is_file() || is_socket(&m)),
                Err(_) => true,
            };
            if !keep {
                if let Err(e) = std::fs::remove_file(&path) {
                    eprintln!("arrakis daemon: cannot remove {}: {e}", path.display());
                }
            }
        }
        Ok(())
    }

    /// The process `pid` that started at `start` is gone (its pidfd said so): its container
    /// is reclaimed and the volumes it owned lose their owner, if the records are still that
    /// process's. True if anything changed.
    pub fn process_gone(&mut self, pid: u32, start: u64) -> bool {
        let mut changed = false;
        if self.registry.container(pid).is_some_and(|c| c.start == start) {
            let released = self.registry.reclaim(pid);
            eprintln!(
                "arrakis daemon: container {pid} exited; {} grant(s) released{}",
                released.len(),
                if released.is_empty() { String::new() } else { format!(": {released:?}") }
            );
            changed = true;
        }
        let ended = self.vsas.owner_gone(pid, start);
        if !ended.is_empty() {
            eprintln!(
                "arrakis daemon: process {pid} exited; it no longer owns volume(s) {}",
                ended.join(", ")
            );
            changed = true;
        }
        if changed {
            if let Err(e) = self.persist() {
                eprintln!("arrakis daemon: {e}");
            }
            self.sync_plane();
        }
        changed
    }

    /// Whether `pid` must stay watched: a container, or a volume's owner.
    pub fn watched(&self, pid: u32) -> Option<u64> {
        self.registry
            .container(pid)
            .map(|c| c.start)
            .or_else(|| self.vsas.owners().into_iter().find(|o| o.0 == pid).map(|o| o.1))
    }

    /// Brings the switch in line with the registry: detaches the ports of containers that
    /// are gone and sets the grants of the others where they changed. Called after every
    /// request, reclaim and start, so every grant change reaches the switch before its
    /// answer is sent.
    pub fn sync_plane(&mut self) {
        for (pid, old) in self.plane.attached() {
            if self.registry.container(pid).is_none() {
                self.plane.detach(pid);
                continue;
            }
            let now = switch_grants(&self.registry, pid);
            if now != old {
                self.plane.set_grants(pid, now);
            }
        }
    }

    fn info(&self) -> DaemonInfo {
        let l = self.registry.limits();
        DaemonInfo {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: (MIN_VERSION, VERSION),
            socket: self.socket.display().to_string(),
            store: self.store.as_ref().map(|s| s.path().display().to_string()).unwrap_or_default(),
            uptime: self.started.elapsed().as_secs(),
            max_grants: l.max_grants,
            max_ports: l.max_ports,
        }
    }

    /// Answers one request of a session whose negotiated version is `version`.
    fn answer(
        &mut self,
        caller: Caller,
        version: &mut Option<u16>,
        req: Request,
        fx: &mut Effects,
        fds: &mut Vec<OwnedFd>,
        in_fds: &mut Vec<OwnedFd>,
    ) -> Outcome {
        // The registry counts the requests it handles; these are counted here.
        if matches!(req, Request::Hello { .. } | Request::Status {}) || version.is_none() {
            self.registry.counters.requests += 1;
        }
        let result = match (req, *version) {
            (Request::Hello { min, max }, _) => {
                let v = max.min(VERSION);
                if min > max || v < MIN_VERSION || v < min {
                    Err(ErrorKind::Version {
                        client_min: min,
                        client_max: max,
                        daemon_min: MIN_VERSION,
                        daemon_max: VERSION,
                    })
                } else {
                    *version = Some(v);
                    Ok(Response::Hello { version: v, daemon: env!("CARGO_PKG_VERSION").to_owned() })
                }
            }
            (_, None) => {
                *self.registry.counters.refusals.entry("hello_first".into()).or_default() += 1;
                Err(ErrorKind::HelloFirst)
            }
            (Request::Status {}, Some(_)) => {
                Ok(Response::Status { daemon: self.info(), containers: self.registry.containers() })
            }
            (Request::Capture { .. } | Request::CaptureStop { .. }, Some(v)) if v < 3 => {
                let e = ErrorKind::BadRequest { reason: "capture needs protocol version 3".into() };
                *self.registry.counters.refusals.entry(e.code().into()).or_default() += 1;
                self.registry.counters.requests += 1;
                Err(e)
            }
            (Request::Capture { container, count }, Some(_)) => {
                let r = self.capture(caller, container.as_str(), count, in_fds);
                self.count(&r);
                r
            }
            (Request::CaptureStop { container }, Some(_)) => {
                let r = self.capture_stop(caller, container.as_str());
                self.count(&r);
                r
            }
            (
                req @ (Request::VsaCreate { .. }
                | Request::VsaResize { .. }
                | Request::VsaDelete { .. }
                | Request::VsaList {}
                | Request::VolumeAttach { .. }
                | Request::VolumeDetach { .. }),
                Some(v),
            ) => {
                let r = if v < 4 {
                    Err(ErrorKind::BadRequest {
                        reason: "VSA and volume requests need protocol version 4".into(),
                    })
                } else {
                    self.vsas.handle(caller, req, self.host.as_ref())
                };
                self.registry.counters.requests += 1;
                if let Err(e) = &r {
                    *self.registry.counters.refusals.entry(e.code().into()).or_default() += 1;
                }
                // A refusal may still have ended a dead owner: persist either way.
                match (self.persist(), r) {
                    (Err(e), _) => Err(e),
                    (Ok(()), Ok((resp, fd))) => {
                        // A detach may leave a pid that needs no watch.
                        fx.removed = true;
                        fds.extend(fd);
                        fx.owners.extend(self.vsas.take_new_owners());
                        Ok(resp)
                    }
                    (Ok(()), Err(e)) => Err(e),
                }
            }
            (Request::Bind { .. }, Some(v)) if v < 7 => {
                // Version 5's reply carried two fds; a client of it could not take the third.
                // Version 6's library OS does not clear the summary page's `rung` word, so a
                // peer of version 7 would ring it once and then never again.
                let e = ErrorKind::BadRequest { reason: "bind needs protocol version 7".into() };
                *self.registry.counters.refusals.entry(e.code().into()).or_default() += 1;
                self.registry.counters.requests += 1;
                Err(e)
            }
            (Request::Bind { proto, local, remote }, Some(_)) => {
                let r = self.bind(caller, proto, local, remote, fx, fds);
                self.count(&r);
                r
            }
            (Request::Nic {} | Request::Lookup { .. }, Some(1)) => {
                let e = ErrorKind::BadRequest { reason: "nic and lookup need protocol version 2".into() };
                *self.registry.counters.refusals.entry(e.code().into()).or_default() += 1;
                self.registry.counters.requests += 1;
                Err(e)
            }
            (req, Some(v)) => {
                let is_register = matches!(req, Request::Register { .. });
                let removes =
                    matches!(req, Request::Unregister {} | Request::Grant { .. } | Request::Inherit { .. });
                let r = self.registry.handle(caller, req, self.host.as_mut());
                // A refusal may still have reclaimed a dead container (pid reuse): persist
                // whatever changed either way.
                match (self.persist(), r) {
                    (Err(e), _) => Err(e),
                    (Ok(()), Ok(resp)) => {
                        if is_register {
                            fx.registered = Some(caller.pid);
                        }
                        fx.removed |= removes;
                        self.finish(caller, v, resp, fds)
                    }
                    (Ok(()), Err(e)) => {
                        fx.removed |= removes;
                        Err(e)
                    }
                }
            }
        };
        self.sync_plane();
        match result {
            Ok(r) => Outcome::Ok(r),
            Err(e) => Outcome::Err(ErrorReply::from(e)),
        }
    }

    fn count(&mut self, r: &Result<Response, ErrorKind>) {
        self.registry.counters.requests += 1;
        if let Err(e) = r {
            *self.registry.counters.refusals.entry(e.code().into()).or_default() += 1;
        }
    }

    /// The container `given` names, if the caller may capture it (its uid, or root).
    fn capturable(&self, caller: Caller, given: &str) -> Result<u32, ErrorKind> {
        let c = self.registry.resolve(given)?;
        if caller.uid != 0 && caller.uid != c.uid {
            return Err(ErrorKind::CaptureNotPermitted { pid: c.pid, uid: caller.uid, owner: c.uid });
        }
        Ok(c.pid)
    }

    fn capture(
        &mut self,
        caller: Caller,
        given: &str,
        count: Option<u64>,
        in_fds: &mut Vec<OwnedFd>,
    ) -> Result<Response, ErrorKind> {
        let pid = self.capturable(caller, given)?;
        if in_fds.is_empty() {
            return Err(ErrorKind::BadRequest {
                reason: "a capture request carries the file to write as an fd (SCM_RIGHTS)".into(),
            });
        }
        let out = in_fds.remove(0);
        self.plane.capture(pid, out, count).map_err(|reason| ErrorKind::NoContainer {
            container: given.to_owned(),
            reason: format!(
                "its NIC cannot be captured ({reason}); only a container on the emulator has one"
            ),
        })?;
        Ok(Response::Capturing { pid })
    }

    fn capture_stop(&mut self, caller: Caller, given: &str) -> Result<Response, ErrorKind> {
        let pid = self.capturable(caller, given)?;
        let frames = self.plane.stop_capture(pid).map_err(|reason| ErrorKind::NoContainer {
            container: given.to_owned(),
            reason: format!("its NIC cannot be captured ({reason})"),
        })?;
        Ok(Response::CaptureStopped { pid, frames })
    }

    /// [`Request::Bind`]: a registered container with a NIC asks the switch for a binding;
    /// the reply carries the binding region and the peer's doorbell.
    fn bind(
        &mut self,
        caller: Caller,
        proto: Proto,
        local: SocketAddr,
        remote: SocketAddr,
        fx: &mut Effects,
        fds: &mut Vec<OwnedFd>,
    ) -> Result<Response, ErrorKind> {
        let (l, r) = bind_flow(local, remote).map_err(|reason| ErrorKind::BadRequest { reason })?;
        if let Err(e) = self.registry.check_registered(caller, self.host.as_ref()) {
            // A pid reused before the death was noticed: the old container was reclaimed.
            fx.removed = true;
            self.persist()?;
            return Err(e);
        }
        let (info, f) = self.plane.bind(caller.pid, proto, l, r).map_err(|e| {
            let flow = format!("{proto} {l} -> {r}");
            match e {
                BindError::Failed(reason) => {
                    eprintln!("arrakis daemon: container {}: binding {flow}: {reason}", caller.pid);
                    ErrorKind::Internal { reason: format!("the switch failed to bind {flow}: {reason}") }
                }
                e => ErrorKind::NotBindable { flow, reason: e.to_string() },
            }
        })?;
        fds.extend([f.region, f.peer_bell, f.summary]);
        Ok(Response::Bound { binding: info })
    }

    /// What the registry cannot do alone: the NIC itself, the switch's counters (without
    /// the binding counts for a client older than version 5, which would refuse the field).
    fn finish(
        &mut self,
        caller: Caller,
        version: u16,
        resp: Response,
        fds: &mut Vec<OwnedFd>,
    ) -> Result<Response, ErrorKind> {
        match resp {
            Response::Nic { nic } => {
                let name = self.registry.container(caller.pid).map(|c| c.name.clone());
                let Some(name) = name else { return Err(ErrorKind::NotRegistered { pid: caller.pid }) };
                let grants = switch_grants(&self.registry, caller.pid);
                match self.plane.attach(caller.pid, &name, grants) {
                    Ok(f) => {
                        fds.extend([f.region, f.to_container, f.to_switch]);
                        Ok(Response::Nic { nic })
                    }
                    Err(reason) => {
                        eprintln!("arrakis daemon: container {}: {reason}", caller.pid);
                        Err(ErrorKind::Internal { reason })
                    }
                }
            }
            Response::Stats { daemon, containers, switch: _ } => {
                let mut switch = self.plane.stats();
                if version < 5 {
                    for t in switch.iter_mut().flat_map(|s| s.containers.iter_mut().chain(s.uplink.as_mut()))
                    {
                        t.bindings = 0;
                        t.bound = 0;
                    }
                }
                Ok(Response::Stats { daemon, containers, switch })
            }
            r => Ok(r),
        }
    }
}

/// One connection's protocol state.
#[derive(Debug, Default)]
pub struct Session {
    /// Bytes of the frame being received.
    pub buf: FrameBuf,
    /// Fds that came with the frame being received (a request uses them or they are closed).
    pub in_fds: Vec<OwnedFd>,
    version: Option<u16>,
}

fn reply_bytes(seq: u32, result: Outcome) -> Vec<u8> {
    encode(&ReplyFrame { seq, result }).unwrap_or_else(|e| {
        // Only a listing over 64 KiB could get here; the request is answered with an error.
        let err = ErrorReply::from(ErrorKind::Internal { reason: e.to_string() });
        encode(&ReplyFrame { seq, result: Outcome::Err(err) }).unwrap_or_default()
    })
}

impl Session {
    /// Takes every complete frame from the buffer and answers it. Returns what to send and
    /// whether to close (after a framing error; a body that does not decode is answered and
    /// the connection goes on, since its framing is intact).
    pub fn process(&mut self, d: &mut Daemon, caller: Caller) -> Effects {
        let mut fx = Effects::default();
        loop {
            match self.buf.take() {
                Ok(None) => {
                    if !self.buf.is_partial() {
                        // Fds belong to the frame they came with; a frame that did not use
                        // them is done.
                        self.in_fds.clear();
                    }
                    return fx;
                }
                Ok(Some(body)) => {
                    let mut fds = Vec::new();
                    let (seq, outcome) = match decode_request(&body) {
                        Ok(f) => (
                            f.seq,
                            d.answer(caller, &mut self.version, f.req, &mut fx, &mut fds, &mut self.in_fds),
                        ),
                        Err(e) => {
                            d.registry.counters.requests += 1;
                            *d.registry.counters.refusals.entry("bad_request".into()).or_default() += 1;
                            (0, Outcome::Err(ErrorKind::BadRequest { reason: e.to_string() }.into()))
                        }
                    };
                    if !fds.is_empty() {
                        fx.fds.push((fx.reply.len(), fds));
                    }
                    fx.reply.extend(reply_bytes(seq, outcome));
                }
                Err(e) => {
                    let err = ErrorKind::BadRequest { reason: e.to_string() };
                    fx.reply.extend(reply_bytes(0, Outcome::Err(err.into())));
                    fx.close = true;
                    return fx;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use arrakis_backends::proto::frame::HEADER;
    use arrakis_backends::proto::{
        decode_reply, Direction, Filter, GrantId, Name, PortRange, Proto, RequestFrame, Token, VolumeRole,
    };
    use proptest::prelude::*;

    use super::super::host::KernelSocket;
    use super::super::plane::fake::FakePlane;
    use super::super::rules::tests::FakeHost;
    use super::super::rules::{GrantRec, Limits};
    use super::super::vsa::tests::tmp as vsa_tmp;
    use super::super::vsa::{VsaConfig, VsaRec};
    use super::*;

    const CALLERS: [Caller; 4] = [
        Caller { pid: 100, uid: 1000 },
        Caller { pid: 200, uid: 1000 },
        Caller { pid: 300, uid: 0 },
        Caller { pid: 400, uid: 2000 },
    ];
    const KERNEL_PORT: u16 = 1025;

    fn daemon() -> Daemon {
        let mut host = FakeHost::default();
        for c in CALLERS {
            host.procs.insert(c.pid, (u64::from(c.pid), 1));
        }
        host.kernel.push(KernelSocket {
            proto: Proto::Tcp,
            addr: "127.0.0.1".parse().unwrap(),
            port: KERNEL_PORT,
            state: "LISTEN",
        });
        Daemon {
            registry: Registry::new(Limits { max_grants: 4, max_ports: 8 }, vec![], vec![], 1),
            host: Box::new(host),
            store: None,
            socket: "/nonexistent".into(),
            started: Instant::now(),
            plane: Box::new(FakePlane::default()),
            vsas: Vsas::new(
                VsaConfig { max_size: 64 << 10, ..super::super::vsa::tests::config(&vsa_tmp("fuzz")) },
                vec![],
            ),
        }
    }

    fn request() -> impl Strategy<Value = Request> {
        let addr = prop::sample::select(vec!["0.0.0.0", "127.0.0.1", "::", "::1", "10.0.0.1"]);
        let filter = (
            any::<bool>(),
            addr,
            1020u16..1030,
            0u16..3,
            prop::option::of(prop::sample::select(vec!["10.0.0.9", "::"])),
        )
            .prop_map(|(udp, a, lo, n, peer)| {
                let peers = peer
                    .map(|p| vec![arrakis_backends::proto::Peer { addr: p.parse().unwrap(), ports: None }]);
                Filter::new(
                    Direction::Both,
                    if udp { Proto::Udp } else { Proto::Tcp },
                    a.parse::<IpAddr>().unwrap(),
                    PortRange::new(lo, lo + n).unwrap(),
                    peers.unwrap_or_default(),
                )
                .unwrap()
            });
        prop_oneof![
            1 => (0u16..6, 0u16..6).prop_map(|(min, max)| Request::Hello { min, max }),
            3 => Just(Request::Hello { min: MIN_VERSION, max: VERSION }),
            3 => Just(Request::Register { name: Name::lossy("c") }),
            6 => filter.prop_map(|filter| Request::Grant { filter }),
            1 => (1u64..8).prop_map(|id| Request::Revoke { id: GrantId(id) }),
            1 => (1u64..8, 0u8..6).prop_map(|(id, t)| Request::Inherit { id: GrantId(id), token: Token([t; 16]) }),
            1 => Just(Request::Filters {}),
            1 => Just(Request::Status {}),
            1 => Just(Request::Stats {}),
            1 => Just(Request::Unregister {}),
            2 => Just(Request::Nic {}),
            1 => prop::sample::select(vec!["c", "100", "999", "x"]).prop_map(|c| Request::Capture { container: Name::lossy(c), count: Some(1) }),
            1 => prop::sample::select(vec!["c", "200"]).prop_map(|c| Request::CaptureStop { container: Name::lossy(c) }),
            1 => (any::<bool>(), prop::sample::select(vec!["127.0.0.1", "::1", "0.0.0.0", "10.0.0.1"]), prop::sample::select(vec![1020u16, 1025, 61000, 61127, 65535]))
                .prop_map(|(udp, a, port)| Request::Lookup {
                    proto: if udp { Proto::Udp } else { Proto::Tcp },
                    addr: a.parse().unwrap(),
                    port,
                }),
            1 => (vsa_name(), prop_oneof![4 => 0u64..40_000, 1 => 0u64..80_000]).prop_map(|(name, size)| Request::VsaCreate { name, size }),
            1 => (vsa_name(), 0u64..80_000).prop_map(|(name, size)| Request::VsaResize { name, size }),
            1 => vsa_name().prop_map(|name| Request::VsaDelete { name }),
            1 => Just(Request::VsaList {}),
            3 => (vsa_name(), prop::option::of(1u64..20_000), prop::bool::weighted(0.25))
                .prop_map(|(name, create, read_only)| Request::VolumeAttach { name, create, read_only }),
            1 => vsa_name().prop_map(|name| Request::VolumeDetach { name }),
            3 => (
                any::<bool>(),
                // Mostly in the callers' ephemeral blocks (61000, 61128, ... in the order they ask).
                prop::sample::select(vec!["127.0.0.1:61000", "127.0.0.1:61130", "127.0.0.1:61260", "127.0.0.1:61390", "[::1]:61001", "127.0.0.1:1020", "0.0.0.0:1020", "127.0.0.1:0"]),
                prop::sample::select(vec!["127.0.0.1:1022", "[::ffff:127.0.0.1]:61001", "[::1]:1020", "224.0.0.1:1"]),
            )
                .prop_map(|(udp, l, r)| Request::Bind {
                    proto: if udp { Proto::Udp } else { Proto::Tcp },
                    local: l.parse().unwrap(),
                    remote: r.parse().unwrap(),
                }),
        ]
    }

    fn vsa_name() -> impl Strategy<Value = Name> {
        prop::sample::select(vec!["a", "a", "a", "b", "b", ".x", "a/b"]).prop_map(Name::lossy)
    }

    /// One step: a well-formed request from a caller, or raw bytes from a caller (an empty
    /// byte string stands for the caller's death, as its pidfd reports it).
    fn step() -> impl Strategy<Value = (usize, Result<Request, Vec<u8>>)> {
        (
            0..CALLERS.len(),
            prop_oneof![4 => request().prop_map(Ok), 1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Err)],
        )
    }

    /// The path of an fd, as the kernel names it.
    fn fd_path(fd: &OwnedFd) -> PathBuf {
        use std::os::fd::AsRawFd;
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
    }

    /// Feeds bytes as the server does (never more than the buffer's room); a session whose
    /// framing broke is replaced by a fresh one, as a new connection would be.
    fn feed(s: &mut Session, d: &mut Daemon, caller: Caller, bytes: &[u8]) -> Effects {
        let mut rest = bytes;
        let mut fx = Effects::default();
        while !rest.is_empty() {
            let n = s.buf.room().min(rest.len());
            if n == 0 {
                break;
            }
            s.buf.extend(&rest[..n]).unwrap();
            rest = &rest[n..];
            let more = s.process(d, caller);
            let base = fx.reply.len();
            fx.fds.extend(more.fds.into_iter().map(|(o, f)| (base + o, f)));
            fx.reply.extend(more.reply);
            if more.close {
                *s = Session::default();
                break;
            }
        }
        fx
    }

    /// Would the rules allow `f` for `caller` given the grants before the request?
    fn allowed(before: &[GrantRec], caller: Caller, f: &Filter) -> bool {
        let overlap = before.iter().any(|g| !g.holders.contains(&caller.pid) && g.filter.overlaps(f));
        let lo = "127.0.0.1".parse().unwrap();
        let on_kernel_port = |f: &Filter| {
            f.proto() == Proto::Tcp
                && f.ports().contains(KERNEL_PORT)
                && arrakis_backends::proto::addrs_overlap(f.local(), lo)
        };
        // The kernel socket counts as the caller's own if it already held a grant over it.
        let own = before.iter().any(|g| g.holders.contains(&caller.pid) && on_kernel_port(&g.filter));
        let kernel = on_kernel_port(f) && !own;
        let privileged = f.ports().lo() < 1024 && caller.uid != 0;
        !overlap && !kernel && !privileged
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn no_byte_stream_panics_or_gets_a_forbidden_grant(steps in prop::collection::vec(step(), 1..80)) {
            let mut d = daemon();
            let mut sessions: Vec<Session> = (0..CALLERS.len()).map(|_| Session::default()).collect();
            for (i, (who, what)) in steps.into_iter().enumerate() {
                let caller = CALLERS[who];
                let bytes = match what {
                    Ok(req) => encode(&RequestFrame { seq: i as u32, req }).unwrap(),
                    Err(raw) if raw.is_empty() => {
                        d.process_gone(caller.pid, u64::from(caller.pid));
                        sessions[who] = Session::default();
                        continue;
                    }
                    Err(raw) => raw,
                };
                let before: Vec<GrantRec> = d.registry.grants().cloned().collect();
                let vsas_before: Vec<VsaRec> = d.vsas.records().cloned().collect();
                let fx = feed(&mut sessions[who], &mut d, caller, &bytes);
                // Every reply decodes; every grant made was allowed; fds come with nic replies
                // (three each) and with attach replies as owner or read-only (one, the file of
                // that VSA, which the caller's uid made or the caller is root).
                let mut r = &fx.reply[..];
                let mut with_fds: Vec<(usize, usize)> = Vec::new();
                let fd_at = |off: usize| fx.fds.iter().find(|f| f.0 == off).map(|f| &f.1);
                while r.len() >= HEADER {
                    let off = fx.reply.len() - r.len();
                    let n = u32::from_le_bytes(r[..HEADER].try_into().unwrap()) as usize;
                    let reply = decode_reply(&r[HEADER..HEADER + n]).unwrap();
                    if let Outcome::Ok(Response::Granted { grant, .. }) = &reply.result {
                        prop_assert!(allowed(&before, caller, &grant.filter), "forbidden grant {grant:?} to {caller:?}");
                    }
                    if let Outcome::Ok(Response::Nic { nic }) = &reply.result {
                        with_fds.push((off, 3));
                        prop_assert_eq!(nic.tcp_ports.len(), 128);
                        prop_assert!(nic.tcp_ports.lo() >= 61000 && nic.udp_ports.lo() >= 61000);
                    }
                    if let Outcome::Ok(Response::Bound { binding }) = &reply.result {
                        with_fds.push((off, 3));
                        prop_assert!(binding.id != 0 && binding.side <= 1);
                        prop_assert!(d.plane.attached().iter().any(|(pid, _)| *pid == caller.pid), "a binding without a NIC");
                    }
                    if let Outcome::Err(e) = &reply.result {
                        if matches!(e.kind, ErrorKind::NotBindable { .. }) {
                            prop_assert!(e.message.contains("no secure binding for"));
                        }
                    }
                    if let Outcome::Ok(Response::VolumeAttached { vsa, role }) = &reply.result {
                        prop_assert!(caller.uid == 0 || caller.uid == vsa.uid, "{caller:?} attached {vsa:?}");
                        let was = vsas_before.iter().find(|v| v.name == vsa.name).and_then(|v| v.owner.clone());
                        match role {
                            VolumeRole::Owner { .. } => {
                                prop_assert!(was.as_ref().is_none_or(|o| o.pid == caller.pid), "two owners: {was:?}, {caller:?}");
                                prop_assert_eq!(vsa.owner, Some(caller.pid));
                            }
                            VolumeRole::Remote { owner, .. } => {
                                prop_assert!(*owner != caller.pid);
                                prop_assert_eq!(was.map(|o| o.pid), Some(*owner));
                            }
                            VolumeRole::ReadOnly {} => {}
                        }
                        if !matches!(role, VolumeRole::Remote { .. }) {
                            with_fds.push((off, 1));
                            let fds = fd_at(off);
                            prop_assert!(fds.is_some());
                            if let Some(fds) = fds {
                                prop_assert_eq!(fd_path(&fds[0]), d.vsas.path(vsa.name.as_str()));
                                let fl = rustix::fs::fcntl_getfl(&fds[0]).unwrap();
                                let want = if matches!(role, VolumeRole::ReadOnly {}) {
                                    rustix::fs::OFlags::RDONLY
                                } else {
                                    rustix::fs::OFlags::RDWR
                                };
                                prop_assert_eq!(fl & rustix::fs::OFlags::ACCMODE, want);
                            }
                        }
                    }
                    if let Outcome::Ok(Response::VsaDeleted { name }) = &reply.result {
                        let was = vsas_before.iter().find(|v| &v.name == name);
                        prop_assert!(was.is_some_and(|v| v.owner.is_none() && (caller.uid == 0 || caller.uid == v.uid)));
                    }
                    if let Outcome::Ok(Response::Vsa { vsa }) = &reply.result {
                        let was = vsas_before.iter().find(|v| v.name == vsa.name);
                        prop_assert!(caller.uid == 0 || caller.uid == vsa.uid);
                        // A shrink happens only without an owner.
                        prop_assert!(was.is_none_or(|v| vsa.size >= v.size || v.owner.is_none()));
                        prop_assert_eq!(std::fs::metadata(d.vsas.path(vsa.name.as_str())).map(|m| m.len()).ok(), Some(vsa.size));
                    }
                    r = &r[HEADER + n..];
                }
                prop_assert!(r.is_empty());
                prop_assert_eq!(fx.fds.iter().map(|f| (f.0, f.1.len())).collect::<Vec<_>>(), with_fds);
                // One owner per VSA, a live caller; every VSA has its file.
                for v in d.vsas.records() {
                    prop_assert!(v.owner.as_ref().is_none_or(|o| CALLERS.iter().any(|c| c.pid == o.pid)));
                    prop_assert!(d.vsas.path(v.name.as_str()).is_file());
                    prop_assert!(v.name.as_str() == "a" || v.name.as_str() == "b");
                }
                // The switch holds ports of registered containers only, each with exactly
                // the grants its container holds; ephemeral blocks never overlap another's.
                for (pid, grants) in d.plane.attached() {
                    prop_assert!(d.registry.container(pid).is_some(), "port of a gone container {pid}");
                    prop_assert_eq!(grants, switch_grants(&d.registry, pid));
                }
                let eph: Vec<&GrantRec> = d.registry.grants().filter(|g| g.ephemeral).collect();
                for g in d.registry.grants() {
                    for e in &eph {
                        prop_assert!(g.id == e.id || !g.filter.overlaps(&e.filter) || g.holders == e.holders,
                            "grant {g:?} overlaps the ephemeral block {e:?}");
                    }
                }
                // Quotas hold at every step.
                for pid in d.registry.pids() {
                    let held: Vec<&GrantRec> =
                        d.registry.grants().filter(|g| g.holders.contains(&pid) && !g.ephemeral).collect();
                    prop_assert!(held.len() <= 4);
                    prop_assert!(held.iter().map(|g| g.filter.ports().len()).sum::<u32>() <= 8);
                }
            }
            let dir = d.vsas.config().dir.clone();
            if let Some(parent) = dir.parent() {
                let _ = std::fs::remove_dir_all(parent);
            }
        }
    }

    #[test]
    fn a_container_with_a_nic_binds_and_one_without_is_refused() {
        let mut d = daemon();
        let mut s = Session::default();
        let c = CALLERS[0];
        let ask = |d: &mut Daemon, s: &mut Session, seq: u32, req: Request| {
            let fx = feed(s, d, c, &encode(&RequestFrame { seq, req }).unwrap());
            let r = decode_reply(&fx.reply[HEADER..]).unwrap().result;
            (r, fx.fds.into_iter().flat_map(|f| f.1).count())
        };
        ask(&mut d, &mut s, 1, Request::Hello { min: MIN_VERSION, max: VERSION });
        ask(&mut d, &mut s, 2, Request::Register { name: Name::lossy("c") });
        let bind = Request::Bind {
            proto: Proto::Tcp,
            local: "127.0.0.1:61000".parse().unwrap(),
            remote: "127.0.0.1:1022".parse().unwrap(),
        };
        let (r, n) = ask(&mut d, &mut s, 3, bind.clone());
        assert!(
            matches!(&r, Outcome::Err(e) if e.kind.code() == "not_bindable" && e.message.contains("no NIC")),
            "{r:?}"
        );
        assert_eq!(n, 0);
        let (r, _) = ask(&mut d, &mut s, 4, Request::Nic {});
        let Outcome::Ok(Response::Nic { nic }) = r else { panic!("{r:?}") };
        let local = std::net::SocketAddr::new("127.0.0.1".parse().unwrap(), nic.tcp_ports.lo());
        let bind = Request::Bind { proto: Proto::Tcp, local, remote: "127.0.0.1:1022".parse().unwrap() };
        let (r, n) = ask(&mut d, &mut s, 5, bind);
        assert!(matches!(r, Outcome::Ok(Response::Bound { .. })), "{r:?}");
        assert_eq!(n, 3);
        let bad = Request::Bind { proto: Proto::Tcp, local, remote: "[::1]:1022".parse().unwrap() };
        let (r, _) = ask(&mut d, &mut s, 6, bad);
        assert!(matches!(&r, Outcome::Err(e) if e.kind.code() == "bad_request"), "{r:?}");
        assert_eq!(d.registry.counters.refusals.get("not_bindable"), Some(&1));
        // A client of version 6 (whose library OS does not clear `rung`) cannot bind.
        let mut old = Session::default();
        let c2 = CALLERS[1];
        let fx = feed(
            &mut old,
            &mut d,
            c2,
            &encode(&RequestFrame { seq: 1, req: Request::Hello { min: 1, max: 6 } }).unwrap(),
        );
        assert!(matches!(
            decode_reply(&fx.reply[HEADER..]).unwrap().result,
            Outcome::Ok(Response::Hello { version: 6, .. })
        ));
        let fx = feed(
            &mut old,
            &mut d,
            c2,
            &encode(&RequestFrame {
                seq: 2,
                req: Request::Bind { proto: Proto::Tcp, local, remote: "127.0.0.1:1022".parse().unwrap() },
            })
            .unwrap(),
        );
        let r = decode_reply(&fx.reply[HEADER..]).unwrap().result;
        assert!(matches!(&r, Outcome::Err(e) if e.message.contains("version 7")), "{r:?}");
    }

    #[test]
    fn grants_were_exercised() {
        // Runs the property test's generator once more with a fixed seed and checks grants
        // happen at all (a test that never reaches the grant path would prove nothing).
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strat = prop::collection::vec(step(), 80..81);
        let (mut made, mut nics, mut owners, mut remotes, mut bound) = (0, 0, 0, 0, 0);
        for _ in 0..50 {
            let steps = strat.new_tree(&mut runner).unwrap().current();
            let mut d = daemon();
            let mut sessions: Vec<Session> = (0..CALLERS.len()).map(|_| Session::default()).collect();
            for (i, (who, what)) in steps.into_iter().enumerate() {
                let Ok(req) = what else { continue };
                let bytes = encode(&RequestFrame { seq: i as u32, req }).unwrap();
                let fx = feed(&mut sessions[who], &mut d, CALLERS[who], &bytes);
                let n = fx.reply.len();
                if n > HEADER {
                    match decode_reply(&fx.reply[HEADER..]).unwrap().result {
                        Outcome::Ok(Response::Granted { .. }) => made += 1,
                        Outcome::Ok(Response::Nic { .. }) => nics += fx.fds.len(),
                        Outcome::Ok(Response::Bound { .. }) => bound += 1,
                        Outcome::Ok(Response::VolumeAttached { role: VolumeRole::Owner { .. }, .. }) => {
                            owners += 1
                        }
                        Outcome::Ok(Response::VolumeAttached { role: VolumeRole::Remote { .. }, .. }) => {
                            remotes += 1
                        }
                        _ => {}
                    }
                }
            }
            if let Some(parent) = d.vsas.config().dir.parent() {
                let _ = std::fs::remove_dir_all(parent);
            }
        }
        assert!(made > 20, "only {made} grants made");
        eprintln!(
            "{made} grants, {nics} NIC fds, {owners} owners, {remotes} remote attaches, {bound} bindings"
        );
        assert!(bound > 0, "no binding made");
        assert!(nics > 5, "only {nics} NICs made");
        assert!(owners > 10 && remotes > 2, "only {owners} owners and {remotes} remote attaches");
    }
}
