//! Privileged end to end: `daolinet-controller` drives two `daolinet-agent`
//! hosts over OpenFlow 1.3. Hosts are network namespaces whose uplinks meet
//! on a bridge (the controller listens on the bridge's address in the root
//! namespace); containers are namespaces behind veth ports, registered
//! through the REST API with the addresses the controller assigns.
//! Checks: both datapaths connect, the first ping between containers on
//! different hosts and on the same host goes through (ARP proxy, pair
//! flows with logical <-> physical rewriting, PACKET_OUT), the agents hold
//! the controller's flows, and a disconnect policy stops the traffic.
//!
//! Needs root and both binaries (built by `cargo test --workspace`); the
//! agents load the BPF object built into them. Everything is removed by the guard's Drop.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use daolinet_tests::bpf::skip_unless_root;

const BR: &str = "ctlx-br";
const NET: &str = "192.168.213";
const BPFFS: &str = "/run/ctlx-bpffs";

fn sh(args: &[&str]) {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn ns_ok(ns: &str, args: &[&str]) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn ns_out(ns: &str, args: &[&str]) -> String {
    let o = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A binary of the workspace next to this test's executable.
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} missing: run `cargo test --workspace` (or build it first)",
        p.display()
    );
    p
}

/// Minimal HTTP/1.1 client for the controller's API.
fn http(addr: &str, token: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, body.to_string())
}

/// A JSON string field, without a JSON library.
fn field(json: &str, name: &str) -> String {
    let key = format!("\"{name}\":\"");
    let i = json
        .find(&key)
        .unwrap_or_else(|| panic!("{name} in {json}"))
        + key.len();
    json[i..].split('"').next().unwrap().to_string()
}

struct Lab {
    netns: Vec<String>,
    procs: Vec<Child>,
    dir: PathBuf,
}

impl Lab {
    fn netns(&mut self, name: &str) -> String {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        sh(&["ip", "netns", "add", name]);
        self.netns.push(name.to_string());
        sh(&["ip", "-n", name, "link", "set", "lo", "up"]);
        name.to_string()
    }

    fn pin_dir(state: &Path) -> PathBuf {
        let name: String = state
            .to_string_lossy()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        Path::new(BPFFS)
            .join("daolinet")
            .join(name.trim_matches('_'))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = Command::new("kill").arg(p.id().to_string()).output();
        }
        for p in &mut self.procs {
            let t = Instant::now();
            while p.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = p.kill();
            let _ = p.wait();
        }
        for n in self.netns.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
        let _ = Command::new("ip").args(["link", "del", BR]).output();
        for h in ["h1", "h2"] {
            let _ = std::fs::remove_dir_all(Lab::pin_dir(&self.dir.join(h)));
        }
    }
}

