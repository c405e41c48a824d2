//! The ovs-ofctl-like flow syntax: examples, errors, and Display/parse round trips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use daolinet_openflow::flow_syntax::parse_instructions;
use daolinet_openflow::*;
use proptest::prelude::*;

#[test]
fn examples_parse_to_expected_values() {
    let fm: FlowMod =
        "table=2,cookie=0x10,priority=100,idle_timeout=10,hard_timeout=20,send_flow_rem,\
                       in_port=2,ip,nw_src=10.0.0.0/24,nw_dst=10.0.0.1 \
                       actions=set_field:aa:bb:cc:dd:ee:ff->eth_dst,dec_ttl,output:3"
            .parse()
            .unwrap();
    assert_eq!(fm.table_id, 2);
    assert_eq!(fm.cookie, 0x10);
    assert_eq!(fm.flags, OFPFF_SEND_FLOW_REM);
    assert_eq!(
        fm.match_,
        Match::new()
            .in_port(2)
            .eth_type(0x0800)
            .ipv4_src_masked(
                "10.0.0.0".parse().unwrap(),
                "255.255.255.0".parse().unwrap()
            )
            .ipv4_dst("10.0.0.1".parse().unwrap())
    );
    assert_eq!(
        fm.instructions,
        vec![Instruction::ApplyActions(vec![
            Action::SetField(OxmField::EthDst(
                MacAddr([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]),
                None
            )),
            Action::DecNwTtl,
            Action::output(3),
        ])]
    );
    assert_eq!(
        fm.to_string(),
        "table=2,cookie=0x10,priority=100,idle_timeout=10,hard_timeout=20,send_flow_rem,\
         in_port=2,ip,nw_src=10.0.0.0/24,nw_dst=10.0.0.1 \
         actions=set_field:aa:bb:cc:dd:ee:ff->dl_dst,dec_ttl,output:3"
    );
}

#[test]
fn shorthands_aliases_and_reserved_ports() {
    let m: Match = "tcp,tp_dst=80,in_port=LOCAL".parse().unwrap();
    assert_eq!(
        m,
        Match::new()
            .eth_type(0x0800)
            .ip_proto(6)
            .tcp_dst(80)
            .in_port(OFPP_LOCAL)
    );
    assert_eq!(m.to_string(), "tcp,tcp_dst=80,in_port=LOCAL");
    let m: Match = "udp6 udp_dst=53".parse().unwrap();
    assert_eq!(m.to_string(), "udp6,udp_dst=53");
    let m: Match = "arp,arp_op=2,arp_tpa=10.0.0.1,eth_src=02:00:00:00:00:01"
        .parse()
        .unwrap();
    assert_eq!(
        m.to_string(),
        "arp,arp_op=2,arp_tpa=10.0.0.1,dl_src=02:00:00:00:00:01"
    );
    let m: Match = "dl_vlan=10".parse().unwrap();
    assert_eq!(m, Match::new().vlan_vid(10 | OFPVID_PRESENT));
    let i =
        parse_instructions("CONTROLLER:128,LOCAL,output(port=2,max_len=64),controller").unwrap();
    assert_eq!(
        i,
        vec![Instruction::ApplyActions(vec![
            Action::controller(128),
            Action::output(OFPP_LOCAL),
            Action::Output {
                port: 2,
                max_len: 64
            },
            Action::controller(OFPCML_NO_BUFFER),
        ])]
    );
    assert_eq!(parse_instructions("drop").unwrap(), vec![]);
    let i = parse_instructions(
        "meter:1,output:2,write_actions(group:3,set_queue:1),clear_actions,goto_table:4",
    )
    .unwrap();
    assert_eq!(
        FlowMod::add(Match::new())
            .instruction(i[0].clone())
            .to_string(),
        "actions=meter:1"
    );
    assert_eq!(i.len(), 5);
}

#[test]
fn parse_errors_say_what_is_wrong() {
    for (text, want) in [
        ("in_port=1,nw_srcc=1.2.3.4 actions=drop", "nw_srcc"),
        ("tp_src=80 actions=drop", "tp_src needs tcp"),
        ("ip,nw_src=10.0.0.300 actions=drop", "10.0.0.300"),
        ("nw_src=10.0.0.0/33", "prefix length 33"),
        ("in_port=1 actions=output:", "invalid number"),
        ("in_port=1 actions=frobnicate", "unknown action"),
        ("priority=70000", "out of range"),
        ("dl_src=02:00:00:00:00 actions=drop", "Ethernet address"),
        ("actions=set_field:1->nope", "unknown field"),
    ] {
        let e = text.parse::<FlowMod>().unwrap_err();
        assert!(e.to_string().contains(want), "{text}: {e}");
    }
}

fn syntax_flow_mod() -> impl Strategy<Value = FlowMod> {
    common::flow_mod().prop_map(|mut fm| {
        fm.command = OFPFC_ADD;
        fm
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// parse(display(flow_mod)) == flow_mod for every ADD flow_mod.
    #[test]
    fn display_then_parse_is_identity(fm in syntax_flow_mod()) {
        let text = fm.to_string();
        let back: FlowMod = text.parse().map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(back, fm, "{}", text);
    }

    /// Arbitrary text never panics the parser.
    #[test]
    fn parser_never_panics(s in "[ -~]{0,80}") {
        let _ = s.parse::<FlowMod>();
        let _ = s.parse::<Match>();
        let _ = s.parse::<Action>();
    }
}
