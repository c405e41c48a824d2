//! Privileged: OpenFlow over TLS with real switches and certificates made
//! by `ovs-pki`. Two agent hosts joined by an underlay wire and an Open
//! vSwitch bridge, all connected to one controller over `ssl:` only, each
//! with the switch certificate of its own datapath id:
//!
//! - the agents (`--controller ssl:...`) and Open vSwitch (`ovs-vsctl
//!   set-ssl`, `set-controller ssl:...`) are served: the first ping
//!   across the agent hosts and between two containers of the Open vSwitch
//!   bridge goes through the controller over TLS and both keep working;
//! - a second bridge of the same Open vSwitch, whose certificate names the
//!   first bridge's datapath id, is refused: it gets no flow and is counted
//!   as a refused TLS peer;
//! - an agent with an `ssl:` controller and missing or unreadable TLS
//!   files, or TLS files without an `ssl:` controller, stops at start with
//!   one line, before anything is loaded.
#![allow(clippy::panic)] // a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use daolinet_testlab::{
    fresh_tag, json_str, output_of, require, wait_poll, workspace_bin, Controller, Lab, Need, Poll,
    TempDir, OVS_PROGRAMS,
};

const NET: &str = "192.168.215";
const BR: &str = "br0";
const BR_DPID: &str = "0000000000000003";
const ROGUE_BR: &str = "br1";
const ROGUE_DPID: &str = "0000000000000004";

