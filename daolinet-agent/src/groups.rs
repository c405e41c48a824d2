//! OpenFlow 1.3 groups, sans-IO: GROUP_MOD (add, modify, delete), the
//! datapath's [`GroupEntry`] of each group, liveness, group stats and
//! descriptions.
//!
//! Userspace decides what the datapath only looks up: a fast-failover
//! group's live bucket (the first whose watch port is up), and a select
//! group's table of [`SELECT_SLOTS`] slots that a packet's connection hash
//! picks from, where each live bucket has slots in proportion to its
//! weight. When a bucket dies only its own slots move to the live buckets,
//! so the connections of the others stay where they are.
//!
//! A bucket's actions work on a copy of the packet in OpenFlow. The
//! datapath undoes what a bucket rewrote lazily (MACs, IPv4 addresses,
//! TCP/UDP ports, TTL) before the next bucket and after the group, so
//! buckets hold those, outputs and the tunnel id only; anything else
//! (pushes, pops, other set-fields) is refused with the OFPT_ERROR the
//! spec names, as are groups of groups.

use std::collections::BTreeMap;

use daolinet_common::{
    group_type, Action, ActionKind, Bucket, GroupEntry, BUCKET_ACTIONS, MAX_BUCKETS, MAX_GROUPS,
    NO_BUCKET, SELECT_SLOTS,
};
use daolinet_openflow::{self as of, ErrorCode};

use crate::compile::compile_actions;
use crate::table::MapOp;

const NS: u64 = 1_000_000_000;

fn err(t: u16, c: u16) -> ErrorCode {
    ErrorCode::new(t, c)
}

/// A group as the switch keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// The group as the controller wrote it (GROUP_DESC reports it).
    pub desc: of::GroupDesc,
    /// Each bucket's compiled actions.
    pub buckets: Vec<Vec<Action>>,
    /// Slot of the group's counters.
    pub slot: u32,
    /// When it was added (monotonic ns).
    pub added_ns: u64,
    /// What the datapath holds now.
    pub entry: GroupEntry,
}

/// Actions a bucket may hold (see the module documentation).
fn bucket_action_ok(a: &Action) -> Result<(), ErrorCode> {
    use ActionKind as K;
    match a.kind() {
        Some(
            K::Output
            | K::OutputInPort
            | K::OutputLocal
            | K::Controller
            | K::SetEthSrc
            | K::SetEthDst
            | K::SetIpv4Src
            | K::SetIpv4Dst
            | K::SetL4Src
            | K::SetL4Dst
            | K::DecTtl
            | K::SetNwTtl
            | K::SetTunnelId,
        ) => Ok(()),
        Some(K::Group) => Err(err(
            of::OFPET_GROUP_MOD_FAILED,
            of::OFPGMFC_CHAINING_UNSUPPORTED,
        )),
        Some(k) if (k as u16) >= K::SetIpTos as u16 && !k.is_structural() => {
            Err(err(of::OFPET_BAD_ACTION, of::OFPBAC_BAD_SET_TYPE))
        }
        _ => Err(err(of::OFPET_BAD_ACTION, of::OFPBAC_BAD_TYPE)),
    }
}

/// The datapath entry of a group: its buckets, the live bucket of a
/// fast-failover group and the slot table of a select group, given which
/// ports are live.
pub fn entry_of(
    group_type: u8,
    desc: &[of::Bucket],
    buckets: &[Vec<Action>],
    slot: u32,
    live: &dyn Fn(u32) -> bool,
) -> GroupEntry {
    let mut e = GroupEntry {
        group_type: u32::from(group_type),
        n_buckets: buckets.len().min(MAX_BUCKETS) as u32,
        stats_slot: slot,
        ..Default::default()
    };
    for (dst, acts) in e.buckets.iter_mut().zip(buckets) {
        *dst = Bucket {
            n_actions: acts.len().min(BUCKET_ACTIONS) as u32,
            ..Default::default()
        };
        for (d, a) in dst.actions.iter_mut().zip(acts) {
            *d = *a;
        }
    }
    let alive = |b: &of::Bucket| b.watch_port == of::OFPP_ANY || live(b.watch_port);
    match u32::from(group_type) {
        group_type::FAST_FAILOVER => {
            e.live = desc.iter().position(alive).map_or(NO_BUCKET, |i| i as u32);
        }
        group_type::SELECT => e.select = select_slots(desc, &alive),
        _ => {}
    }
    e
}

