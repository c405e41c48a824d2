//! Cleanup of what the demo and the benchmarks create (namespaces, agents,
//! state directories, pinned maps), on every way out:
//!
//! - normal return or error: the [`Guard`] is dropped;
//! - Ctrl-C (SIGINT), SIGTERM, SIGHUP: a handler thread runs the same
//!   cleanup, then exits with status 130;
//! - a previous run that was killed outright (SIGKILL, machine reset):
//!   [`claim_tag`] sweeps its leftovers before a new run starts.
//!
//! Everything to remove is kept in one process-wide registry, so the
//! signal handler and the guard share it and whichever runs first does the
//! work (the other finds the registry empty).
//!
//! Each run owns a *tag* (`<prefix><pid % 10000>`), the prefix of all its
//! namespace names, and writes a marker file `MARKER_DIR/<tag>` with its
//! full pid. A tag whose marker names a dead process, or that has no
//! marker and no live owner (every process in its namespaces orphaned, or
//! none), is a leftover.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

/// Where runs record which process owns which tag.
const MARKER_DIR: &str = "/run/daolinet-xtask";

#[derive(Default)]
struct Registry {
    /// Agents (and other long-lived children), stopped first.
    children: Vec<Child>,
    /// Namespaces, deleted in reverse order after killing what runs in them.
    namespaces: Vec<String>,
    /// Files and directories to remove (state dirs, pin dirs, markers).
    paths: Vec<PathBuf>,
    /// bpffs mounts of this run ([`mount_bpffs`]), unmounted after the
    /// agents are stopped.
    mounts: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    children: Vec::new(),
    namespaces: Vec::new(),
    paths: Vec::new(),
    mounts: Vec::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    // A panic while holding the lock leaves valid data: keep going.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Set when a signal handler started cleaning up: the main thread must
/// not report success, nor blame the failures the cleanup causes.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// True once Ctrl-C (or SIGTERM/SIGHUP) was received.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Removes everything registered when dropped.
pub struct Guard(());

impl Drop for Guard {
    fn drop(&mut self) {
        if run_all() {
            eprintln!("    cleaned up namespaces, agents and pinned maps");
        }
    }
}

/// Install the SIGINT/SIGTERM/SIGHUP handler (once) and return a guard
/// that cleans up on drop.
pub fn guard() -> Result<Guard> {
    static ONCE: Once = Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        res = ctrlc::set_handler(|| {
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!("\n    interrupted: cleaning up");
            run_all();
            std::process::exit(130);
        })
        .context("installing the Ctrl-C handler");
    });
    res?;
    Ok(Guard(()))
}

/// Register a namespace for deletion.
pub fn add_namespace(name: &str) {
    registry().namespaces.push(name.to_string());
}

/// Register a child process to stop (SIGTERM, then SIGKILL) at cleanup.
pub fn add_child(child: Child) {
    registry().children.push(child);
}

/// Register a file or directory to remove at cleanup.
pub fn add_path(path: impl Into<PathBuf>) {
    registry().paths.push(path.into());
}

/// Delete namespace `name` now (killing what runs in it) and forget it.
pub fn remove_namespace(name: &str) {
    registry().namespaces.retain(|n| n != name);
    delete_namespace(name);
}

fn stop_child(mut c: Child) {
    // SAFETY: kill(2) on our own child, which has not been reaped yet.
    unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match c.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() > deadline => {
                let _ = c.kill();
                let _ = c.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Clean up everything registered; true when there was something.
fn run_all() -> bool {
    let mut reg = registry();
    let had = !reg.children.is_empty()
        || !reg.namespaces.is_empty()
        || !reg.paths.is_empty()
        || !reg.mounts.is_empty();
    for c in std::mem::take(&mut reg.children) {
        stop_child(c);
    }
    for n in std::mem::take(&mut reg.namespaces).iter().rev() {
        delete_namespace(n);
    }
    for m in std::mem::take(&mut reg.mounts) {
        unmount(&m);
    }
    for p in std::mem::take(&mut reg.paths) {
        remove_path(&p);
    }
    had
}

/// The bpffs a run with `tag` pins its agents' maps in.
pub fn bpffs_path(tag: &str) -> PathBuf {
    PathBuf::from(format!("/run/daolinet-{tag}-bpffs"))
}

/// Mount this run's own bpffs ([`bpffs_path`]) unless it is mounted
/// already; it is unmounted and removed at cleanup (and by the sweep of
/// [`claim_tag`] when the run was killed), so no run leaves a mount behind
/// and no two runs share pins.
pub fn mount_bpffs(tag: &str) -> Result<PathBuf> {
    let p = bpffs_path(tag);
    if is_mounted(&p) {
        return Ok(p);
    }
    std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
    // Registered first: a mount that half-worked is undone too.
    registry().mounts.push(p.clone());
    let st = Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(&p)
        .status()
        .context("running mount")?;
    if !st.success() {
        anyhow::bail!("mount -t bpf bpf {} failed ({st})", p.display());
    }
    Ok(p)
}

fn is_mounted(p: &Path) -> bool {
    let Some(p) = p.to_str() else { return false };
    std::fs::read_to_string("/proc/self/mounts")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(p)))
}

