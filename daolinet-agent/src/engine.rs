//! The single owner of the switch: the OpenFlow [`Switch`], the
//! [`Dataplane`] it programs, and every OpenFlow connection ([`Conn`] plus
//! its [`Transport`]). One thread drives it ([`crate::runtime`]); the punt
//! fast path ([`crate::fastpath`]) is handed it, so there is one reader and
//! one writer per connection and no lock anywhere.
//!
//! Ordering: the messages of a connection are handled in the order they
//! arrived, whoever reads them (the event loop, or the fast path waiting
//! for a PACKET_IN's answer). The messages of one read are handled
//! together: their map operations are written first (batched), then their
//! frames are sent, then their replies queued. So every reply, a
//! BARRIER_REPLY in particular, follows the datapath writes of every
//! message before it.
//!
//! The engine is generic over the dataplane, so the whole OpenFlow side is
//! tested without root against a fake ([`tests`]).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::RawFd;

use anyhow::{anyhow, Result};
use daolinet_common::PortKind;
use daolinet_openflow::ext::Ext;
use daolinet_openflow::{self as of, FlowMod, Message};

use crate::conn::{CloseReason, Conn, ConnConfig, Input};
use crate::datapath::Punt;
use crate::ofswitch::{ConnId, Effects, PortDesc, Switch};
use crate::oftable::{self, Counters};
use crate::table::MapOp;

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

/// The byte stream under an OpenFlow connection: a non-blocking TCP
/// socket, or anything that behaves like one (a TLS session over it, an
/// in-memory pipe in tests).
///
/// `read` and `write` follow non-blocking socket semantics: `WouldBlock`
/// when nothing can be done now, `Ok(0)` from `read` at end of stream. A
/// read that returns less than the buffer it was given means nothing more
/// is waiting: the event loop waits for the next readiness event then
/// (edge-triggered epoll signals every arrival), so a transport that
/// buffers internally (TLS) must fill the buffer while it has data.
pub trait Transport: Read + Write + Send {
    /// The descriptor the event loop waits on (None: not pollable, e.g. a
    /// test pipe driven by hand).
    fn raw_fd(&self) -> Option<RawFd>;
}

/// The only (MAC, IPv4) source a container port may send from.
pub type Source = ([u8; 6], [u8; 4]);

/// What a port check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortCheck {
    /// The interface is there (its current description).
    Present(PortDesc),
    /// The interface of this name is gone.
    Gone(String),
}

/// The datapath side of the switch, as the engine needs it: the real one
/// is [`crate::host::Host`] (BPF maps, AF_PACKET, TAP); tests use a fake.
pub trait Dataplane: Counters {
    /// Apply map operations, in order (errors are the dataplane's to log:
    /// the switch's table stays authoritative).
    fn apply(&mut self, ops: &[MapOp]);
    /// Start writing `ops` (the map operations of a run's FLOW_MODs so
    /// far, none of them written) and return while they are written, if
    /// the dataplane can: `ops` is then emptied, and the next
    /// [`Dataplane::try_apply`] waits for them and fails if they did.
    /// Otherwise `ops` is left as it is.
    fn write_ahead(&mut self, _ops: &mut Vec<MapOp>) {}
    /// Apply map operations in order, stopping at the first that fails:
    /// those before it are applied, it and those after it are not (or
    /// left as they were). For FLOW_MODs, which are then taken back.
    /// Operations written ahead come first: if they failed, none of
    /// `ops` is applied.
    fn try_apply(&mut self, ops: &[MapOp]) -> std::result::Result<(), ApplyError> {
        self.apply(ops);
        Ok(())
    }
    /// Move the punted packets waiting into `out`.
    fn punts(&mut self, out: &mut Vec<Punt>);
    /// A descriptor that becomes readable when punts wait.
    fn punt_fd(&self) -> Option<RawFd>;
    /// A second descriptor that becomes readable when punts wait (the
    /// punt bell, [`crate::bell`]), if any.
    fn punt_bell_fd(&self) -> Option<RawFd> {
        None
    }
    /// Quiet [`Dataplane::punt_bell_fd`]; look at the punts again after.
    fn clear_punt_bell(&mut self) {}
    /// Transmit a frame on an OpenFlow port, or hand it to the host stack
    /// (`OFPP_LOCAL`).
    fn emit(&mut self, port: u32, frame: &[u8]);
    /// Attach interface `iface` as OpenFlow port `ofport` (next free number
    /// when `None`).
    fn attach(&mut self, iface: &str, ofport: Option<u32>, kind: PortKind) -> Result<PortDesc>;
    /// Detach interface `iface`; the OpenFlow ports it had.
    fn detach(&mut self, iface: &str) -> Result<Vec<u32>>;
    /// Look at every port's interface again (gone, link state, MAC).
    fn check_ports(&mut self) -> Vec<PortCheck>;
    /// The ports with their counters, for the control socket.
    fn port_list(&mut self) -> Result<serde_json::Value>;
    /// What the metrics and the status show of the dataplane, read now.
    fn telemetry(&mut self) -> crate::metrics::Telemetry {
        crate::metrics::Telemetry::default()
    }
    /// Move the sampled drops waiting into `out`.
    fn drop_samples(&mut self, _out: &mut Vec<crate::dpstats::Dropped>) {}
    /// A descriptor that becomes readable when drop samples wait.
    fn sample_fd(&self) -> Option<RawFd> {
        None
    }
    /// Anti-spoofing on container port `ofport`: the only (MAC, IPv4)
    /// source it may send from, or `None` for no check.
    fn set_port_source(&mut self, ofport: u32, _source: Option<([u8; 6], [u8; 4])>) -> Result<()> {
        Err(anyhow!(
            "port {ofport}: this dataplane has no anti-spoofing"
        ))
    }
}

