//! A read-only, indexed view of the model and the reachability rules.
//!
//! Rules (the policy's single source of truth):
//! 1. A pair policy between two containers wins, both ways: `connect` lets
//!    them talk whatever their networks, `disconnect` forbids it.
//! 2. Otherwise two containers of the same network may talk.
//! 3. Otherwise they may talk iff some group contains both networks.
//!
//! Destination resolution (subnets may overlap between tenants, so an IP
//! alone does not name a container): from container `x`, destination `d` is
//! - `x`'s gateway: [`Resolution::Gateway`];
//! - the container of `x`'s own network with IP `d`, if any (and if no pair
//!   policy disconnects them);
//! - else the single container with IP `d` that `x` may reach; two or more
//!   such containers is ambiguous and denied;
//! - else, if `d` is inside any known network: denied (isolation);
//! - else outside every network: NAT-out if `x`'s network allows it.

// foldhash: these maps are read on every PACKET_IN; SipHash showed up in
// profiles and the keys are not attacker-chosen.
use foldhash::HashMap;
use std::net::Ipv4Addr;

use crate::addr::Dpid;
use crate::model::{Container, Host, Model, Network, PairAction};

use super::DenyReason;

/// Where a packet from a container to an IPv4 address goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution<'a> {
    /// To this container.
    Container(&'a Container),
    /// Out through the host stack.
    Outside,
    /// To the network's gateway address itself.
    Gateway,
    /// Nowhere.
    Denied(DenyReason),
}

/// The model plus the indexes the policy needs.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The model.
    pub model: Model,
    // Every PACKET_IN goes through these: hashed indexes into flat copies
    // of the containers and hosts, instead of string-keyed tree lookups.
    containers: Vec<Container>,
    hosts: Vec<Host>,
    by_ip: HashMap<Ipv4Addr, Vec<usize>>,
    /// host name -> port -> container (looked up without allocating).
    by_port: HashMap<String, HashMap<u32, usize>>,
    by_phys: HashMap<Ipv4Addr, usize>,
    by_cookie: HashMap<u32, usize>,
    host_by_dpid: HashMap<Dpid, usize>,
    host_by_name: HashMap<String, usize>,
    networks: HashMap<String, Network>,
    /// Pair policies by the (smaller, larger) cookie ids of the two containers.
    pairs: HashMap<(u32, u32), PairAction>,
}

impl Snapshot {
    /// Indexes a model.
    pub fn new(model: Model) -> Self {
        let mut s = Snapshot {
            containers: model.containers.values().cloned().collect(),
            hosts: model.hosts.values().cloned().collect(),
            networks: model
                .networks
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            model,
            ..Default::default()
        };
        for (i, c) in s.containers.iter().enumerate() {
            s.by_ip.entry(c.ip).or_default().push(i);
            s.by_port
                .entry(c.host.clone())
                .or_default()
                .insert(c.port, i);
            s.by_phys.insert(c.physical_ip, i);
            s.by_cookie.insert(c.cookie_id, i);
        }
        for (i, h) in s.hosts.iter().enumerate() {
            s.host_by_dpid.insert(h.dpid, i);
            s.host_by_name.insert(h.name.clone(), i);
        }
        for p in s.model.policies.values() {
            let (Some(a), Some(b)) = (s.model.containers.get(&p.a), s.model.containers.get(&p.b))
            else {
                continue;
            };
            let key = (a.cookie_id.min(b.cookie_id), a.cookie_id.max(b.cookie_id));
            s.pairs.insert(key, p.action);
        }
        s
    }

    /// The host of a datapath.
    pub fn host_by_dpid(&self, dpid: Dpid) -> Option<&Host> {
        self.host_by_dpid
            .get(&dpid)
            .and_then(|i| self.hosts.get(*i))
    }

    /// The host a container runs on.
    pub fn host_of(&self, c: &Container) -> Option<&Host> {
        self.host_by_name
            .get(&c.host)
            .and_then(|i| self.hosts.get(*i))
    }

    /// The container on a host port.
    pub fn container_at(&self, host: &str, port: u32) -> Option<&Container> {
        self.by_port
            .get(host)
            .and_then(|ports| ports.get(&port))
            .and_then(|i| self.containers.get(*i))
    }

