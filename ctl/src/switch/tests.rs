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
        sw.sleeps,
        ha.nic.tx_kicks(),
        hb.nic.tx_kicks()
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

// Secure bindings.

use arrakis_backends::emulator::binding::{self, BindingFds, BindingInfo};
use arrakis_backends::emulator::filter::Flow;
use arrakis_backends::emulator::ring::{Consumer as RingConsumer, Producer as RingProducer, Region, Ring};
use arrakis_backends::emulator::{Doorbell, NicFds};
use bind::BindRefusal;

const LO: [u8; 4] = [127, 0, 0, 1];

/// A switch with containers A (TCP 40000-40999 both ways) and B (TCP 80 both ways), both on
/// loopback, and the container ends of their NICs.
fn bind_setup(a: Vec<Filter>, b: Vec<Filter>) -> (Switch, NicFds, NicFds, PortId, PortId) {
    let mut sw = Switch::new().unwrap();
    let (fa, pa) = create(Geometry::default()).unwrap();
    let (fb, pb) = create(Geometry::default()).unwrap();
    let ia = sw.attach("a", pa, Grants { addrs: vec![ip(LO)], filters: a }).unwrap();
    let ib = sw.attach("b", pb, Grants { addrs: vec![ip(LO)], filters: b }).unwrap();
    (sw, fa, fb, ia, ib)
}

fn a_range() -> Filter {
    Filter { direction: Direction::Both, proto: Proto::Tcp, local: None, ports: 40000..=40999, peers: vec![] }
}

fn tcp(src: u16, dst: u16) -> Flow {
    Flow { proto: Proto::Tcp, src: (ip(LO), src).into(), dst: (ip(LO), dst).into() }
}

/// The container's view of its NIC's slot word `i`.
fn word(nic_region: &Region, i: u32) -> u32 {
    nic_region.slot(i as usize).unwrap().load(Ordering::Acquire)
}

fn container_region(fds: &NicFds) -> Region {
    Region::attach(rustix::io::fcntl_dupfd_cloexec(&fds.region, 0).unwrap()).unwrap()
}

fn inode(fd: &OwnedFd) -> u64 {
    rustix::fs::fstat(fd).unwrap().st_ino
}

fn ok(r: Result<(BindingInfo, BindingFds), BindRefusal>) -> (BindingInfo, BindingFds) {
    r.unwrap_or_else(|e| panic!("refused: {e}"))
}

#[test]
fn both_sides_get_one_region_and_their_slots_hold_the_id() {
    let (mut sw, fa, fb, ia, ib) = bind_setup(vec![a_range()], vec![Filter::port(Proto::Tcp, 80)]);
    let (ra, rb) = (container_region(&fa), container_region(&fb));
    let flow = tcp(40001, 80);

    let (i0, f0) = ok(sw.bind(ia, flow));
    assert_eq!(i0.side, 0);
    assert_ne!(i0.id, 0);
    assert_eq!(word(&ra, i0.slot), i0.id);
    assert_eq!(sw.stats(ia).unwrap().bindings, 1);
    assert_eq!(sw.stats(ib).unwrap().bindings, 0, "B has not asked yet");

    // Asked again: the same side, slot and id (fresh fds).
    let (again, f0b) = ok(sw.bind(ia, flow));
    assert_eq!(again, i0);
    assert_eq!(inode(&f0b.region), inode(&f0.region));
    assert_eq!(sw.stats(ia).unwrap().bindings, 1);

    // B asks for the same flow from its end: side 1 of the same binding.
    let (i1, f1) = ok(sw.bind(ib, flow.reversed()));
    assert_eq!((i1.side, i1.id), (1, i0.id));
    assert_eq!(word(&rb, i1.slot), i0.id);
    assert_eq!(inode(&f1.region), inode(&f0.region));
    assert_eq!(sw.stats(ib).unwrap().bindings, 1);
    assert_eq!(sw.bindings(), 1);
    let (i1b, _) = ok(sw.bind(ib, flow.reversed()));
    assert_eq!(i1b, i1);

    // Each side's peer bell wakes the other container (its NIC's `to_container`).
    let a_bell = Doorbell::from_fd(rustix::io::fcntl_dupfd_cloexec(&fa.to_container, 0).unwrap());
    let b_bell = Doorbell::from_fd(rustix::io::fcntl_dupfd_cloexec(&fb.to_container, 0).unwrap());
    a_bell.drain();
    b_bell.drain();
    Doorbell::from_fd(f0.peer_bell).ring();
    assert!(b_bell.drain() && !a_bell.drain());
    Doorbell::from_fd(f1.peer_bell).ring();
    assert!(a_bell.drain() && !b_bell.drain());

    // Frames side 0 pushes on Tx arrive at side 1's consumer of Tx, and back on Rx.
    let r0 = Arc::new(Region::attach_binding(f0.region).unwrap());
    let r1 = Arc::new(Region::attach_binding(f1.region).unwrap());
    assert_eq!(r0.geometry(), binding::GEOMETRY);
    let (mut tx0, mut rx1) =
        (RingProducer::new(r0.clone(), Ring::Tx), RingConsumer::new(r1.clone(), Ring::Tx));
    let (mut tx1, mut rx0) = (RingProducer::new(r1, Ring::Rx), RingConsumer::new(r0, Ring::Rx));
    let mut out = [0u8; 2048];
    for i in 0..200u32 {
        tx0.push_copy(&i.to_le_bytes()).unwrap();
        assert_eq!(rx1.recv_copy(&mut out), Some(4));
        assert_eq!(out[..4], i.to_le_bytes());
        tx1.push_copy(b"back").unwrap();
        assert_eq!(rx0.recv_copy(&mut out), Some(4));
        assert_eq!(&out[..4], b"back");
    }
    assert_eq!(rx1.recv_copy(&mut out), None);
}

