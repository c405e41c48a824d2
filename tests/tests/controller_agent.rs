//! Privileged end to end: `daolinet-controller` drives two `daolinet-agent`
//! hosts over OpenFlow 1.3. Hosts are network namespaces joined by an
//! underlay wire; the controller runs in host 1's namespace (kernel-chosen
//! ports) and host 2's agent reaches it across the underlay. Containers
//! are namespaces behind veth ports, registered through the REST API with
//! the addresses the controller assigns.
//!
//! Checks: both datapaths connect; the very first ping of each pair goes
//! through, across hosts and on the same host (punt, PACKET_IN, ARP proxy,
//! pair flows with logical <-> physical rewriting, PACKET_OUT); the agents
//! hold the controller's flows and they carried the traffic; idle pair
//! flows expire; a disconnect policy deletes the flows and stops the
//! traffic. `daolictl trace` (table and JSON) shows the cross-host pair's
//! flows on both hosts with their rewrites and the delivery, and says
//! denied, naming both networks, for an isolated pair and after the
//! disconnect.
//!
//! Needs root and both binaries (built by `cargo test --workspace`); the
//! agents load the BPF object built into them (or `$DAOLINET_BPF_OBJECT`).
//! The workspace skip rule applies. Everything is removed by the lab's
//! guards.
#![allow(clippy::panic)] // a panic is a failed test

use std::time::Duration;

use daolinet_testlab::{json_str, wait_poll, Lab, Need, Poll};
use daolinet_tests::daolictl::{daolictl, daolictl_ran, trace_json};
use daolinet_tests::ha::metric;
use serde_json::Value;

const NET: &str = "192.168.213";
/// The controller's idle timeout for pair flows, seconds.
const IDLE: u32 = 3;

