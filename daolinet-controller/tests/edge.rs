//! Privileged: the edge of the network on real hosts. A controller drives
//! an agent host (`daolinet-agent run --api ...`, which registers itself
//! and sets its host up for NAT-out); an outside namespace sits behind a
//! router (the controller's namespace), reached through the host's default
//! route.
//!
//! Shown:
//! - the port-wide drop a container's port got for what it sent before it
//!   was registered goes with the registration (its first packets are not
//!   lost to it for --deny-timeout);
//! - firewall from the outside to containers (two rules on one host),
//!   first SYN delivered (captured at both ends: the server received the
//!   SYN the client sent first, told by its TCP timestamp), and the rules
//!   removed cleanly;
//! - NAT-out by TCP from a container, its first SYN delivered, and the
//!   outside sees only the host's underlay IP (a capture on the outside's
//!   interface: no physical or logical container address);
//! - a network with `nat_out: false` gets nothing out (the outside saw no
//!   SYN of its container's attempt);
//! - after the agent stops, the host's nftables, routes, permanent
//!   neighbours and IPv4 sysctls are as they were before;
//! - an agent that starts while the controller's API does not answer sets
//!   NAT-out up once it does;
//! - traceroute through the virtual routers between two agent hosts: three
//!   hops cross-host (the sender's gateway, the destination host's
//!   underlay IP, the destination) both ways, one hop on the same host, no
//!   physical address;
//! - a forged source IP or MAC from a container gets nothing through once
//!   its pair's flows exist, and is counted: on an agent host by the
//!   datapath (the controller gave the agent the container's MAC and IPv4;
//!   `daolinet_agent_port_drops_total`, reason `spoofed_source`), on an
//!   Open vSwitch host by the controller (`daolinet_denials_total`, reason
//!   `spoofed`: the pair flows match the container's addresses, a forged
//!   source misses them and is denied).
//!
//! The same on an Open vSwitch host joined with `daolictl host join-ovs`
//! (its cross-host hops to an agent host), and after `leave-ovs` its
//! nftables, routes, permanent neighbours and IPv4 sysctls are as
//! before.
//!
//! The hosts run with loose reverse-path filtering (`rp_filter=2`, a common
//! default), which the LOCAL port's design must survive.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use daolinet_testlab::{Api, Controller, Lab, Need, Netns, Proc, TcpProxy};
use serde_json::Value;

const POOL: &str = "172.30.0.0/16";
/// Where an agent serves its metrics, inside its host's namespace.
const AGENT_METRICS: &str = "127.0.0.1:9782";

/// The host's state NAT-out may touch: nftables, IPv4 routes (every
/// table), neighbours, and the IPv4 sysctls (`ip_forward` and every
/// device's `conf`, forwarding included), except those of the agent's own
/// devices (LOCAL, `dllocalN`, and the punt bell, `dlbellN`), which go
/// with the agent.
fn host_state(h: &Netns) -> String {
    let sysctls: String = h
        .run(&["sysctl", "-a", "-r", r"^net\.ipv4\.(ip_forward|conf\.)"])
        .lines()
        .filter(|l| !l.contains(".dllocal") && !l.contains(".dlbell"))
        .map(|l| format!("{l}\n"))
        .collect();
    format!(
        "nft:\n{}\nroutes:\n{}\nneigh:\n{}\nsysctls:\n{sysctls}",
        h.run(&["nft", "list", "ruleset"]),
        h.ip(&["-4", "route", "show", "table", "all"]),
        h.ip(&["-4", "neigh", "show", "nud", "permanent"]),
    )
}

/// A TCP connection from `ns` to `to`, within `within`.
fn connect(ns: &Netns, to: &str, within: Duration) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = to.parse().unwrap();
    ns.enter(move || TcpStream::connect_timeout(&addr, within))
}

/// A TCP echo-once server in `ns` on `addr`: accepts connections, answers
/// each with "hello from <peer address>\n".
fn serve(ns: &Netns, addr: &str) {
    let l = ns.listen(addr).unwrap();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let peer = c.peer_addr().map(|p| p.to_string()).unwrap_or_default();
            let _ = writeln!(c, "hello from {peer}");
        }
    });
}

/// Connect from `client` to `to` and read the server's line; asserts that
/// the client's first SYN reached the server's interface `server`.
///
/// Both sides are captured. A first SYN is told apart from its
/// retransmissions by its TCP timestamp (`TS val`), which a retransmission
/// renews and address translation keeps. A first SYN that the switch held
/// past the client's 1 s retransmission timeout (a slow PACKET_IN round trip
/// on a loaded machine) still arrives: it is late, which this says on
/// stderr, not lost, which fails.
#[track_caller]
fn talk(lab: &Lab, client: &Netns, to: &str, server: (&Netns, &str)) -> String {
    talk_counting(lab, client, to, server).0
}

