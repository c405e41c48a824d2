//! PACKET_IN decisions and the agents' sampled datapath drops as events
//! for `daolictl observe` (`GET /api/events`): a bounded ring the PACKET_IN
//! path writes (the frame's first bytes, the datapath, the port, the
//! verdict: one short lock, no allocation), read and filtered by the API,
//! which names the containers from the current model. A flood overwrites
//! the oldest events; the verdict counters (metrics) stay exact. Datapath
//! drops arrive already sampled and rate-limited by the agents (a flood of
//! drops costs a few events per second); the agents count every drop.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use daolinet_policy::addr::Dpid;
use daolinet_policy::{Packet, Snapshot, Verdict, L3};

use crate::metrics::verdict_labels;

/// Events kept.
pub const CAPACITY: usize = 4096;
/// Frame bytes kept per event (Ethernet, IPv4 and transport ports).
const HEAD: usize = 64;

/// One recorded decision.
#[derive(Debug, Clone)]
struct Raw {
    seq: u64,
    at_ms: u64,
    dpid: Dpid,
    in_port: u32,
    what: What,
    len: u8,
    head: [u8; HEAD],
}

/// What an event records.
#[derive(Debug, Clone)]
enum What {
    /// The controller's decision on a PACKET_IN.
    Decision(Verdict),
    /// A drop in an agent's datapath, with the datapath's reason.
    Drop(Box<str>),
}

#[derive(Debug, Default)]
struct Ring {
    next: u64,
    events: VecDeque<Raw>,
}

/// The ring of recent decisions.
#[derive(Debug, Default)]
pub struct Events {
    ring: Mutex<Ring>,
}

/// Which events a reader wants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// Only events from this sequence number on (a page's `next`).
    #[serde(default)]
    pub since: Option<u64>,
    /// `forwarded` or `dropped`.
    #[serde(default)]
    pub verdict: Option<String>,
    /// Only events from or to this container (id or name).
    #[serde(default)]
    pub container: Option<String>,
    /// Only events of containers of this network.
    #[serde(default)]
    pub network: Option<String>,
}

/// One decision as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Sequence number.
    pub seq: u64,
    /// Unix time, milliseconds.
    pub at_ms: u64,
    /// Host of the datapath.
    pub host: String,
    /// Ingress port.
    pub in_port: u32,
    /// Source container, if the port is one's.
    pub src: Option<String>,
    /// Its network.
    pub network: Option<String>,
    /// Destination container (same network first, else any with the IP).
    pub dst: Option<String>,
    /// Its network.
    pub dst_network: Option<String>,
    /// The packet in one line (`10.0.0.2 > 10.0.0.3 icmp`, `arp who-has`).
    pub packet: String,
    /// `forwarded`, `dropped` or `ignored`.
    pub verdict: &'static str,
    /// How (same_host, cross_host...) or why not (isolated, spoofed...;
    /// for a datapath drop the datapath's reason: policy_drop,
    /// spoofed_source...).
    pub reason: String,
    /// Who decided: `controller` (a PACKET_IN) or `datapath` (a drop the
    /// host's agent sampled; one event stands for many drops in a flood).
    pub by: &'static str,
}

/// The answer of `GET /api/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventPage {
    /// The sequence number the next event will have: `since` of the
    /// next page.
    pub next: u64,
    /// Events overwritten before this reader saw them.
    pub lost: u64,
    /// The matching events, oldest first.
    pub events: Vec<Event>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Events {
    /// Record a decision (the PACKET_IN path).
    pub fn record(&self, dpid: Dpid, in_port: u32, data: &[u8], verdict: Verdict) {
        self.push(dpid, in_port, data, What::Decision(verdict));
    }

    /// Record a drop an agent's datapath sampled, with its reason.
    pub fn record_drop(&self, dpid: Dpid, in_port: u32, data: &[u8], reason: &str) {
        let reason: String = reason
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(40)
            .collect();
        self.push(dpid, in_port, data, What::Drop(reason.into()));
    }

    fn push(&self, dpid: Dpid, in_port: u32, data: &[u8], what: What) {
        let mut head = [0u8; HEAD];
        let len = data.len().min(HEAD);
        head[..len].copy_from_slice(&data[..len]);
        let at_ms = now_ms();
        let Ok(mut r) = self.ring.lock() else {
            return;
        };
        let seq = r.next;
        r.next += 1;
        if r.events.len() == CAPACITY {
            r.events.pop_front();
        }
        r.events.push_back(Raw {
            seq,
            at_ms,
            dpid,
            in_port,
            what,
            len: len as u8,
            head,
        });
    }

    /// The events `q` asks for, named from `snap`.
    pub fn query(&self, snap: &Snapshot, q: &EventQuery) -> EventPage {
        let (raws, next, oldest) = {
            let Ok(r) = self.ring.lock() else {
                return EventPage {
                    next: 0,
                    lost: 0,
                    events: Vec::new(),
                };
            };
            let since = q.since.unwrap_or(0);
            let raws: Vec<Raw> = r
                .events
                .iter()
                .filter(|e| e.seq >= since)
                .cloned()
                .collect();
            (raws, r.next, r.events.front().map_or(r.next, |e| e.seq))
        };
        let lost = q.since.map_or(0, |s| oldest.saturating_sub(s));
        let events = raws
            .iter()
            .map(|e| name(snap, e))
            .filter(|e| wanted(e, q, snap))
            .collect();
        EventPage { next, lost, events }
    }
}

