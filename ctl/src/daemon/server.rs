//! The daemon's event loop: one thread, one epoll instance, no busy waiting.
//!
//! Watched: the listening Unix socket, every client connection (level-triggered input;
//! output only while a reply is pending) and one pidfd per container, which becomes readable
//! when the process exits however it dies (`kill -9` included). `epoll_wait` sleeps without
//! a timeout unless a client has sent part of a frame: then until that frame's deadline, after
//! which the client is dropped. Each client's input is bounded by one frame
//! ([`FrameBuf`](arrakis_backends::proto::FrameBuf)) and its unsent replies by
//! [`MAX_PENDING_OUT`]; the number of clients by [`MAX_CLIENTS`].

use std::collections::{HashMap, VecDeque};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use rustix::event::epoll;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use super::rules::Caller;
use super::session::{Daemon, Session};

/// Most simultaneous clients; more are accepted and closed at once.
pub const MAX_CLIENTS: usize = 1024;
/// Most reply bytes waiting for a client that does not read; past this it is dropped.
pub const MAX_PENDING_OUT: usize = 256 * 1024;
/// Most fds a client may send with one frame (a capture's file).
pub const MAX_IN_FDS: usize = 1;
/// Most replies with fds waiting for a client that does not read (each holds a NIC).
pub const MAX_PENDING_FDS: usize = 4;

const LISTENER: u64 = 0;
const CLIENT: u64 = 1 << 32;
const PIDFD: u64 = 2 << 32;
const SWITCH: u64 = 3 << 32;
const KIND: u64 = 0xffff_ffff << 32;

struct Conn {
    stream: UnixStream,
    caller: Caller,
    session: Session,
    out: Vec<u8>,
    /// Fds to send with the byte at each offset of `out`.
    out_fds: VecDeque<(usize, Vec<OwnedFd>)>,
    partial_since: Option<Instant>,
    writing: bool,
}

/// The loop's state.
pub struct Server {
    epoll: OwnedFd,
    listener: UnixListener,
    conns: HashMap<u32, Conn>,
    next_conn: u32,
    /// pid → (pidfd, start time of the process it refers to).
    watches: HashMap<u32, (OwnedFd, u64)>,
    frame_timeout: Duration,
    daemon: Daemon,
    /// The generation of the switch pidfd in the epoll set.
    switch_watched: Option<u64>,
}

impl Server {
    /// A server on a bound listener; watches every container the registry holds.
    pub fn new(listener: UnixListener, daemon: Daemon, frame_timeout: Duration) -> io::Result<Server> {
        listener.set_nonblocking(true)?;
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(&ep, &listener, epoll::EventData::new_u64(LISTENER), epoll::EventFlags::IN)?;
        let mut s = Server {
            epoll: ep,
            listener,
            conns: HashMap::new(),
            next_conn: 0,
            watches: HashMap::new(),
            frame_timeout,
            daemon,
            switch_watched: None,
        };
        s.watch_switch();
        for pid in s.daemon.registry.pids() {
            s.watch_container(pid);
        }
        for (pid, start) in s.daemon.vsas.owners() {
            s.watch(pid, start);
        }
        // Processes that died between the store's reclaim pass and the watches: the pidfd of
        // a dead process is readable at once, so the loop reclaims them on its first turn.
        Ok(s)
    }

