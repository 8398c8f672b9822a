//! A stand-in for `arrakis daemon` and its switch, for testing the library OS's emulator
//! backend by itself: it answers `hello`, `register`, `nic`, `grant`, `revoke` and `lookup`
//! on a Unix socket, and a forwarder thread moves frames between the NICs it handed out by
//! destination protocol and port (each container owns its two port blocks and its grants).
//! What it does not do: check sources, filters' addresses or peers, quotas, kernel-held ports,
//! reclamation — the real daemon's job, tested in `ctl`.
//!
//! Everything runs on threads of the test process; [`FakeDaemon::stop`] (or drop) ends them.
//! Every loop is bounded by the stop flag and a deadline.

use std::collections::HashMap;
use std::io::{IoSlice, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrakis_backends::emulator::{self, Geometry, SwitchPort};
use arrakis_backends::proto::{
    decode_request, frame, ContainerInfo, ErrorKind, ErrorReply, GrantId, GrantInfo, Name, NicInfo, Outcome,
    PortRange, Proto, ReplyFrame, Request, Response, Token,
};

/// How long the fake daemon's threads live at most.
const LIFETIME: Duration = Duration::from_secs(300);

/// A container as the fake daemon knows it.
#[derive(Default)]
struct Container {
    name: String,
    blocks: Option<(PortRange, PortRange)>,
    grants: Vec<(GrantId, Proto, u16)>,
}

impl Container {
    fn owns(&self, proto: Proto, port: u16) -> bool {
        let in_block = self.blocks.is_some_and(|(t, u)| match proto {
            Proto::Tcp => t.contains(port),
            Proto::Udp => u.contains(port),
        });
        in_block || self.grants.iter().any(|&(_, p, q)| p == proto && q == port)
    }
}

#[derive(Default)]
struct State {
    containers: HashMap<u32, Container>,
    ports: Vec<(u32, SwitchPort)>,
    next_grant: u64,
    next_block: u16,
    /// Every request, with the caller's pid.
    log: Vec<(u32, Request)>,
    /// Frames forwarded, per destination pid.
    delivered: HashMap<u32, u64>,
}

impl State {
    fn owner(&self, proto: Proto, port: u16) -> Option<u32> {
        self.containers.iter().find(|(_, c)| c.owns(proto, port)).map(|(&pid, _)| pid)
    }
}

/// The fake daemon: its socket and its threads.
pub struct FakeDaemon {
    /// The socket programs connect to (`ARRAKIS_SOCKET`).
    pub socket: PathBuf,
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
    frames: Arc<AtomicU64>,
}

impl FakeDaemon {
    /// Starts answering at `dir/ctl.sock`.
    pub fn start(dir: &Path) -> std::io::Result<FakeDaemon> {
        let socket = dir.join("ctl.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket)?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(State { next_grant: 100, next_block: 0, ..State::default() }));
        let frames = Arc::new(AtomicU64::new(0));
        {
            let (stop, state) = (stop.clone(), state.clone());
            std::thread::spawn(move || accept_loop(listener, stop, state));
        }
        {
            let (stop, state, frames) = (stop.clone(), state.clone(), frames.clone());
            std::thread::spawn(move || forward_loop(stop, state, frames));
        }
        Ok(FakeDaemon { socket, stop, state, frames })
    }

    /// Frames the forwarder moved.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// Frames delivered to `pid`'s NIC.
    pub fn delivered_to(&self, pid: u32) -> u64 {
        self.state.lock().map(|s| s.delivered.get(&pid).copied().unwrap_or(0)).unwrap_or(0)
    }

    /// The requests so far, with the caller's pid.
    pub fn requests(&self) -> Vec<(u32, Request)> {
        self.state.lock().map(|s| s.log.clone()).unwrap_or_default()
    }

    /// Names of the containers registered.
    pub fn names(&self) -> Vec<String> {
        self.state.lock().map(|s| s.containers.values().map(|c| c.name.clone()).collect()).unwrap_or_default()
    }

    /// Stops the threads.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn accept_loop(listener: UnixListener, stop: Arc<AtomicBool>, state: Arc<Mutex<State>>) {
    let end = Instant::now() + LIFETIME;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        match listener.accept() {
            Ok((s, _)) => {
                let (stop, state) = (stop.clone(), state.clone());
                std::thread::spawn(move || {
                    let pid = rustix::net::sockopt::socket_peercred(&s)
                        .map(|c| c.pid.as_raw_nonzero().get() as u32);
                    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                    serve(s, pid.unwrap_or(0), &stop, &state);
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn read_frame(s: &mut UnixStream, stop: &AtomicBool) -> Option<Vec<u8>> {
    let mut hdr = [0u8; 4];
    let mut got = 0;
    let end = Instant::now() + LIFETIME;
    while got < 4 {
        if stop.load(Ordering::Relaxed) || Instant::now() > end {
            return None;
        }
        match s.read(&mut hdr[got..]) {
            Ok(0) => return None,
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    let len = u32::from_le_bytes(hdr) as usize;
    if len == 0 || len > arrakis_backends::proto::MAX_FRAME {
        return None;
    }
    let mut body = vec![0u8; len];
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let r = s.read_exact(&mut body);
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    r.ok().map(|()| body)
}

fn send(s: &mut UnixStream, seq: u32, result: Outcome, fds: Option<&emulator::NicFds>) -> bool {
    let Ok(bytes) = frame::encode(&ReplyFrame { seq, result }) else { return false };
    let Some(f) = fds else { return s.write_all(&bytes).is_ok() };
    let borrowed = [f.region.as_fd(), f.to_container.as_fd(), f.to_switch.as_fd()];
    let mut space = vec![std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut anc = rustix::net::SendAncillaryBuffer::new(&mut space);
    if !anc.push(rustix::net::SendAncillaryMessage::ScmRights(&borrowed)) {
        return false;
    }
    match rustix::net::sendmsg(&*s, &[IoSlice::new(&bytes)], &mut anc, rustix::net::SendFlags::NOSIGNAL) {
        Ok(n) => s.write_all(&bytes[n..]).is_ok(),
        Err(_) => false,
    }
}

fn refuse(kind: ErrorKind) -> Outcome {
    Outcome::Err(ErrorReply::from(kind))
}

/// One connection: requests in, replies out, until the peer goes or the daemon stops.
fn serve(mut s: UnixStream, pid: u32, stop: &AtomicBool, state: &Mutex<State>) {
    while let Some(body) = read_frame(&mut s, stop) {
        let Ok(f) = decode_request(&body) else { return };
        let Ok(mut st) = state.lock() else { return };
        st.log.push((pid, f.req.clone()));
        let mut nic = None;
        let out = match f.req {
            Request::Hello { .. } => Outcome::Ok(Response::Hello { version: 2, daemon: "fake".into() }),
            Request::Register { name } => {
                st.containers.entry(pid).or_default().name = name.as_str().to_string();
                let container = ContainerInfo { pid, name, uid: 0, parent: 0, registered: 0, grants: vec![] };
                Outcome::Ok(Response::Registered { container })
            }
            Request::Nic {} => match emulator::create(Geometry::default()) {
                Ok((fds, port)) => {
                    let k = st.next_block;
                    st.next_block += 1;
                    let tcp = PortRange::new(40_000 + 100 * k, 40_099 + 100 * k);
                    let udp = PortRange::new(50_000 + 100 * k, 50_099 + 100 * k);
                    let (Some(tcp), Some(udp)) = (tcp, udp) else { return };
                    let c = st.containers.entry(pid).or_default();
                    if c.blocks.is_none() {
                        c.blocks = Some((tcp, udp));
                    }
                    let (tcp, udp) = c.blocks.unwrap_or((tcp, udp));
                    st.ports.retain(|(p, _)| *p != pid);
                    st.ports.push((pid, port));
                    nic = Some(fds);
                    Outcome::Ok(Response::Nic {
                        nic: NicInfo { tcp_ports: tcp, udp_ports: udp, grants: vec![], addrs: vec![] },
                    })
                }
                Err(_) => refuse(ErrorKind::Internal { reason: "no NIC".into() }),
            },
            Request::Grant { filter } => {
                let (proto, port) = (filter.proto(), filter.ports().lo());
                let holder = st.containers.iter().find(|(&p, c)| p != pid && c.owns(proto, port));
                if let Some((&hpid, c)) = holder {
                    refuse(ErrorKind::HeldByContainer {
                        proto,
                        port,
                        pid: hpid,
                        name: Name::lossy(&c.name),
                        grant: GrantId(0),
                    })
                } else if port < 1024 {
                    refuse(ErrorKind::Privileged { port, start: 1024, uid: 1000 })
                } else {
                    st.next_grant += 1;
                    let id = GrantId(st.next_grant);
                    st.containers.entry(pid).or_default().grants.push((id, proto, port));
                    let grant = GrantInfo { id, filter, holders: vec![pid], created: 0 };
                    Outcome::Ok(Response::Granted { grant, token: Token([1; 16]) })
                }
            }
            Request::Revoke { id } => {
                for c in st.containers.values_mut() {
                    c.grants.retain(|g| g.0 != id);
                }
                Outcome::Ok(Response::Revoked { id })
            }
            Request::Lookup { proto, port, .. } => {
                Outcome::Ok(Response::Lookup { served: st.owner(proto, port).is_some() })
            }
            other => {
                refuse(ErrorKind::BadRequest { reason: format!("the fake daemon does not answer {other:?}") })
            }
        };
        drop(st);
        if !send(&mut s, f.seq, out, nic.as_ref()) {
            return;
        }
    }
}

/// (protocol, destination port) of an IPv4 or IPv6 TCP/UDP frame.
fn destination(f: &[u8]) -> Option<(Proto, u16)> {
    let (proto, l4) = match f.first()? >> 4 {
        4 => (*f.get(9)?, usize::from(f.first()? & 0xf) * 4),
        6 => (*f.get(6)?, 40),
        _ => return None,
    };
    let proto = match proto {
        6 => Proto::Tcp,
        17 => Proto::Udp,
        _ => return None,
    };
    let port = u16::from_be_bytes([*f.get(l4 + 2)?, *f.get(l4 + 3)?]);
    Some((proto, port))
}

fn forward_loop(stop: Arc<AtomicBool>, state: Arc<Mutex<State>>, frames: Arc<AtomicU64>) {
    let end = Instant::now() + LIFETIME;
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        let mut moved = 0u64;
        {
            let Ok(mut guard) = state.lock() else { return };
            let st = &mut *guard;
            // Ports that gave frames (their tx has room now) and ports that got some.
            let mut touched = vec![false; st.ports.len()];
            for i in 0..st.ports.len() {
                for _ in 0..64 {
                    let Some(n) = st.ports[i].1.tx.recv_copy(&mut buf) else { break };
                    moved += 1;
                    touched[i] = true;
                    let Some((proto, port)) = destination(&buf[..n]) else { continue };
                    let Some(dst) = st.owner(proto, port) else { continue };
                    if let Some(j) = st.ports.iter().position(|(pid, _)| *pid == dst) {
                        if st.ports[j].1.rx.push_copy(&buf[..n]).is_ok() {
                            touched[j] = true;
                            *st.delivered.entry(dst).or_default() += 1;
                        }
                    }
                }
            }
            for (i, (_, p)) in st.ports.iter().enumerate() {
                if touched[i] && (p.rx.kick_needed() || p.tx.kick_needed()) {
                    p.peer.ring();
                }
            }
        }
        frames.fetch_add(moved, Ordering::Relaxed);
        if moved == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}
