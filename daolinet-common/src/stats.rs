//! Counters kept by the datapath: per rule in the rule's own entry
//! ([`crate::FlowEntry`]), per port in per-CPU maps (userspace sums the
//! CPUs).

/// A rule's counters, as userspace reads them from its [`crate::FlowEntry`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RuleStats {
    /// Packets that hit the rule.
    pub packets: u64,
    /// Bytes that hit the rule.
    pub bytes: u64,
    /// `bpf_ktime_get_coarse_ns()` of the last hit: CLOCK_MONOTONIC_COARSE,
    /// which trails CLOCK_MONOTONIC by at most a timer tick.
    pub last_used_ns: u64,
}

/// Per-port counters ([`crate::maps::PORT_STATS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PortStats {
    /// Packets received on the port.
    pub rx_packets: u64,
    /// Bytes received on the port.
    pub rx_bytes: u64,
    /// Packets the datapath sent to the port.
    pub tx_packets: u64,
    /// Bytes the datapath sent to the port.
    pub tx_bytes: u64,
    /// Packets received on the port and dropped.
    pub rx_dropped: u64,
}

impl RuleStats {
    /// Sum of per-CPU values (last_used is the maximum).
    pub fn merge(&mut self, other: &RuleStats) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
        if other.last_used_ns > self.last_used_ns {
            self.last_used_ns = other.last_used_ns;
        }
    }
}

impl PortStats {
    /// Sum of per-CPU values.
    pub fn merge(&mut self, other: &PortStats) {
        self.rx_packets = self.rx_packets.wrapping_add(other.rx_packets);
        self.rx_bytes = self.rx_bytes.wrapping_add(other.rx_bytes);
        self.tx_packets = self.tx_packets.wrapping_add(other.tx_packets);
        self.tx_bytes = self.tx_bytes.wrapping_add(other.tx_bytes);
        self.rx_dropped = self.rx_dropped.wrapping_add(other.rx_dropped);
    }
}
