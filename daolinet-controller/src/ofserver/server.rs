//! The tokio edge of the OpenFlow server: one task per switch connection
//! driving a [`Conn`], a registry of connected datapaths, and a dispatcher
//! that sends the decisions of model changes to the switches.
//!
//! Hot path (PACKET_IN): the connection task decodes every complete message
//! of one read, runs the policy on a lock-free snapshot
//! ([`Controller::decide`]), encodes the replies into the connection's one
//! output buffer, and writes that buffer with one `write` per wake-up: many
//! replies per syscall under load. Decisions for another datapath (the
//! remote half of a cross-host pair) go to that datapath's task over a
//! bounded channel; that task sends them followed by a BARRIER, and only
//! when the BARRIER_REPLY arrives does the originating task send the
//! PACKET_OUT, so the first packet never overtakes its flows.
//!
//! Backpressure: a task stops reading from a switch whose output buffer
//! exceeds [`ServerConfig::max_out_bytes`] (TCP then slows the switch down),
//! and keeps writing (at four times that, the switch is disconnected); it
//! never blocks on another switch (channels are
//! `try_send`; a full channel drops and logs, the flows are then installed
//! again on the next PACKET_IN).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf as _, Bytes, BytesMut};
use tokio::io::{AsyncWriteExt as _, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::applied::{Applied, ApplyGuard};
use crate::generation::{self, Holder, SetTag};
use crate::metrics::Metrics;
use crate::service::Controller;
use daolinet_openflow::consts::{
    OFPBRC_IS_SLAVE, OFPCR_ROLE_EQUAL, OFPCR_ROLE_MASTER, OFPCR_ROLE_NOCHANGE, OFPCR_ROLE_SLAVE,
    OFPET_BAD_REQUEST,
};
use daolinet_openflow::ext::{Ext, PortSource};
use daolinet_openflow::{FlowStats, Message};
use daolinet_policy::addr::Dpid;
use daolinet_policy::live::{self, Count, LiveReport, Watch};
use daolinet_policy::model::Host;
use daolinet_policy::trace::{FlowSource, Trace, TraceError, TraceRequest};
use daolinet_policy::{ActionSpec, Decision, FlowSpec};

use super::conn::{describe, CloseReason, Conn, ConnConfig, Event};
use super::translate;

/// Server settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// Per-connection timers and limits.
    pub conn: ConnConfig,
    /// Stop reading from a switch while this many bytes wait to be written
    /// to it.
    pub max_out_bytes: usize,
    /// Capacity of each connection's command channel (decisions from other
    /// connections and from model changes).
    pub channel: usize,
    /// Read buffer size per connection.
    pub read_buf: usize,
    /// How long a datapath may stay disconnected before the flows towards
    /// its containers are deleted on the other datapaths (an agent restart
    /// or a reconnection within this time costs no traffic).
    pub host_gone_after: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            conn: ConnConfig::default(),
            max_out_bytes: 8 << 20,
            channel: 4096,
            read_buf: 16 << 10,
            host_gone_after: Duration::from_secs(30),
        }
    }
}

/// What this controller is to the switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The only controller (no election): stays EQUAL on every switch.
    /// It asks each switch for its generation id first (ROLE_REQUEST
    /// NOCHANGE, again every [`PROBE_EVERY`] while it acts): one that has a
    /// generation id has had a master elected by controllers on another
    /// store, and this controller does not act on it.
    Alone,
    /// The elected leader: asks each switch for its generation id first
    /// (ROLE_REQUEST NOCHANGE); when the switch has none or one of this
    /// set's ([`crate::generation::holder`]), ROLE_REQUEST master with this
    /// generation id (the election key's create revision, tagged with the
    /// set), then acts. A switch whose master another set elected is left
    /// alone (EQUAL, nothing written).
    Master {
        /// OpenFlow generation id.
        generation: u64,
    },
    /// Not the leader: ROLE_REQUEST slave with the leader's generation id
    /// when known (after the same check as the master's: a slave's request
    /// also sets the switch's generation id), and nothing else (PACKET_INs
    /// and model changes are left to the master).
    Slave {
        /// The leader's generation id, if one is known.
        generation: Option<u64>,
    },
}

/// How often a controller without election asks a switch it acts on for
/// its generation id again (see [`Role::Alone`]): controllers on another
/// store that elect a master there later stop it within this time.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);

/// PACKET_INs kept per switch while a controller waits for the switch's
/// generation id (one round trip after the handshake).
const MAX_WAITING: usize = 256;

/// What other tasks ask a connection task to do.
#[derive(Debug)]
enum Cmd {
    /// Send decisions; with `then` or `ack`, follow them with a BARRIER and
    /// release `then` and `ack` when its reply arrives.
    Decisions {
        ds: Vec<Decision>,
        then: Option<Release>,
        ack: Option<ApplyGuard>,
    },
    /// Append pre-encoded messages.
    Bytes(Bytes),
    /// Another connection took over this datapath: close.
    Replaced,
    /// Re-initialise the datapath (its host changed, or decisions were lost).
    Resync,
    /// The model changed: send a DaoliNet agent its ports' sources again
    /// if they changed.
    Sources,
    /// Read the counters of the flows with this cookie (a live trace).
    Stats {
        cookie: u64,
        reply: oneshot::Sender<Result<SwitchFlows, String>>,
    },
}

/// A switch's answer to [`Cmd::Stats`].
#[derive(Debug)]
struct SwitchFlows {
    /// What the switch is, as it introduced itself.
    switch: &'static str,
    flows: Vec<FlowStats>,
}

/// Why a live trace could not be run (see [`Server::probe`]).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The trace itself is refused (unknown container, bad request).
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// A slave controller does not send packets to the switches.
    #[error("this controller is not the switches' master: send the live trace to the leader")]
    NotMaster,
    /// A host the packet crosses has no switch connected here.
    #[error("host {host}'s switch (datapath {dpid}) is not connected to this controller")]
    NotConnected {
        /// The host.
        host: String,
        /// Its datapath.
        dpid: Dpid,
        /// `src` for the source's host, `dst` otherwise.
        field: &'static str,
    },
    /// A switch did not answer the counter read.
    #[error("host {host}'s switch did not give its flow counters: {why}")]
    Switch {
        /// The host.
        host: String,
        /// What happened.
        why: String,
    },
    /// The controller's own state is unavailable.
    #[error("{0}")]
    Internal(String),
}

/// How long [`Server::probe`] waits for a switch's counters, and for the
/// first packet's flows to be confirmed.
const PROBE_SWITCH_WAIT: Duration = Duration::from_secs(2);
/// How often [`Server::probe`] reads the counters while waiting.
const PROBE_POLL: Duration = Duration::from_millis(100);

/// Encoded messages to hand to a connection once a barrier completes.
#[derive(Debug)]
struct Release {
    to: mpsc::Sender<Cmd>,
    bytes: Bytes,
}

impl Release {
    fn fire(self) {
        if self.to.try_send(Cmd::Bytes(self.bytes)).is_err() {
            tracing::debug!("PACKET_OUT dropped: its connection is gone or full");
        }
    }
}

#[derive(Debug, Clone)]
struct Handle {
    id: u64,
    tx: mpsc::Sender<Cmd>,
    /// The host record the datapath was initialised for.
    host: Option<Host>,
}

/// Connected datapaths.
#[derive(Debug, Default)]
struct Switches {
    map: RwLock<HashMap<Dpid, Handle>>,
}

impl Switches {
    fn get(&self, dpid: Dpid) -> Option<mpsc::Sender<Cmd>> {
        self.map.read().ok()?.get(&dpid).map(|h| h.tx.clone())
    }

