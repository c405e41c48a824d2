//! The event loop: one thread, one epoll (mio), owning the [`Engine`] and
//! every descriptor: the punt ring, the OpenFlow connections (active ones
//! with reconnect and backoff, and the passive listener's), the control
//! socket and its clients, rtnetlink link events, SIGINT/SIGTERM. Timers
//! (flow expiry, echo keepalive, reconnects, port checks) are deadlines
//! the epoll wait sleeps until; nothing runs while nothing happens.
//!
//! When it wakes up (the punt ring's descriptor, or the punt bell's,
//! [`crate::bell`], which wakes it sooner) it looks at the punt ring first
//! and hands the engine to the [`FastPath`], so a punt becomes a PACKET_IN
//! before anything else is looked at; then the events in order.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::engine::{now_ns, Dataplane, Engine, Transport};
use crate::fastpath::{FastPath, ReplySpin};
use crate::ofswitch::ConnId;

/// First reconnect delay; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest reconnect delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// A connection that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(10);
/// A connect that has not completed by then is abandoned (and retried).
const CONNECT_TIMEOUT_NS: u64 = 5_000_000_000;
/// How often ports are re-checked when rtnetlink link events work (they
/// report changes at once) and when they do not.
const PORT_CHECK_NS: u64 = 10_000_000_000;
const PORT_CHECK_FALLBACK_NS: u64 = 1_000_000_000;
/// Punt timings wait at most this long to be logged.
const TIMINGS_NS: u64 = 100_000_000;

/// A controller to keep a connection to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Its address.
    pub addr: SocketAddr,
    /// Over TLS (`ssl:`).
    pub ssl: bool,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", if self.ssl { "ssl" } else { "tcp" }, self.addr)
    }
}

/// `tcp:IP[:PORT]` or `ssl:IP[:PORT]` (default port 6653).
pub fn parse_active(spec: &str) -> Result<Target> {
    let bad = || anyhow!("controller {spec:?}: expected tcp:IP[:PORT] or ssl:IP[:PORT]");
    let (ssl, rest) = match spec.split_once(':') {
        Some(("tcp", r)) => (false, r),
        Some(("ssl", r)) => (true, r),
        _ => return Err(bad()),
    };
    if let Ok(addr) = rest.parse::<SocketAddr>() {
        return Ok(Target { addr, ssl });
    }
    let ip: std::net::IpAddr = rest.parse().map_err(|_| bad())?;
    Ok(Target {
        addr: SocketAddr::new(ip, 6653),
        ssl,
    })
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

impl Transport for TcpStream {
    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.as_raw_fd())
    }
}

/// Reconnect delays: [`MIN_BACKOFF`] doubling up to [`MAX_BACKOFF`], back
/// to the minimum after a connection that lasted [`STABLE`].
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: MIN_BACKOFF }
    }
}

impl Backoff {
    /// The wait before the next attempt, after a failed one (`lasted`
    /// None) or a connection that ended after `lasted`.
    pub fn after(&mut self, lasted: Option<Duration>) -> Duration {
        if lasted.is_some_and(|d| d >= STABLE) {
            self.next = MIN_BACKOFF;
        }
        let d = self.next;
        self.next = (d * 2).min(MAX_BACKOFF);
        d
    }
}

/// What the event loop serves.
pub struct Net {
    /// Controllers to keep a connection to.
    pub controllers: Vec<Target>,
    /// TLS settings for the `ssl:` controllers (required when there are).
    pub tls: Option<Arc<daolinet_tls::rustls::ClientConfig>>,
    /// The passive OpenFlow listener (bound already, so errors show at
    /// startup).
    pub listen: Option<std::net::TcpListener>,
    /// The control socket.
    pub control: Option<std::os::unix::net::UnixListener>,
    /// How the fast path waits for answers.
    pub spin: ReplySpin,
    /// Stop on SIGINT/SIGTERM (blocks them in this thread, and in the
    /// threads it starts afterwards, and reads them from a signalfd).
    /// Tests leave it off and use a [`StopHandle`].
    pub signals: bool,
    /// Called each time a connection to an active controller comes up
    /// (e.g. to register with the controller again, [`crate::register`]).
    pub on_connect: Option<Box<dyn FnMut() + Send>>,
    /// The metrics listener (`--metrics`, bound already): `GET /metrics`
    /// is answered by this loop ([`crate::metrics`]).
    pub metrics: Option<std::net::TcpListener>,
    /// What the control socket serves besides the engine (`info`, the
    /// ports kept for the next start, the deferred-deletion drainer).
    pub control_ctx: crate::control::ControlState,
}

