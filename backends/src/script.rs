//! Scripted TCP tests in the packetdrill style: a test device that injects IP packets into the
//! stack and records the packets the stack sends, a small script language, and a runner that
//! plays a script against a [`Target`] (a stack plus one TCP socket) on a virtual clock.
//!
//! * [`ScriptDevice`] — IP medium, 1500-byte MTU, checksums computed on transmit *and*
//!   verified on receive. Frames live in memory; addresses are TEST-NET-1 (192.0.2.0/24),
//!   never routed anywhere.
//! * [`Script::parse`] — the language (see `backends/tests/tcp/README.md`):
//!   `+0.1 < P. 1:1001(1000) ack 1 win 65535`, `+0 > . 1:1(0) ack 1001`,
//!   `+1.0~+1.2 > P. 1:501(500) ack 1`, `+0.5 > (none)`, `+0 socket recv 1000`.
//! * [`run`] — plays a script. Sequence numbers are relative to each side's ISN, as in
//!   packetdrill; the stack's ISN is learnt from the first SYN it sends. Every packet the stack
//!   sends must be matched by a `>` line, in order; anything else is an error naming the line.
//! * [`Target`] — the thin layer between the runner and a stack. [`SmoltcpTarget`] drives a
//!   bare smoltcp `tcp::Socket`; the library OS's own socket layer can implement it later and
//!   run the same scripts.
//!
//! Nothing a script controls panics here: every problem is a [`ScriptError`] with the line.

use std::collections::VecDeque;
use std::fmt::{self, Write as _};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    HardwareAddress, IpAddress, IpCidr, IpProtocol, Ipv4Address, Ipv4Packet, TcpOption, TcpPacket,
    TcpSeqNumber,
};

use crate::NetDevice;

/// The stack's address.
pub const LOCAL_ADDR: Ipv4Address = Ipv4Address::new(192, 0, 2, 1);
/// The scripted peer's address.
pub const REMOTE_ADDR: Ipv4Address = Ipv4Address::new(192, 0, 2, 2);
/// Prefix length of the test network.
pub const PREFIX_LEN: u8 = 24;
/// MTU of the script device (an Ethernet-sized IP MTU).
pub const MTU: usize = 1500;
/// The peer's initial sequence number; script numbers for the peer's side are relative to it.
pub const REMOTE_ISN: u32 = 0x1000_0000;
/// Local port until a script says otherwise (`socket listen` / `ports`).
pub const DEFAULT_LOCAL_PORT: u16 = 8080;
/// The peer's port until a script says otherwise (`socket connect` / `ports`).
pub const DEFAULT_REMOTE_PORT: u16 = 40000;
/// Local port `socket connect` binds.
pub const EPHEMERAL_PORT: u16 = 49152;
/// Window the peer advertises when an inbound line names none.
pub const DEFAULT_WINDOW: u16 = 65535;
/// Seed of the interface's random generator (ISNs): fixed, so runs are deterministic.
pub const RANDOM_SEED: u64 = 0x5eed_a77a_c0de_0001;

/// Largest `socket send` / `socket recv` of one line.
pub const MAX_IO: usize = 16 << 20;

/// The stack's clock at script time 0: far from smoltcp's `Instant::ZERO`, as a real clock is
/// (smoltcp uses `Instant::ZERO` as "long ago" in places, e.g. to fire a window probe at once).
pub const EPOCH_MICROS: i64 = 1_000_000 * 1_000_000;

fn instant(script_micros: i64) -> Instant {
    Instant::from_micros(EPOCH_MICROS + script_micros)
}

/// Byte `i` of either direction's stream: scripts never spell data out, the runner checks it.
fn pattern(i: u32) -> u8 {
    (i % 251) as u8
}

// ------------------------------------------------------------------------------------------
// The device
// ------------------------------------------------------------------------------------------

/// The scripted device: packets injected by the test are received by the stack on its next
/// poll; packets the stack transmits wait in [`ScriptDevice::take_sent`].
#[derive(Debug, Default)]
pub struct ScriptDevice {
    rx: VecDeque<Vec<u8>>,
    sent: Vec<Vec<u8>>,
}

impl ScriptDevice {
    /// An empty device.
    pub fn new() -> ScriptDevice {
        ScriptDevice::default()
    }

    /// Queues an IP packet for the stack to receive on its next poll.
    pub fn inject(&mut self, packet: Vec<u8>) {
        self.rx.push_back(packet);
    }

    /// The packets the stack transmitted since the last call, oldest first.
    pub fn take_sent(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.sent)
    }

    /// Injected packets the stack has not received yet.
    pub fn pending(&self) -> usize {
        self.rx.len()
    }
}

impl phy::Device for ScriptDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = MTU;
        // The default: checksums computed on transmit and verified on receive.
        caps.checksum = phy::ChecksumCapabilities::default();
        caps
    }

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let buffer = self.rx.pop_front()?;
        Some((RxToken { buffer }, TxToken { sent: &mut self.sent }))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        Some(TxToken { sent: &mut self.sent })
    }
}

impl NetDevice for ScriptDevice {}

/// An injected packet.
pub struct RxToken {
    buffer: Vec<u8>,
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.buffer)
    }
}

/// Room for one transmitted packet.
pub struct TxToken<'a> {
    sent: &'a mut Vec<Vec<u8>>,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buffer = vec![0; len];
        let r = f(&mut buffer);
        self.sent.push(buffer);
        r
    }
}

// ------------------------------------------------------------------------------------------
// The script language
// ------------------------------------------------------------------------------------------

/// A failure, tied to a script line (0 for the script as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError {
    /// 1-based line of the script.
    pub line: usize,
    /// What went wrong, possibly several lines (a diff, a trace).
    pub message: String,
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ScriptError {}

fn err<T>(line: usize, message: impl Into<String>) -> Result<T, ScriptError> {
    Err(ScriptError { line, message: message.into() })
}

/// When a line happens: a window `lo..=hi` in microseconds, relative to the previous line's
/// event (`+`) or to the start of the script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct When {
    /// Relative to the previous event (`+0.1`) rather than absolute (`0.1`).
    pub relative: bool,
    /// Earliest time, µs.
    pub lo: i64,
    /// Latest time, µs (equal to `lo` unless the line gave a range `a~b`).
    pub hi: i64,
}

