//! A small-packet UDP generator for the datapath benchmark.
//!
//! iperf3 sends one datagram per system call and tops out near 50 kpps
//! here, far below what the datapath forwards. This sender batches 64
//! datagrams per `sendmmsg(2)`, so the forwarding path (softirq on the
//! sender's CPU) is what limits the rate. It runs as a thread of this
//! process that entered the source network namespace (`setns(2)` on
//! `/run/netns/NAME` only moves the calling thread; sockets stay in the
//! namespace they were created in).
//!
//! Arrivals are counted by the destination's kernel (UDP `InDatagrams` +
//! `InErrors` of its namespace): a socket is bound to the port so
//! datagrams are delivered, but nobody reads it, so no receiver wake-up
//! (an inter-processor interrupt per batch, the most expensive step in a
//! VM) dilutes what is measured: the path from the sender's socket through
//! both hosts' datapaths to the destination's UDP layer.

use anyhow::{anyhow, Context, Result};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// UDP payload for 64-byte Ethernet frames: 64 - 4 (FCS) - 14 - 20 - 8.
pub const PAYLOAD: usize = 18;
const BATCH: usize = 64;

/// Rates measured over the measurement window.
#[derive(Clone, Copy)]
pub struct Rates {
    /// Datagrams the sender handed to the kernel, per second.
    pub sent_pps: f64,
    /// Datagrams the sink received, per second (the number reported).
    pub recv_pps: f64,
    /// CPU nanoseconds per datagram received: what the sender thread and
    /// the ksoftirqd threads ran meanwhile (the whole path runs in softirq
    /// on the sender's thread, or in ksoftirqd when softirqs pile up),
    /// divided by the datagrams received.
    pub cpu_ns_per_pkt: f64,
}

/// Nanoseconds thread `tid` of this process has run so far.
fn thread_ns(tid: i32) -> Result<u64> {
    schedstat_ns(&format!("/proc/self/task/{tid}/schedstat"))
}

/// The first field of a `schedstat` file: nanoseconds run.
fn schedstat_ns(path: &str) -> Result<u64> {
    std::fs::read_to_string(path)
        .with_context(|| format!("reading {path}"))?
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no run time in {path}"))
}

/// The pids of the ksoftirqd threads.
pub fn ksoftirqd_pids() -> Vec<u32> {
    let mut pids = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
            {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Nanoseconds the ksoftirqd threads `pids` have run so far.
fn ksoftirqd_ns(pids: &[u32]) -> Result<u64> {
    pids.iter()
        .map(|p| schedstat_ns(&format!("/proc/{p}/schedstat")))
        .sum()
}

/// Move the calling thread into network namespace `ns`.
fn enter_netns(ns: &str) -> Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("opening namespace {ns}"))?;
    // SAFETY: valid fd; CLONE_NEWNET only affects the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns {ns}"));
    }
    Ok(())
}

fn set_int_opt(sock: &UdpSocket, opt: libc::c_int, v: libc::c_int) {
    // SAFETY: valid socket fd and a c_int option value. Best effort.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// UDP datagrams that reached the UDP layer of the namespace of thread
/// `tid` (`InDatagrams` + `InErrors`, the latter counting full receive
/// buffers).
fn udp_arrivals(tid: i32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/net/snmp"))
        .context("reading the destination's /proc/net/snmp")?;
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (
        lines.next().ok_or_else(|| anyhow!("no Udp header"))?,
        lines.next().ok_or_else(|| anyhow!("no Udp values"))?,
    );
    let field = |want: &str| -> Result<u64> {
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == want)
            .ok_or_else(|| anyhow!("no Udp {want}"))?
            .1
            .parse()
            .with_context(|| format!("Udp {want}"))
    };
    Ok(field("InDatagrams")? + field("InErrors")?)
}

/// Send 64-byte frames from namespace `src_ns` to `dst:port` in `dst_ns`
/// as fast as one thread can for a warm-up and then `secs`, and count what
/// arrives at the destination's UDP layer during those `secs`.
pub fn flood(src_ns: &str, dst_ns: &str, dst: Ipv4Addr, port: u16, secs: f64) -> Result<Rates> {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<i32>>();

    // The sink: a bound socket nobody reads, kept open until `stop`.
    let sink = {
        let (stop, dst_ns) = (stop.clone(), dst_ns.to_string());
        std::thread::spawn(move || {
            let sock = enter_netns(&dst_ns)
                .and_then(|_| UdpSocket::bind(SocketAddrV4::new(dst, port)).context("bind sink"));
            match sock {
                Ok(sock) => {
                    // SAFETY: gettid has no preconditions.
                    let _ = ready_tx.send(Ok(unsafe { libc::gettid() }));
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    drop(sock);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
    };
    let sink_tid = ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| anyhow!("the UDP sink did not start"))??;

    let (tid_tx, tid_rx) = std::sync::mpsc::channel::<i32>();
    let sender = {
        let (stop, sent, src_ns) = (stop.clone(), sent.clone(), src_ns.to_string());
        std::thread::spawn(move || -> Result<()> {
            // SAFETY: gettid has no preconditions.
            let _ = tid_tx.send(unsafe { libc::gettid() });
            enter_netns(&src_ns)?;
            let sock = UdpSocket::bind("0.0.0.0:0").context("bind sender")?;
            sock.connect(SocketAddrV4::new(dst, port))
                .context("connect sender")?;
            set_int_opt(&sock, libc::SO_SNDBUFFORCE, 8 << 20);
            let mut payload = [0x5au8; PAYLOAD];
            let mut iov = libc::iovec {
                iov_base: payload.as_mut_ptr().cast(),
                iov_len: PAYLOAD,
            };
            // SAFETY: mmsghdr is plain data; zeroed is a valid value.
            let mut msgs: Vec<libc::mmsghdr> =
                (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
            for m in msgs.iter_mut() {
                m.msg_hdr.msg_iov = &mut iov;
                m.msg_hdr.msg_iovlen = 1;
            }
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: BATCH valid headers, all pointing at `payload`.
                let n = unsafe {
                    libc::sendmmsg(
                        sock.as_raw_fd(),
                        msgs.as_mut_ptr(),
                        BATCH as libc::c_uint,
                        0,
                    )
                };
                if n > 0 {
                    sent.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            Ok(())
        })
    };

    let softirqd = ksoftirqd_pids();
    let measured = (|| -> Result<Rates> {
        let sender_tid = tid_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow!("the UDP sender did not start"))?;
        let cpu = || -> Result<u64> { Ok(thread_ns(sender_tid)? + ksoftirqd_ns(&softirqd)?) };
        std::thread::sleep(Duration::from_millis(500));
        let (r0, s0, c0, t0) = (
            udp_arrivals(sink_tid)?,
            sent.load(Ordering::Relaxed),
            cpu()?,
            Instant::now(),
        );
        std::thread::sleep(Duration::from_secs_f64(secs));
        let (r1, s1, c1, dt) = (
            udp_arrivals(sink_tid)?,
            sent.load(Ordering::Relaxed),
            cpu()?,
            t0.elapsed().as_secs_f64(),
        );
        let received = r1.saturating_sub(r0);
        Ok(Rates {
            sent_pps: s1.saturating_sub(s0) as f64 / dt,
            recv_pps: received as f64 / dt,
            cpu_ns_per_pkt: c1.saturating_sub(c0) as f64 / received.max(1) as f64,
        })
    })();
    stop.store(true, Ordering::Relaxed);
    let sres = sender.join().map_err(|_| anyhow!("UDP sender panicked"))?;
    sink.join().map_err(|_| anyhow!("UDP sink panicked"))?;
    sres?;
    measured
}
