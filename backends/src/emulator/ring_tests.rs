//! Ring tests: layout and validation, wrap-around, full/empty, suppression, bounds checks,
//! a two-thread and a two-process exchange without lost wake-ups, and a proptest of a peer
//! that writes arbitrary bytes into the shared control words and descriptors.

use super::*;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::Instant;

fn region(ring_size: u32) -> Arc<Region> {
    Arc::new(Region::create(Geometry { ring_size, buf_size: 256 }).unwrap())
}

fn pair(r: &Arc<Region>, ring: Ring) -> (Producer, Consumer) {
    (Producer::new(r.clone(), ring), Consumer::new(r.clone(), ring))
}

fn dup(fd: BorrowedFd<'_>) -> OwnedFd {
    rustix::io::fcntl_dupfd_cloexec(fd, 0).unwrap()
}

/// Writes `bytes` at `off` into the region through the fd, as a hostile peer could.
fn scribble(r: &Region, off: u64, bytes: &[u8]) {
    rustix::io::pwrite(r.fd(), bytes, off).unwrap();
}

#[test]
fn attach_sees_the_creators_geometry() {
    let geo = Geometry { ring_size: 64, buf_size: 1024 };
    let r = Region::create(geo).unwrap();
    let a = Region::attach(dup(r.fd())).unwrap();
    assert_eq!(a.geometry(), geo);
    assert_eq!(a.layout, r.layout);
    assert_eq!(r.layout.len % PAGE, 0);
    assert!(r.layout.bufs >= r.layout.descs[1] + 64 * 8);
}

#[test]
fn bad_geometries_are_refused() {
    for (n, b) in [(0, 2048), (3, 2048), (8192, 2048), (8, 100), (8, 2000), (8, 1 << 20)] {
        let e = Region::create(Geometry { ring_size: n, buf_size: b }).unwrap_err();
        assert!(matches!(e, RingError::Geometry(_)), "{n}/{b}: {e}");
    }
}

#[test]
fn attach_refuses_corrupt_or_foreign_regions() {
    let check = |off: u64, bytes: &[u8], want: &str| {
        let r = Region::create(Geometry { ring_size: 8, buf_size: 256 }).unwrap();
        scribble(&r, off, bytes);
        let e = Region::attach(dup(r.fd())).unwrap_err();
        assert!(e.to_string().contains(want), "{e} should mention {want}");
    };
    check(0, b"NOTANIC!", "not an Arrakis NIC or binding region");
    check(8, &1u32.to_ne_bytes(), "format version 1");
    check(12, &32u32.to_ne_bytes(), "header length");
    check(16, &7u32.to_ne_bytes(), "ring size 7");
    check(20, &100u32.to_ne_bytes(), "buffer size 100");
    check(24, &3u32.to_ne_bytes(), "3 buffers");
    // Bigger rings than the file holds, consistent otherwise.
    check(16, &[16u32.to_ne_bytes(), 256u32.to_ne_bytes(), 32u32.to_ne_bytes()].concat(), "header says");
    check(32, &1u64.to_ne_bytes(), "header says");

    // A memfd without seals, and a plain file that is too short.
    // A binding region is not a NIC, nor the reverse.
    let b = Region::create_binding(Geometry { ring_size: 8, buf_size: 256 }).unwrap();
    assert!(matches!(Region::attach(dup(b.fd())), Err(RingError::Magic(m)) if &m == b"ARRAKBND"));
    assert!(Region::attach_binding(dup(b.fd())).is_ok());
    let n = Region::create(Geometry { ring_size: 8, buf_size: 256 }).unwrap();
    assert!(matches!(Region::attach_binding(dup(n.fd())), Err(RingError::Magic(_))));

    let fd = rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, 8192).unwrap();
    assert!(matches!(Region::attach(fd), Err(RingError::NotSealed)));
    let fd = rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, 16).unwrap();
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
    assert!(matches!(Region::attach(fd), Err(RingError::Length { file: 16, .. })));
}

