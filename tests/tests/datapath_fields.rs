//! BPF_PROG_TEST_RUN tests of the match fields and actions beyond IPv4:
//! IPv6 (protocol, ports, traffic class, flow label, hop limit), VLAN
//! priority, DSCP/ECN, SCTP and ICMPv6 ports/types, MPLS label stack
//! entries. Frames are built byte by byte ([`daolinet_tests::frames`]),
//! results compared byte for byte with the expected frame, checksums
//! checked by full recomputation.
//!
//! They need root: the workspace skip rule applies
//! (`daolinet_testlab::require`).

#![allow(clippy::expect_used)] // test helpers: a failed expect is a failed test

use daolinet_common::{
    Action, FlowEntry, FlowKey, MissPolicy, PortInfo, PortKind, PuntReason, Subtable, MAX_ACTIONS,
};
use daolinet_testlab::{require, Need};
use daolinet_tests::bpf::{Datapath, TC_ACT_REDIRECT, TC_ACT_SHOT};
use daolinet_tests::frames::{
    assert_checksums_ok, eth, icmp, ipv4_frame, ipv6_frame, lse, sctp, tagged, tcp, udp, ETH_MPLS,
};

/// Ingress: ifindex 1 (`lo`, what test runs use), OpenFlow port 1.
const IN_OFPORT: u32 = 1;
/// Output port (made-up ifindex: test runs only record redirects).
const OUT_OFPORT: u32 = 2;
const MACS: ([u8; 6], [u8; 6]) = ([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb]);
const A6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa];
const B6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xb];

fn port(ofport: u32, ifindex: u32, slot: u32) -> PortInfo {
    PortInfo {
        ofport,
        ifindex,
        kind: PortKind::Container as u32,
        miss: MissPolicy::Punt as u32,
        slot,
        ..Default::default()
    }
}

/// The datapath with two ports; `None` when skipped.
fn setup() -> Option<Datapath> {
    require(&[Need::Root, Need::BpfObject])?;
    let mut dp = Datapath::load().expect("loading the datapath");
    dp.add_port(port(IN_OFPORT, 1, 1)).expect("port");
    dp.add_port(port(OUT_OFPORT, 4343, 2)).expect("port");
    Some(dp)
}

fn entry(rule_id: u32, actions: &[Action]) -> FlowEntry {
    assert!(actions.len() <= MAX_ACTIONS);
    let mut e = FlowEntry {
        priority: 100,
        rule_id,
        n_actions: actions.len() as u32,
        ..Default::default()
    };
    e.actions[..actions.len()].copy_from_slice(actions);
    e
}

/// Install one rule (key under mask) as the only subtable.
fn install(dp: &mut Datapath, key: FlowKey, mask: FlowKey, actions: &[Action]) {
    let sub = Subtable {
        mask,
        id: 1,
        max_priority: 100,
    };
    dp.set_subtables(&[sub]).expect("subtables");
    dp.insert_flow(&sub, &key, entry(1, actions))
        .expect("inserting a flow");
}

/// Run `frame` through the TC program: true when the rule hit and the
/// frame was redirected (the rule's only output); the frame after.
fn run(dp: &mut Datapath, frame: &[u8]) -> (bool, Vec<u8>) {
    let before = dp.rule_stats(1).expect("stats").packets;
    let (verdict, out) = dp.run_tc(frame, 1).expect("test run");
    let hit = dp.rule_stats(1).expect("stats").packets == before + 1;
    (hit && verdict == TC_ACT_REDIRECT, out)
}

fn ipv6_tcp(hop: u8, tclass: u8, label: u32, dport: u16) -> Vec<u8> {
    ipv6_frame(
        MACS,
        A6,
        B6,
        6,
        hop,
        tclass,
        label,
        &tcp(40000, dport, b"payload!"),
    )
}

