//! Packet parsing into a [`FlowKey`].
//!
//! Parsed: Ethernet, one 802.1Q tag (or a tag offloaded into skb metadata),
//! IPv4 (honouring IHL; L4 only on the first fragment), TCP/UDP ports, ICMP
//! type/code, and Ethernet/IPv4 ARP. Anything else keeps only the Ethernet
//! fields. A header we need that is cut short is [`DropReason::Malformed`].

use daolinet_common::{DropReason, FlowKey, VLAN_PRESENT};

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
    /// Neither IPv4 nor ARP.
    Other,
    /// IPv4; `Parsed::l3_off` points at its header.
    Ipv4,
    /// ARP.
    Arp,
}

/// A parsed packet: the classifier key plus what the actions need.
/// Scalars only: it is handed to a global BPF function as plain memory.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Parsed {
    /// The key the classifier matches on.
    pub key: FlowKey,
    /// Offset of the IPv4/ARP header.
    pub l3_off: u32,
    /// Offset of the TCP/UDP/ICMP header (valid when `has_l4`).
    pub l4_off: u32,
    /// The network layer.
    pub l3: L3,
    /// An L4 header with ports was parsed (first fragment, TCP/UDP/ICMP).
    pub has_l4: bool,
    /// IPv4 TTL (valid for [`L3::Ipv4`]).
    pub ttl: u8,
}

impl Parsed {
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
    }
    let mut eth_type = eth.be16_at::<12>();
    if let Some(tci) = ctx.offloaded_vlan() {
        p.key.vlan_tci = (tci & 0x0fff) | VLAN_PRESENT;
    } else if eth_type == FlowKey::ETH_TYPE_VLAN {
        let tag = ctx.load::<4>(ETH_HLEN).map_err(|_| DropReason::Malformed)?;
        // The VID only (PCP and DEI are not matched): bit 12 is VLAN_PRESENT.
        p.key.vlan_tci = (tag.be16_at::<0>() & 0x0fff) | VLAN_PRESENT;
        eth_type = tag.be16_at::<2>();
        p.l3_off = ETH_HLEN + 4;
    }
    p.key.eth_type = eth_type;
    match eth_type {
        FlowKey::ETH_TYPE_IPV4 => parse_ipv4(ctx, p)?,
        FlowKey::ETH_TYPE_ARP => parse_arp(ctx, p)?,
        _ => {}
    }
    Ok(())
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
    p.key.ip_proto = proto;
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
    let need = match proto {
        FlowKey::IPPROTO_TCP => 20,
        FlowKey::IPPROTO_UDP => 8,
        FlowKey::IPPROTO_ICMP => 4,
        _ => return Ok(()),
    };
    if ctx.len() < l4_off + need {
        return Err(DropReason::Malformed);
    }
    let l4 = ctx.load::<4>(l4_off).map_err(|_| DropReason::Malformed)?;
    if proto == FlowKey::IPPROTO_ICMP {
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
