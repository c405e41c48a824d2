//! The tuple-space classifier, with an exact-match cache in front.
//!
//! Subtables (one per distinct match mask) are walked in the order of
//! [`DL_SUBTABLES`], which userspace keeps sorted by descending
//! `max_priority`. Each subtable costs one hash lookup of the masked key.
//! The walk stops as soon as the best match found so far has a priority at
//! least the next subtable's `max_priority`: no later rule can beat it.
//! Between equal priorities the first found wins (OpenFlow leaves overlapping
//! equal-priority rules undefined).
//!
//! Exact-match cache ([`DL_EMC`]): with at least [`EMC_MIN_SUBTABLES`]
//! subtables, the winner of a walk is remembered under the packet's full
//! key as its [`FlowMapKey`], tagged with the table generation
//! ([`daolinet_common::DatapathConfig::generation`]). A later packet with
//! the same key costs two lookups (cache, then the rule) instead of the
//! walk. Userspace bumps the generation after every rule or subtable
//! change, which invalidates every entry at once; a cached rule that is
//! gone falls back to the walk. Misses are not cached (they are punted).

// Map keys are passed by reference on purpose: by value they would be
// copied to the small BPF stack first.
#![allow(clippy::needless_borrows_for_generic_args)]

use daolinet_common::{
    FlowEntry, FlowKey, FlowMapKey, WideMapKey, MAX_SUBTABLES, N_TABLES, SUBTABLE_WIDE, TABLE_WIDE,
};

use crate::actions::ActState;
use crate::maps::{
    DL_CONFIG, DL_EMC, DL_FLOWS, DL_FLOWS_WIDE, DL_SUBTABLES, DL_SUBTABLE_EXT, DL_TABLES,
};

/// Below this many subtables the walk is as cheap as the cache.
pub const EMC_MIN_SUBTABLES: u32 = 3;

/// Value of [`DL_EMC`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EmcEntry {
    /// Table generation the entry was made under.
    pub generation: u32,
    /// The winning rule's classifier key.
    pub flow: FlowMapKey,
}

/// What [`classify`] found.
pub enum Found {
    /// This rule (its map value: its counters are updated through it).
    Hit(*mut FlowEntry),
    /// No rule.
    Miss,
    /// Table 0 has wide subtables: look it up with [`search_table`].
    Wide,
}

/// Find the highest-priority rule of table 0 matching `key`, as a pointer
/// into the [`DL_FLOWS`] map value (a [`FlowEntry`] is too big to copy to
/// the stack; its counters are updated through it). `scratch` is working
/// memory (kept off the stack).
///
/// The search runs in the global BPF function [`crate::programs::dl_classify`]
/// (verified once, on its own: inlined, the walk and the cache multiply the
/// paths of the whole program), which leaves the winner's classifier key in
/// `scratch`; the rule itself is then one lookup.
///
/// Below [`EMC_MIN_SUBTABLES`] the (at most two) subtables are looked up
/// right here instead, without the call and the second lookup.
#[inline(always)]
pub fn classify(key: &FlowKey, scratch: &mut EmcEntry) -> Found {
    let Some(cfg) = DL_CONFIG.get(0) else {
        return Found::Miss;
    };
    if cfg.flags & TABLE_WIDE != 0 {
        return Found::Wide;
    }
    let n = cfg.n_subtables;
    let found = if n < EMC_MIN_SUBTABLES {
        small_walk(key, n)
    } else if crate::programs::dl_classify(key, scratch) == 0 {
        None
    } else {
        DL_FLOWS.get_ptr_mut(&scratch.flow)
    };
    match found {
        Some(e) => Found::Hit(e),
        None => Found::Miss,
    }
}

/// The number of subtables of `table` and its `TABLE_*` flags.
#[inline(always)]
fn table_info(table: u32) -> (u32, u32) {
    if table == 0 {
        return DL_CONFIG
            .get(0)
            .map_or((0, 0), |c| (c.n_subtables, c.flags));
    }
    DL_TABLES
        .get(table)
        .map_or((0, 0), |t| (t.n_subtables, t.flags))
}

