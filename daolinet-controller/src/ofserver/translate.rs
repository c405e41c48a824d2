//! Pure translation between the policy's own flow representation
//! ([`FlowSpec`], [`Decision`]) and OpenFlow 1.3 messages of
//! `daolinet_openflow`, in both directions for matches (FLOW_REMOVED carries
//! the match of the removed flow). The hot path (FLOW_MOD adds and
//! PACKET_OUTs) maps the policy's values onto `daolinet_openflow::emit`,
//! which writes the wire bytes straight into the connection's buffer.

use bytes::BytesMut;
use daolinet_openflow::{
    consts::{
        OFPCML_NO_BUFFER, OFPFC_ADD, OFPFF_SEND_FLOW_REM, OFPG_ANY, OFPMF_BURST, OFPMF_PKTPS,
        OFPP_ANY, OFPP_CONTROLLER, OFPP_IN_PORT, OFPP_LOCAL, OFPP_MAX, OFPR_ACTION, OFP_NO_BUFFER,
    },
    emit::{self, FlowModHead},
    Action, Desc, EncodeError, FlowMod, FlowStats, Instruction, MacAddr as OfMac, Match, Message,
    MeterBand, MeterMod, OxmField, PacketIn, PacketOut,
};

use daolinet_policy::addr::MacAddr;
use daolinet_policy::cookie;
use daolinet_policy::{ActionSpec, Decision, FlowSpec, Ipv4Match, MatchSpec, ETH_TYPE_IPV4};

/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;

/// Why a policy value has no OpenFlow 1.3 form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// A transport port match or set-field without `ip_proto` TCP or UDP.
    #[error("transport port without ip_proto tcp or udp")]
    TransportWithoutProto,
    /// An IPv4 prefix longer than 32.
    #[error("IPv4 prefix length {0} above 32")]
    BadPrefix(u8),
    /// The message cannot be encoded (e.g. a frame making it exceed 65535 bytes).
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// A transport-port OXM constructor (`OxmField::TcpSrc` ...).
type PortField = fn(u16, Option<u16>) -> OxmField;

/// How a switch is given the policy's denials (flows without actions).
///
/// A BARRIER_REPLY says the switch's flow *table* has a change, not that
/// every cache made from the old table has gone. Open vSwitch forwards by
/// datapath megaflows translated from the table; the megaflow of a deleted
/// drop flow (`actions:drop`) keeps dropping until a revalidator thread has
/// been over it, which under load is after the controller answered the
/// policy change (`connect`, a group join) and the first allowed packet
/// arrived. On such a switch a denial punts instead, through one
/// rate-limited meter: a stale megaflow then sends the packet to the
/// controller, which decides it with the policy of now and, allowed,
/// delivers it (PACKET_OUT) and installs the pair's flows; still denied, it
/// is counted and dropped there ([`daolinet_policy::handle_punted_denial`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Denials {
    /// A flow without instructions: the switch drops (the agent, whose
    /// datapath reads its flow maps directly, and any switch not known to
    /// cache flows past a BARRIER).
    #[default]
    Drop,
    /// `meter:`[`DENY_METER`]`, output:CONTROLLER`: rate-limited punts
    /// (Open vSwitch, once the meter of [`deny_meter_mod`] is in place).
    Punt,
}

/// The meter every punting denial of a switch goes through ([`Denials::Punt`]).
pub const DENY_METER: u32 = 1;
/// The rate of [`DENY_METER`] (packets per second, per switch): the most
/// denied packets a switch sends the controller, whatever its containers
/// send to destinations they may not reach. Only the first packet after a
/// policy change normally takes this way (the stale megaflow goes with the
/// next revalidation).
pub const DENY_METER_PPS: u32 = 200;
/// The burst [`DENY_METER`] allows above its rate (packets).
pub const DENY_METER_BURST: u32 = 50;

/// The METER_MOD creating (`OFPMC_ADD`) or updating (`OFPMC_MODIFY`) the
/// meter of punting denials: [`DENY_METER_PPS`] packets/s, the rest dropped.
pub fn deny_meter_mod(command: u16) -> MeterMod {
    MeterMod {
        command,
        flags: OFPMF_PKTPS | OFPMF_BURST,
        meter_id: DENY_METER,
        bands: vec![MeterBand::Drop {
            rate: DENY_METER_PPS,
            burst_size: DENY_METER_BURST,
        }],
    }
}

/// True for a switch whose description (OFPMP_DESC) names Open vSwitch:
/// its datapath caches flows beyond the BARRIER, so denials must punt
/// ([`Denials::Punt`]).
pub fn caches_flows_past_barrier(d: &Desc) -> bool {
    d.hw_desc.trim() == "Open vSwitch" || d.mfr_desc.contains("Nicira")
}

/// True when `f` is a denial: it forwards nowhere (no action but drops).
pub fn is_denial(f: &FlowSpec) -> bool {
    f.actions.iter().all(|a| *a == ActionSpec::Drop)
}

/// The cookie of the denial that punted `p` (a switch given
/// [`Denials::Punt`]: a denial, or a cached copy of one the policy has
/// deleted since), or `None` for any other PACKET_IN (a table miss, a
/// firewall punt, an expiring TTL).
pub fn punted_by_denial(p: &PacketIn) -> Option<u64> {
    let denial = matches!(
        cookie::decode(p.cookie),
        Some((cookie::Kind::Deny | cookie::Kind::PortDeny, _, _))
    );
    (p.reason == OFPR_ACTION && denial).then_some(p.cookie)
}

/// The instructions of a punting denial ([`Denials::Punt`]).
fn punt_instructions() -> Vec<Instruction> {
    vec![
        Instruction::Meter(DENY_METER),
        Instruction::ApplyActions(vec![Action::Output {
            port: OFPP_CONTROLLER,
            max_len: OFPCML_NO_BUFFER,
        }]),
    ]
}

fn of_mac(m: MacAddr) -> OfMac {
    OfMac(m.0)
}

