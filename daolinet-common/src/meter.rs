//! OpenFlow 1.3 meters in the datapath: a token bucket per meter, the
//! arithmetic shared by the BPF program (which runs it per packet) and the
//! agent (which fills a meter's entry), tested here without a kernel.

/// [`MeterEntry::band_type`]: drop what exceeds the rate.
pub const BAND_DROP: u32 = 1;
/// [`MeterEntry::band_type`]: raise the DSCP drop precedence of what
/// exceeds the rate.
pub const BAND_DSCP_REMARK: u32 = 2;
/// [`MeterEntry::flags`]: rates in packets per second (else kilobits), as
/// OpenFlow's OFPMF_PKTPS.
pub const METER_PKTPS: u32 = 1 << 1;

/// A meter with one band ([`crate::maps::METERS`]): a token bucket, as OpenFlow
/// 1.3 and Open vSwitch meter. Tokens are bits (kb/s meters, kilobits of
/// 1000 bits) or thousandths of a packet (packet/s meters), so that the
/// rate in either unit adds `rate * ns / 1_000_000` tokens; a packet
/// costs its bits, or 1000. The bucket holds the band's burst (its
/// `burst_size` with OFPMF_BURST, else one second of the rate, as Open
/// vSwitch), and starts full.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MeterEntry {
    /// OpenFlow meter flags (`OFPMF_*`); [`METER_PKTPS`] selects packets.
    pub flags: u32,
    /// [`BAND_DROP`] or [`BAND_DSCP_REMARK`].
    pub band_type: u32,
    /// The band's rate: kb/s, or packets/s with [`METER_PKTPS`].
    pub rate: u64,
    /// DSCP remark: drop precedence levels to add.
    pub prec_level: u32,
    /// Slot of the meter's counters in [`crate::maps::METER_STATS`].
    pub stats_slot: u32,
    /// Size of the bucket, in tokens.
    pub capacity: u64,
    /// Time an empty bucket takes to fill (ns): `capacity * 1_000_000 /
    /// rate`, kept so the datapath divides once per packet.
    pub fill_ns: u64,
    /// Datapath state: time up to which the tokens are counted (ns,
    /// monotonic).
    pub last_ns: u64,
    /// Datapath state: tokens in the bucket.
    pub tokens: u64,
}

/// Tokens a packet of `len` bytes costs a meter with `flags`.
#[inline(always)]
pub fn meter_cost(flags: u32, len: u64) -> u64 {
    if flags & METER_PKTPS != 0 {
        1000
    } else {
        len * 8
    }
}

impl MeterEntry {
    /// A full bucket for `rate` (kb/s or packets/s by `flags`) and
    /// `capacity` tokens.
    pub fn new(flags: u32, rate: u64, capacity: u64) -> Self {
        MeterEntry {
            flags,
            rate,
            capacity,
            fill_ns: (capacity.saturating_mul(1_000_000))
                .checked_div(rate)
                .unwrap_or(0),
            tokens: capacity,
            ..Default::default()
        }
    }

