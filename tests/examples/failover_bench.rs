//! The failover benchmark (`cargo xtask bench failover` builds it in release
//! and records what it prints in BENCHMARKS.md). Needs root, etcd,
//! iperf3 and the release-built controller, agent and loadgen next to it.
//!
//! 1. **Leader kills**: the lab of `tests/failover.rs` (3-member etcd,
//!    3 controllers with the default 2 s leases, 2 agent hosts connected to every
//!    controller), [`KILLS`] times: while `ping -i 0.01` and an iperf3
//!    stream run on established flows, `kill -9` the leader; the time until
//!    a new connection (a probe container that never sent before, pinging
//!    every 10 ms) gets its first answer, the pings lost and the stream's
//!    worst 0.5 s; then the killed controller is started again.
//!    Then [`MEMBER_KILLS`] times the etcd member that is the raft leader
//!    is killed the same way (the time to a working new connection while
//!    it is down, pings lost, whether the controllers' leader changed).
//! 2. **Decisions/s**: `daolinet-loadgen` (the controller benchmark's
//!    generator, throughput mode) against one controller with its embedded
//!    store and against the leader of 3 controllers on a 3-member etcd, runs
//!    alternating.
//!
//! Prints the markdown section on stdout (progress on stderr).
#![allow(clippy::panic)] // a failed measurement stops the benchmark

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use daolinet_testlab::{
    catch_signals, check_stop, median, quantile, workspace_bin, Controller, Lab, Need,
    ETCD_PROGRAMS,
};
use daolinet_tests::ha::{first_answer, metric, wait_raft_leader, Ha, HaOpts, Pinger, Stream};

/// Leader kills measured.
const KILLS: usize = 10;
/// etcd member kills measured (each time the raft leader, the worst case).
const MEMBER_KILLS: usize = 3;
/// Pings (10 ms apart) and stream seconds around each kill.
const PINGS: u32 = 500;
const STREAM_SECS: u32 = 5;
/// Loadgen repetitions per target, alternating.
const REPS: usize = 3;
const SWITCHES: usize = 16;
const CONTAINERS: usize = 32;
const WINDOW: usize = 64;

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// One etcd member kill.
struct MemberKill {
    new_conn: Duration,
    ovs_conn: Duration,
    sent: u32,
    received: u32,
    ovs_sent: u32,
    ovs_received: u32,
    /// The controller that led before and after.
    leaders: (usize, usize),
}

/// [`MEMBER_KILLS`] times, in the lab of the leader kills: pings on
/// established flows, the etcd raft leader `kill -9`ed 1 s into them, the
/// time to a working new connection from both kinds of host (new probes),
/// then the member started again and the cluster healthy.
fn member_kills(ha: &mut Ha) -> Vec<MemberKill> {
    let ipb = ha.b.ip.clone();
    let mut out = Vec::new();
    for k in 0..MEMBER_KILLS {
        check_stop();
        let probe = KILLS + k;
        let before = ha.leader();
        let pings = Pinger::start(&ha.a.ns, &ipb, PINGS);
        let ovs_pings = Pinger::start(&ha.ovs_ctrs[0].ns, &ipb, PINGS);
        std::thread::sleep(Duration::from_secs(1));
        let m = wait_raft_leader(&ha.etcd);
        ha.etcd.kill9(m);
        let killed = std::time::SystemTime::now();
        let (new_conn, ovs_conn) = std::thread::scope(|s| {
            let ovs = s.spawn(|| first_answer(&ha.ovs_ctrs[1 + probe].ns, &ipb, killed));
            let agent = first_answer(&ha.probes[probe].ns, &ipb, killed);
            let ovs = ovs
                .join()
                .unwrap_or_else(|_| panic!("the Open vSwitch probe failed"));
            (agent, ovs)
        });
        let after = ha.leader();
        let (sent, received) = pings.finish();
        let (ovs_sent, ovs_received) = ovs_pings.finish();
        eprintln!(
            "etcd member kill {}/{MEMBER_KILLS}: member {m} (the raft leader) killed, controller {before} led, {after} leads; new connection after {new_conn:?} (agent host), {ovs_conn:?} (Open vSwitch host); pings {received}/{sent}, from Open vSwitch {ovs_received}/{ovs_sent}",
            k + 1
        );
        out.push(MemberKill {
            new_conn,
            ovs_conn,
            sent,
            received,
            ovs_sent,
            ovs_received,
            leaders: (before, after),
        });
        ha.etcd.start_member(m);
        ha.etcd.wait_healthy(Duration::from_secs(30));
        ha.all_connected();
        ha.ovs_obeys_leader();
    }
    out
}

