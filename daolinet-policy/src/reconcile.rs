//! Reconciliation: which of the flows a switch holds are still what the
//! policy would install, so that a controller that (re)connects to a
//! switch, or becomes the master of one, deletes only the stale flows and
//! keeps the valid ones forwarding (no traffic lost to a restart or a
//! failover).
//!
//! A flow is **valid** when the policy, asked now, would install exactly
//! it (same table, priority, cookie, match and actions; timeouts aside,
//! which only decide when it expires):
//! - base flows and firewall punt flows: the set
//!   [`handle_switch_connected`] installs;
//! - hot-plug flows (pairs, NAT-out, firewall connections): the policy
//!   decides again on a packet the flow matches, rebuilt from the flow
//!   (for a firewall connection's return flow, from the client packet its
//!   actions answer) and the flow must be among the decisions;
//! - drop flows after a denial: kept (they carry a hard timeout of a few
//!   seconds, [`Config::deny_timeout`], and go by themselves) when the
//!   container they name still exists, or, for the drop of a port without
//!   a container, while that port still has none.
//!
//! Everything else (flows of other controllers, standalone-mode learning
//! flows, flows of containers that left or moved, pairs no longer allowed)
//! is stale and deleted one by one (strict deletes), never by wildcard.

use std::net::Ipv4Addr;

use crate::addr::{Dpid, MacAddr};
use crate::cookie::{self, Kind};
use crate::flow::{ActionSpec, Decision, FlowSpec, MatchSpec, ETH_TYPE_IPV4};
use crate::packet::{Ipv4, Packet, L3};
use crate::{handle_packet_in, handle_switch_connected, Config, Snapshot};

/// The verdict on a switch's flows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Indexes (into the installed flows) of the flows to keep.
    pub keep: Vec<usize>,
    /// Indexes of the flows to delete.
    pub delete: Vec<usize>,
    /// Flows the switch lacks (base and firewall punt flows).
    pub add: Vec<FlowSpec>,
}

/// Decides, for datapath `dpid`, which of its `installed` flows to keep
/// and delete and which base flows to add. `None` stands for a flow the
/// controller cannot even read as one of its own (unknown match fields or
/// actions): stale. A datapath that is not a registered host gets nothing
/// (as on connection: no flows until it is registered).
pub fn reconcile(
    snap: &Snapshot,
    cfg: &Config,
    dpid: Dpid,
    installed: &[Option<FlowSpec>],
) -> Reconciled {
    let mut out = Reconciled::default();
    if snap.host_by_dpid(dpid).is_none() {
        return out;
    }
    let base: Vec<FlowSpec> = handle_switch_connected(snap, cfg, dpid)
        .into_iter()
        .filter_map(|d| match d {
            Decision::AddFlow(f) => Some(f),
            _ => None,
        })
        .collect();
    let mut present = vec![false; base.len()];
    for (i, f) in installed.iter().enumerate() {
        let valid = match f {
            Some(f) if f.dpid == dpid => match base.iter().position(|b| same_flow(b, f)) {
                Some(j) => {
                    present[j] = true;
                    true
                }
                None => hot_plug_valid(snap, cfg, f),
            },
            _ => false,
        };
        if valid {
            out.keep.push(i);
        } else {
            out.delete.push(i);
        }
    }
    out.add = base
        .into_iter()
        .zip(present)
        .filter(|(_, p)| !p)
        .map(|(b, _)| b)
        .collect();
    out
}

/// Same flow entry doing the same thing (timeouts aside).
fn same_flow(a: &FlowSpec, b: &FlowSpec) -> bool {
    a.dpid == b.dpid
        && a.table == b.table
        && a.priority == b.priority
        && a.cookie == b.cookie
        && a.match_ == b.match_
        && a.actions == b.actions
}