    /// Registers a connection; returns the one it replaces. The
    /// `switches_connected` gauge of `metrics` is set under the lock:
    /// connections register on several runtime threads at once, and a
    /// count stored after the lock is released can be overwritten by an
    /// older, smaller one (two agents reconnecting together after a
    /// controller restart left the gauge at 1 with both connected).
    fn insert(&self, dpid: Dpid, h: Handle, metrics: &Metrics) -> Option<Handle> {
        let mut m = self.map.write().ok()?;
        let old = m.insert(dpid, h);
        metrics.set_switches_connected(m.len() as u64);
        old
    }

    /// Unregisters connection `id` if it still owns `dpid` (true then);
    /// sets the gauge under the lock, as [`Switches::insert`] does.
    fn remove(&self, dpid: Dpid, id: u64, metrics: &Metrics) -> bool {
        let Ok(mut m) = self.map.write() else {
            return false;
        };
        if m.get(&dpid).is_some_and(|h| h.id == id) {
            m.remove(&dpid);
            metrics.set_switches_connected(m.len() as u64);
            true
        } else {
            false
        }
    }

    fn set_host(&self, dpid: Dpid, id: u64, host: Option<Host>) {
        if let Ok(mut m) = self.map.write() {
            if let Some(h) = m.get_mut(&dpid).filter(|h| h.id == id) {
                h.host = host;
            }
        }
    }

    fn snapshot(&self) -> Vec<(Dpid, Handle)> {
        self.map
            .read()
            .map(|m| m.iter().map(|(d, h)| (*d, h.clone())).collect())
            .unwrap_or_default()
    }
}

/// The OpenFlow 1.3 server.
#[derive(Debug)]
pub struct Server {
    ctl: Arc<Controller>,
    cfg: ServerConfig,
    switches: Switches,
    next_id: AtomicU64,
    role: watch::Receiver<Role>,
    /// The set's tag (with election).
    tag: Option<SetTag>,
    /// Keeps the role channel of a server without election open.
    _alone: Option<watch::Sender<Role>>,
    /// Datapaths that left, by the time their host_gone is due.
    gone: std::sync::Mutex<HashMap<Dpid, Instant>>,
}

impl Server {
    /// A server deciding with `ctl`, the only controller of its switches.
    pub fn new(ctl: Arc<Controller>, cfg: ServerConfig) -> Arc<Self> {
        let (tx, rx) = watch::channel(Role::Alone);
        Self::build(ctl, cfg, rx, None, Some(tx))
    }

    /// A server among several controllers: `role` says whether this one
    /// is the master (from the leader election of set `tag`, whose
    /// generation ids it recognises on the switches).
    pub fn with_role(
        ctl: Arc<Controller>,
        cfg: ServerConfig,
        role: watch::Receiver<Role>,
        tag: SetTag,
    ) -> Arc<Self> {
        Self::build(ctl, cfg, role, Some(tag), None)
    }