#[test]
fn slot_words_are_shared_and_bounded() {
    let r = region(8);
    let peer = Region::attach(dup(r.fd())).unwrap();
    r.slot(0).unwrap().store(7, Ordering::Release);
    r.slot(SLOTS - 1).unwrap().store(9, Ordering::Release);
    assert_eq!(peer.slot(0).unwrap().load(Ordering::Acquire), 7);
    assert_eq!(peer.slot(SLOTS - 1).unwrap().load(Ordering::Acquire), 9);
    assert!(r.slot(SLOTS).is_none());
    // The slots do not overlap the rings.
    let (mut p, mut c) = pair(&r, Ring::Tx);
    p.push_copy(b"x").unwrap();
    let mut out = [0u8; 256];
    assert_eq!(c.recv_copy(&mut out), Some(1));
    assert_eq!(peer.slot(0).unwrap().load(Ordering::Acquire), 7);
}

#[test]
fn the_size_cannot_change_once_sealed() {
    let r = region(8);
    assert!(rustix::fs::ftruncate(r.fd(), 4096).is_err());
    assert!(rustix::fs::ftruncate(r.fd(), 1 << 30).is_err());
}

#[test]
fn frames_wrap_around_in_order_and_full_and_empty_are_exact() {
    let r = region(4);
    let (mut p, mut c) = pair(&r, Ring::Tx);
    let mut out = [0u8; 256];
    assert_eq!(c.recv_copy(&mut out), None);
    let mut next_in = 0u32;
    let mut next_out = 0u32;
    for round in 0..50 {
        // Fill to capacity (1..=4 frames), then drain some.
        while p.has_space() {
            let len = 1 + (next_in as usize * 7) % 256;
            let frame: Vec<u8> = (0..len).map(|i| (next_in as usize + i) as u8).collect();
            p.push_copy(&frame).unwrap();
            next_in += 1;
        }
        assert_eq!(p.push_copy(&[1]), Err(PushError::Full));
        let take = 1 + round % 4;
        for _ in 0..take {
            let len = c.recv_copy(&mut out).unwrap();
            assert_eq!(len, 1 + (next_out as usize * 7) % 256);
            assert!(out[..len].iter().enumerate().all(|(i, &b)| b == (next_out as usize + i) as u8));
            next_out += 1;
        }
    }
    while c.recv_copy(&mut out).is_some() {
        next_out += 1;
    }
    assert_eq!(next_in, next_out);
    assert_eq!(p.push_copy(&[0; 257]), Err(PushError::TooLong));
    assert_eq!((p.faults, c.faults), (RingFaults::default(), RingFaults::default()));
}

#[test]
fn indices_wrap_past_u32_max() {
    let r = region(4);
    r.ctl(Ring::Rx).head.store(u32::MAX - 2, Ordering::Relaxed);
    r.ctl(Ring::Rx).tail.store(u32::MAX - 2, Ordering::Relaxed);
    let (mut p, mut c) = pair(&r, Ring::Rx);
    for i in 0..20u8 {
        p.push_with(3, |b| b.fill(i)).unwrap();
        assert_eq!(c.recv_with(|b| b.to_vec()).unwrap(), vec![i; 3]);
    }
    assert_eq!(c.faults, RingFaults::default());
}

#[test]
fn zero_copy_ends_lend_the_shared_buffer() {
    let r = region(8);
    let (mut p, mut c) = pair(&r, Ring::Rx);
    assert_eq!(
        p.push_with(5, |b| {
            b.copy_from_slice(b"hello");
            7
        }),
        Some(7)
    );
    assert_eq!(p.push_with(300, |_| ()), None, "longer than a buffer");
    assert_eq!(c.recv_with(|b| b.to_vec()), Some(b"hello".to_vec()));
    assert_eq!(c.recv_with(|b| b.len()), None);
}

#[test]
fn doorbells_are_suppressed_unless_the_other_side_armed() {
    let r = region(2);
    let (mut p, mut c) = pair(&r, Ring::Tx);
    p.push_copy(&[1]).unwrap();
    assert!(!p.kick_needed(), "consumer polling: no kick");
    assert!(!c.arm(), "a frame is pending: arming must say poll again");
    assert!(!p.kick_needed(), "a failed arm withdraws the request");
    let mut out = [0u8; 256];
    c.recv_copy(&mut out).unwrap();
    assert!(c.arm(), "empty: may sleep");
    p.push_copy(&[2]).unwrap();
    assert!(p.kick_needed(), "armed consumer: kick");
    c.disarm();
    assert!(!p.kick_needed());

    // The other direction: a full producer asks to be told about space.
    p.push_copy(&[3]).unwrap();
    assert!(!c.kick_needed());
    assert!(p.arm(), "full: may sleep");
    c.recv_copy(&mut out).unwrap();
    assert!(c.kick_needed(), "space freed for an armed producer");
    assert!(!p.arm(), "space now: arming says push again");
    assert!(!c.kick_needed());
}

