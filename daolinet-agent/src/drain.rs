//! Removing classifier entries that no packet reaches any more
//! ([`MapOp::DrainFlows`](crate::table::MapOp::DrainFlows)) after the
//! change that unlinked their subtable is acknowledged.
//!
//! A bulk delete that empties a subtable first rewrites its table's
//! subtable list without it: from then on the datapath walks past its
//! entries, so the delete is complete for every packet when the list is
//! written, and the BARRIER_REPLY may go. The entries themselves (most of
//! the kernel's work of such a delete, about 0.9 µs each) are then removed
//! by a thread of their own, one per change, which exits when it is done:
//! an idle agent keeps its single thread. (A few hundred are removed at
//! once instead, right after the change's writes.)
//!
//! What keeps this exact: subtable ids are not used again (the datapath
//! waits for the removal of a subtable's old entries before it writes an
//! entry with that id, see [`Drains::pending`]); a map that has no room
//! for a new entry while old ones are being removed waits for them
//! ([`Drains::busy`]); a stop waits for the removals, and entries an agent
//! killed before it was done left behind are removed when the next one
//! starts (their subtables are in no list).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Result;
use daolinet_common::{FlowMapKey, WideMapKey};

use crate::table::{Drained, Removed};

/// Keys per `BPF_MAP_DELETE_BATCH` call of a drain.
const CHUNK: usize = 8192;

/// Fewer keys than this are deleted at once, by the caller, after the
/// change's writes (a thread costs more than deleting them).
const THREAD_MIN: usize = 512;

/// The classifier maps' descriptors (compact, wide), for one drain.
pub type Fds = (OwnedFd, OwnedFd);

/// The keys of entries to remove: listed, or to be made from removed
/// rules (which are freed here, with the last reference).
#[derive(Debug, Default)]
struct Keys {
    narrow: Vec<FlowMapKey>,
    wide: Vec<WideMapKey>,
    removed: Vec<Arc<Removed>>,
}

impl Keys {
    fn len(&self) -> usize {
        self.narrow.len() + self.wide.len() + self.removed.iter().map(|r| r.len()).sum::<usize>()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Delete them all; the first error is returned after trying the rest.
    fn delete(&self, fds: &Fds) -> Result<()> {
        let mut r = delete_keys(fds, &self.narrow, &self.wide);
        for removed in &self.removed {
            // The compact keys made and deleted a chunk at a time.
            let (narrow_fd, wide_fd) = fds;
            let key_size = size_of::<FlowMapKey>();
            let mut n: Vec<FlowMapKey> = Vec::with_capacity(CHUNK.min(removed.len()));
            let mut w: Vec<WideMapKey> = Vec::new();
            let mut rn = Ok(());
            removed.keys_into(
                |k| {
                    n.push(k);
                    if n.len() >= CHUNK {
                        let done = delete_all(narrow_fd, bytemuck::cast_slice(&n), key_size);
                        rn = std::mem::replace(&mut rn, Ok(())).and(done);
                        n.clear();
                    }
                },
                |k| w.push(k),
            );
            let done = delete_all(narrow_fd, bytemuck::cast_slice(&n), key_size);
            let wd = delete_all(wide_fd, bytemuck::cast_slice(&w), size_of::<WideMapKey>());
            r = r.and(rn).and(done).and(wd);
        }
        r
    }
}

/// Delete the entries of these keys; the first error is returned after
/// trying the rest.
fn delete_keys((narrow, wide): &Fds, n: &[FlowMapKey], w: &[WideMapKey]) -> Result<()> {
    let a = delete_all(narrow, bytemuck::cast_slice(n), size_of::<FlowMapKey>());
    let b = delete_all(wide, bytemuck::cast_slice(w), size_of::<WideMapKey>());
    a.and(b)
}

fn delete_all(fd: &OwnedFd, keys: &[u8], key_size: usize) -> Result<()> {
    for chunk in keys.chunks(CHUNK * key_size) {
        let n = (chunk.len() / key_size) as u32;
        crate::datapath::delete_batch(fd.as_raw_fd(), chunk, key_size, n)?;
    }
    Ok(())
}

/// A drain in progress: its subtables (sorted) and its thread.
#[derive(Debug)]
struct Job {
    subs: Vec<u32>,
    thread: JoinHandle<()>,
}

/// The entries waiting to be removed: those collected from the operations
/// being applied, and the drains in progress.
#[derive(Debug, Default)]
pub struct Drains {
    collected: Keys,
    /// Subtables of the collected keys.
    subs: Vec<u32>,
    jobs: Vec<Job>,
    /// Collected keys wait (tests: a drain that has not run yet).
    held: bool,
}

impl Drains {
    /// Collect entries to remove (removed rules by reference: their
    /// keys are made where they are deleted).
    pub fn add(&mut self, d: &Drained) {
        self.collected.narrow.extend_from_slice(&d.narrow);
        self.collected.wide.extend_from_slice(&d.wide);
        self.collected.removed.extend(d.removed.iter().cloned());
        for sub in &d.subtables {
            if !self.subs.contains(sub) {
                self.subs.push(*sub);
            }
        }
    }

