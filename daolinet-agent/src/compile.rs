//! Translate OpenFlow 1.3 matches and actions into the datapath's
//! [`FlowKey`] value/mask and [`Action`] list.

use daolinet_common::{Action, FlowKey, MAX_ACTIONS, VLAN_PRESENT};
use daolinet_openflow::{self as of, OxmField};

/// Why a flow cannot be compiled for the eBPF datapath.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    /// A match field the datapath does not classify on.
    #[error("unsupported match field {0}")]
    UnsupportedField(String),
    /// An action the datapath cannot execute.
    #[error("unsupported action {0}")]
    UnsupportedAction(String),
    /// An instruction other than apply-actions.
    #[error("unsupported instruction {0}")]
    UnsupportedInstruction(String),
    /// More actions than [`MAX_ACTIONS`].
    #[error("too many actions ({0} > {MAX_ACTIONS})")]
    TooManyActions(usize),
}

/// Compile an OpenFlow match into (key, mask); the key comes back masked.
pub fn compile_match(m: &of::Match) -> Result<(FlowKey, FlowKey), CompileError> {
    let mut k = FlowKey::default();
    let mut mk = FlowKey::default();
    for f in &m.fields {
        match f {
            OxmField::InPort(p, None) => {
                k.in_port = *p;
                mk.in_port = u32::MAX;
            }
            OxmField::EthSrc(v, m) => {
                k.eth_src = v.0;
                mk.eth_src = m.map_or([0xff; 6], |m| m.0);
            }
            OxmField::EthDst(v, m) => {
                k.eth_dst = v.0;
                mk.eth_dst = m.map_or([0xff; 6], |m| m.0);
            }
            OxmField::EthType(v, None) => {
                k.eth_type = *v;
                mk.eth_type = u16::MAX;
            }
            OxmField::VlanVid(v, None) => {
                k.vlan_tci = if *v & VLAN_PRESENT != 0 {
                    (*v & 0x0fff) | VLAN_PRESENT
                } else {
                    0
                };
                mk.vlan_tci = 0x0fff | VLAN_PRESENT;
            }
            OxmField::IpProto(v, None) => {
                k.ip_proto = *v;
                mk.ip_proto = u8::MAX;
            }
            OxmField::Ipv4Src(v, m) | OxmField::ArpSpa(v, m) => {
                k.ipv4_src = v.octets();
                mk.ipv4_src = m.map_or([0xff; 4], |m| m.octets());
            }
            OxmField::Ipv4Dst(v, m) | OxmField::ArpTpa(v, m) => {
                k.ipv4_dst = v.octets();
                mk.ipv4_dst = m.map_or([0xff; 4], |m| m.octets());
            }
            OxmField::TcpSrc(v, None) | OxmField::UdpSrc(v, None) => {
                k.l4_src = *v;
                mk.l4_src = u16::MAX;
            }
            OxmField::TcpDst(v, None) | OxmField::UdpDst(v, None) => {
                k.l4_dst = *v;
                mk.l4_dst = u16::MAX;
            }
            OxmField::Icmpv4Type(v, None) => {
                k.l4_src = u16::from(*v);
                mk.l4_src = u16::MAX;
            }
            OxmField::Icmpv4Code(v, None) => {
                k.l4_dst = u16::from(*v);
                mk.l4_dst = u16::MAX;
            }
            OxmField::ArpOp(v, None) => {
                k.arp_op = *v;
                mk.arp_op = u16::MAX;
            }
            other => return Err(CompileError::UnsupportedField(format!("{other:?}"))),
        }
    }
    Ok((k.masked(&mk), mk))
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
                p => return Err(CompileError::UnsupportedAction(format!("output:{p:#x}"))),
            },
            of::Action::DecNwTtl => Action::dec_ttl(),
            of::Action::SetField(f) => match f {
                OxmField::EthSrc(v, None) => Action::set_eth_src(v.0),
                OxmField::EthDst(v, None) => Action::set_eth_dst(v.0),
                OxmField::Ipv4Src(v, None) => Action::set_ipv4_src(v.octets()),
                OxmField::Ipv4Dst(v, None) => Action::set_ipv4_dst(v.octets()),
                OxmField::TcpSrc(v, None) | OxmField::UdpSrc(v, None) => Action::set_l4_src(*v),
                OxmField::TcpDst(v, None) | OxmField::UdpDst(v, None) => Action::set_l4_dst(*v),
                other => {
                    return Err(CompileError::UnsupportedAction(format!(
                        "set_field {other:?}"
                    )))
                }
            },
            other => return Err(CompileError::UnsupportedAction(format!("{other:?}"))),
        });
    }
    if out.len() > MAX_ACTIONS {
        return Err(CompileError::TooManyActions(out.len()));
    }
    Ok(out)
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
}