/// Unmount `p` if it is mounted, then remove the (empty) directory.
fn unmount(p: &Path) {
    if is_mounted(p) {
        let _ = Command::new("umount").arg(p).stderr(Stdio::null()).status();
    }
    if !is_mounted(p) {
        let _ = std::fs::remove_dir(p);
    }
}

fn remove_path(p: &Path) {
    if p.is_dir() {
        let _ = std::fs::remove_dir_all(p);
    } else {
        let _ = std::fs::remove_file(p);
    }
}

/// Processes running in namespace `ns`.
fn namespace_pids(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kill whatever still runs in `ns` (agents get SIGTERM first so they
/// detach cleanly), then delete it. `ip netns del` alone would leave the
/// processes running in an unnamed namespace.
fn delete_namespace(ns: &str) {
    let pids = namespace_pids(ns);
    for p in &pids {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(*p, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while !namespace_pids(ns).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in namespace_pids(ns) {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may contain spaces and ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The tag of namespace `ns` if it belongs to a run with `prefix`:
/// the prefix, then digits, then a suffix.
fn tag_of(ns: &str, prefix: &str) -> Option<String> {
    let rest = ns.strip_prefix(prefix)?;
    let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
    (digits > 0 && digits < rest.len()).then(|| ns[..prefix.len() + digits].to_string())
}

/// Remove the leftovers of earlier runs with `prefix` whose owner is gone,
/// then claim a fresh tag for this run (marker written, removed at
/// cleanup). State directories (`/tmp/<ns>-state`) of swept namespaces and
/// the swept runs' bpffs mounts ([`bpffs_path`]) go too.
pub fn claim_tag(prefix: &str) -> Result<String> {
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .context("ip netns list")?;
    let names: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    let mut tags: Vec<String> = names.iter().filter_map(|n| tag_of(n, prefix)).collect();
    // Markers of runs whose namespaces are already gone.
    if let Ok(dir) = std::fs::read_dir(MARKER_DIR) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) {
                tags.push(name);
            }
        }
    }
    tags.sort();
    tags.dedup();
    for tag in tags {
        let ours: Vec<&String> = names
            .iter()
            .filter(|n| tag_of(n, prefix).as_deref() == Some(tag.as_str()))
            .collect();
        let marker = Path::new(MARKER_DIR).join(&tag);
        let owner_alive = match std::fs::read_to_string(&marker) {
            Ok(s) => s.trim().parse::<i32>().map(alive).unwrap_or(false),
            // No marker (a run from before markers existed): it is alive
            // while something in its namespaces still has a live parent
            // other than init.
            Err(_) => ours.iter().any(|n| {
                namespace_pids(n)
                    .iter()
                    .any(|p| parent_of(*p).is_some_and(|pp| pp > 1 && alive(pp)))
            }),
        };
        if owner_alive {
            continue;
        }
        eprintln!("    removing leftovers of an interrupted run: {tag}*");
        for n in ours.iter().rev() {
            delete_namespace(n);
            let _ = std::fs::remove_dir_all(format!("/tmp/{n}-state"));
        }
        unmount(&bpffs_path(&tag));
        let _ = std::fs::remove_file(&marker);
    }
    let tag = format!("{prefix}{}", std::process::id() % 10000);
    std::fs::create_dir_all(MARKER_DIR).with_context(|| format!("creating {MARKER_DIR}"))?;
    let marker = Path::new(MARKER_DIR).join(&tag);
    std::fs::write(&marker, std::process::id().to_string())
        .with_context(|| format!("writing {}", marker.display()))?;
    add_path(marker);
    Ok(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_prefix_and_digits_followed_by_a_suffix() {
        assert_eq!(
            tag_of("dlbench12h1", "dlbench").as_deref(),
            Some("dlbench12")
        );
        assert_eq!(tag_of("dlbench7u", "dlbench").as_deref(), Some("dlbench7"));
        assert_eq!(tag_of("dlbench12", "dlbench"), None);
        assert_eq!(tag_of("dlbenchx1", "dlbench"), None);
        assert_eq!(tag_of("dldemo1h1", "dlbench"), None);
    }

    #[test]
    fn parent_of_this_process_is_known() {
        let me = std::process::id() as i32;
        assert!(parent_of(me).is_some_and(|p| p > 0));
        assert!(alive(me));
    }
}
