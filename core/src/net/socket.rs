//! Sockets of the library OS with Linux's semantics, on the process's [`Stack`].
//!
//! A [`Socket`] is the fd object; its state ([`SockState`]) lives in the network world behind
//! the one lock. The model follows Linux's own: a socket-level state (`SS_UNCONNECTED`,
//! `SS_CONNECTING`, `SS_CONNECTED`), the protocol state (smoltcp's TCP state, mirrored into
//! Linux's `sk_shutdown` bits, `SOCK_DONE` and `sk_err` by [`sync`]), and per-call rules
//! taken from `inet_stream_connect`, `tcp_sendmsg`, `tcp_recvmsg`, `tcp_poll`,
//! `inet_shutdown`, `udp_sendmsg`/`udp_recvmsg` and `datagram_poll`.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use rustix::fd::OwnedFd;
use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, IpEndpoint};

use super::cmsg::Cmsg;
use super::control::{self, GrantKey};
use super::stack::ShardId;
use super::udp::{Datagram, Tx, LOOPBACK_IFINDEX};
use super::world::{net, Inner, Wait, RX_IDLE, RX_READY, RX_UNKNOWN};
use crate::error::{Errno, SysResult};
use crate::event::{ev, Watcher};
use crate::fd::{FdKind, FdObject};

/// Address family of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `AF_INET`.
    V4,
    /// `AF_INET6`.
    V6,
}

/// Socket type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `SOCK_STREAM` (TCP).
    Stream,
    /// `SOCK_DGRAM` (UDP).
    Dgram,
}

/// Linux's `sock->state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ss {
    Unconnected,
    Connecting,
    Connected,
}

/// `MSG_*` flags the library OS understands.
pub mod msg {
    /// `MSG_OOB`.
    pub const OOB: i32 = 0x1;
    /// `MSG_PEEK`.
    pub const PEEK: i32 = 0x2;
    /// `MSG_TRUNC`.
    pub const TRUNC: i32 = 0x20;
    /// `MSG_DONTWAIT`.
    pub const DONTWAIT: i32 = 0x40;
    /// `MSG_WAITALL`.
    pub const WAITALL: i32 = 0x100;
    /// `MSG_NOSIGNAL`.
    pub const NOSIGNAL: i32 = 0x4000;
    /// `MSG_MORE`.
    pub const MORE: i32 = 0x8000;
    /// `MSG_CMSG_CLOEXEC` (meaningless without fds, accepted).
    pub const CMSG_CLOEXEC: i32 = 0x4000_0000;
}

/// Socket options kept per socket.
#[derive(Clone, Debug)]
struct Opts {
    reuseaddr: bool,
    reuseport: bool,
    keepalive: bool,
    nodelay: bool,
    v6only: bool,
    rcvbuf: i32,
    sndbuf: i32,
    /// `SOCK_SNDBUF_LOCK`: the program set `SO_SNDBUF`, so the send queue is held to it
    /// (otherwise Linux autotunes it upwards and so does the stack's large buffer).
    sndbuf_locked: bool,
    /// `SOCK_RCVBUF_LOCK`: the program set `SO_RCVBUF`; new connections get a receive
    /// buffer (window) of that size.
    rcvbuf_locked: bool,
    /// `SO_LINGER`: `Some(seconds)` when on.
    linger: Option<i32>,
    /// `l_linger` as last set (Linux keeps it while lingering is off).
    linger_secs: i32,
    /// `SO_RCVLOWAT` (at least 1).
    rcvlowat: i32,
    rcvtimeo: Option<Duration>,
    sndtimeo: Option<Duration>,
    /// `SOCK_RCVTSTAMP` (`SO_TIMESTAMP`), with `SOCK_RCVTSTAMPNS` (`SO_TIMESTAMPNS`) when true.
    timestamp: Option<bool>,
    /// Options stored and reported back but not modelled (`SO_PRIORITY`, `IP_TOS`, ...).
    other: HashMap<(i32, i32), Vec<u8>>,
    /// Every `setsockopt` that succeeded, in order: replayed on a kernel socket that takes
    /// this one's place ([`Socket::kernel_handover`]).
    log: Vec<(i32, i32, Vec<u8>)>,
}

impl Opts {
    /// `SO_RCVLOWAT` in bytes: what a stream must have queued to read as readable.
    fn lowat(&self) -> usize {
        usize::try_from(self.rcvlowat).unwrap_or(1).max(1)
    }
}

/// The state of one socket (under the network lock).
pub(crate) struct SockState {
    fam: Family,
    kind: Kind,
    pub(crate) wait: Arc<Wait>,
    ss: Ss,
    /// Bound local address as the program sees it (`None` until bound; a UDP socket whose
    /// auto-bound port was given up by an `AF_UNSPEC` connect keeps its address with port 0).
    local: Option<SocketAddr>,
    /// `SOCK_BINDPORT_LOCK` / `SOCK_BINDADDR_LOCK`: `bind` chose the port / a specific
    /// address, so a disconnect keeps them (otherwise they are given back).
    port_lock: bool,
    addr_lock: bool,
    /// The automatically chosen port was given back (`inet_num` 0) while `getsockname`
    /// still shows it (`inet_sport`), as after a disconnect or a failed connect.
    port_gone: bool,
    /// Peer as the program sees it (connected TCP, connected UDP).
    peer: Option<SocketAddr>,
    /// Listener shard while listening.
    listener: Option<ShardId>,
    /// The listener's kernel half, for clients not under the shim ([`super::shadow`]), and
    /// whether it may have a connection waiting.
    shadow: Option<OwnedFd>,
    shadow_ready: bool,
    /// Connection shard (TCP) or UDP shard.
    shard: Option<ShardId>,
    /// `sk_err`: reported once by `SO_ERROR` or the next call.
    err: Option<Errno>,
    /// `RCV_SHUTDOWN` / `SEND_SHUTDOWN`.
    shut_rd: bool,
    shut_wr: bool,
    /// `SOCK_DONE`: the peer's FIN arrived.
    done: bool,
    /// TCP state `CLOSE` after having had a connection (reset, refused, finished).
    closed: bool,
    /// A FIN was sent (shutdown or close).
    fin_sent: bool,
    /// The current connection got past the handshake (a reset now is `ECONNRESET`, not
    /// `ECONNREFUSED`, whatever `sock->state` says — a non-blocking connect leaves it
    /// `SS_CONNECTING` on Linux too).
    established: bool,
    backlog: usize,
    /// Readiness and bytes queued when watchers were last told (edge detection).
    pub(crate) last_ev: u32,
    pub(crate) last_rx: usize,
    pub(crate) last_tx: usize,
    opts: Opts,
    pub(crate) watchers: Vec<Watcher>,
    /// The daemon's grant this socket's port is under (emulator backend: a port outside the
    /// process's blocks, [`control::acquire`]); given back when the socket closes.
    grant: Option<GrantKey>,
}

/// Linux's defaults (`tcp_rmem[1]`, `tcp_wmem[1]`, `rmem_default`).
const TCP_RCVBUF: i32 = 131_072;
const TCP_SNDBUF: i32 = 16_384;
const UDP_BUF: i32 = 212_992;
/// `net.core.rmem_max` / `wmem_max` when `/proc` cannot tell.
const RMEM_MAX: i32 = 212_992;

/// `net.core.rmem_max` (`rcv`) or `net.core.wmem_max`, read once.
fn sysctl_max(rcv: bool) -> i32 {
    static MAX: std::sync::OnceLock<(i32, i32)> = std::sync::OnceLock::new();
    let (r, w) = *MAX.get_or_init(|| {
        let read = |p: &str| {
            std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<i32>().ok()).unwrap_or(RMEM_MAX)
        };
        (read("/proc/sys/net/core/rmem_max"), read("/proc/sys/net/core/wmem_max"))
    });
    if rcv {
        r
    } else {
        w
    }
}
const SOCK_MIN_RCVBUF: i32 = 2_304;
const SOCK_MIN_SNDBUF: i32 = 4_608;
/// Largest UDP payload over IPv4 / IPv6.
const UDP_MAX_V4: usize = 65_507;
const UDP_MAX_V6: usize = 65_527;

impl SockState {
    fn new(fam: Family, kind: Kind, wait: Arc<Wait>) -> SockState {
        let buf = if kind == Kind::Stream { (TCP_RCVBUF, TCP_SNDBUF) } else { (UDP_BUF, UDP_BUF) };
        SockState {
            fam,
            kind,
            wait,
            ss: Ss::Unconnected,
            local: None,
            port_lock: false,
            addr_lock: false,
            port_gone: false,
            peer: None,
            listener: None,
            shadow: None,
            shadow_ready: false,
            shard: None,
            err: None,
            shut_rd: false,
            shut_wr: false,
            done: false,
            closed: false,
            fin_sent: false,
            established: false,
            backlog: 0,
            last_ev: 0,
            last_rx: 0,
            last_tx: 0,
            opts: Opts {
                reuseaddr: false,
                reuseport: false,
                keepalive: false,
                nodelay: false,
                v6only: false,
                rcvbuf: buf.0,
                sndbuf: buf.1,
                sndbuf_locked: false,
                rcvbuf_locked: false,
                linger: None,
                linger_secs: 0,
                rcvlowat: 1,
                rcvtimeo: None,
                sndtimeo: None,
                timestamp: None,
                other: HashMap::new(),
                log: Vec::new(),
            },
            watchers: Vec::new(),
            grant: None,
        }
    }

    /// The local address when the socket holds its port (Linux's `inet_num != 0`).
    fn held(&self) -> Option<SocketAddr> {
        self.local.filter(|_| !self.port_gone)
    }

    fn take_err(&mut self) -> Option<Errno> {
        self.err.take()
    }

    fn wildcard(&self) -> SocketAddr {
        match self.fam {
            Family::V4 => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            Family::V6 => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        }
    }
}

/// A library-OS socket: what an fd number refers to.
#[derive(Debug)]
pub struct Socket {
    id: usize,
    wait: Arc<Wait>,
    nonblock: AtomicBool,
    fam: Family,
    kind: Kind,
}

impl FdObject for Socket {
    fn kind(&self) -> FdKind {
        FdKind::Socket
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        let grant = {
            let mut g = net().lock();
            close(&mut g, self.id)
        };
        // After the world lock: the revocation is queued, never waited for.
        if let Some(k) = grant {
            control::release(&k);
        }
    }
}

/// A kernel placeholder for a new library-OS fd: an eventfd, placed by the kernel at the
/// lowest free number so numbering stays Linux's.
pub fn placeholder(nonblock: bool, cloexec: bool) -> SysResult<OwnedFd> {
    let mut flags = rustix::event::EventfdFlags::empty();
    if nonblock {
        flags |= rustix::event::EventfdFlags::NONBLOCK;
    }
    if cloexec {
        flags |= rustix::event::EventfdFlags::CLOEXEC;
    }
    rustix::event::eventfd(0, flags).map_err(|e| Errno(e.raw_os_error()))
}

/// Whether the loopback backend serves this address (the stack's own addresses and the
/// wildcards); other addresses stay on the kernel.
pub fn serves(addr: &SocketAddr) -> bool {
    is_local(addr) || on_uplink(unmap(addr.ip()))
}

/// The library OS's own addresses (what `bind` accepts): loopback, the wildcards, and the
/// uplink address if the switch has an uplink.
pub fn is_local(addr: &SocketAddr) -> bool {
    match unmap(addr.ip()) {
        IpAddr::V4(a) if a == Ipv4Addr::LOCALHOST || a.is_unspecified() => true,
        IpAddr::V6(a) if a == Ipv6Addr::LOCALHOST || a.is_unspecified() => true,
        ip => super::world::uplink().is_some_and(|u| u.addr() == ip),
    }
}

/// A host on the switch's uplink network other than this process's own address: reached
/// through the switch's uplink.
fn on_uplink(ip: IpAddr) -> bool {
    super::world::uplink().is_some_and(|u| u.addr() != ip && u.contains(ip))
}

/// `::ffff:a.b.c.d` → `a.b.c.d`.
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The endpoint the stack uses for a program's address (v4-mapped become IPv4; a wildcard
/// destination means this host, as on Linux).
fn endpoint(addr: &SocketAddr) -> IpEndpoint {
    let ip = match unmap(addr.ip()) {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    IpEndpoint::new(IpAddress::from(ip), addr.port())
}

/// The program's view of a stack endpoint, in the socket's family.
fn to_addr(fam: Family, ep: IpEndpoint) -> SocketAddr {
    let ip: IpAddr = ep.addr.into();
    match (fam, ip) {
        (Family::V6, IpAddr::V4(v4)) => SocketAddr::V6(SocketAddrV6::new(v4.to_ipv6_mapped(), ep.port, 0, 0)),
        (_, ip) => SocketAddr::new(ip, ep.port),
    }
}

/// Where `bind` put a socket ([`Socket::bind_granted`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindTo {
    /// Bound on the library OS.
    Library,
    /// The daemon could not give the port (quota, daemon down or failing): the socket must
    /// go to the kernel ([`Socket::kernel_handover`]) and the kernel bind it. The reason.
    Kernel(String),
}

/// A connection `accept` returns.
#[derive(Debug)]
pub enum Accepted {
    /// From a socket of the library OS: a new library-OS socket.
    Lib(Arc<Socket>),
    /// From a kernel client, through the listener's kernel half: a kernel socket.
    Kernel(OwnedFd),
}

/// What a kernel socket replacing a library-OS one needs ([`Socket::kernel_handover`]).
#[derive(Debug, Clone)]
pub struct Handover {
    /// `(level, name, value)` of each successful `setsockopt`, in order.
    pub options: Vec<(i32, i32, Vec<u8>)>,
    /// The address the program bound, if it chose one.
    pub bound: Option<SocketAddr>,
}

