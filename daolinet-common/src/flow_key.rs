//! The packet key the classifier matches on.

/// Bit set in [`FlowKey::vlan_tci`] when the packet carries an 802.1Q tag
/// (like OpenFlow's OFPVID_PRESENT; in the tag itself this bit is the
/// CFI/DEI bit, which is not kept). A key with `vlan_tci == 0` is untagged.
pub const VLAN_PRESENT: u16 = 0x1000;
/// Bits of [`FlowKey::vlan_tci`] holding the VLAN id.
pub const VLAN_VID_MASK: u16 = 0x0fff;
/// Bits of [`FlowKey::vlan_tci`] holding the priority (PCP), as in the tag.
pub const VLAN_PCP_MASK: u16 = 0xe000;

/// Number of 32-bit words in a [`FlowKey`]; the datapath masks word by word.
pub const FLOW_KEY_WORDS: usize = size_of::<FlowKey>() / 4;

/// The fields of a packet the classifier can match on, extracted by the
/// datapath. Used both as a packet key and as a mask (all-ones bits = match
/// this bit). Multi-byte numbers are in host byte order, addresses are bytes
/// in wire order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FlowKey {
    /// OpenFlow ingress port number.
    pub in_port: u32,
    /// IPv4 source address, ARP sender protocol address (SPA), or the
    /// outer MPLS label stack entry (wire order) of an MPLS packet.
    pub ipv4_src: [u8; 4],
    /// IPv4 destination address, or ARP target protocol address (TPA).
    pub ipv4_dst: [u8; 4],
    /// Ethernet type (after a VLAN tag, if any).
    pub eth_type: u16,
    /// VLAN priority and id (the tag's TCI) with [`VLAN_PRESENT`] in place
    /// of the CFI/DEI bit, or 0 when untagged.
    pub vlan_tci: u16,
    /// Ethernet source address.
    pub eth_src: [u8; 6],
    /// Ethernet destination address.
    pub eth_dst: [u8; 6],
    /// TCP/UDP/SCTP source port, or ICMP/ICMPv6 type.
    pub l4_src: u16,
    /// TCP/UDP/SCTP destination port, or ICMP/ICMPv6 code.
    pub l4_dst: u16,
    /// ARP opcode.
    pub arp_op: u16,
    /// IP protocol number (IPv6: of the header after the extension headers).
    pub ip_proto: u8,
    /// IPv4 TOS byte or IPv6 traffic class: DSCP (high 6 bits), ECN (low 2).
    pub ip_tos: u8,
    /// IPv6 flow label (low 20 bits).
    pub ipv6_label: u32,
}

impl FlowKey {
    /// Ethernet type of IPv4.
    pub const ETH_TYPE_IPV4: u16 = 0x0800;
    /// Ethernet type of ARP.
    pub const ETH_TYPE_ARP: u16 = 0x0806;
    /// Ethernet type of an 802.1Q tag.
    pub const ETH_TYPE_VLAN: u16 = 0x8100;
    /// Ethernet type of an 802.1ad (service) tag.
    pub const ETH_TYPE_VLAN_AD: u16 = 0x88a8;
    /// Ethernet type of IPv6.
    pub const ETH_TYPE_IPV6: u16 = 0x86dd;
    /// Ethernet type of MPLS unicast.
    pub const ETH_TYPE_MPLS: u16 = 0x8847;
    /// Ethernet type of MPLS multicast.
    pub const ETH_TYPE_MPLS_MC: u16 = 0x8848;
    /// IP protocol number of ICMP.
    pub const IPPROTO_ICMP: u8 = 1;
    /// IP protocol number of TCP.
    pub const IPPROTO_TCP: u8 = 6;
    /// IP protocol number of UDP.
    pub const IPPROTO_UDP: u8 = 17;
    /// IP protocol number of ICMPv6.
    pub const IPPROTO_ICMPV6: u8 = 58;
    /// IP protocol number of SCTP.
    pub const IPPROTO_SCTP: u8 = 132;

    /// The key as 32-bit words (for masking).
    #[inline(always)]
    pub fn words(&self) -> &[u32; FLOW_KEY_WORDS] {
        bytemuck::cast_ref(self)
    }

    /// Mutable view of the key as 32-bit words.
    #[inline(always)]
    pub fn words_mut(&mut self) -> &mut [u32; FLOW_KEY_WORDS] {
        bytemuck::cast_mut(self)
    }

    /// This key ANDed with `mask`.
    #[inline(always)]
    pub fn masked(&self, mask: &FlowKey) -> FlowKey {
        let mut out = *self;
        let m = mask.words();
        let w = out.words_mut();
        let mut i = 0;
        while i < FLOW_KEY_WORDS {
            w[i] &= m[i];
            i += 1;
        }
        out
    }

    /// A mask with every bit set (exact match on every field).
    pub fn exact_mask() -> FlowKey {
        let mut k = FlowKey::default();
        for w in k.words_mut().iter_mut() {
            *w = u32::MAX;
        }
        k
    }

    /// True when this value, used as a mask, has no bit set.
    pub fn is_empty_mask(&self) -> bool {
        self.words().iter().all(|w| *w == 0)
    }

    /// True when every bit set in `self` (a mask) is also set in `other`:
    /// `other` is at least as specific as `self`.
    pub fn mask_is_subset_of(&self, other: &FlowKey) -> bool {
        self.words()
            .iter()
            .zip(other.words().iter())
            .all(|(a, b)| a & !b == 0)
    }
}