#[test]
fn a_taken_kick_rings_once_per_request() {
    let r = region(8);
    let (mut p, mut c) = pair(&r, Ring::Tx);
    p.push_copy(&[1]).unwrap();
    assert!(!p.take_kick(), "consumer polling: no kick");
    let mut out = [0u8; 256];
    c.recv_copy(&mut out).unwrap();
    assert!(c.arm());
    p.push_copy(&[2]).unwrap();
    assert!(p.take_kick(), "armed consumer: kick");
    p.push_copy(&[3]).unwrap();
    assert!(!p.take_kick(), "the request was answered: no second kick");
    assert!(!p.kick_needed());
    // The consumer wakes, takes both, and asks again before it sleeps.
    assert_eq!(c.recv_copy(&mut out), Some(1));
    assert_eq!(c.recv_copy(&mut out), Some(1));
    assert!(c.arm());
    p.push_copy(&[4]).unwrap();
    assert!(p.take_kick());
}

#[test]
fn two_threads_exchange_with_taken_kicks_without_lost_wake_ups() {
    const N: u32 = 100_000;
    let r = region(8);
    let (p, c) = pair(&r, Ring::Tx);
    let (to_p, to_c) = (Doorbell::new().unwrap(), Doorbell::new().unwrap());
    let (pk, ck) = std::thread::scope(|s| {
        let prod = s.spawn(|| produce(p, &to_p, &to_c, N, true));
        let ck = consume(c, &to_c, &to_p, N);
        (prod.join().unwrap(), ck)
    });
    // A lost wake-up fails `consume` (its wait times out with a frame pending).
    eprintln!("taken kicks: producer kicks/sleeps {pk:?}, consumer {ck:?}");
}

#[test]
fn bad_descriptors_are_skipped_and_counted() {
    let r = region(4);
    let (mut p, mut c) = pair(&r, Ring::Tx);
    for i in 0..4u8 {
        p.push_copy(&[i; 10]).unwrap();
    }
    // Slot 0 names an rx buffer, slot 1 a buffer past the pool, slot 2 is too long.
    r.desc(Ring::Tx, 0).buf.store(4, Ordering::Relaxed);
    r.desc(Ring::Tx, 1).buf.store(u32::MAX, Ordering::Relaxed);
    r.desc(Ring::Tx, 2).len.store(257, Ordering::Relaxed);
    let mut out = [0u8; 256];
    assert_eq!(c.recv_copy(&mut out), Some(10));
    assert_eq!(out[..10], [3; 10]);
    assert_eq!(c.faults.bad_desc, 3);
    assert_eq!(c.recv_copy(&mut out), None);
}

#[test]
fn implausible_indices_read_as_empty_or_full() {
    let r = region(4);
    let (mut p, mut c) = pair(&r, Ring::Tx);
    r.ctl(Ring::Tx).head.store(1000, Ordering::Relaxed);
    let mut out = [0u8; 256];
    assert_eq!(c.recv_copy(&mut out), None);
    assert!(!c.pending());
    assert!(c.arm(), "a broken ring may be slept on");
    assert_eq!(c.faults.bad_index, 1);
    r.ctl(Ring::Tx).head.store(0, Ordering::Relaxed);
    r.ctl(Ring::Tx).tail.store(u32::MAX - 100, Ordering::Relaxed);
    assert_eq!(p.push_copy(&[1]), Err(PushError::Full));
    assert!(p.arm());
    assert_eq!(p.faults.bad_index, 2, "has_space in push and in arm");
}

