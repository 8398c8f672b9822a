//! The write-ahead journal: the operations a record carries, their encoding and checked
//! decoding. Writing records and replaying them is done by [`super::volume`], which applies
//! the same code to an operation whether it is happening now or being replayed at mount.
//!
//! Payload of a record (after the header described in [`super::layout`]): `u8 tag`, then
//!
//! ```text
//! 1 create  u64 dir; u8 len; name; u64 ino; u32 perm; u32 uid; u32 gid; time
//! 2 mkdir   same as create
//! 3 unlink  u64 dir; u8 len; name; time
//! 4 rmdir   u64 dir; u8 len; name; time
//! 5 rename  u64 dir; u8 len; name; u64 newdir; u8 len; newname; u8 flags (1 noreplace,
//!           2 exchange); time
//! 6 setattr u64 ino; u8 mask (1 perm, 2 uid, 4 gid, 8 size, 16 atime, 32 mtime); u32 perm;
//!           u32 uid; u32 gid; u64 size; time atime; time mtime; time (ctime)
//! 7 write   u64 ino; u64 offset; u32 len; data; time
//! 8 map     u64 ino; u64 first file block; u32 n; n * (u64 dev block, u32 data crc); time
//! ```
//!
//! A time is `i64 sec, u32 nsec`. A map record's blocks are consecutive file blocks.

use super::layout::{corrupt, Dec, Enc};
use super::{FsResult, Ino, Time, NAME_MAX};

/// One journalled operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A new regular file.
    Create {
        /// Parent.
        dir: Ino,
        /// Name.
        name: Vec<u8>,
        /// The new inode number.
        ino: Ino,
        /// Permission bits.
        perm: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
        /// When.
        time: Time,
    },
    /// A new directory (same fields as `Create`).
    Mkdir {
        /// Parent.
        dir: Ino,
        /// Name.
        name: Vec<u8>,
        /// The new inode number.
        ino: Ino,
        /// Permission bits.
        perm: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
        /// When.
        time: Time,
    },
    /// Removal of a file's name.
    Unlink {
        /// Parent.
        dir: Ino,
        /// Name.
        name: Vec<u8>,
        /// When.
        time: Time,
    },
    /// Removal of an empty directory.
    Rmdir {
        /// Parent.
        dir: Ino,
        /// Name.
        name: Vec<u8>,
        /// When.
        time: Time,
    },
    /// A rename.
    Rename {
        /// Old parent.
        dir: Ino,
        /// Old name.
        name: Vec<u8>,
        /// New parent.
        newdir: Ino,
        /// New name.
        newname: Vec<u8>,
        /// `RENAME_NOREPLACE`.
        noreplace: bool,
        /// `RENAME_EXCHANGE`.
        exchange: bool,
        /// When.
        time: Time,
    },
    /// An attribute change (a size change truncates or extends).
    SetAttr {
        /// Inode.
        ino: Ino,
        /// Permission bits.
        perm: Option<u32>,
        /// Owner.
        uid: Option<u32>,
        /// Group.
        gid: Option<u32>,
        /// Size.
        size: Option<u64>,
        /// Access time.
        atime: Option<Time>,
        /// Modification time.
        mtime: Option<Time>,
        /// When (the new ctime).
        time: Time,
    },
    /// A write whose data is in the record.
    Write {
        /// Inode.
        ino: Ino,
        /// Byte offset.
        off: u64,
        /// The bytes.
        data: Vec<u8>,
        /// When.
        time: Time,
    },
    /// Whole file blocks written copy-on-write to fresh device blocks.
    Map {
        /// Inode.
        ino: Ino,
        /// File block of the first entry; the rest follow consecutively.
        first: u64,
        /// Device block and CRC-32 of its data, per file block.
        blocks: Vec<(u64, u32)>,
        /// When.
        time: Time,
    },
}

fn name(e: &mut Enc, n: &[u8]) {
    e.u8(n.len() as u8);
    e.bytes(n);
}

fn get_name(d: &mut Dec<'_>) -> FsResult<Vec<u8>> {
    let n = d.u8()? as usize;
    Ok(d.bytes(n)?.to_vec())
}

