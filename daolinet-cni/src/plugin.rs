//! The CNI verbs.
//!
//! - **ADD**: register the container with the controller on this host (its
//!   IPAM chooses the address and MAC, or checks the ones asked for), create
//!   the veth with its container end straight in `CNI_NETNS` (MAC set),
//!   configure it there (address without prefix route; the gateway on the
//!   link, the subnet and the default route via the gateway, so all traffic
//!   goes to DaoliNet's gateway MAC), bring both ends up and make the host
//!   end a port of the agent with the registered number. Any failure undoes
//!   the steps done, in reverse order: no veth, port, address or
//!   registration is left behind.
//! - **DEL**: the same in reverse, each step skipped when already undone
//!   (idempotent). With the agent down, the veth is removed here and the
//!   deregistration queued for the agent (`daolinet_attach::queue`); with
//!   the controller down, queued too and the agent asked to drain.
//! - **CHECK**: the registration, the agent's port, both veth ends, the
//!   address and routes inside, against the registration and `prevResult`.
//! - **STATUS**: error 50 while the agent does not answer (or cannot
//!   register containers).
//! - **GC**: every attachment of this network on this host not in
//!   `cni.dev/valid-attachments` is torn down as by DEL, and host veths or
//!   agent ports of the plugin's naming that belong to no registration.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use daolinet_attach::agent::AgentClient;
use daolinet_attach::link::{self, Netlink, Route4};
use daolinet_attach::names;
use daolinet_attach::queue;
use daolinet_attach::site::{Registration, Site};
use daolinet_attach::Error as AttachError;
use daolinet_policy::model::{Container, Network};
use ipnet::{IpNet, Ipv4Net};
use rscni_plugin::cni::Cni;
use rscni_plugin::error::Error;
use rscni_plugin::types::{Args, CNIResult, Interface, IpConfig, Route};

use crate::config::{PluginConf, Request};

/// Code of a failed CHECK (plugin-specific codes start at 100).
pub const CHECK_FAILED: u32 = 100;
/// Code of a refusal by the controller (address outside the subnet, taken,
/// none left...).
pub const REFUSED: u32 = 101;

/// The plugin.
#[derive(Debug, Default)]
pub struct DaoliNetCni;

fn bad_config(e: String) -> Error {
    Error::InvalidNetworkConfig(e)
}

/// An attachment step's failure as a CNI error.
fn cni_error(e: AttachError) -> Error {
    match e {
        AttachError::AgentDown { .. } | AttachError::ApiDown { .. } => {
            Error::TryAgainLater(e.to_string())
        }
        AttachError::Config(m) => Error::InvalidNetworkConfig(m),
        AttachError::InvalidNetns(m) => Error::InvalidNetNS(m),
        AttachError::Api { status, .. } if (400..500).contains(&status) => Error::Custom(
            REFUSED,
            "DaoliNet refused the attachment".into(),
            e.to_string(),
        ),
        other => Error::IOFailure(other.to_string()),
    }
}

/// What every verb but STATUS and GC reads from its arguments.
struct Target {
    conf: PluginConf,
    /// Controller id of the attachment.
    id: String,
    /// Host end of the veth.
    veth: String,
    /// Interface name in the container.
    ifname: String,
}

fn target(args: &Args) -> Result<Target, Error> {
    let conf = PluginConf::parse(args.config()).map_err(bad_config)?;
    let cid = args
        .container_id()
        .ok_or_else(|| Error::InvalidEnvValue("CNI_CONTAINERID is required".into()))?;
    let ifname = args
        .ifname()
        .ok_or_else(|| Error::InvalidEnvValue("CNI_IFNAME is required".into()))?;
    if !names::valid_ifname(ifname) {
        return Err(Error::InvalidEnvValue(format!(
            "CNI_IFNAME {:?} is not an interface name",
            ifname.as_ref() as &str
        )));
    }
    let id = names::cni_id(cid, ifname);
    let veth = names::cni_host_veth(&id)
        .ok_or_else(|| Error::IOFailure(format!("no veth name for {id}")))?;
    Ok(Target {
        conf,
        id,
        veth,
        ifname: ifname.to_string(),
    })
}