/// Stops a running event loop from another thread.
#[derive(Clone)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    error: Arc<Mutex<Option<anyhow::Error>>>,
    waker: Arc<Waker>,
}

impl StopHandle {
    /// Ask the loop to return.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }

    /// Ask the loop to return with this error (e.g. a refused
    /// registration: the agent must not go on).
    pub fn fail(&self, e: anyhow::Error) {
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert(e);
        }
        self.stop();
    }

    fn result(&self) -> Result<()> {
        match self.error.lock().ok().and_then(|mut e| e.take()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

const RING: Token = Token(0);
const SIGNALS: Token = Token(1);
const NETLINK: Token = Token(2);
const CONTROL: Token = Token(3);
const LISTEN: Token = Token(4);
const WAKER: Token = Token(5);
const METRICS: Token = Token(6);
const SAMPLES: Token = Token(7);
const BELL: Token = Token(8);
const FIRST_DYNAMIC: usize = 16;

enum Slot {
    Conn(ConnId),
    Connecting(usize),
    Control,
    Http,
}

enum Link {
    Idle {
        retry_at: u64,
    },
    Connecting {
        stream: TcpStream,
        token: Token,
        since: u64,
    },
    Up {
        conn: ConnId,
        since: u64,
    },
}

/// An active controller connection kept up.
struct Active {
    addr: SocketAddr,
    ssl: bool,
    backoff: Backoff,
    link: Link,
    /// A failure was logged and nothing worked since.
    warned: bool,
    /// Connections established.
    connects: u64,
    /// Why the last attempt or connection failed.
    last_error: Option<String>,
    /// When the link entered its current state (CLOCK_MONOTONIC, ns).
    changed_at: u64,
}

/// A control socket client: a line protocol.
struct Client {
    stream: UnixStream,
    input: Vec<u8>,
    out: Vec<u8>,
    eof: bool,
}

/// A metrics client: one HTTP request, one answer.
struct HttpClient {
    stream: TcpStream,
    input: Vec<u8>,
    out: Vec<u8>,
    answered: bool,
}

/// The event loop (see the module documentation).
pub struct EventLoop<D> {
    poll: Poll,
    eng: Engine<D>,
    fast: FastPath,
    actives: Vec<Active>,
    listener: Option<TcpListener>,
    control: Option<UnixListener>,
    clients: HashMap<Token, Client>,
    slots: HashMap<Token, Slot>,
    conn_tokens: HashMap<ConnId, Token>,
    next_token: usize,
    netlink: Option<OwnedFd>,
    signals: Option<OwnedFd>,
    stop: StopHandle,
    on_connect: Option<Box<dyn FnMut() + Send>>,
    tls: Option<Arc<daolinet_tls::rustls::ClientConfig>>,
    ctl: crate::control::ControlState,
    next_port_check: u64,
    metrics: Option<TcpListener>,
    http: HashMap<Token, HttpClient>,
}

impl<D: Dataplane> EventLoop<D> {
    /// Set up the loop over `eng`: register the punt ring, listeners,
    /// rtnetlink and signals; controllers are connected to at once.
    pub fn new(eng: Engine<D>, net: Net) -> Result<Self> {
        let poll = Poll::new().context("epoll")?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).context("eventfd")?);
        if let Some(fd) = eng.dp.punt_fd() {
            poll.registry()
                .register(&mut SourceFd(&fd), RING, Interest::READABLE)
                .context("registering the punt ring")?;
        }
        if let Some(fd) = eng.dp.punt_bell_fd() {
            poll.registry()
                .register(&mut SourceFd(&fd), BELL, Interest::READABLE)
                .context("registering the punt bell")?;
        }
        let signals = if net.signals {
            let fd = signal_fd().context("signalfd for SIGINT/SIGTERM")?;
            poll.registry().register(
                &mut SourceFd(&fd.as_raw_fd()),
                SIGNALS,
                Interest::READABLE,
            )?;
            Some(fd)
        } else {
            None
        };
        let netlink = match link_events_socket() {
            Ok(fd) => {
                poll.registry().register(
                    &mut SourceFd(&fd.as_raw_fd()),
                    NETLINK,
                    Interest::READABLE,
                )?;
                Some(fd)
            }
            Err(e) => {
                tracing::warn!("no rtnetlink link events, ports checked every second: {e}");
                None
            }
        };
        let listener = match net.listen {
            Some(l) => {
                l.set_nonblocking(true)?;
                let mut l = TcpListener::from_std(l);
                poll.registry()
                    .register(&mut l, LISTEN, Interest::READABLE)?;
                Some(l)
            }
            None => None,
        };
        let control = match net.control {
            Some(l) => {
                l.set_nonblocking(true)?;
                let mut l = UnixListener::from_std(l);
                poll.registry()
                    .register(&mut l, CONTROL, Interest::READABLE)?;
                Some(l)
            }
            None => None,
        };
        let metrics = match net.metrics {
            Some(l) => {
                l.set_nonblocking(true)?;
                let mut l = TcpListener::from_std(l);
                poll.registry()
                    .register(&mut l, METRICS, Interest::READABLE)?;
                Some(l)
            }
            None => None,
        };
        if let Some(fd) = eng.dp.sample_fd() {
            poll.registry()
                .register(&mut SourceFd(&fd), SAMPLES, Interest::READABLE)
                .context("registering the drop sample ring")?;
        }
        let now = now_ns();
        let actives = net
            .controllers
            .into_iter()
            .map(|t| Active {
                addr: t.addr,
                ssl: t.ssl,
                backoff: Backoff::default(),
                link: Link::Idle { retry_at: now },
                warned: false,
                connects: 0,
                last_error: None,
                changed_at: now,
            })
            .collect();
        Ok(EventLoop {
            poll,
            eng,
            fast: FastPath::new(net.spin),
            actives,
            listener,
            control,
            clients: HashMap::new(),
            slots: HashMap::new(),
            conn_tokens: HashMap::new(),
            next_token: FIRST_DYNAMIC,
            next_port_check: now,
            netlink,
            signals,
            stop: StopHandle {
                flag: Arc::new(AtomicBool::new(false)),
                error: Arc::default(),
                waker,
            },
            on_connect: net.on_connect,
            metrics,
            http: HashMap::new(),
            tls: net.tls,
            ctl: net.control_ctx,
        })
    }

    /// A handle that stops [`EventLoop::run`] from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// The engine (e.g. to inspect it after the loop returned).
    pub fn engine(&mut self) -> &mut Engine<D> {
        &mut self.eng
    }

    /// Take the engine back.
    pub fn into_engine(self) -> Engine<D> {
        self.eng
    }

    fn token(&mut self, slot: Slot) -> Token {
        let t = Token(self.next_token);
        self.next_token += 1;
        self.slots.insert(t, slot);
        t
    }

    /// Serve until SIGINT/SIGTERM or [`StopHandle::stop`].
    pub fn run(&mut self) -> Result<()> {
        let mut events = Events::with_capacity(256);
        // Multipart answers in progress can take their next step at once.
        let mut busy = false;
        loop {
            let now = now_ns();
            self.start_connects(now);
            let deadline = if busy { now } else { self.next_deadline(now) };
            let mut timeout = Duration::from_nanos(deadline.saturating_sub(now));
            if timeout.is_zero() && deadline > now {
                timeout = Duration::from_nanos(1);
            }
            if !timeout.is_zero() && self.eng.has_timings() {
                // About to sleep: log the punt timings now, off the path.
                self.eng.log_timings();
            }
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("epoll_wait"),
            }
            let woke = now_ns();
            let bell = events.iter().any(|e| e.token() == BELL);
            let ring = bell || events.iter().any(|e| e.token() == RING);
            // Punts first. The ring is mapped: looking costs nothing.
            self.fast.run(&mut self.eng, if ring { woke } else { 0 });
            if bell {
                // Off the first packet's path: quiet the bell, then look
                // again for punts whose only wake-up it was.
                self.eng.dp.clear_punt_bell();
                self.fast.run(&mut self.eng, 0);
            }
            for ev in events.iter() {
                match ev.token() {
                    RING | BELL => {}
                    WAKER => {
                        if self.stop.flag.load(Ordering::Acquire) {
                            return self.stop.result();
                        }
                    }
                    SIGNALS => {
                        if self.signalled() {
                            return Ok(());
                        }
                    }
                    NETLINK => {
                        if self.link_events() {
                            let gone = self.eng.check_ports();
                            self.ctl.ports_gone(&gone);
                        }
                    }
                    LISTEN => self.accept(),
                    CONTROL => self.accept_control(),
                    METRICS => self.accept_http(),
                    SAMPLES => self.eng.drain_samples(),
                    t => match self.slots.get(&t) {
                        Some(Slot::Conn(id)) => {
                            let id = *id;
                            if ev.is_writable() {
                                self.eng.flush(id);
                            }
                            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                                self.eng.read(id, false);
                            }
                        }
                        Some(Slot::Connecting(i)) => {
                            let i = *i;
                            self.connected(i);
                        }
                        Some(Slot::Control) => self.control_io(t),
                        Some(Slot::Http) => self.http_io(t),
                        None => {}
                    },
                }
            }
            busy = self.eng.pump();
            for id in self.eng.take_resumed() {
                self.eng.read(id, false);
            }
            let now = now_ns();
            if self.eng.next_deadline() <= now {
                self.eng.timers(now);
            }
            if self.next_port_check <= now {
                let gone = self.eng.check_ports();
                self.ctl.ports_gone(&gone);
                self.next_port_check = now
                    + if self.netlink.is_some() {
                        PORT_CHECK_NS
                    } else {
                        PORT_CHECK_FALLBACK_NS
                    };
            }
            self.connect_timeouts(now);
            self.reap(now);
        }
    }

    fn next_deadline(&self, now: u64) -> u64 {
        let mut d = self.eng.next_deadline().min(self.next_port_check);
        for a in &self.actives {
            d = d.min(match &a.link {
                Link::Idle { retry_at } => *retry_at,
                Link::Connecting { since, .. } => since + CONNECT_TIMEOUT_NS,
                Link::Up { .. } => u64::MAX,
            });
        }
        if self.eng.has_timings() {
            d = d.min(now + TIMINGS_NS);
        }
        d
    }

    /// Start the connects that are due.
    fn start_connects(&mut self, now: u64) {
        for i in 0..self.actives.len() {
            let due = matches!(self.actives[i].link, Link::Idle { retry_at } if retry_at <= now);
            if !due {
                continue;
            }
            let addr = self.actives[i].addr;
            match TcpStream::connect(addr) {
                Ok(mut stream) => {
                    let token = self.token(Slot::Connecting(i));
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        self.slots.remove(&token);
                        self.retry(i, now, &format!("epoll: {e}"));
                        continue;
                    }
                    self.actives[i].link = Link::Connecting {
                        stream,
                        token,
                        since: now,
                    };
                    self.actives[i].changed_at = now;
                }
                Err(e) => self.retry(i, now, &e.to_string()),
            }
        }
    }

    /// Connect attempt `i` failed: wait and try again.
    fn retry(&mut self, i: usize, now: u64, why: &str) {
        let a = &mut self.actives[i];
        if !a.warned {
            tracing::warn!(controller = %a.addr, "cannot connect: {why} (retrying)");
            a.warned = true;
        }
        a.last_error = Some(why.to_string());
        a.changed_at = now;
        let d = a.backoff.after(None);
        a.link = Link::Idle {
            retry_at: now + d.as_nanos() as u64,
        };
    }

    /// A connecting socket became writable (or failed).
    fn connected(&mut self, i: usize) {
        let now = now_ns();
        let link = std::mem::replace(&mut self.actives[i].link, Link::Idle { retry_at: now });
        let Link::Connecting {
            mut stream, token, ..
        } = link
        else {
            self.actives[i].link = link;
            return;
        };
        let failed = match stream.take_error() {
            Ok(Some(e)) | Err(e) => Some(e.to_string()),
            Ok(None) => match stream.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    // Not yet: keep waiting.
                    self.actives[i].link = Link::Connecting {
                        stream,
                        token,
                        since: now,
                    };
                    return;
                }
                Err(e) => Some(e.to_string()),
            },
        };
        if let Some(why) = failed {
            let _ = self.poll.registry().deregister(&mut stream);
            self.slots.remove(&token);
            self.retry(i, now, &why);
            return;
        }
        let _ = stream.set_nodelay(true);
        self.actives[i].warned = false;
        if let Some(f) = self.on_connect.as_mut() {
            f();
        }
        let target = Target {
            addr: self.actives[i].addr,
            ssl: self.actives[i].ssl,
        };
        let io: Box<dyn Transport> = match (target.ssl, &self.tls) {
            (false, _) => Box::new(stream),
            (true, Some(cfg)) => match crate::tls::TlsIo::new(stream, cfg.clone()) {
                Ok(t) => Box::new(t),
                Err(e) => {
                    self.slots.remove(&token);
                    self.retry(i, now, &format!("TLS: {e}"));
                    return;
                }
            },
            (true, None) => {
                self.slots.remove(&token);
                self.retry(
                    i,
                    now,
                    "TLS without settings (--tls-ca/--tls-cert/--tls-key)",
                );
                return;
            }
        };
        let id = self.eng.open(io, target.to_string());
        // The same registration, now for the connection.
        self.slots.insert(token, Slot::Conn(id));
        self.conn_tokens.insert(id, token);
        self.actives[i].link = Link::Up {
            conn: id,
            since: now,
        };
        self.actives[i].connects += 1;
        self.actives[i].changed_at = now;
        // Bytes may have come with the connect.
        self.eng.read(id, false);
    }

    fn connect_timeouts(&mut self, now: u64) {
        for i in 0..self.actives.len() {
            let late = matches!(self.actives[i].link,
                Link::Connecting { since, .. } if since + CONNECT_TIMEOUT_NS <= now);
            if !late {
                continue;
            }
            if let Link::Connecting {
                mut stream, token, ..
            } = std::mem::replace(&mut self.actives[i].link, Link::Idle { retry_at: now })
            {
                let _ = self.poll.registry().deregister(&mut stream);
                self.slots.remove(&token);
            }
            self.retry(i, now, "connect timed out");
        }
    }

    fn accept(&mut self) {
        loop {
            let Some(l) = self.listener.as_ref() else {
                return;
            };
            match l.accept() {
                Ok((stream, peer)) => self.adopt(stream, format!("tcp:{peer}")),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // E.g. out of descriptors: try again on the next event.
                    tracing::warn!("accept: {e}");
                    return;
                }
            }
        }
    }

    /// Serve an accepted connection.
    fn adopt(&mut self, mut stream: TcpStream, name: String) {
        let _ = stream.set_nodelay(true);
        let token = Token(self.next_token);
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(peer = %name, "cannot serve the connection: {e}");
            return;
        }
        self.next_token += 1;
        let id = self.eng.open(Box::new(stream), name);
        self.slots.insert(token, Slot::Conn(id));
        self.conn_tokens.insert(id, token);
        self.eng.read(id, false);
    }

    /// Forget closed connections; an active one reconnects after its
    /// backoff.
    fn reap(&mut self, now: u64) {
        for c in self.eng.reap() {
            if let Some(t) = self.conn_tokens.remove(&c.id) {
                self.slots.remove(&t);
            }
            if let Some(fd) = c.io.raw_fd() {
                let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
            }
            drop(c.io);
            for a in &mut self.actives {
                if let Link::Up { conn, since } = a.link {
                    if conn == c.id {
                        a.last_error = Some(format!("connection lost: {}", c.reason));
                        a.changed_at = now;
                        let lasted = Duration::from_nanos(now.saturating_sub(since));
                        let d = a.backoff.after(Some(lasted));
                        a.link = Link::Idle {
                            retry_at: now + d.as_nanos() as u64,
                        };
                    }
                }
            }
        }
    }

    fn accept_control(&mut self) {
        loop {
            let Some(l) = self.control.as_ref() else {
                return;
            };
            match l.accept() {
                Ok((mut stream, _)) => {
                    let token = Token(self.next_token);
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                        .is_err()
                    {
                        continue;
                    }
                    self.next_token += 1;
                    self.slots.insert(token, Slot::Control);
                    self.clients.insert(
                        token,
                        Client {
                            stream,
                            input: Vec::new(),
                            out: Vec::new(),
                            eof: false,
                        },
                    );
                    self.control_io(token);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!("control socket accept: {e}");
                    return;
                }
            }
        }
    }

    /// Read requests from a control client, answer them, write replies.
    fn control_io(&mut self, token: Token) {
        let Some(c) = self.clients.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; 4096];
        let mut broken = false;
        while !c.eof {
            match c.stream.read(&mut buf) {
                Ok(0) => c.eof = true,
                Ok(n) => c.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    broken = true;
                    break;
                }
            }
            if c.input.len() > 1 << 20 {
                // No request is that long.
                broken = true;
                break;
            }
        }
        let mut lines = Vec::new();
        while let Some(end) = c.input.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = c.input.drain(..=end).collect();
            lines.push(String::from_utf8_lossy(&line[..end]).into_owned());
        }
        for line in lines {
            let reply = if crate::control::is_status(&line) {
                // The status judges the controller links the loop owns.
                self.eng.drain_samples();
                let scrape = self.scrape();
                serde_json::json!({
                    "ok": crate::status::answer(&scrape, self.eng.drop_log.recent())
                })
                .to_string()
            } else {
                crate::control::answer(&mut self.eng, &mut self.ctl, &line)
            };
            if let Some(c) = self.clients.get_mut(&token) {
                c.out.extend_from_slice(reply.as_bytes());
                c.out.push(b'\n');
            }
        }
        let Some(c) = self.clients.get_mut(&token) else {
            return;
        };
        while !broken && !c.out.is_empty() {
            match c.stream.write(&c.out) {
                Ok(0) => broken = true,
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => broken = true,
            }
        }
        if broken || (c.eof && c.out.is_empty()) {
            if let Some(mut c) = self.clients.remove(&token) {
                let _ = self.poll.registry().deregister(&mut c.stream);
            }
            self.slots.remove(&token);
        }
    }

    fn accept_http(&mut self) {
        loop {
            let Some(l) = self.metrics.as_ref() else {
                return;
            };
            match l.accept() {
                Ok((mut stream, _)) => {
                    let token = Token(self.next_token);
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                        .is_err()
                    {
                        continue;
                    }
                    self.next_token += 1;
                    self.slots.insert(token, Slot::Http);
                    self.http.insert(
                        token,
                        HttpClient {
                            stream,
                            input: Vec::new(),
                            out: Vec::new(),
                            answered: false,
                        },
                    );
                    self.http_io(token);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!("metrics accept: {e}");
                    return;
                }
            }
        }
    }

    /// Read a metrics request, answer it (the counters are read now),
    /// write the answer, close.
    fn http_io(&mut self, token: Token) {
        use crate::metrics::http::{self, Route};
        let Some(c) = self.http.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; 2048];
        let mut done = false;
        while !c.answered {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    done = true;
                    break;
                }
                Ok(n) => c.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    done = true;
                    break;
                }
            }
            if c.input.len() > http::MAX_REQUEST {
                break;
            }
        }
        let route = if c.answered {
            None
        } else {
            http::route(&c.input)
        };
        if let Some(route) = route {
            let reply = match route {
                Route::Metrics => {
                    let body = crate::metrics::render(&self.scrape());
                    http::response(200, http::TEXT_FORMAT, &body)
                }
                Route::Health => http::response(200, "text/plain", "ok\n"),
                Route::Error(code, msg) => http::response(code, "text/plain", &format!("{msg}\n")),
            };
            if let Some(c) = self.http.get_mut(&token) {
                c.out = reply;
                c.answered = true;
            }
        }
        let Some(c) = self.http.get_mut(&token) else {
            return;
        };
        while !done && !c.out.is_empty() {
            match c.stream.write(&c.out) {
                Ok(0) => done = true,
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => done = true,
            }
        }
        if done || (c.answered && c.out.is_empty()) {
            if let Some(mut c) = self.http.remove(&token) {
                let _ = self.poll.registry().deregister(&mut c.stream);
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
            }
            self.slots.remove(&token);
        }
    }

    /// The controllers this loop keeps connections to, and their state.
    pub fn links(&self) -> Vec<crate::metrics::ControllerLink> {
        use crate::metrics::{ControllerLink, LinkState, Role};
        let now = now_ns();
        self.actives
            .iter()
            .map(|a| ControllerLink {
                target: format!("{}:{}", if a.ssl { "ssl" } else { "tcp" }, a.addr),
                role: match &a.link {
                    Link::Up { conn, .. } => self.eng.sw.role_of(*conn).and_then(Role::of),
                    _ => None,
                },
                state: match &a.link {
                    Link::Idle { .. } => LinkState::Backoff,
                    Link::Connecting { .. } => LinkState::Connecting,
                    Link::Up { conn, .. } => {
                        if self.eng.conn(*conn).is_some_and(|c| c.is_up()) {
                            LinkState::Up
                        } else {
                            LinkState::Handshake
                        }
                    }
                },
                connects: a.connects,
                last_error: a.last_error.clone(),
                for_secs: now.saturating_sub(a.changed_at) / 1_000_000_000,
            })
            .collect()
    }

    /// Everything a metrics scrape shows, read now.
    pub fn scrape(&mut self) -> crate::metrics::Scrape {
        let controllers = self.links();
        let passive = self
            .eng
            .conn_ids()
            .filter(|id| {
                !self
                    .actives
                    .iter()
                    .any(|a| matches!(a.link, Link::Up { conn, .. } if conn == *id))
            })
            .count() as u64;
        crate::metrics::Scrape {
            datapath_id: self.eng.sw.settings().datapath_id,
            telemetry: self.eng.dp.telemetry(),
            flows: self.eng.sw.flows.len() as u64,
            subtables: self.eng.sw.flows.rules().n_subtables() as u64,
            switch: self.eng.sw.counters,
            engine: self.eng.stats.clone(),
            controllers,
            passive,
            generation_id: self.eng.sw.generation(),
        }
    }

    /// True when SIGINT or SIGTERM arrived.
    fn signalled(&mut self) -> bool {
        let Some(fd) = &self.signals else {
            return false;
        };
        // SAFETY: signalfd_siginfo is plain old data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and buffer of the right size.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size_of::<libc::signalfd_siginfo>(),
            )
        };
        n == size_of::<libc::signalfd_siginfo>() as isize
    }

    /// Drain rtnetlink; true when a link was added, removed or changed.
    fn link_events(&mut self) -> bool {
        let Some(fd) = &self.netlink else {
            return false;
        };
        let mut buf = vec![0u8; 64 * 1024];
        let mut changed = false;
        loop {
            // SAFETY: valid fd and buffer.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
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
        changed
    }
}

