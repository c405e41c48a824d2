//! OpenFlow 1.3 meters, sans-IO: METER_MOD (add, modify, delete), the
//! datapath's [`MeterEntry`] of each meter, meter config, stats and
//! features.
//!
//! A meter has one band: drop, or DSCP remark (raise the drop precedence
//! of an AF DSCP by `prec_level`). The datapath meters with a token bucket
//! ([`MeterEntry`]): the band's rate in kilobits (1000 bits) or packets per
//! second, the bucket as large as the band's burst size with OFPMF_BURST,
//! else one second of the rate (as Open vSwitch), never smaller than one
//! 64 KiB packet (a GSO packet on a veth) or one packet.

use std::collections::BTreeMap;

use daolinet_common::{MeterEntry, BAND_DROP, BAND_DSCP_REMARK, MAX_METERS, METER_PKTPS};
use daolinet_openflow::{self as of, ErrorCode};

use crate::table::MapOp;

const NS: u64 = 1_000_000_000;

fn fail(c: u16) -> ErrorCode {
    ErrorCode::new(of::OFPET_METER_MOD_FAILED, c)
}

/// A meter as the switch keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meter {
    /// The meter as the controller wrote it (METER_CONFIG reports it).
    pub config: of::MeterConfig,
    /// Slot of its counters.
    pub slot: u32,
    /// When it was added (monotonic ns).
    pub added_ns: u64,
}

/// Flags a METER_MOD may carry.
const KNOWN_FLAGS: u16 = of::OFPMF_KBPS | of::OFPMF_PKTPS | of::OFPMF_BURST | of::OFPMF_STATS;

/// The datapath entry of a meter (its counters at `slot`).
pub fn entry_of(flags: u16, band: &of::MeterBand, slot: u32) -> Result<MeterEntry, ErrorCode> {
    let (band_type, rate, burst, prec) = match band {
        of::MeterBand::Drop { rate, burst_size } => (BAND_DROP, *rate, *burst_size, 0),
        of::MeterBand::DscpRemark {
            rate,
            burst_size,
            prec_level,
        } => (BAND_DSCP_REMARK, *rate, *burst_size, u32::from(*prec_level)),
        _ => return Err(fail(of::OFPMMFC_BAD_BAND)),
    };
    if rate == 0 {
        return Err(fail(of::OFPMMFC_BAD_RATE));
    }
    let pktps = flags & of::OFPMF_PKTPS != 0;
    // The burst (kilobits or packets): the band's with OFPMF_BURST (OpenFlow
    // 1.3 uses it only then), else one second of the rate.
    let burst = if flags & of::OFPMF_BURST != 0 && burst != 0 {
        burst
    } else {
        rate
    };
    // Tokens: bits, or thousandths of a packet.
    let floor = if pktps { 1000 } else { MIN_BUCKET_BITS };
    let capacity = (u64::from(burst) * 1000).max(floor);
    let unit = if pktps { METER_PKTPS } else { 0 };
    Ok(MeterEntry {
        band_type,
        prec_level: prec,
        stats_slot: slot,
        ..MeterEntry::new(unit, u64::from(rate), capacity)
    })
}

/// The smallest bucket of a kb/s meter, in bits: one 64 KiB packet (GSO
/// packets on a veth reach that), which a smaller bucket would never pass.
const MIN_BUCKET_BITS: u64 = 65_536 * 8;

/// The meters of the switch.
#[derive(Debug, Default)]
pub struct MeterTable {
    meters: BTreeMap<u32, Meter>,
    free_slots: Vec<u32>,
    next_slot: u32,
}

impl MeterTable {
    /// No meters.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when meter `id` exists.
    pub fn contains(&self, id: u32) -> bool {
        self.meters.contains_key(&id)
    }

    /// Meter `id`.
    pub fn get(&self, id: u32) -> Option<&Meter> {
        self.meters.get(&id)
    }

