//! Compiled actions, as stored in [`crate::FlowEntry::actions`].

/// Maximum number of actions in one compiled rule.
pub const MAX_ACTIONS: usize = 8;

/// Kind of an [`Action`]; stored as `u16` in [`Action::kind`].
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionKind {
    /// Send the packet to OpenFlow port `arg` (redirect; to a container
    /// port this is `bpf_redirect_peer`, into the container).
    Output = 1,
    /// Send the packet back out of the port it came in on.
    OutputInPort = 2,
    /// Hand the packet to the host's network stack (OpenFlow LOCAL).
    OutputLocal = 3,
    /// Punt the packet to userspace (OpenFlow CONTROLLER); `arg` = max_len.
    Controller = 4,
    /// Drop explicitly (counted as [`crate::DropReason::PolicyDrop`]).
    Drop = 5,
    /// Set Ethernet source to `data[0..6]`.
    SetEthSrc = 6,
    /// Set Ethernet destination to `data[0..6]`.
    SetEthDst = 7,
    /// Set IPv4 source to `data[0..4]` (fixes IP and TCP/UDP checksums).
    SetIpv4Src = 8,
    /// Set IPv4 destination to `data[0..4]` (fixes IP and TCP/UDP checksums).
    SetIpv4Dst = 9,
    /// Set the TCP/UDP source port to `arg` (fixes the L4 checksum).
    SetL4Src = 10,
    /// Set the TCP/UDP destination port to `arg` (fixes the L4 checksum).
    SetL4Dst = 11,
    /// Decrement the IPv4 TTL or IPv6 hop limit; a packet whose TTL would reach 0 is punted
    /// with [`crate::PuntReason::InvalidTtl`].
    DecTtl = 12,
    /// Apply group `arg`.
    Group = 13,
    /// Set the IPv4 TOS / IPv6 traffic class bits under `data[1]` to
    /// `data[0]` (DSCP: mask 0xfc, ECN: mask 0x03).
    SetIpTos = 14,
    /// Set the IPv6 flow label to `arg`.
    SetIpv6Label = 15,
    /// Set the VLAN id of the outer tag to `arg` (no tag: nothing).
    SetVlanVid = 16,
    /// Set the VLAN priority of the outer tag to `arg`.
    SetVlanPcp = 17,
    /// Push a VLAN tag with TPID `arg` (VID and PCP copied from the outer
    /// tag, else 0).
    PushVlan = 18,
    /// Pop the outer VLAN tag.
    PopVlan = 19,
    /// Push an MPLS label stack entry, Ethernet type `arg` (label 0, TC 0,
    /// TTL from the IP TTL or the outer entry).
    PushMpls = 20,
    /// Pop the outer MPLS label stack entry; `arg` is the new Ethernet type.
    PopMpls = 21,
    /// Set the MPLS label to `arg`.
    SetMplsLabel = 22,
    /// Set the MPLS traffic class to `arg`.
    SetMplsTc = 23,
    /// Set the MPLS bottom-of-stack bit to `arg`.
    SetMplsBos = 24,
    /// Set the MPLS TTL to `arg`.
    SetMplsTtl = 25,
    /// Decrement the MPLS TTL (0 or 1: punted as an invalid TTL).
    DecMplsTtl = 26,
    /// Set the IPv4 TTL / IPv6 hop limit to `arg`.
    SetNwTtl = 27,
    /// Copy the TTL from the next-to-outermost header outwards.
    CopyTtlOut = 28,
    /// Copy the TTL from the outermost header inwards.
    CopyTtlIn = 29,
    /// Set 8 bytes of the IPv6 source: `data` at byte `half` * 8.
    SetIpv6Src = 30,
    /// Set 8 bytes of the IPv6 destination: `data` at byte `half` * 8.
    SetIpv6Dst = 31,
    /// Set 8 bytes of the ND target: `data` at byte `half` * 8.
    SetNdTarget = 32,
    /// Set the ARP sender hardware address to `data[0..6]`.
    SetArpSha = 33,
    /// Set the ARP target hardware address to `data[0..6]`.
    SetArpTha = 34,
    /// Set the ND source link-layer address option to `data[0..6]`.
    SetNdSll = 35,
    /// Set the ND target link-layer address option to `data[0..6]`.
    SetNdTll = 36,
    /// Set the ARP opcode to `arg`.
    SetArpOp = 37,
    /// Set the ARP sender protocol address to `data[0..4]`.
    SetArpSpa = 38,
    /// Set the ARP target protocol address to `data[0..4]`.
    SetArpTpa = 39,
    /// Set the ICMP/ICMPv6 type to `arg` (fixes the checksum).
    SetIcmpType = 40,
    /// Set the ICMP/ICMPv6 code to `arg` (fixes the checksum).
    SetIcmpCode = 41,
    /// Set the tunnel id register to `data` (little-endian u64).
    SetTunnelId = 42,
}

