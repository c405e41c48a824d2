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
    }

    #[test]
    fn masked_prefix_and_unsupported_things_are_reported() {
        let fm: of::FlowMod = "ip,nw_dst=10.1.0.0/16 actions=drop".parse().unwrap();
        let (k, m) = compile_match(&fm.match_).unwrap();
        assert_eq!(m.ipv4_dst, [255, 255, 0, 0]);
        assert_eq!(k.ipv4_dst, [10, 1, 0, 0]);
        assert!(compile_instructions(&fm.instructions).unwrap().is_empty());
        let fm: of::FlowMod = "actions=group:1".parse().unwrap();
        assert!(matches!(
            compile_instructions(&fm.instructions),
            Err(CompileError::UnsupportedAction(_))
        ));
    }
}
