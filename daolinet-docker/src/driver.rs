//! The calls' effects. Each handler takes the parsed call and answers with
//! the JSON Docker expects, or an error message Docker shows to the user
//! (`docker network create` / `docker run` print it).
//!
//! - `RequestPool` hands out a pool id for the subnet; `CreateNetwork` then
//!   binds it to the DaoliNet network (`-o network=NAME`, default the
//!   Docker network's id), created in the controller with the subnet,
//!   gateway and `-o tenant=T` unless it exists (then the subnets must
//!   agree).
//! - `RequestAddress` registers the container with the controller on this
//!   host and a free OpenFlow port: the controller's IPAM picks the address
//!   (or checks `--ip`) and the MAC. `CreateEndpoint` finds that record by
//!   address, makes the veth (container end with the record's MAC) and
//!   attaches the host end to the agent; `Join` hands the container end to
//!   Docker with the gateway.
//! - `DeleteEndpoint` detaches and deletes the veth; `ReleaseAddress`
//!   deregisters (queued for the agent while the controller is down);
//!   `DeleteNetwork` deletes the DaoliNet network it created once empty.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use daolinet_attach::agent::AgentClient;
use daolinet_attach::link::Netlink;
use daolinet_attach::names::{
    docker_host_veth, docker_peer_veth, docker_record_id, DOCKER_ID_PREFIX,
};
use daolinet_attach::site::{Registration, Site};
use daolinet_attach::{queue, Error as AttachError};
use daolinet_policy::addr::{Ipv4Net, MacAddr};
use daolinet_policy::model::{Container, Network, NetworkSpec};
use serde_json::{json, Value};

use crate::protocol::{self, ADDRESS_TYPE, GATEWAY_TYPE, MAC_OPTION};
use crate::state::{self, Net, Pool, State};

/// The `-o` options `CreateNetwork` understands.
const KNOWN_OPTS: [&str; 2] = ["network", "tenant"];

/// The driver: the host's agent, and the state file.
#[derive(Debug)]
pub struct Driver {
    agent: AgentClient,
    state_file: PathBuf,
    state: State,
}

type Answer = Result<Value, String>;

fn text(e: AttachError) -> String {
    e.to_string()
}

/// `10.1.0.5/24` or `10.1.0.5` → the address.
fn addr_of(s: &str) -> Result<Ipv4Addr, String> {
    s.split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 address"))
}

/// The DaoliNet network of Docker network `docker_id` when `-o network`
/// does not name one: `docker-` and the id's first 12 characters (Docker's
/// ids are hex; a call may carry anything, so characters, not bytes).
fn default_network_name(docker_id: &str) -> String {
    format!("docker-{}", docker_id.chars().take(12).collect::<String>())
}

impl Driver {
    /// A driver for the agent at `agent_socket`, keeping its state in
    /// `state_file` (read now).
    pub fn new(agent_socket: PathBuf, state_file: PathBuf) -> Result<Driver, String> {
        let state = state::load(&state_file)?;
        Ok(Driver {
            agent: AgentClient::new(&agent_socket),
            state_file,
            state,
        })
    }

    fn save(&self) -> Result<(), String> {
        state::save(&self.state_file, &self.state)
    }

    fn site(&self) -> Result<Site, String> {
        let info = self.agent.info().map_err(text)?;
        Site::with_info(self.agent.clone(), info).map_err(text)
    }

