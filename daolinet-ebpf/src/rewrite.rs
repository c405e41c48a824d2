//! Actions that change the packet at once, not lazily (see
//! [`crate::actions`]): the rarer set-fields (TOS, flow label, VLAN, MPLS,
//! IPv6 and ND addresses, ARP, ICMP type/code, SCTP ports with their
//! CRC32c), TTL copies, and the pushes and pops that change the packet's
//! layout. These commit the pending lazy rewrites first where the layout
//! changes, and parse the packet again afterwards.
//!
//! Checksums are fixed incrementally as in [`crate::actions`]: the one's
//! complement differences add up with the lazy ones. SCTP's CRC32c is
//! linear: changing bytes at offset `o` of an `n`-byte packet changes the
//! CRC by the plain CRC of the difference followed by `n - o - 4` zero
//! bytes, which is a multiplication by `x^(8 (n - o - 4))` modulo the
//! polynomial (as zlib's `crc32_combine`).

use daolinet_common::{Action, ActionKind, DropReason, FlowKey, PuntReason, VLAN_PRESENT};

use crate::{
    actions::{punt_from, ActState},
    context::{csum_diff, Buf, Packet, SHIFT_CHUNK},
    parse::{parse, Parsed, IPV6_HOP_OFF, L3, TAG_BYTES, TAG_META},
};

/// Steps of [`SHIFT_CHUNK`] at most: packets up to about 10 KB.
const SHIFT_STEPS: u32 = 160;

fn rewrite_failed<T>(_: T) -> DropReason {
    DropReason::RewriteFailed
}

fn malformed<T>(_: T) -> DropReason {
    DropReason::Malformed
}

/// Apply `a`, one of the kinds [`crate::actions`] hands over. A packet
/// without the header the action is about is left alone.
#[inline(always)]
pub fn apply<P: Packet>(ctx: &P, st: &mut ActState, a: &Action) -> Result<(), DropReason> {
    let Some(kind) = a.kind() else {
        return Ok(());
    };
    match kind {
        ActionKind::SetIpTos => {
            let d = a.data();
            set_tos(ctx, st, d[0], d[1])
        }
        ActionKind::SetIpv6Label => set_label(ctx, st, a.arg),
        ActionKind::SetVlanVid => set_tci(ctx, st, a.arg as u16 & 0x0fff, 0x0fff),
        ActionKind::SetVlanPcp => set_tci(ctx, st, (a.arg as u16 & 7) << 13, 0xe000),
        ActionKind::PushVlan => push_vlan(ctx, st, a.arg as u16),
        ActionKind::PopVlan => pop_vlan(ctx, st),
        ActionKind::PushMpls => push_mpls(ctx, st, a.arg as u16),
        ActionKind::PopMpls => pop_mpls(ctx, st, a.arg as u16),
        ActionKind::SetMplsLabel => set_lse(ctx, st, a.arg << 12, 0xffff_f000),
        ActionKind::SetMplsTc => set_lse(ctx, st, (a.arg & 7) << 9, 0x0e00),
        ActionKind::SetMplsBos => set_lse(ctx, st, (a.arg & 1) << 8, 0x0100),
        ActionKind::SetMplsTtl => set_lse(ctx, st, a.arg & 0xff, 0xff),
        ActionKind::CopyTtlOut => copy_ttl(ctx, st, true),
        ActionKind::CopyTtlIn => copy_ttl(ctx, st, false),
        ActionKind::SetIpv6Src | ActionKind::SetIpv6Dst | ActionKind::SetNdTarget => {
            set_addr_half(ctx, st, kind, u32::from(a.half), a.data())
        }
        ActionKind::SetArpOp
        | ActionKind::SetArpSha
        | ActionKind::SetArpSpa
        | ActionKind::SetArpTha
        | ActionKind::SetArpTpa => set_arp(ctx, st, kind, a),
        ActionKind::SetNdSll | ActionKind::SetNdTll => set_nd_lla(ctx, st, kind, a.mac()),
        ActionKind::SetIcmpType | ActionKind::SetIcmpCode => {
            set_icmp(ctx, st, kind == ActionKind::SetIcmpType, a.arg as u8)
        }
        ActionKind::SetL4Src | ActionKind::SetL4Dst => {
            set_sctp_port(ctx, st, kind == ActionKind::SetL4Dst, a.arg as u16)
        }
        _ => Ok(()),
    }
}

