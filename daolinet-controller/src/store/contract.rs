//! Behaviour every [`Store`] implementation must have. The embedded stores
//! run it as unit tests; the etcd store runs it against a real cluster in
//! `tests/etcd.rs`, which includes this file (so the store's items are
//! named through `crate::store`, which that test re-exports).

#![allow(clippy::unwrap_used, clippy::panic)]

use crate::store::{Batch, Op, Store, StoreError, WatchBatch};
use daolinet_policy::model::Kind;

pub(crate) fn run(store: &dyn Store) {
    let r0 = store.revision().unwrap();
    let w = store.watch(r0).unwrap();
    assert_eq!(store.get(Kind::Host, "x").unwrap(), None);
    let r1 = store.put(Kind::Host, "x", b"1".to_vec()).unwrap();
    assert!(r1 > r0);
    let r2 = store.put(Kind::Network, "x", b"2".to_vec()).unwrap();
    assert!(r2 > r1);
    assert_eq!(store.get(Kind::Host, "x").unwrap(), Some(b"1".to_vec()));
    let l = store.list().unwrap();
    assert_eq!(l.revision, r2);
    assert_eq!(
        l.items,
        vec![
            (Kind::Host, "x".into(), b"1".to_vec()),
            (Kind::Network, "x".into(), b"2".to_vec())
        ]
    );
    // A guarded batch with a stale revision changes nothing.
    let stale = Batch {
        expect_revision: Some(r1),
        ops: vec![Op::Delete {
            kind: Kind::Host,
            key: "x".into(),
        }],
    };
    assert!(matches!(
        store.apply(stale),
        Err(StoreError::Conflict { expected, actual }) if expected == r1 && actual == r2
    ));
    assert_eq!(store.get(Kind::Host, "x").unwrap(), Some(b"1".to_vec()));
    let cur = store.revision().unwrap();
    assert_eq!(cur, r2);
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
            // The same key twice: the last write wins.
            Op::Put {
                kind: Kind::Group,
                key: "g".into(),
                value: b"4".to_vec(),
            },
        ],
    };
    let r3 = store.apply(ok).unwrap();
    assert!(r3 > cur);
    assert_eq!(store.get(Kind::Host, "x").unwrap(), None);
    assert_eq!(store.get(Kind::Group, "g").unwrap(), Some(b"4".to_vec()));
    let timeout = std::time::Duration::from_secs(10);
    let got: Vec<WatchBatch> = (0..3)
        .map(|_| w.rx.recv_timeout(timeout).unwrap())
        .collect();
    assert_eq!(
        got.iter().map(|b| b.revision).collect::<Vec<_>>(),
        vec![r1, r2, r3]
    );
    assert_eq!(got[2].ops.len(), 2, "{:?}", got[2]);
    // A watch from a listing's revision misses nothing after it.
    let w2 = store.watch(r1).unwrap();
    let again: Vec<WatchBatch> = (0..2)
        .map(|_| w2.rx.recv_timeout(timeout).unwrap())
        .collect();
    assert_eq!(again, got[1..].to_vec());
    assert!(w.rx.try_recv().is_err());
}
