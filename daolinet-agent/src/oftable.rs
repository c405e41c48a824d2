//! OpenFlow 1.3 flow-table semantics over the [`RuleTable`], sans-IO.
//!
//! [`FlowTable::flow_mod`] implements FLOW_MOD add (with the overlap
//! check), modify, modify_strict, delete and delete_strict with cookie
//! masks, out_port, priorities, timeouts and the SEND_FLOW_REM and
//! RESET_COUNTS flags. It validates everything before it changes anything,
//! so an error (returned as the OFPT_ERROR code the spec names) leaves the
//! table as it was. It returns the [`MapOp`]s for the datapath and the
//! FLOW_REMOVED messages to send.
//!
//! Time is a monotonic clock in nanoseconds (the datapath stamps rule hits
//! with `bpf_ktime_get_ns`, which is CLOCK_MONOTONIC); counters come from a
//! [`Counters`] implementation (the BPF maps, or a fake in tests).

use std::collections::BTreeSet;

use foldhash::{HashMap, HashMapExt};

use daolinet_common::{Action, ActionKind, FullKey, PortStats, RuleStats, MAX_ACTIONS, N_TABLES};
use daolinet_openflow::{self as of, ErrorCode, FlowMod, FlowRemoved, FlowStats};

use crate::compile::{compile_instructions, compile_match, instructions_from, match_of, Compiled};
use crate::table::{Added, EntryKey, MapOp, Rule, RuleTable, TableError};

/// Where counters come from.
pub trait Counters {
    /// The counters of the classifier entry at `at`, if it is rule `id`'s
    /// (zero otherwise, or when unreadable).
    fn rule(&mut self, id: u32, at: &EntryKey) -> RuleStats;
    /// A port's counters by OpenFlow port number, if the port exists.
    fn port(&mut self, ofport: u32) -> Option<PortStats>;
    /// Lookups and matches of a table after the first (zero when
    /// unreadable).
    fn table(&mut self, _table: u8) -> daolinet_common::TableStats {
        Default::default()
    }
    /// A group's counters by stats slot (zero when unreadable).
    fn group(&mut self, _slot: u32) -> daolinet_common::GroupStats {
        Default::default()
    }
    /// A meter's counters by stats slot (zero when unreadable).
    fn meter(&mut self, _slot: u32) -> daolinet_common::MeterStats {
        Default::default()
    }
}

/// Flags this switch accepts in a FLOW_MOD.
const KNOWN_FLAGS: u16 = of::OFPFF_SEND_FLOW_REM
    | of::OFPFF_CHECK_OVERLAP
    | of::OFPFF_RESET_COUNTS
    | of::OFPFF_NO_PKT_COUNTS
    | of::OFPFF_NO_BYT_COUNTS;

const NS: u64 = 1_000_000_000;

/// What a table change produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Map operations, in order.
    pub ops: Vec<MapOp>,
    /// FLOW_REMOVED messages for removed rules that asked for one.
    pub removed: Vec<FlowRemoved>,
    /// Number of rules added, changed or removed.
    pub touched: usize,
}

#[derive(Debug, Clone, Copy)]
struct Times {
    installed_ns: u64,
    /// Start of the idle period when the rule has not been hit since.
    idle_base_ns: u64,
    /// When the rule must next be looked at (u64::MAX = never).
    deadline_ns: u64,
}

/// A flow as the controller wrote it, where that differs from what the
/// rule itself gives back: what flow stats and FLOW_REMOVED report
/// (OpenFlow wants back what the FLOW_MOD said, e.g. an output's max_len,
/// which the datapath does not need). Most flows need none: their match
/// fields come in the canonical order and their actions decompile to what
/// was written, so a million flows do not keep a million copies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Written {
    /// The match in the controller's field order (None: canonical order).
    match_: Option<of::Match>,
    /// The instructions (None: as the compiled actions decompile).
    instructions: Option<Vec<of::Instruction>>,
}

impl Written {
    fn is_empty(&self) -> bool {
        self.match_.is_none() && self.instructions.is_none()
    }
}

/// The instructions a rule's compiled instructions give back.
fn decompiled(r: &Rule) -> Vec<of::Instruction> {
    let proto = (r.mask.ip_proto != 0).then_some(r.key.ip_proto);
    instructions_from(&r.actions, r.ext.as_deref(), proto)
}

/// The instructions to keep for a rule: None when they decompile from it.
fn kept_instructions(r: &Rule, ins: &[of::Instruction]) -> Option<Vec<of::Instruction>> {
    (decompiled(r) != ins).then(|| ins.to_vec())
}

/// The OpenFlow table (table 0) of the switch.
#[derive(Debug, Default)]
pub struct FlowTable {
    table: RuleTable,
    /// Install times and deadlines by rule id.
    times: Vec<Option<Times>>,
    deadlines: BTreeSet<(u64, u32)>,
    /// The controller's own match and instructions by rule id, for the
    /// rules whose own differ (see [`Written`]; rules restored from the
    /// pinned maps after a restart have none: their stats are decompiled).
    written: HashMap<u32, Written>,
    /// What rules counted while they were in the classifier, before
    /// another rule with the same match and a higher priority took their
    /// entry (the counters live in the entry).
    base: HashMap<u32, RuleStats>,
    /// How to take back the adds and modifies since [`FlowTable::begin`]
    /// (or, outside a transaction, those of the FLOW_MOD in progress).
    journal: Vec<Step>,
    /// A transaction is open: the journal is kept between FLOW_MODs.
    in_txn: bool,
}

/// A rule as it was before a FLOW_MOD changed it: what taking the change
/// back restores.
#[derive(Debug)]
struct Before {
    id: u32,
    rule: Rule,
    written: Option<Written>,
    times: Option<Times>,
    base: Option<RuleStats>,
    /// RESET_COUNTS: what the rule's classifier entry had counted when the
    /// change wrote it afresh.
    reset: Option<RuleStats>,
}

/// One change of a FLOW_MOD, in the journal.
#[derive(Debug)]
enum Step {
    /// A new rule: its id, and the rule whose classifier entry it took with
    /// what that rule's kept counters were before (see `harvest`).
    Added(u32, Option<(u32, Option<RuleStats>)>),
    /// A rule changed (modify, or an add replacing an identical flow).
    Changed(Box<Before>),
}

/// True for the FLOW_MODs [`FlowTable`] can take back after their map
/// operations failed (add, modify, modify_strict: see
/// [`FlowTable::begin`]). Deletes only remove classifier entries or hand
/// one to the next rule of the same match, and are not journaled.
pub fn journaled(fm: &FlowMod) -> bool {
    matches!(
        fm.command,
        of::OFPFC_ADD | of::OFPFC_MODIFY | of::OFPFC_MODIFY_STRICT
    )
}

/// The controller's match in its own field order, each field as the rule
/// holds it (value under the mask, no all-ones mask, fields whose mask is
/// empty dropped), as Open vSwitch reports it; None when that is the
/// canonical order ([`match_of`]).
fn normalized(original: &of::Match, key: &FullKey, mask: &FullKey) -> Option<of::Match> {
    let mut canonical = match_of(key, mask).fields;
    let field = |f: &of::OxmField| {
        let id = f.id();
        (id.0, id.1)
    };
    if canonical
        .iter()
        .map(field)
        .eq(original.fields.iter().map(field))
    {
        return None;
    }
    let in_order = canonical.clone();
    let mut out = of::Match::new();
    for f in &original.fields {
        let id = f.id();
        if let Some(i) = canonical
            .iter()
            .position(|c| (c.id().0, c.id().1) == (id.0, id.1))
        {
            out = out.with(canonical.remove(i));
        }
    }
    for c in canonical {
        out = out.with(c);
    }
    (out.fields != in_order).then_some(out)
}

fn err(t: u16, c: u16) -> ErrorCode {
    ErrorCode::new(t, c)
}

/// True when every packet that matches (rk, rm) also matches (fk, fm):
/// the filter's mask is within the rule's and the rule agrees with the
/// filter's values under it.
fn covered_words(rk: &[u32], rm: &[u32], fk: &[u32], fm: &[u32]) -> bool {
    (0..fm.len()).all(|i| fm[i] & !rm[i] == 0 && (rk[i] ^ fk[i]) & fm[i] == 0)
}

/// [`covered_words`] for a rule (its wide part, if any, beside it) and a
/// filter.
fn covered(r: &Rule, fk: &FullKey, fm: &FullKey) -> bool {
    if !covered_words(
        r.key.words(),
        r.mask.words(),
        fk.key.words(),
        fm.key.words(),
    ) {
        return false;
    }
    match &r.wide {
        Some(w) => covered_words(
            w.key.words(),
            w.mask.words(),
            fk.ext.words(),
            fm.ext.words(),
        ),
        // The rule has no wide field: a filter on one covers none of it.
        None => fm.ext.is_empty_mask(),
    }
}

/// True when some packet matches both a rule and (bk, bm).
fn overlaps(r: &Rule, bk: &FullKey, bm: &FullKey) -> bool {
    let apart = |ak: &[u32], am: &[u32], bk: &[u32], bm: &[u32]| {
        (0..am.len()).all(|i| (ak[i] ^ bk[i]) & am[i] & bm[i] == 0)
    };
    apart(
        r.key.words(),
        r.mask.words(),
        bk.key.words(),
        bm.key.words(),
    ) && r.wide.as_ref().is_none_or(|w| {
        apart(
            w.key.words(),
            w.mask.words(),
            bk.ext.words(),
            bm.ext.words(),
        )
    })
}

/// The actions of a rule's apply-actions and write-actions.
fn all_actions(r: &Rule) -> impl Iterator<Item = &Action> {
    let write = r
        .ext
        .iter()
        .flat_map(|e| e.write[..(e.n_write as usize).min(MAX_ACTIONS)].iter());
    r.actions.iter().chain(write)
}

/// True when the rule has an output to `port` (OFPP_ANY: always).
fn outputs_to(r: &Rule, port: u32) -> bool {
    if port == of::OFPP_ANY {
        return true;
    }
    all_actions(r).any(|a| match a.kind() {
        Some(ActionKind::Output) => a.arg == port,
        Some(ActionKind::OutputInPort) => port == of::OFPP_IN_PORT,
        Some(ActionKind::OutputLocal) => port == of::OFPP_LOCAL,
        Some(ActionKind::Controller) => port == of::OFPP_CONTROLLER,
        _ => false,
    })
}

/// True when the rule sends to group `group` (OFPG_ANY: always).
pub fn sends_to_group(r: &Rule, group: u32) -> bool {
    group == of::OFPG_ANY
        || all_actions(r).any(|a| a.kind() == Some(ActionKind::Group) && a.arg == group)
}

fn table_error(e: TableError) -> ErrorCode {
    match e {
        TableError::Full(_) | TableError::TooManyMasks => {
            err(of::OFPET_FLOW_MOD_FAILED, of::OFPFMFC_TABLE_FULL)
        }
        TableError::TooManyActions(_) => err(of::OFPET_BAD_ACTION, of::OFPBAC_TOO_MANY),
        TableError::NoSuchRule(_) => err(of::OFPET_FLOW_MOD_FAILED, of::OFPFMFC_UNKNOWN),
        TableError::NoSuchTable(_) => err(of::OFPET_FLOW_MOD_FAILED, of::OFPFMFC_BAD_TABLE_ID),
    }
}

