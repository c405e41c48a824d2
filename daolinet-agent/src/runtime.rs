//! The I/O edge of the OpenFlow side (tokio): active controller
//! connections with reconnect and backoff, the passive listener, echo
//! keepalive, the timers, and the punt ring reader (a thread of its own).
//! Everything goes through the shared [`Agent`], whose lock is never held
//! across an await.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bytes::{Buf, BytesMut};
use daolinet_openflow::{Decoder, Message};
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::agent::{now_ns, Agent, ConnOut, CONN_QUEUE, LATENCY};
use crate::ofswitch::ConnId;

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

/// The reading side of a controller connection: its socket and the bytes
/// received and not yet decoded. Shared by the connection's task and the
/// punt reader's reply spin (see [`punt_reader`]); whoever holds the lock
/// reads the socket and handles what it decodes, so the messages of a
/// connection are handled one at a time and in order.
pub struct ConnIn {
    /// A non-blocking duplicate of the connection's socket.
    sock: Arc<std::net::TcpStream>,
    /// Received, not yet decoded.
    buf: BytesMut,
    /// Set by the reply spin when it received something: the connection's
    /// keepalive counts it as traffic.
    heard: bool,
}

/// A connection's reading side as the reply spin sees it: the state, and
/// the socket, which it may tune without the lock (see [`reply_spin`]).
#[derive(Clone)]
pub struct ConnInput {
    /// The reading state.
    pub state: Arc<Mutex<ConnIn>>,
    /// The same socket as in the state.
    pub sock: Arc<std::net::TcpStream>,
}

/// What handling the bytes of a connection gave.
struct Handled {
    /// A PACKET_OUT was among the messages.
    packet_out: bool,
    /// The stream cannot be decoded any more: the connection must close.
    fatal: bool,
    /// The switch still serves the connection.
    alive: bool,
}

/// Decode everything complete in `cin.buf` and handle it under one agent
/// lock (map writes batched); `read_at` is when the bytes were read.
fn handle_input(agent: &Shared, id: ConnId, cin: &mut ConnIn, read_at: u64, spun: bool) -> Handled {
    let decoder = Decoder::new();
    let buf = &mut cin.buf;
    let mut frames = Vec::new();
    let mut fatal = false;
    loop {
        match decoder.decode(buf) {
            Ok(Some((frame, used))) => {
                frames.push((frame, buf.split_to(used).freeze()));
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(conn = id, "{e}");
                let (xid, reply) = e.reply(buf);
                let mut a = lock(agent);
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
    let packet_out = frames
        .iter()
        .any(|(f, _)| matches!(f.message, Message::PacketOut(_)));
    // Timing of a lone PACKET_OUT (see agent::LATENCY).
    let timed = frames.len() == 1
        && packet_out
        && tracing::enabled!(target: LATENCY, tracing::Level::TRACE);
    let (alive, handled) = {
        let mut a = lock(agent);
        let handled = if frames.is_empty() {
            0
        } else {
            a.conn_frames(id, frames)
        };
        if fatal {
            a.conn_drop(id);
        }
        (a.conn_alive(id), handled)
    };
    if timed {
        tracing::trace!(
            target: LATENCY,
            packet_out_handle_ns = handled.saturating_sub(read_at),
            packet_out_send_ns = now_ns().saturating_sub(handled),
            spun,
            "PACKET_OUT handled"
        );
    }
    Handled {
        packet_out,
        fatal,
        alive,
    }
}

/// Run one OpenFlow connection until it closes.
pub async fn serve_conn(agent: Shared, stream: TcpStream, peer: String) {
    let _ = stream.set_nodelay(true);
    let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    // Duplicates of the socket for direct writes (see ConnOut) and for
    // reads by the reply spin (see ConnIn).
    let (stream, sock, sock_in) = match stream.into_std().and_then(|s| {
        let dup = s.try_clone()?;
        let dup_in = s.try_clone()?;
        Ok((TcpStream::from_std(s)?, dup, dup_in))
    }) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(%peer, "cannot set up the connection: {e}");
            return;
        }
    };
    let (rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CONN_QUEUE);
    let queued = Arc::new(AtomicUsize::new(0));
    let sock_in = Arc::new(sock_in);
    let input = Arc::new(Mutex::new(ConnIn {
        sock: sock_in.clone(),
        buf: BytesMut::with_capacity(64 * 1024),
        heard: false,
    }));
    lock(&agent).conn_open(
        id,
        ConnOut {
            tx,
            sock: Some(sock),
            queued: queued.clone(),
            input: Some(ConnInput {
                state: input.clone(),
                sock: sock_in,
            }),
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
    let mut silent = 0u32;
    let why = 'conn: loop {
        let ready = tokio::select! {
            r = tokio::time::timeout(ECHO_INTERVAL, rd.readable()) => r,
            _ = &mut writer => break 'conn "closed by the switch",
        };
        match ready {
            Err(_) => {
                if std::mem::take(&mut lock_in(&input).heard) {
                    silent = 0;
                    continue;
                }
                silent += 1;
                if silent >= 2 {
                    break "echo keepalive timed out";
                }
                lock(&agent).send(id, 0, &Message::EchoRequest(Vec::new()));
                continue;
            }
            Ok(Err(_)) => break "read error",
            Ok(Ok(())) => {}
        }
        // Read and handle under the input lock: the reply spin may have
        // taken what woke us (then the read finds nothing and clears the
        // readiness).
        let h = {
            let mut cin = lock_in(&input);
            if cin.buf.capacity() - cin.buf.len() < 16 * 1024 {
                cin.buf.reserve(64 * 1024);
            }
            match rd.try_read_buf(&mut cin.buf) {
                Ok(0) => break "closed by the peer",
                Ok(_) => silent = 0,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => break "read error",
            }
            handle_input(&agent, id, &mut cin, now_ns(), false)
        };
        if h.fatal {
            break "unrecoverable framing error";
        }
        if !h.alive {
            break "closed by the switch";
        }
    };
    lock(&agent).conn_closed(id);
    // The queue is gone: the writer flushes what is left and closes.
    let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
    writer.abort();
    tracing::info!(conn = id, %peer, why, "OpenFlow connection down");
}

fn lock_in(c: &Mutex<ConnIn>) -> MutexGuard<'_, ConnIn> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// What tasks beside the OpenFlow side (e.g. [`crate::register`]) get
/// from it and give it.
pub struct Hooks {
    /// Bumped each time a connection to an active controller comes up.
    pub connected: watch::Sender<u64>,
    /// When it completes, the run ends with its error (e.g. a refused
    /// registration).
    pub fatal: Option<Pin<Box<dyn Future<Output = anyhow::Error> + Send>>>,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            connected: watch::Sender::new(0),
            fatal: None,
        }
    }
}