/// A unit result as the global functions return it: 0, or the reason + 1.
#[inline(always)]
pub fn unit(r: Result<(), DropReason>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(reason) => reason as i32 + 1,
    }
}

/// What [`unit`] made.
#[inline(always)]
pub fn from_unit(v: i32) -> Result<(), DropReason> {
    if v == 0 {
        Ok(())
    } else {
        Err(crate::actions::drop_reason(v - 1))
    }
}

/// Parse the packet again after a push or pop (pending rewrites were
/// committed before it): the checksummed fields start from the bytes. Runs
/// in a global function (one verification for every push and pop).
#[inline(always)]
pub fn reparse<P: Packet>(ctx: &P, st: &mut ActState) -> Result<(), DropReason> {
    let in_port = st.pkt.key.in_port;
    parse(ctx, in_port, &mut st.pkt)?;
    let port = st.port;
    let (table, meta) = (st.table, st.metadata);
    st.reset(&port);
    st.table = table;
    st.metadata = meta;
    st.restructured = 1;
    Ok(())
}

// Out of line: a frame of its own, not added to the caller's.
#[inline(never)]
fn set_tos<P: Packet>(ctx: &P, st: &mut ActState, v: u8, m: u8) -> Result<(), DropReason> {
    let l3 = st.pkt.l3_off;
    match st.pkt.l3 {
        L3::Ipv4 => {
            let h = ctx.load::<2>(l3).map_err(malformed)?.0;
            let tos = (h[1] & !m) | (v & m);
            let from = u16::from_ne_bytes(h);
            let to = u16::from_ne_bytes([h[0], tos]);
            ctx.store(l3, &[h[0], tos]).map_err(rewrite_failed)?;
            ctx.l3_csum_diff(l3 + 10, (!from) as u32 + to as u32)
                .map_err(rewrite_failed)?;
            st.pkt.key.ip_tos = tos;
        }
        L3::Ipv6 => {
            let h = ctx.load::<2>(l3).map_err(malformed)?.0;
            let tc = (h[0] << 4) | (h[1] >> 4);
            let tc = (tc & !m) | (v & m);
            let b = [(h[0] & 0xf0) | (tc >> 4), (tc << 4) | (h[1] & 0x0f)];
            ctx.store(l3, &b).map_err(rewrite_failed)?;
            st.pkt.key.ip_tos = tc;
        }
        _ => {}
    }
    Ok(())
}

// Out of line: a frame of its own, not added to the caller's.
#[inline(never)]
fn set_label<P: Packet>(ctx: &P, st: &mut ActState, label: u32) -> Result<(), DropReason> {
    if st.pkt.l3 != L3::Ipv6 {
        return Ok(());
    }
    let l3 = st.pkt.l3_off;
    let h = ctx.load::<4>(l3).map_err(malformed)?.0;
    let w = (u32::from_be_bytes(h) & 0xfff0_0000) | (label & 0x000f_ffff);
    ctx.store(l3, &w.to_be_bytes()).map_err(rewrite_failed)?;
    st.pkt.key.ipv6_label = label & 0x000f_ffff;
    Ok(())
}

/// Set the bits `m` of the outer tag's TCI to `v`.
// Out of line: a frame of its own, not added to the caller's.
#[inline(never)]
fn set_tci<P: Packet>(ctx: &P, st: &mut ActState, v: u16, m: u16) -> Result<(), DropReason> {
    let tci = match st.pkt.tag {
        TAG_META => {
            let Some((proto, tci)) = ctx.offloaded_vlan() else {
                return Ok(());
            };
            let tci = (tci & !m) | (v & m);
            ctx.vlan_pop().map_err(rewrite_failed)?;
            ctx.vlan_push(proto, tci).map_err(rewrite_failed)?;
            tci
        }
        TAG_BYTES => {
            let t = ctx.load::<2>(14).map_err(malformed)?;
            let tci = (t.be16_at::<0>() & !m) | (v & m);
            ctx.store(14, &tci.to_be_bytes()).map_err(rewrite_failed)?;
            tci
        }
        // No tag: nothing to set (push_vlan first).
        _ => return Ok(()),
    };
    st.pkt.key.vlan_tci = (tci & !VLAN_PRESENT) | VLAN_PRESENT;
    Ok(())
}

