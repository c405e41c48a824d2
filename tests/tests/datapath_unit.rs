//! BPF_PROG_TEST_RUN unit tests of the datapath programs (`daolinet_tc`,
//! `daolinet_xdp`) on hand-crafted packets.
//!
//! They need root (the workspace skip rule applies:
//! `daolinet_testlab::require`). They load the object embedded in the
//! agent (`$DAOLINET_BPF_OBJECT` overrides it, e.g. to test a variant).
//!
//! The ingress port is registered under ifindex 1 (`lo`): that is the device
//! BPF_PROG_TEST_RUN gives the skb (and the XDP rx queue) when the context
//! names ifindex 1. Output ports may use made-up ifindexes: the redirect
//! helpers only record the target in a test run.

#![allow(clippy::expect_used)] // test helpers: a failed expect is a failed test

use daolinet_common::{
    Action, DropReason, FlowEntry, FlowKey, MissPolicy, PortInfo, PortKind, PuntReason, Subtable,
    MAX_ACTIONS, NO_RULE, PORT_FLAG_ANTI_SPOOF,
};
use daolinet_testlab::{require, Need, ThreadNetns};
use daolinet_tests::bpf::{
    Datapath, NoCounters, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS,
    XDP_REDIRECT, XDP_TX,
};

/// What every test here needs.
const NEEDS: [Need; 2] = [Need::Root, Need::BpfObject];

// ---------------------------------------------------------------------------
// Packet building and independent (full, not incremental) checksums.

/// One's-complement sum of `data` folded to 16 bits (not inverted).
fn ones_sum(data: &[u8], mut acc: u32) -> u32 {
    for chunk in data.chunks(2) {
        let w = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        acc += w as u32;
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// The Internet checksum of `data`.
fn csum(data: &[u8]) -> u16 {
    !(ones_sum(data, 0) as u16)
}

/// TCP/UDP checksum over the IPv4 pseudo-header and `segment` (whose
/// checksum field must be zero).
fn l4_csum(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    let acc = ones_sum(&pseudo, 0);
    !(ones_sum(segment, acc) as u16)
}

const ETH_IPV4: u16 = 0x0800;
const ETH_ARP: u16 = 0x0806;

fn eth(dst: [u8; 6], src: [u8; 6], eth_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&dst);
    p.extend_from_slice(&src);
    p.extend_from_slice(&eth_type.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut h = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0x12,
        0x34,
        0x40, // DF
        0,
        ttl,
        proto,
        0,
        0,
    ];
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = csum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // seq
    s.extend_from_slice(&0u32.to_be_bytes()); // ack
    s.extend_from_slice(&[0x50, 0x02]); // data offset 5, SYN
    s.extend_from_slice(&0xfaf0u16.to_be_bytes()); // window
    s.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
    s.extend_from_slice(data);
    let c = l4_csum(src, dst, 6, &s);
    s[16..18].copy_from_slice(&c.to_be_bytes());
    s
}

fn udp(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    data: &[u8],
    with_csum: bool,
) -> Vec<u8> {
    let len = 8 + data.len();
    let mut s = Vec::new();
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&(len as u16).to_be_bytes());
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(data);
    if with_csum {
        let mut c = l4_csum(src, dst, 17, &s);
        if c == 0 {
            c = 0xffff;
        }
        s[6..8].copy_from_slice(&c.to_be_bytes());
    }
    s
}

fn icmp_echo(id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut s = vec![8, 0, 0, 0];
    s.extend_from_slice(&id.to_be_bytes());
    s.extend_from_slice(&seq.to_be_bytes());
    s.extend_from_slice(data);
    let c = csum(&s);
    s[2..4].copy_from_slice(&c.to_be_bytes());
    s
}

fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    let mut s = vec![0, 1, 0x08, 0x00, 6, 4];
    s.extend_from_slice(&op.to_be_bytes());
    s.extend_from_slice(&sha);
    s.extend_from_slice(&spa);
    s.extend_from_slice(&tha);
    s.extend_from_slice(&tpa);
    s
}

/// A full Ethernet/IPv4/TCP frame.
fn tcp_frame(m: Macs, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, ttl: u8) -> Vec<u8> {
    let seg = tcp(src, dst, sport, dport, b"hello, daolinet");
    eth(m.dst, m.src, ETH_IPV4, &ipv4(src, dst, 6, ttl, &seg))
}

/// A full Ethernet/IPv4/UDP frame.
fn udp_frame(
    m: Macs,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    with_csum: bool,
) -> Vec<u8> {
    let seg = udp(src, dst, sport, dport, b"0123456789abcdefXYZ", with_csum);
    eth(m.dst, m.src, ETH_IPV4, &ipv4(src, dst, 17, 64, &seg))
}

/// A full Ethernet/IPv4/ICMP echo frame.
fn icmp_frame(m: Macs, src: [u8; 4], dst: [u8; 4], ttl: u8) -> Vec<u8> {
    eth(
        m.dst,
        m.src,
        ETH_IPV4,
        &ipv4(src, dst, 1, ttl, &icmp_echo(7, 1, b"ping")),
    )
}

#[derive(Clone, Copy)]
struct Macs {
    src: [u8; 6],
    dst: [u8; 6],
}