fn hot_plug_valid(snap: &Snapshot, cfg: &Config, f: &FlowSpec) -> bool {
    if f.table != cfg.table {
        return false;
    }
    match cookie::decode(f.cookie) {
        Some((Kind::Deny, lo, hi)) => {
            // Short-lived by construction; kept while what it names exists.
            f.hard_timeout > 0
                && f.hard_timeout <= cfg.deny_timeout
                && [lo, hi]
                    .into_iter()
                    .filter(|id| *id != 0)
                    .all(|id| snap.container_by_cookie(id).is_some())
        }
        Some((Kind::PortDeny, _, _)) => {
            // Short-lived too; kept while no container is on the port.
            f.hard_timeout > 0
                && f.hard_timeout <= cfg.deny_timeout
                && snap.host_by_dpid(f.dpid).is_some_and(|h| {
                    f.match_
                        .in_port
                        .is_some_and(|p| snap.container_at(&h.name, p).is_none())
                })
        }
        Some((Kind::Pair | Kind::NatOut | Kind::Firewall, _, _)) => candidates(snap, cfg, f)
            .into_iter()
            .any(|(in_port, frame)| {
                handle_packet_in(snap, cfg, f.dpid, in_port, &frame)
                    .decisions
                    .iter()
                    .any(|d| matches!(d, Decision::AddFlow(g) if same_flow(g, f)))
            }),
        _ => false,
    }
}

/// Packets (ingress port, frame) the flow's decision could have been made
/// on.
fn candidates(snap: &Snapshot, cfg: &Config, f: &FlowSpec) -> Vec<(u32, Vec<u8>)> {
    let m = &f.match_;
    let (Some(in_port), Some(src), Some(dst)) = (m.in_port, exact(m, true), exact(m, false)) else {
        return vec![];
    };
    if m.eth_type != Some(ETH_TYPE_IPV4) || m.eth_dst.is_some() {
        return vec![];
    }
    let Some(host) = snap.host_by_dpid(f.dpid) else {
        return vec![];
    };
    let proto = m.ip_proto.unwrap_or(17);
    let ports = match (m.tp_src, m.tp_dst) {
        (Some(s), Some(d)) => Some((s, d)),
        (None, None) => (proto == 6 || proto == 17).then_some((1, 1)),
        _ => return vec![],
    };
    // The sender's MAC: the one the flow matches (a container's flows match
    // its own), else a container's own at its port, anything else at the
    // uplink and LOCAL ports (the policy does not read it there).
    let sender = m.eth_src.unwrap_or_else(|| {
        snap.container_at(&host.name, in_port)
            .map_or(MacAddr([0x02, 0, 0, 0, 0, 0x01]), |c| c.mac)
    });
    let frame = |eth_src: MacAddr, src: Ipv4Addr, dst: Ipv4Addr, ports| {
        Packet {
            eth_dst: cfg.gateway_mac,
            eth_src,
            eth_type: ETH_TYPE_IPV4,
            l3: L3::Ipv4(Ipv4 {
                src,
                dst,
                proto,
                ttl: 64,
                ports,
                payload: vec![],
            }),
        }
        .emit()
    };
    let mut out = vec![(in_port, frame(sender, src, dst, ports))];
    // A firewall connection's return flow (container -> client, SNAT to the
    // host's address and port, towards the client packet's Ethernet
    // source) is decided on the client's packet from the uplink.
    if f.priority == crate::priority::FIREWALL_CONN && in_port != host.uplink_port {
        let mut eth = None;
        let mut hport = None;
        for a in &f.actions {
            match a {
                ActionSpec::SetEthDst(mac) => eth = Some(*mac),
                ActionSpec::SetTpSrc(p) => hport = Some(*p),
                _ => {}
            }
        }
        if let (Some(eth), Some(hport), Some((_, client_port))) = (eth, hport, ports) {
            out.push((
                host.uplink_port,
                frame(eth, dst, host.ip, Some((client_port, hport))),
            ));
        }
    }
    out
}

