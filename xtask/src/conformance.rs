//! `cargo xtask conformance`: os-ken's OpenFlow switch test tool (the
//! `os_ken/tests/switch/tester.py` suite with its `of13/` JSON cases,
//! written by Ryu's authors, not by us) against daolinet-agent and, as the
//! baseline, against Open vSwitch (userspace datapath), in one run.
//!
//! Topology per target, in two namespaces of this run:
//!
//! ```text
//!   <tag><t>t: target switch          <tag><t>s: tester switch + controller
//!   p1 (OpenFlow port 1)  <--veth-->  p1 (port 1)   Open vSwitch (netdev),
//!   p2 (OpenFlow port 2)  <--veth-->  p2 (port 2)   datapath id 2
//!   p3 (OpenFlow port 3)  <--veth-->  p3 (port 3)
//!   ctl 10.255.0.2/30     <--veth-->  ctl 10.255.0.1/30, the tool on :6653
//!   up0 <-> up0p: the agent's uplink (it needs one; no traffic on it)
//! ```
//!
//! For each case the tool installs the case's flows (groups, meters) on
//! the target, checks them back with flow (group, meter) stats, has the
//! tester send a frame into target port 1 and checks what arrives at the
//! tester (or at the controller as PACKET_IN). IPv6 is disabled in both
//! namespaces so that the kernel sends nothing on these links by itself.
//! The tool's own results are classified per suite as passed, wrong (the
//! switch accepted the case but the flow stats or the packet were wrong, or
//! nothing came) and refused (the switch answered OFPT_ERROR, or did not
//! answer a request).

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cleanup;
use crate::demo::{prepare, state_dir};
use crate::util::{display, have, output, run as sh, step, workspace_root};

/// Which switch is tested.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// daolinet-agent (the eBPF datapath).
    Agent,
    /// Open vSwitch, userspace datapath (`datapath_type=netdev`): the baseline.
    Ovs,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Agent => "daolinet-agent",
            Target::Ovs => "Open vSwitch (netdev)",
        }
    }
    fn letter(self) -> char {
        match self {
            Target::Agent => 'a',
            Target::Ovs => 'o',
        }
    }
}

/// A directory of the tool's `of13/` cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Suite {
    /// `of13/match`: one match field per file (714 cases).
    Match,
    /// `of13/action`: actions and set-fields (226 cases).
    Action,
    /// `of13/group`: group types (15 cases).
    Group,
    /// `of13/meter`: meter bands, 30 s of traffic per case (36 cases).
    Meter,
}

impl Suite {
    fn dir(self) -> &'static str {
        match self {
            Suite::Match => "match",
            Suite::Action => "action",
            Suite::Group => "group",
            Suite::Meter => "meter",
        }
    }
    const ALL: [Suite; 4] = [Suite::Match, Suite::Action, Suite::Group, Suite::Meter];
}

/// The tool's controller port, inside the tester namespace.
const OF_PORT: u16 = 6653;
const CTL_TESTER: &str = "10.255.0.1";
const CTL_TARGET: &str = "10.255.0.2";
/// Datapath ids the tool expects (its defaults).
const TARGET_DPID: &str = "0000000000000001";
const TESTER_DPID: &str = "0000000000000002";
/// The whole suite takes about an hour on Open vSwitch (the meter cases
/// send traffic for 30 s each); beyond this something is stuck.
const RUN_LIMIT: Duration = Duration::from_secs(3 * 3600);

/// One case's result as the tool reported it.
#[derive(Debug, Clone, serde::Deserialize)]
struct CaseResult {
    file: Option<String>,
    test: String,
    ok: bool,
    error: Option<String>,
    /// The traffic of a group or meter case, as the wrapper measured it.
    #[serde(default)]
    throughput: Option<Throughput>,
}

/// What the tester sent in a group or meter case (the wrapper's record).
#[derive(Debug, Clone, Default, serde::Deserialize)]
struct Throughput {
    /// Packets sent into the target over the tool's window / what its
    /// nominal rate would have sent.
    offered_fraction: Option<f64>,
    /// True when the check was judged on what the tester really sent: a
    /// group's split on each port's share of the packets offered, a DSCP
    /// remark band's output on what it received (see the wrapper).
    #[serde(default)]
    scaled: bool,
}