/// `ovs-pki` in `dir`: the CAs in `dir/pki`, the controller's certificate
/// (`ctl`) and one switch certificate per datapath id, signed.
fn make_pki(dir: &Path, switches: &[&str]) -> PathBuf {
    let pki = dir.join("pki");
    let run = |args: &[&str]| {
        let out = Command::new("ovs-pki")
            .arg(format!("--dir={}", pki.display()))
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("ovs-pki: {e}"));
        assert!(
            out.status.success(),
            "ovs-pki {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["init"]);
    run(&["req+sign", "ctl", "controller"]);
    for s in switches {
        run(&["req+sign", s, "switch"]);
    }
    pki
}

fn metric(ctl: &Controller, name: &str) -> Option<u64> {
    ctl.api()
        .text("/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn wait_metric(ctl: &Controller, name: &str, want: impl Fn(u64) -> bool) {
    wait_poll(name, Duration::from_secs(30), || match metric(ctl, name) {
        Some(v) if want(v) => Poll::Ready(()),
        other => Poll::Pending(format!("{name} = {other:?}")),
    });
}

#[test]
fn agents_and_open_vswitch_over_tls() {
    let mut needs: Vec<Need> = OVS_PROGRAMS.iter().map(|p| Need::Program(p)).collect();
    needs.extend([
        Need::BpfObject,
        Need::Binary("daolinet-controller"),
        Need::Binary("daolinet-agent"),
        Need::Program("ping"),
        Need::Program("ovs-pki"),
    ]);
    let Some(mut lab) = Lab::new(&needs) else {
        return;
    };
    let certs = lab.subdir("pki");
    let pki = make_pki(&certs, &["0000000000000001", "0000000000000002", BR_DPID]);
    let path = |p: PathBuf| p.to_string_lossy().into_owned();
    let switch_ca = path(pki.join("switchca/cacert.pem"));
    let controller_ca = path(pki.join("controllerca/cacert.pem"));
    let cert = |name: &str| path(certs.join(format!("{name}-cert.pem")));
    let key = |name: &str| path(certs.join(format!("{name}-privkey.pem")));

    let (h1, h2) = lab.wired_hosts(NET, 0xd7);
    // The controller serves OpenFlow over TLS only, in host 1's namespace.
    let opts = lab
        .controller_opts()
        .netns(&h1)
        .listen("ssl:0.0.0.0:6653")
        .args(&[
            "--tls-ca",
            &switch_ca,
            "--tls-cert",
            &cert("ctl"),
            "--tls-key",
            &key("ctl"),
        ]);
    let ctl = Controller::start(&opts);
    let api = ctl.api().clone();
    for i in 1..=2 {
        api.add_host(
            &format!("h{i}"),
            i,
            &format!("{NET}.{i}"),
            &format!("02:00:00:00:d7:0{i}"),
            65000,
        );
    }
    api.add_host("ovs3", BR_DPID, &format!("{NET}.3"), "02:00:00:00:d7:03", 1);
    api.add_network("blue", "10.215.0.0/24");
    let container = |id: &str, host: &str, port: u32| api.add_container(id, "blue", host, port);
    let a = container("ca", "h1", 1);
    let b = container("cb", "h2", 1);
    let oa = container("oa", "ovs3", 2);
    let ob = container("ob", "ovs3", 3);
    let na = lab.container(&h1, "a", "ca", &json_str(&a, "ip"), &json_str(&a, "mac"));
    let nb = lab.container(&h2, "b", "cb", &json_str(&b, "ip"), &json_str(&b, "mac"));
    let noa = lab.container(
        &h1,
        "oa",
        "poa",
        &json_str(&oa, "ip"),
        &json_str(&oa, "mac"),
    );
    let _nob = lab.container(
        &h1,
        "ob",
        "pob",
        &json_str(&ob, "ip"),
        &json_str(&ob, "mac"),
    );

    let agent_args = |dpid: &str, controller: &str| -> Vec<String> {
        [
            "--uplink",
            "eth0",
            "--datapath-id",
            dpid,
            "--port",
            &format!("c{}=1", if dpid == "1" { "a" } else { "b" }),
            "--controller",
            controller,
            "--tls-ca",
            &controller_ca,
            "--tls-cert",
            &cert(&format!("000000000000000{dpid}")),
            "--tls-key",
            &key(&format!("000000000000000{dpid}")),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let args1 = agent_args("1", "ssl:127.0.0.1:6653");
    let args2 = agent_args("2", &format!("ssl:{NET}.1:6653"));
    let _ag1 = lab.agent(&h1, &args1.iter().map(String::as_str).collect::<Vec<_>>());
    let _ag2 = lab.agent(&h2, &args2.iter().map(String::as_str).collect::<Vec<_>>());

    // Open vSwitch in host 1's namespace: its certificate is for BR_DPID.
    let ovs = lab.ovs(&h1);
    ovs.vsctl(&["set-ssl", &key(BR_DPID), &cert(BR_DPID), &controller_ca]);
    ovs.add_bridge(BR, BR_DPID);
    ovs.add_port(BR, "poa", 2);
    ovs.add_port(BR, "pob", 3);
    ovs.set_controller(BR, "ssl:127.0.0.1:6653");
    wait_metric(&ctl, "daolinet_switches_connected", |n| n == 3);
    ovs.wait_flows(BR, "base flows over ssl", Duration::from_secs(30), |f| {
        f.contains("priority=0 actions=CONTROLLER:65535")
    });

    // The first packets go through the controller over TLS.
    assert!(
        na.ping(&json_str(&b, "ip"), 1, 5),
        "first cross-host ping between the agents failed\n{}",
        ctl.log()
    );
    assert!(
        nb.ping(&json_str(&a, "ip"), 3, 2),
        "ping back between the agents failed"
    );
    assert!(
        noa.ping(&json_str(&ob, "ip"), 1, 5),
        "first ping on the Open vSwitch bridge failed\n{}\n{}",
        ovs.dump_flows(BR),
        ovs.vswitchd_log(30)
    );
    assert!(
        noa.ping(&json_str(&ob, "ip"), 3, 2),
        "pings on the Open vSwitch bridge failed"
    );

    // A bridge of the same Open vSwitch claims another datapath id with
    // the certificate of BR_DPID: refused, no flow.
    let refused_before = metric(&ctl, "daolinet_tls_refused_total").unwrap_or(0);
    ovs.add_bridge(ROGUE_BR, ROGUE_DPID);
    ovs.set_controller(ROGUE_BR, "ssl:127.0.0.1:6653");
    wait_metric(&ctl, "daolinet_tls_refused_total", |n| n > refused_before);
    let flows = ovs.dump_flows(ROGUE_BR);
    assert!(
        !flows.contains("CONTROLLER"),
        "a bridge with another datapath's certificate got flows:\n{flows}"
    );
    assert_eq!(
        metric(&ctl, "daolinet_switches_connected"),
        Some(3),
        "the refused bridge counts as connected"
    );
}

#[test]
fn an_agent_with_bad_tls_settings_stops_with_one_line() {
    let Some(_ready) = require(&[Need::Binary("daolinet-agent")]) else {
        return;
    };
    let tmp = TempDir::create(std::env::temp_dir().join(format!("hatls-{}", fresh_tag())));
    let dir = tmp.path();
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap_or_else(|e| panic!("{e}"));
    let missing = dir.join("missing.pem");
    let p = |x: &Path| x.to_string_lossy().into_owned();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--controller".into(), "ssl:127.0.0.1:6653".into()],
            "an ssl: --controller needs --tls-ca, --tls-cert and --tls-key",
        ),
        (
            vec![
                "--controller".into(),
                "ssl:127.0.0.1:6653".into(),
                "--tls-ca".into(),
                p(&missing),
                "--tls-cert".into(),
                p(&missing),
                "--tls-key".into(),
                p(&missing),
            ],
            "missing.pem",
        ),
        (
            vec![
                "--controller".into(),
                "ssl:127.0.0.1:6653".into(),
                "--tls-ca".into(),
                p(&empty),
                "--tls-cert".into(),
                p(&empty),
                "--tls-key".into(),
                p(&empty),
            ],
            "empty.pem",
        ),
        (
            vec![
                "--controller".into(),
                "tcp:127.0.0.1:6653".into(),
                "--tls-ca".into(),
                p(&empty),
            ],
            "are for ssl: controllers",
        ),
        (
            vec!["--controller".into(), "tls:127.0.0.1:6653".into()],
            "expected tcp:IP[:PORT] or ssl:IP[:PORT]",
        ),
    ];
    for (args, want) in cases {
        let mut cmd = Command::new(workspace_bin("daolinet-agent"));
        // An uplink that does not exist: the settings are refused first.
        cmd.args(["run", "--uplink", "hatls-none0"]).args(&args);
        let r = output_of(&mut cmd, "daolinet-agent run");
        let err = r.stderr.trim();
        assert!(!r.ok, "{args:?} started");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
}
