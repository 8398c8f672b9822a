//! What the daemon learns from the host: processes (`/proc/PID/stat`), the kernel's own
//! sockets (a `NETLINK_SOCK_DIAG` dump, [`sock_diag_sockets`]; `/proc/net/{tcp,tcp6,udp,udp6}`,
//! [`parse_proc_net`], if netlink fails), the unprivileged port start, randomness and the
//! clock. Behind the [`Host`] trait so the rules can be tested with a made-up host.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Once;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrakis_backends::proto::{Proto, Token};
use netlink_packet_core::{
    DoneBuffer, ErrorBuffer, NetlinkBuffer, NetlinkHeader, NetlinkMessage, Parseable, NLMSG_ALIGNTO,
    NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags};
use netlink_packet_sock_diag::{
    SockDiagMessage, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, SOCK_DIAG_BY_FAMILY, TCP_TIME_WAIT,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

/// A kernel socket that holds a local port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSocket {
    /// Protocol.
    pub proto: Proto,
    /// Local address.
    pub addr: IpAddr,
    /// Local port.
    pub port: u16,
    /// State, as `ss` names it.
    pub state: &'static str,
}

/// The outside world as the rules see it.
pub trait Host {
    /// A process's start time (clock ticks after boot, field 22 of `/proc/PID/stat`) and its
    /// parent's pid; `None` if there is no such process.
    fn process(&self, pid: u32) -> Option<(u64, u32)>;
    /// The kernel's sockets of `proto` that hold a port.
    fn kernel_sockets(&self, proto: Proto) -> Vec<KernelSocket>;
    /// `net.ipv4.ip_unprivileged_port_start`.
    fn unprivileged_port_start(&self) -> u16;
    /// A fresh random token; `None` if the kernel has no randomness to give.
    fn token(&mut self) -> Option<Token>;
    /// Seconds since the Unix epoch.
    fn now(&self) -> u64;
}

/// The real host.
#[derive(Debug, Default)]
pub struct RealHost;

impl Host for RealHost {
    fn process(&self, pid: u32) -> Option<(u64, u32)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        parse_stat(&stat)
    }

    /// From a `NETLINK_SOCK_DIAG` dump; from `/proc/net` if that fails (said once on stderr).
    fn kernel_sockets(&self, proto: Proto) -> Vec<KernelSocket> {
        match sock_diag_sockets(proto) {
            Ok(sockets) => sockets,
            Err(e) => {
                static FALLBACK: Once = Once::new();
                FALLBACK.call_once(|| {
                    eprintln!(
                        "arrakis daemon: NETLINK_SOCK_DIAG dump of the kernel's sockets failed ({e}); \
                         reading /proc/net instead"
                    )
                });
                proc_net_sockets(proto)
            }
        }
    }

    fn unprivileged_port_start(&self) -> u16 {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1024)
    }

    fn token(&mut self) -> Option<Token> {
        let mut t = [0u8; 16];
        let mut filled = 0;
        while filled < t.len() {
            match rustix::rand::getrandom(&mut t[filled..], rustix::rand::GetRandomFlags::empty()) {
                Ok(n) => filled += n,
                Err(rustix::io::Errno::INTR) => {}
                // Without the kernel's randomness a token would be guessable: no fallback.
                Err(_) => return None,
            }
        }
        Some(Token(t))
    }

    fn now(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }
}

/// Start time and parent pid from the text of `/proc/PID/stat`. The command name (field 2)
/// is in parentheses and may itself contain spaces and parentheses: fields are counted from
/// the last `)`.
pub fn parse_stat(stat: &str) -> Option<(u64, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // rest starts at field 3 (state): ppid is field 4, starttime field 22.
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, ppid))
}

