//! The controller against a real Open vSwitch bridge (userspace datapath,
//! `fail_mode=secure`, OpenFlow 1.3): the test lab's Open vSwitch host
//! (ovsdb-server and ovs-vswitchd with their own directories, the switch in
//! a host namespace with the controller), two containers as network
//! namespaces on veth ports, registered through the REST API. OVS connects,
//! receives the base flows, the first ping between the containers goes
//! through the controller (ARP proxy, pair flows, PACKET_OUT), the pair
//! flows show up in `ovs-ofctl dump-flows`, a disconnect policy deletes
//! them by cookie and blocks the ping, and a bridge reconnection is
//! recognised by its dpid. A second bridge (another "host") joined by a
//! veth uplink carries a cross-host ping: logical <-> physical rewriting on
//! both bridges, the remote flows installed before the first packet is
//! released.
//!
//! Needs root and the Open vSwitch binaries (`cargo xtask setup`); the
//! workspace skip rule applies. Everything is removed in Drop guards.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::time::{Duration, Instant};

use daolinet_testlab::{Lab, Need, OVS_PROGRAMS};

const BR: &str = "br0";
const DPID: &str = "00000000000000c1";
const BR2: &str = "br1";
const DPID2: &str = "00000000000000c2";
/// How long flows may take to show up on a loaded machine.
const FLOWS: Duration = Duration::from_secs(30);