fn ipv4_field(
    m: &Ipv4Match,
    make: fn(std::net::Ipv4Addr, Option<std::net::Ipv4Addr>) -> OxmField,
) -> Result<Option<OxmField>, TranslateError> {
    match m.prefix {
        0 => Ok(None),
        32 => Ok(Some(make(m.addr, None))),
        p if p > 32 => Err(TranslateError::BadPrefix(p)),
        _ => {
            let mask = m.mask();
            let addr = std::net::Ipv4Addr::from(u32::from(m.addr) & mask);
            Ok(Some(make(addr, Some(mask.into()))))
        }
    }
}

/// The OpenFlow match of a [`MatchSpec`], fields in prerequisite order
/// (`eth_type` before IP fields, `ip_proto` before transport ports). IPv4
/// fields without an `eth_type` get `eth_type=0x0800` added.
pub fn to_match(m: &MatchSpec) -> Result<Match, TranslateError> {
    let mut f = Vec::with_capacity(8);
    each_match_field(m, |x| f.push(x))?;
    Ok(Match { fields: f })
}

/// Hands the OXM fields of `m` to `each`, in prerequisite order (see
/// [`to_match`]), without collecting them.
fn each_match_field(m: &MatchSpec, mut each: impl FnMut(OxmField)) -> Result<(), TranslateError> {
    if let Some(p) = m.in_port {
        each(OxmField::InPort(p, None));
    }
    if let Some(mac) = m.eth_dst {
        each(OxmField::EthDst(of_mac(mac), None));
    }
    if let Some(mac) = m.eth_src {
        each(OxmField::EthSrc(of_mac(mac), None));
    }
    let needs_ip = m.ipv4_src.is_some()
        || m.ipv4_dst.is_some()
        || m.ip_proto.is_some()
        || m.tp_src.is_some()
        || m.tp_dst.is_some();
    match m.eth_type {
        Some(t) => each(OxmField::EthType(t, None)),
        None if needs_ip => each(OxmField::EthType(ETH_TYPE_IPV4, None)),
        None => {}
    }
    if let Some(p) = m.ip_proto {
        each(OxmField::IpProto(p, None));
    }
    if let Some(a) = &m.ipv4_src {
        if let Some(x) = ipv4_field(a, OxmField::Ipv4Src)? {
            each(x);
        }
    }
    if let Some(a) = &m.ipv4_dst {
        if let Some(x) = ipv4_field(a, OxmField::Ipv4Dst)? {
            each(x);
        }
    }
    if m.tp_src.is_some() || m.tp_dst.is_some() {
        let (src, dst): (PortField, PortField) = match m.ip_proto {
            Some(IPPROTO_TCP) => (OxmField::TcpSrc, OxmField::TcpDst),
            Some(IPPROTO_UDP) => (OxmField::UdpSrc, OxmField::UdpDst),
            _ => return Err(TranslateError::TransportWithoutProto),
        };
        if let Some(p) = m.tp_src {
            each(src(p, None));
        }
        if let Some(p) = m.tp_dst {
            each(dst(p, None));
        }
    }
    if let Some(op) = m.arp_op {
        each(OxmField::ArpOp(op, None));
    }
    if let Some(a) = m.arp_spa {
        each(OxmField::ArpSpa(a, None));
    }
    if let Some(a) = m.arp_tpa {
        each(OxmField::ArpTpa(a, None));
    }
    Ok(())
}

fn prefix_of(mask: Option<std::net::Ipv4Addr>) -> Option<u8> {
    let Some(mask) = mask else {
        return Some(32);
    };
    let m = u32::from(mask);
    // Only contiguous masks have a prefix form.
    let len = m.leading_ones();
    (m.checked_shl(len).unwrap_or(0) == 0).then_some(len as u8)
}

/// The [`MatchSpec`] of an OpenFlow match (as found in FLOW_REMOVED or flow
/// stats), or `None` when it uses something the policy never installs
/// (other fields, masked Ethernet addresses, non-prefix IP masks...).
/// `to_match(&from_match(m)?) == m` for every match `to_match` produces.
pub fn from_match(m: &Match) -> Option<MatchSpec> {
    let mut s = MatchSpec::default();
    for f in &m.fields {
        match f {
            OxmField::InPort(p, None) => s.in_port = Some(*p),
            OxmField::EthDst(mac, None) => s.eth_dst = Some(MacAddr(mac.0)),
            OxmField::EthSrc(mac, None) => s.eth_src = Some(MacAddr(mac.0)),
            OxmField::EthType(t, None) => s.eth_type = Some(*t),
            OxmField::IpProto(p, None) => s.ip_proto = Some(*p),
            OxmField::Ipv4Src(a, mask) => {
                s.ipv4_src = Some(Ipv4Match {
                    addr: *a,
                    prefix: prefix_of(*mask)?,
                })
            }
            OxmField::Ipv4Dst(a, mask) => {
                s.ipv4_dst = Some(Ipv4Match {
                    addr: *a,
                    prefix: prefix_of(*mask)?,
                })
            }
            OxmField::TcpSrc(p, None) | OxmField::UdpSrc(p, None) => s.tp_src = Some(*p),
            OxmField::TcpDst(p, None) | OxmField::UdpDst(p, None) => s.tp_dst = Some(*p),
            OxmField::ArpOp(op, None) => s.arp_op = Some(*op),
            OxmField::ArpSpa(a, None) => s.arp_spa = Some(*a),
            OxmField::ArpTpa(a, None) => s.arp_tpa = Some(*a),
            _ => return None,
        }
    }
    Some(s)
}

/// The OpenFlow actions of an action list. `ip_proto` says which transport
/// set-field (TCP or UDP) a [`ActionSpec::SetTpSrc`]/[`ActionSpec::SetTpDst`]
/// means. [`ActionSpec::Drop`] contributes nothing (no action = drop).
pub fn to_actions(
    actions: &[ActionSpec],
    ip_proto: Option<u8>,
) -> Result<Vec<Action>, TranslateError> {
    let mut out = Vec::with_capacity(actions.len());
    each_action(actions, ip_proto, |a| out.push(a))?;
    Ok(out)
}

