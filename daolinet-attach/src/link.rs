//! Links, addresses and routes through rtnetlink, blocking: each
//! [`Netlink`] owns a netlink socket bound to one network namespace (the
//! caller's, or a container's given by path) and a current-thread runtime
//! that drives it. What an attachment needs: a veth pair whose container
//! end is created straight inside the container's namespace, its MAC, an
//! address, routes, and reading all of that back for a check.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteScope};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::Error;

/// An IPv4 route as an attachment sets it and a check reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route4 {
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Destination prefix length.
    pub len: u8,
    /// Next hop; `None` for a link-scope route (on the interface).
    pub gw: Option<Ipv4Addr>,
    /// Output interface index.
    pub oif: u32,
}

impl std::fmt::Display for Route4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.gw {
            Some(g) => write!(f, "{}/{} via {g}", self.dst, self.len),
            None => write!(f, "{}/{} scope link", self.dst, self.len),
        }
    }
}

/// What a link looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MAC address.
    pub mac: Option<[u8; 6]>,
    /// Administratively up.
    pub up: bool,
    /// Kind (`veth`...).
    pub kind: Option<String>,
}

/// A netlink socket in one network namespace, used blocking.
pub struct Netlink {
    rt: tokio::runtime::Runtime,
    h: Handle,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Netlink")
    }
}

fn nl(what: &str, e: rtnetlink::Error) -> Error {
    Error::Netlink(format!("{what}: {}", describe(&e)))
}

/// The kernel's error number of a failed request, if it was one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

fn describe(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        other => other.to_string(),
    }
}

