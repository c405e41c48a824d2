//! Flow builders and the PACKET_IN decision logic.

use std::net::Ipv4Addr;

use crate::addr::Dpid;
use crate::model::{Container, FirewallRule, Host};

use super::cookie::{self, Kind};
use super::flow::{
    priority, ActionSpec, Decision, FlowSpec, Ipv4Match, MatchSpec, ETH_TYPE_ARP, ETH_TYPE_IPV4,
    PORT_CONTROLLER, PORT_LOCAL,
};
use super::hops;
use super::packet::{with_checksums, Arp, Ipv4, Packet, L3};
use super::view::{Resolution, Snapshot};
use super::{Config, DenyReason, Outcome, Verdict};

fn hotplug(
    cfg: &Config,
    dpid: Dpid,
    cookie: u64,
    m: MatchSpec,
    actions: Vec<ActionSpec>,
) -> FlowSpec {
    FlowSpec {
        dpid,
        table: cfg.table,
        priority: priority::HOTPLUG,
        cookie,
        idle_timeout: cfg.idle_timeout,
        hard_timeout: 0,
        match_: m,
        actions,
    }
}

fn ip_match(in_port: u32, src: Ipv4Addr, dst: Ipv4Addr) -> MatchSpec {
    MatchSpec {
        in_port: Some(in_port),
        eth_type: Some(ETH_TYPE_IPV4),
        ipv4_src: Some(Ipv4Match::exact(src)),
        ipv4_dst: Some(Ipv4Match::exact(dst)),
        ..Default::default()
    }
}

/// The match of traffic container `c` sends to `dst`: its port, and its
/// own Ethernet and IPv4 sources (anti-spoofing by flow: a frame with
/// another source misses every flow and comes to the controller, which
/// denies it as spoofed).
fn from_ctr(c: &Container, dst: Ipv4Addr) -> MatchSpec {
    MatchSpec {
        eth_src: Some(c.mac),
        ..ip_match(c.port, c.ip, dst)
    }
}

/// The flows carrying `src` -> `dst`, each handed to `each` (one flow
/// same-host, two cross-host: egress on src's host, then ingress on dst's
/// host).
fn direction(
    cfg: &Config,
    src: (&Container, &Host),
    dst: (&Container, &Host),
    cookie: u64,
    mut each: impl FnMut(FlowSpec),
) {
    let ((a, h1), (b, h2)) = (src, dst);
    if h1.name == h2.name {
        return each(hotplug(
            cfg,
            h1.dpid,
            cookie,
            from_ctr(a, b.ip),
            vec![
                ActionSpec::SetEthSrc(cfg.gateway_mac),
                ActionSpec::SetEthDst(b.mac),
                ActionSpec::Output(b.port),
            ],
        ));
    }
    // Two virtual routers, each decrementing the TTL (see `hops`).
    each(hotplug(
        cfg,
        h1.dpid,
        cookie,
        from_ctr(a, b.ip),
        vec![
            ActionSpec::DecTtl,
            ActionSpec::SetEthSrc(h1.mac),
            ActionSpec::SetEthDst(h2.mac),
            ActionSpec::SetIpv4Src(a.physical_ip),
            ActionSpec::SetIpv4Dst(b.physical_ip),
            ActionSpec::Output(h1.uplink_port),
        ],
    ));
    each(hotplug(
        cfg,
        h2.dpid,
        cookie,
        ip_match(h2.uplink_port, a.physical_ip, b.physical_ip),
        vec![
            ActionSpec::DecTtl,
            ActionSpec::SetEthSrc(cfg.gateway_mac),
            ActionSpec::SetEthDst(b.mac),
            ActionSpec::SetIpv4Src(a.ip),
            ActionSpec::SetIpv4Dst(b.ip),
            ActionSpec::Output(b.port),
        ],
    ));
}

