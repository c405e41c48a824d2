//! `trace --live`: what the switches did with a real probe packet, judged
//! from their flow counters. Pure: the OpenFlow server (the I/O edge)
//! injects the probe at the source's port (PACKET_OUT to the flow table,
//! so it goes through the flows the source host holds), reads the packet
//! counters of the flows named here before and after, and this module says
//! which flows to watch ([`watches`]), when the probe has arrived
//! ([`arrived`]) and what the counts mean ([`judge`]).
//!
//! Each host of the [`Trace`] is observed through the counter of the flow
//! that handles the packet there (the pair flow with its rewrites, or a
//! denial's drop flow): a flow that counted the probe saw it. The probe
//! is delivered when the last host's flow (the one that outputs to the
//! destination container, or to the host stack for NAT-out) counted it.
//! The counters are the switches' own (`n_packets` of OFPMP_FLOW), the
//! same on Open vSwitch and on the agent; they also count the pair's other
//! packets sent meanwhile, which the report says ([`LiveHop::packets`]
//! above one).

use serde::{Deserialize, Serialize};

use crate::addr::Dpid;
use crate::flow::{FlowSpec, MatchSpec};
use crate::trace::{FlowSource, Trace, TraceResult};

/// How long a probe may take to arrive when the request does not say.
/// Open vSwitch publishes the counters of packets its datapath forwarded
/// when its revalidators run (every 500 ms by default).
pub const DEFAULT_TIMEOUT_MS: u64 = 3000;
/// The longest wait a request may ask for (the whole request, with the
/// first packet's flows and the counter reads, stays within `daolictl`'s
/// 30 s HTTP timeout).
pub const MAX_TIMEOUT_MS: u64 = 20_000;

/// A flow whose packet counter the probe is judged by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// The hop of the trace (index into [`Trace::hops`]).
    pub hop: usize,
    /// The switch.
    pub dpid: Dpid,
    /// The flow (the controller's record of it).
    pub flow: FlowSpec,
}

/// The flows to watch: every hop's flow that the host holds now. Call it
/// on a trace made once the flows of the first packet are in place.
pub fn watches(t: &Trace) -> Vec<Watch> {
    t.hops
        .iter()
        .enumerate()
        .filter(|(_, h)| h.source == FlowSource::Installed)
        .filter_map(|(i, h)| {
            h.flow.as_ref().map(|f| Watch {
                hop: i,
                dpid: h.dpid,
                flow: f.clone(),
            })
        })
        .collect()
}

/// True when a flow the switch reported (its priority, match and cookie)
/// is the watched one.
pub fn is_watched(w: &Watch, priority: u16, m: &MatchSpec, cookie: u64) -> bool {
    w.flow.priority == priority && w.flow.cookie == cookie && &w.flow.match_ == m
}

/// A watched flow's packet counter before the probe and at the last read
/// after it (`None`: the switch did not report that flow).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    /// Before the probe was injected.
    pub before: Option<u64>,
    /// At the last read since.
    pub after: Option<u64>,
}

impl Count {
    /// Packets the flow counted since the probe was injected (a flow that
    /// was not there before counts from zero).
    pub fn delta(&self) -> u64 {
        self.after
            .map_or(0, |a| a.saturating_sub(self.before.unwrap_or(0)))
    }
}

/// True once the host where the trace ends counted the probe (the
/// server stops reading then). `counts` go with [`watches`].
pub fn arrived(t: &Trace, ws: &[Watch], counts: &[Count]) -> bool {
    let Some(last) = t.hops.len().checked_sub(1) else {
        return false;
    };
    ws.iter()
        .zip(counts)
        .any(|(w, c)| w.hop == last && c.delta() > 0)
}

