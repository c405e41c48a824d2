//! `cargo xtask bench cluster`: one two-host topology (the demo's: two
//! hosts on an underlay bridge, one container each, veths everywhere) built
//! five ways and measured side by side in one run, rounds alternating
//! between the ways (the order rotating from round to round):
//!
//! - agent <-> agent: daolinet-agent on both hosts, daolinet-controller on
//!   the underlay; the hosts join by themselves (`--api`);
//! - OVS <-> OVS: Open vSwitch (userspace datapath, TSO on) on both hosts,
//!   joined with `daolictl host join-ovs`, the same controller;
//! - agent <-> OVS: one of each;
//! - kernel routing: plain IP forwarding between the hosts (proxy ARP
//!   towards the containers, /32 routes), no rewrite;
//! - VXLAN: a kernel VXLAN overlay as Flannel builds it (a VTEP per host,
//!   routes `onlink` via the peer VTEP, static neighbour and FDB entries,
//!   container MTU 1450).
//!
//! Figures: TCP throughput (iperf3) and TCP per CPU time (Gbit per
//! CPU-second of the transfer's threads, as the datapath benchmark
//! measures it: less exposed to the machine's other work), 64-byte UDP
//! packets/s (the datapath benchmark's sender), and first-packet latency
//! (the RTT of a ping that finds no state: DaoliNet flows expired,
//! neighbour caches flushed, so it includes ARP, and on the DaoliNet ways
//! the controller's round trip).
//! Ratios of agent <-> agent to the others go to BENCHMARKS.md.

use anyhow::{anyhow, bail, Context, Result};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::datapath::{iperf_with, TcpRun};
use super::median;
use super::udp;
use crate::cleanup;
use crate::demo::{
    prepare_with, start_agents_with, start_controller, state_dir, topology_with, Build, Host,
};
use crate::ovs::Ovs;
use crate::util::{output, run as sh, step, workspace_root};

const ROUNDS: usize = 5;
const UDP_SECONDS: f64 = 2.0;
/// Idle timeout of the DaoliNet flows: short, so that a first packet can
/// be measured again each round.
const IDLE: u64 = 2;
const CTL_IP: &str = "192.168.77.254";
const OF_PORT: u16 = 6653;
const API_PORT: u16 = 8080;
const BR: &str = "br-dl";

/// One way of connecting the two hosts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Way {
    AgentAgent,
    OvsOvs,
    AgentOvs,
    Kernel,
    Vxlan,
}

const WAYS: [Way; 5] = [
    Way::AgentAgent,
    Way::OvsOvs,
    Way::AgentOvs,
    Way::Kernel,
    Way::Vxlan,
];

impl Way {
    pub(super) fn name(self) -> &'static str {
        match self {
            Way::AgentAgent => "agent <-> agent",
            Way::OvsOvs => "OVS <-> OVS",
            Way::AgentOvs => "agent <-> OVS",
            Way::Kernel => "kernel routing",
            Way::Vxlan => "kernel VXLAN",
        }
    }

    /// Namespace tag suffix.
    fn tag(self) -> &'static str {
        match self {
            Way::AgentAgent => "a",
            Way::OvsOvs => "o",
            Way::AgentOvs => "m",
            Way::Kernel => "k",
            Way::Vxlan => "v",
        }
    }

    /// Whether host `i` runs Open vSwitch (DaoliNet ways).
    fn ovs_host(self, i: usize) -> bool {
        matches!((self, i), (Way::OvsOvs, _) | (Way::AgentOvs, 1))
    }

    fn daolinet(self) -> bool {
        matches!(self, Way::AgentAgent | Way::OvsOvs | Way::AgentOvs)
    }
}

/// One built topology.
pub(super) struct Built {
    pub(super) way: Way,
    pub(super) hosts: Vec<Host>,
    /// The underlay namespace (DaoliNet ways: the controller's).
    u: String,
    /// The controller's directory (DaoliNet ways).
    dir: Option<PathBuf>,
    /// The Open vSwitch daemons that forward (ovs-vswitchd, userspace
    /// datapath): their CPU time is the transfer's too.
    switches: Vec<u32>,
}

/// The measurements of one way.
#[derive(Default)]
struct Sample {
    tcp: Vec<TcpRun>,
    udp_pps: Vec<f64>,
    first_ms: Vec<f64>,
}

fn ip(args: &[&str]) -> Result<()> {
    sh(Command::new("ip").args(args))
}

