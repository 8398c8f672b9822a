//! Remote volumes: the RPC protocol, the server that exports a [`FileSystem`] and the client
//! that implements one over a stream.
//!
//! The owner of a volume serves it to other processes ([`serve_unix`] on one host,
//! [`serve_tcp`] across hosts, [`serve_stream`] over any byte stream); they reach it with a
//! [`Client`], which is itself a [`FileSystem`], so everything above the inode interface (path
//! walk, descriptors, the FUSE export) works the same on a remote volume.
//!
//! # Wire format, version 1
//!
//! All integers are little-endian. A connection starts with a **hello** each way, then carries
//! **frames**: the client sends requests, the server answers each with one reply, in order.
//!
//! Hello (12 bytes), client first, then the server's answer:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `"ARKV"` |
//! | 4 | 2 | client: lowest version it speaks; server: the chosen version, 0 = none in common |
//! | 6 | 2 | client: highest version it speaks; server: 0 |
//! | 8 | 4 | largest frame payload the sender accepts (at least [`MAX_PAYLOAD`]) |
//!
//! The server chooses the highest version in both ranges; with none in common it answers
//! version 0 and closes. A bad magic closes the connection without an answer.
//!
//! Frame (a 16-byte header, then `len` bytes of payload):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | `len`: payload bytes, at most [`MAX_PAYLOAD`] (1 MiB + 4 KiB) |
//! | 4 | 8 | `seq`: chosen by the client, echoed by the reply |
//! | 12 | 1 | `op` (table below), echoed by the reply |
//! | 13 | 1 | `kind`: 0 request, 1 reply with a result, 2 reply with an error |
//! | 14 | 2 | reserved, 0 |
//!
//! A frame whose header is invalid (payload too long, unknown kind, reserved bits set) closes
//! the connection: the stream cannot be trusted to be in step any more. A well-framed request
//! whose payload does not decode gets an error reply and the connection goes on.
//!
//! Payload types: `u8`..`u64`, `i64`; a *name* is `u16 len` + bytes (1..=255 bytes, no `/`, no
//! NUL; a bad one is answered `EINVAL`, a long one `ENAMETOOLONG`); *data* is `u32 len` +
//! bytes (at most [`MAX_DATA`] = 1 MiB); a *time* is `i64 sec, u32 nsec` (nsec < 10⁹); *attr* is
//! `u64 ino, u8 kind (1 file, 2 dir), u32 perm, u32 nlink, u32 uid, u32 gid, u64 size,
//! u64 blocks, time atime, time mtime, time ctime` (77 bytes). Every payload must be consumed
//! exactly: trailing bytes are an error.
//!
//! | op | name | request | result |
//! |---|---|---|---|
//! | 1 | lookup | `u64 dir, name` | `u64 ino` |
//! | 2 | getattr | `u64 ino` | attr |
//! | 3 | setattr | `u64 ino, u8 mask, u32 perm, u32 uid, u32 gid, u64 size, time atime, time mtime` (mask bits 0..5 say which fields apply, in that order) | attr |
//! | 4 | create | `u64 dir, u32 perm, u32 uid, u32 gid, u8 exclusive, name` | `u64 ino, u8 created` |
//! | 5 | mkdir | `u64 dir, u32 perm, u32 uid, u32 gid, name` | `u64 ino` |
//! | 6 | unlink | `u64 dir, name` | — |
//! | 7 | rmdir | `u64 dir, name` | — |
//! | 8 | rename | `u64 dir, name, u64 newdir, name, u8 flags (1 noreplace, 2 exchange)` | — |
//! | 9 | readdir | `u64 dir, u64 cookie, u32 max` (the server answers at most [`MAX_READDIR`]) | `u32 n`, n × `u64 ino, u8 kind, u64 next_cookie, name` |
//! | 10 | read | `u64 ino, u64 off, u32 len` (len ≤ [`MAX_DATA`]) | data |
//! | 11 | write | `u64 ino, u8 at (0 offset, 1 append), u64 off, data` | `u64 offset written at` |
//! | 12 | write_part | `u64 ino, data` | — |
//! | 13 | fsync | `u64 ino, u8 datasync` | — |
//! | 14 | open | `u64 ino` | — |
//! | 15 | release | `u64 ino` | — |
//! | 16 | statfs | — | `u32 block_size, u64 blocks, u64 free, u64 files` |
//!
//! **Large writes.** A write of more than [`MAX_DATA`] bytes is sent as `write_part` frames
//! followed by one `write` frame on the same inode; the server stages the parts (at most
//! [`MAX_STAGED`] = 16 MiB per connection) and performs one [`FileSystem::write`] with all of
//! them, so a large write — and in particular an `O_APPEND` write — stays one atomic write. Any
//! other request between the parts drops what was staged. A write beyond [`MAX_STAGED`] is
//! split into staged writes of that size (an append's later pieces go at the offset the first
//! piece returned: atomic up to 16 MiB, like a pipe's `PIPE_BUF` guarantee but larger).
//! **Large reads** are split by the client into reads of [`MAX_DATA`] bytes.
//!
//! **Errors.** An error reply's payload is `u8 class, i32 errno, u16 len, len bytes of UTF-8
//! text` (text at most [`MAX_MESSAGE`] bytes): class 1 POSIX (the errno, no text), 2 corrupt
//! image, 3 device error, 4 remote (the server's own remote volume failed), 5 protocol (the
//! request did not decode; the client reports it as a remote error). Classes 2–4 become the
//! matching [`FsError`] with their text, so the client's caller sees what the owner saw.
//!
//! **Open files.** `open`/`release` are counted per connection. When a connection ends, for
//! whatever reason, the server releases every inode it still has open, so a client that dies
//! does not keep unlinked files alive. A `release` without a matching `open` on the same
//! connection is `EINVAL`. A [`Client`] that reconnects re-opens what its callers hold open.
//!
//! **Time-outs.** The client waits at most its time-out ([`DEFAULT_TIMEOUT`], 10 s) for the
//! connection, the hello and each request's reply; past it the request fails with
//! [`FsError::Remote`] naming the peer and the op, the connection is closed (a late reply
//! could not be matched safely), and the next request reconnects. The server lets a
//! connection be idle between frames for as long as it likes, but a frame it has started
//! receiving must be complete within [`FRAME_TIMEOUT`] (10 s) and a reply must be taken by the
//! client within the same time, or the connection is closed. The server takes at most
//! [`MAX_CONNECTIONS`] connections at once and closes further ones at once.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{
    Attr, DirEntry, FileSystem, FileType, FsError, FsResult, Ino, RenameFlags, SetAttr, StatFs, Time,
    WriteAt, NAME_MAX,
};
use crate::error::Errno;

/// The protocol version this code speaks (the only one so far).
pub const VERSION: u16 = 1;
/// The first four bytes of a hello.
pub const MAGIC: [u8; 4] = *b"ARKV";
/// Bytes in a hello.
pub const HELLO_LEN: usize = 12;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 16;
/// Most data bytes one `read` or `write` frame carries.
pub const MAX_DATA: usize = 1 << 20;
/// Most payload bytes in one frame: the data plus room for the other fields.
pub const MAX_PAYLOAD: usize = MAX_DATA + 4096;
/// Most bytes the server stages for one write made of `write_part` frames.
pub const MAX_STAGED: usize = 16 << 20;
/// Most entries one `readdir` reply carries.
pub const MAX_READDIR: usize = 1024;
/// Longest error text on the wire, in bytes.
pub const MAX_MESSAGE: usize = 4096;
/// The client's default time-out for connecting and for each request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server waits for the rest of a frame it started receiving, or for a client
/// to take a reply.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections a server serves at once.
pub const MAX_CONNECTIONS: usize = 128;

