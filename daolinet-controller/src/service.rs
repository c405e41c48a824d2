//! The running controller's state: the store, the current model snapshot,
//! the flows it has installed, and the metrics. Every mutation goes through
//! [`Controller::mutate`]: validate on a copy of the model, persist the
//! changes in one store transaction guarded by the revision the model was
//! read at, then publish the new snapshot and the flow decisions the change
//! implies.
//!
//! Several controllers on one shared store: each follows the store
//! ([`Controller::follow`]): batches written by the others arrive through
//! the store's watch and are applied and published the same way, so every
//! controller converges on the same model. A mutation whose guard fails
//! (another controller wrote first) catches up with the store and runs
//! again on the newer model, so neither write is lost.

use foldhash::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::applied::{Applied, Published};
use crate::metrics::Metrics;
use crate::store::{
    batch_of, changes_of, diff, load_model_at, model_of, Revision, Store, StoreError, WatchBatch,
};
use daolinet_policy::addr::{Dpid, Ipv4Net};
use daolinet_policy::model::{Change, Model, ModelError};
use daolinet_policy::{self as policy, Config, Decision, FlowSpec, MatchSpec, Outcome, Snapshot};

/// Why a mutation failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The model refused it (bad input); nothing changed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The store failed; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Internal state is unusable (a poisoned lock).
    #[error("controller state unavailable")]
    Poisoned,
}

/// What identifies a flow entry in a table (OpenFlow's "same match and
/// priority" rule: an ADD with the same key replaces the entry).
type FlowKey = (u8, u16, MatchSpec);

/// Seeds of the two fingerprints (fixed, so a registry is deterministic).
const KEY_SEED: u64 = 0x6461_6f6c_696e_6574;
const SPEC_SEED: u64 = 0x666c_6f77_7370_6563;

/// 64-bit fingerprint of a flow's key (table, priority, match).
fn key_fp(table: u8, priority: u16, m: &MatchSpec) -> u64 {
    use std::hash::BuildHasher as _;
    foldhash::quality::FixedState::with_seed(KEY_SEED).hash_one((table, priority, m))
}

/// 64-bit fingerprint of a whole flow: its key (as the full, unmasked
/// [`key_fp`] `kfp`, so the match is hashed once), datapath, cookie,
/// timeouts and actions, with a seed independent of [`key_fp`]'s.
fn spec_fp(kfp: u64, f: &FlowSpec) -> u64 {
    use std::hash::BuildHasher as _;
    foldhash::quality::FixedState::with_seed(SPEC_SEED).hash_one((
        kfp,
        f.dpid,
        f.cookie,
        f.idle_timeout,
        f.hard_timeout,
        &f.actions,
    ))
}

/// One recorded flow in a datapath's index: 24 bytes, so the hot path
/// (a PACKET_IN re-deciding a flow already recorded) touches one small
/// bucket instead of a whole [`FlowSpec`] and its heap-allocated actions.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// [`spec_fp`] of the recorded flow.
    spec: u64,
    /// Its cookie (deletions go by cookie).
    cookie: u64,
    /// Where its [`FlowSpec`] is kept.
    at: u32,
}

/// The flows of one datapath. `index` maps [`key_fp`] to a [`Slot`]; the
/// specs themselves live in `specs` (read only for listings, FLOW_REMOVED
/// and changes). An ADD whose key fingerprint and whole-flow fingerprint
/// both match a slot is taken as the flow already recorded (two independent
/// 64-bit fingerprints: a false match is a ~2^-128 event); any other case is
/// checked against the stored key exactly. Two different keys with the same
/// key fingerprint (~n/2^64 per insertion) are kept exactly in `collided`.
#[derive(Debug, Clone)]
struct DpFlows {
    index: HashMap<u64, Slot>,
    specs: Vec<Option<FlowSpec>>,
    free: Vec<u32>,
    collided: HashMap<FlowKey, FlowSpec>,
    /// Bits of the key fingerprint used (all; tests use few to force
    /// collisions).
    key_mask: u64,
}

impl Default for DpFlows {
    fn default() -> Self {
        DpFlows {
            index: HashMap::default(),
            specs: Vec::new(),
            free: Vec::new(),
            collided: HashMap::default(),
            key_mask: u64::MAX,
        }
    }
}

fn same_key(f: &FlowSpec, table: u8, priority: u16, m: &MatchSpec) -> bool {
    f.table == table && f.priority == priority && f.match_ == *m
}

impl DpFlows {
    fn len(&self) -> usize {
        self.index.len() + self.collided.len()
    }

    fn kfp(&self, full: u64) -> u64 {
        full & self.key_mask
    }

