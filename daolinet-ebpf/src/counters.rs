//! Counters: drops and ports in per-CPU maps (plain read-modify-write is
//! race free there; userspace sums the CPUs), rules in their own entry
//! (atomic adds: the entry is shared by the CPUs).

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use daolinet_common::{DropReason, FlowEntry, DROP_SLOTS};

use crate::maps::{DL_DROPS, DL_PORT_DROPS, DL_PORT_STATS};

/// Count one `reason` in [`DL_DROPS`] (without touching port counters).
#[inline(always)]
pub fn count_reason(reason: DropReason) {
    if let Some(c) = DL_DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU map value, valid and exclusive during this run.
        unsafe { *c += 1 };
    }
}

/// Account a dropped packet: the reason, the ingress port's `rx_dropped`
/// and its count of this reason.
#[inline(always)]
pub fn count_drop(reason: DropReason, in_slot: u32) {
    count_reason(reason);
    if let Some(s) = DL_PORT_STATS.get_ptr_mut(in_slot) {
        // SAFETY: as above.
        unsafe { (*s).rx_dropped += 1 };
    }
    if let Some(c) = DL_PORT_DROPS.get_ptr_mut(in_slot * DROP_SLOTS + reason as u32) {
        // SAFETY: as above.
        unsafe { *c += 1 };
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

/// Account a hit of the rule whose entry is `e` (packets, bytes, last
/// use). The adds are atomic (`lock xadd`, whose result is not used):
/// uncontended they cost no more than plain adds (BPF_PROG_TEST_RUN).
///
/// The last-use time is CLOCK_MONOTONIC_COARSE (one timer tick of
/// resolution, at most a few ms behind CLOCK_MONOTONIC): idle timeouts count
/// in seconds, and the coarse clock costs a memory read instead of a
/// clock-source read per packet.
#[inline(always)]
pub fn count_rule(e: *mut FlowEntry, len: u32) {
    // SAFETY: `e` is a value of the rules map, valid (RCU) during this run;
    // the counters are aligned u64s; the helper has no preconditions.
    unsafe {
        atomic_add(&raw mut (*e).packets, 1);
        atomic_add(&raw mut (*e).bytes, len as u64);
        (*e).last_used_ns = bpf_ktime_get_coarse_ns();
    }
}

/// `*p += v`, atomically, result unused (BPF `lock xadd`).
///
/// # Safety
/// `p` must be valid and 8-byte aligned.
#[inline(always)]
unsafe fn atomic_add(p: *mut u64, v: u64) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: as the caller promises.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, v,
        );
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: as the caller promises.
    unsafe {
        core::sync::atomic::AtomicU64::from_ptr(p)
            .fetch_add(v, core::sync::atomic::Ordering::Relaxed);
    }
}
