//! The running agent: datapath + OpenFlow switch + ports + controller
//! connections, and the control socket protocol (one JSON request per
//! line, one JSON reply per line).
//!
//! [`Agent`] is the glue between the sans-IO [`Switch`] and the I/O:
//! it applies [`Effects`] (map operations, frames to transmit, messages to
//! connections) and reads counters from the maps.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};
use bytes::BytesMut;
use daolinet_common::{PortKind, PortStats, RuleStats};
use daolinet_openflow::{self as of, FlowMod, Frame, Message};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::datapath::{Datapath, UplinkMode};
use crate::inject::{Injector, LocalPort};
use crate::ofswitch::{ConnId, Effects, PortDesc, Switch};
use crate::oftable::Counters;

/// A request on `<state-dir>/agent.sock`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// List ports with counters.
    Ports,
    /// Attach a container port.
    PortAdd {
        /// Interface name.
        iface: String,
        /// OpenFlow port number (next free when absent).
        ofport: Option<u32>,
    },
    /// Detach a port.
    PortDel {
        /// Interface name.
        iface: String,
    },
    /// Install a rule given in ovs-ofctl flow syntax (OpenFlow add semantics).
    RuleAdd {
        /// E.g. `priority=100,in_port=1,ip,nw_dst=10.0.0.2 actions=output:2`.
        flow: String,
    },
    /// Remove the rules whose cookie matches.
    RuleDel {
        /// Cookie value.
        cookie: u64,
        /// Cookie mask (all ones when absent).
        mask: Option<u64>,
    },
    /// Dump rules with counters, like `ovs-ofctl dump-flows`.
    Flows,
    /// Switch counters (PACKET_IN, rate limiting, PACKET_OUT, errors...).
    Status,
}

/// Monotonic clock in nanoseconds (the clock of `bpf_ktime_get_ns`).
/// Tracing target of the per-packet timing events (TRACE level, off unless
/// asked for, e.g. `RUST_LOG=warn,daolinet_agent::latency=trace`): how
/// long a punt waited in the ring before the agent read it, how long the
/// agent took to handle it (build the PACKET_IN) and to write it (the
/// system call, which on loopback also runs the receiver's TCP input);
/// and for a lone PACKET_OUT, from reading it to having handled it, and
/// the AF_PACKET send.
pub const LATENCY: &str = "daolinet_agent::latency";

/// CLOCK_MONOTONIC in nanoseconds (the clock of `bpf_ktime_get_ns`).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// Counters read from the BPF maps.
struct MapCounters<'a>(&'a mut Datapath);

impl Counters for MapCounters<'_> {
    fn rule(&mut self, id: u32) -> RuleStats {
        self.0.rule_stats(id).unwrap_or_default()
    }
    fn port(&mut self, ofport: u32) -> Option<PortStats> {
        self.0.ofport_stats(ofport)
    }
}

/// Messages queued per connection before it counts as stuck and is closed.
pub const CONN_QUEUE: usize = 4096;

/// The sending side of a controller connection.
///
/// Messages are written straight to the (non-blocking) socket while nothing
/// is queued, which keeps PACKET_IN latency to one system call; whatever
/// the socket does not take goes to the connection's writer task, and
/// everything after it too until the queue is empty again, so the order
/// is kept.
pub struct ConnOut {
    /// Queue to the writer task.
    pub tx: mpsc::Sender<Vec<u8>>,
    /// A non-blocking duplicate of the connection's socket.
    pub sock: Option<std::net::TcpStream>,
    /// Buffers handed to the writer task and not yet written.
    pub queued: Arc<std::sync::atomic::AtomicUsize>,
    /// The reading side, for the punt reader's reply spin.
    pub input: Option<crate::runtime::ConnInput>,
}