/// TCP flags a script names: `S`, `F`, `R`, `P` and `.` (ACK).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    /// SYN.
    pub syn: bool,
    /// FIN.
    pub fin: bool,
    /// RST.
    pub rst: bool,
    /// PSH.
    pub psh: bool,
    /// ACK.
    pub ack: bool,
}

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (on, c) in [(self.syn, 'S'), (self.fin, 'F'), (self.rst, 'R'), (self.psh, 'P'), (self.ack, '.')] {
            if on {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// A TCP option in a script. SACK blocks are relative to the ISN of the side whose data
/// they acknowledge, like `ack`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opt {
    /// `nop` (placement only; ignored when checking the stack's options).
    Nop,
    /// `eol` (placement only).
    Eol,
    /// `mss N`.
    Mss(u16),
    /// `wscale N`.
    WScale(u8),
    /// `sackOK`.
    SackOk,
    /// `sack L:R L:R ...`.
    Sack(Vec<(u32, u32)>),
    /// `TS val V ecr E`.
    Timestamp(u32, u32),
    /// An option the language has no name for (only ever seen on the stack's side).
    Unknown(u8),
}

impl fmt::Display for Opt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Opt::Nop => f.write_str("nop"),
            Opt::Eol => f.write_str("eol"),
            Opt::Mss(v) => write!(f, "mss {v}"),
            Opt::WScale(v) => write!(f, "wscale {v}"),
            Opt::SackOk => f.write_str("sackOK"),
            Opt::Sack(blocks) => {
                f.write_str("sack")?;
                for (l, r) in blocks {
                    write!(f, " {l}:{r}")?;
                }
                Ok(())
            }
            Opt::Timestamp(v, e) => write!(f, "TS val {v} ecr {e}"),
            Opt::Unknown(k) => write!(f, "kind{k}"),
        }
    }
}

/// A segment on a `<` or `>` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Flags; compared exactly on `>` lines.
    pub flags: Flags,
    /// `start:end(len)`, relative to the sender's ISN. `None` (only on `>` lines): unchecked.
    pub seq: Option<(u32, u32)>,
    /// `ack N`, relative to the receiver's ISN. On `>` lines: checked only if given.
    pub ack: Option<u32>,
    /// `win N` (the raw header field). On `>` lines: checked only if given.
    pub win: Option<u16>,
    /// `<...>`: `None` = don't check. Otherwise the options; a `>` line without a list
    /// expects none.
    pub options: Option<Vec<Opt>>,
}

fn fmt_options(f: &mut fmt::Formatter<'_>, options: &Option<Vec<Opt>>) -> fmt::Result {
    match options {
        None => f.write_str(" <...>"),
        Some(list) if list.is_empty() => Ok(()),
        Some(list) => {
            f.write_str(" <")?;
            for (i, o) in list.iter().enumerate() {
                if i > 0 {
                    f.write_char(',')?;
                }
                write!(f, "{o}")?;
            }
            f.write_char('>')
        }
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.flags)?;
        if let Some((s, e)) = self.seq {
            write!(f, " {s}:{e}({})", e.wrapping_sub(s))?;
        }
        if let Some(a) = self.ack {
            write!(f, " ack {a}")?;
        }
        if let Some(w) = self.win {
            write!(f, " win {w}")?;
        }
        fmt_options(f, &self.options)
    }
}

/// A `socket` line: what the application does or asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketCmd {
    /// `socket listen PORT`.
    Listen(u16),
    /// `socket connect PORT` (to the peer's PORT, from [`EPHEMERAL_PORT`]).
    Connect(u16),
    /// `socket accept`: a connection is established (or was, and is closing).
    Accept,
    /// `socket send N`: the application writes N bytes; all must be accepted.
    Send(usize),
    /// `socket recv N`: N bytes can be read now; N are read and checked against what the peer
    /// sent at that place in the stream.
    Recv(usize),
    /// `socket readable N`: exactly N bytes are queued for reading (nothing is read).
    Readable(usize),
    /// `socket close`.
    Close,
    /// `socket abort`.
    Abort,
    /// `socket state NAME` (or `socket assert state NAME`): the RFC 793 state.
    State(String),
    /// `socket rcvbuf N`: receive buffer size, before listen/connect.
    RcvBuf(usize),
    /// `socket sndbuf N`: send buffer size, before listen/connect.
    SndBuf(usize),
    /// `socket nodelay`: Nagle's algorithm off.
    NoDelay,
    /// `socket ackdelay MS` / `socket ackdelay off`: delayed-ACK timer.
    AckDelay(Option<u64>),
}

/// What a line does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `<`: the peer sends this segment.
    Inbound(Segment),
    /// `>`: the stack must send this segment next, within the line's time window.
    Outbound(Segment),
    /// `> (none)`: the stack sends nothing until this line's time.
    Silence,
    /// `socket ...`.
    Socket(SocketCmd),
    /// `ports LOCAL REMOTE`: the 4-tuple's ports for the following segments.
    Ports(u16, u16),
}

/// One line of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number in the script text.
    pub number: usize,
    /// When it happens.
    pub when: When,
    /// What happens.
    pub action: Action,
    /// The line's text without its comment.
    pub text: String,
}

/// A parsed script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// Its lines, in order.
    pub lines: Vec<Line>,
}

fn parse_seconds(s: &str) -> Option<i64> {
    let v: f64 = s.parse().ok()?;
    if !v.is_finite() || !(0.0..=1.0e6).contains(&v) {
        return None;
    }
    Some((v * 1e6).round() as i64)
}

fn parse_when(token: &str, n: usize) -> Result<When, ScriptError> {
    let bad = || err(n, format!("bad time `{token}` (want `0.1`, `+0.1` or `+0.9~+1.1`)"));
    let (lo_s, hi_s) = match token.split_once('~') {
        Some((a, b)) => (a, Some(b)),
        None => (token, None),
    };
    let relative = lo_s.starts_with('+');
    let Some(lo) = parse_seconds(lo_s.trim_start_matches('+')) else { return bad() };
    let hi = match hi_s {
        None => lo,
        Some(b) => {
            if b.starts_with('+') != relative {
                return bad();
            }
            let Some(hi) = parse_seconds(b.trim_start_matches('+')) else { return bad() };
            hi
        }
    };
    if hi < lo {
        return bad();
    }
    Ok(When { relative, lo, hi })
}