/// The range of the offered fractions of one suite's cases.
#[derive(Debug, Default, Clone, Copy)]
struct Offered {
    min: f64,
    max: f64,
    cases: usize,
    scaled: usize,
}

impl Offered {
    fn add(&mut self, t: &Throughput) {
        let Some(f) = t.offered_fraction else {
            return;
        };
        if self.cases == 0 || f < self.min {
            self.min = f;
        }
        if self.cases == 0 || f > self.max {
            self.max = f;
        }
        self.cases += 1;
        self.scaled += usize::from(t.scaled);
    }
}

/// How a case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Passed,
    /// Accepted, but the flow stats or the packet were wrong, or nothing came.
    Wrong,
    /// OFPT_ERROR, or a request the switch did not answer.
    Refused,
}

fn classify(r: &CaseResult) -> Outcome {
    if r.ok {
        return Outcome::Passed;
    }
    let e = r.error.as_deref().unwrap_or("");
    if e.contains("OFPErrorMsg")
        || e.contains("request timeout")
        || e.contains("Disconnected")
        || e.contains("internal error")
    {
        Outcome::Refused
    } else {
        Outcome::Wrong
    }
}

/// Counts per suite.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    passed: usize,
    wrong: usize,
    refused: usize,
}

impl Counts {
    fn add(&mut self, o: Outcome) {
        match o {
            Outcome::Passed => self.passed += 1,
            Outcome::Wrong => self.wrong += 1,
            Outcome::Refused => self.refused += 1,
        }
    }
    fn total(&self) -> usize {
        self.passed + self.wrong + self.refused
    }
}

fn suite_of(file: Option<&str>) -> Option<Suite> {
    let f = file?;
    Suite::ALL
        .into_iter()
        .find(|s| f.starts_with(&format!("{}:", s.dir())))
}

/// The tool's results of one target, by suite.
struct Report {
    target: Target,
    counts: BTreeMap<Suite, Counts>,
    /// Offered fractions of the throughput cases, by suite.
    offered: BTreeMap<Suite, Offered>,
    results: PathBuf,
    minutes: f64,
}

fn ip(args: &[&str]) -> Result<()> {
    sh(Command::new("ip").args(args))
}

fn netns(n: &str) -> Result<()> {
    cleanup::add_namespace(n);
    ip(&["netns", "add", n])?;
    for key in ["all", "default"] {
        sh(Command::new("ip").args([
            "netns",
            "exec",
            n,
            "sysctl",
            "-q",
            "-w",
            &format!("net.ipv6.conf.{key}.disable_ipv6=1"),
        ]))?;
    }
    ip(&["-n", n, "link", "set", "lo", "up"])
}

/// Build the two namespaces of one target run; returns (target, tester).
fn topology(tag: &str, t: Target) -> Result<(String, String)> {
    let (tn, sn) = (
        format!("{tag}{}t", t.letter()),
        format!("{tag}{}s", t.letter()),
    );
    step(&format!(
        "{}: namespaces {tn} (target) and {sn} (tester, os-ken), ports 1-3 linked",
        t.name()
    ));
    netns(&tn)?;
    netns(&sn)?;
    for p in ["p1", "p2", "p3"] {
        ip(&[
            "-n", &tn, "link", "add", p, "type", "veth", "peer", "name", p, "netns", &sn,
        ])?;
        ip(&["-n", &tn, "link", "set", p, "up"])?;
        ip(&["-n", &sn, "link", "set", p, "up"])?;
    }
    ip(&[
        "-n", &tn, "link", "add", "ctl", "type", "veth", "peer", "name", "ctl", "netns", &sn,
    ])?;
    ip(&[
        "-n",
        &tn,
        "addr",
        "add",
        &format!("{CTL_TARGET}/30"),
        "dev",
        "ctl",
    ])?;
    ip(&[
        "-n",
        &sn,
        "addr",
        "add",
        &format!("{CTL_TESTER}/30"),
        "dev",
        "ctl",
    ])?;
    ip(&["-n", &tn, "link", "set", "ctl", "up"])?;
    ip(&["-n", &sn, "link", "set", "ctl", "up"])?;
    Ok((tn, sn))
}