/// Push a tag (`proto`) whose VID and PCP are the outer tag's, or 0.
// Out of line: a frame of its own, not added to the caller's.
#[inline(never)]
fn push_vlan<P: Packet>(ctx: &P, st: &mut ActState, proto: u16) -> Result<(), DropReason> {
    from_unit(ctx.commit_out_of_line(st))?;
    let k = st.pkt.key.vlan_tci;
    let tci = if k & VLAN_PRESENT != 0 {
        k & !VLAN_PRESENT
    } else {
        0
    };
    ctx.vlan_push(proto, tci)
        .map_err(|_| DropReason::Unsupported)?;
    from_unit(ctx.reparse_out_of_line(st))
}

// Out of line: a frame of its own, not added to the caller's.
#[inline(never)]
fn pop_vlan<P: Packet>(ctx: &P, st: &mut ActState) -> Result<(), DropReason> {
    if st.pkt.tag != TAG_META && st.pkt.tag != TAG_BYTES {
        return Ok(());
    }
    from_unit(ctx.commit_out_of_line(st))?;
    ctx.vlan_pop().map_err(|_| DropReason::Unsupported)?;
    from_unit(ctx.reparse_out_of_line(st))
}

/// Insert a label stack entry after the tags: a copy of the outer entry
/// with BoS clear on an MPLS packet, else label 0, TC 0, BoS set, the IP
/// TTL (or 64).
// Out of line: a frame of its own, not added to the caller's.
#[inline(never)]
fn push_mpls<P: Packet>(ctx: &P, st: &mut ActState, eth_type: u16) -> Result<(), DropReason> {
    from_unit(ctx.commit_out_of_line(st))?;
    let p = &st.pkt;
    let l3 = p.l3_off;
    let lse: u32 = match p.l3 {
        L3::Mpls => u32::from_be_bytes(p.key.ipv4_src) & !0x0100,
        L3::Ipv4 | L3::Ipv6 => 0x0100 | p.ttl as u32,
        _ => 0x0100 | 64,
    };
    // The MAC addresses and any tags in the bytes: 12, 16 or 20 bytes.
    let head = l3 - 2;
    if head != 12 && head != 16 && head != 20 {
        return Err(DropReason::Unsupported);
    }
    ctx.grow_head(4).map_err(|_| DropReason::Unsupported)?;
    // The old head is now 4 bytes in: move it back, piece by piece (a
    // whole copy held across the grow would sit on the stack byte by byte).
    let macs = ctx.load::<12>(4).map_err(malformed)?;
    ctx.store(0, &macs.0).map_err(rewrite_failed)?;
    if head >= 16 {
        let tag = ctx.load::<4>(16).map_err(malformed)?;
        ctx.store(12, &tag.0).map_err(rewrite_failed)?;
    }
    if head >= 20 {
        let tag = ctx.load::<4>(20).map_err(malformed)?;
        ctx.store(16, &tag.0).map_err(rewrite_failed)?;
    }
    let t = eth_type.to_be_bytes();
    let e = lse.to_be_bytes();
    let hdr = [t[0], t[1], e[0], e[1], e[2], e[3]];
    // Constant offsets: the verifier keeps no range of `head` here.
    match head {
        12 => ctx.store(12, &hdr),
        16 => ctx.store(16, &hdr),
        _ => ctx.store(20, &hdr),
    }
    .map_err(rewrite_failed)?;
    from_unit(ctx.reparse_out_of_line(st))
}