    fn build(
        ctl: Arc<Controller>,
        cfg: ServerConfig,
        role: watch::Receiver<Role>,
        tag: Option<SetTag>,
        alone: Option<watch::Sender<Role>>,
    ) -> Arc<Self> {
        Arc::new(Server {
            ctl,
            cfg,
            switches: Switches::default(),
            next_id: AtomicU64::new(1),
            role,
            tag,
            _alone: alone,
            gone: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// True when this controller may change the switches (alone, or the
    /// elected master).
    fn acting(&self) -> bool {
        matches!(*self.role.borrow(), Role::Alone | Role::Master { .. })
    }

    /// Datapaths currently connected (handshake done).
    pub fn connected(&self) -> Vec<Dpid> {
        let mut v: Vec<Dpid> = self
            .switches
            .snapshot()
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        v.sort();
        v
    }

    /// `trace --live`: traces `req`, then sends a real probe through the
    /// switches and reports what they did with it (see
    /// [`daolinet_policy::live`]). The probe is the traced packet, injected
    /// at the source's port with a PACKET_OUT to the flow table, so the
    /// source host's own flows handle it. When a host lacks its flow for
    /// the pair, the probe is first decided like a real first packet (as a
    /// PACKET_IN from that port: verdict counted and recorded for
    /// `observe`, flows installed on both hosts and confirmed by a
    /// BARRIER). The packet
    /// counters of each host's flow are read before the injection and then
    /// every [`PROBE_POLL`] until the flow of the host where the trace ends
    /// counted it, or the request's timeout passed.
    pub async fn probe(&self, req: &TraceRequest) -> Result<Trace, ProbeError> {
        let internal = |e: crate::service::ServiceError| ProbeError::Internal(e.to_string());
        let ctl = &self.ctl;
        let installed = |d: Dpid| ctl.flows(Some(d)).unwrap_or_default();
        let snap = ctl.snapshot().map_err(internal)?;
        let first = daolinet_policy::trace::trace(&snap, &ctl.cfg, &installed, req)?;
        if !self.acting() {
            return Err(ProbeError::NotMaster);
        }
        let mut txs = Vec::with_capacity(first.hops.len());
        for (i, h) in first.hops.iter().enumerate() {
            let tx = self
                .switches
                .get(h.dpid)
                .ok_or_else(|| ProbeError::NotConnected {
                    host: h.host.clone(),
                    dpid: h.dpid,
                    field: if i == 0 { "src" } else { "dst" },
                })?;
            txs.push(tx);
        }
        let (Some(src_hop), Some(src_tx)) = (first.hops.first(), txs.first().cloned()) else {
            return Err(ProbeError::Internal("the trace crosses no host".into()));
        };
        let (src_dpid, src_port) = (src_hop.dpid, first.src.port);
        // A host without its flow would punt the probe to the controller
        // on the way: decided here instead, from the source, as the first
        // packet (which installs the flows of both hosts).
        let decided_first = first
            .hops
            .iter()
            .any(|h| h.source == FlowSource::OnFirstPacket);
        if decided_first {
            let out = ctl
                .decide(src_dpid, src_port, &first.frame)
                .map_err(internal)?;
            let flows: Vec<Decision> = out
                .decisions
                .into_iter()
                .filter(|d| !matches!(d, Decision::PacketOut { .. }))
                .collect();
            let applied = Applied::new();
            self.route(&flows, None, Some(&applied)).await;
            applied.routed();
            if !applied.wait(PROBE_SWITCH_WAIT).await {
                tracing::warn!("live trace: a switch did not confirm the probe's flows in time");
            }
        }
        // The flows the probe meets now.
        let snap = ctl.snapshot().map_err(internal)?;
        let mut t = daolinet_policy::trace::trace(&snap, &ctl.cfg, &installed, req)?;
        let ws = live::watches(&t);
        let hosts: Vec<(Dpid, String, mpsc::Sender<Cmd>)> = t
            .hops
            .iter()
            .zip(&txs)
            .map(|(h, tx)| (h.dpid, h.host.clone(), tx.clone()))
            .collect();
        let (before, switches) = self.read_counters(&hosts, &ws).await?;
        let mut counts: Vec<Count> = before
            .iter()
            .map(|b| Count {
                before: *b,
                after: *b,
            })
            .collect();
        let mut po = BytesMut::new();
        translate::put_packet_out(
            src_port,
            &[ActionSpec::Output(daolinet_openflow::consts::OFPP_TABLE)],
            &t.frame,
            0,
            &mut po,
        )
        .map_err(|e| ProbeError::Internal(e.to_string()))?;
        if src_tx.try_send(Cmd::Bytes(po.freeze())).is_err() {
            return Err(ProbeError::Switch {
                host: src_hop.host.clone(),
                why: "its connection is busy or gone: the probe was not sent".into(),
            });
        }
        let timeout_ms = req.timeout_ms.unwrap_or(live::DEFAULT_TIMEOUT_MS);
        let sent = Instant::now();
        let deadline = sent + Duration::from_millis(timeout_ms);
        loop {
            tokio::time::sleep(PROBE_POLL).await;
            let (after, _) = self.read_counters(&hosts, &ws).await?;
            for (c, a) in counts.iter_mut().zip(after) {
                c.after = a;
            }
            if live::arrived(&t, &ws, &counts) || Instant::now() >= deadline {
                break;
            }
        }
        let waited = u64::try_from(sent.elapsed().as_millis()).unwrap_or(u64::MAX);
        let report: LiveReport = live::judge(
            &t,
            &ws,
            &counts,
            &switches,
            decided_first,
            waited,
            timeout_ms,
        );
        t.live = Some(report);
        Ok(t)
    }

    /// Reads the packet counters of the watched flows (`None`: the switch
    /// does not hold that flow) and what each host's switch is.
    async fn read_counters(
        &self,
        hosts: &[(Dpid, String, mpsc::Sender<Cmd>)],
        ws: &[Watch],
    ) -> Result<(Vec<Option<u64>>, Vec<String>), ProbeError> {
        let mut counts = vec![None; ws.len()];
        let mut kinds = Vec::with_capacity(hosts.len());
        for (i, (dpid, host, tx)) in hosts.iter().enumerate() {
            let mine: Vec<usize> = (0..ws.len())
                .filter(|&k| ws.get(k).is_some_and(|w| w.hop == i))
                .collect();
            // One read per cookie (a hop has one watched flow); a hop with
            // none is still asked, for what its switch is.
            let cookie = mine
                .first()
                .and_then(|&k| ws.get(k))
                .map_or(0, |w| w.flow.cookie);
            let (rtx, rrx) = oneshot::channel();
            let fail = |why: &str| ProbeError::Switch {
                host: host.clone(),
                why: why.to_string(),
            };
            tx.try_send(Cmd::Stats { cookie, reply: rtx })
                .map_err(|_| fail("its connection is busy or gone"))?;
            let got = match tokio::time::timeout(PROBE_SWITCH_WAIT, rrx).await {
                Err(_) => return Err(fail("no answer within 2 s")),
                Ok(Err(_)) => return Err(fail("it disconnected")),
                Ok(Ok(Err(e))) => return Err(fail(&format!("it refused the read ({e})"))),
                Ok(Ok(Ok(f))) => f,
            };
            for k in mine {
                let Some(w) = ws.get(k) else { continue };
                let n = got.flows.iter().find_map(|f| {
                    let m = translate::from_match(&f.match_)?;
                    live::is_watched(w, f.priority, &m, f.cookie).then_some(f.packet_count)
                });
                if let Some(c) = counts.get_mut(k) {
                    *c = n;
                }
            }
            tracing::trace!(%dpid, switch = got.switch, "live trace counters read");
            kinds.push(got.switch.to_string());
        }
        Ok((counts, kinds))
    }

    /// Accepts switches on `listener` until `stop` becomes true; also runs
    /// the model-change dispatcher. Connection tasks end with `stop` too.
    pub async fn run(self: Arc<Self>, listener: TcpListener, stop: watch::Receiver<bool>) {
        self.run_all(vec![(listener, None)], stop).await;
    }

    /// Like [`Server::run`] on several listeners; those with a TLS
    /// configuration take switches over TLS only (mutual authentication,
    /// each switch bound to the datapath id of its certificate).
    pub async fn run_all(
        self: Arc<Self>,
        listeners: Vec<(TcpListener, Option<Arc<daolinet_tls::rustls::ServerConfig>>)>,
        stop: watch::Receiver<bool>,
    ) {
        let dispatcher = tokio::spawn(self.clone().dispatch_model_changes(stop.clone()));
        let mut accepts = Vec::new();
        for (l, tls) in listeners {
            let tls = tls.map(tokio_rustls::TlsAcceptor::from);
            accepts.push(tokio::spawn(self.clone().accept_loop(l, tls, stop.clone())));
        }
        for a in accepts {
            let _ = a.await;
        }
        let _ = dispatcher.await;
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        stop: watch::Receiver<bool>,
    ) {
        let mut stop_accept = stop.clone();
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((sock, peer)) => {
                        let _ = sock.set_nodelay(true);
                        match &tls {
                            None => {
                                tokio::spawn(self.clone().serve(Sock::Tcp(sock), peer, stop.clone(), None));
                            }
                            Some(acc) => {
                                tokio::spawn(self.clone().serve_tls(acc.clone(), sock, peer, stop.clone()));
                            }
                        }
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = stopped(&mut stop_accept) => break,
            }
        }
    }

    /// A TLS switch: the handshake (its certificate must chain to the
    /// switch CA), then the datapath id its certificate is bound to, then
    /// the OpenFlow connection, refused if it claims another datapath.
    async fn serve_tls(
        self: Arc<Self>,
        acc: tokio_rustls::TlsAcceptor,
        sock: TcpStream,
        peer: SocketAddr,
        stop: watch::Receiver<bool>,
    ) {
        let hs = tokio::time::timeout(self.cfg.conn.handshake_timeout, acc.accept(sock)).await;
        let tls = match hs {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                self.ctl.metrics.tls_refused();
                tracing::warn!(%peer, error = %e, "switch refused: TLS handshake failed");
                return;
            }
            Err(_) => {
                self.ctl.metrics.tls_refused();
                tracing::warn!(%peer, "switch refused: TLS handshake timed out");
                return;
            }
        };
        let bound = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| "no client certificate".to_string())
            .and_then(daolinet_tls::dpid_of);
        match bound {
            Ok(d) => {
                self.serve(Sock::Tls(Box::new(tls)), peer, stop, Some(Dpid(d)))
                    .await
            }
            Err(why) => {
                self.ctl.metrics.tls_refused();
                tracing::warn!(%peer, reason = %why, "switch refused: its certificate names no datapath");
                let mut t = tls;
                let _ = t.shutdown().await;
            }
        }
    }

