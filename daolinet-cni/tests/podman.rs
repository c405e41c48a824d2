//! Privileged: podman (CNI backend, runc) on two hosts of a real cluster,
//! each host with its own podman storage and configuration, the image
//! imported from busybox-static. Containers on the same DaoliNet network
//! ping and talk TCP across hosts; a container of another tenant's network
//! is not reached; `podman rm` releases the address and leaves no port,
//! veth or flow; an agent restart with containers running keeps them
//! working and the later `podman rm` still cleans up. Bad input gets a
//! clear error from `podman run` and leaks nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use daolinet_testlab::{
    busybox_image, eventually, Cluster, ClusterHost, Lab, Need, Podman, DEADLINE, PODMAN_PROGRAMS,
};
use serde_json::{json, Value};

const IMAGE: &str = "localhost/rtbusybox:1";

fn needs() -> Vec<Need> {
    let mut n = vec![
        Need::BpfObject,
        Need::Program("busybox"),
        Need::Binary("daolinet-controller"),
        Need::Binary("daolinet-agent"),
        Need::Binary("daolinet-cni"),
    ];
    n.extend(PODMAN_PROGRAMS.map(Need::Program));
    n
}

/// podman on `h`, with a CNI network configuration per DaoliNet network.
fn podman(lab: &Lab, h: &ClusterHost, image: &Path, networks: &[&str]) -> Podman {
    let bin_dir = daolinet_testlab::workspace_bin("daolinet-cni");
    let p = Podman::new(lab, &h.ns, &[bin_dir.parent().unwrap()]);
    for n in networks {
        p.daolinet_network(n, &h.agent_socket(), json!({}));
    }
    p.import(image, IMAGE);
    p
}

fn network(c: &Cluster, name: &str, subnet: &str, tenant: &str) {
    c.api().ok(
        "POST",
        "/api/networks",
        Some(&json!({"name": name, "subnet": subnet, "tenant": tenant}).to_string()),
    );
}

fn cni_links(h: &ClusterHost) -> Vec<String> {
    h.links_starting_with(&["dlc"])
}

/// The controller's record of the container named `name`.
fn registered(c: &Cluster, name: &str) -> Option<Value> {
    c.containers().into_iter().find(|x| x["name"] == name)
}

/// The names of the containers the controller has registered are `names`.
fn only_running(c: &Cluster, names: &[&str]) {
    let mut got: Vec<String> = c
        .containers()
        .iter()
        .map(|x| x["name"].as_str().unwrap_or_default().to_string())
        .collect();
    got.sort();
    assert_eq!(got, names, "registrations");
}

#[test]
fn podman_containers_on_two_hosts_share_a_network() {
    let Some(mut lab) = Lab::new(&needs()) else {
        return;
    };
    let mut c = Cluster::start(&mut lab, 2, &[]);
    network(&c, "blue", "10.1.0.0/24", "t1");
    network(&c, "red", "10.2.0.0/24", "t2");
    let image = busybox_image(lab.dir());
    let p1 = podman(&lab, c.host(1), &image, &["blue", "red"]);
    let p2 = podman(&lab, c.host(2), &image, &["blue", "red"]);

    p1.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "blue",
        IMAGE,
        "sleep",
        "1000",
    ]);
    p2.ok(&[
        "run",
        "-d",
        "--name",
        "db",
        "--network",
        "blue",
        "--ip",
        "10.1.0.40",
        IMAGE,
        "sh",
        "-c",
        "while true; do echo pong | nc -l -p 7000; done",
    ]);
    p2.ok(&[
        "run",
        "-d",
        "--name",
        "other",
        "--network",
        "red",
        IMAGE,
        "sleep",
        "1000",
    ]);
    let web = registered(&c, "web").expect("web registered");
    assert_eq!(web["host"], c.host(1).name.as_str());
    let web_ip = web["ip"].as_str().unwrap().to_string();
    // podman sees the address the controller chose.
    let seen = p1.ok(&[
        "inspect",
        "web",
        "--format",
        "{{.NetworkSettings.Networks.blue.IPAddress}}",
    ]);
    assert_eq!(seen, web_ip);
    assert_eq!(registered(&c, "db").unwrap()["ip"], "10.1.0.40");
    let other_ip = registered(&c, "other").unwrap()["ip"]
        .as_str()
        .unwrap()
        .to_string();

    // Across hosts: ping and TCP.
    p1.ok(&["exec", "web", "ping", "-c", "3", "-W", "2", "10.1.0.40"]);
    let pong = p1.ok(&["exec", "web", "nc", "-w", "5", "10.1.0.40", "7000"]);
    assert_eq!(pong, "pong");
    p2.ok(&["exec", "db", "ping", "-c", "2", "-W", "2", &web_ip]);
    // Another tenant's network is not reached.
    let denied = p1.podman(&["exec", "web", "ping", "-c", "2", "-W", "1", &other_ip]);
    assert!(
        !denied.ok,
        "web reached a container of another tenant: {}",
        denied.stdout
    );

    // podman rm releases the address and leaves nothing on the host. (`-t 0`
    // everywhere: busybox's `sleep` runs as PID 1 and ignores SIGTERM, so
    // podman's 10 s stop timeout would only be waited out before the
    // SIGKILL; a loaded run once failed in that stop path, "timed out
    // waiting for exits file".)
    let h2_ports = c.host(2).container_ports();
    p2.ok(&["rm", "-f", "-t", "0", "db"]);
    assert!(registered(&c, "db").is_none(), "db still registered");
    assert_eq!(c.host(2).container_ports(), h2_ports - 1);
    assert_eq!(cni_links(c.host(2)).len(), 1, "only other's veth is left");
    assert!(
        eventually(DEADLINE, || !c
            .host(2)
            .agent
            .cli(&["flows"])
            .contains("10.1.0.40")
            && !c.host(1).agent.cli(&["flows"]).contains("10.1.0.40")),
        "flows of the removed container left"
    );
    // Its address is free again.
    p2.ok(&[
        "run",
        "-d",
        "--name",
        "db2",
        "--network",
        "blue",
        "--ip",
        "10.1.0.40",
        IMAGE,
        "sleep",
        "1000",
    ]);

    // The agent of host 1 restarts with web running: web keeps working,
    // and podman rm afterwards still cleans up.
    let h1 = c.host_mut(1);
    h1.agent.stop();
    h1.agent.start();
    p1.ok(&["exec", "web", "ping", "-c", "3", "-W", "2", "10.1.0.40"]);
    p1.ok(&["rm", "-f", "-t", "0", "web"]);
    let h1 = c.host(1);
    assert_eq!(cni_links(h1), Vec::<String>::new());
    assert_eq!(h1.container_ports(), 0);
    assert!(registered(&c, "web").is_none());
    p2.ok(&["rm", "-f", "-t", "0", "db2", "other"]);
    assert_eq!(c.containers(), Vec::<Value>::new());
    assert_eq!(cni_links(c.host(2)), Vec::<String>::new());
}