/// One leader kill.
struct Kill {
    /// When another controller was first seen leading.
    elected: Duration,
    new_conn: Duration,
    ovs_conn: Duration,
    sent: u32,
    received: u32,
    ovs_sent: u32,
    ovs_received: u32,
    retransmits: u64,
    /// The stream's worst 0.5 s interval over its median one.
    worst: f64,
}

/// (retransmits, worst 0.5 s interval over the median one) of a stream.
fn stream_figures(r: &daolinet_tests::ha::StreamReport) -> (u64, f64) {
    let bytes: Vec<f64> = r.intervals.iter().map(|b| *b as f64).collect();
    (
        r.retransmits,
        quantile(&bytes, 0.0) / median(&bytes).max(1.0),
    )
}

/// The leader kills, and the same stream without a kill before each
/// third kill (the baseline: retransmits and dips of this loaded machine).
fn kills() -> (Vec<Kill>, Vec<(u64, f64)>, Vec<MemberKill>) {
    let Some(mut ha) = Ha::new(HaOpts {
        probes: KILLS + MEMBER_KILLS,
        ovs: true,
        ..HaOpts::default()
    }) else {
        panic!("the failover lab cannot run here (see the line above)");
    };
    let ipb = ha.b.ip.clone();
    let mut out = Vec::new();
    let mut baseline = Vec::new();
    for k in 0..KILLS {
        check_stop();
        if k % 3 == 0 {
            let stream = Stream::start(&ha.b.ns, &ha.a.ns, &ipb, STREAM_SECS);
            let r = stream_figures(&stream.finish("no kill"));
            eprintln!(
                "no kill: stream {} retransmits, worst 0.5 s at {:.0}% of the median",
                r.0,
                r.1 * 100.0
            );
            baseline.push(r);
        }
        let old = ha.leader();
        let pings = Pinger::start(&ha.a.ns, &ipb, PINGS);
        let ovs_pings = Pinger::start(&ha.ovs_ctrs[0].ns, &ipb, PINGS);
        let stream = Stream::start(&ha.b.ns, &ha.a.ns, &ipb, STREAM_SECS);
        // Both established (the stream's first interval done) before the kill.
        std::thread::sleep(Duration::from_secs(1));
        let killed = ha.kill9(old);
        let (elected, new_conn, ovs_conn) = std::thread::scope(|s| {
            let ovs = s.spawn(|| first_answer(&ha.ovs_ctrs[1 + k].ns, &ipb, killed));
            let elected = s.spawn(|| ha.new_leader_seen(old, killed));
            let agent = first_answer(&ha.probes[k].ns, &ipb, killed);
            let ovs = ovs
                .join()
                .unwrap_or_else(|_| panic!("the Open vSwitch probe failed"));
            let elected = elected.join().unwrap_or_else(|_| panic!("no new leader"));
            (elected, agent, ovs)
        });
        let new = ha.leader();
        let (sent, received) = pings.finish();
        let (ovs_sent, ovs_received) = ovs_pings.finish();
        let r = stream.finish("leader killed");
        let (_, worst) = stream_figures(&r);
        eprintln!(
            "kill {}/{KILLS}: controller {old} killed, {new} leads (seen after {elected:?}); new connection after {new_conn:?} (agent host), {ovs_conn:?} (Open vSwitch host); pings {received}/{sent}, from Open vSwitch {ovs_received}/{ovs_sent}; stream {} retransmits, worst 0.5 s at {:.0}% of the median",
            k + 1,
            r.retransmits,
            worst * 100.0
        );
        out.push(Kill {
            elected,
            new_conn,
            ovs_conn,
            sent,
            received,
            ovs_sent,
            ovs_received,
            retransmits: r.retransmits,
            worst,
        });
        ha.start(old);
        ha.all_connected();
        ha.ovs_obeys_leader();
    }
    let members = member_kills(&mut ha);
    (out, baseline, members)
}

