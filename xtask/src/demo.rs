//! `cargo xtask demo`: two hosts joined by an underlay bridge, one
//! container behind each, an agent per host, the DaoliNet cross-host rules
//! installed through the agents' control sockets, traffic and counters
//! shown, everything removed at the end (also on failure, Ctrl-C or
//! SIGTERM; leftovers of a run killed outright are removed by the next one,
//! see [`crate::cleanup`]).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cleanup::{self, Guard};
use crate::util::{cargo, is_root, run as sh, step, workspace_root};

const BPFFS: &str = "/run/daolinet-demo-bpffs";
const GW: &str = "02:00:00:00:00:01";
const UPLINK: u32 = 65000; // daolinet-agent's default --uplink-ofport

/// One simulated host: namespace, underlay identity, its container.
pub(crate) struct Host {
    pub(crate) ns: String,
    pub(crate) mac: &'static str,
    pub(crate) underlay_ip: &'static str,
    pub(crate) container: String,
    pub(crate) logical: &'static str,
    pub(crate) physical: &'static str,
    pub(crate) cmac: &'static str,
}

fn ip(args: &[&str]) -> Result<()> {
    sh(Command::new("ip").args(args))
}

pub(crate) fn agent(bin: &Path, ns: &str, state: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns])
        .arg(bin)
        .args(["--bpffs", BPFFS, "--state-dir"])
        .arg(state)
        .args(args);
    c
}

/// The agent binary and the BPF object a lab runs.
pub(crate) struct Build {
    pub(crate) bin: PathBuf,
    pub(crate) obj: PathBuf,
}

/// What every lab needs first: root check, setup, the BPF object and the
/// agent (release), the bpffs for pins, and the cleanup guard (installed
/// before anything is created, so Ctrl-C from here on cleans up). Returns
/// the guard and this run's tag (prefix of every namespace it creates).
pub(crate) fn prepare(setup: bool, what: &str, prefix: &str) -> Result<(Build, Guard, String)> {
    if !is_root() {
        bail!("{what} creates network namespaces and loads BPF programs: run it as root");
    }
    if setup {
        crate::setup::run()?;
    }
    let obj = crate::build_ebpf::run(true)?;
    step("building daolinet-agent (release)");
    sh(cargo().args(["build", "--release", "-p", "daolinet-agent"]))?;
    let bin = workspace_root().join("target/release/daolinet-agent");
    ensure_bpffs()?;
    let guard = cleanup::guard()?;
    let tag = cleanup::claim_tag(prefix, BPFFS)?;
    Ok((Build { bin, obj }, guard, tag))
}

/// Everything the demo needs: [`prepare`], the namespace topology and one
/// running agent per host. Returns the build, the cleanup guard and the
/// hosts.
pub(crate) fn lab(setup: bool, what: &str, prefix: &str) -> Result<(Build, Guard, Vec<Host>)> {
    let (build, guard, tag) = prepare(setup, what, prefix)?;
    let hosts = topology(&tag)?;
    start_agents(&build, &hosts)?;
    Ok((build, guard, hosts))
}

/// Run the demo.
pub fn run(setup: bool) -> Result<()> {
    let (build, _guard, hosts) = lab(setup, "the demo", "dldemo")?;
    let bin = &build.bin;
    let (c1, c2) = (&hosts[0].container, &hosts[1].container);

    step("no flow yet: the first packet is punted, nothing crosses");
    let crossed = Command::new("ip")
        .args([
            "netns",
            "exec",
            c1,
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            hosts[1].logical,
        ])
        .status()?
        .success();
    if crossed {
        bail!("a packet crossed without any rule installed");
    }

    install_rules(bin, &hosts)?;

    step(&format!(
        "ping {} -> {} across hosts",
        hosts[0].logical, hosts[1].logical
    ));
    sh(Command::new("ip").args([
        "netns",
        "exec",
        c1,
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        hosts[1].logical,
    ]))?;

    step("TCP throughput across hosts (iperf3, 3 s)");
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            c2,
            "iperf3",
            "-s",
            "-1",
            "-B",
            hosts[1].logical,
        ])
        .stdout(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    let r = sh(Command::new("ip").args([
        "netns",
        "exec",
        c1,
        "iperf3",
        "-c",
        hosts[1].logical,
        "-t",
        "3",
    ]));
    let _ = server.kill();
    let _ = server.wait();
    r?;

    for h in &hosts {
        step(&format!("flows and ports on {}", h.ns));
        let state = state_dir(&h.ns);
        sh(&mut agent(bin, &h.ns, &state, &["flows"]))?;
        sh(&mut agent(bin, &h.ns, &state, &["ports"]))?;
    }
    step("demo done");
    Ok(())
}

/// Mount the bpffs the demo and benchmark agents pin their maps in.
pub(crate) fn ensure_bpffs() -> Result<()> {
    std::fs::create_dir_all(BPFFS)?;
    let mounted = std::fs::read_to_string("/proc/self/mounts")?
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(BPFFS));
    if !mounted {
        sh(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    }
    Ok(())
}