fn parse_num<T: std::str::FromStr>(s: Option<&str>, what: &str, n: usize) -> Result<T, ScriptError> {
    match s.and_then(|s| s.parse().ok()) {
        Some(v) => Ok(v),
        None => err(n, format!("{what}: expected a number, found `{}`", s.unwrap_or("end of line"))),
    }
}

fn parse_flags(s: &str, n: usize) -> Result<Flags, ScriptError> {
    let mut f = Flags::default();
    for c in s.chars() {
        match c {
            'S' => f.syn = true,
            'F' => f.fin = true,
            'R' => f.rst = true,
            'P' => f.psh = true,
            '.' => f.ack = true,
            _ => return err(n, format!("bad flags `{s}` (letters S F R P and `.`)")),
        }
    }
    Ok(f)
}

fn parse_seq(s: &str, n: usize) -> Result<(u32, u32), ScriptError> {
    let bad = || err(n, format!("bad sequence `{s}` (want start:end(len))"));
    let Some((start, rest)) = s.split_once(':') else { return bad() };
    let Some((end, len)) = rest.split_once('(') else { return bad() };
    let Some(len) = len.strip_suffix(')') else { return bad() };
    let (Ok(start), Ok(end), Ok(len)) = (start.parse::<u32>(), end.parse::<u32>(), len.parse::<u32>()) else {
        return bad();
    };
    if end.wrapping_sub(start) != len {
        return err(n, format!("sequence `{s}`: end - start is not the length"));
    }
    Ok((start, end))
}

fn parse_options(s: &str, n: usize) -> Result<Option<Vec<Opt>>, ScriptError> {
    let s = s.trim();
    if s == "..." {
        return Ok(None);
    }
    let mut out = Vec::new();
    for item in s.split(',') {
        let mut t = item.split_whitespace();
        let opt = match t.next() {
            Some("nop") => Opt::Nop,
            Some("eol") => Opt::Eol,
            Some("mss") => Opt::Mss(parse_num(t.next(), "mss", n)?),
            Some("wscale") => Opt::WScale(parse_num(t.next(), "wscale", n)?),
            Some("sackOK") => Opt::SackOk,
            Some("sack") => {
                let mut blocks = Vec::new();
                for b in t.by_ref() {
                    let Some((l, r)) = b.split_once(':') else {
                        return err(n, format!("bad sack block `{b}`"));
                    };
                    blocks.push((parse_num(Some(l), "sack", n)?, parse_num(Some(r), "sack", n)?));
                }
                if blocks.is_empty() || blocks.len() > 4 {
                    return err(n, "sack: 1 to 4 blocks");
                }
                Opt::Sack(blocks)
            }
            Some("TS") => {
                if t.next() != Some("val") {
                    return err(n, "TS: want `TS val V ecr E`");
                }
                let v = parse_num(t.next(), "TS val", n)?;
                if t.next() != Some("ecr") {
                    return err(n, "TS: want `TS val V ecr E`");
                }
                Opt::Timestamp(v, parse_num(t.next(), "TS ecr", n)?)
            }
            other => return err(n, format!("unknown option `{}`", other.unwrap_or(""))),
        };
        if let Some(extra) = t.next() {
            return err(n, format!("unexpected `{extra}` in option `{}`", item.trim()));
        }
        out.push(opt);
    }
    Ok(Some(out))
}

fn parse_segment(rest: &str, inbound: bool, n: usize) -> Result<Segment, ScriptError> {
    let (head, options) = match rest.find('<') {
        Some(i) => {
            let tail = &rest[i + 1..];
            let Some(j) = tail.rfind('>') else { return err(n, "unterminated option list `<...`") };
            if !tail[j + 1..].trim().is_empty() {
                return err(n, format!("unexpected `{}` after the option list", tail[j + 1..].trim()));
            }
            (&rest[..i], parse_options(&tail[..j], n)?)
        }
        None => (rest, Some(Vec::new())),
    };
    if inbound && options.is_none() {
        return err(n, "`<...>` (unchecked options) only makes sense on `>` lines");
    }
    let mut t = head.split_whitespace().peekable();
    let Some(flags) = t.next() else { return err(n, "missing flags") };
    let flags = parse_flags(flags, n)?;
    let seq = match t.peek() {
        Some(s) if s.contains(':') => {
            let s = parse_seq(s, n)?;
            t.next();
            Some(s)
        }
        _ if inbound => return err(n, "an inbound segment needs start:end(len)"),
        _ => None,
    };
    let (mut ack, mut win) = (None, None);
    while let Some(word) = t.next() {
        match word {
            "ack" => ack = Some(parse_num(t.next(), "ack", n)?),
            "win" => win = Some(parse_num(t.next(), "win", n)?),
            other => return err(n, format!("unexpected `{other}` in segment")),
        }
    }
    if ack.is_some() && !flags.ack {
        return err(n, "`ack N` on a segment without the `.` (ACK) flag");
    }
    if inbound && flags.ack && ack.is_none() {
        return err(n, "an inbound segment with `.` needs `ack N`");
    }
    Ok(Segment { flags, seq, ack, win, options })
}

fn parse_socket(rest: &str, n: usize) -> Result<SocketCmd, ScriptError> {
    let mut t = rest.split_whitespace();
    let mut verb = t.next();
    if verb == Some("assert") {
        verb = t.next();
    }
    let cmd = match verb {
        Some("listen") => SocketCmd::Listen(parse_num(t.next(), "listen", n)?),
        Some("connect") => SocketCmd::Connect(parse_num(t.next(), "connect", n)?),
        Some("accept") => SocketCmd::Accept,
        Some("send") => SocketCmd::Send(parse_num(t.next(), "send", n)?),
        Some("recv") => SocketCmd::Recv(parse_num(t.next(), "recv", n)?),
        Some("readable") => SocketCmd::Readable(parse_num(t.next(), "readable", n)?),
        Some("close") => SocketCmd::Close,
        Some("abort") => SocketCmd::Abort,
        Some("state") => match t.next() {
            Some(s) => SocketCmd::State(s.to_string()),
            None => return err(n, "state: expected a state name"),
        },
        Some("rcvbuf") => SocketCmd::RcvBuf(parse_num(t.next(), "rcvbuf", n)?),
        Some("sndbuf") => SocketCmd::SndBuf(parse_num(t.next(), "sndbuf", n)?),
        Some("nodelay") => SocketCmd::NoDelay,
        Some("ackdelay") => match t.next() {
            Some("off") => SocketCmd::AckDelay(None),
            s => SocketCmd::AckDelay(Some(parse_num(s, "ackdelay", n)?)),
        },
        other => return err(n, format!("unknown socket command `{}`", other.unwrap_or(""))),
    };
    if let Some(extra) = t.next() {
        return err(n, format!("unexpected `{extra}` after the socket command"));
    }
    Ok(cmd)
}

