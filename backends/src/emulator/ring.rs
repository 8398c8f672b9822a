//! The shared-memory format of one virtual NIC, and the only `unsafe` code of the crate.
//!
//! A NIC is one sealed memfd, mapped `MAP_SHARED` by the container and by the switch:
//!
//! ```text
//! offset        size            what
//! 0             64              Header: magic "ARRAKNIC", version, ring size, buffer size,
//!                               buffer count, region length (written once by the creator)
//! 64            128             tx RingCtl (container → switch)
//! 192           128             rx RingCtl (switch → container)
//! 320           4 × SLOTS       slot words (u32 each; see below)
//! 1344          8 × ring_size   tx descriptors
//! ..            8 × ring_size   rx descriptors
//! page-aligned  buf_size × 2 × ring_size   packet buffers: tx ring's first, then rx ring's
//! ```
//!
//! **Slot words.** In a NIC region they are the container's table of secure bindings
//! (`emulator::binding`): word `i` holds the id of the binding the switch gave the container
//! in slot `i`, or 0 — written only by the switch, read by the container, so a peer container
//! (which never maps this region) cannot forge or renew a binding. A *binding region* (magic
//! "ARRAKBND", same layout: a private ring pair between two containers) uses its first words
//! for advisory state both of its users write ([`binding`](super::binding)).
//!
//! A [`RingCtl`] holds two cache lines: the producer's (`head`, `producer_waiting`) and the
//! consumer's (`tail`, `consumer_waiting`). `head` and `tail` are free-running `u32`s; slot
//! `i` is `i & (ring_size - 1)`; `head - tail` (wrapping) frames are in the ring. A descriptor
//! is `(buffer index, length)`. The producer writes the buffer and the descriptor, then
//! publishes `head` with release; the consumer reads `head` with acquire, then the descriptor
//! and the buffer, then publishes `tail` with release, which gives the slot back.
//!
//! **Notification suppression** (virtio's flags): a side that is about to sleep stores 1 in
//! its `*_waiting` word, issues a `SeqCst` fence and checks the ring again; the other side,
//! after publishing its index, issues a `SeqCst` fence and rings the doorbell only if the
//! word is set. One of the two always sees the other's store, so no wake-up is lost, and no
//! doorbell is written while the other side is polling (its word is 0).
//!
//! **Nothing from the peer is trusted.** Each side keeps its own index privately and only
//! *publishes* it; the peer's index is checked (`head - tail <= ring_size`, else the ring is
//! treated as empty/full and `bad_index` counted); each descriptor's buffer must lie in the
//! ring's own half of the pool and its length within `buf_size` (else the slot is skipped and
//! `bad_desc` counted). The geometry is read once at attach, validated, and kept privately, so
//! a peer rewriting the header later changes nothing. The creator seals the memfd's size
//! (`F_SEAL_SHRINK | F_SEAL_GROW`), and the attacher refuses an unsealed one: a peer that
//! could truncate the file would turn our loads into `SIGBUS`.
//!
//! Trust is asymmetric: the switch is trusted by the container, not the other way round. So
//! the switch only ever *copies* bytes in and out of shared buffers ([`Consumer::recv_copy`],
//! [`Producer::push_copy`]), while the container lends shared buffers to its stack without a
//! copy ([`Consumer::recv_with`], [`Producer::push_with`]) — memory only the switch could
//! write, and it does not.

use std::fmt;
use std::io;
use std::mem::{align_of, offset_of, size_of};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use memmap2::{MmapOptions, MmapRaw};
use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::fs::{MemfdFlags, SealFlags};

/// First eight bytes of every NIC region.
pub const MAGIC: [u8; 8] = *b"ARRAKNIC";
/// First eight bytes of every binding region (a private ring pair between two containers).
pub const BINDING_MAGIC: [u8; 8] = *b"ARRAKBND";
/// Version of the format described in the module doc.
pub const VERSION: u32 = 2;
/// Slot words per region (after the two ring controls).
pub const SLOTS: usize = 256;
/// Bytes reserved for the [`Header`].
pub const HEADER_LEN: usize = 64;
/// Largest ring (descriptors per direction).
pub const MAX_RING: u32 = 4096;
/// Smallest and largest packet buffer.
pub const MIN_BUF: u32 = 256;
pub const MAX_BUF: u32 = 131_072;
const PAGE: usize = 4096;

/// The region's header, written once by the creator before the fd is shared.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Header {
    magic: [u8; 8],
    version: u32,
    header_len: u32,
    ring_size: u32,
    buf_size: u32,
    buf_count: u32,
    reserved: u32,
    region_len: u64,
}

/// One ring's indices and wake-up words: the producer's cache line, then the consumer's.
#[repr(C, align(64))]
struct RingCtl {
    head: AtomicU32,
    producer_waiting: AtomicU32,
    _producer_line: [AtomicU32; 14],
    tail: AtomicU32,
    consumer_waiting: AtomicU32,
    _consumer_line: [AtomicU32; 14],
}

