//! Block devices under a volume: the [`BlockDev`] trait, memory ([`MemDev`]: loopback backend,
//! tests), a file or block device by fd ([`FileDev`]: emulator backend), and the cutting test
//! device of the crash-consistency tests ([`CutDev`]).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{FsError, FsResult};

/// Size of one block in bytes: the unit of every read, write and allocation.
pub const BLOCK: usize = 4096;

/// A device of fixed-size blocks. All methods take `&self` and may be called from many threads.
pub trait BlockDev: Send + Sync {
    /// Device size in blocks.
    fn blocks(&self) -> u64;
    /// Reads `buf.len() / BLOCK` consecutive blocks starting at `block`; `buf.len()` must be a
    /// multiple of [`BLOCK`].
    fn read(&self, block: u64, buf: &mut [u8]) -> FsResult<()>;
    /// Writes consecutive blocks starting at `block`; `data.len()` must be a multiple of
    /// [`BLOCK`]. Once this returns the data is visible to reads and survives the process being
    /// killed (not a power cut: that needs [`BlockDev::flush`]). Each block is written
    /// atomically (old or new contents, never a mix), the blocks of one call in order.
    fn write(&self, block: u64, data: &[u8]) -> FsResult<()>;
    /// Returns when everything written before is durable.
    fn flush(&self) -> FsResult<()>;
}

