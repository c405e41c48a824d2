//! Privileged: one tenant network, any runtime, any host. A Docker
//! container (real dockerd and the `daolinet-docker` driver, on host 1) and
//! podman containers (CNI backend, `daolinet-cni`, on host 2) of one
//! cluster: the Docker network `-o network=blue` and podman's `blue`
//! configuration name the same DaoliNet network. Across runtimes and hosts
//! the containers ping and talk TCP both ways; isolation (a container of
//! another tenant's network) and pair policy (`disconnect`, `connect`)
//! apply to them as to any container; removing them with each runtime's
//! own command leaves no registration, port or veth.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use daolinet_testlab::{
    busybox_image, workspace_bin, Cluster, ClusterHost, DockerHost, Lab, Need, Podman,
    DOCKER_PROGRAMS, PODMAN_PROGRAMS,
};
use serde_json::{json, Value};

const DOCKER_IMAGE: &str = "rtbusybox:1";
const PODMAN_IMAGE: &str = "localhost/rtbusybox:1";

/// podman on `h`, one CNI configuration per DaoliNet network in `networks`.
fn podman(lab: &Lab, h: &ClusterHost, image: &Path, networks: &[&str]) -> Podman {
    let bin = workspace_bin("daolinet-cni");
    let p = Podman::new(lab, &h.ns, &[bin.parent().unwrap()]);
    for n in networks {
        p.daolinet_network(n, &h.agent_socket(), json!({}));
    }
    p.import(image, PODMAN_IMAGE);
    p
}

/// The controller's record of the container with address `ip`.
fn record_with_ip(c: &Cluster, ip: &str) -> Value {
    c.containers()
        .into_iter()
        .find(|x| x["ip"] == ip)
        .unwrap_or_else(|| panic!("no container registered with {ip}: {:?}", c.containers()))
}

/// The host's attachment veths (Docker's `dld`/`dlp`, CNI's `dlc`).
fn attachment_links(h: &ClusterHost) -> Vec<String> {
    h.links_starting_with(&["dld", "dlp", "dlc"])
}

#[test]
fn a_docker_and_a_podman_container_share_a_network() {
    let mut needs = vec![
        Need::BpfObject,
        Need::Program("busybox"),
        Need::Binary("daolinet-controller"),
        Need::Binary("daolinet-agent"),
        Need::Binary("daolinet-docker"),
        Need::Binary("daolinet-cni"),
    ];
    needs.extend(DOCKER_PROGRAMS.map(Need::Program));
    needs.extend(PODMAN_PROGRAMS.map(Need::Program));
    let Some(mut lab) = Lab::new(&needs) else {
        return;
    };
    let c = Cluster::start(&mut lab, 2, &[]);
    let image = busybox_image(lab.dir());
    // Host 1: Docker. Its network creates DaoliNet's blue in the controller.
    let d1 = DockerHost::start(&lab, c.host(1), &image, DOCKER_IMAGE);
    d1.d.ok(&[
        "network",
        "create",
        "-d",
        "daolinet",
        "--ipam-driver",
        "daolinet",
        "--subnet",
        "10.1.0.0/24",
        "-o",
        "network=blue",
        "-o",
        "tenant=t1",
        "blue",
    ]);
    // Another tenant's network, for podman only.
    c.api().ok(
        "POST",
        "/api/networks",
        Some(r#"{"name":"red","subnet":"10.2.0.0/24","tenant":"t2"}"#),
    );
    // Host 2: podman, on the same blue.
    let p2 = podman(&lab, c.host(2), &image, &["blue", "red"]);

    d1.d.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "blue",
        DOCKER_IMAGE,
        "sh",
        "-c",
        "while true; do echo from-docker | nc -l -p 7001; done",
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
        PODMAN_IMAGE,
        "sh",
        "-c",
        "while true; do echo from-podman | nc -l -p 7000; done",
    ]);
    p2.ok(&[
        "run",
        "-d",
        "--name",
        "other",
        "--network",
        "red",
        PODMAN_IMAGE,
        "sleep",
        "1000",
    ]);
    let web_ip = d1.d.ok(&[
        "inspect",
        "web",
        "--format",
        "{{.NetworkSettings.Networks.blue.IPAddress}}",
    ]);
    let web = record_with_ip(&c, &web_ip);
    let db = record_with_ip(&c, "10.1.0.40");
    assert_eq!(
        (web["host"].as_str(), web["network"].as_str()),
        (Some(c.host(1).name.as_str()), Some("blue")),
        "{web}"
    );
    assert_eq!(
        (db["host"].as_str(), db["network"].as_str()),
        (Some(c.host(2).name.as_str()), Some("blue")),
        "{db}"
    );
    let other_ip = p2.ok(&[
        "inspect",
        "other",
        "--format",
        "{{.NetworkSettings.Networks.red.IPAddress}}",
    ]);
    assert!(other_ip.starts_with("10.2.0."), "{other_ip}");

    // Docker -> podman and podman -> Docker, across hosts: ping and TCP.
    d1.d.ok(&["exec", "web", "ping", "-c", "3", "-W", "2", "10.1.0.40"]);
    let said =
        d1.d.ok(&["exec", "web", "nc", "-w", "5", "10.1.0.40", "7000"]);
    assert_eq!(said, "from-podman");
    p2.ok(&["exec", "db", "ping", "-c", "2", "-W", "2", &web_ip]);
    let said = p2.ok(&["exec", "db", "nc", "-w", "5", &web_ip, "7001"]);
    assert_eq!(said, "from-docker");

    // Isolation: the Docker container does not reach the podman container
    // of another tenant's network, nor the other way round.
    let denied =
        d1.d.docker(&["exec", "web", "ping", "-c", "2", "-W", "1", &other_ip]);
    assert!(
        !denied.ok,
        "web (Docker, t1) reached other (podman, t2): {}",
        denied.stdout
    );
    let denied = p2.podman(&["exec", "other", "ping", "-c", "2", "-W", "1", &web_ip]);
    assert!(
        !denied.ok,
        "other (podman, t2) reached web (Docker, t1): {}",
        denied.stdout
    );

    // Pair policy: disconnect stops them, connect lets them talk again.
    let policy = |action: &str| {
        c.api().ok(
            "POST",
            "/api/policies",
            Some(&json!({"a": web["id"], "b": db["id"], "action": action}).to_string()),
        );
    };
    policy("disconnect");
    let cut =
        d1.d.docker(&["exec", "web", "ping", "-c", "2", "-W", "1", "10.1.0.40"]);
    assert!(!cut.ok, "web -> db crossed a disconnect: {}", cut.stdout);
    let cut = p2.podman(&["exec", "db", "ping", "-c", "2", "-W", "1", &web_ip]);
    assert!(!cut.ok, "db -> web crossed a disconnect: {}", cut.stdout);
    policy("connect");
    d1.d.ok(&["exec", "web", "ping", "-c", "2", "-W", "2", "10.1.0.40"]);
    p2.ok(&["exec", "db", "ping", "-c", "2", "-W", "2", &web_ip]);

    // Each runtime's own rm leaves nothing.
    d1.d.ok(&["rm", "-f", "web"]);
    p2.ok(&["rm", "-f", "db", "other"]);
    assert_eq!(c.containers(), Vec::<Value>::new(), "registrations left");
    for i in [1, 2] {
        let h = c.host(i);
        assert_eq!(
            attachment_links(h),
            Vec::<String>::new(),
            "veths left on {}",
            h.name
        );
        assert_eq!(h.container_ports(), 0, "ports left on {}", h.name);
    }
    d1.d.ok(&["network", "rm", "blue"]);
}
