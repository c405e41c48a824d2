//! The OpenFlow server against fake switches over loopback TCP: handshake,
//! base flows, PACKET_IN -> FLOW_MODs + BARRIER + PACKET_OUT (same host and
//! cross host, where the PACKET_OUT waits for the remote BARRIER_REPLY),
//! reconnection by datapath id with reconciliation (valid flows kept,
//! stale ones deleted one by one), roles (a master's FLOW_MODs held until
//! its ROLE_REPLY, a slave writes nothing), a datapath that stays away,
//! model-change deletions, FLOW_REMOVED, and
//! hostile input (garbage, truncated, out-of-order, oversized, thousands of
//! connections) that never disturbs a well-behaved switch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::fakeswitch::{flow_mods, stats_of, FakeSwitch, WAIT};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use daolinet_controller::generation::{generation, SetTag};
use daolinet_controller::ofserver::Role;
use daolinet_controller::ofserver::{Server, ServerConfig, PROBE_EVERY};
use daolinet_controller::service::Controller;
use daolinet_controller::store::MemStore;
use daolinet_openflow::{
    consts::*, ErrorCode, ErrorMsg, FlowMod, FlowRemoved, FlowStats, Frame, Hello, Instruction,
    Message, MultipartRequestBody, PacketIn, RoleMsg, SwitchFeatures,
};
use daolinet_policy::addr::{Dpid, MacAddr};
use daolinet_policy::model::{ContainerSpec, Host, NetworkSpec, PairAction};
use daolinet_policy::{Config, Ipv4, Packet, ETH_TYPE_IPV4, L3};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::time::timeout;

fn error_of(f: &Frame) -> Option<ErrorCode> {
    match &f.message {
        Message::Error(e) => e.code(),
        _ => None,
    }
}