const KIND_REQUEST: u8 = 0;
const KIND_OK: u8 = 1;
const KIND_ERR: u8 = 2;

const CLASS_POSIX: u8 = 1;
const CLASS_CORRUPT: u8 = 2;
const CLASS_DEVICE: u8 = 3;
const CLASS_REMOTE: u8 = 4;
const CLASS_PROTOCOL: u8 = 5;

/// The operations, as numbered on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Lookup = 1,
    Getattr = 2,
    Setattr = 3,
    Create = 4,
    Mkdir = 5,
    Unlink = 6,
    Rmdir = 7,
    Rename = 8,
    Readdir = 9,
    Read = 10,
    Write = 11,
    WritePart = 12,
    Fsync = 13,
    Open = 14,
    Release = 15,
    Statfs = 16,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        use Op::*;
        Some(match v {
            1 => Lookup,
            2 => Getattr,
            3 => Setattr,
            4 => Create,
            5 => Mkdir,
            6 => Unlink,
            7 => Rmdir,
            8 => Rename,
            9 => Readdir,
            10 => Read,
            11 => Write,
            12 => WritePart,
            13 => Fsync,
            14 => Open,
            15 => Release,
            16 => Statfs,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        use Op::*;
        match self {
            Lookup => "lookup",
            Getattr => "getattr",
            Setattr => "setattr",
            Create => "create",
            Mkdir => "mkdir",
            Unlink => "unlink",
            Rmdir => "rmdir",
            Rename => "rename",
            Readdir => "readdir",
            Read => "read",
            Write => "write",
            WritePart => "write_part",
            Fsync => "fsync",
            Open => "open",
            Release => "release",
            Statfs => "statfs",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding and decoding

/// Why a payload did not decode.
#[derive(Debug)]
enum DecodeError {
    /// A name broke the rules: answered with this POSIX error.
    Name(Errno),
    /// Anything else: answered with a protocol error naming it.
    Malformed(String),
}

type DecResult<T> = Result<T, DecodeError>;

fn malformed<T>(what: impl Into<String>) -> DecResult<T> {
    Err(DecodeError::Malformed(what.into()))
}

/// Checks one name against the [`DirEntry::name`] rules (`.`/`..` are left to the volume).
fn check_name(name: &[u8]) -> Result<(), Errno> {
    if name.len() > NAME_MAX {
        Err(Errno::ENAMETOOLONG)
    } else if name.is_empty() || name.iter().any(|&b| b == b'/' || b == 0) {
        Err(Errno::EINVAL)
    } else {
        Ok(())
    }
}

#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn time(&mut self, t: Time) -> &mut Self {
        self.i64(t.sec).u32(t.nsec)
    }
    /// A name the caller has checked ([`check_name`]): at most 255 bytes.
    fn name(&mut self, n: &[u8]) -> &mut Self {
        self.u16(n.len() as u16);
        self.0.extend_from_slice(n);
        self
    }
    /// Data the caller has capped at [`MAX_DATA`].
    fn data(&mut self, d: &[u8]) -> &mut Self {
        self.u32(d.len() as u32);
        self.0.extend_from_slice(d);
        self
    }
    fn kind(&mut self, k: FileType) -> &mut Self {
        self.u8(match k {
            FileType::File => 1,
            FileType::Dir => 2,
        })
    }
    fn attr(&mut self, a: &Attr) -> &mut Self {
        self.u64(a.ino).kind(a.kind).u32(a.perm).u32(a.nlink).u32(a.uid).u32(a.gid);
        self.u64(a.size).u64(a.blocks).time(a.atime).time(a.mtime).time(a.ctime)
    }
}

struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    fn new(buf: &'a [u8]) -> Dec<'a> {
        Dec { buf, pos: 0 }
    }
    fn take(&mut self, n: usize) -> DecResult<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => malformed(format!("payload truncated at byte {} (wanted {n} more)", self.pos)),
        }
    }
    fn array<const N: usize>(&mut self) -> DecResult<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> DecResult<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> DecResult<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> DecResult<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> DecResult<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> DecResult<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    fn bool(&mut self) -> DecResult<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => malformed(format!("boolean byte {v}")),
        }
    }
    fn time(&mut self) -> DecResult<Time> {
        let sec = self.i64()?;
        let nsec = self.u32()?;
        if nsec >= 1_000_000_000 {
            return malformed(format!("nanoseconds {nsec} out of range"));
        }
        Ok(Time { sec, nsec })
    }
    fn name(&mut self) -> DecResult<&'a [u8]> {
        let len = usize::from(self.u16()?);
        let n = self.take(len)?;
        check_name(n).map_err(DecodeError::Name)?;
        Ok(n)
    }
    fn data(&mut self) -> DecResult<&'a [u8]> {
        let len = self.u32()? as usize;
        if len > MAX_DATA {
            return malformed(format!("data of {len} bytes exceeds {MAX_DATA}"));
        }
        self.take(len)
    }
    fn kind(&mut self) -> DecResult<FileType> {
        match self.u8()? {
            1 => Ok(FileType::File),
            2 => Ok(FileType::Dir),
            v => malformed(format!("file type {v}")),
        }
    }
    fn attr(&mut self) -> DecResult<Attr> {
        Ok(Attr {
            ino: self.u64()?,
            kind: self.kind()?,
            perm: self.u32()?,
            nlink: self.u32()?,
            uid: self.u32()?,
            gid: self.u32()?,
            size: self.u64()?,
            blocks: self.u64()?,
            atime: self.time()?,
            mtime: self.time()?,
            ctime: self.time()?,
        })
    }
    fn finish(&self) -> DecResult<()> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            malformed(format!("{} trailing bytes", self.buf.len() - self.pos))
        }
    }
}