impl Op {
    /// The record payload. Names must already be checked (at most [`NAME_MAX`] bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        match self {
            Op::Create { dir, name: n, ino, perm, uid, gid, time }
            | Op::Mkdir { dir, name: n, ino, perm, uid, gid, time } => {
                e.u8(if matches!(self, Op::Create { .. }) { 1 } else { 2 });
                e.u64(*dir);
                name(&mut e, n);
                e.u64(*ino);
                e.u32(*perm);
                e.u32(*uid);
                e.u32(*gid);
                e.time(*time);
            }
            Op::Unlink { dir, name: n, time } | Op::Rmdir { dir, name: n, time } => {
                e.u8(if matches!(self, Op::Unlink { .. }) { 3 } else { 4 });
                e.u64(*dir);
                name(&mut e, n);
                e.time(*time);
            }
            Op::Rename { dir, name: n, newdir, newname, noreplace, exchange, time } => {
                e.u8(5);
                e.u64(*dir);
                name(&mut e, n);
                e.u64(*newdir);
                name(&mut e, newname);
                e.u8(u8::from(*noreplace) | (u8::from(*exchange) << 1));
                e.time(*time);
            }
            Op::SetAttr { ino, perm, uid, gid, size, atime, mtime, time } => {
                e.u8(6);
                e.u64(*ino);
                let mask = u8::from(perm.is_some())
                    | u8::from(uid.is_some()) << 1
                    | u8::from(gid.is_some()) << 2
                    | u8::from(size.is_some()) << 3
                    | u8::from(atime.is_some()) << 4
                    | u8::from(mtime.is_some()) << 5;
                e.u8(mask);
                e.u32(perm.unwrap_or(0));
                e.u32(uid.unwrap_or(0));
                e.u32(gid.unwrap_or(0));
                e.u64(size.unwrap_or(0));
                e.time(atime.unwrap_or_default());
                e.time(mtime.unwrap_or_default());
                e.time(*time);
            }
            Op::Write { ino, off, data, time } => {
                e.u8(7);
                e.u64(*ino);
                e.u64(*off);
                e.u32(data.len() as u32);
                e.bytes(data);
                e.time(*time);
            }
            Op::Map { ino, first, blocks, time } => {
                e.u8(8);
                e.u64(*ino);
                e.u64(*first);
                e.u32(blocks.len() as u32);
                for (b, c) in blocks {
                    e.u64(*b);
                    e.u32(*c);
                }
                e.time(*time);
            }
        }
        e.buf
    }

    /// Decodes a payload; every length is checked against the payload.
    pub fn decode(payload: &[u8]) -> FsResult<Op> {
        let mut d = Dec::new(payload, "journal record payload");
        let tag = d.u8()?;
        let op = match tag {
            1 | 2 => {
                let dir = d.u64()?;
                let n = get_name(&mut d)?;
                let (ino, perm, uid, gid, time) = (d.u64()?, d.u32()?, d.u32()?, d.u32()?, d.time()?);
                if tag == 1 {
                    Op::Create { dir, name: n, ino, perm, uid, gid, time }
                } else {
                    Op::Mkdir { dir, name: n, ino, perm, uid, gid, time }
                }
            }
            3 | 4 => {
                let dir = d.u64()?;
                let n = get_name(&mut d)?;
                let time = d.time()?;
                if tag == 3 {
                    Op::Unlink { dir, name: n, time }
                } else {
                    Op::Rmdir { dir, name: n, time }
                }
            }
            5 => {
                let dir = d.u64()?;
                let n = get_name(&mut d)?;
                let newdir = d.u64()?;
                let newname = get_name(&mut d)?;
                let f = d.u8()?;
                let time = d.time()?;
                Op::Rename {
                    dir,
                    name: n,
                    newdir,
                    newname,
                    noreplace: f & 1 != 0,
                    exchange: f & 2 != 0,
                    time,
                }
            }
            6 => {
                let ino = d.u64()?;
                let m = d.u8()?;
                let (perm, uid, gid, size) = (d.u32()?, d.u32()?, d.u32()?, d.u64()?);
                let (atime, mtime, time) = (d.time()?, d.time()?, d.time()?);
                Op::SetAttr {
                    ino,
                    perm: (m & 1 != 0).then_some(perm),
                    uid: (m & 2 != 0).then_some(uid),
                    gid: (m & 4 != 0).then_some(gid),
                    size: (m & 8 != 0).then_some(size),
                    atime: (m & 16 != 0).then_some(atime),
                    mtime: (m & 32 != 0).then_some(mtime),
                    time,
                }
            }
            7 => {
                let ino = d.u64()?;
                let off = d.u64()?;
                let n = d.u32()? as usize;
                let data = d.bytes(n)?.to_vec();
                Op::Write { ino, off, data, time: d.time()? }
            }
            8 => {
                let ino = d.u64()?;
                let first = d.u64()?;
                let n = d.count(12, false)?;
                let mut blocks = Vec::with_capacity(n);
                for _ in 0..n {
                    blocks.push((d.u64()?, d.u32()?));
                }
                Op::Map { ino, first, blocks, time: d.time()? }
            }
            t => return Err(corrupt(format!("journal record: unknown operation {t}"))),
        };
        if d.remaining() != 0 {
            return Err(corrupt("journal record: trailing bytes after the operation"));
        }
        for n in op.names() {
            if n.len() > NAME_MAX {
                return Err(corrupt("journal record: name too long"));
            }
        }
        Ok(op)
    }

    fn names(&self) -> Vec<&[u8]> {
        match self {
            Op::Create { name, .. }
            | Op::Mkdir { name, .. }
            | Op::Unlink { name, .. }
            | Op::Rmdir { name, .. } => {
                vec![name]
            }
            Op::Rename { name, newname, .. } => vec![name, newname],
            _ => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_every_op() {
        let t = Time { sec: -5, nsec: 7 };
        let ops = vec![
            Op::Create { dir: 1, name: b"a".to_vec(), ino: 9, perm: 0o644, uid: 1, gid: 2, time: t },
            Op::Mkdir { dir: 1, name: b"d".to_vec(), ino: 10, perm: 0o755, uid: 1, gid: 2, time: t },
            Op::Unlink { dir: 1, name: b"a".to_vec(), time: t },
            Op::Rmdir { dir: 1, name: b"d".to_vec(), time: t },
            Op::Rename {
                dir: 1,
                name: b"x".to_vec(),
                newdir: 3,
                newname: b"y".to_vec(),
                noreplace: true,
                exchange: false,
                time: t,
            },
            Op::SetAttr {
                ino: 4,
                perm: Some(1),
                uid: None,
                gid: Some(3),
                size: Some(77),
                atime: None,
                mtime: Some(t),
                time: t,
            },
            Op::Write { ino: 4, off: 5, data: vec![1, 2, 3], time: t },
            Op::Map { ino: 4, first: 2, blocks: vec![(100, 5), (101, 6)], time: t },
        ];
        for op in ops {
            assert_eq!(Op::decode(&op.encode()).unwrap(), op);
        }
        assert!(Op::decode(&[8, 0, 0]).is_err());
        assert!(Op::decode(&[99]).is_err());
    }
}
