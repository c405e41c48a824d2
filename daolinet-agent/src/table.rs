//! The userspace rule tables and their tuple-space layout, sans-IO.
//!
//! [`RuleTable::insert`] and [`RuleTable::remove`] return the [`MapOp`]s
//! that bring the BPF maps in line with the tables; the datapath module
//! applies them. Every OpenFlow table has its own subtables (one per
//! distinct mask, ids unique over all tables). A mask that uses the wide
//! fields (metadata, tunnel id, IPv6 and ND addresses, ARP hardware
//! addresses) makes a *wide* subtable, whose rules live in the wide flow
//! map; the others stay in the compact one, which is all the IPv4 fast path
//! hashes. Of several rules with the same (table, mask, masked key) only
//! the highest priority is in the datapath (the others are shadowed and
//! take its place when it goes).

use std::collections::BTreeMap;
use std::sync::Arc;

use foldhash::HashMap;
use hashbrown::HashTable;

use daolinet_common::{
    Action, FlowEntry, FlowKey, FlowKeyExt, FlowMapKey, FullKey, GroupEntry, MeterEntry, RuleExt,
    Subtable, WideMapKey, ENTRY_PIPELINE, MAX_ACTIONS, MAX_RULES, MAX_SUBTABLES, N_TABLES,
    SUBTABLE_WIDE,
};

/// The wide part of a rule's match (see [`FlowKeyExt`]), for the few
/// rules that have one: kept beside the rule, so that the compact rules
/// of a large table cost no more than they did with one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wide {
    /// Values (masked by `mask` on insert).
    pub key: FlowKeyExt,
    /// Mask (never empty).
    pub mask: FlowKeyExt,
}

/// A rule as the agent keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// OpenFlow table id.
    pub table: u8,
    /// OpenFlow priority.
    pub priority: u16,
    /// Match values of the compact fields (masked by [`Rule::mask`] on
    /// insert).
    pub key: FlowKey,
    /// Match mask of the compact fields.
    pub mask: FlowKey,
    /// The wide part of the match, if the mask has one.
    pub wide: Option<Box<Wide>>,
    /// Compiled apply-actions (empty = drop, unless `ext` says more).
    pub actions: Vec<Action>,
    /// The other instructions (goto, metadata, write/clear-actions,
    /// meter), for rules that have any.
    pub ext: Option<Box<RuleExt>>,
    /// OpenFlow cookie.
    pub cookie: u64,
    /// Idle timeout in seconds (0 = none).
    pub idle_timeout: u16,
    /// Hard timeout in seconds (0 = none).
    pub hard_timeout: u16,
    /// OpenFlow flow-mod flags (`OFPFF_*`), kept in the rule metadata.
    pub flags: u16,
}

impl Rule {
    /// A rule of `table` at `priority` with this match (the wide part
    /// kept only if `mask` has one), no instruction, the rest zero.
    pub fn matching(table: u8, priority: u16, key: &FullKey, mask: &FullKey) -> Rule {
        let mut r = Rule {
            table,
            priority,
            ..Default::default()
        };
        r.set_match(key, mask);
        r
    }

    /// Set the match: values masked, the wide part kept only if the mask
    /// has one.
    pub fn set_match(&mut self, key: &FullKey, mask: &FullKey) {
        self.key = key.key.masked(&mask.key);
        self.mask = mask.key;
        self.wide = mask.is_wide().then(|| {
            Box::new(Wide {
                key: key.ext.masked(&mask.ext),
                mask: mask.ext,
            })
        });
    }

    /// The whole match values.
    pub fn full_key(&self) -> FullKey {
        FullKey {
            key: self.key,
            ext: self
                .wide
                .as_ref()
                .map_or_else(FlowKeyExt::default, |w| w.key),
        }
    }

    /// The whole match mask.
    pub fn full_mask(&self) -> FullKey {
        FullKey {
            key: self.mask,
            ext: self
                .wide
                .as_ref()
                .map_or_else(FlowKeyExt::default, |w| w.mask),
        }
    }

    /// True when the rule has exactly this table and (masked key, mask).
    fn same_match(&self, table: u8, key: &FullKey, mask: &FullKey) -> bool {
        self.table == table
            && self.key == key.key
            && self.mask == mask.key
            && match &self.wide {
                Some(w) => w.key == key.ext && w.mask == mask.ext,
                None => !mask.is_wide(),
            }
    }
}

/// A subtable as handed to the datapath: the compact mask (and id,
/// priority) and the wide part of the mask (zero for compact subtables).
pub type SubtableDesc = (Subtable, FlowKeyExt);

/// The key of a classifier entry: in the compact flow map (the subtables
/// without wide fields) or in the wide one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EntryKey {
    /// An entry of a compact subtable.
    Narrow(FlowMapKey),
    /// An entry of a wide subtable.
    Wide(Box<WideMapKey>),
}

impl From<FlowMapKey> for EntryKey {
    fn from(k: FlowMapKey) -> Self {
        EntryKey::Narrow(k)
    }
}

/// Classifier entries of removed subtables (see [`MapOp::DrainFlows`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// The removed subtables the keys are in (ids).
    pub subtables: Vec<u32>,
    /// Keys of the compact flow map.
    pub narrow: Vec<FlowMapKey>,
    /// Keys of the wide flow map.
    pub wide: Vec<WideMapKey>,
    /// Removed rules whose entries' keys are not listed: they are made
    /// from the rules where the entries are deleted (see [`Removed`]).
    pub removed: Option<Arc<Removed>>,
}

/// Rules removed with their subtables, whole, kept as the table held them
/// so that a bulk delete neither makes their entries' keys nor frees them
/// before its reply: whoever deletes the entries makes the keys
/// ([`Removed::keys_into`]) and, dropping the last reference, frees the
/// rules.
pub struct Removed {
    /// The table's rules by id as they were; only removed rules are left.
    slots: Vec<Option<Slot>>,
    /// The removed subtables: table, mask and id.
    subs: Vec<(u8, FullKey, u32)>,
    /// Number of rules.
    rules: usize,
}

impl std::fmt::Debug for Removed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Removed")
            .field("rules", &self.rules)
            .field("subtables", &self.subs.len())
            .finish()
    }
}

/// Equal when they name the same entries.
impl PartialEq for Removed {
    fn eq(&self, other: &Self) -> bool {
        let keys = |r: &Removed| {
            let (mut n, mut w) = (Vec::new(), Vec::new());
            r.keys_into(|k| n.push(k), |k| w.push(k));
            (n, w)
        };
        self.rules == other.rules && keys(self) == keys(other)
    }
}

impl Eq for Removed {}

impl Removed {
    /// Number of removed rules (each match's rules share one entry: at
    /// least as many as the keys).
    pub fn len(&self) -> usize {
        self.rules
    }

    /// True when no rule was removed.
    pub fn is_empty(&self) -> bool {
        self.rules == 0
    }

    /// The key of every removed entry (one per match), compact ones to
    /// `narrow`, wide ones to `wide`, in id order of the rules.
    pub fn keys_into(&self, mut narrow: impl FnMut(FlowMapKey), mut wide: impl FnMut(WideMapKey)) {
        // The rules after the first of each match (its group) share its
        // entry: marked, one key per match.
        let mut later = vec![false; self.slots.len()];
        for s in self.slots.iter().flatten() {
            if let Some(l) = later.get_mut(s.group_next as usize) {
                *l = true;
            }
        }
        let mut last = 0usize;
        for (s, later) in self.slots.iter().zip(&later) {
            let Some(s) = s else { continue };
            if *later {
                continue;
            }
            let r = &s.rule;
            let fits = |(t, m, _): &(u8, FullKey, u32)| {
                *t == r.table
                    && m.key == r.mask
                    && r.wide.as_ref().map_or(!m.is_wide(), |w| w.mask == m.ext)
            };
            if !self.subs.get(last).is_some_and(fits) {
                match self.subs.iter().position(fits) {
                    Some(i) => last = i,
                    // Not in a removed subtable (cannot be): no entry.
                    None => continue,
                }
            }
            let sub = self.subs[last].2;
            if sub & SUBTABLE_WIDE != 0 {
                wide(WideMapKey {
                    subtable: sub,
                    key: r.full_key(),
                });
            } else {
                narrow(FlowMapKey {
                    subtable: sub,
                    key: r.key,
                });
            }
        }
    }
}

impl Drained {
    /// Add the key of an entry.
    pub fn push(&mut self, k: EntryKey) {
        let sub = k.subtable();
        match k {
            EntryKey::Narrow(k) => self.narrow.push(k),
            EntryKey::Wide(k) => self.wide.push(*k),
        }
        if self.subtables.last() != Some(&sub) && !self.subtables.contains(&sub) {
            self.subtables.push(sub);
        }
    }

    /// Number of keys (the removed rules counted as one each, see
    /// [`Removed::len`]).
    pub fn len(&self) -> usize {
        self.narrow.len() + self.wide.len() + self.removed.as_ref().map_or(0, |r| r.len())
    }

    /// True when there is no key.
    pub fn is_empty(&self) -> bool {
        self.narrow.is_empty()
            && self.wide.is_empty()
            && self.removed.as_ref().is_none_or(|r| r.is_empty())
    }

    /// The keys: the listed ones, compact first, then those of the removed
    /// rules (made here: for tests and small changes).
    pub fn keys(&self) -> impl Iterator<Item = EntryKey> + '_ {
        let (mut narrow, mut wide) = (Vec::new(), Vec::new());
        if let Some(r) = &self.removed {
            r.keys_into(|k| narrow.push(k), |k| wide.push(k));
        }
        self.narrow
            .iter()
            .map(|k| EntryKey::Narrow(*k))
            .chain(self.wide.iter().map(|k| EntryKey::Wide(Box::new(*k))))
            .chain(narrow.into_iter().map(EntryKey::Narrow))
            .chain(wide.into_iter().map(|k| EntryKey::Wide(Box::new(k))))
    }
}

impl EntryKey {
    /// The id of the subtable the entry is in.
    pub fn subtable(&self) -> u32 {
        match self {
            EntryKey::Narrow(k) => k.subtable,
            EntryKey::Wide(k) => k.subtable,
        }
    }
}

/// One change to apply to the BPF maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    /// Write the classifier entry of a rule that was not in it (a new
    /// rule, or one taking its match over from another), counters as
    /// given (zero).
    PutFlow(EntryKey, Box<FlowEntry>),
    /// Rewrite the entry of the rule already in it (new actions): the
    /// entry's counters are kept.
    UpdateFlow(EntryKey, Box<FlowEntry>),
    /// Remove a classifier entry.
    DelFlow(EntryKey),
    /// Remove the classifier entries of subtables that are gone: a
    /// `SetSubtables` among the same operations (or before them) no longer
    /// lists them, so once the operations are applied no packet reaches
    /// these entries, and they may be removed after the change is
    /// acknowledged (the datapath does it in the background). Subtable ids
    /// are not used again, so no later change writes the same keys (see
    /// [`RuleTable::defer_unlinked`]).
    DrainFlows(Box<Drained>),
    /// Rewrite a table's subtable list (already sorted) and its count.
    SetSubtables(u8, Vec<SubtableDesc>),
    /// Store a pipeline rule's instructions.
    PutRuleExt(u32, Box<RuleExt>),
    /// Remove a rule's instructions.
    DelRuleExt(u32),
    /// Insert or replace a group.
    PutGroup(u32, Box<GroupEntry>),
    /// Remove a group.
    DelGroup(u32),
    /// Zero a group's counters (by stats slot).
    ResetGroupStats(u32),
    /// Insert or replace a meter.
    PutMeter(u32, MeterEntry),
    /// Remove a meter.
    DelMeter(u32),
    /// Zero a meter's counters (by stats slot).
    ResetMeterStats(u32),
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
    pub displaced: Option<(u32, EntryKey)>,
}