    /// Answer call `method` with `body`: `Ok` with the answer, `Err` with
    /// the message for Docker; `None` for a call this driver does not know.
    pub fn call(&mut self, method: &str, body: &[u8]) -> Option<Answer> {
        let r = match method {
            "Plugin.Activate" => Ok(protocol::activate()),
            "NetworkDriver.GetCapabilities" => {
                Ok(json!({"Scope": "local", "ConnectivityScope": "global"}))
            }
            "NetworkDriver.CreateNetwork" => {
                protocol::parse(body).and_then(|c| self.create_network(&c))
            }
            "NetworkDriver.DeleteNetwork" => {
                protocol::parse(body).and_then(|c| self.delete_network(&c))
            }
            "NetworkDriver.CreateEndpoint" => {
                protocol::parse(body).and_then(|c| self.create_endpoint(&c))
            }
            "NetworkDriver.DeleteEndpoint" => {
                protocol::parse(body).and_then(|c| self.delete_endpoint(&c))
            }
            "NetworkDriver.EndpointOperInfo" => Ok(json!({"Value": {}})),
            "NetworkDriver.Join" => protocol::parse(body).and_then(|c| self.join(&c)),
            "NetworkDriver.Leave"
            | "NetworkDriver.DiscoverNew"
            | "NetworkDriver.DiscoverDelete"
            | "NetworkDriver.ProgramExternalConnectivity"
            | "NetworkDriver.RevokeExternalConnectivity" => Ok(json!({})),
            "IpamDriver.GetCapabilities" => Ok(json!({"RequiresMACAddress": true})),
            "IpamDriver.GetDefaultAddressSpaces" => Ok(json!({
                "LocalDefaultAddressSpace": "daolinet",
                "GlobalDefaultAddressSpace": "daolinet",
            })),
            "IpamDriver.RequestPool" => protocol::parse(body).and_then(|c| self.request_pool(&c)),
            "IpamDriver.ReleasePool" => protocol::parse(body).and_then(|c| self.release_pool(&c)),
            "IpamDriver.RequestAddress" => {
                protocol::parse(body).and_then(|c| self.request_address(&c))
            }
            "IpamDriver.ReleaseAddress" => {
                protocol::parse(body).and_then(|c| self.release_address(&c))
            }
            _ => return None,
        };
        Some(r)
    }

    fn request_pool(&mut self, c: &protocol::RequestPool) -> Answer {
        if c.v6 {
            return Err("DaoliNet networks are IPv4 only (no --ipv6)".into());
        }
        if c.pool.is_empty() {
            return Err("give the DaoliNet network's subnet: --subnet CIDR".into());
        }
        if !c.sub_pool.is_empty() {
            return Err(
                "--ip-range is not supported: the DaoliNet controller hands out the whole subnet"
                    .into(),
            );
        }
        let subnet: Ipv4Net = c
            .pool
            .parse()
            .map_err(|e| format!("--subnet {}: {e}", c.pool))?;
        let subnet = subnet.to_string();
        if self.state.subnet_taken(&subnet) {
            return Err(format!(
                "another daolinet network on this Docker host has subnet {subnet} already"
            ));
        }
        let id = format!(
            "daolinet/{subnet}/{:08x}",
            daolinet_attach::names::random_u64() as u32
        );
        self.state.pools.insert(
            id.clone(),
            Pool {
                subnet: subnet.clone(),
                network: None,
            },
        );
        self.save()?;
        Ok(json!({"PoolID": id, "Pool": subnet, "Data": {}}))
    }

    fn release_pool(&mut self, c: &protocol::ReleasePool) -> Answer {
        if self.state.pools.remove(&c.pool_id).is_some() {
            self.save()?;
        }
        Ok(json!({}))
    }

    fn pool(&self, id: &str) -> Result<&Pool, String> {
        self.state.pools.get(id).ok_or_else(|| {
            format!("unknown pool {id:?} (not handed out by the daolinet IPAM driver)")
        })
    }