/// What a flow may refer to: the groups and meters that exist.
#[derive(Clone, Copy)]
pub struct Refs<'a> {
    /// True when the group exists.
    pub group: &'a dyn Fn(u32) -> bool,
    /// True when the meter exists.
    pub meter: &'a dyn Fn(u32) -> bool,
}

impl Refs<'_> {
    /// No group and no meter exists.
    pub fn none() -> Refs<'static> {
        Refs {
            group: &|_| false,
            meter: &|_| false,
        }
    }

    /// Check a compiled rule's references.
    fn check(&self, c: &Compiled) -> Result<(), ErrorCode> {
        if let Some(g) = c.groups().find(|g| !(self.group)(*g)) {
            tracing::debug!(group = g, "flow refers to a group that does not exist");
            return Err(err(of::OFPET_BAD_ACTION, of::OFPBAC_BAD_OUT_GROUP));
        }
        if let Some(m) = c.meter().filter(|m| !(self.meter)(*m)) {
            tracing::debug!(meter = m, "flow refers to a meter that does not exist");
            return Err(err(of::OFPET_METER_MOD_FAILED, of::OFPMMFC_UNKNOWN_METER));
        }
        Ok(())
    }
}

/// A flow-stats style filter, compiled.
struct Filter {
    /// One table, or all (None).
    table: Option<u8>,
    key: FullKey,
    mask: FullKey,
    cookie: u64,
    cookie_mask: u64,
    out_port: u32,
    out_group: u32,
}

impl Filter {
    /// A non-strict selection: the rule is covered by the filter's match
    /// and passes its other conditions.
    fn picks(&self, r: &Rule) -> bool {
        covered(r, &self.key, &self.mask) && self.selects(r)
    }

    /// True when the filter selects by cookie alone: every table, any
    /// match, any output port and group.
    fn by_cookie_only(&self) -> bool {
        self.table.is_none()
            && self.mask.key.is_empty_mask()
            && self.mask.ext.is_empty_mask()
            && self.out_port == of::OFPP_ANY
            && self.out_group == of::OFPG_ANY
    }

    fn selects(&self, r: &Rule) -> bool {
        self.table.is_none_or(|t| t == r.table)
            && r.cookie & self.cookie_mask == self.cookie & self.cookie_mask
            && sends_to_group(r, self.out_group)
            && outputs_to(r, self.out_port)
    }
}

/// The table a FLOW_MOD or stats request names: one (below [`N_TABLES`]),
/// all (OFPTT_ALL, None), or an error.
fn table_of(table_id: u8) -> Result<Option<u8>, ErrorCode> {
    if table_id == of::OFPTT_ALL {
        Ok(None)
    } else if u32::from(table_id) < N_TABLES {
        Ok(Some(table_id))
    } else {
        Err(err(of::OFPET_FLOW_MOD_FAILED, of::OFPFMFC_BAD_TABLE_ID))
    }
}

impl FlowTable {
    /// A table over `table` (e.g. restored from the pinned maps); the
    /// restored rules' timeouts start now.
    pub fn new(table: RuleTable, now_ns: u64) -> Self {
        let mut t = FlowTable {
            table,
            times: Vec::new(),
            deadlines: BTreeSet::new(),
            written: HashMap::new(),
            base: HashMap::new(),
            journal: Vec::new(),
            in_txn: false,
        };
        let ids: Vec<u32> = t.table.rules().map(|(id, _)| id).collect();
        for id in ids {
            t.track(id, now_ns);
        }
        t
    }

    /// The underlying rule table.
    pub fn rules(&self) -> &RuleTable {
        &self.table
    }

