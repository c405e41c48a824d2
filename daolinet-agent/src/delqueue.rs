//! Draining the deferred-deletion queue (`<state-dir>/del-queue/`, format
//! in `daolinet_attach::queue`): containers a runtime removed while this
//! agent, or the controller behind it, could not be reached. The CNI
//! plugin's DEL removed the veth itself and left the deregistration here;
//! the agent deletes each container from the controller when it starts,
//! when asked (control socket `drain`), and again with backoff while
//! entries are left. A thread of its own does it (blocking HTTP), as the
//! registrar does; it waits on a channel, so an agent with nothing queued
//! does not wake up.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use anyhow::{Context, Result};
use daolinet_attach::api::Api;
use daolinet_attach::queue;
use daolinet_attach::Error as AttachError;

/// First retry delay while entries are left; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest retry delay.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Wakes the drainer thread; the thread ends when this is dropped.
#[derive(Debug, Clone)]
pub struct Drainer {
    tx: Sender<()>,
}

impl Drainer {
    /// Drain now (a new entry was queued).
    pub fn poke(&self) {
        let _ = self.tx.send(());
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Containers deleted from the controller (or already gone).
    pub done: usize,
    /// Entries left for a later pass (controller unreachable).
    pub left: usize,
    /// Entries dropped (unreadable, or refused for good).
    pub dropped: usize,
}

/// One pass over the queue in `dir` with the controller's `api`.
pub fn drain_once(dir: &Path, api: &Api) -> Pass {
    let mut pass = Pass::default();
    for (path, entry) in queue::list(dir) {
        let entry = match entry {
            Ok(e) => e,
            Err(why) => {
                tracing::warn!(file = %path.display(), "unreadable deferred deletion dropped: {why}");
                let _ = queue::remove(&path);
                pass.dropped += 1;
                continue;
            }
        };
        match api.delete_container(&entry.container) {
            Ok(existed) => {
                tracing::info!(
                    container = %entry.container,
                    existed,
                    queued_because = %entry.reason,
                    "deferred deletion done"
                );
                let _ = queue::remove(&path);
                pass.done += 1;
            }
            Err(e @ AttachError::ApiDown { .. }) => {
                tracing::debug!(container = %entry.container, "deferred deletion waits: {e}");
                pass.left += 1;
            }
            Err(AttachError::Api { status, .. }) if status >= 500 => pass.left += 1,
            Err(e) => {
                tracing::warn!(container = %entry.container, "deferred deletion refused, dropped: {e}");
                let _ = queue::remove(&path);
                pass.dropped += 1;
            }
        }
    }
    pass
}

/// The drainer thread, ready to start (see [`prepare`]).
#[derive(Debug)]
pub struct Pending {
    dir: PathBuf,
    api: Api,
    rx: Receiver<()>,
}

impl Pending {
    /// Start the thread. Start it after the event loop has blocked its
    /// signals (`runtime::EventLoop::new`), so that it inherits the mask
    /// and SIGTERM reaches the loop rather than killing the process here.
    pub fn spawn(self) -> Result<()> {
        let Pending { dir, api, rx } = self;
        std::thread::Builder::new()
            .name("del-queue".into())
            .spawn(move || run(dir, api, rx))
            .context("starting the deferred-deletion thread")?;
        Ok(())
    }
}

/// Prepare draining `<state_dir>/del-queue` against `api` (the
/// controller's API and token): the handle that wakes the drainer, and the
/// drainer to start. Without an API nothing drains (`None`s): what is
/// queued is reported.
pub fn prepare(state_dir: &Path, api: Option<Api>) -> (Option<Drainer>, Option<Pending>) {
    let dir = queue::dir(state_dir);
    let Some(api) = api else {
        let n = queue::list(&dir).len();
        if n > 0 {
            tracing::warn!(
                queue = %dir.display(),
                "{n} deferred container deletions wait: start the agent with --api to drain them"
            );
        }
        return (None, None);
    };
    let (tx, rx) = mpsc::channel();
    (Some(Drainer { tx }), Some(Pending { dir, api, rx }))
}

fn run(dir: PathBuf, api: Api, rx: Receiver<()>) {
    let mut retry = FIRST_RETRY;
    loop {
        let pass = drain_once(&dir, &api);
        let woken = if pass.left > 0 {
            let r = rx.recv_timeout(retry);
            retry = (retry * 2).min(MAX_RETRY);
            !matches!(r, Err(RecvTimeoutError::Disconnected))
        } else {
            retry = FIRST_RETRY;
            rx.recv().is_ok()
        };
        if !woken {
            return;
        }
    }
}