/// The agent state shared by the control socket, the controller
/// connections, the punt reader and the timers.
pub struct Agent {
    /// The loaded datapath.
    pub dp: Datapath,
    /// The OpenFlow switch (flow table, sessions, ports).
    pub sw: Switch,
    /// Uplink attach mode.
    pub uplink_mode: UplinkMode,
    /// Sends frames on ports (PACKET_OUT, ARP replies).
    pub injector: Option<Injector>,
    /// Hands frames sent to OFPP_LOCAL to the host stack (see [`LocalPort`]).
    pub local: Option<LocalPort>,
    /// Write queues of the controller connections.
    conns: HashMap<ConnId, ConnOut>,
    /// ifindex and kind by OpenFlow port.
    ifindex: HashMap<u32, (u32, String)>,
    /// Punt timings (ring wait, wake-up to read, handling, write; ns) not yet logged: they
    /// are logged from the timer, off the path of the next packet.
    punt_timings: Vec<[u64; 4]>,
    /// Connections sent a PACKET_IN since [`Agent::take_awaiting`] was
    /// last called: their answers are expected.
    awaiting: Vec<ConnId>,
}

/// At most this many punt timings wait for the timer; more are dropped.
const MAX_TIMINGS: usize = 4096;

/// Read an interface's MAC address and whether it is running.
pub fn iface_info(name: &str) -> (Option<[u8; 6]>, bool) {
    // SAFETY: a plain datagram socket used only for ioctls, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return (None, false);
    }
    // SAFETY: ifreq is plain old data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s as libc::c_char;
    }
    // SAFETY: valid fd and ifreq.
    let mac = (unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) } == 0).then(|| {
        // SAFETY: the kernel filled ifru_hwaddr.
        let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
        let mut m = [0u8; 6];
        for (d, s) in m.iter_mut().zip(sa.sa_data.iter()) {
            *d = *s as u8;
        }
        m
    });
    // SAFETY: valid fd and ifreq.
    let up = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) } == 0
        // SAFETY: the kernel filled ifru_flags.
        && (unsafe { req.ifr_ifru.ifru_flags } as libc::c_int & libc::IFF_RUNNING) != 0;
    // SAFETY: we own fd.
    unsafe { libc::close(fd) };
    (mac, up)
}

