//! Leader election among controllers sharing an etcd store, on etcd leases
//! (the algorithm of etcd's own `concurrency.Election`, written on the KV
//! API so that every step has a deadline):
//!
//! - **campaign**: each controller grants a lease of [`ElectionConfig::ttl`]
//!   and creates the key `<prefix>leader/<lease id>` attached to it; the
//!   leader is the candidate whose key has the lowest create revision;
//! - **observe**: every controller watches `<prefix>leader/` and, on each
//!   change, reads the lowest key again: the leader's key's create revision,
//!   tagged with the set's [`SetTag`] ([`crate::generation`]), is the
//!   OpenFlow `generation_id` (it grows with every new leader, as OpenFlow
//!   requires, and names this set), the others are slaves ([`Role`]);
//! - the lease is kept alive every `ttl / 4`; a controller whose last
//!   acknowledged keep-alive was sent more than `3/4 ttl` ago **steps down**
//!   (etcd cannot have expired the lease yet, so two controllers never act
//!   as master at once) and campaigns again once etcd answers;
//! - a controller that stops resigns: it revokes its lease, which deletes
//!   its key, and the next candidate takes over at once.
//!
//! After a leader dies without resigning (`kill -9`), its lease expires
//! after `ttl` (etcd checks every 500 ms) and the next candidate is master:
//! failover takes `ttl` to `ttl + 0.5 s`. etcd refuses leases shorter than
//! 1.5 election timeouts (rounded up to whole seconds): a 1 s TTL needs
//! members started with `--election-timeout` of 600 ms or less; with
//! etcd's default (1000 ms) the shortest lease is 2 s.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    WatchOptions,
};
use tokio::sync::{oneshot, watch};

use crate::generation::{self, SetTag};
use crate::ofserver::Role;
use crate::store::EtcdStore;

/// Election settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionConfig {
    /// Lease time to live (whole seconds, at least 1).
    pub ttl: Duration,
    /// What identifies this controller to the others (shown as the
    /// leader's id).
    pub id: String,
    /// The set's tag, the high bits of every generation id it elects
    /// ([`crate::generation`]; kept in the store, see [`EtcdStore::set_tag`]).
    pub tag: SetTag,
}

/// The current leader as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// Its generation id (its key's create revision, tagged).
    pub generation: u64,
    /// Its id ([`ElectionConfig::id`]).
    pub id: String,
}

/// A running campaign: the role it gives this controller, the leader it
/// observes.
#[derive(Debug)]
pub struct Election {
    role: watch::Receiver<Role>,
    leader: watch::Receiver<Option<Leader>>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
}

impl Election {
    /// Starts campaigning on `store`'s etcd (on the store's runtime). The
    /// role is [`Role::Slave`] until this controller is elected.
    pub fn start(store: &EtcdStore, cfg: ElectionConfig) -> Election {
        let (role_tx, role) = watch::channel(Role::Slave { generation: None });
        let (leader_tx, leader) = watch::channel(None);
        let (stop_tx, stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let task = Campaign {
            client: store.client(),
            prefix: format!("{}leader/", store.config().prefix),
            cfg,
            role: role_tx,
            leader: leader_tx,
        };
        store.runtime().spawn(async move {
            task.run(stop_rx).await;
            let _ = done_tx.send(());
        });
        Election {
            role,
            leader,
            stop: Some(stop_tx),
            done: Some(done_rx),
        }
    }

    /// This controller's role, as it changes.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// The leader observed last (none while etcd does not answer).
    pub fn leader(&self) -> Option<Leader> {
        self.leader.borrow().clone()
    }

    /// Steps down and resigns (revokes the lease, so that another
    /// controller takes over at once); waits at most `within`.
    pub async fn resign(mut self, within: Duration) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            let _ = tokio::time::timeout(within, d).await;
        }
    }
}

/// The campaign task.
struct Campaign {
    client: Client,
    prefix: String,
    cfg: ElectionConfig,
    role: watch::Sender<Role>,
    leader: watch::Sender<Option<Leader>>,
}

/// Why the streams of a term ended.
enum Broken {
    /// etcd says the lease is gone.
    Lease(String),
    /// A stream broke (the lease may still be ours).
    Stream(String),
}