/// What [`RuleTable::add`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// The rule went in.
    New(Inserted),
    /// A rule with the same table, match and priority was there already
    /// (its id): nothing changed; the rule given comes back, its match in
    /// canonical form.
    Exists(u32, Rule),
}

/// Why a rule cannot be installed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    /// Every rule id the datapath has room for is in use.
    #[error("rule table full ({0} rules)")]
    Full(u32),
    /// The rule needs a new mask but [`MAX_SUBTABLES`] are in use.
    #[error("too many distinct match masks (at most {MAX_SUBTABLES} per table)")]
    TooManyMasks,
    /// More than [`MAX_ACTIONS`] actions.
    #[error("too many actions ({0} > {MAX_ACTIONS})")]
    TooManyActions(usize),
    /// No rule with this id.
    #[error("no rule with id {0}")]
    NoSuchRule(u32),
    /// A table id beyond [`N_TABLES`].
    #[error("no table {0} (tables 0..{N_TABLES})")]
    NoSuchTable(u8),
}

/// Rules that fill whole subtables, ready to go at once (see
/// [`RuleTable::whole_subtables`]).
#[derive(Debug)]
pub struct Whole {
    /// Each rule's subtable (its index in the table's subtables).
    sub_of: Vec<u32>,
}

/// The rules of some cookies, which fill whole subtables, ready to go at
/// once (see [`RuleTable::cookies_whole`]).
#[derive(Debug)]
pub struct WholeCookies {
    /// The cookie and mask that select them.
    want: u64,
    mask: u64,
    /// How many.
    rules: usize,
    /// The rules that stay, in id order.
    kept: Vec<u32>,
    /// The subtables that go (indexes in the table's subtables).
    gone: Vec<bool>,
}

impl WholeCookies {
    /// Number of rules that go.
    pub fn len(&self) -> usize {
        self.rules
    }

    /// True when none goes (never: such a plan is not made).
    pub fn is_empty(&self) -> bool {
        self.rules == 0
    }

    /// The ids of the rules that stay, in id order.
    pub fn kept(&self) -> &[u32] {
        &self.kept
    }
}

#[derive(Clone, Debug)]
struct SubtableState {
    id: u32,
    table: u8,
    mask: FullKey,
    /// Number of rules per priority (the maximum is the subtable's).
    prios: BTreeMap<u16, usize>,
}

impl SubtableState {
    fn rules(&self) -> usize {
        self.prios.values().sum()
    }
}

/// No rule: the end of a chain.
const NIL: u32 = u32::MAX;

/// Whether a rule has other instructions, and flags (what
/// [`RuleTable`] counts).
fn marks(r: &Rule) -> (bool, bool) {
    (r.ext.is_some(), r.flags != 0)
}

/// A rule in the table, with its links in the indexes.
#[derive(Debug)]
struct Slot {
    rule: Rule,
    /// The next rule with the same (table, mask, masked key), or [`NIL`].
    group_next: u32,
    /// The previous rule with the same cookie, or [`NIL`].
    cookie_prev: u32,
    /// The next rule with the same cookie, or [`NIL`].
    cookie_next: u32,
}

/// The rules of one cookie: a list linked through their slots.
#[derive(Debug, Clone, Copy)]
struct CookieList {
    head: u32,
    len: u32,
}

/// The tables: rules by id, indexed by match and by cookie; subtables by
/// (table, mask).
///
/// Rules live in a vector indexed by their id (ids are dense: freed ones
/// are used again). The rules with the same (table, mask, masked key) form a
/// group: the match index is a hash table of each group's first rule id
/// (4 bytes a group), the others chained through their slots. The rules
/// with the same cookie form a doubly linked list, found by cookie, so
/// that a delete by cookie visits the cookies and the rules it removes,
/// not the whole table.
///
/// Every operation is proportional to the number of rules sharing one
/// (table, mask, key) plus the number of subtables, not to the table size,
/// so bulk installs and deletes stay fast.
pub struct RuleTable {
    /// Rules by id (None: a free id).
    slots: Vec<Option<Slot>>,
    len: usize,
    /// The first rule of every group with its hash (see [`GroupRef`]).
    groups: HashTable<GroupRef>,
    hasher: foldhash::fast::RandomState,
    /// The rules of every cookie in use.
    cookies: HashMap<u64, CookieList>,
    subtables: Vec<SubtableState>,
    next_id: u32,
    /// Freed ids (those at or above `next_id` are stale: skipped).
    free_ids: Vec<u32>,
    next_sub_id: u32,
    /// The subtable lists last handed to the datapath, by table.
    last_lists: BTreeMap<u8, Vec<SubtableDesc>>,
    /// Most rules (rule ids are below it).
    limit: u32,
    /// Rules with other instructions ([`Rule::ext`]).
    with_ext: usize,
    /// Rules with flags.
    with_flags: usize,
}

impl std::fmt::Debug for RuleTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleTable")
            .field("len", &self.len)
            .field("subtables", &self.subtables)
            .field("cookies", &self.cookies.len())
            .field("limit", &self.limit)
            .finish()
    }
}

impl Default for RuleTable {
    fn default() -> Self {
        RuleTable {
            slots: Vec::new(),
            len: 0,
            groups: HashTable::new(),
            hasher: Default::default(),
            cookies: HashMap::default(),
            subtables: Vec::new(),
            next_id: 0,
            free_ids: Vec::new(),
            next_sub_id: 0,
            last_lists: BTreeMap::new(),
            limit: MAX_RULES,
            with_ext: 0,
            with_flags: 0,
        }
    }
}

/// A group in the match index: its first rule and the hash of its match.
/// The hash is kept so that growing the index, and most comparisons, do
/// not read the rules (a cache miss each in a large table).
#[derive(Debug, Clone, Copy)]
struct GroupRef {
    head: u32,
    hash: u32,
}

impl GroupRef {
    /// The hash the index uses: the 32 bits kept, spread over 64.
    fn hash(&self) -> u64 {
        spread(self.hash)
    }
}

fn spread(h: u32) -> u64 {
    u64::from(h).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The match index's hash of (table, masked key, mask), 32 bits of it
/// (the wide part only hashed when the mask has one).
fn group_hash(
    hasher: &foldhash::fast::RandomState,
    table: u8,
    key: &FullKey,
    mask: &FullKey,
) -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = hasher.build_hasher();
    h.write_u8(table);
    h.write(bytemuck::bytes_of(&key.key));
    h.write(bytemuck::bytes_of(&mask.key));
    if mask.is_wide() {
        h.write(bytemuck::bytes_of(&key.ext));
        h.write(bytemuck::bytes_of(&mask.ext));
    }
    let h = h.finish();
    (h ^ (h >> 32)) as u32
}

/// The index entry of (table, key, mask), if `g` is it.
fn is_group(slots: &[Option<Slot>], g: &GroupRef, hash: u32, m: (u8, &FullKey, &FullKey)) -> bool {
    g.hash == hash && same_match(slots, g.head, m)
}

fn slot_of(slots: &[Option<Slot>], id: u32) -> Option<&Slot> {
    slots.get(id as usize)?.as_ref()
}

fn slot_mut_of(slots: &mut [Option<Slot>], id: u32) -> Option<&mut Slot> {
    slots.get_mut(id as usize)?.as_mut()
}

/// True when rule `id` has exactly this (table, masked key, mask).
fn same_match(
    slots: &[Option<Slot>],
    id: u32,
    (table, key, mask): (u8, &FullKey, &FullKey),
) -> bool {
    slot_of(slots, id).is_some_and(|s| s.rule.same_match(table, key, mask))
}

/// True when every bit of mask `a` is in mask `b`.
fn mask_within(a: &FullKey, b: &FullKey) -> bool {
    a.words()
        .iter()
        .zip(b.words().iter())
        .all(|(a, b)| a & !b == 0)
}

/// The rules of one group, first to last.
struct Group<'a> {
    slots: &'a [Option<Slot>],
    next: u32,
}

