//! `cargo xtask bench agent`: the agent as an OpenFlow switch, side by side
//! with Open vSwitch (userspace datapath, `datapath_type=netdev`) on the same
//! topology (one host namespace, two containers) and under the same
//! controller (this benchmark, speaking OpenFlow 1.3 through the project's
//! codec):
//!
//! - FLOW_MOD install and delete rates at 100k and 1M flows: the adds
//!   pipelined on one connection, timed until the BARRIER_REPLY, then
//!   checked with an aggregate-stats request; one delete by cookie mask,
//!   timed the same way; the memory with the flows in;
//! - 64-byte UDP packets/s through a rewrite flow with 10 and with 1M
//!   flows installed, alternating between the switches;
//! - idle cost (CPU, wake-ups, threads, memory) over the same minute, with
//!   no flow and with 1M;
//! - first-packet latency: container A sends a UDP datagram to container B
//!   with only a table-miss flow installed; the switch punts it (PACKET_IN),
//!   the controller answers with PACKET_OUT to B's port, B receives it. The
//!   time from A's send to B's receive, over many packets.
//!
//! While working on the agent: `DAOLINET_BENCH_AGENT_RATES_ONLY=1` measures
//! only the agent's install and delete rates and prints them (BENCHMARKS.md
//! untouched); `DAOLINET_BENCH_AGENT_LATENCY_ONLY=1` measures only the
//! first-packet latency of both switches (about 20 s, no flows installed)
//! and prints the own shares and the agent's inside timings;
//! `DAOLINET_BENCH_AGENT_PERF=FILE` records the agent with
//! `perf record --call-graph dwarf` into FILE during those rates;
//! `DAOLINET_BENCH_AGENT_BIN=PATH` measures that agent binary instead of
//! the one just built (the table-alone rows still come from this tree).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use daolinet_openflow::{self as of, Frame, Message};

use super::stamps::{Capture, Sightings};
use crate::cleanup;
use crate::util::{cargo, have, is_root, run as sh, step, workspace_root};

const FLOWS: u32 = 100_000;
/// Table sizes of the install/delete rates.
const SIZES: [u32; 2] = [FLOWS, 1_000_000];
const PACKETS: usize = 300;
const CTL_PORT: u16 = 6653;
const MAC_A: &str = "02:00:00:00:00:0a";
const MAC_B: &str = "02:00:00:00:00:0b";

fn ip(args: &[&str]) -> Result<()> {
    sh(Command::new("ip").args(args))
}

/// Run `f` on a thread that entered namespace `ns`; sockets it creates stay
/// in that namespace.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || -> std::io::Result<T> {
        let file = std::fs::File::open(&path)?;
        // SAFETY: setns on a namespace file we opened; only this thread moves.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| anyhow!("namespace thread panicked"))?
    .with_context(|| format!("in namespace {ns}"))
}

/// A host namespace with containers A (10.1.0.2, port 1) and B (10.1.0.3,
/// port 2); veth host ends `pa` and `pb`.
fn topology(tag: &str) -> Result<(String, String, String)> {
    let (h, a, b) = (format!("{tag}h"), format!("{tag}a"), format!("{tag}b"));
    for n in [&h, &a, &b] {
        ip(&["netns", "add", n])?;
        cleanup::add_namespace(n);
        ip(&["-n", n, "link", "set", "lo", "up"])?;
    }
    ip(&[
        "-n", &h, "link", "add", "up0", "type", "veth", "peer", "name", "up0p",
    ])?;
    ip(&["-n", &h, "link", "set", "up0", "up"])?;
    ip(&["-n", &h, "link", "set", "up0p", "up"])?;
    for (c, port, addr, mac, peer, peer_mac) in [
        (&a, "pa", "10.1.0.2/24", MAC_A, "10.1.0.3", MAC_B),
        (&b, "pb", "10.1.0.3/24", MAC_B, "10.1.0.2", MAC_A),
    ] {
        ip(&[
            "-n", &h, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", c,
        ])?;
        ip(&["-n", c, "link", "set", "eth0", "address", mac])?;
        ip(&["-n", c, "addr", "add", addr, "dev", "eth0"])?;
        ip(&["-n", c, "link", "set", "eth0", "up"])?;
        ip(&["-n", &h, "link", "set", port, "up"])?;
        ip(&[
            "-n", c, "neigh", "add", peer, "lladdr", peer_mac, "dev", "eth0",
        ])?;
        // Checksums computed by the sender: Open vSwitch's netdev datapath
        // hands partial (offloaded) checksums to the controller as they
        // are, and B would drop what comes back.
        sh(Command::new("ip").args(["netns", "exec", c, "ethtool", "-K", "eth0", "tx", "off"]))?;
    }
    Ok((h, a, b))
}

/// The controller side of one switch connection.
struct Ctl {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Ctl {
    /// Wait for the switch to connect, then HELLO and FEATURES.
    fn accept(l: &TcpListener) -> Result<Ctl> {
        l.set_nonblocking(false)?;
        let (s, _) = l.accept().context("waiting for the switch to connect")?;
        s.set_nodelay(true)?;
        let mut c = Ctl { s, buf: Vec::new() };
        c.send(1, &Message::Hello(of::Hello::new()))?;
        c.wait(Duration::from_secs(10), |m| matches!(m, Message::Hello(_)))?;
        c.send(2, &Message::FeaturesRequest)?;
        c.wait(Duration::from_secs(10), |m| {
            matches!(m, Message::FeaturesReply(_))
        })?;
        Ok(c)
    }

    /// Send a message (the socket may be non-blocking).
    fn send(&mut self, xid: u32, m: &Message) -> Result<()> {
        let bytes = m.to_bytes(xid).map_err(|e| anyhow!("{e}"))?;
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            match self.s.write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_micros(50));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The next complete frame already received, answering ECHO_REQUESTs on
    /// the way (they are not returned).
    fn take_buffered(&mut self) -> Result<Option<Frame>> {
        while let Ok(Some((f, used))) = of::decode(&self.buf) {
            self.buf.drain(..used);
            if let Message::EchoRequest(d) = &f.message {
                let d = d.clone();
                self.send(f.xid, &Message::EchoReply(d))?;
                continue;
            }
            return Ok(Some(f));
        }
        Ok(None)
    }

