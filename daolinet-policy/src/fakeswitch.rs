//! A Faucet-style fake network for tests: OpenFlow-like tables that execute
//! [`FlowSpec`]s on packets, hosts joined by an underlay, and a loop that
//! sends table misses to [`super::handle_packet_in`] and applies its
//! decisions. It proves what the produced flows *do*, not what they look like.

use std::collections::BTreeMap;

use crate::addr::Dpid;

use super::cookie;
use super::flow::{ActionSpec, Decision, FlowSpec, MatchSpec, PORT_CONTROLLER, PORT_LOCAL};
use super::packet::{Packet, L3};
use super::view::Snapshot;
use super::{handle_packet_in, Config, Verdict};

/// One datapath's flow table.
#[derive(Debug, Clone, Default)]
pub struct FakeSwitch {
    /// Installed flows, in installation order.
    pub flows: Vec<FlowSpec>,
}

fn field_ok<T: PartialEq>(want: &Option<T>, have: Option<T>) -> bool {
    match want {
        None => true,
        Some(w) => have.as_ref() == Some(w),
    }
}

/// True if `m` matches `pkt` arriving on `in_port`.
pub fn matches(m: &MatchSpec, in_port: u32, pkt: &Packet) -> bool {
    let ip = pkt.ipv4();
    let arp = match &pkt.l3 {
        L3::Arp(a) => Some(a),
        _ => None,
    };
    field_ok(&m.in_port, Some(in_port))
        && field_ok(&m.eth_type, Some(pkt.eth_type))
        && field_ok(&m.eth_src, Some(pkt.eth_src))
        && field_ok(&m.eth_dst, Some(pkt.eth_dst))
        && m.ipv4_src
            .is_none_or(|w| ip.is_some_and(|i| w.matches(i.src)))
        && m.ipv4_dst
            .is_none_or(|w| ip.is_some_and(|i| w.matches(i.dst)))
        && field_ok(&m.ip_proto, ip.map(|i| i.proto))
        && field_ok(&m.tp_src, ip.and_then(|i| i.ports).map(|p| p.0))
        && field_ok(&m.tp_dst, ip.and_then(|i| i.ports).map(|p| p.1))
        && field_ok(&m.arp_op, arp.map(|a| a.op))
        && field_ok(&m.arp_spa, arp.map(|a| a.spa))
        && field_ok(&m.arp_tpa, arp.map(|a| a.tpa))
}

impl FakeSwitch {
    /// FLOW_MOD add: replaces a flow with the same match and priority.
    pub fn add(&mut self, f: FlowSpec) {
        self.flows
            .retain(|o| !(o.priority == f.priority && o.match_ == f.match_ && o.table == f.table));
        self.flows.push(f);
    }

    /// FLOW_MOD delete by cookie/mask; returns the removed flows.
    pub fn delete(&mut self, c: u64, mask: u64) -> Vec<FlowSpec> {
        let (gone, keep) = self
            .flows
            .drain(..)
            .partition(|f| cookie::matches(f.cookie, c, mask));
        self.flows = keep;
        gone
    }

    /// The highest-priority matching flow (the first installed among equals).
    pub fn lookup(&self, in_port: u32, pkt: &Packet) -> Option<&FlowSpec> {
        let mut best: Option<&FlowSpec> = None;
        for f in &self.flows {
            if matches(&f.match_, in_port, pkt) && best.is_none_or(|b| f.priority > b.priority) {
                best = Some(f);
            }
        }
        best
    }
}

/// Where a packet ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Delivered to a container port (container id).
    Container(String, Packet),
    /// Delivered to a host's stack.
    Local(Dpid, Packet),
    /// Sent on an uplink to a MAC no host has.
    Underlay(Dpid, Packet),
}

/// Applies actions to a packet; returns (port, packet) outputs.
pub fn apply(actions: &[ActionSpec], in_port: u32, pkt: &Packet) -> Vec<(u32, Packet)> {
    let mut p = pkt.clone();
    let mut out = Vec::new();
    for a in actions {
        match *a {
            ActionSpec::SetEthSrc(m) => p.eth_src = m,
            ActionSpec::SetEthDst(m) => p.eth_dst = m,
            ActionSpec::SetIpv4Src(ip) => {
                if let L3::Ipv4(i) = &mut p.l3 {
                    i.src = ip;
                }
            }
            ActionSpec::SetIpv4Dst(ip) => {
                if let L3::Ipv4(i) = &mut p.l3 {
                    i.dst = ip;
                }
            }
            ActionSpec::SetTpSrc(port) => {
                if let L3::Ipv4(i) = &mut p.l3 {
                    if let Some(ports) = &mut i.ports {
                        ports.0 = port;
                    }
                }
            }
            ActionSpec::SetTpDst(port) => {
                if let L3::Ipv4(i) = &mut p.l3 {
                    if let Some(ports) = &mut i.ports {
                        ports.1 = port;
                    }
                }
            }
            ActionSpec::DecTtl => {
                if let L3::Ipv4(i) = &mut p.l3 {
                    i.ttl = i.ttl.saturating_sub(1);
                }
            }
            ActionSpec::Output(port) => out.push((port, p.clone())),
            ActionSpec::InPort => out.push((in_port, p.clone())),
            ActionSpec::Local => out.push((PORT_LOCAL, p.clone())),
            ActionSpec::Controller => out.push((PORT_CONTROLLER, p.clone())),
            ActionSpec::Drop => return vec![],
        }
    }
    out
}

