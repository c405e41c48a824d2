//! Prometheus metrics, rendered in the text exposition format without a
//! metrics library: a few atomics and one histogram.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use daolinet_policy::{DenyReason, Verdict};

/// Upper bounds (seconds) of the decision latency histogram.
const BUCKETS: [f64; 10] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5,
];

/// A latency histogram over [`BUCKETS`].
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records `n` observations of `took`.
    fn observe(&self, took: Duration, n: u64) {
        // One increment in the first bucket that holds the value (the
        // cumulative counts are summed when rendering): fewer contended
        // atomics on the PACKET_IN path.
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            if let Some(b) = self.buckets.get(i) {
                b.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(n, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns
            .fetch_add(ns.saturating_mul(n), Ordering::Relaxed);
    }

    fn render(&self, s: &mut String, name: &str, help: &str) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += g(&self.buckets[i]);
            let _ = writeln!(s, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = g(&self.count);
        let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(s, "{name}_sum {}", g(&self.sum_ns) as f64 / 1e9);
        let _ = writeln!(s, "{name}_count {count}");
    }
}

/// The `verdict` and `reason` labels of a policy verdict: `forwarded`
/// with how (same_host, cross_host, arp_reply...), `denied` with the deny
/// reason, or `ignored`.
pub fn verdict_labels(v: &Verdict) -> (&'static str, &'static str) {
    match v {
        Verdict::ArpReply => ("forwarded", "arp_reply"),
        Verdict::SameHost => ("forwarded", "same_host"),
        Verdict::CrossHost => ("forwarded", "cross_host"),
        Verdict::NatOut => ("forwarded", "nat_out"),
        Verdict::Firewall => ("forwarded", "firewall"),
        Verdict::TtlExceeded => ("forwarded", "ttl_exceeded"),
        Verdict::Denied(r) => ("denied", r.as_str()),
        Verdict::Ignored => ("ignored", "ignored"),
    }
}

/// Every (verdict, reason) pair, in a fixed order: the slots of
/// [`VerdictCounts`].
fn verdict_slots() -> impl Iterator<Item = Verdict> {
    [
        Verdict::ArpReply,
        Verdict::SameHost,
        Verdict::CrossHost,
        Verdict::NatOut,
        Verdict::Firewall,
        Verdict::TtlExceeded,
        Verdict::Ignored,
    ]
    .into_iter()
    .chain(DenyReason::ALL.into_iter().map(Verdict::Denied))
}

/// Number of (verdict, reason) slots.
const VERDICT_SLOTS: usize = 7 + DenyReason::ALL.len();

fn verdict_slot(v: &Verdict) -> usize {
    match v {
        Verdict::ArpReply => 0,
        Verdict::SameHost => 1,
        Verdict::CrossHost => 2,
        Verdict::NatOut => 3,
        Verdict::Firewall => 4,
        Verdict::TtlExceeded => 5,
        Verdict::Ignored => 6,
        Verdict::Denied(r) => 7 + DenyReason::ALL.iter().position(|x| x == r).unwrap_or(0),
    }
}

/// Verdict counters of one network.
type VerdictCounts = [AtomicU64; VERDICT_SLOTS];

/// The controller's counters and gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Policy verdicts by network (of the container at the punting port;
    /// "" for punts from a host's uplink or LOCAL port).
    verdicts: RwLock<BTreeMap<String, Box<VerdictCounts>>>,
    decision: Histogram,
    answer: Histogram,
    denials: [AtomicU64; DenyReason::ALL.len()],
    flows_installed: AtomicU64,
    switches_connected: AtomicU64,
    api_mutations: AtomicU64,
    api_errors: AtomicU64,
    store_conflicts: AtomicU64,
    /// 0 alone, 1 master, 2 slave.
    role: AtomicU64,
    tls_refused: AtomicU64,
    mastered_elsewhere: AtomicU64,
    generation: AtomicU64,
    /// Packets punted by a denial (Open vSwitch): [still denied, allowed
    /// now and delivered].
    punted_denials: [AtomicU64; 2],
}

impl Metrics {
    /// Records one PACKET_IN decision and how long it took.
    pub fn packet_in(&self, took: Duration, verdict: &Verdict) {
        // daolinet_packet_in_total is the histogram's count: one atomic less.
        self.decision.observe(took, 1);
        if let Verdict::Denied(r) = verdict {
            self.denied(*r);
        }
    }

