//! Helpers shared by the integration tests: the controller binary started
//! through the test lab, and a small model to fill it with.
#![allow(dead_code, clippy::panic)]

pub mod fakeswitch;

use std::path::Path;

use daolinet_testlab::{Api, Controller, ControllerOpts};
use serde_json::Value;

/// Start this package's `daolinet-controller run` with its store in `dir`,
/// API and OpenFlow on kernel-chosen ports of 127.0.0.1.
pub fn start(dir: &Path) -> Controller {
    Controller::start_bin(
        Path::new(env!("CARGO_BIN_EXE_daolinet-controller")),
        &ControllerOpts::new(dir),
    )
}

/// Creates a small topology through the API.
pub fn populate(api: &Api) {
    let p = |m: &str, path: &str, b: Option<&str>| api.call(m, path, b);
    let ok = |r: (u16, Value)| assert!(r.0 == 201 || r.0 == 200, "{r:?}");
    ok(p(
        "POST",
        "/api/hosts",
        Some(
            r#"{"name":"h1","dpid":"0000000000000001","ip":"192.168.0.1","mac":"02:00:00:00:00:01","uplink_port":1}"#,
        ),
    ));
    ok(p(
        "POST",
        "/api/hosts",
        Some(
            r#"{"name":"h2","dpid":2,"ip":"192.168.0.2","mac":"02:00:00:00:00:02","uplink_port":1}"#,
        ),
    ));
    ok(p(
        "POST",
        "/api/networks",
        Some(r#"{"name":"blue","subnet":"10.0.0.0/24","tenant":"t1"}"#),
    ));
    ok(p(
        "POST",
        "/api/networks",
        Some(r#"{"name":"red","subnet":"10.0.0.0/24","tenant":"t2"}"#),
    ));
    ok(p(
        "POST",
        "/api/containers",
        Some(r#"{"id":"c1","name":"web","network":"blue","host":"h1","port":10}"#),
    ));
    ok(p(
        "POST",
        "/api/containers",
        Some(r#"{"id":"c2","name":"db","network":"blue","host":"h2","port":10,"ip":"10.0.0.50"}"#),
    ));
    ok(p(
        "POST",
        "/api/containers",
        Some(r#"{"id":"c3","network":"red","host":"h1","port":11}"#),
    ));
    ok(p(
        "POST",
        "/api/groups",
        Some(r#"{"name":"g","networks":["blue"]}"#),
    ));
    ok(p(
        "POST",
        "/api/groups/g/networks",
        Some(r#"{"network":"red"}"#),
    ));
    ok(p(
        "POST",
        "/api/policies",
        Some(r#"{"a":"web","b":"c3","action":"disconnect"}"#),
    ));
    ok(p(
        "POST",
        "/api/firewalls",
        Some(r#"{"name":"http","container":"web","rules":["8080:80","5353:53/udp"]}"#),
    ));
}

/// Everything the API lists, to compare before/after.
pub fn dump(api: &Api) -> Value {
    let mut all = serde_json::Map::new();
    for k in [
        "hosts",
        "networks",
        "containers",
        "groups",
        "policies",
        "firewalls",
    ] {
        let (s, v) = api.call("GET", &format!("/api/{k}"), None);
        assert_eq!(s, 200);
        all.insert(k.into(), v);
    }
    Value::Object(all)
}
