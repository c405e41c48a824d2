//! Decisions for model changes and datapath life cycle.

use std::collections::{BTreeMap, BTreeSet};

use crate::addr::Dpid;
use crate::model::{Change, Container, Kind as ObjKind};

use super::cookie::{self, Kind, HI_MASK, KIND_MASK, LO_MASK, PAIR_MASK};
use super::flow::{
    priority, ActionSpec, Decision, FlowSpec, Ipv4Match, MatchSpec, ETH_TYPE_IPV4, PORT_LOCAL,
};
use super::rules::firewall_punts;
use super::view::Snapshot;
use super::Config;

fn delete(dpid: Dpid, cookie: u64, cookie_mask: u64) -> Decision {
    Decision::DeleteFlows {
        dpid,
        cookie,
        cookie_mask,
    }
}

/// Deletes every flow of container `x` on every datapath of `dpids`.
fn delete_container(out: &mut Vec<Decision>, dpids: &BTreeSet<Dpid>, x: &Container) {
    for d in dpids {
        out.push(delete(
            *d,
            cookie::make(Kind::Base, x.cookie_id, 0),
            LO_MASK,
        ));
        out.push(delete(
            *d,
            cookie::make(Kind::Base, 0, x.cookie_id),
            HI_MASK,
        ));
    }
}

fn firewall_flows(snap: &Snapshot, cfg: &Config, x: &Container) -> Vec<Decision> {
    let Some(h) = snap.host_of(x) else {
        return vec![];
    };
    snap.model
        .firewalls
        .values()
        .filter(|f| f.container == x.id)
        .flat_map(|f| firewall_punts(cfg, x, h, &f.rules))
        .map(Decision::AddFlow)
        .collect()
}

