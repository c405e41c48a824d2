//! Privileged: two hosts joined by an underlay bridge namespace, one
//! container behind each; DaoliNet's cross-host rewrite (docs/architecture.md,
//! "Cross-host pair"): logical -> physical on the source host, physical ->
//! logical on the destination host, no encapsulation.

use daolinet_testlab::{iperf3, Lab, Need};

const GW: &str = "02:00:00:00:00:01";
const UPLINK: u32 = 65000; // daolinet-agent's default --uplink-ofport

/// Rules for one direction: container `src` (logical a, port 1 on its host)
/// to `dst` (logical b), physical pa/pb, host MACs hs/hd, dst container MAC md.
fn pair(a: &str, b: &str, pa: &str, pb: &str, hs: &str, hd: &str) -> String {
    format!(
        "cookie=0x7,priority=100,in_port=1,ip,nw_src={a},nw_dst={b} actions=\
         set_field:{hs}->eth_src,set_field:{hd}->eth_dst,set_field:{pa}->ip_src,\
         set_field:{pb}->ip_dst,output:{UPLINK}"
    )
}

fn back(pa: &str, pb: &str, a: &str, b: &str, mb: &str) -> String {
    format!(
        "cookie=0x7,priority=100,in_port={UPLINK},ip,nw_src={pa},nw_dst={pb} actions=\
         set_field:{GW}->eth_src,set_field:{mb}->eth_dst,set_field:{a}->ip_src,\
         set_field:{b}->ip_dst,output:1"
    )
}

#[test]
fn ping_and_tcp_cross_hosts_with_ip_rewriting_and_survive_agent_restart() {
    let Some(mut lab) = Lab::new(&[
        Need::BpfObject,
        Need::Program("ping"),
        Need::Program("iperf3"),
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
        h.addr("eth0", &format!("192.168.77.{i}/24"));
        u.ip(&["link", "set", &peer, "master", "br0", "up"]);
        hosts.push(h);
    }
    let (h1, h2) = (&hosts[0], &hosts[1]);
    let a = lab.container(h1, "a", "ca", "10.1.0.2", "02:00:00:00:00:0a");
    let b = lab.container(h2, "b", "cb", "10.1.0.3", "02:00:00:00:00:0b");
    a.ip(&["neigh", "add", "10.1.0.3", "lladdr", GW, "dev", "eth0"]);
    b.ip(&["neigh", "add", "10.1.0.2", "lladdr", GW, "dev", "eth0"]);
    let mut ag1 = lab.agent(h1, &["--uplink", "eth0", "--port", "ca=1"]);
    let ag2 = lab.agent(h2, &["--uplink", "eth0", "--port", "cb=1"]);

    // The uplink's table miss goes to the host stack: the hosts still reach each other.
    assert!(
        h1.ping("192.168.77.2", 1, 2),
        "underlay broken by the agent"
    );
    // No rule for the containers: punted, nothing crosses.
    assert!(!a.ping("10.1.0.3", 1, 1), "crossed without rules");

    let (pa, pb) = ("172.31.0.2", "172.31.0.3");
    ag1.cli(&["rule", "add", &pair("10.1.0.2", "10.1.0.3", pa, pb, m1, m2)]);
    ag1.cli(&[
        "rule",
        "add",
        &back(pb, pa, "10.1.0.3", "10.1.0.2", "02:00:00:00:00:0a"),
    ]);
    ag2.cli(&["rule", "add", &pair("10.1.0.3", "10.1.0.2", pb, pa, m2, m1)]);
    ag2.cli(&[
        "rule",
        "add",
        &back(pa, pb, "10.1.0.2", "10.1.0.3", "02:00:00:00:00:0b"),
    ]);

    assert!(a.ping("10.1.0.3", 3, 2), "cross-host ping failed");
    let flows = ag2.cli(&["flows"]);
    assert_eq!(
        flows.matches("n_packets=3,").count(),
        2,
        "h2 counters do not match 3 pings: {flows}"
    );

    // TCP: 4 MB through the rewrites, checksums must survive offload.
    let t = iperf3(&b, &a, "10.1.0.3", "4M");
    assert!(t.ok, "TCP transfer across hosts failed: {}", t.output);

    // Restart the agent on h1: the pinned maps keep the rules.
    ag1.stop();
    ag1.start();
    assert!(
        a.ping("10.1.0.3", 2, 2),
        "forwarding lost across agent restart"
    );
    let flows = ag1.cli(&["flows"]);
    assert_eq!(flows.lines().count(), 2, "restored table: {flows}");

    ag1.cli(&["rule", "del", "0x7"]);
    assert!(!a.ping("10.1.0.3", 1, 1), "crossed after rule removal");
}
