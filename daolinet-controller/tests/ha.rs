//! Several controller processes on a real 3-member etcd cluster (own
//! namespace, own data directories), one datapath connected to each of
//! them (as an agent with several `--controller` is): the elected leader is
//! the master (generation id = its election key's create revision, tagged
//! with the controller set's tag), the
//! others are slaves and write nothing; a write through a slave's API
//! reaches the switch through the master; after `kill -9` of the leader
//! another takes over and reconciles without deleting a valid flow; a
//! leader that stops resigns and hands over at once; a leader cut off
//! from etcd steps down.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::fakeswitch::{flow_mods, stats_of, FakeSwitch};
use daolinet_controller::generation::{revision_of, tag_of, SetTag};
use daolinet_openflow::{
    consts::*, FlowStats, Frame, Hello, Message, PacketIn, RoleMsg, SwitchFeatures,
};
use daolinet_policy::{Ipv4, Packet, ETH_TYPE_IPV4, L3};
use daolinet_testlab::{Controller, EtcdCluster, Lab, Need, Netns, TcpProxy, ETCD_PROGRAMS};
use serde_json::Value;
use tokio::time::timeout;

fn lab() -> Option<Lab> {
    Lab::new(&[
        Need::Program(ETCD_PROGRAMS[0]),
        Need::Program(ETCD_PROGRAMS[1]),
        Need::Binary("daolinet-controller"),
    ])
}

/// A controller on `store` in the cluster's namespace, 1 s lease.
fn controller(lab: &Lab, etcd: &EtcdCluster, store: &str) -> Controller {
    Controller::start(
        &lab.controller_opts()
            .netns(etcd.netns().name())
            .store(store)
            .args(&["--lease-ttl", "1", "--echo-interval", "1"]),
    )
}