/// Largest-remainder shares of `slots` slots among `buckets` by weight.
fn shares(buckets: &[(usize, u64)], slots: u64) -> Vec<(usize, u64)> {
    let total: u64 = buckets.iter().map(|b| b.1).sum();
    if total == 0 {
        return Vec::new();
    }
    let mut share: Vec<(usize, u64)> = buckets
        .iter()
        .map(|(i, w)| (*i, w * slots / total))
        .collect();
    let given: u64 = share.iter().map(|s| s.1).sum();
    let mut by_rest: Vec<(u64, usize)> = buckets
        .iter()
        .enumerate()
        .map(|(k, (_, w))| (w * slots % total, k))
        .collect();
    by_rest.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    // The slots left go to the largest remainders.
    for (_, k) in by_rest
        .into_iter()
        .take(slots.saturating_sub(given) as usize)
    {
        share[k].1 += 1;
    }
    share
}

/// A select group's slot table: every slot names a live bucket, each live
/// bucket has slots in proportion to its weight (all weights 0: equal
/// shares). Every slot has a *home* bucket from the weights of all
/// buckets, live or not; it keeps it while that bucket is live, and only
/// the slots of dead buckets are spread over the live ones. So a
/// connection moves only when its own bucket dies, and comes back when
/// it returns.
fn select_slots(desc: &[of::Bucket], alive: &dyn Fn(&of::Bucket) -> bool) -> [u8; SELECT_SLOTS] {
    let n = desc.len().min(MAX_BUCKETS);
    let mut out = [0xffu8; SELECT_SLOTS];
    let all_zero = desc[..n].iter().all(|b| b.weight == 0);
    let weight = |i: usize| {
        if all_zero {
            1u64
        } else {
            u64::from(desc[i].weight)
        }
    };
    let all: Vec<(usize, u64)> = (0..n).map(|i| (i, weight(i))).collect();
    let mut slot = 0;
    for (b, k) in shares(&all, SELECT_SLOTS as u64) {
        for _ in 0..k {
            if slot < SELECT_SLOTS {
                out[slot] = b as u8;
                slot += 1;
            }
        }
    }
    let live: Vec<(usize, u64)> = all
        .iter()
        .copied()
        .filter(|(i, w)| *w > 0 && alive(&desc[*i]))
        .collect();
    let orphans: Vec<usize> = (0..SELECT_SLOTS)
        .filter(|s| {
            let b = usize::from(out[*s]);
            b >= n || !live.iter().any(|(i, _)| *i == b)
        })
        .collect();
    let mut fill = shares(&live, orphans.len() as u64)
        .into_iter()
        .flat_map(|(b, k)| std::iter::repeat_n(b as u8, k as usize));
    for s in orphans {
        out[s] = fill.next().unwrap_or(0xff);
    }
    out
}

/// The bucket a select group's entry picks for a connection hash.
pub fn select_bucket(e: &GroupEntry, hash: u32) -> Option<usize> {
    let b = *e.select.get(hash as usize % SELECT_SLOTS)?;
    (b != 0xff).then_some(usize::from(b))
}

/// The groups of the switch.
#[derive(Debug, Default)]
pub struct GroupTable {
    groups: BTreeMap<u32, Group>,
    free_slots: Vec<u32>,
    next_slot: u32,
}

impl GroupTable {
    /// No groups.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when group `id` exists.
    pub fn contains(&self, id: u32) -> bool {
        self.groups.contains_key(&id)
    }

