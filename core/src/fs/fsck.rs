//! Checking (and repairing) a volume image: what `arrakis fsck` runs.
//!
//! [`check`] loads the image the way a mount does (superblocks, checkpoint, journal replay)
//! without writing anything, and lists every problem it finds. [`repair`] fixes what can be
//! fixed — a journal damaged in the middle is cut at the damage, dangling or duplicate
//! directory entries are removed, unreachable inodes are linked into the root as
//! `lost+found-INO`, wrong link counts and parents are set, blocks used twice or past a
//! file's end are dropped, orphan inodes are freed, and free space is rebuilt — then writes a
//! fresh checkpoint to both superblock slots. Damage to the structures themselves (both
//! superblocks, the checkpoint) cannot be repaired: the report says so.

use std::fmt;

use super::dev::BlockDev;
use super::volume::{Inner, Mode};
use super::{FsError, FsResult};

/// What [`check`] or [`repair`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsckReport {
    /// No problem left (after a repair: everything found was fixed).
    pub ok: bool,
    /// Problems found, each naming what and where.
    pub problems: Vec<String>,
    /// What [`repair`] changed.
    pub fixed: Vec<String>,
    /// Regular files.
    pub files: u64,
    /// Directories (including the root).
    pub dirs: u64,
    /// Orphan inodes (unlinked while open; freed at the next read-write mount).
    pub orphans: u64,
    /// Highest block in use + 1.
    pub used_blocks: u64,
    /// Blocks on the device.
    pub device_blocks: u64,
    /// Journal records replayed.
    pub replayed: u64,
    /// Superblock generation of the image.
    pub generation: u64,
}

impl fmt::Display for FsckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "volume: {}", if self.ok { "clean" } else { "DAMAGED" })?;
        writeln!(
            f,
            "  {} file(s), {} director(y/ies), {} orphan(s); {} of {} blocks in use; generation {}, {} journal record(s) replayed",
            self.files, self.dirs, self.orphans, self.used_blocks, self.device_blocks, self.generation, self.replayed
        )?;
        for p in &self.problems {
            writeln!(f, "  problem: {p}")?;
        }
        for x in &self.fixed {
            writeln!(f, "  fixed: {x}")?;
        }
        if !self.ok && self.fixed.is_empty() {
            writeln!(f, "  run `arrakis fsck --repair` to fix what can be fixed")?;
        }
        Ok(())
    }
}

fn report(dev: &dyn BlockDev, mode: Mode) -> FsResult<FsckReport> {
    let device_blocks = dev.blocks();
    match Inner::load(dev, mode) {
        Ok((s, info)) => {
            let (files, dirs) = s.counts();
            let ok = if mode == Mode::Repair { true } else { info.problems.is_empty() };
            Ok(FsckReport {
                ok,
                problems: info.problems,
                fixed: info.fixed,
                files,
                dirs,
                orphans: info.orphans,
                used_blocks: s.used_end(),
                device_blocks,
                replayed: info.replayed,
                generation: s.sb.generation,
            })
        }
        Err(FsError::Corrupt { what }) => Ok(FsckReport {
            ok: false,
            problems: vec![if mode == Mode::Repair { format!("{what} (cannot be repaired)") } else { what }],
            device_blocks,
            ..FsckReport::default()
        }),
        Err(e) => Err(e),
    }
}

/// Checks the image on `dev` without writing to it. `Err` only for device errors: damage is
/// reported in the report.
pub fn check(dev: &dyn BlockDev) -> FsResult<FsckReport> {
    report(dev, Mode::Check)
}

/// Repairs what can be repaired and writes a fresh checkpoint to both superblock slots.
pub fn repair(dev: &dyn BlockDev) -> FsResult<FsckReport> {
    let mut r = report(dev, Mode::Repair)?;
    if r.ok {
        // A second checkpoint so that both superblock slots hold a valid, current copy.
        let (mut s, _) = Inner::load(dev, Mode::Repair)?;
        s.checkpoint(dev)?;
        r.generation = s.sb.generation;
        r.used_blocks = s.used_end();
        r.fixed.push("rewrote both superblocks and the checkpoint".into());
    }
    Ok(r)
}

/// Highest block in use + 1 of the image on `dev` (after recovery, read-only): the daemon
/// refuses to shrink a VSA below this.
pub fn used_blocks(dev: &dyn BlockDev) -> FsResult<u64> {
    let (s, _) = Inner::load(dev, Mode::ReadOnly)?;
    Ok(s.used_end())
}
