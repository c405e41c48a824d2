//! The OpenFlow 1.3 pipeline beyond one table of apply-actions: meters,
//! clear/write-actions (the action set), write-metadata, goto-table, table
//! misses, groups, and the actions of [`crate::rewrite`]. Only rules with
//! [`ENTRY_PIPELINE`] (and packets that hit them) come here, in the
//! pipeline programs ([`crate::programs::daolinet_tc_pipeline`]), which
//! the main programs tail-call: a fresh stack, and the one-table fast path
//! of [`crate::actions::apply`] neither runs nor is verified with this.
//!
//! Per OpenFlow: a rule's instructions run as meter, apply-actions,
//! clear-actions, write-actions, write-metadata, goto-table. Outputs of an
//! apply-actions list are copies unless nothing can follow them (no goto,
//! empty action set): then the last one is the packet itself, as on the
//! fast path. A table without a matching rule drops the packet. At the end
//! the action set runs in its fixed order (a group wins over an output).
//! A group's buckets work on the packet as it is when the group runs; what
//! a bucket rewrites is undone before the next bucket and after the group.

// Map keys are passed by reference on purpose: by value they would be
// copied to the small BPF stack first.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::helpers::generated::bpf_ktime_get_ns;
use daolinet_common::{
    group_type, meter_cost, remark_dscp, Action, ActionKind, DropReason, FlowEntry, RuleExt,
    ASET_SLOTS, BAND_DSCP_REMARK, BUCKET_ACTIONS, ENTRY_PIPELINE, EXT_CLEAR_ACTIONS, MAX_ACTIONS,
    MAX_BUCKETS, NO_BUCKET, NO_TABLE, N_TABLES, SELECT_SLOTS,
};

use crate::{
    actions::{drop_reason, ActState, ACT_DROP_BASE, DIRTY_ETH, DIRTY_IP, DIRTY_L4, DIRTY_TTL},
    classify::{table_is_wide, winner},
    context::Packet,
    counters,
    maps::{DL_GROUPS, DL_GROUP_STATS, DL_METERS, DL_METER_STATS, DL_RULE_EXT, DL_TABLE_STATS},
    parse::L3,
};

/// Encode a step result (verdict, continue, drop) as the global functions
/// return it.
#[inline(always)]
pub fn encode(r: Result<Option<i32>, DropReason>) -> i32 {
    match r {
        Ok(Some(v)) => v,
        Ok(None) => crate::actions::ACT_CONTINUE,
        Err(reason) => ACT_DROP_BASE - reason as i32,
    }
}

/// Decode what [`encode`] made.
#[inline(always)]
pub fn decode(v: i32) -> Result<Option<i32>, DropReason> {
    if v >= 0 {
        Ok(Some(v))
    } else if v <= ACT_DROP_BASE {
        Err(drop_reason(ACT_DROP_BASE - v))
    } else {
        Ok(None)
    }
}

/// Run the pipeline from `first`, the table-0 rule the packet hit (already
/// counted; `st` reset). Returns the verdict.
#[inline(always)]
pub fn run<P: Packet>(ctx: &P, st: &mut ActState, first: &'static FlowEntry) -> i32 {
    st.sent = 0;
    st.restructured = 0;
    st.aset_bits = 0;
    st.tunnel_id = [0; 2];
    encode(run_inner(ctx, st, first))
}

/// [`rule`]'s answer: go on in table `st.table`.
pub const RULE_GOTO: i32 = -2;
/// [`rule`]'s answer: the pipeline ends here (the action set runs).
pub const RULE_END: i32 = -3;

#[inline(always)]
fn run_inner<P: Packet>(
    ctx: &P,
    st: &mut ActState,
    first: &'static FlowEntry,
) -> Result<Option<i32>, DropReason> {
    let len = ctx.len();
    let mut entry = first;
    let mut hop = 0;
    while hop < N_TABLES {
        // One rule's instructions in a global function: this loop stays
        // small for the verifier.
        let r = ctx.rule_out_of_line(st, entry);
        if r != RULE_GOTO {
            if r == RULE_END {
                break;
            }
            return decode(r);
        }
        let next = lookup(ctx, st, st.table);
        count_table(st.table, next.is_some());
        let Some(next) = next else {
            // OpenFlow 1.3: no table-miss rule, the packet is dropped
            // (copies already sent stay sent).
            return if st.sent != 0 {
                Ok(Some(P::DROP))
            } else {
                Err(DropReason::TableMiss)
            };
        };
        counters::count_rule(next, len);
        // SAFETY: map value, valid (RCU) for the rest of this run.
        entry = unsafe { &*next };
        hop += 1;
    }
    decode(ctx.action_set_out_of_line(st))
}

