//! The userspace rule table and its tuple-space layout, sans-IO.
//!
//! [`RuleTable::insert`] and [`RuleTable::remove`] return the [`MapOp`]s
//! that bring the BPF maps in line with the table; the datapath module
//! applies them. Rules with the same mask share a subtable; of several rules
//! with the same (mask, masked key) only the highest priority is in the
//! datapath (the others are shadowed and take its place when it goes).

use std::collections::BTreeMap;

use foldhash::HashMap;

use daolinet_common::{
    Action, FlowEntry, FlowKey, FlowMapKey, Subtable, MAX_ACTIONS, MAX_RULES, MAX_SUBTABLES,
};

/// A rule as the agent keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// OpenFlow priority.
    pub priority: u16,
    /// Match values (masked by [`Rule::mask`] on insert).
    pub key: FlowKey,
    /// Match mask.
    pub mask: FlowKey,
    /// Compiled actions (empty = drop).
    pub actions: Vec<Action>,
    /// OpenFlow cookie.
    pub cookie: u64,
    /// Idle timeout in seconds (0 = none).
    pub idle_timeout: u16,
    /// Hard timeout in seconds (0 = none).
    pub hard_timeout: u16,
    /// OpenFlow flow-mod flags (`OFPFF_*`), kept in the rule metadata.
    pub flags: u16,
}

/// One change to apply to the BPF maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    /// Write the classifier entry of a rule that was not in it (a new
    /// rule, or one taking its (mask, key) over from another), counters as
    /// given (zero).
    PutFlow(FlowMapKey, FlowEntry),
    /// Rewrite the entry of the rule already in it (new actions): the
    /// entry's counters are kept.
    UpdateFlow(FlowMapKey, FlowEntry),
    /// Remove a classifier entry.
    DelFlow(FlowMapKey),
    /// Rewrite the subtable list (already sorted) and its count.
    SetSubtables(Vec<Subtable>),
}

/// What adding a rule did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inserted {
    /// The new rule's id.
    pub id: u32,
    /// The map operations.
    pub ops: Vec<MapOp>,
    /// The rule whose classifier entry the new one takes (same match, lower
    /// priority), and that entry's key: its counters are to be read before
    /// the operations are applied.
    pub displaced: Option<(u32, FlowMapKey)>,
}

/// Why a rule cannot be installed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    /// Every rule id the datapath has room for is in use.
    #[error("rule table full ({0} rules)")]
    Full(u32),
    /// The rule needs a new mask but [`MAX_SUBTABLES`] are in use.
    #[error("too many distinct match masks (at most {MAX_SUBTABLES})")]
    TooManyMasks,
    /// More than [`MAX_ACTIONS`] actions.
    #[error("too many actions ({0} > {MAX_ACTIONS})")]
    TooManyActions(usize),
    /// No rule with this id.
    #[error("no rule with id {0}")]
    NoSuchRule(u32),
}

#[derive(Clone, Debug)]
struct SubtableState {
    id: u32,
    mask: FlowKey,
    /// Number of rules per priority (the maximum is the subtable's).
    prios: BTreeMap<u16, usize>,
}

impl SubtableState {
    fn rules(&self) -> usize {
        self.prios.values().sum()
    }
}

/// The table: rules by id, subtables by mask.
///
/// Every operation is proportional to the number of rules sharing one
/// (mask, key) plus the number of subtables, not to the table size, so
/// bulk installs stay fast.
#[derive(Debug)]
pub struct RuleTable {
    rules: BTreeMap<u32, Rule>,
    /// Rule ids by (masked key, mask).
    groups: HashMap<(FlowKey, FlowKey), Vec<u32>>,
    subtables: Vec<SubtableState>,
    next_id: u32,
    free_ids: Vec<u32>,
    next_sub_id: u32,
    /// The subtable list last handed to the datapath.
    last_list: Vec<Subtable>,
    /// Most rules (rule ids are below it).
    limit: u32,
}

