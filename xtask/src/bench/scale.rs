//! The scale part of `cargo xtask bench controller`: the same controller
//! with a small model and with 1,000 hosts and 100,000 containers, side by
//! side in one run: connect times, memory, REST API latency, PACKET_IN decision
//! latency (the generator's latency mode, alternating between the two).
//! Recorded in the `controller-scale` section of BENCHMARKS.md.
//!
//! The large model: 984 hosts and 99,744 containers in 100 tenant networks
//! sharing one subnet (each logical IP held by 100 containers), written
//! straight into the store (`cargo run -p daolinet-controller --example
//! populate_store`: through the API every object is one mutation that
//! validates and clones the whole model); then the generator's 16 hosts and
//! 256 containers are registered through the REST API on both controllers,
//! as in the small-model runs, and its fake switches decide on them.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::controller::parse_result;
use super::median;
use crate::util::{cargo, output, run as sh, step};

const HOSTS: u32 = 1_000;
const CONTAINERS: u32 = 100_000;
/// What the generator registers through the API (16 hosts, 16 containers each).
const GEN_SWITCHES: u32 = 16;
const GEN_CONTAINERS: u32 = 16;
const NETWORKS: u32 = 100;
/// A pool large enough for 100,000 physical IPs.
const POOL: &str = "172.16.0.0/12";
const REPS: usize = 3;
/// API probes per kind and controller.
const PROBES: usize = 20;

/// A controller process, killed when dropped.
struct Ctl {
    name: &'static str,
    child: Child,
    /// `127.0.0.1:PORT` of the REST API.
    api: String,
    /// `127.0.0.1:PORT` of the OpenFlow server.
    of: String,
    token: String,
    log: PathBuf,
}

