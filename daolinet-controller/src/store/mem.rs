//! In-memory [`Store`] for tests and tools; nothing survives the process.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Batch, Listing, Op, Revision, Store, StoreError, Watch, WatchBatch, Watchers};
use daolinet_policy::model::Kind;

#[derive(Debug, Default)]
struct Inner {
    revision: Revision,
    data: BTreeMap<(Kind, String), Vec<u8>>,
}

/// A store that keeps everything in memory.
#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
    watchers: Watchers,
}

impl MemStore {
    /// An empty store at revision 0.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Backend("memory store lock poisoned".into()))
    }
}

impl Store for MemStore {
    fn get(&self, kind: Kind, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()?.data.get(&(kind, key.to_string())).cloned())
    }

    fn list(&self) -> Result<Listing, StoreError> {
        let g = self.lock()?;
        Ok(Listing {
            revision: g.revision,
            items: g
                .data
                .iter()
                .map(|((k, key), v)| (*k, key.clone(), v.clone()))
                .collect(),
        })
    }

    fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.lock()?.revision)
    }

    fn apply(&self, batch: Batch) -> Result<Revision, StoreError> {
        let mut g = self.lock()?;
        if let Some(expected) = batch.expect_revision {
            if expected != g.revision {
                return Err(StoreError::Conflict {
                    expected,
                    actual: g.revision,
                });
            }
        }
        let ops: Vec<Op> = batch.last_writes().into_iter().cloned().collect();
        for op in &ops {
            match op {
                Op::Put { kind, key, value } => {
                    g.data.insert((*kind, key.clone()), value.clone());
                }
                Op::Delete { kind, key } => {
                    g.data.remove(&(*kind, key.clone()));
                }
            }
        }
        g.revision += 1;
        let revision = g.revision;
        // Under the data lock, so that a watch starting now sees each batch
        // exactly once (from the history or as a new one).
        self.watchers.notify(WatchBatch { revision, ops });
        drop(g);
        Ok(revision)
    }

    fn watch(&self, after: Revision) -> Result<Watch, StoreError> {
        let g = self.lock()?;
        let w = self.watchers.subscribe(after, g.revision);
        drop(g);
        w
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn contract() {
        super::super::contract::run(&super::MemStore::new());
    }
}
