//! Persistence: a key-value [`Store`] trait, shaped after etcd (revisions,
//! atomic batches with an optional revision guard, watches), with an embedded
//! crash-safe default ([`RedbStore`]) and an in-memory one for tests
//! ([`MemStore`]).
//!
//! Objects are stored as JSON values under `(kind, key)`; [`load_model`] and
//! [`batch_of`] translate between the store and the [`Model`].

mod mem;
mod redb_store;

use std::sync::mpsc;
use std::sync::Mutex;

pub use mem::MemStore;
pub use redb_store::RedbStore;

use daolinet_policy::model::{Change, Kind, Model, Object};

/// A store revision: increases by one with every applied batch.
pub type Revision = u64;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, corruption, lost connection ...).
    #[error("store backend: {0}")]
    Backend(String),
    /// The batch was guarded by a revision that is no longer current.
    #[error("store revision is {actual}, batch expected {expected}")]
    Conflict {
        /// What the batch expected.
        expected: Revision,
        /// The current revision.
        actual: Revision,
    },
    /// A stored value could not be decoded.
    #[error("stored {kind}/{key} is not valid: {why}")]
    Corrupt {
        /// Kind.
        kind: &'static str,
        /// Key.
        key: String,
        /// Decoder message.
        why: String,
    },
}

/// One write in a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create or replace.
    Put {
        /// Kind.
        kind: Kind,
        /// Key.
        key: String,
        /// JSON value.
        value: Vec<u8>,
    },
    /// Remove (absent keys are fine).
    Delete {
        /// Kind.
        kind: Kind,
        /// Key.
        key: String,
    },
}

/// Writes applied atomically: all or nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// When set, the batch fails with [`StoreError::Conflict`] unless the
    /// store is still at this revision (optimistic concurrency between
    /// several controllers sharing one store).
    pub expect_revision: Option<Revision>,
    /// The writes, in order.
    pub ops: Vec<Op>,
}

/// What a watcher receives for each applied batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    /// Revision after the batch.
    pub revision: Revision,
    /// The writes of the batch.
    pub ops: Vec<Op>,
}

/// A subscription to applied batches; dropping it unsubscribes.
#[derive(Debug)]
pub struct Watch {
    /// Receives every batch applied after the watch was created, in order.
    pub rx: mpsc::Receiver<WatchBatch>,
}

/// A key-value store with revisions, atomic batches and watches.
///
/// Implementations must make [`Store::apply`] durable before returning:
/// whatever it acknowledged survives a crash of the process.
pub trait Store: Send + Sync {
    /// Reads one value.
    fn get(&self, kind: Kind, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Lists all values of a kind, sorted by key.
    fn list(&self, kind: Kind) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// The current revision.
    fn revision(&self) -> Result<Revision, StoreError>;
    /// Applies a batch atomically and durably; returns the new revision.
    fn apply(&self, batch: Batch) -> Result<Revision, StoreError>;
    /// Subscribes to batches applied from now on (by this process or, for a
    /// shared backend, by any controller).
    fn watch(&self) -> Result<Watch, StoreError>;

    /// Writes one value.
    fn put(&self, kind: Kind, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        self.apply(Batch {
            expect_revision: None,
            ops: vec![Op::Put {
                kind,
                key: key.into(),
                value,
            }],
        })
    }

    /// Removes one value.
    fn delete(&self, kind: Kind, key: &str) -> Result<Revision, StoreError> {
        self.apply(Batch {
            expect_revision: None,
            ops: vec![Op::Delete {
                kind,
                key: key.into(),
            }],
        })
    }
}

/// Fan-out of applied batches to watchers (shared by the implementations).
#[derive(Debug, Default)]
pub(crate) struct Watchers(Mutex<Vec<mpsc::Sender<WatchBatch>>>);

impl Watchers {
    pub(crate) fn subscribe(&self) -> Watch {
        let (tx, rx) = mpsc::channel();
        if let Ok(mut v) = self.0.lock() {
            v.push(tx);
        }
        Watch { rx }
    }

    pub(crate) fn notify(&self, batch: &WatchBatch) {
        if let Ok(mut v) = self.0.lock() {
            v.retain(|tx| tx.send(batch.clone()).is_ok());
        }
    }
}

/// The batch that persists a list of model changes.
pub fn batch_of(changes: &[Change]) -> Result<Batch, StoreError> {
    let mut ops = Vec::with_capacity(changes.len());
    for c in changes {
        ops.push(match c {
            Change::Put(o) => Op::Put {
                kind: o.kind(),
                key: o.key(),
                value: o
                    .to_json()
                    .map_err(|e| StoreError::Backend(format!("encoding {}: {e}", o.key())))?,
            },
            Change::Delete(kind, key) => Op::Delete {
                kind: *kind,
                key: key.clone(),
            },
        });
    }
    Ok(Batch {
        expect_revision: None,
        ops,
    })
}

/// Reads the whole model from a store.
pub fn load_model(store: &dyn Store) -> Result<Model, StoreError> {
    let mut m = Model::default();
    for kind in Kind::ALL {
        for (key, value) in store.list(kind)? {
            let o = Object::from_json(kind, &value).map_err(|e| StoreError::Corrupt {
                kind: kind.as_str(),
                key: key.clone(),
                why: e.to_string(),
            })?;
            m.apply(&Change::Put(o));
        }
    }
    Ok(m)
}

#[cfg(test)]
pub(crate) mod contract {
    //! Behaviour every [`Store`] implementation must have.
    use super::*;

    pub(crate) fn run(store: &dyn Store) {
        let w = store.watch().unwrap();
        let r0 = store.revision().unwrap();
        assert_eq!(store.get(Kind::Host, "x").unwrap(), None);
        let r1 = store.put(Kind::Host, "x", b"1".to_vec()).unwrap();
        assert_eq!(r1, r0 + 1);
        store.put(Kind::Network, "x", b"2".to_vec()).unwrap();
        assert_eq!(store.get(Kind::Host, "x").unwrap(), Some(b"1".to_vec()));
        assert_eq!(
            store.list(Kind::Network).unwrap(),
            vec![("x".into(), b"2".to_vec())]
        );
        // A guarded batch with a stale revision changes nothing.
        let stale = Batch {
            expect_revision: Some(r0),
            ops: vec![Op::Delete {
                kind: Kind::Host,
                key: "x".into(),
            }],
        };
        assert!(matches!(
            store.apply(stale),
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(store.get(Kind::Host, "x").unwrap(), Some(b"1".to_vec()));
        let cur = store.revision().unwrap();
        let ok = Batch {
            expect_revision: Some(cur),
            ops: vec![
                Op::Delete {
                    kind: Kind::Host,
                    key: "x".into(),
                },
                Op::Put {
                    kind: Kind::Group,
                    key: "g".into(),
                    value: b"3".to_vec(),
                },
            ],
        };
        assert_eq!(store.apply(ok).unwrap(), cur + 1);
        assert_eq!(store.get(Kind::Host, "x").unwrap(), None);
        let got: Vec<WatchBatch> = w.rx.try_iter().collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[2].revision, cur + 1);
        assert_eq!(got[2].ops.len(), 2);
    }
}
