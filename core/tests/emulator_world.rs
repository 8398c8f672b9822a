//! The library OS's sockets over an emulator NIC instead of the in-process loopback: the
//! process's world is attached to a NIC whose switch side is a *reflector* thread here (it
//! sends every frame back, as a switch does for a container talking to its own granted
//! ports). Frames now come back asynchronously, from another thread, through shared-memory
//! rings and eventfd doorbells, so the progress thread must wake on the doorbell and blocked
//! calls on their futex words. A TCP connection carries 4 MiB checked byte by byte, and a UDP
//! datagram makes the round trip.
//!
//! One test per binary: the world is per process.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrakis_backends::any::AnyDevice;
use arrakis_backends::emulator::{self, EmulatorNic, Geometry};
use arrakis_core::event::{poll_end, poll_lib, poll_lib_or_end, PollObj, Poller};
use arrakis_core::net::socket::{Accepted, Family, Kind, Socket};
use arrakis_core::net::world::attach_device;

const POLLIN: u32 = 1;

#[test]
fn sockets_over_an_emulator_nic() {
    let (fds, mut port) = emulator::create(Geometry::default()).expect("a NIC");
    let nic = EmulatorNic::from_fds(fds).expect("attach the container side");
    assert!(attach_device(AnyDevice::from(nic)).is_ok(), "before the first socket");

    let stop = Arc::new(AtomicBool::new(false));
    // Once set, the reflector holds each frame back 50 ms: the receiver is surely asleep
    // when it lands, and only the progress thread (woken by the doorbell) can run the stack.
    let slow = Arc::new(AtomicBool::new(false));
    let reflector = {
        let stop = stop.clone();
        let slow = slow.clone();
        std::thread::spawn(move || {
            // As the switch: room for the largest frame the NIC takes (`recv_copy` cuts).
            let mut buf = vec![0u8; Geometry::default().buf_size as usize];
            let mut reflected = 0u64;
            let end = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                let mut moved = false;
                while let Some(n) = port.tx.recv_copy(&mut buf) {
                    moved = true;
                    if slow.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    // A full rx ring drops, as the switch's queue-full.
                    if port.rx.push_copy(&buf[..n]).is_ok() {
                        reflected += 1;
                    }
                }
                if moved {
                    if port.rx.kick_needed() {
                        port.peer.ring();
                    }
                    if port.tx.kick_needed() {
                        port.peer.ring();
                    }
                    continue;
                }
                if port.tx.arm() {
                    let _ = port.bell.wait(Duration::from_millis(100));
                    port.bell.drain();
                }
                port.tx.disarm();
            }
            reflected
        })
    };

    // TCP: listener, blocking connect, accept, 4 MiB each way checked.
    let l = Socket::new(Family::V4, Kind::Stream, false);
    l.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    l.listen(16).expect("listen");
    let addr: SocketAddr = l.local_addr().expect("name");
    let c = Socket::new(Family::V4, Kind::Stream, false);
    c.connect(Some(addr)).expect("connect through the rings");
    let (acc, _) = l.accept(false, false).expect("accept");
    let Accepted::Lib(s) = acc else { panic!("a library connection was expected") };
    const N: usize = 4 << 20;
    let data: Vec<u8> = (0..N).map(|i| (i * 7 + i / 251) as u8).collect();
    let sender = {
        let data = data.clone();
        let c = c.clone();
        std::thread::spawn(move || {
            let mut off = 0;
            while off < data.len() {
                off += c.send(&[&data[off..]], 0, None).expect("send");
            }
        })
    };
    let mut got = vec![0u8; N];
    let mut off = 0;
    while off < N {
        let r = s.recv(&mut [&mut got[off..]], 0).expect("recv");
        assert!(r.n > 0, "early EOF at {off}");
        off += r.n;
    }
    sender.join().expect("sender");
    assert!(got == data, "the bytes came through the rings unchanged");

    // UDP round trip, with the reflector slow: the blocked recv is woken by the progress
    // thread, which the doorbell woke.
    slow.store(true, Ordering::Relaxed);
    let u1 = Socket::new(Family::V4, Kind::Dgram, false);
    u1.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let u2 = Socket::new(Family::V4, Kind::Dgram, false);
    let to = u1.local_addr().expect("name");
    u2.send(&[b"over the switch"], 0, Some(to)).expect("sendto");
    let mut b = [0u8; 64];
    let t0 = Instant::now();
    let r = u1.recv(&mut [&mut b[..]], 0).expect("recvfrom");
    assert_eq!(&b[..r.n], b"over the switch");
    assert!(t0.elapsed() >= Duration::from_millis(40), "the datagram was held back, the recv slept");
    eprintln!("udp recv waited {:?}", t0.elapsed());

    // A `poll` of library sockets only, on a futex poller (no eventfd): registered, nothing
    // ready, asleep until the held-back datagram arrives and the progress thread's stack run
    // signals it (the wake-up comes after the world lock is released).
    let p = Poller::new_futex();
    assert!(p.fd().is_none(), "a futex poller has no fd");
    let watched = [(PollObj::Socket(&u1), POLLIN)];
    let seen = p.seen();
    assert_eq!(poll_lib(&watched, Some(&p)).as_slice(), [0], "nothing to read yet");
    u2.send(&[b"poll me"], 0, Some(to)).expect("sendto");
    let t0 = Instant::now();
    let mut slept = 0;
    let mut seen = seen;
    // The generation is read before each look, as poll does.
    while poll_lib(&watched, None)[0] & POLLIN == 0 {
        assert_eq!(
            p.sleep(seen, Some(Instant::now() + Duration::from_secs(20))),
            Ok(()),
            "woken, not timed out"
        );
        slept += 1;
        seen = p.seen();
        assert!(t0.elapsed() < Duration::from_secs(20), "the poller was never woken");
    }
    poll_end(&watched, &p);
    assert!(slept >= 1 && t0.elapsed() >= Duration::from_millis(40), "it slept until the datagram came");
    let r = u1.recv(&mut [&mut b[..]], 0).expect("recvfrom");
    assert_eq!(&b[..r.n], b"poll me");

    // The same with the look that registers and the look that ends in one lock each
    // (`poll_lib_or_end`, as poll does): the look that finds the datagram unregisters the
    // poller, so the next datagram does not signal it.
    let p = Poller::new_futex();
    let mut seen = p.seen();
    assert_eq!(poll_lib_or_end(&watched, &p).as_slice(), [0], "nothing to read yet: registered");
    u2.send(&[b"poll me again"], 0, Some(to)).expect("sendto");
    let t0 = Instant::now();
    while poll_lib_or_end(&watched, &p)[0] & POLLIN == 0 {
        assert_eq!(p.sleep(seen, Some(Instant::now() + Duration::from_secs(20))), Ok(()), "woken");
        seen = p.seen();
        assert!(t0.elapsed() < Duration::from_secs(20), "the poller was never woken");
    }
    let r = u1.recv(&mut [&mut b[..]], 0).expect("recvfrom");
    assert_eq!(&b[..r.n], b"poll me again");
    let ended = p.seen();
    u2.send(&[b"not for the poller"], 0, Some(to)).expect("sendto");
    let t0 = Instant::now();
    while poll_lib(&watched, None)[0] & POLLIN == 0 {
        std::thread::sleep(Duration::from_millis(1));
        assert!(t0.elapsed() < Duration::from_secs(20), "the datagram never came");
    }
    assert_eq!(p.seen(), ended, "an unregistered poller is not signalled");
    // What a `poll` for input alone reads without the lock (`readable_now`): the datagram
    // waits, and the look above saw it.
    assert!(u1.readable_now(), "a datagram waits");
    let r = u1.recv(&mut [&mut b[..]], 0).expect("recvfrom");
    assert_eq!(&b[..r.n], b"not for the poller");
    assert!(!u1.readable_now(), "read: nothing waits");

    // A `poll` that answers from `readable_now` after a sleep returns with its poller still
    // registered. Such a poller, left on the socket's list alone, is signalled harmlessly and
    // dropped at the list's next change (here the next poll's registration): many calls do
    // not grow the list.
    let mut left = Vec::new();
    for i in 0..50 {
        let p = Poller::new_futex();
        assert_eq!(poll_lib_or_end(&watched, &p).as_slice(), [0], "round {i}: registered");
        u2.send(&[b"x"], 0, Some(to)).expect("sendto");
        let t0 = Instant::now();
        while !u1.readable_now() {
            std::thread::sleep(Duration::from_millis(1));
            // A look runs the stack, as another thread of the program would.
            let _ = poll_lib(&[(PollObj::Socket(&u2), POLLIN)], None);
            assert!(t0.elapsed() < Duration::from_secs(20), "round {i}: the datagram never came");
        }
        left.push(Arc::downgrade(&p));
        drop(p);
        let r = u1.recv(&mut [&mut b[..]], 0).expect("recvfrom");
        assert_eq!(&b[..r.n], b"x");
    }
    let alive = left.iter().filter(|w| w.upgrade().is_some()).count();
    assert!(alive <= 1, "{alive} abandoned pollers are still on the socket's list");

    stop.store(true, Ordering::Relaxed);
    let reflected = reflector.join().expect("reflector");
    let frame = Geometry::default().buf_size as usize;
    assert!(reflected > (N / frame) as u64, "the frames went through the rings ({reflected})");
}
