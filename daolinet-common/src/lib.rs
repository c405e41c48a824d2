//! Types shared by the DaoliNet eBPF datapath (`daolinet-ebpf`) and userspace
//! (`daolinet-agent`).
//!
//! This crate is the single source of truth for the BPF map layouts: every
//! key and value is `#[repr(C)]`, has no implicit padding and implements
//! [`bytemuck::Pod`], so the same bytes are read on both sides.
//!
//! # The classifier
//!
//! OpenFlow rules are compiled into a *tuple-space* classifier:
//! - each distinct match mask is a [`Subtable`] (at most [`MAX_SUBTABLES`]),
//!   listed in the [`maps::SUBTABLES`] array in descending `max_priority`;
//! - every rule is one entry in the [`maps::FLOWS`] hash map, keyed by
//!   [`FlowMapKey`] (subtable id + the packet's [`FlowKey`] ANDed with the
//!   subtable mask), whose value [`FlowEntry`] carries priority, rule id and
//!   the compiled [`Action`]s;
//! - the datapath walks the subtables, keeps the best priority and stops as
//!   soon as no later subtable can beat it. A miss is punted to userspace.
//!   With several subtables, an exact-match cache (full packet key -> the
//!   winner's [`FlowMapKey`], tagged with [`DatapathConfig::generation`])
//!   turns the walk into two lookups for packets of known flows.
#![no_std]

pub mod action;
pub mod drop_reason;
pub mod drop_sample;
pub mod flow_key;
pub mod port;
pub mod punt;
pub mod stats;

pub use action::{Action, ActionKind, MAX_ACTIONS};
pub use drop_reason::DropReason;
pub use drop_sample::{
    DropSample, SampleBucket, SampleConfig, DROP_SAMPLE_CAP, DROP_SAMPLE_RING_BYTES, DROP_SLOTS,
};
pub use flow_key::{FlowKey, FLOW_KEY_WORDS, VLAN_PCP_MASK, VLAN_PRESENT, VLAN_VID_MASK};
pub use port::{MissPolicy, PortInfo, PortKind, PORT_FLAG_ANTI_SPOOF};
pub use punt::{PuntHeader, PuntReason, PuntRecord, PUNT_CAP};
pub use stats::{PortStats, RuleStats};

/// Maximum number of distinct match masks (subtables) the datapath walks.
pub const MAX_SUBTABLES: usize = 32;
/// Number of rules the maps are declared with in the object (entries of
/// [`maps::FLOWS`]); the agent sets the real size when it loads the
/// object (`--max-flows`).
pub const MAX_RULES: u32 = 131_072;
/// Maximum number of ports on one agent (slots of the port statistics).
pub const MAX_PORTS: u32 = 1024;
/// Slots of [`maps::PORT_INDEX`]: ports whose ifindex is below this are
/// found by an array lookup on ingress (others through [`maps::PORTS`]).
pub const PORT_INDEX_SLOTS: u32 = 4096;
/// Slots of [`maps::OFPORT_INDEX`]: OpenFlow port numbers below this are
/// found by an array lookup on output (others through [`maps::OFPORTS`]).
/// Covers the uplink's default number, 65000.
pub const OFPORT_INDEX_SLOTS: u32 = 65536;
/// Size in bytes of the punt ring buffer.
pub const PUNT_RING_BYTES: u32 = 1 << 22;
/// Rule id meaning "no rule" in [`PuntHeader::rule_id`].
pub const NO_RULE: u32 = u32::MAX;
/// OpenFlow's LOCAL port number (`OFPP_LOCAL`): the number of the
/// [`PortKind::Local`] port in the port maps.
pub const OFPP_LOCAL: u32 = 0xffff_fffe;

/// Names of the BPF maps and programs. They are also the file names under
/// the bpffs pin directory.
pub mod maps {
    /// Hash map [`crate::FlowMapKey`] -> [`crate::FlowEntry`]: the rules.
    pub const FLOWS: &str = "DL_FLOWS";
    /// Array of [`crate::Subtable`], sorted by descending max priority.
    pub const SUBTABLES: &str = "DL_SUBTABLES";
    /// Array with one [`crate::DatapathConfig`] at index 0.
    pub const CONFIG: &str = "DL_CONFIG";
    /// Hash map ifindex (u32) -> [`crate::PortInfo`].
    pub const PORTS: &str = "DL_PORTS";
    /// Hash map OpenFlow port number (u32) -> [`crate::PortInfo`].
    pub const OFPORTS: &str = "DL_OFPORTS";
    /// Array of [`crate::PortInfo`] indexed by ifindex (below
    /// [`crate::PORT_INDEX_SLOTS`]), the same ports as [`PORTS`]: the
    /// per-packet ingress lookup without hashing. A slot whose `ifindex`
    /// differs from its index is empty.
    pub const PORT_INDEX: &str = "DL_PORT_IDX";
    /// Array of [`crate::PortInfo`] indexed by OpenFlow port number (below
    /// [`crate::OFPORT_INDEX_SLOTS`]), the same ports as [`OFPORTS`]. A slot
    /// whose `ofport` differs from its index (or whose `ifindex` is 0) is
    /// empty.
    pub const OFPORT_INDEX: &str = "DL_OFPORT_IDX";
    /// Per-CPU array of [`crate::PortStats`] indexed by port slot.
    pub const PORT_STATS: &str = "DL_PORT_STATS";
    /// Per-CPU array of u64 counters indexed by [`crate::DropReason`].
    pub const DROPS: &str = "DL_DROPS";
    /// Ring buffer of [`crate::PuntRecord`]s.
    pub const PUNTS: &str = "DL_PUNTS";
    /// Per-CPU array of u64 drop counters by port and reason: index
    /// `slot * DROP_SLOTS + reason` ([`crate::DROP_SLOTS`]).
    pub const PORT_DROPS: &str = "DL_PORT_DROPS";
    /// Ring buffer of [`crate::DropSample`]s (sampled drops).
    pub const DROP_SAMPLES: &str = "DL_DROP_SAMPLES";
    /// Array with one [`crate::SampleConfig`] at index 0.
    pub const SAMPLE_CONFIG: &str = "DL_SAMPLE_CONFIG";
    /// Per-CPU array with one [`crate::SampleBucket`] at index 0.
    pub const SAMPLE_BUCKETS: &str = "DL_SAMPLE_BUCKETS";
    /// The TC (tcx) classifier program, used on container ports and on a TC uplink.
    pub const PROG_TC: &str = "daolinet_tc";
    /// The XDP program, used on the uplink with `--uplink-mode xdp`.
    pub const PROG_XDP: &str = "daolinet_xdp";
}

