//! The highly available lab of `tests/failover.rs` and `cargo xtask bench
//! failover`: a real 3-member etcd cluster (own namespace, own data
//! directories), three controllers on it (the default 2 s leases) and two agent hosts,
//! each agent connected to every controller, joined by an underlay bridge;
//! optionally a third host with Open vSwitch, joined with `daolictl host
//! join-ovs` and then given every controller (`ovs-vsctl set-controller
//! BR tcp:.. tcp:.. tcp:..`).
//!
//! Containers: `a` and `c` on host 1, `b` and `d` on host 2, and `probes`
//! more on host 1 (`p0`, `p1`, ...) that send nothing until a measurement
//! asks them to; with Open vSwitch, `e` on host 3 and as many silent
//! probes (at least one) there, so each one's first packet is a new connection the
//! controllers have to decide. Every probe and `c`/`d` know their peers'
//! MACs, so their first packet is the connection's (no ARP retry timer in
//! a measurement).
//!
//! Also the traffic probes the HA measurements share: [`Pinger`] (`ping -i
//! 0.01` on an established flow), [`Stream`] (an iperf3 stream reporting
//! every 0.5 s) and [`first_answer`] (when a new connection first worked).
// A test lab's failures are test failures: it panics with a clear message.
#![allow(clippy::panic)]

