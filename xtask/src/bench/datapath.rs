//! `cargo xtask bench datapath`: cross-host TCP throughput and 64-byte UDP
//! packet rate on the demo topology (two hosts on an underlay bridge, one
//! container each). Two identical copies of the topology are built: in one
//! the daolinet-agent datapath forwards (DaoliNet rewrite flows), in the
//! other plain kernel IP forwarding does. Runs alternate between the two
//! (and which goes first alternates too), so the noise of a shared machine
//! hits both sides alike. Beside the rates, each run is divided by the CPU
//! time of the threads that carry its traffic (the iperf3 processes, or the
//! UDP sender thread, and ksoftirqd): how much CPU the machine's other work
//! leaves to the transfer then drops out. Ratios go to BENCHMARKS.md.

use anyhow::{anyhow, bail, Context, Result};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::median;
use super::udp;
use crate::demo::{install_rules, prepare, start_agents, topology, Host};
use crate::util::{run as sh, step};

const ROUNDS: usize = 9;
const TCP_SECONDS: &str = "5";
/// CPU accounting window inside each TCP run (see [`iperf`]).
const CPU_WINDOW: Duration = Duration::from_millis(3000);
const UDP_SECONDS: f64 = 2.0;

/// One side's measurements: TCP Gbit/s and UDP 64-byte packets/s per run.
#[derive(Default)]
struct Sample {
    tcp_gbps: Vec<f64>,
    tcp_gbit_per_cpu_s: Vec<f64>,
    tcp_cores: Vec<f64>,
    udp_pps: Vec<f64>,
    udp_kpps_per_core: Vec<f64>,
}

impl Sample {
    fn set_tcp(&mut self, runs: &[TcpRun]) {
        self.tcp_gbps = runs.iter().map(|r| r.gbps).collect();
        self.tcp_gbit_per_cpu_s = runs.iter().map(|r| r.gbit_per_cpu_s).collect();
        self.tcp_cores = runs.iter().map(|r| r.cores).collect();
    }

    fn set_udp(&mut self, runs: &[udp::Rates]) {
        self.udp_pps = runs.iter().map(|r| r.recv_pps).collect();
        self.udp_kpps_per_core = runs
            .iter()
            .map(|r| 1e6 / r.cpu_ns_per_pkt.max(1.0))
            .collect();
    }
}

/// One iperf3 TCP run.
#[derive(Clone, Copy)]
pub(super) struct TcpRun {
    /// The receiver's Gbit/s, as iperf3 reports it.
    pub(super) gbps: f64,
    /// Gbit the destination's eth0 received per CPU-second that the
    /// transfer's threads ran (see [`TransferCpu`]), in the middle of the run.
    pub(super) gbit_per_cpu_s: f64,
    /// CPU cores those threads kept busy meanwhile.
    pub(super) cores: f64,
}

/// The threads that run a transfer through namespaces on this machine:
/// every thread of the iperf3 client and server, and the ksoftirqd
/// threads (and those of a userspace switch, when one forwards). Packets cross veths by the per-CPU backlog, which the kernel
/// processes in softirq right when the sender's system call enables bottom
/// halves again, or in ksoftirqd when softirqs pile up; both count on those
/// threads (this kernel has no IRQ time accounting, so softirq time counts
/// on the task it interrupts). Other helpers' builds on the machine do not.
struct TransferCpu {
    pids: Vec<u32>,
}

impl TransferCpu {
    fn new(client: u32, server: u32, also: &[u32]) -> Self {
        let mut pids = vec![client, server];
        pids.extend(udp::ksoftirqd_pids());
        pids.extend(also);
        Self { pids }
    }