#[test]
fn controller_drives_two_agents() {
    if skip_unless_root("controller_drives_two_agents") {
        return;
    }
    let (ctl_bin, agent_bin) = (bin("daolinet-controller"), bin("daolinet-agent"));
    let tmp = std::env::temp_dir().join(format!("ctlx-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let mut lab = Lab {
        netns: Vec::new(),
        procs: Vec::new(),
        dir: tmp.clone(),
    };
    std::fs::create_dir_all(BPFFS).unwrap();
    let mounted = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(BPFFS));
    if !mounted {
        sh(&["mount", "-t", "bpf", "bpf", BPFFS]);
    }

    // Underlay: a bridge in the root namespace, the controller on it.
    let _ = Command::new("ip").args(["link", "del", BR]).output();
    sh(&["ip", "link", "add", BR, "type", "bridge"]);
    sh(&["ip", "addr", "add", &format!("{NET}.254/24"), "dev", BR]);
    sh(&["ip", "link", "set", BR, "up"]);
    let mut ctl = Command::new(&ctl_bin)
        .args([
            "run",
            "--listen",
            &format!("{NET}.254:0"),
            "--api",
            "127.0.0.1:0",
            "--store",
        ])
        .arg(tmp.join("controller.redb"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = String::new();
    let mut stdout = ctl.stdout.take().unwrap();
    lab.procs.push(ctl);
    let t = Instant::now();
    while !out.contains("openflow: ") || !out.ends_with('\n') {
        let mut b = [0u8; 256];
        let n = stdout.read(&mut b).unwrap();
        assert!(
            n > 0 && t.elapsed() < Duration::from_secs(30),
            "controller: {out}"
        );
        out.push_str(&String::from_utf8_lossy(&b[..n]));
    }
    let api = out
        .lines()
        .find_map(|l| l.strip_prefix("api: http://"))
        .unwrap()
        .to_string();
    let of = out
        .lines()
        .find_map(|l| l.strip_prefix("openflow: "))
        .unwrap()
        .to_string();
    let token = std::fs::read_to_string(tmp.join("api-token"))
        .unwrap()
        .trim()
        .to_string();
    let call = |m: &str, p: &str, b: &str| {
        let (st, body) = http(&api, &token, m, p, Some(b));
        assert!(st == 200 || st == 201, "{m} {p}: {st} {body}");
        body
    };

    // Model: two hosts (uplink = OpenFlow port 65000), one network,
    // containers a (h1 port 1), c (h1 port 2), b (h2 port 1).
    for i in 1..=2 {
        call(
            "POST",
            "/api/hosts",
            &format!(
                r#"{{"name":"h{i}","dpid":{i},"ip":"{NET}.{i}","mac":"02:00:00:00:d5:0{i}","uplink_port":65000}}"#
            ),
        );
    }
    call(
        "POST",
        "/api/networks",
        r#"{"name":"blue","subnet":"10.213.0.0/24"}"#,
    );
    let a = call(
        "POST",
        "/api/containers",
        r#"{"id":"ca","network":"blue","host":"h1","port":1}"#,
    );
    let b = call(
        "POST",
        "/api/containers",
        r#"{"id":"cb","network":"blue","host":"h2","port":1}"#,
    );
    let c = call(
        "POST",
        "/api/containers",
        r#"{"id":"cc","network":"blue","host":"h1","port":2}"#,
    );

    // Hosts and containers.
    for i in 1..=2 {
        let h = lab.netns(&format!("ctlx-h{i}"));
        let up = format!("ctlx-u{i}");
        let _ = Command::new("ip").args(["link", "del", &up]).output();
        sh(&[
            "ip", "link", "add", &up, "type", "veth", "peer", "name", "eth0", "netns", &h,
        ]);
        sh(&["ip", "link", "set", &up, "master", BR, "up"]);
        sh(&[
            "ip",
            "-n",
            &h,
            "link",
            "set",
            "eth0",
            "address",
            &format!("02:00:00:00:d5:0{i}"),
        ]);
        sh(&[
            "ip",
            "-n",
            &h,
            "addr",
            "add",
            &format!("{NET}.{i}/24"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &h, "link", "set", "eth0", "up"]);
    }
    let mut containers = Vec::new();
    for (name, host, port, json) in [("a", 1, "ca", &a), ("b", 2, "cb", &b), ("c", 1, "cc", &c)] {
        let n = lab.netns(&format!("ctlx-{name}"));
        let h = format!("ctlx-h{host}");
        sh(&[
            "ip", "-n", &h, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns",
            &n,
        ]);
        sh(&[
            "ip",
            "-n",
            &n,
            "link",
            "set",
            "eth0",
            "address",
            &field(json, "mac"),
        ]);
        sh(&[
            "ip",
            "-n",
            &n,
            "addr",
            "add",
            &format!("{}/24", field(json, "ip")),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &n, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &h, "link", "set", port, "up"]);
        containers.push(n);
    }
    let (na, nb) = (containers[0].clone(), containers[1].clone());

    // The agents, connected to the controller.
    for (i, ports) in [(1, vec!["ca=1", "cc=2"]), (2, vec!["cb=1"])] {
        let state = tmp.join(format!("h{i}"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &format!("ctlx-h{i}")])
            .arg(&agent_bin)
            .args(["--bpffs", BPFFS, "--state-dir"])
            .arg(&state)
            .args(["run", "--uplink", "eth0", "--datapath-id", &i.to_string()])
            .args(["--controller", &format!("tcp:{of}")])
            .env("RUST_LOG", "warn");
        for p in ports {
            cmd.args(["--port", p]);
        }
        lab.procs.push(cmd.spawn().unwrap());
    }
    let t = Instant::now();
    loop {
        let (_, m) = http(&api, &token, "GET", "/metrics", None);
        if m.contains("daolinet_switches_connected 2") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "agents did not connect:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // First packets: cross host, then same host.
    let ip = |j: &str| field(j, "ip");
    assert!(
        ns_ok(&na, &["ping", "-c", "1", "-W", "3", &ip(&b)]),
        "first cross-host ping a -> b failed"
    );
    assert!(
        ns_ok(&na, &["ping", "-c", "3", "-i", "0.2", "-W", "2", &ip(&b)]),
        "cross-host ping a -> b failed"
    );
    assert!(
        ns_ok(&nb, &["ping", "-c", "2", "-i", "0.2", "-W", "2", &ip(&a)]),
        "cross-host ping b -> a failed"
    );
    assert!(
        ns_ok(&na, &["ping", "-c", "2", "-i", "0.2", "-W", "2", &ip(&c)]),
        "same-host ping a -> c failed"
    );
    // The agent on h1 holds the controller's pair flow: logical -> physical.
    let flows = {
        let mut cmd = vec![agent_bin.to_str().unwrap(), "--bpffs", BPFFS, "--state-dir"];
        let state = tmp.join("h1");
        let state = state.to_str().unwrap().to_string();
        cmd.push(&state);
        cmd.push("flows");
        ns_out("ctlx-h1", &cmd)
    };
    let line = flows
        .lines()
        .find(|l| l.contains(&format!("nw_src={},nw_dst={}", ip(&a), ip(&b))))
        .unwrap_or_else(|| panic!("no a -> b flow on h1:\n{flows}"));
    assert!(
        line.contains(&format!("set_field:{}->nw_dst", field(&b, "physical_ip")))
            && line.contains("output:65000")
            && line.contains("idle_timeout=10"),
        "{line}"
    );

    // A disconnect policy: flows deleted by cookie, traffic stops.
    call(
        "POST",
        "/api/policies",
        r#"{"a":"ca","b":"cb","action":"disconnect"}"#,
    );
    assert!(
        !ns_ok(&na, &["ping", "-c", "2", "-i", "0.2", "-W", "1", &ip(&b)]),
        "ping went through a disconnect policy"
    );
    let (_, m) = http(&api, &token, "GET", "/metrics", None);
    assert!(
        m.contains("daolinet_denials_total{reason=\"pair_disconnected\"}"),
        "{m}"
    );
    drop(lab);
    let _ = std::fs::remove_dir_all(&tmp);
}
