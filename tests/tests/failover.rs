//! Privileged: three controllers on a real 3-member etcd cluster (own
//! namespace, own data directories, the default 2 s leases), two agent hosts and an
//! Open vSwitch host on an underlay bridge, every switch connected to every
//! controller (the lab: `daolinet_tests::ha`). Open vSwitch has the leader
//! as its one master and the others as slaves (`ovs-vsctl list
//! controller`: the roles the controllers' ROLE_REQUESTs set). With pings
//! every 10 ms on established flows (a -> b between the agent hosts, e -> b
//! from the Open vSwitch host) and an iperf3 stream (a -> b):
//!
//! - every agent's `daolinet-agent status` shows the leader as master,
//!   the others as slaves, and the leader's generation id;
//! - the leader is killed (`kill -9`): no ping is lost, the stream never
//!   stalls for half a second, another controller leads and Open vSwitch
//!   and the agents (their status) follow it as master, a new connection (a pair the controller has to
//!   decide) works again from an agent host and from the Open vSwitch
//!   host, and every write the API had accepted before the kill is there;
//! - every controller is restarted in turn (SIGTERM, start): no ping lost;
//! - every agent is restarted in turn: no ping lost;
//! - an etcd member is killed: no ping lost, the API still takes writes,
//!   a new connection works.
#![allow(clippy::panic)] // a panic is a failed test

use std::time::{Duration, SystemTime};

use daolinet_testlab::{wait_poll, Poll};
use daolinet_tests::ha::{first_answer, register, Ha, HaOpts, Pinger, Stream};

const COUNT: u32 = 400; // 4 s at 10 ms

#[test]
fn three_controllers_fail_over_and_restart_without_losing_packets() {
    let Some(mut ha) = Ha::new(HaOpts {
        ovs: true,
        ..HaOpts::default()
    }) else {
        return;
    };
    let (ipa, ipb, ipc) = (ha.a.ip.clone(), ha.b.ip.clone(), ha.c.ip.clone());
    ha.ovs_obeys_leader();
    ha.agents_obey_leader();
    eprintln!("Open vSwitch's controllers: {:?}", ha.ovs_roles());

    // 1. kill -9 the leader under pings and a stream.
    let old = ha.leader();
    let generation = ha.generation(old);
    let via = ha.api(old);
    let pings = Pinger::start(&ha.a.ns, &ipb, COUNT);
    let ovs_pings = Pinger::start(&ha.ovs_ctrs[0].ns, &ipb, COUNT);
    let stream = Stream::start(&ha.b.ns, &ha.a.ns, &ipb, 4);
    std::thread::sleep(Duration::from_millis(500));
    // Writes the leader accepted just before its death.
    let accepted: Vec<String> = (0..10)
        .map(|k| {
            let id = format!("w{k}");
            register(&via, &id, "h2", 10 + k);
            id
        })
        .collect();
    let killed = ha.kill9(old);
    let new_conn = first_answer(&ha.c.ns, &ipb, killed);
    let ovs_conn = first_answer(&ha.ovs_ctrs[1].ns, &ipb, killed);
    let new = ha.leader();
    let took_over = killed.elapsed().unwrap_or_default();
    pings.none_lost("leader killed");
    ovs_pings.none_lost("leader killed, from the Open vSwitch host");
    stream.never_stalled("leader killed");
    eprintln!(
        "leader {old} killed: controller {new} leads (seen after {took_over:?}), a new connection answered after {new_conn:?} from an agent host, {ovs_conn:?} from the Open vSwitch host"
    );
    ha.ovs_obeys_leader();
    ha.agents_obey_leader();
    assert_ne!(new, old);
    let new_generation = ha.generation(new);
    assert!(
        new_generation > generation,
        "{generation:?} -> {new_generation:?}"
    );
    let have = ha.api(new).ok("GET", "/api/containers", None);
    for id in &accepted {
        assert!(
            have.as_array()
                .is_some_and(|all| all.iter().any(|x| x["id"] == id.as_str())),
            "accepted write {id} lost: {have}"
        );
    }
    ha.start(old);
    ha.all_connected();
    ha.ovs_obeys_leader();

    // 2. Rolling restart of every controller.
    for i in 0..ha.ctls.len() {
        let pings = Pinger::start(&ha.a.ns, &ipb, COUNT);
        let ovs_pings = Pinger::start(&ha.ovs_ctrs[0].ns, &ipb, COUNT);
        std::thread::sleep(Duration::from_millis(300));
        if let Some(c) = ha.ctls[i].take() {
            let st = c.terminate();
            assert!(st.is_some_and(|s| s.success()), "controller {i}: {st:?}");
        }
        ha.start(i);
        ha.all_connected();
        pings.none_lost(&format!("controller {i} restarted"));
        ovs_pings.none_lost(&format!("controller {i} restarted, Open vSwitch host"));
    }
    ha.ovs_obeys_leader();

    // 3. Rolling restart of every agent.
    for i in 0..ha.agents.len() {
        let pings = Pinger::start(&ha.a.ns, &ipb, COUNT);
        std::thread::sleep(Duration::from_millis(300));
        ha.agents[i].stop();
        ha.agents[i].start();
        ha.all_connected();
        pings.none_lost(&format!("agent {} restarted", i + 1));
    }

    // 4. An etcd member killed: traffic goes on, the API takes writes,
    //    new connections are decided.
    let pings = Pinger::start(&ha.a.ns, &ipb, COUNT);
    std::thread::sleep(Duration::from_millis(300));
    ha.etcd.kill9(0);
    let writer = ha.api(ha.leader());
    wait_poll(
        "a write with a member down",
        Duration::from_secs(30),
        || {
            match writer.try_raw(
                "POST",
                "/api/containers",
                Some(r#"{"id":"after-member","network":"blue","host":"h2","port":30}"#),
            ) {
                // 409: taken by an earlier attempt that answered late.
                Ok((200..=299 | 409, _)) => Poll::Ready(()),
                other => Poll::Pending(format!("{other:?}")),
            }
        },
    );
    let t = first_answer(&ha.d.ns, &ipa, SystemTime::now());
    eprintln!("etcd member killed: a new connection answered after {t:?}");
    pings.none_lost("etcd member killed");
    ha.etcd.start_member(0);
    ha.etcd.wait_healthy(Duration::from_secs(30));
    let t = first_answer(&ha.d.ns, &ipc, SystemTime::now());
    eprintln!("etcd member back: a new connection answered after {t:?}");
}