/// What one host did with the probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveHop {
    /// Host name.
    pub host: String,
    /// Its datapath.
    pub dpid: Dpid,
    /// The switch, as it introduced itself (`daolinet-agent`, `Open
    /// vSwitch`, or another OpenFlow switch).
    pub switch: String,
    /// The cookie of the flow whose counter was read (`None`: the host has
    /// no flow for the packet, nothing to read).
    pub cookie: Option<u64>,
    /// Its packet counter before the probe.
    pub packets_before: Option<u64>,
    /// Its packet counter after.
    pub packets_after: Option<u64>,
    /// Packets it counted in between (the probe, and the pair's other
    /// packets sent meanwhile).
    pub packets: u64,
    /// Whether the probe was seen here (the flow counted it).
    pub seen: bool,
    /// What the counts say, in words.
    pub note: String,
}

/// Where the probe ended, as observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LiveResult {
    /// The destination host's flow counted it: out to the container.
    Delivered {
        /// The container.
        container: String,
        /// Its host.
        host: String,
        /// Its port.
        port: u32,
    },
    /// Left through a host's stack (NAT-out), counted by that flow.
    Outside {
        /// The host.
        host: String,
    },
    /// A drop flow counted it: dropped as the policy decided.
    Dropped {
        /// The host that dropped it.
        host: String,
        /// Why (the trace's drop reason).
        reason: String,
    },
    /// Not seen where the trace ends within the deadline.
    NotDelivered {
        /// The last host whose flow counted it (`None`: none did).
        last_seen: Option<String>,
        /// What was and was not seen, in words.
        reason: String,
    },
}

/// The answer of a live probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveReport {
    /// The probe was the first packet of the pair: the controller decided
    /// it (as a PACKET_IN, verdict recorded) and installed its flows
    /// before injecting it.
    pub decided_first: bool,
    /// Milliseconds from the injection to the last counter read.
    pub waited_ms: u64,
    /// The deadline, in milliseconds.
    pub timeout_ms: u64,
    /// Each host of the trace, in order.
    pub hops: Vec<LiveHop>,
    /// The end, as observed.
    pub result: LiveResult,
}