/// Number of [`ActionKind`] values (all below this).
pub const ACTION_KINDS: u16 = 43;

impl ActionKind {
    /// Decode a stored kind; `None` for an unknown value.
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Output,
            2 => Self::OutputInPort,
            3 => Self::OutputLocal,
            4 => Self::Controller,
            5 => Self::Drop,
            6 => Self::SetEthSrc,
            7 => Self::SetEthDst,
            8 => Self::SetIpv4Src,
            9 => Self::SetIpv4Dst,
            10 => Self::SetL4Src,
            11 => Self::SetL4Dst,
            12 => Self::DecTtl,
            13 => Self::Group,
            14 => Self::SetIpTos,
            15 => Self::SetIpv6Label,
            16 => Self::SetVlanVid,
            17 => Self::SetVlanPcp,
            18 => Self::PushVlan,
            19 => Self::PopVlan,
            20 => Self::PushMpls,
            21 => Self::PopMpls,
            22 => Self::SetMplsLabel,
            23 => Self::SetMplsTc,
            24 => Self::SetMplsBos,
            25 => Self::SetMplsTtl,
            26 => Self::DecMplsTtl,
            27 => Self::SetNwTtl,
            28 => Self::CopyTtlOut,
            29 => Self::CopyTtlIn,
            30 => Self::SetIpv6Src,
            31 => Self::SetIpv6Dst,
            32 => Self::SetNdTarget,
            33 => Self::SetArpSha,
            34 => Self::SetArpTha,
            35 => Self::SetNdSll,
            36 => Self::SetNdTll,
            37 => Self::SetArpOp,
            38 => Self::SetArpSpa,
            39 => Self::SetArpTpa,
            40 => Self::SetIcmpType,
            41 => Self::SetIcmpCode,
            42 => Self::SetTunnelId,
            _ => return None,
        })
    }

    /// True for actions after which the packet has left this datapath
    /// (only the last of several outputs is terminal; the others clone).
    pub fn is_output(self) -> bool {
        matches!(
            self,
            Self::Output | Self::OutputInPort | Self::OutputLocal | Self::Controller
        )
    }

    /// True for the kinds the one-table fast path runs (outputs, drop, the
    /// lazily written Ethernet/IPv4/TCP/UDP set-fields, TTL decrement and
    /// set): a rule with any other kind runs in the pipeline program.
    pub fn on_fast_path(self) -> bool {
        matches!(
            self,
            Self::Output
                | Self::OutputInPort
                | Self::OutputLocal
                | Self::Controller
                | Self::Drop
                | Self::SetEthSrc
                | Self::SetEthDst
                | Self::SetIpv4Src
                | Self::SetIpv4Dst
                | Self::SetL4Src
                | Self::SetL4Dst
                | Self::DecTtl
                | Self::SetNwTtl
        )
    }

    /// True for actions that change the packet's layout (tags and label
    /// stack entries come or go), after which it is parsed again.
    pub fn is_structural(self) -> bool {
        matches!(
            self,
            Self::PushVlan | Self::PopVlan | Self::PushMpls | Self::PopMpls
        )
    }
}

/// Slots of an action set ([`set_slot`]).
pub const ASET_SLOTS: usize = 64;

/// The slot of an action of kind `kind` (an [`ActionKind`] as u16) and
/// half `half` ([`Action::half`]) in an OpenFlow action set: one slot per action type (per
/// half for the 16-byte set-fields), so a written action replaces the one
/// of its type, and slots in the order the set runs: copy TTL in, pops,
/// push MPLS, push VLAN, copy TTL out, decrement TTLs, set-fields, group,
/// output. Below [`ASET_SLOTS`].
pub const fn set_slot(kind: u16, half: u32) -> u32 {
    match kind {
        29 => 0,     // CopyTtlIn
        19 => 1,     // PopVlan
        21 => 2,     // PopMpls
        20 => 3,     // PushMpls
        18 => 4,     // PushVlan
        28 => 5,     // CopyTtlOut
        12 => 6,     // DecTtl
        26 => 7,     // DecMplsTtl
        13 => 60,    // Group
        1..=4 => 61, // the outputs: one output in a set
        5 => 62,     // Drop
        // The second halves of the 16-byte set-fields.
        30..=32 if half & 1 == 1 => 45 + (kind as u32 - 30),
        // Set-fields (6..=11, 14..=17, 22..=25, 27, 30..=42): after the
        // TTL decrements, each its own slot.
        6..=42 => kind as u32 + 2,
        _ => 63,
    }
}