/// What `recv*` produced.
#[derive(Debug, Default, Clone)]
pub struct Received {
    /// Bytes returned (the datagram's full length with `MSG_TRUNC` in the flags).
    pub n: usize,
    /// Sender (datagrams; the peer for a connected stream when asked).
    pub from: Option<SocketAddr>,
    /// `msg_flags`: `MSG_TRUNC` when a datagram did not fit.
    pub flags: i32,
    /// Control messages the socket asked for (`IP_PKTINFO`, `SO_TIMESTAMP`, ...), in the
    /// order Linux puts them.
    pub cmsgs: Vec<Cmsg>,
}

impl Socket {
    /// A new socket of `fam`/`kind` (its fd placeholder comes from [`placeholder`]).
    pub fn new(fam: Family, kind: Kind, nonblock: bool) -> Arc<Socket> {
        let wait = Arc::new(Wait::default());
        let n = net();
        let id = {
            let mut g = n.lock();
            g.add_sock(SockState::new(fam, kind, wait.clone()))
        };
        n.ensure_progress();
        Arc::new(Socket { id, wait, nonblock: AtomicBool::new(nonblock), fam, kind })
    }

    /// Family of the socket.
    pub fn family(&self) -> Family {
        self.fam
    }

    /// Type of the socket.
    pub fn sock_kind(&self) -> Kind {
        self.kind
    }

    pub(crate) fn id(&self) -> usize {
        self.id
    }

    /// `O_NONBLOCK` of the open file description (shared by `dup`s).
    pub fn set_nonblocking(&self, on: bool) {
        self.nonblock.store(on, SeqCst);
    }

    /// Whether `O_NONBLOCK` is set.
    pub fn nonblocking(&self) -> bool {
        self.nonblock.load(SeqCst)
    }

    /// Runs `attempt` under the lock until it gives a result; `None` means "would block".
    /// Non-blocking → `EAGAIN`; otherwise sleeps on the socket's word until `deadline`
    /// (`EAGAIN` when it passes, as Linux's `SO_RCVTIMEO`), `EINTR` after a signal.
    fn block<T>(
        &self,
        nonblock: bool,
        timeout: impl Fn(&Opts) -> Option<Duration>,
        attempt: impl FnMut(&mut Inner, usize) -> SysResult<Option<T>>,
    ) -> SysResult<T> {
        self.block_partial(nonblock, timeout, &Cell::new(false), attempt)
    }

    /// [`Socket::block`] for calls that can return part of their work (`recv` with
    /// `MSG_WAITALL` or a low-water mark, `send` of more than fits): once `attempt` sets
    /// `partial`, any signal handler ends the wait — `EINTR`, which the caller turns into the
    /// partial count, as Linux returns what was copied instead of restarting the call.
    fn block_partial<T>(
        &self,
        nonblock: bool,
        timeout: impl Fn(&Opts) -> Option<Duration>,
        partial: &Cell<bool>,
        mut attempt: impl FnMut(&mut Inner, usize) -> SysResult<Option<T>>,
    ) -> SysResult<T> {
        let mut deadline: Option<Option<StdInstant>> = None;
        loop {
            let seen = self.wait.seen();
            {
                let mut g = net().lock();
                let r = attempt(&mut g, self.id);
                // The call may have lowered readiness (data read, error taken): update the
                // socket's flags and the epolls watching it.
                g.refresh(self.id);
                if let Some(v) = r? {
                    return Ok(v);
                }
                if nonblock {
                    return Err(Errno::EAGAIN);
                }
                if deadline.is_none() {
                    let t = timeout(&g.sock(self.id)?.opts);
                    deadline = Some(t.map(|t| StdInstant::now() + t));
                }
            }
            if self.wait.spin(seen, deadline.flatten()) {
                continue;
            }
            // A futex wait with a time-out is never restarted after a handler (see
            // world.rs), so with work done a far deadline makes every signal end the call.
            let far = || StdInstant::now() + Duration::from_secs(365 * 24 * 3600);
            let until = deadline.flatten().or_else(|| partial.get().then(far));
            match self.wait.sleep(seen, until) {
                Ok(()) => {}
                Err(Errno::ETIMEDOUT) => return Err(Errno::EAGAIN),
                Err(e) => return Err(e),
            }
        }
    }

    /// `bind(2)` on the library OS (a port the daemon will not give is `EADDRNOTAVAIL`; the
    /// shim uses [`Socket::bind_granted`] and moves such a socket to the kernel instead).
    pub fn bind(&self, addr: SocketAddr) -> SysResult<()> {
        match self.bind_granted(addr)? {
            BindTo::Library => Ok(()),
            BindTo::Kernel(_) => Err(Errno::EADDRNOTAVAIL),
        }
    }

    /// `bind(2)`. Under the emulator backend an explicit port outside the process's blocks
    /// needs the daemon's grant first (before the kernel half binds): shared with the
    /// process's other sockets on the same (protocol, address, port), refused as Linux would
    /// (`EADDRINUSE`, `EACCES`), or [`BindTo::Kernel`] when the daemon cannot give it.
    /// May wait for the daemon (never under the world lock).
    pub fn bind_granted(&self, addr: SocketAddr) -> SysResult<BindTo> {
        let tcp = self.kind == Kind::Stream;
        if addr.port() != 0 && control::active() {
            // Errors Linux gives before looking at the port come first, without a grant.
            bind_check(&net().lock(), self.id, addr)?;
        }
        let key = match control::acquire(tcp, addr) {
            control::Grant::NotNeeded => None,
            control::Grant::Held(k) => Some(k),
            control::Grant::Refused(e) => return Err(e),
            control::Grant::Kernel(why) => return Ok(BindTo::Kernel(why)),
        };
        let r = {
            let mut g = net().lock();
            let r = bind(&mut g, self.id, addr);
            if r.is_ok() {
                g.sock_mut(self.id)?.grant = key;
            }
            r
        };
        if let (Err(_), Some(k)) = (&r, key) {
            control::release(&k);
        }
        r.map(|()| BindTo::Library)
    }

    /// Whether a call that sends to `to` (`connect`, `sendto`, `sendmsg`) stays on the
    /// library OS; otherwise the shim moves the socket to the kernel if it can
    /// ([`Socket::kernel_handover`]). Loopback backend: the library OS's own addresses.
    /// Emulator backend: those too, and only if this process's world receives at the port
    /// or the daemon says a container's grant does (`lookup`, asked at each call: a server
    /// may have moved since); a socket that cannot move any more, or a UDP socket that
    /// already has its port here, stays. Never call with the world lock.
    pub fn serves_peer(&self, to: &SocketAddr) -> bool {
        if !serves(to) {
            return false;
        }
        // A host on the uplink network: through the switch's uplink, whoever serves it.
        if on_uplink(unmap(to.ip())) {
            return true;
        }
        if !control::active() {
            return true;
        }
        let tcp = self.kind == Kind::Stream;
        {
            let g = net().lock();
            let Ok(s) = g.sock(self.id) else { return true };
            if !movable(s) || (!tcp && s.held().is_some_and(|a| a.port() != 0)) {
                return true;
            }
            let port = to.port();
            if (tcp && g.stack.listening(port)) || (!tcp && g.stack.udp_port_taken(port)) {
                return true;
            }
        }
        control::lookup(tcp, *to).unwrap_or(false)
    }

    /// `listen(2)`.
    pub fn listen(&self, backlog: i32) -> SysResult<()> {
        let mut g = net().lock();
        let id = self.id;
        let s = g.sock(id)?;
        if s.kind != Kind::Stream {
            return Err(Errno::EOPNOTSUPP);
        }
        // Linux: somaxconn caps the backlog (4096); a negative or zero one means 0 → 1.
        let backlog = usize::try_from(backlog).unwrap_or(4096).min(4096);
        // The queue is full when it holds more than the backlog (sk_acceptq_is_full).
        if let Some(l) = s.listener {
            if let Some(k) = &s.shadow {
                let _ = super::shadow::listen(k, backlog, &inherited(&s.opts));
            }
            g.sock_mut(id)?.backlog = backlog;
            g.stack.set_backlog(l, backlog + 1);
            return Ok(());
        }
        if s.ss != Ss::Unconnected || s.shard.is_some() || s.closed {
            return Err(Errno::EINVAL);
        }
        if s.held().is_none() {
            let port = free_tcp_port(&g)?;
            let ip = s.local.filter(|_| s.addr_lock).map_or(s.wildcard().ip(), |l| l.ip());
            let (port, shadow) = kernel_half(&g, id, ip, port, true)?;
            let s = g.sock_mut(id)?;
            s.local = Some(SocketAddr::new(ip, port));
            s.port_gone = false;
            drop_shadow(s);
            s.shadow = shadow;
        }
        let me = g.sock(id)?;
        let mine = me.held().ok_or(Errno::EINVAL)?;
        let port = mine.port();
        let (reuseport, v6only) = (me.opts.reuseport, me.opts.v6only);
        let (v4, v6) = families(&mine, v6only);
        // SO_REUSEPORT: a second listener on the port shares the first one's queue; without
        // it, two listeners on one port collide even if both had SO_REUSEADDR — unless their
        // addresses do not overlap (an IPv4 one and an IPV6_V6ONLY one).
        let mut shared = None;
        for (other, o) in g.socks.iter().enumerate() {
            let Some(o) = o.as_ref() else { continue };
            let Some(theirs) = o.held().filter(|a| a.port() == port) else { continue };
            if other == id || o.kind != Kind::Stream || !overlaps(&theirs, o.opts.v6only, &mine, v6only) {
                continue;
            }
            if let Some(l) = o.listener {
                if !(reuseport && o.opts.reuseport) {
                    return Err(Errno::EADDRINUSE);
                }
                shared = Some(l);
            }
        }
        if let Some(k) = &g.sock(id)?.shadow {
            super::shadow::listen(k, backlog, &inherited(&g.sock(id)?.opts))?;
        }
        let shard = match shared {
            Some(l) => l,
            None => {
                let l = g.stack.listen_on(port, backlog + 1, v4, v6)?;
                let rx = recv_window(&g.sock(id)?.opts);
                if rx.is_some() {
                    g.stack.set_listener_rx(l, rx);
                }
                l
            }
        };
        if let Some(k) = &g.sock(id)?.shadow {
            if let Err(e) = super::shadow::watch(k, id) {
                tracing::warn!(error = %e, "kernel clients of this listener are seen only on the next call");
            }
        }
        let s = g.sock_mut(id)?;
        s.listener = Some(shard);
        s.backlog = backlog;
        s.shadow_ready = false;
        g.attach(shard, id);
        Ok(())
    }

    /// `accept4(2)`: a connection of the library OS (a new socket) or, through the
    /// listener's kernel half, of a kernel client (a kernel fd, `cloexec` as asked); and the
    /// peer's address.
    pub fn accept(&self, nonblock_new: bool, cloexec: bool) -> SysResult<(Accepted, SocketAddr)> {
        let nb = self.nonblocking();
        let (got, peer) = self.block(
            nb,
            |o| o.rcvtimeo,
            |g, me| {
                let s = g.sock(me)?;
                let Some(l) = s.listener else { return Err(Errno::EINVAL) };
                let fam = s.fam;
                let pick = reuseport_pick(g, l, me);
                let Some(conn) = g.stack.accept_where(l, pick)? else {
                    // Nothing from the library OS: a kernel client, if one may be waiting.
                    let s = g.sock_mut(me)?;
                    let (Some(k), true) = (&s.shadow, s.shadow_ready) else { return Ok(None) };
                    return match super::shadow::accept(k, nonblock_new, cloexec)? {
                        Some((fd, peer)) => Ok(Some((Err(fd), peer))),
                        None => {
                            s.shadow_ready = false;
                            Ok(None)
                        }
                    };
                };
                let (local, remote) = g.stack.endpoints(conn).ok_or(Errno::ECONNABORTED)?;
                let parent = g.sock(me)?;
                let mut st = SockState::new(fam, Kind::Stream, Arc::new(Wait::default()));
                // The connection keeps the listener's port (and its grant) when the
                // listener closes, as on Linux.
                st.grant = parent.grant.filter(control::share);
                // sk_clone_lock copies the listener's whole sock: every option, V6ONLY,
                // buffer sizes and their locks, timeouts included.
                st.opts = parent.opts.clone();
                st.opts.log.clear();
                st.ss = Ss::Connected;
                st.local = Some(to_addr(fam, local));
                st.peer = Some(to_addr(fam, remote));
                st.shard = Some(conn);
                let peer = st.peer;
                let id = g.add_sock(st);
                g.attach(conn, id);
                apply_tcp_opts(g, id);
                sync(g, id);
                Ok(Some((Ok(id), peer.ok_or(Errno::ECONNABORTED)?)))
            },
        )?;
        let id = match got {
            Ok(id) => id,
            Err(fd) => return Ok((Accepted::Kernel(fd), peer)),
        };
        let wait = net().lock().sock(id)?.wait.clone();
        let sock = Arc::new(Socket {
            id,
            wait,
            nonblock: AtomicBool::new(nonblock_new),
            fam: self.fam,
            kind: self.kind,
        });
        Ok((Accepted::Lib(sock), peer))
    }

