//! OXM match fields (`ofp_match` of type OFPMT_OXM) and the [`Match`] builder.
//!
//! Every OpenFlow 1.3 basic field (class `0x8000`, fields 0..=39) decodes into
//! a typed [`OxmField`] variant holding the value and an optional mask.
//! Fields of other classes (NXM, experimenter) and unknown basic fields are
//! kept as [`RawOxm`] and re-encoded byte for byte.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use bytes::{BufMut, BytesMut};

use crate::consts::*;
use crate::error::{ErrorCode, Fail};
use crate::wire::{make_room, pad8, push_in_place, Reader};

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// `00:00:00:00:00:00`.
    pub const ZERO: MacAddr = MacAddr([0; 6]);
    /// The six bytes.
    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(b: [u8; 6]) -> Self {
        MacAddr(b)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// Error parsing a [`MacAddr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Ethernet address {0:?}")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for o in out.iter_mut() {
            let p = parts.next().ok_or_else(|| MacParseError(s.into()))?;
            if p.is_empty() || p.len() > 2 {
                return Err(MacParseError(s.into()));
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| MacParseError(s.into()))?;
        }
        if parts.next().is_some() {
            return Err(MacParseError(s.into()));
        }
        Ok(MacAddr(out))
    }
}

/// A value type that can be carried in an OXM field.
pub trait OxmValue: Sized + Copy + PartialEq {
    /// Decode from exactly the field's wire length.
    fn read(b: &[u8]) -> Self;
    /// Encode into `len` bytes.
    fn write(&self, len: usize, buf: &mut BytesMut);
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl OxmValue for $t {
            #[inline]
            fn read(b: &[u8]) -> Self {
                // Full width (the common case): one load.
                if let Ok(a) = b.try_into() {
                    return <$t>::from_be_bytes(a);
                }
                let mut v: $t = 0;
                for &x in b {
                    v = (v << 4 << 4) | <$t>::from(x);
                }
                v
            }
            #[inline]
            fn write(&self, len: usize, buf: &mut BytesMut) {
                let b = self.to_be_bytes();
                let skip = b.len().saturating_sub(len);
                buf.put_slice(b.get(skip..).unwrap_or(&b));
            }
        }
    )*};
}
int_value!(u8, u16, u32, u64);

impl OxmValue for MacAddr {
    #[inline]
    fn read(b: &[u8]) -> Self {
        let mut a = [0u8; 6];
        if let Some(s) = b.get(..6) {
            a.copy_from_slice(s);
        }
        MacAddr(a)
    }
    #[inline]
    fn write(&self, _len: usize, buf: &mut BytesMut) {
        buf.put_slice(&self.0);
    }
}

impl OxmValue for Ipv4Addr {
    #[inline]
    fn read(b: &[u8]) -> Self {
        Ipv4Addr::from(u32::read(b))
    }
    #[inline]
    fn write(&self, _len: usize, buf: &mut BytesMut) {
        buf.put_slice(&self.octets());
    }
}

impl OxmValue for Ipv6Addr {
    #[inline]
    fn read(b: &[u8]) -> Self {
        let mut a = [0u8; 16];
        if let Some(s) = b.get(..16) {
            a.copy_from_slice(s);
        }
        Ipv6Addr::from(a)
    }
    #[inline]
    fn write(&self, _len: usize, buf: &mut BytesMut) {
        buf.put_slice(&self.octets());
    }
}

/// An OXM TLV this crate does not interpret (non-basic class, or unknown
/// basic field). Re-encoded exactly as received.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawOxm {
    /// OXM class (e.g. `0x0001` for NXM_1, `0xffff` for experimenter).
    pub class: u16,
    /// 7-bit field number.
    pub field: u8,
    /// The HM (has mask) bit.
    pub has_mask: bool,
    /// The payload (value, then mask when `has_mask`; for the experimenter
    /// class it starts with the experimenter id). At most 255 bytes.
    pub payload: Vec<u8>,
}

