//! The I/O edge: one tokio task per fake switch, each a non-blocking loop
//! over its TCP connection driving a [`Switch`] and a [`Window`].

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BytesMut};
use daolinet_rxstamp as rxstamp;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::plan::{flows, Plan};
use crate::switch::{Counters, Switch};
use crate::window::{percentiles, Percentiles, Window};
use crate::Mode;

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Controller address.
    pub connect: String,
    /// Topology.
    pub plan: Plan,
    /// Throughput or latency.
    pub mode: Mode,
    /// PACKET_INs in flight per switch.
    pub window: usize,
    /// Load before measuring.
    pub warmup: Duration,
    /// Measured time.
    pub seconds: Duration,
    /// Runtime worker threads.
    pub threads: usize,
    /// Time allowed to connect and handshake.
    pub connect_timeout: Duration,
    /// Age after which an unanswered PACKET_IN is lost.
    pub lost_after: Duration,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// PACKET_INs answered by their FLOW_MOD during the measurement.
    pub answered: u64,
    /// Measured wall time.
    pub elapsed: Duration,
    /// Answers per second, per one-second interval.
    pub per_second: Vec<f64>,
    /// FLOW_MODs received during the measurement.
    pub flow_mods: u64,
    /// PACKET_OUTs received during the measurement.
    pub packet_outs: u64,
    /// Round-trip percentiles (measurement only): from just before the
    /// PACKET_IN's `write` to the kernel's receive timestamp of the read that
    /// brought its FLOW_MOD (the generator's own wake-up and work excluded).
    pub latency: Option<Percentiles>,
    /// The same round trips measured to when the generator had read the
    /// FLOW_MOD (its wake-up and scheduling included).
    pub latency_user: Option<Percentiles>,
    /// Totals over the whole run, all switches.
    pub totals: Counters,
    /// PACKET_INs sent over the whole run.
    pub sent: u64,
    /// PACKET_INs never answered.
    pub lost: u64,
    /// The first OFPT_ERROR a controller sent, if any.
    pub first_error: Option<String>,
    /// CPU time (user + system) the generator used over the whole run.
    pub cpu: Option<Duration>,
    /// The slowest switch's time from its TCP connect to the controller's
    /// FEATURES_REQUEST (the handshake answered).
    pub features_after: Option<Duration>,
    /// The slowest switch's time from its TCP connect to the controller's
    /// first FLOW_MOD (its flows being installed: the switch is served).
    pub served_after: Option<Duration>,
}

impl Report {
    /// Answered PACKET_INs per second.
    pub fn rate(&self) -> f64 {
        self.answered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Generator CPU time per decided PACKET_IN, in microseconds.
    pub fn cpu_us_per_decision(&self) -> Option<f64> {
        let decided = self.sent.saturating_sub(self.lost);
        let cpu = self.cpu?;
        (decided > 0).then(|| cpu.as_secs_f64() * 1e6 / decided as f64)
    }

    /// A human summary.
    pub fn human(&self, cfg: &RunConfig) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let mut s = format!(
            "{:?} mode, {} switches x {} containers, window {}, {:.1} s measured after {:.1} s warm-up\n",
            cfg.mode,
            cfg.plan.switches,
            cfg.plan.containers,
            cfg.window,
            secs,
            cfg.warmup.as_secs_f64()
        );
        s += &format!(
            "  answered PACKET_IN/s: {:.0}  (per second: {})\n",
            self.rate(),
            self.per_second
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        s += &format!(
            "  FLOW_MOD/s: {:.0}  PACKET_OUT/s: {:.0}\n",
            self.flow_mods as f64 / secs,
            self.packet_outs as f64 / secs
        );
        if let Some(p) = self.latency {
            s += &format!(
                "  round trip to the kernel's receive timestamp (us): p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  ({} samples)\n",
                p.p50, p.p90, p.p99, p.p999, p.max, p.count
            );
        }
        if let Some(p) = self.latency_user {
            s += &format!(
                "  round trip to the generator's read (us):           p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}\n",
                p.p50, p.p90, p.p99, p.p999, p.max
            );
        }
        s += &format!(
            "  whole run: sent {} PACKET_IN, lost {}, received {} FLOW_MOD ({} keyed adds), {} PACKET_OUT, {} BARRIER, {} ERROR; answered {} with ERROR\n",
            self.sent,
            self.lost,
            self.totals.flow_mods,
            self.totals.flow_mod_adds,
            self.totals.packet_outs,
            self.totals.barriers,
            self.totals.errors_received,
            self.totals.errors_sent
        );
        if let Some(e) = &self.first_error {
            s += &format!("  first OFPT_ERROR from the controller: {e}\n");
        }
        if let Some(c) = self.cpu_us_per_decision() {
            s += &format!("  generator CPU: {c:.2} us per decided PACKET_IN\n");
        }
        s
    }

    /// The machine-readable line.
    pub fn result_line(&self, cfg: &RunConfig) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let mut s = format!(
            "RESULT mode={} switches={} containers={} window={} seconds={:.3} answered={} rate={:.1} flow_mods_per_s={:.1} packet_outs_per_s={:.1} sent={} lost={} errors_received={}",
            match cfg.mode {
                Mode::Throughput => "throughput",
                Mode::Latency => "latency",
            },
            cfg.plan.switches,
            cfg.plan.containers,
            cfg.window,
            secs,
            self.answered,
            self.rate(),
            self.flow_mods as f64 / secs,
            self.packet_outs as f64 / secs,
            self.sent,
            self.lost,
            self.totals.errors_received,
        );
        if let Some(c) = self.cpu_us_per_decision() {
            s += &format!(" gen_cpu_us={c:.3}");
        }
        if let Some(p) = self.latency {
            s += &format!(
                " p50_us={:.2} p90_us={:.2} p99_us={:.2} p999_us={:.2} max_us={:.2} samples={}",
                p.p50, p.p90, p.p99, p.p999, p.max, p.count
            );
        }
        if let Some(p) = self.latency_user {
            s += &format!(
                " user_p50_us={:.2} user_p99_us={:.2} user_max_us={:.2}",
                p.p50, p.p99, p.max
            );
        }
        if let Some(d) = self.features_after {
            s += &format!(" features_ms={:.2}", d.as_secs_f64() * 1e3);
        }
        if let Some(d) = self.served_after {
            s += &format!(" served_ms={:.2}", d.as_secs_f64() * 1e3);
        }
        s
    }
}