#[test]
fn ipv6_protocol_ports_class_and_label_are_matched() {
    let Some(mut dp) = setup() else {
        return;
    };
    let key = FlowKey {
        eth_type: FlowKey::ETH_TYPE_IPV6,
        ip_proto: 6,
        l4_dst: 80,
        ip_tos: 0xb8, // DSCP 46 (EF), ECN 0
        ipv6_label: 0x12345,
        ..Default::default()
    };
    let mask = FlowKey {
        eth_type: u16::MAX,
        ip_proto: u8::MAX,
        l4_dst: u16::MAX,
        ip_tos: 0xff,
        ipv6_label: 0x000f_ffff,
        ..Default::default()
    };
    install(&mut dp, key, mask, &[Action::output(OUT_OFPORT)]);
    let f = ipv6_tcp(64, 0xb8, 0x12345, 80);
    let (hit, out) = run(&mut dp, &f);
    assert!(hit, "IPv6 TCP to port 80 with DSCP 46 and label 0x12345");
    assert_eq!(out, f, "forwarded unchanged");
    for other in [
        ipv6_tcp(64, 0xb8, 0x12345, 81),
        ipv6_tcp(64, 0xb9, 0x12345, 80),
        ipv6_tcp(64, 0xb8, 0x12344, 80),
    ] {
        assert!(!run(&mut dp, &other).0, "a different field must not match");
    }
}

#[test]
fn ipv6_dec_ttl_decrements_the_hop_limit_and_punts_at_one() {
    let Some(mut dp) = setup() else {
        return;
    };
    let key = FlowKey {
        in_port: IN_OFPORT,
        eth_type: FlowKey::ETH_TYPE_IPV6,
        ..Default::default()
    };
    let mask = FlowKey {
        in_port: u32::MAX,
        eth_type: u16::MAX,
        ..Default::default()
    };
    install(
        &mut dp,
        key,
        mask,
        &[Action::dec_ttl(), Action::output(OUT_OFPORT)],
    );
    let f = ipv6_tcp(64, 0, 0, 80);
    let (hit, out) = run(&mut dp, &f);
    assert!(hit);
    let mut want = f.clone();
    want[14 + 7] = 63;
    assert_eq!(out, want, "only the hop limit changes");
    assert_checksums_ok(&out);
    // Hop limit 1: punted as an invalid TTL, not forwarded.
    let (verdict, _) = dp.run_tc(&ipv6_tcp(1, 0, 0, 80), 1).expect("test run");
    assert_eq!(verdict, TC_ACT_SHOT);
    let punts = dp.punts().expect("punts");
    assert_eq!(punts.len(), 1);
    assert_eq!(punts[0].header.reason, PuntReason::InvalidTtl as u32);
}

#[test]
fn ipv6_port_rewrites_keep_the_tcp_and_udp_checksums_valid() {
    let Some(mut dp) = setup() else {
        return;
    };
    let key = FlowKey {
        eth_type: FlowKey::ETH_TYPE_IPV6,
        ..Default::default()
    };
    let mask = FlowKey {
        eth_type: u16::MAX,
        ..Default::default()
    };
    install(
        &mut dp,
        key,
        mask,
        &[
            Action::set_l4_src(1111),
            Action::set_l4_dst(2222),
            Action::output(OUT_OFPORT),
        ],
    );
    for (proto, seg) in [(6u8, tcp(5, 6, b"abcdefg")), (17, udp(5, 6, b"xyz"))] {
        let f = ipv6_frame(MACS, A6, B6, proto, 9, 0, 0, &seg);
        let (hit, out) = run(&mut dp, &f);
        assert!(hit);
        let l4 = 14 + 40;
        assert_eq!(&out[l4..l4 + 4], &[0x04, 0x57, 0x08, 0xae]);
        assert_checksums_ok(&out);
        // Byte-exact apart from the ports and the checksum.
        let csum = l4 + if proto == 6 { 16 } else { 6 };
        for (i, (a, b)) in out.iter().zip(&f).enumerate() {
            if !(l4..l4 + 4).contains(&i) && !(csum..csum + 2).contains(&i) {
                assert_eq!(a, b, "byte {i} changed");
            }
        }
    }
}