/// One descriptor: which buffer, how many bytes.
#[repr(C)]
struct Desc {
    buf: AtomicU32,
    len: AtomicU32,
}

// The layout is shared across processes: pin it at compile time.
const _: () = {
    assert!(size_of::<Header>() <= HEADER_LEN);
    assert!(offset_of!(Header, region_len) == 32);
    assert!(size_of::<RingCtl>() == 128);
    assert!(align_of::<RingCtl>() == 64);
    assert!(offset_of!(RingCtl, head) == 0);
    assert!(offset_of!(RingCtl, producer_waiting) == 4);
    assert!(offset_of!(RingCtl, tail) == 64);
    assert!(offset_of!(RingCtl, consumer_waiting) == 68);
    assert!(size_of::<Desc>() == 8);
    assert!(size_of::<AtomicU32>() == 4 && align_of::<AtomicU32>() == 4);
};

/// Which ring of the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ring {
    /// Container → switch; buffers `0..ring_size`.
    Tx,
    /// Switch → container; buffers `ring_size..2 × ring_size`.
    Rx,
}

/// The size of a NIC: descriptors per ring and bytes per packet buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Descriptors per ring, a power of two in `2..=MAX_RING`.
    pub ring_size: u32,
    /// Bytes per buffer (the largest frame), a multiple of 64 in `MIN_BUF..=MAX_BUF`.
    pub buf_size: u32,
}

/// The buffer size of NICs and secure bindings: 64 KiB and a page, so every IP packet fits
/// one frame whole — the largest UDP datagram over IPv4 (65,507 bytes: a 65,535-byte
/// packet) and over IPv6 (65,527 bytes: 65,575), as on Linux's loopback (MTU 65,536), and
/// nothing is fragmented, which the switch could not route. The stack's MTU is 65,535, IP's
/// limit ([`MAX_IP_PACKET`]). A request of a few KiB is one frame (with 2 KiB buffers
/// memcslap's sets took 1.8 frames each and an ACK of their own). Only the pages frames were
/// written in are allocated (a frame of a few hundred bytes costs one page of its buffer).
/// A binding's buffers are the NIC's: a frame the stack built for the NIC fits its flow's
/// binding.
pub const BUF_SIZE: u32 = 65_536 + 4096;

/// The largest IPv4 packet, and the largest MTU smoltcp's TCP may be given (its MSS must fit
/// a 16-bit total length).
pub const MAX_IP_PACKET: usize = 65_535;

/// The NIC's default: 512 descriptors a ring, [`BUF_SIZE`] buffers.
impl Default for Geometry {
    fn default() -> Self {
        Geometry { ring_size: 512, buf_size: BUF_SIZE }
    }
}

/// Offsets of everything in a region of a given geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    geo: Geometry,
    descs: [usize; 2],
    bufs: usize,
    len: usize,
}

impl Layout {
    fn new(geo: Geometry) -> Result<Layout, RingError> {
        let Geometry { ring_size: n, buf_size: b } = geo;
        if !(2..=MAX_RING).contains(&n) || !n.is_power_of_two() {
            return Err(RingError::Geometry(format!(
                "ring size {n} is not a power of two in 2..={MAX_RING}"
            )));
        }
        if !(MIN_BUF..=MAX_BUF).contains(&b) || b % 64 != 0 {
            return Err(RingError::Geometry(format!(
                "buffer size {b} is not a multiple of 64 in {MIN_BUF}..={MAX_BUF}"
            )));
        }
        let (n, b) = (n as usize, b as usize);
        let tx = HEADER_LEN + 2 * size_of::<RingCtl>() + SLOTS * size_of::<AtomicU32>();
        let rx = tx + n * size_of::<Desc>();
        let bufs = (rx + n * size_of::<Desc>()).next_multiple_of(PAGE);
        let len = (bufs + 2 * n * b).next_multiple_of(PAGE);
        Ok(Layout { geo, descs: [tx, rx], bufs, len })
    }

    fn ctl(ring: Ring) -> usize {
        HEADER_LEN + size_of::<RingCtl>() * ring as usize
    }

    fn slots() -> usize {
        HEADER_LEN + 2 * size_of::<RingCtl>()
    }
}

/// Why a region could not be created or attached.
#[derive(Debug)]
pub enum RingError {
    /// A system call failed.
    Io(&'static str, io::Error),
    /// The first bytes are not the expected magic ([`MAGIC`], [`BINDING_MAGIC`]): not a
    /// region of the expected kind at all.
    Magic([u8; 8]),
    /// A region of another format version.
    Version(u32),
    /// Sizes out of range or inconsistent with each other.
    Geometry(String),
    /// The header's length disagrees with the file's.
    Length { header: u64, file: u64 },
    /// The memfd's size is not sealed, so the peer could shrink it under us.
    NotSealed,
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::Io(what, e) => write!(f, "{what}: {e}"),
            RingError::Magic(m) => {
                write!(f, "not an Arrakis NIC or binding region of the expected kind (magic {m:02x?})")
            }
            RingError::Version(v) => {
                write!(f, "NIC region has format version {v}, this build reads {VERSION}")
            }
            RingError::Geometry(why) => write!(f, "NIC region has a bad geometry: {why}"),
            RingError::Length { header, file } => {
                write!(f, "NIC region header says {header} bytes but the memfd holds {file}")
            }
            RingError::NotSealed => write!(f, "NIC memfd is not sealed against shrinking and growing"),
        }
    }
}

