//! The first-packet fast path: punts become PACKET_INs at once, then the
//! answers are waited for without sleeping.
//!
//! It is handed the [`Engine`] by the event loop when the punt ring
//! signals (or whenever the loop wakes up), so it reads and writes the
//! same connections through the same state machines as everything else:
//! one reader, one writer, and the messages of a connection handled in
//! order (a BARRIER sent before a PACKET_OUT is answered after the flows
//! before it are written, whoever reads it).
//!
//! **Reply spin.** After writing PACKET_INs it busy-waits (up to
//! [`ReplySpin::max`]) for the controllers' answers and handles them on
//! the spot, so that the PACKET_OUT does not wait for the thread to be
//! woken up again (tens of microseconds on a virtual machine). It stops as
//! soon as a PACKET_OUT came from every connection it waits for, and it
//! may use at most [`ReplySpin::cpu_share`] of one CPU over time (a budget
//! that refills): an idle agent does not spin, a flood of PACKET_INs does
//! not turn into a busy loop.

use crate::engine::{now_ns, Dataplane, Engine, LATENCY};
use crate::ofswitch::ConnId;

/// How the fast path waits for answers to its PACKET_INs.
#[derive(Debug, Clone, Copy)]
pub struct ReplySpin {
    /// Longest busy-wait after a PACKET_IN; zero turns the spin off.
    pub max: std::time::Duration,
    /// Share of one CPU the spin may use over time (0.0..=1.0): spinning
    /// draws on a budget that refills at this rate.
    pub cpu_share: f64,
}

impl ReplySpin {
    /// Spin up to `us` microseconds, within 10% of one CPU.
    pub fn micros(us: u64) -> Self {
        ReplySpin {
            max: std::time::Duration::from_micros(us),
            cpu_share: 0.1,
        }
    }
}

/// The spin time left (see [`ReplySpin::cpu_share`]).
#[derive(Debug)]
struct SpinBudget {
    /// Nanoseconds of spinning available.
    left: u64,
    /// When it was last refilled (CLOCK_MONOTONIC, ns).
    at: u64,
    /// The most that can be saved up.
    burst: u64,
}

/// The shortest spin worth starting (ns).
const MIN_SPIN_NS: u64 = 10_000;

/// The most spin time saved up (ns).
const SPIN_BURST_NS: u64 = 50_000_000;

impl SpinBudget {
    /// How long the next spin may last (ns), after refilling.
    fn grant(&mut self, cfg: &ReplySpin, now: u64) -> u64 {
        let refill = (now.saturating_sub(self.at) as f64 * cfg.cpu_share) as u64;
        self.left = self.left.saturating_add(refill).min(self.burst);
        self.at = now;
        let g = (cfg.max.as_nanos() as u64).min(self.left);
        // Shorter spins would rarely see an answer.
        if g < MIN_SPIN_NS {
            0
        } else {
            g
        }
    }
}

/// The fast path (see the module documentation).
#[derive(Debug)]
pub struct FastPath {
    spin: ReplySpin,
    budget: SpinBudget,
}

impl FastPath {
    /// A fast path that spins as `spin` says.
    pub fn new(spin: ReplySpin) -> Self {
        FastPath {
            spin,
            budget: SpinBudget {
                left: SPIN_BURST_NS,
                at: now_ns(),
                burst: SPIN_BURST_NS,
            },
        }
    }

    /// A fast path whose spins always last until the answers came (up to
    /// `secs`), whatever the machine's load: for tests that must not
    /// depend on timing.
    #[cfg(test)]
    pub(crate) fn patient(secs: u64) -> Self {
        let ns = secs * 1_000_000_000;
        FastPath {
            spin: ReplySpin {
                max: std::time::Duration::from_nanos(ns),
                cpu_share: 1.0,
            },
            budget: SpinBudget {
                left: ns,
                at: now_ns(),
                burst: ns,
            },
        }
    }

    /// Handle the punts waiting (`woke`: when the loop woke up for them,
    /// 0 if unknown), then wait for the answers to the PACKET_INs sent.
    /// Returns how many punts there were.
    pub fn run<D: Dataplane>(&mut self, eng: &mut Engine<D>, woke: u64) -> usize {
        let n = eng.drain_punts(woke);
        let waiting = eng.take_awaiting();
        if waiting.is_empty() || self.spin.max.is_zero() {
            return n;
        }
        let grant = self.budget.grant(&self.spin, now_ns());
        if grant == 0 {
            return n;
        }
        let start = now_ns();
        let left = spin(eng, waiting, start + grant);
        let spent = now_ns().saturating_sub(start);
        self.budget.left = self.budget.left.saturating_sub(spent);
        tracing::trace!(
            target: LATENCY,
            reply_spin_ns = spent,
            unanswered = left,
            "reply spin over"
        );
        n
    }
}

/// Busy-wait until `deadline` (CLOCK_MONOTONIC, ns) for the answers of the
/// connections in `waiting`, handling them (and new punts) as they come.
/// Returns how many connections were still waited for at the deadline.
fn spin<D: Dataplane>(eng: &mut Engine<D>, mut waiting: Vec<ConnId>, deadline: u64) -> usize {
    while !waiting.is_empty() && now_ns() < deadline {
        // New punts? Reading the ring needs no system call (it is mapped).
        eng.drain_punts(0);
        for id in eng.take_awaiting() {
            if !waiting.contains(&id) {
                waiting.push(id);
            }
        }
        waiting.retain(|id| {
            let r = eng.read(*id, true);
            !r.packet_out && !r.closed
        });
        if waiting.is_empty() {
            break;
        }
        // Let anything else runnable on this CPU go first (the controller
        // may share it): a spinner that does not yield keeps its CPU for a
        // whole time slice, wake-ups do not preempt it at once.
        // SAFETY: plain system call.
        unsafe { libc::sched_yield() };
    }
    waiting.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_spin_stays_within_its_cpu_share() {
        let cfg = ReplySpin::micros(200);
        let mut b = SpinBudget {
            left: SPIN_BURST_NS,
            at: 0,
            burst: SPIN_BURST_NS,
        };
        // A spin never lasts longer than asked.
        assert_eq!(b.grant(&cfg, 0), 200_000);
        // A flood of PACKET_INs, each followed by a full spin: once the
        // saved-up burst is spent, spinning is limited to 10% of the time.
        let (mut now, mut spun) = (0u64, 0u64);
        while now < 2_000_000_000 {
            let g = b.grant(&cfg, now);
            b.left -= g;
            spun += g;
            now += g + 10_000;
        }
        let share = (spun - SPIN_BURST_NS) as f64 / now as f64;
        assert!((0.09..=0.11).contains(&share), "{share}");
        // Too little left right after; the budget refills while idle.
        assert_eq!(b.grant(&cfg, now), 0);
        assert_eq!(b.grant(&cfg, now + 2_000_000), 200_000);
        // Off.
        assert_eq!(b.grant(&ReplySpin::micros(0), now + 4_000_000), 0);
    }
}