#[test]
fn vlan_priority_dscp_ecn_sctp_icmpv6_and_mpls_are_matched() {
    let Some(mut dp) = setup() else {
        return;
    };
    let ip4 = |tos: u8, proto: u8, seg: &[u8]| {
        ipv4_frame(MACS, [10, 0, 0, 1], [10, 0, 0, 2], proto, 64, tos, seg)
    };
    // (what, key, mask, matching frame, a frame that must not match)
    type Case = (&'static str, FlowKey, FlowKey, Vec<u8>, Vec<u8>);
    let cases: Vec<Case> = vec![
        (
            "VLAN 100 priority 5",
            FlowKey {
                vlan_tci: 0x1000 | (5 << 13) | 100,
                ..Default::default()
            },
            FlowKey {
                vlan_tci: 0xffff,
                ..Default::default()
            },
            tagged(&ip4(0, 6, &tcp(1, 2, b"")), (5 << 13) | 100),
            tagged(&ip4(0, 6, &tcp(1, 2, b"")), (4 << 13) | 100),
        ),
        (
            "DSCP 10 (ECN ignored)",
            FlowKey {
                eth_type: FlowKey::ETH_TYPE_IPV4,
                ip_tos: 10 << 2,
                ..Default::default()
            },
            FlowKey {
                eth_type: u16::MAX,
                ip_tos: 0xfc,
                ..Default::default()
            },
            ip4((10 << 2) | 3, 17, &udp(1, 2, b"x")),
            ip4(11 << 2, 17, &udp(1, 2, b"x")),
        ),
        (
            "ECN 2",
            FlowKey {
                eth_type: FlowKey::ETH_TYPE_IPV4,
                ip_tos: 2,
                ..Default::default()
            },
            FlowKey {
                eth_type: u16::MAX,
                ip_tos: 0x03,
                ..Default::default()
            },
            ip4(0xfe, 17, &udp(1, 2, b"x")),
            ip4(0xfd, 17, &udp(1, 2, b"x")),
        ),
        (
            "SCTP destination port 5000",
            FlowKey {
                eth_type: FlowKey::ETH_TYPE_IPV4,
                ip_proto: 132,
                l4_dst: 5000,
                ..Default::default()
            },
            FlowKey {
                eth_type: u16::MAX,
                ip_proto: u8::MAX,
                l4_dst: u16::MAX,
                ..Default::default()
            },
            ip4(0, 132, &sctp(7, 5000, &[0; 16])),
            ip4(0, 132, &sctp(7, 5001, &[0; 16])),
        ),
        (
            "ICMPv6 echo request",
            FlowKey {
                eth_type: FlowKey::ETH_TYPE_IPV6,
                ip_proto: 58,
                l4_src: 128,
                l4_dst: 0,
                ..Default::default()
            },
            FlowKey {
                eth_type: u16::MAX,
                ip_proto: u8::MAX,
                l4_src: u16::MAX,
                l4_dst: u16::MAX,
                ..Default::default()
            },
            ipv6_frame(MACS, A6, B6, 58, 64, 0, 0, &icmp(128, 0, &[0, 1, 0, 1])),
            ipv6_frame(MACS, A6, B6, 58, 64, 0, 0, &icmp(129, 0, &[0, 1, 0, 1])),
        ),
        (
            "MPLS label 100, BoS (TTL ignored)",
            FlowKey {
                eth_type: FlowKey::ETH_TYPE_MPLS,
                ipv4_src: lse(100, 0, true, 0),
                ..Default::default()
            },
            FlowKey {
                eth_type: u16::MAX,
                ipv4_src: 0xffff_ff00u32.to_be_bytes(),
                ..Default::default()
            },
            eth(
                MACS.1,
                MACS.0,
                ETH_MPLS,
                &[lse(100, 0, true, 64).as_slice(), &[0x45; 20]].concat(),
            ),
            eth(
                MACS.1,
                MACS.0,
                ETH_MPLS,
                &[lse(100, 0, false, 64).as_slice(), &[0x45; 20]].concat(),
            ),
        ),
    ];
    for (what, key, mask, good, bad) in cases {
        install(
            &mut dp,
            key.masked(&mask),
            mask,
            &[Action::output(OUT_OFPORT)],
        );
        let (hit, out) = run(&mut dp, &good);
        assert!(hit, "{what}: the frame must match");
        assert_eq!(out, good, "{what}: forwarded unchanged");
        assert!(!run(&mut dp, &bad).0, "{what}: the other frame must not");
    }
}
