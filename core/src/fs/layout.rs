//! The on-disk format: superblocks, checkpoint, journal area, data blocks; encoding and checked
//! decoding of every structure.
//!
//! # Volume format, version 1
//!
//! All integers are little-endian. A block is 4096 bytes ([`BLOCK`]). Checksums are CRC-32
//! (IEEE, the `crc32fast` crate) computed with the checksum field itself set to zero.
//!
//! ## Block map
//!
//! ```text
//! block 0                 superblock slot A (written for even generations)
//! block 1                 superblock slot B (written for odd generations)
//! blocks 2 .. 2+J         journal (J = journal_len blocks, fixed at format time)
//! blocks 2+J .. end       data blocks and checkpoint blocks, allocated from one pool
//! ```
//!
//! Nothing in the pool is ever overwritten while a durable structure refers to it: file data
//! and checkpoints are written copy-on-write to free blocks, and a block freed since the last
//! checkpoint is only reused after the next checkpoint's superblock is durable.
//!
//! ## Superblock (block 0 or 1; bytes past 128 are zero)
//!
//! ```text
//! off len field
//!   0   8 magic            "ARKFSSB1"
//!   8   4 version          1
//!  12   4 crc              CRC-32 of bytes 0..128 with this field zero
//!  16   8 generation       +1 at every checkpoint; the slot is generation % 2
//!  24   8 vol_id           random at format; every journal record carries it
//!  32   8 blocks           device size at format (information; the pool is the device size)
//!  40   8 journal_start    first journal block (2)
//!  48   8 journal_len      J, journal blocks
//!  56   8 journal_seq      sequence number of the first journal record of this generation
//!  64   8 cp_first         first block of the checkpoint chain
//!  72   8 cp_blocks        blocks in the checkpoint chain
//!  80   8 cp_len           bytes of checkpoint payload
//!  88   4 cp_crc           CRC-32 of the whole checkpoint payload
//!  92   4 flags            0
//!  96  32 reserved         zero
//! ```
//!
//! ## Checkpoint chain block
//!
//! The checkpoint (the whole metadata image) is a payload split over a chain of pool blocks:
//!
//! ```text
//! off len field
//!   0   4 magic            "ARCP"
//!   4   4 crc              CRC-32 of bytes 0..40+len with this field zero
//!   8   8 generation       the superblock generation that refers to it
//!  16   8 index            position in the chain, 0..cp_blocks
//!  24   8 next             next block of the chain (u64::MAX in the last)
//!  32   4 len              payload bytes in this block, at most 4056
//!  36   4 reserved         zero
//!  40 len payload
//! ```
//!
//! Checkpoint payload ("metadata image"):
//!
//! ```text
//! u32 magic "ARMD"; u64 next_ino; u64 inode count; then per inode:
//!   u64 ino; u8 kind (1 file, 2 dir); u32 perm; u32 uid; u32 gid; u32 nlink; u64 size;
//!   i64+u32 atime; i64+u32 mtime; i64+u32 ctime; u64 parent (dirs; 0 for files)
//!   dir:  u64 next_slot; u32 entries; per entry: u64 slot; u64 ino; u8 name_len; name
//!   file: u32 runs; per run: u64 file_block; u64 dev_block; u32 count
//! ```
//!
//! A file inode with nlink 0 is an orphan (unlinked while open): it is freed at the next
//! read-write mount. Free space is not stored: it is every pool block that no checkpoint
//! block and no file run refers to.
//!
//! ## Journal record (starts at a block boundary, occupies whole blocks)
//!
//! ```text
//! off len field
//!   0   4 magic            "ARJR"
//!   4   4 crc              CRC-32 of bytes 0..40+payload_len with this field zero
//!   8   8 vol_id           the superblock's
//!  16   8 generation       the superblock's: records of older generations are stale
//!  24   8 seq              journal_seq + index of the record in this generation
//!  32   4 nblocks          blocks the record occupies (1 + (40+payload_len-1)/4096)
//!  36   4 payload_len
//!  40   . payload          one operation (see `journal`): create, mkdir, unlink, rmdir,
//!                          rename, setattr, write (data inline), map (file blocks written
//!                          copy-on-write to fresh pool blocks, each with its data CRC-32)
//! ```
//!
//! Every record begins in a block of its own, so no block holding a record is ever rewritten
//! within a generation. A `write` call writes its data blocks (for a `map` record), then the
//! record, before it returns; `fsync` is one device flush.
//!
//! ## Checkpoint procedure
//!
//! 1. write every dirty file block (data of inline-journalled writes kept in memory) to a fresh
//!    pool block; 2. write the metadata image as a new chain to fresh pool blocks; 3. flush;
//!    4. write the superblock of generation g+1 to slot (g+1) % 2, with journal_seq = the next
//!    sequence number; 5. flush; 6. the previous checkpoint's blocks and every block freed
//!    since it become free; the journal restarts at its first block. A checkpoint happens when
//!    the journal is full, when free space is short, at `sync_all`, and at every read-write
//!    mount after recovery.
//!
//! ## Recovery (mount)
//!
//! 1. Read both superblocks; use the valid one (magic, version, crc, ranges) with the highest
//!    generation. None valid: the volume is refused as corrupt.
//! 2. Read the checkpoint chain it names; every block must have the right magic, crc,
//!    generation and index, and the payload its cp_crc. Decode it with every count and index
//!    checked; build the free-space map (a block referred to twice or outside the device is
//!    corruption).
//! 3. Replay journal records from journal_start, expecting seq = journal_seq, journal_seq+1,
//!    ...: a record is valid when magic, vol_id, generation, seq, nblocks and crc match and,
//!    for a map record, every data block's CRC-32 matches. Replay stops at the first invalid
//!    record (the torn tail of a crash). If a valid record of this generation with a higher
//!    seq lies beyond it, the journal is damaged in the middle and the volume is refused
//!    (`arrakis fsck --repair` cuts the journal there).
//! 4. Free orphan inodes, then checkpoint (which starts a new generation, so no stale record
//!    of the old one can ever be mistaken for a new one).

