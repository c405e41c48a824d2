//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// Something that performs an API call: (method, path, body) -> (status, JSON).
pub type Caller<'a> = &'a dyn Fn(&str, &str, Option<&str>) -> (u16, Value);

/// A blocking HTTP call; returns (status, JSON body or Null).
pub fn call(
    base: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let mut req = ureq::request(method, &format!("{base}{path}"));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let res = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, v)
}

/// A controller process.
pub struct Proc {
    pub child: Child,
    pub base: String,
    pub token: String,
    /// The OpenFlow listen address.
    pub openflow: std::net::SocketAddr,
}

impl Proc {
    /// Starts `daolinet-controller run` on a free port with its store in `dir`.
    pub fn start(dir: &Path) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_daolinet-controller"))
            .args([
                "run",
                "--api",
                "127.0.0.1:0",
                "--listen",
                "127.0.0.1:0",
                "--store",
            ])
            .arg(dir.join("controller.redb"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let mut out = BufReader::new(out);
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("api: ")
            .unwrap_or_else(|| panic!("unexpected {line:?}"))
            .to_string();
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let openflow = line
            .trim()
            .strip_prefix("openflow: ")
            .unwrap_or_else(|| panic!("unexpected {line:?}"))
            .parse()
            .unwrap();
        let token = std::fs::read_to_string(dir.join("api-token"))
            .unwrap()
            .trim()
            .to_string();
        Proc {
            child,
            base,
            token,
            openflow,
        }
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        call(&self.base, Some(&self.token), method, path, body)
    }

    /// SIGKILL, no cleanup.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a small topology through the API.
pub fn populate(p: Caller<'_>) {
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
pub fn dump(p: Caller<'_>) -> Value {
    let mut all = serde_json::Map::new();
    for k in [
        "hosts",
        "networks",
        "containers",
        "groups",
        "policies",
        "firewalls",
    ] {
        let (s, v) = p("GET", &format!("/api/{k}"), None);
        assert_eq!(s, 200);
        all.insert(k.into(), v);
    }
    Value::Object(all)
}