/// The routes an attachment sets inside the container (on interface
/// `oif`): the gateway on the link, the subnet and the default route via
/// the gateway. `with_default` is false when the container already had a
/// default route (another attachment's).
pub fn container_routes(net: &Network, oif: u32, with_default: bool) -> Vec<Route4> {
    let gw = net.gateway;
    let mut r = vec![
        Route4 {
            dst: gw,
            len: 32,
            gw: None,
            oif,
        },
        Route4 {
            dst: net.subnet.network(),
            len: net.subnet.prefix_len(),
            gw: Some(gw),
            oif,
        },
    ];
    if with_default {
        r.push(Route4 {
            dst: Ipv4Addr::UNSPECIFIED,
            len: 0,
            gw: Some(gw),
            oif,
        });
    }
    r
}

/// The ADD result: the host end and the container end, the address, the
/// routes through the gateway.
pub fn add_result(
    c: &Container,
    net: &Network,
    host_veth: &str,
    host_mac: Option<[u8; 6]>,
    ifname: &str,
    netns: &Path,
    with_default: bool,
) -> CNIResult {
    let mac = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let gw = IpAddr::V4(net.gateway);
    let v4 = |ip: Ipv4Addr, len: u8| {
        IpNet::V4(Ipv4Net::new(ip, len).unwrap_or_else(|_| Ipv4Net::from(ip)))
    };
    let mut routes = vec![Route {
        dst: v4(net.subnet.network(), net.subnet.prefix_len()),
        gw: Some(gw),
        mtu: None,
        advmss: None,
        priority: None,
        table: None,
        scope: None,
    }];
    if with_default {
        routes.push(Route {
            dst: v4(Ipv4Addr::UNSPECIFIED, 0),
            ..routes[0].clone()
        });
    }
    CNIResult {
        interfaces: vec![
            Interface {
                name: host_veth.to_string(),
                mac: host_mac.map(mac).unwrap_or_default(),
                mtu: None,
                sandbox: None,
                socket_path: None,
                pci_id: None,
            },
            Interface {
                name: ifname.to_string(),
                mac: c.mac.to_string(),
                mtu: None,
                sandbox: Some(netns.display().to_string()),
                socket_path: None,
                pci_id: None,
            },
        ],
        ips: vec![IpConfig {
            interface: Some(1),
            address: v4(c.ip, net.subnet.prefix_len()),
            gateway: Some(gw),
        }],
        routes,
        dns: None,
    }
}

/// Steps of an ADD, undone in reverse order when a later one fails.
enum Undo {
    Register(String),
    Veth(String),
    Port(String),
}

fn undo(site: &Site, host: Option<&Netlink>, done: Vec<Undo>) {
    for step in done.into_iter().rev() {
        let r = match &step {
            Undo::Port(v) => site.agent.port_del_if_present(v).map(|_| ()),
            Undo::Veth(v) => match host {
                Some(h) => h.delete(v).map(|_| ()),
                None => Ok(()),
            },
            Undo::Register(id) => site.api.delete_container(id).map(|_| ()),
        };
        if let Err(e) = r {
            eprintln!("daolinet-cni: undoing a failed ADD: {e}");
        }
    }
}

