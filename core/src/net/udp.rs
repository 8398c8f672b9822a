//! UDP as Linux does it, without smoltcp's UDP socket: the socket table with Linux's lookup
//! (`udp4_lib_lookup2`/`udp6_lib_lookup2`: exact local address before wildcard, scores for
//! family and connected peers, the hash-chain order that makes the last `SO_REUSEADDR` socket
//! bound receive, `SO_REUSEPORT` groups spreading by a hash of the 4-tuple), per-socket
//! receive queues charged against `SO_RCVBUF`, the IP header fields `recvmsg` reports
//! (destination, TTL/hop limit, TOS/traffic class, arrival time), and the wire format:
//! IPv4/IPv6 + UDP frames, with IPv6 fragmentation and reassembly for datagrams larger than
//! the device MTU (as Linux fragments a 65,527-byte datagram on `lo`).
//!
//! This module owns no sockets of the program and no locks; [`super::stack::Stack`] feeds it
//! frames and [`super::socket`] decides what a call means.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::SystemTime;

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Address, Ipv6Address};

use super::stack::ShardId;

/// Interface index of the loopback device (`lo` is 1 on Linux).
pub const LOOPBACK_IFINDEX: u32 = 1;

/// A received datagram and the header fields control messages report.
#[derive(Clone, Debug)]
pub struct Datagram {
    /// The payload.
    pub data: Vec<u8>,
    /// The sender.
    pub src: IpEndpoint,
    /// The destination address of the packet (`IP_PKTINFO`'s `ipi_addr`).
    pub dst: IpAddress,
    /// TTL (IPv4) or hop limit (IPv6) of the packet.
    pub hop_limit: u8,
    /// TOS byte (IPv4) or traffic class (IPv6).
    pub tos: u8,
    /// When it was queued (`SO_TIMESTAMP`).
    pub stamp: SystemTime,
}

/// IP header fields of a datagram being sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tx {
    /// TTL / hop limit.
    pub hop_limit: u8,
    /// TOS / traffic class.
    pub tos: u8,
}

/// Linux's default `SO_RCVBUF` for UDP (`rmem_default`).
const DEFAULT_RCVBUF: usize = 212_992;

/// One UDP socket as the lookup sees it (Linux's `struct sock` fields `udp4_lib_lookup2`
/// reads) plus its receive queue.
#[derive(Debug)]
struct Sock {
    /// Bound port; 0 while unhashed.
    port: u16,
    /// `AF_INET6` socket.
    v6: bool,
    v6only: bool,
    /// `sk_rcv_saddr`: `None` for the wildcard; v4-mapped addresses are stored as IPv4.
    rcv: Option<IpAddress>,
    /// The connected peer (`inet_daddr`/`inet_dport`).
    peer: Option<IpEndpoint>,
    reuseport: bool,
    /// The `SO_REUSEPORT` group it joined at bind time.
    group: Option<u32>,
    rx: VecDeque<(Datagram, usize)>,
    /// `sk_rmem_alloc`: truesize of what is queued.
    rmem: usize,
    rcvbuf: usize,
    drops: u64,
}

/// The UDP sockets of a stack.
#[derive(Debug, Default)]
pub struct Table {
    socks: HashMap<ShardId, Sock>,
    /// Sockets bound to each port in Linux's hash-chain order (head first).
    ports: HashMap<u16, Vec<ShardId>>,
    /// `SO_REUSEPORT` groups: members in Linux's `socks[]` order.
    groups: HashMap<u32, Vec<ShardId>>,
    next_group: u32,
    seed: u64,
    frags: Reassembly,
    /// IPv6 fragment identification.
    ident: u32,
}

impl Table {
    /// An empty table; `seed` keys the `SO_REUSEPORT` hash (Linux: a boot-time secret).
    pub fn new(seed: u64) -> Table {
        Table { seed, ident: seed as u32, ..Table::default() }
    }

    /// A new, unbound socket.
    pub fn open(&mut self, id: ShardId, v6: bool) {
        self.socks.insert(
            id,
            Sock {
                port: 0,
                v6,
                v6only: false,
                rcv: None,
                peer: None,
                reuseport: false,
                group: None,
                rx: VecDeque::new(),
                rmem: 0,
                rcvbuf: DEFAULT_RCVBUF,
                drops: 0,
            },
        );
    }

