//! Privileged: the agent binary carries its BPF object. A copy of the
//! binary, run from another directory in a mount namespace where the
//! workspace (sources, `target/`) is hidden under an empty tmpfs and
//! without `--bpf-object` or `$DAOLINET_BPF_OBJECT`, loads its datapath
//! and attaches it to the uplink; given an interface that does not exist,
//! it fails on that interface.

#![allow(clippy::expect_used, clippy::panic)] // a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

use daolinet_testlab::{copy_executable, wait_poll, Lab, Need, Netns, Poll, Proc, Ran, DEADLINE};

/// The workspace root: hidden from the copied agent.
fn workspace() -> PathBuf {
    let agent_crate = Path::new(env!("CARGO_MANIFEST_DIR"));
    agent_crate.parent().unwrap_or(agent_crate).to_path_buf()
}

/// `sh -c SCRIPT` in network namespace `netns` and in a private mount
/// namespace where the workspace is an empty tmpfs; the script gets the
/// workspace as `$0` and `args` as `$@`, and runs in `dir`.
fn hidden(netns: &Netns, dir: &Path, script: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns.name()])
        .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(r#"mount -t tmpfs tmpfs "$0" && {script}"#))
        .arg(workspace())
        .args(args)
        .current_dir(dir)
        .env_remove(daolinet_agent::datapath::OBJECT_ENV)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    cmd
}

/// `./daolinet-agent --bpffs B --state-dir S ARGS` from `dir`, workspace
/// hidden.
fn copied_agent(netns: &Netns, dir: &Path, bpffs: &Path, args: &[&str]) -> Command {
    let (bpffs, state) = (bpffs.display().to_string(), dir.join("state"));
    let state = state.display().to_string();
    let mut all = vec!["--bpffs", &bpffs, "--state-dir", &state];
    all.extend_from_slice(args);
    hidden(netns, dir, r#"exec ./daolinet-agent "$@""#, &all)
}

/// Run `cmd` to the end; `what` names it in a failure.
fn output_of(cmd: &mut Command, what: &str) -> Ran {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn text(r: &Ran) -> String {
    format!("{}{}", r.stdout, r.stderr)
}

#[test]
fn a_copied_agent_loads_the_object_it_carries() {
    let Some(mut lab) = Lab::new(&[Need::Program("unshare")]) else {
        return;
    };
    let h = lab.netns("h");
    h.veth("up0", "up0p");
    let bpffs = lab.bpffs();
    let dir = lab.subdir("copied");
    copy_executable(
        Path::new(env!("CARGO_BIN_EXE_daolinet-agent")),
        &dir.join("daolinet-agent"),
    );

    // The hiding works: the workspace's manifest is not there for the agent.
    let probe = output_of(
        &mut hidden(&h, &dir, r#"ls -A "$0""#, &[]),
        "ls of the hidden workspace",
    );
    assert!(probe.ok, "{}", text(&probe));
    assert!(
        probe.stdout.trim().is_empty(),
        "workspace visible: {}",
        text(&probe)
    );

    // An interface that does not exist: the error is about it.
    let bad = output_of(
        &mut copied_agent(&h, &dir, bpffs.path(), &["run", "--uplink", "nosuch0"]),
        "the copied agent on a missing interface",
    );
    assert!(!bad.ok);
    assert!(
        bad.stderr.contains("no such interface: nosuch0"),
        "{}",
        text(&bad)
    );
    assert!(
        !bad.stderr.to_lowercase().contains("object"),
        "{}",
        text(&bad)
    );

    // A real one: the embedded object is loaded and the uplink attached.
    let log = dir.join("agent.log");
    let mut agent = Proc::spawn(
        &mut copied_agent(&h, &dir, bpffs.path(), &["run", "--uplink", "up0"]),
        "the copied agent",
        Some(&log),
    );
    let sock = dir.join("state/agent.sock");
    wait_poll("the copied agent's control socket", DEADLINE, || {
        if let Some(st) = agent.exited() {
            panic!("the copied agent exited with {st}:\n{}", agent.log_tail(30));
        }
        if sock.exists() {
            Poll::Ready(())
        } else {
            Poll::Pending(agent.log_tail(5))
        }
    });
    let ports = output_of(
        &mut copied_agent(&h, &dir, bpffs.path(), &["ports"]),
        "daolinet-agent ports",
    );
    assert!(ports.ok, "{}", text(&ports));
    assert!(ports.stdout.contains("\"up0\""), "{}", ports.stdout);
    assert!(ports.stdout.contains("\"uplink\""), "{}", ports.stdout);
    agent.stop();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(log.contains("datapath loaded"), "{log}");
    assert!(log.contains("object=embedded"), "{log}");
}
