//! The deferred-deletion queue: deregistrations a runtime asked for while
//! the agent (or the controller behind it) could not be reached. The CNI
//! plugin's DEL (and the Docker driver) remove what is local at once (the
//! veth) and leave one file per container in `<agent state dir>/del-queue/`;
//! the agent drains the queue when it starts, and again when asked, by
//! deleting each container from the controller, as Cilium's plugin does
//! with its own deletion queue.
//!
//! One file per container (`<id>.json`), written whole (temporary file,
//! then rename), so a reader never sees half an entry and queueing the same
//! container twice leaves one entry.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Directory of the queue inside an agent's state directory.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("del-queue")
}

/// One deferred deletion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deferred {
    /// The controller's container id to delete.
    pub container: String,
    /// Why it was deferred (for logs).
    pub reason: String,
    /// When it was queued (seconds since the Unix epoch).
    pub queued_unix: u64,
}

impl Deferred {
    /// An entry for `container`, queued now.
    pub fn now(container: &str, reason: &str) -> Deferred {
        Deferred {
            container: container.to_string(),
            reason: reason.to_string(),
            queued_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }
}

/// Whether `id` can name a queue file (the controller's id rules: letters,
/// digits, `-`, `_`, `.`; not starting with `.`).
fn file_safe(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Queue `entry` in `dir` (created if needed); the file written.
pub fn push(dir: &Path, entry: &Deferred) -> io::Result<PathBuf> {
    if !file_safe(&entry.container) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("container id {:?} cannot be queued", entry.container),
        ));
    }
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{}.json", entry.container));
    let tmp = dir.join(format!(".{}.tmp", entry.container));
    let body = serde_json::to_vec(entry).map_err(io::Error::other)?;
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Every entry in `dir` (none when it does not exist), oldest file name
/// order; an unreadable entry comes with why.
pub fn list(dir: &Path) -> Vec<(PathBuf, Result<Deferred, String>)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let r = std::fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()));
            (p, r)
        })
        .collect()
}

/// Remove a drained entry (gone already is fine).
pub fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_list_remove() {
        let d = std::env::temp_dir().join(format!("daolinet-queue-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        assert!(list(&d).is_empty());
        let a = Deferred::now("cni-00000000000000aa", "agent down");
        let p = push(&d, &a).unwrap();
        push(&d, &a).unwrap(); // twice: one entry
        push(&d, &Deferred::now("dk-1", "api down")).unwrap();
        std::fs::write(d.join("junk.json"), b"{").unwrap();
        let got = list(&d);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0].1.as_ref().unwrap(), &a);
        assert!(got[2].1.is_err());
        remove(&p).unwrap();
        remove(&p).unwrap();
        assert_eq!(list(&d).len(), 2);
        assert!(push(&d, &Deferred::now("../x", "")).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