    /// Forgets a socket and what it had queued.
    pub fn close(&mut self, id: ShardId) {
        self.unbind(id);
        self.socks.remove(&id);
    }

    /// Whether `id` is a socket of this table.
    pub fn contains(&self, id: ShardId) -> bool {
        self.socks.contains_key(&id)
    }

    /// Hashes a socket on `port` (`udp_lib_get_port`): at the head of the chain, except an
    /// IPv6 `SO_REUSEPORT` socket, which Linux adds at the tail; a `SO_REUSEPORT` socket
    /// joins the group of an earlier one with the same family, `IPV6_V6ONLY` and address.
    pub fn bind(&mut self, id: ShardId, port: u16, rcv: Option<IpAddress>, v6only: bool, reuseport: bool) {
        self.unbind(id);
        let Some(s) = self.socks.get(&id) else { return };
        let v6 = s.v6;
        let chain = self.ports.entry(port).or_default();
        let group = if reuseport {
            chain
                .iter()
                .filter_map(|o| self.socks.get(o))
                .find(|o| {
                    o.reuseport && o.v6 == v6 && o.v6only == v6only && o.rcv == rcv && o.group.is_some()
                })
                .and_then(|o| o.group)
        } else {
            None
        };
        if v6 && reuseport {
            chain.push(id);
        } else {
            chain.insert(0, id);
        }
        let group = if reuseport {
            let g = group.unwrap_or_else(|| {
                self.next_group += 1;
                self.next_group
            });
            self.groups.entry(g).or_default().push(id);
            Some(g)
        } else {
            None
        };
        if let Some(s) = self.socks.get_mut(&id) {
            s.port = port;
            s.rcv = rcv;
            s.v6only = v6only;
            s.reuseport = reuseport;
            s.group = group;
        }
    }

    /// Unhashes a socket (`udp_lib_unhash`): it keeps its queue, not its port.
    pub fn unbind(&mut self, id: ShardId) {
        let Some(s) = self.socks.get_mut(&id) else { return };
        let (port, group) = (s.port, s.group.take());
        s.port = 0;
        if let Some(chain) = self.ports.get_mut(&port) {
            chain.retain(|&x| x != id);
            if chain.is_empty() {
                self.ports.remove(&port);
            }
        }
        if let Some(g) = group {
            self.leave_group(g, id);
        }
    }

    /// `reuseport_detach_sock`: the last member takes the leaver's place.
    fn leave_group(&mut self, g: u32, id: ShardId) {
        if let Some(members) = self.groups.get_mut(&g) {
            if let Some(i) = members.iter().position(|&x| x == id) {
                members.swap_remove(i);
            }
            if members.is_empty() {
                self.groups.remove(&g);
            }
        }
    }

    /// A new local address (`connect` on a wildcard socket, or a disconnect resetting it):
    /// `udp_lib_rehash` moves the socket to the head of its new chain and out of its
    /// `SO_REUSEPORT` group.
    pub fn set_local(&mut self, id: ShardId, rcv: Option<IpAddress>) {
        let Some(s) = self.socks.get_mut(&id) else { return };
        if s.rcv == rcv {
            return;
        }
        s.rcv = rcv;
        let (port, group) = (s.port, s.group.take());
        if let Some(g) = group {
            self.leave_group(g, id);
        }
        if let Some(chain) = self.ports.get_mut(&port) {
            chain.retain(|&x| x != id);
            chain.insert(0, id);
        }
    }

    /// Sets or clears the connected peer.
    pub fn set_peer(&mut self, id: ShardId, peer: Option<IpEndpoint>) {
        if let Some(s) = self.socks.get_mut(&id) {
            s.peer = peer;
        }
    }

    /// `SO_RCVBUF` as Linux keeps it (already doubled).
    pub fn set_rcvbuf(&mut self, id: ShardId, bytes: usize) {
        if let Some(s) = self.socks.get_mut(&id) {
            s.rcvbuf = bytes;
        }
    }

    /// The port a socket is hashed on (0 if none).
    pub fn port(&self, id: ShardId) -> u16 {
        self.socks.get(&id).map_or(0, |s| s.port)
    }

