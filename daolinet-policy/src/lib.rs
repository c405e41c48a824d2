//! DaoliNet policy as pure functions: model + event -> OpenFlow decisions.
//!
//! This crate is the controller's pure core; it has no I/O dependencies
//! (no tokio, axum, redb), so Cargo, not convention, keeps it pure.
//!
//! - [`model`]: hosts, networks, containers, groups, pair policies, firewalls;
//!   validated mutations that return the [`model::Change`]s they made.
//! - [`addr`]: MAC addresses, IPv4 prefixes, datapath ids.
//! - [`ipam`]: logical and physical address allocation.
//! - [`fakeswitch`]: a fake network executing the produced flows, for tests.
//!
//! - [`handle_packet_in`]: a punted packet (ARP, first packet of a flow,
//!   firewall connection, NAT return) -> flows + PACKET_OUT.
//! - [`handle_punted_denial`]: a packet a denial punted (on switches that
//!   cache flows past a BARRIER, denials punt through a meter) -> decided
//!   again; still denied, nothing sent; allowed now, delivered.
//! - [`handle_model_change`]: an accepted API mutation -> deletion of exactly
//!   the flows it invalidates (by cookie) and the proactive flows it adds.
//! - [`handle_switch_connected`], [`handle_host_gone`]: datapath life cycle.
//! - [`trace::trace`]: would a container reach a destination, and how
//!   (verdict and why, each host's flow and rewrites, the end);
//!   [`live`]: what a real probe did, judged from the switches' counters.
//! - [`reconcile`]: which flows a switch holds are still valid (kept), which
//!   are stale (deleted one by one), which base flows it lacks (added).
//!
//! No I/O, no clocks: the caller measures latency and sends the messages.
//!
//! # Choices
//! - **ARP proxy**: the gateway MAC ([`Config::gateway_mac`]) answers ARP
//!   requests from a registered container (sender IP and MAC must be its own)
//!   for its gateway IP and for every IP the container may reach (a container
//!   it may talk to, or an outside address when NAT-out is allowed). Requests
//!   for anything else get no answer, so isolation is visible as "host
//!   unreachable" in the container, and a short drop flow for that target.
//! - **Same host / cross host**: the pair flows of docs/architecture.md
//!   ("The flows on the wire"). Cross-host flows decrement the TTL once on
//!   each host (two virtual routers); an expiring packet is answered with
//!   ICMP time exceeded from the router it expired at (the sender's
//!   gateway, or the destination host's underlay IP); see `hops`. Same-host
//!   flows do not decrement it (one hop).
//!   Decisions are ordered so that flows on the *remote* datapath come
//!   first, then the local ones, then the PACKET_OUT: the OpenFlow server
//!   should send a BARRIER to the remote datapath before the PACKET_OUT.
//! - **NAT-out**: a destination outside every known network leaves through
//!   the host stack. Flow: `in_port=A, ip, src=a, dst=d -> eth_dst=<host
//!   LOCAL MAC>, ipv4_src=pa, output:LOCAL`; return flow: `in_port=LOCAL,
//!   ip, src=d, dst=pa -> eth_src=gw, eth_dst=ma, ipv4_dst=a, output:A`.
//!   Using the physical IP (unique) rather than the logical one (which may
//!   overlap between tenants) keeps replies unambiguous. The host routes
//!   the physical pool to its LOCAL port and masquerades it: the agent and
//!   `daolictl host join-ovs` set that up (crate `daolinet-natout`).
//! - **Firewall ingress**: each rule installs a permanent flow on the
//!   container's host sending `in_port=uplink, ip_proto, dst=<host IP>,
//!   tp_dst=<host port>` to the controller; each new connection then gets a
//!   pair of flows (DNAT to `c:port`, and the reverse SNAT to `<host
//!   IP>:<host port>` towards the Ethernet source of the first packet).
//! - **Denials** install a drop flow with a hard timeout
//!   ([`Config::deny_timeout`]) matching the punted traffic, so a scanning
//!   container cannot flood the controller. Its cookie names the pair when
//!   the destination IP names one container, otherwise only the source
//!   (overlapping tenants); a change of any pair of a container deletes
//!   both kinds, so the next packet meets the new policy at once.
//! - **PACKET_OUT** sends the punted frame with its checksums completed
//!   ([`with_checksums`]): a switch may punt a frame carrying only the
//!   pseudo-header sum that the NIC was to complete (Open vSwitch with
//!   userspace TSO does, for TCP).
//! - **Packets to the gateway IP** are denied (reason `gateway`): the
//!   gateway is a MAC, not a host.

pub mod addr;
mod change;
pub mod cookie;
pub mod fakeswitch;
mod flow;
mod hops;
pub mod ipam;
pub mod live;
pub mod model;
mod packet;
mod reconcile;
mod rules;
pub mod trace;
mod view;

#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

pub use change::{handle_host_gone, handle_model_change, handle_switch_connected};
pub use flow::{
    priority, ActionSpec, Decision, FlowSpec, Ipv4Match, MatchSpec, ETH_TYPE_ARP, ETH_TYPE_IPV4,
    PORT_CONTROLLER, PORT_IN_PORT, PORT_LOCAL,
};
pub use packet::{with_checksums, Arp, Ipv4, Packet, PacketError, L3};
pub use reconcile::{reconcile, Reconciled};
pub use view::{PairState, Resolution, Snapshot};