impl std::error::Error for RingError {}

impl From<RingError> for io::Error {
    fn from(e: RingError) -> io::Error {
        match e {
            RingError::Io(_, e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// One mapped NIC region. Both rings' ends hold it through an `Arc`.
pub struct Region {
    map: MmapRaw,
    fd: OwnedFd,
    layout: Layout,
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region").field("geometry", &self.layout.geo).field("len", &self.layout.len).finish()
    }
}

impl Region {
    /// Creates a fresh NIC region: a sealed memfd of the right size, zeroed, with its header.
    pub fn create(geo: Geometry) -> Result<Region, RingError> {
        Region::create_with(geo, MAGIC)
    }

    /// Creates a fresh binding region (magic [`BINDING_MAGIC`]).
    pub fn create_binding(geo: Geometry) -> Result<Region, RingError> {
        Region::create_with(geo, BINDING_MAGIC)
    }

    fn create_with(geo: Geometry, magic: [u8; 8]) -> Result<Region, RingError> {
        let layout = Layout::new(geo)?;
        let fd = rustix::fs::memfd_create("arrakis-nic", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(|e| RingError::Io("memfd_create", e.into()))?;
        rustix::fs::ftruncate(&fd, layout.len as u64).map_err(|e| RingError::Io("ftruncate", e.into()))?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .map_err(|e| RingError::Io("F_ADD_SEALS", e.into()))?;
        let map = MmapOptions::new().len(layout.len).map_raw(&fd).map_err(|e| RingError::Io("mmap", e))?;
        let header = Header {
            magic,
            version: VERSION,
            header_len: HEADER_LEN as u32,
            ring_size: geo.ring_size,
            buf_size: geo.buf_size,
            buf_count: 2 * geo.ring_size,
            reserved: 0,
            region_len: layout.len as u64,
        };
        // SAFETY: the mapping is `layout.len >= HEADER_LEN` bytes, page-aligned, and nobody
        // else has the fd yet, so this plain write races with nothing.
        unsafe { map.as_mut_ptr().cast::<Header>().write(header) };
        Ok(Region { map, fd, layout })
    }

    /// Attaches to a NIC region made by a peer, validating everything before trusting it.
    pub fn attach(fd: OwnedFd) -> Result<Region, RingError> {
        Region::attach_with(fd, MAGIC)
    }

    /// Attaches to a binding region, validating it as [`attach`](Self::attach) does.
    pub fn attach_binding(fd: OwnedFd) -> Result<Region, RingError> {
        Region::attach_with(fd, BINDING_MAGIC)
    }

    fn attach_with(fd: OwnedFd, magic: [u8; 8]) -> Result<Region, RingError> {
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|e| RingError::Io("F_GET_SEALS", e.into()))?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
            return Err(RingError::NotSealed);
        }
        let file_len = rustix::fs::fstat(&fd).map_err(|e| RingError::Io("fstat", e.into()))?.st_size as u64;
        if file_len < HEADER_LEN as u64 {
            return Err(RingError::Length { header: 0, file: file_len });
        }
        let file_len_usize =
            usize::try_from(file_len).map_err(|_| RingError::Length { header: 0, file: file_len })?;
        let map =
            MmapOptions::new().len(file_len_usize).map_raw(&fd).map_err(|e| RingError::Io("mmap", e))?;
        // SAFETY: the mapping holds at least HEADER_LEN bytes (checked above, and the size is
        // sealed); `Header` is plain integers, valid for any bytes; a volatile read copies
        // whatever the peer left there without assuming it stays put.
        let h = unsafe { map.as_ptr().cast::<Header>().read_volatile() };
        if h.magic != magic {
            return Err(RingError::Magic(h.magic));
        }
        if h.version != VERSION {
            return Err(RingError::Version(h.version));
        }
        if h.header_len as usize != HEADER_LEN {
            return Err(RingError::Geometry(format!(
                "header length {} (expected {HEADER_LEN})",
                h.header_len
            )));
        }
        let layout = Layout::new(Geometry { ring_size: h.ring_size, buf_size: h.buf_size })?;
        if h.buf_count != 2 * h.ring_size {
            return Err(RingError::Geometry(format!("{} buffers for rings of {}", h.buf_count, h.ring_size)));
        }
        if h.region_len != layout.len as u64 || file_len != h.region_len {
            return Err(RingError::Length { header: h.region_len, file: file_len });
        }
        Ok(Region { map, fd, layout })
    }

    /// The memfd, to hand to the peer.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The validated geometry.
    pub fn geometry(&self) -> Geometry {
        self.layout.geo
    }

    /// Slot word `i` (`None` past [`SLOTS`]). Shared memory: the peer may write it at any
    /// time, so read it each time it matters.
    pub fn slot(&self, i: usize) -> Option<&AtomicU32> {
        if i >= SLOTS {
            return None;
        }
        // SAFETY: `i < SLOTS`, so the word lies in the slot array at `Layout::slots()` (320),
        // inside the mapping (at least one page); 4-byte aligned; an atomic, valid for any
        // bit pattern and only accessed atomically (see `ctl`). Lives as long as `self`.
        Some(unsafe {
            &*self.map.as_ptr().add(Layout::slots() + i * size_of::<AtomicU32>()).cast::<AtomicU32>()
        })
    }

    fn ring_size(&self) -> u32 {
        self.layout.geo.ring_size
    }

    fn ctl(&self, ring: Ring) -> &RingCtl {
        // SAFETY: `Layout::ctl` is 64 or 192, inside the mapping (which is at least one page,
        // validated at create/attach), 64-byte aligned (the mapping is page-aligned).
        // `RingCtl` is only atomics, valid for any bit pattern, and every access is atomic, so
        // the peer's concurrent writes are not data races. The reference lives no longer than
        // `self`, which keeps the mapping.
        unsafe { &*self.map.as_ptr().add(Layout::ctl(ring)).cast::<RingCtl>() }
    }

    fn desc(&self, ring: Ring, slot: u32) -> &Desc {
        let slot = (slot & (self.ring_size() - 1)) as usize;
        // SAFETY: `slot < ring_size`, so the descriptor lies in the ring's array, inside the
        // mapping by construction of `Layout`; 4-byte aligned (array offsets are multiples of
        // 64); only atomics, accessed atomically (see `ctl`).
        unsafe {
            &*self
                .map
                .as_ptr()
                .add(self.layout.descs[ring as usize] + slot * size_of::<Desc>())
                .cast::<Desc>()
        }
    }

    /// The buffers a ring's producer may name: `first..first + ring_size`.
    fn partition(&self, ring: Ring) -> u32 {
        self.ring_size() * ring as u32
    }

    /// Start of buffer `idx`. The caller has checked `idx < 2 × ring_size`.
    fn buf_ptr(&self, idx: u32) -> *mut u8 {
        debug_assert!(idx < 2 * self.ring_size());
        let off = self.layout.bufs + idx as usize * self.layout.geo.buf_size as usize;
        // SAFETY: `idx < buf_count`, so `off + buf_size <= layout.len`, the mapping's length.
        unsafe { self.map.as_mut_ptr().add(off) }
    }
}

/// Counters of what a peer did wrong, kept by the side that noticed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingFaults {
    /// Times the peer's published index was implausible (more than a ring apart from ours).
    pub bad_index: u64,
    /// Descriptors skipped because their buffer or length was out of bounds.
    pub bad_desc: u64,
}

/// The producing end of one ring.
#[derive(Debug)]
pub struct Producer {
    region: Arc<Region>,
    ring: Ring,
    head: u32,
    /// What the consumer did wrong.
    pub faults: RingFaults,
}

/// Why a frame was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError {
    /// No free slot (or the consumer's index is implausible).
    Full,
    /// Longer than a packet buffer.
    TooLong,
}