/// Hands the OpenFlow actions of `actions` to `each` (see [`to_actions`]).
fn each_action(
    actions: &[ActionSpec],
    ip_proto: Option<u8>,
    mut each: impl FnMut(Action),
) -> Result<(), TranslateError> {
    for a in actions {
        each(match *a {
            ActionSpec::SetEthSrc(m) => Action::SetField(OxmField::EthSrc(of_mac(m), None)),
            ActionSpec::SetEthDst(m) => Action::SetField(OxmField::EthDst(of_mac(m), None)),
            ActionSpec::SetIpv4Src(a) => Action::SetField(OxmField::Ipv4Src(a, None)),
            ActionSpec::SetIpv4Dst(a) => Action::SetField(OxmField::Ipv4Dst(a, None)),
            ActionSpec::SetTpSrc(p) => Action::SetField(match ip_proto {
                Some(IPPROTO_TCP) => OxmField::TcpSrc(p, None),
                Some(IPPROTO_UDP) => OxmField::UdpSrc(p, None),
                _ => return Err(TranslateError::TransportWithoutProto),
            }),
            ActionSpec::SetTpDst(p) => Action::SetField(match ip_proto {
                Some(IPPROTO_TCP) => OxmField::TcpDst(p, None),
                Some(IPPROTO_UDP) => OxmField::UdpDst(p, None),
                _ => return Err(TranslateError::TransportWithoutProto),
            }),
            ActionSpec::DecTtl => Action::DecNwTtl,
            ActionSpec::Output(p) => Action::output(p),
            ActionSpec::InPort => Action::output(OFPP_IN_PORT),
            ActionSpec::Local => Action::output(OFPP_LOCAL),
            ActionSpec::Controller => Action::Output {
                port: OFPP_CONTROLLER,
                max_len: OFPCML_NO_BUFFER,
            },
            ActionSpec::Drop => continue,
        });
    }
    Ok(())
}

/// The FLOW_MOD flags of `f`: flows with a timeout ask for a FLOW_REMOVED
/// (`OFPFF_SEND_FLOW_REM`) so the flow registry learns about their expiry.
fn flow_flags(f: &FlowSpec) -> u16 {
    if f.idle_timeout != 0 || f.hard_timeout != 0 {
        OFPFF_SEND_FLOW_REM
    } else {
        0
    }
}

/// The fixed part of the FLOW_MOD adding `f`.
fn flow_mod_head(f: &FlowSpec) -> FlowModHead {
    FlowModHead {
        cookie: f.cookie,
        cookie_mask: 0,
        table_id: f.table,
        command: OFPFC_ADD,
        idle_timeout: f.idle_timeout,
        hard_timeout: f.hard_timeout,
        priority: f.priority,
        buffer_id: OFP_NO_BUFFER,
        out_port: OFPP_ANY,
        out_group: OFPG_ANY,
        flags: flow_flags(f),
    }
}

/// Appends the FLOW_MOD adding `f` with transaction id `xid` straight to
/// `buf` ([`emit::flow_mod`]): the same bytes as encoding [`flow_mod_for`]'s
/// message, without building it (no intermediate match, instruction or
/// action vectors, one pass). A denial is written as `denials` says. On
/// error `buf` is unchanged.
pub fn put_flow_mod(
    f: &FlowSpec,
    denials: Denials,
    xid: u32,
    buf: &mut BytesMut,
) -> Result<(), TranslateError> {
    if denials == Denials::Punt && is_denial(f) {
        let fm = flow_mod_for(f, denials)?;
        return Ok(Message::FlowMod(fm).encode(xid, buf)?);
    }
    emit::flow_mod(
        buf,
        xid,
        &flow_mod_head(f),
        |w| each_match_field(&f.match_, |x| w.field(&x)),
        |w| each_action(&f.actions, f.match_.ip_proto, |a| w.action(&a)),
    )
}

/// Appends the PACKET_OUT sending `data` with `actions` as if received on
/// `in_port` straight to `buf` ([`emit::packet_out`]; the same bytes as
/// encoding the message of [`to_message`]). On error `buf` is unchanged.
pub fn put_packet_out(
    in_port: u32,
    actions: &[ActionSpec],
    data: &[u8],
    xid: u32,
    buf: &mut BytesMut,
) -> Result<(), TranslateError> {
    emit::packet_out(
        buf,
        xid,
        in_port,
        |w| each_action(actions, frame_ip_proto(data), |a| w.action(&a)),
        data,
    )
}

/// The FLOW_MOD (OFPFC_ADD) installing `f`, denials as drops. Flows with a
/// timeout ask for a FLOW_REMOVED (`OFPFF_SEND_FLOW_REM`) so the
/// controller's flow registry learns about their expiry.
pub fn flow_mod(f: &FlowSpec) -> Result<FlowMod, TranslateError> {
    flow_mod_for(f, Denials::Drop)
}

/// The FLOW_MOD (OFPFC_ADD) installing `f` on a switch given denials as
/// `denials` says (see [`flow_mod`]). Timeouts, cookie and match of a
/// denial are the same in both forms.
pub fn flow_mod_for(f: &FlowSpec, denials: Denials) -> Result<FlowMod, TranslateError> {
    let match_ = to_match(&f.match_)?;
    let actions = to_actions(&f.actions, f.match_.ip_proto)?;
    let instructions = if !actions.is_empty() {
        vec![Instruction::ApplyActions(actions)]
    } else if denials == Denials::Punt {
        punt_instructions()
    } else {
        Vec::new()
    };
    Ok(FlowMod::from_parts(flow_mod_head(f), match_, instructions))
}

