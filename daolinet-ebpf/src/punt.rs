//! Punting packets to userspace through the [`DL_PUNTS`] ring buffer.

use core::mem::{offset_of, size_of};

use aya_ebpf::helpers::generated::bpf_ktime_get_ns;
use daolinet_common::{DropReason, PortInfo, PuntHeader, PuntReason, PuntRecord, PUNT_CAP};

use crate::{context::Packet, maps::DL_PUNTS};

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
    rec.submit(0);
    Ok(())
}