/// Keep a connection to `addr` up: connect, serve, reconnect with backoff;
/// `connected` is bumped each time the connection comes up.
pub async fn active(agent: Shared, addr: SocketAddr, connected: watch::Sender<u64>) {
    let mut backoff = MIN_BACKOFF;
    let mut warned = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                warned = false;
                connected.send_modify(|n| *n += 1);
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

/// How the punt reader waits for answers to its PACKET_INs (see
/// [`punt_reader`]).
#[derive(Debug, Clone, Copy)]
pub struct ReplySpin {
    /// Longest busy-wait after a PACKET_IN; zero turns the spin off.
    pub max: Duration,
    /// Share of one CPU the spin may use over time (0.0..=1.0): spinning
    /// draws on a budget that refills at this rate, so a flood of
    /// PACKET_INs cannot turn into a busy agent.
    pub cpu_share: f64,
}

impl ReplySpin {
    /// Spin up to `us` microseconds, within 10% of one CPU.
    pub fn micros(us: u64) -> Self {
        ReplySpin {
            max: Duration::from_micros(us),
            cpu_share: 0.1,
        }
    }
}

/// The spin time left (see [`ReplySpin::cpu_share`]).
struct SpinBudget {
    /// Nanoseconds of spinning available.
    left: u64,
    /// When it was last refilled (CLOCK_MONOTONIC, ns).
    at: u64,
}

/// The shortest spin worth starting (ns).
const MIN_SPIN_NS: u64 = 10_000;

/// The most spin time saved up (ns).
const SPIN_BURST_NS: u64 = 50_000_000;

impl SpinBudget {
    /// How long the next spin may last (ns), after refilling.
    fn grant(&mut self, cfg: &ReplySpin, now: u64) -> u64 {
        let refill = (now.saturating_sub(self.at) as f64 * cfg.cpu_share) as u64;
        self.left = self.left.saturating_add(refill).min(SPIN_BURST_NS);
        self.at = now;
        let g = (cfg.max.as_nanos() as u64).min(self.left);
        // Shorter spins would rarely see an answer.
        if g < MIN_SPIN_NS {
            0
        } else {
            g
        }
    }
}

/// Read punts as soon as the ring signals them, on a thread of its own
/// blocked in poll(2) on the ring: the BPF ring's wake-up goes straight to
/// the thread that reads it and writes the PACKET_IN, without passing
/// through the runtime's scheduler (which costs several microseconds per
/// wake-up). It sleeps while nothing is punted; writing to `stop` (an
/// eventfd) ends it.
///
/// After writing PACKET_INs it busy-waits (up to `spin.max`, within the
/// CPU budget of `spin.cpu_share`) for the controllers' answers and
/// handles them itself, so that a PACKET_OUT does not wait for a thread to
/// wake up (which costs tens of microseconds on a virtual machine). It
/// reads and handles a connection's messages under that connection's
/// input lock ([`ConnIn`]), like the connection's own task, so they are
/// still handled one at a time and in order; it stops as soon as a
/// PACKET_OUT came from every connection it waits for, or the task took
/// over. An idle agent does not spin.
pub fn punt_reader(
    agent: Shared,
    ring: OwnedFd,
    stop: OwnedFd,
    spin: ReplySpin,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    use std::os::fd::AsRawFd;
    std::thread::Builder::new()
        .name("punts".into())
        .spawn(move || {
            let mut budget = SpinBudget {
                left: SPIN_BURST_NS,
                at: now_ns(),
            };
            let mut scratch = vec![0u8; 64 * 1024];
            loop {
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
                    tracing::error!(
                        "punt reader stopped (poll: {e}); the timer still drains the ring"
                    );
                    return;
                }
                if fds[1].revents != 0 {
                    return;
                }
                if fds[0].revents != 0 {
                    let woke = now_ns();
                    let waiting = {
                        let mut a = lock(&agent);
                        a.drain_punts_woken(woke);
                        a.take_awaiting()
                    };
                    if !waiting.is_empty() && !spin.max.is_zero() {
                        let grant = budget.grant(&spin, now_ns());
                        if grant > 0 {
                            let start = now_ns();
                            let left = reply_spin(&agent, waiting, start + grant, &mut scratch);
                            let spent = now_ns().saturating_sub(start);
                            budget.left = budget.left.saturating_sub(spent);
                            tracing::trace!(
                                target: LATENCY,
                                reply_spin_ns = spent,
                                unanswered = left,
                                "reply spin over"
                            );
                        }
                    }
                }
            }
        })
}

