//! The channel between the control daemon and the switch process (`switch.sock` in the run
//! directory): what each side may say, how it is framed, and how every message is checked.
//!
//! Framing is the control protocol's ([`FrameBuf`]: a little-endian `u32` length, then 1 to
//! 64 KiB of JSON). Fds ride as `SCM_RIGHTS` on the first byte of their message; the fds
//! received while a frame arrives belong to that frame. The daemon sends a [`Cmd`] and waits
//! for one [`Reply`]. Every message is decoded strictly (unknown fields and ops refused),
//! then validated ([`Cmd::validate`]: fd count, sizes, port ranges); the switch closes a
//! channel that sends anything else, with a log line, and never panics on it. This module
//! owns the format only; [`super::service`] is the switch's end and
//! `daemon::plane` the daemon's.

use std::collections::BTreeMap;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use arrakis_backends::emulator::filter::{self as emu, Grants};
use arrakis_backends::proto::frame::{self, FrameBuf};
use arrakis_backends::proto::{Direction, Name, Proto, MAX_PEERS};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};
use serde::{Deserialize, Serialize};

/// The socket's file name in the run directory.
pub const SOCKET_NAME: &str = "switch.sock";
/// The switch's pid file in the run directory.
pub const PID_NAME: &str = "switch.pid";
/// Most fds one message carries (an attach's three; a bound reply carries two).
pub const MAX_FDS: usize = 3;
/// Most filters of one port.
pub const MAX_FILTERS: usize = 512;
/// Most addresses of one port.
pub const MAX_ADDRS: usize = 16;
/// Most ports one switch holds (a [`Reply::Ports`] listing them all fits one frame).
pub const MAX_PORTS: usize = 256;

/// A filter as the channel carries it (the switch's [`emu::Filter`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterMsg {
    /// Direction seen from the container.
    pub dir: Direction,
    /// Protocol.
    pub proto: Proto,
    /// One local address, or `None` for any of the container's.
    pub local: Option<IpAddr>,
    /// First port.
    pub lo: u16,
    /// Last port.
    pub hi: u16,
    /// Remote addresses allowed; empty for any.
    #[serde(default)]
    pub peers: Vec<IpAddr>,
}

/// A port's grants as the channel carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsMsg {
    /// The container's addresses.
    pub addrs: Vec<IpAddr>,
    /// Its filters.
    pub filters: Vec<FilterMsg>,
}

impl GrantsMsg {
    /// The message form of the switch's grants.
    pub fn from_grants(g: &Grants) -> GrantsMsg {
        GrantsMsg {
            addrs: g.addrs.clone(),
            filters: g
                .filters
                .iter()
                .map(|f| FilterMsg {
                    dir: match f.direction {
                        emu::Direction::Ingress => Direction::In,
                        emu::Direction::Egress => Direction::Out,
                        emu::Direction::Both => Direction::Both,
                    },
                    proto: f.proto.into(),
                    local: f.local,
                    lo: *f.ports.start(),
                    hi: *f.ports.end(),
                    peers: f.peers.clone(),
                })
                .collect(),
        }
    }

    /// The switch's grants, if the message is within bounds.
    pub fn to_grants(&self) -> Result<Grants, String> {
        if self.addrs.len() > MAX_ADDRS || self.filters.len() > MAX_FILTERS {
            return Err(format!(
                "{} addresses and {} filters; at most {MAX_ADDRS} and {MAX_FILTERS}",
                self.addrs.len(),
                self.filters.len()
            ));
        }
        let mut filters = Vec::with_capacity(self.filters.len());
        for f in &self.filters {
            if f.lo > f.hi || f.peers.len() > MAX_PEERS {
                return Err(format!("bad filter: ports {}-{}, {} peers", f.lo, f.hi, f.peers.len()));
            }
            filters.push(emu::Filter {
                direction: match f.dir {
                    Direction::In => emu::Direction::Ingress,
                    Direction::Out => emu::Direction::Egress,
                    Direction::Both => emu::Direction::Both,
                },
                proto: f.proto.into(),
                local: f.local,
                ports: f.lo..=f.hi,
                peers: f.peers.clone(),
            });
        }
        Ok(Grants { addrs: self.addrs.clone(), filters })
    }
}

