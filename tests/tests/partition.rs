//! Privileged: the lab of `failover.rs` (3-member etcd, 3 controllers with
//! 2 s leases, two agent hosts and an Open vSwitch host, every switch
//! connected to every controller), with controller 0 reaching etcd only
//! through relays the test cuts, and a controller end of the test's own
//! (`daolinet_tests::ofpeer`) that host 1's agent and Open vSwitch also
//! connect to.
//!
//! - **The leader partitioned from etcd steps down**: controller 0 leads;
//!   its relays are cut while pings run on established flows (a -> b, and
//!   e -> b from the Open vSwitch host). It drops to 0 on its
//!   `daolinet_leader` metric on its own, another controller is elected,
//!   Open vSwitch has the new leader as master and controller 0 as slave,
//!   a new connection from host 1 works (decided by the new leader), no
//!   ping is lost; healed, controller 0 follows as a slave.
//! - **A stale master's FLOW_MOD is refused by the real switches**: our
//!   controllers step down by themselves, so the test plays a controller
//!   that does not. Its end becomes master of host 1's agent and of Open
//!   vSwitch with the leader's generation id (its FLOW_MOD is taken: the
//!   check can fail); the leader is killed and the next one's ROLE_REQUEST
//!   (a newer generation id) makes it a slave on both switches; then its
//!   FLOW_MOD gets OFPET_BAD_REQUEST/OFPBRC_IS_SLAVE and is not in the
//!   table, and its ROLE_REQUEST master with its old generation id gets
//!   OFPET_ROLE_REQUEST_FAILED/OFPRRFC_STALE from both.
#![allow(clippy::panic)] // a panic is a failed test

use std::time::{Duration, Instant, SystemTime};

use daolinet_openflow::{
    ErrorCode, FlowMod, OFPBRC_IS_SLAVE, OFPCR_ROLE_MASTER, OFPCR_ROLE_NOCHANGE, OFPCR_ROLE_SLAVE,
    OFPET_BAD_REQUEST, OFPET_ROLE_REQUEST_FAILED, OFPRRFC_STALE,
};
use daolinet_testlab::{wait_poll, Poll};
use daolinet_tests::ha::{first_answer, metric, Ha, HaOpts, Pinger, BR, ROGUE_PORT};
use daolinet_tests::ofpeer::OfPeer;

const COUNT: u32 = 400; // 4 s at 10 ms

/// A FLOW_MOD nobody else writes: its cookie shows whether it is installed.
fn marker(cookie: u64) -> FlowMod {
    format!("cookie={cookie:#x},priority=7,in_port=4000 actions=drop")
        .parse()
        .unwrap_or_else(|e| panic!("marker flow: {e:?}"))
}

/// Whether the flow with `cookie` is in host 1's agent and in Open vSwitch.
fn installed(ha: &Ha, cookie: u64) -> (bool, bool) {
    let c = format!("cookie={cookie:#x},");
    let agent = ha.agents[0].cli(&["flows"]).contains(&c);
    let ovs = ha
        .ovs
        .as_ref()
        .is_some_and(|o| o.dump_flows(BR).contains(&format!("cookie={cookie:#x}")));
    (agent, ovs)
}