/// Why map operations failed ([`Dataplane::try_apply`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApplyError {
    /// A map had no room (full, or no memory for a new element).
    pub no_room: bool,
    /// What failed, for the log.
    pub message: String,
}

/// A run of adds and modifies of one read, applied as one transaction.
struct Run {
    /// Where its replies start in the effects.
    send_from: usize,
    /// The switch's counters before it.
    counters: crate::ofswitch::SwitchCounters,
    /// Its FLOW_MODs as received, to do again one by one.
    messages: Vec<bytes::Bytes>,
}

/// One connection: the state machine and its byte stream.
struct Peer {
    conn: Conn,
    io: Box<dyn Transport>,
    name: String,
    /// Reading stopped because the connection was congested.
    paused: bool,
    /// Output is waiting for the transport to take it.
    blocked: bool,
    /// Messages received after one whose multipart answer is still being
    /// produced ([`Switch::has_job`]): handled when it is done.
    deferred: Vec<Input>,
}

/// Output queued on a connection below which the next step of a
/// multipart answer is produced ([`Engine::pump`]).
const JOB_LOW_WATER: usize = 1 << 20;

/// A closed connection taken out of the engine (see [`Engine::reap`]).
pub struct Closed {
    /// Its id.
    pub id: ConnId,
    /// Its transport, to deregister and drop.
    pub io: Box<dyn Transport>,
    /// Why.
    pub reason: CloseReason,
}

/// What reading a connection gave.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadOutcome {
    /// Bytes received.
    pub bytes: usize,
    /// A PACKET_OUT was among the messages handled.
    pub packet_out: bool,
    /// The connection is closed (or gone).
    pub closed: bool,
}

/// After a change that removed at least this many classifier entries, the
/// memory the flow table freed is handed back to the kernel (once the
/// replies are written).
const TRIM_AFTER_REMOVALS: usize = 4096;

pub use crate::heap::give_back_memory;

/// At most this many punt timings wait to be logged; more are dropped.
const MAX_TIMINGS: usize = 4096;

/// A run's map operations are handed to [`Dataplane::write_ahead`] once
/// this many are waiting: parts small enough that the table's work and the
/// kernel's overlap through most of a read, large enough that the hand-off
/// costs little beside the write.
const WRITE_AHEAD: usize = 128;

