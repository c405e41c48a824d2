//! Privileged: `--uplink-mode xdp` on a real interface (a veth in a
//! namespace) with traffic through it. Two hosts on an underlay bridge,
//! one container each, DaoliNet's cross-host rewrite (docs/architecture.md,
//! "Cross-host pair"); both agents run the XDP program on their uplink, so
//! every packet between the containers enters a host through XDP: parsed,
//! classified, rewritten physical -> logical (checksums fixed in software)
//! and redirected (XDP_REDIRECT) into the container's veth. Table misses on
//! the uplink (the hosts' own traffic, ARP) go to the host stack (XDP_PASS).
//!
//! Two settings make veths behave like the physical NICs XDP mode is meant
//! for (docs/architecture.md, "Where the programs attach"): the underlay
//! ends compute checksums before sending (a wire never carries partial
//! ones), and the containers' veths have GRO on (a veth accepts redirected
//! XDP frames only with NAPI enabled).
#![allow(clippy::panic, clippy::expect_used)] // a panic is a failed test

use daolinet_testlab::{iperf3, Lab, Need};

const GW: &str = "02:00:00:00:00:01";
const UPLINK: u32 = daolinet_agent::DEFAULT_UPLINK_OFPORT;

/// Source host rule: container (port 1) logical a -> b, rewritten to the
/// physical addresses and the hosts' MACs, out of the uplink.
fn out_rule(a: &str, b: &str, pa: &str, pb: &str, hs: &str, hd: &str) -> String {
    format!(
        "cookie=0x9,priority=100,in_port=1,ip,nw_src={a},nw_dst={b} actions=\
         set_field:{hs}->eth_src,set_field:{hd}->eth_dst,set_field:{pa}->ip_src,\
         set_field:{pb}->ip_dst,output:{UPLINK}"
    )
}

/// Destination host rule: physical pa -> pb from the uplink, rewritten back
/// to logical a -> b, to the container with MAC mb (port 1).
fn in_rule(pa: &str, pb: &str, a: &str, b: &str, mb: &str) -> String {
    format!(
        "cookie=0x9,priority=100,in_port={UPLINK},ip,nw_src={pa},nw_dst={pb} actions=\
         set_field:{GW}->eth_src,set_field:{mb}->eth_dst,set_field:{a}->ip_src,\
         set_field:{b}->ip_dst,output:1"
    )
}