#[test]
fn a_pair_shares_one_summary_page_a_bit_per_binding_and_loses_it_with_its_last() {
    use arrakis_backends::emulator::ring::Summary;
    let (mut sw, _fa, _fb, ia, ib) = bind_setup(vec![a_range()], vec![Filter::port(Proto::Tcp, 80)]);
    let page = |f: BindingFds| Summary::attach(f.summary).unwrap();
    let (x0, fx0) = ok(sw.bind(ia, tcp(40001, 80)));
    let (x1, fx1) = ok(sw.bind(ib, tcp(80, 40001)));
    let (y0, fy0) = ok(sw.bind(ia, tcp(40002, 80)));
    // A is the lower port: role 0; B role 1; one bit per binding, the same at both ends.
    assert!(ia < ib);
    assert_eq!((x0.role, x1.role, y0.role), (0, 1, 0));
    assert_eq!(x0.bit, x1.bit);
    assert_ne!(x0.bit, y0.bit);
    let (px0, px1, py0) = (page(fx0), page(fx1), page(fy0));
    assert_eq!(px0.identity().unwrap(), px1.identity().unwrap());
    assert_eq!(px0.identity().unwrap(), py0.identity().unwrap());
    // What one end marks for the other's role, the other takes, once.
    px1.mark(0, y0.bit as usize);
    let w = y0.bit as usize / 64;
    assert_eq!(py0.take(0, w), 1 << (y0.bit % 64));
    assert_eq!(py0.take(0, w), 0);
    assert!(!px0.any(1));
    // The pair's last binding gone (A detached: both revoked), a new pair gets a fresh page.
    assert!(sw.detach(ia).is_some());
    let (fc, pc) = create(Geometry::default()).unwrap();
    let ic = sw.attach("c", pc, Grants { addrs: vec![ip(LO)], filters: vec![a_range()] }).unwrap();
    let (z0, fz0) = ok(sw.bind(ic, tcp(40001, 80)));
    assert_eq!(z0.bit, 0, "bits of the gone pair are not held");
    assert_ne!(page(fz0).identity().unwrap(), px0.identity().unwrap());
    drop(fc);
}

#[test]
fn v4_mapped_ends_bind_the_ipv4_flow() {
    let (mut sw, _fa, _fb, ia, ib) = bind_setup(vec![a_range()], vec![Filter::port(Proto::Tcp, 80)]);
    let (i0, _) = ok(sw.bind(ia, tcp(40001, 80)));
    let mapped = |p: u16| std::net::SocketAddr::new("::ffff:127.0.0.1".parse().unwrap(), p);
    let (i1, _) = ok(sw.bind(ib, Flow { proto: Proto::Tcp, src: mapped(80), dst: mapped(40001) }));
    assert_eq!((i1.side, i1.id), (1, i0.id));
}