impl Script {
    /// Parses a script. Comments run from `//` to the end of the line.
    pub fn parse(text: &str) -> Result<Script, ScriptError> {
        let mut lines = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let code = raw.split_once("//").map_or(raw, |(c, _)| c).trim();
            if code.is_empty() {
                continue;
            }
            let (time, rest) = code.split_once(char::is_whitespace).unwrap_or((code, ""));
            let when = parse_when(time, n)?;
            let rest = rest.trim();
            let (verb, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            let action = match verb {
                "<" => Action::Inbound(parse_segment(args, true, n)?),
                ">" if args.trim() == "(none)" => Action::Silence,
                ">" => Action::Outbound(parse_segment(args, false, n)?),
                "socket" => Action::Socket(parse_socket(args, n)?),
                "ports" => {
                    let mut t = args.split_whitespace();
                    let local = parse_num(t.next(), "ports LOCAL", n)?;
                    let remote = parse_num(t.next(), "ports REMOTE", n)?;
                    Action::Ports(local, remote)
                }
                other => return err(n, format!("unknown action `{other}` (want <, >, socket or ports)")),
            };
            if when.lo != when.hi && !matches!(action, Action::Outbound(_)) {
                return err(n, "a time range `a~b` only makes sense on `>` lines");
            }
            lines.push(Line { number: n, when, action, text: code.to_string() });
        }
        if lines.is_empty() {
            return err(0, "empty script");
        }
        Ok(Script { lines })
    }
}

// ------------------------------------------------------------------------------------------
// The target: a stack with one TCP socket
// ------------------------------------------------------------------------------------------

/// What the runner drives: a stack on a [`ScriptDevice`], with one TCP socket. Keep
/// implementations thin — they translate, they do not decide.
pub trait Target {
    /// The device the stack runs on.
    fn device(&mut self) -> &mut ScriptDevice;
    /// Runs the stack at `now` (receives injected packets, transmits what is due).
    fn poll(&mut self, now: Instant);
    /// When the stack next wants to be polled, if it has anything scheduled.
    fn poll_at(&mut self, now: Instant) -> Option<Instant>;
    /// Sets buffer sizes; called before `listen`/`connect`.
    fn set_buffers(&mut self, rx: Option<usize>, tx: Option<usize>) -> Result<(), String>;
    /// Nagle's algorithm on or off.
    fn set_nagle(&mut self, on: bool) -> Result<(), String>;
    /// Delayed-ACK timer (`None`: ACK at once).
    fn set_ack_delay(&mut self, delay: Option<Duration>) -> Result<(), String>;
    /// Passive open on `port` of [`LOCAL_ADDR`].
    fn listen(&mut self, port: u16) -> Result<(), String>;
    /// Active open from `local_port` to `remote_port` of [`REMOTE_ADDR`].
    fn connect(&mut self, local_port: u16, remote_port: u16) -> Result<(), String>;
    /// A connection is ready to be handed to the application.
    fn accept(&mut self) -> Result<(), String>;
    /// Queues data; returns how much was accepted.
    fn send(&mut self, data: &[u8]) -> Result<usize, String>;
    /// Reads up to `buf.len()` bytes; returns how many.
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, String>;
    /// Bytes readable now.
    fn readable(&mut self) -> usize;
    /// Closes the sending half (FIN).
    fn close(&mut self) -> Result<(), String>;
    /// Aborts (RST).
    fn abort(&mut self) -> Result<(), String>;
    /// The RFC 793 state, spelt `ESTABLISHED`, `TIME-WAIT`, ...
    fn state(&mut self) -> String;
}

/// Reads up to `buf.len()` bytes from a TCP socket for a script's `socket recv`: what is
/// readable now, stopping at the end of the stream.
pub fn recv_into(sock: &mut tcp::Socket<'_>, buf: &mut [u8]) -> Result<usize, String> {
    let mut got = 0;
    while got < buf.len() {
        match sock.recv_slice(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(tcp::RecvError::Finished) if got > 0 => break,
            Err(e) => return Err(format!("recv: {e}")),
        }
    }
    Ok(got)
}

/// Default buffer sizes of [`SmoltcpTarget`]'s socket (no window scaling needed).
pub const DEFAULT_BUFFER: usize = 65535;

/// A bare smoltcp interface on a [`ScriptDevice`] with one `tcp::Socket`.
pub struct SmoltcpTarget {
    device: ScriptDevice,
    iface: Interface,
    sockets: SocketSet<'static>,
    handle: SocketHandle,
    rx_size: usize,
    tx_size: usize,
}

impl Default for SmoltcpTarget {
    fn default() -> Self {
        Self::new()
    }
}

impl SmoltcpTarget {
    /// Interface 192.0.2.1/24 on a fresh device, fixed random seed, one closed socket.
    pub fn new() -> SmoltcpTarget {
        let mut device = ScriptDevice::new();
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = RANDOM_SEED;
        let mut iface = Interface::new(config, &mut device, instant(0));
        iface.update_ip_addrs(|a| {
            // The list is empty and holds at least one address: this cannot fail.
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(LOCAL_ADDR), PREFIX_LEN));
        });
        let mut sockets = SocketSet::new(Vec::new());
        let handle = sockets.add(Self::socket(DEFAULT_BUFFER, DEFAULT_BUFFER));
        SmoltcpTarget { device, iface, sockets, handle, rx_size: DEFAULT_BUFFER, tx_size: DEFAULT_BUFFER }
    }

    fn socket(rx: usize, tx: usize) -> tcp::Socket<'static> {
        tcp::Socket::new(tcp::SocketBuffer::new(vec![0; rx]), tcp::SocketBuffer::new(vec![0; tx]))
    }

    fn sock(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(self.handle)
    }
}

impl Target for SmoltcpTarget {
    fn device(&mut self) -> &mut ScriptDevice {
        &mut self.device
    }

    fn poll(&mut self, now: Instant) {
        self.iface.poll(now, &mut self.device, &mut self.sockets);
    }

    fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        self.iface.poll_at(now, &self.sockets)
    }

    fn set_buffers(&mut self, rx: Option<usize>, tx: Option<usize>) -> Result<(), String> {
        if self.sock().state() != tcp::State::Closed {
            return Err("buffer sizes can only change on a closed socket".into());
        }
        self.rx_size = rx.unwrap_or(self.rx_size);
        self.tx_size = tx.unwrap_or(self.tx_size);
        if self.rx_size == 0 || self.tx_size == 0 || self.rx_size > 1 << 30 {
            return Err("buffer sizes must be 1 byte to 1 GiB".into());
        }
        let (nagle, ack_delay) = (self.sock().nagle_enabled(), self.sock().ack_delay());
        self.sockets.remove(self.handle);
        let mut s = Self::socket(self.rx_size, self.tx_size);
        s.set_nagle_enabled(nagle);
        s.set_ack_delay(ack_delay);
        self.handle = self.sockets.add(s);
        Ok(())
    }

    fn set_nagle(&mut self, on: bool) -> Result<(), String> {
        self.sock().set_nagle_enabled(on);
        Ok(())
    }

    fn set_ack_delay(&mut self, delay: Option<Duration>) -> Result<(), String> {
        self.sock().set_ack_delay(delay);
        Ok(())
    }

    fn listen(&mut self, port: u16) -> Result<(), String> {
        self.sock().listen(port).map_err(|e| format!("listen: {e}"))
    }

    fn connect(&mut self, local_port: u16, remote_port: u16) -> Result<(), String> {
        let remote = (IpAddress::Ipv4(REMOTE_ADDR), remote_port);
        let s = self.sockets.get_mut::<tcp::Socket>(self.handle);
        s.connect(self.iface.context(), remote, local_port).map_err(|e| format!("connect: {e}"))
    }

    fn accept(&mut self) -> Result<(), String> {
        match self.sock().state() {
            tcp::State::Closed | tcp::State::Listen | tcp::State::SynSent | tcp::State::SynReceived => {
                Err(format!("no connection to accept (state {})", self.sock().state()))
            }
            _ => Ok(()),
        }
    }

    fn send(&mut self, data: &[u8]) -> Result<usize, String> {
        self.sock().send_slice(data).map_err(|e| format!("send: {e}"))
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, String> {
        recv_into(self.sock(), buf)
    }

    fn readable(&mut self) -> usize {
        self.sock().recv_queue()
    }

    fn close(&mut self) -> Result<(), String> {
        self.sock().close();
        Ok(())
    }

    fn abort(&mut self) -> Result<(), String> {
        self.sock().abort();
        Ok(())
    }

    fn state(&mut self) -> String {
        self.sock().state().to_string()
    }
}

// ------------------------------------------------------------------------------------------
// The runner
// ------------------------------------------------------------------------------------------

/// A packet the stack sent, decoded into script terms.
struct Observed {
    seg: Segment,
    payload: Vec<u8>,
    seq_abs: u32,
}

struct Runner<'t> {
    target: &'t mut dyn Target,
    /// Virtual time, µs.
    now: i64,
    /// Time of the previous line's event: the base of `+` times.
    base: i64,
    /// Whether the last poll at `now` sent nothing (so an immediate `poll_at` is spurious).
    idle_at_now: bool,
    sent: VecDeque<(i64, Vec<u8>)>,
    local_isn: Option<u32>,
    local_port: u16,
    remote_port: u16,
    ip_ident: u16,
    /// Bytes the application has sent / received so far (offsets into the pattern).
    app_sent: u32,
    app_recvd: u32,
    trace: Vec<String>,
}

fn secs(us: i64) -> String {
    format!("{}.{:06}", us / 1_000_000, (us % 1_000_000).abs())
}

