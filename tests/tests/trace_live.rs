//! Privileged: `daolictl trace --live` sends a real probe through the
//! switches of a two-host cluster of both kinds, a `daolinet-agent` host
//! (`ha`, eBPF datapath) and an Open vSwitch host (`ho`, userspace
//! datapath), and reports what each host's flows did with it:
//!
//! - an allowed cross-host pair, first packet (no flows yet): the
//!   controller decides the probe as a first packet, installs the pair's
//!   flows on both hosts, injects the probe at the source's port; both
//!   hosts' flows count it, the rewrites are shown (physical addresses
//!   between the hosts, logical ones at the ends), the result is
//!   `delivered`, and the destination container's UDP socket really
//!   receives the datagram from the source's address; again with the
//!   flows in place (table output), and the other way (OVS -> agent);
//! - an isolated pair, from either kind of host: `denied` naming both
//!   networks, the probe counted by the denial's drop flow, `dropped` with
//!   the reason, exit status 1;
//! - the wire between the hosts cut: not delivered within the timeout,
//!   last seen on the source host.
//!
//! The OpenFlow connections run over a control link of their own, so that
//! cutting the underlay wire leaves them up. The workspace skip rule
//! applies; the lab's guards remove everything.
#![allow(clippy::panic)] // a panic is a failed test

use std::time::Duration;

use daolinet_testlab::{json_str, wait_until, Lab, Need, Netns, OVS_PROGRAMS};
use daolinet_tests::daolictl::{daolictl, daolictl_ran, trace_json};
use serde_json::Value;

const NET: &str = "192.168.218";
const BR: &str = "brob";

