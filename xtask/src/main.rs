//! `cargo xtask`: the one entry point a developer or user needs.
//!
//! - `setup`: install every missing prerequisite (idempotent, needs root).
//! - `build-ebpf`: build the BPF datapath object.
//! - `test`: setup + build-ebpf + the whole test suite (privileged tests too);
//!   `--repeat N [--load]` for a stability run.
//! - `demo`: show the product working on network namespaces (controller + agents).
//! - `bench`: side-by-side benchmarks, written to BENCHMARKS.md.
//! - `conformance`: os-ken's OpenFlow switch test suite, agent vs Open vSwitch.
//! - `fuzz`: run the cargo-fuzz targets for a bounded time.

mod bench;
mod benchmarks;
mod build_ebpf;
mod cleanup;
mod conformance;
mod demo;
mod fuzz;
mod ovs;
mod purity;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "DaoliNet-rs developer tasks", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install every missing prerequisite (apt packages, bpf-linker, rust-src, OVS...). Needs root.
    Setup,
    /// Build the eBPF datapath object into target/bpf/daolinet.bpf.o.
    BuildEbpf {
        /// Build with optimisations (the verifier-friendly default; `--release` is accepted for clarity).
        #[arg(long)]
        release: bool,
        /// Build the unoptimised debug variant instead (rarely loads: the verifier dislikes it).
        #[arg(long, conflicts_with = "release")]
        debug: bool,
    },
    /// Run setup, build-ebpf and the whole test suite, including privileged namespace tests (under CI=true: a test that cannot run fails).
    Test {
        /// Skip `setup` (prerequisites already installed).
        #[arg(long)]
        no_setup: bool,
        /// Seconds for each fuzz target in the short fuzz run (0 skips it).
        #[arg(long, default_value_t = 20)]
        fuzz_seconds: u64,
        /// Stability run: build once, run the suite N times, report each run and which tests failed in which runs.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        repeat: u32,
        /// Keep one core busy (a busy loop) while the suite runs, as on a loaded CI machine.
        #[arg(long)]
        load: bool,
    },
    /// Run the controller, an agent host and an Open vSwitch host (joining by themselves) on namespaces; show and check first packets, flows, policy, migration, expiry.
    Demo {
        /// Skip `setup`.
        #[arg(long)]
        no_setup: bool,
    },
    /// Run benchmarks side by side with a reference and record ratios in BENCHMARKS.md.
    Bench {
        /// Which benchmark (all when omitted).
        #[arg(value_enum)]
        which: Option<bench::Which>,
        /// Skip `setup`.
        #[arg(long)]
        no_setup: bool,
    },
    /// Run os-ken's OpenFlow switch test suite against the agent and Open vSwitch; record the counts in BENCHMARKS.md.
    Conformance {
        /// Only this target (both when omitted; Open vSwitch first, the baseline).
        #[arg(long, value_enum)]
        target: Vec<conformance::Target>,
        /// Only these suites (all when omitted).
        #[arg(long, value_enum)]
        suite: Vec<conformance::Suite>,
        /// Only the case files whose path contains this (e.g. `VLAN`).
        #[arg(long)]
        filter: Option<String>,
        /// Seconds the tester waits before each case's first packet.
        #[arg(long, default_value_t = 0.3)]
        settle: f64,
        /// Skip `setup`.
        #[arg(long)]
        no_setup: bool,
    },
    /// Run the cargo-fuzz targets for a bounded time each.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Setup => setup::run(),
        Cmd::BuildEbpf { debug, .. } => build_ebpf::run(!debug).map(|_| ()),
        Cmd::Test {
            no_setup,
            fuzz_seconds,
            repeat,
            load,
        } => test::run(&test::Opts {
            setup: !no_setup,
            fuzz_seconds,
            repeat,
            load,
        }),
        Cmd::Demo { no_setup } => demo::run(!no_setup),
        Cmd::Bench { which, no_setup } => bench::run(which, !no_setup),
        Cmd::Conformance {
            target,
            suite,
            filter,
            settle,
            no_setup,
        } => conformance::run(&target, &suite, filter.as_deref(), settle, !no_setup),
        Cmd::Fuzz { seconds, target } => fuzz::run(seconds, target.as_deref()),
    };
    if let Err(e) = res {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}
