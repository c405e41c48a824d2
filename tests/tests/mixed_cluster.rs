//! Privileged, end to end: one controller serves an agent host and an Open
//! vSwitch host (userspace datapath, TSO on, `fail_mode=secure`) that both
//! joined by themselves (`daolinet-agent run --api`, `daolictl host
//! join-ovs`), with no host registered by hand. Across the two kinds:
//!
//! - the first ping and the first TCP SYN are delivered both ways (the SYN
//!   is not retransmitted: the client's `TCPSynRetrans` counter stays 0);
//! - tenants with the same subnet stay apart, and the underlay carries only
//!   physical addresses;
//! - a group join, a group leave, a disconnect and a connect each take
//!   effect with the very next packet (drops keyed by one container, OVS's
//!   cached drop flows: on Open vSwitch a denial punts through a meter, so
//!   a cached copy that outlived the change sends the packet to the
//!   controller, which delivers it; shown with OVS's revalidators paused);
//! - idle flows expire on both hosts;
//! - a container moves OVS -> agent and agent -> OVS keeping its IP and MAC;
//! - `trace` and `observe` with the OVS host: an isolated pair denied,
//!   naming both networks, its denial on the OVS host in `observe`; an
//!   allowed pair's flows and rewrites on both kinds of host.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use daolinet_testlab::{
    wait_until, workspace_bin, Agent, Api, Lab, Need, Netns, OvsHost, Proc, OVS_PROGRAMS,
};
use serde_json::Value;

const BR: &str = "brjn";

struct Cluster {
    api: Api,
    agent: Agent,
    ovs: OvsHost,
    a: Netns,
    o: Netns,
    /// Open vSwitch's revalidators paused around the group join and the
    /// connects: every datapath flow cached from a deleted denial outlives
    /// the API's answer (as under load), and the first packet meets it.
    strict: bool,
}

impl Cluster {
    fn container(&self, id: &str) -> Value {
        self.api.ok("GET", &format!("/api/containers/{id}"), None)
    }

    fn ip(&self, id: &str) -> String {
        self.container(id)["ip"].as_str().unwrap().to_string()
    }

    /// The forwarding flows (not denials) of both hosts matching `ip`. A
    /// denial is a drop on the agent and a punt through the deny meter on
    /// Open vSwitch (`actions=meter:1,CONTROLLER:65535`).
    fn flows_with(&self, ip: &str) -> (Vec<String>, Vec<String>) {
        let pick = |dump: String| -> Vec<String> {
            dump.lines()
                .filter(|l| l.contains(&format!("={ip},")) || l.contains(&format!("={ip} ")))
                .filter(|l| !l.contains("actions=drop") && !l.contains("actions=meter:"))
                .map(str::to_string)
                .collect()
        };
        (
            pick(self.agent.cli(&["flows"])),
            pick(self.ovs.dump_flows(BR)),
        )
    }

    /// Waits until no flow of either host mentions `ip` (idle expiry).
    fn wait_expired(&self, ip: &str) {
        wait_until(
            &format!("the flows of {ip} to expire on both hosts"),
            Duration::from_secs(20),
            || {
                let (a, o) = self.flows_with(ip);
                a.is_empty() && o.is_empty()
            },
        );
    }

