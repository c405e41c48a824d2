//! Translate OpenFlow 1.3 matches and actions into the datapath's
//! [`FlowKey`] value/mask and [`Action`] list.

use daolinet_common::{Action, FlowKey, MAX_ACTIONS, VLAN_PCP_MASK, VLAN_PRESENT};
use daolinet_openflow::{self as of, OxmField};

/// Why a flow cannot be compiled for the eBPF datapath.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    /// A match field the datapath does not classify on.
    #[error("unsupported match field {0}")]
    UnsupportedField(String),
    /// A mask the datapath cannot apply to this field.
    #[error("unsupported mask on {0}")]
    UnsupportedMask(String),
    /// The same field twice in one match.
    #[error("duplicate match field {0}")]
    DuplicateField(String),
    /// A field whose OpenFlow prerequisite (e.g. eth_type=0x0800 for
    /// ipv4_src) is missing from the match.
    #[error("match prerequisite missing for {0}")]
    Prerequisite(String),
    /// An action the datapath cannot execute.
    #[error("unsupported action {0}")]
    UnsupportedAction(String),
    /// A set_field of a field the datapath cannot rewrite.
    #[error("unsupported set_field {0}")]
    UnsupportedSetField(String),
    /// An output to a reserved port the datapath cannot reach from a flow.
    #[error("unsupported output port {0:#x}")]
    BadOutPort(u32),
    /// An instruction other than apply-actions.
    #[error("unsupported instruction {0}")]
    UnsupportedInstruction(String),
    /// More actions than [`MAX_ACTIONS`].
    #[error("too many actions ({0} > {MAX_ACTIONS})")]
    TooManyActions(usize),
}

impl CompileError {
    /// The OFPT_ERROR (type, code) the OpenFlow 1.3 spec names for this.
    pub fn code(&self) -> of::ErrorCode {
        use of::ErrorCode as E;
        match self {
            Self::UnsupportedField(_) => E::new(of::OFPET_BAD_MATCH, of::OFPBMC_BAD_FIELD),
            Self::UnsupportedMask(_) => E::new(of::OFPET_BAD_MATCH, of::OFPBMC_BAD_MASK),
            Self::DuplicateField(_) => E::new(of::OFPET_BAD_MATCH, of::OFPBMC_DUP_FIELD),
            Self::Prerequisite(_) => E::new(of::OFPET_BAD_MATCH, of::OFPBMC_BAD_PREREQ),
            Self::UnsupportedAction(_) => E::new(of::OFPET_BAD_ACTION, of::OFPBAC_BAD_TYPE),
            Self::UnsupportedSetField(_) => E::new(of::OFPET_BAD_ACTION, of::OFPBAC_BAD_SET_TYPE),
            Self::BadOutPort(_) => E::new(of::OFPET_BAD_ACTION, of::OFPBAC_BAD_OUT_PORT),
            Self::UnsupportedInstruction(_) => {
                E::new(of::OFPET_BAD_INSTRUCTION, of::OFPBIC_UNSUP_INST)
            }
            // OFPBAC_TOO_MANY = 7.
            Self::TooManyActions(_) => E::new(of::OFPET_BAD_ACTION, 7),
        }
    }
}

/// Ethernet types a field needs one of (its OpenFlow prerequisite).
const IP_ANY: &[u16] = &[FlowKey::ETH_TYPE_IPV4, FlowKey::ETH_TYPE_IPV6];
const IPV4: &[u16] = &[FlowKey::ETH_TYPE_IPV4];
const IPV6: &[u16] = &[FlowKey::ETH_TYPE_IPV6];
const ARP: &[u16] = &[FlowKey::ETH_TYPE_ARP];
const MPLS: &[u16] = &[FlowKey::ETH_TYPE_MPLS, FlowKey::ETH_TYPE_MPLS_MC];

/// `value & mask`, and the mask (all ones when absent).
fn vm<T: Copy + std::ops::BitAnd<Output = T>>(v: T, m: Option<T>, ones: T) -> (T, T) {
    let m = m.unwrap_or(ones);
    (v & m, m)
}

fn mac_vm(v: &of::MacAddr, m: &Option<of::MacAddr>) -> ([u8; 6], [u8; 6]) {
    let m = m.map_or([0xff; 6], |m| m.0);
    (std::array::from_fn(|i| v.0[i] & m[i]), m)
}

fn ip4_vm(v: &std::net::Ipv4Addr, m: &Option<std::net::Ipv4Addr>) -> ([u8; 4], [u8; 4]) {
    let (v, m) = vm(u32::from(*v), m.map(u32::from), u32::MAX);
    (v.to_be_bytes(), m.to_be_bytes())
}

