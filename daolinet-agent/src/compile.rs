//! Translate OpenFlow 1.3 matches and actions into the datapath's
//! [`FlowKey`] value/mask and [`Action`] list.

use daolinet_common::{
    u64_of, words_of, Action, ActionKind, FlowKey, FlowKeyExt, FullKey, RuleExt, EXT_CLEAR_ACTIONS,
    MAX_ACTIONS, N_TABLES, VLAN_PCP_MASK, VLAN_PRESENT,
};
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
    /// An instruction the datapath does not run (experimenter), or one
    /// given twice.
    #[error("unsupported instruction {0}")]
    UnsupportedInstruction(String),
    /// More actions than [`MAX_ACTIONS`].
    #[error("too many actions ({0} > {MAX_ACTIONS})")]
    TooManyActions(usize),
    /// goto_table to a table that does not exist or is not after this one.
    #[error("goto_table {0}: not a later table of 0..{N_TABLES}")]
    BadTableId(u8),
    /// An instruction type the codec does not know.
    #[error("unknown instruction {0}")]
    UnknownInstruction(String),
    /// An action argument out of range (e.g. push_vlan of a non-VLAN type).
    #[error("bad action argument {0}")]
    BadArgument(String),
    /// A group id out of range.
    #[error("bad group {0:#x}")]
    BadGroup(u32),
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
            Self::TooManyActions(_) => E::new(of::OFPET_BAD_ACTION, of::OFPBAC_TOO_MANY),
            Self::BadTableId(_) => E::new(of::OFPET_BAD_INSTRUCTION, of::OFPBIC_BAD_TABLE_ID),
            Self::UnknownInstruction(_) => {
                E::new(of::OFPET_BAD_INSTRUCTION, of::OFPBIC_UNKNOWN_INST)
            }
            Self::BadArgument(_) => E::new(of::OFPET_BAD_ACTION, of::OFPBAC_BAD_ARGUMENT),
            Self::BadGroup(_) => E::new(of::OFPET_BAD_ACTION, of::OFPBAC_BAD_OUT_GROUP),
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
pub fn compile_match(m: &of::Match) -> Result<(FullKey, FullKey), CompileError> {
    let mut k = FlowKey::default();
    let mut mk = FlowKey::default();
    let mut e = FlowKeyExt::default();
    let mut me = FlowKeyExt::default();
    // ND fields need one of these ICMPv6 types.
    let mut need_nd: Option<(&'static [u16], &OxmField)> = None;
    let name = |f: &OxmField| {
        f.info()
            .map(|i| i.name.to_string())
            .unwrap_or_else(|| format!("{f:?}"))
    };
    // Prerequisites, checked once all fields are known: Ethernet types
    // (one of; each set once, with the first field that needs it), IP
    // protocol, a VLAN tag. The fields are kept, their names made only for
    // an error.
    let mut need_eth: Vec<(&'static [u16], &OxmField)> = Vec::new();
    let mut need_proto: Option<(u8, &OxmField)> = None;
    let mut need_vlan: Option<&OxmField> = None;
    for (i, f) in m.fields.iter().enumerate() {
        let id = f.id();
        if m.fields[..i]
            .iter()
            .any(|g| (g.id().0, g.id().1) == (id.0, id.1))
        {
            return Err(CompileError::DuplicateField(name(f)));
        }
        let mut eth = |types: &'static [u16]| {
            if !need_eth.iter().any(|(t, _)| *t == types) {
                need_eth.push((types, f));
            }
        };
        let mut proto = |p: u8| need_proto = Some((p, f));
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
                need_vlan = Some(f);
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
            OxmField::Metadata(v, m) => {
                let (v, m) = vm(*v, *m, u64::MAX);
                (e.metadata, me.metadata) = (words_of(v), words_of(m));
            }
            OxmField::TunnelId(v, m) => {
                let (v, m) = vm(*v, *m, u64::MAX);
                (e.tunnel_id, me.tunnel_id) = (words_of(v), words_of(m));
            }
            OxmField::Ipv6Src(v, m) => {
                eth(IPV6);
                (e.ipv6_src, me.ipv6_src) = ip6_vm(v, m);
            }
            OxmField::Ipv6Dst(v, m) => {
                eth(IPV6);
                (e.ipv6_dst, me.ipv6_dst) = ip6_vm(v, m);
            }
            OxmField::Ipv6NdTarget(v, m) => {
                eth(IPV6);
                proto(FlowKey::IPPROTO_ICMPV6);
                need_nd = Some((&[135, 136], f));
                (e.nd_target, me.nd_target) = ip6_vm(v, m);
            }
            OxmField::Ipv6NdSll(v, m) | OxmField::Ipv6NdTll(v, m) => {
                eth(IPV6);
                proto(FlowKey::IPPROTO_ICMPV6);
                let sll = matches!(f, OxmField::Ipv6NdSll(..));
                need_nd = Some((if sll { &[135] } else { &[136] }, f));
                let (v, m) = mac_vm(v, m);
                if sll {
                    (e.sha, me.sha) = (v, m);
                } else {
                    (e.tha, me.tha) = (v, m);
                }
            }
            OxmField::ArpSha(v, m) => {
                eth(ARP);
                (e.sha, me.sha) = mac_vm(v, m);
            }
            OxmField::ArpTha(v, m) => {
                eth(ARP);
                (e.tha, me.tha) = mac_vm(v, m);
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
    for (types, f) in &need_eth {
        if !eth.is_some_and(|e| types.contains(&e)) {
            return Err(CompileError::Prerequisite(format!(
                "{} without eth_type={}",
                name(f),
                types
                    .iter()
                    .map(|t| format!("{t:#06x}"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            )));
        }
    }
    if let Some((proto, f)) = need_proto {
        if mk.ip_proto == 0 || k.ip_proto != proto {
            return Err(CompileError::Prerequisite(format!(
                "{} without ip_proto={proto}",
                name(f)
            )));
        }
    }
    if let Some(f) = need_vlan {
        if mk.vlan_tci & VLAN_PRESENT == 0 || k.vlan_tci & VLAN_PRESENT == 0 {
            return Err(CompileError::Prerequisite(format!(
                "{} without a VLAN tag (vlan_vid)",
                name(f)
            )));
        }
    }
    if let Some((types, f)) = need_nd {
        if mk.l4_src != u16::MAX || !types.contains(&k.l4_src) {
            return Err(CompileError::Prerequisite(format!(
                "{} without icmpv6_type={types:?}",
                name(f)
            )));
        }
    }
    let mask = FullKey { key: mk, ext: me };
    let key = FullKey { key: k, ext: e };
    Ok((key.masked(&mask), mask))
}

fn ip6_vm(v: &std::net::Ipv6Addr, m: &Option<std::net::Ipv6Addr>) -> ([u8; 16], [u8; 16]) {
    let m = m.map_or([0xff; 16], |m| m.octets());
    let v = v.octets();
    (std::array::from_fn(|i| v[i] & m[i]), m)
}

/// Merge `bits` under `mask` into the MPLS label stack entry of the key.
fn set_lse(k: &mut FlowKey, mk: &mut FlowKey, bits: u32, mask: u32) {
    let v = (u32::from_be_bytes(k.ipv4_src) & !mask) | (bits & mask);
    let m = u32::from_be_bytes(mk.ipv4_src) | mask;
    k.ipv4_src = v.to_be_bytes();
    mk.ipv4_src = m.to_be_bytes();
}

/// A rule's compiled instructions: the apply-actions list (the fast path)
/// and, for rules that have more, the rest for the pipeline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// The apply-actions list.
    pub apply: Vec<Action>,
    /// goto_table, write_metadata, write/clear_actions, meter; `None` when
    /// the rule has none of them.
    pub ext: Option<RuleExt>,
}

impl Compiled {
    /// The groups the rule sends to (apply-actions or write-actions).
    pub fn groups(&self) -> impl Iterator<Item = u32> + '_ {
        let write = self
            .ext
            .iter()
            .flat_map(|e| e.write[..(e.n_write as usize).min(MAX_ACTIONS)].iter());
        self.apply
            .iter()
            .chain(write)
            .filter(|a| a.kind() == Some(ActionKind::Group))
            .map(|a| a.arg)
    }

    /// The meter the rule goes through, if any.
    pub fn meter(&self) -> Option<u32> {
        self.ext.map(|e| e.meter).filter(|m| *m != 0)
    }
}

/// Compile OpenFlow instructions of a rule in table `table`.
pub fn compile_instructions(ins: &[of::Instruction], table: u8) -> Result<Compiled, CompileError> {
    let mut out = Compiled::default();
    let mut ext = RuleExt::default();
    let mut has_ext = false;
    let mut seen: Vec<std::mem::Discriminant<of::Instruction>> = Vec::new();
    for i in ins {
        let d = std::mem::discriminant(i);
        if seen.contains(&d) {
            return Err(CompileError::UnsupportedInstruction(format!(
                "{i:?} given twice"
            )));
        }
        seen.push(d);
        match i {
            of::Instruction::ApplyActions(acts) => {
                out.apply = compile_actions(acts)?;
                // Kinds beyond the fast path's, and SCTP ports (their
                // CRC32c is fixed where the bytes change), need the
                // pipeline program.
                let sctp = acts.iter().any(|a| {
                    matches!(
                        a,
                        of::Action::SetField(OxmField::SctpSrc(..) | OxmField::SctpDst(..))
                    )
                });
                if sctp
                    || out
                        .apply
                        .iter()
                        .any(|a| !a.kind().is_some_and(ActionKind::on_fast_path))
                {
                    has_ext = true;
                }
            }
            of::Instruction::GotoTable(t) => {
                if *t <= table || u32::from(*t) >= N_TABLES {
                    return Err(CompileError::BadTableId(*t));
                }
                ext.goto_table = u32::from(*t);
                has_ext = true;
            }
            of::Instruction::WriteMetadata { metadata, mask } => {
                ext.metadata = words_of(metadata & mask);
                ext.metadata_mask = words_of(*mask);
                has_ext = true;
            }
            of::Instruction::WriteActions(acts) => {
                let set = action_set(compile_actions(acts)?);
                ext.n_write = set.len() as u32;
                for (slot, a) in ext.write.iter_mut().zip(&set) {
                    *slot = *a;
                }
                has_ext = true;
            }
            of::Instruction::ClearActions => {
                ext.flags |= EXT_CLEAR_ACTIONS;
                has_ext = true;
            }
            of::Instruction::Meter(id) => {
                if *id == 0 || *id > of::OFPM_MAX {
                    return Err(CompileError::UnsupportedInstruction(format!(
                        "meter {id:#x}"
                    )));
                }
                ext.meter = *id;
                has_ext = true;
            }
            of::Instruction::Experimenter { .. } => {
                return Err(CompileError::UnsupportedInstruction(format!("{i:?}")))
            }
            of::Instruction::Unknown { .. } => {
                return Err(CompileError::UnknownInstruction(format!("{i:?}")))
            }
        }
    }
    out.ext = has_ext.then_some(ext);
    Ok(out)
}

/// An action list as an OpenFlow action set: one action per type (the
/// later one wins), in the set's execution order (both by
/// [`Action::set_slot`], as the datapath keeps its action set).
pub fn action_set(actions: Vec<Action>) -> Vec<Action> {
    let mut set: Vec<Action> = Vec::with_capacity(actions.len());
    for a in actions {
        match set.iter_mut().find(|s| s.set_slot() == a.set_slot()) {
            Some(s) => *s = a,
            None => set.push(a),
        }
    }
    set.sort_by_key(Action::set_slot);
    set
}

/// Compile an OpenFlow action list into datapath actions.
pub fn compile_actions(acts: &[of::Action]) -> Result<Vec<Action>, CompileError> {
    let mut out = Vec::with_capacity(acts.len());
    for a in acts {
        let arg = |k: ActionKind, v: u32| Action::with_arg(k, v);
        let one = match a {
            of::Action::Output { port, max_len } => match *port {
                of::OFPP_IN_PORT => Action::output_in_port(),
                of::OFPP_LOCAL => Action::output_local(),
                of::OFPP_CONTROLLER => Action::controller(u32::from(*max_len)),
                p if p <= of::OFPP_MAX => Action::output(p),
                p => return Err(CompileError::BadOutPort(p)),
            },
            of::Action::DecNwTtl => Action::dec_ttl(),
            of::Action::SetNwTtl(t) => arg(ActionKind::SetNwTtl, u32::from(*t)),
            of::Action::DecMplsTtl => arg(ActionKind::DecMplsTtl, 0),
            of::Action::SetMplsTtl(t) => arg(ActionKind::SetMplsTtl, u32::from(*t)),
            of::Action::CopyTtlOut => arg(ActionKind::CopyTtlOut, 0),
            of::Action::CopyTtlIn => arg(ActionKind::CopyTtlIn, 0),
            of::Action::PushVlan(t) => {
                if *t != FlowKey::ETH_TYPE_VLAN && *t != FlowKey::ETH_TYPE_VLAN_AD {
                    return Err(CompileError::BadArgument(format!("push_vlan:{t:#06x}")));
                }
                arg(ActionKind::PushVlan, u32::from(*t))
            }
            of::Action::PopVlan => arg(ActionKind::PopVlan, 0),
            of::Action::PushMpls(t) => {
                if *t != FlowKey::ETH_TYPE_MPLS && *t != FlowKey::ETH_TYPE_MPLS_MC {
                    return Err(CompileError::BadArgument(format!("push_mpls:{t:#06x}")));
                }
                arg(ActionKind::PushMpls, u32::from(*t))
            }
            of::Action::PopMpls(t) => arg(ActionKind::PopMpls, u32::from(*t)),
            of::Action::Group(g) => {
                if *g > of::OFPG_MAX {
                    return Err(CompileError::BadGroup(*g));
                }
                Action::group(*g)
            }
            of::Action::SetField(f) => {
                let (first, second) = compile_set_field(f)?;
                if let Some(b) = second {
                    out.push(first);
                    b
                } else {
                    first
                }
            }
            other => return Err(CompileError::UnsupportedAction(format!("{other:?}"))),
        };
        out.push(one);
    }
    if out.len() > MAX_ACTIONS {
        return Err(CompileError::TooManyActions(out.len()));
    }
    Ok(out)
}

/// A set_field as one datapath action (two for a 16-byte address: its
/// halves).
fn compile_set_field(f: &OxmField) -> Result<(Action, Option<Action>), CompileError> {
    let arg = |k: ActionKind, v: u32| Action::with_arg(k, v);
    let mac = |k: ActionKind, m: [u8; 6]| {
        Action::with_data(k, 0, [m[0], m[1], m[2], m[3], m[4], m[5], 0, 0])
    };
    let ip4 = |k: ActionKind, a: std::net::Ipv4Addr| {
        let o = a.octets();
        Action::with_data(k, 0, [o[0], o[1], o[2], o[3], 0, 0, 0, 0])
    };
    let halves = |k: ActionKind, a: std::net::Ipv6Addr| {
        let o = a.octets();
        let h = |i: usize| std::array::from_fn::<u8, 8, _>(|j| o[i * 8 + j]);
        (
            Action::with_data(k, 0, h(0)),
            Some(Action::with_data(k, 1, h(1))),
        )
    };
    if f.is_masked() {
        return Err(CompileError::UnsupportedSetField(format!("{f:?}")));
    }
    Ok((
        match f {
            OxmField::EthSrc(v, _) => Action::set_eth_src(v.0),
            OxmField::EthDst(v, _) => Action::set_eth_dst(v.0),
            OxmField::VlanVid(v, _) => arg(ActionKind::SetVlanVid, u32::from(*v & 0x0fff)),
            OxmField::VlanPcp(v, _) => arg(ActionKind::SetVlanPcp, u32::from(*v & 7)),
            OxmField::IpDscp(v, _) => Action::with_data(
                ActionKind::SetIpTos,
                0,
                [(*v << 2) & 0xfc, 0xfc, 0, 0, 0, 0, 0, 0],
            ),
            OxmField::IpEcn(v, _) => {
                Action::with_data(ActionKind::SetIpTos, 0, [*v & 3, 0x03, 0, 0, 0, 0, 0, 0])
            }
            OxmField::Ipv4Src(v, _) => Action::set_ipv4_src(v.octets()),
            OxmField::Ipv4Dst(v, _) => Action::set_ipv4_dst(v.octets()),
            OxmField::TcpSrc(v, _) | OxmField::UdpSrc(v, _) | OxmField::SctpSrc(v, _) => {
                Action::set_l4_src(*v)
            }
            OxmField::TcpDst(v, _) | OxmField::UdpDst(v, _) | OxmField::SctpDst(v, _) => {
                Action::set_l4_dst(*v)
            }
            OxmField::Icmpv4Type(v, _) | OxmField::Icmpv6Type(v, _) => {
                arg(ActionKind::SetIcmpType, u32::from(*v))
            }
            OxmField::Icmpv4Code(v, _) | OxmField::Icmpv6Code(v, _) => {
                arg(ActionKind::SetIcmpCode, u32::from(*v))
            }
            OxmField::ArpOp(v, _) => arg(ActionKind::SetArpOp, u32::from(*v)),
            OxmField::ArpSpa(v, _) => ip4(ActionKind::SetArpSpa, *v),
            OxmField::ArpTpa(v, _) => ip4(ActionKind::SetArpTpa, *v),
            OxmField::ArpSha(v, _) => mac(ActionKind::SetArpSha, v.0),
            OxmField::ArpTha(v, _) => mac(ActionKind::SetArpTha, v.0),
            OxmField::Ipv6NdSll(v, _) => mac(ActionKind::SetNdSll, v.0),
            OxmField::Ipv6NdTll(v, _) => mac(ActionKind::SetNdTll, v.0),
            OxmField::Ipv6Flabel(v, _) => arg(ActionKind::SetIpv6Label, *v & 0x000f_ffff),
            OxmField::MplsLabel(v, _) => arg(ActionKind::SetMplsLabel, *v & 0x000f_ffff),
            OxmField::MplsTc(v, _) => arg(ActionKind::SetMplsTc, u32::from(*v & 7)),
            OxmField::MplsBos(v, _) => arg(ActionKind::SetMplsBos, u32::from(*v & 1)),
            OxmField::TunnelId(v, _) => {
                Action::with_data(ActionKind::SetTunnelId, 0, v.to_le_bytes())
            }
            OxmField::Ipv6Src(v, _) => return Ok(halves(ActionKind::SetIpv6Src, *v)),
            OxmField::Ipv6Dst(v, _) => return Ok(halves(ActionKind::SetIpv6Dst, *v)),
            OxmField::Ipv6NdTarget(v, _) => return Ok(halves(ActionKind::SetNdTarget, *v)),
            other => return Err(CompileError::UnsupportedSetField(format!("{other:?}"))),
        },
        None,
    ))
}

/// The OpenFlow match of a compiled (key, mask): the inverse of
/// [`compile_match`] (fields in OXM field order), used for flow stats and
/// FLOW_REMOVED when the original match is not known (rules restored from
/// the pinned maps after a restart).
pub fn match_of(full_key: &FullKey, full_mask: &FullKey) -> of::Match {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let (key, mask) = (&full_key.key, &full_mask.key);
    let (ek, em) = (&full_key.ext, &full_mask.ext);
    let mut m = of::Match::new();
    let u64m = |v: [u32; 2], mk: [u32; 2]| {
        let (v, mk) = (u64_of(v), u64_of(mk));
        (v, (mk != u64::MAX).then_some(mk))
    };
    let ip6 = |v: [u8; 16], mk: [u8; 16]| {
        (
            Ipv6Addr::from(v),
            (mk != [0xff; 16]).then_some(Ipv6Addr::from(mk)),
        )
    };
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
    if em.metadata != [0; 2] {
        let (v, mk) = u64m(ek.metadata, em.metadata);
        m = m.with(OxmField::Metadata(v, mk));
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
            if em.sha != [0; 6] {
                let (v, mk) = mac(ek.sha, em.sha);
                m = m.with(OxmField::ArpSha(v, mk));
            }
            if em.tha != [0; 6] {
                let (v, mk) = mac(ek.tha, em.tha);
                m = m.with(OxmField::ArpTha(v, mk));
            }
            return with_tunnel(m, ek, em);
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
            return with_tunnel(m, ek, em);
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
    if em.ipv6_src != [0; 16] {
        let (v, mk) = ip6(ek.ipv6_src, em.ipv6_src);
        m = m.with(OxmField::Ipv6Src(v, mk));
    }
    if em.ipv6_dst != [0; 16] {
        let (v, mk) = ip6(ek.ipv6_dst, em.ipv6_dst);
        m = m.with(OxmField::Ipv6Dst(v, mk));
    }
    if mask.ipv6_label != 0 {
        let mk = (mask.ipv6_label != 0x000f_ffff).then_some(mask.ipv6_label);
        m = m.with(OxmField::Ipv6Flabel(key.ipv6_label, mk));
    }
    if em.nd_target != [0; 16] {
        let (v, mk) = ip6(ek.nd_target, em.nd_target);
        m = m.with(OxmField::Ipv6NdTarget(v, mk));
    }
    if em.sha != [0; 6] {
        let (v, mk) = mac(ek.sha, em.sha);
        m = m.with(OxmField::Ipv6NdSll(v, mk));
    }
    if em.tha != [0; 6] {
        let (v, mk) = mac(ek.tha, em.tha);
        m = m.with(OxmField::Ipv6NdTll(v, mk));
    }
    with_tunnel(m, ek, em)
}

/// `m` with the tunnel id field, if the rule matches it.
fn with_tunnel(m: of::Match, ek: &FlowKeyExt, em: &FlowKeyExt) -> of::Match {
    if em.tunnel_id == [0; 2] {
        return m;
    }
    let mk = u64_of(em.tunnel_id);
    m.with(OxmField::TunnelId(
        u64_of(ek.tunnel_id),
        (mk != u64::MAX).then_some(mk),
    ))
}

/// The OpenFlow actions of compiled datapath actions: the inverse of
/// [`compile_actions`] (the halves of a 16-byte address join again).
/// `proto` (the rule's IP protocol, if it matches one) picks UDP or SCTP
/// over TCP for port rewrites.
pub fn actions_of(actions: &[Action], proto: Option<u8>) -> Vec<of::Action> {
    use daolinet_common::ActionKind as K;
    use std::net::{Ipv4Addr, Ipv6Addr};
    let set = |f: OxmField| of::Action::SetField(f);
    let mut out = Vec::with_capacity(actions.len());
    let mut i = 0;
    while i < actions.len() {
        let a = &actions[i];
        i += 1;
        let Some(kind) = a.kind() else { continue };
        let port = a.arg as u16;
        out.push(match kind {
            K::Output => of::Action::output(a.arg),
            K::OutputInPort => of::Action::output(of::OFPP_IN_PORT),
            K::OutputLocal => of::Action::output(of::OFPP_LOCAL),
            K::Controller => of::Action::controller(u16::try_from(a.arg).unwrap_or(u16::MAX)),
            K::Drop => continue,
            K::SetEthSrc => set(OxmField::EthSrc(of::MacAddr(a.mac()), None)),
            K::SetEthDst => set(OxmField::EthDst(of::MacAddr(a.mac()), None)),
            K::SetIpv4Src => set(OxmField::Ipv4Src(Ipv4Addr::from(a.ipv4()), None)),
            K::SetIpv4Dst => set(OxmField::Ipv4Dst(Ipv4Addr::from(a.ipv4()), None)),
            K::SetL4Src => set(match proto {
                Some(FlowKey::IPPROTO_UDP) => OxmField::UdpSrc(port, None),
                Some(FlowKey::IPPROTO_SCTP) => OxmField::SctpSrc(port, None),
                _ => OxmField::TcpSrc(port, None),
            }),
            K::SetL4Dst => set(match proto {
                Some(FlowKey::IPPROTO_UDP) => OxmField::UdpDst(port, None),
                Some(FlowKey::IPPROTO_SCTP) => OxmField::SctpDst(port, None),
                _ => OxmField::TcpDst(port, None),
            }),
            K::DecTtl => of::Action::DecNwTtl,
            K::Group => of::Action::Group(a.arg),
            K::SetIpTos if a.data()[1] == 0x03 => set(OxmField::IpEcn(a.data()[0] & 3, None)),
            K::SetIpTos => set(OxmField::IpDscp(a.data()[0] >> 2, None)),
            K::SetIpv6Label => set(OxmField::Ipv6Flabel(a.arg, None)),
            K::SetVlanVid => set(OxmField::VlanVid(a.arg as u16, None)),
            K::SetVlanPcp => set(OxmField::VlanPcp(a.arg as u8, None)),
            K::PushVlan => of::Action::PushVlan(a.arg as u16),
            K::PopVlan => of::Action::PopVlan,
            K::PushMpls => of::Action::PushMpls(a.arg as u16),
            K::PopMpls => of::Action::PopMpls(a.arg as u16),
            K::SetMplsLabel => set(OxmField::MplsLabel(a.arg, None)),
            K::SetMplsTc => set(OxmField::MplsTc(a.arg as u8, None)),
            K::SetMplsBos => set(OxmField::MplsBos(a.arg as u8, None)),
            K::SetMplsTtl => of::Action::SetMplsTtl(a.arg as u8),
            K::DecMplsTtl => of::Action::DecMplsTtl,
            K::SetNwTtl => of::Action::SetNwTtl(a.arg as u8),
            K::CopyTtlOut => of::Action::CopyTtlOut,
            K::CopyTtlIn => of::Action::CopyTtlIn,
            K::SetIpv6Src | K::SetIpv6Dst | K::SetNdTarget => {
                // The first half, then the second (as compile_set_field).
                let Some(b) = actions.get(i).filter(|b| b.kind == a.kind && b.half == 1) else {
                    continue;
                };
                i += 1;
                let mut o = [0u8; 16];
                o[..8].copy_from_slice(&a.data());
                o[8..].copy_from_slice(&b.data());
                let v = Ipv6Addr::from(o);
                set(match kind {
                    K::SetIpv6Src => OxmField::Ipv6Src(v, None),
                    K::SetIpv6Dst => OxmField::Ipv6Dst(v, None),
                    _ => OxmField::Ipv6NdTarget(v, None),
                })
            }
            K::SetArpSha => set(OxmField::ArpSha(of::MacAddr(a.mac()), None)),
            K::SetArpTha => set(OxmField::ArpTha(of::MacAddr(a.mac()), None)),
            K::SetNdSll => set(OxmField::Ipv6NdSll(of::MacAddr(a.mac()), None)),
            K::SetNdTll => set(OxmField::Ipv6NdTll(of::MacAddr(a.mac()), None)),
            K::SetArpOp => set(OxmField::ArpOp(a.arg as u16, None)),
            K::SetArpSpa => set(OxmField::ArpSpa(Ipv4Addr::from(a.ipv4()), None)),
            K::SetArpTpa => set(OxmField::ArpTpa(Ipv4Addr::from(a.ipv4()), None)),
            K::SetIcmpType if proto == Some(FlowKey::IPPROTO_ICMPV6) => {
                set(OxmField::Icmpv6Type(a.arg as u8, None))
            }
            K::SetIcmpType => set(OxmField::Icmpv4Type(a.arg as u8, None)),
            K::SetIcmpCode if proto == Some(FlowKey::IPPROTO_ICMPV6) => {
                set(OxmField::Icmpv6Code(a.arg as u8, None))
            }
            K::SetIcmpCode => set(OxmField::Icmpv4Code(a.arg as u8, None)),
            K::SetTunnelId => set(OxmField::TunnelId(u64::from_le_bytes(a.data()), None)),
        });
    }
    out
}

/// The OpenFlow instructions of a compiled rule: the inverse of
/// [`compile_instructions`] (used when the original is not known, e.g.
/// rules restored after a restart).
pub fn instructions_of(c: &Compiled, proto: Option<u8>) -> Vec<of::Instruction> {
    instructions_from(&c.apply, c.ext.as_ref(), proto)
}

/// The OpenFlow instructions of apply-actions `apply` and the other
/// instructions `ext` (see [`instructions_of`]).
pub fn instructions_from(
    apply: &[Action],
    ext: Option<&RuleExt>,
    proto: Option<u8>,
) -> Vec<of::Instruction> {
    let mut out = Vec::new();
    let Some(e) = ext else {
        if !apply.is_empty() {
            out.push(of::Instruction::ApplyActions(actions_of(apply, proto)));
        }
        return out;
    };
    if e.meter != 0 {
        out.push(of::Instruction::Meter(e.meter));
    }
    if !apply.is_empty() {
        out.push(of::Instruction::ApplyActions(actions_of(apply, proto)));
    }
    if e.flags & EXT_CLEAR_ACTIONS != 0 {
        out.push(of::Instruction::ClearActions);
    }
    if e.n_write != 0 {
        let n = (e.n_write as usize).min(MAX_ACTIONS);
        out.push(of::Instruction::WriteActions(actions_of(
            &e.write[..n],
            proto,
        )));
    }
    if e.metadata_mask != [0; 2] {
        out.push(of::Instruction::WriteMetadata {
            metadata: u64_of(e.metadata),
            mask: u64_of(e.metadata_mask),
        });
    }
    if e.goto_table != daolinet_common::NO_TABLE {
        out.push(of::Instruction::GotoTable(e.goto_table as u8));
    }
    out
}

/// Render a compiled match in ovs-ofctl style (`in_port=1,ip,nw_dst=10.0.0.0/24`).
pub fn format_match(key: &FullKey, mask: &FullKey) -> String {
    match_of(key, mask).to_string()
}

/// Render compiled actions in ovs-ofctl style (`set_field:..->eth_dst,output:2`).
pub fn format_actions(actions: &[Action]) -> String {
    let a = actions_of(actions, None);
    if a.is_empty() {
        return "drop".into();
    }
    a.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use daolinet_common::ActionKind;

    /// The compact parts of a compiled match.
    fn compact(m: &of::Match) -> Result<(FlowKey, FlowKey), CompileError> {
        compile_match(m).map(|(k, m)| (k.key, m.key))
    }

    fn apply_of(fm: &of::FlowMod) -> Vec<Action> {
        compile_instructions(&fm.instructions, 0).unwrap().apply
    }

    #[test]
    fn cross_host_flow_compiles_to_rewrites_and_output() {
        let fm: of::FlowMod = "priority=100,in_port=1,ip,nw_src=10.1.0.2,nw_dst=10.1.0.3 \
             actions=set_field:02:00:00:00:00:01->eth_src,set_field:02:00:00:00:00:02->eth_dst,\
             set_field:172.31.0.2->ip_src,set_field:172.31.0.3->ip_dst,output:9"
            .parse()
            .unwrap();
        let (fk, fmk) = compile_match(&fm.match_).unwrap();
        let (k, m) = (fk.key, fmk.key);
        assert!(!fmk.is_wide());
        assert_eq!(k.in_port, 1);
        assert_eq!(k.eth_type, 0x0800);
        assert_eq!(k.ipv4_src, [10, 1, 0, 2]);
        assert_eq!(m.ipv4_dst, [255; 4]);
        assert_eq!(m.l4_src, 0);
        let c = compile_instructions(&fm.instructions, 0).unwrap();
        assert_eq!(c.ext, None, "apply-actions only: the fast path");
        let acts = c.apply;
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
            format_match(&fk, &fmk),
            "in_port=1,ip,nw_src=10.1.0.2,nw_dst=10.1.0.3"
        );
        assert_eq!(
            format_actions(&acts),
            "set_field:02:00:00:00:00:01->dl_src,set_field:02:00:00:00:00:02->dl_dst,\
             set_field:172.31.0.2->nw_src,set_field:172.31.0.3->nw_dst,output:9"
        );
    }

    #[test]
    fn masked_prefix_and_empty_actions() {
        let fm: of::FlowMod = "ip,nw_dst=10.1.0.0/16 actions=drop".parse().unwrap();
        let (k, m) = compile_match(&fm.match_).unwrap();
        assert_eq!(m.key.ipv4_dst, [255, 255, 0, 0]);
        assert_eq!(k.key.ipv4_dst, [10, 1, 0, 0]);
        assert_eq!(format_match(&k, &m), "ip,nw_dst=10.1.0.0/16");
        assert!(apply_of(&fm).is_empty());
    }

    fn err_in(flow: &str, table: u8) -> of::ErrorCode {
        let fm: of::FlowMod = flow.parse().unwrap();
        match compile_match(&fm.match_) {
            Err(e) => e.code(),
            Ok(_) => compile_instructions(&fm.instructions, table)
                .unwrap_err()
                .code(),
        }
    }

    fn err(flow: &str) -> of::ErrorCode {
        err_in(flow, 0)
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
        // ND fields need the right ICMPv6 type.
        assert_eq!(
            err("icmp6,icmpv6_type=136,nd_sll=02:00:00:00:00:01 actions=drop"),
            m(of::OFPBMC_BAD_PREREQ)
        );
        let a = |c| E::new(of::OFPET_BAD_ACTION, c);
        assert_eq!(
            err("tcp,tcp_dst=80 actions=FLOOD"),
            a(of::OFPBAC_BAD_OUT_PORT)
        );
        assert_eq!(
            err("ip actions=set_field:6->nw_proto"),
            a(of::OFPBAC_BAD_SET_TYPE)
        );
        assert_eq!(err("actions=push_vlan:0x0800"), a(of::OFPBAC_BAD_ARGUMENT));
        assert_eq!(
            err("dl_type=0x88e7,pbb_isid=4 actions=drop"),
            m(of::OFPBMC_BAD_FIELD)
        );
        let i = |c| E::new(of::OFPET_BAD_INSTRUCTION, c);
        // goto_table only goes forward, and only to a table that exists.
        assert_eq!(
            err_in("actions=goto_table:1", 1),
            i(of::OFPBIC_BAD_TABLE_ID)
        );
        assert_eq!(
            err_in("actions=goto_table:1", 3),
            i(of::OFPBIC_BAD_TABLE_ID)
        );
        assert_eq!(
            err(&format!("actions=goto_table:{N_TABLES}")),
            i(of::OFPBIC_BAD_TABLE_ID)
        );
    }

    #[test]
    fn instructions_beyond_apply_actions_make_a_pipeline_rule() {
        let fm: of::FlowMod = "ip actions=meter:3,output:1,clear_actions,\
             write_actions(set_field:02:00:00:00:00:09->eth_dst,output:2,dec_ttl),\
             write_metadata:0x12/0xff,goto_table:4"
            .parse()
            .unwrap();
        let c = compile_instructions(&fm.instructions, 1).unwrap();
        assert_eq!(c.apply, [Action::output(1)]);
        let e = c.ext.unwrap();
        assert_eq!((e.meter, e.goto_table), (3, 4));
        assert_eq!((e.metadata, e.metadata_mask), ([0x12, 0], [0xff, 0]));
        assert_eq!(e.flags & EXT_CLEAR_ACTIONS, EXT_CLEAR_ACTIONS);
        // The action set is kept in its execution order: dec_ttl,
        // set-field, output.
        let kinds: Vec<_> = e.write[..e.n_write as usize]
            .iter()
            .map(|a| a.kind().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                ActionKind::DecTtl,
                ActionKind::SetEthDst,
                ActionKind::Output
            ]
        );
        assert_eq!(c.meter(), Some(3));
        // And back: the same instructions.
        let back = instructions_of(&c, None);
        let again = compile_instructions(&back, 1).unwrap();
        assert_eq!(again, c);
        // A later output in a write-actions list replaces the earlier one.
        let fm: of::FlowMod = "actions=write_actions(output:2,output:3)".parse().unwrap();
        let e = compile_instructions(&fm.instructions, 0)
            .unwrap()
            .ext
            .unwrap();
        assert_eq!(e.n_write, 1);
        assert_eq!(e.write[0], Action::output(3));
        // Apply-actions the fast path does not run make a pipeline rule
        // too; the fast path's own do not.
        let ext = |flow: &str| {
            let fm: of::FlowMod = flow.parse().unwrap();
            compile_instructions(&fm.instructions, 0).unwrap().ext
        };
        assert_eq!(
            ext("ip actions=set_field:10.0.0.1->ipv4_src,dec_ttl,output:1"),
            None
        );
        assert_eq!(ext("tcp actions=set_field:80->tcp_dst,output:1"), None);
        for flow in [
            "actions=push_vlan:0x8100,output:1",
            "actions=group:1",
            "ip actions=set_field:3->ip_dscp,output:1",
            "sctp actions=set_field:80->sctp_dst,output:1",
        ] {
            assert_eq!(ext(flow), Some(RuleExt::default()), "{flow}");
        }
    }

    #[test]
    fn sixteen_byte_addresses_set_in_two_halves() {
        let fm: of::FlowMod = "ipv6 actions=set_field:2001:db8::1->ipv6_dst,output:2"
            .parse()
            .unwrap();
        let acts = apply_of(&fm);
        assert_eq!(acts.len(), 3);
        assert_eq!(acts[0].kind(), Some(ActionKind::SetIpv6Dst));
        assert_eq!((acts[0].half, acts[1].half), (0, 1));
        assert_eq!(acts[0].data(), [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0]);
        assert_eq!(acts[1].data(), [0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(compile_actions(&actions_of(&acts, None)).unwrap(), acts);
    }

    #[test]
    fn ipv6_vlan_pcp_tos_sctp_and_mpls_fields_compile() {
        let c = |flow: &str| {
            let fm: of::FlowMod = format!("{flow} actions=drop").parse().unwrap();
            compact(&fm.match_)
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
    fn wide_fields_go_to_the_extension() {
        let c = |flow: &str| {
            let fm: of::FlowMod = format!("{flow} actions=drop").parse().unwrap();
            compile_match(&fm.match_).unwrap()
        };
        let (k, m) = c("metadata=0x1200/0xff00,tun_id=7");
        assert!(m.is_wide() && m.key.is_empty_mask());
        assert_eq!((k.ext.metadata, m.ext.metadata), ([0x1200, 0], [0xff00, 0]));
        assert_eq!((k.ext.tunnel_id, m.ext.tunnel_id), ([7, 0], [u32::MAX; 2]));
        let (k, m) = c("ipv6,ipv6_src=2001:db8::/32");
        assert_eq!(m.ext.ipv6_src[..4], [0xff; 4]);
        assert_eq!(k.ext.ipv6_src[..4], [0x20, 0x01, 0x0d, 0xb8]);
        let (k, _) = c("arp,arp_sha=02:00:00:00:00:07");
        assert_eq!(k.ext.sha, [2, 0, 0, 0, 0, 7]);
        let (k, m) = c("icmp6,icmpv6_type=135,nd_target=fe80::1,nd_sll=02:00:00:00:00:05");
        assert_eq!(k.ext.nd_target[15], 1);
        assert_eq!((k.ext.sha, m.ext.sha), ([2, 0, 0, 0, 0, 5], [0xff; 6]));
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
            "metadata=0xff/0xff0,tun_id=0x11,ip actions=set_field:9->tun_id,goto_table:3",
            "ipv6,ipv6_src=fe80::/10,ipv6_dst=2001:db8::2 actions=set_field:fe80::9->ipv6_src,dec_ttl,output:3",
            "arp,arp_sha=02:00:00:00:00:01,arp_tha=02:00:00:00:00:02/ff:ff:ff:00:00:00 actions=set_field:2->arp_op,set_field:02:00:00:00:00:03->arp_sha,output:1",
            "icmp6,icmpv6_type=135,nd_target=fe80::2,nd_sll=02:00:00:00:00:08 actions=set_field:fe80::3->nd_target,output:2",
            "icmp6,icmpv6_type=136,nd_tll=02:00:00:00:00:09 actions=set_field:02:00:00:00:00:0a->nd_tll,output:2",
            "tcp,tcp_dst=80/0xfff0 actions=push_vlan:0x8100,set_field:4196->vlan_vid,set_field:5->vlan_pcp,output:2",
            "ip actions=push_mpls:0x8847,set_field:100->mpls_label,set_field:3->mpls_tc,set_mpls_ttl:9,dec_mpls_ttl,output:2",
            "mpls actions=pop_mpls:0x0800,set_field:10->ip_dscp,set_field:2->ip_ecn,set_nw_ttl:3,output:2",
            "icmp actions=set_field:3->icmp_type,set_field:1->icmp_code,group:5",
        ] {
            let fm: of::FlowMod = flow.parse().unwrap();
            let (k, m) = compile_match(&fm.match_).unwrap();
            let c = compile_instructions(&fm.instructions, 0).unwrap();
            let back = match_of(&k, &m);
            assert_eq!(compile_match(&back).unwrap(), (k, m), "{flow}");
            let proto = (m.key.ip_proto != 0).then_some(k.key.ip_proto);
            let again = compile_instructions(&instructions_of(&c, proto), 0).unwrap();
            assert_eq!(again, c, "{flow}");
        }
    }
}
