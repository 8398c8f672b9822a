//! The messages: requests, responses and the types inside them.
//!
//! Every type that carries a rule checks it while it is decoded (`#[serde(try_from)]`), so a
//! value of these types is valid by construction: a [`Name`] is 1 to 64 printable
//! characters, a [`PortRange`] is non-empty and never includes port 0, a [`Filter`] has at
//! most [`MAX_PEERS`] peers, a [`Token`] is 128 bits. Unknown fields are refused, so a typo
//! is an error and not a silently ignored field. Nothing here allocates beyond the frame that
//! carried it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::error::ErrorReply;

/// Most peers one filter may list.
pub const MAX_PEERS: usize = 16;
/// Longest container name, in bytes.
pub const MAX_NAME: usize = 64;

/// A request and the number the reply will echo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFrame {
    /// Chosen by the client; echoed in the reply.
    pub seq: u32,
    /// What is asked.
    pub req: Request,
}

/// A reply to the request with the same `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyFrame {
    /// The request's `seq` (0 when the request could not be decoded far enough to know it).
    pub seq: u32,
    /// What happened.
    pub result: Outcome,
}

/// A response or a refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The request was carried out.
    Ok(Response),
    /// It was not; the reply says why and what to do.
    Err(ErrorReply),
}

/// What a client can ask. The caller's identity is never part of a request: the daemon takes
/// the pid and uid from the socket (`SO_PEERCRED`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Must come first: the versions the client speaks (inclusive).
    Hello {
        /// Oldest version the client speaks.
        min: u16,
        /// Newest version the client speaks.
        max: u16,
    },
    /// Makes the calling process a container (idempotent for the same process).
    Register {
        /// A human name shown in listings (e.g. the program's name).
        name: Name,
    },
    /// Asks for a filter; the reply carries the grant and its secret token.
    Grant {
        /// What is asked for.
        filter: Filter,
    },
    /// Ends a grant: its holder, its holder's uid, or root may.
    Revoke {
        /// The grant.
        id: GrantId,
    },
    /// Makes the calling container a holder of a grant whose token it was given (a forked
    /// child inherits its parent's grants this way).
    Inherit {
        /// The grant.
        id: GrantId,
        /// The grant's secret, proving the caller was given it.
        token: Token,
    },
    /// Lists every grant.
    Filters {},
    /// The daemon and its containers.
    Status {},
    /// Counters.
    Stats {},
    /// The calling container leaves; grants it alone held are released.
    Unregister {},
    /// Version 2. The calling container's virtual NIC on the emulator's switch. The reply
    /// ([`Response::Nic`]) carries three fds as `SCM_RIGHTS` on its frame, in this order: the
    /// NIC's region (a sealed memfd), the doorbell the switch rings (the container sleeps on
    /// it), the doorbell the container rings. Each call gives a fresh NIC and detaches the
    /// container's previous one (a process that `exec`s asks again); the ephemeral port
    /// blocks stay the container's for its life.
    Nic {},
    /// Version 2. Whether some container's grant receives `proto` traffic on `addr`:`port`
    /// (so a connection there goes through the switch; otherwise to the kernel).
    Lookup {
        /// Protocol.
        proto: Proto,
        /// Destination address as the program gave it.
        addr: IpAddr,
        /// Destination port.
        port: u16,
    },
    /// Version 3. Captures a container's frames on the switch (those it sends, dropped ones
    /// included, and those delivered to it) as pcap (`LINKTYPE_RAW`) into the one fd that
    /// rides on this request's frame (`SCM_RIGHTS`, opened for writing by the caller).
    /// Allowed to the container's uid and root.
    Capture {
        /// The container: its pid, or its name if that names one container.
        container: Name,
        /// Stop by itself after this many frames.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        count: Option<u64>,
    },
    /// Version 3. Stops a container's capture.
    CaptureStop {
        /// The container, as in [`Request::Capture`].
        container: Name,
    },
    /// Version 4. Creates a virtual storage area of `size` bytes (rounded up to 4 KiB) owned
    /// by the caller's uid. Names are unique per host.
    VsaCreate {
        /// The VSA's (and its volume's) name.
        name: Name,
        /// Bytes.
        size: u64,
    },
    /// Version 4. Grows (or, with a smaller size, shrinks) a VSA to `size` bytes. Shrinking
    /// below what the volume in it uses is refused (the volume says how much it uses in its
    /// superblock); a VSA with a running owner can only grow.
    VsaResize {
        /// The VSA.
        name: Name,
        /// New size in bytes (rounded up to 4 KiB).
        size: u64,
    },
    /// Version 4. Deletes a VSA and its storage. Refused while a container owns it.
    VsaDelete {
        /// The VSA.
        name: Name,
    },
    /// Version 4. Every VSA.
    VsaList {},
    /// Version 4. Attaches the calling process to the volume on VSA `name`. If no live
    /// process owns it, the caller becomes its owner and the reply's frame carries the VSA's
    /// backing fd (`SCM_RIGHTS`, read-write): the caller mounts the volume itself and serves
    /// it to others on [`VolumeRole::Owner::socket`]. Otherwise the reply names the owner's
    /// socket and the caller reaches the volume by RPC. With `create` set, a missing VSA is
    /// first created with that many bytes. Allowed to the VSA's uid and root.
    VolumeAttach {
        /// The VSA.
        name: Name,
        /// Create the VSA with this size if it does not exist.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        create: Option<u64>,
        /// Take the backing fd even if an owner runs, read-only (`arrakis fsck` of a
        /// volume in use is refused instead: this is for tools that only read the image).
        #[serde(default)]
        read_only: bool,
    },
    /// Version 4. The caller (an owner) no longer owns volume `name`: the next attach
    /// becomes the owner. Ownership also ends when the owning process dies.
    VolumeDetach {
        /// The VSA.
        name: Name,
    },
    /// Version 5. A secure binding for one flow of the calling container (which has a NIC):
    /// a private ring pair with the container at the other end, so the flow's frames bypass
    /// the switch (`emulator::binding`). `local` is the caller's end, `remote` the peer's;
    /// both are unicast with a port, of one family (a v4-mapped address counts as IPv4: see
    /// [`bind_flow`]). The reply ([`Response::Bound`]) carries three fds as `SCM_RIGHTS`, in
    /// this order: the binding region (a sealed memfd, magic `ARRAKBND`), a doorbell that
    /// wakes the peer container and the pair's summary page (a sealed memfd of a page). Refused with `not_bindable` when the switch's checks fail.
    Bind {
        /// Protocol.
        proto: Proto,
        /// The caller's end of the flow.
        local: SocketAddr,
        /// The peer's end.
        remote: SocketAddr,
    },
}