#[test]
fn open_vswitch_bridge_is_served() {
    let mut needs: Vec<Need> = OVS_PROGRAMS.iter().map(|p| Need::Program(p)).collect();
    needs.push(Need::Program("ping"));
    let Some(lab) = Lab::new(&needs) else { return };
    // The Open vSwitch host: a namespace holding both bridges, the wire
    // between them, the containers' ports and the controller.
    let o = lab.netns("ovs");
    let p = lab.controller_in(&o, &[]);
    let target = format!("tcp:127.0.0.1:{}", p.openflow_port());
    let api = p.api();

    // The model: host (the bridge), network, two containers on ports 2, 3.
    api.add_host("ovs1", DPID, "192.168.77.1", "02:00:00:00:77:01", 1);
    api.add_network("blue", "10.77.0.0/24");
    let a = api.add_container("ca", "blue", "ovs1", 2);
    let b = api.add_container("cb", "blue", "ovs1", 3);
    api.add_host("ovs2", DPID2, "192.168.77.2", "02:00:00:00:77:02", 1);
    let c = api.add_container("cc", "blue", "ovs2", 2);
    let ip = |c: &serde_json::Value| c["ip"].as_str().unwrap().to_string();
    let mac = |c: &serde_json::Value| c["mac"].as_str().unwrap().to_string();

    let ovs = lab.ovs(&o);
    let na = lab.container(&o, "a", "pa", &ip(&a), &mac(&a));
    let nb = lab.container(&o, "b", "pb", &ip(&b), &mac(&b));
    ovs.add_bridge(BR, DPID);
    ovs.add_port(BR, "pa", 2);
    ovs.add_port(BR, "pb", 3);
    ovs.set_controller(BR, &target);
    // Host 2: its own bridge; the uplinks (port 1 on both) joined by a veth pair.
    o.veth("u1", "u2");
    let nc = lab.container(&o, "c", "pc", &ip(&c), &mac(&c));
    ovs.add_port(BR, "u1", 1);
    ovs.add_bridge(BR2, DPID2);
    ovs.add_port(BR2, "u2", 1);
    ovs.add_port(BR2, "pc", 2);
    ovs.set_controller(BR2, &target);

    // OVS connects and gets the base flows (table miss to the controller,
    // uplink <-> LOCAL, pool punts).
    let flows = ovs.wait_flows(BR, "base flows", FLOWS, |f| {
        f.contains("priority=0 actions=CONTROLLER:65535") && f.contains("in_port=1 actions=LOCAL")
    });
    assert!(
        flows.contains("priority=20,ip,in_port=1,nw_dst=172.31.0.0/16 actions=CONTROLLER:65535"),
        "{flows}"
    );
    ovs.wait_flows(BR2, "base flows on the second bridge", FLOWS, |f| {
        f.contains("priority=0 actions=CONTROLLER:65535")
    });
    let m = api.text("/metrics");
    assert!(m.contains("daolinet_switches_connected 2"), "{m}");

    // The very first ping goes through: ARP answered by the controller,
    // the ICMP packet forwarded by PACKET_OUT, the reply by the new flows.
    assert!(
        na.ping(&ip(&b), 1, 5),
        "first ping a -> b failed\n{}",
        ovs.dump_flows(BR)
    );
    let flows = ovs.wait_flows(BR, "pair flows", FLOWS, |f| {
        f.contains(&format!("nw_dst={}", ip(&b))) && f.contains(&format!("nw_dst={}", ip(&a)))
    });
    let pair_line = flows
        .lines()
        .find(|l| {
            l.contains(&format!(
                "in_port=2,dl_src={},nw_src={},nw_dst={}",
                mac(&a),
                ip(&a),
                ip(&b)
            ))
        })
        .unwrap_or_else(|| panic!("no a -> b flow:\n{flows}"));
    assert!(pair_line.contains("idle_timeout=10"), "{pair_line}");
    assert!(pair_line.contains("priority=100"), "{pair_line}");
    assert!(
        pair_line.contains(&format!("set_field:{}->eth_dst", mac(&b)))
            && pair_line.contains("output:3"),
        "{pair_line}"
    );
    assert!(nb.ping(&ip(&a), 3, 2), "ping b -> a failed");

    // A disconnect policy deletes the pair's flows (by cookie) and the
    // containers can no longer talk.
    // Cross host: the first ping a -> c goes through; between the bridges
    // the packets carry physical addresses; each bridge holds its half.
    let phys = |x: &serde_json::Value| x["physical_ip"].as_str().unwrap().to_string();
    assert!(
        na.ping(&ip(&c), 1, 5),
        "first cross-host ping a -> c failed\n{}\n{}",
        ovs.dump_flows(BR),
        ovs.dump_flows(BR2)
    );
    let f1 = ovs.dump_flows(BR);
    let out1 = f1
        .lines()
        .find(|l| {
            l.contains(&format!(
                "in_port=2,dl_src={},nw_src={},nw_dst={}",
                mac(&a),
                ip(&a),
                ip(&c)
            ))
        })
        .unwrap_or_else(|| panic!("no a -> c flow on bridge 1:\n{f1}"));
    assert!(
        out1.contains(&format!("set_field:{}->ip_dst", phys(&c))) && out1.contains("output:1"),
        "{out1}"
    );
    let f2 = ovs.dump_flows(BR2);
    let in2 = f2
        .lines()
        .find(|l| {
            l.contains(&format!(
                "in_port=1,nw_src={},nw_dst={}",
                phys(&a),
                phys(&c)
            ))
        })
        .unwrap_or_else(|| panic!("no pa -> pc flow on bridge 2:\n{f2}"));
    assert!(
        in2.contains(&format!("set_field:{}->ip_dst", ip(&c))) && in2.contains("output:2"),
        "{in2}"
    );
    assert!(nc.ping(&ip(&a), 3, 2), "ping c -> a failed");

    api.ok(
        "POST",
        "/api/policies",
        Some(r#"{"a":"ca","b":"cb","action":"disconnect"}"#),
    );
    ovs.wait_flows(BR, "pair flows deleted", FLOWS, |f| {
        !f.lines()
            .any(|l| l.contains("priority=100") && l.contains("actions=set_field"))
    });
    assert!(
        !na.ping(&ip(&b), 2, 1),
        "ping went through a disconnect policy"
    );
    // Removing the policy lets them talk again.
    let (st, _) = api.call("DELETE", "/api/policies/ca/cb", None);
    assert!(st == 200 || st == 204, "{st}");
    // The short-lived drop flow (hard timeout) may still be there.
    let t = Instant::now();
    while !na.ping(&ip(&b), 1, 1) {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "ping never came back\n{}",
            ovs.dump_flows(BR)
        );
    }

    // The bridge reconnects: recognised by its dpid, initialised again
    // (everything deleted, base flows back), still served.
    ovs.del_controller(BR);
    ovs.set_controller(BR, &target);
    ovs.wait_flows(BR, "base flows after reconnect", FLOWS, |f| {
        f.contains("priority=0 actions=CONTROLLER:65535") && !f.contains("priority=100")
    });
    assert!(
        na.ping(&ip(&b), 1, 5),
        "ping after reconnect failed\n{}",
        ovs.dump_flows(BR)
    );
    let m = api.text("/metrics");
    assert!(m.contains("daolinet_switches_connected 2"), "{m}");
}
