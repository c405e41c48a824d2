//! Privileged: `daolictl host join-ovs` on an Open vSwitch host (the
//! userspace datapath, its switch daemon in the host's namespace) whose
//! uplink reaches the controller: the bridge is made and connected, the
//! host's address moves to the bridge's LOCAL port and still reaches the
//! controller (no duplicate frames: the kernel is kept off the uplink), the
//! host is registered; `leave-ovs` puts everything back as it was.
//!
//! Bad input (joining twice, a wrong OpenFlow controller or API address,
//! an uplink without IPv4 address, a missing token, a refused
//! registration after the bridge was made) gets one line on stderr, a
//! non-zero exit, and leaves the host as it was: links, addresses,
//! routes, nftables, IPv4 sysctls, the OVS database, the controller's
//! hosts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use daolinet_testlab::{
    assert_unchanged, Controller, Lab, Need, Netns, OvsHost, Ran, OVS_PROGRAMS,
};
use serde_json::Value;

/// Everything a join changes, to compare before and after.
fn snapshot(host: &Netns, ovs: &OvsHost, ctl: &Controller) -> String {
    let vsctl = ovs.vsctl(&["show"]);
    let vsctl: Vec<&str> = vsctl
        .lines()
        .filter(|l| !l.contains("ovs_version"))
        .collect();
    let pretty = |json: String| {
        serde_json::from_str::<Value>(&json)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or(json)
    };
    format!(
        "link: {}\naddr: {}\nroute: {}\nnft: {}\nsysctl: {}\novs: {}\nhosts: {}",
        pretty(host.ip(&["-j", "link"])),
        pretty(host.ip(&["-4", "-j", "addr"])),
        pretty(host.ip(&["-4", "-j", "route", "show", "table", "all"])),
        host.run(&["nft", "list", "ruleset"]),
        host.run(&["sysctl", "-a", "-r", r"^net\.ipv4\.(ip_forward|conf\.)"]),
        vsctl.join("\n"),
        ctl.api().ok("GET", "/api/hosts", None),
    )
}

struct Setup {
    host: Netns,
    ovs: OvsHost,
    ctl: Controller,
    api: String,
    token_file: String,
    db: String,
}

impl Setup {
    /// `daolictl ARGS` run on the OVS host.
    fn daolictl(&self, args: &[&str]) -> Ran {
        self.daolictl_at(&self.api, args)
    }

    /// `daolictl ARGS` run on the OVS host, with API address `api`.
    fn daolictl_at(&self, api: &str, args: &[&str]) -> Ran {
        let mut full = vec![
            env!("CARGO_BIN_EXE_daolictl"),
            "--api",
            api,
            "--token-file",
            &self.token_file,
        ];
        full.extend_from_slice(args);
        self.host.output(&full)
    }

    fn join(&self, extra: &[&str]) -> Ran {
        self.join_at(&self.api, extra)
    }

    /// `join-ovs` with API address `api`.
    fn join_at(&self, api: &str, extra: &[&str]) -> Ran {
        let mut a = vec![
            "host",
            "join-ovs",
            "--bridge",
            "brjn",
            "--uplink",
            "up0",
            "--name",
            "ovs1",
            "--datapath",
            "netdev",
            "--ovs-db",
            &self.db,
        ];
        a.extend_from_slice(extra);
        self.daolictl_at(api, &a)
    }
}

/// A failure as the CLI must report it: non-zero, one line on stderr.
#[track_caller]
fn refused(r: &Ran, what: &str, says: &str) {
    assert!(!r.ok, "{what}: accepted\n{}", r.stdout);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: not one line:\n{}", r.stderr);
    assert!(lines[0].starts_with("daolictl: "), "{what}: {}", r.stderr);
    assert!(
        lines[0].contains(says),
        "{what}: expected {says:?} in {}",
        lines[0]
    );
    eprintln!("{what}: {}", lines[0]);
}

