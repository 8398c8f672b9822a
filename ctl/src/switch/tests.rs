//! Two smoltcp stacks, each on an `EmulatorNic`, talking through the switch.

use super::*;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use arrakis_backends::emulator::filter::{Direction, Filter, Proto};
use arrakis_backends::emulator::{create, EmulatorNic, Geometry};
use arrakis_backends::smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use arrakis_backends::smoltcp::phy::{Device, TxToken as _};
use arrakis_backends::smoltcp::socket::{tcp, udp};
use arrakis_backends::smoltcp::time::Instant as SmolInstant;
use arrakis_backends::smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};

const A: [u8; 4] = [10, 0, 0, 1];
const B: [u8; 4] = [10, 0, 0, 2];

fn ip(a: [u8; 4]) -> IpAddr {
    IpAddr::from(a)
}

struct Host {
    nic: EmulatorNic,
    iface: Interface,
    sockets: SocketSet<'static>,
}

impl Host {
    fn new(addr: [u8; 4], nic: EmulatorNic) -> Host {
        let mut nic = nic;
        let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut nic, SmolInstant::now());
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::v4(addr[0], addr[1], addr[2], addr[3]), 24));
        });
        Host { nic, iface, sockets: SocketSet::new(vec![]) }
    }

    fn poll(&mut self) {
        self.iface.poll(SmolInstant::now(), &mut self.nic, &mut self.sockets);
    }

    fn udp(&mut self, port: u16) -> SocketHandle {
        let buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16384]);
        let mut s = udp::Socket::new(buf(), buf());
        s.bind(port).unwrap();
        self.sockets.add(s)
    }

    fn send_udp(&mut self, h: SocketHandle, to: [u8; 4], port: u16, data: &[u8]) {
        let ep = IpEndpoint::new(IpAddress::v4(to[0], to[1], to[2], to[3]), port);
        self.sockets.get_mut::<udp::Socket>(h).send_slice(data, ep).unwrap();
        self.poll();
    }

    fn recv_udp(&mut self, h: SocketHandle) -> Option<(Vec<u8>, u16)> {
        self.poll();
        let s = self.sockets.get_mut::<udp::Socket>(h);
        s.recv().ok().map(|(d, meta)| (d.to_vec(), meta.endpoint.port))
    }
}

/// A switch with hosts A and B attached under the given grants.
fn setup(a: Vec<Filter>, b: Vec<Filter>) -> (Switch, Host, Host, PortId, PortId) {
    let mut sw = Switch::new().unwrap();
    let (fa, pa) = create(Geometry::default()).unwrap();
    let (fb, pb) = create(Geometry::default()).unwrap();
    let ia = sw.attach("a", pa, Grants { addrs: vec![ip(A)], filters: a }).unwrap();
    let ib = sw.attach("b", pb, Grants { addrs: vec![ip(B)], filters: b }).unwrap();
    let ha = Host::new(A, EmulatorNic::from_fds(fa).unwrap());
    let hb = Host::new(B, EmulatorNic::from_fds(fb).unwrap());
    (sw, ha, hb, ia, ib)
}

fn tcp_socket() -> tcp::Socket<'static> {
    let buf = || tcp::SocketBuffer::new(vec![0; 256 * 1024]);
    tcp::Socket::new(buf(), buf())
}