    fn recv(&mut self, deadline: Instant) -> Result<Option<Frame>> {
        loop {
            if let Some(f) = self.take_buffered()? {
                return Ok(Some(f));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            self.s.set_read_timeout(Some(deadline - now))?;
            let mut b = [0u8; 65536];
            match self.s.read(&mut b) {
                Ok(0) => bail!("switch closed the connection"),
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// One frame if one is already here, without blocking (the socket must
    /// be non-blocking): the busy-polling side of the probes.
    fn poll(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(f) = self.take_buffered()? {
                return Ok(Some(f));
            }
            let mut b = [0u8; 65536];
            match self.s.read(&mut b) {
                Ok(0) => bail!("switch closed the connection"),
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn wait(&mut self, within: Duration, f: impl Fn(&Message) -> bool) -> Result<Frame> {
        let deadline = Instant::now() + within;
        while let Some(fr) = self.recv(deadline)? {
            if let Message::Error(e) = &fr.message {
                bail!("switch answered an error: {e:?}");
            }
            if f(&fr.message) {
                return Ok(fr);
            }
        }
        bail!("timed out waiting for the switch")
    }

    fn barrier(&mut self, xid: u32) -> Result<()> {
        self.send(xid, &Message::BarrierRequest)?;
        self.wait(Duration::from_secs(120), |m| {
            matches!(m, Message::BarrierReply)
        })?;
        Ok(())
    }

    fn flow_count(&mut self) -> Result<u32> {
        let req = of::FlowStatsRequest::default();
        self.send(
            9,
            &Message::MultipartRequest(of::MultipartRequest::new(
                of::MultipartRequestBody::Aggregate(req),
            )),
        )?;
        let fr = self.wait(Duration::from_secs(30), |m| {
            matches!(m, Message::MultipartReply(_))
        })?;
        match fr.message {
            Message::MultipartReply(of::MultipartReply {
                body: of::MultipartReplyBody::Aggregate(a),
                ..
            }) => Ok(a.flow_count),
            other => bail!("unexpected reply {other:?}"),
        }
    }
}

/// `n` FLOW_MODs (in_port=1, ip, nw_dst=`base` + i, output:2) with this
/// cookie, as one write.
fn flow_mods(n: u32, base: u32, cookie: u64) -> Result<Vec<u8>> {
    let mut wire = Vec::with_capacity(n as usize * 96);
    for i in 0..n {
        let dst = std::net::Ipv4Addr::from(base + i);
        let fm = of::FlowMod::add(of::Match::new().in_port(1).eth_type(0x0800).ipv4_dst(dst))
            .priority(100)
            .cookie(cookie)
            .apply(vec![of::Action::output(2)]);
        wire.extend_from_slice(
            &Message::FlowMod(fm)
                .to_bytes(100)
                .map_err(|e| anyhow!("{e}"))?,
        );
    }
    Ok(wire)
}

/// Delete the flows with this cookie (all ones mask) and wait for the
/// barrier; seconds it took.
fn delete_cookie(c: &mut Ctl, cookie: u64) -> Result<f64> {
    let t = Instant::now();
    c.send(
        6,
        &Message::FlowMod(of::FlowMod::delete(of::Match::new()).cookie_match(cookie, u64::MAX)),
    )?;
    c.barrier(7)?;
    Ok(t.elapsed().as_secs_f64())
}

/// Install and delete rates at each size: `n` adds pipelined in one write
/// and timed to the BARRIER_REPLY, checked with an aggregate-stats request,
/// then deleted with one FLOW_MOD by cookie mask, timed to its barrier and
/// checked. Also the switch's memory with the flows in (see [`Memory`]),
/// and the CPU time the switch (process `pid`) spent on each change, from
/// the first FLOW_MOD until it is quiet again (see [`quiet`]).
fn install_delete(c: &mut Ctl, sizes: &[u32], pid: u32) -> Result<Vec<Scale>> {
    c.send(3, &Message::FlowMod(of::FlowMod::delete(of::Match::new())))?;
    c.barrier(4)?;
    quiet(c, pid)?;
    let empty = memory_of(pid);
    let mut out = Vec::new();
    for &n in sizes {
        let wire = flow_mods(n, 0x0a00_0001, 0xbe)?;
        let cpu0 = cpu_of(pid)?.0;
        let t = Instant::now();
        c.s.write_all(&wire)?;
        c.barrier(5)?;
        let add = t.elapsed().as_secs_f64();
        drop(wire);
        let add_cpu = quiet(c, pid)?.saturating_sub(cpu0);
        let have = c.flow_count()?;
        if have != n {
            bail!("{have} flows in the table after {n} adds");
        }
        let full = memory_of(pid);
        quiet(c, pid)?;
        let cpu0 = cpu_of(pid)?.0;
        let del = delete_cookie(c, 0xbe)?;
        let del_cpu = quiet(c, pid)?.saturating_sub(cpu0);
        let left = c.flow_count()?;
        if left != 0 {
            bail!("{left} flows left after deleting {n} by cookie");
        }
        quiet(c, pid)?;
        let us_per_flow = |ticks: u64| ticks as f64 * 1e6 / clock_ticks_per_s() / f64::from(n);
        out.push(Scale {
            flows: n,
            install: f64::from(n) / add,
            delete: f64::from(n) / del,
            install_cpu_us: us_per_flow(add_cpu),
            delete_cpu_us: us_per_flow(del_cpu),
            empty,
            full,
        });
    }
    Ok(out)
}

/// CPU clock ticks per second (of `/proc/PID/stat`).
fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// Wait (at most [`SETTLE_MAX`]) until switch process `pid` used at most 2
/// CPU ticks in half a second, answering its echo requests on `c`
/// meanwhile; its CPU ticks then.
fn quiet(c: &mut Ctl, pid: u32) -> Result<u64> {
    let end = Instant::now() + SETTLE_MAX;
    let mut last = cpu_of(pid)?.0;
    while Instant::now() < end {
        // Echo requests are answered; nothing else is expected.
        c.recv(Instant::now() + Duration::from_millis(500))?;
        let now = cpu_of(pid)?.0;
        if now.saturating_sub(last) <= 2 {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// Rates and memory at one table size.
#[derive(Clone, Copy)]
struct Scale {
    flows: u32,
    /// Flows installed per second.
    install: f64,
    /// Flows deleted per second.
    delete: f64,
    /// The switch's CPU time per flow installed, and deleted (µs).
    install_cpu_us: f64,
    delete_cpu_us: f64,
    /// Memory with no flow, and with the `flows` in.
    empty: Memory,
    full: Memory,
}

/// A switch's memory: its resident set, and the kernel memory of the BPF
/// maps it holds (0 for Open vSwitch's userspace datapath), in bytes.
#[derive(Clone, Copy, Default)]
struct Memory {
    rss: u64,
    maps: u64,
}

/// [`Memory`] of process `pid`: VmRSS, and the `memlock` the kernel
/// accounts to each BPF map it has open (for a hash map not preallocated:
/// its bucket array and the entries in it).
fn memory_of(pid: u32) -> Memory {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    let mut maps = 0;
    let mut seen = std::collections::HashSet::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) {
        for e in dir.flatten() {
            let Ok(info) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let field = |k: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            // The same map may be open more than once.
            if let (Some(id), Some(m)) = (field("map_id:"), field("memlock:")) {
                if seen.insert(id) {
                    maps += m;
                }
            }
        }
    }
    Memory { rss, maps }
}

/// 64-byte UDP packets per second from A to B through a rewrite flow,
/// with `few` flows installed and with `many` (the same mask, other
/// addresses), on every switch: the runs alternate between the switches
/// and between the table sizes, 3 times. The medians (few, many), by
/// switch.
fn pps_by_table_size(
    sw: &mut [&mut Setup],
    few: u32,
    many: u32,
    settled: &mut Settled,
) -> Result<Vec<(f64, f64)>> {
    // The flow the packets take: rewrite both MACs, out to B.
    let rewrite: of::FlowMod = "cookie=0xc1,priority=200,in_port=1,ip,nw_dst=10.1.0.3 \
         actions=set_field:02:00:00:00:00:01->eth_src,set_field:02:00:00:00:00:0b->eth_dst,output:2"
        .parse()
        .map_err(|e| anyhow!("{e}"))?;
    let rewrite_flows = flow_mods(few - 1, 0x0b00_0001, 0xc1)?;
    for i in 0..sw.len() {
        on_one(sw, i, |s| {
            let c = &mut s.c;
            c.send(3, &Message::FlowMod(of::FlowMod::delete(of::Match::new())))?;
            c.barrier(4)?;
            c.send(8, &Message::FlowMod(rewrite.clone()))?;
            c.s.write_all(&rewrite_flows)?;
            c.barrier(9)
        })?;
    }
    // Both have just deleted 1M flows (the install/delete rates).
    settle(sw, settled)?;
    let others = flow_mods(many - few, 0x0c00_0001, 0xc2)?;
    let flood = |s: &mut Setup| -> Result<f64> {
        Ok(super::udp::flood(&s.a, &s.b, "10.1.0.3".parse()?, 40009, 2.0)?.recv_pps)
    };
    let mut with_few = vec![Vec::new(); sw.len()];
    let mut with_many = vec![Vec::new(); sw.len()];
    for _ in 0..3 {
        for (i, v) in with_few.iter_mut().enumerate() {
            v.push(on_one(sw, i, flood)?);
        }
        for i in 0..sw.len() {
            on_one(sw, i, |s| {
                s.c.s.write_all(&others)?;
                s.c.barrier(10)?;
                let n = s.c.flow_count()?;
                if n != many {
                    bail!("{n} flows in the table, {many} expected");
                }
                Ok(())
            })?;
        }
        settle(sw, settled)?;
        for (i, v) in with_many.iter_mut().enumerate() {
            v.push(on_one(sw, i, flood)?);
        }
        for i in 0..sw.len() {
            on_one(sw, i, |s| delete_cookie(&mut s.c, 0xc2))?;
        }
        settle(sw, settled)?;
    }
    for i in 0..sw.len() {
        on_one(sw, i, |s| {
            s.c.send(3, &Message::FlowMod(of::FlowMod::delete(of::Match::new())))?;
            s.c.barrier(4)
        })?;
    }
    Ok(with_few
        .iter()
        .zip(&with_many)
        .map(|(f, m)| (super::median(f), super::median(m)))
        .collect())
}

/// Serve controller connection `c` (answer the switch's echo requests, so
/// that it keeps the connection) until `stop`.
fn serve(c: &mut Ctl, stop: &std::sync::atomic::AtomicBool) -> Result<()> {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        // Frames other than echo requests are not expected here.
        c.recv(Instant::now() + Duration::from_millis(50))?;
    }
    Ok(())
}

/// Run `f` while connections `cs` are served by threads of their own
/// (see [`serve`]): a switch left waiting while the benchmark works with
/// another would otherwise drop its controller (no echo reply).
fn serving<T>(cs: Vec<&mut Ctl>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let served: Vec<_> = cs
            .into_iter()
            .map(|c| {
                let stop = &stop;
                scope.spawn(move || serve(c, stop))
            })
            .collect();
        let r = f();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for h in served {
            h.join()
                .map_err(|_| anyhow!("controller thread panicked"))??;
        }
        r
    })
}

/// Run `f` on switch `i` while the other switches' connections are
/// served.
fn on_one<T>(
    sw: &mut [&mut Setup],
    i: usize,
    f: impl FnOnce(&mut Setup) -> Result<T>,
) -> Result<T> {
    let mut this = None;
    let mut others = Vec::new();
    for (j, s) in sw.iter_mut().enumerate() {
        if j == i {
            this = Some(&mut **s);
        } else {
            others.push(&mut s.c);
        }
    }
    let this = this.ok_or_else(|| anyhow!("no switch {i}"))?;
    serving(others, || f(this))
}

/// How long the switches took to settle after bulk deletes (see
/// [`settle`]): the longest wait, and how many waits hit the deadline.
#[derive(Clone, Copy, Default)]
struct Settled {
    longest: f64,
    unsettled: u32,
}

/// Wait (at most [`SETTLE_MAX`]) until every switch has used at most 2 CPU
/// ticks in half a second, their connections served meanwhile: after a
/// bulk change a switch may go on working after its barrier reply (Open
/// vSwitch's revalidators after a delete of 1M flows), and the next
/// measurement would pay for it. Recorded in `settled`.
fn settle(sw: &mut [&mut Setup], settled: &mut Settled) -> Result<()> {
    let pids: Vec<u32> = sw.iter().map(|s| s.pid).collect();
    let t0 = Instant::now();
    let quiet = serving(sw.iter_mut().map(|s| &mut s.c).collect(), || {
        let end = t0 + SETTLE_MAX;
        let ticks = || -> Result<Vec<u64>> { pids.iter().map(|p| Ok(cpu_of(*p)?.0)).collect() };
        let mut last = ticks()?;
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(500));
            let now = ticks()?;
            if now
                .iter()
                .zip(&last)
                .all(|(n, l)| n.saturating_sub(*l) <= 2)
            {
                return Ok(true);
            }
            last = now;
        }
        Ok(false)
    })?;
    let waited = t0.elapsed().as_secs_f64();
    eprintln!(
        "    switches {} after {waited:.1} s",
        if quiet { "settled" } else { "still busy" }
    );
    settled.longest = settled.longest.max(waited);
    if !quiet {
        settled.unsettled += 1;
    }
    Ok(())
}

/// The longest [`settle`] waits.
const SETTLE_MAX: Duration = Duration::from_secs(60);

/// What a switch costs while nothing happens.
#[derive(Clone, Copy, Default)]
struct Idle {
    /// Flows installed.
    flows: u32,
    mem: Memory,
    threads: u32,
    /// CPU time over the interval, percent of one CPU.
    cpu_pct: f64,
    /// Context switches of all its threads per second (each one a wake-up
    /// or a preemption).
    switches_per_s: f64,
}

/// CPU ticks (user + system), context switches over all threads, and
/// the number of threads of process `pid`.
fn cpu_of(pid: u32) -> Result<(u64, u64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (mut switches, mut threads) = (0, 0);
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        threads += 1;
        let st = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        switches += st
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Ok((tick(11) + tick(12), switches, threads))
}

/// Every switch left alone for `secs` with `flows` installed (already in
/// their tables): their CPU, wake-ups, threads and memory, measured over
/// the same interval. Each controller connection is served meanwhile
/// (echo requests answered) by a thread of its own.
fn idle_cost(sw: &mut [&mut Setup], flows: u32, secs: u64) -> Result<Vec<Idle>> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let before: Vec<(u64, u64, u32)> = sw.iter().map(|s| cpu_of(s.pid)).collect::<Result<_>>()?;
    let t0 = Instant::now();
    serving(sw.iter_mut().map(|s| &mut s.c).collect(), || {
        std::thread::sleep(Duration::from_secs(secs));
        Ok(())
    })?;
    let dt = t0.elapsed().as_secs_f64();
    sw.iter()
        .zip(before)
        .map(|(s, (cpu0, sw0, _))| {
            let (cpu1, sw1, threads) = cpu_of(s.pid)?;
            Ok(Idle {
                flows,
                mem: memory_of(s.pid),
                threads,
                cpu_pct: (cpu1.saturating_sub(cpu0)) as f64 / hz / dt * 100.0,
                switches_per_s: (sw1.saturating_sub(sw0)) as f64 / dt,
            })
        })
        .collect()
}

/// The agent's flow table alone at one size (`examples/table_scale`).
#[derive(serde::Deserialize)]
struct Alone {
    flows: u32,
    install_per_s: f64,
    delete_per_s: f64,
    one_cookie_delete_us: f64,
    rss_kib: u64,
}

/// Run `examples/table_scale` (built) at these sizes.
fn table_alone(sizes: &[u32]) -> Result<Vec<Alone>> {
    let out = Command::new(workspace_root().join("target/release/examples/table_scale"))
        .args(sizes.iter().map(u32::to_string))
        .output()
        .context("running examples/table_scale")?;
    if !out.status.success() {
        bail!(
            "examples/table_scale failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("table_scale printed {l:?}")))
        .collect()
}

/// Seconds each switch is left idle.
const IDLE_SECS: u64 = 60;

/// The idle cost of every switch with no flow and with `many`, side by
/// side (see [`idle_cost`]).
fn idle_costs(sw: &mut [&mut Setup], many: u32, settled: &mut Settled) -> Result<Vec<[Idle; 2]>> {
    for i in 0..sw.len() {
        on_one(sw, i, |s| {
            s.c.send(3, &Message::FlowMod(of::FlowMod::delete(of::Match::new())))?;
            s.c.barrier(4)
        })?;
    }
    settle(sw, settled)?;
    let empty = idle_cost(sw, 0, IDLE_SECS)?;
    let wire = flow_mods(many, 0x0a00_0001, 0xbe)?;
    for i in 0..sw.len() {
        on_one(sw, i, |s| {
            s.c.s.write_all(&wire)?;
            s.c.barrier(5)
        })?;
    }
    settle(sw, settled)?;
    let full = idle_cost(sw, many, IDLE_SECS)?;
    for i in 0..sw.len() {
        on_one(sw, i, |s| delete_cookie(&mut s.c, 0xbe).map(|_| ()))?;
    }
    Ok(empty.into_iter().zip(full).map(|(e, f)| [e, f]).collect())
}

/// The agent's `--reply-spin-us` in this run: its default (200) unless
/// `DAOLINET_BENCH_REPLY_SPIN_US` says otherwise (0 to compare without).
fn reply_spin_us() -> String {
    std::env::var("DAOLINET_BENCH_REPLY_SPIN_US").unwrap_or_else(|_| "200".into())
}

type Seen = std::sync::Arc<std::sync::Mutex<Vec<Option<Instant>>>>;

/// How the harness waits during a probe (see [`Prober`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Wait {
    /// The controller thread and B's receiver block in the kernel.
    Block = 0,
    /// They busy-poll their sockets.
    Spin = 1,
}

/// The samples of one harness mode.
#[derive(Default)]
struct Samples {
    lat: Vec<f64>,
    half_in: Vec<f64>,
    half_out: Vec<f64>,
    /// The switch's own share by kernel timestamps (see [`stamps`]):
    /// arrival to PACKET_IN, PACKET_OUT to departure, and their sum.
    share_in: Vec<f64>,
    share_out: Vec<f64>,
    share: Vec<f64>,
    lost: usize,
}

/// First-packet probes through one switch: a controller thread answering
/// every PACKET_IN from port 1 with a PACKET_OUT to port 2, a sender in A
/// and a receiver in B.
///
/// Probes alternate between two harness modes ([`Wait`]). Blocking: the
/// controller thread sleeps in poll(2) and B's receiver in recv(2), so
/// their wake-ups are in the latency. Busy-polling: while a probe is
/// outstanding (from just before it is sent until B has it), both read
/// their sockets without blocking in a loop, yielding the CPU
/// (`sched_yield`) between tries so that the switch's threads get one at
/// once; their own wake-ups are then out of the measurement. Both switches
/// are probed the same way.
struct Prober {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Set while a busy-polling probe through this switch is outstanding.
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Set while the controller thread busy-polls.
    spinning: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Wakes the controller thread when it is armed or stopped.
    nudge: std::os::unix::net::UnixStream,
    /// When each sequence number reached the controller.
    seen: Seen,
    ctl: std::thread::JoinHandle<Result<u64>>,
    tx: UdpSocket,
    rx: UdpSocket,
    /// Kernel timestamps in the switch's host namespace.
    cap: Capture,
    sightings: HashMap<u32, Sightings>,
    samples: [Samples; 2],
}

/// The controller side of the probes (see [`Prober`]); the socket is
/// non-blocking.
fn answer_probes(
    mut c: Ctl,
    stop: &std::sync::atomic::AtomicBool,
    armed: &std::sync::atomic::AtomicBool,
    spinning: &std::sync::atomic::AtomicBool,
    nudge: std::os::unix::net::UnixStream,
    seen: &Seen,
) -> Result<u64> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut n = 0;
    while !stop.load(Relaxed) {
        let Some(fr) = c.poll()? else {
            if armed.load(Relaxed) {
                spinning.store(true, Relaxed);
                // SAFETY: plain system call.
                unsafe { libc::sched_yield() };
            } else {
                spinning.store(false, Relaxed);
                let mut fds = [c.s.as_raw_fd(), nudge.as_raw_fd()].map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
                // SAFETY: two valid pollfd entries.
                unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
                let mut b = [0u8; 64];
                while let Ok(1..) = (&nudge).read(&mut b) {}
            }
            continue;
        };
        if let Message::PacketIn(pi) = fr.message {
            let at = Instant::now();
            let in_port = pi.in_port().unwrap_or(1);
            let out = if in_port == 1 { 2 } else { 1 };
            // The sequence number is the UDP payload (after 14 + 20 + 8 bytes).
            if let Some(tail) = pi.data.get(42..46) {
                let seq = u32::from_be_bytes([tail[0], tail[1], tail[2], tail[3]]) as usize;
                if let Some(slot) = seen.lock().ok().as_mut().and_then(|v| v.get_mut(seq)) {
                    *slot = Some(at);
                }
            }
            let po = of::PacketOut::new(in_port, vec![of::Action::output(out)], pi.data);
            c.send(0, &Message::PacketOut(po))?;
            n += 1;
        }
    }
    Ok(n)
}

impl Prober {
    fn start(mut c: Ctl, h: &str, a: &str, b: &str) -> Result<Prober> {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        // Only a table-miss flow: every packet goes through the controller.
        let miss = of::FlowMod::add(of::Match::new())
            .priority(0)
            .apply(vec![of::Action::controller(of::OFPCML_NO_BUFFER)]);
        c.send(10, &Message::FlowMod(miss))?;
        c.barrier(11)?;
        c.s.set_read_timeout(None)?;
        c.s.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let armed = Arc::new(AtomicBool::new(false));
        let spinning = Arc::new(AtomicBool::new(false));
        let (nudge, nudged) = std::os::unix::net::UnixStream::pair()?;
        nudged.set_nonblocking(true)?;
        let seen: Seen = Arc::new(Mutex::new(vec![None; 2 * (PACKETS + 20)]));
        let ctl = {
            let (stop, armed, spinning, seen) =
                (stop.clone(), armed.clone(), spinning.clone(), seen.clone());
            std::thread::spawn(move || answer_probes(c, &stop, &armed, &spinning, nudged, &seen))
        };
        let tx = in_netns(a, || {
            let s = UdpSocket::bind("10.1.0.2:40000")?;
            s.connect("10.1.0.3:40001")?;
            Ok(s)
        })?;
        let rx = in_netns(b, || UdpSocket::bind("10.1.0.3:40001"))?;
        rx.set_read_timeout(Some(Duration::from_millis(500)))?;
        let cap = in_netns(h, || {
            Capture::open("pa", "pb", CTL_PORT).map_err(std::io::Error::other)
        })?;
        Ok(Prober {
            stop,
            armed,
            spinning,
            nudge,
            seen,
            ctl,
            tx,
            rx,
            cap,
            sightings: HashMap::new(),
            samples: Default::default(),
        })
    }

    /// Put the harness in `mode` for the next probe: arm the controller
    /// thread and wait (up to 10 ms) until it busy-polls, or make sure it
    /// blocks.
    fn prepare(&mut self, mode: Wait) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let spin = mode == Wait::Spin;
        self.armed.store(spin, Relaxed);
        if spin {
            let _ = (&self.nudge).write(&[1]);
        }
        self.rx.set_nonblocking(spin)?;
        let until = Instant::now() + Duration::from_millis(10);
        while self.spinning.load(Relaxed) != spin && Instant::now() < until {
            std::thread::sleep(Duration::from_micros(50));
        }
        // Let the controller thread settle into poll(2).
        if !spin {
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    /// B's receive: busy-polling or blocking (500 ms timeout), as prepared.
    fn receive(&self, mode: Wait, buf: &mut [u8]) -> std::io::Result<usize> {
        if mode == Wait::Block {
            return self.rx.recv(buf);
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            match self.rx.recv(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(e);
                    }
                    // SAFETY: plain system call.
                    unsafe { libc::sched_yield() };
                }
                r => return r,
            }
        }
    }

    /// Send probe `i` in harness mode `mode` and wait for it in B; the
    /// first 20 of each mode are warm-up.
    fn probe(&mut self, i: usize, mode: Wait) -> Result<()> {
        self.prepare(mode)?;
        let r = self.probe_prepared(i, mode);
        self.armed
            .store(false, std::sync::atomic::Ordering::Relaxed);
        r
    }

    fn probe_prepared(&mut self, i: usize, mode: Wait) -> Result<()> {
        let id = 2 * i + mode as usize;
        let seq = (id as u32).to_be_bytes();
        // Whatever the capture holds from before is not this probe's.
        self.cap.drain(&mut self.sightings);
        self.sightings.clear();
        let t = Instant::now();
        self.tx.send(&seq)?;
        let mut buf = [0u8; 64];
        loop {
            match self.receive(mode, &mut buf) {
                Ok(4) if buf[..4] == seq => {
                    let done = Instant::now();
                    let s = &mut self.samples[mode as usize];
                    if i >= 20 {
                        s.lat.push((done - t).as_secs_f64() * 1e6);
                        let at = self
                            .seen
                            .lock()
                            .ok()
                            .and_then(|v| v.get(id).copied().flatten());
                        if let Some(at) = at {
                            s.half_in.push((at - t).as_secs_f64() * 1e6);
                            s.half_out.push((done - at).as_secs_f64() * 1e6);
                        }
                        self.cap.drain(&mut self.sightings);
                        let shares = self.sightings.get(&(id as u32)).and_then(|x| x.shares());
                        if let Some((sin, sout)) = shares {
                            s.share_in.push(sin);
                            s.share_out.push(sout);
                            s.share.push(sin + sout);
                        }
                    }
                    return Ok(());
                }
                Ok(_) => continue,
                Err(_) => {
                    self.samples[mode as usize].lost += 1;
                    return Ok(());
                }
            }
        }
    }

    /// Stop the controller thread. Latencies in microseconds, per harness
    /// mode (blocking, busy-polling): (median, 99th percentile) of the
    /// whole trip, and the medians of its two halves (A's send to the
    /// PACKET_IN at the controller; the controller's PACKET_OUT to B's
    /// receive).
    fn finish(mut self) -> Result<[Latency; 2]> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = (&self.nudge).write(&[1]);
        let answered = self
            .ctl
            .join()
            .map_err(|_| anyhow!("controller thread panicked"))??;
        let pct = |v: &mut Vec<f64>, p: f64| {
            v.sort_by(f64::total_cmp);
            v[((v.len() - 1) as f64 * p) as usize]
        };
        let mut out = Vec::new();
        for (s, mode) in self.samples.iter_mut().zip([Wait::Block, Wait::Spin]) {
            if s.lat.len() < PACKETS / 2 || s.half_in.is_empty() {
                bail!(
                    "harness {mode:?}: {} of {} packets lost ({answered} PACKET_INs answered in all)",
                    s.lost,
                    PACKETS + 20
                );
            }
            if s.share.len() < s.lat.len() / 2 {
                bail!(
                    "harness {mode:?}: the kernel timestamps were complete for {} of {} probes",
                    s.share.len(),
                    s.lat.len()
                );
            }
            out.push(Latency {
                p50: pct(&mut s.lat, 0.5),
                p99: pct(&mut s.lat, 0.99),
                to_controller: pct(&mut s.half_in, 0.5),
                from_controller: pct(&mut s.half_out, 0.5),
                share: pct(&mut s.share, 0.5),
                share_p99: pct(&mut s.share, 0.99),
                share_in: pct(&mut s.share_in, 0.5),
                share_out: pct(&mut s.share_out, 0.5),
                share_n: s.share.len(),
            });
        }
        out.try_into()
            .map_err(|_| anyhow!("two harness modes expected"))
    }
}

/// First-packet latency through both switches, in both harness modes:
/// probes alternating between the switches and the modes (5 ms apart) so
/// that all see the same load on this shared machine.
fn first_packet(agent: Prober, ovs: Prober) -> Result<([Latency; 2], [Latency; 2])> {
    let mut p = [agent, ovs];
    for i in 0..PACKETS + 20 {
        for mode in [Wait::Block, Wait::Spin] {
            for pr in &mut p {
                std::thread::sleep(Duration::from_millis(5));
                pr.probe(i, mode)?;
            }
        }
    }
    let [agent, ovs] = p;
    Ok((agent.finish()?, ovs.finish()?))
}

/// The median cost, in microseconds, of one thread wake-up on this machine
/// under the benchmark's pacing: half a ping-pong between two threads over
/// a pair of Unix datagram sockets, one round every 5 ms.
fn wake_up() -> Result<f64> {
    use std::os::unix::net::UnixDatagram;
    let (a, b) = UnixDatagram::pair()?;
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 1];
        while let Ok(1) = b.recv(&mut buf) {
            if buf[0] == 0 || b.send(&buf).is_err() {
                break;
            }
        }
    });
    let mut rtt = Vec::with_capacity(PACKETS);
    let mut buf = [0u8; 1];
    for _ in 0..PACKETS {
        let t = Instant::now();
        a.send(&[1])?;
        a.recv(&mut buf)?;
        rtt.push(t.elapsed().as_secs_f64() * 1e6 / 2.0);
        std::thread::sleep(Duration::from_millis(5));
    }
    a.send(&[0])?;
    echo.join().map_err(|_| anyhow!("echo thread panicked"))?;
    rtt.sort_by(f64::total_cmp);
    Ok(rtt[rtt.len() / 2])
}