/// A request, decoded (borrowing names and data from the frame).
#[derive(Debug, PartialEq)]
enum Req<'a> {
    Lookup { dir: Ino, name: &'a [u8] },
    Getattr { ino: Ino },
    Setattr { ino: Ino, set: SetAttr },
    Create { dir: Ino, name: &'a [u8], perm: u32, uid: u32, gid: u32, exclusive: bool },
    Mkdir { dir: Ino, name: &'a [u8], perm: u32, uid: u32, gid: u32 },
    Unlink { dir: Ino, name: &'a [u8] },
    Rmdir { dir: Ino, name: &'a [u8] },
    Rename { dir: Ino, name: &'a [u8], newdir: Ino, newname: &'a [u8], flags: RenameFlags },
    Readdir { dir: Ino, cookie: u64, max: u32 },
    Read { ino: Ino, off: u64, len: u32 },
    Write { ino: Ino, at: WriteAt, data: &'a [u8] },
    WritePart { ino: Ino, data: &'a [u8] },
    Fsync { ino: Ino, datasync: bool },
    Open { ino: Ino },
    Release { ino: Ino },
    Statfs,
}

impl Req<'_> {
    fn op(&self) -> Op {
        match self {
            Req::Lookup { .. } => Op::Lookup,
            Req::Getattr { .. } => Op::Getattr,
            Req::Setattr { .. } => Op::Setattr,
            Req::Create { .. } => Op::Create,
            Req::Mkdir { .. } => Op::Mkdir,
            Req::Unlink { .. } => Op::Unlink,
            Req::Rmdir { .. } => Op::Rmdir,
            Req::Rename { .. } => Op::Rename,
            Req::Readdir { .. } => Op::Readdir,
            Req::Read { .. } => Op::Read,
            Req::Write { .. } => Op::Write,
            Req::WritePart { .. } => Op::WritePart,
            Req::Fsync { .. } => Op::Fsync,
            Req::Open { .. } => Op::Open,
            Req::Release { .. } => Op::Release,
            Req::Statfs => Op::Statfs,
        }
    }

    /// The payload. Names must have been checked and data capped by the caller.
    fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        match *self {
            Req::Lookup { dir, name } | Req::Unlink { dir, name } | Req::Rmdir { dir, name } => {
                e.u64(dir).name(name);
            }
            Req::Getattr { ino } | Req::Open { ino } | Req::Release { ino } => {
                e.u64(ino);
            }
            Req::Setattr { ino, set } => {
                let mask = u8::from(set.perm.is_some())
                    | u8::from(set.uid.is_some()) << 1
                    | u8::from(set.gid.is_some()) << 2
                    | u8::from(set.size.is_some()) << 3
                    | u8::from(set.atime.is_some()) << 4
                    | u8::from(set.mtime.is_some()) << 5;
                e.u64(ino).u8(mask).u32(set.perm.unwrap_or(0)).u32(set.uid.unwrap_or(0));
                e.u32(set.gid.unwrap_or(0)).u64(set.size.unwrap_or(0));
                e.time(set.atime.unwrap_or_default()).time(set.mtime.unwrap_or_default());
            }
            Req::Create { dir, name, perm, uid, gid, exclusive } => {
                e.u64(dir).u32(perm).u32(uid).u32(gid).u8(u8::from(exclusive)).name(name);
            }
            Req::Mkdir { dir, name, perm, uid, gid } => {
                e.u64(dir).u32(perm).u32(uid).u32(gid).name(name);
            }
            Req::Rename { dir, name, newdir, newname, flags } => {
                let f = u8::from(flags.noreplace) | u8::from(flags.exchange) << 1;
                e.u64(dir).name(name).u64(newdir).name(newname).u8(f);
            }
            Req::Readdir { dir, cookie, max } => {
                e.u64(dir).u64(cookie).u32(max);
            }
            Req::Read { ino, off, len } => {
                e.u64(ino).u64(off).u32(len);
            }
            Req::Write { ino, at, data } => {
                let (a, off) = match at {
                    WriteAt::Offset(o) => (0, o),
                    WriteAt::Append => (1, 0),
                };
                e.u64(ino).u8(a).u64(off).data(data);
            }
            Req::WritePart { ino, data } => {
                e.u64(ino).data(data);
            }
            Req::Fsync { ino, datasync } => {
                e.u64(ino).u8(u8::from(datasync));
            }
            Req::Statfs => {}
        }
        e.0
    }

    fn decode(op: Op, payload: &[u8]) -> DecResult<Req<'_>> {
        let mut d = Dec::new(payload);
        let r = match op {
            Op::Lookup => Req::Lookup { dir: d.u64()?, name: d.name()? },
            Op::Unlink => Req::Unlink { dir: d.u64()?, name: d.name()? },
            Op::Rmdir => Req::Rmdir { dir: d.u64()?, name: d.name()? },
            Op::Getattr => Req::Getattr { ino: d.u64()? },
            Op::Open => Req::Open { ino: d.u64()? },
            Op::Release => Req::Release { ino: d.u64()? },
            Op::Setattr => {
                let ino = d.u64()?;
                let mask = d.u8()?;
                if mask & !0x3f != 0 {
                    return malformed(format!("setattr mask {mask:#x}"));
                }
                let (perm, uid, gid, size) = (d.u32()?, d.u32()?, d.u32()?, d.u64()?);
                let (atime, mtime) = (d.time()?, d.time()?);
                let on = |bit: u8| mask & (1 << bit) != 0;
                let set = SetAttr {
                    perm: on(0).then_some(perm),
                    uid: on(1).then_some(uid),
                    gid: on(2).then_some(gid),
                    size: on(3).then_some(size),
                    atime: on(4).then_some(atime),
                    mtime: on(5).then_some(mtime),
                };
                Req::Setattr { ino, set }
            }
            Op::Create => {
                let (dir, perm, uid, gid) = (d.u64()?, d.u32()?, d.u32()?, d.u32()?);
                let exclusive = d.bool()?;
                Req::Create { dir, name: d.name()?, perm, uid, gid, exclusive }
            }
            Op::Mkdir => {
                let (dir, perm, uid, gid) = (d.u64()?, d.u32()?, d.u32()?, d.u32()?);
                Req::Mkdir { dir, name: d.name()?, perm, uid, gid }
            }
            Op::Rename => {
                let (dir, name, newdir, newname) = (d.u64()?, d.name()?, d.u64()?, d.name()?);
                let f = d.u8()?;
                if f & !3 != 0 {
                    return malformed(format!("rename flags {f:#x}"));
                }
                let flags = RenameFlags { noreplace: f & 1 != 0, exchange: f & 2 != 0 };
                Req::Rename { dir, name, newdir, newname, flags }
            }
            Op::Readdir => Req::Readdir { dir: d.u64()?, cookie: d.u64()?, max: d.u32()? },
            Op::Read => {
                let (ino, off, len) = (d.u64()?, d.u64()?, d.u32()?);
                if len as usize > MAX_DATA {
                    return malformed(format!("read of {len} bytes exceeds {MAX_DATA}"));
                }
                Req::Read { ino, off, len }
            }
            Op::Write => {
                let ino = d.u64()?;
                let a = d.u8()?;
                let off = d.u64()?;
                let at = match a {
                    0 => WriteAt::Offset(off),
                    1 if off == 0 => WriteAt::Append,
                    _ => return malformed(format!("write position {a} with offset {off}")),
                };
                Req::Write { ino, at, data: d.data()? }
            }
            Op::WritePart => Req::WritePart { ino: d.u64()?, data: d.data()? },
            Op::Fsync => Req::Fsync { ino: d.u64()?, datasync: d.bool()? },
            Op::Statfs => Req::Statfs,
        };
        d.finish()?;
        Ok(r)
    }
}

fn encode_error(e: &FsError) -> Vec<u8> {
    let (class, errno, text) = match e {
        FsError::Posix(n) => (CLASS_POSIX, n.0, ""),
        FsError::Corrupt { what } => (CLASS_CORRUPT, Errno::EIO.0, what.as_str()),
        FsError::Device { what } => (CLASS_DEVICE, Errno::EIO.0, what.as_str()),
        FsError::Remote { what } => (CLASS_REMOTE, Errno::EIO.0, what.as_str()),
    };
    protocol_error(class, errno, text)
}

fn protocol_error(class: u8, errno: i32, text: &str) -> Vec<u8> {
    // Cut at a character boundary at most MAX_MESSAGE bytes in.
    let mut end = text.len().min(MAX_MESSAGE);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut e = Enc::default();
    e.u8(class).u32(errno as u32).u16(end as u16);
    e.0.extend_from_slice(&text.as_bytes()[..end]);
    e.0
}

/// Decodes an error reply's payload into the error the caller sees.
fn decode_error(payload: &[u8], peer: &str, op: Op) -> DecResult<FsError> {
    let mut d = Dec::new(payload);
    let class = d.u8()?;
    let errno = d.u32()? as i32;
    let len = usize::from(d.u16()?);
    if len > MAX_MESSAGE {
        return malformed(format!("error text of {len} bytes"));
    }
    let text = String::from_utf8_lossy(d.take(len)?).into_owned();
    d.finish()?;
    Ok(match class {
        CLASS_POSIX if (1..4096).contains(&errno) => FsError::Posix(Errno(errno)),
        CLASS_POSIX => return malformed(format!("errno {errno}")),
        CLASS_CORRUPT => FsError::Corrupt { what: text },
        CLASS_DEVICE => FsError::Device { what: text },
        CLASS_REMOTE => FsError::Remote { what: text },
        CLASS_PROTOCOL => FsError::Remote { what: format!("{peer} refused {}: {text}", op.name()) },
        c => return malformed(format!("error class {c}")),
    })
}

fn header(len: usize, seq: u64, op: u8, kind: u8) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    h[4..12].copy_from_slice(&seq.to_le_bytes());
    h[12] = op;
    h[13] = kind;
    h
}

struct Header {
    len: usize,
    seq: u64,
    op: u8,
    kind: u8,
}

fn parse_header(h: &[u8; HEADER_LEN]) -> Result<Header, String> {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&h[4..12]);
    let (op, kind) = (h[12], h[13]);
    if len > MAX_PAYLOAD {
        return Err(format!("frame of {len} bytes exceeds {MAX_PAYLOAD}"));
    }
    if kind > KIND_ERR {
        return Err(format!("frame kind {kind}"));
    }
    if h[14] != 0 || h[15] != 0 {
        return Err("reserved header bytes set".into());
    }
    Ok(Header { len, seq: u64::from_le_bytes(seq), op, kind })
}

fn hello(version_lo: u16, version_hi: u16) -> [u8; HELLO_LEN] {
    let mut h = [0u8; HELLO_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&version_lo.to_le_bytes());
    h[6..8].copy_from_slice(&version_hi.to_le_bytes());
    h[8..12].copy_from_slice(&(MAX_PAYLOAD as u32).to_le_bytes());
    h
}

// ---------------------------------------------------------------------------------------------
// Server

/// What a connection holds on the server's file system.
#[derive(Default)]
struct ConnState {
    /// Inodes this connection opened, with their counts.
    opens: HashMap<Ino, u32>,
    /// Parts of a large write: the inode and the bytes so far.
    staged: Option<(Ino, Vec<u8>)>,
}

impl ConnState {
    fn release_all(&mut self, fs: &dyn FileSystem) {
        for (ino, n) in self.opens.drain() {
            for _ in 0..n {
                if let Err(e) = fs.release(ino) {
                    tracing::warn!(ino, "rpc: releasing an inode of a closed connection: {e}");
                }
            }
        }
    }
}

/// Runs one request against `fs`; the reply's payload or the error to send.
fn handle(fs: &dyn FileSystem, st: &mut ConnState, req: Req<'_>) -> FsResult<Vec<u8>> {
    let staged = match (&req, st.staged.take()) {
        (Req::Write { ino, .. } | Req::WritePart { ino, .. }, Some((s, buf))) if s == *ino => Some(buf),
        _ => None,
    };
    let mut e = Enc::default();
    match req {
        Req::Lookup { dir, name } => {
            e.u64(fs.lookup(dir, name)?);
        }
        Req::Getattr { ino } => {
            e.attr(&fs.getattr(ino)?);
        }
        Req::Setattr { ino, set } => {
            e.attr(&fs.setattr(ino, set)?);
        }
        Req::Create { dir, name, perm, uid, gid, exclusive } => {
            let (ino, created) = fs.create(dir, name, perm, uid, gid, exclusive)?;
            e.u64(ino).u8(u8::from(created));
        }
        Req::Mkdir { dir, name, perm, uid, gid } => {
            e.u64(fs.mkdir(dir, name, perm, uid, gid)?);
        }
        Req::Unlink { dir, name } => fs.unlink(dir, name)?,
        Req::Rmdir { dir, name } => fs.rmdir(dir, name)?,
        Req::Rename { dir, name, newdir, newname, flags } => fs.rename(dir, name, newdir, newname, flags)?,
        Req::Readdir { dir, cookie, max } => {
            let max = (max as usize).min(MAX_READDIR);
            let entries = fs.readdir(dir, cookie, max)?;
            let n = entries.len().min(max);
            e.u32(n as u32);
            for (ent, next) in entries.iter().take(n) {
                if check_name(&ent.name).is_err() {
                    return Err(FsError::Corrupt { what: format!("directory {dir} holds an invalid name") });
                }
                e.u64(ent.ino).kind(ent.kind).u64(*next).name(&ent.name);
            }
        }
        Req::Read { ino, off, len } => {
            // len <= MAX_DATA was checked while decoding.
            let mut buf = vec![0u8; len as usize];
            let n = fs.read(ino, off, &mut buf)?;
            e.data(&buf[..n.min(buf.len())]);
        }
        Req::WritePart { ino, data } => {
            let mut buf = staged.unwrap_or_default();
            if buf.len() + data.len() > MAX_STAGED {
                return Err(FsError::Posix(Errno::EFBIG));
            }
            buf.extend_from_slice(data);
            st.staged = Some((ino, buf));
        }
        Req::Write { ino, at, data } => {
            let off = match staged {
                Some(mut buf) => {
                    buf.extend_from_slice(data);
                    fs.write(ino, at, &buf)?
                }
                None => fs.write(ino, at, data)?,
            };
            e.u64(off);
        }
        Req::Fsync { ino, datasync } => fs.fsync(ino, datasync)?,
        Req::Open { ino } => {
            fs.open(ino)?;
            *st.opens.entry(ino).or_insert(0) += 1;
        }
        Req::Release { ino } => {
            let Some(n) = st.opens.get_mut(&ino) else { return Err(FsError::Posix(Errno::EINVAL)) };
            *n -= 1;
            if *n == 0 {
                st.opens.remove(&ino);
            }
            fs.release(ino)?;
        }
        Req::Statfs => {
            let s = fs.statfs()?;
            e.u32(s.block_size).u64(s.blocks).u64(s.free).u64(s.files);
        }
    }
    Ok(e.0)
}

/// How a connection's reader reacts to its stream's time-outs.
struct Watch<'a> {
    /// Set when the server stops: the connection ends at the next time-out.
    stop: Option<&'a AtomicBool>,
}