fn in_ns(ns: &str, args: &[&str]) -> Result<()> {
    sh(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

/// `ip netns exec NS daolictl ARGS` against the controller of `b`.
fn daolictl(b: &Built, ns: &str, args: &[&str]) -> Result<Command> {
    let dir = b
        .dir
        .as_ref()
        .ok_or_else(|| anyhow!("{} has no controller", b.way.name()))?;
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns])
        .arg(workspace_root().join("target/release/daolictl"))
        .args(args)
        .env("DAOLI_API", format!("http://{CTL_IP}:{API_PORT}"))
        .env("DAOLI_TOKEN_FILE", dir.join("api-token"))
        .stdout(Stdio::piped());
    Ok(c)
}

/// Build topology `way`: namespaces, then its datapath.
pub(super) fn build(way: Way, b: &Build, tag: &str) -> Result<Built> {
    let t = format!("{tag}{}", way.tag());
    step(&format!("{}: building {t}*", way.name()));
    let hosts = topology_with(&t, false)?;
    for h in &hosts {
        in_ns(
            &h.container,
            &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
        )?;
    }
    let mut built = Built {
        way,
        hosts,
        u: format!("{t}u"),
        dir: None,
        switches: Vec::new(),
    };
    match way {
        Way::Kernel | Way::Vxlan => kernel_l3(&built.hosts, way == Way::Vxlan)?,
        _ => daolinet(&mut built, b)?,
    }
    Ok(built)
}

/// A controller on the underlay, the hosts joined by themselves, the two
/// containers registered.
fn daolinet(bt: &mut Built, b: &Build) -> Result<()> {
    let dir = state_dir(&bt.u);
    cleanup::add_path(&dir);
    std::fs::create_dir_all(&dir)?;
    start_controller(&bt.u, &dir, CTL_IP, OF_PORT, API_PORT, IDLE)?;
    bt.dir = Some(dir.clone());
    let token = dir.join("api-token").display().to_string();
    let api = format!("http://{CTL_IP}:{API_PORT}");
    for (i, h) in bt.hosts.iter().enumerate() {
        let name = format!("h{}", i + 1);
        if bt.way.ovs_host(i) {
            let ovs = Ovs::start(&h.ns, true)?;
            let db = ovs.db();
            output(&mut daolictl(
                bt,
                &h.ns,
                &[
                    "host",
                    "join-ovs",
                    "--bridge",
                    BR,
                    "--uplink",
                    "eth0",
                    "--controller",
                    &format!("tcp:{CTL_IP}:{OF_PORT}"),
                    "--name",
                    &name,
                    "--datapath",
                    "netdev",
                    "--ovs-db",
                    &db,
                ],
            )?)?;
            let pidfile = ovs.dir.join("ovs-vswitchd.pid");
            let pid = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .ok_or_else(|| anyhow!("no pid in {}", pidfile.display()))?;
            bt.switches.push(pid);
            ovs.vsctl(&[
                "add-port",
                BR,
                "c0",
                "--",
                "set",
                "interface",
                "c0",
                "ofport_request=1",
            ])?;
        } else {
            start_agents_with(b, std::slice::from_ref(h), |_| {
                (
                    [
                        "--controller",
                        &format!("tcp:{CTL_IP}:{OF_PORT}"),
                        "--api",
                        &api,
                        "--api-token-file",
                        &token,
                        "--host-name",
                        &name,
                        "--port",
                        "c0=1",
                    ]
                    .map(String::from)
                    .into(),
                    None,
                )
            })?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while output(&mut daolictl(bt, &bt.u, &["host", "show", &name])?).is_err() {
                if Instant::now() > deadline {
                    bail!("the agent of {} did not register", h.ns);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    output(&mut daolictl(
        bt,
        &bt.u,
        &["network", "create", "blue", "--subnet", "10.1.0.0/24"],
    )?)?;
    for (i, h) in bt.hosts.iter().enumerate() {
        output(&mut daolictl(
            bt,
            &bt.u,
            &[
                "container",
                "create",
                &format!("c{}", i + 1),
                "--network",
                "blue",
                "--host",
                &format!("h{}", i + 1),
                "--port",
                "1",
                "--ip",
                h.logical,
                "--mac",
                h.cmac,
            ],
        )?)?;
    }
    Ok(())
}

/// Kernel forwarding between the hosts: proxy ARP and /32 routes towards
/// the containers, and between the hosts either plain routes over the
/// underlay or a VXLAN overlay (Flannel's layout).
fn kernel_l3(hosts: &[Host], vxlan: bool) -> Result<()> {
    let vtep_mac = |i: usize| format!("02:00:00:00:aa:0{}", i + 1);
    let vtep_ip = |i: usize| format!("10.250.0.{}", i + 1);
    for (i, h) in hosts.iter().enumerate() {
        let (o, ns) = (&hosts[1 - i], h.ns.as_str());
        for k in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv4.conf.c0.proxy_arp=1",
            // Answer proxied ARP at once: the default delays each answer
            // by up to 0.8 s (random), which would be most of a first
            // packet's time.
            "net.ipv4.neigh.c0.proxy_delay=0",
        ] {
            in_ns(ns, &["sysctl", "-qw", k])?;
        }
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            &format!("{}/32", h.logical),
            "dev",
            "c0",
        ])?;
        if !vxlan {
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                &format!("{}/32", o.logical),
                "via",
                o.underlay_ip,
            ])?;
            continue;
        }
        ip(&[
            "-n",
            ns,
            "link",
            "add",
            "vx0",
            "type",
            "vxlan",
            "id",
            "42",
            "dstport",
            "4789",
            "local",
            h.underlay_ip,
            "dev",
            "eth0",
            "nolearning",
        ])?;
        ip(&["-n", ns, "link", "set", "vx0", "address", &vtep_mac(i)])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/32", vtep_ip(i)),
            "dev",
            "vx0",
        ])?;
        ip(&["-n", ns, "link", "set", "vx0", "up"])?;
        ip(&[
            "-n",
            ns,
            "neigh",
            "add",
            &vtep_ip(1 - i),
            "lladdr",
            &vtep_mac(1 - i),
            "dev",
            "vx0",
            "nud",
            "permanent",
        ])?;
        sh(Command::new("bridge").args([
            "-n",
            ns,
            "fdb",
            "append",
            &vtep_mac(1 - i),
            "dev",
            "vx0",
            "dst",
            o.underlay_ip,
        ]))?;
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            &format!("{}/32", o.logical),
            "via",
            &vtep_ip(1 - i),
            "dev",
            "vx0",
            "onlink",
        ])?;
        // The overlay's MTU, as Flannel sets it in the containers.
        ip(&["-n", ns, "link", "set", "c0", "mtu", "1450"])?;
        ip(&["-n", &h.container, "link", "set", "eth0", "mtu", "1450"])?;
    }
    Ok(())
}

