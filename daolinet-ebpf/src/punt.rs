//! Punting packets to userspace through the [`DL_PUNTS`] ring buffer.

use core::mem::{offset_of, size_of};

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::bpf_ktime_get_ns,
};
use daolinet_common::{DropReason, PortInfo, PuntHeader, PuntReason, PuntRecord, PUNT_CAP};

use crate::{
    context::Packet,
    maps::{DL_CONFIG, DL_PUNTS},
};

/// The ring space one record takes: its 8-byte header and the record,
/// rounded up to 8 bytes (`BPF_RINGBUF_HDR_SZ`, kernel/bpf/ringbuf.c).
const RECORD_SPAN: u64 = ((size_of::<PuntRecord>() + 8 + 7) & !7) as u64;

/// Send a copy of the packet (at most [`PUNT_CAP`] bytes) with its metadata
/// to userspace. The caller decides what happens to the original. A VLAN
/// tag the kernel keeps out of the bytes travels in the header (userspace
/// puts it back into the frame).
///
/// Errors: [`DropReason::PuntRingFull`] when no record could be reserved,
/// [`DropReason::Malformed`] when the packet bytes could not be read.
#[inline(always)]
pub fn punt<P: Packet>(
    ctx: &P,
    port: &PortInfo,
    reason: PuntReason,
    rule_id: u32,
    table: u32,
    metadata: u64,
) -> Result<(), DropReason> {
    let pkt_len = ctx.len();
    // Bounded for the verifier: 1..=PUNT_CAP bytes are copied.
    let mut cap = pkt_len;
    if cap > PUNT_CAP as u32 {
        cap = PUNT_CAP as u32;
    }
    if cap == 0 {
        return Err(DropReason::Malformed);
    }
    let Some(mut rec) = DL_PUNTS.reserve_bytes(size_of::<PuntRecord>(), 0) else {
        return Err(DropReason::PuntRingFull);
    };
    let base = rec.as_mut_ptr();
    let (vlan_proto, vlan_tci) = ctx.offloaded_vlan().unwrap_or((0, 0));
    let header = PuntHeader {
        ifindex: ctx.ifindex(),
        in_port: port.ofport,
        reason: reason as u32,
        rule_id,
        pkt_len,
        cap_len: cap,
        // SAFETY: no preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        vlan_proto,
        vlan_tci,
        table_id: table as u8,
        _pad: [0; 3],
        metadata,
    };
    let hdr = base.cast::<PuntHeader>();
    // SAFETY: the reservation is size_of::<PuntRecord>() bytes, 8-aligned;
    // the header sits at its start and the data after it has PUNT_CAP bytes.
    unsafe { hdr.write(header) };
    // Re-read the length with a volatile load and bound it right before the
    // helper call: otherwise LLVM may hand the helper an earlier copy of
    // `cap` whose bounds the verifier no longer links to the checks above.
    // SAFETY: inside the reservation.
    let len = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*hdr).cap_len)) };
    if len == 0 || len > PUNT_CAP as u32 {
        rec.discard(0);
        return Err(DropReason::Malformed);
    }
    // SAFETY: as above; `len` is in 1..=PUNT_CAP.
    let data = unsafe { base.add(offset_of!(PuntRecord, data)) };
    if ctx.copy_to(data, len).is_err() {
        rec.discard(0);
        return Err(DropReason::Malformed);
    }
    submit_and_wake(ctx, rec);
    Ok(())
}

/// Commit a punt record and make sure the reader hears of it.
///
/// The ring wakes its reader on commit when the reader had read everything
/// before the record; that wake-up goes through an interrupt (irq_work),
/// about 10 µs more than a socket's on a virtual machine
/// (`examples/punt_wakeup` in the agent). With a punt bell configured
/// ([`daolinet_common::DatapathConfig::punt_bell`]), a record that finds
/// the reader caught up (nothing but itself in the ring: the reader cannot
/// pass a record still being written, so it stays caught up until the
/// commit) is committed without that wake-up and a copy of the packet goes
/// to the bell, whose socket wake-up the reader waits for too. Otherwise
/// (the reader is behind, and will read on; or the program type cannot
/// clone) the ring decides as before. If the bell cannot be rung, an empty
/// discarded record forces the ring's wake-up.
#[inline(always)]
fn submit_and_wake<P: Packet>(ctx: &P, rec: aya_ebpf::maps::ring_buf::RingBufBytes<'_>) {
    let bell = if P::BELL {
        DL_CONFIG.get(0).map_or(0, |c| c.punt_bell)
    } else {
        0
    };
    if bell == 0 || DL_PUNTS.query(BPF_RB_AVAIL_DATA as u64) != RECORD_SPAN {
        rec.submit(0);
        return;
    }
    rec.submit(BPF_RB_NO_WAKEUP as u64);
    if !ctx.ring_bell(bell) {
        if let Some(r) = DL_PUNTS.reserve_bytes(8, 0) {
            r.discard(BPF_RB_FORCE_WAKEUP as u64);
        }
    }
}