/// Read buffer size per read system call. A read's FLOW_MODs are one run
/// (see `end_run`), whose end waits for the writes ahead: 256 KiB (about
/// 2,500 adds) leaves less of a bulk install unoverlapped than 64 KiB did
/// (`delete_path` example, `DL_INSTALL=ahead`: 600-810k vs 530-660k
/// flows/s at 100k). The buffer's pages are touched only by such reads.
const READ_CHUNK: usize = 256 * 1024;

/// The switch and its connections (see the module documentation).
pub struct Engine<D> {
    /// The dataplane.
    pub dp: D,
    /// The OpenFlow switch (flow table, sessions, ports).
    pub sw: Switch,
    cfg: ConnConfig,
    peers: BTreeMap<ConnId, Peer>,
    next_id: ConnId,
    /// Connections with new output since the last flush.
    dirty: Vec<ConnId>,
    /// Connections sent a PACKET_IN whose answer is expected.
    awaiting: Vec<ConnId>,
    /// Paused connections that may be read again.
    resumed: Vec<ConnId>,
    inputs: Vec<Input>,
    punts: Vec<Punt>,
    scratch: Vec<u8>,
    /// Punt timings not yet logged: ring wait, wake-up to read, handling,
    /// write (ns).
    timings: Vec<[u64; 4]>,
    /// Counters for the metrics.
    pub stats: crate::metrics::EngineStats,
    /// The last sampled drops.
    pub drop_log: crate::dropwatch::DropLog,
    /// The container ports' sources the controller gave (anti-spoofing),
    /// by OpenFlow port: applied to a port attached later too.
    sources: BTreeMap<u32, Source>,
    /// A bulk removal freed memory: it is handed back once the replies
    /// are written ([`Engine::flush_dirty`]).
    trim: bool,
}

impl<D: Dataplane> Engine<D> {
    /// An engine over a dataplane and a switch; connections get `cfg`.
    pub fn new(dp: D, sw: Switch, cfg: ConnConfig) -> Self {
        Engine {
            dp,
            sw,
            cfg,
            peers: BTreeMap::new(),
            next_id: 1,
            dirty: Vec::new(),
            awaiting: Vec::new(),
            resumed: Vec::new(),
            inputs: Vec::new(),
            punts: Vec::new(),
            scratch: vec![0; READ_CHUNK],
            timings: Vec::new(),
            stats: Default::default(),
            drop_log: Default::default(),
            sources: BTreeMap::new(),
            trim: false,
        }
    }

    /// A new connection over `io` (already connected): HELLO goes out at
    /// once. Returns its id.
    pub fn open(&mut self, io: Box<dyn Transport>, name: String) -> ConnId {
        let id = self.next_id;
        self.next_id += 1;
        tracing::info!(conn = id, peer = %name, "OpenFlow connection up");
        self.peers.insert(
            id,
            Peer {
                conn: Conn::new(self.cfg, now_ns()),
                io,
                name,
                paused: false,
                blocked: false,
                deferred: Vec::new(),
            },
        );
        self.flush(id);
        id
    }