impl Default for RuleTable {
    fn default() -> Self {
        RuleTable {
            rules: BTreeMap::new(),
            groups: HashMap::default(),
            subtables: Vec::new(),
            next_id: 0,
            free_ids: Vec::new(),
            next_sub_id: 0,
            last_list: Vec::new(),
            limit: MAX_RULES,
        }
    }
}

impl RuleTable {
    /// An empty table of [`MAX_RULES`] rules at most.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same table holding at most `limit` rules (the datapath's
    /// capacity): rule ids stay below it.
    pub fn with_limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }

    /// Most rules this table holds.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Number of subtables (distinct match masks) in use.
    pub fn n_subtables(&self) -> usize {
        self.subtables.len()
    }

    /// True when there is no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Rules by id, in id order.
    pub fn rules(&self) -> impl Iterator<Item = (u32, &Rule)> {
        self.rules.iter().map(|(id, r)| (*id, r))
    }

    /// The rule with this id.
    pub fn get(&self, id: u32) -> Option<&Rule> {
        self.rules.get(&id)
    }

    /// The id of the rule with exactly this (already masked) key, mask and
    /// priority, if any.
    pub fn find(&self, key: &FlowKey, mask: &FlowKey, priority: u16) -> Option<u32> {
        self.groups
            .get(&(*key, *mask))?
            .iter()
            .copied()
            .find(|id| self.rules.get(id).is_some_and(|r| r.priority == priority))
    }

    /// Ids of the rules with `cookie & mask == want & mask`.
    pub fn ids_by_cookie(&self, want: u64, mask: u64) -> Vec<u32> {
        self.rules
            .iter()
            .filter(|(_, r)| r.cookie & mask == want & mask)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The rule that wins for a packet with this key (highest priority,
    /// then lowest id, as in the datapath), for userspace lookups such as
    /// PACKET_OUT to OFPP_TABLE.
    pub fn lookup(&self, pkt: &FlowKey) -> Option<(u32, &Rule)> {
        let mut best: Option<(u32, &Rule)> = None;
        for s in &self.subtables {
            let k = pkt.masked(&s.mask);
            let Some(ids) = self.groups.get(&(k, s.mask)) else {
                continue;
            };
            for id in ids {
                let Some(r) = self.rules.get(id) else {
                    continue;
                };
                let better = match best {
                    None => true,
                    Some((bid, b)) => {
                        (r.priority, std::cmp::Reverse(*id)) > (b.priority, std::cmp::Reverse(bid))
                    }
                };
                if better {
                    best = Some((*id, r));
                }
            }
        }
        best
    }

    /// Rebuild the table from what an earlier agent left in the pinned maps:
    /// the subtable list and the rules with their ids. No map operation is
    /// needed: the maps already hold exactly this.
    pub fn restore(subtables: &[Subtable], rules: Vec<(u32, Rule)>) -> Self {
        let mut t = RuleTable::new();
        for s in subtables {
            t.subtables.push(SubtableState {
                id: s.id,
                mask: s.mask,
                prios: BTreeMap::new(),
            });
            t.next_sub_id = t.next_sub_id.max(s.id.wrapping_add(1));
        }
        for (id, r) in rules {
            if let Some(s) = t.subtables.iter_mut().find(|s| s.mask == r.mask) {
                *s.prios.entry(r.priority).or_default() += 1;
                t.next_id = t.next_id.max(id + 1);
                t.groups.entry((r.key, r.mask)).or_default().push(id);
                t.rules.insert(id, r);
            }
        }
        t.subtables.retain(|s| s.rules() > 0);
        t.free_ids = (0..t.next_id)
            .filter(|i| !t.rules.contains_key(i))
            .rev()
            .collect();
        t.last_list = t.subtable_list();
        t
    }

    /// Add a rule; returns its id and the map operations.
    pub fn insert(&mut self, rule: Rule) -> Result<(u32, Vec<MapOp>), TableError> {
        self.insert_full(rule).map(|i| (i.id, i.ops))
    }

    /// Add a rule (see [`Inserted`]). One lookup of its match group and
    /// one scan of the subtables: the subtable list is rebuilt only when a
    /// subtable appears or its top priority rises.
    pub fn insert_full(&mut self, mut rule: Rule) -> Result<Inserted, TableError> {
        if rule.actions.len() > MAX_ACTIONS {
            return Err(TableError::TooManyActions(rule.actions.len()));
        }
        rule.key = rule.key.masked(&rule.mask);
        let sub = self.subtables.iter().position(|s| s.mask == rule.mask);
        if sub.is_none() && self.subtables.len() >= MAX_SUBTABLES {
            return Err(TableError::TooManyMasks);
        }
        let id = match self.free_ids.pop() {
            Some(id) => id,
            None if self.next_id < self.limit => {
                self.next_id += 1;
                self.next_id - 1
            }
            None => return Err(TableError::Full(self.limit)),
        };
        let sub = match sub {
            Some(i) => i,
            None => {
                self.subtables.push(SubtableState {
                    id: self.next_sub_id,
                    mask: rule.mask,
                    prios: BTreeMap::new(),
                });
                self.next_sub_id = self.next_sub_id.wrapping_add(1);
                self.subtables.len() - 1
            }
        };
        let s = &mut self.subtables[sub];
        let top = s.prios.keys().next_back().copied();
        *s.prios.entry(rule.priority).or_default() += 1;
        let list_changed = top.is_none_or(|t| rule.priority > t);
        let mk = FlowMapKey {
            subtable: s.id,
            key: rule.key,
        };
        // The rule in the entry so far, and whether the new one beats it
        // (higher priority, then lower id, as the datapath would).
        let group = self.groups.entry((rule.key, rule.mask)).or_default();
        let before = group
            .iter()
            .filter_map(|i| self.rules.get(i).map(|r| (*i, r.priority)))
            .max_by_key(|(i, p)| (*p, std::cmp::Reverse(*i)));
        group.push(id);
        let wins = before.is_none_or(|(b, p)| {
            (rule.priority, std::cmp::Reverse(id)) > (p, std::cmp::Reverse(b))
        });
        let mut ops = Vec::with_capacity(2);
        if wins {
            ops.push(MapOp::PutFlow(mk, entry(id, &rule)));
        }
        self.rules.insert(id, rule);
        if list_changed {
            ops.extend(self.subtables_op());
        }
        Ok(Inserted {
            id,
            ops,
            displaced: before.filter(|_| wins).map(|(b, _)| (b, mk)),
        })
    }

    /// Change the actions, cookie, timeouts and flags of rule `id` in place
    /// (its id, and so its counters, stay). Returns the map operations.
    pub fn modify(
        &mut self,
        id: u32,
        update: impl FnOnce(&mut Rule),
    ) -> Result<Vec<MapOp>, TableError> {
        let rule = self.rules.get_mut(&id).ok_or(TableError::NoSuchRule(id))?;
        let (key, mask, prio) = (rule.key, rule.mask, rule.priority);
        let mut new = rule.clone();
        update(&mut new);
        // Match and priority are the rule's identity: never changed here.
        new.key = key;
        new.mask = mask;
        new.priority = prio;
        if new.actions.len() > MAX_ACTIONS {
            return Err(TableError::TooManyActions(new.actions.len()));
        }
        *rule = new;
        let before = self.winner(&key, &mask);
        let mut ops = Vec::new();
        ops.extend(self.refresh_entry(&key, &mask, before, Some(id)));
        Ok(ops)
    }

    /// Remove a rule by id; returns it and the map operations.
    pub fn remove(&mut self, id: u32) -> Result<(Rule, Vec<MapOp>), TableError> {
        let (key, mask) = match self.rules.get(&id) {
            Some(r) => (r.key, r.mask),
            None => return Err(TableError::NoSuchRule(id)),
        };
        let before = self.winner(&key, &mask);
        let rule = self.rules.remove(&id).ok_or(TableError::NoSuchRule(id))?;
        self.free_ids.push(id);
        if let Some(g) = self.groups.get_mut(&(rule.key, rule.mask)) {
            g.retain(|i| *i != id);
            if g.is_empty() {
                self.groups.remove(&(rule.key, rule.mask));
            }
        }
        let mut ops = self.refresh_entry(&rule.key, &rule.mask, before, None);
        let mut list_changed = false;
        if let Some(pos) = self.subtables.iter().position(|s| s.mask == rule.mask) {
            let s = &mut self.subtables[pos];
            let top = s.prios.keys().next_back().copied();
            if let Some(n) = s.prios.get_mut(&rule.priority) {
                *n -= 1;
                if *n == 0 {
                    s.prios.remove(&rule.priority);
                    list_changed = top == Some(rule.priority);
                }
            }
            if s.prios.is_empty() {
                // The entry is deleted (refresh_entry ran while the
                // subtable still existed); now the subtable goes.
                self.subtables.remove(pos);
                list_changed = true;
            }
        }
        // Subtables first, so the datapath stops walking a gone subtable
        // before its entries disappear.
        if list_changed {
            if let Some(op) = self.subtables_op() {
                ops.insert(0, op);
            }
        }
        Ok((rule, ops))
    }

    /// The map key of a rule.
    fn map_key(&self, key: &FlowKey, mask: &FlowKey) -> Option<FlowMapKey> {
        let sub = self.subtables.iter().find(|s| s.mask == *mask)?;
        Some(FlowMapKey {
            subtable: sub.id,
            key: *key,
        })
    }

    /// The rule in the datapath for (key, mask): the highest priority,
    /// then the lowest id, of the rules with that match.
    fn winner(&self, key: &FlowKey, mask: &FlowKey) -> Option<u32> {
        self.groups
            .get(&(*key, *mask))
            .into_iter()
            .flatten()
            .filter_map(|id| self.rules.get(id).map(|r| (*id, r.priority)))
            .max_by_key(|(id, p)| (*p, std::cmp::Reverse(*id)))
            .map(|(id, _)| id)
    }

    /// The classifier entry of rule `id` (its map key), if the rule is the
    /// one in the datapath for its match (not shadowed).
    pub fn entry_key(&self, id: u32) -> Option<FlowMapKey> {
        let r = self.rules.get(&id)?;
        if self.winner(&r.key, &r.mask) != Some(id) {
            return None;
        }
        self.map_key(&r.key, &r.mask)
    }

    /// Bring the classifier entry of (key, mask) in line after a change:
    /// `before` was the rule in it, `changed` a rule whose actions just
    /// changed. A new rule in the entry is written with fresh counters; the
    /// same rule with new actions keeps them; nothing changes for a change
    /// to a shadowed rule.
    fn refresh_entry(
        &self,
        key: &FlowKey,
        mask: &FlowKey,
        before: Option<u32>,
        changed: Option<u32>,
    ) -> Vec<MapOp> {
        let Some(mk) = self.map_key(key, mask) else {
            return Vec::new();
        };
        let now = self.winner(key, mask);
        match (before, now.and_then(|id| Some((id, self.rules.get(&id)?)))) {
            (Some(_), None) => vec![MapOp::DelFlow(mk)],
            (None, None) => Vec::new(),
            (Some(b), Some((id, r))) if b == id => {
                if changed == Some(id) {
                    vec![MapOp::UpdateFlow(mk, entry(id, r))]
                } else {
                    Vec::new()
                }
            }
            (_, Some((id, r))) => vec![MapOp::PutFlow(mk, entry(id, r))],
        }
    }

    /// A SetSubtables operation when the list changed since the last one.
    fn subtables_op(&mut self) -> Option<MapOp> {
        let list = self.subtable_list();
        if list == self.last_list {
            return None;
        }
        self.last_list = list.clone();
        Some(MapOp::SetSubtables(list))
    }

    /// Subtables sorted by descending max priority.
    fn subtable_list(&self) -> Vec<Subtable> {
        let mut list: Vec<Subtable> = self
            .subtables
            .iter()
            .map(|s| Subtable {
                mask: s.mask,
                id: s.id,
                max_priority: s
                    .prios
                    .keys()
                    .next_back()
                    .map(|p| u32::from(*p))
                    .unwrap_or(0),
            })
            .collect();
        list.sort_by(|a, b| b.max_priority.cmp(&a.max_priority).then(a.id.cmp(&b.id)));
        list
    }
}

fn entry(id: u32, r: &Rule) -> FlowEntry {
    let mut e = FlowEntry {
        priority: u32::from(r.priority),
        rule_id: id,
        n_actions: r.actions.len() as u32,
        flags: r.flags,
        cookie: r.cookie,
        idle_timeout: r.idle_timeout,
        hard_timeout: r.hard_timeout,
        ..Default::default()
    };
    for (slot, a) in e.actions.iter_mut().zip(&r.actions) {
        *slot = *a;
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(prio: u16, dst: [u8; 4], mask: [u8; 4], out: u32) -> Rule {
        Rule {
            priority: prio,
            key: FlowKey {
                ipv4_dst: dst,
                ..Default::default()
            },
            mask: FlowKey {
                ipv4_dst: mask,
                ..Default::default()
            },
            actions: vec![Action::output(out)],
            cookie: u64::from(out),
            idle_timeout: 0,
            hard_timeout: 0,
            flags: 0,
        }
    }

    fn puts(ops: &[MapOp]) -> Vec<(u32, u32)> {
        ops.iter()
            .filter_map(|o| match o {
                MapOp::PutFlow(_, e) => Some((e.rule_id, e.priority)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn same_mask_shares_a_subtable_and_lists_are_sorted() {
        let mut t = RuleTable::new();
        let (_, ops) = t.insert(rule(10, [10, 0, 0, 1], [255; 4], 1)).unwrap();
        assert!(matches!(ops.last(), Some(MapOp::SetSubtables(s)) if s.len() == 1));
        let (_, ops) = t.insert(rule(20, [10, 0, 0, 2], [255; 4], 2)).unwrap();
        assert!(
            matches!(ops.last(), Some(MapOp::SetSubtables(s)) if s.len() == 1 && s[0].max_priority == 20)
        );
        let (_, ops) = t
            .insert(rule(30, [10, 0, 0, 0], [255, 255, 0, 0], 3))
            .unwrap();
        let Some(MapOp::SetSubtables(s)) = ops.last() else {
            panic!("no subtable list")
        };
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].max_priority, 30);
        assert_eq!(s[1].max_priority, 20);
    }

    #[test]
    fn shadowed_rule_takes_over_when_the_higher_one_goes() {
        let mut t = RuleTable::new();
        let (low, _) = t.insert(rule(10, [10, 0, 0, 1], [255; 4], 1)).unwrap();
        let (high, ops) = t.insert(rule(20, [10, 0, 0, 1], [255; 4], 2)).unwrap();
        assert_eq!(puts(&ops), [(high, 20)]);
        assert_eq!(
            t.entry_key(high).map(|k| k.key.ipv4_dst),
            Some([10, 0, 0, 1])
        );
        assert_eq!(t.entry_key(low), None);
        // Adding a lower one leaves the entry (and its counters) alone.
        let (lower, ops) = t.insert(rule(5, [10, 0, 0, 1], [255; 4], 3)).unwrap();
        assert!(ops.iter().all(|o| matches!(o, MapOp::SetSubtables(_))));
        // New actions for the rule in the entry keep its counters; for a
        // shadowed one nothing changes in the datapath.
        let ops = t.modify(high, |r| r.actions.clear()).unwrap();
        assert!(
            matches!(&ops[..], [MapOp::UpdateFlow(_, e)] if e.rule_id == high && e.n_actions == 0)
        );
        let ops = t.modify(lower, |r| r.actions.clear()).unwrap();
        assert!(ops.is_empty());
        let (_, ops) = t.remove(lower).unwrap();
        assert!(!ops
            .iter()
            .any(|o| matches!(o, MapOp::PutFlow(..) | MapOp::DelFlow(_))));
        // The next one takes over with fresh counters.
        let (_, ops) = t.remove(high).unwrap();
        assert_eq!(puts(&ops), [(low, 10)]);
        assert!(matches!(ops.first(), Some(MapOp::SetSubtables(_))));
    }

    #[test]
    fn last_rule_removal_deletes_entry_and_subtable_and_reuses_id() {
        let mut t = RuleTable::new();
        let (id, _) = t.insert(rule(10, [10, 0, 0, 1], [255; 4], 1)).unwrap();
        let (_, ops) = t.remove(id).unwrap();
        assert!(ops.iter().any(|o| matches!(o, MapOp::DelFlow(_))));
        assert!(ops.contains(&MapOp::SetSubtables(vec![])));
        assert_eq!(t.remove(id).unwrap_err(), TableError::NoSuchRule(id));
        let (again, ops) = t.insert(rule(10, [10, 0, 0, 9], [255; 4], 1)).unwrap();
        assert_eq!(again, id);
        // A fresh entry: counters from zero.
        assert!(
            matches!(&ops[0], MapOp::PutFlow(_, e) if e.rule_id == id && e.packets == 0 && e.cookie == 1)
        );
    }

    #[test]
    fn restore_rebuilds_ids_and_subtables() {
        let mut t = RuleTable::new();
        let (a, _) = t.insert(rule(10, [10, 0, 0, 1], [255; 4], 1)).unwrap();
        let (b, ops) = t
            .insert(rule(20, [10, 0, 0, 0], [255, 0, 0, 0], 2))
            .unwrap();
        let Some(MapOp::SetSubtables(subs)) = ops.last() else {
            panic!("no subtable list")
        };
        let rules: Vec<(u32, Rule)> = t.rules().map(|(i, r)| (i, r.clone())).collect();
        let mut r = RuleTable::restore(subs, rules);
        assert_eq!(r.len(), 2);
        assert_eq!(r.subtable_list(), *subs);
        let (c, _) = r.insert(rule(5, [10, 0, 0, 9], [255; 4], 3)).unwrap();
        assert!(c != a && c != b);
        assert!(r.remove(a).is_ok());
    }

    #[test]
    fn mask_limit_and_cookie_lookup() {
        let mut t = RuleTable::new();
        for i in 0..MAX_SUBTABLES {
            let m = (i as u32 + 1).to_be_bytes();
            t.insert(rule(1, [0; 4], m, i as u32)).unwrap();
        }
        assert_eq!(
            t.insert(rule(1, [0; 4], [1, 2, 3, 4], 99)).unwrap_err(),
            TableError::TooManyMasks
        );
        assert_eq!(t.ids_by_cookie(5, u64::MAX).len(), 1);
        assert_eq!(t.ids_by_cookie(0, 0).len(), MAX_SUBTABLES);
    }

    #[test]
    fn the_table_holds_what_the_datapath_has_room_for() {
        let mut t = RuleTable::new().with_limit(3);
        let m = [255; 4];
        let ids: Vec<u32> = (0..3u8)
            .map(|i| t.insert(rule(1, [10, 0, 0, i], m, 0)).unwrap().0)
            .collect();
        assert_eq!(ids, [0, 1, 2]);
        assert_eq!(
            t.insert(rule(1, [10, 0, 0, 9], m, 0)).unwrap_err(),
            TableError::Full(3)
        );
        // A freed id is used again; ids never reach the limit.
        t.remove(1).unwrap();
        assert_eq!(t.insert(rule(1, [10, 0, 0, 9], m, 0)).unwrap().0, 1);
        assert!(t.insert(rule(1, [10, 0, 0, 8], m, 0)).is_err());
    }
}