/// rx_packets of port `name` in the agent's `ports` JSON.
fn rx_packets(ports_json: &str, name: &str) -> u64 {
    let at = ports_json
        .find(&format!("\"name\": \"{name}\""))
        .unwrap_or_else(|| panic!("no port {name} in {ports_json}"));
    let rest = &ports_json[at..];
    let key = "\"rx_packets\": ";
    let i = rest.find(key).expect("rx_packets") + key.len();
    rest[i..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect("rx_packets value")
}

#[test]
fn xdp_uplink_forwards_cross_host_traffic_on_a_real_interface() {
    let Some(mut lab) = Lab::new(&[
        Need::BpfObject,
        Need::Program("ping"),
        Need::Program("iperf3"),
        Need::Program("ethtool"),
    ]) else {
        return;
    };
    let u = lab.netns("u");
    u.ip(&["link", "add", "br0", "type", "bridge"]);
    u.ip(&["link", "set", "br0", "up"]);
    let (m1, m2) = ("02:00:00:00:01:01", "02:00:00:00:01:02");
    let mut hosts = Vec::new();
    for (i, mac) in [(1, m1), (2, m2)] {
        let h = lab.netns(&format!("h{i}"));
        let peer = format!("u{i}");
        h.ip(&[
            "link", "add", "name", "eth0", "type", "veth", "peer", "name", &peer, "netns", &u,
        ]);
        h.ip(&["link", "set", "eth0", "address", mac]);
        h.addr("eth0", &format!("192.168.78.{i}/24"));
        u.ip(&["link", "set", &peer, "master", "br0", "up"]);
        // A wire carries complete checksums; a veth would hand the XDP
        // program CHECKSUM_PARTIAL frames (only the pseudo-header summed),
        // which no longer hold once redirected as XDP frames. Compute them
        // where the "wire" starts, as a physical NIC's sender does.
        u.run(&["ethtool", "-K", &peer, "tx", "off"]);
        hosts.push(h);
    }
    let (h1, h2) = (&hosts[0], &hosts[1]);
    let a = lab.container(h1, "a", "ca", "10.2.0.2", "02:00:00:00:00:0a");
    let b = lab.container(h2, "b", "cb", "10.2.0.3", "02:00:00:00:00:0b");
    for (c, other) in [(&a, "10.2.0.3"), (&b, "10.2.0.2")] {
        c.ip(&["neigh", "add", other, "lladdr", GW, "dev", "eth0"]);
        // XDP_REDIRECT into a veth needs NAPI on the receiving end, which a
        // veth has with GRO on (or with an XDP program of its own).
        c.run(&["ethtool", "-K", "eth0", "gro", "on"]);
    }
    let mut agents = Vec::new();
    for (h, port) in [(h1, "ca=1"), (h2, "cb=1")] {
        agents.push(lab.agent(
            h,
            &["--uplink", "eth0", "--uplink-mode", "xdp", "--port", port],
        ));
        let link = h.run(&["ip", "-d", "link", "show", "eth0"]);
        assert!(
            link.contains("prog/xdp") && link.contains("daolinet_xdp"),
            "no DaoliNet XDP program on {h}'s eth0: {link}"
        );
    }
    let (ag1, ag2) = (&agents[0], &agents[1]);

    // Misses on the XDP uplink reach the host stack: the underlay works.
    assert!(
        h1.ping("192.168.78.2", 1, 2),
        "underlay broken by the XDP program"
    );

    let (pa, pb) = ("172.30.0.2", "172.30.0.3");
    let (ma, mb) = ("02:00:00:00:00:0a", "02:00:00:00:00:0b");
    for (ag, rules) in [
        (
            ag1,
            [
                out_rule("10.2.0.2", "10.2.0.3", pa, pb, m1, m2),
                in_rule(pb, pa, "10.2.0.3", "10.2.0.2", ma),
            ],
        ),
        (
            ag2,
            [
                out_rule("10.2.0.3", "10.2.0.2", pb, pa, m2, m1),
                in_rule(pa, pb, "10.2.0.2", "10.2.0.3", mb),
            ],
        ),
    ] {
        for r in rules {
            ag.cli(&["rule", "add", &r]);
        }
    }
    let before = rx_packets(&ag2.cli(&["ports"]), "eth0");

    if !a.ping("10.2.0.3", 5, 2) {
        panic!(
            "cross-host ping through the XDP uplinks failed\nh1 flows:\n{}\nh2 flows:\n{}\n\
             h1 status: {}\nh2 status: {}",
            ag1.cli(&["flows"]),
            ag2.cli(&["flows"]),
            ag1.cli(&["status"]),
            ag2.cli(&["status"]),
        );
    }
    // Every echo request entered h2 through XDP and hit the inbound rule.
    let flows = ag2.cli(&["flows"]);
    let inbound = flows
        .lines()
        .find(|l| l.contains(&format!("in_port={UPLINK}")))
        .unwrap_or_else(|| panic!("no inbound rule on h2: {flows}"));
    assert!(inbound.contains("n_packets=5,"), "{flows}");
    let after = rx_packets(&ag2.cli(&["ports"]), "eth0");
    assert!(
        after >= before + 5,
        "XDP uplink counted {before} -> {after} packets"
    );

    // TCP through the XDP rewrite: the checksums fixed in XDP must hold.
    let t = iperf3(&b, &a, "10.2.0.3", "4M");
    assert!(t.ok, "TCP across the XDP uplinks failed: {}", t.output);
}
