//! The DaoliNet model: hosts, networks, containers, groups, pair policies and
//! firewalls, with validated mutations.
//!
//! Every mutation checks everything first and only then changes the model, so
//! an error leaves the model untouched. Each successful mutation returns the
//! list of [`Change`]s it made, which the store persists in one transaction
//! and the policy layer turns into flow deletions.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::addr::{Dpid, Ipv4Net, MacAddr};
use crate::ipam::{self, IpamError};

/// A host: one datapath (daolinet-agent or an Open vSwitch bridge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// Unique name (usually the hostname).
    pub name: String,
    /// OpenFlow datapath id.
    pub dpid: Dpid,
    /// Underlay IP of the host (used for firewall ingress and as NAT source).
    pub ip: Ipv4Addr,
    /// Underlay MAC of the uplink.
    pub mac: MacAddr,
    /// OpenFlow port number of the uplink.
    pub uplink_port: u32,
    /// MAC of the datapath's LOCAL port if it differs from `mac`
    /// (packets sent to the host stack carry it as destination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_mac: Option<MacAddr>,
}

impl Host {
    /// The MAC the host stack accepts on the LOCAL port.
    pub fn local_mac(&self) -> MacAddr {
        self.local_mac.unwrap_or(self.mac)
    }
}

/// A tenant network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Unique name.
    pub name: String,
    /// The subnet; subnets of different networks may overlap.
    pub subnet: Ipv4Net,
    /// The gateway IP the containers route through.
    pub gateway: Ipv4Addr,
    /// Free-form tenant label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Whether containers may reach destinations outside every known network
    /// through the host stack (masquerade).
    #[serde(default = "default_true")]
    pub nat_out: bool,
}

fn default_true() -> bool {
    true
}

/// A container attached to a host port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// Unique id (e.g. the runtime's container id).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// The network it belongs to.
    pub network: String,
    /// Logical IP in its network (kept across moves).
    pub ip: Ipv4Addr,
    /// MAC (kept across moves).
    pub mac: MacAddr,
    /// Name of the host it runs on.
    pub host: String,
    /// OpenFlow port number on that host.
    pub port: u32,
    /// Physical IP from the global pool (unique cluster-wide).
    pub physical_ip: Ipv4Addr,
    /// Small number identifying the container in flow cookies; never reused.
    pub cookie_id: u32,
}

/// A group joins networks: containers of any two member networks may talk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Unique name.
    pub name: String,
    /// Member network names.
    pub networks: BTreeSet<String>,
}

/// What a pair policy says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PairAction {
    /// The two containers may talk, whatever their networks.
    Connect,
    /// The two containers may not talk, whatever their networks.
    Disconnect,
}

/// A pair policy between two containers; overrides networks and groups, both ways.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairPolicy {
    /// Container id (the smaller of the two).
    pub a: String,
    /// Container id (the larger of the two).
    pub b: String,
    /// Connect or disconnect.
    pub action: PairAction,
}

impl PairPolicy {
    /// The store key of the pair `a`, `b` (order-independent).
    pub fn key_of(a: &str, b: &str) -> String {
        if a <= b {
            format!("{a}:{b}")
        } else {
            format!("{b}:{a}")
        }
    }

    /// This policy's store key.
    pub fn key(&self) -> String {
        Self::key_of(&self.a, &self.b)
    }
}

/// Transport protocol of a firewall rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl Proto {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One firewall (ingress) rule: traffic to the host's underlay IP on
/// `host_port` is forwarded to the container on `container_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallRule {
    /// Protocol.
    pub proto: Proto,
    /// Port on the host's underlay IP.
    pub host_port: u16,
    /// Port inside the container.
    pub container_port: u16,
}

impl FromStr for FirewallRule {
    type Err = ModelError;
    /// Parses `HOSTPORT:PORT` with an optional `/tcp` or `/udp` suffix (tcp by default).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| ModelError::BadRule {
            rule: s.to_string(),
            why: why.to_string(),
        };
        let (ports, proto) = match s.split_once('/') {
            Some((p, "tcp")) => (p, Proto::Tcp),
            Some((p, "udp")) => (p, Proto::Udp),
            Some(_) => return Err(bad("protocol must be tcp or udp")),
            None => (s, Proto::Tcp),
        };
        let (h, c) = ports
            .split_once(':')
            .ok_or_else(|| bad("expected HOSTPORT:PORT[/tcp|/udp]"))?;
        let port = |p: &str| -> Result<u16, ModelError> {
            match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(bad("ports must be numbers between 1 and 65535")),
                Ok(n) => Ok(n),
            }
        };
        Ok(FirewallRule {
            proto,
            host_port: port(h)?,
            container_port: port(c)?,
        })
    }
}

impl fmt::Display for FirewallRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.host_port, self.container_port, self.proto
        )
    }
}

/// A named set of firewall rules for one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firewall {
    /// Unique name.
    pub name: String,
    /// Container id.
    pub container: String,
    /// The rules.
    pub rules: Vec<FirewallRule>,
}