/// The kernel's sockets of `proto` that hold a port, from `/proc/net/{tcp,tcp6}` or
/// `/proc/net/{udp,udp6}` ([`parse_proc_net`]): the slow way, for when netlink fails.
fn proc_net_sockets(proto: Proto) -> Vec<KernelSocket> {
    let files: [&str; 2] = match proto {
        Proto::Tcp => ["/proc/net/tcp", "/proc/net/tcp6"],
        Proto::Udp => ["/proc/net/udp", "/proc/net/udp6"],
    };
    let mut out = Vec::new();
    for f in files {
        // A missing file (no IPv6 in this kernel) holds nothing.
        if let Ok(text) = std::fs::read_to_string(f) {
            out.extend(parse_proc_net(&text, proto));
        }
    }
    out
}

/// How long each receive of a [`sock_diag_sockets`] call may wait, and about how long the
/// whole call (both dumps) may take, before the daemon gives up on it and reads `/proc/net`.
const SOCK_DIAG_TIMEOUT: Duration = Duration::from_secs(1);

/// The receive buffer. The kernel sizes a dump's datagrams to at most 32 KiB (at most 8 KiB
/// before it has seen a larger buffer); a longer one would come truncated, and is an error.
const SOCK_DIAG_BUF: usize = 64 * 1024;

/// The kernel's sockets of `proto` that hold a port, from a `NETLINK_SOCK_DIAG`
/// (`inet_diag`) dump of `AF_INET` and then `AF_INET6`: the same sockets and states as
/// [`parse_proc_net`] finds in `/proc/net`, without the kernel formatting a line for every
/// TIME-WAIT socket only for us to throw it away. TCP asks for every state but TIME-WAIT;
/// UDP for every socket.
///
/// An error (no netlink or no `inet_diag` in this kernel, a sandbox that forbids it, an
/// `NLMSG_ERROR` reply, a malformed or truncated reply, a receive that times out) means the
/// answer is incomplete: the caller reads `/proc/net` instead.
pub fn sock_diag_sockets(proto: Proto) -> io::Result<Vec<KernelSocket>> {
    let (protocol, states) = match proto {
        // A TIME-WAIT socket holds no port ([`parse_proc_net`]): the kernel skips them all.
        Proto::Tcp => (IPPROTO_TCP, !(1u32 << TCP_TIME_WAIT)),
        Proto::Udp => (IPPROTO_UDP, u32::MAX),
    };
    let deadline = Instant::now() + SOCK_DIAG_TIMEOUT;
    let socket = Socket::new(NETLINK_SOCK_DIAG)?;
    rustix::net::sockopt::set_socket_timeout(
        &socket,
        rustix::net::sockopt::Timeout::Recv,
        Some(SOCK_DIAG_TIMEOUT),
    )?;
    // To the kernel (port 0); connecting binds this end to a port of its own.
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; SOCK_DIAG_BUF];
    for (seq, family) in [(1, AF_INET), (2, AF_INET6)] {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = seq;
        let mut request = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol,
                extensions: ExtensionFlags::empty(),
                states: StateFlags::from_bits_retain(states),
                socket_id: if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() },
            })
            .into(),
        );
        request.finalize();
        let mut bytes = vec![0u8; request.buffer_len()];
        request.serialize(&mut bytes);
        if socket.send(&bytes, 0)? != bytes.len() {
            return Err(io::Error::other("short send of the sock_diag request"));
        }
        loop {
            // MSG_TRUNC: the datagram's real length, so a truncated one is seen.
            let n = socket.recv(&mut &mut buf[..], libc::MSG_TRUNC)?;
            let reply = buf.get(..n).ok_or_else(|| io::Error::other("sock_diag reply truncated"))?;
            if parse_sock_diag(reply, proto, seq, &mut out)? == Dump::Done {
                break;
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "sock_diag dump took too long"));
            }
        }
    }
    Ok(out)
}

/// Where a dump stands after one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dump {
    /// More datagrams follow.
    More,
    /// `NLMSG_DONE` was seen.
    Done,
}

