//! Privileged: two hosts joined by an underlay bridge namespace, one
//! container behind each; DaoliNet's cross-host rewrite (docs/architecture.md,
//! "Cross-host pair"): logical -> physical on the source host, physical ->
//! logical on the destination host, no encapsulation.

mod common;
use common::{iperf3_transfer, ns, root_or_skip, sh, Lab};

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
    if !root_or_skip("ping_and_tcp_cross_hosts_with_ip_rewriting_and_survive_agent_restart") {
        return;
    }
    let mut lab = Lab::new("xh");
    let u = lab.netns("u");
    sh(&["ip", "-n", &u, "link", "add", "br0", "type", "bridge"]);
    sh(&["ip", "-n", &u, "link", "set", "br0", "up"]);
    let (m1, m2) = ("02:00:00:00:01:01", "02:00:00:00:01:02");
    let mut hosts = Vec::new();
    for (i, mac) in [(1, m1), (2, m2)] {
        let h = lab.netns(&format!("h{i}"));
        sh(&[
            "ip",
            "-n",
            &h,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &format!("u{i}"),
            "netns",
            &u,
        ]);
        sh(&["ip", "-n", &h, "link", "set", "eth0", "address", mac]);
        sh(&[
            "ip",
            "-n",
            &h,
            "addr",
            "add",
            &format!("192.168.77.{i}/24"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &h, "link", "set", "eth0", "up"]);
        sh(&[
            "ip",
            "-n",
            &u,
            "link",
            "set",
            &format!("u{i}"),
            "master",
            "br0",
            "up",
        ]);
        hosts.push(h);
    }
    let (h1, h2) = (hosts[0].clone(), hosts[1].clone());
    let a = lab.container(&h1, "a", "ca", "10.1.0.2", "02:00:00:00:00:0a");
    let b = lab.container(&h2, "b", "cb", "10.1.0.3", "02:00:00:00:00:0b");
    sh(&[
        "ip", "-n", &a, "neigh", "add", "10.1.0.3", "lladdr", GW, "dev", "eth0",
    ]);
    sh(&[
        "ip", "-n", &b, "neigh", "add", "10.1.0.2", "lladdr", GW, "dev", "eth0",
    ]);
    lab.start_agent(&h1, &["--uplink", "eth0", "--port", "ca=1"]);
    lab.start_agent(&h2, &["--uplink", "eth0", "--port", "cb=1"]);

    // The uplink's table miss goes to the host stack: the hosts still reach each other.
    assert!(
        ns(&h1, &["ping", "-c", "1", "-W", "2", "192.168.77.2"]),
        "underlay broken by the agent"
    );
    // No rule for the containers: punted, nothing crosses.
    assert!(
        !ns(&a, &["ping", "-c", "1", "-W", "1", "10.1.0.3"]),
        "crossed without rules"
    );

    let (pa, pb) = ("172.31.0.2", "172.31.0.3");
    lab.agent_cmd(
        &h1,
        &["rule", "add", &pair("10.1.0.2", "10.1.0.3", pa, pb, m1, m2)],
    );
    lab.agent_cmd(
        &h1,
        &[
            "rule",
            "add",
            &back(pb, pa, "10.1.0.3", "10.1.0.2", "02:00:00:00:00:0a"),
        ],
    );
    lab.agent_cmd(
        &h2,
        &["rule", "add", &pair("10.1.0.3", "10.1.0.2", pb, pa, m2, m1)],
    );
    lab.agent_cmd(
        &h2,
        &[
            "rule",
            "add",
            &back(pa, pb, "10.1.0.2", "10.1.0.3", "02:00:00:00:00:0b"),
        ],
    );

    assert!(
        ns(&a, &["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.1.0.3"]),
        "cross-host ping failed"
    );
    let flows = lab.agent_cmd(&h2, &["flows"]);
    assert_eq!(
        flows.matches("n_packets=3,").count(),
        2,
        "h2 counters do not match 3 pings: {flows}"
    );

    // TCP: 4 MB through the rewrites, checksums must survive offload.
    let (ok, out) = iperf3_transfer(&b, &a, "10.1.0.3");
    eprintln!("{out}");
    assert!(ok, "TCP transfer across hosts failed");

    // Restart the agent on h1: the pinned maps keep the rules.
    lab.stop_agent(&h1);
    lab.start_agent(&h1, &["--uplink", "eth0", "--port", "ca=1"]);
    assert!(
        ns(&a, &["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.1.0.3"]),
        "forwarding lost across agent restart"
    );
    let flows = lab.agent_cmd(&h1, &["flows"]);
    assert_eq!(flows.lines().count(), 2, "restored table: {flows}");

    lab.agent_cmd(&h1, &["rule", "del", "0x7"]);
    assert!(
        !ns(&a, &["ping", "-c", "1", "-W", "1", "10.1.0.3"]),
        "crossed after rule removal"
    );
}