    /// `connect(2)`. `None` is `AF_UNSPEC` (dissolve a UDP association).
    pub fn connect(&self, addr: Option<SocketAddr>) -> SysResult<()> {
        if self.kind == Kind::Dgram {
            let mut g = net().lock();
            return udp_connect(&mut g, self.id, addr);
        }
        let Some(addr) = addr else {
            // AF_UNSPEC on TCP: disconnect (tcp_disconnect); a fresh socket just succeeds.
            let mut g = net().lock();
            return tcp_disconnect(&mut g, self.id);
        };
        let nb = self.nonblocking();
        // Start (or inspect) the attempt, as inet_stream_connect's switch.
        {
            let mut g = net().lock();
            let id = self.id;
            let s = g.sock(id)?;
            match s.ss {
                Ss::Connected => return Err(Errno::EISCONN),
                Ss::Connecting => {
                    let state = s.shard.and_then(|c| g.stack.tcp(c).ok()).map(|t| t.state());
                    match state {
                        Some(tcp::State::SynSent | tcp::State::SynReceived) => return Err(Errno::EALREADY),
                        _ if s.closed => {
                            let s = g.sock_mut(id)?;
                            s.ss = Ss::Unconnected;
                            let e = s.take_err().unwrap_or(Errno::ECONNABORTED);
                            reset_for_reconnect(&mut g, id);
                            return Err(e);
                        }
                        _ => {
                            g.sock_mut(id)?.ss = Ss::Connected;
                            return Ok(());
                        }
                    }
                }
                Ss::Unconnected => {
                    if s.listener.is_some() || (s.shard.is_some() && !s.closed) {
                        return Err(Errno::EISCONN);
                    }
                }
            }
            if s.fam == Family::V4 && addr.is_ipv6() {
                return Err(Errno::EAFNOSUPPORT);
            }
            if s.fam == Family::V6 && addr.is_ipv4() {
                return Err(Errno::EAFNOSUPPORT);
            }
            // tcp_v6_connect: a v4-mapped peer is unreachable for an IPV6_V6ONLY socket.
            if s.opts.v6only && matches!(addr, SocketAddr::V6(v) if v.ip().to_ipv4_mapped().is_some()) {
                return Err(Errno::ENETUNREACH);
            }
            if s.closed {
                reset_for_reconnect(&mut g, id);
            }
            let remote = endpoint(&addr);
            let s = g.sock(id)?;
            let port = s.held().map(|a| a.port()).filter(|&p| p != 0);
            let fam = s.fam;
            let rx = recv_window(&s.opts);
            // An ephemeral port is never one another socket holds by `bind`.
            let Inner { stack, socks, .. } = &mut *g;
            let bound = |p: u16| port_held(socks, Kind::Stream, p, usize::MAX);
            let conn = stack.connect_sized(port, remote, rx, &bound)?;
            let (local, _) = g.stack.endpoints(conn).ok_or(Errno::EINVAL)?;
            let s = g.sock_mut(id)?;
            s.shard = Some(conn);
            s.local = Some(to_addr(fam, local));
            s.port_gone = false;
            s.peer = Some(to_addr(fam, remote));
            s.ss = Ss::Connecting;
            s.err = None;
            s.done = false;
            s.closed = false;
            s.shut_rd = false;
            s.shut_wr = false;
            s.fin_sent = false;
            s.established = false;
            g.attach(conn, id);
            apply_tcp_opts(&mut g, id);
        }
        // Linux answers a non-blocking connect with EINPROGRESS even when the handshake is
        // already over (loopback); the next connect then reports the outcome.
        if nb {
            return Err(Errno::EINPROGRESS);
        }
        let r = self.block(
            nb,
            |o| o.sndtimeo,
            |g, me| {
                let s = g.sock(me)?;
                if s.closed {
                    let s = g.sock_mut(me)?;
                    s.ss = Ss::Unconnected;
                    let e = s.take_err().unwrap_or(Errno::ECONNABORTED);
                    reset_for_reconnect(g, me);
                    return Err(e);
                }
                let state = s.shard.and_then(|c| g.stack.tcp(c).ok()).map(|t| t.state());
                match state {
                    Some(tcp::State::SynSent | tcp::State::SynReceived) => Ok(None),
                    _ => {
                        g.sock_mut(me)?.ss = Ss::Connected;
                        Ok(Some(()))
                    }
                }
            },
        );
        match r {
            Err(Errno::EAGAIN) => Err(Errno::EINPROGRESS),
            r => r,
        }
    }

    /// `shutdown(2)`.
    pub fn shutdown(&self, how: i32) -> SysResult<()> {
        if !(0..=2).contains(&how) {
            return Err(Errno::EINVAL);
        }
        let (rd, wr) = (how != 1, how != 0);
        let mut g = net().lock();
        let id = self.id;
        let s = g.sock_mut(id)?;
        if s.kind == Kind::Dgram {
            s.shut_rd |= rd;
            s.shut_wr |= wr;
            let connected = s.peer.is_some();
            g.changed(id);
            return if connected { Ok(()) } else { Err(Errno::ENOTCONN) };
        }
        if s.listener.is_none() && !s.closed {
            let state = s.shard.and_then(|c| g.stack.tcp(c).ok()).map(|t| t.state());
            if matches!(state, Some(tcp::State::SynSent | tcp::State::SynReceived)) {
                // inet_shutdown on SYN-SENT: tcp_disconnect, back to unconnected with
                // ECONNRESET pending.
                tcp_disconnect(&mut g, id)?;
                g.changed(id);
                return Ok(());
            }
        }
        let s = g.sock_mut(id)?;
        if s.ss == Ss::Connecting {
            s.ss = Ss::Connected;
        }
        if let Some(l) = s.listener {
            if rd {
                // Linux: SHUT_RD on a listener disconnects it (stops listening).
                let last = g.by_shard.get(&l).is_none_or(|v| v.len() <= 1);
                g.detach(l, id);
                if last {
                    let _ = g.stack.release(l);
                }
                let s = g.sock_mut(id)?;
                s.listener = None;
                drop_shadow(s);
                s.ss = Ss::Unconnected;
                g.changed(id);
            }
            return Ok(());
        }
        let Some(c) = s.shard else {
            s.shut_rd |= rd;
            s.shut_wr |= wr;
            return Err(Errno::ENOTCONN);
        };
        if s.closed {
            s.shut_rd |= rd;
            s.shut_wr |= wr;
            return Err(Errno::ENOTCONN);
        }
        s.shut_rd |= rd;
        if wr && !s.shut_wr {
            s.shut_wr = true;
            s.fin_sent = true;
            let t = g.stack.tcp_mut(c)?;
            if matches!(t.state(), tcp::State::SynSent) {
                t.abort();
            } else {
                t.close();
            }
        }
        g.changed(id);
        Ok(())
    }

    /// `getsockname(2)`.
    pub fn local_addr(&self) -> SysResult<SocketAddr> {
        let g = net().lock();
        let s = g.sock(self.id)?;
        Ok(s.local.unwrap_or_else(|| s.wildcard()))
    }

    /// `getpeername(2)`.
    pub fn peer_addr(&self) -> SysResult<SocketAddr> {
        let g = net().lock();
        let s = g.sock(self.id)?;
        match s.kind {
            Kind::Stream
                if s.ss == Ss::Connected || (s.ss == Ss::Connecting && !s.closed && s.peer.is_some()) =>
            {
                if s.ss == Ss::Connecting {
                    let state = s.shard.and_then(|c| g.stack.tcp(c).ok()).map(|t| t.state());
                    if matches!(state, Some(tcp::State::SynSent | tcp::State::SynReceived)) {
                        return Err(Errno::ENOTCONN);
                    }
                }
                // inet_getname: no peer in CLOSE (reset, finished) or SYN-SENT.
                if s.closed {
                    return Err(Errno::ENOTCONN);
                }
                s.peer.ok_or(Errno::ENOTCONN)
            }
            Kind::Dgram => s.peer.ok_or(Errno::ENOTCONN),
            _ => Err(Errno::ENOTCONN),
        }
    }

    /// `send`/`sendto`/`sendmsg`/`write`/`writev`: the buffers in order. An `EPIPE` error
    /// means the caller raises `SIGPIPE` unless `MSG_NOSIGNAL` (stream sockets only).
    pub fn send(&self, bufs: &[&[u8]], flags: i32, to: Option<SocketAddr>) -> SysResult<usize> {
        self.send_msg(bufs, flags, to, &[])
    }

    /// `sendmsg(2)` with the raw bytes of `msg_control` (UDP reads `IP_TTL`, `IP_TOS`,
    /// `IPV6_HOPLIMIT`, `IPV6_TCLASS`, ... from it; TCP ignores it).
    pub fn send_msg(
        &self,
        bufs: &[&[u8]],
        flags: i32,
        to: Option<SocketAddr>,
        control: &[u8],
    ) -> SysResult<usize> {
        let nb = self.nonblocking() || flags & msg::DONTWAIT != 0;
        match self.kind {
            Kind::Stream => self.tcp_send(bufs, nb),
            Kind::Dgram => self.udp_send(bufs, nb, to, control),
        }
    }