    /// Number of flows.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when there is no flow.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn times(&self, id: u32) -> Option<Times> {
        self.times.get(id as usize).copied().flatten()
    }

    fn times_mut(&mut self, id: u32) -> Option<&mut Times> {
        self.times.get_mut(id as usize)?.as_mut()
    }

    fn track(&mut self, id: u32, now_ns: u64) {
        let Some(r) = self.table.get(id) else { return };
        let deadline = first_deadline(r, now_ns, now_ns);
        let i = id as usize;
        if self.times.len() <= i {
            self.times.resize(i + 1, None);
        }
        let new = Times {
            installed_ns: now_ns,
            idle_base_ns: now_ns,
            deadline_ns: deadline,
        };
        if let Some(old) = self.times[i].replace(new) {
            if old.deadline_ns != u64::MAX {
                self.deadlines.remove(&(old.deadline_ns, id));
            }
        }
        if deadline != u64::MAX {
            self.deadlines.insert((deadline, id));
        }
    }

    fn untrack(&mut self, id: u32) {
        if let Some(t) = self.times.get_mut(id as usize).and_then(Option::take) {
            if t.deadline_ns != u64::MAX {
                self.deadlines.remove(&(t.deadline_ns, id));
            }
        }
        // Memory follows the rules: the tail of free ids goes, and all of
        // it with the last rule.
        if self.table.is_empty() {
            self.times = Vec::new();
        } else if id as usize + 1 == self.times.len() {
            while self.times.last().is_some_and(Option::is_none) {
                self.times.pop();
            }
            if self.times.capacity() > 4 * self.times.len() + 1024 {
                self.times.shrink_to_fit();
            }
        }
        if !self.base.is_empty() {
            self.base.remove(&id);
        }
    }

    /// Keep what the controller wrote for rule `id`, if it differs from
    /// what the rule gives back.
    fn set_written(&mut self, id: u32, w: Written) {
        if w.is_empty() {
            if !self.written.is_empty() {
                self.written.remove(&id);
            }
        } else {
            self.written.insert(id, w);
        }
    }

    /// Rule `id`'s counters: what its classifier entry counted (if it is
    /// in the classifier) on top of what it counted before it was
    /// shadowed.
    pub fn stats(&self, id: u32, counters: &mut dyn Counters) -> RuleStats {
        let mut s = self.base.get(&id).copied().unwrap_or_default();
        if let Some(k) = self.table.entry_key(id) {
            s.merge(&counters.rule(id, &k));
        }
        s
    }

    /// A packet the switch ran through the table itself (PACKET_OUT to
    /// OFPP_TABLE, looked up in userspace, see `OfSwitch`) matched rule
    /// `id`: counted on it as if the datapath had matched it, as Open
    /// vSwitch counts it (a live trace reads this counter).
    pub fn count_table_packet(&mut self, id: u32, bytes: usize) {
        if self.table.get(id).is_none() {
            return;
        }
        let s = self.base.entry(id).or_default();
        s.packets = s.packets.wrapping_add(1);
        s.bytes = s.bytes.wrapping_add(bytes as u64);
    }

    /// A new rule is about to take rule `displaced`'s classifier entry
    /// (its key given): keep what that rule counted.
    fn harvest(&mut self, displaced: Option<(u32, EntryKey)>, counters: &mut dyn Counters) {
        let Some((id, k)) = displaced else { return };
        let s = counters.rule(id, &k);
        self.base.entry(id).or_default().merge(&s);
    }

    /// RESET_COUNTS on rule `id`: its entry (if it has one) is rewritten
    /// with fresh counters, and what it counted before is forgotten.
    fn reset_counts(&mut self, id: u32, ops: &mut [MapOp]) {
        self.base.remove(&id);
        for op in ops.iter_mut() {
            if let MapOp::UpdateFlow(k, e) = op {
                if e.rule_id == id {
                    *op = MapOp::PutFlow(k.clone(), e.clone());
                }
            }
        }
    }

    /// Apply a FLOW_MOD that refers to no group or meter (none exist).
    /// On error nothing changed.
    pub fn flow_mod(
        &mut self,
        fm: &FlowMod,
        now_ns: u64,
        counters: &mut dyn Counters,
    ) -> Result<Outcome, ErrorCode> {
        self.flow_mod_with(fm, now_ns, counters, Refs::none())
    }

    /// Apply a FLOW_MOD whose groups and meters must be among `refs`. On
    /// error nothing changed.
    pub fn flow_mod_with(
        &mut self,
        fm: &FlowMod,
        now_ns: u64,
        counters: &mut dyn Counters,
        refs: Refs<'_>,
    ) -> Result<Outcome, ErrorCode> {
        let mark = self.journal.len();
        let r = self.flow_mod_steps(fm, now_ns, counters, refs);
        if r.is_err() {
            // A modify refused after changing some of its rules: they go
            // back (nothing of it reached the maps).
            self.undo_to(mark, false);
        } else if !self.in_txn {
            self.journal.truncate(mark);
        }
        r
    }

    fn flow_mod_steps(
        &mut self,
        fm: &FlowMod,
        now_ns: u64,
        counters: &mut dyn Counters,
        refs: Refs<'_>,
    ) -> Result<Outcome, ErrorCode> {
        if fm.flags & !KNOWN_FLAGS != 0 {
            return Err(err(of::OFPET_FLOW_MOD_FAILED, of::OFPFMFC_BAD_FLAGS));
        }
        let table = table_of(fm.table_id)?;
        match fm.command {
            // OFPTT_ALL is accepted for an add as table 0, as Open vSwitch
            // does (its own learning switch sends it).
            of::OFPFC_ADD => self.add(fm, table.unwrap_or(0), now_ns, counters, refs),
            of::OFPFC_MODIFY | of::OFPFC_MODIFY_STRICT => {
                self.modify(fm, table, now_ns, counters, refs)
            }
            of::OFPFC_DELETE | of::OFPFC_DELETE_STRICT => {
                let (key, mask) = compile_match(&fm.match_).map_err(|e| e.code())?;
                let f = Filter {
                    table,
                    key,
                    mask,
                    cookie: fm.cookie,
                    cookie_mask: fm.cookie_mask,
                    out_port: fm.out_port,
                    out_group: fm.out_group,
                };
                let strict = fm.command == of::OFPFC_DELETE_STRICT;
                if !strict {
                    if let Some(out) = self.remove_by_cookie(&f, of::OFPRR_DELETE, now_ns, counters)
                    {
                        return Ok(out);
                    }
                }
                let ids = self.select(&f, strict.then_some(fm.priority));
                Ok(self.remove_ids(&ids, of::OFPRR_DELETE, now_ns, counters))
            }
            _ => Err(err(of::OFPET_FLOW_MOD_FAILED, of::OFPFMFC_BAD_COMMAND)),
        }
    }

    fn add(
        &mut self,
        fm: &FlowMod,
        table: u8,
        now_ns: u64,
        counters: &mut dyn Counters,
        refs: Refs<'_>,
    ) -> Result<Outcome, ErrorCode> {
        let (key, mask) = compile_match(&fm.match_).map_err(|e| e.code())?;
        let c = compile_instructions(&fm.instructions, table).map_err(|e| e.code())?;
        refs.check(&c)?;
        if fm.flags & of::OFPFF_CHECK_OVERLAP != 0 {
            let clash = self.table.rules().any(|(_, r)| {
                r.table == table && r.priority == fm.priority && overlaps(r, &key, &mask)
            });
            if clash {
                return Err(err(of::OFPET_FLOW_MOD_FAILED, of::OFPFMFC_OVERLAP));
            }
        }
        let rule = Rule {
            actions: c.apply,
            ext: c.ext.map(Box::new),
            cookie: fm.cookie,
            idle_timeout: fm.idle_timeout,
            hard_timeout: fm.hard_timeout,
            flags: fm.flags,
            ..Rule::matching(table, fm.priority, &key, &mask)
        };
        let mut out = Outcome {
            touched: 1,
            ..Default::default()
        };
        let written = Written {
            match_: normalized(&fm.match_, &key, &mask),
            instructions: kept_instructions(&rule, &fm.instructions),
        };
        // One lookup of the match index: the rule goes in unless an
        // identical flow (same match and priority) is there.
        let id = match self.table.add(rule).map_err(table_error)? {
            // An identical flow is replaced: new actions, cookie, timeouts
            // and duration; counters kept unless RESET_COUNTS. No
            // FLOW_REMOVED for the replaced entry.
            Added::Exists(id, rule) => {
                let reset = fm.flags & of::OFPFF_RESET_COUNTS != 0;
                let before = self.before(id, reset, counters);
                let mut ops = self.table.modify(id, |r| *r = rule).map_err(table_error)?;
                if reset {
                    self.reset_counts(id, &mut ops);
                }
                self.journal.extend(before.map(Step::Changed));
                out.ops = ops;
                id
            }
            Added::New(ins) => {
                let displaced = ins
                    .displaced
                    .as_ref()
                    .map(|(d, _)| (*d, self.base.get(d).copied()));
                self.harvest(ins.displaced, counters);
                self.journal.push(Step::Added(ins.id, displaced));
                out.ops = ins.ops;
                ins.id
            }
        };
        self.track(id, now_ns);
        self.set_written(id, written);
        Ok(out)
    }

    fn modify(
        &mut self,
        fm: &FlowMod,
        table: Option<u8>,
        now_ns: u64,
        counters: &mut dyn Counters,
        refs: Refs<'_>,
    ) -> Result<Outcome, ErrorCode> {
        let (key, mask) = compile_match(&fm.match_).map_err(|e| e.code())?;
        let f = Filter {
            table,
            key,
            mask,
            cookie: fm.cookie,
            cookie_mask: fm.cookie_mask,
            out_port: of::OFPP_ANY,
            out_group: of::OFPG_ANY,
        };
        let strict = fm.command == of::OFPFC_MODIFY_STRICT;
        let ids = self.select(&f, strict.then_some(fm.priority));
        // The instructions compile for each table a selected rule is in
        // (goto_table must go forward from there), all before anything
        // changes: a modify over all tables whose goto_table does not go
        // forward from one selected rule's table is refused as a whole
        // (BAD_INSTRUCTION/BAD_TABLE_ID), not applied to the other rules.
        // With nothing selected the instructions still have to be valid in
        // the named table (table 0 for all tables).
        let mut compiled: Vec<Option<Compiled>> = vec![None; N_TABLES as usize];
        let tables = ids
            .iter()
            .filter_map(|id| self.table.get(*id).map(|r| r.table))
            .chain(ids.is_empty().then_some(table.unwrap_or(0)));
        for t in tables {
            let Some(slot) = compiled.get_mut(usize::from(t)) else {
                continue;
            };
            if slot.is_none() {
                let c = compile_instructions(&fm.instructions, t).map_err(|e| e.code())?;
                refs.check(&c)?;
                *slot = Some(c);
            }
        }
        let mut out = Outcome::default();
        for id in ids {
            let Some(t) = self.table.get(id).map(|r| r.table) else {
                continue;
            };
            let Some(c) = compiled.get(usize::from(t)).cloned().flatten() else {
                continue;
            };
            let reset = fm.flags & of::OFPFF_RESET_COUNTS != 0;
            let before = self.before(id, reset, counters);
            let mut ops = self
                .table
                .modify(id, |r| {
                    r.actions = c.apply;
                    r.ext = c.ext.map(Box::new);
                })
                .map_err(table_error)?;
            self.journal.extend(before.map(Step::Changed));
            if let Some(r) = self.table.get(id) {
                let mut w = self.written.get(&id).cloned().unwrap_or_default();
                w.instructions = kept_instructions(r, &fm.instructions);
                self.set_written(id, w);
            }
            if fm.flags & of::OFPFF_RESET_COUNTS != 0 {
                self.reset_counts(id, &mut ops);
                if let Some(t) = self.times_mut(id) {
                    t.idle_base_ns = now_ns;
                }
            }
            out.ops.extend(ops);
            out.touched += 1;
        }
        Ok(out)
    }

    /// Rule `id` as it is, for the journal; with `reset`, what its
    /// classifier entry has counted too.
    fn before(&self, id: u32, reset: bool, counters: &mut dyn Counters) -> Option<Box<Before>> {
        let rule = self.table.get(id)?.clone();
        let reset = reset.then(|| {
            self.table
                .entry_key(id)
                .map(|k| counters.rule(id, &k))
                .unwrap_or_default()
        });
        Some(Box::new(Before {
            id,
            rule,
            written: self.written.get(&id).cloned(),
            times: self.times(id),
            base: self.base.get(&id).copied(),
            reset,
        }))
    }

    /// Open a transaction: the adds and modifies from now on can be taken
    /// back together with [`FlowTable::rollback`] until
    /// [`FlowTable::commit`]. Deletes must not be applied inside one (see
    /// [`journaled`]). Opening one drops what an open one recorded.
    pub fn begin(&mut self) {
        self.journal.clear();
        self.in_txn = true;
    }

    /// Close the transaction: its changes stay.
    pub fn commit(&mut self) {
        self.journal.clear();
        self.in_txn = false;
    }

    /// Close the transaction taking back every change since
    /// [`FlowTable::begin`], newest first, so the table is as it was then.
    /// Returns the map operations that bring the maps back to it whatever
    /// part of the transaction's own operations reached them: each key the
    /// transaction wrote gets its earlier value again (or goes), its
    /// counters included (a rule's counters are the entry's plus what the
    /// table keeps, so both are restored together).
    pub fn rollback(&mut self) -> Vec<MapOp> {
        let ops = self.undo_to(0, true);
        self.in_txn = false;
        ops
    }

    /// Take back the journal's steps after `mark`, newest first. `applied`:
    /// the steps' operations may have reached the maps, and the ones
    /// returned are applied after them; otherwise none of the steps'
    /// operations reached the maps and the ones returned are dropped.
    fn undo_to(&mut self, mark: usize, applied: bool) -> Vec<MapOp> {
        let mut ops = Vec::new();
        while self.journal.len() > mark {
            let Some(step) = self.journal.pop() else {
                break;
            };
            match step {
                Step::Added(id, displaced) => {
                    if self.table.remove_into(id, &mut ops).is_ok() {
                        self.untrack(id);
                        if !self.written.is_empty() {
                            self.written.remove(&id);
                        }
                    }
                    // The displaced rule's entry is written afresh by the
                    // operations returned, so what it counted stays kept
                    // in the table; when nothing reached the maps its entry
                    // still counts, and the kept counters go back.
                    if let (false, Some((d, kept))) = (applied, displaced) {
                        self.set_base(d, kept);
                    }
                }
                Step::Changed(b) => {
                    let Before {
                        id,
                        rule,
                        written,
                        times,
                        base,
                        reset,
                    } = *b;
                    let Ok(mut back) = self.table.modify(id, |r| *r = rule) else {
                        continue;
                    };
                    match (reset, applied) {
                        // RESET_COUNTS wrote the entry afresh (or will
                        // not, its operation having failed): it is written
                        // afresh again, and what it had counted is kept.
                        (Some(counted), true) => {
                            self.reset_counts(id, &mut back);
                            let mut s = base.unwrap_or_default();
                            s.merge(&counted);
                            self.set_base(id, Some(s));
                        }
                        _ => self.set_base(id, base),
                    }
                    self.set_written(id, written.unwrap_or_default());
                    self.set_times(id, times);
                    ops.extend(back);
                }
            }
        }
        ops
    }

    fn set_base(&mut self, id: u32, s: Option<RuleStats>) {
        match s {
            Some(s) => {
                self.base.insert(id, s);
            }
            None => {
                if !self.base.is_empty() {
                    self.base.remove(&id);
                }
            }
        }
    }

    /// Rule `id`'s install time and deadline, as saved in the journal.
    fn set_times(&mut self, id: u32, t: Option<Times>) {
        let i = id as usize;
        if self.times.len() <= i {
            self.times.resize(i + 1, None);
        }
        if let Some(old) = std::mem::replace(&mut self.times[i], t) {
            if old.deadline_ns != u64::MAX {
                self.deadlines.remove(&(old.deadline_ns, id));
            }
        }
        if let Some(t) = t {
            if t.deadline_ns != u64::MAX {
                self.deadlines.insert((t.deadline_ns, id));
            }
        }
    }

    /// Ids selected by a filter: non-strict (rules covered by the filter's
    /// match), or strict (same match and `priority`).
    fn select(&self, f: &Filter, strict_priority: Option<u16>) -> Vec<u32> {
        match strict_priority {
            Some(p) => (0..N_TABLES as u8)
                .filter(|t| f.table.is_none_or(|x| x == *t))
                .filter_map(|t| self.table.find(t, &f.key, &f.mask, p))
                .filter(|id| self.table.get(*id).is_some_and(|r| f.selects(r)))
                .collect(),
            None => self.candidates(f).map_or_else(
                || {
                    self.table
                        .rules()
                        .filter(|(_, r)| f.picks(r))
                        .map(|(id, _)| id)
                        .collect()
                },
                |ids| {
                    if f.cookie_mask != 0 && f.by_cookie_only() {
                        // The cookie index chose them: nothing else to check.
                        return ids;
                    }
                    ids.into_iter()
                        .filter(|id| self.table.get(*id).is_some_and(|r| f.picks(r)))
                        .collect()
                },
            ),
        }
    }

    /// The rules a non-strict filter can select, from an index: by cookie
    /// when the filter has a cookie mask, by match when the index answers
    /// for it (see [`RuleTable::ids_by_match`]). None: every rule (a scan).
    /// In id order.
    fn candidates(&self, f: &Filter) -> Option<Vec<u32>> {
        if f.cookie_mask != 0 {
            return Some(self.table.ids_by_cookie(f.cookie, f.cookie_mask));
        }
        self.table
            .ids_by_match(f.table, &f.key.masked(&f.mask), &f.mask)
    }

    fn remove_ids(
        &mut self,
        ids: &[u32],
        reason: u8,
        now_ns: u64,
        counters: &mut dyn Counters,
    ) -> Outcome {
        if ids.len() >= BULK_REMOVAL {
            if let Some(plan) = self.table.whole_subtables(ids) {
                return self.remove_whole(ids, plan, reason, now_ns, counters);
            }
        }
        let mut out = Outcome::default();
        for &id in ids {
            let times = self.times(id);
            let wants = self
                .table
                .get(id)
                .is_some_and(|r| r.flags & of::OFPFF_SEND_FLOW_REM != 0);
            // Read the counters before the rule id can be reused.
            let stats = if wants {
                self.stats(id, counters)
            } else {
                RuleStats::default()
            };
            let Ok(rule) = self.table.remove_into(id, &mut out.ops) else {
                continue;
            };
            self.untrack(id);
            let written = if self.written.is_empty() {
                None
            } else {
                self.written.remove(&id)
            };
            out.touched += 1;
            if wants {
                let installed = times.map(|t| t.installed_ns);
                out.removed.push(flow_removed(
                    &rule, reason, now_ns, installed, &stats, written,
                ));
            }
        }
        // The entries of subtables this removal emptied: unreachable once
        // the new subtable lists are written, removed in the background.
        self.table.defer_unlinked(&mut out.ops);
        out
    }

    /// A non-strict removal by cookie alone (`f`; with cookie mask 0, of
    /// every rule) of rules that fill whole subtables (see
    /// [`RuleTable::cookies_whole`]): the outcome of
    /// [`FlowTable::remove_ids`] for the rules it selects, without
    /// visiting them (unless some rule has flags: then those that want a
    /// FLOW_REMOVED are looked for). None when this way does not apply;
    /// nothing changed then.
    fn remove_by_cookie(
        &mut self,
        f: &Filter,
        reason: u8,
        now_ns: u64,
        counters: &mut dyn Counters,
    ) -> Option<Outcome> {
        if !f.by_cookie_only() {
            return None;
        }
        let plan = self
            .table
            .cookies_whole(f.cookie, f.cookie_mask)
            .filter(|p| p.len() >= BULK_REMOVAL)?;
        let mut out = Outcome {
            touched: plan.len(),
            ..Default::default()
        };
        // The FLOW_REMOVED messages, made while the rules and their
        // entries (their counters) are there.
        if self.table.any_flags() {
            for id in self.table.ids_by_cookie(f.cookie, f.cookie_mask) {
                let Some(r) = self
                    .table
                    .get(id)
                    .filter(|r| r.flags & of::OFPFF_SEND_FLOW_REM != 0)
                else {
                    continue;
                };
                let stats = self.stats(id, counters);
                let installed = self.times(id).map(|t| t.installed_ns);
                let w = self.written.get(&id).cloned();
                out.removed
                    .push(flow_removed(r, reason, now_ns, installed, &stats, w));
            }
        }
        let kept = plan.kept().to_vec();
        self.table.remove_cookies(plan, &mut out.ops);
        self.keep_only(&kept);
        Some(out)
    }

    /// Forget the times, counters and writings of every rule but `kept`
    /// (in id order), after a bulk removal of all the others.
    fn keep_only(&mut self, kept: &[u32]) {
        let Some(last) = kept.last() else {
            self.times = Vec::new();
            self.deadlines = BTreeSet::new();
            self.base = HashMap::new();
            self.written = HashMap::new();
            return;
        };
        let mut times = vec![None; *last as usize + 1];
        for &id in kept {
            times[id as usize] = self.times(id);
        }
        self.times = times;
        let is_kept = |id: &u32| kept.binary_search(id).is_ok();
        self.deadlines.retain(|(_, id)| is_kept(id));
        self.base.retain(|id, _| is_kept(id));
        self.written.retain(|id, _| is_kept(id));
    }

    /// [`FlowTable::remove_ids`] for rules that fill whole subtables (see
    /// [`RuleTable::remove_whole`]): the same outcome, without keeping
    /// the indexes up to date rule by rule.
    fn remove_whole(
        &mut self,
        ids: &[u32],
        plan: crate::table::Whole,
        reason: u8,
        now_ns: u64,
        counters: &mut dyn Counters,
    ) -> Outcome {
        // The counters of the rules that want a FLOW_REMOVED, read while
        // their entries are there.
        let mut counted: HashMap<u32, RuleStats> = HashMap::new();
        for &id in ids {
            if self
                .table
                .get(id)
                .is_some_and(|r| r.flags & of::OFPFF_SEND_FLOW_REM != 0)
            {
                counted.insert(id, self.stats(id, counters));
            }
        }
        let mut out = Outcome {
            touched: ids.len(),
            ..Default::default()
        };
        let Self {
            table,
            times,
            written,
            ..
        } = self;
        let removed = &mut out.removed;
        table.remove_whole(ids, plan, &mut out.ops, |id, rule| {
            if let Some(stats) = counted.get(&id) {
                let installed = times
                    .get(id as usize)
                    .copied()
                    .flatten()
                    .map(|t| t.installed_ns);
                let w = written.get(&id).cloned();
                removed.push(flow_removed(rule, reason, now_ns, installed, stats, w));
            }
        });
        for &id in ids {
            self.untrack(id);
        }
        if !self.written.is_empty() {
            for id in ids {
                self.written.remove(id);
            }
        }
        out
    }

    /// When [`FlowTable::expire`] next has work: the earliest timeout
    /// deadline (CLOCK_MONOTONIC ns), if any rule has a timeout.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Remove the rules whose idle or hard timeout has passed at `now_ns`,
    /// looking at no more than `budget` of them (each costs a counter read):
    /// what is left waits for the next call, which [`FlowTable::next_deadline`]
    /// says is due at once. Only rules whose deadline has come are read, so
    /// this is cheap to call often.
    pub fn expire(&mut self, now_ns: u64, counters: &mut dyn Counters, budget: usize) -> Outcome {
        let mut out = Outcome::default();
        let mut looked = 0;
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now_ns || looked >= budget {
                break;
            }
            looked += 1;
            self.deadlines.pop_first();
            let (Some(r), Some(t)) = (self.table.get(id), self.times(id)) else {
                continue;
            };
            let hard_at = if r.hard_timeout != 0 {
                t.installed_ns + u64::from(r.hard_timeout) * NS
            } else {
                u64::MAX
            };
            if hard_at <= now_ns {
                let o = self.remove_ids(&[id], of::OFPRR_HARD_TIMEOUT, now_ns, counters);
                merge(&mut out, o);
                continue;
            }
            let mut idle_at = u64::MAX;
            if r.idle_timeout != 0 {
                let used = self.stats(id, counters).last_used_ns;
                let last = used.max(t.idle_base_ns);
                idle_at = last + u64::from(r.idle_timeout) * NS;
                if idle_at <= now_ns {
                    let o = self.remove_ids(&[id], of::OFPRR_IDLE_TIMEOUT, now_ns, counters);
                    merge(&mut out, o);
                    continue;
                }
            }
            let next = hard_at.min(idle_at);
            if let Some(tm) = self.times_mut(id) {
                tm.deadline_ns = next;
            }
            if next != u64::MAX {
                self.deadlines.insert((next, id));
            }
        }
        out
    }

    fn filter(req: &of::FlowStatsRequest) -> Result<Option<Filter>, ErrorCode> {
        let table = if req.table_id == of::OFPTT_ALL {
            None
        } else if u32::from(req.table_id) < N_TABLES {
            Some(req.table_id)
        } else {
            // A table that does not exist has no flows.
            return Ok(None);
        };
        let (key, mask) = compile_match(&req.match_).map_err(|e| e.code())?;
        Ok(Some(Filter {
            table,
            key,
            mask,
            cookie: req.cookie,
            cookie_mask: req.cookie_mask,
            out_port: req.out_port,
            out_group: req.out_group,
        }))
    }

    /// The ids of the flows a FLOW or AGGREGATE request selects, highest
    /// priority first (then by id), as Open vSwitch lists them.
    pub fn select_for(&self, req: &of::FlowStatsRequest) -> Result<Vec<u32>, ErrorCode> {
        let Some(f) = Self::filter(req)? else {
            return Ok(Vec::new());
        };
        // The sort key is taken with the rule, once: looking rules up by id
        // inside the sort's comparisons cost a second per million flows,
        // during which the event loop did nothing else.
        let mut keyed: Vec<(std::cmp::Reverse<u16>, u32)> = self
            .select(&f, None)
            .into_iter()
            .filter_map(|id| Some((std::cmp::Reverse(self.table.get(id)?.priority), id)))
            .collect();
        keyed.sort_unstable();
        Ok(keyed.into_iter().map(|(_, id)| id).collect())
    }

    /// The stats entry of flow `id` (None if it is gone).
    pub fn flow_stats_of(
        &self,
        id: u32,
        now_ns: u64,
        counters: &mut dyn Counters,
    ) -> Option<FlowStats> {
        let r = self.table.get(id)?;
        Some(self.stats_of(id, r, now_ns, counters))
    }

    /// All rule ids.
    pub fn ids(&self) -> Vec<u32> {
        self.table.rules().map(|(id, _)| id).collect()
    }

    /// OFPMP_FLOW: the flows selected by the request, with counters.
    pub fn flow_stats(
        &self,
        req: &of::FlowStatsRequest,
        now_ns: u64,
        counters: &mut dyn Counters,
    ) -> Result<Vec<FlowStats>, ErrorCode> {
        let Some(f) = Self::filter(req)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for id in self.select(&f, None) {
            let Some(r) = self.table.get(id) else {
                continue;
            };
            out.push(self.stats_of(id, r, now_ns, counters));
        }
        // Like OVS: highest priority first.
        out.sort_by_key(|f| std::cmp::Reverse(f.priority));
        Ok(out)
    }

    /// One flow's stats entry.
    fn stats_of(&self, id: u32, r: &Rule, now_ns: u64, counters: &mut dyn Counters) -> FlowStats {
        let s = self.stats(id, counters);
        let age = now_ns.saturating_sub(self.times(id).map_or(now_ns, |t| t.installed_ns));
        let w = self.written.get(&id);
        let match_ = w
            .and_then(|w| w.match_.clone())
            .unwrap_or_else(|| match_of(&r.full_key(), &r.full_mask()));
        let instructions = w
            .and_then(|w| w.instructions.clone())
            .unwrap_or_else(|| decompiled(r));
        FlowStats {
            table_id: r.table,
            duration_sec: (age / NS) as u32,
            duration_nsec: (age % NS) as u32,
            priority: r.priority,
            idle_timeout: r.idle_timeout,
            hard_timeout: r.hard_timeout,
            flags: r.flags,
            cookie: r.cookie,
            packet_count: s.packets,
            byte_count: s.bytes,
            match_,
            instructions,
        }
    }

    /// OFPMP_AGGREGATE over the flows selected by the request.
    pub fn aggregate(
        &self,
        req: &of::FlowStatsRequest,
        counters: &mut dyn Counters,
    ) -> Result<of::AggregateStats, ErrorCode> {
        let mut a = of::AggregateStats::default();
        let Some(f) = Self::filter(req)? else {
            return Ok(a);
        };
        for id in self.select(&f, None) {
            let s = self.stats(id, counters);
            a.packet_count += s.packets;
            a.byte_count += s.bytes;
            a.flow_count += 1;
        }
        Ok(a)
    }

    /// Sum of the packets of every flow of `table` (OFPMP_TABLE
    /// matched_count of table 0).
    pub fn matched_packets(&self, table: u8, counters: &mut dyn Counters) -> u64 {
        self.table
            .rules()
            .filter(|(_, r)| r.table == table)
            .map(|(id, _)| self.stats(id, counters).packets)
            .sum()
    }

    /// Number of flows of `table`.
    pub fn active(&self, table: u8) -> usize {
        self.table.rules().filter(|(_, r)| r.table == table).count()
    }

    /// Remove the flows that send to group `group` (it is being deleted);
    /// FLOW_REMOVED with reason OFPRR_GROUP_DELETE for those that asked.
    pub fn remove_by_group(
        &mut self,
        group: u32,
        now_ns: u64,
        counters: &mut dyn Counters,
    ) -> Outcome {
        let ids: Vec<u32> = self
            .table
            .rules()
            .filter(|(_, r)| group != of::OFPG_ANY && sends_to_group(r, group))
            .map(|(id, _)| id)
            .collect();
        self.remove_ids(&ids, of::OFPRR_GROUP_DELETE, now_ns, counters)
    }

    /// Remove the flows that go through meter `meter` (it is being
    /// deleted); FLOW_REMOVED with reason OFPRR_DELETE for those that asked.
    pub fn remove_by_meter(
        &mut self,
        meter: u32,
        now_ns: u64,
        counters: &mut dyn Counters,
    ) -> Outcome {
        let ids: Vec<u32> = self
            .table
            .rules()
            .filter(|(_, r)| {
                r.ext
                    .as_ref()
                    .is_some_and(|e| e.meter == meter && meter != 0)
            })
            .map(|(id, _)| id)
            .collect();
        self.remove_ids(&ids, of::OFPRR_DELETE, now_ns, counters)
    }
}