/// The flows of a pair, ordered remote-first for a packet entering at
/// `local` (see the module docs of [`super`]); returns the decisions and the
/// actions to apply to the punted packet.
///
/// The reverse direction (`y` -> `x`) is installed only if `y` itself
/// resolves `x`'s IP to `x`: with overlapping subnets `y`'s own network may
/// hold another container with that IP, which must keep receiving `y`'s
/// packets to it.
fn pair_decisions(
    snap: &Snapshot,
    cfg: &Config,
    x: (&Container, &Host),
    y: (&Container, &Host),
    local: Dpid,
    punted_at_uplink: bool,
) -> (Vec<Decision>, Vec<ActionSpec>) {
    let ck = cookie::pair(Kind::Pair, x.0.cookie_id, y.0.cookie_id);
    let reverse_ok =
        matches!(snap.resolve(y.0, x.0.ip), Resolution::Container(c) if c.id == x.0.id);
    // Up to 2 flows per direction and the PACKET_OUT the callers append:
    // one allocation, no regrowth.
    let mut all = Vec::with_capacity(5);
    // The punted packet's actions: the forward flow on the datapath that
    // punted it (egress on x's host, or ingress on y's host).
    let punted = usize::from(punted_at_uplink);
    let mut first = None;
    let mut i = 0;
    direction(cfg, x, y, ck, |f| {
        if i == punted {
            first = Some(f.actions.clone());
        }
        i += 1;
        all.push(Decision::AddFlow(f));
    });
    if reverse_ok {
        direction(cfg, y, x, ck, |f| all.push(Decision::AddFlow(f)));
    }
    all.sort_by_key(|d| d.dpid() == local);
    (all, first.unwrap_or_default())
}

fn deny(cfg: &Config, dpid: Dpid, cookie: u64, m: MatchSpec, reason: DenyReason) -> Outcome {
    Outcome {
        decisions: vec![Decision::AddFlow(FlowSpec {
            dpid,
            table: cfg.table,
            priority: priority::HOTPLUG,
            cookie,
            idle_timeout: 0,
            hard_timeout: cfg.deny_timeout,
            match_: m,
            actions: vec![],
        })],
        verdict: Verdict::Denied(reason),
    }
}

/// The cookie of a drop flow for `x` -> `dst`: it names the pair when exactly
/// one other container has that IP, so that a policy change that allows the
/// pair removes the drop at once; otherwise only `x` (the drop then lasts at
/// most [`Config::deny_timeout`]).
fn deny_cookie(snap: &Snapshot, x: &Container, dst: Ipv4Addr) -> u64 {
    let mut others = snap.containers_with_ip(dst).filter(|c| c.id != x.id);
    match (others.next(), others.next()) {
        (Some(t), None) => cookie::pair(Kind::Deny, x.cookie_id, t.cookie_id),
        _ => cookie::single(Kind::Deny, x.cookie_id),
    }
}

fn ignored() -> Outcome {
    Outcome {
        decisions: vec![],
        verdict: Verdict::Ignored,
    }
}

/// The permanent flows that punt new firewall connections for `c`.
pub(crate) fn firewall_punts(
    cfg: &Config,
    c: &Container,
    h: &Host,
    rules: &[FirewallRule],
) -> Vec<FlowSpec> {
    rules
        .iter()
        .map(|r| FlowSpec {
            dpid: h.dpid,
            table: cfg.table,
            priority: priority::FIREWALL_PUNT,
            cookie: cookie::single(Kind::Firewall, c.cookie_id),
            idle_timeout: 0,
            hard_timeout: 0,
            match_: MatchSpec {
                in_port: Some(h.uplink_port),
                eth_type: Some(ETH_TYPE_IPV4),
                ipv4_dst: Some(Ipv4Match::exact(h.ip)),
                ip_proto: Some(r.proto.number()),
                tp_dst: Some(r.host_port),
                ..Default::default()
            },
            actions: vec![ActionSpec::Controller],
        })
        .collect()
}

