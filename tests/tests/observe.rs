//! Privileged: why a packet did not arrive, on a two-host cluster (a
//! controller and two `daolinet-agent` hosts in namespaces, containers
//! behind veth ports), from `daolictl trace`, `daolictl observe` and the
//! agents' `/metrics`:
//!
//! - an isolated pair: `trace` says denied and names both networks; the
//!   container's pings are denied by the controller (`observe`: dropped,
//!   `isolated`, by the controller) and then dropped by the drop flow in
//!   the datapath (`observe`: dropped, `policy_drop`, by the datapath,
//!   sampled), and the agent's `policy_drop` counter for the port rose;
//! - a spoofed source: the controller gave the agent each container port's
//!   MAC and IPv4 (anti-spoofing on in the datapath), so a forged IPv4
//!   source is dropped before any flow, counted exactly as
//!   `spoofed_source` on the port, and shown by `observe`; a forged MAC
//!   too;
//! - a flood of denied packets (UDP, from a socket in the container): the
//!   agent counts every one (the drop counter rose by exactly the number
//!   sent), `observe` shows a few sampled events, not one per packet, and
//!   during the flood the controller's API answers and an allowed
//!   cross-host pair pings.
//!
//! The workspace skip rule applies; the lab's guards remove everything.
#![allow(clippy::panic)] // a panic is a failed test

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use daolinet_testlab::{json_str, wait_poll, Api, Lab, Need, Netns, Poll};
use daolinet_tests::daolictl::{daolictl, trace_json};
use serde_json::Value;

const NET: &str = "192.168.215";
/// Where each agent serves its metrics, inside its host's namespace.
const METRICS: &str = "127.0.0.1:9781";
/// The controller's gateway MAC (its default).
const GATEWAY_MAC: &str = "02:da:00:00:00:01";

/// The value of the series `series` (name and labels, exactly) in `text`.
fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse::<f64>()
            .ok()
            .map(|v| v as u64)
    })
}