    /// Whether any socket is bound to `port`.
    pub fn port_taken(&self, port: u16) -> bool {
        self.ports.contains_key(&port)
    }

    /// Datagrams waiting on a socket.
    pub fn queued(&self, id: ShardId) -> usize {
        self.socks.get(&id).map_or(0, |s| s.rx.len())
    }

    /// Datagrams dropped because the receive buffer was full.
    pub fn drops(&self, id: ShardId) -> u64 {
        self.socks.get(&id).map_or(0, |s| s.drops)
    }

    /// The next datagram, left in the queue.
    pub fn front(&self, id: ShardId) -> Option<&Datagram> {
        self.socks.get(&id)?.rx.front().map(|(d, _)| d)
    }

    /// Takes the next datagram.
    pub fn pop(&mut self, id: ShardId) -> Option<Datagram> {
        let s = self.socks.get_mut(&id)?;
        let (d, size) = s.rx.pop_front()?;
        s.rmem -= size;
        Some(d)
    }

    /// Queues a datagram as `__udp_enqueue_schedule_skb`: dropped when it would take the
    /// queue over `SO_RCVBUF`, unless the queue is empty (any datagram fits an empty queue).
    /// Returns whether it was queued.
    pub fn deliver(&mut self, id: ShardId, d: Datagram) -> bool {
        let Some(s) = self.socks.get_mut(&id) else { return false };
        let size = truesize(d.data.len(), d.dst.version() == smoltcp::wire::IpVersion::Ipv6);
        if s.rmem + size > s.rcvbuf && s.rmem != 0 {
            s.drops += 1;
            return false;
        }
        s.rmem += size;
        s.rx.push_back((d, size));
        true
    }

    /// Which socket receives a datagram from `src` to `dst`, as `__udp4_lib_lookup` /
    /// `__udp6_lib_lookup`: sockets bound to exactly `dst` first, then wildcard ones; within
    /// each, the best score in chain order, a `SO_REUSEPORT` group answering by hash.
    pub fn lookup(&self, src: IpEndpoint, dst: IpEndpoint) -> Option<ShardId> {
        let chain = self.ports.get(&dst.port)?;
        for exact in [true, false] {
            let want = if exact { Some(dst.addr) } else { None };
            if let Some(id) = self.lookup2(chain, src, dst.addr, want) {
                return Some(id);
            }
        }
        None
    }

    /// `udp4_lib_lookup2` over the sockets of `chain` whose local address is `want`.
    fn lookup2(
        &self,
        chain: &[ShardId],
        src: IpEndpoint,
        dst: IpAddress,
        want: Option<IpAddress>,
    ) -> Option<ShardId> {
        let mut result = None;
        // udp4_lib_lookup2 starts from 0 (its scores are at least 1), udp6_lib_lookup2 from -1.
        let mut badness = -1;
        for &id in chain {
            let Some(s) = self.socks.get(&id).filter(|s| s.rcv == want) else { continue };
            let Some(sc) = score(s, src, dst) else { continue };
            if sc <= badness {
                continue;
            }
            badness = sc;
            if s.peer.is_some() {
                result = Some(id);
                continue;
            }
            let Some(members) = s.group.and_then(|g| self.groups.get(&g)) else {
                result = Some(id);
                continue;
            };
            let Some(pick) = self.select(members, src, dst) else {
                result = Some(id);
                continue;
            };
            let has_conns = members.iter().any(|m| self.socks.get(m).is_some_and(|m| m.peer.is_some()));
            if !has_conns {
                return Some(pick);
            }
            result = Some(pick);
            if let Some(rescore) = self.socks.get(&pick).and_then(|p| score(p, src, dst)) {
                badness = badness.max(rescore);
            }
        }
        result
    }

    /// `reuseport_select_sock_by_hash`: a member by hash of the 4-tuple, skipping connected
    /// ones.
    fn select(&self, members: &[ShardId], src: IpEndpoint, dst: IpAddress) -> Option<ShardId> {
        let n = members.len();
        if n == 0 {
            return None;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.seed, src, dst).hash(&mut h);
        // reciprocal_scale of a 32-bit hash.
        let start = (((h.finish() >> 32) * n as u64) >> 32) as usize;
        (0..n).map(|k| members[(start + k) % n]).find(|m| self.socks.get(m).is_some_and(|s| s.peer.is_none()))
    }

