//! BPF_PROG_TEST_RUN tests of the match fields and actions beyond IPv4:
//! IPv6 (protocol, ports, traffic class, flow label, hop limit), VLAN
//! priority, DSCP/ECN, SCTP and ICMPv6 ports/types, MPLS label stack
//! entries; VLAN push/pop/set VID and PCP, MPLS push/pop/set label, TC and
//! TTL, installed through the agent's flow table. Frames are built byte by byte ([`daolinet_tests::frames`]),
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

// ---------------------------------------------------------------------------
// VLAN and MPLS push/pop, installed as the agent installs FLOW_MODs. Test
// runs leave a tag the program pushes in skb metadata (the kernel's
// bpf_skb_vlan_push puts the outer tag there and moves an outer tag that
// was there into the bytes): a pushed outer tag is checked in the frame a
// punt to the controller carries (the agent puts the metadata tag back),
// every other result in the bytes of the redirected frame.

/// `flows` installed; `frame` run through the TC program: the verdict and
/// the frame after.
fn run_flows(flows: &[&str], frame: &[u8]) -> Option<(u32, Vec<u8>, Datapath)> {
    let mut dp = setup()?;
    dp.install_flows(flows).expect("flows installed");
    let (verdict, out) = dp.run_tc(frame, 1).expect("test run");
    Some((verdict, out, dp))
}

/// An Ethernet/IPv4/TCP frame with TTL `ttl`.
fn ip4_tcp(ttl: u8) -> Vec<u8> {
    ipv4_frame(
        MACS,
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        6,
        ttl,
        0,
        &tcp(40000, 80, b"vlan and mpls"),
    )
}

/// `frame` with an outer tag of type `tpid` and TCI `tci` after the MACs.
fn with_tag(frame: &[u8], tpid: u16, tci: u16) -> Vec<u8> {
    let mut p = frame[..12].to_vec();
    p.extend_from_slice(&tpid.to_be_bytes());
    p.extend_from_slice(&tci.to_be_bytes());
    p.extend_from_slice(&frame[12..]);
    p
}

/// `frame` (Ethernet, possibly tagged) with label stack entries `lses`
/// inserted before its L3 header and its Ethernet type made `eth_type`.
fn with_labels(frame: &[u8], eth_type: u16, lses: &[[u8; 4]]) -> Vec<u8> {
    let (l3, _) = daolinet_tests::frames::l3_of(frame);
    let mut p = frame[..l3 - 2].to_vec();
    p.extend_from_slice(&eth_type.to_be_bytes());
    for l in lses {
        p.extend_from_slice(l);
    }
    p.extend_from_slice(&frame[l3..]);
    p
}

#[test]
fn vlan_pop_and_set_vid_and_pcp_are_byte_exact() {
    let input = tagged(&ip4_tcp(64), (3 << 13) | 42);
    // Pop: the frame as it was before it was tagged.
    let Some((verdict, out, _dp)) = run_flows(
        &["priority=10,vlan_vid=0x102a,ip actions=pop_vlan,output:2"],
        &input,
    ) else {
        return;
    };
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out, ip4_tcp(64), "pop_vlan result differs");
    assert_checksums_ok(&out);
    // VID 42 -> 100, the priority kept; then priority 3 -> 6, VID kept.
    for (action, tci) in [
        ("set_field:4196->vlan_vid", (3 << 13) | 100),
        ("set_field:6->vlan_pcp", (6 << 13) | 42),
    ] {
        let flow = format!("priority=10,vlan_vid=0x102a,ip actions={action},output:2");
        let (verdict, out, _dp) = run_flows(&[&flow], &input).expect("set up before");
        assert_eq!(verdict, TC_ACT_REDIRECT, "{action}");
        assert_eq!(out, tagged(&ip4_tcp(64), tci), "{action}: result differs");
        assert_checksums_ok(&out);
    }
}