/// Checks that `len` bytes starting at `block` are whole blocks inside a device of `blocks`.
fn check_range(op: &str, block: u64, len: usize, blocks: u64) -> FsResult<u64> {
    if !len.is_multiple_of(BLOCK) {
        return Err(FsError::Device {
            what: format!("{op} of {len} bytes at block {block}: not a multiple of {BLOCK}"),
        });
    }
    let n = (len / BLOCK) as u64;
    match block.checked_add(n) {
        Some(end) if end <= blocks => Ok(n),
        _ => Err(FsError::Device {
            what: format!(
                "{op} of {n} blocks at block {block}: past the end of the device ({blocks} blocks)"
            ),
        }),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A sparse in-memory device: blocks never written read as zeros and cost no memory, so a
/// 256 MiB `MemDev` costs nothing until it is written. Cloning shares the contents; use
/// [`MemDev::snapshot`] for an independent copy.
#[derive(Clone)]
pub struct MemDev {
    blocks: u64,
    map: Arc<Mutex<HashMap<u64, Box<[u8]>>>>,
}

impl MemDev {
    /// A zeroed device of `bytes` (rounded down to whole blocks).
    pub fn new(bytes: u64) -> MemDev {
        MemDev { blocks: bytes / BLOCK as u64, map: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// A device holding `image` (rounded up to whole blocks with zeros).
    pub fn from_image(image: &[u8]) -> MemDev {
        let dev = MemDev::new(image.len().div_ceil(BLOCK) as u64 * BLOCK as u64);
        {
            let mut map = lock(&dev.map);
            for (i, chunk) in image.chunks(BLOCK).enumerate() {
                if chunk.iter().any(|&b| b != 0) {
                    let mut b = vec![0u8; BLOCK].into_boxed_slice();
                    b[..chunk.len()].copy_from_slice(chunk);
                    map.insert(i as u64, b);
                }
            }
        }
        dev
    }

    /// An independent copy of the current contents.
    pub fn snapshot(&self) -> MemDev {
        let map = lock(&self.map).clone();
        MemDev { blocks: self.blocks, map: Arc::new(Mutex::new(map)) }
    }

    /// The whole image as bytes (for fuzzing and comparisons; allocates the full size).
    pub fn image(&self) -> Vec<u8> {
        let len = usize::try_from(self.blocks).unwrap_or(0).saturating_mul(BLOCK);
        let mut out = vec![0u8; len];
        for (&b, data) in lock(&self.map).iter() {
            let off = b as usize * BLOCK;
            if let Some(dst) = out.get_mut(off..off + BLOCK) {
                dst.copy_from_slice(data);
            }
        }
        out
    }

    /// Blocks that have been written at least once (a measure of memory use).
    pub fn touched_blocks(&self) -> usize {
        lock(&self.map).len()
    }

    /// Overwrites one byte (tests of corruption). Out-of-range offsets are ignored.
    pub fn poke(&self, byte: u64, value: u8) {
        let b = byte / BLOCK as u64;
        if b >= self.blocks {
            return;
        }
        let mut map = lock(&self.map);
        let blk = map.entry(b).or_insert_with(|| vec![0u8; BLOCK].into_boxed_slice());
        if let Some(x) = blk.get_mut((byte % BLOCK as u64) as usize) {
            *x = value;
        }
    }
}

impl BlockDev for MemDev {
    fn blocks(&self) -> u64 {
        self.blocks
    }

    fn read(&self, block: u64, buf: &mut [u8]) -> FsResult<()> {
        check_range("read", block, buf.len(), self.blocks)?;
        let map = lock(&self.map);
        for (i, chunk) in buf.chunks_mut(BLOCK).enumerate() {
            match map.get(&(block + i as u64)) {
                Some(b) => chunk.copy_from_slice(b),
                None => chunk.fill(0),
            }
        }
        Ok(())
    }

    fn write(&self, block: u64, data: &[u8]) -> FsResult<()> {
        check_range("write", block, data.len(), self.blocks)?;
        let mut map = lock(&self.map);
        for (i, chunk) in data.chunks(BLOCK).enumerate() {
            map.insert(block + i as u64, chunk.to_vec().into_boxed_slice());
        }
        Ok(())
    }

    fn flush(&self) -> FsResult<()> {
        Ok(())
    }
}

/// A preallocated file or a block device, by fd: `pread`/`pwrite` at `block * BLOCK`, `flush`
/// is `fdatasync` (with the CPU keeper polling on this CPU meanwhile, `crate::keeper`). The
/// fd's size is not changed.
pub struct FileDev {
    fd: OwnedFd,
    blocks: u64,
}

impl FileDev {
    /// Wraps `fd` of `len_bytes` (rounded down to whole blocks).
    pub fn new(fd: OwnedFd, len_bytes: u64) -> FileDev {
        FileDev { fd, blocks: len_bytes / BLOCK as u64 }
    }

    /// The fd underneath.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

impl BlockDev for FileDev {
    fn blocks(&self) -> u64 {
        self.blocks
    }

    fn read(&self, block: u64, buf: &mut [u8]) -> FsResult<()> {
        check_range("read", block, buf.len(), self.blocks)?;
        let base = block * BLOCK as u64;
        let mut done = 0usize;
        while done < buf.len() {
            let rest = &mut buf[done..];
            match rustix::io::pread(&self.fd, rest, base + done as u64) {
                Ok(0) => {
                    // Past the end of a file shorter than announced: zeros, like a sparse file.
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    return Err(FsError::Device {
                        what: format!("pread of block {} failed: {e}", block + (done / BLOCK) as u64),
                    });
                }
            }
        }
        Ok(())
    }

    fn write(&self, block: u64, data: &[u8]) -> FsResult<()> {
        check_range("write", block, data.len(), self.blocks)?;
        let base = block * BLOCK as u64;
        let mut done = 0usize;
        while done < data.len() {
            match rustix::io::pwrite(&self.fd, &data[done..], base + done as u64) {
                Ok(0) => {
                    return Err(FsError::Device {
                        what: format!("pwrite of block {} wrote nothing", block + (done / BLOCK) as u64),
                    });
                }
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    return Err(FsError::Device {
                        what: format!("pwrite of block {} failed: {e}", block + (done / BLOCK) as u64),
                    });
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> FsResult<()> {
        // The CPU keeper polls on this CPU while the flush is in flight (crate::keeper).
        let _kept = crate::keeper::flushing();
        loop {
            match rustix::fs::fdatasync(&self.fd) {
                Ok(()) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(FsError::Device { what: format!("fdatasync failed: {e}") }),
            }
        }
    }
}

struct CutState {
    writes: u64,
    flushes: u64,
    cut: Option<u64>,
    lost: bool,
}

/// A test device that simulates a power cut: it counts block writes (each block of a
/// multi-block write counts as one) and, after [`CutDev::cut_after`]`(n)`, lets the first `n`
/// block writes through and silently discards every later write and flush. The surviving
/// image ([`CutDev::image`]) is what the disk holds after the cut.
pub struct CutDev {
    inner: MemDev,
    state: Mutex<CutState>,
}

impl CutDev {
    /// Wraps `inner` (writes reach it until the cut).
    pub fn new(inner: MemDev) -> CutDev {
        CutDev { inner, state: Mutex::new(CutState { writes: 0, flushes: 0, cut: None, lost: false }) }
    }

    /// Lets only the first `n` block writes (counted since creation) reach the device; every
    /// later write is discarded, as is every flush (flushes do nothing on memory anyway).
    pub fn cut_after(&self, n: u64) {
        lock(&self.state).cut = Some(n);
    }

    /// Block writes attempted so far (including discarded ones).
    pub fn writes(&self) -> u64 {
        lock(&self.state).writes
    }

    /// Flushes attempted so far.
    pub fn flushes(&self) -> u64 {
        lock(&self.state).flushes
    }

    /// Whether a write has been discarded (the cut has happened).
    pub fn is_cut(&self) -> bool {
        lock(&self.state).lost
    }

    /// The surviving device contents (an independent copy).
    pub fn image(&self) -> MemDev {
        self.inner.snapshot()
    }
}

impl BlockDev for CutDev {
    fn blocks(&self) -> u64 {
        self.inner.blocks()
    }

    fn read(&self, block: u64, buf: &mut [u8]) -> FsResult<()> {
        self.inner.read(block, buf)
    }

    fn write(&self, block: u64, data: &[u8]) -> FsResult<()> {
        check_range("write", block, data.len(), self.inner.blocks())?;
        let mut st = lock(&self.state);
        for (i, chunk) in data.chunks(BLOCK).enumerate() {
            st.writes += 1;
            let pass = match st.cut {
                Some(n) => !st.lost && st.writes <= n,
                None => true,
            };
            if pass {
                self.inner.write(block + i as u64, chunk)?;
            } else {
                st.lost = true;
            }
        }
        Ok(())
    }

    fn flush(&self) -> FsResult<()> {
        lock(&self.state).flushes += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memdev_sparse_and_roundtrip() {
        let d = MemDev::new(256 << 20);
        assert_eq!(d.blocks(), 65536);
        let mut buf = vec![1u8; BLOCK * 2];
        d.read(100, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        d.write(65535, &[7u8; BLOCK]).unwrap();
        assert!(d.write(65535, &[7u8; BLOCK * 2]).is_err());
        assert!(d.read(0, &mut [0u8; 10]).is_err());
        assert_eq!(d.touched_blocks(), 1);
        let s = d.snapshot();
        d.write(65535, &[8u8; BLOCK]).unwrap();
        let mut b = vec![0u8; BLOCK];
        s.read(65535, &mut b).unwrap();
        assert_eq!(b[0], 7);
    }

    #[test]
    fn cutdev_discards_after_cut() {
        let c = CutDev::new(MemDev::new(16 * BLOCK as u64));
        c.cut_after(3);
        c.write(0, &[1u8; BLOCK * 2]).unwrap();
        assert!(!c.is_cut());
        c.write(2, &[2u8; BLOCK * 2]).unwrap();
        assert!(c.is_cut());
        c.write(4, &[3u8; BLOCK]).unwrap();
        assert_eq!(c.writes(), 5);
        let img = c.image();
        let mut b = vec![0u8; BLOCK];
        img.read(2, &mut b).unwrap();
        assert_eq!(b[0], 2);
        img.read(3, &mut b).unwrap();
        assert_eq!(b[0], 0);
        img.read(4, &mut b).unwrap();
        assert_eq!(b[0], 0);
    }

    #[test]
    fn filedev_roundtrip() {
        let path = std::env::temp_dir().join(format!("arrakis-filedev-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(8 * BLOCK as u64).unwrap();
        let _ = std::fs::remove_file(&path);
        let d = FileDev::new(OwnedFd::from(f), 8 * BLOCK as u64);
        d.write(3, &[9u8; BLOCK * 2]).unwrap();
        d.flush().unwrap();
        let mut b = vec![0u8; BLOCK * 3];
        d.read(2, &mut b).unwrap();
        assert!(b[..BLOCK].iter().all(|&x| x == 0));
        assert!(b[BLOCK..].iter().all(|&x| x == 9));
        assert!(d.read(7, &mut b).is_err());
    }
}