    /// True when entries of subtable `sub` that an earlier change drained
    /// are still to be removed: no entry with that subtable id may be
    /// written before they are. (Within one change a subtable's entries
    /// may be written and then drained, e.g. a rule taking over the entry
    /// of a removed one before it is removed too: the collected keys are
    /// removed after the change's writes, see [`Drains::start`].)
    pub fn pending(&self, sub: u32) -> bool {
        self.jobs.iter().any(|j| j.subs.binary_search(&sub).is_ok())
    }

    /// Number of collected keys.
    pub fn len(&self) -> usize {
        self.collected.len()
    }

    /// True when no key is collected.
    pub fn is_empty(&self) -> bool {
        self.collected.is_empty()
    }

    /// True when entries are still to be removed.
    pub fn busy(&self) -> bool {
        !self.collected.is_empty() || !self.jobs.is_empty()
    }

    /// Forget the drains that are done.
    pub fn reap(&mut self) {
        if self.jobs.iter().any(|j| j.thread.is_finished()) {
            let (done, running): (Vec<Job>, Vec<Job>) = std::mem::take(&mut self.jobs)
                .into_iter()
                .partition(|j| j.thread.is_finished());
            self.jobs = running;
            for j in done {
                let _ = j.thread.join();
            }
        }
    }

    /// True when collected keys wait for a thread (and are not held).
    pub fn ready(&self) -> bool {
        !self.held && !self.collected.is_empty()
    }

    /// Hand the collected keys to a thread of their own, which removes
    /// them through `fds`; a few are removed here and now.
    pub fn start(&mut self, fds: Fds) -> Result<()> {
        let keys = std::mem::take(&mut self.collected);
        let mut subs = std::mem::take(&mut self.subs);
        let n = keys.len();
        if n < THREAD_MIN {
            return keys.delete(&fds);
        }
        subs.sort_unstable();
        // The thread gets the keys through a channel once it exists, so
        // that it alone frees them (and then trims the heap: the event
        // loop's trim for this change ran before they were freed, and an
        // idle agent would keep them, 36 MiB resident after 1M flows came
        // and went instead of 17 MiB); without a thread they stay here.
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Keys, Fds)>(1);
        let spawned = std::thread::Builder::new()
            .name("flow-drain".into())
            .spawn(move || {
                let Ok((keys, fds)) = rx.recv() else {
                    return;
                };
                let started = std::time::Instant::now();
                match keys.delete(&fds) {
                    Ok(()) => tracing::debug!(
                        entries = n,
                        took_ms = started.elapsed().as_millis() as u64,
                        "entries of removed subtables deleted"
                    ),
                    Err(e) => tracing::warn!(
                        entries = n,
                        "deleting the entries of removed subtables: {e:#} \
                         (those left are removed when the agent starts again)"
                    ),
                }
                drop(keys);
                crate::heap::give_back_memory();
            });
        match spawned {
            Ok(thread) => {
                self.jobs.push(Job { subs, thread });
                match tx.send((keys, fds)) {
                    Ok(()) => Ok(()),
                    // The thread is gone already (it cannot be, short of a
                    // panic): removed here.
                    Err(std::sync::mpsc::SendError((keys, fds))) => keys.delete(&fds),
                }
            }
            // No thread: removed here.
            Err(e) => {
                tracing::debug!("no drain thread ({e}): deleting {n} entries now");
                keys.delete(&fds)
            }
        }
    }

    /// Remove everything still to be removed before returning: the
    /// collected keys here (even when held), then wait for the drains in
    /// progress.
    pub fn finish(&mut self, fds: Option<Fds>) -> Result<()> {
        let keys = std::mem::take(&mut self.collected);
        self.subs.clear();
        let r = match fds {
            Some(fds) if !keys.is_empty() => keys.delete(&fds),
            _ => Ok(()),
        };
        for j in self.jobs.drain(..) {
            let _ = j.thread.join();
        }
        r
    }

    /// Keep collected keys (or not) until released: a drain that has not
    /// run yet, for tests.
    pub fn hold(&mut self, held: bool) {
        self.held = held;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::EntryKey;
    use daolinet_common::FlowKey;

    fn narrow(sub: u32) -> EntryKey {
        EntryKey::Narrow(FlowMapKey {
            subtable: sub,
            key: FlowKey::default(),
        })
    }

    #[test]
    fn collected_keys_are_kept_by_subtable_until_finished() {
        let mut d = Drains::default();
        assert!(!d.busy() && !d.pending(3));
        let mut a = Drained::default();
        for sub in [3, 3, 5, 3] {
            a.push(narrow(sub));
        }
        assert_eq!(a.subtables, [3, 5]);
        d.add(&a);
        d.add(&a);
        assert_eq!(d.subs, [3, 5]);
        assert_eq!(d.len(), 8, "one key each");
        // Collected in this change: its own writes may name them.
        assert!(d.busy() && !d.pending(3));
        d.hold(true);
        assert!(!d.ready());
        d.hold(false);
        assert!(d.ready());
        // Without descriptors (no map) the keys are dropped, not kept.
        d.finish(None).unwrap();
        assert!(!d.busy() && !d.pending(3));
    }
}