struct Latency {
    p50: f64,
    p99: f64,
    to_controller: f64,
    from_controller: f64,
    /// The switch's own share (kernel timestamps): median, 99th
    /// percentile, its two parts' medians, and how many probes had it.
    share: f64,
    share_p99: f64,
    share_in: f64,
    share_out: f64,
    share_n: usize,
}

/// A switch set up, its install and delete rates measured.
struct Setup {
    scales: Vec<Scale>,
    /// The controller connection.
    c: Ctl,
    /// The switch's process.
    pid: u32,
    /// Its host namespace, and the namespaces of containers A and B.
    h: String,
    a: String,
    b: String,
    /// The agent's log (its per-packet timings).
    log: Option<PathBuf>,
}

struct Result2 {
    scales: Vec<Scale>,
    /// 64-byte UDP pps with a few and with many flows.
    pps: (f64, f64),
    /// Idle with no flow, and with many.
    idle: [Idle; 2],
    /// Harness blocking, busy-polling.
    lat: [Latency; 2],
}

fn listener(h: &str) -> Result<TcpListener> {
    in_netns(h, || TcpListener::bind(("127.0.0.1", CTL_PORT)))
}

fn bench_agent(bin: &Path) -> Result<Setup> {
    step("agent: topology, agent with --controller");
    let tag = cleanup::claim_tag("dlba")?;
    let bpffs = cleanup::mount_bpffs(&tag)?;
    let (h, a, b) = topology(&tag)?;
    let l = listener(&h)?;
    // The names the sweep of interrupted runs knows.
    let state = PathBuf::from(format!("/tmp/{h}-state"));
    cleanup::add_path(&state);
    // The agent's own per-packet timings (its `daolinet_agent::latency`
    // trace events) go to this file.
    let log = PathBuf::from(format!("/tmp/{h}-agent.log"));
    cleanup::add_path(&log);
    let child = Command::new("ip")
        .args(["netns", "exec", &h])
        .arg(bin)
        .arg("--bpffs")
        .arg(&bpffs)
        .arg("--state-dir")
        .arg(&state)
        .args(["run", "--uplink", "up0", "--port", "pa=1", "--port", "pb=2"])
        .args(["--controller", &format!("tcp:127.0.0.1:{CTL_PORT}")])
        .args(["--packet-in-rate", "0", "--reply-spin-us", &reply_spin_us()])
        .env("RUST_LOG", "warn,daolinet_agent::latency=trace")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting the agent")?;
    let pid = child.id();
    cleanup::add_child(child);
    let mut c = Ctl::accept(&l)?;
    step("agent: FLOW_MOD install and delete rates, 100k and 1M flows");
    let perf = match std::env::var_os("DAOLINET_BENCH_AGENT_PERF") {
        Some(out) => Some(
            Command::new("perf")
                // DWARF unwinding: the release build keeps no frame
                // pointers. A low rate keeps the file small.
                .args(["record", "--call-graph", "dwarf", "-F", "499", "-o"])
                .arg(out)
                .args(["-p", &pid.to_string()])
                .stdout(Stdio::null())
                .spawn()
                .context("starting perf record")?,
        ),
        None => None,
    };
    let scales = install_delete(&mut c, sizes(), pid);
    if let Some(p) = perf {
        // SAFETY: kill(2) on the perf process this function started.
        unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
        p.wait_with_output().context("waiting for perf record")?;
    }
    let scales = scales?;
    Ok(Setup {
        scales,
        c,
        pid,
        h,
        a,
        b,
        log: Some(log),
    })
}

