//! Privileged: the etcd member that is the raft leader dies. The lab of
//! `failover.rs` (a real 3-member etcd cluster, 3 controllers with 1 s
//! leases, two agent hosts and an Open vSwitch host, every switch
//! connected to every controller). With pings every 10 ms on established
//! flows (a -> b between the agent hosts, e -> b from the Open vSwitch
//! host), the member that is etcd's raft leader (`etcdctl endpoint
//! status`) is killed with `kill -9`:
//!
//! - the other two members elect a new raft leader;
//! - no ping is lost;
//! - a new connection (a probe that never sent before) works, from an
//!   agent host and from the Open vSwitch host;
//! - the controllers keep serving: one of them leads and the switches
//!   obey it, a write through a follower's API is accepted (it goes
//!   through etcd) and every controller's model has it;
//! - the member is started again, the cluster is healthy, and another new
//!   connection works.
//!
//! Whether the controllers' leader changed is printed, not asserted: etcd
//! elects its new raft leader within its 500 ms election timeout, inside
//! the 3/4 s a controller waits for a keep-alive answer before it steps
//! down, but a loaded machine may stretch either.
#![allow(clippy::panic)] // a panic is a failed test

use std::time::{Duration, SystemTime};

use daolinet_testlab::{wait_poll, Poll};
use daolinet_tests::ha::{first_answer, raft_leader, wait_raft_leader, Ha, HaOpts, Pinger};

const COUNT: u32 = 600; // 6 s at 10 ms

#[test]
fn killing_the_etcd_raft_leader_loses_no_packets_and_the_controllers_keep_serving() {
    let Some(mut ha) = Ha::new(HaOpts {
        probes: 2,
        ovs: true,
        ..HaOpts::default()
    }) else {
        return;
    };
    let ipb = ha.b.ip.clone();
    ha.ovs_obeys_leader();
    ha.agents_obey_leader();
    let before = ha.leader();

    let pings = Pinger::start(&ha.a.ns, &ipb, COUNT);
    let ovs_pings = Pinger::start(&ha.ovs_ctrs[0].ns, &ipb, COUNT);
    std::thread::sleep(Duration::from_millis(500));
    let m = wait_raft_leader(&ha.etcd);
    ha.etcd.kill9(m);
    let killed = SystemTime::now();
    assert!(!ha.etcd.running(m), "etcd member {m} still runs");

    // New connections, from both kinds of host, at once; meanwhile the two
    // other members elect a new raft leader.
    let rest: Vec<usize> = (0..ha.etcd.len()).filter(|&i| i != m).collect();
    let (next, agent_conn, ovs_conn) = std::thread::scope(|s| {
        let ovs = s.spawn(|| first_answer(&ha.ovs_ctrs[1].ns, &ipb, killed));
        let agent = s.spawn(|| first_answer(&ha.probes[0].ns, &ipb, killed));
        let next = wait_poll(
            "a new raft leader among the other members",
            Duration::from_secs(30),
            || match raft_leader(&ha.etcd, &rest) {
                Some(i) => Poll::Ready(i),
                None => Poll::Pending(String::new()),
            },
        );
        let join = |h: std::thread::ScopedJoinHandle<'_, Duration>, what: &str| {
            h.join()
                .unwrap_or_else(|_| panic!("the {what} probe failed"))
        };
        (
            next,
            join(agent, "agent host's"),
            join(ovs, "Open vSwitch host's"),
        )
    });
    assert_ne!(next, m);

    // The controllers keep serving: a leader the switches obey, writes
    // through any controller's API.
    let after = ha.leader();
    ha.agents_obey_leader();
    ha.ovs_obeys_leader();
    let follower = (0..ha.ctls.len())
        .find(|&i| i != after && ha.ctls[i].is_some())
        .unwrap_or_else(|| panic!("no follower"));
    let writer = ha.api(follower);
    wait_poll(
        "a write through a follower with the raft leader dead",
        Duration::from_secs(30),
        || match writer.try_raw(
            "POST",
            "/api/containers",
            Some(r#"{"id":"after-raft-leader","network":"blue","host":"h2","port":30}"#),
        ) {
            // 409: taken by an earlier attempt that answered late.
            Ok((200..=299 | 409, _)) => Poll::Ready(()),
            other => Poll::Pending(format!("{other:?}")),
        },
    );
    for i in 0..ha.ctls.len() {
        let api = ha.api(i);
        wait_poll(
            &format!("controller {i}'s model has the write"),
            Duration::from_secs(30),
            || {
                let all = api.ok("GET", "/api/containers", None);
                if all
                    .as_array()
                    .is_some_and(|v| v.iter().any(|c| c["id"] == "after-raft-leader"))
                {
                    Poll::Ready(())
                } else {
                    Poll::Pending(all.to_string())
                }
            },
        );
    }
    pings.none_lost("the etcd raft leader killed");
    ovs_pings.none_lost("the etcd raft leader killed, from the Open vSwitch host");
    eprintln!(
        "etcd member {m} (the raft leader) killed: member {next} leads etcd; controller {before} \
         led, {after} leads; a new connection answered after {agent_conn:?} from an agent host, \
         {ovs_conn:?} from the Open vSwitch host"
    );

    // The member comes back; the cluster is whole; new connections work.
    ha.etcd.start_member(m);
    ha.etcd.wait_healthy(Duration::from_secs(30));
    ha.all_connected();
    let t = first_answer(&ha.probes[1].ns, &ipb, SystemTime::now());
    let t2 = first_answer(&ha.ovs_ctrs[2].ns, &ipb, SystemTime::now());
    eprintln!(
        "etcd member {m} back: a new connection answered after {t:?} (agent host), {t2:?} (Open vSwitch host)"
    );
}
