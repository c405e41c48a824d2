//! Privileged: two etcd-backed controller sets, each on an etcd cluster of
//! its own, at the same switches. The lab of `failover.rs` (set A:
//! 3-member etcd, 3 controllers, here with 5 s leases, two agent hosts and an
//! Open vSwitch host, every switch connected to every controller) where
//! host 1's agent and Open vSwitch also connect to [`ROGUE_PORT`] in the
//! namespace of a second, separate 3-member etcd cluster (own data
//! directories, own management links to the two switches:
//! `HaOpts::other_etcd`). Set B is two controllers on that second cluster,
//! with the same key prefix as A's: its own model (the same hosts, none of
//! their containers: were it to act it would reconcile the switches'
//! container flows away) and its own leader.
//! B1 is elected first and reaches no switch; B2 listens on
//! [`ROGUE_PORT`], so both switches connect to it.
//!
//! B2, a slave, reads each switch's generation id first (ROLE_REQUEST
//! NOCHANGE): A's, not tagged with B's tag, so it asks for no slave role
//! (which would change the switch's generation id) and says so in one line
//! per switch. B1 is then killed: B2, now B's master, reads the generation
//! ids again and does not take the switches (one more line each). (On a
//! loaded machine short leases may change leaders on their own: the test
//! asserts which *set* issued the switches' generation id.) The
//! switches keep A's leader as master with A's generation id (B2 stays
//! EQUAL: `daolinet-agent status`, `ovs-vsctl list controller`), their
//! permanent flows do not change, pings on established flows lose nothing.
//! Then A's leader is killed under those pings: A's next leader (its
//! generation id is A's) takes both switches, nothing is lost, and a new
//! connection works.
#![allow(clippy::panic)] // a panic is a failed test

use std::time::Duration;

use daolinet_testlab::{wait_poll, Controller, Poll};
use daolinet_tests::ha::{
    first_answer, metric, permanent_flows, Ha, HaOpts, Pinger, BR, ROGUE_PORT,
};
use serde_json::Value;

/// The line a controller logs once per switch (and role) it leaves alone.
const LINE: &str = "has a master elected by controllers on another store";

/// B1's OpenFlow port (no switch connects to it).
const B1_PORT: u16 = 6670;

/// The lines of `ctl`'s log that say it left a switch alone, and contain
/// `role` ("master of its set", "slave of its set").
fn left_alone(ctl: &Controller, role: &str) -> Vec<String> {
    ctl.log()
        .lines()
        .filter(|l| l.contains(LINE) && l.contains(role))
        .map(str::to_string)
        .collect()
}

