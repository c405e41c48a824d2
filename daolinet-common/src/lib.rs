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
pub mod meter;
pub mod port;
pub mod punt;
pub mod stats;

pub use action::{set_slot, Action, ActionKind, ACTION_KINDS, ASET_SLOTS, MAX_ACTIONS};
pub use drop_reason::DropReason;
pub use drop_sample::{
    DropSample, SampleBucket, SampleConfig, DROP_SAMPLE_CAP, DROP_SAMPLE_RING_BYTES, DROP_SLOTS,
};
pub use flow_key::{
    u64_of, words_of, FlowKey, FlowKeyExt, FullKey, FLOW_KEY_EXT_WORDS, FLOW_KEY_WORDS,
    FULL_KEY_WORDS, VLAN_PCP_MASK, VLAN_PRESENT, VLAN_VID_MASK,
};
pub use meter::{meter_cost, remark_dscp, MeterEntry, BAND_DROP, BAND_DSCP_REMARK, METER_PKTPS};
pub use port::{MissPolicy, PortInfo, PortKind, PORT_FLAG_ANTI_SPOOF};
pub use punt::{PuntHeader, PuntReason, PuntRecord, PUNT_CAP};
pub use stats::{PortStats, RuleStats};

/// Maximum number of distinct match masks (subtables) the datapath walks
/// in one table.
pub const MAX_SUBTABLES: usize = 32;
/// Number of OpenFlow tables (ids 0 to `N_TABLES - 1`).
pub const N_TABLES: u32 = 16;
/// Slots of [`maps::SUBTABLES`]: table `t` has slots
/// `t * MAX_SUBTABLES ..`.
pub const SUBTABLE_SLOTS: u32 = N_TABLES * MAX_SUBTABLES as u32;
/// Bit of [`Subtable::id`] marking a *wide* subtable: its mask uses
/// [`FlowKeyExt`] fields, its rules are in [`maps::FLOWS_WIDE`] and its
/// [`FlowKeyExt`] mask is in [`maps::SUBTABLE_EXT`] at the same slot.
pub const SUBTABLE_WIDE: u32 = 1 << 31;
/// [`DatapathConfig::flags`] and [`TableConfig::flags`]: the table has
/// wide subtables (the packet's [`FlowKeyExt`] must be filled before the
/// walk; no exact-match cache, whose key is the compact one).
pub const TABLE_WIDE: u32 = 1;
/// "No table" in [`RuleExt::goto_table`].
pub const NO_TABLE: u32 = u32::MAX;
/// Buckets of a group, at most.
pub const MAX_BUCKETS: usize = 16;
/// Actions of a group bucket, at most.
pub const BUCKET_ACTIONS: usize = 4;
/// Slots of a select group's bucket table ([`GroupEntry::select`]).
pub const SELECT_SLOTS: usize = 64;
/// "No bucket" in [`GroupEntry::live`].
pub const NO_BUCKET: u32 = u32::MAX;
/// Groups the datapath holds, at most.
pub const MAX_GROUPS: u32 = 4096;
/// Meters the datapath holds, at most.
pub const MAX_METERS: u32 = 4096;
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
    /// Hash map [`crate::WideMapKey`] -> [`crate::FlowEntry`]: the rules of
    /// wide subtables.
    pub const FLOWS_WIDE: &str = "DL_FLOWS_WIDE";
    /// Array of [`crate::FlowKeyExt`]: the wide part of the mask of a wide
    /// subtable, at the subtable's slot in [`SUBTABLES`].
    pub const SUBTABLE_EXT: &str = "DL_SUBTABLE_EXT";
    /// Array of [`crate::TableConfig`] by table id (tables 1 and up; table
    /// 0 is described by [`CONFIG`]).
    pub const TABLES: &str = "DL_TABLES";
    /// Hash map rule id (u32) -> [`crate::RuleExt`]: the instructions of
    /// rules with [`crate::ENTRY_PIPELINE`].
    pub const RULE_EXT: &str = "DL_RULE_EXT";
    /// Per-CPU array of [`crate::TableStats`] by table id (tables 1 and up;
    /// table 0's come from the port and rule counters).
    pub const TABLE_STATS: &str = "DL_TABLE_STATS";
    /// Hash map group id (u32) -> [`crate::GroupEntry`].
    pub const GROUPS: &str = "DL_GROUPS";
    /// Hash map meter id (u32) -> [`crate::MeterEntry`].
    pub const METERS: &str = "DL_METERS";
    /// Per-CPU array of [`crate::GroupStats`] indexed by
    /// [`crate::GroupEntry::stats_slot`].
    pub const GROUP_STATS: &str = "DL_GROUP_STATS";
    /// Per-CPU array of [`crate::MeterStats`] indexed by
    /// [`crate::MeterEntry::stats_slot`].
    pub const METER_STATS: &str = "DL_METER_STATS";
    /// Program array of the TC pipeline program (not pinned).
    pub const PIPELINE_TC: &str = "DL_PIPELINE_TC";
    /// Program array of the XDP pipeline program (not pinned).
    pub const PIPELINE_XDP: &str = "DL_PIPELINE_XDP";
    /// The TC pipeline program, tail-called by [`PROG_TC`] for rules beyond
    /// one table of apply-actions.
    pub const PROG_TC_PIPELINE: &str = "daolinet_tc_pipeline";
    /// The XDP pipeline program, tail-called by [`PROG_XDP`].
    pub const PROG_XDP_PIPELINE: &str = "daolinet_xdp_pipeline";
    /// The TC (tcx) classifier program, used on container ports and on a TC uplink.
    pub const PROG_TC: &str = "daolinet_tc";
    /// The XDP program, used on the uplink with `--uplink-mode xdp`.
    pub const PROG_XDP: &str = "daolinet_xdp";
}

