//! `cargo xtask bench controller`: PACKET_IN -> FLOW_MOD decisions per
//! second and decision latency of daolinet-controller, side by side with
//! os-ken running an equivalent minimal reactive app
//! (`xtask/assets/osken_reactive.py`), both driven by the same release-built
//! cbench-style generator (`daolinet-loadgen`) in one run. Recorded in the
//! `controller` section of BENCHMARKS.md.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::median;
use crate::util::{cargo, output, run as sh, step, workspace_root};

/// Repetitions of each measurement (alternating ours / os-ken).
const REPS: usize = 3;
/// Fake switches in throughput mode.
const SWITCHES: usize = 16;
/// Containers per fake switch (496 distinct flows per switch).
const CONTAINERS: usize = 32;
/// PACKET_INs in flight per switch in throughput mode.
const WINDOW: usize = 64;
/// Fake switches in the latency runs, each with exactly one PACKET_IN in
/// flight: one (no queueing behind other switches), and 16, cbench's
/// default for its latency mode.
const LAT_SWITCHES: [usize; 2] = [1, 16];
const WARMUP: &str = "1";
const SECONDS: &str = "4";
/// os-ken version installed by setup (works with Python 3.10+).
pub const OSKEN_VERSION: &str = "4.2.2";

/// A child process killed (and reaped) when dropped, even on error paths.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn check_alive(&mut self) -> Result<()> {
        if let Ok(Some(st)) = self.child.try_wait() {
            bail!(
                "{} exited ({st}); last log lines:\n{}",
                self.name,
                tail(&self.log, 15)
            );
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..30 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Parses `RESULT k=v k=v ...` (the last such line of the generator's stdout).
pub(super) fn parse_result(stdout: &str) -> Result<BTreeMap<String, f64>> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("RESULT "))
        .ok_or_else(|| anyhow!("the generator printed no RESULT line"))?;
    let mut m = BTreeMap::new();
    for kv in line.split_whitespace().skip(1) {
        if let Some((k, v)) = kv.split_once('=') {
            if let Ok(x) = v.parse::<f64>() {
                m.insert(k.to_string(), x);
            }
        }
    }
    Ok(m)
}

struct Target {
    name: &'static str,
    addr: String,
    /// The controller's process, whose CPU time is measured.
    pid: u32,
}

/// CPU time (user + system) a process has used, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is the
    // 3rd field of the line, utime the 14th, stime the 15th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let hz = output(Command::new("getconf").arg("CLK_TCK"))
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    Some(ticks / hz)
}

/// One generator run: throughput, or latency with `latency` switches.
fn loadgen(bin: &Path, t: &Target, latency: Option<usize>) -> Result<BTreeMap<String, f64>> {
    let mut c = Command::new(bin);
    c.args([
        "run",
        "--connect",
        &t.addr,
        "--warmup",
        WARMUP,
        "--seconds",
        SECONDS,
    ]);
    c.args(["--containers", &CONTAINERS.to_string()]);
    if let Some(n) = latency {
        c.args(["--mode", "latency", "--switches", &n.to_string()]);
    } else {
        c.args([
            "--switches",
            &SWITCHES.to_string(),
            "--window",
            &WINDOW.to_string(),
        ]);
    }
    // The controller's CPU time is sampled when the generator says the
    // measurement starts and ends, so connection set-up and tear-down (the
    // controller's work when switches leave) are not counted.
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting the generator against {}", t.name))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no generator stdout"))?;
    // stderr drained on a thread, so a chatty generator cannot block.
    let err_reader = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            use std::io::Read;
            let mut s = String::new();
            let _ = e.read_to_string(&mut s);
            s
        })
    });
    let (mut cpu0, mut cpu1) = (None, None);
    let mut text = String::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        match line.trim() {
            "MEASURING" => cpu0 = cpu_seconds(t.pid),
            "MEASURED" => cpu1 = cpu_seconds(t.pid),
            _ => {}
        }
        text.push_str(&line);
        text.push('\n');
    }
    let status = child.wait()?;
    let err = err_reader.and_then(|h| h.join().ok()).unwrap_or_default();
    if !status.success() {
        bail!(
            "the generator failed against {} ({status}): {}",
            t.name,
            err.trim()
        );
    }
    let mut r = parse_result(&text)?;
    let answered = r.get("answered").copied().unwrap_or(0.0);
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        if answered > 0.0 {
            r.insert("cpu_us".into(), (b - a) * 1e6 / answered);
        }
    }
    let get = |k: &str| r.get(k).copied().unwrap_or(f64::NAN);
    if let Some(n) = latency {
        eprintln!(
            "    {:<20} latency, {n:>2} switches: p50 {:.1} us, p99 {:.1} us (to the generator's read: p50 {:.1}, p99 {:.1}; {} samples, {:.0} decisions/s)",
            t.name,
            get("p50_us"),
            get("p99_us"),
            get("user_p50_us"),
            get("user_p99_us"),
            get("samples"),
            get("rate")
        );
    } else {
        eprintln!(
            "    {:<20} throughput: {:.0} decisions/s, {:.2} CPU us/decision ({:.0} FLOW_MOD/s, {:.0} PACKET_OUT/s, lost {})",
            t.name,
            get("rate"),
            get("cpu_us"),
            get("flow_mods_per_s"),
            get("packet_outs_per_s"),
            get("lost")
        );
    }
    Ok(r)
}

