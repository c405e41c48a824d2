//! The real controller binary: what the API accepted survives `kill -9`.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

#[test]
fn store_survives_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::start(dir.path());
    let token = p.api().token().map(str::to_string);
    common::populate(p.api());
    // One more write right before the kill: acknowledged means durable.
    let (st, last) = p.api().call(
        "POST",
        "/api/containers",
        Some(r#"{"id":"late","network":"red","host":"h2","port":20}"#),
    );
    assert_eq!(st, 201, "{last}");
    let before = common::dump(p.api());
    p.kill9();

    let p = common::start(dir.path());
    assert_eq!(p.api().token(), token.as_deref(), "the token file is kept");
    let after = common::dump(p.api());
    assert_eq!(after, before);
    // Addresses are never handed out twice after a restart.
    let (st, c) = p.api().call(
        "POST",
        "/api/containers",
        Some(r#"{"id":"new","network":"red","host":"h2","port":21}"#),
    );
    assert_eq!(st, 201, "{c}");
    let all = p.api().call("GET", "/api/containers", None).1;
    let all = all.as_array().unwrap();
    for other in all.iter().filter(|o| o["id"] != "new") {
        assert_ne!(other["physical_ip"], c["physical_ip"]);
        if other["network"] == "red" {
            assert_ne!(other["ip"], c["ip"]);
        }
    }
    assert_eq!(all.len(), 5);
    // A clean stop on SIGTERM.
    let code = p.terminate();
    assert!(code.is_some_and(|c| c.success()), "{code:?}");
}