    /// Nanoseconds the threads have run so far (`/proc/PID/task/TID/schedstat`).
    fn ns(&self) -> Result<u64> {
        let mut sum = 0u64;
        for pid in &self.pids {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
                .with_context(|| format!("listing the threads of {pid}"))?;
            for t in tasks.flatten() {
                // A thread may end meanwhile: it then ran after the window.
                let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) else {
                    continue;
                };
                sum += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        Ok(sum)
    }
}

/// Bytes received on `eth0` in the network namespace of process `pid`.
fn eth0_rx_bytes(pid: u32) -> Result<u64> {
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev"))
        .context("reading the destination's /proc/net/dev")?;
    dev.lines()
        .find_map(|l| l.trim_start().strip_prefix("eth0:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no eth0 in the destination's /proc/net/dev"))
}

/// One iperf3 TCP run from `client_ns` to `server_ip` in `server_ns`.
pub(super) fn iperf(client_ns: &str, server_ns: &str, server_ip: &str) -> Result<TcpRun> {
    iperf_with(client_ns, server_ns, server_ip, &[])
}

/// [`iperf`], counting the threads of the processes `also` in the
/// transfer's CPU time too (a userspace switch that forwards the packets).
pub(super) fn iperf_with(
    client_ns: &str,
    server_ns: &str,
    server_ip: &str,
    also: &[u32],
) -> Result<TcpRun> {
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
    let client = c
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("running iperf3 -c")?;
    // `ip netns exec` execs iperf3 in place: these are iperf3's pids.
    let cpu = TransferCpu::new(client.id(), server.id(), also);
    // The CPU window: from the end of iperf3's warm-up to shortly before
    // its end, while the stream runs at full speed.
    let window = (|| -> Result<(f64, f64)> {
        std::thread::sleep(Duration::from_millis(1500));
        let (b0, c0, t0) = (eth0_rx_bytes(server.id())?, cpu.ns()?, Instant::now());
        std::thread::sleep(CPU_WINDOW);
        let (b1, c1, dt) = (
            eth0_rx_bytes(server.id())?,
            cpu.ns()?,
            t0.elapsed().as_secs_f64(),
        );
        let cpu_s = c1.saturating_sub(c0) as f64 / 1e9;
        let gbit = b1.saturating_sub(b0) as f64 * 8.0 / 1e9;
        Ok((gbit / cpu_s.max(1e-9), cpu_s / dt))
    })();
    let out = client.wait_with_output().context("running iperf3 -c")?;
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
    let (gbit_per_cpu_s, cores) = window?;
    let json = String::from_utf8_lossy(&out.stdout);
    Ok(TcpRun {
        gbps: serde_like::received_bps(&json)? / 1e9,
        gbit_per_cpu_s,
        cores,
    })
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

fn tcp_once(hosts: &[Host]) -> Result<TcpRun> {
    let (c1, c2, ip2) = (&hosts[0].container, &hosts[1].container, hosts[1].logical);
    iperf(c1, c2, ip2)
}

fn udp_once(hosts: &[Host]) -> Result<udp::Rates> {
    let (c1, c2) = (&hosts[0].container, &hosts[1].container);
    let ip2: Ipv4Addr = hosts[1].logical.parse()?;
    let r = udp::flood(c1, c2, ip2, 9000, UDP_SECONDS)?;
    eprintln!(
        "      sent {:.0} kpps, received {:.0} kpps",
        r.sent_pps / 1e3,
        r.recv_pps / 1e3
    );
    Ok(r)
}

/// Run `f` on both sides `ROUNDS` times, alternating which side goes first.
fn alternate<T: Copy>(
    what: &str,
    agent: &[Host],
    kernel: &[Host],
    f: fn(&[Host]) -> Result<T>,
    fmt: fn(T) -> String,
) -> Result<(Vec<T>, Vec<T>)> {
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
    install_rules(&build, &agent_hosts)?;
    let kernel_hosts = topology(&format!("{tag}k"))?;
    step("configuring plain kernel IP forwarding in the second topology");
    kernel_routing(&kernel_hosts)?;

    step(&format!(
        "TCP, {ROUNDS} rounds of iperf3 ({TCP_SECONDS} s after 1 s of warm-up), alternating agent and kernel"
    ));
    let mut agent = Sample::default();
    let mut kernel = Sample::default();
    let (a, k) = alternate("TCP", &agent_hosts, &kernel_hosts, tcp_once, |r| {
        format!(
            "{:.2} Gbit/s, {:.2} Gbit per CPU-second, {:.2} cores busy",
            r.gbps, r.gbit_per_cpu_s, r.cores
        )
    })?;
    agent.set_tcp(&a);
    kernel.set_tcp(&k);
    step(&format!(
        "UDP 64-byte frames, {ROUNDS} rounds of {UDP_SECONDS} s (sendmmsg sender, arrivals counted by the destination kernel), alternating"
    ));
    let (a, k) = alternate("UDP", &agent_hosts, &kernel_hosts, udp_once, |r| {
        format!(
            "{:.0} kpps, {:.0} CPU ns per packet",
            r.recv_pps / 1e3,
            r.cpu_ns_per_pkt
        )
    })?;
    agent.set_udp(&a);
    kernel.set_udp(&k);

    step("BPF program cost per packet (BPF_PROG_TEST_RUN)");
    let cost = crate::util::output(crate::util::cargo().args([
        "run",
        "--release",
        "-q",
        "-p",
        "daolinet-tests",
        "--example",
        "prog_cost",
        "--",
        "1000000",
    ]))?;
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
    let (ae, ke) = (
        median(&agent.tcp_gbit_per_cpu_s),
        median(&kernel.tcp_gbit_per_cpu_s),
    );
    let (ac, kc) = (median(&agent.tcp_cores), median(&kernel.tcp_cores));
    let (au, ku) = (median(&agent.udp_pps), median(&kernel.udp_pps));
    let (auc, kuc) = (
        median(&agent.udp_kpps_per_core),
        median(&kernel.udp_kpps_per_core),
    );
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
    let (pt, pe, pu) = (
        paired(&agent.tcp_gbps, &kernel.tcp_gbps),
        paired(&agent.tcp_gbit_per_cpu_s, &kernel.tcp_gbit_per_cpu_s),
        paired(&agent.udp_pps, &kernel.udp_pps),
    );
    let puc = paired(&agent.udp_kpps_per_core, &kernel.udp_kpps_per_core);
    if kt <= 0.0 || ke <= 0.0 || ku <= 0.0 || kuc <= 0.0 {
        return Err(anyhow!("kernel routing measured zero"));
    }
    let date = crate::util::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .unwrap_or_default();
    let window = CPU_WINDOW.as_secs_f64();
    let row = |name: &str, unit: &str, a: f64, k: f64, p: f64, av: &[f64], kv: &[f64]| {
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.prec$}", prec = if *x >= 100.0 { 0 } else { 2 }))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let prec = if a >= 100.0 { 0 } else { 2 };
        format!(
            "| {name} ({unit}) | **{a:.prec$}** ({}) | **{k:.prec$}** ({}) | **{:.2}x** | {p:.2}x |\n",
            list(av),
            list(kv),
            a / k
        )
    };
    let kpps = |v: &[f64]| v.iter().map(|x| x / 1e3).collect::<Vec<_>>();
    let table = [
        row(
            "TCP throughput",
            "Gbit/s",
            at,
            kt,
            pt,
            &agent.tcp_gbps,
            &kernel.tcp_gbps,
        ),
        row(
            "TCP per CPU time",
            "Gbit per CPU-second",
            ae,
            ke,
            pe,
            &agent.tcp_gbit_per_cpu_s,
            &kernel.tcp_gbit_per_cpu_s,
        ),
        row(
            "UDP 64-byte rate",
            "kpps",
            au / 1e3,
            ku / 1e3,
            pu,
            &kpps(&agent.udp_pps),
            &kpps(&kernel.udp_pps),
        ),
        row(
            "UDP 64-byte per CPU time",
            "kpps per CPU core",
            auc,
            kuc,
            puc,
            &agent.udp_kpps_per_core,
            &kernel.udp_kpps_per_core,
        ),
    ]
    .concat();
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
         Per CPU time: the same runs divided by the CPU time of the threads that carry the \
         traffic, so that the machine's other work (which takes CPU from the transfer) drops \
         out. TCP: over {window:.0} s in the middle of each run, the bytes the destination \
         container's eth0 received per CPU-second run by every thread of the iperf3 client and \
         server and the ksoftirqd threads. UDP: datagrams received per CPU-second of the \
         sender thread and the ksoftirqd threads. On this kernel softirq time counts on the \
         thread it interrupts (no IRQ time accounting), and the veth, bridge, BPF and routing \
         work runs in softirq on these threads (`/proc/PID/task/TID/schedstat`).\n\n\
         | | daolinet-agent (runs) | kernel routing (runs) | ratio of the medians, agent / kernel | median of the per-round ratios |\n\
         |---|---|---|---|---|\n\
         {table}\n\
         CPU cores the TCP transfer's threads kept busy (median): agent {ac:.2}, kernel {kc:.2} \
         (of 2). Measured {} on a 2-core machine shared with other builds: absolute numbers \
         move from run to run; the ratios are what this benchmark tracks. Target: agent >= \
         1.0x.\n\n\
         Cost of one run of the TC program, measured by the kernel (BPF_PROG_TEST_RUN, mean \
         of 1M runs, best of 3; `cargo run --release -p daolinet-tests --example prog_cost`). \
         The subtable scenarios walk empty higher-priority subtables first; from 3 subtables \
         on, the exact-match cache answers for known flows.\n\n\
         | scenario | ns per packet |\n|---|---:|\n{cost_rows}",
        date.trim(),
    );
    eprintln!("{md}");
    crate::benchmarks::update_section("datapath", &md)
}
