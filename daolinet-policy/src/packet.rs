//! A small, fallible parser and emitter for the frames the controller sees:
//! Ethernet II carrying ARP or IPv4 (with TCP/UDP ports). Anything it does
//! not understand is reported, never a panic.

use std::net::Ipv4Addr;

use crate::addr::MacAddr;

use super::flow::{ETH_TYPE_ARP, ETH_TYPE_IPV4};

/// Why a frame could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Shorter than its headers say.
    #[error("truncated {0} header")]
    Truncated(&'static str),
    /// A header field has a value we do not handle.
    #[error("unsupported {0}")]
    Unsupported(&'static str),
}

/// An ARP packet (Ethernet/IPv4 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    /// Opcode (1 request, 2 reply).
    pub op: u16,
    /// Sender hardware address.
    pub sha: MacAddr,
    /// Sender protocol address.
    pub spa: Ipv4Addr,
    /// Target hardware address.
    pub tha: MacAddr,
    /// Target protocol address.
    pub tpa: Ipv4Addr,
}

/// The IPv4 header fields the policy uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4 {
    /// Source.
    pub src: Ipv4Addr,
    /// Destination.
    pub dst: Ipv4Addr,
    /// Protocol.
    pub proto: u8,
    /// Time to live.
    pub ttl: u8,
    /// TCP/UDP (source, destination) ports, when present in the first fragment.
    pub ports: Option<(u16, u16)>,
    /// Bytes after the transport ports (or after the IP header), kept so a
    /// re-emitted frame carries the same payload.
    pub payload: Vec<u8>,
}

/// The layer-3 content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L3 {
    /// ARP.
    Arp(Arp),
    /// IPv4.
    Ipv4(Ipv4),
    /// Another Ethernet type (kept for matching).
    Other,
}

/// A parsed frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Destination MAC.
    pub eth_dst: MacAddr,
    /// Source MAC.
    pub eth_src: MacAddr,
    /// Ethernet type.
    pub eth_type: u16,
    /// Content.
    pub l3: L3,
}

fn mac(b: &[u8]) -> MacAddr {
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[..6]);
    MacAddr(m)
}