/// `DAOLINET_BENCH_AGENT_LATENCY_ONLY`: a quick look at the first packet
/// while working on it (no install, UDP or idle measurements, nothing
/// recorded).
fn latency_only() -> bool {
    std::env::var_os("DAOLINET_BENCH_AGENT_LATENCY_ONLY").is_some()
}

/// The table sizes to install and delete (none in [`latency_only`] runs).
fn sizes() -> &'static [u32] {
    if latency_only() {
        &[]
    } else {
        &SIZES
    }
}

/// Print what a [`latency_only`] run measured.
fn print_latency(la: &[Latency; 2], lo: &[Latency; 2], inside: &Inside) {
    for (mode, name) in [(Wait::Block, "blocking"), (Wait::Spin, "busy-polling")] {
        let (a, o) = (&la[mode as usize], &lo[mode as usize]);
        println!(
            "harness {name}: own share agent {:.0} µs (in {:.0} + out {:.0}), Open vSwitch {:.0} µs (in {:.0} + out {:.0}): ratio {:.2}; end to end {:.0} / {:.0} µs",
            a.share, a.share_in, a.share_out, o.share, o.share_in, o.share_out,
            a.share / o.share, a.p50, o.p50
        );
    }
    println!(
        "inside the agent (medians, µs): punt->read {:.1} (epoll return->read {:.1}), handle {:.1}, write {:.1}, PACKET_OUT handle {:.1}, send {:.1}; {} punts, {} of {} PACKET_OUTs while spinning",
        inside.punt_to_read, inside.woke_to_read, inside.handle, inside.write,
        inside.po_handle, inside.po_send, inside.punts, inside.spun, inside.packet_outs
    );
}