/// Run one rule's instructions (meter, apply-actions, clear/write-actions,
/// write-metadata, goto): a verdict, a drop, [`RULE_GOTO`] (`st.table` is
/// the next table) or [`RULE_END`].
#[inline(always)]
pub fn rule<P: Packet>(ctx: &P, st: &mut ActState, entry: &FlowEntry) -> i32 {
    match rule_inner(ctx, st, entry) {
        Ok(Some(v)) => v,
        Ok(None) => RULE_END,
        Err(r) => ACT_DROP_BASE - r as i32,
    }
}

#[inline(always)]
fn rule_inner<P: Packet>(
    ctx: &P,
    st: &mut ActState,
    entry: &FlowEntry,
) -> Result<Option<i32>, DropReason> {
    st.rule_id = entry.rule_id;
    // SAFETY: map value, valid (RCU) for the rest of this run.
    let ext: Option<&RuleExt> = if entry.kind & ENTRY_PIPELINE != 0 {
        unsafe { DL_RULE_EXT.get(&entry.rule_id) }
    } else {
        None
    };
    let goto = ext.map_or(NO_TABLE, |e| e.goto_table);
    let writes = ext.is_some_and(|e| e.n_write != 0 || e.flags & EXT_CLEAR_ACTIONS != 0);
    if let Some(e) = ext {
        if e.meter != 0 && meter(ctx, st, e.meter, ctx.len())? {
            return Err(DropReason::MeterDrop);
        }
    }
    // Outputs are the packet itself only when nothing can follow.
    let final_ok = goto == NO_TABLE && st.aset_bits == 0 && !writes;
    if let Some(v) = apply_list(ctx, st, entry, final_ok)? {
        return Ok(Some(v));
    }
    if let Some(e) = ext {
        if e.flags & EXT_CLEAR_ACTIONS != 0 {
            st.aset_bits = 0;
        }
        if e.n_write != 0 && crate::programs::dl_write_set(st, e) != 0 {
            return Err(DropReason::Unsupported);
        }
        let (v, m) = (e.metadata, e.metadata_mask);
        st.metadata = [
            (st.metadata[0] & !m[0]) | (v[0] & m[0]),
            (st.metadata[1] & !m[1]) | (v[1] & m[1]),
        ];
    }
    if goto == NO_TABLE || goto <= st.table || goto >= N_TABLES {
        return Ok(None);
    }
    st.table = goto;
    Ok(Some(RULE_GOTO))
}

/// The rule of `table` for the packet in `st`.
#[inline(always)]
fn lookup<P: Packet>(ctx: &P, st: &mut ActState, table: u32) -> Option<*mut FlowEntry> {
    if table_is_wide(table) {
        if !st.pkt.ext_ready && ctx.fill_ext_out_of_line(&mut st.pkt) != 0 {
            return None;
        }
        st.pkt.ext.metadata = st.metadata;
        st.pkt.ext.tunnel_id = st.tunnel_id;
    }
    match crate::programs::dl_search(st, table) {
        0 => None,
        found => winner(st, found),
    }
}

/// Table 0 when it has wide subtables: the packet's wide fields, then the
/// walk.
#[inline(always)]
pub fn lookup_table0<P: Packet>(ctx: &P, st: &mut ActState) -> Option<*mut FlowEntry> {
    lookup(ctx, st, 0)
}

#[inline(always)]
fn count_table(table: u32, matched: bool) {
    if let Some(s) = DL_TABLE_STATS.get_ptr_mut(table) {
        // SAFETY: per-CPU map value, exclusive during this run.
        unsafe {
            (*s).lookups += 1;
            if matched {
                (*s).matched += 1;
            }
        }
    }
}