    /// Group `id`.
    pub fn get(&self, id: u32) -> Option<&Group> {
        self.groups.get(&id)
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// True when there is no group.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Apply a GROUP_MOD; returns the map operations and the ids of the
    /// groups deleted (their flows must go too). Ports are live when
    /// `live` says so. On error nothing changed.
    pub fn group_mod(
        &mut self,
        gm: &of::GroupMod,
        now_ns: u64,
        live: &dyn Fn(u32) -> bool,
    ) -> Result<(Vec<MapOp>, Vec<u32>), ErrorCode> {
        let fail = |c| err(of::OFPET_GROUP_MOD_FAILED, c);
        match gm.command {
            of::OFPGC_ADD | of::OFPGC_MODIFY => {
                if gm.group_id > of::OFPG_MAX {
                    return Err(fail(of::OFPGMFC_INVALID_GROUP));
                }
                let exists = self.groups.contains_key(&gm.group_id);
                if gm.command == of::OFPGC_ADD && exists {
                    return Err(fail(of::OFPGMFC_GROUP_EXISTS));
                }
                if gm.command == of::OFPGC_MODIFY && !exists {
                    return Err(fail(of::OFPGMFC_UNKNOWN_GROUP));
                }
                let buckets = Self::check(gm)?;
                let mut ops = Vec::new();
                let (slot, added_ns) = match self.groups.get(&gm.group_id) {
                    Some(g) => (g.slot, g.added_ns),
                    None => {
                        let slot = match self.free_slots.pop() {
                            Some(s) => s,
                            None if self.next_slot < MAX_GROUPS => {
                                self.next_slot += 1;
                                self.next_slot - 1
                            }
                            None => return Err(fail(of::OFPGMFC_OUT_OF_GROUPS)),
                        };
                        ops.push(MapOp::ResetGroupStats(slot));
                        (slot, now_ns)
                    }
                };
                let entry = entry_of(gm.group_type, &gm.buckets, &buckets, slot, live);
                ops.push(MapOp::PutGroup(gm.group_id, Box::new(entry)));
                self.groups.insert(
                    gm.group_id,
                    Group {
                        desc: of::GroupDesc {
                            group_type: gm.group_type,
                            group_id: gm.group_id,
                            buckets: gm.buckets.clone(),
                        },
                        buckets,
                        slot,
                        added_ns,
                        entry,
                    },
                );
                Ok((ops, Vec::new()))
            }
            of::OFPGC_DELETE => {
                let ids: Vec<u32> = if gm.group_id == of::OFPG_ALL {
                    self.groups.keys().copied().collect()
                } else if self.groups.contains_key(&gm.group_id) {
                    vec![gm.group_id]
                } else {
                    // Deleting a group that does not exist is no error.
                    Vec::new()
                };
                let mut ops = Vec::new();
                for id in &ids {
                    if let Some(g) = self.groups.remove(id) {
                        self.free_slots.push(g.slot);
                        ops.push(MapOp::DelGroup(*id));
                    }
                }
                Ok((ops, ids))
            }
            _ => Err(fail(of::OFPGMFC_BAD_COMMAND)),
        }
    }

    /// Validate a group's type and buckets; the compiled bucket actions.
    fn check(gm: &of::GroupMod) -> Result<Vec<Vec<Action>>, ErrorCode> {
        let fail = |c| err(of::OFPET_GROUP_MOD_FAILED, c);
        let t = u32::from(gm.group_type);
        if t > group_type::FAST_FAILOVER {
            return Err(fail(of::OFPGMFC_BAD_TYPE));
        }
        if gm.buckets.len() > MAX_BUCKETS {
            return Err(fail(of::OFPGMFC_OUT_OF_BUCKETS));
        }
        if t == group_type::INDIRECT && gm.buckets.len() != 1 {
            return Err(fail(of::OFPGMFC_INVALID_GROUP));
        }
        let mut out = Vec::with_capacity(gm.buckets.len());
        for b in &gm.buckets {
            if t != group_type::SELECT && b.weight != 0 {
                return Err(fail(of::OFPGMFC_BAD_BUCKET));
            }
            if b.watch_group != of::OFPG_ANY {
                return Err(fail(of::OFPGMFC_WATCH_UNSUPPORTED));
            }
            if t == group_type::FAST_FAILOVER && b.watch_port == of::OFPP_ANY {
                return Err(fail(of::OFPGMFC_BAD_WATCH));
            }
            let acts = compile_actions(&b.actions).map_err(|e| e.code())?;
            if acts.len() > BUCKET_ACTIONS {
                return Err(err(of::OFPET_BAD_ACTION, of::OFPBAC_TOO_MANY));
            }
            for a in &acts {
                bucket_action_ok(a)?;
            }
            out.push(acts);
        }
        Ok(out)
    }

    /// Ports changed: rewrite the entries whose live bucket or select
    /// slots depend on them.
    pub fn refresh(&mut self, live: &dyn Fn(u32) -> bool) -> Vec<MapOp> {
        let mut ops = Vec::new();
        for (id, g) in self.groups.iter_mut() {
            let e = entry_of(g.desc.group_type, &g.desc.buckets, &g.buckets, g.slot, live);
            if e != g.entry {
                g.entry = e;
                ops.push(MapOp::PutGroup(*id, Box::new(e)));
            }
        }
        ops
    }

    /// OFPMP_GROUP_DESC: every group as written.
    pub fn desc(&self) -> Vec<of::GroupDesc> {
        self.groups.values().map(|g| g.desc.clone()).collect()
    }

    /// OFPMP_GROUP for `id` (OFPG_ALL: every group); `ref_count` is the
    /// number of flows sending to the group.
    pub fn stats(
        &self,
        id: u32,
        now_ns: u64,
        counters: &mut dyn FnMut(u32) -> daolinet_common::GroupStats,
        refs: &dyn Fn(u32) -> u32,
    ) -> Vec<of::GroupStats> {
        self.groups
            .iter()
            .filter(|(g, _)| id == of::OFPG_ALL || **g == id)
            .map(|(gid, g)| {
                let s = counters(g.slot);
                let age = now_ns.saturating_sub(g.added_ns);
                of::GroupStats {
                    group_id: *gid,
                    ref_count: refs(*gid),
                    packet_count: s.packets,
                    byte_count: s.bytes,
                    duration_sec: (age / NS) as u32,
                    duration_nsec: (age % NS) as u32,
                    bucket_stats: (0..g.desc.buckets.len().min(MAX_BUCKETS))
                        .map(|b| of::Counters {
                            packet_count: s.bucket_packets[b],
                            byte_count: s.bucket_bytes[b],
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// OFPMP_GROUP_FEATURES.
    pub fn features() -> of::GroupFeatures {
        // OFPAT_OUTPUT 0, DEC_NW_TTL 24, SET_FIELD 25, SET_NW_TTL 23.
        let acts: u32 = (1 << 0) | (1 << 23) | (1 << 24) | (1 << 25);
        of::GroupFeatures {
            // All, select, indirect, fast failover.
            types: 0b1111,
            // OFPGFC_SELECT_WEIGHT | OFPGFC_SELECT_LIVENESS.
            capabilities: 1 | 2,
            max_groups: [MAX_GROUPS; 4],
            actions: [acts; 4],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(weight: u16, watch: u32, out: u32) -> of::Bucket {
        of::Bucket {
            weight,
            watch_port: watch,
            watch_group: of::OFPG_ANY,
            actions: vec![of::Action::output(out)],
        }
    }

    fn gm(command: u16, t: u8, id: u32, buckets: Vec<of::Bucket>) -> of::GroupMod {
        of::GroupMod {
            command,
            group_type: t,
            group_id: id,
            buckets,
        }
    }

    fn all_live(_: u32) -> bool {
        true
    }

    fn put(ops: &[MapOp]) -> GroupEntry {
        ops.iter()
            .find_map(|o| match o {
                MapOp::PutGroup(_, e) => Some(**e),
                _ => None,
            })
            .expect("a PutGroup")
    }

    #[test]
    fn add_modify_delete_follow_openflow() {
        let mut t = GroupTable::new();
        let g = gm(
            of::OFPGC_ADD,
            of::OFPGT_ALL,
            1,
            vec![bucket(0, of::OFPP_ANY, 2)],
        );
        let (ops, _) = t.group_mod(&g, 0, &all_live).unwrap();
        assert!(ops.contains(&MapOp::ResetGroupStats(0)));
        assert_eq!(put(&ops).n_buckets, 1);
        let code = |e: ErrorCode| (e.err_type, e.code);
        assert_eq!(
            code(t.group_mod(&g, 0, &all_live).unwrap_err()),
            (of::OFPET_GROUP_MOD_FAILED, of::OFPGMFC_GROUP_EXISTS)
        );
        let m = gm(of::OFPGC_MODIFY, of::OFPGT_ALL, 9, vec![]);
        assert_eq!(
            code(t.group_mod(&m, 0, &all_live).unwrap_err()),
            (of::OFPET_GROUP_MOD_FAILED, of::OFPGMFC_UNKNOWN_GROUP)
        );
        // Groups of groups, and rewrites a bucket cannot undo, are refused.
        let mut chained = bucket(0, of::OFPP_ANY, 2);
        chained.actions = vec![of::Action::Group(1)];
        let c = gm(of::OFPGC_ADD, of::OFPGT_ALL, 2, vec![chained]);
        assert_eq!(
            code(t.group_mod(&c, 0, &all_live).unwrap_err()),
            (of::OFPET_GROUP_MOD_FAILED, of::OFPGMFC_CHAINING_UNSUPPORTED)
        );
        let mut vlan = bucket(0, of::OFPP_ANY, 2);
        vlan.actions.insert(0, of::Action::PopVlan);
        let v = gm(of::OFPGC_ADD, of::OFPGT_ALL, 2, vec![vlan]);
        assert_eq!(
            code(t.group_mod(&v, 0, &all_live).unwrap_err()),
            (of::OFPET_BAD_ACTION, of::OFPBAC_BAD_TYPE)
        );
        // An indirect group has exactly one bucket.
        let i = gm(of::OFPGC_ADD, of::OFPGT_INDIRECT, 3, vec![]);
        assert!(t.group_mod(&i, 0, &all_live).is_err());
        assert_eq!(t.len(), 1);
        let (ops, gone) = t
            .group_mod(&gm(of::OFPGC_DELETE, 0, of::OFPG_ALL, vec![]), 0, &all_live)
            .unwrap();
        assert_eq!((ops, gone), (vec![MapOp::DelGroup(1)], vec![1]));
        assert!(t.is_empty());
    }

    #[test]
    fn fast_failover_uses_the_first_bucket_whose_port_is_up() {
        let mut t = GroupTable::new();
        let g = gm(
            of::OFPGC_ADD,
            of::OFPGT_FF,
            7,
            vec![bucket(0, 2, 2), bucket(0, 3, 3)],
        );
        let (ops, _) = t.group_mod(&g, 0, &all_live).unwrap();
        assert_eq!(put(&ops).live, 0);
        // Port 2 goes down: bucket 1 takes over; then both down: none.
        let ops = t.refresh(&|p| p != 2);
        assert_eq!(put(&ops).live, 1);
        let ops = t.refresh(&|_| false);
        assert_eq!(put(&ops).live, NO_BUCKET);
        // Nothing changed, nothing written.
        assert!(t.refresh(&|_| false).is_empty());
        let ops = t.refresh(&all_live);
        assert_eq!(put(&ops).live, 0);
        // A fast-failover bucket must watch something.
        let bad = gm(
            of::OFPGC_ADD,
            of::OFPGT_FF,
            8,
            vec![bucket(0, of::OFPP_ANY, 2)],
        );
        assert!(t.group_mod(&bad, 0, &all_live).is_err());
    }

    #[test]
    fn select_slots_follow_weights_and_a_connection_stays_on_its_bucket() {
        let mut t = GroupTable::new();
        let g = gm(
            of::OFPGC_ADD,
            of::OFPGT_SELECT,
            5,
            vec![bucket(3, 2, 2), bucket(1, 3, 3), bucket(0, 4, 4)],
        );
        let (ops, _) = t.group_mod(&g, 0, &all_live).unwrap();
        let e = put(&ops);
        let count = |e: &GroupEntry, b: u8| e.select.iter().filter(|x| **x == b).count();
        // Weight 3:1:0 over 64 slots.
        assert_eq!((count(&e, 0), count(&e, 1), count(&e, 2)), (48, 16, 0));
        // The same connection hash always picks the same bucket.
        for h in [7u32, 1234, 0xdead_beef] {
            assert_eq!(select_bucket(&e, h), select_bucket(&e, h));
        }
        // Bucket 0's port goes down: its slots go to bucket 1, bucket 1's
        // connections stay where they were.
        let ops = t.refresh(&|p| p != 2);
        let e2 = put(&ops);
        assert_eq!(count(&e2, 1), 64);
        for (a, b) in e.select.iter().zip(e2.select.iter()) {
            if *a == 1 {
                assert_eq!(*b, 1);
            }
        }
        // Back up: the table is the first one again (bucket 0's
        // connections come back, bucket 1's never moved).
        let e3 = put(&t.refresh(&all_live));
        assert_eq!(e3.select, e.select);
        // No live bucket: every slot empty.
        let e4 = put(&t.refresh(&|_| false));
        assert!(e4.select.iter().all(|b| *b == 0xff));
        assert_eq!(select_bucket(&e4, 1), None);
    }

    #[test]
    fn equal_shares_when_no_weight_is_given() {
        let desc = vec![bucket(0, 2, 2), bucket(0, 3, 3), bucket(0, 4, 4)];
        let e = entry_of(
            of::OFPGT_SELECT,
            &desc,
            &[vec![], vec![], vec![]],
            0,
            &all_live,
        );
        let counts: Vec<usize> = (0..3)
            .map(|b| e.select.iter().filter(|x| **x == b).count())
            .collect();
        assert_eq!(counts.iter().sum::<usize>(), SELECT_SLOTS);
        assert!(counts.iter().all(|c| (21..=22).contains(c)), "{counts:?}");
    }
}