/// What the daemon answers to each request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// The version both sides will speak.
    Hello {
        /// Chosen version.
        version: u16,
        /// The daemon's build (`arrakis-ctl` crate version).
        daemon: String,
    },
    /// The caller is (or already was) a container.
    Registered {
        /// The container.
        container: ContainerInfo,
    },
    /// A grant was made.
    Granted {
        /// The grant.
        grant: GrantInfo,
        /// Its secret: pass it to a child so it can `inherit`.
        token: Token,
    },
    /// A grant ended.
    Revoked {
        /// The grant.
        id: GrantId,
    },
    /// The caller now holds a grant.
    Inherited {
        /// The grant.
        grant: GrantInfo,
    },
    /// Every grant.
    Filters {
        /// The grants, by id.
        grants: Vec<GrantInfo>,
    },
    /// The daemon and its containers.
    Status {
        /// The daemon.
        daemon: DaemonInfo,
        /// Its containers, by pid.
        containers: Vec<ContainerInfo>,
    },
    /// Counters.
    Stats {
        /// What the control daemon counts.
        daemon: DaemonCounters,
        /// Per container.
        containers: Vec<ContainerStats>,
        /// The software switch's counters (frames, drops by reason); `None` until the
        /// emulator's switch reports to the daemon.
        switch: Option<SwitchStats>,
    },
    /// The caller is no longer a container.
    Unregistered {
        /// Grants that ended with it.
        released: Vec<GrantId>,
    },
    /// The caller's NIC is attached to the switch; its three fds ride on this frame.
    Nic {
        /// What the container needs besides the fds.
        nic: NicInfo,
    },
    /// Answer to [`Request::Lookup`].
    Lookup {
        /// True if a container's grant receives there.
        served: bool,
    },
    /// The capture runs.
    Capturing {
        /// The container captured.
        pid: u32,
    },
    /// The capture stopped.
    CaptureStopped {
        /// The container.
        pid: u32,
        /// Frames written (`None`: no capture was running, e.g. it stopped at its count).
        frames: Option<u64>,
    },
    /// A VSA after create or resize.
    Vsa {
        /// The VSA.
        vsa: VsaInfo,
    },
    /// The VSA and its storage are gone.
    VsaDeleted {
        /// Its name.
        name: Name,
    },
    /// Every VSA, by name.
    Vsas {
        /// The VSAs.
        vsas: Vec<VsaInfo>,
    },
    /// Answer to [`Request::VolumeAttach`].
    VolumeAttached {
        /// The VSA.
        vsa: VsaInfo,
        /// How the caller reaches the volume.
        role: VolumeRole,
    },
    /// The caller no longer owns the volume.
    VolumeDetached {
        /// The VSA.
        name: Name,
    },
    /// Answer to [`Request::Bind`]; the binding region's memfd, the peer's doorbell and the
    /// pair's summary page ride on this frame, in that order.
    Bound {
        /// Which side the caller is, its NIC slot and the binding's id.
        binding: crate::emulator::BindingInfo,
    },
}