/// The IP protocol of an Ethernet frame carrying IPv4, if any (for
/// transport set-fields in a PACKET_OUT).
fn frame_ip_proto(data: &[u8]) -> Option<u8> {
    let et = u16::from_be_bytes([*data.get(12)?, *data.get(13)?]);
    (et == ETH_TYPE_IPV4).then(|| data.get(14 + 9).copied())?
}

/// True when a PACKET_OUT must wait for the FLOW_MODs sent before it on the
/// same connection (a BARRIER between them), false when its packet cannot
/// meet those flows and the BARRIER is pure cost.
///
/// OpenFlow 1.3 lets a switch reorder the messages of one connection between
/// BARRIERs, so without one the PACKET_OUT may run before the FLOW_MODs. A
/// PACKET_OUT whose every output is a physical port or the ingress port
/// (the same-host pair case) never goes through the flow table: its packet
/// is delivered the same either way. The only effect of such a reordering
/// is that the destination's answer could reach the switch before the
/// reverse flow and be punted once more, which the controller answers with
/// the same (idempotent) flows. Any other output (LOCAL: the host stack may
/// route the packet back into the bridge, as NAT does; CONTROLLER; reserved
/// ports such as TABLE) keeps the BARRIER. Other decisions never need one.
pub fn packet_out_needs_barrier(d: &Decision) -> bool {
    let Decision::PacketOut { actions, .. } = d else {
        return false;
    };
    actions.iter().any(|a| match *a {
        ActionSpec::Output(p) => p >= OFPP_MAX,
        ActionSpec::Local | ActionSpec::Controller => true,
        ActionSpec::InPort
        | ActionSpec::Drop
        | ActionSpec::DecTtl
        | ActionSpec::SetEthSrc(_)
        | ActionSpec::SetEthDst(_)
        | ActionSpec::SetIpv4Src(_)
        | ActionSpec::SetIpv4Dst(_)
        | ActionSpec::SetTpSrc(_)
        | ActionSpec::SetTpDst(_) => false,
    })
}

/// The [`FlowSpec`] of a flow the switch reported (flow stats), or `None`
/// when it uses matches or instructions the policy never installs (then it
/// is not one of ours). Inverse of [`flow_mod_for`] for the flows it
/// builds, in either form of a denial (a punting denial reads back as the
/// denial the policy built, so reconciliation keeps it).
pub fn from_flow_stats(dpid: daolinet_policy::addr::Dpid, s: &FlowStats) -> Option<FlowSpec> {
    let match_ = from_match(&s.match_)?;
    let actions = match s.instructions.as_slice() {
        [] => Vec::new(),
        [Instruction::Meter(DENY_METER), Instruction::ApplyActions(acts)]
            if matches!(
                acts.as_slice(),
                [Action::Output {
                    port: OFPP_CONTROLLER,
                    ..
                }]
            ) =>
        {
            Vec::new()
        }
        [Instruction::ApplyActions(acts)] => from_actions(acts)?,
        _ => return None,
    };
    Some(FlowSpec {
        dpid,
        table: s.table_id,
        priority: s.priority,
        cookie: s.cookie,
        idle_timeout: s.idle_timeout,
        hard_timeout: s.hard_timeout,
        match_,
        actions,
    })
}

/// The [`ActionSpec`]s of OpenFlow actions, or `None` for an action the
/// policy never uses.
pub fn from_actions(acts: &[Action]) -> Option<Vec<ActionSpec>> {
    acts.iter()
        .map(|a| {
            Some(match a {
                Action::SetField(OxmField::EthSrc(m, None)) => ActionSpec::SetEthSrc(MacAddr(m.0)),
                Action::SetField(OxmField::EthDst(m, None)) => ActionSpec::SetEthDst(MacAddr(m.0)),
                Action::SetField(OxmField::Ipv4Src(a, None)) => ActionSpec::SetIpv4Src(*a),
                Action::SetField(OxmField::Ipv4Dst(a, None)) => ActionSpec::SetIpv4Dst(*a),
                Action::SetField(OxmField::TcpSrc(p, None) | OxmField::UdpSrc(p, None)) => {
                    ActionSpec::SetTpSrc(*p)
                }
                Action::SetField(OxmField::TcpDst(p, None) | OxmField::UdpDst(p, None)) => {
                    ActionSpec::SetTpDst(*p)
                }
                Action::DecNwTtl => ActionSpec::DecTtl,
                Action::Output { port, .. } => match *port {
                    OFPP_IN_PORT => ActionSpec::InPort,
                    OFPP_LOCAL => ActionSpec::Local,
                    OFPP_CONTROLLER => ActionSpec::Controller,
                    p if p <= OFPP_MAX => ActionSpec::Output(p),
                    _ => return None,
                },
                _ => return None,
            })
        })
        .collect()
}

/// The FLOW_MOD deleting exactly the flow a switch reported: strict
/// (match and priority), in its table, only with its cookie.
pub fn delete_exactly(s: &FlowStats) -> FlowMod {
    let mut fm =
        FlowMod::delete_strict(s.match_.clone(), s.priority).cookie_match(s.cookie, u64::MAX);
    fm.table_id = s.table_id;
    fm
}