/// Reads exactly `buf`. `Ok(false)` at a clean end of stream before the first byte. A
/// time-out (the stream's read time-out) before the first byte, when `idle_ok`, keeps
/// waiting; after it, waits up to [`FRAME_TIMEOUT`] in all.
fn read_frame_part<S: Read>(s: &mut S, buf: &mut [u8], idle_ok: bool, w: &Watch<'_>) -> io::Result<bool> {
    let mut got = 0;
    let mut started: Option<Instant> = if idle_ok { None } else { Some(Instant::now()) };
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) if got == 0 && idle_ok => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                got += n;
                started.get_or_insert_with(Instant::now);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if w.stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                    return Err(io::Error::other("server stopping"));
                }
                if started.is_some_and(|t| t.elapsed() > FRAME_TIMEOUT) {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "frame not completed in time"));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Serves one connection over `stream` until the peer closes it or breaks the protocol: the
/// hello, then each request in order. Whatever the connection had open is released at the end.
/// `Ok(())` when the peer closed cleanly, else the reason the connection was dropped.
///
/// Tests, and transports other than [`serve_unix`]/[`serve_tcp`] (TCP through the library OS),
/// call this with any byte stream; it adds no time-outs of its own (the stream's apply).
pub fn serve_stream<S: Read + Write>(stream: S, fs: Arc<dyn FileSystem>) -> FsResult<()> {
    serve_conn(stream, &*fs, &Watch { stop: None })
}

