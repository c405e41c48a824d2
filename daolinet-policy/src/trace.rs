//! `trace`: would a container reach a destination, and how? Answered from
//! the model and the flows the hosts hold, without sending anything.
//!
//! The packet the source would send (from its MAC and IP to the gateway
//! MAC, to the destination's IP, with the protocol and port asked for) is
//! followed hop by hop: at each host the highest-priority flow that matches
//! it (among the flows the controller installed there, see
//! [`trace`]'s `installed`), and where that flow only sends it to the
//! controller, the flows [`crate::handle_packet_in`] would install for it.
//! The actions (rewrites, outputs) are applied as the fake switch applies
//! them ([`crate::fakeswitch::apply`]); an output on the uplink continues at
//! the host owning the destination MAC. The answer says the policy
//! verdict and why (networks, group, pair policy), the flow of each host
//! with its rewrites and output, and where the packet ends.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::addr::{Dpid, MacAddr};
use crate::fakeswitch::{apply, matches};
use crate::flow::{ActionSpec, Decision, FlowSpec, PORT_CONTROLLER, PORT_LOCAL};
use crate::model::{Container, PairAction};
use crate::packet::{Ipv4, Packet, L3};
use crate::view::{Resolution, Snapshot};
use crate::{handle_packet_in, Config, DenyReason, Verdict, ETH_TYPE_IPV4};

/// The transport of a traced packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceProto {
    /// ICMP echo request.
    #[default]
    Icmp,
    /// TCP (a SYN).
    Tcp,
    /// UDP.
    Udp,
}

impl TraceProto {
    fn number(self) -> u8 {
        match self {
            TraceProto::Icmp => 1,
            TraceProto::Tcp => 6,
            TraceProto::Udp => 17,
        }
    }
}

/// What to trace (body of `POST /api/trace`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    /// Source container (id or name).
    pub src: String,
    /// Destination: a container (id or name) or an IPv4 address.
    pub dst: String,
    /// Protocol (default ICMP).
    #[serde(default)]
    pub proto: TraceProto,
    /// Destination port (TCP and UDP only; default 80 for TCP, 53 for UDP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    /// Also send a real probe packet through the switches and report what
    /// they did with it ([`crate::live`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub live: bool,
    /// How long a live probe may take to arrive, in milliseconds (default
    /// [`crate::live::DEFAULT_TIMEOUT_MS`], at most
    /// [`crate::live::MAX_TIMEOUT_MS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// Why a trace cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    /// No container has this id or name.
    #[error("unknown {what} container {name:?}")]
    UnknownContainer {
        /// `source` or `destination`.
        what: &'static str,
        /// What was asked for.
        name: String,
    },
    /// The source's host is not registered.
    #[error("container {container:?} is on host {host:?}, which is not registered")]
    UnknownHost {
        /// The container.
        container: String,
        /// Its host.
        host: String,
    },
    /// A port given for ICMP, or port 0.
    #[error("{0}")]
    BadRequest(String),
}

impl TraceError {
    /// The request field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            TraceError::UnknownContainer { what: "source", .. }
            | TraceError::UnknownHost { .. } => "src",
            TraceError::UnknownContainer { .. } => "dst",
            TraceError::BadRequest(m) if m.contains("timeout") => "timeout_ms",
            TraceError::BadRequest(_) => "dport",
        }
    }
}

/// A container at one end of a trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEnd {
    /// Name.
    pub container: String,
    /// Network.
    pub network: String,
    /// Logical IP.
    pub ip: Ipv4Addr,
    /// Host.
    pub host: String,
    /// Port on the host.
    pub port: u32,
}

impl TraceEnd {
    fn of(c: &Container) -> Self {
        TraceEnd {
            container: c.name.clone(),
            network: c.network.clone(),
            ip: c.ip,
            host: c.host.clone(),
            port: c.port,
        }
    }
}

/// Where the flow a hop used comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowSource {
    /// The host holds it now.
    Installed,
    /// The host has no such flow: the first packet goes to the controller,
    /// which installs this one.
    OnFirstPacket,
}

/// One host the packet crosses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceHop {
    /// Host name.
    pub host: String,
    /// Its datapath.
    pub dpid: Dpid,
    /// The port the packet enters on.
    pub in_port: u32,
    /// The flow that handles it (`None`: no flow, the packet is lost).
    pub flow: Option<FlowSpec>,
    /// Where that flow comes from.
    pub source: FlowSource,
    /// The packet's addresses as they leave this host (after the rewrites).
    pub out_src: Ipv4Addr,
    /// Destination after the rewrites.
    pub out_dst: Ipv4Addr,
    /// Destination MAC after the rewrites.
    pub out_eth_dst: MacAddr,
    /// Output port (`None`: dropped here).
    pub output: Option<u32>,
}