/// Why one term (one lease) ended.
enum End {
    /// Asked to stop.
    Stop,
    /// etcd stopped answering or the lease is gone: campaign again.
    Lost(String),
}

impl Campaign {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut pause = Duration::from_millis(100);
        loop {
            let lease = tokio::select! {
                r = self.grant() => r,
                _ = &mut stop => return self.step_down(),
            };
            let (id, ttl) = match lease {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(error = %e, "leader election: cannot get a lease");
                    self.step_down();
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = &mut stop => return,
                    }
                    pause = (pause * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            pause = Duration::from_millis(100);
            let end = self.term(id, ttl, &mut stop).await;
            self.step_down();
            // Without our key the others need not wait for the lease to
            // expire (best effort: etcd may be what is gone).
            let mut lc = self.client.lease_client();
            let _ = tokio::time::timeout(Duration::from_millis(500), lc.revoke(id)).await;
            match end {
                End::Stop => return,
                End::Lost(why) => {
                    tracing::warn!(reason = %why, "leader election: lost etcd; campaigning again");
                }
            }
        }
    }

    fn step_down(&self) {
        let generation = self.leader.borrow().as_ref().map(|l| l.generation);
        self.role.send_if_modified(|r| {
            let new = Role::Slave { generation };
            if matches!(r, Role::Master { .. }) {
                tracing::warn!("stepping down: no longer the leader");
            }
            let changed = *r != new;
            *r = new;
            changed
        });
    }

    async fn grant(&mut self) -> Result<(i64, Duration), etcd_client::Error> {
        let mut lc = self.client.lease_client();
        let want = i64::try_from(self.cfg.ttl.as_secs().max(1)).unwrap_or(1);
        let r = lc.grant(want, None).await?;
        // etcd may raise a short TTL to its minimum.
        let ttl = Duration::from_secs(u64::try_from(r.ttl()).unwrap_or(1).max(1));
        if r.ttl() > want {
            tracing::warn!(asked = want, granted = r.ttl(), "etcd raised the lease TTL to its minimum (1.5 election timeouts): failover takes longer");
        }
        Ok((r.id(), ttl))
    }