fn serve_conn<S: Read + Write>(mut stream: S, fs: &dyn FileSystem, w: &Watch<'_>) -> FsResult<()> {
    let dropped = |why: String| FsError::Remote { what: format!("rpc connection dropped: {why}") };
    let mut h = [0u8; HELLO_LEN];
    match read_frame_part(&mut stream, &mut h, true, w) {
        Ok(true) => {}
        Ok(false) => return Ok(()),
        Err(e) => return Err(dropped(format!("reading the hello: {e}"))),
    }
    if h[0..4] != MAGIC {
        return Err(dropped("not an Arrakis volume client (bad magic)".into()));
    }
    let lo = u16::from_le_bytes([h[4], h[5]]);
    let hi = u16::from_le_bytes([h[6], h[7]]);
    let chosen = if lo <= VERSION && VERSION <= hi { VERSION } else { 0 };
    let accepts = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
    stream.write_all(&hello(chosen, 0)).and_then(|()| stream.flush()).map_err(|e| dropped(e.to_string()))?;
    if chosen == 0 {
        return Err(dropped(format!("client speaks versions {lo}..={hi}, this server {VERSION}")));
    }
    if accepts < MAX_PAYLOAD {
        return Err(dropped(format!("client accepts frames of {accepts} bytes, fewer than {MAX_PAYLOAD}")));
    }
    let mut st = ConnState::default();
    let r = serve_frames(&mut stream, fs, &mut st, w);
    st.release_all(fs);
    r.map_err(dropped)
}

fn serve_frames<S: Read + Write>(
    stream: &mut S,
    fs: &dyn FileSystem,
    st: &mut ConnState,
    w: &Watch<'_>,
) -> Result<(), String> {
    let mut payload = Vec::new();
    loop {
        let mut hb = [0u8; HEADER_LEN];
        match read_frame_part(stream, &mut hb, true, w) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => return Err(format!("reading a frame header: {e}")),
        }
        let h = parse_header(&hb)?;
        if h.kind != KIND_REQUEST {
            return Err(format!("client sent a frame of kind {}", h.kind));
        }
        // h.len <= MAX_PAYLOAD was checked by parse_header.
        payload.clear();
        payload.resize(h.len, 0);
        read_frame_part(stream, &mut payload, false, w).map_err(|e| format!("reading a payload: {e}"))?;
        let (kind, reply) = match Op::from_u8(h.op) {
            None => {
                st.staged = None;
                (KIND_ERR, protocol_error(CLASS_PROTOCOL, Errno::ENOSYS.0, &format!("unknown op {}", h.op)))
            }
            Some(op) => match Req::decode(op, &payload) {
                Err(DecodeError::Name(e)) => {
                    st.staged = None;
                    (KIND_ERR, encode_error(&FsError::Posix(e)))
                }
                Err(DecodeError::Malformed(m)) => {
                    st.staged = None;
                    (KIND_ERR, protocol_error(CLASS_PROTOCOL, Errno::EINVAL.0, &m))
                }
                Ok(req) => match handle(fs, st, req) {
                    Ok(r) => (KIND_OK, r),
                    Err(e) => (KIND_ERR, encode_error(&e)),
                },
            },
        };
        let mut frame = Vec::with_capacity(HEADER_LEN + reply.len());
        frame.extend_from_slice(&header(reply.len(), h.seq, h.op, kind));
        frame.extend_from_slice(&reply);
        stream
            .write_all(&frame)
            .and_then(|()| stream.flush())
            .map_err(|e| format!("sending a reply: {e}"))?;
    }
}

/// A stream the server can serve: a Unix or TCP socket.
trait ServerStream: Read + Write + Send + 'static {
    fn prepare(&self) -> io::Result<()>;
    fn close(&self);
    fn clone_stream(&self) -> io::Result<Box<dyn ServerStream>>;
}

/// How often a connection thread wakes to check whether the server stops.
const POLL: Duration = Duration::from_millis(500);

macro_rules! server_stream {
    ($t:ty) => {
        impl ServerStream for $t {
            fn prepare(&self) -> io::Result<()> {
                self.set_read_timeout(Some(POLL))?;
                self.set_write_timeout(Some(FRAME_TIMEOUT))
            }
            fn close(&self) {
                let _ = self.shutdown(std::net::Shutdown::Both);
            }
            fn clone_stream(&self) -> io::Result<Box<dyn ServerStream>> {
                Ok(Box::new(self.try_clone()?))
            }
        }
    };
}
server_stream!(UnixStream);
server_stream!(TcpStream);

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// A connection being served: a clone of its stream (to shut it down) and its thread.
type ConnThread = (Box<dyn ServerStream>, JoinHandle<()>);

struct Shared {
    fs: Arc<dyn FileSystem>,
    stop: AtomicBool,
    active: AtomicUsize,
    /// Open connections (a clone of each stream, to shut it down) and their threads.
    conns: Mutex<Vec<ConnThread>>,
}

/// A running RPC server: an accept thread and a thread per connection. [`Server::shutdown`]
/// (or dropping it) stops accepting, closes every connection (releasing what each had open),
/// joins the threads and removes the Unix socket file.
pub struct Server {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    wake: Wake,
}