/// Waits until `ctl` has said, as `role`, that it leaves each switch
/// (`dpids`, as the API shows them) alone: once per switch connection and
/// kind of role (more than once only if a switch reconnected).
#[track_caller]
fn said_for_both(ctl: &Controller, role: &str, dpids: &[Value]) {
    let hexes: Vec<&str> = dpids
        .iter()
        .map(|d| d.as_str().unwrap_or_else(|| panic!("dpid {d}")))
        .collect();
    wait_poll(
        &format!("B2, as the {role}, left both switches alone"),
        Duration::from_secs(60),
        || {
            let lines = left_alone(ctl, role);
            if hexes.iter().all(|h| lines.iter().any(|l| l.contains(h))) {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{lines:#?}"))
            }
        },
    );
}

/// The controller set that issued generation id `g` (its tag, the high 24
/// bits).
fn set_of(g: Option<u64>) -> Option<u64> {
    g.map(|g| g >> 40)
}

/// The agent's link to B2 and its generation id.
fn agent_view(ha: &Ha) -> (Option<String>, Option<u64>) {
    let status: Value = serde_json::from_str(&ha.agents[0].cli(&["status", "--json"]))
        .unwrap_or_else(|e| panic!("agent status: {e}"));
    let b2 = ha.rogue_target(1);
    let role = status["controller_links"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["target"] == b2.as_str() && l["state"] == "up")
        .and_then(|l| l["role"].as_str().map(str::to_string));
    (role, status["generation_id"].as_u64())
}

#[test]
fn a_second_etcd_controller_set_leaves_the_first_sets_switches_alone() {
    let Some(mut ha) = Ha::new(HaOpts {
        probes: 1,
        ovs: true,
        rogue: true,
        // No failover is timed here: leases that outlast a loaded
        // machine's stalls (see HaOpts::lease_ttl).
        lease_ttl: Some(5),
        other_etcd: true,
        ..HaOpts::default()
    }) else {
        return;
    };
    let ovs_flows = |ha: &Ha| match ha.ovs.as_ref() {
        Some(ovs) => permanent_flows(&ovs.dump_flows(BR)),
        None => panic!("no Open vSwitch host"),
    };
    let leader = ha.leader();
    let gen_a = ha.generation(leader);
    ha.agents_obey_leader();
    ha.ovs_obeys_leader();
    let agent_before = permanent_flows(&ha.agents[0].cli(&["flows"]));
    let ovs_before = ovs_flows(&ha);

    // Set B: the second etcd cluster, the default prefix as A's. B1 first
    // (its leader; 5 s leases, so that B2 stays a slave until B1 is
    // killed, even on a loaded machine).
    let e = ha.rogue_netns().name().to_string();
    let store = ha
        .etcd_b
        .as_ref()
        .unwrap_or_else(|| panic!("no second etcd cluster"))
        .store_spec();
    let b_opts = |port: u16| {
        ha.lab
            .controller_opts()
            .netns(&e)
            .store(&store)
            .listen(&format!("0.0.0.0:{port}"))
            .api("0.0.0.0:0")
            .args(&["--lease-ttl", "5", "--echo-interval", "1"])
    };
    let b1 = Controller::start(&b_opts(B1_PORT));
    wait_poll("B1 leads set B", Duration::from_secs(30), || {
        match metric(&b1, "daolinet_leader") {
            Some(1) => Poll::Ready(()),
            other => Poll::Pending(format!("{other:?}")),
        }
    });
    let dpids = ha.copy_rogue_hosts(b1.api());
    // Separate sets: A's model has containers, B's none.
    let a_ctrs = ha.api(leader).ok("GET", "/api/containers", None);
    let b_ctrs = b1.api().ok("GET", "/api/containers", None);
    assert!(a_ctrs.as_array().is_some_and(|v| !v.is_empty()), "{a_ctrs}");
    assert!(b_ctrs.as_array().is_some_and(Vec::is_empty), "{b_ctrs}");

    // Pings on established flows while B2 comes and B1 goes (20 s).
    let pings = Pinger::start(&ha.a.ns, &ha.b.ip, 2000);
    let ovs_pings = Pinger::start(&ha.ovs_ctrs[0].ns, &ha.b.ip, 2000);

    // B2, a slave of B, while both switches connect to it (they retry
    // every 8 s at most).
    let b2 = Controller::start(&b_opts(ROGUE_PORT));
    wait_poll(
        "B2 connected to both switches",
        Duration::from_secs(60),
        || match metric(&b2, "daolinet_switches_connected") {
            Some(2) => Poll::Ready(()),
            other => Poll::Pending(format!("{other:?}")),
        },
    );
    said_for_both(&b2, "slave of its set", &dpids);

    // B1 dies: B2 leads B, and still leaves both switches alone.
    b1.kill9();
    wait_poll("B2 leads set B", Duration::from_secs(30), || {
        match metric(&b2, "daolinet_leader") {
            Some(1) => Poll::Ready(()),
            other => Poll::Pending(format!("{other:?}")),
        }
    });
    said_for_both(&b2, "master of its set", &dpids);
    let left = metric(&b2, "daolinet_switches_mastered_elsewhere_total");
    assert!(left.is_some_and(|n| n >= 4), "{left:?}");
    let gen_b = metric(&b2, "daolinet_leader_generation");
    assert!(
        set_of(gen_a).is_some() && set_of(gen_b).is_some() && set_of(gen_b) != set_of(gen_a),
        "A {gen_a:?}, B {gen_b:?}"
    );

    // The switches: A's leader master with A's generation id (a loaded
    // machine may have elected another of A's meanwhile), B2 EQUAL.
    ha.agents_obey_leader();
    ha.ovs_obeys_leader();
    let (b2_role, g) = agent_view(&ha);
    assert_eq!(b2_role.as_deref(), Some("equal"));
    assert_eq!(set_of(g), set_of(gen_a), "{g:?}");
    let b2_target = ha.rogue_target(3);
    wait_poll(
        "Open vSwitch: B2 connected, role other (equal)",
        Duration::from_secs(30),
        || {
            let roles = ha.ovs_roles();
            if roles
                .iter()
                .any(|(t, r, up)| *t == b2_target && r == "other" && *up)
            {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{roles:?}"))
            }
        },
    );
    // Neither switch's permanent flows changed.
    assert!(!agent_before.is_empty() && !ovs_before.is_empty());
    assert_eq!(
        permanent_flows(&ha.agents[0].cli(&["flows"])),
        agent_before,
        "host 1's agent"
    );
    assert_eq!(ovs_flows(&ha), ovs_before, "Open vSwitch");
    pings.none_lost("a second controller set connected, its first leader killed");
    ovs_pings
        .none_lost("a second controller set connected, its first leader killed, Open vSwitch host");

    // A's leader dies under pings (4 s): A's next leader takes both
    // switches (their generation id is A's), B2 still EQUAL.
    let pings = Pinger::start(&ha.a.ns, &ha.b.ip, 400);
    let ovs_pings = Pinger::start(&ha.ovs_ctrs[0].ns, &ha.b.ip, 400);
    std::thread::sleep(Duration::from_millis(500));
    let leader = ha.leader();
    let gen_a = ha.generation(leader);
    let killed = ha.kill9(leader);
    let t = first_answer(&ha.probes[0].ns, &ha.b.ip, killed);
    eprintln!("A's leader killed: a new connection answered after {t:?}");
    pings.none_lost("A's leader killed, a second controller set connected");
    ovs_pings.none_lost("A's leader killed, a second controller set connected, Open vSwitch host");
    let next = ha.leader();
    assert_ne!(next, leader);
    ha.agents_obey_leader();
    ha.ovs_obeys_leader();
    let gen_a2 = ha.generation(next);
    assert!(gen_a2 > gen_a, "{gen_a:?} -> {gen_a2:?}");
    let (b2_role, g) = agent_view(&ha);
    assert_eq!(b2_role.as_deref(), Some("equal"));
    assert_eq!(set_of(g), set_of(gen_a2), "{g:?}");
    let lines: Vec<String> = b2
        .log()
        .lines()
        .filter(|l| l.contains(LINE))
        .map(str::to_string)
        .collect();
    eprintln!("B2 said:\n{}", lines.join("\n"));
}