/// Remove the outer label stack entry; `eth_type` is what follows it.
/// No helper removes bytes from the middle of a non-IP packet, so the
/// rest of the packet moves 4 bytes forward and the tail is cut.
// Out of line: a frame of its own, not added to the caller's.
#[inline(never)]
fn pop_mpls<P: Packet>(ctx: &P, st: &mut ActState, eth_type: u16) -> Result<(), DropReason> {
    if st.pkt.l3 != L3::Mpls {
        return Ok(());
    }
    from_unit(ctx.commit_out_of_line(st))?;
    let l3 = st.pkt.l3_off;
    let len = ctx.len();
    if len < l3 + 4 {
        return Err(DropReason::Malformed);
    }
    // Chunk by chunk, the last one shorter; one global function call
    // each (the loop's exits stay cheap for the verifier).
    let mut off = l3 + 4;
    let mut i = 0;
    while i < SHIFT_STEPS && off < len {
        let n = if len - off < SHIFT_CHUNK {
            len - off
        } else {
            SHIFT_CHUNK
        };
        if ctx.shift_out_of_line(off, n) != 0 {
            return Err(DropReason::RewriteFailed);
        }
        off += n;
        i += 1;
    }
    if off < len {
        return Err(DropReason::Unsupported);
    }
    ctx.store(l3 - 2, &eth_type.to_be_bytes())
        .map_err(rewrite_failed)?;
    ctx.trim(len - 4).map_err(|_| DropReason::Unsupported)?;
    from_unit(ctx.reparse_out_of_line(st))
}

/// Set the bits `m` of the outer label stack entry to `v`.
// Out of line: a frame of its own, not added to the caller's.
#[inline(never)]
fn set_lse<P: Packet>(ctx: &P, st: &mut ActState, v: u32, m: u32) -> Result<(), DropReason> {
    if st.pkt.l3 != L3::Mpls {
        return Ok(());
    }
    let l3 = st.pkt.l3_off;
    let old = ctx.load::<4>(l3).map_err(malformed)?.0;
    let lse = (u32::from_be_bytes(old) & !m) | (v & m);
    let b = lse.to_be_bytes();
    ctx.store(l3, &b).map_err(rewrite_failed)?;
    st.pkt.key.ipv4_src = b;
    Ok(())
}

/// Decrement the MPLS TTL; 0 or 1 punts the packet as an invalid TTL and
/// ends the action list (`Some(verdict)`).
#[inline(always)]
pub fn dec_mpls_ttl<P: Packet>(
    ctx: &P,
    st: &mut ActState,
    rule_id: u32,
) -> Result<Option<i32>, DropReason> {
    if st.pkt.l3 != L3::Mpls {
        return Ok(None);
    }
    let ttl = st.pkt.key.ipv4_src[3];
    if ttl <= 1 {
        from_unit(ctx.commit_out_of_line(st))?;
        return match punt_from(ctx, st, PuntReason::InvalidTtl, rule_id) {
            Ok(()) => Ok(Some(P::DROP)),
            Err(_) => Err(DropReason::TtlExceeded),
        };
    }
    set_lse(ctx, st, (ttl - 1) as u32, 0xff)?;
    Ok(None)
}

/// Copy the TTL between an MPLS packet's outer label stack entry and the
/// IP header under it (the bottom of the stack): outwards (IP to MPLS) or
/// inwards (MPLS to IP).
// Out of line: a frame of its own, not added to the caller's.
#[inline(never)]
fn copy_ttl<P: Packet>(ctx: &P, st: &mut ActState, out: bool) -> Result<(), DropReason> {
    if st.pkt.l3 != L3::Mpls || st.pkt.key.ipv4_src[2] & 1 == 0 {
        return Ok(());
    }
    let lse_ttl = st.pkt.key.ipv4_src[3];
    let ip = st.pkt.l3_off + 4;
    let h = ctx.load::<12>(ip).map_err(malformed)?.0;
    let (ttl_at, v4) = match h[0] >> 4 {
        4 => (8u32, true),
        6 => (IPV6_HOP_OFF, false),
        _ => return Ok(()),
    };
    let ip_ttl = h[ttl_at as usize];
    if out {
        return set_lse(ctx, st, ip_ttl as u32, 0xff);
    }
    ctx.store(ip + ttl_at, &[lse_ttl]).map_err(rewrite_failed)?;
    if v4 {
        // TTL shares a checksum word with the protocol.
        let from = u16::from_ne_bytes([ip_ttl, h[9]]);
        let to = u16::from_ne_bytes([lse_ttl, h[9]]);
        ctx.l3_csum_diff(ip + 10, (!from) as u32 + to as u32)
            .map_err(rewrite_failed)?;
    }
    Ok(())
}

