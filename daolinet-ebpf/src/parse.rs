//! Packet parsing into a [`FlowKey`].
//!
//! Parsed: Ethernet, the outer 802.1Q/802.1ad tag (in the bytes, or kept
//! by the kernel in skb metadata) and one inner tag behind it, IPv4
//! (honouring IHL; L4 only on the first fragment), IPv6 (up to four
//! extension headers; L4 only on the first fragment), TCP/UDP/SCTP ports,
//! ICMP/ICMPv6 type and code, Ethernet/IPv4 ARP, and the outer MPLS label
//! stack entry. Anything else keeps only the Ethernet fields. A header we
//! need that is cut short is [`DropReason::Malformed`].

use daolinet_common::{DropReason, FlowKey, FlowKeyExt, VLAN_PRESENT};

use crate::context::Packet;

/// Length of an Ethernet header.
pub const ETH_HLEN: u32 = 14;
/// Offset of the destination MAC in the Ethernet header.
pub const ETH_DST_OFF: u32 = 0;
/// Offset of TTL in the IPv4 header.
pub const IP_TTL_OFF: u32 = 8;
/// Offset of the header checksum in the IPv4 header.
pub const IP_CSUM_OFF: u32 = 10;
/// Offset of the source address in the IPv4 header (the destination
/// follows it).
pub const IP_SRC_OFF: u32 = 12;
/// Offset of the checksum in the TCP header.
pub const TCP_CSUM_OFF: u32 = 16;
/// Offset of the checksum in the UDP header.
pub const UDP_CSUM_OFF: u32 = 6;

/// The network layer found.
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L3 {
    /// None of the below.
    Other,
    /// IPv4; `Parsed::l3_off` points at its header.
    Ipv4,
    /// ARP.
    Arp,
    /// IPv6; `Parsed::l3_off` points at its fixed header.
    Ipv6,
    /// MPLS; `Parsed::l3_off` points at the outer label stack entry.
    Mpls,
}

/// Length of the fixed IPv6 header.
pub const IPV6_HLEN: u32 = 40;
/// Offset of the hop limit in the IPv6 header.
pub const IPV6_HOP_OFF: u32 = 7;
/// IPv6 extension headers skipped on the way to L4, at most.
const IPV6_MAX_EXT: u32 = 4;

/// A parsed packet: the classifier key plus what the actions need.
/// Scalars only: it is handed to a global BPF function as plain memory.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Parsed {
    /// The key the classifier matches on.
    pub key: FlowKey,
    /// The wide fields (right after `key`: together they are a
    /// `FullKey`), valid when `ext_ready` (filled on demand by
    /// [`fill_ext`], which the IPv4 fast path never needs).
    pub ext: FlowKeyExt,
    /// Offset of the IPv4/ARP header.
    pub l3_off: u32,
    /// Offset of the TCP/UDP/ICMP header (valid when `has_l4`).
    pub l4_off: u32,
    /// The network layer.
    pub l3: L3,
    /// An L4 header with ports was parsed (first fragment, TCP/UDP/ICMP).
    pub has_l4: bool,
    /// IPv4 TTL or IPv6 hop limit (valid for [`L3::Ipv4`], [`L3::Ipv6`]).
    pub ttl: u8,
    /// `ext` holds the packet's wide fields.
    pub ext_ready: bool,
    /// Where the outer VLAN tag is: [`TAG_NONE`], [`TAG_META`] (the kernel
    /// holds it in skb metadata) or [`TAG_BYTES`] (at byte 12).
    pub tag: u8,
}

/// [`Parsed::tag`]: untagged.
pub const TAG_NONE: u8 = 0;
/// [`Parsed::tag`]: the outer tag is in skb metadata.
pub const TAG_META: u8 = 1;
/// [`Parsed::tag`]: the outer tag is in the packet bytes.
pub const TAG_BYTES: u8 = 2;