/// One loadgen throughput run against `port` in `ns`: decisions/s and the
/// controller's CPU microseconds per decision; `Err` when the generator
/// failed (e.g. nothing answered: the controller was not master then).
fn loadgen(ns: &str, port: u16, pid: u32) -> Result<(f64, f64), String> {
    let gen = workspace_bin("daolinet-loadgen");
    let gen = gen.to_string_lossy();
    let mut child = daolinet_testlab::command(&[
        "ip",
        "netns",
        "exec",
        ns,
        &gen,
        "run",
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--warmup",
        "1",
        "--seconds",
        "4",
        "--containers",
        &CONTAINERS.to_string(),
        "--switches",
        &SWITCHES.to_string(),
        "--window",
        &WINDOW.to_string(),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .unwrap_or_else(|e| panic!("daolinet-loadgen: {e}"));
    let stdout = child
        .stdout
        .take()
        .unwrap_or_else(|| panic!("no loadgen stdout"));
    let (mut cpu0, mut cpu1) = (None, None);
    let mut result = String::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        match line.trim() {
            "MEASURING" => cpu0 = cpu_seconds(pid),
            "MEASURED" => cpu1 = cpu_seconds(pid),
            l if l.starts_with("RESULT ") => result = l.to_string(),
            _ => {}
        }
    }
    let st = child.wait();
    if !st.as_ref().is_ok_and(|s| s.success()) {
        return Err(format!("daolinet-loadgen: {st:?}"));
    }
    let get = |k: &str| -> f64 {
        result
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {result:?}"))
    };
    let (rate, answered) = (get("rate"), get("answered"));
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) if answered > 0.0 => (b - a) * 1e6 / answered,
        _ => f64::NAN,
    };
    Ok((rate, cpu))
}

/// CPU time (user + system) a process has used, in seconds (100 Hz ticks).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// `daolinet-loadgen register` through `ctl`'s API.
fn register(ns: &str, ctl: &Controller) {
    let gen = workspace_bin("daolinet-loadgen");
    let token = ctl.dir().join("api-token");
    daolinet_testlab::sh(&[
        "ip",
        "netns",
        "exec",
        ns,
        &gen.to_string_lossy(),
        "register",
        "--api",
        &ctl.api().base(),
        "--token-file",
        &token.to_string_lossy(),
        "--switches",
        &SWITCHES.to_string(),
        "--containers",
        &CONTAINERS.to_string(),
    ]);
}