impl<'t> Runner<'t> {
    fn new(target: &'t mut dyn Target) -> Runner<'t> {
        Runner {
            target,
            now: 0,
            base: 0,
            idle_at_now: false,
            sent: VecDeque::new(),
            local_isn: None,
            local_port: DEFAULT_LOCAL_PORT,
            remote_port: DEFAULT_REMOTE_PORT,
            ip_ident: 0,
            app_sent: 0,
            app_recvd: 0,
            trace: Vec::new(),
        }
    }

    fn trace(&mut self, s: String) {
        self.trace.push(format!("  {:>10}  {s}", secs(self.now)));
    }

    fn poll(&mut self) {
        self.target.poll(instant(self.now));
        let sent = self.target.device().take_sent();
        self.idle_at_now = sent.is_empty();
        for p in sent {
            let desc = match self.decode(&p) {
                Ok(o) => format!("> {}", o.seg),
                Err(e) => format!("> (undecodable: {e})"),
            };
            self.trace(desc);
            self.sent.push_back((self.now, p));
        }
    }

    /// Polls at the next instant the stack asks for, if it is no later than `limit`.
    fn step(&mut self, limit: i64) -> bool {
        let Some(at) = self.target.poll_at(instant(self.now)) else { return false };
        let mut next = (at.total_micros() - EPOCH_MICROS).max(self.now);
        if next == self.now && self.idle_at_now {
            // The stack asked for a poll now but the last one at this instant did nothing.
            next = self.now + 1000;
        }
        if next > limit {
            return false;
        }
        self.now = next;
        self.poll();
        true
    }

    fn advance_to(&mut self, t: i64) {
        while self.step(t) {}
        if self.now < t {
            self.now = t;
        }
        self.poll();
    }

    fn isn(&self) -> u32 {
        self.local_isn.unwrap_or(0)
    }

    fn decode(&mut self, bytes: &[u8]) -> Result<Observed, String> {
        let ip = Ipv4Packet::new_checked(bytes).map_err(|_| "not an IPv4 packet".to_string())?;
        if !ip.verify_checksum() {
            return Err("bad IPv4 header checksum".into());
        }
        if ip.next_header() != IpProtocol::Tcp {
            return Err(format!("not TCP but {}", ip.next_header()));
        }
        if ip.src_addr() != LOCAL_ADDR || ip.dst_addr() != REMOTE_ADDR {
            return Err(format!("addresses {} -> {}", ip.src_addr(), ip.dst_addr()));
        }
        if usize::from(ip.total_len()) != bytes.len() {
            return Err(format!("IP total length {} but {} bytes", ip.total_len(), bytes.len()));
        }
        let tcp = TcpPacket::new_checked(ip.payload()).map_err(|_| "truncated TCP header".to_string())?;
        if !tcp.verify_checksum(&IpAddress::Ipv4(LOCAL_ADDR), &IpAddress::Ipv4(REMOTE_ADDR)) {
            return Err("bad TCP checksum".into());
        }
        if tcp.src_port() != self.local_port || tcp.dst_port() != self.remote_port {
            return Err(format!(
                "ports {} -> {} (expected {} -> {})",
                tcp.src_port(),
                tcp.dst_port(),
                self.local_port,
                self.remote_port
            ));
        }
        let flags = Flags { syn: tcp.syn(), fin: tcp.fin(), rst: tcp.rst(), psh: tcp.psh(), ack: tcp.ack() };
        let seq_abs = tcp.seq_number().0 as u32;
        if flags.syn && self.local_isn.is_none() {
            self.local_isn = Some(seq_abs);
        }
        let start = seq_abs.wrapping_sub(self.isn());
        let payload = tcp.payload().to_vec();
        let end = start.wrapping_add(payload.len() as u32);
        let mut options = Vec::new();
        let mut raw = tcp.options();
        while !raw.is_empty() {
            let (rest, opt) = TcpOption::parse(raw).map_err(|_| "malformed TCP options".to_string())?;
            match opt {
                TcpOption::EndOfList => break,
                TcpOption::NoOperation => {}
                TcpOption::MaxSegmentSize(v) => options.push(Opt::Mss(v)),
                TcpOption::WindowScale(v) => options.push(Opt::WScale(v)),
                TcpOption::SackPermitted => options.push(Opt::SackOk),
                TcpOption::SackRange(r) => options.push(Opt::Sack(
                    r.iter()
                        .flatten()
                        .map(|&(l, r)| (l.wrapping_sub(REMOTE_ISN), r.wrapping_sub(REMOTE_ISN)))
                        .collect(),
                )),
                TcpOption::TimeStamp { tsval, tsecr } => options.push(Opt::Timestamp(tsval, tsecr)),
                TcpOption::Unknown { kind, .. } => options.push(Opt::Unknown(kind)),
            }
            raw = rest;
        }
        let ack = flags.ack.then(|| (tcp.ack_number().0 as u32).wrapping_sub(REMOTE_ISN));
        let seg = Segment {
            flags,
            seq: Some((start, end)),
            ack,
            win: Some(tcp.window_len()),
            options: Some(options),
        };
        Ok(Observed { seg, payload, seq_abs })
    }

    fn compare(&self, exp: &Segment, got: &Observed) -> Vec<String> {
        let mut diffs = Vec::new();
        let g = &got.seg;
        if exp.flags != g.flags {
            diffs.push(format!("flags: expected {} got {}", exp.flags, g.flags));
        }
        if let (Some(e), Some(a)) = (exp.seq, g.seq) {
            if e != a {
                diffs.push(format!("sequence: expected {}:{} got {}:{}", e.0, e.1, a.0, a.1));
            }
        }
        if let Some(e) = exp.ack {
            match g.ack {
                Some(a) if a == e => {}
                Some(a) => diffs.push(format!("ack: expected {e} got {a}")),
                None => diffs.push(format!("ack: expected {e}, the segment has no ACK")),
            }
        }
        if let (Some(e), Some(a)) = (exp.win, g.win) {
            if e != a {
                diffs.push(format!("win: expected {e} got {a}"));
            }
        }
        if let (Some(e), Some(a)) = (&exp.options, &g.options) {
            let e: Vec<&Opt> = e.iter().filter(|o| !matches!(o, Opt::Nop | Opt::Eol)).collect();
            let missing: Vec<String> = e.iter().filter(|o| !a.contains(o)).map(|o| o.to_string()).collect();
            let extra: Vec<String> = a.iter().filter(|o| !e.contains(o)).map(|o| o.to_string()).collect();
            if !missing.is_empty() {
                diffs.push(format!("options: missing {}", missing.join(", ")));
            }
            if !extra.is_empty() {
                diffs.push(format!("options: unexpected {}", extra.join(", ")));
            }
        }
        // Data must be the application's bytes at that place in the stream (after the SYN).
        if !got.payload.is_empty() {
            let first = got.seq_abs.wrapping_sub(self.isn()).wrapping_sub(1);
            if let Some(k) =
                (0..got.payload.len()).find(|&k| got.payload[k] != pattern(first.wrapping_add(k as u32)))
            {
                diffs.push(format!(
                    "data: byte {k} of the payload is not the application's byte at that offset"
                ));
            }
            if first.wrapping_add(got.payload.len() as u32) > self.app_sent {
                diffs.push(format!(
                    "data: reaches stream offset {} but the application sent only {} bytes",
                    first.wrapping_add(got.payload.len() as u32),
                    self.app_sent
                ));
            }
        }
        diffs
    }

    /// Fails if the stack sent something no `>` line accounted for.
    fn expect_quiet(&mut self, line: &Line) -> Result<(), ScriptError> {
        if let Some((t, p)) = self.sent.pop_front() {
            let desc = match self.decode(&p) {
                Ok(o) => o.seg.to_string(),
                Err(e) => format!("(undecodable: {e})"),
            };
            return err(
                line.number,
                format!(
                    "unexpected outbound segment at t={} before `{}`:\n  actual:   > {desc}",
                    secs(t),
                    line.text
                ),
            );
        }
        Ok(())
    }

    fn build(&mut self, seg: &Segment, n: usize) -> Result<Vec<u8>, ScriptError> {
        let (start, end) = match seg.seq {
            Some(s) => s,
            None => return err(n, "an inbound segment needs start:end(len)"),
        };
        let len = end.wrapping_sub(start) as usize;
        let mut opts = Vec::new();
        for o in seg.options.iter().flatten() {
            let mut buf = [0u8; 40];
            let emitted = match o {
                Opt::Nop => TcpOption::NoOperation,
                Opt::Eol => TcpOption::EndOfList,
                Opt::Mss(v) => TcpOption::MaxSegmentSize(*v),
                Opt::WScale(v) => TcpOption::WindowScale(*v),
                Opt::SackOk => TcpOption::SackPermitted,
                Opt::Sack(blocks) => {
                    if blocks.len() > 3 {
                        return err(n, "this harness sends at most 3 SACK blocks");
                    }
                    let mut r = [None; 3];
                    for (i, (l, rr)) in blocks.iter().enumerate() {
                        r[i] = Some((self.isn().wrapping_add(*l), self.isn().wrapping_add(*rr)));
                    }
                    TcpOption::SackRange(r)
                }
                Opt::Timestamp(v, e) => TcpOption::TimeStamp { tsval: *v, tsecr: *e },
                Opt::Unknown(_) => return err(n, "cannot send an unknown option"),
            };
            let l = if matches!(o, Opt::Eol) { 1 } else { emitted.buffer_len() };
            emitted.emit(&mut buf[..l]);
            opts.extend_from_slice(&buf[..l]);
        }
        while !opts.len().is_multiple_of(4) {
            opts.push(0);
        }
        if opts.len() > 40 {
            return err(n, "options longer than 40 bytes");
        }
        let tcp_len = 20 + opts.len() + len;
        let total = 20 + tcp_len;
        if total > MTU {
            return err(n, format!("segment of {total} bytes exceeds the MTU ({MTU})"));
        }
        let mut bytes = vec![0u8; total];
        let mut ip = Ipv4Packet::new_unchecked(&mut bytes[..]);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_total_len(total as u16);
        self.ip_ident = self.ip_ident.wrapping_add(1);
        ip.set_ident(self.ip_ident);
        ip.set_dont_frag(true);
        ip.set_hop_limit(64);
        ip.set_next_header(IpProtocol::Tcp);
        ip.set_src_addr(REMOTE_ADDR);
        ip.set_dst_addr(LOCAL_ADDR);
        ip.fill_checksum();
        let mut tcp = TcpPacket::new_unchecked(ip.payload_mut());
        tcp.set_src_port(self.remote_port);
        tcp.set_dst_port(self.local_port);
        tcp.set_seq_number(TcpSeqNumber(REMOTE_ISN.wrapping_add(start) as i32));
        tcp.set_ack_number(TcpSeqNumber(self.isn().wrapping_add(seg.ack.unwrap_or(0)) as i32));
        tcp.set_header_len((20 + opts.len()) as u8);
        tcp.clear_flags();
        tcp.set_syn(seg.flags.syn);
        tcp.set_fin(seg.flags.fin);
        tcp.set_rst(seg.flags.rst);
        tcp.set_psh(seg.flags.psh);
        tcp.set_ack(seg.flags.ack);
        tcp.set_window_len(seg.win.unwrap_or(DEFAULT_WINDOW));
        tcp.set_urgent_at(0);
        tcp.options_mut().copy_from_slice(&opts);
        let first = start.wrapping_sub(1);
        for (k, b) in tcp.payload_mut().iter_mut().enumerate() {
            *b = pattern(first.wrapping_add(k as u32));
        }
        tcp.fill_checksum(&IpAddress::Ipv4(REMOTE_ADDR), &IpAddress::Ipv4(LOCAL_ADDR));
        Ok(bytes)
    }

    fn socket(&mut self, cmd: &SocketCmd) -> Result<(), String> {
        if let SocketCmd::Send(n) | SocketCmd::Recv(n) = cmd {
            if *n > MAX_IO {
                return Err(format!("{n} bytes: this harness moves at most {MAX_IO} per call"));
            }
        }
        match cmd {
            SocketCmd::Listen(port) => {
                self.local_port = *port;
                self.local_isn = None;
                self.target.listen(*port)
            }
            SocketCmd::Connect(port) => {
                self.local_port = EPHEMERAL_PORT;
                self.remote_port = *port;
                self.local_isn = None;
                self.target.connect(EPHEMERAL_PORT, *port)
            }
            SocketCmd::Accept => self.target.accept(),
            SocketCmd::Send(n) => {
                let data: Vec<u8> = (0..*n as u32).map(|k| pattern(self.app_sent.wrapping_add(k))).collect();
                let took = self.target.send(&data)?;
                self.app_sent = self.app_sent.wrapping_add(took as u32);
                if took != *n {
                    return Err(format!("send {n}: the stack accepted only {took} bytes"));
                }
                Ok(())
            }
            SocketCmd::Recv(n) => {
                let mut buf = vec![0u8; *n];
                let got = self.target.recv(&mut buf)?;
                if got != *n {
                    return Err(format!("recv {n}: only {got} bytes were readable"));
                }
                if let Some(k) = (0..got).find(|&k| buf[k] != pattern(self.app_recvd.wrapping_add(k as u32)))
                {
                    return Err(format!(
                        "recv {n}: byte {k} is not the peer's byte at stream offset {}",
                        self.app_recvd.wrapping_add(k as u32)
                    ));
                }
                self.app_recvd = self.app_recvd.wrapping_add(got as u32);
                Ok(())
            }
            SocketCmd::Readable(n) => match self.target.readable() {
                r if r == *n => Ok(()),
                r => Err(format!("readable {n}: {r} bytes are readable")),
            },
            SocketCmd::Close => self.target.close(),
            SocketCmd::Abort => self.target.abort(),
            SocketCmd::State(want) => match self.target.state() {
                s if s == *want => Ok(()),
                s => Err(format!("state: expected {want}, the socket is {s}")),
            },
            SocketCmd::RcvBuf(n) => self.target.set_buffers(Some(*n), None),
            SocketCmd::SndBuf(n) => self.target.set_buffers(None, Some(*n)),
            SocketCmd::NoDelay => self.target.set_nagle(false),
            SocketCmd::AckDelay(ms) => self.target.set_ack_delay(ms.map(Duration::from_millis)),
        }
    }

    fn line(&mut self, line: &Line) -> Result<(), ScriptError> {
        let n = line.number;
        let origin = if line.when.relative { self.base } else { 0 };
        let (lo, hi) = (origin + line.when.lo, origin + line.when.hi);
        if let Action::Outbound(exp) = &line.action {
            loop {
                if let Some((t, p)) = self.sent.pop_front() {
                    let got = self.decode(&p).map_err(|e| ScriptError {
                        line: n,
                        message: format!("at t={} the stack sent a bad packet: {e}", secs(t)),
                    })?;
                    let mut diffs = self.compare(exp, &got);
                    if t < lo {
                        diffs.push(format!(
                            "time: sent at t={}, expected no earlier than t={}",
                            secs(t),
                            secs(lo)
                        ));
                    }
                    if !diffs.is_empty() {
                        return err(
                            n,
                            format!(
                                "outbound segment mismatch at t={}\n  expected: > {exp}\n  actual:   > {}\n  {}",
                                secs(t),
                                got.seg,
                                diffs.join("\n  ")
                            ),
                        );
                    }
                    self.base = t;
                    return Ok(());
                }
                if self.now >= hi {
                    let window =
                        if lo == hi { format!("at t={}", secs(lo)) } else { format!("by t={}", secs(hi)) };
                    return err(n, format!("expected `> {exp}` {window}; the stack sent nothing"));
                }
                if !self.step(hi) {
                    self.now = hi;
                    self.poll();
                }
            }
        }
        if lo < self.now {
            return err(n, format!("time t={} is before the current time t={}", secs(lo), secs(self.now)));
        }
        self.advance_to(lo);
        self.base = lo;
        // Assertions change nothing, so they may sit between an action and the segments it
        // caused; anything left unmatched is still caught by the next line that acts.
        let assertion = matches!(line.action, Action::Socket(SocketCmd::State(_) | SocketCmd::Readable(_)));
        if !assertion {
            self.expect_quiet(line)?;
        }
        match &line.action {
            Action::Outbound(_) | Action::Silence => {}
            Action::Inbound(seg) => {
                let bytes = self.build(seg, n)?;
                self.trace(format!("< {seg}"));
                self.target.device().inject(bytes);
                self.poll();
            }
            Action::Socket(cmd) => {
                self.trace(format!("socket {cmd:?}"));
                self.socket(cmd).map_err(|m| ScriptError { line: n, message: m })?;
                if !assertion {
                    self.poll();
                }
            }
            Action::Ports(local, remote) => {
                self.local_port = *local;
                self.remote_port = *remote;
            }
        }
        Ok(())
    }
}

/// What a successful run saw, for `--nocapture` debugging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Every segment in and out and every socket call, with its virtual time.
    pub trace: Vec<String>,
    /// Virtual time at the end, µs.
    pub end_micros: i64,
}