/// An address as frames carry it: a v4-mapped IPv6 address is its IPv4 address.
pub fn canonical_ip(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        a => a,
    }
}

/// Checks the two ends of a [`Request::Bind`] and returns them as frames carry them (v4-mapped
/// addresses as IPv4): each has a port other than 0 and a unicast address (not a wildcard,
/// multicast or broadcast), and both are of one family.
pub fn bind_flow(local: SocketAddr, remote: SocketAddr) -> Result<(SocketAddr, SocketAddr), String> {
    let one = |what: &str, a: SocketAddr| -> Result<SocketAddr, String> {
        let ip = canonical_ip(a.ip());
        if a.port() == 0 {
            return Err(format!("the {what} end {a} has port 0; a binding is for a flow between two ports"));
        }
        let bad = match ip {
            IpAddr::V4(v) => v.is_unspecified() || v.is_multicast() || v.is_broadcast(),
            IpAddr::V6(v) => v.is_unspecified() || v.is_multicast(),
        };
        if bad {
            return Err(format!(
                "the {what} end {a} is not a unicast address; a binding is for one flow between two addresses"
            ));
        }
        Ok(SocketAddr::new(ip, a.port()))
    };
    let (l, r) = (one("local", local)?, one("remote", remote)?);
    if l.is_ipv4() != r.is_ipv4() {
        return Err(format!(
            "the local end {local} and the remote end {remote} are of different address families"
        ));
    }
    Ok((l, r))
}

/// A virtual storage area as the daemon describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsaInfo {
    /// Its name (also the volume's name).
    pub name: Name,
    /// Bytes, a multiple of 4096.
    pub size: u64,
    /// The uid that created it; it and root may attach.
    pub uid: u32,
    /// The process that owns the volume now, if one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u32>,
}

/// How an attached process reaches a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case", deny_unknown_fields)]
pub enum VolumeRole {
    /// The caller owns the volume: the backing fd rides on the reply (`size` bytes from
    /// offset 0). It must serve RPC clients on `socket` (a path the daemon chose; the
    /// owner binds it) for as long as it owns the volume.
    Owner {
        /// Where the owner listens for RPC clients.
        socket: String,
    },
    /// Another process owns the volume: reach it by RPC at `socket`.
    Remote {
        /// The owner's RPC socket.
        socket: String,
        /// The owner's pid.
        owner: u32,
    },
    /// `read_only` attach: the backing fd rides on the reply, opened read-only.
    ReadOnly {},
}

/// A container's NIC, as the daemon describes it (the geometry is in the region's header).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicInfo {
    /// The container's ephemeral TCP ports: `connect` and `bind` to port 0 take local ports
    /// from here (granted to the container for both directions, on every local address).
    pub tcp_ports: PortRange,
    /// The container's ephemeral UDP ports.
    pub udp_ports: PortRange,
    /// The grants that cover the two blocks.
    pub grants: Vec<GrantId>,
    /// Addresses the container has on the switch besides loopback (127.0.0.1, ::1): the
    /// uplink's, shared by every container and told apart by the grants' ports as loopback
    /// is. Hosts on their networks are reached through the switch's uplink.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addrs: Vec<IfAddr>,
}

/// An address with its network's prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "IfAddrWire", into = "IfAddrWire")]
pub struct IfAddr {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IfAddrWire {
    addr: IpAddr,
    prefix: u8,
}

impl From<IfAddr> for IfAddrWire {
    fn from(a: IfAddr) -> Self {
        IfAddrWire { addr: a.addr, prefix: a.prefix }
    }
}

impl TryFrom<IfAddrWire> for IfAddr {
    type Error = String;
    fn try_from(w: IfAddrWire) -> Result<Self, String> {
        IfAddr::new(w.addr, w.prefix)
    }
}

impl IfAddr {
    /// A unicast, non-loopback address and a prefix length its family allows.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<IfAddr, String> {
        let (max, bad) = match addr {
            IpAddr::V4(a) => {
                (32, a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast())
            }
            IpAddr::V6(a) => (
                128,
                a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.to_ipv4_mapped().is_some(),
            ),
        };
        if bad {
            return Err(format!("{addr} is not a unicast, non-loopback address for the uplink"));
        }
        if prefix == 0 || prefix > max {
            return Err(format!("prefix /{prefix} is not 1 to {max} for {addr}"));
        }
        Ok(IfAddr { addr, prefix })
    }

