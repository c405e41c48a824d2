//! The lab itself: the skip rule as a developer and CI see it, guards that
//! leave nothing behind (also when the test panics), and the starters.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // a panic is a failed test

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use daolinet_testlab::{require, sh, wait_until, Lab, Need, OVS_PROGRAMS};

/// Not a test of its own (ignored): what the skip-rule test runs in a
/// child process of this binary.
#[test]
#[ignore]
fn skip_probe() {
    let Some(_ready) = require(&[Need::Program("daolinet-no-such-tool")]) else {
        return;
    };
    panic!("a missing program was found");
}

fn run_probe(ci: Option<&str>) -> (bool, String) {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--ignored", "--exact", "skip_probe", "--test-threads=1"])
        .env_remove("CI");
    if let Some(v) = ci {
        c.env("CI", v);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn skip_rule_prints_a_summary_or_fails_under_ci() {
    let (ok, out) = run_probe(None);
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "*** 1 privileged test skipped in lab: daolinet-no-such-tool not installed \
             (run `cargo xtask setup`)"
        ),
        "{out}"
    );
    // After libtest's own result line: the last thing a developer sees.
    let result = out.find("test result:").unwrap_or(usize::MAX);
    let summary = out.find("privileged test skipped").unwrap_or(0);
    assert!(summary > result, "summary before the result line:\n{out}");

    for ci in ["true", "1"] {
        let (ok, out) = run_probe(Some(ci));
        assert!(!ok, "CI={ci}: a test that cannot run passed:\n{out}");
        assert!(
            out.contains(
                "skip_probe: this privileged test cannot run under CI=true: \
                 daolinet-no-such-tool not installed"
            ),
            "{out}"
        );
        assert!(!out.contains("skipped in lab"), "{out}");
    }
    let (ok, out) = run_probe(Some("false"));
    assert!(ok && out.contains("skipped in lab"), "{out}");
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", name])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn netns_exists(name: &str) -> bool {
    PathBuf::from("/run/netns").join(name).exists()
}

fn mounted(path: &std::path::Path) -> bool {
    let p = path.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(p.as_str()))
}