    fn policy(&self, verb: &str, a: &str, b: &str) {
        self.api.ok(
            "POST",
            "/api/policies",
            Some(&format!(r#"{{"a":"{a}","b":"{b}","action":"{verb}"}}"#)),
        );
    }

    /// `ovs-appctl revalidator/pause` or `resume` in strict mode: a
    /// revalidator slower than any API answer, as under load.
    fn revalidators(&self, verb: &str) {
        if self.strict {
            self.ovs.appctl(&[&format!("revalidator/{verb}")]);
        }
    }

    /// `daolinet_punted_denials_total{outcome}` of the controller: packets
    /// an Open vSwitch denial punted, still denied (`dropped`) or allowed
    /// since (`delivered`).
    fn punted_denials(&self, outcome: &str) -> u64 {
        let key = format!("daolinet_punted_denials_total{{outcome=\"{outcome}\"}} ");
        let text = self.api.text("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in the controller's metrics"))
    }

    /// In strict mode, the first packet after a change went through a
    /// denial's stale datapath flow on Open vSwitch: punted, delivered by
    /// the controller (`before` = [`Cluster::punted_denials`]`("delivered")`
    /// before it was sent).
    fn delivered_through_a_stale_denial(&self, before: u64, what: &str) {
        if self.strict {
            assert!(
                self.punted_denials("delivered") > before,
                "{what}: Open vSwitch's stale denial did not punt (revalidators paused)"
            );
        }
    }
}

/// One ping, one second to answer: the first packet of a pair.
fn first_ping(from: &Netns, ip: &str) -> bool {
    from.ping(ip, 1, 2)
}

/// `TCPSynRetrans` of namespace `n`.
fn syn_retrans(n: &Netns) -> u64 {
    let text = n.run(&["cat", "/proc/net/netstat"]);
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        panic!("no TcpExt in /proc/net/netstat");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(k, _)| *k == "TCPSynRetrans")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap()
}

/// A TCP connection from `client` to `server_ip:port` (listening in
/// `server`), accepted: the first SYN of the pair must not be lost, so the
/// client retransmits no SYN.
fn first_connect(client: &Netns, server: &Netns, server_ip: &str, port: u16) {
    let l: TcpListener = server.listen(&format!("{server_ip}:{port}")).unwrap();
    let before = syn_retrans(client);
    let t = Instant::now();
    let addr = format!("{server_ip}:{port}");
    let s = client
        .enter(move || {
            std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))
        })
        .unwrap_or_else(|e| panic!("connect to {server_ip}:{port}: {e}"));
    let took = t.elapsed();
    let (_acc, _) = l.accept().unwrap();
    drop(s);
    assert_eq!(
        syn_retrans(client) - before,
        0,
        "the first SYN to {server_ip} was lost and retransmitted (connect took {took:?})"
    );
    eprintln!("first TCP connect to {server_ip}: {took:?}, no SYN retransmitted");
}

/// `tcpdump -w FILE` on `iface` of `n`, returned once it listens.
fn capture(n: &Netns, iface: &str, file: &str) -> Proc {
    use std::io::BufRead;
    let mut c = n.command(&["tcpdump", "-i", iface, "-n", "-U", "-w", file, "ip"]);
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let err = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(err).lines();
    let proc = Proc::from_child(child, "tcpdump");
    match lines.next() {
        Some(Ok(l)) if l.contains("listening on") => {}
        other => panic!("tcpdump did not start: {other:?}"),
    }
    std::thread::spawn(move || for _ in lines {});
    proc
}

/// Plumb container namespace `c` to `host` again (a migration): a new
/// veth `port` in `host` to `eth0` in `c`, same MAC and IP, default route.
fn replug(host: &Netns, c: &Netns, port: &str, ip: &str, mac: &str, gw: &str) {
    let _ = c.output(&["ip", "link", "del", "eth0"]);
    host.ip(&[
        "link", "add", "name", port, "type", "veth", "peer", "name", "eth0", "netns", c,
    ]);
    c.ip(&["link", "set", "eth0", "address", mac]);
    c.addr("eth0", &format!("{ip}/24"));
    c.ip(&["route", "add", "default", "via", gw]);
    host.ip(&["link", "set", port, "up"]);
}

#[test]
fn agent_and_ovs_hosts_join_by_themselves_and_interoperate() {
    interoperate(false);
}

/// The same with Open vSwitch's revalidators slower than the API answer
/// (paused): the datapath flow cached from a deleted denial meets the first
/// packet after a group join or `connect`. A plain drop there ate it (every
/// run); the denial's punt delivers it.
#[test]
fn a_stale_ovs_drop_megaflow_does_not_eat_the_first_packet_after_connect() {
    interoperate(true);
}

