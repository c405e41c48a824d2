//! Privileged: agents register their hosts themselves with the controller's
//! REST API (`run --api URL --api-token-file F --host-name NAME`), with no
//! host added by hand; they are served (base flows) once registered; an
//! agent whose name belongs to another datapath id is refused with one
//! clear line and exits non-zero, leaving the record alone; after the
//! controller comes back with an empty store, the agents register again
//! on reconnection. Bad input (no token, an uplink without IPv4 address)
//! stops the agent at start with one line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers: a failed unwrap is a failed test

mod common;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{connect_in, root_or_skip, sh, Lab, TEST_BPFFS};

const API_PORT: u16 = 18080;
const OF_PORT: u16 = 16653;

/// The controller binary built with this workspace.
fn controller_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?;
    let bin = dir.join("daolinet-controller");
    bin.exists().then_some(bin)
}

/// A controller process in a namespace, killed on drop.
struct Controller(Child);

impl Controller {
    /// Start it in `n` with store `store` and token file `token`, the API and
    /// OpenFlow on fixed ports of that namespace; wait until it serves.
    fn start(bin: &Path, n: &str, store: &Path, token: &Path) -> Controller {
        let mut child = Command::new("ip")
            .args(["netns", "exec", n])
            .arg(bin)
            .args(["run", "--api", &format!("0.0.0.0:{API_PORT}")])
            .args(["--listen", &format!("0.0.0.0:{OF_PORT}")])
            .arg("--store")
            .arg(store)
            .arg("--token-file")
            .arg(token)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the controller");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("api: "), "controller said {line:?}");
        std::thread::spawn(move || for _ in out.lines() {});
        Controller(child)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 request from inside namespace `n`.
fn http(n: &str, token: &str, method: &str, path: &str) -> (u16, serde_json::Value) {
    let addr = format!("127.0.0.1:{API_PORT}");
    let mut s = connect_in(n, &addr).expect("connect to the API");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    let json = match (body.find(['{', '[']), body.rfind(['}', ']'])) {
        (Some(a), Some(b)) if b > a => serde_json::from_str(&body[a..=b]).unwrap_or_default(),
        _ => serde_json::Value::Null,
    };
    (status, json)
}

/// Poll `f` until it gives a value or `what` times out.
fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run an agent that is expected to stop by itself: its exit status and
/// stderr.
fn agent_exits(n: &str, state: &Path, args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", n, env!("CARGO_BIN_EXE_daolinet-agent")])
        .args(["--bpffs", TEST_BPFFS, "--state-dir"])
        .arg(state)
        .arg("run")
        .args(args)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start agent");
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent did not stop by itself: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = std::fs::remove_dir_all(common::pin_dir(state));
    let _ = std::fs::remove_dir_all(state);
    (status, reader.join().unwrap())
}

fn as_str(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The lines of `stderr` that are the agent's error report.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("daolinet-agent: error:"))
        .collect()
}

#[test]
fn agents_register_their_hosts_themselves() {
    if !root_or_skip("agents_register_their_hosts_themselves") {
        return;
    }
    let Some(bin) = controller_bin() else {
        eprintln!(
            "*** SKIP agents_register_their_hosts_themselves: no daolinet-controller binary \
             next to this test; build the workspace (cargo xtask test does) ***"
        );
        return;
    };
    let mut lab = Lab::new("x");
    lab.tag = format!("jnreg{}", std::process::id() % 100000);
    let h1 = lab.netns("h1");
    let h2 = lab.netns("h2");
    sh(&[
        "ip", "-n", &h1, "link", "add", "up0", "type", "veth", "peer", "name", "up0", "netns", &h2,
    ]);
    for (h, mac, ip) in [
        (&h1, "02:00:00:00:77:01", "192.168.77.1/24"),
        (&h2, "02:00:00:00:77:02", "192.168.77.2/24"),
    ] {
        sh(&["ip", "-n", h, "link", "set", "up0", "address", mac]);
        sh(&["ip", "-n", h, "addr", "add", ip, "dev", "up0"]);
        sh(&["ip", "-n", h, "link", "set", "up0", "up"]);
    }
    let dir = PathBuf::from(format!("/tmp/{}-controller", lab.tag));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    let token_file = dir.join("token");
    std::fs::write(&token_file, "jn-secret\n").unwrap();
    let token_arg = token_file.to_str().unwrap();
    let ctl = Controller::start(&bin, &h1, &dir.join("one.redb"), &token_file);

    let api_local = format!("http://127.0.0.1:{API_PORT}");
    let api_remote = format!("http://192.168.77.1:{API_PORT}");
    let of_local = format!("tcp:127.0.0.1:{OF_PORT}");
    let of_remote = format!("tcp:192.168.77.1:{OF_PORT}");
    let agent_args = |api: &str, of: &str, name: &str| -> Vec<String> {
        [
            "--uplink",
            "up0",
            "--controller",
            of,
            "--api",
            api,
            "--api-token-file",
            token_arg,
            "--host-name",
            name,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    // Host 1 joins by itself: its record comes from the uplink.
    let a1 = agent_args(&api_local, &of_local, "jnh1");
    lab.start_agent(&h1, &as_str(&a1));
    let rec = wait_for("host jnh1 registered", 30, || {
        let (st, v) = http(&h1, "jn-secret", "GET", "/api/hosts/jnh1");
        (st == 200).then_some(v)
    });
    assert_eq!(
        rec,
        serde_json::json!({
            "name": "jnh1",
            "dpid": "0000020000007701",
            "ip": "192.168.77.1",
            "mac": "02:00:00:00:77:01",
            "uplink_port": 65000,
        })
    );
    // Registered, the switch is served: the base flows arrive.
    wait_for("base flows on host 1", 30, || {
        lab.agent_cmd(&h1, &["flows"])
            .contains("actions=CONTROLLER")
            .then_some(())
    });

    // Host 2 under host 1's name: refused, one line, non-zero, record kept.
    let state = PathBuf::from(format!("/tmp/{}-h2-dup", lab.tag));
    let (st, stderr) = agent_exits(
        &h2,
        &state,
        &as_str(&agent_args(&api_remote, &of_remote, "jnh1")),
    );
    assert!(!st.success(), "a conflicting agent kept running: {stderr}");
    let lines = error_lines(&stderr);
    assert_eq!(lines.len(), 1, "{stderr}");
    eprintln!("refused as expected: {}", lines[0]);
    assert!(
        lines[0].contains(
            "host \"jnh1\" is registered with datapath id 0000020000007701, not 0000020000007702"
        ),
        "{stderr}"
    );
    assert_eq!(http(&h1, "jn-secret", "GET", "/api/hosts/jnh1").1, rec);

    // Host 2 under its own name.
    let a2 = agent_args(&api_remote, &of_remote, "jnh2");
    lab.start_agent(&h2, &as_str(&a2));
    wait_for("host jnh2 registered", 30, || {
        let (st, v) = http(&h1, "jn-secret", "GET", "/api/hosts/jnh2");
        (st == 200 && v["ip"] == "192.168.77.2").then_some(())
    });

    // The controller comes back with an empty store: both agents register
    // again when they reconnect, and are served again.
    drop(ctl);
    let _ctl = Controller::start(&bin, &h1, &dir.join("two.redb"), &token_file);
    let hosts = wait_for("both hosts registered again", 40, || {
        let (st, v) = http(&h1, "jn-secret", "GET", "/api/hosts");
        (st == 200 && v.as_array().is_some_and(|a| a.len() == 2)).then_some(v)
    });
    assert_eq!(hosts[0], rec, "{hosts}");
    assert_eq!(hosts[1]["dpid"], "0000020000007702", "{hosts}");
    assert!(lab.agent_running(&h1) && lab.agent_running(&h2));
    lab.stop_agent(&h1);
    lab.stop_agent(&h2);

    // Bad input stops the agent at start, with one line.
    let mut no_token = agent_args(&api_remote, &of_remote, "jnh2");
    no_token[7] = dir.join("missing").display().to_string();
    let (st, stderr) = agent_exits(&h2, &state, &as_str(&no_token));
    assert!(!st.success());
    assert_eq!(error_lines(&stderr).len(), 1, "{stderr}");
    assert!(stderr.contains("no API token"), "{stderr}");
    eprintln!("refused as expected: {}", error_lines(&stderr)[0]);
    sh(&[
        "ip", "-n", &h2, "link", "add", "bare0", "type", "veth", "peer", "name", "bare1",
    ]);
    sh(&["ip", "-n", &h2, "link", "set", "bare0", "up"]);
    let mut bare = agent_args(&api_remote, &of_remote, "jnh3");
    bare[1] = "bare0".into();
    let (st, stderr) = agent_exits(&h2, &state, &as_str(&bare));
    assert!(!st.success());
    assert_eq!(error_lines(&stderr).len(), 1, "{stderr}");
    assert!(
        stderr.contains("uplink bare0 has no IPv4 address"),
        "{stderr}"
    );
    eprintln!("refused as expected: {}", error_lines(&stderr)[0]);
    assert_eq!(
        http(&h1, "jn-secret", "GET", "/api/hosts/jnh3").0,
        404,
        "a refused agent registered anyway"
    );
}