    fn request_address(&mut self, c: &protocol::RequestAddress) -> Answer {
        let pool = self.pool(&c.pool_id)?.clone();
        let subnet: Ipv4Net = pool.subnet.parse().map_err(|e| format!("{e}"))?;
        let len = subnet.prefix_len();
        let opts = c.options.clone().unwrap_or_default();
        let wanted = if c.address.is_empty() {
            None
        } else {
            Some(addr_of(&c.address)?)
        };
        if opts.get(ADDRESS_TYPE).map(String::as_str) == Some(GATEWAY_TYPE) {
            // The network is not created yet: the gateway is --gateway or
            // the controller's default, the subnet's first host address.
            let gw = match wanted {
                Some(gw) => gw,
                None => u32::from(subnet.network())
                    .checked_add(1)
                    .map(Ipv4Addr::from)
                    .filter(|gw| subnet.contains(*gw))
                    .ok_or_else(|| {
                        format!(
                            "subnet {subnet} has no address for a default gateway: give --gateway"
                        )
                    })?,
            };
            if !subnet.contains(gw) {
                return Err(format!("--gateway {gw} is outside {subnet}"));
            }
            return Ok(json!({"Address": format!("{gw}/{len}"), "Data": {}}));
        }
        let network = pool
            .network
            .clone()
            .ok_or_else(|| format!("pool {} belongs to no daolinet network yet", c.pool_id))?;
        let mac = match opts.get(MAC_OPTION) {
            Some(m) if !m.is_empty() => Some(
                m.parse::<MacAddr>()
                    .map_err(|e| format!("--mac-address {m}: {e}"))?,
            ),
            _ => None,
        };
        let site = self.site()?;
        let rec = site
            .register(&Registration {
                id: docker_record_id(),
                name: None,
                network,
                ip: wanted,
                mac,
            })
            .map_err(text)?;
        Ok(json!({"Address": format!("{}/{len}", rec.ip), "Data": {}}))
    }

    /// This host's record of the Docker container with `ip` in `network`.
    fn record(site: &Site, network: &str, ip: Ipv4Addr) -> Result<Option<Container>, String> {
        Ok(site.api.containers().map_err(text)?.into_iter().find(|c| {
            c.network == network
                && c.ip == ip
                && c.host == site.host
                && c.id.starts_with(DOCKER_ID_PREFIX)
        }))
    }

    fn release_address(&mut self, c: &protocol::ReleaseAddress) -> Answer {
        let Some(pool) = self.state.pools.get(&c.pool_id).cloned() else {
            return Ok(json!({}));
        };
        let Some(network) = pool.network else {
            return Ok(json!({})); // the gateway of a network being created
        };
        let ip = addr_of(&c.address)?;
        let site = self.site()?;
        let Some(rec) = Self::record(&site, &network, ip)? else {
            return Ok(json!({})); // the gateway, or released already
        };
        match site.api.delete_container(&rec.id) {
            Ok(_) => Ok(json!({})),
            Err(e)
                if e.unreachable()
                    || matches!(e, AttachError::Api { status, .. } if status >= 500) =>
            {
                queue::push(
                    &queue::dir(&site.info.state_dir),
                    &queue::Deferred::now(&rec.id, &e.to_string()),
                )
                .map_err(|q| format!("{e}; queueing the deletion: {q}"))?;
                let _ = site.agent.drain();
                Ok(json!({}))
            }
            Err(e) => Err(text(e)),
        }
    }

