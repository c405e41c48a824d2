//! Privileged: `daolinet-agent run` refuses, with one clear line and
//! nothing left behind, to start without the capabilities it needs, and to
//! take an interface another DaoliNet datapath already serves.
#![allow(clippy::panic, clippy::expect_used)] // a panic is a failed test

use daolinet_testlab::{copy_executable, Agent, Lab, Need};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_daolinet-agent");

/// Run `cmd`, killing it after 30 s (a refusal must be quick; an agent
/// that wrongly starts would run forever). Returns (success, stderr).
fn run_bounded(cmd: &mut Command) -> (bool, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "still running after 30 s (not refused): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run a second agent (its own state dir, hence its own pinned maps),
/// expected to be refused.
fn second_agent(agent: &Agent, args: &[&str]) -> (bool, String) {
    let mut full = vec!["run"];
    full.extend_from_slice(args);
    run_bounded(&mut agent.command(&full))
}

fn one_error_line(err: &str) {
    assert_eq!(
        err.lines().filter(|l| l.contains("error")).count(),
        1,
        "{err}"
    );
}

#[test]
fn a_port_served_by_another_agent_is_refused() {
    let Some(mut lab) = Lab::new(&[Need::BpfObject]) else {
        return;
    };
    let h = lab.netns("h");
    for (a, b) in [("up0", "up0p"), ("up1", "up1p"), ("c0", "c0p")] {
        h.veth(a, b);
    }
    // The first agent: XDP on the uplink, tcx on a container port.
    let mut first = lab.agent(
        &h,
        &["--uplink", "up0", "--uplink-mode", "xdp", "--port", "c0=1"],
    );

    // Its container port, taken by a second agent (tcx would let both run).
    let (ok, err) = second_agent(
        &lab.agent_stopped(&h, &[]),
        &["--uplink", "up1", "--port", "c0=1"],
    );
    assert!(!ok);
    assert!(
        err.contains("c0 is already served by another DaoliNet datapath"),
        "{err}"
    );
    assert!(err.contains("daolinet_tc"), "{err}");
    one_error_line(&err);

    // Its XDP uplink.
    let (ok, err) = second_agent(
        &lab.agent_stopped(&h, &[]),
        &["--uplink", "up0", "--uplink-mode", "xdp"],
    );
    assert!(!ok);
    assert!(err.contains("up0 already has an XDP program"), "{err}");
    one_error_line(&err);

    // The first agent still serves both of its ports.
    assert!(first.running(), "the first agent died");
    let ports = first.cli(&["ports"]);
    assert!(
        ports.contains("\"c0\"") && ports.contains("\"up0\""),
        "{ports}"
    );
}

#[test]
fn missing_privileges_get_one_clear_line() {
    let Some(lab) = Lab::new(&[Need::Program("setpriv")]) else {
        return;
    };
    // The agent binary copied where any user can run it (the build tree
    // may sit under a directory only root can enter). Copied by `cp`, not
    // by this process: a file this process had open for writing would be
    // inherited by a child another test thread forks meanwhile, and
    // running the copy would then fail with ETXTBSY until that child execs.
    let bin = lab.dir().join("daolinet-agent");
    copy_executable(Path::new(AGENT), &bin);
    let state = lab.dir().join("priv-state");
    let state = state.to_str().expect("UTF-8 path");
    let cases: [(&str, &[&str]); 2] = [
        (
            "uid 65534",
            &[
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ],
        ),
        (
            "uid 0",
            &[
                "--inh-caps=-all",
                "--bounding-set=-bpf,-net_admin,-sys_admin",
            ],
        ),
    ];
    for (who, setpriv) in cases {
        let (ok, err) = run_bounded(Command::new("setpriv").args(setpriv).arg(&bin).args([
            "--state-dir",
            state,
            "run",
            "--uplink",
            "lo",
        ]));
        assert!(!ok, "{who}: started without privileges");
        assert!(
            err.contains("needs CAP_BPF and CAP_NET_ADMIN (run it as root)"),
            "{who}: {err}"
        );
        assert!(
            err.contains(&format!("({who}) lacks CAP_BPF and CAP_NET_ADMIN")),
            "{who}: {err}"
        );
        one_error_line(&err);
        // Refused before touching anything.
        assert!(!Path::new(state).exists(), "{who}: state dir created");
    }
}
