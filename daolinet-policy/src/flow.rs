//! The controller's own flow representation, independent of the OpenFlow
//! codec: what to match, what to do, and the messages (decisions) for each
//! datapath. The OpenFlow server translates these one-to-one into OpenFlow
//! 1.3 FLOW_MOD / PACKET_OUT messages.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::addr::{Dpid, MacAddr};

/// OFPP_IN_PORT.
pub const PORT_IN_PORT: u32 = 0xffff_fff8;
/// OFPP_LOCAL: the host stack.
pub const PORT_LOCAL: u32 = 0xffff_fffe;
/// OFPP_CONTROLLER.
pub const PORT_CONTROLLER: u32 = 0xffff_fffd;

/// Ethernet type of IPv4.
pub const ETH_TYPE_IPV4: u16 = 0x0800;
/// Ethernet type of ARP.
pub const ETH_TYPE_ARP: u16 = 0x0806;

/// Flow priorities used by the policy.
pub mod priority {
    /// Table miss: send to the controller.
    pub const MISS: u16 = 0;
    /// Uplink <-> host stack default forwarding.
    pub const DEFAULT: u16 = 10;
    /// Traffic for the physical pool that has no flow: ask the controller.
    pub const POOL_PUNT: u16 = 20;
    /// Hot-plug flows: pairs, NAT-out, short-lived drops.
    pub const HOTPLUG: u16 = 100;
    /// Firewall host ports: ask the controller for each new connection.
    pub const FIREWALL_PUNT: u16 = 200;
    /// Firewall connections.
    pub const FIREWALL_CONN: u16 = 210;
}

/// An IPv4 address with a prefix length (32 = exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ipv4Match {
    /// Address (host bits beyond `prefix` are ignored).
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Ipv4Match {
    /// An exact address.
    pub fn exact(addr: Ipv4Addr) -> Self {
        Ipv4Match { addr, prefix: 32 }
    }

    /// The netmask.
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix.min(32)))
        }
    }

    /// True if `ip` matches.
    pub fn matches(&self, ip: Ipv4Addr) -> bool {
        (u32::from(ip) ^ u32::from(self.addr)) & self.mask() == 0
    }
}

impl fmt::Display for Ipv4Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix >= 32 {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// Match fields; `None` is a wildcard. IP fields imply `eth_type` 0x0800,
/// transport ports imply `ip_proto` (the builders always set both, as
/// OpenFlow 1.3 prerequisites require).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MatchSpec {
    /// Ingress port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_port: Option<u32>,
    /// Ethernet type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eth_type: Option<u16>,
    /// Ethernet source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eth_src: Option<MacAddr>,
    /// Ethernet destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eth_dst: Option<MacAddr>,
    /// IPv4 source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_src: Option<Ipv4Match>,
    /// IPv4 destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_dst: Option<Ipv4Match>,
    /// IP protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_proto: Option<u8>,
    /// TCP/UDP source port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tp_src: Option<u16>,
    /// TCP/UDP destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tp_dst: Option<u16>,
    /// ARP opcode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arp_op: Option<u16>,
    /// ARP sender protocol address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arp_spa: Option<Ipv4Addr>,
    /// ARP target protocol address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arp_tpa: Option<Ipv4Addr>,
}

/// An action, applied in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum ActionSpec {
    /// Set the Ethernet source.
    SetEthSrc(MacAddr),
    /// Set the Ethernet destination.
    SetEthDst(MacAddr),
    /// Set the IPv4 source (checksums fixed by the switch).
    SetIpv4Src(Ipv4Addr),
    /// Set the IPv4 destination.
    SetIpv4Dst(Ipv4Addr),
    /// Set the TCP/UDP source port.
    SetTpSrc(u16),
    /// Set the TCP/UDP destination port.
    SetTpDst(u16),
    /// Decrement the IPv4 TTL.
    DecTtl,
    /// Output to a port.
    Output(u32),
    /// Output back to the ingress port.
    InPort,
    /// Output to the host stack.
    Local,
    /// Output to the controller.
    Controller,
    /// Drop (an empty action list also drops).
    Drop,
}

/// A flow entry for one datapath.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FlowSpec {
    /// Target datapath.
    pub dpid: Dpid,
    /// Table.
    pub table: u8,
    /// Priority.
    pub priority: u16,
    /// Cookie (see [`super::cookie`]).
    pub cookie: u64,
    /// Idle timeout in seconds (0 = none).
    pub idle_timeout: u16,
    /// Hard timeout in seconds (0 = none).
    pub hard_timeout: u16,
    /// Match.
    #[serde(rename = "match")]
    pub match_: MatchSpec,
    /// Actions (empty = drop).
    pub actions: Vec<ActionSpec>,
}

/// A message the controller must send to a datapath.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Decision {
    /// FLOW_MOD add (replaces an entry with the same match and priority).
    AddFlow(FlowSpec),
    /// FLOW_MOD delete (non-strict, all tables, any match) of every flow whose
    /// `cookie & cookie_mask == cookie & cookie_mask`.
    DeleteFlows {
        /// Target datapath.
        dpid: Dpid,
        /// Cookie value.
        cookie: u64,
        /// Cookie mask.
        cookie_mask: u64,
    },
    /// PACKET_OUT of a packet (the punted first packet, or an ARP reply).
    PacketOut {
        /// Target datapath.
        dpid: Dpid,
        /// Ingress port to claim (a container port, or [`PORT_CONTROLLER`]).
        in_port: u32,
        /// Actions applied by the switch.
        actions: Vec<ActionSpec>,
        /// The frame.
        data: Vec<u8>,
    },
}

impl Decision {
    /// The datapath the message is for.
    pub fn dpid(&self) -> Dpid {
        match self {
            Decision::AddFlow(f) => f.dpid,
            Decision::DeleteFlows { dpid, .. } | Decision::PacketOut { dpid, .. } => *dpid,
        }
    }
}