    fn tcp_send(&self, bufs: &[&[u8]], nb: bool) -> SysResult<usize> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut sent = 0usize;
        let partial = Cell::new(false);
        let r = self.block_partial(
            nb,
            |o| o.sndtimeo,
            &partial,
            |g, me| {
                let s = g.sock(me)?;
                // sk_stream_wait_connect.
                let state = s.shard.and_then(|c| g.stack.tcp(c).ok()).map(|t| t.state());
                let connecting = matches!(state, Some(tcp::State::SynSent | tcp::State::SynReceived));
                if s.err.is_some() && sent == 0 {
                    return Err(g.sock_mut(me)?.take_err().unwrap_or(Errno::EPIPE));
                }
                if connecting && !s.closed {
                    return if sent > 0 { Ok(Some(sent)) } else { Ok(None) };
                }
                if s.shut_wr || s.closed || s.shard.is_none() {
                    if sent > 0 {
                        return Ok(Some(sent));
                    }
                    return Err(g.sock_mut(me)?.take_err().unwrap_or(Errno::EPIPE));
                }
                let Some(c) = s.shard else { return Err(Errno::EPIPE) };
                if total == 0 {
                    return Ok(Some(0));
                }
                let cap = send_cap(&s.opts);
                loop {
                    let before = sent;
                    let t = g.stack.tcp_mut(c)?;
                    let mut skip = sent;
                    for b in bufs {
                        if skip >= b.len() {
                            skip -= b.len();
                            continue;
                        }
                        let room = cap.saturating_sub(t.send_queue()).min(b.len() - skip);
                        let n = t.send_slice(&b[skip..skip + room]).unwrap_or(0);
                        sent += n;
                        if n < b.len() - skip {
                            break;
                        }
                        skip = 0;
                    }
                    if sent == total {
                        return Ok(Some(sent));
                    }
                    // Buffer full: push it out (on loopback the peer may take it at once)
                    // and go round while that makes room.
                    g.pump();
                    if sent == before {
                        partial.set(sent > 0);
                        return Ok(None);
                    }
                }
            },
        );
        match r {
            Err(Errno::EAGAIN | Errno::EINTR) if sent > 0 => Ok(sent),
            r => r,
        }
    }

    fn udp_send(&self, bufs: &[&[u8]], nb: bool, to: Option<SocketAddr>, control: &[u8]) -> SysResult<usize> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut data = Vec::with_capacity(total);
        for b in bufs {
            data.extend_from_slice(b);
        }
        let control = if control.is_empty() { Vec::new() } else { super::cmsg::parse(control)? };
        self.block(
            nb,
            |o| o.sndtimeo,
            |g, me| {
                let s = g.sock(me)?;
                let dest = match (to, s.peer) {
                    (Some(a), _) => a,
                    (None, Some(p)) => p,
                    (None, None) => return Err(Errno::EDESTADDRREQ),
                };
                if s.fam == Family::V4 && dest.is_ipv6() {
                    return Err(Errno::EAFNOSUPPORT);
                }
                let v4 = matches!(unmap(dest.ip()), IpAddr::V4(_));
                if s.fam == Family::V6 && s.opts.v6only && v4 {
                    return Err(Errno::ENETUNREACH);
                }
                if to.is_some_and(|a| a.port() == 0) {
                    return Err(Errno::EINVAL);
                }
                let tx = tx_params(&s.opts, v4, &control)?;
                let max = if v4 { UDP_MAX_V4 } else { UDP_MAX_V6 };
                if data.len() > max {
                    return Err(Errno::EMSGSIZE);
                }
                if let Some(e) = g.sock_mut(me)?.take_err() {
                    return Err(e);
                }
                if g.sock(me)?.shut_wr {
                    return Err(Errno::EPIPE);
                }
                let shard = udp_autobind(g, me)?;
                let dst = endpoint(&dest);
                mapped_source_check(g.sock(me)?, dst.addr)?;
                let src = source_for(g.sock(me)?.local, dst.addr);
                let now = g.now();
                g.stack.udp_send(shard, src, dst, tx, &data, now)?;
                Ok(Some(data.len()))
            },
        )
    }

    /// `recv`/`recvfrom`/`recvmsg`/`read`/`readv` into the buffers in order.
    pub fn recv(&self, bufs: &mut [&mut [u8]], flags: i32) -> SysResult<Received> {
        let nb = self.nonblocking() || flags & msg::DONTWAIT != 0;
        match self.kind {
            Kind::Stream => self.tcp_recv(bufs, flags, nb),
            Kind::Dgram => self.udp_recv(bufs, flags, nb),
        }
    }

    /// Whether a receive would return data now, answered without the world lock (see
    /// [`Wait::recv_ready`]): for `poll` and `select` asking for input alone, which then need
    /// not take the lock to look (a client woken because its answer came reads it next).
    pub fn readable_now(&self) -> bool {
        self.wait.recv_ready()
    }

    /// A nonblocking receive that would find nothing, answered without the world lock (see
    /// [`Wait::recv_would_block`]): a program that reads until `EAGAIN` after each message
    /// (memcached's workers, libmemcached's clients) pays one pass less per message.
    fn recv_fast_eagain(&self, nb: bool) -> bool {
        nb && self.wait.recv_would_block() && super::world::device_idle()
    }

    fn tcp_recv(&self, bufs: &mut [&mut [u8]], flags: i32, nb: bool) -> SysResult<Received> {
        if flags & msg::OOB != 0 {
            return Err(Errno::EINVAL);
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        // A zero-length read of a stream with data answers 0, not EAGAIN: it takes the lock.
        if total > 0 && self.recv_fast_eagain(nb) {
            return Err(Errno::EAGAIN);
        }
        let peek = flags & msg::PEEK != 0;
        let waitall = flags & msg::WAITALL != 0;
        // MSG_TRUNC on TCP: the bytes are consumed and discarded, not copied.
        if flags & msg::TRUNC != 0 {
            let mut scratch = vec![0u8; total.min(1 << 20)];
            return self.tcp_recv(&mut [&mut scratch[..]], flags & !msg::TRUNC, nb);
        }
        let mut got = 0usize;
        let partial = Cell::new(false);
        let r = self.block_partial(
            nb,
            |o| o.rcvtimeo,
            &partial,
            |g, me| {
                let s = g.sock(me)?;
                if s.listener.is_some() {
                    return Err(Errno::ENOTCONN);
                }
                // sock_rcvlowat: MSG_WAITALL waits for everything asked, otherwise for
                // SO_RCVLOWAT bytes (at most what was asked).
                let lowat = s.opts.lowat();
                let target = if waitall { total } else { lowat.clamp(1, total.max(1)) };
                let finished = s.done || s.err.is_some() || s.shut_rd || s.closed;
                if let Some(c) = s.shard {
                    let avail = g.stack.tcp(c).map(|t| t.recv_queue()).unwrap_or(0);
                    if total == 0 && avail > 0 {
                        return Ok(Some(0));
                    }
                    if avail > 0 && total > 0 {
                        let t = g.stack.tcp_mut(c)?;
                        if peek {
                            if avail < target && !finished && !nb {
                                return Ok(None);
                            }
                            // Peek the front of the queue into the buffers in order.
                            let mut tmp = vec![0u8; avail.min(total)];
                            let n = t.peek_slice(&mut tmp).unwrap_or(0);
                            scatter(bufs, 0, &tmp[..n]);
                            return Ok(Some(n));
                        }
                        let mut skip = got;
                        for b in bufs.iter_mut() {
                            if skip >= b.len() {
                                skip -= b.len();
                                continue;
                            }
                            let n = t.recv_slice(&mut b[skip..]).unwrap_or(0);
                            got += n;
                            if n < b.len() - skip {
                                break;
                            }
                            skip = 0;
                        }
                        if got >= target {
                            return Ok(Some(got));
                        }
                    }
                }
                let s = g.sock(me)?;
                if s.done {
                    return Ok(Some(got));
                }
                if s.err.is_some() {
                    if got > 0 {
                        return Ok(Some(got));
                    }
                    return Err(g.sock_mut(me)?.take_err().unwrap_or(Errno::ECONNRESET));
                }
                if s.shut_rd {
                    return Ok(Some(got));
                }
                if s.shard.is_none() || s.closed {
                    if got > 0 {
                        return Ok(Some(got));
                    }
                    return Err(Errno::ENOTCONN);
                }
                partial.set(got > 0);
                Ok(None)
            },
        );
        let n = match r {
            Err(Errno::EAGAIN | Errno::EINTR) if got > 0 => got,
            r => r?,
        };
        Ok(Received { n, from: None, flags: 0, cmsgs: Vec::new() })
    }

    fn udp_recv(&self, bufs: &mut [&mut [u8]], flags: i32, nb: bool) -> SysResult<Received> {
        if flags & msg::OOB != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let peek = flags & msg::PEEK != 0;
        let fam = self.fam;
        if self.recv_fast_eagain(nb) {
            return Err(Errno::EAGAIN);
        }
        self.block(
            nb,
            |o| o.rcvtimeo,
            |g, me| {
                if let Some(e) = g.sock_mut(me)?.take_err() {
                    return Err(e);
                }
                let s = g.sock(me)?;
                let shut = s.shut_rd;
                let Some(d) = s.shard.and_then(|c| g.stack.udp_table().front(c)) else {
                    return if shut { Ok(Some(Received::default())) } else { Ok(None) };
                };
                let len = d.data.len();
                let n = scatter(bufs, 0, &d.data);
                let from = to_addr(fam, d.src);
                let cmsgs = recv_cmsgs(s, d);
                if !peek {
                    if let Some(c) = s.shard {
                        g.stack.udp_pop(c);
                    }
                }
                let trunc = n < len;
                let ret = if flags & msg::TRUNC != 0 { len } else { n };
                Ok(Some(Received {
                    n: ret,
                    from: Some(from),
                    flags: if trunc { msg::TRUNC } else { 0 },
                    cmsgs,
                }))
            },
        )
    }

    /// `FIONREAD`/`SIOCINQ`: bytes (TCP) or the next datagram's size (UDP) waiting.
    pub fn pending_in(&self) -> SysResult<usize> {
        let g = net().lock();
        let s = g.sock(self.id)?;
        if s.listener.is_some() {
            return Err(Errno::EINVAL);
        }
        let Some(c) = s.shard else { return Ok(0) };
        Ok(match s.kind {
            Kind::Stream => g.stack.tcp(c).map(|t| t.recv_queue()).unwrap_or(0),
            // udp_ioctl: the first datagram's payload length.
            Kind::Dgram => g.stack.udp_table().front(c).map_or(0, |d| d.data.len()),
        })
    }

    /// `SIOCOUTQ`: bytes not yet acknowledged (TCP) / queued (UDP).
    pub fn pending_out(&self) -> SysResult<usize> {
        let g = net().lock();
        let s = g.sock(self.id)?;
        if s.listener.is_some() {
            return Err(Errno::EINVAL);
        }
        let Some(c) = s.shard else { return Ok(0) };
        Ok(match s.kind {
            Kind::Stream => g.stack.tcp(c).map(|t| t.send_queue()).unwrap_or(0),
            // Datagrams leave at once: loopback's transmit frees them (`skb_orphan`).
            Kind::Dgram => 0,
        })
    }

    /// `SIOCOUTQNSD`: bytes queued and not yet sent (TCP; 0 for UDP, as Linux).
    ///
    /// The stack runs every exchange to quiescence under the lock and the loopback device
    /// neither delays nor loses frames, so after a call whatever is still queued was not sent:
    /// data the peer took was acknowledged at once, and what remains waits for the peer's
    /// window. (A backend with frames in flight needs `snd_nxt` tracked per connection.)
    pub fn unsent(&self) -> SysResult<usize> {
        let g = net().lock();
        let s = g.sock(self.id)?;
        if s.listener.is_some() {
            return Err(Errno::EINVAL);
        }
        Ok(match (s.kind, s.shard) {
            (Kind::Stream, Some(c)) => g.stack.tcp(c).map(|t| t.send_queue()).unwrap_or(0),
            _ => 0,
        })
    }

    /// Readiness as `poll` reports it (`POLLIN` ...).
    pub fn events(&self) -> u32 {
        let g = net().lock();
        events(&g, self.id)
    }

    /// `setsockopt(2)` with the raw option bytes.
    pub fn setsockopt(&self, level: i32, name: i32, val: &[u8]) -> SysResult<()> {
        let mut g = net().lock();
        let id = self.id;
        let int = || -> SysResult<i32> {
            if val.len() < 4 {
                return Err(Errno::EINVAL);
            }
            Ok(i32::from_ne_bytes([val[0], val[1], val[2], val[3]]))
        };
        let s = g.sock_mut(id)?;
        let kind = s.kind;
        match (level, name) {
            (SOL_SOCKET, SO_REUSEADDR) => s.opts.reuseaddr = int()? != 0,
            (SOL_SOCKET, SO_REUSEPORT) => s.opts.reuseport = int()? != 0,
            (SOL_SOCKET, SO_KEEPALIVE) => s.opts.keepalive = int()? != 0,
            (SOL_SOCKET, SO_RCVBUF | SO_RCVBUFFORCE | SO_SNDBUF | SO_SNDBUFFORCE) => {
                let v = int()?;
                let force = name == SO_RCVBUFFORCE || name == SO_SNDBUFFORCE;
                if force && !rustix::process::geteuid().is_root() {
                    return Err(Errno::EPERM);
                }
                let rcv = name == SO_RCVBUF || name == SO_RCVBUFFORCE;
                // Capped by net.core.{r,w}mem_max unless forced, then doubled (the kernel's
                // bookkeeping overhead), never below the minimum.
                let cap = if force { i32::MAX / 2 } else { sysctl_max(rcv) };
                let v = v.clamp(0, cap).saturating_mul(2);
                if rcv {
                    s.opts.rcvbuf = v.max(SOCK_MIN_RCVBUF);
                    s.opts.rcvbuf_locked = true;
                    if let Some(l) = s.listener {
                        let rx = recv_window(&s.opts);
                        g.stack.set_listener_rx(l, rx);
                    }
                } else {
                    s.opts.sndbuf = v.max(SOCK_MIN_SNDBUF);
                    s.opts.sndbuf_locked = true;
                }
            }
            (SOL_SOCKET, SO_LINGER) => {
                if val.len() < 8 {
                    return Err(Errno::EINVAL);
                }
                let on = i32::from_ne_bytes([val[0], val[1], val[2], val[3]]);
                let secs = i32::from_ne_bytes([val[4], val[5], val[6], val[7]]);
                // Turning lingering off keeps the time (sock_setsockopt leaves sk_lingertime).
                s.opts.linger = (on != 0).then_some(secs.max(0));
                if on != 0 {
                    s.opts.linger_secs = secs;
                }
            }
            (SOL_SOCKET, SO_RCVTIMEO_OLD | SO_RCVTIMEO_NEW) => s.opts.rcvtimeo = timeval(val)?,
            (SOL_SOCKET, SO_SNDTIMEO_OLD | SO_SNDTIMEO_NEW) => s.opts.sndtimeo = timeval(val)?,
            (SOL_SOCKET, SO_TYPE | SO_ERROR | SO_ACCEPTCONN | SO_DOMAIN | SO_PROTOCOL) => {
                return Err(Errno::ENOPROTOOPT)
            }
            (SOL_SOCKET, SO_RCVLOWAT) => s.opts.rcvlowat = int()?.max(1),
            (SOL_SOCKET, SO_SNDLOWAT) => return Err(Errno::ENOPROTOOPT),
            (SOL_SOCKET, SO_TIMESTAMP | SO_TIMESTAMPNS) => {
                // sock_set_timestamp: on sets RCVTSTAMP (and RCVTSTAMPNS for the ns one), off
                // clears both.
                s.opts.timestamp = (int()? != 0).then_some(name == SO_TIMESTAMPNS);
            }
            (SOL_SOCKET, SO_BROADCAST | SO_OOBINLINE | SO_PRIORITY | SO_DONTROUTE)
            | (SOL_SOCKET, SO_PASSCRED | SO_MARK | SO_BUSY_POLL | SO_INCOMING_CPU | SO_ZEROCOPY) => {
                int()?;
                s.opts.other.insert((level, name), val[..4].to_vec());
            }
            (IPPROTO_TCP, _) if kind != Kind::Stream => return Err(Errno::ENOPROTOOPT),
            (IPPROTO_TCP, TCP_NODELAY) => s.opts.nodelay = int()? != 0,
            (IPPROTO_TCP, TCP_KEEPIDLE | TCP_KEEPINTVL | TCP_KEEPCNT | TCP_SYNCNT | TCP_USER_TIMEOUT) => {
                let v = int()?;
                let max = if name == TCP_KEEPCNT || name == TCP_SYNCNT { 127 } else { 32767 };
                if name == TCP_USER_TIMEOUT {
                    if v < 0 {
                        return Err(Errno::EINVAL);
                    }
                } else if v < 1 || v > max {
                    return Err(Errno::EINVAL);
                }
                s.opts.other.insert((level, name), val[..4].to_vec());
            }
            (IPPROTO_TCP, TCP_CORK | TCP_QUICKACK | TCP_DEFER_ACCEPT | TCP_LINGER2 | TCP_WINDOW_CLAMP)
            | (IPPROTO_TCP, TCP_NOTSENT_LOWAT | TCP_FASTOPEN | TCP_MAXSEG) => {
                int()?;
                s.opts.other.insert((level, name), val[..4].to_vec());
            }
            (IPPROTO_IPV6, IPV6_V6ONLY) => {
                if s.fam != Family::V6 {
                    return Err(Errno::ENOPROTOOPT);
                }
                if s.held().is_some() {
                    return Err(Errno::EINVAL);
                }
                s.opts.v6only = int()? != 0;
            }
            (IPPROTO_IP, IP_TOS | IP_TTL | IP_RECVERR | IP_PKTINFO | IP_MTU_DISCOVER | IP_FREEBIND)
            | (IPPROTO_IP, IP_RECVTTL | IP_RECVTOS)
            | (IPPROTO_IPV6, IPV6_UNICAST_HOPS | IPV6_TCLASS | IPV6_RECVPKTINFO | IPV6_RECVERR)
            | (IPPROTO_IPV6, IPV6_RECVHOPLIMIT | IPV6_RECVTCLASS) => {
                int()?;
                s.opts.other.insert((level, name), val[..4].to_vec());
            }
            _ => return Err(Errno::ENOPROTOOPT),
        }
        g.sock_mut(id)?.opts.log.push((level, name, val.to_vec()));
        apply_tcp_opts(&mut g, id);
        apply_udp_opts(&mut g, id);
        Ok(())
    }

    /// For a socket about to be replaced by a kernel socket (it talks to an address the
    /// library OS does not serve): what the kernel socket needs to be the same socket — the
    /// `setsockopt` calls to replay and the address `bind` gave it. `None` when the socket
    /// already has a life here (listening, connected, or watched by an epoll or a poll,
    /// whose registrations could not follow it).
    /// The socket's kernel half goes now, so that the kernel socket can bind its port.
    pub fn kernel_handover(&self) -> SysResult<Option<Handover>> {
        let mut g = net().lock();
        let s = g.sock_mut(self.id)?;
        if !movable(s) {
            return Ok(None);
        }
        drop_shadow(s);
        let bound = if s.port_lock || s.addr_lock { s.held() } else { None };
        Ok(Some(Handover { options: s.opts.log.clone(), bound }))
    }

    /// `getsockopt(2)`: the option's bytes (the shim truncates to the caller's length).
    pub fn getsockopt(&self, level: i32, name: i32) -> SysResult<Vec<u8>> {
        let mut g = net().lock();
        let id = self.id;
        let s = g.sock_mut(id)?;
        let b = |v: bool| i32::from(v).to_ne_bytes().to_vec();
        let i = |v: i32| v.to_ne_bytes().to_vec();
        Ok(match (level, name) {
            (SOL_SOCKET, SO_TYPE) => i(if s.kind == Kind::Stream { 1 } else { 2 }),
            (SOL_SOCKET, SO_DOMAIN) => i(if s.fam == Family::V4 { 2 } else { 10 }),
            (SOL_SOCKET, SO_PROTOCOL) => i(if s.kind == Kind::Stream { 6 } else { 17 }),
            (SOL_SOCKET, SO_ERROR) => {
                let e = s.take_err().map_or(0, |e| e.0);
                g.refresh(id);
                i(e)
            }
            (SOL_SOCKET, SO_ACCEPTCONN) => b(s.listener.is_some()),
            (SOL_SOCKET, SO_REUSEADDR) => b(s.opts.reuseaddr),
            (SOL_SOCKET, SO_REUSEPORT) => b(s.opts.reuseport),
            (SOL_SOCKET, SO_KEEPALIVE) => b(s.opts.keepalive),
            (SOL_SOCKET, SO_RCVBUF) => i(s.opts.rcvbuf),
            (SOL_SOCKET, SO_SNDBUF) => i(s.opts.sndbuf),
            (SOL_SOCKET, SO_LINGER) => {
                let mut v = i(i32::from(s.opts.linger.is_some()));
                v.extend_from_slice(&s.opts.linger_secs.to_ne_bytes());
                v
            }
            (SOL_SOCKET, SO_RCVTIMEO_OLD | SO_RCVTIMEO_NEW) => timeval_bytes(s.opts.rcvtimeo),
            (SOL_SOCKET, SO_SNDTIMEO_OLD | SO_SNDTIMEO_NEW) => timeval_bytes(s.opts.sndtimeo),
            (SOL_SOCKET, SO_RCVLOWAT) => i(s.opts.rcvlowat),
            (SOL_SOCKET, SO_TIMESTAMP) => b(s.opts.timestamp == Some(false)),
            (SOL_SOCKET, SO_TIMESTAMPNS) => b(s.opts.timestamp == Some(true)),
            (SOL_SOCKET, SO_SNDLOWAT) => i(1),
            (IPPROTO_TCP, _) if s.kind != Kind::Stream => return Err(foreign_level(s.fam)),
            (IPPROTO_TCP, TCP_NODELAY) => b(s.opts.nodelay),
            (IPPROTO_TCP, TCP_KEEPIDLE) => {
                s.opts.other.get(&(level, name)).cloned().unwrap_or_else(|| i(7200))
            }
            (IPPROTO_TCP, TCP_KEEPINTVL) => {
                s.opts.other.get(&(level, name)).cloned().unwrap_or_else(|| i(75))
            }
            (IPPROTO_TCP, TCP_KEEPCNT) => s.opts.other.get(&(level, name)).cloned().unwrap_or_else(|| i(9)),
            (IPPROTO_TCP, TCP_SYNCNT) => s.opts.other.get(&(level, name)).cloned().unwrap_or_else(|| i(6)),
            (IPPROTO_TCP, TCP_MAXSEG) => i(if s.shard.is_some() { 65_483 } else { 536 }),
            (IPPROTO_IPV6, IPV6_V6ONLY) if s.fam == Family::V6 => b(s.opts.v6only),
            (IPPROTO_IPV6, _) if s.fam == Family::V4 => return Err(Errno::EOPNOTSUPP),
            (IPPROTO_IP, IP_TTL) => s.opts.other.get(&(level, name)).cloned().unwrap_or_else(|| i(64)),
            (IPPROTO_IPV6, IPV6_UNICAST_HOPS) => {
                s.opts.other.get(&(level, name)).cloned().unwrap_or_else(|| i(64))
            }
            (lvl, nm) => match s.opts.other.get(&(lvl, nm)) {
                Some(v) => v.clone(),
                None if known_int_option(lvl, nm) => i(0),
                None => {
                    let own = lvl == SOL_SOCKET
                        || (lvl == IPPROTO_TCP && s.kind == Kind::Stream)
                        || (lvl == IPPROTO_UDP && s.kind == Kind::Dgram)
                        || (lvl == IPPROTO_IP && s.fam == Family::V4)
                        || (lvl == IPPROTO_IPV6 && s.fam == Family::V6);
                    return Err(if own { Errno::ENOPROTOOPT } else { foreign_level(s.fam) });
                }
            },
        })
    }
}