/// Allocation state that must survive restarts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Meta {
    /// Next container cookie id (starts at 1, never reused).
    pub next_cookie_id: u32,
    /// Last logical IP handed out, per network.
    pub logical_cursor: BTreeMap<String, Ipv4Addr>,
    /// Last physical IP handed out.
    pub physical_cursor: Option<Ipv4Addr>,
}

/// The largest container cookie id (28 bits, see [`crate::cookie`]).
pub const MAX_COOKIE_ID: u32 = (1 << 28) - 1;

/// Kinds of stored objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// [`Host`], keyed by name.
    Host,
    /// [`Network`], keyed by name.
    Network,
    /// [`Container`], keyed by id.
    Container,
    /// [`Group`], keyed by name.
    Group,
    /// [`PairPolicy`], keyed by `a:b`.
    Policy,
    /// [`Firewall`], keyed by name.
    Firewall,
    /// [`Meta`], single key `meta`.
    Meta,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 7] = [
        Kind::Host,
        Kind::Network,
        Kind::Container,
        Kind::Group,
        Kind::Policy,
        Kind::Firewall,
        Kind::Meta,
    ];

    /// The kind's name (used as table/prefix name in stores).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Host => "host",
            Kind::Network => "network",
            Kind::Container => "container",
            Kind::Group => "group",
            Kind::Policy => "policy",
            Kind::Firewall => "firewall",
            Kind::Meta => "meta",
        }
    }
}

/// A stored object of any kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum Object {
    /// A host.
    Host(Host),
    /// A network.
    Network(Network),
    /// A container.
    Container(Container),
    /// A group.
    Group(Group),
    /// A pair policy.
    Policy(PairPolicy),
    /// A firewall.
    Firewall(Firewall),
    /// Allocation state.
    Meta(Meta),
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Host(_) => Kind::Host,
            Object::Network(_) => Kind::Network,
            Object::Container(_) => Kind::Container,
            Object::Group(_) => Kind::Group,
            Object::Policy(_) => Kind::Policy,
            Object::Firewall(_) => Kind::Firewall,
            Object::Meta(_) => Kind::Meta,
        }
    }

    /// The object's key within its kind.
    pub fn key(&self) -> String {
        match self {
            Object::Host(h) => h.name.clone(),
            Object::Network(n) => n.name.clone(),
            Object::Container(c) => c.id.clone(),
            Object::Group(g) => g.name.clone(),
            Object::Policy(p) => p.key(),
            Object::Firewall(f) => f.name.clone(),
            Object::Meta(_) => "meta".into(),
        }
    }

    /// Serializes the bare value (without the kind tag) as JSON.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        match self {
            Object::Host(v) => serde_json::to_vec(v),
            Object::Network(v) => serde_json::to_vec(v),
            Object::Container(v) => serde_json::to_vec(v),
            Object::Group(v) => serde_json::to_vec(v),
            Object::Policy(v) => serde_json::to_vec(v),
            Object::Firewall(v) => serde_json::to_vec(v),
            Object::Meta(v) => serde_json::to_vec(v),
        }
    }

    /// Parses a bare value of `kind` from JSON.
    pub fn from_json(kind: Kind, bytes: &[u8]) -> Result<Object, serde_json::Error> {
        Ok(match kind {
            Kind::Host => Object::Host(serde_json::from_slice(bytes)?),
            Kind::Network => Object::Network(serde_json::from_slice(bytes)?),
            Kind::Container => Object::Container(serde_json::from_slice(bytes)?),
            Kind::Group => Object::Group(serde_json::from_slice(bytes)?),
            Kind::Policy => Object::Policy(serde_json::from_slice(bytes)?),
            Kind::Firewall => Object::Firewall(serde_json::from_slice(bytes)?),
            Kind::Meta => Object::Meta(serde_json::from_slice(bytes)?),
        })
    }
}

/// One change made by a mutation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The object was created or replaced.
    Put(Object),
    /// The object was removed.
    Delete(Kind, String),
}

/// Why a mutation was refused. `field()` names the offending input field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// A name or id is empty, too long or has characters we do not accept.
    #[error(
        "invalid {field} {value:?}: use 1 to 64 characters among letters, digits, '-', '_' and '.'"
    )]
    BadName {
        /// The field.
        field: &'static str,
        /// The value.
        value: String,
    },
    /// A referenced object does not exist.
    #[error("unknown {kind} {name:?}")]
    NotFound {
        /// The kind of object.
        kind: &'static str,
        /// What was asked for.
        name: String,
    },
    /// An object with this name already exists.
    #[error("{kind} {name:?} already exists")]
    Duplicate {
        /// The kind of object.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// A value conflicts with another object (duplicate dpid, IP, port ...).
    #[error("{field}: {message}")]
    Conflict {
        /// The field.
        field: &'static str,
        /// What conflicts.
        message: String,
    },
    /// A value is invalid on its own.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        message: String,
    },
    /// The object is still in use.
    #[error("{kind} {name:?} is still in use: {by}")]
    InUse {
        /// The kind of object.
        kind: &'static str,
        /// The name.
        name: String,
        /// What uses it.
        by: String,
    },
    /// A firewall rule could not be parsed.
    #[error("bad firewall rule {rule:?}: {why}")]
    BadRule {
        /// The rule text.
        rule: String,
        /// Why.
        why: String,
    },
    /// Address management failed.
    #[error("{field}: {source}")]
    Ipam {
        /// The field.
        field: &'static str,
        /// The cause.
        source: IpamError,
    },
}