impl<'a> Iterator for Group<'a> {
    type Item = (u32, &'a Rule);

    fn next(&mut self) -> Option<Self::Item> {
        let id = self.next;
        let s = slot_of(self.slots, id)?;
        self.next = s.group_next;
        Some((id, &s.rule))
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
        self.len
    }

    /// Number of subtables (distinct match masks) in use.
    pub fn n_subtables(&self) -> usize {
        self.subtables.len()
    }

    /// True when there is no rule.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rules by id, in id order.
    pub fn rules(&self) -> impl Iterator<Item = (u32, &Rule)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(id, s)| s.as_ref().map(|s| (id as u32, &s.rule)))
    }

    /// The rule with this id.
    pub fn get(&self, id: u32) -> Option<&Rule> {
        slot_of(&self.slots, id).map(|s| &s.rule)
    }

    /// The rules of `table` with exactly this (already masked) key and
    /// mask.
    fn group(&self, table: u8, key: &FullKey, mask: &FullKey) -> Group<'_> {
        Group {
            slots: &self.slots,
            next: self.locate(table, key, mask).1.unwrap_or(NIL),
        }
    }

    /// The id of the rule of `table` with exactly this (already masked)
    /// key, mask and priority, if any.
    pub fn find(&self, table: u8, key: &FullKey, mask: &FullKey, priority: u16) -> Option<u32> {
        self.group(table, key, mask)
            .find(|(_, r)| r.priority == priority)
            .map(|(id, _)| id)
    }

    /// Ids of the rules with `cookie & mask == want & mask`, in id order.
    /// The cookie index is used: the cost is the number of distinct
    /// cookies plus the rules selected.
    pub fn ids_by_cookie(&self, want: u64, mask: u64) -> Vec<u32> {
        if mask == 0 {
            return self.rules().map(|(id, _)| id).collect();
        }
        let mut ids = Vec::new();
        let mut walk = |list: &CookieList| {
            ids.reserve(list.len as usize);
            let mut id = list.head;
            while let Some(s) = slot_of(&self.slots, id) {
                ids.push(id);
                id = s.cookie_next;
            }
        };
        if mask == u64::MAX {
            if let Some(list) = self.cookies.get(&want) {
                walk(list);
            }
        } else {
            for (c, list) in &self.cookies {
                if c & mask == want & mask {
                    walk(list);
                }
            }
        }
        ids.sort_unstable();
        ids
    }

    /// The ids of the rules of `table` (None: of every table) that every
    /// packet matching (`key`, `mask`) matches too (a non-strict OpenFlow
    /// selection by match), when the match index can answer: one subtable
    /// covers `mask` and it has exactly `mask`, so one group is the
    /// answer. None when the tables are to be scanned. In id order.
    pub fn ids_by_match(
        &self,
        table: Option<u8>,
        key: &FullKey,
        mask: &FullKey,
    ) -> Option<Vec<u32>> {
        let mut covering = self
            .subtables
            .iter()
            .filter(|s| table.is_none_or(|t| t == s.table) && mask_within(mask, &s.mask));
        let (t, exact) = match covering.next() {
            None => return Some(Vec::new()),
            Some(s) if s.mask == *mask && covering.next().is_none() => (s.table, s.mask),
            Some(_) => return None,
        };
        let mut ids: Vec<u32> = self
            .group(t, &key.masked(&exact), &exact)
            .map(|(id, _)| id)
            .collect();
        ids.sort_unstable();
        Some(ids)
    }

    /// The rule of `table` that wins for a packet with this key (highest
    /// priority, then lowest id, as in the datapath), for userspace lookups
    /// such as PACKET_OUT to OFPP_TABLE.
    pub fn lookup(&self, table: u8, pkt: &FullKey) -> Option<(u32, &Rule)> {
        let mut best: Option<(u32, &Rule)> = None;
        for s in self.subtables.iter().filter(|s| s.table == table) {
            let k = pkt.masked(&s.mask);
            for (id, r) in self.group(table, &k, &s.mask) {
                let better = match best {
                    None => true,
                    Some((bid, b)) => {
                        (r.priority, std::cmp::Reverse(id)) > (b.priority, std::cmp::Reverse(bid))
                    }
                };
                if better {
                    best = Some((id, r));
                }
            }
        }
        best
    }

    /// Rebuild the tables from what an earlier agent left in the pinned
    /// maps: the subtable lists and the rules with their ids. No map
    /// operation is needed: the maps already hold exactly this.
    pub fn restore(subtables: &[(u8, SubtableDesc)], rules: Vec<(u32, Rule)>) -> Self {
        let mut t = RuleTable::new();
        for (table, (s, ext)) in subtables {
            t.subtables.push(SubtableState {
                id: s.id,
                table: *table,
                mask: FullKey {
                    key: s.mask,
                    ext: *ext,
                },
                prios: BTreeMap::new(),
            });
            t.next_sub_id = t.next_sub_id.max((s.id & !SUBTABLE_WIDE).wrapping_add(1));
        }
        for (id, r) in rules {
            if id == NIL || t.get(id).is_some() {
                continue;
            }
            let mask = r.full_mask();
            if let Some(s) = t
                .subtables
                .iter_mut()
                .find(|s| s.table == r.table && s.mask == mask)
            {
                *s.prios.entry(r.priority).or_default() += 1;
                t.next_id = t.next_id.max(id + 1);
                let at = t.locate(r.table, &r.full_key(), &mask);
                let _ = t.put(id, r, at);
            }
        }
        t.subtables.retain(|s| s.rules() > 0);
        t.free_ids = (0..t.next_id)
            .filter(|i| t.get(*i).is_none())
            .rev()
            .collect();
        let tables: std::collections::BTreeSet<u8> = t.subtables.iter().map(|s| s.table).collect();
        for table in tables {
            let list = t.subtable_list(table);
            t.last_lists.insert(table, list);
        }
        t
    }

    /// Where a match group is in the match index: the hash of
    /// (table, masked key, mask) and the group's first rule, if any. One
    /// lookup, done before anything changes, so that an add can both check
    /// for a rule with the same priority and link the new rule in.
    fn locate(&self, table: u8, key: &FullKey, mask: &FullKey) -> (u32, Option<u32>) {
        let h = group_hash(&self.hasher, table, key, mask);
        let slots = &self.slots;
        let head = self
            .groups
            .find(spread(h), |g| is_group(slots, g, h, (table, key, mask)))
            .map(|g| g.head);
        (h, head)
    }

    /// Store rule `id` and link it into the indexes, in the group found by
    /// [`RuleTable::locate`] (hash `h`, first rule `head`) for its match.
    /// Returns the rule that was in the classifier entry of its match (see
    /// [`RuleTable::winner_prio`]) before.
    fn put(&mut self, id: u32, rule: Rule, (h, head): (u32, Option<u32>)) -> Option<(u32, u16)> {
        let i = id as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        let cookie = rule.cookie;
        self.tally(marks(&rule), true);
        self.slots[i] = Some(Slot {
            rule,
            group_next: NIL,
            cookie_prev: NIL,
            cookie_next: NIL,
        });
        self.len += 1;
        let Self { slots, groups, .. } = self;
        let before = head.and_then(|head| {
            Group { slots, next: head }
                .map(|(id, r)| (id, r.priority))
                .max_by_key(|(id, p)| (*p, std::cmp::Reverse(*id)))
        });
        match head {
            // Second in its group: the index keeps pointing at the first.
            Some(head) => {
                let after = slot_of(slots, head).map_or(NIL, |s| s.group_next);
                if let Some(s) = slot_mut_of(slots, id) {
                    s.group_next = after;
                }
                if let Some(s) = slot_mut_of(slots, head) {
                    s.group_next = id;
                }
            }
            None => {
                groups.insert_unique(spread(h), GroupRef { head: id, hash: h }, GroupRef::hash);
            }
        }
        self.link_cookie(id, cookie);
        before
    }

    /// Take rule `id` out of the indexes and the slots. Returns it, the
    /// first rule left with its match, and the rule that was in the
    /// classifier entry of its match before (see [`RuleTable::winner`]),
    /// found in the same lookup of the match index.
    fn take(&mut self, id: u32) -> Option<(Rule, Option<u32>, Option<u32>)> {
        let (table, key, mask, cookie, next) = {
            let s = slot_of(&self.slots, id)?;
            let r = &s.rule;
            (r.table, r.full_key(), r.full_mask(), r.cookie, s.group_next)
        };
        self.unlink_cookie(id, cookie);
        let Self {
            slots,
            groups,
            hasher,
            ..
        } = self;
        let h = group_hash(hasher, table, &key, &mask);
        let (mut left, mut before) = (None, None);
        if let Ok(entry) =
            groups.find_entry(spread(h), |g| is_group(slots, g, h, (table, &key, &mask)))
        {
            let head = entry.get().head;
            before = Group { slots, next: head }
                .map(|(id, r)| (id, r.priority))
                .max_by_key(|(id, p)| (*p, std::cmp::Reverse(*id)))
                .map(|(id, _)| id);
            if head == id {
                if next == NIL {
                    entry.remove();
                } else {
                    entry.into_mut().head = next;
                    left = Some(next);
                }
            } else {
                left = Some(head);
                let mut prev = head;
                while let Some(s) = slot_mut_of(slots, prev) {
                    if s.group_next == id {
                        s.group_next = next;
                        break;
                    }
                    prev = s.group_next;
                }
            }
        }
        let slot = self.slots.get_mut(id as usize)?.take()?;
        self.tally(marks(&slot.rule), false);
        self.len -= 1;
        self.free_ids.push(id);
        self.shrink();
        Some((slot.rule, left, before))
    }

    /// Give memory back as rules go: all of it when the table is empty,
    /// the free slots at the end otherwise.
    fn shrink(&mut self) {
        if self.len == 0 {
            self.slots = Vec::new();
            self.free_ids = Vec::new();
            self.groups = HashTable::new();
            self.cookies = HashMap::default();
            self.next_id = 0;
            (self.with_ext, self.with_flags) = (0, 0);
            return;
        }
        if self.slots.last().is_some_and(Option::is_none) {
            while self.slots.last().is_some_and(Option::is_none) {
                self.slots.pop();
            }
            self.next_id = self.slots.len() as u32;
            if self.slots.capacity() > 4 * self.slots.len() + 1024 {
                self.slots.shrink_to_fit();
            }
            if self.free_ids.len() > 2 * self.slots.len() + 1024 {
                let next = self.next_id;
                self.free_ids.retain(|i| *i < next);
                self.free_ids.shrink_to_fit();
            }
        }
    }

    /// Count a rule's marks (see [`marks`]) in or out.
    fn tally(&mut self, (ext, flags): (bool, bool), add: bool) {
        let step = |n: &mut usize, on: bool| {
            if on {
                *n = if add { *n + 1 } else { n.saturating_sub(1) };
            }
        };
        step(&mut self.with_ext, ext);
        step(&mut self.with_flags, flags);
    }

    /// True when some rule has flags (e.g. wants a FLOW_REMOVED): a bulk
    /// removal that needs none of the removed rules' flags looks at none
    /// of them.
    pub fn any_flags(&self) -> bool {
        self.with_flags > 0
    }

    fn link_cookie(&mut self, id: u32, cookie: u64) {
        let list = self
            .cookies
            .entry(cookie)
            .or_insert(CookieList { head: NIL, len: 0 });
        let old = list.head;
        list.head = id;
        list.len += 1;
        if let Some(s) = slot_mut_of(&mut self.slots, id) {
            s.cookie_prev = NIL;
            s.cookie_next = old;
        }
        if let Some(s) = slot_mut_of(&mut self.slots, old) {
            s.cookie_prev = id;
        }
    }

    /// Take rule `id` out of the list of `cookie` (the one it was linked
    /// under).
    fn unlink_cookie(&mut self, id: u32, cookie: u64) {
        let Some((prev, next)) = slot_mut_of(&mut self.slots, id).map(|s| {
            let links = (s.cookie_prev, s.cookie_next);
            s.cookie_prev = NIL;
            s.cookie_next = NIL;
            links
        }) else {
            return;
        };
        if let Some(s) = slot_mut_of(&mut self.slots, prev) {
            s.cookie_next = next;
        }
        if let Some(s) = slot_mut_of(&mut self.slots, next) {
            s.cookie_prev = prev;
        }
        if let Some(list) = self.cookies.get_mut(&cookie) {
            if list.head == id {
                list.head = next;
            }
            list.len = list.len.saturating_sub(1);
            if list.len == 0 {
                self.cookies.remove(&cookie);
            }
        }
    }

    /// A free rule id, if the datapath has room for one more rule.
    fn alloc_id(&mut self) -> Result<u32, TableError> {
        while let Some(id) = self.free_ids.pop() {
            if id < self.next_id && self.get(id).is_none() {
                return Ok(id);
            }
        }
        if self.next_id < self.limit {
            self.next_id += 1;
            return Ok(self.next_id - 1);
        }
        Err(TableError::Full(self.limit))
    }

    /// Add a rule; returns its id and the map operations.
    pub fn insert(&mut self, rule: Rule) -> Result<(u32, Vec<MapOp>), TableError> {
        self.insert_full(rule).map(|i| (i.id, i.ops))
    }

    /// Add a rule (see [`Inserted`]), beside any rule with the same match
    /// and priority. One lookup of its match group and one scan of the
    /// table's subtables: the subtable list is rebuilt only when a subtable
    /// appears or its top priority rises.
    pub fn insert_full(&mut self, rule: Rule) -> Result<Inserted, TableError> {
        let (rule, key, mask) = Self::checked(rule)?;
        let at = self.locate(rule.table, &key, &mask);
        self.insert_at(rule, key, mask, at)
    }

    /// Add a rule unless one with the same table, match and priority is
    /// in the table: then nothing changes, and that rule's id and the rule
    /// given are returned. The match group is looked up once for both.
    pub fn add(&mut self, rule: Rule) -> Result<Added, TableError> {
        let (rule, key, mask) = Self::checked(rule)?;
        let at = self.locate(rule.table, &key, &mask);
        let same = at.1.and_then(|head| {
            Group {
                slots: &self.slots,
                next: head,
            }
            .find(|(_, r)| r.priority == rule.priority)
            .map(|(id, _)| id)
        });
        match same {
            Some(id) => Ok(Added::Exists(id, rule)),
            None => self.insert_at(rule, key, mask, at).map(Added::New),
        }
    }

    /// A rule's table and actions checked, its match in canonical form
    /// (values masked), with its whole key and mask.
    fn checked(mut rule: Rule) -> Result<(Rule, FullKey, FullKey), TableError> {
        if u32::from(rule.table) >= N_TABLES {
            return Err(TableError::NoSuchTable(rule.table));
        }
        if rule.actions.len() > MAX_ACTIONS {
            return Err(TableError::TooManyActions(rule.actions.len()));
        }
        let (full_key, mask) = (rule.full_key(), rule.full_mask());
        rule.set_match(&full_key, &mask);
        let key = rule.full_key();
        Ok((rule, key, mask))
    }

    /// Insert a [`RuleTable::checked`] rule into the match group `at`
    /// ([`RuleTable::locate`]).
    fn insert_at(
        &mut self,
        rule: Rule,
        key: FullKey,
        mask: FullKey,
        at: (u32, Option<u32>),
    ) -> Result<Inserted, TableError> {
        let table = rule.table;
        let mut in_table = 0;
        let mut sub = None;
        for (i, s) in self.subtables.iter().enumerate() {
            if s.table == table {
                in_table += 1;
                if s.mask == mask {
                    sub = Some(i);
                }
            }
        }
        if sub.is_none() && in_table >= MAX_SUBTABLES {
            return Err(TableError::TooManyMasks);
        }
        let id = self.alloc_id()?;
        let sub = match sub {
            Some(i) => i,
            None => {
                let wide = if mask.is_wide() { SUBTABLE_WIDE } else { 0 };
                self.subtables.push(SubtableState {
                    id: (self.next_sub_id & !SUBTABLE_WIDE) | wide,
                    table,
                    mask,
                    prios: BTreeMap::new(),
                });
                self.next_sub_id = self.next_sub_id.wrapping_add(1) & !SUBTABLE_WIDE;
                self.subtables.len() - 1
            }
        };
        let s = &mut self.subtables[sub];
        let top = s.prios.keys().next_back().copied();
        *s.prios.entry(rule.priority).or_default() += 1;
        let list_changed = top.is_none_or(|t| rule.priority > t);
        let mk = entry_key_of(s.id, &key);
        let ext = rule.ext.as_deref().copied();
        // The rule in the entry so far, and whether the new one beats it
        // (higher priority, then lower id, as the datapath would).
        let (priority, put) = (rule.priority, entry(id, &rule));
        let before = self.put(id, rule, at);
        let wins = before
            .is_none_or(|(b, p)| (priority, std::cmp::Reverse(id)) > (p, std::cmp::Reverse(b)));
        let mut ops = Vec::with_capacity(2);
        // The instructions first, then the entry that points at them.
        if let Some(e) = ext {
            ops.push(MapOp::PutRuleExt(id, Box::new(e)));
        }
        if wins {
            ops.push(MapOp::PutFlow(mk.clone(), Box::new(put)));
        }
        if list_changed {
            ops.extend(self.subtables_op(table));
        }
        Ok(Inserted {
            id,
            ops,
            displaced: before.filter(|_| wins).map(|(b, _)| (b, mk)),
        })
    }

    /// Change the instructions, cookie, timeouts and flags of rule `id` in
    /// place (its id, and so its counters, stay). Returns the map
    /// operations.
    pub fn modify(
        &mut self,
        id: u32,
        update: impl FnOnce(&mut Rule),
    ) -> Result<Vec<MapOp>, TableError> {
        let rule = slot_mut_of(&mut self.slots, id)
            .map(|s| &mut s.rule)
            .ok_or(TableError::NoSuchRule(id))?;
        let (table, prio, cookie) = (rule.table, rule.priority, rule.cookie);
        let had_ext = rule.ext.is_some();
        let mut new = rule.clone();
        update(&mut new);
        // Table, match and priority are the rule's identity: never changed
        // here.
        new.table = table;
        new.key = rule.key;
        new.mask = rule.mask;
        new.wide = rule.wide.clone();
        new.priority = prio;
        if new.actions.len() > MAX_ACTIONS {
            return Err(TableError::TooManyActions(new.actions.len()));
        }
        let (key, mask) = (new.full_key(), new.full_mask());
        let ext = new.ext.as_deref().copied();
        let new_cookie = new.cookie;
        let (was, is) = (marks(rule), marks(&new));
        *rule = new;
        self.tally(was, false);
        self.tally(is, true);
        if new_cookie != cookie {
            self.unlink_cookie(id, cookie);
            self.link_cookie(id, new_cookie);
        }
        let before = self.winner(table, &key, &mask);
        let mut ops = Vec::new();
        // The instructions first, then the entry that points at them.
        if let Some(e) = ext {
            ops.push(MapOp::PutRuleExt(id, Box::new(e)));
        }
        ops.extend(self.refresh_entry(table, &key, &mask, before, Some(id)));
        if ext.is_none() && had_ext {
            ops.push(MapOp::DelRuleExt(id));
        }
        Ok(ops)
    }

    /// Remove a rule by id; returns it and the map operations.
    pub fn remove(&mut self, id: u32) -> Result<(Rule, Vec<MapOp>), TableError> {
        let mut ops = Vec::new();
        let rule = self.remove_into(id, &mut ops)?;
        Ok((rule, ops))
    }

    /// Remove a rule by id like [`RuleTable::remove`], appending the map
    /// operations to `ops` (a bulk delete collects them all in one vector);
    /// on error `ops` is unchanged.
    pub fn remove_into(&mut self, id: u32, ops: &mut Vec<MapOp>) -> Result<Rule, TableError> {
        let start = ops.len();
        let (rule, left, before) = self.take(id).ok_or(TableError::NoSuchRule(id))?;
        let (table, key, mask) = (rule.table, rule.full_key(), rule.full_mask());
        match left {
            // The last rule of its match: its entry goes (if it had it).
            None if before == Some(id) => {
                ops.extend(self.map_key(table, &key, &mask).map(MapOp::DelFlow))
            }
            None => {}
            Some(_) => ops.extend(self.refresh_entry(table, &key, &mask, before, None)),
        }
        if rule.ext.is_some() {
            ops.push(MapOp::DelRuleExt(id));
        }
        let mut list_changed = false;
        if let Some(pos) = self
            .subtables
            .iter()
            .position(|s| s.table == table && s.mask == mask)
        {
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
            if let Some(op) = self.subtables_op(table) {
                ops.insert(start, op);
            }
        }
        Ok(rule)
    }

    /// The number of rules `ids` in each subtable (by index in the
    /// subtable list), telling `each` the subtable of every id in turn
    /// (ids of one subtable in a row are found at once). None if an id is
    /// no rule or its subtable is in no list.
    fn count_by_subtable(&self, ids: &[u32], mut each: impl FnMut(usize)) -> Option<Vec<usize>> {
        let mut counts = vec![0usize; self.subtables.len()];
        let mut last = 0usize;
        for &id in ids {
            let r = &slot_of(&self.slots, id)?.rule;
            let fits = |s: &SubtableState| {
                s.table == r.table
                    && s.mask.key == r.mask
                    && r.wide
                        .as_ref()
                        .map_or(!s.mask.is_wide(), |w| w.mask == s.mask.ext)
            };
            if !self.subtables.get(last).is_some_and(fits) {
                last = self.subtables.iter().position(fits)?;
            }
            counts[last] += 1;
            each(last);
        }
        Some(counts)
    }

    /// Whether [`RuleTable::remove_whole`] can remove the rules `ids` (in
    /// the table, each once): they are every rule of the subtables they
    /// are in, and no more rules stay than go. None otherwise.
    pub fn whole_subtables(&self, ids: &[u32]) -> Option<Whole> {
        // Each id once (in order), so that counting them counts rules.
        if ids.is_empty() || ids.len() * 2 < self.len || !ids.is_sorted_by(|a, b| a < b) {
            return None;
        }
        let mut sub_of = Vec::with_capacity(ids.len());
        let counts = self.count_by_subtable(ids, |sub| sub_of.push(sub as u32))?;
        let whole = counts
            .iter()
            .zip(&self.subtables)
            .all(|(n, s)| *n == 0 || *n == s.rules());
        whole.then_some(Whole { sub_of })
    }

    /// Remove the rules `ids`, which fill whole subtables (`plan`, from
    /// [`RuleTable::whole_subtables`] for the same ids, nothing changed in
    /// between), at once: the subtables go from their tables' lists first
    /// (one `SetSubtables` per table), then the rules' instructions are
    /// deleted and their entries drained (one [`MapOp::DrainFlows`], a key
    /// per match). `each` sees every rule before it is dropped. The indexes
    /// are not updated rule by rule: those of the rules that stay are
    /// made again (fewer than went), or emptied when none stays.
    pub fn remove_whole(
        &mut self,
        ids: &[u32],
        plan: Whole,
        ops: &mut Vec<MapOp>,
        mut each: impl FnMut(u32, &Rule),
    ) {
        let Whole { sub_of } = plan;
        let sub_ids: Vec<u32> = self.subtables.iter().map(|s| s.id).collect();
        let mut gone = vec![false; self.subtables.len()];
        for j in &sub_of {
            gone[*j as usize] = true;
        }
        let mut tables: Vec<u8> = Vec::new();
        for (s, g) in self.subtables.iter().zip(&gone) {
            if *g && !tables.contains(&s.table) {
                tables.push(s.table);
            }
        }
        let mut drained = Drained {
            subtables: sub_ids
                .iter()
                .zip(&gone)
                .filter(|(_, g)| **g)
                .map(|(id, _)| *id)
                .collect(),
            ..Default::default()
        };
        let mut i = 0;
        self.subtables.retain(|_| {
            i += 1;
            !gone[i - 1]
        });
        for t in tables {
            ops.extend(self.subtables_op(t));
        }
        // The rules after the first of each match (its group) are marked:
        // one entry per match is drained.
        let mut later = vec![false; self.slots.len()];
        for &id in ids {
            if let Some(s) = slot_of(&self.slots, id) {
                if let Some(l) = later.get_mut(s.group_next as usize) {
                    *l = true;
                }
            }
        }
        drained.narrow.reserve(ids.len());
        for (&id, &j) in ids.iter().zip(&sub_of) {
            let Some(slot) = self.slots.get_mut(id as usize).and_then(Option::take) else {
                continue;
            };
            let r = &slot.rule;
            if !later[id as usize] {
                let sub = sub_ids[j as usize];
                match &r.wide {
                    None => drained.narrow.push(FlowMapKey {
                        subtable: sub,
                        key: r.key,
                    }),
                    Some(_) => drained.wide.push(WideMapKey {
                        subtable: sub,
                        key: r.full_key(),
                    }),
                }
            }
            if r.ext.is_some() {
                ops.push(MapOp::DelRuleExt(id));
            }
            each(id, r);
            self.len -= 1;
            self.free_ids.push(id);
        }
        drop(later);
        if !drained.is_empty() {
            ops.push(MapOp::DrainFlows(Box::new(drained)));
        }
        self.relink_all();
        self.shrink();
    }

    /// Whether [`RuleTable::remove_cookies`] can remove the rules with
    /// `cookie & mask == want & mask` at once: they are every rule of the
    /// subtables they are in, no more rules stay than go, and those that
    /// stay have low ids (their slots are moved, not the others). None
    /// otherwise. The cost is the number of distinct cookies plus the
    /// rules that stay (one lookup when fewer go than stay and the mask is
    /// exact): the rules that go are not looked at.
    pub fn cookies_whole(&self, want: u64, mask: u64) -> Option<WholeCookies> {
        let picked = |c: u64| c & mask == want & mask;
        // One cookie: looked up, so that a small delete in a table of
        // many cookies costs no walk of them.
        let rules: usize = if mask == u64::MAX {
            self.cookies.get(&want).map_or(0, |l| l.len as usize)
        } else {
            self.cookies
                .iter()
                .filter(|(c, _)| picked(**c))
                .map(|(_, l)| l.len as usize)
                .sum()
        };
        if rules == 0 || rules * 2 < self.len || rules > self.len {
            return None;
        }
        let mut kept = Vec::with_capacity(self.len - rules);
        for (_, list) in self.cookies.iter().filter(|(c, _)| !picked(**c)) {
            let mut id = list.head;
            while let Some(s) = slot_of(&self.slots, id) {
                kept.push(id);
                id = s.cookie_next;
            }
        }
        if kept.len() + rules != self.len {
            return None;
        }
        kept.sort_unstable();
        // The slots of the rules that stay are moved to a new vector: not
        // when it would be nearly as large as the old one.
        let end = kept.last().map_or(0, |id| *id as usize + 1);
        if end > 4 * kept.len() + 1024 {
            return None;
        }
        // Each subtable keeps all its rules or none.
        let counts = self.count_by_subtable(&kept, |_| {})?;
        let mut gone = Vec::with_capacity(counts.len());
        for (n, s) in counts.iter().zip(&self.subtables) {
            match *n {
                0 => gone.push(true),
                n if n == s.rules() => gone.push(false),
                _ => return None,
            }
        }
        Some(WholeCookies {
            want,
            mask,
            rules,
            kept,
            gone,
        })
    }

    /// Remove the rules `plan` selects ([`RuleTable::cookies_whole`],
    /// nothing changed in between) at once, as [`RuleTable::remove_whole`]
    /// does, without visiting them: the subtables go from their tables'
    /// lists (one `SetSubtables` per table), the instructions of those
    /// that have any are deleted, and the slots holding them go whole into
    /// one [`MapOp::DrainFlows`] ([`Removed`]), which makes their entries'
    /// keys and frees them where the entries are deleted. The rules that
    /// stay are moved to new slots and indexed again. Returns the number
    /// of rules removed.
    pub fn remove_cookies(&mut self, plan: WholeCookies, ops: &mut Vec<MapOp>) -> usize {
        let WholeCookies {
            want,
            mask,
            rules,
            kept,
            gone,
        } = plan;
        let mut subs = Vec::new();
        let mut tables: Vec<u8> = Vec::new();
        for (s, g) in self.subtables.iter().zip(&gone) {
            if *g {
                subs.push((s.table, s.mask, s.id));
                if !tables.contains(&s.table) {
                    tables.push(s.table);
                }
            }
        }
        let mut i = 0;
        self.subtables.retain(|_| {
            i += 1;
            !gone.get(i - 1).copied().unwrap_or(false)
        });
        for t in tables {
            ops.extend(self.subtables_op(t));
        }
        // Instructions: only when some rule has any.
        if self.with_ext > 0 {
            let picked = |c: u64| c & mask == want & mask;
            let mut ext = Vec::new();
            for (_, list) in self.cookies.iter().filter(|(c, _)| picked(**c)) {
                let mut id = list.head;
                while let Some(s) = slot_of(&self.slots, id) {
                    if s.rule.ext.is_some() {
                        ext.push(id);
                    }
                    id = s.cookie_next;
                }
            }
            ext.sort_unstable();
            ops.extend(ext.into_iter().map(MapOp::DelRuleExt));
        }
        // The rules that stay move to new slots; the old ones, with the
        // rules that go, go to the drain.
        let end = kept.last().map_or(0, |id| *id as usize + 1);
        let mut slots: Vec<Option<Slot>> = Vec::with_capacity(end);
        slots.resize_with(end, || None);
        for &id in &kept {
            if let (Some(to), Some(from)) =
                (slots.get_mut(id as usize), self.slots.get_mut(id as usize))
            {
                *to = from.take();
            }
        }
        let old = std::mem::replace(&mut self.slots, slots);
        let drained = Drained {
            subtables: subs.iter().map(|s| s.2).collect(),
            removed: Some(Arc::new(Removed {
                slots: old,
                subs,
                rules,
            })),
            ..Default::default()
        };
        ops.push(MapOp::DrainFlows(Box::new(drained)));
        self.len = kept.len();
        self.next_id = end as u32;
        // Free ids: those below the end that no rule keeps, lowest first
        // out.
        let mut free = Vec::with_capacity(end - kept.len());
        let mut k = kept.iter().rev().peekable();
        for id in (0..end as u32).rev() {
            if k.peek() == Some(&&id) {
                k.next();
            } else {
                free.push(id);
            }
        }
        self.free_ids = free;
        self.relink(kept.iter().copied());
        self.shrink();
        rules
    }

    /// Make the match and cookie indexes again from the rules in the
    /// slots.
    fn relink_all(&mut self) {
        let n = if self.len == 0 { 0 } else { self.slots.len() };
        self.relink(0..n as u32);
    }

    /// Make the match and cookie indexes (and the counts of rules with
    /// instructions and flags) again from the rules `ids` (in id order),
    /// which are all the rules in the slots.
    fn relink(&mut self, ids: impl Iterator<Item = u32>) {
        self.groups = HashTable::new();
        self.cookies = HashMap::default();
        (self.with_ext, self.with_flags) = (0, 0);
        for id in ids {
            let Some((table, key, mask, cookie, m)) = slot_mut_of(&mut self.slots, id).map(|s| {
                s.group_next = NIL;
                s.cookie_prev = NIL;
                s.cookie_next = NIL;
                let r = &s.rule;
                (r.table, r.full_key(), r.full_mask(), r.cookie, marks(r))
            }) else {
                continue;
            };
            self.tally(m, true);
            let (h, head) = self.locate(table, &key, &mask);
            match head {
                Some(head) => {
                    let after = slot_of(&self.slots, head).map_or(NIL, |s| s.group_next);
                    if let Some(s) = slot_mut_of(&mut self.slots, id) {
                        s.group_next = after;
                    }
                    if let Some(s) = slot_mut_of(&mut self.slots, head) {
                        s.group_next = id;
                    }
                }
                None => {
                    self.groups.insert_unique(
                        spread(h),
                        GroupRef { head: id, hash: h },
                        GroupRef::hash,
                    );
                }
            }
            self.link_cookie(id, cookie);
        }
    }

    /// Turn the removals in `ops` of entries whose subtable is gone (no
    /// rule of the tables has its mask any more) into one
    /// [`MapOp::DrainFlows`] at the end. For the operations of one change
    /// (e.g. a bulk delete): a subtable that was there when the change
    /// started and is gone at its end was taken out of its table's list by
    /// a `SetSubtables` among them, so the datapath stops matching its
    /// entries as soon as the list is written and can remove them later.
    /// Removals from subtables that keep other rules stay
    /// [`MapOp::DelFlow`]s.
    pub fn defer_unlinked(&self, ops: &mut Vec<MapOp>) {
        let mut live: Vec<u32> = self.subtables.iter().map(|s| s.id).collect();
        live.sort_unstable();
        let gone = |o: &MapOp| matches!(o, MapOp::DelFlow(k) if live.binary_search(&k.subtable()).is_err());
        if !ops.iter().any(gone) {
            return;
        }
        let mut drained = Drained::default();
        let mut kept = Vec::with_capacity(ops.len());
        for op in ops.drain(..) {
            match op {
                MapOp::DelFlow(k) if live.binary_search(&k.subtable()).is_err() => drained.push(k),
                op => kept.push(op),
            }
        }
        kept.push(MapOp::DrainFlows(Box::new(drained)));
        *ops = kept;
    }

    /// The map key of the classifier entry for (table, key, mask).
    fn map_key(&self, table: u8, key: &FullKey, mask: &FullKey) -> Option<EntryKey> {
        let sub = self
            .subtables
            .iter()
            .find(|s| s.table == table && s.mask == *mask)?;
        Some(entry_key_of(sub.id, key))
    }

    /// The rule in the datapath for (table, key, mask), with its priority:
    /// the highest priority, then the lowest id, of the rules with that
    /// match.
    fn winner_prio(&self, table: u8, key: &FullKey, mask: &FullKey) -> Option<(u32, u16)> {
        self.group(table, key, mask)
            .map(|(id, r)| (id, r.priority))
            .max_by_key(|(id, p)| (*p, std::cmp::Reverse(*id)))
    }

    /// The rule in the datapath for (table, key, mask).
    fn winner(&self, table: u8, key: &FullKey, mask: &FullKey) -> Option<u32> {
        self.winner_prio(table, key, mask).map(|(id, _)| id)
    }

    /// The classifier entry of rule `id` (its map key), if the rule is the
    /// one in the datapath for its match (not shadowed).
    pub fn entry_key(&self, id: u32) -> Option<EntryKey> {
        let r = self.get(id)?;
        let (key, mask) = (r.full_key(), r.full_mask());
        if self.winner(r.table, &key, &mask) != Some(id) {
            return None;
        }
        self.map_key(r.table, &key, &mask)
    }

    /// Bring the classifier entry of (table, key, mask) in line after a
    /// change: `before` was the rule in it, `changed` a rule whose
    /// instructions just changed. A new rule in the entry is written with
    /// fresh counters; the same rule with new actions keeps them; nothing
    /// changes for a change to a shadowed rule.
    fn refresh_entry(
        &self,
        table: u8,
        key: &FullKey,
        mask: &FullKey,
        before: Option<u32>,
        changed: Option<u32>,
    ) -> Vec<MapOp> {
        let Some(mk) = self.map_key(table, key, mask) else {
            return Vec::new();
        };
        let now = self.winner(table, key, mask);
        match (before, now.and_then(|id| Some((id, self.get(id)?)))) {
            (Some(_), None) => vec![MapOp::DelFlow(mk)],
            (None, None) => Vec::new(),
            (Some(b), Some((id, r))) if b == id => {
                if changed == Some(id) {
                    vec![MapOp::UpdateFlow(mk, Box::new(entry(id, r)))]
                } else {
                    Vec::new()
                }
            }
            (_, Some((id, r))) => vec![MapOp::PutFlow(mk, Box::new(entry(id, r)))],
        }
    }

    /// A SetSubtables operation for `table` when its list changed since
    /// the last one.
    fn subtables_op(&mut self, table: u8) -> Option<MapOp> {
        let list = self.subtable_list(table);
        if self.last_lists.get(&table) == Some(&list) {
            return None;
        }
        if list.is_empty() && !self.last_lists.contains_key(&table) {
            return None;
        }
        self.last_lists.insert(table, list.clone());
        Some(MapOp::SetSubtables(table, list))
    }

    /// The subtables of `table`, sorted by descending max priority.
    fn subtable_list(&self, table: u8) -> Vec<SubtableDesc> {
        let mut list: Vec<SubtableDesc> = self
            .subtables
            .iter()
            .filter(|s| s.table == table)
            .map(|s| {
                (
                    Subtable {
                        mask: s.mask.key,
                        id: s.id,
                        max_priority: s
                            .prios
                            .keys()
                            .next_back()
                            .map(|p| u32::from(*p))
                            .unwrap_or(0),
                    },
                    s.mask.ext,
                )
            })
            .collect();
        list.sort_by(|a, b| {
            b.0.max_priority
                .cmp(&a.0.max_priority)
                .then(a.0.id.cmp(&b.0.id))
        });
        list
    }
}