/// Plays `script` against `target` from virtual time 0. On failure the error names the line
/// and carries the trace of everything that happened up to it.
pub fn run(script: &Script, target: &mut dyn Target) -> Result<Report, ScriptError> {
    let mut r = Runner::new(target);
    for line in &script.lines {
        if let Err(mut e) = r.line(line) {
            e.message = format!("{}\ntrace:\n{}", e.message, r.trace.join("\n"));
            return Err(e);
        }
    }
    // Whatever the stack sent after the last line must have been expected too.
    let now = r.now;
    r.advance_to(now);
    if let Some(last) = script.lines.last() {
        if let Err(mut e) = r.expect_quiet(last) {
            e.message = format!("after the last line: {}\ntrace:\n{}", e.message, r.trace.join("\n"));
            return Err(e);
        }
    }
    Ok(Report { trace: r.trace, end_micros: r.now })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_packetdrill_forms() {
        let s = Script::parse(
            "0 socket listen 8080 // comment\n\
             +0 < S 0:0(0) win 65535 <mss 1460,nop,wscale 7>\n\
             +0.9~+1.1 > S. 0:0(0) ack 1 <...>\n\
             +0.2 > (none)\n",
        )
        .unwrap();
        assert_eq!(s.lines.len(), 4);
        assert_eq!(s.lines[0].action, Action::Socket(SocketCmd::Listen(8080)));
        let Action::Inbound(seg) = &s.lines[1].action else { panic!() };
        assert_eq!(seg.options, Some(vec![Opt::Mss(1460), Opt::Nop, Opt::WScale(7)]));
        assert_eq!(s.lines[2].when, When { relative: true, lo: 900_000, hi: 1_100_000 });
        let Action::Outbound(seg) = &s.lines[2].action else { panic!() };
        assert_eq!(seg.options, None);
        assert_eq!(s.lines[3].action, Action::Silence);
    }

    #[test]
    fn bad_lines_are_errors_with_line_numbers() {
        for (text, line) in [
            ("0 socket listen 8080\n+0 < S 0:5(0) win 1", 2),
            ("\n\n+x socket close", 3),
            ("0 < . 1:1(0) win 5", 1),
            ("0 > S. 0:0(0) ack 1 <mss>", 1),
            ("0 frob", 1),
        ] {
            let e = Script::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text}: {e}");
        }
    }

    /// Both checksums of every packet are verified: the stack's (by the runner) and the
    /// script's (by the stack, whose device asks it to).
    #[test]
    fn checksums_are_verified_both_ways() {
        let mut target = SmoltcpTarget::new();
        let mut r = Runner::new(&mut target);
        let syn = Segment {
            flags: Flags { syn: true, ..Flags::default() },
            seq: Some((0, 0)),
            ack: None,
            win: None,
            options: Some(vec![]),
        };
        // A SYN to a closed port: the stack answers with an RST, which the runner decodes.
        let good = r.build(&syn, 1).unwrap();
        r.target.device().inject(good.clone());
        r.poll();
        let (_, rst) = r.sent.pop_front().expect("an RST");
        assert!(r.decode(&rst).unwrap().seg.flags.rst);
        // Corrupted in the TCP payload area (the checksum field): the runner rejects it.
        let mut bad = rst.clone();
        bad[20 + 16] ^= 0xff;
        assert_eq!(r.decode(&bad).err().as_deref(), Some("bad TCP checksum"));
        bad = rst;
        bad[10] ^= 0xff;
        assert_eq!(r.decode(&bad).err().as_deref(), Some("bad IPv4 header checksum"));
        // The stack drops an injected segment with a bad TCP checksum: no RST.
        let mut bad = good;
        bad[20 + 16] ^= 0xff;
        r.target.device().inject(bad);
        r.poll();
        assert!(r.sent.is_empty());
    }

    #[test]
    fn the_device_injects_and_records() {
        use phy::{Device, RxToken as _, TxToken as _};
        let mut d = ScriptDevice::new();
        d.inject(vec![1, 2, 3]);
        assert_eq!(d.pending(), 1);
        let (rx, tx) = d.receive(Instant::from_millis(0)).unwrap();
        rx.consume(|b| assert_eq!(b, &[1, 2, 3]));
        tx.consume(2, |b| b.fill(7));
        assert_eq!(d.take_sent(), vec![vec![7, 7]]);
        assert!(d.take_sent().is_empty());
    }
}
