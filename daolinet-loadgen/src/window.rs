//! The PACKET_INs a switch has in flight, and latency statistics: pure.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::plan::{Flow, FlowKey};

/// The in-flight PACKET_INs of one switch: at most `cap`, sent in the plan's
/// order, each answered by the FLOW_MOD whose match is its key.
#[derive(Debug)]
pub struct Window {
    flows: std::sync::Arc<Vec<Flow>>,
    next: usize,
    cap: usize,
    outstanding: HashMap<FlowKey, Instant>,
    /// PACKET_INs never answered: replaced when their flow came round again,
    /// or expired.
    pub lost: u64,
    /// PACKET_INs sent.
    pub sent: u64,
}

impl Window {
    /// A window of `cap` (at least 1) over `flows` (not empty).
    pub fn new(flows: std::sync::Arc<Vec<Flow>>, cap: usize) -> Window {
        Window {
            flows,
            next: 0,
            cap: cap.max(1),
            outstanding: HashMap::with_capacity(cap.max(1) * 2),
            lost: 0,
            sent: 0,
        }
    }

    /// PACKET_INs in flight.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.outstanding.len()
    }

    /// Appends PACKET_INs to `out` until the window is full; returns how many.
    pub fn fill(&mut self, now: Instant, out: &mut BytesMut) -> usize {
        let mut n = 0;
        while self.outstanding.len() < self.cap {
            let Some(f) = self.flows.get(self.next) else {
                // Empty plan: nothing to send.
                return n;
            };
            self.next += 1;
            if self.next == self.flows.len() {
                self.next = 0;
            }
            if self.outstanding.insert(f.key, now).is_some() {
                // Still unanswered a whole cycle later: lost.
                self.lost += 1;
            }
            out.extend_from_slice(&f.packet_in);
            self.sent += 1;
            n += 1;
        }
        n
    }

    /// A FLOW_MOD with `key` arrived: the round-trip time when it answers a
    /// PACKET_IN in flight (None for other flows, e.g. reverse directions).
    pub fn answer(&mut self, key: FlowKey, now: Instant) -> Option<Duration> {
        self.outstanding
            .remove(&key)
            .map(|sent| now.saturating_duration_since(sent))
    }

    /// Forgets PACKET_INs older than `max_age` (counted as lost); returns how many.
    pub fn expire(&mut self, now: Instant, max_age: Duration) -> usize {
        let before = self.outstanding.len();
        self.outstanding
            .retain(|_, sent| now.saturating_duration_since(*sent) <= max_age);
        let gone = before - self.outstanding.len();
        self.lost += gone as u64;
        gone
    }
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// Nearest-rank percentiles of `samples` (nanoseconds); None when empty.
pub fn percentiles(samples: &mut [u64]) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let n = samples.len();
    let at = |q: f64| {
        let rank = (q * n as f64).ceil() as usize;
        let i = rank.clamp(1, n) - 1;
        samples[i] as f64 / 1000.0
    };
    Some(Percentiles {
        count: n,
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        p999: at(0.999),
        max: samples[n - 1] as f64 / 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{flows, Plan};
    use std::sync::Arc;

    fn window(cap: usize) -> Window {
        let p = Plan::new(1, 3).unwrap(); // 3 pairs
        Window::new(Arc::new(flows(&p, 0).unwrap()), cap)
    }

    #[test]
    fn fills_answers_and_refills() {
        let mut w = window(2);
        let t0 = Instant::now();
        let mut out = BytesMut::new();
        assert_eq!(w.fill(t0, &mut out), 2);
        assert_eq!(w.fill(t0, &mut out), 0, "window full");
        let first = w.flows[0].clone();
        assert_eq!(&out[..first.packet_in.len()], &first.packet_in[..]);
        let t1 = t0 + Duration::from_micros(30);
        assert_eq!(w.answer(first.key, t1), Some(Duration::from_micros(30)));
        assert_eq!(w.answer(first.key, t1), None, "answered once");
        assert_eq!(w.in_flight(), 1);
        assert_eq!(w.fill(t1, &mut out), 1);
        assert_eq!(w.sent, 3);
        assert_eq!(w.lost, 0);
    }

    #[test]
    fn unanswered_flows_are_lost_when_they_come_round_or_expire() {
        let mut w = window(2);
        let t0 = Instant::now();
        let mut out = BytesMut::new();
        w.fill(t0, &mut out); // flows 0, 1
        let k1 = w.flows[1].key;
        w.answer(k1, t0);
        w.fill(t0, &mut out); // flow 2
        let k2 = w.flows[2].key;
        w.answer(k2, t0);
        w.fill(t0, &mut out); // flow 0 again (the first one is lost), then 1
        assert_eq!(w.lost, 1);
        assert_eq!(w.in_flight(), 2);
        assert_eq!(
            w.expire(t0 + Duration::from_millis(500), Duration::from_secs(1)),
            0
        );
        assert_eq!(
            w.expire(t0 + Duration::from_secs(2), Duration::from_secs(1)),
            2
        );
        assert_eq!(w.lost, 3);
        assert_eq!(w.in_flight(), 0);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        assert_eq!(percentiles(&mut []), None);
        let mut v: Vec<u64> = (1..=1000).rev().map(|x| x * 1000).collect();
        let p = percentiles(&mut v).unwrap();
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50, 500.0);
        assert_eq!(p.p90, 900.0);
        assert_eq!(p.p99, 990.0);
        assert_eq!(p.p999, 999.0);
        assert_eq!(p.max, 1000.0);
        let p = percentiles(&mut [7000]).unwrap();
        assert_eq!((p.p50, p.p99, p.max), (7.0, 7.0, 7.0));
    }
}
