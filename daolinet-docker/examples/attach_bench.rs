//! The attach benchmark (`cargo xtask bench attach` builds it in release
//! and records what it prints in BENCHMARKS.md): how long a container
//! takes from the runtime's run command to having network, on DaoliNet
//! and on the runtimes' own bridges, measured side by side in one run.
//!
//! One DaoliNet host (a controller and an agent that joined by itself, the
//! lab of `tests/docker.rs`) runs one dockerd with the `daolinet-docker`
//! driver and podman with the CNI backend. Four ways of attaching, each on
//! a network of its own with one peer container started first:
//!
//! - Docker, `docker network create -d daolinet --ipam-driver daolinet`;
//! - Docker, `docker network create -d bridge` (the same dockerd);
//! - podman, a `daolinet-cni` network;
//! - podman, the reference CNI `bridge` plugin with `host-local` IPAM.
//!
//! **"Has network"** is the first echo reply the new container gets from
//! the peer container of its network (a container it never talked to, on
//! the same host), i.e. address, routes, ARP and, on DaoliNet, the
//! controller's first-packet decision all done. The container's command
//! pings the peer every 20 ms (`ping -i 0.02 | grep -q 'bytes from'`) and
//! touches a file in a bind-mounted directory on the first reply; the
//! benchmark polls that directory every millisecond. A container's time is
//! from just before its `run -d` command is spawned to that file.
//!
//! Each round, in alternating order of the four: one container alone (run,
//! wait for its network), then [`N`] containers started in a row (each
//! `run -d` right after the previous one returned, without waiting for
//! network): throughput is N / (last container with network - first run
//! command), and the per-container times give p50 and p99. All of them are
//! removed before the next. One container per way before the first round
//! is not counted (warm-up). `DAOLINET_ATTACH_ROUNDS` and `DAOLINET_ATTACH_N`
//! override the round count and N.
//!
//! Needs root, dockerd, podman, busybox-static, the CNI reference plugins
//! and the release-built controller, agent, `daolinet-docker` and
//! `daolinet-cni` next to it. Prints the markdown section on stdout
//! (progress on stderr); everything it created is removed on every way out
//! (the lab's guards: containers, daemons, namespaces, mounts).
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // a failed measurement stops the benchmark

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use daolinet_testlab::{
    busybox_image, catch_signals, check_stop, median, quantile, stop_requested, workspace_bin,
    Cluster, DockerHost, Dockerd, Lab, Need, Podman, DOCKER_PROGRAMS, PODMAN_PROGRAMS,
};
use serde_json::json;

/// Rounds (each runs the four ways once, in alternating order).
const ROUNDS: usize = 5;
/// Containers started in a row per way and round.
const N: usize = 15;
/// How long a batch may take to get network.
const BATCH_DEADLINE: Duration = Duration::from_secs(180);

const DOCKER_IMAGE: &str = "atbusybox:1";
const PODMAN_IMAGE: &str = "localhost/atbusybox:1";
/// Where the CNI reference plugins (`bridge`, `host-local`) are installed.
const CNI_PLUGINS: &str = "/usr/lib/cni";

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

/// A container runtime of the lab.
#[derive(Clone, Copy)]
enum Runtime<'a> {
    Docker(&'a Dockerd),
    Podman(&'a Podman),
}

impl Runtime<'_> {
    fn command(&self, args: &[&str]) -> Command {
        match self {
            Runtime::Docker(d) => d.command(args),
            Runtime::Podman(p) => p.command(args),
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        match self {
            Runtime::Docker(d) => d.ok(args),
            Runtime::Podman(p) => p.ok(args),
        }
    }

    fn image(&self) -> &'static str {
        match self {
            Runtime::Docker(_) => DOCKER_IMAGE,
            Runtime::Podman(_) => PODMAN_IMAGE,
        }
    }

    /// Remove containers `names` (not timed).
    fn remove(&self, names: &[String]) {
        if names.is_empty() {
            return;
        }
        let mut args: Vec<&str> = match self {
            Runtime::Docker(_) => vec!["rm", "-f"],
            Runtime::Podman(_) => vec!["rm", "-f", "-t", "0"],
        };
        args.extend(names.iter().map(String::as_str));
        self.ok(&args);
    }
}