/// Check an Ethernet/IPv4 frame's IP header checksum and, for TCP/UDP,
/// its L4 checksum, by full recomputation.
fn assert_checksums_ok(frame: &[u8]) {
    assert_eq!(u16::from_be_bytes([frame[12], frame[13]]), ETH_IPV4);
    let ip = &frame[14..];
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    assert_eq!(
        ones_sum(&ip[..ihl], 0),
        0xffff,
        "IPv4 header checksum is wrong"
    );
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let src = [ip[12], ip[13], ip[14], ip[15]];
    let dst = [ip[16], ip[17], ip[18], ip[19]];
    let seg = &ip[ihl..total];
    match ip[9] {
        6 => {
            let mut s = seg.to_vec();
            let got = u16::from_be_bytes([s[16], s[17]]);
            s[16..18].copy_from_slice(&[0, 0]);
            assert_eq!(got, l4_csum(src, dst, 6, &s), "TCP checksum is wrong");
        }
        17 => {
            let mut s = seg.to_vec();
            let got = u16::from_be_bytes([s[6], s[7]]);
            if got != 0 {
                s[6..8].copy_from_slice(&[0, 0]);
                let mut want = l4_csum(src, dst, 17, &s);
                if want == 0 {
                    want = 0xffff;
                }
                assert_eq!(got, want, "UDP checksum is wrong");
            }
        }
        1 => assert_eq!(ones_sum(seg, 0), 0xffff, "ICMP checksum is wrong"),
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// Topology used by the tests.

/// Ingress port: ifindex 1 (`lo`, what test runs use), OpenFlow port 1.
const IN_IFINDEX: u32 = 1;
const IN_OFPORT: u32 = 1;
const IN_SLOT: u32 = 1;
/// A second container port (made-up ifindex: never really sent to).
const PEER_OFPORT: u32 = 2;
const PEER_SLOT: u32 = 2;
/// The uplink.
const UPLINK_OFPORT: u32 = 100;
const UPLINK_SLOT: u32 = 3;

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_GW: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const MAC_H1: [u8; 6] = [0x52, 0x54, 0, 0, 0x11, 0x11];
const MAC_H2: [u8; 6] = [0x52, 0x54, 0, 0, 0x22, 0x22];
const IP_A: [u8; 4] = [10, 1, 0, 2]; // logical
const IP_B: [u8; 4] = [10, 1, 0, 3]; // logical
const PIP_A: [u8; 4] = [172, 16, 200, 17]; // physical
const PIP_B: [u8; 4] = [192, 168, 77, 250]; // physical
const FROM_A: Macs = Macs {
    src: MAC_A,
    dst: MAC_GW,
};

fn port(ofport: u32, ifindex: u32, kind: PortKind, miss: MissPolicy, slot: u32) -> PortInfo {
    PortInfo {
        ofport,
        ifindex,
        kind: kind as u32,
        miss: miss as u32,
        slot,
        allowed_ipv4: [0; 4],
        allowed_mac: [0; 6],
        flags: 0,
    }
}

/// Load the datapath with the ingress container port (miss policy `miss`),
/// a peer container port and the uplink. `None` when skipped.
fn setup(miss: MissPolicy) -> Option<Datapath> {
    require(&NEEDS)?;
    let mut dp = Datapath::load().expect("loading the datapath");
    dp.add_port(port(
        IN_OFPORT,
        IN_IFINDEX,
        PortKind::Container,
        miss,
        IN_SLOT,
    ))
    .expect("registering a port");
    dp.add_port(port(
        PEER_OFPORT,
        4343,
        PortKind::Container,
        MissPolicy::Punt,
        PEER_SLOT,
    ))
    .expect("registering a port");
    dp.add_port(port(
        UPLINK_OFPORT,
        4242,
        PortKind::Uplink,
        MissPolicy::Local,
        UPLINK_SLOT,
    ))
    .expect("registering a port");
    Some(dp)
}

/// Mask: in_port, eth_type, ipv4 src and dst.
fn mask_in_port_ip_pair() -> FlowKey {
    FlowKey {
        in_port: u32::MAX,
        eth_type: u16::MAX,
        ipv4_src: [0xff; 4],
        ipv4_dst: [0xff; 4],
        ..Default::default()
    }
}

/// Mask: eth_type and ipv4 dst only.
fn mask_ip_dst() -> FlowKey {
    FlowKey {
        eth_type: u16::MAX,
        ipv4_dst: [0xff; 4],
        ..Default::default()
    }
}

fn ip_key(in_port: u32, src: [u8; 4], dst: [u8; 4]) -> FlowKey {
    FlowKey {
        in_port,
        eth_type: FlowKey::ETH_TYPE_IPV4,
        ipv4_src: src,
        ipv4_dst: dst,
        ..Default::default()
    }
}

fn entry(priority: u32, rule_id: u32, actions: &[Action]) -> FlowEntry {
    assert!(actions.len() <= MAX_ACTIONS);
    let mut e = FlowEntry {
        priority,
        rule_id,
        n_actions: actions.len() as u32,
        ..Default::default()
    };
    e.actions[..actions.len()].copy_from_slice(actions);
    e
}

fn subtable(id: u32, mask: FlowKey, max_priority: u32) -> Subtable {
    Subtable {
        mask,
        id,
        max_priority,
    }
}

/// Install one rule for A -> B (in_port, ip pair) in a single subtable.
fn install_pair_rule(dp: &mut Datapath, rule_id: u32, actions: &[Action]) {
    let sub = subtable(1, mask_in_port_ip_pair(), 1000);
    dp.set_subtables(&[sub]).expect("subtables");
    dp.insert_flow(
        &sub,
        &ip_key(IN_OFPORT, IP_A, IP_B),
        entry(1000, rule_id, actions),
    )
    .expect("inserting a flow");
}

/// The cross-host rewrite of the source host (docs/architecture.md,
/// "Cross-host pair").
fn cross_host_actions() -> Vec<Action> {
    vec![
        Action::set_eth_src(MAC_H1),
        Action::set_eth_dst(MAC_H2),
        Action::set_ipv4_src(PIP_A),
        Action::set_ipv4_dst(PIP_B),
        Action::output(UPLINK_OFPORT),
    ]
}

const H1_TO_H2: Macs = Macs {
    src: MAC_H1,
    dst: MAC_H2,
};

/// A veth pair with a chosen ifindex in the test's namespace, deleted on drop.
struct VethWithIndex(String);

impl VethWithIndex {
    /// A pair named `dpux<pid>`/`dpuy<pid>` whose first end has an ifindex
    /// at or above `min` (the first free one of a few tried).
    fn create(min: u32) -> Option<(Self, u32)> {
        let pid = std::process::id();
        let (a, b) = (format!("dpux{pid}"), format!("dpuy{pid}"));
        for i in 0..50 {
            let index = min + (pid % 1000) * 50 + i;
            let ok = std::process::Command::new("ip")
                .args([
                    "link",
                    "add",
                    &a,
                    "index",
                    &index.to_string(),
                    "type",
                    "veth",
                ])
                .args(["peer", "name", &b])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Some((Self(a), index));
            }
        }
        None
    }
}

impl Drop for VethWithIndex {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .status();
    }
}

/// Ports whose ifindex does not fit the array index are found through the
/// hash map: a packet arriving on one is classified and forwarded.
#[test]
fn tc_ingress_on_a_port_beyond_the_array_index() {
    let Some(mut dp) = setup(MissPolicy::Punt) else {
        return;
    };
    let (_veth, far) = VethWithIndex::create(daolinet_common::PORT_INDEX_SLOTS + 10_000)
        .expect("creating a veth pair with a large ifindex");
    dp.add_port(port(
        IN_OFPORT + 50,
        far,
        PortKind::Container,
        MissPolicy::Punt,
        9,
    ))
    .expect("registering a port");
    let sub = subtable(1, mask_in_port_ip_pair(), 1000);
    dp.set_subtables(&[sub]).expect("subtables");
    dp.insert_flow(
        &sub,
        &ip_key(IN_OFPORT + 50, IP_A, IP_B),
        entry(1000, 8, &[Action::output(PEER_OFPORT)]),
    )
    .expect("inserting a flow");
    let input = tcp_frame(FROM_A, IP_A, IP_B, 40000, 5201, 64);
    let (verdict, _) = dp.run_tc(&input, far).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(dp.port_stats(9).unwrap().rx_packets, 1);
    assert_eq!(dp.drop_count(DropReason::UnknownIngress).unwrap(), 0);
}

