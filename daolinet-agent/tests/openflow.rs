//! Privileged: the agent as an OpenFlow 1.3 switch, driven by tools and
//! controllers we did not write (ovs-ofctl, ovs-testcontroller) and by a
//! hostile peer over real TCP connections.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use daolinet_openflow::{self as of, Frame, Message};
use daolinet_testlab::{wait_poll, Agent, Lab, Need, Netns, Poll};

/// The agent's OpenFlow listener, inside the test's host namespace.
const OF_PORT: &str = "6634";
/// The controller port (ovs-testcontroller, our own), inside the host namespace.
const CTL_PORT: &str = "6653";

/// A lab for a test of this file: the BPF object, ping, and `more`.
fn lab(more: &[Need]) -> Option<Lab> {
    let mut needs = vec![Need::BpfObject, Need::Program("ping")];
    needs.extend_from_slice(more);
    Lab::new(&needs)
}

/// A host namespace with an uplink veth and two containers (pa=1, pb=2).
fn topology(lab: &mut Lab, static_arp: bool) -> (Netns, Netns, Netns) {
    let h = lab.netns("h");
    h.veth("up0", "up0p");
    let a = lab.container(&h, "a", "pa", "10.1.0.2", "02:00:00:00:00:0a");
    let b = lab.container(&h, "b", "pb", "10.1.0.3", "02:00:00:00:00:0b");
    if static_arp {
        for (c, ip, mac) in [
            (&a, "10.1.0.3", "02:00:00:00:00:0b"),
            (&b, "10.1.0.2", "02:00:00:00:00:0a"),
        ] {
            c.ip(&["neigh", "add", ip, "lladdr", mac, "dev", "eth0"]);
        }
    }
    (h, a, b)
}

/// Start the agent of `h` with the uplink `up0` and the two container ports
/// of `topology` (pa=1, pb=2), plus `extra` arguments.
fn start_two_port_agent(lab: &mut Lab, h: &Netns, extra: &[&str]) -> Agent {
    let mut args = vec!["--uplink", "up0", "--port", "pa=1", "--port", "pb=2"];
    args.extend_from_slice(extra);
    lab.agent(h, &args)
}

fn ofctl(h: &Netns, args: &[&str]) -> String {
    let target = format!("tcp:127.0.0.1:{OF_PORT}");
    let mut full = vec!["ovs-ofctl", "-O", "OpenFlow13"];
    let opts = args.iter().take_while(|a| a.starts_with("--")).count();
    full.extend_from_slice(&args[..=opts]);
    full.push(&target);
    full.extend_from_slice(&args[opts + 1..]);
    let r = h.output(&full);
    assert!(r.ok, "ovs-ofctl {args:?} failed: {}", r.stderr);
    r.stdout
}

/// Make the host namespace `h`'s own stack send a datagram out of port
/// `port` (to IPv6 all-nodes, from the port's link-local address), as it
/// does unprompted with router solicitations and MLD reports. Such frames
/// go straight into the container: the agent only sees a port's ingress.
fn host_stack_sends_on(h: &Netns, port: &str) {
    // The link-local address is usable once duplicate address detection
    // is over (no longer "tentative").
    wait_poll(
        &format!("a link-local address on {port}"),
        Duration::from_secs(20),
        || {
            let out = h
                .output(&[
                    "ip", "-6", "-o", "addr", "show", "dev", port, "scope", "link",
                ])
                .stdout;
            if out.contains("fe80") && !out.contains("tentative") {
                Poll::Ready(())
            } else {
                Poll::Pending(out)
            }
        },
    );
    let idx = h.run(&["cat", &format!("/sys/class/net/{port}/ifindex")]);
    let idx: u32 = idx.trim().parse().expect("ifindex");
    let all_nodes = std::net::SocketAddrV6::new(
        std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
        9,
        0,
        idx,
    );
    let s = h.udp("[::]:0").expect("udp socket in the host namespace");
    s.send_to(b"not from the agent", all_nodes)
        .expect("send on the port from the host stack");
}

/// Wait until the agent's OpenFlow listener is up in `h`.
fn wait_listener(h: &Netns) {
    h.wait_tcp_listening(OF_PORT.parse().expect("port"), Duration::from_secs(30));
}

