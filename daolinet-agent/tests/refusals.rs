//! Privileged: `daolinet-agent run` refuses, with one clear line and
//! nothing left behind, to start without the capabilities it needs, and to
//! take an interface another DaoliNet datapath already serves.
#![allow(clippy::panic, clippy::expect_used)] // a panic is a failed test

mod common;
use common::{root_or_skip, sh, Lab};
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

/// A second agent in namespace `ns` with its own state dir (hence its own
/// pinned maps), expected to be refused.
fn second_agent(ns: &str, args: &[&str]) -> (bool, String) {
    let state = format!("/tmp/{ns}-second");
    let r = run_bounded(
        Command::new("ip")
            .args(["netns", "exec", ns, AGENT])
            .args(["--bpffs", common::TEST_BPFFS, "--state-dir", &state, "run"])
            .args(args),
    );
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_dir_all(format!("{}/daolinet/tmp_{}_second", common::TEST_BPFFS, ns));
    r
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
    if !root_or_skip("a_port_served_by_another_agent_is_refused") {
        return;
    }
    let mut lab = Lab::new("busy");
    let h = lab.netns("h");
    for (a, b) in [("up0", "up0p"), ("up1", "up1p"), ("c0", "c0p")] {
        sh(&[
            "ip", "-n", &h, "link", "add", a, "type", "veth", "peer", "name", b,
        ]);
        sh(&["ip", "-n", &h, "link", "set", a, "up"]);
        sh(&["ip", "-n", &h, "link", "set", b, "up"]);
    }
    // The first agent: XDP on the uplink, tcx on a container port.
    lab.start_agent(
        &h,
        &["--uplink", "up0", "--uplink-mode", "xdp", "--port", "c0=1"],
    );

    // Its container port, taken by a second agent (tcx would let both run).
    let (ok, err) = second_agent(&h, &["--uplink", "up1", "--port", "c0=1"]);
    assert!(!ok);
    assert!(
        err.contains("c0 is already served by another DaoliNet datapath"),
        "{err}"
    );
    assert!(err.contains("daolinet_tc"), "{err}");
    one_error_line(&err);

    // Its XDP uplink.
    let (ok, err) = second_agent(&h, &["--uplink", "up0", "--uplink-mode", "xdp"]);
    assert!(!ok);
    assert!(err.contains("up0 already has an XDP program"), "{err}");
    one_error_line(&err);

    // The first agent still serves both of its ports.
    assert!(lab.agent_running(&h), "the first agent died");
    let ports = lab.agent_cmd(&h, &["ports"]);
    assert!(
        ports.contains("\"c0\"") && ports.contains("\"up0\""),
        "{ports}"
    );
}

/// The agent binary copied where any user can run it (the build tree may
/// sit under a directory only root can enter).
struct PublicCopy(std::path::PathBuf);

impl PublicCopy {
    fn new() -> PublicCopy {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::path::PathBuf::from(format!("/tmp/dl-priv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let bin = dir.join("daolinet-agent");
        std::fs::copy(AGENT, &bin).expect("copy agent");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        PublicCopy(dir)
    }

    fn bin(&self) -> std::path::PathBuf {
        self.0.join("daolinet-agent")
    }
}

impl Drop for PublicCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn missing_privileges_get_one_clear_line() {
    if !root_or_skip("missing_privileges_get_one_clear_line") {
        return;
    }
    let copy = PublicCopy::new();
    let state = format!("/tmp/dl-priv-state-{}", std::process::id());
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
        let (ok, err) = run_bounded(Command::new("setpriv").args(setpriv).arg(copy.bin()).args([
            "--state-dir",
            &state,
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
        assert!(!Path::new(&state).exists(), "{who}: state dir created");
    }
}