/// What the daemon asks of the switch. `port` is the daemon's number for a NIC: unique over
/// the daemon's restarts (a restarted daemon continues after the highest it adopts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Cmd {
    /// Attach a NIC; three fds ride along: region, doorbell to the container, doorbell to
    /// the switch (the order of `emulator::NicFds`).
    Attach {
        /// The NIC's number.
        port: u64,
        /// Its container.
        pid: u32,
        /// The container's name (for logs).
        name: Name,
        /// What the container may send and receive.
        grants: GrantsMsg,
    },
    /// Replace a port's grants (takes effect with the next frame).
    SetGrants {
        /// The port.
        port: u64,
        /// The new grants.
        grants: GrantsMsg,
    },
    /// Detach a port.
    Detach {
        /// The port.
        port: u64,
    },
    /// Every port's counters.
    Stats {},
    /// Capture a port's frames as pcap into the one fd that rides along.
    Capture {
        /// The port.
        port: u64,
        /// Stop by itself after this many frames.
        limit: Option<u64>,
    },
    /// Stop a capture.
    StopCapture {
        /// The port.
        port: u64,
    },
    /// The ports attached (a restarted daemon adopts them).
    List {},
    /// A port's three fds (the reply carries them), so the daemon can re-attach the NIC to a
    /// future switch.
    Fds {
        /// The port.
        port: u64,
    },
    /// Start forwarding. A switch starts holding every frame in its tx ring until the daemon
    /// has attached all the NICs (after a restart, a frame forwarded before its receiver is
    /// re-attached would be dropped as `no-route`).
    Forward {},
    /// A secure binding for a flow of `port`'s container (`local` is its end): the switch
    /// checks both containers' grants ([`Switch::bind`](super::Switch::bind)) and answers
    /// [`Reply::Bound`] with two fds (the binding region, the peer's doorbell), or
    /// [`Reply::Err`] naming why not.
    Bind {
        /// The asker's port.
        port: u64,
        /// Protocol.
        proto: Proto,
        /// The asker's end.
        local: SocketAddr,
        /// The remote end.
        remote: SocketAddr,
    },
}

impl Cmd {
    /// Fds this message carries.
    pub fn fds(&self) -> usize {
        match self {
            Cmd::Attach { .. } => 3,
            Cmd::Capture { .. } => 1,
            _ => 0,
        }
    }

    /// Checks what decoding cannot: the fds that came with it and the grants' bounds.
    pub fn validate(&self, fds: usize) -> Result<(), String> {
        if fds != self.fds() {
            return Err(format!("{fds} fds with a message that carries {}", self.fds()));
        }
        match self {
            Cmd::Attach { grants, .. } | Cmd::SetGrants { grants, .. } => grants.to_grants().map(|_| ()),
            Cmd::Bind { local, remote, .. } => {
                arrakis_backends::proto::bind_flow(*local, *remote).map(|_| ())
            }
            _ => Ok(()),
        }
    }
}

/// One port as [`Reply::Ports`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortEntry {
    /// The daemon's number for it.
    pub port: u64,
    /// Its container.
    pub pid: u32,
    /// The container's name.
    pub name: Name,
}

/// One port's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortCounters {
    /// The port.
    pub port: u64,
    /// Its container.
    pub pid: u32,
    /// Frames the container sent.
    pub tx_frames: u64,
    /// Bytes it sent.
    pub tx_bytes: u64,
    /// Frames delivered to it.
    pub rx_frames: u64,
    /// Bytes delivered to it.
    pub rx_bytes: u64,
    /// Drops by reason (`src-not-granted`, ..., and the ring faults `bad-desc`, `bad-index`).
    pub drops: BTreeMap<String, u64>,
    /// Frames its running capture wrote, if one runs.
    pub capturing: Option<u64>,
    /// Live secure bindings the container holds a side of (absent: none, or a switch that
    /// predates bindings).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bindings: u64,
    /// Secure binding sides ever handed to the container (absent: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bound: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The switch's answer to one [`Cmd`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// Done.
    Ok {},
    /// Not done, and why.
    Err {
        /// Why.
        reason: String,
    },
    /// Counters of every port.
    Stats {
        /// By port.
        ports: Vec<PortCounters>,
        /// The uplink's (port 0, pid 0), if the switch has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uplink: Option<PortCounters>,
    },
    /// The switch and its ports.
    Ports {
        /// The switch's pid.
        pid: u32,
        /// Its ports.
        ports: Vec<PortEntry>,
    },
    /// A port's three fds ride on this reply.
    Fds {},
    /// A capture stopped.
    Stopped {
        /// Frames it wrote (`None`: none was running).
        frames: Option<u64>,
    },
    /// A binding was handed out; its region's memfd, the peer's doorbell and the pair's
    /// summary page ride on this reply, in that order.
    Bound {
        /// 0: the asker produces on the region's `Tx` ring; 1: on `Rx`.
        side: u8,
        /// The asker's NIC slot whose word holds `id`.
        slot: u32,
        /// The binding's id.
        id: u32,
        /// The switch's number for the peer's NIC.
        #[serde(default)]
        peer: u32,
        /// The asker's role in the pair's summary page.
        #[serde(default)]
        role: u8,
        /// The binding's bit in the summary page.
        #[serde(default)]
        bit: u32,
    },
}