impl Netlink {
    fn runtime() -> Result<tokio::runtime::Runtime, Error> {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| Error::Netlink(format!("starting the netlink runtime: {e}")))
    }

    /// A socket in the calling thread's network namespace.
    pub fn here() -> Result<Netlink, Error> {
        let rt = Self::runtime()?;
        let (conn, h, _) = {
            let _g = rt.enter();
            rtnetlink::new_connection()
                .map_err(|e| Error::Netlink(format!("opening a netlink socket: {e}")))?
        };
        rt.spawn(conn);
        Ok(Netlink { rt, h })
    }

    /// A socket in the network namespace at `path` (`/run/netns/NAME`,
    /// `/proc/PID/ns/net`...): it is opened by a short-lived thread that
    /// entered the namespace, and stays bound to it.
    pub fn in_netns(path: &Path) -> Result<Netlink, Error> {
        let ns = open_netns(path)?;
        let rt = Self::runtime()?;
        let handle = rt.handle().clone();
        let opened = std::thread::spawn(move || {
            // SAFETY: setns on a namespace file we opened; only this
            // short-lived thread moves.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let _g = handle.enter();
            rtnetlink::new_connection()
        })
        .join()
        .map_err(|_| Error::Netlink("the namespace thread panicked".into()))?;
        let (conn, h, _) = opened.map_err(|e| {
            Error::InvalidNetns(format!(
                "cannot open a netlink socket in {}: {e}",
                path.display()
            ))
        })?;
        rt.spawn(conn);
        Ok(Netlink { rt, h })
    }

    /// The link named `name`, `None` when there is none.
    pub fn link(&self, name: &str) -> Result<Option<Link>, Error> {
        let req = self.h.link().get().match_name(name.to_string()).execute();
        match self
            .rt
            .block_on(async { req.try_collect::<Vec<_>>().await })
        {
            Ok(v) => Ok(v.into_iter().next().map(link_of)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl(&format!("looking up {name}"), e)),
        }
    }

    /// Every link.
    pub fn links(&self) -> Result<Vec<Link>, Error> {
        let req = self.h.link().get().execute();
        self.rt
            .block_on(async { req.try_collect::<Vec<_>>().await })
            .map(|v| v.into_iter().map(link_of).collect())
            .map_err(|e| nl("listing links", e))
    }

    /// Create veth `host` (here, down) whose peer `peer` is created inside
    /// the namespace `peer_netns` (here when `None`) with MAC `peer_mac`.
    /// An existing name is [`Error::Exists`].
    pub fn create_veth(
        &self,
        host: &str,
        peer: &str,
        peer_netns: Option<&File>,
        peer_mac: Option<[u8; 6]>,
    ) -> Result<(), Error> {
        let mut p = LinkMessageBuilder::<LinkUnspec>::new().name(peer.to_string());
        if let Some(ns) = peer_netns {
            p = p.setns_by_fd(ns.as_raw_fd());
        }
        if let Some(mac) = peer_mac {
            p = p.address(mac.to_vec());
        }
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(p.build())))
            .build();
        let req = self.h.link().add(msg).execute();
        match self.rt.block_on(req) {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Err(Error::Exists(format!(
                "an interface named {host} (here) or {peer} (in the container) exists already"
            ))),
            Err(e) => Err(nl(&format!("creating veth {host} <-> {peer}"), e)),
        }
    }

    /// Delete link `name`; false when there was none.
    pub fn delete(&self, name: &str) -> Result<bool, Error> {
        let Some(l) = self.link(name)? else {
            return Ok(false);
        };
        match self.rt.block_on(self.h.link().del(l.index).execute()) {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(nl(&format!("deleting {name}"), e)),
        }
    }

    /// Bring link `index` up.
    pub fn set_up(&self, index: u32) -> Result<(), Error> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.rt
            .block_on(self.h.link().set(msg).execute())
            .map_err(|e| nl("bringing the link up", e))
    }

    /// Add `ip/len` to link `index`; with `noprefixroute` the kernel adds
    /// no route for the prefix (routes are then the caller's).
    pub fn add_addr(
        &self,
        index: u32,
        ip: Ipv4Addr,
        len: u8,
        noprefixroute: bool,
    ) -> Result<(), Error> {
        let mut req = self.h.address().add(index, IpAddr::V4(ip), len);
        if noprefixroute {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Noprefixroute));
        }
        self.rt
            .block_on(req.execute())
            .map_err(|e| nl(&format!("adding {ip}/{len}"), e))
    }

    /// The IPv4 addresses of link `index`.
    pub fn addrs(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, Error> {
        let req = self
            .h
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let msgs = self
            .rt
            .block_on(async { req.try_collect::<Vec<_>>().await })
            .map_err(|e| nl("listing addresses", e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip))
                    | AddressAttribute::Address(IpAddr::V4(ip)) => Some((*ip, m.header.prefix_len)),
                    _ => None,
                })
            })
            .collect())
    }

    /// Add route `r`.
    pub fn add_route(&self, r: &Route4) -> Result<(), Error> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(r.dst, r.len)
            .output_interface(r.oif);
        b = match r.gw {
            Some(g) => b.gateway(g),
            None => b.scope(RouteScope::Link),
        };
        self.rt
            .block_on(self.h.route().add(b.build()).execute())
            .map_err(|e| nl(&format!("adding route {r}"), e))
    }

    /// The IPv4 routes of the main table.
    pub fn routes(&self) -> Result<Vec<Route4>, Error> {
        let req = self
            .h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let msgs = self
            .rt
            .block_on(async { req.try_collect::<Vec<_>>().await })
            .map_err(|e| nl("listing routes", e))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.table == 254 || m.attributes.contains(&RouteAttribute::Table(254)))
            .map(|m| {
                let mut r = Route4 {
                    dst: Ipv4Addr::UNSPECIFIED,
                    len: m.header.destination_prefix_length,
                    gw: None,
                    oif: 0,
                };
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Destination(RouteAddress::Inet(d)) => r.dst = *d,
                        RouteAttribute::Gateway(RouteAddress::Inet(g)) => r.gw = Some(*g),
                        RouteAttribute::Oif(i) => r.oif = *i,
                        _ => {}
                    }
                }
                r
            })
            .collect())
    }
}

fn link_of(m: LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        mac: None,
        up: m.header.flags.contains(LinkFlags::Up),
        kind: None,
    };
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n,
            LinkAttribute::Address(b) if b.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&b);
                l.mac = Some(mac);
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        l.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    l
}

/// Open a network namespace file, checking that it is one.
pub fn open_netns(path: &Path) -> Result<File, Error> {
    let f = File::open(path)
        .map_err(|e| Error::InvalidNetns(format!("cannot open {}: {e}", path.display())))?;
    // NS_GET_NSTYPE (_IO(0xb7, 0x3)) says which kind of namespace it is.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: an ioctl without argument on a descriptor we own.
    let t = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE as _) };
    if t != libc::CLONE_NEWNET {
        return Err(Error::InvalidNetns(format!(
            "{} is not a network namespace",
            path.display()
        )));
    }
    Ok(f)
}

/// Whether `path` is the calling thread's own network namespace.
pub fn is_own_netns(path: &Path) -> Result<bool, Error> {
    use std::os::unix::fs::MetadataExt;
    let theirs = std::fs::metadata(path)
        .map_err(|e| Error::InvalidNetns(format!("cannot open {}: {e}", path.display())))?;
    let ours = std::fs::metadata("/proc/thread-self/ns/net")
        .map_err(|e| Error::InvalidNetns(format!("cannot look at our own namespace: {e}")))?;
    Ok(theirs.dev() == ours.dev() && theirs.ino() == ours.ino())
}
