//! `cargo xtask bench ceiling`: how fast TCP can go through the cluster
//! benchmark's topology (two hosts in namespaces on an underlay bridge, one
//! container each, veths everywhere) with the cheapest TC datapath there
//! is, beside the product's and the kernel's. Four copies of the topology,
//! measured side by side, rounds alternating (the order rotating):
//!
//! - agent <-> agent: daolinet-agent on both hosts, as in `bench cluster`;
//! - redirect only: two benchmark-only TC programs per host
//!   (`daolinet-ebpf/src/ceiling.rs`, loaded by the example
//!   `redirect_ceiling`): container veth -> uplink with `bpf_redirect`,
//!   uplink -> container with `bpf_redirect_peer`, the ifindexes fixed at
//!   load time; no parsing, no map, no rewrite (the containers' static
//!   neighbour entries name the other host's uplink MAC, the bridge's FDB
//!   is static). What the product's datapath could reach at most;
//! - kernel routing and the kernel VXLAN overlay, as in `bench cluster`.
//!
//! Figures: TCP throughput (one iperf3 stream) and TCP per CPU time (Gbit
//! received per CPU-second of the transfer's threads, as in `bench
//! datapath`). With `DAOLINET_PERF_DIR=DIR`, one more run per way is
//! profiled (`perf record -a -g`, 3 s in the middle of the stream) into
//! `DIR/<way>.data`.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::cluster::{build, Built, Way};
use super::datapath::{iperf, TcpRun};
use super::median;
use crate::demo::{prepare_with, topology_with, Build, Host};
use crate::util::{cargo, output, run as sh, step, workspace_root};

const ROUNDS: usize = 7;

/// One way of connecting the two hosts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// One of the cluster benchmark's ways.
    Cluster(Way),
    /// The redirect-only programs.
    Redirect,
}

const SIDES: [Side; 4] = [
    Side::Cluster(Way::AgentAgent),
    Side::Redirect,
    Side::Cluster(Way::Kernel),
    Side::Cluster(Way::Vxlan),
];

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Cluster(w) => w.name(),
            Side::Redirect => "redirect only",
        }
    }

    fn file(self) -> &'static str {
        match self {
            Side::Cluster(Way::AgentAgent) => "agent",
            Side::Cluster(Way::Kernel) => "kernel",
            Side::Cluster(Way::Vxlan) => "vxlan",
            Side::Cluster(_) => "other",
            Side::Redirect => "redirect",
        }
    }
}

/// A built copy of the topology: its hosts, and the redirect-only
/// loaders (kept running: their standard input is their lifetime).
struct Lab {
    side: Side,
    hosts: Vec<Host>,
    _built: Option<Built>,
    loaders: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.loaders {
            drop(c.stdin.take());
            let _ = c.wait();
        }
    }
}

/// The redirect-only copy: the topology, static neighbours in the
/// containers (the other host's uplink MAC), a static bridge FDB, and a
/// loader per host.
fn redirect_only(b: &Build, tag: &str) -> Result<Lab> {
    let t = format!("{tag}r");
    step(&format!("redirect only: building {t}*"));
    let hosts = topology_with(&t, false)?;
    let u = format!("{t}u");
    let example = workspace_root().join("target/release/examples/redirect_ceiling");
    let mut loaders = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let o = &hosts[1 - i];
        sh(Command::new("ip").args([
            "netns",
            "exec",
            &h.container,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
        ]))?;
        sh(Command::new("ip").args([
            "-n",
            &h.container,
            "neigh",
            "replace",
            o.logical,
            "lladdr",
            o.mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]))?;
        sh(Command::new("bridge").args([
            "-n",
            &u,
            "fdb",
            "replace",
            h.mac,
            "dev",
            &format!("u{i}"),
            "master",
            "static",
        ]))?;
        let pins = b.bpffs.join(format!("{t}-ceiling-h{}", i + 1));
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &h.ns])
            .arg(&example)
            .arg(&pins)
            .args(["c0", "eth0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        eprintln!("    $ {}", crate::util::display(&c));
        let mut child = c.spawn().context("starting redirect_ceiling")?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        loaders.push(child);
        if line.trim() != "attached" {
            bail!("redirect_ceiling in {} did not attach", h.ns);
        }
    }
    Ok(Lab {
        side: Side::Redirect,
        hosts,
        _built: None,
        loaders,
    })
}

/// One TCP run of `c`; with `perf`, profiled into that file.
fn tcp(c: &Lab, perf: Option<&Path>) -> Result<TcpRun> {
    let (h1, h2) = (&c.hosts[0], &c.hosts[1]);
    // A first packet (on the agent's copy it goes through the controller)
    // before the stream, so the stream starts on installed flows.
    output(Command::new("ip").args([
        "netns",
        "exec",
        &h1.container,
        "ping",
        "-n",
        "-c",
        "1",
        "-W",
        "3",
        h2.logical,
    ]))
    .with_context(|| format!("{}: no ping reply", c.side.name()))?;
    let profiler = perf.map(|file| {
        let file = file.to_path_buf();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2000));
            output(
                Command::new("perf")
                    .args(["record", "-a", "-g", "-q", "-o"])
                    .arg(&file)
                    .args(["--", "sleep", "3"]),
            )
        })
    });
    let run = iperf(&h1.container, &h2.container, h2.logical)?;
    if let Some(p) = profiler {
        p.join()
            .map_err(|_| anyhow!("the perf thread panicked"))??;
    }
    Ok(run)
}