/// The OpenFlow message for one decision.
pub fn to_message(d: &Decision) -> Result<Message, TranslateError> {
    match d {
        Decision::PacketOut {
            in_port,
            actions,
            data,
            ..
        } => {
            let actions = to_actions(actions, frame_ip_proto(data))?;
            Ok(Message::PacketOut(PacketOut::new(
                *in_port,
                actions,
                data.clone(),
            )))
        }
        Decision::AddFlow(f) => Ok(Message::FlowMod(flow_mod(f)?)),
        Decision::DeleteFlows {
            cookie,
            cookie_mask,
            ..
        } => Ok(Message::FlowMod(
            FlowMod::delete(Match::new()).cookie_match(*cookie, *cookie_mask),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daolinet_openflow::{consts::*, decode, encode, Instruction};
    use daolinet_policy::addr::Dpid;
    use daolinet_policy::{cookie, priority, PORT_LOCAL};
    use proptest::prelude::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }

    fn pair_flow() -> FlowSpec {
        FlowSpec {
            dpid: Dpid(1),
            table: 0,
            priority: priority::HOTPLUG,
            cookie: cookie::pair(cookie::Kind::Pair, 3, 7),
            idle_timeout: 10,
            hard_timeout: 0,
            match_: MatchSpec {
                in_port: Some(2),
                eth_type: Some(ETH_TYPE_IPV4),
                ipv4_src: Some(Ipv4Match::exact("10.0.0.2".parse().unwrap())),
                ipv4_dst: Some(Ipv4Match::exact("10.0.0.3".parse().unwrap())),
                ..Default::default()
            },
            actions: vec![
                ActionSpec::SetEthSrc(mac(1)),
                ActionSpec::SetEthDst(mac(3)),
                ActionSpec::Output(3),
            ],
        }
    }

    #[test]
    fn pair_flow_reads_like_ovs_ofctl() {
        let fm = flow_mod(&pair_flow()).unwrap();
        // Same text as `ovs-ofctl -O OpenFlow13 add-flow` would be given.
        let expected: FlowMod = format!(
            "cookie={:#x},priority=100,idle_timeout=10,send_flow_rem,in_port=2,ip,\
             nw_src=10.0.0.2,nw_dst=10.0.0.3 \
             actions=set_field:02:00:00:00:00:01->eth_src,set_field:02:00:00:00:00:03->eth_dst,output:3",
            cookie::pair(cookie::Kind::Pair, 3, 7)
        )
        .parse()
        .unwrap();
        assert_eq!(fm, expected);
        assert_eq!(fm.flags, OFPFF_SEND_FLOW_REM);
        assert_eq!(fm.buffer_id, OFP_NO_BUFFER);
    }

    #[test]
    fn base_flows_and_special_ports() {
        let f = FlowSpec {
            dpid: Dpid(1),
            table: 0,
            priority: priority::MISS,
            cookie: cookie::make(cookie::Kind::Base, 0, 0),
            idle_timeout: 0,
            hard_timeout: 0,
            match_: MatchSpec::default(),
            actions: vec![ActionSpec::Controller],
        };
        let fm = flow_mod(&f).unwrap();
        assert!(fm.match_.fields.is_empty());
        assert_eq!(fm.flags, 0);
        assert_eq!(
            fm.instructions,
            vec![Instruction::apply(vec![Action::Output {
                port: OFPP_CONTROLLER,
                max_len: OFPCML_NO_BUFFER
            }])]
        );
        let acts = to_actions(
            &[
                ActionSpec::Local,
                ActionSpec::InPort,
                ActionSpec::DecTtl,
                ActionSpec::Drop,
            ],
            None,
        )
        .unwrap();
        assert_eq!(
            acts,
            vec![
                Action::output(PORT_LOCAL),
                Action::output(OFPP_IN_PORT),
                Action::DecNwTtl
            ]
        );
        // A drop flow has no instruction at all.
        let drop = FlowSpec {
            actions: vec![ActionSpec::Drop],
            hard_timeout: 3,
            ..f
        };
        let fm = flow_mod(&drop).unwrap();
        assert!(fm.instructions.is_empty());
        assert_eq!(fm.flags, OFPFF_SEND_FLOW_REM);
    }

    fn denial() -> FlowSpec {
        FlowSpec {
            cookie: cookie::pair(cookie::Kind::Deny, 3, 7),
            idle_timeout: 0,
            hard_timeout: 3,
            actions: vec![],
            ..pair_flow()
        }
    }

    #[test]
    fn a_denial_punts_through_the_meter_on_a_caching_switch() {
        let d = denial();
        let text = |denials| {
            let mut buf = BytesMut::new();
            put_flow_mod(&d, denials, 4, &mut buf).unwrap();
            let (frame, used) = decode(&buf).unwrap().unwrap();
            assert_eq!(used, buf.len());
            let Message::FlowMod(fm) = frame.message else {
                panic!("not a FLOW_MOD")
            };
            assert_eq!(fm, flow_mod_for(&d, denials).unwrap());
            fm.to_string()
        };
        let head = format!(
            "cookie={:#x},priority=100,hard_timeout=3,send_flow_rem,in_port=2,ip,\
             nw_src=10.0.0.2,nw_dst=10.0.0.3",
            d.cookie
        );
        // The agent: a plain drop. Open vSwitch: the same flow (cookie,
        // match, timeouts), punting through the meter.
        assert_eq!(text(Denials::Drop), format!("{head} actions=drop"));
        assert_eq!(
            text(Denials::Punt),
            format!("{head} actions=meter:1,CONTROLLER:65535")
        );
        let expected: FlowMod = format!("{head} actions=meter:1,CONTROLLER:65535")
            .parse()
            .unwrap();
        assert_eq!(flow_mod_for(&d, Denials::Punt).unwrap(), expected);
        // [Drop] is a denial too; anything that forwards is written as is.
        let dropped = FlowSpec {
            actions: vec![ActionSpec::Drop],
            ..d.clone()
        };
        assert!(is_denial(&d) && is_denial(&dropped));
        assert_eq!(
            flow_mod_for(&dropped, Denials::Punt).unwrap(),
            flow_mod_for(&d, Denials::Punt).unwrap()
        );
        for f in [pair_flow(), {
            let mut punt = pair_flow();
            punt.actions = vec![ActionSpec::Controller];
            punt
        }] {
            assert!(!is_denial(&f));
            assert_eq!(
                flow_mod_for(&f, Denials::Punt).unwrap(),
                flow_mod(&f).unwrap()
            );
        }
    }

    #[test]
    fn reconciliation_reads_a_punting_denial_as_the_denial() {
        let d = denial();
        let stats = |fm: FlowMod| FlowStats {
            table_id: fm.table_id,
            duration_sec: 1,
            duration_nsec: 0,
            priority: fm.priority,
            idle_timeout: fm.idle_timeout,
            hard_timeout: fm.hard_timeout,
            flags: fm.flags,
            cookie: fm.cookie,
            packet_count: 1,
            byte_count: 60,
            match_: fm.match_,
            instructions: fm.instructions,
        };
        let punting = stats(flow_mod_for(&d, Denials::Punt).unwrap());
        assert_eq!(from_flow_stats(Dpid(1), &punting), Some(d.clone()));
        assert_eq!(
            from_flow_stats(Dpid(1), &stats(flow_mod(&d).unwrap())),
            Some(d.clone())
        );
        // Another meter, another action after the meter, or a meter alone
        // is not one of ours.
        for other in [
            "actions=meter:2,CONTROLLER:65535",
            "actions=meter:1,output:3",
            "actions=meter:1,CONTROLLER:65535,output:3",
            "actions=meter:1",
        ] {
            let fm: FlowMod = format!("cookie={:#x},priority=100,in_port=2 {other}", d.cookie)
                .parse()
                .unwrap();
            assert_eq!(from_flow_stats(Dpid(1), &stats(fm)), None, "{other}");
        }
    }

    #[test]
    fn only_a_denial_punting_is_a_punted_denial() {
        let pin = |reason, ck| {
            let mut p = PacketIn::new(2, reason, vec![0; 60]);
            p.cookie = ck;
            p
        };
        let deny = cookie::pair(cookie::Kind::Deny, 3, 7);
        let single = cookie::single(cookie::Kind::Deny, 3);
        let port = cookie::port_deny(9);
        for ck in [deny, single, port] {
            assert_eq!(punted_by_denial(&pin(OFPR_ACTION, ck)), Some(ck));
            assert_eq!(punted_by_denial(&pin(OFPR_NO_MATCH, ck)), None);
        }
        // A table miss, a firewall punt, a pair flow's expiring TTL.
        assert_eq!(punted_by_denial(&pin(OFPR_NO_MATCH, u64::MAX)), None);
        let fw = cookie::single(cookie::Kind::Firewall, 3);
        assert_eq!(punted_by_denial(&pin(OFPR_ACTION, fw)), None);
        let pair = cookie::pair(cookie::Kind::Pair, 3, 7);
        assert_eq!(punted_by_denial(&pin(OFPR_INVALID_TTL, pair)), None);
        assert_eq!(punted_by_denial(&pin(OFPR_ACTION, 0)), None);
    }

    #[test]
    fn the_deny_meter_and_open_vswitch() {
        let m = deny_meter_mod(OFPMC_ADD);
        assert_eq!((m.command, m.meter_id), (OFPMC_ADD, DENY_METER));
        assert_eq!(m.flags, OFPMF_PKTPS | OFPMF_BURST);
        assert_eq!(
            m.bands,
            vec![MeterBand::Drop {
                rate: DENY_METER_PPS,
                burst_size: DENY_METER_BURST
            }]
        );
        assert_eq!(deny_meter_mod(OFPMC_MODIFY).command, OFPMC_MODIFY);
        let desc = |mfr: &str, hw: &str| Desc {
            mfr_desc: mfr.into(),
            hw_desc: hw.into(),
            sw_desc: "3.1.0".into(),
            serial_num: "None".into(),
            dp_desc: "None".into(),
        };
        // What `ovs-ofctl dump-desc` shows for Open vSwitch, and the agent.
        assert!(caches_flows_past_barrier(&desc(
            "Nicira, Inc.",
            "Open vSwitch"
        )));
        assert!(!caches_flows_past_barrier(&desc(
            "DaoliNet",
            "daolinet-agent"
        )));
        assert!(!caches_flows_past_barrier(&desc("", "")));
    }

    #[test]
    fn prefixes_transport_and_prerequisites() {
        let m = MatchSpec {
            in_port: Some(PORT_LOCAL),
            ipv4_dst: Some(Ipv4Match {
                addr: "172.31.7.9".parse().unwrap(),
                prefix: 16,
            }),
            ip_proto: Some(IPPROTO_TCP),
            tp_dst: Some(8080),
            ..Default::default()
        };
        let om = to_match(&m).unwrap();
        assert_eq!(
            om.to_string(),
            "in_port=LOCAL,tcp,nw_dst=172.31.0.0/16,tcp_dst=8080"
        );
        // Reverse: the host bits are gone, eth_type made explicit.
        let back = from_match(&om).unwrap();
        assert_eq!(back.eth_type, Some(ETH_TYPE_IPV4));
        assert_eq!(to_match(&back).unwrap(), om);
        let udp = MatchSpec {
            ip_proto: Some(IPPROTO_UDP),
            tp_src: Some(53),
            ..Default::default()
        };
        assert_eq!(to_match(&udp).unwrap().to_string(), "udp,udp_src=53");
        let bad = MatchSpec {
            tp_src: Some(53),
            ..Default::default()
        };
        assert_eq!(to_match(&bad), Err(TranslateError::TransportWithoutProto));
        assert_eq!(
            to_actions(&[ActionSpec::SetTpDst(1)], None),
            Err(TranslateError::TransportWithoutProto)
        );
        let wide = MatchSpec {
            ipv4_src: Some(Ipv4Match {
                addr: "1.2.3.4".parse().unwrap(),
                prefix: 40,
            }),
            ..Default::default()
        };
        assert_eq!(to_match(&wide), Err(TranslateError::BadPrefix(40)));
        // Something the policy never installs has no MatchSpec.
        assert_eq!(from_match(&Match::new().vlan_vid(0x1005)), None);
        let odd_mask = Match::new()
            .eth_type(0x0800)
            .ipv4_src_masked("10.0.0.1".parse().unwrap(), "255.0.255.0".parse().unwrap());
        assert_eq!(from_match(&odd_mask), None);
    }

    #[test]
    fn decisions_become_messages() {
        let del = Decision::DeleteFlows {
            dpid: Dpid(1),
            cookie: 0x0200_0003_0000_0007,
            cookie_mask: cookie::PAIR_MASK,
        };
        let Message::FlowMod(fm) = to_message(&del).unwrap() else {
            panic!("not a FLOW_MOD")
        };
        assert_eq!(fm.command, OFPFC_DELETE);
        assert_eq!(fm.table_id, OFPTT_ALL);
        assert_eq!(
            (fm.cookie, fm.cookie_mask),
            (0x0200_0003_0000_0007, cookie::PAIR_MASK)
        );
        assert_eq!((fm.out_port, fm.out_group), (OFPP_ANY, OFPG_ANY));
        assert!(fm.match_.fields.is_empty());

        // A UDP frame: the PACKET_OUT's port rewrite is a UDP set-field.
        let mut frame = vec![0u8; 14 + 20 + 8];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame[14 + 9] = IPPROTO_UDP;
        let po = Decision::PacketOut {
            dpid: Dpid(1),
            in_port: 2,
            actions: vec![ActionSpec::SetTpSrc(99), ActionSpec::Output(3)],
            data: frame.clone(),
        };
        let Message::PacketOut(p) = to_message(&po).unwrap() else {
            panic!("not a PACKET_OUT")
        };
        assert_eq!(p.buffer_id, OFP_NO_BUFFER);
        assert_eq!(p.in_port, 2);
        assert_eq!(
            p.actions,
            vec![
                Action::SetField(OxmField::UdpSrc(99, None)),
                Action::output(3)
            ]
        );
        assert_eq!(p.data, frame);
        // Encoded straight into a buffer: the same bytes, after what the
        // buffer already held.
        let mut direct = BytesMut::from(&b"xyz"[..]);
        put_packet_out(
            2,
            &[ActionSpec::SetTpSrc(99), ActionSpec::Output(3)],
            &frame,
            5,
            &mut direct,
        )
        .unwrap();
        let mut via = BytesMut::from(&b"xyz"[..]);
        encode(&Message::PacketOut(p), 5, &mut via).unwrap();
        assert_eq!(direct, via);
        // Errors and oversized frames leave the buffer as it was.
        assert_eq!(
            put_packet_out(2, &[ActionSpec::SetTpSrc(1)], &[0; 20], 6, &mut direct),
            Err(TranslateError::TransportWithoutProto)
        );
        assert!(matches!(
            put_packet_out(2, &[], &vec![0; 70_000], 6, &mut direct),
            Err(TranslateError::Encode(EncodeError::TooLong { .. }))
        ));
        assert_eq!(direct, via);
    }

    #[test]
    fn barrier_only_when_the_packet_out_can_meet_the_flows() {
        let po = |actions: Vec<ActionSpec>| Decision::PacketOut {
            dpid: Dpid(1),
            in_port: 2,
            actions,
            data: vec![0; 60],
        };
        // Same-host pair: rewrite and out of a container port.
        assert!(!packet_out_needs_barrier(&po(vec![
            ActionSpec::SetEthSrc(mac(1)),
            ActionSpec::SetEthDst(mac(3)),
            ActionSpec::Output(3),
        ])));
        assert!(!packet_out_needs_barrier(&po(vec![ActionSpec::InPort])));
        assert!(!packet_out_needs_barrier(&po(vec![])));
        // NAT via the host stack, the controller, reserved ports.
        assert!(packet_out_needs_barrier(&po(vec![
            ActionSpec::SetIpv4Dst("10.0.0.9".parse().unwrap()),
            ActionSpec::Local,
        ])));
        assert!(packet_out_needs_barrier(&po(vec![ActionSpec::Controller])));
        assert!(packet_out_needs_barrier(&po(vec![ActionSpec::Output(
            OFPP_TABLE
        )])));
        assert!(packet_out_needs_barrier(&po(vec![
            ActionSpec::Output(3),
            ActionSpec::Output(PORT_LOCAL),
        ])));
        assert!(!packet_out_needs_barrier(&Decision::AddFlow(pair_flow())));
    }

    fn arb_actions() -> impl Strategy<Value = Vec<ActionSpec>> {
        proptest::collection::vec(
            prop_oneof![
                any::<[u8; 6]>().prop_map(|m| ActionSpec::SetEthSrc(MacAddr(m))),
                any::<[u8; 6]>().prop_map(|m| ActionSpec::SetEthDst(MacAddr(m))),
                any::<u32>().prop_map(|a| ActionSpec::SetIpv4Src(a.into())),
                any::<u32>().prop_map(|a| ActionSpec::SetIpv4Dst(a.into())),
                any::<u16>().prop_map(ActionSpec::SetTpSrc),
                any::<u16>().prop_map(ActionSpec::SetTpDst),
                Just(ActionSpec::DecTtl),
                (1u32..=OFPP_MAX).prop_map(ActionSpec::Output),
                Just(ActionSpec::InPort),
                Just(ActionSpec::Local),
                Just(ActionSpec::Controller),
            ],
            0..6,
        )
    }

    fn arb_match() -> impl Strategy<Value = MatchSpec> {
        (
            proptest::option::of(1u32..0xffff_ff00),
            proptest::option::of(any::<[u8; 6]>()),
            proptest::option::of((any::<u32>(), 1u8..=32)),
            proptest::option::of((any::<u32>(), 1u8..=32)),
            proptest::option::of(prop_oneof![Just(IPPROTO_TCP), Just(IPPROTO_UDP), Just(1u8)]),
            proptest::option::of(any::<u16>()),
        )
            .prop_map(|(in_port, eth, src, dst, proto, tp)| {
                let net = |(a, p): (u32, u8)| {
                    let m = Ipv4Match {
                        addr: a.into(),
                        prefix: p,
                    };
                    Ipv4Match {
                        addr: (a & m.mask()).into(),
                        prefix: p,
                    }
                };
                let ip = src.is_some() || dst.is_some() || proto.is_some();
                let tp_ok = matches!(proto, Some(IPPROTO_TCP | IPPROTO_UDP));
                MatchSpec {
                    in_port,
                    eth_src: eth.map(MacAddr),
                    eth_type: ip.then_some(ETH_TYPE_IPV4),
                    ipv4_src: src.map(net),
                    ipv4_dst: dst.map(net),
                    ip_proto: proto,
                    tp_dst: if tp_ok { tp } else { None },
                    ..Default::default()
                }
            })
    }

    proptest! {
        /// Every flow the policy can build, as a switch reports it in flow
        /// stats (what reconciliation reads), is the same FlowSpec.
        #[test]
        fn flows_round_trip_through_flow_stats(
            m in arb_match(),
            actions in arb_actions(),
            cookie in any::<u64>(),
            prio in any::<u16>(),
            idle in any::<u16>(),
            denials in prop_oneof![Just(Denials::Drop), Just(Denials::Punt)],
        ) {
            let mut m = m;
            // Transport set-fields need TCP or UDP in the match.
            if actions.iter().any(|a| matches!(a, ActionSpec::SetTpSrc(_) | ActionSpec::SetTpDst(_))) {
                m.eth_type = Some(ETH_TYPE_IPV4);
                m.ip_proto = Some(IPPROTO_UDP);
            }
            let f = FlowSpec {
                dpid: Dpid(9),
                table: 0,
                priority: prio,
                cookie,
                idle_timeout: idle,
                hard_timeout: 3,
                match_: m,
                actions,
            };
            let fm = flow_mod_for(&f, denials).unwrap();
            let stats = FlowStats {
                table_id: fm.table_id,
                duration_sec: 1,
                duration_nsec: 2,
                priority: fm.priority,
                idle_timeout: fm.idle_timeout,
                hard_timeout: fm.hard_timeout,
                flags: fm.flags,
                cookie: fm.cookie,
                packet_count: 4,
                byte_count: 5,
                match_: fm.match_.clone(),
                instructions: fm.instructions.clone(),
            };
            prop_assert_eq!(from_flow_stats(Dpid(9), &stats), Some(f));
            // The strict delete names exactly that entry.
            let d = delete_exactly(&stats);
            prop_assert_eq!(d.command, OFPFC_DELETE_STRICT);
            prop_assert_eq!((d.cookie, d.cookie_mask, d.priority, d.table_id), (fm.cookie, u64::MAX, fm.priority, fm.table_id));
            prop_assert_eq!(d.match_, fm.match_);
        }

        /// Every match the policy can build survives the wire and comes
        /// back as the same MatchSpec (what FLOW_REMOVED handling relies on).
        #[test]
        fn match_round_trips_through_the_wire(m in arb_match(), cookie in any::<u64>()) {
            let f = FlowSpec {
                dpid: Dpid(9),
                table: 0,
                priority: 100,
                cookie,
                idle_timeout: 10,
                hard_timeout: 0,
                match_: m.clone(),
                actions: vec![ActionSpec::Output(1)],
            };
            let msg = Message::FlowMod(flow_mod(&f).unwrap());
            let mut buf = BytesMut::new();
            encode(&msg, 1, &mut buf).unwrap();
            // Encoded straight from the FlowSpec: the same bytes.
            let mut direct = BytesMut::new();
            put_flow_mod(&f, Denials::Drop, 1, &mut direct).unwrap();
            prop_assert_eq!(&direct, &buf);
            let (frame, used) = decode(&buf).unwrap().unwrap();
            prop_assert_eq!(used, buf.len());
            let Message::FlowMod(fm) = frame.message else { panic!("not a FLOW_MOD") };
            prop_assert_eq!(fm.cookie, cookie);
            prop_assert_eq!(from_match(&fm.match_), Some(m));
        }

        /// Any flow, encoded straight into a buffer, gives the bytes of its
        /// FLOW_MOD encoded by the codec (or the same error).
        #[test]
        fn direct_flow_mod_encoding_equals_the_codec(
            m in arb_match(),
            acts in proptest::collection::vec(arb_action(), 0..6),
            (cookie, table, priority, idle, hard) in (any::<u64>(), any::<u8>(), any::<u16>(), 0u16..3, 0u16..3),
            xid in any::<u32>(),
            denials in prop_oneof![Just(Denials::Drop), Just(Denials::Punt)],
        ) {
            let f = FlowSpec {
                dpid: Dpid(9),
                table,
                priority,
                cookie,
                idle_timeout: idle,
                hard_timeout: hard,
                match_: m,
                actions: acts,
            };
            let mut direct = BytesMut::from(&b"ab"[..]);
            let r = put_flow_mod(&f, denials, xid, &mut direct);
            match flow_mod_for(&f, denials) {
                Ok(fm) => {
                    prop_assert_eq!(r, Ok(()));
                    let mut buf = BytesMut::from(&b"ab"[..]);
                    encode(&Message::FlowMod(fm), xid, &mut buf).unwrap();
                    prop_assert_eq!(&direct, &buf);
                }
                Err(e) => {
                    prop_assert_eq!(r, Err(e));
                    prop_assert_eq!(&direct[..], b"ab");
                }
            }
        }
    }

    fn arb_action() -> impl Strategy<Value = ActionSpec> {
        prop_oneof![
            any::<[u8; 6]>().prop_map(|m| ActionSpec::SetEthSrc(MacAddr(m))),
            any::<[u8; 6]>().prop_map(|m| ActionSpec::SetEthDst(MacAddr(m))),
            any::<u32>().prop_map(|a| ActionSpec::SetIpv4Src(a.into())),
            any::<u32>().prop_map(|a| ActionSpec::SetIpv4Dst(a.into())),
            any::<u16>().prop_map(ActionSpec::SetTpSrc),
            any::<u16>().prop_map(ActionSpec::SetTpDst),
            any::<u32>().prop_map(ActionSpec::Output),
            Just(ActionSpec::DecTtl),
            Just(ActionSpec::InPort),
            Just(ActionSpec::Local),
            Just(ActionSpec::Controller),
            Just(ActionSpec::Drop),
        ]
    }
}
