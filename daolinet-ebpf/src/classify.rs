//! The tuple-space classifier.
//!
//! Subtables (one per distinct match mask) are walked in the order of
//! [`DL_SUBTABLES`], which userspace keeps sorted by descending
//! `max_priority`. Each subtable costs one hash lookup of the masked key.
//! The walk stops as soon as the best match found so far has a priority at
//! least the next subtable's `max_priority`: no later rule can beat it.
//! Between equal priorities the first found wins (OpenFlow leaves overlapping
//! equal-priority rules undefined).

use daolinet_common::{FlowEntry, FlowKey, FlowMapKey, MAX_SUBTABLES};

use crate::maps::{DL_CONFIG, DL_FLOWS, DL_SUBTABLES};

/// Find the highest-priority rule matching `key`, as a pointer into the
/// [`DL_FLOWS`] map value (a [`FlowEntry`] is too big to copy to the stack).
#[inline(always)]
pub fn classify(key: &FlowKey) -> Option<&'static FlowEntry> {
    let n = DL_CONFIG.get(0)?.n_subtables;
    let mut best: Option<&'static FlowEntry> = None;
    let mut best_prio = 0u32;
    let mut i = 0u32;
    while i < MAX_SUBTABLES as u32 && i < n {
        let Some(sub) = DL_SUBTABLES.get(i) else {
            break;
        };
        if best.is_some() && best_prio >= sub.max_priority {
            break;
        }
        let mk = FlowMapKey {
            subtable: sub.id,
            key: key.masked(&sub.mask),
        };
        // SAFETY: the entry lives in the map; it stays valid (RCU) for the
        // rest of this program run even if userspace replaces it.
        if let Some(e) = unsafe { DL_FLOWS.get(mk) } {
            if best.is_none() || e.priority > best_prio {
                best_prio = e.priority;
                best = Some(e);
            }
        }
        i += 1;
    }
    best
}