    /// Parses `ADDR/PREFIX`.
    pub fn parse(s: &str) -> Result<IfAddr, String> {
        let (a, p) =
            s.split_once('/').ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX (e.g. 10.77.0.2/24)"))?;
        let addr = a.parse().map_err(|_| format!("{a:?} is not an IP address"))?;
        let prefix = p.parse().map_err(|_| format!("{p:?} is not a prefix length"))?;
        IfAddr::new(addr, prefix)
    }

    /// The address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True if `ip` is on this address's network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for IfAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A grant's public number: it names the grant in listings and in `arrakis revoke`. It
/// authorises nothing; the [`Token`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GrantId(pub u64);

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A grant's secret: 128 random bits, written as 32 lowercase hex digits. Whoever shows it
/// may become a holder of the grant (`inherit`). `Debug` does not print it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Token(pub [u8; 16]);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

impl From<Token> for String {
    fn from(t: Token) -> String {
        t.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl TryFrom<String> for Token {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let b = s.as_bytes();
        if b.len() != 32 || !b.iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c)) {
            return Err("a token is 32 lowercase hex digits".into());
        }
        let mut t = [0u8; 16];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            let hex = |c: u8| if c.is_ascii_digit() { c - b'0' } else { c - b'a' + 10 };
            t[i] = hex(pair[0]) << 4 | hex(pair[1]);
        }
        Ok(Token(t))
    }
}

/// A container's name: 1 to [`MAX_NAME`] bytes of printable ASCII (no spaces or controls,
/// so it prints safely in a table and a log line).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A name made from any text: invalid characters become `_`, long text is cut.
    pub fn lossy(s: &str) -> Name {
        let mut n: String =
            s.chars().map(|c| if c.is_ascii_graphic() { c } else { '_' }).take(MAX_NAME).collect();
        if n.is_empty() {
            n.push('_');
        }
        Name(n)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl TryFrom<String> for Name {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() || s.len() > MAX_NAME || !s.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(format!("a name is 1 to {MAX_NAME} printable ASCII characters without spaces"));
        }
        Ok(Name(s))
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which way traffic may flow through a grant, seen from the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Receive on the local address and ports.
    In,
    /// Send from the local address and ports.
    Out,
    /// Both.
    Both,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::In => "in",
            Direction::Out => "out",
            Direction::Both => "both",
        })
    }
}

/// Transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl From<Proto> for crate::emulator::filter::Proto {
    fn from(p: Proto) -> Self {
        match p {
            Proto::Tcp => crate::emulator::filter::Proto::Tcp,
            Proto::Udp => crate::emulator::filter::Proto::Udp,
        }
    }
}

impl From<crate::emulator::filter::Proto> for Proto {
    fn from(p: crate::emulator::filter::Proto) -> Self {
        match p {
            crate::emulator::filter::Proto::Tcp => Proto::Tcp,
            crate::emulator::filter::Proto::Udp => Proto::Udp,
        }
    }
}

/// An inclusive, non-empty range of ports that excludes 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "PortRangeWire", into = "PortRangeWire")]
pub struct PortRange {
    lo: u16,
    hi: u16,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortRangeWire {
    lo: u16,
    hi: u16,
}

impl From<PortRange> for PortRangeWire {
    fn from(r: PortRange) -> Self {
        PortRangeWire { lo: r.lo, hi: r.hi }
    }
}

impl TryFrom<PortRangeWire> for PortRange {
    type Error = String;
    fn try_from(w: PortRangeWire) -> Result<Self, String> {
        PortRange::new(w.lo, w.hi)
            .ok_or_else(|| format!("bad port range {}-{}: need 1 <= lo <= hi", w.lo, w.hi))
    }
}

impl PortRange {
    /// `lo..=hi`, if `1 <= lo <= hi`.
    pub fn new(lo: u16, hi: u16) -> Option<PortRange> {
        (lo >= 1 && lo <= hi).then_some(PortRange { lo, hi })
    }

    /// One port (not 0).
    pub fn one(port: u16) -> Option<PortRange> {
        PortRange::new(port, port)
    }

    /// First port.
    pub fn lo(&self) -> u16 {
        self.lo
    }

    /// Last port.
    pub fn hi(&self) -> u16 {
        self.hi
    }

    /// How many ports.
    pub fn len(&self) -> u32 {
        u32::from(self.hi - self.lo) + 1
    }

