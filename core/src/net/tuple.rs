//! Reading the demultiplexing key of an IP packet: protocol, addresses and ports.

use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket};

/// The fields of a packet that decide which socket receives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// `Tcp` or `Udp` (anything else has no ports and goes to the default shard).
    pub proto: IpProtocol,
    /// The packet's source: the remote end of the connection.
    pub src: (IpAddress, u16),
    /// The packet's destination: our end.
    pub dst: (IpAddress, u16),
}

impl FlowKey {
    /// Parses an IP packet (IP medium: the frame is the packet). `None` for anything that is
    /// not a well-formed TCP or UDP packet; smoltcp then handles it (ICMP, errors).
    pub fn of(packet: &[u8]) -> Option<FlowKey> {
        let version = packet.first()? >> 4;
        let (proto, src, dst, payload): (IpProtocol, IpAddress, IpAddress, &[u8]) = match version {
            4 => {
                let ip = Ipv4Packet::new_checked(packet).ok()?;
                // Fragments other than the first carry no ports.
                if ip.frag_offset() != 0 {
                    return None;
                }
                let hl = usize::from(ip.header_len());
                let total = usize::from(ip.total_len()).min(packet.len());
                let payload = packet.get(hl..total)?;
                (ip.next_header(), ip.src_addr().into(), ip.dst_addr().into(), payload)
            }
            6 => {
                let ip = Ipv6Packet::new_checked(packet).ok()?;
                (ip.next_header(), ip.src_addr().into(), ip.dst_addr().into(), ip.payload())
            }
            _ => return None,
        };
        let (sport, dport) = match proto {
            IpProtocol::Tcp => {
                let t = TcpPacket::new_checked(payload).ok()?;
                (t.src_port(), t.dst_port())
            }
            IpProtocol::Udp => {
                let u = UdpPacket::new_checked(payload).ok()?;
                (u.src_port(), u.dst_port())
            }
            _ => return None,
        };
        Some(FlowKey { proto, src: (src, sport), dst: (dst, dport) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_has_no_key() {
        assert_eq!(FlowKey::of(&[]), None);
        assert_eq!(FlowKey::of(&[0x45, 0, 0]), None);
        assert_eq!(FlowKey::of(&[0x60; 10]), None);
        assert_eq!(FlowKey::of(&[0x10; 60]), None);
    }
}
