//! The agent's Prometheus metrics (`run --metrics IP:PORT`, `GET
//! /metrics`): what the datapath counted (drops by reason, and by port and
//! reason; per-port packets and bytes), what the switch did (flows, punts,
//! PACKET_INs and the ones the rate limit dropped, PACKET_OUTs), how long
//! a punted packet took to be handled, each controller connection's state
//! and how full the maps are.
//!
//! Everything is read when scraped (the BPF per-CPU counters included) by
//! the event loop itself: an agent nobody scrapes does no work for its
//! metrics. Labels are bounded: reasons, ports, controllers and maps,
//! never flows. [`render`] is a pure function of a [`Scrape`]; [`http`]
//! is the little HTTP/1.1 the event loop answers with.

use std::fmt::Write as _;

use daolinet_common::{DropReason, PortStats};
use serde::Serialize;

use crate::ofswitch::SwitchCounters;

/// Upper bounds (seconds) of [`PUNT_LATENCY`]'s buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.1,
];

/// Name of the first-packet handling histogram.
pub const PUNT_LATENCY: &str = "daolinet_agent_punt_handling_seconds";

/// A latency histogram over [`LATENCY_BUCKETS`], owned by one thread.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Histogram {
    /// Observations per bucket (not cumulative; the last is +Inf).
    pub buckets: [u64; LATENCY_BUCKETS.len() + 1],
    /// Number of observations.
    pub count: u64,
    /// Sum of the observations, nanoseconds.
    pub sum_ns: u64,
}

impl Histogram {
    /// Record one observation of `ns` nanoseconds.
    pub fn observe_ns(&mut self, ns: u64) {
        let secs = ns as f64 / 1e9;
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        if let Some(b) = self.buckets.get_mut(i) {
            *b += 1;
        }
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    /// The smallest bucket bound below which at least `q` (0..=1) of the
    /// observations lie (None without observations; +Inf as f64::INFINITY).
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let want = (q * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }

    fn render(&self, s: &mut String, name: &str, help: &str) {
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.buckets.get(i).copied().unwrap_or(0);
            let _ = writeln!(s, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(s, "{name}_sum {}", self.sum_ns as f64 / 1e9);
        let _ = writeln!(s, "{name}_count {}", self.count);
    }
}

/// One port as the datapath sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortTelemetry {
    /// Interface name.
    pub name: String,
    /// OpenFlow port number.
    pub ofport: u32,
    /// `container`, `uplink` or `local`.
    pub kind: &'static str,
    /// Counters summed over CPUs.
    pub stats: PortStats,
    /// Drops of this port by reason (every reason but `unknown_ingress`,
    /// which has no port).
    pub drops: Vec<(DropReason, u64)>,
    /// The program is attached to the interface (checked with the kernel).
    pub attached: bool,
    /// Anti-spoofing is on (the datapath checks the source MAC and IPv4).
    pub anti_spoof: bool,
}

/// What the dataplane reports for the metrics and the status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Telemetry {
    /// Drops by reason, summed over CPUs.
    pub drops: Vec<(DropReason, u64)>,
    /// Ports, by OpenFlow number.
    pub ports: Vec<PortTelemetry>,
    /// Most flows the datapath holds.
    pub flow_capacity: u64,
    /// Most ports the datapath holds.
    pub port_capacity: u64,
    /// Most distinct match masks.
    pub subtable_capacity: u64,
    /// Drop samples read from the datapath.
    pub samples_read: u64,
    /// Samples per second per CPU the datapath may send (0: off).
    pub sample_rate: u32,
    /// Errors reading the datapath while collecting (each in words).
    pub errors: Vec<String>,
}

/// A controller connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Waiting before the next attempt (the last one failed or the
    /// connection dropped).
    Backoff,
    /// TCP connect in progress.
    Connecting,
    /// TCP connected, OpenFlow handshake not complete.
    Handshake,
    /// Connected and serving.
    Up,
}