/// Wait until the controller of a DaoliNet way lists no flow for the
/// containers (they expired on the switches).
fn wait_expired(b: &Built) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(IDLE * 6 + 10);
    loop {
        let out = output(&mut daolictl(b, &b.u, &["flows"])?)?;
        if !b.hosts.iter().any(|h| out.contains(h.logical)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{}: flows did not expire:\n{out}", b.way.name());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The RTT (ms) of a ping that finds no state on its path.
fn first_packet(b: &Built) -> Result<f64> {
    if b.way.daolinet() {
        wait_expired(b)?;
    }
    for h in &b.hosts {
        for ns in [&h.ns, &h.container] {
            ip(&["-n", ns, "neigh", "flush", "all"])?;
        }
    }
    let (c1, ip2) = (&b.hosts[0].container, b.hosts[1].logical);
    let out = output(
        Command::new("ip").args(["netns", "exec", c1, "ping", "-n", "-c", "1", "-W", "3", ip2]),
    )
    .with_context(|| format!("{}: the first ping got no reply", b.way.name()))?;
    out.split("time=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no time= in ping output: {out}"))
}

fn measure(b: &Built, s: &mut Sample) -> Result<()> {
    let (h1, h2) = (&b.hosts[0], &b.hosts[1]);
    let first = first_packet(b)?;
    let tcp = iperf_with(&h1.container, &h2.container, h2.logical, &b.switches)?;
    let dst: Ipv4Addr = h2.logical.parse()?;
    let udp = udp::flood(&h1.container, &h2.container, dst, 9000, UDP_SECONDS)?;
    eprintln!(
        "    {:<16} first packet {first:.3} ms, TCP {:.2} Gbit/s ({:.2} per CPU-second), UDP {:.0} kpps",
        b.way.name(),
        tcp.gbps,
        tcp.gbit_per_cpu_s,
        udp.recv_pps / 1e3
    );
    s.first_ms.push(first);
    s.tcp.push(tcp);
    s.udp_pps.push(udp.recv_pps);
    Ok(())
}

/// Run the cluster benchmark.
pub fn run(setup: bool) -> Result<()> {
    let (b, _guard, tag) = prepare_with(
        setup,
        "the cluster benchmark",
        "dlclus",
        &["daolinet-controller"],
    )?;
    let built: Vec<Built> = WAYS
        .iter()
        .map(|w| build(*w, &b, &tag))
        .collect::<Result<_>>()?;
    step(&format!(
        "{ROUNDS} rounds; each measures every way (order rotating): first packet, TCP (iperf3, 5 s after 1 s of warm-up), UDP 64-byte ({UDP_SECONDS} s)"
    ));
    let mut samples: Vec<Sample> = WAYS.iter().map(|_| Sample::default()).collect();
    for round in 0..ROUNDS {
        eprintln!("  round {}", round + 1);
        for k in 0..WAYS.len() {
            let i = (round + k) % WAYS.len();
            measure(&built[i], &mut samples[i])?;
        }
    }
    record(&samples)
}

fn record(samples: &[Sample]) -> Result<()> {
    let tcp = |s: &Sample| median(&s.tcp.iter().map(|r| r.gbps).collect::<Vec<_>>());
    let eff = |s: &Sample| median(&s.tcp.iter().map(|r| r.gbit_per_cpu_s).collect::<Vec<_>>());
    let udp = |s: &Sample| median(&s.udp_pps) / 1e3;
    let first = |s: &Sample| median(&s.first_ms);
    let a = &samples[0];
    let list = |v: Vec<f64>, prec: usize| {
        v.iter()
            .map(|x| format!("{x:.prec$}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut rows = String::new();
    for (w, s) in WAYS.iter().zip(samples) {
        rows.push_str(&format!(
            "| {} | **{:.2}** ({}) | {:.2}x | **{:.2}** ({}) | {:.2}x | **{:.0}** ({}) | {:.2}x | **{:.3}** ({}) |\n",
            w.name(),
            tcp(s),
            list(s.tcp.iter().map(|r| r.gbps).collect(), 2),
            tcp(a) / tcp(s).max(1e-9),
            eff(s),
            list(s.tcp.iter().map(|r| r.gbit_per_cpu_s).collect(), 2),
            eff(a) / eff(s).max(1e-9),
            udp(s),
            list(s.udp_pps.iter().map(|x| x / 1e3).collect(), 0),
            udp(a) / udp(s).max(1e-9),
            first(s),
            list(s.first_ms.clone(), 3),
        ));
    }
    let ratio = |i: usize, f: &dyn Fn(&Sample) -> f64| f(a) / f(&samples[i]).max(1e-9);
    let (vk, vv, vo) = (ratio(3, &tcp), ratio(4, &tcp), ratio(1, &tcp));
    let (ek, ev, eo) = (ratio(3, &eff), ratio(4, &eff), ratio(1, &eff));
    let met = |r: f64, t: f64| if r >= t { "met" } else { "not met" };
    let date = output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default();
    let md = format!(
        "## Cluster: one topology, five ways\n\n\
         Command: `cargo xtask bench cluster`. The datapath benchmark's topology (two hosts in \
         namespaces on an underlay bridge, one container each, veths everywhere) built five \
         ways in one run: daolinet-agent on both hosts; Open vSwitch 3.1 on both (userspace \
         datapath, userspace TSO on, joined with `daolictl host join-ovs`); one of each; \
         plain kernel routing (proxy ARP and /32 routes, no rewrite); and a kernel VXLAN \
         overlay as Flannel builds it (VTEP per host, `onlink` routes, static neighbour and \
         FDB entries, container MTU 1450). The DaoliNet ways run daolinet-controller on the \
         underlay, the hosts joined by themselves, flows installed on the first packet \
         (idle timeout {IDLE} s). {ROUNDS} rounds, each measuring every way, the order \
         rotating; medians, runs in brackets. TCP: one iperf3 stream, 5 s after 1 s of \
         warm-up. UDP: 64-byte frames, one sendmmsg sender, {UDP_SECONDS} s, counted by the \
         destination's UDP layer. TCP per CPU time: Gbit the destination container received \
         per CPU-second run by the iperf3 processes and the ksoftirqd threads, over 3 s in the \
         middle of each run (as in `bench datapath`; on the Open vSwitch ways ovs-vswitchd's \
         threads too): the machine's other work, which takes \
         CPU from the transfer, drops out. First packet: the RTT of a ping that finds no state (the \
         DaoliNet flows expired, every neighbour cache flushed): ARP included, and on the \
         DaoliNet ways the controller's PACKET_IN/PACKET_OUT round trips (ARP proxy, pair \
         flows).\n\n\
         | way | TCP Gbit/s | agent<->agent / this | TCP Gbit per CPU-second | agent<->agent / this | UDP 64-byte kpps | agent<->agent / this | first packet ms |\n\
         |---|---|---|---|---|---|---|---|\n\
         {rows}\n\
         Targets (TCP): agent <-> agent >= 1.0x kernel routing: **{vk:.2}x** ({}); >= 1.3x \
         VXLAN: **{vv:.2}x** ({}); >= 2.5x OVS <-> OVS: **{vo:.2}x** ({}). The same ratios \
         per CPU time: **{ek:.2}x**, **{ev:.2}x**, **{eo:.2}x**. Measured {} on a 2-core \
         machine shared with other builds: the absolute numbers move from run to run, the \
         ratios measured side by side are what this benchmark tracks.\n",
        met(vk, 1.0),
        met(vv, 1.3),
        met(vo, 2.5),
        date.trim()
    );
    eprintln!("{md}");
    crate::benchmarks::update_section("cluster", &md)
}