    /// Sends the decisions of model changes to the switches, and
    /// re-initialises a switch whose host record appeared or changed.
    async fn dispatch_model_changes(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut decisions = self.ctl.subscribe_decisions();
        let mut model = self.ctl.subscribe_model();
        let mut gone_tick = tokio::time::interval(Duration::from_millis(100));
        gone_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = decisions.recv() => match r {
                    // A slave leaves the switches to the master (which
                    // gets the same change through the store).
                    Ok(p) if !self.acting() => p.applied.routed(),
                    Ok(p) => {
                        self.route(&p.decisions, None, Some(&p.applied)).await;
                        p.applied.routed();
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(lost = n, "model-change decisions lagged: re-initialising every switch");
                        for (_, h) in self.switches.snapshot() {
                            let _ = h.tx.try_send(Cmd::Resync);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                r = model.changed() => {
                    if r.is_err() {
                        break;
                    }
                    self.resync_changed_hosts();
                    for (_, h) in self.switches.snapshot() {
                        let _ = h.tx.try_send(Cmd::Sources);
                    }
                }
                _ = gone_tick.tick() => self.hosts_gone().await,
                _ = stopped(&mut stop) => break,
            }
        }
    }

    /// Deletes, on the other datapaths, the flows towards the containers of
    /// datapaths that stayed away longer than
    /// [`ServerConfig::host_gone_after`].
    async fn hosts_gone(&self) {
        let now = Instant::now();
        let due: Vec<Dpid> = match self.gone.lock() {
            Ok(mut g) => {
                let due: Vec<Dpid> = g
                    .iter()
                    .filter(|(_, t)| **t <= now)
                    .map(|(d, _)| *d)
                    .collect();
                for d in &due {
                    g.remove(d);
                }
                due
            }
            Err(_) => return,
        };
        for dpid in due {
            if !self.acting() || self.switches.get(dpid).is_some() {
                continue;
            }
            tracing::info!(%dpid, "datapath stayed away: deleting the flows towards its containers");
            // Off the runtime's workers: the deletions are the host's
            // containers times every other datapath (tens of thousands at
            // 1,000 hosts), and switches connecting meanwhile must not wait.
            let ctl = self.ctl.clone();
            match tokio::task::spawn_blocking(move || ctl.host_gone(dpid)).await {
                Ok(Ok(ds)) => self.route(&ds, Some(dpid), None).await,
                Ok(Err(e)) => tracing::warn!(error = %e, "host_gone"),
                Err(e) => tracing::warn!(error = %e, "host_gone task"),
            }
        }
    }

    fn resync_changed_hosts(&self) {
        let Ok(snap) = self.ctl.snapshot() else {
            return;
        };
        for (dpid, h) in self.switches.snapshot() {
            if snap.host_by_dpid(dpid) != h.host.as_ref() {
                let _ = h.tx.try_send(Cmd::Resync);
            }
        }
    }

    /// Sends decisions to their datapaths (not to `except`); with
    /// `applied`, each datapath confirms them with a barrier.
    async fn route(&self, ds: &[Decision], except: Option<Dpid>, applied: Option<&Applied>) {
        for (dpid, group) in group_by_dpid(ds.iter().cloned()) {
            if Some(dpid) == except {
                continue;
            }
            let Some(tx) = self.switches.get(dpid) else {
                continue;
            };
            let cmd = Cmd::Decisions {
                ds: group,
                then: None,
                ack: applied.map(Applied::hold),
            };
            if let Err(mpsc::error::TrySendError::Full(cmd)) = tx.try_send(cmd) {
                if tx.send_timeout(cmd, Duration::from_secs(1)).await.is_err() {
                    tracing::warn!(%dpid, "switch does not keep up: model-change decisions dropped");
                }
            }
        }
    }

    async fn serve(
        self: Arc<Self>,
        mut sock: Sock,
        peer: SocketAddr,
        stop: watch::Receiver<bool>,
        certified: Option<Dpid>,
    ) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, id, tls = certified.is_some(), "switch connected");
        let mut conn = Conn::new(self.cfg.conn, Instant::now());
        if let Some(d) = certified {
            conn.bind_to(d);
        }
        let mut task = Task {
            srv: &self,
            conn,
            tx: None,
            id,
            peer,
            releases: HashMap::new(),
            acks: HashMap::new(),
            next_token: 1,
            events: Vec::new(),
            registered: None,
            decided: 0,
            answers: AnswerClock::default(),
            role: self.role.clone(),
            applied_role: None,
            acting: false,
            elsewhere: false,
            said_elsewhere: 0,
            probe_xid: None,
            last_probe: Instant::now(),
            waiting: None,
            agent: false,
            sources_sent: None,
            stats: HashMap::new(),
        };
        let (tx, rx) = mpsc::channel(self.cfg.channel.max(1));
        task.tx = Some(tx);
        let shutdown = stop.clone();
        let result = task.run(&mut sock, rx, stop).await;
        match result {
            Ok(()) => {}
            Err(e) => {
                tracing::info!(%peer, dpid = ?task.registered, error = %e, "switch connection lost")
            }
        }
        // A controller shutting down leaves the switches' flows alone (they
        // keep forwarding until it is back); only a switch that went away
        // makes the others forget its containers.
        if *shutdown.borrow() {
            if let Some(dpid) = task.registered {
                self.switches.remove(dpid, id, &self.ctl.metrics);
            }
        } else if let Some(dpid) = task.registered {
            if self.switches.remove(dpid, id, &self.ctl.metrics) {
                tracing::info!(%dpid, %peer, "datapath disconnected");
                // Its flows towards it stay while it may come back (an
                // agent restart): deleted if it is still away later.
                if let Ok(mut g) = self.gone.lock() {
                    g.insert(dpid, Instant::now() + self.cfg.host_gone_after);
                }
            }
        }
        sock.shutdown().await;
    }
}

/// A switch connection's socket: plain TCP (read with the kernel's receive
/// timestamps) or TLS.
enum Sock {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// What one I/O step did.
enum IoDone {
    /// Read this many bytes into the buffer (with the kernel's receive time).
    Read(usize, Option<SystemTime>),
    /// Wrote this many bytes of the output.
    Wrote(usize),
    /// The switch closed the connection.
    Eof,
}

impl Sock {
    /// One step: writes from `out` if given and possible, else reads into
    /// `buf` if given and possible; pending (wakers registered for both)
    /// otherwise.
    fn poll_io(
        &mut self,
        cx: &mut std::task::Context<'_>,
        buf: Option<&mut [u8]>,
        out: Option<&[u8]>,
    ) -> std::task::Poll<std::io::Result<IoDone>> {
        use std::task::Poll;
        let would_block = |e: &std::io::Error| e.kind() == std::io::ErrorKind::WouldBlock;
        match self {
            Sock::Tcp(s) => {
                if let Some(out) = out {
                    loop {
                        match s.poll_write_ready(cx) {
                            Poll::Ready(Ok(())) => match s.try_write(out) {
                                Ok(0) => return Poll::Ready(Err(write_zero())),
                                Ok(n) => return Poll::Ready(Ok(IoDone::Wrote(n))),
                                Err(e) if would_block(&e) => continue,
                                Err(e) => return Poll::Ready(Err(e)),
                            },
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending => break,
                        }
                    }
                }
                if let Some(buf) = buf {
                    loop {
                        match s.poll_read_ready(cx) {
                            Poll::Ready(Ok(())) => {
                                let sk = &*s;
                                match sk
                                    .try_io(Interest::READABLE, || daolinet_rxstamp::recv(sk, buf))
                                {
                                    Ok((0, _)) => return Poll::Ready(Ok(IoDone::Eof)),
                                    Ok((n, at)) => return Poll::Ready(Ok(IoDone::Read(n, at))),
                                    Err(e) if would_block(&e) => continue,
                                    Err(e) => return Poll::Ready(Err(e)),
                                }
                            }
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending => break,
                        }
                    }
                }
                Poll::Pending
            }
            Sock::Tls(t) => {
                use tokio::io::{AsyncRead, AsyncWrite};
                let mut t = std::pin::Pin::new(&mut **t);
                if let Some(out) = out {
                    match t.as_mut().poll_write(cx, out) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Err(write_zero())),
                        Poll::Ready(Ok(n)) => return Poll::Ready(Ok(IoDone::Wrote(n))),
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {}
                    }
                } else if t.get_ref().1.wants_write() {
                    // TLS records of earlier writes still to go out.
                    if let Poll::Ready(Err(e)) = t.as_mut().poll_flush(cx) {
                        return Poll::Ready(Err(e));
                    }
                }
                if let Some(buf) = buf {
                    let mut rb = tokio::io::ReadBuf::new(buf);
                    match t.as_mut().poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                            return Poll::Ready(Ok(IoDone::Eof))
                        }
                        Poll::Ready(Ok(())) => {
                            return Poll::Ready(Ok(IoDone::Read(rb.filled().len(), None)))
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {}
                    }
                }
                Poll::Pending
            }
        }
    }

    /// Writes what the socket takes now of `out`, without waiting.
    fn write_now(&mut self, out: &[u8]) -> std::io::Result<usize> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match self.poll_io(&mut cx, None, Some(out)) {
            std::task::Poll::Ready(Ok(IoDone::Wrote(n))) => Ok(n),
            std::task::Poll::Ready(Ok(_)) | std::task::Poll::Pending => Ok(0),
            std::task::Poll::Ready(Err(e)) => Err(e),
        }
    }

    /// Writes all of `out` (bounded by the caller's timeout).
    async fn write_all(&mut self, out: &mut BytesMut) -> std::io::Result<()> {
        while !out.is_empty() {
            let done = std::future::poll_fn(|cx| self.poll_io(cx, None, Some(out))).await?;
            if let IoDone::Wrote(n) = done {
                out.advance(n);
            }
        }
        Ok(())
    }

    /// Closes the connection (TLS: close_notify first).
    async fn shutdown(&mut self) {
        match self {
            Sock::Tcp(s) => {
                let _ = s.shutdown().await;
            }
            Sock::Tls(t) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), t.shutdown()).await;
            }
        }
    }
}