fn wanted(e: &Event, q: &EventQuery, snap: &Snapshot) -> bool {
    let verdict_ok = match q.verdict.as_deref() {
        None => true,
        Some("dropped") => e.verdict == "dropped",
        Some(v) => e.verdict == v,
    };
    let container_ok = q.container.as_deref().is_none_or(|c| {
        let name = snap
            .model
            .container(c)
            .map_or(c.to_string(), |x| x.name.clone());
        e.src.as_deref() == Some(name.as_str()) || e.dst.as_deref() == Some(name.as_str())
    });
    let network_ok = q
        .network
        .as_deref()
        .is_none_or(|n| e.network.as_deref() == Some(n) || e.dst_network.as_deref() == Some(n));
    verdict_ok && container_ok && network_ok
}

fn name(snap: &Snapshot, e: &Raw) -> Event {
    let host = snap.host_by_dpid(e.dpid);
    let src = host.and_then(|h| snap.container_at(&h.name, e.in_port));
    let pkt = Packet::parse_headers(&e.head[..usize::from(e.len)]).ok();
    let (packet, dst_ip) = match pkt.as_ref().map(|p| &p.l3) {
        Some(L3::Ipv4(i)) => {
            let proto = match i.proto {
                1 => "icmp".to_string(),
                6 => "tcp".to_string(),
                17 => "udp".to_string(),
                n => format!("proto {n}"),
            };
            let text = match i.ports {
                Some((s, d)) => format!("{}:{s} > {}:{d} {proto}", i.src, i.dst),
                None => format!("{} > {} {proto}", i.src, i.dst),
            };
            (text, Some(i.dst))
        }
        Some(L3::Arp(a)) => (format!("arp who-has {} tell {}", a.tpa, a.spa), None),
        Some(L3::Other) => (
            format!("ethertype {:#06x}", pkt.as_ref().map_or(0, |p| p.eth_type)),
            None,
        ),
        None => ("unparsable".into(), None),
    };
    let dst = dst_ip.and_then(|ip| {
        let mut all = snap.containers_with_ip(ip);
        let first = all.next();
        match src {
            Some(s) => first
                .into_iter()
                .chain(all)
                .find(|c| c.network == s.network)
                .or(first),
            None => first,
        }
    });
    let (verdict, reason, by) = match &e.what {
        What::Decision(v) => match verdict_labels(v) {
            ("denied", r) => ("dropped", r.to_string(), "controller"),
            (v, r) => (v, r.to_string(), "controller"),
        },
        What::Drop(r) => ("dropped", r.to_string(), "datapath"),
    };
    Event {
        seq: e.seq,
        at_ms: e.at_ms,
        host: host.map_or_else(|| e.dpid.to_string(), |h| h.name.clone()),
        in_port: e.in_port,
        src: src.map(|c| c.name.clone()),
        network: src.map(|c| c.network.clone()),
        dst: dst.map(|c| c.name.clone()),
        dst_network: dst.map(|c| c.network.clone()),
        packet,
        verdict,
        reason,
        by,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daolinet_policy::DenyReason;

    #[test]
    fn the_ring_keeps_the_newest_and_says_what_a_reader_lost() {
        let ev = Events::default();
        let snap = Snapshot::default();
        for i in 0..(CAPACITY as u32 + 10) {
            let v = if i % 2 == 0 {
                Verdict::Denied(DenyReason::Isolated)
            } else {
                Verdict::SameHost
            };
            ev.record(Dpid(1), i, &[0u8; 10], v);
        }
        let all = ev.query(&snap, &EventQuery::default());
        assert_eq!(all.events.len(), CAPACITY);
        assert_eq!(all.events[0].seq, 10);
        assert_eq!(all.next, CAPACITY as u64 + 10);
        let q = EventQuery {
            since: Some(5),
            verdict: Some("dropped".into()),
            ..Default::default()
        };
        let p = ev.query(&snap, &q);
        assert_eq!(p.lost, 5, "seqs 5..=9 were overwritten");
        assert_eq!(p.events.len(), CAPACITY / 2);
        assert!(p
            .events
            .iter()
            .all(|e| e.verdict == "dropped" && e.reason == "isolated"));
        let q = EventQuery {
            since: Some(all.next),
            ..Default::default()
        };
        let p = ev.query(&snap, &q);
        assert!(p.events.is_empty());
        assert_eq!(p.next, all.next);
        assert_eq!(p.lost, 0);
        ev.record(Dpid(1), 1, &[], Verdict::CrossHost);
        let p = ev.query(&snap, &q);
        assert_eq!(p.events.len(), 1);
        assert_eq!(p.events[0].packet, "unparsable");
        assert_eq!(p.events[0].host, Dpid(1).to_string());
    }

    #[test]
    fn datapath_drops_are_dropped_events_by_the_datapath_with_a_tame_reason() {
        let ev = Events::default();
        let snap = Snapshot::default();
        ev.record(Dpid(1), 1, &[], Verdict::Denied(DenyReason::Spoofed));
        ev.record_drop(Dpid(1), 2, &[], "spoofed_source");
        ev.record_drop(Dpid(1), 2, &[], "a\nb\"c <x>");
        let q = EventQuery {
            verdict: Some("dropped".into()),
            ..Default::default()
        };
        let p = ev.query(&snap, &q);
        let seen: Vec<(&str, &str, &str)> = p
            .events
            .iter()
            .map(|e| (e.verdict, e.reason.as_str(), e.by))
            .collect();
        assert_eq!(
            seen,
            [
                ("dropped", "spoofed", "controller"),
                ("dropped", "spoofed_source", "datapath"),
                ("dropped", "abcx", "datapath"),
            ]
        );
    }
}
