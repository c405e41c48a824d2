//! The plugin's network configuration and the per-container requests a
//! runtime passes (pure: parsed from values, tested without root).
//!
//! ```json
//! {
//!   "cniVersion": "1.0.0",
//!   "name": "blue",
//!   "type": "daolinet-cni",
//!   "network": "blue",
//!   "agentSocket": "/run/daolinet/agent.sock",
//!   "capabilities": {"ips": true, "mac": true}
//! }
//! ```
//!
//! - `network`: the DaoliNet network (in the controller) the containers
//!   join; the configuration's `name` when absent.
//! - `agentSocket`: the control socket of the host's `daolinet-agent`
//!   (default `/run/daolinet/agent.sock`). The agent says where the
//!   controller's API is and which host it is; nothing else to configure.
//! - A static address or MAC comes from the runtime: `runtimeConfig.ips`
//!   and `runtimeConfig.mac` (capabilities `ips` and `mac`), or `IP=` and
//!   `MAC=` in `CNI_ARGS`. `K8S_POD_NAME` in `CNI_ARGS` (podman passes the
//!   container's name there) names the container in the controller.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use daolinet_policy::addr::MacAddr;
use rscni_plugin::types::NetConf;
use serde_json::Value;

/// Where the agent's control socket is when the configuration does not say.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/daolinet/agent.sock";

/// Keys of the configuration this plugin reads (besides the spec's).
const KNOWN_KEYS: [&str; 2] = ["network", "agentSocket"];

/// The plugin's part of a network configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConf {
    /// The DaoliNet network.
    pub network: String,
    /// The agent's control socket.
    pub agent_socket: PathBuf,
}

/// What a runtime asks for one container (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// A static logical IP.
    pub ip: Option<Ipv4Addr>,
    /// A static MAC.
    pub mac: Option<MacAddr>,
    /// The container's name.
    pub name: Option<String>,
}

/// Whether `s` is a name the controller accepts (letters, digits, `-`,
/// `_`, `.`; 1 to 64 characters).
pub fn controller_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl PluginConf {
    /// The plugin's settings from a network configuration; a clear message
    /// for anything malformed or unknown.
    pub fn parse(conf: &NetConf) -> Result<PluginConf, String> {
        if conf.r#type != "daolinet-cni" {
            return Err(format!(
                "\"type\" is {:?}: this is the daolinet-cni plugin",
                conf.r#type
            ));
        }
        if let Some(k) = conf
            .custom
            .keys()
            .find(|k| !KNOWN_KEYS.contains(&k.as_str()))
        {
            return Err(format!(
                "unknown key {k:?} in the daolinet-cni configuration (known: {})",
                KNOWN_KEYS.join(", ")
            ));
        }
        if conf.ipam.is_some() {
            return Err(
                "daolinet-cni takes no \"ipam\": the DaoliNet controller hands out the addresses"
                    .into(),
            );
        }
        let network = match conf.custom.get("network") {
            None => conf.name.clone(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => return Err(format!("\"network\" must be a string, not {v}")),
        };
        if !controller_name(&network) {
            return Err(format!(
                "\"network\" {network:?} is not a DaoliNet network name (letters, digits, \
                 '-', '_', '.'; at most 64)"
            ));
        }
        let agent_socket = match conf.custom.get("agentSocket") {
            None => PathBuf::from(DEFAULT_AGENT_SOCKET),
            Some(Value::String(s)) if s.starts_with('/') => PathBuf::from(s),
            Some(v) => return Err(format!("\"agentSocket\" must be an absolute path, not {v}")),
        };
        Ok(PluginConf {
            network,
            agent_socket,
        })
    }
}

fn parse_ip(s: &str) -> Result<Ipv4Addr, String> {
    let addr = s.split_once('/').map_or(s, |(a, _)| a);
    addr.trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 address (DaoliNet networks are IPv4)"))
}

fn parse_mac(s: &str) -> Result<MacAddr, String> {
    s.trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a MAC address: {e}"))
}