/// Offset of the checksum covering the L4 header, and whether it covers
/// the IP pseudo-header: TCP, UDP, ICMP, ICMPv6 (SCTP: CRC32c, none here).
#[inline(always)]
fn l4_csum(p: &Parsed) -> Option<(u32, bool)> {
    if !p.has_l4 {
        return None;
    }
    match p.key.ip_proto {
        FlowKey::IPPROTO_TCP => Some((p.l4_off + 16, true)),
        FlowKey::IPPROTO_UDP => Some((p.l4_off + 6, true)),
        FlowKey::IPPROTO_ICMPV6 => Some((p.l4_off + 2, true)),
        FlowKey::IPPROTO_ICMP => Some((p.l4_off + 2, false)),
        _ => None,
    }
}

/// Checksum difference of 8 bytes changing from `old` to `new`.
#[inline(always)]
fn diff8(old: &Buf<8>, new: &Buf<8>) -> u32 {
    csum_diff(old.u32_at::<0>(), new.u32_at::<0>())
        .wrapping_add(csum_diff(old.u32_at::<4>(), new.u32_at::<4>()))
}

/// Set half (`half` 0 or 1) of an IPv6 source/destination or ND target
/// address.
// Out of line: a frame of its own, not added to the caller's.
#[inline(never)]
fn set_addr_half<P: Packet>(
    ctx: &P,
    st: &mut ActState,
    kind: ActionKind,
    half: u32,
    data: [u8; 8],
) -> Result<(), DropReason> {
    let p = &st.pkt;
    if p.l3 != L3::Ipv6 {
        return Ok(());
    }
    let h = (half & 1) * 8;
    let (off, pseudo) = match kind {
        ActionKind::SetIpv6Src => (p.l3_off + 8 + h, true),
        ActionKind::SetIpv6Dst => (p.l3_off + 24 + h, true),
        _ => {
            let nd = p.has_l4
                && p.key.ip_proto == FlowKey::IPPROTO_ICMPV6
                && (p.key.l4_src == 135 || p.key.l4_src == 136);
            if !nd {
                return Ok(());
            }
            (p.l4_off + 8 + h, false)
        }
    };
    let old = ctx.load::<8>(off).map_err(malformed)?;
    let new = Buf(data);
    if let Some((at, covers_pseudo)) = l4_csum(p) {
        // An address in the pseudo-header counts only for checksums over it.
        if !pseudo || covers_pseudo {
            ctx.l4_csum_diff(at, diff8(&old, &new), pseudo, p.is_udp())
                .map_err(rewrite_failed)?;
        }
    }
    ctx.store(off, &data).map_err(rewrite_failed)?;
    st.pkt.ext_ready = false;
    Ok(())
}

// Out of line: a frame of its own, not added to the caller's.
#[inline(never)]
fn set_arp<P: Packet>(
    ctx: &P,
    st: &mut ActState,
    kind: ActionKind,
    a: &Action,
) -> Result<(), DropReason> {
    let p = &st.pkt;
    if p.l3 != L3::Arp {
        return Ok(());
    }
    let l3 = p.l3_off;
    let h = ctx.load::<8>(l3).map_err(malformed)?.0;
    let ipv4_arp = h[0] == 0 && h[1] == 1 && h[2] == 8 && h[3] == 0 && h[4] == 6 && h[5] == 4;
    match kind {
        ActionKind::SetArpOp => {
            ctx.store(l3 + 6, &(a.arg as u16).to_be_bytes())
                .map_err(rewrite_failed)?;
            st.pkt.key.arp_op = a.arg as u16;
        }
        _ if !ipv4_arp => {}
        ActionKind::SetArpSha => ctx.store(l3 + 8, &a.mac()).map_err(rewrite_failed)?,
        ActionKind::SetArpTha => ctx.store(l3 + 18, &a.mac()).map_err(rewrite_failed)?,
        ActionKind::SetArpSpa => {
            ctx.store(l3 + 14, &a.ipv4()).map_err(rewrite_failed)?;
            st.pkt.key.ipv4_src = a.ipv4();
        }
        _ => {
            ctx.store(l3 + 24, &a.ipv4()).map_err(rewrite_failed)?;
            st.pkt.key.ipv4_dst = a.ipv4();
        }
    }
    st.pkt.ext_ready = false;
    Ok(())
}

