//! `cargo xtask demo`: the product's main job on network namespaces, in a
//! mixed cluster. Two hosts joined by an underlay bridge with
//! `daolinet-controller` on it: h1 runs `daolinet-agent` (the eBPF
//! OpenFlow 1.3 switch), h2 runs Open vSwitch (userspace datapath). Both
//! join by themselves: the agent registers its host (`--api`), h2 runs
//! `daolictl host join-ovs`. Networks and containers come from `daolictl`;
//! no flow is installed by hand: the first packet goes to the controller
//! (PACKET_IN), which installs the pair flows on both hosts and sends it on
//! (PACKET_OUT). Then the flows on both kinds of host, a first TCP
//! connection from the OVS side, counters after traffic, a disconnect /
//! connect policy, isolation between networks, a container moving from the
//! OVS host to the agent host (same IP and MAC), and idle expiry.
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

const GW: &str = "02:00:00:00:00:01";
const UPLINK: u32 = 65000; // daolinet-agent's default --uplink-ofport

/// One simulated host: namespace, underlay identity, its container.
#[derive(Clone)]
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
pub(crate) fn agent(build: &Build, ns: &str, state: &Path, args: &[&str]) -> Command {
    let bin = &build.bin;
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns])
        .arg(bin.file_name().unwrap_or(bin.as_os_str()))
        .env("PATH", path_with(bin))
        .arg("--bpffs")
        .arg(&build.bpffs)
        .arg("--state-dir")
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
#[derive(Clone)]
pub(crate) struct Build {
    pub(crate) bin: PathBuf,
    /// This run's own bpffs (unmounted at cleanup).
    pub(crate) bpffs: PathBuf,
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
pub(crate) fn prepare_with(
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
    let guard = cleanup::guard()?;
    let tag = cleanup::claim_tag(prefix)?;
    let bpffs = cleanup::mount_bpffs(&tag)?;
    Ok((Build { bin, bpffs }, guard, tag))
}

/// The controller's address on the underlay bridge: it runs in the
/// underlay namespace, like a controller on a cluster's management network.
const CTL_IP: &str = "192.168.77.254";
/// The controller's OpenFlow port.
const OF_PORT: u16 = 6653;
/// The controller's REST API port (inside the demo's underlay namespace).
const API_PORT: u16 = 8080;
/// Idle timeout of the pair flows in the demo (the product's default is 10 s).
const IDLE: u64 = 4;
/// The Open vSwitch host's bridge.
const BR: &str = "br-dl";

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
    for (h, gw) in hosts.iter().map(|h| (&h.container, "10.1.0.1")) {
        ip(&["-n", h, "route", "add", "default", "via", gw])?;
    }
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
        build: build.clone(),
        u,
        hosts,
        red,
        dir,
        api: format!("http://{CTL_IP}:{API_PORT}"),
        logs: Vec::new(),
        ovs: None,
    };
    let res = demo.run(&build);
    not_interrupted()?;
    if res.is_err() {
        demo.print_logs();
    }
    res?;
    step(&format!(
        "demo done in {:.0} s after the builds: an agent host and an Open vSwitch host joined by themselves; first packets through the controller, pair flows with rewriting on both kinds of host, counters, policy, isolation, migration from the OVS host to the agent host and expiry all checked",
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

/// The running demo: controller, the agent host (h1) and the Open vSwitch
/// host (h2), who is where.
struct Demo {
    /// Where daolinet-controller and daolictl are.
    bindir: PathBuf,
    /// The agent and this run's bpffs.
    build: Build,
    /// The underlay namespace (bridge and controller).
    u: String,
    hosts: Vec<Host>,
    /// The container in network red (on host 2, port 2).
    red: String,
    /// The controller's store, token and the logs.
    dir: PathBuf,
    api: String,
    logs: Vec<PathBuf>,
    /// Host 2's Open vSwitch.
    ovs: Option<crate::ovs::Ovs>,
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
        self.join_hosts(build)?;
        let (pa, pb) = self.create_model()?;
        let (c1, c2) = (
            self.hosts[0].container.clone(),
            self.hosts[1].container.clone(),
        );
        let (a, b) = (self.hosts[0].logical, self.hosts[1].logical);
        // The agent shows IPv4 rewrites as nw_dst, Open vSwitch as ip_dst.
        let pairs = [
            PairFlow {
                host: 0,
                what: "h1 (agent): c1 -> c2, logical to physical".into(),
                needles: vec![
                    format!("nw_src={a},nw_dst={b}"),
                    format!("set_field:{pb}->nw_dst"),
                    format!("output:{UPLINK}"),
                ],
            },
            PairFlow {
                host: 1,
                what: "h2 (OVS): c1 -> c2 arriving, physical back to logical".into(),
                needles: vec![
                    format!("nw_src={pa},nw_dst={pb}"),
                    format!("set_field:{b}->ip_dst"),
                    "output:1".into(),
                ],
            },
            PairFlow {
                host: 1,
                what: "h2 (OVS): c2 -> c1, logical to physical".into(),
                needles: vec![
                    format!("nw_src={b},nw_dst={a}"),
                    format!("set_field:{pa}->ip_dst"),
                    format!("output:{UPLINK}"),
                ],
            },
            PairFlow {
                host: 0,
                what: "h1 (agent): c2 -> c1 arriving, physical back to logical".into(),
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
            "first ping c1 ({a}, on the agent host h1) -> c2 ({b}, on the Open vSwitch host h2): the controller answers c1's ARP, gets the first packet as PACKET_IN, installs the pair flows on both hosts and sends the packet on with PACKET_OUT"
        ));
        if !ping(&c1, b, &["-c", "1", "-W", "3"])? {
            bail!("the first ping c1 -> c2 got no reply");
        }
        step("h1's agent counted it: PACKET_INs sent (ARP, first packet), PACKET_OUTs executed");
        show(&mut self.agent(0, &["status"]))?;
        let st = output(&mut self.agent(0, &["status", "--json"]))?;
        let v: serde_json::Value = serde_json::from_str(&st)
            .with_context(|| format!("`daolinet-agent status --json` output: {st}"))?;
        let (pin, pout) = (
            v["counters"]["packet_in"].as_u64().unwrap_or(0),
            v["counters"]["packet_out"].as_u64().unwrap_or(0),
        );
        if pin == 0 || pout == 0 {
            bail!("h1's agent reports {pin} PACKET_IN and {pout} PACKET_OUT after the first ping");
        }

        step(&format!(
            "the pair flows now on both hosts, the same wire format on the agent (daolinet-agent flows) and on Open vSwitch (ovs-ofctl dump-flows): logical IPs <-> physical IPs {pa} / {pb}, host MACs on the underlay, no tunnel; idle_timeout={IDLE}"
        ));
        self.check_pairs(&pairs, true)?;
        show(&mut self.daolictl(&["flows"]))?;

        step("the first packet from the Open vSwitch side too: a TCP connection c2 -> c1 (its first SYN goes through the controller; connect time well under the 1 s of a retransmitted SYN)");
        self.wait_pairs_gone(&pairs, Duration::from_secs(IDLE + 5))?;
        let t = self.first_connect(&c2, &c1, a)?;
        println!("      connected in {:.1} ms", t.as_secs_f64() * 1000.0);

        step("traffic through the flows, no controller involved: ping, then 2 s of TCP (iperf3) from the agent host to the OVS host");
        if !ping(&c2, a, &["-c", "3", "-i", "0.2", "-W", "2"])? {
            bail!("ping c2 -> c1 failed");
        }
        let mut server = Command::new("ip")
            .args(["netns", "exec", &c2, "iperf3", "-s", "-1", "-B", b])
            .stdout(Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?;
        self.wait_listening(&c2, 5201)?;
        let r = sh(Command::new("ip").args([
            "netns", "exec", &c1, "iperf3", "-c", b, "-t", "2", "-f", "g",
        ]));
        let _ = server.kill();
        let _ = server.wait();
        r?;
        step("flow counters on both hosts: the datapaths counted every packet of the connection");
        let f0 = self.show_flows(0)?;
        let f1 = self.show_flows(1)?;
        let count = |f: &str, p: &PairFlow| {
            f.lines()
                .find(|l| p.needles.iter().all(|n| l.contains(n.as_str())))
                .map(n_packets)
                .unwrap_or(0)
        };
        let (n0, n1) = (count(&f0, &pairs[0]), count(&f1, &pairs[1]));
        if n0 < 1000 || n1 < 100 {
            bail!("after iperf3 the c1 -> c2 flows counted {n0} packets on h1 and {n1} on h2 (expected thousands; OVS counts TSO segments)");
        }

        step("policy: `daolictl disconnect c1:c2` deletes the pair's flows on both hosts (by cookie) and the ping stops");
        show(&mut self.daolictl(&["disconnect", "c1:c2"]))?;
        self.wait_pairs_gone(&pairs, Duration::from_secs(5))?;
        if ping(&c1, b, &["-c", "2", "-i", "0.3", "-W", "1"])? {
            bail!("c1 still reaches c2 after `daolictl disconnect c1:c2`");
        }
        step("h1 now: no pair flows, only a short drop flow the controller installed for the denied packets");
        self.show_flows(0)?;

        step("`daolictl connect c1:c2` (it returns once both switches applied it): allowed again, the very next packet goes through");
        show(&mut self.daolictl(&["connect", "c1:c2"]))?;
        if !ping(&c1, b, &["-c", "1", "-W", "2"])? {
            bail!("the first packet c1 -> c2 after `daolictl connect c1:c2` was lost");
        }
        self.check_pairs(&pairs, false)?;

        step("isolation: c3 (10.2.0.2, network red, on the OVS host h2) cannot reach c1 (network blue): the controller denies it");
        if ping(&self.red, a, &["-c", "2", "-i", "0.3", "-W", "1"])? {
            bail!("c3 (network red) reached c1 (network blue)");
        }
        step("h2 (Open vSwitch): the controller's answer to c3 is a short denial flow (hard_timeout) for its punted packets; on Open vSwitch it punts through a rate-limited meter (meter:1) instead of dropping, so that a copy OVS's datapath caches past a later `connect` cannot eat the first allowed packet: the controller drops what is still denied");
        let f = self.show_flows(1)?;
        if !f
            .lines()
            .any(|l| l.contains("in_port=2") && l.ends_with("actions=meter:1,CONTROLLER:65535"))
        {
            bail!("no denial flow for c3 (port 2) on h2 after the denied ping");
        }

        self.migrate()?;

        step(&format!(
            "idle expiry: no traffic for {IDLE} s, both hosts remove the pair flows (FLOW_REMOVED to the controller)"
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

    /// A TCP connection from container `from` to `ip`:5201 in `to`, timed.
    fn first_connect(&self, from: &str, to: &str, ip: &str) -> Result<Duration> {
        let mut server = Command::new("ip")
            .args(["netns", "exec", to, "iperf3", "-s", "-1", "-B", ip])
            .stdout(Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?;
        self.wait_listening(to, 5201)?;
        let t = Instant::now();
        let r = output(Command::new("ip").args([
            "netns",
            "exec",
            from,
            "iperf3",
            "-c",
            ip,
            "-n",
            "1K",
            "--connect-timeout",
            "3000",
        ]));
        let took = t.elapsed();
        let _ = server.kill();
        let _ = server.wait();
        r?;
        Ok(took)
    }

    /// Wait until something listens on TCP `port` in namespace `ns`.
    fn wait_listening(&self, ns: &str, port: u16) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = output(Command::new("ip").args([
                "netns",
                "exec",
                ns,
                "ss",
                "-Hltn",
                &format!("sport = :{port}"),
            ]))?;
            if !out.trim().is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nothing listens on port {port} in {ns}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Move c2 from the Open vSwitch host to the agent host, keeping its IP
    /// and MAC.
    fn migrate(&mut self) -> Result<()> {
        let (c1, c2) = (
            self.hosts[0].container.clone(),
            self.hosts[1].container.clone(),
        );
        let (a, b, mac) = (
            self.hosts[0].logical,
            self.hosts[1].logical,
            self.hosts[1].cmac,
        );
        step("migration across host kinds: c2 moves from the Open vSwitch host h2 to the agent host h1 (port 2), keeping its IP and MAC");
        show(&mut self.daolictl(&["container", "move", "c2", "--host", "h1", "--port", "2"]))?;
        let ovs = self
            .ovs
            .as_ref()
            .ok_or_else(|| anyhow!("no Open vSwitch on h2"))?;
        ovs.vsctl(&["del-port", BR, "c0"])?;
        ip(&["-n", &self.hosts[1].ns, "link", "del", "c0"])?;
        ip(&[
            "-n",
            &self.hosts[0].ns,
            "link",
            "add",
            "c2m",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &c2,
        ])?;
        ip(&["-n", &self.hosts[0].ns, "link", "set", "c2m", "up"])?;
        ip(&["-n", &c2, "link", "set", "eth0", "address", mac])?;
        ip(&["-n", &c2, "addr", "add", &format!("{b}/24"), "dev", "eth0"])?;
        ip(&["-n", &c2, "link", "set", "eth0", "up"])?;
        ip(&["-n", &c2, "route", "add", "default", "via", "10.1.0.1"])?;
        show(&mut self.agent(0, &["port", "add", "c2m", "--ofport", "2"]))?;
        if !ping(&c1, b, &["-c", "1", "-W", "3"])? {
            bail!("c1 does not reach c2 after c2 moved to h1");
        }
        if !ping(&c2, a, &["-c", "1", "-W", "3"])? {
            bail!("c2 does not reach c1 after moving to h1");
        }
        step("c2 on h1 now: a same-host pair c1 <-> c2 (gateway MAC, no rewrite), same IP and MAC as before");
        let f = self.show_flows(0)?;
        if !f
            .lines()
            .any(|l| l.contains(&format!("nw_dst={b}")) && l.contains("output:2"))
        {
            bail!("no flow to c2 on port 2 of h1 after the move");
        }
        Ok(())
    }

    /// `ip netns exec U daolictl ARGS` against this demo's controller.
    fn daolictl(&self, args: &[&str]) -> Command {
        self.daolictl_in(&self.u, args)
    }

    /// `ip netns exec NS daolictl ARGS` against this demo's controller.
    fn daolictl_in(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, "daolictl"])
            .args(args)
            .env("PATH", path_with(&self.bindir.join("daolictl")))
            .env("DAOLI_API", &self.api)
            .env("DAOLI_TOKEN_FILE", self.dir.join("api-token"));
        c
    }

    /// `daolinet-agent ARGS` against host `i`'s agent.
    fn agent(&self, i: usize, args: &[&str]) -> Command {
        let ns = &self.hosts[i].ns;
        agent(&self.build, ns, &state_dir(ns), args)
    }

    /// The flows of host `i`: the agent's, or Open vSwitch's bridge.
    fn flows_cmd(&self, i: usize) -> Result<Command> {
        match (i, &self.ovs) {
            (1, Some(o)) => Ok(o.ofctl("dump-flows", BR)),
            (1, None) => bail!("no Open vSwitch on h2"),
            _ => Ok(self.agent(i, &["flows"])),
        }
    }

    fn flows(&self, i: usize) -> Result<String> {
        output(&mut self.flows_cmd(i)?)
    }

    fn show_flows(&self, i: usize) -> Result<String> {
        show(&mut self.flows_cmd(i)?)
    }

    fn start_controller(&mut self) -> Result<()> {
        step(&format!(
            "starting daolinet-controller in {} (the underlay), OpenFlow on {CTL_IP}:{OF_PORT}, REST API on {CTL_IP}:{API_PORT}, store in {}",
            self.u,
            self.dir.display()
        ));
        self.logs.push(self.dir.join("controller.log"));
        start_controller(&self.u, &self.dir, CTL_IP, OF_PORT, API_PORT, IDLE)
    }

    /// Both hosts join by themselves: the agent registers its host when it
    /// starts; the Open vSwitch host runs `daolictl host join-ovs`.
    fn join_hosts(&mut self, build: &Build) -> Result<()> {
        let token = self.dir.join("api-token");
        step(&format!(
            "h1 joins by itself: daolinet-agent (the eBPF OpenFlow 1.3 switch) with --api registers its host (datapath id, the uplink's IP and MAC, uplink port) with the controller; the API token is the controller's ({})",
            token.display()
        ));
        let log = self.dir.join("agent-h1.log");
        self.logs.push(log.clone());
        let (api, tok) = (self.api.clone(), token.display().to_string());
        start_agents_with(build, &self.hosts[..1], |_| {
            (
                [
                    "--controller",
                    &format!("tcp:{CTL_IP}:{OF_PORT}"),
                    "--api",
                    &api,
                    "--api-token-file",
                    &tok,
                    "--host-name",
                    "h1",
                    "--listen",
                    "ptcp:6634",
                    "--port",
                    "c0=1",
                ]
                .map(String::from)
                .into(),
                Some(log.clone()),
            )
        })?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while output(&mut self.daolictl(&["host", "show", "h1"])).is_err() {
            if Instant::now() > deadline {
                bail!("the agent did not register h1 (log: {})", log.display());
            }
            std::thread::sleep(Duration::from_millis(200));
        }

        let h2 = self.hosts[1].ns.clone();
        step(&format!(
            "h2 is an Open vSwitch host (userspace datapath, TSO on; ovsdb-server and ovs-vswitchd in {h2}); it joins with one command, run on it: bridge {BR} (OpenFlow 1.3, fail_mode=secure, the controller), the uplink eth0 in it, the host's IP moved to the bridge, the host registered"
        ));
        let ovs = crate::ovs::Ovs::start(&h2, true)?;
        self.logs.push(ovs.dir.join("ovs-vswitchd.log"));
        let db = ovs.db();
        self.ovs = Some(ovs);
        show(&mut self.daolictl_in(
            &h2,
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
                "h2",
                "--datapath",
                "netdev",
                "--ovs-db",
                &db,
            ],
        ))?;
        show(Command::new("ip").args(["-n", &h2, "-br", "addr"]))?;
        step("the controller knows both hosts now, registered by themselves");
        show(&mut self.daolictl(&["host", "show"]))?;
        // Connected once the controller has replaced the agent's (empty)
        // table with its base flows (join-ovs waited for the bridge's).
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.flows(0)?.trim().is_empty() {
            if Instant::now() > deadline {
                bail!("the agent on h1 got no flows from the controller");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Networks and containers (the containers' ports plugged into the
    /// OVS bridge on h2); returns the physical IPs the controller gave c1
    /// and c2.
    fn create_model(&self) -> Result<(String, String)> {
        step(&format!(
            "networks and containers with daolictl (REST API {}; daolictl runs in {} with DAOLI_API and DAOLI_TOKEN_FILE set)",
            self.api, self.u
        ));
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
        let ovs = self
            .ovs
            .as_ref()
            .ok_or_else(|| anyhow!("no Open vSwitch on h2"))?;
        step(&format!(
            "on h2, c2's and c3's ports join bridge {BR} as OpenFlow ports 1 and 2"
        ));
        for (iface, port) in [("c0", "1"), ("c1", "2")] {
            let req = format!("ofport_request={port}");
            let mut c = ovs.cmd("ovs-vsctl");
            c.arg(format!("--db={}", ovs.db())).args([
                "add-port",
                BR,
                iface,
                "--",
                "set",
                "interface",
                iface,
                &req,
            ]);
            show(&mut c)?;
        }
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

/// Start daolinet-controller in namespace `u` (its underlay) on `ip`: the
/// OpenFlow server on `of_port`, the REST API on `api_port`, the store,
/// the API token and the log (`controller.log`) in `dir`, pair flows idle
/// after `idle` s. Returns once it printed its addresses.
pub(crate) fn start_controller(
    u: &str,
    dir: &Path,
    ip_addr: &str,
    of_port: u16,
    api_port: u16,
    idle: u64,
) -> Result<()> {
    ip(&[
        "-n",
        u,
        "addr",
        "add",
        &format!("{ip_addr}/24"),
        "dev",
        "br0",
    ])?;
    ip(&["-n", u, "link", "set", "lo", "up"])?;
    let bin = workspace_root().join("target/release/daolinet-controller");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", u, "daolinet-controller", "run"])
        .args(["--listen", &format!("{ip_addr}:{of_port}"), "--api"])
        .arg(format!("{ip_addr}:{api_port}"))
        .arg("--store")
        .arg(dir.join("controller.redb"))
        .args(["--idle-timeout", &idle.to_string()])
        .env("PATH", path_with(&bin))
        .env("NO_COLOR", "1");
    eprintln!("    $ {}", display(&cmd));
    let log = dir.join("controller.log");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting daolinet-controller")?;
    let stdout = child.stdout.take();
    cleanup::add_child(child);
    // The controller prints `api: http://ADDR` then `openflow: ADDR`; the
    // rest of its stdout is drained by this thread.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Some(out) = stdout else { return };
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut api, mut of) = (false, false);
    while !(api && of) {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| {
                anyhow!(
                    "daolinet-controller did not print its addresses (log: {})",
                    log.display()
                )
            })?;
        println!("      {line}");
        api |= line.starts_with("api: ");
        of |= line.starts_with("openflow: ");
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
pub(crate) fn topology_with(tag: &str, static_arp: bool) -> Result<Vec<Host>> {
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
pub(crate) fn start_agents_with(
    build: &Build,
    hosts: &[Host],
    extra: impl Fn(usize) -> (Vec<String>, Option<PathBuf>),
) -> Result<()> {
    for (i, h) in hosts.iter().enumerate() {
        let (args, log) = extra(i);
        let state = state_dir(&h.ns);
        cleanup::add_path(&state);
        let mut cmd = agent(build, &h.ns, &state, &["run", "--uplink", "eth0"]);
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
pub(crate) fn install_rules(build: &Build, hosts: &[Host]) -> Result<()> {
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
            let st = agent(build, &h.ns, &state, &["rule", "add", &f])
                .stdout(Stdio::null())
                .status()?;
            if !st.success() {
                bail!("installing a rule failed");
            }
        }
    }

    Ok(())
}
