//! Privileged: ports added through the control socket survive an agent
//! restart (attached again with their OpenFlow numbers, forwarding with
//! the rules kept in the pinned maps), ports whose interface went away
//! meanwhile are forgotten; `info` answers.

#![allow(clippy::panic)] // a panic is a failed test

use daolinet_testlab::{Lab, Need};
use serde_json::Value;

fn ports(agent: &daolinet_testlab::Agent) -> Vec<(String, u64)> {
    let v: Value = serde_json::from_str(&agent.cli(&["ports"])).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["kind"] == "container")
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                p["ofport"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn ports_added_by_hand_are_attached_again_after_a_restart() {
    let Some(mut lab) = Lab::new(&[Need::BpfObject, Need::Program("ping")]) else {
        return;
    };
    let h = lab.netns("h");
    h.veth("up0", "up0p");
    let a = lab.container(&h, "a", "pa", "10.1.0.2", "02:00:00:00:00:0a");
    let b = lab.container(&h, "b", "pb", "10.1.0.3", "02:00:00:00:00:0b");
    let _c = lab.container(&h, "c", "pc", "10.1.0.4", "02:00:00:00:00:0c");
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
    let mut agent = lab.agent(&h, &["--uplink", "up0"]);

    let info: Value = serde_json::from_str(&agent.cli(&["info"])).unwrap_or_default();
    assert_eq!(info["host"], Value::Null, "no --api, no host name: {info}");
    assert_eq!(
        info["state_dir"].as_str(),
        Some(agent.state_dir().to_str().unwrap_or_default()),
        "{info}"
    );

    agent.cli(&["port", "add", "pa", "--ofport", "1007"]);
    agent.cli(&["port", "add", "pb", "--ofport", "1008"]);
    agent.cli(&["port", "add", "pc", "--ofport", "1009"]);
    agent.cli(&["port", "del", "pc"]);
    agent.cli(&[
        "rule",
        "add",
        "cookie=0x1,priority=100,in_port=1007,ip,nw_dst=10.1.0.3 actions=output:1008",
    ]);
    agent.cli(&[
        "rule",
        "add",
        "cookie=0x1,priority=100,in_port=1008,ip,nw_dst=10.1.0.2 actions=output:1007",
    ]);
    assert!(a.ping("10.1.0.3", 2, 2), "ping failed before the restart");

    agent.stop();
    // While it is down, pb's interface goes, and comes back as another
    // interface of the same name that nobody attached.
    h.ip(&["link", "del", "pb"]);
    agent.start();
    assert_eq!(
        ports(&agent),
        vec![("pa".to_string(), 1007)],
        "pa must be attached again with its number, pb (gone) and pc (deleted) not"
    );
    let kept = std::fs::read_to_string(agent.state_dir().join("ports.json")).unwrap_or_default();
    assert!(
        kept.contains("\"pa\"") && !kept.contains("\"pb\"") && !kept.contains("\"pc\""),
        "{kept}"
    );
    let b2 = lab.container(&h, "b2", "pb", "10.1.0.3", "02:00:00:00:00:0b");
    b2.ip(&[
        "neigh",
        "add",
        "10.1.0.2",
        "lladdr",
        "02:00:00:00:00:0a",
        "dev",
        "eth0",
    ]);
    agent.cli(&["port", "add", "pb", "--ofport", "1008"]);
    assert!(
        a.ping("10.1.0.3", 2, 2),
        "ping failed after the restart: the rules were kept, the ports attached again"
    );
}