/// The classifier entry of rule `id`.
pub fn entry(id: u32, r: &Rule) -> FlowEntry {
    let mut e = FlowEntry {
        priority: u32::from(r.priority),
        rule_id: id,
        n_actions: r.actions.len() as u32,
        flags: r.flags,
        kind: if r.ext.is_some() { ENTRY_PIPELINE } else { 0 },
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

/// The map key of the entry for `key` in the subtable `sub` (an id).
fn entry_key_of(sub: u32, key: &FullKey) -> EntryKey {
    if sub & SUBTABLE_WIDE != 0 {
        EntryKey::Wide(Box::new(WideMapKey {
            subtable: sub,
            key: *key,
        }))
    } else {
        EntryKey::Narrow(FlowMapKey {
            subtable: sub,
            key: key.key,
        })
    }
}

/// A compact key as a whole key (no wide fields).
pub fn full(key: FlowKey) -> FullKey {
    FullKey::from(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap as Map;

    fn rule(prio: u16, dst: [u8; 4], mask: [u8; 4], out: u32) -> Rule {
        Rule {
            table: 0,
            priority: prio,
            key: FlowKey {
                ipv4_dst: dst,
                ..Default::default()
            },
            mask: FlowKey {
                ipv4_dst: mask,
                ..Default::default()
            },
            wide: None,
            actions: vec![Action::output(out)],
            ext: None,
            cookie: u64::from(out),
            idle_timeout: 0,
            hard_timeout: 0,
            flags: 0,
        }
    }

    fn list_of(ops: &[MapOp]) -> Option<(u8, Vec<SubtableDesc>)> {
        ops.iter().find_map(|o| match o {
            MapOp::SetSubtables(t, l) => Some((*t, l.clone())),
            _ => None,
        })
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
        assert!(matches!(ops.last(), Some(MapOp::SetSubtables(0, s)) if s.len() == 1));
        let (_, ops) = t.insert(rule(20, [10, 0, 0, 2], [255; 4], 2)).unwrap();
        assert!(
            matches!(ops.last(), Some(MapOp::SetSubtables(0, s)) if s.len() == 1 && s[0].0.max_priority == 20)
        );
        let (_, ops) = t
            .insert(rule(30, [10, 0, 0, 0], [255, 255, 0, 0], 3))
            .unwrap();
        let (_, s) = list_of(&ops).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].0.max_priority, 30);
        assert_eq!(s[1].0.max_priority, 20);
    }

    #[test]
    fn shadowed_rule_takes_over_when_the_higher_one_goes() {
        let mut t = RuleTable::new();
        let (low, _) = t.insert(rule(10, [10, 0, 0, 1], [255; 4], 1)).unwrap();
        let (high, ops) = t.insert(rule(20, [10, 0, 0, 1], [255; 4], 2)).unwrap();
        assert_eq!(puts(&ops), [(high, 20)]);
        assert!(matches!(t.entry_key(high),
            Some(EntryKey::Narrow(k)) if k.key.ipv4_dst == [10, 0, 0, 1]));
        assert_eq!(t.entry_key(low), None);
        // Adding a lower one leaves the entry (and its counters) alone.
        let (lower, ops) = t.insert(rule(5, [10, 0, 0, 1], [255; 4], 3)).unwrap();
        assert!(ops.iter().all(|o| matches!(o, MapOp::SetSubtables(..))));
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
        assert!(matches!(ops.first(), Some(MapOp::SetSubtables(..))));
    }

    #[test]
    fn last_rule_removal_deletes_entry_and_subtable_and_reuses_id() {
        let mut t = RuleTable::new();
        let (id, _) = t.insert(rule(10, [10, 0, 0, 1], [255; 4], 1)).unwrap();
        let (_, ops) = t.remove(id).unwrap();
        assert!(ops.iter().any(|o| matches!(o, MapOp::DelFlow(_))));
        assert!(ops.contains(&MapOp::SetSubtables(0, vec![])));
        assert_eq!(t.remove(id).unwrap_err(), TableError::NoSuchRule(id));
        let (again, ops) = t.insert(rule(10, [10, 0, 0, 9], [255; 4], 1)).unwrap();
        assert_eq!(again, id);
        // A fresh entry: counters from zero.
        assert!(
            matches!(&ops[0], MapOp::PutFlow(_, e) if e.rule_id == id && e.packets == 0 && e.cookie == 1)
        );
    }

    #[test]
    fn removals_from_subtables_that_go_are_drained_the_others_deleted() {
        let mut t = RuleTable::new();
        let host = [255; 4];
        let net = [255, 255, 0, 0];
        let a = t.insert(rule(10, [10, 0, 0, 1], host, 1)).unwrap().0;
        let b = t.insert(rule(10, [10, 0, 0, 2], host, 2)).unwrap().0;
        let c = t.insert(rule(10, [10, 1, 0, 0], net, 1)).unwrap().0;
        let d = t.insert(rule(10, [10, 2, 0, 0], net, 1)).unwrap().0;
        let net_sub = t.entry_key(c).unwrap().subtable();
        // One change: a rule of the host subtable, which stays, and every
        // rule of the /16 one, which goes.
        let mut ops = Vec::new();
        for id in [a, c, d] {
            t.remove_into(id, &mut ops).unwrap();
        }
        t.defer_unlinked(&mut ops);
        let drained: Vec<u32> = ops
            .iter()
            .filter_map(|o| match o {
                MapOp::DrainFlows(d) => Some(d.keys().map(|k| k.subtable())),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(drained, [net_sub, net_sub]);
        assert!(matches!(ops.last(), Some(MapOp::DrainFlows(d)) if d.subtables == [net_sub]));
        assert!(ops.iter().any(
            |o| matches!(o, MapOp::DelFlow(EntryKey::Narrow(k)) if k.key.ipv4_dst == [10, 0, 0, 1])
        ));
        // The list written without the subtable comes before the drain
        // could matter (the operations of the change are applied first).
        assert!(matches!(list_of(&ops), Some((0, l)) if l.len() == 1 && l[0].0.id != net_sub));
        // The same mask again makes a new subtable: no entry key of the
        // drained one is written again.
        let (e, ops) = t.insert(rule(10, [10, 1, 0, 0], net, 1)).unwrap();
        assert_ne!(t.entry_key(e).unwrap().subtable(), net_sub);
        assert!(ops.iter().all(|o| match o {
            MapOp::PutFlow(k, _) => k.subtable() != net_sub,
            _ => true,
        }));
        // Removing the last rule alone drains its entry too.
        let mut ops = Vec::new();
        t.remove_into(b, &mut ops).unwrap();
        t.defer_unlinked(&mut ops);
        assert!(
            matches!(&ops[..], [MapOp::SetSubtables(0, l), MapOp::DrainFlows(d)] if l.len() == 1 && d.len() == 1)
        );
    }

    #[test]
    fn restore_rebuilds_ids_and_subtables() {
        let mut t = RuleTable::new();
        let (a, _) = t.insert(rule(10, [10, 0, 0, 1], [255; 4], 1)).unwrap();
        let (b, ops) = t
            .insert(rule(20, [10, 0, 0, 0], [255, 0, 0, 0], 2))
            .unwrap();
        let (table, subs) = list_of(&ops).unwrap();
        let saved: Vec<(u8, SubtableDesc)> = subs.iter().map(|s| (table, *s)).collect();
        let rules: Vec<(u32, Rule)> = t.rules().map(|(i, r)| (i, r.clone())).collect();
        let mut r = RuleTable::restore(&saved, rules);
        assert_eq!(r.len(), 2);
        assert_eq!(r.subtable_list(0), subs);
        let (c, _) = r.insert(rule(5, [10, 0, 0, 9], [255; 4], 3)).unwrap();
        assert!(c != a && c != b);
        assert!(r.remove(a).is_ok());
    }

    #[test]
    fn mask_limit_is_per_table_and_cookie_lookup() {
        let mut t = RuleTable::new();
        for i in 0..MAX_SUBTABLES {
            let m = (i as u32 + 1).to_be_bytes();
            t.insert(rule(1, [0; 4], m, i as u32)).unwrap();
        }
        assert_eq!(
            t.insert(rule(1, [0; 4], [1, 2, 3, 4], 99)).unwrap_err(),
            TableError::TooManyMasks
        );
        // Another table has its own subtables.
        let mut r = rule(1, [0; 4], [1, 2, 3, 4], 99);
        r.table = 3;
        let (_, ops) = t.insert(r).unwrap();
        assert!(matches!(list_of(&ops), Some((3, l)) if l.len() == 1));
        assert_eq!(t.ids_by_cookie(5, u64::MAX).len(), 1);
        assert_eq!(t.ids_by_cookie(0, 0).len(), MAX_SUBTABLES + 1);
        let mut r = rule(1, [0; 4], [1, 2, 3, 4], 99);
        r.table = N_TABLES as u8;
        assert_eq!(
            t.insert(r).unwrap_err(),
            TableError::NoSuchTable(N_TABLES as u8)
        );
    }

    #[test]
    fn wide_masks_make_wide_subtables_and_entries() {
        let mut t = RuleTable::new();
        let mut key = full(FlowKey::default());
        let mut mask = key;
        key.ext.metadata = [0xff, 0];
        mask.ext.metadata = [0xffff_ffff, 0];
        let mut r = Rule::matching(1, 10, &key, &mask);
        r.actions = vec![Action::output(1)];
        r.ext = Some(Box::default());
        let (id, ops) = t.insert(r).unwrap();
        let (table, list) = list_of(&ops).unwrap();
        assert_eq!(table, 1);
        assert!(list[0].0.id & SUBTABLE_WIDE != 0);
        assert_eq!(list[0].1.metadata, [0xffff_ffff, 0]);
        assert!(ops
            .iter()
            .any(|o| matches!(o, MapOp::PutFlow(EntryKey::Wide(k), e)
            if k.key.ext.metadata == [0xff, 0] && e.kind == ENTRY_PIPELINE)));
        assert!(ops.contains(&MapOp::PutRuleExt(id, Box::default())));
        let pkt = FullKey {
            ext: FlowKeyExt {
                metadata: [0xff, 7],
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(t.lookup(1, &pkt).map(|(i, _)| i), Some(id));
        assert_eq!(t.lookup(0, &pkt), None);
        // The same compact match without the wide part is another group.
        assert_eq!(
            t.find(1, &full(FlowKey::default()), &full(FlowKey::default()), 10),
            None
        );
        assert_eq!(t.find(1, &key, &mask, 10), Some(id));
        let (_, ops) = t.remove(id).unwrap();
        assert!(ops
            .iter()
            .any(|o| matches!(o, MapOp::DelFlow(EntryKey::Wide(_)))));
        assert!(ops.contains(&MapOp::DelRuleExt(id)));
    }

    /// A compact rule costs what it cost with one table: the wide part
    /// and the other instructions are kept beside it, only when present.
    #[test]
    fn a_compact_rule_stays_small() {
        assert!(
            size_of::<Rule>() <= 2 * size_of::<FlowKey>() + 64,
            "{} bytes",
            size_of::<Rule>()
        );
    }

    /// A bulk delete holds one map operation per removed flow until they
    /// are applied: a removal is its compact key, the large parts of the
    /// other operations (entries, instructions, wide keys) are boxed, so one
    /// takes a cache line at most (312 bytes each before).
    #[test]
    fn a_map_operation_stays_small() {
        assert!(size_of::<MapOp>() <= 64, "{} bytes", size_of::<MapOp>());
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

    /// A small deterministic generator (xorshift64*), for the model test.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// What every index must answer, from a plain list of the rules.
    fn check_against_model(t: &RuleTable, model: &Map<u32, Rule>, masks: &[[u8; 4]]) {
        assert_eq!(t.len(), model.len());
        assert_eq!(
            t.rules().map(|(i, r)| (i, r.clone())).collect::<Vec<_>>(),
            model
                .iter()
                .map(|(i, r)| (*i, r.clone()))
                .collect::<Vec<_>>()
        );
        // By cookie, exact and masked (cookies are 0..8 here).
        for want in 0..8u64 {
            for mask in [u64::MAX, 0x6, 0x1, 0] {
                let naive: Vec<u32> = model
                    .iter()
                    .filter(|(_, r)| r.cookie & mask == want & mask)
                    .map(|(i, _)| *i)
                    .collect();
                assert_eq!(
                    t.ids_by_cookie(want, mask),
                    naive,
                    "cookie {want:#x}/{mask:#x}"
                );
            }
        }
        // By match: when the index answers, it answers what a scan would.
        for m in masks {
            for last in 0..4u8 {
                let fm = FlowKey {
                    ipv4_dst: *m,
                    ..Default::default()
                };
                let fk = FlowKey {
                    ipv4_dst: [10, 0, 0, last],
                    ..Default::default()
                }
                .masked(&fm);
                let naive: Vec<u32> = model
                    .iter()
                    .filter(|(_, r)| fm.mask_is_subset_of(&r.mask) && r.key.masked(&fm) == fk)
                    .map(|(i, _)| *i)
                    .collect();
                if let Some(ids) = t.ids_by_match(Some(0), &full(fk), &full(fm)) {
                    assert_eq!(ids, naive, "match {fk:?}/{fm:?}");
                }
            }
        }
        // Winners: what the datapath holds for each match, and lookups.
        for (id, r) in model {
            let winner = model
                .iter()
                .filter(|(_, o)| o.key == r.key && o.mask == r.mask)
                .max_by_key(|(i, o)| (o.priority, std::cmp::Reverse(**i)))
                .map(|(i, _)| *i);
            assert_eq!(t.entry_key(*id).is_some(), winner == Some(*id));
        }
        for last in 0..4u8 {
            let pkt = FlowKey {
                ipv4_dst: [10, 0, 0, last],
                ..Default::default()
            };
            let naive = model
                .iter()
                .filter(|(_, r)| pkt.masked(&r.mask) == r.key)
                .max_by_key(|(i, r)| (r.priority, std::cmp::Reverse(**i)))
                .map(|(i, _)| *i);
            assert_eq!(t.lookup(0, &full(pkt)).map(|(i, _)| i), naive);
        }
    }

    /// The match and cookie indexes against a plain model, through random
    /// inserts, removals and cookie changes (rules sharing matches, at
    /// equal and different priorities, ids reused).
    #[test]
    fn indexes_agree_with_a_scan_through_random_changes() {
        let masks = [[255u8; 4], [255, 255, 255, 252], [255, 255, 0, 0]];
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut t = RuleTable::new().with_limit(64);
            let mut model: Map<u32, Rule> = Map::new();
            for step in 0..400 {
                match rng.below(10) {
                    0..=4 => {
                        let mask = masks[rng.below(masks.len() as u64) as usize];
                        let mut r =
                            rule(rng.below(3) as u16, [10, 0, 0, rng.below(4) as u8], mask, 0);
                        r.cookie = rng.below(8);
                        match t.insert(r.clone()) {
                            Ok((id, _)) => {
                                r.key = r.key.masked(&r.mask);
                                assert!(model.insert(id, r).is_none(), "id {id} given twice");
                            }
                            Err(e) => assert_eq!(e, TableError::Full(64)),
                        }
                    }
                    5..=7 => {
                        let ids: Vec<u32> = model.keys().copied().collect();
                        if let Some(&id) = ids.get(rng.below(ids.len().max(1) as u64) as usize) {
                            let (r, _) = t.remove(id).unwrap();
                            assert_eq!(Some(r), model.remove(&id));
                        }
                    }
                    _ => {
                        let ids: Vec<u32> = model.keys().copied().collect();
                        if let Some(&id) = ids.get(rng.below(ids.len().max(1) as u64) as usize) {
                            let c = rng.below(8);
                            t.modify(id, |r| r.cookie = c).unwrap();
                            if let Some(r) = model.get_mut(&id) {
                                r.cookie = c;
                            }
                        }
                    }
                }
                if step % 20 == 0 {
                    check_against_model(&t, &model, &masks);
                }
            }
            check_against_model(&t, &model, &masks);
        }
    }

    /// Rules of whole subtables removed at once leave the table, and the
    /// maps, as removing them one by one does.
    #[test]
    fn removing_whole_subtables_at_once_leaves_what_one_by_one_does() {
        use std::collections::BTreeSet;
        let masks = [
            [255u8; 4],
            [255, 255, 255, 0],
            [255, 255, 0, 0],
            [255, 0, 0, 0],
        ];
        let mut bulk = 0;
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let rules: Vec<Rule> = (0..200)
                .map(|_| {
                    let m = masks[rng.below(4) as usize];
                    let d = [
                        10,
                        rng.below(3) as u8,
                        rng.below(3) as u8,
                        rng.below(3) as u8,
                    ];
                    rule(rng.below(3) as u16, d, m, rng.below(5) as u32)
                })
                .collect();
            let (mut a, mut b) = (RuleTable::new(), RuleTable::new());
            for r in &rules {
                a.insert(r.clone()).unwrap();
                b.insert(r.clone()).unwrap();
            }
            let pick: Vec<bool> = masks.iter().map(|_| rng.below(2) == 0).collect();
            let ids: Vec<u32> = a
                .rules()
                .filter(|(_, r)| {
                    masks
                        .iter()
                        .zip(&pick)
                        .any(|(m, p)| *p && r.mask.ipv4_dst == *m)
                })
                .map(|(i, _)| i)
                .collect();
            let Some(plan) = a.whole_subtables(&ids) else {
                assert!(ids.is_empty() || ids.len() * 2 < a.len(), "seed {seed}");
                continue;
            };
            // One rule short of whole subtables: not this way.
            assert!(a.whole_subtables(&ids[1..]).is_none());
            bulk += 1;
            let (mut ops_a, mut seen) = (Vec::new(), Vec::new());
            a.remove_whole(&ids, plan, &mut ops_a, |id, _| seen.push(id));
            assert_eq!(seen, ids);
            let mut ops_b = Vec::new();
            for id in &ids {
                b.remove_into(*id, &mut ops_b).unwrap();
            }
            b.defer_unlinked(&mut ops_b);
            let listed = |t: &RuleTable| t.rules().map(|(i, r)| (i, r.clone())).collect::<Vec<_>>();
            assert_eq!(listed(&a), listed(&b), "seed {seed}");
            assert_eq!(a.subtable_list(0), b.subtable_list(0));
            for c in 0..5 {
                assert_eq!(a.ids_by_cookie(c, u64::MAX), b.ids_by_cookie(c, u64::MAX));
            }
            for (id, _) in b.rules() {
                assert_eq!(a.entry_key(id), b.entry_key(id));
            }
            for x in 0..3u8 {
                let pkt = full(FlowKey {
                    ipv4_dst: [10, x, 1, 2],
                    ..Default::default()
                });
                assert_eq!(
                    a.lookup(0, &pkt).map(|(i, _)| i),
                    b.lookup(0, &pkt).map(|(i, _)| i)
                );
            }
            // The maps: the same entries drained, the same last list.
            let drained = |ops: &[MapOp]| -> BTreeSet<String> {
                ops.iter()
                    .filter_map(|o| match o {
                        MapOp::DrainFlows(d) => Some(d.keys().map(|k| format!("{k:?}"))),
                        MapOp::DelFlow(_) => panic!("a removal not drained"),
                        _ => None,
                    })
                    .flatten()
                    .collect()
            };
            assert_eq!(drained(&ops_a), drained(&ops_b), "seed {seed}");
            let last = |ops: &[MapOp]| {
                ops.iter().rev().find_map(|o| match o {
                    MapOp::SetSubtables(t, l) => Some((*t, l.clone())),
                    _ => None,
                })
            };
            assert_eq!(last(&ops_a), last(&ops_b));
            // The lists first, then the drains.
            assert!(matches!(ops_a.first(), Some(MapOp::SetSubtables(..))));
            // Both go on alike.
            let r = rule(7, [10, 1, 1, 0], [255, 255, 255, 0], 9);
            a.insert(r.clone()).unwrap();
            b.insert(r).unwrap();
            let pkt = full(FlowKey {
                ipv4_dst: [10, 1, 1, 0],
                ..Default::default()
            });
            assert_eq!(a.lookup(0, &pkt).map(|(_, r)| r.cookie), Some(9));
            assert_eq!(b.lookup(0, &pkt).map(|(_, r)| r.cookie), Some(9));
            assert_eq!(a.len(), b.len());
        }
        assert!(bulk >= 10, "{bulk} bulk removals");
    }

    /// Rules of some cookies that fill whole subtables, removed at once
    /// without visiting them, leave the table and the maps as removing
    /// them one by one does; rules with instructions, flags and wide
    /// matches among them. A selection that leaves part of a subtable is
    /// not taken this way.
    #[test]
    fn removing_cookies_at_once_leaves_what_one_by_one_does() {
        use std::collections::BTreeSet;
        let masks = [
            [255u8; 4],
            [255, 255, 255, 0],
            [255, 255, 0, 0],
            [255, 0, 0, 0],
        ];
        let (mut bulk, mut refused) = (0, 0);
        for seed in 1..=60u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            // Odd seeds: a few rules have another cookie than their mask's.
            let noise = seed % 2 == 1;
            let rules: Vec<Rule> = (0..200)
                .map(|_| {
                    // Mask 0 (cookie 0) for about half of the rules.
                    let m = rng.below(8).saturating_sub(4) as usize;
                    let d = [
                        10,
                        rng.below(3) as u8,
                        rng.below(3) as u8,
                        rng.below(3) as u8,
                    ];
                    let mut r = rule(rng.below(3) as u16, d, masks[m], 1);
                    r.cookie = if noise && rng.below(50) == 0 {
                        rng.below(4)
                    } else {
                        m as u64
                    };
                    if rng.below(7) == 0 {
                        r.ext = Some(Box::new(bytemuck::Zeroable::zeroed()));
                    }
                    if rng.below(5) == 0 {
                        r.flags = 1;
                    }
                    if m == 3 && rng.below(2) == 0 {
                        r.wide = Some(Box::new(Wide {
                            key: FlowKeyExt {
                                metadata: [rng.below(2) as u32, 0],
                                ..Default::default()
                            },
                            mask: FlowKeyExt {
                                metadata: [1, 0],
                                ..Default::default()
                            },
                        }));
                    }
                    r
                })
                .collect();
            let (mut a, mut b) = (RuleTable::new(), RuleTable::new());
            for r in &rules {
                a.insert(r.clone()).unwrap();
                b.insert(r.clone()).unwrap();
            }
            // A few rules gone and ids freed, so that ids are reused.
            for id in [3, 50, 51] {
                a.remove(id).unwrap();
                b.remove(id).unwrap();
            }
            // A cookie, or two (mask 0b01: 0 and 2, or 1 and 3).
            let (want, mask) = match rng.below(3) {
                0 => (rng.below(4), 0b01),
                _ => (rng.below(2), u64::MAX),
            };
            let ids = b.ids_by_cookie(want, mask);
            let Some(plan) = a.cookies_whole(want, mask) else {
                // Not whole subtables, or more rules stay than go.
                let whole = !ids.is_empty() && b.whole_subtables(&ids).is_some();
                assert!(!whole || ids.len() * 2 < a.len(), "seed {seed}");
                refused += 1;
                continue;
            };
            bulk += 1;
            assert_eq!(plan.len(), ids.len(), "seed {seed}");
            let kept: Vec<u32> = b
                .rules()
                .map(|(i, _)| i)
                .filter(|i| !ids.contains(i))
                .collect();
            assert_eq!(plan.kept(), kept);
            let mut ops_a = Vec::new();
            assert_eq!(a.remove_cookies(plan, &mut ops_a), ids.len());
            let mut ops_b = Vec::new();
            for id in &ids {
                b.remove_into(*id, &mut ops_b).unwrap();
            }
            b.defer_unlinked(&mut ops_b);
            let listed = |t: &RuleTable| t.rules().map(|(i, r)| (i, r.clone())).collect::<Vec<_>>();
            assert_eq!(listed(&a), listed(&b), "seed {seed}");
            assert_eq!(a.len(), b.len());
            assert_eq!(a.subtable_list(0), b.subtable_list(0));
            assert_eq!(a.any_flags(), b.any_flags());
            assert_eq!((a.with_ext, a.with_flags), (b.with_ext, b.with_flags));
            for c in 0..4 {
                assert!(a
                    .ids_by_cookie(c, u64::MAX)
                    .iter()
                    .all(|i| !ids.contains(i)));
                assert_eq!(a.ids_by_cookie(c, u64::MAX), b.ids_by_cookie(c, u64::MAX));
            }
            for (id, _) in b.rules() {
                assert_eq!(a.entry_key(id), b.entry_key(id));
            }
            for x in 0..3u8 {
                for y in 0..3u8 {
                    let pkt = full(FlowKey {
                        ipv4_dst: [10, x, y, 2],
                        ..Default::default()
                    });
                    assert_eq!(
                        a.lookup(0, &pkt).map(|(i, _)| i),
                        b.lookup(0, &pkt).map(|(i, _)| i)
                    );
                }
            }
            // The maps: the same entries drained (each once), the same
            // instructions deleted, the same last lists, the lists first.
            let drained = |ops: &[MapOp]| -> (Vec<String>, BTreeSet<u32>) {
                let mut keys: Vec<String> = ops
                    .iter()
                    .filter_map(|o| match o {
                        MapOp::DrainFlows(d) => Some(d.keys().map(|k| format!("{k:?}"))),
                        MapOp::DelFlow(_) => panic!("a removal not drained"),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                keys.sort();
                let subs = ops
                    .iter()
                    .filter_map(|o| match o {
                        MapOp::DrainFlows(d) => Some(d.subtables.iter().copied()),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                (keys, subs)
            };
            let (ka, sa) = drained(&ops_a);
            let (kb, sb) = drained(&ops_b);
            assert_eq!(ka, kb, "seed {seed}");
            assert_eq!(sa, sb, "seed {seed}");
            assert_eq!(ka.iter().collect::<BTreeSet<_>>().len(), ka.len());
            let ext = |ops: &[MapOp]| {
                ops.iter()
                    .filter_map(|o| match o {
                        MapOp::DelRuleExt(id) => Some(*id),
                        _ => None,
                    })
                    .collect::<BTreeSet<u32>>()
            };
            assert_eq!(ext(&ops_a), ext(&ops_b), "seed {seed}");
            for t in 0..2u8 {
                let last = |ops: &[MapOp]| {
                    ops.iter().rev().find_map(|o| match o {
                        MapOp::SetSubtables(x, l) if *x == t => Some(l.clone()),
                        _ => None,
                    })
                };
                assert_eq!(last(&ops_a), last(&ops_b));
            }
            assert!(matches!(ops_a.first(), Some(MapOp::SetSubtables(..))));
            // Both go on alike: new rules get free ids below the limit,
            // each once, and are found.
            let mut given = BTreeSet::new();
            for i in 0..250u32 {
                let d = i.to_be_bytes();
                let r = rule(7, [11, d[1], d[2], d[3]], [255; 4], 9);
                let (ia, _) = a.insert(r.clone()).unwrap();
                let (ib, _) = b.insert(r).unwrap();
                assert!(given.insert(ia), "id {ia} given twice");
                assert!(b.get(ib).is_some());
            }
            assert_eq!(a.len(), b.len());
            let pkt = full(FlowKey {
                ipv4_dst: [11, 0, 0, 5],
                ..Default::default()
            });
            assert_eq!(a.lookup(0, &pkt).map(|(_, r)| r.cookie), Some(9));
            assert_eq!(listed(&a).len(), a.len());
        }
        assert!(
            bulk >= 10 && refused >= 5,
            "{bulk} bulk removals, {refused} refused"
        );
    }

    #[test]
    fn the_match_index_answers_only_when_one_subtable_covers_the_filter() {
        let mut t = RuleTable::new();
        let (a, _) = t.insert(rule(1, [10, 0, 0, 1], [255; 4], 1)).unwrap();
        t.insert(rule(1, [10, 0, 0, 2], [255; 4], 2)).unwrap();
        let exact = FlowKey {
            ipv4_dst: [255; 4],
            ..Default::default()
        };
        let key = |d| FlowKey {
            ipv4_dst: d,
            ..Default::default()
        };
        // One group, found without a scan.
        assert_eq!(
            t.ids_by_match(Some(0), &full(key([10, 0, 0, 1])), &full(exact)),
            Some(vec![a])
        );
        assert_eq!(
            t.ids_by_match(Some(0), &full(key([10, 0, 0, 7])), &full(exact)),
            Some(vec![])
        );
        // A wider filter covers rules of several keys: a scan.
        let wide = FlowKey {
            ipv4_dst: [255, 255, 255, 0],
            ..Default::default()
        };
        assert_eq!(
            t.ids_by_match(Some(0), &full(key([10, 0, 0, 0])), &full(wide)),
            None
        );
        // A rule with a wider mask than the filter's: no rule is covered
        // by a narrower one, and the index says so.
        let mut t = RuleTable::new();
        t.insert(rule(1, [10, 0, 0, 0], [255, 255, 255, 0], 1))
            .unwrap();
        assert_eq!(
            t.ids_by_match(Some(0), &full(key([10, 0, 0, 1])), &full(exact)),
            Some(vec![])
        );
    }

    #[test]
    fn memory_follows_the_rules() {
        let mut t = RuleTable::new().with_limit(10_000);
        let ids: Vec<u32> = (0..5000u32)
            .map(|i| {
                let d = i.to_be_bytes();
                t.insert(rule(1, [10, d[1], d[2], d[3]], [255; 4], i % 7))
                    .unwrap()
                    .0
            })
            .collect();
        assert_eq!(t.cookies.len(), 7);
        // Removing the highest ids gives their slots back.
        for id in ids[1000..].iter().rev() {
            t.remove(*id).unwrap();
        }
        assert_eq!(t.slots.len(), 1000);
        assert!(t.slots.capacity() < 5000);
        // A freed id below is used again, the next after the end is 1000.
        t.remove(ids[10]).unwrap();
        assert_eq!(t.insert(rule(1, [11, 0, 0, 1], [255; 4], 1)).unwrap().0, 10);
        assert_eq!(
            t.insert(rule(1, [11, 0, 0, 2], [255; 4], 1)).unwrap().0,
            1000
        );
        // The last rule out: nothing kept.
        let all: Vec<u32> = t.rules().map(|(id, _)| id).collect();
        for id in all {
            t.remove(id).unwrap();
        }
        assert!(t.is_empty());
        assert_eq!(t.slots.capacity(), 0);
        assert_eq!(t.groups.capacity(), 0);
        assert!(t.cookies.is_empty());
        assert_eq!(t.insert(rule(1, [12, 0, 0, 1], [255; 4], 1)).unwrap().0, 0);
    }
}