impl Reply {
    /// Fds this message carries.
    pub fn fds(&self) -> usize {
        match self {
            Reply::Fds {} => 3,
            Reply::Bound { .. } => 3,
            _ => 0,
        }
    }
}

/// Why the channel broke.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The socket failed or timed out.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer closed it.
    #[error("closed by the peer")]
    Closed,
    /// The peer sent something that is not a valid message.
    #[error("bad message: {0}")]
    Bad(String),
}

/// Sends one message with `fds` on its first byte (blocking until all is written, or the
/// socket's send timeout).
pub fn send<T: Serialize>(stream: &UnixStream, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
    let bytes = frame::encode(msg).map_err(|e| ChannelError::Bad(e.to_string()))?;
    let mut off = 0;
    if !fds.is_empty() {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut anc = SendAncillaryBuffer::new(&mut space);
        if !anc.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(ChannelError::Bad(format!("{} fds; at most {MAX_FDS}", fds.len())));
        }
        loop {
            match rustix::net::sendmsg(stream, &[io::IoSlice::new(&bytes)], &mut anc, SendFlags::NOSIGNAL) {
                Ok(n) => {
                    off = n;
                    break;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(ChannelError::Io(e.into())),
            }
        }
    }
    // Bounded: each turn writes at least a byte or fails (a send timeout is an error).
    while off < bytes.len() {
        match rustix::net::send(stream, &bytes[off..], SendFlags::NOSIGNAL) {
            Ok(0) => return Err(ChannelError::Closed),
            Ok(n) => off += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(ChannelError::Io(e.into())),
        }
    }
    Ok(())
}

/// What one read gave.
#[derive(Debug)]
pub enum Received {
    /// A whole frame's body and the fds that came with it.
    Frame(Vec<u8>, Vec<OwnedFd>),
    /// Part of a frame, or nothing yet (a non-blocking socket had no more).
    More,
}

/// The receiving side of a channel: one frame's buffer and the fds that came with it.
#[derive(Debug, Default)]
pub struct Receiver {
    buf: FrameBuf,
    fds: Vec<OwnedFd>,
}

impl Receiver {
    /// A fresh receiver.
    pub fn new() -> Receiver {
        Receiver::default()
    }

    /// Reads once (never past the current frame) and returns the frame if it is complete.
    /// With `nowait` (or on a non-blocking socket) nothing to read gives [`Received::More`];
    /// otherwise it waits up to the socket's receive timeout, then fails.
    pub fn read(&mut self, stream: &UnixStream, nowait: bool) -> Result<Received, ChannelError> {
        // A frame takes at most two reads (its header, then its body, each never past the
        // frame's end); a third turn only finds out that nothing more is there.
        for _ in 0..3 {
            if let Some(body) = self.buf.take().map_err(|e| ChannelError::Bad(e.to_string()))? {
                return Ok(Received::Frame(body, std::mem::take(&mut self.fds)));
            }
            if !self.read_once(stream, nowait)? {
                return Ok(Received::More);
            }
        }
        match self.buf.take().map_err(|e| ChannelError::Bad(e.to_string()))? {
            Some(body) => Ok(Received::Frame(body, std::mem::take(&mut self.fds))),
            None => Ok(Received::More),
        }
    }

    /// One `recvmsg`; false if nothing was there (non-blocking) or it was interrupted.
    fn read_once(&mut self, stream: &UnixStream, nowait: bool) -> Result<bool, ChannelError> {
        let mut chunk = [0u8; 16 * 1024];
        let want = self.buf.room().min(chunk.len());
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut anc = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            stream,
            &mut [io::IoSliceMut::new(&mut chunk[..want])],
            &mut anc,
            if nowait { RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT } else { RecvFlags::CMSG_CLOEXEC },
        );
        for m in anc.drain() {
            if let RecvAncillaryMessage::ScmRights(r) = m {
                self.fds.extend(r);
            }
        }
        let truncated = got.as_ref().is_ok_and(|r| r.flags.contains(rustix::net::ReturnFlags::CTRUNC));
        if truncated || self.fds.len() > MAX_FDS {
            return Err(ChannelError::Bad(format!("more than {MAX_FDS} fds with one message")));
        }
        let n = match got {
            Ok(r) if r.bytes == 0 => return Err(ChannelError::Closed),
            Ok(r) => r.bytes,
            Err(rustix::io::Errno::AGAIN) if nowait => return Ok(false),
            Err(rustix::io::Errno::AGAIN) => {
                return Err(ChannelError::Io(io::Error::new(io::ErrorKind::TimedOut, "no answer in time")))
            }
            Err(rustix::io::Errno::INTR) => return Ok(false),
            Err(e) => return Err(ChannelError::Io(e.into())),
        };
        self.buf.extend(&chunk[..n]).map_err(|e| ChannelError::Bad(e.to_string()))?;
        Ok(true)
    }
}