/// Removals of at least this many rules at once are looked at for the
/// bulk path (whole subtables, see [`RuleTable::whole_subtables`]).
const BULK_REMOVAL: usize = 64;

/// The FLOW_REMOVED of `rule` (installed at `installed_ns`, if known),
/// removed at `now_ns` for `reason`, with its counters and what the
/// controller wrote of it.
fn flow_removed(
    rule: &Rule,
    reason: u8,
    now_ns: u64,
    installed_ns: Option<u64>,
    stats: &RuleStats,
    written: Option<Written>,
) -> FlowRemoved {
    let age = now_ns.saturating_sub(installed_ns.unwrap_or(now_ns));
    FlowRemoved {
        cookie: rule.cookie,
        priority: rule.priority,
        reason,
        table_id: rule.table,
        duration_sec: (age / NS) as u32,
        duration_nsec: (age % NS) as u32,
        idle_timeout: rule.idle_timeout,
        hard_timeout: rule.hard_timeout,
        packet_count: stats.packets,
        byte_count: stats.bytes,
        match_: written
            .and_then(|w| w.match_)
            .unwrap_or_else(|| match_of(&rule.full_key(), &rule.full_mask())),
    }
}

fn first_deadline(r: &Rule, installed_ns: u64, idle_base_ns: u64) -> u64 {
    let hard = (r.hard_timeout != 0).then(|| installed_ns + u64::from(r.hard_timeout) * NS);
    let idle = (r.idle_timeout != 0).then(|| idle_base_ns + u64::from(r.idle_timeout) * NS);
    match (hard, idle) {
        (Some(h), Some(i)) => h.min(i),
        (Some(h), None) => h,
        (None, Some(i)) => i,
        (None, None) => u64::MAX,
    }
}