impl ModelError {
    /// The input field the error is about, if any.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            ModelError::BadName { field, .. }
            | ModelError::Conflict { field, .. }
            | ModelError::Invalid { field, .. }
            | ModelError::Ipam { field, .. } => Some(field),
            ModelError::BadRule { .. } => Some("rules"),
            ModelError::NotFound { .. }
            | ModelError::Duplicate { .. }
            | ModelError::InUse { .. } => None,
        }
    }
}

fn check_name(field: &'static str, value: &str) -> Result<(), ModelError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ModelError::BadName {
            field,
            value: value.to_string(),
        })
    }
}

fn check_port(field: &'static str, port: u32) -> Result<(), ModelError> {
    // OpenFlow 1.3: physical/logical ports are 1..=0xffffff00 (OFPP_MAX).
    if port == 0 || port > 0xffff_ff00 {
        return Err(ModelError::Invalid {
            field,
            message: format!("port {port} is not a valid OpenFlow port number (1..=4294967040)"),
        });
    }
    Ok(())
}

fn check_unicast(field: &'static str, mac: MacAddr) -> Result<(), ModelError> {
    if mac.is_multicast() || mac == MacAddr::default() {
        return Err(ModelError::Invalid {
            field,
            message: format!("{mac} is not a unicast MAC address"),
        });
    }
    Ok(())
}

/// Input for [`Model::add_container`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// Unique id.
    pub id: String,
    /// Unique name (defaults to the id).
    #[serde(default)]
    pub name: Option<String>,
    /// Network name.
    pub network: String,
    /// Requested logical IP; allocated when absent.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// Requested MAC; derived from the cookie id when absent.
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// Host name.
    pub host: String,
    /// OpenFlow port on the host.
    pub port: u32,
}

/// Input for [`Model::add_network`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// Unique name.
    pub name: String,
    /// Subnet.
    pub subnet: Ipv4Net,
    /// Gateway; the first host address of the subnet when absent.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// Tenant label.
    #[serde(default)]
    pub tenant: Option<String>,
    /// NAT-out allowed (default true).
    #[serde(default)]
    pub nat_out: Option<bool>,
}

/// The whole model.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Model {
    /// Hosts by name.
    pub hosts: BTreeMap<String, Host>,
    /// Networks by name.
    pub networks: BTreeMap<String, Network>,
    /// Containers by id.
    pub containers: BTreeMap<String, Container>,
    /// Groups by name.
    pub groups: BTreeMap<String, Group>,
    /// Pair policies by `a:b` key.
    pub policies: BTreeMap<String, PairPolicy>,
    /// Firewalls by name.
    pub firewalls: BTreeMap<String, Firewall>,
    /// Allocation state.
    pub meta: Meta,
}

