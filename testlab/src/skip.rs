//! The one skip rule of the workspace's privileged tests.
//!
//! A privileged test starts with [`require`] (or [`crate::Lab::new`], which
//! calls it) and the things it needs:
//!
//! - under `CI=true` a test that cannot run **fails**, with the reason;
//! - elsewhere it is skipped, and when the test binary exits one summary
//!   line goes to the real stderr, e.g.
//!   `*** 9 privileged tests skipped in openflow: not root ... ***`.
//!
//! The summary is written with `write(2)` from an `atexit` handler: libtest
//! captures `eprintln!` of passing tests, so a line printed from the test
//! itself would never be seen.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

/// Something a privileged test needs in order to run.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// Effective uid 0 (namespaces, BPF, mounts).
    Root,
    /// A program on `PATH` (`ovs-vswitchd`, `iperf3`, `etcd`, `dockerd`...).
    Program(&'static str),
    /// The BPF datapath object the agents load: the one built into the
    /// agent binary, or the file `$DAOLINET_BPF_OBJECT` names ([`bpf_object`]),
    /// which must then exist.
    BpfObject,
    /// A binary of this workspace built next to the test
    /// ([`crate::workspace_bin`]), e.g. `daolinet-controller`.
    Binary(&'static str),
}

impl Need {
    /// Why the need is not met, or `None` when it is.
    pub fn unmet(&self) -> Option<String> {
        match *self {
            Need::Root => (!is_root()).then(|| "not root".to_string()),
            Need::Program(p) => {
                (!on_path(p)).then(|| format!("{p} not installed (run `cargo xtask setup`)"))
            }
            Need::BpfObject => bpf_object().filter(|obj| !obj.is_file()).map(|obj| {
                format!(
                    "{OBJECT_ENV}={} is not a file (unset it to use the object built into \
                     the agent, or run `cargo xtask build-ebpf --release`)",
                    obj.display()
                )
            }),
            Need::Binary(b) => {
                let p = crate::workspace_bin(b);
                (!p.is_file()).then(|| {
                    format!(
                        "{} not built (run `cargo build --workspace` or `cargo xtask test`)",
                        p.display()
                    )
                })
            }
        }
    }
}

/// Proof that [`require`] found every need met: the test may run.
#[derive(Debug)]
pub struct Ready(());

/// Check `needs` in order. All met: `Some(Ready)`, the test runs. One
/// unmet: under `CI=true` the test panics with the reason; otherwise the
/// skip is recorded for the exit summary and `None` is returned, and the
/// test must return:
///
/// ```no_run
/// use daolinet_testlab::{require, Need};
/// let Some(_ready) = require(&[Need::Root, Need::BpfObject]) else { return };
/// ```
#[track_caller]
pub fn require(needs: &[Need]) -> Option<Ready> {
    let Some(reason) = needs.iter().find_map(Need::unmet) else {
        return Some(Ready(()));
    };
    let test = current_test();
    if under_ci() {
        panic!("{test}: this privileged test cannot run under CI=true: {reason}");
    }
    record_skip(test, reason);
    None
}

/// True when `CI` is set to anything but empty, `0` or `false`: privileged
/// tests that cannot run then fail instead of being skipped.
pub fn under_ci() -> bool {
    std::env::var("CI")
        .map(|v| {
            let v = v.trim().to_ascii_lowercase();
            !(v.is_empty() || v == "0" || v == "false")
        })
        .unwrap_or(false)
}

/// True when the effective uid is 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// True when `program` is an executable file on `PATH` (or a path to one).
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let exec = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        return exec(Path::new(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    // Root's usual sbin directories too: `ovs-vswitchd` lives there and a
    // non-root PATH often lacks them.
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .any(|d| exec(&d.join(program)))
}

/// Environment variable naming a BPF datapath object that agents load
/// instead of the one built into them.
pub const OBJECT_ENV: &str = "DAOLINET_BPF_OBJECT";

/// The BPF object file that replaces the agent's built-in one:
/// `$DAOLINET_BPF_OBJECT` when set (agents started by the lab inherit it),
/// `None` when the agents load the object they carry.
pub fn bpf_object() -> Option<PathBuf> {
    std::env::var_os(OBJECT_ENV).map(PathBuf::from)
}

/// The running test's name: libtest names each test's thread after it.
fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string()
}

/// (test, reason) of every skip in this test binary.
static SKIPS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
static AT_EXIT: Once = Once::new();

fn record_skip(test: String, reason: String) {
    SKIPS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push((test, reason));
    AT_EXIT.call_once(|| {
        // SAFETY: registering a plain `extern "C" fn()` with atexit(3).
        unsafe { libc::atexit(print_summary) };
    });
}

/// The summary line for `skips` in test binary `binary`.
pub fn summary_line(binary: &str, skips: &[(String, String)]) -> Option<String> {
    if skips.is_empty() {
        return None;
    }
    // Reasons in order of first appearance, with their counts.
    let mut reasons: Vec<(&str, usize)> = Vec::new();
    for (_, r) in skips {
        match reasons.iter_mut().find(|(x, _)| x == r) {
            Some(e) => e.1 += 1,
            None => reasons.push((r, 1)),
        }
    }
    let n = skips.len();
    let what = if n == 1 { "test" } else { "tests" };
    let why = if reasons.len() == 1 {
        reasons[0].0.to_string()
    } else {
        reasons
            .iter()
            .map(|(r, k)| format!("{k} {r}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    Some(format!(
        "*** {n} privileged {what} skipped in {binary}: {why} (they did not run; \
         under CI=true they fail) ***"
    ))
}

/// The test binary's name without cargo's hash suffix.
fn binary_name() -> String {
    let exe = std::env::current_exe().ok();
    let stem = exe
        .as_deref()
        .and_then(Path::file_stem)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "this test binary".into());
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            name.to_string()
        }
        _ => stem,
    }
}

extern "C" fn print_summary() {
    let skips = SKIPS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(line) = summary_line(&binary_name(), &skips) {
        let line = format!("\n{line}\n");
        // Straight to fd 2: nothing of libtest's capturing applies here.
        // SAFETY: writing a valid buffer to stderr.
        unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: &str, r: &str) -> (String, String) {
        (t.into(), r.into())
    }

    #[test]
    fn one_line_counts_tests_per_reason() {
        assert_eq!(summary_line("x", &[]), None);
        assert_eq!(
            summary_line("openflow", &[s("a", "not root"), s("b", "not root")]).as_deref(),
            Some(
                "*** 2 privileged tests skipped in openflow: not root (they did not run; \
                 under CI=true they fail) ***"
            )
        );
        let line = summary_line(
            "ovs",
            &[
                s("a", "not root"),
                s("b", "ovs-vswitchd not installed"),
                s("c", "not root"),
            ],
        )
        .unwrap_or_default();
        assert!(
            line.contains("3 privileged tests skipped in ovs: 2 not root; 1 ovs-vswitchd"),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn needs_report_what_is_missing() {
        let why = Need::Program("no-such-program-dl")
            .unmet()
            .unwrap_or_default();
        assert!(why.contains("no-such-program-dl not installed"), "{why}");
        assert!(Need::Program("sh").unmet().is_none());
        assert_eq!(Need::Root.unmet().is_none(), is_root());
        let why = Need::Binary("no-such-binary-dl")
            .unmet()
            .unwrap_or_default();
        assert!(why.contains("not built"), "{why}");
    }
}
