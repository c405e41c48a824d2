//! The BPF maps of the datapath.
//!
//! Every map is declared *pinned by name*: when the agent loads the object
//! with aya's `EbpfLoader::map_pin_path(dir)`, each map is pinned as
//! `dir/<NAME>` (or the existing pin is reused), so forwarding state survives
//! an agent restart. The static names below must equal the strings in
//! [`daolinet_common::maps`]; a compile-time check enforces it.

use crate::{actions::ActState, classify::EmcEntry};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use daolinet_common::{
    maps as names, DatapathConfig, DropReason, FlowEntry, FlowKey, FlowKeyExt, FlowMapKey,
    GroupEntry, GroupStats, MeterEntry, MeterStats, PortInfo, PortStats, RuleExt, SampleBucket,
    SampleConfig, Subtable, TableConfig, TableStats, WideMapKey, DROP_SAMPLE_RING_BYTES,
    DROP_SLOTS, MAX_GROUPS, MAX_METERS, MAX_PORTS, MAX_RULES, N_TABLES, OFPORT_INDEX_SLOTS,
    PORT_INDEX_SLOTS, PUNT_RING_BYTES, SUBTABLE_SLOTS,
};

/// `BPF_F_NO_PREALLOC`: allocate hash map entries on demand.
const BPF_F_NO_PREALLOC: u32 = 1;

/// The rules: [`FlowMapKey`] -> [`FlowEntry`]. Not preallocated: memory
/// follows the rules installed, and the agent sizes it at load time
/// (`--max-flows`); a lookup costs the same either way.
#[map]
pub static DL_FLOWS: HashMap<FlowMapKey, FlowEntry> = HashMap::pinned(MAX_RULES, BPF_F_NO_PREALLOC);

/// The subtables (match masks) of every table, each table's sorted by
/// descending `max_priority` (table `t` at slots `t * MAX_SUBTABLES..`).
#[map]
pub static DL_SUBTABLES: Array<Subtable> = Array::pinned(SUBTABLE_SLOTS, 0);

/// The wide part of the masks of wide subtables, at their slots.
#[map]
pub static DL_SUBTABLE_EXT: Array<FlowKeyExt> = Array::pinned(SUBTABLE_SLOTS, 0);

/// The rules of wide subtables (not preallocated: most rules are compact).
#[map]
pub static DL_FLOWS_WIDE: HashMap<WideMapKey, FlowEntry> =
    HashMap::pinned(MAX_RULES, BPF_F_NO_PREALLOC);

/// Tables 1 and up (table 0 is [`DL_CONFIG`]).
#[map]
pub static DL_TABLES: Array<TableConfig> = Array::pinned(N_TABLES, 0);

/// Instructions of pipeline rules by rule id (not preallocated).
#[map]
pub static DL_RULE_EXT: HashMap<u32, RuleExt> = HashMap::pinned(MAX_RULES, BPF_F_NO_PREALLOC);

/// Per-CPU lookups and matches of tables 1 and up.
#[map]
pub static DL_TABLE_STATS: PerCpuArray<TableStats> = PerCpuArray::pinned(N_TABLES, 0);

/// Groups by id.
#[map]
pub static DL_GROUPS: HashMap<u32, GroupEntry> = HashMap::pinned(MAX_GROUPS, BPF_F_NO_PREALLOC);

/// Per-CPU group counters by [`GroupEntry::stats_slot`].
#[map]
pub static DL_GROUP_STATS: PerCpuArray<GroupStats> = PerCpuArray::pinned(MAX_GROUPS, 0);

/// Meters by id (shared by all CPUs: a meter's budget is global).
#[map]
pub static DL_METERS: HashMap<u32, MeterEntry> = HashMap::pinned(MAX_METERS, BPF_F_NO_PREALLOC);

/// Per-CPU meter counters by [`MeterEntry::stats_slot`].
#[map]
pub static DL_METER_STATS: PerCpuArray<MeterStats> = PerCpuArray::pinned(MAX_METERS, 0);