impl Model {
    /// Applies a stored change (used when loading and by watchers).
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Put(o) => match o.clone() {
                Object::Host(v) => {
                    self.hosts.insert(v.name.clone(), v);
                }
                Object::Network(v) => {
                    self.networks.insert(v.name.clone(), v);
                }
                Object::Container(v) => {
                    self.containers.insert(v.id.clone(), v);
                }
                Object::Group(v) => {
                    self.groups.insert(v.name.clone(), v);
                }
                Object::Policy(v) => {
                    self.policies.insert(v.key(), v);
                }
                Object::Firewall(v) => {
                    self.firewalls.insert(v.name.clone(), v);
                }
                Object::Meta(v) => self.meta = v,
            },
            Change::Delete(kind, key) => match kind {
                Kind::Host => {
                    self.hosts.remove(key);
                }
                Kind::Network => {
                    self.networks.remove(key);
                }
                Kind::Container => {
                    self.containers.remove(key);
                }
                Kind::Group => {
                    self.groups.remove(key);
                }
                Kind::Policy => {
                    self.policies.remove(key);
                }
                Kind::Firewall => {
                    self.firewalls.remove(key);
                }
                Kind::Meta => self.meta = Meta::default(),
            },
        }
    }

    fn commit(&mut self, changes: Vec<Change>) -> Vec<Change> {
        for c in &changes {
            self.apply(c);
        }
        changes
    }

    /// Finds a container by id, or else by name.
    pub fn container(&self, id_or_name: &str) -> Result<&Container, ModelError> {
        self.containers
            .get(id_or_name)
            .or_else(|| self.containers.values().find(|c| c.name == id_or_name))
            .ok_or_else(|| ModelError::NotFound {
                kind: "container",
                name: id_or_name.to_string(),
            })
    }

    /// Finds a host by name.
    pub fn host(&self, name: &str) -> Result<&Host, ModelError> {
        self.hosts.get(name).ok_or_else(|| ModelError::NotFound {
            kind: "host",
            name: name.to_string(),
        })
    }

    /// Finds a network by name.
    pub fn network(&self, name: &str) -> Result<&Network, ModelError> {
        self.networks.get(name).ok_or_else(|| ModelError::NotFound {
            kind: "network",
            name: name.to_string(),
        })
    }

    /// Registers a host.
    pub fn add_host(&mut self, host: Host) -> Result<Vec<Change>, ModelError> {
        check_name("name", &host.name)?;
        if self.hosts.contains_key(&host.name) {
            return Err(ModelError::Duplicate {
                kind: "host",
                name: host.name,
            });
        }
        self.check_host(&host)?;
        Ok(self.commit(vec![Change::Put(Object::Host(host))]))
    }

    /// Registers a host or updates its record: what a host that joins by
    /// itself sends on every start and reconnection. Idempotent: the same
    /// record again changes nothing (no [`Change`]). A host keeps its
    /// datapath id: a record with the name of a host registered with
    /// another datapath id is refused ([`ModelError::Conflict`] on
    /// `dpid`), as is one whose datapath id, IP or MAC belongs to another
    /// host. A `local_mac` equal to `mac` is stored as none (the same
    /// thing said twice).
    pub fn register_host(&mut self, mut host: Host) -> Result<Vec<Change>, ModelError> {
        check_name("name", &host.name)?;
        if host.local_mac == Some(host.mac) {
            host.local_mac = None;
        }
        if let Some(old) = self.hosts.get(&host.name) {
            if old.dpid != host.dpid {
                return Err(ModelError::Conflict {
                    field: "dpid",
                    message: format!(
                        "host {:?} is registered with datapath id {}, not {} \
                         (another machine with the same name? remove the host first)",
                        host.name, old.dpid, host.dpid
                    ),
                });
            }
            if *old == host {
                return Ok(vec![]);
            }
        }
        self.check_host(&host)?;
        if let Some(c) = self
            .containers
            .values()
            .find(|c| c.host == host.name && c.port == host.uplink_port)
        {
            return Err(ModelError::Conflict {
                field: "uplink_port",
                message: format!(
                    "port {} on host {:?} is container {:?}",
                    host.uplink_port, host.name, c.name
                ),
            });
        }
        Ok(self.commit(vec![Change::Put(Object::Host(host))]))
    }

    /// The checks of a host record against itself and the other hosts
    /// (those of other names).
    fn check_host(&self, host: &Host) -> Result<(), ModelError> {
        check_port("uplink_port", host.uplink_port)?;
        check_unicast("mac", host.mac)?;
        if let Some(m) = host.local_mac {
            check_unicast("local_mac", m)?;
        }
        let others = || self.hosts.values().filter(|h| h.name != host.name);
        if let Some(o) = others().find(|h| h.dpid == host.dpid) {
            return Err(ModelError::Conflict {
                field: "dpid",
                message: format!("datapath id {} is already host {:?}", host.dpid, o.name),
            });
        }
        if let Some(o) = others().find(|h| h.ip == host.ip) {
            return Err(ModelError::Conflict {
                field: "ip",
                message: format!("{} is already host {:?}", host.ip, o.name),
            });
        }
        if let Some(o) = others().find(|h| h.mac == host.mac) {
            return Err(ModelError::Conflict {
                field: "mac",
                message: format!("{} is already host {:?}", host.mac, o.name),
            });
        }
        Ok(())
    }

    /// Removes a host that runs no container.
    pub fn remove_host(&mut self, name: &str) -> Result<Vec<Change>, ModelError> {
        self.host(name)?;
        let on: Vec<&str> = self
            .containers
            .values()
            .filter(|c| c.host == name)
            .map(|c| c.name.as_str())
            .collect();
        if !on.is_empty() {
            return Err(ModelError::InUse {
                kind: "host",
                name: name.into(),
                by: format!("containers {}", on.join(", ")),
            });
        }
        Ok(self.commit(vec![Change::Delete(Kind::Host, name.into())]))
    }

    /// Creates a network.
    pub fn add_network(&mut self, spec: NetworkSpec) -> Result<Vec<Change>, ModelError> {
        check_name("name", &spec.name)?;
        if self.networks.contains_key(&spec.name) {
            return Err(ModelError::Duplicate {
                kind: "network",
                name: spec.name,
            });
        }
        if let Some(t) = &spec.tenant {
            check_name("tenant", t)?;
        }
        let (lo, hi) = spec.subnet.host_range();
        if spec.subnet.prefix_len() > 30 || lo > hi {
            return Err(ModelError::Invalid {
                field: "subnet",
                message: format!("{} is too small (at most /30)", spec.subnet),
            });
        }
        let gateway = spec.gateway.unwrap_or(Ipv4Addr::from(lo));
        ipam::check(spec.subnet, gateway, &BTreeSet::new(), &[]).map_err(|source| {
            ModelError::Ipam {
                field: "gateway",
                source,
            }
        })?;
        let net = Network {
            name: spec.name,
            subnet: spec.subnet,
            gateway,
            tenant: spec.tenant,
            nat_out: spec.nat_out.unwrap_or(true),
        };
        Ok(self.commit(vec![Change::Put(Object::Network(net))]))
    }

    /// Removes a network without containers; it leaves every group.
    pub fn remove_network(&mut self, name: &str) -> Result<Vec<Change>, ModelError> {
        self.network(name)?;
        let on: Vec<&str> = self
            .containers
            .values()
            .filter(|c| c.network == name)
            .map(|c| c.name.as_str())
            .collect();
        if !on.is_empty() {
            return Err(ModelError::InUse {
                kind: "network",
                name: name.into(),
                by: format!("containers {}", on.join(", ")),
            });
        }
        let mut changes = vec![];
        for g in self.groups.values() {
            if g.networks.contains(name) {
                let mut g = g.clone();
                g.networks.remove(name);
                changes.push(Change::Put(Object::Group(g)));
            }
        }
        let mut meta = self.meta.clone();
        meta.logical_cursor.remove(name);
        changes.push(Change::Put(Object::Meta(meta)));
        changes.push(Change::Delete(Kind::Network, name.into()));
        Ok(self.commit(changes))
    }

    /// Registers a container, allocating its logical IP (if not given), MAC
    /// (if not given) and physical IP from `pool`.
    pub fn add_container(
        &mut self,
        spec: ContainerSpec,
        pool: Ipv4Net,
    ) -> Result<Vec<Change>, ModelError> {
        check_name("id", &spec.id)?;
        let name = spec.name.clone().unwrap_or_else(|| spec.id.clone());
        check_name("name", &name)?;
        if self.containers.contains_key(&spec.id) {
            return Err(ModelError::Duplicate {
                kind: "container",
                name: spec.id,
            });
        }
        if self
            .containers
            .values()
            .any(|c| c.name == name || c.id == name || c.name == spec.id)
        {
            return Err(ModelError::Duplicate {
                kind: "container",
                name,
            });
        }
        let net = self.network(&spec.network)?.clone();
        self.host(&spec.host)?;
        self.check_port_free(&spec.host, spec.port, None)?;
        let in_net: BTreeSet<Ipv4Addr> = self
            .containers
            .values()
            .filter(|c| c.network == net.name)
            .map(|c| c.ip)
            .collect();
        let mut meta = self.meta.clone();
        let ip = match spec.ip {
            Some(ip) => {
                ipam::check(net.subnet, ip, &in_net, &[net.gateway]).map_err(|source| {
                    ModelError::Ipam {
                        field: "ip",
                        source,
                    }
                })?;
                ip
            }
            None => {
                let ip = ipam::allocate(
                    net.subnet,
                    meta.logical_cursor.get(&net.name).copied(),
                    &in_net,
                    &[net.gateway],
                )
                .map_err(|source| ModelError::Ipam {
                    field: "ip",
                    source,
                })?;
                meta.logical_cursor.insert(net.name.clone(), ip);
                ip
            }
        };
        let phys_used: BTreeSet<Ipv4Addr> = self
            .containers
            .values()
            .map(|c| c.physical_ip)
            .chain(self.hosts.values().map(|h| h.ip))
            .collect();
        let physical_ip =
            ipam::allocate(pool, meta.physical_cursor, &phys_used, &[]).map_err(|source| {
                ModelError::Ipam {
                    field: "physical_ip",
                    source,
                }
            })?;
        meta.physical_cursor = Some(physical_ip);
        let cookie_id = meta.next_cookie_id.max(1);
        if cookie_id > MAX_COOKIE_ID {
            return Err(ModelError::Invalid {
                field: "id",
                message: "container cookie ids exhausted".into(),
            });
        }
        meta.next_cookie_id = cookie_id + 1;
        let mac = match spec.mac {
            Some(m) => {
                check_unicast("mac", m)?;
                // A later container without a requested MAC could get it.
                if m.is_generated_container_mac() {
                    return Err(ModelError::Invalid {
                        field: "mac",
                        message: format!(
                            "{m} is in the range the controller gives containers that do not \
                             ask for a MAC ({}-{}): choose another",
                            crate::addr::CONTAINER_MAC_FIRST,
                            crate::addr::CONTAINER_MAC_LAST
                        ),
                    });
                }
                if let Some(o) = self.containers.values().find(|c| c.mac == m) {
                    return Err(ModelError::Conflict {
                        field: "mac",
                        message: format!("{m} is already container {:?}", o.name),
                    });
                }
                m
            }
            None => MacAddr::container(cookie_id),
        };
        let c = Container {
            id: spec.id,
            name,
            network: net.name,
            ip,
            mac,
            host: spec.host,
            port: spec.port,
            physical_ip,
            cookie_id,
        };
        Ok(self.commit(vec![
            Change::Put(Object::Meta(meta)),
            Change::Put(Object::Container(c)),
        ]))
    }

    fn check_port_free(
        &self,
        host: &str,
        port: u32,
        except: Option<&str>,
    ) -> Result<(), ModelError> {
        check_port("port", port)?;
        let h = self.host(host)?;
        if h.uplink_port == port {
            return Err(ModelError::Conflict {
                field: "port",
                message: format!("port {port} is the uplink of host {host:?}"),
            });
        }
        if let Some(o) = self
            .containers
            .values()
            .find(|c| c.host == host && c.port == port && Some(c.id.as_str()) != except)
        {
            return Err(ModelError::Conflict {
                field: "port",
                message: format!(
                    "port {port} on host {host:?} is already container {:?}",
                    o.name
                ),
            });
        }
        Ok(())
    }

    /// Removes a container with its pair policies and firewalls.
    pub fn remove_container(&mut self, id_or_name: &str) -> Result<Vec<Change>, ModelError> {
        let id = self.container(id_or_name)?.id.clone();
        let mut changes: Vec<Change> = self
            .policies
            .values()
            .filter(|p| p.a == id || p.b == id)
            .map(|p| Change::Delete(Kind::Policy, p.key()))
            .collect();
        changes.extend(
            self.firewalls
                .values()
                .filter(|f| f.container == id)
                .map(|f| Change::Delete(Kind::Firewall, f.name.clone())),
        );
        changes.push(Change::Delete(Kind::Container, id));
        Ok(self.commit(changes))
    }

    /// Moves a container to another host/port, keeping its addresses.
    pub fn move_container(
        &mut self,
        id_or_name: &str,
        host: &str,
        port: u32,
    ) -> Result<Vec<Change>, ModelError> {
        let mut c = self.container(id_or_name)?.clone();
        self.check_port_free(host, port, Some(&c.id))?;
        let fw: Vec<&Firewall> = self
            .firewalls
            .values()
            .filter(|f| f.container == c.id)
            .collect();
        for f in fw {
            self.check_host_ports(host, &f.rules, Some(&f.name))?;
        }
        c.host = host.to_string();
        c.port = port;
        Ok(self.commit(vec![Change::Put(Object::Container(c))]))
    }

    /// Creates a group of networks.
    pub fn create_group(
        &mut self,
        name: &str,
        networks: &[String],
    ) -> Result<Vec<Change>, ModelError> {
        check_name("name", name)?;
        if self.groups.contains_key(name) {
            return Err(ModelError::Duplicate {
                kind: "group",
                name: name.into(),
            });
        }
        for n in networks {
            self.network(n)?;
        }
        let g = Group {
            name: name.into(),
            networks: networks.iter().cloned().collect(),
        };
        Ok(self.commit(vec![Change::Put(Object::Group(g))]))
    }

    /// Deletes a group.
    pub fn delete_group(&mut self, name: &str) -> Result<Vec<Change>, ModelError> {
        self.group(name)?;
        Ok(self.commit(vec![Change::Delete(Kind::Group, name.into())]))
    }

    /// Finds a group by name.
    pub fn group(&self, name: &str) -> Result<&Group, ModelError> {
        self.groups.get(name).ok_or_else(|| ModelError::NotFound {
            kind: "group",
            name: name.into(),
        })
    }

    /// Adds a network to a group.
    pub fn group_add(&mut self, name: &str, network: &str) -> Result<Vec<Change>, ModelError> {
        let mut g = self.group(name)?.clone();
        self.network(network)?;
        if !g.networks.insert(network.into()) {
            return Err(ModelError::Conflict {
                field: "network",
                message: format!("network {network:?} is already in group {name:?}"),
            });
        }
        Ok(self.commit(vec![Change::Put(Object::Group(g))]))
    }

    /// Removes a network from a group.
    pub fn group_remove(&mut self, name: &str, network: &str) -> Result<Vec<Change>, ModelError> {
        let mut g = self.group(name)?.clone();
        if !g.networks.remove(network) {
            return Err(ModelError::NotFound {
                kind: "network in group",
                name: network.into(),
            });
        }
        Ok(self.commit(vec![Change::Put(Object::Group(g))]))
    }

    /// Sets the pair policy between two containers (by id or name).
    pub fn set_pair(
        &mut self,
        a: &str,
        b: &str,
        action: PairAction,
    ) -> Result<Vec<Change>, ModelError> {
        let a = self.container(a)?.id.clone();
        let b = self.container(b)?.id.clone();
        if a == b {
            return Err(ModelError::Invalid {
                field: "pair",
                message: "a container cannot be paired with itself".into(),
            });
        }
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        let p = PairPolicy { a, b, action };
        Ok(self.commit(vec![Change::Put(Object::Policy(p))]))
    }

    /// Removes the pair policy between two containers.
    pub fn clear_pair(&mut self, a: &str, b: &str) -> Result<Vec<Change>, ModelError> {
        let a = self.container(a)?.id.clone();
        let b = self.container(b)?.id.clone();
        let key = PairPolicy::key_of(&a, &b);
        if !self.policies.contains_key(&key) {
            return Err(ModelError::NotFound {
                kind: "policy",
                name: key,
            });
        }
        Ok(self.commit(vec![Change::Delete(Kind::Policy, key)]))
    }

    fn check_host_ports(
        &self,
        host: &str,
        rules: &[FirewallRule],
        except: Option<&str>,
    ) -> Result<(), ModelError> {
        let mut seen = BTreeSet::new();
        for r in rules {
            if !seen.insert((r.proto, r.host_port)) {
                return Err(ModelError::Conflict {
                    field: "rules",
                    message: format!("host port {}/{} given twice", r.host_port, r.proto),
                });
            }
        }
        for f in self.firewalls.values() {
            if Some(f.name.as_str()) == except {
                continue;
            }
            let on_host = self
                .containers
                .get(&f.container)
                .is_some_and(|c| c.host == host);
            if !on_host {
                continue;
            }
            if let Some(r) = f
                .rules
                .iter()
                .find(|r| seen.contains(&(r.proto, r.host_port)))
            {
                return Err(ModelError::Conflict {
                    field: "rules",
                    message: format!(
                        "host port {}/{} on host {host:?} is already used by firewall {:?}",
                        r.host_port, r.proto, f.name
                    ),
                });
            }
        }
        Ok(())
    }

    /// Creates a firewall for a container.
    pub fn create_firewall(
        &mut self,
        name: &str,
        container: &str,
        rules: Vec<FirewallRule>,
    ) -> Result<Vec<Change>, ModelError> {
        check_name("name", name)?;
        if self.firewalls.contains_key(name) {
            return Err(ModelError::Duplicate {
                kind: "firewall",
                name: name.into(),
            });
        }
        let c = self.container(container)?.clone();
        if rules.is_empty() {
            return Err(ModelError::Invalid {
                field: "rules",
                message: "at least one rule HOSTPORT:PORT is needed".into(),
            });
        }
        self.check_host_ports(&c.host, &rules, None)?;
        let f = Firewall {
            name: name.into(),
            container: c.id,
            rules,
        };
        Ok(self.commit(vec![Change::Put(Object::Firewall(f))]))
    }

    /// Deletes a firewall.
    pub fn delete_firewall(&mut self, name: &str) -> Result<Vec<Change>, ModelError> {
        if !self.firewalls.contains_key(name) {
            return Err(ModelError::NotFound {
                kind: "firewall",
                name: name.into(),
            });
        }
        Ok(self.commit(vec![Change::Delete(Kind::Firewall, name.into())]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn pool() -> Ipv4Net {
        "172.31.0.0/16".parse().unwrap()
    }

    fn base() -> Model {
        let mut m = Model::default();
        m.add_host(h1()).unwrap();
        m.add_network(NetworkSpec {
            name: "n1".into(),
            subnet: "10.0.0.0/24".parse().unwrap(),
            gateway: None,
            tenant: None,
            nat_out: None,
        })
        .unwrap();
        m
    }

    fn spec(id: &str, port: u32) -> ContainerSpec {
        ContainerSpec {
            id: id.into(),
            name: None,
            network: "n1".into(),
            ip: None,
            mac: None,
            host: "h1".into(),
            port,
        }
    }

    fn h1() -> Host {
        Host {
            name: "h1".into(),
            dpid: Dpid(1),
            ip: "192.168.0.1".parse().unwrap(),
            mac: "02:00:00:00:00:01".parse().unwrap(),
            uplink_port: 1,
            local_mac: None,
        }
    }

    #[test]
    fn register_host_is_an_idempotent_upsert_that_keeps_the_datapath_id() {
        let mut m = base();
        m.add_container(spec("a", 2), pool()).unwrap();
        // The same record again (LOCAL MAC given as the uplink MAC, which
        // says nothing more): no change.
        let mut same = h1();
        same.local_mac = Some(same.mac);
        assert_eq!(m.register_host(same).unwrap(), vec![]);
        // A new address is an update of the same host, containers kept.
        let mut moved = h1();
        moved.ip = "192.168.0.9".parse().unwrap();
        let ch = m.register_host(moved.clone()).unwrap();
        assert_eq!(ch, vec![Change::Put(Object::Host(moved.clone()))]);
        assert_eq!(m.hosts["h1"], moved);
        assert_eq!(m.containers["a"].host, "h1");
        // A new host.
        let mut h2 = h1();
        h2.name = "h2".into();
        h2.dpid = Dpid(2);
        h2.ip = "192.168.0.2".parse().unwrap();
        h2.mac = "02:00:00:00:00:02".parse().unwrap();
        m.register_host(h2.clone()).unwrap();
        // Refused, model untouched: the name with another datapath id; the
        // datapath id, IP or MAC of another host; the uplink on a
        // container's port.
        let before = m.clone();
        let mut other = moved.clone();
        other.dpid = Dpid(7);
        let e = m.register_host(other).unwrap_err();
        assert!(
            matches!(e, ModelError::Conflict { field: "dpid", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("registered with datapath id"), "{e}");
        type Tweak = fn(&mut Host);
        let cases: [(&str, Tweak); 4] = [
            ("dpid", |h| h.dpid = Dpid(2)),
            ("ip", |h| h.ip = "192.168.0.2".parse().unwrap()),
            ("mac", |h| h.mac = "02:00:00:00:00:02".parse().unwrap()),
            ("uplink_port", |h| h.uplink_port = 2),
        ];
        for (field, f) in cases {
            let mut h = moved.clone();
            f(&mut h);
            let e = m.register_host(h).unwrap_err();
            assert!(
                matches!(e, ModelError::Conflict { field: got, .. } if got == field),
                "{field}: {e}"
            );
        }
        assert_eq!(m, before);
    }

    #[test]
    fn container_allocation_and_errors_change_nothing() {
        let mut m = base();
        assert_eq!(
            m.networks["n1"].gateway,
            "10.0.0.1".parse::<Ipv4Addr>().unwrap()
        );
        m.add_container(spec("a", 2), pool()).unwrap();
        m.add_container(spec("b", 3), pool()).unwrap();
        assert_eq!(
            m.containers["a"].ip,
            "10.0.0.2".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            m.containers["b"].ip,
            "10.0.0.3".parse::<Ipv4Addr>().unwrap()
        );
        assert_ne!(m.containers["a"].physical_ip, m.containers["b"].physical_ip);
        assert_ne!(m.containers["a"].cookie_id, m.containers["b"].cookie_id);
        let before = m.clone();
        let mut bad = spec("c", 3);
        assert!(matches!(
            m.add_container(bad.clone(), pool()),
            Err(ModelError::Conflict { field: "port", .. })
        ));
        bad.port = 1;
        assert!(matches!(
            m.add_container(bad.clone(), pool()),
            Err(ModelError::Conflict { field: "port", .. })
        ));
        bad.port = 4;
        bad.ip = Some("10.0.1.5".parse().unwrap());
        let e = m.add_container(bad.clone(), pool()).unwrap_err();
        assert_eq!(e.field(), Some("ip"));
        assert!(e.to_string().contains("outside"), "{e}");
        bad.ip = Some("10.0.0.2".parse().unwrap());
        assert!(m.add_container(bad.clone(), pool()).is_err());
        bad.ip = None;
        bad.network = "nope".into();
        assert!(matches!(
            m.add_container(bad.clone(), pool()),
            Err(ModelError::NotFound { .. })
        ));
        assert!(matches!(
            m.add_container(spec("a", 9), pool()),
            Err(ModelError::Duplicate { .. })
        ));
        assert_eq!(m, before);
    }

    #[test]
    fn requested_macs_stay_out_of_the_generated_range() {
        let mut m = base();
        m.add_container(spec("a", 2), pool()).unwrap();
        let generated = MacAddr::container(m.containers["a"].cookie_id + 1);
        let before = m.clone();
        let mut s = spec("b", 3);
        s.mac = Some(generated);
        let e = m.add_container(s.clone(), pool()).unwrap_err();
        assert_eq!(e.field(), Some("mac"));
        assert!(
            e.to_string()
                .contains("02:da:10:00:00:00-02:da:1f:ff:ff:ff"),
            "{e}"
        );
        assert_eq!(m, before);
        s.mac = Some("02:00:00:00:00:0b".parse().unwrap());
        m.add_container(s, pool()).unwrap();
        // The next generated MAC is then free for c.
        m.add_container(spec("c", 4), pool()).unwrap();
        let macs: std::collections::HashSet<_> = m.containers.values().map(|c| c.mac).collect();
        assert_eq!(macs.len(), 3);
    }

    #[test]
    fn removal_cascades_and_guards() {
        let mut m = base();
        m.add_container(spec("a", 2), pool()).unwrap();
        m.add_container(spec("b", 3), pool()).unwrap();
        m.set_pair("a", "b", PairAction::Disconnect).unwrap();
        m.create_firewall("web", "a", vec!["8080:80".parse().unwrap()])
            .unwrap();
        assert!(m.remove_host("h1").is_err());
        assert!(m.remove_network("n1").is_err());
        let ch = m.remove_container("a").unwrap();
        assert_eq!(ch.len(), 3);
        assert!(m.policies.is_empty() && m.firewalls.is_empty());
    }

    #[test]
    fn firewall_rules_parse_and_conflict() {
        assert_eq!(
            "8080:80/udp".parse::<FirewallRule>().unwrap(),
            FirewallRule {
                proto: Proto::Udp,
                host_port: 8080,
                container_port: 80
            }
        );
        for bad in ["8080", "0:80", "80:x", "8080:80/icmp", "70000:80", ""] {
            assert!(bad.parse::<FirewallRule>().is_err(), "{bad}");
        }
        let mut m = base();
        m.add_container(spec("a", 2), pool()).unwrap();
        m.add_container(spec("b", 3), pool()).unwrap();
        m.create_firewall("w1", "a", vec!["8080:80".parse().unwrap()])
            .unwrap();
        assert!(m
            .create_firewall("w2", "b", vec!["8080:81".parse().unwrap()])
            .is_err());
        assert!(m
            .create_firewall("w2", "b", vec!["8080:81/udp".parse().unwrap()])
            .is_ok());
    }

    #[test]
    fn object_json_round_trip() {
        let mut m = base();
        let ch = m.add_container(spec("a", 2), pool()).unwrap();
        for c in ch {
            if let Change::Put(o) = c {
                let j = o.to_json().unwrap();
                assert_eq!(Object::from_json(o.kind(), &j).unwrap(), o);
            }
        }
    }
}