impl Producer {
    /// The producing end of `ring`, continuing from the index published in the region.
    pub fn new(region: Arc<Region>, ring: Ring) -> Producer {
        let head = region.ctl(ring).head.load(Ordering::Relaxed);
        Producer { region, ring, head, faults: RingFaults::default() }
    }

    /// The region this ring lives in.
    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// Frames in the ring not yet consumed, or `None` if the consumer's `tail` is implausible.
    fn in_flight(&self) -> Option<u32> {
        let tail = self.region.ctl(self.ring).tail.load(Ordering::Acquire);
        let used = self.head.wrapping_sub(tail);
        (used <= self.region.ring_size()).then_some(used)
    }

    /// Whether the consumer has taken every frame pushed so far (`false` if its index is
    /// implausible).
    pub fn is_drained(&self) -> bool {
        self.in_flight() == Some(0)
    }

    /// Whether a frame can be pushed now.
    pub fn has_space(&mut self) -> bool {
        match self.in_flight() {
            Some(used) => used < self.region.ring_size(),
            None => {
                self.faults.bad_index += 1;
                false
            }
        }
    }

    /// The largest frame a buffer holds.
    pub fn max_frame(&self) -> usize {
        self.region.layout.geo.buf_size as usize
    }

    fn next_buf(&self) -> u32 {
        self.region.partition(self.ring) + (self.head & (self.region.ring_size() - 1))
    }

    fn publish(&mut self, buf: u32, len: usize) {
        let d = self.region.desc(self.ring, self.head);
        d.buf.store(buf, Ordering::Relaxed);
        d.len.store(len as u32, Ordering::Relaxed);
        self.head = self.head.wrapping_add(1);
        self.region.ctl(self.ring).head.store(self.head, Ordering::Release);
    }