/// Medians, in microseconds, of the agent's own timings.
struct Inside {
    /// BPF punt (bpf_ktime_get_ns in the record) to the agent reading it.
    punt_to_read: f64,
    /// Of which: the punt reader's return from poll(2) to having read it.
    woke_to_read: f64,
    /// Reading the punt to the PACKET_IN ready to write.
    handle: f64,
    /// The write system call of the PACKET_IN.
    write: f64,
    /// Reading a PACKET_OUT (decode, handle) to its frame ready to send.
    po_handle: f64,
    /// The AF_PACKET send of that frame.
    po_send: f64,
    /// How many punts were timed.
    punts: usize,
    /// How many lone PACKET_OUTs were timed, and how many of them the
    /// punt reader handled while it waited for them (`--reply-spin-us`).
    packet_outs: usize,
    spun: usize,
    /// Reply spins: how many, their median length (µs), how many ended at
    /// the deadline without an answer.
    spins: usize,
    spin_median: f64,
    timed_out: usize,
}

/// Parse the agent's `daolinet_agent::latency` trace lines.
fn agent_timings(log: &str) -> Result<Inside> {
    let field = |line: &str, name: &str| -> Option<f64> {
        let rest = &line[line.find(&format!(" {name}="))? + name.len() + 2..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<f64>().ok().map(|ns| ns / 1000.0)
    };
    let mut cols: [Vec<f64>; 5] = Default::default();
    let mut woke = Vec::new();
    let mut spun = 0;
    let (mut spins, mut timed_out) = (Vec::new(), 0);
    for line in log.lines() {
        let punt = ["punt_to_read_ns", "handle_ns", "write_ns"].map(|n| field(line, n));
        if let [Some(r), Some(h), Some(w)] = punt {
            cols[0].push(r);
            cols[1].push(h);
            cols[2].push(w);
            // Punts read by the punt reader (not the fallback timer).
            if let Some(k) = field(line, "woke_to_read_ns").filter(|k| *k > 0.0) {
                woke.push(k);
            }
        }
        let po = ["packet_out_handle_ns", "packet_out_send_ns"].map(|n| field(line, n));
        if let [Some(h), Some(s)] = po {
            cols[3].push(h);
            cols[4].push(s);
            spun += usize::from(line.contains(" spun=true"));
        }
        if let (Some(ns), Some(left)) = (field(line, "reply_spin_ns"), field(line, "unanswered")) {
            spins.push(ns);
            timed_out += usize::from(left > 0.0);
        }
    }
    if cols[0].is_empty() || cols[3].is_empty() {
        bail!("the agent logged no per-packet timings (daolinet_agent::latency trace events)");
    }
    let punts = cols[0].len();
    let packet_outs = cols[3].len();
    spins.sort_by(f64::total_cmp);
    let spin_median = spins.get(spins.len() / 2).copied().unwrap_or(0.0);
    woke.sort_by(f64::total_cmp);
    let woke_to_read = woke.get(woke.len() / 2).copied().unwrap_or(0.0);
    let [a, b, c, d, e] = cols.map(|mut v| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    });
    Ok(Inside {
        punt_to_read: a,
        woke_to_read,
        handle: b,
        write: c,
        po_handle: d,
        po_send: e,
        punts,
        packet_outs,
        spun,
        spins: spins.len(),
        spin_median,
        timed_out,
    })
}