pub(crate) fn packet_in(
    snap: &Snapshot,
    cfg: &Config,
    dpid: Dpid,
    in_port: u32,
    data: &[u8],
) -> Outcome {
    let Some(host) = snap.host_by_dpid(dpid) else {
        return ignored();
    };
    // The IPv4 payload is never read here: not copied.
    let Ok(pkt) = Packet::parse_headers(data) else {
        return ignored();
    };
    if in_port == host.uplink_port {
        return from_uplink(snap, cfg, host, &pkt, data);
    }
    if in_port == PORT_LOCAL {
        return from_local(snap, cfg, host, &pkt, data);
    }
    let Some(x) = snap.container_at(&host.name, in_port) else {
        return deny(
            cfg,
            dpid,
            cookie::port_deny(in_port),
            MatchSpec {
                in_port: Some(in_port),
                ..Default::default()
            },
            DenyReason::UnknownPort,
        );
    };
    let xc = cookie::single(Kind::Deny, x.cookie_id);
    if pkt.eth_src != x.mac {
        return deny(
            cfg,
            dpid,
            xc,
            MatchSpec {
                in_port: Some(in_port),
                eth_src: Some(pkt.eth_src),
                ..Default::default()
            },
            DenyReason::Spoofed,
        );
    }
    match &pkt.l3 {
        L3::Arp(a) => arp(snap, cfg, host, x, a),
        L3::Ipv4(ip) => from_container(snap, cfg, host, x, ip, data),
        L3::Other => deny(
            cfg,
            dpid,
            xc,
            MatchSpec {
                in_port: Some(in_port),
                eth_type: Some(pkt.eth_type),
                ..Default::default()
            },
            DenyReason::Unsupported,
        ),
    }
}

fn arp(snap: &Snapshot, cfg: &Config, host: &Host, x: &Container, a: &Arp) -> Outcome {
    if a.op != 1 {
        return ignored();
    }
    let drop_arp = |ck: u64, reason| {
        deny(
            cfg,
            host.dpid,
            ck,
            MatchSpec {
                in_port: Some(x.port),
                eth_type: Some(ETH_TYPE_ARP),
                arp_tpa: Some(a.tpa),
                ..Default::default()
            },
            reason,
        )
    };
    if a.spa != x.ip || a.sha != x.mac {
        return drop_arp(cookie::single(Kind::Deny, x.cookie_id), DenyReason::Spoofed);
    }
    let answer = match snap.resolve(x, a.tpa) {
        Resolution::Gateway | Resolution::Outside | Resolution::Container(_) => Ok(()),
        Resolution::Denied(r) => Err(r),
    };
    match answer {
        Ok(()) => Outcome {
            decisions: vec![Decision::PacketOut {
                dpid: host.dpid,
                in_port: PORT_CONTROLLER,
                actions: vec![ActionSpec::Output(x.port)],
                data: Packet::arp_reply(a, cfg.gateway_mac).emit(),
            }],
            verdict: Verdict::ArpReply,
        },
        Err(r) => {
            // Name the pair in the cookie when the target is a container, so
            // that a policy change that allows it removes the drop at once.
            drop_arp(deny_cookie(snap, x, a.tpa), r)
        }
    }
}

fn from_container(
    snap: &Snapshot,
    cfg: &Config,
    host: &Host,
    x: &Container,
    ip: &Ipv4,
    data: &[u8],
) -> Outcome {
    let m = ip_match(x.port, ip.src, ip.dst);
    if ip.src != x.ip {
        return deny(
            cfg,
            host.dpid,
            cookie::single(Kind::Deny, x.cookie_id),
            m,
            DenyReason::Spoofed,
        );
    }
    if ip.dst.is_broadcast() || ip.dst.is_multicast() {
        return deny(
            cfg,
            host.dpid,
            cookie::single(Kind::Deny, x.cookie_id),
            m,
            DenyReason::Unsupported,
        );
    }
    match snap.resolve(x, ip.dst) {
        Resolution::Container(y) => {
            let Some(h2) = snap.host_of(y) else {
                return deny(
                    cfg,
                    host.dpid,
                    cookie::single(Kind::Deny, x.cookie_id),
                    m,
                    DenyReason::UnknownDestination,
                );
            };
            let (mut decisions, actions) =
                pair_decisions(snap, cfg, (x, host), (y, h2), host.dpid, false);
            if host.name != h2.name && hops::expires(ip) {
                // Expired at the container-side router: the gateway answers.
                let gw = snap.model.networks.get(&x.network).map(|n| n.gateway);
                if let Some(f) = gw.and_then(|g| {
                    hops::time_exceeded(data, g, x, cfg.gateway_mac, (ip.src, ip.dst))
                }) {
                    decisions.push(Decision::PacketOut {
                        dpid: host.dpid,
                        in_port: PORT_CONTROLLER,
                        actions: vec![ActionSpec::Output(x.port)],
                        data: f,
                    });
                }
                return Outcome {
                    decisions,
                    verdict: Verdict::TtlExceeded,
                };
            }
            decisions.push(Decision::PacketOut {
                dpid: host.dpid,
                in_port: x.port,
                actions,
                data: with_checksums(data),
            });
            let verdict = if host.name == h2.name {
                Verdict::SameHost
            } else {
                Verdict::CrossHost
            };
            Outcome { decisions, verdict }
        }
        Resolution::Outside => {
            let (out, back) = nat_flows(cfg, host, x, ip.dst);
            let actions = out.actions.clone();
            Outcome {
                decisions: vec![
                    Decision::AddFlow(back),
                    Decision::AddFlow(out),
                    Decision::PacketOut {
                        dpid: host.dpid,
                        in_port: x.port,
                        actions,
                        data: with_checksums(data),
                    },
                ],
                verdict: Verdict::NatOut,
            }
        }
        Resolution::Gateway => deny(
            cfg,
            host.dpid,
            cookie::single(Kind::Deny, x.cookie_id),
            m,
            DenyReason::Gateway,
        ),
        Resolution::Denied(r) => deny(cfg, host.dpid, deny_cookie(snap, x, ip.dst), m, r),
    }
}