/// The receive buffer (advertised window) for a socket's new connections: with `SO_RCVBUF`
/// set, half the (doubled) value, as Linux's `tcp_adv_win_scale` gives half to the window.
fn recv_window(o: &Opts) -> Option<usize> {
    o.rcvbuf_locked.then(|| usize::try_from(o.rcvbuf / 2).unwrap_or(usize::MAX))
}

/// Bytes a TCP socket may hold unsent or unacknowledged: with `SO_SNDBUF` set, half the
/// (doubled) value — Linux charges each byte about twice in `sk_wmem_queued`; otherwise
/// the stack's whole buffer (Linux would autotune up to `tcp_wmem[2]`).
fn send_cap(o: &Opts) -> usize {
    if o.sndbuf_locked {
        usize::try_from(o.sndbuf / 2).unwrap_or(usize::MAX).max(1)
    } else {
        usize::MAX
    }
}

/// Places bytes across the buffers from offset `at`; returns how many fit.
fn scatter(bufs: &mut [&mut [u8]], mut at: usize, data: &[u8]) -> usize {
    let mut done = 0;
    for b in bufs.iter_mut() {
        if at >= b.len() {
            at -= b.len();
            continue;
        }
        let n = (b.len() - at).min(data.len() - done);
        b[at..at + n].copy_from_slice(&data[done..done + n]);
        done += n;
        at = 0;
        if done == data.len() {
            break;
        }
    }
    done
}

fn timeval(val: &[u8]) -> SysResult<Option<Duration>> {
    if val.len() < 16 {
        return Err(Errno::EINVAL);
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&val[..8]);
    let sec = i64::from_ne_bytes(a);
    a.copy_from_slice(&val[8..16]);
    let usec = i64::from_ne_bytes(a);
    if !(0..1_000_000).contains(&usec) {
        return Err(Errno::EDOM);
    }
    if sec < 0 {
        // Linux: a negative timeout means "do not wait".
        return Ok(Some(Duration::ZERO));
    }
    let d = Duration::from_secs(sec as u64) + Duration::from_micros(usec as u64);
    Ok((!d.is_zero()).then_some(d))
}

fn timeval_bytes(d: Option<Duration>) -> Vec<u8> {
    // Linux keeps socket timeouts in jiffies (HZ=250 on Debian's kernels: 4 ms), rounding up.
    let d = d.unwrap_or_default();
    let tick = 4_000u128;
    let d = Duration::from_micros((d.as_micros().div_ceil(tick) * tick) as u64);
    let mut v = (d.as_secs() as i64).to_ne_bytes().to_vec();
    v.extend_from_slice(&i64::from(d.subsec_micros()).to_ne_bytes());
    v
}

/// `getsockopt` at a level the socket's protocol does not handle: IPv4 sockets end in
/// `ip_getsockopt` (`EOPNOTSUPP`), IPv6 ones in `ipv6_getsockopt` (`ENOPROTOOPT`).
fn foreign_level(f: Family) -> Errno {
    match f {
        Family::V4 => Errno::EOPNOTSUPP,
        Family::V6 => Errno::ENOPROTOOPT,
    }
}

fn known_int_option(level: i32, name: i32) -> bool {
    matches!(
        (level, name),
        (SOL_SOCKET, SO_BROADCAST | SO_OOBINLINE | SO_PRIORITY | SO_DONTROUTE | SO_TIMESTAMP | SO_PASSCRED)
            | (SOL_SOCKET, SO_MARK | SO_BUSY_POLL | SO_ZEROCOPY)
            | (IPPROTO_TCP, TCP_CORK | TCP_QUICKACK | TCP_DEFER_ACCEPT | TCP_LINGER2 | TCP_WINDOW_CLAMP)
            | (IPPROTO_TCP, TCP_NOTSENT_LOWAT | TCP_FASTOPEN | TCP_USER_TIMEOUT)
            | (IPPROTO_IP, IP_TOS | IP_RECVERR | IP_PKTINFO | IP_MTU_DISCOVER | IP_FREEBIND)
            | (IPPROTO_IP, IP_RECVTTL | IP_RECVTOS)
            | (IPPROTO_IPV6, IPV6_TCLASS | IPV6_RECVPKTINFO | IPV6_RECVERR)
            | (IPPROTO_IPV6, IPV6_RECVHOPLIMIT | IPV6_RECVTCLASS)
    )
}

// Option names (Linux x86_64).
const SOL_SOCKET: i32 = 1;
const SO_REUSEADDR: i32 = 2;
const SO_TYPE: i32 = 3;
const SO_ERROR: i32 = 4;
const SO_DONTROUTE: i32 = 5;
const SO_BROADCAST: i32 = 6;
const SO_SNDBUF: i32 = 7;
const SO_RCVBUF: i32 = 8;
const SO_KEEPALIVE: i32 = 9;
const SO_OOBINLINE: i32 = 10;
const SO_PRIORITY: i32 = 12;
const SO_LINGER: i32 = 13;
const SO_REUSEPORT: i32 = 15;
const SO_PASSCRED: i32 = 16;
const SO_RCVLOWAT: i32 = 18;
const SO_SNDLOWAT: i32 = 19;
const SO_RCVTIMEO_OLD: i32 = 20;
const SO_SNDTIMEO_OLD: i32 = 21;
const SO_TIMESTAMP: i32 = 29;
const SO_TIMESTAMPNS: i32 = 35;
const SO_TIMESTAMPING: i32 = 37;
const SCM_RIGHTS: i32 = 1;
const SCM_CREDENTIALS: i32 = 2;
const SCM_TXTIME: i32 = 61;
const SO_ACCEPTCONN: i32 = 30;
const SO_SNDBUFFORCE: i32 = 32;
const SO_RCVBUFFORCE: i32 = 33;
const SO_MARK: i32 = 36;
const SO_PROTOCOL: i32 = 38;
const SO_DOMAIN: i32 = 39;
const SO_BUSY_POLL: i32 = 46;
const SO_INCOMING_CPU: i32 = 49;
const SO_ZEROCOPY: i32 = 60;
const SO_RCVTIMEO_NEW: i32 = 66;
const SO_SNDTIMEO_NEW: i32 = 67;
const IPPROTO_IP: i32 = 0;
const IP_TOS: i32 = 1;
const IP_TTL: i32 = 2;
const IP_PKTINFO: i32 = 8;
const IP_MTU_DISCOVER: i32 = 10;
const IP_RECVERR: i32 = 11;
const IP_RECVTTL: i32 = 12;
const IP_RECVTOS: i32 = 13;
const IP_FREEBIND: i32 = 15;
const IPPROTO_TCP: i32 = 6;
const TCP_NODELAY: i32 = 1;
const TCP_MAXSEG: i32 = 2;
const TCP_CORK: i32 = 3;
const TCP_KEEPIDLE: i32 = 4;
const TCP_KEEPINTVL: i32 = 5;
const TCP_KEEPCNT: i32 = 6;
const TCP_SYNCNT: i32 = 7;
const TCP_LINGER2: i32 = 8;
const TCP_DEFER_ACCEPT: i32 = 9;
const TCP_WINDOW_CLAMP: i32 = 10;
const TCP_QUICKACK: i32 = 12;
const TCP_USER_TIMEOUT: i32 = 18;
const TCP_FASTOPEN: i32 = 23;
const TCP_NOTSENT_LOWAT: i32 = 25;
const IPPROTO_IPV6: i32 = 41;
const IPPROTO_UDP: i32 = 17;
const IPV6_UNICAST_HOPS: i32 = 16;
const IPV6_RECVERR: i32 = 25;
const IPV6_V6ONLY: i32 = 26;
const IPV6_RECVPKTINFO: i32 = 49;
const IPV6_PKTINFO: i32 = 50;
const IPV6_RECVHOPLIMIT: i32 = 51;
const IPV6_HOPLIMIT: i32 = 52;
const IPV6_DONTFRAG: i32 = 62;
const IPV6_RECVTCLASS: i32 = 66;
const IPV6_TCLASS: i32 = 67;
const SOL_UDP: i32 = 17;
const UDP_SEGMENT: i32 = 103;

/// Pushes the socket's TCP options into its smoltcp socket.
fn apply_tcp_opts(g: &mut Inner, id: usize) {
    let Ok(s) = g.sock(id) else { return };
    let Some(c) = s.shard.filter(|_| s.kind == Kind::Stream) else { return };
    let nodelay = s.opts.nodelay;
    let keepalive = s.opts.keepalive;
    let idle = s
        .opts
        .other
        .get(&(IPPROTO_TCP, TCP_KEEPIDLE))
        .map_or(7200, |v| i32::from_ne_bytes([v[0], v[1], v[2], v[3]]).max(1) as u64);
    let quickack = s.opts.other.get(&(IPPROTO_TCP, TCP_QUICKACK)).cloned();
    let ack_delay = ack_delay(quickack.as_deref(), g.stack.defaults_mut().ack_delay);
    if let Ok(t) = g.stack.tcp_mut(c) {
        t.set_ack_delay(ack_delay);
        t.set_nagle_enabled(!nodelay);
        t.set_keep_alive(keepalive.then(|| smoltcp::time::Duration::from_secs(idle)));
    }
}