/// Several fake switches, the underlay between them, and the controller.
#[derive(Debug, Clone)]
pub struct FakeNet {
    /// Policy configuration.
    pub cfg: Config,
    /// The model as the controller sees it.
    pub snap: Snapshot,
    /// Tables by datapath.
    pub switches: BTreeMap<Dpid, FakeSwitch>,
    /// Every PACKET_IN verdict so far.
    pub verdicts: Vec<Verdict>,
}

impl FakeNet {
    /// A network with one empty switch per host.
    pub fn new(snap: Snapshot, cfg: Config) -> Self {
        let switches = snap
            .model
            .hosts
            .values()
            .map(|h| (h.dpid, FakeSwitch::default()))
            .collect();
        FakeNet {
            cfg,
            snap,
            switches,
            verdicts: vec![],
        }
    }

    /// Applies decisions; PACKET_OUTs are executed and their deliveries returned.
    pub fn apply_decisions(&mut self, ds: Vec<Decision>) -> Vec<Delivery> {
        let mut out = Vec::new();
        for d in ds {
            match d {
                Decision::AddFlow(f) => self.switches.entry(f.dpid).or_default().add(f),
                Decision::DeleteFlows {
                    dpid,
                    cookie,
                    cookie_mask,
                } => {
                    if let Some(s) = self.switches.get_mut(&dpid) {
                        s.delete(cookie, cookie_mask);
                    }
                }
                Decision::PacketOut {
                    dpid,
                    in_port,
                    actions,
                    data,
                } => {
                    if let Ok(p) = Packet::parse(&data) {
                        for (port, q) in apply(&actions, in_port, &p) {
                            out.extend(self.emit(dpid, port, q, 0));
                        }
                    }
                }
            }
        }
        out
    }

    /// A container sends a packet: returns where it (and its copies) ended.
    pub fn send_from(&mut self, container: &str, pkt: Packet) -> Vec<Delivery> {
        let Some(c) = self.snap.model.containers.get(container).cloned() else {
            return vec![];
        };
        let Some(h) = self.snap.host_of(&c).cloned() else {
            return vec![];
        };
        self.ingress(h.dpid, c.port, pkt, 0)
    }

    /// A packet enters datapath `dpid` on `in_port`.
    pub fn ingress(&mut self, dpid: Dpid, in_port: u32, pkt: Packet, depth: u32) -> Vec<Delivery> {
        if depth > 8 {
            return vec![];
        }
        let hit = self
            .switches
            .get(&dpid)
            .and_then(|s| s.lookup(in_port, &pkt))
            .map(|f| f.actions.clone());
        let outputs = match hit {
            Some(actions) => apply(&actions, in_port, &pkt),
            None => vec![(PORT_CONTROLLER, pkt)],
        };
        let mut out = Vec::new();
        for (port, p) in outputs {
            if port == PORT_CONTROLLER {
                let o = handle_packet_in(&self.snap, &self.cfg, dpid, in_port, &p.emit());
                self.verdicts.push(o.verdict);
                out.extend(self.apply_decisions(o.decisions));
            } else {
                out.extend(self.emit(dpid, port, p, depth));
            }
        }
        out
    }

    fn emit(&mut self, dpid: Dpid, port: u32, p: Packet, depth: u32) -> Vec<Delivery> {
        let Some(h) = self.snap.host_by_dpid(dpid).cloned() else {
            return vec![];
        };
        if port == PORT_LOCAL {
            return vec![Delivery::Local(dpid, p)];
        }
        if port == h.uplink_port {
            let next = self
                .snap
                .model
                .hosts
                .values()
                .find(|o| o.mac == p.eth_dst)
                .cloned();
            return match next {
                Some(n) => self.ingress(n.dpid, n.uplink_port, p, depth + 1),
                None => vec![Delivery::Underlay(dpid, p)],
            };
        }
        match self.snap.container_at(&h.name, port) {
            Some(c) => vec![Delivery::Container(c.id.clone(), p)],
            None => vec![],
        }
    }

    /// Number of flows installed on all switches.
    pub fn flow_count(&self) -> usize {
        self.switches.values().map(|s| s.flows.len()).sum()
    }
}