/// Start ovsdb-server and ovs-vswitchd in `ns` with bridge br0 over ports
/// p1-p3 (OpenFlow 1-3), connected to the tool at `controller`.
fn start_ovs(ns: &str, dpid: &str, controller: &str) -> Result<()> {
    let ovs = crate::ovs::Ovs::start(ns, false)?;
    let db = format!("--db={}", ovs.db());
    let ovs = |prog: &str| ovs.cmd(prog);
    let mut args: Vec<String> = [
        &db,
        "--timeout=20",
        "add-br",
        "br0",
        "--",
        "set",
        "bridge",
        "br0",
        "datapath_type=netdev",
        "protocols=OpenFlow13",
        "fail_mode=secure",
        &format!("other-config:datapath-id={dpid}"),
        "other-config:disable-in-band=true",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (i, p) in ["p1", "p2", "p3"].iter().enumerate() {
        args.extend(
            [
                "--",
                "add-port",
                "br0",
                p,
                "--",
                "set",
                "interface",
                p,
                &format!("ofport_request={}", i + 1),
            ]
            .map(String::from),
        );
    }
    sh(ovs("ovs-vsctl").args(&args))?;
    sh(ovs("ovs-vsctl").args([&db, "--timeout=20", "set-controller", "br0", controller]))?;
    Ok(())
}

/// Start daolinet-agent in `ns` as the target.
fn start_agent(build: &crate::demo::Build, ns: &str, log: &Path) -> Result<()> {
    ip(&[
        "-n", ns, "link", "add", "up0", "type", "veth", "peer", "name", "up0p",
    ])?;
    ip(&["-n", ns, "link", "set", "up0", "up"])?;
    ip(&["-n", ns, "link", "set", "up0p", "up"])?;
    let state = state_dir(ns);
    cleanup::add_path(&state);
    let mut cmd = crate::demo::agent(
        build,
        ns,
        &state,
        &[
            "run",
            "--uplink",
            "up0",
            "--port",
            "p1=1",
            "--port",
            "p2=2",
            "--port",
            "p3=3",
            "--datapath-id",
            TARGET_DPID,
            "--controller",
            &format!("tcp:{CTL_TESTER}:{OF_PORT}"),
            // The meter cases send 200-20000 packets/s; the tool counts
            // what arrives, not PACKET_INs, but nothing else should limit.
            "--packet-in-rate",
            "0",
        ],
    );
    cmd.env("NO_COLOR", "1").env("RUST_LOG", "info");
    eprintln!("    $ {}", display(&cmd));
    let child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("starting the agent")?;
    cleanup::add_child(child);
    Ok(())
}

/// The tool's case directory with only `suites` in it (symbolic links),
/// and of those only the files whose path contains `filter`.
fn cases(osken: &Path, suites: &[Suite], filter: Option<&str>, tag: &str) -> Result<PathBuf> {
    let src = osken.join("tests/switch/of13");
    let dir = PathBuf::from(format!("/tmp/{tag}-cases"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    cleanup::add_path(&dir);
    let mut n = 0;
    for s in suites {
        let mut stack = vec![src.join(s.dir())];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
                let p = e?.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let rel = p.strip_prefix(&src).unwrap_or(&p);
                let name = rel.to_string_lossy();
                if !name.ends_with(".json") || filter.is_some_and(|f| !name.contains(f)) {
                    continue;
                }
                let link = dir.join(name.replace('/', "_"));
                std::os::unix::fs::symlink(&p, &link)
                    .with_context(|| format!("linking {}", p.display()))?;
                n += 1;
            }
        }
    }
    if n == 0 {
        bail!("no case file matches");
    }
    Ok(dir)
}

/// Run the tool in the tester namespace until it ends; parse its results.
fn run_tool(t: Target, tester_ns: &str, case_dir: &Path, tag: &str, settle: f64) -> Result<Report> {
    let results = PathBuf::from(format!("/tmp/{tag}{}-results.jsonl", t.letter()));
    let _ = std::fs::remove_file(&results);
    let log = PathBuf::from(format!("/tmp/{tag}{}-tester.log", t.letter()));
    let app = workspace_root().join("xtask/assets/osken_switch_tester.py");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", tester_ns, "python3"])
        .arg(&app)
        .args(["--ofp-tcp-listen-port", &OF_PORT.to_string()])
        .arg("--test-switch-dir")
        .arg(case_dir)
        .args(["--test-switch-target", TARGET_DPID])
        .args(["--test-switch-tester", TESTER_DPID])
        .env("OSKEN_HUB_TYPE", "eventlet")
        .env("CONFORMANCE_RESULTS", &results)
        .env("CONFORMANCE_SETTLE", settle.to_string());
    step(&format!(
        "{}: os-ken switch tester (log {}, results {})",
        t.name(),
        log.display(),
        results.display()
    ));
    eprintln!("    $ {}", display(&cmd));
    let started = Instant::now();
    let mut child = cmd
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::options().append(true).open(&log)?)
        .spawn()
        .context("starting the os-ken switch tester")?;
    let mut seen = 0;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if cleanup::interrupted() {
            bail!("interrupted");
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the tester ran for more than {} minutes (log: {})",
                RUN_LIMIT.as_secs() / 60,
                log.display()
            );
        }
        let n = std::fs::read_to_string(&results)
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if n / 50 > seen / 50 {
            eprintln!(
                "    {n} cases done ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
        seen = n;
        std::thread::sleep(Duration::from_millis(500));
    };
    let text = std::fs::read_to_string(&results).unwrap_or_default();
    let mut counts: BTreeMap<Suite, Counts> = BTreeMap::new();
    let mut offered: BTreeMap<Suite, Offered> = BTreeMap::new();
    for line in text.lines() {
        let r: CaseResult =
            serde_json::from_str(line).with_context(|| format!("bad result line {line:?}"))?;
        let Some(s) = suite_of(r.file.as_deref()) else {
            bail!("result of an unknown suite: {:?} / {}", r.file, r.test);
        };
        counts.entry(s).or_default().add(classify(&r));
        if let Some(t) = &r.throughput {
            offered.entry(s).or_default().add(t);
        }
    }
    if counts.values().map(Counts::total).sum::<usize>() == 0 {
        bail!(
            "the tester reported no result (exit {status}); its log: {}",
            log.display()
        );
    }
    Ok(Report {
        target: t,
        counts,
        offered,
        results,
        minutes: started.elapsed().as_secs_f64() / 60.0,
    })
}

