//! `cargo xtask bench`: side-by-side benchmarks recorded in BENCHMARKS.md.

use anyhow::Result;

mod datapath;
mod openflow;

/// Which benchmark to run.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Which {
    /// Cross-host TCP throughput and 64-byte UDP packet rate: agent vs kernel routing.
    Datapath,
    /// OpenFlow codec decode/encode rates.
    Openflow,
}

/// Run one benchmark, or all of them.
pub fn run(which: Option<Which>, setup: bool) -> Result<()> {
    match which {
        Some(Which::Datapath) => datapath::run(setup),
        Some(Which::Openflow) => openflow::run(),
        None => {
            openflow::run()?;
            datapath::run(setup)
        }
    }
}
