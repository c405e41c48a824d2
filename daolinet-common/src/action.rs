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
}

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
}

/// One compiled action: a kind plus its argument.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Action {
    /// An [`ActionKind`] as u16.
    pub kind: u16,
    /// Reserved, zero.
    pub _pad: u16,
    /// Numeric argument: port number, L4 port, max_len.
    pub arg: u32,
    /// Byte argument: MAC address (6 bytes) or IPv4 address (4 bytes).
    pub data: [u8; 8],
}

impl Action {
    fn new(kind: ActionKind, arg: u32, data: [u8; 8]) -> Self {
        Action {
            kind: kind as u16,
            _pad: 0,
            arg,
            data,
        }
    }

    /// Output to OpenFlow port `port`.
    pub fn output(port: u32) -> Self {
        Self::new(ActionKind::Output, port, [0; 8])
    }
    /// Output back to the ingress port.
    pub fn output_in_port() -> Self {
        Self::new(ActionKind::OutputInPort, 0, [0; 8])
    }
    /// Output to the host stack.
    pub fn output_local() -> Self {
        Self::new(ActionKind::OutputLocal, 0, [0; 8])
    }
    /// Punt to the controller, sending at most `max_len` bytes.
    pub fn controller(max_len: u32) -> Self {
        Self::new(ActionKind::Controller, max_len, [0; 8])
    }
    /// Drop.
    pub fn drop_packet() -> Self {
        Self::new(ActionKind::Drop, 0, [0; 8])
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
        Self::new(ActionKind::SetL4Src, port as u32, [0; 8])
    }
    /// Set TCP/UDP destination port.
    pub fn set_l4_dst(port: u16) -> Self {
        Self::new(ActionKind::SetL4Dst, port as u32, [0; 8])
    }
    /// Decrement TTL.
    pub fn dec_ttl() -> Self {
        Self::new(ActionKind::DecTtl, 0, [0; 8])
    }

    /// The decoded kind, `None` when the stored value is unknown.
    pub fn kind(&self) -> Option<ActionKind> {
        ActionKind::from_u16(self.kind)
    }
    /// `data` as a MAC address.
    pub fn mac(&self) -> [u8; 6] {
        [
            self.data[0],
            self.data[1],
            self.data[2],
            self.data[3],
            self.data[4],
            self.data[5],
        ]
    }
    /// `data` as an IPv4 address.
    pub fn ipv4(&self) -> [u8; 4] {
        [self.data[0], self.data[1], self.data[2], self.data[3]]
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
        for v in 0..32u16 {
            if let Some(k) = ActionKind::from_u16(v) {
                assert_eq!(k as u16, v);
            }
        }
        assert_eq!(
            Action::set_eth_dst([1, 2, 3, 4, 5, 6]).mac(),
            [1, 2, 3, 4, 5, 6]
        );
        assert_eq!(Action::set_ipv4_src([10, 0, 0, 1]).ipv4(), [10, 0, 0, 1]);
        assert_eq!(Action::output(3).kind(), Some(ActionKind::Output));
    }
}