    /// Copies `frame` into the next slot and publishes it (the switch's way: the buffer is
    /// memory the untrusted peer can write, so no reference to it is ever formed).
    pub fn push_copy(&mut self, frame: &[u8]) -> Result<(), PushError> {
        if frame.len() > self.max_frame() {
            return Err(PushError::TooLong);
        }
        if !self.has_space() {
            return Err(PushError::Full);
        }
        let buf = self.next_buf();
        // SAFETY: the buffer is `buf_size >= frame.len()` bytes inside the mapping (`buf` is in
        // our partition); a raw copy does not care what the peer does to those bytes meanwhile.
        unsafe { std::ptr::copy_nonoverlapping(frame.as_ptr(), self.region.buf_ptr(buf), frame.len()) };
        self.publish(buf, frame.len());
        Ok(())
    }

    /// Lends the next slot's buffer (`len` bytes) to `f`, then publishes it (the container's
    /// way, without a copy). `None` if the ring is full or `len` too long.
    pub fn push_with<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        if len > self.max_frame() || !self.has_space() {
            return None;
        }
        let buf = self.next_buf();
        // SAFETY: the buffer is `buf_size >= len` bytes inside the mapping. The slot is free
        // (the consumer gave it back by publishing `tail`), so by the protocol nobody else
        // touches it until we publish `head`. Only the *trusted* side's peer could break that:
        // this is used by the container, whose peer is the switch, which writes only rx buffers.
        let slice = unsafe { std::slice::from_raw_parts_mut(self.region.buf_ptr(buf), len) };
        let r = f(slice);
        self.publish(buf, len);
        Some(r)
    }

    /// [`push_with`](Self::push_with), but `f` decides whether the slot is published: its
    /// `bool` is `false` when it sent the bytes elsewhere (the slot stays free for the next
    /// frame). `None` if the ring is full or `len` too long.
    pub fn fill_with<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> (R, bool)) -> Option<R> {
        if len > self.max_frame() || !self.has_space() {
            return None;
        }
        let buf = self.next_buf();
        // SAFETY: as in `push_with`: the free slot's buffer, in bounds, untouched by the
        // (trusted) consumer until we publish it.
        let slice = unsafe { std::slice::from_raw_parts_mut(self.region.buf_ptr(buf), len) };
        let (r, publish) = f(slice);
        if publish {
            self.publish(buf, len);
        }
        Some(r)
    }

    /// After publishing: whether the consumer asked for a doorbell.
    pub fn kick_needed(&self) -> bool {
        fence(Ordering::SeqCst);
        self.region.ctl(self.ring).consumer_waiting.load(Ordering::Relaxed) != 0
    }

    /// After publishing: whether the consumer asked for a doorbell, withdrawing the request
    /// (one doorbell per request, not one per frame until the consumer runs). Only for a ring
    /// whose one consumer thread asks again before each sleep and takes every frame when it
    /// wakes (the switch's tx side); where several threads may sleep on the doorbell, the
    /// request must stay for the others ([`kick_needed`](Self::kick_needed)).
    pub fn take_kick(&self) -> bool {
        fence(Ordering::SeqCst);
        let w = &self.region.ctl(self.ring).consumer_waiting;
        w.load(Ordering::Relaxed) != 0 && w.swap(0, Ordering::Relaxed) != 0
    }

    /// Asks for a doorbell when space frees up, then checks again: `true` means the ring is
    /// still full (or broken) and the caller may sleep; `false` means push again.
    pub fn arm(&mut self) -> bool {
        self.region.ctl(self.ring).producer_waiting.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.has_space() {
            self.disarm();
            return false;
        }
        true
    }

    /// Withdraws the request made by [`arm`](Self::arm).
    pub fn disarm(&self) {
        self.region.ctl(self.ring).producer_waiting.store(0, Ordering::Relaxed);
    }
}

/// The consuming end of one ring.
#[derive(Debug)]
pub struct Consumer {
    region: Arc<Region>,
    ring: Ring,
    tail: u32,
    /// What the producer did wrong.
    pub faults: RingFaults,
}

impl Consumer {
    /// The consuming end of `ring`, continuing from the index published in the region.
    pub fn new(region: Arc<Region>, ring: Ring) -> Consumer {
        let tail = region.ctl(ring).tail.load(Ordering::Relaxed);
        Consumer { region, ring, tail, faults: RingFaults::default() }
    }

    /// Frames available, `0` if none or if the producer's `head` is implausible.
    fn available(&self) -> u32 {
        let head = self.region.ctl(self.ring).head.load(Ordering::Acquire);
        let avail = head.wrapping_sub(self.tail);
        if avail <= self.region.ring_size() {
            avail
        } else {
            0
        }
    }

    /// Whether a frame (valid or not) is waiting.
    pub fn pending(&self) -> bool {
        self.available() != 0
    }

    /// Whether a valid frame is waiting (bad descriptors before it are skipped and counted).
    pub fn has_frame(&mut self) -> bool {
        self.next().is_some()
    }