#[test]
fn ovs_ofctl_installs_dumps_deletes_and_packets_out() {
    let Some(mut lab) = lab(&[Need::Program("ovs-ofctl")]) else {
        return;
    };
    let (h, a, b) = topology(&mut lab, true);
    let agent = start_two_port_agent(
        &mut lab,
        &h,
        &[
            "--listen",
            &format!("ptcp:{OF_PORT}"),
            "--datapath-id",
            "00000000000000d1",
        ],
    );
    wait_listener(&h);
    assert!(!a.ok(&["ping", "-c", "1", "-W", "1", "10.1.0.3"]));

    let desc = ofctl(&h, &["show"]);
    assert!(desc.contains("dpid:00000000000000d1"), "{desc}");
    assert!(desc.contains("1(pa)") && desc.contains("2(pb)"), "{desc}");

    ofctl(
        &h,
        &[
            "add-flow",
            "cookie=0x10,priority=100,in_port=1,ip,nw_dst=10.1.0.3,actions=output:2",
        ],
    );
    ofctl(
        &h,
        &[
            "add-flow",
            "cookie=0x10,priority=100,in_port=2,ip,nw_dst=10.1.0.2,actions=output:1",
        ],
    );
    ofctl(&h, &["add-flow", "cookie=0x20,priority=5,arp,actions=drop"]);
    assert!(
        a.ok(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.1.0.3"]),
        "ping failed with the flows ovs-ofctl installed"
    );
    let dump = ofctl(&h, &["dump-flows"]);
    assert_eq!(dump.matches("n_packets=3,").count(), 2, "{dump}");
    assert!(
        dump.contains("priority=100,ip,in_port=1,nw_dst=10.1.0.3 actions=output:2")
            || dump.contains("priority=100,ip,in_port=1,nw_dst=10.1.0.3 actions=output:\"pb\""),
        "{dump}"
    );
    assert!(dump.contains("arp actions=drop"), "{dump}");

    // Our own dump says the same.
    let ours = agent.cli(&["flows"]);
    assert_eq!(ours.matches("n_packets=3,").count(), 2, "{ours}");

    let ports = ofctl(&h, &["dump-ports"]);
    assert!(
        ports.contains("port  \"pa\"") || ports.contains("port  1"),
        "{ports}"
    );
    assert!(ports.contains("rx pkts="), "{ports}");

    // A strict delete of a flow that does not exist changes nothing.
    ofctl(
        &h,
        &[
            "--strict",
            "del-flows",
            "priority=99,in_port=1,ip,nw_dst=10.1.0.3",
        ],
    );
    assert_eq!(ofctl(&h, &["dump-flows"]).matches("cookie=").count(), 3);
    // Delete by cookie mask.
    ofctl(&h, &["del-flows", "cookie=0x10/-1"]);
    let dump = ofctl(&h, &["dump-flows"]);
    assert_eq!(dump.matches("cookie=").count(), 1, "{dump}");
    assert!(!a.ok(&["ping", "-c", "1", "-W", "1", "10.1.0.3"]));

    // PACKET_OUT: UDP datagrams from a (10.1.0.2:1234) to b (10.1.0.3:5678),
    // sent out port 2 by the agent; b's socket must receive each exactly
    // once, in order. b's interface counters are no measure of that: the
    // host's own stack sends on pb too (IPv6 router solicitations up to
    // ~9 s after the link came up, MLD reports), which made this check fail
    // about one run in five; `host_stack_sends_on` makes it happen on
    // every run.
    let rx = b.udp("10.1.0.3:5678").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    host_stack_sends_on(&h, "pb");
    for payload in ["ab", "cd"] {
        let frame = format!(
            "02000000000b02000000000a08004500001e00010000401166c80a0100020a010003\
             04d2162e000a0000{}00",
            payload
                .bytes()
                .map(|c| format!("{c:02x}"))
                .collect::<String>()
        );
        ofctl(
            &h,
            &[
                "packet-out",
                &format!("in_port=1 packet={frame} actions=output:2"),
            ],
        );
        let mut buf = [0u8; 64];
        let (n, from) = rx.recv_from(&mut buf).expect("PACKET_OUT did not reach b");
        assert_eq!(
            (&buf[..n], from.to_string()),
            (payload.as_bytes(), "10.1.0.2:1234".to_string()),
            "b received something else than the PACKET_OUT {payload:?}"
        );
    }

    // Unsupported things get the OpenFlow error and change nothing.
    let r = h.output(&[
        "ovs-ofctl",
        "-O",
        "OpenFlow13",
        "add-flow",
        &format!("tcp:127.0.0.1:{OF_PORT}"),
        "reg0=5,ip,actions=output:2",
    ]);
    assert!(
        !r.ok && r.stderr.contains("OFPBMC_BAD_FIELD"),
        "{}",
        r.stderr
    );
    ofctl(&h, &["del-flows"]);
    assert_eq!(ofctl(&h, &["dump-flows"]).matches("cookie=").count(), 0);
}

#[test]
fn ovs_testcontroller_learns_and_containers_ping() {
    let Some(mut lab) = lab(&[Need::Program("ovs-testcontroller")]) else {
        return;
    };
    let (h, a, _b) = topology(&mut lab, false);
    // The learning switch with wildcarded flows (in_port, dl_vlan, dl_src,
    // dl_dst), what our classifier supports.
    let ctl = format!("--unixctl={}", lab.dir().join("otc.ctl").display());
    let _otc = h.spawn(&[
        "ovs-testcontroller",
        "--wildcards",
        &ctl,
        &format!("ptcp:{CTL_PORT}:127.0.0.1"),
    ]);
    h.wait_tcp_listening(CTL_PORT.parse().expect("port"), Duration::from_secs(30));
    let agent = start_two_port_agent(
        &mut lab,
        &h,
        &["--controller", &format!("tcp:127.0.0.1:{CTL_PORT}")],
    );
    let ok = daolinet_testlab::eventually(Duration::from_secs(30), || {
        a.ok(&["ping", "-c", "1", "-W", "1", "10.1.0.3"])
    });
    assert!(ok, "no ping through ovs-testcontroller");
    assert!(a.ok(&["ping", "-c", "5", "-i", "0.2", "-W", "2", "10.1.0.3"]));
    let flows = agent.cli(&["flows"]);
    // The learned flows carry the traffic in the datapath.
    let busy = flows
        .lines()
        .filter(|l| {
            l.contains("dl_dst=02:00:00:00:00:0b") || l.contains("dl_dst=02:00:00:00:00:0a")
        })
        .filter(|l| !l.contains("n_packets=0,"))
        .count();
    assert!(busy >= 2, "learned flows did not carry the pings:\n{flows}");
}

struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn new(h: &Netns) -> Client {
        let s = h.connect(&format!("127.0.0.1:{OF_PORT}")).expect("connect");
        Client::over(s)
    }
    /// Handshake on an established connection (either direction).
    fn over(s: TcpStream) -> Client {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut c = Client { s, buf: Vec::new() };
        c.send(1, Message::Hello(of::Hello::new()));
        assert!(matches!(
            c.recv(Duration::from_secs(5)),
            Some(Frame {
                message: Message::Hello(_),
                ..
            })
        ));
        c
    }
    fn send(&mut self, xid: u32, m: Message) {
        self.s.write_all(&m.to_bytes(xid).unwrap()).unwrap();
    }
    fn recv(&mut self, within: Duration) -> Option<Frame> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some((f, used))) = of::decode(&self.buf) {
                self.buf.drain(..used);
                return Some(f);
            }
            if Instant::now() > deadline {
                return None;
            }
            let mut b = [0u8; 65536];
            match self.s.read(&mut b) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
                Err(_) => {}
            }
        }
    }
    /// Wait for a message satisfying `f`.
    fn wait(&mut self, within: Duration, f: impl Fn(&Message) -> bool) -> Option<Frame> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(fr) = self.recv(deadline - Instant::now()) {
                if f(&fr.message) {
                    return Some(fr);
                }
            }
        }
        None
    }
    fn barrier(&mut self, xid: u32) {
        self.send(xid, Message::BarrierRequest);
        assert!(self
            .wait(Duration::from_secs(5), |m| matches!(
                m,
                Message::BarrierReply
            ))
            .is_some());
    }
}