#[test]
fn guards_clean_up_also_when_the_test_panics() {
    let Some(_ready) = require(&[Need::Root, Need::Program("ip")]) else {
        return;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let failed = std::thread::spawn(move || {
        let mut lab = Lab::new(&[]).unwrap();
        let h = lab.netns("h");
        let c = lab.container(&h, "c", "pc", "10.9.0.2", "02:00:00:00:09:02");
        let v = lab.veth("va", "vb");
        let fs = lab.bpffs();
        assert!(h.len() <= 15 && v.a().len() <= 15 && v.b().len() <= 15);
        assert!(h.starts_with(lab.tag()) && v.a().starts_with(lab.tag()));
        assert!(c.run(&["ip", "-o", "addr"]).contains("10.9.0.2/24"));
        assert!(mounted(fs.path()));
        tx.send((
            h.to_string(),
            c.to_string(),
            v.a().to_string(),
            fs.path().to_path_buf(),
            lab.dir().to_path_buf(),
        ))
        .unwrap();
        panic!("a failing test");
    })
    .join()
    .is_err();
    assert!(failed);
    let (h, c, veth, bpffs, dir) = rx.recv().unwrap();
    assert!(!netns_exists(&h) && !netns_exists(&c), "namespaces left");
    assert!(!link_exists(&veth), "veth left");
    assert!(!mounted(&bpffs) && !bpffs.exists(), "bpffs left");
    assert!(!dir.exists(), "lab directory left");
}

#[test]
fn two_labs_never_share_a_name() {
    let Some(a) = Lab::new(&[]) else { return };
    let Some(b) = Lab::new(&[]) else { return };
    assert_ne!(a.name("x"), b.name("x"));
    assert_ne!(a.dir(), b.dir());
}

#[test]
fn controller_in_a_namespace_answers_its_api_there() {
    let Some(lab) = Lab::new(&[Need::Binary("daolinet-controller")]) else {
        return;
    };
    let h = lab.netns("h");
    let ctl = lab.controller_in(&h, &[]);
    assert_eq!(ctl.api().call("GET", "/healthz", None).0, 200);
    let (st, _) = ctl.api().without_token().call("GET", "/api/hosts", None);
    assert_eq!(st, 401);
    let hosts = ctl.api().ok("GET", "/api/hosts", None);
    assert_eq!(hosts, serde_json::json!([]));
    assert!(ctl
        .api()
        .text("/metrics")
        .contains("daolinet_switches_connected 0"));
    // Its port is the kernel's choice, inside the namespace only.
    assert_ne!(ctl.openflow_port(), 0);
    h.wait_tcp_listening(ctl.openflow_port(), Duration::from_secs(5));
    let pid = ctl.pid();
    drop(ctl);
    assert!(!PathBuf::from(format!("/proc/{pid}")).exists());
}

#[test]
fn ovs_host_serves_a_secure_bridge_and_goes_away() {
    let needs: Vec<Need> = OVS_PROGRAMS.iter().map(|p| Need::Program(p)).collect();
    let Some(lab) = Lab::new(&needs) else { return };
    let h = lab.netns("ovs");
    let ovs = lab.ovs(&h);
    ovs.add_bridge("br0", "00000000000000e1");
    h.veth("p1", "p1peer");
    ovs.add_port("br0", "p1", 5);
    // The bridge is the namespace's, not the host's.
    assert!(h.run(&["ip", "-o", "link"]).contains("br0"));
    let show = ovs.ofctl("show", "br0", &[]);
    assert!(
        show.contains("dpid:00000000000000e1") && show.contains("5(p1)"),
        "{show}"
    );
    assert_eq!(
        sh(&[
            "ovs-vsctl",
            &format!("--db=unix:{}/db.sock", ovs.dir().display()),
            "get-fail-mode",
            "br0"
        ])
        .trim(),
        "secure"
    );
    ovs.ofctl("add-flow", "br0", &["priority=7,actions=drop"]);
    ovs.wait_flows("br0", "the drop flow", Duration::from_secs(10), |f| {
        f.contains("priority=7 actions=drop")
    });
    let pids: Vec<String> = ["ovsdb-server", "ovs-vswitchd"]
        .iter()
        .map(|d| std::fs::read_to_string(ovs.dir().join(format!("{d}.pid"))).unwrap())
        .collect();
    let dir = ovs.dir().to_path_buf();
    drop(ovs);
    for pid in pids {
        wait_until("an OVS daemon to go", Duration::from_secs(10), || {
            !PathBuf::from(format!("/proc/{}", pid.trim())).exists()
        });
    }
    assert!(!dir.exists());
}

#[test]
fn etcd_cluster_serves_survives_a_member_and_leaves_nothing() {
    use daolinet_testlab::ETCD_PROGRAMS;
    let Some(lab) = Lab::new(&[
        Need::Program(ETCD_PROGRAMS[0]),
        Need::Program(ETCD_PROGRAMS[1]),
    ]) else {
        return;
    };
    let (ns, dirs) = {
        let mut etcd = lab.etcd(3);
        assert_eq!(etcd.endpoints().len(), 3);
        assert!(etcd
            .store_spec()
            .starts_with("etcd:http://127.0.0.11:2379,"));
        assert!(etcd.etcdctl(&["put", "k", "v1"]).ok);
        etcd.kill9(0);
        assert!(!etcd.running(0));
        // Two of three still make a quorum (once they elected a leader,
        // if the killed member was it).
        etcd.wait_healthy(Duration::from_secs(30));
        let r = etcd.etcdctl(&["put", "k", "v2"]);
        assert!(r.ok, "{}\n{}", r.stderr, etcd.logs());
        etcd.start_member(0);
        etcd.wait_healthy(Duration::from_secs(30));
        let r = etcd.etcdctl(&["get", "k", "--print-value-only"]);
        assert_eq!(r.stdout.trim(), "v2");
        let dirs: Vec<PathBuf> = (0..3).map(|i| etcd.data_dir(i)).collect();
        assert!(dirs.iter().all(|d| d.is_dir()));
        (etcd.netns().name().to_string(), dirs)
    };
    let list = sh(&["ip", "netns", "list"]);
    assert!(!list.contains(&ns), "{ns} left behind");
    assert!(
        !Command::new("pgrep")
            .args(["-f", &format!("initial-cluster-token {ns}")])
            .status()
            .unwrap()
            .success(),
        "an etcd member of {ns} still runs"
    );
    drop(lab);
    assert!(dirs.iter().all(|d| !d.exists()));
}
