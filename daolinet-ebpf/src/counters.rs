//! Per-CPU counters: drops, ports and rules.
//!
//! All counter maps are per-CPU, so plain read-modify-write is race free
//! (bpfel has no 64-bit atomic fetch-add); userspace sums the CPUs.

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use daolinet_common::DropReason;

use crate::maps::{DL_DROPS, DL_PORT_STATS, DL_RULE_STATS};

/// Count one `reason` in [`DL_DROPS`] (without touching port counters).
#[inline(always)]
pub fn count_reason(reason: DropReason) {
    if let Some(c) = DL_DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU map value, valid and exclusive during this run.
        unsafe { *c += 1 };
    }
}

/// Account a dropped packet: the reason and the ingress port's `rx_dropped`.
#[inline(always)]
pub fn count_drop(reason: DropReason, in_slot: u32) {
    count_reason(reason);
    if let Some(s) = DL_PORT_STATS.get_ptr_mut(in_slot) {
        // SAFETY: as above.
        unsafe { (*s).rx_dropped += 1 };
    }
}

/// Account a packet received on the port in `slot`.
#[inline(always)]
pub fn count_rx(slot: u32, len: u32) {
    if let Some(s) = DL_PORT_STATS.get_ptr_mut(slot) {
        // SAFETY: as above.
        unsafe {
            (*s).rx_packets += 1;
            (*s).rx_bytes += len as u64;
        }
    }
}

/// Account a packet sent to the port in `slot`.
#[inline(always)]
pub fn count_tx(slot: u32, len: u32) {
    if let Some(s) = DL_PORT_STATS.get_ptr_mut(slot) {
        // SAFETY: as above.
        unsafe {
            (*s).tx_packets += 1;
            (*s).tx_bytes += len as u64;
        }
    }
}

/// Account a hit of rule `rule_id` (packets, bytes, last use).
///
/// The last-use time is CLOCK_MONOTONIC_COARSE (one timer tick of
/// resolution, at most a few ms behind CLOCK_MONOTONIC): idle timeouts count
/// in seconds, and the coarse clock costs a memory read instead of a
/// clock-source read per packet.
#[inline(always)]
pub fn count_rule(rule_id: u32, len: u32) {
    if let Some(s) = DL_RULE_STATS.get_ptr_mut(rule_id) {
        // SAFETY: as above; the helper has no preconditions.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += len as u64;
            (*s).last_used_ns = bpf_ktime_get_coarse_ns();
        }
    }
}
