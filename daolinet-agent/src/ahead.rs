//! Writing a run of flow additions to the classifier map on a thread of
//! its own while the flow table goes on with the next FLOW_MODs.
//!
//! A bulk install costs about as much in the kernel (the batched map
//! update, about 1.2 µs an entry) as in the flow table (about 0.9 µs a
//! FLOW_MOD); done one after the other, they cap the install rate. The
//! engine hands the additions of a run to [`Writer::submit`] in parts as
//! the table produces them, and waits for them all ([`Writer::settle`])
//! before the run is committed, so a run stays all or nothing: the first
//! failed part is reported there, the parts after it are not written, and
//! the run is taken back as when a synchronous write fails.
//!
//! The thread is started by the first part and exits after
//! [`IDLE`] without work: an idle agent keeps its single thread.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, Result};

/// A writer thread with no work exits after this long.
const IDLE: Duration = Duration::from_secs(1);

/// One batched update: `count` keys and values, packed.
#[derive(Debug, Default)]
pub struct Part {
    /// The keys, packed.
    pub keys: Vec<u8>,
    /// The values, packed.
    pub values: Vec<u8>,
    /// How many.
    pub count: u32,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Part>,
    /// Parts submitted and not yet written (or skipped).
    pending: usize,
    /// The first failure since the last settle; later parts are skipped.
    error: Option<anyhow::Error>,
    /// A thread is running (or about to) and will take what is queued.
    alive: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Signals both ways: a part queued, a part done, a thread gone.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in the writer cannot leave the state half-changed (it
        // is changed only under the lock, by simple assignments).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Batched writes to one map, done on a background thread in order.
#[derive(Debug, Default)]
pub struct Writer {
    shared: Arc<Shared>,
}

impl Writer {
    /// Queue a part for writing into the map `fd` (a descriptor of the
    /// map's own, used if a thread must be started). A thread that cannot
    /// be started is an error, and nothing is queued.
    pub fn submit(&mut self, part: Part, fd: impl FnOnce() -> Result<OwnedFd>) -> Result<()> {
        let mut st = self.shared.lock();
        if !st.alive {
            let fd = fd()?;
            let shared = self.shared.clone();
            std::thread::Builder::new()
                .name("dl-write".into())
                .spawn(move || run(&shared, &fd))
                .map_err(|e| anyhow!("starting the map writer thread: {e}"))?;
            st.alive = true;
        }
        st.queue.push_back(part);
        st.pending += 1;
        self.shared.changed.notify_all();
        Ok(())
    }

    /// True while submitted parts are not all written.
    pub fn busy(&self) -> bool {
        self.shared.lock().pending > 0
    }

    /// Wait until every submitted part is written (or skipped after a
    /// failure), keeping the failure for [`Writer::settle`].
    pub fn wait(&self) {
        let mut st = self.shared.lock();
        while st.pending > 0 {
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Wait until every submitted part is written; the first failure
    /// since the last settle, if any.
    pub fn settle(&self) -> Result<()> {
        self.wait();
        match self.shared.lock().error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The writer thread: parts in order until none comes for [`IDLE`].
fn run(shared: &Shared, fd: &OwnedFd) {
    let mut st = shared.lock();
    loop {
        let Some(part) = st.queue.pop_front() else {
            let (next, timeout) = shared
                .changed
                .wait_timeout(st, IDLE)
                .unwrap_or_else(|p| p.into_inner());
            st = next;
            if timeout.timed_out() && st.queue.is_empty() {
                st.alive = false;
                return;
            }
            continue;
        };
        let skip = st.error.is_some();
        drop(st);
        let r = if skip {
            Ok(())
        } else {
            crate::datapath::update_batch(fd.as_raw_fd(), &part.keys, &part.values, part.count)
        };
        drop(part);
        st = shared.lock();
        if let Err(e) = r {
            st.error.get_or_insert(e);
        }
        st.pending -= 1;
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor no map is behind: every write to it fails.
    fn not_a_map() -> Result<OwnedFd> {
        Ok(std::fs::File::open("/dev/null")?.into())
    }

    #[test]
    fn a_failure_is_reported_once_and_the_parts_after_it_are_skipped() {
        let mut w = Writer::default();
        for _ in 0..3 {
            let part = Part {
                keys: vec![0; 8],
                values: vec![0; 8],
                count: 1,
            };
            w.submit(part, not_a_map).unwrap();
        }
        assert!(w.settle().is_err());
        assert!(!w.busy());
        assert!(w.settle().is_ok());
    }

    #[test]
    fn the_thread_exits_when_idle_and_is_started_again() {
        let mut w = Writer::default();
        w.submit(Part::default(), not_a_map).unwrap();
        let _ = w.settle();
        // The thread goes once idle for IDLE (later on a loaded machine).
        let t0 = std::time::Instant::now();
        while w.shared.lock().alive {
            assert!(
                t0.elapsed() < IDLE * 30,
                "the idle writer thread did not exit"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        w.submit(Part::default(), not_a_map).unwrap();
        let _ = w.settle();
        assert!(w.shared.lock().alive);
    }
}