#[test]
fn tcp_and_udp_cross_the_switch_while_it_sleeps_between_bursts() {
    let a_grants = vec![
        Filter {
            direction: Direction::Both,
            proto: Proto::Tcp,
            local: None,
            ports: 40000..=40999,
            peers: vec![],
        },
        Filter::port(Proto::Udp, 5000),
    ];
    let b_grants = vec![Filter::port(Proto::Tcp, 80), Filter::port(Proto::Udp, 5353)];
    let (mut sw, mut ha, mut hb, ia, ib) = setup(a_grants, b_grants);

    let server = hb.sockets.add(tcp_socket());
    hb.sockets.get_mut::<tcp::Socket>(server).listen(80).unwrap();
    let client = ha.sockets.add(tcp_socket());
    let cx = ha.iface.context();
    ha.sockets.get_mut::<tcp::Socket>(client).connect(cx, (IpAddress::v4(10, 0, 0, 2), 80), 40001).unwrap();

    let payload: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    let sw = std::thread::scope(|s| {
        let switch = s.spawn(|| {
            sw.run(&stop).unwrap();
            sw
        });
        let (mut sent, mut got) = (0, Vec::with_capacity(payload.len()));
        while got.len() < payload.len() {
            assert!(Instant::now() < deadline, "TCP transfer stalled at {} bytes", got.len());
            ha.poll();
            let c = ha.sockets.get_mut::<tcp::Socket>(client);
            if c.can_send() && sent < payload.len() {
                sent += c.send_slice(&payload[sent..]).unwrap();
            }
            ha.poll();
            hb.poll();
            let sv = hb.sockets.get_mut::<tcp::Socket>(server);
            if sv.can_recv() {
                sv.recv(|b| {
                    got.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            hb.poll();
            // Idle sometimes so the switch goes to sleep and must be rung.
            if got.len() % 7 == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        assert!(got == payload, "TCP payload corrupted");

        // UDP request and reply after a pause long enough for the switch to sleep.
        std::thread::sleep(Duration::from_millis(5));
        let ua = ha.udp(5000);
        let ub = hb.udp(5353);
        ha.send_udp(ua, B, 5353, b"query");
        let (q, from) = loop {
            assert!(Instant::now() < deadline, "UDP query lost");
            if let Some(r) = hb.recv_udp(ub) {
                break r;
            }
            std::thread::yield_now();
        };
        assert_eq!((q.as_slice(), from), (&b"query"[..], 5000));
        hb.send_udp(ub, A, 5000, b"answer");
        let (r, from) = loop {
            assert!(Instant::now() < deadline, "UDP answer lost");
            if let Some(r) = ha.recv_udp(ua) {
                break r;
            }
            std::thread::yield_now();
        };
        assert_eq!((r.as_slice(), from), (&b"answer"[..], 5353));
        stop.store(true, Ordering::Relaxed);
        switch.join().unwrap()
    });
    let (sa, sb) = (sw.stats(ia).unwrap(), sw.stats(ib).unwrap());
    eprintln!(
        "a: {sa:?}\nb: {sb:?}\nswitch sleeps: {}, kicks a/b: {}/{}",
        sw.sleeps, ha.nic.tx_kicks, hb.nic.tx_kicks
    );
    assert_eq!(sa.drops, Drops::default());
    assert_eq!(sb.drops.src_not_granted + sb.drops.no_route + sb.drops.malformed, 0);
    assert!(sa.tx_bytes > payload.len() as u64);
    assert_eq!(sa.tx_frames, sb.rx_frames + sb.drops.queue_full);
    assert_eq!(sb.tx_frames, sa.rx_frames + sa.drops.queue_full);
    assert!(sw.sleeps > 0, "the switch never slept");
    assert_eq!((sa.bad_desc, sa.bad_index, sb.bad_desc, sb.bad_index), (0, 0, 0, 0));
}

/// A `Write` into a shared buffer, for captures.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn ungranted_unrouted_and_malformed_frames_are_dropped_and_counted() {
    let (mut sw, mut ha, mut hb, ia, ib) =
        setup(vec![Filter::port(Proto::Udp, 5000)], vec![Filter::port(Proto::Udp, 5353)]);
    let cap = Shared::default();
    sw.capture(ia, Box::new(cap.clone()), None).unwrap();
    let ub = hb.udp(5353);

    // Granted: delivered.
    let ok = ha.udp(5000);
    ha.send_udp(ok, B, 5353, b"fine");
    sw.poll();
    assert_eq!(hb.recv_udp(ub), Some((b"fine".to_vec(), 5000)));

    // From a port A was not granted: dropped at the switch, B sees nothing.
    let rogue = ha.udp(6000);
    ha.send_udp(rogue, B, 5353, b"spoof");
    sw.poll();
    assert_eq!(hb.recv_udp(ub), None);
    assert_eq!(sw.stats(ia).unwrap().drops.src_not_granted, 1);

    // To a port nobody was granted.
    ha.send_udp(ok, B, 9999, b"nobody");
    sw.poll();
    assert_eq!(sw.stats(ia).unwrap().drops.no_route, 1);

    // Garbage straight onto the ring.
    let t = SmolInstant::now();
    ha.nic.transmit(t).unwrap().consume(20, |b| b.fill(0x45));
    ha.nic.transmit(t).unwrap().consume(3, |b| b.fill(0xff));
    sw.poll();
    assert_eq!(sw.stats(ia).unwrap().drops.malformed, 2);

    // Revoking B's grant stops traffic at once.
    sw.set_grants(ib, Grants { addrs: vec![ip(B)], filters: vec![] });
    ha.send_udp(ok, B, 5353, b"late");
    sw.poll();
    assert_eq!(hb.recv_udp(ub), None);
    let sa = sw.stats(ia).unwrap();
    assert_eq!(
        sa.drops,
        Drops { src_not_granted: 1, no_route: 2, malformed: 2, unsupported: 0, queue_full: 0 }
    );
    assert_eq!(sa.tx_frames, 6);
    assert_eq!(sw.stats(ib).unwrap().rx_frames, 1);

    // The capture holds every frame A sent, in pcap records.
    assert_eq!(sw.stop_capture(ia).unwrap(), Some(6));
    let bytes = cap.0.lock().unwrap().clone();
    assert_eq!(&bytes[20..24], &101u32.to_le_bytes());
    let (mut off, mut records) = (24, 0);
    while off < bytes.len() {
        let incl = u32::from_le_bytes(bytes[off + 8..off + 12].try_into().unwrap()) as usize;
        off += 16 + incl;
        records += 1;
    }
    assert_eq!((off, records), (bytes.len(), 6));
}

#[test]
fn a_full_receiver_drops_as_queue_full_and_an_idle_switch_sleeps() {
    let (mut sw, mut ha, _hb, _ia, ib) =
        setup(vec![Filter::port(Proto::Udp, 5000)], vec![Filter::port(Proto::Udp, 5353)]);
    let ua = ha.udp(5000);
    // B never polls: its rx ring (512) fills.
    for _ in 0..40 {
        for _ in 0..16 {
            ha.sockets
                .get_mut::<udp::Socket>(ua)
                .send_slice(b"x", (IpAddress::v4(10, 0, 0, 2), 5353))
                .unwrap();
        }
        ha.poll();
        sw.poll();
    }
    let sb = sw.stats(ib).unwrap();
    assert_eq!(sb.rx_frames, 512);
    assert_eq!(sb.drops.queue_full, 640 - 512);

    // With nothing to do, `run` sleeps (bounded by the stop flag) instead of spinning.
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(250));
            stop.store(true, Ordering::Relaxed);
        });
        let cpu0 = cpu_time();
        sw.run(&stop).unwrap();
        let used = cpu_time() - cpu0;
        eprintln!("idle switch: {} sleeps, {used:?} CPU in 250 ms", sw.sleeps);
    });
    assert!(sw.sleeps >= 1);
}

fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[test]
fn ports_detach_and_their_slots_are_reused() {
    let (mut sw, _ha, _hb, ia, ib) = setup(vec![], vec![]);
    assert_eq!((sw.name(ia), sw.name(ib)), (Some("a"), Some("b")));
    assert!(sw.detach(ia).is_some());
    assert!(sw.detach(ia).is_none());
    assert_eq!(sw.stats(ia), None);
    let (_fds, port) = create(Geometry::default()).unwrap();
    assert_eq!(sw.attach("c", port, Grants::default()).unwrap(), ia);
    assert_eq!(sw.name(ia), Some("c"));
    let names: Vec<_> = [
        DropReason::SrcNotGranted,
        DropReason::NoRoute,
        DropReason::Malformed,
        DropReason::Unsupported,
        DropReason::QueueFull,
    ]
    .map(DropReason::as_str)
    .into();
    assert_eq!(names, ["src-not-granted", "no-route", "malformed", "unsupported", "queue-full"]);
}