/// One compiled action: a kind plus its argument, 12 bytes.
///
/// The numeric argument and the byte argument share the same 8 bytes (no
/// kind uses both): [`Action::arg`] is the first 4, [`Action::data`] all 8
/// (`arg` then `arg_hi`, each in native byte order). Twelve bytes, not 16,
/// so that eight of them fit a [`crate::FlowEntry`] of 152 bytes, whose
/// classifier hash map element the kernel allocates as a 256-byte slab
/// object instead of a 512-byte one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Action {
    /// An [`ActionKind`] as u16.
    pub kind: u16,
    /// Which half of a 16-byte set-field `data` is (0: bytes 0..8, 1:
    /// bytes 8..16), for [`ActionKind::SetIpv6Src`], [`ActionKind::SetIpv6Dst`]
    /// and [`ActionKind::SetNdTarget`]; zero for every other kind.
    pub half: u16,
    /// Numeric argument: port number, L4 port, max_len; or bytes 0..4 of
    /// the byte argument ([`Action::data`]).
    pub arg: u32,
    /// Bytes 4..8 of the byte argument ([`Action::data`]).
    pub arg_hi: u32,
}

impl Action {
    const fn new(kind: ActionKind, half: u16, data: [u8; 8]) -> Self {
        Action {
            kind: kind as u16,
            half,
            arg: u32::from_ne_bytes([data[0], data[1], data[2], data[3]]),
            arg_hi: u32::from_ne_bytes([data[4], data[5], data[6], data[7]]),
        }
    }

    const fn numeric(kind: ActionKind, arg: u32) -> Self {
        Action {
            kind: kind as u16,
            half: 0,
            arg,
            arg_hi: 0,
        }
    }

    /// Output to OpenFlow port `port`.
    pub fn output(port: u32) -> Self {
        Self::numeric(ActionKind::Output, port)
    }
    /// Output back to the ingress port.
    pub fn output_in_port() -> Self {
        Self::numeric(ActionKind::OutputInPort, 0)
    }
    /// Output to the host stack.
    pub fn output_local() -> Self {
        Self::numeric(ActionKind::OutputLocal, 0)
    }
    /// Punt to the controller, sending at most `max_len` bytes.
    pub fn controller(max_len: u32) -> Self {
        Self::numeric(ActionKind::Controller, max_len)
    }
    /// Drop.
    pub fn drop_packet() -> Self {
        Self::numeric(ActionKind::Drop, 0)
    }
    /// Set Ethernet source.
    pub fn set_eth_src(mac: [u8; 6]) -> Self {
        Self::new(ActionKind::SetEthSrc, 0, mac6(mac))
    }
    /// Set Ethernet destination.
    pub fn set_eth_dst(mac: [u8; 6]) -> Self {
        Self::new(ActionKind::SetEthDst, 0, mac6(mac))
    }
    /// Set IPv4 source.
    pub fn set_ipv4_src(ip: [u8; 4]) -> Self {
        Self::new(ActionKind::SetIpv4Src, 0, ip4(ip))
    }
    /// Set IPv4 destination.
    pub fn set_ipv4_dst(ip: [u8; 4]) -> Self {
        Self::new(ActionKind::SetIpv4Dst, 0, ip4(ip))
    }
    /// Set TCP/UDP source port.
    pub fn set_l4_src(port: u16) -> Self {
        Self::numeric(ActionKind::SetL4Src, port as u32)
    }
    /// Set TCP/UDP destination port.
    pub fn set_l4_dst(port: u16) -> Self {
        Self::numeric(ActionKind::SetL4Dst, port as u32)
    }
    /// Decrement TTL.
    pub fn dec_ttl() -> Self {
        Self::numeric(ActionKind::DecTtl, 0)
    }
    /// An action of `kind` with a numeric argument.
    pub fn with_arg(kind: ActionKind, arg: u32) -> Self {
        Self::numeric(kind, arg)
    }
    /// An action of `kind` with byte data; `half` says which half of a
    /// 16-byte set-field it is ([`Action::half`]), else 0.
    pub fn with_data(kind: ActionKind, half: u16, data: [u8; 8]) -> Self {
        Self::new(kind, half, data)
    }
    /// Apply group `id`.
    pub fn group(id: u32) -> Self {
        Self::numeric(ActionKind::Group, id)
    }