/// NAT-out flows for `x` to outside address `d`: (outbound, return).
fn nat_flows(cfg: &Config, host: &Host, x: &Container, d: Ipv4Addr) -> (FlowSpec, FlowSpec) {
    let ck = cookie::single(Kind::NatOut, x.cookie_id);
    let out = hotplug(
        cfg,
        host.dpid,
        ck,
        from_ctr(x, d),
        vec![
            ActionSpec::SetEthDst(host.local_mac()),
            ActionSpec::SetIpv4Src(x.physical_ip),
            ActionSpec::Local,
        ],
    );
    let back = hotplug(
        cfg,
        host.dpid,
        ck,
        ip_match(PORT_LOCAL, d, x.physical_ip),
        vec![
            ActionSpec::SetEthSrc(cfg.gateway_mac),
            ActionSpec::SetEthDst(x.mac),
            ActionSpec::SetIpv4Dst(x.ip),
            ActionSpec::Output(x.port),
        ],
    );
    (out, back)
}

/// A reply from outside came back through the host stack after the return
/// flow expired.
fn from_local(snap: &Snapshot, cfg: &Config, host: &Host, pkt: &Packet, data: &[u8]) -> Outcome {
    let Some(ip) = pkt.ipv4() else {
        return ignored();
    };
    let Some(x) = snap.container_by_physical(ip.dst) else {
        return ignored();
    };
    let nat_ok = snap
        .model
        .networks
        .get(&x.network)
        .is_some_and(|n| n.nat_out)
        && x.host == host.name
        && matches!(snap.resolve(x, ip.src), Resolution::Outside);
    if !nat_ok {
        return deny(
            cfg,
            host.dpid,
            cookie::single(Kind::Deny, x.cookie_id),
            ip_match(PORT_LOCAL, ip.src, ip.dst),
            DenyReason::NatDisabled,
        );
    }
    let (out, back) = nat_flows(cfg, host, x, ip.src);
    let actions = back.actions.clone();
    Outcome {
        decisions: vec![
            Decision::AddFlow(back),
            Decision::AddFlow(out),
            Decision::PacketOut {
                dpid: host.dpid,
                in_port: PORT_LOCAL,
                actions,
                data: with_checksums(data),
            },
        ],
        verdict: Verdict::NatOut,
    }
}