#[derive(Default)]
struct Shared {
    ready: AtomicUsize,
    started: AtomicBool,
    measuring: AtomicBool,
    stop: AtomicBool,
    answered: AtomicU64,
    flow_mods: AtomicU64,
    packet_outs: AtomicU64,
}

struct SwitchResult {
    counters: Counters,
    latencies: Vec<u64>,
    latencies_user: Vec<u64>,
    sent: u64,
    lost: u64,
    first_error: Option<String>,
    /// From the TCP connect to FEATURES_REQUEST, and to the first FLOW_MOD.
    features_after: Option<Duration>,
    served_after: Option<Duration>,
}

async fn connect(addr: &str, deadline: Instant) -> Result<TcpStream> {
    loop {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("connect {addr}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(anyhow!("cannot connect to {addr}: {e}")),
        }
    }
}

async fn switch_task(
    cfg: Arc<RunConfig>,
    shared: Arc<Shared>,
    s: usize,
    flows: Arc<Vec<crate::plan::Flow>>,
) -> Result<SwitchResult> {
    let deadline = Instant::now() + cfg.connect_timeout;
    let stream = connect(&cfg.connect, deadline).await?;
    let connected = Instant::now();
    let (mut features_after, mut served_after) = (None, None);
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    rxstamp::enable(&stream).context("SO_TIMESTAMPNS")?;
    // Reads land here with their kernel receive time, then in rbuf.
    let mut scratch = vec![0u8; 64 * 1024];
    let mut sw = Switch::new(&cfg.plan, s);
    let mut win = Window::new(flows, cfg.window);
    let mut rbuf = BytesMut::with_capacity(256 * 1024);
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    let mut latencies = Vec::new();
    let mut latencies_user = Vec::new();
    let mut ready_reported = false;
    let mut flushed = Counters::default();
    sw.hello(&mut wbuf)?;
    let record = cfg.mode == Mode::Latency;
    let tick = Duration::from_millis(20);
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        if !ready_reported && sw.features_sent() {
            ready_reported = true;
            features_after = Some(connected.elapsed());
            shared.ready.fetch_add(1, Ordering::Relaxed);
        }
        if served_after.is_none() && sw.counters.flow_mods > 0 {
            served_after = Some(connected.elapsed());
        }
        let now = Instant::now();
        if shared.started.load(Ordering::Relaxed) {
            win.fill(now, &mut wbuf);
        }
        // Write what we can without blocking.
        while !wbuf.is_empty() {
            match stream.try_write(&wbuf) {
                Ok(0) => bail!("switch {s}: the controller closed the connection"),
                Ok(n) => wbuf.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => bail!("switch {s}: write: {e}"),
            }
        }
        let interest = if wbuf.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        let ready = match tokio::time::timeout(tick, stream.ready(interest)).await {
            Ok(r) => r.with_context(|| format!("switch {s}: poll"))?,
            Err(_) => {
                // Idle: expire what will never be answered.
                win.expire(Instant::now(), cfg.lost_after);
                continue;
            }
        };
        if ready.is_readable() {
            if rbuf.capacity() - rbuf.len() < 64 * 1024 {
                rbuf.reserve(128 * 1024);
            }
            match stream.try_io(Interest::READABLE, || rxstamp::recv(&stream, &mut scratch)) {
                Ok((0, _)) => {
                    if shared.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    bail!(
                        "switch {s}: the controller closed the connection{}",
                        sw.first_error
                            .as_ref()
                            .map(|e| format!(" (after OFPT_ERROR {e})"))
                            .unwrap_or_default()
                    );
                }
                Ok((n, stamp)) => {
                    let now = Instant::now();
                    // How long the data waited in the kernel for us: our
                    // wake-up, not the controller's latency.
                    let waited = stamp
                        .map(|t| rxstamp::age(t, SystemTime::now()))
                        .unwrap_or_default();
                    rbuf.extend_from_slice(scratch.get(..n).unwrap_or_default());
                    let measuring = record && shared.measuring.load(Ordering::Relaxed);
                    let mut answered = 0u64;
                    let used = sw
                        .feed(&rbuf, &mut wbuf, |k| {
                            if let Some(rtt) = win.answer(k, now) {
                                answered += 1;
                                if measuring {
                                    let ns =
                                        |d: Duration| d.as_nanos().min(u128::from(u64::MAX)) as u64;
                                    latencies.push(ns(rtt.saturating_sub(waited)));
                                    latencies_user.push(ns(rtt));
                                }
                            }
                        })
                        .map_err(|e| anyhow!("switch {s}: {e}"))?;
                    rbuf.advance(used);
                    shared.answered.fetch_add(answered, Ordering::Relaxed);
                    let c = sw.counters;
                    shared
                        .flow_mods
                        .fetch_add(c.flow_mods - flushed.flow_mods, Ordering::Relaxed);
                    shared
                        .packet_outs
                        .fetch_add(c.packet_outs - flushed.packet_outs, Ordering::Relaxed);
                    flushed = c;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => bail!("switch {s}: read: {e}"),
            }
        }
    }
    Ok(SwitchResult {
        counters: sw.counters,
        latencies,
        latencies_user,
        sent: win.sent,
        lost: win.lost,
        first_error: sw.first_error,
        features_after,
        served_after,
    })
}

