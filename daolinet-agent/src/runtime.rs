//! The I/O edge of the OpenFlow side (tokio): active controller
//! connections with reconnect and backoff, the passive listener, echo
//! keepalive, the timers, and the punt ring reader (a thread of its own).
//! Everything goes through the shared [`Agent`], whose lock is never held
//! across an await.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bytes::{Buf, BytesMut};
use daolinet_openflow::{Decoder, Message};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::agent::{now_ns, Agent, ConnOut, CONN_QUEUE, LATENCY};

/// How long a connection may stay silent before we send ECHO_REQUEST; a
/// second silent period closes it.
pub const ECHO_INTERVAL: Duration = Duration::from_secs(5);
/// First reconnect delay; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest reconnect delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(8);

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Shared agent state.
pub type Shared = Arc<Mutex<Agent>>;

fn lock(a: &Shared) -> MutexGuard<'_, Agent> {
    // A panic while holding the lock cannot leave the switch half-updated
    // in a way worse than stopping; keep serving.
    a.lock().unwrap_or_else(|p| p.into_inner())
}

/// `tcp:IP[:PORT]` (default port 6653).
pub fn parse_active(spec: &str) -> Result<SocketAddr> {
    let rest = spec
        .strip_prefix("tcp:")
        .ok_or_else(|| anyhow!("controller {spec:?}: expected tcp:IP[:PORT]"))?;
    if let Ok(a) = rest.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip: std::net::IpAddr = rest
        .parse()
        .map_err(|_| anyhow!("controller {spec:?}: expected tcp:IP[:PORT]"))?;
    Ok(SocketAddr::new(ip, 6653))
}

/// `ptcp:PORT[:IP]`. The default address is 127.0.0.1: the listener has
/// no authentication, so exposing it (e.g. `ptcp:6634:0.0.0.0`) must be a
/// deliberate choice.
pub fn parse_passive(spec: &str) -> Result<SocketAddr> {
    let rest = spec
        .strip_prefix("ptcp:")
        .ok_or_else(|| anyhow!("listener {spec:?}: expected ptcp:PORT[:IP]"))?;
    let (port, ip) = match rest.split_once(':') {
        Some((p, ip)) => (p, ip),
        None => (rest, "127.0.0.1"),
    };
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow!("listener {spec:?}: bad port"))?;
    let ip: std::net::IpAddr = ip
        .parse()
        .map_err(|_| anyhow!("listener {spec:?}: bad address"))?;
    Ok(SocketAddr::new(ip, port))
}

