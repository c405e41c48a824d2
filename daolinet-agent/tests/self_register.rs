//! Privileged: agents register their hosts themselves with the controller's
//! REST API (`run --api URL --api-token-file F --host-name NAME`), with no
//! host added by hand; they are served (base flows) once registered; an
//! agent whose name belongs to another datapath id is refused with one
//! clear line and exits non-zero, leaving the record alone; after the
//! controller comes back with an empty store, the agents register again
//! on reconnection. Bad input (no token, an uplink without IPv4 address)
//! stops the agent at start with one line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use daolinet_testlab::{wait_for, wait_until, Agent, Controller, Lab, Need, Ran, DEADLINE};

/// The API port inside the controller's namespace: fixed, so that the
/// agents' `--api` still points at the controller once it comes back.
const API_PORT: u16 = 18080;
const TOKEN: &str = "jn-secret";

/// A controller in `ns` with a fresh store, the API on [`API_PORT`] and
/// the token [`TOKEN`].
fn controller(lab: &Lab, ns: &str) -> Controller {
    let opts = lab
        .controller_opts()
        .netns(ns)
        .listen("0.0.0.0:0")
        .api(&format!("0.0.0.0:{API_PORT}"));
    std::fs::write(opts.dir.join("api-token"), format!("{TOKEN}\n")).unwrap();
    Controller::start(&opts)
}

/// `daolinet-agent run ARGS` of `agent`'s host, run until it stops by
/// itself.
fn run_until_exit(agent: &Agent, args: &[&str]) -> Ran {
    let mut full = vec!["run"];
    full.extend_from_slice(args);
    let out = agent
        .command(&full)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The agent's error report: exactly one line.
#[track_caller]
fn one_error_line(r: &Ran) -> String {
    assert!(!r.ok, "the agent kept running or exited 0:\n{}", r.stderr);
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("daolinet-agent: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    eprintln!("refused as expected: {}", lines[0]);
    lines[0].to_string()
}

fn args<'a>(
    uplink: &'a str,
    of: &'a str,
    api: &'a str,
    token: &'a str,
    name: &'a str,
) -> Vec<&'a str> {
    vec![
        "--uplink",
        uplink,
        "--controller",
        of,
        "--api",
        api,
        "--api-token-file",
        token,
        "--host-name",
        name,
    ]
}

#[test]
fn agents_register_their_hosts_themselves() {
    let Some(mut lab) = Lab::new(&[Need::BpfObject, Need::Binary("daolinet-controller")]) else {
        return;
    };
    let h1 = lab.netns("h1");
    let h2 = lab.netns("h2");
    h1.veth_to("up0", &h2, "up0");
    for (h, mac, ip) in [
        (&h1, "02:00:00:00:77:01", "192.168.77.1/24"),
        (&h2, "02:00:00:00:77:02", "192.168.77.2/24"),
    ] {
        h.ip(&["link", "set", "up0", "address", mac]);
        h.addr("up0", ip);
    }
    let token_file: PathBuf = lab.subdir("agents").join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let token = token_file.to_str().unwrap();
    let ctl = controller(&lab, &h1);
    let of_port = ctl.openflow_port();
    let (of1, of2) = (
        format!("tcp:127.0.0.1:{of_port}"),
        format!("tcp:192.168.77.1:{of_port}"),
    );
    let (api1, api2) = (
        format!("http://127.0.0.1:{API_PORT}"),
        format!("http://192.168.77.1:{API_PORT}"),
    );

    // Host 1 joins by itself: its record comes from the uplink.
    let a1 = lab.agent(&h1, &args("up0", &of1, &api1, token, "jnh1"));
    let rec = wait_for("host jnh1 registered", DEADLINE, || {
        let (st, v) = ctl.api().call("GET", "/api/hosts/jnh1", None);
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
    wait_until("base flows on host 1", DEADLINE, || {
        a1.cli(&["flows"]).contains("actions=CONTROLLER")
    });

    // Host 2 under host 1's name: refused, one line, non-zero, record kept.
    let a2_dup = lab.agent_stopped(&h2, &[]);
    let line = one_error_line(&run_until_exit(
        &a2_dup,
        &args("up0", &of2, &api2, token, "jnh1"),
    ));
    assert!(
        line.contains(
            "host \"jnh1\" is registered with datapath id 0000020000007701, not 0000020000007702"
        ),
        "{line}"
    );
    assert_eq!(ctl.api().ok("GET", "/api/hosts/jnh1", None), rec);

    // Host 2 under its own name.
    let mut a2 = lab.agent(&h2, &args("up0", &of2, &api2, token, "jnh2"));
    wait_until("host jnh2 registered", DEADLINE, || {
        ctl.api().call("GET", "/api/hosts/jnh2", None).1["ip"] == "192.168.77.2"
    });

    // The controller comes back with an empty store on the same addresses:
    // both agents register again when they reconnect, and are served.
    let of_listen = format!("0.0.0.0:{of_port}");
    drop(ctl);
    let opts = lab
        .controller_opts()
        .netns(&h1)
        .listen(&of_listen)
        .api(&format!("0.0.0.0:{API_PORT}"));
    std::fs::write(opts.dir.join("api-token"), format!("{TOKEN}\n")).unwrap();
    let ctl = Controller::start(&opts);
    let hosts = wait_for("both hosts registered again", DEADLINE, || {
        let (st, v) = ctl.api().call("GET", "/api/hosts", None);
        (st == 200 && v.as_array().is_some_and(|a| a.len() == 2)).then_some(v)
    });
    assert_eq!(hosts[0], rec, "{hosts}");
    assert_eq!(hosts[1]["dpid"], "0000020000007702", "{hosts}");
    wait_until("host 2 served again", Duration::from_secs(30), || {
        let v = ctl.api().call("GET", "/api/flows?host=jnh2", None).1;
        v[0]["flows"].as_array().is_some_and(|f| !f.is_empty())
    });
    a2.stop();

    // Bad input stops the agent at start, with one line.
    let missing = Path::new(token).with_file_name("missing");
    let line = one_error_line(&run_until_exit(
        &a2_dup,
        &args("up0", &of2, &api2, missing.to_str().unwrap(), "jnh2"),
    ));
    assert!(line.contains("no API token"), "{line}");
    h2.veth("bare0", "bare1");
    let line = one_error_line(&run_until_exit(
        &a2_dup,
        &args("bare0", &of2, &api2, token, "jnh3"),
    ));
    assert!(line.contains("uplink bare0 has no IPv4 address"), "{line}");
    assert_eq!(
        ctl.api().call("GET", "/api/hosts/jnh3", None).0,
        404,
        "a refused agent registered anyway"
    );
    drop(a1);
}
