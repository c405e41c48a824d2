//! Userspace packet handling, sans-IO: extract the classifier key from a
//! frame (as the datapath does), apply datapath actions to a frame (for
//! PACKET_OUT, which the agent executes itself), and build ARP replies for
//! the local ARP responder.

use daolinet_common::{words_of, Action, ActionKind, FlowKey, FlowKeyExt, FullKey, VLAN_PRESENT};

const ETH_HLEN: usize = 14;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn arr<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at + N)?.try_into().ok()
}

/// The network layer of a frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum L3Kind {
    /// None of the below.
    #[default]
    Other,
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
    /// ARP.
    Arp,
    /// MPLS (`l3` is the outer label stack entry).
    Mpls,
}

/// Offsets found while parsing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// Start of the L3 header (after the VLAN tags).
    pub l3: usize,
    /// What the L3 header is.
    pub kind: L3Kind,
    /// Start of the L4 header of a first (or only) fragment whose key
    /// fields were read.
    pub l4: Option<usize>,
}

fn is_vlan(t: u16) -> bool {
    t == FlowKey::ETH_TYPE_VLAN || t == FlowKey::ETH_TYPE_VLAN_AD
}

/// IPv6 extension headers skipped on the way to L4, at most (as the datapath).
const IPV6_MAX_EXT: usize = 4;

/// The datapath's [`FlowKey`] of `frame` received on `in_port`, or None
/// when the frame is malformed (the datapath drops those too).
pub fn flow_key(frame: &[u8], in_port: u32) -> Option<(FlowKey, Layout)> {
    let mut k = FlowKey {
        in_port,
        eth_dst: arr(frame, 0)?,
        eth_src: arr(frame, 6)?,
        ..Default::default()
    };
    let mut lay = Layout {
        l3: ETH_HLEN,
        ..Default::default()
    };
    let mut et = be16(frame, 12)?;
    if is_vlan(et) {
        k.vlan_tci = (be16(frame, 14)? & !VLAN_PRESENT) | VLAN_PRESENT;
        et = be16(frame, 16)?;
        lay.l3 = ETH_HLEN + 4;
    }
    if is_vlan(et) {
        et = be16(frame, lay.l3 + 2)?;
        lay.l3 += 4;
    }
    k.eth_type = et;
    let l3 = lay.l3;
    match et {
        FlowKey::ETH_TYPE_IPV4 => {
            let ip: [u8; 20] = arr(frame, l3)?;
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if ip[0] >> 4 != 4 || ihl < 20 || frame.len() < l3 + ihl {
                return None;
            }
            lay.kind = L3Kind::Ipv4;
            k.ip_tos = ip[1];
            k.ip_proto = ip[9];
            k.ipv4_src = [ip[12], ip[13], ip[14], ip[15]];
            k.ipv4_dst = [ip[16], ip[17], ip[18], ip[19]];
            if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
                return Some((k, lay));
            }
            l4_fields(frame, &mut k, &mut lay, l3 + ihl)?;
        }
        FlowKey::ETH_TYPE_IPV6 => {
            let ip: [u8; 8] = arr(frame, l3)?;
            if ip[0] >> 4 != 6 || frame.len() < l3 + 40 {
                return None;
            }
            lay.kind = L3Kind::Ipv6;
            k.ip_tos = (ip[0] << 4) | (ip[1] >> 4);
            k.ipv6_label = u32::from_be_bytes([0, ip[1] & 0x0f, ip[2], ip[3]]);
            let mut nh = ip[6];
            let mut off = l3 + 40;
            for _ in 0..IPV6_MAX_EXT {
                match nh {
                    0 | 43 | 60 => {
                        let h: [u8; 2] = arr(frame, off)?;
                        nh = h[0];
                        off += (usize::from(h[1]) + 1) * 8;
                    }
                    51 => {
                        let h: [u8; 2] = arr(frame, off)?;
                        nh = h[0];
                        off += (usize::from(h[1]) + 2) * 4;
                    }
                    44 => {
                        let h: [u8; 4] = arr(frame, off)?;
                        nh = h[0];
                        off += 8;
                        if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                            k.ip_proto = nh;
                            return Some((k, lay));
                        }
                    }
                    _ => break,
                }
            }
            k.ip_proto = nh;
            l4_fields(frame, &mut k, &mut lay, off)?;
        }
        FlowKey::ETH_TYPE_ARP => {
            let h: [u8; 8] = arr(frame, l3)?;
            lay.kind = L3Kind::Arp;
            k.arp_op = u16::from_be_bytes([h[6], h[7]]);
            if h[..6] == [0, 1, 8, 0, 6, 4] {
                k.ipv4_src = arr(frame, l3 + 14)?;
                k.ipv4_dst = arr(frame, l3 + 24)?;
            }
        }
        FlowKey::ETH_TYPE_MPLS | FlowKey::ETH_TYPE_MPLS_MC => {
            lay.kind = L3Kind::Mpls;
            k.ipv4_src = arr(frame, l3)?;
        }
        _ => {}
    }
    Some((k, lay))
}