impl Request {
    /// The requests in `runtimeConfig` (`ips`, `mac`) and in `CNI_ARGS`
    /// (`IP`, `MAC`, `K8S_POD_NAME`); `runtimeConfig` wins.
    pub fn parse(conf: &NetConf, cni_args: Option<&str>) -> Result<Request, String> {
        let mut r = Request::default();
        for pair in cni_args.unwrap_or("").split(';') {
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            match k.trim() {
                "IP" => r.ip = Some(parse_ip(v)?),
                "MAC" => r.mac = Some(parse_mac(v)?),
                "K8S_POD_NAME" if controller_name(v.trim()) => r.name = Some(v.trim().into()),
                _ => {}
            }
        }
        if let Some(rc) = &conf.runtime_config {
            match rc.custom.get("ips") {
                None | Some(Value::Null) => {}
                Some(Value::Array(ips)) => {
                    let v4: Vec<&str> = ips.iter().filter_map(Value::as_str).collect();
                    if v4.len() != ips.len() {
                        return Err(format!("runtimeConfig.ips must be strings: {ips:?}"));
                    }
                    match v4.as_slice() {
                        [] => {}
                        [one] => r.ip = Some(parse_ip(one)?),
                        more => {
                            return Err(format!(
                                "one address per DaoliNet attachment, not {}",
                                more.len()
                            ))
                        }
                    }
                }
                Some(v) => return Err(format!("runtimeConfig.ips must be a list, not {v}")),
            }
            match rc.custom.get("mac") {
                None | Some(Value::Null) => {}
                Some(Value::String(m)) => r.mac = Some(parse_mac(m)?),
                Some(v) => return Err(format!("runtimeConfig.mac must be a string, not {v}")),
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(v: Value) -> NetConf {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn network_and_socket() {
        let c = conf(serde_json::json!({
            "cniVersion": "1.1.0", "name": "blue", "type": "daolinet-cni"
        }));
        assert_eq!(
            PluginConf::parse(&c).unwrap(),
            PluginConf {
                network: "blue".into(),
                agent_socket: DEFAULT_AGENT_SOCKET.into()
            }
        );
        let c = conf(serde_json::json!({
            "cniVersion": "1.1.0", "name": "x", "type": "daolinet-cni",
            "network": "red", "agentSocket": "/tmp/a.sock"
        }));
        let p = PluginConf::parse(&c).unwrap();
        assert_eq!(
            (p.network.as_str(), p.agent_socket.to_str()),
            ("red", Some("/tmp/a.sock"))
        );
    }

    #[test]
    fn malformed_configurations_say_what_is_wrong() {
        let bad = |v: Value, want: &str| {
            let e = PluginConf::parse(&conf(v)).unwrap_err();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        };
        bad(
            serde_json::json!({"name": "b", "type": "daolinet-cni", "netwrok": "b"}),
            "unknown key \"netwrok\"",
        );
        bad(
            serde_json::json!({"name": "b", "type": "daolinet-cni", "network": 3}),
            "must be a string",
        );
        bad(
            serde_json::json!({"name": "b", "type": "daolinet-cni", "network": "a/b"}),
            "not a DaoliNet network name",
        );
        bad(
            serde_json::json!({"name": "b", "type": "daolinet-cni", "agentSocket": "rel.sock"}),
            "absolute path",
        );
        bad(
            serde_json::json!({"name": "b", "type": "daolinet-cni", "ipam": {"type": "host-local"}}),
            "takes no \"ipam\"",
        );
        bad(
            serde_json::json!({"name": "b", "type": "bridge"}),
            "\"type\"",
        );
    }

    #[test]
    fn requests_from_runtime_config_and_args() {
        let c = conf(serde_json::json!({"name": "b", "type": "daolinet-cni"}));
        let r = Request::parse(
            &c,
            Some("IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.1.0.7;MAC=02:00:00:00:00:07"),
        )
        .unwrap();
        assert_eq!(r.ip, Some(Ipv4Addr::new(10, 1, 0, 7)));
        assert_eq!(
            r.mac.map(|m| m.to_string()).as_deref(),
            Some("02:00:00:00:00:07")
        );
        assert_eq!(r.name.as_deref(), Some("web"));
        let c = conf(serde_json::json!({
            "name": "b", "type": "daolinet-cni",
            "runtimeConfig": {"ips": ["10.1.0.9/24"], "mac": "02:00:00:00:00:09"}
        }));
        let r = Request::parse(&c, Some("IP=10.1.0.7")).unwrap();
        assert_eq!(r.ip, Some(Ipv4Addr::new(10, 1, 0, 9)));
        assert_eq!(Request::parse(&c, None).unwrap().name, None);
        assert!(Request::parse(&c, Some("IP=fe80::1"))
            .unwrap_err()
            .contains("IPv4"));
        let two = conf(serde_json::json!({
            "name": "b", "type": "daolinet-cni",
            "runtimeConfig": {"ips": ["10.1.0.9", "10.1.0.10"]}
        }));
        assert!(Request::parse(&two, None)
            .unwrap_err()
            .contains("one address"));
    }
}