/// Where the traced packet ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TraceResult {
    /// Delivered to a container.
    Delivered {
        /// The container's name.
        container: String,
        /// Its host.
        host: String,
        /// Its port.
        port: u32,
    },
    /// Leaves through a host's stack (NAT-out).
    Outside {
        /// The host.
        host: String,
    },
    /// Dropped.
    Dropped {
        /// Why.
        reason: String,
    },
}

/// The answer of [`trace`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    /// The source.
    pub src: TraceEnd,
    /// The destination container, when the destination resolves to one.
    pub dst: Option<TraceEnd>,
    /// The destination address traced.
    pub dst_ip: Ipv4Addr,
    /// Protocol.
    pub proto: TraceProto,
    /// Destination port (TCP, UDP).
    pub dport: Option<u16>,
    /// The policy's verdict for the first packet.
    pub verdict: Verdict,
    /// Why, in words (networks, group, pair policy, NAT).
    pub reason: String,
    /// The hosts crossed, in order.
    pub hops: Vec<TraceHop>,
    /// The end.
    pub result: TraceResult,
    /// What the switches did with a real probe (`live` requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<crate::live::LiveReport>,
    /// The traced packet as the source sends it (the frame a live probe
    /// injects at the source's port).
    #[serde(skip)]
    pub frame: Vec<u8>,
}

/// The source port of traced TCP and UDP packets.
const TRACE_SPORT: u16 = 40000;

/// Traces `req` in `snap`; `installed(dpid)` gives the flows a host holds
/// now (the controller's record of what it installed).
pub fn trace(
    snap: &Snapshot,
    cfg: &Config,
    installed: &dyn Fn(Dpid) -> Vec<FlowSpec>,
    req: &TraceRequest,
) -> Result<Trace, TraceError> {
    let src = snap
        .model
        .container(&req.src)
        .map_err(|_| TraceError::UnknownContainer {
            what: "source",
            name: req.src.clone(),
        })?;
    let host = snap.host_of(src).ok_or_else(|| TraceError::UnknownHost {
        container: src.name.clone(),
        host: src.host.clone(),
    })?;
    let dport = match (req.proto, req.dport) {
        (TraceProto::Icmp, Some(_)) => {
            return Err(TraceError::BadRequest(
                "a destination port needs --proto tcp or udp".into(),
            ))
        }
        (_, Some(0)) => {
            return Err(TraceError::BadRequest(
                "destination port 0 is not a port".into(),
            ))
        }
        (TraceProto::Icmp, None) => None,
        (TraceProto::Tcp, p) => Some(p.unwrap_or(80)),
        (TraceProto::Udp, p) => Some(p.unwrap_or(53)),
    };
    match (req.live, req.timeout_ms) {
        (false, Some(_)) => {
            return Err(TraceError::BadRequest(
                "a timeout is for live probes only (--live)".into(),
            ))
        }
        (true, Some(t)) if t == 0 || t > crate::live::MAX_TIMEOUT_MS => {
            return Err(TraceError::BadRequest(format!(
                "timeout {t} ms: give 1 to {} ms",
                crate::live::MAX_TIMEOUT_MS
            )))
        }
        _ => {}
    }
    let (dst_ip, named) = match req.dst.parse::<Ipv4Addr>() {
        Ok(ip) => (ip, None),
        Err(_) => {
            let c = snap
                .model
                .container(&req.dst)
                .map_err(|_| TraceError::UnknownContainer {
                    what: "destination",
                    name: req.dst.clone(),
                })?;
            (c.ip, Some(c))
        }
    };
    let resolved = match snap.resolve(src, dst_ip) {
        Resolution::Container(c) => Some(c),
        _ => None,
    };
    let dst = named.or(resolved);
    let pkt = Packet {
        eth_dst: cfg.gateway_mac,
        eth_src: src.mac,
        eth_type: ETH_TYPE_IPV4,
        l3: L3::Ipv4(Ipv4 {
            src: src.ip,
            dst: dst_ip,
            proto: req.proto.number(),
            ttl: 64,
            ports: dport.map(|d| (TRACE_SPORT, d)),
            payload: match req.proto {
                // An echo request header (identifier and sequence 1).
                TraceProto::Icmp => vec![8, 0, 0xf7, 0xfd, 0, 1, 0, 1],
                // TCP: sequence, ack, offset 5 with SYN, window, sum, urgent.
                TraceProto::Tcp => vec![0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0],
                TraceProto::Udp => vec![0, 8, 0, 0],
            },
        }),
    };
    let frame = pkt.emit();
    let outcome = handle_packet_in(snap, cfg, host.dpid, src.port, &frame);
    let on_first: Vec<FlowSpec> = outcome
        .decisions
        .iter()
        .filter_map(|d| match d {
            Decision::AddFlow(f) => Some(f.clone()),
            _ => None,
        })
        .collect();
    let reason = explain(snap, src, dst, resolved, dst_ip, outcome.verdict);
    let (hops, result) = walk(snap, installed, &on_first, host.dpid, src.port, pkt);
    // A denial is the policy's answer even where an earlier flow still
    // forwards the packet; the walk shows what the hosts do now.
    Ok(Trace {
        src: TraceEnd::of(src),
        dst: dst.map(TraceEnd::of),
        dst_ip,
        proto: req.proto,
        dport,
        verdict: outcome.verdict,
        reason,
        hops,
        result,
        live: None,
        frame,
    })
}

