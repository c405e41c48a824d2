//! The OpenFlow 1.3 switch, sans-IO: controller sessions (roles, async
//! config; HELLO, version and echo are the connection's, [`crate::conn`]),
//! FLOW_MOD through the [`FlowTable`], multipart replies, punts turned into PACKET_IN (rate limited per port),
//! PACKET_OUT executed in userspace, FLOW_REMOVED and PORT_STATUS, the
//! local ARP responder and the standalone fail mode (L2 learning).
//!
//! Every entry point returns [`Effects`]: messages for connections, map
//! operations for the datapath, frames to transmit on ports. The event loop
//! ([`crate::engine`]) applies them in order.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use daolinet_common::{Action, ActionKind, PuntReason, N_TABLES};
use daolinet_openflow::{
    self as of, AsyncConfig, ErrorCode, ErrorMsg, FlowMod, Frame, Message, MultipartReply,
    MultipartReplyBody as Rep, MultipartRequestBody as Req, PacketIn, PacketOut,
};

use crate::compile::compile_actions;
use crate::datapath::Punt;
use crate::groups::GroupTable;
use crate::meters::MeterTable;
use crate::oftable::{Counters, FlowTable, Refs};
use crate::packet::{arp_reply, complete_l4_checksum, flow_key};
use crate::pipeline::{Emit, Pipeline};
use crate::table::MapOp;

/// Identifies one controller connection.
pub type ConnId = u64;

/// Cookie of the flows the standalone fail mode installs.
pub const STANDALONE_COOKIE: u64 = 0xda01_1000_0000_0001;

/// Most source MACs the standalone fail mode remembers (Open vSwitch's
/// default MAC table holds 2,048). A full table is forgotten and learning
/// starts again, so that a container sending from ever new addresses cannot
/// grow the agent's memory without bound; meanwhile unknown destinations
/// are flooded, as any learning switch does.
pub const MAX_LEARNED_MACS: usize = 8192;

/// What to do while no controller is connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FailMode {
    /// Keep the flows; punted packets are dropped.
    #[default]
    Secure,
    /// Keep the flows and forward table misses by plain L2 learning.
    Standalone,
}

/// A port as the switch describes it to controllers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortDesc {
    /// OpenFlow port number.
    pub ofport: u32,
    /// Interface name.
    pub name: String,
    /// Interface MAC address.
    pub mac: [u8; 6],
    /// Link up.
    pub up: bool,
}

impl PortDesc {
    fn to_of(&self) -> of::Port {
        let mut p = of::Port::new(self.ofport, of::MacAddr(self.mac), self.name.clone());
        p.curr = of::OFPPF_10GB_FD | of::OFPPF_COPPER;
        p.curr_speed = 10_000_000;
        p.max_speed = 10_000_000;
        if !self.up {
            p.state = of::OFPPS_LINK_DOWN;
        }
        p
    }
}

/// Static configuration of the switch.
#[derive(Clone, Debug)]
pub struct SwitchSettings {
    /// FEATURES_REPLY datapath id.
    pub datapath_id: u64,
    /// PACKET_INs per second allowed per ingress port (0 = unlimited).
    pub packet_in_rate: u32,
    /// Burst of PACKET_INs allowed per port above the rate.
    pub packet_in_burst: u32,
    /// Answer containers' ARP requests with this MAC locally.
    pub arp_responder: Option<[u8; 6]>,
    /// Behaviour without a controller.
    pub fail_mode: FailMode,
}

impl Default for SwitchSettings {
    fn default() -> Self {
        SwitchSettings {
            datapath_id: 1,
            packet_in_rate: 1000,
            packet_in_burst: 200,
            arp_responder: None,
            fail_mode: FailMode::Secure,
        }
    }
}

/// Side effects for the I/O edge, in the order they must happen.
#[derive(Debug, Default)]
pub struct Effects {
    /// Map operations (apply before sending the replies).
    pub ops: Vec<MapOp>,
    /// Messages: connection, xid, message.
    pub send: Vec<(ConnId, u32, Message)>,
    /// Frames to transmit: OpenFlow port (or OFPP_LOCAL), frame.
    pub emit: Vec<(u32, Vec<u8>)>,
    /// Connections to close after sending.
    pub close: Vec<ConnId>,
}

impl Effects {
    /// Append `o` after these effects.
    pub fn extend(&mut self, o: Effects) {
        append(&mut self.ops, o.ops);
        append(&mut self.send, o.send);
        append(&mut self.emit, o.emit);
        append(&mut self.close, o.close);
    }
}

/// Append `src` to `dst`, moving it instead when `dst` is empty: the map
/// operations of a bulk delete (a million) are not copied again.
pub fn append<T>(dst: &mut Vec<T>, src: Vec<T>) {
    if dst.is_empty() {
        *dst = src;
    } else {
        dst.extend(src);
    }
}

/// Counters of the switch itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SwitchCounters {
    /// PACKET_INs sent (to at least one controller).
    pub packet_in: u64,
    /// Punts dropped by the per-port rate limit.
    pub packet_in_rate_limited: u64,
    /// Punts dropped because no controller was connected (secure mode).
    pub punt_no_controller: u64,
    /// ARP requests answered locally.
    pub arp_replies: u64,
    /// PACKET_OUTs executed.
    pub packet_out: u64,
    /// FLOW_MODs applied.
    pub flow_mods: u64,
    /// OFPT_ERRORs sent.
    pub errors: u64,
}

#[derive(Clone, Debug)]
struct Session {
    role: u32,
    async_cfg: AsyncConfig,
}

/// The OpenFlow 1.3 default: masters/equals get PACKET_IN (no match and
/// action), all PORT_STATUS and all FLOW_REMOVED; slaves PORT_STATUS only.
pub const DEFAULT_ASYNC: AsyncConfig = AsyncConfig {
    packet_in_mask: [0b011, 0],
    port_status_mask: [0b111, 0b111],
    flow_removed_mask: [0b1111, 0],
};

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at_ns: u64,
}

struct PortState {
    desc: PortDesc,
    added_ns: u64,
}

/// The switch.
pub struct Switch {
    /// The flow table.
    pub flows: FlowTable,
    settings: SwitchSettings,
    sessions: BTreeMap<ConnId, Session>,
    ports: BTreeMap<u32, PortState>,
    config: of::SwitchConfig,
    generation: Option<u64>,
    buckets: HashMap<u32, Bucket>,
    macs: HashMap<[u8; 6], u32>,
    /// Multipart answers being produced a step at a time, by connection.
    jobs: BTreeMap<ConnId, Job>,
    /// The groups.
    pub groups: GroupTable,
    /// The meters.
    pub meters: MeterTable,
    /// Counters.
    pub counters: SwitchCounters,
}

/// Flows looked at per step of a multipart answer over many flows (FLOW,
/// AGGREGATE, TABLE stats): each costs a counter read, so an answer over a
/// million flows is produced a step at a time, between the event loop's
/// other work, as the connection takes it.
pub const JOB_STEP: usize = 1024;

/// Rules looked at per expiry call ([`Switch::tick`]).
pub const EXPIRE_STEP: usize = 4096;

#[derive(Debug)]
enum JobKind {
    Flow,
    Aggregate(of::AggregateStats),
    /// Every table's; table 0's matches are summed from its rules.
    Table(Vec<of::TableStats>),
}

/// A multipart answer in progress: the flows it covers, chosen when the
/// request came, and how far it got.
#[derive(Debug)]
struct Job {
    xid: u32,
    kind: JobKind,
    ids: Vec<u32>,
    pos: usize,
}

fn error(conn: ConnId, xid: u32, code: ErrorCode, raw: &[u8]) -> (ConnId, u32, Message) {
    (conn, xid, Message::Error(ErrorMsg::new(code, raw)))
}

const fn code(t: u16, c: u16) -> ErrorCode {
    ErrorCode::new(t, c)
}

/// Bytes allowed in one multipart reply body (below the 64 KiB message limit).
const MP_BUDGET: usize = 60_000;

impl Switch {
    /// A switch over `flows`.
    pub fn new(flows: FlowTable, settings: SwitchSettings) -> Self {
        Switch {
            flows,
            settings,
            sessions: BTreeMap::new(),
            ports: BTreeMap::new(),
            config: of::SwitchConfig::default(),
            generation: None,
            buckets: HashMap::new(),
            macs: HashMap::new(),
            jobs: BTreeMap::new(),
            groups: GroupTable::new(),
            meters: MeterTable::new(),
            counters: SwitchCounters::default(),
        }
    }

    /// Ports changed: the groups whose buckets watch them follow.
    fn refresh_groups(&mut self, fx: &mut Effects) {
        let live: BTreeSet<u32> = self
            .ports
            .iter()
            .filter(|(_, s)| s.desc.up)
            .map(|(p, _)| *p)
            .collect();
        fx.ops.extend(self.groups.refresh(&|p| live.contains(&p)));
    }

