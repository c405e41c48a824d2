//! Privileged: restarts cost no traffic. Two agent hosts joined by an
//! underlay wire, the controller (embedded store) in host 1's namespace on
//! a fixed port (its own namespace), containers a, c on host 1 and b on
//! host 2. With pings every 10 ms running on established flows (cross host
//! a -> b, same host a -> c):
//!
//! - the controller is stopped (SIGTERM) and started again, then killed
//!   (`kill -9`) and started again: it reconciles, keeps every valid flow
//!   (the flows keep their counters: nothing was deleted and re-added) and
//!   no ping is lost;
//! - the agent of host 1 is stopped and started again: forwarding goes on
//!   from its pinned maps and programs, it resyncs with the controller
//!   without churn, and no ping is lost.
#![allow(clippy::panic)] // a panic is a failed test

use std::time::Duration;

use daolinet_testlab::{json_str, wait_poll, Agent, Controller, Lab, Need, Poll};
use daolinet_tests::ha::{metric, Pinger};

const NET: &str = "192.168.214";

/// The pair flows of `agent` (priority 100 with an idle timeout; drops
/// after a denial expire by themselves) as (flow without counters,
/// packet count).
fn pair_flows(agent: &Agent) -> Vec<(String, u64)> {
    agent
        .cli(&["flows"])
        .lines()
        .filter(|l| l.contains("priority=100") && l.contains("idle_timeout="))
        .map(|l| {
            let packets = l
                .split([' ', ','])
                .find_map(|w| w.strip_prefix("n_packets="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let stable: Vec<&str> = l
                .split([' ', ','])
                .filter(|w| {
                    !w.is_empty()
                        && !w.starts_with("n_packets=")
                        && !w.starts_with("n_bytes=")
                        && !w.starts_with("duration=")
                        && !w.starts_with("idle_age=")
                })
                .collect();
            (stable.join(","), packets)
        })
        .collect()
}

/// After a restart: the same pair flows, none reset (counters only grow).
fn same_flows_kept(agent: &Agent, before: &[(String, u64)], what: &str) {
    let after = pair_flows(agent);
    for (f, n) in before {
        let now = after
            .iter()
            .find(|(g, _)| g == f)
            .unwrap_or_else(|| panic!("{what}: flow gone or changed: {f}\nnow: {after:#?}"));
        assert!(
            now.1 >= *n,
            "{what}: counters reset (re-added): {f} {n} -> {}",
            now.1
        );
    }
}

fn wait_connected(ctl: &Controller, n: u64) {
    wait_poll(
        &format!("{n} datapaths connected"),
        Duration::from_secs(30),
        || match metric(ctl, "daolinet_switches_connected") {
            Some(m) if m == n => Poll::Ready(()),
            // The gauge only: the whole metrics text hid the agents' logs
            // in a CI report's cut output.
            m => Poll::Pending(format!("daolinet_switches_connected {m:?}")),
        },
    );
}

#[test]
fn restarts_of_controller_and_agent_lose_no_packet() {
    let Some(mut lab) = Lab::new(&[
        Need::BpfObject,
        Need::Binary("daolinet-controller"),
        Need::Binary("daolinet-agent"),
        Need::Program("ping"),
    ]) else {
        return;
    };
    let (h1, h2) = lab.wired_hosts(NET, 0xd6);
    // A fixed OpenFlow port inside host 1's namespace, so the agents find
    // the restarted controller where they left it.
    let opts = lab
        .controller_opts()
        .netns(&h1)
        .listen("0.0.0.0:6653")
        .args(&["--idle-timeout", "30"]);
    let mut ctl = Controller::start(&opts);
    let api = ctl.api().clone();
    for i in 1..=2 {
        api.add_host(
            &format!("h{i}"),
            i,
            &format!("{NET}.{i}"),
            &format!("02:00:00:00:d6:0{i}"),
            65000,
        );
    }
    api.add_network("blue", "10.214.0.0/24");
    let container = |id: &str, host: &str, port: u32| api.add_container(id, "blue", host, port);
    let a = container("ca", "h1", 1);
    let b = container("cb", "h2", 1);
    let c = container("cc", "h1", 2);
    let na = lab.container(&h1, "a", "ca", &json_str(&a, "ip"), &json_str(&a, "mac"));
    let _nb = lab.container(&h2, "b", "cb", &json_str(&b, "ip"), &json_str(&b, "mac"));
    let _nc = lab.container(&h1, "c", "cc", &json_str(&c, "ip"), &json_str(&c, "mac"));
    let mut ag1 = lab.agent(
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
            "tcp:127.0.0.1:6653",
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
            &format!("tcp:{NET}.1:6653"),
        ],
    );
    wait_connected(&ctl, 2);
    let (ipb, ipc) = (json_str(&b, "ip"), json_str(&c, "ip"));
    // Established flows.
    assert!(na.ping(&ipb, 1, 3), "first cross-host ping failed");
    assert!(na.ping(&ipc, 1, 3), "first same-host ping failed");
    let count = 500; // 5 s at 10 ms

    for how in ["SIGTERM", "kill -9"] {
        let before = pair_flows(&ag1);
        assert!(before.len() >= 4, "{before:#?}");
        let pb = Pinger::start(&na, &ipb, count);
        let pc = Pinger::start(&na, &ipc, count);
        std::thread::sleep(Duration::from_millis(500));
        if how == "SIGTERM" {
            let st = ctl.terminate();
            assert!(st.is_some_and(|s| s.success()), "{st:?}");
        } else {
            ctl.kill9();
        }
        ctl = Controller::start(&opts);
        wait_connected(&ctl, 2);
        for (p, what) in [(pb, "cross host"), (pc, "same host")] {
            let (sent, got) = p.finish();
            assert_eq!(
                got,
                sent,
                "controller restart ({how}): {what} ping lost {} of {sent}",
                sent - got
            );
        }
        same_flows_kept(&ag1, &before, &format!("controller restart ({how})"));
    }

    // The agent of host 1 restarts under the same pings.
    let before = pair_flows(&ag1);
    let pb = Pinger::start(&na, &ipb, count);
    let pc = Pinger::start(&na, &ipc, count);
    std::thread::sleep(Duration::from_millis(500));
    ag1.stop();
    ag1.start();
    wait_connected(&ctl, 2);
    for (p, what) in [(pb, "cross host"), (pc, "same host")] {
        let (sent, got) = p.finish();
        assert_eq!(
            got,
            sent,
            "agent restart: {what} ping lost {} of {sent}",
            sent - got
        );
    }
    same_flows_kept(&ag1, &before, "agent restart");
}