/// Block SIGINT and SIGTERM in this thread and read them from a signalfd.
fn signal_fd() -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain old data, initialised by sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid set pointer and signal numbers.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
    }
    // SAFETY: valid set; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: valid set.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Open a NETLINK_ROUTE socket subscribed to link events.
fn link_events_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
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
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::ConnConfig;
    use crate::engine::tests::{engine_with, hello, lock, Ev, Log};
    use daolinet_openflow::{self as of, Frame, Message};
    use std::time::Instant;

    /// The controller's side over a real socket.
    struct Peer {
        s: std::net::TcpStream,
        buf: Vec<u8>,
    }

    impl Peer {
        fn new(s: std::net::TcpStream) -> Peer {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            Peer { s, buf: Vec::new() }
        }
        fn send(&mut self, xid: u32, m: Message) {
            self.s.write_all(&m.to_bytes(xid).unwrap()).unwrap();
        }
        /// The next message satisfying `f`, within 10 s.
        fn wait(&mut self, f: impl Fn(&Message) -> bool) -> Frame {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                while let Ok(Some((fr, n))) = of::decode(&self.buf) {
                    self.buf.drain(..n);
                    if f(&fr.message) {
                        return fr;
                    }
                }
                assert!(Instant::now() < deadline, "timed out waiting for a message");
                let mut b = [0u8; 65536];
                match self.s.read(&mut b) {
                    Ok(0) => panic!("the agent closed the connection"),
                    Ok(n) => self.buf.extend_from_slice(&b[..n]),
                    Err(_) => {}
                }
            }
        }
        fn handshake(&mut self) {
            self.wait(|m| matches!(m, Message::Hello(_)));
            self.s.write_all(&hello()).unwrap();
            self.send(2, Message::FeaturesRequest);
            self.wait(|m| matches!(m, Message::FeaturesReply(_)));
        }
    }

    fn accept_within(l: &std::net::TcpListener, d: Duration) -> std::net::TcpStream {
        l.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + d;
        loop {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    return s;
                }
                Err(_) => {
                    assert!(Instant::now() < deadline, "the agent did not connect");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    fn net() -> Net {
        Net {
            controllers: Vec::new(),
            tls: None,
            listen: None,
            control: None,
            spin: ReplySpin::micros(200),
            signals: false,
            on_connect: None,
            metrics: None,
            control_ctx: Default::default(),
        }
    }

    #[test]
    fn an_active_connection_comes_back_after_the_controller_drops_it() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let log = Log::default();
        let mut lp = EventLoop::new(
            engine_with(&log, ConnConfig::default()),
            Net {
                controllers: vec![Target {
                    addr: l.local_addr().unwrap(),
                    ssl: false,
                }],
                tls: None,
                ..net()
            },
        )
        .unwrap();
        let stop = lp.stop_handle();
        let t = std::thread::spawn(move || lp.run());
        for round in 0..3 {
            let mut c = Peer::new(accept_within(&l, Duration::from_secs(20)));
            c.handshake();
            c.send(3, Message::EchoRequest(vec![round]));
            c.wait(|m| matches!(m, Message::EchoReply(d) if d == &[round]));
            // Dropped by the controller: the agent reconnects by itself.
        }
        stop.stop();
        t.join().unwrap().unwrap();
    }

    #[test]
    fn the_loop_serves_listener_punts_and_control_socket_on_one_thread() {
        let log = Log::default();
        let eng = engine_with(&log, ConnConfig::default());
        let punter = eng.dp.punter();
        let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listen.local_addr().unwrap();
        let sock = std::env::temp_dir().join(format!("co-rt-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&sock);
        struct Rm(std::path::PathBuf);
        impl Drop for Rm {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let _rm = Rm(sock.clone());
        let control = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let mut lp = EventLoop::new(
            eng,
            Net {
                listen: Some(listen),
                control: Some(control),
                ..net()
            },
        )
        .unwrap();
        let stop = lp.stop_handle();
        let t = std::thread::spawn(move || lp.run());
        let mut c = Peer::new(std::net::TcpStream::connect(addr).unwrap());
        c.handshake();
        let miss = of::FlowMod::add(of::Match::new())
            .priority(0)
            .apply(vec![of::Action::controller(of::OFPCML_NO_BUFFER)]);
        c.send(4, Message::FlowMod(miss));
        c.send(5, Message::BarrierRequest);
        c.wait(|m| matches!(m, Message::BarrierReply));
        // A punt wakes the loop; the PACKET_IN's answer is executed.
        let data = crate::packet::tests::ipv4_frame(17, [10, 0, 0, 1], [10, 0, 0, 2], 7, 53);
        punter.punt(crate::datapath::Punt {
            header: daolinet_common::PuntHeader {
                in_port: 1,
                rule_id: u32::MAX,
                pkt_len: data.len() as u32,
                cap_len: data.len() as u32,
                ..Default::default()
            },
            data: data.clone(),
        });
        let pi = c.wait(|m| matches!(m, Message::PacketIn(_)));
        let Message::PacketIn(pi) = pi.message else {
            unreachable!()
        };
        assert_eq!(pi.data, data);
        c.send(
            6,
            Message::PacketOut(of::PacketOut::new(1, vec![of::Action::output(2)], pi.data)),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !lock(&log).contains(&Ev::Emit(2, data.clone())) {
            assert!(Instant::now() < deadline, "PACKET_OUT not executed");
            std::thread::sleep(Duration::from_millis(5));
        }
        // The control socket, answered by the same loop.
        let mut u = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        u.write_all(b"{\"cmd\":\"status\"}\nnot json\n").unwrap();
        u.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        u.read_to_string(&mut out).unwrap();
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["ok"]["flows"], 1, "{out}");
        assert_eq!(lines[0]["ok"]["controllers"], 1, "{out}");
        assert!(lines[1]["error"]
            .as_str()
            .unwrap()
            .starts_with("bad request"));
        stop.stop();
        t.join().unwrap().unwrap();
    }

    #[test]
    fn reconnect_backoff_doubles_to_a_cap_and_resets_after_a_stable_connection() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..7).map(|_| b.after(None).as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
        // A connection that dropped quickly keeps backing off...
        assert_eq!(b.after(Some(Duration::from_secs(2))), MAX_BACKOFF);
        // ...one that lasted starts over.
        assert_eq!(b.after(Some(Duration::from_secs(30))), MIN_BACKOFF);
        assert_eq!(b.after(None), Duration::from_secs(1));
    }

    #[test]
    fn connection_specs_parse_like_open_vswitch() {
        let tcp = |a: &str| Target {
            addr: a.parse().unwrap(),
            ssl: false,
        };
        assert_eq!(parse_active("tcp:10.0.0.1").unwrap(), tcp("10.0.0.1:6653"));
        assert_eq!(
            parse_active("tcp:10.0.0.1:6633").unwrap(),
            tcp("10.0.0.1:6633")
        );
        assert_eq!(
            parse_active("ssl:10.0.0.1:6653").unwrap(),
            Target {
                addr: "10.0.0.1:6653".parse().unwrap(),
                ssl: true
            }
        );
        assert!(parse_active("udp:10.0.0.1:6653").is_err());
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