/// SO_RCVLOWAT while the reply spin waits on a connection: TCP then does
/// not wake the connection's task for an answer smaller than this, which
/// the spin takes anyway (a wake-up the controller's write would pay for,
/// and a thread that would contend for the input lock). Small enough not
/// to grow the receive buffer (`tcp_set_rcvlowat`).
const SPIN_RCVLOWAT: libc::c_int = 16 * 1024;

/// Set SO_RCVLOWAT; setting it back to 1 wakes the readers at once if data
/// is waiting (`tcp_set_rcvlowat` signals it), so no wake-up is lost.
fn set_rcvlowat(sock: &std::net::TcpStream, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: valid socket and an int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&bytes as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    if rc != 0 {
        tracing::debug!("SO_RCVLOWAT {bytes}: {}", std::io::Error::last_os_error());
    }
}

/// Busy-wait until `deadline` (CLOCK_MONOTONIC, ns) for the answers of the
/// connections in `waiting`, handling them (and new punts) as they come.
/// Returns how many connections were still waited for at the deadline.
///
/// While it waits on a connection, the connection's SO_RCVLOWAT is raised
/// (see [`SPIN_RCVLOWAT`]) so that the answer does not also wake the
/// connection's task; it is set back to 1 as soon as the spin stops
/// waiting on that connection.
fn reply_spin(
    agent: &Shared,
    mut waiting: Vec<(ConnId, ConnInput)>,
    deadline: u64,
    scratch: &mut [u8],
) -> usize {
    use std::io::Read;
    for (_, c) in &waiting {
        set_rcvlowat(&c.sock, SPIN_RCVLOWAT);
    }
    while !waiting.is_empty() && now_ns() < deadline {
        // New punts? Reading the ring needs no system call (it is mapped).
        let more = {
            let mut a = lock(agent);
            a.drain_punts();
            a.take_awaiting()
        };
        for (id, c) in more {
            if !waiting.iter().any(|(w, _)| *w == id) {
                set_rcvlowat(&c.sock, SPIN_RCVLOWAT);
                waiting.push((id, c));
            }
        }
        waiting.retain(|(id, input)| {
            let keep = match input.state.try_lock() {
                // Held: the connection's task is reading; it will handle
                // the answer.
                Err(_) => false,
                Ok(mut cin) => match (&*cin.sock).read(scratch) {
                    Ok(0) => false,
                    Ok(n) => {
                        let read_at = now_ns();
                        cin.heard = true;
                        cin.buf.extend_from_slice(&scratch[..n]);
                        let h = handle_input(agent, *id, &mut cin, read_at, true);
                        !h.packet_out && h.alive && !h.fatal
                    }
                    Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                },
            };
            if !keep {
                set_rcvlowat(&input.sock, 1);
            }
            keep
        });
        // Let anything else runnable on this CPU go first (the controller
        // may share it): a spinner that does not yield keeps its CPU for a
        // whole time slice, wake-ups do not preempt it at once. On a busy
        // machine this may cost the spin its CPU for a slice; then the
        // runtime thread handles the answer.
        // SAFETY: plain system call.
        unsafe { libc::sched_yield() };
    }
    for (_, c) in &waiting {
        set_rcvlowat(&c.sock, 1);
    }
    waiting.len()
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
        let timings = {
            let mut a = lock(&agent);
            a.tick();
            a.drain_punts();
            if n.is_multiple_of(10) {
                a.check_ports();
            }
            a.take_timings()
        };
        Agent::log_timings(timings);
    }
}