enum Wake {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl Server {
    /// Where a TCP server listens (useful after binding port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self.wake {
            Wake::Tcp(a) => Some(a),
            Wake::Unix(_) => None,
        }
    }

    /// Connections being served now.
    pub fn connections(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// Stops the server and waits for its threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.shared.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the accept thread with a connection of our own.
        match &self.wake {
            Wake::Unix(p) => drop(UnixStream::connect(p)),
            Wake::Tcp(a) => drop(TcpStream::connect_timeout(a, Duration::from_secs(1))),
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        for (s, _) in &conns {
            s.close();
        }
        for (_, t) in conns {
            let _ = t.join();
        }
        if let Wake::Unix(p) = &self.wake {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves `fs` on a Unix socket at `path`; a stale socket file there is replaced (any other
/// kind of file is refused with `EEXIST`).
pub fn serve_unix(path: &Path, fs: Arc<dyn FileSystem>) -> FsResult<Server> {
    use std::os::unix::fs::FileTypeExt;
    let what = |e: io::Error| FsError::Remote { what: format!("cannot serve on {}: {e}", path.display()) };
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(FsError::Remote {
                what: format!("cannot serve on {}: it exists and is not a socket", path.display()),
            });
        }
        if UnixStream::connect(path).is_ok() {
            return Err(FsError::Remote {
                what: format!("cannot serve on {}: another server answers there", path.display()),
            });
        }
        std::fs::remove_file(path).map_err(what)?;
    }
    let l = UnixListener::bind(path).map_err(what)?;
    // Out of the program's fd numbering (it serves a forked child behind the program's back).
    let l = UnixListener::from(crate::event::hide(l.into()));
    start(Listener::Unix(l), Wake::Unix(path.to_path_buf()), fs)
}

/// Serves `fs` on TCP at `addr` (port 0 picks one: see [`Server::local_addr`]).
pub fn serve_tcp(addr: impl ToSocketAddrs, fs: Arc<dyn FileSystem>) -> FsResult<Server> {
    let what = |e: io::Error| FsError::Remote { what: format!("cannot serve on TCP: {e}") };
    let l = TcpListener::bind(addr).map_err(what)?;
    let a = l.local_addr().map_err(what)?;
    start(Listener::Tcp(l), Wake::Tcp(a), fs)
}

fn start(l: Listener, wake: Wake, fs: Arc<dyn FileSystem>) -> FsResult<Server> {
    let shared = Arc::new(Shared {
        fs,
        stop: AtomicBool::new(false),
        active: AtomicUsize::new(0),
        conns: Mutex::new(Vec::new()),
    });
    let sh = shared.clone();
    let accept = std::thread::Builder::new()
        .name("arrakis-rpc-accept".into())
        .spawn(move || accept_loop(l, &sh))
        .map_err(|e| FsError::Remote { what: format!("cannot start the rpc server: {e}") })?;
    Ok(Server { shared, accept: Some(accept), wake })
}

fn accept_loop(l: Listener, sh: &Arc<Shared>) {
    loop {
        let s: io::Result<Box<dyn ServerStream>> = match &l {
            Listener::Unix(l) => l.accept().map(|(s, _)| {
                Box::new(UnixStream::from(crate::event::hide(s.into()))) as Box<dyn ServerStream>
            }),
            Listener::Tcp(l) => l.accept().map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Box::new(TcpStream::from(crate::event::hide(s.into()))) as Box<dyn ServerStream>
            }),
        };
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        let s = match s {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("rpc: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        // Reap finished connections.
        lock(&sh.conns).retain(|(_, t)| !t.is_finished());
        if sh.active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            tracing::warn!("rpc: {MAX_CONNECTIONS} connections already; closing a new one");
            s.close();
            continue;
        }
        let Ok(closer) = s.clone_stream() else { continue };
        if s.prepare().is_err() {
            continue;
        }
        let sh2 = sh.clone();
        sh.active.fetch_add(1, Ordering::SeqCst);
        let t = std::thread::Builder::new().name("arrakis-rpc-conn".into()).spawn(move || {
            if let Err(e) = serve_conn(s, &*sh2.fs, &Watch { stop: Some(&sh2.stop) }) {
                tracing::debug!("{e}");
            }
            sh2.active.fetch_sub(1, Ordering::SeqCst);
        });
        match t {
            Ok(t) => lock(&sh.conns).push((closer, t)),
            Err(e) => {
                sh.active.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!("rpc: cannot start a connection thread: {e}");
                closer.close();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client

/// A stream the client can use.
trait ClientStream: Read + Write + Send {
    fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()>;
    fn close(&self);
    /// The server closed the connection (or it failed) while no request was out: the
    /// server never sends unasked, so anything to read now is the end.
    fn gone(&self) -> bool;
}

macro_rules! client_stream {
    ($t:ty) => {
        impl ClientStream for $t {
            fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
                self.set_read_timeout(t)?;
                self.set_write_timeout(t)
            }
            fn close(&self) {
                let _ = self.shutdown(std::net::Shutdown::Both);
            }
            fn gone(&self) -> bool {
                use rustix::net::RecvFlags;
                let mut b = [std::mem::MaybeUninit::<u8>::uninit(); 1];
                match rustix::net::recv(self, &mut b, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
                    Err(e) => e != rustix::io::Errno::AGAIN && e != rustix::io::Errno::INTR,
                    Ok(_) => true,
                }
            }
        }
    };
}
client_stream!(UnixStream);
client_stream!(TcpStream);

#[derive(Clone, Debug)]
enum Addr {
    Unix(PathBuf),
    Tcp(Vec<SocketAddr>),
    /// Given as a connected stream: cannot reconnect.
    None,
}

struct Conn {
    stream: Option<Box<dyn ClientStream>>,
    seq: u64,
    /// Inodes this client's callers hold open, re-opened after a reconnect.
    opens: HashMap<Ino, u32>,
}

/// A remote volume: implements [`FileSystem`] by RPC to the volume's owner. One connection,
/// used by one request at a time (callers on other threads wait for it); broken or timed-out
/// connections are re-established at the next request.
pub struct Client {
    conn: Mutex<Conn>,
    addr: Addr,
    /// Where the volume moved to ([`Client::rediscover`]); takes the place of `addr`.
    moved: Mutex<Option<PathBuf>>,
    /// Finds the volume's server again when `addr` stops answering (its owner exited).
    rediscover: Option<Rediscover>,
    /// The peer, for error messages.
    peer: String,
    timeout: Duration,
}

/// Asked by a [`Client`] whose Unix socket no longer answers: the socket to use now (the
/// volume's new owner's, possibly a server this process just started).
pub type Rediscover = Box<dyn Fn() -> FsResult<PathBuf> + Send + Sync>;

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("peer", &self.peer).field("timeout", &self.timeout).finish()
    }
}

impl Client {
    /// Connects to the server on the Unix socket at `path`, with the default time-out.
    pub fn connect_unix(path: &Path) -> FsResult<Client> {
        Client::connect_unix_timeout(path, DEFAULT_TIMEOUT)
    }

    /// Connects to the server on the Unix socket at `path`; `timeout` bounds the connection,
    /// the hello and every later request.
    pub fn connect_unix_timeout(path: &Path, timeout: Duration) -> FsResult<Client> {
        Client::connect(Addr::Unix(path.to_path_buf()), format!("volume server {}", path.display()), timeout)
    }

    /// Connects to a server over TCP, with the default time-out.
    pub fn connect_tcp(addr: impl ToSocketAddrs) -> FsResult<Client> {
        Client::connect_tcp_timeout(addr, DEFAULT_TIMEOUT)
    }

    /// Connects to a server over TCP; `timeout` as for [`Client::connect_unix_timeout`].
    pub fn connect_tcp_timeout(addr: impl ToSocketAddrs, timeout: Duration) -> FsResult<Client> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| FsError::Remote { what: format!("volume server address: {e}") })?
            .collect();
        let peer = match addrs.first() {
            Some(a) => format!("volume server {a} (tcp)"),
            None => return Err(FsError::Remote { what: "volume server address resolves to nothing".into() }),
        };
        Client::connect(Addr::Tcp(addrs), peer, timeout)
    }

    /// A client over a connected Unix stream (a socketpair, an fd passed by the daemon). It
    /// cannot reconnect: once the stream breaks every request fails.
    pub fn from_unix_stream(stream: UnixStream, peer: &str, timeout: Duration) -> FsResult<Client> {
        let c = Client {
            conn: Mutex::new(Conn { stream: None, seq: 0, opens: HashMap::new() }),
            addr: Addr::None,
            moved: Mutex::new(None),
            rediscover: None,
            peer: peer.to_string(),
            timeout,
        };
        let s = c.handshake(Box::new(stream))?;
        lock(&c.conn).stream = Some(s);
        Ok(c)
    }

    fn connect(addr: Addr, peer: String, timeout: Duration) -> FsResult<Client> {
        let c = Client {
            conn: Mutex::new(Conn { stream: None, seq: 0, opens: HashMap::new() }),
            addr,
            moved: Mutex::new(None),
            rediscover: None,
            peer,
            timeout,
        };
        let s = c.open_stream()?;
        lock(&c.conn).stream = Some(s);
        Ok(c)
    }

    /// When the Unix socket stops answering, `f` names the one to use instead (see
    /// [`Rediscover`]); open files are re-opened there as after any reconnect.
    pub fn rediscover(mut self, f: Rediscover) -> Client {
        self.rediscover = Some(f);
        self
    }

    fn err(&self, what: impl std::fmt::Display) -> FsError {
        FsError::Remote { what: format!("{}: {what}", self.peer) }
    }

    /// A new connection, after the hello.
    fn open_stream(&self) -> FsResult<Box<dyn ClientStream>> {
        let s: Box<dyn ClientStream> = match &self.addr {
            Addr::Unix(p) => {
                let moved = lock(&self.moved).clone();
                let p = moved.as_deref().unwrap_or(p);
                match (UnixStream::connect(p), &self.rediscover) {
                    // Out of the program's fd numbering (a forked child reconnects behind its back).
                    (Ok(s), _) => Box::new(UnixStream::from(crate::event::hide(s.into()))),
                    (Err(e), None) => return Err(self.err(format!("connect: {e}"))),
                    (Err(e), Some(f)) => {
                        let now = f().map_err(|e2| {
                            self.err(format!("connect: {e}; finding the volume's new server: {e2}"))
                        })?;
                        let s = UnixStream::connect(&now)
                            .map_err(|e| self.err(format!("connect to {}: {e}", now.display())))?;
                        *lock(&self.moved) = Some(now);
                        Box::new(UnixStream::from(crate::event::hide(s.into())))
                    }
                }
            }
            Addr::Tcp(addrs) => {
                let mut last = None;
                let mut ok = None;
                for a in addrs {
                    match TcpStream::connect_timeout(a, self.timeout) {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            ok = Some(TcpStream::from(crate::event::hide(s.into())));
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                match ok {
                    Some(s) => Box::new(s),
                    None => {
                        let e = last.map(|e| e.to_string()).unwrap_or_default();
                        return Err(self.err(format!("connect: {e}")));
                    }
                }
            }
            Addr::None => return Err(self.err("connection lost (it cannot be re-established)")),
        };
        self.handshake(s)
    }

    fn handshake(&self, mut s: Box<dyn ClientStream>) -> FsResult<Box<dyn ClientStream>> {
        let mut clock = Clock::new(self.timeout);
        let fail = |s: &dyn ClientStream, what: String| {
            s.close();
            self.err(what)
        };
        if let Err(e) = write_all_by(&mut *s, &hello(VERSION, VERSION), &mut clock) {
            return Err(fail(&*s, format!("hello: {e}")));
        }
        let mut h = [0u8; HELLO_LEN];
        if let Err(e) = read_exact_by(&mut *s, &mut h, &mut clock) {
            return Err(fail(&*s, format!("hello: {}", timeout_text(&e, self.timeout))));
        }
        let v = u16::from_le_bytes([h[4], h[5]]);
        let accepts = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
        if h[0..4] != MAGIC {
            return Err(fail(&*s, "hello: not an Arrakis volume server".into()));
        }
        if v != VERSION {
            return Err(fail(&*s, format!("hello: no protocol version in common (client speaks {VERSION})")));
        }
        if accepts < MAX_PAYLOAD {
            return Err(fail(&*s, format!("hello: server accepts frames of only {accepts} bytes")));
        }
        Ok(s)
    }

    /// Sends requests and reads their replies, holding the connection; reconnects (and
    /// re-opens what callers hold open) first if the last connection broke.
    fn with_conn<T>(&self, f: impl FnOnce(&mut Exchange<'_>) -> FsResult<T>) -> FsResult<T> {
        let mut g = lock(&self.conn);
        let c = &mut *g;
        // A server that went away since the last request (its process exited) never saw
        // this one: reconnect now rather than fail it.
        if c.stream.as_ref().is_some_and(|s| s.gone()) {
            if let Some(s) = c.stream.take() {
                s.close();
            }
        }
        if c.stream.is_none() {
            let s = self.open_stream()?;
            c.stream = Some(s);
            let opens: Vec<(Ino, u32)> = c.opens.iter().map(|(&i, &n)| (i, n)).collect();
            for (ino, n) in opens {
                let mut held = 0;
                for _ in 0..n {
                    let mut x = Exchange { client: self, conn: c };
                    match x.call(Op::Open, &Req::Open { ino }.encode()) {
                        Ok(_) => held += 1,
                        // The connection broke again: the next request starts over.
                        Err(e) if c.stream.is_none() => return Err(e),
                        // Gone meanwhile (freed while no connection held it open): the
                        // caller's later release fails with EINVAL.
                        Err(e) => tracing::warn!(ino, "rpc: re-opening after a reconnect: {e}"),
                    }
                }
                if held == 0 {
                    c.opens.remove(&ino);
                } else {
                    c.opens.insert(ino, held);
                }
            }
        }
        let mut x = Exchange { client: self, conn: c };
        f(&mut x)
    }

    fn request(&self, req: &Req<'_>) -> FsResult<Vec<u8>> {
        let op = req.op();
        self.with_conn(|x| x.call(op, &req.encode()))
    }

    fn decode<'p, T>(
        &self,
        op: Op,
        payload: &'p [u8],
        f: impl FnOnce(&mut Dec<'p>) -> DecResult<T>,
    ) -> FsResult<T> {
        let mut d = Dec::new(payload);
        let r = f(&mut d).and_then(|v| d.finish().map(|()| v));
        r.map_err(|e| self.err(format!("bad {} reply: {e:?}", op.name())))
    }
}

/// One holder of the connection.
struct Exchange<'a> {
    client: &'a Client,
    conn: &'a mut Conn,
}

impl Exchange<'_> {
    /// One request and its reply; any failure of the transport closes the connection.
    fn call(&mut self, op: Op, payload: &[u8]) -> FsResult<Vec<u8>> {
        let cl = self.client;
        let Some(s) = self.conn.stream.as_mut() else {
            return Err(cl.err(format!("{}: not connected", op.name())));
        };
        self.conn.seq = self.conn.seq.wrapping_add(1);
        let seq = self.conn.seq;
        match exchange(&mut **s, seq, op, payload, cl.timeout) {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(err_payload)) => match decode_error(&err_payload, &cl.peer, op) {
                Ok(e) => Err(e),
                Err(e) => {
                    self.drop_stream();
                    Err(cl.err(format!("bad error reply to {}: {e:?}", op.name())))
                }
            },
            Err(e) => {
                self.drop_stream();
                Err(cl.err(format!("{}: {}", op.name(), timeout_text(&e, cl.timeout))))
            }
        }
    }

    fn drop_stream(&mut self) {
        if let Some(s) = self.conn.stream.take() {
            s.close();
        }
    }
}