/// [`talk`], and how many SYNs the client sent.
#[track_caller]
fn talk_counting(lab: &Lab, client: &Netns, to: &str, server: (&Netns, &str)) -> (String, usize) {
    let at_client = Capture::start(client, "eth0", lab.dir());
    let at_server = Capture::start(server.0, server.1, lab.dir());
    let mut c = connect(client, to, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("connecting from {client} to {to}: {e}"));
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut line = String::new();
    c.read_to_string(&mut line).unwrap();
    // tcpdump may not have read the last packets yet: wait for the
    // handshake's ACK, which the client sends after all its SYNs.
    let (ip, port) = to.rsplit_once(':').unwrap();
    let ack = format!("> {ip}.{port}: Flags [.],");
    let mut sent = String::new();
    daolinet_testlab::eventually(Duration::from_secs(5), || {
        sent = at_client.read();
        sent.contains(&ack)
    });
    drop(at_client);
    let syns = syn_timestamps(&sent, to);
    let Some(first) = syns.first() else {
        panic!("no SYN from {client} to {to} in its capture:\n{sent}")
    };
    // A held first SYN may come after the retransmission that got answered.
    let needle = format!("TS val {first} ");
    let mut seen = String::new();
    let arrived = daolinet_testlab::eventually(Duration::from_secs(5), || {
        seen = at_server.read();
        seen.lines()
            .any(|l| l.contains("Flags [S],") && l.contains(&needle))
    });
    drop(at_server);
    assert!(
        arrived,
        "the first SYN from {client} to {to} (TS val {first}) never reached {}:{} \
         ({} SYNs sent):\nclient side:\n{sent}\nserver side:\n{seen}",
        server.0,
        server.1,
        syns.len()
    );
    if syns.len() > 1 {
        eprintln!(
            "note: the first SYN from {client} to {to} was late, not lost: \
             the client sent it {} times, the first one arrived",
            syns.len()
        );
    }
    (line.trim().to_string(), syns.len())
}

/// [`talk`] with the controller (process `ctl`) stopped until the client
/// has sent its SYN again: the first SYN's PACKET_IN waits in the
/// controller's socket past the client's retransmission timeout, so the
/// first SYN is late. Asserts that it was (the client sent it twice or
/// more) and, through [`talk`], that it still arrived.
#[track_caller]
fn talk_with_controller_held(
    lab: &Lab,
    ctl: u32,
    client: &Netns,
    to: &str,
    server: (&Netns, &str),
) -> String {
    /// Lets the controller go on, also when the test fails.
    struct Resume(String);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = daolinet_testlab::output(&["kill", "-CONT", &self.0]);
        }
    }
    let before = syn_retrans(client.name());
    daolinet_testlab::sh(&["kill", "-STOP", &ctl.to_string()]);
    let resume = Resume(ctl.to_string());
    let watched = client.name().to_string();
    let watcher = std::thread::spawn(move || {
        let _resume = resume;
        daolinet_testlab::eventually(Duration::from_secs(10), || syn_retrans(&watched) > before);
    });
    let (said, syns) = talk_counting(lab, client, to, server);
    watcher.join().unwrap();
    assert!(
        syns >= 2,
        "the controller was held, yet the client sent its SYN only {syns} time(s)"
    );
    said
}

/// `TcpExt: TCPSynRetrans` of namespace `ns`: SYNs its kernel sent again.
fn syn_retrans(ns: &str) -> u64 {
    let text = daolinet_testlab::sh(&["ip", "netns", "exec", ns, "cat", "/proc/net/netstat"]);
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "TCPSynRetrans")
        .unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// The `TS val` of each SYN to `to` (`ip:port`) in a capture, in order.