impl Agent {
    /// An agent over a loaded datapath and a switch.
    pub fn new(dp: Datapath, sw: Switch, uplink_mode: UplinkMode) -> Self {
        let injector = match Injector::new() {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!("no AF_PACKET socket, PACKET_OUT disabled: {e:#}");
                None
            }
        };
        let local = match LocalPort::new() {
            Ok(l) => {
                tracing::info!(device = l.name(), "host-stack port for output to LOCAL");
                Some(l)
            }
            Err(e) => {
                tracing::warn!(
                    "no TAP device, frames sent to LOCAL from userspace (PACKET_OUT) are dropped: {e}"
                );
                None
            }
        };
        Agent {
            dp,
            sw,
            uplink_mode,
            injector,
            local,
            conns: HashMap::new(),
            ifindex: HashMap::new(),
            punt_timings: Vec::new(),
            awaiting: Vec::new(),
        }
    }

    /// Attach a port; `ofport` defaults to the next free number below the
    /// uplink's. Announced to controllers with PORT_STATUS.
    pub fn add_port(&mut self, iface: &str, ofport: Option<u32>, kind: PortKind) -> Result<u32> {
        let ofport = match ofport {
            Some(p) => p,
            None => {
                self.dp
                    .ports()?
                    .iter()
                    .map(|p| p.ofport)
                    .filter(|p| *p < crate::DEFAULT_UPLINK_OFPORT)
                    .max()
                    .unwrap_or(0)
                    + 1
            }
        };
        if ofport == 0 || ofport > of::OFPP_MAX {
            anyhow::bail!("OpenFlow port number {ofport} is out of range (1..=0xffffff00)");
        }
        self.dp.attach_port(iface, ofport, kind, self.uplink_mode)?;
        let ifindex = crate::datapath::ifindex(iface)?;
        self.ifindex.insert(ofport, (ifindex, iface.to_string()));
        let (mac, up) = iface_info(iface);
        let fx = self.sw.port_added(
            PortDesc {
                ofport,
                name: iface.to_string(),
                mac: mac.unwrap_or_default(),
                up,
            },
            now_ns(),
        );
        self.apply(fx);
        tracing::info!(iface, ofport, ?kind, "port attached");
        Ok(ofport)
    }

    /// Detach a port by interface name.
    pub fn del_port(&mut self, iface: &str) -> Result<()> {
        self.dp.detach_port(iface)?;
        let gone: Vec<u32> = self
            .ifindex
            .iter()
            .filter(|(_, (_, n))| n == iface)
            .map(|(p, _)| *p)
            .collect();
        for p in gone {
            self.ifindex.remove(&p);
            let fx = self.sw.port_removed(p);
            self.apply(fx);
        }
        tracing::info!(iface, "port detached");
        Ok(())
    }

    /// Notice ports whose interface vanished or changed link state.
    pub fn check_ports(&mut self) {
        let list: Vec<(u32, u32, String)> = self
            .ifindex
            .iter()
            .map(|(p, (i, n))| (*p, *i, n.clone()))
            .collect();
        for (ofport, ifindex, name) in list {
            match crate::datapath::ifindex(&name) {
                Ok(i) if i == ifindex => {
                    let (mac, up) = iface_info(&name);
                    let fx = self.sw.port_modified(PortDesc {
                        ofport,
                        name,
                        mac: mac.unwrap_or_default(),
                        up,
                    });
                    self.apply(fx);
                }
                _ => {
                    tracing::info!(iface = %name, ofport, "interface gone: port removed");
                    let _ = self.del_port(&name);
                }
            }
        }
    }

    /// Apply effects: map operations first, then frames, then messages.
    pub fn apply(&mut self, fx: Effects) {
        if !fx.ops.is_empty() {
            if let Err(e) = self.dp.apply_batched(&fx.ops) {
                tracing::error!("writing the datapath maps: {e:#}");
            }
        }
        for (port, frame) in fx.emit {
            if port == of::OFPP_LOCAL {
                match &self.local {
                    Some(l) => {
                        if let Err(e) = l.send(&frame) {
                            tracing::debug!("to the host stack (LOCAL) failed: {e}");
                        }
                    }
                    None => tracing::debug!("no host-stack port: frame to LOCAL dropped"),
                }
                continue;
            }
            match (self.ifindex.get(&port), &self.injector) {
                (Some((ifindex, _)), Some(inj)) => {
                    if let Err(e) = inj.send(*ifindex, &frame) {
                        tracing::debug!(port, "transmit failed: {e}");
                    }
                }
                (None, _) => tracing::warn!(
                    port,
                    "output to a port the switch does not have: frame dropped"
                ),
                (Some(_), None) => tracing::debug!(port, "no AF_PACKET socket: frame dropped"),
            }
        }
        for (conn, xid, msg) in fx.send {
            self.send(conn, xid, &msg);
        }
        for conn in fx.close {
            // Dropping the queue ends the writer, which closes the socket.
            self.conns.remove(&conn);
        }
    }

    /// Queue a message to a connection; a connection whose queue is full is
    /// closed (a controller that does not read must not make us grow).
    pub fn send(&mut self, conn: ConnId, xid: u32, msg: &Message) {
        let mut b = BytesMut::new();
        if let Err(e) = of::encode(msg, xid, &mut b) {
            tracing::warn!("not sent: {e}");
            return;
        }
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if matches!(msg, Message::PacketIn(_)) && !self.awaiting.contains(&conn) {
            self.awaiting.push(conn);
        }
        let mut bytes = b.to_vec();
        if c.queued.load(std::sync::atomic::Ordering::Acquire) == 0 {
            if let Some(mut sock) = c.sock.as_ref() {
                match sock.write(&bytes) {
                    Ok(n) if n == bytes.len() => return,
                    Ok(n) => {
                        bytes.drain(..n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        self.conns.remove(&conn);
                        return;
                    }
                }
            }
        }
        c.queued.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if let Err(e) = c.tx.try_send(bytes) {
            if matches!(e, mpsc::error::TrySendError::Full(_)) {
                tracing::warn!(conn, "controller does not read its messages: closing");
            }
            self.conns.remove(&conn);
        }
    }

    /// A controller connection opened: register its queue, say HELLO.
    pub fn conn_open(&mut self, conn: ConnId, out: ConnOut) {
        self.conns.insert(conn, out);
        let fx = self.sw.connected(conn);
        self.apply(fx);
    }

    /// The connections sent a PACKET_IN since the last call, with their
    /// reading sides (see [`crate::runtime::punt_reader`]).
    pub fn take_awaiting(&mut self) -> Vec<(ConnId, crate::runtime::ConnInput)> {
        let conns = &self.conns;
        self.awaiting
            .drain(..)
            .filter_map(|id| Some((id, conns.get(&id)?.input.clone()?)))
            .collect()
    }

    /// Stop serving a connection (its stream cannot be decoded any more):
    /// its queue is dropped, which ends its writer and then its task.
    pub fn conn_drop(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
    }

    /// True while the connection may be used (not closed by the switch).
    pub fn conn_alive(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// A controller connection closed.
    pub fn conn_closed(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
        self.sw.disconnected(conn);
    }

    /// A message from a controller.
    pub fn conn_frame(&mut self, conn: ConnId, frame: Frame, raw: &[u8]) {
        let Agent { dp, sw, .. } = self;
        let fx = sw.handle(conn, frame, raw, now_ns(), &mut MapCounters(dp));
        self.apply(fx);
    }

    /// Several messages from a controller, received together: handled in
    /// order, their map operations written together (batched), then their
    /// replies sent. Every reply still follows the map writes of the
    /// messages before it, so BARRIER keeps its meaning.
    ///
    /// Returns when (CLOCK_MONOTONIC, ns) the frames were handled and their
    /// effects (map writes, frames to send, replies) began to be applied.
    pub fn conn_frames(&mut self, conn: ConnId, frames: Vec<(Frame, bytes::Bytes)>) -> u64 {
        let mut all = Effects::default();
        let now = now_ns();
        for (frame, raw) in frames {
            let Agent { dp, sw, .. } = self;
            all.extend(sw.handle(conn, frame, &raw, now, &mut MapCounters(dp)));
        }
        let handled = now_ns();
        self.apply(all);
        handled
    }

    /// Drain the punt ring: ARP responder, PACKET_IN, standalone learning.
    pub fn drain_punts(&mut self) {
        self.drain_punts_woken(0);
    }

    /// [`Agent::drain_punts`] for a reader that woke up at `woke`
    /// (CLOCK_MONOTONIC, ns; 0 if unknown), for the timings.
    pub fn drain_punts_woken(&mut self, woke: u64) {
        let punts = match self.dp.punts() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("reading punts: {e:#}");
                return;
            }
        };
        let read_at = now_ns();
        let timed = tracing::enabled!(target: LATENCY, tracing::Level::TRACE);
        for p in punts {
            match p {
                Ok(p) => {
                    let punted = p.header.timestamp_ns;
                    let Agent { dp, sw, .. } = self;
                    let fx = sw.punt(p, read_at, &mut MapCounters(dp));
                    let handled = if timed { now_ns() } else { 0 };
                    self.apply(fx);
                    if timed && self.punt_timings.len() < MAX_TIMINGS {
                        // Both clocks are CLOCK_MONOTONIC (bpf_ktime_get_ns).
                        self.punt_timings.push([
                            read_at.saturating_sub(punted),
                            if woke == 0 {
                                0
                            } else {
                                read_at.saturating_sub(woke)
                            },
                            handled.saturating_sub(read_at),
                            now_ns().saturating_sub(handled),
                        ]);
                    }
                }
                Err(e) => tracing::warn!("bad punt record: {e:#}"),
            }
        }
    }

    /// The punt timings gathered since the last call, to log with
    /// [`Agent::log_timings`] once the agent lock is released (writing them takes
    /// system calls that a punt must not wait for).
    pub fn take_timings(&mut self) -> Vec<[u64; 4]> {
        std::mem::take(&mut self.punt_timings)
    }

    /// Log punt timings (see [`LATENCY`], [`Agent::take_timings`]).
    pub fn log_timings(timings: Vec<[u64; 4]>) {
        for [to_read, woke_to_read, handle, write] in timings {
            tracing::trace!(
                target: LATENCY,
                punt_to_read_ns = to_read,
                woke_to_read_ns = woke_to_read,
                handle_ns = handle,
                write_ns = write,
                "punt handled"
            );
        }
    }

    /// Timers: flow expiry.
    pub fn tick(&mut self) {
        let Agent { dp, sw, .. } = self;
        let fx = sw.tick(now_ns(), &mut MapCounters(dp));
        self.apply(fx);
    }

    /// Apply a FLOW_MOD given locally; returns how many flows it touched.
    pub fn local_flow_mod(&mut self, fm: &FlowMod) -> Result<usize> {
        let Agent { dp, sw, .. } = self;
        let (n, fx) = sw
            .local_flow_mod(fm, now_ns(), &mut MapCounters(dp))
            .map_err(|c| anyhow!("flow refused: {c}"))?;
        self.apply(fx);
        Ok(n)
    }

    /// The flow dump, one line per flow, like `ovs-ofctl dump-flows`.
    pub fn dump_flows(&mut self) -> Result<Vec<String>> {
        let req = of::FlowStatsRequest::default();
        let Agent { dp, sw, .. } = self;
        let list = sw
            .flows
            .flow_stats(&req, now_ns(), &mut MapCounters(dp))
            .map_err(|c| anyhow!("{c}"))?;
        Ok(list.iter().map(|f| f.to_string()).collect())
    }

    fn handle(&mut self, req: Request) -> Result<serde_json::Value> {
        Ok(match req {
            Request::Ports => serde_json::to_value(self.dp.ports()?)?,
            Request::PortAdd { iface, ofport } => {
                let p = self.add_port(&iface, ofport, PortKind::Container)?;
                serde_json::json!({ "ofport": p })
            }
            Request::PortDel { iface } => {
                self.del_port(&iface)?;
                serde_json::json!({ "removed": iface })
            }
            Request::RuleAdd { flow } => {
                let fm: FlowMod = flow
                    .parse()
                    .map_err(|e| anyhow!("bad flow {flow:?}: {e}"))?;
                if fm.command != of::OFPFC_ADD {
                    anyhow::bail!("rule add takes a flow to add");
                }
                self.local_flow_mod(&fm)?;
                serde_json::json!({ "added": 1 })
            }
            Request::RuleDel { cookie, mask } => {
                let fm = FlowMod::delete(of::Match::new())
                    .cookie_match(cookie, mask.unwrap_or(u64::MAX));
                let n = self.local_flow_mod(&fm)?;
                serde_json::json!({ "removed": n })
            }
            Request::Flows => serde_json::to_value(self.dump_flows()?)?,
            Request::Status => serde_json::json!({
                "flows": self.sw.flows.len(),
                "controllers": self.conns.len(),
                "counters": self.sw.counters,
            }),
        })
    }
}