fn merge(a: &mut Outcome, b: Outcome) {
    a.ops.extend(b.ops);
    a.removed.extend(b.removed);
    a.touched += b.touched;
}

#[cfg(test)]
mod tests {
    use super::*;
    use daolinet_common::FlowKey;
    use std::collections::HashMap as Map;

    /// Counters kept in memory, standing in for the BPF maps.
    #[derive(Default)]
    pub(crate) struct FakeCounters {
        pub rules: Map<u32, RuleStats>,
    }

    impl Counters for FakeCounters {
        fn rule(&mut self, id: u32, _: &EntryKey) -> RuleStats {
            self.rules.get(&id).copied().unwrap_or_default()
        }
        fn port(&mut self, _: u32) -> Option<PortStats> {
            None
        }
    }

    fn fm(s: &str) -> FlowMod {
        s.parse().expect("flow syntax")
    }

    fn with(cmd: u8, s: &str) -> FlowMod {
        let mut f = fm(s);
        f.command = cmd;
        f
    }

    fn dump(t: &FlowTable) -> Vec<String> {
        let mut c = FakeCounters::default();
        let req = of::FlowStatsRequest::default();
        let mut v: Vec<String> = t
            .flow_stats(&req, 0, &mut c)
            .unwrap()
            .into_iter()
            .map(|f| {
                format!(
                    "cookie={:#x},priority={},{} actions={}",
                    f.cookie,
                    f.priority,
                    f.match_,
                    f.instructions
                        .first()
                        .map(|i| match i {
                            of::Instruction::ApplyActions(a) => a
                                .iter()
                                .map(|a| a.to_string())
                                .collect::<Vec<_>>()
                                .join(","),
                            _ => String::new(),
                        })
                        .unwrap_or_else(|| "drop".into())
                )
            })
            .collect();
        v.sort();
        v
    }

    fn apply(t: &mut FlowTable, f: &FlowMod) -> Result<Outcome, ErrorCode> {
        t.flow_mod(f, 0, &mut FakeCounters::default())
    }

    #[test]
    fn add_replaces_identical_and_keeps_different_priorities() {
        let mut t = FlowTable::default();
        apply(
            &mut t,
            &fm("priority=10,ip,nw_dst=10.0.0.1 actions=output:1"),
        )
        .unwrap();
        apply(
            &mut t,
            &fm("priority=20,ip,nw_dst=10.0.0.1 actions=output:2"),
        )
        .unwrap();
        let o = apply(
            &mut t,
            &fm("cookie=0x5,priority=10,ip,nw_dst=10.0.0.1 actions=output:3"),
        )
        .unwrap();
        // Counters kept: the entry is updated in place, not replaced.
        assert!(!o.ops.iter().any(|o| matches!(o, MapOp::PutFlow(..))));
        assert_eq!(t.len(), 2);
        assert_eq!(
            dump(&t),
            [
                "cookie=0x0,priority=20,ip,nw_dst=10.0.0.1 actions=output:2",
                "cookie=0x5,priority=10,ip,nw_dst=10.0.0.1 actions=output:3"
            ]
        );
        let o = apply(
            &mut t,
            &fm("priority=10,reset_counts,ip,nw_dst=10.0.0.1 actions=output:3"),
        )
        .unwrap();
        // RESET_COUNTS: the rule's entry starts over (it is shadowed here:
        // nothing to write) and what it counted before is forgotten.
        assert!(!o.ops.iter().any(|o| matches!(o, MapOp::UpdateFlow(..))));
    }

    #[test]
    fn stats_report_what_the_flow_mod_said() {
        let mut t = FlowTable::default();
        // Fields out of OXM order, a value with bits outside its mask, an
        // all-ones mask, and an output max_len the datapath has no use for.
        let m = of::Match::new()
            .with(of::OxmField::Ipv4Dst(
                "10.1.2.3".parse().unwrap(),
                Some("255.255.0.0".parse().unwrap()),
            ))
            .with(of::OxmField::EthType(0x0800, None))
            .with(of::OxmField::EthSrc(
                of::MacAddr([2, 0, 0, 0, 0, 1]),
                Some(of::MacAddr([0xff; 6])),
            ));
        let ins = vec![of::Instruction::ApplyActions(vec![
            of::Action::SetField(of::OxmField::TcpDst(8080, None)),
            of::Action::Output {
                port: 2,
                max_len: 0xffe5,
            },
        ])];
        let mut f = FlowMod::add(m).priority(7);
        f.instructions = ins.clone();
        apply(&mut t, &f).unwrap();
        let req = of::FlowStatsRequest::default();
        let st = t.flow_stats(&req, 0, &mut FakeCounters::default()).unwrap();
        assert_eq!(st.len(), 1);
        assert_eq!(st[0].instructions, ins);
        assert_eq!(
            st[0].match_.fields,
            vec![
                of::OxmField::Ipv4Dst(
                    "10.1.0.0".parse().unwrap(),
                    Some("255.255.0.0".parse().unwrap())
                ),
                of::OxmField::EthType(0x0800, None),
                of::OxmField::EthSrc(of::MacAddr([2, 0, 0, 0, 0, 1]), None),
            ]
        );
        // A modify changes what is reported; a delete forgets it.
        let mut md = with(of::OFPFC_MODIFY, "ip actions=output:3");
        md.match_ = of::Match::new().eth_type(0x0800);
        apply(&mut t, &md).unwrap();
        let st = t.flow_stats(&req, 0, &mut FakeCounters::default()).unwrap();
        assert_eq!(
            st[0].instructions,
            vec![of::Instruction::ApplyActions(vec![of::Action::output(3)])]
        );
        // Its match is still kept (out of order), its instructions are not
        // (output:3 decompiles from the rule).
        assert!(t.written.values().all(|w| w.instructions.is_none()));
        assert_eq!(t.written.len(), 1);
        apply(&mut t, &with(of::OFPFC_DELETE, "")).unwrap();
        assert!(t.written.is_empty());
    }

    #[test]
    fn flows_that_read_back_from_the_rule_keep_no_copy() {
        let mut t = FlowTable::default();
        // Fields in OXM order, actions that decompile as written: a
        // million such flows keep no copy of their FLOW_MODs.
        for i in 1..=3 {
            let f = fm(&format!(
                "cookie=0x{i},priority=5,in_port=1,ip,nw_dst=10.0.0.{i} actions=set_field:02:00:00:00:00:0{i}->eth_dst,output:2"
            ));
            apply(&mut t, &f).unwrap();
        }
        apply(&mut t, &fm("priority=1 actions=drop")).unwrap();
        assert!(t.written.is_empty());
        assert_eq!(
            dump(&t),
            [
                "cookie=0x0,priority=1, actions=drop",
                "cookie=0x1,priority=5,in_port=1,ip,nw_dst=10.0.0.1 actions=set_field:02:00:00:00:00:01->dl_dst,output:2",
                "cookie=0x2,priority=5,in_port=1,ip,nw_dst=10.0.0.2 actions=set_field:02:00:00:00:00:02->dl_dst,output:2",
                "cookie=0x3,priority=5,in_port=1,ip,nw_dst=10.0.0.3 actions=set_field:02:00:00:00:00:03->dl_dst,output:2",
            ]
        );
        // An output with a max_len the datapath does not keep is kept.
        let mut f = fm("priority=9,ip actions=drop");
        f.instructions = vec![of::Instruction::ApplyActions(vec![of::Action::Output {
            port: 2,
            max_len: 0xffe5,
        }])];
        apply(&mut t, &f).unwrap();
        assert_eq!(t.written.len(), 1);
        let req = of::FlowStatsRequest::default();
        let st = t.flow_stats(&req, 0, &mut FakeCounters::default()).unwrap();
        assert_eq!(st[0].instructions, f.instructions);
    }

