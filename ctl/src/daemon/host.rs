//! What the daemon learns from the host: processes (`/proc/PID/stat`), the kernel's own
//! sockets (`/proc/net/{tcp,tcp6,udp,udp6}`), the unprivileged port start, randomness and
//! the clock. Behind the [`Host`] trait so the rules can be tested with a made-up host.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{SystemTime, UNIX_EPOCH};

use arrakis_backends::proto::{Proto, Token};

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

    fn kernel_sockets(&self, proto: Proto) -> Vec<KernelSocket> {
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
}