/// Host h1 (dpid 1, uplink 1), network n, containers a (port 2), b (port 3).
fn populate(c: &Controller) {
    let api = c.api();
    api.ok(
        "POST",
        "/api/hosts",
        Some(r#"{"name":"h1","dpid":1,"ip":"192.168.0.1","mac":"02:00:00:00:00:01","uplink_port":1}"#),
    );
    api.ok(
        "POST",
        "/api/networks",
        Some(r#"{"name":"n","subnet":"10.0.0.0/24"}"#),
    );
    for (id, port) in [("a", 2), ("b", 3)] {
        api.ok(
            "POST",
            "/api/containers",
            Some(&format!(
                r#"{{"id":"{id}","network":"n","host":"h1","port":{port}}}"#
            )),
        );
    }
}

/// A UDP frame a -> b and a's port, from the model `c` serves.
fn udp_a_b(c: &Controller) -> (u32, Vec<u8>) {
    let all = c.api().ok("GET", "/api/containers", None);
    let get = |id: &str| {
        all.as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id)
            .unwrap()
            .clone()
    };
    let (a, b) = (get("a"), get("b"));
    let ip = |v: &Value| v["ip"].as_str().unwrap().parse().unwrap();
    let mac = |v: &Value| v["mac"].as_str().unwrap().parse().unwrap();
    let p = Packet {
        eth_dst: "02:da:00:00:00:01".parse().unwrap(),
        eth_src: mac(&a),
        eth_type: ETH_TYPE_IPV4,
        l3: L3::Ipv4(Ipv4 {
            src: ip(&a),
            dst: ip(&b),
            proto: 17,
            ttl: 64,
            ports: Some((1000, 2000)),
            payload: vec![0; 8],
        }),
    };
    (
        u32::try_from(a["port"].as_u64().unwrap()).unwrap(),
        p.emit(),
    )
}

/// The create revision of the election's lowest key (the leader's).
fn leader_key_revision(etcd: &EtcdCluster) -> u64 {
    let r = etcd.etcdctl(&[
        "get",
        "/daolinet/leader/",
        "--prefix",
        "--sort-by=CREATE",
        "--order=ASCEND",
        "-w",
        "json",
    ]);
    assert!(r.ok, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    v["kvs"][0]["create_revision"].as_u64().unwrap()
}

/// The controller set's tag, as stored in etcd.
fn set_tag(etcd: &EtcdCluster) -> SetTag {
    let r = etcd.etcdctl(&["get", "/daolinet/generation-tag", "--print-value-only"]);
    assert!(r.ok, "{}", r.stderr);
    SetTag::parse(&r.stdout).unwrap_or_else(|| panic!("stored tag {:?}", r.stdout))
}

/// One connection of datapath `dpid` to the controller at `addr`, through
/// the handshake; role requests are not answered automatically.
async fn attach(ns: &Netns, addr: SocketAddr, dpid: u64) -> FakeSwitch {
    let mut s = FakeSwitch::from_std(ns.connect(&addr.to_string()).unwrap());
    s.auto_role = false;
    s.send(1, Message::Hello(Hello::new())).await;
    let f = s.until(|f| f.message == Message::FeaturesRequest).await;
    let xid = f.last().unwrap().xid;
    s.send(
        xid,
        Message::FeaturesReply(SwitchFeatures {
            datapath_id: dpid,
            n_buffers: 0,
            n_tables: 254,
            auxiliary_id: 0,
            capabilities: 0,
            reserved: 0,
        }),
    )
    .await;
    s
}

/// Waits (up to `within`) for the next ROLE_REQUEST on `s` and answers it.
async fn next_role(s: &mut FakeSwitch, within: Duration) -> Option<RoleMsg> {
    let got = timeout(within, async {
        loop {
            if let Some((xid, r)) = s.roles.pop() {
                let reply = s.role_reply(r);
                s.send(xid, Message::RoleReply(reply)).await;
                if r.role != OFPCR_ROLE_NOCHANGE {
                    return r;
                }
                continue;
            }
            s.next().await.expect("connection closed");
        }
    })
    .await;
    got.ok()
}

/// Frames arriving on `s` within `d`.
async fn quiet(s: &mut FakeSwitch, d: Duration) -> Vec<Frame> {
    s.within(d).await
}

fn is_delete(f: &Frame) -> bool {
    matches!(&f.message, Message::FlowMod(m) if m.command == OFPFC_DELETE || m.command == OFPFC_DELETE_STRICT)
}

fn metric(c: &Controller, name: &str) -> u64 {
    let text = c.api().text("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[test]
fn leader_is_master_slaves_write_nothing_failover_keeps_flows() {
    let Some(lab) = lab() else { return };
    let etcd = lab.etcd(3);
    let spec = etcd.store_spec();
    let mut ctls: Vec<Option<Controller>> = (0..3)
        .map(|_| Some(controller(&lab, &etcd, &spec)))
        .collect();
    populate(ctls[0].as_ref().unwrap());
    let ns = etcd.netns();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let long = Duration::from_secs(20);
        let mut conns = Vec::new();
        for c in ctls.iter() {
            conns.push(attach(ns, c.as_ref().unwrap().openflow(), 1).await);
        }
        let mut roles = Vec::new();
        for s in conns.iter_mut() {
            roles.push(next_role(s, long).await.expect("no ROLE_REQUEST"));
        }
        // Exactly one master; the slaves name the master's generation,
        // which is the election key's create revision tagged with the
        // set's tag (kept in etcd).
        let masters: Vec<usize> = (0..3)
            .filter(|&i| roles[i].role == OFPCR_ROLE_MASTER)
            .collect();
        assert_eq!(masters.len(), 1, "{roles:?}");
        let m = masters[0];
        let g = roles[m].generation_id;
        assert_eq!(revision_of(g), leader_key_revision(&etcd));
        assert_eq!(tag_of(g), Some(set_tag(&etcd)));
        for (i, r) in roles.iter().enumerate().filter(|(i, _)| *i != m) {
            assert_eq!(
                (r.role, r.generation_id),
                (OFPCR_ROLE_SLAVE, g),
                "controller {i}"
            );
        }
        assert_eq!(metric(ctls[m].as_ref().unwrap(), "daolinet_leader"), 1);
        // The master reconciles (empty table: base flows added); the
        // slaves send nothing that changes the switch.
        let init = conns[m]
            .until(|f| f.message == Message::BarrierRequest)
            .await;
        let mut table: Vec<FlowStats> = flow_mods(&init).into_iter().map(stats_of).collect();
        assert!(table.len() >= 5, "{init:?}");
        let slaves: Vec<usize> = (0..3).filter(|&i| i != m).collect();
        for &i in &slaves {
            let got = quiet(&mut conns[i], Duration::from_millis(300)).await;
            assert!(flow_mods(&got).is_empty(), "slave {i} wrote: {got:?}");
        }

        // A write through a slave's API reaches the switch through the master.
        ctls[slaves[0]].as_ref().unwrap().api().ok(
            "POST",
            "/api/firewalls",
            Some(r#"{"name":"web","container":"a","rules":["8080:80"]}"#),
        );
        let got = conns[m]
            .until(|f| matches!(&f.message, Message::FlowMod(x) if x.priority == 200))
            .await;
        table.extend(
            flow_mods(&got)
                .into_iter()
                .filter(|f| f.command == OFPFC_ADD)
                .map(stats_of),
        );
        for &i in &slaves {
            let got = quiet(&mut conns[i], Duration::from_millis(300)).await;
            assert!(flow_mods(&got).is_empty(), "slave {i} wrote: {got:?}");
        }
        // The master answers PACKET_INs; what it installs is in the table.
        let (port, frame) = udp_a_b(ctls[m].as_ref().unwrap());
        conns[m]
            .send(
                9,
                Message::PacketIn(PacketIn::new(port, OFPR_NO_MATCH, frame.clone())),
            )
            .await;
        let got = conns[m]
            .until(|f| matches!(f.message, Message::PacketOut(_)))
            .await;
        let pair = flow_mods(&got);
        assert_eq!(pair.len(), 2, "{got:?}");
        table.extend(pair.into_iter().map(stats_of));
        // A slave ignores PACKET_INs.
        conns[slaves[0]]
            .send(
                10,
                Message::PacketIn(PacketIn::new(port, OFPR_NO_MATCH, frame.clone())),
            )
            .await;
        let got = quiet(&mut conns[slaves[0]], Duration::from_millis(300)).await;
        assert!(
            !got.iter()
                .any(|f| matches!(f.message, Message::PacketOut(_) | Message::FlowMod(_))),
            "{got:?}"
        );

        // kill -9 the leader: another is elected (higher generation), reads
        // the switch's flows and keeps every one of them.
        for s in conns.iter_mut() {
            s.table = table.clone();
        }
        let t = Instant::now();
        ctls[m].take().unwrap().kill9();
        let mut next = None;
        while next.is_none() && t.elapsed() < long {
            for &i in &slaves {
                if let Some(r) = next_role(&mut conns[i], Duration::from_millis(50)).await {
                    if r.role == OFPCR_ROLE_MASTER {
                        assert!(r.generation_id > g, "{r:?} after {g}");
                        next = Some((i, r.generation_id));
                    }
                }
            }
        }
        let (m2, g2) = next.expect("no new master after kill -9 of the leader");
        eprintln!(
            "new master {m2} (generation {g2}) {:?} after kill -9",
            t.elapsed()
        );
        let init = conns[m2]
            .until(|f| f.message == Message::BarrierRequest)
            .await;
        assert!(
            !init.iter().any(is_delete),
            "a valid flow was deleted: {init:?}"
        );
        assert!(flow_mods(&init).is_empty(), "{init:?}");
        conns[m2]
            .send(
                11,
                Message::PacketIn(PacketIn::new(port, OFPR_NO_MATCH, frame.clone())),
            )
            .await;
        conns[m2]
            .until(|f| matches!(f.message, Message::PacketOut(_)))
            .await;

        // The new leader stops (SIGTERM): it resigns, the last controller
        // takes over without waiting for a lease to expire.
        let last = slaves.iter().copied().find(|&i| i != m2).unwrap();
        let t = Instant::now();
        let st = ctls[m2].take().unwrap().terminate();
        assert!(st.is_some_and(|s| s.success()), "{st:?}");
        let r = loop {
            let r = next_role(&mut conns[last], long)
                .await
                .expect("no role after resign");
            if r.role == OFPCR_ROLE_MASTER {
                break r;
            }
        };
        assert!(r.generation_id > g2);
        eprintln!("handover after SIGTERM of the leader: {:?}", t.elapsed());
        let init = conns[last]
            .until(|f| f.message == Message::BarrierRequest)
            .await;
        assert!(!init.iter().any(is_delete), "{init:?}");
        assert_eq!(metric(ctls[last].as_ref().unwrap(), "daolinet_leader"), 1);
    });
}

#[test]
fn a_leader_cut_off_from_etcd_steps_down() {
    let Some(lab) = lab() else { return };
    let etcd = lab.etcd(3);
    let ns = etcd.netns().name().to_string();
    // Controller 0 reaches etcd only through relays the test can cut.
    let proxies: Vec<TcpProxy> = etcd
        .endpoints()
        .iter()
        .map(|e| {
            let target: SocketAddr = e.trim_start_matches("http://").parse().unwrap();
            TcpProxy::start(&ns, target)
        })
        .collect();
    let via = format!(
        "etcd:{}",
        proxies
            .iter()
            .map(|p| format!("http://{}", p.addr()))
            .collect::<Vec<_>>()
            .join(",")
    );
    let c0 = controller(&lab, &etcd, &via);
    // First to campaign: the leader.
    let t = Instant::now();
    while metric(&c0, "daolinet_leader") != 1 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "controller 0 never elected"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    populate(&c0);
    let spec = etcd.store_spec();
    let c1 = controller(&lab, &etcd, &spec);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let long = Duration::from_secs(20);
        let mut s0 = attach(etcd.netns(), c0.openflow(), 1).await;
        let mut s1 = attach(etcd.netns(), c1.openflow(), 1).await;
        let r0 = next_role(&mut s0, long).await.unwrap();
        let r1 = next_role(&mut s1, long).await.unwrap();
        assert_eq!(r0.role, OFPCR_ROLE_MASTER);
        assert_eq!(
            (r1.role, r1.generation_id),
            (OFPCR_ROLE_SLAVE, r0.generation_id)
        );

        // Cut: controller 0 steps down on its own (slave, its own
        // generation) before its lease can expire; controller 1 is elected.
        for p in &proxies {
            p.cut();
        }
        let t = Instant::now();
        let down = next_role(&mut s0, long)
            .await
            .expect("the cut-off leader kept acting");
        assert_eq!(
            (down.role, down.generation_id),
            (OFPCR_ROLE_SLAVE, r0.generation_id)
        );
        let up = loop {
            let r = next_role(&mut s1, long).await.expect("no new master");
            if r.role == OFPCR_ROLE_MASTER {
                break r;
            }
        };
        assert!(up.generation_id > r0.generation_id);
        eprintln!(
            "cut-off leader stepped down and another took over in {:?}",
            t.elapsed()
        );
        assert_eq!(metric(&c0, "daolinet_leader"), 0);
        // The partitioned controller writes nothing, even for a PACKET_IN.
        let (port, frame) = udp_a_b(&c1);
        s0.send(
            5,
            Message::PacketIn(PacketIn::new(port, OFPR_NO_MATCH, frame)),
        )
        .await;
        let got = quiet(&mut s0, Duration::from_millis(500)).await;
        assert!(flow_mods(&got).is_empty(), "{got:?}");

        // Back: it follows the new leader as a slave.
        for p in &proxies {
            p.restore();
        }
        let r = next_role(&mut s0, long)
            .await
            .expect("no role after the cut healed");
        assert_eq!(
            (r.role, r.generation_id),
            (OFPCR_ROLE_SLAVE, up.generation_id)
        );
    });
    drop(c1);
    drop(c0);
}