impl LinkState {
    /// Every state.
    pub const ALL: [LinkState; 4] = [
        LinkState::Backoff,
        LinkState::Connecting,
        LinkState::Handshake,
        LinkState::Up,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Backoff => "backoff",
            LinkState::Connecting => "connecting",
            LinkState::Handshake => "handshake",
            LinkState::Up => "up",
        }
    }
}

/// A controller connection's OpenFlow role (OpenFlow 1.3 section 6.3.5):
/// what its ROLE_REQUESTs made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Full access, as every other equal (the default).
    Equal,
    /// Full access; the one master (others were demoted to slave).
    Master,
    /// Read-only: its writes are refused, it gets no PACKET_IN.
    Slave,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Equal, Role::Master, Role::Slave];

    /// The role of an `OFPCR_ROLE_*` value (`None` for NOCHANGE or
    /// another value).
    pub fn of(role: u32) -> Option<Role> {
        match role {
            daolinet_openflow::OFPCR_ROLE_EQUAL => Some(Role::Equal),
            daolinet_openflow::OFPCR_ROLE_MASTER => Some(Role::Master),
            daolinet_openflow::OFPCR_ROLE_SLAVE => Some(Role::Slave),
            _ => None,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Equal => "equal",
            Role::Master => "master",
            Role::Slave => "slave",
        }
    }
}

/// One controller the agent keeps a connection to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControllerLink {
    /// `tcp:IP:PORT` or `ssl:IP:PORT`.
    pub target: String,
    /// Current state.
    pub state: LinkState,
    /// Its OpenFlow role while [`LinkState::Up`].
    pub role: Option<Role>,
    /// Connections established so far.
    pub connects: u64,
    /// Why the last attempt or connection failed, if it did.
    pub last_error: Option<String>,
    /// Seconds in the current state.
    pub for_secs: u64,
}

/// The engine's own counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    /// Punts read from the ring.
    pub punts: u64,
    /// From the datapath's punt to its handling done (PACKET_IN written,
    /// ARP answered...), per punt.
    pub punt_latency: Histogram,
    /// Drop samples forwarded to controllers.
    pub samples_sent: u64,
}

/// Everything one scrape shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scrape {
    /// Datapath id.
    pub datapath_id: u64,
    /// The dataplane's view.
    pub telemetry: Telemetry,
    /// Flows in the table.
    pub flows: u64,
    /// Distinct match masks in use.
    pub subtables: u64,
    /// The switch's counters.
    pub switch: SwitchCounters,
    /// The engine's counters.
    pub engine: EngineStats,
    /// Active controller connections.
    pub controllers: Vec<ControllerLink>,
    /// Connections accepted by the passive listener, open now.
    pub passive: u64,
    /// The switch's generation id (the last master/slave ROLE_REQUEST's),
    /// `None` until a controller set one.
    pub generation_id: Option<u64>,
}

fn head(s: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(s, "# HELP {name} {help}");
    let _ = writeln!(s, "# TYPE {name} {kind}");
}

/// A per-port counter family: name, help, the value.
type PortCounter = (&'static str, &'static str, fn(&PortStats) -> u64);