/// The sockets of one datagram of a `SOCK_DIAG_BY_FAMILY` dump of `proto` (request number
/// `seq`) that hold their local port, appended to `out`; same rule and state names as
/// [`parse_proc_net`]. Each `inet_diag_msg` is read from its fixed part only (state, and the
/// local address and big-endian port of `inet_diag_sockid`; for `AF_INET` the first of the
/// four address words); attributes are skipped. Messages of another request are ignored.
///
/// Errors: an `NLMSG_ERROR`, an `NLMSG_DONE` carrying an error, a message of an unexpected
/// type, or one that is short or whose length runs past the datagram.
fn parse_sock_diag(mut buf: &[u8], proto: Proto, seq: u32, out: &mut Vec<KernelSocket>) -> io::Result<Dump> {
    let bad = |e: netlink_packet_core::DecodeError| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    while !buf.is_empty() {
        // Checks that the header fits and that its length covers it and stays within `buf`.
        let msg = NetlinkBuffer::new_checked(buf).map_err(bad)?;
        let len = msg.length() as usize;
        if msg.sequence_number() == seq {
            match msg.message_type() {
                NLMSG_DONE => {
                    // The kernel may send an empty NLMSG_DONE: no error.
                    let code = match msg.payload() {
                        [] => 0,
                        p => DoneBuffer::new_checked(p).map_err(bad)?.code(),
                    };
                    if code < 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    return Ok(Dump::Done);
                }
                NLMSG_ERROR => {
                    let code = ErrorBuffer::new_checked(msg.payload()).map_err(bad)?.code();
                    return Err(match code {
                        Some(c) => io::Error::from_raw_os_error(c.get().saturating_neg()),
                        None => io::Error::other("unexpected netlink ACK in a sock_diag dump"),
                    });
                }
                NLMSG_NOOP => {}
                SOCK_DIAG_BY_FAMILY => {
                    let h = InetResponseHeader::parse(msg.payload()).map_err(bad)?;
                    let state = match (proto, h.state) {
                        // Not asked for, so not expected; by the rule it holds no port.
                        (Proto::Tcp, TCP_TIME_WAIT) => None,
                        (Proto::Tcp, s) => Some(tcp_state(s)),
                        (Proto::Udp, 0x01) => Some("ESTAB"),
                        (Proto::Udp, _) => Some("UNCONN"),
                    };
                    let id = &h.socket_id;
                    if let Some(state) = state.filter(|_| id.source_port != 0) {
                        out.push(KernelSocket {
                            proto,
                            addr: id.source_address,
                            port: id.source_port,
                            state,
                        });
                    }
                }
                t => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected netlink message type {t} in a sock_diag dump"),
                    ))
                }
            }
        }
        // Messages start on 4-byte boundaries; the last one's padding may be missing.
        let next = len.next_multiple_of(usize::from(NLMSG_ALIGNTO));
        buf = buf.get(next..).unwrap_or_default();
    }
    Ok(Dump::More)
}

/// The sockets of one `/proc/net/{tcp,tcp6,udp,udp6}` file that hold their local port.
///
/// Rule: every socket holds its local port except a TCP socket in TIME-WAIT. That includes
/// listeners, bound but unconnected sockets (`CLOSE`), and connected client sockets on
/// ephemeral ports (the library OS asking for such a port picks another). A TIME-WAIT remnant
/// belongs to no process, and Linux itself lets a `SO_REUSEADDR` socket — every server's —
/// bind over it. Unparseable lines are skipped.
pub fn parse_proc_net(text: &str, proto: Proto) -> Vec<KernelSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_ascii_whitespace();
            let _sl = f.next()?;
            let local = f.next()?;
            let _remote = f.next()?;
            let st = u8::from_str_radix(f.next()?, 16).ok()?;
            let (addr, port) = local.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let addr = parse_hex_addr(addr)?;
            let state = match (proto, st) {
                (Proto::Tcp, 0x06) => return None,
                (Proto::Tcp, s) => tcp_state(s),
                (Proto::Udp, 0x01) => "ESTAB",
                (Proto::Udp, _) => "UNCONN",
            };
            (port != 0).then_some(KernelSocket { proto, addr, port, state })
        })
        .collect()
}

