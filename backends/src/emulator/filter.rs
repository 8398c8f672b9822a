//! What the switch checks: a container's addresses and filters ([`Grants`]), and the flow a
//! frame belongs to ([`Flow::parse`]).
//!
//! This is the switch's minimal view of a grant. The control daemon's protocol has its own
//! filter type (with owners, capabilities, revocation); the daemon turns its grants into
//! these when it (re)configures a switch port, so the data plane needs nothing else:
//!
//! * `direction` — `Ingress`: the container may *receive* frames addressed to `local`:`ports`;
//!   `Egress`: it may *send* frames from `local`:`ports`; `Both` for a connection's two ends
//!   (a TCP server or client needs both on its port).
//! * `proto` — TCP or UDP; everything else is not switched.
//! * `local` — one of the container's addresses, the IPv4 wildcard `0.0.0.0` for any of its
//!   IPv4 addresses (loopback and, with an uplink, its uplink address), or `None` for any.
//! * `ports` — an inclusive range of local ports.
//! * `peers` — remote addresses allowed; empty means any.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket};

/// Which way a filter lets frames through, seen from the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
    Both,
}

/// The protocols the switch carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One granted filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub direction: Direction,
    pub proto: Proto,
    pub local: Option<IpAddr>,
    pub ports: RangeInclusive<u16>,
    pub peers: Vec<IpAddr>,
}

impl Filter {
    /// A filter for both directions on one port of any of the container's addresses.
    pub fn port(proto: Proto, port: u16) -> Filter {
        Filter { direction: Direction::Both, proto, local: None, ports: port..=port, peers: Vec::new() }
    }

    fn matches(&self, proto: Proto, local: SocketAddr, peer: IpAddr, addrs: &[IpAddr]) -> bool {
        self.proto == proto
            && self.ports.contains(&local.port())
            && match self.local {
                Some(IpAddr::V4(a)) if a.is_unspecified() => local.is_ipv4() && addrs.contains(&local.ip()),
                Some(a) => a == local.ip(),
                None => addrs.contains(&local.ip()),
            }
            && (self.peers.is_empty() || self.peers.contains(&peer))
    }
}

/// A container's addresses and filters: everything the switch knows about it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    pub addrs: Vec<IpAddr>,
    pub filters: Vec<Filter>,
}

impl Grants {
    /// May the container send this frame (from its source address and port)?
    pub fn may_send(&self, flow: &Flow) -> bool {
        self.filters.iter().any(|f| {
            f.direction != Direction::Ingress && f.matches(flow.proto, flow.src, flow.dst.ip(), &self.addrs)
        })
    }

    /// May the container receive this frame (on its destination address and port)?
    pub fn may_receive(&self, flow: &Flow) -> bool {
        self.filters.iter().any(|f| {
            f.direction != Direction::Egress && f.matches(flow.proto, flow.dst, flow.src.ip(), &self.addrs)
        })
    }
}

/// TCP flags as [`Flow::parse_with_flags`] reports them (the header's own bits).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The 5-tuple of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    pub proto: Proto,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// Why a frame has no [`Flow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not a well-formed IPv4/IPv6 packet carrying a whole TCP/UDP header.
    Malformed,
    /// Well-formed, but not TCP or UDP (ICMP, ...), or an IPv4 fragment: no stack on the
    /// switch reassembles them, so even the first, which carries the ports, is dropped.
    Unsupported,
}

impl Flow {
    /// The same flow seen from the other end.
    pub fn reversed(self) -> Flow {
        Flow { proto: self.proto, src: self.dst, dst: self.src }
    }

    /// Reads the 5-tuple of an IP frame. Checks lengths, not checksums (the receiving stack
    /// does that). IPv6 extension headers are not walked: such frames are `Unsupported`.
    pub fn parse(frame: &[u8]) -> Result<Flow, ParseError> {
        Flow::parse_with_flags(frame).map(|(f, _)| f)
    }