/// One subtable of the tuple-space classifier.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Subtable {
    /// The match mask shared by all rules of this subtable (the compact
    /// part; a wide subtable has the rest in [`maps::SUBTABLE_EXT`]).
    pub mask: FlowKey,
    /// Stable id of the subtable, part of [`FlowMapKey`] (unique over all
    /// tables), with [`SUBTABLE_WIDE`] set for a wide subtable.
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
    /// `TABLE_*` bits of table 0.
    pub flags: u32,
    /// Interface index of the agent's punt bell (a TAP device it reads),
    /// 0 for none. When a punt record finds the reader caught up, the
    /// datapath (TC) commits it without the ring's own wake-up and sends
    /// a copy of the packet there instead: the socket wake-up is a plain
    /// (synchronous) one, the ring's goes through an interrupt (irq_work)
    /// that costs about 10 µs more on a virtual machine.
    pub punt_bell: u32,
}

/// A table beyond table 0 ([`maps::TABLES`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct TableConfig {
    /// Number of valid subtables at the table's slots of [`maps::SUBTABLES`].
    pub n_subtables: u32,
    /// `TABLE_*` bits.
    pub flags: u32,
}

/// Lookups in a table and how many found a rule ([`maps::TABLE_STATS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct TableStats {
    /// Packets looked up.
    pub lookups: u64,
    /// Of which matched a rule.
    pub matched: u64,
}

/// Key of [`maps::FLOWS_WIDE`]: subtable id and masked whole key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct WideMapKey {
    /// [`Subtable::id`] of the rule's mask ([`SUBTABLE_WIDE`] set).
    pub subtable: u32,
    /// The rule's match, ANDed with the subtable mask.
    pub key: FullKey,
}

/// [`FlowEntry::kind`]: the rule has instructions beyond apply-actions
/// (goto_table, write_metadata, write/clear_actions, meter) in
/// [`maps::RULE_EXT`]. Rules without it take the one-table fast path.
pub const ENTRY_PIPELINE: u16 = 1;

/// [`RuleExt::flags`]: clear the action set (clear_actions).
pub const EXT_CLEAR_ACTIONS: u32 = 1;

/// The instructions of a rule beyond its apply-actions list, in the order
/// OpenFlow runs them: meter, (apply-actions,) clear-actions,
/// write-actions, write-metadata, goto-table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RuleExt {
    /// Table to continue in, or [`NO_TABLE`] (the pipeline ends here).
    pub goto_table: u32,
    /// Meter id, 0 for none.
    pub meter: u32,
    /// write_metadata value (low, high).
    pub metadata: [u32; 2],
    /// write_metadata mask (low, high); zero: no write_metadata.
    pub metadata_mask: [u32; 2],
    /// `EXT_*` bits.
    pub flags: u32,
    /// Number of actions in `write`.
    pub n_write: u32,
    /// write_actions, already in action-set order.
    pub write: [Action; MAX_ACTIONS],
}

impl Default for RuleExt {
    fn default() -> Self {
        RuleExt {
            goto_table: NO_TABLE,
            meter: 0,
            metadata: [0; 2],
            metadata_mask: [0; 2],
            flags: 0,
            n_write: 0,
            write: [Action::default(); MAX_ACTIONS],
        }
    }
}