/// After a PACKET_IN the agent's punt reader busy-waits for the answer and
/// handles it itself (`--reply-spin-us`); otherwise, or when the answer is
/// late, the connection's task does. Answers split across writes at every
/// kind of moment (within the spin, across its end, long after) must still
/// be handled whole and in order: flows installed, barriers answered in
/// order, PACKET_OUTs delivered.
#[test]
fn answers_split_across_writes_are_handled_whole_and_in_order() {
    let Some(mut lab) = lab(&[]) else {
        return;
    };
    let (h, a, b) = topology(&mut lab, true);
    let agent = start_two_port_agent(
        &mut lab,
        &h,
        &[
            "--listen",
            &format!("ptcp:{OF_PORT}"),
            "--packet-in-rate",
            "0",
        ],
    );
    wait_listener(&h);
    let mut c = Client::new(&h);
    let miss = of::FlowMod::add(of::Match::new())
        .priority(0)
        .apply(vec![of::Action::controller(of::OFPCML_NO_BUFFER)]);
    c.send(2, Message::FlowMod(miss));
    c.barrier(3);
    let tx = a.udp("10.1.0.2:40000").unwrap();
    tx.connect("10.1.0.3:40001").unwrap();
    let rx = b.udp("10.1.0.3:40001").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let delays = [0, 50, 150, 400, 2000].map(Duration::from_micros);
    let rounds = 25u32;
    for round in 0..rounds {
        tx.send(&round.to_be_bytes()).unwrap();
        // This round's datagram (not, e.g., IPv6 neighbour discovery from
        // A's new interface): the payload after Ethernet, IPv4 and UDP.
        let fr = c
            .wait(Duration::from_secs(3), |m| {
                matches!(m, Message::PacketIn(p) if p.in_port() == Some(1)
                    && p.data.get(42..46) == Some(&round.to_be_bytes()[..]))
            })
            .unwrap_or_else(|| panic!("round {round}: no PACKET_IN"));
        let Message::PacketIn(pi) = fr.message else {
            unreachable!()
        };
        let dst = std::net::Ipv4Addr::new(10, 9, 0, round as u8);
        let fm = of::FlowMod::add(of::Match::new().eth_type(0x0800).ipv4_dst(dst))
            .priority(10)
            .cookie(0x5a)
            .apply(vec![of::Action::output(2)]);
        let mut answer = Message::FlowMod(fm).to_bytes(100 + round).unwrap();
        answer.extend(Message::BarrierRequest.to_bytes(1000 + round).unwrap());
        let po = of::PacketOut::new(1, vec![of::Action::output(2)], pi.data);
        answer.extend(Message::PacketOut(po).to_bytes(2000 + round).unwrap());
        let split = 1 + (round as usize * 37) % (answer.len() - 1);
        c.s.write_all(&answer[..split]).unwrap();
        std::thread::sleep(delays[round as usize % delays.len()]);
        c.s.write_all(&answer[split..]).unwrap();
        let fr = c
            .wait(Duration::from_secs(3), |m| {
                matches!(m, Message::BarrierReply | Message::Error(_))
            })
            .unwrap_or_else(|| panic!("round {round}: no BARRIER_REPLY"));
        assert!(
            matches!(fr.message, Message::BarrierReply) && fr.xid == 1000 + round,
            "round {round} (split at {split}): {fr:?}"
        );
        let mut got = [0u8; 16];
        let n = rx
            .recv(&mut got)
            .unwrap_or_else(|e| panic!("round {round}: PACKET_OUT not delivered: {e}"));
        assert_eq!(&got[..n], &round.to_be_bytes(), "round {round}");
    }
    let flows = agent.cli(&["flows"]);
    assert_eq!(
        flows.matches("cookie=0x5a").count(),
        rounds as usize,
        "{flows}"
    );
}

