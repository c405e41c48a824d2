//! Bad input to `daolinet-agent run`: one clear line, non-zero exit,
//! nothing attached or pinned.

#![allow(clippy::expect_used)] // test helpers: a failed expect is a failed test

mod common;
use common::{root_or_skip, sh, Lab};
use std::process::Command;

fn run_agent(ns: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_daolinet-agent")])
        .args([
            "--bpffs",
            common::TEST_BPFFS,
            "--state-dir",
            &format!("/tmp/{ns}-bad"),
        ])
        .arg("run")
        .args(args)
        .output()
        .expect("spawn agent");
    let _ = std::fs::remove_dir_all(format!("/tmp/{ns}-bad"));
    let _ = std::fs::remove_dir_all(common::pin_dir(std::path::Path::new(&format!(
        "/tmp/{ns}-bad"
    ))));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_input_gets_one_clear_line_and_nothing_is_left_attached() {
    if !root_or_skip("bad_input_gets_one_clear_line_and_nothing_is_left_attached") {
        return;
    }
    let mut lab = Lab::new("bad");
    let h = lab.netns("h");
    sh(&[
        "ip", "-n", &h, "link", "add", "up0", "type", "veth", "peer", "name", "up0p",
    ]);

    let (ok, err) = run_agent(&h, &["--uplink", "nosuch0"]);
    assert!(!ok);
    assert!(err.contains("no such interface: nosuch0"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("error")).count(),
        1,
        "{err}"
    );

    let (ok, err) = run_agent(&h, &["--uplink", "up0", "--port", "nosuch1=3"]);
    assert!(!ok);
    assert!(err.contains("no such interface: nosuch1"), "{err}");

    let (ok, err) = run_agent(&h, &["--uplink", "up0", "--port", "up0p=x"]);
    assert!(!ok);
    assert!(err.contains("bad OpenFlow port number"), "{err}");

    let (ok, err) = run_agent(
        &h,
        &[
            "--uplink",
            "up0",
            "--bpf-object",
            "/nonexistent/daolinet.bpf.o",
        ],
    );
    assert!(!ok);
    assert!(err.contains("cargo xtask build-ebpf --release"), "{err}");

    // Same port twice: refused before anything stays attached.
    let (ok, err) = run_agent(
        &h,
        &["--uplink", "up0", "--port", "up0p=1", "--port", "up0p=2"],
    );
    assert!(!ok);
    assert!(err.contains("already attached"), "{err}");

    // Nothing is left on the interfaces: no tcx/XDP program remains.
    let out = Command::new("ip")
        .args(["-n", &h, "-d", "link", "show", "up0"])
        .output()
        .expect("ip");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("xdp"), "{text}");
    let probe = Command::new("ip")
        .args([
            "netns", "exec", &h, "tc", "filter", "show", "dev", "up0", "ingress",
        ])
        .output()
        .expect("tc");
    assert!(String::from_utf8_lossy(&probe.stdout).trim().is_empty());
}