    /// Refill the bucket up to `now_ns`, then take `cost` tokens: true when
    /// the packet is within the rate, false (nothing taken) when it
    /// exceeds it and meets the band. A `now_ns` before the bucket's time
    /// (another CPU counted further meanwhile) adds nothing.
    #[inline(always)]
    pub fn take(&mut self, now_ns: u64, cost: u64) -> bool {
        let elapsed = now_ns.wrapping_sub(self.last_ns);
        if elapsed as i64 > 0 {
            if elapsed >= self.fill_ns {
                self.tokens = self.capacity;
                self.last_ns = now_ns;
            } else {
                // elapsed < fill_ns: the product stays below capacity *
                // 1e6 and cannot overflow.
                let add = elapsed.wrapping_mul(self.rate) / 1_000_000;
                if add > 0 {
                    // Count only the time those tokens took: the rest of
                    // it adds to the next refill.
                    let took = add
                        .wrapping_mul(1_000_000)
                        .checked_div(self.rate)
                        .unwrap_or(elapsed);
                    self.last_ns = self.last_ns.wrapping_add(took);
                    let t = self.tokens.saturating_add(add);
                    self.tokens = if t > self.capacity { self.capacity } else { t };
                }
            }
        }
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// The DSCP a DSCP-remark band gives `dscp`: its drop precedence (bits
/// 1-2, the AF classes' 1 to 3) raised by `prec_level`, at most 3; the
/// class bits and bit 0 stay.
#[inline(always)]
pub fn remark_dscp(dscp: u8, prec_level: u32) -> u8 {
    let dp = ((dscp >> 1) & 3) as u32 + prec_level;
    let dp = if dp > 3 { 3 } else { dp } as u8;
    (dscp & 0x39) | (dp << 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;

    /// Offer `n` packets of `len` bytes, `gap_ns` apart from `start_ns`
    /// (every `burst`-th gap `pause_ns` longer); returns the packets that
    /// conform.
    fn offer(m: &mut MeterEntry, len: u64, n: u64, gap_ns: u64, pause: (u64, u64)) -> u64 {
        let (every, pause_ns) = pause;
        let mut now = 10 * S;
        let mut passed = 0;
        for i in 0..n {
            if m.take(now, meter_cost(m.flags, len)) {
                passed += 1;
            }
            now += gap_ns;
            if every != 0 && i % every == every - 1 {
                now += pause_ns;
            }
        }
        passed
    }

    /// The kb/s meter of os-ken's meter cases: 1000 kb/s (kilobits of
    /// 1000 bits), 1500-byte frames at 175 packets/s for 30 s. What passes
    /// is the rate for 30 s plus the one second of burst the bucket starts
    /// with: the old fixed 100 ms window let 10-14 % less through.
    #[test]
    fn kbps_meter_passes_its_rate_plus_the_burst() {
        let mut m = MeterEntry::new(0, 1000, 1000 * 1000);
        let passed = offer(&mut m, 1500, 175 * 30, S / 175, (0, 0));
        let want = (125_000 * 31) / 1500; // bytes/s * (30 s + 1 s burst)
        assert!(passed.abs_diff(want) <= 2, "{passed} of {want}");
    }

    /// The same with the sender bursty (10 packets back to back, then a
    /// pause): the tokens saved during pauses are spent, so the rate holds.
    #[test]
    fn bursty_arrivals_still_get_the_rate() {
        let mut m = MeterEntry::new(0, 10_000, 10_000 * 1000);
        // 1750 packets/s on average: 10 at 10 us, then 5.6 ms idle.
        let n = 1750 * 30;
        let pause = S / 175 - 10 * 10_000;
        let passed = offer(&mut m, 1500, n, 10_000, (10, pause));
        let want = (1_250_000 * 31) / 1500;
        assert!(passed.abs_diff(want) <= 10, "{passed} of {want}");
    }

    /// Packets per second: tokens are thousandths of a packet.
    #[test]
    fn pktps_meter_counts_packets_whatever_their_size() {
        let mut m = MeterEntry::new(METER_PKTPS, 100, 100 * 1000);
        let passed = offer(&mut m, 9000, 200 * 30, S / 200, (0, 0));
        assert!(passed.abs_diff(100 * 31) <= 1, "{passed}");
        assert_eq!(meter_cost(METER_PKTPS, 64), 1000);
        assert_eq!(meter_cost(0, 64), 512);
    }

    /// Refills shorter than one token are not lost: the time they cover
    /// counts toward the next one (1 packet/s, a packet every 0.7 ms).
    /// The packet/s cases of os-ken's suite at their highest rate: 20000
    /// packets/s offered to a 10000 packets/s band, evenly or in bursts of
    /// 200 every 10 ms (its sender's way), pass the rate plus the burst.
    #[test]
    fn pktps_meter_holds_ten_thousand_packets_a_second() {
        for (gap, pause) in [(S / 20_000, (0, 0)), (1_000, (200, 10 * MS - 200 * 1_000))] {
            let mut m = MeterEntry::new(METER_PKTPS, 10_000, 10_000 * 1000);
            let passed = offer(&mut m, 1500, 20_000 * 30, gap, pause);
            assert!(passed.abs_diff(10_000 * 31) <= 310, "{passed}");
        }
    }

    #[test]
    fn fractions_of_a_token_carry_over() {
        let mut m = MeterEntry::new(METER_PKTPS, 1, 1000);
        let passed = offer(&mut m, 64, 10 * 1430, 7 * MS / 10, (0, 0));
        // 10 s of 1 packet/s, plus the full bucket at the start.
        assert!((10..=11).contains(&passed), "{passed}");
    }

    /// The bucket holds no more than its capacity after a long idle time,
    /// and a time before the bucket's own (another CPU counted further)
    /// adds nothing.
    #[test]
    fn idle_time_fills_no_more_than_the_capacity() {
        let mut m = MeterEntry::new(METER_PKTPS, 10, 2000);
        assert_eq!(m.fill_ns, 200 * MS);
        assert!(m.take(S, 1000) && m.take(S, 1000) && !m.take(S, 1000));
        // 3600 s idle: two packets again, not 36000.
        let t = 3601 * S;
        assert!(m.take(t, 1000) && m.take(t, 1000) && !m.take(t, 1000));
        // Earlier than the bucket's time: nothing added.
        assert!(!m.take(t - 50 * MS, 1000));
        // 100 ms later: one packet's worth.
        assert!(m.take(t + 100 * MS, 1000) && !m.take(t + 100 * MS, 1000));
    }

    /// os-ken's DSCP-remark cases: AF21 (18) raised by one is AF22 (20);
    /// the precedence stops at 3 (AF23, 22); the class bits stay.
    #[test]
    fn dscp_remark_raises_the_drop_precedence() {
        assert_eq!(remark_dscp(18, 1), 20);
        assert_eq!(remark_dscp(18, 2), 22);
        assert_eq!(remark_dscp(18, 9), 22);
        assert_eq!(remark_dscp(10, 1), 12); // AF11 -> AF12
        assert_eq!(remark_dscp(0, 1), 2);
        assert_eq!(remark_dscp(46, 1), 46); // EF: precedence bits already 3
        for d in 0..64u8 {
            assert_eq!(remark_dscp(d, 0), d);
            assert_eq!(remark_dscp(d, 3) & 0x39, d & 0x39);
            assert!(remark_dscp(d, 3) < 64);
        }
    }

    /// The largest rates and bursts OpenFlow can express do not overflow.
    #[test]
    fn extreme_rates_do_not_overflow() {
        let mut m = MeterEntry::new(0, u64::from(u32::MAX), u64::from(u32::MAX) * 1000);
        assert!(m.fill_ns > 0);
        assert!(m.take(S, meter_cost(0, 65_535)));
        let t = S + m.fill_ns - 1;
        assert!(m.take(t, meter_cost(0, 65_535)));
        assert!(m.tokens <= m.capacity);
        // A rate of zero (refused by the agent) passes nothing beyond the
        // bucket and never divides by zero.
        let mut z = MeterEntry::new(0, 0, 0);
        assert!(!z.take(S, 8));
    }
}