#[test]
fn idle_timeout_removes_the_quiet_flow_and_sends_flow_removed() {
    let Some(mut lab) = lab(&[]) else {
        return;
    };
    let (h, a, _b) = topology(&mut lab, true);
    let agent = start_two_port_agent(&mut lab, &h, &["--listen", &format!("ptcp:{OF_PORT}")]);
    wait_listener(&h);
    let mut c = Client::new(&h);
    for flow in [
        // Busy: the pings' way there and back.
        "cookie=0xb,idle_timeout=2,send_flow_rem,in_port=1,ip,nw_dst=10.1.0.3 actions=output:2",
        "cookie=0xb,idle_timeout=2,send_flow_rem,in_port=2,ip,nw_dst=10.1.0.2 actions=output:1",
        // Quiet: nobody talks to 10.1.0.9.
        "cookie=0xc,idle_timeout=2,send_flow_rem,in_port=1,ip,nw_dst=10.1.0.9 actions=output:2",
    ] {
        c.send(2, Message::FlowMod(flow.parse().unwrap()));
    }
    c.barrier(3);
    let start = Instant::now();
    let _ping = a.spawn(&["ping", "-i", "0.2", "-c", "25", "10.1.0.3"]);
    let fr = c
        .wait(Duration::from_secs(6), |m| {
            matches!(m, Message::FlowRemoved(_))
        })
        .expect("no FLOW_REMOVED");
    let Message::FlowRemoved(fr) = fr.message else {
        unreachable!()
    };
    let took = start.elapsed();
    assert_eq!(fr.cookie, 0xc, "{fr:?}");
    assert_eq!(fr.reason, of::OFPRR_IDLE_TIMEOUT);
    assert_eq!(fr.idle_timeout, 2);
    assert!(
        took >= Duration::from_millis(1500),
        "removed too early: {took:?}"
    );
    let flows = agent.cli(&["flows"]);
    assert!(
        !flows.contains("10.1.0.9"),
        "quiet flow still there:\n{flows}"
    );
    assert_eq!(
        flows.matches("cookie=0xb").count(),
        2,
        "busy flows gone:\n{flows}"
    );
    // ...and not only in userspace: the datapath forgot it too (a packet
    // to 10.1.0.9 is punted, which the PACKET_IN shows).
    assert!(!a.ok(&["ping", "-c", "1", "-W", "1", "10.1.0.9"]));
    assert!(c
        .wait(
            Duration::from_secs(3),
            |m| matches!(m, Message::PacketIn(p) if p.reason == of::OFPR_NO_MATCH)
        )
        .is_some());
}

