//! `cargo xtask demo`: the product's main job on network namespaces. Two
//! hosts joined by an underlay bridge, a container behind each (plus one in
//! another network), `daolinet-controller` on the underlay, hosts and
//! containers registered with `daolictl`, and one `daolinet-agent` (the
//! eBPF OpenFlow 1.3 switch) per host connected to the controller. No flow
//! is installed by hand: the first packet goes to the controller
//! (PACKET_IN), which installs the pair flows on both hosts and sends it on
//! (PACKET_OUT). Then the flows, their counters after traffic, a
//! disconnect / connect policy, isolation between networks and idle expiry.
//! Every step is checked (the demo doubles as a smoke test): a step that
//! does not happen fails the demo with a message and the logs' last lines.
//! Everything is removed at the end (also on failure, Ctrl-C or SIGTERM;
//! leftovers of a run killed outright are removed by the next one, see
//! [`crate::cleanup`]).

use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cleanup::{self, Guard};
use crate::util::{cargo, display, is_root, output, run as sh, step, workspace_root};

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

/// `ip netns exec NS daolinet-agent --bpffs .. --state-dir STATE ARGS`,
/// with the binary's directory first on PATH (so the printed command reads
/// like what a user types).
pub(crate) fn agent(bin: &Path, ns: &str, state: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns])
        .arg(bin.file_name().unwrap_or(bin.as_os_str()))
        .env("PATH", path_with(bin))
        .args(["--bpffs", BPFFS, "--state-dir"])
        .arg(state)
        .args(args);
    c
}

/// `$PATH` with the directory of `bin` first.
fn path_with(bin: &Path) -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = bin.parent().map(Path::to_path_buf).into_iter().collect();
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// The agent binary a lab runs (it carries its BPF object).
pub(crate) struct Build {
    pub(crate) bin: PathBuf,
}

/// What every lab needs first: root check, setup, the BPF object (built in
/// the open, then embedded in the agent) and the agent (release), the bpffs for pins, and the cleanup guard (installed
/// before anything is created, so Ctrl-C from here on cleans up). Returns
/// the guard and this run's tag (prefix of every namespace it creates).
pub(crate) fn prepare(setup: bool, what: &str, prefix: &str) -> Result<(Build, Guard, String)> {
    prepare_with(setup, what, prefix, &[])
}

/// [`prepare`], building the release binaries of `also` together with the
/// agent (one cargo run: shared dependencies are built once).
fn prepare_with(
    setup: bool,
    what: &str,
    prefix: &str,
    also: &[&str],
) -> Result<(Build, Guard, String)> {
    if !is_root() {
        bail!("{what} creates network namespaces and loads BPF programs: run it as root");
    }
    if setup {
        crate::setup::run()?;
    }
    crate::build_ebpf::run(true)?;
    let mut names = vec!["daolinet-agent"];
    names.extend(also);
    step(&format!("building {} (release)", names.join(", ")));
    let mut build = cargo();
    build.args(["build", "--release"]);
    for n in &names {
        build.args(["-p", n]);
    }
    sh(&mut build)?;
    let bin = workspace_root().join("target/release/daolinet-agent");
    ensure_bpffs()?;
    let guard = cleanup::guard()?;
    let tag = cleanup::claim_tag(prefix, BPFFS)?;
    Ok((Build { bin }, guard, tag))
}

/// The controller's address on the underlay bridge: it runs in the
/// underlay namespace, like a controller on a cluster's management network.
const CTL_IP: &str = "192.168.77.254";
/// The controller's OpenFlow port.
const OF_PORT: u16 = 6653;
/// Idle timeout of the pair flows in the demo (the product's default is 10 s).
const IDLE: u64 = 4;