/// Set the ND link-layer address option (source for a solicitation,
/// target for an advertisement) when it is the message's first option.
// Out of line: a frame of its own, not added to the caller's.
#[inline(never)]
fn set_nd_lla<P: Packet>(
    ctx: &P,
    st: &mut ActState,
    kind: ActionKind,
    mac: [u8; 6],
) -> Result<(), DropReason> {
    let p = &st.pkt;
    let (want_type, opt) = if kind == ActionKind::SetNdSll {
        (135, 1)
    } else {
        (136, 2)
    };
    if p.l3 != L3::Ipv6
        || !p.has_l4
        || p.key.ip_proto != FlowKey::IPPROTO_ICMPV6
        || p.key.l4_src != want_type
    {
        return Ok(());
    }
    let at = p.l4_off + 24;
    let Ok(o) = ctx.load::<8>(at) else {
        return Ok(());
    };
    if o.0[0] != opt || o.0[1] != 1 {
        return Ok(());
    }
    let new = Buf([
        o.0[0], o.0[1], mac[0], mac[1], mac[2], mac[3], mac[4], mac[5],
    ]);
    ctx.l4_csum_diff(p.l4_off + 2, diff8(&o, &new), false, false)
        .map_err(rewrite_failed)?;
    ctx.store(at, &new.0).map_err(rewrite_failed)?;
    st.pkt.ext_ready = false;
    Ok(())
}

// Out of line: a frame of its own, not added to the caller's.
#[inline(never)]
fn set_icmp<P: Packet>(ctx: &P, st: &mut ActState, is_type: bool, v: u8) -> Result<(), DropReason> {
    let p = &st.pkt;
    let icmp = p.key.ip_proto == FlowKey::IPPROTO_ICMP || p.key.ip_proto == FlowKey::IPPROTO_ICMPV6;
    if !p.has_l4 || !icmp || !p.is_ip() {
        return Ok(());
    }
    let l4 = p.l4_off;
    let old = ctx.load::<2>(l4).map_err(malformed)?.0;
    let new = if is_type { [v, old[1]] } else { [old[0], v] };
    let diff = (!u16::from_ne_bytes(old)) as u32 + u16::from_ne_bytes(new) as u32;
    ctx.l4_csum_diff(l4 + 2, diff, false, false)
        .map_err(rewrite_failed)?;
    ctx.store(l4, &new).map_err(rewrite_failed)?;
    if is_type {
        st.pkt.key.l4_src = v as u16;
    } else {
        st.pkt.key.l4_dst = v as u16;
    }
    st.pkt.ext_ready = false;
    Ok(())
}

/// CRC32c polynomial, reflected.
const CRC32C_POLY: u32 = 0x82f6_3b78;

/// `a * b` modulo the CRC polynomial, reflected (x^0 is bit 31); at compile
/// time ([`FACTORS`]).
const fn gf2_mul(a: u32, mut b: u32) -> u32 {
    let mut p = 0u32;
    let mut i = 0;
    while i < 32 {
        let bit = (a >> (31 - i)) & 1;
        p ^= b.wrapping_mul(bit);
        b = (b >> 1) ^ CRC32C_POLY.wrapping_mul(b & 1);
        i += 1;
    }
    p
}

/// For j = 0..16: `[x^0, x^(8 * 2^j)]` modulo the polynomial (reflected:
/// x^0 is bit 31). Appending `n` zero bytes to a CRC multiplies it by
/// `FACTORS[2 j + bit j of n]` for every j: a table load per step instead
/// of a branch (one path for the verifier).
static FACTORS: [u32; 32] = {
    // x^1 is bit 30 in the reflected representation; x^8 = (x^1)^8.
    let mut t = [0u32; 32];
    let mut x = 1u32 << 30;
    let mut k = 0;
    while k < 3 {
        x = gf2_mul(x, x);
        k += 1;
    }
    let mut j = 0;
    while j < 16 {
        t[2 * j] = 1 << 31;
        t[2 * j + 1] = x;
        x = gf2_mul(x, x);
        j += 1;
    }
    t
};