    /// Apply a METER_MOD; returns the map operations and the ids of the
    /// meters deleted (their flows must go too). On error nothing changed.
    pub fn meter_mod(
        &mut self,
        mm: &of::MeterMod,
        now_ns: u64,
    ) -> Result<(Vec<MapOp>, Vec<u32>), ErrorCode> {
        match mm.command {
            of::OFPMC_ADD | of::OFPMC_MODIFY => {
                // Virtual meters (slow path, controller) are not supported.
                if mm.meter_id == 0 || mm.meter_id > of::OFPM_MAX {
                    return Err(fail(of::OFPMMFC_INVALID_METER));
                }
                let exists = self.meters.contains_key(&mm.meter_id);
                if mm.command == of::OFPMC_ADD && exists {
                    return Err(fail(of::OFPMMFC_METER_EXISTS));
                }
                if mm.command == of::OFPMC_MODIFY && !exists {
                    return Err(fail(of::OFPMMFC_UNKNOWN_METER));
                }
                if mm.flags & !KNOWN_FLAGS != 0
                    || mm.flags & (of::OFPMF_KBPS | of::OFPMF_PKTPS)
                        == of::OFPMF_KBPS | of::OFPMF_PKTPS
                {
                    return Err(fail(of::OFPMMFC_BAD_FLAGS));
                }
                let band = match mm.bands.as_slice() {
                    [b] => b,
                    [] => return Err(fail(of::OFPMMFC_INVALID_METER)),
                    _ => return Err(fail(of::OFPMMFC_OUT_OF_BANDS)),
                };
                let mut ops = Vec::new();
                let (slot, added_ns) = match self.meters.get(&mm.meter_id) {
                    Some(m) => (m.slot, m.added_ns),
                    None => {
                        let slot = match self.free_slots.pop() {
                            Some(s) => s,
                            None if self.next_slot < MAX_METERS => {
                                self.next_slot += 1;
                                self.next_slot - 1
                            }
                            None => return Err(fail(of::OFPMMFC_OUT_OF_METERS)),
                        };
                        ops.push(MapOp::ResetMeterStats(slot));
                        (slot, now_ns)
                    }
                };
                let entry = entry_of(mm.flags, band, slot)?;
                ops.push(MapOp::PutMeter(mm.meter_id, entry));
                self.meters.insert(
                    mm.meter_id,
                    Meter {
                        config: of::MeterConfig {
                            flags: mm.flags,
                            meter_id: mm.meter_id,
                            bands: mm.bands.clone(),
                        },
                        slot,
                        added_ns,
                    },
                );
                Ok((ops, Vec::new()))
            }
            of::OFPMC_DELETE => {
                let ids: Vec<u32> = if mm.meter_id == of::OFPM_ALL {
                    self.meters.keys().copied().collect()
                } else if self.meters.contains_key(&mm.meter_id) {
                    vec![mm.meter_id]
                } else {
                    Vec::new()
                };
                let mut ops = Vec::new();
                for id in &ids {
                    if let Some(m) = self.meters.remove(id) {
                        self.free_slots.push(m.slot);
                        ops.push(MapOp::DelMeter(*id));
                    }
                }
                Ok((ops, ids))
            }
            _ => Err(fail(of::OFPMMFC_BAD_COMMAND)),
        }
    }

    /// OFPMP_METER_CONFIG for `id` (OFPM_ALL: every meter).
    pub fn config(&self, id: u32) -> Vec<of::MeterConfig> {
        self.meters
            .iter()
            .filter(|(m, _)| id == of::OFPM_ALL || **m == id)
            .map(|(_, m)| m.config.clone())
            .collect()
    }

    /// OFPMP_METER for `id` (OFPM_ALL: every meter); `flows` counts the
    /// flows going through a meter.
    pub fn stats(
        &self,
        id: u32,
        now_ns: u64,
        counters: &mut dyn FnMut(u32) -> daolinet_common::MeterStats,
        flows: &dyn Fn(u32) -> u32,
    ) -> Vec<of::MeterStats> {
        self.meters
            .iter()
            .filter(|(m, _)| id == of::OFPM_ALL || **m == id)
            .map(|(mid, m)| {
                let s = counters(m.slot);
                let age = now_ns.saturating_sub(m.added_ns);
                of::MeterStats {
                    meter_id: *mid,
                    flow_count: flows(*mid),
                    packet_in_count: s.packets,
                    byte_in_count: s.bytes,
                    duration_sec: (age / NS) as u32,
                    duration_nsec: (age % NS) as u32,
                    band_stats: vec![of::Counters {
                        packet_count: s.band_packets,
                        byte_count: s.band_bytes,
                    }],
                }
            })
            .collect()
    }