/// Ports whose numbers do not fit the array indexes are found through the
/// hash maps: an output to an OpenFlow port number beyond
/// `OFPORT_INDEX_SLOTS` still leaves by that port.
#[test]
fn tc_output_to_a_port_beyond_the_array_index() {
    let Some(mut dp) = setup(MissPolicy::Punt) else {
        return;
    };
    let far = daolinet_common::OFPORT_INDEX_SLOTS + 7;
    dp.add_port(port(far, 4444, PortKind::Uplink, MissPolicy::Local, 9))
        .expect("registering a port");
    install_pair_rule(&mut dp, 8, &[Action::output(far)]);
    let input = tcp_frame(FROM_A, IP_A, IP_B, 40000, 5201, 64);
    let (verdict, _) = dp.run_tc(&input, IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(dp.port_stats(9).unwrap().tx_packets, 1);
    assert_eq!(dp.drop_count(DropReason::NoSuchPort).unwrap(), 0);
}

// ---------------------------------------------------------------------------
// (a) cross-host rewrite

#[test]
fn tc_cross_host_rewrite_is_byte_exact_with_valid_checksums() {
    let Some(mut dp) = setup(MissPolicy::Punt) else {
        return;
    };
    install_pair_rule(&mut dp, 7, &cross_host_actions());

    let cases = [
        (
            tcp_frame(FROM_A, IP_A, IP_B, 40000, 5201, 64),
            tcp_frame(H1_TO_H2, PIP_A, PIP_B, 40000, 5201, 64),
        ),
        (
            udp_frame(FROM_A, IP_A, IP_B, 53000, 53, true),
            udp_frame(H1_TO_H2, PIP_A, PIP_B, 53000, 53, true),
        ),
        (
            icmp_frame(FROM_A, IP_A, IP_B, 64),
            icmp_frame(H1_TO_H2, PIP_A, PIP_B, 64),
        ),
    ];
    for (input, want) in cases {
        let (verdict, out) = dp.run_tc(&input, IN_IFINDEX).unwrap();
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_checksums_ok(&out);
        assert_eq!(out, want, "rewritten frame differs");
    }
    let tx = dp.port_stats(UPLINK_SLOT).unwrap();
    assert_eq!(tx.tx_packets, 3);
    let rx = dp.port_stats(IN_SLOT).unwrap();
    assert_eq!(rx.rx_packets, 3);
    assert_eq!(rx.rx_dropped, 0);
}

#[test]
fn tc_udp_without_checksum_keeps_zero_checksum() {
    let Some(mut dp) = setup(MissPolicy::Punt) else {
        return;
    };
    install_pair_rule(&mut dp, 7, &cross_host_actions());
    let input = udp_frame(FROM_A, IP_A, IP_B, 53000, 53, false);
    let want = udp_frame(H1_TO_H2, PIP_A, PIP_B, 53000, 53, false);
    let (verdict, out) = dp.run_tc(&input, IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out, want);
    assert_checksums_ok(&out);
}

#[test]
fn tc_reverse_rewrite_on_destination_host_outputs_to_container() {
    // H2 side: in_port=uplink, physical pair -> logical pair, output B.
    let Some(mut dp) = setup(MissPolicy::Punt) else {
        return;
    };
    // Traffic arrives on the uplink here: register it under ifindex 1.
    dp.add_port(port(
        UPLINK_OFPORT,
        IN_IFINDEX,
        PortKind::Uplink,
        MissPolicy::Local,
        UPLINK_SLOT,
    ))
    .unwrap();
    let sub = subtable(3, mask_in_port_ip_pair(), 10);
    dp.set_subtables(&[sub]).unwrap();
    let actions = [
        Action::set_eth_src(MAC_GW),
        Action::set_eth_dst([0x02, 0, 0, 0, 0, 0x0b]),
        Action::set_ipv4_src(IP_A),
        Action::set_ipv4_dst(IP_B),
        Action::output(PEER_OFPORT),
    ];
    dp.insert_flow(
        &sub,
        &ip_key(UPLINK_OFPORT, PIP_A, PIP_B),
        entry(10, 9, &actions),
    )
    .unwrap();
    let input = tcp_frame(H1_TO_H2, PIP_A, PIP_B, 40000, 5201, 63);
    let to_b = Macs {
        src: MAC_GW,
        dst: [0x02, 0, 0, 0, 0, 0x0b],
    };
    let want = tcp_frame(to_b, IP_A, IP_B, 40000, 5201, 63);
    let (verdict, out) = dp.run_tc(&input, IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT, "bpf_redirect_peer");
    assert_eq!(out, want);
    assert_checksums_ok(&out);
    assert_eq!(dp.port_stats(PEER_SLOT).unwrap().tx_packets, 1);
}

// ---------------------------------------------------------------------------
// (b) L4 ports

#[test]
fn tc_set_l4_ports_fixes_tcp_and_udp_checksums() {
    let Some(mut dp) = setup(MissPolicy::Punt) else {
        return;
    };
    install_pair_rule(
        &mut dp,
        3,
        &[
            Action::set_l4_src(61000),
            Action::set_l4_dst(8080),
            Action::output(UPLINK_OFPORT),
        ],
    );
    let cases = [
        (
            tcp_frame(FROM_A, IP_A, IP_B, 40000, 80, 64),
            tcp_frame(FROM_A, IP_A, IP_B, 61000, 8080, 64),
        ),
        (
            udp_frame(FROM_A, IP_A, IP_B, 40000, 80, true),
            udp_frame(FROM_A, IP_A, IP_B, 61000, 8080, true),
        ),
        (
            udp_frame(FROM_A, IP_A, IP_B, 40000, 80, false),
            udp_frame(FROM_A, IP_A, IP_B, 61000, 8080, false),
        ),
        // ICMP has no ports: the set actions are skipped, the output happens.
        (
            icmp_frame(FROM_A, IP_A, IP_B, 64),
            icmp_frame(FROM_A, IP_A, IP_B, 64),
        ),
    ];
    for (input, want) in cases {
        let (verdict, out) = dp.run_tc(&input, IN_IFINDEX).unwrap();
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_checksums_ok(&out);
        assert_eq!(out, want);
    }
}

// ---------------------------------------------------------------------------
// (c) dec_ttl

#[test]
fn tc_dec_ttl_decrements_and_punts_expiring_packets() {
    let Some(mut dp) = setup(MissPolicy::Punt) else {
        return;
    };
    install_pair_rule(
        &mut dp,
        11,
        &[Action::dec_ttl(), Action::output(UPLINK_OFPORT)],
    );

    let input = tcp_frame(FROM_A, IP_A, IP_B, 1234, 80, 64);
    let want = tcp_frame(FROM_A, IP_A, IP_B, 1234, 80, 63);
    let (verdict, out) = dp.run_tc(&input, IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out, want);
    assert_checksums_ok(&out);

    // TTL 1: punted with InvalidTtl, the original dropped (not counted as a drop).
    let input = icmp_frame(FROM_A, IP_A, IP_B, 1);
    let (verdict, out) = dp.run_tc(&input, IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(out, input, "an expiring packet is punted unmodified");
    let punts = dp.punts().unwrap();
    assert_eq!(punts.len(), 1);
    let p = &punts[0];
    assert_eq!(
        PuntReason::from_u32(p.header.reason),
        Some(PuntReason::InvalidTtl)
    );
    assert_eq!(p.header.rule_id, 11);
    assert_eq!(p.header.in_port, IN_OFPORT);
    assert_eq!(p.data, input);
    assert_eq!(dp.drop_count(DropReason::TtlExceeded).unwrap(), 0);
}

// ---------------------------------------------------------------------------
// (d) table miss

#[test]
fn tc_miss_punts_the_whole_packet_and_drops_the_original() {
    let Some(mut dp) = setup(MissPolicy::Punt) else {
        return;
    };
    // A rule for another pair only: this packet misses.
    let sub = subtable(1, mask_in_port_ip_pair(), 5);
    dp.set_subtables(&[sub]).unwrap();
    dp.insert_flow(
        &sub,
        &ip_key(IN_OFPORT, IP_B, IP_A),
        entry(5, 1, &[Action::output_local()]),
    )
    .unwrap();

    let input = tcp_frame(FROM_A, IP_A, IP_B, 40000, 22, 64);
    let (verdict, _) = dp.run_tc(&input, IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_SHOT);
    let punts = dp.punts().unwrap();
    assert_eq!(punts.len(), 1);
    let h = punts[0].header;
    assert_eq!(h.ifindex, IN_IFINDEX);
    assert_eq!(h.in_port, IN_OFPORT);
    assert_eq!(PuntReason::from_u32(h.reason), Some(PuntReason::Miss));
    assert_eq!(h.rule_id, NO_RULE);
    assert_eq!(h.pkt_len as usize, input.len());
    assert_eq!(h.cap_len as usize, input.len());
    assert!(h.timestamp_ns > 0);
    assert_eq!(punts[0].data, input);
    // A punt is not a drop.
    assert!(dp.drops().unwrap().iter().all(|c| *c == 0));
    assert_eq!(dp.rule_stats(1).unwrap().packets, 0);
}

#[test]
fn tc_miss_with_no_subtables_and_large_packet_is_capped() {
    let Some(mut dp) = setup(MissPolicy::Punt) else {
        return;
    };
    let payload = vec![0xabu8; 3000];
    let seg = udp(IP_A, IP_B, 1, 2, &payload, true);
    let input = eth(MAC_GW, MAC_A, ETH_IPV4, &ipv4(IP_A, IP_B, 17, 64, &seg));
    let (verdict, _) = dp.run_tc(&input, IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_SHOT);
    let punts = dp.punts().unwrap();
    assert_eq!(punts.len(), 1);
    assert_eq!(punts[0].header.pkt_len as usize, input.len());
    assert_eq!(punts[0].header.cap_len as usize, daolinet_common::PUNT_CAP);
    assert_eq!(punts[0].data, input[..daolinet_common::PUNT_CAP]);
}

#[test]
fn tc_miss_policy_local_passes_and_drop_drops() {
    let Some(mut dp) = setup(MissPolicy::Local) else {
        return;
    };
    let input = tcp_frame(FROM_A, IP_A, IP_B, 40000, 22, 64);
    let (verdict, out) = dp.run_tc(&input, IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, input);
    assert!(dp.punts().unwrap().is_empty());

    dp.add_port(port(
        IN_OFPORT,
        IN_IFINDEX,
        PortKind::Container,
        MissPolicy::Drop,
        IN_SLOT,
    ))
    .unwrap();
    let (verdict, _) = dp.run_tc(&input, IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(dp.drop_count(DropReason::MissDrop).unwrap(), 1);
    assert_eq!(dp.port_stats(IN_SLOT).unwrap().rx_dropped, 1);
}

#[test]
fn tc_unknown_ingress_passes_untouched() {
    let Some(_ready) = require(&NEEDS) else {
        return;
    };
    let mut dp = Datapath::load().expect("loading the datapath");
    let input = tcp_frame(FROM_A, IP_A, IP_B, 40000, 22, 64);
    let (verdict, out) = dp.run_tc(&input, IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, input);
    assert_eq!(dp.drop_count(DropReason::UnknownIngress).unwrap(), 1);
}

// ---------------------------------------------------------------------------
// (e) priorities across subtables

#[test]
fn tc_higher_priority_in_later_subtable_wins_and_walk_stops_early() {
    let Some(mut dp) = setup(MissPolicy::Punt) else {
        return;
    };
    let mark = |last: u8| Action::set_eth_dst([0x02, 0xee, 0, 0, 0, last]);
    let wide = subtable(1, mask_ip_dst(), 100); // inserted first
    let narrow = subtable(2, mask_in_port_ip_pair(), 200); // inserted later
    dp.insert_flow(
        &wide,
        &ip_key(0, [0; 4], IP_B),
        entry(100, 1, &[mark(1), Action::output(UPLINK_OFPORT)]),
    )
    .unwrap();
    dp.insert_flow(
        &narrow,
        &ip_key(IN_OFPORT, IP_A, IP_B),
        entry(200, 2, &[mark(2), Action::output(UPLINK_OFPORT)]),
    )
    .unwrap();
    // Sorted by descending max priority: the later subtable comes first.
    dp.set_subtables(&[narrow, wide]).unwrap();

    let input = tcp_frame(FROM_A, IP_A, IP_B, 1, 2, 64);
    let (verdict, out) = dp.run_tc(&input, IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        out[..6],
        [0x02, 0xee, 0, 0, 0, 2],
        "the priority-200 rule wins"
    );
    assert_eq!(dp.rule_stats(2).unwrap().packets, 1);
    assert_eq!(dp.rule_stats(1).unwrap().packets, 0);

    // Another source only matches the wide rule.
    let other = tcp_frame(FROM_A, [10, 1, 0, 99], IP_B, 1, 2, 64);
    let (_, out) = dp.run_tc(&other, IN_IFINDEX).unwrap();
    assert_eq!(out[..6], [0x02, 0xee, 0, 0, 0, 1]);
    assert_eq!(dp.rule_stats(1).unwrap().packets, 1);

    // Early stop: once a match has priority >= the next subtable's
    // max_priority, that subtable is not consulted. A rule there with a
    // (deliberately inconsistent) higher priority proves it.
    dp.insert_flow(
        &wide,
        &ip_key(0, [0; 4], IP_B),
        entry(900, 3, &[mark(3), Action::output(UPLINK_OFPORT)]),
    )
    .unwrap();
    let (_, out) = dp.run_tc(&input, IN_IFINDEX).unwrap();
    assert_eq!(
        out[..6],
        [0x02, 0xee, 0, 0, 0, 2],
        "walk stopped after the first subtable"
    );

    // No early stop while the best is below the next max_priority: the
    // first subtable's lower-priority match loses to a later one.
    let wide2 = subtable(1, mask_ip_dst(), 150);
    dp.insert_flow(
        &wide2,
        &ip_key(0, [0; 4], IP_B),
        entry(150, 4, &[mark(4), Action::output(UPLINK_OFPORT)]),
    )
    .unwrap();
    let narrow2 = subtable(2, mask_in_port_ip_pair(), 300);
    dp.insert_flow(
        &narrow2,
        &ip_key(IN_OFPORT, IP_A, IP_B),
        entry(120, 5, &[mark(5), Action::output(UPLINK_OFPORT)]),
    )
    .unwrap();
    dp.set_subtables(&[narrow2, wide2]).unwrap();
    let (_, out) = dp.run_tc(&input, IN_IFINDEX).unwrap();
    assert_eq!(out[..6], [0x02, 0xee, 0, 0, 0, 4], "priority 150 beats 120");
}

// ---------------------------------------------------------------------------
// (f) drops

/// With enough subtables the exact-match cache answers for known keys; a
/// rule change (which bumps the table generation) must never let it answer
/// with a stale winner.
#[test]
fn tc_exact_match_cache_follows_rule_changes() {
    let Some(mut dp) = setup(MissPolicy::Punt) else {
        return;
    };
    // Three empty subtables walked before the pair subtable: the cache is on.
    let mut subs: Vec<Subtable> = (0..3u16)
        .map(|i| {
            let mask = FlowKey {
                eth_type: u16::MAX,
                l4_dst: u16::MAX,
                l4_src: i,
                ..Default::default()
            };
            subtable(10 + i as u32, mask, 900)
        })
        .collect();
    let pair = subtable(1, mask_in_port_ip_pair(), 100);
    subs.push(pair);
    dp.set_subtables(&subs).unwrap();
    dp.insert_flow(
        &pair,
        &ip_key(IN_OFPORT, IP_A, IP_B),
        entry(100, 1, &[Action::output(PEER_OFPORT)]),
    )
    .unwrap();
    let input = udp_frame(FROM_A, IP_A, IP_B, 7, 8, true);
    for _ in 0..3 {
        assert_eq!(dp.run_tc(&input, IN_IFINDEX).unwrap().0, TC_ACT_REDIRECT);
    }
    assert_eq!(dp.rule_stats(1).unwrap().packets, 3);

    // A better rule appears in a new, first subtable: it wins at once.
    let dst = subtable(2, mask_ip_dst(), 200);
    let mut with_dst = vec![dst];
    with_dst.extend_from_slice(&subs);
    dp.set_subtables(&with_dst).unwrap();
    dp.insert_flow(
        &dst,
        &ip_key(0, [0; 4], IP_B),
        entry(200, 2, &[Action::output(UPLINK_OFPORT)]),
    )
    .unwrap();
    for _ in 0..2 {
        assert_eq!(dp.run_tc(&input, IN_IFINDEX).unwrap().0, TC_ACT_REDIRECT);
    }
    assert_eq!(dp.rule_stats(2).unwrap().packets, 2, "stale cache answer");
    assert_eq!(dp.rule_stats(1).unwrap().packets, 3);

    // It goes away again (subtable list unchanged): back to the first rule.
    // (Its counters go with its entry: the agent reads them first.)
    dp.remove_flow(&dst, &ip_key(0, [0; 4], IP_B)).unwrap();
    assert_eq!(dp.run_tc(&input, IN_IFINDEX).unwrap().0, TC_ACT_REDIRECT);
    assert_eq!(dp.rule_stats(1).unwrap().packets, 4);
    assert_eq!(dp.rule_stats(2).unwrap().packets, 0);
    // And the first rule's actions changed in place are applied.
    dp.insert_flow(
        &pair,
        &ip_key(IN_OFPORT, IP_A, IP_B),
        entry(100, 1, &[Action::drop_packet()]),
    )
    .unwrap();
    assert_eq!(dp.run_tc(&input, IN_IFINDEX).unwrap().0, TC_ACT_SHOT);
    assert_eq!(dp.port_stats(PEER_SLOT).unwrap().tx_packets, 4);
}

#[test]
fn tc_drop_action_and_empty_action_list_count_policy_drops() {
    let Some(mut dp) = setup(MissPolicy::Punt) else {
        return;
    };
    install_pair_rule(&mut dp, 4, &[Action::drop_packet()]);
    let input = tcp_frame(FROM_A, IP_A, IP_B, 1, 2, 64);
    let (verdict, _) = dp.run_tc(&input, IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(dp.drop_count(DropReason::PolicyDrop).unwrap(), 1);

    install_pair_rule(&mut dp, 4, &[]);
    let (verdict, _) = dp.run_tc(&input, IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(dp.drop_count(DropReason::PolicyDrop).unwrap(), 2);

    // Set actions without an output also drop (OpenFlow semantics).
    install_pair_rule(&mut dp, 4, &[Action::set_eth_dst(MAC_H2)]);
    let (verdict, _) = dp.run_tc(&input, IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(dp.drop_count(DropReason::PolicyDrop).unwrap(), 3);
    assert_eq!(dp.port_stats(IN_SLOT).unwrap().rx_dropped, 3);

    // Output to an unknown port.
    install_pair_rule(&mut dp, 4, &[Action::output(77)]);
    let (verdict, _) = dp.run_tc(&input, IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(dp.drop_count(DropReason::NoSuchPort).unwrap(), 1);
}

#[test]
fn tc_anti_spoofing_drops_foreign_sources() {
    let Some(mut dp) = setup(MissPolicy::Local) else {
        return;
    };
    let mut p = port(
        IN_OFPORT,
        IN_IFINDEX,
        PortKind::Container,
        MissPolicy::Local,
        IN_SLOT,
    );
    p.flags = PORT_FLAG_ANTI_SPOOF;
    p.allowed_mac = MAC_A;
    p.allowed_ipv4 = IP_A;
    dp.add_port(p).unwrap();

    // Registered source: passes (miss -> local).
    let good = tcp_frame(FROM_A, IP_A, IP_B, 1, 2, 64);
    assert_eq!(dp.run_tc(&good, IN_IFINDEX).unwrap().0, TC_ACT_OK);
    // Forged IP.
    let bad_ip = tcp_frame(FROM_A, [10, 1, 0, 66], IP_B, 1, 2, 64);
    assert_eq!(dp.run_tc(&bad_ip, IN_IFINDEX).unwrap().0, TC_ACT_SHOT);
    // Forged MAC.
    let bad_mac = tcp_frame(
        Macs {
            src: [0x02, 0, 0, 0, 0, 0x66],
            dst: MAC_GW,
        },
        IP_A,
        IP_B,
        1,
        2,
        64,
    );
    assert_eq!(dp.run_tc(&bad_mac, IN_IFINDEX).unwrap().0, TC_ACT_SHOT);
    // ARP with a forged sender address; then a legitimate one.
    let bad_arp = eth(
        [0xff; 6],
        MAC_A,
        ETH_ARP,
        &arp(1, MAC_A, [10, 1, 0, 66], [0; 6], IP_B),
    );
    assert_eq!(dp.run_tc(&bad_arp, IN_IFINDEX).unwrap().0, TC_ACT_SHOT);
    let good_arp = eth(
        [0xff; 6],
        MAC_A,
        ETH_ARP,
        &arp(1, MAC_A, IP_A, [0; 6], IP_B),
    );
    assert_eq!(dp.run_tc(&good_arp, IN_IFINDEX).unwrap().0, TC_ACT_OK);

    assert_eq!(dp.drop_count(DropReason::Spoofed).unwrap(), 3);
    assert_eq!(dp.port_stats(IN_SLOT).unwrap().rx_dropped, 3);
    assert_eq!(dp.port_stats(IN_SLOT).unwrap().rx_packets, 5);
}

#[test]
fn tc_truncated_ipv4_is_malformed() {
    let Some(mut dp) = setup(MissPolicy::Local) else {
        return;
    };
    let full = tcp_frame(FROM_A, IP_A, IP_B, 1, 2, 64);
    // IPv4 header cut short. (The kernel's skb test run refuses IPv4 frames
    // shorter than Ethernet + 20 bytes, so TC is fed an IHL whose options
    // are missing; the XDP test below cuts the fixed header itself.)
    let mut short = full[..14 + 20].to_vec();
    short[14] = 0x4f; // IHL 15: 60-byte header
    let (verdict, _) = dp.run_tc(&short, IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_SHOT);
    // TCP header cut short.
    let (verdict, _) = dp.run_tc(&full[..14 + 20 + 10], IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_SHOT);
    // Bad IHL.
    let mut bad = full.clone();
    bad[14] = 0x43;
    let (verdict, _) = dp.run_tc(&bad, IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(dp.drop_count(DropReason::Malformed).unwrap(), 3);
    // A non-IP frame is fine with only its Ethernet header.
    let other = eth(MAC_GW, MAC_A, 0x88b5, &[1, 2, 3]);
    assert_eq!(dp.run_tc(&other, IN_IFINDEX).unwrap().0, TC_ACT_OK);
}

// ---------------------------------------------------------------------------
// (g) rule statistics

#[test]
fn tc_rule_stats_count_packets_bytes_and_last_use() {
    let Some(mut dp) = setup(MissPolicy::Punt) else {
        return;
    };
    install_pair_rule(&mut dp, 42, &[Action::output(PEER_OFPORT)]);
    let input = udp_frame(FROM_A, IP_A, IP_B, 5, 6, true);
    for _ in 0..3 {
        assert_eq!(dp.run_tc(&input, IN_IFINDEX).unwrap().0, TC_ACT_REDIRECT);
    }
    let s = dp.rule_stats(42).unwrap();
    assert_eq!(s.packets, 3);
    assert_eq!(s.bytes, 3 * input.len() as u64);
    assert!(s.last_used_ns > 0);
    let now = {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    };
    assert!(s.last_used_ns <= now, "last_used_ns is CLOCK_MONOTONIC");
    let ps = dp.port_stats(PEER_SLOT).unwrap();
    assert_eq!(ps.tx_packets, 3);
    assert_eq!(ps.tx_bytes, 3 * input.len() as u64);
}

// ---------------------------------------------------------------------------
// Other outputs

#[test]
fn tc_other_outputs_local_in_port_and_controller() {
    let Some(mut dp) = setup(MissPolicy::Punt) else {
        return;
    };
    let input = tcp_frame(FROM_A, IP_A, IP_B, 1, 2, 64);

    install_pair_rule(&mut dp, 1, &[Action::output_local()]);
    assert_eq!(dp.run_tc(&input, IN_IFINDEX).unwrap().0, TC_ACT_OK);

    install_pair_rule(
        &mut dp,
        1,
        &[Action::set_eth_dst(MAC_A), Action::output_in_port()],
    );
    let (verdict, out) = dp.run_tc(&input, IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out[..6], MAC_A);
    assert_eq!(dp.port_stats(IN_SLOT).unwrap().tx_packets, 1);

    install_pair_rule(&mut dp, 9, &[Action::controller(0xffff)]);
    let (verdict, _) = dp.run_tc(&input, IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_SHOT);
    let punts = dp.punts().unwrap();
    assert_eq!(punts.len(), 1);
    assert_eq!(
        PuntReason::from_u32(punts[0].header.reason),
        Some(PuntReason::Action)
    );
    assert_eq!(punts[0].header.rule_id, 9);
    assert_eq!(punts[0].data, input);
    assert!(dp.drops().unwrap().iter().all(|c| *c == 0));

    // Set actions on a packet without that header are skipped (ARP has no
    // IPv4 header to rewrite); the output still happens.
    let sub = subtable(
        2,
        FlowKey {
            eth_type: u16::MAX,
            ..Default::default()
        },
        1,
    );
    dp.set_subtables(&[sub]).unwrap();
    dp.insert_flow(
        &sub,
        &FlowKey {
            eth_type: FlowKey::ETH_TYPE_ARP,
            ..Default::default()
        },
        entry(
            1,
            2,
            &[
                Action::set_ipv4_src(PIP_A),
                Action::set_l4_dst(9),
                Action::output(UPLINK_OFPORT),
            ],
        ),
    )
    .unwrap();
    let a = eth(
        [0xff; 6],
        MAC_A,
        ETH_ARP,
        &arp(1, MAC_A, IP_A, [0; 6], IP_B),
    );
    let (verdict, out) = dp.run_tc(&a, IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out, a);
}

#[test]
fn tc_vlan_tag_is_matched_and_offsets_follow_it() {
    let Some(mut dp) = setup(MissPolicy::Local) else {
        return;
    };
    let mask = FlowKey {
        vlan_tci: u16::MAX,
        eth_type: u16::MAX,
        ipv4_dst: [0xff; 4],
        ..Default::default()
    };
    let sub = subtable(1, mask, 1);
    dp.set_subtables(&[sub]).unwrap();
    let key = FlowKey {
        vlan_tci: 0x1000 | 42,
        eth_type: FlowKey::ETH_TYPE_IPV4,
        ipv4_dst: IP_B,
        ..Default::default()
    };
    dp.insert_flow(
        &sub,
        &key,
        entry(
            1,
            6,
            &[Action::set_ipv4_dst(PIP_B), Action::output(UPLINK_OFPORT)],
        ),
    )
    .unwrap();
    let tagged = |dst: [u8; 4]| {
        let untagged = tcp_frame(FROM_A, IP_A, dst, 1, 2, 64);
        let mut f = untagged[..12].to_vec();
        f.extend_from_slice(&[0x81, 0x00, 0x00, 42]);
        f.extend_from_slice(&untagged[12..]);
        f
    };
    let (verdict, out) = dp.run_tc(&tagged(IP_B), IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out, tagged(PIP_B));
    // Untagged: no match (miss -> local).
    let (verdict, _) = dp
        .run_tc(&tcp_frame(FROM_A, IP_A, IP_B, 1, 2, 64), IN_IFINDEX)
        .unwrap();
    assert_eq!(verdict, TC_ACT_OK);
}

// ---------------------------------------------------------------------------
// (h) XDP

#[test]
fn xdp_cross_host_rewrite_is_byte_exact_with_valid_checksums() {
    let Some(mut dp) = setup(MissPolicy::Punt) else {
        return;
    };
    install_pair_rule(&mut dp, 7, &cross_host_actions());
    let cases = [
        (
            tcp_frame(FROM_A, IP_A, IP_B, 40000, 5201, 64),
            tcp_frame(H1_TO_H2, PIP_A, PIP_B, 40000, 5201, 64),
        ),
        (
            udp_frame(FROM_A, IP_A, IP_B, 53000, 53, true),
            udp_frame(H1_TO_H2, PIP_A, PIP_B, 53000, 53, true),
        ),
        (
            udp_frame(FROM_A, IP_A, IP_B, 53000, 53, false),
            udp_frame(H1_TO_H2, PIP_A, PIP_B, 53000, 53, false),
        ),
        (
            icmp_frame(FROM_A, IP_A, IP_B, 64),
            icmp_frame(H1_TO_H2, PIP_A, PIP_B, 64),
        ),
    ];
    for (input, want) in cases {
        let (verdict, out) = dp.run_xdp(&input, IN_IFINDEX).unwrap();
        assert_eq!(verdict, XDP_REDIRECT);
        assert_checksums_ok(&out);
        assert_eq!(out, want, "rewritten frame differs");
    }
    assert_eq!(dp.port_stats(UPLINK_SLOT).unwrap().tx_packets, 4);
}

#[test]
fn xdp_ports_ttl_miss_and_drops() {
    let Some(mut dp) = setup(MissPolicy::Punt) else {
        return;
    };
    install_pair_rule(
        &mut dp,
        5,
        &[
            Action::dec_ttl(),
            Action::set_l4_src(61000),
            Action::set_l4_dst(8080),
            Action::output(UPLINK_OFPORT),
        ],
    );
    let (verdict, out) = dp
        .run_xdp(&tcp_frame(FROM_A, IP_A, IP_B, 40000, 80, 64), IN_IFINDEX)
        .unwrap();
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(out, tcp_frame(FROM_A, IP_A, IP_B, 61000, 8080, 63));
    assert_checksums_ok(&out);

    // TTL 1 -> punt.
    let expiring = tcp_frame(FROM_A, IP_A, IP_B, 40000, 80, 1);
    assert_eq!(dp.run_xdp(&expiring, IN_IFINDEX).unwrap().0, XDP_DROP);
    // Miss -> punt.
    let miss = udp_frame(FROM_A, IP_B, IP_A, 1, 2, true);
    assert_eq!(dp.run_xdp(&miss, IN_IFINDEX).unwrap().0, XDP_DROP);
    let punts = dp.punts().unwrap();
    assert_eq!(punts.len(), 2);
    assert_eq!(
        PuntReason::from_u32(punts[0].header.reason),
        Some(PuntReason::InvalidTtl)
    );
    assert_eq!(punts[0].data, expiring);
    assert_eq!(
        PuntReason::from_u32(punts[1].header.reason),
        Some(PuntReason::Miss)
    );
    assert_eq!(punts[1].data, miss);
    assert_eq!(punts[1].header.ifindex, IN_IFINDEX);

    // In-port output is XDP_TX; local is XDP_PASS; drop is XDP_DROP.
    let input = tcp_frame(FROM_A, IP_A, IP_B, 1, 2, 64);
    install_pair_rule(&mut dp, 5, &[Action::output_in_port()]);
    assert_eq!(dp.run_xdp(&input, IN_IFINDEX).unwrap().0, XDP_TX);
    install_pair_rule(&mut dp, 5, &[Action::output_local()]);
    assert_eq!(dp.run_xdp(&input, IN_IFINDEX).unwrap().0, XDP_PASS);
    install_pair_rule(&mut dp, 5, &[Action::drop_packet()]);
    assert_eq!(dp.run_xdp(&input, IN_IFINDEX).unwrap().0, XDP_DROP);
    assert_eq!(dp.drop_count(DropReason::PolicyDrop).unwrap(), 1);
    assert_eq!(dp.run_xdp(&input[..20], IN_IFINDEX).unwrap().0, XDP_DROP);
    assert_eq!(dp.drop_count(DropReason::Malformed).unwrap(), 1);
    // Each install wrote a new entry, whose counters start over: the last
    // one counted its one packet (the malformed one never reached it).
    assert_eq!(dp.rule_stats(5).unwrap().packets, 1);
}

#[test]
fn xdp_only_the_last_output_counts() {
    let Some(mut dp) = setup(MissPolicy::Punt) else {
        return;
    };
    install_pair_rule(
        &mut dp,
        8,
        &[
            Action::output(PEER_OFPORT),
            Action::set_eth_dst(MAC_H2),
            Action::output(UPLINK_OFPORT),
        ],
    );
    let input = tcp_frame(FROM_A, IP_A, IP_B, 1, 2, 64);
    let (verdict, out) = dp.run_xdp(&input, IN_IFINDEX).unwrap();
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(out[..6], MAC_H2);
    assert_eq!(
        dp.port_stats(PEER_SLOT).unwrap().tx_packets,
        0,
        "not cloned in XDP"
    );
    assert_eq!(dp.port_stats(UPLINK_SLOT).unwrap().tx_packets, 1);
}

// ---------------------------------------------------------------------------
// Several outputs (TC clones all but the last)

fn ip(args: &[&str]) {
    let st = std::process::Command::new("ip")
        .args(args)
        .status()
        .expect("running ip (iproute2)");
    assert!(st.success(), "ip {args:?} failed");
}

#[test]
fn tc_outputs_before_the_last_are_cloned() {
    let Some(_ready) = require(&NEEDS) else {
        return;
    };
    // bpf_clone_redirect really transmits the copy: give it a veth pair in
    // a private namespace (children of this thread inherit it).
    let _ns = ThreadNetns::enter();
    ip(&[
        "link", "add", "dlclone0", "type", "veth", "peer", "name", "dlclone1",
    ]);
    ip(&["link", "set", "dlclone1", "up"]);
    ip(&["link", "set", "dlclone0", "up"]);
    let name = std::ffi::CString::new("dlclone0").unwrap();
    // SAFETY: valid C string.
    let dummy = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(dummy > 1);

    let mut dp = Datapath::load().expect("loading the datapath");
    dp.add_port(port(
        IN_OFPORT,
        IN_IFINDEX,
        PortKind::Container,
        MissPolicy::Punt,
        IN_SLOT,
    ))
    .unwrap();
    dp.add_port(port(
        PEER_OFPORT,
        dummy,
        PortKind::Container,
        MissPolicy::Punt,
        PEER_SLOT,
    ))
    .unwrap();
    dp.add_port(port(
        UPLINK_OFPORT,
        4242,
        PortKind::Uplink,
        MissPolicy::Local,
        UPLINK_SLOT,
    ))
    .unwrap();
    install_pair_rule(
        &mut dp,
        12,
        &[
            Action::output(PEER_OFPORT),
            Action::set_eth_dst(MAC_H2),
            Action::output(UPLINK_OFPORT),
        ],
    );
    let input = tcp_frame(FROM_A, IP_A, IP_B, 1, 2, 64);
    let (verdict, out) = dp.run_tc(&input, IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out[..6], MAC_H2, "later actions apply after the clone");
    assert_eq!(dp.port_stats(PEER_SLOT).unwrap().tx_packets, 1, "cloned");
    assert_eq!(dp.port_stats(UPLINK_SLOT).unwrap().tx_packets, 1);
    assert_eq!(dp.drop_count(DropReason::RedirectFailed).unwrap(), 0);

    // A clone to a device that is down fails: RedirectFailed.
    ip(&["link", "set", "dlclone0", "down"]);
    let (verdict, _) = dp.run_tc(&input, IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(dp.drop_count(DropReason::RedirectFailed).unwrap(), 1);
}

#[test]
fn every_map_is_pinned_under_its_common_name() {
    let Some(_ready) = require(&NEEDS) else {
        return;
    };
    use daolinet_common::maps as names;
    let dp = Datapath::load().expect("loading the datapath");
    for name in [
        names::FLOWS,
        names::SUBTABLES,
        names::CONFIG,
        names::PORTS,
        names::OFPORTS,
        names::PORT_STATS,
        names::DROPS,
        names::PUNTS,
        names::PORT_INDEX,
        names::OFPORT_INDEX,
    ] {
        assert!(dp.pin_dir().join(name).exists(), "{name} is not pinned");
    }
}

#[test]
fn pins_of_an_incompatible_agent_are_replaced_and_compatible_ones_kept() {
    use daolinet_common::{maps as names, FlowMapKey};
    let Some(mut dp) = setup(MissPolicy::Punt) else {
        return;
    };
    let sub = subtable(1, mask_in_port_ip_pair(), 100);
    let rule = |dp: &mut Datapath| {
        dp.set_subtables(&[sub]).unwrap();
        dp.insert_flow(
            &sub,
            &ip_key(IN_OFPORT, IP_A, IP_B),
            entry(100, 7, &[Action::output(PEER_OFPORT)]),
        )
        .unwrap();
    };
    rule(&mut dp);
    let input = udp_frame(FROM_A, IP_A, IP_B, 7, 8, true);
    assert_eq!(dp.run_tc(&input, IN_IFINDEX).unwrap().0, TC_ACT_REDIRECT);
    // A restart over compatible pins keeps the rule and its counters.
    dp.reload().unwrap();
    assert_eq!(dp.run_tc(&input, IN_IFINDEX).unwrap().0, TC_ACT_REDIRECT);
    assert_eq!(dp.rule_stats(7).unwrap().packets, 2);
    // An earlier agent's rules map with another layout: the programs could
    // not use it, so every pin is made anew (the rules are gone: the
    // controller installs them again).
    let flows = dp.pin_dir().join(names::FLOWS);
    daolinet_tests::bpf::pin_hash_map(
        &flows,
        size_of::<FlowMapKey>() as u32,
        size_of::<FlowEntry>() as u32 - 24,
    )
    .unwrap();
    // Pins of the old run's program links go with them (a map stands in
    // for a link here: bpffs holds only BPF objects).
    let links = dp.pin_dir().join("links");
    std::fs::create_dir_all(&links).unwrap();
    daolinet_tests::bpf::pin_hash_map(&links.join("pa"), 4, 4).unwrap();
    dp.reload().expect("loading over incompatible pins");
    assert!(!links.join("pa").exists());
    let info = aya::maps::MapInfo::from_pin(&flows).unwrap();
    assert_eq!(info.value_size() as usize, size_of::<FlowEntry>());
    assert_eq!(dp.rule_stats(7).unwrap().packets, 0);
    // The ports went with the other pins: the datapath knows nothing.
    assert_eq!(dp.run_tc(&input, IN_IFINDEX).unwrap().0, TC_ACT_OK);
    dp.add_port(port(
        IN_OFPORT,
        IN_IFINDEX,
        PortKind::Container,
        MissPolicy::Punt,
        IN_SLOT,
    ))
    .unwrap();
    dp.add_port(port(
        PEER_OFPORT,
        4343,
        PortKind::Container,
        MissPolicy::Punt,
        PEER_SLOT,
    ))
    .unwrap();
    rule(&mut dp);
    assert_eq!(dp.run_tc(&input, IN_IFINDEX).unwrap().0, TC_ACT_REDIRECT);
    assert_eq!(dp.rule_stats(7).unwrap().packets, 1);
}

// ---------------------------------------------------------------------------
// The multi-table pipeline: rules installed the way the agent installs them
// (its flow table compiles FLOW_MODs into map operations).

/// `frame` (Ethernet/IPv4) with the IPv4 header's TOS byte set to `tos`
/// and the header checksum computed again from scratch.
fn with_tos(frame: &[u8], tos: u8) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[15] = tos;
    f[24..26].copy_from_slice(&[0, 0]);
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let c = csum(&f[14..14 + ihl]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// CRC32c (Castagnoli, reflected), computed bit by bit: SCTP's checksum.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An Ethernet/IPv4/SCTP frame (one DATA-less common header and a payload)
/// with its CRC32c filled in (little-endian on the wire, as Linux writes it).
fn sctp_frame(m: Macs, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut seg = Vec::new();
    seg.extend_from_slice(&sport.to_be_bytes());
    seg.extend_from_slice(&dport.to_be_bytes());
    seg.extend_from_slice(&0x1234_5678u32.to_be_bytes()); // verification tag
    seg.extend_from_slice(&[0; 4]); // checksum
    seg.extend_from_slice(b"\x0a\x00\x00\x08chunk-of-sctp-payload");
    let c = crc32c(&seg);
    seg[8..12].copy_from_slice(&c.to_le_bytes());
    eth(m.dst, m.src, ETH_IPV4, &ipv4(src, dst, 132, 64, &seg))
}

/// Table 0 writes metadata, puts an output in the action set and goes to
/// table 1; table 1 matches the metadata, rewrites the destination and
/// decrements the TTL; the action set's output then sends the packet as
/// rewritten: byte for byte, checksums checked from scratch.
#[test]
fn tc_pipeline_goto_metadata_and_action_set_are_byte_exact() {
    let Some(mut dp) = setup(MissPolicy::Punt) else {
        return;
    };
    dp.install_flows(&[
        "priority=10,ip actions=write_metadata:0x5/0xff,write_actions(output:100),goto_table:1",
        "table=1,priority=20,metadata=0x6/0xff,ip actions=output:2",
        "table=1,priority=10,metadata=0x5/0xff,ip actions=set_field:10.9.9.9->ip_dst,dec_ttl",
    ])
    .expect("flows installed");
    for (input, want) in [
        (
            tcp_frame(FROM_A, IP_A, IP_B, 40000, 5201, 64),
            tcp_frame(FROM_A, IP_A, [10, 9, 9, 9], 40000, 5201, 63),
        ),
        (udp_frame(FROM_A, IP_A, IP_B, 53000, 53, true), {
            let mut f = udp_frame(FROM_A, IP_A, [10, 9, 9, 9], 53000, 53, true);
            // udp_frame's TTL is 64: one hop less, header sum again.
            f[22] = 63;
            with_tos(&f, f[15])
        }),
    ] {
        let (verdict, out) = dp.run_tc(&input, IN_IFINDEX).unwrap();
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_checksums_ok(&out);
        assert_eq!(out, want, "pipeline result differs");
    }
    assert_eq!(dp.port_stats(UPLINK_SLOT).unwrap().tx_packets, 2);
    assert_eq!(dp.port_stats(PEER_SLOT).unwrap().tx_packets, 0);
}

/// A later table without a matching rule drops the packet (OpenFlow 1.3:
/// no table-miss rule), counted as a table miss; the action set written
/// so far is not run.
#[test]
fn tc_pipeline_miss_in_a_later_table_drops() {
    let Some(mut dp) = setup(MissPolicy::Punt) else {
        return;
    };
    dp.install_flows(&["priority=10,ip actions=write_actions(output:100),goto_table:3"])
        .expect("flows installed");
    let before = dp.drop_count(DropReason::TableMiss).unwrap();
    let (verdict, _) = dp
        .run_tc(&tcp_frame(FROM_A, IP_A, IP_B, 1, 2, 64), IN_IFINDEX)
        .unwrap();
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(dp.drop_count(DropReason::TableMiss).unwrap(), before + 1);
    assert_eq!(dp.port_stats(UPLINK_SLOT).unwrap().tx_packets, 0);
}

/// Set-fields beyond the fast path: IP DSCP (the header checksum follows)
/// and an SCTP port (the CRC32c follows), byte for byte.
#[test]
fn tc_pipeline_dscp_and_sctp_port_rewrites_fix_their_checksums() {
    let Some(mut dp) = setup(MissPolicy::Punt) else {
        return;
    };
    dp.install_flows(&[
        "priority=10,tcp actions=set_field:46->ip_dscp,output:100",
        "priority=10,sctp actions=set_field:9999->sctp_dst,output:100",
    ])
    .expect("flows installed");
    let input = tcp_frame(FROM_A, IP_A, IP_B, 40000, 5201, 64);
    let (verdict, out) = dp.run_tc(&input, IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_checksums_ok(&out);
    assert_eq!(out, with_tos(&input, 46 << 2), "DSCP rewrite differs");

    let input = sctp_frame(FROM_A, IP_A, IP_B, 5000, 6000);
    let (verdict, out) = dp.run_tc(&input, IN_IFINDEX).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_checksums_ok(&out);
    let want = sctp_frame(FROM_A, IP_A, IP_B, 5000, 9999);
    assert_eq!(out, want, "SCTP rewrite differs (CRC32c at bytes 42..46)");
}

/// Install `flows` through the agent's flow table after the groups of
/// `groups` (GROUP_MODs) through its group table, as the agent does.
fn install_groups_and_flows(
    dp: &mut Datapath,
    groups: &[daolinet_openflow::GroupMod],
    flows: &[&str],
) {
    let mut g = daolinet_agent::groups::GroupTable::new();
    for gm in groups {
        let (ops, _) = g.group_mod(gm, 0, &|_| true).expect("group accepted");
        dp.apply(&ops).expect("writing the maps");
    }
    let has_group = |id: u32| g.contains(id);
    let refs = daolinet_agent::oftable::Refs {
        group: &has_group,
        meter: &|_| false,
    };
    let mut t = daolinet_agent::oftable::FlowTable::default();
    for f in flows {
        let fm: daolinet_openflow::FlowMod = f.parse().expect("flow syntax");
        let o = t
            .flow_mod_with(&fm, 0, &mut NoCounters, refs)
            .expect("flow accepted");
        dp.apply(&o.ops).expect("writing the maps");
    }
}

/// A select group hashes per connection: every packet of a connection
/// leaves by the same bucket (its rewrite and its port, byte for byte),
/// and connections spread over both buckets.
#[test]
fn tc_pipeline_select_group_keeps_each_connection_on_one_bucket() {
    use daolinet_openflow as of;
    let Some(mut dp) = setup(MissPolicy::Punt) else {
        return;
    };
    let bucket = |mac: &str, port: u32| {
        let fm: of::FlowMod = format!("ip actions=set_field:{mac}->eth_dst,output:{port}")
            .parse()
            .expect("flow syntax");
        let Some(of::Instruction::ApplyActions(actions)) = fm.instructions.first().cloned() else {
            panic!("no actions");
        };
        of::Bucket {
            weight: 1,
            watch_port: of::OFPP_ANY,
            watch_group: of::OFPG_ANY,
            actions,
        }
    };
    let group = of::GroupMod {
        command: of::OFPGC_ADD,
        group_type: of::OFPGT_SELECT,
        group_id: 7,
        buckets: vec![
            bucket("52:54:00:00:11:11", UPLINK_OFPORT),
            bucket("52:54:00:00:22:22", PEER_OFPORT),
        ],
    };
    install_groups_and_flows(&mut dp, &[group], &["priority=10,tcp actions=group:7"]);
    let mut used = [0u32; 2];
    for sport in 40000..40016u16 {
        let input = tcp_frame(FROM_A, IP_A, IP_B, sport, 5201, 64);
        let mut first = None;
        for _ in 0..3 {
            let up = dp.port_stats(UPLINK_SLOT).unwrap().tx_packets;
            let peer = dp.port_stats(PEER_SLOT).unwrap().tx_packets;
            let (verdict, out) = dp.run_tc(&input, IN_IFINDEX).unwrap();
            assert_eq!(verdict, TC_ACT_REDIRECT);
            let went_up = dp.port_stats(UPLINK_SLOT).unwrap().tx_packets == up + 1;
            let went_peer = dp.port_stats(PEER_SLOT).unwrap().tx_packets == peer + 1;
            assert!(went_up != went_peer, "one port, once");
            // Only the Ethernet destination changes: the bucket's.
            let mut want = input.clone();
            want[..6].copy_from_slice(if went_up { &MAC_H1 } else { &MAC_H2 });
            assert_eq!(out, want, "bucket rewrite differs");
            assert_checksums_ok(&out);
            match first {
                None => first = Some(went_up),
                Some(f) => assert_eq!(f, went_up, "connection {sport} changed bucket"),
            }
        }
        used[usize::from(first == Some(false))] += 1;
    }
    assert!(
        used[0] > 0 && used[1] > 0,
        "16 connections all on one bucket: {used:?}"
    );
}

/// Meters through the pipeline, byte for byte: a DSCP-remark band leaves a
/// packet within the rate unchanged and raises the drop precedence of one
/// over it (AF21 -> AF22, the IPv4 header checksum fixed); a drop band
/// drops what is over. Each meter allows 1 packet/s with a bucket of one
/// packet (OFPMF_BURST) and starts full: the first packet conforms, the
/// next ones exceed it unless a second passes between two test runs
/// (back to back they take microseconds), and the meter counts as band
/// packets exactly the ones its band met.
#[test]
fn tc_pipeline_meter_bands_remark_and_drop_what_exceeds_the_rate() {
    use daolinet_openflow as of;
    let Some(mut dp) = setup(MissPolicy::Punt) else {
        return;
    };
    let mut meters = daolinet_agent::meters::MeterTable::new();
    for (id, band) in [
        (
            1,
            of::MeterBand::DscpRemark {
                rate: 1,
                burst_size: 1,
                prec_level: 1,
            },
        ),
        (
            2,
            of::MeterBand::Drop {
                rate: 1,
                burst_size: 1,
            },
        ),
    ] {
        let mm = of::MeterMod {
            command: of::OFPMC_ADD,
            flags: of::OFPMF_PKTPS | of::OFPMF_BURST | of::OFPMF_STATS,
            meter_id: id,
            bands: vec![band],
        };
        let (ops, _) = meters.meter_mod(&mm, 0).expect("meter accepted");
        dp.apply(&ops).expect("writing the maps");
    }
    let has_meter = |id: u32| meters.contains(id);
    let refs = daolinet_agent::oftable::Refs {
        group: &|_| false,
        meter: &has_meter,
    };
    let mut t = daolinet_agent::oftable::FlowTable::default();
    for f in [
        "priority=10,tcp actions=meter:1,output:100",
        "priority=10,udp actions=meter:2,output:100",
    ] {
        let fm: of::FlowMod = f.parse().expect("flow syntax");
        let o = t
            .flow_mod_with(&fm, 0, &mut NoCounters, refs)
            .expect("flow accepted");
        dp.apply(&o.ops).expect("writing the maps");
    }
    let slot = |id: u32| meters.get(id).expect("meter").slot;
    let (remark_slot, drop_slot) = (slot(1), slot(2));
    const RUNS: u64 = 10;

    // AF21 (DSCP 18) in, AF22 (20) out when over the rate.
    let af21 = with_tos(&tcp_frame(FROM_A, IP_A, IP_B, 40000, 5201, 64), 18 << 2);
    let af22 = with_tos(&af21, 20 << 2);
    let mut remarked = 0;
    for i in 0..RUNS {
        let (verdict, out) = dp.run_tc(&af21, IN_IFINDEX).unwrap();
        assert_eq!(verdict, TC_ACT_REDIRECT, "a remark band forwards");
        assert_checksums_ok(&out);
        if out == af22 {
            assert!(i > 0, "the first packet is within the rate");
            remarked += 1;
        } else {
            assert_eq!(out, af21, "neither unchanged nor remarked");
        }
    }
    assert!(
        remarked > 0,
        "{RUNS} packets back to back, none over 1 packet/s"
    );
    let s = dp.meter_stats(remark_slot).unwrap();
    assert_eq!((s.packets, s.band_packets), (RUNS, remarked));

    let input = udp_frame(FROM_A, IP_A, IP_B, 53000, 53, true);
    let mut dropped = 0;
    for i in 0..RUNS {
        let (verdict, out) = dp.run_tc(&input, IN_IFINDEX).unwrap();
        if verdict == TC_ACT_SHOT {
            assert!(i > 0, "the first packet is within the rate");
            dropped += 1;
        } else {
            assert_eq!(verdict, TC_ACT_REDIRECT);
            assert_eq!(out, input, "forwarded unchanged");
        }
    }
    assert!(
        dropped > 0,
        "{RUNS} packets back to back, none over 1 packet/s"
    );
    let s = dp.meter_stats(drop_slot).unwrap();
    assert_eq!((s.packets, s.band_packets), (RUNS, dropped));
    assert_eq!(dp.drop_count(DropReason::MeterDrop).unwrap(), dropped);
}

/// TCP checksum over the IPv6 pseudo-header and `segment` (whose checksum
/// field must be zero).
fn l4_csum6(src: [u8; 16], dst: [u8; 16], proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, proto]);
    let acc = ones_sum(&pseudo, 0);
    !(ones_sum(segment, acc) as u16)
}

/// An Ethernet/IPv6/TCP frame, TCP checksum computed from scratch.
fn tcp6_frame(m: Macs, src: [u8; 16], dst: [u8; 16], hop_limit: u8) -> Vec<u8> {
    let mut seg = Vec::new();
    seg.extend_from_slice(&40000u16.to_be_bytes());
    seg.extend_from_slice(&5201u16.to_be_bytes());
    seg.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    seg.extend_from_slice(&0u32.to_be_bytes());
    seg.extend_from_slice(&[0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0]);
    seg.extend_from_slice(b"hello over ipv6");
    let c = l4_csum6(src, dst, 6, &seg);
    seg[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[6, hop_limit]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    ip.extend_from_slice(&seg);
    eth(m.dst, m.src, 0x86dd, &ip)
}

/// IPv6 set-field of the destination and a hop-limit decrement: the
/// frame as a host would have built it with the new address, the TCP
/// checksum (over the IPv6 pseudo-header) recomputed independently.
#[test]
fn tc_pipeline_ipv6_destination_rewrite_and_hop_limit_are_byte_exact() {
    let Some(mut dp) = setup(MissPolicy::Punt) else {
        return;
    };
    let a: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let b: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let c: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99,
    ];
    dp.install_flows(
        &["priority=10,ipv6,ipv6_dst=2001:db8::2 actions=set_field:2001:db8::99->ipv6_dst,dec_ttl,output:100"],
    )
        .expect("flows installed");
    let (verdict, out) = dp
        .run_tc(&tcp6_frame(FROM_A, a, b, 64), IN_IFINDEX)
        .unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out, tcp6_frame(FROM_A, a, c, 63), "IPv6 rewrite differs");
    assert_eq!(dp.port_stats(UPLINK_SLOT).unwrap().tx_packets, 1);
}