#[test]
fn bindings_the_grants_do_not_allow_both_ways_are_refused() {
    let b80 = || vec![Filter::port(Proto::Tcp, 80)];
    let egress =
        |ports| Filter { direction: Direction::Egress, proto: Proto::Tcp, local: None, ports, peers: vec![] };
    let ingress = |ports| Filter {
        direction: Direction::Ingress,
        proto: Proto::Tcp,
        local: None,
        ports,
        peers: vec![],
    };

    let (mut sw, _fa, _fb, ia, _) = bind_setup(vec![], b80());
    assert_eq!(sw.bind(ia, tcp(40001, 80)).unwrap_err(), BindRefusal::AskerMayNotSend);
    assert_eq!(sw.bind(99, tcp(40001, 80)).unwrap_err(), BindRefusal::NoPort);

    let (mut sw, _fa, _fb, ia, _) = bind_setup(vec![egress(40000..=40999)], b80());
    assert_eq!(sw.bind(ia, tcp(40001, 80)).unwrap_err(), BindRefusal::AskerMayNotReceive);

    let (mut sw, _fa, _fb, ia, _) = bind_setup(vec![a_range()], b80());
    assert_eq!(sw.bind(ia, tcp(40001, 81)).unwrap_err(), BindRefusal::NoReceiver);
    assert_eq!(sw.bind(ia, tcp(40001, 40002)).unwrap_err(), BindRefusal::ReceiverIsAsker);
    // UDP on the same ports: not granted.
    let udp = Flow { proto: Proto::Udp, ..tcp(40001, 80) };
    assert_eq!(sw.bind(ia, udp).unwrap_err(), BindRefusal::AskerMayNotSend);

    let (mut sw, _fa, _fb, ia, _) = bind_setup(vec![a_range()], vec![ingress(80..=80)]);
    assert_eq!(sw.bind(ia, tcp(40001, 80)).unwrap_err(), BindRefusal::ReceiverMayNotReply);

    // B may not ask for a flow A does not receive.
    let (mut sw, _fa, _fb, _, ib) = bind_setup(vec![egress(40000..=40999)], b80());
    assert_eq!(sw.bind(ib, tcp(80, 40001)).unwrap_err(), BindRefusal::NoReceiver);
    assert_eq!(sw.bindings(), 0);
    for e in [BindRefusal::NoSlot, BindRefusal::Taken, BindRefusal::NoReceiver] {
        assert!(e.to_string().len() > 30, "{e}");
    }
}

#[test]
fn a_full_slot_table_refuses_and_a_revoked_slot_is_reused() {
    let (mut sw, fa, _fb, ia, _) = bind_setup(vec![a_range()], vec![Filter::port(Proto::Tcp, 80)]);
    let ra = container_region(&fa);
    let mut slots = std::collections::BTreeSet::new();
    let mut ids = std::collections::BTreeSet::new();
    let mut first = None;
    for p in 0..256u16 {
        let (i, f) = ok(sw.bind(ia, tcp(40000 + p, 80)));
        assert_eq!(word(&ra, i.slot), i.id);
        slots.insert(i.slot);
        ids.insert(i.id);
        first.get_or_insert((i, f));
    }
    assert_eq!((slots.len(), ids.len()), (256, 256));
    assert_eq!(sw.bind(ia, tcp(40300, 80)).unwrap_err(), BindRefusal::NoSlot);
    assert_eq!(sw.stats(ia).unwrap().bindings, 256);
    // Nothing half-made is left by the refusal, and a closed binding frees its slot.
    assert_eq!(sw.bindings(), 256);
    let (i, f) = first.unwrap();
    Region::attach_binding(f.region).unwrap().slot(binding::CLOSED).unwrap().store(1, Ordering::Release);
    let (again, _) = ok(sw.bind(ia, tcp(40300, 80)));
    assert_eq!(again.slot, i.slot);
    assert_eq!(word(&ra, i.slot), again.id);
    assert!(!ids.contains(&again.id));
}