/// Connects, handshakes, loads and measures; returns the report.
pub fn run(cfg: &RunConfig) -> Result<Report> {
    let rt = if cfg.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(drive(cfg))
}

/// Tells a supervising tool, on stdout and at once, when the measurement
/// starts and ends (so it can sample the controller's CPU time exactly then).
fn marker(what: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{what}");
    let _ = out.flush();
}

/// CPU time (user + system) this process has used.
fn own_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux architecture we run on.
    Some(Duration::from_millis(ticks * 10))
}

async fn drive(cfg: &RunConfig) -> Result<Report> {
    let cpu0 = own_cpu();
    let shared = Arc::new(Shared::default());
    let acfg = Arc::new(cfg.clone());
    let mut tasks = Vec::new();
    for s in 0..cfg.plan.switches {
        let fl = Arc::new(flows(&cfg.plan, s)?);
        tasks.push(tokio::spawn(switch_task(
            acfg.clone(),
            shared.clone(),
            s,
            fl,
        )));
    }
    let n = cfg.plan.switches;
    let stop_all = |shared: &Shared| shared.stop.store(true, Ordering::Relaxed);

    // Handshake: every switch answered a FEATURES_REQUEST.
    let deadline = Instant::now() + cfg.connect_timeout;
    while shared.ready.load(Ordering::Relaxed) < n {
        if let Some(t) = tasks.iter_mut().find(|t| t.is_finished()) {
            stop_all(&shared);
            return Err(match t.await {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => anyhow!("a switch stopped during the handshake"),
                Err(e) => anyhow!("switch task failed: {e}"),
            });
        }
        if Instant::now() > deadline {
            stop_all(&shared);
            bail!(
                "only {} of {n} switches were asked for their features within {:.0} s (is the controller listening on {}?)",
                shared.ready.load(Ordering::Relaxed),
                cfg.connect_timeout.as_secs_f64(),
                cfg.connect
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the controller finish its own connection set-up (port
    // description, initial flows) before the first PACKET_IN.
    tokio::time::sleep(Duration::from_millis(500)).await;
    shared.started.store(true, Ordering::Relaxed);
    tokio::time::sleep(cfg.warmup).await;

    let snap = |sh: &Shared| {
        (
            Instant::now(),
            sh.answered.load(Ordering::Relaxed),
            sh.flow_mods.load(Ordering::Relaxed),
            sh.packet_outs.load(Ordering::Relaxed),
        )
    };
    shared.measuring.store(true, Ordering::Relaxed);
    marker("MEASURING");
    let start = snap(&shared);
    let mut per_second = Vec::new();
    let mut last = start;
    let end_at = start.0 + cfg.seconds;
    loop {
        let now = Instant::now();
        if now >= end_at {
            break;
        }
        let step = (end_at - now).min(Duration::from_secs(1));
        tokio::time::sleep(step).await;
        let cur = snap(&shared);
        let dt = (cur.0 - last.0).as_secs_f64();
        if dt >= 0.5 {
            per_second.push((cur.1 - last.1) as f64 / dt);
        }
        last = cur;
        if tasks.iter().any(|t| t.is_finished()) {
            break;
        }
    }
    shared.measuring.store(false, Ordering::Relaxed);
    marker("MEASURED");
    let end = snap(&shared);
    stop_all(&shared);

    let mut totals = Counters::default();
    let mut lat = Vec::new();
    let mut lat_user = Vec::new();
    let (mut sent, mut lost) = (0, 0);
    let mut first_error = None;
    let (mut features_after, mut served_after) = (None, None);
    for t in tasks {
        let r = t.await.map_err(|e| anyhow!("switch task failed: {e}"))??;
        totals.add(&r.counters);
        lat.extend(r.latencies);
        lat_user.extend(r.latencies_user);
        sent += r.sent;
        lost += r.lost;
        if first_error.is_none() {
            first_error = r.first_error;
        }
        features_after = features_after.max(r.features_after);
        served_after = served_after.max(r.served_after);
    }
    Ok(Report {
        answered: end.1 - start.1,
        elapsed: end.0 - start.0,
        per_second,
        flow_mods: end.2 - start.2,
        packet_outs: end.3 - start.3,
        latency: if cfg.mode == Mode::Latency {
            percentiles(&mut lat)
        } else {
            None
        },
        latency_user: if cfg.mode == Mode::Latency {
            percentiles(&mut lat_user)
        } else {
            None
        },
        totals,
        sent,
        lost,
        first_error,
        cpu: match (cpu0, own_cpu()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        features_after,
        served_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(addr: String, mode: Mode) -> RunConfig {
        RunConfig {
            connect: addr,
            plan: Plan::new(3, 6).unwrap(),
            mode,
            window: if mode == Mode::Latency { 1 } else { 8 },
            warmup: Duration::from_millis(100),
            seconds: Duration::from_millis(600),
            threads: 1,
            connect_timeout: Duration::from_secs(5),
            lost_after: Duration::from_secs(1),
        }
    }

    /// The floor-reference controller on a thread of its own.
    fn reference() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        l.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(l).unwrap();
                let _ = crate::reference::serve_on(l, &Plan::new(3, 6).unwrap()).await;
            });
        });
        addr
    }

    #[test]
    fn end_to_end_against_the_reference_controller() {
        let addr = reference();
        let c = cfg(addr.clone(), Mode::Throughput);
        let r = run(&c).unwrap();
        assert!(r.answered > 0, "{}", r.human(&c));
        assert_eq!(r.lost, 0);
        // Every decision: 2 FLOW_MODs and 1 PACKET_OUT.
        assert_eq!(r.totals.flow_mod_adds, r.totals.flow_mods);
        assert!(r.totals.packet_outs * 2 <= r.totals.flow_mods + 2);
        assert!(r.result_line(&c).starts_with("RESULT mode=throughput "));

        let c = cfg(addr, Mode::Latency);
        let r = run(&c).unwrap();
        let p = r.latency.expect("latency samples");
        assert!(p.count > 0 && p.p50 <= p.p99 && p.p99 <= p.max);
        let u = r.latency_user.expect("user-space latency samples");
        assert_eq!(u.count, p.count);
        // The kernel's receive time comes before our read.
        assert!(p.p50 <= u.p50 && p.max <= u.max, "{p:?} {u:?}");
        assert!(r.result_line(&c).contains(" p99_us="));
        assert!(r.result_line(&c).contains(" user_p99_us="));
    }

    #[test]
    fn a_silent_or_absent_controller_is_a_clear_error() {
        // Accepts but never speaks: no FEATURES_REQUEST.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = cfg(l.local_addr().unwrap().to_string(), Mode::Throughput);
        c.connect_timeout = Duration::from_millis(400);
        let e = run(&c).unwrap_err().to_string();
        assert!(e.contains("only 0 of 3 switches"), "{e}");
        drop(l);
        // Nothing listens.
        let e = run(&c).unwrap_err().to_string();
        assert!(
            e.contains("cannot connect") || e.contains("only 0 of 3"),
            "{e}"
        );
    }
}