/// True when `table` has wide subtables (the packet's wide fields must be
/// ready before [`search_table`]).
#[inline(always)]
pub fn table_is_wide(table: u32) -> bool {
    table_info(table).1 & TABLE_WIDE != 0
}

/// [`search_table`]'s answer: the winner is a wide rule.
pub const SEARCH_WIDE: u32 = 1 << 31;

/// The highest-priority rule of any table for the packet in `st` (its
/// `pkt.ext` ready when the table is wide): 0 on a miss, else 1 + the
/// winner's subtable position in the table, with [`SEARCH_WIDE`] when it
/// is a wide rule. Walks like [`search`], without the cache. Leaves the
/// winner's map key in `st.wide` (for a narrow rule its prefix, a
/// [`FlowMapKey`]): the caller's lookup ([`winner`]) masks nothing.
#[inline(always)]
pub fn search_table(st: &mut ActState, table: u32) -> u32 {
    if table >= N_TABLES {
        return 0;
    }
    let (n, _) = table_info(table);
    let base = table * MAX_SUBTABLES as u32;
    let mut best = 0u32;
    let mut best_prio = 0u32;
    let mut i = 0u32;
    while i < MAX_SUBTABLES as u32 && i < n {
        let Some(sub) = DL_SUBTABLES.get(base + i) else {
            break;
        };
        if best != 0 && best_prio >= sub.max_priority {
            break;
        }
        // One subtable per call of a global function: the walk's loop
        // stays small for the verifier.
        let p = crate::programs::dl_probe(st, base + i);
        if p != 0 && (best == 0 || p - 1 > best_prio) {
            best_prio = p - 1;
            best = i + 1;
        }
        i += 1;
    }
    if best == 0 {
        return 0;
    }
    // A global function: every exit of the walk above would verify it
    // again.
    match crate::programs::dl_prepare(st, base + best - 1) {
        KEY_WIDE => best | SEARCH_WIDE,
        KEY_NARROW => best,
        _ => 0,
    }
}

/// The rule [`search_table`] found (its answer `found`, not 0).
#[inline(always)]
pub fn winner(st: &ActState, found: u32) -> Option<*mut FlowEntry> {
    if found & SEARCH_WIDE != 0 {
        DL_FLOWS_WIDE.get_ptr_mut(&st.wide)
    } else {
        // A narrow rule's key is the prefix of `st.wide` (same layout: the
        // subtable id, then the compact key).
        // SAFETY: the cast reads the prefix of a live value (asserted below).
        DL_FLOWS.get_ptr_mut(unsafe { &*(core::ptr::addr_of!(st.wide).cast::<FlowMapKey>()) })
    }
}

// The narrow key is a prefix of the wide one.
const _: () = {
    assert!(
        core::mem::offset_of!(FlowMapKey, subtable) == core::mem::offset_of!(WideMapKey, subtable)
    );
    assert!(core::mem::offset_of!(FlowMapKey, key) == core::mem::offset_of!(WideMapKey, key));
    assert!(core::mem::offset_of!(daolinet_common::FullKey, key) == 0);
    assert!(size_of::<FlowMapKey>() <= size_of::<WideMapKey>());
};

/// [`prepare_key`]: no such subtable.
const KEY_NONE: u32 = 0;
/// [`prepare_key`]: a narrow subtable's key.
const KEY_NARROW: u32 = 1;
/// [`prepare_key`]: a wide subtable's key.
const KEY_WIDE: u32 = 2;

/// Build the packet's map key under the subtable at `slot` in `st.wide`
/// (runs in [`crate::programs::dl_prepare`]).
#[inline(always)]
pub fn prepare_key(st: &mut ActState, slot: u32) -> u32 {
    let Some(sub) = DL_SUBTABLES.get(slot) else {
        return KEY_NONE;
    };
    st.wide.subtable = sub.id;
    st.wide.key.key = st.pkt.key.masked(&sub.mask);
    if sub.id & SUBTABLE_WIDE == 0 {
        return KEY_NARROW;
    }
    let Some(ext_mask) = DL_SUBTABLE_EXT.get(slot) else {
        return KEY_NONE;
    };
    st.wide.key.ext = st.pkt.ext.masked(ext_mask);
    KEY_WIDE
}