impl DaoliNetCni {
    fn add_steps(
        site: &Site,
        t: &Target,
        req: &Request,
        netns: &Path,
        done: &mut Vec<Undo>,
        host: &Netlink,
    ) -> Result<CNIResult, Error> {
        let net = site.api.network(&t.conf.network).map_err(cni_error)?.ok_or_else(|| {
            bad_config(format!(
                "unknown DaoliNet network {:?} (create it first: daolictl network create {} --subnet CIDR)",
                t.conf.network, t.conf.network
            ))
        })?;
        let ns = link::open_netns(netns).map_err(cni_error)?;
        if link::is_own_netns(netns).map_err(cni_error)? {
            return Err(Error::InvalidNetNS(format!(
                "{} is the plugin's own network namespace, not a container's",
                netns.display()
            )));
        }
        let c = site
            .register(&Registration {
                id: t.id.clone(),
                name: req.name.clone(),
                network: net.name.clone(),
                ip: req.ip,
                mac: req.mac,
            })
            .map_err(cni_error)?;
        done.push(Undo::Register(c.id.clone()));
        host.create_veth(&t.veth, &t.ifname, Some(&ns), Some(c.mac.0))
            .map_err(|e| match e {
                AttachError::Exists(m) => {
                    Error::Custom(REFUSED, "the interface exists already".into(), m)
                }
                other => cni_error(other),
            })?;
        done.push(Undo::Veth(t.veth.clone()));
        let inside = Netlink::in_netns(netns).map_err(cni_error)?;
        let cl = inside.link(&t.ifname).map_err(cni_error)?.ok_or_else(|| {
            Error::IOFailure(format!("{} did not appear in the container", t.ifname))
        })?;
        inside
            .add_addr(cl.index, c.ip, net.subnet.prefix_len(), true)
            .map_err(cni_error)?;
        inside.set_up(cl.index).map_err(cni_error)?;
        let has_default = inside
            .routes()
            .map_err(cni_error)?
            .iter()
            .any(|r| r.len == 0);
        for r in container_routes(&net, cl.index, !has_default) {
            inside.add_route(&r).map_err(cni_error)?;
        }
        let hl = host
            .link(&t.veth)
            .map_err(cni_error)?
            .ok_or_else(|| Error::IOFailure(format!("{} vanished", t.veth)))?;
        host.set_up(hl.index).map_err(cni_error)?;
        site.agent.port_add(&t.veth, c.port).map_err(cni_error)?;
        done.push(Undo::Port(t.veth.clone()));
        Ok(add_result(
            &c,
            &net,
            &t.veth,
            hl.mac,
            &t.ifname,
            netns,
            !has_default,
        ))
    }

    /// Tear an attachment down (DEL, GC); with the controller unreachable
    /// the deregistration is queued for the agent.
    fn teardown(site: &Site, id: &str, veth: &str) -> Result<(), Error> {
        site.agent.port_del_if_present(veth).map_err(cni_error)?;
        Netlink::here()
            .and_then(|h| h.delete(veth))
            .map_err(cni_error)?;
        match site.api.delete_container(id) {
            Ok(_) => Ok(()),
            Err(e)
                if e.unreachable()
                    || matches!(e, AttachError::Api { status, .. } if status >= 500) =>
            {
                queue::push(
                    &queue::dir(&site.info.state_dir),
                    &queue::Deferred::now(id, &e.to_string()),
                )
                .map_err(|q| Error::IOFailure(format!("{e}; queueing the deletion: {q}")))?;
                // Best effort: the agent drains on start anyway.
                let _ = site.agent.drain();
                Ok(())
            }
            Err(e) => Err(cni_error(e)),
        }
    }