    /// One lease's term: create our key, keep the lease alive, follow the
    /// leader until the lease is lost or we are asked to stop. A broken
    /// stream (the etcd member we talk to died) is opened again, on another
    /// member, while the lease is still safely ours.
    async fn term(&mut self, lease: i64, ttl: Duration, stop: &mut oneshot::Receiver<()>) -> End {
        let granted_at = Instant::now();
        // Step down this long after the last acknowledged keep-alive was
        // sent: etcd expires the lease `ttl` after it at the earliest.
        let safe = ttl - ttl / 4;
        let mut last_ok = granted_at;
        let key = format!("{}{lease:016x}", self.prefix);
        let mut campaigned = false;
        let mut why = String::new();
        loop {
            if last_ok.elapsed() >= safe {
                return End::Lost(why);
            }
            if !campaigned {
                let mut kv = self.client.kv_client();
                let txn = Txn::new()
                    .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key.clone(),
                        self.cfg.id.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    )]);
                match kv.txn(txn).await {
                    Ok(_) => campaigned = true,
                    Err(e) => why = format!("campaign: {e}"),
                }
            }
            if campaigned {
                match self
                    .streams(lease, &key, ttl, safe, &mut last_ok, stop)
                    .await
                {
                    Ok(()) => return End::Stop,
                    Err(Broken::Lease(w)) => return End::Lost(w),
                    Err(Broken::Stream(w)) => why = w,
                }
            }
            tracing::debug!(reason = %why, "leader election: opening the streams again");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = &mut *stop => return End::Stop,
            }
        }
    }

    /// Keeps the lease alive and follows the leader over one keep-alive
    /// stream and one watch; `Ok` when asked to stop.
    async fn streams(
        &mut self,
        lease: i64,
        key: &str,
        ttl: Duration,
        safe: Duration,
        last_ok: &mut Instant,
        stop: &mut oneshot::Receiver<()>,
    ) -> Result<(), Broken> {
        let mut wc = self.client.watch_client();
        let (_watcher, mut events) = wc
            .watch(self.prefix.clone(), Some(WatchOptions::new().with_prefix()))
            .await
            .map_err(|e| Broken::Stream(format!("observe: {e}")))?
            .split();
        let mut lc = self.client.lease_client();
        // keep_alive() sends the first keep-alive request itself.
        let first = Instant::now();
        let (mut keeper, mut acks) = lc
            .keep_alive(lease)
            .await
            .map_err(|e| Broken::Stream(format!("keep-alive: {e}")))?;
        let mut sent: VecDeque<Instant> = VecDeque::from([first]);
        let mut tick = tokio::time::interval(ttl / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        let mut evaluate = true;
        loop {
            if evaluate {
                evaluate = false;
                // A role decided on an old acknowledgement would not be safe.
                if last_ok.elapsed() >= safe {
                    return Err(Broken::Stream("keep-alive unanswered".into()));
                }
                self.observe(key)
                    .await
                    .map_err(|e| Broken::Stream(format!("observe: {e}")))?;
            }
            let deadline = tokio::time::Instant::from_std(*last_ok + safe);
            tokio::select! {
                _ = tick.tick() => {
                    sent.push_back(Instant::now());
                    if sent.len() > 64 {
                        sent.pop_front();
                    }
                    keeper
                        .keep_alive()
                        .await
                        .map_err(|e| Broken::Stream(format!("keep-alive: {e}")))?;
                }
                m = acks.message() => match m {
                    Ok(Some(r)) if r.ttl() > 0 => {
                        if let Some(t) = sent.pop_front() {
                            *last_ok = (*last_ok).max(t);
                        }
                    }
                    Ok(Some(_)) => return Err(Broken::Lease("lease expired".into())),
                    Ok(None) => return Err(Broken::Stream("keep-alive stream closed".into())),
                    Err(e) => return Err(Broken::Stream(format!("keep-alive: {e}"))),
                },
                e = events.message() => match e {
                    Ok(Some(r)) if r.canceled() => return Err(Broken::Stream("observe cancelled".into())),
                    Ok(Some(_)) => evaluate = true,
                    Ok(None) => return Err(Broken::Stream("observe stream closed".into())),
                    Err(e) => return Err(Broken::Stream(format!("observe: {e}"))),
                },
                _ = tokio::time::sleep_until(deadline) => {
                    // Not safely ours any more: stop acting now; the lease
                    // may still be renewed if etcd answers in time.
                    self.step_down();
                    return Err(Broken::Stream("keep-alive unanswered".into()));
                }
                _ = &mut *stop => return Ok(()),
            }
        }
    }

    /// Reads the leader (lowest create revision) and sets our role.
    async fn observe(&mut self, ours: &str) -> Result<(), etcd_client::Error> {
        let mut kv = self.client.kv_client();
        let r = kv
            .get(
                self.prefix.clone(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Create, SortOrder::Ascend)
                        .with_limit(1),
                ),
            )
            .await?;
        let leader = r.kvs().first().map(|kv| {
            (
                kv.key().to_vec(),
                Leader {
                    generation: generation::generation(
                        self.cfg.tag,
                        u64::try_from(kv.create_revision()).unwrap_or(0),
                    ),
                    id: String::from_utf8_lossy(kv.value()).into_owned(),
                },
            )
        });
        let role = match &leader {
            Some((k, l)) if k == ours.as_bytes() => Role::Master {
                generation: l.generation,
            },
            Some((_, l)) => Role::Slave {
                generation: Some(l.generation),
            },
            None => Role::Slave { generation: None },
        };
        let leader = leader.map(|(_, l)| l);
        self.leader.send_if_modified(|l| {
            let changed = *l != leader;
            *l = leader.clone();
            changed
        });
        self.role.send_if_modified(|r| {
            if *r == role {
                return false;
            }
            match role {
                Role::Master { generation } => {
                    tracing::info!(generation, "elected leader")
                }
                Role::Slave {
                    generation: Some(g),
                } => tracing::info!(leader_generation = g, leader = ?leader.as_ref().map(|l| &l.id), "following the leader"),
                _ => {}
            }
            *r = role;
            true
        });
        Ok(())
    }
}

/// A TTL from whole seconds (`--lease-ttl`).
pub fn ttl_secs(s: u64) -> Duration {
    Duration::from_secs(s.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_whole_seconds_and_at_least_one() {
        assert_eq!(ttl_secs(0), Duration::from_secs(1));
        assert_eq!(ttl_secs(3), Duration::from_secs(3));
    }
}