    fn spec(&self, s: &Slot) -> Option<&FlowSpec> {
        self.specs.get(s.at as usize).and_then(Option::as_ref)
    }

    fn store(&mut self, f: &FlowSpec) -> u32 {
        match self.free.pop() {
            Some(i) => {
                if let Some(x) = self.specs.get_mut(i as usize) {
                    *x = Some(f.clone());
                }
                i
            }
            None => {
                self.specs.push(Some(f.clone()));
                u32::try_from(self.specs.len() - 1).unwrap_or(u32::MAX)
            }
        }
    }

    fn release(&mut self, at: u32) {
        if let Some(x) = self.specs.get_mut(at as usize) {
            *x = None;
            self.free.push(at);
        }
    }

    /// Records an ADD; returns 1 when it is a new entry, 0 when it replaced one.
    fn add(&mut self, f: &FlowSpec) -> i64 {
        let full = key_fp(f.table, f.priority, &f.match_);
        let kfp = self.kfp(full);
        let sfp = spec_fp(full, f);
        match self.index.get(&kfp).copied() {
            // Under load most decisions repeat a recorded flow.
            Some(s) if s.spec == sfp => 0,
            Some(s) => {
                let key_matches = self
                    .spec(&s)
                    .is_some_and(|old| same_key(old, f.table, f.priority, &f.match_));
                if key_matches {
                    if let Some(Some(old)) = self.specs.get_mut(s.at as usize) {
                        old.clone_from(f);
                    }
                    self.index.insert(
                        kfp,
                        Slot {
                            spec: sfp,
                            cookie: f.cookie,
                            at: s.at,
                        },
                    );
                    0
                } else {
                    let key = (f.table, f.priority, f.match_.clone());
                    i64::from(self.collided.insert(key, f.clone()).is_none())
                }
            }
            None => {
                if !self.collided.is_empty() {
                    let key = (f.table, f.priority, f.match_.clone());
                    if let Some(old) = self.collided.get_mut(&key) {
                        old.clone_from(f);
                        return 0;
                    }
                }
                let at = self.store(f);
                self.index.insert(
                    kfp,
                    Slot {
                        spec: sfp,
                        cookie: f.cookie,
                        at,
                    },
                );
                1
            }
        }
    }

    /// Deletes every flow whose cookie `gone` says; returns how many.
    fn delete_where(&mut self, gone: impl Fn(u64) -> bool) -> usize {
        let before = self.len();
        let mut freed = Vec::new();
        self.index.retain(|_, s| {
            let del = gone(s.cookie);
            if del {
                freed.push(s.at);
            }
            !del
        });
        for at in freed {
            self.release(at);
        }
        self.collided.retain(|_, f| !gone(f.cookie));
        if self.index.is_empty() {
            self.specs.clear();
            self.free.clear();
        }
        before - self.len()
    }

    /// Forgets the flow with this key if it still has `cookie`.
    fn remove(&mut self, table: u8, priority: u16, m: &MatchSpec, cookie: u64) -> bool {
        let kfp = self.kfp(key_fp(table, priority, m));
        if let Some(s) = self.index.get(&kfp).copied() {
            if self
                .spec(&s)
                .is_some_and(|f| same_key(f, table, priority, m))
            {
                if s.cookie != cookie {
                    return false;
                }
                self.index.remove(&kfp);
                self.release(s.at);
                return true;
            }
        }
        if self.collided.is_empty() {
            return false;
        }
        let key = (table, priority, m.clone());
        if self.collided.get(&key).is_some_and(|f| f.cookie == cookie) {
            self.collided.remove(&key);
            true
        } else {
            false
        }
    }

    fn all(&self) -> impl Iterator<Item = &FlowSpec> {
        self.specs.iter().flatten().chain(self.collided.values())
    }
}

/// The flows the controller has sent, per datapath (what is installed where,
/// as far as the controller knows: deletions it sent and FLOW_REMOVED
/// reports from the switches take flows out).
#[derive(Debug, Default, Clone)]
pub struct FlowRegistry {
    flows: HashMap<Dpid, DpFlows>,
}

impl FlowRegistry {
    /// Records decisions sent to the switches; returns the change in the
    /// number of flows.
    pub fn apply(&mut self, ds: &[Decision]) -> i64 {
        let mut delta = 0i64;
        let mut i = 0;
        while let Some(d) = ds.get(i) {
            if let Decision::DeleteFlows { dpid, .. } = d {
                // A run of deletions on one datapath (a host leaving deletes
                // every flow of each of its containers on every other
                // datapath): one pass over that datapath's flows.
                let dels: Vec<(u64, u64)> = ds[i..]
                    .iter()
                    .map_while(|x| match x {
                        Decision::DeleteFlows {
                            dpid: d2,
                            cookie,
                            cookie_mask,
                        } if d2 == dpid => Some((*cookie, *cookie_mask)),
                        _ => None,
                    })
                    .collect();
                i += dels.len();
                delta += self.delete_many(dpid, &dels);
            } else {
                delta += self.apply_one(d);
                i += 1;
            }
        }
        delta
    }