#[test]
fn podman_run_says_what_is_wrong_and_leaks_nothing() {
    let Some(mut lab) = Lab::new(&needs()) else {
        return;
    };
    let mut c = Cluster::start(&mut lab, 1, &[]);
    network(&c, "blue", "10.1.0.0/24", "t1");
    network(&c, "tiny", "10.3.0.0/30", "t1");
    let image = busybox_image(lab.dir());
    let p = podman(&lab, c.host(1), &image, &["blue", "tiny", "ghost"]);
    p.daolinet_network(
        "typo",
        &c.host(1).agent_socket(),
        json!({"netwrok": "blue"}),
    );
    let h = c.host(1);
    let refused = |args: &[&str], words: &str| {
        let (links, ports) = (cni_links(h), h.container_ports());
        let mut full = vec!["run", "--rm"];
        full.extend_from_slice(args);
        full.extend_from_slice(&[IMAGE, "true"]);
        let r = p.podman(&full);
        assert!(!r.ok, "podman run {args:?} succeeded");
        assert!(
            r.stderr.contains(words),
            "podman run {args:?}: {:?} should say {words:?}",
            r.stderr
        );
        eprintln!("podman run {args:?}: {}", r.stderr.trim());
        assert_eq!(cni_links(h), links, "veth left by {args:?}");
        assert_eq!(h.container_ports(), ports, "port left by {args:?}");
    };

    refused(&["--network", "nosuch"], "nosuch");
    refused(
        &["--network", "ghost"],
        "unknown DaoliNet network \"ghost\"",
    );
    refused(&["--network", "typo"], "unknown key \"netwrok\"");
    refused(
        &["--network", "blue", "--ip", "10.9.9.9"],
        "10.9.9.9 is outside 10.1.0.0/24",
    );
    only_running(&c, &[]);
    p.ok(&[
        "run",
        "-d",
        "--name",
        "a",
        "--network",
        "blue",
        "--ip",
        "10.1.0.9",
        IMAGE,
        "sleep",
        "100",
    ]);
    refused(
        &["--network", "blue", "--ip", "10.1.0.9"],
        "10.1.0.9 is already in use",
    );
    p.ok(&[
        "run",
        "-d",
        "--name",
        "t",
        "--network",
        "tiny",
        IMAGE,
        "sleep",
        "100",
    ]);
    refused(
        &["--network", "tiny"],
        "no free address left in 10.3.0.0/30",
    );
    only_running(&c, &["a", "t"]);
    p.ok(&["rm", "-f", "-t", "0", "a", "t"]);
    only_running(&c, &[]);

    c.host_mut(1).agent.stop();
    let h = c.host(1);
    let r = p.podman(&["run", "--rm", "--network", "blue", IMAGE, "true"]);
    assert!(
        !r.ok && r.stderr.contains("agent is not running"),
        "{}",
        r.stderr
    );
    assert_eq!(cni_links(h), Vec::<String>::new());
    only_running(&c, &[]);
}