fn run_target(
    build: &crate::demo::Build,
    t: Target,
    tag: &str,
    case_dir: &Path,
    settle: f64,
) -> Result<Report> {
    let (tn, sn) = topology(tag, t)?;
    start_ovs(&sn, TESTER_DPID, &format!("tcp:127.0.0.1:{OF_PORT}"))?;
    match t {
        Target::Ovs => start_ovs(&tn, TARGET_DPID, &format!("tcp:{CTL_TESTER}:{OF_PORT}"))?,
        Target::Agent => {
            let log = PathBuf::from(format!("/tmp/{tag}-agent.log"));
            start_agent(build, &tn, &log)?;
        }
    }
    let report = run_tool(t, &sn, case_dir, tag, settle);
    // This target's namespaces (and the daemons in them) go now, so the
    // next target runs on a quiet machine.
    cleanup::remove_namespace(&tn);
    cleanup::remove_namespace(&sn);
    report
}

/// Render the reports as the BENCHMARKS.md section.
fn render(reports: &[Report], suites: &[Suite], settle: f64, command: &str) -> String {
    let mut s = String::new();
    s.push_str("## OpenFlow 1.3 conformance: os-ken's switch test tool\n\n");
    s.push_str(&format!(
        "Command: `{command}`. os-ken's own switch test suite \
         (`os_ken/tests/switch/tester.py` and its `of13/` JSON cases, os-ken {}; \
         the same suite as Ryu's), run against each target in turn on the same machine. \
         Tester switch: Open vSwitch (netdev datapath) in its own namespace, linked port to \
         port to the target. A case passes when the tool's checks pass: flows (groups, \
         meters) installed and read back exactly, then the frame out of the right port \
         (or as PACKET_IN) byte for byte. *Wrong*: the switch accepted the case but a check \
         failed; *refused*: the switch answered OFPT_ERROR (or did not answer). The tool \
         waits {settle} s before each case's first packet (Open vSwitch's userspace datapath \
         answers the barrier before it drops the previous case's cached flows). The group \
         and meter cases send at a nominal rate for 30 s; the tool's sender (Python) \
         delivers less on a loaded machine, so the group cases are judged on each port's \
         share of the packets the tester really sent (the tool's expectation scaled by the \
         fraction delivered), and the DSCP-remark meter cases on what the switch did with \
         what it received (the packets within the band's rate unchanged at the rate, the \
         rest of what was delivered remarked; a frame that is not IP passed whole); the \
         drop-band meter cases are judged unscaled.\n\n",
        crate::bench::OSKEN_VERSION
    ));
    s.push_str("| suite | cases |");
    for r in reports {
        s.push_str(&format!(" {}: passed / wrong / refused |", r.target.name()));
    }
    s.push_str("\n|---|---:|");
    for _ in reports {
        s.push_str("---:|");
    }
    s.push('\n');
    let mut rows: Vec<(String, Vec<Suite>)> = suites
        .iter()
        .map(|x| (x.dir().to_string(), vec![*x]))
        .collect();
    let ma: Vec<Suite> = suites
        .iter()
        .copied()
        .filter(|x| matches!(x, Suite::Match | Suite::Action))
        .collect();
    if ma.len() == 2 {
        rows.insert(2, ("**match + action**".to_string(), ma));
    }
    for (name, set) in rows {
        let cases = reports
            .iter()
            .map(|r| {
                set.iter()
                    .filter_map(|x| r.counts.get(x))
                    .map(Counts::total)
                    .sum()
            })
            .max()
            .unwrap_or(0);
        s.push_str(&format!("| {name} | {cases} |"));
        for r in reports {
            let mut c = Counts::default();
            for x in &set {
                if let Some(k) = r.counts.get(x) {
                    c.passed += k.passed;
                    c.wrong += k.wrong;
                    c.refused += k.refused;
                }
            }
            s.push_str(&format!(
                " **{}** / {} / {} |",
                c.passed, c.wrong, c.refused
            ));
        }
        s.push('\n');
    }
    s.push('\n');
    for r in reports {
        let parts: Vec<String> = r
            .offered
            .iter()
            .filter(|(_, o)| o.cases > 0)
            .map(|(x, o)| {
                format!(
                    "{:.0}-{:.0} % in the {} cases ({} judged on what was delivered)",
                    o.min * 100.0,
                    o.max * 100.0,
                    x.dir(),
                    o.scaled
                )
            })
            .collect();
        if !parts.is_empty() {
            s.push_str(&format!(
                "{}: the tester delivered {} of its nominal rate. ",
                r.target.name(),
                parts.join("; ")
            ));
        }
    }
    for r in reports {
        s.push_str(&format!("{}: {:.0} minutes. ", r.target.name(), r.minutes));
    }
    s.push_str(&format!(
        "Measured {} on this machine ({}).\n",
        output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
            .unwrap_or_default()
            .trim(),
        output(Command::new("ovs-vswitchd").arg("--version"))
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or("Open vSwitch")
    ));
    s
}