/// (decisions/s, CPU us per decision) runs: [one controller, cluster leader].
fn decisions() -> [Vec<(f64, f64)>; 2] {
    let mut needs = vec![
        Need::Binary("daolinet-controller"),
        Need::Binary("daolinet-loadgen"),
    ];
    needs.extend(ETCD_PROGRAMS.map(Need::Program));
    let Some(lab) = Lab::new(&needs) else {
        panic!("the decisions lab cannot run here (see the line above)");
    };
    let etcd = lab.etcd(3);
    let ns = etcd.netns().name().to_string();
    let store = etcd.store_spec();
    let cluster: Vec<Controller> = [6671u16, 6672, 6673]
        .iter()
        .map(|p| {
            Controller::start(
                &lab.controller_opts()
                    .netns(&ns)
                    .store(&store)
                    .listen(&format!("127.0.0.1:{p}"))
                    // This part measures decisions, not failover: with 1 s
                    // leases a loaded machine may move the leadership in
                    // the middle of a run (it did, and the run had no
                    // answers).
                    .args(&["--lease-ttl", "5"]),
            )
        })
        .collect();
    let one = Controller::start(&lab.controller_opts().netns(&ns).listen("127.0.0.1:6670"));
    register(&ns, &one);
    register(&ns, &cluster[0]);
    let leader = || {
        daolinet_testlab::wait_for("a leader", Duration::from_secs(30), || {
            cluster
                .iter()
                .position(|c| metric(c, "daolinet_leader") == Some(1))
        })
    };
    leader();
    // Every controller has loaded what the registration wrote.
    let want = (SWITCHES * CONTAINERS) as u64;
    for c in &cluster {
        daolinet_testlab::wait_until("the cluster's model", Duration::from_secs(60), || {
            c.api()
                .ok("GET", "/api/containers", None)
                .as_array()
                .is_some_and(|a| a.len() as u64 >= want)
        });
    }
    let mut out: [Vec<(f64, f64)>; 2] = Default::default();
    for rep in 0..REPS {
        for i in 0..2 {
            check_stop();
            // A run that got no answers (the leader moved meanwhile) is
            // made again, against the leader of then, at most twice.
            let mut attempt = 0;
            let r = loop {
                let t = if i == 0 { &one } else { &cluster[leader()] };
                match loadgen(&ns, t.openflow_port(), t.pid()) {
                    Ok(r) => break r,
                    Err(e) if attempt < 2 => {
                        attempt += 1;
                        eprintln!("decisions, repetition {}/{REPS}: {e}; again", rep + 1);
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            eprintln!(
                "decisions, repetition {}/{REPS}, {}: {:.0}/s, {:.2} CPU us per decision",
                rep + 1,
                ["one controller", "cluster leader"][i],
                r.0,
                r.1
            );
            out[i].push(r);
        }
    }
    out
}

fn main() {
    catch_signals();
    let started = Instant::now();
    let load0 = loadavg();
    let (ks, baseline, mks) = kills();
    let load1 = loadavg();
    let ds = decisions();
    let load2 = loadavg();
    let ms: Vec<f64> = ks
        .iter()
        .map(|k| k.new_conn.as_secs_f64() * 1000.0)
        .collect();
    let ovs_ms: Vec<f64> = ks
        .iter()
        .map(|k| k.ovs_conn.as_secs_f64() * 1000.0)
        .collect();
    let el_ms: Vec<f64> = ks
        .iter()
        .map(|k| k.elected.as_secs_f64() * 1000.0)
        .collect();
    let ovs_sent: u32 = ks.iter().map(|k| k.ovs_sent).sum();
    let ovs_lost: u32 = ks.iter().map(|k| k.ovs_sent - k.ovs_received).sum();
    let runs = |v: &[f64], d: usize| {
        v.iter()
            .map(|x| format!("{x:.d$}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let sent: u32 = ks.iter().map(|k| k.sent).sum();
    let lost: u32 = ks.iter().map(|k| k.sent - k.received).sum();
    let retrans: Vec<f64> = ks.iter().map(|k| k.retransmits as f64).collect();
    let worst: Vec<f64> = ks.iter().map(|k| k.worst * 100.0).collect();
    let base_retr: Vec<f64> = baseline.iter().map(|b| b.0 as f64).collect();
    let base_worst: Vec<f64> = baseline.iter().map(|b| b.1 * 100.0).collect();
    let m_ms: Vec<f64> = mks
        .iter()
        .map(|k| k.new_conn.as_secs_f64() * 1000.0)
        .collect();
    let m_ovs_ms: Vec<f64> = mks
        .iter()
        .map(|k| k.ovs_conn.as_secs_f64() * 1000.0)
        .collect();
    let m_sent: u32 = mks.iter().map(|k| k.sent).sum();
    let m_lost: u32 = mks.iter().map(|k| k.sent - k.received).sum();
    let m_ovs_sent: u32 = mks.iter().map(|k| k.ovs_sent).sum();
    let m_ovs_lost: u32 = mks.iter().map(|k| k.ovs_sent - k.ovs_received).sum();
    let m_moved = mks.iter().filter(|k| k.leaders.0 != k.leaders.1).count();
    let rate = |i: usize| -> Vec<f64> { ds[i].iter().map(|r| r.0).collect() };
    let cpu = |i: usize| -> Vec<f64> { ds[i].iter().map(|r| r.1).collect() };
    let (r1, r3) = (median(&rate(0)), median(&rate(1)));
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "## Failover: 3 controllers on etcd\n\n\
         Command: `cargo xtask bench failover` (the example `tests/examples/failover_bench.rs`, \
         release build). The lab of `tests/tests/failover.rs`: a 3-member etcd cluster \
         (Debian etcd-server, heartbeat 50 ms, election timeout 500 ms), 3 controllers with \
         the default 2 s leases, two agent hosts and an Open vSwitch host (userspace datapath, \
         joined with `daolictl host join-ovs`) on an underlay bridge, every switch connected \
         to all 3 controllers (OVS: `ovs-vsctl set-controller` with 3 targets; the leader is \
         its master, the others slaves). {KILLS} times: `ping -i 0.01` (a -> b between the \
         agent hosts, and e -> b from the Open vSwitch host) and an iperf3 stream (a -> b) \
         run on established flows, the leader is killed with `kill -9` 1 s into them; two \
         probe containers that never sent before, one on an agent host and one on the Open \
         vSwitch host, then ping b every 10 ms until the first answer (every unanswered ping \
         is another first packet for the controllers): the time from the kill to that \
         answer (its receive timestamp, `ping -D`) is the time to a working new connection. \
         The killed controller is started again (and Open vSwitch back to one master) before \
         the next kill.\n\n\
         Machine: {nproc} cores, **shared and loaded** (other helpers' builds, tests and \
         benchmarks ran at the same time): load average (1, 5, 15 min) {load0} at the start, \
         {load1} after the kills, {load2} at the end; {secs:.0} s in all.\n\n\
         | {KILLS} leader kills: time to a working new connection | p50 | max | (runs, ms) |\n\
         |---|---:|---:|---|\n\
         | from an agent host | **{p50:.0} ms** | **{max:.0} ms** | {list} |\n\
         | from the Open vSwitch host | **{op50:.0} ms** | **{omax:.0} ms** | {olist} |\n\
         | (another controller seen leading: its `daolinet_leader` metric, polled every 10 ms) | {ep50:.0} ms | {emax:.0} ms | {elist} |\n\n\
         Established flows over the {KILLS} kills: pings lost **{lost} of {sent}** between \
         the agent hosts and **{ovs_lost} of {ovs_sent}** from the Open vSwitch host \
         (`ping -i 0.01`, {PINGS} per kill each); iperf3 ({STREAM_SECS} s per kill, 0.5 s \
         intervals): retransmits per kill {retr} (median {rmed:.0}), the worst 0.5 s \
         interval of each stream as % of its median interval: {worst} (lowest {wmin:.0}%); \
         the same stream without a kill ({nbase} runs between the kills, the baseline of \
         this loaded machine): retransmits {bretr} (median {bmed:.0}), worst 0.5 s interval \
         {bworst}%. \
         The established flows are in the switches' datapaths, which forward on their own \
         while no controller is master. The time to a new connection: the followers ask \
         etcd every 100 ms how long the leader's lease has left and revoke it once etcd \
         reports less than 1 s (no keep-alive for over TTL - 1 s = 1 s), then the next \
         candidate's election and its ROLE_REQUEST to every switch (the row \
         \"another controller seen leading\" is the first part).\n\n\
         Then, in the same lab, {MEMBER_KILLS} times: the same pings on established flows, \
         the etcd member that is the raft leader (`etcdctl endpoint status`) is killed with \
         `kill -9` 1 s into them, and two more probes that never sent before (an agent host, \
         the Open vSwitch host) ping b until the first answer; the member is started again \
         and the cluster healthy before the next kill.\n\n\
         | {MEMBER_KILLS} etcd member (raft leader) kills: time to a working new connection | p50 | max | (runs, ms) |\n\
         |---|---:|---:|---|\n\
         | from an agent host | **{mp50:.0} ms** | **{mmax:.0} ms** | {mlist} |\n\
         | from the Open vSwitch host | **{mop50:.0} ms** | **{momax:.0} ms** | {molist} |\n\n\
         Established flows over the {MEMBER_KILLS} member kills: pings lost **{m_lost} of \
         {m_sent}** between the agent hosts and **{m_ovs_lost} of {m_ovs_sent}** from the \
         Open vSwitch host; the controllers' leader changed in {m_moved} of the \
         {MEMBER_KILLS} (etcd elects a new raft leader within its 500 ms election timeout; a \
         controller whose lease keep-alive goes unanswered for 0.75 s steps down, before a \
         follower may revoke its lease).\n\n\
         Decisions/s: `daolinet-loadgen` in throughput mode ({SWITCHES} fake switches, \
         {CONTAINERS} containers each, {WINDOW} PACKET_INs in flight per switch, 4 s after \
         1 s warm-up; see the controller benchmark) against one controller with its \
         embedded store and against the leader of 3 controllers on a 3-member etcd \
         (`--lease-ttl 5` here, so that a loaded machine does not move the leadership in \
         the middle of a run; the leader decides for every switch, the others are slaves; a \
         run without answers is made again against the leader of then), runs alternating, \
         {REPS} each, in the same namespace at the same time:\n\n\
         | controller | decisions/s (runs) | controller CPU us per decision (runs) |\n\
         |---|---:|---:|\n\
         | one controller, embedded store | **{r1:.0}** ({o1}) | **{c1:.2}** ({oc1}) |\n\
         | leader of 3 on etcd | **{r3:.0}** ({o3}) | **{c3:.2}** ({oc3}) |\n\
         | **cluster / one** | **{ratio:.2}x** | |\n",
        load0 = load0,
        load1 = load1,
        load2 = load2,
        secs = started.elapsed().as_secs_f64(),
        p50 = quantile(&ms, 0.5),
        max = quantile(&ms, 1.0),
        list = runs(&ms, 0),
        op50 = quantile(&ovs_ms, 0.5),
        omax = quantile(&ovs_ms, 1.0),
        olist = runs(&ovs_ms, 0),
        ep50 = quantile(&el_ms, 0.5),
        emax = quantile(&el_ms, 1.0),
        elist = runs(&el_ms, 0),
        retr = runs(&retrans, 0),
        rmed = median(&retrans),
        worst = runs(&worst, 0),
        wmin = quantile(&worst, 0.0),
        nbase = baseline.len(),
        bretr = runs(&base_retr, 0),
        bmed = median(&base_retr),
        bworst = runs(&base_worst, 0),
        o1 = runs(&rate(0), 0),
        o3 = runs(&rate(1), 0),
        c1 = median(&cpu(0)),
        c3 = median(&cpu(1)),
        oc1 = runs(&cpu(0), 2),
        oc3 = runs(&cpu(1), 2),
        ratio = r3 / r1,
        mp50 = quantile(&m_ms, 0.5),
        mmax = quantile(&m_ms, 1.0),
        mlist = runs(&m_ms, 0),
        mop50 = quantile(&m_ovs_ms, 0.5),
        momax = quantile(&m_ovs_ms, 1.0),
        molist = runs(&m_ovs_ms, 0),
    );
}