    /// Records that the answers to `n` PACKET_INs were written, `took`
    /// after the kernel received them (see `daolinet_packet_in_answer_seconds`).
    pub fn packet_in_answered(&self, took: Duration, n: u64) {
        self.answer.observe(took, n);
    }

    /// Counts a policy verdict for `network` (see [`verdict_labels`]).
    pub fn verdict(&self, network: &str, v: &Verdict) {
        let i = verdict_slot(v);
        if let Ok(m) = self.verdicts.read() {
            if let Some(c) = m.get(network) {
                if let Some(a) = c.get(i) {
                    a.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        }
        // First verdict for this network.
        if let Ok(mut m) = self.verdicts.write() {
            let c = m
                .entry(network.to_string())
                .or_insert_with(|| Box::new(std::array::from_fn(|_| AtomicU64::new(0))));
            if let Some(a) = c.get(i) {
                a.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Forget the verdict counters of networks that are gone (keeps the
    /// label set bounded by the networks that exist).
    pub fn retain_networks(&self, keep: impl Fn(&str) -> bool) {
        if let Ok(mut m) = self.verdicts.write() {
            m.retain(|n, _| n.is_empty() || keep(n));
        }
    }

    /// Counts a packet a denial punted (Open vSwitch: denials punt through
    /// a meter): `delivered` when the policy allows it now (a cached copy
    /// of a denial outlived the change that deleted it), else dropped by
    /// the controller.
    pub fn punted_denial(&self, delivered: bool) {
        self.punted_denials[usize::from(delivered)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a denial.
    pub fn denied(&self, r: DenyReason) {
        if let Some(i) = DenyReason::ALL.iter().position(|x| *x == r) {
            self.denials[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sets the number of flows the controller believes installed.
    pub fn set_flows_installed(&self, n: u64) {
        // Usually unchanged: a read keeps the cache line shared between cores.
        if self.flows_installed.load(Ordering::Relaxed) != n {
            self.flows_installed.store(n, Ordering::Relaxed);
        }
    }

    /// Sets the number of connected switches.
    pub fn set_switches_connected(&self, n: u64) {
        self.switches_connected.store(n, Ordering::Relaxed);
    }

    /// Counts an accepted API mutation.
    pub fn api_mutation(&self) {
        self.api_mutations.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a mutation that lost a race with another controller's write
    /// (it catches up and runs again).
    pub fn store_conflict(&self) {
        self.store_conflicts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a switch refused at TLS (no valid certificate, one that names
    /// no datapath, or a handshake that did not complete).
    pub fn tls_refused(&self) {
        self.tls_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a switch this controller does not act on: controllers on
    /// another store elected a master there.
    pub fn mastered_elsewhere(&self) {
        self.mastered_elsewhere.fetch_add(1, Ordering::Relaxed);
    }

    /// Records this controller's role (leader election).
    pub fn set_role(&self, role: crate::ofserver::Role) {
        use crate::ofserver::Role;
        let (r, g) = match role {
            Role::Alone => (0, 0),
            Role::Master { generation } => (1, generation),
            Role::Slave { generation } => (2, generation.unwrap_or(0)),
        };
        self.role.store(r, Ordering::Relaxed);
        self.generation.store(g, Ordering::Relaxed);
    }

    /// Mutations that lost a race with another controller's write.
    pub fn store_conflicts(&self) -> u64 {
        self.store_conflicts.load(Ordering::Relaxed)
    }

    /// Counts a refused API request.
    pub fn api_error(&self) {
        self.api_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP daolinet_packet_in_total PACKET_IN messages handled."
        );
        let _ = writeln!(s, "# TYPE daolinet_packet_in_total counter");
        let _ = writeln!(s, "daolinet_packet_in_total {}", g(&self.decision.count));
        self.decision.render(
            &mut s,
            "daolinet_decision_seconds",
            "Time to decide on a PACKET_IN: from the decoded message to its answers encoded.",
        );
        self.answer.render(
            &mut s,
            "daolinet_packet_in_answer_seconds",
            "Time to answer a PACKET_IN: from the kernel's receive timestamp of the read that \
             brought it (SO_TIMESTAMPNS, latest segment of that read; the time of the read when the kernel gave none) to the write that handed the \
             last byte of its answers to the kernel; includes the controller's wake-up, queueing \
             and scheduling.",
        );
        let _ = writeln!(
            s,
            "# HELP daolinet_policy_verdicts_total PACKET_IN decisions by verdict (forwarded, denied, ignored), reason (how it was forwarded, or why denied) and network (of the container whose port punted it; empty for a host's uplink or LOCAL port)."
        );
        let _ = writeln!(s, "# TYPE daolinet_policy_verdicts_total counter");
        if let Ok(m) = self.verdicts.read() {
            for (net, counts) in m.iter() {
                for v in verdict_slots() {
                    let (verdict, reason) = verdict_labels(&v);
                    let n = counts.get(verdict_slot(&v)).map_or(0, g);
                    let _ = writeln!(
                        s,
                        "daolinet_policy_verdicts_total{{network=\"{}\",verdict=\"{verdict}\",reason=\"{reason}\"}} {n}",
                        net.replace('\\', "\\\\").replace('"', "\\\"")
                    );
                }
            }
        }
        let _ = writeln!(s, "# HELP daolinet_denials_total Denied packets by reason.");
        let _ = writeln!(s, "# TYPE daolinet_denials_total counter");
        for (i, r) in DenyReason::ALL.iter().enumerate() {
            let _ = writeln!(
                s,
                "daolinet_denials_total{{reason=\"{}\"}} {}",
                r.as_str(),
                g(&self.denials[i])
            );
        }
        let _ = writeln!(
            s,
            "# HELP daolinet_punted_denials_total Packets a denial punted to the controller (Open vSwitch gets denials as punts through a meter, since its datapath caches a deleted drop past the BARRIER) by outcome: dropped (still denied) or delivered (allowed by a policy change the switch's cache had not caught up with)."
        );
        let _ = writeln!(s, "# TYPE daolinet_punted_denials_total counter");
        for (i, outcome) in ["dropped", "delivered"].iter().enumerate() {
            let _ = writeln!(
                s,
                "daolinet_punted_denials_total{{outcome=\"{outcome}\"}} {}",
                g(&self.punted_denials[i])
            );
        }
        let _ = writeln!(s, "# HELP daolinet_flows_installed Flows the controller has installed (not yet deleted or known expired).");
        let _ = writeln!(s, "# TYPE daolinet_flows_installed gauge");
        let _ = writeln!(s, "daolinet_flows_installed {}", g(&self.flows_installed));
        let _ = writeln!(
            s,
            "# HELP daolinet_switches_connected Datapaths connected over OpenFlow."
        );
        let _ = writeln!(s, "# TYPE daolinet_switches_connected gauge");
        let _ = writeln!(
            s,
            "daolinet_switches_connected {}",
            g(&self.switches_connected)
        );
        let _ = writeln!(
            s,
            "# HELP daolinet_api_mutations_total Accepted API mutations."
        );
        let _ = writeln!(s, "# TYPE daolinet_api_mutations_total counter");
        let _ = writeln!(s, "daolinet_api_mutations_total {}", g(&self.api_mutations));
        let _ = writeln!(s, "# HELP daolinet_api_errors_total Refused API requests.");
        let _ = writeln!(s, "# TYPE daolinet_api_errors_total counter");
        let _ = writeln!(s, "daolinet_api_errors_total {}", g(&self.api_errors));
        let _ = writeln!(
            s,
            "# HELP daolinet_store_conflicts_total Mutations that lost a race with another controller's write and ran again."
        );
        let _ = writeln!(s, "# TYPE daolinet_store_conflicts_total counter");
        let _ = writeln!(
            s,
            "daolinet_store_conflicts_total {}",
            g(&self.store_conflicts)
        );
        let _ = writeln!(
            s,
            "# HELP daolinet_leader 1 when this controller is the elected master of the switches (several controllers on etcd), else 0."
        );
        let _ = writeln!(s, "# TYPE daolinet_leader gauge");
        let role = g(&self.role);
        let _ = writeln!(s, "daolinet_leader {}", u64::from(role == 1));
        let _ = writeln!(
            s,
            "# HELP daolinet_leader_generation OpenFlow generation id of the current leader (0: unknown or no election)."
        );
        let _ = writeln!(s, "# TYPE daolinet_leader_generation gauge");
        let _ = writeln!(s, "daolinet_leader_generation {}", g(&self.generation));
        let _ = writeln!(
            s,
            "# HELP daolinet_tls_refused_total Switches refused at TLS (no valid certificate, one naming no datapath, or one for another datapath than the switch claims)."
        );
        let _ = writeln!(s, "# TYPE daolinet_tls_refused_total counter");
        let _ = writeln!(s, "daolinet_tls_refused_total {}", g(&self.tls_refused));
        let _ = writeln!(
            s,
            "# HELP daolinet_switches_mastered_elsewhere_total Switches this controller left alone (once per connection and role): their generation id names a master elected by controllers on another store (another etcd cluster or prefix, or this controller has no election)."
        );
        let _ = writeln!(
            s,
            "# TYPE daolinet_switches_mastered_elsewhere_total counter"
        );
        let _ = writeln!(
            s,
            "daolinet_switches_mastered_elsewhere_total {}",
            g(&self.mastered_elsewhere)
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_histogram_and_reasons() {
        let m = Metrics::default();
        m.packet_in(Duration::from_micros(20), &Verdict::SameHost);
        m.packet_in(
            Duration::from_millis(2),
            &Verdict::Denied(DenyReason::Isolated),
        );
        let t = m.render();
        assert!(t.contains("daolinet_packet_in_total 2"));
        assert!(t.contains("daolinet_decision_seconds_bucket{le=\"0.00005\"} 1"));
        assert!(t.contains("daolinet_decision_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(t.contains("daolinet_denials_total{reason=\"isolated\"} 1"));
        m.packet_in_answered(Duration::from_micros(70), 3);
        let t = m.render();
        assert!(t.contains("daolinet_packet_in_answer_seconds_bucket{le=\"0.00005\"} 0"));
        assert!(t.contains("daolinet_packet_in_answer_seconds_bucket{le=\"0.0001\"} 3"));
        assert!(t.contains("daolinet_packet_in_answer_seconds_count 3"));
        assert!(t.contains("daolinet_decision_seconds_count 2"));
        m.punted_denial(true);
        m.punted_denial(false);
        m.punted_denial(false);
        let t = m.render();
        assert!(t.contains("daolinet_punted_denials_total{outcome=\"dropped\"} 2"));
        assert!(t.contains("daolinet_punted_denials_total{outcome=\"delivered\"} 1"));
    }

    #[test]
    fn the_shipped_dashboard_uses_metrics_the_controller_has() {
        let t = Metrics::default().render();
        let dash = include_str!("../../docs/monitoring/grafana-dashboard.json");
        let mut n = 0;
        let mut rest = dash;
        while let Some(i) = rest.find("daolinet_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            rest = &tail[end..];
            if name.starts_with("daolinet_agent_") {
                continue;
            }
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                t.contains(&format!("# TYPE {base} ")),
                "{base} is not exported"
            );
            n += 1;
        }
        assert!(n >= 5, "{n}");
    }

    #[test]
    fn verdicts_by_network_reason_and_verdict() {
        let m = Metrics::default();
        m.verdict("blue", &Verdict::CrossHost);
        m.verdict("blue", &Verdict::CrossHost);
        m.verdict("red", &Verdict::Denied(DenyReason::Isolated));
        m.verdict("", &Verdict::Ignored);
        let t = m.render();
        for want in [
            "daolinet_policy_verdicts_total{network=\"blue\",verdict=\"forwarded\",reason=\"cross_host\"} 2",
            "daolinet_policy_verdicts_total{network=\"blue\",verdict=\"denied\",reason=\"isolated\"} 0",
            "daolinet_policy_verdicts_total{network=\"red\",verdict=\"denied\",reason=\"isolated\"} 1",
            "daolinet_policy_verdicts_total{network=\"\",verdict=\"ignored\",reason=\"ignored\"} 1",
        ] {
            assert!(t.contains(want), "missing {want} in\n{t}");
        }
        // Every slot is its own.
        let slots: std::collections::BTreeSet<usize> =
            verdict_slots().map(|v| verdict_slot(&v)).collect();
        assert_eq!(slots.len(), VERDICT_SLOTS);
        m.retain_networks(|n| n == "blue");
        assert!(!m.render().contains("network=\"red\""));
    }
}