    /// Apply a FLOW_MOD whose groups and meters must exist.
    fn flow_mod(
        &mut self,
        fm: &FlowMod,
        now_ns: u64,
        counters: &mut dyn Counters,
    ) -> Result<crate::oftable::Outcome, ErrorCode> {
        let (groups, meters) = (&self.groups, &self.meters);
        let refs = Refs {
            group: &|g| groups.contains(g),
            meter: &|m| meters.contains(m),
        };
        self.flows.flow_mod_with(fm, now_ns, counters, refs)
    }

    /// The settings.
    pub fn settings(&self) -> &SwitchSettings {
        &self.settings
    }

    /// True when at least one controller completed the handshake.
    pub fn has_controller(&self) -> bool {
        !self.sessions.is_empty()
    }

    /// A connection completed its handshake (HELLO and version, done by
    /// [`crate::conn::Conn`]): it becomes a session with the default role
    /// and asynchronous configuration. In standalone fail mode the first
    /// controller takes over from L2 learning, whose flows are removed.
    pub fn connected(&mut self, conn: ConnId, now_ns: u64, counters: &mut dyn Counters) -> Effects {
        let was = self.has_controller();
        self.sessions.insert(
            conn,
            Session {
                role: of::OFPCR_ROLE_EQUAL,
                async_cfg: DEFAULT_ASYNC,
            },
        );
        let mut fx = Effects::default();
        if !was && self.settings.fail_mode == FailMode::Standalone {
            let del = FlowMod::delete(of::Match::new()).cookie_match(STANDALONE_COOKIE, u64::MAX);
            if let Ok(o) = self.flows.flow_mod(&del, now_ns, counters) {
                fx.ops.extend(o.ops);
            }
            self.macs.clear();
        }
        fx
    }

    /// The OpenFlow role (`OFPCR_ROLE_*`) of connection `conn`, if it
    /// completed its handshake.
    pub fn role_of(&self, conn: ConnId) -> Option<u32> {
        self.sessions.get(&conn).map(|s| s.role)
    }

    /// The generation id of the last accepted master/slave ROLE_REQUEST
    /// (switch-wide; `None` until a controller set one).
    pub fn generation(&self) -> Option<u64> {
        self.generation
    }

    /// A connection is gone.
    pub fn disconnected(&mut self, conn: ConnId) {
        self.sessions.remove(&conn);
        self.jobs.remove(&conn);
    }

    /// True while a multipart answer to `conn` is being produced
    /// ([`Switch::job_step`]): the connection's next messages must wait for
    /// it, so that their replies follow it.
    pub fn has_job(&self, conn: ConnId) -> bool {
        self.jobs.contains_key(&conn)
    }

    /// The next [`JOB_STEP`] flows of `conn`'s multipart answer; its last
    /// reply (without OFPMPF_REPLY_MORE) ends it.
    pub fn job_step(&mut self, conn: ConnId, now_ns: u64, counters: &mut dyn Counters) -> Effects {
        let mut fx = Effects::default();
        let Some(mut job) = self.jobs.remove(&conn) else {
            return fx;
        };
        let end = (job.pos + JOB_STEP).min(job.ids.len());
        let chunk = job.ids.get(job.pos..end).unwrap_or_default();
        let done = end == job.ids.len();
        let mut replies = Vec::new();
        match &mut job.kind {
            JobKind::Flow => {
                let list: Vec<of::FlowStats> = chunk
                    .iter()
                    .filter_map(|id| self.flows.flow_stats_of(*id, now_ns, counters))
                    .collect();
                if !list.is_empty() || done {
                    replies = split(list, Rep::Flow, |f| {
                        56 + f.match_.encoded_len().div_ceil(8) * 8 + 16 + 16 * 8
                    });
                }
                if !done {
                    if let Some(last) = replies.last_mut() {
                        last.flags |= of::OFPMPF_REPLY_MORE;
                    }
                }
            }
            JobKind::Aggregate(a) => {
                for id in chunk {
                    if self.flows.rules().get(*id).is_some() {
                        let s = self.flows.stats(*id, counters);
                        a.packet_count += s.packets;
                        a.byte_count += s.bytes;
                        a.flow_count += 1;
                    }
                }
                if done {
                    replies.push(MultipartReply::new(Rep::Aggregate(*a)));
                }
            }
            JobKind::Table(list) => {
                for id in chunk {
                    if self.flows.rules().get(*id).is_some_and(|r| r.table == 0) {
                        if let Some(t0) = list.first_mut() {
                            t0.matched_count += self.flows.stats(*id, counters).packets;
                        }
                    }
                }
                if done {
                    replies.push(MultipartReply::new(Rep::Table(std::mem::take(list))));
                }
            }
        }
        for r in replies {
            fx.send.push((conn, job.xid, Message::MultipartReply(r)));
        }
        job.pos = end;
        if !done {
            self.jobs.insert(conn, job);
        }
        fx
    }

    /// Start a multipart answer over `ids` and take its first step.
    fn start_job(
        &mut self,
        conn: ConnId,
        xid: u32,
        kind: JobKind,
        ids: Vec<u32>,
        now_ns: u64,
        counters: &mut dyn Counters,
    ) -> Effects {
        self.jobs.insert(
            conn,
            Job {
                xid,
                kind,
                ids,
                pos: 0,
            },
        );
        self.job_step(conn, now_ns, counters)
    }

    /// A port appeared.
    pub fn port_added(&mut self, desc: PortDesc, now_ns: u64) -> Effects {
        let p = desc.to_of();
        self.ports.insert(
            desc.ofport,
            PortState {
                desc,
                added_ns: now_ns,
            },
        );
        let mut fx = self.port_status(of::OFPPR_ADD, p);
        self.refresh_groups(&mut fx);
        fx
    }

    /// A port went away.
    pub fn port_removed(&mut self, ofport: u32) -> Effects {
        match self.ports.remove(&ofport) {
            Some(p) => {
                let mut fx = self.port_status(of::OFPPR_DELETE, p.desc.to_of());
                self.refresh_groups(&mut fx);
                fx
            }
            None => Effects::default(),
        }
    }

    /// A port changed (e.g. link state).
    pub fn port_modified(&mut self, desc: PortDesc) -> Effects {
        let Some(p) = self.ports.get_mut(&desc.ofport) else {
            return Effects::default();
        };
        if p.desc == desc {
            return Effects::default();
        }
        p.desc = desc;
        let d = p.desc.to_of();
        let mut fx = self.port_status(of::OFPPR_MODIFY, d);
        self.refresh_groups(&mut fx);
        fx
    }

    /// Ports by OpenFlow number.
    pub fn ports(&self) -> impl Iterator<Item = &PortDesc> {
        self.ports.values().map(|p| &p.desc)
    }

    fn port_status(&mut self, reason: u8, port: of::Port) -> Effects {
        let mut fx = Effects::default();
        for (c, s) in &self.sessions {
            if wants(s, |a| a.port_status_mask, reason) {
                fx.send.push((
                    *c,
                    0,
                    Message::PortStatus(of::PortStatus::new(reason, port.clone())),
                ));
            }
        }
        fx
    }

    fn flow_removed(&self, removed: Vec<of::FlowRemoved>, fx: &mut Effects) {
        for fr in removed {
            for (c, s) in &self.sessions {
                if wants(s, |a| a.flow_removed_mask, fr.reason) {
                    fx.send.push((*c, 0, Message::FlowRemoved(fr.clone())));
                }
            }
        }
    }

    /// When [`Switch::tick`] next has work (CLOCK_MONOTONIC ns; `u64::MAX`:
    /// never, until the table changes).
    pub fn next_deadline(&self) -> u64 {
        self.flows.next_deadline().unwrap_or(u64::MAX)
    }

    /// Periodic work: flow expiry.
    pub fn tick(&mut self, now_ns: u64, counters: &mut dyn Counters) -> Effects {
        let o = self.flows.expire(now_ns, counters, EXPIRE_STEP);
        let mut fx = Effects {
            ops: o.ops,
            ..Default::default()
        };
        self.flow_removed(o.removed, &mut fx);
        fx
    }

    /// The OFPT_ERROR answering a FLOW_MOD whose map operations failed
    /// (and were taken back, see [`FlowTable::rollback`]): TABLE_FULL when
    /// a map had no room, UNKNOWN for any other failure.
    pub fn flow_mod_failed(
        &mut self,
        conn: ConnId,
        xid: u32,
        raw: &[u8],
        no_room: bool,
    ) -> (ConnId, u32, Message) {
        self.counters.errors += 1;
        let c = if no_room {
            of::OFPFMFC_TABLE_FULL
        } else {
            of::OFPFMFC_UNKNOWN
        };
        error(conn, xid, code(of::OFPET_FLOW_MOD_FAILED, c), raw)
    }

