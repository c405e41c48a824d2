//! One switch connection as a sans-IO state machine: bytes and clock ticks
//! in, bytes (in [`Conn::out`]) and [`Event`]s out. No sockets, no policy:
//! the tokio edge ([`super::server`]) feeds it and acts on its events.
//!
//! Life cycle (controller side of OpenFlow 1.3):
//! 1. On creation a HELLO is queued.
//! 2. The switch's HELLO must come first and support 1.3 (version bitmap or
//!    header version); otherwise HELLO_FAILED/INCOMPATIBLE and close.
//!    Then FEATURES_REQUEST.
//! 3. FEATURES_REPLY (main connection, `auxiliary_id` 0) names the datapath:
//!    SET_CONFIG (`miss_send_len` = no buffer, whole packets), SET_ASYNC
//!    ([`ASYNC`]: OpenFlow's defaults plus PACKET_IN for an invalid TTL,
//!    which Open vSwitch and the agent leave off by default: the virtual
//!    routers answer expired packets) and a PORT_DESC request are queued
//!    and [`Event::Ready`] is emitted.
//!    PACKET_INs that arrive between the HELLOs and FEATURES_REPLY (a
//!    switch may send them as soon as the versions are agreed, and one that
//!    kept its flows from an earlier connection does) are held, up to
//!    [`ConnConfig::max_early_packet_in_bytes`], and become events right
//!    after [`Event::Ready`].
//! 4. Ready: PACKET_IN, FLOW_REMOVED, PORT_STATUS, port descriptions,
//!    ERROR and BARRIER replies become events; ECHO requests are answered
//!    here; an idle switch is probed with ECHO_REQUEST and dropped when it
//!    does not answer.
//!
//! Denials (see [`translate::Denials`]): with the FEATURES_REQUEST answered
//! the switch is asked for its description (OFPMP_DESC). Open vSwitch, whose
//! datapath caches flows beyond a BARRIER, gets the meter of punting
//! denials ([`Conn::install_deny_meter`], called by the edge once it may
//! change the switch): METER_MOD (`OFPMC_ADD`, or `OFPMC_MODIFY` when the
//! meter is left from an earlier connection) and a BARRIER; from that
//! BARRIER_REPLY on, the denials sent to it punt through the meter. A switch
//! that refuses the meter keeps plain drops.
//!
//! Roles (several controllers): [`Conn::request_role`] sends a
//! ROLE_REQUEST; while a request for master awaits its ROLE_REPLY, every
//! FLOW_MOD, PACKET_OUT and BARRIER the connection is asked to send is held
//! back ([`Conn::sink`]) and released when the reply arrives, so a new
//! leader never writes before the switch accepted it; a refusal (a newer
//! generation is master) drops them. [`Conn::request_flows`] reads the
//! switch's flow table (multipart replies are gathered into one
//! [`Event::Flows`]) for reconciliation.
//!
//! Malformed input gets the OFPT_ERROR the codec names and the offending
//! message is skipped (also when its declared length is still arriving);
//! an unframeable header (length < 8) closes. Out-of-order or
//! wrong-direction messages (a second FEATURES_REPLY, a FLOW_MOD sent *to*
//! the controller...) get OFPET_BAD_REQUEST/OFPBRC_BAD_TYPE.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use daolinet_openflow::{
    consts::{
        OFPBRC_EPERM, OFPCML_NO_BUFFER, OFPCR_ROLE_MASTER, OFPET_BAD_REQUEST, OFPET_HELLO_FAILED,
        OFPET_METER_MOD_FAILED, OFPET_ROLE_REQUEST_FAILED, OFPMC_ADD, OFPMC_MODIFY,
        OFPMMFC_METER_EXISTS, OFPMPF_REPLY_MORE, OFPR_ACTION, OFPR_INVALID_TTL, OFPR_NO_MATCH,
        OFPT_ERROR, OFPT_HELLO, OFP_VERSION,
    },
    AsyncConfig, DecodeError, Decoder, Desc, ErrorCode, ErrorMsg, FlowRemoved, FlowStats,
    FlowStatsRequest, Hello, Message, MultipartReplyBody, MultipartRequest, MultipartRequestBody,
    PacketIn, Port, PortStatus, RoleMsg, SwitchConfig, SwitchFeatures,
};

use daolinet_policy::addr::Dpid;
use daolinet_policy::{Decision, FlowSpec};

use super::translate::{self, Denials, TranslateError};

/// Where the meter of punting denials stands on a switch that caches flows
/// past a BARRIER (see [`Conn::install_deny_meter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyMeter {
    /// Not asked for (not an Open vSwitch, or not known yet, or not sent:
    /// the edge may not change the switch).
    Absent,
    /// METER_MOD (xid) and a BARRIER (xid) sent, the BARRIER_REPLY awaited.
    Pending {
        /// xid of the METER_MOD.
        meter_mod: u32,
        /// xid of the BARRIER after it.
        barrier: u32,
    },
    /// In place: denials punt through it.
    Ready,
    /// The switch refused it: denials stay plain drops on this connection.
    Refused,
}

/// The asynchronous messages the controller asks for (SET_ASYNC, as
/// `[master/equal, slave]` masks): PACKET_IN for no match, an action and an
/// invalid TTL (`dec_ttl` of an expiring packet); every PORT_STATUS; every
/// FLOW_REMOVED (idle, hard, delete, group delete) to masters.
pub const ASYNC: AsyncConfig = AsyncConfig {
    packet_in_mask: [
        (1 << OFPR_NO_MATCH) | (1 << OFPR_ACTION) | (1 << OFPR_INVALID_TTL),
        0,
    ],
    port_status_mask: [0b111, 0b111],
    flow_removed_mask: [0b1111, 0],
};

/// Timers and limits of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnConfig {
    /// Probe the switch with ECHO_REQUEST after this much silence.
    pub echo_interval: Duration,
    /// Close when an ECHO_REQUEST is unanswered (and nothing else arrived)
    /// for this long.
    pub echo_timeout: Duration,
    /// Close when HELLO + FEATURES_REPLY have not arrived within this time.
    pub handshake_timeout: Duration,
    /// Largest message accepted from the switch.
    pub max_message_len: usize,
    /// Most BARRIER requests awaiting a reply that carry a token; beyond
    /// this a token is released at once (see [`Conn::barrier`]).
    pub max_pending_barriers: usize,
    /// Most frame bytes of the PACKET_INs held while the datapath is not
    /// known yet (before FEATURES_REPLY); later ones are dropped.
    pub max_early_packet_in_bytes: usize,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            echo_interval: Duration::from_secs(5),
            echo_timeout: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(10),
            max_message_len: daolinet_openflow::MAX_MESSAGE_LEN,
            max_pending_barriers: 4096,
            max_early_packet_in_bytes: 256 << 10,
        }
    }
}

/// Where the connection is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the switch's HELLO.
    Hello,
    /// HELLO done, FEATURES_REQUEST sent.
    Features,
    /// The datapath is known.
    Ready(Dpid),
    /// Closed: the edge must drop the socket once `out` is flushed.
    Closed,
}

/// Why a connection closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    /// The switch does not speak OpenFlow 1.3.
    #[error("switch does not support OpenFlow 1.3")]
    Incompatible,
    /// The first message was not a HELLO.
    #[error("first message was not HELLO")]
    NoHello,
    /// The switch refused our HELLO.
    #[error("switch refused the handshake: {0}")]
    HelloFailed(String),
    /// An auxiliary connection (not supported).
    #[error("auxiliary connection {0} refused")]
    Auxiliary(u8),
    /// The byte stream cannot be framed any more.
    #[error("unframeable input: {0}")]
    Unframeable(DecodeError),
    /// HELLO/FEATURES did not complete in time.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// The switch's TLS certificate is bound to another datapath.
    #[error("certificate is for datapath {certified}, switch says it is {claimed}")]
    WrongDatapath {
        /// The datapath id of the certificate.
        certified: Dpid,
        /// The one in FEATURES_REPLY.
        claimed: Dpid,
    },
    /// No answer to ECHO_REQUEST.
    #[error("echo timed out")]
    EchoTimeout,
}