    /// OFPMP_METER_FEATURES.
    pub fn features() -> of::MeterFeatures {
        of::MeterFeatures {
            max_meter: MAX_METERS,
            // Drop and DSCP remark.
            band_types: (1 << of::OFPMBT_DROP) | (1 << of::OFPMBT_DSCP_REMARK),
            capabilities: u32::from(
                of::OFPMF_KBPS | of::OFPMF_PKTPS | of::OFPMF_BURST | of::OFPMF_STATS,
            ),
            max_bands: 1,
            max_color: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mm(command: u16, flags: u16, id: u32, bands: Vec<of::MeterBand>) -> of::MeterMod {
        of::MeterMod {
            command,
            flags,
            meter_id: id,
            bands,
        }
    }

    fn drop_band(rate: u32) -> of::MeterBand {
        of::MeterBand::Drop {
            rate,
            burst_size: 0,
        }
    }

    #[test]
    fn buckets_follow_the_rate_unit_and_burst() {
        // 100 packets/s, one second of burst: 100 packets in thousandths.
        let e = entry_of(of::OFPMF_PKTPS, &drop_band(100), 3).unwrap();
        assert_eq!(
            (e.rate, e.capacity, e.tokens, e.flags, e.band_type),
            (100, 100_000, 100_000, METER_PKTPS, BAND_DROP)
        );
        // 1000 kb/s: one second is 1 000 000 bits (kilobits of 1000 bits,
        // as OpenFlow and Open vSwitch).
        let e = entry_of(of::OFPMF_KBPS, &drop_band(1000), 3).unwrap();
        assert_eq!(
            (e.rate, e.capacity, e.flags, e.stats_slot),
            (1000, 1_000_000, 0, 3)
        );
        assert_eq!(e.fill_ns, NS);
        // The band's burst counts only with OFPMF_BURST.
        let b = of::MeterBand::Drop {
            rate: 1000,
            burst_size: 2000,
        };
        assert_eq!(entry_of(of::OFPMF_KBPS, &b, 0).unwrap().capacity, 1_000_000);
        let e = entry_of(of::OFPMF_KBPS | of::OFPMF_BURST, &b, 0).unwrap();
        assert_eq!((e.capacity, e.fill_ns), (2_000_000, 2 * NS));
        // Never smaller than one 64 KiB packet, or one packet.
        assert_eq!(
            entry_of(of::OFPMF_KBPS, &drop_band(10), 0)
                .unwrap()
                .capacity,
            MIN_BUCKET_BITS
        );
        let r = of::MeterBand::DscpRemark {
            rate: 10,
            burst_size: 0,
            prec_level: 1,
        };
        let e = entry_of(of::OFPMF_PKTPS, &r, 0).unwrap();
        assert_eq!(
            (e.band_type, e.prec_level, e.capacity),
            (BAND_DSCP_REMARK, 1, 10_000)
        );
        assert!(entry_of(of::OFPMF_PKTPS, &drop_band(0), 0).is_err());
    }

    #[test]
    fn meter_mod_follows_openflow() {
        let mut t = MeterTable::new();
        let add = mm(
            of::OFPMC_ADD,
            of::OFPMF_KBPS | of::OFPMF_STATS,
            1,
            vec![drop_band(500)],
        );
        let (ops, _) = t.meter_mod(&add, 0).unwrap();
        assert!(ops.contains(&MapOp::ResetMeterStats(0)));
        let code = |e: ErrorCode| e.code;
        assert_eq!(
            code(t.meter_mod(&add, 0).unwrap_err()),
            of::OFPMMFC_METER_EXISTS
        );
        let two = mm(of::OFPMC_ADD, 0, 2, vec![drop_band(1), drop_band(2)]);
        assert_eq!(
            code(t.meter_mod(&two, 0).unwrap_err()),
            of::OFPMMFC_OUT_OF_BANDS
        );
        let both = mm(
            of::OFPMC_ADD,
            of::OFPMF_KBPS | of::OFPMF_PKTPS,
            2,
            vec![drop_band(1)],
        );
        assert_eq!(
            code(t.meter_mod(&both, 0).unwrap_err()),
            of::OFPMMFC_BAD_FLAGS
        );
        let unknown = mm(of::OFPMC_MODIFY, 0, 9, vec![drop_band(1)]);
        assert_eq!(
            code(t.meter_mod(&unknown, 0).unwrap_err()),
            of::OFPMMFC_UNKNOWN_METER
        );
        // What was written is what config reports.
        assert_eq!(t.config(of::OFPM_ALL)[0].bands, vec![drop_band(500)]);
        let modify = mm(of::OFPMC_MODIFY, of::OFPMF_PKTPS, 1, vec![drop_band(7)]);
        let (ops, _) = t.meter_mod(&modify, 0).unwrap();
        assert!(!ops.iter().any(|o| matches!(o, MapOp::ResetMeterStats(_))));
        assert_eq!(t.config(1)[0].flags, of::OFPMF_PKTPS);
        let (ops, gone) = t
            .meter_mod(&mm(of::OFPMC_DELETE, 0, of::OFPM_ALL, vec![]), 0)
            .unwrap();
        assert_eq!((ops, gone), (vec![MapOp::DelMeter(1)], vec![1]));
        assert!(t.config(of::OFPM_ALL).is_empty());
    }
}
