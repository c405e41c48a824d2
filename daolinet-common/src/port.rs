//! Ports known to the datapath ([`crate::maps::PORTS`], [`crate::maps::OFPORTS`]).

/// What kind of interface a port is; decides how output reaches it.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// Host side of a container's veth: output uses `bpf_redirect_peer`, so
    /// the packet lands directly in the container's namespace.
    Container = 0,
    /// The uplink (physical NIC): output uses `bpf_redirect` to its egress.
    Uplink = 1,
    /// The agent's LOCAL port, a TAP device (`dllocalN`) standing for the
    /// host stack. The program runs on its tcx *egress*: what the host
    /// stack routes to it (the physical pool: NAT-out replies after
    /// de-masquerade) enters the datapath with `in_port=LOCAL`, and output
    /// from there to a container uses `bpf_redirect` to the veth's egress
    /// (`bpf_redirect_peer` only works at ingress). Output to LOCAL from a
    /// container port enters the host stack *through* this device
    /// (`bpf_redirect` with `BPF_F_INGRESS`, destination MAC set to
    /// [`PortInfo::allowed_mac`], the device's), so the stack sees every
    /// such packet on one interface that has an address and the pool's
    /// route: reverse-path filtering accepts it in every mode.
    Local = 2,
}

/// What the datapath does with a packet that matches no rule.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissPolicy {
    /// Punt it to userspace (then to the controller as PACKET_IN).
    Punt = 0,
    /// Hand it to the host stack (default on the uplink, so the host's own
    /// traffic keeps working).
    Local = 1,
    /// Drop it (counted as [`crate::DropReason::MissDrop`]).
    Drop = 2,
}

impl MissPolicy {
    /// Decode a stored value; unknown values mean [`MissPolicy::Punt`].
    pub fn from_u32(v: u32) -> Self {
        match v {
            1 => Self::Local,
            2 => Self::Drop,
            _ => Self::Punt,
        }
    }
}

/// [`PortInfo::flags`] bit: only accept `allowed_mac`/`allowed_ipv4` as source.
pub const PORT_FLAG_ANTI_SPOOF: u16 = 1;

/// A port as the datapath sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PortInfo {
    /// OpenFlow port number.
    pub ofport: u32,
    /// Kernel interface index.
    pub ifindex: u32,
    /// A [`PortKind`] as u32.
    pub kind: u32,
    /// A [`MissPolicy`] as u32.
    pub miss: u32,
    /// Index in [`crate::maps::PORT_STATS`].
    pub slot: u32,
    /// Source IPv4 the container was registered with (anti-spoofing).
    pub allowed_ipv4: [u8; 4],
    /// Source MAC the container was registered with (anti-spoofing); for a
    /// [`PortKind::Local`] port, the device's own MAC (the destination of
    /// the frames handed to the host stack through it).
    pub allowed_mac: [u8; 6],
    /// `PORT_FLAG_*` bits.
    pub flags: u16,
}

impl PortInfo {
    /// True when this is a container port.
    pub fn is_container(&self) -> bool {
        self.kind == PortKind::Container as u32
    }

    /// True when this is the LOCAL port (see [`PortKind::Local`]).
    pub fn is_local(&self) -> bool {
        self.kind == PortKind::Local as u32
    }
}