fn ip(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

impl Packet {
    /// Parses a frame.
    pub fn parse(data: &[u8]) -> Result<Packet, PacketError> {
        Packet::parse_with(data, true)
    }

    /// Like [`Packet::parse`] but leaves the IPv4 payload empty (no copy):
    /// for deciding on a frame, which never reads it.
    pub fn parse_headers(data: &[u8]) -> Result<Packet, PacketError> {
        Packet::parse_with(data, false)
    }

    fn parse_with(data: &[u8], keep_payload: bool) -> Result<Packet, PacketError> {
        let eth = data.get(..14).ok_or(PacketError::Truncated("Ethernet"))?;
        let eth_type = be16(&eth[12..14]);
        let body = &data[14..];
        let l3 = match eth_type {
            0x8100 | 0x88a8 => return Err(PacketError::Unsupported("VLAN tag")),
            ETH_TYPE_ARP => {
                let a = body.get(..28).ok_or(PacketError::Truncated("ARP"))?;
                if be16(&a[0..2]) != 1 || be16(&a[2..4]) != ETH_TYPE_IPV4 || a[4] != 6 || a[5] != 4
                {
                    return Err(PacketError::Unsupported("ARP hardware/protocol type"));
                }
                L3::Arp(Arp {
                    op: be16(&a[6..8]),
                    sha: mac(&a[8..14]),
                    spa: ip(&a[14..18]),
                    tha: mac(&a[18..24]),
                    tpa: ip(&a[24..28]),
                })
            }
            ETH_TYPE_IPV4 => {
                let h = body.get(..20).ok_or(PacketError::Truncated("IPv4"))?;
                if h[0] >> 4 != 4 {
                    return Err(PacketError::Unsupported("IP version"));
                }
                let ihl = usize::from(h[0] & 0x0f) * 4;
                if ihl < 20 {
                    return Err(PacketError::Unsupported("IPv4 header length"));
                }
                let total = usize::from(be16(&h[2..4]));
                if total < ihl || body.len() < ihl {
                    return Err(PacketError::Truncated("IPv4"));
                }
                // Ethernet padding may follow the IP packet; a capture may cut it.
                let end = total.min(body.len());
                let l4 = &body[ihl..end];
                let proto = h[9];
                let first_fragment = be16(&h[6..8]) & 0x1fff == 0;
                let copy = |b: &[u8]| if keep_payload { b.to_vec() } else { Vec::new() };
                let (ports, payload) = if first_fragment && matches!(proto, 6 | 17) {
                    let p = l4.get(..4).ok_or(PacketError::Truncated("transport"))?;
                    (Some((be16(&p[0..2]), be16(&p[2..4]))), copy(&l4[4..]))
                } else {
                    (None, copy(l4))
                };
                L3::Ipv4(Ipv4 {
                    src: ip(&h[12..16]),
                    dst: ip(&h[16..20]),
                    proto,
                    ttl: h[8],
                    ports,
                    payload,
                })
            }
            _ => L3::Other,
        };
        Ok(Packet {
            eth_dst: mac(&eth[0..6]),
            eth_src: mac(&eth[6..12]),
            eth_type,
            l3,
        })
    }

    /// The IPv4 part, if any.
    pub fn ipv4(&self) -> Option<&Ipv4> {
        match &self.l3 {
            L3::Ipv4(i) => Some(i),
            _ => None,
        }
    }

    /// Emits the frame. IPv4 checksums are computed; transport checksums are
    /// left as they are in `payload` (the switch fixes them after rewrites).
    pub fn emit(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&self.eth_dst.0);
        out.extend_from_slice(&self.eth_src.0);
        out.extend_from_slice(&self.eth_type.to_be_bytes());
        match &self.l3 {
            L3::Arp(a) => {
                out.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
                out.extend_from_slice(&a.op.to_be_bytes());
                out.extend_from_slice(&a.sha.0);
                out.extend_from_slice(&a.spa.octets());
                out.extend_from_slice(&a.tha.0);
                out.extend_from_slice(&a.tpa.octets());
            }
            L3::Ipv4(i) => {
                let l4_len = i.payload.len() + if i.ports.is_some() { 4 } else { 0 };
                let total = u16::try_from(20 + l4_len).unwrap_or(u16::MAX);
                let mut h = [0u8; 20];
                h[0] = 0x45;
                h[2..4].copy_from_slice(&total.to_be_bytes());
                h[8] = i.ttl;
                h[9] = i.proto;
                h[12..16].copy_from_slice(&i.src.octets());
                h[16..20].copy_from_slice(&i.dst.octets());
                let sum = checksum(&h);
                h[10..12].copy_from_slice(&sum.to_be_bytes());
                out.extend_from_slice(&h);
                if let Some((s, d)) = i.ports {
                    out.extend_from_slice(&s.to_be_bytes());
                    out.extend_from_slice(&d.to_be_bytes());
                }
                out.extend_from_slice(&i.payload);
            }
            L3::Other => {}
        }
        out
    }

    /// An ARP reply answering `req` as `answer_mac`.
    pub fn arp_reply(req: &Arp, answer_mac: MacAddr) -> Packet {
        Packet {
            eth_dst: req.sha,
            eth_src: answer_mac,
            eth_type: ETH_TYPE_ARP,
            l3: L3::Arp(Arp {
                op: 2,
                sha: answer_mac,
                spa: req.tpa,
                tha: req.sha,
                tpa: req.spa,
            }),
        }
    }
}

/// A copy of `frame` with valid IPv4 and TCP/UDP checksums, for a
/// PACKET_OUT of a punted frame.
///
/// Switches punt frames whose checksums the sending NIC (or the kernel)
/// was to complete: Open vSwitch with userspace TSO punts a container's TCP
/// segment carrying only the pseudo-header sum (Linux's CHECKSUM_PARTIAL),
/// and such a frame sent back as it is gets dropped by the receiver. A
/// header checksum that does not verify is computed; a UDP checksum of zero
/// ("none") is left alone; fragments, truncated frames and anything but
/// IPv4 are copied unchanged.
pub fn with_checksums(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    complete_checksums(&mut f);
    f
}