/// Run one OpenFlow connection until it closes.
pub async fn serve_conn(agent: Shared, stream: TcpStream, peer: String) {
    let _ = stream.set_nodelay(true);
    let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    // A duplicate of the socket for direct writes (see ConnOut).
    let (stream, sock) = match stream.into_std().and_then(|s| {
        let dup = s.try_clone()?;
        Ok((TcpStream::from_std(s)?, dup))
    }) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(%peer, "cannot set up the connection: {e}");
            return;
        }
    };
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CONN_QUEUE);
    let queued = Arc::new(AtomicUsize::new(0));
    lock(&agent).conn_open(
        id,
        ConnOut {
            tx,
            sock: Some(sock),
            queued: queued.clone(),
        },
    );
    tracing::info!(conn = id, %peer, "OpenFlow connection up");
    let mut writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            // Batch what is queued into one write.
            let mut buf = first;
            let mut n = 1;
            while buf.len() < 64 * 1024 {
                match rx.try_recv() {
                    Ok(more) => {
                        buf.extend_from_slice(&more);
                        n += 1;
                    }
                    Err(_) => break,
                }
            }
            let ok = wr.write_all(&buf).await.is_ok();
            queued.fetch_sub(n, Ordering::AcqRel);
            if !ok {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let decoder = Decoder::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut silent = 0u32;
    let why = 'conn: loop {
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        let read = tokio::select! {
            r = tokio::time::timeout(ECHO_INTERVAL, rd.read_buf(&mut buf)) => r,
            _ = &mut writer => break 'conn "closed by the switch",
        };
        match read {
            Err(_) => {
                silent += 1;
                if silent >= 2 {
                    break "echo keepalive timed out";
                }
                lock(&agent).send(id, 0, &Message::EchoRequest(Vec::new()));
                continue;
            }
            Ok(Ok(0)) => break "closed by the peer",
            Ok(Err(_)) => break "read error",
            Ok(Ok(_)) => silent = 0,
        }
        let read_at = now_ns();
        // Everything decoded from this read is handled under one lock, its
        // map writes batched.
        let mut frames = Vec::new();
        let mut fatal = false;
        loop {
            match decoder.decode(&buf) {
                Ok(Some((frame, used))) => {
                    frames.push((frame, buf.split_to(used).freeze()));
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(conn = id, "{e}");
                    let (xid, reply) = e.reply(&buf);
                    let mut a = lock(&agent);
                    a.conn_frames(id, std::mem::take(&mut frames));
                    a.send(id, xid, &reply);
                    drop(a);
                    match e.frame_len {
                        Some(n) => buf.advance(n.min(buf.len())),
                        None => {
                            fatal = true;
                            break;
                        }
                    }
                }
            }
        }
        // Timing of a lone PACKET_OUT (see agent::LATENCY).
        let timed = frames.len() == 1
            && matches!(frames[0].0.message, Message::PacketOut(_))
            && tracing::enabled!(target: LATENCY, tracing::Level::TRACE);
        let (alive, handled) = {
            let mut a = lock(&agent);
            let handled = if frames.is_empty() {
                0
            } else {
                a.conn_frames(id, frames)
            };
            (a.conn_alive(id), handled)
        };
        if timed {
            tracing::trace!(
                target: LATENCY,
                packet_out_handle_ns = handled.saturating_sub(read_at),
                packet_out_send_ns = now_ns().saturating_sub(handled),
                "PACKET_OUT handled"
            );
        }
        if fatal {
            break "unrecoverable framing error";
        }
        if !alive {
            break "closed by the switch";
        }
    };
    lock(&agent).conn_closed(id);
    // The queue is gone: the writer flushes what is left and closes.
    let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
    writer.abort();
    tracing::info!(conn = id, %peer, why, "OpenFlow connection down");
}

/// Keep a connection to `addr` up: connect, serve, reconnect with backoff.
pub async fn active(agent: Shared, addr: SocketAddr) {
    let mut backoff = MIN_BACKOFF;
    let mut warned = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                warned = false;
                let started = tokio::time::Instant::now();
                serve_conn(agent.clone(), s, format!("tcp:{addr}")).await;
                if started.elapsed() > Duration::from_secs(10) {
                    backoff = MIN_BACKOFF;
                }
            }
            Ok(Err(e)) if !warned => {
                tracing::warn!(controller = %addr, "cannot connect: {e} (retrying)");
                warned = true;
            }
            Err(_) if !warned => {
                tracing::warn!(controller = %addr, "connect timed out (retrying)");
                warned = true;
            }
            _ => {}
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Bind the passive listener (before serving, so errors show at startup).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))
}