    /// The next valid descriptor as (buffer, length), skipping and counting bad ones.
    fn next(&mut self) -> Option<(u32, usize)> {
        let n = self.region.ring_size();
        // At most one ring's worth of bad descriptors per call: bounded whatever the peer does.
        for _ in 0..n {
            let head = self.region.ctl(self.ring).head.load(Ordering::Acquire);
            let avail = head.wrapping_sub(self.tail);
            if avail == 0 {
                return None;
            }
            if avail > n {
                self.faults.bad_index += 1;
                return None;
            }
            let d = self.region.desc(self.ring, self.tail);
            let (buf, len) = (d.buf.load(Ordering::Relaxed), d.len.load(Ordering::Relaxed));
            let first = self.region.partition(self.ring);
            if buf.wrapping_sub(first) < n && len <= self.region.layout.geo.buf_size {
                return Some((buf, len as usize));
            }
            self.faults.bad_desc += 1;
            self.release();
        }
        None
    }

    fn release(&mut self) {
        self.tail = self.tail.wrapping_add(1);
        self.region.ctl(self.ring).tail.store(self.tail, Ordering::Release);
    }

    /// Copies the next frame into `out` (at least `buf_size` long, else the frame is cut to
    /// it) and returns its length (the switch's way: bytes of an untrusted peer are copied
    /// once into private memory and only then looked at).
    pub fn recv_copy(&mut self, out: &mut [u8]) -> Option<usize> {
        let (buf, len) = self.next()?;
        let len = len.min(out.len());
        // SAFETY: `buf` is in our partition and `len <= buf_size` (checked by `next`), so the
        // source lies inside the mapping; `out` is private. A raw copy of bytes the peer may be
        // writing at the same time yields some bytes, which we treat as untrusted anyway.
        unsafe { std::ptr::copy_nonoverlapping(self.region.buf_ptr(buf), out.as_mut_ptr(), len) };
        self.release();
        Some(len)
    }

    /// Lends the next frame to `f` without a copy (the container's way), then frees its slot.
    pub fn recv_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let (buf, len) = self.next()?;
        // SAFETY: in bounds as in `recv_copy`. The producer does not touch a published slot
        // until we publish `tail` (after `f` returns); only the trusted switch produces on the
        // ring this is used on, so the bytes do not change under the shared reference.
        let slice = unsafe { std::slice::from_raw_parts(self.region.buf_ptr(buf), len) };
        let r = f(slice);
        self.release();
        Some(r)
    }

    /// After consuming: whether the producer asked for a doorbell when space frees up.
    pub fn kick_needed(&self) -> bool {
        fence(Ordering::SeqCst);
        self.region.ctl(self.ring).producer_waiting.load(Ordering::Relaxed) != 0
    }

    /// Asks for a doorbell on the next frame, then checks again: `true` means the ring is
    /// still empty (or broken) and the caller may sleep; `false` means consume again.
    pub fn arm(&mut self) -> bool {
        self.region.ctl(self.ring).consumer_waiting.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.pending() {
            self.disarm();
            return false;
        }
        true
    }

    /// Withdraws the request made by [`arm`](Self::arm).
    pub fn disarm(&self) {
        self.region.ctl(self.ring).consumer_waiting.store(0, Ordering::Relaxed);
    }
}

/// A view of a consumer's ring that needs no access to the [`Consumer`] itself: for threads
/// that poll the ring while another part of the program owns the consumer (the library OS's
/// waiting threads, which poll the rx ring without the world lock and run the stack only when
/// a frame is there). It reads the producer's `head` and the consumer's own published `tail`,
/// and sets the consumer's doorbell request; it never consumes.
#[derive(Debug, Clone)]
pub struct RingProbe {
    region: Arc<Region>,
    ring: Ring,
}

impl RingProbe {
    fn ctl(&self) -> &RingCtl {
        self.region.ctl(self.ring)
    }

    /// Whether frames (valid or not) wait in the ring.
    pub fn pending(&self) -> bool {
        let ctl = self.ctl();
        let head = ctl.head.load(Ordering::Acquire);
        let used = head.wrapping_sub(ctl.tail.load(Ordering::Relaxed));
        used != 0 && used <= self.region.ring_size()
    }

    /// While this thread polls: the producer need not ring (its doorbell would only wake a
    /// sleeper for a frame the poller takes anyway).
    pub fn suppress(&self) {
        set_word(&self.ctl().consumer_waiting, 0);
    }

    /// The poller stops: the producer rings again for the next frame. Then looks once more:
    /// `true` if a frame came in between (the caller must see that it is consumed).
    pub fn rearm(&self) -> bool {
        set_word(&self.ctl().consumer_waiting, 1);
        fence(Ordering::SeqCst);
        self.pending()
    }
}

/// Stores `v` in a wake-up word unless it holds `v` already: the word shares its cache line
/// with the consumer's `tail`, which threads on other CPUs read on every scan, so a store
/// that changes nothing would only take the line away from them.
fn set_word(w: &AtomicU32, v: u32) {
    if w.load(Ordering::Relaxed) != v {
        w.store(v, Ordering::Relaxed);
    }
}

