//! Privileged: two containers on one host, rules installed through the
//! agent's control socket.

mod common;
use common::{ns, root_or_skip, sh, Lab};

#[test]
fn two_containers_talk_only_through_installed_rules() {
    if !root_or_skip("two_containers_talk_only_through_installed_rules") {
        return;
    }
    let mut lab = Lab::new("sh");
    let h = lab.netns("h");
    sh(&[
        "ip", "-n", &h, "link", "add", "up0", "type", "veth", "peer", "name", "up0p",
    ]);
    sh(&["ip", "-n", &h, "link", "set", "up0", "up"]);
    sh(&["ip", "-n", &h, "link", "set", "up0p", "up"]);
    let a = lab.container(&h, "a", "pa", "10.1.0.2", "02:00:00:00:00:0a");
    let b = lab.container(&h, "b", "pb", "10.1.0.3", "02:00:00:00:00:0b");
    // No ARP through the datapath yet (the ARP responder belongs to the switch issue).
    sh(&[
        "ip",
        "-n",
        &a,
        "neigh",
        "add",
        "10.1.0.3",
        "lladdr",
        "02:00:00:00:00:0b",
        "dev",
        "eth0",
    ]);
    sh(&[
        "ip",
        "-n",
        &b,
        "neigh",
        "add",
        "10.1.0.2",
        "lladdr",
        "02:00:00:00:00:0a",
        "dev",
        "eth0",
    ]);
    lab.start_agent(&h, &["--uplink", "up0", "--port", "pa=1", "--port", "pb=2"]);

    assert!(
        !ns(&a, &["ping", "-c", "1", "-W", "1", "10.1.0.3"]),
        "ping crossed without a rule"
    );
    let ports = lab.agent_cmd(&h, &["ports"]);
    let ports: serde_json::Value = serde_json::from_str(&ports).expect("ports JSON");
    let pa = ports
        .as_array()
        .and_then(|l| l.iter().find(|p| p["name"] == "pa"))
        .expect("port pa listed");
    assert!(
        pa["rx_packets"].as_u64() >= Some(1),
        "the punted ping was not counted on port pa: {pa}"
    );
    let pb = ports
        .as_array()
        .and_then(|l| l.iter().find(|p| p["name"] == "pb"))
        .expect("port pb listed");
    assert_eq!(
        pb["tx_packets"].as_u64(),
        Some(0),
        "something was sent to pb without a rule: {pb}"
    );

    lab.agent_cmd(
        &h,
        &[
            "rule",
            "add",
            "cookie=0x1,priority=100,in_port=1,ip,nw_dst=10.1.0.3 actions=output:2",
        ],
    );
    lab.agent_cmd(
        &h,
        &[
            "rule",
            "add",
            "cookie=0x1,priority=100,in_port=2,ip,nw_dst=10.1.0.2 actions=output:1",
        ],
    );
    assert!(
        ns(&a, &["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.1.0.3"]),
        "ping failed with rules"
    );
    let flows = lab.agent_cmd(&h, &["flows"]);
    assert_eq!(
        flows.matches("n_packets=3,").count(),
        2,
        "counters do not match 3 pings each way: {flows}"
    );

    lab.agent_cmd(&h, &["rule", "del", "0x1"]);
    assert!(
        !ns(&a, &["ping", "-c", "1", "-W", "1", "10.1.0.3"]),
        "ping crossed after the rules were removed"
    );
}
