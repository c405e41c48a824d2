//! `cargo xtask bench datapath`: cross-host TCP throughput and 64-byte UDP
//! packet rate on the demo topology (two hosts on an underlay bridge, one
//! container each). Two identical copies of the topology are built: in one
//! the daolinet-agent datapath forwards (DaoliNet rewrite flows), in the
//! other plain kernel IP forwarding does. Runs alternate between the two
//! (and which goes first alternates too), so the noise of a shared machine
//! hits both sides alike. Ratios go to BENCHMARKS.md.

use anyhow::{anyhow, bail, Context, Result};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::udp;
use crate::demo::{install_rules, prepare, start_agents, topology, Host};
use crate::util::{run as sh, step};

const ROUNDS: usize = 7;
const TCP_SECONDS: &str = "4";
const UDP_SECONDS: f64 = 2.0;

/// One side's measurements: TCP Gbit/s and UDP 64-byte packets/s per run.
#[derive(Default)]
struct Sample {
    tcp_gbps: Vec<f64>,
    udp_pps: Vec<f64>,
}

/// One iperf3 TCP run; the receiver's bits/s.
fn iperf(client_ns: &str, server_ns: &str, server_ip: &str) -> Result<f64> {
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", server_ip,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    std::thread::sleep(Duration::from_millis(700));
    let mut c = Command::new("ip");
    c.args(["netns", "exec", client_ns, "iperf3", "-J", "-c", server_ip]);
    // Leave TCP slow start (first second) out of the result.
    c.args(["-t", TCP_SECONDS, "-O", "1"]);
    let out = c.output().context("running iperf3 -c")?;
    let _ = server.kill();
    let _ = server.wait();
    if !out.status.success() {
        bail!(
            "iperf3 failed: {}",
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let json = String::from_utf8_lossy(&out.stdout);
    serde_like::received_bps(&json)
}

/// Tiny extraction of the two numbers we need from iperf3's JSON, so xtask
/// needs no JSON dependency.
mod serde_like {
    use anyhow::{anyhow, Result};

    fn number_after(s: &str, key: &str) -> Option<f64> {
        let i = s.find(key)? + key.len();
        let rest = s[i..].trim_start_matches([' ', ':', '\n', '\t']);
        let end = rest.find([',', '\n', '}']).unwrap_or(rest.len());
        rest[..end].trim().parse().ok()
    }

    /// The receiver's bits/s from iperf3's final summary.
    pub fn received_bps(json: &str) -> Result<f64> {
        // The summary is the last occurrence (per-interval objects come first).
        let recv = json
            .rfind("\"sum_received\"")
            .map(|i| &json[i..])
            .ok_or_else(|| anyhow!("no sum_received"))?;
        number_after(recv, "\"bits_per_second\"").ok_or_else(|| anyhow!("no bits_per_second"))
    }
}

fn tcp_once(hosts: &[Host]) -> Result<f64> {
    let (c1, c2, ip2) = (&hosts[0].container, &hosts[1].container, hosts[1].logical);
    Ok(iperf(c1, c2, ip2)? / 1e9)
}

fn udp_once(hosts: &[Host]) -> Result<f64> {
    let (c1, c2) = (&hosts[0].container, &hosts[1].container);
    let ip2: Ipv4Addr = hosts[1].logical.parse()?;
    let r = udp::flood(c1, c2, ip2, 9000, UDP_SECONDS)?;
    eprintln!(
        "      sent {:.0} kpps, received {:.0} kpps",
        r.sent_pps / 1e3,
        r.recv_pps / 1e3
    );
    Ok(r.recv_pps)
}

/// Run `f` on both sides `ROUNDS` times, alternating which side goes first.
fn alternate(
    what: &str,
    agent: &[Host],
    kernel: &[Host],
    f: fn(&[Host]) -> Result<f64>,
    fmt: fn(f64) -> String,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut a, mut k) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let order: [bool; 2] = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_agent in order {
            let v = f(if is_agent { agent } else { kernel })?;
            eprintln!(
                "    {what} round {}: {} {}",
                round + 1,
                if is_agent { "agent " } else { "kernel" },
                fmt(v)
            );
            if is_agent { &mut a } else { &mut k }.push(v);
        }
    }
    Ok((a, k))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn kernel_routing(hosts: &[Host]) -> Result<()> {
    let gw = "02:00:00:00:00:01";
    for (i, h) in hosts.iter().enumerate() {
        let o = &hosts[1 - i];
        let ns = &h.ns;
        for k in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ] {
            sh(Command::new("ip").args(["netns", "exec", ns, "sysctl", "-q", "-w", k]))?;
        }
        sh(Command::new("ip").args(["-n", ns, "link", "set", "c0", "address", gw]))?;
        sh(Command::new("ip").args([
            "-n",
            ns,
            "route",
            "add",
            &format!("{}/32", h.logical),
            "dev",
            "c0",
        ]))?;
        sh(Command::new("ip").args([
            "-n", ns, "neigh", "replace", h.logical, "lladdr", h.cmac, "dev", "c0",
        ]))?;
        sh(Command::new("ip").args([
            "-n",
            ns,
            "route",
            "add",
            &format!("{}/32", o.logical),
            "via",
            o.underlay_ip,
        ]))?;
    }
    Ok(())
}