#[test]
fn vlan_push_is_seen_by_the_controller_byte_exact() {
    let input = ip4_tcp(64);
    // One push with VID 10 and priority 5: the controller gets the frame
    // with that 802.1Q tag.
    let Some((verdict, _, mut dp)) = run_flows(
        &[
            "priority=10,ip actions=push_vlan:0x8100,set_field:4106->vlan_vid,\
           set_field:5->vlan_pcp,CONTROLLER:65535",
        ],
        &input,
    ) else {
        return;
    };
    assert_eq!(verdict, TC_ACT_SHOT, "punted only");
    let punts = dp.punts().expect("punts");
    assert_eq!(punts.len(), 1);
    assert_eq!(punts[0].header.reason, PuntReason::Action as u32);
    assert_eq!(punts[0].data, tagged(&input, (5 << 13) | 10));
    // Two pushes (802.1ad over 802.1Q): the inner tag is in the bytes, the
    // outer one copies the inner's VID until set.
    let (verdict, _, mut dp) = run_flows(
        &[
            "priority=10,ip actions=push_vlan:0x8100,set_field:4106->vlan_vid,\
           push_vlan:0x88a8,CONTROLLER:65535,set_field:4116->vlan_vid,CONTROLLER:65535",
        ],
        &input,
    )
    .expect("set up before");
    assert_eq!(verdict, TC_ACT_SHOT);
    let punts = dp.punts().expect("punts");
    assert_eq!(punts.len(), 2);
    let inner = tagged(&input, 10);
    assert_eq!(
        punts[0].data,
        with_tag(&inner, 0x88a8, 10),
        "outer VID copied"
    );
    assert_eq!(punts[1].data, with_tag(&inner, 0x88a8, 20), "outer VID set");
}

#[test]
fn mpls_push_set_and_pop_are_byte_exact() {
    let input = ip4_tcp(64);
    // Push onto IPv4: label 0, TC 0, bottom of stack, the IP TTL; then set
    // the label and TC. The IP packet behind it is untouched.
    let Some((verdict, out, _dp)) = run_flows(
        &[
            "priority=10,ip actions=push_mpls:0x8847,set_field:100->mpls_label,\
           set_field:5->mpls_tc,output:2",
        ],
        &input,
    ) else {
        return;
    };
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let labelled = with_labels(&input, ETH_MPLS, &[lse(100, 5, true, 64)]);
    assert_eq!(out, labelled, "push_mpls result differs");

    // Push onto a tagged frame: the entry goes after the tag.
    let (verdict, out, _dp) = run_flows(
        &["priority=10,ip actions=push_mpls:0x8847,output:2"],
        &tagged(&input, 7),
    )
    .expect("set up before");
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        out,
        with_labels(&tagged(&input, 7), ETH_MPLS, &[lse(0, 0, true, 64)])
    );

    // Push onto MPLS: a copy of the outer entry, bottom of stack clear.
    let (verdict, out, _dp) = run_flows(
        &["priority=10,mpls actions=push_mpls:0x8847,set_field:200->mpls_label,output:2"],
        &labelled,
    )
    .expect("set up before");
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        out,
        with_labels(
            &input,
            ETH_MPLS,
            &[lse(200, 5, false, 64), lse(100, 5, true, 64)]
        )
    );

    // Pop, with a TTL decrement first: the IPv4 frame again, checksums
    // valid (the IP header was never touched).
    let (verdict, out, _dp) = run_flows(
        &["priority=10,mpls,mpls_label=100 actions=dec_mpls_ttl,pop_mpls:0x0800,output:2"],
        &labelled,
    )
    .expect("set up before");
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out, input, "pop_mpls result differs");
    assert_checksums_ok(&out);

    // Pop the outer of two: the inner entry is then the outer, TTL set.
    let two = with_labels(
        &input,
        ETH_MPLS,
        &[lse(200, 0, false, 9), lse(100, 5, true, 64)],
    );
    let (verdict, out, _dp) = run_flows(
        &["priority=10,mpls,mpls_label=200 actions=pop_mpls:0x8847,set_mpls_ttl:33,output:2"],
        &two,
    )
    .expect("set up before");
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out, with_labels(&input, ETH_MPLS, &[lse(100, 5, true, 33)]));
}
