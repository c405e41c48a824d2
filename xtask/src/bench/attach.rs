//! `cargo xtask bench attach`: the time from `docker run -d` / `podman run
//! -d` to a container's first echo reply from a peer on its network, one
//! container alone and N in a row (containers/s, p99), for Docker with the
//! `daolinet` driver and podman with `daolinet-cni`, side by side with
//! Docker's own bridge driver (same dockerd) and podman's CNI bridge in one
//! run, rounds alternating. The measurement is the example
//! `daolinet-docker/examples/attach_bench.rs` (on the test lab of the
//! runtime tests); this builds it and the daemons in release, runs it and
//! records the section it prints (`attach` in BENCHMARKS.md).

use anyhow::{bail, Result};

use crate::util::{cargo, have, run as sh, step};

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
    step("Docker (daolinet, bridge) and podman (daolinet-cni, CNI bridge): one container, then N in a row, rounds alternating");
    super::example::run_and_record("daolinet-docker", "attach_bench", "## Attach", "attach")
}