/// The exact IPv4 source (or destination) of a match.
fn exact(m: &MatchSpec, src: bool) -> Option<Ipv4Addr> {
    let a = if src { m.ipv4_src } else { m.ipv4_dst }?;
    (a.prefix == 32).then_some(a.addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Ipv4Net;
    use crate::model::{ContainerSpec, Host, Model, NetworkSpec, PairAction};

    fn host(i: u8) -> Host {
        Host {
            name: format!("h{i}"),
            dpid: Dpid(u64::from(i)),
            ip: Ipv4Addr::new(192, 168, 0, i),
            mac: MacAddr([2, 0, 0, 0, 0, i]),
            uplink_port: 1,
            local_mac: Some(MacAddr([2, 0, 0, 0, 1, i])),
        }
    }

    fn pool() -> Ipv4Net {
        "172.31.0.0/16".parse().unwrap()
    }

    /// h1: a (port 10), d (port 12) in n1, c (port 11) in n2; h2: b (port
    /// 10) in n1; a firewall on a (host 8080 -> 80/tcp).
    fn sample() -> Model {
        let mut m = Model::default();
        m.add_host(host(1)).unwrap();
        m.add_host(host(2)).unwrap();
        for (n, subnet) in [("n1", "10.0.0.0/24"), ("n2", "10.0.1.0/24")] {
            m.add_network(NetworkSpec {
                name: n.into(),
                subnet: subnet.parse().unwrap(),
                gateway: None,
                tenant: None,
                nat_out: None,
            })
            .unwrap();
        }
        for (id, net, h, port) in [
            ("a", "n1", 1, 10),
            ("b", "n1", 2, 10),
            ("c", "n2", 1, 11),
            ("d", "n1", 1, 12),
        ] {
            m.add_container(
                ContainerSpec {
                    id: id.into(),
                    name: None,
                    network: net.into(),
                    ip: None,
                    mac: None,
                    host: format!("h{h}"),
                    port,
                },
                pool(),
            )
            .unwrap();
        }
        m.create_firewall("fw", "a", vec!["8080:80".parse().unwrap()])
            .unwrap();
        m
    }

    fn frame(
        eth_src: MacAddr,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        ports: (u16, u16),
    ) -> Vec<u8> {
        Packet {
            eth_dst: Config::default().gateway_mac,
            eth_src,
            eth_type: ETH_TYPE_IPV4,
            l3: L3::Ipv4(Ipv4 {
                src,
                dst,
                proto,
                ttl: 64,
                ports: Some(ports),
                payload: b"x".to_vec(),
            }),
        }
        .emit()
    }

    /// Every flow the policy installs for the sample's traffic: base flows
    /// of both hosts, a cross-host pair, a same-host pair, NAT-out, a
    /// firewall connection and a denial.
    fn installed(snap: &Snapshot, cfg: &Config) -> Vec<FlowSpec> {
        let m = &snap.model;
        let (a, b, c, d) = (
            &m.containers["a"],
            &m.containers["b"],
            &m.containers["c"],
            &m.containers["d"],
        );
        let mut ds = handle_switch_connected(snap, cfg, Dpid(1));
        ds.extend(handle_switch_connected(snap, cfg, Dpid(2)));
        let client = MacAddr([2, 9, 9, 9, 9, 9]);
        for (dpid, port, f, want) in [
            (1, a.port, frame(a.mac, a.ip, b.ip, 17, (5, 53)), "cross"),
            (1, a.port, frame(a.mac, a.ip, d.ip, 6, (5, 80)), "same"),
            (
                1,
                a.port,
                frame(a.mac, a.ip, Ipv4Addr::new(8, 8, 8, 8), 17, (5, 53)),
                "nat",
            ),
            (
                1,
                1,
                frame(
                    client,
                    Ipv4Addr::new(192, 168, 9, 9),
                    host(1).ip,
                    6,
                    (4000, 8080),
                ),
                "fw",
            ),
            (1, a.port, frame(a.mac, a.ip, c.ip, 17, (5, 53)), "deny"),
        ] {
            let o = handle_packet_in(snap, cfg, Dpid(dpid), port, &f);
            let flows = o
                .decisions
                .iter()
                .filter(|d| matches!(d, Decision::AddFlow(_)))
                .count();
            assert!(flows > 0, "{want}: {:?}", o.verdict);
            ds.extend(o.decisions);
        }
        ds.into_iter()
            .filter_map(|d| match d {
                Decision::AddFlow(f) => Some(f),
                _ => None,
            })
            .collect()
    }

    fn on(flows: &[FlowSpec], dpid: u64) -> Vec<Option<FlowSpec>> {
        flows
            .iter()
            .filter(|f| f.dpid == Dpid(dpid))
            .cloned()
            .map(Some)
            .collect()
    }

    #[test]
    fn what_the_policy_installed_is_all_kept() {
        let cfg = Config::default();
        let snap = Snapshot::new(sample());
        let all = installed(&snap, &cfg);
        for dpid in [1, 2] {
            let flows = on(&all, dpid);
            let r = reconcile(&snap, &cfg, Dpid(dpid), &flows);
            let stale: Vec<_> = r.delete.iter().map(|&i| &flows[i]).collect();
            assert!(stale.is_empty(), "dpid {dpid}: {stale:#?}");
            assert_eq!(r.add, vec![], "dpid {dpid}");
            assert_eq!(r.keep.len(), flows.len());
        }
        // The hot-plug kinds are all there, so each was judged valid.
        let kinds: std::collections::BTreeSet<_> = all
            .iter()
            .filter_map(|f| cookie::decode(f.cookie).map(|k| k.0))
            .collect();
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            vec![
                Kind::Base,
                Kind::Pair,
                Kind::Deny,
                Kind::NatOut,
                Kind::Firewall
            ]
        );
    }

    #[test]
    fn stale_flows_go_and_missing_base_flows_come_back() {
        let cfg = Config::default();
        let snap = Snapshot::new(sample());
        let all = installed(&snap, &cfg);
        let mut flows = on(&all, 1);
        // The table-miss flow is missing.
        let miss = flows
            .iter()
            .position(|f| f.as_ref().is_some_and(|f| f.priority == 0))
            .unwrap();
        let miss = flows.remove(miss).unwrap();
        // A flow the controller cannot read, a standalone learning flow, a
        // pair flow whose action was changed, a flow of another datapath.
        flows.push(None);
        let mut learned = miss.clone();
        learned.cookie = 0xda01_1000_0000_0001;
        learned.priority = 5;
        flows.push(Some(learned));
        let mut tampered = all
            .iter()
            .find(|f| {
                f.dpid == Dpid(1) && cookie::decode(f.cookie).is_some_and(|k| k.0 == Kind::Pair)
            })
            .unwrap()
            .clone();
        tampered.actions.push(ActionSpec::Output(99));
        flows.push(Some(tampered));
        let mut foreign = miss.clone();
        foreign.dpid = Dpid(2);
        flows.push(Some(foreign));
        let n = flows.len();
        let r = reconcile(&snap, &cfg, Dpid(1), &flows);
        assert_eq!(r.delete, vec![n - 4, n - 3, n - 2, n - 1]);
        assert_eq!(r.add, vec![miss]);
        // An unregistered datapath: nothing.
        assert_eq!(
            reconcile(&snap, &cfg, Dpid(9), &flows),
            Reconciled::default()
        );
    }

    #[test]
    fn flows_a_model_change_invalidated_go_the_rest_stays() {
        let cfg = Config::default();
        let before = Snapshot::new(sample());
        let all = installed(&before, &cfg);
        let mut m = sample();
        m.remove_container("d").unwrap();
        m.set_pair("a", "b", PairAction::Disconnect).unwrap();
        m.delete_firewall("fw").unwrap();
        let after = Snapshot::new(m);
        let (a, b, d) = {
            let m = &before.model;
            (
                m.containers["a"].cookie_id,
                m.containers["b"].cookie_id,
                m.containers["d"].cookie_id,
            )
        };
        for dpid in [1, 2] {
            let flows = on(&all, dpid);
            let r = reconcile(&after, &cfg, Dpid(dpid), &flows);
            for (i, f) in flows.iter().enumerate() {
                let f = f.as_ref().unwrap();
                let (kind, lo, hi) = cookie::decode(f.cookie).unwrap();
                let gone = (kind == Kind::Pair
                    && ([lo, hi] == [a.min(b), a.max(b)] || [lo, hi].contains(&d)))
                    || kind == Kind::Firewall;
                assert_eq!(r.delete.contains(&i), gone, "dpid {dpid}: {f:?}");
            }
            assert_eq!(r.add, vec![]);
        }
    }
}