/// Run the demo.
pub fn run(setup: bool) -> Result<()> {
    let (build, _guard, tag) = prepare_with(setup, "the demo", "dldemo", &["daolinet-controller"])?;
    let started = Instant::now();
    let hosts = topology_with(&tag, false)?;
    let red = format!("{tag}c3");
    step(&format!(
        "a third container {red} behind {}, port c1 (it will be in another network)",
        hosts[1].ns
    ));
    netns(&red)?;
    veth_container(&hosts[1].ns, "c1", &red, "10.2.0.2/24", "02:00:00:00:00:0c")?;
    ip(&["-n", &red, "route", "add", "default", "via", "10.2.0.1"])?;
    step("IPv6 off in the containers (DaoliNet routes IPv4; the controller would drop IPv6 with short deny flows)");
    for c in hosts.iter().map(|h| &h.container).chain([&red]) {
        sh(Command::new("ip").args([
            "netns",
            "exec",
            c,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
        ]))?;
    }
    let u = format!("{tag}u");
    let dir = state_dir(&u);
    cleanup::add_path(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut demo = Demo {
        bindir: workspace_root().join("target/release"),
        agent_bin: build.bin.clone(),
        u,
        hosts,
        red,
        dir,
        api: String::new(),
        logs: Vec::new(),
    };
    let res = demo.run(&build);
    not_interrupted()?;
    if res.is_err() {
        demo.print_logs();
    }
    res?;
    step(&format!(
        "demo done in {:.0} s after the builds: first packets through the controller, pair flows with rewriting, counters, policy, isolation and expiry all checked",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Add a container namespace `ns` behind port `port` of host `host_ns`.
fn veth_container(host_ns: &str, port: &str, ns: &str, addr: &str, mac: &str) -> Result<()> {
    ip(&[
        "-n", host_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
    ])?;
    ip(&["-n", host_ns, "link", "set", port, "up"])?;
    ip(&["-n", ns, "link", "set", "eth0", "address", mac])?;
    ip(&["-n", ns, "addr", "add", addr, "dev", "eth0"])?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])
}

/// Print a command, run it, print its output indented; fail (with its
/// stderr) when it fails.
fn show(cmd: &mut Command) -> Result<String> {
    eprintln!("    $ {}", display(cmd));
    let out = output(cmd);
    not_interrupted()?;
    let out = out?;
    for l in out.lines() {
        println!("      {l}");
    }
    Ok(out)
}

/// Ping from namespace `ns`, output shown; true when a reply came back.
fn ping(ns: &str, dst: &str, args: &[&str]) -> Result<bool> {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "ping"]).args(args).arg(dst);
    eprintln!("    $ {}", display(&c));
    let st = c.status().context("running ping");
    not_interrupted()?;
    Ok(st?.success())
}