    /// A FLOW_MOD from the local control socket (no connection to answer).
    pub fn local_flow_mod(
        &mut self,
        fm: &FlowMod,
        now_ns: u64,
        counters: &mut dyn Counters,
    ) -> Result<(usize, Effects), ErrorCode> {
        let o = self.flow_mod(fm, now_ns, counters)?;
        self.counters.flow_mods += 1;
        let mut fx = Effects {
            ops: o.ops,
            ..Default::default()
        };
        self.flow_removed(o.removed, &mut fx);
        Ok((o.touched, fx))
    }

    /// Handle one decoded message from connection `conn`; `raw` is its
    /// encoding as received (echoed in errors).
    pub fn handle(
        &mut self,
        conn: ConnId,
        frame: Frame,
        raw: &[u8],
        now_ns: u64,
        counters: &mut dyn Counters,
    ) -> Effects {
        let mut fx = Effects::default();
        let xid = frame.xid;
        let Some(session) = self.sessions.get(&conn).cloned() else {
            return fx;
        };
        let slave = session.role == of::OFPCR_ROLE_SLAVE;
        let err = |fx: &mut Effects, c: ErrorCode| fx.send.push(error(conn, xid, c, raw));
        match frame.message {
            // HELLO, version and echo are the connection's (crate::conn).
            Message::Hello(_) | Message::EchoRequest(_) | Message::EchoReply(_) => {}
            Message::Error(e) => {
                tracing::warn!(conn, ?e, "controller sent an error");
            }
            Message::FeaturesRequest => fx.send.push((
                conn,
                xid,
                Message::FeaturesReply(of::SwitchFeatures {
                    datapath_id: self.settings.datapath_id,
                    n_buffers: 0,
                    n_tables: N_TABLES as u8,
                    auxiliary_id: 0,
                    // OFPC_GROUP_STATS = 1 << 3.
                    capabilities: of::OFPC_FLOW_STATS
                        | of::OFPC_TABLE_STATS
                        | of::OFPC_PORT_STATS
                        | (1 << 3),
                    reserved: 0,
                }),
            )),
            Message::GetConfigRequest => {
                fx.send
                    .push((conn, xid, Message::GetConfigReply(self.config)))
            }
            Message::SetConfig(c) => {
                if slave {
                    err(&mut fx, code(of::OFPET_BAD_REQUEST, of::OFPBRC_IS_SLAVE));
                } else {
                    self.config = c;
                }
            }
            Message::BarrierRequest => fx.send.push((conn, xid, Message::BarrierReply)),
            Message::RoleRequest(r) => match self.role_request(conn, r) {
                Ok(reply) => fx.send.push((conn, xid, Message::RoleReply(reply))),
                Err(c) => err(&mut fx, c),
            },
            Message::GetAsyncRequest => {
                fx.send
                    .push((conn, xid, Message::GetAsyncReply(session.async_cfg)))
            }
            Message::SetAsync(a) => {
                if let Some(s) = self.sessions.get_mut(&conn) {
                    s.async_cfg = a;
                }
            }
            Message::FlowMod(fm) => {
                if slave {
                    err(&mut fx, code(of::OFPET_BAD_REQUEST, of::OFPBRC_IS_SLAVE));
                } else {
                    match self.flow_mod(&fm, now_ns, counters) {
                        Ok(o) => {
                            self.counters.flow_mods += 1;
                            append(&mut fx.ops, o.ops);
                            self.flow_removed(o.removed, &mut fx);
                            if fm.buffer_id != of::OFP_NO_BUFFER
                                && fm.command != of::OFPFC_DELETE
                                && fm.command != of::OFPFC_DELETE_STRICT
                            {
                                // We never buffer packets (PACKET_INs say NO_BUFFER).
                                err(
                                    &mut fx,
                                    code(of::OFPET_BAD_REQUEST, of::OFPBRC_BUFFER_UNKNOWN),
                                );
                            }
                        }
                        Err(c) => err(&mut fx, c),
                    }
                }
            }
            Message::PacketOut(po) => {
                if slave {
                    err(&mut fx, code(of::OFPET_BAD_REQUEST, of::OFPBRC_IS_SLAVE));
                } else if let Err(c) = self.packet_out(po, &mut fx) {
                    err(&mut fx, c);
                } else {
                    self.counters.packet_out += 1;
                }
            }
            Message::MultipartRequest(req) => match req.body {
                body @ (Req::Flow(_) | Req::Aggregate(_)) => {
                    let (aggregate, r) = match body {
                        Req::Aggregate(r) => (true, r),
                        Req::Flow(r) => (false, r),
                        _ => return fx,
                    };
                    match self.flows.select_for(&r) {
                        Ok(ids) => {
                            let kind = if aggregate {
                                JobKind::Aggregate(of::AggregateStats::default())
                            } else {
                                JobKind::Flow
                            };
                            fx.extend(self.start_job(conn, xid, kind, ids, now_ns, counters));
                        }
                        Err(c) => err(&mut fx, c),
                    }
                }
                Req::Table => {
                    let lookup: u64 = self
                        .ports
                        .keys()
                        .filter_map(|p| counters.port(*p))
                        .map(|s| s.rx_packets)
                        .sum();
                    let mut list = vec![of::TableStats {
                        table_id: 0,
                        active_count: self.flows.active(0) as u32,
                        lookup_count: lookup,
                        matched_count: 0,
                    }];
                    for t in 1..N_TABLES as u8 {
                        let s = counters.table(t);
                        list.push(of::TableStats {
                            table_id: t,
                            active_count: self.flows.active(t) as u32,
                            lookup_count: s.lookups,
                            matched_count: s.matched,
                        });
                    }
                    let ids = self.flows.ids();
                    fx.extend(self.start_job(
                        conn,
                        xid,
                        JobKind::Table(list),
                        ids,
                        now_ns,
                        counters,
                    ));
                }
                body => match self.multipart(body, now_ns, counters) {
                    Ok(replies) => {
                        for r in replies {
                            fx.send.push((conn, xid, Message::MultipartReply(r)));
                        }
                    }
                    Err(c) => err(&mut fx, c),
                },
            },
            Message::TableMod(t) => {
                if slave {
                    err(&mut fx, code(of::OFPET_BAD_REQUEST, of::OFPBRC_IS_SLAVE));
                } else if u32::from(t.table_id) >= N_TABLES && t.table_id != of::OFPTT_ALL {
                    err(
                        &mut fx,
                        code(of::OFPET_TABLE_MOD_FAILED, of::OFPTMFC_BAD_TABLE),
                    );
                }
            }
            Message::QueueGetConfigRequest(port) => {
                if port != of::OFPP_ANY && !self.ports.contains_key(&port) {
                    err(&mut fx, code(of::OFPET_QUEUE_OP_FAILED, 0));
                } else {
                    fx.send.push((
                        conn,
                        xid,
                        Message::QueueGetConfigReply(of::QueueGetConfigReply {
                            port,
                            queues: Vec::new(),
                        }),
                    ));
                }
            }
            Message::Experimenter(_) => err(
                &mut fx,
                code(of::OFPET_BAD_REQUEST, of::OFPBRC_BAD_EXPERIMENTER),
            ),
            // Port configuration is not supported; switch-to-controller
            // messages make no sense here.
            Message::GroupMod(gm) => {
                if slave {
                    err(&mut fx, code(of::OFPET_BAD_REQUEST, of::OFPBRC_IS_SLAVE));
                } else {
                    let live: BTreeSet<u32> = self
                        .ports
                        .iter()
                        .filter(|(_, s)| s.desc.up)
                        .map(|(p, _)| *p)
                        .collect();
                    match self.groups.group_mod(&gm, now_ns, &|p| live.contains(&p)) {
                        Ok((ops, gone)) => {
                            // Flows that send to a deleted group go first.
                            for g in gone {
                                let o = self.flows.remove_by_group(g, now_ns, counters);
                                fx.ops.extend(o.ops);
                                self.flow_removed(o.removed, &mut fx);
                            }
                            fx.ops.extend(ops);
                        }
                        Err(c) => err(&mut fx, c),
                    }
                }
            }
            Message::MeterMod(mm) => {
                if slave {
                    err(&mut fx, code(of::OFPET_BAD_REQUEST, of::OFPBRC_IS_SLAVE));
                } else {
                    match self.meters.meter_mod(&mm, now_ns) {
                        Ok((ops, gone)) => {
                            for m in gone {
                                let o = self.flows.remove_by_meter(m, now_ns, counters);
                                fx.ops.extend(o.ops);
                                self.flow_removed(o.removed, &mut fx);
                            }
                            fx.ops.extend(ops);
                        }
                        Err(c) => err(&mut fx, c),
                    }
                }
            }
            Message::PortMod(_)
            | Message::FeaturesReply(_)
            | Message::GetConfigReply(_)
            | Message::PacketIn(_)
            | Message::FlowRemoved(_)
            | Message::PortStatus(_)
            | Message::MultipartReply(_)
            | Message::BarrierReply
            | Message::QueueGetConfigReply(_)
            | Message::RoleReply(_)
            | Message::GetAsyncReply(_) => {
                err(&mut fx, code(of::OFPET_BAD_REQUEST, of::OFPBRC_BAD_TYPE))
            }
        }
        self.counters.errors += fx
            .send
            .iter()
            .filter(|(_, _, m)| matches!(m, Message::Error(_)))
            .count() as u64;
        fx
    }