/// Run the ceiling benchmark.
pub fn run(setup: bool) -> Result<()> {
    let (b, _guard, tag) = prepare_with(
        setup,
        "the ceiling benchmark",
        "dlceil",
        &["daolinet-controller"],
    )?;
    step("building the redirect-only loader (example redirect_ceiling, release)");
    sh(cargo().args([
        "build",
        "--release",
        "-p",
        "daolinet-tests",
        "--example",
        "redirect_ceiling",
    ]))?;
    let mut copies = Vec::new();
    for s in SIDES {
        copies.push(match s {
            Side::Cluster(w) => {
                let built = build(w, &b, &tag)?;
                Lab {
                    side: s,
                    hosts: built.hosts.clone(),
                    _built: Some(built),
                    loaders: Vec::new(),
                }
            }
            Side::Redirect => redirect_only(&b, &tag)?,
        });
    }
    step(&format!(
        "{ROUNDS} rounds; each runs one iperf3 stream (5 s after 1 s of warm-up) through every copy, the order rotating"
    ));
    let mut runs: Vec<Vec<TcpRun>> = SIDES.iter().map(|_| Vec::new()).collect();
    for round in 0..ROUNDS {
        eprintln!("  round {}", round + 1);
        for k in 0..SIDES.len() {
            let i = (round + k) % SIDES.len();
            let r = tcp(&copies[i], None)?;
            eprintln!(
                "    {:<16} TCP {:.2} Gbit/s, {:.2} Gbit per CPU-second, {:.2} cores busy",
                SIDES[i].name(),
                r.gbps,
                r.gbit_per_cpu_s,
                r.cores
            );
            runs[i].push(r);
        }
    }
    if let Some(dir) = std::env::var_os("DAOLINET_PERF_DIR").map(PathBuf::from) {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        step(&format!(
            "profiling one more run per way into {}",
            dir.display()
        ));
        for c in &copies {
            let file = dir.join(format!("{}.data", c.side.file()));
            let r = tcp(c, Some(&file))?;
            eprintln!(
                "    {:<16} TCP {:.2} Gbit/s (profiled: {})",
                c.side.name(),
                r.gbps,
                file.display()
            );
        }
    }
    drop(copies);
    record(&runs)
}

fn record(runs: &[Vec<TcpRun>]) -> Result<()> {
    let gbps = |v: &[TcpRun]| median(&v.iter().map(|r| r.gbps).collect::<Vec<_>>());
    let eff = |v: &[TcpRun]| median(&v.iter().map(|r| r.gbit_per_cpu_s).collect::<Vec<_>>());
    let list = |v: &[TcpRun], f: fn(&TcpRun) -> f64| {
        v.iter()
            .map(|r| format!("{:.2}", f(r)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let pos = |s: Side| SIDES.iter().position(|x| *x == s).unwrap_or(0);
    let (k, v) = (
        &runs[pos(Side::Cluster(Way::Kernel))],
        &runs[pos(Side::Cluster(Way::Vxlan))],
    );
    if gbps(k) <= 0.0 || gbps(v) <= 0.0 || eff(k) <= 0.0 || eff(v) <= 0.0 {
        bail!("kernel routing or VXLAN measured zero");
    }
    let mut rows = String::new();
    for (s, r) in SIDES.iter().zip(runs) {
        rows.push_str(&format!(
            "| {} | **{:.2}** ({}) | {:.2}x | {:.2}x | **{:.2}** ({}) | {:.2}x | {:.2}x |\n",
            s.name(),
            gbps(r),
            list(r, |x| x.gbps),
            gbps(r) / gbps(k),
            gbps(r) / gbps(v),
            eff(r),
            list(r, |x| x.gbit_per_cpu_s),
            eff(r) / eff(k),
            eff(r) / eff(v),
        ));
    }
    let date = output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default();
    let md = format!(
        "## Cluster ceiling: the cheapest TC datapath on the same topology\n\n\
         Command: `cargo xtask bench ceiling`. The cluster benchmark's topology built four \
         ways and measured side by side, {ROUNDS} rounds, the order rotating; medians, runs \
         in brackets. Agent <-> agent, kernel routing and kernel VXLAN as in `bench cluster`; \
         redirect only: two benchmark-only TC programs per host (tcx ingress; container veth \
         -> uplink with `bpf_redirect`, uplink -> container with `bpf_redirect_peer`, \
         ifindexes fixed at load time; no parsing, no map, no rewrite; \
         `daolinet-ebpf/src/ceiling.rs`, loaded by the example `redirect_ceiling`), the \
         containers' neighbour entries naming the other host's uplink MAC. TCP: one iperf3 \
         stream, 5 s after 1 s of warm-up. Per CPU time: Gbit the destination container \
         received per CPU-second of the iperf3 processes and ksoftirqd over 3 s in the middle \
         of each run (as in `bench datapath`).\n\n\
         | way | TCP Gbit/s | / kernel routing | / VXLAN | TCP Gbit per CPU-second | / kernel routing | / VXLAN |\n\
         |---|---|---|---|---|---|---|\n\
         {rows}\n\
         Measured {} on a 2-core machine shared with other work.\n",
        date.trim()
    );
    eprintln!("{md}");
    crate::benchmarks::update_section("cluster-ceiling", &md)
}