/// `trace` and `observe` with an Open vSwitch host (the controller's
/// model, the flows it installed and its decisions: the same for both
/// kinds of host): the isolated pair r1 (red, OVS) -> g1 (green, agent),
/// just denied, is denied naming both networks and its denial shows in
/// `observe` on the OVS host; the allowed pair o1 (OVS) -> a1 (agent)
/// crosses both hosts with the logical <-> physical rewrites.
fn trace_and_observe_on_the_ovs_host(api: &Api) {
    let t = api.ok("POST", "/api/trace", Some(r#"{"src":"r1","dst":"g1"}"#));
    assert_eq!(t["verdict"]["denied"], "isolated", "{t:#}");
    assert_eq!(t["result"]["kind"], "dropped", "{t:#}");
    let why = t["reason"].as_str().unwrap_or_default();
    assert!(why.contains("red") && why.contains("green"), "{t:#}");
    let ev = api.ok("GET", "/api/events?verdict=dropped&container=r1", None);
    assert!(
        ev["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["host"] == "ovs1"
                && e["src"] == "r1"
                && e["dst"] == "g1"
                && e["reason"] == "isolated"
                && e["by"] == "controller"),
        "{ev:#}"
    );
    let c = |id: &str| api.ok("GET", &format!("/api/containers/{id}"), None);
    let (o1, a1) = (c("o1"), c("a1"));
    let t = api.ok(
        "POST",
        "/api/trace",
        Some(r#"{"src":"o1","dst":"a1","proto":"tcp","dport":7001}"#),
    );
    assert_eq!(t["verdict"], "cross_host", "{t:#}");
    assert_eq!(t["result"]["kind"], "delivered", "{t:#}");
    let hops = t["hops"].as_array().unwrap();
    assert_eq!(hops.len(), 2, "{t:#}");
    assert_eq!(hops[0]["host"], "ovs1", "{t:#}");
    assert_eq!(hops[0]["out_src"], o1["physical_ip"], "{t:#}");
    assert_eq!(hops[0]["out_dst"], a1["physical_ip"], "{t:#}");
    assert_eq!(hops[1]["host"], "agent1", "{t:#}");
    assert_eq!(hops[1]["out_src"], o1["ip"], "{t:#}");
    assert_eq!(hops[1]["out_dst"], a1["ip"], "{t:#}");
    assert_eq!(hops[1]["output"], 1, "{t:#}");
}

/// What the steps above cannot show: after a `disconnect` of two containers
/// on the same Open vSwitch host, the datapath flow cached from their
/// deleted pair flow forwards until a revalidator has been over it, so with
/// the revalidators paused a packet crosses the disconnect after the API
/// answered (between an agent host and an OVS host the agent's side stops
/// it). No OpenFlow message waits for OVS's revalidation: open (testlab
/// README, Failures explained).
#[test]
#[ignore = "open: Open vSwitch's cached allow megaflow outlives the barrier of a disconnect (testlab README, Failures explained)"]
fn a_stale_ovs_allow_megaflow_does_not_pass_a_packet_after_disconnect() {
    interoperate_then(true, Some(stale_allow_same_host));
}

/// o1 -> m1 (both on the OVS host), allowed and cached; the revalidators
/// paused, `disconnect o1 m1`, then one packet: it must not arrive. Today
/// it does, every run: the megaflow (`ipv4(src=10.60.0.3,dst=10.60.0.4,
/// proto=17) actions:set(eth(..)),6`) is still in `dpctl/dump-flows` after
/// the API answered.
fn stale_allow_same_host(cl: &Cluster, containers: &[(String, Netns)]) {
    let ns = |id: &str| &containers.iter().find(|(i, _)| i == id).unwrap().1;
    let mip = cl.ip("m1");
    let rx = ns("m1").udp(&format!("{mip}:7779")).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let tx = ns("o1").udp("0.0.0.0:0").unwrap();
    let mut buf = [0u8; 16];
    // The first punted and delivered, the next through the pair flow: its
    // datapath flow is cached, and kept in use (a megaflow hit once may be
    // evicted before the pause).
    for what in [&b"first"[..], b"cached", b"cached", b"cached", b"cached"] {
        tx.send_to(what, format!("{mip}:7779")).unwrap();
        let got = rx.recv_from(&mut buf).map(|(n, _)| buf[..n].to_vec());
        assert_eq!(got.ok().as_deref(), Some(what), "o1 -> m1 allowed");
    }
    cl.revalidators("pause");
    // Still cached under the pause (`dpctl/dump-flows` shows it).
    tx.send_to(b"cached", format!("{mip}:7779")).unwrap();
    let got = rx.recv_from(&mut buf).map(|(n, _)| buf[..n].to_vec());
    assert_eq!(
        got.ok().as_deref(),
        Some(&b"cached"[..]),
        "o1 -> m1 allowed"
    );
    cl.policy("disconnect", "o1", "m1");
    tx.send_to(b"after", format!("{mip}:7779")).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let got = rx.recv_from(&mut buf).map(|(n, _)| buf[..n].to_vec());
    cl.revalidators("resume");
    cl.policy("connect", "o1", "m1");
    assert!(
        got.is_err(),
        "o1 -> m1 crossed a disconnect the API had answered: {:?}",
        got.ok().map(|b| String::from_utf8_lossy(&b).into_owned())
    );
}

/// A step run in the middle of [`interoperate`] (after the policy steps,
/// before the migration).
type Step = fn(&Cluster, &[(String, Netns)]);

fn interoperate(strict: bool) {
    interoperate_then(strict, None);
}

fn interoperate_then(strict: bool, extra: Option<Step>) {
    let mut needs = vec![
        Need::BpfObject,
        Need::Binary("daolinet-controller"),
        Need::Binary("daolictl"),
        Need::Program("nft"),
        Need::Program("ping"),
        Need::Program("tcpdump"),
    ];
    needs.extend(OVS_PROGRAMS.iter().map(|p| Need::Program(p)));
    let Some(mut lab) = Lab::new(&needs) else {
        return;
    };
    // Host a (the agent, and the controller) and host o (Open vSwitch),
    // their uplinks on one wire.
    let a = lab.netns("a");
    let o = lab.netns("o");
    a.veth_to("up0", &o, "up0");
    a.ip(&["link", "set", "up0", "address", "02:00:00:00:91:02"]);
    a.addr("up0", "192.168.91.2/24");
    o.ip(&["link", "set", "up0", "address", "02:00:00:00:91:03"]);
    o.addr("up0", "192.168.91.3/24");
    // Flows expire after 2 s idle; drops would last 60 s (so that a drop
    // surviving a policy change shows).
    let ctl = daolinet_testlab::Controller::start(
        &lab.controller_opts()
            .netns(&a)
            .listen("0.0.0.0:0")
            .api("0.0.0.0:0")
            .args(&["--idle-timeout", "2", "--deny-timeout", "60"]),
    );
    let api = ctl.api().clone();
    let api_port = api.addr().rsplit(':').next().unwrap().to_string();
    let of_port = ctl.openflow_port();
    let token = ctl.dir().join("api-token").display().to_string();

    // The model first: networks (blue and red overlap), containers. The
    // hosts are not registered: they will register themselves.
    for (name, subnet, tenant) in [
        ("blue", "10.60.0.0/24", "t1"),
        ("red", "10.60.0.0/24", "t2"),
        ("green", "10.61.0.0/24", "t3"),
    ] {
        api.ok(
            "POST",
            "/api/networks",
            Some(&format!(
                r#"{{"name":"{name}","subnet":"{subnet}","tenant":"{tenant}"}}"#
            )),
        );
    }
    // name, network, host, port: a* on the agent host, o* on the OVS host.
    let layout = [
        ("a1", "blue", "agent1", 1),  // 10.60.0.2
        ("o1", "blue", "ovs1", 2),    // 10.60.0.3
        ("r1", "red", "ovs1", 3),     // 10.60.0.2, as a1
        ("r2", "red", "agent1", 2),   // 10.60.0.3, as o1
        ("g1", "green", "agent1", 3), // 10.61.0.2
        ("g2", "green", "ovs1", 4),   // 10.61.0.3
        ("m1", "blue", "ovs1", 5),    // 10.60.0.4, migrates
    ];
    // The containers come once their hosts have joined.
    let mut agent = lab.agent_stopped(
        &a,
        &[
            "--uplink",
            "up0",
            "--controller",
            &format!("tcp:127.0.0.1:{of_port}"),
            "--api",
            &format!("http://127.0.0.1:{api_port}"),
            "--api-token-file",
            &token,
            "--host-name",
            "agent1",
        ],
    );
    agent.start();
    wait_until("the agent host registered", Duration::from_secs(30), || {
        api.call("GET", "/api/hosts/agent1", None).0 == 200
    });
    let ovs = lab.ovs(&o);
    let db = format!("unix:{}/db.sock", ovs.dir().display());
    let join = o.output(&[
        workspace_bin("daolictl").to_str().unwrap(),
        "--api",
        &format!("http://192.168.91.2:{api_port}"),
        "--token-file",
        &token,
        "host",
        "join-ovs",
        "--bridge",
        BR,
        "--uplink",
        "up0",
        "--controller",
        &format!("tcp:192.168.91.2:{of_port}"),
        "--name",
        "ovs1",
        "--datapath",
        "netdev",
        "--ovs-db",
        &db,
    ]);
    assert!(join.ok, "join-ovs: {}", join.stderr);
    let hosts = api.ok("GET", "/api/hosts", None);
    assert_eq!(hosts.as_array().unwrap().len(), 2, "{hosts}");

    let mut containers: Vec<(String, Netns)> = Vec::new();
    for (id, network, host, port) in layout {
        let c = api.add_container(id, network, host, port);
        let (ip, mac) = (c["ip"].as_str().unwrap(), c["mac"].as_str().unwrap());
        let gw = api.ok("GET", &format!("/api/networks/{network}"), None)["gateway"]
            .as_str()
            .unwrap()
            .to_string();
        let (hns, iface) = if host == "agent1" {
            (&a, format!("p{id}"))
        } else {
            (&o, format!("p{id}"))
        };
        let ns = lab.container(hns, id, &iface, ip, mac);
        ns.ip(&["route", "add", "default", "via", &gw]);
        if host == "agent1" {
            agent.cli(&["port", "add", &iface, "--ofport", &port.to_string()]);
        } else {
            ovs.add_port(BR, &iface, port);
        }
        containers.push((id.to_string(), ns));
    }
    let ns = |id: &str| &containers.iter().find(|(i, _)| i == id).unwrap().1;
    let cl = Cluster {
        api: api.clone(),
        agent,
        ovs,
        a,
        o,
        strict,
    };
    let (a1, o1, r1, r2) = (cl.ip("a1"), cl.ip("o1"), cl.ip("r1"), cl.ip("r2"));
    assert_eq!(
        (a1.as_str(), o1.as_str()),
        (r1.as_str(), r2.as_str()),
        "overlap"
    );

    // Watch the underlay: logical addresses must never appear there.
    let cap = lab.subdir("capture").join("underlay.pcap");
    let cap = cap.to_str().unwrap().to_string();
    let mut tcpdump = capture(&cl.a, "up0", &cap);

    // First ping, both ways, each the first packet of its pair.
    assert!(first_ping(ns("a1"), &o1), "first ping agent -> OVS lost");
    let (fa, fo) = cl.flows_with(&o1);
    assert!(
        !fa.is_empty() && !fo.is_empty(),
        "pair flows on both hosts: {fa:?} {fo:?}"
    );
    cl.wait_expired(&o1);
    assert!(first_ping(ns("o1"), &a1), "first ping OVS -> agent lost");
    cl.wait_expired(&a1);

    // First TCP SYN, both ways.
    first_connect(ns("o1"), ns("a1"), &a1, 7001);
    cl.wait_expired(&a1);
    first_connect(ns("a1"), ns("o1"), &o1, 7002);
    cl.wait_expired(&o1);

    // Overlapping tenants: the same IPs, each reaching its own tenant.
    for (from, to_ip, want, not) in [
        ("o1", &a1, "a1", "r1"),
        ("r1", &r2, "r2", "o1"),
        ("a1", &o1, "o1", "r2"),
        ("r2", &r1, "r1", "a1"),
    ] {
        let (got, other): (UdpSocket, UdpSocket) = (
            ns(want).udp("0.0.0.0:7777").unwrap(),
            ns(not).udp("0.0.0.0:7777").unwrap(),
        );
        got.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        other.set_nonblocking(true).unwrap();
        let sender = ns(from).udp("0.0.0.0:0").unwrap();
        let mut buf = [0u8; 64];
        let mut received = None;
        for _ in 0..3 {
            sender
                .send_to(from.as_bytes(), format!("{to_ip}:7777"))
                .unwrap();
            if let Ok((n, _)) = got.recv_from(&mut buf) {
                received = Some(n);
                break;
            }
        }
        assert_eq!(
            received,
            Some(from.len()),
            "{from} -> {to_ip} did not reach {want}"
        );
        assert!(
            other.recv_from(&mut buf).is_err(),
            "{from} -> {to_ip} leaked to {not}"
        );
    }
    assert!(!first_ping(ns("r1"), &cl.ip("g1")), "red reached green");
    trace_and_observe_on_the_ovs_host(&api);

    // A group join lets the next packet through at once, from either host;
    // g1 -> 10.60.0.3 and g2 -> 10.60.0.2 are ambiguous (two tenants have
    // them), so their drops are keyed by the source alone.
    assert!(!first_ping(ns("g1"), &o1));
    assert!(!first_ping(ns("g2"), &a1));
    // Both sends met their host's denial: on Open vSwitch, punted (through
    // the deny meter) and dropped by the controller.
    let dropped = cl.punted_denials("dropped");
    assert!(!first_ping(ns("g2"), &a1));
    assert!(
        cl.punted_denials("dropped") > dropped,
        "Open vSwitch's denial did not punt"
    );
    let g2_port = "in_port=4,";
    let dump = cl.ovs.dump_flows(BR);
    assert!(
        dump.lines().any(|l| l.contains("hard_timeout=60")
            && l.contains(g2_port)
            && l.ends_with("actions=meter:1,CONTROLLER:65535")),
        "no punting denial for g2 on the OVS host:\n{dump}"
    );
    cl.revalidators("pause");
    let delivered = cl.punted_denials("delivered");
    api.ok(
        "POST",
        "/api/groups",
        Some(r#"{"name":"gb","networks":["green","blue"]}"#),
    );
    assert!(
        first_ping(ns("g1"), &o1),
        "first packet after a group join lost (agent host)"
    );
    let ok = first_ping(ns("g2"), &a1);
    cl.revalidators("resume");
    assert!(ok, "first packet after a group join lost (OVS host)");
    cl.delivered_through_a_stale_denial(delivered, "g2 -> a1 after the group join");
    // And a group leave stops the next packet.
    api.ok("DELETE", "/api/groups/gb/networks/blue", None);
    assert!(
        !first_ping(ns("g1"), &o1),
        "green still reaches blue after the leave"
    );
    assert!(
        !first_ping(ns("g2"), &a1),
        "green still reaches blue after the leave"
    );

    // Disconnect, then connect: the next packet meets the new policy, from
    // either side (each round drops first, installing a drop on its host).
    for (from, to, to_ip) in [("o1", "a1", &a1), ("a1", "o1", &o1)] {
        cl.policy("disconnect", "a1", "o1");
        assert!(
            !first_ping(ns(from), to_ip),
            "{from} -> {to} crossed a disconnect"
        );
        cl.policy("connect", "a1", "o1");
        assert!(
            first_ping(ns(from), to_ip),
            "first packet {from} -> {to} after connect lost"
        );
        cl.wait_expired(to_ip);
    }

    // The same with the first packet sent the moment the policy is in
    // effect (no process start in between): the API answer comes once the
    // switches applied the change (BARRIER_REPLY); on Open vSwitch a
    // datapath flow cached from the deleted denial may outlive it (in
    // strict mode it does), and punts the packet to the controller.
    for (from, to, to_ip) in [("o1", "a1", &a1), ("a1", "o1", &o1)] {
        let rx = ns(to).udp(&format!("{to_ip}:7778")).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let tx = ns(from).udp("0.0.0.0:0").unwrap();
        let mut buf = [0u8; 16];
        cl.policy("disconnect", "a1", "o1");
        // Denied: punted once, then the switch's denial drops (the agent)
        // or punts through the deny meter to be dropped by the controller
        // (Open vSwitch).
        for _ in 0..5 {
            tx.send_to(b"denied", format!("{to_ip}:7778")).unwrap();
            std::thread::sleep(Duration::from_millis(20)); // spacing only
        }
        assert!(
            rx.recv_from(&mut buf).is_err(),
            "{from} -> {to} crossed a disconnect"
        );
        cl.revalidators("pause");
        let delivered = cl.punted_denials("delivered");
        cl.policy("connect", "a1", "o1");
        tx.send_to(b"first", format!("{to_ip}:7778")).unwrap();
        let got = rx.recv_from(&mut buf).map(|(n, _)| buf[..n].to_vec());
        cl.revalidators("resume");
        assert_eq!(
            got.ok().as_deref(),
            Some(&b"first"[..]),
            "{from} -> {to}: the packet sent as `connect` returned was lost"
        );
        if from == "o1" {
            // Denied on the OVS host: its stale denial punted it.
            cl.delivered_through_a_stale_denial(delivered, "o1 -> a1 after connect");
        }
        cl.wait_expired(to_ip);
    }

    if let Some(step) = extra {
        step(&cl, &containers);
    }

    // Migration, OVS -> agent -> OVS, keeping IP and MAC.
    let m1 = cl.container("m1");
    let (mip, mmac) = (
        m1["ip"].as_str().unwrap().to_string(),
        m1["mac"].as_str().unwrap().to_string(),
    );
    assert!(first_ping(ns("m1"), &a1) && first_ping(ns("m1"), &o1));
    let moved = api.ok(
        "POST",
        "/api/containers/m1/move",
        Some(r#"{"host":"agent1","port":6}"#),
    );
    assert_eq!(
        (moved["ip"].as_str(), moved["mac"].as_str()),
        (Some(mip.as_str()), Some(mmac.as_str()))
    );
    cl.ovs.vsctl(&["del-port", BR, "pm1"]);
    replug(&cl.a, ns("m1"), "pm1b", &mip, &mmac, "10.60.0.1");
    cl.agent.cli(&["port", "add", "pm1b", "--ofport", "6"]);
    assert!(
        first_ping(ns("m1"), &a1),
        "after moving to the agent host: same host"
    );
    assert!(
        first_ping(ns("m1"), &o1),
        "after moving to the agent host: to the OVS host"
    );
    assert!(
        first_ping(ns("o1"), &mip),
        "after moving to the agent host: from the OVS host"
    );
    let back = api.ok(
        "POST",
        "/api/containers/m1/move",
        Some(r#"{"host":"ovs1","port":5}"#),
    );
    assert_eq!(
        (back["ip"].as_str(), back["mac"].as_str()),
        (Some(mip.as_str()), Some(mmac.as_str())),
        "moving agent -> OVS changed m1's IP or MAC: {back}"
    );
    cl.agent.cli(&["port", "del", "pm1b"]);
    replug(&cl.o, ns("m1"), "pm1c", &mip, &mmac, "10.60.0.1");
    cl.ovs.add_port(BR, "pm1c", 5);
    assert!(first_ping(ns("m1"), &o1), "after moving back: same host");
    assert!(
        first_ping(ns("m1"), &a1),
        "after moving back: to the agent host"
    );
    assert!(
        first_ping(ns("a1"), &mip),
        "after moving back: from the agent host"
    );

    // The underlay saw physical addresses only.
    tcpdump.terminate(Duration::from_secs(5));
    let read = |filter: &str| -> usize {
        let r = cl.a.output(&["tcpdump", "-n", "-r", &cap, filter]);
        r.stdout.lines().count()
    };
    assert!(
        read("net 172.31.0.0/16") > 0,
        "no container traffic crossed the underlay?"
    );
    assert_eq!(
        read("net 10.60.0.0/15"),
        0,
        "logical addresses on the underlay"
    );
}
