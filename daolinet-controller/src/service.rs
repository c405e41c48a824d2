//! The running controller's state: the store, the current model snapshot,
//! the flows it has installed, and the metrics. Every mutation goes through
//! [`Controller::mutate`]: validate on a copy of the model, persist the
//! changes in one store transaction, then publish the new snapshot and the
//! flow decisions the change implies.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::addr::{Dpid, Ipv4Net};
use crate::metrics::Metrics;
use crate::model::{Change, Model, ModelError};
use crate::policy::{self, Config, Decision, FlowSpec, Outcome, Snapshot};
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

/// The flows the controller has sent, per datapath (what is installed where,
/// as far as the controller knows; idle expiry is reported by the switches
/// once the OpenFlow server handles FLOW_REMOVED).
#[derive(Debug, Default, Clone)]
pub struct FlowRegistry {
    flows: BTreeMap<Dpid, Vec<FlowSpec>>,
}

impl FlowRegistry {
    /// Records decisions sent to the switches.
    pub fn apply(&mut self, ds: &[Decision]) {
        for d in ds {
            match d {
                Decision::AddFlow(f) => {
                    let v = self.flows.entry(f.dpid).or_default();
                    v.retain(|o| {
                        !(o.priority == f.priority && o.match_ == f.match_ && o.table == f.table)
                    });
                    v.push(f.clone());
                }
                Decision::DeleteFlows {
                    dpid,
                    cookie,
                    cookie_mask,
                } => {
                    if let Some(v) = self.flows.get_mut(dpid) {
                        v.retain(|f| !policy::cookie::matches(f.cookie, *cookie, *cookie_mask));
                    }
                }
                Decision::PacketOut { .. } => {}
            }
        }
    }

    /// Flows of one datapath, or of all.
    pub fn flows(&self, dpid: Option<Dpid>) -> Vec<FlowSpec> {
        self.flows
            .iter()
            .filter(|(d, _)| dpid.is_none_or(|x| x == **d))
            .flat_map(|(_, v)| v.iter().cloned())
            .collect()
    }

    /// Number of flows.
    pub fn len(&self) -> usize {
        self.flows.values().map(Vec::len).sum()
    }

    /// True when no flow is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct State {
    snap: Arc<Snapshot>,
    flows: FlowRegistry,
}

/// The controller.
pub struct Controller {
    store: Arc<dyn Store>,
    state: Mutex<State>,
    /// Policy settings.
    pub cfg: Config,
    /// Metrics.
    pub metrics: Metrics,
    decisions: tokio::sync::broadcast::Sender<Arc<Vec<Decision>>>,
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
            state: Mutex::new(State {
                snap: Arc::new(Snapshot::new(model)),
                flows: FlowRegistry::default(),
            }),
            cfg,
            metrics: Metrics::default(),
            decisions: tokio::sync::broadcast::channel(1024).0,
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, ServiceError> {
        self.state.lock().map_err(|_| ServiceError::Poisoned)
    }

    /// The physical IP pool.
    pub fn pool(&self) -> Ipv4Net {
        self.cfg.physical_pool
    }

    /// The current model snapshot.
    pub fn snapshot(&self) -> Result<Arc<Snapshot>, ServiceError> {
        Ok(self.lock()?.snap.clone())
    }

    /// Applies a mutation: on success the change is durable before this
    /// returns; on any error nothing changed.
    pub fn mutate<F>(&self, f: F) -> Result<Vec<Change>, ServiceError>
    where
        F: FnOnce(&mut Model) -> Result<Vec<Change>, ModelError>,
    {
        let mut st = self.lock()?;
        let old = st.snap.clone();
        let mut model = old.model.clone();
        let changes = f(&mut model)?;
        self.store.apply(batch_of(&changes)?)?;
        let new = Arc::new(Snapshot::new(model));
        let decisions = policy::handle_model_change(&old, &new, &self.cfg, &changes);
        st.flows.apply(&decisions);
        st.snap = new;
        if !decisions.is_empty() {
            // Without subscribers (no OpenFlow server yet) this is a no-op.
            let _ = self.decisions.send(Arc::new(decisions));
        }
        self.metrics.set_flows_installed(st.flows.len() as u64);
        self.metrics.api_mutation();
        Ok(changes)
    }

    /// Runs the policy on a PACKET_IN and records what it decided.
    pub fn packet_in(
        &self,
        dpid: Dpid,
        in_port: u32,
        data: &[u8],
    ) -> Result<Outcome, ServiceError> {
        let snap = self.snapshot()?;
        let t = Instant::now();
        let out = policy::handle_packet_in(&snap, &self.cfg, dpid, in_port, data);
        self.metrics.packet_in(t.elapsed(), &out.verdict);
        let mut st = self.lock()?;
        st.flows.apply(&out.decisions);
        self.metrics.set_flows_installed(st.flows.len() as u64);
        Ok(out)
    }

    /// Subscribes to the decisions produced by mutations, which the
    /// OpenFlow server must send to the switches.
    pub fn subscribe_decisions(&self) -> tokio::sync::broadcast::Receiver<Arc<Vec<Decision>>> {
        self.decisions.subscribe()
    }

    /// Flows recorded for one datapath or all.
    pub fn flows(&self, dpid: Option<Dpid>) -> Result<Vec<FlowSpec>, ServiceError> {
        Ok(self.lock()?.flows.flows(dpid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::MacAddr;
    use crate::model::{ContainerSpec, Host, NetworkSpec, PairAction};
    use crate::policy::{Ipv4, Packet, Verdict, ETH_TYPE_IPV4, L3};
    use crate::store::MemStore;

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
