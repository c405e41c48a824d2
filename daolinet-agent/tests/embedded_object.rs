//! Privileged: the agent binary carries its BPF object. A copy of the
//! binary, run from another directory in a mount namespace where the
//! workspace (sources, `target/`) is hidden under an empty tmpfs and
//! without `--bpf-object` or `$DAOLINET_BPF_OBJECT`, loads its datapath
//! and attaches it to the uplink; given an interface that does not exist,
//! it fails on that interface.

#![allow(clippy::expect_used, clippy::panic)] // a panic is a failed test

mod common;
use common::{root_or_skip, sh, Lab};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A private directory for the copied binary and its state, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(common::pin_dir(&self.0.join("state")));
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The workspace root: hidden from the copied agent.
fn workspace() -> PathBuf {
    let agent_crate = Path::new(env!("CARGO_MANIFEST_DIR"));
    agent_crate.parent().unwrap_or(agent_crate).to_path_buf()
}

/// `daolinet-agent ARGS` run as `dir/daolinet-agent` from `dir`, in network
/// namespace `netns` and in a private mount namespace where the workspace
/// is an empty tmpfs.
fn copied_agent(netns: &str, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        netns,
        "unshare",
        "--mount",
        "--propagation",
    ])
    .args(["private", "sh", "-c"])
    .arg(r#"mount -t tmpfs tmpfs "$0" && exec ./daolinet-agent "$@""#)
    .arg(workspace())
    .args(["--bpffs", common::TEST_BPFFS, "--state-dir"])
    .arg(dir.join("state"))
    .args(args)
    .current_dir(dir)
    .env_remove(daolinet_agent::datapath::OBJECT_ENV)
    .env("RUST_LOG", "info")
    .env("NO_COLOR", "1");
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_copied_agent_loads_the_object_it_carries() {
    if !root_or_skip("a_copied_agent_loads_the_object_it_carries") {
        return;
    }
    let mut lab = Lab::new("alcp");
    let h = lab.netns("h");
    sh(&[
        "ip", "-n", &h, "link", "add", "up0", "type", "veth", "peer", "name", "up0p",
    ]);
    sh(&["ip", "-n", &h, "link", "set", "up0", "up"]);
    sh(&["ip", "-n", &h, "link", "set", "up0p", "up"]);
    common::ensure_test_bpffs();

    let tmp = TempDir(std::env::temp_dir().join(format!("al-copied-agent-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&tmp.0);
    std::fs::create_dir_all(&tmp.0).expect("temp dir");
    std::fs::copy(
        env!("CARGO_BIN_EXE_daolinet-agent"),
        tmp.0.join("daolinet-agent"),
    )
    .expect("copying the agent");

    // The hiding works: the workspace's manifest is not there for the agent.
    let probe = Command::new("ip")
        .args(["netns", "exec", &h, "unshare", "--mount", "--propagation"])
        .args(["private", "sh", "-c"])
        .arg(r#"mount -t tmpfs tmpfs "$0" && ls -A "$0""#)
        .arg(workspace())
        .output()
        .expect("probe");
    assert!(probe.status.success(), "{}", text(&probe));
    assert!(
        probe.stdout.is_empty(),
        "workspace visible: {}",
        text(&probe)
    );

    // An interface that does not exist: the error is about it.
    let out = copied_agent(&h, &tmp.0, &["run", "--uplink", "al-nosuch0"])
        .output()
        .expect("copied agent");
    assert!(!out.status.success());
    let err = text(&out);
    assert!(err.contains("no such interface: al-nosuch0"), "{err}");
    assert!(!err.to_lowercase().contains("object"), "{err}");

    // A real one: the embedded object is loaded and the uplink attached.
    let log = tmp.0.join("agent.log");
    let mut agent = copied_agent(&h, &tmp.0, &["run", "--uplink", "up0"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("starting the copied agent");
    let sock = tmp.0.join("state/agent.sock");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sock.exists() {
        if let Ok(Some(st)) = agent.try_wait() {
            panic!(
                "the copied agent exited with {st}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "the copied agent did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ports = copied_agent(&h, &tmp.0, &["ports"])
        .output()
        .expect("ports");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let st = agent.wait().expect("waiting for the agent");
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(ports.status.success(), "{}", text(&ports));
    let ports = String::from_utf8_lossy(&ports.stdout);
    assert!(ports.contains("\"up0\""), "{ports}");
    assert!(ports.contains("\"uplink\""), "{ports}");
    assert!(log.contains("datapath loaded"), "{log}");
    assert!(log.contains("object=embedded"), "{log}");
    assert!(st.success(), "agent exited with {st}: {log}");
}