/// Run a rule's apply-actions. With `final_ok` its last output is the
/// packet itself (a verdict, `Some`); otherwise every output is a copy.
#[inline(always)]
fn apply_list<P: Packet>(
    ctx: &P,
    st: &mut ActState,
    entry: &FlowEntry,
    final_ok: bool,
) -> Result<Option<i32>, DropReason> {
    let n = entry.n_actions;
    let mut last = MAX_ACTIONS as u32;
    if final_ok {
        let mut j = 0;
        while j < MAX_ACTIONS {
            if j < n as usize {
                if let Some(k) = entry.actions[j].kind() {
                    if k.is_output() || k == ActionKind::Group {
                        last = j as u32;
                    }
                }
            }
            j += 1;
        }
    }
    let mut i = 0u32;
    while i < MAX_ACTIONS as u32 && i < n {
        let Some(a) = entry.actions.get(i as usize) else {
            break;
        };
        let is_last = i == last;
        let r = if a.kind == ActionKind::Group as u16 {
            ctx.group_out_of_line(st, a.arg, is_last)
        } else {
            ctx.full_step_out_of_line(st, a, u32::from(is_last))
        };
        if let Some(v) = decode(r)? {
            return Ok(Some(v));
        }
        i += 1;
    }
    Ok(None)
}

/// Merge a rule's write-actions into the action set: each action goes to
/// its type's slot, replacing what was there. 0 (the form of a global
/// function's answer).
#[inline(always)]
pub fn write_set(st: &mut ActState, e: &RuleExt) -> i32 {
    let mut w = 0;
    while w < MAX_ACTIONS {
        if w >= e.n_write as usize {
            break;
        }
        let a = e.write[w];
        let s = slot_of(&a);
        if let Some(slot) = st.aset.get_mut(s as usize) {
            *slot = a;
            st.aset_bits |= 1 << s;
        }
        w += 1;
    }
    0
}

/// [`daolinet_common::set_slot`] of every kind, half 0 and half 1.
static SLOTS: [[u8; 64]; 2] = {
    let mut t = [[63u8; 64]; 2];
    let mut k = 0;
    while k < 64 {
        t[0][k] = daolinet_common::set_slot(k as u16, 0) as u8;
        t[1][k] = daolinet_common::set_slot(k as u16, 1) as u8;
        k += 1;
    }
    t
};

/// `a`'s slot in the action set: a table load (one path for the verifier,
/// volatile so the compiler keeps it one), below [`ASET_SLOTS`].
#[inline(always)]
fn slot_of(a: &Action) -> u32 {
    let row = &SLOTS[(a.half & 1) as usize];
    let s = match row.get((a.kind & 63) as usize) {
        // SAFETY: an element of a static, valid to read.
        Some(v) => unsafe { core::ptr::read_volatile(v) },
        None => 63,
    };
    crate::context::opaque(u32::from(s)) & (ASET_SLOTS as u32 - 1)
}

/// Run the action set at the end of the pipeline (see [`run_action_set`]),
/// encoded as [`encode`] does.
#[inline(always)]
pub fn action_set<P: Packet>(ctx: &P, st: &mut ActState) -> i32 {
    encode(run_action_set(ctx, st))
}

/// The slot of the action set's group (an output is ignored when there is
/// one).
const GROUP_SLOT: u32 = daolinet_common::set_slot(ActionKind::Group as u16, 0);
/// The slot of the action set's output.
const OUTPUT_SLOT: u32 = daolinet_common::set_slot(ActionKind::Output as u16, 0);

/// Run the action set at the end of the pipeline, slot by slot in order:
/// the group if there is one, else the output decides the verdict.
#[inline(always)]
fn run_action_set<P: Packet>(ctx: &P, st: &mut ActState) -> Result<Option<i32>, DropReason> {
    let mut bits = st.aset_bits;
    if bits & (1 << GROUP_SLOT) != 0 {
        bits &= !(1 << OUTPUT_SLOT);
    }
    let mut n = 0;
    while n < ASET_SLOTS && bits != 0 {
        // The lowest slot left.
        // Masked after an opaque copy (the compiler drops a mask it finds
        // useless, the verifier needs it).
        let s = crate::context::opaque(lowest_bit(bits)) & (ASET_SLOTS as u32 - 1);
        bits &= bits - 1;
        let Some(a) = st.aset.get(s as usize) else {
            break;
        };
        let a: Action = *a;
        let r = if s == GROUP_SLOT {
            ctx.group_out_of_line(st, a.arg, true)
        } else {
            ctx.full_step_out_of_line(st, &a, u32::from(s == OUTPUT_SLOT))
        };
        if let Some(v) = decode(r)? {
            return Ok(Some(v));
        }
        n += 1;
    }
    if st.sent != 0 {
        // Copies went out; the packet itself has nowhere to go.
        Ok(Some(P::DROP))
    } else {
        Err(DropReason::PolicyDrop)
    }
}

