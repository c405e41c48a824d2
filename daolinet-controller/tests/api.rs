//! REST API tests, in process: every bad input gets a clear JSON error and
//! changes nothing; accepted writes are durable in the store.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::Arc;

use daolinet_controller::api::{router, AppState};
use daolinet_controller::service::Controller;
use daolinet_controller::store::{load_model, RedbStore, Store};
use daolinet_policy::Config;
use daolinet_testlab::Api;
use serde_json::Value;

struct Server {
    api: Api,
    ctl: Arc<Controller>,
    _rt: tokio::runtime::Runtime,
}

impl Server {
    fn start(store: Arc<dyn Store>) -> Server {
        let ctl = Arc::new(Controller::open(store, Config::default()).unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let token = "test-token".to_string();
        let app = router(AppState {
            ctl: ctl.clone(),
            token: token.clone().into(),
            switches: None,
        });
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        rt.spawn(async move { axum::serve(listener, app).await });
        Server {
            api: Api::new(&base, Some(&token)),
            ctl,
            _rt: rt,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.api.call(method, path, body)
    }
}

fn mem() -> Server {
    Server::start(Arc::new(daolinet_controller::store::MemStore::new()))
}

#[test]
fn token_is_required() {
    let s = mem();
    let (st, v) = s.api.without_token().call("GET", "/api/hosts", None);
    assert_eq!(st, 401);
    assert!(v["error"].as_str().unwrap().contains("bearer token"), "{v}");
    let (st, _) = Api::new(&s.api.base(), Some("wrong")).call(
        "POST",
        "/api/networks",
        Some(r#"{"name":"n","subnet":"10.0.0.0/24"}"#),
    );
    assert_eq!(st, 401);
    assert_eq!(
        s.call("GET", "/api/networks", None),
        (200, Value::Array(vec![]))
    );
    // Health and metrics need no token.
    let anyone = s.api.without_token();
    assert_eq!(anyone.call("GET", "/healthz", None).0, 200);
    let (st, m) = anyone.call("GET", "/metrics", None);
    assert_eq!(st, 200);
    assert!(
        m.as_str().unwrap().contains("daolinet_api_errors_total 2"),
        "{m}"
    );
}

#[test]
fn happy_path_and_views() {
    let s = mem();
    common::populate(&s.api);
    let (st, c) = s.call("GET", "/api/containers/web", None);
    assert_eq!(st, 200);
    assert_eq!(c["ip"], "10.0.0.2");
    assert_eq!(c["network"], "blue");
    let (_, c3) = s.call("GET", "/api/containers/c3", None);
    assert_eq!(c3["ip"], "10.0.0.2", "overlapping subnets across tenants");
    assert_ne!(c3["physical_ip"], c["physical_ip"]);
    let (_, g) = s.call("GET", "/api/groups/g", None);
    assert_eq!(g["networks"], serde_json::json!(["blue", "red"]));
    let (_, f) = s.call("GET", "/api/firewalls/http", None);
    assert_eq!(
        f["rules"][1],
        serde_json::json!({"proto":"udp","host_port":5353,"container_port":53})
    );
    // The firewall installed its punt flows on h1.
    let (st, flows) = s.call("GET", "/api/flows?host=h1", None);
    assert_eq!(st, 200);
    assert_eq!(flows[0]["flows"].as_array().unwrap().len(), 2, "{flows}");
    assert_eq!(s.call("GET", "/api/flows?host=h9", None).0, 404);
    // Move keeps addresses.
    let (st, moved) = s.call(
        "POST",
        "/api/containers/db/move",
        Some(r#"{"host":"h1","port":12}"#),
    );
    assert_eq!(st, 200, "{moved}");
    assert_eq!(moved["ip"], "10.0.0.50");
    // Deletes.
    assert_eq!(s.call("DELETE", "/api/policies/web/c3", None).0, 204);
    assert_eq!(s.call("DELETE", "/api/groups/g/networks/red", None).0, 200);
    assert_eq!(s.call("DELETE", "/api/firewalls/http", None).0, 204);
    assert_eq!(
        s.call("GET", "/api/flows?host=h1", None).1[0]["flows"],
        serde_json::json!([])
    );
    assert_eq!(s.call("DELETE", "/api/containers/c3", None).0, 204);
    assert_eq!(s.call("DELETE", "/api/networks/red", None).0, 204);
    assert_eq!(s.call("DELETE", "/api/groups/g", None).0, 204);
}

#[test]
fn every_bad_input_is_refused_and_changes_nothing() {
    let s = mem();
    common::populate(&s.api);
    let before = common::dump(&s.api);
    // (method, path, body, status, text in error, field)
    #[allow(clippy::type_complexity)]
    let cases: &[(&str, &str, Option<&str>, u16, &str, Option<&str>)] = &[
        (
            "POST",
            "/api/policies",
            Some(r#"{"a":"web","b":"ghost","action":"connect"}"#),
            404,
            "unknown container \"ghost\"",
            None,
        ),
        (
            "POST",
            "/api/policies",
            Some(r#"{"a":"web","b":"db","action":"maybe"}"#),
            400,
            "unknown variant",
            Some("action"),
        ),
        (
            "POST",
            "/api/policies",
            Some(r#"{"a":"web","b":"web","action":"connect"}"#),
            400,
            "itself",
            Some("pair"),
        ),
        (
            "DELETE",
            "/api/policies/web/db",
            None,
            404,
            "unknown policy",
            None,
        ),
        (
            "POST",
            "/api/containers",
            Some(r#"{"id":"c9","network":"blue","host":"h1","port":20,"ip":"10.0.1.5"}"#),
            400,
            "outside 10.0.0.0/24",
            Some("ip"),
        ),
        (
            "POST",
            "/api/containers",
            Some(r#"{"id":"c9","network":"blue","host":"h1","port":20,"ip":"10.0.0.1"}"#),
            400,
            "reserved",
            Some("ip"),
        ),
        (
            "POST",
            "/api/containers",
            Some(r#"{"id":"c9","network":"blue","host":"h1","port":20,"ip":"10.0.0.50"}"#),
            409,
            "already in use",
            Some("ip"),
        ),
        (
            "POST",
            "/api/containers",
            Some(r#"{"id":"c9","network":"blue","host":"h1","port":10}"#),
            409,
            "already container",
            Some("port"),
        ),
        (
            "POST",
            "/api/containers",
            Some(r#"{"id":"c9","network":"blue","host":"h1","port":1}"#),
            409,
            "uplink",
            Some("port"),
        ),
        (
            "POST",
            "/api/containers",
            Some(r#"{"id":"c9","network":"green","host":"h1","port":20}"#),
            404,
            "unknown network",
            None,
        ),
        (
            "POST",
            "/api/containers",
            Some(r#"{"id":"c9","network":"blue","host":"h7","port":20}"#),
            404,
            "unknown host",
            None,
        ),
        (
            "POST",
            "/api/containers",
            Some(r#"{"id":"c1","network":"blue","host":"h1","port":20}"#),
            409,
            "already exists",
            None,
        ),
        (
            "POST",
            "/api/containers",
            Some(r#"{"id":"c9","name":"web","network":"blue","host":"h1","port":20}"#),
            409,
            "already exists",
            None,
        ),
        (
            "POST",
            "/api/containers",
            Some(r#"{"id":"bad id!","network":"blue","host":"h1","port":20}"#),
            400,
            "invalid id",
            Some("id"),
        ),
        (
            "POST",
            "/api/containers",
            Some(r#"{"id":"c9","network":"blue","host":"h1","port":20,"mac":"ff:ff:ff:ff:ff:ff"}"#),
            400,
            "not a unicast",
            Some("mac"),
        ),
        (
            "POST",
            "/api/containers",
            Some(r#"{"id":"c9","network":"blue","host":"h1","port":20,"mac":"zz"}"#),
            400,
            "invalid MAC",
            Some("mac"),
        ),
        (
            "POST",
            "/api/containers",
            Some(r#"{"network":"blue","host":"h1","port":20}"#),
            400,
            "missing field `id`",
            Some("id"),
        ),
        (
            "POST",
            "/api/containers",
            Some("{not json"),
            400,
            "invalid request body",
            None,
        ),
        ("POST", "/api/containers", None, 400, "JSON object", None),
        (
            "POST",
            "/api/containers/web/move",
            Some(r#"{"host":"h2","port":10}"#),
            409,
            "already container",
            Some("port"),
        ),
        (
            "POST",
            "/api/containers/ghost/move",
            Some(r#"{"host":"h2","port":30}"#),
            404,
            "unknown container",
            None,
        ),
        (
            "POST",
            "/api/networks",
            Some(r#"{"name":"blue","subnet":"10.1.0.0/24"}"#),
            409,
            "already exists",
            None,
        ),
        (
            "POST",
            "/api/networks",
            Some(r#"{"name":"n","subnet":"10.1.0.1/24"}"#),
            400,
            "host bits",
            Some("subnet"),
        ),
        (
            "POST",
            "/api/networks",
            Some(r#"{"name":"n","subnet":"10.1.0.0/24","gateway":"10.2.0.1"}"#),
            400,
            "outside",
            Some("gateway"),
        ),
        (
            "POST",
            "/api/networks",
            Some(r#"{"name":"n","subnet":"10.1.0.0/32"}"#),
            400,
            "too small",
            Some("subnet"),
        ),
        (
            "POST",
            "/api/networks",
            Some(r#"{"name":"n","subnet":"10.1.0.0/24","colour":"x"}"#),
            400,
            "unknown field",
            Some("colour"),
        ),
        (
            "DELETE",
            "/api/networks/blue",
            None,
            409,
            "still in use",
            None,
        ),
        (
            "DELETE",
            "/api/networks/green",
            None,
            404,
            "unknown network",
            None,
        ),
        (
            "POST",
            "/api/hosts",
            Some(
                r#"{"name":"h3","dpid":1,"ip":"192.168.0.3","mac":"02:00:00:00:00:03","uplink_port":1}"#,
            ),
            409,
            "datapath id",
            Some("dpid"),
        ),
        (
            "POST",
            "/api/hosts",
            Some(
                r#"{"name":"h3","dpid":"xyz","ip":"192.168.0.3","mac":"02:00:00:00:00:03","uplink_port":1}"#,
            ),
            400,
            "datapath id",
            Some("dpid"),
        ),
        (
            "POST",
            "/api/hosts",
            Some(
                r#"{"name":"h3","dpid":3,"ip":"192.168.0.1","mac":"02:00:00:00:00:03","uplink_port":1}"#,
            ),
            409,
            "already host",
            Some("ip"),
        ),
        (
            "POST",
            "/api/hosts",
            Some(
                r#"{"name":"h3","dpid":3,"ip":"192.168.0.3","mac":"02:00:00:00:00:03","uplink_port":0}"#,
            ),
            400,
            "not a valid OpenFlow port",
            Some("uplink_port"),
        ),
        (
            "PUT",
            "/api/hosts/h1",
            Some(r#"{"dpid":7,"ip":"192.168.0.1","mac":"02:00:00:00:00:01","uplink_port":1}"#),
            409,
            "registered with datapath id 0000000000000001",
            Some("dpid"),
        ),
        (
            "PUT",
            "/api/hosts/h3",
            Some(r#"{"dpid":3,"ip":"192.168.0.2","mac":"02:00:00:00:00:03","uplink_port":1}"#),
            409,
            "already host \"h2\"",
            Some("ip"),
        ),
        (
            "PUT",
            "/api/hosts/h1",
            Some(r#"{"dpid":1,"ip":"192.168.0.1","mac":"02:00:00:00:00:01","uplink_port":10}"#),
            409,
            "is container",
            Some("uplink_port"),
        ),
        (
            "PUT",
            "/api/hosts/bad%20name",
            Some(r#"{"dpid":3,"ip":"192.168.0.3","mac":"02:00:00:00:00:03","uplink_port":1}"#),
            400,
            "invalid name",
            Some("name"),
        ),
        (
            "PUT",
            "/api/hosts/h3",
            Some(
                r#"{"name":"h3","dpid":3,"ip":"192.168.0.3","mac":"02:00:00:00:00:03","uplink_port":1}"#,
            ),
            400,
            "unknown field `name`",
            Some("name"),
        ),
        ("DELETE", "/api/hosts/h1", None, 409, "still in use", None),
        (
            "POST",
            "/api/groups",
            Some(r#"{"name":"g","networks":[]}"#),
            409,
            "already exists",
            None,
        ),
        (
            "POST",
            "/api/groups",
            Some(r#"{"name":"g2","networks":["blue","green"]}"#),
            404,
            "unknown network \"green\"",
            None,
        ),
        (
            "POST",
            "/api/groups/g/networks",
            Some(r#"{"network":"blue"}"#),
            409,
            "already in group",
            Some("network"),
        ),
        (
            "DELETE",
            "/api/groups/nope",
            None,
            404,
            "unknown group",
            None,
        ),
        (
            "POST",
            "/api/firewalls",
            Some(r#"{"name":"f2","container":"db","rules":["8080"]}"#),
            400,
            "HOSTPORT:PORT",
            Some("rules"),
        ),
        (
            "POST",
            "/api/firewalls",
            Some(r#"{"name":"f2","container":"db","rules":["0:80"]}"#),
            400,
            "between 1 and 65535",
            Some("rules"),
        ),
        (
            "POST",
            "/api/firewalls",
            Some(r#"{"name":"f2","container":"db","rules":["80:80/sctp"]}"#),
            400,
            "tcp or udp",
            Some("rules"),
        ),
        (
            "POST",
            "/api/firewalls",
            Some(r#"{"name":"f2","container":"db","rules":[]}"#),
            400,
            "at least one rule",
            Some("rules"),
        ),
        (
            "POST",
            "/api/firewalls",
            Some(r#"{"name":"f2","container":"c3","rules":["8080:81"]}"#),
            409,
            "already used by firewall",
            Some("rules"),
        ),
        (
            "POST",
            "/api/firewalls",
            Some(r#"{"name":"f2","container":"ghost","rules":["1:1"]}"#),
            404,
            "unknown container",
            None,
        ),
        (
            "POST",
            "/api/firewalls",
            Some(r#"{"name":"http","container":"db","rules":["1:1"]}"#),
            409,
            "already exists",
            None,
        ),
        (
            "GET",
            "/api/containers/ghost",
            None,
            404,
            "unknown container",
            None,
        ),
        (
            "GET",
            "/api/nothing",
            None,
            404,
            "no such API endpoint",
            None,
        ),
        (
            "PUT",
            "/api/networks",
            Some("{}"),
            405,
            "method not allowed",
            None,
        ),
    ];
    for (method, path, body, status, text, field) in cases {
        let (st, v) = s.call(method, path, *body);
        let ctx = format!("{method} {path} {body:?} -> {st} {v}");
        assert_eq!(st, *status, "{ctx}");
        let err = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error text: {ctx}"));
        assert!(err.contains(text), "{ctx}: expected {text:?}");
        assert_eq!(v["field"].as_str(), *field, "{ctx}");
        assert_eq!(common::dump(&s.api), before, "{ctx} changed the model");
    }
}

#[test]
fn hosts_register_themselves_idempotently() {
    let s = mem();
    let body = r#"{"dpid":"00000000000000a1","ip":"192.168.0.9","mac":"02:00:00:00:00:09","uplink_port":65000,"local_mac":"02:00:00:00:00:09"}"#;
    let (st, h) = s.call("PUT", "/api/hosts/self1", Some(body));
    assert_eq!(st, 201, "{h}");
    assert_eq!(h["dpid"], "00000000000000a1");
    assert!(h.get("local_mac").is_none(), "LOCAL MAC = uplink MAC: {h}");
    // Again, as after a restart: unchanged, nothing written, no new
    // revision of the model.
    let rev = *s.ctl.subscribe_model().borrow();
    let (st, again) = s.call("PUT", "/api/hosts/self1", Some(body));
    assert_eq!((st, &again), (200, &h));
    assert_eq!(*s.ctl.subscribe_model().borrow(), rev);
    // A new address: the record is updated.
    let (st, moved) = s.call(
        "PUT",
        "/api/hosts/self1",
        Some(r#"{"dpid":"00000000000000a1","ip":"192.168.0.10","mac":"02:00:00:00:00:09","uplink_port":65000}"#),
    );
    assert_eq!(st, 200, "{moved}");
    assert_eq!(moved["ip"], "192.168.0.10");
    assert_eq!(s.call("GET", "/api/hosts/self1", None).1, moved);
}

#[test]
fn accepted_writes_are_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.redb");
    let dumped = {
        let store = Arc::new(RedbStore::open(&path).unwrap());
        let s = Server::start(store);
        common::populate(&s.api);
        let d = common::dump(&s.api);
        let model = s.ctl.snapshot().unwrap().model.clone();
        (d, model)
    };
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(load_model(&store).unwrap(), dumped.1);
    let s = Server::start(Arc::new(store));
    assert_eq!(common::dump(&s.api), dumped.0);
}