/// The priority + 1 of the rule of the packet in `st` under the subtable
/// at `slot`, 0 when there is none.
#[inline(always)]
pub fn probe(st: &mut ActState, slot: u32) -> u32 {
    match entry_of(st, slot) {
        Some(e) => e.priority.saturating_add(1),
        None => 0,
    }
}

/// The rule of the packet in `st` under the subtable at `slot` of
/// [`DL_SUBTABLES`], if any.
#[inline(always)]
fn entry_of(st: &mut ActState, slot: u32) -> Option<&'static FlowEntry> {
    let sub = DL_SUBTABLES.get(slot)?;
    if sub.id & SUBTABLE_WIDE == 0 {
        let mk = FlowMapKey {
            subtable: sub.id,
            key: st.pkt.key.masked(&sub.mask),
        };
        // SAFETY: map value, valid (RCU) for the rest of this run.
        return unsafe { DL_FLOWS.get(&mk) };
    }
    let ext_mask = DL_SUBTABLE_EXT.get(slot)?;
    st.wide.subtable = sub.id;
    st.wide.key.key = st.pkt.key.masked(&sub.mask);
    st.wide.key.ext = st.pkt.ext.masked(ext_mask);
    // SAFETY: as above.
    unsafe { DL_FLOWS_WIDE.get(&st.wide) }
}

/// The walk over fewer than [`EMC_MIN_SUBTABLES`] (two) subtables.
#[inline(always)]
fn small_walk(key: &FlowKey, n: u32) -> Option<*mut FlowEntry> {
    if n == 0 {
        return None;
    }
    let s0 = DL_SUBTABLES.get(0)?;
    let k0 = FlowMapKey {
        subtable: s0.id,
        key: key.masked(&s0.mask),
    };
    let first = DL_FLOWS.get_ptr_mut(&k0);
    if n < 2 {
        return first;
    }
    let s1 = DL_SUBTABLES.get(1)?;
    if let Some(e) = first {
        // SAFETY: map value, valid (RCU) for the rest of this run.
        if unsafe { (*e).priority } >= s1.max_priority {
            return first;
        }
    }
    let k1 = FlowMapKey {
        subtable: s1.id,
        key: key.masked(&s1.mask),
    };
    // SAFETY: map values, valid (RCU) for the rest of this run.
    match (first, DL_FLOWS.get_ptr_mut(&k1)) {
        (Some(a), Some(b)) if unsafe { (*b).priority > (*a).priority } => Some(b),
        (Some(a), _) => Some(a),
        (None, b) => b,
    }
}

/// The search of [`classify`]: 1 with the winner's classifier key in
/// `scratch.flow`, 0 on a miss.
#[inline(always)]
pub fn search(key: &FlowKey, scratch: &mut EmcEntry) -> i32 {
    let Some(cfg) = DL_CONFIG.get(0) else {
        return 0;
    };
    let n = cfg.n_subtables;
    let generation = cfg.generation;
    let cached = n >= EMC_MIN_SUBTABLES && generation != 0;
    if cached {
        // SAFETY: map value, valid (RCU) for the rest of this run.
        if let Some(c) = unsafe { DL_EMC.get(key) } {
            if c.generation == generation {
                scratch.flow = c.flow;
                return 1;
            }
        }
    }
    let mut found = false;
    let mut best_prio = 0u32;
    let mut i = 0u32;
    while i < MAX_SUBTABLES as u32 && i < n {
        let Some(sub) = DL_SUBTABLES.get(i) else {
            break;
        };
        if found && best_prio >= sub.max_priority {
            break;
        }
        let mk = FlowMapKey {
            subtable: sub.id,
            key: key.masked(&sub.mask),
        };
        // SAFETY: as above.
        if let Some(e) = unsafe { DL_FLOWS.get(&mk) } {
            if !found || e.priority > best_prio {
                best_prio = e.priority;
                found = true;
                scratch.flow = mk;
            }
        }
        i += 1;
    }
    if !found {
        return 0;
    }
    if cached {
        scratch.generation = generation;
        // Best effort: a full cache evicts its least recently used entry.
        let _ = DL_EMC.insert(key, &*scratch, 0);
    }
    1
}