/// All-zero and all-one masks, read with volatile loads at a variable index:
/// the verifier sees an unknown scalar (no fork per bit, as a branch or an
/// arithmetic-shift mask would give on this kernel), and the compiler cannot
/// turn the load back into a select.
static MASKS: [u32; 2] = [0, u32::MAX];

/// `MASKS[bit & 1]`.
#[inline(always)]
fn mask(bit: u32) -> u32 {
    let i = (bit & 1) as usize;
    match MASKS.get(i) {
        // SAFETY: a reference to an element of a static is valid to read.
        Some(m) => unsafe { core::ptr::read_volatile(m) },
        None => 0,
    }
}

/// [`gf2_mul`] at run time, with [`mask`] instead of multiplications.
#[inline(always)]
fn gf2_mul_masked(a: u32, mut b: u32) -> u32 {
    let mut p = 0u32;
    let mut i = 0;
    while i < 32 {
        p ^= b & mask(a >> (31 - i));
        b = (b >> 1) ^ (CRC32C_POLY & mask(b));
        i += 1;
    }
    p
}

/// The plain CRC32c (no initial value, no final xor) of 4 bytes (`d`, in
/// memory order as a little-endian word) followed by `zeros` zero bytes
/// (below 65536). Runs in the global function
/// [`crate::programs::dl_crc_delta`]: verified once.
#[inline(always)]
pub fn crc_of_delta(d: u32, zeros: u32) -> u32 {
    let mut crc = d;
    let mut i = 0;
    while i < 32 {
        crc = (crc >> 1) ^ (CRC32C_POLY & mask(crc));
        i += 1;
    }
    let mut j = 0u32;
    while j < 16 {
        let bit = (zeros >> j) & 1;
        let f = match FACTORS.get(((2 * j + bit) & 31) as usize) {
            // SAFETY: as in `mask`; volatile so the compiler cannot turn
            // the load into a select of two constants.
            Some(f) => unsafe { core::ptr::read_volatile(f) },
            None => 1 << 31,
        };
        crc = gf2_mul_masked(f, crc);
        j += 1;
    }
    crc
}

/// Set an SCTP port and fix the packet's CRC32c.
// Out of line: a frame of its own, not added to the caller's.
#[inline(never)]
fn set_sctp_port<P: Packet>(
    ctx: &P,
    st: &mut ActState,
    dst: bool,
    port: u16,
) -> Result<(), DropReason> {
    let p = &st.pkt;
    if !p.has_l4 || p.key.ip_proto != FlowKey::IPPROTO_SCTP {
        return Ok(());
    }
    let (l3, l4) = (p.l3_off, p.l4_off);
    // The SCTP packet's length from the IP header (the frame may be padded).
    let end = match p.l3 {
        L3::Ipv4 => l3 + ctx.load::<4>(l3).map_err(malformed)?.be16_at::<2>() as u32,
        L3::Ipv6 => l3 + 40 + ctx.load::<6>(l3).map_err(malformed)?.be16_at::<4>() as u32,
        _ => return Ok(()),
    };
    if end < l4 + 12 || end > ctx.len() || end - l4 >= 65536 {
        return Err(DropReason::Malformed);
    }
    let old = ctx.load::<4>(l4).map_err(malformed)?.0;
    let new_port = port.to_be_bytes();
    let new = if dst {
        [old[0], old[1], new_port[0], new_port[1]]
    } else {
        [new_port[0], new_port[1], old[2], old[3]]
    };
    let d = [
        old[0] ^ new[0],
        old[1] ^ new[1],
        old[2] ^ new[2],
        old[3] ^ new[3],
    ];
    let delta = crate::programs::dl_crc_delta(u32::from_le_bytes(d), end - l4 - 4);
    let stored = ctx.load::<4>(l4 + 8).map_err(malformed)?.0;
    let crc = u32::from_le_bytes(stored) ^ delta;
    ctx.store(l4, &new).map_err(rewrite_failed)?;
    ctx.store(l4 + 8, &crc.to_le_bytes())
        .map_err(rewrite_failed)?;
    if dst {
        st.pkt.key.l4_dst = port;
    } else {
        st.pkt.key.l4_src = port;
    }
    Ok(())
}
