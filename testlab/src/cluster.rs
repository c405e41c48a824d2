//! A DaoliNet cluster in namespaces, as a user sets one up: a controller
//! and N agent hosts that join by themselves (`run --api`), on one
//! underlay L2 segment. The runtime tests (CNI, Docker, podman) start
//! from it.
//!
//! ```text
//!   <tag>w (wire): bridge br0 192.168.90.254/24, the controller
//!      |  veth hN <-> up0
//!   <tag>h1 .. <tag>hN: up0 192.168.90.N/24, daolinet-agent --uplink up0
//!       --controller tcp:192.168.90.254:P --api http://192.168.90.254:Q
//!       --api-token-file <the controller's token> --host-name <tag>hN
//! ```

use std::path::PathBuf;

use crate::agent::Agent;
use crate::controller::Controller;
use crate::http::Api;
use crate::lab::Lab;
use crate::netns::Netns;

/// The underlay subnet (inside the lab's namespaces only).
pub const UNDERLAY: &str = "192.168.90";

/// One agent host of a [`Cluster`].
#[derive(Debug)]
pub struct ClusterHost {
    /// Its agent (declared first: stopped before its namespace goes).
    pub agent: Agent,
    /// Its namespace.
    pub ns: Netns,
    /// The name it registered under.
    pub name: String,
    /// Its underlay address.
    pub ip: String,
}

impl ClusterHost {
    /// How many of the agent's ports are container ports.
    pub fn container_ports(&self) -> usize {
        let v: serde_json::Value =
            serde_json::from_str(&self.agent.cli(&["ports"])).unwrap_or_default();
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["kind"] == "container")
            .count()
    }

    /// The names of the host's links that start with one of `prefixes`
    /// (a runtime integration's veths).
    pub fn links_starting_with(&self, prefixes: &[&str]) -> Vec<String> {
        self.ns
            .ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| prefixes.iter().any(|p| n.starts_with(p)))
            .collect()
    }

    /// The agent's control socket.
    pub fn agent_socket(&self) -> PathBuf {
        self.agent.state_dir().join("agent.sock")
    }
}

/// A controller and agent hosts on one underlay (see the module docs).
#[derive(Debug)]
pub struct Cluster {
    /// The hosts (dropped first: agents stop before the controller).
    pub hosts: Vec<ClusterHost>,
    /// The controller, in the wire namespace.
    pub controller: Controller,
    /// The wire namespace (bridge and controller).
    pub wire: Netns,
    api_base: String,
}

impl Cluster {
    /// Start a controller and `n` agent hosts (at most 200) with `agent_args`
    /// added to each agent's `run`; every host is registered and its agent
    /// connected when this returns.
    #[track_caller]
    pub fn start(lab: &mut Lab, n: usize, agent_args: &[&str]) -> Cluster {
        assert!((1..=200).contains(&n), "1 to 200 hosts, not {n}");
        let wire = lab.netns("w");
        wire.ip(&["link", "add", "br0", "type", "bridge"]);
        wire.addr("br0", &format!("{UNDERLAY}.254/24"));
        let controller = Controller::start(
            &lab.controller_opts()
                .netns(&wire)
                .listen("0.0.0.0:0")
                .api("0.0.0.0:0"),
        );
        let api_port = controller
            .api()
            .addr()
            .rsplit_once(':')
            .map(|(_, p)| p.to_string())
            .unwrap_or_default();
        let api_base = format!("http://{UNDERLAY}.254:{api_port}");
        let of = format!("tcp:{UNDERLAY}.254:{}", controller.openflow_port());
        let token = controller.dir().join("api-token");
        let token = token.to_string_lossy().into_owned();
        let mut hosts = Vec::new();
        for i in 1..=n {
            let ns = lab.netns(&format!("h{i}"));
            let wire_end = format!("h{i}");
            ns.veth_to("up0", &wire, &wire_end);
            wire.ip(&["link", "set", &wire_end, "master", "br0"]);
            ns.ip(&[
                "link",
                "set",
                "up0",
                "address",
                &format!("02:00:00:00:5a:{i:02x}"),
            ]);
            let ip = format!("{UNDERLAY}.{i}");
            ns.addr("up0", &format!("{ip}/24"));
            let name = lab.name(&format!("h{i}"));
            let mut args = vec![
                "--uplink",
                "up0",
                "--controller",
                &of,
                "--api",
                &api_base,
                "--api-token-file",
                &token,
                "--host-name",
                &name,
            ];
            args.extend_from_slice(agent_args);
            let agent = lab.agent(&ns, &args);
            hosts.push(ClusterHost {
                agent,
                ns,
                name,
                ip,
            });
        }
        let c = Cluster {
            hosts,
            controller,
            wire,
            api_base,
        };
        for h in &c.hosts {
            crate::wait_until(
                &format!("host {} registered", h.name),
                crate::DEADLINE,
                || {
                    c.api()
                        .call("GET", &format!("/api/hosts/{}", h.name), None)
                        .0
                        == 200
                },
            );
        }
        c
    }

    /// The controller's API (called from the wire namespace).
    pub fn api(&self) -> &Api {
        self.controller.api()
    }

    /// The API's address as the hosts reach it (`http://192.168.90.254:P`).
    pub fn api_base(&self) -> &str {
        &self.api_base
    }

    /// The API token file.
    pub fn token_file(&self) -> PathBuf {
        self.controller.dir().join("api-token")
    }

    /// Host `i` (1-based).
    #[track_caller]
    pub fn host(&self, i: usize) -> &ClusterHost {
        self.hosts
            .get(i.wrapping_sub(1))
            .unwrap_or_else(|| panic!("no host {i}"))
    }

    /// Host `i`, mutable (to stop or restart its agent).
    #[track_caller]
    pub fn host_mut(&mut self, i: usize) -> &mut ClusterHost {
        self.hosts
            .get_mut(i.wrapping_sub(1))
            .unwrap_or_else(|| panic!("no host {i}"))
    }

    /// `daolictl ARGS` against the controller (from the wire namespace),
    /// which must succeed; its stdout.
    #[track_caller]
    pub fn daolictl(&self, args: &[&str]) -> String {
        let r = self.try_daolictl(args);
        assert!(
            r.ok,
            "daolictl {}: {}{}",
            args.join(" "),
            r.stderr,
            r.stdout
        );
        r.stdout
    }

    /// `daolictl ARGS`; what it did.
    pub fn try_daolictl(&self, args: &[&str]) -> crate::Ran {
        let bin = crate::workspace_bin("daolictl");
        let token = std::fs::read_to_string(self.token_file()).unwrap_or_default();
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", self.wire.name()])
            .arg(&bin)
            .args(["--api", &self.api().base(), "--token", token.trim()])
            .args(args);
        crate::output_of(&mut c, &format!("daolictl {}", args.join(" ")))
    }

    /// The containers registered with the controller.
    pub fn containers(&self) -> Vec<serde_json::Value> {
        self.api()
            .ok("GET", "/api/containers", None)
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The flows the controller installed on host `name`.
    pub fn flows_of(&self, name: &str) -> Vec<serde_json::Value> {
        let v = self
            .api()
            .ok("GET", &format!("/api/flows?host={name}"), None);
        v.as_array()
            .and_then(|a| a.first())
            .and_then(|h| h["flows"].as_array())
            .cloned()
            .unwrap_or_default()
    }
}