/// Global configuration at index 0.
#[map]
pub static DL_CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);

/// Ports by kernel ifindex (ingress lookup).
#[map]
pub static DL_PORTS: HashMap<u32, PortInfo> = HashMap::pinned(MAX_PORTS, 0);

/// Ports by OpenFlow port number (output lookup).
#[map]
pub static DL_OFPORTS: HashMap<u32, PortInfo> = HashMap::pinned(MAX_PORTS, 0);

/// Ports by ifindex below [`PORT_INDEX_SLOTS`] (array: no hashing per
/// packet); [`DL_PORTS`] holds them too, and every other port.
#[map]
pub static DL_PORT_IDX: Array<PortInfo> = Array::pinned(PORT_INDEX_SLOTS, 0);

/// Ports by OpenFlow port number below [`OFPORT_INDEX_SLOTS`];
/// [`DL_OFPORTS`] holds them too, and every other port.
#[map]
pub static DL_OFPORT_IDX: Array<PortInfo> = Array::pinned(OFPORT_INDEX_SLOTS, 0);

/// The port that `ifindex` is, if it is one of ours.
#[inline(always)]
pub fn port_by_ifindex(ifindex: u32) -> Option<&'static PortInfo> {
    if ifindex < PORT_INDEX_SLOTS {
        let p = DL_PORT_IDX.get(ifindex)?;
        return if p.ifindex == ifindex && ifindex != 0 {
            Some(p)
        } else {
            None
        };
    }
    // SAFETY: map value, valid (RCU) for the rest of this run.
    unsafe { DL_PORTS.get(ifindex) }
}

/// The port with OpenFlow number `ofport`, if there is one.
#[inline(always)]
pub fn port_by_ofport(ofport: u32) -> Option<&'static PortInfo> {
    if ofport < OFPORT_INDEX_SLOTS {
        let p = DL_OFPORT_IDX.get(ofport)?;
        return if p.ofport == ofport && p.ifindex != 0 {
            Some(p)
        } else {
            None
        };
    }
    // SAFETY: map value, valid (RCU) for the rest of this run.
    unsafe { DL_OFPORTS.get(ofport) }
}

/// Per-CPU port counters, indexed by [`PortInfo::slot`].
#[map]
pub static DL_PORT_STATS: PerCpuArray<PortStats> = PerCpuArray::pinned(MAX_PORTS, 0);

/// Per-CPU drop counters, indexed by [`DropReason`].
#[map]
pub static DL_DROPS: PerCpuArray<u64> = PerCpuArray::pinned(DropReason::COUNT, 0);

/// Per-CPU drop counters by port and reason, at `slot * DROP_SLOTS + reason`.
#[map]
pub static DL_PORT_DROPS: PerCpuArray<u64> = PerCpuArray::pinned(MAX_PORTS * DROP_SLOTS, 0);

/// Sampled drops ([`daolinet_common::DropSample`]s) for the agent.
#[map]
pub static DL_DROP_SAMPLES: RingBuf = RingBuf::pinned(DROP_SAMPLE_RING_BYTES, 0);

/// The drop sampling rate (index 0), written by the agent.
#[map]
pub static DL_SAMPLE_CONFIG: Array<SampleConfig> = Array::pinned(1, 0);

/// Per-CPU token buckets of the drop sampling (index 0).
#[map]
pub static DL_SAMPLE_BUCKETS: PerCpuArray<SampleBucket> = PerCpuArray::pinned(1, 0);

/// Punted packets ([`daolinet_common::PuntRecord`]s) for the agent.
#[map]
pub static DL_PUNTS: RingBuf = RingBuf::pinned(PUNT_RING_BYTES, 0);

/// Per-CPU scratch space for the per-packet [`ActState`]: together with the
/// frame of the per-action global function it would not fit the 512-byte
/// BPF stack. Internal to the datapath, not pinned.
#[map]
pub static DL_SCRATCH: PerCpuArray<ActState> = PerCpuArray::with_max_entries(1, 0);