/// One way of attaching: a runtime and one of its networks, with a peer
/// container to ping.
struct Way<'a> {
    label: &'static str,
    short: &'static str,
    rt: Runtime<'a>,
    network: String,
    peer_ip: String,
}

impl<'a> Way<'a> {
    /// Start the peer (`sleep`) on `network`, learn its address.
    fn new(label: &'static str, short: &'static str, rt: Runtime<'a>, network: &str) -> Way<'a> {
        let peer = format!("{short}-peer");
        rt.ok(&[
            "run",
            "-d",
            "--name",
            &peer,
            "--network",
            network,
            rt.image(),
            "sleep",
            "100000",
        ]);
        let peer_ip = rt.ok(&[
            "inspect",
            &peer,
            "--format",
            &format!("{{{{.NetworkSettings.Networks.{network}.IPAddress}}}}"),
        ]);
        assert!(
            peer_ip.parse::<std::net::Ipv4Addr>().is_ok(),
            "{label}: the peer has no address ({peer_ip:?})"
        );
        Way {
            label,
            short,
            rt,
            network: network.to_string(),
            peer_ip,
        }
    }

    /// Start containers `names` one after the other (each `run -d` right
    /// after the previous returned); per container the time from its run
    /// command to its first echo reply, and the time from the first run
    /// command to the last reply.
    fn start(&self, out: &Path, names: &[String]) -> (Vec<Duration>, Duration) {
        let mount = format!("{}:/out", out.display());
        let (starts, ready) = std::thread::scope(|s| {
            let watcher = s.spawn(|| watch(out, names));
            let mut starts = Vec::new();
            for name in names {
                if stop_requested() {
                    break;
                }
                let script = format!(
                    "until ping -i 0.02 -w 30 {} | {{ grep -q 'bytes from' && touch /out/{name}; }}; \
                     do usleep 20000; done; exec sleep 100000",
                    self.peer_ip
                );
                let mut c = self.rt.command(&[
                    "run",
                    "-d",
                    "--name",
                    name,
                    "--network",
                    &self.network,
                    "-v",
                    &mount,
                    self.rt.image(),
                    "sh",
                    "-c",
                    &script,
                ]);
                let t0 = Instant::now();
                let o = c
                    .output()
                    .unwrap_or_else(|e| panic!("{}: starting run: {e}", self.label));
                assert!(
                    o.status.success(),
                    "{}: run {name} failed: {}",
                    self.label,
                    String::from_utf8_lossy(&o.stderr)
                );
                starts.push(t0);
            }
            let ready = watcher
                .join()
                .unwrap_or_else(|_| panic!("{}: the watcher failed", self.label));
            (starts, ready)
        });
        let ready = ready.unwrap_or_else(|missing| {
            check_stop();
            panic!(
                "{}: no network within {BATCH_DEADLINE:?} for {missing:?}",
                self.label
            )
        });
        let per: Vec<Duration> = names
            .iter()
            .zip(&starts)
            .map(|(n, t0)| ready[n].saturating_duration_since(*t0))
            .collect();
        let last = ready.values().max().copied().unwrap_or(starts[0]);
        (per, last.saturating_duration_since(starts[0]))
    }
}

/// Poll `dir` every millisecond until a file of each of `names` is there:
/// when each appeared, or the names still missing at the deadline.
fn watch(dir: &Path, names: &[String]) -> Result<HashMap<String, Instant>, Vec<String>> {
    let deadline = Instant::now() + BATCH_DEADLINE;
    let mut seen = HashMap::new();
    while seen.len() < names.len() {
        if Instant::now() > deadline || stop_requested() {
            return Err(names
                .iter()
                .filter(|n| !seen.contains_key(*n))
                .cloned()
                .collect());
        }
        let now = Instant::now();
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if names.contains(&n) {
                    seen.entry(n).or_insert(now);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(seen)
}

/// What one way measured over all rounds.
#[derive(Default)]
struct Results {
    /// One container alone: run command to first reply, per round (ms).
    single: Vec<f64>,
    /// N in a row: containers/s, per round.
    rate: Vec<f64>,
    /// N in a row: each container's time (ms), all rounds.
    per: Vec<f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let rounds = env_usize("DAOLINET_ATTACH_ROUNDS", ROUNDS);
    let n = env_usize("DAOLINET_ATTACH_N", N);
    let mut needs = vec![
        Need::Root,
        Need::Program("ip"),
        Need::BpfObject,
        Need::Program("busybox"),
        Need::Binary("daolinet-controller"),
        Need::Binary("daolinet-agent"),
        Need::Binary("daolinet-docker"),
        Need::Binary("daolinet-cni"),
    ];
    needs.extend(DOCKER_PROGRAMS.map(Need::Program));
    needs.extend(PODMAN_PROGRAMS.map(Need::Program));
    if let Some(reason) = needs.iter().find_map(Need::unmet) {
        eprintln!("attach_bench cannot run here: {reason}");
        std::process::exit(2);
    }
    for p in ["bridge", "host-local"] {
        if !Path::new(CNI_PLUGINS).join(p).is_file() {
            eprintln!(
                "attach_bench cannot run here: the CNI plugin {CNI_PLUGINS}/{p} is not installed (cargo xtask setup)"
            );
            std::process::exit(2);
        }
    }
    catch_signals();
    let Some(mut lab) = Lab::new(&needs) else {
        panic!("the attach lab cannot run here");
    };
    let load_before = loadavg();
    eprintln!("attach: starting a controller, an agent host, dockerd and podman");
    let c = Cluster::start(&mut lab, 1, &[]);
    let h = c.host(1);
    let image = busybox_image(lab.dir());
    let dh = DockerHost::start(&lab, h, &image, DOCKER_IMAGE);
    let docker = &dh.d;
    docker.ok(&[
        "network",
        "create",
        "-d",
        "daolinet",
        "--ipam-driver",
        "daolinet",
        "--subnet",
        "10.1.0.0/24",
        "-o",
        "network=atblue",
        "-o",
        "tenant=t1",
        "atblue",
    ]);
    docker.ok(&[
        "network",
        "create",
        "-d",
        "bridge",
        "--subnet",
        "10.9.0.0/24",
        "atbr",
    ]);
    c.api().ok(
        "POST",
        "/api/networks",
        Some(r#"{"name":"atgreen","subnet":"10.3.0.0/24","tenant":"t1"}"#),
    );
    let cni_bin = workspace_bin("daolinet-cni");
    let cni_dir: PathBuf = cni_bin.parent().unwrap().to_path_buf();
    let podman = Podman::new(&lab, &h.ns, &[&cni_dir, Path::new(CNI_PLUGINS)]);
    let conf = |name: &str, v: serde_json::Value| {
        std::fs::write(
            podman.cni_config_dir().join(format!("{name}.conflist")),
            serde_json::to_string_pretty(&v).unwrap(),
        )
        .unwrap();
    };
    podman.daolinet_network("atgreen", &h.agent_socket(), json!({}));
    let ipam_dir = lab.subdir("host-local");
    conf(
        "atpbr",
        json!({"cniVersion": "1.0.0", "name": "atpbr", "plugins": [{
            "type": "bridge",
            "bridge": "atpbr0",
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "dataDir": ipam_dir.to_str().unwrap(),
                "ranges": [[{"subnet": "10.8.0.0/24"}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }]}),
    );
    podman.import(&image, PODMAN_IMAGE);
    check_stop();

    let ways = [
        Way::new(
            "Docker, daolinet driver",
            "dd",
            Runtime::Docker(docker),
            "atblue",
        ),
        Way::new(
            "Docker, bridge driver",
            "db",
            Runtime::Docker(docker),
            "atbr",
        ),
        Way::new(
            "podman, daolinet-cni",
            "pd",
            Runtime::Podman(&podman),
            "atgreen",
        ),
        Way::new(
            "podman, CNI bridge",
            "pb",
            Runtime::Podman(&podman),
            "atpbr",
        ),
    ];
    // Warm-up, not measured: each way's first container after its peer
    // (first use of its code paths, caches, the image's layer).
    for w in &ways {
        check_stop();
        let out = lab.subdir(&format!("out-{}-warm", w.short));
        let one = vec![format!("{}-warm", w.short)];
        let (t, _) = w.start(&out, &one);
        w.rt.remove(&one);
        eprintln!("warm-up, {}: {:.0} ms (not counted)", w.label, ms(t[0]));
    }
    let mut results: Vec<Results> = ways.iter().map(|_| Results::default()).collect();
    for r in 0..rounds {
        let mut order: Vec<usize> = (0..ways.len()).collect();
        if r % 2 == 1 {
            order.reverse();
        }
        for &i in &order {
            check_stop();
            let w = &ways[i];
            let out = lab.subdir(&format!("out-{}-{r}", w.short));
            let one = vec![format!("{}-{r}-one", w.short)];
            let (t, _) = w.start(&out, &one);
            w.rt.remove(&one);
            let names: Vec<String> = (0..n).map(|k| format!("{}-{r}-{k}", w.short)).collect();
            let (per, total) = w.start(&out, &names);
            w.rt.remove(&names);
            let rate = n as f64 / total.as_secs_f64();
            let per: Vec<f64> = per.into_iter().map(ms).collect();
            eprintln!(
                "round {}/{rounds}, {}: one container {:.0} ms; {n} in a row {rate:.2}/s, p50 {:.0} ms, max {:.0} ms (load {})",
                r + 1,
                w.label,
                ms(t[0]),
                median(&per),
                quantile(&per, 1.0),
                loadavg()
            );
            let res = &mut results[i];
            res.single.push(ms(t[0]));
            res.rate.push(rate);
            res.per.extend(per);
        }
    }
    check_stop();
    let load_after = loadavg();

    println!("## Attach: from the run command to network\n");
    println!(
        "`cargo xtask bench attach` ({rounds} rounds, N = {n}; the example \
         `daolinet-docker/examples/attach_bench.rs` in release). One DaoliNet host (controller + agent \
         joined by itself) with one dockerd (the `daolinet` network and IPAM driver, and \
         Docker's own `bridge` driver on the same daemon) and podman (CNI backend: `daolinet-cni`, \
         and the reference `bridge` + `host-local` plugins). The time is from the `docker run -d` / \
         `podman run -d` command to the container's first echo reply from a peer container on its \
         network (same host, never talked to before: address, routes, ARP and DaoliNet's first-packet \
         decision in the controller all done); the container pings every 20 ms from its first \
         instruction and marks the first reply in a bind-mounted directory polled every 1 ms. \
         After one uncounted warm-up container per way, each round runs the four ways in alternating order: one container alone, then {n} started \
         in a row (each run right after the previous returned); containers/s = {n} / (last with \
         network - first run command). Load average before {load_before}, after {load_after} \
         (2 cores, shared with other helpers' builds and tests).\n"
    );
    println!(
        "| runtime, network | one container, median (ms) | {n} in a row, containers/s (median) | per container p50 (ms) | p99 (ms) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (w, r) in ways.iter().zip(&results) {
        println!(
            "| {} | {:.0} | {:.2} | {:.0} | {:.0} |",
            w.label,
            median(&r.single),
            median(&r.rate),
            median(&r.per),
            quantile(&r.per, 0.99)
        );
    }
    let ratio = |a: usize, b: usize| {
        let (x, y) = (&results[a], &results[b]);
        format!(
            "one container {:.2}x the time, {:.2}x the containers/s, p99 {:.2}x",
            median(&x.single) / median(&y.single),
            median(&x.rate) / median(&y.rate),
            quantile(&x.per, 0.99) / quantile(&y.per, 0.99)
        )
    };
    println!();
    println!(
        "- Docker, daolinet vs Docker's bridge driver: {}.",
        ratio(0, 1)
    );
    println!(
        "- podman, daolinet-cni vs Docker's bridge driver: {}.",
        ratio(2, 1)
    );
    println!(
        "- podman, daolinet-cni vs podman's CNI bridge: {}.",
        ratio(2, 3)
    );
    for w in &ways {
        let peer = format!("{}-peer", w.short);
        w.rt.remove(&[peer]);
    }
}