#[test]
fn controller_drives_two_agents() {
    let Some(mut lab) = Lab::new(&[
        Need::BpfObject,
        Need::Binary("daolinet-controller"),
        Need::Binary("daolinet-agent"),
        Need::Binary("daolictl"),
        Need::Program("ping"),
    ]) else {
        return;
    };
    // Underlay: host 1 and host 2 joined by a wire.
    let (h1, h2) = lab.wired_hosts(NET, 0xd5);

    let ctl = lab.controller_in(&h1, &["--idle-timeout", &IDLE.to_string()]);
    let api = ctl.api();

    // Model: two hosts (uplink = OpenFlow port 65000), one network,
    // containers a (h1 port 1), c (h1 port 2), b (h2 port 1).
    for i in 1..=2 {
        api.add_host(
            &format!("h{i}"),
            i,
            &format!("{NET}.{i}"),
            &format!("02:00:00:00:d5:0{i}"),
            65000,
        );
    }
    api.add_network("blue", "10.213.0.0/24");
    let container = |id: &str, host: &str, port: u32| api.add_container(id, "blue", host, port);
    // An isolated network with a container on h2 (in the model only:
    // trace sends nothing).
    api.add_network("red", "10.214.0.0/24");
    api.add_container("cr", "red", "h2", 2);
    let a = container("ca", "h1", 1);
    let b = container("cb", "h2", 1);
    let c = container("cc", "h1", 2);
    let na = lab.container(&h1, "a", "ca", &json_str(&a, "ip"), &json_str(&a, "mac"));
    let nb = lab.container(&h2, "b", "cb", &json_str(&b, "ip"), &json_str(&b, "mac"));
    let _nc = lab.container(&h1, "c", "cc", &json_str(&c, "ip"), &json_str(&c, "mac"));

    // The agents, connected to the controller.
    let port = ctl.openflow_port();
    let ag1 = lab.agent(
        &h1,
        &[
            "--uplink",
            "eth0",
            "--datapath-id",
            "1",
            "--port",
            "ca=1",
            "--port",
            "cc=2",
            "--controller",
            &format!("tcp:127.0.0.1:{port}"),
        ],
    );
    let _ag2 = lab.agent(
        &h2,
        &[
            "--uplink",
            "eth0",
            "--datapath-id",
            "2",
            "--port",
            "cb=1",
            "--controller",
            &format!("tcp:{NET}.1:{port}"),
        ],
    );
    wait_poll(
        "both agents to connect",
        Duration::from_secs(30),
        || match metric(&ctl, "daolinet_switches_connected") {
            Some(2) => Poll::Ready(()),
            m => Poll::Pending(format!("daolinet_switches_connected {m:?}")),
        },
    );

    // First packets: cross host, then same host; then more both ways.
    let ip = |v: &Value| json_str(v, "ip");
    assert!(
        na.ping(&ip(&b), 1, 3),
        "first cross-host ping a -> b failed"
    );
    assert!(na.ping(&ip(&c), 1, 3), "first same-host ping a -> c failed");
    assert!(na.ping(&ip(&b), 3, 2), "cross-host ping a -> b failed");
    assert!(nb.ping(&ip(&a), 2, 2), "cross-host ping b -> a failed");
    assert!(na.ping(&ip(&c), 2, 2), "same-host ping a -> c failed");

    // The agent on h1 holds the controller's pair flow: logical ->
    // physical, out of the uplink, and it carried the pings.
    let flows = ag1.cli(&["flows"]);
    let line = flows
        .lines()
        .find(|l| l.contains(&format!("nw_src={},nw_dst={}", ip(&a), ip(&b))))
        .unwrap_or_else(|| panic!("no a -> b flow on h1:\n{flows}"));
    assert!(
        line.contains(&format!(
            "set_field:{}->nw_dst",
            json_str(&b, "physical_ip")
        )) && line.contains(&format!(
            "set_field:{}->nw_src",
            json_str(&a, "physical_ip")
        )) && line.contains("output:65000")
            && line.contains(&format!("idle_timeout={IDLE}")),
        "{line}"
    );
    assert!(!line.contains("n_packets=0,"), "the pings bypassed {line}");

    // trace a -> b: both hosts' installed flows, the rewrites, delivery.
    let t = trace_json(&h1, api, &["ca", "cb"]);
    assert_eq!(t["verdict"], "cross_host", "{t:#}");
    assert_eq!(t["result"]["kind"], "delivered", "{t:#}");
    assert_eq!(t["result"]["container"], "cb", "{t:#}");
    let hops = t["hops"].as_array().cloned().unwrap_or_default();
    assert_eq!(hops.len(), 2, "{t:#}");
    assert_eq!(hops[0]["host"], "h1");
    assert_eq!(hops[0]["source"], "installed", "{t:#}");
    assert_eq!(hops[0]["out_dst"], json_str(&b, "physical_ip"), "{t:#}");
    assert_eq!(hops[0]["out_src"], json_str(&a, "physical_ip"), "{t:#}");
    assert_eq!(hops[0]["output"], 65000);
    assert_eq!(hops[1]["host"], "h2");
    assert_eq!(hops[1]["source"], "installed", "{t:#}");
    assert_eq!(hops[1]["out_dst"], ip(&b), "{t:#}");
    assert_eq!(hops[1]["output"], 1);
    let table = daolictl(&h1, api, &["trace", "ca", "cb"]);
    eprintln!("daolictl trace ca cb:\n{table}");
    assert!(
        table.contains("delivered to cb on h2 port 1")
            && table.contains("both are in network blue")
            && table.contains("host h1")
            && table.contains("host h2")
            && table.contains(&format!(
                "out {} -> {}",
                json_str(&a, "physical_ip"),
                json_str(&b, "physical_ip")
            )),
        "{table}"
    );
    // trace a -> the isolated container: denied, both networks named.
    let t = trace_json(&h1, api, &["ca", "cr", "--proto", "tcp", "--dport", "22"]);
    assert_eq!(t["verdict"]["denied"], "isolated", "{t:#}");
    assert_eq!(t["result"]["kind"], "dropped", "{t:#}");
    let why = t["reason"].as_str().unwrap_or_default();
    assert!(why.contains("blue") && why.contains("red"), "{t:#}");
    let table = daolictl(&h1, api, &["trace", "ca", "cr"]);
    assert!(table.contains("denied (isolated)"), "{table}");
    // Errors: an unknown container, a malformed request.
    let bad = daolictl_ran(&h1, api, &["trace", "ca", "nobody"]);
    assert!(
        !bad.ok
            && bad
                .stderr
                .contains("unknown destination container \"nobody\""),
        "{bad:?}"
    );
    let bad = daolictl_ran(&h1, api, &["trace", "ca", "cb", "--dport", "80"]);
    assert!(
        !bad.ok && bad.stderr.contains("needs --proto tcp or udp"),
        "{bad:?}"
    );

    // Idle pair flows expire (the controller's idle timeout).
    wait_poll(
        "the idle a -> b pair flow to expire",
        Duration::from_secs(u64::from(IDLE) * 5),
        || {
            let f = ag1.cli(&["flows"]);
            if f.contains(&format!("nw_dst={}", ip(&b))) {
                Poll::Pending(f)
            } else {
                Poll::Ready(())
            }
        },
    );

    // A disconnect policy: flows deleted by cookie, traffic stops.
    assert!(na.ping(&ip(&b), 1, 3), "a -> b after expiry failed");
    api.ok(
        "POST",
        "/api/policies",
        Some(r#"{"a":"ca","b":"cb","action":"disconnect"}"#),
    );
    assert!(
        !na.ping(&ip(&b), 2, 1),
        "ping went through a disconnect policy"
    );
    let m = api.text("/metrics");
    assert!(
        m.contains("daolinet_denials_total{reason=\"pair_disconnected\"}"),
        "{m}"
    );
    // observe: the denied PACKET_INs with their reason, the earlier
    // forwarded ones, table and JSON lines; an unknown container is an error.
    let lines = |args: &[&str]| -> Vec<Value> {
        let mut a = vec!["-o", "json", "observe"];
        a.extend_from_slice(args);
        daolictl(&h1, api, &a)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    let dropped = lines(&["--verdict", "dropped", "--container", "ca"]);
    assert!(
        dropped
            .iter()
            .any(|e| e["src"] == "ca" && e["reason"] == "pair_disconnected"),
        "{dropped:#?}"
    );
    assert!(
        dropped.iter().all(|e| e["verdict"] == "dropped"),
        "{dropped:#?}"
    );
    let forwarded = lines(&["--verdict", "forwarded", "--network", "blue"]);
    assert!(
        forwarded.iter().any(|e| e["src"] == "ca"
            && e["dst"] == "cb"
            && e["reason"] == "cross_host"
            && e["host"] == "h1"),
        "{forwarded:#?}"
    );
    let table = daolictl(&h1, api, &["observe", "--verdict", "dropped"]);
    assert!(
        table.starts_with("SEQ") && table.contains("pair_disconnected"),
        "{table}"
    );
    let bad = daolictl_ran(&h1, api, &["observe", "--container", "ghost"]);
    assert!(
        !bad.ok && bad.stderr.contains("unknown container"),
        "{bad:?}"
    );
    let t = trace_json(&h1, api, &["ca", "cb"]);
    assert_eq!(t["verdict"]["denied"], "pair_disconnected", "{t:#}");
    assert!(
        t["reason"]
            .as_str()
            .is_some_and(|r| r.contains("pair policy disconnects ca and cb")),
        "{t:#}"
    );
}
