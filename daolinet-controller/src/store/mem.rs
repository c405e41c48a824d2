//! In-memory [`Store`] for tests and tools; nothing survives the process.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Batch, Op, Revision, Store, StoreError, Watch, WatchBatch, Watchers};
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

    fn list(&self, kind: Kind) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .lock()?
            .data
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|((_, key), v)| (key.clone(), v.clone()))
            .collect())
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
        for op in &batch.ops {
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
        drop(g);
        self.watchers.notify(&WatchBatch {
            revision,
            ops: batch.ops,
        });
        Ok(revision)
    }

    fn watch(&self) -> Result<Watch, StoreError> {
        Ok(self.watchers.subscribe())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn contract() {
        super::super::contract::run(&super::MemStore::new());
    }
}
