//! Privileged: agents register their hosts themselves with the controller's
//! REST API (`run --api URL --api-token-file F --host-name NAME`), with no
//! host added by hand; they are served (base flows) once registered; an
//! agent whose name belongs to another datapath id is refused with one
//! clear line and exits non-zero, leaving the record alone; after the
//! controller comes back with an empty store, the agents register again
//! on reconnection.
//!
//! Bad input at join stops the agent at start with one error line, a
//! non-zero exit and the host as it was (links, addresses, routes,
//! nftables, IPv4 sysctls, pins, no registration): a wrong API address
//! (after `--join-timeout`), an address that answers but is not the API
//! (at once), a wrong OpenFlow controller address, one that is not
//! OpenFlow, a missing or refused token, an uplink without IPv4 address,
//! joining twice (a second agent on the uplink, or on the state dir). A
//! start that fails after the join withdraws the record it created.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use daolinet_testlab::{
    assert_unchanged, wait_for, wait_until, Agent, Controller, Lab, Need, Ran, DEADLINE,
};

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

/// Everything a start changes on an agent host, to compare before and
/// after: links (the LOCAL device, XDP), addresses, routes, nftables,
/// IPv4 sysctls (forwarding, ARP), the lab's pins (a new pin directory
/// is a loaded datapath), whether the state dir was made, and the
/// controller's hosts.
fn host_state(host: &str, agent: &Agent, ctl: &Controller) -> String {
    let ns = |args: &[&str]| {
        let mut full = vec!["ip", "netns", "exec", host];
        full.extend_from_slice(args);
        daolinet_testlab::sh(&full)
    };
    let pretty = |json: String| {
        serde_json::from_str::<serde_json::Value>(&json)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or(json)
    };
    let pins: Vec<String> = walk(agent.bpffs());
    format!(
        "link: {}\naddr: {}\nroute: {}\nnft: {}\nsysctl: {}\npins: {pins:#?}\nstate dir: {}\nhosts: {}",
        links(&ns(&["ip", "-j", "-d", "link"])),
        pretty(ns(&["ip", "-4", "-j", "addr"])),
        pretty(ns(&["ip", "-4", "-j", "route", "show", "table", "all"])),
        ns(&["nft", "list", "ruleset"]),
        ns(&["sysctl", "-a", "-r", r"^net\.ipv4\.(ip_forward|conf\.)"]),
        agent.state_dir().exists(),
        ctl.api().ok("GET", "/api/hosts", None),
    )
}

/// The links of `ip -j -d link`: what a start could add or change (name,
/// kind, MAC, MTU, XDP program, flags), without their carrier state (a
/// new veth's carrier comes up by itself).
fn links(json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let keep = ["ifname", "link_type", "address", "mtu", "xdp", "linkinfo"];
    let links: Vec<serde_json::Value> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            let mut m: serde_json::Map<_, _> = keep
                .iter()
                .filter_map(|k| l.get(*k).map(|x| (k.to_string(), x.clone())))
                .collect();
            let flags: Vec<&serde_json::Value> = l["flags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| *f != "LOWER_UP" && *f != "NO-CARRIER")
                .collect();
            m.insert("flags".into(), serde_json::json!(flags));
            m.into()
        })
        .collect();
    serde_json::to_string_pretty(&links).unwrap()
}