    /// Never true (a range has at least one port); for clippy's sake.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// True if `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }

    /// True if the ranges share a port.
    pub fn intersects(&self, o: &PortRange) -> bool {
        self.lo <= o.hi && o.lo <= self.hi
    }

    /// The first port of `self` that is also in `o`.
    pub fn first_common(&self, o: &PortRange) -> Option<u16> {
        self.intersects(o).then(|| self.lo.max(o.lo))
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// True if two local addresses can both match one packet: equal, or either is a wildcard.
/// The IPv6 wildcard `::` also covers IPv4 (a dual-stack socket receives both; whether it is
/// `IPV6_V6ONLY` is not known when the grant is asked for, so the rule is conservative).
pub fn addrs_overlap(a: IpAddr, b: IpAddr) -> bool {
    match (a, b) {
        (a, b) if a == b => true,
        (IpAddr::V6(x), _) | (_, IpAddr::V6(x)) if x.is_unspecified() => true,
        (IpAddr::V4(x), IpAddr::V4(_)) | (IpAddr::V4(_), IpAddr::V4(x)) if x.is_unspecified() => true,
        (IpAddr::V4(x), IpAddr::V6(y)) | (IpAddr::V6(y), IpAddr::V4(x)) => {
            // A v4 address and its v4-mapped v6 form are one address.
            y.to_ipv4_mapped().is_some_and(|m| m == x || x.is_unspecified())
        }
        _ => false,
    }
}

/// A remote end a filter is limited to: an address (the wildcard for any) and optionally
/// ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Remote address; `0.0.0.0` or `::` for any.
    pub addr: IpAddr,
    /// Remote ports; `None` for any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
}

impl Peer {
    /// True if one packet could match both.
    pub fn overlaps(&self, o: &Peer) -> bool {
        addrs_overlap(self.addr, o.addr)
            && match (self.ports, o.ports) {
                (Some(a), Some(b)) => a.intersects(&b),
                _ => true,
            }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.addr, self.ports) {
            (IpAddr::V6(a), Some(p)) => write!(f, "[{a}]:{p}"),
            (a, Some(p)) => write!(f, "{a}:{p}"),
            (a, None) => write!(f, "{a}"),
        }
    }
}

/// A filter: the capability to send and/or receive one protocol's packets on local ports,
/// optionally only with some peers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "FilterWire", into = "FilterWire")]
pub struct Filter {
    direction: Direction,
    proto: Proto,
    local: IpAddr,
    ports: PortRange,
    peers: Vec<Peer>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterWire {
    direction: Direction,
    proto: Proto,
    local: IpAddr,
    ports: PortRange,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    peers: Vec<Peer>,
}

impl From<Filter> for FilterWire {
    fn from(f: Filter) -> Self {
        FilterWire { direction: f.direction, proto: f.proto, local: f.local, ports: f.ports, peers: f.peers }
    }
}

impl TryFrom<FilterWire> for Filter {
    type Error = String;
    fn try_from(w: FilterWire) -> Result<Self, String> {
        Filter::new(w.direction, w.proto, w.local, w.ports, w.peers)
    }
}

impl Filter {
    /// A filter; refuses more than [`MAX_PEERS`] peers and a multicast or broadcast local
    /// address (not a port anyone can own).
    pub fn new(
        direction: Direction,
        proto: Proto,
        local: IpAddr,
        ports: PortRange,
        peers: Vec<Peer>,
    ) -> Result<Filter, String> {
        if peers.len() > MAX_PEERS {
            return Err(format!("{} peers in one filter; at most {MAX_PEERS}", peers.len()));
        }
        let bad_local = match local {
            IpAddr::V4(a) => a.is_multicast() || a.is_broadcast(),
            IpAddr::V6(a) => a.is_multicast(),
        };
        if bad_local {
            return Err(format!(
                "local address {local} is multicast or broadcast; grant a unicast or wildcard address"
            ));
        }
        Ok(Filter { direction, proto, local, ports, peers })
    }