impl Consumer {
    /// A [`RingProbe`] of this consumer's ring.
    pub fn probe(&self) -> RingProbe {
        RingProbe { region: self.region.clone(), ring: self.ring }
    }
}

/// Words of one role's half of a [`Summary`]: a bit per binding the pair may hold.
pub const SUMMARY_WORDS: usize = SLOTS / 64;
/// Bytes between the two roles' halves of a [`Summary`]: the bitmap's cache line, then the
/// line of the role's `waiting` word.
const SUMMARY_STRIDE: usize = 128;
/// Offset of a role's `waiting` word in its half.
const SUMMARY_WAITING: usize = 64;
/// Offset of a role's `rung` word in its half (the line of `waiting`).
const SUMMARY_RUNG: usize = 72;
const _: () = assert!(SUMMARY_WORDS * 8 <= SUMMARY_WAITING && SUMMARY_RUNG + 8 <= SUMMARY_STRIDE);

/// The summary page of the secure bindings between two containers (one page per pair, made
/// by the switch and handed to both with each binding): for each of the pair's two *roles*, a
/// bitmap with one bit per binding (its `bit`, given by the switch). A producer that has put
/// a frame on a binding sets the binding's bit in the *consumer's* role; the consumer takes
/// its whole bitmap (an atomic swap with 0) and reads only the rings whose bits were set,
/// instead of the head of every binding's ring on every pass of its stack.
///
/// Order: the producer publishes the ring's `head`, then sets the bit with a `SeqCst`
/// read-modify-write; the consumer swaps the word (`SeqCst`), then reads the heads. A bit set
/// after the swap stays for the next look, so no frame is left unannounced.
///
/// Each role also has a `waiting` word, the pair's notification suppression for all its
/// bindings at once (the rings' own `consumer_waiting` words are not used on bindings): the
/// consumer stores 1 before it sleeps and then looks at its bitmap again (after a `SeqCst`
/// fence); the producer, after setting a bit, rings the consumer's doorbell only if the word
/// is 1. One of the two sees the other's store, as with a ring's words. Only the two
/// containers of the pair map the page, so a lying peer can hide or invent only frames of
/// its own bindings with this container (an invented bit costs one look at an empty ring).
/// The creator seals the size; the attacher refuses an unsealed or short memfd.
pub struct Summary {
    map: MmapRaw,
    fd: OwnedFd,
}

impl fmt::Debug for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Summary").finish_non_exhaustive()
    }
}