use super::dev::BLOCK;
use super::{FsError, FsResult, Time};

/// Superblock magic.
pub const SB_MAGIC: &[u8; 8] = b"ARKFSSB1";
/// Format version.
pub const VERSION: u32 = 1;
/// Checkpoint chain block magic.
pub const CP_MAGIC: &[u8; 4] = b"ARCP";
/// Journal record magic.
pub const JR_MAGIC: &[u8; 4] = b"ARJR";
/// Metadata image magic.
pub const MD_MAGIC: &[u8; 4] = b"ARMD";
/// Header bytes of a checkpoint chain block.
pub const CP_HEADER: usize = 40;
/// Payload bytes per checkpoint chain block.
pub const CP_PAYLOAD: usize = BLOCK - CP_HEADER;
/// Header bytes of a journal record.
pub const JR_HEADER: usize = 40;
/// First journal block.
pub const JOURNAL_START: u64 = 2;
/// Largest file size (16 TiB, like ext4 with 4 KiB blocks).
pub const MAX_FILE_SIZE: u64 = 1 << 44;

/// A corruption error naming `what`.
pub fn corrupt(what: impl Into<String>) -> FsError {
    FsError::Corrupt { what: what.into() }
}

/// CRC-32 of `parts` in order.
pub fn crc(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

/// Appends little-endian values to a byte vector.
#[derive(Default)]
pub struct Enc {
    /// The bytes so far.
    pub buf: Vec<u8>,
}

impl Enc {
    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// Four bytes.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Eight bytes.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// A time: i64 seconds, u32 nanoseconds.
    pub fn time(&mut self, t: Time) {
        self.buf.extend_from_slice(&t.sec.to_le_bytes());
        self.u32(t.nsec);
    }
    /// Raw bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
}

/// Reads little-endian values from a byte slice; every read is bounds-checked and fails with
/// [`FsError::Corrupt`] naming the structure.
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'a str,
}

impl<'a> Dec<'a> {
    /// A reader of `buf`, `what` naming it in errors.
    pub fn new(buf: &'a [u8], what: &'a str) -> Dec<'a> {
        Dec { buf, pos: 0, what }
    }
    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> FsResult<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(corrupt(format!("{}: truncated at byte {} (wanted {n} more)", self.what, self.pos))),
        }
    }
    /// One byte.
    pub fn u8(&mut self) -> FsResult<u8> {
        Ok(self.bytes(1)?[0])
    }
    /// Four bytes.
    pub fn u32(&mut self) -> FsResult<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// Eight bytes.
    pub fn u64(&mut self) -> FsResult<u64> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// A time; nanoseconds past 10^9 are corruption.
    pub fn time(&mut self) -> FsResult<Time> {
        let sec = self.u64()? as i64;
        let nsec = self.u32()?;
        if nsec >= 1_000_000_000 {
            return Err(corrupt(format!(
                "{}: nanoseconds {nsec} out of range at byte {}",
                self.what, self.pos
            )));
        }
        Ok(Time { sec, nsec })
    }
    /// A count of items each at least `min_size` bytes: refused if the rest cannot hold them,
    /// so no allocation is ever sized by an unchecked number.
    pub fn count(&mut self, min_size: usize, big: bool) -> FsResult<usize> {
        let n = if big { self.u64()? } else { u64::from(self.u32()?) };
        let max = (self.remaining() / min_size.max(1)) as u64;
        if n > max {
            return Err(corrupt(format!(
                "{}: count {n} larger than the rest can hold at byte {}",
                self.what, self.pos
            )));
        }
        Ok(n as usize)
    }
}