#[test]
fn a_grant_change_revokes_in_both_nics() {
    let (mut sw, fa, fb, ia, ib) = bind_setup(vec![a_range()], vec![Filter::port(Proto::Tcp, 80)]);
    let (ra, rb) = (container_region(&fa), container_region(&fb));
    let (i0, _) = ok(sw.bind(ia, tcp(40001, 80)));
    let (i1, _) = ok(sw.bind(ib, tcp(80, 40001)));
    // Another grant of B changes nothing.
    let more = vec![Filter::port(Proto::Tcp, 80), Filter::port(Proto::Udp, 53)];
    sw.set_grants(ib, Grants { addrs: vec![ip(LO)], filters: more });
    assert_eq!((word(&ra, i0.slot), word(&rb, i1.slot)), (i0.id, i0.id));
    // B loses port 80: revoked on both sides.
    sw.set_grants(ib, Grants { addrs: vec![ip(LO)], filters: vec![Filter::port(Proto::Udp, 53)] });
    assert_eq!((word(&ra, i0.slot), word(&rb, i1.slot)), (0, 0));
    assert_eq!((sw.stats(ia).unwrap().bindings, sw.stats(ib).unwrap().bindings, sw.bindings()), (0, 0, 0));
    // Granted again: a new binding with a new id.
    sw.set_grants(ib, Grants { addrs: vec![ip(LO)], filters: vec![Filter::port(Proto::Tcp, 80)] });
    let (again, _) = ok(sw.bind(ia, tcp(40001, 80)));
    assert_ne!(again.id, i0.id);
    assert_eq!(word(&ra, again.slot), again.id);
    // The asker's own grant shrinks: revoked too.
    sw.set_grants(ia, Grants { addrs: vec![ip(LO)], filters: vec![Filter::port(Proto::Tcp, 40002)] });
    assert_eq!(word(&ra, again.slot), 0);
    assert_eq!(sw.bindings(), 0);
}

#[test]
fn a_detach_revokes_the_ports_bindings() {
    let (mut sw, fa, fb, ia, ib) = bind_setup(vec![a_range()], vec![Filter::port(Proto::Tcp, 80)]);
    let (ra, rb) = (container_region(&fa), container_region(&fb));
    let (i0, _) = ok(sw.bind(ia, tcp(40001, 80)));
    let (i1, _) = ok(sw.bind(ib, tcp(80, 40001)));
    let (lonely, _) = ok(sw.bind(ia, tcp(40002, 80)));
    assert_eq!(sw.bindings(), 2);
    assert!(sw.detach(ib).is_some());
    assert_eq!((word(&ra, i0.slot), word(&rb, i1.slot), word(&ra, lonely.slot)), (0, 0, 0));
    assert_eq!((sw.bindings(), sw.stats(ia).unwrap().bindings), (0, 0));
}

#[test]
fn closed_and_lonely_bindings_are_collected() {
    let (mut sw, fa, fb, ia, ib) = bind_setup(vec![a_range()], vec![Filter::port(Proto::Tcp, 80)]);
    let (ra, rb) = (container_region(&fa), container_region(&fb));

    // Side 1 closes: revoked at the next collection.
    let (i0, _) = ok(sw.bind(ia, tcp(40001, 80)));
    let (i1, f1) = ok(sw.bind(ib, tcp(80, 40001)));
    let r1 = Region::attach_binding(f1.region).unwrap();
    r1.slot(binding::ATTACHED + 1).unwrap().store(1, Ordering::Release);
    assert_eq!(sw.gc_bindings(Instant::now()), 0, "attached is not closed");
    r1.slot(binding::CLOSED + 1).unwrap().store(1, Ordering::Release);
    assert_eq!(sw.gc_bindings(Instant::now()), 1);
    assert_eq!((word(&ra, i0.slot), word(&rb, i1.slot)), (0, 0));

    // Only side 0 asked: kept until the pending timeout, then revoked.
    let (lonely, _) = ok(sw.bind(ia, tcp(40002, 80)));
    assert_eq!(sw.gc_bindings(Instant::now()), 0);
    assert_eq!(sw.gc_bindings(Instant::now() + binding::PENDING_TIMEOUT / 2), 0);
    assert_eq!(sw.gc_bindings(Instant::now() + binding::PENDING_TIMEOUT + Duration::from_secs(1)), 1);
    assert_eq!(word(&ra, lonely.slot), 0);

    // `bind` collects first, and a short pending timeout is honoured by it.
    sw.set_pending_timeout(Duration::ZERO);
    let (x, _) = ok(sw.bind(ia, tcp(40003, 80)));
    let (y, _) = ok(sw.bind(ia, tcp(40004, 80)));
    assert_eq!(sw.bindings(), 1, "the lonely binding went when the next bind came");
    assert_eq!(x.slot, y.slot, "and its slot was free for the next");
    assert_eq!(word(&ra, y.slot), y.id);
}