    /// [`parse`](Self::parse), and the TCP header's flags ([`TCP_FIN`], [`TCP_SYN`],
    /// [`TCP_RST`], [`TCP_ACK`]; 0 for UDP).
    pub fn parse_with_flags(frame: &[u8]) -> Result<(Flow, u8), ParseError> {
        let (proto, src, dst, payload): (IpProtocol, IpAddr, IpAddr, &[u8]) =
            match frame.first().map(|b| b >> 4) {
                Some(4) => {
                    let p = Ipv4Packet::new_checked(frame).map_err(|_| ParseError::Malformed)?;
                    if p.frag_offset() != 0 || p.more_frags() {
                        return Err(ParseError::Unsupported);
                    }
                    let (hl, tl) = (usize::from(p.header_len()), usize::from(p.total_len()));
                    (p.next_header(), p.src_addr().into(), p.dst_addr().into(), &frame[hl..tl])
                }
                Some(6) => {
                    let p = Ipv6Packet::new_checked(frame).map_err(|_| ParseError::Malformed)?;
                    let hl = p.header_len();
                    let end = hl + usize::from(p.payload_len());
                    (p.next_header(), p.src_addr().into(), p.dst_addr().into(), &frame[hl..end])
                }
                _ => return Err(ParseError::Malformed),
            };
        let (proto, sport, dport, flags) = match proto {
            IpProtocol::Tcp => {
                let t = TcpPacket::new_checked(payload).map_err(|_| ParseError::Malformed)?;
                let bit = |on: bool, b: u8| if on { b } else { 0 };
                let flags = bit(t.fin(), TCP_FIN)
                    | bit(t.syn(), TCP_SYN)
                    | bit(t.rst(), TCP_RST)
                    | bit(t.ack(), TCP_ACK);
                (Proto::Tcp, t.src_port(), t.dst_port(), flags)
            }
            IpProtocol::Udp => {
                let u = UdpPacket::new_checked(payload).map_err(|_| ParseError::Malformed)?;
                (Proto::Udp, u.src_port(), u.dst_port(), 0)
            }
            _ => return Err(ParseError::Unsupported),
        };
        Ok((Flow { proto, src: SocketAddr::new(src, sport), dst: SocketAddr::new(dst, dport) }, flags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn flow(proto: Proto, src: &str, dst: &str) -> Flow {
        Flow { proto, src: src.parse().unwrap(), dst: dst.parse().unwrap() }
    }

    #[test]
    fn grants_check_direction_proto_address_ports_and_peers() {
        let g = Grants {
            addrs: vec![ip("10.0.0.1")],
            filters: vec![
                Filter::port(Proto::Tcp, 80),
                Filter {
                    direction: Direction::Egress,
                    proto: Proto::Udp,
                    local: Some(ip("10.0.0.1")),
                    ports: 5000..=5009,
                    peers: vec![ip("10.0.0.2")],
                },
            ],
        };
        assert!(g.may_send(&flow(Proto::Tcp, "10.0.0.1:80", "10.0.0.9:1234")));
        assert!(g.may_receive(&flow(Proto::Tcp, "10.0.0.9:1234", "10.0.0.1:80")));
        assert!(!g.may_send(&flow(Proto::Tcp, "10.0.0.1:81", "10.0.0.9:1234")), "port");
        assert!(!g.may_send(&flow(Proto::Udp, "10.0.0.1:80", "10.0.0.9:1234")), "proto");
        assert!(!g.may_send(&flow(Proto::Tcp, "10.0.0.7:80", "10.0.0.9:1234")), "spoofed source");
        assert!(g.may_send(&flow(Proto::Udp, "10.0.0.1:5009", "10.0.0.2:53")));
        assert!(!g.may_send(&flow(Proto::Udp, "10.0.0.1:5009", "10.0.0.3:53")), "peer");
        assert!(!g.may_receive(&flow(Proto::Udp, "10.0.0.2:53", "10.0.0.1:5009")), "egress only");
    }

    #[test]
    fn the_ipv4_wildcard_is_any_ipv4_address_of_the_container() {
        let g = Grants {
            addrs: vec![ip("127.0.0.1"), ip("::1"), ip("10.77.0.2")],
            filters: vec![Filter {
                direction: Direction::Both,
                proto: Proto::Tcp,
                local: Some(ip("0.0.0.0")),
                ports: 80..=80,
                peers: vec![],
            }],
        };
        assert!(g.may_receive(&flow(Proto::Tcp, "127.0.0.1:999", "127.0.0.1:80")));
        assert!(g.may_receive(&flow(Proto::Tcp, "10.77.0.1:999", "10.77.0.2:80")));
        assert!(!g.may_receive(&flow(Proto::Tcp, "[::1]:999", "[::1]:80")), "not IPv6");
        assert!(!g.may_receive(&flow(Proto::Tcp, "10.77.0.1:999", "10.77.0.3:80")), "not its address");
        assert!(!g.may_send(&flow(Proto::Tcp, "10.9.9.9:80", "10.77.0.1:999")), "spoofed source");
    }

    #[test]
    fn flows_are_parsed_and_bad_frames_classified() {
        // IPv4 UDP 10.0.0.1:5000 -> 10.0.0.2:53, 4-byte payload.
        let mut f = vec![0x45, 0, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        f.extend_from_slice(&[0x13, 0x88, 0, 53, 0, 12, 0, 0, 1, 2, 3, 4]);
        assert_eq!(Flow::parse(&f), Ok(flow(Proto::Udp, "10.0.0.1:5000", "10.0.0.2:53")));
        let mut icmp = f.clone();
        icmp[9] = 1;
        assert_eq!(Flow::parse(&icmp), Err(ParseError::Unsupported));
        let mut frag = f.clone();
        frag[7] = 1;
        assert_eq!(Flow::parse(&frag), Err(ParseError::Unsupported));
        let mut first = f.clone();
        first[6] = 0x20; // more fragments, offset 0
        assert_eq!(Flow::parse(&first), Err(ParseError::Unsupported));
        let mut df = f.clone();
        df[6] = 0x40; // don't fragment: a whole packet
        assert!(Flow::parse(&df).is_ok());
        assert_eq!(Flow::parse(&f[..25]), Err(ParseError::Malformed));
        assert_eq!(Flow::parse(&[]), Err(ParseError::Malformed));
        assert_eq!(Flow::parse(&[0x60; 10]), Err(ParseError::Malformed));
    }

    proptest! {
        #[test]
        fn parse_never_panics(frame in proptest::collection::vec(any::<u8>(), 0..128), v in 0u8..3) {
            let mut frame = frame;
            if let Some(b) = frame.first_mut() { *b = (*b & 0x0f) | [0x40, 0x60, 0][v as usize]; }
            let _ = Flow::parse(&frame);
        }
    }
}
