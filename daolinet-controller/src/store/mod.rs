//! Persistence: a key-value [`Store`] trait, shaped after etcd (revisions,
//! atomic batches with an optional revision guard, a listing at one
//! revision and a watch from that revision on), with an embedded crash-safe
//! default ([`RedbStore`]), a shared one for several controllers
//! ([`EtcdStore`]) and an in-memory one for tests ([`MemStore`]).
//!
//! Objects are stored as JSON values under `(kind, key)`; [`load_model`],
//! [`model_of`] and [`batch_of`] translate between the store and the
//! [`Model`].
//!
//! Following a store without a gap: [`Store::list`] returns everything at
//! one revision `r`, and [`Store::watch`]`(r)` delivers every batch applied
//! after `r`, in order. Guarded batches ([`Batch::expect_revision`]) make
//! read-validate-write cycles safe between controllers: a batch computed
//! from the model at revision `r` is refused when any other batch was
//! applied after `r`.

mod etcd;
mod mem;
mod redb_store;

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc;
use std::sync::Mutex;

pub use etcd::{EtcdConfig, EtcdStore};
pub use mem::MemStore;
pub use redb_store::RedbStore;

use daolinet_policy::model::{Change, Kind, Model, Object};

/// A store revision: strictly increases with every applied batch (by one
/// in the embedded stores; etcd's revisions also count other writes, such
/// as the leader election's).
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
    /// A watch asked for batches the store no longer remembers.
    #[error("store history before revision {oldest} is gone (asked from {after})")]
    Compacted {
        /// The revision the watch was asked to follow.
        after: Revision,
        /// The oldest revision still known.
        oldest: Revision,
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

impl Op {
    /// The kind and key written.
    pub fn target(&self) -> (Kind, &str) {
        match self {
            Op::Put { kind, key, .. } | Op::Delete { kind, key } => (*kind, key),
        }
    }
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

impl Batch {
    /// The same writes with only the last one per (kind, key), in the order
    /// of those last writes: applying them gives the same result (etcd
    /// refuses a transaction that names a key twice).
    pub fn last_writes(&self) -> Vec<&Op> {
        let mut last: BTreeMap<(Kind, &str), usize> = BTreeMap::new();
        for (i, op) in self.ops.iter().enumerate() {
            last.insert(op.target(), i);
        }
        let mut keep: Vec<usize> = last.into_values().collect();
        keep.sort_unstable();
        keep.into_iter().filter_map(|i| self.ops.get(i)).collect()
    }
}

/// Everything in a store at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The revision the listing is consistent at: watch from here.
    pub revision: Revision,
    /// Every value, by kind then key.
    pub items: Vec<(Kind, String, Vec<u8>)>,
}

/// What a watcher receives for each applied batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    /// Revision after the batch.
    pub revision: Revision,
    /// The writes of the batch.
    pub ops: Vec<Op>,
}

