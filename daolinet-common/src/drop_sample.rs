//! Sampled drop events: the datapath hands the agent the headers of some
//! dropped packets through [`crate::maps::DROP_SAMPLES`], at most as many
//! per second (per CPU) as [`SampleConfig`] allows, so that a flood of
//! drops costs the agent a bounded amount of work. Every drop is still
//! counted, by reason ([`crate::maps::DROPS`]) and by port and reason
//! ([`crate::maps::PORT_DROPS`]); the samples only say what was dropped.

/// Bytes of the dropped packet a sample carries (its headers).
pub const DROP_SAMPLE_CAP: usize = 128;

/// Size in bytes of the drop sample ring buffer.
pub const DROP_SAMPLE_RING_BYTES: u32 = 1 << 18;

/// Stride of [`crate::maps::PORT_DROPS`]: the counter of reason `r` on the
/// port in slot `s` is at index `s * DROP_SLOTS + r` (room for reasons to
/// come; [`crate::DropReason::COUNT`] must stay below it).
pub const DROP_SLOTS: u32 = 16;

// Every reason has its slot.
const _: () = assert!(crate::DropReason::COUNT <= DROP_SLOTS);

/// Default samples per second per CPU.
pub const DEFAULT_SAMPLE_RATE: u32 = 20;
/// Default burst of samples per CPU.
pub const DEFAULT_SAMPLE_BURST: u32 = 20;
/// Most samples per second per CPU the agent sets: far more than the ring
/// and its reader carry, and small enough that [`SampleBucket::take`]'s
/// refill (rate times at most 10 s) cannot overflow a u64.
pub const MAX_SAMPLE_RATE: u32 = 1_000_000;

/// One sampled drop.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DropSample {
    /// `bpf_ktime_get_ns()` when dropped.
    pub timestamp_ns: u64,
    /// Ingress interface index.
    pub ifindex: u32,
    /// Ingress OpenFlow port.
    pub in_port: u32,
    /// A [`crate::DropReason`] as u32.
    pub reason: u32,
    /// Length of the packet on the wire.
    pub pkt_len: u32,
    /// Bytes of it in `data`.
    pub cap_len: u32,
    /// Reserved, zero.
    pub _pad: u32,
    /// The first `cap_len` bytes of the packet.
    pub data: [u8; DROP_SAMPLE_CAP],
}

/// The sampling rate, index 0 of [`crate::maps::SAMPLE_CONFIG`] (written
/// by the agent). All zero: no samples.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SampleConfig {
    /// Samples per second, per CPU.
    pub rate: u32,
    /// Samples a CPU may send at once after a quiet period.
    pub burst: u32,
}

/// A CPU's token bucket ([`crate::maps::SAMPLE_BUCKETS`], per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SampleBucket {
    /// Tokens, in billionths of a sample.
    pub tokens: u64,
    /// `bpf_ktime_get_ns()` of the last refill.
    pub at_ns: u64,
}

/// A billion: one sample in [`SampleBucket::tokens`].
pub const TOKEN: u64 = 1_000_000_000;

impl SampleBucket {
    /// Refill for the time since the last call and take one token if there
    /// is one: true when a sample may be sent now. The same arithmetic runs
    /// in the datapath (no division, no overflow: the elapsed time is
    /// capped at 10 s, `rate` is at most [`MAX_SAMPLE_RATE`] and `burst` a
    /// u32).
    #[inline(always)]
    pub fn take(&mut self, cfg: &SampleConfig, now_ns: u64) -> bool {
        let mut elapsed = now_ns.wrapping_sub(self.at_ns);
        if elapsed > 10 * TOKEN {
            elapsed = 10 * TOKEN;
        }
        self.at_ns = now_ns;
        let cap = cfg.burst as u64 * TOKEN;
        let mut t = self.tokens + elapsed * cfg.rate as u64;
        if t > cap {
            t = cap;
        }
        if t >= TOKEN {
            self.tokens = t - TOKEN;
            true
        } else {
            self.tokens = t;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_the_burst_then_the_rate() {
        let cfg = SampleConfig { rate: 10, burst: 5 };
        let mut b = SampleBucket::default();
        // A long quiet period first: the burst is available.
        let t0 = 100 * TOKEN;
        let first: usize = (0..100).filter(|_| b.take(&cfg, t0)).count();
        assert_eq!(first, 5);
        // Then 10 per second: 100 attempts per second for 3 seconds.
        let mut n = 0;
        for i in 1..=300u64 {
            if b.take(&cfg, t0 + i * TOKEN / 100) {
                n += 1;
            }
        }
        assert_eq!(n, 30);
        // Off.
        let off = SampleConfig::default();
        let mut b = SampleBucket::default();
        assert!(!b.take(&off, 50 * TOKEN));
    }

    /// The largest rate and burst the agent sets, after a long quiet
    /// period and again: the refill stays within a u64 (a rate of
    /// u32::MAX did not: 10 s of it is 4.3e19 billionths).
    #[test]
    fn the_largest_configuration_does_not_overflow() {
        let cfg = SampleConfig {
            rate: MAX_SAMPLE_RATE,
            burst: u32::MAX,
        };
        let mut b = SampleBucket::default();
        assert!(b.take(&cfg, 1000 * TOKEN));
        assert!(b.take(&cfg, 2000 * TOKEN));
        assert!(u64::from(MAX_SAMPLE_RATE)
            .checked_mul(10 * TOKEN)
            .and_then(|add| add.checked_add(u64::from(u32::MAX) * TOKEN))
            .is_some());
    }

    #[test]
    fn a_sample_is_its_header_and_its_bytes() {
        assert_eq!(size_of::<DropSample>(), 32 + DROP_SAMPLE_CAP);
    }
}