    fn create_network(&mut self, c: &protocol::CreateNetwork) -> Answer {
        let opts = c.driver_opts();
        if let Some(k) = opts.keys().find(|k| !KNOWN_OPTS.contains(&k.as_str())) {
            return Err(format!(
                "unknown option {k:?} (the daolinet driver knows -o network=NAME and -o tenant=T)"
            ));
        }
        if c.ipv6_data.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err("DaoliNet networks are IPv4 only".into());
        }
        let data = match c.ipv4_data.as_deref() {
            Some([one]) => one.clone(),
            _ => return Err(
                "a daolinet network has exactly one subnet (--subnet CIDR, --ipam-driver daolinet)"
                    .into(),
            ),
        };
        let subnet: Ipv4Net = data
            .pool
            .parse()
            .map_err(|e| format!("subnet {}: {e}", data.pool))?;
        let pool_id = self.state.unbound_pool(&subnet.to_string()).ok_or_else(|| {
            format!("subnet {subnet} was not handed out by the daolinet IPAM driver: add --ipam-driver daolinet")
        })?;
        let gateway = if data.gateway.is_empty() {
            None
        } else {
            Some(addr_of(&data.gateway)?)
        };
        let name = opts
            .get("network")
            .cloned()
            .unwrap_or_else(|| default_network_name(&c.network_id));
        let tenant = opts.get("tenant").cloned();
        let site = self.site()?;
        let (net, created) = match site.api.network(&name).map_err(text)? {
            Some(n) => {
                Self::agrees(&n, subnet, tenant.as_deref())?;
                (n, false)
            }
            None => {
                let spec = NetworkSpec {
                    name: name.clone(),
                    subnet,
                    gateway,
                    tenant,
                    nat_out: None,
                };
                (site.api.create_network(&spec).map_err(text)?, true)
            }
        };
        if let Some(p) = self.state.pools.get_mut(&pool_id) {
            p.network = Some(net.name.clone());
        }
        self.state.networks.insert(
            c.network_id.clone(),
            Net {
                name: net.name,
                created,
            },
        );
        self.save()?;
        Ok(json!({}))
    }

    /// An existing DaoliNet network can back a Docker network with this
    /// subnet and tenant.
    fn agrees(n: &Network, subnet: Ipv4Net, tenant: Option<&str>) -> Result<(), String> {
        if n.subnet != subnet {
            return Err(format!(
                "DaoliNet network {:?} has subnet {}, not {subnet}",
                n.name, n.subnet
            ));
        }
        if let Some(t) = tenant {
            if n.tenant.as_deref() != Some(t) {
                return Err(format!(
                    "DaoliNet network {:?} belongs to tenant {:?}, not {t:?}",
                    n.name,
                    n.tenant.as_deref().unwrap_or("")
                ));
            }
        }
        Ok(())
    }

    fn delete_network(&mut self, c: &protocol::NetworkOnly) -> Answer {
        let Some(net) = self.state.networks.get(&c.network_id).cloned() else {
            return Ok(json!({}));
        };
        if net.created {
            let site = self.site()?;
            let in_use = site
                .api
                .containers()
                .map_err(text)?
                .iter()
                .any(|x| x.network == net.name);
            if !in_use {
                site.api.delete_network(&net.name).map_err(text)?;
            }
        }
        self.state.networks.remove(&c.network_id);
        self.save()?;
        Ok(json!({}))
    }

    fn network_of(&self, docker_id: &str) -> Result<String, String> {
        self.state
            .networks
            .get(docker_id)
            .map(|n| n.name.clone())
            .ok_or_else(|| {
                format!("unknown network {docker_id:?} (not created by the daolinet driver)")
            })
    }

    fn create_endpoint(&mut self, c: &protocol::Endpoint) -> Answer {
        let network = self.network_of(&c.network_id)?;
        let iface = c.interface.clone().unwrap_or_default();
        if iface.address.is_empty() {
            return Err("the endpoint has no IPv4 address (use --ipam-driver daolinet)".into());
        }
        let ip = addr_of(&iface.address)?;
        let site = self.site()?;
        let rec = Self::record(&site, &network, ip)?.ok_or_else(|| {
            format!("{ip} is not registered in DaoliNet network {network:?} on this host")
        })?;
        if !iface.mac_address.is_empty() {
            let m: MacAddr = iface
                .mac_address
                .parse()
                .map_err(|e| format!("--mac-address {}: {e}", iface.mac_address))?;
            if m != rec.mac {
                return Err(format!("MAC {m} differs from the registered {}", rec.mac));
            }
        }
        let host_end = docker_host_veth(&c.endpoint_id);
        let peer = docker_peer_veth(&c.endpoint_id);
        let nl = Netlink::here().map_err(text)?;
        nl.create_veth(&host_end, &peer, None, Some(rec.mac.0))
            .map_err(text)?;
        let attach = || -> Result<(), String> {
            let l = nl
                .link(&host_end)
                .map_err(text)?
                .ok_or_else(|| format!("{host_end} vanished"))?;
            nl.set_up(l.index).map_err(text)?;
            site.agent.port_add(&host_end, rec.port).map_err(text)?;
            Ok(())
        };
        if let Err(e) = attach() {
            let _ = nl.delete(&host_end);
            return Err(e);
        }
        if iface.mac_address.is_empty() {
            Ok(json!({"Interface": {"MacAddress": rec.mac.to_string()}}))
        } else {
            Ok(json!({"Interface": {}}))
        }
    }

    fn delete_endpoint(&mut self, c: &protocol::Endpoint) -> Answer {
        let host_end = docker_host_veth(&c.endpoint_id);
        self.agent.port_del_if_present(&host_end).map_err(text)?;
        let nl = Netlink::here().map_err(text)?;
        nl.delete(&host_end).map_err(text)?;
        Ok(json!({}))
    }

    fn join(&mut self, c: &protocol::Endpoint) -> Answer {
        let network = self.network_of(&c.network_id)?;
        let site = self.site()?;
        let net = site
            .api
            .network(&network)
            .map_err(text)?
            .ok_or_else(|| format!("DaoliNet network {network:?} is gone"))?;
        Ok(json!({
            "InterfaceName": {"SrcName": docker_peer_veth(&c.endpoint_id), "DstPrefix": "eth"},
            "Gateway": net.gateway.to_string(),
            "DisableGatewayService": true,
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A fresh directory, removed when dropped.
    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A driver whose agent socket does not exist (every call that needs
    /// the agent fails cleanly) and whose state is in a fresh directory.
    fn driver(tag: &str) -> (Driver, TempDir) {
        let dir = std::env::temp_dir().join(format!(
            "daolinet-docker-driver-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let d = Driver::new(dir.join("no-agent.sock"), dir.join("state.json")).unwrap();
        (d, TempDir(dir))
    }

    fn call(d: &mut Driver, method: &str, body: &Value) -> Answer {
        d.call(method, body.to_string().as_bytes()).unwrap()
    }

    fn pool(d: &mut Driver, subnet: &str) -> String {
        let v = call(d, "IpamDriver.RequestPool", &json!({"Pool": subnet})).unwrap();
        v["PoolID"].as_str().unwrap().to_string()
    }

    #[test]
    fn default_network_names_cut_characters_not_bytes() {
        assert_eq!(
            default_network_name("0123456789abcdef0123"),
            "docker-0123456789ab"
        );
        assert_eq!(default_network_name("abc"), "docker-abc");
        // 13 bytes: byte 12 is inside the fourth '€'.
        assert_eq!(default_network_name("a€€€€"), "docker-a€€€€");
    }

    /// A `CreateNetwork` whose network id is not ASCII used to panic on
    /// slicing it at byte 12 (when `-o network` names no network); now it
    /// gets as far as the agent (absent here) and fails with a message.
    #[test]
    fn create_network_with_a_non_ascii_id_is_an_error_not_a_panic() {
        let (mut d, _dir) = driver("non-ascii-id");
        pool(&mut d, "10.9.0.0/24");
        let r = call(
            &mut d,
            "NetworkDriver.CreateNetwork",
            &json!({"NetworkID": "a€€€€€€€€€€€€", "IPv4Data": [{"Pool": "10.9.0.0/24"}]}),
        );
        assert!(r.is_err(), "{r:?}");
    }

    /// The default gateway of `--subnet 255.255.255.255/32` used to be
    /// computed as the network address + 1, which overflows.
    #[test]
    fn default_gateway_of_a_subnet_without_room_is_an_error() {
        let (mut d, _dir) = driver("no-gateway-room");
        for subnet in ["255.255.255.255/32", "10.9.0.7/32"] {
            let id = pool(&mut d, subnet);
            let r = call(
                &mut d,
                "IpamDriver.RequestAddress",
                &json!({"PoolID": id, "Options": {ADDRESS_TYPE: GATEWAY_TYPE}}),
            );
            let e = r.unwrap_err();
            assert!(e.contains("no address for a default gateway"), "{e}");
        }
        // A subnet with room still gets its first host address.
        let id = pool(&mut d, "10.9.1.0/24");
        let r = call(
            &mut d,
            "IpamDriver.RequestAddress",
            &json!({"PoolID": id, "Options": {ADDRESS_TYPE: GATEWAY_TYPE}}),
        );
        assert_eq!(r.unwrap()["Address"], "10.9.1.1/24");
    }
}