use crate::addr::{Dpid, Ipv4Net, MacAddr};

/// Policy settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// The MAC that answers every ARP request from containers.
    pub gateway_mac: MacAddr,
    /// Idle timeout of hot-plug flows, seconds.
    pub idle_timeout: u16,
    /// Hard timeout of drop flows installed after a denial, seconds.
    pub deny_timeout: u16,
    /// OpenFlow table used.
    pub table: u8,
    /// The global pool of physical IPs.
    pub physical_pool: Ipv4Net,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            gateway_mac: MacAddr([0x02, 0xda, 0x00, 0x00, 0x00, 0x01]),
            idle_timeout: 10,
            deny_timeout: 3,
            table: 0,
            physical_pool: Ipv4Net::new_truncating(Ipv4Addr::new(172, 31, 0, 0), 16),
        }
    }
}

/// Why a packet was denied (also the `reason` label of the denial metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// The ingress port is not a registered container port.
    UnknownPort,
    /// Source MAC or IP is not the container's own.
    Spoofed,
    /// Different networks and no group or pair policy joins them.
    Isolated,
    /// A pair policy disconnects the two containers.
    PairDisconnected,
    /// Several reachable containers have the destination IP.
    Ambiguous,
    /// No container has the destination IP inside a known network.
    UnknownDestination,
    /// The destination is outside and the network has NAT-out disabled.
    NatDisabled,
    /// The destination is the gateway address.
    Gateway,
    /// A protocol the controller does not forward (IPv6, multicast ...).
    Unsupported,
}

impl DenyReason {
    /// Every reason.
    pub const ALL: [DenyReason; 9] = [
        DenyReason::UnknownPort,
        DenyReason::Spoofed,
        DenyReason::Isolated,
        DenyReason::PairDisconnected,
        DenyReason::Ambiguous,
        DenyReason::UnknownDestination,
        DenyReason::NatDisabled,
        DenyReason::Gateway,
        DenyReason::Unsupported,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::UnknownPort => "unknown_port",
            DenyReason::Spoofed => "spoofed",
            DenyReason::Isolated => "isolated",
            DenyReason::PairDisconnected => "pair_disconnected",
            DenyReason::Ambiguous => "ambiguous",
            DenyReason::UnknownDestination => "unknown_destination",
            DenyReason::NatDisabled => "nat_disabled",
            DenyReason::Gateway => "gateway",
            DenyReason::Unsupported => "unsupported",
        }
    }
}

/// What the policy did with a PACKET_IN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Answered an ARP request.
    ArpReply,
    /// Installed a same-host pair.
    SameHost,
    /// Installed a cross-host pair.
    CrossHost,
    /// Installed NAT-out flows.
    NatOut,
    /// Installed a firewall connection.
    Firewall,
    /// A packet's TTL expired at a virtual router: answered with ICMP time
    /// exceeded (see the `hops` module).
    TtlExceeded,
    /// Denied.
    Denied(DenyReason),
    /// Not for the policy (unparsable, unknown datapath, stray traffic).
    Ignored,
}

/// The result of [`handle_packet_in`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Messages to send, in order.
    pub decisions: Vec<Decision>,
    /// What happened.
    pub verdict: Verdict,
}

/// Decides what to do with a packet punted by datapath `dpid` from `in_port`.
pub fn handle_packet_in(
    snap: &Snapshot,
    cfg: &Config,
    dpid: Dpid,
    in_port: u32,
    data: &[u8],
) -> Outcome {
    rules::packet_in(snap, cfg, dpid, in_port, data)
}

/// Decides a packet that datapath `dpid` punted through one of the
/// controller's denials, the flow with cookie `cookie`.
///
/// A denial is a drop flow; on a switch whose datapath caches flows past a
/// BARRIER (Open vSwitch: a megaflow made from a deleted drop keeps
/// dropping until a revalidator has been over it) the OpenFlow layer
/// writes it as a rate-limited punt instead, so that a cached copy
/// outliving a policy change (`connect`, a group join) cannot eat the
/// first allowed packet. The packet is decided with the policy of now, as
/// [`handle_packet_in`] does, except that:
/// - still denied (or ignored), nothing is sent: no new drop flow (the one
///   that punted it keeps its hard timeout, not renewed by each packet),
///   no PACKET_OUT; the verdict counts it. A denied packet never loops;
/// - allowed now, the denial that punted it is deleted first (the policy
///   no longer backs it; normally the change already deleted it and this
///   is a no-op), then the flows and the PACKET_OUT of
///   [`handle_packet_in`] deliver it.
pub fn handle_punted_denial(
    snap: &Snapshot,
    cfg: &Config,
    dpid: Dpid,
    in_port: u32,
    data: &[u8],
    cookie: u64,
) -> Outcome {
    let mut out = rules::packet_in(snap, cfg, dpid, in_port, data);
    match out.verdict {
        Verdict::Denied(_) | Verdict::Ignored => out.decisions.clear(),
        _ => out.decisions.insert(
            0,
            Decision::DeleteFlows {
                dpid,
                cookie,
                cookie_mask: u64::MAX,
            },
        ),
    }
    out
}