/// A subscription to applied batches; dropping it unsubscribes. When the
/// channel disconnects (the store lost its connection, or its history) the
/// follower must list again and watch from the listing's revision.
#[derive(Debug)]
pub struct Watch {
    /// Receives every batch applied after the watch's start revision, in
    /// order.
    pub rx: mpsc::Receiver<WatchBatch>,
    /// Ends the backend's watch when dropped (etcd).
    _stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Watch {
    /// A watch fed by `rx`.
    pub fn new(rx: mpsc::Receiver<WatchBatch>) -> Self {
        Watch { rx, _stop: None }
    }

    fn with_stop(rx: mpsc::Receiver<WatchBatch>, stop: tokio::sync::oneshot::Sender<()>) -> Self {
        Watch {
            rx,
            _stop: Some(stop),
        }
    }
}

/// A key-value store with revisions, atomic batches and watches.
///
/// Implementations must make [`Store::apply`] durable before returning:
/// whatever it acknowledged survives a crash of the process.
pub trait Store: Send + Sync {
    /// Reads one value.
    fn get(&self, kind: Kind, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Lists every value at one revision.
    fn list(&self) -> Result<Listing, StoreError>;
    /// The current revision.
    fn revision(&self) -> Result<Revision, StoreError>;
    /// Applies a batch atomically and durably; returns the new revision.
    fn apply(&self, batch: Batch) -> Result<Revision, StoreError>;
    /// Subscribes to the batches applied after revision `after` (by this
    /// process or, for a shared backend, by any controller), in order.
    /// [`StoreError::Compacted`] when the store no longer knows them.
    fn watch(&self, after: Revision) -> Result<Watch, StoreError>;

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

/// How many applied batches the embedded stores remember for watches that
/// start in the past.
const HISTORY: usize = 1024;

#[derive(Debug, Default)]
struct WatchersInner {
    senders: Vec<mpsc::Sender<WatchBatch>>,
    history: VecDeque<WatchBatch>,
}

/// Fan-out of applied batches to watchers, with a short history so that a
/// watch can start at a listing's revision (shared by the embedded
/// implementations, whose batches all go through this process).
#[derive(Debug, Default)]
pub(crate) struct Watchers(Mutex<WatchersInner>);

impl Watchers {
    /// A watch of the batches after `after`; `current` is the store's
    /// revision, read under the same exclusion as [`Watchers::notify`] calls
    /// (see the callers).
    pub(crate) fn subscribe(
        &self,
        after: Revision,
        current: Revision,
    ) -> Result<Watch, StoreError> {
        let (tx, rx) = mpsc::channel();
        let mut g = self
            .0
            .lock()
            .map_err(|_| StoreError::Backend("watchers lock poisoned".into()))?;
        if after < current {
            let oldest = g.history.front().map_or(current + 1, |b| b.revision);
            // Batches are numbered one by one here: after + 1 must be kept.
            if oldest > after + 1 {
                return Err(StoreError::Compacted { after, oldest });
            }
            for b in g.history.iter().filter(|b| b.revision > after) {
                let _ = tx.send(b.clone());
            }
        }
        g.senders.push(tx);
        Ok(Watch::new(rx))
    }

    pub(crate) fn notify(&self, batch: WatchBatch) {
        if let Ok(mut g) = self.0.lock() {
            g.senders.retain(|tx| tx.send(batch.clone()).is_ok());
            if g.history.len() >= HISTORY {
                g.history.pop_front();
            }
            g.history.push_back(batch);
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

/// The model of a listing.
pub fn model_of(listing: &Listing) -> Result<Model, StoreError> {
    let mut m = Model::default();
    for (kind, key, value) in &listing.items {
        let o = Object::from_json(*kind, value).map_err(|e| StoreError::Corrupt {
            kind: kind.as_str(),
            key: key.clone(),
            why: e.to_string(),
        })?;
        m.apply(&Change::Put(o));
    }
    Ok(m)
}

/// Reads the whole model from a store, with the revision it is at.
pub fn load_model_at(store: &dyn Store) -> Result<(Model, Revision), StoreError> {
    let listing = store.list()?;
    Ok((model_of(&listing)?, listing.revision))
}

/// Reads the whole model from a store.
pub fn load_model(store: &dyn Store) -> Result<Model, StoreError> {
    Ok(load_model_at(store)?.0)
}

/// The model changes of a watched batch. A value that does not decode is
/// an error: the caller must not apply half a batch.
pub fn changes_of(ops: &[Op]) -> Result<Vec<Change>, StoreError> {
    ops.iter()
        .map(|op| match op {
            Op::Put { kind, key, value } => Object::from_json(*kind, value)
                .map(Change::Put)
                .map_err(|e| StoreError::Corrupt {
                    kind: kind.as_str(),
                    key: key.clone(),
                    why: e.to_string(),
                }),
            Op::Delete { kind, key } => Ok(Change::Delete(*kind, key.clone())),
        })
        .collect()
}

/// The changes that turn `old` into `new` (puts of new or different
/// objects, deletes of missing ones), for a follower that had to list the
/// store again.
pub fn diff(old: &Model, new: &Model) -> Vec<Change> {
    fn kind<T: Clone + PartialEq>(
        out: &mut Vec<Change>,
        k: Kind,
        old: &BTreeMap<String, T>,
        new: &BTreeMap<String, T>,
        wrap: impl Fn(T) -> Object,
    ) {
        for (key, v) in new {
            if old.get(key) != Some(v) {
                out.push(Change::Put(wrap(v.clone())));
            }
        }
        for key in old.keys() {
            if !new.contains_key(key) {
                out.push(Change::Delete(k, key.clone()));
            }
        }
    }
    let mut out = Vec::new();
    kind(&mut out, Kind::Host, &old.hosts, &new.hosts, Object::Host);
    kind(
        &mut out,
        Kind::Network,
        &old.networks,
        &new.networks,
        Object::Network,
    );
    kind(
        &mut out,
        Kind::Container,
        &old.containers,
        &new.containers,
        Object::Container,
    );
    kind(
        &mut out,
        Kind::Group,
        &old.groups,
        &new.groups,
        Object::Group,
    );
    kind(
        &mut out,
        Kind::Policy,
        &old.policies,
        &new.policies,
        Object::Policy,
    );
    kind(
        &mut out,
        Kind::Firewall,
        &old.firewalls,
        &new.firewalls,
        Object::Firewall,
    );
    if old.meta != new.meta {
        out.push(Change::Put(Object::Meta(new.meta.clone())));
    }
    out
}

#[cfg(test)]
#[path = "contract.rs"]
pub(crate) mod contract;
