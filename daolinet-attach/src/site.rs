//! One host as the integrations see it: its agent (control socket), the
//! name its host is registered under, and the controller's API the agent
//! registered with. Registering a container picks the OpenFlow port it
//! will have on the agent, so that the registration and the port agree.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use daolinet_policy::addr::MacAddr;
use daolinet_policy::model::{Container, ContainerSpec};

use crate::agent::{AgentClient, AgentInfo};
use crate::api::Api;
use crate::names::{FIRST_PORT, LAST_PORT};
use crate::Error;

/// How many times a registration retries a port someone took meanwhile.
const PORT_ATTEMPTS: usize = 16;

/// A host's agent and the controller it registered with.
#[derive(Debug, Clone)]
pub struct Site {
    /// The agent.
    pub agent: AgentClient,
    /// What it said about itself.
    pub info: AgentInfo,
    /// The host's name in the controller.
    pub host: String,
    /// The controller's API.
    pub api: Api,
}

/// A container to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Its id in the controller.
    pub id: String,
    /// A name to give it; taken already, the id is its name.
    pub name: Option<String>,
    /// The controller's network.
    pub network: String,
    /// The logical IP asked for (allocated when `None`).
    pub ip: Option<Ipv4Addr>,
    /// The MAC asked for (the controller's when `None`).
    pub mac: Option<MacAddr>,
}

/// The lowest port in `FIRST_PORT..=LAST_PORT` not in `used`.
pub fn free_port(used: &BTreeSet<u32>) -> Option<u32> {
    (FIRST_PORT..=LAST_PORT).find(|p| !used.contains(p))
}

impl Site {
    /// The host whose agent listens on `socket`. Fails when the agent does
    /// not answer, or runs without `--api` (it then cannot tell where to
    /// register containers).
    pub fn open(socket: &Path) -> Result<Site, Error> {
        let agent = AgentClient::new(socket);
        let info = agent.info()?;
        Site::with_info(agent, info)
    }

    /// The host of `agent`, which said `info`.
    pub fn with_info(agent: AgentClient, info: AgentInfo) -> Result<Site, Error> {
        let (Some(host), Some(api), Some(token_file)) = (
            info.host.clone(),
            info.api.clone(),
            info.api_token_file.clone(),
        ) else {
            return Err(Error::Config(format!(
                "the DaoliNet agent at {} runs without --api: start it with --api URL \
                 (and --api-token-file) so that containers can be registered",
                agent.socket().display()
            )));
        };
        let api = Api::with_token_file(&api, &token_file)?;
        Ok(Site {
            agent,
            info,
            host,
            api,
        })
    }

    /// The OpenFlow ports in use on this host: the agent's, and those of
    /// the containers the controller has here.
    pub fn used_ports(&self) -> Result<BTreeSet<u32>, Error> {
        let mut used: BTreeSet<u32> = self.agent.ports()?.iter().map(|p| p.ofport).collect();
        used.extend(
            self.api
                .containers()?
                .iter()
                .filter(|c| c.host == self.host)
                .map(|c| c.port),
        );
        Ok(used)
    }

    /// Register `r` on this host with a free OpenFlow port (retrying when
    /// another registration took it meanwhile); the record, with the
    /// addresses the controller chose.
    pub fn register(&self, r: &Registration) -> Result<Container, Error> {
        let mut used = self.used_ports()?;
        let mut name = r.name.clone();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port(&used).ok_or_else(|| {
                Error::Config(format!(
                    "no free OpenFlow port left on host {} ({FIRST_PORT}-{LAST_PORT})",
                    self.host
                ))
            })?;
            let spec = ContainerSpec {
                id: r.id.clone(),
                name: name.clone(),
                network: r.network.clone(),
                ip: r.ip,
                mac: r.mac,
                host: self.host.clone(),
                port,
            };
            match self.api.create_container(&spec) {
                Ok(c) => return Ok(c),
                Err(Error::Api {
                    status: 409,
                    field: Some(f),
                    ..
                }) if f == "port" => {
                    used.insert(port);
                }
                // The name is another container's: fall back to the id.
                Err(Error::Api {
                    status: 409,
                    ref message,
                    field: None,
                }) if name
                    .as_deref()
                    .is_some_and(|n| n != r.id && message.contains(&format!("{n:?}"))) =>
                {
                    name = None;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Config(format!(
            "could not find a free OpenFlow port on host {} after {PORT_ATTEMPTS} attempts",
            self.host
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_skip_the_used_ones() {
        let mut used = BTreeSet::new();
        assert_eq!(free_port(&used), Some(FIRST_PORT));
        used.extend([FIRST_PORT, FIRST_PORT + 1, FIRST_PORT + 3, 1, 65000]);
        assert_eq!(free_port(&used), Some(FIRST_PORT + 2));
        let all: BTreeSet<u32> = (FIRST_PORT..=LAST_PORT).collect();
        assert_eq!(free_port(&all), None);
    }
}