    /// Connections, by id.
    pub fn conn_ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.peers.keys().copied()
    }

    /// Number of connections that completed their handshake.
    pub fn controllers(&self) -> usize {
        self.peers.values().filter(|p| p.conn.is_up()).count()
    }

    /// The connection's state machine, if it exists.
    pub fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.peers.get(&id).map(|p| &p.conn)
    }

    /// The transport's descriptor.
    pub fn raw_fd(&self, id: ConnId) -> Option<RawFd> {
        self.peers.get(&id).and_then(|p| p.io.raw_fd())
    }

    /// Read connection `id` until nothing more waits (or it is congested),
    /// handling what arrives; `spun` says the fast path reads it (for the
    /// timings).
    pub fn read(&mut self, id: ConnId, spun: bool) -> ReadOutcome {
        let mut out = ReadOutcome::default();
        loop {
            let Some(p) = self.peers.get_mut(&id) else {
                out.closed = true;
                break;
            };
            if p.conn.is_closed() {
                out.closed = true;
                break;
            }
            if !p.conn.wants_read() || !p.deferred.is_empty() || self.sw.has_job(id) {
                p.paused = true;
                break;
            }
            match p.io.read(&mut self.scratch) {
                Ok(0) => {
                    p.conn.close(CloseReason::PeerClosed);
                    out.closed = true;
                    break;
                }
                Ok(n) => {
                    let at = now_ns();
                    out.bytes += n;
                    p.conn.receive(&self.scratch[..n], at, &mut self.inputs);
                    out.packet_out |= self.handle(id, at, spun);
                    self.flush(id);
                    self.flush_dirty();
                    if self.peers.get(&id).is_none_or(|p| p.conn.is_closed()) {
                        out.closed = true;
                        break;
                    }
                    if n < self.scratch.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    p.conn.close(CloseReason::Io(e.to_string()));
                    out.closed = true;
                    break;
                }
            }
        }
        out
    }

    /// Hand what connection `id` received to the switch: all of it, then
    /// its effects applied at once. True if a PACKET_OUT was among it.
    fn handle(&mut self, id: ConnId, read_at: u64, spun: bool) -> bool {
        if self.inputs.is_empty() {
            return false;
        }
        let mut fx = Effects::default();
        let (mut packet_outs, mut n) = (0usize, 0usize);
        let mut run: Option<Run> = None;
        // Drained, not consumed: the vector keeps its room for the next
        // read (no allocation per read).
        let mut taken = std::mem::take(&mut self.inputs);
        let mut inputs = taken.drain(..);
        while let Some(input) = inputs.next() {
            if self.sw.has_job(id) {
                // A multipart answer is being produced: what came after it
                // waits, so that its replies follow the answer.
                if let Some(p) = self.peers.get_mut(&id) {
                    p.deferred.push(input);
                    p.deferred.extend(inputs.by_ref());
                }
                break;
            }
            // Adds and modifies in a row are applied together, as one
            // transaction of the flow table (see `end_run`).
            let journaled = matches!(&input,
                Input::Message(f, _) if matches!(&f.message, Message::FlowMod(fm) if oftable::journaled(fm)));
            match (&mut run, journaled) {
                (None, true) => {
                    self.apply_ops(&std::mem::take(&mut fx.ops));
                    self.sw.flows.begin();
                    run = Some(Run {
                        send_from: fx.send.len(),
                        counters: self.sw.counters,
                        messages: Vec::new(),
                    });
                }
                (Some(_), false) => self.end_run(id, run.take(), &mut fx, read_at),
                _ => {}
            }
            if let (Some(r), Input::Message(_, raw)) = (&mut run, &input) {
                r.messages.push(raw.clone());
            }
            match input {
                Input::Up => fx.extend(self.sw.connected(id, read_at, &mut self.dp)),
                Input::Reply(xid, msg) => fx.send.push((id, xid, msg)),
                Input::Message(frame, raw) => {
                    n += 1;
                    packet_outs += usize::from(matches!(frame.message, Message::PacketOut(_)));
                    let features = matches!(frame.message, Message::FeaturesRequest);
                    if let Message::Experimenter(e) = &frame.message {
                        if let Ok(Ext::PortSources(v)) = Ext::from_message(e) {
                            self.set_sources(&v);
                            continue;
                        }
                    }
                    fx.extend(self.sw.handle(id, frame, &raw, read_at, &mut self.dp));
                    if run.is_some() && fx.ops.len() >= WRITE_AHEAD {
                        // Written while the next FLOW_MODs are handled;
                        // `end_run` waits for it.
                        self.dp.write_ahead(&mut fx.ops);
                    }
                    if features {
                        // Right after the FEATURES_REPLY: the controller
                        // knows the datapath when it reads this.
                        fx.send
                            .push((id, 0, Message::Experimenter(Ext::AgentHello.to_message())));
                    }
                }
            }
        }
        drop(inputs);
        if self.inputs.is_empty() {
            self.inputs = taken;
        }
        self.end_run(id, run, &mut fx, read_at);
        let timed =
            n == 1 && packet_outs == 1 && tracing::enabled!(target: LATENCY, tracing::Level::TRACE);
        let handled = if timed { now_ns() } else { 0 };
        self.apply(fx);
        if timed {
            tracing::trace!(
                target: LATENCY,
                packet_out_handle_ns = handled.saturating_sub(read_at),
                packet_out_send_ns = now_ns().saturating_sub(handled),
                spun,
                "PACKET_OUT handled"
            );
        }
        packet_outs > 0
    }

    /// Write map operations (errors are the dataplane's to log).
    fn apply_ops(&mut self, ops: &[MapOp]) {
        if ops.is_empty() {
            return;
        }
        self.dp.apply(ops);
        let removed: usize = ops
            .iter()
            .map(|o| match o {
                MapOp::DelFlow(_) => 1,
                MapOp::DrainFlows(d) => d.len(),
                _ => 0,
            })
            .sum();
        if removed >= TRIM_AFTER_REMOVALS {
            self.trim = true;
        }
    }

    /// End a run of adds and modifies from connection `id` (their map
    /// operations are `fx.ops`, or what is left of them after the parts
    /// written ahead): write them, batched, and wait for those parts. If a write
    /// fails, every FLOW_MOD of the run is taken back (the flow table and
    /// the maps as before the run) and the run is done again one FLOW_MOD
    /// at a time, each written before the next is handled: the one that
    /// fails again is taken back alone and answered with an OFPT_ERROR,
    /// the others apply as they would have. So a FLOW_MOD is all or
    /// nothing, in the table and in the maps, while a bulk install keeps
    /// its batched writes.
    fn end_run(&mut self, id: ConnId, run: Option<Run>, fx: &mut Effects, read_at: u64) {
        let Some(run) = run else { return };
        let ops = std::mem::take(&mut fx.ops);
        let Err(e) = self.dp.try_apply(&ops) else {
            self.sw.flows.commit();
            return;
        };
        tracing::warn!(
            "writing {} FLOW_MODs to the maps failed ({e}): taken back, done again one by one",
            run.messages.len()
        );
        let back = self.sw.flows.rollback();
        self.apply_ops(&back);
        fx.send.truncate(run.send_from);
        self.sw.counters = run.counters;
        for raw in run.messages {
            let Ok(Some((frame, _))) = of::decode(&raw) else {
                continue;
            };
            let xid = frame.xid;
            self.sw.flows.begin();
            let mut one = self.sw.handle(id, frame, &raw, read_at, &mut self.dp);
            match self.dp.try_apply(&one.ops) {
                Ok(()) => self.sw.flows.commit(),
                Err(e) => {
                    tracing::warn!("FLOW_MOD (xid {xid}) refused: writing the maps failed: {e}");
                    let back = self.sw.flows.rollback();
                    self.apply_ops(&back);
                    one.send = vec![self.sw.flow_mod_failed(id, xid, &raw, e.no_room)];
                }
            }
            one.ops.clear();
            fx.extend(one);
        }
    }

    /// Apply effects: map operations first, then frames, then messages,
    /// then closes. Output is queued (see [`Engine::flush_dirty`]).
    pub fn apply(&mut self, fx: Effects) {
        self.apply_ops(&fx.ops);
        for (port, frame) in &fx.emit {
            self.dp.emit(*port, frame);
        }
        for (id, xid, msg) in &fx.send {
            let Some(p) = self.peers.get_mut(id) else {
                continue;
            };
            let asynchronous = matches!(
                msg,
                Message::PacketIn(_)
                    | Message::FlowRemoved(_)
                    | Message::PortStatus(_)
                    | Message::Experimenter(_)
            );
            if asynchronous {
                if !p.conn.send_async(*xid, msg) {
                    continue;
                }
                if matches!(msg, Message::PacketIn(_)) && !self.awaiting.contains(id) {
                    self.awaiting.push(*id);
                }
            } else {
                p.conn.send(*xid, msg);
            }
            if !self.dirty.contains(id) {
                self.dirty.push(*id);
            }
        }
        for id in &fx.close {
            if let Some(p) = self.peers.get_mut(id) {
                p.conn.close(CloseReason::BySwitch);
            }
        }
    }

    /// Take the next step of the multipart answers in progress, on the
    /// connections that took what came before (less than a megabyte
    /// queued), and handle what waited behind an answer that is done.
    /// Returns true when more steps can be taken at once (the event loop
    /// then polls without sleeping).
    pub fn pump(&mut self) -> bool {
        let busy: Vec<ConnId> = self
            .peers
            .iter()
            .filter(|(id, p)| self.sw.has_job(**id) || !p.deferred.is_empty())
            .map(|(id, _)| *id)
            .collect();
        let mut more = false;
        for id in busy {
            let ready = |e: &Self| {
                e.peers.get(&id).is_some_and(|p| {
                    !p.blocked && !p.conn.is_closed() && p.conn.output().len() < JOB_LOW_WATER
                })
            };
            if !ready(self) {
                continue;
            }
            let now = now_ns();
            if self.sw.has_job(id) {
                let fx = self.sw.job_step(id, now, &mut self.dp);
                self.apply(fx);
                self.flush(id);
            }
            if !self.sw.has_job(id) {
                let waiting = self
                    .peers
                    .get_mut(&id)
                    .map(|p| std::mem::take(&mut p.deferred))
                    .unwrap_or_default();
                if !waiting.is_empty() {
                    self.inputs = waiting;
                    self.handle(id, now, false);
                    self.flush(id);
                }
            }
            let idle =
                !self.sw.has_job(id) && self.peers.get(&id).is_some_and(|p| p.deferred.is_empty());
            if idle {
                // Read what arrived meanwhile.
                if let Some(p) = self.peers.get_mut(&id) {
                    p.paused = false;
                }
                self.resumed.push(id);
            } else if ready(self) {
                more = true;
            }
        }
        more
    }

    /// Write what the connections given output since the last call hold;
    /// then, after a bulk removal, hand the freed heap back.
    pub fn flush_dirty(&mut self) {
        while let Some(id) = self.dirty.pop() {
            self.flush(id);
        }
        // Off the replies' path: a BARRIER_REPLY after a bulk delete does
        // not wait for the heap to be trimmed.
        if std::mem::take(&mut self.trim) {
            give_back_memory();
        }
    }

    /// Write connection `id`'s output until it is empty or the transport
    /// is full. Returns true while output waits (the event loop then waits
    /// for the transport to be writable).
    pub fn flush(&mut self, id: ConnId) -> bool {
        let Some(p) = self.peers.get_mut(&id) else {
            return false;
        };
        p.blocked = false;
        while !p.conn.output().is_empty() {
            match p.io.write(p.conn.output()) {
                Ok(0) => {
                    p.conn.close(CloseReason::PeerClosed);
                    break;
                }
                Ok(n) => p.conn.consumed(n, now_ns()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    p.blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    p.conn.close(CloseReason::Io(e.to_string()));
                    break;
                }
            }
        }
        // What the transport itself still holds (TLS records the socket
        // did not take): pushed now, or when the socket is writable again.
        if !p.blocked && !p.conn.is_closed() {
            match p.io.flush() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => p.blocked = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => p.conn.close(CloseReason::Io(e.to_string())),
            }
        }
        if p.paused && p.conn.wants_read() && p.deferred.is_empty() && !self.sw.has_job(id) {
            p.paused = false;
            self.resumed.push(id);
        }
        p.blocked
    }

    /// Connections whose reading was paused by congestion and may now be
    /// read again (their bytes arrived while paused, so no readiness event
    /// will say so).
    pub fn take_resumed(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.resumed)
    }

    /// Take the punts waiting and handle them one by one: ARP responder,
    /// PACKET_IN (written at once), standalone learning. `woke` is when
    /// the caller woke up for them (0: unknown), for the timings. Returns
    /// how many there were.
    pub fn drain_punts(&mut self, woke: u64) -> usize {
        self.dp.punts(&mut self.punts);
        if self.punts.is_empty() {
            return 0;
        }
        let n = self.punts.len();
        self.stats.punts += n as u64;
        let read_at = now_ns();
        let timed = tracing::enabled!(target: LATENCY, tracing::Level::TRACE);
        // Drained, not consumed: the vector keeps its room.
        let mut punts = std::mem::take(&mut self.punts);
        for p in punts.drain(..) {
            let punted = p.header.timestamp_ns;
            let fx = self.sw.punt(p, read_at, &mut self.dp);
            let handled = if timed { now_ns() } else { 0 };
            self.apply(fx);
            self.flush_dirty();
            // Both clocks are CLOCK_MONOTONIC (bpf_ktime_get_ns).
            self.stats
                .punt_latency
                .observe_ns(now_ns().saturating_sub(punted));
            if timed && self.timings.len() < MAX_TIMINGS {
                // Both clocks are CLOCK_MONOTONIC (bpf_ktime_get_ns).
                self.timings.push([
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
        self.punts = punts;
        n
    }

    /// Take the sampled drops waiting in the dataplane: kept for the
    /// status and sent to every controller connected (dropped, not
    /// queued, on a congested connection).
    pub fn drain_samples(&mut self) {
        let mut v = Vec::new();
        self.dp.drop_samples(&mut v);
        if v.is_empty() {
            return;
        }
        let up: Vec<ConnId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.conn.is_up())
            .map(|(id, _)| *id)
            .collect();
        let mut fx = Effects::default();
        for d in v {
            if !up.is_empty() {
                let msg = Message::Experimenter(
                    Ext::DropSample(of::ext::DropSample {
                        in_port: d.in_port,
                        pkt_len: d.pkt_len,
                        reason: d.reason.map_or_else(
                            || format!("reason_{}", d.reason_code),
                            |r| r.name().to_string(),
                        ),
                        data: d.data.clone(),
                    })
                    .to_message(),
                );
                for id in &up {
                    fx.send.push((*id, 0, msg.clone()));
                }
                self.stats.samples_sent += 1;
            }
            self.drop_log.push(d);
        }
        self.apply(fx);
        self.flush_dirty();
    }

    /// The controller's set of container port sources: anti-spoofing on
    /// for those ports, off for the ports it no longer names.
    fn set_sources(&mut self, v: &[of::ext::PortSource]) {
        let new: BTreeMap<u32, Source> = v.iter().map(|s| (s.ofport, (s.mac, s.ipv4))).collect();
        let old = std::mem::replace(&mut self.sources, new);
        let ports: Vec<u32> = self.sw.ports().map(|p| p.ofport).collect();
        for ofport in ports {
            let want = self.sources.get(&ofport).copied();
            if want == old.get(&ofport).copied() {
                continue;
            }
            match self.dp.set_port_source(ofport, want) {
                Ok(()) => tracing::info!(ofport, on = want.is_some(), "port anti-spoofing"),
                Err(e) => tracing::debug!(ofport, "anti-spoofing not set: {e:#}"),
            }
        }
    }

    /// The connections sent a PACKET_IN since the last call (their answers
    /// are expected).
    pub fn take_awaiting(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.awaiting)
    }

    /// True when punt timings wait to be logged ([`Engine::log_timings`]).
    pub fn has_timings(&self) -> bool {
        !self.timings.is_empty()
    }

    /// Log the punt timings gathered (off the packets' path: writing them
    /// takes system calls).
    pub fn log_timings(&mut self) {
        for [to_read, woke_to_read, handle, write] in std::mem::take(&mut self.timings) {
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

    /// Timers due at `now`: flow expiry, connection keepalives.
    pub fn timers(&mut self, now: u64) {
        if self.sw.next_deadline() <= now {
            let fx = self.sw.tick(now, &mut self.dp);
            self.apply(fx);
        }
        for (id, p) in self.peers.iter_mut() {
            if p.conn.next_timer() <= now {
                let before = p.conn.output().len();
                p.conn.on_timer(now);
                if p.conn.output().len() != before && !self.dirty.contains(id) {
                    self.dirty.push(*id);
                }
            }
        }
        self.flush_dirty();
    }

    /// When [`Engine::timers`] next has work (CLOCK_MONOTONIC ns).
    pub fn next_deadline(&self) -> u64 {
        self.peers
            .values()
            .map(|p| p.conn.next_timer())
            .fold(self.sw.next_deadline(), u64::min)
    }

    /// Take the closed connections out (after a last best-effort write of
    /// their output, e.g. an OFPT_ERROR): the switch forgets their
    /// sessions; the caller deregisters and drops their transports.
    pub fn reap(&mut self) -> Vec<Closed> {
        let ids: Vec<ConnId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.conn.is_closed())
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::new();
        for id in ids {
            let Some(mut p) = self.peers.remove(&id) else {
                continue;
            };
            let _ = p.io.write(p.conn.output());
            self.sw.disconnected(id);
            self.awaiting.retain(|a| *a != id);
            let reason = p
                .conn
                .close_reason()
                .cloned()
                .unwrap_or(CloseReason::BySwitch);
            tracing::info!(conn = id, peer = %p.name, why = %reason, "OpenFlow connection down");
            out.push(Closed {
                id,
                io: p.io,
                reason,
            });
        }
        out
    }

    /// Attach a port; announced to controllers with PORT_STATUS. Returns
    /// its OpenFlow number.
    pub fn add_port(&mut self, iface: &str, ofport: Option<u32>, kind: PortKind) -> Result<u32> {
        let desc = self.dp.attach(iface, ofport, kind)?;
        let ofport = desc.ofport;
        if let Some(src) = self.sources.get(&ofport).copied() {
            if let Err(e) = self.dp.set_port_source(ofport, Some(src)) {
                tracing::warn!(ofport, "anti-spoofing not set: {e:#}");
            }
        }
        let fx = self.sw.port_added(desc, now_ns());
        self.apply(fx);
        self.flush_dirty();
        tracing::info!(iface, ofport, ?kind, "port attached");
        Ok(ofport)
    }

    /// Detach a port by interface name.
    pub fn del_port(&mut self, iface: &str) -> Result<()> {
        for p in self.dp.detach(iface)? {
            let fx = self.sw.port_removed(p);
            self.apply(fx);
        }
        self.flush_dirty();
        tracing::info!(iface, "port detached");
        Ok(())
    }

    /// Notice ports whose interface vanished or changed (PORT_STATUS); the
    /// interfaces of the ports removed.
    pub fn check_ports(&mut self) -> Vec<String> {
        let mut gone = Vec::new();
        for c in self.dp.check_ports() {
            match c {
                PortCheck::Present(desc) => {
                    let fx = self.sw.port_modified(desc);
                    self.apply(fx);
                }
                PortCheck::Gone(name) => {
                    tracing::info!(iface = %name, "interface gone: port removed");
                    if let Err(e) = self.del_port(&name) {
                        tracing::debug!(iface = %name, "removing the port: {e:#}");
                    }
                    gone.push(name);
                }
            }
        }
        self.flush_dirty();
        gone
    }

    /// Apply a FLOW_MOD given locally; returns how many flows it touched.
    pub fn local_flow_mod(&mut self, fm: &FlowMod) -> Result<usize> {
        if !oftable::journaled(fm) {
            let (n, fx) = self
                .sw
                .local_flow_mod(fm, now_ns(), &mut self.dp)
                .map_err(|c| anyhow!("flow refused: {c}"))?;
            self.apply(fx);
            self.flush_dirty();
            return Ok(n);
        }
        // All or nothing, as from a controller (see `end_run`).
        self.sw.flows.begin();
        let (n, mut fx) = match self.sw.local_flow_mod(fm, now_ns(), &mut self.dp) {
            Ok(r) => r,
            Err(c) => {
                self.sw.flows.commit();
                return Err(anyhow!("flow refused: {c}"));
            }
        };
        if let Err(e) = self.dp.try_apply(&std::mem::take(&mut fx.ops)) {
            let back = self.sw.flows.rollback();
            self.apply_ops(&back);
            return Err(anyhow!(
                "flow refused: writing the datapath maps failed ({e}); nothing changed"
            ));
        }
        self.sw.flows.commit();
        self.apply(fx);
        self.flush_dirty();
        Ok(n)
    }

    /// The flow dump, one line per flow, like `ovs-ofctl dump-flows`.
    pub fn dump_flows(&mut self) -> Result<Vec<String>> {
        let req = of::FlowStatsRequest::default();
        let list = self
            .sw
            .flows
            .flow_stats(&req, now_ns(), &mut self.dp)
            .map_err(|c| anyhow!("{c}"))?;
        Ok(list.iter().map(|f| f.to_string()).collect())
    }
}

#[cfg(test)]
pub(crate) mod tests;
