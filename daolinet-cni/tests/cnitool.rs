//! Privileged: the plugin run the way cnitool (and every CNI runtime) runs
//! it, environment variables plus the configuration on stdin, on the hosts
//! of a real cluster (controller, agents that joined by themselves), for
//! every verb: VERSION, STATUS, ADD (containers on two hosts then ping and
//! TCP across), CHECK (passing, then failing after manual breakages), DEL
//! (twice, and with the agent down: queued, drained when it starts), GC;
//! bad input gets its error code and a clear message, and leaves no veth,
//! port, address or registration behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Command, Stdio};

use daolinet_testlab::{eventually, Cluster, ClusterHost, Lab, Need, Netns, DEADLINE};
use serde_json::{json, Value};

/// What one plugin run gave.
#[derive(Debug)]
struct Out {
    ok: bool,
    json: Value,
    stdout: String,
}

impl Out {
    /// The error code of a failed run.
    fn code(&self) -> u64 {
        self.json["code"].as_u64().unwrap_or(0)
    }
    fn msg(&self) -> String {
        format!("{} {}", self.json["msg"], self.json["details"])
    }
}

/// Run `daolinet-cni` in `host`'s namespace like cnitool: CNI_* variables
/// and `conf` on stdin.
fn cni(host: &str, cmd: &str, env: &[(&str, &str)], conf: &str) -> Out {
    let bin = daolinet_testlab::workspace_bin("daolinet-cni");
    let mut c = Command::new("ip");
    c.args(["netns", "exec", host])
        .arg(&bin)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", cmd)
        .env("CNI_PATH", bin.parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Out {
        ok: out.status.success(),
        json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stdout,
    }
}

/// The network configuration of `network` for the agent of `h`.
fn conf(h: &ClusterHost, network: &str, extra: Value) -> String {
    let mut v = json!({
        "cniVersion": "1.1.0",
        "name": network,
        "type": "daolinet-cni",
        "agentSocket": h.agent_socket().to_str().unwrap(),
    });
    if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    v.to_string()
}

fn netns_path(ns: &Netns) -> String {
    format!("/run/netns/{ns}")
}

/// ADD/DEL/CHECK environment of container `cid` in `ns`.
fn env<'a>(cid: &'a str, ns: &'a str, args: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_CONTAINERID", cid),
        ("CNI_NETNS", ns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", args),
    ]
}

fn network(c: &Cluster, name: &str, subnet: &str, tenant: &str) {
    c.api().ok(
        "POST",
        "/api/networks",
        Some(&json!({"name": name, "subnet": subnet, "tenant": tenant}).to_string()),
    );
}