#[test]
fn an_ovs_host_joins_and_leaves_by_itself() {
    let mut needs = vec![Need::Program("nft"), Need::Program("ping")];
    needs.extend(OVS_PROGRAMS.iter().map(|p| Need::Program(p)));
    let Some(lab) = Lab::new(&needs) else { return };
    let c = lab.netns("c");
    let host = lab.netns("o");
    c.veth_to("u0", &host, "up0");
    c.addr("u0", "192.168.90.1/24");
    host.ip(&["link", "set", "up0", "address", "02:00:00:00:90:02"]);
    host.addr("up0", "192.168.90.2/24");
    host.ip(&[
        "route",
        "add",
        "10.90.0.0/16",
        "via",
        "192.168.90.1",
        "metric",
        "7",
    ]);
    let ctl = Controller::start(
        &lab.controller_opts()
            .netns(&c)
            .listen("0.0.0.0:0")
            .api("0.0.0.0:0"),
    );
    let api_port = ctl.api().addr().rsplit(':').next().unwrap().to_string();
    let ovs = lab.ovs(&host);
    let s = Setup {
        api: format!("http://192.168.90.1:{api_port}"),
        token_file: ctl.dir().join("api-token").display().to_string(),
        db: format!("unix:{}/db.sock", ovs.dir().display()),
        host,
        ovs,
        ctl,
    };
    let of = format!("tcp:192.168.90.1:{}", s.ctl.openflow_port());
    let before = snapshot(&s.host, &s.ovs, &s.ctl);

    // Bad input, refused before anything changes.
    refused(
        &s.join(&["--controller", "tcp:192.168.90.1:1"]),
        "wrong controller address",
        "no OpenFlow controller at tcp:192.168.90.1:1",
    );
    refused(
        &s.join(&["--controller", &format!("tcp:192.168.90.1:{api_port}")]),
        "the API's address as the controller",
        "is not an OpenFlow controller",
    );
    s.host.veth("bare0", "bare1");
    refused(
        &s.daolictl(&[
            "host",
            "join-ovs",
            "--bridge",
            "brjn",
            "--uplink",
            "bare0",
            "--name",
            "ovs1",
            "--datapath",
            "netdev",
            "--ovs-db",
            &s.db,
            "--controller",
            &of,
        ]),
        "uplink without IPv4",
        "uplink bare0 has no IPv4 address",
    );
    s.host.ip(&["link", "del", "bare0"]);
    let no_token = s.host.output(&[
        env!("CARGO_BIN_EXE_daolictl"),
        "--api",
        &s.api,
        "--token-file",
        "/nonexistent/jn-token",
        "host",
        "join-ovs",
        "--bridge",
        "brjn",
        "--uplink",
        "up0",
        "--controller",
        &of,
        "--ovs-db",
        &s.db,
    ]);
    refused(&no_token, "missing token", "no API token");
    assert_unchanged(&snapshot(&s.host, &s.ovs, &s.ctl), &before, "before");
    // A wrong API address: nothing listens there, or the OpenFlow
    // controller does.
    for (api, says) in [
        (
            "http://192.168.90.1:1".to_string(),
            "cannot reach the controller at http://192.168.90.1:1",
        ),
        (
            format!("http://192.168.90.1:{}", s.ctl.openflow_port()),
            "is not a DaoliNet controller's API (it does not speak HTTP",
        ),
    ] {
        refused(
            &s.join_at(&api, &["--controller", &of]),
            "wrong API address",
            says,
        );
    }
    assert_unchanged(&snapshot(&s.host, &s.ovs, &s.ctl), &before, "before");

    // Refused by the controller after the bridge was made (the host's IP
    // belongs to another host): everything undone.
    s.ctl.api().ok(
        "POST",
        "/api/hosts",
        Some(r#"{"name":"squatter","dpid":99,"ip":"192.168.90.2","mac":"02:00:00:00:99:99","uplink_port":1}"#),
    );
    let with_squatter = snapshot(&s.host, &s.ovs, &s.ctl);
    let r = s.join(&["--controller", &of]);
    refused(
        &r,
        "registration refused",
        "192.168.90.2 is already host \"squatter\"",
    );
    assert!(r.stderr.contains("(changes undone)"), "{}", r.stderr);
    assert_unchanged(
        &snapshot(&s.host, &s.ovs, &s.ctl),
        &with_squatter,
        "with_squatter",
    );
    s.ctl.api().ok("DELETE", "/api/hosts/squatter", None);
    assert_unchanged(&snapshot(&s.host, &s.ovs, &s.ctl), &before, "before");

    // The join.
    let r = s.join(&["--controller", &of]);
    assert!(r.ok, "join failed: {}", r.stderr);
    assert!(
        r.stdout
            .starts_with("host ovs1 joined: bridge brjn (netdev)"),
        "{}",
        r.stdout
    );
    let h = s.ctl.api().ok("GET", "/api/hosts/ovs1", None);
    assert_eq!(
        h,
        serde_json::json!({
            "name": "ovs1",
            "dpid": "0000020000009002",
            "ip": "192.168.90.2",
            "mac": "02:00:00:00:90:02",
            "uplink_port": 65000,
        })
    );
    let flows = s.ovs.dump_flows("brjn");
    assert!(flows.contains("in_port=65000 actions=LOCAL"), "{flows}");
    let bridge: Value =
        serde_json::from_str(&s.host.ip(&["-j", "-4", "addr", "show", "dev", "brjn"])).unwrap();
    assert_eq!(
        bridge[0]["addr_info"][0]["local"], "192.168.90.2",
        "{bridge}"
    );
    let routes = s.host.ip(&["route"]);
    assert!(
        routes.contains("10.90.0.0/16 via 192.168.90.1 dev brjn metric 7"),
        "{routes}"
    );
    // Through the bridge, without the kernel answering on the uplink too.
    let ping = s.host.output(&[
        "ping",
        "-n",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "2",
        "192.168.90.1",
    ]);
    assert!(ping.ok && !ping.stdout.contains("DUP"), "{}", ping.stdout);
    assert!(
        c.ok(&[
            "ping",
            "-n",
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "2",
            "192.168.90.2"
        ]),
        "the host is not reachable at its address after the join"
    );

    // Joining twice is refused and changes nothing.
    let joined = snapshot(&s.host, &s.ovs, &s.ctl);
    refused(
        &s.join(&["--controller", &of]),
        "joining twice",
        "already joined: bridge brjn",
    );
    assert_unchanged(&snapshot(&s.host, &s.ovs, &s.ctl), &joined, "joined");

    // Leaving puts the host back as it was.
    let r = s.daolictl(&["host", "leave-ovs", "--ovs-db", &s.db]);
    assert!(r.ok, "leave failed: {}", r.stderr);
    assert!(r.stdout.contains("host ovs1 left"), "{}", r.stdout);
    assert_unchanged(&snapshot(&s.host, &s.ovs, &s.ctl), &before, "before");
    assert!(
        s.host.ping("192.168.90.1", 1, 2),
        "no connectivity after leaving"
    );
    refused(
        &s.daolictl(&["host", "leave-ovs", "--ovs-db", &s.db]),
        "leaving twice",
        "no bridge was joined",
    );
}