fn timeout_text(e: &io::Error, t: Duration) -> String {
    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
        format!("no answer within {t:?}")
    } else {
        e.to_string()
    }
}

/// Sends a request and reads its reply: `Ok(Ok(payload))`, `Ok(Err(error payload))`, or the
/// transport's failure (time-outs included).
fn exchange(
    s: &mut dyn ClientStream,
    seq: u64,
    op: Op,
    payload: &[u8],
    timeout: Duration,
) -> io::Result<Result<Vec<u8>, Vec<u8>>> {
    let mut clock = Clock::new(timeout);
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&header(payload.len(), seq, op as u8, KIND_REQUEST));
    frame.extend_from_slice(payload);
    write_all_by(s, &frame, &mut clock)?;
    let mut hb = [0u8; HEADER_LEN];
    read_exact_by(s, &mut hb, &mut clock)?;
    let h = parse_header(&hb).map_err(io::Error::other)?;
    if h.seq != seq || h.op != op as u8 || h.kind == KIND_REQUEST {
        return Err(io::Error::other(format!(
            "reply out of step (seq {} op {} kind {}, expected seq {seq} op {})",
            h.seq, h.op, h.kind, op as u8
        )));
    }
    let mut body = vec![0u8; h.len];
    read_exact_by(s, &mut body, &mut clock)?;
    Ok(if h.kind == KIND_OK { Ok(body) } else { Err(body) })
}

/// A request's deadline, and the time-out last set on the socket. A wait that starts now
/// with the socket's time-out ends at most `now + set`; the socket's time-out is set again only
/// when that would overshoot the deadline by more than a tenth of the time-out, so a request
/// usually costs one `setsockopt` pair, not one per `read`.
struct Clock {
    deadline: Instant,
    slack: Duration,
    set: Option<Duration>,
}

impl Clock {
    fn new(timeout: Duration) -> Clock {
        Clock { deadline: Instant::now() + timeout, slack: timeout / 10, set: None }
    }

    fn arm(&mut self, s: &dyn ClientStream) -> io::Result<()> {
        let now = Instant::now();
        let left = self.deadline.saturating_duration_since(now);
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        if self.set.is_none_or(|d| (now + d).saturating_duration_since(self.deadline) > self.slack) {
            s.set_timeouts(Some(left))?;
            self.set = Some(left);
        }
        Ok(())
    }
}