/// Decodes and validates a command (the switch's side).
pub fn decode_cmd(body: &[u8], fds: usize) -> Result<Cmd, String> {
    let cmd: Cmd = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    cmd.validate(fds)?;
    Ok(cmd)
}

/// Decodes a reply and checks its fd count (the daemon's side).
pub fn decode_reply(body: &[u8], fds: usize) -> Result<Reply, String> {
    let r: Reply = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if fds != r.fds() {
        return Err(format!("{fds} fds with a reply that carries {}", r.fds()));
    }
    Ok(r)
}

/// Sends `cmd` and waits for its reply (blocking, bounded by the socket's timeouts: each
/// read either makes progress toward the one frame, at most 64 KiB, or fails).
pub fn call(
    stream: &UnixStream,
    cmd: &Cmd,
    fds: &[BorrowedFd<'_>],
) -> Result<(Reply, Vec<OwnedFd>), ChannelError> {
    send(stream, cmd, fds)?;
    let mut rx = Receiver::new();
    for _ in 0..(frame::MAX_FRAME + frame::HEADER) {
        if let Received::Frame(body, fds) = rx.read(stream, false)? {
            let r = decode_reply(&body, fds.len()).map_err(ChannelError::Bad)?;
            return Ok((r, fds));
        }
    }
    Err(ChannelError::Bad("no reply".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_checked_beyond_decoding() {
        let attach = r#"{"op":"attach","port":1,"pid":5,"name":"c","grants":{"addrs":["127.0.0.1"],"filters":[{"dir":"both","proto":"udp","local":null,"lo":5,"hi":9}]}}"#;
        assert!(matches!(decode_cmd(attach.as_bytes(), 3), Ok(Cmd::Attach { port: 1, .. })));
        assert!(decode_cmd(attach.as_bytes(), 0).is_err(), "an attach without its fds");
        assert!(decode_cmd(br#"{"op":"detach","port":1}"#, 1).is_err(), "fds where none belong");
        let backwards = attach.replace(r#""lo":5,"hi":9"#, r#""lo":9,"hi":5"#);
        assert!(decode_cmd(backwards.as_bytes(), 3).is_err());
        assert!(decode_cmd(br#"{"op":"detach","port":1,"x":2}"#, 0).is_err());
        assert!(decode_cmd(br#"{"op":"format_disk"}"#, 0).is_err());
        let bind =
            br#"{"op":"bind","port":1,"proto":"tcp","local":"127.0.0.1:5000","remote":"127.0.0.1:6379"}"#;
        assert!(matches!(decode_cmd(bind, 0), Ok(Cmd::Bind { port: 1, .. })));
        assert!(decode_cmd(bind, 1).is_err(), "a bind carries no fds");
        for bad in [
            r#"{"op":"bind","port":1,"proto":"tcp","local":"127.0.0.1:0","remote":"127.0.0.1:6379"}"#,
            r#"{"op":"bind","port":1,"proto":"tcp","local":"0.0.0.0:5000","remote":"127.0.0.1:6379"}"#,
            r#"{"op":"bind","port":1,"proto":"tcp","local":"127.0.0.1:5000","remote":"[::1]:6379"}"#,
            r#"{"op":"bind","port":1,"proto":"tcp","local":"127.0.0.1:5000","remote":"224.0.0.1:6379"}"#,
            r#"{"op":"bind","port":1,"proto":"icmp","local":"127.0.0.1:5000","remote":"127.0.0.1:6379"}"#,
            r#"{"op":"bind","port":1,"proto":"tcp","local":"127.0.0.1:5000"}"#,
        ] {
            assert!(decode_cmd(bad.as_bytes(), 0).is_err(), "{bad}");
        }
        let bound = br#"{"op":"bound","side":1,"slot":3,"id":9}"#;
        assert!(matches!(decode_reply(bound, 3), Ok(Reply::Bound { side: 1, slot: 3, id: 9, .. })));
        assert!(decode_reply(bound, 0).is_err(), "a bound reply without its fds");
    }

    #[test]
    fn grants_round_trip() {
        let g = Grants {
            addrs: vec!["127.0.0.1".parse().unwrap()],
            filters: vec![emu::Filter::port(emu::Proto::Tcp, 80)],
        };
        assert_eq!(GrantsMsg::from_grants(&g).to_grants().unwrap(), g);
    }
}
