//! The library OS's control-plane client against a fake daemon: start-up (hello, register,
//! nic with its three fds, the world attached to the NIC with the NIC's port blocks as
//! ephemeral ranges), grants at `bind` (asked once per (protocol, address, port), shared by
//! the process's sockets and accepted connections, revoked after the last one closes),
//! the daemon's refusals as Linux's errnos or a move to the kernel, and `lookup` for
//! destinations. The fake daemon answers from a thread; a reflector thread plays the switch
//! for the NIC (every frame comes back, as for a container talking to its own ports).
//!
//! One test per binary: the world and the attachment are per process.

use std::io::{IoSlice, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrakis_backends::emulator::{self, Geometry, SwitchPort};
use arrakis_backends::proto::{
    decode_request, frame, ContainerInfo, ErrorKind, ErrorReply, GrantId, GrantInfo, Name, NicInfo, Outcome,
    PortRange, Proto, ReplyFrame, Request, Response, Token,
};
use arrakis_core::net::control::{self, GrantKey};
use arrakis_core::net::socket::{Accepted, BindTo, Family, Kind, Socket};
use arrakis_core::Errno;

const TCP_BLOCK: (u16, u16) = (40_000, 40_099);
const UDP_BLOCK: (u16, u16) = (41_000, 41_099);
/// Ports the fake daemon refuses, and how.
const HELD_PORT: u16 = 7_000;
const QUOTA_PORT: u16 = 7_001;
const PRIVILEGED_PORT: u16 = 80;
/// The one destination `lookup` says a container serves.
const SERVED_PORT: u16 = 9_999;

/// What the fake daemon was asked, in order.
type Log = Arc<Mutex<Vec<Request>>>;

fn reply(s: &mut UnixStream, seq: u32, result: Outcome, fds: &[&OwnedFd]) {
    let bytes = frame::encode(&ReplyFrame { seq, result }).expect("encode");
    if fds.is_empty() {
        s.write_all(&bytes).expect("write");
        return;
    }
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let mut space = vec![std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut anc = rustix::net::SendAncillaryBuffer::new(&mut space);
    assert!(anc.push(rustix::net::SendAncillaryMessage::ScmRights(&borrowed)));
    let n = rustix::net::sendmsg(&*s, &[IoSlice::new(&bytes)], &mut anc, rustix::net::SendFlags::NOSIGNAL)
        .expect("sendmsg");
    s.write_all(&bytes[n..]).expect("write the rest");
}

fn refuse(kind: ErrorKind) -> Outcome {
    Outcome::Err(ErrorReply::from(kind))
}

/// While set, the fake daemon is "down": it drops every connection at its next request
/// without answering, as a daemon that died or restarts.
static DOWN: AtomicBool = AtomicBool::new(false);
/// Requests dropped while down.
static DROPPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One client connection of the fake daemon.
fn serve(mut s: UnixStream, log: Log, nic: Arc<Mutex<Option<emulator::NicFds>>>, next: Arc<Mutex<u64>>) {
    loop {
        let mut hdr = [0u8; 4];
        if s.read_exact(&mut hdr).is_err() {
            return;
        }
        let mut body = vec![0u8; u32::from_le_bytes(hdr) as usize];
        if s.read_exact(&mut body).is_err() {
            return;
        }
        let f = decode_request(&body).expect("a valid request");
        if DOWN.load(Ordering::SeqCst) {
            DROPPED.fetch_add(1, Ordering::SeqCst);
            return;
        }
        log.lock().unwrap().push(f.req.clone());
        let ok = |r| Outcome::Ok(r);
        match f.req {
            Request::Hello { .. } => {
                reply(&mut s, f.seq, ok(Response::Hello { version: 2, daemon: "fake".into() }), &[])
            }
            Request::Register { name } => {
                let container = ContainerInfo {
                    pid: std::process::id(),
                    name,
                    uid: 0,
                    parent: 1,
                    registered: 0,
                    grants: vec![],
                };
                reply(&mut s, f.seq, ok(Response::Registered { container }), &[])
            }
            Request::Nic {} => {
                let fds = nic.lock().unwrap().take().expect("one nic per test");
                let info = NicInfo {
                    tcp_ports: PortRange::new(TCP_BLOCK.0, TCP_BLOCK.1).unwrap(),
                    udp_ports: PortRange::new(UDP_BLOCK.0, UDP_BLOCK.1).unwrap(),
                    grants: vec![GrantId(1), GrantId(2)],
                    addrs: vec![],
                };
                let all = [&fds.region, &fds.to_container, &fds.to_switch];
                reply(&mut s, f.seq, ok(Response::Nic { nic: info }), &all)
            }
            Request::Grant { filter } => {
                let port = filter.ports().lo();
                let out = match port {
                    HELD_PORT => refuse(ErrorKind::HeldByContainer {
                        proto: filter.proto(),
                        port,
                        pid: 1,
                        name: Name::lossy("other"),
                        grant: GrantId(99),
                    }),
                    PRIVILEGED_PORT => refuse(ErrorKind::Privileged { port, start: 1024, uid: 1000 }),
                    QUOTA_PORT => refuse(ErrorKind::Quota {
                        pid: std::process::id(),
                        grants: 65,
                        ports: 65,
                        max_grants: 64,
                        max_ports: 4096,
                    }),
                    _ => {
                        let mut n = next.lock().unwrap();
                        *n += 1;
                        let grant = GrantInfo { id: GrantId(*n), filter, holders: vec![], created: 0 };
                        ok(Response::Granted { grant, token: Token([7; 16]) })
                    }
                };
                reply(&mut s, f.seq, out, &[])
            }
            Request::Revoke { id } => reply(&mut s, f.seq, ok(Response::Revoked { id }), &[]),
            Request::Lookup { port, .. } => {
                reply(&mut s, f.seq, ok(Response::Lookup { served: port == SERVED_PORT }), &[])
            }
            other => panic!("the library OS asked {other:?}"),
        }
    }
}

/// The switch's part: every frame goes back to the NIC.
fn reflect(mut port: SwitchPort, stop: Arc<AtomicBool>) {
    // As the switch: room for the largest frame the NIC takes (`recv_copy` cuts).
    let mut buf = vec![0u8; Geometry::default().buf_size as usize];
    let end = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        let mut moved = false;
        while let Some(n) = port.tx.recv_copy(&mut buf) {
            moved = true;
            let _ = port.rx.push_copy(&buf[..n]);
        }
        if moved {
            if port.rx.kick_needed() || port.tx.kick_needed() {
                port.peer.ring();
            }
            continue;
        }
        if port.tx.arm() {
            let _ = port.bell.wait(Duration::from_millis(50));
            port.bell.drain();
        }
        port.tx.disarm();
    }
}

fn count(log: &Log, f: impl Fn(&Request) -> bool) -> usize {
    log.lock().unwrap().iter().filter(|r| f(r)).count()
}

/// Waits (bounded) until the log holds `n` requests matching `f`.
fn wait_for(log: &Log, n: usize, f: impl Fn(&Request) -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    for _ in 0..1000 {
        if count(log, &f) >= n {
            return true;
        }
        if Instant::now() > end {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

const SOL_SOCKET: i32 = 1;
const SO_REUSEADDR: i32 = 2;

fn reuse(s: &Socket) {
    s.setsockopt(SOL_SOCKET, SO_REUSEADDR, &1i32.to_ne_bytes()).expect("SO_REUSEADDR");
}

fn a(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

fn is_grant(r: &Request) -> bool {
    matches!(r, Request::Grant { .. })
}

fn is_revoke(r: &Request) -> bool {
    matches!(r, Request::Revoke { .. })
}

fn is_lookup(r: &Request) -> bool {
    matches!(r, Request::Lookup { .. })
}

#[test]
fn the_library_os_attaches_asks_for_grants_and_looks_destinations_up() {
    let dir = std::env::temp_dir().join(format!("arrakis-ctl-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("ctl.sock");

    // No daemon yet: start-up says so and names the fix.
    let e = control::start("t", &path).expect_err("no daemon");
    assert!(e.to_string().contains("arrakis daemon"), "{e}");
    assert!(!control::active());

    let (fds, port) = emulator::create(Geometry::default()).expect("a NIC");
    let stop = Arc::new(AtomicBool::new(false));
    let reflector = {
        let stop = stop.clone();
        std::thread::spawn(move || reflect(port, stop))
    };
    let log: Log = Arc::default();
    let listener = UnixListener::bind(&path).expect("daemon socket");
    {
        let (log, nic, next) = (log.clone(), Arc::new(Mutex::new(Some(fds))), Arc::new(Mutex::new(100)));
        std::thread::spawn(move || {
            for s in listener.incoming().take(1000) {
                let Ok(s) = s else { return };
                let (log, nic, next) = (log.clone(), nic.clone(), next.clone());
                std::thread::spawn(move || serve(s, log, nic, next));
            }
        });
    }

    let info = control::start("emulator-control-test", &path).expect("attached");
    assert_eq!((info.tcp_ports.lo(), info.tcp_ports.hi()), TCP_BLOCK);
    assert!(control::active());
    {
        let l = log.lock().unwrap();
        assert!(matches!(l[0], Request::Hello { .. }), "{l:?}");
        assert!(matches!(&l[1], Request::Register { name } if name.as_str() == "emulator-control-test"));
        assert!(matches!(l[2], Request::Nic {}));
    }

    // Ephemeral ports come from the NIC's blocks, and need no grant.
    let l = Socket::new(Family::V4, Kind::Stream, false);
    l.bind(a("127.0.0.1:0")).expect("bind port 0");
    l.listen(16).expect("listen");
    let lport = l.local_addr().expect("name").port();
    assert!((TCP_BLOCK.0..=TCP_BLOCK.1).contains(&lport), "listener port {lport}");
    let c = Socket::new(Family::V4, Kind::Stream, false);
    c.connect(Some(a(&format!("127.0.0.1:{lport}")))).expect("connect through the NIC");
    let cport = c.local_addr().expect("name").port();
    assert!((TCP_BLOCK.0..=TCP_BLOCK.1).contains(&cport), "client port {cport}");
    let u = Socket::new(Family::V4, Kind::Dgram, false);
    u.send(&[b"x"], 0, Some(a(&format!("127.0.0.1:{}", UDP_BLOCK.0)))).expect("sendto autobinds");
    let uport = u.local_addr().expect("name").port();
    assert!((UDP_BLOCK.0..=UDP_BLOCK.1).contains(&uport), "udp port {uport}");
    // A connection's ephemeral port is never one a `bind` holds (Linux's
    // `inet_hash_connect`): with the block all but used up by bound sockets, connecting to
    // one of them is refused; it never connects to itself from that very port.
    let mut held = Vec::new();
    loop {
        let s = Socket::new(Family::V4, Kind::Stream, false);
        if s.bind(a("127.0.0.1:0")).is_err() {
            break;
        }
        held.push(s);
        assert!(held.len() <= 128, "the block has 128 ports");
    }
    held.truncate(held.len().saturating_sub(2));
    assert!(held.len() > 64, "{} bound", held.len());
    for target in held.iter().take(4) {
        let port = target.local_addr().expect("name").port();
        let c2 = Socket::new(Family::V4, Kind::Stream, false);
        let r = c2.connect(Some(a(&format!("127.0.0.1:{port}"))));
        let mine = c2.local_addr().map(|l| l.port()).unwrap_or(0);
        assert_eq!(r, Err(Errno::ECONNREFUSED), "connect to bound port {port} from {mine}");
        assert!(held.iter().all(|h| h.local_addr().map(|l| l.port()).ok() != Some(mine)), "{mine} is bound");
    }
    drop(held);
    // An explicit port inside the block: no grant either. (Not the port the
    // autobind above drew at random from the same block.)
    let inside_port = if uport == UDP_BLOCK.1 { UDP_BLOCK.1 - 1 } else { UDP_BLOCK.1 };
    let inside = Socket::new(Family::V4, Kind::Dgram, false);
    inside.bind(a(&format!("127.0.0.1:{inside_port}"))).expect("bind inside the block");
    assert_eq!(count(&log, is_grant), 0, "no grant for the blocks' ports");

    // An explicit port outside: one grant, shared by the process's sockets on it.
    let u1 = Socket::new(Family::V4, Kind::Dgram, false);
    let u2 = Socket::new(Family::V4, Kind::Dgram, false);
    reuse(&u1);
    reuse(&u2);
    u1.bind(a("127.0.0.1:6001")).expect("bind granted");
    u2.bind(a("127.0.0.1:6001")).expect("second bind shares the grant");
    let key = GrantKey::new(false, a("127.0.0.1:6001"));
    assert_eq!(count(&log, is_grant), 1);
    assert_eq!(control::grant_users(&key), 2);
    let sent = {
        let l = log.lock().unwrap();
        l.iter()
            .find_map(|r| match r {
                Request::Grant { filter } => Some(filter.clone()),
                _ => None,
            })
            .expect("the grant")
    };
    assert_eq!(sent.proto(), Proto::Udp);
    assert_eq!(sent.local(), a("127.0.0.1:1").ip());
    assert_eq!((sent.ports().lo(), sent.ports().hi()), (6001, 6001));
    // A datagram to the granted port comes back through the NIC.
    u.send(&[b"to the granted port"], 0, Some(a("127.0.0.1:6001"))).expect("sendto");
    let mut b = [0u8; 64];
    let r = u2.recv(&mut [&mut b[..]], 0).expect("recv on the last bound");
    assert_eq!(&b[..r.n], b"to the granted port");
    drop(u1);
    assert_eq!(control::grant_users(&key), 1);
    drop(u2);
    assert_eq!(control::grant_users(&key), 0);
    assert!(wait_for(&log, 1, is_revoke), "the last close revokes");

    // A failed bind gives its share back (the port is taken by the process's own socket).
    let t1 = Socket::new(Family::V4, Kind::Stream, false);
    t1.bind(a("127.0.0.1:6002")).expect("bind");
    t1.listen(8).expect("listen");
    let t2 = Socket::new(Family::V4, Kind::Stream, false);
    assert_eq!(t2.bind(a("127.0.0.1:6002")), Err(Errno::EADDRINUSE));
    let key2 = GrantKey::new(true, a("127.0.0.1:6002"));
    assert_eq!(control::grant_users(&key2), 1);
    // A connection accepted from the granted listener keeps the grant after the listener.
    let c2 = Socket::new(Family::V4, Kind::Stream, false);
    c2.connect(Some(a("127.0.0.1:6002"))).expect("connect");
    let (acc, _) = t1.accept(false, false).expect("accept");
    let Accepted::Lib(s2) = acc else { panic!("a library connection") };
    assert_eq!(control::grant_users(&key2), 2);
    drop(t1);
    assert_eq!(control::grant_users(&key2), 1);
    s2.send(&[b"still granted"], 0, None).expect("send");
    let r = c2.recv(&mut [&mut b[..]], 0).expect("recv");
    assert_eq!(&b[..r.n], b"still granted");
    drop(s2);
    assert!(wait_for(&log, 2, is_revoke), "the accepted connection's close revokes");

    // Refusals: as Linux's bind would say, or the kernel.
    let r1 = Socket::new(Family::V4, Kind::Stream, false);
    assert_eq!(r1.bind_granted(a(&format!("127.0.0.1:{HELD_PORT}"))), Err(Errno::EADDRINUSE));
    assert_eq!(r1.bind_granted(a(&format!("0.0.0.0:{PRIVILEGED_PORT}"))), Err(Errno::EACCES));
    let to_kernel = r1.bind_granted(a(&format!("127.0.0.1:{QUOTA_PORT}"))).expect("an answer");
    assert!(matches!(&to_kernel, BindTo::Kernel(why) if why.contains("quota")), "{to_kernel:?}");
    assert!(r1.kernel_handover().expect("state").is_some(), "the socket can still move");
    // Bind errors Linux checks first are not worth a grant.
    let before = count(&log, is_grant);
    assert_eq!(c.bind_granted(a("127.0.0.1:6003")), Err(Errno::EINVAL), "already bound");
    assert_eq!(r1.bind_granted(a("127.0.0.2:6003")), Err(Errno::EADDRNOTAVAIL));
    assert_eq!(count(&log, is_grant), before);

    // Destinations: this world's own listener without asking, then the daemon, each call.
    let fresh = Socket::new(Family::V4, Kind::Stream, false);
    let lookups = count(&log, is_lookup);
    assert!(fresh.serves_peer(&a(&format!("127.0.0.1:{lport}"))), "own listener");
    assert_eq!(count(&log, is_lookup), lookups);
    assert!(fresh.serves_peer(&a(&format!("127.0.0.1:{SERVED_PORT}"))), "a container serves it");
    assert!(fresh.serves_peer(&a(&format!("0.0.0.0:{SERVED_PORT}"))));
    assert!(!fresh.serves_peer(&a("127.0.0.1:9998")), "nobody under the shim: the kernel");
    assert!(!fresh.serves_peer(&a("10.1.2.3:9999")), "another host: the kernel");
    assert_eq!(count(&log, is_lookup), lookups + 3, "asked each time, never cached");
    // A socket with a life here stays whatever the destination.
    assert!(c.serves_peer(&a("127.0.0.1:9998")));
    assert!(u.serves_peer(&a("127.0.0.1:9998")), "a UDP socket with its port here");

    // The daemon restarts: a grant waits for it (retrying), and gets its answer.
    DOWN.store(true, Ordering::SeqCst);
    let back = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(300));
        DOWN.store(false, Ordering::SeqCst);
    });
    let g = Socket::new(Family::V4, Kind::Dgram, false);
    g.bind(a("127.0.0.1:6004")).expect("granted once the daemon is back");
    back.join().expect("restarter");
    assert_eq!(control::grant_users(&GrantKey::new(false, a("127.0.0.1:6004"))), 1);
    // Down for good: after retrying for GRANT_PATIENCE, the socket goes to the kernel; a
    // lookup does not wait (the destination is the kernel's).
    DOWN.store(true, Ordering::SeqCst);
    let k = Socket::new(Family::V4, Kind::Stream, false);
    assert!(!k.serves_peer(&a(&format!("127.0.0.1:{SERVED_PORT}"))), "no daemon: the kernel");
    let before = DROPPED.load(Ordering::SeqCst);
    let r = k.bind_granted(a("127.0.0.1:6005")).expect("an answer");
    assert!(matches!(r, BindTo::Kernel(_)), "{r:?}");
    assert!(DROPPED.load(Ordering::SeqCst) > before + 10, "it kept trying");
    // Closing a granted socket while the daemon is down does not wait for it.
    drop(g);
    DOWN.store(false, Ordering::SeqCst);

    stop.store(true, Ordering::Relaxed);
    reflector.join().expect("reflector");
    let _ = std::fs::remove_dir_all(&dir);
}
