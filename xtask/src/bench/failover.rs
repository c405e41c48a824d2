//! `cargo xtask bench failover`: three controllers on a 3-member etcd
//! cluster, the leader killed 10 times under established traffic (time to
//! a working new connection: p50, max; pings and stream lost), the etcd
//! raft leader member killed 3 times (the same time and pings), and the
//! decisions/s of the cluster's leader vs one controller. The measurement
//! is the example `tests/examples/failover_bench.rs` (it builds on the test
//! lab of the privileged tests, `daolinet_tests::ha`); this builds it and
//! the daemons in release, runs it and records the section it prints
//! (`failover` in BENCHMARKS.md).

use anyhow::{bail, Result};

use crate::util::{cargo, run as sh, step};

/// Build, run, record.
pub fn run(setup: bool) -> Result<()> {
    if setup {
        crate::setup::run()?;
    }
    if !crate::util::is_root() {
        bail!("bench failover needs root (namespaces, BPF, etcd)");
    }
    step("building the controller, the agent, the generator and the failover benchmark (release)");
    sh(cargo().args([
        "build",
        "--release",
        "-p",
        "daolinet-controller",
        "-p",
        "daolinet-agent",
        "-p",
        "daolinet-loadgen",
    ]))?;
    step("10 leader kills, 3 etcd member kills, then decisions/s of one controller vs the leader of three");
    super::example::run_and_record(
        "daolinet-tests",
        "failover_bench",
        "## Failover",
        "failover",
    )
}
