//! Frames for the datapath tests, built byte by byte, and checks of their
//! checksums by full recomputation (independent of the datapath's
//! incremental fix-ups): the Internet checksum for IPv4, TCP, UDP, ICMP
//! and ICMPv6, CRC32c for SCTP.

/// Ethernet type of IPv4.
pub const ETH_IPV4: u16 = 0x0800;
/// Ethernet type of IPv6.
pub const ETH_IPV6: u16 = 0x86dd;
/// Ethernet type of ARP.
pub const ETH_ARP: u16 = 0x0806;
/// Ethernet type of MPLS (unicast).
pub const ETH_MPLS: u16 = 0x8847;
/// Ethernet type of an 802.1Q tag.
pub const ETH_VLAN: u16 = 0x8100;

/// One's-complement sum of `data` (16-bit big-endian words, an odd byte
/// padded with zero) added to `acc`, folded to 16 bits, not inverted.
pub fn ones_sum(data: &[u8], mut acc: u32) -> u32 {
    for chunk in data.chunks(2) {
        let w = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        acc += u32::from(w);
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// The Internet checksum of `data`.
pub fn csum(data: &[u8]) -> u16 {
    !(ones_sum(data, 0) as u16)
}

/// CRC32c (Castagnoli, reflected, init and final xor 0xffffffff), as SCTP
/// uses it (RFC 4960 appendix B), computed bit by bit.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An Ethernet frame.
pub fn eth(dst: [u8; 6], src: [u8; 6], eth_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(14 + payload.len());
    p.extend_from_slice(&dst);
    p.extend_from_slice(&src);
    p.extend_from_slice(&eth_type.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// `frame` with an 802.1Q tag (`tci`) inserted after the MAC addresses.
pub fn tagged(frame: &[u8], tci: u16) -> Vec<u8> {
    let mut p = frame[..12].to_vec();
    p.extend_from_slice(&ETH_VLAN.to_be_bytes());
    p.extend_from_slice(&tci.to_be_bytes());
    p.extend_from_slice(&frame[12..]);
    p
}

/// An IPv4 header (no options, DF, valid checksum) followed by `payload`.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, ttl: u8, tos: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut h = vec![
        0x45,
        tos,
        (total >> 8) as u8,
        total as u8,
        0x12,
        0x34,
        0x40,
        0,
        ttl,
        proto,
        0,
        0,
    ];
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = csum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// An IPv6 header followed by `payload` (no extension headers).
pub fn ipv6(
    src: [u8; 16],
    dst: [u8; 16],
    next: u8,
    hop_limit: u8,
    tclass: u8,
    label: u32,
    payload: &[u8],
) -> Vec<u8> {
    let vtc = (6u32 << 28) | (u32::from(tclass) << 20) | (label & 0x000f_ffff);
    let mut h = vtc.to_be_bytes().to_vec();
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.push(next);
    h.push(hop_limit);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(payload);
    h
}

/// The pseudo-header sum for an L4 segment of `len` bytes: IPv4 or IPv6
/// addresses (`addrs` is source then destination).
fn pseudo_sum(addrs: &[u8], proto: u8, len: usize) -> u32 {
    let mut p = addrs.to_vec();
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, proto]);
    ones_sum(&p, 0)
}

/// Offset of the checksum in an L4 header of protocol `proto`.
fn csum_off(proto: u8) -> Option<usize> {
    match proto {
        6 => Some(16),
        17 => Some(6),
        1 | 58 => Some(2),
        _ => None,
    }
}

/// Fill in the checksum of an L4 `segment` (TCP, UDP, ICMP, ICMPv6, SCTP)
/// carried between `addrs` (source then destination, 4 or 16 bytes each).
pub fn fill_l4_csum(addrs: &[u8], proto: u8, segment: &mut [u8]) {
    if proto == 132 {
        segment[8..12].copy_from_slice(&[0; 4]);
        let c = crc32c(segment);
        // SCTP stores the CRC in little-endian byte order (RFC 4960 B).
        segment[8..12].copy_from_slice(&c.to_le_bytes());
        return;
    }
    let Some(at) = csum_off(proto) else { return };
    segment[at..at + 2].copy_from_slice(&[0, 0]);
    let acc = if proto == 1 {
        0
    } else {
        pseudo_sum(addrs, proto, segment.len())
    };
    let mut c = !(ones_sum(segment, acc) as u16);
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    segment[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// A TCP header (ports, ACK, window) and `data`, checksum zero.
pub fn tcp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0x20, 0x00, 0, 0, 0, 0]);
    s.extend_from_slice(data);
    s
}

/// A UDP header and `data`, checksum zero.
pub fn udp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(data);
    s
}

/// An SCTP common header (verification tag 1) and `data` (chunks), CRC zero.
pub fn sctp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
    s.extend_from_slice(data);
    s
}

/// An ICMP/ICMPv6 header of `typ`/`code` and `data` (the rest of the
/// message after the checksum), checksum zero.
pub fn icmp(typ: u8, code: u8, data: &[u8]) -> Vec<u8> {
    let mut s = vec![typ, code, 0, 0];
    s.extend_from_slice(data);
    s
}

