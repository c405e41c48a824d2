//! `cargo xtask bench`: side-by-side benchmarks recorded in BENCHMARKS.md.

use anyhow::Result;

mod agent;
mod attach;
mod ceiling;
mod cluster;
mod controller;
mod datapath;
mod example;
mod failover;
mod openflow;
mod scale;
mod stamps;
mod udp;

pub use controller::OSKEN_VERSION;

// The median of a benchmark's rounds is the lab's (the mean of the two
// middle values for an even count, NaN for none).
use daolinet_testlab::median;

/// Which benchmark to run.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Which {
    /// The agent as an OpenFlow switch vs Open vSwitch: FLOW_MOD install rate, first-packet latency.
    Agent,
    /// Cross-host TCP throughput and 64-byte UDP packet rate: agent vs kernel routing.
    Datapath,
    /// OpenFlow codec decode/encode rates.
    Openflow,
    /// Controller PACKET_IN -> FLOW_MOD decisions/s and latency: ours vs os-ken.
    Controller,
    /// One two-host topology five ways (agent, OVS, mixed, kernel routing,
    /// VXLAN): TCP, 64-byte UDP, first-packet latency.
    Cluster,
    /// The cluster topology's TCP with the cheapest TC datapath (redirect
    /// only) beside agent <-> agent, kernel routing and VXLAN: what the
    /// datapath can gain at most.
    Ceiling,
    /// Three controllers on etcd: time to a working new connection over 10
    /// leader kills, established-flow loss, decisions/s vs one controller.
    Failover,
    /// The controller with 1,000 hosts and 100,000 containers beside a
    /// small model: memory, API and decision latency (also the last part
    /// of `controller`).
    Scale,
    /// Docker (`daolinet` driver) and podman (`daolinet-cni`): time from
    /// the run command to the first ping, N containers in a row
    /// (containers/s, p99), vs Docker's bridge driver and podman's CNI
    /// bridge.
    Attach,
}

/// Run one benchmark, or all of them.
pub fn run(which: Option<Which>, setup: bool) -> Result<()> {
    match which {
        Some(Which::Agent) => agent::run(setup),
        Some(Which::Datapath) => datapath::run(setup),
        Some(Which::Openflow) => openflow::run(),
        Some(Which::Controller) => controller::run(setup),
        Some(Which::Cluster) => cluster::run(setup),
        Some(Which::Ceiling) => ceiling::run(setup),
        Some(Which::Failover) => failover::run(setup),
        Some(Which::Scale) => controller::run_scale(setup),
        Some(Which::Attach) => attach::run(setup),
        None => {
            openflow::run()?;
            datapath::run(setup)?;
            controller::run(false)?;
            agent::run(false)?;
            cluster::run(false)?;
            failover::run(false)?;
            attach::run(false)
        }
    }
}