/// De Bruijn sequence for [`lowest_bit`].
const DEBRUIJN64: u64 = 0x03f7_9d71_b4cb_0a89;

/// Bit positions by the top 6 bits of `DEBRUIJN64 * (1 << i)`.
static DEBRUIJN_POS: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        t[((DEBRUIJN64 << i) >> 58) as usize] = i as u8;
        i += 1;
    }
    t
};

/// The index of the lowest set bit of `x` (non-zero), without a loop.
#[inline(always)]
fn lowest_bit(x: u64) -> u32 {
    let low = x & x.wrapping_neg();
    let i = (low.wrapping_mul(DEBRUIJN64) >> 58) as usize;
    match DEBRUIJN_POS.get(i & 63) {
        // SAFETY: an element of a static, valid to read.
        Some(v) => u32::from(unsafe { core::ptr::read_volatile(v) }),
        None => 63,
    }
}

/// Apply group `id` to the packet in `st`; `last`: nothing follows, the
/// chosen bucket's last output may be the packet itself.
#[inline(always)]
pub fn group<P: Packet>(ctx: &P, st: &mut ActState, id: u32, last: bool) -> i32 {
    encode(group_inner(ctx, st, id, last))
}

#[inline(always)]
fn group_inner<P: Packet>(
    ctx: &P,
    st: &mut ActState,
    id: u32,
    last: bool,
) -> Result<Option<i32>, DropReason> {
    // SAFETY: map value, valid (RCU) for the rest of this run.
    let Some(g) = (unsafe { DL_GROUPS.get(&id) }) else {
        return Err(DropReason::TableMiss);
    };
    let len = ctx.len();
    let n = g.n_buckets;
    let (first, count) = match g.group_type {
        group_type::ALL => (0, n),
        group_type::SELECT => {
            let slot = flow_hash(st) as usize % SELECT_SLOTS;
            let b = g.select.get(slot).copied().unwrap_or(0xff);
            if b == 0xff {
                return Err(DropReason::TableMiss);
            }
            (b as u32, 1)
        }
        group_type::FAST_FAILOVER => {
            if g.live == NO_BUCKET {
                return Err(DropReason::TableMiss);
            }
            (g.live, 1)
        }
        _ => (0, 1),
    };
    if let Some(s) = DL_GROUP_STATS.get_ptr_mut(g.stats_slot) {
        // SAFETY: per-CPU map value, exclusive during this run.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += len as u64;
        }
    }
    snapshot(st);
    let mut b = 0u32;
    while b < MAX_BUCKETS as u32 {
        if b >= count || first + b >= MAX_BUCKETS as u32 {
            break;
        }
        // Masked after an opaque copy, not only checked: the compiler would
        // drop a mask it can prove useless and compute the bucket's address
        // before the check, where the verifier cannot bound it.
        let bi = crate::context::opaque(first + b) & (MAX_BUCKETS as u32 - 1);
        let Some(bucket) = g.buckets.get(bi as usize) else {
            break;
        };
        if let Some(s) = DL_GROUP_STATS.get_ptr_mut(g.stats_slot) {
            if let (Some(p), Some(y)) = (
                // SAFETY: as above; indexes checked by `get`.
                unsafe { (*s).bucket_packets.get_mut(bi as usize) },
                unsafe { (*s).bucket_bytes.get_mut(bi as usize) },
            ) {
                *p += 1;
                *y += len as u64;
            }
        }
        let last_bucket = last && b + 1 == count;
        // The bucket's last output may be the packet itself.
        let mut out_at = BUCKET_ACTIONS as u32;
        if last_bucket {
            let mut j = 0;
            while j < BUCKET_ACTIONS {
                if j < bucket.n_actions as usize {
                    if let Some(k) = bucket.actions[j].kind() {
                        if k.is_output() {
                            out_at = j as u32;
                        }
                    }
                }
                j += 1;
            }
        }
        let mut i = 0u32;
        while i < BUCKET_ACTIONS as u32 && i < bucket.n_actions {
            let Some(a) = bucket.actions.get(i as usize) else {
                break;
            };
            let r = ctx.step_out_of_line(st, a, u32::from(i == out_at));
            if let Some(v) = decode(r)? {
                return Ok(Some(v));
            }
            i += 1;
        }
        restore(st);
        b += 1;
    }
    Ok(None)
}