fn bench_ovs() -> Result<Setup> {
    step("Open vSwitch: topology, ovsdb-server + ovs-vswitchd (netdev datapath)");
    let tag = cleanup::claim_tag("dlbo")?;
    let (h, a, b) = topology(&tag)?;
    let l = listener(&h)?;
    // ovsdb-server and ovs-vswitchd run inside the host namespace: the
    // cleanup kills them with it.
    let dir = PathBuf::from(format!("/tmp/{tag}-ovs"));
    std::fs::create_dir_all(&dir)?;
    cleanup::add_path(&dir);
    let d = dir.display().to_string();
    let ovs = |prog: &str| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &h, prog])
            .env("OVS_RUNDIR", &dir)
            .env("OVS_DBDIR", &dir)
            .env("OVS_LOGDIR", &dir)
            .env("OVS_SYSCONFDIR", &dir);
        c
    };
    sh(ovs("ovsdb-tool").args([
        "create",
        &format!("{d}/conf.db"),
        "/usr/share/openvswitch/vswitch.ovsschema",
    ]))?;
    sh(ovs("ovsdb-server").args([
        &format!("--remote=punix:{d}/db.sock"),
        &format!("--pidfile={d}/ovsdb-server.pid"),
        &format!("--log-file={d}/ovsdb-server.log"),
        &format!("--unixctl={d}/ovsdb-server.ctl"),
        "--detach",
        &format!("{d}/conf.db"),
    ]))?;
    let db = format!("--db=unix:{d}/db.sock");
    sh(ovs("ovs-vsctl").args([&db, "--no-wait", "init"]))?;
    sh(ovs("ovs-vswitchd").args([
        &format!("unix:{d}/db.sock"),
        &format!("--pidfile={d}/ovs-vswitchd.pid"),
        &format!("--log-file={d}/ovs-vswitchd.log"),
        &format!("--unixctl={d}/ovs-vswitchd.ctl"),
        "--detach",
    ]))?;
    sh(ovs("ovs-vsctl").args([
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
        "other-config:disable-in-band=true",
        "--",
        "add-port",
        "br0",
        "pa",
        "--",
        "set",
        "interface",
        "pa",
        "ofport_request=1",
        "--",
        "add-port",
        "br0",
        "pb",
        "--",
        "set",
        "interface",
        "pb",
        "ofport_request=2",
    ]))?;
    sh(ovs("ovs-vsctl").args([
        &db,
        "--timeout=20",
        "set-controller",
        "br0",
        &format!("tcp:127.0.0.1:{CTL_PORT}"),
    ]))?;
    let mut c = Ctl::accept(&l)?;
    let pid: u32 = std::fs::read_to_string(dir.join("ovs-vswitchd.pid"))?
        .trim()
        .parse()
        .context("ovs-vswitchd's pid file")?;
    step("Open vSwitch: FLOW_MOD install and delete rates, 100k and 1M flows");
    let scales = install_delete(&mut c, sizes(), pid)?;
    Ok(Setup {
        scales,
        c,
        pid,
        h,
        a,
        b,
        log: None,
    })
}

