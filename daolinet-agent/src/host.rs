//! The real [`Dataplane`]: the BPF [`Datapath`] (maps, programs, punt
//! ring), AF_PACKET transmit ([`Injector`]) and the host-stack port for
//! output to LOCAL ([`LocalPort`]).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use anyhow::{bail, Result};
use daolinet_common::{FlowMapKey, PortKind, PortStats, RuleStats};
use daolinet_openflow as of;

use crate::datapath::{Datapath, Punt, UplinkMode};
use crate::engine::{Dataplane, PortCheck};
use crate::inject::{Injector, LocalPort};
use crate::netdev::iface_info;
use crate::ofswitch::PortDesc;
use crate::oftable::Counters;
use crate::table::MapOp;

/// The host's datapath and transmit paths.
pub struct Host {
    dp: Datapath,
    uplink_mode: UplinkMode,
    injector: Option<Injector>,
    local: Option<LocalPort>,
    /// ifindex and interface name by OpenFlow port.
    ifindex: HashMap<u32, (u32, String)>,
    /// The punt ring's descriptor (a duplicate, for epoll).
    ring_fd: Option<OwnedFd>,
}

impl Host {
    /// See [`Datapath::keep_links`].
    pub fn keep_datapath(&mut self) {
        self.dp.keep_links();
    }

    /// Wrap a loaded datapath; opens the transmit paths (warning, not
    /// failing, when they cannot be had).
    pub fn new(mut dp: Datapath, uplink_mode: UplinkMode) -> Self {
        let injector = match Injector::new() {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!("no AF_PACKET socket, PACKET_OUT disabled: {e:#}");
                None
            }
        };
        let local = match LocalPort::new() {
            Ok(l) => {
                tracing::info!(device = l.name(), "host-stack port for output to LOCAL");
                Some(l)
            }
            Err(e) => {
                tracing::warn!(
                    "no TAP device, frames sent to LOCAL from userspace (PACKET_OUT) are dropped: {e}"
                );
                None
            }
        };
        let ring_fd = match dp.punt_ring_fd() {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::error!("no punt ring: table misses will not reach controllers: {e:#}");
                None
            }
        };
        Host {
            dp,
            uplink_mode,
            injector,
            local,
            ifindex: HashMap::new(),
            ring_fd,
        }
    }

    /// The datapath.
    pub fn datapath(&mut self) -> &mut Datapath {
        &mut self.dp
    }

    /// Make the `dllocalN` TAP device (if there is one) the datapath's
    /// LOCAL port (see [`daolinet_common::PortKind::Local`]): what the host
    /// stack routes to it enters the datapath with `in_port=LOCAL`, and
    /// output to LOCAL from a container enters the host stack through it.
    /// Returns the device's name.
    pub fn attach_local(&mut self) -> Result<Option<String>> {
        let Some(name) = self.local.as_ref().map(|l| l.name().to_string()) else {
            return Ok(None);
        };
        self.dp.attach_port(
            &name,
            daolinet_common::OFPP_LOCAL,
            PortKind::Local,
            self.uplink_mode,
        )?;
        tracing::info!(device = %name, "LOCAL port attached (tcx egress)");
        Ok(Some(name))
    }
}

impl Counters for Host {
    fn rule(&mut self, id: u32, at: &FlowMapKey) -> RuleStats {
        self.dp
            .rule_stats(id, at)
            .ok()
            .flatten()
            .unwrap_or_default()
    }
    fn port(&mut self, ofport: u32) -> Option<PortStats> {
        self.dp.ofport_stats(ofport)
    }
}

impl Dataplane for Host {
    fn apply(&mut self, ops: &[MapOp]) {
        if let Err(e) = self.dp.apply_batched(ops) {
            tracing::error!("writing the datapath maps: {e:#}");
        }
    }

    fn punts(&mut self, out: &mut Vec<Punt>) {
        match self.dp.punts() {
            Ok(list) => {
                for p in list {
                    match p {
                        Ok(p) => out.push(p),
                        Err(e) => tracing::warn!("bad punt record: {e:#}"),
                    }
                }
            }
            Err(e) => tracing::warn!("reading punts: {e:#}"),
        }
    }

    fn punt_fd(&self) -> Option<RawFd> {
        self.ring_fd.as_ref().map(|f| f.as_raw_fd())
    }

    fn emit(&mut self, port: u32, frame: &[u8]) {
        if port == of::OFPP_LOCAL {
            match &self.local {
                Some(l) => {
                    if let Err(e) = l.send(frame) {
                        tracing::debug!("to the host stack (LOCAL) failed: {e}");
                    }
                }
                None => tracing::debug!("no host-stack port: frame to LOCAL dropped"),
            }
            return;
        }
        match (self.ifindex.get(&port), &self.injector) {
            (Some((ifindex, _)), Some(inj)) => {
                if let Err(e) = inj.send(*ifindex, frame) {
                    tracing::debug!(port, "transmit failed: {e}");
                }
            }
            (None, _) => tracing::warn!(
                port,
                "output to a port the switch does not have: frame dropped"
            ),
            (Some(_), None) => tracing::debug!(port, "no AF_PACKET socket: frame dropped"),
        }
    }

    fn attach(&mut self, iface: &str, ofport: Option<u32>, kind: PortKind) -> Result<PortDesc> {
        let ofport = match ofport {
            Some(p) => p,
            None => {
                self.dp
                    .ports()?
                    .iter()
                    .map(|p| p.ofport)
                    .filter(|p| *p < crate::DEFAULT_UPLINK_OFPORT)
                    .max()
                    .unwrap_or(0)
                    + 1
            }
        };
        if ofport == 0 || ofport > of::OFPP_MAX {
            bail!("OpenFlow port number {ofport} is out of range (1..=0xffffff00)");
        }
        self.dp.attach_port(iface, ofport, kind, self.uplink_mode)?;
        let ifindex = crate::datapath::ifindex(iface)?;
        self.ifindex.insert(ofport, (ifindex, iface.to_string()));
        let (mac, up) = iface_info(iface);
        Ok(PortDesc {
            ofport,
            name: iface.to_string(),
            mac: mac.unwrap_or_default(),
            up,
        })
    }

    fn detach(&mut self, iface: &str) -> Result<Vec<u32>> {
        self.dp.detach_port(iface)?;
        let gone: Vec<u32> = self
            .ifindex
            .iter()
            .filter(|(_, (_, n))| n == iface)
            .map(|(p, _)| *p)
            .collect();
        for p in &gone {
            self.ifindex.remove(p);
        }
        Ok(gone)
    }

    fn check_ports(&mut self) -> Vec<PortCheck> {
        let mut out = Vec::new();
        for (ofport, (ifindex, name)) in &self.ifindex {
            match crate::datapath::ifindex(name) {
                Ok(i) if i == *ifindex => {
                    let (mac, up) = iface_info(name);
                    out.push(PortCheck::Present(PortDesc {
                        ofport: *ofport,
                        name: name.clone(),
                        mac: mac.unwrap_or_default(),
                        up,
                    }));
                }
                _ => out.push(PortCheck::Gone(name.clone())),
            }
        }
        out
    }

    fn port_list(&mut self) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(self.dp.ports()?)?)
    }
}
