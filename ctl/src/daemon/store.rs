//! The daemon's crash-safe store: a redb database (`state.redb` in the state directory).
//!
//! Layout (schema 2): table `meta` (`schema` → 2, `next_id` → the next grant number),
//! table `containers` (pid → JSON of [`ContainerRec`]), table `grants` (grant number →
//! JSON of [`GrantRec`], token included) and table `vsas` (name → JSON of [`VsaRec`]).
//! Schema 1 (before VSAs) is the same without `vsas`: a schema-1 store is upgraded in place
//! at open (the table is added, the mark set to 2), and a build that reads only schema 1
//! refuses the upgraded store rather than ignore its VSAs. Every request that changes something is one
//! write transaction, committed (fsync'd, redb's `Durability::Immediate`) before the daemon
//! answers; redb's copy-on-write B-trees with a double-buffered commit slot mean a crash at
//! any point leaves the last committed state, which redb repairs on the next open.
//!
//! A file that is not a redb database, a record that does not decode, or a schema from
//! another release is refused with [`StoreError::Corrupt`] naming the file and the fix; it
//! is never overwritten and never panics the daemon.

use std::path::{Path, PathBuf};

use arrakis_backends::proto::GrantId;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::rules::{Change, ContainerRec, GrantRec};
use super::vsa::VsaRec;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const CONTAINERS: TableDefinition<u32, &[u8]> = TableDefinition::new("containers");
const GRANTS: TableDefinition<u64, &[u8]> = TableDefinition::new("grants");
const VSAS: TableDefinition<&str, &[u8]> = TableDefinition::new("vsas");
/// The layout this build writes.
pub const SCHEMA: u64 = 2;
/// The older layout this build upgrades.
const SCHEMA_NO_VSAS: u64 = 1;
/// The store's file name in the state directory.
pub const FILE: &str = "state.redb";

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another daemon has it open.
    #[error(
        "the state store {} is in use by another arrakis daemon; stop that daemon, or give this one \
         its own --state-dir",
        path.display()
    )]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a store this build can read.
    #[error(
        "the state store {} is corrupt or not an arrakis store ({reason}); move it aside \
         (`mv {0} {0}.bad`) and start the daemon again: it starts with no grants, and running \
         containers register again",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Reading or writing failed.
    #[error("the state store {} failed: {reason}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// What the store held at open.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Containers.
    pub containers: Vec<ContainerRec>,
    /// Grants.
    pub grants: Vec<GrantRec>,
    /// The next grant number.
    pub next_id: u64,
    /// VSAs.
    pub vsas: Vec<VsaRec>,
}

