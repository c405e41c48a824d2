//! Privileged: a controller on another store at the same switches. The
//! lab of `failover.rs` (3-member etcd, 3 controllers, here with 5 s leases, two
//! agent hosts and an Open vSwitch host, every switch connected to every
//! controller), where host 1's agent and Open vSwitch also connect to a
//! fourth controller started without `--store etcd:` (its own embedded
//! store, so no election: it believes it is the only controller). It has
//! the same hosts registered but none of their containers, so were it to
//! act it would reconcile the switches' container flows away and send
//! host 1's agent empty port sources.
//!
//! It asks each switch for its generation id first (ROLE_REQUEST
//! NOCHANGE); both have one (the elected leader's), so it says so in one
//! line per switch, stays EQUAL there (`daolinet-agent status`, `ovs-vsctl
//! list controller`) and changes nothing: it installs no flow, the
//! switches' permanent flows stay as they were (the leader's short-lived
//! answers to traffic come and go meanwhile), pings on
//! established flows (from both switches) lose nothing, and a new
//! connection is still decided by the leader.
#![allow(clippy::panic)] // a panic is a failed test

use std::time::{Duration, SystemTime};

use daolinet_testlab::{wait_poll, Controller, Poll};
use daolinet_tests::ha::{
    first_answer, metric, permanent_flows, Ha, HaOpts, Pinger, BR, ROGUE_PORT,
};
use serde_json::Value;

/// The line the controller logs once per switch it leaves alone.
const LINE: &str = "has a master elected by controllers on another store";

#[test]
fn a_controller_on_another_store_leaves_the_switches_alone() {
    let Some(ha) = Ha::new(HaOpts {
        probes: 1,
        ovs: true,
        rogue: true,
        // No failover is timed here: leases that outlast a loaded
        // machine's stalls (see HaOpts::lease_ttl).
        lease_ttl: Some(5),
        ..HaOpts::default()
    }) else {
        return;
    };
    let Some(ovs) = ha.ovs.as_ref() else {
        panic!("no Open vSwitch host");
    };
    ha.agents_obey_leader();
    ha.ovs_obeys_leader();
    let agent_before = permanent_flows(&ha.agents[0].cli(&["flows"]));
    let ovs_before = permanent_flows(&ovs.dump_flows(BR));

    // The fourth controller, on its own store, with hosts 1 and 3 as the
    // others have them.
    let lone = Controller::start(
        &ha.lab
            .controller_opts()
            .netns(ha.rogue_netns().name())
            .listen(&format!("0.0.0.0:{ROGUE_PORT}"))
            .api("0.0.0.0:0")
            .args(&["--echo-interval", "1"]),
    );
    let dpids = ha.copy_rogue_hosts(lone.api());

    // While both switches connect to it (they retry every 8 s at most).
    let pings = Pinger::start(&ha.a.ns, &ha.b.ip, 2000);
    let ovs_pings = Pinger::start(&ha.ovs_ctrs[0].ns, &ha.b.ip, 2000);
    wait_poll(
        "the fourth controller connected to both switches and left them",
        Duration::from_secs(60),
        || {
            let connected = metric(&lone, "daolinet_switches_connected");
            let left = metric(&lone, "daolinet_switches_mastered_elsewhere_total");
            if connected == Some(2) && left == Some(2) {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("connected {connected:?}, left {left:?}"))
            }
        },
    );
    // EQUAL on both (it asked for no role), the leader still master.
    let status: Value = serde_json::from_str(&ha.agents[0].cli(&["status", "--json"]))
        .unwrap_or_else(|e| panic!("agent status: {e}"));
    let rogue = ha.rogue_target(1);
    assert!(
        status["controller_links"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|l| l["target"] == rogue.as_str() && l["role"] == "equal"),
        "{status}"
    );
    assert!(status["generation_id"].as_u64().is_some(), "{status}");
    // (Open vSwitch refreshes its controllers' status every few seconds.)
    let rogue = ha.rogue_target(3);
    wait_poll(
        "Open vSwitch: the fourth controller connected, role other (equal)",
        Duration::from_secs(30),
        || {
            let roles = ha.ovs_roles();
            if roles
                .iter()
                .any(|(t, r, up)| *t == rogue && r == "other" && *up)
            {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{roles:?}"))
            }
        },
    );
    ha.agents_obey_leader();
    ha.ovs_obeys_leader();

    pings.none_lost("a controller on another store connected");
    ovs_pings.none_lost("a controller on another store connected, Open vSwitch host");

    // It installed nothing, and neither switch's permanent flows changed.
    assert_eq!(metric(&lone, "daolinet_flows_installed"), Some(0));
    assert!(!agent_before.is_empty() && !ovs_before.is_empty());
    assert_eq!(
        permanent_flows(&ha.agents[0].cli(&["flows"])),
        agent_before,
        "host 1's agent"
    );
    assert_eq!(
        permanent_flows(&ovs.dump_flows(BR)),
        ovs_before,
        "Open vSwitch"
    );

    // A new connection, decided by the leader.
    let t = first_answer(&ha.probes[0].ns, &ha.b.ip, SystemTime::now());
    eprintln!("a new connection answered after {t:?}");

    // One line per switch, naming it.
    let log = lone.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(LINE)).collect();
    eprintln!("the fourth controller said:\n{}", lines.join("\n"));
    assert_eq!(lines.len(), 2, "{log}");
    for d in &dpids {
        let hex = d.as_str().unwrap_or_else(|| panic!("dpid {d}"));
        assert!(
            lines.iter().filter(|l| l.contains(hex)).count() == 1,
            "datapath {hex}: {log}"
        );
    }
}
