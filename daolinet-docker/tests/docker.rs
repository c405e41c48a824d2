//! Privileged: real dockerd on two hosts of a real cluster, each with its
//! own state and its own `daolinet-docker` driver (found through a private
//! plugin directory), the image imported from busybox-static.
//! `docker network create -d daolinet --ipam-driver daolinet` on both
//! hosts makes one DaoliNet network; containers ping and talk TCP across
//! hosts; another tenant's container is not reached; `docker rm` releases
//! the address and leaves no port, veth or flow; an agent restart keeps
//! containers working and the later `docker rm` still cleans up. Bad input
//! gets a clear error from the docker command and leaks nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use daolinet_testlab::{
    busybox_image, eventually, Cluster, ClusterHost, DockerHost, Dockerd, Lab, Need, DEADLINE,
    DOCKER_PROGRAMS,
};
use serde_json::Value;

const IMAGE: &str = "rtbusybox:1";

fn needs() -> Vec<Need> {
    let mut n = vec![
        Need::BpfObject,
        Need::Program("busybox"),
        Need::Binary("daolinet-controller"),
        Need::Binary("daolinet-agent"),
        Need::Binary("daolinet-docker"),
    ];
    n.extend(DOCKER_PROGRAMS.map(Need::Program));
    n
}

fn create(d: &Dockerd, docker_name: &str, network: &str, subnet: &str, tenant: &str) {
    d.ok(&[
        "network",
        "create",
        "-d",
        "daolinet",
        "--ipam-driver",
        "daolinet",
        "--subnet",
        subnet,
        "-o",
        &format!("network={network}"),
        "-o",
        &format!("tenant={tenant}"),
        docker_name,
    ]);
}

fn driver_links(h: &ClusterHost) -> Vec<String> {
    h.links_starting_with(&["dld", "dlp"])
}

fn record_with_ip(c: &Cluster, ip: &str) -> Option<Value> {
    c.containers().into_iter().find(|x| x["ip"] == ip)
}

fn ip_of(d: &Dockerd, name: &str, net: &str) -> String {
    d.ok(&[
        "inspect",
        name,
        "--format",
        &format!("{{{{.NetworkSettings.Networks.{net}.IPAddress}}}}"),
    ])
}

