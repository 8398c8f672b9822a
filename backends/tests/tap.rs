//! The uplink device against the real kernel, inside a network namespace this test creates
//! (`ip netns add`): a UDP packet written to the tun interface reaches a kernel socket, and the
//! kernel socket's answer comes out of the interface. Needs root (CI runs as root); without it
//! the test says so and fails unless ARRAKIS_ALLOW_SKIP=1 is set.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use arrakis_backends::emulator::tap::Tap;
use arrakis_backends::smoltcp::phy::ChecksumCapabilities;
use arrakis_backends::smoltcp::wire::{
    IpAddress, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};

const HOST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const SWITCH: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// The namespace, deleted on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(ns: &str, args: &[&str]) {
    let st = Command::new("ip").arg("-n").arg(ns).args(args).status().expect("run ip");
    assert!(st.success(), "ip -n {ns} {args:?} failed");
}

fn udp_packet(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let udp = UdpRepr { src_port: src.port(), dst_port: dst.port() };
    let (s, d): (Ipv4Address, Ipv4Address) = (*src.ip(), *dst.ip());
    let ip = Ipv4Repr {
        src_addr: s,
        dst_addr: d,
        next_header: IpProtocol::Udp,
        payload_len: udp.header_len() + payload.len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; ip.buffer_len() + ip.payload_len];
    let caps = ChecksumCapabilities::default();
    let mut p = Ipv4Packet::new_unchecked(&mut buf);
    ip.emit(&mut p, &caps);
    let mut u = UdpPacket::new_unchecked(p.payload_mut());
    udp.emit(
        &mut u,
        &IpAddress::Ipv4(s),
        &IpAddress::Ipv4(d),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &caps,
    );
    buf
}

/// (source, destination, payload) of an IPv4 UDP packet with good checksums.
fn parse_udp(buf: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4, Vec<u8>)> {
    let p = Ipv4Packet::new_checked(buf).ok()?;
    if p.next_header() != IpProtocol::Udp || !p.verify_checksum() {
        return None;
    }
    let (s, d) = (p.src_addr(), p.dst_addr());
    let u = UdpPacket::new_checked(p.payload()).ok()?;
    if !u.verify_checksum(&IpAddress::Ipv4(s), &IpAddress::Ipv4(d)) {
        return None;
    }
    Some((SocketAddrV4::new(s, u.src_port()), SocketAddrV4::new(d, u.dst_port()), u.payload().to_vec()))
}

#[test]
fn packets_cross_the_uplink_both_ways() {
    if !rustix::process::geteuid().is_root() {
        assert!(
            std::env::var_os("ARRAKIS_ALLOW_SKIP").is_some(),
            "this test creates a network namespace and a tun interface: run it as root \
             (or set ARRAKIS_ALLOW_SKIP=1 to skip it knowingly)"
        );
        eprintln!("SKIPPED (not root, ARRAKIS_ALLOW_SKIP set)");
        return;
    }
    let ns = Netns(format!("arrakis-tap-{}", std::process::id()));
    let st = Command::new("ip").args(["netns", "add", &ns.0]).status().expect("run ip");
    assert!(st.success(), "ip netns add {} failed", ns.0);
    let name = ns.0.clone();
    // Network namespaces are per thread: this thread moves into the new one, and everything
    // it opens (the tun interface, the kernel socket) belongs there.
    std::thread::spawn(move || {
        let nsfd = std::fs::File::open(format!("/run/netns/{name}")).expect("open the netns");
        rustix::thread::move_into_link_name_space(
            nsfd.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns");
        let tap = Tap::open("arktap0").expect("open the tun interface");
        assert_eq!(tap.name(), "arktap0");
        ip(&name, &["addr", "add", "10.77.0.1/24", "dev", "arktap0"]);
        ip(&name, &["link", "set", "arktap0", "up"]);
        // The MTU the switch clamps TCP's MSS to: as the administrator sets it.
        assert_eq!(tap.mtu().expect("SIOCGIFMTU"), 1500);
        ip(&name, &["link", "set", "arktap0", "mtu", "1400"]);
        assert_eq!(tap.mtu().expect("SIOCGIFMTU"), 1400);

        let sock = UdpSocket::bind(SocketAddrV4::new(HOST, 5000)).expect("bind in the netns");
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

        // In: a packet from the switch's side reaches the kernel socket.
        let from = SocketAddrV4::new(SWITCH, 4000);
        assert!(tap.send(&udp_packet(from, SocketAddrV4::new(HOST, 5000), b"hello uplink")).unwrap());
        let mut buf = [0u8; 2048];
        let (n, peer) = sock.recv_from(&mut buf).expect("the kernel socket got nothing");
        assert_eq!(&buf[..n], b"hello uplink");
        assert_eq!(peer, SocketAddr::V4(from));

        // Out: the kernel's answer comes out of the interface (among whatever else the kernel
        // sends there, e.g. IPv6 router solicitations).
        sock.send_to(b"reply", from).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            assert!(Instant::now() < deadline, "no answer came out of the tun interface");
            match tap.recv(&mut buf).unwrap() {
                Some(n) => {
                    if let Some((s, d, payload)) = parse_udp(&buf[..n]) {
                        assert_eq!(
                            (s, d, payload.as_slice()),
                            (SocketAddrV4::new(HOST, 5000), from, &b"reply"[..])
                        );
                        break;
                    }
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        // A packet that is not IP is dropped, not an error.
        assert!(!tap.send(&[0xff; 20]).unwrap());
    })
    .join()
    .expect("the test thread failed");
}