fn complete_checksums(f: &mut [u8]) -> Option<()> {
    if be16(f.get(12..14)?) != ETH_TYPE_IPV4 {
        return None;
    }
    let l3 = 14;
    let ihl = usize::from(f.get(l3)? & 0x0f) * 4;
    let total = usize::from(be16(f.get(l3 + 2..l3 + 4)?));
    if ihl < 20 || total < ihl || f.len() < l3 + total {
        return None;
    }
    if checksum(&f[l3..l3 + ihl]) != 0 {
        f[l3 + 10..l3 + 12].fill(0);
        let c = checksum(&f[l3..l3 + ihl]);
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    }
    let frag = be16(&f[l3 + 6..l3 + 8]);
    if frag & 0x3fff != 0 {
        return None;
    }
    let proto = f[l3 + 9];
    let at = match proto {
        6 => 16,
        17 => 6,
        _ => return None,
    };
    let (l4, end) = (l3 + ihl, l3 + total);
    if l4 + at + 2 > end {
        return None;
    }
    let pseudo = {
        let mut p = [0u8; 12];
        p[..8].copy_from_slice(&f[l3 + 12..l3 + 20]);
        p[9] = proto;
        p[10..12].copy_from_slice(&u16::try_from(end - l4).ok()?.to_be_bytes());
        p
    };
    let field = l4 + at;
    if proto == 17 && f[field..field + 2] == [0, 0] {
        return None;
    }
    if l4_sum(&pseudo, &f[l4..end]) == 0xffff {
        return None;
    }
    f[field..field + 2].fill(0);
    let mut c = !l4_sum(&pseudo, &f[l4..end]);
    if c == 0 && proto == 17 {
        c = 0xffff;
    }
    f[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Some(())
}

/// The folded one's complement sum of a pseudo-header and a segment (0xffff
/// when a segment with its checksum verifies).
fn l4_sum(pseudo: &[u8; 12], seg: &[u8]) -> u16 {
    !checksum_pair(pseudo, seg)
}

/// The Internet checksum of `a` followed by `b` (`a` of even length).
fn checksum_pair(a: &[u8], b: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    for part in [a, b] {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u64::from(u16::from_be_bytes([*last, 0]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Internet checksum of a header.
pub(crate) fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        let w = match c {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 packet from 10.0.0.2 to 10.0.0.3 between two test MACs.
    fn ipv4(proto: u8, ports: (u16, u16), payload: &[u8]) -> Packet {
        Packet {
            eth_dst: "02:00:00:00:00:02".parse().unwrap(),
            eth_src: "02:00:00:00:00:01".parse().unwrap(),
            eth_type: ETH_TYPE_IPV4,
            l3: L3::Ipv4(Ipv4 {
                src: Ipv4Addr::new(10, 0, 0, 2),
                dst: Ipv4Addr::new(10, 0, 0, 3),
                proto,
                ttl: 64,
                ports: Some(ports),
                payload: payload.to_vec(),
            }),
        }
    }

    #[test]
    fn round_trips() {
        let p = ipv4(6, (1234, 80), &[1, 2, 3]);
        assert_eq!(Packet::parse(&p.emit()).unwrap(), p);
        let req = Arp {
            op: 1,
            sha: "02:00:00:00:00:01".parse().unwrap(),
            spa: Ipv4Addr::new(10, 0, 0, 2),
            tha: MacAddr::default(),
            tpa: Ipv4Addr::new(10, 0, 0, 1),
        };
        let r = Packet::arp_reply(&req, "02:00:00:00:00:aa".parse().unwrap());
        assert_eq!(Packet::parse(&r.emit()).unwrap(), r);
    }

    #[test]
    fn headers_only_parse_is_parse_without_the_payload() {
        let mut p = ipv4(17, (1, 2), b"data");
        let h = Packet::parse_headers(&p.emit()).unwrap();
        if let L3::Ipv4(i) = &mut p.l3 {
            i.payload.clear();
        }
        assert_eq!(h, p);
        assert!(Packet::parse_headers(&[0; 20]).is_ok());
        assert!(Packet::parse_headers(&[]).is_err());
    }

    /// A valid TCP or UDP frame (checksums computed the long way).
    fn valid(proto: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = ipv4(proto, (1234, 80), &[]).emit();
        let hdr = if proto == 6 { 16 } else { 4 };
        // Ports are in; the rest of the transport header, then the payload.
        f.extend(std::iter::repeat_n(0u8, hdr));
        if proto == 6 {
            f[14 + 20 + 12] = 0x50; // data offset 5
        }
        f.extend_from_slice(payload);
        let total = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[24..26].fill(0);
        let c = checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        if proto == 17 {
            let l = (f.len() - 34) as u16;
            f[38..40].copy_from_slice(&l.to_be_bytes());
        }
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[26..34]);
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&((f.len() - 34) as u16).to_be_bytes());
        pseudo.extend_from_slice(&f[34..]);
        let at = 34 + if proto == 6 { 16 } else { 6 };
        let c = checksum(&pseudo);
        f[at..at + 2].copy_from_slice(&c.to_be_bytes());
        f
    }

    #[test]
    fn partial_checksums_are_completed_for_packet_out() {
        for proto in [6u8, 17] {
            for payload in [&b""[..], b"x", b"hello world"] {
                let good = valid(proto, payload);
                assert_eq!(with_checksums(&good), good, "a valid frame is kept");
                // CHECKSUM_PARTIAL as Linux leaves it and OVS punts it: the
                // field holds the folded pseudo-header sum, not complemented.
                let at = 34 + if proto == 6 { 16 } else { 6 };
                let mut partial = good.clone();
                let mut pseudo = [0u8; 12];
                pseudo[..8].copy_from_slice(&good[26..34]);
                pseudo[9] = proto;
                pseudo[10..12].copy_from_slice(&((good.len() - 34) as u16).to_be_bytes());
                let p = !checksum(&pseudo);
                partial[at..at + 2].copy_from_slice(&p.to_be_bytes());
                assert_ne!(partial, good);
                assert_eq!(with_checksums(&partial), good, "proto {proto} {payload:?}");
                // A broken IPv4 header checksum too.
                partial[24] ^= 0xff;
                assert_eq!(with_checksums(&partial), good);
            }
        }
        // UDP without checksum, fragments, truncated frames, ARP: unchanged.
        let mut none = valid(17, b"abc");
        none[40..42].fill(0);
        assert_eq!(with_checksums(&none), none);
        let mut frag = valid(6, b"abc");
        frag[50] ^= 1;
        frag[20] = 0x20; // more fragments
        frag[24..26].fill(0);
        let c = checksum(&frag[14..34]);
        frag[24..26].copy_from_slice(&c.to_be_bytes());
        assert_eq!(with_checksums(&frag), frag);
        let short = &valid(6, b"abcdef")[..50];
        assert_eq!(with_checksums(short), short);
        let arp = Packet::arp_reply(
            &Arp {
                op: 1,
                sha: "02:00:00:00:00:01".parse().unwrap(),
                spa: Ipv4Addr::new(10, 0, 0, 2),
                tha: MacAddr::default(),
                tpa: Ipv4Addr::new(10, 0, 0, 1),
            },
            "02:00:00:00:00:aa".parse().unwrap(),
        )
        .emit();
        assert_eq!(with_checksums(&arp), arp);
        for n in 0..60 {
            let _ = with_checksums(&valid(6, b"0123456789")[..n]);
        }
    }

    #[test]
    fn malformed_is_an_error() {
        assert!(Packet::parse(&[]).is_err());
        let mut f = vec![0u8; 14];
        f[12] = 0x08;
        assert!(Packet::parse(&f).is_err());
        f.extend_from_slice(&[0x45, 0, 0, 10]);
        f.resize(34, 0);
        assert!(Packet::parse(&f).is_err()); // total length < header
        f[14] = 0x65;
        assert!(Packet::parse(&f).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
                        ty in proptest::sample::select(vec![0x0800u16, 0x0806, 0x8100, 0x86dd])) {
            let mut d = data;
            if d.len() >= 14 {
                d[12..14].copy_from_slice(&ty.to_be_bytes());
                if ty == 0x0800 && d.len() > 14 { d[14] = 0x45; }
            }
            let _ = Packet::parse(&d);
            let _ = with_checksums(&d);
        }
    }
}