    fn role_request(&mut self, conn: ConnId, r: of::RoleMsg) -> Result<of::RoleMsg, ErrorCode> {
        let stale = code(of::OFPET_ROLE_REQUEST_FAILED, of::OFPRRFC_STALE);
        match r.role {
            of::OFPCR_ROLE_NOCHANGE => {}
            of::OFPCR_ROLE_EQUAL => {
                if let Some(s) = self.sessions.get_mut(&conn) {
                    s.role = of::OFPCR_ROLE_EQUAL;
                }
            }
            of::OFPCR_ROLE_MASTER | of::OFPCR_ROLE_SLAVE => {
                if let Some(g) = self.generation {
                    if (r.generation_id.wrapping_sub(g) as i64) < 0 {
                        return Err(stale);
                    }
                }
                self.generation = Some(r.generation_id);
                if r.role == of::OFPCR_ROLE_MASTER {
                    for (c, s) in self.sessions.iter_mut() {
                        if *c != conn && s.role == of::OFPCR_ROLE_MASTER {
                            s.role = of::OFPCR_ROLE_SLAVE;
                        }
                    }
                }
                if let Some(s) = self.sessions.get_mut(&conn) {
                    s.role = r.role;
                }
            }
            _ => return Err(code(of::OFPET_ROLE_REQUEST_FAILED, of::OFPRRFC_BAD_ROLE)),
        }
        Ok(of::RoleMsg {
            role: self
                .sessions
                .get(&conn)
                .map_or(of::OFPCR_ROLE_EQUAL, |s| s.role),
            generation_id: self.generation.unwrap_or(0),
        })
    }

    fn multipart(
        &mut self,
        body: Req,
        now_ns: u64,
        counters: &mut dyn Counters,
    ) -> Result<Vec<MultipartReply>, ErrorCode> {
        Ok(match body {
            Req::Desc => vec![MultipartReply::new(Rep::Desc(of::Desc {
                mfr_desc: "DaoliNet".into(),
                hw_desc: "daolinet-agent (eBPF datapath)".into(),
                sw_desc: env!("CARGO_PKG_VERSION").into(),
                serial_num: "None".into(),
                dp_desc: format!("daolinet-agent dpid {:016x}", self.settings.datapath_id),
            }))],
            Req::Group(id) => {
                let flows = &self.flows;
                let refs = |g: u32| {
                    flows
                        .rules()
                        .rules()
                        .filter(|(_, r)| crate::oftable::sends_to_group(r, g))
                        .count() as u32
                };
                let list = self
                    .groups
                    .stats(id, now_ns, &mut |slot| counters.group(slot), &refs);
                split(list, Rep::Group, |g| 40 + 16 * g.bucket_stats.len())
            }
            Req::GroupDesc => split(self.groups.desc(), Rep::GroupDesc, |g| {
                8 + g
                    .buckets
                    .iter()
                    .map(|b| 16 + 16 * b.actions.len())
                    .sum::<usize>()
            }),
            Req::GroupFeatures => vec![MultipartReply::new(Rep::GroupFeatures(
                GroupTable::features(),
            ))],
            Req::Meter(id) => {
                let flows = &self.flows;
                let using = |m: u32| {
                    flows
                        .rules()
                        .rules()
                        .filter(|(_, r)| r.ext.as_ref().is_some_and(|e| e.meter == m))
                        .count() as u32
                };
                let list = self
                    .meters
                    .stats(id, now_ns, &mut |slot| counters.meter(slot), &using);
                split(list, Rep::Meter, |m| 40 + 16 * m.band_stats.len())
            }
            Req::MeterConfig(id) => split(self.meters.config(id), Rep::MeterConfig, |m| {
                8 + 16 * m.bands.len()
            }),
            Req::MeterFeatures => vec![MultipartReply::new(Rep::MeterFeatures(
                MeterTable::features(),
            ))],
            Req::PortStats(port) => {
                if port != of::OFPP_ANY && !self.ports.contains_key(&port) {
                    return Err(code(of::OFPET_BAD_REQUEST, of::OFPBRC_BAD_PORT));
                }
                let mut list = Vec::new();
                for (no, p) in &self.ports {
                    if port != of::OFPP_ANY && port != *no {
                        continue;
                    }
                    let s = counters.port(*no).unwrap_or_default();
                    let age = now_ns.saturating_sub(p.added_ns);
                    list.push(of::PortStats {
                        rx_packets: s.rx_packets,
                        rx_bytes: s.rx_bytes,
                        tx_packets: s.tx_packets,
                        tx_bytes: s.tx_bytes,
                        rx_dropped: s.rx_dropped,
                        duration_sec: (age / 1_000_000_000) as u32,
                        duration_nsec: (age % 1_000_000_000) as u32,
                        ..of::PortStats::new(*no)
                    });
                }
                split(list, Rep::PortStats, |_| 112)
            }
            Req::PortDesc => {
                let list: Vec<of::Port> = self.ports.values().map(|p| p.desc.to_of()).collect();
                split(list, Rep::PortDesc, |_| 64)
            }
            Req::TableFeatures(set) => {
                if !set.is_empty() {
                    // OFPTFFC_EPERM: the pipeline is fixed.
                    return Err(code(of::OFPET_TABLE_FEATURES_FAILED, 5));
                }
                let limit = self.flows.rules().limit();
                let list: Vec<of::TableFeatures> = (0..N_TABLES as u8)
                    .map(|t| table_features(t, limit))
                    .collect();
                split(list, Rep::TableFeatures, |t| {
                    64 + t.properties.iter().map(|p| 8 + p.data.len()).sum::<usize>()
                })
            }
            _ => return Err(code(of::OFPET_BAD_REQUEST, of::OFPBRC_BAD_MULTIPART)),
        })
    }

    fn packet_out(&mut self, po: PacketOut, fx: &mut Effects) -> Result<(), ErrorCode> {
        if po.buffer_id != of::OFP_NO_BUFFER {
            return Err(code(of::OFPET_BAD_REQUEST, of::OFPBRC_BUFFER_UNKNOWN));
        }
        let in_port = po.in_port;
        let reserved_ok = matches!(in_port, of::OFPP_CONTROLLER | of::OFPP_LOCAL | of::OFPP_ANY);
        if !reserved_ok && !self.ports.contains_key(&in_port) && in_port > of::OFPP_MAX {
            return Err(code(of::OFPET_BAD_REQUEST, of::OFPBRC_BAD_PORT));
        }
        if po.actions.iter().all(plain_output) {
            // The answer to a first packet, most often: outputs only, the
            // frame unchanged, as the userspace pipeline would send them
            // (below) without compiling the actions or copying the frame
            // for the last of them.
            let mut data = po.data;
            let n = po.actions.len();
            for (i, a) in po.actions.iter().enumerate() {
                let of::Action::Output { port, .. } = *a else {
                    continue;
                };
                let to = match port {
                    of::OFPP_IN_PORT => in_port,
                    // Output to the ingress port's number does not send
                    // back (IN_PORT does).
                    p if p == in_port => continue,
                    p => p,
                };
                let frame = if i + 1 == n {
                    std::mem::take(&mut data)
                } else {
                    data.clone()
                };
                fx.emit.push((to, frame));
            }
            return Ok(());
        }
        // Validate every action before doing anything: runs of actions the
        // datapath knows, and the reserved outputs only userspace has.
        let mut steps: Vec<Step> = Vec::with_capacity(po.actions.len());
        for a in &po.actions {
            match a {
                of::Action::Output { port, .. }
                    if matches!(*port, of::OFPP_FLOOD | of::OFPP_ALL | of::OFPP_TABLE) =>
                {
                    steps.push(Step::Out(*port))
                }
                other => {
                    let v = compile_actions(std::slice::from_ref(other)).map_err(|e| e.code())?;
                    if let Some(g) = v.iter().find(|a| {
                        a.kind() == Some(ActionKind::Group) && !self.groups.contains(a.arg)
                    }) {
                        tracing::debug!(group = g.arg, "PACKET_OUT to a group that does not exist");
                        return Err(code(of::OFPET_BAD_ACTION, of::OFPBAC_BAD_OUT_GROUP));
                    }
                    match steps.last_mut() {
                        Some(Step::Acts(list)) => list.extend(v),
                        _ => steps.push(Step::Acts(v)),
                    }
                }
            }
        }
        let mut frame = po.data;
        for s in steps {
            // The rules a run through the table matched: counted on them
            // below, as Open vSwitch counts a PACKET_OUT to TABLE (a live
            // trace reads these counters).
            let len = frame.len();
            let (emits, matched) = {
                let p = Pipeline {
                    rules: self.flows.rules(),
                    groups: &self.groups,
                };
                match s {
                    Step::Acts(list) => {
                        let (emits, go_on) = p.apply_actions(&mut frame, in_port, &list);
                        self.emit(emits, in_port, fx);
                        if !go_on {
                            break;
                        }
                        continue;
                    }
                    Step::Out(of::OFPP_TABLE) => p.run_counted(frame.clone(), in_port),
                    Step::Out(_) => {
                        for no in self.ports.keys() {
                            if *no != in_port {
                                fx.emit.push((*no, frame.clone()));
                            }
                        }
                        continue;
                    }
                }
            };
            for id in matched {
                self.flows.count_table_packet(id, len);
            }
            self.emit(emits, in_port, fx);
        }
        Ok(())
    }