/// After Ctrl-C the commands fail because the cleanup removes what they
/// use (or they got the signal too): stop, without judging their result.
fn not_interrupted() -> Result<()> {
    if cleanup::interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// The `n_packets=` of a flow line.
fn n_packets(line: &str) -> u64 {
    line.split([',', ' '])
        .find_map(|f| f.trim().strip_prefix("n_packets="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The running demo: controller, agents, who is where.
struct Demo {
    /// Where daolinet-controller and daolictl are.
    bindir: PathBuf,
    agent_bin: PathBuf,
    /// The underlay namespace (bridge and controller).
    u: String,
    hosts: Vec<Host>,
    /// The container in network red (on host 2, port 2).
    red: String,
    /// The controller's store, token and the logs.
    dir: PathBuf,
    api: String,
    logs: Vec<PathBuf>,
}

/// A pair flow of c1 <-> c2 on a host: the match part that names it.
struct PairFlow {
    host: usize,
    what: String,
    needles: Vec<String>,
}

impl Demo {
    fn run(&mut self, build: &Build) -> Result<()> {
        self.start_controller()?;
        let (pa, pb) = self.register()?;
        self.start_agents(build)?;
        let (c1, c2) = (
            self.hosts[0].container.clone(),
            self.hosts[1].container.clone(),
        );
        let (a, b) = (self.hosts[0].logical, self.hosts[1].logical);
        let pairs = [
            PairFlow {
                host: 0,
                what: "h1: c1 -> c2, logical to physical".into(),
                needles: vec![
                    format!("nw_src={a},nw_dst={b}"),
                    format!("set_field:{pb}->nw_dst"),
                    format!("output:{UPLINK}"),
                ],
            },
            PairFlow {
                host: 1,
                what: "h2: c1 -> c2 arriving, physical back to logical".into(),
                needles: vec![
                    format!("nw_src={pa},nw_dst={pb}"),
                    format!("set_field:{b}->nw_dst"),
                    "output:1".into(),
                ],
            },
            PairFlow {
                host: 1,
                what: "h2: c2 -> c1, logical to physical".into(),
                needles: vec![
                    format!("nw_src={b},nw_dst={a}"),
                    format!("set_field:{pa}->nw_dst"),
                    format!("output:{UPLINK}"),
                ],
            },
            PairFlow {
                host: 0,
                what: "h1: c2 -> c1 arriving, physical back to logical".into(),
                needles: vec![
                    format!("nw_src={pb},nw_dst={pa}"),
                    format!("set_field:{a}->nw_dst"),
                    "output:1".into(),
                ],
            },
        ];

        step("before any traffic: h1 holds only the controller's base flows (table-miss and the physical pool to the controller, host traffic uplink <-> LOCAL), nothing for c1 <-> c2");
        let f = self.show_flows(0)?;
        if f.contains(&format!("nw_dst={b}")) {
            bail!("h1 already has a flow towards {b} before any traffic");
        }

        step(&format!(
            "first ping c1 ({a}, on h1) -> c2 ({b}, on h2): the controller answers c1's ARP, gets the first packet as PACKET_IN, installs the pair flows on both hosts and sends the packet on with PACKET_OUT"
        ));
        if !ping(&c1, b, &["-c", "1", "-W", "3"])? {
            bail!("the first ping c1 -> c2 got no reply");
        }
        step("h1's agent counted it: PACKET_INs sent (ARP, first packet), PACKET_OUTs executed");
        let st = show(&mut self.agent(0, &["status"]))?;
        let v: serde_json::Value = serde_json::from_str(&st)
            .with_context(|| format!("`daolinet-agent status` output: {st}"))?;
        let (pin, pout) = (
            v["counters"]["packet_in"].as_u64().unwrap_or(0),
            v["counters"]["packet_out"].as_u64().unwrap_or(0),
        );
        if pin == 0 || pout == 0 {
            bail!("h1's agent reports {pin} PACKET_IN and {pout} PACKET_OUT after the first ping");
        }

        step(&format!(
            "the pair flows now on both agents: logical IPs <-> physical IPs {pa} / {pb}, host MACs on the underlay, no tunnel; idle_timeout={IDLE}"
        ));
        self.check_pairs(&pairs, true)?;
        show(&mut self.daolictl(&["flows"]))?;

        step("traffic through the flows, no controller involved: ping, then 2 s of TCP (iperf3)");
        if !ping(&c2, a, &["-c", "3", "-i", "0.2", "-W", "2"])? {
            bail!("ping c2 -> c1 failed");
        }
        let mut server = Command::new("ip")
            .args(["netns", "exec", &c2, "iperf3", "-s", "-1", "-B", b])
            .stdout(Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?;
        std::thread::sleep(Duration::from_millis(500));
        let r = sh(Command::new("ip").args([
            "netns", "exec", &c1, "iperf3", "-c", b, "-t", "2", "-f", "g",
        ]));
        let _ = server.kill();
        let _ = server.wait();
        r?;
        step("flow counters: the datapath counted every packet of the connection");
        let f = self.show_flows(0)?;
        let n = f
            .lines()
            .find(|l| pairs[0].needles.iter().all(|n| l.contains(n.as_str())))
            .map(n_packets)
            .unwrap_or(0);
        if n < 1000 {
            bail!("the c1 -> c2 flow on h1 counted {n} packets after iperf3 (expected thousands)");
        }

        step("policy: `daolictl disconnect c1:c2` deletes the pair's flows on both hosts (by cookie) and the ping stops");
        show(&mut self.daolictl(&["disconnect", "c1:c2"]))?;
        self.wait_pairs_gone(&pairs, Duration::from_secs(5))?;
        if ping(&c1, b, &["-c", "2", "-i", "0.3", "-W", "1"])? {
            bail!("c1 still reaches c2 after `daolictl disconnect c1:c2`");
        }
        step("h1 now: no pair flows, only a short drop flow the controller installed for the denied packets");
        self.show_flows(0)?;

        step("`daolictl connect c1:c2`: allowed again, the next first packet installs new pair flows");
        show(&mut self.daolictl(&["connect", "c1:c2"]))?;
        if !ping(&c1, b, &["-c", "3", "-i", "0.3", "-W", "2"])? {
            bail!("c1 does not reach c2 after `daolictl connect c1:c2`");
        }
        self.check_pairs(&pairs, false)?;

        step("isolation: c3 (10.2.0.2, network red, on h2) cannot reach c1 (network blue): the controller denies it");
        if ping(&self.red, a, &["-c", "2", "-i", "0.3", "-W", "1"])? {
            bail!("c3 (network red) reached c1 (network blue)");
        }
        step("h2: the controller's answer to c3 is a drop flow (hard_timeout) for its punted packets");
        let f = self.show_flows(1)?;
        if !f
            .lines()
            .any(|l| l.contains("in_port=2") && l.ends_with("actions=drop"))
        {
            bail!("no drop flow for c3 (port 2) on h2 after the denied ping");
        }

        step(&format!(
            "idle expiry: no traffic for {IDLE} s, the agents remove the pair flows (FLOW_REMOVED to the controller)"
        ));
        self.wait_pairs_gone(&pairs, Duration::from_secs(IDLE + 5))?;
        for i in 0..self.hosts.len() {
            self.show_flows(i)?;
        }
        let ctl = show(&mut self.daolictl(&["flows"]))?;
        if ctl.contains(&format!("ipv4_dst={b}")) {
            bail!("the controller still lists a flow towards {b} after idle expiry");
        }
        Ok(())
    }

    /// `ip netns exec U daolictl ARGS` against this demo's controller.
    fn daolictl(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.u, "daolictl"])
            .args(args)
            .env("PATH", path_with(&self.bindir.join("daolictl")))
            .env("DAOLI_API", &self.api)
            .env("DAOLI_TOKEN_FILE", self.dir.join("api-token"));
        c
    }

    /// `daolinet-agent ARGS` against host `i`'s agent.
    fn agent(&self, i: usize, args: &[&str]) -> Command {
        let ns = &self.hosts[i].ns;
        agent(&self.agent_bin, ns, &state_dir(ns), args)
    }

    fn flows(&self, i: usize) -> Result<String> {
        output(&mut self.agent(i, &["flows"]))
    }

    fn show_flows(&self, i: usize) -> Result<String> {
        show(&mut self.agent(i, &["flows"]))
    }

    fn start_controller(&mut self) -> Result<()> {
        step(&format!(
            "starting daolinet-controller in {} (the underlay), OpenFlow on {CTL_IP}:{OF_PORT}, store in {}",
            self.u,
            self.dir.display()
        ));
        ip(&[
            "-n",
            &self.u,
            "addr",
            "add",
            &format!("{CTL_IP}/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &self.u, "link", "set", "lo", "up"])?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.u, "daolinet-controller", "run"])
            .args(["--listen", &format!("{CTL_IP}:{OF_PORT}"), "--api"])
            .args(["127.0.0.1:0", "--store"])
            .arg(self.dir.join("controller.redb"))
            .args(["--idle-timeout", &IDLE.to_string()])
            .env("PATH", path_with(&self.bindir.join("daolinet-controller")))
            .env("NO_COLOR", "1");
        eprintln!("    $ {}", display(&cmd));
        let log = self.dir.join("controller.log");
        self.logs.push(log.clone());
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting daolinet-controller")?;
        let stdout = child.stdout.take();
        cleanup::add_child(child);
        // The controller prints `api: http://ADDR` then `openflow: ADDR`;
        // the rest of its stdout is drained by this thread.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let Some(out) = stdout else { return };
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut of = None;
        while self.api.is_empty() || of.is_none() {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .map_err(|_| {
                    anyhow!(
                        "daolinet-controller did not print its addresses (log: {})",
                        log.display()
                    )
                })?;
            println!("      {line}");
            if let Some(a) = line.strip_prefix("api: ") {
                self.api = a.to_string();
            } else if let Some(o) = line.strip_prefix("openflow: ") {
                of = Some(o.to_string());
            }
        }
        Ok(())
    }

    /// Register hosts, networks and containers; returns the physical IPs
    /// the controller gave c1 and c2.
    fn register(&self) -> Result<(String, String)> {
        step(&format!(
            "registering hosts, networks and containers with daolictl (REST API {}, token {})",
            self.api,
            self.dir.join("api-token").display()
        ));
        eprintln!(
            "    (daolictl runs in {} where the API listens; DAOLI_API and DAOLI_TOKEN_FILE are set)",
            self.u
        );
        for (i, h) in self.hosts.iter().enumerate() {
            let name = format!("h{}", i + 1);
            let dpid = format!("{}", i + 1);
            let uplink = UPLINK.to_string();
            show(&mut self.daolictl(&[
                "host",
                "add",
                &name,
                "--dpid",
                &dpid,
                "--ip",
                h.underlay_ip,
                "--mac",
                h.mac,
                "--uplink-port",
                &uplink,
            ]))?;
        }
        show(&mut self.daolictl(&["network", "create", "blue", "--subnet", "10.1.0.0/24"]))?;
        show(&mut self.daolictl(&["network", "create", "red", "--subnet", "10.2.0.0/24"]))?;
        for (i, h) in self.hosts.iter().enumerate() {
            let (id, host) = (format!("c{}", i + 1), format!("h{}", i + 1));
            show(&mut self.daolictl(&[
                "container",
                "create",
                &id,
                "--network",
                "blue",
                "--host",
                &host,
                "--port",
                "1",
                "--ip",
                h.logical,
                "--mac",
                h.cmac,
            ]))?;
        }
        show(&mut self.daolictl(&[
            "container",
            "create",
            "c3",
            "--network",
            "red",
            "--host",
            "h2",
            "--port",
            "2",
            "--ip",
            "10.2.0.2",
            "--mac",
            "02:00:00:00:00:0c",
        ]))?;
        show(&mut self.daolictl(&["container", "show"]))?;
        let physical = |id: &str| -> Result<String> {
            let out = output(&mut self.daolictl(&["-o", "json", "container", "show", id]))?;
            let v: serde_json::Value = serde_json::from_str(&out)
                .with_context(|| format!("daolictl -o json container show {id}: {out}"))?;
            v["physical_ip"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("container {id} has no physical_ip: {out}"))
        };
        Ok((physical("c1")?, physical("c2")?))
    }

    fn start_agents(&mut self, build: &Build) -> Result<()> {
        step(&format!(
            "starting one daolinet-agent per host: an eBPF OpenFlow 1.3 switch connected to tcp:{CTL_IP}:{OF_PORT}"
        ));
        let logs: Vec<PathBuf> = (1..=self.hosts.len())
            .map(|i| self.dir.join(format!("agent-h{i}.log")))
            .collect();
        self.logs.extend(logs.iter().cloned());
        start_agents_with(build, &self.hosts, |i| {
            let mut args: Vec<String> = [
                "--datapath-id".to_string(),
                format!("{}", i + 1),
                "--controller".into(),
                format!("tcp:{CTL_IP}:{OF_PORT}"),
                "--listen".into(),
                "ptcp:6634".into(),
                "--port".into(),
                "c0=1".into(),
            ]
            .into();
            if i == 1 {
                args.extend(["--port".to_string(), "c1=2".to_string()]);
            }
            (args, logs.get(i).cloned())
        })?;
        // Connected once the controller has replaced the (empty) table
        // with its base flows.
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..self.hosts.len() {
            while self.flows(i)?.trim().is_empty() {
                if Instant::now() > deadline {
                    bail!(
                        "the agent on {} got no flows from the controller",
                        self.hosts[i].ns
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }

    /// Check that every pair flow is installed (printing the flows of both
    /// hosts when `print`).
    fn check_pairs(&self, pairs: &[PairFlow], print: bool) -> Result<()> {
        let flows: Vec<String> = (0..self.hosts.len())
            .map(|i| {
                if print {
                    self.show_flows(i)
                } else {
                    self.flows(i)
                }
            })
            .collect::<Result<_>>()?;
        for p in pairs {
            let found = flows[p.host]
                .lines()
                .any(|l| p.needles.iter().all(|n| l.contains(n.as_str())));
            if !found {
                bail!(
                    "missing pair flow ({}): no line with {:?} in\n{}",
                    p.what,
                    p.needles,
                    flows[p.host]
                );
            }
        }
        Ok(())
    }

    /// Wait until no pair flow is left on any host.
    fn wait_pairs_gone(&self, pairs: &[PairFlow], within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let flows: Vec<String> = (0..self.hosts.len())
                .map(|i| self.flows(i))
                .collect::<Result<_>>()?;
            let left: Vec<&str> = pairs
                .iter()
                .filter(|p| {
                    flows[p.host]
                        .lines()
                        .any(|l| l.contains(p.needles[0].as_str()))
                })
                .map(|p| p.what.as_str())
                .collect();
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "pair flows still installed after {} s: {}",
                    within.as_secs(),
                    left.join("; ")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// On failure: the end of the controller's and agents' logs.
    fn print_logs(&self) {
        for p in &self.logs {
            let Ok(text) = std::fs::read_to_string(p) else {
                continue;
            };
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("    --- last lines of {} ---", p.display());
            for l in &lines[lines.len().saturating_sub(15)..] {
                eprintln!("    {l}");
            }
        }
    }
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
/// hosts, one container per host; each container has a static ARP entry
/// for the other pointing at the gateway MAC (no controller answers ARP).
pub(crate) fn topology(tag: &str) -> Result<Vec<Host>> {
    topology_with(tag, true)
}

/// [`topology`], with or without the containers' static ARP entries.
fn topology_with(tag: &str, static_arp: bool) -> Result<Vec<Host>> {
    step(&format!(
        "creating the topology {tag}*: underlay bridge {tag}u, hosts {tag}h1 and {tag}h2, one container each"
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
        // The agent's passive OpenFlow listener binds 127.0.0.1.
        ip(&["-n", &h.ns, "link", "set", "lo", "up"])?;
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
        if !static_arp {
            continue;
        }
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
    start_agents_with(build, hosts, |_| {
        (vec!["--port".into(), "c0=1".into()], None)
    })
}

/// Start one agent per host with uplink eth0 and the arguments (and stderr
/// log file) `extra` gives for host `i`; wait for their control sockets.
fn start_agents_with(
    build: &Build,
    hosts: &[Host],
    extra: impl Fn(usize) -> (Vec<String>, Option<PathBuf>),
) -> Result<()> {
    for (i, h) in hosts.iter().enumerate() {
        let (args, log) = extra(i);
        let state = state_dir(&h.ns);
        cleanup::add_path(&state);
        cleanup::add_path(Path::new(BPFFS).join(format!("daolinet/tmp_{}_state", h.ns)));
        let mut cmd = agent(&build.bin, &h.ns, &state, &["run", "--uplink", "eth0"]);
        cmd.args(&args);
        if log.is_some() {
            cmd.env("NO_COLOR", "1");
        }
        let stderr = match &log {
            Some(p) => Stdio::from(
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
            ),
            None => Stdio::null(),
        };
        if log.is_some() {
            eprintln!("    $ {}", display(&cmd));
        }
        let child = cmd.stderr(stderr).spawn().context("starting the agent")?;
        let pid = child.id();
        cleanup::add_child(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !state.join("agent.sock").exists() {
            if Instant::now() > deadline || exited(pid) {
                let hint = log
                    .as_ref()
                    .map(|p| format!(" (log: {})", p.display()))
                    .unwrap_or_default();
                bail!("the agent in {} did not start{hint}", h.ns);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// True when our child `pid` has exited (a zombie not reaped yet).
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next().map(|st| st == "Z"))
        })
        .unwrap_or(true)
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