fn write_zero() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::WriteZero, "write returned 0")
}

/// Binds the OpenFlow listener with a deep accept queue (4096, capped by
/// `net.core.somaxconn`): after a controller restart thousands of switches
/// reconnect at the same moment.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(4096)
}

fn role_name(r: u32) -> &'static str {
    match r {
        OFPCR_ROLE_MASTER => "master",
        OFPCR_ROLE_SLAVE => "slave",
        OFPCR_ROLE_EQUAL => "equal",
        _ => "other",
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Groups decisions by datapath, keeping their order within each datapath
/// and the order in which datapaths first appear.
fn group_by_dpid(ds: impl IntoIterator<Item = Decision>) -> Vec<(Dpid, Vec<Decision>)> {
    let mut out: Vec<(Dpid, Vec<Decision>)> = Vec::new();
    // Indexed: a host gone makes decisions for every other datapath.
    let mut at: HashMap<Dpid, usize> = HashMap::new();
    for d in ds {
        let dpid = d.dpid();
        match at.get(&dpid).and_then(|i| out.get_mut(*i)) {
            Some((_, v)) => v.push(d),
            None => {
                at.insert(dpid, out.len());
                out.push((dpid, vec![d]));
            }
        }
    }
    out
}

enum Wake {
    Io(std::io::Result<IoDone>),
    Cmd(Option<Cmd>),
    Role,
    Tick,
    Stop,
}

/// Answer times of PACKET_INs: from the kernel's receive timestamp of the
/// read that brought them to the `write` that handed the last byte of their
/// answers to the kernel (so the controller's own wake-up, queueing and
/// scheduling are included, unlike the decision time).
#[derive(Debug, Default)]
struct AnswerClock {
    /// Bytes of the output stream handed to the kernel so far.
    written: u64,
    /// (stream offset where a read batch's answers end, its receive time,
    /// PACKET_INs it held), oldest first.
    marks: VecDeque<(u64, SystemTime, u64)>,
}

impl AnswerClock {
    /// The answers to `n` PACKET_INs received at `at` end where the output,
    /// holding `queued` bytes not yet written, ends now.
    fn mark(&mut self, queued: usize, at: SystemTime, n: u64) {
        if n > 0 {
            self.marks.push_back((self.written + queued as u64, at, n));
        }
    }

    /// `n` more bytes were written: records the batches now fully written.
    fn wrote(&mut self, n: usize, metrics: &Metrics) {
        self.written += n as u64;
        if self.marks.front().is_none_or(|m| m.0 > self.written) {
            return;
        }
        let now = SystemTime::now();
        while let Some(&(end, at, count)) = self.marks.front() {
            if end > self.written {
                break;
            }
            metrics.packet_in_answered(daolinet_rxstamp::age(at, now), count);
            self.marks.pop_front();
        }
    }
}

struct Task<'a> {
    srv: &'a Server,
    conn: Conn,
    tx: Option<mpsc::Sender<Cmd>>,
    id: u64,
    peer: SocketAddr,
    releases: HashMap<u64, Release>,
    /// Model-change barriers awaited, by token (see [`Applied`]).
    acks: HashMap<u64, ApplyGuard>,
    next_token: u64,
    events: Vec<Event>,
    registered: Option<Dpid>,
    /// PACKET_INs decided since the last read.
    decided: u64,
    answers: AnswerClock,
    /// This controller's role (election), and the one last applied here.
    role: watch::Receiver<Role>,
    applied_role: Option<Role>,
    /// May this connection change the switch (alone, or master and not
    /// refused by the switch)?
    acting: bool,
    /// The switch's generation id names a master elected by controllers
    /// on another store: not acting on it.
    elsewhere: bool,
    /// The kinds of role (alone 1, master 2, slave 4) in which that was
    /// said (once per connection and kind: not again for each new leader);
    /// 8: an untagged generation id was taken (said once).
    said_elsewhere: u8,
    /// The ROLE_REQUEST NOCHANGE awaiting the switch's generation id.
    probe_xid: Option<u32>,
    /// Alone: when the switch was last asked for its generation id.
    last_probe: Instant,
    /// PACKET_INs that arrived before the switch's answer to the first
    /// probe (at most [`MAX_WAITING`]), answered if this controller then
    /// acts.
    waiting: Option<Vec<daolinet_openflow::PacketIn>>,
    /// The switch introduced itself as a DaoliNet agent
    /// ([`Ext::AgentHello`]): it takes port sources, sends drop samples.
    agent: bool,
    /// The port sources last sent to it.
    sources_sent: Option<Vec<PortSource>>,
    /// Counter reads of live traces awaiting the switch, by xid.
    stats: HashMap<u32, oneshot::Sender<Result<SwitchFlows, String>>>,
}