    /// Turn what the userspace pipeline sent into frames to transmit and
    /// PACKET_INs.
    fn emit(&mut self, emits: Vec<Emit>, in_port: u32, fx: &mut Effects) {
        for e in emits {
            match e {
                // OpenFlow: output to the ingress port's number does not
                // send back (IN_PORT does).
                Emit::Port(p, _) if p == in_port => {}
                Emit::Port(p, f) => fx.emit.push((p, f)),
                Emit::InPort(f) => fx.emit.push((in_port, f)),
                Emit::Local(f) => fx.emit.push((of::OFPP_LOCAL, f)),
                Emit::Controller {
                    reason,
                    table,
                    rule,
                    frame,
                    metadata,
                } => {
                    let r = rule.and_then(|id| self.flows.rules().get(id));
                    let reason = match r {
                        Some(r) if reason == of::OFPR_ACTION && is_table_miss(r) => {
                            of::OFPR_NO_MATCH
                        }
                        _ => reason,
                    };
                    let mut pi = PacketIn::new(in_port, reason, frame);
                    pi.table_id = table;
                    pi.cookie = r.map_or(u64::MAX, |r| r.cookie);
                    if metadata != 0 {
                        pi.match_ = pi.match_.with(of::OxmField::Metadata(metadata, None));
                    }
                    self.send_packet_in(pi, fx);
                }
            }
        }
    }

    fn send_packet_in(&mut self, pi: PacketIn, fx: &mut Effects) {
        // The last connection that wants it takes it; those before get
        // copies (one controller: no copy of the frame).
        let mut to = self
            .sessions
            .iter()
            .filter(|(_, s)| wants(s, |a| a.packet_in_mask, pi.reason))
            .map(|(c, _)| *c)
            .peekable();
        let sent = to.peek().is_some();
        while let Some(c) = to.next() {
            if to.peek().is_some() {
                fx.send.push((c, 0, Message::PacketIn(pi.clone())));
            } else {
                fx.send.push((c, 0, Message::PacketIn(pi)));
                break;
            }
        }
        if sent {
            self.counters.packet_in += 1;
        }
    }