impl Drop for Ctl {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Ctl {
    fn start(name: &'static str, bin: &Path, dir: &Path) -> Result<Ctl> {
        let of_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = dir.join("controller.log");
        let mut child = Command::new(bin)
            .args(["run", "--listen", &format!("127.0.0.1:{of_port}")])
            .args(["--api", "127.0.0.1:0", "--physical-pool", POOL, "--store"])
            .arg(dir.join("controller.redb"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no controller stdout"))?;
        // `api: http://ADDR` is its first line (printed once the model is
        // loaded and the API listens).
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while out.read(&mut b)? == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let line = String::from_utf8_lossy(&line).into_owned();
        let api = line
            .strip_prefix("api: http://")
            .ok_or_else(|| anyhow!("{name}: unexpected first line {line:?}"))?
            .trim()
            .to_string();
        let token = std::fs::read_to_string(dir.join("api-token"))?
            .trim()
            .to_string();
        Ok(Ctl {
            name,
            child,
            api,
            of: format!("127.0.0.1:{of_port}"),
            token,
            log,
        })
    }

    /// Resident memory (MiB).
    fn rss_mib(&self) -> Result<f64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .ok_or_else(|| anyhow!("no VmRSS for {}", self.name))
    }

    /// One HTTP/1.1 request on a fresh connection: status and the time
    /// from connecting to the end of the answer.
    fn http(&self, method: &str, path: &str, body: &str) -> Result<(u16, Duration)> {
        let t = Instant::now();
        let mut s = TcpStream::connect(&self.api)?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.api,
            self.token,
            body.len()
        )?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        let took = t.elapsed();
        let text = String::from_utf8_lossy(&resp);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((status, took))
    }
}

/// API latencies (ms, medians of [`PROBES`]): read one container, create
/// one, delete it.
fn api_probes(c: &Ctl) -> Result<[f64; 3]> {
    let (mut get, mut post, mut del) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..PROBES {
        let (st, t) = c.http("GET", "/api/containers/lg-s0-c0", "")?;
        if st != 200 {
            bail!("{}: GET a container: HTTP {st}", c.name);
        }
        get.push(t.as_secs_f64() * 1e3);
        let body = format!(
            r#"{{"id":"probe{i}","network":"lg-net","host":"lg-h0","port":{}}}"#,
            1000 + i
        );
        let (st, t) = c.http("POST", "/api/containers", &body)?;
        if st != 201 {
            bail!(
                "{}: POST a container: HTTP {st} (log: {})",
                c.name,
                c.log.display()
            );
        }
        post.push(t.as_secs_f64() * 1e3);
        let (st, t) = c.http("DELETE", &format!("/api/containers/probe{i}"), "")?;
        if st != 204 {
            bail!("{}: DELETE a container: HTTP {st}", c.name);
        }
        del.push(t.as_secs_f64() * 1e3);
    }
    Ok([median(&get), median(&post), median(&del)])
}

/// The generator against `c`: latency mode with `switches`, or throughput.
fn loadgen(gen: &Path, c: &Ctl, latency: Option<u32>) -> Result<BTreeMap<String, f64>> {
    let mut cmd = Command::new(gen);
    cmd.args(["run", "--connect", &c.of, "--warmup", "1", "--seconds", "4"])
        .args(["--containers", &GEN_CONTAINERS.to_string()]);
    match latency {
        Some(n) => cmd.args(["--mode", "latency", "--switches", &n.to_string()]),
        None => cmd.args(["--switches", &GEN_SWITCHES.to_string(), "--window", "64"]),
    };
    let out = output(cmd.stdin(Stdio::null()))
        .with_context(|| format!("the generator against the {} model", c.name))?;
    parse_result(&out)
}

/// Run the scale comparison with the release binaries; record it.
pub fn run(ctl_bin: &Path, gen_bin: &Path, cpu: &str) -> Result<()> {
    step("scale: building the store writer (release example)");
    sh(cargo().args([
        "build",
        "--release",
        "-p",
        "daolinet-controller",
        "--example",
        "populate_store",
    ]))?;
    let populate = crate::util::workspace_root().join("target/release/examples/populate_store");
    let dir = std::env::temp_dir().join(format!("daolinet-bench-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    let (small_dir, large_dir) = (dir.join("small"), dir.join("large"));
    std::fs::create_dir_all(&small_dir)?;
    std::fs::create_dir_all(&large_dir)?;
    let bulk_hosts = HOSTS - GEN_SWITCHES;
    let bulk_containers = CONTAINERS - GEN_SWITCHES * GEN_CONTAINERS;
    step(&format!(
        "scale: writing {bulk_hosts} hosts and {bulk_containers} containers ({NETWORKS} tenant networks, one subnet) into a new store"
    ));
    let t = Instant::now();
    sh(Command::new(&populate)
        .arg(large_dir.join("controller.redb"))
        .args([
            &bulk_hosts.to_string(),
            &bulk_containers.to_string(),
            &NETWORKS.to_string(),
            POOL,
        ]))?;
    let write_s = t.elapsed().as_secs_f64();
    let load = |when: &str| {
        let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let l: Vec<&str> = l.split_whitespace().take(3).collect();
        format!("{when} {}", l.join(" "))
    };
    let load_start = load("at the start");
    step("scale: starting the controller on the small and on the large store");
    let t = Instant::now();
    let small = Ctl::start("small", ctl_bin, &small_dir)?;
    let small_start = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let large = Ctl::start("large", ctl_bin, &large_dir)?;
    let large_start = t.elapsed().as_secs_f64();
    let mut reg_s = [0.0; 2];
    for (i, c) in [&small, &large].into_iter().enumerate() {
        step(&format!(
            "scale: registering the generator's {GEN_SWITCHES} hosts and {} containers through the REST API ({} model)",
            GEN_SWITCHES * GEN_CONTAINERS,
            c.name
        ));
        let t = Instant::now();
        sh(Command::new(gen_bin)
            .args([
                "register",
                "--api",
                &format!("http://{}", c.api),
                "--token-file",
            ])
            .arg(if i == 0 { &small_dir } else { &large_dir }.join("api-token"))
            .args([
                "--switches",
                &GEN_SWITCHES.to_string(),
                "--containers",
                &GEN_CONTAINERS.to_string(),
            ]))?;
        reg_s[i] = t.elapsed().as_secs_f64();
    }
    let n_reg = f64::from(GEN_SWITCHES * (GEN_CONTAINERS + 1) + 1);
    let last = format!("sc-c{}", bulk_containers - 1);
    let (st, _) = large.http("GET", &format!("/api/containers/{last}"), "")?;
    if st != 200 {
        bail!("the large model has no container {last} (HTTP {st})");
    }
    step("scale: API latency (read, create, delete one container)");
    let api = [api_probes(&small)?, api_probes(&large)?];
    let rss = [small.rss_mib()?, large.rss_mib()?];
    step(&format!(
        "scale: decision latency (1 and 16 switches) and throughput, {REPS} repetitions alternating small / large"
    ));
    // [model][switches 1, 16] -> p50s, p99s; [model] -> rates
    let mut p50 = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
    let mut p99 = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
    let mut rate = [Vec::new(), Vec::new()];
    // [model] -> per run: the slowest switch's connect -> FEATURES_REQUEST
    // and connect -> first FLOW_MOD (ms).
    let mut features = [Vec::new(), Vec::new()];
    let mut served = [Vec::new(), Vec::new()];
    for rep in 0..REPS {
        let order = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
        for m in order {
            let c = if m == 0 { &small } else { &large };
            for (i, n) in [1u32, 16].into_iter().enumerate() {
                let r = loadgen(gen_bin, c, Some(n))?;
                let g = |k: &str| r.get(k).copied().unwrap_or(f64::NAN);
                features[m].push(g("features_ms"));
                served[m].push(g("served_ms"));
                eprintln!(
                    "    {:<5} latency {n:>2} switches: p50 {:.1} us, p99 {:.1} us",
                    c.name,
                    g("p50_us"),
                    g("p99_us")
                );
                p50[m][i].push(g("p50_us"));
                p99[m][i].push(g("p99_us"));
            }
            let r = loadgen(gen_bin, c, None)?;
            features[m].push(r.get("features_ms").copied().unwrap_or(f64::NAN));
            served[m].push(r.get("served_ms").copied().unwrap_or(f64::NAN));
            let g = r.get("rate").copied().unwrap_or(f64::NAN);
            eprintln!("    {:<5} throughput: {g:.0} decisions/s", c.name);
            rate[m].push(g);
        }
    }
    let rss_after = [small.rss_mib()?, large.rss_mib()?];
    let load_end = load("at the end");
    drop(small);
    drop(large);

    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ratio50 = [
        median(&p50[1][0]) / median(&p50[0][0]),
        median(&p50[1][1]) / median(&p50[0][1]),
    ];
    let flat = ratio50.iter().all(|r| *r <= 1.2);
    let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    let row = |name: &str, m: usize| {
        format!(
            "| {name} | {:.0} / {:.0} | {:.1} / {:.1} | {:.1} / {:.1} | {:.2} | {:.2} | {:.2} | {:.1} | **{:.1}** ({}) | {:.1} ({}) | **{:.1}** ({}) | {:.1} ({}) | {:.0} ({}) |\n",
            rss[m],
            rss_after[m],
            median(&features[m]),
            max(&features[m]),
            median(&served[m]),
            max(&served[m]),
            api[m][0],
            api[m][1],
            api[m][2],
            reg_s[m] * 1e3 / n_reg,
            median(&p50[m][0]),
            list(&p50[m][0]),
            median(&p99[m][0]),
            list(&p99[m][0]),
            median(&p50[m][1]),
            list(&p50[m][1]),
            median(&p99[m][1]),
            list(&p99[m][1]),
            median(&rate[m]),
            rate[m]
                .iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
        )
    };
    let md = format!(
        "## Controller at scale: 1,000 hosts, 100,000 containers\n\n\
         Command: `cargo xtask bench scale` (also the last part of `cargo xtask bench controller`). Two daolinet-controller \
         processes side by side ({cpu}, 2 shared cores): one with the generator's small model \
         ({GEN_SWITCHES} hosts, {} containers), one with {HOSTS} hosts and {CONTAINERS} \
         containers: {bulk_hosts} hosts and {bulk_containers} containers in {NETWORKS} tenant \
         networks sharing one subnet (each logical IP held by {NETWORKS} containers), \
         written into the store in {write_s:.1} s by `cargo run --release -p \
         daolinet-controller --example populate_store` (through the API each object is one \
         mutation that validates and clones the whole model), plus the generator's hosts and \
         containers registered through the REST API as on the small one. Both use \
         `--physical-pool {POOL}`. Start (store loaded, API up): small {small_start:.2} s, \
         large {large_start:.2} s. Decision latency: the generator's latency mode (one \
         PACKET_IN in flight per switch, same pairs on both), {REPS} repetitions alternating \
         between the two, medians (runs). API: median of {PROBES} requests on a fresh \
         connection each; registration: the generator's {n_reg:.0} POSTs (hosts, network, \
         containers) one after the other.\n\n\
         | model | RSS MiB (after registration / after the runs) | connect -> FEATURES_REQUEST ms (median / max of runs) | connect -> first FLOW_MOD ms (median / max) | GET container ms | POST container ms | DELETE container ms | registration ms per object | p50 us, 1 sw. | p99 us, 1 sw. | p50 us, 16 sw. | p99 us, 16 sw. | decisions/s (16 sw., window 64) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n\
         {}{}\n\
         Decision latency, large / small (p50): 1 switch **{:.2}x**, 16 switches **{:.2}x**; \
         target: flat within 20%: {}. A mutation's cost grows with the model (each one \
         validates on a copy: the POST and DELETE columns); reads and decisions do not \
         (indexed snapshot, lock-free). Connect times: the slowest of the run's switches, \
         from its TCP connect; the generator's switches leave after each run, so the \
         controller deletes the flows towards their containers 30 s later (a host gone) \
         while other runs connect. Before 2026-12-06 that deletion went over every \
         container once per other datapath (hosts x containers) on the runtime's worker: \
         about 17 s per host gone at 1,000 hosts and 100,000 containers on this machine, \
         and switches connecting meanwhile got no FEATURES_REQUEST within 20 s; now it \
         takes the host's containers from the snapshot's port index, off the workers. \
         Load average (1, 5, 15 min) {load_start}, {load_end}.\n",
        GEN_SWITCHES * GEN_CONTAINERS,
        row("small", 0),
        row("large (1,000 hosts, 100,000 containers)", 1),
        ratio50[0],
        ratio50[1],
        if flat { "met" } else { "**not met**" },
    );
    eprintln!("{md}");
    crate::benchmarks::update_section("controller-scale", &md)
}