fn syn_timestamps(cap: &str, to: &str) -> Vec<u64> {
    let (ip, port) = to.rsplit_once(':').unwrap();
    let dst = format!("> {ip}.{port}: Flags [S],");
    cap.lines()
        .filter(|l| l.contains(&dst))
        .filter_map(|l| {
            let rest = &l[l.find("TS val ")? + 7..];
            rest.split(|ch: char| !ch.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn syn_timestamps_reads_each_syn_to_the_destination() {
    let cap = "\
10:00:00.1 IP 10.99.0.2.41000 > 192.168.91.2.8080: Flags [S], seq 7, win 64240, options [mss 1460,sackOK,TS val 1000 ecr 0,nop,wscale 7], length 0
10:00:00.2 IP 192.168.91.2.8080 > 10.99.0.2.41000: Flags [S.], seq 9, ack 8, win 65160, options [mss 1460,sackOK,TS val 5 ecr 1000,nop,wscale 7], length 0
10:00:01.1 IP 10.99.0.2.41000 > 192.168.91.2.8080: Flags [S], seq 7, win 64240, options [mss 1460,sackOK,TS val 2013 ecr 0,nop,wscale 7], length 0
10:00:01.2 IP 10.99.0.2.41001 > 192.168.91.2.8081: Flags [S], seq 3, win 64240, options [mss 1460,sackOK,TS val 3000 ecr 0,nop,wscale 7], length 0
";
    assert_eq!(syn_timestamps(cap, "192.168.91.2:8080"), vec![1000, 2013]);
    assert_eq!(syn_timestamps(cap, "192.168.91.2:8081"), vec![3000]);
    assert!(syn_timestamps(cap, "10.99.0.2:41000").is_empty());
}

/// tcpdump on an interface of a namespace, into a file.
struct Capture {
    proc: Proc,
    ns: String,
    file: PathBuf,
}

impl Capture {
    fn start(ns: &Netns, dev: &str, dir: &Path) -> Capture {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let file = dir.join(format!("cap{n}-{ns}-{dev}.pcap"));
        let log = dir.join(format!("cap{n}-{ns}-{dev}.log"));
        // --immediate-mode: a packet reaches the file as it is captured,
        // not when the kernel's ring block fills or times out (tcpdump
        // stopped within a second of a packet would not have it).
        let mut c = ns.command(&["tcpdump", "-i", dev, "-n", "--immediate-mode", "-U", "-w"]);
        c.arg(&file);
        let proc = Proc::spawn(&mut c, &format!("tcpdump in {ns}"), Some(&log));
        daolinet_testlab::wait_until("tcpdump to listen", daolinet_testlab::DEADLINE, || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("listening on"))
        });
        Capture {
            proc,
            ns: ns.to_string(),
            file,
        }
    }

    /// Stop and return the packets as `tcpdump -n -r` prints them.
    fn stop(mut self) -> String {
        self.proc.terminate(Duration::from_secs(5));
        self.read()
    }

    /// The packets written so far (`-U`: each as it is captured).
    fn read(&self) -> String {
        // While tcpdump writes, the file's last packet may be incomplete
        // (tcpdump then says so on stderr): what it could read is enough.
        let r = daolinet_testlab::output(&[
            "ip",
            "netns",
            "exec",
            &self.ns,
            "tcpdump",
            "-n",
            "-r",
            &self.file.display().to_string(),
        ]);
        if r.ok || !r.stdout.is_empty() {
            r.stdout
        } else {
            format!("(tcpdump -r failed: {})", r.stderr.trim())
        }
    }
}

/// The world of one test: the router/controller namespace `r`, the
/// outside `x` behind it, the controller.
struct World {
    r: Netns,
    x: Netns,
    ctl: Controller,
}

/// `r` routes between the hosts' underlay 192.168.91.0/24 (`u0` here) and
/// the outside 10.99.0.0/24 (`x`'s `eth0` is 10.99.0.2); the controller
/// runs in `r` on 192.168.91.1.
fn world(lab: &Lab) -> World {
    let r = lab.netns("r");
    let x = lab.netns("x");
    r.veth_to("o0", &x, "eth0");
    r.addr("o0", "10.99.0.1/24");
    x.addr("eth0", "10.99.0.2/24");
    x.ip(&["route", "add", "default", "via", "10.99.0.1"]);
    r.sysctl("net.ipv4.ip_forward=1");
    // The hosts' underlay: one L2 segment (a bridge in `r`).
    r.ip(&["link", "add", "ul", "type", "bridge"]);
    r.addr("ul", "192.168.91.1/24");
    let ctl = Controller::start(
        &lab.controller_opts()
            .netns(&r)
            .listen("0.0.0.0:0")
            .api("0.0.0.0:0")
            .args(&["--physical-pool", POOL, "--idle-timeout", "5"]),
    );
    World { r, x, ctl }
}

impl World {
    /// Host namespace `h` on the underlay with `ip` (uplink `up0`, `r`'s
    /// side `link`), default route via `r`.
    fn attach(&self, h: &Netns, link: &str, ip: &str) {
        self.r.veth_to(link, h, "up0");
        self.r.ip(&["link", "set", link, "master", "ul"]);
        h.addr("up0", &format!("{ip}/24"));
        h.ip(&["route", "add", "default", "via", "192.168.91.1"]);
    }

    fn api_url(&self) -> String {
        let port = self
            .ctl
            .api()
            .addr()
            .rsplit(':')
            .next()
            .unwrap()
            .to_string();
        format!("http://192.168.91.1:{port}")
    }

    fn post(&self, path: &str, body: &str) -> Value {
        self.ctl.api().ok("POST", path, Some(body))
    }

    /// Networks `out` (10.1.0.0/24, NAT-out) and `closed` (10.2.0.0/24,
    /// `nat_out: false`).
    fn networks(&self) {
        self.post(
            "/api/networks",
            r#"{"name":"out","subnet":"10.1.0.0/24","gateway":"10.1.0.1"}"#,
        );
        self.post(
            "/api/networks",
            r#"{"name":"closed","subnet":"10.2.0.0/24","gateway":"10.2.0.1","nat_out":false}"#,
        );
    }

    /// The namespace of container `id` (`ip` in network `net`, `mac`)
    /// behind port `port` of host namespace `h`, default route via the
    /// network's gateway.
    fn container(lab: &Lab, h: &Netns, id: &str, (ip, mac): (&str, &str), port: &str) -> Netns {
        let ns = lab.container(h, id, port, &format!("{ip}/24"), mac);
        let gw = if ip.starts_with("10.1.") {
            "10.1.0.1"
        } else {
            "10.2.0.1"
        };
        ns.ip(&["route", "add", "default", "via", gw]);
        ns
    }

    /// Register container `id` on OpenFlow port `ofport` of `host`.
    fn register(
        &self,
        id: &str,
        net: &str,
        host: &str,
        ofport: u32,
        (ip, mac): (&str, &str),
    ) -> Value {
        self.post(
            "/api/containers",
            &format!(
                r#"{{"id":"{id}","network":"{net}","host":"{host}","port":{ofport},"ip":"{ip}","mac":"{mac}"}}"#
            ),
        )
    }
}

const A: (&str, &str) = ("10.1.0.2", "02:00:00:00:0a:02");
const B: (&str, &str) = ("10.2.0.2", "02:00:00:00:0b:02");

/// An agent that starts before its controller's API answers (at boot,
/// `--join-timeout 0`) waits to join without changing anything on its
/// host, then joins and sets its host up for NAT-out once the API
/// answers; and stopping it still puts the host back as it was.
#[test]
fn nat_out_waits_for_the_controller_api() {
    let Some(mut lab) = Lab::new(&[
        Need::BpfObject,
        Need::Binary("daolinet-agent"),
        Need::Program("nft"),
    ]) else {
        return;
    };
    let w = world(&lab);
    let h = lab.netns("h");
    w.attach(&h, "u0", "192.168.91.2");
    let before = host_state(&h);
    // The API, through a relay in the host that refuses it for now.
    let target: SocketAddr = w.api_url().trim_start_matches("http://").parse().unwrap();
    let relay = TcpProxy::start(h.name(), target);
    relay.cut();
    let token = w.ctl.dir().join("api-token").display().to_string();
    let of = format!("tcp:192.168.91.1:{}", w.ctl.openflow_port());
    let api = format!("http://{}", relay.addr());
    let mut agent = lab.agent_stopped(
        &h,
        &[
            "--uplink",
            "up0",
            "--controller",
            &of,
            "--api",
            &api,
            "--api-token-file",
            &token,
            "--host-name",
            "h1",
            "--join-timeout",
            "0",
        ],
    );
    let log = agent.log_path().to_path_buf();
    let table = |h: &Netns| h.ok(&["nft", "list", "table", "ip", "daolinet"]);
    std::thread::scope(|s| {
        // start() returns once the agent has joined and answers.
        let starting = s.spawn(|| agent.start());
        daolinet_testlab::wait_until(
            "the agent to find the API unreachable",
            daolinet_testlab::DEADLINE,
            || {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("cannot join yet")
            },
        );
        assert!(!table(&h), "NAT-out set up without a pool");
        let waiting = host_state(&h);
        assert_eq!(
            before, waiting,
            "the host changed while the agent waited to join:\n--- before\n{before}\n--- waiting\n{waiting}"
        );
        relay.restore();
        starting.join().unwrap();
    });
    daolinet_testlab::wait_until(
        "NAT-out to be set up once the API answers",
        daolinet_testlab::DEADLINE,
        || table(&h),
    );
    let nft = h.run(&["nft", "list", "table", "ip", "daolinet"]);
    assert!(
        nft.contains("ip saddr 172.30.0.0/16 oifname \"up0\" masquerade"),
        "{nft}"
    );
    let routes = h.ip(&["-4", "route"]);
    assert!(routes.contains("172.30.0.0/16 dev dllocal"), "{routes}");
    agent.stop();
    let after = host_state(&h);
    assert_eq!(
        before, after,
        "the host changed:\n--- before\n{before}\n--- after\n{after}"
    );
}

/// What the outside saw: every IPv4 address in the capture is the host's,
/// the outside's own or (ARP) its router's.
#[track_caller]
fn only_the_host_seen(cap: &str, host_ip: &str, containers: &[&Value]) {
    assert!(cap.contains(host_ip), "no packet from {host_ip}:\n{cap}");
    for c in containers {
        for key in ["ip", "physical_ip"] {
            let a = c[key].as_str().unwrap();
            assert!(
                !cap.contains(&format!("{a}.")) && !cap.contains(&format!("{a} ")),
                "the outside saw container address {a} ({key}):\n{cap}"
            );
        }
    }
    assert!(!cap.contains("172.30."), "pool address outside:\n{cap}");
}

/// The outside got exactly `n` connection attempts (SYNs to its server):
/// those of the NAT-out container, each sent once. A `nat_out: false`
/// container's attempt (a SYN and its retransmissions within the connect
/// timeout) must not have reached it, even masqueraded as the host.
#[track_caller]
fn only_these_syns_out(cap: &str, n: usize) {
    let syns = cap
        .lines()
        .filter(|l| l.contains("> 10.99.0.2.8000: Flags [S],"))
        .count();
    assert_eq!(
        syns, n,
        "SYNs to the outside server: {syns}, not {n} (a nat_out: false container got out?):\n{cap}"
    );
}

#[test]
fn nat_out_and_firewall_on_an_agent_host() {
    let Some(mut lab) = Lab::new(&[
        Need::BpfObject,
        Need::Binary("daolinet-agent"),
        Need::Program("nft"),
        Need::Program("tcpdump"),
    ]) else {
        return;
    };
    let w = world(&lab);
    let h = lab.netns("h");
    w.attach(&h, "u0", "192.168.91.2");
    // A common default (systemd's): loose reverse-path filtering.
    h.sysctl("net.ipv4.conf.all.rp_filter=2");
    w.networks();
    let a = World::container(&lab, &h, "a", A, "pa");
    let b = World::container(&lab, &h, "b", B, "pb");
    let before = host_state(&h);
    let token = w.ctl.dir().join("api-token").display().to_string();
    let of = format!("tcp:192.168.91.1:{}", w.ctl.openflow_port());
    let api = w.api_url();
    let mut agent = lab.agent(
        &h,
        &[
            "--uplink",
            "up0",
            "--port",
            "pa=1",
            "--port",
            "pb=2",
            "--controller",
            &of,
            "--api",
            &api,
            "--api-token-file",
            &token,
            "--host-name",
            "h1",
        ],
    );
    daolinet_testlab::wait_until(
        "the agent to register and get its base flows",
        daolinet_testlab::DEADLINE,
        || agent.cli(&["flows"]).contains("priority=20"),
    );
    // What a container sends before it is registered (a runtime brings its
    // link up first) gets its port a port-wide drop for --deny-timeout: an
    // ARP from a makes sure port 1 has one.
    assert!(!a.ping("10.1.0.1", 1, 1), "an unregistered port forwarded");
    daolinet_testlab::wait_until(
        "the drop of a's then unknown port",
        daolinet_testlab::DEADLINE,
        || port_drops(&agent.cli(&["flows"])).contains(&1),
    );
    // The registration removes it (the API answers once the switch applied
    // the change): a's first packets are not lost to it.
    let ca = w.register("eg-a", "out", "h1", 1, A);
    let cb = w.register("eg-b", "closed", "h1", 2, B);
    let flows = agent.cli(&["flows"]);
    assert!(
        port_drops(&flows).is_empty(),
        "a registered port kept its drop:\n{flows}"
    );
    // The set-up is there.
    let nft = h.run(&["nft", "list", "table", "ip", "daolinet"]);
    assert!(
        nft.contains("ip saddr 172.30.0.0/16 oifname \"up0\" masquerade"),
        "{nft}"
    );
    let routes = h.ip(&["-4", "route"]);
    assert!(routes.contains("172.30.0.0/16 dev dllocal"), "{routes}");
    assert_eq!(
        h.run(&["cat", "/proc/sys/net/ipv4/conf/up0/forwarding"])
            .trim(),
        "1"
    );

    // Firewall: two rules on this host, the first SYN delivered.
    serve(&a, "0.0.0.0:80");
    serve(&b, "0.0.0.0:81");
    w.post(
        "/api/firewalls",
        r#"{"name":"fa","container":"eg-a","rules":["8080:80/tcp"]}"#,
    );
    w.post(
        "/api/firewalls",
        r#"{"name":"fb","container":"eg-b","rules":["8081:81/tcp"]}"#,
    );
    let said = talk(&lab, &w.x, "192.168.91.2:8080", (&a, "eth0"));
    assert!(said.starts_with("hello from 10.99.0.2:"), "{said}");
    // The second with the controller held past the client's SYN
    // retransmission: a late first SYN is told from a lost one.
    let said =
        talk_with_controller_held(&lab, w.ctl.pid(), &w.x, "192.168.91.2:8081", (&b, "eth0"));
    assert!(said.starts_with("hello from 10.99.0.2:"), "{said}");
    // Removed cleanly: no punt flow left, nothing answers.
    w.ctl.api().ok("DELETE", "/api/firewalls/fa", None);
    w.ctl.api().ok("DELETE", "/api/firewalls/fb", None);
    daolinet_testlab::wait_until(
        "the firewall flows to go",
        daolinet_testlab::DEADLINE,
        || !agent.cli(&["flows"]).contains("priority=200"),
    );
    assert!(connect(&w.x, "192.168.91.2:8080", Duration::from_secs(2)).is_err());

    // NAT-out: the outside sees the host only, the first SYN goes through.
    serve(&w.x, "10.99.0.2:8000");
    let cap = Capture::start(&w.x, "eth0", lab.dir());
    for _ in 0..2 {
        let said = talk(&lab, &a, "10.99.0.2:8000", (&w.x, "eth0"));
        assert!(said.starts_with("hello from 192.168.91.2:"), "{said}");
    }
    // A network without NAT-out gets nothing out.
    let refused = connect(&b, "10.99.0.2:8000", Duration::from_secs(3));
    assert!(refused.is_err(), "nat_out: false let {} out", cb["id"]);
    let seen = cap.stop();
    only_the_host_seen(&seen, "192.168.91.2", &[&ca, &cb]);
    only_these_syns_out(&seen, 2);
    eprintln!("outside capture:\n{seen}");

    // Stopping the agent puts the host back as it was.
    agent.stop();
    let after = host_state(&h);
    assert_eq!(
        before, after,
        "the host changed:\n--- before\n{before}\n--- after\n{after}"
    );
    drop((a, b));
}

/// The ports `flows` (`daolinet-agent flows`) hold a drop flow of a whole
/// port for (`hard_timeout=N, send_flow_rem,priority=100,in_port=P
/// actions=drop`).
fn port_drops(flows: &str) -> Vec<u32> {
    flows
        .lines()
        .filter(|l| l.contains("hard_timeout="))
        .filter_map(|l| {
            l.split_whitespace().find_map(|w| {
                let p: Vec<&str> = w.split(',').collect();
                if p.len() >= 2 && p[p.len() - 2] == "priority=100" {
                    p[p.len() - 1].strip_prefix("in_port=")?.parse().ok()
                } else {
                    None
                }
            })
        })
        .collect()
}

/// `traceroute -n` from `ns` to `to`: the hop addresses, in order.
fn hops(ns: &Netns, to: &str) -> (Vec<String>, String) {
    let out = ns.run(&["traceroute", "-n", "-q", "1", "-w", "5,0,0", "-m", "6", to]);
    let hops = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        .collect();
    (hops, out)
}

#[test]
fn traceroute_and_anti_spoofing_on_agent_hosts() {
    let Some(mut lab) = Lab::new(&[
        Need::BpfObject,
        Need::Binary("daolinet-agent"),
        Need::Program("traceroute"),
    ]) else {
        return;
    };
    let w = world(&lab);
    w.networks();
    let token = w.ctl.dir().join("api-token").display().to_string();
    let of = format!("tcp:192.168.91.1:{}", w.ctl.openflow_port());
    let api = w.api_url();
    let mut agents = Vec::new();
    let mut containers = Vec::new();
    // h1: a (10.1.0.2) and f (10.1.0.6); h2: e (10.1.0.5).
    for (i, name, ip, ctrs) in [
        (
            2,
            "h1",
            "192.168.91.2",
            vec![("a", A), ("f", ("10.1.0.6", "02:00:00:00:0a:06"))],
        ),
        (
            3,
            "h2",
            "192.168.91.4",
            vec![("e", ("10.1.0.5", "02:00:00:00:0a:05"))],
        ),
    ] {
        let h = lab.netns(&format!("h{i}"));
        w.attach(&h, &format!("u{i}"), ip);
        let mut args = vec![
            "--uplink".to_string(),
            "up0".into(),
            "--controller".into(),
            of.clone(),
            "--api".into(),
            api.clone(),
            "--api-token-file".into(),
            token.clone(),
            "--host-name".into(),
            name.into(),
            "--metrics".into(),
            AGENT_METRICS.into(),
        ];
        for (n, (id, addr)) in ctrs.iter().enumerate() {
            let port = format!("p{id}");
            containers.push((
                World::container(&lab, &h, id, *addr, &port),
                *id,
                name,
                n + 1,
                *addr,
            ));
            args.push("--port".into());
            args.push(format!("{port}={}", n + 1));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let agent = lab.agent(&h, &args);
        daolinet_testlab::wait_until(
            "the agent to register and get its base flows",
            daolinet_testlab::DEADLINE,
            || agent.cli(&["flows"]).contains("priority=20"),
        );
        agents.push((h, agent));
    }
    for (_, id, host, port, addr) in &containers {
        w.register(&format!("eg-{id}"), "out", host, *port as u32, *addr);
    }
    // What the containers sent before they were registered (IPv6 router
    // solicitations on link up) got their ports a drop flow; the
    // registrations removed them.
    for (_, agent) in &agents {
        let flows = agent.cli(&["flows"]);
        assert!(
            port_drops(&flows).is_empty(),
            "a registered port kept its drop:\n{flows}"
        );
    }
    let a = &containers[0].0;
    // Cross-host: the gateway (a's side), h2's underlay IP, e.
    let (cross, out) = hops(a, "10.1.0.5");
    eprintln!("{out}");
    assert_eq!(
        cross,
        ["10.1.0.1", "192.168.91.4", "10.1.0.5"],
        "{out}\nh1 flows:\n{}\nh1 status: {}\nh2 flows:\n{}\nmetrics:\n{}\ncontainers: {}",
        agents[0].1.cli(&["flows"]),
        agents[0].1.cli(&["status"]),
        agents[1].1.cli(&["flows"]),
        w.ctl.api().text("/metrics"),
        w.ctl.api().ok("GET", "/api/containers", None),
    );
    assert!(
        !out.contains("172.30."),
        "a physical address showed:\n{out}"
    );
    // The other way round too.
    let (back, out) = hops(&containers[2].0, "10.1.0.2");
    assert_eq!(back, ["10.1.0.1", "192.168.91.2", "10.1.0.2"], "{out}");
    // Same host: one hop.
    let (same, out) = hops(a, "10.1.0.6");
    assert_eq!(same, ["10.1.0.6"], "{out}");

    // Anti-spoofing: the controller gave h1's agent a's MAC and IPv4, so its
    // datapath drops a forged source before any flow and counts it.
    let h1_metrics = Api::new(AGENT_METRICS, None).in_netns(&agents[0].0);
    let spoofed = |_: &World| -> u64 {
        let m = h1_metrics.text("/metrics");
        m.lines()
            .find_map(|l| {
                l.strip_prefix(
                    "daolinet_agent_port_drops_total{port=\"pa\",ofport=\"1\",reason=\"spoofed_source\"} ",
                )
            })
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no spoofed drops of pa in the metrics:\n{m}"))
    };
    assert!(a.ping("10.1.0.5", 1, 3), "a lost e");
    forged_sources_are_dropped_and_counted(&w, a, spoofed);
}

/// Container `c` (which reaches 10.1.0.5) forges its IPv4 source, then its
/// MAC: both are dropped, and each raises `count` (the host kind's spoofing
/// counter). `c` keeps the forged MAC afterwards.
#[track_caller]
fn forged_sources_are_dropped_and_counted(w: &World, c: &Netns, count: impl Fn(&World) -> u64) {
    let before = count(w);
    c.ip(&["addr", "add", "10.1.0.9/32", "dev", "eth0"]);
    let forged_ip = c.ok(&[
        "ping", "-n", "-c", "2", "-W", "2", "-I", "10.1.0.9", "10.1.0.5",
    ]);
    assert!(!forged_ip, "a forged IPv4 source got through");
    let after_ip = count(w);
    assert!(
        after_ip > before,
        "forged IP not counted: {before} -> {after_ip}"
    );
    c.ip(&["addr", "del", "10.1.0.9/32", "dev", "eth0"]);
    c.ip(&["link", "set", "eth0", "address", "02:00:00:00:0a:99"]);
    assert!(!c.ping("10.1.0.5", 2, 2), "a forged MAC got through");
    let after_mac = count(w);
    assert!(
        after_mac > after_ip,
        "forged MAC not counted: {after_ip} -> {after_mac}"
    );
}

/// The `daolinet_denials_total{reason="spoofed"}` of the controller.
fn spoofed(w: &World) -> u64 {
    let m = w.ctl.api().text("/metrics");
    m.lines()
        .find_map(|l| l.strip_prefix("daolinet_denials_total{reason=\"spoofed\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no spoofed denials in the metrics:\n{m}"))
}

/// An Open vSwitch host `o` (192.168.91.3, containers c and d of the
/// agent test's networks, g beside c) joined with `daolictl host join-ovs`,
/// and an agent host `h` (192.168.91.2, container e) for the cross-host
/// hops: NAT-out, `nat_out: false`, firewall, traceroute, anti-spoofing,
/// and the host as it was after `leave-ovs`.
#[test]
fn the_edge_of_an_ovs_host() {
    let mut needs = vec![
        Need::BpfObject,
        Need::Binary("daolinet-agent"),
        Need::Binary("daolictl"),
        Need::Program("nft"),
        Need::Program("tcpdump"),
        Need::Program("traceroute"),
    ];
    needs.extend(
        daolinet_testlab::OVS_PROGRAMS
            .iter()
            .map(|p| Need::Program(p)),
    );
    let Some(mut lab) = Lab::new(&needs) else {
        return;
    };
    let w = world(&lab);
    w.networks();
    let o = lab.netns("o");
    w.attach(&o, "u0", "192.168.91.3");
    // A common default (systemd's): loose reverse-path filtering.
    o.sysctl("net.ipv4.conf.all.rp_filter=2");
    let ovs = lab.ovs(&o);
    const G: (&str, &str) = ("10.1.0.6", "02:00:00:00:0a:06");
    const E: (&str, &str) = ("10.1.0.5", "02:00:00:00:0a:05");
    let c = World::container(&lab, &o, "c", A, "pc");
    let d = World::container(&lab, &o, "d", B, "pd");
    let g = World::container(&lab, &o, "g", G, "pg");
    let before = host_state(&o);
    let token = w.ctl.dir().join("api-token").display().to_string();
    let of = format!("tcp:192.168.91.1:{}", w.ctl.openflow_port());
    let api = w.api_url();
    let db = format!("unix:{}/db.sock", ovs.dir().display());
    let daolictl = |args: &[&str]| {
        let mut full = vec![
            env!("CARGO_BIN_EXE_daolictl"),
            "--api",
            &api,
            "--token-file",
            &token,
        ];
        full.extend_from_slice(args);
        o.output(&full)
    };
    let r = daolictl(&[
        "host",
        "join-ovs",
        "--bridge",
        "brx",
        "--uplink",
        "up0",
        "--name",
        "o1",
        "--datapath",
        "netdev",
        "--ovs-db",
        &db,
        "--controller",
        &of,
    ]);
    assert!(r.ok, "join failed: {}\n{}", r.stderr, r.stdout);
    for (port, n) in [("pc", 1), ("pd", 2), ("pg", 3)] {
        ovs.add_port("brx", port, n);
    }
    // The agent host, for the cross-host hops.
    let h = lab.netns("h");
    w.attach(&h, "u1", "192.168.91.2");
    let e = World::container(&lab, &h, "e", E, "pe");
    let agent = lab.agent(
        &h,
        &[
            "--uplink",
            "up0",
            "--port",
            "pe=1",
            "--controller",
            &of,
            "--api",
            &api,
            "--api-token-file",
            &token,
            "--host-name",
            "h1",
        ],
    );
    daolinet_testlab::wait_until(
        "the agent to register and get its base flows",
        daolinet_testlab::DEADLINE,
        || agent.cli(&["flows"]).contains("priority=20"),
    );
    let cc = w.register("eg-c", "out", "o1", 1, A);
    let cd = w.register("eg-d", "closed", "o1", 2, B);
    w.register("eg-g", "out", "o1", 3, G);
    w.register("eg-e", "out", "h1", 1, E);
    // The set-up is there.
    let nft = o.run(&["nft", "list", "table", "ip", "daolinet"]);
    assert!(
        nft.contains("ip saddr 172.30.0.0/16 oifname \"brx\" masquerade"),
        "{nft}"
    );
    let routes = o.ip(&["-4", "route"]);
    assert!(routes.contains("172.30.0.0/16 via"), "{routes}");
    assert!(routes.contains("dev brx"), "{routes}");

    // Firewall: two rules on this host, the first SYN delivered.
    serve(&c, "0.0.0.0:80");
    serve(&d, "0.0.0.0:81");
    w.post(
        "/api/firewalls",
        r#"{"name":"fc","container":"eg-c","rules":["8080:80/tcp"]}"#,
    );
    w.post(
        "/api/firewalls",
        r#"{"name":"fd","container":"eg-d","rules":["8081:81/tcp"]}"#,
    );
    let said = talk(&lab, &w.x, "192.168.91.3:8080", (&c, "eth0"));
    assert!(said.starts_with("hello from 10.99.0.2:"), "{said}");
    let said = talk(&lab, &w.x, "192.168.91.3:8081", (&d, "eth0"));
    assert!(said.starts_with("hello from 10.99.0.2:"), "{said}");
    // Removed cleanly: no punt flow left, nothing answers.
    w.ctl.api().ok("DELETE", "/api/firewalls/fc", None);
    w.ctl.api().ok("DELETE", "/api/firewalls/fd", None);
    let flows = ovs.dump_flows("brx");
    assert!(!flows.contains("priority=200"), "{flows}");
    assert!(connect(&w.x, "192.168.91.3:8080", Duration::from_secs(2)).is_err());

    // NAT-out: the outside sees the host only, the first SYN goes through.
    serve(&w.x, "10.99.0.2:8000");
    let cap = Capture::start(&w.x, "eth0", lab.dir());
    for _ in 0..2 {
        let said = talk(&lab, &c, "10.99.0.2:8000", (&w.x, "eth0"));
        assert!(said.starts_with("hello from 192.168.91.3:"), "{said}");
    }
    // A network without NAT-out gets nothing out.
    let refused = connect(&d, "10.99.0.2:8000", Duration::from_secs(3));
    assert!(refused.is_err(), "nat_out: false let {} out", cd["id"]);
    let seen = cap.stop();
    only_the_host_seen(&seen, "192.168.91.3", &[&cc, &cd]);
    only_these_syns_out(&seen, 2);
    eprintln!("outside capture:\n{seen}");

    // traceroute: 3 hops cross-host both ways, 1 on the same host.
    let (cross, out) = hops(&c, "10.1.0.5");
    eprintln!("{out}");
    assert_eq!(
        cross,
        ["10.1.0.1", "192.168.91.2", "10.1.0.5"],
        "{out}\nbrx flows:\n{}",
        ovs.dump_flows("brx")
    );
    assert!(
        !out.contains("172.30."),
        "a physical address showed:\n{out}"
    );
    let (back, out) = hops(&e, "10.1.0.2");
    assert_eq!(
        back,
        ["10.1.0.1", "192.168.91.3", "10.1.0.2"],
        "{out}\nbrx flows:\n{}",
        ovs.dump_flows("brx")
    );
    assert!(
        !out.contains("172.30."),
        "a physical address showed:\n{out}"
    );
    let (same, out) = hops(&c, "10.1.0.6");
    assert_eq!(same, ["10.1.0.6"], "{out}");

    // Anti-spoofing by flow on the OVS host: forged IP, then forged MAC.
    assert!(c.ping("10.1.0.5", 1, 3), "c lost e");
    forged_sources_are_dropped_and_counted(&w, &c, spoofed);

    // Leaving puts the host back as it was.
    for id in ["eg-c", "eg-d", "eg-g"] {
        w.ctl
            .api()
            .ok("DELETE", &format!("/api/containers/{id}"), None);
    }
    let r = daolictl(&["host", "leave-ovs", "--ovs-db", &db]);
    assert!(r.ok, "leave failed: {}", r.stderr);
    let after = host_state(&o);
    assert_eq!(
        before, after,
        "the host changed:\n--- before\n{before}\n--- after\n{after}"
    );
    drop((c, d, g, e));
}
