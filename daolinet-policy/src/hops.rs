//! Virtual routers in `traceroute`.
//!
//! A cross-host pair crosses two virtual routers, so its flows decrement
//! the TTL twice: on the source host (the *container-side router*, which
//! answers from the gateway address of the sender's network) and on the
//! destination host (the *host router*, which answers from that host's
//! underlay IP). `traceroute` from a container to another host's container
//! thus shows three hops: the gateway, the destination's host, the
//! destination. On one host the pair is one L2 hop (the MACs change, the
//! TTL does not): one hop, the destination. No physical container address
//! ever shows.
//!
//! A packet whose TTL would expire reaches the controller (on an agent the
//! datapath punts it with reason INVALID_TTL; Open vSwitch's `dec_ttl`
//! sends a PACKET_IN with that reason, enabled by the controller's
//! SET_ASYNC), or is punted by the table-miss flow with TTL 1 before its
//! flows exist; either way the policy sees an IPv4 packet with TTL <= 1
//! on a cross-host path, installs the pair as usual (so the next probe
//! goes further) and answers the sender with ICMP time exceeded from the
//! router where it expired, instead of sending the packet on.

use std::net::Ipv4Addr;

use crate::addr::MacAddr;
use crate::flow::ETH_TYPE_IPV4;
use crate::model::Container;
use crate::packet::{checksum, Ipv4, Packet, L3};

/// ICMP type "time exceeded" (code 0: TTL exceeded in transit).
const ICMP_TIME_EXCEEDED: u8 = 11;

/// Whether a packet on a path through a virtual router dies there.
pub(crate) fn expires(ip: &Ipv4) -> bool {
    ip.ttl <= 1
}

/// The frame answering `frame` (the sender's packet as punted, its IPv4
/// header at byte 14) with ICMP time exceeded from `router`, addressed to
/// container `to` from the gateway MAC `gw`. The quoted header carries the
/// addresses the sender used (`inner`: source, destination), so that its
/// socket recognises the error even when the packet was punted with
/// physical addresses.
pub(crate) fn time_exceeded(
    frame: &[u8],
    router: Ipv4Addr,
    to: &Container,
    gw: MacAddr,
    inner: (Ipv4Addr, Ipv4Addr),
) -> Option<Vec<u8>> {
    let ip = frame.get(14..)?;
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    if ihl < 20 || ip.len() < ihl {
        return None;
    }
    // RFC 792: the internet header plus the first 64 bits of the datagram.
    let quoted_len = (ihl + 8).min(ip.len());
    let mut quoted = ip.get(..quoted_len)?.to_vec();
    quoted[12..16].copy_from_slice(&inner.0.octets());
    quoted[16..20].copy_from_slice(&inner.1.octets());
    quoted[10..12].copy_from_slice(&[0, 0]);
    let sum = checksum(&quoted[..ihl]);
    quoted[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut icmp = vec![ICMP_TIME_EXCEEDED, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&quoted);
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    Some(
        Packet {
            eth_dst: to.mac,
            eth_src: gw,
            eth_type: ETH_TYPE_IPV4,
            l3: L3::Ipv4(Ipv4 {
                src: router,
                dst: to.ip,
                proto: 1,
                ttl: 64,
                ports: None,
                payload: icmp,
            }),
        }
        .emit(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn container() -> Container {
        serde_json::from_value(serde_json::json!({
            "id": "a", "name": "a", "network": "n", "host": "h1", "port": 1,
            "ip": "10.1.0.2", "mac": "02:00:00:00:0a:02",
            "physical_ip": "172.31.0.2", "cookie_id": 1
        }))
        .unwrap()
    }

    #[test]
    fn the_answer_quotes_the_probe_as_its_sender_sent_it() {
        // A UDP probe 172.31.0.2:40000 -> 172.31.0.3:33434, TTL 1, as
        // punted on the destination host (physical addresses).
        let probe = Packet {
            eth_dst: "02:00:00:00:00:02".parse().unwrap(),
            eth_src: "02:00:00:00:00:01".parse().unwrap(),
            eth_type: ETH_TYPE_IPV4,
            l3: L3::Ipv4(Ipv4 {
                src: "172.31.0.2".parse().unwrap(),
                dst: "172.31.0.3".parse().unwrap(),
                proto: 17,
                ttl: 1,
                ports: Some((40000, 33434)),
                payload: vec![0, 12, 0, 0, 1, 2, 3, 4],
            }),
        }
        .emit();
        let gw: MacAddr = "02:da:00:00:00:01".parse().unwrap();
        let f = time_exceeded(
            &probe,
            "192.168.0.2".parse().unwrap(),
            &container(),
            gw,
            ("10.1.0.2".parse().unwrap(), "10.1.0.3".parse().unwrap()),
        )
        .unwrap();
        let p = Packet::parse(&f).unwrap();
        assert_eq!(p.eth_src, gw);
        assert_eq!(p.eth_dst, container().mac);
        let ip = p.ipv4().unwrap();
        assert_eq!(ip.src, "192.168.0.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(ip.dst, "10.1.0.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(ip.proto, 1);
        // IPv4 header checksum valid.
        assert_eq!(checksum(&f[14..34]), 0);
        let icmp = &f[34..];
        assert_eq!(&icmp[..2], &[11, 0]);
        assert_eq!(checksum(icmp), 0, "ICMP checksum");
        // The quoted header: the logical addresses, a valid checksum, then
        // the UDP ports.
        let q = &icmp[8..];
        assert_eq!(q.len(), 28);
        assert_eq!(&q[12..16], &[10, 1, 0, 2]);
        assert_eq!(&q[16..20], &[10, 1, 0, 3]);
        assert_eq!(checksum(&q[..20]), 0);
        assert_eq!(&q[20..24], &[0x9c, 0x40, 0x82, 0x9a]);
        let short = time_exceeded(
            &probe[..20],
            "1.1.1.1".parse().unwrap(),
            &container(),
            gw,
            (Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST),
        );
        assert!(short.is_none());
    }
}