#[test]
fn hostile_controller_bytes_never_crash_the_agent_nor_touch_the_table() {
    let Some(mut lab) = lab(&[]) else {
        return;
    };
    let (h, a, _b) = topology(&mut lab, true);
    let mut agent = start_two_port_agent(&mut lab, &h, &["--listen", &format!("ptcp:{OF_PORT}")]);
    wait_listener(&h);
    let mut c = Client::new(&h);
    // One write with 200 FLOW_MODs: the agent writes them to the maps in
    // batches; the two that forward must work in the datapath.
    let mut wire = Vec::new();
    for i in 0..198u32 {
        let fm: of::FlowMod = format!(
            "cookie=0x2,in_port=1,ip,nw_dst=10.2.{}.{} actions=output:2",
            i / 100,
            i % 100
        )
        .parse()
        .unwrap();
        wire.extend(Message::FlowMod(fm).to_bytes(2).unwrap());
    }
    for flow in [
        "cookie=0x1,in_port=1,ip,nw_dst=10.1.0.3 actions=output:2",
        "cookie=0x1,in_port=2,ip,nw_dst=10.1.0.2 actions=output:1",
    ] {
        wire.extend(Message::FlowMod(flow.parse().unwrap()).to_bytes(2).unwrap());
    }
    c.s.write_all(&wire).unwrap();
    c.barrier(3);
    assert!(
        a.ok(&["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.1.0.3"]),
        "flows written in a batch do not forward"
    );
    let before = agent.cli(&["flows"]);

    let good = Message::FlowMod(
        "cookie=0x66,ip,nw_dst=10.9.9.9 actions=output:1"
            .parse()
            .unwrap(),
    )
    .to_bytes(9)
    .unwrap();
    let mut attacks: Vec<Vec<u8>> = vec![
        // Garbage.
        (0..4000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
            .collect(),
        // Header length below 8: unrecoverable, the agent must disconnect.
        vec![4, 14, 0, 4, 0, 0, 0, 1],
        // A FLOW_MOD whose match length lies (points past the message).
        {
            let mut b = good.clone();
            b[50] = 0xff;
            b
        },
        // A FLOW_MOD cut short but with a header claiming the full length,
        // then the connection closes.
        good[..good.len() - 8].to_vec(),
        // Wrong version.
        {
            let mut b = good.clone();
            b[0] = 1;
            b
        },
        // Unknown type, huge length.
        vec![4, 0xee, 0xff, 0xff, 0, 0, 0, 7],
    ];
    // Flip bytes of a valid FLOW_MOD's match and action part.
    for i in 0..200usize {
        let mut b = good.clone();
        let at = 8 + (i * 7919) % (good.len() - 8);
        b[at] ^= 0x5a ^ (i as u8);
        attacks.push(b);
    }
    for (i, bytes) in attacks.iter().enumerate() {
        let mut s = h.connect(&format!("127.0.0.1:{OF_PORT}")).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        if i % 2 == 0 {
            let _ = s.write_all(&Message::Hello(of::Hello::new()).to_bytes(1).unwrap());
        }
        let _ = s.write_all(bytes);
        let mut sink = [0u8; 4096];
        let _ = s.read(&mut sink);
        drop(s);
        assert!(agent.running(), "agent died on attack {i}");
    }
    // The flipped FLOW_MODs that were still valid may have added flows with
    // their own cookies; the original flows are untouched.
    let norm = |dump: &str| -> Vec<String> {
        dump.lines()
            .map(|l| {
                l.trim()
                    .split(", ")
                    .filter(|p| {
                        !p.starts_with("duration=")
                            && !p.starts_with("n_packets=")
                            && !p.starts_with("n_bytes=")
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .collect()
    };
    let after = norm(&agent.cli(&["flows"]));
    for line in norm(&before) {
        assert!(
            after.contains(&line),
            "flow changed by hostile input: {line}\nafter: {after:#?}"
        );
    }
    assert!(
        a.ok(&["ping", "-c", "1", "-W", "2", "10.1.0.3"]),
        "forwarding broke"
    );
    // A well-behaved controller is still served.
    let mut c = Client::new(&h);
    c.send(5, Message::EchoRequest(vec![7]));
    assert!(c
        .wait(
            Duration::from_secs(3),
            |m| matches!(m, Message::EchoReply(d) if d == &[7])
        )
        .is_some());
}

#[test]
fn standalone_fail_mode_forwards_by_l2_learning_without_a_controller() {
    let Some(mut lab) = lab(&[]) else {
        return;
    };
    let (h, a, _b) = topology(&mut lab, false);
    let agent = start_two_port_agent(
        &mut lab,
        &h,
        &[
            "--fail-mode",
            "standalone",
            "--controller",
            &format!("tcp:127.0.0.1:{CTL_PORT}"), // nobody listens there
        ],
    );
    assert!(
        a.ok(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.1.0.3"]),
        "no forwarding in standalone mode"
    );
    let flows = agent.cli(&["flows"]);
    let learned: Vec<&str> = flows
        .lines()
        .filter(|l| l.contains("cookie=0xda01100000000001"))
        .collect();
    assert!(
        learned.len() >= 2 && learned.iter().any(|l| !l.contains("n_packets=0,")),
        "no learned flow carried traffic:\n{flows}"
    );
}

#[test]
fn arp_responder_answers_containers_with_the_gateway_mac() {
    let Some(mut lab) = lab(&[]) else {
        return;
    };
    let (h, a, _b) = topology(&mut lab, false);
    let agent = start_two_port_agent(&mut lab, &h, &["--arp-responder", "02:00:00:00:00:01"]);
    // Nothing answers pings to the gateway address, but ARP resolves.
    let _ = a.ok(&["ping", "-c", "1", "-W", "1", "10.1.0.1"]);
    let neigh = a.output(&["ip", "neigh", "show", "10.1.0.1"]).stdout;
    assert!(
        neigh.contains("lladdr 02:00:00:00:00:01"),
        "ARP not answered locally: {neigh:?}"
    );
    let status = agent.cli(&["status", "--json"]);
    assert!(status.contains("\"arp_replies\": 1"), "{status}");
    let text = agent.cli(&["status"]);
    assert!(text.contains("arp_replies 1"), "{text}");
}

#[test]
fn controller_sees_port_status_roles_and_the_agent_reconnects() {
    let Some(mut lab) = lab(&[]) else {
        return;
    };
    let (h, _a, _b) = topology(&mut lab, true);
    let l = h.listen(&format!("127.0.0.1:{CTL_PORT}")).expect("listen");
    let agent = lab.agent(
        &h,
        &[
            "--uplink",
            "up0",
            "--port",
            "pa=1",
            "--controller",
            &format!("tcp:127.0.0.1:{CTL_PORT}"),
            "--datapath-id",
            "abc",
        ],
    );
    let (s, _) = l.accept().expect("agent connects");
    let mut c = Client::over(s);
    c.send(2, Message::FeaturesRequest);
    let f = c
        .wait(Duration::from_secs(3), |m| {
            matches!(m, Message::FeaturesReply(_))
        })
        .expect("features");
    assert!(matches!(f.message, Message::FeaturesReply(r) if r.datapath_id == 0xabc));
    c.send(
        3,
        Message::RoleRequest(of::RoleMsg {
            role: of::OFPCR_ROLE_MASTER,
            generation_id: 5,
        }),
    );
    assert!(c
        .wait(Duration::from_secs(3), |m| matches!(m, Message::RoleReply(r) if r.role == of::OFPCR_ROLE_MASTER && r.generation_id == 5))
        .is_some());

    // pb comes and goes: PORT_STATUS add, then delete when the interface vanishes.
    agent.cli(&["port", "add", "pb", "--ofport", "7"]);
    let add = c
        .wait(
            Duration::from_secs(3),
            |m| matches!(m, Message::PortStatus(p) if p.reason == of::OFPPR_ADD),
        )
        .expect("PORT_STATUS add");
    assert!(
        matches!(add.message, Message::PortStatus(p) if p.desc.port_no == 7 && p.desc.name == "pb")
    );
    h.ip(&["link", "del", "pb"]);
    let del = c
        .wait(
            Duration::from_secs(5),
            |m| matches!(m, Message::PortStatus(p) if p.reason == of::OFPPR_DELETE),
        )
        .expect("PORT_STATUS delete");
    assert!(matches!(del.message, Message::PortStatus(p) if p.desc.port_no == 7));

    // A flow from the controller...
    c.send(
        5,
        Message::FlowMod(
            "cookie=0x5,in_port=1,ip,nw_dst=10.1.0.3 actions=output:2"
                .parse()
                .unwrap(),
        ),
    );
    c.barrier(6);
    // ...outlives the controller (fail-mode secure keeps the flows).
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    let flows = agent.cli(&["flows"]);
    assert!(
        flows.contains("cookie=0x5"),
        "flow lost with the controller:\n{flows}"
    );
    // The agent comes back on its own.
    let t = Instant::now();
    l.set_nonblocking(false).unwrap();
    let (s, _) = l.accept().expect("agent reconnects");
    assert!(t.elapsed() < Duration::from_secs(10));
    let mut c = Client::over(s);
    c.send(4, Message::EchoRequest(vec![1]));
    assert!(c
        .wait(Duration::from_secs(3), |m| matches!(
            m,
            Message::EchoReply(_)
        ))
        .is_some());
}

/// An Ethernet + IPv4 + UDP frame (UDP checksum 0: none) as hex.
fn udp_frame_hex(
    src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    dport: u16,
    payload: &[u8],
) -> String {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01];
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&4321u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn packet_out_to_local_reaches_the_host_stack() {
    let Some(mut lab) = lab(&[Need::Program("ovs-ofctl")]) else {
        return;
    };
    let (h, a, _b) = topology(&mut lab, true);
    // A host address to deliver to, a route back to the containers (loose
    // reverse-path filtering, a common default, needs one).
    h.ip(&["addr", "add", "192.168.77.1/24", "dev", "up0"]);
    h.ip(&["route", "add", "10.1.0.0/24", "dev", "pa"]);
    h.sysctl("net.ipv4.conf.all.rp_filter=2");
    let sock = h.udp("192.168.77.1:4000").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut agent = start_two_port_agent(&mut lab, &h, &["--listen", &format!("ptcp:{OF_PORT}")]);
    wait_listener(&h);
    let links = h.output(&["ip", "-o", "link", "show"]).stdout;
    assert!(links.contains("dllocal"), "no host-stack port: {links}");

    // A port the switch does not have: the frame is dropped, the agent lives on.
    let stray = udp_frame_hex(
        [2, 0, 0, 0, 0, 0x0a],
        [10, 1, 0, 2],
        [192, 168, 77, 1],
        4000,
        b"stray",
    );
    ofctl(
        &h,
        &[
            "packet-out",
            &format!("in_port=1 packet={stray} actions=output:77"),
        ],
    );
    // The first packet of a NAT-out connection: to LOCAL, from container a.
    let frame = udp_frame_hex(
        [2, 0, 0, 0, 0, 0x0a],
        [10, 1, 0, 2],
        [192, 168, 77, 1],
        4000,
        b"first packet",
    );
    ofctl(
        &h,
        &[
            "packet-out",
            &format!("in_port=1 packet={frame} actions=LOCAL"),
        ],
    );
    let mut buf = [0u8; 64];
    let got = sock.recv_from(&mut buf);
    let (n, from) = got.unwrap_or_else(|e| {
        let links = h.output(&["ip", "-s", "link", "show"]).stdout;
        let stats = h.output(&["nstat", "-az"]).stdout;
        panic!("the PACKET_OUT to LOCAL did not reach the host stack: {e}\n{links}\n{stats}")
    });
    assert_eq!(&buf[..n], b"first packet");
    assert_eq!(from.to_string(), "10.1.0.2:4321");
    assert!(agent.running(), "the agent died");

    // Later packets of the flow, from a (to the gateway MAC) through a flow
    // like the controller's NAT-out one: the datapath passes them to the
    // host stack, which must take them as its own.
    let up0_mac = h.output(&["cat", "/sys/class/net/up0/address"]).stdout;
    ofctl(
        &h,
        &[
            "add-flow",
            &format!(
                "priority=100,in_port=1,udp,nw_dst=192.168.77.1 actions=set_field:{}->eth_dst,LOCAL",
                up0_mac.trim()
            ),
        ],
    );
    a.ip(&["route", "add", "192.168.77.0/24", "dev", "eth0"]);
    a.ip(&[
        "neigh",
        "add",
        "192.168.77.1",
        "lladdr",
        "02:da:00:00:00:01",
        "dev",
        "eth0",
    ]);
    let c = a.udp("10.1.0.2:4321").unwrap();
    c.send_to(b"later packet", "192.168.77.1:4000").unwrap();
    let got = sock.recv_from(&mut buf);
    let (n, _) = got.unwrap_or_else(|e| {
        let links = h.output(&["ip", "-s", "-s", "link", "show", "pa"]).stdout;
        let flows = ofctl(&h, &["dump-flows"]);
        panic!("the datapath's pass to the host stack was lost: {e}\n{flows}\n{links}")
    });
    assert_eq!(&buf[..n], b"later packet");

    // Forwarded, as NAT-out traffic is: the first packet (PACKET_OUT) to an
    // outside namespace behind the host.
    let o = lab.netns("o");
    h.ip(&[
        "link", "add", "out0", "type", "veth", "peer", "name", "eth0", "netns", &o,
    ]);
    h.ip(&["addr", "add", "192.168.88.1/24", "dev", "out0"]);
    o.ip(&["addr", "add", "192.168.88.2/24", "dev", "eth0"]);
    h.ip(&["link", "set", "out0", "up"]);
    o.ip(&["link", "set", "eth0", "up"]);
    h.sysctl("net.ipv4.ip_forward=1");
    let outside = o.udp("192.168.88.2:5000").unwrap();
    outside
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let frame = udp_frame_hex(
        [2, 0, 0, 0, 0, 0x0a],
        [10, 1, 0, 2],
        [192, 168, 88, 2],
        5000,
        b"forwarded",
    );
    ofctl(
        &h,
        &[
            "packet-out",
            &format!("in_port=1 packet={frame} actions=LOCAL"),
        ],
    );
    let (n, from) = outside
        .recv_from(&mut buf)
        .expect("the PACKET_OUT to LOCAL was not forwarded by the host");
    assert_eq!(&buf[..n], b"forwarded");
    assert_eq!(from.to_string(), "10.1.0.2:4321");

    // The TAP device goes with the agent.
    agent.stop();
    let links = h.output(&["ip", "-o", "link", "show"]).stdout;
    assert!(!links.contains("dllocal"), "left over: {links}");
}
