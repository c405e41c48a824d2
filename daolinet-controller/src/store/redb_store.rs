//! The embedded default [`Store`]: one redb file.
//!
//! redb commits are copy-on-write with checksummed roots and an fsync before
//! [`Store::apply`] returns, so an acknowledged batch survives `kill -9` and a
//! power cut, and a torn write leaves the previous commit in place.

use std::path::Path;
use std::sync::Mutex;

use redb::{Database, ReadableTable, TableDefinition};

use super::{Batch, Listing, Op, Revision, Store, StoreError, Watch, WatchBatch, Watchers};
use daolinet_policy::model::Kind;

const REVISION: TableDefinition<'_, &str, u64> = TableDefinition::new("_revision");

fn table(kind: Kind) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(kind.as_str())
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A store in a single redb file.
pub struct RedbStore {
    db: Database,
    watchers: Watchers,
    /// Orders commits and their notification against new watches.
    order: Mutex<()>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (or creates) the store file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path)
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        // Create every table once so that readers never meet a missing one.
        let txn = db.begin_write().map_err(backend)?;
        {
            txn.open_table(REVISION).map_err(backend)?;
            for kind in Kind::ALL {
                txn.open_table(table(kind)).map_err(backend)?;
            }
        }
        txn.commit().map_err(backend)?;
        Ok(RedbStore {
            db,
            watchers: Watchers::default(),
            order: Mutex::new(()),
        })
    }
}

impl Store for RedbStore {
    fn get(&self, kind: Kind, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(table(kind)).map_err(backend)?;
        Ok(t.get(key).map_err(backend)?.map(|v| v.value().to_vec()))
    }

    fn list(&self) -> Result<Listing, StoreError> {
        // One read transaction: every table and the revision at one commit.
        let txn = self.db.begin_read().map_err(backend)?;
        let mut items = Vec::new();
        for kind in Kind::ALL {
            let t = txn.open_table(table(kind)).map_err(backend)?;
            for item in t.iter().map_err(backend)? {
                let (k, v) = item.map_err(backend)?;
                items.push((kind, k.value().to_string(), v.value().to_vec()));
            }
        }
        let t = txn.open_table(REVISION).map_err(backend)?;
        let revision = t
            .get("revision")
            .map_err(backend)?
            .map(|v| v.value())
            .unwrap_or(0);
        Ok(Listing { revision, items })
    }

    fn revision(&self) -> Result<Revision, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(REVISION).map_err(backend)?;
        Ok(t.get("revision")
            .map_err(backend)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    fn apply(&self, batch: Batch) -> Result<Revision, StoreError> {
        // redb serialises write transactions, so the guard check and the
        // writes are atomic with respect to other writers of this file;
        // `order` also keeps new watches from slipping between a commit and
        // its notification.
        let _order = self
            .order
            .lock()
            .map_err(|_| StoreError::Backend("store lock poisoned".into()))?;
        let ops: Vec<Op> = batch.last_writes().into_iter().cloned().collect();
        let txn = self.db.begin_write().map_err(backend)?;
        let revision = {
            let mut rev = txn.open_table(REVISION).map_err(backend)?;
            let current = rev
                .get("revision")
                .map_err(backend)?
                .map(|v| v.value())
                .unwrap_or(0);
            if let Some(expected) = batch.expect_revision {
                if expected != current {
                    return Err(StoreError::Conflict {
                        expected,
                        actual: current,
                    });
                }
            }
            for op in &ops {
                match op {
                    Op::Put { kind, key, value } => {
                        let mut t = txn.open_table(table(*kind)).map_err(backend)?;
                        t.insert(key.as_str(), value.as_slice()).map_err(backend)?;
                    }
                    Op::Delete { kind, key } => {
                        let mut t = txn.open_table(table(*kind)).map_err(backend)?;
                        t.remove(key.as_str()).map_err(backend)?;
                    }
                }
            }
            let next = current + 1;
            rev.insert("revision", next).map_err(backend)?;
            next
        };
        txn.commit().map_err(backend)?;
        self.watchers.notify(WatchBatch { revision, ops });
        Ok(revision)
    }

    fn watch(&self, after: Revision) -> Result<Watch, StoreError> {
        let _order = self
            .order
            .lock()
            .map_err(|_| StoreError::Backend("store lock poisoned".into()))?;
        self.watchers.subscribe(after, self.revision()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let s = RedbStore::open(&path).unwrap();
            super::super::contract::run(&s);
        }
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.get(Kind::Group, "g").unwrap(), Some(b"4".to_vec()));
        assert_eq!(s.revision().unwrap(), 3);
    }
}