    /// Direction.
    pub fn direction(&self) -> Direction {
        self.direction
    }
    /// Protocol.
    pub fn proto(&self) -> Proto {
        self.proto
    }
    /// Local address (a wildcard matches every local address of its family; `::` both).
    pub fn local(&self) -> IpAddr {
        self.local
    }
    /// Local ports.
    pub fn ports(&self) -> PortRange {
        self.ports
    }
    /// Peers it is limited to; empty for any.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// True if one packet could match both filters. Direction does not separate filters: a
    /// port is one container's whether it sends from it or receives on it. Peer lists do:
    /// two filters on one port whose peer lists are disjoint can be told apart by the switch.
    pub fn overlaps(&self, o: &Filter) -> bool {
        self.proto == o.proto
            && self.ports.intersects(&o.ports)
            && addrs_overlap(self.local, o.local)
            && (self.peers.is_empty()
                || o.peers.is_empty()
                || self.peers.iter().any(|p| o.peers.iter().any(|q| p.overlaps(q))))
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let local = match self.local {
            IpAddr::V6(a) => format!("[{a}]"),
            a => a.to_string(),
        };
        write!(f, "{} {} {local}:{}", self.direction, self.proto, self.ports)?;
        if !self.peers.is_empty() {
            let p: Vec<String> = self.peers.iter().map(Peer::to_string).collect();
            write!(f, " peers {}", p.join(","))?;
        }
        Ok(())
    }
}

/// A grant as the daemon lists it (without its token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantInfo {
    /// Its number.
    pub id: GrantId,
    /// What it allows.
    pub filter: Filter,
    /// Pids of the containers holding it (the first is the one that asked for it).
    pub holders: Vec<u32>,
    /// When it was made, in seconds since the Unix epoch.
    pub created: u64,
}

/// A container as the daemon lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerInfo {
    /// Its process id (a container is one process).
    pub pid: u32,
    /// The name it registered with.
    pub name: Name,
    /// Its user id.
    pub uid: u32,
    /// Its parent's pid when it registered.
    pub parent: u32,
    /// When it registered, in seconds since the Unix epoch.
    pub registered: u64,
    /// Grants it holds.
    pub grants: Vec<GrantId>,
}

/// The daemon itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonInfo {
    /// Its pid.
    pub pid: u32,
    /// Its build.
    pub version: String,
    /// Protocol versions it speaks.
    pub protocol: (u16, u16),
    /// Its socket.
    pub socket: String,
    /// Its store.
    pub store: String,
    /// Seconds since it started.
    pub uptime: u64,
    /// Grants per container at most.
    pub max_grants: u32,
    /// Ports per container at most (a range counts each port).
    pub max_ports: u32,
}

/// What the control daemon counts (since it started).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonCounters {
    /// Connections accepted.
    pub connections: u64,
    /// Connections closed for a protocol error or a timeout.
    pub dropped_clients: u64,
    /// Requests answered.
    pub requests: u64,
    /// Requests refused, by reason (the error's code).
    pub refusals: BTreeMap<String, u64>,
    /// Containers registered.
    pub registered: u64,
    /// Containers whose process died and whose grants were reclaimed.
    pub reclaimed: u64,
    /// Grants made.
    pub grants: u64,
    /// Grants revoked.
    pub revoked: u64,
    /// Grants released because their last holder died or left.
    pub released: u64,
}

/// One container's share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerStats {
    /// Its pid.
    pub pid: u32,
    /// Its name.
    pub name: Name,
    /// Grants it holds.
    pub grants: u32,
    /// Ports those grants cover.
    pub ports: u32,
}

/// The software switch's counters, per container (filled in when the emulator's switch
/// reports to the daemon; reserved in the protocol now so clients need no new version).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchStats {
    /// Per container, by pid.
    pub containers: Vec<ContainerTraffic>,
    /// The uplink, if the switch has one ("tx": frames sent out to the kernel's network,
    /// "rx": frames that came in from it; its `pid` is 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<ContainerTraffic>,
}

/// Frames through the switch for one container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerTraffic {
    /// Its pid.
    pub pid: u32,
    /// Frames sent.
    pub tx_frames: u64,
    /// Frames received.
    pub rx_frames: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames dropped, by reason.
    pub drops: BTreeMap<String, u64>,
    /// Version 5: live secure bindings the container holds a side of (left out when 0, so
    /// older clients, which refuse unknown fields, still read the counters).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bindings: u64,
    /// Version 5: secure binding sides ever handed to the container (left out when 0). Its
    /// flows' frames on them bypass the switch and are not in the frame counters.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bound: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Decodes a request frame's body.
pub fn decode_request(body: &[u8]) -> Result<RequestFrame, serde_json::Error> {
    serde_json::from_slice(body)
}

