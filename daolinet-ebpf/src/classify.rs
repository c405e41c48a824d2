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

use daolinet_common::{FlowEntry, FlowKey, FlowMapKey, MAX_SUBTABLES};

use crate::maps::{DL_CONFIG, DL_EMC, DL_FLOWS, DL_SUBTABLES};

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

/// Find the highest-priority rule matching `key`, as a pointer into the
/// [`DL_FLOWS`] map value (a [`FlowEntry`] is too big to copy to the stack;
/// its counters are updated through it).
/// `scratch` is working memory (kept off the stack).
///
/// The search runs in the global BPF function [`crate::programs::dl_classify`]
/// (verified once, on its own: inlined, the walk and the cache multiply the
/// paths of the whole program), which leaves the winner's classifier key in
/// `scratch`; the rule itself is then one lookup.
///
/// Below [`EMC_MIN_SUBTABLES`] the (at most two) subtables are looked up
/// right here instead, without the call and the second lookup.
#[inline(always)]
pub fn classify(key: &FlowKey, scratch: &mut EmcEntry) -> Option<*mut FlowEntry> {
    let n = DL_CONFIG.get(0)?.n_subtables;
    if n < EMC_MIN_SUBTABLES {
        return small_walk(key, n);
    }
    if crate::programs::dl_classify(key, scratch) == 0 {
        return None;
    }
    DL_FLOWS.get_ptr_mut(&scratch.flow)
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