/// One bucket of a group.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Bucket {
    /// Number of valid `actions`.
    pub n_actions: u32,
    /// Reserved, zero.
    pub _pad: u32,
    /// The actions (a bucket's action set, in action-set order).
    pub actions: [Action; BUCKET_ACTIONS],
}

/// OpenFlow group types (`GroupEntry::group_type`).
pub mod group_type {
    /// All buckets (multicast, flooding).
    pub const ALL: u32 = 0;
    /// One bucket, chosen by the packet's hash (and the weights).
    pub const SELECT: u32 = 1;
    /// The one bucket.
    pub const INDIRECT: u32 = 2;
    /// The first live bucket.
    pub const FAST_FAILOVER: u32 = 3;
}

/// A group ([`maps::GROUPS`]). Userspace decides liveness and weights:
/// `live` and `select` are rewritten when ports come and go.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GroupEntry {
    /// A [`group_type`] value.
    pub group_type: u32,
    /// Number of valid `buckets`.
    pub n_buckets: u32,
    /// Fast failover: the live bucket to use, or [`NO_BUCKET`].
    pub live: u32,
    /// Slot of the group's counters in [`maps::GROUP_STATS`].
    pub stats_slot: u32,
    /// Select: bucket index by hash slot (weights decide how many slots a
    /// bucket has; dead buckets have none), [`SELECT_SLOTS`] entries, 0xff
    /// when no bucket is live.
    pub select: [u8; SELECT_SLOTS],
    /// The buckets.
    pub buckets: [Bucket; MAX_BUCKETS],
}

impl Default for GroupEntry {
    fn default() -> Self {
        GroupEntry {
            group_type: 0,
            n_buckets: 0,
            live: NO_BUCKET,
            stats_slot: 0,
            select: [0xff; SELECT_SLOTS],
            buckets: [Bucket::default(); MAX_BUCKETS],
        }
    }
}

/// Counters of a group ([`maps::GROUP_STATS`]) and of its buckets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GroupStats {
    /// Packets that went through the group.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Packets per bucket.
    pub bucket_packets: [u64; MAX_BUCKETS],
    /// Bytes per bucket.
    pub bucket_bytes: [u64; MAX_BUCKETS],
}

/// Counters of a meter ([`maps::METER_STATS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MeterStats {
    /// Packets that went through the meter.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Packets the band applied to.
    pub band_packets: u64,
    /// Their bytes.
    pub band_bytes: u64,
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
    /// `ENTRY_*` bits (0: apply-actions only, the fast path).
    pub kind: u16,
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
    unsafe impl aya::Pod for super::FlowKeyExt {}
    unsafe impl aya::Pod for super::WideMapKey {}
    unsafe impl aya::Pod for super::TableConfig {}
    unsafe impl aya::Pod for super::TableStats {}
    unsafe impl aya::Pod for super::RuleExt {}
    unsafe impl aya::Pod for super::GroupEntry {}
    unsafe impl aya::Pod for super::GroupStats {}
    unsafe impl aya::Pod for super::MeterEntry {}
    unsafe impl aya::Pod for super::MeterStats {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_the_sizes_the_datapath_expects() {
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<FlowMapKey>(), 44);
        assert_eq!(size_of::<Action>(), 12);
        assert_eq!(size_of::<FlowEntry>(), 56 + 12 * MAX_ACTIONS);
        // The kernel allocates an element of a BPF_F_NO_PREALLOC hash map
        // (48-byte header, key and value each rounded up to 8 bytes, 8
        // bytes of allocator link) from the next kmalloc size class: a
        // FlowEntry of at most 152 bytes with the 44-byte key makes a
        // 256-byte object, one more byte a 512-byte one.
        assert!(
            48 + size_of::<FlowMapKey>().next_multiple_of(8) + size_of::<FlowEntry>() + 8 <= 256
        );
        assert_eq!(size_of::<Subtable>(), 48);
        assert_eq!(size_of::<PortInfo>(), 32);
        assert_eq!(size_of::<PuntHeader>(), 48);
        assert_eq!(size_of::<RuleStats>(), 24);
        assert_eq!(size_of::<FlowKeyExt>(), 76);
        assert_eq!(size_of::<WideMapKey>(), 120);
        assert_eq!(size_of::<RuleExt>(), 32 + 12 * MAX_ACTIONS);
        assert_eq!(
            size_of::<GroupEntry>(),
            16 + SELECT_SLOTS + (8 + 12 * BUCKET_ACTIONS) * MAX_BUCKETS
        );
        assert_eq!(size_of::<DatapathConfig>(), 16);
    }
}