use std::io::Read as _;
use std::process::{Child, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use daolinet_testlab::{
    json_str, wait_poll, workspace_bin, Agent, Api, Controller, ControllerOpts, EtcdCluster, Lab,
    Need, Netns, OvsHost, Poll, TcpProxy, ETCD_PROGRAMS, OVS_PROGRAMS,
};
use serde_json::Value;

/// The hosts' underlay network (`.1`, `.2`, ...).
pub const NET: &str = "192.168.216";
/// The controllers' OpenFlow ports (in the etcd cluster's own namespace).
pub const PORTS: [u16; 3] = [6661, 6662, 6663];

/// Where a test's own controller end ([`crate::ofpeer::OfPeer`]) listens
/// for host 1's agent and the Open vSwitch host when [`HaOpts::rogue`]:
/// `10.251.1.1` and `10.251.3.1` in the etcd cluster's namespace.
pub const ROGUE_PORT: u16 = 6669;

/// What the lab has besides the three controllers and two agent hosts.
#[derive(Debug, Clone, Copy, Default)]
pub struct HaOpts {
    /// Probe containers on host 1 (and on the Open vSwitch host, at least
    /// one there).
    pub probes: usize,
    /// An Open vSwitch host (3).
    pub ovs: bool,
    /// Controller 0 reaches etcd only through relays the test can cut
    /// ([`Ha::relays`]).
    pub relayed: bool,
    /// Host 1's agent and Open vSwitch also connect to [`ROGUE_PORT`]
    /// ([`Ha::rogue_target`]).
    pub rogue: bool,
    /// With `rogue`: a second 3-member etcd cluster ([`Ha::etcd_b`]) in a
    /// namespace of its own, linked to host 1 and the Open vSwitch host by
    /// management links of their own (`10.252.i.0/24`), where the rogue
    /// target is: controllers started there ([`Ha::rogue_netns`]) on that
    /// cluster's store are another controller set on another store at the
    /// same switches.
    pub other_etcd: bool,
    /// The controllers' `--lease-ttl` in seconds (their default, 2 s, when
    /// `None`). Tests that do not time a failover give their set longer
    /// leases: a leader then keeps its place through a second or two of
    /// unanswered keep-alives on a loaded machine (with 2 s leases it steps
    /// down after 0.75 s, and a set that keeps changing leaders does not
    /// get a joining Open vSwitch bridge its flows within 30 s).
    pub lease_ttl: Option<u32>,
}

/// The Open vSwitch host's bridge.
pub const BR: &str = "br-ha";

/// What a lab needs (the skip rule's list); with Open vSwitch or not.
pub fn needs(ovs: bool) -> Vec<Need> {
    let mut v = vec![
        Need::BpfObject,
        Need::Binary("daolinet-controller"),
        Need::Binary("daolinet-agent"),
        Need::Program(ETCD_PROGRAMS[0]),
        Need::Program(ETCD_PROGRAMS[1]),
        Need::Program("ping"),
        Need::Program("iperf3"),
    ];
    if ovs {
        v.push(Need::Binary("daolictl"));
        v.extend(OVS_PROGRAMS.iter().map(|p| Need::Program(p)));
    }
    v
}

/// A container: its namespace and what the controller gave it.
#[derive(Debug)]
pub struct Ctr {
    /// Its namespace (`eth0` inside).
    pub ns: Netns,
    /// Its IP.
    pub ip: String,
    /// Its MAC.
    pub mac: String,
}

/// The lab. Fields drop in order: agents, controllers, containers, hosts,
/// the underlay, etcd, and the lab's directory last.
#[derive(Debug)]
pub struct Ha {
    /// The agents of host 1 and host 2.
    pub agents: Vec<Agent>,
    /// The controllers (`None`: down).
    pub ctls: Vec<Option<Controller>>,
    /// Controller 0's relays to the etcd members ([`HaOpts::relayed`]).
    pub relays: Vec<TcpProxy>,
    /// How controller `i` is (re)started.
    pub opts: Vec<ControllerOpts>,
    /// On host 1.
    pub a: Ctr,
    /// On host 2.
    pub b: Ctr,
    /// On host 1.
    pub c: Ctr,
    /// On host 2.
    pub d: Ctr,
    /// On host 1, silent until asked.
    pub probes: Vec<Ctr>,
    /// On the Open vSwitch host (3): `e`, then the probes (`f0`, `f1`...),
    /// silent until asked.
    pub ovs_ctrs: Vec<Ctr>,
    /// Open vSwitch on host 3 (dropped before the namespaces).
    pub ovs: Option<OvsHost>,
    /// Host namespaces 1, 2 (agents) and 3 (Open vSwitch).
    pub hosts: Vec<Netns>,
    /// The underlay bridge's namespace.
    pub underlay: Netns,
    /// The second etcd cluster ([`HaOpts::other_etcd`]).
    pub etcd_b: Option<EtcdCluster>,
    /// The etcd cluster; the controllers run in its namespace.
    pub etcd: EtcdCluster,
    /// The lab (dropped last).
    pub lab: Lab,
}

/// The permanent flows of a flow dump (`daolinet-agent flows` or
/// `ovs-ofctl dump-flows`), without counters and ages: what a controller
/// set wrote for good. Flows with an idle or hard timeout are left out:
/// they are the leader's answers to traffic, which come and go (a
/// container's own IPv6 router solicitations, sent with growing intervals
/// for as long as it lives, get a 3 s denial at any moment). A controller
/// acting where it should not would change the permanent ones: its model
/// has none of the containers, so its reconciliation would delete theirs.
pub fn permanent_flows(dump: &str) -> std::collections::BTreeSet<String> {
    const VARYING: [&str; 5] = [
        "duration=",
        "n_packets=",
        "n_bytes=",
        "idle_age=",
        "hard_age=",
    ];
    dump.lines()
        .filter(|l| {
            l.contains("actions=") && !l.contains("idle_timeout=") && !l.contains("hard_timeout=")
        })
        .map(|l| {
            l.split([',', ' '])
                .filter(|w| !w.is_empty() && !VARYING.iter().any(|p| w.starts_with(p)))
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

/// The value of metric `name` (no labels) on `ctl`'s `/metrics`.
pub fn metric(ctl: &Controller, name: &str) -> Option<u64> {
    ctl.api()
        .try_raw("GET", "/metrics", None)
        .ok()?
        .1
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

impl Ha {
    /// Builds and starts the lab; `None` when the skip rule skips it.
    #[track_caller]
    pub fn new(o: HaOpts) -> Option<Ha> {
        let with_ovs = o.ovs;
        let mut lab = Lab::new(&needs(with_ovs))?;
        let etcd = lab.etcd(3);
        let e = etcd.netns().name().to_string();
        let underlay = lab.netns("u");
        underlay.ip(&["link", "add", "br0", "type", "bridge"]);
        underlay.ip(&["link", "set", "br0", "up"]);
        let n_hosts = if with_ovs { 3 } else { 2 };
        let hosts: Vec<Netns> = (1..=n_hosts).map(|i| lab.netns(&format!("h{i}"))).collect();
        for (k, h) in hosts.iter().enumerate() {
            let i = k + 1;
            h.veth_to("eth0", &underlay, &format!("p{i}"));
            underlay.ip(&["link", "set", &format!("p{i}"), "master", "br0"]);
            h.ip(&[
                "link",
                "set",
                "eth0",
                "address",
                &format!("02:00:00:00:d8:0{i}"),
            ]);
            h.addr("eth0", &format!("{NET}.{i}/24"));
            // The management network: host i <-> the controllers' namespace.
            h.veth_to("m0", etcd.netns(), &format!("m{i}"));
            h.addr("m0", &format!("10.251.{i}.2/24"));
            etcd.netns()
                .addr(&format!("m{i}"), &format!("10.251.{i}.1/24"));
        }

        let etcd_b = (o.rogue && o.other_etcd).then(|| {
            let dir = lab.subdir(&format!("etcd-b-{}", daolinet_testlab::fresh_tag()));
            let b = EtcdCluster::start(lab.netns("etcdb"), dir, 3);
            for (k, h) in hosts.iter().enumerate() {
                let i = k + 1;
                if i == 2 {
                    continue;
                }
                h.veth_to("m1", b.netns(), &format!("n{i}"));
                h.addr("m1", &format!("10.252.{i}.2/24"));
                b.netns()
                    .addr(&format!("n{i}"), &format!("10.252.{i}.1/24"));
            }
            b
        });
        let rogue_net = if etcd_b.is_some() { "10.252" } else { "10.251" };
        let store = etcd.store_spec();
        let relays: Vec<TcpProxy> = if o.relayed {
            etcd.endpoints()
                .iter()
                .map(|ep| {
                    let target = ep
                        .trim_start_matches("http://")
                        .parse()
                        .unwrap_or_else(|e| panic!("{ep}: {e}"));
                    TcpProxy::start(&e, target)
                })
                .collect()
        } else {
            Vec::new()
        };
        let relayed = format!(
            "etcd:{}",
            relays
                .iter()
                .map(|r| format!("http://{}", r.addr()))
                .collect::<Vec<_>>()
                .join(",")
        );
        let ttl = o.lease_ttl.map(|t| t.to_string());
        let opts: Vec<ControllerOpts> = PORTS
            .iter()
            .enumerate()
            .map(|(i, p)| {
                lab.controller_opts()
                    .netns(&e)
                    .store(if i == 0 && o.relayed {
                        &relayed
                    } else {
                        &store
                    })
                    .listen(&format!("0.0.0.0:{p}"))
                    .api("0.0.0.0:0")
                    .args(&["--echo-interval", "1"])
                    .args(&match &ttl {
                        Some(t) => vec!["--lease-ttl", t.as_str()],
                        None => vec![],
                    })
            })
            .collect();
        let ctls: Vec<Option<Controller>> =
            opts.iter().map(|o| Some(Controller::start(o))).collect();
        let api = ctls[0]
            .as_ref()
            .unwrap_or_else(|| panic!("no controller"))
            .api()
            .clone();
        for i in 1..=2 {
            api.ok(
                "POST",
                "/api/hosts",
                Some(&format!(
                    r#"{{"name":"h{i}","dpid":{i},"ip":"{NET}.{i}","mac":"02:00:00:00:d8:0{i}","uplink_port":65000}}"#
                )),
            );
        }
        api.ok(
            "POST",
            "/api/networks",
            Some(r#"{"name":"blue","subnet":"10.216.0.0/24"}"#),
        );
        let make = |host: usize, name: &str, port: usize| -> Ctr {
            let v = register(&api, &format!("c{name}"), &format!("h{}", host + 1), port);
            let (ip, mac) = (json_str(&v, "ip"), json_str(&v, "mac"));
            let ns = lab.container(&hosts[host], name, &format!("c{name}"), &ip, &mac);
            Ctr { ns, ip, mac }
        };
        let a = make(0, "a", 1);
        let c = make(0, "c", 2);
        let b = make(1, "b", 1);
        let d = make(1, "d", 2);
        let probes: Vec<Ctr> = (0..o.probes)
            .map(|k| make(0, &format!("p{k}"), 3 + k))
            .collect();
        for (n, peer) in [(&c, &b), (&d, &a), (&d, &c)] {
            neighbour(n, peer);
        }
        for p in &probes {
            neighbour(p, &b);
        }
        let mut agents = Vec::new();
        for i in 1..=2usize {
            let mut args: Vec<String> = vec![
                "--uplink".into(),
                "eth0".into(),
                "--datapath-id".into(),
                i.to_string(),
            ];
            let mine: Vec<String> = if i == 1 {
                let mut v = vec!["a".to_string(), "c".into()];
                v.extend((0..probes.len()).map(|k| format!("p{k}")));
                v
            } else {
                vec!["b".into(), "d".into()]
            };
            for (k, name) in mine.iter().enumerate() {
                args.push("--port".into());
                args.push(format!("c{name}={}", k + 1));
            }
            for p in PORTS {
                args.push("--controller".into());
                args.push(format!("tcp:10.251.{i}.1:{p}"));
            }
            if o.rogue && i == 1 {
                args.push("--controller".into());
                args.push(format!("tcp:{rogue_net}.{i}.1:{ROGUE_PORT}"));
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            agents.push(lab.agent(&hosts[i - 1], &args));
        }
        let (ovs, ovs_ctrs) = if with_ovs {
            let rogue = o.rogue.then(|| format!("tcp:{rogue_net}.3.1:{ROGUE_PORT}"));
            let (ovs, ctrs) = join_ovs(&lab, &hosts[2], &ctls, &api, probes.len().max(1), rogue);
            for x in &ctrs {
                neighbour(x, &b);
            }
            (Some(ovs), ctrs)
        } else {
            (None, Vec::new())
        };
        let ha = Ha {
            agents,
            ctls,
            relays,
            opts,
            a,
            b,
            c,
            d,
            probes,
            ovs_ctrs,
            ovs,
            hosts,
            underlay,
            etcd_b,
            etcd,
            lab,
        };
        ha.all_connected();
        assert!(ha.a.ns.ping(&ha.b.ip, 1, 5), "first cross-host ping failed");
        assert!(ha.b.ns.ping(&ha.a.ip, 3, 2), "ping back failed");
        if let Some(e) = ha.ovs_ctrs.first() {
            assert!(e.ns.ping(&ha.b.ip, 1, 5), "OVS host -> b failed");
            assert!(ha.a.ns.ping(&e.ip, 1, 5), "a -> OVS host failed");
        }
        Some(ha)
    }

    /// The REST API of controller `i`, which must be running.
    #[track_caller]
    pub fn api(&self, i: usize) -> Api {
        self.ctls[i]
            .as_ref()
            .unwrap_or_else(|| panic!("controller {i} is down"))
            .api()
            .clone()
    }

    /// The index of the one controller that leads.
    #[track_caller]
    pub fn leader(&self) -> usize {
        wait_poll("one leader", Duration::from_secs(30), || {
            let leading: Vec<usize> = self
                .ctls
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    c.as_ref()
                        .is_some_and(|c| metric(c, "daolinet_leader") == Some(1))
                })
                .map(|(i, _)| i)
                .collect();
            match leading[..] {
                [i] => Poll::Ready(i),
                _ => Poll::Pending(format!("leading: {leading:?}")),
            }
        })
    }

    /// The leader's generation id.
    #[track_caller]
    pub fn generation(&self, i: usize) -> Option<u64> {
        metric(
            self.ctls[i]
                .as_ref()
                .unwrap_or_else(|| panic!("controller {i} is down")),
            "daolinet_leader_generation",
        )
    }

    /// Waits until every running controller sees every switch (both
    /// agents, and Open vSwitch) connected.
    #[track_caller]
    pub fn all_connected(&self) {
        let want = self.hosts.len() as u64;
        for c in self.ctls.iter().flatten() {
            wait_poll(
                "every switch connected",
                Duration::from_secs(30),
                || match metric(c, "daolinet_switches_connected") {
                    Some(n) if n == want => Poll::Ready(()),
                    other => Poll::Pending(format!("{other:?} of {want}")),
                },
            );
        }
    }

    /// Open vSwitch's view of its controllers: (target, role, connected)
    /// from `ovs-vsctl list controller`.
    #[track_caller]
    pub fn ovs_roles(&self) -> Vec<(String, String, bool)> {
        let ovs = self
            .ovs
            .as_ref()
            .unwrap_or_else(|| panic!("no Open vSwitch host in this lab"));
        let out = ovs.vsctl(&[
            "--format=csv",
            "--no-headings",
            "--columns=target,role,is_connected",
            "list",
            "controller",
        ]);
        out.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').map(|x| x.trim_matches('"')).collect();
                match f[..] {
                    [t, r, c] => Some((t.to_string(), r.to_string(), c == "true")),
                    _ => None,
                }
            })
            .collect()
    }

    /// Waits until Open vSwitch is connected to every running controller
    /// and the leader (by index) is its one master, the others slaves.
    #[track_caller]
    pub fn ovs_obeys_leader(&self) {
        wait_poll(
            "Open vSwitch: the leader master, the others slaves",
            Duration::from_secs(30),
            || {
                let leader = self.leader();
                let roles = self.ovs_roles();
                let ok = self.ctls.iter().enumerate().all(|(i, c)| {
                    let target = format!("tcp:10.251.3.1:{}", PORTS[i]);
                    let want = match (c, i == leader) {
                        (None, _) => return true,
                        (Some(_), true) => "master",
                        (Some(_), false) => "slave",
                    };
                    roles
                        .iter()
                        .any(|(t, r, up)| *t == target && r == want && *up)
                });
                if ok {
                    Poll::Ready(())
                } else {
                    Poll::Pending(format!("leader {leader}, Open vSwitch: {roles:?}"))
                }
            },
        );
    }

    /// Waits until every agent's `daolinet-agent status` shows the leader
    /// (by index) as master and the other running controllers as slaves,
    /// with the leader's generation id: what an operator reads to see who
    /// is master.
    #[track_caller]
    pub fn agents_obey_leader(&self) {
        for (k, agent) in self.agents.iter().enumerate() {
            let host = k + 1;
            wait_poll(
                &format!("agent {host}'s status: the leader master, the others slaves"),
                Duration::from_secs(30),
                || {
                    let leader = self.leader();
                    let generation = self.generation(leader);
                    let v: Value = match serde_json::from_str(&agent.cli(&["status", "--json"])) {
                        Ok(v) => v,
                        Err(e) => return Poll::Pending(format!("status --json: {e}")),
                    };
                    let links = v["controller_links"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let role = |i: usize| {
                        let target = format!("tcp:10.251.{host}.1:{}", PORTS[i]);
                        links
                            .iter()
                            .find(|l| l["target"] == target.as_str() && l["state"] == "up")
                            .and_then(|l| l["role"].as_str().map(str::to_string))
                    };
                    let ok = v["generation_id"].as_u64() == generation
                        && self
                            .ctls
                            .iter()
                            .enumerate()
                            .all(|(i, c)| match (c, i == leader) {
                                (None, _) => true,
                                (Some(_), true) => role(i).as_deref() == Some("master"),
                                (Some(_), false) => role(i).as_deref() == Some("slave"),
                            });
                    if !ok {
                        return Poll::Pending(format!(
                            "leader {leader} (generation {generation:?}): {v}"
                        ));
                    }
                    // The same for people.
                    let text = agent.cli(&["status"]);
                    let line = format!(
                        "controller tcp:10.251.{host}.1:{}: up, master\n",
                        PORTS[leader]
                    );
                    let g = format!("generation id {}\n", generation.unwrap_or_default());
                    if text.contains(&line) && text.contains(&g) {
                        Poll::Ready(())
                    } else {
                        Poll::Pending(format!("{line:?} and {g:?} in {text}"))
                    }
                },
            );
        }
    }

    /// Where host `i` (1: the agent, 3: Open vSwitch) reaches
    /// [`ROGUE_PORT`] ([`HaOpts::rogue`]): `tcp:IP:PORT`, as the switch
    /// shows its controller.
    pub fn rogue_target(&self, i: usize) -> String {
        let net = if self.etcd_b.is_some() {
            "10.252"
        } else {
            "10.251"
        };
        format!("tcp:{net}.{i}.1:{ROGUE_PORT}")
    }

    /// The namespace a controller at [`ROGUE_PORT`] runs in: the second
    /// etcd cluster's ([`HaOpts::other_etcd`]), or else the first's.
    pub fn rogue_netns(&self) -> &Netns {
        self.etcd_b.as_ref().unwrap_or(&self.etcd).netns()
    }

    /// Gives a controller of another store (`to`, its API) what it needs
    /// to know the switches at [`ROGUE_PORT`]: hosts 1 and 3 as the lab's
    /// controllers have them (names, datapath ids, addresses) and the
    /// network `blue`, but none of their containers, so that were it to
    /// act on a switch it would reconcile the containers' flows away.
    /// Their datapath ids as the API shows them.
    #[track_caller]
    pub fn copy_rogue_hosts(&self, to: &Api) -> Vec<Value> {
        let hosts = self.api(self.leader()).ok("GET", "/api/hosts", None);
        let mut dpids = Vec::new();
        for h in hosts.as_array().into_iter().flatten() {
            if !matches!(h["name"].as_str(), Some("h1" | "h3")) {
                continue;
            }
            let body = serde_json::json!({
                "name": h["name"], "dpid": h["dpid"], "ip": h["ip"],
                "mac": h["mac"], "uplink_port": h["uplink_port"],
            });
            to.ok("POST", "/api/hosts", Some(&body.to_string()));
            dpids.push(h["dpid"].clone());
        }
        assert_eq!(dpids.len(), 2, "hosts h1 and h3 in {hosts}");
        to.ok(
            "POST",
            "/api/networks",
            Some(r#"{"name":"blue","subnet":"10.216.0.0/24"}"#),
        );
        dpids
    }

    /// How long after `since` a controller other than `old` was first
    /// seen leading (its `daolinet_leader` metric polled every 10 ms):
    /// the election's share of a failover. Panics after 30 s.
    #[track_caller]
    pub fn new_leader_seen(&self, old: usize, since: SystemTime) -> Duration {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let seen = self.ctls.iter().enumerate().any(|(i, c)| {
                i != old
                    && c.as_ref()
                        .is_some_and(|c| metric(c, "daolinet_leader") == Some(1))
            });
            if seen {
                return since.elapsed().unwrap_or_default();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no new leader 30 s after controller {old} went"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `kill -9` controller `i`; when it died.
    #[track_caller]
    pub fn kill9(&mut self, i: usize) -> SystemTime {
        let c = self.ctls[i]
            .take()
            .unwrap_or_else(|| panic!("controller {i} is down"));
        c.kill9();
        SystemTime::now()
    }

    /// Starts controller `i` again (it must be down).
    #[track_caller]
    pub fn start(&mut self, i: usize) {
        assert!(self.ctls[i].is_none(), "controller {i} is running");
        self.ctls[i] = Some(Controller::start(&self.opts[i]));
    }
}

/// The index of the etcd member that is the raft leader, asked of the
/// running members `among` (`etcdctl endpoint status`: the member whose
/// own id is the leader it reports); `None` while they know no leader
/// (an election in progress) or do not answer.
pub fn raft_leader(etcd: &EtcdCluster, among: &[usize]) -> Option<usize> {
    let eps: Vec<String> = among.iter().map(|&i| etcd.endpoint(i)).collect();
    let eps = eps.join(",");
    let r = etcd.netns().output(&[
        "env",
        "ETCDCTL_API=3",
        "etcdctl",
        "--endpoints",
        &eps,
        "--command-timeout",
        "2s",
        "endpoint",
        "status",
        "-w",
        "json",
    ]);
    if !r.ok {
        return None;
    }
    let v: Value = serde_json::from_str(&r.stdout).ok()?;
    let leader_ep = v.as_array()?.iter().find(|m| {
        m["Status"]["leader"].as_u64().is_some_and(|l| l != 0)
            && m["Status"]["leader"] == m["Status"]["header"]["member_id"]
    })?["Endpoint"]
        .as_str()?
        .to_string();
    among
        .iter()
        .copied()
        .find(|&i| etcd.endpoint(i) == leader_ep)
}

/// The etcd member that is the raft leader now (every member running);
/// waits up to 30 s for one.
#[track_caller]
pub fn wait_raft_leader(etcd: &EtcdCluster) -> usize {
    let all: Vec<usize> = (0..etcd.len()).collect();
    wait_poll(
        "an etcd raft leader",
        Duration::from_secs(30),
        || match raft_leader(etcd, &all) {
            Some(i) => Poll::Ready(i),
            None => Poll::Pending(etcd.etcdctl(&["endpoint", "status"]).stderr),
        },
    )
}

/// Host 3 joins with `daolictl host join-ovs` through the leader, then
/// gets every controller as a target; containers `e` (port 1) and
/// `probes` probes `f0`, `f1`... (ports 2...).
#[track_caller]
fn join_ovs(
    lab: &Lab,
    host: &Netns,
    ctls: &[Option<Controller>],
    api: &Api,
    probes: usize,
    rogue: Option<String>,
) -> (OvsHost, Vec<Ctr>) {
    let ovs = lab.ovs(host);
    let db = format!("unix:{}/db.sock", ovs.dir().display());
    // The leader: only a master writes the base flows join-ovs waits for.
    let leader = wait_poll("a leader", Duration::from_secs(30), || {
        match ctls
            .iter()
            .position(|c| c.as_ref().and_then(|c| metric(c, "daolinet_leader")) == Some(1))
        {
            Some(i) => Poll::Ready(i),
            None => Poll::Pending(String::new()),
        }
    });
    let ctl = ctls[leader]
        .as_ref()
        .unwrap_or_else(|| panic!("no controller {leader}"));
    let api_port = ctl
        .api()
        .addr()
        .rsplit(':')
        .next()
        .unwrap_or("")
        .to_string();
    let token = ctl.dir().join("api-token").display().to_string();
    let join = host.output(&[
        &workspace_bin("daolictl").to_string_lossy(),
        "--api",
        &format!("http://10.251.3.1:{api_port}"),
        "--token-file",
        &token,
        "host",
        "join-ovs",
        "--bridge",
        BR,
        "--uplink",
        "eth0",
        "--controller",
        &format!("tcp:10.251.3.1:{}", PORTS[leader]),
        "--name",
        "h3",
        "--datapath",
        "netdev",
        "--ovs-db",
        &db,
    ]);
    assert!(join.ok, "join-ovs: {}{}", join.stdout, join.stderr);
    let mut set = vec!["set-controller", BR];
    let mut targets: Vec<String> = PORTS
        .iter()
        .map(|p| format!("tcp:10.251.3.1:{p}"))
        .collect();
    targets.extend(rogue);
    set.extend(targets.iter().map(String::as_str));
    ovs.vsctl(&set);
    let names = std::iter::once("e".to_string()).chain((0..probes).map(|k| format!("f{k}")));
    let ctrs = names
        .enumerate()
        .map(|(k, name)| {
            let port = k + 1;
            let v = register(api, &format!("c{name}"), "h3", port);
            let (ip, mac) = (json_str(&v, "ip"), json_str(&v, "mac"));
            let iface = format!("c{name}");
            let ns = lab.container(host, &name, &iface, &ip, &mac);
            ovs.add_port(BR, &iface, port as u32);
            Ctr { ns, ip, mac }
        })
        .collect();
    (ovs, ctrs)
}

/// `POST /api/containers` for `id` on `host`'s port `port` in network
/// blue; the controller's answer.
#[track_caller]
pub fn register(api: &Api, id: &str, host: &str, port: usize) -> Value {
    api.ok(
        "POST",
        "/api/containers",
        Some(&format!(
            r#"{{"id":"{id}","network":"blue","host":"{host}","port":{port}}}"#
        )),
    )
}

#[track_caller]
fn neighbour(n: &Ctr, peer: &Ctr) {
    n.ns.ip(&[
        "neigh", "replace", &peer.ip, "lladdr", &peer.mac, "dev", "eth0",
    ]);
}

/// `ping -c COUNT -i 0.01` in the background.
#[derive(Debug)]
pub struct Pinger {
    child: Child,
    what: String,
}

impl Pinger {
    /// Starts `count` pings 10 ms apart from `from` to `ip`.
    #[track_caller]
    pub fn start(from: &Netns, ip: &str, count: u32) -> Pinger {
        let child = from
            .command(&[
                "ping",
                "-n",
                "-q",
                "-i",
                "0.01",
                "-W",
                "1",
                "-c",
                &count.to_string(),
                ip,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("ping: {e}"));
        Pinger {
            child,
            what: format!("ping {ip} from {from}"),
        }
    }

    /// Waits for the end: (sent, received).
    #[track_caller]
    pub fn finish(mut self) -> (u32, u32) {
        let _ = self.child.wait();
        let mut out = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        let line = out
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("{}: no summary in {out:?}", self.what));
        let words: Vec<&str> = line.split([' ', ',']).filter(|s| !s.is_empty()).collect();
        let num = |w: &str| -> u32 {
            let i = words
                .iter()
                .position(|x| x.starts_with(w))
                .unwrap_or_else(|| panic!("{line}"));
            words[i - 1].parse().unwrap_or_else(|_| panic!("{line}"))
        };
        (num("packets"), num("received"))
    }

    /// Finishes and asserts that no reply was missing.
    #[track_caller]
    pub fn none_lost(self, what: &str) {
        let (sent, got) = self.finish();
        assert_eq!(got, sent, "{what}: ping lost {} of {sent}", sent - got);
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How an iperf3 stream went.
#[derive(Debug, Clone)]
pub struct StreamReport {
    /// Bytes of each 0.5 s interval.
    pub intervals: Vec<u64>,
    /// TCP retransmits the sender counted.
    pub retransmits: u64,
}

/// An iperf3 stream from `client` to `server_ip` (server in `server`),
/// reporting every 0.5 s.
#[derive(Debug)]
pub struct Stream {
    _server: daolinet_testlab::Proc,
    client: Child,
}

impl Stream {
    /// Starts a stream of `secs` seconds.
    #[track_caller]
    pub fn start(server: &Netns, client: &Netns, server_ip: &str, secs: u32) -> Stream {
        let srv = server.spawn(&["iperf3", "-s", "-1", "-B", server_ip, "-p", "5299"]);
        server.wait_tcp_listening(5299, Duration::from_secs(30));
        let client = client
            .command(&[
                "iperf3",
                "-c",
                server_ip,
                "-p",
                "5299",
                "-t",
                &secs.to_string(),
                "-i",
                "0.5",
                "-J",
                "--connect-timeout",
                "5000",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("iperf3: {e}"));
        Stream {
            _server: srv,
            client,
        }
    }

    /// Waits for the end; what iperf3 reported.
    #[track_caller]
    pub fn finish(mut self, what: &str) -> StreamReport {
        let _ = self.client.wait();
        let mut out = String::new();
        if let Some(mut o) = self.client.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        let v: Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{what}: iperf3 {e}: {out}"));
        assert!(v["error"].is_null(), "{what}: iperf3 {}", v["error"]);
        let intervals = v["intervals"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: no intervals: {out}"))
            .iter()
            .map(|iv| iv["sum"]["bytes"].as_u64().unwrap_or(0))
            .collect();
        StreamReport {
            intervals,
            retransmits: v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        }
    }

    /// Waits for the end; asserts every 0.5 s interval carried data.
    #[track_caller]
    pub fn never_stalled(self, what: &str) {
        let r = self.finish(what);
        assert!(r.intervals.len() >= 4, "{what}: {r:?}");
        for (i, bytes) in r.intervals.iter().enumerate() {
            assert!(*bytes > 0, "{what}: the stream stalled in interval {i}");
        }
        eprintln!("{what}: iperf3 {} retransmits", r.retransmits);
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.client.kill();
        let _ = self.client.wait();
    }
}

/// How long after `since` a new connection from `from` to `ip` first
/// worked: pings every 10 ms until one is answered (each unanswered one
/// is another first packet the controllers get), timed by the reply's
/// receive timestamp (`ping -D`). Panics after 30 s without an answer.
#[track_caller]
pub fn first_answer(from: &Netns, ip: &str, since: SystemTime) -> Duration {
    let out = from
        .command(&["ping", "-n", "-D", "-i", "0.01", "-c", "1", "-w", "30", ip])
        .output()
        .unwrap_or_else(|e| panic!("ping: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text
        .lines()
        .filter(|l| l.contains("bytes from"))
        .find_map(|l| l.strip_prefix('[')?.split(']').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{from} -> {ip}: no answer within 30 s: {text}"));
    let since = since
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    Duration::from_secs_f64((at - since).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::permanent_flows;

    /// A denial the leader gave an Open vSwitch container's IPv6 router
    /// solicitation while `other_store.rs` compared flows (a CI run at
    /// 0a2d98c): not a permanent flow, so not a change by the other store.
    #[test]
    fn permanent_flows_leave_out_answers_to_traffic() {
        let dump = "\
 cookie=0x100000000000000, duration=12.1s, table=0, n_packets=4, n_bytes=280, priority=10,arp actions=CONTROLLER:65535
 cookie=0x300000070000000, duration=0.5s, table=0, n_packets=0, n_bytes=0, hard_timeout=3, send_flow_rem, priority=100,ipv6,in_port=2 actions=meter:1,CONTROLLER:65535
 cookie=0x200000070000008, duration=2.0s, table=0, n_packets=9, n_bytes=882, idle_timeout=5, priority=300,ip,in_port=2,nw_dst=10.1.0.3 actions=output:1
";
        let flows = permanent_flows(dump);
        assert_eq!(flows.len(), 1, "{flows:?}");
        assert!(flows.iter().all(|f| f.contains("arp")), "{flows:?}");
        assert!(flows.iter().all(|f| !f.contains("n_packets")), "{flows:?}");
    }
}