/// The superblock (see the module doc for the byte layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// +1 at every checkpoint.
    pub generation: u64,
    /// Random at format.
    pub vol_id: u64,
    /// Device blocks at format.
    pub blocks: u64,
    /// First journal block.
    pub journal_start: u64,
    /// Journal blocks.
    pub journal_len: u64,
    /// Sequence number of the first record of this generation.
    pub journal_seq: u64,
    /// First block of the checkpoint chain.
    pub cp_first: u64,
    /// Blocks in the chain.
    pub cp_blocks: u64,
    /// Payload bytes.
    pub cp_len: u64,
    /// CRC-32 of the payload.
    pub cp_crc: u32,
}

impl Superblock {
    /// The block this generation's superblock goes to.
    pub fn slot(&self) -> u64 {
        self.generation % 2
    }

    /// The 4096-byte block.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.bytes(SB_MAGIC);
        e.u32(VERSION);
        e.u32(0);
        for v in [
            self.generation,
            self.vol_id,
            self.blocks,
            self.journal_start,
            self.journal_len,
            self.journal_seq,
            self.cp_first,
            self.cp_blocks,
            self.cp_len,
        ] {
            e.u64(v);
        }
        e.u32(self.cp_crc);
        e.u32(0);
        let mut b = e.buf;
        b.resize(BLOCK, 0);
        let c = crc(&[&b[..128]]);
        b[12..16].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Decodes and checks block `which` of a device of `dev_blocks`.
    pub fn decode(b: &[u8], which: u64, dev_blocks: u64) -> FsResult<Superblock> {
        let what = format!("superblock in block {which}");
        if b.len() < 128 {
            return Err(corrupt(format!("{what}: short")));
        }
        if &b[..8] != SB_MAGIC {
            return Err(corrupt(format!("{what}: bad magic")));
        }
        let mut copy = b[..128].to_vec();
        copy[12..16].fill(0);
        let mut d = Dec::new(&b[..128], &what);
        d.bytes(8)?;
        let version = d.u32()?;
        let stored = d.u32()?;
        if stored != crc(&[&copy]) {
            return Err(corrupt(format!("{what}: checksum mismatch")));
        }
        if version != VERSION {
            return Err(corrupt(format!("{what}: unknown format version {version}")));
        }
        let sb = Superblock {
            generation: d.u64()?,
            vol_id: d.u64()?,
            blocks: d.u64()?,
            journal_start: d.u64()?,
            journal_len: d.u64()?,
            journal_seq: d.u64()?,
            cp_first: d.u64()?,
            cp_blocks: d.u64()?,
            cp_len: d.u64()?,
            cp_crc: d.u32()?,
        };
        if sb.slot() != which {
            return Err(corrupt(format!("{what}: generation {} belongs in the other slot", sb.generation)));
        }
        let jend = sb.journal_start.checked_add(sb.journal_len);
        if sb.journal_start != JOURNAL_START || sb.journal_len == 0 || jend.is_none_or(|e| e > dev_blocks) {
            return Err(corrupt(format!(
                "{what}: journal {}+{} outside the device of {dev_blocks} blocks",
                sb.journal_start, sb.journal_len
            )));
        }
        if sb.cp_blocks == 0 || sb.cp_blocks > dev_blocks || sb.cp_first >= dev_blocks {
            return Err(corrupt(format!(
                "{what}: checkpoint at {} of {} blocks out of range",
                sb.cp_first, sb.cp_blocks
            )));
        }
        if sb.cp_len > sb.cp_blocks.saturating_mul(CP_PAYLOAD as u64) || sb.cp_len == 0 {
            return Err(corrupt(format!(
                "{what}: checkpoint length {} does not fit {} blocks",
                sb.cp_len, sb.cp_blocks
            )));
        }
        Ok(sb)
    }
}

