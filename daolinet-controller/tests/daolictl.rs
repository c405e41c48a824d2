//! daolictl against a running controller binary.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::process::{Command, Output};

use daolinet_testlab::Controller;

fn ctl(p: &Controller, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_daolictl"))
        .arg("--api")
        .arg(p.api().base())
        .args(args)
        .env("DAOLI_TOKEN", p.api().token().unwrap_or_default())
        .output()
        .unwrap()
}

fn ok(p: &Controller, args: &[&str]) -> String {
    let o = ctl(p, args);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "daolictl {args:?}: {}{out}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn fails(p: &Controller, args: &[&str], text: &str) {
    let o = ctl(p, args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "daolictl {args:?} should fail");
    assert!(
        err.contains(text),
        "daolictl {args:?}: {err:?} lacks {text:?}"
    );
}

#[test]
fn verbs_tables_json_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::start(dir.path());
    ok(
        &p,
        &[
            "host",
            "add",
            "h1",
            "--dpid",
            "1",
            "--ip",
            "192.168.0.1",
            "--mac",
            "02:00:00:00:00:01",
            "--uplink-port",
            "1",
        ],
    );
    ok(
        &p,
        &[
            "host",
            "add",
            "h2",
            "--dpid",
            "2",
            "--ip",
            "192.168.0.2",
            "--mac",
            "02:00:00:00:00:02",
            "--uplink-port",
            "1",
        ],
    );
    let t = ok(
        &p,
        &[
            "network",
            "create",
            "blue",
            "--subnet",
            "10.0.0.0/24",
            "--tenant",
            "t1",
        ],
    );
    assert!(t.starts_with("NAME") && t.contains("10.0.0.1"), "{t}");
    ok(
        &p,
        &[
            "network",
            "create",
            "red",
            "--subnet",
            "10.0.0.0/24",
            "--no-nat-out",
        ],
    );
    ok(
        &p,
        &[
            "container",
            "create",
            "c1",
            "--name",
            "web",
            "--network",
            "blue",
            "--host",
            "h1",
            "--port",
            "10",
        ],
    );
    ok(
        &p,
        &[
            "container",
            "create",
            "c2",
            "--network",
            "red",
            "--host",
            "h2",
            "--port",
            "10",
        ],
    );
    let t = ok(&p, &["container", "show"]);
    assert_eq!(t.lines().count(), 3, "{t}");
    assert!(t.contains("web") && t.contains("10.0.0.2"), "{t}");
    let j: serde_json::Value =
        serde_json::from_str(&ok(&p, &["container", "show", "web", "-o", "json"])).unwrap();
    assert_eq!(j["network"], "blue");

    ok(&p, &["group", "create", "g", "blue"]);
    let t = ok(&p, &["group", "add", "g", "red"]);
    assert!(t.contains("blue,red"), "{t}");
    ok(&p, &["group", "remove", "g", "red"]);
    assert!(ok(&p, &["group", "show", "g"]).contains("blue"));
    ok(&p, &["connect", "web:c2"]);
    let t = ok(&p, &["policy", "show"]);
    assert!(t.contains("connect"), "{t}");
    ok(&p, &["disconnect", "c1:c2"]);
    assert!(ok(&p, &["policy", "show"]).contains("disconnect"));
    ok(&p, &["policy", "delete", "c1:c2"]);

    // trace: isolated (no group, no pair policy), NAT-out, errors.
    let t = ok(&p, &["trace", "web", "c2", "--proto", "udp"]);
    assert!(
        t.contains("verdict  denied (isolated)")
            && t.contains("networks blue (web) and red (c2) share no group")
            && t.contains("result   dropped"),
        "{t}"
    );
    let j: serde_json::Value =
        serde_json::from_str(&ok(&p, &["trace", "web", "9.9.9.9", "-o", "json"])).unwrap();
    assert_eq!(j["verdict"], "nat_out", "{j:#}");
    assert_eq!(j["result"]["kind"], "outside", "{j:#}");
    let t = ok(&p, &["trace", "c2", "9.9.9.9"]);
    assert!(t.contains("denied (nat_disabled)"), "{t}");
    fails(
        &p,
        &["trace", "ghost", "web"],
        "unknown source container \"ghost\" (field: src) [HTTP 404]",
    );
    fails(
        &p,
        &["trace", "web", "c2", "--proto", "icmp", "--dport", "1"],
        "a destination port needs --proto tcp or udp (field: dport) [HTTP 400]",
    );
    fails(
        &p,
        &["trace", "web", "c2", "--proto", "sctp"],
        "invalid value 'sctp'",
    );
    let (st, v) = p.api().call("POST", "/api/trace", Some(r#"{"src":"web"}"#));
    assert_eq!((st, v["field"].as_str()), (400, Some("dst")), "{v}");
    let (st, v) = p.api().call(
        "POST",
        "/api/trace",
        Some(r#"{"src":"web","dst":"c2","proto":"sctp"}"#),
    );
    assert_eq!((st, v["field"].as_str()), (400, Some("proto")), "{v}");
    // trace --live: no switch is connected to this controller, so the probe
    // cannot be sent; bad live requests are refused before anything is.
    fails(
        &p,
        &["trace", "web", "c2", "--live"],
        "host h1's switch (datapath 0000000000000001) is not connected to this controller (field: src) [HTTP 503]",
    );
    fails(
        &p,
        &["trace", "ghost", "c2", "--live"],
        "unknown source container \"ghost\" (field: src) [HTTP 404]",
    );
    fails(
        &p,
        &["trace", "web", "c2", "--live", "--timeout", "0"],
        "--timeout 0: give more than 0 and at most 20 seconds",
    );
    fails(&p, &["trace", "web", "c2", "--timeout", "1"], "--live");
    for (body, field) in [
        (r#"{"src":"web","dst":"c2","live":"yes"}"#, "live"),
        (
            r#"{"src":"web","dst":"c2","live":true,"timeout_ms":0}"#,
            "timeout_ms",
        ),
        (
            r#"{"src":"web","dst":"c2","live":true,"timeout_ms":20001}"#,
            "timeout_ms",
        ),
        (r#"{"src":"web","dst":"c2","timeout_ms":100}"#, "timeout_ms"),
    ] {
        let (st, v) = p.api().call("POST", "/api/trace", Some(body));
        assert_eq!((st, v["field"].as_str()), (400, Some(field)), "{body}: {v}");
    }

    let t = ok(
        &p,
        &[
            "firewall",
            "create",
            "--container",
            "web",
            "--rule",
            "8080:80",
            "--rule",
            "53:53/udp",
            "http",
        ],
    );
    assert!(t.contains("8080:80/tcp,53:53/udp"), "{t}");
    let t = ok(&p, &["flows", "--host", "h1"]);
    assert!(
        t.contains("host h1") && t.contains("tp_dst=8080") && t.contains("actions=CONTROLLER"),
        "{t}"
    );
    ok(&p, &["firewall", "show"]);
    ok(&p, &["firewall", "delete", "http"]);

    let t = ok(
        &p,
        &["container", "move", "web", "--host", "h2", "--port", "11"],
    );
    assert!(t.contains("h2") && t.contains("10.0.0.2"), "{t}");
    assert!(ok(&p, &["host", "show"]).contains("0000000000000002"));

    // Errors: clear, non-zero, nothing changed.
    let before = ok(&p, &["container", "show", "-o", "json"]);
    fails(&p, &["connect", "web"], "expected A:B");
    fails(&p, &["connect", "web:ghost"], "unknown container \"ghost\"");
    fails(
        &p,
        &[
            "firewall",
            "create",
            "--container",
            "web",
            "--rule",
            "80",
            "f",
        ],
        "HOSTPORT:PORT",
    );
    fails(
        &p,
        &["network", "create", "blue", "--subnet", "10.9.0.0/24"],
        "already exists",
    );
    fails(
        &p,
        &["network", "create", "x", "--subnet", "10.9.0.1/24"],
        "host bits",
    );
    fails(
        &p,
        &[
            "container",
            "create",
            "c9",
            "--network",
            "blue",
            "--host",
            "h1",
            "--port",
            "12",
            "--ip",
            "10.1.0.9",
        ],
        "field: ip",
    );
    fails(
        &p,
        &["container", "move", "ghost", "--host", "h1", "--port", "12"],
        "unknown container",
    );
    assert_eq!(ok(&p, &["container", "show", "-o", "json"]), before);

    // Token problems.
    let o = Command::new(env!("CARGO_BIN_EXE_daolictl"))
        .args(["--api", &p.api().base(), "--token", "nope", "host", "show"])
        .env_remove("DAOLI_TOKEN")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("bearer token"));
    let o = Command::new(env!("CARGO_BIN_EXE_daolictl"))
        .args([
            "--api",
            &p.api().base(),
            "--token-file",
            "/nonexistent/token",
            "host",
            "show",
        ])
        .env_remove("DAOLI_TOKEN")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("no API token"));
    let tf = dir.path().join("api-token");
    let o = Command::new(env!("CARGO_BIN_EXE_daolictl"))
        .args([
            "--api",
            &p.api().base(),
            "--token-file",
            tf.to_str().unwrap(),
            "host",
            "show",
        ])
        .env_remove("DAOLI_TOKEN")
        .output()
        .unwrap();
    assert!(o.status.success());

    // Cleanup verbs.
    ok(&p, &["container", "delete", "c2"]);
    ok(&p, &["container", "delete", "web"]);
    ok(&p, &["group", "delete", "g"]);
    ok(&p, &["network", "delete", "red"]);
    ok(&p, &["host", "delete", "h1"]);
}

#[test]
fn unreachable_controller_and_completions() {
    let o = Command::new(env!("CARGO_BIN_EXE_daolictl"))
        .args([
            "--api",
            "http://127.0.0.1:1",
            "--token",
            "x",
            "network",
            "show",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot reach the controller"));
    for shell in ["bash", "zsh", "fish"] {
        let o = Command::new(env!("CARGO_BIN_EXE_daolictl"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(o.status.success());
        assert!(String::from_utf8_lossy(&o.stdout).contains("daolictl"));
    }
}