fn tcp_state(s: u8) -> &'static str {
    match s {
        0x01 => "ESTAB",
        0x02 => "SYN-SENT",
        0x03 => "SYN-RECV",
        0x04 => "FIN-WAIT-1",
        0x05 => "FIN-WAIT-2",
        0x07 => "UNCONN",
        0x08 => "CLOSE-WAIT",
        0x09 => "LAST-ACK",
        0x0A => "LISTEN",
        0x0B => "CLOSING",
        _ => "UNKNOWN",
    }
}

/// The kernel prints each 32-bit word of the address as the hex of its in-memory value.
fn parse_hex_addr(s: &str) -> Option<IpAddr> {
    let word = |w: &str| u32::from_str_radix(w, 16).ok().map(u32::to_ne_bytes);
    match s.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(s)?))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(s.get(i * 8..i * 8 + 8)?)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let s = "4711 (redis (srv) x) S 1 4711 4711 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 4 0 123456 1000 50";
        assert_eq!(parse_stat(s), Some((123456, 1)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn proc_net_lines_parse_and_time_wait_is_skipped() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0\n\
   1: 0100007F:9C40 0100007F:18EB 06 00000000:00000000 03:00000000 00000000     0        0 0 3\n\
   2: 0100007F:9C41 0100007F:18EB 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n";
        let s = parse_proc_net(tcp, Proto::Tcp);
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0],
            KernelSocket {
                proto: Proto::Tcp,
                addr: "127.0.0.1".parse().unwrap(),
                port: 6379,
                state: "LISTEN"
            }
        );
        assert_eq!(s[1].port, 0x9C41);
        let tcp6 = "header\n   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 0 0 0 0 0 0 0\n";
        let s = parse_proc_net(tcp6, Proto::Tcp);
        assert_eq!(s[0].addr, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(s[0].port, 8080);
    }

    #[test]
    fn the_real_host_sees_a_listener_and_this_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let host = RealHost;
        assert!(host.kernel_sockets(Proto::Tcp).iter().any(|s| s.port == port && s.state == "LISTEN"));
        let (start, ppid) = host.process(std::process::id()).unwrap();
        assert!(start > 0 && ppid > 0);
        let mut h = RealHost;
        assert_ne!(h.token().unwrap(), h.token().unwrap());
    }

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// One `SOCK_DIAG_BY_FAMILY` message as the kernel sends it: `nlmsghdr`, `inet_diag_msg`
    /// and an `INET_DIAG_SHUTDOWN` attribute (5 bytes). `pad` adds the attribute's padding to
    /// the message length, as the kernel does; without it the length is unaligned and the
    /// padding follows outside it.
    fn diag_msg(seq: u32, state: u8, src: IpAddr, port: u16, pad: bool) -> Vec<u8> {
        let len: u32 = 16 + 72 + if pad { 8 } else { 5 };
        let mut m = Vec::new();
        m.extend(len.to_ne_bytes());
        m.extend(SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m.extend(2u16.to_ne_bytes()); // NLM_F_MULTI
        m.extend(seq.to_ne_bytes());
        m.extend(4242u32.to_ne_bytes());
        let (family, words) = match src {
            // Only the first word counts for AF_INET: fill the others with junk.
            IpAddr::V4(a) => (AF_INET, [a.octets(), [0xAB; 4], [0xCD; 4], [0xEF; 4]].concat()),
            IpAddr::V6(a) => (AF_INET6, a.octets().to_vec()),
        };
        m.extend([family, state, 0, 0]);
        m.extend(port.to_be_bytes()); // idiag_sport
        m.extend(443u16.to_be_bytes()); // idiag_dport
        m.extend(words); // idiag_src
        m.extend([0x11; 16]); // idiag_dst
        m.extend(0u32.to_ne_bytes()); // idiag_if
        m.extend([0x22; 8]); // idiag_cookie
        m.extend([0; 20]); // idiag_expires, _rqueue, _wqueue, _uid, _inode
        m.extend(5u16.to_ne_bytes()); // nla_len
        m.extend(8u16.to_ne_bytes()); // INET_DIAG_SHUTDOWN
        m.extend([0, 0, 0, 0]); // value and padding
        m
    }

    /// `NLMSG_DONE` (or `NLMSG_ERROR`, `ty` 2) with `code`.
    fn control_msg(ty: u16, seq: u32, code: i32) -> Vec<u8> {
        let len: u32 = if ty == NLMSG_ERROR { 36 } else { 20 };
        let mut m = Vec::new();
        m.extend(len.to_ne_bytes());
        m.extend(ty.to_ne_bytes());
        m.extend(2u16.to_ne_bytes());
        m.extend(seq.to_ne_bytes());
        m.extend(4242u32.to_ne_bytes());
        m.extend(code.to_ne_bytes());
        if ty == NLMSG_ERROR {
            m.extend([0; 16]); // the request's header
        }
        m
    }

    fn sock(proto: Proto, addr: &str, port: u16, state: &'static str) -> KernelSocket {
        KernelSocket { proto, addr: addr.parse().unwrap(), port, state }
    }

    #[test]
    fn sock_diag_messages_parse_like_proc_net() {
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let dump = [
            diag_msg(1, 0x0A, LOCALHOST, 6379, true),
            diag_msg(1, 0x01, "10.0.0.1".parse().unwrap(), 40000, false),
            // Port 0 holds nothing.
            diag_msg(1, 0x07, LOCALHOST, 0, true),
            // Not asked for, but by the rule it holds nothing.
            diag_msg(1, 0x06, LOCALHOST, 40001, true),
            // Another request's message.
            diag_msg(9, 0x0A, LOCALHOST, 1, true),
            diag_msg(1, 0x0A, v6("::1"), 8080, true),
            diag_msg(1, 0x07, v6("fe80::1"), 9000, true),
            diag_msg(1, 0x08, v6("::ffff:127.0.0.1"), 9001, true),
        ]
        .concat();
        let mut out = Vec::new();
        assert_eq!(parse_sock_diag(&dump, Proto::Tcp, 1, &mut out).unwrap(), Dump::More);
        let done = control_msg(NLMSG_DONE, 1, 0);
        assert_eq!(parse_sock_diag(&done, Proto::Tcp, 1, &mut out).unwrap(), Dump::Done);
        assert_eq!(
            out,
            [
                sock(Proto::Tcp, "127.0.0.1", 6379, "LISTEN"),
                sock(Proto::Tcp, "10.0.0.1", 40000, "ESTAB"),
                sock(Proto::Tcp, "::1", 8080, "LISTEN"),
                sock(Proto::Tcp, "fe80::1", 9000, "UNCONN"),
                sock(Proto::Tcp, "::ffff:127.0.0.1", 9001, "CLOSE-WAIT"),
            ]
        );

        // UDP: connected is ESTAB, anything else UNCONN; a DONE in the same datagram ends it.
        let dump = [
            diag_msg(2, 0x07, LOCALHOST, 53, true),
            diag_msg(2, 0x01, v6("::1"), 5353, true),
            control_msg(NLMSG_DONE, 2, 0),
        ]
        .concat();
        let mut out = Vec::new();
        assert_eq!(parse_sock_diag(&dump, Proto::Udp, 2, &mut out).unwrap(), Dump::Done);
        assert_eq!(
            out,
            [sock(Proto::Udp, "127.0.0.1", 53, "UNCONN"), sock(Proto::Udp, "::1", 5353, "ESTAB")]
        );
        // The kernel may send a DONE without its error code.
        let mut empty_done = control_msg(NLMSG_DONE, 2, 0);
        empty_done.truncate(16);
        empty_done[..4].copy_from_slice(&16u32.to_ne_bytes());
        assert_eq!(parse_sock_diag(&empty_done, Proto::Udp, 2, &mut Vec::new()).unwrap(), Dump::Done);
    }

    #[test]
    fn sock_diag_errors_and_malformed_replies_fail() {
        let mut out = Vec::new();
        let err = parse_sock_diag(&control_msg(NLMSG_ERROR, 1, -1), Proto::Tcp, 1, &mut out).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(1));
        let err = parse_sock_diag(&control_msg(NLMSG_DONE, 1, -105), Proto::Tcp, 1, &mut out).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(105));
        // Cut short: inside the header, inside the inet_diag_msg, inside the attribute.
        let msg = diag_msg(1, 0x0A, LOCALHOST, 6379, true);
        for cut in [3, 20, 90] {
            assert!(parse_sock_diag(&msg[..cut], Proto::Tcp, 1, &mut out).is_err(), "cut at {cut}");
        }
        // A length shorter than the inet_diag_msg it should hold.
        let mut short = msg.clone();
        short[..4].copy_from_slice(&40u32.to_ne_bytes());
        assert!(parse_sock_diag(&short, Proto::Tcp, 1, &mut out).is_err());
        // A length under the netlink header's own (0 would loop forever).
        let mut zero = msg.clone();
        zero[..4].copy_from_slice(&0u32.to_ne_bytes());
        assert!(parse_sock_diag(&zero, Proto::Tcp, 1, &mut out).is_err());
        // An unknown address family.
        let mut unix = msg;
        unix[16] = 1;
        assert!(parse_sock_diag(&unix, Proto::Tcp, 1, &mut out).is_err());
        assert!(out.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn sock_diag_parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_sock_diag(&bytes, Proto::Tcp, 1, &mut Vec::new());
            let mut m = diag_msg(1, 0x0A, LOCALHOST, 6379, true);
            let n = m.len().min(bytes.len());
            m[..n].copy_from_slice(&bytes[..n]);
            let _ = parse_sock_diag(&m, Proto::Udp, 1, &mut Vec::new());
        }
    }

    /// Held by the tests that connect TCP sockets: Linux gives connections to different
    /// listeners the same ephemeral port, and one test would see another's on its port.
    static CONNECTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn connecting() -> std::sync::MutexGuard<'static, ()> {
        CONNECTING.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Kernel sockets a test made, kept open, and the ports they hold with the states they
    /// should show, sorted, by protocol.
    struct Made {
        _keep: Vec<Box<dyn std::any::Any>>,
        tcp: Vec<(u16, &'static str)>,
        udp: Vec<(u16, &'static str)>,
    }

    /// A listener, a connection to it and two UDP sockets, one connected, all on 127.0.0.1.
    fn some_sockets() -> Made {
        use std::net::{TcpListener, TcpStream, UdpSocket};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let lport = l.local_addr().unwrap().port();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, _) = l.accept().unwrap();
        let cport = c.local_addr().unwrap().port();
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let uport = u.local_addr().unwrap().port();
        let uc = UdpSocket::bind("127.0.0.1:0").unwrap();
        uc.connect(u.local_addr().unwrap()).unwrap();
        let ucport = uc.local_addr().unwrap().port();
        let mut tcp = vec![(lport, "LISTEN"), (lport, "ESTAB"), (cport, "ESTAB")];
        let mut udp = vec![(uport, "UNCONN"), (ucport, "ESTAB")];
        tcp.sort();
        udp.sort();
        Made { _keep: vec![Box::new(l), Box::new(c), Box::new(a), Box::new(u), Box::new(uc)], tcp, udp }
    }

    /// The (port, state) pairs of `sockets` on 127.0.0.1 with one of `ports`, sorted.
    fn on_ports(sockets: &[KernelSocket], ports: &[(u16, &str)]) -> Vec<(u16, &'static str)> {
        let mut v: Vec<_> = sockets
            .iter()
            .filter(|s| s.addr == LOCALHOST && ports.iter().any(|&(p, _)| p == s.port))
            .map(|s| (s.port, s.state))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn sock_diag_sees_the_kernels_sockets() {
        let _lock = connecting();
        let made = some_sockets();
        let got = sock_diag_sockets(Proto::Tcp).expect("NETLINK_SOCK_DIAG dump of TCP");
        assert!(got.iter().all(|s| s.proto == Proto::Tcp && s.port != 0));
        assert_eq!(on_ports(&got, &made.tcp), made.tcp);
        let got = sock_diag_sockets(Proto::Udp).expect("NETLINK_SOCK_DIAG dump of UDP");
        assert!(got.iter().all(|s| s.proto == Proto::Udp && s.port != 0));
        assert_eq!(on_ports(&got, &made.udp), made.udp);
    }

    #[test]
    fn sock_diag_agrees_with_proc_net() {
        let _lock = connecting();
        let made = some_sockets();
        for (proto, ports) in [(Proto::Tcp, &made.tcp), (Proto::Udp, &made.udp)] {
            let netlink = sock_diag_sockets(proto).expect("NETLINK_SOCK_DIAG dump");
            let proc = proc_net_sockets(proto);
            assert_eq!(on_ports(&netlink, ports), on_ports(&proc, ports), "{proto:?}");
            assert_eq!(&on_ports(&netlink, ports), ports, "{proto:?}");
        }
    }

    /// The states (`/proc/net/tcp` codes) of the kernel's TCP sockets on 127.0.0.1:`port`.
    fn proc_tcp_states(port: u16) -> Vec<u8> {
        let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let local = format!("0100007F:{port:04X}");
        text.lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_ascii_whitespace().collect();
                (f.get(1) == Some(&local.as_str())).then(|| u8::from_str_radix(f.get(3)?, 16).ok())?
            })
            .collect()
    }

    #[test]
    fn sock_diag_leaves_out_time_wait() {
        use std::net::{TcpListener, TcpStream};
        let _lock = connecting();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, _) = l.accept().unwrap();
        let cport = c.local_addr().unwrap().port();
        // The client closes first, so its end is the one left in TIME-WAIT.
        drop(c);
        drop(a);
        let t0 = Instant::now();
        // (An earlier run's TIME-WAIT on the same port may be there too.)
        let time_wait = |s: Vec<u8>| !s.is_empty() && s.iter().all(|&s| s == 0x06);
        while !time_wait(proc_tcp_states(cport)) {
            assert!(t0.elapsed() < Duration::from_secs(5), "no TIME-WAIT: {:?}", proc_tcp_states(cport));
            std::thread::sleep(Duration::from_millis(5));
        }
        let got = sock_diag_sockets(Proto::Tcp).unwrap();
        assert_eq!(on_ports(&got, &[(cport, "")]), []);
        assert_eq!(on_ports(&proc_net_sockets(Proto::Tcp), &[(cport, "")]), []);
    }

    /// Not a check: prints the cost of 20 rounds of both protocols each way, with a few
    /// hundred TIME-WAIT sockets about. `cargo test --release -p arrakis-ctl --bin arrakis
    /// kernel_sockets_timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn kernel_sockets_timing() {
        use std::net::{TcpListener, TcpStream};
        let _lock = connecting();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        for _ in 0..300 {
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (a, _) = l.accept().unwrap();
            drop(c);
            drop(a);
        }
        std::thread::sleep(Duration::from_millis(200));
        let tw =
            std::fs::read_to_string("/proc/net/tcp").unwrap().lines().filter(|l| l.contains(" 06 ")).count();
        let time = |f: &dyn Fn(Proto) -> usize| {
            let t0 = Instant::now();
            let mut n = 0;
            for _ in 0..20 {
                n += f(Proto::Tcp) + f(Proto::Udp);
            }
            (t0.elapsed(), n / 20)
        };
        let old = time(&|p| proc_net_sockets(p).len());
        let new = time(&|p| sock_diag_sockets(p).unwrap().len());
        eprintln!("{tw} TIME-WAIT; 20 x (TCP + UDP): /proc/net {old:?}, sock_diag {new:?}");
    }
}