#[test]
fn a_partitioned_leader_steps_down_and_a_stale_master_is_refused() {
    let Some(mut ha) = Ha::new(HaOpts {
        probes: 2,
        ovs: true,
        relayed: true,
        rogue: true,
        ..HaOpts::default()
    }) else {
        return;
    };
    let ipb = ha.b.ip.clone();
    // 1. Partition the leader from etcd: controller 0, made the leader
    //    (whoever else leads resigns with SIGTERM and queues again), and
    //    checked to lead just before the cut.
    let (cut, cut_at, pings, ovs_pings) = loop {
        let l = ha.leader();
        if l != 0 {
            if let Some(c) = ha.ctls[l].take() {
                let st = c.terminate();
                assert!(st.is_some_and(|s| s.success()), "controller {l}: {st:?}");
            }
            ha.start(l);
            ha.all_connected();
            continue;
        }
        ha.ovs_obeys_leader();
        let pings = Pinger::start(&ha.a.ns, &ipb, COUNT);
        let ovs_pings = Pinger::start(&ha.ovs_ctrs[0].ns, &ipb, COUNT);
        std::thread::sleep(Duration::from_millis(300));
        if ha.ctls[0]
            .as_ref()
            .and_then(|c| metric(c, "daolinet_leader"))
            != Some(1)
        {
            continue;
        }
        let (t, at) = (Instant::now(), SystemTime::now());
        for r in &ha.relays {
            r.cut();
        }
        break (t, at, pings, ovs_pings);
    };
    let (down, up) = wait_poll(
        "controller 0 steps down and another is elected",
        Duration::from_secs(30),
        {
            let mut down = None;
            let ha = &ha;
            move || {
                let c0 = ha.ctls[0]
                    .as_ref()
                    .and_then(|c| metric(c, "daolinet_leader"));
                if down.is_none() && c0 == Some(0) {
                    down = Some(cut.elapsed());
                }
                let other = ha.ctls[1..]
                    .iter()
                    .flatten()
                    .any(|c| metric(c, "daolinet_leader") == Some(1));
                match (down, other) {
                    (Some(d), true) => Poll::Ready((d, cut.elapsed())),
                    _ => Poll::Pending(format!("controller 0 leader={c0:?}, another={other}")),
                }
            }
        },
    );
    let new_conn = first_answer(&ha.probes[0].ns, &ipb, cut_at);
    eprintln!(
        "partitioned leader: stepped down after {down:?}, another leads (seen after {up:?}), a new connection from host 1 answered after {new_conn:?}"
    );
    // Still running, still connected to the switches, a slave everywhere.
    assert_eq!(
        ha.ctls[0]
            .as_ref()
            .and_then(|c| metric(c, "daolinet_leader")),
        Some(0)
    );
    ha.ovs_obeys_leader();
    pings.none_lost("leader partitioned");
    ovs_pings.none_lost("leader partitioned, Open vSwitch host");

    // Healed: controller 0 follows as a slave.
    for r in &ha.relays {
        r.restore();
    }
    let leader = ha.leader();
    assert_ne!(leader, 0);
    ha.all_connected();
    ha.ovs_obeys_leader();
    let t = first_answer(&ha.probes[1].ns, &ipb, SystemTime::now());
    eprintln!("healed: a new connection answered after {t:?}");

    // 2. A stale master, against both real switches. The test's end
    //    claims master with the generation id the switch has (the current
    //    leader's: ROLE_REQUEST nochange tells it), which is not stale, and
    //    writes a flow, which must be in the table (so the refusal below is
    //    the switch's doing). Should the leadership move meanwhile (on a
    //    loaded machine a short lease can), a newer generation demotes the
    //    test's end and the new leader reconciles the flow away: claim again.
    let e = ha.etcd.netns();
    let mut peers = Vec::new();
    for (k, what, ip) in [
        (0, "host 1's agent", "10.251.1.1"),
        (1, "Open vSwitch", "10.251.3.1"),
    ] {
        let addr = format!("{ip}:{ROGUE_PORT}");
        let mut p = OfPeer::accept(e, &addr, Duration::from_secs(60));
        let mut attempts = 0;
        let generation = loop {
            attempts += 1;
            assert!(attempts <= 5, "{what}: leadership kept moving");
            let generation = p
                .role(OFPCR_ROLE_NOCHANGE, 0)
                .unwrap_or_else(|e| panic!("{what}: role nochange: {e:?}"))
                .generation_id;
            match p.role(OFPCR_ROLE_MASTER, generation) {
                Ok(r) => assert_eq!(r.role, OFPCR_ROLE_MASTER, "{what}"),
                // A newer leader between the two requests.
                Err(c) if c == ErrorCode::new(OFPET_ROLE_REQUEST_FAILED, OFPRRFC_STALE) => continue,
                Err(c) => panic!("{what}: master with the switch's generation: {c:?}"),
            }
            match p.flow_mod(marker(0x5a1e_0001)) {
                Ok(()) => {}
                // Demoted between the two requests.
                Err(c) if c == ErrorCode::new(OFPET_BAD_REQUEST, OFPBRC_IS_SLAVE) => continue,
                Err(c) => panic!("{what}: the master's FLOW_MOD refused: {c:?}"),
            }
            let there = if k == 0 {
                installed(&ha, 0x5a1e_0001).0
            } else {
                installed(&ha, 0x5a1e_0001).1
            };
            if there {
                break generation;
            }
            let now = p
                .role(OFPCR_ROLE_NOCHANGE, 0)
                .unwrap_or_else(|e| panic!("{what}: role nochange: {e:?}"));
            assert!(
                now.role != OFPCR_ROLE_MASTER,
                "{what}: the master's FLOW_MOD was taken but is not in the table: {}",
                if k == 0 {
                    ha.agents[0].cli(&["flows"])
                } else {
                    ha.ovs
                        .as_ref()
                        .map(|o| o.dump_flows(BR))
                        .unwrap_or_default()
                }
            );
            eprintln!("{what}: the leadership moved while the test's end was master; again");
        };
        peers.push((what, p, generation));
    }

    // The leader dies; the next one's ROLE_REQUEST (newer generation id)
    // makes the test's end a slave on both switches.
    let leader = ha.leader();
    ha.kill9(leader);
    ha.leader();
    for (what, p, generation) in peers.iter_mut() {
        let generation = *generation;
        wait_poll(
            &format!("{what}: the old master demoted by a newer generation"),
            Duration::from_secs(30),
            || match p.role(OFPCR_ROLE_NOCHANGE, 0) {
                Ok(r) if r.role == OFPCR_ROLE_SLAVE && r.generation_id > generation => {
                    Poll::Ready(())
                }
                other => Poll::Pending(format!("{other:?}")),
            },
        );
        assert_eq!(
            p.flow_mod(marker(0x5a1e_0002)),
            Err(ErrorCode::new(OFPET_BAD_REQUEST, OFPBRC_IS_SLAVE)),
            "{what}: the stale master's FLOW_MOD"
        );
        assert_eq!(
            p.role(OFPCR_ROLE_MASTER, generation).map(|r| r.role),
            Err(ErrorCode::new(OFPET_ROLE_REQUEST_FAILED, OFPRRFC_STALE)),
            "{what}: master again with the old generation id"
        );
    }
    assert_eq!(
        installed(&ha, 0x5a1e_0002),
        (false, false),
        "the stale master's flow"
    );
    ha.ovs_obeys_leader();
    drop(peers);
}