impl Parsed {
    /// True for an IPv4 or IPv6 packet.
    #[inline(always)]
    pub fn is_ip(&self) -> bool {
        self.l3 == L3::Ipv4 || self.l3 == L3::Ipv6
    }

    /// True for a TCP or UDP packet whose header (with ports and checksum)
    /// is present.
    #[inline(always)]
    pub fn has_ports(&self) -> bool {
        self.has_l4
            && (self.key.ip_proto == FlowKey::IPPROTO_TCP
                || self.key.ip_proto == FlowKey::IPPROTO_UDP)
    }

    /// Offset of the TCP/UDP checksum (valid when [`Parsed::has_ports`]).
    #[inline(always)]
    pub fn l4_csum_off(&self) -> u32 {
        if self.key.ip_proto == FlowKey::IPPROTO_TCP {
            self.l4_off + TCP_CSUM_OFF
        } else {
            self.l4_off + UDP_CSUM_OFF
        }
    }

    /// True for UDP (zero checksum means "none").
    #[inline(always)]
    pub fn is_udp(&self) -> bool {
        self.key.ip_proto == FlowKey::IPPROTO_UDP
    }
}

#[inline(always)]
fn be16(b0: u8, b1: u8) -> u16 {
    u16::from_be_bytes([b0, b1])
}

/// Parse the packet in `ctx` that arrived on OpenFlow port `in_port`.
#[inline(always)]
/// The result is written into `p` (which may live in a map: the stack is
/// small).
pub fn parse<P: Packet>(ctx: &P, in_port: u32, p: &mut Parsed) -> Result<(), DropReason> {
    let eth = ctx.load::<14>(0).map_err(|_| DropReason::Malformed)?;
    // The key is written as whole words from aligned loads: byte arrays
    // copied field by field cost a load and a store per byte in BPF, and a
    // partly initialised struct a call to a byte-wise memset.
    let (e0, e1, e2) = (eth.u32_at::<0>(), eth.u32_at::<4>(), eth.u32_at::<8>());
    let w = p.key.words_mut();
    w[0] = in_port;
    // ipv4_src, ipv4_dst, eth_type + vlan_tci: set below.
    w[1] = 0;
    w[2] = 0;
    w[3] = 0;
    // eth_src (packet bytes 6..12) then eth_dst (0..6), little endian
    // words (bpfel): key bytes 16..28 = packet bytes 6..12, 0..6.
    w[4] = (e1 >> 16) | (e2 << 16);
    w[5] = (e2 >> 16) | (e0 << 16);
    w[6] = (e0 >> 16) | (e1 << 16);
    // l4 ports, arp_op + ip_proto, padding: set below or zero.
    w[7] = 0;
    w[8] = 0;
    w[9] = 0;
    p.l3_off = ETH_HLEN;
    // Volatile: merged, these four stores become a call to a byte-wise
    // memset (the BPF target has no memset instruction).
    // SAFETY: plain stores to fields of `p`.
    unsafe {
        core::ptr::write_volatile(&mut p.l4_off, 0);
        core::ptr::write_volatile(&mut p.l3, L3::Other);
        core::ptr::write_volatile(&mut p.has_l4, false);
        core::ptr::write_volatile(&mut p.ttl, 0);
        core::ptr::write_volatile(&mut p.ext_ready, false);
        core::ptr::write_volatile(&mut p.tag, TAG_NONE);
    }
    let mut eth_type = eth.be16_at::<12>();
    // PCP and VID; bit 12 (CFI/DEI in the tag) becomes VLAN_PRESENT.
    if let Some((_, tci)) = ctx.offloaded_vlan() {
        p.key.vlan_tci = (tci & !VLAN_PRESENT) | VLAN_PRESENT;
        p.tag = TAG_META;
    } else if eth_type == FlowKey::ETH_TYPE_VLAN || eth_type == FlowKey::ETH_TYPE_VLAN_AD {
        let tag = ctx.load::<4>(ETH_HLEN).map_err(|_| DropReason::Malformed)?;
        p.key.vlan_tci = (tag.be16_at::<0>() & !VLAN_PRESENT) | VLAN_PRESENT;
        eth_type = tag.be16_at::<2>();
        p.l3_off = ETH_HLEN + 4;
        p.tag = TAG_BYTES;
    }
    p.key.eth_type = eth_type;
    // IPv4 and ARP here; the rest out of line (a short fast path).
    match eth_type {
        FlowKey::ETH_TYPE_IPV4 => parse_ipv4(ctx, p),
        FlowKey::ETH_TYPE_ARP => parse_arp(ctx, p),
        _ => match ctx.parse_out_of_line(p) {
            0 => Ok(()),
            r => Err(drop_reason(r - 1)),
        },
    }
}