    /// A fresh IPv6 fragment identification.
    pub fn next_ident(&mut self) -> u32 {
        self.ident = self.ident.wrapping_add(1);
        self.ident
    }

    /// An IPv6 fragment: `Some(packet)` once the datagram is whole again.
    pub fn reassemble(&mut self, frame: &[u8], now: Instant) -> Option<Vec<u8>> {
        self.frags.add(frame, now)
    }
}

/// `compute_score` of `udp4_lib_lookup2` (IPv4 packets) and `udp6_lib_lookup2` (IPv6);
/// `None` when the socket cannot take the packet. The local address was matched already.
fn score(s: &Sock, src: IpEndpoint, dst: IpAddress) -> Option<i32> {
    let mut score = match dst {
        IpAddress::Ipv4(_) => {
            if s.v6 && s.v6only {
                return None;
            }
            if s.v6 {
                1
            } else {
                2
            }
        }
        IpAddress::Ipv6(_) => {
            if !s.v6 {
                return None;
            }
            0
        }
    };
    if let Some(p) = s.peer {
        if p.addr != src.addr || p.port != src.port {
            return None;
        }
        score += if dst.version() == smoltcp::wire::IpVersion::Ipv4 { 8 } else { 2 };
    }
    Some(score)
}

/// `skb->truesize` of a datagram sent over Linux's loopback (x86_64), which is what
/// `SO_RCVBUF` is charged with. `__ip_append_data` allocates the payload, the UDP and IP
/// headers, `lo`'s link reserve (16) and 15 bytes of slack linearly below `SKB_MAX_ALLOC`;
/// `kmalloc_reserve` adds `skb_shared_info` (320) and takes the 576-byte small-head cache or
/// the next kmalloc/page size; the `sk_buff` adds 256. Bigger datagrams go to page fragments
/// charged byte for byte after a small head.
fn truesize(len: usize, v6: bool) -> usize {
    const SHINFO: usize = 320;
    const SKB: usize = 256;
    const SMALL_HEAD: usize = 576;
    const MAX_ALLOC: usize = 4 * 4096 - SHINFO;
    let need = len + 8 + if v6 { 40 } else { 20 } + 16 + 15;
    if need >= MAX_ALLOC {
        return SMALL_HEAD + SKB + len;
    }
    let head = ((need + 63) & !63) + SHINFO;
    let head = if head <= SMALL_HEAD { SMALL_HEAD } else { head.next_power_of_two() };
    head + SKB
}

/// A parsed UDP packet.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// The sender.
    pub src: IpEndpoint,
    /// The destination.
    pub dst: IpEndpoint,
    /// TTL / hop limit.
    pub hop_limit: u8,
    /// TOS / traffic class.
    pub tos: u8,
    /// The UDP payload.
    pub payload: &'a [u8],
}

/// What an incoming frame is, for UDP.
#[derive(Debug)]
pub enum Frame<'a> {
    /// A whole UDP packet.
    Udp(Parsed<'a>),
    /// An IPv6 fragment of a UDP datagram.
    Fragment,
    /// Anything else.
    Other,
}

const IPV6_FRAGMENT: u8 = 44;
const UDP: u8 = 17;

/// Classifies an IP packet.
pub fn classify(frame: &[u8]) -> Frame<'_> {
    parse(frame).unwrap_or(Frame::Other)
}