/// Remember the lazily rewritten fields before a bucket runs.
#[inline(always)]
fn snapshot(st: &mut ActState) {
    st.snap_key = st.pkt.key;
    st.snap_ttl = st.pkt.ttl;
}

/// Undo a bucket's lazy rewrites: the next commit writes the remembered
/// values back (what the bytes hold is tracked in `st.wire`).
#[inline(always)]
fn restore(st: &mut ActState) {
    st.pkt.key = st.snap_key;
    st.pkt.ttl = st.snap_ttl;
    let mut d = DIRTY_ETH;
    match st.pkt.l3 {
        L3::Ipv4 => d |= DIRTY_IP | DIRTY_TTL,
        L3::Ipv6 => d |= DIRTY_TTL,
        _ => {}
    }
    if st.pkt.has_ports() {
        d |= DIRTY_L4;
    }
    st.dirty |= d;
}

/// A hash of the packet's connection (Ethernet and IP addresses, protocol,
/// ports), the same for every packet of it: a select group keeps a
/// connection on one bucket, and spreads hosts that differ only in their
/// Ethernet addresses (what os-ken's select group cases send) too.
#[inline(always)]
fn flow_hash(st: &ActState) -> u32 {
    let k = &st.pkt.key;
    let w = k.words();
    // ipv4 src/dst (or ARP addresses), ports, protocol; MACs.
    let mut h = w[1] ^ w[2].rotate_left(13) ^ w[7].rotate_left(7) ^ (k.ip_proto as u32);
    h ^= w[4].rotate_left(3) ^ w[5].rotate_left(11) ^ w[6].rotate_left(19);
    if st.pkt.l3 == L3::Ipv6 && st.pkt.ext_ready {
        let e = st.pkt.ext.words();
        let mut i = 4;
        while i < 12 {
            h ^= e[i].rotate_left(i as u32 * 3);
            i += 1;
        }
    }
    // Final mix (murmur3's fmix32).
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Run meter `id` on a packet of `len` bytes: true when its drop band
/// drops it. A DSCP-remark band raises the drop precedence instead.
#[inline(always)]
fn meter<P: Packet>(ctx: &P, st: &mut ActState, id: u32, len: u32) -> Result<bool, DropReason> {
    let Some(m) = DL_METERS.get_ptr_mut(&id) else {
        // A meter removed under a flow that still names it: no metering.
        return Ok(false);
    };
    // SAFETY: map value shared by every CPU: the bucket is read and
    // written without a lock; a race lets a few extra packets through,
    // never fewer, and a CPU whose clock reads behind the bucket's time
    // adds nothing (MeterEntry::take).
    let (band, prec, slot) = unsafe { ((*m).band_type, (*m).prec_level, (*m).stats_slot) };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: as above.
    let over = unsafe { !(*m).take(now, meter_cost((*m).flags, len as u64)) };
    if let Some(s) = DL_METER_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU map value, exclusive during this run.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += len as u64;
            if over {
                (*s).band_packets += 1;
                (*s).band_bytes += len as u64;
            }
        }
    }
    if !over {
        return Ok(false);
    }
    if band != BAND_DSCP_REMARK {
        return Ok(true);
    }
    // Raise the drop precedence (bits 1-2 of an AF DSCP) by `prec`.
    if st.pkt.is_ip() {
        let new = remark_dscp(st.pkt.key.ip_tos >> 2, prec);
        let a = Action::with_data(ActionKind::SetIpTos, 0, [new << 2, 0xfc, 0, 0, 0, 0, 0, 0]);
        decode(ctx.full_step_out_of_line(st, &a, 0))?;
    }
    Ok(false)
}