    /// The containers of a host, by port.
    pub fn containers_on(&self, host: &str) -> impl Iterator<Item = &Container> {
        self.by_port
            .get(host)
            .into_iter()
            .flat_map(|ports| ports.values())
            .filter_map(|i| self.containers.get(*i))
    }

    /// The container with a cookie id.
    pub fn container_by_cookie(&self, id: u32) -> Option<&Container> {
        self.by_cookie
            .get(&id)
            .and_then(|i| self.containers.get(*i))
    }

    /// The container owning a physical IP.
    pub fn container_by_physical(&self, ip: Ipv4Addr) -> Option<&Container> {
        self.by_phys.get(&ip).and_then(|i| self.containers.get(*i))
    }

    /// Containers with a logical IP (any network).
    pub fn containers_with_ip(&self, ip: Ipv4Addr) -> impl Iterator<Item = &Container> {
        self.by_ip
            .get(&ip)
            .into_iter()
            .flatten()
            .filter_map(|i| self.containers.get(*i))
    }

    /// Whether `x` and `y` may talk (rules 1-3), with the reason when not.
    pub fn allowed(&self, x: &Container, y: &Container) -> Result<(), DenyReason> {
        let key = (x.cookie_id.min(y.cookie_id), x.cookie_id.max(y.cookie_id));
        if let Some(action) = self.pairs.get(&key) {
            return match action {
                PairAction::Connect => Ok(()),
                PairAction::Disconnect => Err(DenyReason::PairDisconnected),
            };
        }
        if x.network == y.network {
            return Ok(());
        }
        let grouped = self
            .model
            .groups
            .values()
            .any(|g| g.networks.contains(&x.network) && g.networks.contains(&y.network));
        if grouped {
            Ok(())
        } else {
            Err(DenyReason::Isolated)
        }
    }

    /// Resolves a destination IP from container `x` (see the module docs).
    pub fn resolve(&self, x: &Container, dst: Ipv4Addr) -> Resolution<'_> {
        let Some(net) = self.networks.get(&x.network) else {
            return Resolution::Denied(DenyReason::UnknownDestination);
        };
        if dst == net.gateway {
            return Resolution::Gateway;
        }
        let mut seen_any = false;
        let mut reachable: Option<&Container> = None;
        let mut ambiguous = false;
        for c in self.containers_with_ip(dst) {
            if c.id == x.id {
                continue;
            }
            seen_any = true;
            if c.network == x.network {
                return match self.allowed(x, c) {
                    Ok(()) => Resolution::Container(c),
                    Err(r) => Resolution::Denied(r),
                };
            }
            if self.allowed(x, c).is_ok() {
                if reachable.is_some() {
                    ambiguous = true;
                }
                reachable = Some(c);
            }
        }
        if ambiguous {
            return Resolution::Denied(DenyReason::Ambiguous);
        }
        if let Some(c) = reachable {
            return Resolution::Container(c);
        }
        if seen_any {
            return Resolution::Denied(DenyReason::Isolated);
        }
        if self.model.networks.values().any(|n| n.subnet.contains(dst)) {
            return Resolution::Denied(DenyReason::UnknownDestination);
        }
        if net.nat_out {
            Resolution::Outside
        } else {
            Resolution::Denied(DenyReason::NatDisabled)
        }
    }

    /// Whether the policy would install pair flows between `x` and `y`: they
    /// may talk and at least one resolves the other's IP to it.
    pub fn pair_state(&self, x: &Container, y: &Container) -> PairState {
        let ok = self.allowed(x, y).is_ok();
        let xy = matches!(self.resolve(x, y.ip), Resolution::Container(c) if c.id == y.id);
        let yx = matches!(self.resolve(y, x.ip), Resolution::Container(c) if c.id == x.id);
        PairState {
            allowed: ok,
            x_reaches_y: xy,
            y_reaches_x: yx,
        }
    }
}

/// What the policy says about a pair; flows of the pair are valid only while
/// this stays the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairState {
    /// Rules 1-3.
    pub allowed: bool,
    /// `x` resolves `y`'s IP to `y`.
    pub x_reaches_y: bool,
    /// `y` resolves `x`'s IP to `x`.
    pub y_reaches_x: bool,
}