    /// The decoded kind, `None` when the stored value is unknown.
    pub fn kind(&self) -> Option<ActionKind> {
        ActionKind::from_u16(self.kind)
    }

    /// This action's slot in an action set ([`set_slot`]).
    pub fn set_slot(&self) -> u32 {
        set_slot(self.kind, self.half as u32)
    }
    /// The byte argument: MAC address (6 bytes), IPv4 address (4 bytes),
    /// half an IPv6 address, tunnel id, TOS value and mask.
    #[inline(always)]
    pub fn data(&self) -> [u8; 8] {
        let (a, b) = (self.arg.to_ne_bytes(), self.arg_hi.to_ne_bytes());
        [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]]
    }
    /// The byte argument as a MAC address.
    #[inline(always)]
    pub fn mac(&self) -> [u8; 6] {
        let d = self.data();
        [d[0], d[1], d[2], d[3], d[4], d[5]]
    }
    /// The byte argument as an IPv4 address.
    #[inline(always)]
    pub fn ipv4(&self) -> [u8; 4] {
        self.arg.to_ne_bytes()
    }
}

fn mac6(m: [u8; 6]) -> [u8; 8] {
    [m[0], m[1], m[2], m[3], m[4], m[5], 0, 0]
}

fn ip4(a: [u8; 4]) -> [u8; 8] {
    [a[0], a[1], a[2], a[3], 0, 0, 0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for v in 0..ACTION_KINDS + 8 {
            match ActionKind::from_u16(v) {
                Some(k) => assert_eq!(k as u16, v),
                None => assert!(v == 0 || v >= ACTION_KINDS, "{v}"),
            }
        }
        assert_eq!(
            Action::set_eth_dst([1, 2, 3, 4, 5, 6]).mac(),
            [1, 2, 3, 4, 5, 6]
        );
        assert_eq!(Action::set_ipv4_src([10, 0, 0, 1]).ipv4(), [10, 0, 0, 1]);
        assert_eq!(Action::output(3).kind(), Some(ActionKind::Output));
        // The byte argument keeps all 8 bytes, and the numeric argument is
        // its first 4: a kind uses one or the other.
        let d = [1, 2, 3, 4, 5, 6, 7, 8];
        let t = Action::with_data(ActionKind::SetTunnelId, 0, d);
        assert_eq!(t.data(), d);
        assert_eq!(t.half, 0);
        let h = Action::with_data(ActionKind::SetIpv6Dst, 1, d);
        assert_eq!((h.data(), h.half), (d, 1));
        assert_eq!(Action::output(0xffff_fffe).arg, 0xffff_fffe);
        assert_eq!(Action::output(7).data()[..4], 7u32.to_ne_bytes());
    }

    #[test]
    fn action_set_slots() {
        use ActionKind as K;
        let slot = |k: K| set_slot(k as u16, 0);
        // One slot per action type; the outputs share one; halves differ.
        let mut seen = [None; ASET_SLOTS];
        for v in 1..ACTION_KINDS {
            for half in 0..2 {
                let s = set_slot(v, half);
                assert!((s as usize) < ASET_SLOTS, "{v}: {s}");
                if let Some((w, h)) = seen[s as usize] {
                    let outputs = (1..=4).contains(&v) && (1..=4).contains(&w);
                    let same = w == v && (h == half || !(30..=32).contains(&v));
                    assert!(outputs || same, "{v}/{half} and {w}/{h} share slot {s}");
                }
                seen[s as usize] = Some((v, half));
            }
        }
        // The order the set runs in (OpenFlow 1.3, 5.10).
        let order = [
            K::CopyTtlIn,
            K::PopVlan,
            K::PushMpls,
            K::PushVlan,
            K::CopyTtlOut,
            K::DecTtl,
            K::SetEthDst,
            K::Group,
            K::Output,
        ];
        for w in order.windows(2) {
            assert!(slot(w[0]) < slot(w[1]), "{:?} before {:?}", w[0], w[1]);
        }
        for k in [K::SetIpv6Src, K::SetNdTarget, K::SetTunnelId, K::SetNwTtl] {
            assert!(slot(K::DecMplsTtl) < slot(k) && slot(k) < slot(K::Group));
            assert!(set_slot(k as u16, 1) < slot(K::Group));
        }
        assert_eq!(slot(K::Controller), slot(K::Output));
    }
}