/// Run the datapath benchmark.
pub fn run(setup: bool) -> Result<()> {
    let (build, _guard, tag) = prepare(setup, "the datapath benchmark", "dlbench")?;
    let agent_hosts = topology(&format!("{tag}a"))?;
    start_agents(&build, &agent_hosts)?;
    install_rules(&build.bin, &agent_hosts)?;
    let kernel_hosts = topology(&format!("{tag}k"))?;
    step("configuring plain kernel IP forwarding in the second topology");
    kernel_routing(&kernel_hosts)?;

    step(&format!(
        "TCP, {ROUNDS} rounds of iperf3 ({TCP_SECONDS} s after 1 s of warm-up), alternating agent and kernel"
    ));
    let mut agent = Sample::default();
    let mut kernel = Sample::default();
    (agent.tcp_gbps, kernel.tcp_gbps) =
        alternate("TCP", &agent_hosts, &kernel_hosts, tcp_once, |v| {
            format!("{v:.2} Gbit/s")
        })?;
    step(&format!(
        "UDP 64-byte frames, {ROUNDS} rounds of {UDP_SECONDS} s (sendmmsg sender, arrivals counted by the destination kernel), alternating"
    ));
    (agent.udp_pps, kernel.udp_pps) =
        alternate("UDP", &agent_hosts, &kernel_hosts, udp_once, |v| {
            format!("{:.0} kpps", v / 1e3)
        })?;

    step("BPF program cost per packet (BPF_PROG_TEST_RUN)");
    let cost = crate::util::output(
        crate::util::cargo()
            .args([
                "run",
                "--release",
                "-q",
                "-p",
                "daolinet-tests",
                "--example",
                "prog_cost",
                "--",
                "1000000",
            ])
            .env("DAOLINET_BPF_OBJECT", &build.obj),
    )?;
    eprint!("{cost}");
    let cost_rows: String = cost
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once("  ")?;
            let ns = rest.split_whitespace().next()?;
            Some(format!("| {} | {ns} |\n", name.trim()))
        })
        .collect();

    let (at, kt) = (median(&agent.tcp_gbps), median(&kernel.tcp_gbps));
    let (au, ku) = (median(&agent.udp_pps), median(&kernel.udp_pps));
    // Each round's two runs are neighbours in time: their ratio is less
    // exposed to the machine's load changing between rounds.
    let paired = |a: &[f64], k: &[f64]| {
        median(
            &a.iter()
                .zip(k)
                .filter(|(_, k)| **k > 0.0)
                .map(|(a, k)| a / k)
                .collect::<Vec<_>>(),
        )
    };
    let (pt, pu) = (
        paired(&agent.tcp_gbps, &kernel.tcp_gbps),
        paired(&agent.udp_pps, &kernel.udp_pps),
    );
    if kt <= 0.0 || ku <= 0.0 {
        return Err(anyhow!("kernel routing measured zero"));
    }
    let runs =
        |v: &[f64], f: fn(f64) -> String| v.iter().map(|x| f(*x)).collect::<Vec<_>>().join(", ");
    let date = crate::util::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .unwrap_or_default();
    let md = format!(
        "## Datapath: cross-host container to container\n\n\
         Command: `cargo xtask bench datapath`. Topology: two hosts in namespaces on an underlay \
         bridge, one container each, veths everywhere. It is built twice: in one copy \
         daolinet-agent forwards (tcx on the container veth, TC on the uplink, the DaoliNet \
         logical->physical->logical rewrite flows), in the other plain kernel IP forwarding \
         does (routes and static neighbours, no rewrite). Runs alternate between the two \
         copies, {ROUNDS} rounds each, the first side alternating too; medians below. \
         TCP: one iperf3 stream, {TCP_SECONDS} s after 1 s of warm-up. UDP: 64-byte frames from \
         one sender thread (sendmmsg, batches of 64), counted over {UDP_SECONDS} s by the \
         destination container's UDP layer (a bound socket nobody reads, so no receiver \
         wake-ups in the path).\n\n\
         | path | TCP Gbit/s (runs) | UDP 64-byte kpps (runs) |\n|---|---|---|\n\
         | daolinet-agent | **{at:.2}** ({}) | **{:.0}** ({}) |\n\
         | kernel routing | **{kt:.2}** ({}) | **{:.0}** ({}) |\n\
         | ratio of the medians, agent / kernel | **{:.2}x** | **{:.2}x** |\n\
         | median of the per-round ratios | {pt:.2}x | {pu:.2}x |\n\n\
         Measured {} on a 2-core machine shared with other builds: absolute numbers move \
         from run to run; the ratio is what this benchmark tracks. Target: agent >= 1.0x.\n\n\
         Cost of one run of the TC program, measured by the kernel (BPF_PROG_TEST_RUN, mean \
         of 1M runs, best of 3; `cargo run --release -p daolinet-tests --example prog_cost`). \
         The subtable scenarios walk empty higher-priority subtables first; from 3 subtables \
         on, the exact-match cache answers for known flows.\n\n\
         | scenario | ns per packet |\n|---|---:|\n{cost_rows}",
        runs(&agent.tcp_gbps, |x| format!("{x:.2}")),
        au / 1e3,
        runs(&agent.udp_pps, |x| format!("{:.0}", x / 1e3)),
        runs(&kernel.tcp_gbps, |x| format!("{x:.2}")),
        ku / 1e3,
        runs(&kernel.udp_pps, |x| format!("{:.0}", x / 1e3)),
        at / kt,
        au / ku,
        date.trim(),
    );
    eprintln!("{md}");
    crate::benchmarks::update_section("datapath", &md)
}