/// The drops of `reason` on the agent's port `port`.
fn port_drops(m: &Api, port: &str, ofport: u32, reason: &str) -> u64 {
    let text = m.text("/metrics");
    let series = format!(
        "daolinet_agent_port_drops_total{{port=\"{port}\",ofport=\"{ofport}\",reason=\"{reason}\"}}"
    );
    sample(&text, &series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[test]
fn isolated_spoofed_and_flooded_containers_are_explained() {
    let Some(mut lab) = Lab::new(&[
        Need::BpfObject,
        Need::Binary("daolinet-controller"),
        Need::Binary("daolinet-agent"),
        Need::Binary("daolictl"),
        Need::Program("ping"),
    ]) else {
        return;
    };
    let (h1, h2) = lab.wired_hosts(NET, 0xd7);
    // Denials' drop flows last the whole test, so that every denied packet
    // after the first meets the same drop flow (the flood's exact count).
    let ctl = lab.controller_in(&h1, &["--idle-timeout", "30", "--deny-timeout", "600"]);
    let api = ctl.api();
    for i in 1..=2 {
        api.add_host(
            &format!("h{i}"),
            i,
            &format!("{NET}.{i}"),
            &format!("02:00:00:00:d7:0{i}"),
            65000,
        );
    }
    for (name, subnet) in [("blue", "10.215.0.0/24"), ("red", "10.216.0.0/24")] {
        api.add_network(name, subnet);
    }
    let register =
        |id: &str, net: &str, host: &str, port: u32| api.add_container(id, net, host, port);
    let a = register("ca", "blue", "h1", 1);
    let b = register("cb", "blue", "h2", 1);
    let r = register("cr", "red", "h2", 2);
    let container = |host: &Netns, suffix: &str, v: &Value, gw: &str| {
        let n = lab.container(
            host,
            suffix,
            &json_str(v, "id"),
            &json_str(v, "ip"),
            &json_str(v, "mac"),
        );
        // No IPv6 chatter (it would be denied and counted too).
        n.sysctl("net.ipv6.conf.all.disable_ipv6=1");
        n.ip(&["route", "add", "default", "via", gw]);
        n
    };
    let na = container(&h1, "a", &a, "10.215.0.1");
    let nb = container(&h2, "b", &b, "10.215.0.1");
    let _nr = container(&h2, "r", &r, "10.216.0.1");
    let of = ctl.openflow_port();
    let mut agents = Vec::new();
    for (h, dpid, ports, ctl_ip) in [
        (&h1, "1", vec!["ca=1"], "127.0.0.1"),
        (&h2, "2", vec!["cb=1", "cr=2"], "192.168.215.1"),
    ] {
        let controller = format!("tcp:{ctl_ip}:{of}");
        let mut args = vec![
            "--uplink",
            "eth0",
            "--datapath-id",
            dpid,
            "--metrics",
            METRICS,
            "--controller",
            &controller,
        ];
        for p in &ports {
            args.push("--port");
            args.push(p);
        }
        agents.push(lab.agent(h, &args));
    }
    let m1 = Api::new(METRICS, None).in_netns(&h1);
    let m2 = Api::new(METRICS, None).in_netns(&h2);
    // The controller gives each agent its container ports' sources.
    for (m, ports) in [(&m1, vec![("ca", 1)]), (&m2, vec![("cb", 1), ("cr", 2)])] {
        wait_poll(
            "anti-spoofing on every container port",
            Duration::from_secs(30),
            || {
                let t = m.text("/metrics");
                let on = ports.iter().all(|(p, o)| {
                    sample(
                        &t,
                        &format!("daolinet_agent_port_anti_spoof{{port=\"{p}\",ofport=\"{o}\"}}"),
                    ) == Some(1)
                });
                if on {
                    Poll::Ready(())
                } else {
                    Poll::Pending(t)
                }
            },
        );
    }
    let ip = |v: &Value| json_str(v, "ip");
    assert!(
        na.ping(&ip(&b), 1, 5),
        "first cross-host ping a -> b failed"
    );

    // 1. The isolated pair a -> r.
    let t = trace_json(&h1, api, &["ca", "cr"]);
    assert_eq!(t["verdict"]["denied"], "isolated", "{t:#}");
    let why = t["reason"].as_str().unwrap_or_default();
    assert!(why.contains("blue") && why.contains("red"), "{t:#}");
    let before = port_drops(&m1, "ca", 1, "policy_drop");
    assert!(!na.ping(&ip(&r), 4, 1), "a reached the isolated r");
    wait_poll(
        "the sampled policy drops in observe",
        Duration::from_secs(30),
        || {
            let ev = observe_json(&h1, api, &["--verdict", "dropped", "--container", "ca"]);
            let by_controller = ev
                .iter()
                .any(|e| e["reason"] == "isolated" && e["by"] == "controller" && e["dst"] == "cr");
            let by_datapath = ev.iter().any(|e| {
                e["reason"] == "policy_drop"
                    && e["by"] == "datapath"
                    && e["src"] == "ca"
                    && e["host"] == "h1"
                    && e["dst"] == "cr"
            });
            if by_controller && by_datapath {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{ev:#?}"))
            }
        },
    );
    let after = port_drops(&m1, "ca", 1, "policy_drop");
    // 4 pings: the first punted and denied, the others met the drop flow
    // (one more may have been punted before the drop flow was in place).
    assert!(
        (2..=3).contains(&(after - before)),
        "policy drops on ca: {before} -> {after}"
    );
    let table = daolictl(&h1, api, &["observe", "--verdict", "dropped"]);
    eprintln!("daolictl observe --verdict dropped:\n{table}");
    assert!(
        table.starts_with("SEQ")
            && table.contains("BY")
            && table
                .lines()
                .any(|l| l.contains("isolated") && l.ends_with("controller"))
            && table
                .lines()
                .any(|l| l.contains("policy_drop") && l.ends_with("datapath")),
        "{table}"
    );

    // 3. A spoofed source: a forged IPv4 source, then a forged MAC. The
    // neighbour entry for b is set by hand, so that the forged packets are
    // exactly the ICMP echo requests (no ARP with the forged address).
    na.ip(&["addr", "add", "10.215.0.99/32", "dev", "eth0"]);
    na.ip(&[
        "neigh",
        "replace",
        &ip(&b),
        "lladdr",
        GATEWAY_MAC,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    let before = port_drops(&m1, "ca", 1, "spoofed_source");
    const FORGED: u32 = 5;
    assert!(
        !na.ok(&[
            "ping",
            "-n",
            "-c",
            &FORGED.to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
            "-I",
            "10.215.0.99",
            &ip(&b),
        ]),
        "a forged IPv4 source got through"
    );
    let after = port_drops(&m1, "ca", 1, "spoofed_source");
    assert_eq!(
        after - before,
        u64::from(FORGED),
        "spoofed drops on ca: {before} -> {after}"
    );
    wait_poll(
        "the spoofed drop in observe",
        Duration::from_secs(30),
        || {
            let ev = observe_json(&h1, api, &["--verdict", "dropped", "--container", "ca"]);
            let seen = ev.iter().any(|e| {
                e["reason"] == "spoofed_source"
                    && e["by"] == "datapath"
                    && e["src"] == "ca"
                    && e["packet"]
                        .as_str()
                        .is_some_and(|p| p.starts_with("10.215.0.99 > ") && p.ends_with("icmp"))
            });
            if seen {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{ev:#?}"))
            }
        },
    );
    na.ip(&["addr", "del", "10.215.0.99/32", "dev", "eth0"]);
    na.ip(&["link", "set", "eth0", "address", "02:00:00:00:d7:99"]);
    let before = port_drops(&m1, "ca", 1, "spoofed_source");
    assert!(!na.ping(&ip(&b), 2, 1), "a forged MAC got through");
    let after = port_drops(&m1, "ca", 1, "spoofed_source");
    assert!(after >= before + 2, "forged MAC: {before} -> {after}");
    na.ip(&["link", "set", "eth0", "address", &json_str(&a, "mac")]);
    // (Changing the MAC flushed the permanent neighbour entry.)
    na.ip(&["neigh", "flush", "dev", "eth0"]);
    assert!(na.ping(&ip(&b), 2, 5), "a -> b after the forgeries failed");

    // 5. A flood of denied packets from b to r (same host h2: b's drop
    // flow for r comes from one denied packet first).
    nb.ip(&[
        "neigh",
        "replace",
        "10.215.0.1",
        "lladdr",
        GATEWAY_MAC,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    let sock = nb
        .udp("0.0.0.0:0")
        .unwrap_or_else(|e| panic!("udp socket in b: {e}"));
    let to = format!("{}:9", ip(&r));
    sock.send_to(b"first", &to)
        .unwrap_or_else(|e| panic!("send: {e}"));
    let drop_flow = |flows: &str| -> Option<u64> {
        flows
            .lines()
            .find(|l| l.contains(&format!("nw_dst={}", ip(&r))) && l.contains("actions=drop"))
            .and_then(|l| {
                l.split("n_packets=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()
            })
    };
    wait_poll("b's drop flow for r", Duration::from_secs(30), || {
        let f = agents[1].cli(&["flows"]);
        match drop_flow(&f) {
            Some(_) => Poll::Ready(()),
            None => Poll::Pending(f),
        }
    });
    let flow_before = drop_flow(&agents[1].cli(&["flows"])).unwrap_or(0);
    let drops_before = port_drops(&m2, "cb", 1, "policy_drop");
    let samples_before =
        sample(&m2.text("/metrics"), "daolinet_agent_drop_samples_total").unwrap_or_default();
    let window = std::time::Instant::now();
    let seq_before = events_next(api);
    const FLOOD: u64 = 200_000;
    let done = Arc::new(AtomicBool::new(false));
    let flood = {
        let done = done.clone();
        let to = to.clone();
        std::thread::spawn(move || flood(&sock, &to, FLOOD, &done))
    };
    // During the flood: the API answers and the allowed pair pings.
    let mut during = 0;
    while !done.load(Ordering::Acquire) {
        let (st, _) = api.call("GET", "/api/containers", None);
        assert_eq!(st, 200, "the API did not answer during the flood");
        assert!(na.ping(&ip(&b), 1, 5), "a -> b failed during the flood");
        during += 1;
    }
    let sent = flood
        .join()
        .unwrap_or_else(|_| panic!("the flood thread panicked"));
    eprintln!("flood: {sent} datagrams sent, {during} API calls and pings during it");
    assert_eq!(sent, FLOOD);
    assert!(during > 0, "the flood ended before anything was checked");
    let drops = port_drops(&m2, "cb", 1, "policy_drop") - drops_before;
    let flow = drop_flow(&agents[1].cli(&["flows"])).unwrap_or(0) - flow_before;
    assert_eq!(
        (drops, flow),
        (FLOOD, FLOOD),
        "the port's policy drops and the drop flow's packets, against the datagrams sent"
    );
    // Sampled: a few events, not one per packet.
    let samples = sample(&m2.text("/metrics"), "daolinet_agent_drop_samples_total")
        .unwrap_or_default()
        - samples_before;
    // What the datapath's token buckets allow over the window (the agent's
    // default rate and burst, per CPU): a bound, not a timing.
    // SAFETY: sysconf has no preconditions.
    let cpus = u64::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }).unwrap_or(1);
    let allowed = cpus
        * (u64::from(daolinet_common::drop_sample::DEFAULT_SAMPLE_RATE)
            * (window.elapsed().as_secs() + 1)
            + u64::from(daolinet_common::drop_sample::DEFAULT_SAMPLE_BURST));
    let ev: Vec<Value> = observe_json(&h1, api, &["--verdict", "dropped", "--container", "cb"])
        .into_iter()
        .filter(|e| e["seq"].as_u64().is_some_and(|s| s >= seq_before))
        .collect();
    let flood_events = ev
        .iter()
        .filter(|e| e["by"] == "datapath" && e["reason"] == "policy_drop" && e["dst"] == "cr")
        .count() as u64;
    eprintln!(
        "flood: {samples} samples read by the agent (at most {allowed} allowed), {flood_events} events in observe"
    );
    assert!(
        flood_events >= 1 && flood_events <= samples && samples <= allowed && samples < FLOOD / 10,
        "{flood_events} events, {samples} samples (at most {allowed}) for {FLOOD} drops"
    );
}

/// Send `n` datagrams to `to`; the number sent. Paced a little (a pause
/// every 256), so that the kernel's receive backlog of the veth never
/// overflows and every datagram reaches the datapath.
fn flood(sock: &UdpSocket, to: &str, n: u64, done: &AtomicBool) -> u64 {
    let mut sent = 0;
    for i in 0..n {
        if sock.send_to(&i.to_be_bytes(), to).is_ok() {
            sent += 1;
        }
        if i % 256 == 255 {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    done.store(true, Ordering::Release);
    sent
}

/// The sequence number the controller's next event will have.
fn events_next(api: &Api) -> u64 {
    let v = api.ok("GET", "/api/events?since=18446744073709551615", None);
    v["next"]
        .as_u64()
        .unwrap_or_else(|| panic!("no next in {v}"))
}

/// `daolictl -o json observe ARGS`, one event per line.
fn observe_json(ns: &Netns, api: &Api, args: &[&str]) -> Vec<Value> {
    let mut a = vec!["-o", "json", "observe"];
    a.extend_from_slice(args);
    daolictl(ns, api, &a)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}
