//! A small-packet UDP generator and sink for the datapath benchmark.
//!
//! iperf3 sends one datagram per system call and tops out near 50 kpps
//! here, far below what the datapath forwards. This sender batches 64
//! datagrams per `sendmmsg(2)` and the sink drains with `recvmmsg(2)`, so
//! the forwarding path (softirq on the sender's CPU) is what limits the
//! rate. Both run as threads of this process that entered the source and
//! destination network namespaces (`setns(2)` on `/run/netns/NAME`, which
//! only moves the calling thread); sockets stay in the namespace they were
//! created in.

use anyhow::{anyhow, bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// UDP payload for 64-byte Ethernet frames: 64 - 4 (FCS) - 14 - 20 - 8.
pub const PAYLOAD: usize = 18;
const BATCH: usize = 64;

/// Rates measured over the measurement window.
pub struct Rates {
    /// Datagrams the sender handed to the kernel, per second.
    pub sent_pps: f64,
    /// Datagrams the sink received, per second (the number reported).
    pub recv_pps: f64,
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

/// Send 64-byte frames from namespace `src_ns` to `dst:port` in `dst_ns`
/// as fast as one thread can for `warmup + secs`, count what arrives
/// during the last `secs`.
pub fn flood(src_ns: &str, dst_ns: &str, dst: Ipv4Addr, port: u16, secs: f64) -> Result<Rates> {
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();

    let sink = {
        let (stop, received, dst_ns) = (stop.clone(), received.clone(), dst_ns.to_string());
        std::thread::spawn(move || -> Result<()> {
            let sock = enter_netns(&dst_ns)
                .and_then(|_| UdpSocket::bind(SocketAddrV4::new(dst, port)).context("bind sink"));
            let sock = match sock {
                Ok(s) => s,
                Err(e) => {
                    let msg = format!("{e:#}");
                    let _ = ready_tx.send(Err(e));
                    bail!("{msg}");
                }
            };
            set_int_opt(&sock, libc::SO_RCVBUFFORCE, 64 << 20);
            sock.set_read_timeout(Some(Duration::from_millis(100)))?;
            let _ = ready_tx.send(Ok(()));
            let mut bufs = vec![[0u8; 64]; BATCH];
            let mut iov: Vec<libc::iovec> = bufs
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                })
                .collect();
            // SAFETY: mmsghdr is plain data; zeroed is a valid value.
            let mut msgs: Vec<libc::mmsghdr> =
                (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
            for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
            }
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: `msgs` points at BATCH valid headers whose iovecs
                // point at live buffers.
                let n = unsafe {
                    libc::recvmmsg(
                        sock.as_raw_fd(),
                        msgs.as_mut_ptr(),
                        BATCH as libc::c_uint,
                        libc::MSG_WAITFORONE,
                        std::ptr::null_mut(),
                    )
                };
                if n > 0 {
                    received.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            Ok(())
        })
    };
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| anyhow!("the UDP sink did not start"))??;

    let sender = {
        let (stop, sent, src_ns) = (stop.clone(), sent.clone(), src_ns.to_string());
        std::thread::spawn(move || -> Result<()> {
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
            // SAFETY: as above.
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

    std::thread::sleep(Duration::from_millis(700));
    let (r0, s0, t0) = (
        received.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (r1, s1, dt) = (
        received.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
    );
    stop.store(true, Ordering::Relaxed);
    let sres = sender.join().map_err(|_| anyhow!("UDP sender panicked"))?;
    let rres = sink.join().map_err(|_| anyhow!("UDP sink panicked"))?;
    sres?;
    rres?;
    Ok(Rates {
        sent_pps: (s1 - s0) as f64 / dt,
        recv_pps: (r1 - r0) as f64 / dt,
    })
}