/// The open store.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating it if missing) the store at `path` and reads everything in it.
    pub fn open(path: &Path) -> Result<(Store, Loaded), StoreError> {
        let p = path.to_path_buf();
        let corrupt = |reason: String| StoreError::Corrupt { path: p.clone(), reason };
        // redb is not expected to panic on a bad file; if it does, that is a refusal too.
        let opened = std::panic::catch_unwind(|| Database::create(path))
            .map_err(|_| corrupt("the database library panicked while opening it".into()))?;
        let db = match opened {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::Locked { path: p }),
            Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                return Err(StoreError::Io { path: p, reason: e.to_string() })
            }
            Err(e) => return Err(corrupt(e.to_string())),
        };
        let store = Store { db, path: p.clone() };
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.load()))
            .map_err(|_| corrupt("the database library panicked while reading it".into()))??;
        Ok((store, loaded))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn corrupt(&self, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt { path: self.path.clone(), reason: reason.to_string() }
    }

    fn io(&self, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Io { path: self.path.clone(), reason: reason.to_string() }
    }

    /// Reads everything; creates the tables and the schema mark in a new store.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        // Make sure the tables exist and the schema is ours (a new store gets our mark).
        let tx = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| self.corrupt(e))?;
            let schema = meta.get("schema").map_err(|e| self.corrupt(e))?.map(|v| v.value());
            match schema {
                None | Some(SCHEMA_NO_VSAS) => {
                    meta.insert("schema", SCHEMA).map_err(|e| self.io(e))?;
                }
                Some(SCHEMA) => {}
                Some(other) => return Err(self.corrupt(format!("schema {other}, this build reads {SCHEMA}"))),
            }
            tx.open_table(CONTAINERS).map_err(|e| self.corrupt(e))?;
            tx.open_table(GRANTS).map_err(|e| self.corrupt(e))?;
            tx.open_table(VSAS).map_err(|e| self.corrupt(e))?;
        }
        tx.commit().map_err(|e| self.io(e))?;

        let tx = self.db.begin_read().map_err(|e| self.io(e))?;
        let meta = tx.open_table(META).map_err(|e| self.corrupt(e))?;
        let next_id = meta.get("next_id").map_err(|e| self.corrupt(e))?.map(|v| v.value()).unwrap_or(1);
        let mut out = Loaded { next_id, ..Loaded::default() };
        let t = tx.open_table(CONTAINERS).map_err(|e| self.corrupt(e))?;
        for entry in t.iter().map_err(|e| self.corrupt(e))? {
            let (k, v) = entry.map_err(|e| self.corrupt(e))?;
            let c: ContainerRec = serde_json::from_slice(v.value())
                .map_err(|e| self.corrupt(format!("container {}: {e}", k.value())))?;
            out.containers.push(c);
        }
        let t = tx.open_table(GRANTS).map_err(|e| self.corrupt(e))?;
        for entry in t.iter().map_err(|e| self.corrupt(e))? {
            let (k, v) = entry.map_err(|e| self.corrupt(e))?;
            let g: GrantRec = serde_json::from_slice(v.value())
                .map_err(|e| self.corrupt(format!("grant {}: {e}", k.value())))?;
            if g.id != GrantId(k.value()) {
                return Err(self.corrupt(format!("grant {} is stored under key {}", g.id, k.value())));
            }
            out.grants.push(g);
        }
        let t = tx.open_table(VSAS).map_err(|e| self.corrupt(e))?;
        for entry in t.iter().map_err(|e| self.corrupt(e))? {
            let (k, v) = entry.map_err(|e| self.corrupt(e))?;
            let r: VsaRec = serde_json::from_slice(v.value())
                .map_err(|e| self.corrupt(format!("VSA {}: {e}", k.value())))?;
            if r.name.as_str() != k.value() {
                return Err(self.corrupt(format!("VSA {} is stored under key {}", r.name, k.value())));
            }
            out.vsas.push(r);
        }
        Ok(out)
    }

    /// Writes `changes` in one durable transaction: all of them or none.
    pub fn commit(&self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| self.io(e))?;
            let mut cs = tx.open_table(CONTAINERS).map_err(|e| self.io(e))?;
            let mut gs = tx.open_table(GRANTS).map_err(|e| self.io(e))?;
            let mut vs = tx.open_table(VSAS).map_err(|e| self.io(e))?;
            for ch in changes {
                match ch {
                    Change::PutContainer(c) => {
                        let v = serde_json::to_vec(c).map_err(|e| self.io(e))?;
                        cs.insert(c.pid, v.as_slice()).map_err(|e| self.io(e))?;
                    }
                    Change::DelContainer(pid) => {
                        cs.remove(*pid).map_err(|e| self.io(e))?;
                    }
                    Change::PutGrant(g) => {
                        let v = serde_json::to_vec(g).map_err(|e| self.io(e))?;
                        gs.insert(g.id.0, v.as_slice()).map_err(|e| self.io(e))?;
                    }
                    Change::DelGrant(id) => {
                        gs.remove(id.0).map_err(|e| self.io(e))?;
                    }
                    Change::NextId(n) => {
                        meta.insert("next_id", *n).map_err(|e| self.io(e))?;
                    }
                    Change::PutVsa(r) => {
                        let v = serde_json::to_vec(r).map_err(|e| self.io(e))?;
                        vs.insert(r.name.as_str(), v.as_slice()).map_err(|e| self.io(e))?;
                    }
                    Change::DelVsa(name) => {
                        vs.remove(name.as_str()).map_err(|e| self.io(e))?;
                    }
                }
            }
        }
        tx.commit().map_err(|e| self.io(e))
    }
}

#[cfg(test)]
mod tests {
    use arrakis_backends::proto::{Name, Token};

    use super::super::rules::tests::tcp;
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("arrakis-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn changes_survive_reopening() {
        let d = tmp("reopen");
        let path = d.join(FILE);
        let c = ContainerRec { pid: 7, start: 70, name: Name::lossy("x"), uid: 1, parent: 1, registered: 5 };
        let g = GrantRec {
            id: GrantId(3),
            filter: tcp("::", 5000, 5000),
            token: Token([9; 16]),
            holders: vec![7],
            uid: 1,
            created: 5,
            ephemeral: true,
        };
        {
            let (s, l) = Store::open(&path).unwrap();
            assert!(l.containers.is_empty() && l.grants.is_empty() && l.next_id == 1);
            s.commit(&[Change::PutContainer(c.clone()), Change::PutGrant(g.clone()), Change::NextId(4)])
                .unwrap();
            // A second daemon on the same store is refused.
            assert!(matches!(Store::open(&path), Err(StoreError::Locked { .. })));
        }
        let (s, l) = Store::open(&path).unwrap();
        assert_eq!((l.containers, l.grants.clone(), l.next_id), (vec![c], vec![g], 4));
        s.commit(&[Change::DelGrant(GrantId(3)), Change::DelContainer(7)]).unwrap();
        drop(s);
        let (_, l) = Store::open(&path).unwrap();
        assert!(l.grants.is_empty() && l.containers.is_empty());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_corrupt_store_is_refused_with_its_name_and_the_fix() {
        let d = tmp("corrupt");
        let path = d.join(FILE);
        for junk in [vec![0u8; 10], vec![0xff; 8192], b"not a database at all".repeat(500)] {
            std::fs::write(&path, &junk).unwrap();
            let e = Store::open(&path).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(path.to_str().unwrap()) && msg.contains("move it aside"), "{msg}");
        }
        // A truncated real store.
        std::fs::remove_file(&path).unwrap();
        {
            let (s, _) = Store::open(&path).unwrap();
            s.commit(&[Change::NextId(9)]).unwrap();
        }
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len / 3).unwrap();
        drop(f);
        // Refused or repaired, never a panic.
        if let Err(e) = Store::open(&path) {
            assert!(e.to_string().contains(path.to_str().unwrap()), "{e}");
        }
        std::fs::remove_dir_all(d).unwrap();
    }
}