/// Compile an OpenFlow match into (key, mask); the key comes back masked.
///
/// Checks what an OpenFlow 1.3 switch must check: duplicate fields,
/// prerequisites (the Ethernet type for L3 fields, the IP protocol for L4
/// fields, a VLAN tag for VLAN_PCP), masks only where the field is
/// maskable.
pub fn compile_match(m: &of::Match) -> Result<(FlowKey, FlowKey), CompileError> {
    let mut k = FlowKey::default();
    let mut mk = FlowKey::default();
    let mut seen: Vec<(u16, u8)> = Vec::with_capacity(m.fields.len());
    let name = |f: &OxmField| {
        f.info()
            .map(|i| i.name.to_string())
            .unwrap_or_else(|| format!("{f:?}"))
    };
    // Prerequisites, checked once all fields are known: Ethernet types
    // (one of), IP protocol, a VLAN tag.
    let mut need_eth: Vec<(&'static [u16], String)> = Vec::new();
    let mut need_proto: Option<(u8, String)> = None;
    let mut need_vlan: Option<String> = None;
    for f in &m.fields {
        let (class, field, _) = f.id();
        if seen.contains(&(class, field)) {
            return Err(CompileError::DuplicateField(name(f)));
        }
        seen.push((class, field));
        let mut eth = |types: &'static [u16]| need_eth.push((types, name(f)));
        let mut proto = |p: u8| need_proto = Some((p, name(f)));
        match f {
            OxmField::InPort(p, None) => {
                k.in_port = *p;
                mk.in_port = u32::MAX;
            }
            OxmField::EthSrc(v, m) => (k.eth_src, mk.eth_src) = mac_vm(v, m),
            OxmField::EthDst(v, m) => (k.eth_dst, mk.eth_dst) = mac_vm(v, m),
            OxmField::EthType(v, None) => {
                k.eth_type = *v;
                mk.eth_type = u16::MAX;
            }
            OxmField::VlanVid(v, m) => {
                // OFPVID_PRESENT is VLAN_PRESENT; the 13 bits line up.
                let (v, m) = vm(*v, *m, 0x1fff);
                if m & !0x1fff != 0 {
                    return Err(CompileError::UnsupportedMask(name(f)));
                }
                k.vlan_tci = (k.vlan_tci & !0x1fff) | v;
                mk.vlan_tci = (mk.vlan_tci & !0x1fff) | m;
            }
            OxmField::VlanPcp(v, None) => {
                need_vlan = Some(name(f));
                k.vlan_tci =
                    (k.vlan_tci & !VLAN_PCP_MASK) | ((u16::from(*v) << 13) & VLAN_PCP_MASK);
                mk.vlan_tci |= VLAN_PCP_MASK;
            }
            OxmField::IpDscp(v, None) => {
                eth(IP_ANY);
                k.ip_tos = (k.ip_tos & 0x03) | ((*v << 2) & 0xfc);
                mk.ip_tos |= 0xfc;
            }
            OxmField::IpEcn(v, None) => {
                eth(IP_ANY);
                k.ip_tos = (k.ip_tos & 0xfc) | (*v & 0x03);
                mk.ip_tos |= 0x03;
            }
            OxmField::IpProto(v, None) => {
                eth(IP_ANY);
                k.ip_proto = *v;
                mk.ip_proto = u8::MAX;
            }
            OxmField::Ipv4Src(v, m) => {
                eth(IPV4);
                (k.ipv4_src, mk.ipv4_src) = ip4_vm(v, m);
            }
            OxmField::Ipv4Dst(v, m) => {
                eth(IPV4);
                (k.ipv4_dst, mk.ipv4_dst) = ip4_vm(v, m);
            }
            OxmField::ArpSpa(v, m) => {
                eth(ARP);
                (k.ipv4_src, mk.ipv4_src) = ip4_vm(v, m);
            }
            OxmField::ArpTpa(v, m) => {
                eth(ARP);
                (k.ipv4_dst, mk.ipv4_dst) = ip4_vm(v, m);
            }
            OxmField::TcpSrc(v, m) | OxmField::UdpSrc(v, m) | OxmField::SctpSrc(v, m) => {
                eth(IP_ANY);
                proto(match f {
                    OxmField::TcpSrc(..) => FlowKey::IPPROTO_TCP,
                    OxmField::UdpSrc(..) => FlowKey::IPPROTO_UDP,
                    _ => FlowKey::IPPROTO_SCTP,
                });
                (k.l4_src, mk.l4_src) = vm(*v, *m, u16::MAX);
            }
            OxmField::TcpDst(v, m) | OxmField::UdpDst(v, m) | OxmField::SctpDst(v, m) => {
                eth(IP_ANY);
                proto(match f {
                    OxmField::TcpDst(..) => FlowKey::IPPROTO_TCP,
                    OxmField::UdpDst(..) => FlowKey::IPPROTO_UDP,
                    _ => FlowKey::IPPROTO_SCTP,
                });
                (k.l4_dst, mk.l4_dst) = vm(*v, *m, u16::MAX);
            }
            OxmField::Icmpv4Type(v, None) | OxmField::Icmpv6Type(v, None) => {
                let v6 = matches!(f, OxmField::Icmpv6Type(..));
                eth(if v6 { IPV6 } else { IPV4 });
                proto(if v6 {
                    FlowKey::IPPROTO_ICMPV6
                } else {
                    FlowKey::IPPROTO_ICMP
                });
                k.l4_src = u16::from(*v);
                mk.l4_src = u16::MAX;
            }
            OxmField::Icmpv4Code(v, None) | OxmField::Icmpv6Code(v, None) => {
                let v6 = matches!(f, OxmField::Icmpv6Code(..));
                eth(if v6 { IPV6 } else { IPV4 });
                proto(if v6 {
                    FlowKey::IPPROTO_ICMPV6
                } else {
                    FlowKey::IPPROTO_ICMP
                });
                k.l4_dst = u16::from(*v);
                mk.l4_dst = u16::MAX;
            }
            OxmField::ArpOp(v, None) => {
                eth(ARP);
                k.arp_op = *v;
                mk.arp_op = u16::MAX;
            }
            OxmField::Ipv6Flabel(v, m) => {
                eth(IPV6);
                let (v, m) = vm(*v, *m, 0x000f_ffff);
                if m & !0x000f_ffff != 0 {
                    return Err(CompileError::UnsupportedMask(name(f)));
                }
                (k.ipv6_label, mk.ipv6_label) = (v, m);
            }
            // MPLS: the outer label stack entry, in wire order, in the
            // ipv4_src slot: label (20 bits), TC (3), BoS (1), TTL (8).
            OxmField::MplsLabel(v, None) => {
                eth(MPLS);
                set_lse(&mut k, &mut mk, (*v & 0x000f_ffff) << 12, 0xffff_f000);
            }
            OxmField::MplsTc(v, None) => {
                eth(MPLS);
                set_lse(&mut k, &mut mk, u32::from(*v & 7) << 9, 0x0e00);
            }
            OxmField::MplsBos(v, None) => {
                eth(MPLS);
                set_lse(&mut k, &mut mk, u32::from(*v & 1) << 8, 0x0100);
            }
            OxmField::InPort(..)
            | OxmField::EthType(..)
            | OxmField::VlanPcp(..)
            | OxmField::IpDscp(..)
            | OxmField::IpEcn(..)
            | OxmField::IpProto(..)
            | OxmField::Icmpv4Type(..)
            | OxmField::Icmpv4Code(..)
            | OxmField::Icmpv6Type(..)
            | OxmField::Icmpv6Code(..)
            | OxmField::ArpOp(..)
            | OxmField::MplsLabel(..)
            | OxmField::MplsTc(..)
            | OxmField::MplsBos(..) => return Err(CompileError::UnsupportedMask(name(f))),
            other => return Err(CompileError::UnsupportedField(name(other))),
        }
    }
    let eth = (mk.eth_type != 0).then_some(k.eth_type);
    for (types, what) in &need_eth {
        if !eth.is_some_and(|e| types.contains(&e)) {
            return Err(CompileError::Prerequisite(format!(
                "{what} without eth_type={}",
                types
                    .iter()
                    .map(|t| format!("{t:#06x}"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            )));
        }
    }
    if let Some((proto, what)) = need_proto {
        if mk.ip_proto == 0 || k.ip_proto != proto {
            return Err(CompileError::Prerequisite(format!(
                "{what} without ip_proto={proto}"
            )));
        }
    }
    if let Some(what) = need_vlan {
        if mk.vlan_tci & VLAN_PRESENT == 0 || k.vlan_tci & VLAN_PRESENT == 0 {
            return Err(CompileError::Prerequisite(format!(
                "{what} without a VLAN tag (vlan_vid)"
            )));
        }
    }
    Ok((k.masked(&mk), mk))
}

/// Merge `bits` under `mask` into the MPLS label stack entry of the key.
fn set_lse(k: &mut FlowKey, mk: &mut FlowKey, bits: u32, mask: u32) {
    let v = (u32::from_be_bytes(k.ipv4_src) & !mask) | (bits & mask);
    let m = u32::from_be_bytes(mk.ipv4_src) | mask;
    k.ipv4_src = v.to_be_bytes();
    mk.ipv4_src = m.to_be_bytes();
}

/// Compile OpenFlow instructions (apply-actions only) into datapath actions.
pub fn compile_instructions(ins: &[of::Instruction]) -> Result<Vec<Action>, CompileError> {
    let mut out = Vec::new();
    for i in ins {
        match i {
            of::Instruction::ApplyActions(acts) => out.extend(compile_actions(acts)?),
            other => return Err(CompileError::UnsupportedInstruction(format!("{other:?}"))),
        }
    }
    if out.len() > MAX_ACTIONS {
        return Err(CompileError::TooManyActions(out.len()));
    }
    Ok(out)
}

/// Compile an OpenFlow action list into datapath actions.
pub fn compile_actions(acts: &[of::Action]) -> Result<Vec<Action>, CompileError> {
    let mut out = Vec::with_capacity(acts.len());
    for a in acts {
        out.push(match a {
            of::Action::Output { port, max_len } => match *port {
                of::OFPP_IN_PORT => Action::output_in_port(),
                of::OFPP_LOCAL => Action::output_local(),
                of::OFPP_CONTROLLER => Action::controller(u32::from(*max_len)),
                p if p <= of::OFPP_MAX => Action::output(p),
                p => return Err(CompileError::BadOutPort(p)),
            },
            of::Action::DecNwTtl => Action::dec_ttl(),
            of::Action::SetField(f) => match f {
                OxmField::EthSrc(v, None) => Action::set_eth_src(v.0),
                OxmField::EthDst(v, None) => Action::set_eth_dst(v.0),
                OxmField::Ipv4Src(v, None) => Action::set_ipv4_src(v.octets()),
                OxmField::Ipv4Dst(v, None) => Action::set_ipv4_dst(v.octets()),
                OxmField::TcpSrc(v, None) | OxmField::UdpSrc(v, None) => Action::set_l4_src(*v),
                OxmField::TcpDst(v, None) | OxmField::UdpDst(v, None) => Action::set_l4_dst(*v),
                other => return Err(CompileError::UnsupportedSetField(format!("{other:?}"))),
            },
            other => return Err(CompileError::UnsupportedAction(format!("{other:?}"))),
        });
    }
    if out.len() > MAX_ACTIONS {
        return Err(CompileError::TooManyActions(out.len()));
    }
    Ok(out)
}

/// The OpenFlow match of a compiled (key, mask): the inverse of
/// [`compile_match`] (fields in OXM field order), used for flow stats and
/// FLOW_REMOVED when the original match is not known (rules restored from
/// the pinned maps after a restart).
pub fn match_of(key: &FlowKey, mask: &FlowKey) -> of::Match {
    use std::net::Ipv4Addr;
    let mut m = of::Match::new();
    let mac =
        |v: [u8; 6], mk: [u8; 6]| (of::MacAddr(v), (mk != [0xff; 6]).then_some(of::MacAddr(mk)));
    let ip = |v: [u8; 4], mk: [u8; 4]| {
        (
            Ipv4Addr::from(v),
            (mk != [0xff; 4]).then_some(Ipv4Addr::from(mk)),
        )
    };
    if mask.in_port != 0 {
        m = m.with(OxmField::InPort(key.in_port, None));
    }
    if mask.eth_dst != [0; 6] {
        let (v, mk) = mac(key.eth_dst, mask.eth_dst);
        m = m.with(OxmField::EthDst(v, mk));
    }
    if mask.eth_src != [0; 6] {
        let (v, mk) = mac(key.eth_src, mask.eth_src);
        m = m.with(OxmField::EthSrc(v, mk));
    }
    if mask.eth_type != 0 {
        m = m.with(OxmField::EthType(key.eth_type, None));
    }
    let vid_mask = mask.vlan_tci & 0x1fff;
    if vid_mask != 0 {
        let mk = (vid_mask != 0x1fff).then_some(vid_mask);
        m = m.with(OxmField::VlanVid(key.vlan_tci & vid_mask, mk));
    }
    if mask.vlan_tci & VLAN_PCP_MASK != 0 {
        m = m.with(OxmField::VlanPcp((key.vlan_tci >> 13) as u8, None));
    }
    let ether = (mask.eth_type != 0).then_some(key.eth_type);
    match ether {
        Some(FlowKey::ETH_TYPE_ARP) => {
            if mask.arp_op != 0 {
                m = m.with(OxmField::ArpOp(key.arp_op, None));
            }
            if mask.ipv4_src != [0; 4] {
                let (v, mk) = ip(key.ipv4_src, mask.ipv4_src);
                m = m.with(OxmField::ArpSpa(v, mk));
            }
            if mask.ipv4_dst != [0; 4] {
                let (v, mk) = ip(key.ipv4_dst, mask.ipv4_dst);
                m = m.with(OxmField::ArpTpa(v, mk));
            }
            return m;
        }
        Some(FlowKey::ETH_TYPE_MPLS | FlowKey::ETH_TYPE_MPLS_MC) => {
            let (v, mk) = (
                u32::from_be_bytes(key.ipv4_src),
                u32::from_be_bytes(mask.ipv4_src),
            );
            if mk & 0xffff_f000 != 0 {
                m = m.with(OxmField::MplsLabel(v >> 12, None));
            }
            if mk & 0x0e00 != 0 {
                m = m.with(OxmField::MplsTc(((v >> 9) & 7) as u8, None));
            }
            if mk & 0x0100 != 0 {
                m = m.with(OxmField::MplsBos(((v >> 8) & 1) as u8, None));
            }
            return m;
        }
        _ => {}
    }
    if mask.ip_tos & 0xfc != 0 {
        m = m.with(OxmField::IpDscp(key.ip_tos >> 2, None));
    }
    if mask.ip_tos & 0x03 != 0 {
        m = m.with(OxmField::IpEcn(key.ip_tos & 3, None));
    }
    if mask.ip_proto != 0 {
        m = m.with(OxmField::IpProto(key.ip_proto, None));
    }
    if mask.ipv4_src != [0; 4] {
        let (v, mk) = ip(key.ipv4_src, mask.ipv4_src);
        m = m.with(OxmField::Ipv4Src(v, mk));
    }
    if mask.ipv4_dst != [0; 4] {
        let (v, mk) = ip(key.ipv4_dst, mask.ipv4_dst);
        m = m.with(OxmField::Ipv4Dst(v, mk));
    }
    let proto = (mask.ip_proto != 0).then_some(key.ip_proto);
    let port = |v: u16, mk: u16| (v, (mk != u16::MAX).then_some(mk));
    let icmp = |f: fn(u8, Option<u8>) -> OxmField, v: u16| f(v as u8, None);
    if mask.l4_src != 0 {
        let (v, mk) = port(key.l4_src, mask.l4_src);
        m = m.with(match proto {
            Some(FlowKey::IPPROTO_UDP) => OxmField::UdpSrc(v, mk),
            Some(FlowKey::IPPROTO_SCTP) => OxmField::SctpSrc(v, mk),
            Some(FlowKey::IPPROTO_ICMP) => icmp(OxmField::Icmpv4Type, v),
            Some(FlowKey::IPPROTO_ICMPV6) => icmp(OxmField::Icmpv6Type, v),
            _ => OxmField::TcpSrc(v, mk),
        });
    }
    if mask.l4_dst != 0 {
        let (v, mk) = port(key.l4_dst, mask.l4_dst);
        m = m.with(match proto {
            Some(FlowKey::IPPROTO_UDP) => OxmField::UdpDst(v, mk),
            Some(FlowKey::IPPROTO_SCTP) => OxmField::SctpDst(v, mk),
            Some(FlowKey::IPPROTO_ICMP) => icmp(OxmField::Icmpv4Code, v),
            Some(FlowKey::IPPROTO_ICMPV6) => icmp(OxmField::Icmpv6Code, v),
            _ => OxmField::TcpDst(v, mk),
        });
    }
    if mask.ipv6_label != 0 {
        let mk = (mask.ipv6_label != 0x000f_ffff).then_some(mask.ipv6_label);
        m = m.with(OxmField::Ipv6Flabel(key.ipv6_label, mk));
    }
    m
}

/// The OpenFlow actions of compiled datapath actions: the inverse of
/// [`compile_actions`]. `udp` picks UDP over TCP for port rewrites.
pub fn actions_of(actions: &[Action], udp: bool) -> Vec<of::Action> {
    use daolinet_common::ActionKind as K;
    use std::net::Ipv4Addr;
    actions
        .iter()
        .filter_map(|a| {
            Some(match a.kind()? {
                K::Output => of::Action::output(a.arg),
                K::OutputInPort => of::Action::output(of::OFPP_IN_PORT),
                K::OutputLocal => of::Action::output(of::OFPP_LOCAL),
                K::Controller => of::Action::controller(u16::try_from(a.arg).unwrap_or(u16::MAX)),
                K::Drop => return None,
                K::SetEthSrc => of::Action::SetField(OxmField::EthSrc(of::MacAddr(a.mac()), None)),
                K::SetEthDst => of::Action::SetField(OxmField::EthDst(of::MacAddr(a.mac()), None)),
                K::SetIpv4Src => {
                    of::Action::SetField(OxmField::Ipv4Src(Ipv4Addr::from(a.ipv4()), None))
                }
                K::SetIpv4Dst => {
                    of::Action::SetField(OxmField::Ipv4Dst(Ipv4Addr::from(a.ipv4()), None))
                }
                K::SetL4Src if udp => of::Action::SetField(OxmField::UdpSrc(a.arg as u16, None)),
                K::SetL4Src => of::Action::SetField(OxmField::TcpSrc(a.arg as u16, None)),
                K::SetL4Dst if udp => of::Action::SetField(OxmField::UdpDst(a.arg as u16, None)),
                K::SetL4Dst => of::Action::SetField(OxmField::TcpDst(a.arg as u16, None)),
                K::DecTtl => of::Action::DecNwTtl,
            })
        })
        .collect()
}

/// Render a compiled match in ovs-ofctl style (`in_port=1,ip,nw_dst=10.0.0.0/24`).
pub fn format_match(key: &FlowKey, mask: &FlowKey) -> String {
    use std::net::Ipv4Addr;
    let mut parts: Vec<String> = Vec::new();
    let mac = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let ip = |v: [u8; 4], m: [u8; 4]| {
        let bits = u32::from_be_bytes(m);
        if bits == u32::MAX {
            Ipv4Addr::from(v).to_string()
        } else if bits.leading_ones() + bits.trailing_zeros() == 32 {
            format!("{}/{}", Ipv4Addr::from(v), bits.leading_ones())
        } else {
            format!("{}/{}", Ipv4Addr::from(v), Ipv4Addr::from(m))
        }
    };
    if mask.in_port != 0 {
        parts.push(format!("in_port={}", key.in_port));
    }
    if mask.eth_src != [0; 6] {
        parts.push(format!("dl_src={}", mac(key.eth_src)));
    }
    if mask.eth_dst != [0; 6] {
        parts.push(format!("dl_dst={}", mac(key.eth_dst)));
    }
    let is_ip = mask.eth_type != 0 && key.eth_type == FlowKey::ETH_TYPE_IPV4;
    let is_arp = mask.eth_type != 0 && key.eth_type == FlowKey::ETH_TYPE_ARP;
    if is_ip {
        parts.push("ip".into());
    } else if is_arp {
        parts.push("arp".into());
    } else if mask.eth_type != 0 {
        parts.push(format!("dl_type={:#06x}", key.eth_type));
    }
    if mask.vlan_tci != 0 {
        parts.push(format!("vlan_tci={:#06x}", key.vlan_tci));
    }
    let (src, dst) = if is_arp {
        ("arp_spa", "arp_tpa")
    } else {
        ("nw_src", "nw_dst")
    };
    if mask.ipv4_src != [0; 4] {
        parts.push(format!("{src}={}", ip(key.ipv4_src, mask.ipv4_src)));
    }
    if mask.ipv4_dst != [0; 4] {
        parts.push(format!("{dst}={}", ip(key.ipv4_dst, mask.ipv4_dst)));
    }
    if mask.ip_proto != 0 {
        parts.push(format!("nw_proto={}", key.ip_proto));
    }
    if mask.l4_src != 0 {
        parts.push(format!("tp_src={}", key.l4_src));
    }
    if mask.l4_dst != 0 {
        parts.push(format!("tp_dst={}", key.l4_dst));
    }
    if mask.arp_op != 0 {
        parts.push(format!("arp_op={}", key.arp_op));
    }
    parts.join(",")
}

/// Render compiled actions in ovs-ofctl style (`set_field:..->eth_dst,output:2`).
pub fn format_actions(actions: &[Action]) -> String {
    use daolinet_common::ActionKind as K;
    use std::net::Ipv4Addr;
    if actions.is_empty() {
        return "drop".into();
    }
    let mac = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    actions
        .iter()
        .map(|a| match a.kind() {
            Some(K::Output) => format!("output:{}", a.arg),
            Some(K::OutputInPort) => "IN_PORT".into(),
            Some(K::OutputLocal) => "LOCAL".into(),
            Some(K::Controller) => format!("CONTROLLER:{}", a.arg),
            Some(K::Drop) => "drop".into(),
            Some(K::SetEthSrc) => format!("set_field:{}->eth_src", mac(a.mac())),
            Some(K::SetEthDst) => format!("set_field:{}->eth_dst", mac(a.mac())),
            Some(K::SetIpv4Src) => format!("set_field:{}->ip_src", Ipv4Addr::from(a.ipv4())),
            Some(K::SetIpv4Dst) => format!("set_field:{}->ip_dst", Ipv4Addr::from(a.ipv4())),
            Some(K::SetL4Src) => format!("set_field:{}->tp_src", a.arg),
            Some(K::SetL4Dst) => format!("set_field:{}->tp_dst", a.arg),
            Some(K::DecTtl) => "dec_ttl".into(),
            None => format!("unknown({})", a.kind),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use daolinet_common::ActionKind;

    #[test]
    fn cross_host_flow_compiles_to_rewrites_and_output() {
        let fm: of::FlowMod = "priority=100,in_port=1,ip,nw_src=10.1.0.2,nw_dst=10.1.0.3 \
             actions=set_field:02:00:00:00:00:01->eth_src,set_field:02:00:00:00:00:02->eth_dst,\
             set_field:172.31.0.2->ip_src,set_field:172.31.0.3->ip_dst,output:9"
            .parse()
            .unwrap();
        let (k, m) = compile_match(&fm.match_).unwrap();
        assert_eq!(k.in_port, 1);
        assert_eq!(k.eth_type, 0x0800);
        assert_eq!(k.ipv4_src, [10, 1, 0, 2]);
        assert_eq!(m.ipv4_dst, [255; 4]);
        assert_eq!(m.l4_src, 0);
        let acts = compile_instructions(&fm.instructions).unwrap();
        let kinds: Vec<_> = acts.iter().map(|a| a.kind().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                ActionKind::SetEthSrc,
                ActionKind::SetEthDst,
                ActionKind::SetIpv4Src,
                ActionKind::SetIpv4Dst,
                ActionKind::Output
            ]
        );
        assert_eq!(acts[2].ipv4(), [172, 31, 0, 2]);
        assert_eq!(acts[4].arg, 9);
        assert_eq!(
            format_match(&k, &m),
            "in_port=1,ip,nw_src=10.1.0.2,nw_dst=10.1.0.3"
        );
        assert_eq!(
            format_actions(&acts),
            "set_field:02:00:00:00:00:01->eth_src,set_field:02:00:00:00:00:02->eth_dst,\
             set_field:172.31.0.2->ip_src,set_field:172.31.0.3->ip_dst,output:9"
        );
    }

    #[test]
    fn masked_prefix_and_unsupported_things_are_reported() {
        let fm: of::FlowMod = "ip,nw_dst=10.1.0.0/16 actions=drop".parse().unwrap();
        let (k, m) = compile_match(&fm.match_).unwrap();
        assert_eq!(m.ipv4_dst, [255, 255, 0, 0]);
        assert_eq!(k.ipv4_dst, [10, 1, 0, 0]);
        assert_eq!(format_match(&k, &m), "ip,nw_dst=10.1.0.0/16");
        assert!(compile_instructions(&fm.instructions).unwrap().is_empty());
        let fm: of::FlowMod = "actions=group:1".parse().unwrap();
        assert!(matches!(
            compile_instructions(&fm.instructions),
            Err(CompileError::UnsupportedAction(_))
        ));
    }

    fn err(flow: &str) -> of::ErrorCode {
        let fm: of::FlowMod = flow.parse().unwrap();
        match compile_match(&fm.match_) {
            Err(e) => e.code(),
            Ok(_) => compile_instructions(&fm.instructions).unwrap_err().code(),
        }
    }

    #[test]
    fn errors_carry_the_codes_the_spec_names() {
        use of::ErrorCode as E;
        let m = |c| E::new(of::OFPET_BAD_MATCH, c);
        let fm = of::FlowMod::add(of::Match::new().ipv4_dst("10.0.0.1".parse().unwrap()));
        assert_eq!(
            compile_match(&fm.match_).unwrap_err().code(),
            m(of::OFPBMC_BAD_PREREQ)
        );
        let fm = of::FlowMod::add(of::Match::new().eth_type(0x0800).eth_type(0x0800));
        assert_eq!(
            compile_match(&fm.match_).unwrap_err().code(),
            m(of::OFPBMC_DUP_FIELD)
        );
        assert_eq!(err("ip,tcp_dst=80 actions=drop"), m(of::OFPBMC_BAD_PREREQ));
        assert_eq!(err("udp,tcp_dst=80 actions=drop"), m(of::OFPBMC_BAD_PREREQ));
        let a = |c| E::new(of::OFPET_BAD_ACTION, c);
        assert_eq!(
            err("tcp,tcp_dst=80 actions=FLOOD"),
            a(of::OFPBAC_BAD_OUT_PORT)
        );
        assert_eq!(err("actions=group:1"), a(of::OFPBAC_BAD_TYPE));
        assert_eq!(
            err("ip actions=set_field:1->ip_ecn"),
            a(of::OFPBAC_BAD_SET_TYPE)
        );
        assert_eq!(
            err("dl_type=0x88e7,pbb_isid=4 actions=drop"),
            m(of::OFPBMC_BAD_FIELD)
        );
        assert_eq!(
            err("actions=goto_table:1"),
            E::new(of::OFPET_BAD_INSTRUCTION, of::OFPBIC_UNSUP_INST)
        );
    }

    #[test]
    fn ipv6_vlan_pcp_tos_sctp_and_mpls_fields_compile() {
        let c = |flow: &str| {
            let fm: of::FlowMod = format!("{flow} actions=drop").parse().unwrap();
            compile_match(&fm.match_)
        };
        // IPv6 with the IP protocol and ports (answered BAD_PREREQ before).
        let (k, m) = c("tcp6,tcp_dst=80").unwrap();
        assert_eq!((k.eth_type, k.ip_proto, k.l4_dst), (0x86dd, 6, 80));
        assert_eq!(m.l4_dst, u16::MAX);
        let (k, _) = c("sctp6,sctp_src=9").unwrap();
        assert_eq!((k.ip_proto, k.l4_src), (132, 9));
        let (k, _) = c("icmp6,icmpv6_type=135,icmpv6_code=0").unwrap();
        assert_eq!((k.ip_proto, k.l4_src, k.l4_dst), (58, 135, 0));
        // DSCP and ECN share the TOS byte.
        let (k, m) = c("ip,ip_dscp=8,nw_ecn=3").unwrap();
        assert_eq!((k.ip_tos, m.ip_tos), (0x23, 0xff));
        // PCP needs a tag; it sits in the top bits of the TCI as in the tag.
        let (k, m) = c("vlan_vid=0x1064,vlan_pcp=3").unwrap();
        assert_eq!((k.vlan_tci, m.vlan_tci), (0x7064, 0xffff));
        assert_eq!(
            c("vlan_pcp=3").unwrap_err().code(),
            of::ErrorCode::new(of::OFPET_BAD_MATCH, of::OFPBMC_BAD_PREREQ)
        );
        // Masked VID (any VID 0x60-0x6f, tagged).
        let (k, m) = c("vlan_vid=0x1060/0x10f0").unwrap();
        assert_eq!((k.vlan_tci, m.vlan_tci), (0x1060, 0x10f0));
        let (k, m) = c("ipv6,ipv6_label=0x12345/0xff").unwrap();
        assert_eq!((k.ipv6_label, m.ipv6_label), (0x45, 0xff));
        // MPLS: the label stack entry in wire order.
        let (k, m) = c("mpls,mpls_label=100,mpls_tc=5,mpls_bos=1").unwrap();
        assert_eq!(
            k.ipv4_src,
            ((100u32 << 12) | (5 << 9) | (1 << 8)).to_be_bytes()
        );
        assert_eq!(m.ipv4_src, 0xffff_ff00u32.to_be_bytes());
        assert_eq!(
            c("ip,mpls_label=1").unwrap_err().code(),
            of::ErrorCode::new(of::OFPET_BAD_MATCH, of::OFPBMC_BAD_PREREQ)
        );
        assert_eq!(
            c("udp6,tcp_dst=1").unwrap_err().code(),
            of::ErrorCode::new(of::OFPET_BAD_MATCH, of::OFPBMC_BAD_PREREQ)
        );
    }

    #[test]
    fn decompiled_match_and_actions_compile_back_to_the_same() {
        for flow in [
            "in_port=1,ip,nw_src=10.1.0.2,nw_dst=10.2.0.0/16 actions=set_field:02:00:00:00:00:01->eth_src,set_field:172.31.0.3->ip_dst,dec_ttl,output:9",
            "arp,arp_tpa=10.1.0.1,arp_op=1 actions=CONTROLLER:128",
            "udp,nw_dst=10.0.0.1,udp_dst=53 actions=set_field:5353->udp_dst,IN_PORT",
            "icmp,icmp_type=8 actions=LOCAL",
            "dl_src=02:00:00:00:00:01,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00,vlan_vid=0 actions=drop",
            "tcp6,ip_dscp=10,nw_ecn=1,tcp_src=5,tcp_dst=6 actions=output:1",
            "sctp,sctp_dst=77 actions=output:1",
            "icmp6,icmpv6_type=136,icmpv6_code=0 actions=output:1",
            "vlan_vid=0x1064/0x1fff,vlan_pcp=7,ipv6,ipv6_label=0x12345 actions=output:2",
            "mpls,mpls_label=70000,mpls_bos=0 actions=output:2",
        ] {
            let fm: of::FlowMod = flow.parse().unwrap();
            let (k, m) = compile_match(&fm.match_).unwrap();
            let acts = compile_instructions(&fm.instructions).unwrap();
            let back = match_of(&k, &m);
            assert_eq!(compile_match(&back).unwrap(), (k, m), "{flow}");
            let udp = m.ip_proto != 0 && k.ip_proto == 17;
            assert_eq!(compile_actions(&actions_of(&acts, udp)).unwrap(), acts, "{flow}");
        }
    }
}