fn parse(frame: &[u8]) -> Option<Frame<'_>> {
    let be16 = |b: &[u8], at: usize| Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]));
    let (src, dst, hop_limit, tos, l4) = match frame.first()? >> 4 {
        4 => {
            let hl = usize::from(frame[0] & 0x0f) * 4;
            let total = usize::from(be16(frame, 2)?);
            // Fragments (offset or MF set) are not ours to take: we never send them.
            if *frame.get(9)? != UDP || hl < 20 || be16(frame, 6)? & 0x3fff != 0 {
                return None;
            }
            let src = Ipv4Address::from_octets(frame.get(12..16)?.try_into().ok()?);
            let dst = Ipv4Address::from_octets(frame.get(16..20)?.try_into().ok()?);
            (IpAddress::Ipv4(src), IpAddress::Ipv4(dst), frame[8], frame[1], frame.get(hl..total)?)
        }
        6 => {
            let len = usize::from(be16(frame, 4)?);
            let next = *frame.get(6)?;
            if next == IPV6_FRAGMENT {
                return (*frame.get(40)? == UDP).then_some(Frame::Fragment);
            }
            if next != UDP {
                return None;
            }
            let tclass = ((be16(frame, 0)? >> 4) & 0xff) as u8;
            let src = Ipv6Address::from_octets(frame.get(8..24)?.try_into().ok()?);
            let dst = Ipv6Address::from_octets(frame.get(24..40)?.try_into().ok()?);
            (IpAddress::Ipv6(src), IpAddress::Ipv6(dst), frame[7], tclass, frame.get(40..40 + len)?)
        }
        _ => return None,
    };
    let sport = be16(l4, 0)?;
    let dport = be16(l4, 2)?;
    let ulen = usize::from(be16(l4, 4)?);
    if ulen < 8 || ulen > l4.len() {
        return None;
    }
    Some(Frame::Udp(Parsed {
        src: IpEndpoint::new(src, sport),
        dst: IpEndpoint::new(dst, dport),
        hop_limit,
        tos,
        payload: &l4[8..ulen],
    }))
}

/// A datagram to send.
#[derive(Clone, Copy, Debug)]
pub struct Out<'a> {
    /// Source address and port.
    pub src: IpEndpoint,
    /// Destination.
    pub dst: IpEndpoint,
    /// Header fields.
    pub tx: Tx,
    /// Payload.
    pub payload: &'a [u8],
}

/// One frame of a datagram: `(offset, len, more)` of the fragmentable part (UDP header and
/// payload) for an IPv6 fragment; `None` for the whole datagram in one frame.
pub type Piece = Option<(usize, usize, bool)>;

impl Out<'_> {
    fn header_len(&self) -> usize {
        match self.dst.addr {
            IpAddress::Ipv4(_) => 20,
            IpAddress::Ipv6(_) => 40,
        }
    }

    /// How the datagram goes out on a device with this MTU: in one frame, or (IPv6 only, as
    /// `ip6_fragment`) in fragments whose data are multiples of 8 bytes.
    pub fn pieces(&self, mtu: usize) -> Vec<Piece> {
        let udp_len = 8 + self.payload.len();
        let whole = self.header_len() + udp_len;
        if whole <= mtu || self.dst.addr.version() == smoltcp::wire::IpVersion::Ipv4 {
            return vec![None];
        }
        let per = (mtu.saturating_sub(48) & !7).max(8);
        let mut v = Vec::new();
        let mut off = 0;
        while off < udp_len {
            let n = per.min(udp_len - off);
            v.push(Some((off, n, off + n < udp_len)));
            off += n;
        }
        v
    }

    /// Length of the frame carrying `piece`.
    pub fn frame_len(&self, piece: Piece) -> usize {
        match piece {
            None => self.header_len() + 8 + self.payload.len(),
            Some((_, n, _)) => 48 + n,
        }
    }

    /// Writes the frame carrying `piece` into `buf` (of [`Out::frame_len`] bytes).
    pub fn write(&self, piece: Piece, ident: u32, buf: &mut [u8]) {
        let udp_len = 8 + self.payload.len();
        let mut udp = [0u8; 8];
        udp[0..2].copy_from_slice(&self.src.port.to_be_bytes());
        udp[2..4].copy_from_slice(&self.dst.port.to_be_bytes());
        udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        let (off, n) = match piece {
            None => (0, udp_len),
            Some((off, n, _)) => (off, n),
        };
        let at = match (self.src.addr, self.dst.addr) {
            (IpAddress::Ipv4(s), IpAddress::Ipv4(d)) => {
                let h = &mut buf[..20];
                h.fill(0);
                h[0] = 0x45;
                h[1] = self.tx.tos;
                h[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
                // DF, as Linux sets on datagrams it does not fragment (PMTU discovery).
                h[6] = 0x40;
                h[8] = self.tx.hop_limit;
                h[9] = UDP;
                h[12..16].copy_from_slice(&s.octets());
                h[16..20].copy_from_slice(&d.octets());
                let sum = checksum(h);
                h[10..12].copy_from_slice(&sum.to_be_bytes());
                20
            }
            (s, d) => {
                let s = v6(s);
                let d = v6(d);
                let h = &mut buf[..40];
                let word = (6u32 << 28) | (u32::from(self.tx.tos) << 20);
                h[0..4].copy_from_slice(&word.to_be_bytes());
                let plen = if piece.is_some() { 8 + n } else { udp_len };
                h[4..6].copy_from_slice(&(plen as u16).to_be_bytes());
                h[6] = if piece.is_some() { IPV6_FRAGMENT } else { UDP };
                h[7] = self.tx.hop_limit;
                h[8..24].copy_from_slice(&s.octets());
                h[24..40].copy_from_slice(&d.octets());
                if let Some((off, _, more)) = piece {
                    let f = &mut buf[40..48];
                    f[0] = UDP;
                    f[1] = 0;
                    f[2..4].copy_from_slice(&((off as u16) | u16::from(more)).to_be_bytes());
                    f[4..8].copy_from_slice(&ident.to_be_bytes());
                    48
                } else {
                    40
                }
            }
        };
        // The fragmentable part from `off`: UDP header bytes, then payload bytes.
        let out = &mut buf[at..at + n];
        let mut done = 0;
        if off < 8 {
            let k = (8 - off).min(n);
            out[..k].copy_from_slice(&udp[off..off + k]);
            done = k;
        }
        let p = off + done - 8;
        out[done..].copy_from_slice(&self.payload[p..p + (n - done)]);
    }
}

