//! A smoltcp stack with O(1) demultiplexing and a listen backlog.
//!
//! smoltcp scans its `SocketSet` for every packet and has no listen backlog (a listening
//! socket *becomes* the connection on SYN). Here every connection lives in its own small
//! `SocketSet`, a *shard*, and the stack keeps its own index: 4-tuple → connection shard,
//! local port → listener shard. Each incoming TCP packet is routed to one shard and handed to
//! `Interface::poll_ingress_single` through a one-frame view of the device; a packet nobody
//! owns goes to an always-empty shard, so smoltcp answers it as Linux would (RST for TCP,
//! ICMP port unreachable for UDP). UDP does not use smoltcp's socket: a UDP socket is a shard
//! without smoltcp sockets whose state, lookup and wire format live in [`super::udp`]; its
//! datagrams are delivered to its queue at ingress and written to the device when sent. Egress runs only for shards marked dirty (the application wrote, a packet
//! arrived, a timer is due); timers sit in a min-heap.
//!
//! A listener shard holds one LISTEN socket. When a SYN turns it into a connection, the
//! socket moves to a shard of its own, joins the listener's queue for `accept`, and a fresh
//! LISTEN socket takes its place. While the queue holds `backlog` connections, SYNs to the
//! port are dropped (the client retransmits), as Linux does — never reset.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use arrakis_backends::NetDevice;
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{
    HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint, IpProtocol, TcpPacket,
};

use super::hash::{FastMap as HashMap, FastSet as HashSet};
use super::tuple::FlowKey;
use super::udp::{Datagram, Frame, Out, Table, Tx};
use crate::error::{Errno, SysResult};

/// Names a shard (a connection, a listener or a UDP socket) within its stack.
pub type ShardId = usize;

/// First and last ephemeral port, as Linux's default `ip_local_port_range`.
pub const EPHEMERAL: (u16, u16) = (32768, 60999);

/// The local ports a stack picks from for `connect` and `bind` to port 0, per protocol:
/// Linux's range by default; over the emulator's NIC, the blocks the daemon gave the
/// container (`NicInfo::tcp_ports`/`udp_ports`), the only ports the switch lets it send from
/// without a grant of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ephemeral {
    /// First and last TCP port.
    pub tcp: (u16, u16),
    /// First and last UDP port.
    pub udp: (u16, u16),
}

impl Default for Ephemeral {
    fn default() -> Self {
        Ephemeral { tcp: EPHEMERAL, udp: EPHEMERAL }
    }
}

impl Ephemeral {
    /// Ranges from two inclusive blocks; `None` if a block is empty, reversed or includes 0.
    pub fn new(tcp: (u16, u16), udp: (u16, u16)) -> Option<Ephemeral> {
        let ok = |(lo, hi): (u16, u16)| lo != 0 && lo <= hi;
        (ok(tcp) && ok(udp)).then_some(Ephemeral { tcp, udp })
    }

    /// Whether `port` is one of the TCP (`tcp`) or UDP block's ports.
    pub fn contains(&self, tcp: bool, port: u16) -> bool {
        let (lo, hi) = if tcp { self.tcp } else { self.udp };
        (lo..=hi).contains(&port)
    }
}

/// How long a closed connection's port stays in TIME-WAIT (Linux: 60 s).
const TIME_WAIT: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(60);

/// Settings every new TCP socket of the stack gets (listeners' replacements included).
#[derive(Clone, Copy, Debug)]
pub struct Buffers {
    /// TCP receive buffer, bytes.
    pub tcp_rx: usize,
    /// TCP send buffer, bytes.
    pub tcp_tx: usize,
    /// Nagle's algorithm (Linux: on unless `TCP_NODELAY`).
    pub nagle: bool,
    /// Delayed-ACK timer; `None` acknowledges at once.
    pub ack_delay: Option<smoltcp::time::Duration>,
}

impl Default for Buffers {
    fn default() -> Self {
        Buffers {
            tcp_rx: 64 * 1024,
            tcp_tx: 64 * 1024,
            nagle: true,
            ack_delay: Some(smoltcp::time::Duration::from_millis(10)),
        }
    }
}

enum Role {
    /// Receives what no one else owns; always empty.
    Spare,
    Conn {
        handle: SocketHandle,
        local: IpEndpoint,
        remote: IpEndpoint,
        /// The listener whose accept queue holds it, until it is accepted.
        owner: Option<ShardId>,
    },
    Listener {
        port: u16,
        handle: SocketHandle,
        backlog: usize,
        queue: VecDeque<ShardId>,
        /// Receive buffer of the connections it makes (`None`: the stack's default).
        rx: Option<usize>,
    },
    /// A UDP socket (its state is in the stack's [`Table`]).
    Udp,
}

struct Shard {
    set: SocketSet<'static>,
    role: Role,
    dirty: bool,
    /// The earliest entry of this shard in the timer heap not yet due, if any: a later
    /// deadline needs no entry of its own (the earlier one fires, egress re-arms).
    timer: Option<Instant>,
    /// The application let go of it (closed its fd); the stack removes it once its socket
    /// reaches CLOSED — after sending what was queued, the FIN handshake and TIME-WAIT.
    orphan: bool,
    /// Its socket had `SO_REUSEADDR` (kept by the TIME-WAIT it leaves behind).
    reuse: bool,
}

/// A network stack over one device.
pub struct Stack<D: NetDevice> {
    iface: Interface,
    dev: D,
    caps: DeviceCapabilities,
    shards: Vec<Option<Shard>>,
    free: Vec<ShardId>,
    spare: ShardId,
    conns: HashMap<(IpEndpoint, IpEndpoint), ShardId>,
    /// Listener shards by (port, IPv6): a dual-stack listener is under both keys, so IPv4
    /// and IPv6 listeners can share a port as Linux's `IPV6_V6ONLY` allows.
    listeners: HashMap<(u16, bool), ShardId>,
    udp: Table,
    dirty: Vec<ShardId>,
    /// `dirty`'s other buffer, swapped in while egress walks the list.
    dirty_spare: Vec<ShardId>,
    /// Shards whose state may have changed since [`Stack::take_touched`] last ran.
    touched: Vec<ShardId>,
    timers: BinaryHeap<Reverse<(Instant, ShardId)>>,
    /// Where local ports for `connect` and `bind` to port 0 come from.
    ephemeral: Ephemeral,
    next_port: u16,
    /// Rotates UDP ephemeral ports (a freed port is not handed out again at once).
    next_udp: u32,
    /// Local ports taken by connections this stack opened.
    ephemeral_in_use: HashSet<u16>,
    buffers: Buffers,
    /// Closed TCP sockets with the default buffers, kept for the next connection: making
    /// 2 × 256 KiB of zeroed buffers per connection was most of a short connection's cost.
    pool: Vec<tcp::Socket<'static>>,
    /// Local ports of connections that ended in TIME-WAIT after their fd was closed, with the
    /// end of that period, oldest first; and how many such connections hold each port.
    time_wait: VecDeque<(Instant, u16, bool)>,
    /// Ports in TIME-WAIT: how many entries, and how many of them without `SO_REUSEADDR`.
    tw_ports: HashMap<u16, (usize, usize)>,
    /// ICMP "port unreachable" reports received: (our UDP port, the peer that refused).
    pub icmp_errors: Vec<(u16, IpEndpoint)>,
    /// SYNs dropped because a listener's queue was full.
    pub syns_dropped: u64,
}