/// Something the edge must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Handshake complete: the datapath id is known.
    Ready {
        /// Datapath id.
        dpid: Dpid,
        /// The FEATURES_REPLY.
        features: SwitchFeatures,
    },
    /// A punted packet.
    PacketIn(PacketIn),
    /// A flow expired or was deleted.
    FlowRemoved(FlowRemoved),
    /// The PORT_DESC reply.
    Ports(Vec<Port>),
    /// A port changed.
    PortStatus(PortStatus),
    /// The switch reported an error about one of our messages.
    SwitchError {
        /// xid of our offending message.
        xid: u32,
        /// The error.
        error: ErrorMsg,
    },
    /// A BARRIER_REPLY for a barrier sent with this token.
    BarrierDone(u64),
    /// The switch answered a ROLE_REQUEST: our role there now and its
    /// generation id (held messages, if any, were released to
    /// [`Conn::out`]).
    Role {
        /// The request's xid ([`Conn::request_role`] returned it).
        xid: u32,
        /// The reply.
        reply: RoleMsg,
    },
    /// The switch refused a ROLE_REQUEST (e.g. OFPRRFC_STALE: a newer
    /// generation is master there); held messages were dropped.
    RoleRefused {
        /// The request's xid.
        xid: u32,
        /// The error.
        error: ErrorMsg,
    },
    /// The switch's flow table, as asked by [`Conn::request_flows`].
    Flows(Vec<FlowStats>),
    /// The flows of one cookie, as asked by [`Conn::request_flow_stats`]
    /// (read without reconciling anything), or the switch's error.
    FlowStats {
        /// xid of the request.
        xid: u32,
        /// The flows, or the switch's error in words.
        flows: Result<Vec<FlowStats>, String>,
    },
    /// The switch's description (OFPMP_DESC), asked at the handshake; the
    /// edge calls [`Conn::install_deny_meter`] if it may change the switch.
    Described(Desc),
    /// An OFPT_EXPERIMENTER message (DaoliNet's own: see
    /// [`daolinet_openflow::ext`]).
    Experimenter(daolinet_openflow::ExperimenterMsg),
    /// The connection is closed (after `out` is flushed).
    Closed(CloseReason),
}

/// The connection state machine.
#[derive(Debug)]
pub struct Conn {
    cfg: ConnConfig,
    phase: Phase,
    decoder: Decoder,
    out: BytesMut,
    next_xid: u32,
    /// Bytes of a rejected message still to discard.
    skip: usize,
    started: Instant,
    last_rx: Instant,
    echo_sent: Option<Instant>,
    barriers: HashMap<u32, u64>,
    /// The xid of a ROLE_REQUEST awaiting its reply, and whether it asked
    /// for master (then output is held in `held`).
    role_pending: Option<(u32, bool)>,
    held: BytesMut,
    /// The xid of a flow table read in progress and what arrived so far.
    flows_pending: Option<(u32, Vec<FlowStats>)>,
    /// Reads of one cookie's flows in progress (xid -> what arrived).
    stats_pending: HashMap<u32, Vec<FlowStats>>,
    /// The datapath the switch's certificate is bound to (TLS).
    certified: Option<Dpid>,
    /// PACKET_INs received before FEATURES_REPLY, and their frame bytes.
    early: Vec<PacketIn>,
    early_bytes: usize,
    /// The xid of the OFPMP_DESC request, until its reply.
    desc_pending: Option<u32>,
    /// The switch described itself as one caching flows past a BARRIER
    /// (Open vSwitch): its denials punt once [`DenyMeter::Ready`].
    caches_flows: bool,
    deny_meter: DenyMeter,
    /// Messages answered with an OFPT_ERROR.
    pub errors_sent: u64,
    /// PACKET_INs dropped before FEATURES_REPLY (beyond
    /// [`ConnConfig::max_early_packet_in_bytes`]).
    pub early_packet_ins_dropped: u64,
}

impl Conn {
    /// A new connection at `now`, with its HELLO queued.
    pub fn new(cfg: ConnConfig, now: Instant) -> Self {
        let mut c = Conn {
            cfg,
            phase: Phase::Hello,
            decoder: Decoder::new().max_message_len(cfg.max_message_len),
            out: BytesMut::with_capacity(4096),
            next_xid: 1,
            skip: 0,
            started: now,
            last_rx: now,
            echo_sent: None,
            barriers: HashMap::new(),
            role_pending: None,
            held: BytesMut::new(),
            flows_pending: None,
            stats_pending: HashMap::new(),
            certified: None,
            early: Vec::new(),
            early_bytes: 0,
            desc_pending: None,
            caches_flows: false,
            deny_meter: DenyMeter::Absent,
            errors_sent: 0,
            early_packet_ins_dropped: 0,
        };
        c.send(&Message::Hello(Hello::new()));
        c
    }

