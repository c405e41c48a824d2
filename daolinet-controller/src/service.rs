//! The running controller's state: the store, the current model snapshot,
//! the flows it has installed, and the metrics. Every mutation goes through
//! [`Controller::mutate`]: validate on a copy of the model, persist the
//! changes in one store transaction, then publish the new snapshot and the
//! flow decisions the change implies.

use foldhash::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::addr::{Dpid, Ipv4Net};
use crate::metrics::Metrics;
use crate::model::{Change, Model, ModelError};
use crate::policy::{self, Config, Decision, FlowSpec, MatchSpec, Outcome, Snapshot};
use crate::store::{batch_of, load_model, Store, StoreError};

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

/// The flows the controller has sent, per datapath (what is installed where,
/// as far as the controller knows: deletions it sent and FLOW_REMOVED
/// reports from the switches take flows out).
#[derive(Debug, Default, Clone)]
pub struct FlowRegistry {
    flows: HashMap<Dpid, HashMap<FlowKey, FlowSpec>>,
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
        let before = v.len();
        v.retain(|_, f| !by_mask.iter().any(|(m, set)| set.contains(&(f.cookie & m))));
        let gone = before - v.len();
        if v.is_empty() {
            self.flows.remove(dpid);
        }
        -(gone as i64)
    }

    fn apply_one(&mut self, d: &Decision) -> i64 {
        match d {
            Decision::AddFlow(f) => {
                let key = (f.table, f.priority, f.match_.clone());
                let v = self.flows.entry(f.dpid).or_default();
                match v.entry(key) {
                    // Under load most decisions repeat a recorded flow: no
                    // allocation unless it changed.
                    std::collections::hash_map::Entry::Occupied(mut e) => {
                        if e.get() != f {
                            e.get_mut().clone_from(f);
                        }
                        0
                    }
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(f.clone());
                        1
                    }
                }
            }
            Decision::DeleteFlows {
                dpid,
                cookie,
                cookie_mask,
            } => {
                let Some(v) = self.flows.get_mut(dpid) else {
                    return 0;
                };
                let before = v.len();
                v.retain(|_, f| !policy::cookie::matches(f.cookie, *cookie, *cookie_mask));
                let gone = before - v.len();
                if v.is_empty() {
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
        let key = (table, priority, m.clone());
        if v.get(&key).is_some_and(|f| f.cookie == cookie) {
            v.remove(&key);
            if v.is_empty() {
                self.flows.remove(&dpid);
            }
            true
        } else {
            false
        }
    }

    /// Flows of one datapath, or of all, ordered by datapath, table,
    /// descending priority, cookie.
    pub fn flows(&self, dpid: Option<Dpid>) -> Vec<FlowSpec> {
        let mut out: Vec<FlowSpec> = self
            .flows
            .iter()
            .filter(|(d, _)| dpid.is_none_or(|x| x == **d))
            .flat_map(|(_, v)| v.values().cloned())
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
        self.flows.values().map(HashMap::len).sum()
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

    fn apply(&self, ds: &[Decision]) -> Result<u64, ServiceError> {
        let mut delta = 0;
        let mut i = 0;
        while let Some(first) = ds.get(i) {
            // Runs of decisions for one datapath take its lock once.
            let dpid = first.dpid();
            let n = ds[i..].iter().take_while(|d| d.dpid() == dpid).count();
            delta += self.shard(dpid)?.apply(&ds[i..i + n]);
            i += n;
        }
        let t = self.total.fetch_add(delta, Ordering::Relaxed) + delta;
        Ok(u64::try_from(t).unwrap_or(0))
    }
}

/// The controller.
pub struct Controller {
    store: Arc<dyn Store>,
    /// Serialises mutations (validate, persist, publish).
    write: Mutex<()>,
    /// The current snapshot: read without locks on every PACKET_IN.
    snap: ArcSwap<Snapshot>,
    flows: Flows,
    /// Policy settings.
    pub cfg: Config,
    /// Metrics.
    pub metrics: Metrics,
    decisions: tokio::sync::broadcast::Sender<Arc<Vec<Decision>>>,
    model_rev: tokio::sync::watch::Sender<u64>,
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
        let model = load_model(store.as_ref())?;
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
            write: Mutex::new(()),
            snap: ArcSwap::from_pointee(Snapshot::new(model)),
            flows: Flows::new(),
            cfg,
            metrics: Metrics::default(),
            decisions: tokio::sync::broadcast::channel(1024).0,
            model_rev: tokio::sync::watch::channel(0).0,
        })
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
    /// returns; on any error nothing changed.
    pub fn mutate<F>(&self, f: F) -> Result<Vec<Change>, ServiceError>
    where
        F: FnOnce(&mut Model) -> Result<Vec<Change>, ModelError>,
    {
        let _w = self.write.lock().map_err(|_| ServiceError::Poisoned)?;
        let old = self.snap.load_full();
        let mut model = old.model.clone();
        let changes = f(&mut model)?;
        self.store.apply(batch_of(&changes)?)?;
        let new = Arc::new(Snapshot::new(model));
        let decisions = policy::handle_model_change(&old, &new, &self.cfg, &changes);
        let n = self.flows.apply(&decisions)?;
        self.snap.store(new);
        if !decisions.is_empty() {
            // Without subscribers (no OpenFlow server running) this is a no-op.
            let _ = self.decisions.send(Arc::new(decisions));
        }
        self.metrics.set_flows_installed(n);
        self.metrics.api_mutation();
        self.model_rev.send_modify(|r| *r += 1);
        Ok(changes)
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
        let snap = self.snap.load();
        let out = policy::handle_packet_in(&snap, &self.cfg, dpid, in_port, data);
        let n = self.flows.apply(&out.decisions)?;
        self.metrics.set_flows_installed(n);
        Ok(out)
    }

    /// A datapath completed its handshake: the decisions that (re)initialise
    /// it (delete everything of ours, base and firewall flows), recorded.
    pub fn switch_connected(&self, dpid: Dpid) -> Result<Vec<Decision>, ServiceError> {
        let snap = self.snap.load();
        let ds = policy::handle_switch_connected(&snap, &self.cfg, dpid);
        let n = self.flows.apply(&ds)?;
        self.metrics.set_flows_installed(n);
        Ok(ds)
    }

    /// A datapath disconnected for good: the deletions for the other
    /// datapaths, recorded.
    pub fn host_gone(&self, dpid: Dpid) -> Result<Vec<Decision>, ServiceError> {
        let snap = self.snap.load();
        let ds = policy::handle_host_gone(&snap, dpid);
        let n = self.flows.apply(&ds)?;
        self.metrics.set_flows_installed(n);
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
            let t = self.flows.total.fetch_sub(1, Ordering::Relaxed) - 1;
            self.metrics
                .set_flows_installed(u64::try_from(t).unwrap_or(0));
        }
        Ok(gone)
    }

    /// Subscribes to the decisions produced by mutations, which the
    /// OpenFlow server must send to the switches.
    pub fn subscribe_decisions(&self) -> tokio::sync::broadcast::Receiver<Arc<Vec<Decision>>> {
        self.decisions.subscribe()
    }

    /// Watches the model revision (bumped by every accepted mutation, also
    /// those that imply no flow decision, e.g. a new host).
    pub fn subscribe_model(&self) -> tokio::sync::watch::Receiver<u64> {
        self.model_rev.subscribe()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::MacAddr;
    use crate::model::{ContainerSpec, Host, NetworkSpec, PairAction};
    use crate::policy::{Ipv4, Packet, Verdict, ETH_TYPE_IPV4, L3};
    use crate::store::MemStore;

    /// Batched deletions (one pass per datapath) leave exactly what the
    /// deletions applied one by one leave.
    #[test]
    fn batched_deletions_equal_sequential_ones() {
        use crate::policy::cookie::{self, Kind, HI_MASK, LO_MASK};
        use crate::policy::{FlowSpec, Ipv4Match, MatchSpec};
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
        assert!(ctl.metrics.render().contains("daolinet_flows_installed 2"));
        // Disconnecting the pair deletes its flows and tells the OpenFlow side.
        while rx.try_recv().is_ok() {}
        ctl.mutate(|m| m.set_pair("a", "b", PairAction::Disconnect))
            .unwrap();
        assert_eq!(ctl.flows(None).unwrap(), vec![]);
        let sent = rx.try_recv().unwrap();
        assert!(sent
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
