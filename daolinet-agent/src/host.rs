//! The real [`Dataplane`]: the BPF [`Datapath`] (maps, programs, punt
//! ring), AF_PACKET transmit ([`Injector`]) and the host-stack port for
//! output to LOCAL ([`LocalPort`]).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use anyhow::{bail, Result};
use daolinet_common::{PortKind, PortStats, RuleStats};
use daolinet_openflow as of;

use crate::bell::PuntBell;
use crate::datapath::{Datapath, Punt, UplinkMode};
use crate::dpstats::{self, Dropped};
use crate::engine::{Dataplane, PortCheck};
use crate::inject::{Injector, LocalPort};
use crate::metrics::{PortTelemetry, Telemetry};
use crate::netdev::iface_info;
use crate::ofswitch::PortDesc;
use crate::oftable::Counters;
use crate::table::{EntryKey, MapOp};

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
    /// The punt ring's faster wake-up, when it could be made.
    bell: Option<PuntBell>,
    /// The drop sample ring (kept mapped) and its descriptor.
    samples: Option<(aya::maps::RingBuf<aya::maps::MapData>, OwnedFd)>,
    samples_read: u64,
    sample_rate: u32,
}

/// Make the punt bell and tell the datapath (warning when it cannot).
fn punt_bell(dp: &mut Datapath) -> Option<PuntBell> {
    let b = match PuntBell::new() {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!("no punt bell (TAP device), the punt ring wakes the agent: {e}");
            return None;
        }
    };
    if let Err(e) = dp.set_punt_bell(b.ifindex()) {
        tracing::warn!("punt bell not configured, the punt ring wakes the agent: {e:#}");
        return None;
    }
    tracing::info!(device = b.name(), "punt bell");
    Some(b)
}

impl Drop for Host {
    /// The bell goes with the agent; a datapath left attached
    /// ([`Host::keep_datapath`]) must not ring its interface index, which
    /// the kernel may give to another device.
    fn drop(&mut self) {
        if self.bell.is_some() {
            if let Err(e) = self.dp.set_punt_bell(0) {
                tracing::warn!("clearing the punt bell: {e:#}");
            }
        }
    }
}

impl Host {
    /// See [`Datapath::keep_links`].
    pub fn keep_datapath(&mut self) {
        self.dp.keep_links();
    }

    /// Wrap a loaded datapath; opens the transmit paths and, with `bell`,
    /// the punt bell ([`crate::bell`]) (warning, not failing, when they
    /// cannot be had).
    pub fn new(mut dp: Datapath, uplink_mode: UplinkMode, bell: bool) -> Self {
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
        let bell = if bell && ring_fd.is_some() {
            punt_bell(&mut dp)
        } else {
            None
        };
        if bell.is_none() {
            // Pinned maps may hold an earlier agent's bell.
            if let Err(e) = dp.set_punt_bell(0) {
                tracing::warn!("clearing the punt bell: {e:#}");
            }
        }
        let samples = match dpstats::take_sample_ring(&mut dp).and_then(|r| {
            use std::os::fd::AsFd;
            let fd = r.as_fd().try_clone_to_owned()?;
            Ok((r, fd))
        }) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("no drop sample ring: drops are counted but not reported: {e:#}");
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
            bell,
            samples,
            samples_read: 0,
            sample_rate: 0,
        }
    }

    /// Let the datapath sample up to `rate` drops per second per CPU
    /// (bursts of `burst`) for the drop events; 0 turns sampling off.
    pub fn set_drop_sampling(&mut self, rate: u32, burst: u32) -> Result<()> {
        dpstats::set_sampling(
            &mut self.dp,
            daolinet_common::SampleConfig {
                rate,
                burst: burst.max(1),
            },
        )?;
        self.sample_rate = rate;
        Ok(())
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
    fn rule(&mut self, id: u32, at: &EntryKey) -> RuleStats {
        self.dp
            .rule_stats(id, at)
            .ok()
            .flatten()
            .unwrap_or_default()
    }
    fn port(&mut self, ofport: u32) -> Option<PortStats> {
        self.dp.ofport_stats(ofport)
    }
    fn table(&mut self, table: u8) -> daolinet_common::TableStats {
        self.dp.table_stats(table).unwrap_or_default()
    }
    fn group(&mut self, slot: u32) -> daolinet_common::GroupStats {
        self.dp.group_stats(slot).unwrap_or_default()
    }
    fn meter(&mut self, slot: u32) -> daolinet_common::MeterStats {
        self.dp.meter_stats(slot).unwrap_or_default()
    }
}