    fn allow(&mut self, port: u32, now_ns: u64) -> bool {
        let (rate, burst) = (
            f64::from(self.settings.packet_in_rate),
            f64::from(self.settings.packet_in_burst.max(1)),
        );
        if rate == 0.0 {
            return true;
        }
        let b = self.buckets.entry(port).or_insert(Bucket {
            tokens: burst,
            at_ns: now_ns,
        });
        let dt = now_ns.saturating_sub(b.at_ns) as f64 / 1e9;
        b.tokens = (b.tokens + dt * rate).min(burst);
        b.at_ns = now_ns;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// A packet punted by the datapath: ARP responder, PACKET_IN, or (no
    /// controller, standalone) L2 learning.
    pub fn punt(&mut self, punt: Punt, now_ns: u64, counters: &mut dyn Counters) -> Effects {
        let Punt { header, mut data } = punt;
        if data.len() as u32 == header.pkt_len {
            // Complete the checksum the sender left to offload.
            complete_l4_checksum(&mut data);
        }
        let (in_port, reason, rule_id) = (header.in_port, header.reason, header.rule_id);
        let mut fx = Effects::default();
        if let Some(mac) = self.settings.arp_responder {
            if let Some(reply) = arp_reply(&data, mac) {
                self.counters.arp_replies += 1;
                fx.emit.push((in_port, reply));
                return fx;
            }
        }
        if !self.has_controller() {
            match self.settings.fail_mode {
                FailMode::Secure => self.counters.punt_no_controller += 1,
                FailMode::Standalone => self.learn(in_port, &data, now_ns, counters, &mut fx),
            }
            return fx;
        }
        if !self.allow(in_port, now_ns) {
            self.counters.packet_in_rate_limited += 1;
            return fx;
        }
        let (of_reason, cookie) = match PuntReason::from_u32(reason) {
            Some(PuntReason::Action) => match self.flows.rules().get(rule_id) {
                Some(r) if is_table_miss(r) => (of::OFPR_NO_MATCH, r.cookie),
                Some(r) => (of::OFPR_ACTION, r.cookie),
                None => (of::OFPR_ACTION, u64::MAX),
            },
            Some(PuntReason::InvalidTtl) => (
                of::OFPR_INVALID_TTL,
                self.flows
                    .rules()
                    .get(rule_id)
                    .map_or(u64::MAX, |r| r.cookie),
            ),
            _ => (of::OFPR_NO_MATCH, u64::MAX),
        };
        let mut pi = PacketIn::new(in_port, of_reason, data);
        pi.cookie = cookie;
        pi.table_id = header.table_id;
        if header.metadata != 0 {
            pi.match_ = pi
                .match_
                .with(of::OxmField::Metadata(header.metadata, None));
        }
        pi.total_len = u16::try_from(header.pkt_len).unwrap_or(u16::MAX);
        self.send_packet_in(pi, &mut fx);
        fx
    }

    /// Standalone fail mode: learn the source, forward to the known
    /// destination with a flow, or flood.
    fn learn(
        &mut self,
        in_port: u32,
        frame: &[u8],
        now_ns: u64,
        counters: &mut dyn Counters,
        fx: &mut Effects,
    ) {
        let Some((k, _)) = flow_key(frame, in_port) else {
            return;
        };
        if k.eth_src[0] & 1 == 0 {
            if self.macs.len() >= MAX_LEARNED_MACS && !self.macs.contains_key(&k.eth_src) {
                tracing::debug!("standalone MAC table full: forgetting it");
                self.macs.clear();
            }
            self.macs.insert(k.eth_src, in_port);
        }
        match self.macs.get(&k.eth_dst).copied() {
            Some(out) if out != in_port && self.ports.contains_key(&out) => {
                let fm = FlowMod::add(of::Match::new().eth_dst(of::MacAddr(k.eth_dst)))
                    .priority(1)
                    .cookie(STANDALONE_COOKIE)
                    .idle_timeout(60)
                    .apply(vec![of::Action::output(out)]);
                match self.flows.flow_mod(&fm, now_ns, counters) {
                    Ok(o) => fx.ops.extend(o.ops),
                    Err(e) => tracing::debug!(%e, "standalone flow not installed"),
                }
                fx.emit.push((out, frame.to_vec()));
            }
            Some(_) => {}
            None => {
                for no in self.ports.keys() {
                    if *no != in_port {
                        fx.emit.push((*no, frame.to_vec()));
                    }
                }
            }
        }
    }
}

/// (field number, length, maskable) of the OXM fields the datapath matches.
const MATCH_FIELDS: &[(u32, u32, bool)] = &[
    (0, 4, false),  // in_port
    (2, 8, true),   // metadata
    (3, 6, true),   // eth_dst
    (4, 6, true),   // eth_src
    (5, 2, false),  // eth_type
    (6, 2, true),   // vlan_vid
    (7, 1, false),  // vlan_pcp
    (8, 1, false),  // ip_dscp
    (9, 1, false),  // ip_ecn
    (10, 1, false), // ip_proto
    (11, 4, true),  // ipv4_src
    (12, 4, true),  // ipv4_dst
    (13, 2, true),  // tcp_src
    (14, 2, true),  // tcp_dst
    (15, 2, true),  // udp_src
    (16, 2, true),  // udp_dst
    (17, 2, true),  // sctp_src
    (18, 2, true),  // sctp_dst
    (19, 1, false), // icmpv4_type
    (20, 1, false), // icmpv4_code
    (21, 2, false), // arp_op
    (22, 4, true),  // arp_spa
    (23, 4, true),  // arp_tpa
    (24, 6, true),  // arp_sha
    (25, 6, true),  // arp_tha
    (26, 16, true), // ipv6_src
    (27, 16, true), // ipv6_dst
    (28, 4, true),  // ipv6_flabel
    (29, 1, false), // icmpv6_type
    (30, 1, false), // icmpv6_code
    (31, 16, true), // ipv6_nd_target
    (32, 6, true),  // ipv6_nd_sll
    (33, 6, true),  // ipv6_nd_tll
    (34, 4, false), // mpls_label
    (35, 1, false), // mpls_tc
    (36, 1, false), // mpls_bos
    (38, 8, true),  // tunnel_id
];

/// Fields the datapath can rewrite (set_field).
const SET_FIELDS: &[u32] = &[
    3, 4, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29,
    30, 31, 32, 33, 34, 35, 36, 38,
];

/// Instructions every table takes: goto-table (1; not in the last table),
/// write-metadata 2, write-actions 3, apply-actions 4, clear-actions 5,
/// meter 6.
const INSTRUCTIONS: &[u16] = &[1, 2, 3, 4, 5, 6];

/// Action types the datapath runs: output 0, copy TTL out 11 and in 12,
/// set 15 and decrement 16 the MPLS TTL, push 17 and pop 18 VLAN, push 19
/// and pop 20 MPLS, group 22, set 23 and decrement 24 the IP TTL, set-field
/// 25. (Not: set-queue, PBB.)
const ACTIONS: &[u16] = &[0, 11, 12, 15, 16, 17, 18, 19, 20, 22, 23, 24, 25];

fn oxm_ids(fields: impl Iterator<Item = (u32, u32, bool)>) -> Vec<u8> {
    fields
        .flat_map(|(f, len, hm)| {
            let n = if hm { 2 * len } else { len };
            ((0x8000u32 << 16) | (f << 9) | (u32::from(hm) << 8) | n).to_be_bytes()
        })
        .collect()
}

/// Table `table`'s features: every instruction (goto only to later
/// tables), the actions of [`ACTIONS`] in apply- and write-actions, the
/// match fields of [`MATCH_FIELDS`], the set-fields of [`SET_FIELDS`];
/// `max_entries` rules at most (shared by the tables).
fn table_features(table: u8, max_entries: u32) -> of::TableFeatures {
    let ids = |types: &[u16]| -> Vec<u8> {
        types
            .iter()
            .flat_map(|t| {
                let mut v = t.to_be_bytes().to_vec();
                v.extend_from_slice(&4u16.to_be_bytes());
                v
            })
            .collect()
    };
    let prop = |prop_type: u16, data: Vec<u8>| of::TableFeatureProp { prop_type, data };
    let last = u32::from(table) + 1 >= N_TABLES;
    let instructions: Vec<u16> = INSTRUCTIONS
        .iter()
        .copied()
        .filter(|i| *i != 1 || !last)
        .collect();
    let next: Vec<u8> = (table.saturating_add(1)..N_TABLES as u8).collect();
    let matchable = oxm_ids(MATCH_FIELDS.iter().map(|&(f, l, hm)| (f, l, hm)));
    let wild = oxm_ids(MATCH_FIELDS.iter().map(|&(f, l, _)| (f, l, false)));
    let set = oxm_ids(
        MATCH_FIELDS
            .iter()
            .filter(|(f, _, _)| SET_FIELDS.contains(f))
            .map(|&(f, l, _)| (f, l, false)),
    );
    of::TableFeatures {
        table_id: table,
        name: format!("table{table}"),
        metadata_match: u64::MAX,
        metadata_write: u64::MAX,
        config: 0,
        max_entries,
        properties: vec![
            prop(0, ids(&instructions)), // OFPTFPT_INSTRUCTIONS
            prop(1, ids(&instructions)), // OFPTFPT_INSTRUCTIONS_MISS
            prop(2, next.clone()),       // OFPTFPT_NEXT_TABLES
            prop(3, next),               // OFPTFPT_NEXT_TABLES_MISS
            prop(4, ids(ACTIONS)),       // OFPTFPT_WRITE_ACTIONS
            prop(5, ids(ACTIONS)),       // OFPTFPT_WRITE_ACTIONS_MISS
            prop(6, ids(ACTIONS)),       // OFPTFPT_APPLY_ACTIONS
            prop(7, ids(ACTIONS)),       // OFPTFPT_APPLY_ACTIONS_MISS
            prop(8, matchable),          // OFPTFPT_MATCH
            prop(10, wild),              // OFPTFPT_WILDCARDS
            prop(12, set.clone()),       // OFPTFPT_WRITE_SETFIELD
            prop(13, set.clone()),       // OFPTFPT_WRITE_SETFIELD_MISS
            prop(14, set.clone()),       // OFPTFPT_APPLY_SETFIELD
            prop(15, set),               // OFPTFPT_APPLY_SETFIELD_MISS
        ],
    }
}

/// A piece of a PACKET_OUT's action list.
enum Step {
    /// Actions the datapath knows (run by the userspace pipeline).
    Acts(Vec<Action>),
    /// FLOOD, ALL or TABLE.
    Out(u32),
}

/// OpenFlow 1.3: what the table-miss flow entry (priority 0, match
/// everything) sends to the controller is reported as a table miss.
fn is_table_miss(r: &crate::table::Rule) -> bool {
    r.priority == 0 && r.mask.is_empty_mask() && r.wide.is_none()
}

/// A PACKET_OUT action the fast path of [`Switch::packet_out`] takes: an
/// output to a switch port or IN_PORT (the frame unchanged, no pipeline).
fn plain_output(a: &of::Action) -> bool {
    matches!(a, of::Action::Output { port, .. } if *port <= of::OFPP_MAX || *port == of::OFPP_IN_PORT)
}

fn wants(s: &Session, mask: impl Fn(&AsyncConfig) -> [u32; 2], reason: u8) -> bool {
    let idx = usize::from(s.role == of::OFPCR_ROLE_SLAVE);
    reason < 32 && mask(&s.async_cfg)[idx] & (1 << reason) != 0
}

/// Split a list into multipart replies of at most [`MP_BUDGET`] bytes each
/// (all but the last flagged REPLY_MORE). Always at least one reply.
fn split<T>(
    items: Vec<T>,
    wrap: impl Fn(Vec<T>) -> Rep,
    size: impl Fn(&T) -> usize,
) -> Vec<MultipartReply> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut used = 0;
    for it in items {
        let n = size(&it);
        if used + n > MP_BUDGET && !cur.is_empty() {
            out.push(MultipartReply {
                flags: of::OFPMPF_REPLY_MORE,
                body: wrap(std::mem::take(&mut cur)),
            });
            used = 0;
        }
        used += n;
        cur.push(it);
    }
    out.push(MultipartReply::new(wrap(cur)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::tests::ipv4_frame;
    use daolinet_common::{PortStats, RuleStats};

    #[derive(Default)]
    struct Fake;
    impl Counters for Fake {
        fn rule(&mut self, _: u32, _: &crate::table::EntryKey) -> RuleStats {
            RuleStats::default()
        }
        fn port(&mut self, _: u32) -> Option<PortStats> {
            Some(PortStats {
                rx_packets: 3,
                ..Default::default()
            })
        }
    }

    fn pu(in_port: u32, reason: u32, rule_id: u32, pkt_len: u32, data: Vec<u8>) -> Punt {
        Punt {
            header: daolinet_common::PuntHeader {
                in_port,
                reason,
                rule_id,
                pkt_len,
                cap_len: data.len() as u32,
                ..Default::default()
            },
            data,
        }
    }

    fn switch() -> Switch {
        let mut s = Switch::new(FlowTable::default(), SwitchSettings::default());
        for (no, name) in [(1, "pa"), (2, "pb"), (0xfff0, "up0")] {
            s.port_added(
                PortDesc {
                    ofport: no,
                    name: name.into(),
                    mac: [2, 0, 0, 0, 0, no as u8],
                    up: true,
                },
                0,
            );
        }
        s
    }

    fn send(s: &mut Switch, conn: ConnId, xid: u32, m: Message) -> Effects {
        let raw = m.to_bytes(xid).unwrap();
        let (frame, _) = of::decode(&raw).unwrap().unwrap();
        s.handle(conn, frame, &raw, 0, &mut Fake)
    }

    fn hello(s: &mut Switch, conn: ConnId) {
        let fx = s.connected(conn, 0, &mut Fake);
        assert!(fx.send.is_empty() && fx.close.is_empty());
    }

    fn errors(fx: &Effects) -> Vec<ErrorCode> {
        fx.send
            .iter()
            .filter_map(|(_, _, m)| match m {
                Message::Error(e) => e.code(),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn features_and_barrier() {
        let mut s = switch();
        hello(&mut s, 7);
        let fx = send(&mut s, 7, 9, Message::FeaturesRequest);
        match &fx.send[..] {
            [(7, 9, Message::FeaturesReply(f))] => assert_eq!(u32::from(f.n_tables), N_TABLES),
            other => panic!("{other:?}"),
        }
        let fx = send(&mut s, 7, 11, Message::BarrierRequest);
        assert_eq!(fx.send[0], (7, 11, Message::BarrierReply));
        // A connection that has not completed its handshake is not served.
        assert!(send(&mut s, 8, 12, Message::BarrierRequest).send.is_empty());
    }

    #[test]
    fn roles_generation_ids_and_slave_restrictions() {
        let mut s = switch();
        hello(&mut s, 1);
        hello(&mut s, 2);
        let role = |r, g| {
            Message::RoleRequest(of::RoleMsg {
                role: r,
                generation_id: g,
            })
        };
        let fx = send(&mut s, 1, 5, role(of::OFPCR_ROLE_MASTER, 10));
        assert!(matches!(fx.send[0].2, Message::RoleReply(r) if r.role == of::OFPCR_ROLE_MASTER));
        let fx = send(&mut s, 2, 5, role(of::OFPCR_ROLE_MASTER, 11));
        assert!(matches!(fx.send[0].2, Message::RoleReply(r) if r.generation_id == 11));
        // Connection 1 was demoted: it may no longer change the table.
        let fm: FlowMod = "ip actions=output:1".parse().unwrap();
        let fx = send(&mut s, 1, 6, Message::FlowMod(fm.clone()));
        assert_eq!(
            errors(&fx),
            [code(of::OFPET_BAD_REQUEST, of::OFPBRC_IS_SLAVE)]
        );
        assert!(s.flows.is_empty());
        // A stale generation id is refused.
        let fx = send(&mut s, 1, 7, role(of::OFPCR_ROLE_MASTER, 9));
        assert_eq!(
            errors(&fx),
            [code(of::OFPET_ROLE_REQUEST_FAILED, of::OFPRRFC_STALE)]
        );
        let fx = send(&mut s, 1, 7, role(7, 12));
        assert_eq!(
            errors(&fx),
            [code(of::OFPET_ROLE_REQUEST_FAILED, of::OFPRRFC_BAD_ROLE)]
        );
        let fx = send(&mut s, 2, 8, Message::FlowMod(fm));
        assert!(errors(&fx).is_empty());
        assert_eq!(s.flows.len(), 1);
        // Only the master gets the PACKET_IN (slaves' default async mask).
        let fx = s.punt(pu(1, 0, u32::MAX, 60, vec![0; 60]), 0, &mut Fake);
        let to: Vec<_> = fx.send.iter().map(|m| m.0).collect();
        assert_eq!(to, [2]);
        // SET_ASYNC can give the slave PACKET_INs too.
        let mut a = DEFAULT_ASYNC;
        a.packet_in_mask[1] = 1;
        send(&mut s, 1, 9, Message::SetAsync(a));
        let fx = s.punt(pu(1, 0, u32::MAX, 60, vec![0; 60]), 0, &mut Fake);
        assert_eq!(fx.send.len(), 2);
        let fx = send(&mut s, 1, 10, Message::GetAsyncRequest);
        assert_eq!(fx.send[0].2, Message::GetAsyncReply(a));
    }

    #[test]
    fn packet_in_is_rate_limited_per_port() {
        let mut s = switch();
        s.settings.packet_in_rate = 10;
        s.settings.packet_in_burst = 5;
        hello(&mut s, 1);
        let mut n = 0;
        for i in 0..100u64 {
            // 100 punts within 10 ms from port 1.
            n += s
                .punt(pu(1, 0, u32::MAX, 60, vec![0; 60]), i * 100_000, &mut Fake)
                .send
                .len();
        }
        assert_eq!(n, 5);
        // Port 2 has its own budget.
        assert_eq!(
            s.punt(pu(2, 0, u32::MAX, 60, vec![0; 60]), 0, &mut Fake)
                .send
                .len(),
            1
        );
        // One second later port 1 may send again.
        let later = s.punt(
            pu(1, 0, u32::MAX, 60, vec![0; 60]),
            1_000_000_000,
            &mut Fake,
        );
        assert_eq!(later.send.len(), 1);
        match &later.send[0].2 {
            Message::PacketIn(pi) => {
                assert_eq!(pi.reason, of::OFPR_NO_MATCH);
                assert_eq!(pi.buffer_id, of::OFP_NO_BUFFER);
                assert_eq!(pi.in_port(), Some(1));
                assert_eq!(pi.data.len(), 60);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.counters.packet_in_rate_limited, 95);
    }

    #[test]
    fn packet_out_outputs_floods_rewrites_and_runs_the_table() {
        let mut s = switch();
        hello(&mut s, 1);
        let f = ipv4_frame(17, [10, 0, 0, 1], [10, 0, 0, 2], 5, 53);
        let po = |acts: Vec<of::Action>| Message::PacketOut(PacketOut::new(1, acts, f.clone()));
        let fx = send(&mut s, 1, 2, po(vec![of::Action::output(2)]));
        assert_eq!(fx.emit, [(2, f.clone())]);
        let fx = send(&mut s, 1, 2, po(vec![of::Action::output(of::OFPP_FLOOD)]));
        let ports: Vec<u32> = fx.emit.iter().map(|e| e.0).collect();
        assert_eq!(ports, [2, 0xfff0]);
        let fx = send(
            &mut s,
            1,
            3,
            po(vec![
                of::Action::SetField(of::OxmField::EthDst(
                    of::MacAddr([2, 0, 0, 0, 0, 0xb]),
                    None,
                )),
                of::Action::output(of::OFPP_IN_PORT),
            ]),
        );
        assert_eq!(fx.emit[0].0, 1);
        assert_eq!(fx.emit[0].1[..6], [2, 0, 0, 0, 0, 0xb]);
        // TABLE: no flow yet -> PACKET_IN; then the flow decides.
        let fx = send(&mut s, 1, 4, po(vec![of::Action::output(of::OFPP_TABLE)]));
        assert!(matches!(fx.send[0].2, Message::PacketIn(_)));
        let fm: FlowMod =
            "in_port=1,udp,nw_dst=10.0.0.2 actions=set_field:10.9.9.9->ip_dst,output:2"
                .parse()
                .unwrap();
        send(&mut s, 1, 5, Message::FlowMod(fm));
        let fx = send(&mut s, 1, 6, po(vec![of::Action::output(of::OFPP_TABLE)]));
        assert_eq!(fx.emit.len(), 1);
        assert_eq!(fx.emit[0].0, 2);
        assert_eq!(
            flow_key(&fx.emit[0].1, 0).unwrap().0.ipv4_dst,
            [10, 9, 9, 9]
        );
        // The flow counted it (as Open vSwitch does; a live trace reads it).
        let st = s
            .flows
            .flow_stats(&of::FlowStatsRequest::default(), 0, &mut Fake)
            .unwrap();
        assert_eq!((st[0].packet_count, st[0].byte_count), (1, f.len() as u64));
        // A group that does not exist is refused before anything is sent.
        let fx = send(
            &mut s,
            1,
            7,
            po(vec![of::Action::output(2), of::Action::Group(1)]),
        );
        assert!(fx.emit.is_empty());
        assert_eq!(
            errors(&fx),
            [code(of::OFPET_BAD_ACTION, of::OFPBAC_BAD_OUT_GROUP)]
        );
        // Plain outputs (not through the pipeline) send what the pipeline
        // would: to the ingress port's number nothing, to IN_PORT back.
        let plain = vec![
            of::Action::output(2),
            of::Action::output(1),
            of::Action::output(of::OFPP_IN_PORT),
            of::Action::output(3),
        ];
        let fx = send(&mut s, 1, 9, po(plain.clone()));
        assert_eq!(fx.emit, [(2, f.clone()), (1, f.clone()), (3, f.clone())]);
        let mut dst = [0u8; 6];
        dst.copy_from_slice(&f[..6]);
        let mut piped = plain;
        piped.push(of::Action::SetField(of::OxmField::EthDst(
            of::MacAddr(dst),
            None,
        )));
        assert_eq!(send(&mut s, 1, 10, po(piped)).emit, fx.emit);
        let mut bad = PacketOut::new(1, vec![], f.clone());
        bad.buffer_id = 5;
        let fx = send(&mut s, 1, 8, Message::PacketOut(bad));
        assert_eq!(
            errors(&fx),
            [code(of::OFPET_BAD_REQUEST, of::OFPBRC_BUFFER_UNKNOWN)]
        );
    }

    #[test]
    fn multiparts_describe_ports_tables_and_split_big_flow_dumps() {
        let mut s = switch();
        hello(&mut s, 1);
        let mp = |b| Message::MultipartRequest(of::MultipartRequest::new(b));
        let fx = send(&mut s, 1, 2, mp(Req::PortDesc));
        assert!(
            matches!(&fx.send[0].2, Message::MultipartReply(r) if matches!(&r.body, Rep::PortDesc(p) if p.len() == 3))
        );
        let fx = send(&mut s, 1, 3, mp(Req::PortStats(2)));
        assert!(
            matches!(&fx.send[0].2, Message::MultipartReply(r) if matches!(&r.body, Rep::PortStats(p) if p.len() == 1 && p[0].rx_packets == 3))
        );
        let fx = send(&mut s, 1, 3, mp(Req::PortStats(99)));
        assert_eq!(
            errors(&fx),
            [code(of::OFPET_BAD_REQUEST, of::OFPBRC_BAD_PORT)]
        );
        for i in 0..2000u32 {
            let fm: FlowMod = format!("ip,nw_dst=10.{}.{}.1 actions=output:1", i / 256, i % 256)
                .parse()
                .unwrap();
            assert!(errors(&send(&mut s, 1, 4, Message::FlowMod(fm))).is_empty());
        }
        // A dump over many flows comes a step at a time, until its last
        // reply (without REPLY_MORE).
        let req = of::FlowStatsRequest::default();
        let mut all = send(&mut s, 1, 5, mp(Req::Flow(req.clone()))).send;
        let mut steps = 1;
        while s.has_job(1) {
            all.extend(s.job_step(1, 0, &mut Fake).send);
            steps += 1;
        }
        assert_eq!(steps, 2000usize.div_ceil(JOB_STEP));
        assert!(all.len() > 1);
        let mut total = 0;
        let mut last_prio = u16::MAX;
        for (i, (_, xid, m)) in all.iter().enumerate() {
            let Message::MultipartReply(r) = m else {
                panic!()
            };
            let Rep::Flow(list) = &r.body else { panic!() };
            total += list.len();
            for f in list {
                assert!(f.priority <= last_prio, "highest priority first");
                last_prio = f.priority;
            }
            assert_eq!(*xid, 5);
            assert_eq!(r.flags & of::OFPMPF_REPLY_MORE != 0, i + 1 < all.len());
            assert!(m.to_bytes(5).is_ok(), "reply too large");
        }
        assert_eq!(total, 2000);
        let mut all = send(&mut s, 1, 6, mp(Req::Aggregate(req))).send;
        while s.has_job(1) {
            all.extend(s.job_step(1, 0, &mut Fake).send);
        }
        assert!(
            matches!(&all[..], [(_, 6, Message::MultipartReply(r))] if matches!(r.body, Rep::Aggregate(a) if a.flow_count == 2000))
        );
        let mut all = send(&mut s, 1, 8, mp(Req::Table)).send;
        assert!(s.has_job(1));
        // A connection that goes away takes its answer with it.
        s.disconnected(1);
        assert!(!s.has_job(1));
        hello(&mut s, 1);
        all.extend(send(&mut s, 1, 8, mp(Req::Table)).send);
        while s.has_job(1) {
            all.extend(s.job_step(1, 0, &mut Fake).send);
        }
        assert!(
            matches!(&all[..], [(_, 8, Message::MultipartReply(r))] if matches!(&r.body, Rep::Table(t) if t[0].active_count == 2000))
        );
        let fx = send(&mut s, 1, 7, mp(Req::GroupDesc));
        assert!(
            matches!(&fx.send[..], [(1, 7, Message::MultipartReply(r))] if matches!(&r.body, Rep::GroupDesc(g) if g.is_empty()))
        );
        // Every table is described, and counted.
        let fx = send(&mut s, 1, 8, mp(Req::TableFeatures(Vec::new())));
        let n: usize = fx
            .send
            .iter()
            .map(|(_, _, m)| match m {
                Message::MultipartReply(r) => match &r.body {
                    Rep::TableFeatures(t) => t.len(),
                    _ => 0,
                },
                _ => 0,
            })
            .sum();
        assert_eq!(n, N_TABLES as usize);
        let mut all = send(&mut s, 1, 9, mp(Req::Table)).send;
        while s.has_job(1) {
            all.extend(s.job_step(1, 0, &mut Fake).send);
        }
        assert!(
            matches!(&all[..], [(_, 9, Message::MultipartReply(r))] if matches!(&r.body, Rep::Table(t) if t.len() == N_TABLES as usize))
        );
    }

    #[test]
    fn arp_responder_and_standalone_fail_mode() {
        let mut s = switch();
        s.settings.arp_responder = Some([2, 0xd1, 0, 0, 0, 1]);
        s.settings.fail_mode = FailMode::Standalone;
        let mut req = vec![0xff; 6];
        req.extend_from_slice(&[2, 0, 0, 0, 0, 0xa, 8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
        req.extend_from_slice(&[
            2, 0, 0, 0, 0, 0xa, 10, 1, 0, 2, 0, 0, 0, 0, 0, 0, 10, 1, 0, 1,
        ]);
        let fx = s.punt(pu(1, 0, u32::MAX, 42, req), 0, &mut Fake);
        assert_eq!(fx.emit.len(), 1);
        assert_eq!(fx.emit[0].0, 1);
        assert_eq!(s.counters.arp_replies, 1);
        // Standalone: unknown destination floods, known one gets a flow.
        let mut a_to_b = ipv4_frame(17, [10, 1, 0, 2], [10, 1, 0, 3], 1, 2);
        a_to_b[..6].copy_from_slice(&[2, 0, 0, 0, 0, 0xb]);
        a_to_b[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xa]);
        let fx = s.punt(pu(1, 0, u32::MAX, 60, a_to_b.clone()), 0, &mut Fake);
        assert_eq!(fx.emit.len(), 2);
        let mut b_to_a = a_to_b.clone();
        b_to_a[..6].copy_from_slice(&[2, 0, 0, 0, 0, 0xa]);
        b_to_a[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xb]);
        let fx = s.punt(pu(2, 0, u32::MAX, 60, b_to_a), 0, &mut Fake);
        assert_eq!(fx.emit, [(1, fx.emit[0].1.clone())]);
        assert_eq!(s.flows.len(), 1);
        // A controller arrives: the learned flows go.
        let fx = s.connected(1, 0, &mut Fake);
        assert!(fx
            .ops
            .iter()
            .any(|o| matches!(o, MapOp::DelFlow(_) | MapOp::DrainFlows(_))));
        assert!(s.flows.is_empty());
    }

    /// Standalone learning takes the source MAC of every punted frame: a
    /// container sending from ever new addresses used to grow the table
    /// (and the agent's memory) without bound.
    #[test]
    fn standalone_learning_is_bounded() {
        let mut s = switch();
        s.settings.fail_mode = FailMode::Standalone;
        let mut f = ipv4_frame(17, [10, 1, 0, 2], [10, 1, 0, 3], 1, 2);
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 0xb]);
        let mac = |i: u32| {
            let [a, b, c, d] = i.to_be_bytes();
            [2, 0xee, a, b, c, d]
        };
        let n = 5 * MAX_LEARNED_MACS as u32 / 2;
        for i in 0..n {
            f[6..12].copy_from_slice(&mac(i));
            let _ = s.punt(pu(1, 0, u32::MAX, 60, f.clone()), 0, &mut Fake);
            assert!(s.macs.len() <= MAX_LEARNED_MACS);
        }
        // Still learning: the last source is known, and a reply to it gets
        // a flow.
        let last = mac(n - 1);
        assert_eq!(s.macs.get(&last), Some(&1));
        let mut back = f.clone();
        back[..6].copy_from_slice(&last);
        back[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xb]);
        let fx = s.punt(pu(2, 0, u32::MAX, 60, back), 0, &mut Fake);
        assert_eq!(fx.emit.len(), 1);
        assert_eq!(fx.emit[0].0, 1);
    }

    #[test]
    fn mangled_messages_never_panic_nor_corrupt_the_table() {
        let mut s = switch();
        hello(&mut s, 1);
        let fm: FlowMod = "cookie=0x7,priority=9,in_port=1,ip,nw_dst=10.0.0.2 actions=set_field:02:00:00:00:00:0b->eth_dst,output:2"
            .parse()
            .unwrap();
        let good = Message::FlowMod(fm.clone()).to_bytes(3).unwrap();
        send(&mut s, 1, 3, Message::FlowMod(fm));
        let dump = |s: &Switch| {
            s.flows
                .rules()
                .rules()
                .map(|(i, r)| (i, r.clone()))
                .collect::<Vec<_>>()
        };
        let mut before = dump(&s);
        let seeds: Vec<Vec<u8>> = vec![
            good.clone(),
            Message::PacketOut(PacketOut::new(1, vec![of::Action::output(2)], vec![1; 20]))
                .to_bytes(4)
                .unwrap(),
            Message::MultipartRequest(of::MultipartRequest::new(Req::PortStats(of::OFPP_ANY)))
                .to_bytes(5)
                .unwrap(),
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000 {
            let mut b = seeds[i % seeds.len()].clone();
            for _ in 0..(rnd() % 4 + 1) {
                let at = (rnd() as usize) % b.len();
                b[at] = rnd() as u8;
            }
            if rnd() % 4 == 0 {
                b.truncate((rnd() as usize) % b.len());
            }
            if let Ok(Some((frame, _))) = of::decode(&b) {
                // Only well-formed FLOW_MODs may change the table.
                let is_mod = matches!(frame.message, Message::FlowMod(_));
                s.handle(1, frame, &b, 0, &mut Fake);
                if is_mod {
                    before = dump(&s);
                    for (_, r) in &before {
                        assert_eq!(r.key, r.key.masked(&r.mask));
                    }
                } else {
                    assert_eq!(dump(&s), before);
                }
            }
        }
    }
}
