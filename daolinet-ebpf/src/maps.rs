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
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use daolinet_common::{
    maps as names, DatapathConfig, DropReason, FlowEntry, FlowKey, FlowMapKey, PortInfo, PortStats,
    SampleBucket, SampleConfig, Subtable, DROP_SAMPLE_RING_BYTES, DROP_SLOTS, MAX_PORTS, MAX_RULES,
    MAX_SUBTABLES, OFPORT_INDEX_SLOTS, PORT_INDEX_SLOTS, PUNT_RING_BYTES,
};

/// `BPF_F_NO_PREALLOC`: allocate hash map entries on demand.
const BPF_F_NO_PREALLOC: u32 = 1;

/// The rules: [`FlowMapKey`] -> [`FlowEntry`]. Not preallocated: memory
/// follows the rules installed, and the agent sizes it at load time
/// (`--max-flows`); a lookup costs the same either way.
#[map]
pub static DL_FLOWS: HashMap<FlowMapKey, FlowEntry> = HashMap::pinned(MAX_RULES, BPF_F_NO_PREALLOC);

/// The subtables (match masks), sorted by descending `max_priority`.
#[map]
pub static DL_SUBTABLES: Array<Subtable> = Array::pinned(MAX_SUBTABLES as u32, 0);

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
    assert!(same(names::PROG_TC, "daolinet_tc"));
    assert!(same(names::PROG_XDP, "daolinet_xdp"));
};