/// The device seen by smoltcp for one incoming packet: the packet, and the transmit token
/// paired with it for an immediate reply (an ACK, a RST).
struct OneFrame<'f, T> {
    frame: Option<&'f [u8]>,
    tx: Option<T>,
    caps: DeviceCapabilities,
}

struct SliceRx<'f>(&'f [u8]);

impl phy::RxToken for SliceRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl<'f, T: phy::TxToken> phy::Device for OneFrame<'f, T> {
    type RxToken<'a>
        = SliceRx<'f>
    where
        Self: 'a;
    type TxToken<'a>
        = T
    where
        Self: 'a;

    fn receive(&mut self, _now: Instant) -> Option<(SliceRx<'f>, T)> {
        Some((SliceRx(self.frame.take()?), self.tx.take()?))
    }

    fn transmit(&mut self, _now: Instant) -> Option<T> {
        None
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

impl<D: NetDevice> Stack<D> {
    /// A stack on `dev` with the given local addresses.
    pub fn new(dev: D, addrs: &[IpCidr], now: Instant, buffers: Buffers) -> Stack<D> {
        let seed = now.total_micros() as u64 ^ u64::from(std::process::id());
        Self::with_seed(dev, addrs, now, buffers, seed)
    }

    /// As [`Stack::new`] with a fixed seed for initial sequence numbers (deterministic tests).
    pub fn with_seed(mut dev: D, addrs: &[IpCidr], now: Instant, buffers: Buffers, seed: u64) -> Stack<D> {
        let caps = dev.capabilities();
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut dev, now);
        iface.update_ip_addrs(|a| {
            for cidr in addrs {
                // The address list is bounded; extra addresses are ignored.
                let _ = a.push(*cidr);
            }
        });
        let mut stack = Stack {
            iface,
            dev,
            caps,
            shards: Vec::new(),
            free: Vec::new(),
            spare: 0,
            conns: HashMap::default(),
            listeners: HashMap::default(),
            udp: Table::new(seed),
            dirty: Vec::new(),
            dirty_spare: Vec::new(),
            touched: Vec::new(),
            time_wait: VecDeque::new(),
            tw_ports: HashMap::default(),
            timers: BinaryHeap::new(),
            ephemeral: Ephemeral::default(),
            next_port: EPHEMERAL.0,
            next_udp: (seed as u32) % 28_232,
            ephemeral_in_use: HashSet::default(),
            buffers,
            pool: Vec::new(),
            icmp_errors: Vec::new(),
            syns_dropped: 0,
        };
        stack.spare = stack.insert(SocketSet::new(vec![]), Role::Spare);
        stack
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// The device, mutably (tests inject frames through it).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    /// The ephemeral port ranges.
    pub fn ephemeral(&self) -> Ephemeral {
        self.ephemeral
    }

    /// Sets the ephemeral port ranges (before the first socket: ports already handed out
    /// stay where they are).
    pub fn set_ephemeral(&mut self, e: Ephemeral) {
        self.ephemeral = e;
        self.next_port = e.tcp.0;
    }

    /// As [`Stack::set_ephemeral`], the first TCP port taken from somewhere in the range
    /// chosen by `seed`: a process that gets a block another process just gave back must not
    /// start with the 4-tuples whose peers may still hold that process's connections.
    pub fn set_ephemeral_seeded(&mut self, e: Ephemeral, seed: u64) {
        self.set_ephemeral(e);
        let (lo, hi) = e.tcp;
        let span = u64::from(hi - lo) + 1;
        self.next_port = lo + (seed % span) as u16;
    }

    /// Settings for sockets created from now on.
    pub fn defaults_mut(&mut self) -> &mut Buffers {
        &mut self.buffers
    }

    fn insert(&mut self, set: SocketSet<'static>, role: Role) -> ShardId {
        let shard = Shard { set, role, dirty: false, timer: None, orphan: false, reuse: false };
        match self.free.pop() {
            Some(id) => {
                self.shards[id] = Some(shard);
                id
            }
            None => {
                self.shards.push(Some(shard));
                self.shards.len() - 1
            }
        }
    }

    fn shard_mut(&mut self, id: ShardId) -> SysResult<&mut Shard> {
        self.shards.get_mut(id).and_then(Option::as_mut).ok_or(Errno::EBADF)
    }

    fn new_tcp(&mut self) -> tcp::Socket<'static> {
        self.new_tcp_rx(None)
    }

    /// A TCP socket whose receive buffer (hence advertised window) is `rx` bytes.
    fn new_tcp_rx(&mut self, rx: Option<usize>) -> tcp::Socket<'static> {
        let rx = rx.map_or(self.buffers.tcp_rx, |n| n.clamp(1024, self.buffers.tcp_rx));
        if rx == self.buffers.tcp_rx {
            if let Some(mut s) = self.pool.pop() {
                // listen/connect reset the connection state and empty the buffers; the
                // settings a socket carries across connections go back to the defaults.
                s.set_nagle_enabled(self.buffers.nagle);
                s.set_ack_delay(self.buffers.ack_delay);
                s.set_keep_alive(None);
                s.set_timeout(None);
                s.set_hop_limit(None);
                return s;
            }
        }
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; rx]),
            tcp::SocketBuffer::new(vec![0; self.buffers.tcp_tx]),
        );
        s.set_nagle_enabled(self.buffers.nagle);
        s.set_ack_delay(self.buffers.ack_delay);
        s
    }

    fn mark_dirty(&mut self, id: ShardId) {
        if let Some(Some(s)) = self.shards.get_mut(id) {
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// Listens for TCP connections on `port` (all local addresses, IPv4 and IPv6).
    /// `EADDRINUSE` if the port has a listener already.
    pub fn listen(&mut self, port: u16, backlog: usize) -> SysResult<ShardId> {
        self.listen_on(port, backlog, true, true)
    }

    /// Listens on `port` for IPv4 connections, IPv6 ones, or both. `EADDRINUSE` if a
    /// listener already takes either.
    pub fn listen_on(&mut self, port: u16, backlog: usize, v4: bool, v6: bool) -> SysResult<ShardId> {
        let taken = (v4 && self.listeners.contains_key(&(port, false)))
            || (v6 && self.listeners.contains_key(&(port, true)));
        if port == 0 || taken || !(v4 || v6) {
            return Err(Errno::EADDRINUSE);
        }
        let mut sock = self.new_tcp();
        sock.listen(port).map_err(|_| Errno::EINVAL)?;
        let mut set = SocketSet::new(vec![]);
        let handle = set.add(sock);
        let backlog = backlog.clamp(1, 4097);
        let id = self.insert(set, Role::Listener { port, handle, backlog, queue: VecDeque::new(), rx: None });
        if v4 {
            self.listeners.insert((port, false), id);
        }
        if v6 {
            self.listeners.insert((port, true), id);
        }
        Ok(id)
    }

    /// As [`Stack::accept`], only among connections `pick` accepts.
    pub fn accept_where(
        &mut self,
        listener: ShardId,
        pick: impl Fn(IpEndpoint) -> bool,
    ) -> SysResult<Option<ShardId>> {
        let Role::Listener { queue, .. } =
            &self.shards.get(listener).and_then(Option::as_ref).ok_or(Errno::EBADF)?.role
        else {
            return Err(Errno::EINVAL);
        };
        let ok = |id: &ShardId| {
            self.endpoints(*id).is_some_and(|(_, r)| pick(r))
                && self
                    .tcp(*id)
                    .is_ok_and(|s| !matches!(s.state(), tcp::State::SynReceived | tcp::State::Listen))
        };
        let Some(pos) = queue.iter().position(ok) else { return Ok(None) };
        let Role::Listener { queue, .. } = &mut self.shard_mut(listener)?.role else {
            return Err(Errno::EINVAL);
        };
        let conn = queue.remove(pos);
        if let Some(Some(Some(Shard { role: Role::Conn { owner, .. }, .. }))) =
            conn.map(|c| self.shards.get_mut(c))
        {
            *owner = None;
        }
        Ok(conn)
    }

    /// Whether [`Stack::accept_where`] would find a connection.
    pub fn acceptable_where(&self, listener: ShardId, pick: impl Fn(IpEndpoint) -> bool) -> bool {
        match &self.shards.get(listener).and_then(Option::as_ref).map(|s| &s.role) {
            Some(Role::Listener { queue, .. }) => queue.iter().any(|id| {
                self.endpoints(*id).is_some_and(|(_, r)| pick(r))
                    && self
                        .tcp(*id)
                        .is_ok_and(|s| !matches!(s.state(), tcp::State::SynReceived | tcp::State::Listen))
            }),
            _ => false,
        }
    }

    /// Takes the next established connection from a listener's queue (Linux's accept queue
    /// holds only connections that finished their handshake).
    pub fn accept(&mut self, listener: ShardId) -> SysResult<Option<ShardId>> {
        let Role::Listener { queue, .. } =
            &self.shards.get(listener).and_then(Option::as_ref).ok_or(Errno::EBADF)?.role
        else {
            return Err(Errno::EINVAL);
        };
        let established = |id: &ShardId| {
            self.tcp(*id).is_ok_and(|s| !matches!(s.state(), tcp::State::SynReceived | tcp::State::Listen))
        };
        let Some(pos) = queue.iter().position(established) else { return Ok(None) };
        let Role::Listener { queue, .. } = &mut self.shard_mut(listener)?.role else {
            return Err(Errno::EINVAL);
        };
        let conn = queue.remove(pos);
        if let Some(Some(Some(Shard { role: Role::Conn { owner, .. }, .. }))) =
            conn.map(|c| self.shards.get_mut(c))
        {
            *owner = None;
        }
        Ok(conn)
    }

    /// A free ephemeral port for a connection: not listening, not another connection's, and
    /// not `taken` (bound by a socket the stack does not see: `inet_hash_connect` skips a
    /// port that `bind` holds, or a connection to a bound-but-idle port would get that very
    /// port and connect to itself).
    fn ephemeral_port(&mut self, taken: &dyn Fn(u16) -> bool) -> SysResult<u16> {
        let (lo, hi) = self.ephemeral.tcp;
        let span = u32::from(hi - lo) + 1;
        for _ in 0..span {
            let p = self.next_port.clamp(lo, hi);
            self.next_port = if p >= hi { lo } else { p + 1 };
            if !self.listening(p) && !taken(p) && self.ephemeral_in_use.insert(p) {
                return Ok(p);
            }
        }
        // Linux's connect with every local port taken (`inet_hash_connect`).
        Err(Errno::EADDRNOTAVAIL)
    }

    /// The first connection in a listener's queue, established or not.
    pub fn pending(&self, listener: ShardId) -> Option<ShardId> {
        match &self.shards.get(listener)?.as_ref()?.role {
            Role::Listener { queue, .. } => queue.front().copied(),
            _ => None,
        }
    }

    /// Opens a TCP connection to `remote` from an ephemeral port.
    pub fn connect(&mut self, remote: IpEndpoint) -> SysResult<ShardId> {
        self.connect_from(None, remote)
    }

    /// Opens a TCP connection to `remote` from `local_port` (an ephemeral one if `None`).
    pub fn connect_from(&mut self, local_port: Option<u16>, remote: IpEndpoint) -> SysResult<ShardId> {
        self.connect_sized(local_port, remote, None, &|_| false)
    }

    /// [`Stack::connect_from`] with a receive buffer of `rx` bytes (`SO_RCVBUF`); an ephemeral
    /// port is never one `taken` says a `bind` holds.
    pub fn connect_sized(
        &mut self,
        local_port: Option<u16>,
        remote: IpEndpoint,
        rx: Option<usize>,
        taken: &dyn Fn(u16) -> bool,
    ) -> SysResult<ShardId> {
        let port = match local_port {
            Some(p) if p != 0 => {
                if self.listening(p) || !self.ephemeral_in_use.insert(p) {
                    return Err(Errno::EADDRINUSE);
                }
                p
            }
            _ => self.ephemeral_port(taken)?,
        };
        let mut sock = self.new_tcp_rx(rx);
        if let Err(e) = sock.connect(self.iface.context(), remote, IpListenEndpoint { addr: None, port }) {
            self.ephemeral_in_use.remove(&port);
            return Err(match e {
                tcp::ConnectError::Unaddressable => Errno::ENETUNREACH,
                tcp::ConnectError::InvalidState => Errno::EINVAL,
            });
        }
        let local = sock.local_endpoint().ok_or(Errno::EINVAL)?;
        let mut set = SocketSet::new(vec![]);
        let handle = set.add(sock);
        let id = self.insert(set, Role::Conn { handle, local, remote, owner: None });
        self.conns.insert((local, remote), id);
        self.mark_dirty(id);
        Ok(id)
    }

    /// The TCP socket of a connection shard. Using it mutably marks the shard for egress.
    pub fn tcp_mut(&mut self, id: ShardId) -> SysResult<&mut tcp::Socket<'static>> {
        self.mark_dirty(id);
        let shard = self.shard_mut(id)?;
        match shard.role {
            Role::Conn { handle, .. } => Ok(shard.set.get_mut::<tcp::Socket>(handle)),
            _ => Err(Errno::ENOTCONN),
        }
    }

    /// Connection shards.
    fn conn_ids(&self) -> Vec<ShardId> {
        let conn = |s: &Option<Shard>| s.as_ref().is_some_and(|s| matches!(s.role, Role::Conn { .. }));
        (0..self.shards.len()).filter(|&i| conn(&self.shards[i])).collect()
    }

    /// The process exits: every connection ends as the kernel's `close` of its last fd would
    /// — a FIN after what was queued, a RST if data was left unread. Returns how many.
    pub fn exit_close(&mut self) -> usize {
        let ids = self.conn_ids();
        for &id in &ids {
            let Ok(t) = self.tcp_mut(id) else { continue };
            if t.recv_queue() > 0 {
                t.abort();
            } else {
                t.close();
            }
        }
        ids.len()
    }

    /// Connections still waiting for their peer (the exchange of FINs not over): TIME-WAIT
    /// and CLOSED ones are done.
    pub fn exit_pending(&self) -> usize {
        self.conn_ids()
            .into_iter()
            .filter(|&id| {
                self.tcp(id).is_ok_and(|t| !matches!(t.state(), tcp::State::Closed | tcp::State::TimeWait))
            })
            .count()
    }

    /// Resets the connections [`Stack::exit_pending`] counts: the process is about to go and
    /// nobody will answer for them, so the peers must not keep their state.
    pub fn exit_abort(&mut self) {
        for id in self.conn_ids() {
            let Ok(t) = self.tcp_mut(id) else { continue };
            if !matches!(t.state(), tcp::State::Closed | tcp::State::TimeWait) {
                t.abort();
            }
        }
    }

    /// The TCP socket of a connection shard, read-only.
    pub fn tcp(&self, id: ShardId) -> SysResult<&tcp::Socket<'static>> {
        let shard = self.shards.get(id).and_then(Option::as_ref).ok_or(Errno::EBADF)?;
        match shard.role {
            Role::Conn { handle, .. } => Ok(shard.set.get::<tcp::Socket>(handle)),
            _ => Err(Errno::ENOTCONN),
        }
    }

    /// The application is done with a shard (it closed the fd), as Linux's `close`: a
    /// connection goes on sending what was queued, then FIN, and is removed by the stack
    /// when it reaches CLOSED; a listener (resetting the connections nobody accepted) and a
    /// UDP socket go at once.
    pub fn release(&mut self, id: ShardId) -> SysResult<()> {
        let shard = self.shard_mut(id)?;
        let Role::Conn { handle, .. } = shard.role else { return self.remove(id) };
        let sock = shard.set.get_mut::<tcp::Socket>(handle);
        if sock.state() == tcp::State::Closed {
            return self.remove(id);
        }
        sock.close();
        shard.orphan = true;
        self.mark_dirty(id);
        Ok(())
    }

    /// Keeps a finished connection's socket (and its buffers) for the next one. It is out of
    /// every socket set, so nothing it still had to send goes out.
    fn recycle(&mut self, s: smoltcp::socket::Socket<'static>) {
        const POOL: usize = 64;
        let smoltcp::socket::Socket::Tcp(mut t) = s else { return };
        let default = t.recv_capacity() == self.buffers.tcp_rx && t.send_capacity() == self.buffers.tcp_tx;
        if default && self.pool.len() < POOL {
            t.abort();
            self.pool.push(t);
        }
    }

    /// Shards alive (connections, listeners, UDP sockets and the spare one).
    pub fn live_shards(&self) -> usize {
        self.shards.iter().flatten().count()
    }

    /// Removes a shard for good (after its socket reached CLOSED, or for a listener).
    pub fn remove(&mut self, id: ShardId) -> SysResult<()> {
        let mut shard = self.shards.get_mut(id).and_then(Option::take).ok_or(Errno::EBADF)?;
        match shard.role {
            Role::Conn { local, remote, handle, .. } => {
                self.conns.remove(&(local, remote));
                self.ephemeral_in_use.remove(&local.port);
                self.recycle(shard.set.remove(handle));
            }
            Role::Listener { port, queue, .. } => {
                for v6 in [false, true] {
                    if self.listeners.get(&(port, v6)) == Some(&id) {
                        self.listeners.remove(&(port, v6));
                    }
                }
                // Connections nobody accepted are reset, as Linux does on close(listener),
                // and reaped once the reset is out.
                for c in queue {
                    if let Ok(s) = self.tcp_mut(c) {
                        s.abort();
                    }
                    if let Some(Some(shard)) = self.shards.get_mut(c) {
                        shard.orphan = true;
                    }
                }
            }
            Role::Udp => self.udp.close(id),
            Role::Spare => return Err(Errno::EINVAL),
        }
        self.free.push(id);
        Ok(())
    }

    /// A new UDP socket (unbound; `v6` for `AF_INET6`).
    pub fn udp_open(&mut self, v6: bool) -> ShardId {
        let id = self.insert(SocketSet::new(vec![]), Role::Udp);
        self.udp.open(id, v6);
        id
    }

    /// The UDP sockets.
    pub fn udp_table(&self) -> &Table {
        &self.udp
    }

    /// The UDP sockets, mutably.
    pub fn udp_table_mut(&mut self) -> &mut Table {
        &mut self.udp
    }

    /// Takes the next datagram of UDP socket `id`. The socket counts as touched, so its
    /// readiness and queue level are brought up to date after the call (the next arrival is
    /// then an edge for its watchers).
    pub fn udp_pop(&mut self, id: ShardId) -> Option<Datagram> {
        self.touched.push(id);
        self.udp.pop(id)
    }

    /// Sends a UDP datagram from socket `id` (bound) with source address `src`: written to
    /// the device at once, in IPv6 fragments if it exceeds the MTU (as `ip6_fragment`). A
    /// device that refuses a frame loses it, as a full `netif_rx` backlog does on Linux.
    pub fn udp_send(
        &mut self,
        id: ShardId,
        src: IpAddress,
        dst: IpEndpoint,
        tx: Tx,
        payload: &[u8],
        now: Instant,
    ) -> SysResult<()> {
        let port = self.udp.port(id);
        if port == 0 {
            return Err(Errno::EINVAL);
        }
        let out = Out { src: IpEndpoint::new(src, port), dst, tx, payload };
        let pieces = out.pieces(self.dev.max_frame());
        let ident = if pieces.len() > 1 { self.udp.next_ident() } else { 0 };
        for piece in pieces {
            let Some(token) = self.dev.transmit(now) else { break };
            phy::TxToken::consume(token, out.frame_len(piece), |buf| out.write(piece, ident, buf));
        }
        self.touched.push(id);
        Ok(())
    }

    /// After a packet reached a listener: if its LISTEN socket became a connection, move it
    /// to a shard of its own, queue it for accept, and listen again.
    fn after_listener_ingress(&mut self, id: ShardId) {
        let Some(Some(shard)) = self.shards.get_mut(id) else { return };
        let Role::Listener { port, handle, rx, .. } = shard.role else { return };
        let sock = shard.set.get::<tcp::Socket>(handle);
        if sock.state() == tcp::State::Listen {
            return;
        }
        let (Some(local), Some(remote)) = (sock.local_endpoint(), sock.remote_endpoint()) else { return };
        let taken = shard.set.remove(handle);
        let mut fresh = self.new_tcp_rx(rx);
        // Listening again on the same port cannot fail: it just succeeded.
        let _ = fresh.listen(port);
        let mut set = SocketSet::new(vec![]);
        let conn_handle = set.add(taken);
        let conn = self.insert(set, Role::Conn { handle: conn_handle, local, remote, owner: Some(id) });
        self.conns.insert((local, remote), conn);
        self.mark_dirty(conn);
        if let Some(Some(shard)) = self.shards.get_mut(id) {
            let new_handle = shard.set.add(fresh);
            if let Role::Listener { handle, queue, .. } = &mut shard.role {
                *handle = new_handle;
                queue.push_back(conn);
            }
        }
    }

    /// Runs the stack at time `now` until it is quiet: every waiting packet in, every dirty or
    /// due shard out (on loopback, what one shard sends is the next round's ingress). Returns
    /// true if anything happened.
    pub fn poll(&mut self, now: Instant) -> bool {
        /// Rounds of ingress + egress per call; a loopback exchange needs a few.
        const ROUNDS: usize = 64;
        let mut progress = false;
        while let Some(&(end, port, reuse)) = self.time_wait.front() {
            if end > now {
                break;
            }
            self.time_wait.pop_front();
            if let Some(n) = self.tw_ports.get_mut(&port) {
                n.0 -= 1;
                if !reuse {
                    n.1 -= 1;
                }
                if n.0 == 0 {
                    self.tw_ports.remove(&port);
                }
            }
        }
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if let Some(Some(s)) = self.shards.get_mut(id) {
                if s.timer == Some(at) {
                    s.timer = None;
                }
            }
            self.mark_dirty(id);
        }
        for _ in 0..ROUNDS {
            let mut any = self.ingress(now);
            any |= self.egress(now);
            progress |= any;
            if !any {
                break;
            }
        }
        progress
    }

    fn ingress(&mut self, now: Instant) -> bool {
        let mut any = false;
        loop {
            let Stack {
                iface,
                dev,
                caps,
                shards,
                conns,
                listeners,
                udp,
                spare,
                syns_dropped,
                icmp_errors,
                ..
            } = self;
            let Some((rx, tx)) = dev.receive(now) else { break };
            any = true;
            let routed = phy::RxToken::consume(rx, |frame| {
                if let Some(e) = port_unreachable(frame) {
                    icmp_errors.push(e);
                }
                let whole;
                let frame = match super::udp::classify(frame) {
                    Frame::Fragment => {
                        whole = udp.reassemble(frame, now)?;
                        &whole[..]
                    }
                    _ => frame,
                };
                if let Frame::Udp(p) = super::udp::classify(frame) {
                    if let Some(id) = udp.lookup(p.src, p.dst) {
                        let d = Datagram {
                            data: p.payload.to_vec(),
                            src: p.src,
                            dst: p.dst.addr,
                            hop_limit: p.hop_limit,
                            tos: p.tos,
                            stamp: std::time::SystemTime::now(),
                        };
                        udp.deliver(id, d);
                        return Some(id);
                    }
                }
                let id = route(frame, conns, listeners, shards, *spare, syns_dropped)?;
                let shard = shards.get_mut(id)?.as_mut()?;
                let mut one = OneFrame { frame: Some(frame), tx: Some(tx), caps: caps.clone() };
                iface.poll_ingress_single(now, &mut one, &mut shard.set);
                Some(id)
            });
            if let Some(id) = routed {
                self.touched.push(id);
                if let Some(Some(Shard { role: Role::Conn { owner: Some(l), .. }, .. })) = self.shards.get(id)
                {
                    self.touched.push(*l);
                }
                if matches!(self.shards[id].as_ref().map(|s| &s.role), Some(Role::Listener { .. })) {
                    self.after_listener_ingress(id);
                }
                self.abort_on_orphan_data(id);
                self.mark_dirty(id);
            }
        }
        any
    }

    fn egress(&mut self, now: Instant) -> bool {
        let mut any = false;
        let mut dirty = std::mem::take(&mut self.dirty_spare);
        std::mem::swap(&mut dirty, &mut self.dirty);
        for &id in &dirty {
            let Some(Some(shard)) = self.shards.get_mut(id) else { continue };
            shard.dirty = false;
            self.touched.push(id);
            while self.iface.poll_egress(now, &mut self.dev, &mut shard.set) != PollResult::None {
                any = true;
            }
            let state = match shard.role {
                Role::Conn { handle, .. } => Some(shard.set.get::<tcp::Socket>(handle).state()),
                _ => None,
            };
            let reap = shard.orphan && matches!(state, Some(tcp::State::Closed | tcp::State::TimeWait));
            let reuse = shard.reuse;
            if reap {
                if state == Some(tcp::State::TimeWait) {
                    // An orphan in TIME-WAIT keeps only its port (for bind's EADDRINUSE), not
                    // its buffers: thousands of short connections would otherwise hold
                    // 128 KiB each for the whole TIME-WAIT period.
                    if let Some((local, _)) = self.endpoints(id) {
                        self.time_wait.push_back((now + TIME_WAIT, local.port, reuse));
                        let n = self.tw_ports.entry(local.port).or_default();
                        n.0 += 1;
                        if !reuse {
                            n.1 += 1;
                        }
                    }
                }
                // The application let go and the connection is over.
                let _ = self.remove(id);
                any = true;
            } else if let Some(at) = self.iface.poll_at(now, &shard.set) {
                if shard.timer.is_none_or(|t| at < t) {
                    shard.timer = Some(at);
                    self.timers.push(Reverse((at, id)));
                }
            }
        }
        dirty.clear();
        self.dirty_spare = dirty;
        any
    }

    /// Data for a connection whose owner closed it (FIN-WAIT, orphaned): nobody can read it,
    /// so the connection is reset, as Linux's `tcp_rcv_state_process` does (RFC 1122).
    fn abort_on_orphan_data(&mut self, id: ShardId) {
        let Some(Some(shard)) = self.shards.get_mut(id) else { return };
        let Role::Conn { handle, .. } = shard.role else { return };
        if !shard.orphan {
            return;
        }
        let t = shard.set.get_mut::<tcp::Socket>(handle);
        if t.recv_queue() > 0 {
            t.abort();
        }
    }

    /// Nothing to send and nothing touched since the last pass: a pass now would only look
    /// at the device again (a call that read or waited left no output behind).
    pub fn quiet(&self) -> bool {
        self.dirty.is_empty() && self.touched.is_empty()
    }

    /// The shards touched (a packet arrived, a timer ran, output went out) since the last
    /// call, possibly with repeats: their sockets' readiness may have changed.
    pub fn take_touched(&mut self, into: &mut Vec<ShardId>) {
        into.clear();
        std::mem::swap(into, &mut self.touched);
    }

    /// Local and remote endpoint of a connection shard.
    pub fn endpoints(&self, id: ShardId) -> Option<(IpEndpoint, IpEndpoint)> {
        match self.shards.get(id)?.as_ref()?.role {
            Role::Conn { local, remote, .. } => Some((local, remote)),
            _ => None,
        }
    }

    /// Whether a listener has a connection ready for `accept`, and how many it queues.
    pub fn acceptable(&self, listener: ShardId) -> (bool, usize) {
        match &self.shards.get(listener).and_then(Option::as_ref).map(|s| &s.role) {
            Some(Role::Listener { queue, .. }) => (
                queue.iter().any(|id| {
                    self.tcp(*id)
                        .is_ok_and(|s| !matches!(s.state(), tcp::State::SynReceived | tcp::State::Listen))
                }),
                queue.len(),
            ),
            _ => (false, 0),
        }
    }

    /// Changes a listener's backlog (`listen` called again).
    pub fn set_backlog(&mut self, listener: ShardId, n: usize) {
        if let Ok(Shard { role: Role::Listener { backlog, .. }, .. }) = self.shard_mut(listener) {
            *backlog = n.clamp(1, 4097);
        }
    }

    /// `SO_RCVBUF` on a listening socket: the connections it makes from now on get an `rx`
    /// byte receive buffer (the idle listening socket is replaced at once, so the next
    /// connection already has it, as Linux clones the listener's `sk_rcvbuf`).
    pub fn set_listener_rx(&mut self, listener: ShardId, rx: Option<usize>) {
        let fresh = self.new_tcp_rx(rx);
        let Ok(shard) = self.shard_mut(listener) else { return };
        let Role::Listener { port, handle, rx: cur, .. } = &mut shard.role else { return };
        *cur = rx;
        if shard.set.get::<tcp::Socket>(*handle).state() != tcp::State::Listen {
            return;
        }
        let mut fresh = fresh;
        if fresh.listen(*port).is_err() {
            return;
        }
        shard.set.remove(*handle);
        *handle = shard.set.add(fresh);
    }

    /// Whether a TCP port is held by a listener or a connection of this stack.
    pub fn tcp_port_taken(&self, port: u16) -> bool {
        self.listening(port) || self.ephemeral_in_use.contains(&port)
    }

    /// Whether a listener (of either family) holds `port`.
    pub fn listening(&self, port: u16) -> bool {
        self.listeners.contains_key(&(port, false)) || self.listeners.contains_key(&(port, true))
    }

    /// Whether a closed connection on this local port is in TIME-WAIT (Linux refuses
    /// `bind` to it without `SO_REUSEADDR`).
    /// With `reuse` (the binder has `SO_REUSEADDR`), only TIME-WAITs left by sockets without
    /// it count, as `inet_csk_bind_conflict` requires the option on both sides.
    pub fn port_in_time_wait(&self, port: u16, reuse: bool) -> bool {
        self.tw_ports.get(&port).is_some_and(|&(all, plain)| if reuse { plain > 0 } else { all > 0 })
    }

    /// Records whether the socket owning a connection has `SO_REUSEADDR` (before release).
    pub fn set_reuse(&mut self, id: ShardId, on: bool) {
        if let Ok(s) = self.shard_mut(id) {
            s.reuse = on;
        }
    }

    /// A free UDP port from the ephemeral range.
    pub fn udp_ephemeral(&mut self) -> SysResult<u16> {
        let (lo, hi) = self.ephemeral.udp;
        let span = u32::from(hi - lo) + 1;
        self.next_udp = self.next_udp.wrapping_add(7919);
        let start = self.next_udp % span;
        for i in 0..span {
            let p = lo + ((start + i) % span) as u16;
            if !self.udp.port_taken(p) {
                return Ok(p);
            }
        }
        Err(Errno::EAGAIN)
    }

    /// Whether a UDP port is bound.
    pub fn udp_port_taken(&self, port: u16) -> bool {
        self.udp.port_taken(port)
    }

    /// The interface's context (for smoltcp calls that need it).
    pub fn context(&mut self) -> &mut smoltcp::iface::Context {
        self.iface.context()
    }

    /// When the stack next needs polling without new packets.
    pub fn poll_at(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Largest number of sockets in any shard: 1 for connections, which is what makes the
    /// per-packet cost independent of the number of connections.
    pub fn largest_shard(&self) -> usize {
        self.shards.iter().flatten().map(|s| s.set.iter().count()).max().unwrap_or(0)
    }
}