/// The ACK delay of a TCP socket: the stack's (`stack_default`), or none while `TCP_QUICKACK`
/// (its stored value `quickack`) is set to a non-zero value — every ACK at once. Linux leaves
/// quick-ACK mode again by itself after a while; here it lasts until the option is cleared.
fn ack_delay(
    quickack: Option<&[u8]>,
    stack_default: Option<smoltcp::time::Duration>,
) -> Option<smoltcp::time::Duration> {
    let on = quickack.is_some_and(|v| v.iter().take(4).any(|&b| b != 0));
    if on {
        None
    } else {
        stack_default
    }
}

/// A free TCP port from the ephemeral range for `listen` without `bind`.
fn free_tcp_port(g: &Inner) -> SysResult<u16> {
    free_tcp_port_salted(g, 0)
}

/// [`free_tcp_port`] starting somewhere else for each `salt` (retries within one lock hold,
/// where the clock does not move).
fn free_tcp_port_salted(g: &Inner, salt: u32) -> SysResult<u16> {
    let (lo, hi) = g.stack.ephemeral().tcp;
    let seed =
        (g.now().total_micros() as u32).wrapping_add(salt.wrapping_mul(40_503)).wrapping_mul(2_654_435_761);
    let span = u32::from(hi - lo) + 1;
    for i in 0..span {
        let p = lo + ((seed.wrapping_add(i)) % span) as u16;
        // inet_csk_find_open_port: a port whose bind would conflict is skipped, TIME-WAITs
        // included (a later explicit bind to the port must not find one).
        if !g.stack.tcp_port_taken(p)
            && !port_bound(g, Kind::Stream, p, usize::MAX)
            && !g.stack.port_in_time_wait(p, false)
        {
            return Ok(p);
        }
    }
    Err(Errno::EADDRINUSE)
}

fn port_bound(g: &Inner, kind: Kind, port: u16, except: usize) -> bool {
    port_held(&g.socks, kind, port, except)
}

/// [`port_bound`] over the socket table alone (for callers that hold the stack mutably).
fn port_held(socks: &[Option<SockState>], kind: Kind, port: u16, except: usize) -> bool {
    socks.iter().enumerate().any(|(i, s)| {
        i != except
            && s.as_ref().is_some_and(|s| s.kind == kind && s.held().is_some_and(|a| a.port() == port))
    })
}

/// Whether a socket has no life here yet and can still become a kernel socket: not
/// listening, not connected (or connecting), not watched by an epoll or a poll.
fn movable(s: &SockState) -> bool {
    !(s.listener.is_some()
        || s.peer.is_some()
        || s.watchers.iter().any(|w| !w.abandoned())
        || (s.kind == Kind::Stream && s.shard.is_some()))
}

/// `bind`'s checks that come before the port (already bound, family, address).
fn bind_check(g: &Inner, id: usize, addr: SocketAddr) -> SysResult<()> {
    let s = g.sock(id)?;
    // A UDP socket unhashed by an AF_UNSPEC connect may bind again (`inet_num` is 0).
    let bound = match s.kind {
        Kind::Stream => s.held().is_some(),
        Kind::Dgram => s.local.is_some_and(|a| a.port() != 0),
    };
    if bound {
        return Err(Errno::EINVAL);
    }
    match (s.fam, addr) {
        (Family::V4, SocketAddr::V6(_)) => return Err(Errno::EAFNOSUPPORT),
        (Family::V6, SocketAddr::V4(_)) => return Err(Errno::EINVAL),
        _ => {}
    }
    // inet6_bind: an IPV6_V6ONLY socket cannot take a v4-mapped address.
    if let SocketAddr::V6(a) = addr {
        if s.opts.v6only && a.ip().to_ipv4_mapped().is_some() {
            return Err(Errno::EINVAL);
        }
    }
    if !is_local(&addr) {
        return Err(Errno::EADDRNOTAVAIL);
    }
    Ok(())
}

/// `bind(2)`: Linux's conflict rules, simplified to what a single host sees.
fn bind(g: &mut Inner, id: usize, addr: SocketAddr) -> SysResult<()> {
    bind_as(g, id, addr, true)
}

/// `bind` by the program (`explicit`: it sets `SOCK_BINDADDR_LOCK` for an address and
/// `SOCK_BINDPORT_LOCK` for a port) or the automatic bind of a UDP socket's first send or
/// connect (`inet_autobind`: a port for the address it has).
fn bind_as(g: &mut Inner, id: usize, addr: SocketAddr, explicit: bool) -> SysResult<()> {
    bind_check(g, id, addr)?;
    let s = g.sock(id)?;
    let kind = s.kind;
    let (reuseaddr, reuseport) = (s.opts.reuseaddr, s.opts.reuseport);
    let mut port = addr.port();
    if port == 0 {
        port = match kind {
            Kind::Stream => free_tcp_port(g)?,
            Kind::Dgram => loop {
                let p = g.stack.udp_ephemeral()?;
                if !port_bound(g, Kind::Dgram, p, id) {
                    break p;
                }
            },
        };
    } else {
        for (i, o) in g.socks.iter().enumerate() {
            let Some(o) = o.as_ref().filter(|o| i != id && o.kind == kind) else { continue };
            let Some(l) = o.held().filter(|l| l.port() == port) else { continue };
            if !overlaps(&l, o.opts.v6only, &addr, g.sock(id)?.opts.v6only) {
                continue;
            }
            let shared_port = reuseport && o.opts.reuseport;
            let shared_addr = reuseaddr && o.opts.reuseaddr && (kind == Kind::Dgram || o.listener.is_none());
            if !(shared_port || shared_addr) {
                return Err(Errno::EADDRINUSE);
            }
        }
        if kind == Kind::Stream && time_wait_conflict(g, port, reuseaddr) {
            return Err(Errno::EADDRINUSE);
        }
    }
    let mut shadow = None;
    if kind == Kind::Stream {
        let (p, k) = kernel_half(g, id, addr.ip(), port, addr.port() == 0)?;
        port = p;
        shadow = k;
    }
    let s = g.sock_mut(id)?;
    s.local = Some(SocketAddr::new(addr.ip(), port));
    s.port_gone = false;
    if shadow.is_some() {
        drop_shadow(s);
        s.shadow = shadow;
    }
    if explicit {
        s.addr_lock |= !addr.ip().is_unspecified();
        s.port_lock |= addr.port() != 0;
    }
    if kind == Kind::Dgram {
        let (v6, v6only) = (s.fam == Family::V6, s.opts.v6only);
        let shard = match s.shard {
            Some(c) => c,
            None => {
                let c = g.stack.udp_open(v6);
                g.sock_mut(id)?.shard = Some(c);
                g.attach(c, id);
                c
            }
        };
        g.stack.udp_table_mut().bind(shard, port, local_key(addr.ip()), v6only, reuseport);
        apply_udp_opts(g, id);
    }
    Ok(())
}

/// Whether a TIME-WAIT on `port` refuses a `bind` (Linux: unless both the binder and the
/// socket that left the TIME-WAIT had `SO_REUSEADDR`): closed ones the stack remembers, and
/// connections still held by an open socket.
fn time_wait_conflict(g: &Inner, port: u16, reuse: bool) -> bool {
    if g.stack.port_in_time_wait(port, reuse) {
        return true;
    }
    g.socks.iter().flatten().any(|o| {
        o.kind == Kind::Stream
            && o.local.is_some_and(|l| l.port() == port)
            && !(reuse && o.opts.reuseaddr)
            && o.shard.and_then(|c| g.stack.tcp(c).ok()).is_some_and(|t| t.state() == tcp::State::TimeWait)
    })
}

/// Binds the kernel half of a TCP socket to `ip`:`port` (see [`super::shadow`]). A port
/// another program holds in the kernel is `EADDRINUSE` — when the library OS chose the port
/// (`auto`), another one is tried, as `inet_csk_get_port` skips ports in use; a privileged
/// port without the right is `EACCES`, as Linux's `bind` says. Other failures leave the
/// socket without a kernel half (logged): clients not under the shim cannot reach it.
fn kernel_half(
    g: &Inner,
    id: usize,
    ip: IpAddr,
    mut port: u16,
    auto: bool,
) -> SysResult<(u16, Option<OwnedFd>)> {
    if !super::shadow::enabled() {
        return Ok((port, None));
    }
    let o = &g.sock(id)?.opts;
    for attempt in 1..=16 {
        let b = super::shadow::Binding {
            addr: SocketAddr::new(ip, port),
            reuseaddr: o.reuseaddr,
            reuseport: o.reuseport,
            v6only: o.v6only,
        };
        match super::shadow::bind(&b) {
            Ok(fd) => return Ok((port, Some(fd))),
            Err(Errno::EADDRINUSE) if auto => port = free_tcp_port_salted(g, attempt)?,
            Err(e @ (Errno::EADDRINUSE | Errno::EACCES)) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, addr = %b.addr, "no kernel half for this socket: clients not under the shim cannot reach it");
                return Ok((port, None));
            }
        }
    }
    Err(Errno::EADDRINUSE)
}

/// What a listener's kernel half passes on to the connections it accepts.
fn inherited(o: &Opts) -> super::shadow::Inherited {
    super::shadow::Inherited {
        nodelay: o.nodelay,
        keepalive: o.keepalive,
        rcvbuf: o.rcvbuf_locked.then(|| usize::try_from(o.rcvbuf / 2).unwrap_or(0)),
        sndbuf: o.sndbuf_locked.then(|| usize::try_from(o.sndbuf / 2).unwrap_or(0)),
        linger: o.linger.map(|l| u64::try_from(l).unwrap_or(0)),
    }
}

/// The watcher saw a kernel client arrive at a listener's kernel half.
pub(crate) fn shadow_arrived(g: &mut Inner, id: usize) {
    let Ok(s) = g.sock_mut(id) else { return };
    if s.shadow.is_none() {
        return;
    }
    s.shadow_ready = true;
    g.changed(id);
}

/// The listener stops listening: its kernel half goes too.
fn drop_shadow(s: &mut SockState) {
    if let Some(k) = s.shadow.take() {
        super::shadow::unwatch(&k);
    }
    s.shadow_ready = false;
}

/// Which families a listener bound to `a` takes: (IPv4, IPv6).
fn families(a: &SocketAddr, v6only: bool) -> (bool, bool) {
    match a {
        SocketAddr::V4(_) => (true, false),
        SocketAddr::V6(v) if v.ip().to_ipv4_mapped().is_some() => (true, false),
        SocketAddr::V6(v) if v.ip().is_unspecified() => (!v6only, true),
        SocketAddr::V6(_) => (false, true),
    }
}

/// The lookup's `sk_rcv_saddr` for a local address: `None` for a wildcard.
fn local_key(ip: IpAddr) -> Option<IpAddress> {
    let ip = unmap(ip);
    (!ip.is_unspecified()).then(|| IpAddress::from(ip))
}

/// The source address of a datagram to `dst` from a socket bound to `local`: the bound
/// address, or the route's (the loopback address of the destination's family).
fn source_for(local: Option<SocketAddr>, dst: IpAddress) -> IpAddress {
    match local.and_then(|l| local_key(l.ip())) {
        Some(a) if a.version() == dst.version() => a,
        _ if on_uplink(IpAddr::from(dst)) => {
            super::world::uplink().map_or(IpAddress::Ipv4(Ipv4Addr::LOCALHOST), |u| IpAddress::from(u.addr()))
        }
        _ => match dst {
            IpAddress::Ipv4(_) => IpAddress::Ipv4(Ipv4Addr::LOCALHOST),
            IpAddress::Ipv6(_) => IpAddress::Ipv6(Ipv6Addr::LOCALHOST),
        },
    }
}

/// Pushes the socket's UDP options into the stack's table.
fn apply_udp_opts(g: &mut Inner, id: usize) {
    let Ok(s) = g.sock(id) else { return };
    let Some(c) = s.shard.filter(|_| s.kind == Kind::Dgram) else { return };
    let rcvbuf = usize::try_from(s.opts.rcvbuf).unwrap_or(0);
    g.stack.udp_table_mut().set_rcvbuf(c, rcvbuf);
}

/// An option stored in `other` read as an `int` (`None` if never set).
fn int_opt(o: &Opts, level: i32, name: i32) -> Option<i32> {
    let v = o.other.get(&(level, name))?;
    Some(i32::from_ne_bytes([*v.first()?, *v.get(1)?, *v.get(2)?, *v.get(3)?]))
}

fn flag_opt(o: &Opts, level: i32, name: i32) -> bool {
    int_opt(o, level, name).is_some_and(|v| v != 0)
}