    /// Deletes, in one pass, every flow of `dpid` whose cookie matches one
    /// of `dels` (cookie, mask): the cookies are grouped by mask into hash
    /// sets, so the pass costs one lookup per distinct mask and flow rather
    /// than one scan of the datapath's flows per deletion.
    fn delete_many(&mut self, dpid: &Dpid, dels: &[(u64, u64)]) -> i64 {
        let Some(v) = self.flows.get_mut(dpid) else {
            return 0;
        };
        let mut by_mask: Vec<(u64, foldhash::HashSet<u64>)> = Vec::new();
        for &(cookie, mask) in dels {
            match by_mask.iter_mut().find(|(m, _)| *m == mask) {
                Some((_, set)) => {
                    set.insert(cookie & mask);
                }
                None => {
                    let mut set = foldhash::HashSet::default();
                    set.insert(cookie & mask);
                    by_mask.push((mask, set));
                }
            }
        }
        let gone = v.delete_where(|c| by_mask.iter().any(|(m, set)| set.contains(&(c & m))));
        if v.len() == 0 {
            self.flows.remove(dpid);
        }
        -(gone as i64)
    }

    fn apply_one(&mut self, d: &Decision) -> i64 {
        match d {
            Decision::AddFlow(f) => self.flows.entry(f.dpid).or_default().add(f),
            Decision::DeleteFlows {
                dpid,
                cookie,
                cookie_mask,
            } => {
                let Some(v) = self.flows.get_mut(dpid) else {
                    return 0;
                };
                let gone = v.delete_where(|c| policy::cookie::matches(c, *cookie, *cookie_mask));
                if v.len() == 0 {
                    self.flows.remove(dpid);
                }
                -(gone as i64)
            }
            Decision::PacketOut { .. } => 0,
        }
    }

    /// Forgets the flow a switch reported removed (FLOW_REMOVED), if the
    /// entry still has that cookie (it may have been replaced since).
    pub fn remove(
        &mut self,
        dpid: Dpid,
        table: u8,
        priority: u16,
        m: &MatchSpec,
        cookie: u64,
    ) -> bool {
        let Some(v) = self.flows.get_mut(&dpid) else {
            return false;
        };
        let gone = v.remove(table, priority, m, cookie);
        if v.len() == 0 {
            self.flows.remove(&dpid);
        }
        gone
    }

    /// Flows of one datapath, or of all, ordered by datapath, table,
    /// descending priority, cookie.
    pub fn flows(&self, dpid: Option<Dpid>) -> Vec<FlowSpec> {
        let mut out: Vec<FlowSpec> = self
            .flows
            .iter()
            .filter(|(d, _)| dpid.is_none_or(|x| x == **d))
            .flat_map(|(_, v)| v.all().cloned())
            .collect();
        out.sort_by(|a, b| {
            (a.dpid, a.table, std::cmp::Reverse(a.priority), a.cookie)
                .cmp(&(b.dpid, b.table, std::cmp::Reverse(b.priority), b.cookie))
                .then_with(|| format!("{:?}", a.match_).cmp(&format!("{:?}", b.match_)))
        });
        out
    }

    /// Number of flows.
    pub fn len(&self) -> usize {
        self.flows.values().map(DpFlows::len).sum()
    }

    /// True when no flow is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Flow registries sharded by datapath, so that PACKET_INs of different
/// switches do not contend on one lock.
struct Flows {
    shards: Vec<Mutex<FlowRegistry>>,
    total: AtomicI64,
}

const SHARDS: usize = 16;

impl Flows {
    fn new() -> Self {
        Flows {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            total: AtomicI64::new(0),
        }
    }

    fn shard(&self, dpid: Dpid) -> Result<MutexGuard<'_, FlowRegistry>, ServiceError> {
        // Fibonacci hashing spreads sequential dpids.
        let i = (dpid.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize % SHARDS;
        self.shards
            .get(i)
            .ok_or(ServiceError::Poisoned)?
            .lock()
            .map_err(|_| ServiceError::Poisoned)
    }

