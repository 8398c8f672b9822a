//! TCP MSS clamping where the switch meets the uplink.
//!
//! The emulator's NICs carry 64 KiB packets (as Linux's loopback), so a container's SYN
//! announces an MSS of about 65,500 bytes. Towards a host on the kernel's network that is harmless (the host's own
//! SYN announces what its interface carries, and each side sends at most the smaller of the
//! two), but two containers behind two switches, connected through their uplinks and the
//! kernels' routing, would both announce 64 KiB and send segments no router on the way can
//! forward (smoltcp sets DF and does no path-MTU discovery). So the switch rewrites the MSS
//! option of every SYN that crosses the uplink, in either direction, to what the uplink's
//! MTU carries — what routers do (`iptables -j TCPMSS --clamp-mss-to-pmtu`) — and fixes the
//! TCP checksum incrementally (RFC 1624), so the packet is otherwise untouched.

/// Bytes of IPv4 + TCP headers without options.
const V4_OVERHEAD: u32 = 40;
/// Bytes of IPv6 + TCP headers without options.
const V6_OVERHEAD: u32 = 60;

/// If `packet` (a bare IPv4 or IPv6 packet) is a TCP SYN whose MSS option exceeds what a
/// link of `mtu` bytes carries, lowers it to that and updates the TCP checksum; returns
/// whether the packet changed. Anything else — other protocols, IPv6 extension headers,
/// fragments, truncated or malformed headers, an MSS already small enough — is left alone.
pub fn clamp(packet: &mut [u8], mtu: u32) -> bool {
    let (l4, proto, overhead) = match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= 20 => {
            // A fragment's TCP header is not (all) here, or not here at all.
            if u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0 {
                return false;
            }
            (usize::from(packet[0] & 0x0f) * 4, packet[9], V4_OVERHEAD)
        }
        Some(6) if packet.len() >= 40 => (40, packet[6], V6_OVERHEAD),
        _ => return false,
    };
    if proto != 6 || l4 < 20 || mtu <= overhead {
        return false;
    }
    let max = u16::try_from(mtu - overhead).unwrap_or(u16::MAX);
    let Some(tcp) = packet.get_mut(l4..) else { return false };
    if tcp.len() < 20 || tcp[13] & 0x02 == 0 {
        return false;
    }
    let doff = usize::from(tcp[12] >> 4) * 4;
    if doff < 20 || doff > tcp.len() {
        return false;
    }
    let mut i = 20;
    while i < doff {
        match tcp[i] {
            0 => return false,
            1 => i += 1,
            kind => {
                let Some(&len) = tcp.get(i + 1) else { return false };
                let len = usize::from(len);
                if len < 2 || i + len > doff {
                    return false;
                }
                if kind == 2 && len == 4 {
                    let old = u16::from_be_bytes([tcp[i + 2], tcp[i + 3]]);
                    if old <= max {
                        return false;
                    }
                    rewrite(tcp, i + 2, &max.to_be_bytes());
                    return true;
                }
                i += len;
            }
        }
    }
    false
}