/// The TC pipeline program (slot 0), which the TC program tail-calls for
/// rules beyond one table of apply-actions: it starts with a fresh stack.
/// Internal, not pinned (the loader fills it with the program of its own
/// object). The kernel ties a program array to one program type, hence
/// one per type.
#[map]
pub static DL_PIPELINE_TC: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The XDP pipeline program (slot 0), for the XDP program.
#[map]
pub static DL_PIPELINE_XDP: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The rule that sent a packet to the pipeline program (per CPU: the main
/// program writes it right before the tail call). Internal, not pinned.
#[map]
pub static DL_FIRST: PerCpuArray<FlowEntry> = PerCpuArray::with_max_entries(1, 0);

/// `BPF_F_NO_COMMON_LRU`: one LRU list per CPU (no shared list lock).
const BPF_F_NO_COMMON_LRU: u32 = 2;

/// Exact-match cache in front of the classifier (see [`crate::classify`]):
/// full packet key -> the winner's classifier key. Internal, not pinned.
#[map]
pub static DL_EMC: LruHashMap<FlowKey, EmcEntry> =
    LruHashMap::with_max_entries(EMC_ENTRIES, BPF_F_NO_COMMON_LRU);

/// Entries of [`DL_EMC`].
const EMC_ENTRIES: u32 = 16_384;

/// `a == b` in a const context.
const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

// The map statics above are exported under their Rust names; these must be
// the names userspace looks up.
const _: () = {
    assert!(same(names::FLOWS, "DL_FLOWS"));
    assert!(same(names::SUBTABLES, "DL_SUBTABLES"));
    assert!(same(names::CONFIG, "DL_CONFIG"));
    assert!(same(names::PORTS, "DL_PORTS"));
    assert!(same(names::OFPORTS, "DL_OFPORTS"));
    assert!(same(names::PORT_INDEX, "DL_PORT_IDX"));
    assert!(same(names::OFPORT_INDEX, "DL_OFPORT_IDX"));
    assert!(same(names::PORT_STATS, "DL_PORT_STATS"));
    assert!(same(names::DROPS, "DL_DROPS"));
    assert!(same(names::PUNTS, "DL_PUNTS"));
    assert!(same(names::PORT_DROPS, "DL_PORT_DROPS"));
    assert!(same(names::DROP_SAMPLES, "DL_DROP_SAMPLES"));
    assert!(same(names::SAMPLE_CONFIG, "DL_SAMPLE_CONFIG"));
    assert!(same(names::SAMPLE_BUCKETS, "DL_SAMPLE_BUCKETS"));
    assert!(same(names::FLOWS_WIDE, "DL_FLOWS_WIDE"));
    assert!(same(names::SUBTABLE_EXT, "DL_SUBTABLE_EXT"));
    assert!(same(names::TABLES, "DL_TABLES"));
    assert!(same(names::RULE_EXT, "DL_RULE_EXT"));
    assert!(same(names::TABLE_STATS, "DL_TABLE_STATS"));
    assert!(same(names::GROUPS, "DL_GROUPS"));
    assert!(same(names::GROUP_STATS, "DL_GROUP_STATS"));
    assert!(same(names::METERS, "DL_METERS"));
    assert!(same(names::METER_STATS, "DL_METER_STATS"));
    assert!(same(names::PIPELINE_TC, "DL_PIPELINE_TC"));
    assert!(same(names::PIPELINE_XDP, "DL_PIPELINE_XDP"));
    assert!(same(names::PROG_TC_PIPELINE, "daolinet_tc_pipeline"));
    assert!(same(names::PROG_XDP_PIPELINE, "daolinet_xdp_pipeline"));
    assert!(same(names::PROG_TC, "daolinet_tc"));
    assert!(same(names::PROG_XDP, "daolinet_xdp"));
};
