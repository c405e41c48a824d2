//! The real controller binary: what the API accepted survives `kill -9`.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::Proc;

#[test]
fn store_survives_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(dir.path());
    let token = p.token.clone();
    common::populate(&|m, path, b| p.call(m, path, b));
    // One more write right before the kill: acknowledged means durable.
    let (st, last) = p.call(
        "POST",
        "/api/containers",
        Some(r#"{"id":"late","network":"red","host":"h2","port":20}"#),
    );
    assert_eq!(st, 201, "{last}");
    let before = common::dump(&|m, path, b| p.call(m, path, b));
    p.kill9();

    let p = Proc::start(dir.path());
    assert_eq!(p.token, token, "the token file is kept");
    let after = common::dump(&|m, path, b| p.call(m, path, b));
    assert_eq!(after, before);
    // Addresses are never handed out twice after a restart.
    let (st, c) = p.call(
        "POST",
        "/api/containers",
        Some(r#"{"id":"new","network":"red","host":"h2","port":21}"#),
    );
    assert_eq!(st, 201, "{c}");
    let all = p.call("GET", "/api/containers", None).1;
    let all = all.as_array().unwrap();
    for other in all.iter().filter(|o| o["id"] != "new") {
        assert_ne!(other["physical_ip"], c["physical_ip"]);
        if other["network"] == "red" {
            assert_ne!(other["ip"], c["ip"]);
        }
    }
    assert_eq!(all.len(), 5);
    // A clean stop on SIGTERM.
    let pid = p.child.id();
    let mut p = p;
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let code = p.child.wait().unwrap();
    assert!(code.success(), "{code:?}");
}