/// The TTL/hop limit and TOS/traffic class of a datagram: the socket's options
/// (`IP_TTL`, `IP_TOS`, `IPV6_UNICAST_HOPS`, `IPV6_TCLASS`) overridden by the message's
/// control data, checked as `ip_cmsg_send` (IPv4 destinations) or `ip6_datagram_send_ctl`
/// (IPv6) do. Messages of other levels are ignored, as there.
fn tx_params(o: &Opts, v4: bool, control: &[Cmsg]) -> SysResult<Tx> {
    let mut tx = if v4 {
        Tx {
            hop_limit: int_opt(o, IPPROTO_IP, IP_TTL).filter(|&t| t > 0).map_or(64, |t| t as u8),
            tos: int_opt(o, IPPROTO_IP, IP_TOS).map_or(0, |t| t as u8),
        }
    } else {
        Tx {
            hop_limit: int_opt(o, IPPROTO_IPV6, IPV6_UNICAST_HOPS)
                .filter(|&t| t >= 0)
                .map_or(64, |t| t as u8),
            tos: int_opt(o, IPPROTO_IPV6, IPV6_TCLASS).filter(|&t| t >= 0).map_or(0, |t| t as u8),
        }
    };
    let int = |c: &Cmsg| -> SysResult<i32> {
        let b: [u8; 4] = c.data.as_slice().try_into().map_err(|_| Errno::EINVAL)?;
        Ok(i32::from_ne_bytes(b))
    };
    for c in control {
        match (c.level, c.ty) {
            // __sock_cmsg_send.
            (SOL_SOCKET, SO_MARK | SO_PRIORITY) if c.data.len() != 4 => return Err(Errno::EINVAL),
            (SOL_SOCKET, SO_TIMESTAMPING) if c.data.len() != 4 => return Err(Errno::EINVAL),
            (SOL_SOCKET, SCM_TXTIME) if c.data.len() != 8 => return Err(Errno::EINVAL),
            (
                SOL_SOCKET,
                SO_MARK | SO_PRIORITY | SO_TIMESTAMPING | SCM_TXTIME | SCM_RIGHTS | SCM_CREDENTIALS,
            ) => {}
            (SOL_SOCKET, _) => return Err(Errno::EINVAL),
            // udp_cmsg_send: segmentation offload is not modelled.
            (SOL_UDP, UDP_SEGMENT) => return Err(Errno::EOPNOTSUPP),
            (SOL_UDP, _) => return Err(Errno::EINVAL),
            (IPPROTO_IP, _) if v4 => match c.ty {
                IP_TTL => {
                    let t = int(c)?;
                    if !(1..=255).contains(&t) {
                        return Err(Errno::EINVAL);
                    }
                    tx.hop_limit = t as u8;
                }
                IP_TOS => {
                    let t = match c.data.len() {
                        4 => int(c)?,
                        1 => i32::from(c.data[0]),
                        _ => return Err(Errno::EINVAL),
                    };
                    if !(0..=255).contains(&t) {
                        return Err(Errno::EINVAL);
                    }
                    tx.tos = t as u8;
                }
                IP_PKTINFO if c.data.len() == 12 => {}
                _ => return Err(Errno::EINVAL),
            },
            (IPPROTO_IPV6, _) if !v4 => match c.ty {
                IPV6_HOPLIMIT | IPV6_TCLASS => {
                    let t = int(c)?;
                    if !(-1..=255).contains(&t) {
                        return Err(Errno::EINVAL);
                    }
                    // -1 keeps the socket's own value (np->hop_limit, np->tclass).
                    if t != -1 && c.ty == IPV6_HOPLIMIT {
                        tx.hop_limit = t as u8;
                    } else if t != -1 {
                        tx.tos = t as u8;
                    }
                }
                IPV6_PKTINFO if c.data.len() >= 20 => {}
                IPV6_DONTFRAG if c.data.len() == 4 => {}
                _ => return Err(Errno::EINVAL),
            },
            _ => {}
        }
    }
    Ok(tx)
}

/// The control messages a datagram brings to `recvmsg`, in Linux's order: the timestamp
/// (`sock_recv_cmsgs`), then for an IPv4 socket (or an IPv4 packet on an IPv6 one)
/// `ip_cmsg_recv`'s `IP_PKTINFO`, `IP_TTL`, `IP_TOS`; for an IPv6 socket `IPV6_PKTINFO` and,
/// for IPv6 packets, `IPV6_HOPLIMIT`, `IPV6_TCLASS`.
fn recv_cmsgs(s: &SockState, d: &Datagram) -> Vec<Cmsg> {
    let o = &s.opts;
    let mut v = Vec::new();
    if let Some(ns) = o.timestamp {
        let t = d.stamp.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let frac = if ns { i64::from(t.subsec_nanos()) } else { i64::from(t.subsec_micros()) };
        let mut data = (t.as_secs() as i64).to_ne_bytes().to_vec();
        data.extend_from_slice(&frac.to_ne_bytes());
        v.push(Cmsg { level: SOL_SOCKET, ty: if ns { SO_TIMESTAMPNS } else { SO_TIMESTAMP }, data });
    }
    let v4_packet = d.dst.version() == smoltcp::wire::IpVersion::Ipv4;
    if s.fam == Family::V6 && flag_opt(o, IPPROTO_IPV6, IPV6_RECVPKTINFO) {
        let addr = match d.dst {
            IpAddress::Ipv4(a) => a.to_ipv6_mapped(),
            IpAddress::Ipv6(a) => a,
        };
        let mut data = addr.octets().to_vec();
        data.extend_from_slice(&LOOPBACK_IFINDEX.to_ne_bytes());
        v.push(Cmsg { level: IPPROTO_IPV6, ty: IPV6_PKTINFO, data });
    }
    if v4_packet {
        if flag_opt(o, IPPROTO_IP, IP_PKTINFO) {
            let IpAddress::Ipv4(dst) = d.dst else { return v };
            let mut data = LOOPBACK_IFINDEX.to_ne_bytes().to_vec();
            // ipi_spec_dst (the local address a reply would come from) and ipi_addr.
            data.extend_from_slice(&dst.octets());
            data.extend_from_slice(&dst.octets());
            v.push(Cmsg { level: IPPROTO_IP, ty: IP_PKTINFO, data });
        }
        if flag_opt(o, IPPROTO_IP, IP_RECVTTL) {
            v.push(Cmsg::int(IPPROTO_IP, IP_TTL, i32::from(d.hop_limit)));
        }
        if flag_opt(o, IPPROTO_IP, IP_RECVTOS) {
            v.push(Cmsg { level: IPPROTO_IP, ty: IP_TOS, data: vec![d.tos] });
        }
    } else {
        if flag_opt(o, IPPROTO_IPV6, IPV6_RECVHOPLIMIT) {
            v.push(Cmsg::int(IPPROTO_IPV6, IPV6_HOPLIMIT, i32::from(d.hop_limit)));
        }
        if flag_opt(o, IPPROTO_IPV6, IPV6_RECVTCLASS) {
            v.push(Cmsg::int(IPPROTO_IPV6, IPV6_TCLASS, i32::from(d.tos)));
        }
    }
    v
}

/// Whether two bound addresses on one port collide.
fn overlaps(a: &SocketAddr, a_v6only: bool, b: &SocketAddr, b_v6only: bool) -> bool {
    let wild = |x: &SocketAddr| x.ip().is_unspecified();
    let v4ish = |x: &SocketAddr, only: bool| match x {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(v) => (!only && v.ip().is_unspecified()) || v.ip().to_ipv4_mapped().is_some(),
    };
    let v6ish = |x: &SocketAddr| x.is_ipv6();
    let same_family = (v4ish(a, a_v6only) && v4ish(b, b_v6only)) || (v6ish(a) && v6ish(b));
    if !same_family {
        return false;
    }
    wild(a) || wild(b) || unmap(a.ip()) == unmap(b.ip())
}

/// The socket's UDP shard, binding it first if it has no port (`inet_autobind`: a port for
/// the address it has).
fn udp_autobind(g: &mut Inner, id: usize) -> SysResult<ShardId> {
    let s = g.sock(id)?;
    if let (Some(c), Some(_)) = (s.shard, s.local.filter(|l| l.port() != 0)) {
        return Ok(c);
    }
    let ip = s.local.map_or_else(|| s.wildcard().ip(), |l| l.ip());
    bind_as(g, id, SocketAddr::new(ip, 0), false)?;
    g.sock(id)?.shard.ok_or(Errno::EINVAL)
}

/// `connect(2)` on UDP (`ip4_datagram_connect`, `__ip6_datagram_connect`); `None` is
/// `AF_UNSPEC`.
fn udp_connect(g: &mut Inner, id: usize, addr: Option<SocketAddr>) -> SysResult<()> {
    let Some(addr) = addr else { return udp_disconnect(g, id) };
    // inet_dgram_connect binds a port before the protocol looks at the address.
    let shard = udp_autobind(g, id)?;
    let s = g.sock(id)?;
    let addr = match (s.fam, addr) {
        (Family::V4, SocketAddr::V6(_)) => return Err(Errno::EAFNOSUPPORT),
        // An AF_INET address on an AF_INET6 socket connects as its v4-mapped form.
        (Family::V6, SocketAddr::V4(a)) => {
            if s.opts.v6only {
                return Err(Errno::EINVAL);
            }
            SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
        }
        (_, a) => a,
    };
    if s.fam == Family::V6 && s.opts.v6only && unmap(addr.ip()).is_ipv4() {
        return Err(Errno::ENETUNREACH);
    }
    let remote = endpoint(&addr);
    mapped_source_check(s, remote.addr)?;
    let s = g.sock_mut(id)?;
    s.peer = Some(addr);
    // A connected UDP socket's local address is the route's source (127.0.0.1 / ::1); the
    // lookup then finds it under that address (udp_lib_rehash).
    let mut rehash = None;
    if let Some(l) = s.local {
        if l.ip().is_unspecified() {
            s.local = Some(to_addr(s.fam, IpEndpoint::new(remote.addr, l.port())));
            rehash = Some(remote.addr);
        }
    }
    let t = g.stack.udp_table_mut();
    if let Some(a) = rehash {
        t.set_local(shard, Some(a));
    }
    t.set_peer(shard, Some(remote));
    Ok(())
}

/// `ip6_dst_lookup_tail`: a v4-mapped source address cannot reach an IPv6 destination.
fn mapped_source_check(s: &SockState, dst: IpAddress) -> SysResult<()> {
    let mapped = s.local.is_some_and(|l| matches!(l.ip(), IpAddr::V6(a) if a.to_ipv4_mapped().is_some()));
    if s.fam == Family::V6 && mapped && dst.version() == smoltcp::wire::IpVersion::Ipv6 {
        return Err(Errno::EAFNOSUPPORT);
    }
    Ok(())
}

/// `__udp_disconnect`: no peer any more; the source address goes back to the wildcard unless
/// `bind` chose it, and an automatically chosen port is given up (the socket is unhashed;
/// it keeps what it had queued).
fn udp_disconnect(g: &mut Inner, id: usize) -> SysResult<()> {
    let s = g.sock_mut(id)?;
    s.peer = None;
    let shard = s.shard;
    if let Some(l) = s.local {
        let ip = if s.addr_lock { l.ip() } else { s.wildcard().ip() };
        let port = if s.port_lock { l.port() } else { 0 };
        s.local = Some(SocketAddr::new(ip, port));
        let (addr_lock, port_lock) = (s.addr_lock, s.port_lock);
        if let Some(c) = shard {
            let t = g.stack.udp_table_mut();
            t.set_peer(c, None);
            if !addr_lock {
                t.set_local(c, None);
            }
            if !port_lock {
                t.unbind(c);
            }
        }
    }
    Ok(())
}

/// Linux's `tcp_disconnect` (AF_UNSPEC connect; shutdown of an attempt in progress): abort
/// what there is (RST where a connection exists, `ECONNRESET` for the owner), give back an
/// automatically chosen port and source address, and return to a fresh unconnected socket.
fn tcp_disconnect(g: &mut Inner, id: usize) -> SysResult<()> {
    let s = g.sock(id)?;
    let mut reset = false;
    if let Some(l) = s.listener {
        let last = g.by_shard.get(&l).is_none_or(|v| v.len() <= 1);
        g.detach(l, id);
        if last {
            let _ = g.stack.release(l);
        }
        let s = g.sock_mut(id)?;
        s.listener = None;
        drop_shadow(s);
    } else if let Some(c) = s.shard {
        if !s.closed {
            if let Ok(t) = g.stack.tcp_mut(c) {
                use tcp::State::*;
                // tcp_need_reset, plus SYN-SENT (no RST but the error).
                reset = matches!(
                    t.state(),
                    Established | CloseWait | FinWait1 | FinWait2 | SynReceived | SynSent
                );
                t.abort();
            }
            // The RST goes out before the connection is forgotten.
            g.pump();
        }
        g.detach(c, id);
        let _ = g.stack.release(c);
        g.sock_mut(id)?.shard = None;
    }
    let s = g.sock_mut(id)?;
    s.ss = Ss::Unconnected;
    s.peer = None;
    s.closed = false;
    s.done = false;
    s.shut_rd = false;
    s.shut_wr = false;
    s.fin_sent = false;
    s.established = false;
    if reset {
        s.err = Some(Errno::ECONNRESET);
    }
    unhash(s);
    Ok(())
}

/// The socket leaves its connection: an automatically chosen port and source address are
/// given back (`inet_put_port`, `inet_reset_saddr`), what `bind` set stays.
fn unhash(s: &mut SockState) {
    if !s.port_lock {
        s.port_gone = s.local.is_some();
        drop_shadow(s);
    }
    if !s.addr_lock {
        s.local = s.local.map(|l| SocketAddr::new(s.wildcard().ip(), l.port()));
    }
}

/// After a failed attempt: drop the dead connection so `connect` can start a new one (an
/// automatically chosen port was already given back by `tcp_done`).
fn reset_for_reconnect(g: &mut Inner, id: usize) {
    let Ok(s) = g.sock(id) else { return };
    if let Some(c) = s.shard {
        g.detach(c, id);
        let _ = g.stack.release(c);
    }
    if let Ok(s) = g.sock_mut(id) {
        s.shard = None;
        s.peer = None;
        s.closed = false;
        s.done = false;
        s.shut_rd = false;
        s.shut_wr = false;
        s.fin_sent = false;
        s.established = false;
    }
}

/// `close` of the last fd: Linux's `tcp_close` — unread data or `SO_LINGER` 0 → RST,
/// otherwise FIN after what was queued; a listener resets what nobody accepted.
/// Returns the grant the socket held, to give back once the world lock is released.
fn close(g: &mut Inner, id: usize) -> Option<GrantKey> {
    let mut s = g.drop_sock(id)?;
    drop_shadow(&mut s);
    for w in &s.watchers {
        g.ev.forget_sock(w, id);
    }
    if let Some(l) = s.listener {
        g.detach(l, id);
        if !g.by_shard.contains_key(&l) {
            let _ = g.stack.release(l);
        }
    }
    if let Some(c) = s.shard {
        g.detach(c, id);
        g.stack.set_reuse(c, s.opts.reuseaddr);
        if s.kind == Kind::Stream {
            let unread = g.stack.tcp(c).map(|t| t.recv_queue()).unwrap_or(0);
            if let Ok(t) = g.stack.tcp_mut(c) {
                if unread > 0 || s.opts.linger == Some(0) {
                    t.abort();
                    // Send the RST before the connection is forgotten.
                    g.pump();
                }
            }
        }
        let _ = g.stack.release(c);
    }
    s.grant
}