/// The reachability rule that decided, in words.
fn explain(
    snap: &Snapshot,
    src: &Container,
    dst: Option<&Container>,
    resolved: Option<&Container>,
    dst_ip: Ipv4Addr,
    verdict: Verdict,
) -> String {
    let pair = |y: &Container| {
        snap.model
            .policies
            .values()
            .find(|p| (p.a == src.id && p.b == y.id) || (p.a == y.id && p.b == src.id))
            .map(|p| p.action)
    };
    let rule = |y: &Container| -> String {
        if let Some(a) = pair(y) {
            let what = match a {
                PairAction::Connect => "connects",
                PairAction::Disconnect => "disconnects",
            };
            return format!("a pair policy {what} {} and {}", src.name, y.name);
        }
        if src.network == y.network {
            return format!("both are in network {}", src.network);
        }
        match snap
            .model
            .groups
            .values()
            .find(|g| g.networks.contains(&src.network) && g.networks.contains(&y.network))
        {
            Some(g) => format!(
                "group {} joins networks {} and {}",
                g.name, src.network, y.network
            ),
            None => format!(
                "networks {} ({}) and {} ({}) share no group and no pair policy joins them",
                src.network, src.name, y.network, y.name
            ),
        }
    };
    match verdict {
        Verdict::SameHost | Verdict::CrossHost => match resolved.or(dst) {
            Some(y) => format!("allowed: {}", rule(y)),
            None => "allowed".into(),
        },
        Verdict::NatOut => format!(
            "allowed: {dst_ip} is outside every network and network {} has NAT-out \
             (the source becomes {}, then the host's address)",
            src.network, src.physical_ip
        ),
        Verdict::Denied(r) => {
            let why = match (r, dst) {
                (DenyReason::Isolated | DenyReason::PairDisconnected, Some(y)) => rule(y),
                (DenyReason::Isolated, None) => {
                    format!("no container {} may reach has address {dst_ip}", src.name)
                }
                (DenyReason::NatDisabled, _) => format!(
                    "{dst_ip} is outside every network and network {} has NAT-out off",
                    src.network
                ),
                (DenyReason::UnknownDestination, _) => {
                    format!("no container has {dst_ip}, which is inside a known network")
                }
                (DenyReason::Gateway, _) => format!("{dst_ip} is the gateway address"),
                (DenyReason::Ambiguous, _) => {
                    format!("several containers {} may reach have {dst_ip}", src.name)
                }
                (DenyReason::Spoofed, _) => "the source addresses are not the container's".into(),
                (DenyReason::UnknownPort, _) => "the source port is not registered".into(),
                (DenyReason::Unsupported, _) => "the controller does not forward this".into(),
                (DenyReason::PairDisconnected, None) => "a pair policy disconnects them".into(),
            };
            format!("denied ({}): {why}", r.as_str())
        }
        Verdict::TtlExceeded => "the TTL expires on the way".into(),
        Verdict::ArpReply | Verdict::Firewall | Verdict::Ignored => format!("{verdict:?}"),
    }
}

/// The best flow for `pkt` on `in_port` among `flows` of `dpid`.
fn best<'a>(
    flows: impl Iterator<Item = &'a FlowSpec>,
    dpid: Dpid,
    in_port: u32,
    pkt: &Packet,
) -> Option<&'a FlowSpec> {
    let mut best: Option<&FlowSpec> = None;
    for f in flows {
        if f.dpid == dpid
            && matches(&f.match_, in_port, pkt)
            && best.is_none_or(|b| f.priority > b.priority)
        {
            best = Some(f);
        }
    }
    best
}

