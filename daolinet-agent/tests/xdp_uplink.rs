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

mod common;
use common::{iperf3_transfer, ns, ns_out, root_or_skip, sh, Lab};

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
    if !root_or_skip("xdp_uplink_forwards_cross_host_traffic_on_a_real_interface") {
        return;
    }
    let mut lab = Lab::new("xdp");
    let u = lab.netns("u");
    sh(&["ip", "-n", &u, "link", "add", "br0", "type", "bridge"]);
    sh(&["ip", "-n", &u, "link", "set", "br0", "up"]);
    let (m1, m2) = ("02:00:00:00:01:01", "02:00:00:00:01:02");
    let mut hosts = Vec::new();
    for (i, mac) in [(1, m1), (2, m2)] {
        let h = lab.netns(&format!("h{i}"));
        let peer = format!("u{i}");
        sh(&[
            "ip", "-n", &h, "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns",
            &u,
        ]);
        sh(&["ip", "-n", &h, "link", "set", "eth0", "address", mac]);
        let addr = format!("192.168.78.{i}/24");
        sh(&["ip", "-n", &h, "addr", "add", &addr, "dev", "eth0"]);
        sh(&["ip", "-n", &h, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &u, "link", "set", &peer, "master", "br0", "up"]);
        // A wire carries complete checksums; a veth would hand the XDP
        // program CHECKSUM_PARTIAL frames (only the pseudo-header summed),
        // which no longer hold once redirected as XDP frames. Compute them
        // where the "wire" starts, as a physical NIC's sender does.
        sh(&[
            "ip", "netns", "exec", &u, "ethtool", "-K", &peer, "tx", "off",
        ]);
        hosts.push(h);
    }
    let (h1, h2) = (hosts[0].clone(), hosts[1].clone());
    let a = lab.container(&h1, "a", "ca", "10.2.0.2", "02:00:00:00:00:0a");
    let b = lab.container(&h2, "b", "cb", "10.2.0.3", "02:00:00:00:00:0b");
    for (c, other) in [(&a, "10.2.0.3"), (&b, "10.2.0.2")] {
        sh(&[
            "ip", "-n", c, "neigh", "add", other, "lladdr", GW, "dev", "eth0",
        ]);
        // XDP_REDIRECT into a veth needs NAPI on the receiving end, which a
        // veth has with GRO on (or with an XDP program of its own).
        sh(&[
            "ip", "netns", "exec", c, "ethtool", "-K", "eth0", "gro", "on",
        ]);
    }
    for h in [&h1, &h2] {
        lab.start_agent(
            h,
            &[
                "--uplink",
                "eth0",
                "--uplink-mode",
                "xdp",
                "--port",
                &format!("c{}=1", if *h == h1 { "a" } else { "b" }),
            ],
        );
        let (_, link, _) = ns_out(h, &["ip", "-d", "link", "show", "eth0"]);
        assert!(
            link.contains("prog/xdp") && link.contains("daolinet_xdp"),
            "no DaoliNet XDP program on {h}'s eth0: {link}"
        );
    }

    // Misses on the XDP uplink reach the host stack: the underlay works.
    assert!(
        ns(&h1, &["ping", "-c", "1", "-W", "2", "192.168.78.2"]),
        "underlay broken by the XDP program"
    );

    let (pa, pb) = ("172.30.0.2", "172.30.0.3");
    let (ma, mb) = ("02:00:00:00:00:0a", "02:00:00:00:00:0b");
    for (h, rules) in [
        (
            &h1,
            [
                out_rule("10.2.0.2", "10.2.0.3", pa, pb, m1, m2),
                in_rule(pb, pa, "10.2.0.3", "10.2.0.2", ma),
            ],
        ),
        (
            &h2,
            [
                out_rule("10.2.0.3", "10.2.0.2", pb, pa, m2, m1),
                in_rule(pa, pb, "10.2.0.2", "10.2.0.3", mb),
            ],
        ),
    ] {
        for r in rules {
            lab.agent_cmd(h, &["rule", "add", &r]);
        }
    }
    let before = rx_packets(&lab.agent_cmd(&h2, &["ports"]), "eth0");

    if !ns(&a, &["ping", "-c", "5", "-i", "0.2", "-W", "2", "10.2.0.3"]) {
        panic!(
            "cross-host ping through the XDP uplinks failed\nh1 flows:\n{}\nh2 flows:\n{}\n\
             h1 status: {}\nh2 status: {}",
            lab.agent_cmd(&h1, &["flows"]),
            lab.agent_cmd(&h2, &["flows"]),
            lab.agent_cmd(&h1, &["status"]),
            lab.agent_cmd(&h2, &["status"]),
        );
    }
    // Every echo request entered h2 through XDP and hit the inbound rule.
    let flows = lab.agent_cmd(&h2, &["flows"]);
    let inbound = flows
        .lines()
        .find(|l| l.contains(&format!("in_port={UPLINK}")))
        .unwrap_or_else(|| panic!("no inbound rule on h2: {flows}"));
    assert!(inbound.contains("n_packets=5,"), "{flows}");
    let after = rx_packets(&lab.agent_cmd(&h2, &["ports"]), "eth0");
    assert!(
        after >= before + 5,
        "XDP uplink counted {before} -> {after} packets"
    );

    // TCP through the XDP rewrite: the checksums fixed in XDP must hold.
    let (ok, out) = iperf3_transfer(&b, &a, "10.2.0.3");
    assert!(ok, "TCP across the XDP uplinks failed: {out}");
}
