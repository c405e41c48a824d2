//! Privileged: two containers (namespaces) on one host namespace, the agent
//! attached to their veths, rules installed through `agent.sock`.
//! Needs root; without it the test says SKIP loudly.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Topo {
    tag: String,
    agent: Option<Child>,
    state: PathBuf,
}

impl Drop for Topo {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            // SAFETY: plain kill(2) on our child.
            unsafe { libc::kill(a.id() as i32, libc::SIGTERM) };
            let _ = a.wait();
        }
        for ns in ["h", "a", "b"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &format!("{}{ns}", self.tag)])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.state);
        let _ = std::fs::remove_dir_all(format!(
            "/sys/fs/bpf/daolinet/{}",
            self.state
                .to_string_lossy()
                .replace('/', "_")
                .trim_matches('_')
        ));
    }
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect("spawn");
    assert!(st.success(), "{args:?} failed");
}

fn ns(n: &str, args: &[&str]) -> bool {
    Command::new("ip")
        .args(["netns", "exec", n])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn agent_cmd(t: &Topo, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("{}h", t.tag),
            env!("CARGO_BIN_EXE_daolinet-agent"),
        ])
        .arg("--state-dir")
        .arg(&t.state)
        .args(args)
        .output()
        .expect("agent cli");
    assert!(
        out.status.success(),
        "agent {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn two_containers_talk_only_through_installed_rules() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("*** SKIP two_containers_talk_only_through_installed_rules: needs root ***");
        return;
    }
    let tag = format!("dlsh{}", std::process::id() % 100000);
    let mut t = Topo {
        tag: tag.clone(),
        agent: None,
        state: PathBuf::from(format!("/tmp/{tag}-state")),
    };
    let (h, a, b) = (format!("{tag}h"), format!("{tag}a"), format!("{tag}b"));
    for n in [&h, &a, &b] {
        sh(&["ip", "netns", "add", n]);
    }
    // Host namespace: uplink (a veth to nowhere useful) and two container veths.
    sh(&[
        "ip", "-n", &h, "link", "add", "up0", "type", "veth", "peer", "name", "up0p",
    ]);
    for (c, ip, mac, port) in [
        (&a, "10.1.0.2", "02:00:00:00:00:0a", "pa"),
        (&b, "10.1.0.3", "02:00:00:00:00:0b", "pb"),
    ] {
        sh(&[
            "ip", "-n", &h, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", c,
        ]);
        sh(&["ip", "-n", c, "link", "set", "eth0", "address", mac]);
        sh(&[
            "ip",
            "-n",
            c,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", c, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", c, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &h, "link", "set", port, "up"]);
    }
    sh(&["ip", "-n", &h, "link", "set", "up0", "up"]);
    sh(&["ip", "-n", &h, "link", "set", "up0p", "up"]);
    // No ARP through the datapath yet (the ARP responder is the switch issue's): static neighbours.
    sh(&[
        "ip",
        "-n",
        &a,
        "neigh",
        "add",
        "10.1.0.3",
        "lladdr",
        "02:00:00:00:00:0b",
        "dev",
        "eth0",
    ]);
    sh(&[
        "ip",
        "-n",
        &b,
        "neigh",
        "add",
        "10.1.0.2",
        "lladdr",
        "02:00:00:00:00:0a",
        "dev",
        "eth0",
    ]);

    let child = Command::new("ip")
        .args(["netns", "exec", &h, env!("CARGO_BIN_EXE_daolinet-agent")])
        .arg("--state-dir")
        .arg(&t.state)
        .args(["run", "--uplink", "up0", "--port", "pa=1", "--port", "pb=2"])
        .spawn()
        .expect("start agent");
    t.agent = Some(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !t.state.join("agent.sock").exists() {
        assert!(Instant::now() < deadline, "agent did not start");
        std::thread::sleep(Duration::from_millis(100));
    }

    // No rule: the ping is punted, nothing leaks to B.
    assert!(
        !ns(&a, &["ping", "-c", "1", "-W", "1", "10.1.0.3"]),
        "ping crossed without a rule"
    );

    agent_cmd(
        &t,
        &[
            "rule",
            "add",
            "cookie=0x1,priority=100,in_port=1,ip,nw_dst=10.1.0.3 actions=output:2",
        ],
    );
    agent_cmd(
        &t,
        &[
            "rule",
            "add",
            "cookie=0x1,priority=100,in_port=2,ip,nw_dst=10.1.0.2 actions=output:1",
        ],
    );
    assert!(
        ns(&a, &["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.1.0.3"]),
        "ping failed with rules"
    );

    let flows = agent_cmd(&t, &["flows"]);
    assert!(
        flows.contains("n_packets=3"),
        "counters do not match 3 pings: {flows}"
    );

    agent_cmd(&t, &["rule", "del", "0x1"]);
    assert!(
        !ns(&a, &["ping", "-c", "1", "-W", "1", "10.1.0.3"]),
        "ping crossed after the rules were removed"
    );
}