/// Serve the control socket until the process exits (one thread per client).
pub fn serve(listener: UnixListener, agent: Arc<Mutex<Agent>>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let agent = agent.clone();
        std::thread::spawn(move || {
            if let Err(e) = client(conn, agent) {
                tracing::debug!("control client: {e:#}");
            }
        });
    }
}

fn client(conn: UnixStream, agent: Arc<Mutex<Agent>>) -> Result<()> {
    let mut w = conn.try_clone()?;
    for line in BufReader::new(conn).lines() {
        let line = line?;
        let reply = match serde_json::from_str::<Request>(&line) {
            Err(e) => serde_json::json!({ "error": format!("bad request: {e}") }),
            Ok(req) => {
                let mut a = agent.lock().map_err(|_| anyhow!("agent state poisoned"))?;
                match a.handle(req) {
                    Ok(v) => serde_json::json!({ "ok": v }),
                    Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
                }
            }
        };
        writeln!(w, "{reply}")?;
    }
    Ok(())
}

/// Send one request to a running agent and return its `ok` value.
pub fn request(state_dir: &Path, req: &Request) -> Result<serde_json::Value> {
    let path = state_dir.join("agent.sock");
    let mut s = UnixStream::connect(&path).with_context(|| {
        format!(
            "cannot reach the agent at {} (is `daolinet-agent run` running with this --state-dir?)",
            path.display()
        )
    })?;
    writeln!(s, "{}", serde_json::to_string(req)?)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let v: serde_json::Value = serde_json::from_str(&line).context("bad reply from the agent")?;
    if let Some(e) = v.get("error") {
        return Err(anyhow!("{}", e.as_str().unwrap_or("agent error")));
    }
    Ok(v.get("ok").cloned().unwrap_or(serde_json::Value::Null))
}