/// Which shard an incoming packet belongs to; `None` to drop it (a SYN to a listener whose
/// queue is full). A packet nobody owns goes to the spare shard, where smoltcp answers it.
fn route(
    frame: &[u8],
    conns: &HashMap<(IpEndpoint, IpEndpoint), ShardId>,
    listeners: &HashMap<(u16, bool), ShardId>,
    shards: &[Option<Shard>],
    spare: ShardId,
    syns_dropped: &mut u64,
) -> Option<ShardId> {
    let Some(key) = FlowKey::of(frame) else { return Some(spare) };
    let local = IpEndpoint::new(key.dst.0, key.dst.1);
    let remote = IpEndpoint::new(key.src.0, key.src.1);
    match key.proto {
        IpProtocol::Tcp => {
            if let Some(&id) = conns.get(&(local, remote)) {
                return Some(id);
            }
            let v6 = matches!(local.addr, smoltcp::wire::IpAddress::Ipv6(_));
            let Some(&id) = listeners.get(&(local.port, v6)) else { return Some(spare) };
            let full = match shards.get(id).and_then(Option::as_ref).map(|s| &s.role) {
                Some(Role::Listener { backlog, queue, .. }) => queue.len() >= *backlog,
                _ => false,
            };
            if full && is_syn(frame) {
                *syns_dropped += 1;
                return None;
            }
            Some(id)
        }
        _ => Some(spare),
    }
}