/// Every path under `dir`, sorted.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.display().to_string());
            if p.is_dir() {
                todo.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Bad input at join (a wrong API or OpenFlow address, one that answers
/// but is not the controller's, a missing or refused token, an uplink
/// without IPv4 address, a second agent on a joined host): one error
/// line, a non-zero exit, and the host as it was (links, addresses,
/// routes, nftables, sysctls, pins, no registration). A start that fails
/// after the join withdraws the record it created.
#[test]
fn bad_input_at_join_leaves_the_host_as_it_was() {
    let Some(mut lab) = Lab::new(&[
        Need::BpfObject,
        Need::Binary("daolinet-controller"),
        Need::Program("nft"),
        Need::Program("sysctl"),
    ]) else {
        return;
    };
    let c = lab.netns("c");
    let h = lab.netns("h");
    c.veth_to("up0", &h, "up0");
    c.addr("up0", "192.168.78.1/24");
    h.ip(&["link", "set", "up0", "address", "02:00:00:00:78:02"]);
    h.addr("up0", "192.168.78.2/24");
    let files = lab.subdir("agents");
    let token_file: PathBuf = files.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let token = token_file.to_str().unwrap();
    let ctl = controller(&lab, &c);
    let of_port = ctl.openflow_port().to_string();
    let of = format!("tcp:192.168.78.1:{of_port}");
    let api = format!("http://192.168.78.1:{API_PORT}");
    let refused_agent = lab.agent_stopped(&h, &[]);
    let before = host_state(&h, &refused_agent, &ctl);
    let refuse = |what: &str, a: Vec<String>, says: &str| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let line = one_error_line(&run_until_exit(&refused_agent, &a));
        assert!(line.contains(says), "{what}: expected {says:?} in {line}");
        assert_unchanged(&host_state(&h, &refused_agent, &ctl), &before, what);
    };
    // `run` arguments with these addresses and token, then `extra`.
    let argv = |of: &str, api: &str, token: &str, extra: &[&str]| -> Vec<String> {
        let mut a = args("up0", of, api, token, "jnbad");
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect()
    };
    let good = argv(&of, &api, token, &[]);
    let good: Vec<&str> = good.iter().map(String::as_str).collect();

    refuse(
        "wrong API address",
        argv(
            &of,
            "http://192.168.78.1:1",
            token,
            &["--join-timeout", "2"],
        ),
        "the controller's API at http://192.168.78.1:1 did not answer within 2 s",
    );
    refuse(
        "the OpenFlow address as the API",
        argv(&of, &format!("http://192.168.78.1:{of_port}"), token, &[]),
        "not a DaoliNet controller's API",
    );
    refuse(
        "wrong OpenFlow controller address",
        argv("tcp:192.168.78.1:1", &api, token, &["--join-timeout", "2"]),
        "no OpenFlow controller answered within 2 s",
    );
    refuse(
        "the API address as the OpenFlow controller",
        argv(&format!("tcp:192.168.78.1:{API_PORT}"), &api, token, &[]),
        "is not an OpenFlow controller",
    );
    let wrong_token = files.join("wrong-token");
    std::fs::write(&wrong_token, "jn-not-the-token\n").unwrap();
    refuse(
        "a token the API refuses",
        argv(&of, &api, wrong_token.to_str().unwrap(), &[]),
        "refused the token",
    );
    refuse(
        "missing token",
        argv(&of, &api, "/nonexistent/jn-token", &[]),
        "no API token",
    );
    h.veth("bare0", "bare1");
    let bare_before = host_state(&h, &refused_agent, &ctl);
    let r = run_until_exit(&refused_agent, &args("bare0", &of, &api, token, "jnbad"));
    let line = one_error_line(&r);
    assert!(line.contains("uplink bare0 has no IPv4 address"), "{line}");
    assert_unchanged(
        &host_state(&h, &refused_agent, &ctl),
        &bare_before,
        "uplink without IPv4",
    );
    h.ip(&["link", "del", "bare0"]);
    assert_unchanged(&host_state(&h, &refused_agent, &ctl), &before, "bare0 gone");

    // A start that fails after the join (here: its bpffs cannot be made)
    // withdraws the registration it created.
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &h])
        .arg(refused_agent.bin())
        .args(["--bpffs", "/dev/null/jn-no-bpffs", "--state-dir"])
        .arg(refused_agent.state_dir())
        .arg("run")
        .args(&good)
        .env("RUST_LOG", "info");
    let r = daolinet_testlab::output_of(&mut cmd, "agent with a bad --bpffs");
    assert!(!r.ok, "started with a bad --bpffs");
    assert!(r.stderr.contains("/dev/null/jn-no-bpffs"), "{}", r.stderr);
    assert!(
        r.stderr.contains("registered with the controller"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("registration withdrawn"), "{}", r.stderr);
    assert_eq!(
        ctl.api().call("GET", "/api/hosts/jnbad", None).0,
        404,
        "the failed start left its registration"
    );
    std::fs::remove_dir_all(refused_agent.state_dir()).ok();
    assert_unchanged(
        &host_state(&h, &refused_agent, &ctl),
        &before,
        "bad --bpffs",
    );

    // The join itself, then joining twice: another agent on the same
    // uplink (another state dir), and the same state dir again.
    let mut first = lab.agent(&h, &good);
    // Served: the controller's flows are in, and the NAT-out the agent
    // sets up once the API gave it the pool (a thread of its own, which
    // may come after the flows) is there too, so the snapshot below is
    // of the host as the joined agent leaves it.
    wait_until("host jnbad served, its NAT-out set up", DEADLINE, || {
        first.cli(&["flows"]).contains("actions=CONTROLLER")
            && daolinet_testlab::sh(&["ip", "netns", "exec", &h, "nft", "list", "tables"])
                .contains("daolinet")
    });
    let joined = host_state(&h, &refused_agent, &ctl);
    let line = one_error_line(&run_until_exit(&refused_agent, &good));
    assert!(
        line.contains("up0 is already served by another DaoliNet datapath"),
        "{line}"
    );
    assert_unchanged(
        &host_state(&h, &refused_agent, &ctl),
        &joined,
        "joined twice",
    );
    let again = run_until_exit(&first, &good);
    let line = one_error_line(&again);
    assert!(line.contains("another agent is running"), "{line}");
    assert_unchanged(
        &host_state(&h, &refused_agent, &ctl),
        &joined,
        "joined twice (same state dir)",
    );
    assert!(first.running(), "the joined agent stopped");
    first.stop();
}