#[test]
fn the_run_loop_collects_closed_bindings() {
    let (mut sw, fa, _fb, ia, ib) = bind_setup(vec![a_range()], vec![Filter::port(Proto::Tcp, 80)]);
    let ra = container_region(&fa);
    let (i0, f0) = ok(sw.bind(ia, tcp(40001, 80)));
    ok(sw.bind(ib, tcp(80, 40001)));
    let r0 = Region::attach_binding(f0.region).unwrap();
    r0.slot(binding::CLOSED).unwrap().store(1, Ordering::Release);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(350));
            stop.store(true, Ordering::Relaxed);
        });
        sw.run(&stop).unwrap();
    });
    assert_eq!(word(&ra, i0.slot), 0);
    assert_eq!(sw.bindings(), 0);
}

#[test]
fn a_switch_clears_slot_words_an_earlier_switch_left() {
    let mut sw = Switch::new().unwrap();
    let (fa, pa) = create(Geometry::default()).unwrap();
    let ra = container_region(&fa);
    ra.slot(3).unwrap().store(77, Ordering::Release);
    sw.attach("a", pa, Grants::default()).unwrap();
    assert_eq!(word(&ra, 3), 0);
}

#[test]
fn a_port_that_takes_over_the_route_revokes_the_binding() {
    // X comes first in the switch's order and receives nothing yet.
    let mut sw = Switch::new().unwrap();
    let (_fx, px) = create(Geometry::default()).unwrap();
    let (fa, pa) = create(Geometry::default()).unwrap();
    let (_fb, pb) = create(Geometry::default()).unwrap();
    let ix = sw.attach("x", px, Grants { addrs: vec![ip(LO)], filters: vec![] }).unwrap();
    let ia = sw.attach("a", pa, Grants { addrs: vec![ip(LO)], filters: vec![a_range()] }).unwrap();
    let ib = sw
        .attach("b", pb, Grants { addrs: vec![ip(LO)], filters: vec![Filter::port(Proto::Tcp, 80)] })
        .unwrap();
    let ra = container_region(&fa);
    let (i0, _) = ok(sw.bind(ia, tcp(40001, 80)));
    ok(sw.bind(ib, tcp(80, 40001)));
    // A grant of X elsewhere changes nothing.
    sw.set_grants(ix, Grants { addrs: vec![ip(LO)], filters: vec![Filter::port(Proto::Tcp, 81)] });
    assert_eq!(word(&ra, i0.slot), i0.id);
    // X now receives on port 80 and comes first: the switch would route the flow to X, so
    // the binding (to B) no longer matches the switch's routing.
    sw.set_grants(ix, Grants { addrs: vec![ip(LO)], filters: vec![Filter::port(Proto::Tcp, 80)] });
    assert_eq!(word(&ra, i0.slot), 0);
    assert_eq!(sw.bindings(), 0);
    assert_eq!(sw.bind(ib, tcp(80, 40001)).map(|_| ()).unwrap_err(), BindRefusal::RepliesElsewhere);
    // A's flow now binds with X, where the switch sends it.
    let (x0, _) = ok(sw.bind(ia, tcp(40001, 80)));
    let (x1, _) = ok(sw.bind(ix, tcp(80, 40001)));
    assert_eq!((x0.side, x1.side, x0.id), (0, 1, x1.id));
}

#[test]
fn the_switch_stops_spinning_after_two_empty_spins_and_tries_again_later() {
    let spin = Duration::from_micros(50);
    let t = Instant::now();
    let mut p = SpinPolicy::default();
    assert!(p.may_spin(t));
    p.miss(t, spin);
    assert!(p.may_spin(t), "one empty spin is not enough");
    p.miss(t, spin);
    assert!(!p.may_spin(t + spin), "two in a row: no spin");
    assert!(!p.may_spin(t + spin * (SPIN_BACKOFF - 1)));
    assert!(p.may_spin(t + spin * SPIN_BACKOFF), "after the back-off it tries again");
    // The first spin after the back-off that misses backs off again at once.
    let later = t + spin * SPIN_BACKOFF;
    p.miss(later, spin);
    assert!(!p.may_spin(later + spin));
    // A spin that finds a frame ends it all.
    p.hit();
    assert!(p.may_spin(later + spin));
    p.miss(later, spin);
    assert!(p.may_spin(later + spin), "one miss after a hit is not enough");
}
