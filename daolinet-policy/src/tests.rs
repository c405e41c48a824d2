//! Policy tests on the fake network: scenario tests and properties over
//! generated topologies and policies.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use proptest::prelude::*;

use super::cookie::{self, Kind};
use super::fakeswitch::{Delivery, FakeNet};
use super::*;
use crate::model::{Container, ContainerSpec, FirewallRule, Host, Model, NetworkSpec, PairAction};

fn pool() -> Ipv4Net {
    "172.31.0.0/16".parse().unwrap()
}

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

fn net(m: &mut Model, name: &str, subnet: &str) {
    m.add_network(NetworkSpec {
        name: name.into(),
        subnet: subnet.parse().unwrap(),
        gateway: None,
        tenant: Some(format!("t-{name}")),
        nat_out: None,
    })
    .unwrap();
}

fn ctr(m: &mut Model, id: &str, network: &str, host: u8, port: u32) {
    m.add_container(
        ContainerSpec {
            id: id.into(),
            name: None,
            network: network.into(),
            ip: None,
            mac: None,
            host: format!("h{host}"),
            port,
        },
        pool(),
    )
    .unwrap();
}

fn udp(from: &Container, dst: Ipv4Addr, dport: u16) -> Packet {
    Packet {
        eth_dst: Config::default().gateway_mac,
        eth_src: from.mac,
        eth_type: ETH_TYPE_IPV4,
        l3: L3::Ipv4(Ipv4 {
            src: from.ip,
            dst,
            proto: 17,
            ttl: 64,
            ports: Some((5000, dport)),
            payload: b"hello".to_vec(),
        }),
    }
}

/// The ARP request `from` broadcasts for `tpa`.
fn arp_request(from: &Container, tpa: Ipv4Addr) -> Packet {
    Packet {
        eth_dst: MacAddr::BROADCAST,
        eth_src: from.mac,
        eth_type: ETH_TYPE_ARP,
        l3: L3::Arp(Arp {
            op: 1,
            sha: from.mac,
            spa: from.ip,
            tha: MacAddr::default(),
            tpa,
        }),
    }
}

fn delivered_to(ds: &[Delivery]) -> Vec<(String, Packet)> {
    ds.iter()
        .filter_map(|d| match d {
            Delivery::Container(id, p) => Some((id.clone(), p.clone())),
            _ => None,
        })
        .collect()
}

/// Two hosts, tenant networks with the same subnet, containers a, b on h1/h2
/// in n1 and c on h1 in n2 (same IP as a or b).
fn sample() -> Model {
    let mut m = Model::default();
    m.add_host(host(1)).unwrap();
    m.add_host(host(2)).unwrap();
    net(&mut m, "n1", "10.0.0.0/24");
    net(&mut m, "n2", "10.0.0.0/24");
    ctr(&mut m, "a", "n1", 1, 10);
    ctr(&mut m, "b", "n1", 2, 10);
    ctr(&mut m, "c", "n2", 1, 11);
    ctr(&mut m, "d", "n1", 1, 12);
    m
}