/// Number of 32-bit words in a [`FlowKeyExt`].
pub const FLOW_KEY_EXT_WORDS: usize = size_of::<FlowKeyExt>() / 4;

/// The match fields beyond [`FlowKey`]: the pipeline's registers
/// (metadata, tunnel id) and the wide addresses (IPv6, ND, ARP hardware
/// addresses). Only subtables whose mask uses one of them (*wide*
/// subtables, [`crate::SUBTABLE_WIDE`]) hash these bytes, so the compact key
/// keeps the IPv4 fast path short. Word-aligned (no u64 fields), so that it
/// follows a [`FlowKey`] without padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FlowKeyExt {
    /// OpenFlow metadata: low and high 32 bits.
    pub metadata: [u32; 2],
    /// Tunnel id (OXM TUNNEL_ID): low and high 32 bits.
    pub tunnel_id: [u32; 2],
    /// IPv6 source address.
    pub ipv6_src: [u8; 16],
    /// IPv6 destination address.
    pub ipv6_dst: [u8; 16],
    /// IPv6 neighbour discovery target address.
    pub nd_target: [u8; 16],
    /// ARP sender hardware address, or ND source link-layer address.
    pub sha: [u8; 6],
    /// ARP target hardware address, or ND target link-layer address.
    pub tha: [u8; 6],
}

/// A 64-bit register held as (low, high) words.
#[inline(always)]
pub fn u64_of(w: [u32; 2]) -> u64 {
    (w[0] as u64) | ((w[1] as u64) << 32)
}

/// The (low, high) words of a 64-bit register.
#[inline(always)]
pub fn words_of(v: u64) -> [u32; 2] {
    [v as u32, (v >> 32) as u32]
}

impl FlowKeyExt {
    /// The key as 32-bit words.
    #[inline(always)]
    pub fn words(&self) -> &[u32; FLOW_KEY_EXT_WORDS] {
        bytemuck::cast_ref(self)
    }

    /// Mutable view of the key as 32-bit words.
    #[inline(always)]
    pub fn words_mut(&mut self) -> &mut [u32; FLOW_KEY_EXT_WORDS] {
        bytemuck::cast_mut(self)
    }

    /// This key ANDed with `mask`.
    #[inline(always)]
    pub fn masked(&self, mask: &FlowKeyExt) -> FlowKeyExt {
        let mut out = *self;
        let m = mask.words();
        let w = out.words_mut();
        let mut i = 0;
        while i < FLOW_KEY_EXT_WORDS {
            w[i] &= m[i];
            i += 1;
        }
        out
    }

    /// True when this value, used as a mask, has no bit set.
    pub fn is_empty_mask(&self) -> bool {
        self.words().iter().all(|w| *w == 0)
    }
}

/// A whole match key: the compact [`FlowKey`] and its [`FlowKeyExt`].
/// Rules and masks are kept in this form by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FullKey {
    /// The compact fields.
    pub key: FlowKey,
    /// The wide fields and registers.
    pub ext: FlowKeyExt,
}

/// Number of 32-bit words in a [`FullKey`].
pub const FULL_KEY_WORDS: usize = FLOW_KEY_WORDS + FLOW_KEY_EXT_WORDS;

impl FullKey {
    /// The key as 32-bit words.
    pub fn words(&self) -> &[u32; FULL_KEY_WORDS] {
        bytemuck::cast_ref(self)
    }

    /// This key ANDed with `mask`.
    pub fn masked(&self, mask: &FullKey) -> FullKey {
        FullKey {
            key: self.key.masked(&mask.key),
            ext: self.ext.masked(&mask.ext),
        }
    }

    /// True when this value, used as a mask, needs the wide fields.
    pub fn is_wide(&self) -> bool {
        !self.ext.is_empty_mask()
    }

    /// True when this value, used as a mask, has no bit set.
    pub fn is_empty_mask(&self) -> bool {
        self.key.is_empty_mask() && self.ext.is_empty_mask()
    }
}

impl From<FlowKey> for FullKey {
    fn from(key: FlowKey) -> Self {
        FullKey {
            key,
            ext: FlowKeyExt::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_keeps_only_masked_bits() {
        let key = FlowKey {
            in_port: 7,
            ipv4_src: [10, 1, 2, 3],
            ipv4_dst: [10, 9, 9, 9],
            eth_type: FlowKey::ETH_TYPE_IPV4,
            ip_proto: 6,
            l4_dst: 80,
            ..Default::default()
        };
        let mask = FlowKey {
            ipv4_src: [255, 255, 0, 0],
            eth_type: 0xffff,
            ..Default::default()
        };
        let m = key.masked(&mask);
        assert_eq!(m.ipv4_src, [10, 1, 0, 0]);
        assert_eq!(m.eth_type, 0x0800);
        assert_eq!(m.in_port, 0);
        assert_eq!(m.l4_dst, 0);
        assert_eq!(m.ipv4_dst, [0; 4]);
    }

    #[test]
    fn exact_mask_and_subset_order_hold() {
        let exact = FlowKey::exact_mask();
        assert_eq!(exact.ipv6_label, u32::MAX);
        assert!(FlowKey::default().is_empty_mask());
        assert!(FlowKey::default().mask_is_subset_of(&exact));
        assert!(!exact.mask_is_subset_of(&FlowKey::default()));
    }
}