fn punts(f: &FlowSpec) -> bool {
    f.actions.iter().any(|a| {
        matches!(
            a,
            ActionSpec::Controller | ActionSpec::Output(PORT_CONTROLLER)
        )
    })
}

/// Follows the packet across the hosts.
fn walk(
    snap: &Snapshot,
    installed: &dyn Fn(Dpid) -> Vec<FlowSpec>,
    on_first: &[FlowSpec],
    mut dpid: Dpid,
    mut in_port: u32,
    mut pkt: Packet,
) -> (Vec<TraceHop>, TraceResult) {
    let mut hops = Vec::new();
    // A packet crosses at most two hosts; a few more catch a loop.
    for _ in 0..4 {
        let Some(host) = snap.host_by_dpid(dpid) else {
            break;
        };
        let now = installed(dpid);
        let (flow, source) = match best(now.iter(), dpid, in_port, &pkt) {
            Some(f) if !punts(f) => (Some(f.clone()), FlowSource::Installed),
            _ => (
                best(on_first.iter(), dpid, in_port, &pkt).cloned(),
                FlowSource::OnFirstPacket,
            ),
        };
        let outs = flow
            .as_ref()
            .map(|f| apply(&f.actions, in_port, &pkt))
            .unwrap_or_default();
        let first = outs.into_iter().next();
        let after = first.as_ref().map_or(&pkt, |(_, p)| p);
        let (out_src, out_dst) = after
            .ipv4()
            .map_or((Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED), |i| {
                (i.src, i.dst)
            });
        hops.push(TraceHop {
            host: host.name.clone(),
            dpid,
            in_port,
            flow: flow.clone(),
            source,
            out_src,
            out_dst,
            out_eth_dst: after.eth_dst,
            output: first.as_ref().map(|(p, _)| *p),
        });
        let Some((port, p)) = first else {
            let reason = match &flow {
                None => format!("no flow on host {} matches it", host.name),
                Some(f) if f.hard_timeout > 0 => format!(
                    "a drop flow on host {} (hard timeout {} s, installed for a denial)",
                    host.name, f.hard_timeout
                ),
                Some(_) => format!("a flow on host {} drops it", host.name),
            };
            return (hops, TraceResult::Dropped { reason });
        };
        if port == PORT_LOCAL {
            return (
                hops,
                TraceResult::Outside {
                    host: host.name.clone(),
                },
            );
        }
        if port == host.uplink_port {
            let Some(next) = snap.model.hosts.values().find(|h| h.mac == p.eth_dst) else {
                return (
                    hops,
                    TraceResult::Dropped {
                        reason: format!(
                            "sent on host {}'s uplink to {}, which no host has",
                            host.name, p.eth_dst
                        ),
                    },
                );
            };
            dpid = next.dpid;
            in_port = next.uplink_port;
            pkt = p;
            continue;
        }
        return match snap.container_at(&host.name, port) {
            Some(c) => (
                hops,
                TraceResult::Delivered {
                    container: c.name.clone(),
                    host: host.name.clone(),
                    port,
                },
            ),
            None => (
                hops,
                TraceResult::Dropped {
                    reason: format!("output to port {port} of host {}, no container", host.name),
                },
            ),
        };
    }
    (
        hops,
        TraceResult::Dropped {
            reason: "the packet loops between hosts".into(),
        },
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{ContainerSpec, Host, Model, NetworkSpec};

    fn host(name: &str, n: u8) -> Host {
        Host {
            name: name.into(),
            dpid: Dpid(u64::from(n)),
            ip: Ipv4Addr::new(192, 168, 0, n),
            mac: MacAddr([2, 0, 0, 0, 0, n]),
            uplink_port: 100,
            local_mac: None,
        }
    }

    /// Two hosts; networks red and blue; a (red, h1), b (red, h2),
    /// c (blue, h2), d (red, h1). Also the live module's tests' model.
    pub(crate) fn model() -> Model {
        let mut m = Model::default();
        m.add_host(host("h1", 1)).unwrap();
        m.add_host(host("h2", 2)).unwrap();
        for (n, s) in [("red", "10.1.0.0/24"), ("blue", "10.2.0.0/24")] {
            m.add_network(NetworkSpec {
                name: n.into(),
                subnet: s.parse().unwrap(),
                gateway: None,
                tenant: None,
                nat_out: None,
            })
            .unwrap();
        }
        for (name, net, h, port) in [
            ("a", "red", "h1", 1),
            ("b", "red", "h2", 1),
            ("c", "blue", "h2", 2),
            ("d", "red", "h1", 2),
        ] {
            m.add_container(
                ContainerSpec {
                    id: name.into(),
                    name: None,
                    network: net.into(),
                    ip: None,
                    mac: None,
                    host: h.into(),
                    port,
                },
                "172.31.0.0/16".parse().unwrap(),
            )
            .unwrap();
        }
        m
    }

    fn req(src: &str, dst: &str) -> TraceRequest {
        TraceRequest {
            src: src.into(),
            dst: dst.into(),
            proto: TraceProto::Icmp,
            dport: None,
            live: false,
            timeout_ms: None,
        }
    }

    fn none(_: Dpid) -> Vec<FlowSpec> {
        Vec::new()
    }

    #[test]
    fn cross_host_pair_shows_both_hosts_rewrites_and_delivery() {
        let snap = Snapshot::new(model());
        let cfg = Config::default();
        let t = trace(&snap, &cfg, &none, &req("a", "b")).unwrap();
        assert_eq!(t.verdict, Verdict::CrossHost);
        assert!(t.reason.contains("both are in network red"), "{}", t.reason);
        assert_eq!(t.hops.len(), 2, "{t:?}");
        let (a, b) = (
            snap.model.container("a").unwrap(),
            snap.model.container("b").unwrap(),
        );
        assert_eq!(t.hops[0].host, "h1");
        assert_eq!(t.hops[0].source, FlowSource::OnFirstPacket);
        assert_eq!(t.hops[0].output, Some(100));
        assert_eq!(
            (t.hops[0].out_src, t.hops[0].out_dst),
            (a.physical_ip, b.physical_ip)
        );
        assert_eq!(t.hops[1].host, "h2");
        assert_eq!(t.hops[1].in_port, 100);
        assert_eq!((t.hops[1].out_src, t.hops[1].out_dst), (a.ip, b.ip));
        assert_eq!(
            t.result,
            TraceResult::Delivered {
                container: "b".into(),
                host: "h2".into(),
                port: 1
            }
        );
        // Once installed, the same flows are reported as installed.
        let flows: Vec<FlowSpec> = t.hops.iter().filter_map(|h| h.flow.clone()).collect();
        let now = move |d: Dpid| flows.iter().filter(|f| f.dpid == d).cloned().collect();
        let again = trace(&snap, &cfg, &now, &req("a", "b")).unwrap();
        assert!(again.hops.iter().all(|h| h.source == FlowSource::Installed));
        assert_eq!(again.result, t.result);
    }

    #[test]
    fn isolated_pair_is_denied_naming_both_networks() {
        let snap = Snapshot::new(model());
        let t = trace(&snap, &Config::default(), &none, &req("a", "c")).unwrap();
        assert_eq!(t.verdict, Verdict::Denied(DenyReason::Isolated));
        assert!(
            t.reason.contains("red") && t.reason.contains("blue"),
            "{}",
            t.reason
        );
        assert!(matches!(t.result, TraceResult::Dropped { .. }), "{t:?}");
        assert_eq!(t.dst.as_ref().map(|d| d.network.as_str()), Some("blue"));
    }

    #[test]
    fn same_host_tcp_and_nat_out() {
        let snap = Snapshot::new(model());
        let mut r = req("a", "d");
        r.proto = TraceProto::Tcp;
        r.dport = Some(8080);
        let t = trace(&snap, &Config::default(), &none, &r).unwrap();
        assert_eq!(t.verdict, Verdict::SameHost);
        assert_eq!(t.hops.len(), 1);
        assert_eq!(t.dport, Some(8080));
        let t = trace(&snap, &Config::default(), &none, &req("a", "8.8.8.8")).unwrap();
        assert_eq!(t.verdict, Verdict::NatOut);
        assert_eq!(t.result, TraceResult::Outside { host: "h1".into() });
    }

    #[test]
    fn unknown_containers_and_bad_requests_are_errors() {
        let snap = Snapshot::new(model());
        let cfg = Config::default();
        let e = trace(&snap, &cfg, &none, &req("nope", "b")).unwrap_err();
        assert_eq!(e.field(), "src");
        assert!(e.to_string().contains("nope"));
        let e = trace(&snap, &cfg, &none, &req("a", "ghost")).unwrap_err();
        assert_eq!(e.field(), "dst");
        let mut r = req("a", "b");
        r.dport = Some(80);
        assert_eq!(trace(&snap, &cfg, &none, &r).unwrap_err().field(), "dport");
        r.proto = TraceProto::Udp;
        r.dport = Some(0);
        assert!(trace(&snap, &cfg, &none, &r).is_err());
    }
}