#[test]
fn live_probes_report_delivery_and_drops_on_agent_and_ovs_hosts() {
    let mut needs = vec![
        Need::BpfObject,
        Need::Binary("daolinet-controller"),
        Need::Binary("daolinet-agent"),
        Need::Binary("daolictl"),
    ];
    needs.extend(OVS_PROGRAMS.iter().map(|p| Need::Program(p)));
    let Some(mut lab) = Lab::new(&needs) else {
        return;
    };
    // Underlay: eth0 <-> eth0 (the agent's uplink, the bridge's uplink).
    // Control: ctl0 <-> ctl0, the controller on h1.
    let (h1, h2) = lab.wired_hosts(NET, 0xda);
    h1.veth_to("ctl0", &h2, "ctl0");
    h1.addr("ctl0", "192.168.219.1/24");
    h2.addr("ctl0", "192.168.219.2/24");
    let ctl = lab.controller_in(&h1, &["--idle-timeout", "30", "--deny-timeout", "60"]);
    let api = ctl.api();
    for (name, dpid, i) in [("ha", "0000000000000001", 1), ("ho", "0000000000000002", 2)] {
        api.add_host(
            name,
            dpid,
            &format!("{NET}.{i}"),
            &format!("02:00:00:00:da:0{i}"),
            65000,
        );
    }
    for (name, subnet) in [("blue", "10.218.0.0/24"), ("red", "10.219.0.0/24")] {
        api.add_network(name, subnet);
    }
    let register =
        |id: &str, net: &str, host: &str, port: u32| api.add_container(id, net, host, port);
    let a = register("ca", "blue", "ha", 1);
    let b = register("cb", "blue", "ho", 2);
    let r = register("cr", "red", "ho", 3);
    let container = |host: &Netns, suffix: &str, port: &str, v: &Value, gw: &str| {
        let n = lab.container(host, suffix, port, &json_str(v, "ip"), &json_str(v, "mac"));
        n.ip(&["route", "add", "default", "via", gw]);
        n
    };
    let _na = container(&h1, "a", "ca", &a, "10.218.0.1");
    let nb = container(&h2, "b", "pb", &b, "10.218.0.1");
    let _nr = container(&h2, "r", "pr", &r, "10.219.0.1");
    let of = ctl.openflow_port();
    let _agent = lab.agent(
        &h1,
        &[
            "--uplink",
            "eth0",
            "--datapath-id",
            "1",
            "--controller",
            &format!("tcp:127.0.0.1:{of}"),
            "--port",
            "ca=1",
        ],
    );
    let ovs = lab.ovs(&h2);
    ovs.add_bridge(BR, "0000000000000002");
    ovs.add_port(BR, "eth0", 65000);
    ovs.add_port(BR, "pb", 2);
    ovs.add_port(BR, "pr", 3);
    ovs.set_controller(BR, &format!("tcp:192.168.219.1:{of}"));
    wait_until("both switches connected", Duration::from_secs(30), || {
        api.text("/metrics")
            .contains("daolinet_switches_connected 2")
    });
    ovs.wait_flows(BR, "base flows", Duration::from_secs(30), |f| {
        f.contains("priority=0 actions=CONTROLLER:65535")
    });
    let ip = |v: &Value| json_str(v, "ip");
    let phys = |v: &Value| json_str(v, "physical_ip");

    // 1. The allowed pair ca (agent) -> cb (OVS), its first packet: a UDP
    // datagram the container's socket receives.
    let sock = nb
        .udp("0.0.0.0:7001")
        .unwrap_or_else(|e| panic!("udp socket in cb: {e}"));
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("{e}"));
    let probe = ["ca", "cb", "--proto", "udp", "--dport", "7001", "--live"];
    let t = trace_json(&h1, api, &probe);
    let live = &t["live"];
    assert_eq!(t["verdict"], "cross_host", "{t:#}");
    assert_eq!(live["decided_first"], true, "{t:#}");
    assert_eq!(live["result"]["kind"], "delivered", "{t:#}");
    assert_eq!(
        (&live["result"]["container"], &live["result"]["host"]),
        (&Value::from("cb"), &Value::from("ho")),
        "{t:#}"
    );
    let hops = t["hops"].as_array().unwrap_or_else(|| panic!("{t:#}"));
    assert_eq!(hops.len(), 2, "{t:#}");
    assert_eq!(
        (&hops[0]["out_src"], &hops[0]["out_dst"]),
        (&Value::from(phys(&a)), &Value::from(phys(&b))),
        "ha rewrites to the physical addresses: {t:#}"
    );
    assert_eq!(
        (&hops[1]["out_src"], &hops[1]["out_dst"], &hops[1]["output"]),
        (&Value::from(ip(&a)), &Value::from(ip(&b)), &Value::from(2)),
        "ho rewrites back and outputs to cb's port: {t:#}"
    );
    let lh = live["hops"].as_array().unwrap_or_else(|| panic!("{t:#}"));
    assert_eq!(
        lh.iter()
            .map(|h| (
                json_str(h, "host"),
                json_str(h, "switch"),
                h["seen"].clone()
            ))
            .collect::<Vec<_>>(),
        [
            (
                "ha".to_string(),
                "daolinet-agent".to_string(),
                Value::from(true)
            ),
            (
                "ho".to_string(),
                "Open vSwitch".to_string(),
                Value::from(true)
            ),
        ],
        "{t:#}"
    );
    for h in lh {
        assert!(h["packets"].as_u64() >= Some(1), "{t:#}");
        assert_eq!(h["cookie"], hops[0]["flow"]["cookie"], "{t:#}");
    }
    let mut buf = [0u8; 64];
    let (n, from) = sock
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("cb did not receive the probe: {e}"));
    assert_eq!(
        (n, from.ip().to_string()),
        (0, ip(&a)),
        "the probe, from ca's address"
    );

    // 2. Again, the flows in place: the table output.
    let mut table = vec!["trace"];
    table.extend_from_slice(&probe);
    let out = daolictl(&h1, api, &table);
    eprintln!("daolictl trace --live:\n{out}");
    assert!(
        out.contains("live     delivered to cb on ho port 2")
            && !out.contains("decided and its flows installed first")
            && out.lines().any(|l| l.trim_start().starts_with("seen")
                && l.contains("ha (daolinet-agent): flow cookie="))
            && out.lines().any(|l| l.trim_start().starts_with("seen")
                && l.contains("ho (Open vSwitch): flow cookie=")),
        "{out}"
    );
    sock.recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("cb did not receive the second probe: {e}"));

    // 3. The other way, OVS -> agent (ICMP).
    let t = trace_json(&h1, api, &["cb", "ca", "--live"]);
    assert_eq!(t["live"]["result"]["kind"], "delivered", "{t:#}");
    assert_eq!(t["live"]["result"]["host"], "ha", "{t:#}");
    assert!(
        t["live"]["hops"]
            .as_array()
            .is_some_and(|h| h.len() == 2 && h.iter().all(|h| h["seen"] == true)),
        "{t:#}"
    );

    // 4. Isolated pairs, from the agent and from Open vSwitch: denied,
    // naming both networks; the denial's drop flow counted the probe.
    for (src, dst, host) in [("ca", "cr", "ha"), ("cr", "ca", "ho")] {
        let ran = daolictl_ran(&h1, api, &["-o", "json", "trace", src, dst, "--live"]);
        assert!(
            !ran.ok,
            "an isolated pair's probe is not a success: {ran:?}"
        );
        assert!(
            ran.stderr
                .contains(&format!("live probe: not delivered: dropped on {host}")),
            "{}",
            ran.stderr
        );
        let t: Value =
            serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("{e}: {}", ran.stdout));
        assert_eq!(t["verdict"]["denied"], "isolated", "{t:#}");
        let why = t["reason"].as_str().unwrap_or_default();
        assert!(why.contains("blue") && why.contains("red"), "{t:#}");
        assert_eq!(t["live"]["result"]["kind"], "dropped", "{t:#}");
        assert_eq!(t["live"]["result"]["host"], host, "{t:#}");
        assert_eq!(t["live"]["hops"][0]["seen"], true, "{t:#}");
    }

    // 5. The underlay cut: seen on the agent host, not on the OVS host.
    h2.ip(&["link", "set", "eth0", "down"]);
    let ran = daolictl_ran(
        &h1,
        api,
        &["trace", "ca", "cb", "--live", "--timeout", "1.5"],
    );
    eprintln!(
        "daolictl trace --live, the wire cut:\n{}{}",
        ran.stdout, ran.stderr
    );
    assert!(!ran.ok, "{ran:?}");
    assert!(
        ran.stderr
            .contains("live probe: not delivered within 1500 ms: last seen on host ha")
            && ran.stderr.contains("then not on host ho"),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stdout
            .lines()
            .any(|l| l.contains("not seen") && l.contains("ho (Open vSwitch)")),
        "{}",
        ran.stdout
    );
}