/// The controller's own histograms on `/metrics`: for the decision time
/// (`daolinet_decision_seconds`, decoded PACKET_IN to answers encoded) and
/// the answer time (`daolinet_packet_in_answer_seconds`, kernel receive
/// timestamp to answers written), the PACKET_INs within 100 us and all.
fn decisions_within_100us(api: &str) -> Result<[(f64, f64); 2]> {
    let host = api.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(host)
        .with_context(|| format!("connecting to the controller's API at {host}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .context("reading the controller's /metrics")?;
    Ok([
        parse_histogram(&text, "daolinet_decision_seconds")?,
        parse_histogram(&text, "daolinet_packet_in_answer_seconds")?,
    ])
}

/// `(observations within 100 us, all observations)` of histogram `name`
/// from a Prometheus text page.
fn parse_histogram(text: &str, name: &str) -> Result<(f64, f64)> {
    let value = |le: &str| {
        let key = format!("{name}_bucket{{le=\"{le}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .ok_or_else(|| anyhow!("/metrics has no `{key}` line"))
    };
    Ok((value("0.0001")?, value("+Inf")?))
}

fn start_ours(bin: &Path, dir: &Path) -> Result<(Proc, Target, String)> {
    let of_port = free_port()?;
    let log = dir.join("daolinet-controller.log");
    let mut child = Command::new(bin)
        .args(["run", "--listen", &format!("127.0.0.1:{of_port}")])
        .args(["--api", "127.0.0.1:0", "--store"])
        .arg(dir.join("controller.redb"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take();
    let mut p = Proc {
        name: "daolinet-controller",
        child,
        log,
    };
    let (tx, rx) = mpsc::channel();
    if let Some(out) = stdout {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("api: ") {
                    let _ = tx.send(a.trim().to_string());
                }
            }
        });
    }
    let api = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(a) => a,
        Err(_) => {
            p.check_alive()?;
            bail!("daolinet-controller printed no `api: URL` line within 30 s");
        }
    };
    let t = Target {
        name: "daolinet-controller",
        addr: format!("127.0.0.1:{of_port}"),
        pid: p.child.id(),
    };
    Ok((p, t, api))
}

fn start_osken(dir: &Path, plan: &Path) -> Result<(Proc, Target)> {
    let port = free_port()?;
    let app = workspace_root().join("xtask/assets/osken_reactive.py");
    let log = dir.join("osken.log");
    let child = Command::new("python3")
        .arg(&app)
        .args(["--ofp-tcp-listen-port", &port.to_string()])
        .env("OSKEN_REACTIVE_PLAN", plan)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting python3 osken_reactive.py")?;
    let p = Proc {
        name: "os-ken",
        child,
        log,
    };
    let t = Target {
        name: "os-ken (Python)",
        addr: format!("127.0.0.1:{port}"),
        pid: p.child.id(),
    };
    Ok((p, t))
}

pub(super) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Run the controller benchmark and record it.
/// The measurements of one controller.
#[derive(Default)]
struct Series {
    rate: Vec<f64>,
    cpu_us: Vec<f64>,
    gen_cpu_us: Vec<f64>,
    flow_mods: Vec<f64>,
    packet_outs: Vec<f64>,
    /// Latency runs, one per entry of [`LAT_SWITCHES`]: round trips to the
    /// kernel's receive timestamp, and to the generator's read.
    p50: [Vec<f64>; 2],
    p99: [Vec<f64>; 2],
    user_p50: [Vec<f64>; 2],
    user_p99: [Vec<f64>; 2],
    lost: f64,
}

impl Series {
    fn row(&self, name: &str) -> String {
        let runs = |v: &[f64], d: usize| {
            v.iter()
                .map(|x| format!("{x:.d$}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut row = format!(
            "| {name} | **{:.0}** ({}) | **{:.2}** ({}) | {:.0} | {:.0} |",
            median(&self.rate),
            runs(&self.rate, 0),
            median(&self.cpu_us),
            runs(&self.cpu_us, 2),
            median(&self.flow_mods),
            median(&self.packet_outs),
        );
        for i in 0..LAT_SWITCHES.len() {
            row += &format!(
                " **{:.1}** ({}) | **{:.1}** ({}) |",
                median(&self.p50[i]),
                runs(&self.p50[i], 1),
                median(&self.p99[i]),
                runs(&self.p99[i], 1),
            );
        }
        row + "\n"
    }

    /// The round trips to the generator's read (wake-up included).
    fn user_row(&self, name: &str) -> String {
        let mut row = format!("| {name} |");
        for i in 0..LAT_SWITCHES.len() {
            row += &format!(
                " {:.1} | {:.1} |",
                median(&self.user_p50[i]),
                median(&self.user_p99[i])
            );
        }
        row + "\n"
    }
}

fn start_reference(gen_bin: &Path, dir: &Path) -> Result<(Proc, Target)> {
    let port = free_port()?;
    let log = dir.join("reference.log");
    let child = Command::new(gen_bin)
        .args(["reference", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--switches", &SWITCHES.to_string()])
        .args(["--containers", &CONTAINERS.to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting daolinet-loadgen reference")?;
    let p = Proc {
        name: "reference controller",
        child,
        log,
    };
    let t = Target {
        name: "floor reference",
        addr: format!("127.0.0.1:{port}"),
        pid: p.child.id(),
    };
    Ok((p, t))
}

/// Run the controller benchmark and record it.
///
/// `DAOLINET_BENCH_CONTROLLER_BIN` may name another daolinet-controller
/// binary to measure (e.g. a profiling build); the default is the release
/// build of this workspace.
pub fn run(setup: bool) -> Result<()> {
    if setup {
        crate::setup::run()?;
    }
    let osken_ok = Command::new("python3")
        .args(["-c", "import os_ken"])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !osken_ok {
        bail!("os-ken is not installed for python3 (cargo xtask setup installs os-ken=={OSKEN_VERSION})");
    }

    let (ctl_bin, gen_bin) = release_binaries()?;

    let dir =
        std::env::temp_dir().join(format!("daolinet-bench-controller-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let scratch = Scratch(dir.clone());

    step("starting daolinet-controller, os-ken and the floor reference");
    let (ours_p, ours, api) = start_ours(&ctl_bin, &dir)?;
    let plan_json = output(Command::new(&gen_bin).args([
        "plan",
        "--switches",
        &SWITCHES.to_string(),
        "--containers",
        &CONTAINERS.to_string(),
    ]))?;
    let plan = dir.join("plan.json");
    std::fs::write(&plan, plan_json)?;
    let (osken_p, osken) = start_osken(&dir, &plan)?;
    let (ref_p, reference) = start_reference(&gen_bin, &dir)?;
    let mut procs = [ours_p, osken_p, ref_p];

    step(&format!(
        "registering {SWITCHES} hosts and {} containers with daolinet-controller",
        SWITCHES * CONTAINERS
    ));
    sh(Command::new(&gen_bin)
        .args(["register", "--api", &api, "--token-file"])
        .arg(dir.join("api-token"))
        .args([
            "--switches",
            &SWITCHES.to_string(),
            "--containers",
            &CONTAINERS.to_string(),
        ]))?;

    let targets = [&ours, &osken, &reference];
    let mut series: [Series; 3] = Default::default();
    // daolinet-controller's own histograms over its latency runs, per
    // switch count: [decision time, answer time] as (within 100 us, all).
    let mut own = [[(0.0_f64, 0.0_f64); 2]; 2];
    for rep in 1..=REPS {
        step(&format!("repetition {rep}/{REPS}"));
        for (t, s) in targets.iter().zip(series.iter_mut()) {
            for p in procs.iter_mut() {
                p.check_alive()?;
            }
            let r = loadgen(&gen_bin, t, None)?;
            let get = |k: &str| r.get(k).copied().unwrap_or(f64::NAN);
            s.rate.push(get("rate"));
            s.cpu_us.push(get("cpu_us"));
            s.gen_cpu_us.push(get("gen_cpu_us"));
            s.flow_mods.push(get("flow_mods_per_s"));
            s.packet_outs.push(get("packet_outs_per_s"));
            s.lost += get("lost");
            for (i, n) in LAT_SWITCHES.into_iter().enumerate() {
                let before = if t.name == ours.name {
                    Some(decisions_within_100us(&api)?)
                } else {
                    None
                };
                let r = loadgen(&gen_bin, t, Some(n))?;
                if let Some(b) = before {
                    let a = decisions_within_100us(&api)?;
                    for h in 0..2 {
                        own[i][h].0 += a[h].0 - b[h].0;
                        own[i][h].1 += a[h].1 - b[h].1;
                    }
                }
                let get = |k: &str| r.get(k).copied().unwrap_or(f64::NAN);
                s.p50[i].push(get("p50_us"));
                s.p99[i].push(get("p99_us"));
                s.user_p50[i].push(get("user_p50_us"));
                s.user_p99[i].push(get("user_p99_us"));
            }
        }
    }
    drop(procs);
    drop(scratch);

    let [o, k, f] = &series;
    let (t0, t1) = (median(&o.rate), median(&k.rate));
    if t1.is_nan() || t1 <= 0.0 {
        bail!("os-ken answered nothing");
    }
    let ratio = t0 / t1;
    let lat_head: String = LAT_SWITCHES
        .iter()
        .map(|n| format!(" latency p50 us, {n} sw. (runs) | latency p99 us, {n} sw. (runs) |"))
        .collect();
    let lat_ratio: String = (0..LAT_SWITCHES.len())
        .map(|i| {
            format!(
                " **{:.1}x** lower | **{:.1}x** lower |",
                median(&k.p50[i]) / median(&o.p50[i]),
                median(&k.p99[i]) / median(&o.p99[i])
            )
        })
        .collect();
    let cols = "---:|".repeat(4 + 2 * LAT_SWITCHES.len());
    let table = format!(
        "| controller | decisions/s (runs) | controller CPU us per decision (runs) | FLOW_MOD/s | PACKET_OUT/s |{lat_head}\n\
         |---|{cols}\n\
         {}{}| **daolinet-controller vs os-ken** | **{ratio:.1}x** more | **{:.1}x** less | | |{lat_ratio}\n\
         {}",
        o.row("daolinet-controller"),
        k.row(&format!("os-ken {OSKEN_VERSION} (Python)")),
        median(&k.cpu_us) / median(&o.cpu_us),
        f.row("floor reference: table lookup, same answers, no policy (Rust, 1 thread)"),
    );
    let user_head: String = LAT_SWITCHES
        .iter()
        .map(|n| format!(" p50 us, {n} sw. | p99 us, {n} sw. |"))
        .collect();
    let user_table = format!(
        "| round trip to the generator's read (medians) |{user_head}\n|---|{}\n{}{}{}",
        "---:|".repeat(2 * LAT_SWITCHES.len()),
        o.user_row("daolinet-controller"),
        k.user_row(&format!("os-ken {OSKEN_VERSION} (Python)")),
        f.user_row("floor reference"),
    );
    print!("{table}\n{user_table}");
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    let pct = |(fast, all): (f64, f64)| {
        if all > 0.0 {
            format!("{:.2}% of {all:.0}", 100.0 * fast / all)
        } else {
            "no PACKET_IN".to_string()
        }
    };
    let lat_verdicts: Vec<String> = LAT_SWITCHES
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "{n} switch{} {} (p99 {:.1} us)",
                if *n == 1 { "" } else { "es" },
                verdict(median(&o.p99[i]) < 100.0),
                median(&o.p99[i])
            )
        })
        .collect();
    let own_text: Vec<String> = LAT_SWITCHES
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "{n} switch{}: answered within 100 us {} PACKET_INs, decided within 100 us {}",
                if *n == 1 { "" } else { "es" },
                pct(own[i][1]),
                pct(own[i][0])
            )
        })
        .collect();
    let md = format!(
        "## Controller: PACKET_IN -> FLOW_MOD decisions\n\n\
         Command: `cargo xtask bench controller`. One run on one machine ({cpu}, 2 cores \
         shared by the generator, the controller under test and whatever else runs: the \
         generator and the controller compete for the same 2 cores, so absolute numbers are \
         pessimistic and noisy; compare the ratios). All controllers run at the same time; \
         the measurements alternate between them, {REPS} repetitions, medians shown.\n\n\
         Generator: `daolinet-loadgen` (release, 1 thread), cbench-style: fake OpenFlow 1.3 \
         switches that handshake like a switch (HELLO, FEATURES, PORT_DESC, ECHO, BARRIER...) \
         and punt PACKET_INs of new flows: 60-byte IPv4/UDP frames between two containers of \
         the same host, {CONTAINERS} containers per switch, so {pairs} distinct flows per \
         switch, cycled. A PACKET_IN counts as decided when the FLOW_MOD matching its in_port, \
         ipv4_src and ipv4_dst arrives; every controller answers each one with 2 FLOW_MODs \
         (forward and reverse) and 1 PACKET_OUT (daolinet-controller sends no BARRIER for \
         these same-host pairs: the PACKET_OUT leaves by a container port and never meets \
         the flows; it keeps one before PACKET_OUTs that can, e.g. NAT via LOCAL). \
         daolinet-controller decides with the DaoliNet \
         policy (the {SWITCHES} hosts and {nctr} containers are registered through the REST \
         API first); os-ken runs `xtask/assets/osken_reactive.py`, a minimal reactive app \
         sending the same messages from a static table; the floor reference \
         (`daolinet-loadgen reference`) does the same in Rust with our codec, i.e. the \
         ceiling this generator can measure on this machine.\n\n\
         - throughput: {SWITCHES} switches, {WINDOW} PACKET_INs in flight per switch, \
         {SECONDS} s measured after {WARMUP} s warm-up;\n\
         - latency: {lat_list} switches, each with exactly one PACKET_IN in flight (16 is \
         cbench's default for its latency mode; with 1 nothing queues behind another \
         switch), {SECONDS} s measured after {WARMUP} s warm-up. The round trip runs from \
         just before the generator writes a PACKET_IN to the kernel's receive timestamp \
         (`SO_TIMESTAMPNS`, software, of the latest segment of the read) of the data holding \
         its FLOW_MOD: both TCP stacks and the controller's wake-up, queueing and work are \
         in it, the generator's own wake-up and parsing are not (on this VM waking an idle \
         vCPU takes tens of microseconds, which would otherwise be charged to the \
         controller). The same method for every controller; the round trip to the \
         generator's read, wake-up included, is in the second table;\n\
         - controller CPU per decision: user + system CPU time of the controller process \
         during the measured seconds of a throughput run divided by the PACKET_INs it \
         answered in them; \
         much less sensitive than the rates to the other load on the machine.\n\n\
         {table}\n\
         {user_table}\n\
         Targets for daolinet-controller: >= 500k decisions/s: {}; >= 50x os-ken: {}; \
         p99 < 100 us (round trip to the kernel's receive timestamp, above): {}. Inside \
         daolinet-controller (its `/metrics` histograms over its latency runs; answered = \
         from the kernel's receive timestamp of the PACKET_IN to the write of its answers, \
         i.e. its own wake-up and queueing included; decided = decoded PACKET_IN to answers \
         encoded): {}. PACKET_INs lost (never answered) over all throughput runs: \
         ours {}, os-ken {}. The generator itself used {:.2} CPU us per decision \
         (median, runs against daolinet-controller). On this shared machine the rates \
         and especially the p99 latencies move with the other load (a run is preempted \
         for milliseconds whenever other builds or benchmarks run; compare the runs in \
         parentheses); the CPU-per-decision column is the stable one, and its ratio to the \
         floor reference is the cost of the DaoliNet policy, flow registry and server over \
         the bare minimum.\n",
        verdict(t0 >= 500_000.0),
        verdict(ratio >= 50.0),
        lat_verdicts.join("; "),
        own_text.join("; "),
        o.lost,
        k.lost,
        median(&o.gen_cpu_us),
        lat_list = LAT_SWITCHES
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" or "),
        pairs = CONTAINERS * (CONTAINERS - 1) / 2,
        nctr = SWITCHES * CONTAINERS,
        cpu = cpu_model(),
    );
    crate::benchmarks::update_section("controller", &md)?;
    super::scale::run(&ctl_bin, &gen_bin, &cpu_model())
}

/// Only the scale part of [`run`] (`cargo xtask bench scale`): the small
/// and the large model side by side, with the release binaries.
pub fn run_scale(setup: bool) -> Result<()> {
    if setup {
        crate::setup::run()?;
    }
    let (ctl_bin, gen_bin) = release_binaries()?;
    super::scale::run(&ctl_bin, &gen_bin, &cpu_model())
}

/// Builds the controller and the load generator in release; their paths
/// (the controller's may be another build, `DAOLINET_BENCH_CONTROLLER_BIN`).
fn release_binaries() -> Result<(PathBuf, PathBuf)> {
    step("building daolinet-controller and daolinet-loadgen (release)");
    sh(cargo().args([
        "build",
        "--release",
        "-p",
        "daolinet-controller",
        "-p",
        "daolinet-loadgen",
    ]))?;
    let rel = workspace_root().join("target/release");
    let ctl_bin = std::env::var_os("DAOLINET_BENCH_CONTROLLER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| rel.join("daolinet-controller"));
    Ok((ctl_bin, rel.join("daolinet-loadgen")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_line_is_parsed() {
        let m = parse_result("noise\nRESULT mode=latency rate=12.5 p99_us=40.25 x\n").unwrap();
        assert_eq!(m.get("rate"), Some(&12.5));
        assert_eq!(m.get("p99_us"), Some(&40.25));
        assert!(!m.contains_key("mode"));
        assert!(parse_result("nothing").is_err());
    }

    #[test]
    fn decision_histogram_is_read_from_metrics() {
        let page = "daolinet_decision_seconds_bucket{le=\"0.00005\"} 7\n\
                    daolinet_decision_seconds_bucket{le=\"0.0001\"} 9\n\
                    daolinet_decision_seconds_bucket{le=\"+Inf\"} 10\n";
        assert_eq!(
            parse_histogram(page, "daolinet_decision_seconds").unwrap(),
            (9.0, 10.0)
        );
        assert!(parse_histogram(page, "daolinet_packet_in_answer_seconds").is_err());
        assert!(parse_histogram("nothing", "daolinet_decision_seconds").is_err());
    }
}