    /// Runs for ever (until the process is killed).
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Vec::with_capacity(64);
        loop {
            events.clear();
            let timeout = self.next_deadline().map(|d| {
                let left = d.saturating_duration_since(Instant::now());
                rustix::time::Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: i64::from(left.subsec_nanos()),
                }
            });
            match epoll::wait(&self.epoll, rustix::buffer::spare_capacity(&mut events), timeout.as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            for ev in events.iter() {
                let data = ev.data.u64();
                let key = (data & !KIND) as u32;
                match data & KIND {
                    LISTENER => self.accept(),
                    CLIENT => self.client_ready(key, ev.flags),
                    PIDFD => self.process_exited(key),
                    SWITCH => {
                        self.switch_watched = None;
                        self.daemon.plane.switch_died();
                        self.daemon.sync_plane();
                    }
                    _ => {}
                }
            }
            self.watch_switch();
            self.expire_partial_frames();
        }
    }

    /// Keeps the switch process's pidfd (it changes when the switch is restarted) in the set.
    fn watch_switch(&mut self) {
        let Some((generation, fd)) = self.daemon.plane.switch_pidfd() else { return };
        if self.switch_watched == Some(generation) {
            return;
        }
        // A previous pidfd left the set when it was closed.
        if epoll::add(&self.epoll, fd, epoll::EventData::new_u64(SWITCH), epoll::EventFlags::IN).is_ok() {
            self.switch_watched = Some(generation);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.conns.values().filter_map(|c| c.partial_since).min().map(|t| t + self.frame_timeout)
    }

    fn expire_partial_frames(&mut self) {
        let now = Instant::now();
        let late: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| c.partial_since.is_some_and(|t| now >= t + self.frame_timeout))
            .map(|(&k, _)| k)
            .collect();
        for k in late {
            self.drop_conn(k);
        }
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: try again on the next event rather than spin.
                    eprintln!("arrakis daemon: accept: {e}");
                    return;
                }
            };
            self.daemon.registry.counters.connections += 1;
            if self.conns.len() >= MAX_CLIENTS {
                continue; // dropped: closed at once
            }
            let Ok(cred) = rustix::net::sockopt::socket_peercred(&stream) else { continue };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let caller = Caller { pid: cred.pid.as_raw_nonzero().get() as u32, uid: cred.uid.as_raw() };
            let key = self.next_conn;
            self.next_conn = self.next_conn.wrapping_add(1);
            let data = epoll::EventData::new_u64(CLIENT | u64::from(key));
            if epoll::add(&self.epoll, &stream, data, epoll::EventFlags::IN | epoll::EventFlags::RDHUP)
                .is_err()
            {
                continue;
            }
            let conn = Conn {
                stream,
                caller,
                session: Session::default(),
                out: Vec::new(),
                out_fds: VecDeque::new(),
                partial_since: None,
                writing: false,
            };
            self.conns.insert(key, conn);
        }
    }

    fn client_ready(&mut self, key: u32, flags: epoll::EventFlags) {
        if flags.contains(epoll::EventFlags::OUT) && !self.flush(key) {
            return;
        }
        if flags.intersects(
            epoll::EventFlags::IN
                | epoll::EventFlags::HUP
                | epoll::EventFlags::ERR
                | epoll::EventFlags::RDHUP,
        ) {
            self.read(key);
        }
    }

    /// Reads what the client sent and answers every complete frame.
    fn read(&mut self, key: u32) {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let Some(c) = self.conns.get_mut(&key) else { return };
            if c.out.len() > MAX_PENDING_OUT {
                // It sends but does not read its replies.
                self.drop_conn(key);
                return;
            }
            let want = c.session.buf.room().min(chunk.len());
            if want == 0 {
                // A bad header: `process` below answers it and closes.
                break;
            }
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_IN_FDS))];
            let mut anc = RecvAncillaryBuffer::new(&mut space);
            let got = rustix::net::recvmsg(
                &c.stream,
                &mut [io::IoSliceMut::new(&mut chunk[..want])],
                &mut anc,
                RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
            );
            for m in anc.drain() {
                if let RecvAncillaryMessage::ScmRights(r) = m {
                    c.session.in_fds.extend(r);
                }
            }
            let truncated = got.as_ref().is_ok_and(|r| r.flags.contains(ReturnFlags::CTRUNC));
            if truncated || c.session.in_fds.len() > MAX_IN_FDS {
                // More fds than any request carries.
                self.drop_conn(key);
                return;
            }
            match got {
                Ok(r) if r.bytes == 0 => {
                    self.drop_conn(key);
                    return;
                }
                Ok(r) => {
                    if c.session.buf.extend(&chunk[..r.bytes]).is_err() {
                        self.drop_conn(key);
                        return;
                    }
                }
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => {
                    self.drop_conn(key);
                    return;
                }
            }
            if !self.answer(key) {
                return;
            }
        }
        self.answer(key);
    }

    /// Answers complete frames; false if the connection is gone.
    fn answer(&mut self, key: u32) -> bool {
        let Some(c) = self.conns.get_mut(&key) else { return false };
        let fx = c.session.process(&mut self.daemon, c.caller);
        c.partial_since = match (c.session.buf.is_partial(), c.partial_since) {
            (false, _) => None,
            (true, Some(t)) => Some(t),
            (true, None) => Some(Instant::now()),
        };
        let base = c.out.len();
        c.out_fds.extend(fx.fds.into_iter().map(|(off, fds)| (base + off, fds)));
        c.out.extend_from_slice(&fx.reply);
        if c.out_fds.len() > MAX_PENDING_FDS {
            // It asks for NICs and does not read them.
            self.drop_conn(key);
            return false;
        }
        if let Some(pid) = fx.registered {
            self.watch_container(pid);
        }
        for (pid, start) in fx.owners {
            self.watch(pid, start);
        }
        if fx.removed {
            self.unwatch_gone();
        }
        let alive = self.flush(key);
        if fx.close {
            // The framing is lost: the error reply went out (best effort); close.
            self.drop_conn(key);
            return false;
        }
        alive
    }

    /// Sends pending output; false if the connection was dropped.
    fn flush(&mut self, key: u32) -> bool {
        let Some(c) = self.conns.get_mut(&key) else { return false };
        while !c.out.is_empty() {
            // Bytes up to the next reply that carries fds go alone; that reply's first byte
            // goes with its fds.
            let (end, fds) = match c.out_fds.front() {
                Some((0, fds)) => (c.out_fds.get(1).map_or(c.out.len(), |n| n.0), Some(fds)),
                Some((off, _)) => (*off, None),
                None => (c.out.len(), None),
            };
            let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
            let with_fds = fds.is_some();
            let sent = match fds {
                Some(fds) => send_with_fds(&c.stream, &c.out[..end], fds, flags),
                None => rustix::net::send(&c.stream, &c.out[..end], flags),
            };
            match sent {
                Ok(n) => {
                    c.out.drain(..n);
                    if with_fds && n > 0 {
                        c.out_fds.pop_front();
                    }
                    for e in c.out_fds.iter_mut() {
                        e.0 -= n;
                    }
                }
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => {
                    self.drop_conn(key);
                    return false;
                }
            }
        }
        let want_out = !c.out.is_empty();
        if want_out != c.writing {
            c.writing = want_out;
            let mut flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
            if want_out {
                flags |= epoll::EventFlags::OUT;
            }
            let data = epoll::EventData::new_u64(CLIENT | u64::from(key));
            if epoll::modify(&self.epoll, &c.stream, data, flags).is_err() {
                self.drop_conn(key);
                return false;
            }
        }
        true
    }

    fn drop_conn(&mut self, key: u32) {
        if let Some(c) = self.conns.remove(&key) {
            if c.session.buf.is_partial() || !c.out.is_empty() {
                self.daemon.registry.counters.dropped_clients += 1;
            }
            let _ = epoll::delete(&self.epoll, &c.stream);
        }
    }

    /// Watches container `pid` for its death.
    fn watch_container(&mut self, pid: u32) {
        if let Some(start) = self.daemon.registry.container(pid).map(|c| c.start) {
            self.watch(pid, start);
        }
    }

    /// Watches process `pid` that started at `start` (a container or a volume's owner) for
    /// its death (or re-watches it if the pid is another process's by now).
    fn watch(&mut self, pid: u32, start: u64) {
        if self.watches.get(&pid).is_some_and(|w| w.1 == start) {
            return;
        }
        if let Some((old, _)) = self.watches.remove(&pid) {
            let _ = epoll::delete(&self.epoll, &old);
        }
        let Some(p) = rustix::process::Pid::from_raw(pid as i32) else { return };
        let fd = match rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(_) => {
                // Already gone.
                self.process_gone(pid, start);
                return;
            }
        };
        // The pidfd refers to whatever process has the pid now: check it is still the one
        // that registered (else the registered one is gone).
        if self.daemon.host.process(pid).map(|p| p.0) != Some(start) {
            self.process_gone(pid, start);
            return;
        }
        let data = epoll::EventData::new_u64(PIDFD | u64::from(pid));
        if epoll::add(&self.epoll, fd.as_fd(), data, epoll::EventFlags::IN).is_ok() {
            self.watches.insert(pid, (fd, start));
        }
    }

    fn unwatch_gone(&mut self) {
        let gone: Vec<u32> =
            self.watches.keys().copied().filter(|p| self.daemon.watched(*p).is_none()).collect();
        for pid in gone {
            if let Some((fd, _)) = self.watches.remove(&pid) {
                let _ = epoll::delete(&self.epoll, &fd);
            }
        }
    }

    fn process_exited(&mut self, pid: u32) {
        let Some((fd, start)) = self.watches.remove(&pid) else { return };
        let _ = epoll::delete(&self.epoll, &fd);
        self.process_gone(pid, start);
    }

    /// The process `pid` that started at `start` is gone: reclaim its container and end its
    /// volumes' ownership, if the records are still that process's.
    fn process_gone(&mut self, pid: u32, start: u64) {
        self.daemon.process_gone(pid, start);
    }
}

/// Sends `bytes` with `fds` as `SCM_RIGHTS` on the first byte.
fn send_with_fds(
    stream: &UnixStream,
    bytes: &[u8],
    fds: &[OwnedFd],
    flags: SendFlags,
) -> rustix::io::Result<usize> {
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    let mut space =
        [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(arrakis_backends::proto::MAX_FDS))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if !anc.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(rustix::io::Errno::INVAL);
    }
    rustix::net::sendmsg(stream, &[io::IoSlice::new(bytes)], &mut anc, flags)
}