/// The decisions that follow an accepted mutation: `old` and `new` are the
/// model before and after, `changes` what the mutation changed.
///
/// Exactly the flows that became wrong are deleted:
/// - every flow of a container that was removed, moved, or whose addresses
///   or host changed (on every datapath);
/// - the flows (allow and drop) of each pair of containers whose
///   [`super::PairState`] changed, on the pair's datapaths, and the drops
///   of either container that name no pair (with overlapping tenants a
///   destination IP may name several containers, so such a drop is keyed
///   by its source alone: it may drop what the change now allows);
/// - the firewall flows of a container whose firewalls changed (the
///   permanent punt flows are then re-added);
/// - the drop of the port a container was registered on or moved to (made
///   while no container was registered there);
/// - the NAT-out flows of a network's containers when its NAT-out setting
///   changes, and every NAT-out flow when a network is created or its subnet
///   changes (an outside address may have become a network address).
pub fn handle_model_change(
    old: &Snapshot,
    new: &Snapshot,
    cfg: &Config,
    changes: &[Change],
) -> Vec<Decision> {
    let om = &old.model;
    let nm = &new.model;
    let all_dpids: BTreeSet<Dpid> = om
        .hosts
        .values()
        .chain(nm.hosts.values())
        .map(|h| h.dpid)
        .collect();
    let mut out = Vec::new();

    // Containers whose every flow is invalid.
    let mut gone: BTreeSet<String> = BTreeSet::new();
    // Containers whose pairs must be re-evaluated.
    let mut candidates: BTreeSet<String> = BTreeSet::new();
    // Containers whose firewall flows must be replaced.
    let mut firewall: BTreeSet<String> = BTreeSet::new();
    // Containers whose NAT-out flows must go.
    let mut nat: BTreeSet<String> = BTreeSet::new();
    // Containers now on a port they were not on: that port's drop (made
    // while no container was registered there) must go.
    let mut arrived: BTreeSet<String> = BTreeSet::new();
    let mut all_nat = false;

    let in_networks = |m: &crate::model::Model, nets: &BTreeSet<String>| -> Vec<String> {
        m.containers
            .values()
            .filter(|c| nets.contains(&c.network))
            .map(|c| c.id.clone())
            .collect()
    };

    for ch in changes {
        let (kind, key) = match ch {
            Change::Put(o) => (o.kind(), o.key()),
            Change::Delete(k, key) => (*k, key.clone()),
        };
        match kind {
            ObjKind::Container => {
                let before = om.containers.get(&key);
                let after = nm.containers.get(&key);
                match (before, after) {
                    (Some(b), Some(a)) => {
                        if b.host != a.host
                            || b.port != a.port
                            || b.ip != a.ip
                            || b.mac != a.mac
                            || b.physical_ip != a.physical_ip
                            || b.network != a.network
                        {
                            gone.insert(key.clone());
                            firewall.insert(key.clone());
                            candidates.extend(old.containers_with_ip(b.ip).map(|c| c.id.clone()));
                            candidates.extend(new.containers_with_ip(a.ip).map(|c| c.id.clone()));
                        }
                        if b.host != a.host || b.port != a.port {
                            arrived.insert(key.clone());
                        }
                    }
                    (Some(b), None) => {
                        gone.insert(key.clone());
                        // Others with the same IP may have become unambiguous.
                        candidates.extend(old.containers_with_ip(b.ip).map(|c| c.id.clone()));
                    }
                    (None, Some(a)) => {
                        // A new owner of an IP may change how others resolve it.
                        candidates.extend(new.containers_with_ip(a.ip).map(|c| c.id.clone()));
                        arrived.insert(key.clone());
                    }
                    (None, None) => {}
                }
            }
            ObjKind::Host => {
                let before = om.hosts.get(&key);
                let after = nm.hosts.get(&key);
                if before != after {
                    gone.extend(
                        om.containers
                            .values()
                            .filter(|c| c.host == key)
                            .map(|c| c.id.clone()),
                    );
                    firewall.extend(
                        nm.containers
                            .values()
                            .filter(|c| c.host == key)
                            .map(|c| c.id.clone()),
                    );
                }
            }
            ObjKind::Network => {
                let before = om.networks.get(&key);
                let after = nm.networks.get(&key);
                match (before, after) {
                    (Some(b), Some(a)) => {
                        if b.subnet != a.subnet || b.gateway != a.gateway {
                            gone.extend(in_networks(om, &BTreeSet::from([key.clone()])));
                            all_nat = true;
                        } else if b.nat_out != a.nat_out {
                            nat.extend(in_networks(om, &BTreeSet::from([key.clone()])));
                        }
                    }
                    (None, Some(_)) => all_nat = true,
                    _ => {}
                }
            }
            ObjKind::Group => {
                let mut nets: BTreeSet<String> = BTreeSet::new();
                for g in [om.groups.get(&key), nm.groups.get(&key)]
                    .into_iter()
                    .flatten()
                {
                    nets.extend(g.networks.iter().cloned());
                }
                candidates.extend(in_networks(om, &nets));
            }
            ObjKind::Policy => {
                for p in [om.policies.get(&key), nm.policies.get(&key)]
                    .into_iter()
                    .flatten()
                {
                    candidates.insert(p.a.clone());
                    candidates.insert(p.b.clone());
                }
            }
            ObjKind::Firewall => {
                for f in [om.firewalls.get(&key), nm.firewalls.get(&key)]
                    .into_iter()
                    .flatten()
                {
                    firewall.insert(f.container.clone());
                }
            }
            ObjKind::Meta => {}
        }
    }

    for id in &gone {
        if let Some(x) = om.containers.get(id) {
            delete_container(&mut out, &all_dpids, x);
        }
    }

    // Pairs whose state changed.
    let mut done: BTreeSet<(u32, u32)> = BTreeSet::new();
    // Containers of those pairs: their drops that name no pair (keyed by
    // source alone, see rules::deny_cookie) may drop what is now allowed.
    let mut stale_denies: BTreeSet<String> = BTreeSet::new();
    for id in &candidates {
        if gone.contains(id) {
            continue;
        }
        let (Some(xo), Some(xn)) = (om.containers.get(id), nm.containers.get(id)) else {
            continue;
        };
        for yo in om.containers.values() {
            if yo.id == xo.id || gone.contains(&yo.id) {
                continue;
            }
            let Some(yn) = nm.containers.get(&yo.id) else {
                continue;
            };
            let key = (
                xo.cookie_id.min(yo.cookie_id),
                xo.cookie_id.max(yo.cookie_id),
            );
            if done.contains(&key) {
                continue;
            }
            if old.pair_state(xo, yo) != new.pair_state(xn, yn) {
                done.insert(key);
                stale_denies.insert(xo.id.clone());
                stale_denies.insert(yo.id.clone());
                let ck = cookie::pair(Kind::Pair, xo.cookie_id, yo.cookie_id);
                let dpids: BTreeSet<Dpid> = [old.host_of(xo), old.host_of(yo)]
                    .into_iter()
                    .flatten()
                    .map(|h| h.dpid)
                    .collect();
                for d in dpids {
                    out.push(delete(d, ck, PAIR_MASK));
                }
            }
        }
    }

    for id in &stale_denies {
        let Some(x) = om.containers.get(id) else {
            continue;
        };
        if let Some(h) = old.host_of(x) {
            out.push(delete(
                h.dpid,
                cookie::single(Kind::Deny, x.cookie_id),
                u64::MAX,
            ));
        }
    }

    // What a container sent before it was registered (a runtime brings its
    // link up first: IPv6 solicitations) got its port a port-wide drop;
    // left in place it would drop the container's first packets for up to
    // --deny-timeout. A drop decided on the old snapshot is sent before
    // this deletion on the switch's connection, so none survives it.
    for x in arrived.iter().filter_map(|id| nm.containers.get(id)) {
        if let Some(h) = new.host_of(x) {
            out.push(delete(h.dpid, cookie::port_deny(x.port), u64::MAX));
        }
    }

    if all_nat {
        for d in &all_dpids {
            out.push(delete(*d, cookie::make(Kind::NatOut, 0, 0), KIND_MASK));
        }
    } else {
        for id in &nat {
            if let Some(x) = om.containers.get(id) {
                if let Some(h) = old.host_of(x) {
                    out.push(delete(
                        h.dpid,
                        cookie::single(Kind::NatOut, x.cookie_id),
                        u64::MAX,
                    ));
                }
            }
        }
    }

    for id in &firewall {
        if !gone.contains(id) {
            if let Some(x) = om.containers.get(id) {
                if let Some(h) = old.host_of(x) {
                    out.push(delete(
                        h.dpid,
                        cookie::single(Kind::Firewall, x.cookie_id),
                        u64::MAX,
                    ));
                }
            }
        }
        if let Some(x) = nm.containers.get(id) {
            out.extend(firewall_flows(new, cfg, x));
        }
    }
    out
}