    #[test]
    fn overlap_check_only_for_same_priority_and_intersecting_matches() {
        let mut t = FlowTable::default();
        apply(
            &mut t,
            &fm("priority=10,ip,nw_dst=10.0.0.0/24 actions=output:1"),
        )
        .unwrap();
        let clash = fm("priority=10,check_overlap,ip,nw_src=1.2.3.4 actions=output:2");
        assert_eq!(
            apply(&mut t, &clash).unwrap_err(),
            err(of::OFPET_FLOW_MOD_FAILED, of::OFPFMFC_OVERLAP)
        );
        assert_eq!(t.len(), 1);
        // Different priority, or disjoint matches: fine.
        apply(
            &mut t,
            &fm("priority=11,check_overlap,ip,nw_src=1.2.3.4 actions=output:2"),
        )
        .unwrap();
        apply(
            &mut t,
            &fm("priority=10,check_overlap,ip,nw_dst=10.0.1.0/24 actions=output:2"),
        )
        .unwrap();
        apply(
            &mut t,
            &fm("priority=10,check_overlap,arp actions=output:2"),
        )
        .unwrap();
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn strict_and_non_strict_modify_and_delete() {
        let mut t = FlowTable::default();
        for f in [
            "priority=10,ip,nw_dst=10.0.0.1 actions=output:1",
            "priority=20,ip,nw_dst=10.0.0.1 actions=output:1",
            "priority=10,ip,nw_dst=10.0.0.2 actions=output:1",
            "priority=10,arp actions=output:1",
        ] {
            apply(&mut t, &fm(f)).unwrap();
        }
        // Non-strict modify of "ip": every IPv4 flow, any priority.
        let o = apply(&mut t, &with(of::OFPFC_MODIFY, "ip actions=output:7")).unwrap();
        assert_eq!(o.touched, 3);
        // Strict modify needs the exact match and priority.
        let o = apply(
            &mut t,
            &with(of::OFPFC_MODIFY_STRICT, "priority=20,ip actions=output:8"),
        )
        .unwrap();
        assert_eq!(o.touched, 0);
        let o = apply(
            &mut t,
            &with(
                of::OFPFC_MODIFY_STRICT,
                "priority=20,ip,nw_dst=10.0.0.1 actions=output:8",
            ),
        )
        .unwrap();
        assert_eq!(o.touched, 1);
        assert_eq!(
            dump(&t),
            [
                "cookie=0x0,priority=10,arp actions=output:1",
                "cookie=0x0,priority=10,ip,nw_dst=10.0.0.1 actions=output:7",
                "cookie=0x0,priority=10,ip,nw_dst=10.0.0.2 actions=output:7",
                "cookie=0x0,priority=20,ip,nw_dst=10.0.0.1 actions=output:8",
            ]
        );
        // A modify that matches nothing adds nothing (OpenFlow 1.3).
        let o = apply(
            &mut t,
            &with(of::OFPFC_MODIFY, "ip,nw_dst=10.9.9.9 actions=output:1"),
        )
        .unwrap();
        assert_eq!((o.touched, t.len()), (0, 4));
        // Strict delete of priority 10 keeps priority 20.
        let o = apply(
            &mut t,
            &with(of::OFPFC_DELETE_STRICT, "priority=10,ip,nw_dst=10.0.0.1"),
        )
        .unwrap();
        assert_eq!(o.touched, 1);
        // Non-strict delete with out_port: only flows that output there.
        let mut d = with(of::OFPFC_DELETE, "");
        d.out_port = 1;
        assert_eq!(apply(&mut t, &d).unwrap().touched, 1); // the arp flow
        d.out_port = of::OFPP_ANY;
        assert_eq!(apply(&mut t, &d).unwrap().touched, 2);
        assert!(t.is_empty());
    }

    #[test]
    fn cookie_masks_select_what_modify_and_delete_touch() {
        let mut t = FlowTable::default();
        for (c, d) in [(0x1100, 1), (0x1200, 2), (0x2100, 3)] {
            apply(
                &mut t,
                &fm(&format!(
                    "cookie={c:#x},ip,nw_dst=10.0.0.{d} actions=output:1"
                )),
            )
            .unwrap();
        }
        let mut m = with(of::OFPFC_MODIFY, "actions=output:5");
        m.cookie = 0x1000;
        m.cookie_mask = 0xf000;
        assert_eq!(apply(&mut t, &m).unwrap().touched, 2);
        let mut d = with(of::OFPFC_DELETE, "");
        d.cookie = 0x0100;
        d.cookie_mask = 0x0f00;
        assert_eq!(apply(&mut t, &d).unwrap().touched, 2);
        assert_eq!(
            dump(&t),
            ["cookie=0x1200,priority=32768,ip,nw_dst=10.0.0.2 actions=output:5"]
        );
        // An add ignores the cookie mask.
        let mut a = fm("ip,nw_dst=10.0.0.9 actions=drop");
        a.cookie_mask = u64::MAX;
        apply(&mut t, &a).unwrap();
        assert_eq!(t.len(), 2);
    }

    /// (table, instructions) of every flow, in table order.
    fn instructions_by_table(t: &FlowTable) -> Vec<(u8, Vec<of::Instruction>)> {
        let mut c = FakeCounters::default();
        let mut v: Vec<(u8, Vec<of::Instruction>)> = t
            .flow_stats(&of::FlowStatsRequest::default(), 0, &mut c)
            .unwrap()
            .into_iter()
            .map(|f| (f.table_id, f.instructions))
            .collect();
        v.sort_by_key(|(t, _)| *t);
        v
    }

    /// A modify over all tables compiles its goto_table for each selected
    /// rule's own table: it applies where the goto goes forward, and is
    /// refused as a whole (BAD_TABLE_ID, nothing changed) when one selected
    /// rule sits at or after the goto's table, e.g. in the last table.
    #[test]
    fn modify_over_all_tables_checks_goto_per_selected_table() {
        let bad_table = err(of::OFPET_BAD_INSTRUCTION, of::OFPBIC_BAD_TABLE_ID);
        let all = |s: &str| with(of::OFPFC_MODIFY, &format!("table=255,{s}"));
        let mut t = FlowTable::default();
        // Nothing selected: valid anywhere it could apply, so accepted.
        assert_eq!(
            apply(&mut t, &all("ip actions=goto_table:5"))
                .unwrap()
                .touched,
            0
        );
        for table in [0, 3] {
            apply(&mut t, &fm(&format!("table={table},ip actions=output:1"))).unwrap();
        }
        let o = apply(&mut t, &all("ip actions=goto_table:5")).unwrap();
        assert_eq!(o.touched, 2);
        let goto5 = vec![of::Instruction::GotoTable(5)];
        assert_eq!(
            instructions_by_table(&t),
            [(0, goto5.clone()), (3, goto5.clone())]
        );
        // A rule in the last table: no goto_table can go forward from it.
        let last = (N_TABLES - 1) as u8;
        apply(&mut t, &fm(&format!("table={last},ip actions=output:1"))).unwrap();
        let before = instructions_by_table(&t);
        assert_eq!(before.len(), 3);
        for bad in [
            all("ip actions=goto_table:5"),
            all(&format!("ip actions=goto_table:{last}")),
            all(&format!("ip actions=goto_table:{N_TABLES}")),
            with(
                of::OFPFC_MODIFY_STRICT,
                &format!("table={last},ip actions=goto_table:{last}"),
            ),
        ] {
            assert_eq!(apply(&mut t, &bad).unwrap_err(), bad_table, "{bad:?}");
            assert_eq!(instructions_by_table(&t), before);
        }
        // Where the goto goes forward from every selected table, it applies;
        // a goto-free modify reaches the last table too.
        let only0 = with(of::OFPFC_MODIFY, "table=0,ip actions=goto_table:4");
        assert_eq!(apply(&mut t, &only0).unwrap().touched, 1);
        let o = apply(&mut t, &all("ip actions=output:2")).unwrap();
        assert_eq!(o.touched, 3);
        let out2 = fm("ip actions=output:2").instructions;
        assert_eq!(
            instructions_by_table(&t),
            [(0, out2.clone()), (3, out2.clone()), (last, out2)]
        );
    }

    #[test]
    fn errors_leave_the_table_unchanged() {
        let mut t = FlowTable::default();
        apply(&mut t, &fm("priority=10,ip actions=output:1")).unwrap();
        let before = dump(&t);
        for bad in [
            fm("dl_type=0x88e7,pbb_isid=3 actions=output:1"),
            fm("ip actions=group:3"),
            fm("ip actions=goto_table:99"),
            fm("table=1,ip actions=goto_table:1"),
            fm("table=99,ip actions=output:1"),
            fm("ip actions=meter:1,output:1"),
            with(9, "ip actions=output:1"),
            with(of::OFPFC_MODIFY, "ip actions=FLOOD"),
            with(of::OFPFC_DELETE, "dl_type=0x88e7,pbb_isid=4"),
        ] {
            assert!(apply(&mut t, &bad).is_err(), "{bad:?}");
            assert_eq!(dump(&t), before);
        }
        let mut f = fm("ip actions=output:1");
        f.flags = 0x100;
        assert_eq!(
            apply(&mut t, &f).unwrap_err(),
            err(of::OFPET_FLOW_MOD_FAILED, of::OFPFMFC_BAD_FLAGS)
        );
        assert_eq!(dump(&t), before);
    }

    #[test]
    fn priorities_decide_userspace_lookup() {
        let mut t = FlowTable::default();
        apply(&mut t, &fm("priority=10,ip actions=output:1")).unwrap();
        apply(
            &mut t,
            &fm("priority=30,ip,nw_dst=10.0.0.0/8 actions=output:3"),
        )
        .unwrap();
        apply(
            &mut t,
            &fm("priority=20,ip,nw_dst=10.1.0.0/16 actions=output:2"),
        )
        .unwrap();
        let pkt = FullKey::from(FlowKey {
            eth_type: 0x0800,
            ipv4_dst: [10, 1, 2, 3],
            ..Default::default()
        });
        let (_, r) = t.rules().lookup(0, &pkt).unwrap();
        assert_eq!(r.priority, 30);
        let pkt = FullKey::from(FlowKey {
            eth_type: 0x0800,
            ipv4_dst: [11, 1, 2, 3],
            ..Default::default()
        });
        assert_eq!(t.rules().lookup(0, &pkt).unwrap().1.priority, 10);
    }

    #[test]
    fn idle_and_hard_timeouts_follow_the_counters() {
        let mut t = FlowTable::default();
        let mut c = FakeCounters::default();
        t.flow_mod(
            &fm("idle_timeout=2,send_flow_rem,cookie=0x1,ip,nw_dst=10.0.0.1 actions=output:1"),
            0,
            &mut c,
        )
        .unwrap();
        t.flow_mod(
            &fm("idle_timeout=2,cookie=0x2,ip,nw_dst=10.0.0.2 actions=output:1"),
            0,
            &mut c,
        )
        .unwrap();
        t.flow_mod(
            &fm("hard_timeout=3,send_flow_rem,cookie=0x3,ip,nw_dst=10.0.0.3 actions=output:1"),
            0,
            &mut c,
        )
        .unwrap();
        let id = |t: &FlowTable, c: u64| t.rules().ids_by_cookie(c, u64::MAX)[0];
        // Rule 2 is busy: hit at 1.5 s.
        let busy = id(&t, 2);
        c.rules.insert(
            busy,
            RuleStats {
                packets: 5,
                bytes: 500,
                last_used_ns: 1_500_000_000,
            },
        );
        let quiet = id(&t, 1);
        c.rules.insert(
            quiet,
            RuleStats {
                packets: 1,
                bytes: 98,
                last_used_ns: 0,
            },
        );
        assert_eq!(t.expire(1_999_999_999, &mut c, usize::MAX).touched, 0);
        let o = t.expire(2_000_000_000, &mut c, usize::MAX);
        assert_eq!(o.touched, 1);
        assert_eq!(o.removed.len(), 1);
        let fr = &o.removed[0];
        assert_eq!(
            (
                fr.cookie,
                fr.reason,
                fr.packet_count,
                fr.byte_count,
                fr.duration_sec
            ),
            (1, of::OFPRR_IDLE_TIMEOUT, 1, 98, 2)
        );
        assert!(o
            .ops
            .iter()
            .any(|o| matches!(o, MapOp::DelFlow(_) | MapOp::DrainFlows(_))));
        // The busy one goes 2 s after its last hit, without FLOW_REMOVED.
        let o = t.expire(3_000_000_000, &mut c, usize::MAX);
        assert_eq!(o.touched, 1);
        assert_eq!(o.removed[0].reason, of::OFPRR_HARD_TIMEOUT);
        assert_eq!(t.len(), 1);
        let o = t.expire(3_500_000_000, &mut c, usize::MAX);
        assert_eq!((o.touched, o.removed.len()), (1, 0));
        assert!(t.is_empty());
    }

    #[test]
    fn many_flows_expire_a_budget_at_a_time() {
        let mut t = FlowTable::default();
        let mut c = FakeCounters::default();
        for i in 0..100 {
            apply(
                &mut t,
                &fm(&format!(
                    "hard_timeout=1,ip,nw_dst=10.0.0.{i} actions=output:1"
                )),
            )
            .unwrap();
        }
        let now = 2_000_000_000;
        let mut calls = 0;
        while t.next_deadline().is_some_and(|d| d <= now) {
            let o = t.expire(now, &mut c, 30);
            assert!(o.touched <= 30);
            calls += 1;
        }
        assert_eq!(calls, 4);
        assert!(t.is_empty());
    }

    #[test]
    fn delete_sends_flow_removed_only_when_asked() {
        let mut t = FlowTable::default();
        apply(&mut t, &fm("send_flow_rem,cookie=0x9,ip actions=output:1")).unwrap();
        apply(&mut t, &fm("cookie=0x8,arp actions=output:1")).unwrap();
        let o = apply(&mut t, &with(of::OFPFC_DELETE, "")).unwrap();
        assert_eq!(o.touched, 2);
        assert_eq!(o.removed.len(), 1);
        assert_eq!(o.removed[0].reason, of::OFPRR_DELETE);
        assert_eq!(o.removed[0].cookie, 9);
        assert_eq!(o.removed[0].match_.to_string(), "ip");
    }

    /// A delete by cookie of rules that fill whole subtables takes them
    /// at once, without visiting them: the outcome (FLOW_REMOVED messages
    /// with their counters and durations, the flows that stay, their
    /// timeouts) is that of removing them one by one, and the table goes
    /// on alike.
    #[test]
    fn a_bulk_delete_by_cookie_removes_what_one_by_one_does() {
        let build = || {
            let mut t = FlowTable::default();
            for i in 0..300u32 {
                let flags = if i % 3 == 0 { "send_flow_rem," } else { "" };
                let hard = if i % 5 == 0 { "hard_timeout=7," } else { "" };
                let f = format!(
                    "{flags}{hard}cookie=0xbe,priority=100,ip,nw_dst=10.0.{}.{} actions=output:2",
                    i / 256,
                    i % 256
                );
                apply(&mut t, &fm(&f)).unwrap();
            }
            apply(&mut t, &fm("cookie=0x1,priority=0 actions=drop")).unwrap();
            apply(&mut t, &fm("send_flow_rem,cookie=0x1,arp actions=output:1")).unwrap();
            apply(
                &mut t,
                &fm("idle_timeout=10,cookie=0x2,udp actions=output:1"),
            )
            .unwrap();
            t
        };
        let (mut a, mut b) = (build(), build());
        let mut c = FakeCounters::default();
        for id in 0..303u32 {
            let n = u64::from(id);
            c.rules.insert(
                id,
                RuleStats {
                    packets: n,
                    bytes: 100 * n,
                    ..Default::default()
                },
            );
        }
        // Every table, any match: by cookie alone.
        let del = FlowMod::delete(of::Match::new()).cookie_match(0xbe, u64::MAX);
        let now = 5 * NS;
        let oa = a.flow_mod(&del, now, &mut c).unwrap();
        assert!(
            oa.ops
                .iter()
                .any(|o| matches!(o, MapOp::DrainFlows(d) if d.removed.is_some())),
            "not the bulk way"
        );
        let mut ob = Outcome::default();
        for id in b.table.ids_by_cookie(0xbe, u64::MAX) {
            merge(&mut ob, b.remove_ids(&[id], of::OFPRR_DELETE, now, &mut c));
        }
        assert_eq!(oa.touched, 300);
        assert_eq!(oa.touched, ob.touched);
        assert_eq!(oa.removed.len(), 100);
        assert_eq!(oa.removed, ob.removed);
        assert!(oa
            .removed
            .iter()
            .all(|r| r.duration_sec == 5 && r.cookie == 0xbe));
        assert!(oa.removed.iter().any(|r| r.packet_count > 0));
        assert_eq!(dump(&a), dump(&b));
        assert_eq!(a.len(), 3);
        assert_eq!(a.next_deadline(), b.next_deadline());
        assert_eq!(a.next_deadline(), Some(10 * NS));
        let all = of::FlowStatsRequest::default();
        assert_eq!(
            a.aggregate(&all, &mut c).unwrap(),
            b.aggregate(&all, &mut c).unwrap()
        );
        // A flow added right after: in, found, and removed again alike
        // (its id may differ: fresh counters).
        c.rules.clear();
        let f = fm("send_flow_rem,cookie=0xbe,priority=100,ip,nw_dst=10.0.0.1 actions=output:3");
        apply(&mut a, &f).unwrap();
        apply(&mut b, &f).unwrap();
        assert_eq!(dump(&a), dump(&b));
        let oa = a.flow_mod(&del, now, &mut c).unwrap();
        let ob = b.flow_mod(&del, now, &mut c).unwrap();
        assert_eq!((oa.touched, oa.removed.len()), (1, 1));
        assert_eq!(oa.removed, ob.removed);
        assert_eq!(dump(&a), dump(&b));
        // Everything (cookie mask 0, every table, any match): at once too.
        for i in 0..100u32 {
            let f = format!("cookie={i},tcp,nw_dst=10.1.0.{} actions=output:1", i % 256);
            apply(&mut a, &fm(&f)).unwrap();
        }
        let all = FlowMod::delete(of::Match::new());
        let o = a.flow_mod(&all, now, &mut c).unwrap();
        assert_eq!((o.touched, o.removed.len()), (103, 1));
        assert!(o
            .ops
            .iter()
            .any(|o| matches!(o, MapOp::DrainFlows(d) if d.removed.is_some())));
        assert!(a.is_empty());
        assert!(dump(&a).is_empty());
        assert_eq!(a.next_deadline(), None);
    }

    /// The BPF maps as the datapath sees them, rebuilt from MapOps.
    #[derive(Default)]
    struct SimMaps {
        flows: std::collections::HashMap<EntryKey, daolinet_common::FlowEntry>,
        subtables: std::collections::HashMap<u8, Vec<crate::table::SubtableDesc>>,
        /// Subtables whose entries were handed to the drain.
        drained: std::collections::HashSet<u32>,
    }

    impl SimMaps {
        fn apply(&mut self, ops: &[MapOp]) {
            let mut now = std::collections::HashSet::new();
            for op in ops {
                match op {
                    MapOp::PutFlow(k, e) => {
                        // Ids are not used again: no change writes in a
                        // subtable an earlier one drained.
                        assert!(
                            !self.drained.contains(&k.subtable()),
                            "an entry written in a drained subtable"
                        );
                        self.flows.insert(k.clone(), **e);
                    }
                    MapOp::UpdateFlow(k, e) => {
                        // Counters carried over, as the datapath module does.
                        let old = self.flows.get(k).copied().unwrap_or_default();
                        assert_eq!(old.rule_id, e.rule_id, "update of another rule's entry");
                        let mut e = **e;
                        (e.packets, e.bytes) = (old.packets, old.bytes);
                        self.flows.insert(k.clone(), e);
                    }
                    MapOp::DelFlow(k) => {
                        self.flows.remove(k);
                    }
                    // Left in place, as if the drain never ran: the walk
                    // must not reach them.
                    MapOp::DrainFlows(d) => {
                        assert!(d.keys().all(|k| d.subtables.contains(&k.subtable())));
                        now.extend(d.subtables.iter().copied());
                    }
                    MapOp::SetSubtables(t, l) => {
                        self.subtables.insert(*t, l.clone());
                    }
                    _ => {}
                }
            }
            // The drained subtables are in no list now.
            for list in self.subtables.values() {
                assert!(list.iter().all(|(s, _)| !now.contains(&s.id)));
            }
            self.drained.extend(now);
        }

        /// `n` packets hit whatever rule of table 0 wins for `key`.
        fn hit(&mut self, key: &FlowKey, n: u64) {
            let k = crate::table::full(*key);
            if let Some(e) = self.best(0, &k).and_then(|k| self.flows.get_mut(&k)) {
                e.packets += n;
                e.bytes += 100 * n;
            }
        }

        /// The entry the datapath's walk of `table` finds: subtables in
        /// order, stop early, wide subtables by their wide key.
        fn best(&self, table: u8, key: &FullKey) -> Option<EntryKey> {
            let mut best: Option<(EntryKey, u32)> = None;
            for (sub, ext) in self.subtables.get(&table).into_iter().flatten() {
                if let Some((_, p)) = &best {
                    if *p >= sub.max_priority {
                        break;
                    }
                }
                let mk = if sub.id & daolinet_common::SUBTABLE_WIDE != 0 {
                    EntryKey::Wide(Box::new(daolinet_common::WideMapKey {
                        subtable: sub.id,
                        key: FullKey {
                            key: key.key.masked(&sub.mask),
                            ext: key.ext.masked(ext),
                        },
                    }))
                } else {
                    EntryKey::Narrow(daolinet_common::FlowMapKey {
                        subtable: sub.id,
                        key: key.key.masked(&sub.mask),
                    })
                };
                if let Some(e) = self.flows.get(&mk) {
                    if best.as_ref().is_none_or(|(_, p)| e.priority > *p) {
                        best = Some((mk, e.priority));
                    }
                }
            }
            best.map(|(k, _)| k)
        }

        /// The priority of the rule the datapath's walk of `table` finds.
        fn classify(&self, table: u8, key: &FullKey) -> Option<u32> {
            self.best(table, key)
                .and_then(|k| self.flows.get(&k))
                .map(|e| e.priority)
        }
    }

    impl Counters for SimMaps {
        fn rule(&mut self, id: u32, at: &EntryKey) -> RuleStats {
            match self.flows.get(at) {
                Some(e) if e.rule_id == id => RuleStats {
                    packets: e.packets,
                    bytes: e.bytes,
                    last_used_ns: 0,
                },
                _ => RuleStats::default(),
            }
        }
        fn port(&mut self, _: u32) -> Option<PortStats> {
            None
        }
    }

    #[test]
    fn counters_live_in_the_entry_and_follow_shadowing_modify_and_reset() {
        let mut t = FlowTable::default();
        let mut m = SimMaps::default();
        let run = |t: &mut FlowTable, m: &mut SimMaps, cmd: u8, s: &str| {
            let o = t.flow_mod(&with(cmd, s), 0, m).unwrap();
            m.apply(&o.ops);
            o
        };
        let pkt = FlowKey {
            eth_type: FlowKey::ETH_TYPE_IPV4,
            ipv4_dst: [10, 0, 0, 1],
            ..Default::default()
        };
        let counts = |t: &FlowTable, m: &mut SimMaps| -> Vec<(u16, u64)> {
            let req = of::FlowStatsRequest::default();
            t.flow_stats(&req, 0, m)
                .unwrap()
                .iter()
                .map(|f| (f.priority, f.packet_count))
                .collect()
        };
        let (add, strict_del) = (of::OFPFC_ADD, of::OFPFC_DELETE_STRICT);
        run(
            &mut t,
            &mut m,
            add,
            "priority=10,ip,nw_dst=10.0.0.1 actions=output:1",
        );
        m.hit(&pkt, 3);
        // A higher priority rule with the same match takes the entry: the
        // lower one keeps what it counted.
        run(
            &mut t,
            &mut m,
            add,
            "priority=20,ip,nw_dst=10.0.0.1 actions=output:2",
        );
        m.hit(&pkt, 2);
        assert_eq!(counts(&t, &mut m), [(20, 2), (10, 3)]);
        // Replacing the top rule (same match and priority) keeps its counters.
        run(
            &mut t,
            &mut m,
            add,
            "priority=20,ip,nw_dst=10.0.0.1 actions=output:3",
        );
        m.hit(&pkt, 1);
        assert_eq!(counts(&t, &mut m), [(20, 3), (10, 3)]);
        // It goes: the lower one takes the entry back and counts on.
        let o = run(&mut t, &mut m, strict_del, "priority=20,ip,nw_dst=10.0.0.1");
        assert_eq!(o.touched, 1);
        m.hit(&pkt, 4);
        assert_eq!(counts(&t, &mut m), [(10, 7)]);
        // RESET_COUNTS starts it over, in the entry too.
        run(
            &mut t,
            &mut m,
            add,
            "priority=10,reset_counts,ip,nw_dst=10.0.0.1 actions=output:1",
        );
        assert_eq!(counts(&t, &mut m), [(10, 0)]);
        m.hit(&pkt, 1);
        assert_eq!(counts(&t, &mut m), [(10, 1)]);
    }

    #[test]
    fn a_rolled_back_transaction_leaves_table_counters_and_maps_as_before_however_far_it_got() {
        let pkt = |d: u8| FlowKey {
            eth_type: FlowKey::ETH_TYPE_IPV4,
            ipv4_dst: [10, 0, 0, d],
            ..Default::default()
        };
        let setup = || {
            let mut t = FlowTable::default();
            let mut m = SimMaps::default();
            for f in [
                "priority=10,ip,nw_dst=10.0.0.1 actions=output:1",
                "cookie=0x5,priority=10,idle_timeout=9,ip,nw_dst=10.0.0.2 actions=output:2",
            ] {
                let o = t.flow_mod(&fm(f), 0, &mut m).unwrap();
                m.apply(&o.ops);
            }
            m.hit(&pkt(1), 3);
            m.hit(&pkt(2), 5);
            (t, m)
        };
        let counts = |t: &FlowTable, m: &mut SimMaps| {
            let req = of::FlowStatsRequest::default();
            t.flow_stats(&req, 7, m)
                .unwrap()
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
        };
        let entries = |m: &SimMaps| {
            let mut v: Vec<String> = m
                .flows
                .iter()
                .map(|(k, e)| {
                    let mut e = *e;
                    (e.packets, e.bytes) = (0, 0);
                    format!("{k:?} {e:?}")
                })
                .collect();
            v.sort();
            (v, m.subtables.clone())
        };
        // A transaction: a higher priority rule takes the first rule's
        // entry, a modify with RESET_COUNTS over both ip rules, a rule
        // with a new mask (a new subtable), an add replacing the second.
        let txn = [
            (
                of::OFPFC_ADD,
                "priority=20,ip,nw_dst=10.0.0.1 actions=output:3",
            ),
            (
                of::OFPFC_MODIFY,
                "reset_counts,ip actions=write_metadata:0x1/0xff,goto_table:2",
            ),
            (of::OFPFC_ADD, "priority=30,tcp,tp_dst=80 actions=output:1"),
            (
                of::OFPFC_ADD,
                "cookie=0x6,priority=10,hard_timeout=4,ip,nw_dst=10.0.0.2 actions=output:1",
            ),
        ];
        let (t0, mut m0) = setup();
        let (before, maps) = (counts(&t0, &mut m0), entries(&m0));
        let mut n_ops = 0;
        for k in 0.. {
            let (mut t, mut m) = setup();
            t.begin();
            let mut ops = Vec::new();
            for (cmd, f) in txn {
                ops.extend(t.flow_mod(&with(cmd, f), 5, &mut m).unwrap().ops);
            }
            n_ops = ops.len();
            if k > n_ops {
                break;
            }
            // The first k operations reached the maps, then one failed.
            m.apply(&ops[..k]);
            let back = t.rollback();
            m.apply(&back);
            assert_eq!(
                counts(&t, &mut m),
                before,
                "{k} of {n_ops} operations applied"
            );
            assert_eq!(entries(&m), maps, "{k} of {n_ops} operations applied");
            // And it counts on as before.
            m.hit(&pkt(1), 1);
            let c = counts(&t, &mut m);
            assert!(c.iter().any(|f| f.contains("n_packets=4,")), "{c:?}");
            assert!(c.iter().any(|f| f.contains("n_packets=5,")), "{c:?}");
        }
        assert!(n_ops >= 6, "{n_ops}");
        // Committed, the same transaction stays.
        let (mut t, mut m) = setup();
        t.begin();
        for (cmd, f) in txn {
            let o = t.flow_mod(&with(cmd, f), 5, &mut m).unwrap();
            m.apply(&o.ops);
        }
        t.commit();
        assert!(t.rollback().is_empty());
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn a_modify_refused_partway_changes_none_of_its_rules() {
        // What `flow_mod_with` does when a modify is refused after it
        // changed some of its rules (the rule table refusing one partway;
        // not reachable from the wire today, so driven directly): the
        // journal takes back the rules changed so far, and the operations
        // that would undo them in the maps are dropped (none reached them).
        let mut t = FlowTable::default();
        let mut m = SimMaps::default();
        for f in [
            "priority=1,ip,nw_dst=10.0.0.1 actions=output:1",
            "priority=1,ip,nw_dst=10.0.0.2 actions=output:1",
        ] {
            let o = t.flow_mod(&fm(f), 0, &mut m).unwrap();
            m.apply(&o.ops);
        }
        let before = dump(&t);
        let mark = t.journal.len();
        let o = t
            .flow_mod_steps(
                &with(of::OFPFC_MODIFY, "ip actions=output:7"),
                0,
                &mut m,
                Refs::none(),
            )
            .unwrap();
        assert_eq!(o.touched, 2);
        assert_ne!(dump(&t), before);
        assert!(t
            .undo_to(mark, false)
            .iter()
            .all(|op| !matches!(op, MapOp::DelFlow(_))));
        assert_eq!(dump(&t), before);
        assert!(t.journal.is_empty());
    }

    #[test]
    fn the_maps_always_classify_like_the_openflow_table() {
        // Random adds, strict and non-strict deletes and modifies over a
        // small field space (so matches overlap and shadow each other);
        // after every step the simulated maps must give, for random
        // packets, the priority of the best matching rule of the table.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut t = FlowTable::default();
        let mut maps = SimMaps::default();
        let mut c = FakeCounters::default();
        let flow = |r: &mut dyn FnMut(u64) -> u64| {
            let mut m = format!("table={},ip", r(2));
            if r(3) == 0 {
                // A wide subtable.
                m += &format!(",metadata={:#x}/0xf", r(2));
            }
            if r(2) == 0 {
                m += &format!(",in_port={}", r(3) + 1);
            }
            match r(3) {
                0 => m += &format!(",nw_dst=10.0.{}.0/24", r(3)),
                1 => m += &format!(",nw_dst=10.0.{}.{}", r(3), r(3)),
                _ => {}
            }
            if r(3) == 0 {
                m += &format!(",nw_src=192.168.{}.0/24", r(2));
            }
            m
        };
        for step in 0..3000 {
            let m = flow(&mut rnd);
            let prio = 1 + rnd(6) as u16 * 10;
            let fm = match rnd(10) {
                0..=5 => fm(&format!(
                    "priority={prio},cookie={},{m} actions=output:{}",
                    rnd(4),
                    rnd(4) + 1
                )),
                6 => with(of::OFPFC_DELETE_STRICT, &format!("priority={prio},{m}")),
                7 => with(of::OFPFC_DELETE, &m),
                8 => with(of::OFPFC_MODIFY, &format!("{m} actions=output:9")),
                _ => {
                    let mut d = with(of::OFPFC_DELETE, "");
                    d.cookie = rnd(4);
                    d.cookie_mask = u64::MAX;
                    d
                }
            };
            let o = t.flow_mod(&fm, step, &mut c).unwrap();
            maps.apply(&o.ops);
            for _ in 0..20 {
                let table = rnd(2) as u8;
                let mut pkt = FullKey::from(FlowKey {
                    in_port: rnd(4) as u32,
                    eth_type: 0x0800,
                    ipv4_src: [192, 168, rnd(3) as u8, rnd(2) as u8],
                    ipv4_dst: [10, 0, rnd(4) as u8, rnd(4) as u8],
                    ..Default::default()
                });
                pkt.ext.metadata = [rnd(3) as u32, 0];
                let want = t
                    .rules()
                    .rules()
                    .filter(|(_, r)| r.table == table && pkt.masked(&r.full_mask()) == r.full_key())
                    .map(|(_, r)| u32::from(r.priority))
                    .max();
                assert_eq!(maps.classify(table, &pkt), want, "step {step}: {pkt:?}");
            }
        }
        assert!(!t.is_empty());
    }
}

#[cfg(test)]
mod restore_tests {
    use super::*;
    use crate::table::SubtableDesc;

    struct Zero;
    impl Counters for Zero {
        fn rule(&mut self, _: u32, _: &EntryKey) -> RuleStats {
            RuleStats::default()
        }
        fn port(&mut self, _: u32) -> Option<PortStats> {
            None
        }
    }

    /// A table rebuilt from its rules (as after an agent restart, without
    /// the controller's own words) describes them as they were written:
    /// a controller reconciling against the dump keeps them.
    #[test]
    fn restored_rules_are_described_as_written() {
        let flows = [
            "cookie=0x200000010000003,idle_timeout=30,send_flow_rem,priority=100,in_port=2,ip,\
             nw_src=10.214.0.4,nw_dst=10.214.0.2 actions=set_field:02:da:00:00:00:01->eth_src,\
             set_field:02:da:10:00:00:01->eth_dst,output:1",
            "priority=100,in_port=2,dl_src=02:00:00:00:00:04,ip,nw_src=10.214.0.4,nw_dst=10.214.0.9 \
             actions=set_field:10.0.0.1->ip_src,dec_ttl,output:1",
            "table=2,priority=5,metadata=0x5/0xff,ip actions=write_actions(output:3),goto_table:4",
        ];
        let mut t = FlowTable::default();
        let mut subs: std::collections::BTreeMap<u8, Vec<SubtableDesc>> = Default::default();
        for f in flows {
            let o = t
                .flow_mod(&f.parse().expect("syntax"), 0, &mut Zero)
                .expect("added");
            for op in o.ops {
                if let MapOp::SetSubtables(table, l) = op {
                    subs.insert(table, l);
                }
            }
        }
        let saved: Vec<(u8, SubtableDesc)> = subs
            .iter()
            .flat_map(|(t, l)| l.iter().map(|s| (*t, *s)))
            .collect();
        let rules: Vec<(u32, Rule)> = t.rules().rules().map(|(i, r)| (i, r.clone())).collect();
        let restored = FlowTable::new(RuleTable::restore(&saved, rules), 0);
        for id in t.ids() {
            let a = t.flow_stats_of(id, 0, &mut Zero).expect("written");
            let b = restored.flow_stats_of(id, 0, &mut Zero).expect("restored");
            assert_eq!(a.match_, b.match_, "match of rule {id}");
            assert_eq!(a.instructions, b.instructions, "instructions of rule {id}");
        }
    }
}