/// An ICMP or ICMPv6 "port unreachable" about a UDP datagram we sent: our source port and
/// the destination that refused it.
fn port_unreachable(frame: &[u8]) -> Option<(u16, IpEndpoint)> {
    let port = |b: &[u8], at: usize| Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]));
    match frame.first()? >> 4 {
        4 => {
            let hl = usize::from(frame[0] & 0x0f) * 4;
            // ICMP (1), type 3 code 3, then the original IPv4 header and UDP header.
            if *frame.get(9)? != 1 || *frame.get(hl)? != 3 || *frame.get(hl + 1)? != 3 {
                return None;
            }
            let inner = frame.get(hl + 8..)?;
            let ihl = usize::from(inner.first()? & 0x0f) * 4;
            if *inner.get(9)? != 17 {
                return None;
            }
            let dst = std::net::Ipv4Addr::new(*inner.get(16)?, inner[17], inner[18], inner[19]);
            Some((
                port(inner, ihl)?,
                IpEndpoint::new(smoltcp::wire::IpAddress::Ipv4(dst), port(inner, ihl + 2)?),
            ))
        }
        6 => {
            // ICMPv6 (58), type 1 code 4, then the original IPv6 header and UDP header.
            if *frame.get(6)? != 58 || *frame.get(40)? != 1 || *frame.get(41)? != 4 {
                return None;
            }
            let inner = frame.get(48..)?;
            if *inner.get(6)? != 17 {
                return None;
            }
            let mut a = [0u8; 16];
            a.copy_from_slice(inner.get(24..40)?);
            let dst = std::net::Ipv6Addr::from(a);
            Some((port(inner, 40)?, IpEndpoint::new(smoltcp::wire::IpAddress::Ipv6(dst), port(inner, 42)?)))
        }
        _ => None,
    }
}

