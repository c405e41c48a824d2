//! Privileged: two containers on one host, rules installed through the
//! agent's control socket.

#![allow(clippy::panic)] // a panic is a failed test

use daolinet_testlab::{Lab, Need};

#[test]
fn two_containers_talk_only_through_installed_rules() {
    let Some(mut lab) = Lab::new(&[Need::BpfObject, Need::Program("ping")]) else {
        return;
    };
    let h = lab.netns("h");
    h.veth("up0", "up0p");
    let a = lab.container(&h, "a", "pa", "10.1.0.2", "02:00:00:00:00:0a");
    let b = lab.container(&h, "b", "pb", "10.1.0.3", "02:00:00:00:00:0b");
    // No ARP through the datapath yet (the ARP responder belongs to the switch issue).
    a.ip(&[
        "neigh",
        "add",
        "10.1.0.3",
        "lladdr",
        "02:00:00:00:00:0b",
        "dev",
        "eth0",
    ]);
    b.ip(&[
        "neigh",
        "add",
        "10.1.0.2",
        "lladdr",
        "02:00:00:00:00:0a",
        "dev",
        "eth0",
    ]);
    let mut agent = lab.agent(&h, &["--uplink", "up0", "--port", "pa=1", "--port", "pb=2"]);

    assert!(!a.ping("10.1.0.3", 1, 1), "ping crossed without a rule");
    let ports = agent.cli(&["ports"]);
    let ports: serde_json::Value = serde_json::from_str(&ports).unwrap_or_default();
    let port = |name: &str| {
        ports
            .as_array()
            .and_then(|l| l.iter().find(|p| p["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("port {name} not listed: {ports}"))
    };
    let pa = port("pa");
    assert!(
        pa["rx_packets"].as_u64() >= Some(1),
        "the punted ping was not counted on port pa: {pa}"
    );
    // The punt woke the agent through its bell: the TAP device the
    // datapath sends a copy to when the agent had read every punt before
    // (the copies it reads count as the device's TX).
    let links = h.ip(&["-j", "-s", "link", "show"]);
    let links: serde_json::Value = serde_json::from_str(&links).unwrap_or_default();
    let bell = links
        .as_array()
        .and_then(|l| {
            l.iter().find(|l| {
                l["ifname"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("dlbell"))
            })
        })
        .cloned()
        .unwrap_or_else(|| panic!("no punt bell: {links}"));
    assert!(
        bell["stats64"]["tx"]["packets"].as_u64() >= Some(1),
        "the punt bell did not ring: {bell}"
    );
    let pb = port("pb");
    assert_eq!(
        pb["tx_packets"].as_u64(),
        Some(0),
        "something was sent to pb without a rule: {pb}"
    );

    agent.cli(&[
        "rule",
        "add",
        "cookie=0x1,priority=100,in_port=1,ip,nw_dst=10.1.0.3 actions=output:2",
    ]);
    agent.cli(&[
        "rule",
        "add",
        "cookie=0x1,priority=100,in_port=2,ip,nw_dst=10.1.0.2 actions=output:1",
    ]);
    assert!(a.ping("10.1.0.3", 3, 2), "ping failed with rules");
    let flows = agent.cli(&["flows"]);
    assert_eq!(
        flows.matches("n_packets=3,").count(),
        2,
        "counters do not match 3 pings each way: {flows}"
    );

    agent.cli(&["rule", "del", "0x1"]);
    assert!(
        !a.ping("10.1.0.3", 1, 1),
        "ping crossed after the rules were removed"
    );

    // The bell goes with the agent.
    agent.stop();
    let links = h.ip(&["-o", "link", "show"]);
    assert!(!links.contains("dlbell"), "left over: {links}");
}