    fn check_steps(site: &Site, t: &Target, args: &Args) -> Result<(), String> {
        let netns = args.netns().ok_or("CNI_NETNS is required")?.clone();
        let c = site
            .api
            .container(&t.id)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("container {} is not registered with the controller", t.id))?;
        if c.network != t.conf.network || c.host != site.host {
            return Err(format!(
                "container {} is registered on network {:?}, host {:?}, not {:?} on {:?}",
                t.id, c.network, c.host, t.conf.network, site.host
            ));
        }
        let net = site
            .api
            .network(&c.network)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("network {:?} is gone from the controller", c.network))?;
        if let Some(prev) = &args.config().prev_result {
            let want =
                IpNet::V4(Ipv4Net::new(c.ip, net.subnet.prefix_len()).map_err(|e| e.to_string())?);
            if !prev.ips.iter().any(|i| i.address == want) {
                return Err(format!(
                    "prevResult has {:?}, the controller registered {want}",
                    prev.ips
                        .iter()
                        .map(|i| i.address.to_string())
                        .collect::<Vec<_>>()
                ));
            }
        }
        let port = site
            .agent
            .ports()
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|p| p.name == t.veth)
            .ok_or_else(|| format!("{} is not a port of the agent", t.veth))?;
        if port.ofport != c.port {
            return Err(format!(
                "{} is port {} of the agent, registered as port {}",
                t.veth, port.ofport, c.port
            ));
        }
        let host = Netlink::here().map_err(|e| e.to_string())?;
        let hl = host
            .link(&t.veth)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("host interface {} is missing", t.veth))?;
        if !hl.up {
            return Err(format!("host interface {} is down", t.veth));
        }
        let inside = Netlink::in_netns(&netns).map_err(|e| e.to_string())?;
        let cl = inside
            .link(&t.ifname)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{} is missing in the container", t.ifname))?;
        if !cl.up {
            return Err(format!("{} is down in the container", t.ifname));
        }
        if cl.mac != Some(c.mac.0) {
            return Err(format!(
                "{} in the container has MAC {:?}, registered {}",
                t.ifname, cl.mac, c.mac
            ));
        }
        let addrs = inside.addrs(cl.index).map_err(|e| e.to_string())?;
        if !addrs.contains(&(c.ip, net.subnet.prefix_len())) {
            return Err(format!(
                "{} in the container lacks {}/{} (has {addrs:?})",
                t.ifname,
                c.ip,
                net.subnet.prefix_len()
            ));
        }
        let routes = inside.routes().map_err(|e| e.to_string())?;
        // The default route is ours unless ADD found another one there.
        let default_ours = match &args.config().prev_result {
            Some(p) => p.routes.iter().any(|r| r.dst.prefix_len() == 0),
            None => !routes.iter().any(|r| r.len == 0 && r.oif != cl.index),
        };
        for want in container_routes(&net, cl.index, default_ours) {
            if !routes.contains(&want) {
                return Err(format!("route {want} is missing in the container"));
            }
        }
        Ok(())
    }
}

/// The agent of a configuration whose socket is `socket`, described.
fn open_site(socket: &Path) -> Result<Site, Error> {
    Site::open(socket).map_err(|e| match e {
        AttachError::AgentDown { .. } => Error::PluginNotAvailable(e.to_string()),
        other => cni_error(other),
    })
}

impl Cni for DaoliNetCni {
    fn add(&self, args: Args) -> Result<CNIResult, Error> {
        let t = target(&args)?;
        let req = Request::parse(args.config(), args.args()).map_err(bad_config)?;
        let netns: PathBuf = args
            .netns()
            .cloned()
            .ok_or_else(|| Error::InvalidEnvValue("CNI_NETNS is required".into()))?;
        let site = Site::open(&t.conf.agent_socket).map_err(cni_error)?;
        let host = Netlink::here().map_err(cni_error)?;
        let mut done = Vec::new();
        match Self::add_steps(&site, &t, &req, &netns, &mut done, &host) {
            Ok(r) => Ok(r),
            Err(e) => {
                undo(&site, Some(&host), done);
                Err(e)
            }
        }
    }