/// Read the L4 key fields at `l4` (as the datapath: ports, or ICMP type and
/// code); None when the header they are in is cut short.
fn l4_fields(frame: &[u8], k: &mut FlowKey, lay: &mut Layout, l4: usize) -> Option<()> {
    let need = match k.ip_proto {
        FlowKey::IPPROTO_TCP => 20,
        FlowKey::IPPROTO_UDP => 8,
        FlowKey::IPPROTO_SCTP => 12,
        FlowKey::IPPROTO_ICMP | FlowKey::IPPROTO_ICMPV6 => 4,
        _ => return Some(()),
    };
    if frame.len() < l4 + need {
        return None;
    }
    if matches!(k.ip_proto, FlowKey::IPPROTO_ICMP | FlowKey::IPPROTO_ICMPV6) {
        k.l4_src = u16::from(frame[l4]);
        k.l4_dst = u16::from(frame[l4 + 1]);
    } else {
        k.l4_src = be16(frame, l4)?;
        k.l4_dst = be16(frame, l4 + 2)?;
    }
    lay.l4 = Some(l4);
    Some(())
}

/// Ones'-complement sum of `data` (folded).
fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut it = data.chunks_exact(2);
    for c in &mut it {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = it.remainder() {
        sum += u32::from(*b) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// RFC 1624 incremental update of checksum field at `at` for a change of
/// `old` to `new` (both an even number of bytes).
fn csum_replace(frame: &mut [u8], at: usize, old: &[u8], new: &[u8]) {
    let Some(c) = be16(frame, at) else { return };
    let mut sum = u32::from(!c);
    for ch in old.chunks_exact(2) {
        sum += u32::from(!u16::from_be_bytes([ch[0], ch[1]]));
    }
    sum = csum_add(sum, new);
    let v = !fold(sum);
    frame[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn ip_checksum(frame: &mut [u8], l3: usize) {
    let ihl = usize::from(frame.get(l3).copied().unwrap_or(0) & 0x0f) * 4;
    if frame.len() < l3 + ihl || ihl < 20 {
        return;
    }
    frame[l3 + 10] = 0;
    frame[l3 + 11] = 0;
    let c = !fold(csum_add(0, &frame[l3..l3 + ihl]));
    frame[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

/// Offset of the L4 checksum for TCP/UDP, None when absent (or a UDP
/// checksum of zero, which means "none").
fn l4_csum_at(frame: &[u8], proto: u8, l4: usize) -> Option<usize> {
    match proto {
        FlowKey::IPPROTO_TCP => Some(l4 + 16).filter(|a| a + 2 <= frame.len()),
        FlowKey::IPPROTO_UDP => {
            let at = l4 + 6;
            (be16(frame, at)? != 0).then_some(at)
        }
        _ => None,
    }
}

/// What applying one action did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The frame was rewritten (or nothing to do).
    Done,
    /// dec_ttl found a TTL of 0 or 1: the packet must not go on.
    TtlExpired,
}

/// Apply a rewrite action (set-field, dec_ttl) to `frame` with checksum
/// fix-ups. Output actions are the caller's business and are ignored here.
pub fn rewrite(frame: &mut [u8], a: &Action) -> Applied {
    let Some((k, lay)) = flow_key(frame, 0) else {
        return Applied::Done;
    };
    let ip = lay.kind == L3Kind::Ipv4;
    let ip_any = ip || lay.kind == L3Kind::Ipv6;
    match a.kind() {
        Some(ActionKind::SetEthSrc) => frame[6..12].copy_from_slice(&a.mac()),
        Some(ActionKind::SetEthDst) => frame[0..6].copy_from_slice(&a.mac()),
        Some(kind @ (ActionKind::SetIpv4Src | ActionKind::SetIpv4Dst)) if ip => {
            let at = lay.l3
                + if kind == ActionKind::SetIpv4Src {
                    12
                } else {
                    16
                };
            let old: [u8; 4] = match arr(frame, at) {
                Some(o) => o,
                None => return Applied::Done,
            };
            let new = a.ipv4();
            frame[at..at + 4].copy_from_slice(&new);
            ip_checksum(frame, lay.l3);
            if let Some(c) = lay.l4.and_then(|l4| l4_csum_at(frame, k.ip_proto, l4)) {
                csum_replace(frame, c, &old, &new);
            }
        }
        Some(kind @ (ActionKind::SetL4Src | ActionKind::SetL4Dst)) if ip_any => {
            let Some(l4) = lay.l4 else {
                return Applied::Done;
            };
            if k.ip_proto != FlowKey::IPPROTO_TCP && k.ip_proto != FlowKey::IPPROTO_UDP {
                return Applied::Done;
            }
            let at = l4 + if kind == ActionKind::SetL4Src { 0 } else { 2 };
            let old: [u8; 2] = match arr(frame, at) {
                Some(o) => o,
                None => return Applied::Done,
            };
            let new = (a.arg as u16).to_be_bytes();
            frame[at..at + 2].copy_from_slice(&new);
            if let Some(c) = l4_csum_at(frame, k.ip_proto, l4) {
                csum_replace(frame, c, &old, &new);
            }
        }
        Some(ActionKind::DecTtl) if ip => {
            let at = lay.l3 + 8;
            let ttl = frame[at];
            if ttl <= 1 {
                return Applied::TtlExpired;
            }
            frame[at] = ttl - 1;
            ip_checksum(frame, lay.l3);
        }
        Some(ActionKind::DecTtl) if ip_any => {
            // The IPv6 hop limit: no header checksum, not in the pseudo-header.
            let at = lay.l3 + 7;
            let ttl = frame[at];
            if ttl <= 1 {
                return Applied::TtlExpired;
            }
            frame[at] = ttl - 1;
        }
        _ => {}
    }
    Applied::Done
}

/// Recompute the TCP/UDP checksum of an unfragmented IPv4 or IPv6 frame
/// from scratch. Packets punted from a veth usually carry a partial checksum
/// (the kernel's checksum offload fills it later); a frame sent to the
/// controller, or back out of a port, must carry the real one. A UDP
/// checksum of zero ("none") is left alone. Returns true when it changed.
pub fn complete_l4_checksum(frame: &mut [u8]) -> bool {
    let Some((k, lay)) = flow_key(frame, 0) else {
        return false;
    };
    let Some(l4) = lay.l4 else { return false };
    let l3 = lay.l3;
    let v6 = match lay.kind {
        L3Kind::Ipv4 => false,
        L3Kind::Ipv6 => true,
        _ => return false,
    };
    // IPv4's total length (header included) is at byte 2; IPv6's payload
    // length (after the 40-byte fixed header) at byte 4.
    let (len_at, fixed) = if v6 { (4, 40) } else { (2, 0) };
    let Some(total) = be16(frame, l3 + len_at) else {
        return false;
    };
    let end = l3 + fixed + usize::from(total);
    if end > frame.len() || end < l4 {
        return false;
    }
    let at = match k.ip_proto {
        FlowKey::IPPROTO_TCP => l4 + 16,
        FlowKey::IPPROTO_UDP => l4 + 6,
        _ => return false,
    };
    if at + 2 > end {
        return false;
    }
    let old = [frame[at], frame[at + 1]];
    if k.ip_proto == FlowKey::IPPROTO_UDP && old == [0, 0] {
        return false;
    }
    frame[at] = 0;
    frame[at + 1] = 0;
    let addrs = if v6 {
        &frame[l3 + 8..l3 + 40]
    } else {
        &frame[l3 + 12..l3 + 20]
    };
    let mut sum = csum_add(0, addrs);
    sum += u32::from(k.ip_proto) + (end - l4) as u32;
    sum = csum_add(sum, &frame[l4..end]);
    let mut c = !fold(sum);
    if c == 0 && k.ip_proto == FlowKey::IPPROTO_UDP {
        c = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    frame[at..at + 2] != old
}

/// The pipeline's registers that travel with a packet in userspace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    /// OpenFlow metadata.
    pub metadata: u64,
    /// Tunnel id.
    pub tunnel_id: u64,
}

/// The whole key of `frame` (the wide fields too), as the datapath fills
/// it: IPv6 and ND addresses, ARP hardware addresses, the registers.
pub fn full_key(frame: &[u8], in_port: u32, regs: &Regs) -> Option<(FullKey, Layout)> {
    let (key, lay) = flow_key(frame, in_port)?;
    let mut ext = FlowKeyExt {
        metadata: words_of(regs.metadata),
        tunnel_id: words_of(regs.tunnel_id),
        ..Default::default()
    };
    match lay.kind {
        L3Kind::Ipv6 => {
            ext.ipv6_src = arr(frame, lay.l3 + 8)?;
            ext.ipv6_dst = arr(frame, lay.l3 + 24)?;
            let nd =
                key.ip_proto == FlowKey::IPPROTO_ICMPV6 && (key.l4_src == 135 || key.l4_src == 136);
            if let (Some(l4), true) = (lay.l4, nd) {
                ext.nd_target = arr(frame, l4 + 8)?;
                if let Some(o) = arr::<8>(frame, l4 + 24) {
                    if o[0] == 1 && o[1] == 1 && key.l4_src == 135 {
                        ext.sha.copy_from_slice(&o[2..]);
                    } else if o[0] == 2 && o[1] == 1 && key.l4_src == 136 {
                        ext.tha.copy_from_slice(&o[2..]);
                    }
                }
            }
        }
        L3Kind::Arp => {
            let h: [u8; 8] = arr(frame, lay.l3)?;
            if h[..2] == [0, 1] && h[4] == 6 && h[5] == 4 {
                ext.sha = arr(frame, lay.l3 + 8)?;
                ext.tha = arr(frame, lay.l3 + 18)?;
            }
        }
        _ => {}
    }
    Some((FullKey { key, ext }, lay))
}

/// CRC32c (SCTP's checksum: reflected, initial and final xor all ones).
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82f6_3b78 & 0u32.wrapping_sub(crc & 1));
        }
    }
    !crc
}

/// Recompute the SCTP CRC32c of the packet at `l4` (end from the IP
/// header).
fn sctp_crc(frame: &mut [u8], lay: &Layout, l4: usize) {
    let end = match lay.kind {
        L3Kind::Ipv4 => be16(frame, lay.l3 + 2).map(|t| lay.l3 + usize::from(t)),
        L3Kind::Ipv6 => be16(frame, lay.l3 + 4).map(|t| lay.l3 + 40 + usize::from(t)),
        _ => None,
    };
    let Some(end) = end.filter(|e| *e <= frame.len() && *e >= l4 + 12) else {
        return;
    };
    frame[l4 + 8..l4 + 12].copy_from_slice(&[0; 4]);
    let c = crc32c(&frame[l4..end]);
    frame[l4 + 8..l4 + 12].copy_from_slice(&c.to_le_bytes());
}

/// The checksum over the L4 header at `l4` and whether it covers the
/// pseudo-header (TCP, UDP unless zero, ICMP, ICMPv6).
fn l4_sum_at(frame: &[u8], proto: u8, l4: usize) -> Option<(usize, bool)> {
    match proto {
        FlowKey::IPPROTO_TCP | FlowKey::IPPROTO_UDP => Some((l4_csum_at(frame, proto, l4)?, true)),
        FlowKey::IPPROTO_ICMPV6 => Some((l4 + 2, true)),
        FlowKey::IPPROTO_ICMP => Some((l4 + 2, false)),
        _ => None,
    }
}

/// Replace `new.len()` bytes at `at`, fixing the L4 checksum (when `l4`
/// covers them: `pseudo` for pseudo-header fields) incrementally.
fn put_l4(
    frame: &mut [u8],
    k: &FlowKey,
    lay: &Layout,
    at: usize,
    new: &[u8],
    pseudo: bool,
) -> Option<()> {
    let old = frame.get(at..at + new.len())?.to_vec();
    frame[at..at + new.len()].copy_from_slice(new);
    if let Some(l4) = lay.l4 {
        if let Some((c, covers)) = l4_sum_at(frame, k.ip_proto, l4) {
            if !pseudo || covers {
                csum_replace(frame, c, &old, new);
            }
        }
    }
    Some(())
}

/// Apply any datapath action but outputs and groups to `frame` (a
/// PACKET_OUT's, or a packet the userspace pipeline runs), with checksum
/// fix-ups, as the datapath does. A frame without the header an action is
/// about is left alone.
pub fn apply(frame: &mut Vec<u8>, a: &Action, regs: &mut Regs) -> Applied {
    use ActionKind as K;
    let Some(kind) = a.kind() else {
        return Applied::Done;
    };
    match kind {
        K::SetEthSrc
        | K::SetEthDst
        | K::SetIpv4Src
        | K::SetIpv4Dst
        | K::DecTtl
        | K::SetL4Src
        | K::SetL4Dst => {
            let sctp = flow_key(frame, 0)
                .is_some_and(|(k, l)| k.ip_proto == FlowKey::IPPROTO_SCTP && l.l4.is_some());
            if sctp && matches!(kind, K::SetL4Src | K::SetL4Dst) {
                if let Some((_, lay)) = flow_key(frame, 0) {
                    if let Some(l4) = lay.l4 {
                        let at = l4 + if kind == K::SetL4Src { 0 } else { 2 };
                        frame[at..at + 2].copy_from_slice(&(a.arg as u16).to_be_bytes());
                        sctp_crc(frame, &lay, l4);
                    }
                }
                return Applied::Done;
            }
            rewrite(frame, a)
        }
        K::SetTunnelId => {
            regs.tunnel_id = u64::from_le_bytes(a.data());
            Applied::Done
        }
        _ => {
            if kind == K::DecMplsTtl && mpls_ttl_expired(frame) {
                return Applied::TtlExpired;
            }
            let _ = apply_rare(frame, a);
            Applied::Done
        }
    }
}

/// True when a dec_mpls_ttl found the MPLS TTL at 0 or 1 (it leaves it).
fn mpls_ttl_expired(frame: &[u8]) -> bool {
    flow_key(frame, 0).is_some_and(|(k, l)| l.kind == L3Kind::Mpls && k.ipv4_src[3] <= 1)
}

/// The actions [`rewrite`] does not know; None when the frame does not
/// have what they need.
fn apply_rare(frame: &mut Vec<u8>, a: &Action) -> Option<()> {
    use ActionKind as K;
    let (k, lay) = flow_key(frame, 0)?;
    let l3 = lay.l3;
    let tagged = is_vlan(be16(frame, 12)?);
    match a.kind()? {
        K::SetIpTos => {
            let (v, m) = (a.data()[0], a.data()[1]);
            match lay.kind {
                L3Kind::Ipv4 => {
                    frame[l3 + 1] = (frame[l3 + 1] & !m) | (v & m);
                    ip_checksum(frame, l3);
                }
                L3Kind::Ipv6 => {
                    let tc = (frame[l3] << 4) | (frame[l3 + 1] >> 4);
                    let tc = (tc & !m) | (v & m);
                    frame[l3] = (frame[l3] & 0xf0) | (tc >> 4);
                    frame[l3 + 1] = (tc << 4) | (frame[l3 + 1] & 0x0f);
                }
                _ => {}
            }
        }
        K::SetIpv6Label if lay.kind == L3Kind::Ipv6 => {
            let w = (u32::from_be_bytes(arr(frame, l3)?) & 0xfff0_0000) | (a.arg & 0x000f_ffff);
            frame[l3..l3 + 4].copy_from_slice(&w.to_be_bytes());
        }
        K::SetVlanVid | K::SetVlanPcp if tagged => {
            let (v, m) = if a.kind() == Some(K::SetVlanVid) {
                (a.arg as u16 & 0x0fff, 0x0fff)
            } else {
                ((a.arg as u16 & 7) << 13, 0xe000)
            };
            let tci = (be16(frame, 14)? & !m) | v;
            frame[14..16].copy_from_slice(&tci.to_be_bytes());
        }
        K::PushVlan => {
            let tci = if k.vlan_tci & VLAN_PRESENT != 0 {
                k.vlan_tci & !VLAN_PRESENT
            } else {
                0
            };
            let mut tag = (a.arg as u16).to_be_bytes().to_vec();
            tag.extend_from_slice(&tci.to_be_bytes());
            frame.splice(12..12, tag);
        }
        K::PopVlan if tagged => {
            frame.drain(12..16);
        }
        K::PushMpls => {
            let lse: u32 = match lay.kind {
                L3Kind::Mpls => u32::from_be_bytes(k.ipv4_src) & !0x0100,
                L3Kind::Ipv4 => 0x0100 | u32::from(*frame.get(l3 + 8)?),
                L3Kind::Ipv6 => 0x0100 | u32::from(*frame.get(l3 + 7)?),
                _ => 0x0100 | 64,
            };
            frame.splice(l3..l3, lse.to_be_bytes());
            frame[l3 - 2..l3].copy_from_slice(&(a.arg as u16).to_be_bytes());
        }
        K::PopMpls if lay.kind == L3Kind::Mpls => {
            frame.drain(l3..l3 + 4);
            frame[l3 - 2..l3].copy_from_slice(&(a.arg as u16).to_be_bytes());
        }
        k2 @ (K::SetMplsLabel | K::SetMplsTc | K::SetMplsBos | K::SetMplsTtl | K::DecMplsTtl)
            if lay.kind == L3Kind::Mpls =>
        {
            let lse = u32::from_be_bytes(arr(frame, l3)?);
            let (v, m) = match k2 {
                K::SetMplsLabel => (a.arg << 12, 0xffff_f000),
                K::SetMplsTc => ((a.arg & 7) << 9, 0x0e00),
                K::SetMplsBos => ((a.arg & 1) << 8, 0x0100),
                K::SetMplsTtl => (a.arg & 0xff, 0xff),
                _ => {
                    let ttl = lse & 0xff;
                    if ttl <= 1 {
                        return None;
                    }
                    (ttl - 1, 0xff)
                }
            };
            let lse = (lse & !m) | (v & m);
            frame[l3..l3 + 4].copy_from_slice(&lse.to_be_bytes());
        }
        k2 @ (K::CopyTtlOut | K::CopyTtlIn)
            if lay.kind == L3Kind::Mpls && frame[l3 + 2] & 1 != 0 =>
        {
            let ip = l3 + 4;
            let (at, v4) = match frame.get(ip)? >> 4 {
                4 => (ip + 8, true),
                6 => (ip + 7, false),
                _ => return None,
            };
            let ip_ttl = *frame.get(at)?;
            if k2 == K::CopyTtlOut {
                frame[l3 + 3] = ip_ttl;
            } else {
                frame[at] = frame[l3 + 3];
                if v4 {
                    ip_checksum(frame, ip);
                }
            }
        }
        k2 @ (K::SetIpv6Src | K::SetIpv6Dst) if lay.kind == L3Kind::Ipv6 => {
            let h = (a.half & 1) as usize * 8;
            let at = l3 + if k2 == K::SetIpv6Src { 8 } else { 24 } + h;
            put_l4(frame, &k, &lay, at, &a.data(), true)?;
        }
        K::SetNdTarget => {
            let l4 = lay.l4?;
            if k.ip_proto == FlowKey::IPPROTO_ICMPV6 && (k.l4_src == 135 || k.l4_src == 136) {
                let at = l4 + 8 + (a.half & 1) as usize * 8;
                put_l4(frame, &k, &lay, at, &a.data(), false)?;
            }
        }
        k2 @ (K::SetNdSll | K::SetNdTll) => {
            let l4 = lay.l4?;
            let (want, opt) = if k2 == K::SetNdSll {
                (135, 1)
            } else {
                (136, 2)
            };
            let o: [u8; 2] = arr(frame, l4 + 24)?;
            if k.ip_proto == FlowKey::IPPROTO_ICMPV6 && k.l4_src == want && o == [opt, 1] {
                put_l4(frame, &k, &lay, l4 + 26, &a.mac(), false)?;
            }
        }
        k2 @ (K::SetArpOp | K::SetArpSha | K::SetArpSpa | K::SetArpTha | K::SetArpTpa)
            if lay.kind == L3Kind::Arp =>
        {
            let ipv4_arp = arr::<6>(frame, l3)? == [0, 1, 8, 0, 6, 4];
            let (at, bytes): (usize, Vec<u8>) = match k2 {
                K::SetArpOp => (l3 + 6, (a.arg as u16).to_be_bytes().to_vec()),
                _ if !ipv4_arp => return None,
                K::SetArpSha => (l3 + 8, a.mac().to_vec()),
                K::SetArpSpa => (l3 + 14, a.ipv4().to_vec()),
                K::SetArpTha => (l3 + 18, a.mac().to_vec()),
                _ => (l3 + 24, a.ipv4().to_vec()),
            };
            frame.get_mut(at..at + bytes.len())?.copy_from_slice(&bytes);
        }
        k2 @ (K::SetIcmpType | K::SetIcmpCode) => {
            let l4 = lay.l4?;
            if k.ip_proto == FlowKey::IPPROTO_ICMP || k.ip_proto == FlowKey::IPPROTO_ICMPV6 {
                let at = l4 + usize::from(k2 == K::SetIcmpCode);
                let mut word = [frame[l4], frame[l4 + 1]];
                word[at - l4] = a.arg as u8;
                let old = [frame[l4], frame[l4 + 1]];
                frame[l4..l4 + 2].copy_from_slice(&word);
                csum_replace(frame, l4 + 2, &old, &word);
            }
        }
        K::SetNwTtl => match lay.kind {
            L3Kind::Ipv4 => {
                frame[l3 + 8] = a.arg as u8;
                ip_checksum(frame, l3);
            }
            L3Kind::Ipv6 => frame[l3 + 7] = a.arg as u8,
            _ => {}
        },
        _ => {}
    }
    Some(())
}

/// If `frame` is an ARP request for IPv4, the reply that says the target
/// address is at `mac`.
pub fn arp_reply(frame: &[u8], mac: [u8; 6]) -> Option<Vec<u8>> {
    let (k, lay) = flow_key(frame, 0)?;
    if k.eth_type != FlowKey::ETH_TYPE_ARP || k.arp_op != 1 || k.vlan_tci != 0 {
        return None;
    }
    let l3 = lay.l3;
    let h: [u8; 6] = arr(frame, l3)?;
    if h != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    let sha: [u8; 6] = arr(frame, l3 + 8)?;
    let spa: [u8; 4] = arr(frame, l3 + 14)?;
    let tpa: [u8; 4] = arr(frame, l3 + 24)?;
    if tpa == spa {
        // Gratuitous ARP: nothing to answer.
        return None;
    }
    let mut r = Vec::with_capacity(42);
    r.extend_from_slice(&sha);
    r.extend_from_slice(&mac);
    r.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 2]);
    r.extend_from_slice(&mac);
    r.extend_from_slice(&tpa);
    r.extend_from_slice(&sha);
    r.extend_from_slice(&spa);
    Some(r)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An Ethernet/IPv4/UDP or TCP frame with valid checksums.
    pub(crate) fn ipv4_frame(
        proto: u8,
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
    ) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 8, 0];
        let l4len = if proto == 6 { 20 } else { 8 };
        let payload = b"hello";
        let total = 20 + l4len + payload.len();
        f.extend_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            1,
            0,
            0,
            64,
            proto,
            0,
            0,
        ]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        let l4 = f.len();
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        if proto == 6 {
            f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        } else {
            f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
        }
        f.extend_from_slice(payload);
        ip_checksum(&mut f, 14);
        let c = l4_full_checksum(&f, 14);
        let at = if proto == 6 { l4 + 16 } else { l4 + 6 };
        f[at..at + 2].copy_from_slice(&c.to_be_bytes());
        f
    }

    /// The L4 checksum computed from scratch (pseudo-header included).
    fn l4_full_checksum(f: &[u8], l3: usize) -> u16 {
        let proto = f[l3 + 9];
        let l4 = l3 + 20;
        let len = f.len() - l4;
        let mut g = f.to_vec();
        let at = if proto == 6 { l4 + 16 } else { l4 + 6 };
        g[at] = 0;
        g[at + 1] = 0;
        let mut sum = csum_add(0, &f[l3 + 12..l3 + 20]);
        sum += u32::from(proto) + len as u32;
        sum = csum_add(sum, &g[l4..]);
        !fold(sum)
    }

    fn valid(f: &[u8]) -> bool {
        let ipok = fold(csum_add(0, &f[14..34])) == 0xffff;
        let proto = f[23];
        let at = if proto == 6 { 34 + 16 } else { 34 + 6 };
        ipok && u16::from_be_bytes([f[at], f[at + 1]]) == l4_full_checksum(f, 14)
    }

    #[test]
    fn keys_match_what_the_datapath_extracts() {
        let f = ipv4_frame(6, [10, 0, 0, 1], [10, 0, 0, 2], 1234, 80);
        let (k, lay) = flow_key(&f, 3).unwrap();
        assert_eq!(k.in_port, 3);
        assert_eq!(
            (k.eth_type, k.ip_proto, k.l4_src, k.l4_dst),
            (0x0800, 6, 1234, 80)
        );
        assert_eq!(k.ipv4_dst, [10, 0, 0, 2]);
        assert_eq!(lay.l4, Some(34));
        assert!(flow_key(&f[..20], 1).is_none());
        assert!(flow_key(&f[..36], 1).is_none());
    }

    #[test]
    fn rewrites_keep_checksums_valid() {
        for proto in [6, 17] {
            let mut f = ipv4_frame(proto, [10, 0, 0, 1], [10, 0, 0, 2], 1234, 80);
            assert!(valid(&f));
            for a in [
                Action::set_ipv4_src([172, 16, 9, 200]),
                Action::set_ipv4_dst([192, 168, 77, 1]),
                Action::set_l4_src(40000),
                Action::set_l4_dst(8080),
                Action::dec_ttl(),
                Action::set_eth_dst([2, 0, 0, 0, 0, 9]),
            ] {
                assert_eq!(rewrite(&mut f, &a), Applied::Done);
                assert!(valid(&f), "{proto} {a:?}");
            }
            let (k, _) = flow_key(&f, 0).unwrap();
            assert_eq!((k.ipv4_src, k.l4_dst), ([172, 16, 9, 200], 8080));
            assert_eq!(f[22], 63);
            f[22] = 1;
            assert_eq!(rewrite(&mut f, &Action::dec_ttl()), Applied::TtlExpired);
        }
    }

    #[test]
    fn partial_checksums_are_completed() {
        for proto in [6, 17] {
            let good = ipv4_frame(proto, [10, 0, 0, 1], [10, 0, 0, 2], 1234, 80);
            let mut f = good.clone();
            assert!(!complete_l4_checksum(&mut f));
            let at = if proto == 6 { 34 + 16 } else { 34 + 6 };
            f[at] = 0x12;
            f[at + 1] = 0x34;
            assert!(complete_l4_checksum(&mut f));
            assert_eq!(f, good);
        }
    }

    /// An Ethernet/IPv6/TCP or UDP frame with flow label `label` and a
    /// valid L4 checksum (computed here independently of the code under
    /// test: the RFC 8200 pseudo-header, then the segment).
    fn ipv6_frame(proto: u8, label: u32) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
        let mut l4 = vec![0x30, 0x39, 0, 80];
        if proto == 6 {
            l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        } else {
            l4.extend_from_slice(&[0, 0, 0, 0]);
        }
        l4.extend_from_slice(b"hello, v6");
        if proto == 17 {
            let n = l4.len() as u16;
            l4[4..6].copy_from_slice(&n.to_be_bytes());
        }
        let src = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let dst = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src);
        pseudo.extend_from_slice(&dst);
        pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto]);
        pseudo.extend_from_slice(&l4);
        let mut sum = 0u32;
        for w in pseudo.chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let c = !(sum as u16);
        let at = if proto == 6 { 16 } else { 6 };
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&(0x6000_0000 | (label & 0xf_ffff)).to_be_bytes());
        f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        f.extend_from_slice(&[proto, 64]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&l4);
        f
    }

    /// IPv6 frames punted with a partial checksum get the real one. The
    /// segment's end used to be read from the flow label's low 16 bits
    /// instead of the payload length: with a label of 0 nothing was ever
    /// completed, and a label below the payload length "completed" a valid
    /// checksum over a cut segment, corrupting it.
    #[test]
    fn partial_ipv6_checksums_are_completed_whatever_the_flow_label() {
        for proto in [6, 17] {
            for label in [0, 0x1_0010, 0x2_0020, 0xf_ffff] {
                let good = ipv6_frame(proto, label);
                let mut f = good.clone();
                assert!(!complete_l4_checksum(&mut f), "{proto} {label:#x}");
                assert_eq!(f, good, "a valid checksum stays: {proto} {label:#x}");
                let at = 14 + 40 + if proto == 6 { 16 } else { 6 };
                f[at] = 0x12;
                f[at + 1] = 0x34;
                assert!(complete_l4_checksum(&mut f), "{proto} {label:#x}");
                assert_eq!(f, good, "{proto} {label:#x}");
            }
        }
        // A payload length past the end of the frame: left alone.
        let mut f = ipv6_frame(6, 0);
        f[18..20].copy_from_slice(&0xffffu16.to_be_bytes());
        let before = f.clone();
        assert!(!complete_l4_checksum(&mut f));
        assert_eq!(f, before);
    }

    /// xorshift64: the same "random" frames and actions on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn action(&mut self) -> Action {
            Action {
                kind: self.below(usize::from(daolinet_common::ACTION_KINDS) + 2) as u16,
                half: (self.next() & 1) as u16,
                arg: self.next() as u32,
                arg_hi: self.next() as u32,
            }
        }
    }

    /// One frame of every layout the parser and the actions know (valid
    /// before mangling; checksums do not matter here).
    pub(crate) fn templates() -> Vec<Vec<u8>> {
        let v4 = ipv4_frame(6, [10, 0, 0, 1], [10, 0, 0, 2], 1234, 80);
        let udp4 = ipv4_frame(17, [10, 0, 0, 1], [10, 0, 0, 2], 1234, 53);
        let mut out = vec![
            v4.clone(),
            udp4.clone(),
            ipv6_frame(6, 0x1_2345),
            ipv6_frame(17, 0),
        ];
        // ICMP, SCTP, a later fragment.
        for (proto, frag) in [(1u8, 0u16), (132, 0), (6, 0x0010)] {
            let mut f = udp4.clone();
            f[23] = proto;
            f[20..22].copy_from_slice(&frag.to_be_bytes());
            out.push(f);
        }
        // IPv6 neighbour solicitation with a source link-layer option.
        let mut ns = ipv6_frame(17, 0)[..54].to_vec();
        let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&[0xfd; 16]);
        icmp.extend_from_slice(&[1, 1, 2, 0, 0, 0, 0, 9]);
        ns[18..20].copy_from_slice(&(icmp.len() as u16).to_be_bytes());
        ns[20] = 58;
        ns.extend_from_slice(&icmp);
        out.push(ns);
        // IPv6 TCP behind a hop-by-hop header, and a later IPv6 fragment.
        for ext in [[6, 0, 1, 4, 0, 0, 0, 0], [6, 0, 0, 8, 0, 0, 0, 1]] {
            let mut f = ipv6_frame(6, 0);
            let l4 = f.split_off(54);
            f[20] = if ext[3] == 8 { 44 } else { 0 };
            f.extend_from_slice(&ext);
            f.extend_from_slice(&l4);
            let n = (f.len() - 54) as u16;
            f[18..20].copy_from_slice(&n.to_be_bytes());
            out.push(f);
        }
        // An ARP request.
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 10, 0, 0, 1]);
        arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
        out.push(arp);
        // One and two VLAN tags.
        let mut one = v4.clone();
        one.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
        let mut two = one.clone();
        two.splice(12..12, [0x88, 0xa8, 0x00, 0x07]);
        out.extend([one, two]);
        // MPLS, bottom of stack, over IPv4.
        let mut mpls = v4[..12].to_vec();
        mpls.extend_from_slice(&[0x88, 0x47, 0, 1, 1, 64]);
        mpls.extend_from_slice(&v4[14..]);
        out.push(mpls);
        out
    }

    /// Everything userspace does with a frame, then `a` applied to it.
    fn exercise(f: &mut Vec<u8>, a: &Action) {
        let _ = flow_key(f, 1);
        let _ = full_key(f, 1, &Regs::default());
        let _ = arp_reply(f, [2, 0, 0, 0, 0, 9]);
        let len = f.len();
        let structural = matches!(
            a.kind(),
            Some(
                ActionKind::PushVlan
                    | ActionKind::PopVlan
                    | ActionKind::PushMpls
                    | ActionKind::PopMpls
            )
        );
        let _ = apply(f, a, &mut Regs::default());
        if !structural {
            assert_eq!(f.len(), len, "{a:?}");
        }
        let _ = rewrite(f, a);
        let _ = complete_l4_checksum(f);
    }

    /// PACKET_OUT data comes from the controller and punted frames from
    /// containers: every action (and unknown kinds) on every layout cut at
    /// every length, then on frames with mangled header bytes, must leave
    /// the agent running (no out-of-bounds slice, no overflow).
    #[test]
    fn any_action_on_any_frame_never_panics() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let frames = templates();
        for t in &frames {
            for cut in 0..=t.len() {
                for kind in 0..daolinet_common::ACTION_KINDS + 2 {
                    let mut a = rng.action();
                    a.kind = kind;
                    exercise(&mut t[..cut].to_vec(), &a);
                }
            }
        }
        for _ in 0..50_000 {
            let mut f = frames[rng.below(frames.len())].clone();
            for _ in 0..rng.below(6) {
                let i = rng.below(f.len().min(80));
                f[i] = rng.next() as u8;
            }
            f.truncate(rng.below(f.len() + 1));
            for _ in 0..1 + rng.below(4) {
                let a = rng.action();
                exercise(&mut f, &a);
            }
        }
    }

    #[test]
    fn arp_requests_get_the_gateway_mac() {
        let mut req = vec![0xff; 6];
        req.extend_from_slice(&[2, 0, 0, 0, 0, 0xa, 8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
        req.extend_from_slice(&[2, 0, 0, 0, 0, 0xa, 10, 1, 0, 2]);
        req.extend_from_slice(&[0; 6]);
        req.extend_from_slice(&[10, 1, 0, 1]);
        let gw = [2, 0xd1, 0, 0, 0, 1];
        let r = arp_reply(&req, gw).unwrap();
        let (k, _) = flow_key(&r, 0).unwrap();
        assert_eq!(
            (k.arp_op, k.ipv4_src, k.ipv4_dst),
            (2, [10, 1, 0, 1], [10, 1, 0, 2])
        );
        assert_eq!(k.eth_src, gw);
        assert_eq!(k.eth_dst, [2, 0, 0, 0, 0, 0xa]);
        assert!(arp_reply(&r, gw).is_none());
        assert!(arp_reply(&req[..30], gw).is_none());
    }
}