/// One subtable of the tuple-space classifier.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Subtable {
    /// The match mask shared by all rules of this subtable.
    pub mask: FlowKey,
    /// Stable id of the subtable, part of [`FlowMapKey`].
    pub id: u32,
    /// Highest priority of any rule in this subtable.
    pub max_priority: u32,
}

/// Global datapath configuration, index 0 of [`maps::CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DatapathConfig {
    /// Number of valid entries at the start of [`maps::SUBTABLES`].
    pub n_subtables: u32,
    /// Table generation: userspace bumps it (skipping 0) after every change
    /// of [`maps::FLOWS`] or [`maps::SUBTABLES`]. The datapath's exact-match
    /// cache only trusts entries made under the current generation; 0
    /// (nothing installed yet) disables the cache.
    pub generation: u32,
}

/// Key of [`maps::FLOWS`]: subtable id and masked packet key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FlowMapKey {
    /// [`Subtable::id`] of the rule's mask.
    pub subtable: u32,
    /// The rule's match, already ANDed with the subtable mask.
    pub key: FlowKey,
}

/// Value of [`maps::FLOWS`]: one compiled rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FlowEntry {
    /// OpenFlow priority; higher wins.
    pub priority: u32,
    /// Rule id: index of the rule's statistics and metadata.
    pub rule_id: u32,
    /// Number of valid entries in `actions`; zero means drop.
    pub n_actions: u32,
    /// OpenFlow flow-mod flags (`OFPFF_*`), for userspace.
    pub flags: u16,
    /// Reserved, zero.
    pub _pad: u16,
    /// Packets that hit the rule. The counters live in the entry itself,
    /// so their memory follows the rules installed: the datapath adds to
    /// them atomically (all CPUs share the entry), userspace reads them
    /// with the entry and carries them over when it rewrites the entry.
    pub packets: u64,
    /// Bytes that hit the rule.
    pub bytes: u64,
    /// `bpf_ktime_get_coarse_ns()` of the last hit (CLOCK_MONOTONIC_COARSE,
    /// which trails CLOCK_MONOTONIC by at most a timer tick).
    pub last_used_ns: u64,
    /// OpenFlow cookie, for userspace: with the fields above and the
    /// subtable's mask, the entry is the whole rule, which a restarted
    /// agent reads back.
    pub cookie: u64,
    /// Idle timeout in seconds (0 = none), for userspace.
    pub idle_timeout: u16,
    /// Hard timeout in seconds (0 = none), for userspace.
    pub hard_timeout: u16,
    /// Reserved, zero.
    pub _pad2: u32,
    /// The actions, applied in order.
    pub actions: [Action; MAX_ACTIONS],
}

#[cfg(feature = "user")]
mod aya_pod {
    // SAFETY: all of these are repr(C), Copy and bytemuck::Pod (no padding,
    // every bit pattern valid), which is what aya::Pod requires.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowMapKey {}
    unsafe impl aya::Pod for super::FlowEntry {}
    unsafe impl aya::Pod for super::Subtable {}
    unsafe impl aya::Pod for super::DatapathConfig {}
    unsafe impl aya::Pod for super::PortInfo {}
    unsafe impl aya::Pod for super::RuleStats {}
    unsafe impl aya::Pod for super::PortStats {}
    unsafe impl aya::Pod for super::PuntHeader {}
    unsafe impl aya::Pod for super::SampleConfig {}
    unsafe impl aya::Pod for super::SampleBucket {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_the_sizes_the_datapath_expects() {
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<FlowMapKey>(), 44);
        assert_eq!(size_of::<Action>(), 16);
        assert_eq!(size_of::<FlowEntry>(), 56 + 16 * MAX_ACTIONS);
        assert_eq!(size_of::<Subtable>(), 48);
        assert_eq!(size_of::<PortInfo>(), 32);
        assert_eq!(size_of::<PuntHeader>(), 48);
        assert_eq!(size_of::<RuleStats>(), 24);
    }
}