/// Start the OpenFlow side and wait for SIGINT/SIGTERM.
pub async fn run(
    agent: Shared,
    controllers: Vec<SocketAddr>,
    listen: Option<SocketAddr>,
    spin: ReplySpin,
    hooks: Hooks,
) -> Result<()> {
    let punt_fd = lock(&agent).dp.punt_ring_fd()?;
    if let Some(addr) = listen {
        let l = bind(addr).await?;
        tracing::info!(%addr, "OpenFlow listener (passive)");
        tokio::spawn(passive(agent.clone(), l));
    }
    for c in controllers {
        tracing::info!(controller = %c, "OpenFlow controller (active)");
        tokio::spawn(active(agent.clone(), c, hooks.connected.clone()));
    }
    let stop = stop_fd().context("eventfd for the punt reader")?;
    let stop_w = stop.try_clone()?;
    let reader =
        punt_reader(agent.clone(), punt_fd, stop, spin).context("starting the punt reader")?;
    tokio::spawn(timers(agent.clone()));
    let la = agent.clone();
    tokio::spawn(async move {
        if let Err(e) = link_events(la).await {
            tracing::warn!("no rtnetlink link events, ports checked every second: {e:#}");
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let fatal = async {
        match hooks.fatal {
            Some(f) => f.await,
            None => std::future::pending().await,
        }
    };
    let res = tokio::select! {
        r = tokio::signal::ctrl_c() => r.map_err(anyhow::Error::from),
        _ = term.recv() => Ok(()),
        e = fatal => Err(e),
    };
    // Wake and end the punt reader.
    {
        use std::io::Write;
        let mut w = std::fs::File::from(stop_w);
        let _ = w.write_all(&1u64.to_ne_bytes());
    }
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_spin_stays_within_its_cpu_share() {
        let cfg = ReplySpin::micros(200);
        let mut b = SpinBudget {
            left: SPIN_BURST_NS,
            at: 0,
        };
        // A spin never lasts longer than asked.
        assert_eq!(b.grant(&cfg, 0), 200_000);
        // A flood of PACKET_INs, each followed by a full spin: once the
        // saved-up burst is spent, spinning is limited to 10% of the time.
        let (mut now, mut spun) = (0u64, 0u64);
        while now < 2_000_000_000 {
            let g = b.grant(&cfg, now);
            b.left -= g;
            spun += g;
            now += g + 10_000;
        }
        let share = (spun - SPIN_BURST_NS) as f64 / now as f64;
        assert!((0.09..=0.11).contains(&share), "{share}");
        // Too little left right after; the budget refills while idle.
        assert_eq!(b.grant(&cfg, now), 0);
        assert_eq!(b.grant(&cfg, now + 2_000_000), 200_000);
        // Off.
        assert_eq!(b.grant(&ReplySpin::micros(0), now + 4_000_000), 0);
    }

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