impl Summary {
    /// A fresh, zeroed, sealed summary page.
    pub fn create() -> Result<Summary, RingError> {
        let fd = rustix::fs::memfd_create("arrakis-summary", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(|e| RingError::Io("memfd_create", e.into()))?;
        rustix::fs::ftruncate(&fd, PAGE as u64).map_err(|e| RingError::Io("ftruncate", e.into()))?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .map_err(|e| RingError::Io("F_ADD_SEALS", e.into()))?;
        Summary::map(fd)
    }

    /// Attaches to a summary page the switch made: a sealed memfd of at least a page.
    pub fn attach(fd: OwnedFd) -> Result<Summary, RingError> {
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|e| RingError::Io("F_GET_SEALS", e.into()))?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
            return Err(RingError::NotSealed);
        }
        let len = rustix::fs::fstat(&fd).map_err(|e| RingError::Io("fstat", e.into()))?.st_size as u64;
        if len < PAGE as u64 {
            return Err(RingError::Length { header: PAGE as u64, file: len });
        }
        Summary::map(fd)
    }

    fn map(fd: OwnedFd) -> Result<Summary, RingError> {
        let map = MmapOptions::new().len(PAGE).map_raw(&fd).map_err(|e| RingError::Io("mmap", e))?;
        Ok(Summary { map, fd })
    }

    /// The memfd, to hand to the pair.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The file's identity (device, inode): two fds of one page name the same one.
    pub fn identity(&self) -> Result<(u64, u64), RingError> {
        let st = rustix::fs::fstat(&self.fd).map_err(|e| RingError::Io("fstat", e.into()))?;
        Ok((st.st_dev, st.st_ino))
    }

    /// Word `w` of role `role`'s bitmap (`None` out of range).
    fn word(&self, role: usize, w: usize) -> Option<&std::sync::atomic::AtomicU64> {
        if role > 1 || w >= SUMMARY_WORDS {
            return None;
        }
        // SAFETY: `role * SUMMARY_STRIDE + w * 8 < 2 * SUMMARY_STRIDE <= PAGE`, the mapping's
        // length (sealed, checked at attach); 8-byte aligned (the mapping is page-aligned).
        // `AtomicU64` is valid for any bits, and every access is atomic, so the peer's
        // concurrent writes are not data races. The reference lives no longer than `self`.
        Some(unsafe {
            &*self.map.as_ptr().add(role * SUMMARY_STRIDE + w * 8).cast::<std::sync::atomic::AtomicU64>()
        })
    }

    /// A frame was put on binding `bit` for the container of role `role` (after the ring's
    /// `head` was published).
    pub fn mark(&self, role: usize, bit: usize) {
        if let Some(w) = self.word(role, bit / 64) {
            w.fetch_or(1 << (bit % 64), Ordering::SeqCst);
        }
    }

    /// Role `role`'s `waiting` word (`None` for a role out of range).
    fn waiting_word(&self, role: usize) -> Option<&std::sync::atomic::AtomicU64> {
        self.line_word(role, SUMMARY_WAITING)
    }

    /// Role `role`'s word at `off` of its half's second line (`waiting` or `rung`).
    fn line_word(&self, role: usize, off: usize) -> Option<&std::sync::atomic::AtomicU64> {
        if role > 1 || !(off == SUMMARY_WAITING || off == SUMMARY_RUNG) {
            return None;
        }
        // SAFETY: as in `word`: `role * SUMMARY_STRIDE + off + 8 <= 2 * SUMMARY_STRIDE <=
        // PAGE`, 8-byte aligned.
        Some(unsafe {
            &*self.map.as_ptr().add(role * SUMMARY_STRIDE + off).cast::<std::sync::atomic::AtomicU64>()
        })
    }

    /// After setting a bit of role `role` whose consumer is [`waiting`](Self::waiting): whether
    /// this producer is the one to ring. The first since the consumer's last look sets the
    /// role's `rung` word and rings; the others need not, since the look that ring brings
    /// clears the word first and then takes the bitmap with their bits in it.
    pub fn claim_ring(&self, role: usize) -> bool {
        self.line_word(role, SUMMARY_RUNG)
            .is_some_and(|w| w.load(Ordering::SeqCst) == 0 && w.swap(1, Ordering::SeqCst) == 0)
    }

    /// The consumer of role `role` is about to look at its bitmap: the next frame rings again.
    pub fn clear_rung(&self, role: usize) {
        if let Some(w) = self.line_word(role, SUMMARY_RUNG) {
            if w.load(Ordering::Relaxed) != 0 {
                w.swap(0, Ordering::SeqCst);
            }
        }
    }

    /// The consumer of role `role` asks for a doorbell on the next frame (`true`) or polls
    /// and needs none (`false`). Stores only a change: the line is read by the producer after
    /// every frame. Arming is followed by a `SeqCst` fence; look at [`any`](Self::any) then.
    pub fn set_waiting(&self, role: usize, on: bool) {
        if let Some(w) = self.waiting_word(role) {
            if (w.load(Ordering::Relaxed) != 0) != on {
                w.store(u64::from(on), Ordering::Relaxed);
            }
            if on {
                fence(Ordering::SeqCst);
            }
        }
    }

    /// After setting a bit of role `role`: whether its consumer asked for a doorbell.
    pub fn waiting(&self, role: usize) -> bool {
        self.waiting_word(role).is_some_and(|w| w.load(Ordering::SeqCst) != 0)
    }

    /// Takes word `w` of role `role`'s bitmap (the bits set since the last take).
    pub fn take(&self, role: usize, w: usize) -> u64 {
        self.word(role, w).map_or(0, |w| {
            if w.load(Ordering::Relaxed) == 0 {
                0
            } else {
                w.swap(0, Ordering::SeqCst)
            }
        })
    }

    /// Whether any bit of role `role` is set (a frame was announced and not yet taken).
    pub fn any(&self, role: usize) -> bool {
        (0..SUMMARY_WORDS).any(|w| self.word(role, w).is_some_and(|w| w.load(Ordering::SeqCst) != 0))
    }
}

/// A doorbell: a non-blocking eventfd. Ringing it is one `write`; the sleeper polls it.
#[derive(Debug)]
pub struct Doorbell(OwnedFd);

impl Doorbell {
    /// A fresh doorbell (`EFD_CLOEXEC | EFD_NONBLOCK`).
    pub fn new() -> io::Result<Doorbell> {
        Ok(Doorbell(rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?))
    }

    /// A doorbell received from a peer. It must be a non-blocking eventfd; if it is not, ring
    /// and drain fail harmlessly (they only ever write or read 8 bytes).
    pub fn from_fd(fd: OwnedFd) -> Doorbell {
        Doorbell(fd)
    }

    /// Rings it. A full counter (2^64 - 2 unread rings) means it is ringing already.
    pub fn ring(&self) {
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }

    /// Consumes pending rings; `true` if there were any.
    pub fn drain(&self) -> bool {
        let mut b = [0u8; 8];
        matches!(rustix::io::read(&self.0, &mut b), Ok(8))
    }

    /// Sleeps until rung or `timeout` passes; `true` if rung (not consumed). `EINTR` counts
    /// as a spurious wake-up.
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        let ts = rustix::event::Timespec {
            tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&self.0, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(n) => Ok(n > 0),
            Err(rustix::io::Errno::INTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

impl AsFd for Doorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl From<Doorbell> for OwnedFd {
    fn from(d: Doorbell) -> OwnedFd {
        d.0
    }
}

#[cfg(test)]
#[path = "ring_tests.rs"]
mod tests;