struct Env {
    ctl: Arc<Controller>,
    server: Arc<Server>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Env {
    /// Hosts h1 (dpid 1) and h2 (dpid 2), uplink port 1; network n with a
    /// (h1 port 2), b (h1 port 3), c (h2 port 2).
    async fn start() -> Env {
        Self::start_with(None).await
    }

    /// With `role`: a server among several controllers, its role from there.
    async fn start_with(role: Option<(watch::Receiver<Role>, SetTag)>) -> Env {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let ctl = Arc::new(Controller::open(Arc::new(MemStore::new()), Config::default()).unwrap());
        let pool = ctl.pool();
        ctl.mutate(|m| {
            let mut ch = Vec::new();
            for (i, name) in [(1u8, "h1"), (2, "h2")] {
                ch.extend(m.add_host(Host {
                    name: name.into(),
                    dpid: Dpid(u64::from(i)),
                    ip: [192, 168, 0, i].into(),
                    mac: MacAddr([2, 0, 0, 0, 0, i]),
                    uplink_port: 1,
                    local_mac: None,
                })?);
            }
            ch.extend(m.add_network(NetworkSpec {
                name: "n".into(),
                subnet: "10.0.0.0/24".parse().unwrap(),
                gateway: None,
                tenant: None,
                nat_out: None,
            })?);
            for (id, host, port) in [("a", "h1", 2), ("b", "h1", 3), ("c", "h2", 2)] {
                ch.extend(m.add_container(
                    ContainerSpec {
                        id: id.into(),
                        name: None,
                        network: "n".into(),
                        ip: None,
                        mac: None,
                        host: host.into(),
                        port,
                    },
                    pool,
                )?);
            }
            Ok(ch)
        })
        .unwrap();
        let listener = daolinet_controller::ofserver::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = ServerConfig {
            host_gone_after: Duration::from_millis(800),
            ..ServerConfig::default()
        };
        let server = match role {
            None => Server::new(ctl.clone(), cfg),
            Some((r, tag)) => Server::with_role(ctl.clone(), cfg, r, tag),
        };
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(server.clone().run(listener, rx));
        Env {
            ctl,
            server,
            addr,
            stop,
            task,
        }
    }

    /// An IPv4/UDP frame from container `from` to container `to`.
    fn udp(&self, from: &str, to: &str) -> (u32, Vec<u8>) {
        let s = self.ctl.snapshot().unwrap();
        let (x, y) = (&s.model.containers[from], &s.model.containers[to]);
        let p = Packet {
            eth_dst: self.ctl.cfg.gateway_mac,
            eth_src: x.mac,
            eth_type: ETH_TYPE_IPV4,
            l3: L3::Ipv4(Ipv4 {
                src: x.ip,
                dst: y.ip,
                proto: 17,
                ttl: 64,
                ports: Some((1000, 2000)),
                payload: vec![0; 8],
            }),
        };
        (x.port, p.emit())
    }

    async fn wait_connected(&self, n: usize) {
        self.wait_connected_within(n, WAIT).await
    }

    async fn wait_connected_within(&self, n: usize, wait: Duration) {
        timeout(wait, async {
            while self.server.connected().len() != n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("connected: {:?}", self.server.connected()));
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        timeout(WAIT, self.task).await.unwrap().unwrap();
    }
}

fn packet_in(in_port: u32, data: Vec<u8>) -> Message {
    Message::PacketIn(PacketIn::new(in_port, OFPR_NO_MATCH, data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_packet_in_reconnect_and_model_changes() {
    let env = Env::start().await;
    let (mut s1, init) = FakeSwitch::connect(env.addr, 1).await;
    // SET_CONFIG (whole packets), PORT_DESC, the switch's generation id
    // asked (ROLE_REQUEST NOCHANGE: the only controller stays EQUAL), the
    // flow table read, then (the table being empty) nothing to delete, the
    // base flows added.
    assert!(init.iter().any(|f| matches!(&f.message,
        Message::SetConfig(c) if c.miss_send_len == OFPCML_NO_BUFFER)));
    let roles: Vec<u32> = init
        .iter()
        .filter_map(|f| match &f.message {
            Message::RoleRequest(r) => Some(r.role),
            _ => None,
        })
        .collect();
    assert_eq!(roles, [OFPCR_ROLE_NOCHANGE], "{init:?}");
    let fms = flow_mods(&init);
    assert!(fms.iter().all(|m| m.command == OFPFC_ADD), "{fms:#?}");
    let miss: FlowMod = format!(
        "cookie={:#x},priority=0 actions=CONTROLLER:65535",
        daolinet_policy::cookie::make(daolinet_policy::cookie::Kind::Base, 0, 0)
    )
    .parse()
    .unwrap();
    assert!(fms.contains(&&miss), "{fms:#?}");
    assert!(fms
        .iter()
        .any(|m| m.to_string().contains("in_port=1") && m.to_string().contains("actions=LOCAL")));
    let (mut s2, _) = FakeSwitch::connect(env.addr, 2).await;
    env.wait_connected(2).await;
    assert!(env
        .ctl
        .metrics
        .render()
        .contains("daolinet_switches_connected 2"));

    // Same host: two FLOW_MODs, then the PACKET_OUT of the packet, no
    // BARRIER (its output is a container port: it never meets the flows).
    let (port, data) = env.udp("a", "b");
    s1.send(77, packet_in(port, data.clone())).await;
    let got = s1
        .until(|f| matches!(f.message, Message::PacketOut(_)))
        .await;
    let kinds: Vec<u8> = got.iter().map(|f| f.message.msg_type()).collect();
    assert_eq!(kinds, vec![OFPT_FLOW_MOD, OFPT_FLOW_MOD, OFPT_PACKET_OUT]);
    let fm = flow_mods(&got);
    assert!(fm
        .iter()
        .all(|m| m.idle_timeout == 10 && m.flags == OFPFF_SEND_FLOW_REM));
    let Message::PacketOut(po) = &got[2].message else {
        unreachable!()
    };
    assert_eq!((po.in_port, &po.data), (port, &data));

    // Cross host: h2 gets its FLOW_MODs and a BARRIER; h1's PACKET_OUT
    // waits for h2's BARRIER_REPLY.
    s2.auto_barrier = false;
    let (port, data) = env.udp("a", "c");
    s1.send(78, packet_in(port, data.clone())).await;
    let remote = s2.until(|f| f.message == Message::BarrierRequest).await;
    assert!(flow_mods(&remote).len() >= 2, "{remote:?}");
    let local = s1.within(Duration::from_millis(300)).await;
    assert!(!flow_mods(&local).is_empty());
    assert!(
        !local
            .iter()
            .any(|f| matches!(f.message, Message::PacketOut(_))),
        "{local:?}"
    );
    let xid = s2.barriers.pop().unwrap();
    s2.send(xid, Message::BarrierReply).await;
    s2.auto_barrier = true;
    let got = s1
        .until(|f| matches!(f.message, Message::PacketOut(_)))
        .await;
    let Some(Message::PacketOut(po)) = got.last().map(|f| &f.message) else {
        unreachable!()
    };
    assert_eq!(po.data, data);

    // A FLOW_REMOVED takes the flow out of the registry.
    let before = env.ctl.flows(Some(Dpid(1))).unwrap();
    let pair = before
        .iter()
        .find(|f| f.idle_timeout == 10)
        .unwrap()
        .clone();
    let fm = daolinet_controller::ofserver::translate::flow_mod(&pair).unwrap();
    let mut fr = FlowRemoved::new(
        fm.match_.clone(),
        fm.priority,
        fm.cookie,
        OFPRR_IDLE_TIMEOUT,
    );
    fr.idle_timeout = 10;
    s1.send(79, Message::FlowRemoved(fr)).await;
    timeout(WAIT, async {
        while env.ctl.flows(Some(Dpid(1))).unwrap().len() != before.len() - 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();

    // Datapath 1 reconnects holding what it was given plus a flow that is
    // not ours and a pair flow whose action went wrong: the new connection
    // replaces the old one, keeps the valid flows (nothing re-added, no
    // wildcard delete) and deletes exactly the two stale ones.
    let valid: Vec<FlowStats> = env
        .ctl
        .flows(Some(Dpid(1)))
        .unwrap()
        .iter()
        .map(|f| stats_of(&daolinet_controller::ofserver::translate::flow_mod(f).unwrap()))
        .collect();
    let foreign = stats_of(&"cookie=0x77,priority=5,ip actions=drop".parse().unwrap());
    let mut wrong = valid.iter().find(|f| f.priority == 100).unwrap().clone();
    wrong.instructions = vec![Instruction::ApplyActions(vec![
        daolinet_openflow::Action::output(42),
    ])];
    let mut s1b = FakeSwitch::raw(env.addr).await;
    s1b.table = valid
        .iter()
        .cloned()
        .chain([foreign.clone(), wrong.clone()])
        .collect();
    // The valid entry that `wrong` replaces is gone from the switch.
    s1b.table
        .retain(|f| !(f.priority == 100 && f.match_ == wrong.match_ && f != &wrong));
    let init = s1b.handshake(1).await;
    let fms = flow_mods(&init);
    assert_eq!(fms.len(), 2, "{fms:#?}");
    for (fm, stale) in fms.iter().zip([&foreign, &wrong]) {
        assert_eq!(fm.command, OFPFC_DELETE_STRICT);
        assert_eq!(
            (&fm.match_, fm.priority, fm.cookie, fm.cookie_mask),
            (&stale.match_, stale.priority, stale.cookie, u64::MAX)
        );
    }
    // (The pair's next packet is punted and decided again.)
    assert!(s1.closed().await, "old connection of dpid 1 still open");
    env.wait_connected(2).await;
    assert_eq!(env.server.connected(), vec![Dpid(1), Dpid(2)]);

    // A policy change deletes the pair's flows by cookie on the switches.
    env.ctl
        .mutate(|m| m.set_pair("a", "b", PairAction::Disconnect))
        .unwrap();
    let got = s1b
        .until(|f| matches!(&f.message, Message::FlowMod(m) if m.command == OFPFC_DELETE))
        .await;
    let Some(Message::FlowMod(del)) = got.last().map(|f| &f.message) else {
        unreachable!()
    };
    assert_eq!(del.cookie_mask, daolinet_policy::cookie::PAIR_MASK);
    // Now denied: a drop flow, no PACKET_OUT.
    let (port, data) = env.udp("a", "b");
    s1b.send(80, packet_in(port, data)).await;
    // (After the deletions of the change: the pair's flows, and the drops
    // of either container keyed by their source alone.)
    let got = s1b
        .until(|f| matches!(&f.message, Message::FlowMod(m) if m.command == OFPFC_ADD))
        .await;
    let Some(Message::FlowMod(deny)) = got.last().map(|f| &f.message) else {
        unreachable!()
    };
    assert!(
        deny.instructions.is_empty() && deny.hard_timeout > 0,
        "{deny:?}"
    );

    // A new host registered while its switch is connected gets its flows.
    let (mut s3, init) = FakeSwitch::connect(env.addr, 3).await;
    assert!(flow_mods(&init).is_empty());
    env.ctl
        .mutate(|m| {
            m.add_host(Host {
                name: "h3".into(),
                dpid: Dpid(3),
                ip: [192, 168, 0, 3].into(),
                mac: MacAddr([2, 0, 0, 0, 0, 3]),
                uplink_port: 1,
                local_mac: None,
            })
        })
        .unwrap();
    let got = s3.until(|f| f.message == Message::BarrierRequest).await;
    assert!(flow_mods(&got).len() >= 5, "{got:?}");

    // Datapath 2 leaves: counted.
    drop(s2);
    env.wait_connected(2).await;
    let m = env.ctl.metrics.render();
    assert!(m.contains("daolinet_switches_connected 2"), "{m}");
    assert!(m.contains("daolinet_packet_in_total 3"), "{m}");
    // Each was answered, timed from the kernel's receive timestamp.
    assert!(
        m.contains("daolinet_packet_in_answer_seconds_count 3"),
        "{m}"
    );
    // h2 stayed away (longer than host_gone_after): its container's flows
    // are deleted on the other datapaths (c's cookie id as `lo` and as
    // `hi`).
    let got = s3.within(Duration::from_millis(2000)).await;
    let dels = flow_mods(&got);
    assert_eq!(dels.len(), 2, "{got:?}");
    assert!(dels.iter().all(|m| m.command == OFPFC_DELETE));
    // Stopping the controller leaves the switches' flows alone: h1's
    // containers are not deleted from h3 (as they would be if h1 left).
    env.stop().await;
    let mut after = Vec::new();
    while let Some(f) = timeout(WAIT, s3.next()).await.unwrap() {
        after.push(f);
    }
    assert!(flow_mods(&after).is_empty(), "{after:?}");
    drop(s1b);
}

/// HELLO and FEATURES_REPLY as `dpid`, with ROLE_REQUESTs left to the
/// test; the frames up to the first ROLE_REQUEST.
async fn hello_as(s: &mut FakeSwitch, dpid: u64) -> Vec<Frame> {
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
    s.until(|f| matches!(f.message, Message::RoleRequest(_)))
        .await
}

/// What changes a switch or reads its flows for that.
fn acts(fs: &[Frame]) -> Vec<&Frame> {
    fs.iter()
        .filter(|f| match &f.message {
            Message::FlowMod(_) | Message::PacketOut(_) | Message::MeterMod(_) => true,
            Message::MultipartRequest(m) => matches!(m.body, MultipartRequestBody::Flow(_)),
            Message::Experimenter(_) => true,
            _ => false,
        })
        .collect()
}

/// A controller without election on a switch where controllers on
/// another store elected a master (the switch has a generation id): it
/// asks first (ROLE_REQUEST NOCHANGE), then neither reads nor changes the
/// switch nor answers its PACKET_INs, and says so in its metrics. On a
/// switch without a generation id it acts, and stops once one appears
/// there (asked again every PROBE_EVERY).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alone_it_leaves_a_switch_mastered_from_another_store() {
    let env = Env::start().await;
    let (port, data) = env.udp("a", "b");
    let mut s = FakeSwitch::raw(env.addr).await;
    let before = hello_as(&mut s, 1).await;
    assert!(
        acts(&before).is_empty(),
        "before the role reply: {before:?}"
    );
    let (xid, r) = s.roles.pop().unwrap();
    assert_eq!(r.role, OFPCR_ROLE_NOCHANGE);
    s.send(
        xid,
        Message::RoleReply(RoleMsg {
            role: OFPCR_ROLE_EQUAL,
            generation_id: 9,
        }),
    )
    .await;
    s.send(70, packet_in(port, data.clone())).await;
    let quiet = s.within(Duration::from_millis(500)).await;
    assert!(acts(&quiet).is_empty(), "{quiet:?}");
    let m = env.ctl.metrics.render();
    assert!(
        m.contains("daolinet_switches_mastered_elsewhere_total 1"),
        "{m}"
    );

    // No generation id: it acts (flows read, base flows, PACKET_INs
    // answered) until the switch has one.
    let mut s2 = FakeSwitch::raw(env.addr).await;
    hello_as(&mut s2, 2).await;
    let (xid, r) = s2.roles.pop().unwrap();
    assert_eq!(r.role, OFPCR_ROLE_NOCHANGE);
    // (Open vSwitch says "none" with all ones.)
    s2.send(
        xid,
        Message::RoleReply(RoleMsg {
            role: OFPCR_ROLE_EQUAL,
            generation_id: u64::MAX,
        }),
    )
    .await;
    let init = s2.until(|f| f.message == Message::BarrierRequest).await;
    assert!(!flow_mods(&init).is_empty(), "{init:?}");
    let (port2, data2) = env.udp("c", "a");
    s2.send(71, packet_in(port2, data2.clone())).await;
    s2.until(|f| matches!(f.message, Message::FlowMod(_))).await;
    let asked = timeout(
        PROBE_EVERY + Duration::from_secs(10),
        s2.until_long(
            |f| matches!(&f.message, Message::RoleRequest(r) if r.role == OFPCR_ROLE_NOCHANGE),
        ),
    )
    .await
    .expect("asked again for the generation id");
    assert!(!asked.is_empty());
    let (xid, _) = s2.roles.pop().unwrap();
    s2.send(
        xid,
        Message::RoleReply(RoleMsg {
            role: OFPCR_ROLE_EQUAL,
            generation_id: 12,
        }),
    )
    .await;
    // Once the reply is read, nothing more (a PACKET_IN sent after it).
    let _ = s2.within(Duration::from_millis(300)).await;
    s2.send(72, packet_in(port2, data2)).await;
    let quiet = s2.within(Duration::from_millis(500)).await;
    assert!(acts(&quiet).is_empty(), "{quiet:?}");
    let m = env.ctl.metrics.render();
    assert!(
        m.contains("daolinet_switches_mastered_elsewhere_total 2"),
        "{m}"
    );
    drop((s, s2));
    env.stop().await;
}

/// The tag of the controller set in these tests, and another set's.
fn ours() -> SetTag {
    SetTag::new(0x0a_aaaa).unwrap()
}
fn theirs() -> SetTag {
    SetTag::new(0x0b_bbbb).unwrap()
}

/// Answers the ROLE_REQUEST NOCHANGE the controller sends first (before
/// any other role request) with the switch's generation id `g`.
async fn answer_probe(s: &mut FakeSwitch, g: u64) {
    if s.roles.is_empty() {
        s.until(|f| matches!(f.message, Message::RoleRequest(_)))
            .await;
    }
    let (xid, r) = s.roles.remove(0);
    assert_eq!(r.role, OFPCR_ROLE_NOCHANGE, "{r:?}");
    s.send(
        xid,
        Message::RoleReply(RoleMsg {
            role: OFPCR_ROLE_EQUAL,
            generation_id: g,
        }),
    )
    .await;
}

/// Among several controllers: a slave first reads the switch's generation
/// id (ROLE_REQUEST NOCHANGE), then asks for the slave role and writes
/// nothing (its PACKET_INs are left to the master); once elected, it reads
/// the generation id again (its own set's previous one: it goes on), asks
/// for master and holds every FLOW_MOD until the switch's ROLE_REPLY;
/// when the switch refuses (a newer generation is master there), it drops
/// what it held and acts no more on that switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_slave_writes_nothing_master_waits_for_its_role_reply() {
    let (g5, g7, g8) = (
        generation(ours(), 5),
        generation(ours(), 7),
        generation(ours(), 8),
    );
    let (role_tx, role_rx) = watch::channel(Role::Slave {
        generation: Some(g5),
    });
    let env = Env::start_with(Some((role_rx, ours()))).await;
    let mut s = FakeSwitch::raw(env.addr).await;
    hello_as(&mut s, 1).await;
    answer_probe(&mut s, 0).await;
    s.until(|f| matches!(f.message, Message::RoleRequest(_)))
        .await;
    let (_, r) = s.roles.pop().unwrap();
    assert_eq!((r.role, r.generation_id), (OFPCR_ROLE_SLAVE, g5));
    // A PACKET_IN reaching a slave (still EQUAL on a switch that ignored
    // its request) is not answered.
    let (port, data) = env.udp("a", "b");
    s.send(70, packet_in(port, data.clone())).await;
    let quiet = s.within(Duration::from_millis(400)).await;
    assert!(
        !quiet
            .iter()
            .any(|f| matches!(f.message, Message::FlowMod(_) | Message::PacketOut(_))),
        "{quiet:?}"
    );

    // Elected: ROLE_REQUEST master with the new generation, the flow table
    // read; reconciliation's FLOW_MODs wait for the ROLE_REPLY.
    role_tx.send(Role::Master { generation: g7 }).unwrap();
    answer_probe(&mut s, g5).await;
    let got = s
        .until(|f| matches!(&f.message, Message::MultipartRequest(m) if matches!(m.body, MultipartRequestBody::Flow(_))))
        .await;
    let (rxid, r) = s.roles.pop().unwrap();
    assert_eq!((r.role, r.generation_id), (OFPCR_ROLE_MASTER, g7));
    assert!(flow_mods(&got).is_empty(), "{got:?}");
    let held = s.within(Duration::from_millis(400)).await;
    assert!(
        flow_mods(&held).is_empty(),
        "sent before its ROLE_REPLY: {held:?}"
    );
    s.send(rxid, Message::RoleReply(r)).await;
    let init = s.until(|f| f.message == Message::BarrierRequest).await;
    assert!(flow_mods(&init).len() >= 5, "{init:?}");
    // As master it answers PACKET_INs.
    s.send(71, packet_in(port, data.clone())).await;
    s.until(|f| matches!(f.message, Message::PacketOut(_)))
        .await;

    // A newer master took the switch: the next role request is refused as
    // stale; what it held is dropped and it answers nothing any more.
    role_tx.send(Role::Master { generation: g8 }).unwrap();
    answer_probe(&mut s, g7).await;
    s.until(|f| matches!(f.message, Message::RoleRequest(_)))
        .await;
    let (rxid, r) = s.roles.pop().unwrap();
    assert_eq!((r.role, r.generation_id), (OFPCR_ROLE_MASTER, g8));
    s.send(
        rxid,
        Message::Error(ErrorMsg::new(
            ErrorCode::new(OFPET_ROLE_REQUEST_FAILED, OFPRRFC_STALE),
            &[],
        )),
    )
    .await;
    let after = s.within(Duration::from_millis(400)).await;
    assert!(flow_mods(&after).is_empty(), "{after:?}");
    s.send(72, packet_in(port, data)).await;
    let quiet = s.within(Duration::from_millis(400)).await;
    assert!(
        !quiet
            .iter()
            .any(|f| matches!(f.message, Message::FlowMod(_) | Message::PacketOut(_))),
        "{quiet:?}"
    );
    let m = env.ctl.metrics.render();
    assert!(
        m.contains("daolinet_switches_mastered_elsewhere_total 0"),
        "{m}"
    );
    env.stop().await;
}

/// Two controller sets on different stores (two etcd clusters or two
/// prefixes) at the same switches: a switch whose generation id another
/// set elected (another tag, even at the same revision) gets no role
/// request from this set's master nor its slave (a slave's request would
/// set the switch's generation id too), nothing read or written, its
/// PACKET_INs unanswered, one count per connection and role; a switch
/// without a generation id is taken, and so is one with an untagged id (a
/// set from before tags).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_elected_controller_leaves_a_switch_another_set_mastered() {
    let (role_tx, role_rx) = watch::channel(Role::Slave {
        generation: Some(generation(ours(), 5)),
    });
    let env = Env::start_with(Some((role_rx, ours()))).await;
    let (port, data) = env.udp("a", "b");
    let foreign = generation(theirs(), 5);
    let mut s = FakeSwitch::raw(env.addr).await;
    let before = hello_as(&mut s, 1).await;
    assert!(acts(&before).is_empty(), "{before:?}");
    // As a slave: no slave request.
    answer_probe(&mut s, foreign).await;
    let quiet = s.within(Duration::from_millis(400)).await;
    assert!(
        !quiet
            .iter()
            .any(|f| matches!(f.message, Message::RoleRequest(_))),
        "{quiet:?}"
    );
    let m = env.ctl.metrics.render();
    assert!(
        m.contains("daolinet_switches_mastered_elsewhere_total 1"),
        "{m}"
    );
    // Elected: asks again, still another set's: no master request, nothing
    // read or written, PACKET_INs unanswered.
    role_tx
        .send(Role::Master {
            generation: generation(ours(), 9),
        })
        .unwrap();
    answer_probe(&mut s, foreign).await;
    s.send(70, packet_in(port, data.clone())).await;
    let quiet = s.within(Duration::from_millis(500)).await;
    assert!(acts(&quiet).is_empty(), "{quiet:?}");
    assert!(
        !quiet
            .iter()
            .any(|f| matches!(f.message, Message::RoleRequest(_))),
        "{quiet:?}"
    );
    let m = env.ctl.metrics.render();
    assert!(
        m.contains("daolinet_switches_mastered_elsewhere_total 2"),
        "{m}"
    );
    // A switch with no generation id (restarted): taken.
    let mut s2 = FakeSwitch::raw(env.addr).await;
    hello_as(&mut s2, 2).await;
    answer_probe(&mut s2, u64::MAX).await;
    s2.until(|f| matches!(f.message, Message::RoleRequest(_)))
        .await;
    let (rxid, r) = s2.roles.pop().unwrap();
    assert_eq!(
        (r.role, r.generation_id),
        (OFPCR_ROLE_MASTER, generation(ours(), 9))
    );
    s2.send(rxid, Message::RoleReply(r)).await;
    let init = s2.until(|f| f.message == Message::BarrierRequest).await;
    assert!(flow_mods(&init).len() >= 5, "{init:?}");
    // An untagged generation id (a set from before tags: a rolling
    // upgrade): taken too.
    let mut s3 = FakeSwitch::raw(env.addr).await;
    hello_as(&mut s3, 3).await;
    answer_probe(&mut s3, 5).await;
    s3.until(|f| matches!(f.message, Message::RoleRequest(_)))
        .await;
    let (_, r) = s3.roles.pop().unwrap();
    assert_eq!(
        (r.role, r.generation_id),
        (OFPCR_ROLE_MASTER, generation(ours(), 9))
    );
    let m = env.ctl.metrics.render();
    assert!(
        m.contains("daolinet_switches_mastered_elsewhere_total 2"),
        "{m}"
    );
    drop((s, s2, s3));
    env.stop().await;
}

/// A datapath that comes back within `host_gone_after` (an agent restart)
/// costs the others nothing: no deletion towards its containers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datapath_back_in_time_costs_the_others_nothing() {
    let env = Env::start().await;
    let (mut s1, _) = FakeSwitch::connect(env.addr, 1).await;
    let (s2, _) = FakeSwitch::connect(env.addr, 2).await;
    env.wait_connected(2).await;
    drop(s2);
    env.wait_connected(1).await;
    let (_s2, _) = FakeSwitch::connect(env.addr, 2).await;
    let got = s1.within(Duration::from_millis(1500)).await;
    assert!(flow_mods(&got).is_empty(), "{got:?}");
    env.stop().await;
}

/// A mutation is reported applied only once every switch concerned has
/// confirmed its flow changes with a BARRIER_REPLY (the API answers then,
/// so the next packet meets the new policy); a switch that goes away
/// releases it, and a mutation that concerns no connected switch is
/// applied at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_is_applied_when_the_switches_confirm_it() {
    let env = Env::start().await;
    let (mut s1, _) = FakeSwitch::connect(env.addr, 1).await;
    env.wait_connected(1).await;
    s1.auto_barrier = false;
    let (_, applied) = env
        .ctl
        .mutate_applied(|m| m.set_pair("a", "b", PairAction::Disconnect))
        .unwrap();
    let got = s1.until(|f| f.message == Message::BarrierRequest).await;
    assert!(
        flow_mods(&got).iter().any(|m| m.command == OFPFC_DELETE),
        "{got:?}"
    );
    // Not before the switch answers.
    assert!(!applied.wait(Duration::from_millis(200)).await);
    let xid = s1.barriers.pop().unwrap();
    s1.send(xid, Message::BarrierReply).await;
    assert!(
        applied.wait(WAIT).await,
        "the BARRIER_REPLY did not complete it"
    );

    // A switch that leaves without answering releases the wait.
    let (_, applied) = env
        .ctl
        .mutate_applied(|m| m.set_pair("a", "b", PairAction::Connect))
        .unwrap();
    s1.until(|f| f.message == Message::BarrierRequest).await;
    assert!(!applied.is_done());
    drop(s1);
    assert!(
        applied.wait(WAIT).await,
        "a gone switch kept the change pending"
    );
    // Nothing connected: applied at once.
    env.wait_connected(0).await;
    let (_, applied) = env
        .ctl
        .mutate_applied(|m| m.set_pair("a", "c", PairAction::Disconnect))
        .unwrap();
    assert!(applied.wait(WAIT).await);
    env.stop().await;
}

/// A PACKET_IN whose frame the switch truncated (data shorter than
/// total_len: a GSO super-frame beyond the agent's punt capacity) gets the
/// pair's flows but no PACKET_OUT: the truncated frame would go out corrupt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_packet_in_gets_flows_but_no_packet_out() {
    let env = Env::start().await;
    let (mut s1, _) = FakeSwitch::connect(env.addr, 1).await;
    let (port, data) = env.udp("a", "b");
    let mut pi = PacketIn::new(port, OFPR_NO_MATCH, data);
    pi.total_len = 9000;
    s1.send(90, Message::PacketIn(pi)).await;
    let got = s1.within(Duration::from_millis(500)).await;
    assert_eq!(flow_mods(&got).len(), 2, "{got:?}");
    assert!(
        !got.iter()
            .any(|f| matches!(f.message, Message::PacketOut(_))),
        "{got:?}"
    );
    // The same PACKET_IN whole: the PACKET_OUT goes.
    let (port, data) = env.udp("b", "a");
    s1.send(91, packet_in(port, data)).await;
    s1.until(|f| matches!(f.message, Message::PacketOut(_)))
        .await;
    env.stop().await;
}

/// A switch may punt packets as soon as the HELLOs are exchanged, before it
/// has answered FEATURES_REQUEST (the agent does when it reconnects with
/// the flows of its last controller): such a PACKET_IN is answered once the
/// datapath is known, after its initialisation, with the pair's flows and
/// the PACKET_OUT, and no error. (It used to get OFPBRC_BAD_TYPE and the
/// packet was lost: the first packets after every reconnection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_in_during_the_handshake_is_answered() {
    let env = Env::start().await;
    let mut s = FakeSwitch::raw(env.addr).await;
    s.send(1, Message::Hello(Hello::new())).await;
    let f = s.until(|f| f.message == Message::FeaturesRequest).await;
    let (port, data) = env.udp("a", "b");
    s.send(77, packet_in(port, data.clone())).await;
    let features = SwitchFeatures {
        datapath_id: 1,
        n_buffers: 0,
        n_tables: 254,
        auxiliary_id: 0,
        capabilities: 0,
        reserved: 0,
    };
    s.send(f.last().unwrap().xid, Message::FeaturesReply(features))
        .await;
    let got = s
        .until(|f| matches!(f.message, Message::PacketOut(_)))
        .await;
    assert!(got.iter().all(|f| error_of(f).is_none()), "{got:#?}");
    let pair: Vec<_> = flow_mods(&got)
        .into_iter()
        .filter(|m| m.command == OFPFC_ADD && m.idle_timeout > 0)
        .collect();
    assert_eq!(pair.len(), 2, "{got:#?}");
    let Some(Message::PacketOut(po)) = got.last().map(|f| &f.message) else {
        unreachable!()
    };
    assert_eq!((po.in_port, &po.data), (port, &data));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_never_disturbs_a_good_switch() {
    let env = Env::start().await;
    let (mut good, _) = FakeSwitch::connect(env.addr, 1).await;
    let check_good = |mut good: FakeSwitch, xid: u32| {
        let env = &env;
        async move {
            let (port, data) = env.udp("a", "b");
            good.send(xid, packet_in(port, data)).await;
            good.until(|f| matches!(f.message, Message::PacketOut(_)))
                .await;
            good
        }
    };

    // Garbage instead of HELLO: HELLO_FAILED from its header (a first
    // message that is no HELLO), then a clean close.
    let mut g = FakeSwitch::raw(env.addr).await;
    g.sock
        .write_all(&[0x04, 0x0a, 0x00, 0x10, 1, 2, 3, 4, 9, 9, 9, 9, 9, 9, 9, 9])
        .await
        .unwrap();
    let got = g.within(Duration::from_millis(500)).await;
    assert!(
        got.iter()
            .any(|f| error_of(f) == Some(ErrorCode::HELLO_INCOMPATIBLE)),
        "{got:?}"
    );
    assert!(g.closed().await);
    good = check_good(good, 100).await;

    // Truncated: a header announcing 100 bytes, 20 sent, then EOF.
    let mut t = FakeSwitch::raw(env.addr).await;
    t.send(1, Message::Hello(Hello::new())).await;
    t.sock
        .write_all(&[
            0x04, 0x0a, 0x00, 0x64, 0, 0, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ])
        .await
        .unwrap();
    t.sock.shutdown().await.unwrap();
    assert!(t.closed().await);

    // Out of order: FLOW_REMOVED before FEATURES_REPLY -> BAD_TYPE, stays
    // open; a header length below 8 -> error and close.
    let mut o = FakeSwitch::raw(env.addr).await;
    o.send(1, Message::Hello(Hello::new())).await;
    o.until(|f| f.message == Message::FeaturesRequest).await;
    let fr = FlowRemoved::new(Default::default(), 1, 0, OFPRR_DELETE);
    o.send(42, Message::FlowRemoved(fr)).await;
    let got = o.until(|f| error_of(f).is_some()).await;
    assert_eq!(
        got.last().map(|f| (f.xid, error_of(f))),
        Some((42, Some(ErrorCode::BAD_TYPE)))
    );
    o.sock
        .write_all(&[0x04, 0x02, 0x00, 0x04, 0, 0, 0, 43])
        .await
        .unwrap();
    let got = o.until(|f| error_of(f).is_some()).await;
    assert_eq!(error_of(got.last().unwrap()), Some(ErrorCode::BAD_LEN));
    assert!(o.closed().await);
    good = check_good(good, 101).await;

    // Oversized and malformed after the handshake: a 65535-byte message of
    // an unknown type, a PACKET_IN with a broken match; each answered,
    // skipped, and the connection still works.
    let (mut b, _) = FakeSwitch::connect(env.addr, 9).await;
    let mut big = vec![0x04u8, 0xee, 0xff, 0xff, 0, 0, 0, 50];
    big.resize(65535, 0xab);
    b.sock.write_all(&big).await.unwrap();
    let got = b.until(|f| error_of(f).is_some()).await;
    assert_eq!(
        got.last().map(|f| (f.xid, error_of(f))),
        Some((50, Some(ErrorCode::BAD_TYPE)))
    );
    let mut bad_pin = BytesMut::new();
    packet_in(2, vec![1; 20]).encode(51, &mut bad_pin).unwrap();
    // ofp_match length (after the 8-byte header and 16 bytes of fields):
    // far beyond the message.
    bad_pin[8 + 16 + 2] = 0x0f;
    b.sock.write_all(&bad_pin).await.unwrap();
    let got = b.until(|f| error_of(f).is_some()).await;
    assert_eq!(got.last().unwrap().xid, 51);
    b.send(52, Message::EchoRequest(vec![5])).await;
    let got = b
        .until(|f| matches!(f.message, Message::EchoReply(_)))
        .await;
    assert_eq!(got.last().unwrap().xid, 52);

    // Random byte streams on many connections at once.
    let mut tasks = Vec::new();
    for seed in 0..64u64 {
        let addr = env.addr;
        tasks.push(tokio::spawn(async move {
            let mut s = FakeSwitch::raw(addr).await;
            if seed % 2 == 0 {
                s.send(1, Message::Hello(Hello::new())).await;
            }
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut junk = Vec::new();
            for _ in 0..(500 + seed * 37) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                junk.push(x as u8);
            }
            if seed % 3 == 0 {
                junk[0] = 4; // looks like a 1.3 header
            }
            let _ = s.sock.write_all(&junk).await;
            let _ = s.sock.shutdown().await;
            let _ = s.within(Duration::from_millis(300)).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    good = check_good(good, 102).await;
    assert!(env.server.connected().contains(&Dpid(1)));
    drop(good);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_switches_at_once() {
    // Two sockets per switch in this process: lift the open files limit.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let n: u64 = 2000.min(hard.saturating_sub(256) / 2);
    if n < 2000 {
        eprintln!("open files hard limit {hard}: testing {n} switches instead of 2000");
    }
    // The burst is served in 4-5 s with the machine at load 15, and in
    // 9 s on one core shared with a busy loop: the switches served last
    // missed the 5 s a single handshake step gets (a CI run failed so).
    // Their deadline is the whole burst's; how fast is `bench scale`'s.
    const BURST: Duration = Duration::from_secs(60);
    let env = Env::start().await;
    let mut tasks = Vec::new();
    for i in 0..n {
        let addr = env.addr;
        tasks.push(tokio::spawn(async move {
            let (s, _) = FakeSwitch::connect_within(addr, 1000 + i, BURST).await;
            s
        }));
    }
    let mut switches = Vec::new();
    for t in tasks {
        switches.push(t.await.unwrap());
    }
    env.wait_connected_within(n as usize, BURST).await;
    assert!(env
        .ctl
        .metrics
        .render()
        .contains(&format!("daolinet_switches_connected {n}")));
    // Every one is served: echo on all of them.
    for (i, s) in switches.iter_mut().enumerate() {
        s.send(i as u32, Message::EchoRequest(vec![])).await;
    }
    for (i, s) in switches.iter_mut().enumerate() {
        let got = s
            .until(|f| matches!(f.message, Message::EchoReply(_)))
            .await;
        assert_eq!(got.last().unwrap().xid, i as u32);
    }
    drop(switches);
    env.wait_connected_within(0, BURST).await;
    env.stop().await;
}

#[test]
fn binary_serves_openflow_on_listen() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::start(dir.path());
    common::populate(p.api());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (_s, init) = FakeSwitch::connect(p.openflow(), 1).await;
        // h1 holds the firewall of "web": base + 2 firewall punt flows, all
        // added to the empty table, nothing deleted.
        let fms = flow_mods(&init);
        assert!(fms.iter().all(|m| m.command == OFPFC_ADD), "{fms:#?}");
        assert_eq!(
            fms.iter().filter(|m| m.priority == 200).count(),
            2,
            "{fms:#?}"
        );
        let (_, m) = p.api().call("GET", "/metrics", None);
        let text = m.as_str().unwrap_or_default().to_string();
        assert!(text.contains("daolinet_switches_connected 1"), "{text}");
    });
}
