//! `cargo xtask bench attach`: the time from `docker run -d` / `podman run
//! -d` to a container's first echo reply from a peer on its network, one
//! container alone and N in a row (containers/s, p99), for Docker with the
//! `daolinet` driver and podman with `daolinet-cni`, side by side with
//! Docker's own bridge driver (same dockerd) and podman's CNI bridge in one
//! run, rounds alternating. The measurement is the example
//! `daolinet-docker/examples/attach_bench.rs` (on the test lab of the
//! runtime tests); this builds it and the daemons in release, runs it and
//! records the section it prints (`attach` in BENCHMARKS.md).

use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::util::{cargo, have, run as sh, step, workspace_root};

/// Build, run, record.
pub fn run(setup: bool) -> Result<()> {
    if setup {
        crate::setup::run()?;
    }
    if !crate::util::is_root() {
        bail!("bench attach needs root (namespaces, BPF, dockerd, podman)");
    }
    let missing: Vec<&str> = [
        "dockerd",
        "docker",
        "containerd",
        "runc",
        "podman",
        "conmon",
    ]
    .into_iter()
    .filter(|p| !have(p))
    .collect();
    if !missing.is_empty() {
        bail!(
            "bench attach needs {} (`cargo xtask setup` installs them)",
            missing.join(", ")
        );
    }
    step("building the controller, the agent, the Docker driver, the CNI plugin and the attach benchmark (release)");
    sh(cargo().args([
        "build",
        "--release",
        "-p",
        "daolinet-controller",
        "-p",
        "daolinet-agent",
        "-p",
        "daolinet-docker",
        "-p",
        "daolinet-cni",
    ]))?;
    sh(cargo().args([
        "build",
        "--release",
        "-p",
        "daolinet-docker",
        "--example",
        "attach_bench",
    ]))?;
    let bin = workspace_root().join("target/release/examples/attach_bench");
    step("Docker (daolinet, bridge) and podman (daolinet-cni, CNI bridge): one container, then N in a row, rounds alternating");
    // A process group of its own: Ctrl-C stops this xtask only; the
    // benchmark then gets SIGTERM (its parent-death signal) and removes its
    // containers while the daemons it started (in its group) still run.
    let out = Command::new(&bin)
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {}", bin.display()))?;
    if !out.status.success() {
        bail!("{} failed with {}", bin.display(), out.status);
    }
    let md = String::from_utf8_lossy(&out.stdout);
    if !md.starts_with("## Attach") {
        bail!("{} printed no section: {md}", bin.display());
    }
    print!("{md}");
    crate::benchmarks::update_section("attach", &md)
}
