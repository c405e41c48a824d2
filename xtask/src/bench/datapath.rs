//! `cargo xtask bench datapath`: cross-host TCP throughput and 64-byte UDP
//! packet rate on the demo topology (two hosts on an underlay bridge, one
//! container each), first through the daolinet-agent datapath (DaoliNet
//! rewrite flows), then with the agents stopped and plain kernel routing
//! configured on the very same namespaces. Ratios go to BENCHMARKS.md.

use anyhow::{anyhow, bail, Context, Result};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::demo::{install_rules, lab, Host};
use crate::util::{run as sh, step};

const RUNS: usize = 3;
const TCP_SECONDS: &str = "4";
const UDP_SECONDS: &str = "3";

/// One measurement: TCP Gbit/s per run and UDP 64-byte packets/s per run.
struct Sample {
    tcp_gbps: Vec<f64>,
    udp_pps: Vec<f64>,
}

fn iperf(client_ns: &str, server_ns: &str, server_ip: &str, udp: bool) -> Result<serde_like::Num> {
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
    if udp {
        // 18-byte payload = 64-byte Ethernet frames (with FCS), unlimited rate.
        c.args(["-u", "-b", "0", "-l", "18", "-t", UDP_SECONDS]);
    } else {
        c.args(["-t", TCP_SECONDS]);
    }
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
    serde_like::parse(&json, udp)
}

/// Tiny extraction of the two numbers we need from iperf3's JSON, so xtask
/// needs no JSON dependency.
mod serde_like {
    use anyhow::{anyhow, Result};

    /// bits/s for TCP (receiver side), packets/s for UDP (received).
    pub struct Num(pub f64);

    fn number_after(s: &str, key: &str) -> Option<f64> {
        let i = s.find(key)? + key.len();
        let rest = s[i..].trim_start_matches([' ', ':', '\n', '\t']);
        let end = rest.find([',', '\n', '}']).unwrap_or(rest.len());
        rest[..end].trim().parse().ok()
    }

    pub fn parse(json: &str, udp: bool) -> Result<Num> {
        // The summaries are the last occurrences of these keys (the
        // per-interval objects come before them).
        let tail = json;
        if udp {
            let sum = tail
                .rfind("\"sum\"")
                .map(|i| &tail[i..])
                .ok_or_else(|| anyhow!("no UDP sum"))?;
            let packets = number_after(sum, "\"packets\"").ok_or_else(|| anyhow!("no packets"))?;
            let lost = number_after(sum, "\"lost_packets\"").unwrap_or(0.0);
            let secs = number_after(sum, "\"seconds\"").ok_or_else(|| anyhow!("no seconds"))?;
            Ok(Num((packets - lost) / secs.max(1e-9)))
        } else {
            let recv = tail
                .rfind("\"sum_received\"")
                .map(|i| &tail[i..])
                .ok_or_else(|| anyhow!("no sum_received"))?;
            Ok(Num(number_after(recv, "\"bits_per_second\"")
                .ok_or_else(|| anyhow!("no bits_per_second"))?))
        }
    }
}

fn measure(hosts: &[Host]) -> Result<Sample> {
    let (c1, c2, ip2) = (&hosts[0].container, &hosts[1].container, hosts[1].logical);
    let mut s = Sample {
        tcp_gbps: Vec::new(),
        udp_pps: Vec::new(),
    };
    for i in 0..RUNS {
        let bps = iperf(c1, c2, ip2, false)?.0;
        let pps = iperf(c1, c2, ip2, true)?.0;
        eprintln!(
            "    run {}: TCP {:.2} Gbit/s, UDP 64B {:.0} kpps",
            i + 1,
            bps / 1e9,
            pps / 1e3
        );
        s.tcp_gbps.push(bps / 1e9);
        s.udp_pps.push(pps);
    }
    Ok(s)
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
    let (bin, mut clean, hosts) = lab(setup, "the datapath benchmark", "dlbench")?;
    install_rules(&bin, &hosts)?;

    step(&format!("daolinet-agent datapath: {RUNS} runs of TCP ({TCP_SECONDS} s) and UDP 64-byte ({UDP_SECONDS} s)"));
    let agent = measure(&hosts)?;

    step("stopping the agents (programs detached) and configuring plain kernel routing");
    for a in &mut clean.agents {
        let _ = Command::new("kill").arg(a.id().to_string()).status();
        let _ = a.wait();
    }
    clean.agents.clear();
    kernel_routing(&hosts)?;
    step(&format!("kernel routing: {RUNS} runs"));
    let kernel = measure(&hosts)?;

    let (at, kt) = (median(&agent.tcp_gbps), median(&kernel.tcp_gbps));
    let (au, ku) = (median(&agent.udp_pps), median(&kernel.udp_pps));
    if kt <= 0.0 || ku <= 0.0 {
        return Err(anyhow!("kernel routing measured zero"));
    }
    let runs =
        |v: &[f64], f: fn(f64) -> String| v.iter().map(|x| f(*x)).collect::<Vec<_>>().join(", ");
    let md = format!(
        "## Datapath: cross-host container to container\n\n\
         Command: `cargo xtask bench datapath` (two hosts in namespaces on an underlay bridge, \
         one container each; veths everywhere). Same namespaces, measured one after the other \
         in one run: first through daolinet-agent (tcx on the container veth, TC on the uplink, \
         DaoliNet logical->physical->logical rewrite flows), then with the agents stopped and plain \
         kernel IP forwarding on both hosts. Medians of {RUNS} runs.\n\n\
         | path | TCP Gbit/s (runs) | UDP 64-byte kpps (runs) |\n|---|---|---|\n\
         | daolinet-agent | **{at:.2}** ({}) | **{:.0}** ({}) |\n\
         | kernel routing | **{kt:.2}** ({}) | **{:.0}** ({}) |\n\
         | ratio agent / kernel | **{:.2}x** | **{:.2}x** |\n",
        runs(&agent.tcp_gbps, |x| format!("{x:.2}")),
        au / 1e3,
        runs(&agent.udp_pps, |x| format!("{:.0}", x / 1e3)),
        runs(&kernel.tcp_gbps, |x| format!("{x:.2}")),
        ku / 1e3,
        runs(&kernel.udp_pps, |x| format!("{:.0}", x / 1e3)),
        at / kt,
        au / ku,
    );
    eprintln!("{md}");
    crate::benchmarks::update_section("datapath", &md)
}