/// One side of an exchange over `ring`: sends `n` numbered frames, sleeping on `mine` when
/// the ring is full and ringing `theirs` when asked. A wait that times out with work pending
/// is a lost wake-up.
/// With `take`, the producer withdraws each request it answers ([`Producer::take_kick`], as
/// the NIC does towards the switch).
fn produce(mut p: Producer, mine: &Doorbell, theirs: &Doorbell, n: u32, take: bool) -> (u64, u64) {
    let (mut kicks, mut sleeps) = (0, 0);
    let mut i = 0u32;
    while i < n {
        let len = 4 + (i % 200) as usize;
        if p.push_with(len, |b| {
            b[..4].copy_from_slice(&i.to_le_bytes());
            b[4..].fill(i as u8);
        })
        .is_some()
        {
            i += 1;
            if if take { p.take_kick() } else { p.kick_needed() } {
                theirs.ring();
                kicks += 1;
            }
            continue;
        }
        if p.arm() {
            sleeps += 1;
            let rung = mine.wait(Duration::from_secs(10)).unwrap();
            assert!(rung, "producer: lost wake-up at frame {i}");
            mine.drain();
            p.disarm();
        }
    }
    (kicks, sleeps)
}

fn consume(mut c: Consumer, mine: &Doorbell, theirs: &Doorbell, n: u32) -> (u64, u64) {
    let (mut kicks, mut sleeps) = (0, 0);
    let mut want = 0u32;
    let mut out = vec![0u8; 256];
    while want < n {
        if let Some(len) = c.recv_copy(&mut out) {
            let seq = u32::from_le_bytes(out[..4].try_into().unwrap());
            assert_eq!(seq, want, "frames out of order");
            assert_eq!(len, 4 + (want % 200) as usize);
            assert!(out[4..len].iter().all(|&b| b == want as u8), "frame {want} corrupt");
            want += 1;
            if c.kick_needed() {
                theirs.ring();
                kicks += 1;
            }
            continue;
        }
        if c.arm() {
            sleeps += 1;
            let rung = mine.wait(Duration::from_secs(10)).unwrap();
            assert!(rung, "consumer: lost wake-up at frame {want}");
            mine.drain();
            c.disarm();
        }
    }
    assert_eq!(c.faults, RingFaults::default());
    (kicks, sleeps)
}

#[test]
fn two_threads_exchange_without_lost_wake_ups() {
    const N: u32 = 200_000;
    let r = region(8); // small, so both sides fill, empty and sleep often
    let (p, c) = pair(&r, Ring::Tx);
    let (to_p, to_c) = (Doorbell::new().unwrap(), Doorbell::new().unwrap());
    let start = Instant::now();
    let (pk, ck) = std::thread::scope(|s| {
        let prod = s.spawn(|| produce(p, &to_p, &to_c, N, false));
        let ck = consume(c, &to_c, &to_p, N);
        (prod.join().unwrap(), ck)
    });
    eprintln!(
        "two threads: {N} frames in {:?} ({:.0} ns/frame); producer kicks/sleeps {pk:?}, consumer {ck:?}",
        start.elapsed(),
        start.elapsed().as_nanos() as f64 / f64::from(N)
    );
}

const CHILD_ENV: &str = "ARRAKIS_RING_TEST_CHILD";
const PROCESS_FRAMES: u32 = 100_000;

/// The consumer half of `two_processes_exchange_without_lost_wake_ups`, run in a child
/// process of this test binary; without the environment variable it does nothing.
#[test]
fn child_process_consumer() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let fds: Vec<i32> = spec.split(',').map(|s| s.parse().unwrap()).collect();
    // SAFETY: the parent passed these three inherited fds, open in this process and owned by
    // nothing else here.
    let [mem, to_c, to_p] = fds[..] else { panic!("bad {CHILD_ENV}") };
    let (mem, to_c, to_p) =
        unsafe { (OwnedFd::from_raw_fd(mem), OwnedFd::from_raw_fd(to_c), OwnedFd::from_raw_fd(to_p)) };
    let r = Arc::new(Region::attach(mem).unwrap());
    let c = Consumer::new(r, Ring::Tx);
    consume(c, &Doorbell::from_fd(to_c), &Doorbell::from_fd(to_p), PROCESS_FRAMES);
}