/// The agent state directory of host namespace `ns`.
pub(crate) fn state_dir(ns: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/{ns}-state"))
}

/// Create namespace `n`, registered for cleanup.
fn netns(n: &str) -> Result<()> {
    // Registered first: a half-created namespace is removed too.
    cleanup::add_namespace(n);
    ip(&["netns", "add", n])
}

/// Build the namespaces, all named `<tag>...`: an underlay bridge, two
/// hosts, one container per host.
pub(crate) fn topology(tag: &str) -> Result<Vec<Host>> {
    step(&format!(
        "creating the topology {tag}*: underlay bridge, 2 hosts, 1 container per host"
    ));
    let u = format!("{tag}u");
    netns(&u)?;
    ip(&["-n", &u, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &u, "link", "set", "br0", "up"])?;
    let hosts = [
        Host {
            ns: format!("{tag}h1"),
            mac: "02:00:00:00:01:01",
            underlay_ip: "192.168.77.1",
            container: format!("{tag}c1"),
            logical: "10.1.0.2",
            physical: "172.31.0.2",
            cmac: "02:00:00:00:00:0a",
        },
        Host {
            ns: format!("{tag}h2"),
            mac: "02:00:00:00:01:02",
            underlay_ip: "192.168.77.2",
            container: format!("{tag}c2"),
            logical: "10.1.0.3",
            physical: "172.31.0.3",
            cmac: "02:00:00:00:00:0b",
        },
    ];
    for (i, h) in hosts.iter().enumerate() {
        let peer = format!("u{i}");
        for n in [&h.ns, &h.container] {
            netns(n)?;
        }
        ip(&[
            "-n", &h.ns, "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns", &u,
        ])?;
        ip(&["-n", &h.ns, "link", "set", "eth0", "address", h.mac])?;
        ip(&[
            "-n",
            &h.ns,
            "addr",
            "add",
            &format!("{}/24", h.underlay_ip),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &h.ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &u, "link", "set", &peer, "master", "br0", "up"])?;
        ip(&[
            "-n",
            &h.ns,
            "link",
            "add",
            "c0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &h.container,
        ])?;
        ip(&["-n", &h.ns, "link", "set", "c0", "up"])?;
        ip(&["-n", &h.container, "link", "set", "eth0", "address", h.cmac])?;
        ip(&[
            "-n",
            &h.container,
            "addr",
            "add",
            &format!("{}/24", h.logical),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &h.container, "link", "set", "eth0", "up"])?;
        ip(&["-n", &h.container, "link", "set", "lo", "up"])?;
        let other = &hosts[1 - i];
        ip(&[
            "-n",
            &h.container,
            "neigh",
            "add",
            other.logical,
            "lladdr",
            GW,
            "dev",
            "eth0",
        ])?;
    }

    Ok(hosts.into())
}

/// Start one agent per host (uplink eth0, container port c0 = 1).
pub(crate) fn start_agents(build: &Build, hosts: &[Host]) -> Result<()> {
    step("starting one daolinet-agent per host");
    for h in hosts {
        let state = state_dir(&h.ns);
        cleanup::add_path(&state);
        cleanup::add_path(Path::new(BPFFS).join(format!("daolinet/tmp_{}_state", h.ns)));
        let child = agent(
            &build.bin,
            &h.ns,
            &state,
            &["run", "--uplink", "eth0", "--port", "c0=1"],
        )
        .env("DAOLINET_BPF_OBJECT", &build.obj)
        .stderr(Stdio::null())
        .spawn()
        .context("starting the agent")?;
        cleanup::add_child(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !state.join("agent.sock").exists() {
            if Instant::now() > deadline {
                bail!("the agent in {} did not start", h.ns);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Install the DaoliNet pair of flows on both hosts through the agents.
pub(crate) fn install_rules(bin: &Path, hosts: &[Host]) -> Result<()> {
    step("installing the DaoliNet pair of flows (logical <-> physical rewrite, no tunnel)");
    for (i, h) in hosts.iter().enumerate() {
        let o = &hosts[1 - i];
        let out = format!(
            "cookie=0x7,priority=100,in_port=1,ip,nw_src={},nw_dst={} actions=set_field:{}->eth_src,set_field:{}->eth_dst,set_field:{}->ip_src,set_field:{}->ip_dst,output:{UPLINK}",
            h.logical, o.logical, h.mac, o.mac, h.physical, o.physical
        );
        let back = format!(
            "cookie=0x7,priority=100,in_port={UPLINK},ip,nw_src={},nw_dst={} actions=set_field:{GW}->eth_src,set_field:{}->eth_dst,set_field:{}->ip_src,set_field:{}->ip_dst,output:1",
            o.physical, h.physical, h.cmac, o.logical, h.logical
        );
        let state = state_dir(&h.ns);
        for f in [out, back] {
            eprintln!("    {}: {f}", h.ns);
            let st = agent(bin, &h.ns, &state, &["rule", "add", &f])
                .stdout(Stdio::null())
                .status()?;
            if !st.success() {
                bail!("installing a rule failed");
            }
        }
    }

    Ok(())
}