/// The drop reason with index `v` ([`DropReason::Malformed`] if unknown).
#[inline(always)]
fn drop_reason(v: i32) -> DropReason {
    let mut i = 0;
    while i < DropReason::ALL.len() {
        if DropReason::ALL[i] as i32 == v {
            return DropReason::ALL[i];
        }
        i += 1;
    }
    DropReason::Malformed
}

/// The part of [`parse`] after the Ethernet header and the outer VLAN tag
/// for anything but IPv4 and ARP: a second (inner) VLAN tag, then IPv4,
/// ARP, IPv6 or MPLS. `p.key.eth_type` and `p.l3_off` are set. Returns 0,
/// or the [`DropReason`] + 1.
#[inline(always)]
pub fn parse_more<P: Packet>(ctx: &P, p: &mut Parsed) -> i32 {
    match parse_more_inner(ctx, p) {
        Ok(()) => 0,
        Err(r) => r as i32 + 1,
    }
}

#[inline(always)]
fn parse_more_inner<P: Packet>(ctx: &P, p: &mut Parsed) -> Result<(), DropReason> {
    let mut eth_type = p.key.eth_type;
    if p.key.vlan_tci != 0 && is_vlan(eth_type) {
        // An inner tag (QinQ): OpenFlow matches the outer one; the
        // Ethernet type is the one after the tags.
        let tag = ctx.load::<4>(p.l3_off).map_err(|_| DropReason::Malformed)?;
        eth_type = tag.be16_at::<2>();
        p.l3_off += 4;
        p.key.eth_type = eth_type;
    }
    match eth_type {
        FlowKey::ETH_TYPE_IPV4 => parse_ipv4(ctx, p),
        FlowKey::ETH_TYPE_ARP => parse_arp(ctx, p),
        FlowKey::ETH_TYPE_IPV6 => parse_ipv6(ctx, p),
        FlowKey::ETH_TYPE_MPLS | FlowKey::ETH_TYPE_MPLS_MC => {
            let lse = ctx.load::<4>(p.l3_off).map_err(|_| DropReason::Malformed)?;
            p.l3 = L3::Mpls;
            p.key.words_mut()[1] = lse.u32_at::<0>();
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Fill `p.ext` from the packet: IPv6 addresses, the ND target and
/// link-layer address option, ARP hardware addresses; the registers
/// (metadata, tunnel id) are the caller's. Zero where the packet has no
/// such field. Returns 0, or the [`DropReason`] + 1.
#[inline(always)]
pub fn fill_ext<P: Packet>(ctx: &P, p: &mut Parsed) -> i32 {
    match fill_ext_inner(ctx, p) {
        Ok(()) => {
            p.ext_ready = true;
            0
        }
        Err(r) => r as i32 + 1,
    }
}

#[inline(always)]
fn fill_ext_inner<P: Packet>(ctx: &P, p: &mut Parsed) -> Result<(), DropReason> {
    // Word by word (a struct literal would be a byte-wise memset call).
    let w = p.ext.words_mut();
    let mut i = 0;
    while i < w.len() {
        w[i] = 0;
        i += 1;
    }
    match p.l3 {
        L3::Ipv6 => {
            let a = ctx
                .load::<32>(p.l3_off + 8)
                .map_err(|_| DropReason::Malformed)?;
            p.ext.ipv6_src.copy_from_slice(&a.0[..16]);
            p.ext.ipv6_dst.copy_from_slice(&a.0[16..]);
            let nd = p.has_l4
                && p.key.ip_proto == FlowKey::IPPROTO_ICMPV6
                && (p.key.l4_src == 135 || p.key.l4_src == 136);
            if !nd {
                return Ok(());
            }
            // Type, code, checksum, flags/reserved (8), target (16).
            let t = ctx
                .load::<16>(p.l4_off + 8)
                .map_err(|_| DropReason::Malformed)?;
            p.ext.nd_target.copy_from_slice(&t.0);
            // The first option, if it is the link-layer address that
            // belongs to this message type.
            if let Ok(opt) = ctx.load::<8>(p.l4_off + 24) {
                let o = opt.0;
                if o[0] == 1 && o[1] == 1 && p.key.l4_src == 135 {
                    p.ext.sha.copy_from_slice(&o[2..8]);
                } else if o[0] == 2 && o[1] == 1 && p.key.l4_src == 136 {
                    p.ext.tha.copy_from_slice(&o[2..8]);
                }
            }
        }
        L3::Arp => {
            let h = ctx.load::<8>(p.l3_off).map_err(|_| DropReason::Malformed)?;
            if be16(h.0[0], h.0[1]) == 1 && h.0[4] == 6 {
                let a = ctx
                    .load::<20>(p.l3_off + 8)
                    .map_err(|_| DropReason::Malformed)?;
                p.ext.sha.copy_from_slice(&a.0[..6]);
                p.ext.tha.copy_from_slice(&a.0[10..16]);
            }
        }
        _ => {}
    }
    Ok(())
}

/// True for the Ethernet types of a VLAN tag.
#[inline(always)]
fn is_vlan(eth_type: u16) -> bool {
    eth_type == FlowKey::ETH_TYPE_VLAN || eth_type == FlowKey::ETH_TYPE_VLAN_AD
}

/// Bytes of the L4 header needed for its key fields, 0 for protocols
/// without any.
#[inline(always)]
fn l4_need(proto: u8) -> u32 {
    match proto {
        FlowKey::IPPROTO_TCP => 20,
        FlowKey::IPPROTO_UDP => 8,
        FlowKey::IPPROTO_SCTP => 12,
        FlowKey::IPPROTO_ICMP | FlowKey::IPPROTO_ICMPV6 => 4,
        _ => 0,
    }
}

/// Read the L4 key fields (ports, or ICMP type and code) at `l4_off`.
#[inline(always)]
fn parse_l4<P: Packet>(ctx: &P, p: &mut Parsed, l4_off: u32) -> Result<(), DropReason> {
    let proto = p.key.ip_proto;
    let need = l4_need(proto);
    if need == 0 {
        return Ok(());
    }
    if ctx.len() < l4_off + need {
        return Err(DropReason::Malformed);
    }
    let l4 = ctx.load::<4>(l4_off).map_err(|_| DropReason::Malformed)?;
    if proto == FlowKey::IPPROTO_ICMP || proto == FlowKey::IPPROTO_ICMPV6 {
        p.key.l4_src = l4.0[0] as u16;
        p.key.l4_dst = l4.0[1] as u16;
    } else {
        p.key.l4_src = l4.be16_at::<0>();
        p.key.l4_dst = l4.be16_at::<2>();
    }
    p.has_l4 = true;
    Ok(())
}

#[inline(always)]
fn parse_ipv6<P: Packet>(ctx: &P, p: &mut Parsed) -> Result<(), DropReason> {
    let ip = ctx.load::<8>(p.l3_off).map_err(|_| DropReason::Malformed)?;
    let b = ip.0;
    if b[0] >> 4 != 6 {
        return Err(DropReason::Malformed);
    }
    p.l3 = L3::Ipv6;
    p.ttl = b[7];
    p.key.ip_tos = (b[0] << 4) | (b[1] >> 4);
    p.key.ipv6_label = u32::from_be_bytes([0, b[1] & 0x0f, b[2], b[3]]);
    let mut nh = b[6];
    let mut off = p.l3_off + IPV6_HLEN;
    if ctx.len() < off {
        return Err(DropReason::Malformed);
    }
    let mut i = 0;
    while i < IPV6_MAX_EXT {
        match nh {
            // Hop-by-hop, routing, destination options: 8-byte units.
            0 | 43 | 60 => {
                let h = ctx.load::<2>(off).map_err(|_| DropReason::Malformed)?;
                nh = h.0[0];
                off += (h.0[1] as u32 + 1) * 8;
            }
            // Authentication header: 4-byte units, plus 2.
            51 => {
                let h = ctx.load::<2>(off).map_err(|_| DropReason::Malformed)?;
                nh = h.0[0];
                off += (h.0[1] as u32 + 2) * 4;
            }
            // Fragment header: a later fragment has no L4 header.
            44 => {
                let h = ctx.load::<4>(off).map_err(|_| DropReason::Malformed)?;
                nh = h.0[0];
                off += 8;
                if h.be16_at::<2>() & 0xfff8 != 0 {
                    p.key.ip_proto = nh;
                    return Ok(());
                }
            }
            _ => break,
        }
        i += 1;
    }
    p.key.ip_proto = nh;
    p.l4_off = off;
    parse_l4(ctx, p, off)
}

#[inline(always)]
fn parse_ipv4<P: Packet>(ctx: &P, p: &mut Parsed) -> Result<(), DropReason> {
    let ip = ctx
        .load::<20>(p.l3_off)
        .map_err(|_| DropReason::Malformed)?;
    let b0 = ip.0[0];
    let ihl = ((b0 & 0x0f) as u32) * 4;
    if b0 >> 4 != 4 || ihl < 20 {
        return Err(DropReason::Malformed);
    }
    p.l3 = L3::Ipv4;
    p.ttl = ip.0[8];
    let proto = ip.0[9];
    // Key word 8: arp_op (0), ip_proto, ip_tos; one store.
    p.key.words_mut()[8] = ((proto as u32) << 16) | ((ip.0[1] as u32) << 24);
    let w = p.key.words_mut();
    w[1] = ip.u32_at::<12>();
    w[2] = ip.u32_at::<16>();
    let l4_off = p.l3_off + ihl;
    p.l4_off = l4_off;
    // Options must be present too.
    if ctx.len() < l4_off {
        return Err(DropReason::Malformed);
    }
    let frag_offset = ip.be16_at::<6>() & 0x1fff;
    if frag_offset != 0 {
        // A later fragment: no L4 header.
        return Ok(());
    }
    parse_l4(ctx, p, l4_off)
}

#[inline(always)]
fn parse_arp<P: Packet>(ctx: &P, p: &mut Parsed) -> Result<(), DropReason> {
    let hdr = ctx
        .load::<8>(p.l3_off)
        .map_err(|_| DropReason::Malformed)?
        .0;
    p.l3 = L3::Arp;
    p.key.arp_op = be16(hdr[6], hdr[7]);
    // Addresses only for Ethernet/IPv4 ARP (htype 1, ptype 0x0800, 6, 4).
    if be16(hdr[0], hdr[1]) == 1
        && be16(hdr[2], hdr[3]) == FlowKey::ETH_TYPE_IPV4
        && hdr[4] == 6
        && hdr[5] == 4
    {
        // sha(6) spa(4) tha(6) tpa(4) follow the 8 fixed bytes.
        let addrs = ctx
            .load::<20>(p.l3_off + 8)
            .map_err(|_| DropReason::Malformed)?
            .0;
        p.key.ipv4_src = [addrs[6], addrs[7], addrs[8], addrs[9]];
        p.key.ipv4_dst = [addrs[16], addrs[17], addrs[18], addrs[19]];
    }
    Ok(())
}