    /// Accepts only datapath `dpid` (the one the switch's TLS certificate
    /// is bound to): a FEATURES_REPLY naming another gets
    /// OFPET_BAD_REQUEST/OFPBRC_EPERM and closes the connection.
    pub fn bind_to(&mut self, dpid: Dpid) {
        self.certified = Some(dpid);
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The datapath id once known.
    pub fn dpid(&self) -> Option<Dpid> {
        match self.phase {
            Phase::Ready(d) => Some(d),
            _ => None,
        }
    }

    /// Bytes to write to the switch (the edge writes and advances them).
    pub fn out(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// Where messages that change the switch go: [`Conn::out`], or while a
    /// ROLE_REQUEST for master awaits its reply, the held buffer.
    pub fn sink(&mut self) -> &mut BytesMut {
        if self.holding() {
            &mut self.held
        } else {
            &mut self.out
        }
    }

    /// True while output is held for a ROLE_REPLY.
    pub fn holding(&self) -> bool {
        matches!(self.role_pending, Some((_, true)))
    }

    /// Drops what was held for a ROLE_REPLY; a deny meter among it was
    /// never sent.
    fn drop_held(&mut self) {
        self.held.clear();
        if matches!(self.deny_meter, DenyMeter::Pending { .. }) {
            self.deny_meter = DenyMeter::Absent;
        }
    }

    /// How denials are written to this switch now.
    pub fn denials(&self) -> Denials {
        if self.deny_meter == DenyMeter::Ready {
            Denials::Punt
        } else {
            Denials::Drop
        }
    }

    /// The state of the meter of punting denials.
    pub fn deny_meter(&self) -> DenyMeter {
        self.deny_meter
    }

    /// True once the switch described itself as caching flows past a
    /// BARRIER (Open vSwitch).
    pub fn caches_flows(&self) -> bool {
        self.caches_flows
    }

    /// On a switch that caches flows past a BARRIER, sends the meter of
    /// punting denials ([`translate::deny_meter_mod`]) and a BARRIER, once
    /// (through [`Conn::sink`]: held while a ROLE_REQUEST for master awaits
    /// its reply). The edge calls it whenever it may change the switch
    /// (alone or master) and when the switch's description arrives; it
    /// does nothing on other switches, before the description, or when the
    /// meter is sent, in place or refused. True when it sent something.
    pub fn install_deny_meter(&mut self) -> bool {
        if !self.caches_flows || self.deny_meter != DenyMeter::Absent {
            return false;
        }
        let meter_mod = self.send_change(&Message::MeterMod(translate::deny_meter_mod(OFPMC_ADD)));
        let barrier = self.send_change(&Message::BarrierRequest);
        self.deny_meter = DenyMeter::Pending { meter_mod, barrier };
        true
    }

    /// Sends a ROLE_REQUEST for `role` (`OFPCR_ROLE_*`) with `generation`;
    /// for master, holds what [`Conn::sink`] receives until the reply.
    /// Returns the xid.
    pub fn request_role(&mut self, role: u32, generation: u64) -> u32 {
        let xid = self.send(&Message::RoleRequest(RoleMsg {
            role,
            generation_id: generation,
        }));
        if role != OFPCR_ROLE_MASTER {
            // Nothing we queued may go out as a non-master.
            self.drop_held();
        }
        self.role_pending = Some((xid, role == OFPCR_ROLE_MASTER));
        xid
    }

    /// Asks for every flow of the switch ([`Event::Flows`] follows).
    pub fn request_flows(&mut self) -> u32 {
        let xid = self.send(&Message::MultipartRequest(MultipartRequest::new(
            MultipartRequestBody::Flow(FlowStatsRequest::default()),
        )));
        self.flows_pending = Some((xid, Vec::new()));
        xid
    }

    /// Most reads of [`Conn::request_flow_stats`] awaiting their reply.
    pub const MAX_PENDING_STATS: usize = 64;

    /// Asks for the flows whose cookie is `cookie` (all tables), to read
    /// their counters: [`Event::FlowStats`] with the returned xid follows.
    /// Nothing is reconciled. A read, so not held for a ROLE_REPLY. `None`
    /// when [`Conn::MAX_PENDING_STATS`] reads are already waiting.
    pub fn request_flow_stats(&mut self, cookie: u64) -> Option<u32> {
        if self.stats_pending.len() >= Self::MAX_PENDING_STATS {
            return None;
        }
        let xid = self.send(&Message::MultipartRequest(MultipartRequest::new(
            MultipartRequestBody::Flow(FlowStatsRequest {
                cookie,
                cookie_mask: u64::MAX,
                ..FlowStatsRequest::default()
            }),
        )));
        self.stats_pending.insert(xid, Vec::new());
        Some(xid)
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    fn xid(&mut self) -> u32 {
        let x = self.next_xid;
        self.next_xid = self.next_xid.wrapping_add(1).max(1);
        x
    }

    /// Queues `msg` with a fresh xid and returns the xid. A message too
    /// large to encode is logged and dropped.
    pub fn send(&mut self, msg: &Message) -> u32 {
        let xid = self.xid();
        self.send_xid(msg, xid);
        xid
    }

    fn send_xid(&mut self, msg: &Message, xid: u32) {
        if let Err(e) = msg.encode(xid, &mut self.out) {
            tracing::warn!(error = %e, msg_type = msg.msg_type(), "message not sent");
        }
    }

    /// Queues the OpenFlow message of a decision. FLOW_MOD adds and
    /// PACKET_OUTs (the PACKET_IN answers) are encoded straight into the
    /// output buffer ([`translate::put_flow_mod`],
    /// [`translate::put_packet_out`]).
    pub fn send_decision(&mut self, d: &Decision) -> Result<(), TranslateError> {
        match d {
            Decision::AddFlow(f) => self.send_flow(f),
            Decision::PacketOut {
                in_port,
                actions,
                data,
                ..
            } => {
                let xid = self.xid();
                translate::put_packet_out(*in_port, actions, data, xid, self.sink())
            }
            Decision::DeleteFlows { .. } => {
                let m = translate::to_message(d)?;
                self.send_change(&m);
                Ok(())
            }
        }
    }

    /// Queues a message that changes the switch (see [`Conn::sink`]).
    pub fn send_change(&mut self, msg: &Message) -> u32 {
        let xid = self.xid();
        if let Err(e) = msg.encode(xid, self.sink()) {
            tracing::warn!(error = %e, msg_type = msg.msg_type(), "message not sent");
        }
        xid
    }

    /// Queues the FLOW_MOD adding `f` (a denial as [`Conn::denials`] says).
    pub fn send_flow(&mut self, f: &FlowSpec) -> Result<(), TranslateError> {
        let xid = self.xid();
        let denials = self.denials();
        translate::put_flow_mod(f, denials, xid, self.sink())
    }

    /// Queues a BARRIER_REQUEST. With a token, [`Event::BarrierDone`] is
    /// emitted when its reply arrives; when too many are pending the token
    /// is returned at once (the caller proceeds without waiting).
    pub fn barrier(&mut self, token: Option<u64>) -> Option<u64> {
        let xid = self.send_change(&Message::BarrierRequest);
        match token {
            Some(t) if self.barriers.len() < self.cfg.max_pending_barriers => {
                self.barriers.insert(xid, t);
                None
            }
            other => other,
        }
    }

    fn error(&mut self, code: ErrorCode, xid: u32, offending: &[u8]) {
        self.errors_sent += 1;
        self.send_xid(&Message::Error(ErrorMsg::new(code, offending)), xid);
    }

    fn close(&mut self, why: CloseReason, events: &mut Vec<Event>) {
        if self.phase != Phase::Closed {
            self.phase = Phase::Closed;
            events.push(Event::Closed(why));
        }
    }

    /// Before the versions are agreed, a first message that is not a HELLO
    /// (or the switch's ERROR refusing ours) is refused from its header alone: HELLO_FAILED/INCOMPATIBLE and close
    /// (`true`), without waiting for the rest of its declared length. A
    /// peer that speaks something else (an HTTP client pointed at this
    /// port: `PUT ` reads as a 21,536-byte message) is told at once instead
    /// of at the handshake timeout.
    fn refuse_early(&mut self, rest: &[u8], events: &mut Vec<Event>) -> bool {
        let (Some(&msg_type), Some(xid)) = (rest.get(1), rest.get(4..8)) else {
            return false;
        };
        // A switch that refuses our HELLO says why in an ERROR first.
        if msg_type == OFPT_HELLO || msg_type == OFPT_ERROR {
            return false;
        }
        let xid = u32::from_be_bytes([xid[0], xid[1], xid[2], xid[3]]);
        let shown = rest.get(..64).unwrap_or(rest);
        self.error(ErrorCode::HELLO_INCOMPATIBLE, xid, shown);
        self.close(CloseReason::NoHello, events);
        true
    }

    /// Consumes complete messages from the front of `input` and returns how
    /// many bytes were used (the rest is a partial message: call again with
    /// more bytes appended). Replies go to [`Conn::out`], the rest to `events`.
    pub fn receive(&mut self, input: &[u8], now: Instant, events: &mut Vec<Event>) -> usize {
        let mut used = 0;
        if !input.is_empty() {
            self.last_rx = now;
            self.echo_sent = None;
        }
        while self.phase != Phase::Closed {
            let rest = input.get(used..).unwrap_or_default();
            if self.skip > 0 {
                let n = self.skip.min(rest.len());
                self.skip -= n;
                used += n;
                if self.skip > 0 {
                    break;
                }
                continue;
            }
            if self.phase == Phase::Hello && self.refuse_early(rest, events) {
                used = input.len();
                break;
            }
            match self.decoder.decode(rest) {
                Ok(Some((frame, n))) => {
                    let raw = rest.get(..n).unwrap_or(rest);
                    self.handle(frame.xid, frame.message, raw, events);
                    used += n;
                }
                Ok(None) => break,
                Err(e) => {
                    let (xid, reply) = e.reply(rest);
                    self.errors_sent += 1;
                    self.send_xid(&reply, xid);
                    tracing::debug!(error = %e, "malformed message from switch");
                    match e.frame_len {
                        // Before HELLO the peer is not an OpenFlow switch.
                        _ if self.phase == Phase::Hello => {
                            used = input.len();
                            self.close(CloseReason::NoHello, events);
                        }
                        Some(n) if n <= rest.len() => used += n,
                        Some(n) => {
                            self.skip = n - rest.len();
                            used += rest.len();
                        }
                        None => {
                            used = input.len();
                            self.close(CloseReason::Unframeable(e), events);
                        }
                    }
                }
            }
        }
        used
    }

    fn handle(&mut self, xid: u32, msg: Message, raw: &[u8], events: &mut Vec<Event>) {
        use Message as M;
        match (self.phase, msg) {
            (Phase::Closed, _) => {}
            (Phase::Hello, M::Hello(h)) => {
                if !h.supports(OFP_VERSION) {
                    self.error(ErrorCode::HELLO_INCOMPATIBLE, xid, raw);
                    self.close(CloseReason::Incompatible, events);
                } else {
                    self.phase = Phase::Features;
                    self.send(&M::FeaturesRequest);
                }
            }
            (Phase::Hello, M::Error(e)) => {
                self.close(CloseReason::HelloFailed(describe(&e)), events);
            }
            (Phase::Hello, _) => {
                self.error(ErrorCode::HELLO_INCOMPATIBLE, xid, raw);
                self.close(CloseReason::NoHello, events);
            }
            (_, M::EchoRequest(data)) => self.send_xid(&M::EchoReply(data), xid),
            (_, M::EchoReply(_)) => {}
            (Phase::Features, M::FeaturesReply(f)) => {
                if f.auxiliary_id != 0 {
                    self.error(ErrorCode::BAD_TYPE, xid, raw);
                    self.close(CloseReason::Auxiliary(f.auxiliary_id), events);
                    return;
                }
                let dpid = Dpid(f.datapath_id);
                if let Some(certified) = self.certified.filter(|c| *c != dpid) {
                    self.error(ErrorCode::new(OFPET_BAD_REQUEST, OFPBRC_EPERM), xid, raw);
                    self.close(
                        CloseReason::WrongDatapath {
                            certified,
                            claimed: dpid,
                        },
                        events,
                    );
                    return;
                }
                self.phase = Phase::Ready(dpid);
                self.send(&M::SetConfig(SwitchConfig {
                    flags: 0,
                    miss_send_len: OFPCML_NO_BUFFER,
                }));
                self.send(&M::SetAsync(ASYNC));
                self.send(&M::MultipartRequest(MultipartRequest::new(
                    MultipartRequestBody::PortDesc,
                )));
                self.desc_pending = Some(self.send(&M::MultipartRequest(MultipartRequest::new(
                    MultipartRequestBody::Desc,
                ))));
                events.push(Event::Ready { dpid, features: f });
                // Held PACKET_INs, in their order, once the edge knows the
                // datapath (and has queued its initialisation before their
                // answers).
                events.extend(self.early.drain(..).map(Event::PacketIn));
                self.early_bytes = 0;
            }
            (Phase::Features, M::PacketIn(p)) => {
                // Valid once the HELLOs are exchanged, but the datapath is
                // not known yet: held until FEATURES_REPLY, within a budget.
                let n = p.data.len();
                if self.early_bytes + n <= self.cfg.max_early_packet_in_bytes {
                    self.early_bytes += n;
                    self.early.push(p);
                } else {
                    self.early_packet_ins_dropped += 1;
                    tracing::debug!(
                        len = n,
                        "PACKET_IN before FEATURES_REPLY dropped: budget spent"
                    );
                }
            }
            (Phase::Features, M::Error(e)) => {
                if e.code().is_some_and(|c| c.err_type == OFPET_HELLO_FAILED) {
                    self.close(CloseReason::HelloFailed(describe(&e)), events);
                } else {
                    events.push(Event::SwitchError { xid, error: e });
                }
            }
            (Phase::Features, M::PortStatus(_)) => {
                // Port changes during the handshake are covered by PORT_DESC.
            }
            (Phase::Ready(_), M::PacketIn(p)) => events.push(Event::PacketIn(p)),
            (Phase::Ready(_), M::FlowRemoved(f)) => events.push(Event::FlowRemoved(f)),
            (Phase::Ready(_), M::PortStatus(p)) => events.push(Event::PortStatus(p)),
            (Phase::Ready(_), M::MultipartReply(r)) => match r.body {
                MultipartReplyBody::PortDesc(ports) => events.push(Event::Ports(ports)),
                MultipartReplyBody::Desc(d) if self.desc_pending == Some(xid) => {
                    self.desc_pending = None;
                    self.caches_flows = translate::caches_flows_past_barrier(&d);
                    tracing::info!(
                        mfr = %d.mfr_desc,
                        hw = %d.hw_desc,
                        sw = %d.sw_desc,
                        punting_denials = self.caches_flows,
                        "switch description"
                    );
                    events.push(Event::Described(d));
                }
                MultipartReplyBody::Flow(flows) if self.stats_pending.contains_key(&xid) => {
                    if r.flags & OFPMPF_REPLY_MORE == 0 {
                        let mut all = self.stats_pending.remove(&xid).unwrap_or_default();
                        all.extend(flows);
                        events.push(Event::FlowStats {
                            xid,
                            flows: Ok(all),
                        });
                    } else if let Some(got) = self.stats_pending.get_mut(&xid) {
                        got.extend(flows);
                    }
                }
                MultipartReplyBody::Flow(flows) => {
                    if let Some((want, got)) = &mut self.flows_pending {
                        if *want == xid {
                            got.extend(flows);
                            if r.flags & OFPMPF_REPLY_MORE == 0 {
                                let (_, all) = self.flows_pending.take().unwrap_or_default();
                                events.push(Event::Flows(all));
                            }
                        }
                    }
                }
                _ => {}
            },
            (Phase::Ready(_), M::RoleReply(r)) => {
                if self.role_pending.is_some_and(|(want, _)| want == xid) {
                    self.role_pending = None;
                    let held = std::mem::take(&mut self.held);
                    self.out.extend_from_slice(&held);
                }
                events.push(Event::Role { xid, reply: r });
            }
            (Phase::Ready(_), M::BarrierReply) => {
                if matches!(self.deny_meter, DenyMeter::Pending { barrier, .. } if barrier == xid) {
                    self.deny_meter = DenyMeter::Ready;
                    tracing::debug!("deny meter in place: denials punt through it");
                }
                if let Some(t) = self.barriers.remove(&xid) {
                    events.push(Event::BarrierDone(t));
                }
            }
            (Phase::Ready(_), M::Error(e)) if matches!(self.deny_meter, DenyMeter::Pending { meter_mod, .. } if meter_mod == xid) =>
            {
                if e.code().is_some_and(|c| {
                    c.err_type == OFPET_METER_MOD_FAILED && c.code == OFPMMFC_METER_EXISTS
                }) {
                    // Left from an earlier connection (the switch keeps its
                    // meters): made ours again, before the BARRIER's reply.
                    self.send_change(&Message::MeterMod(translate::deny_meter_mod(OFPMC_MODIFY)));
                } else {
                    tracing::warn!(error = %describe(&e),
                        "the switch refused the deny meter: its denials stay drops, \
                         and a drop it caches past a policy change may eat a first packet");
                    self.deny_meter = DenyMeter::Refused;
                }
            }
            (Phase::Ready(_), M::Error(e)) => {
                let role_xid = self.role_pending.is_some_and(|(want, _)| want == xid);
                if role_xid
                    || e.code()
                        .is_some_and(|c| c.err_type == OFPET_ROLE_REQUEST_FAILED)
                {
                    if role_xid {
                        self.role_pending = None;
                        self.drop_held();
                    }
                    events.push(Event::RoleRefused { xid, error: e });
                } else if self.stats_pending.remove(&xid).is_some() {
                    events.push(Event::FlowStats {
                        xid,
                        flows: Err(describe(&e)),
                    });
                } else {
                    if self
                        .flows_pending
                        .as_ref()
                        .is_some_and(|(want, _)| *want == xid)
                    {
                        // No flow table from this switch: reconcile on nothing.
                        self.flows_pending = None;
                        events.push(Event::Flows(Vec::new()));
                    }
                    events.push(Event::SwitchError { xid, error: e });
                }
            }
            (
                Phase::Ready(_),
                M::GetConfigReply(_) | M::GetAsyncReply(_) | M::QueueGetConfigReply(_),
            ) => {}
            (Phase::Ready(_), M::Experimenter(e)) => events.push(Event::Experimenter(e)),
            // Anything else is out of order here (a second HELLO or
            // FEATURES_REPLY, a FLOW_REMOVED before the datapath is known)
            // or a controller-to-switch message sent the wrong way.
            (_, _) => self.error(ErrorCode::BAD_TYPE, xid, raw),
        }
    }

    /// Timers: handshake deadline, echo probe, echo timeout.
    pub fn tick(&mut self, now: Instant, events: &mut Vec<Event>) {
        match self.phase {
            Phase::Closed => {}
            Phase::Hello | Phase::Features => {
                if now.saturating_duration_since(self.started) >= self.cfg.handshake_timeout {
                    self.close(CloseReason::HandshakeTimeout, events);
                }
            }
            Phase::Ready(_) => match self.echo_sent {
                Some(t) => {
                    if now.saturating_duration_since(t) >= self.cfg.echo_timeout {
                        self.close(CloseReason::EchoTimeout, events);
                    }
                }
                None => {
                    if now.saturating_duration_since(self.last_rx) >= self.cfg.echo_interval {
                        self.send(&Message::EchoRequest(Vec::new()));
                        self.echo_sent = Some(now);
                    }
                }
            },
        }
    }
}

/// Text for logging an error a switch sent (`OFPET_.../OFP..._...`).
pub fn describe(e: &ErrorMsg) -> String {
    match e.code() {
        Some(c) => match c.names() {
            Some((t, n)) => format!("{t}/{n}"),
            None => format!("type {} code {}", c.err_type, c.code),
        },
        None => "experimenter error".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daolinet_openflow::{
        consts::*, decode, FlowMod, Frame, HelloElement, Match, MultipartReply,
    };

    fn bytes(msgs: &[(u32, Message)]) -> Vec<u8> {
        let mut b = BytesMut::new();
        for (xid, m) in msgs {
            m.encode(*xid, &mut b).unwrap();
        }
        b.to_vec()
    }

    fn drain(c: &mut Conn) -> Vec<Frame> {
        let out = c.out();
        let mut v = Vec::new();
        let mut used = 0;
        while let Some((f, n)) = decode(&out[used..]).unwrap() {
            v.push(f);
            used += n;
        }
        assert_eq!(
            used,
            out.len(),
            "controller output ends in a partial message"
        );
        out.clear();
        v
    }

    fn features(dpid: u64) -> Message {
        Message::FeaturesReply(SwitchFeatures {
            datapath_id: dpid,
            n_buffers: 0,
            n_tables: 254,
            auxiliary_id: 0,
            capabilities: 0,
            reserved: 0,
        })
    }

    fn error_code(f: &Frame) -> Option<ErrorCode> {
        match &f.message {
            Message::Error(e) => e.code(),
            _ => None,
        }
    }

    /// A connection through the handshake, output drained.
    /// A flow's statistics as a switch reports them: `cookie`, `priority`
    /// and `packet_count`, the rest zero and an empty match.
    fn flow_stats(cookie: u64, priority: u16, packet_count: u64) -> FlowStats {
        FlowStats {
            table_id: 0,
            duration_sec: 0,
            duration_nsec: 0,
            priority,
            idle_timeout: 0,
            hard_timeout: 0,
            flags: 0,
            cookie,
            packet_count,
            byte_count: 0,
            match_: Match::new(),
            instructions: vec![],
        }
    }

    fn ready(now: Instant) -> Conn {
        let mut c = Conn::new(ConnConfig::default(), now);
        let mut ev = Vec::new();
        let input = bytes(&[(1, Message::Hello(Hello::new())), (2, features(7))]);
        assert_eq!(c.receive(&input, now, &mut ev), input.len());
        assert!(matches!(
            ev.as_slice(),
            [Event::Ready { dpid: Dpid(7), .. }]
        ));
        drain(&mut c);
        c
    }

    /// A switch whose certificate names another datapath is refused at
    /// FEATURES_REPLY.
    #[test]
    fn a_certificate_for_another_datapath_is_refused() {
        let now = Instant::now();
        let mut c = Conn::new(ConnConfig::default(), now);
        c.bind_to(Dpid(8));
        let mut ev = Vec::new();
        let input = bytes(&[(1, Message::Hello(Hello::new())), (2, features(7))]);
        c.receive(&input, now, &mut ev);
        assert!(
            matches!(
                &ev[..],
                [Event::Closed(CloseReason::WrongDatapath {
                    certified: Dpid(8),
                    claimed: Dpid(7)
                })]
            ),
            "{ev:?}"
        );
        assert!(c.is_closed());
        let out = drain(&mut c);
        assert_eq!(
            out.last().and_then(error_code),
            Some(ErrorCode::new(OFPET_BAD_REQUEST, OFPBRC_EPERM))
        );
        // The right one is served.
        let mut c = Conn::new(ConnConfig::default(), now);
        c.bind_to(Dpid(7));
        let mut ev = Vec::new();
        c.receive(&input, now, &mut ev);
        assert!(matches!(&ev[..], [Event::Ready { dpid: Dpid(7), .. }]));
    }

    /// A read of one cookie's flows (a live trace's counters) asks the
    /// switch with that cookie under a full mask, gathers split replies
    /// into one event of its own (no reconciliation), reports an error
    /// for its xid, and is bounded.
    #[test]
    fn cookie_reads_are_their_own_events() {
        use daolinet_openflow::MultipartReply;
        let now = Instant::now();
        let mut c = ready(now);
        let xid = c.request_flow_stats(0xabc).unwrap();
        let out = drain(&mut c);
        match &out[..] {
            [Frame {
                message: Message::MultipartRequest(r),
                xid: x,
            }] if *x == xid => match &r.body {
                MultipartRequestBody::Flow(f) => {
                    assert_eq!(
                        (f.cookie, f.cookie_mask, f.table_id),
                        (0xabc, u64::MAX, OFPTT_ALL)
                    )
                }
                b => panic!("{b:?}"),
            },
            o => panic!("{o:?}"),
        }
        let stats = |n| flow_stats(0xabc, 100, n);
        let mut more = MultipartReply::new(MultipartReplyBody::Flow(vec![stats(1)]));
        more.flags = OFPMPF_REPLY_MORE;
        let last = MultipartReply::new(MultipartReplyBody::Flow(vec![stats(2)]));
        let mut ev = Vec::new();
        c.receive(
            &bytes(&[
                (xid, Message::MultipartReply(more)),
                (xid, Message::MultipartReply(last)),
            ]),
            now,
            &mut ev,
        );
        assert!(
            matches!(&ev[..], [Event::FlowStats { xid: x, flows: Ok(f) }]
                if *x == xid && f.iter().map(|f| f.packet_count).collect::<Vec<_>>() == [1, 2]),
            "{ev:?}"
        );
        // The switch refuses a read: the error is the read's answer.
        ev.clear();
        let xid = c.request_flow_stats(1).unwrap();
        drain(&mut c);
        let refusal = Message::Error(ErrorMsg::new(
            ErrorCode::new(OFPET_BAD_REQUEST, OFPBRC_BAD_MULTIPART),
            &[],
        ));
        c.receive(&bytes(&[(xid, refusal)]), now, &mut ev);
        assert!(
            matches!(&ev[..], [Event::FlowStats { xid: x, flows: Err(e) }] if *x == xid && e.contains("MULTIPART")),
            "{ev:?}"
        );
        // Bounded: a switch that never answers cannot grow the table.
        for _ in 0..Conn::MAX_PENDING_STATS {
            assert!(c.request_flow_stats(2).is_some());
        }
        assert_eq!(c.request_flow_stats(2), None);
    }

    /// A master's changes wait for its ROLE_REPLY; a refusal drops them;
    /// flow stats replies split with REPLY_MORE come back as one event.
    #[test]
    fn role_holds_changes_and_flows_are_gathered() {
        use daolinet_openflow::MultipartReply;
        let now = Instant::now();
        let mut c = ready(now);
        let mut ev = Vec::new();
        let xid = c.request_role(OFPCR_ROLE_MASTER, 9);
        let fxid = c.request_flows();
        c.send_change(&Message::BarrierRequest);
        let out = drain(&mut c);
        assert!(
            matches!(&out[0].message, Message::RoleRequest(r) if r.role == OFPCR_ROLE_MASTER && r.generation_id == 9)
        );
        assert!(matches!(&out[1].message, Message::MultipartRequest(_)));
        assert_eq!(out.len(), 2, "the barrier went out before the role reply");
        assert!(c.holding());
        let stats = |cookie| flow_stats(cookie, 1, 0);
        let mut more = MultipartReply::new(MultipartReplyBody::Flow(vec![stats(1)]));
        more.flags = OFPMPF_REPLY_MORE;
        let last = MultipartReply::new(MultipartReplyBody::Flow(vec![stats(2)]));
        let input = bytes(&[
            (
                xid,
                Message::RoleReply(RoleMsg {
                    role: OFPCR_ROLE_MASTER,
                    generation_id: 9,
                }),
            ),
            (fxid, Message::MultipartReply(more)),
            (fxid, Message::MultipartReply(last)),
        ]);
        c.receive(&input, now, &mut ev);
        assert!(
            matches!(&ev[0], Event::Role { xid: x, reply } if *x == xid && reply.role == OFPCR_ROLE_MASTER)
        );
        assert!(
            matches!(&ev[1], Event::Flows(f) if f.len() == 2 && f[1].cookie == 2),
            "{ev:?}"
        );
        assert!(matches!(
            &drain(&mut c)[..],
            [Frame {
                message: Message::BarrierRequest,
                ..
            }]
        ));
        assert!(!c.holding());
        // Refused: what was held never goes out.
        ev.clear();
        let xid = c.request_role(OFPCR_ROLE_MASTER, 8);
        c.send_change(&Message::BarrierRequest);
        drain(&mut c);
        let refusal = Message::Error(ErrorMsg::new(
            ErrorCode::new(OFPET_ROLE_REQUEST_FAILED, OFPRRFC_STALE),
            &[],
        ));
        c.receive(&bytes(&[(xid, refusal)]), now, &mut ev);
        assert!(matches!(&ev[..], [Event::RoleRefused { xid: x, .. }] if *x == xid));
        assert!(drain(&mut c).is_empty());
        assert!(!c.holding());
    }

    #[test]
    fn handshake_config_and_port_desc() {
        let now = Instant::now();
        let mut c = Conn::new(ConnConfig::default(), now);
        let out = drain(&mut c);
        assert!(
            matches!(&out[..], [Frame { message: Message::Hello(h), .. }] if h.supports(OFP_VERSION))
        );
        let mut ev = Vec::new();
        // A 1.5 switch also speaking 1.3 (bitmap) is fine.
        let hello = Message::Hello(Hello {
            version: 6,
            elements: vec![HelloElement::VersionBitmap(vec![(1 << 4) | (1 << 6)])],
        });
        c.receive(&bytes(&[(1, hello)]), now, &mut ev);
        assert!(ev.is_empty());
        let out = drain(&mut c);
        assert!(matches!(
            &out[..],
            [Frame {
                message: Message::FeaturesRequest,
                ..
            }]
        ));
        assert_eq!(c.phase(), Phase::Features);
        c.receive(&bytes(&[(out[0].xid, features(0xabc))]), now, &mut ev);
        assert!(matches!(
            &ev[..],
            [Event::Ready {
                dpid: Dpid(0xabc),
                ..
            }]
        ));
        assert_eq!(c.dpid(), Some(Dpid(0xabc)));
        let out = drain(&mut c);
        assert!(matches!(
            &out[..],
            [
                Frame {
                    message: Message::SetConfig(SwitchConfig {
                        flags: 0,
                        miss_send_len: OFPCML_NO_BUFFER
                    }),
                    ..
                },
                Frame {
                    message: Message::SetAsync(ASYNC),
                    ..
                },
                Frame {
                    message: Message::MultipartRequest(MultipartRequest {
                        body: MultipartRequestBody::PortDesc,
                        ..
                    }),
                    ..
                },
                Frame {
                    message: Message::MultipartRequest(MultipartRequest {
                        body: MultipartRequestBody::Desc,
                        ..
                    }),
                    ..
                },
            ]
        ));
        // Port description, echo, packet-in.
        ev.clear();
        let ports =
            Message::MultipartReply(MultipartReply::new(MultipartReplyBody::PortDesc(vec![
                Port::new(1, daolinet_openflow::MacAddr([2, 0, 0, 0, 0, 1]), "eth0"),
            ])));
        let pin = Message::PacketIn(PacketIn::new(3, OFPR_NO_MATCH, vec![1, 2, 3]));
        c.receive(
            &bytes(&[(5, ports), (9, Message::EchoRequest(vec![7, 7])), (10, pin)]),
            now,
            &mut ev,
        );
        assert!(matches!(&ev[0], Event::Ports(p) if p.len() == 1 && p[0].name == "eth0"));
        assert!(
            matches!(&ev[1], Event::PacketIn(p) if p.in_port() == Some(3) && p.data == [1, 2, 3])
        );
        let out = drain(&mut c);
        assert_eq!(
            out,
            vec![Frame {
                xid: 9,
                message: Message::EchoReply(vec![7, 7])
            }]
        );
    }

    fn desc(mfr: &str, hw: &str) -> Message {
        Message::MultipartReply(MultipartReply::new(MultipartReplyBody::Desc(Desc {
            mfr_desc: mfr.into(),
            hw_desc: hw.into(),
            sw_desc: "3.1.0".into(),
            serial_num: "None".into(),
            dp_desc: "None".into(),
        })))
    }

    /// A connection through the handshake to a switch described as
    /// `mfr`/`hw`, output drained.
    fn described(now: Instant, mfr: &str, hw: &str) -> (Conn, Vec<Event>) {
        let mut c = Conn::new(ConnConfig::default(), now);
        let mut ev = Vec::new();
        c.receive(
            &bytes(&[(1, Message::Hello(Hello::new())), (2, features(7))]),
            now,
            &mut ev,
        );
        let desc_xid = drain(&mut c)
            .iter()
            .find_map(|f| match &f.message {
                Message::MultipartRequest(MultipartRequest {
                    body: MultipartRequestBody::Desc,
                    ..
                }) => Some(f.xid),
                _ => None,
            })
            .expect("no OFPMP_DESC request at the handshake");
        ev.clear();
        c.receive(&bytes(&[(desc_xid, desc(mfr, hw))]), now, &mut ev);
        (c, ev)
    }

    fn denial() -> FlowSpec {
        FlowSpec {
            dpid: Dpid(7),
            table: 0,
            priority: 100,
            cookie: daolinet_policy::cookie::single(daolinet_policy::cookie::Kind::Deny, 3),
            idle_timeout: 0,
            hard_timeout: 3,
            match_: daolinet_policy::MatchSpec {
                in_port: Some(2),
                ..Default::default()
            },
            actions: vec![],
        }
    }

    /// The instructions of the FLOW_MOD the connection sends for a denial.
    fn sent_denial(c: &mut Conn) -> Vec<daolinet_openflow::Instruction> {
        c.send_flow(&denial()).unwrap();
        match drain(c).pop().map(|f| f.message) {
            Some(Message::FlowMod(fm)) => fm.instructions,
            m => panic!("not a FLOW_MOD: {m:?}"),
        }
    }

    #[test]
    fn open_vswitch_gets_the_deny_meter_then_punting_denials() {
        use daolinet_openflow::{Instruction, MeterMod};
        let now = Instant::now();
        let (mut c, ev) = described(now, "Nicira, Inc.", "Open vSwitch");
        assert!(matches!(&ev[..], [Event::Described(d)] if d.hw_desc == "Open vSwitch"));
        assert!(c.caches_flows());
        // Nothing before the edge says it may change the switch; denials
        // are drops until the meter is confirmed.
        assert!(drain(&mut c).is_empty());
        assert_eq!(sent_denial(&mut c), vec![]);
        assert!(c.install_deny_meter());
        let out = drain(&mut c);
        let [Frame {
            xid: mm_xid,
            message: Message::MeterMod(mm),
        }, Frame {
            xid: b_xid,
            message: Message::BarrierRequest,
        }] = &out[..]
        else {
            panic!("not METER_MOD + BARRIER: {out:?}");
        };
        assert_eq!(*mm, translate::deny_meter_mod(OFPMC_ADD));
        assert!(!c.install_deny_meter(), "sent twice");
        assert!(drain(&mut c).is_empty());
        assert_eq!(c.denials(), Denials::Drop);
        assert_eq!(sent_denial(&mut c), vec![]);
        // The meter is left from an earlier connection: made ours again.
        let mut ev = Vec::new();
        let exists = Message::Error(ErrorMsg::new(
            ErrorCode::new(OFPET_METER_MOD_FAILED, OFPMMFC_METER_EXISTS),
            &[],
        ));
        c.receive(&bytes(&[(*mm_xid, exists)]), now, &mut ev);
        assert!(ev.is_empty(), "{ev:?}");
        let out = drain(&mut c);
        assert!(
            matches!(
                &out[..],
                [Frame {
                    message: Message::MeterMod(MeterMod {
                        command: OFPMC_MODIFY,
                        meter_id: translate::DENY_METER,
                        ..
                    }),
                    ..
                }]
            ),
            "{out:?}"
        );
        // The BARRIER_REPLY: in place; denials punt through it.
        c.receive(&bytes(&[(*b_xid, Message::BarrierReply)]), now, &mut ev);
        assert!(ev.is_empty(), "{ev:?}");
        assert_eq!(c.deny_meter(), DenyMeter::Ready);
        assert_eq!(c.denials(), Denials::Punt);
        assert_eq!(
            sent_denial(&mut c),
            vec![
                Instruction::Meter(translate::DENY_METER),
                Instruction::ApplyActions(vec![daolinet_openflow::Action::Output {
                    port: OFPP_CONTROLLER,
                    max_len: OFPCML_NO_BUFFER
                }])
            ]
        );
        assert!(!c.install_deny_meter());
        // Flows that forward are the same as ever.
        let mut pair = denial();
        pair.actions = vec![daolinet_policy::ActionSpec::Output(3)];
        c.send_flow(&pair).unwrap();
        assert!(matches!(
            drain(&mut c).pop().map(|f| f.message),
            Some(Message::FlowMod(fm)) if fm == translate::flow_mod(&pair).unwrap()
        ));
    }

    #[test]
    fn a_refused_meter_or_another_switch_keeps_plain_drops() {
        let now = Instant::now();
        // The agent: no meter, drops.
        let (mut c, _) = described(now, "DaoliNet", "daolinet-agent (eBPF datapath)");
        assert!(!c.caches_flows());
        assert!(!c.install_deny_meter());
        assert!(drain(&mut c).is_empty());
        assert_eq!(sent_denial(&mut c), vec![]);
        // Open vSwitch refusing meters (a kernel datapath without them).
        let (mut c, _) = described(now, "Nicira, Inc.", "Open vSwitch");
        c.install_deny_meter();
        let out = drain(&mut c);
        let refused = Message::Error(ErrorMsg::new(
            ErrorCode::new(OFPET_METER_MOD_FAILED, OFPMMFC_OUT_OF_METERS),
            &[],
        ));
        let mut ev = Vec::new();
        c.receive(
            &bytes(&[(out[0].xid, refused), (out[1].xid, Message::BarrierReply)]),
            now,
            &mut ev,
        );
        assert!(ev.is_empty(), "{ev:?}");
        assert_eq!(c.deny_meter(), DenyMeter::Refused);
        assert!(drain(&mut c).is_empty());
        assert_eq!(sent_denial(&mut c), vec![]);
        assert!(!c.install_deny_meter());
        // Before the description: nothing to do yet.
        let mut c = ready(now);
        assert!(!c.install_deny_meter());
    }

    #[test]
    fn a_deny_meter_held_for_a_refused_role_is_sent_again() {
        let now = Instant::now();
        let (mut c, _) = described(now, "Nicira, Inc.", "Open vSwitch");
        let role = c.request_role(OFPCR_ROLE_MASTER, 3);
        drain(&mut c);
        assert!(c.install_deny_meter());
        assert!(drain(&mut c).is_empty(), "sent before the ROLE_REPLY");
        let refusal = Message::Error(ErrorMsg::new(
            ErrorCode::new(OFPET_ROLE_REQUEST_FAILED, OFPRRFC_STALE),
            &[],
        ));
        let mut ev = Vec::new();
        c.receive(&bytes(&[(role, refusal)]), now, &mut ev);
        assert!(drain(&mut c).is_empty());
        assert_eq!(c.deny_meter(), DenyMeter::Absent);
        // Master later: sent then.
        let role = c.request_role(OFPCR_ROLE_MASTER, 4);
        assert!(c.install_deny_meter());
        drain(&mut c);
        let reply = Message::RoleReply(RoleMsg {
            role: OFPCR_ROLE_MASTER,
            generation_id: 4,
        });
        c.receive(&bytes(&[(role, reply)]), now, &mut ev);
        let out = drain(&mut c);
        assert!(
            matches!(
                &out[..],
                [
                    Frame {
                        message: Message::MeterMod(_),
                        ..
                    },
                    Frame {
                        message: Message::BarrierRequest,
                        ..
                    }
                ]
            ),
            "{out:?}"
        );
    }

    #[test]
    fn refuses_other_versions_and_missing_hello() {
        let now = Instant::now();
        for first in [
            Message::Hello(Hello {
                version: 1,
                elements: vec![],
            }),
            Message::Hello(Hello {
                version: 4,
                elements: vec![HelloElement::VersionBitmap(vec![1 << 1])],
            }),
            Message::EchoRequest(vec![]),
            features(1),
        ] {
            let mut c = Conn::new(ConnConfig::default(), now);
            drain(&mut c);
            let mut ev = Vec::new();
            // Whatever follows the refused message is not looked at.
            let input = bytes(&[(4, first), (5, features(1))]);
            c.receive(&input, now, &mut ev);
            assert!(c.is_closed());
            assert!(
                matches!(
                    &ev[..],
                    [Event::Closed(
                        CloseReason::Incompatible | CloseReason::NoHello
                    )]
                ),
                "{ev:?}"
            );
            let out = drain(&mut c);
            assert_eq!(out.len(), 1);
            assert_eq!(error_code(&out[0]), Some(ErrorCode::HELLO_INCOMPATIBLE));
            assert_eq!(out[0].xid, 4);
        }
    }

    /// An HTTP client pointed at the OpenFlow port (an agent given it as
    /// `--api`): `PUT ` is a header declaring a 21,536-byte message of type
    /// 0x55. It is refused from the header, not after its declared length
    /// or the handshake timeout (self_register.rs timed out once under load
    /// waiting for the controller to close: the agent's 10 s request
    /// timeout raced the 10 s handshake timeout).
    #[test]
    fn a_first_message_that_is_no_hello_is_refused_from_its_header() {
        let now = Instant::now();
        for request in [
            &b"PUT /api/hosts/h1 HTTP/1.1\r\nHost: c\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\n",
            // An 8-byte header alone, its body still to come.
            &[4, 5, 0x10, 0, 0, 0, 0, 9],
        ] {
            let mut c = Conn::new(ConnConfig::default(), now);
            drain(&mut c);
            let mut ev = Vec::new();
            assert_eq!(c.receive(request, now, &mut ev), request.len());
            assert!(c.is_closed(), "{request:?}");
            assert!(
                matches!(&ev[..], [Event::Closed(CloseReason::NoHello)]),
                "{ev:?}"
            );
            let out = drain(&mut c);
            assert_eq!(out.len(), 1);
            assert_eq!(error_code(&out[0]), Some(ErrorCode::HELLO_INCOMPATIBLE));
        }
        // A partial header waits; the switch's ERROR refusing our HELLO is
        // still read whole (its reason is logged).
        let mut c = Conn::new(ConnConfig::default(), now);
        drain(&mut c);
        let mut ev = Vec::new();
        assert_eq!(c.receive(b"PUT", now, &mut ev), 0);
        assert!(!c.is_closed());
        let refusal = bytes(&[(
            3,
            Message::Error(ErrorMsg::new(ErrorCode::HELLO_INCOMPATIBLE, b"")),
        )]);
        c.receive(&refusal[..9], now, &mut ev);
        assert!(!c.is_closed(), "an ERROR is read whole");
        c.receive(&refusal, now, &mut ev);
        assert!(
            matches!(&ev[..], [Event::Closed(CloseReason::HelloFailed(_))]),
            "{ev:?}"
        );
    }

    #[test]
    fn out_of_order_and_wrong_direction_get_bad_type() {
        let now = Instant::now();
        let mut c = Conn::new(ConnConfig::default(), now);
        let mut ev = Vec::new();
        c.receive(&bytes(&[(1, Message::Hello(Hello::new()))]), now, &mut ev);
        drain(&mut c);
        let pin = Message::PacketIn(PacketIn::new(3, OFPR_NO_MATCH, vec![0; 60]));
        c.receive(&bytes(&[(2, features(7))]), now, &mut ev);
        assert_eq!(c.dpid(), Some(Dpid(7)));
        drain(&mut c);
        ev.clear();
        // Controller-to-switch messages, a second HELLO and FEATURES_REPLY.
        let wrong = [
            Message::FlowMod(FlowMod::add(Match::new())),
            Message::FeaturesRequest,
            Message::BarrierRequest,
            Message::Hello(Hello::new()),
            features(8),
        ];
        for (i, m) in wrong.into_iter().enumerate() {
            c.receive(&bytes(&[(100 + i as u32, m)]), now, &mut ev);
            let out = drain(&mut c);
            assert_eq!(error_code(&out[0]), Some(ErrorCode::BAD_TYPE));
            assert_eq!(out[0].xid, 100 + i as u32);
        }
        assert!(ev.is_empty());
        // Still the same datapath, still working.
        assert_eq!(c.dpid(), Some(Dpid(7)));
        c.receive(&bytes(&[(50, pin)]), now, &mut ev);
        assert!(matches!(&ev[..], [Event::PacketIn(_)]));
    }

    /// A switch may send PACKET_INs as soon as the HELLOs are exchanged
    /// (the agent and Open vSwitch do when they kept flows that punt from an
    /// earlier connection): they are valid, held until FEATURES_REPLY names
    /// the datapath, then become events after Ready, in order; none gets an
    /// error. Beyond the budget they are dropped, still without an error.
    #[test]
    fn packet_in_before_features_reply_is_held_until_ready() {
        let now = Instant::now();
        let cfg = ConnConfig {
            max_early_packet_in_bytes: 150,
            ..ConnConfig::default()
        };
        let mut c = Conn::new(cfg, now);
        let mut ev = Vec::new();
        c.receive(&bytes(&[(1, Message::Hello(Hello::new()))]), now, &mut ev);
        drain(&mut c);
        let pin = |port, len| PacketIn::new(port, OFPR_NO_MATCH, vec![port as u8; len]);
        let early = [(11, pin(3, 60)), (12, pin(4, 60)), (13, pin(5, 60))];
        let msgs: Vec<(u32, Message)> = early
            .iter()
            .map(|(x, p)| (*x, Message::PacketIn(p.clone())))
            .collect();
        c.receive(&bytes(&msgs), now, &mut ev);
        assert!(drain(&mut c).is_empty(), "an early PACKET_IN was answered");
        assert!(ev.is_empty(), "{ev:?}");
        assert_eq!((c.errors_sent, c.early_packet_ins_dropped), (0, 1));
        c.receive(&bytes(&[(2, features(7))]), now, &mut ev);
        assert!(
            matches!(ev[0], Event::Ready { dpid: Dpid(7), .. }),
            "{ev:?}"
        );
        assert_eq!(
            ev[1..],
            [
                Event::PacketIn(early[0].1.clone()),
                Event::PacketIn(early[1].1.clone())
            ]
        );
        // Held ones are handed over once; later ones pass straight through.
        ev.clear();
        c.receive(&bytes(&[(14, Message::PacketIn(pin(6, 60)))]), now, &mut ev);
        assert_eq!(ev, [Event::PacketIn(pin(6, 60))]);
        assert_eq!(c.errors_sent, 0);
    }

    #[test]
    fn malformed_truncated_and_oversized_input() {
        let now = Instant::now();
        let cfg = ConnConfig {
            max_message_len: 1024,
            ..ConnConfig::default()
        };
        let mut c = Conn::new(cfg, now);
        let mut ev = Vec::new();
        c.receive(
            &bytes(&[(1, Message::Hello(Hello::new())), (2, features(7))]),
            now,
            &mut ev,
        );
        drain(&mut c);
        ev.clear();
        // A BARRIER_REPLY with a body: BAD_LEN, skipped, next message fine.
        let mut bad = bytes(&[(30, Message::BarrierReply)]);
        bad.extend_from_slice(&[0, 0, 0, 0]);
        bad[3] = 12;
        // An unknown message type: BAD_TYPE.
        let unknown = [4u8, 200, 0, 8, 0, 0, 0, 31];
        let mut input = bad.clone();
        input.extend_from_slice(&unknown);
        input.extend(bytes(&[(32, Message::EchoRequest(vec![]))]));
        assert_eq!(c.receive(&input, now, &mut ev), input.len());
        let out = drain(&mut c);
        assert_eq!(error_code(&out[0]), Some(ErrorCode::BAD_LEN));
        assert_eq!(error_code(&out[1]), Some(ErrorCode::BAD_TYPE));
        assert_eq!(
            out[2],
            Frame {
                xid: 32,
                message: Message::EchoReply(vec![])
            }
        );
        // The error echoes the offending bytes (at most 64).
        match &out[0].message {
            Message::Error(ErrorMsg::Standard { data, .. }) => assert_eq!(data, &bad),
            m => panic!("{m:?}"),
        }
        // Oversized: 2000 declared, arriving in three reads; rejected at
        // once, its bytes skipped, the message after it handled.
        let mut big = vec![4u8, OFPT_PACKET_IN, 0x07, 0xd0, 0, 0, 0, 40];
        big.resize(2000, 0xee);
        big.extend(bytes(&[(41, Message::EchoRequest(vec![1]))]));
        let mut pending: Vec<u8> = Vec::new();
        for chunk in big.chunks(700) {
            pending.extend_from_slice(chunk);
            let used = c.receive(&pending, now, &mut ev);
            pending.drain(..used);
        }
        assert!(pending.is_empty());
        let out = drain(&mut c);
        assert_eq!(error_code(&out[0]), Some(ErrorCode::BAD_LEN));
        assert_eq!(out[0].xid, 40);
        assert_eq!(
            out[1],
            Frame {
                xid: 41,
                message: Message::EchoReply(vec![1])
            }
        );
        assert!(ev.is_empty());
        assert!(!c.is_closed());
        // A header length below 8 cannot be framed: error, then close.
        c.receive(
            &[4, OFPT_ECHO_REQUEST, 0, 4, 0, 0, 0, 50, 1, 2],
            now,
            &mut ev,
        );
        assert!(c.is_closed());
        assert!(matches!(
            &ev[..],
            [Event::Closed(CloseReason::Unframeable(_))]
        ));
        let out = drain(&mut c);
        assert_eq!(error_code(&out[0]), Some(ErrorCode::BAD_LEN));
        // Nothing more is handled.
        ev.clear();
        c.receive(&bytes(&[(60, Message::EchoRequest(vec![]))]), now, &mut ev);
        assert!(ev.is_empty() && c.out().is_empty());
    }

    #[test]
    fn any_split_of_the_stream_gives_the_same_result() {
        let now = Instant::now();
        let input = bytes(&[
            (1, Message::Hello(Hello::new())),
            (2, features(9)),
            (3, Message::EchoRequest(vec![1, 2, 3])),
            (
                4,
                Message::PacketIn(PacketIn::new(5, OFPR_NO_MATCH, vec![9; 100])),
            ),
        ]);
        let reference = {
            let mut c = Conn::new(ConnConfig::default(), now);
            let mut ev = Vec::new();
            c.receive(&input, now, &mut ev);
            (ev, drain(&mut c))
        };
        for cut in 1..input.len() {
            let mut c = Conn::new(ConnConfig::default(), now);
            let mut ev = Vec::new();
            let used = c.receive(&input[..cut], now, &mut ev);
            let rest = [&input[used..cut], &input[cut..]].concat();
            assert_eq!(c.receive(&rest, now, &mut ev), rest.len());
            assert_eq!((ev, drain(&mut c)), reference, "cut at {cut}");
        }
    }

    #[test]
    fn echo_keepalive_and_timeouts() {
        let t0 = Instant::now();
        let cfg = ConnConfig::default();
        // Handshake deadline.
        let mut c = Conn::new(cfg, t0);
        let mut ev = Vec::new();
        c.tick(t0 + cfg.handshake_timeout / 2, &mut ev);
        assert!(ev.is_empty());
        c.tick(t0 + cfg.handshake_timeout, &mut ev);
        assert!(matches!(
            &ev[..],
            [Event::Closed(CloseReason::HandshakeTimeout)]
        ));
        // Echo after silence; an answer keeps the connection.
        let mut c = ready(t0);
        ev.clear();
        c.tick(t0 + cfg.echo_interval - Duration::from_millis(1), &mut ev);
        assert!(c.out().is_empty());
        let t1 = t0 + cfg.echo_interval;
        c.tick(t1, &mut ev);
        let out = drain(&mut c);
        assert!(matches!(
            &out[..],
            [Frame {
                message: Message::EchoRequest(_),
                ..
            }]
        ));
        c.tick(t1 + Duration::from_secs(1), &mut ev);
        assert!(c.out().is_empty(), "one probe at a time");
        c.receive(
            &bytes(&[(out[0].xid, Message::EchoReply(vec![]))]),
            t1 + Duration::from_secs(2),
            &mut ev,
        );
        c.tick(
            t1 + Duration::from_secs(2) + cfg.echo_interval - Duration::from_millis(1),
            &mut ev,
        );
        assert!(!c.is_closed() && c.out().is_empty());
        // No answer: closed.
        let t2 = t1 + Duration::from_secs(2) + cfg.echo_interval;
        c.tick(t2, &mut ev);
        assert_eq!(drain(&mut c).len(), 1);
        c.tick(t2 + cfg.echo_timeout, &mut ev);
        assert!(matches!(&ev[..], [Event::Closed(CloseReason::EchoTimeout)]));
    }

    #[test]
    fn barrier_tokens() {
        let now = Instant::now();
        let mut c = ready(now);
        assert_eq!(c.barrier(Some(77)), None);
        c.barrier(None);
        let out = drain(&mut c);
        assert!(out.iter().all(|f| f.message == Message::BarrierRequest));
        let mut ev = Vec::new();
        let replies: Vec<(u32, Message)> =
            out.iter().map(|f| (f.xid, Message::BarrierReply)).collect();
        c.receive(&bytes(&replies), now, &mut ev);
        assert_eq!(ev, vec![Event::BarrierDone(77)]);
        // Too many pending: the token comes straight back.
        let mut c = Conn::new(
            ConnConfig {
                max_pending_barriers: 1,
                ..ConnConfig::default()
            },
            now,
        );
        assert_eq!(c.barrier(Some(1)), None);
        assert_eq!(c.barrier(Some(2)), Some(2));
    }

    /// xorshift64: the same noise on every run.
    fn noise(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    /// Feed `input` to `c` in pieces of `chunk` bytes, as the server does
    /// (what a call leaves is offered again with the next piece), then let
    /// a minute pass; the events.
    fn feed(c: &mut Conn, input: &[u8], chunk: usize, now: Instant) -> Vec<Event> {
        let mut buf = Vec::new();
        let mut ev = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            buf.extend_from_slice(piece);
            let used = c.receive(&buf, now, &mut ev);
            assert!(used <= buf.len(), "used {used} of {}", buf.len());
            buf.drain(..used);
            c.out().clear();
        }
        c.tick(now + Duration::from_secs(60), &mut ev);
        ev
    }

    /// Whatever a switch sends after the handshake, the connection answers
    /// it or closes; it never panics nor claims more bytes than it got. A
    /// header of every type (and unknown ones) with noise bodies of every
    /// length up to 96 bytes; then real messages (with the xids of a
    /// pending flow stats read and role request, so that reassembly runs)
    /// with noise past their header, cut into pieces of any size.
    #[test]
    fn any_bytes_after_the_handshake_never_panic() {
        use daolinet_openflow::{ErrorMsg, FlowRemoved, MultipartReply};
        let now = Instant::now();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for ty in 0..=40u8 {
            for len in 0..=96usize {
                let mut m = vec![OFP_VERSION, ty, 0, 0, 0, 0, 0, 9];
                m[2..4].copy_from_slice(&((8 + len) as u16).to_be_bytes());
                m.extend((0..len).map(|_| noise(&mut seed) as u8));
                let _ = feed(&mut ready(now), &m, m.len(), now);
            }
        }
        let stats = flow_stats(0xabc, 100, 1);
        let mut more = MultipartReply::new(MultipartReplyBody::Flow(vec![stats.clone()]));
        more.flags = OFPMPF_REPLY_MORE;
        let real = [
            Message::PacketIn(PacketIn::new(3, OFPR_NO_MATCH, vec![1; 60])),
            Message::FlowRemoved(FlowRemoved::new(Match::new(), 100, 0xabc, OFPRR_DELETE)),
            Message::PortStatus(PortStatus::new(
                OFPPR_ADD,
                Port::new(1, daolinet_openflow::MacAddr([2, 0, 0, 0, 0, 1]), "eth0"),
            )),
            Message::MultipartReply(more),
            Message::MultipartReply(MultipartReply::new(MultipartReplyBody::Flow(vec![stats]))),
            Message::MultipartReply(MultipartReply::new(MultipartReplyBody::PortDesc(vec![
                Port::new(2, daolinet_openflow::MacAddr([2, 0, 0, 0, 0, 2]), "eth1"),
            ]))),
            desc("Nicira, Inc.", "Open vSwitch"),
            Message::RoleReply(RoleMsg {
                role: OFPCR_ROLE_MASTER,
                generation_id: 4,
            }),
            Message::BarrierReply,
            Message::EchoRequest(vec![1, 2, 3]),
            Message::EchoReply(vec![]),
            Message::Error(ErrorMsg::new(
                ErrorCode::BAD_TYPE,
                &[4, 0, 0, 8, 0, 0, 0, 1],
            )),
        ];
        let (mut packet_ins, mut reads) = (0, 0);
        for _ in 0..3000 {
            let mut c = ready(now);
            let flows = c.request_flows();
            let read = c.request_flow_stats(0xabc).unwrap_or(0);
            let role = c.request_role(OFPCR_ROLE_MASTER, 4);
            c.out().clear();
            let mut input = Vec::new();
            for _ in 0..1 + noise(&mut seed) % 4 {
                let m = &real[(noise(&mut seed) % real.len() as u64) as usize];
                let xid = [flows, read, role, 9][(noise(&mut seed) % 4) as usize];
                let mut b = BytesMut::new();
                m.encode(xid, &mut b).unwrap();
                for _ in 0..noise(&mut seed) % 5 {
                    if b.len() > 8 {
                        let at = 8 + (noise(&mut seed) % (b.len() as u64 - 8)) as usize;
                        b[at] = noise(&mut seed) as u8;
                    }
                }
                input.extend_from_slice(&b);
            }
            let chunk = 1 + (noise(&mut seed) % 64) as usize;
            for e in feed(&mut c, &input, chunk, now) {
                match e {
                    Event::PacketIn(_) => packet_ins += 1,
                    Event::FlowStats { .. } | Event::Flows(_) => reads += 1,
                    _ => {}
                }
            }
        }
        // The noise left enough intact for the handlers to run.
        assert!(packet_ins > 100 && reads > 100, "{packet_ins} {reads}");
    }
}