    /// Records `ds`.
    fn apply(&self, ds: &[Decision]) -> Result<(), ServiceError> {
        let mut delta = 0;
        let mut i = 0;
        while let Some(first) = ds.get(i) {
            // Runs of decisions for one datapath take its lock once.
            let dpid = first.dpid();
            let n = ds[i..].iter().take_while(|d| d.dpid() == dpid).count();
            delta += self.shard(dpid)?.apply(&ds[i..i + n]);
            i += n;
        }
        // Most PACKET_INs re-decide recorded flows: no write to the shared
        // counter then (it would bounce between the cores' caches).
        if delta != 0 {
            self.total.fetch_add(delta, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Flows recorded on every datapath.
    fn total(&self) -> u64 {
        u64::try_from(self.total.load(Ordering::Relaxed)).unwrap_or(0)
    }
}

/// How long a mutation keeps running again after losing races with other
/// controllers' writes before the conflict is reported.
const RETRY_FOR: Duration = Duration::from_secs(10);

/// The controller.
pub struct Controller {
    store: Arc<dyn Store>,
    /// Serialises mutations and applied watch batches (validate, persist,
    /// publish); holds the store revision the published snapshot is at.
    write: Mutex<Revision>,
    /// The current snapshot: read without locks on every PACKET_IN.
    snap: ArcSwap<Snapshot>,
    flows: Flows,
    /// Policy settings.
    pub cfg: Config,
    /// Metrics.
    pub metrics: Metrics,
    /// Recent PACKET_IN decisions (`daolictl observe`).
    pub events: crate::events::Events,
    decisions: tokio::sync::broadcast::Sender<Arc<Published>>,
    /// The store revision of the published snapshot.
    model_rev: tokio::sync::watch::Sender<Revision>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// Loads the model from `store`.
    pub fn open(store: Arc<dyn Store>, cfg: Config) -> Result<Self, StoreError> {
        let (model, revision) = load_model_at(store.as_ref())?;
        let outside: Vec<&str> = model
            .containers
            .values()
            .filter(|c| !cfg.physical_pool.contains(c.physical_ip))
            .map(|c| c.name.as_str())
            .collect();
        if !outside.is_empty() {
            tracing::warn!(pool = %cfg.physical_pool, containers = ?outside,
                "containers keep physical IPs outside the configured pool");
        }
        Ok(Controller {
            store,
            write: Mutex::new(revision),
            snap: ArcSwap::from_pointee(Snapshot::new(model)),
            flows: Flows::new(),
            cfg,
            metrics: Metrics::default(),
            events: Default::default(),
            decisions: tokio::sync::broadcast::channel(1024).0,
            model_rev: tokio::sync::watch::channel(revision).0,
        })
    }

    /// The store revision the current snapshot is at.
    pub fn revision(&self) -> Revision {
        *self.model_rev.borrow()
    }

    /// The physical IP pool.
    pub fn pool(&self) -> Ipv4Net {
        self.cfg.physical_pool
    }

    /// The current model snapshot.
    pub fn snapshot(&self) -> Result<Arc<Snapshot>, ServiceError> {
        Ok(self.snap.load_full())
    }

    /// Applies a mutation: on success the change is durable before this
    /// returns; on any error nothing changed. `f` runs on a copy of the
    /// model; when another controller wrote to the shared store first, the
    /// model is brought up to date and `f` runs again (a clone of it).
    pub fn mutate<F>(&self, f: F) -> Result<Vec<Change>, ServiceError>
    where
        F: FnOnce(&mut Model) -> Result<Vec<Change>, ModelError> + Clone,
    {
        self.mutate_applied(f).map(|(changes, _)| changes)
    }

    /// [`Controller::mutate`], and what resolves when the switches have
    /// applied the flow changes it implies (see [`Applied`]).
    pub fn mutate_applied<F>(&self, f: F) -> Result<(Vec<Change>, Applied), ServiceError>
    where
        F: FnOnce(&mut Model) -> Result<Vec<Change>, ModelError> + Clone,
    {
        let started = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            let mut applied = self.write.lock().map_err(|_| ServiceError::Poisoned)?;
            let old = self.snap.load_full();
            let mut model = old.model.clone();
            let changes = f.clone()(&mut model)?;
            if changes.is_empty() {
                // Nothing changed (e.g. a host registering again): nothing to
                // persist, publish or re-initialise.
                return Ok((changes, Applied::done()));
            }
            let mut batch = batch_of(&changes)?;
            batch.expect_revision = Some(*applied);
            match self.store.apply(batch) {
                Ok(rev) => {
                    let done = self.publish(&mut applied, &old, model, &changes, rev)?;
                    self.metrics.api_mutation();
                    return Ok((changes, done));
                }
                Err(StoreError::Conflict { actual, .. }) if started.elapsed() < RETRY_FOR => {
                    attempt += 1;
                    self.metrics.store_conflict();
                    tracing::debug!(
                        at = *applied,
                        store = actual,
                        attempt,
                        "mutation raced another controller: catching up"
                    );
                    self.catch_up(&mut applied)?;
                    drop(applied);
                    // Random pause growing with the attempts, so that
                    // controllers writing at the same moment stop colliding.
                    if attempt > 1 {
                        let cap = u64::from(attempt.min(10)) * 4;
                        std::thread::sleep(Duration::from_millis(jitter(cap)));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Publishes the model at `rev` (under the write lock): snapshot, flow
    /// decisions, revision; what resolves when the switches applied the
    /// decisions.
    fn publish(
        &self,
        applied: &mut Revision,
        old: &Snapshot,
        model: Model,
        changes: &[Change],
        rev: Revision,
    ) -> Result<Applied, ServiceError> {
        let new = Arc::new(Snapshot::new(model));
        let decisions = policy::handle_model_change(old, &new, &self.cfg, changes);
        self.flows.apply(&decisions)?;
        if old.model.networks.len() != new.model.networks.len() {
            // Verdict counters of deleted networks go with them.
            self.metrics
                .retain_networks(|net| new.model.networks.contains_key(net));
        }
        self.snap.store(new);
        let done = Applied::new();
        if decisions.is_empty()
            || self
                .decisions
                .send(Arc::new(Published {
                    decisions,
                    applied: done.clone(),
                }))
                .is_err()
        {
            // Nothing to send, or no OpenFlow server running.
            done.routed();
        }
        *applied = rev;
        self.model_rev.send_replace(rev);
        Ok(done)
    }

    /// Lists the store again and publishes the difference (when the store
    /// is ahead of the snapshot). Returns true when something was applied.
    fn catch_up(&self, applied: &mut Revision) -> Result<bool, ServiceError> {
        let listing = self.store.list()?;
        if listing.revision <= *applied {
            return Ok(false);
        }
        let model = model_of(&listing)?;
        let old = self.snap.load_full();
        let changes = diff(&old.model, &model);
        tracing::info!(
            from = *applied,
            to = listing.revision,
            changes = changes.len(),
            "caught up with the store"
        );
        self.publish(applied, &old, model, &changes, listing.revision)?;
        Ok(true)
    }

    /// Applies a batch another controller (or this one) wrote, when the
    /// snapshot is not already past it.
    fn apply_watched(&self, batch: WatchBatch) -> Result<(), ServiceError> {
        let mut applied = self.write.lock().map_err(|_| ServiceError::Poisoned)?;
        if batch.revision <= *applied {
            return Ok(());
        }
        let changes = match changes_of(&batch.ops) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, revision = batch.revision, "watched batch does not decode: listing the store");
                self.catch_up(&mut applied)?;
                return Ok(());
            }
        };
        let old = self.snap.load_full();
        let mut model = old.model.clone();
        for c in &changes {
            model.apply(c);
        }
        tracing::debug!(
            revision = batch.revision,
            changes = changes.len(),
            "applied a watched batch"
        );
        self.publish(&mut applied, &old, model, &changes, batch.revision)
            .map(|_| ())
    }

    /// Follows the store on a thread of its own: applies and publishes
    /// every batch written after the current snapshot (by other controllers
    /// on a shared store), lists again when the watch breaks, and retries
    /// with a pause while the store is unreachable. The thread ends once
    /// the controller is dropped.
    pub fn follow(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("store-follower".into())
            .spawn(move || follow(&weak))
    }

    /// Runs the policy on a PACKET_IN, records the flows it decided and
    /// the decision time (policy only) in the metrics.
    pub fn packet_in(
        &self,
        dpid: Dpid,
        in_port: u32,
        data: &[u8],
    ) -> Result<Outcome, ServiceError> {
        let t = Instant::now();
        let out = self.decide(dpid, in_port, data)?;
        self.metrics.packet_in(t.elapsed(), &out.verdict);
        Ok(out)
    }

    /// Like [`Controller::packet_in`] but leaves the PACKET_IN metrics to
    /// the caller (the OpenFlow server measures until the replies are
    /// encoded). Lock-free on the snapshot; one short per-datapath lock on
    /// the flow registry.
    pub fn decide(&self, dpid: Dpid, in_port: u32, data: &[u8]) -> Result<Outcome, ServiceError> {
        self.decide_as(dpid, in_port, data, None)
    }

    /// Like [`Controller::decide`] for a packet that one of the
    /// controller's denials (flow cookie `cookie`) punted: still denied,
    /// nothing to send; allowed now, delivered
    /// ([`policy::handle_punted_denial`]).
    pub fn decide_punted_denial(
        &self,
        dpid: Dpid,
        in_port: u32,
        data: &[u8],
        cookie: u64,
    ) -> Result<Outcome, ServiceError> {
        self.decide_as(dpid, in_port, data, Some(cookie))
    }

    fn decide_as(
        &self,
        dpid: Dpid,
        in_port: u32,
        data: &[u8],
        denial: Option<u64>,
    ) -> Result<Outcome, ServiceError> {
        let snap = self.snap.load();
        let out = match denial {
            None => policy::handle_packet_in(&snap, &self.cfg, dpid, in_port, data),
            Some(c) => {
                let out = policy::handle_punted_denial(&snap, &self.cfg, dpid, in_port, data, c);
                self.metrics.punted_denial(!out.decisions.is_empty());
                out
            }
        };
        self.flows.apply(&out.decisions)?;
        let network = snap
            .host_by_dpid(dpid)
            .and_then(|h| snap.container_at(&h.name, in_port))
            .map_or("", |c| c.network.as_str());
        self.metrics.verdict(network, &out.verdict);
        self.events.record(dpid, in_port, data, out.verdict);
        Ok(out)
    }

    /// A datapath was reconciled: records the flows it keeps and was given,
    /// forgets the ones deleted.
    pub fn reconciled(
        &self,
        dpid: Dpid,
        kept: &[FlowSpec],
        deleted: &[FlowSpec],
        added: &[FlowSpec],
    ) -> Result<(), ServiceError> {
        let adds: Vec<Decision> = kept
            .iter()
            .chain(added)
            .cloned()
            .map(Decision::AddFlow)
            .collect();
        self.flows.apply(&adds)?;
        for f in deleted {
            self.flow_removed(dpid, f.table, f.priority, &f.match_, f.cookie)?;
        }
        Ok(())
    }

    /// A datapath disconnected for good: the deletions for the other
    /// datapaths, recorded.
    pub fn host_gone(&self, dpid: Dpid) -> Result<Vec<Decision>, ServiceError> {
        let snap = self.snap.load();
        let ds = policy::handle_host_gone(&snap, dpid);
        self.flows.apply(&ds)?;
        Ok(ds)
    }

    /// A switch reported a flow removed (idle/hard timeout or deletion).
    pub fn flow_removed(
        &self,
        dpid: Dpid,
        table: u8,
        priority: u16,
        m: &MatchSpec,
        cookie: u64,
    ) -> Result<bool, ServiceError> {
        let gone = self
            .flows
            .shard(dpid)?
            .remove(dpid, table, priority, m, cookie);
        if gone {
            self.flows.total.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(gone)
    }

    /// Subscribes to the decisions produced by mutations, which the
    /// OpenFlow server must send to the switches.
    pub fn subscribe_decisions(&self) -> tokio::sync::broadcast::Receiver<Arc<Published>> {
        self.decisions.subscribe()
    }

    /// Watches the model revision (bumped by every accepted mutation, also
    /// those that imply no flow decision, e.g. a new host).
    pub fn subscribe_model(&self) -> tokio::sync::watch::Receiver<u64> {
        self.model_rev.subscribe()
    }

    /// The Prometheus text of [`Controller::metrics`], with the installed
    /// flows counted as they are now. The count is read here rather than
    /// stored by each PACKET_IN or flow removal: those run on several
    /// threads, and a count stored after another thread's newer one would
    /// stay stale until the next change.
    pub fn metrics_text(&self) -> String {
        self.metrics.set_flows_installed(self.flows.total());
        self.metrics.render()
    }

    /// Flows recorded for one datapath or all.
    pub fn flows(&self, dpid: Option<Dpid>) -> Result<Vec<FlowSpec>, ServiceError> {
        let mut out = Vec::new();
        for sh in &self.flows.shards {
            out.extend(sh.lock().map_err(|_| ServiceError::Poisoned)?.flows(dpid));
        }
        out.sort_by_key(|f| f.dpid);
        Ok(out)
    }
}

/// A pseudo-random number in `0..=max` (spreads retries; not for secrets).
fn jitter(max: u64) -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() % (max + 1)
}

/// The follower loop of [`Controller::follow`].
fn follow(weak: &std::sync::Weak<Controller>) {
    let pause = Duration::from_millis(500);
    loop {
        let Some(ctl) = weak.upgrade() else { return };
        let from = ctl.revision();
        let watch = match ctl.store.watch(from) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the store: listing it again");
                if let Ok(mut applied) = ctl.write.lock() {
                    if let Err(e) = ctl.catch_up(&mut applied) {
                        tracing::warn!(error = %e, "cannot list the store");
                    }
                }
                drop(ctl);
                std::thread::sleep(pause);
                continue;
            }
        };
        drop(ctl);
        loop {
            match watch.rx.recv_timeout(pause) {
                Ok(batch) => {
                    let Some(ctl) = weak.upgrade() else { return };
                    if let Err(e) = ctl.apply_watched(batch) {
                        tracing::warn!(error = %e, "applying a watched batch");
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if weak.strong_count() == 0 {
                        return;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    tracing::info!("store watch ended: listing the store again");
                    let Some(ctl) = weak.upgrade() else { return };
                    if let Ok(mut applied) = ctl.write.lock() {
                        if let Err(e) = ctl.catch_up(&mut applied) {
                            tracing::warn!(error = %e, "cannot list the store");
                        }
                    }
                    drop(ctl);
                    std::thread::sleep(pause);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use daolinet_policy::addr::MacAddr;
    use daolinet_policy::model::{ContainerSpec, Host, NetworkSpec, PairAction};
    use daolinet_policy::{Ipv4, Packet, Verdict, ETH_TYPE_IPV4, L3};

    /// Batched deletions (one pass per datapath) leave exactly what the
    /// deletions applied one by one leave.
    #[test]
    fn batched_deletions_equal_sequential_ones() {
        use daolinet_policy::cookie::{self, Kind, HI_MASK, LO_MASK};
        use daolinet_policy::{FlowSpec, Ipv4Match, MatchSpec};
        let flow = |dpid: u64, lo: u32, hi: u32, port: u32| {
            Decision::AddFlow(FlowSpec {
                dpid: Dpid(dpid),
                table: 0,
                priority: 100,
                cookie: cookie::make(Kind::Pair, lo, hi),
                idle_timeout: 10,
                hard_timeout: 0,
                match_: MatchSpec {
                    in_port: Some(port),
                    eth_type: Some(ETH_TYPE_IPV4),
                    ipv4_src: Some(Ipv4Match::exact(std::net::Ipv4Addr::from(lo))),
                    ipv4_dst: Some(Ipv4Match::exact(std::net::Ipv4Addr::from(hi))),
                    ..Default::default()
                },
                actions: vec![],
            })
        };
        let mut adds = Vec::new();
        for dpid in 1..=3u64 {
            for lo in 1..=12u32 {
                for hi in (lo + 1)..=12 {
                    adds.push(flow(dpid, lo, hi, lo));
                }
            }
        }
        let del = |dpid: u64, cookie: u64, cookie_mask: u64| Decision::DeleteFlows {
            dpid: Dpid(dpid),
            cookie,
            cookie_mask,
        };
        let dels = vec![
            del(1, cookie::make(Kind::Base, 3, 0), LO_MASK),
            del(1, cookie::make(Kind::Base, 0, 3), HI_MASK),
            del(1, cookie::make(Kind::Base, 7, 0), LO_MASK),
            del(1, cookie::make(Kind::Base, 0, 9), HI_MASK),
            flow(1, 3, 4, 3), // re-added after the deletions: kept
            del(2, cookie::make(Kind::Pair, 5, 6), u64::MAX),
            del(2, cookie::make(Kind::Base, 11, 0), LO_MASK),
            del(3, 0, 0), // everything
            del(9, 0, 0), // unknown datapath
        ];
        let mut batched = FlowRegistry::default();
        let mut seq = FlowRegistry::default();
        assert_eq!(batched.apply(&adds), seq.apply(&adds));
        let d1 = batched.apply(&dels);
        let d2: i64 = dels.iter().map(|d| seq.apply_one(d)).sum();
        assert_eq!(d1, d2);
        assert!(d1 < -66, "{d1}");
        assert_eq!(batched.flows(None), seq.flows(None));
        assert!(batched.flows(Some(Dpid(3))).is_empty());
        assert_eq!(batched.len(), seq.len());
    }

    /// The compact registry of one datapath behaves exactly like a plain map
    /// from key to flow, also when key fingerprints collide (forced here by
    /// keeping 2 bits of them).
    #[test]
    fn compact_registry_equals_an_exact_map() {
        use daolinet_policy::{ActionSpec, FlowSpec, Ipv4Match, MatchSpec};
        for mask in [u64::MAX, 0b11] {
            let mut reg = DpFlows {
                key_mask: mask,
                ..DpFlows::default()
            };
            let mut exact: std::collections::HashMap<FlowKey, FlowSpec> = Default::default();
            // A small deterministic pseudo-random walk over 40 keys.
            let mut x: u64 = 0x1234_5678;
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            for _ in 0..5000 {
                let r = next();
                let k = (r % 40) as u32;
                let f = FlowSpec {
                    dpid: Dpid(1),
                    table: 0,
                    priority: 100 + (k % 2) as u16,
                    cookie: (r >> 8) % 4,
                    idle_timeout: 10,
                    hard_timeout: 0,
                    match_: MatchSpec {
                        in_port: Some(k),
                        eth_type: Some(ETH_TYPE_IPV4),
                        ipv4_dst: Some(Ipv4Match::exact(std::net::Ipv4Addr::from(k))),
                        ..Default::default()
                    },
                    actions: vec![ActionSpec::Output(((r >> 16) % 3) as u32)],
                };
                let key = (f.table, f.priority, f.match_.clone());
                match (r >> 32) % 8 {
                    0 => {
                        let c = (r >> 40) % 4;
                        let gone = reg.delete_where(|x| x == c);
                        let before = exact.len();
                        exact.retain(|_, f| f.cookie != c);
                        assert_eq!(gone, before - exact.len());
                    }
                    1 | 2 => {
                        let want = exact.get(&key).is_some_and(|g| g.cookie == f.cookie);
                        if want {
                            exact.remove(&key);
                        }
                        assert_eq!(reg.remove(f.table, f.priority, &f.match_, f.cookie), want);
                    }
                    _ => {
                        let new = i64::from(exact.insert(key, f.clone()).is_none());
                        assert_eq!(reg.add(&f), new);
                    }
                }
                assert_eq!(reg.len(), exact.len());
            }
            let mut a: Vec<FlowSpec> = reg.all().cloned().collect();
            let mut b: Vec<FlowSpec> = exact.into_values().collect();
            let by = |f: &FlowSpec| format!("{f:?}");
            a.sort_by_key(by);
            b.sort_by_key(by);
            assert_eq!(a, b);
            if mask != u64::MAX {
                assert!(!reg.collided.is_empty() || reg.index.len() <= 4);
            }
        }
    }

    #[test]
    fn mutations_publish_deletions_and_packet_in_is_recorded() {
        let ctl = Controller::open(Arc::new(MemStore::new()), Config::default()).unwrap();
        let mut rx = ctl.subscribe_decisions();
        let pool = ctl.pool();
        ctl.mutate(|m| {
            let mut ch = m.add_host(Host {
                name: "h1".into(),
                dpid: Dpid(1),
                ip: "192.168.0.1".parse().unwrap(),
                mac: "02:00:00:00:00:01".parse().unwrap(),
                uplink_port: 1,
                local_mac: None,
            })?;
            ch.extend(m.add_network(NetworkSpec {
                name: "n".into(),
                subnet: "10.0.0.0/24".parse().unwrap(),
                gateway: None,
                tenant: None,
                nat_out: None,
            })?);
            for (id, port) in [("a", 2), ("b", 3)] {
                ch.extend(m.add_container(
                    ContainerSpec {
                        id: id.into(),
                        name: None,
                        network: "n".into(),
                        ip: None,
                        mac: None,
                        host: "h1".into(),
                        port,
                    },
                    pool,
                )?);
            }
            Ok(ch)
        })
        .unwrap();
        let snap = ctl.snapshot().unwrap();
        let (a, b) = (&snap.model.containers["a"], &snap.model.containers["b"]);
        let pkt = Packet {
            eth_dst: MacAddr::BROADCAST,
            eth_src: a.mac,
            eth_type: ETH_TYPE_IPV4,
            l3: L3::Ipv4(Ipv4 {
                src: a.ip,
                dst: b.ip,
                proto: 17,
                ttl: 64,
                ports: Some((1, 2)),
                payload: vec![],
            }),
        };
        let out = ctl.packet_in(Dpid(1), a.port, &pkt.emit()).unwrap();
        assert_eq!(out.verdict, Verdict::SameHost);
        assert_eq!(ctl.flows(Some(Dpid(1))).unwrap().len(), 2);
        assert!(ctl.metrics_text().contains("daolinet_flows_installed 2"));
        // Disconnecting the pair deletes its flows and tells the OpenFlow side.
        while rx.try_recv().is_ok() {}
        ctl.mutate(|m| m.set_pair("a", "b", PairAction::Disconnect))
            .unwrap();
        assert_eq!(ctl.flows(None).unwrap(), vec![]);
        let sent = rx.try_recv().unwrap();
        assert!(sent
            .decisions
            .iter()
            .any(|d| matches!(d, Decision::DeleteFlows { dpid: Dpid(1), .. })));
        // A refused mutation changes nothing and publishes nothing.
        assert!(ctl
            .mutate(|m| m.set_pair("a", "zz", PairAction::Connect))
            .is_err());
        assert!(rx.try_recv().is_err());
        assert_eq!(ctl.snapshot().unwrap().model.policies.len(), 1);
    }
}