impl Task<'_> {
    async fn run(
        &mut self,
        sock: &mut Sock,
        mut rx: mpsc::Receiver<Cmd>,
        mut stop: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let cfg = self.srv.cfg;
        // Reads land in `scratch` (with their kernel receive time), then in
        // `rbuf`, which only grows to hold what is not yet decoded.
        let mut scratch = vec![0u8; cfg.read_buf.max(4096)];
        let mut rbuf = BytesMut::new();
        if let Sock::Tcp(s) = &*sock {
            if let Err(e) = daolinet_rxstamp::enable(s) {
                tracing::debug!(error = %e, "no kernel receive timestamps");
            }
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.conn.is_closed() {
                // Flush what is queued (the OFPT_ERROR explaining why), briefly.
                let out = self.conn.out();
                let _ = tokio::time::timeout(Duration::from_secs(1), sock.write_all(out)).await;
                return Ok(());
            }
            let queued = self.conn.out().len();
            if queued > cfg.max_out_bytes.saturating_mul(4) {
                // Not reading at all while others keep sending it decisions.
                return Err(std::io::Error::other(format!(
                    "switch does not read: {queued} bytes queued for it"
                )));
            }
            let want_read = queued < cfg.max_out_bytes;
            let want_write = !self.conn.out().is_empty();
            let role_live = self.role.has_changed().is_ok();
            let wake = {
                let out: &[u8] = self.conn.out();
                let io = std::future::poll_fn(|cx| {
                    sock.poll_io(
                        cx,
                        want_read.then_some(&mut scratch[..]),
                        want_write.then_some(out),
                    )
                });
                tokio::select! {
                    r = io => Wake::Io(r),
                    c = rx.recv() => Wake::Cmd(c),
                    _ = self.role.changed(), if role_live => Wake::Role,
                    _ = tick.tick() => Wake::Tick,
                    _ = stopped(&mut stop) => Wake::Stop,
                }
            };
            let now = Instant::now();
            let mut received_at = None;
            match wake {
                Wake::Io(Ok(IoDone::Eof)) => return Ok(()),
                Wake::Io(Ok(IoDone::Read(n, at))) => {
                    rbuf.extend_from_slice(scratch.get(..n).unwrap_or_default());
                    // Without a kernel timestamp (TLS, or timestamping not
                    // on yet for the first reads): the time of the read.
                    received_at = at.or_else(|| Some(SystemTime::now()));
                    let used = self.conn.receive(&rbuf, now, &mut self.events);
                    tracing::trace!(len = rbuf.len(), used, "read");
                    rbuf.advance(used);
                }
                Wake::Io(Ok(IoDone::Wrote(n))) => self.wrote(n),
                Wake::Io(Err(e)) => return Err(e),
                Wake::Cmd(Some(c)) => {
                    if self.command(c) {
                        return Ok(());
                    }
                    // Take whatever else is queued now: one write for all.
                    for _ in 0..256 {
                        match rx.try_recv() {
                            Ok(c) => {
                                if self.command(c) {
                                    return Ok(());
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                Wake::Cmd(None) => return Ok(()),
                Wake::Role => self.apply_role(),
                Wake::Tick => {
                    self.conn.tick(now, &mut self.events);
                    self.probe(now);
                }
                Wake::Stop => return Ok(()),
            }
            self.decided = 0;
            self.events().await;
            if let Some(at) = received_at {
                let queued = self.conn.out().len();
                self.answers.mark(queued, at, self.decided);
            }
            // Answer at once: one write for everything this wake-up queued.
            if !self.conn.out().is_empty() {
                let n = sock.write_now(self.conn.out())?;
                self.wrote(n);
            }
        }
    }

    /// `n` bytes of the output were written.
    fn wrote(&mut self, n: usize) {
        if n > 0 {
            self.conn.out().advance(n);
            self.answers.wrote(n, &self.srv.ctl.metrics);
        }
    }

    /// Handles a command; true when the connection must end now.
    fn command(&mut self, c: Cmd) -> bool {
        match c {
            Cmd::Decisions { ds, then, ack } => {
                if !self.acting {
                    // Not ours to send (a slave, or the switch has a newer
                    // master); a PACKET_OUT waiting on this is dropped (and
                    // a mutation waiting on it released).
                    drop(ack);
                    return false;
                }
                for d in &ds {
                    if let Err(e) = self.conn.send_decision(d) {
                        tracing::warn!(error = %e, ?d, "decision not translatable");
                    }
                }
                if then.is_some() || ack.is_some() {
                    let token = self.next_token;
                    self.next_token += 1;
                    match self.conn.barrier(Some(token)) {
                        None => {
                            if let Some(r) = then {
                                self.releases.insert(token, r);
                            }
                            if let Some(a) = ack {
                                self.acks.insert(token, a);
                            }
                        }
                        Some(_) => {
                            if let Some(r) = then {
                                r.fire();
                            }
                        }
                    }
                }
                false
            }
            Cmd::Bytes(b) => {
                if self.acting {
                    self.conn.sink().extend_from_slice(&b);
                }
                false
            }
            Cmd::Replaced => {
                tracing::info!(dpid = ?self.registered, peer = %self.peer,
                    "a new connection took over this datapath: closing the old one");
                true
            }
            Cmd::Resync => {
                if self.acting {
                    self.conn.request_flows();
                }
                false
            }
            Cmd::Sources => {
                self.send_sources();
                false
            }
            Cmd::Stats { cookie, reply } => {
                match self.conn.request_flow_stats(cookie) {
                    Some(xid) => {
                        self.stats.insert(xid, reply);
                    }
                    None => {
                        let _ = reply.send(Err("too many counter reads waiting".into()));
                    }
                }
                false
            }
        }
    }

    /// Send a DaoliNet agent the sources of its host's container ports
    /// (anti-spoofing in its datapath), when they differ from the last
    /// ones sent.
    fn send_sources(&mut self) {
        let (true, true, Some(dpid)) = (self.agent, self.acting, self.registered) else {
            return;
        };
        let Ok(snap) = self.srv.ctl.snapshot() else {
            return;
        };
        let Some(host) = snap.host_by_dpid(dpid) else {
            return;
        };
        let mut v: Vec<PortSource> = snap
            .containers_on(&host.name)
            .map(|c| PortSource {
                ofport: c.port,
                mac: c.mac.0,
                ipv4: c.ip.octets(),
            })
            .collect();
        v.sort();
        if self.sources_sent.as_ref() == Some(&v) {
            return;
        }
        tracing::debug!(%dpid, ports = v.len(), "port sources sent");
        self.conn.send_change(&Message::Experimenter(
            Ext::PortSources(v.clone()).to_message(),
        ));
        self.sources_sent = Some(v);
    }

    /// A DaoliNet message from the switch.
    fn experimenter(&mut self, e: &daolinet_openflow::ExperimenterMsg) {
        let Some(dpid) = self.registered else { return };
        match Ext::from_message(e) {
            Ok(Ext::AgentHello) => {
                tracing::info!(%dpid, "the switch is a DaoliNet agent");
                self.agent = true;
                self.send_sources();
            }
            Ok(Ext::DropSample(d)) => {
                self.srv
                    .ctl
                    .events
                    .record_drop(dpid, d.in_port, &d.data, &d.reason);
            }
            Ok(Ext::PortSources(_)) => {
                tracing::debug!(%dpid, "port sources from a switch ignored");
            }
            Err(err) => tracing::debug!(%dpid, "experimenter message ignored: {err}"),
        }
    }

    /// Takes this controller's current role on the switch (after the
    /// handshake, and whenever the election changes it). Whatever the
    /// role, it first stops acting and asks for the switch's generation id
    /// (ROLE_REQUEST NOCHANGE): the answer ([`Task::probed`]) says whether
    /// another controller set's master holds the switch; if not, the
    /// master asks for the master role and acts ([`Task::act`]), a slave
    /// asks for the slave role, and a controller alone acts (staying
    /// EQUAL).
    fn apply_role(&mut self) {
        let role = *self.role.borrow_and_update();
        if self.registered.is_none() {
            return;
        }
        if self.applied_role == Some(role) {
            return;
        }
        self.applied_role = Some(role);
        // Nothing is sent that changes the switch before its answer (a
        // NOCHANGE request also drops what a master held).
        self.acting = false;
        if self.waiting.is_none() {
            self.waiting = Some(Vec::new());
        }
        self.last_probe = Instant::now();
        self.probe_xid = Some(self.conn.request_role(OFPCR_ROLE_NOCHANGE, 0));
    }

    /// Starts acting on the switch: reads its flows (then reconciles them,
    /// [`Task::reconcile`]), installs the deny meter, sends port sources.
    fn act(&mut self) {
        self.acting = true;
        self.conn.request_flows();
        self.conn.install_deny_meter();
        self.send_sources();
    }

    /// The switch's answer to ROLE_REQUEST NOCHANGE: its generation id
    /// (0 from the agent and all ones from Open vSwitch mean none; a
    /// switch without roles counts as none). One that another controller
    /// set elected ([`generation::holder`]) means this controller does
    /// not act on the switch and asks for no role there, said in one line
    /// once per connection and role; otherwise it takes its role.
    fn probed(&mut self, switch: u64) {
        let Some(role) = self.applied_role else {
            return;
        };
        let holder = generation::holder(switch, self.srv.tag);
        if holder == Holder::Untagged && self.srv.tag.is_some() && self.said_elsewhere & 8 == 0 {
            self.said_elsewhere |= 8;
            tracing::warn!(
                dpid = ?self.registered,
                "the switch's generation id {switch:#x} carries no controller set's tag (a set \
                 from before tags, or another kind of controller): taking it"
            );
        }
        let leave = match holder {
            Holder::Elsewhere => true,
            Holder::Untagged => self.srv.tag.is_none(),
            Holder::Nobody | Holder::Us => false,
        };
        match leave {
            true => {
                self.acting = false;
                self.elsewhere = true;
                self.waiting = None;
                let kind = match role {
                    Role::Alone => 1,
                    Role::Master { .. } => 2,
                    Role::Slave { .. } => 4,
                };
                if self.said_elsewhere & kind == 0 {
                    self.said_elsewhere |= kind;
                    self.srv.ctl.metrics.mastered_elsewhere();
                    let dpid = self.registered.map(|d| d.to_string()).unwrap_or_default();
                    let tag = self.srv.tag.map(|t| t.to_string()).unwrap_or_default();
                    let what = match role {
                        Role::Alone => "this controller has no election and does not act on it: \
                             give every controller of a switch the same --store"
                            .to_string(),
                        Role::Master { .. } => format!(
                            "this controller, the master of its set (tag {tag}), does not take \
                             it: it stays EQUAL there and acts on nothing; give every controller \
                             of a switch the same --store and --etcd-prefix"
                        ),
                        Role::Slave { .. } => format!(
                            "this controller, a slave of its set (tag {tag}), asks for no role \
                             there and acts on nothing; give every controller of a switch the \
                             same --store and --etcd-prefix"
                        ),
                    };
                    tracing::error!(
                        "datapath {dpid} at {} has a master elected by controllers on another \
                         store (generation id {switch:#x}); {what}",
                        self.peer
                    );
                }
            }
            false => match role {
                Role::Alone => {
                    if !self.acting && !self.elsewhere {
                        self.act();
                    }
                }
                Role::Master { generation } => {
                    if !self.acting {
                        if let Some(dpid) = self.registered {
                            tracing::info!(%dpid, generation, "asking for the master role");
                        }
                        // Everything this connection sends from now on is
                        // held by the Conn until the switch accepts us.
                        self.conn.request_role(OFPCR_ROLE_MASTER, generation);
                        self.act();
                    }
                }
                Role::Slave { generation } => {
                    if let Some(g) = generation {
                        self.conn.request_role(OFPCR_ROLE_SLAVE, g);
                    }
                }
            },
        }
    }

    /// Alone and acting: asks the switch for its generation id again every
    /// [`PROBE_EVERY`] (see [`Role::Alone`]).
    fn probe(&mut self, now: Instant) {
        if self.acting
            && self.applied_role == Some(Role::Alone)
            && now.duration_since(self.last_probe) >= PROBE_EVERY
        {
            self.last_probe = now;
            self.probe_xid = Some(self.conn.request_role(OFPCR_ROLE_NOCHANGE, 0));
        }
    }

    /// The switch's flows arrived: keeps the valid ones, deletes the stale
    /// ones one by one, adds the base flows it lacks, then a BARRIER. No
    /// wildcard deletion: traffic on valid flows never stops.
    fn reconcile(&mut self, flows: Vec<FlowStats>) {
        let Some(dpid) = self.registered else { return };
        let ctl = &self.srv.ctl;
        let Ok(snap) = ctl.snapshot() else { return };
        let host = snap.host_by_dpid(dpid).cloned();
        let installed: Vec<Option<FlowSpec>> = flows
            .iter()
            .map(|f| translate::from_flow_stats(dpid, f))
            .collect();
        let r = daolinet_policy::reconcile(&snap, &ctl.cfg, dpid, &installed);
        if host.is_none() {
            tracing::warn!(%dpid, "datapath is not a registered host: no flows until it is");
        } else {
            for &i in &r.delete {
                if let Some(f) = flows.get(i) {
                    self.conn
                        .send_change(&Message::FlowMod(translate::delete_exactly(f)));
                }
            }
            for f in &r.add {
                if let Err(e) = self.conn.send_flow(f) {
                    tracing::warn!(error = %e, "base flow not translatable");
                }
            }
            let pick = |idx: &[usize]| -> Vec<FlowSpec> {
                idx.iter()
                    .filter_map(|&i| installed.get(i).cloned().flatten())
                    .collect()
            };
            if let Err(e) = ctl.reconciled(dpid, &pick(&r.keep), &pick(&r.delete), &r.add) {
                tracing::warn!(error = %e, "recording reconciled flows");
            }
            tracing::info!(
                %dpid,
                kept = r.keep.len(),
                deleted = r.delete.len(),
                added = r.add.len(),
                "datapath reconciled"
            );
        }
        // Always a BARRIER: it marks the end of the initialisation.
        self.conn.barrier(None);
        self.srv.switches.set_host(dpid, self.id, host);
    }

    async fn events(&mut self) {
        let mut events = std::mem::take(&mut self.events);
        for ev in events.drain(..) {
            self.event(ev).await;
        }
        // Keep the allocation for the next batch.
        self.events = events;
    }

    async fn event(&mut self, ev: Event) {
        let srv = self.srv;
        match ev {
            Event::Ready { dpid, features } => {
                tracing::info!(%dpid, peer = %self.peer, n_tables = features.n_tables, "datapath connected");
                let Some(tx) = self.tx.clone() else { return };
                let old = srv.switches.insert(
                    dpid,
                    Handle {
                        id: self.id,
                        tx,
                        host: None,
                    },
                    &srv.ctl.metrics,
                );
                if let Some(old) = old {
                    tracing::info!(%dpid, "datapath reconnected: replacing its previous connection");
                    let _ = old.tx.try_send(Cmd::Replaced);
                }
                self.registered = Some(dpid);
                self.apply_role();
            }
            Event::Role { xid, reply: r } if self.probe_xid == Some(xid) => {
                self.probe_xid = None;
                tracing::debug!(dpid = ?self.registered, generation = r.generation_id, "switch generation id");
                self.probed(r.generation_id);
                self.answer_waiting().await;
            }
            Event::RoleRefused { xid, error: e } if self.probe_xid == Some(xid) => {
                // A switch without roles: no master can be elected there.
                self.probe_xid = None;
                tracing::debug!(dpid = ?self.registered, error = %describe(&e),
                    "the switch does not answer ROLE_REQUEST NOCHANGE: taking our role");
                self.probed(0);
                self.answer_waiting().await;
            }
            Event::Role { reply: r, .. } => {
                tracing::info!(dpid = ?self.registered, role = role_name(r.role), generation = r.generation_id, "switch role");
                if r.role != OFPCR_ROLE_MASTER && r.role != OFPCR_ROLE_EQUAL {
                    self.acting = false;
                }
            }
            Event::RoleRefused { error: e, .. } => {
                tracing::warn!(dpid = ?self.registered, error = %describe(&e),
                    "the switch refused our role (a newer master?): not acting on it");
                self.acting = false;
            }
            Event::Flows(flows) => {
                if self.acting {
                    self.reconcile(flows);
                }
            }
            Event::PacketIn(p) => self.packet_in(p).await,
            Event::Described(_) => {
                // Open vSwitch: denials punt through a meter from now on
                // (see translate::Denials). Only by one that may change it.
                if self.acting {
                    self.conn.install_deny_meter();
                }
            }
            Event::FlowRemoved(f) => {
                let Some(dpid) = self.registered else { return };
                if let Some(m) = translate::from_match(&f.match_) {
                    let _ = srv
                        .ctl
                        .flow_removed(dpid, f.table_id, f.priority, &m, f.cookie);
                }
            }
            Event::Ports(ports) => {
                let names: Vec<String> = ports
                    .iter()
                    .map(|p| format!("{}:{}", p.port_no, p.name))
                    .collect();
                tracing::info!(dpid = ?self.registered, ports = ?names, "port description");
            }
            Event::PortStatus(p) => {
                tracing::debug!(dpid = ?self.registered, reason = p.reason, port = p.desc.port_no, name = %p.desc.name, "port status");
            }
            Event::SwitchError { xid, error } => {
                tracing::warn!(dpid = ?self.registered, xid, error = %describe(&error), "switch reported an error");
                if error
                    .code()
                    .is_some_and(|c| c.err_type == OFPET_BAD_REQUEST && c.code == OFPBRC_IS_SLAVE)
                {
                    // Another controller became master there.
                    self.acting = false;
                }
            }
            Event::BarrierDone(token) => {
                if let Some(r) = self.releases.remove(&token) {
                    r.fire();
                }
                // Dropping the guard tells the mutation its flows are in place.
                self.acks.remove(&token);
            }
            Event::Experimenter(e) => self.experimenter(&e),
            Event::FlowStats { xid, flows } => {
                if let Some(reply) = self.stats.remove(&xid) {
                    let switch = if self.agent {
                        "daolinet-agent"
                    } else if self.conn.caches_flows() {
                        "Open vSwitch"
                    } else {
                        "OpenFlow switch"
                    };
                    let _ = reply.send(flows.map(|flows| SwitchFlows { switch, flows }));
                }
            }
            Event::Closed(why) => {
                if matches!(why, CloseReason::WrongDatapath { .. }) {
                    self.srv.ctl.metrics.tls_refused();
                }
                tracing::warn!(peer = %self.peer, dpid = ?self.registered, reason = %why, "closing switch connection");
            }
        }
    }

    /// After the switch's first answer: the PACKET_INs that waited for it,
    /// answered if this controller acts on the switch.
    async fn answer_waiting(&mut self) {
        let Some(waiting) = self.waiting.take() else {
            return;
        };
        if self.acting {
            for p in waiting {
                self.packet_in(p).await;
            }
        }
    }

    async fn packet_in(&mut self, p: daolinet_openflow::PacketIn) {
        let Some(dpid) = self.registered else { return };
        if let Some(w) = &mut self.waiting {
            if w.len() < MAX_WAITING {
                w.push(p);
            }
            return;
        }
        if !self.acting {
            // Only the master answers (an EQUAL connection of a slave still
            // gets PACKET_INs until its ROLE_REQUEST is accepted).
            return;
        }
        let Some(in_port) = p.in_port() else {
            tracing::debug!(%dpid, "PACKET_IN without in_port ignored");
            return;
        };
        let srv = self.srv;
        let t0 = Instant::now();
        // Through a punting denial (Open vSwitch): decided again, sent on
        // only if allowed now.
        let decided = match translate::punted_by_denial(&p) {
            None => srv.ctl.decide(dpid, in_port, &p.data),
            Some(c) => srv.ctl.decide_punted_denial(dpid, in_port, &p.data, c),
        };
        let out = match decided {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "policy unavailable");
                return;
            }
        };
        // Local flows now, remote groups later, PACKET_OUTs last. Two passes
        // over the decisions, so that nothing is collected on the way (no
        // allocation per PACKET_IN beyond the remote groups).
        let mut decisions = out.decisions;
        // A frame the switch truncated (shorter than total_len, e.g. a GSO
        // super-frame beyond the agent's punt capacity) must not be sent
        // back out: the receiver would drop it as corrupt. The flows still
        // go; the sender's retransmission takes them.
        if p.data.len() < usize::from(p.total_len) {
            tracing::debug!(
                %dpid,
                in_port,
                total_len = p.total_len,
                data_len = p.data.len(),
                "truncated PACKET_IN: flows only, no PACKET_OUT"
            );
            decisions.retain(|d| !matches!(d, Decision::PacketOut { .. }));
        }
        let mut local_flows = false;
        let mut has_remote = false;
        let mut po_barrier = false;
        for d in &decisions {
            if d.dpid() != dpid {
                has_remote = true;
            } else if matches!(d, Decision::PacketOut { .. }) {
                po_barrier |= translate::packet_out_needs_barrier(d);
            } else {
                local_flows = true;
                if let Err(e) = self.conn.send_decision(d) {
                    tracing::warn!(error = %e, "decision not translatable");
                }
            }
        }
        // See translate::packet_out_needs_barrier: a same-host pair's
        // PACKET_OUT goes straight out of a port and needs no BARRIER.
        if local_flows && po_barrier {
            self.conn.barrier(None);
        }
        let mut remote: Vec<(Dpid, Vec<Decision>)> = Vec::new();
        let mut held_buf: Option<BytesMut> = None;
        for d in decisions.drain(..) {
            let to = d.dpid();
            if to != dpid {
                match remote.iter_mut().find(|(x, _)| *x == to) {
                    Some((_, v)) => v.push(d),
                    None => remote.push((to, vec![d])),
                }
            } else if !matches!(d, Decision::PacketOut { .. }) {
                // Sent in the first pass.
            } else if !has_remote {
                if let Err(e) = self.conn.send_decision(&d) {
                    tracing::warn!(error = %e, "PACKET_OUT not translatable");
                }
            } else if let Decision::PacketOut {
                in_port,
                actions,
                data,
                ..
            } = &d
            {
                let b = held_buf.get_or_insert_with(BytesMut::new);
                if let Err(e) = translate::put_packet_out(*in_port, actions, data, 0, b) {
                    tracing::warn!(error = %e, "PACKET_OUT not translatable");
                }
            }
        }
        let mut held: Option<Bytes> = held_buf.map(BytesMut::freeze);
        for (to, ds) in remote {
            let then = match (held.take(), &self.tx) {
                (Some(bytes), Some(tx)) => Some(Release {
                    to: tx.clone(),
                    bytes,
                }),
                _ => None,
            };
            let Some(rtx) = srv.switches.get(to) else {
                tracing::debug!(%dpid, remote = %to, "remote datapath not connected");
                if let Some(r) = then {
                    self.conn.sink().extend_from_slice(&r.bytes);
                }
                continue;
            };
            match rtx.try_send(Cmd::Decisions {
                ds,
                then,
                ack: None,
            }) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(Cmd::Decisions { then, .. }))
                | Err(mpsc::error::TrySendError::Closed(Cmd::Decisions { then, .. })) => {
                    tracing::warn!(remote = %to, "remote datapath busy or gone: its flows were not sent");
                    if let Some(r) = then {
                        self.conn.sink().extend_from_slice(&r.bytes);
                    }
                }
                Err(_) => {}
            }
        }
        srv.ctl.metrics.packet_in(t0.elapsed(), &out.verdict);
        self.decided += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected(m: &Metrics) -> String {
        m.render()
            .lines()
            .find(|l| l.starts_with("daolinet_switches_connected "))
            .unwrap_or_default()
            .to_string()
    }

    /// Two switches registering at once (two agents reconnecting together
    /// after a controller restart) leave the gauge at 2, and their leaving
    /// at 0; many rounds, so that the threads interleave every way the
    /// scheduler lets them. With the count stored after the lock was
    /// released, the thread that registered first could store its smaller
    /// count last: restarts.rs waited 30 s for `switches_connected 2` with
    /// both agents connected (1 fresh-clone CI run in about 11). With the
    /// old code this test failed 4 runs of 5 on a loaded 2-core machine.
    #[test]
    fn concurrent_registrations_leave_the_gauge_exact() {
        let switches = Switches::default();
        let metrics = Metrics::default();
        let barrier = std::sync::Barrier::new(2);
        let (tx, _rx) = mpsc::channel(1);
        for round in 0..2_000u64 {
            for (phase, want) in [("register", 2), ("leave", 0)] {
                std::thread::scope(|s| {
                    for k in 0..2u64 {
                        let (switches, metrics, barrier, tx) = (&switches, &metrics, &barrier, &tx);
                        s.spawn(move || {
                            let id = round * 2 + k;
                            barrier.wait();
                            if phase == "register" {
                                let h = Handle {
                                    id,
                                    tx: tx.clone(),
                                    host: None,
                                };
                                switches.insert(Dpid(k + 1), h, metrics);
                            } else {
                                // A stale connection id removes nothing.
                                assert!(!switches.remove(Dpid(k + 1), u64::MAX, metrics));
                                assert!(switches.remove(Dpid(k + 1), id, metrics));
                            }
                        });
                    }
                });
                assert_eq!(
                    connected(&metrics),
                    format!("daolinet_switches_connected {want}"),
                    "round {round}, {phase}"
                );
            }
        }
    }
}