/// Encodes checkpoint chain block `index` of generation `generation`.
pub fn encode_cp_block(generation: u64, index: u64, next: u64, payload: &[u8]) -> Vec<u8> {
    let mut e = Enc::default();
    e.bytes(CP_MAGIC);
    e.u32(0);
    e.u64(generation);
    e.u64(index);
    e.u64(next);
    e.u32(payload.len() as u32);
    e.u32(0);
    e.bytes(payload);
    let mut b = e.buf;
    let c = crc(&[&b]);
    b[4..8].copy_from_slice(&c.to_le_bytes());
    b.resize(BLOCK, 0);
    b
}

/// Decodes checkpoint chain block `block`: its payload and the next block.
pub fn decode_cp_block(b: &[u8], block: u64, generation: u64, index: u64) -> FsResult<(&[u8], u64)> {
    let what = format!("checkpoint block {block} (chain index {index})");
    let mut d = Dec::new(b, &what);
    if d.bytes(4)? != CP_MAGIC {
        return Err(corrupt(format!("{what}: bad magic")));
    }
    let stored = d.u32()?;
    let g = d.u64()?;
    let i = d.u64()?;
    let next = d.u64()?;
    let len = d.u32()? as usize;
    d.u32()?;
    if len > CP_PAYLOAD {
        return Err(corrupt(format!("{what}: payload length {len} too large")));
    }
    let mut copy = b[..CP_HEADER + len].to_vec();
    copy[4..8].fill(0);
    if crc(&[&copy]) != stored {
        return Err(corrupt(format!("{what}: checksum mismatch")));
    }
    if g != generation || i != index {
        return Err(corrupt(format!(
            "{what}: belongs to generation {g} index {i}, expected {generation}/{index}"
        )));
    }
    Ok((&b[CP_HEADER..CP_HEADER + len], next))
}

/// Blocks a journal record with `payload_len` bytes of payload occupies.
pub fn record_blocks(payload_len: usize) -> u64 {
    (JR_HEADER + payload_len).div_ceil(BLOCK) as u64
}

/// Journal record header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Stored CRC.
    pub crc: u32,
    /// Volume id.
    pub vol_id: u64,
    /// Generation.
    pub generation: u64,
    /// Sequence number.
    pub seq: u64,
    /// Blocks occupied.
    pub nblocks: u32,
    /// Payload bytes.
    pub payload_len: u32,
}

/// Encodes a whole record (header, payload, padding to whole blocks).
pub fn encode_record(vol_id: u64, generation: u64, seq: u64, payload: &[u8]) -> Vec<u8> {
    let n = record_blocks(payload.len());
    let mut e = Enc::default();
    e.bytes(JR_MAGIC);
    e.u32(0);
    e.u64(vol_id);
    e.u64(generation);
    e.u64(seq);
    e.u32(n as u32);
    e.u32(payload.len() as u32);
    e.bytes(payload);
    let mut b = e.buf;
    let c = crc(&[&b]);
    b[4..8].copy_from_slice(&c.to_le_bytes());
    b.resize(n as usize * BLOCK, 0);
    b
}

/// Parses a record header from its first block; `None` if it is not a record header.
pub fn decode_record_header(b: &[u8]) -> Option<RecordHeader> {
    let mut d = Dec::new(b, "journal record");
    if d.bytes(4).ok()? != JR_MAGIC {
        return None;
    }
    let h = RecordHeader {
        crc: d.u32().ok()?,
        vol_id: d.u64().ok()?,
        generation: d.u64().ok()?,
        seq: d.u64().ok()?,
        nblocks: d.u32().ok()?,
        payload_len: d.u32().ok()?,
    };
    if u64::from(h.nblocks) != record_blocks(h.payload_len as usize) {
        return None;
    }
    Some(h)
}

/// Checks a whole record's CRC; returns its payload.
pub fn record_payload<'a>(h: &RecordHeader, rec: &'a [u8]) -> Option<&'a [u8]> {
    let end = JR_HEADER.checked_add(h.payload_len as usize)?;
    if end > rec.len() {
        return None;
    }
    let mut head = rec[..JR_HEADER].to_vec();
    head[4..8].fill(0);
    if crc(&[&head, &rec[JR_HEADER..end]]) != h.crc {
        return None;
    }
    Some(&rec[JR_HEADER..end])
}