/// Run the conformance suite.
pub fn run(
    targets: &[Target],
    suites: &[Suite],
    filter: Option<&str>,
    settle: f64,
    setup: bool,
) -> Result<()> {
    let targets: Vec<Target> = if targets.is_empty() {
        vec![Target::Ovs, Target::Agent]
    } else {
        targets.to_vec()
    };
    let mut suites: Vec<Suite> = if suites.is_empty() {
        Suite::ALL.to_vec()
    } else {
        suites.to_vec()
    };
    suites.sort();
    suites.dedup();
    let (build, _guard, tag) = prepare(setup, "conformance", "ppcf")?;
    for tool in [
        "ovs-vswitchd",
        "ovsdb-server",
        "ovs-vsctl",
        "ovsdb-tool",
        "python3",
    ] {
        if !have(tool) {
            bail!("{tool} not found: run `cargo xtask setup`");
        }
    }
    let osken = output(Command::new("python3").args([
        "-c",
        "import os, os_ken; print(os.path.dirname(os_ken.__file__))",
    ]))
    .context("os-ken is not installed: run `cargo xtask setup`")?;
    let case_dir = cases(Path::new(osken.trim()), &suites, filter, &tag)?;
    let mut reports = Vec::new();
    for t in &targets {
        let r = run_target(&build, *t, &tag, &case_dir, settle)?;
        for (s, c) in &r.counts {
            eprintln!(
                "    {} {}: {} passed, {} wrong, {} refused",
                r.target.name(),
                s.dir(),
                c.passed,
                c.wrong,
                c.refused
            );
        }
        eprintln!("    per-case results: {}", r.results.display());
        reports.push(r);
    }
    let mut command = String::from("cargo xtask conformance");
    if targets.len() == 1 {
        command.push_str(match targets[0] {
            Target::Agent => " --target agent",
            Target::Ovs => " --target ovs",
        });
    }
    if suites.len() < Suite::ALL.len() {
        for s in &suites {
            command.push_str(&format!(" --suite {}", s.dir()));
        }
    }
    if let Some(f) = filter {
        command.push_str(&format!(" --filter {f}"));
    }
    let body = render(&reports, &suites, settle, &command);
    print!("{body}");
    if targets.len() == 2 && suites.len() == Suite::ALL.len() && filter.is_none() {
        crate::benchmarks::update_section("conformance", &body)?;
    } else {
        eprintln!("    (not recorded in BENCHMARKS.md: only a full run of both targets is)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(ok: bool, error: &str) -> CaseResult {
        CaseResult {
            file: Some("match: 03_ETH_DST".into()),
            test: "t".into(),
            ok,
            error: (!error.is_empty()).then(|| error.to_string()),
            throughput: None,
        }
    }

    #[test]
    fn the_tools_messages_are_classified() {
        assert_eq!(classify(&r(true, "")), Outcome::Passed);
        assert_eq!(
            classify(&r(
                false,
                "Failed to add flows: OFPErrorMsg[type=0x04, code=0x03]"
            )),
            Outcome::Refused
        );
        assert_eq!(
            classify(&r(false, "Failed to add meters: barrier request timeout.")),
            Outcome::Refused
        );
        assert_eq!(
            classify(&r(false, "Added incorrect flows: flow_stats(...)")),
            Outcome::Wrong
        );
        assert_eq!(
            classify(&r(
                false,
                "Receiving timeout: no change in tx_packets on target."
            )),
            Outcome::Wrong
        );
        assert_eq!(suite_of(Some("match: 03_ETH_DST")), Some(Suite::Match));
        assert_eq!(suite_of(Some("meter: 01_DROP")), Some(Suite::Meter));
        assert_eq!(suite_of(None), None);
    }

    #[test]
    fn offered_fractions_are_read_and_ranged() {
        let line = r#"{"file": "group: 00_ALL", "test": "t", "ok": true, "error": null,
            "throughput": {"offered_packets": 3000, "offered_fraction": 0.55,
            "seconds": 30.4, "egress_packets": [3000, 3000], "scaled": true}}"#;
        let r: CaseResult = serde_json::from_str(&line.replace('\n', " ")).unwrap();
        let mut o = Offered::default();
        o.add(r.throughput.as_ref().unwrap());
        o.add(&Throughput {
            offered_fraction: Some(0.8),
            scaled: false,
        });
        o.add(&Throughput::default());
        assert_eq!((o.cases, o.scaled), (2, 1));
        assert_eq!((o.min, o.max), (0.55, 0.8));
        let plain: CaseResult =
            serde_json::from_str(r#"{"file": null, "test": "t", "ok": false, "error": "x"}"#)
                .unwrap();
        assert!(plain.throughput.is_none());
    }
}