impl Dataplane for Host {
    fn apply(&mut self, ops: &[MapOp]) {
        if let Err(e) = self.dp.apply_batched(ops) {
            tracing::error!("writing the datapath maps: {e:#}");
        }
    }

    fn write_ahead(&mut self, ops: &mut Vec<MapOp>) {
        self.dp.write_ahead(ops);
    }

    fn try_apply(&mut self, ops: &[MapOp]) -> Result<(), crate::engine::ApplyError> {
        self.dp.apply_batched(ops).map_err(|e| {
            // No room: the map is full (E2BIG), or a map that allocates
            // its elements got no memory.
            let no_room = e
                .chain()
                .filter_map(|c| c.downcast_ref::<std::io::Error>())
                .any(|io| {
                    matches!(
                        io.raw_os_error(),
                        Some(libc::E2BIG | libc::ENOMEM | libc::ENOSPC)
                    )
                });
            crate::engine::ApplyError {
                no_room,
                message: format!("{e:#}"),
            }
        })
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

    fn punt_bell_fd(&self) -> Option<RawFd> {
        self.bell.as_ref().map(PuntBell::fd)
    }

    fn clear_punt_bell(&mut self) {
        if let Some(b) = &self.bell {
            b.clear();
        }
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

    fn telemetry(&mut self) -> Telemetry {
        let mut t = Telemetry {
            flow_capacity: u64::from(self.dp.capacity()),
            port_capacity: u64::from(daolinet_common::MAX_PORTS),
            subtable_capacity: daolinet_common::MAX_SUBTABLES as u64,
            samples_read: self.samples_read,
            sample_rate: self.sample_rate,
            ..Default::default()
        };
        match self.dp.drops() {
            Ok(d) => t.drops = d,
            Err(e) => t.errors.push(format!("reading the drop counters: {e:#}")),
        }
        let views = match self.dp.ports() {
            Ok(v) => v,
            Err(e) => {
                t.errors.push(format!("reading the port counters: {e:#}"));
                Vec::new()
            }
        };
        for v in views {
            let info = dpstats::port_info(&mut self.dp, v.ofport).ok().flatten();
            let slot = info.map(|i| i.slot);
            let drops = match slot.map(|s| dpstats::port_drops(&mut self.dp, s)) {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    t.errors
                        .push(format!("reading the drops of port {}: {e:#}", v.name));
                    Vec::new()
                }
                None => Vec::new(),
            };
            let xdp = v.kind == "uplink" && self.uplink_mode == UplinkMode::Xdp;
            // XDP links are the agent's own (the kernel has no query for
            // them here); tcx attachments are asked for.
            let attached = xdp
                || dpstats::tcx_attached(&v.name, v.kind == "local").unwrap_or_else(|e| {
                    t.errors.push(format!("{e:#}"));
                    false
                });
            t.ports.push(PortTelemetry {
                stats: PortStats {
                    rx_packets: v.rx_packets,
                    rx_bytes: v.rx_bytes,
                    tx_packets: v.tx_packets,
                    tx_bytes: v.tx_bytes,
                    rx_dropped: v.rx_dropped,
                },
                name: v.name,
                ofport: v.ofport,
                kind: v.kind,
                drops,
                attached,
                anti_spoof: info.is_some_and(|i| dpstats::anti_spoof(&i)),
            });
        }
        t
    }

    fn drop_samples(&mut self, out: &mut Vec<Dropped>) {
        let Some((ring, _)) = self.samples.as_mut() else {
            return;
        };
        // Bounded per call: the datapath's token buckets bound the rate.
        for _ in 0..4096 {
            let Some(item) = ring.next() else { break };
            self.samples_read += 1;
            match dpstats::parse_sample(&item) {
                Ok(d) => out.push(d),
                Err(e) => tracing::debug!("bad drop sample: {e:#}"),
            }
        }
    }

    fn sample_fd(&self) -> Option<RawFd> {
        self.samples.as_ref().map(|(_, fd)| fd.as_raw_fd())
    }

    fn set_port_source(&mut self, ofport: u32, source: Option<([u8; 6], [u8; 4])>) -> Result<()> {
        self.dp.set_anti_spoof(ofport, source)
    }
}
