//! A fast hasher for small integer keys looked up per packet: the library OS stack's shard
//! ids, ports and address 4-tuples, the emulator NIC's flows.
//!
//! std's default SipHash costs more than the rest of a lookup for such keys and showed up in
//! every packet's demultiplexing, every pump and every frame sent on a secure binding. This is
//! the multiply-rotate scheme of rustc's `FxHasher`, seeded per process from std's random keys
//! so that a peer cannot precompute colliding ports.

use std::hash::{BuildHasher, Hasher};

const K: u64 = 0xf135_7aea_2e62_a9c5;

/// Builds [`FastHasher`]s with the process's seed.
#[derive(Clone, Copy, Debug)]
pub struct FastState(u64);

impl Default for FastState {
    fn default() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        FastState(*SEED.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(0u64)))
    }
}

impl BuildHasher for FastState {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(self.0)
    }
}

/// See the module comment.
#[derive(Clone, Copy, Debug)]
pub struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn add(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(26) ^ v).wrapping_mul(K);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // Fold the high bits down: hashbrown takes its bucket index from the low bits and
        // its tag from the top seven.
        self.0 ^ (self.0 >> 29)
    }
}

/// A `HashMap` with [`FastState`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, FastState>;
/// A `HashSet` with [`FastState`].
pub type FastSet<K> = std::collections::HashSet<K, FastState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_small_keys_spread() {
        let s = FastState::default();
        let mut seen = std::collections::HashSet::new();
        for port in 0..4096u16 {
            seen.insert(s.hash_one(port) & 0xfff);
        }
        // A decent spread over 4096 buckets (a random function fills ~63%).
        assert!(seen.len() > 2000, "{}", seen.len());
    }

    #[test]
    fn map_works() {
        let mut m: FastMap<(u16, u32), usize> = FastMap::default();
        for i in 0..1000u32 {
            m.insert((i as u16, i * 7), i as usize);
        }
        for i in 0..1000u32 {
            assert_eq!(m.get(&(i as u16, i * 7)), Some(&(i as usize)));
        }
    }
}