#[test]
fn two_processes_exchange_without_lost_wake_ups() {
    let r = region(8);
    let (to_p, to_c) = (Doorbell::new().unwrap(), Doorbell::new().unwrap());
    // Inheritable copies for the child, closed here once it is spawned.
    let inherit = |fd: BorrowedFd<'_>| {
        let fd = rustix::io::fcntl_dupfd_cloexec(fd, 100).unwrap();
        rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty()).unwrap();
        fd
    };
    let (mem, c_fd, p_fd) = (inherit(r.fd()), inherit(to_c.as_fd()), inherit(to_p.as_fd()));
    let spec = format!("{},{},{}", mem.as_raw_fd(), c_fd.as_raw_fd(), p_fd.as_raw_fd());
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "emulator::ring::tests::child_process_consumer", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, spec)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    drop((mem, c_fd, p_fd));
    let start = Instant::now();
    let pk = produce(Producer::new(r.clone(), Ring::Tx), &to_p, &to_c, PROCESS_FRAMES, false);
    // Bounded wait for the child.
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("child consumer hung");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(status.success(), "child consumer failed: {status}");
    eprintln!(
        "two processes: {PROCESS_FRAMES} frames in {:?}; producer kicks/sleeps {pk:?}",
        start.elapsed()
    );
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// Bytes of the shared control area: both RingCtls and both descriptor arrays.
    fn control_area(r: &Region) -> std::ops::Range<usize> {
        HEADER_LEN..r.layout.descs[1] + r.geometry().ring_size as usize * size_of::<Desc>()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// A peer writes anything anywhere in the control area, at any moment between our
        /// operations: no panic, no hang, nothing out of bounds, every frame handed out fits.
        #[test]
        fn a_hostile_peer_cannot_break_the_consumer_or_producer(
            writes in proptest::collection::vec((0usize..1200, proptest::collection::vec(any::<u8>(), 1..16)), 1..40),
            ring in prop_oneof![Just(Ring::Tx), Just(Ring::Rx)],
        ) {
            let r = region(16);
            let area = control_area(&r);
            let (mut p, mut c) = pair(&r, ring);
            let mut out = vec![0u8; 256];
            for (i, (off, bytes)) in writes.iter().enumerate() {
                let off = area.start + off % (area.len() - bytes.len());
                scribble(&r, off as u64, bytes);
                if i % 3 == 0 {
                    let _ = p.push_copy(&[i as u8; 40]);
                }
                for _ in 0..40 {
                    match c.recv_copy(&mut out) {
                        Some(len) => prop_assert!(len <= 256),
                        None => break,
                    }
                }
                let _ = c.recv_with(|b| assert!(b.len() <= 256));
                let _ = c.arm();
                let _ = p.arm();
                c.disarm();
                p.disarm();
            }
        }

        /// Arbitrary header bytes: attach either refuses with an error or yields a geometry
        /// that passes validation and matches the file.
        #[test]
        fn arbitrary_headers_are_refused_or_consistent(header in proptest::collection::vec(any::<u8>(), 40)) {
            let r = region(8);
            let mut h = header;
            if h[0] & 1 == 0 { h[..8].copy_from_slice(&MAGIC); }
            if h[1] & 1 == 0 { h[8..12].copy_from_slice(&VERSION.to_ne_bytes()); }
            if h[2] & 1 == 0 { h[12..16].copy_from_slice(&64u32.to_ne_bytes()); }
            scribble(&r, 0, &h);
            if let Ok(a) = Region::attach(dup(r.fd())) {
                prop_assert!(Layout::new(a.geometry()).is_ok());
                prop_assert_eq!(a.layout.len, r.layout.len);
            }
        }
    }
}

/// Not a test: frames per second through a default-sized ring between two threads, both
/// sides polling and sleeping as the NIC does. Run with
/// `cargo test --release -p arrakis-backends ring_throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn ring_throughput() {
    const N: u32 = 2_000_000;
    let r = Arc::new(Region::create(Geometry::default()).unwrap());
    let (p, c) = pair(&r, Ring::Tx);
    let (to_p, to_c) = (Doorbell::new().unwrap(), Doorbell::new().unwrap());
    let start = Instant::now();
    let (pk, ck) = std::thread::scope(|s| {
        let prod = s.spawn(|| produce(p, &to_p, &to_c, N, false));
        let ck = consume(c, &to_c, &to_p, N);
        (prod.join().unwrap(), ck)
    });
    let ns = start.elapsed().as_nanos() as f64 / f64::from(N);
    eprintln!("ring 512: {N} frames of 4..204 bytes, {ns:.0} ns/frame; producer kicks/sleeps {pk:?}, consumer {ck:?}");
}