/// Run the benchmark and record it in BENCHMARKS.md.
pub fn run(setup: bool) -> Result<()> {
    if !is_root() {
        bail!("bench agent creates network namespaces and loads BPF programs: run it as root");
    }
    if setup {
        crate::setup::run()?;
    }
    for tool in ["ovs-vswitchd", "ovsdb-server", "ovs-vsctl", "ovsdb-tool"] {
        if !have(tool) {
            bail!("{tool} is missing: run `cargo xtask setup`");
        }
    }
    if cfg!(debug_assertions) {
        // `cargo xtask` is a debug build. The controller side of this
        // benchmark (decode PACKET_IN, encode PACKET_OUT) runs in this
        // process, and unoptimized it adds tens of microseconds to both
        // switches' latencies alike, pulling the ratio towards 1: measure
        // from an optimized build of this very command.
        step("re-running the benchmark from a release build of xtask");
        return sh(cargo().args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "xtask",
            "--",
            "bench",
            "agent",
            "--no-setup",
        ]));
    }
    crate::build_ebpf::run(true)?;
    step("building daolinet-agent (release)");
    sh(cargo().args(["build", "--release", "-p", "daolinet-agent"]))?;
    sh(cargo().args([
        "build",
        "--release",
        "-p",
        "daolinet-agent",
        "--example",
        "table_scale",
    ]))?;
    // Another build of the agent may be measured (e.g. before a change).
    let bin = std::env::var_os("DAOLINET_BENCH_AGENT_BIN").map_or_else(
        || workspace_root().join("target/release/daolinet-agent"),
        PathBuf::from,
    );
    if latency_only() {
        let _g = cleanup::guard()?;
        let mut a = bench_agent(&bin)?;
        let mut o = serving(vec![&mut a.c], bench_ovs)?;
        step("first-packet latency only (DAOLINET_BENCH_AGENT_LATENCY_ONLY): nothing recorded");
        let pa = serving(vec![&mut o.c], || Prober::start(a.c, &a.h, &a.a, &a.b))?;
        let po = Prober::start(o.c, &o.h, &o.a, &o.b)?;
        let (la, lo) = first_packet(pa, po)?;
        std::thread::sleep(Duration::from_millis(300));
        let log = a.log.ok_or_else(|| anyhow!("no agent log"))?;
        print_latency(&la, &lo, &agent_timings(&std::fs::read_to_string(&log)?)?);
        return Ok(());
    }
    step("the agent's flow table alone (userspace, no BPF): 100k and 1M flows");
    let alone = table_alone(&SIZES)?;
    let mut settled = Settled::default();
    if std::env::var_os("DAOLINET_BENCH_AGENT_RATES_ONLY").is_some() {
        // A quick look at the agent's install and delete rates while
        // working on them: nothing else measured, nothing recorded.
        let _g = cleanup::guard()?;
        let a = bench_agent(&bin)?;
        for x in &a.scales {
            println!(
                "agent, {} flows: install {:.0} flows/s ({:.2} CPU µs a flow), delete by cookie {:.0} flows/s ({:.2} CPU µs a flow)",
                x.flows, x.install, x.install_cpu_us, x.delete, x.delete_cpu_us
            );
        }
        return Ok(());
    }
    // Both switches stay up until the end: the latency probes alternate
    // between them.
    let (agent, ovs, inside) = {
        let _g = cleanup::guard()?;
        let mut a = bench_agent(&bin)?;
        let mut o = serving(vec![&mut a.c], bench_ovs)?;
        let many = *SIZES.last().unwrap_or(&FLOWS);
        step("64-byte UDP through a rewrite flow, 10 flows vs 1M flows installed, alternating between the agent and Open vSwitch");
        let pps = pps_by_table_size(&mut [&mut a, &mut o], 10, many, &mut settled)?;
        step("idle cost, no flow and 1M flows, both switches left alone for the same minute");
        let idle = idle_costs(&mut [&mut a, &mut o], many, &mut settled)?;
        let (pps, idle) = match (&pps[..], &idle[..]) {
            ([pa, po], [ia, io]) => ([*pa, *po], [*ia, *io]),
            _ => bail!("expected two switches"),
        };
        step("first-packet latency, probes alternating between the agent and Open vSwitch and between harness modes");
        let pa = serving(vec![&mut o.c], || Prober::start(a.c, &a.h, &a.a, &a.b))?;
        let po = Prober::start(o.c, &o.h, &o.a, &o.b)?;
        let (la, lo) = first_packet(pa, po)?;
        // The agent logs its timings every 100 ms.
        std::thread::sleep(Duration::from_millis(300));
        let log = a.log.ok_or_else(|| anyhow!("no agent log"))?;
        let inside = agent_timings(&std::fs::read_to_string(&log)?)?;
        (
            Result2 {
                scales: a.scales,
                pps: pps[0],
                idle: idle[0],
                lat: la,
            },
            Result2 {
                scales: o.scales,
                pps: pps[1],
                idle: idle[1],
                lat: lo,
            },
            inside,
        )
    };
    step("one thread wake-up on this machine (Unix socket ping-pong, same pacing)");
    let wake = wake_up()?;
    let inside = &inside;
    let row = |what: &str, f: fn(&Latency) -> f64, mode: Wait| {
        let (x, y) = (f(&agent.lat[mode as usize]), f(&ovs.lat[mode as usize]));
        format!("| {what} | {x:.0} µs | {y:.0} µs | {:.2} |\n", x / y)
    };
    let mut table =
        String::from("| | daolinet-agent | Open vSwitch (netdev) | ratio |\n|---|---|---|---|\n");
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    for (x, y) in agent.scales.iter().zip(&ovs.scales) {
        let n = x.flows;
        table += &format!(
            "| FLOW_MOD install rate, {n} adds pipelined + barrier | {:.0} flows/s | {:.0} flows/s | {:.2}x |\n",
            x.install,
            y.install,
            x.install / y.install
        );
        table += &format!(
            "| delete by cookie mask, {n} flows, one FLOW_MOD + barrier | {:.0} flows/s | {:.0} flows/s | {:.2}x |\n",
            x.delete,
            y.delete,
            x.delete / y.delete
        );
        table += &format!(
            "| the switch's CPU time per flow: installing; deleting ({n} flows) | {:.2} µs; {:.2} µs | {:.2} µs; {:.2} µs | {:.2}; {:.2} |\n",
            x.install_cpu_us,
            x.delete_cpu_us,
            y.install_cpu_us,
            y.delete_cpu_us,
            x.install_cpu_us / y.install_cpu_us,
            x.delete_cpu_us / y.delete_cpu_us,
        );
        table += &format!(
            "| memory with {n} flows: resident (+ kernel BPF maps) | {:.0} MiB (+ {:.0} MiB) | {:.0} MiB | {:.2} |\n",
            mib(x.full.rss),
            mib(x.full.maps),
            mib(y.full.rss),
            (x.full.rss + x.full.maps) as f64 / y.full.rss as f64
        );
    }
    for t in &alone {
        table += &format!(
            "| the agent's flow table alone (userspace, no BPF), {} flows: install; delete by cookie; one cookie's delete among them; memory | {:.0} flows/s; {:.0} flows/s; {:.1} µs; {:.0} MiB | | |\n",
            t.flows,
            t.install_per_s,
            t.delete_per_s,
            t.one_cookie_delete_us,
            t.rss_kib as f64 / 1024.0,
        );
    }
    if let (Some(x), Some(y)) = (agent.scales.first(), ovs.scales.first()) {
        table += &format!(
            "| memory with no flow: resident (+ kernel BPF maps) | {:.0} MiB (+ {:.0} MiB) | {:.0} MiB | |\n",
            mib(x.empty.rss),
            mib(x.empty.maps),
            mib(y.empty.rss),
        );
    }
    {
        let ((af, am), (of_, om)) = (agent.pps, ovs.pps);
        table += &format!(
            "| 64-byte UDP through a rewrite flow, 10 flows installed | {af:.0} pps | {of_:.0} pps | {:.2}x |\n\
             | the same with {} flows installed (same mask) | {am:.0} pps | {om:.0} pps | {:.2}x |\n\
             | pps with {} flows / with 10 flows | {:.2} | {:.2} | |\n",
            af / of_,
            SIZES.last().unwrap_or(&FLOWS),
            am / om,
            SIZES.last().unwrap_or(&FLOWS),
            am / af,
            om / of_,
        );
    }
    for i in 0..2 {
        let (x, y) = (agent.idle[i], ovs.idle[i]);
        let what = if x.flows == 0 {
            "no flow".to_string()
        } else {
            format!("{} flows", x.flows)
        };
        table += &format!(
            "| idle {IDLE_SECS} s, {what}: CPU | {:.3} % | {:.3} % | |\n\
             | idle {IDLE_SECS} s, {what}: context switches (wake-ups) | {:.1}/s | {:.1}/s | |\n\
             | idle {IDLE_SECS} s, {what}: threads; resident (+ kernel BPF maps) | {}; {:.0} MiB (+ {:.0} MiB) | {}; {:.0} MiB | |\n",
            x.cpu_pct,
            y.cpu_pct,
            x.switches_per_s,
            y.switches_per_s,
            x.threads,
            mib(x.mem.rss),
            mib(x.mem.maps),
            y.threads,
            mib(y.mem.rss),
        );
    }
    for (mode, name) in [
        (Wait::Block, "harness blocking"),
        (Wait::Spin, "harness busy-polling"),
    ] {
        let n = agent.lat[mode as usize]
            .share_n
            .min(ovs.lat[mode as usize].share_n);
        table += &row(
            &format!("**switch's own share** (kernel timestamps: arrival on A's port to PACKET_IN on the wire, plus PACKET_OUT on the wire to departure on B's port), median, {name}; {n}+ packets"),
            |l| l.share,
            mode,
        );
        table += &row(
            &format!("switch's own share, 99th percentile, {name}"),
            |l| l.share_p99,
            mode,
        );
        table += &row(
            &format!("of which: arrival on A's port to PACKET_IN (median), {name}"),
            |l| l.share_in,
            mode,
        );
        table += &row(
            &format!("of which: PACKET_OUT to departure on B's port (median), {name}"),
            |l| l.share_out,
            mode,
        );
        table += &row(
            &format!("first-packet latency, median, {name} (send in A, punt, PACKET_IN, PACKET_OUT, receive in B; {PACKETS} packets)"),
            |l| l.p50,
            mode,
        );
        table += &row(
            &format!("first-packet latency, 99th percentile, {name}"),
            |l| l.p99,
            mode,
        );
        table += &row(
            &format!("of which: A's send to PACKET_IN at the controller (median), {name}"),
            |l| l.to_controller,
            mode,
        );
        table += &row(
            &format!("of which: PACKET_OUT sent to B's receive (median), {name}"),
            |l| l.from_controller,
            mode,
        );
    }
    let body = format!(
        "## Agent as an OpenFlow switch vs Open vSwitch (userspace datapath)\n\n\
         Command: `cargo xtask bench agent`. Same topology (one host namespace, two \
         container namespaces on veths), same controller (the benchmark itself, \
         OpenFlow 1.3 over TCP on loopback), in one run on a shared, noisy 2-core \
         machine: the install rates one after the other, the latency probes \
         alternating between the two switches and between two harness modes (5 ms \
         apart) so that all see the same load; compare the ratios. Harness blocking: \
         the controller thread sleeps in poll(2) and B's receiver in recv(2), so their \
         wake-ups are in both switches' latencies. Harness busy-polling: while a probe \
         is outstanding they read their sockets without blocking in a loop (yielding \
         the CPU between tries), so only the switch's own wake-ups are measured; the \
         spinning threads also take CPU time from the switch under test on these 2 \
         cores, the more so the longer its path. The agent runs with its defaults \
         except `--packet-in-rate 0`, with `--reply-spin-us {}`.\n\n\
         {table}\n\
         The switch's own share is measured the same way for both switches, from the \
         kernel's timestamps (`SO_TIMESTAMPNS` on an AF_PACKET socket in the switch's \
         host namespace that nobody waits on, drained between probes): the probe frame \
         queued for reception on A's port, the PACKET_IN segment and the PACKET_OUT \
         segment handed to loopback, the frame handed to B's port; (PACKET_IN - \
         arrival) + (departure - PACKET_OUT). The controller's and the containers' \
         work, and the harness's wake-ups, are not in it.\n\n\
         Table sizes: the flows (in_port, IPv4, one destination each, output) go in \
         as one write of pipelined FLOW_MODs timed to the BARRIER_REPLY and are \
         counted with an AGGREGATE request; they go out with one FLOW_MOD deleting \
         by cookie mask, timed to its barrier and checked the same way. CPU time \
         per flow: the switch process's user + system time from the first \
         FLOW_MOD until it is quiet again (at most 2 ticks in half a second), so \
         with what it does after the barrier reply; each step starts on a quiet \
         switch. It depends far less on the other load of the machine than the \
         rates do. Memory: \
         VmRSS of the switch's process, and for the agent the kernel's accounting of \
         the BPF maps it holds (`memlock` in its fdinfo; the classifier map's bucket \
         array is sized for `--max-flows`, its entries follow the flows). 64-byte UDP: \
         the datapath benchmark's sendmmsg generator from A to B through a rewrite \
         flow (both MACs, output), 2 s per run, with 10 flows and with the other flows \
         in the same subtable, the runs alternating between the switches and the \
         table sizes three times, medians. Before each packet run and each idle \
         interval, after the bulk installs and deletes, the benchmark waits until \
         both switches have settled (at most 2 CPU ticks, i.e. 20 ms, each in half a \
         second; at most {} s): a switch may go on working after its barrier reply \
         (Open vSwitch's revalidators). Longest wait in this run {:.1} s; waits that \
         hit the limit: {}. Idle: both switches left alone for the \
         same {IDLE_SECS} s (their controller connections answer echo requests), \
         first with no flow, then with the flows of the largest size; CPU time \
         (utime + stime), the context switches of all their threads (each a wake-up \
         or a preemption), threads, memory. The agent has two container ports and \
         an uplink, Open vSwitch its two ports.\n\n\
         Targets: install at least 500k flows/s and 1.5x Open vSwitch, deleting as \
         fast; 64-byte UDP with a million flows within 10% of 10 flows; the switch's \
         own share of a first packet at most 1/3 of Open vSwitch's (ratio <= 0.33). \
         Load average at the end of this run: {} \
         (other builds shared the 2 cores). Both latencies include the same \
         controller work and both TCP writes on loopback; the controller runs in an \
         optimized build of the benchmark (decode PACKET_IN, encode PACKET_OUT in well \
         under a microsecond).\n\n\
         Inside the agent (its own `daolinet_agent::latency` trace timestamps, medians \
         over {} punts, both harness modes): BPF punt (`bpf_ktime_get_ns` in the ring \
         record) to the agent reading it {:.1} µs (ring wake-up, epoll, scheduling; of \
         which {:.1} µs from the return of epoll_wait to the punt read); reading it to the PACKET_IN ready to write {:.1} µs; the write \
         system call {:.1} µs (on loopback it also runs the controller's TCP input); a \
         PACKET_OUT read to its frame ready (decode, handle) {:.1} µs; the AF_PACKET \
         send {:.1} µs (it runs B's veth input and UDP delivery too). The event loop \
         waits for the answer without sleeping (reply spin, up to {} µs): it handled \
         {} of {} PACKET_OUTs while spinning; {} of {} spins ended at the deadline \
         without an answer (median spin {:.0} µs), and then the answer woke the loop \
         up. The rest of each half is the kernel outside these calls: \
         the veth and TCP stacks, and the thread wake-ups.\n\n\
         One thread wake-up costs {:.0} µs here (median, Unix socket ping-pong at the \
         same pacing). With the harness blocking, a first packet wakes the controller \
         and B's receiver, and the switch: the agent's event loop once (its reply spin \
         takes the PACKET_OUT without sleeping), Open vSwitch's main thread, which \
         polls these ports and handles the upcall, on the packet and again on the \
         PACKET_OUT.\n",
        reply_spin_us(),
        SETTLE_MAX.as_secs(),
        settled.longest,
        settled.unsettled,
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split(' ').next().map(str::to_string))
            .unwrap_or_else(|| "unknown".into()),
        inside.punts,
        inside.punt_to_read,
        inside.woke_to_read,
        inside.handle,
        inside.write,
        inside.po_handle,
        inside.po_send,
        reply_spin_us(),
        inside.spun,
        inside.packet_outs,
        inside.timed_out,
        inside.spins,
        inside.spin_median,
        wake,
    );
    println!("{body}");
    crate::benchmarks::update_section("agent", &body)
}