/// An Ethernet/IPv4 frame carrying `segment` of protocol `proto`, with
/// every checksum filled in.
pub fn ipv4_frame(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    ttl: u8,
    tos: u8,
    segment: &[u8],
) -> Vec<u8> {
    let mut seg = segment.to_vec();
    let mut addrs = src.to_vec();
    addrs.extend_from_slice(&dst);
    fill_l4_csum(&addrs, proto, &mut seg);
    eth(
        macs.1,
        macs.0,
        ETH_IPV4,
        &ipv4(src, dst, proto, ttl, tos, &seg),
    )
}

/// An Ethernet/IPv6 frame carrying `segment` of protocol `next`, with the
/// L4 checksum filled in.
#[allow(clippy::too_many_arguments)]
pub fn ipv6_frame(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 16],
    dst: [u8; 16],
    next: u8,
    hop_limit: u8,
    tclass: u8,
    label: u32,
    segment: &[u8],
) -> Vec<u8> {
    let mut seg = segment.to_vec();
    let mut addrs = src.to_vec();
    addrs.extend_from_slice(&dst);
    fill_l4_csum(&addrs, next, &mut seg);
    eth(
        macs.1,
        macs.0,
        ETH_IPV6,
        &ipv6(src, dst, next, hop_limit, tclass, label, &seg),
    )
}

/// An MPLS label stack entry.
pub fn lse(label: u32, tc: u8, bos: bool, ttl: u8) -> [u8; 4] {
    ((label << 12) | (u32::from(tc & 7) << 9) | (u32::from(bos) << 8) | u32::from(ttl))
        .to_be_bytes()
}

/// Offset of the L3 header of `frame` (after up to two VLAN tags) and its
/// Ethernet type.
pub fn l3_of(frame: &[u8]) -> (usize, u16) {
    let mut off = 12;
    let mut t = u16::from_be_bytes([frame[off], frame[off + 1]]);
    while t == ETH_VLAN || t == 0x88a8 {
        off += 4;
        t = u16::from_be_bytes([frame[off], frame[off + 1]]);
    }
    (off + 2, t)
}

/// Check every checksum of an Ethernet IPv4 or IPv6 frame (possibly
/// tagged) by full recomputation: the IPv4 header checksum, and the TCP,
/// UDP (unless zero), ICMP, ICMPv6 or SCTP checksum. Panics with the name
/// of the wrong one (a test helper: a panic is a failed test).
#[allow(clippy::panic)]
pub fn assert_checksums_ok(frame: &[u8]) {
    let (l3, t) = l3_of(frame);
    let ip = &frame[l3..];
    let (addrs, proto, seg): (Vec<u8>, u8, &[u8]) = match t {
        ETH_IPV4 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            assert_eq!(
                ones_sum(&ip[..ihl], 0),
                0xffff,
                "IPv4 header checksum is wrong"
            );
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            (ip[12..20].to_vec(), ip[9], &ip[ihl..total])
        }
        ETH_IPV6 => {
            let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            (ip[8..40].to_vec(), ip[6], &ip[40..40 + len])
        }
        other => panic!("not an IP frame: Ethernet type {other:#06x}"),
    };
    let mut s = seg.to_vec();
    if proto == 132 {
        let got = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
        fill_l4_csum(&addrs, proto, &mut s);
        let want = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
        assert_eq!(got, want, "SCTP CRC32c is wrong");
        return;
    }
    let Some(at) = csum_off(proto) else { return };
    let got = u16::from_be_bytes([s[at], s[at + 1]]);
    if proto == 17 && got == 0 {
        return;
    }
    fill_l4_csum(&addrs, proto, &mut s);
    let want = u16::from_be_bytes([s[at], s[at + 1]]);
    assert_eq!(got, want, "checksum of IP protocol {proto} is wrong");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_rfc_3720_check_value() {
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn built_frames_pass_their_own_checks() {
        let macs = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        for (proto, seg) in [
            (6, tcp(1, 2, b"abc")),
            (17, udp(1, 2, b"abcd")),
            (132, sctp(1, 2, &[0; 16])),
            (1, icmp(8, 0, &[0, 1, 0, 2])),
        ] {
            let f = ipv4_frame(macs, [10, 0, 0, 1], [10, 0, 0, 2], proto, 64, 0, &seg);
            assert_checksums_ok(&f);
            assert_checksums_ok(&tagged(&f, 0x0064));
        }
        let a6 = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let b6 = [0x20, 0x01, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        for (proto, seg) in [
            (6, tcp(1, 2, b"abc")),
            (17, udp(1, 2, b"x")),
            (58, icmp(128, 0, &[0, 1, 0, 1])),
            (132, sctp(5, 6, &[1; 8])),
        ] {
            assert_checksums_ok(&ipv6_frame(macs, a6, b6, proto, 64, 0, 0, &seg));
        }
    }
}