/// Writes `new` at `at` in the TCP segment `tcp` and updates its checksum (bytes 16–17) for
/// the change: HC' = ~(~HC + Σ~m + Σm') over the 16-bit words the bytes touch (RFC 1624,
/// eqn. 3). The words are aligned to the segment's start, which is even in the packet, so
/// they are the words of the checksum's sum; `at` may be odd (an option after a NOP).
fn rewrite(tcp: &mut [u8], at: usize, new: &[u8]) {
    let (start, end) = (at & !1, (at + new.len() + 1) & !1);
    let word = |t: &[u8], w: usize| u32::from(u16::from_be_bytes([t[w], t.get(w + 1).copied().unwrap_or(0)]));
    let mut sum = u32::from(!u16::from_be_bytes([tcp[16], tcp[17]]));
    for w in (start..end).step_by(2) {
        sum += u32::from(!(word(tcp, w) as u16));
    }
    tcp[at..at + new.len()].copy_from_slice(new);
    for w in (start..end).step_by(2) {
        sum += word(tcp, w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    tcp[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        IpAddress, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, Ipv6Address, Ipv6Packet, Ipv6Repr,
        TcpOption, TcpPacket,
    };

    const A4: Ipv4Address = Ipv4Address::new(10, 77, 0, 2);
    const B4: Ipv4Address = Ipv4Address::new(10, 77, 0, 130);

    /// A TCP segment with `options` (padded to 4 bytes), `flags` at byte 13 and `payload`,
    /// its checksum filled for `src` → `dst`.
    fn segment(src: IpAddress, dst: IpAddress, options: &[u8], flags: u8, payload: &[u8]) -> Vec<u8> {
        let olen = options.len().div_ceil(4) * 4;
        let mut t = vec![0u8; 20 + olen + payload.len()];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&7300u16.to_be_bytes());
        t[4..8].copy_from_slice(&1234u32.to_be_bytes());
        t[12] = (((20 + olen) / 4) as u8) << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&65535u16.to_be_bytes());
        t[20..20 + options.len()].copy_from_slice(options);
        t[20 + olen..].copy_from_slice(payload);
        TcpPacket::new_unchecked(&mut t[..]).fill_checksum(&src, &dst);
        t
    }

    fn v4(tcp: &[u8]) -> Vec<u8> {
        let repr = Ipv4Repr {
            src_addr: A4,
            dst_addr: B4,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.len(),
            hop_limit: 64,
        };
        let mut p = vec![0u8; 20 + tcp.len()];
        let mut pkt = Ipv4Packet::new_unchecked(&mut p[..]);
        repr.emit(&mut pkt, &ChecksumCapabilities::default());
        pkt.payload_mut().copy_from_slice(tcp);
        p
    }

    fn v6(tcp: &[u8], a: Ipv6Address, b: Ipv6Address) -> Vec<u8> {
        let repr = Ipv6Repr {
            src_addr: a,
            dst_addr: b,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.len(),
            hop_limit: 64,
        };
        let mut p = vec![0u8; 40 + tcp.len()];
        let mut pkt = Ipv6Packet::new_unchecked(&mut p[..]);
        repr.emit(&mut pkt);
        pkt.payload_mut().copy_from_slice(tcp);
        p
    }

    /// The MSS option of the segment in `p` (at `l4`), if any; panics on a bad checksum.
    fn mss_of(p: &[u8], l4: usize, src: IpAddress, dst: IpAddress) -> Option<u16> {
        let t = TcpPacket::new_checked(&p[l4..]).expect("a TCP header");
        assert!(t.verify_checksum(&src, &dst), "the checksum no longer verifies");
        let mut opts = t.options();
        while !opts.is_empty() {
            let (rest, o) = TcpOption::parse(opts).expect("options parse");
            if let TcpOption::MaxSegmentSize(m) = o {
                return Some(m);
            }
            if o == TcpOption::EndOfList {
                break;
            }
            opts = rest;
        }
        None
    }

    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;

    #[test]
    fn a_v4_syn_is_clamped_to_the_mtu_and_still_verifies() {
        let (s, d) = (IpAddress::Ipv4(A4), IpAddress::Ipv4(B4));
        let mut p = v4(&segment(s, d, &[2, 4, 0x3f, 0xd8, 1, 3, 3, 7], SYN, &[]));
        assert!(clamp(&mut p, 1500));
        assert_eq!(mss_of(&p, 20, s, d), Some(1460));
        // Already small enough: untouched.
        let before = p.clone();
        assert!(!clamp(&mut p, 1500));
        assert_eq!(p, before);
    }

    #[test]
    fn a_v6_syn_ack_behind_a_nop_is_clamped() {
        let a = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
        let b = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x82);
        let (s, d) = (IpAddress::Ipv6(a), IpAddress::Ipv6(b));
        // A NOP first: the MSS value sits at an odd offset, across two checksum words.
        let mut p = v6(&segment(s, d, &[1, 2, 4, 0x3f, 0xd8, 1, 1, 0], SYN | ACK, &[]), a, b);
        assert!(clamp(&mut p, 1500));
        assert_eq!(mss_of(&p, 40, s, d), Some(1440));
    }

    #[test]
    fn other_segments_and_packets_are_left_alone() {
        let (s, d) = (IpAddress::Ipv4(A4), IpAddress::Ipv4(B4));
        let big = [2, 4, 0x3f, 0xd8];
        for mut p in [
            v4(&segment(s, d, &big, ACK, b"data")),               // not a SYN
            v4(&segment(s, d, &[1, 1, 1, 1], SYN, &[])),          // no MSS option
            v4(&segment(s, d, &[0, 2, 4, 0x3f, 0xd8], SYN, &[])), // MSS after the end of the list
            v4(&segment(s, d, &[2, 9, 0x3f, 0xd8], SYN, &[])),    // an option longer than the header
        ] {
            let before = p.clone();
            assert!(!clamp(&mut p, 1500));
            assert_eq!(p, before);
        }
        // A UDP packet, a fragment, a tiny MTU, truncated packets.
        let mut udp = v4(&segment(s, d, &big, SYN, &[]));
        udp[9] = 17;
        assert!(!clamp(&mut udp, 1500));
        let mut frag = v4(&segment(s, d, &big, SYN, &[]));
        frag[6] = 0x20; // more fragments
        assert!(!clamp(&mut frag, 1500));
        let mut p = v4(&segment(s, d, &big, SYN, &[]));
        assert!(!clamp(&mut p, 40));
        for n in 0..p.len() {
            let mut cut = p[..n].to_vec();
            let _ = clamp(&mut cut, 1500); // no panic
        }
    }

    proptest! {
        /// Options in any order, any MSS, any MTU: the checksum still verifies, the MSS is
        /// the smaller of the two, and no byte outside the MSS value and the checksum moves.
        #[test]
        fn clamping_keeps_the_checksum_and_lowers_only_the_mss(
            nops in 0usize..3,
            mss in 1u16..,
            mtu in 41u32..70_000,
            ts in any::<bool>(),
            payload in proptest::collection::vec(any::<u8>(), 0..9),
        ) {
            let (s, d) = (IpAddress::Ipv4(A4), IpAddress::Ipv4(B4));
            let mut opts = vec![1u8; nops];
            if ts {
                opts.extend_from_slice(&[8, 10, 1, 2, 3, 4, 5, 6, 7, 8]);
            }
            let at = opts.len() + 2;
            opts.extend_from_slice(&[2, 4]);
            opts.extend_from_slice(&mss.to_be_bytes());
            let mut p = v4(&segment(s, d, &opts, SYN, &payload));
            let before = p.clone();
            let want = mss.min(u16::try_from(mtu - 40).unwrap_or(u16::MAX));
            prop_assert_eq!(clamp(&mut p, mtu), want < mss);
            prop_assert_eq!(mss_of(&p, 20, s, d), Some(want));
            for (k, (x, y)) in before.iter().zip(&p).enumerate() {
                let tcp_k = k.wrapping_sub(20);
                if tcp_k != 16 && tcp_k != 17 && tcp_k != 20 + at && tcp_k != 21 + at {
                    prop_assert_eq!(x, y, "byte {} changed", k);
                }
            }
        }
    }
}