/// An address as IPv6 (IPv4 becomes v4-mapped; only for a v6 packet to a v6 destination).
fn v6(a: IpAddress) -> Ipv6Address {
    match a {
        IpAddress::Ipv6(a) => a,
        IpAddress::Ipv4(a) => a.to_ipv6_mapped(),
    }
}

/// The Internet checksum of an IPv4 header (its checksum field zero).
fn checksum(h: &[u8]) -> u16 {
    let mut sum: u32 =
        h.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Linux's `IPV6_FRAG_TIMEOUT`.
const FRAG_TIMEOUT: Duration = Duration::from_secs(60);
/// Datagrams being reassembled at once (older ones are dropped beyond this).
const FRAG_MAX: usize = 64;

#[derive(Debug)]
struct Partial {
    started: Instant,
    header: [u8; 40],
    /// (offset, bytes) of the fragmentable part.
    pieces: Vec<(usize, Vec<u8>)>,
    total: Option<usize>,
}

/// IPv6 reassembly of UDP fragments, keyed by (source, destination, identification).
#[derive(Debug, Default)]
struct Reassembly {
    partial: HashMap<([u8; 16], [u8; 16], u32), Partial>,
}

impl Reassembly {
    fn add(&mut self, frame: &[u8], now: Instant) -> Option<Vec<u8>> {
        self.partial.retain(|_, p| now < p.started + FRAG_TIMEOUT);
        let plen = usize::from(u16::from_be_bytes([*frame.get(4)?, *frame.get(5)?]));
        let body = frame.get(48..40 + plen)?;
        let f = frame.get(40..48)?;
        let off_word = u16::from_be_bytes([f[2], f[3]]);
        let off = usize::from(off_word & !7);
        let more = off_word & 1 != 0;
        let ident = u32::from_be_bytes([f[4], f[5], f[6], f[7]]);
        let key = (frame.get(8..24)?.try_into().ok()?, frame.get(24..40)?.try_into().ok()?, ident);
        if !self.partial.contains_key(&key) && self.partial.len() >= FRAG_MAX {
            let oldest = self.partial.iter().min_by_key(|(_, p)| p.started).map(|(k, _)| *k)?;
            self.partial.remove(&oldest);
        }
        let p = self.partial.entry(key).or_insert_with(|| Partial {
            started: now,
            header: [0; 40],
            pieces: Vec::new(),
            total: None,
        });
        if off == 0 {
            p.header.copy_from_slice(frame.get(..40)?);
        }
        if !more {
            p.total = Some(off + body.len());
        }
        if !p.pieces.iter().any(|(o, _)| *o == off) {
            p.pieces.push((off, body.to_vec()));
        }
        let total = p.total?;
        p.pieces.sort_by_key(|(o, _)| *o);
        let mut next = 0;
        for (o, b) in &p.pieces {
            if *o != next {
                return None;
            }
            next += b.len();
        }
        if next != total || total > usize::from(u16::MAX) || p.header[0] == 0 {
            return None;
        }
        let p = self.partial.remove(&key)?;
        let mut packet = Vec::with_capacity(40 + total);
        packet.extend_from_slice(&p.header);
        packet[4..6].copy_from_slice(&(total as u16).to_be_bytes());
        packet[6] = UDP;
        for (_, b) in p.pieces {
            packet.extend_from_slice(&b);
        }
        Some(packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LO4: IpAddress = IpAddress::v4(127, 0, 0, 1);
    const LO6: IpAddress = IpAddress::v6(0, 0, 0, 0, 0, 0, 0, 1);

    fn ep(a: IpAddress, p: u16) -> IpEndpoint {
        IpEndpoint::new(a, p)
    }

    fn dgram(src: IpEndpoint, dst: IpAddress, n: usize) -> Datagram {
        Datagram { data: vec![7; n], src, dst, hop_limit: 64, tos: 0, stamp: SystemTime::now() }
    }

    #[test]
    fn the_last_reuseaddr_socket_bound_gets_unicast_until_it_goes() {
        let mut t = Table::new(1);
        for id in 1..=3 {
            t.open(id, false);
            t.bind(id, 5000, None, false, false);
        }
        let from = ep(LO4, 40000);
        assert_eq!(t.lookup(from, ep(LO4, 5000)), Some(3));
        t.close(3);
        assert_eq!(t.lookup(from, ep(LO4, 5000)), Some(2));
        // An exact local address beats the wildcard whatever the order.
        t.open(4, false);
        t.bind(4, 5000, Some(LO4), false, false);
        t.open(5, false);
        t.bind(5, 5000, None, false, false);
        assert_eq!(t.lookup(from, ep(LO4, 5000)), Some(4));
    }

    #[test]
    fn a_connected_socket_takes_its_peer_only_and_outscores_the_rest() {
        let mut t = Table::new(1);
        t.open(1, false);
        t.bind(1, 5000, None, false, false);
        t.open(2, false);
        t.bind(2, 5000, None, false, false);
        t.set_peer(1, Some(ep(LO4, 7000)));
        assert_eq!(t.lookup(ep(LO4, 7000), ep(LO4, 5000)), Some(1));
        assert_eq!(t.lookup(ep(LO4, 7001), ep(LO4, 5000)), Some(2));
        t.close(2);
        assert_eq!(t.lookup(ep(LO4, 7001), ep(LO4, 5000)), None);
    }

    #[test]
    fn families_and_v6only_decide_who_sees_ipv4() {
        let mut t = Table::new(1);
        t.open(1, true);
        t.bind(1, 5000, None, false, false);
        assert_eq!(t.lookup(ep(LO4, 1), ep(LO4, 5000)), Some(1), "dual-stack wildcard takes IPv4");
        t.open(2, false);
        t.bind(2, 5000, None, false, false);
        t.open(3, true);
        t.bind(3, 5000, None, false, false);
        // An AF_INET socket scores 2, an AF_INET6 one 1, whatever the order.
        assert_eq!(t.lookup(ep(LO4, 1), ep(LO4, 5000)), Some(2));
        assert_eq!(t.lookup(ep(LO6, 1), ep(LO6, 5000)), Some(3));
        t.open(4, true);
        t.bind(4, 6000, None, true, false);
        assert_eq!(t.lookup(ep(LO4, 1), ep(LO4, 6000)), None);
        assert_eq!(t.lookup(ep(LO6, 1), ep(LO6, 6000)), Some(4));
    }

    #[test]
    fn reuseport_spreads_by_flow_and_keeps_a_flow_on_one_socket() {
        let mut t = Table::new(42);
        for id in 1..=4 {
            t.open(id, false);
            t.bind(id, 5000, None, false, true);
        }
        let mut seen = std::collections::HashSet::new();
        for sport in 30000..30200 {
            let a = t.lookup(ep(LO4, sport), ep(LO4, 5000)).unwrap();
            assert_eq!(t.lookup(ep(LO4, sport), ep(LO4, 5000)), Some(a), "a flow stays put");
            seen.insert(a);
        }
        assert_eq!(seen.len(), 4, "every member gets flows");
        // A connected member is skipped for others' flows.
        t.set_peer(2, Some(ep(LO4, 9)));
        for sport in 30000..30200 {
            assert_ne!(t.lookup(ep(LO4, sport), ep(LO4, 5000)), Some(2));
        }
        assert_eq!(t.lookup(ep(LO4, 9), ep(LO4, 5000)), Some(2));
    }

    #[test]
    fn unbinding_keeps_the_queue_and_frees_the_port() {
        let mut t = Table::new(1);
        t.open(1, false);
        t.bind(1, 5000, None, false, false);
        assert!(t.deliver(1, dgram(ep(LO4, 9), LO4, 3)));
        t.unbind(1);
        assert!(!t.port_taken(5000));
        assert_eq!(t.lookup(ep(LO4, 9), ep(LO4, 5000)), None);
        assert_eq!(t.pop(1).map(|d| d.data.len()), Some(3));
    }

    #[test]
    fn a_full_receive_buffer_drops_but_an_empty_one_takes_any_datagram() {
        let mut t = Table::new(1);
        t.open(1, false);
        t.set_rcvbuf(1, 2304);
        assert!(t.deliver(1, dgram(ep(LO4, 9), LO4, 60_000)), "an empty queue takes a big datagram");
        assert!(!t.deliver(1, dgram(ep(LO4, 9), LO4, 1)));
        assert_eq!(t.drops(1), 1);
        t.pop(1);
        // Counts measured on Linux 6.18 with the default SO_RCVBUF (212,992).
        for (len, fit) in [(1, 256), (500, 166), (1024, 92), (4000, 25), (8000, 12), (30_000, 6), (65_000, 3)]
        {
            let mut t = Table::new(1);
            t.open(1, false);
            let mut n = 0;
            while t.deliver(1, dgram(ep(LO4, 9), LO4, len)) {
                n += 1;
            }
            assert_eq!(n, fit, "{len}-byte datagrams");
        }
    }

    #[test]
    fn frames_round_trip_and_big_ipv6_datagrams_are_fragmented_and_reassembled() {
        let payload: Vec<u8> = (0..65_527u32).map(|i| (i % 251) as u8).collect();
        let out = Out {
            src: ep(LO6, 1000),
            dst: ep(LO6, 2000),
            tx: Tx { hop_limit: 7, tos: 0x28 },
            payload: &payload,
        };
        let pieces = out.pieces(65_535);
        assert_eq!(pieces.len(), 2);
        let mut t = Table::new(1);
        let mut whole = None;
        for p in pieces {
            let mut buf = vec![0; out.frame_len(p)];
            assert!(buf.len() <= 65_535);
            out.write(p, 77, &mut buf);
            assert!(matches!(classify(&buf), Frame::Fragment));
            whole = t.reassemble(&buf, Instant::from_secs(1));
        }
        let whole = whole.expect("reassembled");
        let Frame::Udp(p) = classify(&whole) else { panic!("not UDP") };
        assert_eq!((p.src, p.dst, p.hop_limit, p.tos), (ep(LO6, 1000), ep(LO6, 2000), 7, 0x28));
        assert_eq!(p.payload, &payload[..]);

        let out4 = Out { src: ep(LO4, 1), dst: ep(LO4, 2), tx: Tx { hop_limit: 64, tos: 4 }, payload: b"hi" };
        let mut buf = vec![0; out4.frame_len(None)];
        out4.write(None, 0, &mut buf);
        assert_eq!(checksum(&buf[..20]), 0, "a valid header checksum");
        let Frame::Udp(p) = classify(&buf) else { panic!("not UDP") };
        assert_eq!((p.src, p.dst, p.tos, p.payload), (ep(LO4, 1), ep(LO4, 2), 4, &b"hi"[..]));
    }
}