fn is_syn(frame: &[u8]) -> bool {
    let payload = match frame.first().map(|b| b >> 4) {
        Some(4) => {
            let hl = usize::from(frame[0] & 0x0f) * 4;
            frame.get(hl..)
        }
        Some(6) => frame.get(40..),
        _ => None,
    };
    payload.and_then(|p| TcpPacket::new_checked(p).ok()).is_some_and(|t| t.syn() && !t.ack())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrakis_backends::loopback::Loopback;
    use smoltcp::time::Duration;
    use smoltcp::wire::IpAddress;

    const LO: IpAddress = IpAddress::v4(127, 0, 0, 1);

    fn stack() -> Stack<Loopback> {
        let small = Buffers { tcp_rx: 4096, tcp_tx: 4096, ..Buffers::default() };
        Stack::new(Loopback::default(), &[IpCidr::new(LO, 8)], Instant::from_secs(1000), small)
    }

    /// Polls with a virtual clock in 1 ms steps until `done` or `limit` ms pass.
    fn run(
        s: &mut Stack<Loopback>,
        now: &mut Instant,
        limit: u64,
        mut done: impl FnMut(&mut Stack<Loopback>) -> bool,
    ) {
        for _ in 0..limit {
            s.poll(*now);
            if done(s) {
                return;
            }
            *now += Duration::from_millis(1);
        }
        panic!("not done after {limit} virtual ms");
    }

    #[test]
    fn a_burst_of_1000_connects_is_accepted_without_a_reset() {
        let mut s = stack();
        let mut now = Instant::from_secs(1000);
        let l = s.listen(8000, 1024).unwrap();
        let clients: Vec<ShardId> =
            (0..1000).map(|_| s.connect(IpEndpoint::new(LO, 8000)).unwrap()).collect();
        let mut accepted = Vec::new();
        run(&mut s, &mut now, 5000, |s| {
            while let Some(c) = s.accept(l).unwrap() {
                accepted.push(c);
            }
            accepted.len() == clients.len()
        });
        for &c in &clients {
            assert_eq!(s.tcp(c).unwrap().state(), tcp::State::Established, "client {c} was not connected");
        }
        assert_eq!(s.syns_dropped, 0);
        assert_eq!(s.largest_shard(), 1, "every connection and the listener sit in their own shard");

        // Every connection carries its own bytes to the right peer.
        for (i, &c) in clients.iter().enumerate() {
            s.tcp_mut(c).unwrap().send_slice(format!("hello {i:04}").as_bytes()).unwrap();
        }
        let mut got = std::collections::HashMap::new();
        run(&mut s, &mut now, 1000, |s| {
            for &a in &accepted {
                let sock = s.tcp_mut(a).unwrap();
                if sock.can_recv() {
                    let mut buf = [0u8; 32];
                    let n = sock.recv_slice(&mut buf).unwrap();
                    let peer = sock.remote_endpoint().unwrap();
                    got.insert(peer.port, String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
            got.len() == accepted.len()
        });
        for (i, &c) in clients.iter().enumerate() {
            let port = s.tcp(c).unwrap().local_endpoint().unwrap().port;
            assert_eq!(got[&port], format!("hello {i:04}"));
        }
    }

    #[test]
    fn a_full_backlog_drops_syns_and_the_clients_get_in_later() {
        let mut s = stack();
        let mut now = Instant::from_secs(1000);
        let l = s.listen(8001, 2).unwrap();
        let clients: Vec<ShardId> = (0..5).map(|_| s.connect(IpEndpoint::new(LO, 8001)).unwrap()).collect();
        run(&mut s, &mut now, 100, |s| s.syns_dropped >= 3);
        let states: Vec<tcp::State> = clients.iter().map(|&c| s.tcp(c).unwrap().state()).collect();
        assert_eq!(states.iter().filter(|&&st| st == tcp::State::Established).count(), 2, "{states:?}");
        assert_eq!(states.iter().filter(|&&st| st == tcp::State::SynSent).count(), 3, "no reset: {states:?}");
        // Accepting makes room; the clients' SYN retransmissions get in.
        let mut accepted = 0;
        run(&mut s, &mut now, 20_000, |s| {
            while s.accept(l).unwrap().is_some() {
                accepted += 1;
            }
            accepted == 5
        });
        assert!(clients.iter().all(|&c| s.tcp(c).unwrap().state() == tcp::State::Established));
    }

    #[test]
    fn a_connect_to_a_closed_port_is_refused() {
        let mut s = stack();
        let mut now = Instant::from_secs(1000);
        let c = s.connect(IpEndpoint::new(LO, 9)).unwrap();
        run(&mut s, &mut now, 100, |s| s.tcp(c).unwrap().state() == tcp::State::Closed);
    }

    #[test]
    fn removing_frees_the_port_and_the_index() {
        let mut s = stack();
        let l = s.listen(8002, 8).unwrap();
        assert_eq!(s.listen(8002, 8).unwrap_err(), Errno::EADDRINUSE);
        s.remove(l).unwrap();
        assert_eq!(s.remove(l).unwrap_err(), Errno::EBADF);
        s.listen(8002, 8).unwrap();
        let c = s.connect(IpEndpoint::new(LO, 8002)).unwrap();
        let port = s.tcp(c).unwrap().local_endpoint().unwrap().port;
        assert!((EPHEMERAL.0..=EPHEMERAL.1).contains(&port));
        s.remove(c).unwrap();
        assert!(!s.ephemeral_in_use.contains(&port));
    }

    #[test]
    fn ephemeral_ports_come_from_the_stacks_ranges() {
        let mut s = stack();
        assert_eq!(s.ephemeral(), Ephemeral::default());
        assert_eq!(Ephemeral::new((0, 10), (1, 2)), None, "port 0 is no port");
        assert_eq!(Ephemeral::new((20, 10), (1, 2)), None, "reversed");
        let e = Ephemeral::new((61_000, 61_003), (62_000, 62_001)).unwrap();
        assert!(e.contains(true, 61_003) && !e.contains(true, 62_000) && e.contains(false, 62_000));
        s.set_ephemeral(e);
        s.listen(8003, 8).unwrap();
        let mut ports = Vec::new();
        for _ in 0..4 {
            let c = s.connect(IpEndpoint::new(LO, 8003)).unwrap();
            ports.push(s.tcp(c).unwrap().local_endpoint().unwrap().port);
        }
        ports.sort_unstable();
        assert_eq!(ports, [61_000, 61_001, 61_002, 61_003], "each port of the block once");
        assert_eq!(s.connect(IpEndpoint::new(LO, 8003)).unwrap_err(), Errno::EADDRNOTAVAIL, "block used up");
        for _ in 0..8 {
            let p = s.udp_ephemeral().unwrap();
            assert!((62_000..=62_001).contains(&p), "udp port {p}");
        }
    }

    #[test]
    fn ipv6_connections_are_routed_too() {
        let lo6 = IpAddress::v6(0, 0, 0, 0, 0, 0, 0, 1);
        let small = Buffers { tcp_rx: 4096, tcp_tx: 4096, ..Buffers::default() };
        let addrs = [IpCidr::new(LO, 8), IpCidr::new(lo6, 128)];
        let mut s = Stack::new(Loopback::default(), &addrs, Instant::from_secs(1000), small);
        let mut now = Instant::from_secs(1000);
        let l = s.listen(8003, 16).unwrap();
        let v6 = s.connect(IpEndpoint::new(lo6, 8003)).unwrap();
        let v4 = s.connect(IpEndpoint::new(LO, 8003)).unwrap();
        let mut accepted = Vec::new();
        run(&mut s, &mut now, 1000, |s| {
            while let Some(a) = s.accept(l).unwrap() {
                accepted.push(a);
            }
            accepted.len() == 2
        });
        let peers: Vec<IpAddress> =
            accepted.iter().map(|&a| s.tcp(a).unwrap().remote_endpoint().unwrap().addr).collect();
        assert!(peers.contains(&lo6) && peers.contains(&LO), "{peers:?}");
        assert_eq!(s.tcp(v6).unwrap().state(), tcp::State::Established);
        assert_eq!(s.tcp(v4).unwrap().state(), tcp::State::Established);
    }

    #[test]
    fn ten_thousand_short_connections_carry_their_bytes_and_leave_nothing_behind() {
        let mut s = stack();
        let mut now = Instant::from_secs(1000);
        let l = s.listen(8004, 128).unwrap();
        let baseline = s.live_shards();
        for i in 0..10_000u32 {
            let c = s.connect(IpEndpoint::new(LO, 8004)).unwrap();
            let msg = format!("request {i}");
            let mut server = None;
            run(&mut s, &mut now, 100, |s| {
                if server.is_none() {
                    server = s.accept(l).unwrap();
                }
                server.is_some() && s.tcp(c).unwrap().may_send()
            });
            let a = server.unwrap();
            s.tcp_mut(c).unwrap().send_slice(msg.as_bytes()).unwrap();
            // Linux's order: the client writes and closes at once; the server reads, answers
            // nothing, sees the FIN and closes.
            s.release(c).unwrap();
            let mut got = Vec::new();
            run(&mut s, &mut now, 100, |s| {
                let sock = s.tcp_mut(a).unwrap();
                let mut buf = [0u8; 64];
                if let Ok(n) = sock.recv_slice(&mut buf) {
                    got.extend_from_slice(&buf[..n]);
                }
                !sock.may_recv() && sock.recv_queue() == 0
            });
            assert_eq!(got, msg.as_bytes(), "connection {i}");
            s.release(a).unwrap();
        }
        // TIME-WAIT (smoltcp: 10 s) runs out; every connection is reaped.
        run(&mut s, &mut now, 20_000, |s| s.live_shards() == baseline);
        assert!(s.ephemeral_in_use.is_empty());
    }

    #[test]
    fn releasing_a_listener_resets_the_connections_nobody_accepted() {
        let mut s = stack();
        let mut now = Instant::from_secs(1000);
        let l = s.listen(8005, 8).unwrap();
        let c = s.connect(IpEndpoint::new(LO, 8005)).unwrap();
        run(&mut s, &mut now, 100, |s| s.tcp(c).unwrap().state() == tcp::State::Established);
        s.release(l).unwrap();
        run(&mut s, &mut now, 100, |s| s.tcp(c).unwrap().state() == tcp::State::Closed);
    }

    #[test]
    fn udp_datagrams_reach_the_bound_socket_and_unbound_ports_answer_icmp() {
        let mut s = stack();
        let now = Instant::from_secs(1000);
        let tx = Tx { hop_limit: 64, tos: 0 };
        let a = s.udp_open(false);
        s.udp_table_mut().bind(a, 5000, None, false, false);
        let b = s.udp_open(false);
        s.udp_table_mut().bind(b, 5001, None, false, false);
        s.udp_send(a, LO, IpEndpoint::new(LO, 5001), tx, b"ping", now).unwrap();
        s.poll(now);
        let d = s.udp_table_mut().pop(b).unwrap();
        assert_eq!((&d.data[..], d.src, d.dst), (&b"ping"[..], IpEndpoint::new(LO, 5000), LO));
        s.udp_send(a, LO, IpEndpoint::new(LO, 5999), tx, b"lost", now).unwrap();
        s.poll(now);
        assert_eq!(s.icmp_errors, vec![(5000, IpEndpoint::new(LO, 5999))]);
    }

    #[test]
    fn a_65527_byte_udp_datagram_crosses_ipv6_loopback() {
        let lo6 = IpAddress::v6(0, 0, 0, 0, 0, 0, 0, 1);
        let addrs = [IpCidr::new(LO, 8), IpCidr::new(lo6, 128)];
        let mut s = Stack::new(Loopback::default(), &addrs, Instant::from_secs(1000), Buffers::default());
        let now = Instant::from_secs(1000);
        let a = s.udp_open(true);
        s.udp_table_mut().bind(a, 5000, None, false, false);
        let payload: Vec<u8> = (0..65_527u32).map(|i| (i * 7) as u8).collect();
        s.udp_send(a, lo6, IpEndpoint::new(lo6, 5000), Tx { hop_limit: 64, tos: 0 }, &payload, now).unwrap();
        s.poll(now);
        assert_eq!(s.udp_table_mut().pop(a).map(|d| d.data), Some(payload));
    }
}