/// An OpenFlow port number as a label value (`LOCAL` for the LOCAL port).
fn ofport(p: u32) -> String {
    if p == daolinet_common::OFPP_LOCAL {
        "LOCAL".into()
    } else {
        p.to_string()
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text exposition (version 0.0.4) of `m`.
pub fn render(m: &Scrape) -> String {
    let mut s = String::with_capacity(8192);
    let t = &m.telemetry;
    head(
        &mut s,
        "daolinet_agent_info",
        "gauge",
        "The agent (value 1).",
    );
    let _ = writeln!(
        s,
        "daolinet_agent_info{{datapath_id=\"{:016x}\",version=\"{}\"}} 1",
        m.datapath_id,
        env!("CARGO_PKG_VERSION")
    );

    head(
        &mut s,
        "daolinet_agent_datapath_drops_total",
        "counter",
        "Packets the datapath dropped, by reason (unknown_ingress: counted, but passed).",
    );
    for (r, n) in &t.drops {
        let _ = writeln!(
            s,
            "daolinet_agent_datapath_drops_total{{reason=\"{}\"}} {n}",
            r.name()
        );
    }

    head(
        &mut s,
        "daolinet_agent_port_drops_total",
        "counter",
        "Packets received on a port and dropped by the datapath, by reason.",
    );
    for p in &t.ports {
        for (r, n) in &p.drops {
            let _ = writeln!(
                s,
                "daolinet_agent_port_drops_total{{port=\"{}\",ofport=\"{}\",reason=\"{}\"}} {n}",
                esc(&p.name),
                ofport(p.ofport),
                r.name()
            );
        }
    }
    let port_counters: [PortCounter; 5] = [
        (
            "daolinet_agent_port_receive_packets_total",
            "Packets the datapath received on a port.",
            |x| x.rx_packets,
        ),
        (
            "daolinet_agent_port_receive_bytes_total",
            "Bytes the datapath received on a port.",
            |x| x.rx_bytes,
        ),
        (
            "daolinet_agent_port_transmit_packets_total",
            "Packets the datapath sent to a port.",
            |x| x.tx_packets,
        ),
        (
            "daolinet_agent_port_transmit_bytes_total",
            "Bytes the datapath sent to a port.",
            |x| x.tx_bytes,
        ),
        (
            "daolinet_agent_port_receive_dropped_total",
            "Packets received on a port and dropped (any reason).",
            |x| x.rx_dropped,
        ),
    ];
    for (name, help, get) in port_counters {
        head(&mut s, name, "counter", help);
        for p in &t.ports {
            let _ = writeln!(
                s,
                "{name}{{port=\"{}\",ofport=\"{}\",kind=\"{}\"}} {}",
                esc(&p.name),
                ofport(p.ofport),
                p.kind,
                get(&p.stats)
            );
        }
    }
    head(
        &mut s,
        "daolinet_agent_port_attached",
        "gauge",
        "1 when the datapath program is attached to the port's interface.",
    );
    for p in &t.ports {
        let _ = writeln!(
            s,
            "daolinet_agent_port_attached{{port=\"{}\",ofport=\"{}\",kind=\"{}\"}} {}",
            esc(&p.name),
            ofport(p.ofport),
            p.kind,
            u8::from(p.attached)
        );
    }
    head(
        &mut s,
        "daolinet_agent_port_anti_spoof",
        "gauge",
        "1 when the datapath drops what a container port sends from another MAC or IPv4 than the controller gave it.",
    );
    for p in &t.ports {
        let _ = writeln!(
            s,
            "daolinet_agent_port_anti_spoof{{port=\"{}\",ofport=\"{}\"}} {}",
            esc(&p.name),
            ofport(p.ofport),
            u8::from(p.anti_spoof)
        );
    }

    head(
        &mut s,
        "daolinet_agent_flows_installed",
        "gauge",
        "Flows in the switch's table.",
    );
    let _ = writeln!(s, "daolinet_agent_flows_installed {}", m.flows);
    head(
        &mut s,
        "daolinet_agent_map_entries",
        "gauge",
        "Entries in use in a datapath table.",
    );
    let maps = [
        ("flows", m.flows, t.flow_capacity),
        ("subtables", m.subtables, t.subtable_capacity),
        ("ports", t.ports.len() as u64, t.port_capacity),
    ];
    for (map, n, _) in maps {
        let _ = writeln!(s, "daolinet_agent_map_entries{{map=\"{map}\"}} {n}");
    }
    head(
        &mut s,
        "daolinet_agent_map_capacity",
        "gauge",
        "Most entries a datapath table holds.",
    );
    for (map, _, cap) in maps {
        let _ = writeln!(s, "daolinet_agent_map_capacity{{map=\"{map}\"}} {cap}");
    }

    let sw = &m.switch;
    let counters: [(&str, &str, u64); 9] = [
        (
            "daolinet_agent_punts_total",
            "Packets the datapath punted to the agent (table misses, CONTROLLER actions, expiring TTLs).",
            m.engine.punts,
        ),
        (
            "daolinet_agent_packet_ins_total",
            "PACKET_INs sent to controllers.",
            sw.packet_in,
        ),
        (
            "daolinet_agent_packet_ins_rate_limited_total",
            "Punts not sent as PACKET_IN because the port's rate limit (--packet-in-rate) was exceeded.",
            sw.packet_in_rate_limited,
        ),
        (
            "daolinet_agent_punts_no_controller_total",
            "Punts dropped because no controller was connected (fail mode secure).",
            sw.punt_no_controller,
        ),
        (
            "daolinet_agent_arp_replies_total",
            "ARP requests answered by the agent itself (--arp-responder).",
            sw.arp_replies,
        ),
        (
            "daolinet_agent_packet_outs_total",
            "PACKET_OUTs executed.",
            sw.packet_out,
        ),
        (
            "daolinet_agent_flow_mods_total",
            "FLOW_MODs applied.",
            sw.flow_mods,
        ),
        (
            "daolinet_agent_drop_samples_total",
            "Sampled drops read from the datapath (at most --drop-sample-rate per second per CPU).",
            t.samples_read,
        ),
        (
            "daolinet_agent_drop_samples_sent_total",
            "Sampled drops forwarded to controllers.",
            m.engine.samples_sent,
        ),
    ];
    for (name, help, v) in counters {
        head(&mut s, name, "counter", help);
        let _ = writeln!(s, "{name} {v}");
    }
    head(
        &mut s,
        "daolinet_agent_openflow_errors_sent_total",
        "counter",
        "OFPT_ERRORs the switch sent.",
    );
    let _ = writeln!(s, "daolinet_agent_openflow_errors_sent_total {}", sw.errors);
    m.engine.punt_latency.render(
        &mut s,
        PUNT_LATENCY,
        "From the datapath's punt (bpf_ktime_get_ns) to the agent having handled it: the PACKET_IN written to the controllers, or the ARP reply sent.",
    );

    head(
        &mut s,
        "daolinet_agent_controller_up",
        "gauge",
        "1 when the connection to this controller is up (OpenFlow handshake done).",
    );
    for c in &m.controllers {
        let _ = writeln!(
            s,
            "daolinet_agent_controller_up{{controller=\"{}\"}} {}",
            esc(&c.target),
            u8::from(c.state == LinkState::Up)
        );
    }
    head(
        &mut s,
        "daolinet_agent_controller_state",
        "gauge",
        "The connection state to each controller (1 for the current state).",
    );
    for c in &m.controllers {
        for st in LinkState::ALL {
            let _ = writeln!(
                s,
                "daolinet_agent_controller_state{{controller=\"{}\",state=\"{}\"}} {}",
                esc(&c.target),
                st.as_str(),
                u8::from(c.state == st)
            );
        }
    }
    head(
        &mut s,
        "daolinet_agent_controller_role",
        "gauge",
        "The OpenFlow role of each connected controller (1 for the current role).",
    );
    for c in &m.controllers {
        let Some(role) = c.role else { continue };
        for r in Role::ALL {
            let _ = writeln!(
                s,
                "daolinet_agent_controller_role{{controller=\"{}\",role=\"{}\"}} {}",
                esc(&c.target),
                r.as_str(),
                u8::from(role == r)
            );
        }
    }
    if let Some(g) = m.generation_id {
        head(
            &mut s,
            "daolinet_agent_generation_id",
            "gauge",
            "The generation id of the last master/slave ROLE_REQUEST the switch accepted (absent until one).",
        );
        let _ = writeln!(s, "daolinet_agent_generation_id {g}");
    }
    head(
        &mut s,
        "daolinet_agent_controller_connects_total",
        "counter",
        "Connections established to each controller.",
    );
    for c in &m.controllers {
        let _ = writeln!(
            s,
            "daolinet_agent_controller_connects_total{{controller=\"{}\"}} {}",
            esc(&c.target),
            c.connects
        );
    }
    head(
        &mut s,
        "daolinet_agent_passive_connections",
        "gauge",
        "Connections open on the passive OpenFlow listener (--listen).",
    );
    let _ = writeln!(s, "daolinet_agent_passive_connections {}", m.passive);
    s
}

/// The HTTP/1.1 the event loop speaks on the metrics listener: one
/// request per connection, answered and closed.
pub mod http {
    /// Requests longer than this are refused.
    pub const MAX_REQUEST: usize = 8192;

    /// What a request asks for.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Route {
        /// `GET /metrics`.
        Metrics,
        /// `GET /healthz`.
        Health,
        /// Anything else: the status line and a one-line body.
        Error(u16, &'static str),
    }

    /// The route of a request once its head is complete (`None` while
    /// more bytes are needed).
    pub fn route(input: &[u8]) -> Option<Route> {
        let end = input.windows(4).position(|w| w == b"\r\n\r\n");
        let Some(end) = end else {
            if input.len() > MAX_REQUEST {
                return Some(Route::Error(431, "request too large"));
            }
            return None;
        };
        let head = String::from_utf8_lossy(&input[..end]);
        let line = head.lines().next().unwrap_or_default();
        let mut parts = line.split(' ');
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
            return Some(Route::Error(400, "bad request"));
        }
        let path = target.split('?').next().unwrap_or("");
        Some(match (method, path) {
            ("GET", "/metrics") => Route::Metrics,
            ("GET", "/healthz") => Route::Health,
            ("GET", _) => Route::Error(404, "not found: try /metrics"),
            _ => Route::Error(405, "method not allowed"),
        })
    }

    /// A complete response with `body`.
    pub fn response(status: u16, content_type: &str, body: &str) -> Vec<u8> {
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            _ => "Error",
        };
        let mut out = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body.as_bytes());
        out
    }

    /// The Prometheus text format's content type.
    pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape() -> Scrape {
        let mut h = Histogram::default();
        h.observe_ns(20_000);
        h.observe_ns(3_000_000);
        Scrape {
            datapath_id: 0xab,
            telemetry: Telemetry {
                drops: vec![(DropReason::PolicyDrop, 7), (DropReason::Spoofed, 2)],
                ports: vec![PortTelemetry {
                    name: "veth\"a".into(),
                    ofport: 1,
                    kind: "container",
                    stats: PortStats {
                        rx_packets: 10,
                        rx_bytes: 1000,
                        tx_packets: 4,
                        tx_bytes: 400,
                        rx_dropped: 9,
                    },
                    drops: vec![(DropReason::PolicyDrop, 7), (DropReason::Spoofed, 2)],
                    attached: true,
                    anti_spoof: true,
                }],
                flow_capacity: 131072,
                port_capacity: 1024,
                subtable_capacity: 32,
                samples_read: 3,
                sample_rate: 20,
                errors: vec![],
            },
            flows: 5,
            subtables: 2,
            switch: SwitchCounters {
                packet_in: 11,
                packet_in_rate_limited: 4,
                ..Default::default()
            },
            engine: EngineStats {
                punts: 15,
                punt_latency: h,
                samples_sent: 3,
            },
            controllers: vec![ControllerLink {
                target: "tcp:10.0.0.1:6653".into(),
                state: LinkState::Up,
                role: Some(Role::Master),
                connects: 2,
                last_error: None,
                for_secs: 5,
            }],
            passive: 0,
            generation_id: Some(7),
        }
    }

    #[test]
    fn the_exposition_has_every_family_with_bounded_labels() {
        let t = render(&scrape());
        for want in [
            "daolinet_agent_datapath_drops_total{reason=\"policy_drop\"} 7",
            "daolinet_agent_port_drops_total{port=\"veth\\\"a\",ofport=\"1\",reason=\"spoofed_source\"} 2",
            "daolinet_agent_port_receive_packets_total{port=\"veth\\\"a\",ofport=\"1\",kind=\"container\"} 10",
            "daolinet_agent_port_transmit_bytes_total{port=\"veth\\\"a\",ofport=\"1\",kind=\"container\"} 400",
            "daolinet_agent_flows_installed 5",
            "daolinet_agent_port_anti_spoof{port=\"veth\\\"a\",ofport=\"1\"} 1",
            "daolinet_agent_map_entries{map=\"flows\"} 5",
            "daolinet_agent_map_capacity{map=\"flows\"} 131072",
            "daolinet_agent_packet_ins_total 11",
            "daolinet_agent_packet_ins_rate_limited_total 4",
            "daolinet_agent_punts_total 15",
            "daolinet_agent_punt_handling_seconds_bucket{le=\"0.000025\"} 1",
            "daolinet_agent_punt_handling_seconds_bucket{le=\"0.005\"} 2",
            "daolinet_agent_punt_handling_seconds_count 2",
            "daolinet_agent_controller_up{controller=\"tcp:10.0.0.1:6653\"} 1",
            "daolinet_agent_controller_state{controller=\"tcp:10.0.0.1:6653\",state=\"backoff\"} 0",
            "daolinet_agent_controller_connects_total{controller=\"tcp:10.0.0.1:6653\"} 2",
            "daolinet_agent_controller_role{controller=\"tcp:10.0.0.1:6653\",role=\"master\"} 1",
            "daolinet_agent_controller_role{controller=\"tcp:10.0.0.1:6653\",role=\"slave\"} 0",
            "daolinet_agent_generation_id 7",
            "daolinet_agent_info{datapath_id=\"00000000000000ab\"",
        ] {
            assert!(t.contains(want), "missing {want} in\n{t}");
        }
        // Every sample line belongs to a family declared before it, and
        // every counter family ends in _total.
        let mut families = std::collections::HashMap::new();
        for line in t.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                families.insert(name.to_string(), kind.to_string());
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "{name}");
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap();
            let base = name
                .strip_suffix("_bucket")
                .or_else(|| name.strip_suffix("_sum"))
                .or_else(|| name.strip_suffix("_count"))
                .filter(|b| families.get(*b).is_some_and(|k| k == "histogram"))
                .unwrap_or(name);
            assert!(families.contains_key(base), "undeclared {name}");
        }
    }

    /// Metric families named in a monitoring file shipped with the
    /// repository, with `prefix`.
    pub(crate) fn families_in(text: &str, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find(prefix) {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.push(base.to_string());
            rest = &tail[end..];
        }
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn the_shipped_dashboard_and_alerts_use_metrics_the_agent_has() {
        let t = render(&scrape());
        let files = [
            include_str!("../../docs/monitoring/grafana-dashboard.json"),
            include_str!("../../docs/monitoring/daolinet-alerts.yml"),
        ];
        let mut n = 0;
        for f in files {
            for name in families_in(f, "daolinet_agent_") {
                assert!(
                    t.contains(&format!("# TYPE {name} ")),
                    "{name} is not exported"
                );
                n += 1;
            }
        }
        assert!(n > 10, "{n}");
    }

    #[test]
    fn histogram_quantile_bounds() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile_bound(0.5), None);
        for _ in 0..9 {
            h.observe_ns(40_000);
        }
        h.observe_ns(1_000_000_000);
        assert_eq!(h.quantile_bound(0.5), Some(0.00005));
        assert_eq!(h.quantile_bound(0.9), Some(0.00005));
        assert_eq!(h.quantile_bound(1.0), Some(f64::INFINITY));
    }

    #[test]
    fn http_routes() {
        use http::{route, Route};
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Route::Metrics)
        );
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Some(Route::Metrics)
        );
        assert_eq!(route(b"GET /healthz HTTP/1.1\r\n\r\n"), Some(Route::Health));
        assert!(matches!(
            route(b"GET /nope HTTP/1.1\r\n\r\n"),
            Some(Route::Error(404, _))
        ));
        assert!(matches!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Route::Error(405, _))
        ));
        assert!(matches!(
            route(b"garbage\r\n\r\n"),
            Some(Route::Error(400, _))
        ));
        assert!(matches!(
            route(&vec![b'a'; http::MAX_REQUEST + 1]),
            Some(Route::Error(431, _))
        ));
        let r = http::response(200, http::TEXT_FORMAT, "x 1\n");
        let r = String::from_utf8(r).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Length: 4\r\n") && r.ends_with("\r\n\r\nx 1\n"));
    }
}