#[test]
fn cross_host_pair_has_the_design_rewrites() {
    let m = sample();
    let (a, b) = (m.containers["a"].clone(), m.containers["b"].clone());
    let (h1, h2) = (host(1), host(2));
    let cfg = Config::default();
    let snap = Snapshot::new(m);
    let o = handle_packet_in(&snap, &cfg, h1.dpid, a.port, &udp(&a, b.ip, 53).emit());
    assert_eq!(o.verdict, Verdict::CrossHost);
    let flows: Vec<&FlowSpec> = o
        .decisions
        .iter()
        .filter_map(|d| match d {
            Decision::AddFlow(f) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(flows.len(), 4);
    // Remote datapath first, PACKET_OUT last.
    assert_eq!(flows[0].dpid, h2.dpid);
    assert!(
        matches!(o.decisions.last(), Some(Decision::PacketOut { dpid, .. }) if *dpid == h1.dpid)
    );
    let find = |dpid: Dpid, in_port: u32| {
        flows
            .iter()
            .find(|f| f.dpid == dpid && f.match_.in_port == Some(in_port))
            .unwrap()
    };
    let e = find(h1.dpid, a.port);
    // Anti-spoofing by flow: only a's own MAC and IP match.
    assert_eq!(e.match_.eth_src, Some(a.mac));
    assert_eq!(e.match_.ipv4_src, Some(Ipv4Match::exact(a.ip)));
    assert_eq!(e.match_.ipv4_dst, Some(Ipv4Match::exact(b.ip)));
    assert_eq!(
        e.actions,
        vec![
            ActionSpec::DecTtl,
            ActionSpec::SetEthSrc(h1.mac),
            ActionSpec::SetEthDst(h2.mac),
            ActionSpec::SetIpv4Src(a.physical_ip),
            ActionSpec::SetIpv4Dst(b.physical_ip),
            ActionSpec::Output(h1.uplink_port)
        ]
    );
    let i = find(h2.dpid, h2.uplink_port);
    assert_eq!(i.match_.ipv4_src, Some(Ipv4Match::exact(a.physical_ip)));
    assert_eq!(i.match_.ipv4_dst, Some(Ipv4Match::exact(b.physical_ip)));
    assert_eq!(
        i.actions,
        vec![
            ActionSpec::DecTtl,
            ActionSpec::SetEthSrc(cfg.gateway_mac),
            ActionSpec::SetEthDst(b.mac),
            ActionSpec::SetIpv4Src(a.ip),
            ActionSpec::SetIpv4Dst(b.ip),
            ActionSpec::Output(b.port)
        ]
    );
    for f in &flows {
        assert_eq!(f.idle_timeout, 10);
        assert_eq!(f.cookie, cookie::pair(Kind::Pair, a.cookie_id, b.cookie_id));
    }
}

/// The ICMP time exceeded in a PACKET_OUT: (datapath, out port, IPv4
/// source, destination, the quoted source and destination).
fn time_exceeded(o: &Outcome) -> (Dpid, u32, Ipv4Addr, Ipv4Addr, Ipv4Addr, Ipv4Addr) {
    let Some(Decision::PacketOut {
        dpid,
        in_port,
        actions,
        data,
    }) = o.decisions.last()
    else {
        panic!("no PACKET_OUT: {o:?}");
    };
    assert_eq!(*in_port, PORT_CONTROLLER);
    let [ActionSpec::Output(port)] = actions[..] else {
        panic!("{actions:?}");
    };
    let p = Packet::parse(data).unwrap();
    let ip = p.ipv4().unwrap();
    assert_eq!((ip.proto, ip.payload[0], ip.payload[1]), (1, 11, 0));
    let q = &ip.payload[8..];
    let v4 = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    (*dpid, port, ip.src, ip.dst, v4(&q[12..16]), v4(&q[16..20]))
}

#[test]
fn virtual_routers_answer_expired_packets() {
    let m = sample();
    let (a, b, d) = (
        m.containers["a"].clone(),
        m.containers["b"].clone(),
        m.containers["d"].clone(),
    );
    let (h1, h2) = (host(1), host(2));
    let gw = m.networks["n1"].gateway;
    let cfg = Config::default();
    let snap = Snapshot::new(m);
    let ttl = |mut p: Packet, t: u8| {
        if let L3::Ipv4(i) = &mut p.l3 {
            i.ttl = t;
        }
        p
    };
    // TTL 1 at the source host: the container-side router (the gateway)
    // answers; the pair is installed for the next probe.
    let o = handle_packet_in(
        &snap,
        &cfg,
        h1.dpid,
        a.port,
        &ttl(udp(&a, b.ip, 33434), 1).emit(),
    );
    assert_eq!(o.verdict, Verdict::TtlExceeded);
    assert_eq!(
        o.decisions
            .iter()
            .filter(|d| matches!(d, Decision::AddFlow(_)))
            .count(),
        4
    );
    assert_eq!(time_exceeded(&o), (h1.dpid, a.port, gw, a.ip, a.ip, b.ip));
    // TTL 1 on arrival at the destination host (physical addresses): its
    // host router (underlay IP) answers, on the sender's host, quoting the
    // logical addresses.
    let mut at_h2 = ttl(udp(&a, b.physical_ip, 33434), 1);
    if let L3::Ipv4(i) = &mut at_h2.l3 {
        i.src = a.physical_ip;
    }
    let o = handle_packet_in(&snap, &cfg, h2.dpid, h2.uplink_port, &at_h2.emit());
    assert_eq!(o.verdict, Verdict::TtlExceeded);
    assert_eq!(
        time_exceeded(&o),
        (h1.dpid, a.port, h2.ip, a.ip, a.ip, b.ip)
    );
    // On one host there is no router in between: TTL 1 is delivered.
    let o = handle_packet_in(
        &snap,
        &cfg,
        h1.dpid,
        a.port,
        &ttl(udp(&a, d.ip, 33434), 1).emit(),
    );
    assert_eq!(o.verdict, Verdict::SameHost);
    // TTL 2 goes on (the flows decrement it).
    let o = handle_packet_in(
        &snap,
        &cfg,
        h1.dpid,
        a.port,
        &ttl(udp(&a, b.ip, 33434), 2).emit(),
    );
    assert_eq!(o.verdict, Verdict::CrossHost);
}

#[test]
fn same_host_pair_and_fast_path() {
    let m = sample();
    let (a, d) = (m.containers["a"].clone(), m.containers["d"].clone());
    let mut net = FakeNet::new(Snapshot::new(m), Config::default());
    let got = delivered_to(&net.send_from("a", udp(&a, d.ip, 7)));
    assert_eq!(got.len(), 1);
    let (to, p) = &got[0];
    assert_eq!(to, "d");
    assert_eq!(p.eth_dst, d.mac);
    assert_eq!(p.eth_src, Config::default().gateway_mac);
    assert_eq!(net.switches[&Dpid(1)].flows.len(), 2);
    // The reply and the next packets use the flows: no more PACKET_IN.
    let n = net.verdicts.len();
    assert_eq!(
        delivered_to(&net.send_from("d", udp(&d, a.ip, 7)))[0].0,
        "a"
    );
    assert_eq!(
        delivered_to(&net.send_from("a", udp(&a, d.ip, 7)))[0].0,
        "d"
    );
    assert_eq!(net.verdicts.len(), n);
}

#[test]
fn overlapping_tenants_are_isolated_and_denials_are_rate_limited() {
    let m = sample();
    let (a, c) = (m.containers["a"].clone(), m.containers["c"].clone());
    // c (n2) has the same IP as a or b (n1); it must never reach n1.
    assert!(c.ip == a.ip || c.ip == m.containers["b"].ip);
    let d = m.containers["d"].clone();
    let mut net = FakeNet::new(Snapshot::new(m), Config::default());
    assert!(delivered_to(&net.send_from("c", udp(&c, d.ip, 7))).is_empty());
    assert_eq!(net.verdicts, vec![Verdict::Denied(DenyReason::Isolated)]);
    let drop = &net.switches[&Dpid(1)].flows[0];
    assert!(drop.actions.is_empty() && drop.hard_timeout == 3 && drop.idle_timeout == 0);
    // A second attempt is dropped by the switch, not sent to the controller.
    assert!(delivered_to(&net.send_from("c", udp(&c, d.ip, 7))).is_empty());
    assert_eq!(net.verdicts.len(), 1);
}

#[test]
fn a_punted_denial_is_decided_again_and_never_loops() {
    // Open vSwitch gets denials as punts through a meter: a stale cached
    // copy of a deleted denial (or the denial itself, while it lasts)
    // sends its packets to the controller.
    let m = sample();
    let (c, d) = (m.containers["c"].clone(), m.containers["d"].clone());
    let cfg = Config::default();
    let snap = Snapshot::new(m.clone());
    let frame = udp(&c, d.ip, 7).emit();
    let first = handle_packet_in(&snap, &cfg, Dpid(1), c.port, &frame);
    assert_eq!(first.verdict, Verdict::Denied(DenyReason::Isolated));
    let [Decision::AddFlow(deny)] = first.decisions.as_slice() else {
        panic!("not one drop flow: {:?}", first.decisions);
    };
    // Still denied: counted, nothing sent (no new drop renewing the hard
    // timeout, no PACKET_OUT).
    let again = handle_punted_denial(&snap, &cfg, Dpid(1), c.port, &frame, deny.cookie);
    assert_eq!(again.verdict, Verdict::Denied(DenyReason::Isolated));
    assert!(again.decisions.is_empty(), "{:?}", again.decisions);
    // Unparsable: ignored, nothing sent either.
    let junk = handle_punted_denial(&snap, &cfg, Dpid(1), c.port, &[1, 2, 3], deny.cookie);
    assert_eq!((junk.verdict, junk.decisions.len()), (Verdict::Ignored, 0));
    // Connected since: the denial is deleted, then the packet delivered as
    // any first packet of the pair.
    let mut m2 = m;
    m2.set_pair(&c.id, &d.id, PairAction::Connect).unwrap();
    let snap2 = Snapshot::new(m2);
    let now = handle_punted_denial(&snap2, &cfg, Dpid(1), c.port, &frame, deny.cookie);
    let fresh = handle_packet_in(&snap2, &cfg, Dpid(1), c.port, &frame);
    assert_eq!(now.verdict, Verdict::SameHost);
    assert_eq!(
        now.decisions[0],
        Decision::DeleteFlows {
            dpid: Dpid(1),
            cookie: deny.cookie,
            cookie_mask: u64::MAX
        }
    );
    assert_eq!(now.decisions[1..], fresh.decisions[..]);
    assert!(matches!(
        now.decisions.last(),
        Some(Decision::PacketOut { .. })
    ));
}

#[test]
fn packet_out_carries_valid_checksums_whoever_punted() {
    // Open vSwitch with userspace TSO punts a TCP segment with only the
    // pseudo-header sum in its checksum (CHECKSUM_PARTIAL); sent back as
    // it came, the receiver drops it (the first SYN of every connection
    // from an OVS host).
    let m = sample();
    let (a, d) = (m.containers["a"].clone(), m.containers["d"].clone());
    let cfg = Config::default();
    let snap = Snapshot::new(m);
    let mut syn = udp(&a, d.ip, 80);
    if let L3::Ipv4(i) = &mut syn.l3 {
        i.proto = 6;
        // seq, ack, offset 5 + SYN, window, checksum (partial), urgent.
        i.payload = vec![
            0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0x12, 0x34, 0, 0,
        ];
    }
    let partial = syn.emit();
    let valid = with_checksums(&partial);
    assert_ne!(valid, partial);
    let o = handle_packet_in(&snap, &cfg, Dpid(1), a.port, &partial);
    let Some(Decision::PacketOut { data, .. }) = o.decisions.last() else {
        panic!("no PACKET_OUT: {:?}", o.decisions);
    };
    assert_eq!(
        data, &valid,
        "the PACKET_OUT still carries the partial checksum"
    );
    assert_eq!(with_checksums(data), *data);
}

/// A policy change applied to a fake network: the new snapshot and its
/// decisions.
fn change(net: &mut FakeNet, f: impl FnOnce(&mut Model) -> Vec<model::Change>) {
    let old = net.snap.clone();
    let mut m = old.model.clone();
    let changes = f(&mut m);
    let new = Snapshot::new(m);
    let ds = handle_model_change(&old, &new, &Config::default(), &changes);
    net.apply_decisions(ds);
    net.snap = new;
}

#[test]
fn a_policy_change_removes_the_drops_it_makes_stale() {
    // e (n3) tries an IP that both a (n1) and c (n2, the same subnet) have:
    // denied, and the drop can only be keyed by e (the IP names two
    // containers). A group join of n3 and n1, or a connect, must let the
    // very next packet through, without waiting for the drop to expire.
    for how in ["group", "connect"] {
        let mut m = sample();
        net(&mut m, "n3", "10.0.0.0/24");
        ctr(&mut m, "e", "n3", 1, 13);
        let c = m.containers["c"].clone();
        let a = if m.containers["a"].ip == c.ip {
            m.containers["a"].clone()
        } else {
            m.containers["b"].clone()
        };
        let e = m.containers["e"].clone();
        let mut net = FakeNet::new(Snapshot::new(m), Config::default());
        assert!(delivered_to(&net.send_from("e", udp(&e, a.ip, 7))).is_empty());
        let drop = net.switches[&Dpid(1)]
            .flows
            .iter()
            .find(|f| f.actions.is_empty())
            .unwrap()
            .clone();
        assert_eq!(
            drop.cookie,
            cookie::single(Kind::Deny, e.cookie_id),
            "{how}"
        );
        change(&mut net, |m| match how {
            "group" => {
                let mut ch = m.create_group("g", &["n3".into()]).unwrap();
                ch.extend(m.group_add("g", "n1").unwrap());
                ch
            }
            _ => m.set_pair("e", &a.id, PairAction::Connect).unwrap(),
        });
        assert!(
            !net.switches[&Dpid(1)].flows.contains(&drop),
            "{how}: stale drop kept"
        );
        let got = delivered_to(&net.send_from("e", udp(&e, a.ip, 7)));
        assert_eq!(
            got.len(),
            1,
            "{how}: the first packet after the change was lost"
        );
        assert_eq!(got[0].0, a.id, "{how}");
    }
}

#[test]
fn registering_a_container_removes_the_drop_of_its_port() {
    // A runtime brings a container's link up (IPv6 solicitations, an ARP)
    // before registering it: its port gets a port-wide drop. The
    // registration removes it, so the container's first packet gets
    // through at once instead of after --deny-timeout; a drop of another
    // still unknown port stays.
    let old = sample();
    let mut with_e = old.clone();
    ctr(&mut with_e, "e", "n1", 1, 14);
    let e = with_e.containers["e"].clone();
    let b = with_e.containers["b"].clone();
    let mut net = FakeNet::new(Snapshot::new(old), Config::default());
    for port in [14, 15] {
        let got = net.ingress(Dpid(1), port, udp(&e, b.ip, 7), 0);
        assert!(delivered_to(&got).is_empty(), "port {port} forwarded");
    }
    let drops: Vec<FlowSpec> = net.switches[&Dpid(1)]
        .flows
        .iter()
        .filter(|f| f.actions.is_empty())
        .cloned()
        .collect();
    assert_eq!(drops.len(), 2, "{drops:#?}");
    for (f, port) in drops.iter().zip([14, 15]) {
        assert_eq!(f.match_.in_port, Some(port));
        assert_eq!(f.cookie, cookie::port_deny(port));
        assert_eq!(f.hard_timeout, Config::default().deny_timeout);
    }
    change(&mut net, |m| {
        m.add_container(
            ContainerSpec {
                id: "e".into(),
                name: None,
                network: "n1".into(),
                ip: None,
                mac: None,
                host: "h1".into(),
                port: 14,
            },
            pool(),
        )
        .unwrap()
    });
    assert_eq!(net.snap.model.containers["e"], e);
    let flows = &net.switches[&Dpid(1)].flows;
    assert!(
        !flows.contains(&drops[0]),
        "the registered port's drop kept"
    );
    assert!(flows.contains(&drops[1]), "another port's drop removed");
    let got = delivered_to(&net.send_from("e", udp(&e, b.ip, 7)));
    assert_eq!(got.len(), 1, "the first packet after registration was lost");
    assert_eq!(got[0].0, b.id);
    // Reconciliation agrees: the remaining drop is valid while its port has
    // no container, the removed one would not have been.
    let cfg = Config::default();
    let r = reconcile(
        &net.snap,
        &cfg,
        Dpid(1),
        &[Some(drops[0].clone()), Some(drops[1].clone())],
    );
    assert_eq!((r.keep, r.delete), (vec![1], vec![0]));
}

#[test]
fn arp_proxy_answers_only_what_may_be_reached() {
    let m = sample();
    let a = m.containers["a"].clone();
    let b = m.containers["b"].clone();
    let cfg = Config::default();
    let snap = Snapshot::new(m.clone());
    let req = |tpa: Ipv4Addr| arp_request(&a, tpa).emit();
    for tpa in [m.networks["n1"].gateway, b.ip, Ipv4Addr::new(8, 8, 8, 8)] {
        let o = handle_packet_in(&snap, &cfg, Dpid(1), a.port, &req(tpa));
        assert_eq!(o.verdict, Verdict::ArpReply, "{tpa}");
        let Decision::PacketOut {
            actions,
            data,
            in_port,
            ..
        } = &o.decisions[0]
        else {
            panic!()
        };
        assert_eq!(*in_port, PORT_CONTROLLER);
        assert_eq!(actions, &vec![ActionSpec::Output(a.port)]);
        let r = Packet::parse(data).unwrap();
        let L3::Arp(r) = r.l3 else { panic!() };
        assert_eq!(
            (r.op, r.sha, r.spa, r.tha, r.tpa),
            (2, cfg.gateway_mac, tpa, a.mac, a.ip)
        );
    }
    // An unused address of the own subnet: no answer, short drop.
    let o = handle_packet_in(
        &snap,
        &cfg,
        Dpid(1),
        a.port,
        &req(Ipv4Addr::new(10, 0, 0, 200)),
    );
    assert_eq!(o.verdict, Verdict::Denied(DenyReason::UnknownDestination));
    // A disconnected pair: no answer either.
    let mut m2 = m;
    m2.set_pair("a", "b", PairAction::Disconnect).unwrap();
    let o = handle_packet_in(&Snapshot::new(m2), &cfg, Dpid(1), a.port, &req(b.ip));
    assert_eq!(o.verdict, Verdict::Denied(DenyReason::PairDisconnected));
    let Decision::AddFlow(f) = &o.decisions[0] else {
        panic!()
    };
    assert_eq!(f.cookie, cookie::pair(Kind::Deny, a.cookie_id, b.cookie_id));
}

#[test]
fn bad_input_never_panics_and_is_not_forwarded() {
    let m = sample();
    let a = m.containers["a"].clone();
    let b = m.containers["b"].clone();
    let cfg = Config::default();
    let snap = Snapshot::new(m);
    assert_eq!(
        handle_packet_in(&snap, &cfg, Dpid(1), a.port, &[1, 2, 3]).verdict,
        Verdict::Ignored
    );
    assert_eq!(
        handle_packet_in(&snap, &cfg, Dpid(99), a.port, &udp(&a, b.ip, 1).emit()).verdict,
        Verdict::Ignored
    );
    assert_eq!(
        handle_packet_in(&snap, &cfg, Dpid(1), 77, &udp(&a, b.ip, 1).emit()).verdict,
        Verdict::Denied(DenyReason::UnknownPort)
    );
    let mut spoof = udp(&a, b.ip, 1);
    if let L3::Ipv4(i) = &mut spoof.l3 {
        i.src = Ipv4Addr::new(10, 0, 0, 99);
    }
    assert_eq!(
        handle_packet_in(&snap, &cfg, Dpid(1), a.port, &spoof.emit()).verdict,
        Verdict::Denied(DenyReason::Spoofed)
    );
    let mut v6 = udp(&a, b.ip, 1);
    v6.eth_type = 0x86dd;
    v6.l3 = L3::Other;
    assert_eq!(
        handle_packet_in(&snap, &cfg, Dpid(1), a.port, &v6.emit()).verdict,
        Verdict::Denied(DenyReason::Unsupported)
    );
    assert_eq!(
        handle_packet_in(
            &snap,
            &cfg,
            Dpid(1),
            a.port,
            &udp(&a, m_gateway(&snap), 1).emit()
        )
        .verdict,
        Verdict::Denied(DenyReason::Gateway)
    );
}

/// xorshift64: the same noise on every run.
fn noise(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Whatever frame a switch punts, from whichever port, the policy decides
/// it without panicking: the frames of every path the rules know (same
/// host, cross host, TTL 1 through the virtual routers, the gateway, NAT
/// out, a firewall's DNAT from the uplink, ARP for a container, the gateway
/// and the world, the host stack's replies), from every port of both hosts
/// and an unknown datapath, cut at every length and with mangled bytes,
/// as a PACKET_IN and as a punted denial.
#[test]
fn any_punted_frame_never_panics() {
    let mut m = sample();
    let rule: FirewallRule = "8080:80".parse().unwrap();
    m.create_firewall("web", "b", vec![rule]).unwrap();
    let (a, b) = (m.containers["a"].clone(), m.containers["b"].clone());
    let d = m.containers["d"].clone();
    let gw = m.networks["n1"].gateway;
    let cfg = Config::default();
    let snap = Snapshot::new(m);
    let mut frames = vec![
        udp(&a, b.ip, 53),
        udp(&a, d.ip, 53),
        udp(&a, gw, 53),
        udp(&a, Ipv4Addr::new(93, 184, 216, 34), 80),
        udp(&b, a.ip, 53),
    ];
    let mut expiring = udp(&a, b.ip, 33434);
    if let L3::Ipv4(i) = &mut expiring.l3 {
        i.ttl = 1;
    }
    frames.push(expiring);
    let mut syn = udp(&b, host(2).ip, 8080);
    syn.eth_dst = host(2).mac;
    if let L3::Ipv4(i) = &mut syn.l3 {
        i.src = Ipv4Addr::new(192, 168, 0, 77);
        i.proto = 6;
        i.payload = vec![0; 16];
    }
    frames.push(syn);
    let mut icmp = udp(&a, b.ip, 0);
    if let L3::Ipv4(i) = &mut icmp.l3 {
        i.proto = 1;
        i.ports = None;
        i.payload = vec![8, 0, 0, 0, 0, 1, 0, 1];
    }
    frames.push(icmp);
    for tpa in [gw, b.ip, Ipv4Addr::new(8, 8, 8, 8)] {
        frames.push(arp_request(&a, tpa));
    }
    let frames: Vec<Vec<u8>> = frames.iter().map(Packet::emit).collect();
    let places = [
        (Dpid(1), a.port),
        (Dpid(1), 11),
        (Dpid(1), 12),
        (Dpid(1), 1),
        (Dpid(1), PORT_LOCAL),
        (Dpid(2), b.port),
        (Dpid(2), 1),
        (Dpid(2), PORT_LOCAL),
        (Dpid(1), 77),
        (Dpid(9), 1),
    ];
    let decide = |dpid, port, f: &[u8]| {
        let _ = handle_punted_denial(&snap, &cfg, dpid, port, f, 0x77);
        handle_packet_in(&snap, &cfg, dpid, port, f).verdict
    };
    // The whole frames reach every kind of decision.
    let seen: BTreeSet<String> = frames
        .iter()
        .flat_map(|f| {
            places
                .iter()
                .map(|&(d, p)| format!("{:?}", decide(d, p, f)))
        })
        .collect();
    for v in [
        "ArpReply",
        "SameHost",
        "CrossHost",
        "NatOut",
        "Firewall",
        "TtlExceeded",
    ] {
        assert!(seen.contains(v), "{v} not in {seen:?}");
    }
    for f in &frames {
        for cut in 0..=f.len() {
            for &(dpid, port) in &places {
                decide(dpid, port, &f[..cut]);
            }
        }
    }
    let mut seed = 0x1405_7b7e_f767_814f_u64;
    for _ in 0..20_000 {
        let mut f = frames[(noise(&mut seed) % frames.len() as u64) as usize].clone();
        for _ in 0..1 + noise(&mut seed) % 4 {
            let at = (noise(&mut seed) % f.len() as u64) as usize;
            f[at] = noise(&mut seed) as u8;
        }
        let (dpid, port) = places[(noise(&mut seed) % places.len() as u64) as usize];
        decide(dpid, port, &f);
    }
}

fn m_gateway(snap: &Snapshot) -> Ipv4Addr {
    snap.model.networks["n1"].gateway
}

#[test]
fn nat_out_goes_through_the_host_stack_and_comes_back() {
    let m = sample();
    let a = m.containers["a"].clone();
    let outside = Ipv4Addr::new(93, 184, 216, 34);
    let mut net = FakeNet::new(Snapshot::new(m.clone()), Config::default());
    let out = net.send_from("a", udp(&a, outside, 80));
    let [Delivery::Local(dp, p)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(*dp, Dpid(1));
    assert_eq!(p.eth_dst, host(1).local_mac());
    assert_eq!(p.ipv4().unwrap().src, a.physical_ip);
    assert_eq!(net.verdicts, vec![Verdict::NatOut]);
    // The de-masqueraded reply leaves the host stack towards pa.
    let mut reply = udp(&a, a.physical_ip, 5000);
    reply.eth_src = host(1).local_mac();
    if let L3::Ipv4(i) = &mut reply.l3 {
        i.src = outside;
    }
    let back = delivered_to(&net.ingress(Dpid(1), PORT_LOCAL, reply, 0));
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].0, "a");
    assert_eq!(back[0].1.ipv4().unwrap().dst, a.ip);
    assert_eq!(back[0].1.eth_dst, a.mac);
    // NAT disabled for the network: denied.
    let mut m2 = m;
    m2.networks.get_mut("n1").unwrap().nat_out = false;
    let o = handle_packet_in(
        &Snapshot::new(m2),
        &Config::default(),
        Dpid(1),
        a.port,
        &udp(&a, outside, 80).emit(),
    );
    assert_eq!(o.verdict, Verdict::Denied(DenyReason::NatDisabled));
}

#[test]
fn firewall_ingress_dnat_and_reply() {
    let mut m = sample();
    let rule: FirewallRule = "8080:80".parse().unwrap();
    m.create_firewall("web", "b", vec![rule]).unwrap();
    let b = m.containers["b"].clone();
    let h2 = host(2);
    let cfg = Config::default();
    let snap = Snapshot::new(m);
    let mut net = FakeNet::new(snap.clone(), cfg.clone());
    net.apply_decisions(handle_switch_connected(&snap, &cfg, h2.dpid));
    let client_mac = MacAddr([2, 9, 9, 9, 9, 9]);
    let client = Ipv4Addr::new(192, 168, 0, 77);
    let syn = Packet {
        eth_dst: h2.mac,
        eth_src: client_mac,
        eth_type: ETH_TYPE_IPV4,
        l3: L3::Ipv4(Ipv4 {
            src: client,
            dst: h2.ip,
            proto: 6,
            ttl: 64,
            ports: Some((40000, 8080)),
            payload: vec![],
        }),
    };
    let got = delivered_to(&net.ingress(h2.dpid, h2.uplink_port, syn.clone(), 0));
    assert_eq!(got.len(), 1);
    let (to, p) = &got[0];
    assert_eq!(to, "b");
    let ip = p.ipv4().unwrap();
    assert_eq!(
        (ip.src, ip.dst, ip.ports),
        (client, b.ip, Some((40000, 80)))
    );
    assert_eq!(net.verdicts, vec![Verdict::Firewall]);
    // The reply leaves the uplink as host-ip:8080 towards the client's MAC.
    let reply = Packet {
        eth_dst: cfg.gateway_mac,
        eth_src: b.mac,
        eth_type: ETH_TYPE_IPV4,
        l3: L3::Ipv4(Ipv4 {
            src: b.ip,
            dst: client,
            proto: 6,
            ttl: 64,
            ports: Some((80, 40000)),
            payload: vec![],
        }),
    };
    let out = net.send_from("b", reply);
    let [Delivery::Underlay(_, p)] = out.as_slice() else {
        panic!("{out:?}")
    };
    let ip = p.ipv4().unwrap();
    assert_eq!(
        (p.eth_src, p.eth_dst, ip.src, ip.ports),
        (h2.mac, client_mac, h2.ip, Some((8080, 40000)))
    );
    // Another host port goes to the host stack untouched.
    let mut other = syn;
    if let L3::Ipv4(i) = &mut other.l3 {
        i.ports = Some((40000, 22));
    }
    assert!(matches!(
        net.ingress(h2.dpid, h2.uplink_port, other, 0).as_slice(),
        [Delivery::Local(..)]
    ));
}

#[test]
fn uplink_punt_reinstalls_an_expired_ingress_flow() {
    let m = sample();
    let (a, b) = (m.containers["a"].clone(), m.containers["b"].clone());
    let cfg = Config::default();
    let snap = Snapshot::new(m);
    let mut net = FakeNet::new(snap.clone(), cfg.clone());
    for d in [Dpid(1), Dpid(2)] {
        net.apply_decisions(handle_switch_connected(&snap, &cfg, d));
    }
    assert_eq!(
        delivered_to(&net.send_from("a", udp(&a, b.ip, 1)))[0].0,
        "b"
    );
    // h2's flows expire, h1's egress flow does not.
    net.switches
        .get_mut(&Dpid(2))
        .unwrap()
        .flows
        .retain(|f| f.cookie >> 56 == Kind::Base as u64);
    let got = delivered_to(&net.send_from("a", udp(&a, b.ip, 1)));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1.ipv4().unwrap().src, a.ip);
    assert_eq!(net.verdicts.last(), Some(&Verdict::CrossHost));
}

#[test]
fn switch_connect_and_host_gone() {
    let mut m = sample();
    m.create_firewall("web", "a", vec!["80:80".parse().unwrap()])
        .unwrap();
    let cfg = Config::default();
    let snap = Snapshot::new(m.clone());
    let ds = handle_switch_connected(&snap, &cfg, Dpid(1));
    assert_eq!(
        ds[0],
        Decision::DeleteFlows {
            dpid: Dpid(1),
            cookie: 0,
            cookie_mask: 0
        }
    );
    assert_eq!(ds.len(), 7); // delete, miss, 2 defaults, 2 pool punts, 1 firewall
    assert!(handle_switch_connected(&snap, &cfg, Dpid(42)).is_empty());
    let gone = handle_host_gone(&snap, Dpid(2));
    // b's flows, on h1 only, by lo and by hi.
    let b = &m.containers["b"];
    assert_eq!(gone.len(), 2);
    assert!(gone.iter().all(|d| d.dpid() == Dpid(1)));
    assert!(gone.contains(&Decision::DeleteFlows {
        dpid: Dpid(1),
        cookie: cookie::make(Kind::Base, b.cookie_id, 0),
        cookie_mask: cookie::LO_MASK
    }));
}

/// A host's containers come from the port index, in id order, and a host
/// gone deletes, datapath by datapath, what the pass over every container
/// deleted.
#[test]
fn host_gone_deletes_its_containers_on_every_other_datapath() {
    let m = sample();
    let snap = Snapshot::new(m.clone());
    for h in m.hosts.values() {
        let want: Vec<&Container> = m.containers.values().filter(|c| c.host == h.name).collect();
        let mut on: Vec<&Container> = snap.containers_on(&h.name).collect();
        on.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(on, want, "{}", h.name);
        let mut oracle = Vec::new();
        for d in m
            .hosts
            .values()
            .map(|o| o.dpid)
            .filter(|d| *d != h.dpid)
            .collect::<BTreeSet<_>>()
        {
            for c in &want {
                for (cookie, mask) in [
                    (cookie::make(Kind::Base, c.cookie_id, 0), cookie::LO_MASK),
                    (cookie::make(Kind::Base, 0, c.cookie_id), cookie::HI_MASK),
                ] {
                    oracle.push(Decision::DeleteFlows {
                        dpid: d,
                        cookie,
                        cookie_mask: mask,
                    });
                }
            }
        }
        assert_eq!(handle_host_gone(&snap, h.dpid), oracle, "{}", h.name);
    }
    assert_eq!(snap.containers_on("no-such-host").count(), 0);
    for c in m.containers.values() {
        assert_eq!(snap.container_by_cookie(c.cookie_id), Some(c));
    }
    assert_eq!(snap.container_by_cookie(u32::MAX), None);
}

// ---------------------------------------------------------------------------
// Properties over generated topologies.

/// An independent statement of the rules: may x and y talk?
fn oracle_allowed(m: &Model, x: &Container, y: &Container) -> bool {
    let key = model::PairPolicy::key_of(&x.id, &y.id);
    if let Some(p) = m.policies.get(&key) {
        return p.action == PairAction::Connect;
    }
    x.network == y.network
        || m.groups
            .values()
            .any(|g| g.networks.contains(&x.network) && g.networks.contains(&y.network))
}

/// Which container a packet from x to `dst` must reach, if any.
fn oracle_target(m: &Model, x: &Container, dst: Ipv4Addr) -> Option<String> {
    let others: Vec<&Container> = m
        .containers
        .values()
        .filter(|c| c.id != x.id && c.ip == dst)
        .collect();
    if let Some(own) = others.iter().find(|c| c.network == x.network) {
        return oracle_allowed(m, x, own).then(|| own.id.clone());
    }
    let ok: Vec<&&Container> = others.iter().filter(|c| oracle_allowed(m, x, c)).collect();
    match ok.as_slice() {
        [one] => Some(one.id.clone()),
        _ => None,
    }
}

#[derive(Debug, Clone)]
struct Topo {
    hosts: u8,
    nets: Vec<u8>,           // subnet choice per network
    ctrs: Vec<(usize, u8)>,  // (network index, host index)
    groups: Vec<Vec<usize>>, // network indexes
    pairs: Vec<(usize, usize, bool)>,
}

fn topo() -> impl Strategy<Value = Topo> {
    (1u8..=3, proptest::collection::vec(0u8..2, 1..=4)).prop_flat_map(|(hosts, nets)| {
        let n = nets.len();
        (
            Just(hosts),
            Just(nets),
            proptest::collection::vec((0..n, 0..hosts), 2..=7),
            proptest::collection::vec(proptest::collection::vec(0..n, 0..=3), 0..=2),
            proptest::collection::vec((0usize..7, 0usize..7, proptest::bool::ANY), 0..=3),
        )
            .prop_map(|(hosts, nets, ctrs, groups, pairs)| Topo {
                hosts,
                nets,
                ctrs,
                groups,
                pairs,
            })
    })
}

fn build(t: &Topo) -> Model {
    let mut m = Model::default();
    for h in 1..=t.hosts {
        m.add_host(host(h)).unwrap();
    }
    for (i, s) in t.nets.iter().enumerate() {
        net(
            &mut m,
            &format!("n{i}"),
            if *s == 0 {
                "10.0.0.0/24"
            } else {
                "10.0.1.0/24"
            },
        );
    }
    for (k, (n, h)) in t.ctrs.iter().enumerate() {
        ctr(
            &mut m,
            &format!("c{k}"),
            &format!("n{n}"),
            h + 1,
            10 + k as u32,
        );
    }
    for (g, nets) in t.groups.iter().enumerate() {
        let names: Vec<String> = nets
            .iter()
            .map(|n| format!("n{n}"))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        m.create_group(&format!("g{g}"), &names).unwrap();
    }
    let n = t.ctrs.len();
    for (a, b, connect) in &t.pairs {
        let (a, b) = (a % n, b % n);
        if a != b {
            let act = if *connect {
                PairAction::Connect
            } else {
                PairAction::Disconnect
            };
            m.set_pair(&format!("c{a}"), &format!("c{b}"), act).unwrap();
        }
    }
    m
}

/// Sends a packet from every container to every other container's IP and
/// checks the outcome against the oracle. Returns the delivered pairs.
fn check_all_pairs(net: &mut FakeNet) -> Result<BTreeSet<(String, String)>, TestCaseError> {
    let m = net.snap.model.clone();
    let gw = net.cfg.gateway_mac;
    let mut reached = BTreeSet::new();
    for x in m.containers.values() {
        for y in m.containers.values() {
            if x.id == y.id || x.ip == y.ip {
                continue;
            }
            let want = oracle_target(&m, x, y.ip);
            let got = delivered_to(&net.send_from(&x.id, udp(x, y.ip, 9)));
            prop_assert!(got.len() <= 1, "{got:?}");
            match (&want, got.first()) {
                (Some(t), Some((to, p))) => {
                    prop_assert_eq!(t, to);
                    let dst = &m.containers[to];
                    let ip = p.ipv4().unwrap();
                    // The receiver sees its own logical addresses.
                    prop_assert_eq!(
                        (ip.src, ip.dst, p.eth_dst, p.eth_src),
                        (x.ip, dst.ip, dst.mac, gw)
                    );
                    prop_assert!(oracle_allowed(&m, x, dst), "leak {} -> {}", x.id, to);
                    reached.insert((x.id.clone(), to.clone()));
                    // The reply reaches x with the peer's logical address
                    // (unless the peer's own network has another x.ip).
                    let back = delivered_to(&net.send_from(to, udp(dst, x.ip, 5000)));
                    let want_back = oracle_target(&m, dst, x.ip);
                    prop_assert_eq!(back.first().map(|b| b.0.clone()), want_back.clone());
                    if want_back.as_deref() == Some(x.id.as_str()) {
                        let bip = back[0].1.ipv4().unwrap();
                        prop_assert_eq!((bip.src, bip.dst), (dst.ip, x.ip));
                    }
                }
                (None, None) => {}
                (w, g) => prop_assert!(false, "{} -> {}: want {:?} got {:?}", x.id, y.ip, w, g),
            }
        }
    }
    Ok(reached)
}

#[derive(Debug, Clone)]
enum Mutation {
    Pair(usize, usize, Option<bool>),
    GroupAdd(usize, usize),
    GroupDel(usize),
    Move(usize, u8),
    Remove(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (
            0usize..7,
            0usize..7,
            proptest::option::of(proptest::bool::ANY)
        )
            .prop_map(|(a, b, c)| Mutation::Pair(a, b, c)),
        (0usize..2, 0usize..4).prop_map(|(g, n)| Mutation::GroupAdd(g, n)),
        (0usize..2).prop_map(Mutation::GroupDel),
        (0usize..7, 0u8..3).prop_map(|(c, h)| Mutation::Move(c, h)),
        (0usize..7).prop_map(Mutation::Remove),
    ]
}

fn mutate(m: &mut Model, mu: &Mutation) -> Vec<model::Change> {
    let n = m.containers.len();
    let cid = |i: usize| format!("c{}", i % n);
    let r = match mu {
        Mutation::Pair(a, b, None) => m.clear_pair(&cid(*a), &cid(*b)),
        Mutation::Pair(a, b, Some(c)) => m.set_pair(
            &cid(*a),
            &cid(*b),
            if *c {
                PairAction::Connect
            } else {
                PairAction::Disconnect
            },
        ),
        Mutation::GroupAdd(g, k) => {
            let nn = format!("n{}", k % m.networks.len());
            let g = format!("g{g}");
            if m.groups.contains_key(&g) {
                m.group_add(&g, &nn)
            } else {
                m.create_group(&g, &[nn])
            }
        }
        Mutation::GroupDel(g) => m.delete_group(&format!("g{g}")),
        Mutation::Move(c, h) => {
            let h = format!("h{}", 1 + h % m.hosts.len() as u8);
            m.move_container(&cid(*c), &h, 100 + (*c % n) as u32)
        }
        Mutation::Remove(c) => m.remove_container(&cid(*c)),
    };
    r.unwrap_or_default()
}

/// What the flows of the pair x, y depend on: whether they may talk, and
/// whether each resolves the other's IP to the other.
fn oracle_pair(m: &Model, x: &str, y: &str) -> Option<(bool, bool, bool)> {
    let (xc, yc) = (m.containers.get(x)?, m.containers.get(y)?);
    Some((
        oracle_allowed(m, xc, yc),
        oracle_target(m, xc, yc.ip).as_deref() == Some(y),
        oracle_target(m, yc, xc.ip).as_deref() == Some(x),
    ))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    /// A packet from A reaches B, with B's own logical addresses, iff the
    /// policy allows it; overlapping tenant subnets never leak; the second
    /// packet of an allowed flow does not reach the controller.
    #[test]
    fn reachable_iff_allowed(t in topo()) {
        let m = build(&t);
        let mut net = FakeNet::new(Snapshot::new(m), Config::default());
        let reached = check_all_pairs(&mut net)?;
        let punts = net.verdicts.len();
        let again = check_all_pairs(&mut net)?;
        prop_assert_eq!(reached, again);
        prop_assert_eq!(net.verdicts.len(), punts, "second round must hit flows only");
    }

    /// A policy change deletes every flow it invalidates and no other.
    #[test]
    fn policy_change_deletes_exactly_the_affected_flows(t in topo(), mu in mutation()) {
        let old = build(&t);
        let cfg = Config::default();
        let mut net = FakeNet::new(Snapshot::new(old.clone()), cfg.clone());
        check_all_pairs(&mut net)?;
        let mut new = old.clone();
        let changes = mutate(&mut new, &mu);
        let (os, ns) = (Snapshot::new(old.clone()), Snapshot::new(new.clone()));
        let decisions = handle_model_change(&os, &ns, &cfg, &changes);
        let before: BTreeMap<Dpid, Vec<FlowSpec>> = net.switches.iter().map(|(d, s)| (*d, s.flows.clone())).collect();
        net.apply_decisions(decisions);
        net.snap = ns;

        let by_cookie: BTreeMap<u32, String> = old.containers.values().map(|c| (c.cookie_id, c.id.clone())).collect();
        let changed_container = |id: &str| old.containers.get(id) != new.containers.get(id);
        // A container some of whose pairs (with containers still there)
        // changed state.
        let pairs_changed = |x: &str| {
            old.containers.keys().any(|y| {
                y != x && new.containers.contains_key(y) && oracle_pair(&old, x, y) != oracle_pair(&new, x, y)
            })
        };
        let affected = |f: &FlowSpec| -> bool {
            let Some((kind, lo, hi)) = cookie::decode(f.cookie) else { return true };
            let (Some(x), y) = (by_cookie.get(&lo), by_cookie.get(&hi)) else { return false };
            if changed_container(x) || y.is_some_and(|y| changed_container(y)) {
                return true;
            }
            match y {
                Some(y) => oracle_pair(&old, x, y) != oracle_pair(&new, x, y),
                // A drop keyed by its source alone goes with any change of
                // the source's pairs: it may drop what is now allowed.
                None => kind == Kind::Deny && pairs_changed(x),
            }
        };
        for (d, flows) in &before {
            let after = &net.switches[d].flows;
            for f in flows {
                let kept = after.contains(f);
                prop_assert_eq!(kept, !affected(f), "flow {:?} kept={} after {:?}", f, kept, mu);
            }
        }
        // At once (no drop left to expire), the network behaves exactly as
        // the new policy says.
        check_all_pairs(&mut net)?;
    }
}
