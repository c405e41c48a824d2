//! DaoliNet's test lab, shared by every privileged test of the workspace.
//!
//! - **One skip rule** ([`require`], [`Need`]): under `CI=true` a
//!   privileged test that cannot run fails and says why; elsewhere it is
//!   skipped and its test binary prints one summary line when it exits.
//! - **Guards** that clean up on drop, also when the test panics:
//!   [`Netns`], root-namespace [`Veth`] pairs, a private [`Bpffs`],
//!   [`TempDir`], child processes ([`Proc`]).
//! - **Unique names** ([`Lab::name`]): prefix + pid + counter, within the
//!   15 characters of an interface name, so concurrent test binaries never
//!   collide and nobody deletes what they did not create.
//! - **Starters**, stopped on drop: [`Agent`] (`daolinet-agent run` in a
//!   host namespace), [`Controller`] (kernel-chosen ports, ready when it
//!   printed them), [`OvsHost`] (ovsdb-server + ovs-vswitchd with their own
//!   directories, netdev bridges with `fail_mode=secure`), [`EtcdCluster`]
//!   (etcd members in a namespace of their own, own data directories),
//!   [`Cluster`] (a controller and agent hosts that join by themselves on
//!   one underlay, as the runtime integrations' tests need), [`Dockerd`]
//!   and [`Podman`] (container runtimes with state of their own in a host
//!   namespace) and [`busybox_image`] (an image without a registry).
//! - **One REST API client** ([`Api`]), also from inside a namespace, with
//!   typed shortcuts that fill the model (`add_host`, `add_network`,
//!   `add_container`).
//! - **Helpers**: commands with clear failure messages ([`sh`],
//!   [`Netns::run`]), ping ([`Netns::ping`]), [`iperf3`], waiting for a
//!   condition with a deadline ([`wait_until`], [`wait_for`], [`wait_poll`]),
//!   running a BPF program on a frame ([`prog_test_run`]).
//!
//! ```no_run
//! use daolinet_testlab::{Lab, Need};
//! let Some(mut lab) = Lab::new(&[Need::BpfObject]) else { return };
//! let h = lab.netns("h");
//! h.veth("up0", "up0p");
//! let a = lab.container(&h, "a", "pa", "10.1.0.2", "02:00:00:00:00:0a");
//! let agent = lab.agent(&h, &["--uplink", "up0", "--port", "pa=1"]);
//! assert!(agent.cli(&["ports"]).contains("\"pa\""));
//! assert!(!a.ping("10.1.0.3", 1, 1));
//! ```

// A test lab's failures are test failures: it panics with a clear message.
#![allow(clippy::panic)]

mod agent;
mod cluster;
mod cmd;
mod compare;
mod controller;
mod etcd;
mod fs;
mod http;
mod interrupt;
mod lab;
mod model;
mod names;
mod netns;
mod ovs;
mod progrun;
mod proxy;
mod runtimes;
mod skip;
mod stats;
mod traffic;
mod wait;

use std::path::{Path, PathBuf};

pub use agent::Agent;
pub use cluster::{Cluster, ClusterHost, UNDERLAY};
pub use cmd::{command, output, output_of, sh, show, signal, succeeds, Proc, Ran};
pub use compare::assert_unchanged;
pub use controller::{Controller, ControllerOpts};
pub use etcd::{EtcdCluster, ETCD_PROGRAMS};
pub use fs::{copy_executable, Bpffs, TempDir};
pub use http::{json_str, parse_response, Api};
pub use interrupt::{catch_signals, check_stop, stop_requested};
pub use lab::Lab;
pub use names::{fresh_tag, IFNAME_MAX, PREFIX_ENV};
pub use netns::{in_netns, Netns, ThreadNetns, Veth};
pub use ovs::{OvsHost, OVS_PROGRAMS};
pub use progrun::{prog_test_run, ProgRun};
pub use proxy::TcpProxy;
pub use runtimes::{
    busybox_image, unmount_under, DockerHost, Dockerd, Podman, DOCKER_PROGRAMS, PODMAN_PROGRAMS,
};
pub use skip::{
    bpf_object, is_root, on_path, require, summary_line, under_ci, Need, Ready, OBJECT_ENV,
};
pub use stats::{median, quantile};
pub use traffic::{iperf3, Transfer};
pub use wait::{eventually, wait_for, wait_poll, wait_until, Poll, DEADLINE};

/// The workspace root (this crate lives in `<root>/testlab`).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// A binary of this workspace, in the target directory of the running test
/// (`target/<profile>/NAME`, the parent of the test's `deps/`). Cargo
/// builds a package's own binaries for its integration tests
/// (`CARGO_BIN_EXE_<name>` is this same path); the binaries of other
/// packages are there after `cargo test --workspace` (list them as
/// [`Need::Binary`]).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().unwrap_or(Path::new(".")).to_path_buf();
    if matches!(
        dir.file_name().and_then(|n| n.to_str()),
        Some("deps" | "examples")
    ) {
        dir.pop();
    }
    dir.join(name)
}