/// Decodes a reply frame's body.
pub fn decode_reply(body: &[u8]) -> Result<ReplyFrame, serde_json::Error> {
    serde_json::from_slice(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(local: &str, lo: u16, hi: u16) -> Filter {
        Filter::new(
            Direction::In,
            Proto::Tcp,
            local.parse().unwrap(),
            PortRange::new(lo, hi).unwrap(),
            vec![],
        )
        .unwrap()
    }

    #[test]
    fn requests_round_trip_as_json() {
        let f = RequestFrame { seq: 7, req: Request::Grant { filter: filter("0.0.0.0", 6379, 6379) } };
        let s = serde_json::to_string(&f).unwrap();
        assert_eq!(
            s,
            r#"{"seq":7,"req":{"op":"grant","filter":{"direction":"in","proto":"tcp","local":"0.0.0.0","ports":{"lo":6379,"hi":6379}}}}"#
        );
        assert_eq!(decode_request(s.as_bytes()).unwrap(), f);
        let s = r#"{"seq":1,"req":{"op":"status"}}"#;
        assert_eq!(decode_request(s.as_bytes()).unwrap().req, Request::Status {});
    }

    #[test]
    fn bind_round_trips_and_its_flow_is_checked() {
        let req = RequestFrame {
            seq: 3,
            req: Request::Bind {
                proto: Proto::Udp,
                local: "127.0.0.1:5000".parse().unwrap(),
                remote: "[::ffff:127.0.0.1]:53".parse().unwrap(),
            },
        };
        let s = serde_json::to_string(&req).unwrap();
        assert_eq!(
            s,
            r#"{"seq":3,"req":{"op":"bind","proto":"udp","local":"127.0.0.1:5000","remote":"[::ffff:127.0.0.1]:53"}}"#
        );
        assert_eq!(decode_request(s.as_bytes()).unwrap(), req);
        let reply = ReplyFrame {
            seq: 3,
            result: Outcome::Ok(Response::Bound {
                binding: crate::emulator::BindingInfo { side: 1, slot: 7, id: 42, peer: 3, role: 1, bit: 5 },
            }),
        };
        let s = serde_json::to_string(&reply).unwrap();
        assert_eq!(
            s,
            r#"{"seq":3,"result":{"ok":{"op":"bound","binding":{"side":1,"slot":7,"id":42,"peer":3,"role":1,"bit":5}}}}"#
        );
        assert_eq!(decode_reply(s.as_bytes()).unwrap(), reply);
        assert!(
            decode_request(br#"{"seq":1,"req":{"op":"bind","proto":"tcp","local":"127.0.0.1:1"}}"#).is_err()
        );
        assert!(decode_request(
            br#"{"seq":1,"req":{"op":"bind","proto":"tcp","local":"127.0.0.1:1","remote":"127.0.0.1:2","x":1}}"#
        )
        .is_err());

        let sa = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        assert_eq!(
            bind_flow(sa("[::ffff:127.0.0.1]:5000"), sa("127.0.0.1:53")),
            Ok((sa("127.0.0.1:5000"), sa("127.0.0.1:53")))
        );
        assert!(bind_flow(sa("[::1]:5000"), sa("[::1]:6379")).is_ok());
        for (l, r) in [
            ("127.0.0.1:0", "127.0.0.1:53"),
            ("127.0.0.1:5000", "127.0.0.1:0"),
            ("0.0.0.0:5000", "127.0.0.1:53"),
            ("127.0.0.1:5000", "[::]:53"),
            ("127.0.0.1:5000", "224.0.0.1:53"),
            ("127.0.0.1:5000", "255.255.255.255:53"),
            ("[ff02::1]:5000", "[::1]:53"),
            ("127.0.0.1:5000", "[::1]:53"),
            ("[::ffff:127.0.0.1]:5000", "[::1]:53"),
        ] {
            let e = bind_flow(sa(l), sa(r));
            assert!(e.is_err(), "{l} -> {r}");
        }
    }

    #[test]
    fn invalid_values_are_refused_on_decode() {
        let bad = [
            r#"{"seq":1,"req":{"op":"register","name":""}}"#,
            r#"{"seq":1,"req":{"op":"register","name":"a b"}}"#,
            r#"{"seq":1,"req":{"op":"register","name":"x","pid":1}}"#,
            r#"{"seq":1,"req":{"op":"grant","filter":{"direction":"in","proto":"tcp","local":"0.0.0.0","ports":{"lo":0,"hi":1}}}}"#,
            r#"{"seq":1,"req":{"op":"grant","filter":{"direction":"in","proto":"tcp","local":"0.0.0.0","ports":{"lo":9,"hi":8}}}}"#,
            r#"{"seq":1,"req":{"op":"grant","filter":{"direction":"in","proto":"sctp","local":"0.0.0.0","ports":{"lo":1,"hi":1}}}}"#,
            r#"{"seq":1,"req":{"op":"grant","filter":{"direction":"in","proto":"tcp","local":"224.0.0.1","ports":{"lo":1,"hi":1}}}}"#,
            r#"{"seq":1,"req":{"op":"inherit","id":1,"token":"00"}}"#,
            r#"{"seq":1,"req":{"op":"inherit","id":1,"token":"0123456789ABCDEF0123456789abcdef"}}"#,
            r#"{"seq":1,"req":{"op":"launch_missiles"}}"#,
            r#"{"seq":1}"#,
            r#"[]"#,
        ];
        for b in bad {
            assert!(decode_request(b.as_bytes()).is_err(), "{b}");
        }
        let peers: Vec<String> = (0..=MAX_PEERS).map(|i| format!(r#"{{"addr":"10.0.0.{i}"}}"#)).collect();
        let s = format!(
            r#"{{"seq":1,"req":{{"op":"grant","filter":{{"direction":"in","proto":"tcp","local":"::","ports":{{"lo":1,"hi":1}},"peers":[{}]}}}}}}"#,
            peers.join(",")
        );
        assert!(decode_request(s.as_bytes()).is_err());
    }

    #[test]
    fn uplink_addresses_are_validated() {
        let a = IfAddr::parse("10.77.0.2/24").unwrap();
        assert_eq!((a.addr(), a.prefix()), ("10.77.0.2".parse().unwrap(), 24));
        assert!(a.contains("10.77.0.200".parse().unwrap()));
        assert!(!a.contains("10.77.1.1".parse().unwrap()));
        assert!(!a.contains("::1".parse().unwrap()));
        assert!(IfAddr::parse("fd00::2/64").unwrap().contains("fd00::9".parse().unwrap()));
        assert!(IfAddr::parse("10.0.0.1/32").unwrap().contains("10.0.0.1".parse().unwrap()));
        for bad in [
            "10.77.0.2",
            "10.77.0.2/33",
            "10.77.0.2/0",
            "127.0.0.1/8",
            "0.0.0.0/0",
            "::ffff:1.2.3.4/96",
            "x/8",
        ] {
            assert!(IfAddr::parse(bad).is_err(), "{bad}");
        }
        let json = r#"{"tcp_ports":{"lo":61000,"hi":61127},"udp_ports":{"lo":61000,"hi":61127},"grants":[1,2],"addrs":[{"addr":"10.77.0.2","prefix":24}]}"#;
        let nic: NicInfo = serde_json::from_str(json).unwrap();
        assert_eq!(nic.addrs, vec![a]);
        assert!(serde_json::from_str::<NicInfo>(&json.replace("24}", "40}")).is_err());
    }

    #[test]
    fn tokens_are_hex_and_not_debug_printed() {
        let t = Token([0xab; 16]);
        let s: String = t.into();
        assert_eq!(s, "ab".repeat(16));
        assert_eq!(Token::try_from(s).unwrap(), t);
        assert_eq!(format!("{t:?}"), "Token(..)");
    }

    #[test]
    fn overlap_rules() {
        assert!(filter("0.0.0.0", 80, 80).overlaps(&filter("127.0.0.1", 80, 80)));
        assert!(filter("::", 80, 80).overlaps(&filter("127.0.0.1", 80, 80)));
        assert!(filter("::ffff:127.0.0.1", 80, 80).overlaps(&filter("127.0.0.1", 80, 80)));
        assert!(!filter("127.0.0.2", 80, 80).overlaps(&filter("127.0.0.1", 80, 80)));
        assert!(!filter("::1", 80, 80).overlaps(&filter("127.0.0.1", 80, 80)));
        assert!(filter("::1", 8000, 8100).overlaps(&filter("::", 8100, 8200)));
        assert!(!filter("::1", 8000, 8099).overlaps(&filter("::", 8100, 8200)));
        let udp = Filter::new(
            Direction::Out,
            Proto::Udp,
            "0.0.0.0".parse().unwrap(),
            PortRange::one(80).unwrap(),
            vec![],
        )
        .unwrap();
        assert!(!udp.overlaps(&filter("0.0.0.0", 80, 80)));
        // Disjoint peer lists separate two filters on one port.
        let with_peer = |a: &str| {
            Filter::new(
                Direction::Both,
                Proto::Udp,
                "0.0.0.0".parse().unwrap(),
                PortRange::one(53).unwrap(),
                vec![Peer { addr: a.parse().unwrap(), ports: None }],
            )
            .unwrap()
        };
        assert!(!with_peer("10.0.0.1").overlaps(&with_peer("10.0.0.2")));
        assert!(with_peer("10.0.0.1").overlaps(&with_peer("0.0.0.0")));
    }

    #[test]
    fn filters_print_for_humans() {
        assert_eq!(filter("0.0.0.0", 6379, 6379).to_string(), "in tcp 0.0.0.0:6379");
        assert_eq!(filter("::1", 8000, 8099).to_string(), "in tcp [::1]:8000-8099");
    }
}