/// Judges the counts: `counts` go with `ws` ([`watches`] of `t`),
/// `switches` names each hop's switch (by index of [`Trace::hops`]).
pub fn judge(
    t: &Trace,
    ws: &[Watch],
    counts: &[Count],
    switches: &[String],
    decided_first: bool,
    waited_ms: u64,
    timeout_ms: u64,
) -> LiveReport {
    let mut hops = Vec::with_capacity(t.hops.len());
    for (i, h) in t.hops.iter().enumerate() {
        let w = ws.iter().zip(counts).find(|(w, _)| w.hop == i);
        let switch = switches.get(i).cloned().unwrap_or_else(|| "?".into());
        let hop = match w {
            None => LiveHop {
                host: h.host.clone(),
                dpid: h.dpid,
                switch,
                cookie: None,
                packets_before: None,
                packets_after: None,
                packets: 0,
                seen: false,
                note: match (&h.flow, h.source) {
                    (None, _) => "no flow matches the probe here: nothing counts it".into(),
                    (Some(_), _) => "its flow is not installed: nothing counts the probe".into(),
                },
            },
            Some((w, c)) => {
                let n = c.delta();
                let note = match (c.after, n) {
                    (None, _) => "the switch does not hold this flow (expired or deleted?)".into(),
                    (Some(_), 0) => format!("not counted within {timeout_ms} ms"),
                    (Some(_), 1) => "counted the probe".into(),
                    (Some(_), n) => format!(
                        "counted {n} packets: the probe and {} more of the pair sent meanwhile",
                        n - 1
                    ),
                };
                LiveHop {
                    host: h.host.clone(),
                    dpid: h.dpid,
                    switch,
                    cookie: Some(w.flow.cookie),
                    packets_before: c.before,
                    packets_after: c.after,
                    packets: n,
                    seen: n > 0,
                    note,
                }
            }
        };
        hops.push(hop);
    }
    let last_seen = hops.iter().rposition(|h| h.seen);
    let at_end = last_seen.is_some() && last_seen == hops.len().checked_sub(1);
    let result = match (&t.result, at_end) {
        (
            TraceResult::Delivered {
                container,
                host,
                port,
            },
            true,
        ) => LiveResult::Delivered {
            container: container.clone(),
            host: host.clone(),
            port: *port,
        },
        (TraceResult::Outside { host }, true) => LiveResult::Outside { host: host.clone() },
        (TraceResult::Dropped { reason }, true) => LiveResult::Dropped {
            host: hops.last().map(|h| h.host.clone()).unwrap_or_default(),
            reason: reason.clone(),
        },
        (_, _) => {
            let seen = last_seen.and_then(|i| hops.get(i));
            let next = last_seen.map_or(hops.first(), |i| hops.get(i + 1));
            let reason = match (seen, next) {
                (None, None) => "the trace crosses no host: nothing to observe".into(),
                (None, Some(n)) => format!(
                    "not seen within {timeout_ms} ms: the flow of host {} (the source) did not count it ({})",
                    n.host, n.note
                ),
                (Some(s), Some(n)) => format!(
                    "not delivered within {timeout_ms} ms: last seen on host {} (its flow counted it), \
                     then not on host {} ({})",
                    s.host, n.host, n.note
                ),
                (Some(s), None) => format!(
                    "seen on host {}, but the trace ends in a drop no flow counts: {}",
                    s.host,
                    match &t.result {
                        TraceResult::Dropped { reason } => reason.as_str(),
                        _ => "?",
                    }
                ),
            };
            LiveResult::NotDelivered {
                last_seen: seen.map(|s| s.host.clone()),
                reason,
            }
        }
    };
    LiveReport {
        decided_first,
        waited_ms,
        timeout_ms,
        hops,
        result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::tests::model;
    use crate::trace::{trace, TraceProto, TraceRequest};
    use crate::{Config, Snapshot};

    fn req(src: &str, dst: &str) -> TraceRequest {
        TraceRequest {
            src: src.into(),
            dst: dst.into(),
            proto: TraceProto::Icmp,
            dport: None,
            live: true,
            timeout_ms: None,
        }
    }

    /// The trace once the first packet's flows are installed.
    fn installed_trace(snap: &Snapshot, src: &str, dst: &str) -> Trace {
        let cfg = Config::default();
        let first = trace(snap, &cfg, &|_| Vec::new(), &req(src, dst)).unwrap();
        assert!(first
            .hops
            .iter()
            .all(|h| h.source == FlowSource::OnFirstPacket));
        // Before the flows are in place there is nothing to watch.
        assert!(watches(&first).is_empty());
        let out =
            crate::handle_packet_in(snap, &cfg, first.hops[0].dpid, first.src.port, &first.frame);
        let flows: Vec<FlowSpec> = out
            .decisions
            .iter()
            .filter_map(|d| match d {
                crate::Decision::AddFlow(f) => Some(f.clone()),
                _ => None,
            })
            .collect();
        let now = move |d: Dpid| flows.iter().filter(|f| f.dpid == d).cloned().collect();
        trace(snap, &cfg, &now, &req(src, dst)).unwrap()
    }

    fn count(before: u64, after: u64) -> Count {
        Count {
            before: Some(before),
            after: Some(after),
        }
    }

    fn kinds() -> Vec<String> {
        vec!["daolinet-agent".into(), "Open vSwitch".into()]
    }

    #[test]
    fn a_probe_counted_on_both_hosts_is_delivered() {
        let snap = Snapshot::new(model());
        let t = installed_trace(&snap, "a", "b");
        let ws = watches(&t);
        assert_eq!(
            ws.iter().map(|w| (w.hop, w.dpid)).collect::<Vec<_>>(),
            [(0, Dpid(1)), (1, Dpid(2))]
        );
        assert!(is_watched(
            &ws[1],
            ws[1].flow.priority,
            &ws[1].flow.match_,
            ws[1].flow.cookie
        ));
        assert!(!is_watched(
            &ws[1],
            ws[1].flow.priority,
            &ws[0].flow.match_,
            ws[1].flow.cookie
        ));
        // Only the source counted it so far: not arrived.
        let partial = [count(7, 8), count(3, 3)];
        assert!(!arrived(&t, &ws, &partial));
        let done = [count(7, 8), count(3, 5)];
        assert!(arrived(&t, &ws, &done));
        let r = judge(&t, &ws, &done, &kinds(), true, 12, 3000);
        assert_eq!(
            r.result,
            LiveResult::Delivered {
                container: "b".into(),
                host: "h2".into(),
                port: 1
            }
        );
        assert!(r.hops.iter().all(|h| h.seen), "{r:?}");
        assert_eq!((r.hops[0].packets, r.hops[1].packets), (1, 2));
        assert!(
            r.hops[1].note.contains("1 more of the pair"),
            "{:?}",
            r.hops[1]
        );
        assert_eq!(r.hops[1].switch, "Open vSwitch");
        assert!(r.decided_first);
    }

    #[test]
    fn a_probe_lost_on_the_way_says_where_it_was_last_seen() {
        let snap = Snapshot::new(model());
        let t = installed_trace(&snap, "a", "b");
        let ws = watches(&t);
        let r = judge(
            &t,
            &ws,
            &[count(0, 1), count(0, 0)],
            &kinds(),
            false,
            3000,
            3000,
        );
        match &r.result {
            LiveResult::NotDelivered { last_seen, reason } => {
                assert_eq!(last_seen.as_deref(), Some("h1"));
                assert!(
                    reason.contains("last seen on host h1") && reason.contains("host h2"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Not even the source: none seen.
        let r = judge(
            &t,
            &ws,
            &[count(4, 4), count(0, 0)],
            &kinds(),
            false,
            3000,
            3000,
        );
        assert!(
            matches!(&r.result, LiveResult::NotDelivered { last_seen: None, reason } if reason.contains("h1")),
            "{r:?}"
        );
        // The destination's flow is gone from the switch.
        let gone = Count {
            before: Some(2),
            after: None,
        };
        let r = judge(&t, &ws, &[count(0, 1), gone], &kinds(), false, 3000, 3000);
        assert!(r.hops[1].note.contains("does not hold"), "{r:?}");
        assert!(!r.hops[1].seen);
    }

    #[test]
    fn a_denied_probe_is_counted_by_the_drop_flow() {
        let snap = Snapshot::new(model());
        let t = installed_trace(&snap, "a", "c");
        assert!(matches!(t.verdict, crate::Verdict::Denied(_)));
        let ws = watches(&t);
        assert_eq!(ws.len(), 1, "{t:?}");
        assert!(ws[0].flow.actions.is_empty() || ws[0].flow.hard_timeout > 0);
        assert!(!arrived(&t, &ws, &[count(1, 1)]));
        assert!(arrived(&t, &ws, &[count(1, 2)]));
        let r = judge(&t, &ws, &[count(1, 2)], &kinds(), true, 5, 3000);
        assert!(
            matches!(&r.result, LiveResult::Dropped { host, .. } if host == "h1"),
            "{r:?}"
        );
        // Not even the drop flow counted it.
        let r = judge(&t, &ws, &[count(1, 1)], &kinds(), true, 3000, 3000);
        assert!(
            matches!(
                r.result,
                LiveResult::NotDelivered {
                    last_seen: None,
                    ..
                }
            ),
            "{r:?}"
        );
    }

    #[test]
    fn counts_from_a_flow_that_appeared_start_at_zero() {
        assert_eq!(
            Count {
                before: None,
                after: Some(1)
            }
            .delta(),
            1
        );
        assert_eq!(
            Count {
                before: Some(5),
                after: Some(4)
            }
            .delta(),
            0
        );
        assert_eq!(Count::default().delta(), 0);
    }
}