    fn del(&self, args: Args) -> Result<(), Error> {
        let t = target(&args)?;
        let agent = AgentClient::new(&t.conf.agent_socket);
        match agent.info() {
            // An agent without --api registered nothing: the veth only.
            Ok(info) if info.api.is_none() => {
                agent.port_del_if_present(&t.veth).map_err(cni_error)?;
                Netlink::here()
                    .and_then(|h| h.delete(&t.veth))
                    .map_err(cni_error)?;
                Ok(())
            }
            Ok(info) => {
                let site = Site::with_info(agent, info).map_err(cni_error)?;
                Self::teardown(&site, &t.id, &t.veth)
            }
            Err(e @ AttachError::AgentDown { .. }) => {
                // The veth goes now; the deregistration waits for the agent.
                Netlink::here()
                    .and_then(|h| h.delete(&t.veth))
                    .map_err(cni_error)?;
                let dir = queue::dir(
                    t.conf
                        .agent_socket
                        .parent()
                        .unwrap_or_else(|| Path::new("/")),
                );
                queue::push(&dir, &queue::Deferred::now(&t.id, &e.to_string())).map_err(|q| {
                    Error::IOFailure(format!(
                        "{e}; queueing the deletion in {}: {q}",
                        dir.display()
                    ))
                })?;
                Ok(())
            }
            Err(e) => Err(cni_error(e)),
        }
    }

    fn check(&self, args: Args) -> Result<(), Error> {
        let t = target(&args)?;
        let site = Site::open(&t.conf.agent_socket).map_err(cni_error)?;
        Self::check_steps(&site, &t, &args).map_err(|why| {
            Error::Custom(
                CHECK_FAILED,
                "the DaoliNet attachment is broken".into(),
                why,
            )
        })
    }

    fn status(&self, args: Args) -> Result<(), Error> {
        let conf = PluginConf::parse(args.config()).map_err(bad_config)?;
        let site = open_site(&conf.agent_socket)?;
        // The agent answers; so must the controller it registered with.
        site.api.network(&conf.network).map_err(|e| match e {
            AttachError::ApiDown { .. } => Error::PluginNotAvailable(e.to_string()),
            other => cni_error(other),
        })?;
        Ok(())
    }

    fn gc(&self, args: Args) -> Result<(), Error> {
        let conf = PluginConf::parse(args.config()).map_err(bad_config)?;
        let valid: BTreeSet<String> = args
            .config()
            .valid_attachments
            .iter()
            .flatten()
            .map(|a| names::cni_id(&a.container_id, &a.ifname))
            .collect();
        let site = Site::open(&conf.agent_socket).map_err(cni_error)?;
        let all = site.api.containers().map_err(cni_error)?;
        let mut errors = Vec::new();
        for c in all.iter().filter(|c| {
            c.host == site.host
                && c.network == conf.network
                && c.id.starts_with(names::CNI_ID_PREFIX)
                && !valid.contains(&c.id)
        }) {
            let Some(veth) = names::cni_host_veth(&c.id) else {
                continue;
            };
            if let Err(e) = Self::teardown(&site, &c.id, &veth) {
                errors.push(format!("{}: {e}", c.id));
            }
        }
        // Leftovers of the plugin's naming that no registration owns (an
        // ADD killed half-way): veths here, ports of the agent.
        let owned: BTreeSet<String> = all
            .iter()
            .filter(|c| c.host == site.host)
            .filter_map(|c| names::cni_host_veth(&c.id))
            .chain(valid.iter().filter_map(|id| names::cni_host_veth(id)))
            .collect();
        let host = Netlink::here().map_err(cni_error)?;
        let ports = site.agent.ports().map_err(cni_error)?;
        let links = host.links().map_err(cni_error)?;
        let stray: BTreeSet<&str> = ports
            .iter()
            .map(|p| p.name.as_str())
            .chain(links.iter().map(|l| l.name.as_str()))
            .filter(|n| n.starts_with(names::CNI_VETH_PREFIX) && !owned.contains(*n))
            .collect();
        for v in stray {
            if let Err(e) = site
                .agent
                .port_del_if_present(v)
                .and_then(|_| host.delete(v))
            {
                errors.push(format!("{v}: {e}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::IOFailure(format!(
                "garbage collection left: {}",
                errors.join("; ")
            )))
        }
    }
}