/// The host's `dlc*` interfaces.
fn cni_links(h: &ClusterHost) -> Vec<String> {
    h.ns.ip(&["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("dlc"))
        .collect()
}

/// The agent's container ports.
fn container_ports(h: &ClusterHost) -> Vec<(String, u64)> {
    let v: Value = serde_json::from_str(&h.agent.cli(&["ports"])).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["kind"] == "container")
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().into(),
                p["ofport"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Nothing of any attachment left on `h`, and no registration at all.
#[track_caller]
fn nothing_left(c: &Cluster, h: &ClusterHost) {
    assert_eq!(
        cni_links(h),
        Vec::<String>::new(),
        "veths left on {}",
        h.name
    );
    assert_eq!(container_ports(h), vec![], "ports left on {}", h.name);
    assert_eq!(c.containers(), Vec::<Value>::new(), "registrations left");
}

fn ip_of(add: &Out) -> String {
    add.json["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn every_verb_the_way_cnitool_runs_it() {
    let Some(mut lab) = Lab::new(&[
        Need::BpfObject,
        Need::Program("ping"),
        Need::Binary("daolinet-controller"),
        Need::Binary("daolinet-agent"),
    ]) else {
        return;
    };
    let mut c = Cluster::start(&mut lab, 2, &[]);
    network(&c, "blue", "10.1.0.0/24", "t1");
    let (h1, h2) = (c.host(1), c.host(2));
    let c1 = lab.netns("c1");
    let c2 = lab.netns("c2");
    let (p1, p2) = (netns_path(&c1), netns_path(&c2));
    let blue1 = conf(h1, "blue", json!({}));
    let blue2 = conf(
        h2,
        "blue",
        json!({"capabilities": {"ips": true, "mac": true},
               "runtimeConfig": {"ips": ["10.1.0.50/24"], "mac": "02:00:00:00:10:50"}}),
    );

    // VERSION and STATUS.
    let v = cni(&h1.ns, "VERSION", &[], &blue1);
    assert!(v.ok, "{}", v.stdout);
    assert!(
        v.json["supportedVersions"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("1.1.0")) && a.contains(&json!("1.0.0"))),
        "{}",
        v.stdout
    );
    let st = cni(&h1.ns, "STATUS", &[], &blue1);
    assert!(st.ok && st.stdout.is_empty(), "STATUS: {}", st.stdout);

    // ADD on two hosts: one address from the controller, one static with a MAC.
    let add1 = cni(&h1.ns, "ADD", &env("ctr1", &p1, "K8S_POD_NAME=web"), &blue1);
    assert!(add1.ok, "ADD 1: {}", add1.stdout);
    let add2 = cni(&h2.ns, "ADD", &env("ctr2", &p2, ""), &blue2);
    assert!(add2.ok, "ADD 2: {}", add2.stdout);
    let r = &add1.json;
    assert_eq!(r["cniVersion"], "1.1.0", "{r}");
    assert_eq!(r["interfaces"][1]["name"], "eth0", "{r}");
    assert_eq!(r["interfaces"][1]["sandbox"], p1.as_str(), "{r}");
    assert_eq!(r["ips"][0]["interface"], 1, "{r}");
    assert_eq!(r["ips"][0]["gateway"], "10.1.0.1", "{r}");
    assert!(
        r["routes"].as_array().is_some_and(|a| a
            .contains(&json!({"dst": "0.0.0.0/0", "gw": "10.1.0.1"}))
            && a.contains(&json!({"dst": "10.1.0.0/24", "gw": "10.1.0.1"}))),
        "{r}"
    );
    let ip1 = ip_of(&add1);
    assert!(ip1.starts_with("10.1.0."), "{r}");
    assert_eq!(ip_of(&add2), "10.1.0.50");
    assert_eq!(add2.json["interfaces"][1]["mac"], "02:00:00:00:10:50");
    // Inside: the address without a prefix route, everything via the gateway.
    let routes = c1.ip(&["-4", "route"]);
    let has = |start: &str, also: &str| {
        routes
            .lines()
            .any(|l| l.starts_with(start) && l.contains(also))
    };
    assert!(
        has("default via 10.1.0.1 dev eth0", "")
            && has("10.1.0.0/24 via 10.1.0.1 dev eth0", "")
            && has("10.1.0.1 dev eth0", "scope link")
            && routes.lines().count() == 3,
        "{routes}"
    );
    // Registered on the right hosts and ports, named after K8S_POD_NAME.
    let reg: Vec<Value> = c.containers();
    let web = reg
        .iter()
        .find(|x| x["name"] == "web")
        .unwrap_or_else(|| panic!("{reg:?}"));
    assert_eq!(web["host"], h1.name.as_str());
    assert_eq!(web["ip"], ip1.as_str());
    let veth1 = add1.json["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        container_ports(h1),
        vec![(veth1.clone(), web["port"].as_u64().unwrap())]
    );

    // Traffic across hosts, first packets through the controller.
    assert!(c1.ping("10.1.0.50", 3, 2), "ping c1 -> c2 failed");
    let l = c2.listen("10.1.0.50:7000").unwrap();
    let mut s = c1.connect("10.1.0.50:7000").unwrap();
    s.write_all(b"over DaoliNet").unwrap();
    let (mut got, _) = l.accept().unwrap();
    let mut buf = [0u8; 13];
    std::io::Read::read_exact(&mut got, &mut buf).unwrap();
    assert_eq!(&buf, b"over DaoliNet");

    // CHECK with the ADD's result.
    let with_prev = |conf: &str, add: &Out| {
        let mut v: Value = serde_json::from_str(conf).unwrap();
        v["prevResult"] = add.json.clone();
        v.to_string()
    };
    let chk1 = with_prev(&blue1, &add1);
    let ok = cni(&h1.ns, "CHECK", &env("ctr1", &p1, ""), &chk1);
    assert!(ok.ok, "CHECK: {}", ok.stdout);
    // Manual breakages, each seen by CHECK with what is wrong.
    c1.ip(&["route", "del", "default"]);
    let bad = cni(&h1.ns, "CHECK", &env("ctr1", &p1, ""), &chk1);
    assert!(
        !bad.ok && bad.code() == 100 && bad.msg().contains("0.0.0.0/0 via 10.1.0.1"),
        "{bad:?}"
    );
    c1.ip(&["route", "add", "default", "via", "10.1.0.1", "dev", "eth0"]);
    assert!(cni(&h1.ns, "CHECK", &env("ctr1", &p1, ""), &chk1).ok);
    h1.ns.ip(&["link", "set", &veth1, "down"]);
    let bad = cni(&h1.ns, "CHECK", &env("ctr1", &p1, ""), &chk1);
    assert!(!bad.ok && bad.msg().contains("is down"), "{bad:?}");
    h1.ns.ip(&["link", "set", &veth1, "up"]);
    h1.agent.cli(&["port", "del", &veth1]);
    let bad = cni(&h1.ns, "CHECK", &env("ctr1", &p1, ""), &chk1);
    assert!(
        !bad.ok && bad.msg().contains("not a port of the agent"),
        "{bad:?}"
    );
    h1.agent
        .cli(&["port", "add", &veth1, "--ofport", &web["port"].to_string()]);
    assert!(cni(&h1.ns, "CHECK", &env("ctr1", &p1, ""), &chk1).ok);
    let never = cni(&h1.ns, "CHECK", &env("nosuch", &p1, ""), &chk1);
    assert!(
        !never.ok && never.msg().contains("not registered"),
        "{never:?}"
    );

    // The agent restarts with the containers attached: they keep working,
    // and a later DEL still cleans up.
    let ctr2_chk = with_prev(&blue2, &add2);
    let h2 = c.host_mut(2);
    h2.agent.stop();
    h2.agent.start();
    let (h1, h2) = (c.host(1), c.host(2));
    assert!(cni(&h2.ns, "CHECK", &env("ctr2", &p2, ""), &ctr2_chk).ok);
    assert!(
        c2.ping(&ip1, 3, 2),
        "ping c2 -> c1 after the agent restart failed"
    );

    c1.ip(&["addr", "flush", "dev", "eth0"]);
    let bad = cni(&h1.ns, "CHECK", &env("ctr1", &p1, ""), &chk1);
    assert!(
        !bad.ok && bad.msg().contains(&format!("lacks {ip1}/24")),
        "{bad:?}"
    );

    // DEL: everything goes, twice is fine, without CNI_NETNS too.
    for _ in 0..2 {
        let d = cni(&h2.ns, "DEL", &env("ctr2", &p2, ""), &blue2);
        assert!(d.ok, "DEL: {}", d.stdout);
    }
    let d = cni(
        &h1.ns,
        "DEL",
        &[("CNI_CONTAINERID", "ctr1"), ("CNI_IFNAME", "eth0")],
        &blue1,
    );
    assert!(d.ok, "DEL without netns: {}", d.stdout);
    nothing_left(&c, h1);
    nothing_left(&c, h2);
    assert!(
        !c1.ip(&["link"]).contains("eth0"),
        "eth0 left in the container"
    );
    // No flow of theirs is left on the agents.
    for h in [h1, h2] {
        assert!(
            eventually(DEADLINE, || {
                let f = h.agent.cli(&["flows"]);
                !f.contains("10.1.0.50") && !f.contains(&ip1)
            }),
            "flows of deleted containers left on {}:\n{}",
            h.name,
            h.agent.cli(&["flows"])
        );
    }

    // GC: what is not in the valid attachments goes, the rest stays.
    let c3 = lab.netns("c3");
    let c4 = lab.netns("c4");
    let (p3, p4) = (netns_path(&c3), netns_path(&c4));
    assert!(cni(&h1.ns, "ADD", &env("ctr3", &p3, ""), &blue1).ok);
    assert!(cni(&h1.ns, "ADD", &env("ctr4", &p4, ""), &blue1).ok);
    h1.ns.veth("dlcstray0", "dlcstray0p");
    let mut gc: Value = serde_json::from_str(&blue1).unwrap();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr3", "ifname": "eth0"}]);
    let g = cni(&h1.ns, "GC", &[], &gc.to_string());
    assert!(g.ok, "GC: {}", g.stdout);
    let left = c.containers();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(
        left[0]["id"],
        daolinet_attach::names::cni_id("ctr3", "eth0").as_str()
    );
    assert_eq!(cni_links(h1).len(), 1, "{:?}", cni_links(h1));
    assert_eq!(container_ports(h1).len(), 1);
    assert!(cni(&h1.ns, "DEL", &env("ctr3", &p3, ""), &blue1).ok);
    nothing_left(&c, h1);
}

#[test]
fn bad_input_gets_its_code_and_leaks_nothing() {
    let Some(mut lab) = Lab::new(&[
        Need::BpfObject,
        Need::Binary("daolinet-controller"),
        Need::Binary("daolinet-agent"),
    ]) else {
        return;
    };
    let mut c = Cluster::start(&mut lab, 1, &[]);
    network(&c, "blue", "10.1.0.0/24", "t1");
    network(&c, "tiny", "10.3.0.0/30", "t1");
    let h = c.host(1);
    let n1 = lab.netns("n1");
    let n2 = lab.netns("n2");
    let (p1, p2) = (netns_path(&n1), netns_path(&n2));
    let blue = conf(h, "blue", json!({}));
    let refused = |out: &Out, code: u64, words: &str| {
        assert!(!out.ok, "accepted: {}", out.stdout);
        assert_eq!(out.code(), code, "{out:?}");
        assert!(
            out.msg().contains(words),
            "{:?} should say {words:?}",
            out.msg()
        );
        eprintln!("refused as expected: {}", out.msg());
    };

    // Unknown network.
    let out = cni(
        &h.ns,
        "ADD",
        &env("x1", &p1, ""),
        &conf(h, "nosuch", json!({})),
    );
    refused(&out, 7, "unknown DaoliNet network \\\"nosuch\\\"");
    nothing_left(&c, h);
    // An address outside the subnet.
    let out = cni(&h.ns, "ADD", &env("x1", &p1, "IP=10.9.9.9"), &blue);
    refused(&out, 101, "10.9.9.9 is outside 10.1.0.0/24");
    nothing_left(&c, h);
    // A static address already taken.
    assert!(cni(&h.ns, "ADD", &env("x1", &p1, "IP=10.1.0.9"), &blue).ok);
    let out = cni(&h.ns, "ADD", &env("x2", &p2, "IP=10.1.0.9"), &blue);
    refused(&out, 101, "10.1.0.9 is already in use");
    assert_eq!(c.containers().len(), 1);
    assert!(cni(&h.ns, "DEL", &env("x1", &p1, ""), &blue).ok);
    nothing_left(&c, h);
    // An exhausted subnet: a /30 has one address besides the gateway.
    let tiny = conf(h, "tiny", json!({}));
    assert!(cni(&h.ns, "ADD", &env("x1", &p1, ""), &tiny).ok);
    let out = cni(&h.ns, "ADD", &env("x2", &p2, ""), &tiny);
    refused(&out, 101, "no free address left in 10.3.0.0/30");
    assert!(cni(&h.ns, "DEL", &env("x1", &p1, ""), &tiny).ok);
    nothing_left(&c, h);
    // The interface name is taken inside the container: the registration
    // made first is undone.
    n1.veth("eth0", "eth0p");
    let out = cni(&h.ns, "ADD", &env("x1", &p1, ""), &blue);
    refused(&out, 101, "exists already");
    nothing_left(&c, h);
    n1.ip(&["link", "del", "eth0"]);
    // A namespace that is not one.
    let out = cni(&h.ns, "ADD", &env("x1", "/etc/hostname", ""), &blue);
    refused(&out, 8, "not a network namespace");
    nothing_left(&c, h);
    // Malformed configurations.
    let out = cni(
        &h.ns,
        "ADD",
        &env("x1", &p1, ""),
        &conf(h, "blue", json!({"netwrok": "blue"})),
    );
    refused(&out, 7, "unknown key \\\"netwrok\\\"");
    let out = cni(
        &h.ns,
        "ADD",
        &env("x1", &p1, ""),
        "{\"cniVersion\": \"1.1.0\", \"name\": ",
    );
    assert!(!out.ok && out.code() == 6, "{out:?}");
    let out = cni(
        &h.ns,
        "ADD",
        &env("x1", &p1, ""),
        &conf(h, "blue", json!({"agentSocket": "run/agent.sock"})),
    );
    refused(&out, 7, "absolute path");
    let out = cni(&h.ns, "ADD", &env("x1", &p1, "IP=nonsense"), &blue);
    refused(&out, 7, "not an IPv4 address");
    nothing_left(&c, h);

    // The agent down: ADD says so and changes nothing, STATUS says 50.
    c.host_mut(1).agent.stop();
    let h = c.host(1);
    let out = cni(&h.ns, "ADD", &env("x1", &p1, ""), &blue);
    refused(&out, 11, "agent is not running");
    let out = cni(&h.ns, "STATUS", &[], &blue);
    refused(&out, 50, "agent is not running");
    assert_eq!(cni_links(h), Vec::<String>::new());
    assert_eq!(c.containers(), Vec::<Value>::new());
}

#[test]
fn del_with_the_agent_down_is_queued_and_drained_when_it_starts() {
    let Some(mut lab) = Lab::new(&[
        Need::BpfObject,
        Need::Binary("daolinet-controller"),
        Need::Binary("daolinet-agent"),
    ]) else {
        return;
    };
    let mut c = Cluster::start(&mut lab, 1, &[]);
    network(&c, "blue", "10.1.0.0/24", "t1");
    let n1 = lab.netns("n1");
    let p1 = netns_path(&n1);
    let blue = conf(c.host(1), "blue", json!({}));
    assert!(cni(&c.host(1).ns, "ADD", &env("q1", &p1, ""), &blue).ok);
    assert_eq!(c.containers().len(), 1);

    c.host_mut(1).agent.stop();
    let h = c.host(1);
    let d = cni(&h.ns, "DEL", &env("q1", &p1, ""), &blue);
    assert!(d.ok, "DEL with the agent down: {}", d.stdout);
    assert_eq!(
        cni_links(h),
        Vec::<String>::new(),
        "the veth must go at once"
    );
    let queued = h.agent.state_dir().join("del-queue");
    let entries = std::fs::read_dir(&queued).map(|d| d.count()).unwrap_or(0);
    assert_eq!(entries, 1, "one deferred deletion in {}", queued.display());
    assert_eq!(c.containers().len(), 1, "deregistered without the agent?");
    // Twice: still one entry.
    assert!(cni(&h.ns, "DEL", &env("q1", &p1, ""), &blue).ok);

    c.host_mut(1).agent.start();
    let h = c.host(1);
    assert!(
        eventually(DEADLINE, || c.containers().is_empty()),
        "the agent did not drain its queue: {:?}",
        c.containers()
    );
    assert!(
        eventually(DEADLINE, || std::fs::read_dir(&queued)
            .map(|d| d.count() == 0)
            .unwrap_or(true)),
        "queue not emptied"
    );
    nothing_left(&c, h);
    assert!(h.agent.log().contains("deferred deletion done"));
}
