//! Sampled drops: the headers of a dropped packet go to the agent through
//! the [`DL_DROP_SAMPLES`] ring buffer when the CPU's token bucket
//! ([`DL_SAMPLE_BUCKETS`], rate in [`DL_SAMPLE_CONFIG`]) has a token, so a
//! flood of drops sends the agent a bounded number of samples (and costs
//! the datapath a bucket check per drop). Counting is not sampled: see
//! [`crate::counters::count_drop`].

use core::mem::{offset_of, size_of};

use aya_ebpf::helpers::generated::bpf_ktime_get_ns;
use daolinet_common::{DropReason, DropSample, PortInfo, DROP_SAMPLE_CAP};

use crate::context::Packet;
use crate::maps::{DL_DROP_SAMPLES, DL_SAMPLE_BUCKETS, DL_SAMPLE_CONFIG};

/// Maybe send a sample of this dropped packet (`len` bytes on the wire).
#[inline(always)]
pub fn sample<P: Packet>(ctx: &P, port: &PortInfo, reason: DropReason, len: u32) {
    let Some(cfg) = DL_SAMPLE_CONFIG.get(0) else {
        return;
    };
    if cfg.rate == 0 {
        return;
    }
    let Some(bucket) = DL_SAMPLE_BUCKETS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: per-CPU map value, exclusive during this run.
    if !unsafe { (*bucket).take(cfg, now) } {
        return;
    }
    let mut cap = len;
    if cap > DROP_SAMPLE_CAP as u32 {
        cap = DROP_SAMPLE_CAP as u32;
    }
    if cap == 0 {
        return;
    }
    let Some(mut rec) = DL_DROP_SAMPLES.reserve_bytes(size_of::<DropSample>(), 0) else {
        return;
    };
    let base = rec.as_mut_ptr();
    let hdr = base.cast::<DropSample>();
    // SAFETY: the reservation is size_of::<DropSample>() bytes, 8-aligned;
    // the fields before `data` are written here, `data` below.
    unsafe {
        (*hdr).timestamp_ns = now;
        (*hdr).ifindex = ctx.ifindex();
        (*hdr).in_port = port.ofport;
        (*hdr).reason = reason as u32;
        (*hdr).pkt_len = len;
        (*hdr).cap_len = cap;
        (*hdr)._pad = 0;
    }
    // As in `punt`: re-read and bound the length right before the helper.
    // SAFETY: inside the reservation.
    let n = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*hdr).cap_len)) };
    if n == 0 || n > DROP_SAMPLE_CAP as u32 {
        rec.discard(0);
        return;
    }
    // SAFETY: `data` has DROP_SAMPLE_CAP bytes and `n` is within it.
    let data = unsafe { base.add(offset_of!(DropSample, data)) };
    if ctx.copy_to(data, n).is_err() {
        rec.discard(0);
        return;
    }
    rec.submit(0);
}