/// What a receive on socket `id` would find now ([`Wait`]'s lock-free hints): [`RX_IDLE`]
/// exactly in the cases in which [`Socket::recv`]'s attempt waits (for a non-empty buffer, no
/// `MSG_OOB`); [`RX_READY`] when it would return queued data and there is nothing else to
/// report; otherwise [`RX_UNKNOWN`] (errors, end of input, listeners: the lock decides).
pub(crate) fn rx_state(g: &Inner, id: usize) -> u8 {
    let Ok(s) = g.sock(id) else { return RX_UNKNOWN };
    if s.err.is_some() || s.shut_rd {
        return RX_UNKNOWN;
    }
    match s.kind {
        Kind::Stream => {
            let Some(c) = s.shard else { return RX_UNKNOWN };
            if s.listener.is_some() || s.done || s.closed {
                return RX_UNKNOWN;
            }
            let Ok(t) = g.stack.tcp(c) else { return RX_UNKNOWN };
            let queued = t.recv_queue();
            // Readable as `events` says it: at least `SO_RCVLOWAT` bytes, connected.
            let lowat = s.opts.lowat();
            if queued == 0 {
                RX_IDLE
            } else if queued >= lowat && !matches!(t.state(), tcp::State::SynSent | tcp::State::SynReceived) {
                RX_READY
            } else {
                RX_UNKNOWN
            }
        }
        Kind::Dgram => {
            if s.shard.and_then(|c| g.stack.udp_table().front(c)).is_some() {
                RX_READY
            } else {
                RX_IDLE
            }
        }
    }
}

/// Mirrors smoltcp's TCP state into Linux's flags (`sk_err`, `sk_shutdown`, `SOCK_DONE`).
pub(crate) fn sync(g: &mut Inner, id: usize) {
    let Ok(s) = g.sock(id) else { return };
    if s.kind != Kind::Stream || s.closed {
        return;
    }
    let Some(c) = s.shard else { return };
    let state = g.stack.tcp(c).map(|t| t.state()).unwrap_or(tcp::State::Closed);
    let Ok(s) = g.sock_mut(id) else { return };
    use tcp::State::*;
    if !matches!(state, Closed | Listen | SynSent | SynReceived) {
        s.established = true;
    }
    match state {
        CloseWait | LastAck | Closing => {
            s.done = true;
            s.shut_rd = true;
        }
        TimeWait => {
            // tcp_time_wait: a TIME-WAIT mini-socket takes over the port; the program's
            // socket is CLOSE, finished without error.
            s.done = true;
            s.closed = true;
            s.shut_rd = true;
            s.shut_wr = true;
            if !s.port_lock {
                s.port_gone = true;
            }
        }
        Closed => {
            let normal = s.done && s.fin_sent;
            if !normal {
                let handshake = !s.established;
                // tcp_reset: refused in SYN-SENT, EPIPE in CLOSE-WAIT, else ECONNRESET.
                s.err = Some(if handshake {
                    Errno::ECONNREFUSED
                } else if s.done && !s.fin_sent {
                    Errno::EPIPE
                } else {
                    Errno::ECONNRESET
                });
            }
            // tcp_done gives an automatically chosen port back.
            if !s.port_lock {
                s.port_gone = true;
            }
            s.closed = true;
            s.shut_rd = true;
            s.shut_wr = true;
        }
        _ => {}
    }
}

/// Readiness of a socket, Linux's `tcp_poll` / `datagram_poll`.
pub(crate) fn events(g: &Inner, id: usize) -> u32 {
    let Ok(s) = g.sock(id) else { return ev::NVAL };
    let mut m = 0;
    if s.kind == Kind::Dgram {
        if s.err.is_some() {
            m |= ev::ERR;
        }
        if s.shut_rd {
            m |= ev::RDHUP | ev::IN | ev::RDNORM;
        }
        if s.shut_rd && s.shut_wr {
            m |= ev::HUP;
        }
        let readable = s.shard.is_some_and(|c| g.stack.udp_table().queued(c) > 0);
        if readable {
            m |= ev::IN | ev::RDNORM;
        }
        m |= ev::OUT | ev::WRNORM | ev::WRBAND;
        return m;
    }
    if let Some(l) = s.listener {
        let pick = reuseport_pick(g, l, id);
        let ready = s.shadow_ready || g.stack.acceptable_where(l, pick);
        return if ready { ev::IN | ev::RDNORM } else { 0 };
    }
    let t = s.shard.and_then(|c| g.stack.tcp(c).ok());
    let state = if s.closed { tcp::State::Closed } else { t.map_or(tcp::State::Closed, |t| t.state()) };
    if (s.shut_rd && s.shut_wr) || state == tcp::State::Closed {
        m |= ev::HUP;
    }
    if s.shut_rd {
        m |= ev::IN | ev::RDNORM | ev::RDHUP;
    }
    if !matches!(state, tcp::State::SynSent | tcp::State::SynReceived) {
        let lowat = s.opts.lowat();
        if t.is_some_and(|t| t.recv_queue() >= lowat) {
            m |= ev::IN | ev::RDNORM;
        }
        if !s.shut_wr {
            let writable = match t {
                Some(t) if !s.closed => {
                    let free = t.send_capacity().min(send_cap(&s.opts)).saturating_sub(t.send_queue());
                    free > 0 && free * 2 >= t.send_queue()
                }
                _ => true,
            };
            if writable {
                m |= ev::OUT | ev::WRNORM;
            }
        } else {
            m |= ev::OUT | ev::WRNORM;
        }
    }
    if s.err.is_some() {
        m |= ev::ERR;
    }
    m
}

/// With several `SO_REUSEPORT` listeners on one queue, which connections this one takes:
/// spread by connection (Linux spreads by a hash of the 4-tuple).
fn reuseport_pick(g: &Inner, l: ShardId, me: usize) -> impl Fn(IpEndpoint) -> bool {
    let (k, j) = match g.by_shard.get(&l) {
        Some(v) if v.len() > 1 => (v.len(), v.iter().position(|&x| x == me).unwrap_or(0)),
        _ => (1, 0),
    };
    move |remote: IpEndpoint| usize::from(remote.port) % k == j
}

/// Bytes waiting to be read (TCP) or datagrams queued (UDP), for edge detection.
pub(crate) fn rx_level(g: &Inner, id: usize) -> usize {
    let Ok(s) = g.sock(id) else { return 0 };
    let Some(c) = s.shard else { return 0 };
    match s.kind {
        Kind::Stream => g.stack.tcp(c).map(|t| t.recv_queue()).unwrap_or(0),
        Kind::Dgram => g.stack.udp_table().queued(c),
    }
}

/// Bytes waiting to go out (TCP), for wake-ups of blocked senders.
pub(crate) fn tx_level(g: &Inner, id: usize) -> usize {
    let Ok(s) = g.sock(id) else { return 0 };
    let Some(c) = s.shard else { return 0 };
    match s.kind {
        Kind::Stream => g.stack.tcp(c).map(|t| t.send_queue()).unwrap_or(0),
        // Datagrams leave at once (see `pending_out`).
        Kind::Dgram => 0,
    }
}

/// An ICMP port unreachable for our UDP `port` from `remote`: Linux reports it
/// (`ECONNREFUSED`) only to a socket connected to that peer. Returns the socket.
pub(crate) fn udp_refused(g: &mut Inner, port: u16, remote: IpEndpoint) -> Option<usize> {
    let id = g.socks.iter().position(|s| {
        s.as_ref().is_some_and(|s| {
            s.kind == Kind::Dgram
                && s.local.is_some_and(|l| l.port() == port)
                && s.peer.is_some_and(|p| endpoint(&p) == remote)
        })
    })?;
    g.sock_mut(id).ok()?.err = Some(Errno::ECONNREFUSED);
    Some(id)
}

/// Registers a watcher on a socket.
pub(crate) fn watch(g: &mut Inner, id: usize, w: Watcher) {
    if let Ok(ws) = g.watchers_mut(id) {
        ws.retain(|x| !x.abandoned());
        if !ws.contains(&w) {
            ws.push(w);
        }
    }
}

/// Removes a watcher from a socket.
pub(crate) fn unwatch(g: &mut Inner, id: usize, w: &Watcher) {
    if let Ok(ws) = g.watchers_mut(id) {
        ws.retain(|x| x != w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(fam: Family) -> SockState {
        SockState::new(fam, Kind::Dgram, Arc::new(Wait::default()))
    }

    fn set(s: &mut SockState, level: i32, name: i32, v: i32) {
        s.opts.other.insert((level, name), v.to_ne_bytes().to_vec());
    }

    #[test]
    fn send_control_overrides_the_socket_options_as_linux_checks_them() {
        let mut s = state(Family::V6);
        assert_eq!(tx_params(&s.opts, false, &[]).unwrap(), Tx { hop_limit: 64, tos: 0 });
        set(&mut s, IPPROTO_IPV6, IPV6_UNICAST_HOPS, 9);
        set(&mut s, IPPROTO_IPV6, IPV6_TCLASS, 0x10);
        let keep = [Cmsg::int(IPPROTO_IPV6, IPV6_HOPLIMIT, -1), Cmsg::int(IPPROTO_IPV6, IPV6_TCLASS, -1)];
        assert_eq!(tx_params(&s.opts, false, &keep).unwrap(), Tx { hop_limit: 9, tos: 0x10 });
        let over = [Cmsg::int(IPPROTO_IPV6, IPV6_HOPLIMIT, 3), Cmsg::int(IPPROTO_IPV6, IPV6_TCLASS, 0x20)];
        assert_eq!(tx_params(&s.opts, false, &over).unwrap(), Tx { hop_limit: 3, tos: 0x20 });
        // IPv6 messages mean nothing on the IPv4 path (a v4-mapped destination), and back.
        assert_eq!(tx_params(&s.opts, true, &over).unwrap().hop_limit, 64);
        assert_eq!(tx_params(&s.opts, false, &[Cmsg::int(IPPROTO_IP, IP_TTL, 0)]).unwrap().hop_limit, 9);
        for bad in [
            Cmsg::int(IPPROTO_IPV6, IPV6_HOPLIMIT, 256),
            Cmsg::int(IPPROTO_IPV6, 99, 1),
            Cmsg { level: IPPROTO_IPV6, ty: IPV6_TCLASS, data: vec![1] },
            Cmsg::int(SOL_SOCKET, SO_TIMESTAMP, 1),
        ] {
            assert_eq!(tx_params(&s.opts, false, std::slice::from_ref(&bad)), Err(Errno::EINVAL), "{bad:?}");
        }
        let v4 = state(Family::V4).opts;
        let tos1 = Cmsg { level: IPPROTO_IP, ty: IP_TOS, data: vec![0x28] };
        assert_eq!(
            tx_params(&v4, true, &[tos1, Cmsg::int(IPPROTO_IP, IP_TTL, 5)]).unwrap(),
            Tx { hop_limit: 5, tos: 0x28 }
        );
        assert_eq!(tx_params(&v4, true, &[Cmsg::int(IPPROTO_IP, IP_TTL, 0)]), Err(Errno::EINVAL));
        assert_eq!(tx_params(&v4, true, &[Cmsg::int(IPPROTO_TCP, 1, 1)]).unwrap().hop_limit, 64);
    }

    #[test]
    fn tcp_quickack_turns_the_ack_delay_off_until_cleared() {
        let ten = Some(smoltcp::time::Duration::from_millis(10));
        assert_eq!(ack_delay(None, ten), ten, "the stack's delay by default");
        assert_eq!(ack_delay(Some(&1i32.to_ne_bytes()), ten), None);
        assert_eq!(ack_delay(Some(&0i32.to_ne_bytes()), ten), ten, "cleared");
        assert_eq!(ack_delay(None, None), None, "no delay over the loopback");
    }

    #[test]
    fn receive_control_messages_come_in_linux_order() {
        let d = Datagram {
            data: b"x".to_vec(),
            src: IpEndpoint::new(IpAddress::v4(127, 0, 0, 1), 9),
            dst: IpAddress::v4(127, 0, 0, 1),
            hop_limit: 7,
            tos: 4,
            stamp: std::time::UNIX_EPOCH + Duration::from_micros(1_500_000),
        };
        let mut s = state(Family::V6);
        assert!(recv_cmsgs(&s, &d).is_empty());
        s.opts.timestamp = Some(false);
        set(&mut s, IPPROTO_IPV6, IPV6_RECVPKTINFO, 1);
        set(&mut s, IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1);
        set(&mut s, IPPROTO_IP, IP_RECVTTL, 1);
        let got: Vec<(i32, i32)> = recv_cmsgs(&s, &d).iter().map(|c| (c.level, c.ty)).collect();
        // An IPv4 packet on an IPv6 socket: IPV6_PKTINFO (v4-mapped), then the IPv4 ones.
        assert_eq!(got, [(SOL_SOCKET, SO_TIMESTAMP), (IPPROTO_IPV6, IPV6_PKTINFO), (IPPROTO_IP, IP_TTL)]);
        let ts = &recv_cmsgs(&s, &d)[0].data;
        assert_eq!((ts[0], ts[8], ts[9]), (1, 0x20, 0xa1), "1 s and 500000 µs");
        let pkt = &recv_cmsgs(&s, &d)[1].data;
        assert_eq!(&pkt[10..16], &[0xff, 0xff, 127, 0, 0, 1]);
        let d6 = Datagram { dst: IpAddress::v6(0, 0, 0, 0, 0, 0, 0, 1), ..d };
        let got: Vec<(i32, i32)> = recv_cmsgs(&s, &d6).iter().map(|c| (c.level, c.ty)).collect();
        assert_eq!(
            got,
            [(SOL_SOCKET, SO_TIMESTAMP), (IPPROTO_IPV6, IPV6_PKTINFO), (IPPROTO_IPV6, IPV6_HOPLIMIT)]
        );
    }
}