/// The flows a datapath needs when it connects: everything of ours is
/// deleted first (a reconnecting switch may hold flows from before a policy
/// change), then the base flows and the firewall punt flows of its
/// containers. Unknown datapaths get nothing.
pub fn handle_switch_connected(snap: &Snapshot, cfg: &Config, dpid: Dpid) -> Vec<Decision> {
    let Some(h) = snap.host_by_dpid(dpid) else {
        return vec![];
    };
    let base = |prio: u16, m: MatchSpec, actions: Vec<ActionSpec>| {
        Decision::AddFlow(FlowSpec {
            dpid,
            table: cfg.table,
            priority: prio,
            cookie: cookie::make(Kind::Base, 0, 0),
            idle_timeout: 0,
            hard_timeout: 0,
            match_: m,
            actions,
        })
    };
    let pool = Some(Ipv4Match {
        addr: cfg.physical_pool.network(),
        prefix: cfg.physical_pool.prefix_len(),
    });
    let mut out = vec![
        delete(dpid, 0, 0),
        base(
            priority::MISS,
            MatchSpec::default(),
            vec![ActionSpec::Controller],
        ),
        base(
            priority::DEFAULT,
            MatchSpec {
                in_port: Some(h.uplink_port),
                ..Default::default()
            },
            vec![ActionSpec::Local],
        ),
        base(
            priority::DEFAULT,
            MatchSpec {
                in_port: Some(PORT_LOCAL),
                ..Default::default()
            },
            vec![ActionSpec::Output(h.uplink_port)],
        ),
    ];
    for port in [h.uplink_port, PORT_LOCAL] {
        out.push(base(
            priority::POOL_PUNT,
            MatchSpec {
                in_port: Some(port),
                eth_type: Some(ETH_TYPE_IPV4),
                ipv4_dst: pool,
                ..Default::default()
            },
            vec![ActionSpec::Controller],
        ));
    }
    let on_host: BTreeMap<&String, &Container> = snap
        .model
        .containers
        .iter()
        .filter(|(_, c)| c.host == h.name)
        .collect();
    for c in on_host.values() {
        out.extend(firewall_flows(snap, cfg, c));
    }
    out
}

/// A datapath disconnected: the flows towards its containers on the other
/// datapaths are useless and are deleted.
pub fn handle_host_gone(snap: &Snapshot, dpid: Dpid) -> Vec<Decision> {
    let Some(h) = snap.host_by_dpid(dpid) else {
        return vec![];
    };
    let others: BTreeSet<Dpid> = snap
        .model
        .hosts
        .values()
        .filter(|o| o.dpid != dpid)
        .map(|o| o.dpid)
        .collect();
    // Its containers once, from the index (a pass over every container
    // per datapath was hosts x containers: minutes at 1,000 hosts and
    // 100,000 containers).
    let mut gone: Vec<&Container> = snap.containers_on(&h.name).collect();
    gone.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out = Vec::with_capacity(others.len() * gone.len() * 2);
    // Datapath by datapath, so that the flow registry deletes each
    // datapath's share in one pass.
    for d in others {
        let one = BTreeSet::from([d]);
        for c in &gone {
            delete_container(&mut out, &one, c);
        }
    }
    out
}