#[test]
fn docker_containers_on_two_hosts_share_a_network() {
    let Some(mut lab) = Lab::new(&needs()) else {
        return;
    };
    let mut c = Cluster::start(&mut lab, 2, &[]);
    let image = busybox_image(lab.dir());
    let d1 = DockerHost::start(&lab, c.host(1), &image, IMAGE);
    let d2 = DockerHost::start(&lab, c.host(2), &image, IMAGE);
    create(&d1.d, "blue", "blue", "10.1.0.0/24", "t1");
    create(&d2.d, "blue", "blue", "10.1.0.0/24", "t1");
    create(&d2.d, "red", "red", "10.2.0.0/24", "t2");
    let nets = c.api().ok("GET", "/api/networks", None).to_string();
    assert!(
        nets.contains("\"blue\"") && nets.contains("\"red\""),
        "{nets}"
    );

    d1.d.ok(&[
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
    d2.d.ok(&[
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
    d2.d.ok(&[
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
    let web_ip = ip_of(&d1.d, "web", "blue");
    let web = record_with_ip(&c, &web_ip).expect("web registered");
    assert_eq!(web["host"], c.host(1).name.as_str());
    assert_eq!(web["network"], "blue");
    // Docker shows the MAC the controller registered.
    let mac = d1.d.ok(&[
        "inspect",
        "web",
        "--format",
        "{{.NetworkSettings.Networks.blue.MacAddress}}",
    ]);
    assert_eq!(web["mac"].as_str().unwrap(), mac);
    assert_eq!(
        record_with_ip(&c, "10.1.0.40").unwrap()["host"],
        c.host(2).name.as_str()
    );
    let other_ip = ip_of(&d2.d, "other", "red");

    // Across hosts: ping and TCP.
    d1.d.ok(&["exec", "web", "ping", "-c", "3", "-W", "2", "10.1.0.40"]);
    let pong =
        d1.d.ok(&["exec", "web", "nc", "-w", "5", "10.1.0.40", "7000"]);
    assert_eq!(pong, "pong");
    d2.d.ok(&["exec", "db", "ping", "-c", "2", "-W", "2", &web_ip]);
    // Another tenant's network is not reached.
    let denied =
        d1.d.docker(&["exec", "web", "ping", "-c", "2", "-W", "1", &other_ip]);
    assert!(
        !denied.ok,
        "web reached a container of another tenant: {}",
        denied.stdout
    );

    // docker rm releases the address and leaves nothing on the host.
    let h2_ports = c.host(2).container_ports();
    d2.d.ok(&["rm", "-f", "db"]);
    assert!(
        record_with_ip(&c, "10.1.0.40").is_none(),
        "db still registered"
    );
    assert_eq!(c.host(2).container_ports(), h2_ports - 1);
    assert_eq!(
        driver_links(c.host(2)).len(),
        1,
        "only other's veth is left"
    );
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
    d2.d.ok(&[
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
    // and docker rm afterwards still cleans up.
    let h1 = c.host_mut(1);
    h1.agent.stop();
    h1.agent.start();
    d1.d.ok(&["exec", "web", "ping", "-c", "3", "-W", "2", "10.1.0.40"]);
    d1.d.ok(&["rm", "-f", "web"]);
    let h1 = c.host(1);
    assert_eq!(driver_links(h1), Vec::<String>::new());
    assert_eq!(h1.container_ports(), 0);
    assert!(record_with_ip(&c, &web_ip).is_none());
    d2.d.ok(&["rm", "-f", "db2", "other"]);
    assert_eq!(c.containers(), Vec::<Value>::new());
    assert_eq!(driver_links(c.host(2)), Vec::<String>::new());
    // docker network rm deletes the network its driver created (red), the
    // other host's blue stays while host 1 still has it.
    d2.d.ok(&["network", "rm", "red", "blue"]);
    let nets = c.api().ok("GET", "/api/networks", None).to_string();
    assert!(!nets.contains("\"red\""), "{nets}");
    d1.d.ok(&["network", "rm", "blue"]);
    let nets = c.api().ok("GET", "/api/networks", None).to_string();
    assert!(!nets.contains("\"blue\""), "{nets}");
}

#[test]
fn docker_says_what_is_wrong_and_leaks_nothing() {
    let Some(mut lab) = Lab::new(&needs()) else {
        return;
    };
    let mut c = Cluster::start(&mut lab, 1, &[]);
    let image = busybox_image(lab.dir());
    let dh = DockerHost::start(&lab, c.host(1), &image, IMAGE);
    let d = &dh.d;
    create(d, "blue", "blue", "10.1.0.0/24", "t1");
    create(d, "tiny", "tiny", "10.3.0.0/30", "t1");
    let h = c.host(1);
    let refused = |args: &[&str], words: &str| {
        let (links, ports, regs) = (driver_links(h), h.container_ports(), c.containers().len());
        let mut full = vec!["run", "--rm"];
        full.extend_from_slice(args);
        full.extend_from_slice(&[IMAGE, "true"]);
        let r = d.docker(&full);
        assert!(!r.ok, "docker run {args:?} succeeded");
        assert!(
            r.stderr.contains(words),
            "docker run {args:?}: {:?} should say {words:?}",
            r.stderr
        );
        eprintln!("docker run {args:?}: {}", r.stderr.trim());
        assert_eq!(driver_links(h), links, "veth left by {args:?}");
        assert_eq!(h.container_ports(), ports, "port left by {args:?}");
        assert_eq!(c.containers().len(), regs, "registration left by {args:?}");
    };
    refused(&["--network", "nosuch"], "network nosuch not found");
    refused(
        &["--network", "blue", "--ip", "10.9.9.9"],
        "Invalid address 10.9.9.9: It does not belong to any of this network's subnets",
    );
    d.ok(&[
        "run",
        "-d",
        "--name",
        "aa",
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
    d.ok(&[
        "run",
        "-d",
        "--name",
        "tt",
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
    // A network of a subnet another DaoliNet network has under that name.
    let r = d.docker(&[
        "network",
        "create",
        "-d",
        "daolinet",
        "--ipam-driver",
        "daolinet",
        "--subnet",
        "10.7.0.0/24",
        "-o",
        "network=blue",
        "blue2",
    ]);
    assert!(
        !r.ok && r.stderr.contains("has subnet 10.1.0.0/24"),
        "{}",
        r.stderr
    );
    let r = d.docker(&[
        "network",
        "create",
        "-d",
        "daolinet",
        "--ipam-driver",
        "daolinet",
        "--subnet",
        "10.8.0.0/24",
        "-o",
        "colour=green",
        "green",
    ]);
    assert!(
        !r.ok && r.stderr.contains("unknown option \"colour\""),
        "{}",
        r.stderr
    );
    d.ok(&["rm", "-f", "aa", "tt"]);
    assert_eq!(c.containers(), Vec::<Value>::new());

    c.host_mut(1).agent.stop();
    let h = c.host(1);
    let r = d.docker(&["run", "--rm", "--network", "blue", IMAGE, "true"]);
    assert!(
        !r.ok && r.stderr.contains("agent is not running"),
        "{}",
        r.stderr
    );
    assert_eq!(driver_links(h), Vec::<String>::new());
    assert_eq!(c.containers(), Vec::<Value>::new());
}
