//! Packets the datapath hands to userspace through [`crate::maps::PUNTS`].

/// Bytes of packet data carried by one punt record. Larger packets (GSO
/// super-frames) are truncated; [`PuntHeader::pkt_len`] keeps the real length.
pub const PUNT_CAP: usize = 2048;

/// Why a packet was punted.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PuntReason {
    /// No rule matched (OpenFlow OFPR_NO_MATCH).
    Miss = 0,
    /// A rule's action said CONTROLLER (OFPR_ACTION).
    Action = 1,
    /// dec_ttl hit a TTL of 0 or 1 (OFPR_INVALID_TTL).
    InvalidTtl = 2,
}

impl PuntReason {
    /// Decode a stored value.
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Miss),
            1 => Some(Self::Action),
            2 => Some(Self::InvalidTtl),
            _ => None,
        }
    }
}

/// Metadata in front of a punted packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PuntHeader {
    /// Ingress interface index.
    pub ifindex: u32,
    /// Ingress OpenFlow port.
    pub in_port: u32,
    /// A [`PuntReason`] as u32.
    pub reason: u32,
    /// Rule that punted (`crate::NO_RULE` for a miss).
    pub rule_id: u32,
    /// Length of the packet on the wire.
    pub pkt_len: u32,
    /// Bytes of it in [`PuntRecord::data`].
    pub cap_len: u32,
    /// `bpf_ktime_get_ns()` when punted.
    pub timestamp_ns: u64,
    /// TPID (host order) of a VLAN tag the kernel keeps out of the packet
    /// bytes (it moves the outer 802.1Q/802.1ad tag into skb metadata on
    /// receive, before TC runs), or 0 when the bytes are the whole frame.
    /// The tag belongs right after the two MAC addresses.
    pub vlan_proto: u16,
    /// TCI of that tag.
    pub vlan_tci: u16,
    /// OpenFlow table whose flow (or table miss) punted the packet.
    pub table_id: u8,
    /// Reserved, zero.
    pub _pad: [u8; 3],
    /// The pipeline's metadata register when punted.
    pub metadata: u64,
}

/// One record of the punt ring buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PuntRecord {
    /// The metadata.
    pub header: PuntHeader,
    /// The first `header.cap_len` bytes of the packet.
    pub data: [u8; PUNT_CAP],
}