/// Accept connections on the passive listener forever.
pub async fn passive(agent: Shared, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((s, peer)) => {
                tokio::spawn(serve_conn(agent.clone(), s, format!("tcp:{peer}")));
            }
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Read punts as soon as the ring signals them, on a thread of its own
/// blocked in poll(2) on the ring: the BPF ring's wake-up goes straight to
/// the thread that reads it and writes the PACKET_IN, without passing
/// through the runtime's scheduler (which costs several microseconds per
/// wake-up). It sleeps while nothing is punted; writing to `stop` (an
/// eventfd) ends it.
pub fn punt_reader(
    agent: Shared,
    ring: OwnedFd,
    stop: OwnedFd,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    use std::os::fd::AsRawFd;
    std::thread::Builder::new()
        .name("punts".into())
        .spawn(move || loop {
            let mut fds = [
                libc::pollfd {
                    fd: ring.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfd entries, no timeout.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!("punt reader stopped (poll: {e}); the timer still drains the ring");
                return;
            }
            if fds[1].revents != 0 {
                return;
            }
            if fds[0].revents != 0 {
                lock(&agent).drain_punts();
            }
        })
}

/// An eventfd to stop [`punt_reader`].
fn stop_fd() -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain eventfd(2) call.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Open a NETLINK_ROUTE socket subscribed to link events.
fn link_events_socket() -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain old data.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    sa.nl_groups = libc::RTMGRP_LINK as u32;
    // SAFETY: valid fd and address of the right size.
    let rc = unsafe {
        libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&sa as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Watch rtnetlink link events (RTM_NEWLINK/RTM_DELLINK) and re-check the
/// ports at once, so PORT_STATUS follows interfaces that come, go or
/// change link state. The timer's once-a-second check stays as a fallback.
pub async fn link_events(agent: Shared) -> Result<()> {
    use std::os::fd::AsRawFd;
    let fd = link_events_socket().context("rtnetlink socket")?;
    // SAFETY: the AsyncFd owns the descriptor.
    let afd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|_| anyhow!("registering the rtnetlink socket with epoll failed"))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut guard = afd.readable().await?;
        let mut changed = false;
        loop {
            // SAFETY: valid fd and buffer.
            let n = unsafe {
                libc::recv(
                    afd.get_ref().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                )
            };
            if n <= 0 {
                break;
            }
            let mut msgs = &buf[..n as usize];
            while msgs.len() >= 16 {
                let len = u32::from_ne_bytes([msgs[0], msgs[1], msgs[2], msgs[3]]) as usize;
                let ty = u16::from_ne_bytes([msgs[4], msgs[5]]);
                if ty == libc::RTM_NEWLINK || ty == libc::RTM_DELLINK {
                    changed = true;
                }
                if len < 16 || len > msgs.len() {
                    break;
                }
                msgs = msgs.get((len + 3) & !3..).unwrap_or_default();
            }
        }
        guard.clear_ready();
        if changed {
            lock(&agent).check_ports();
        }
    }
}

/// Timers: flow expiry every 100 ms, punts as a fallback, ports every second.
pub async fn timers(agent: Shared) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n = 0u64;
    loop {
        tick.tick().await;
        n += 1;
        let mut a = lock(&agent);
        a.tick();
        a.drain_punts();
        a.log_timings();
        if n.is_multiple_of(10) {
            a.check_ports();
        }
    }
}

/// Start the OpenFlow side and wait for SIGINT/SIGTERM.
pub async fn run(
    agent: Shared,
    controllers: Vec<SocketAddr>,
    listen: Option<SocketAddr>,
) -> Result<()> {
    let punt_fd = lock(&agent).dp.punt_ring_fd()?;
    if let Some(addr) = listen {
        let l = bind(addr).await?;
        tracing::info!(%addr, "OpenFlow listener (passive)");
        tokio::spawn(passive(agent.clone(), l));
    }
    for c in controllers {
        tracing::info!(controller = %c, "OpenFlow controller (active)");
        tokio::spawn(active(agent.clone(), c));
    }
    let stop = stop_fd().context("eventfd for the punt reader")?;
    let stop_w = stop.try_clone()?;
    let reader = punt_reader(agent.clone(), punt_fd, stop).context("starting the punt reader")?;
    tokio::spawn(timers(agent.clone()));
    let la = agent.clone();
    tokio::spawn(async move {
        if let Err(e) = link_events(la).await {
            tracing::warn!("no rtnetlink link events, ports checked every second: {e:#}");
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {},
    }
    // Wake and end the punt reader.
    {
        use std::io::Write;
        let mut w = std::fs::File::from(stop_w);
        let _ = w.write_all(&1u64.to_ne_bytes());
    }
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_specs_parse_like_open_vswitch() {
        assert_eq!(
            parse_active("tcp:10.0.0.1").unwrap(),
            "10.0.0.1:6653".parse().unwrap()
        );
        assert_eq!(
            parse_active("tcp:10.0.0.1:6633").unwrap(),
            "10.0.0.1:6633".parse().unwrap()
        );
        assert!(parse_active("ssl:10.0.0.1:6653").is_err());
        assert!(parse_active("tcp:nohost:1").is_err());
        assert_eq!(
            parse_passive("ptcp:6634").unwrap(),
            "127.0.0.1:6634".parse().unwrap()
        );
        assert_eq!(
            parse_passive("ptcp:6634:0.0.0.0").unwrap(),
            "0.0.0.0:6634".parse().unwrap()
        );
        assert!(parse_passive("ptcp:99999").is_err());
        assert!(parse_passive("tcp:6634").is_err());
    }
}