/// Static description of one basic OXM field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldInfo {
    /// OXM field number in class OFPXMC_OPENFLOW_BASIC.
    pub field: u8,
    /// Value length on the wire (the mask has the same length).
    pub len: usize,
    /// Name in the flow syntax (ovs-ofctl style).
    pub name: &'static str,
    /// Whether values print in hex.
    pub hex: bool,
}

macro_rules! oxm_fields {
    ($( $(#[$doc:meta])* $variant:ident = $num:literal, $ty:ty, $len:literal, $name:literal, $hex:literal; )*) => {
        /// One OXM match field: `Variant(value, mask)`.
        ///
        /// The mask is `None` for an exact match. Values are in host order;
        /// fields narrower than their Rust type (VLAN_VID, IPV6_FLABEL,
        /// PBB_ISID, MPLS_LABEL...) use the low bits, as on the wire.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum OxmField {
            $( $(#[$doc])* $variant($ty, Option<$ty>), )*
            /// A field of another class, or an unknown basic field.
            Raw(RawOxm),
        }

        /// All OpenFlow 1.3 basic fields, indexed by field number.
        pub const BASIC_FIELDS: &[FieldInfo] = &[
            $( FieldInfo { field: $num, len: $len, name: $name, hex: $hex }, )*
        ];

        impl OxmField {
            /// Decode a basic-class field from its payload.
            #[inline]
            fn decode_basic(field: u8, has_mask: bool, p: &[u8], bad_len: Fail) -> Result<Option<Self>, Fail> {
                Ok(Some(match field {
                    $( $num => {
                        let (v, m) = split_payload(p, $len, has_mask, bad_len)?;
                        OxmField::$variant(<$ty>::read(v), m.map(<$ty>::read))
                    } )*
                    _ => return Ok(None),
                }))
            }

            /// Decode a basic-class field, wrap it (`wrap` is the identity
            /// for a match, `Action::SetField` for an action) and push it onto
            /// `out`, which must have room ([`make_room`]). Returns false for
            /// an unknown field number.
            ///
            /// Each arm pushes its own value so that the enum is built in
            /// place in the vector: building it on the stack and moving it
            /// (a `match` producing the value, then one `push`) makes the
            /// copy read back the freshly written narrow stores with wide
            /// loads, a store-forwarding stall per field that dominated the
            /// decode time.
            #[inline(always)]
            pub(crate) fn push_basic<T>(
                field: u8,
                has_mask: bool,
                p: &[u8],
                bad_len: Fail,
                out: &mut Vec<T>,
                wrap: impl FnOnce(OxmField) -> T,
            ) -> Result<bool, Fail> {
                match field {
                    $( $num => {
                        let (v, m) = split_payload(p, $len, has_mask, bad_len)?;
                        push_in_place(out, wrap(OxmField::$variant(<$ty>::read(v), m.map(<$ty>::read))));
                    } )*
                    _ => return Ok(false),
                }
                Ok(true)
            }

            /// `(class, field, has_mask)` of this field.
            pub fn id(&self) -> (u16, u8, bool) {
                match self {
                    $( OxmField::$variant(_, m) => (OFPXMC_OPENFLOW_BASIC, $num, m.is_some()), )*
                    OxmField::Raw(r) => (r.class, r.field, r.has_mask),
                }
            }

            /// The basic field's description (None for raw fields).
            pub fn info(&self) -> Option<&'static FieldInfo> {
                match self {
                    OxmField::Raw(_) => None,
                    _ => BASIC_FIELDS.get(usize::from(self.id().1)),
                }
            }

            /// Append the TLV (header, value, mask) to `buf`.
            pub fn encode(&self, buf: &mut BytesMut) {
                match self {
                    $( OxmField::$variant(v, m) => {
                        let hm = m.is_some();
                        let plen: u32 = if hm { 2 * $len } else { $len };
                        buf.put_u32((u32::from(OFPXMC_OPENFLOW_BASIC) << 16) | ($num << 9) | (u32::from(hm) << 8) | plen);
                        v.write($len, buf);
                        if let Some(m) = m {
                            m.write($len, buf);
                        }
                    } )*
                    OxmField::Raw(r) => {
                        let plen = r.payload.len().min(255);
                        buf.put_u32((u32::from(r.class) << 16) | (u32::from(r.field & 0x7f) << 9) | (u32::from(r.has_mask) << 8) | plen as u32);
                        buf.put_slice(r.payload.get(..plen).unwrap_or_default());
                    }
                }
            }

            /// Encoded size of the TLV, header included.
            pub fn encoded_len(&self) -> usize {
                match self {
                    $( OxmField::$variant(_, m) => 4 + if m.is_some() { 2 * $len } else { $len }, )*
                    OxmField::Raw(r) => 4 + r.payload.len().min(255),
                }
            }
        }
    };
}

#[inline]
fn split_payload(
    p: &[u8],
    len: usize,
    has_mask: bool,
    bad_len: Fail,
) -> Result<(&[u8], Option<&[u8]>), Fail> {
    if has_mask {
        if p.len() != 2 * len {
            return Err(bad_len);
        }
        let (v, m) = p.split_at(len);
        Ok((v, Some(m)))
    } else if p.len() != len {
        Err(bad_len)
    } else {
        Ok((p, None))
    }
}

oxm_fields! {
    /// Switch input port (OXM_OF_IN_PORT).
    InPort = 0, u32, 4, "in_port", false;
    /// Switch physical input port.
    InPhyPort = 1, u32, 4, "in_phy_port", false;
    /// Metadata passed between tables.
    Metadata = 2, u64, 8, "metadata", true;
    /// Ethernet destination address.
    EthDst = 3, MacAddr, 6, "dl_dst", false;
    /// Ethernet source address.
    EthSrc = 4, MacAddr, 6, "dl_src", false;
    /// Ethernet frame type.
    EthType = 5, u16, 2, "dl_type", true;
    /// VLAN id (with OFPVID_PRESENT).
    VlanVid = 6, u16, 2, "vlan_vid", false;
    /// VLAN priority.
    VlanPcp = 7, u8, 1, "vlan_pcp", false;
    /// IP DSCP (6 bits in ToS field).
    IpDscp = 8, u8, 1, "ip_dscp", false;
    /// IP ECN (2 bits in ToS field).
    IpEcn = 9, u8, 1, "nw_ecn", false;
    /// IP protocol.
    IpProto = 10, u8, 1, "nw_proto", false;
    /// IPv4 source address.
    Ipv4Src = 11, Ipv4Addr, 4, "nw_src", false;
    /// IPv4 destination address.
    Ipv4Dst = 12, Ipv4Addr, 4, "nw_dst", false;
    /// TCP source port.
    TcpSrc = 13, u16, 2, "tcp_src", false;
    /// TCP destination port.
    TcpDst = 14, u16, 2, "tcp_dst", false;
    /// UDP source port.
    UdpSrc = 15, u16, 2, "udp_src", false;
    /// UDP destination port.
    UdpDst = 16, u16, 2, "udp_dst", false;
    /// SCTP source port.
    SctpSrc = 17, u16, 2, "sctp_src", false;
    /// SCTP destination port.
    SctpDst = 18, u16, 2, "sctp_dst", false;
    /// ICMP type.
    Icmpv4Type = 19, u8, 1, "icmp_type", false;
    /// ICMP code.
    Icmpv4Code = 20, u8, 1, "icmp_code", false;
    /// ARP opcode.
    ArpOp = 21, u16, 2, "arp_op", false;
    /// ARP source IPv4 address.
    ArpSpa = 22, Ipv4Addr, 4, "arp_spa", false;
    /// ARP target IPv4 address.
    ArpTpa = 23, Ipv4Addr, 4, "arp_tpa", false;
    /// ARP source hardware address.
    ArpSha = 24, MacAddr, 6, "arp_sha", false;
    /// ARP target hardware address.
    ArpTha = 25, MacAddr, 6, "arp_tha", false;
    /// IPv6 source address.
    Ipv6Src = 26, Ipv6Addr, 16, "ipv6_src", false;
    /// IPv6 destination address.
    Ipv6Dst = 27, Ipv6Addr, 16, "ipv6_dst", false;
    /// IPv6 flow label (20 bits).
    Ipv6Flabel = 28, u32, 4, "ipv6_label", true;
    /// ICMPv6 type.
    Icmpv6Type = 29, u8, 1, "icmpv6_type", false;
    /// ICMPv6 code.
    Icmpv6Code = 30, u8, 1, "icmpv6_code", false;
    /// Target address for ND.
    Ipv6NdTarget = 31, Ipv6Addr, 16, "nd_target", false;
    /// Source link-layer for ND.
    Ipv6NdSll = 32, MacAddr, 6, "nd_sll", false;
    /// Target link-layer for ND.
    Ipv6NdTll = 33, MacAddr, 6, "nd_tll", false;
    /// MPLS label (20 bits).
    MplsLabel = 34, u32, 4, "mpls_label", false;
    /// MPLS TC.
    MplsTc = 35, u8, 1, "mpls_tc", false;
    /// MPLS BoS bit.
    MplsBos = 36, u8, 1, "mpls_bos", false;
    /// PBB I-SID (24 bits, 3 bytes on the wire).
    PbbIsid = 37, u32, 3, "pbb_isid", true;
    /// Logical port metadata (tunnel id).
    TunnelId = 38, u64, 8, "tun_id", true;
    /// IPv6 extension header pseudo-field.
    Ipv6Exthdr = 39, u16, 2, "ipv6_exthdr", true;
}

impl OxmField {
    /// Decode one TLV from `r`. `bad_len` is the failure for a short or
    /// inconsistent TLV (OFPBMC_BAD_LEN in a match, OFPBAC_BAD_SET_LEN in a
    /// set_field action).
    #[inline]
    pub(crate) fn decode(r: &mut Reader<'_>, bad_len: Fail) -> Result<Self, Fail> {
        let hdr = r.u32()?;
        let class = (hdr >> 16) as u16;
        let field = ((hdr >> 9) & 0x7f) as u8;
        let has_mask = (hdr >> 8) & 1 == 1;
        let plen = (hdr & 0xff) as usize;
        let payload = r.bytes(plen)?;
        if class == OFPXMC_OPENFLOW_BASIC {
            if let Some(f) = Self::decode_basic(field, has_mask, payload, bad_len)? {
                return Ok(f);
            }
        }
        Ok(OxmField::Raw(RawOxm {
            class,
            field,
            has_mask,
            payload: payload.to_vec(),
        }))
    }

    /// Build a field from its wire parts (as found in an OXM TLV): a typed
    /// variant for basic fields, [`OxmField::Raw`] otherwise. Fails with
    /// OFPBMC_BAD_LEN when a basic field's payload has the wrong length.
    pub fn from_parts(
        class: u16,
        field: u8,
        has_mask: bool,
        payload: &[u8],
    ) -> Result<Self, ErrorCode> {
        let bad = Fail::new(
            ErrorCode::BAD_MATCH_LEN,
            "OXM field length does not fit its type",
        );
        if class == OFPXMC_OPENFLOW_BASIC {
            if let Some(f) =
                Self::decode_basic(field, has_mask, payload, bad).map_err(|f| f.code)?
            {
                return Ok(f);
            }
        }
        Ok(OxmField::Raw(RawOxm {
            class,
            field: field & 0x7f,
            has_mask,
            payload: payload.to_vec(),
        }))
    }

    /// Whether the field carries a mask.
    pub fn is_masked(&self) -> bool {
        self.id().2
    }
}

/// An OpenFlow 1.3 match (`ofp_match`, type OFPMT_OXM): a list of OXM fields
/// in wire order. An empty match matches every packet.
///
/// Build one with the chained helpers:
/// ```
/// use daolinet_openflow::Match;
/// let m = Match::new().in_port(2).eth_type(0x0800).ipv4_src_masked(
///     "10.0.0.0".parse().unwrap(), "255.255.255.0".parse().unwrap());
/// assert_eq!(m.to_string(), "in_port=2,ip,nw_src=10.0.0.0/24");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Match {
    /// The OXM fields, in order.
    pub fields: Vec<OxmField>,
}

impl Match {
    /// The empty (match-all) match.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append any field.
    pub fn with(mut self, f: OxmField) -> Self {
        self.fields.push(f);
        self
    }

    /// Match the input port.
    pub fn in_port(self, port: u32) -> Self {
        self.with(OxmField::InPort(port, None))
    }
    /// Match the Ethernet destination.
    pub fn eth_dst(self, mac: MacAddr) -> Self {
        self.with(OxmField::EthDst(mac, None))
    }
    /// Match the Ethernet destination under a mask.
    pub fn eth_dst_masked(self, mac: MacAddr, mask: MacAddr) -> Self {
        self.with(OxmField::EthDst(mac, Some(mask)))
    }
    /// Match the Ethernet source.
    pub fn eth_src(self, mac: MacAddr) -> Self {
        self.with(OxmField::EthSrc(mac, None))
    }
    /// Match the Ethernet source under a mask.
    pub fn eth_src_masked(self, mac: MacAddr, mask: MacAddr) -> Self {
        self.with(OxmField::EthSrc(mac, Some(mask)))
    }
    /// Match the EtherType (e.g. `0x0800`, `0x0806`).
    pub fn eth_type(self, t: u16) -> Self {
        self.with(OxmField::EthType(t, None))
    }
    /// Match the VLAN id (include [`OFPVID_PRESENT`]).
    pub fn vlan_vid(self, vid: u16) -> Self {
        self.with(OxmField::VlanVid(vid, None))
    }
    /// Match the IP protocol (needs an IP EtherType before it).
    pub fn ip_proto(self, p: u8) -> Self {
        self.with(OxmField::IpProto(p, None))
    }
    /// Match the IPv4 source.
    pub fn ipv4_src(self, a: Ipv4Addr) -> Self {
        self.with(OxmField::Ipv4Src(a, None))
    }
    /// Match the IPv4 source under a mask.
    pub fn ipv4_src_masked(self, a: Ipv4Addr, mask: Ipv4Addr) -> Self {
        self.with(OxmField::Ipv4Src(a, Some(mask)))
    }
    /// Match the IPv4 destination.
    pub fn ipv4_dst(self, a: Ipv4Addr) -> Self {
        self.with(OxmField::Ipv4Dst(a, None))
    }
    /// Match the IPv4 destination under a mask.
    pub fn ipv4_dst_masked(self, a: Ipv4Addr, mask: Ipv4Addr) -> Self {
        self.with(OxmField::Ipv4Dst(a, Some(mask)))
    }
    /// Match the TCP source port.
    pub fn tcp_src(self, p: u16) -> Self {
        self.with(OxmField::TcpSrc(p, None))
    }
    /// Match the TCP destination port.
    pub fn tcp_dst(self, p: u16) -> Self {
        self.with(OxmField::TcpDst(p, None))
    }
    /// Match the UDP source port.
    pub fn udp_src(self, p: u16) -> Self {
        self.with(OxmField::UdpSrc(p, None))
    }
    /// Match the UDP destination port.
    pub fn udp_dst(self, p: u16) -> Self {
        self.with(OxmField::UdpDst(p, None))
    }
    /// Match the ARP opcode.
    pub fn arp_op(self, op: u16) -> Self {
        self.with(OxmField::ArpOp(op, None))
    }
    /// Match the ARP sender protocol address.
    pub fn arp_spa(self, a: Ipv4Addr) -> Self {
        self.with(OxmField::ArpSpa(a, None))
    }
    /// Match the ARP target protocol address.
    pub fn arp_tpa(self, a: Ipv4Addr) -> Self {
        self.with(OxmField::ArpTpa(a, None))
    }
    /// Match the metadata register under a mask.
    pub fn metadata(self, v: u64, mask: Option<u64>) -> Self {
        self.with(OxmField::Metadata(v, mask))
    }
    /// Match the tunnel id.
    pub fn tunnel_id(self, v: u64) -> Self {
        self.with(OxmField::TunnelId(v, None))
    }

    /// The first field satisfying `pred`.
    pub fn find(&self, pred: impl Fn(&OxmField) -> bool) -> Option<&OxmField> {
        self.fields.iter().find(|f| pred(f))
    }

    /// The input port, when matched exactly.
    pub fn get_in_port(&self) -> Option<u32> {
        self.fields.iter().find_map(|f| match f {
            OxmField::InPort(p, None) => Some(*p),
            _ => None,
        })
    }

    /// Encoded size including the 4-byte header, without trailing padding.
    pub fn encoded_len(&self) -> usize {
        4 + self.fields.iter().map(OxmField::encoded_len).sum::<usize>()
    }

    /// Append the `ofp_match` structure, padded to a multiple of 8.
    pub fn encode(&self, buf: &mut BytesMut) {
        let Ok(()) = crate::emit::put_match::<std::convert::Infallible>(buf, |w| {
            for f in &self.fields {
                w.field(f);
            }
            Ok(())
        });
    }

    /// Decode an `ofp_match` (with its padding) from `r`.
    #[inline]
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, Fail> {
        let short = Fail::new(ErrorCode::BAD_MATCH_LEN, "match truncated");
        let ty = r.u16().map_err(|_| short)?;
        let len = usize::from(r.u16().map_err(|_| short)?);
        if ty != 1 {
            return Err(Fail::new(
                ErrorCode::BAD_MATCH_TYPE,
                "match type is not OFPMT_OXM",
            ));
        }
        if len < 4 {
            return Err(Fail::new(ErrorCode::BAD_MATCH_LEN, "match length below 4"));
        }
        let body = r.bytes(len - 4).map_err(|_| short)?;
        r.skip(pad8(len) - len).map_err(|_| short)?;
        let mut fr = Reader::new(
            body,
            Fail::new(ErrorCode::BAD_MATCH_LEN, "OXM field truncated"),
        );
        let mut fields = Vec::with_capacity(body.len() / 6);
        let bad = Fail::new(
            ErrorCode::BAD_MATCH_LEN,
            "OXM field length does not fit its type",
        );
        while !fr.is_empty() {
            let hdr = fr.u32()?;
            let class = (hdr >> 16) as u16;
            let field = ((hdr >> 9) & 0x7f) as u8;
            let has_mask = (hdr >> 8) & 1 == 1;
            let payload = fr.bytes((hdr & 0xff) as usize)?;
            make_room(&mut fields);
            if class == OFPXMC_OPENFLOW_BASIC
                && OxmField::push_basic(field, has_mask, payload, bad, &mut fields, |f| f)?
            {
                continue;
            }
            fields.push(OxmField::Raw(RawOxm {
                class,
                field,
                has_mask,
                payload: payload.to_vec(),
            }));
        }
        Ok(Match { fields })
    }
}

impl From<Vec<OxmField>> for Match {
    fn from(fields: Vec<OxmField>) -> Self {
        Match { fields }
    }
}