fn from_uplink(snap: &Snapshot, cfg: &Config, host: &Host, pkt: &Packet, data: &[u8]) -> Outcome {
    let Some(ip) = pkt.ipv4() else {
        return ignored();
    };
    if ip.dst == host.ip {
        return firewall_in(snap, cfg, host, pkt, ip, data);
    }
    // A cross-host packet whose ingress flow is missing here (expired
    // earlier than the egress flow on the other side).
    let (Some(x), Some(y)) = (
        snap.container_by_physical(ip.src),
        snap.container_by_physical(ip.dst),
    ) else {
        return ignored();
    };
    let Some(hx) = snap.host_of(x) else {
        return ignored();
    };
    if y.host != host.name || hx.name == host.name {
        return ignored();
    }
    let st = snap.pair_state(x, y);
    if !(st.allowed && st.x_reaches_y) {
        let reason = snap.allowed(x, y).err().unwrap_or(DenyReason::Ambiguous);
        return deny(
            cfg,
            host.dpid,
            cookie::pair(Kind::Deny, x.cookie_id, y.cookie_id),
            ip_match(host.uplink_port, ip.src, ip.dst),
            reason,
        );
    }
    let (mut decisions, actions) = pair_decisions(snap, cfg, (x, hx), (y, host), host.dpid, true);
    if hops::expires(ip) {
        // Expired at this host's router: its underlay IP answers, to the
        // sender on its own host, quoting the probe as the sender sent it.
        if let Some(f) = hops::time_exceeded(data, host.ip, x, cfg.gateway_mac, (x.ip, y.ip)) {
            decisions.push(Decision::PacketOut {
                dpid: hx.dpid,
                in_port: PORT_CONTROLLER,
                actions: vec![ActionSpec::Output(x.port)],
                data: f,
            });
        }
        return Outcome {
            decisions,
            verdict: Verdict::TtlExceeded,
        };
    }
    decisions.push(Decision::PacketOut {
        dpid: host.dpid,
        in_port: host.uplink_port,
        actions,
        data: with_checksums(data),
    });
    Outcome {
        decisions,
        verdict: Verdict::CrossHost,
    }
}

fn firewall_in(
    snap: &Snapshot,
    cfg: &Config,
    host: &Host,
    pkt: &Packet,
    ip: &Ipv4,
    data: &[u8],
) -> Outcome {
    let Some((sport, dport)) = ip.ports else {
        return ignored();
    };
    let hit = snap.model.firewalls.values().find_map(|f| {
        let c = snap.model.containers.get(&f.container)?;
        if c.host != host.name {
            return None;
        }
        let r = f
            .rules
            .iter()
            .find(|r| r.proto.number() == ip.proto && r.host_port == dport)?;
        Some((c, *r))
    });
    let Some((c, r)) = hit else {
        return ignored();
    };
    let ck = cookie::single(Kind::Firewall, c.cookie_id);
    let conn = |m: MatchSpec, actions: Vec<ActionSpec>| FlowSpec {
        dpid: host.dpid,
        table: cfg.table,
        priority: priority::FIREWALL_CONN,
        cookie: ck,
        idle_timeout: cfg.idle_timeout,
        hard_timeout: 0,
        match_: m,
        actions,
    };
    let fwd = conn(
        MatchSpec {
            ip_proto: Some(ip.proto),
            tp_src: Some(sport),
            tp_dst: Some(dport),
            ..ip_match(host.uplink_port, ip.src, host.ip)
        },
        vec![
            ActionSpec::SetEthSrc(cfg.gateway_mac),
            ActionSpec::SetEthDst(c.mac),
            ActionSpec::SetIpv4Dst(c.ip),
            ActionSpec::SetTpDst(r.container_port),
            ActionSpec::Output(c.port),
        ],
    );
    let rev = conn(
        MatchSpec {
            ip_proto: Some(ip.proto),
            tp_src: Some(r.container_port),
            tp_dst: Some(sport),
            ..from_ctr(c, ip.src)
        },
        vec![
            ActionSpec::SetEthSrc(host.mac),
            ActionSpec::SetEthDst(pkt.eth_src),
            ActionSpec::SetIpv4Src(host.ip),
            ActionSpec::SetTpSrc(r.host_port),
            ActionSpec::Output(host.uplink_port),
        ],
    );
    let actions = fwd.actions.clone();
    Outcome {
        decisions: vec![
            Decision::AddFlow(rev),
            Decision::AddFlow(fwd),
            Decision::PacketOut {
                dpid: host.dpid,
                in_port: host.uplink_port,
                actions,
                data: with_checksums(data),
            },
        ],
        verdict: Verdict::Firewall,
    }
}