fn read_exact_by(s: &mut dyn ClientStream, buf: &mut [u8], clock: &mut Clock) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        clock.arm(s)?;
        match s.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection"))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_all_by(s: &mut dyn ClientStream, buf: &[u8], clock: &mut Clock) -> io::Result<()> {
    let mut put = 0;
    while put < buf.len() {
        clock.arm(s)?;
        match s.write(&buf[put..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => put += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn checked_name(name: &[u8]) -> FsResult<&[u8]> {
    check_name(name).map_err(FsError::Posix)?;
    Ok(name)
}

impl FileSystem for Client {
    fn lookup(&self, dir: Ino, name: &[u8]) -> FsResult<Ino> {
        let r = self.request(&Req::Lookup { dir, name: checked_name(name)? })?;
        self.decode(Op::Lookup, &r, |d| d.u64())
    }

    fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        let r = self.request(&Req::Getattr { ino })?;
        self.decode(Op::Getattr, &r, |d| d.attr())
    }

    fn setattr(&self, ino: Ino, set: SetAttr) -> FsResult<Attr> {
        let r = self.request(&Req::Setattr { ino, set })?;
        self.decode(Op::Setattr, &r, |d| d.attr())
    }

    fn create(
        &self,
        dir: Ino,
        name: &[u8],
        perm: u32,
        uid: u32,
        gid: u32,
        exclusive: bool,
    ) -> FsResult<(Ino, bool)> {
        let r = self.request(&Req::Create { dir, name: checked_name(name)?, perm, uid, gid, exclusive })?;
        self.decode(Op::Create, &r, |d| Ok((d.u64()?, d.bool()?)))
    }

    fn mkdir(&self, dir: Ino, name: &[u8], perm: u32, uid: u32, gid: u32) -> FsResult<Ino> {
        let r = self.request(&Req::Mkdir { dir, name: checked_name(name)?, perm, uid, gid })?;
        self.decode(Op::Mkdir, &r, |d| d.u64())
    }

    fn unlink(&self, dir: Ino, name: &[u8]) -> FsResult<()> {
        let r = self.request(&Req::Unlink { dir, name: checked_name(name)? })?;
        self.decode(Op::Unlink, &r, |_| Ok(()))
    }

    fn rmdir(&self, dir: Ino, name: &[u8]) -> FsResult<()> {
        let r = self.request(&Req::Rmdir { dir, name: checked_name(name)? })?;
        self.decode(Op::Rmdir, &r, |_| Ok(()))
    }

    fn rename(&self, dir: Ino, name: &[u8], newdir: Ino, newname: &[u8], flags: RenameFlags) -> FsResult<()> {
        let (name, newname) = (checked_name(name)?, checked_name(newname)?);
        let r = self.request(&Req::Rename { dir, name, newdir, newname, flags })?;
        self.decode(Op::Rename, &r, |_| Ok(()))
    }

    fn readdir(&self, dir: Ino, cookie: u64, max: usize) -> FsResult<Vec<(DirEntry, u64)>> {
        let max = max.min(MAX_READDIR);
        let r = self.request(&Req::Readdir { dir, cookie, max: max as u32 })?;
        self.decode(Op::Readdir, &r, |d| {
            let n = d.u32()? as usize;
            if n > max {
                return malformed(format!("{n} entries, asked for {max}"));
            }
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let ino = d.u64()?;
                let kind = d.kind()?;
                let next = d.u64()?;
                let name = d.name()?.to_vec();
                v.push((DirEntry { name, ino, kind }, next));
            }
            Ok(v)
        })
    }

    fn read(&self, ino: Ino, off: u64, buf: &mut [u8]) -> FsResult<usize> {
        let mut done = 0;
        while done < buf.len() {
            let want = (buf.len() - done).min(MAX_DATA);
            let at = off.checked_add(done as u64).ok_or(FsError::Posix(Errno::EINVAL))?;
            let r = self.request(&Req::Read { ino, off: at, len: want as u32 })?;
            let data = self.decode(Op::Read, &r, |d| d.data())?;
            if data.len() > want {
                return Err(self.err(format!("read: {} bytes returned, {want} asked for", data.len())));
            }
            buf[done..done + data.len()].copy_from_slice(data);
            done += data.len();
            if data.len() < want {
                break;
            }
        }
        Ok(done)
    }

    fn write(&self, ino: Ino, at: WriteAt, data: &[u8]) -> FsResult<u64> {
        let mut first: Option<u64> = None;
        let mut done = 0usize;
        // Each piece of at most MAX_STAGED bytes is one write on the server.
        loop {
            let piece = &data[done..(done + MAX_STAGED).min(data.len())];
            let piece_at = match (at, first) {
                (WriteAt::Offset(o), _) => {
                    WriteAt::Offset(o.checked_add(done as u64).ok_or(FsError::Posix(Errno::EFBIG))?)
                }
                (WriteAt::Append, None) => WriteAt::Append,
                (WriteAt::Append, Some(o)) => {
                    WriteAt::Offset(o.checked_add(done as u64).ok_or(FsError::Posix(Errno::EFBIG))?)
                }
            };
            let r = self.with_conn(|x| {
                let mut chunks = piece.chunks(MAX_DATA).peekable();
                let mut last: &[u8] = &[];
                while let Some(c) = chunks.next() {
                    if chunks.peek().is_none() {
                        last = c;
                    } else {
                        x.call(Op::WritePart, &Req::WritePart { ino, data: c }.encode())?;
                    }
                }
                x.call(Op::Write, &Req::Write { ino, at: piece_at, data: last }.encode())
            })?;
            let off = self.decode(Op::Write, &r, |d| d.u64())?;
            first.get_or_insert(off);
            done += piece.len();
            if done >= data.len() {
                break;
            }
        }
        first.ok_or_else(|| self.err("write: no reply"))
    }

    fn fsync(&self, ino: Ino, datasync: bool) -> FsResult<()> {
        let r = self.request(&Req::Fsync { ino, datasync })?;
        self.decode(Op::Fsync, &r, |_| Ok(()))
    }

    fn open(&self, ino: Ino) -> FsResult<()> {
        self.with_conn(|x| {
            let r = x.call(Op::Open, &Req::Open { ino }.encode())?;
            if !r.is_empty() {
                return Err(x.client.err("bad open reply"));
            }
            *x.conn.opens.entry(ino).or_insert(0) += 1;
            Ok(())
        })
    }

    fn release(&self, ino: Ino) -> FsResult<()> {
        self.with_conn(|x| {
            let held = x.conn.opens.get(&ino).copied().unwrap_or(0);
            if held == 0 {
                return Err(FsError::Posix(Errno::EINVAL));
            }
            if held == 1 {
                x.conn.opens.remove(&ino);
            } else {
                x.conn.opens.insert(ino, held - 1);
            }
            let r = x.call(Op::Release, &Req::Release { ino }.encode())?;
            if !r.is_empty() {
                return Err(x.client.err("bad release reply"));
            }
            Ok(())
        })
    }

    fn statfs(&self) -> FsResult<StatFs> {
        let r = self.request(&Req::Statfs)?;
        self.decode(Op::Statfs, &r, |d| {
            Ok(StatFs { block_size: d.u32()?, blocks: d.u64()?, free: d.u64()?, files: d.u64()? })
        })
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Closing the connection releases everything it had open on the server.
        if let Some(s) = lock(&self.conn).stream.take() {
            s.close();
        }
    }
}

#[cfg(test)]
mod tests;
