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
//! - **followers watch the leader's lease**: every [`SILENCE_POLL`] they
//!   ask etcd how long it has left. etcd answers in whole seconds rounded
//!   down, and a leader that keeps its lease alive never lets it fall below
//!   TTL - 1 s: an answer of 0 s means etcd has heard nothing from the
//!   leader for more than TTL - 1 s ([`leader_silent`]). The follower then
//!   revokes that lease, which deletes the leader's key, and the next
//!   candidate takes over without waiting for etcd to expire the lease
//!   (which etcd does up to 500 ms after its TTL: it checks every 500 ms);
//! - the lease is kept alive every [`keepalive_every`]; a controller whose
//!   last acknowledged keep-alive was sent more than [`step_down_after`]
//!   ago **steps down**: no other controller can have taken its place yet
//!   (neither by revoking its lease nor by etcd expiring it,
//!   [`silence_limit`]), so two controllers never act as master at once;
//!   it campaigns again once etcd answers;
//! - a controller that stops resigns: it revokes its lease, which deletes
//!   its key, and the next candidate takes over at once.
//!
//! After a leader dies without resigning (`kill -9`), the next candidate
//! is master [`silence_limit`] after the leader's last keep-alive reached
//! etcd (at most [`keepalive_every`] before its death), plus up to one
//! [`SILENCE_POLL`], the revocation (one etcd write) and the election: with
//! the default 2 s lease, 0.75 s to 1.1 s after the death plus those round
//! trips. With 1 s leases etcd always answers 0 s, so followers cannot
//! tell, and the lease has to expire: 0.75 s to 1.5 s. etcd refuses leases
//! shorter than 1.5 election timeouts (rounded up to whole seconds): 2 s
//! leases work with etcd's default election timeout (1000 ms); 1 s needs
//! members started with `--election-timeout` of 600 ms or less.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, LeaseClient, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, WatchOptions,
};
use tokio::sync::{oneshot, watch};

use crate::generation::{self, SetTag};
use crate::ofserver::Role;
use crate::store::EtcdStore;

/// How often a follower asks etcd how long the leader's lease has left.
pub const SILENCE_POLL: Duration = Duration::from_millis(100);

/// How long after a leader's last keep-alive reached etcd another
/// controller may take its place: a follower revokes its lease once etcd
/// reports less than 1 s left ([`leader_silent`]), TTL - 1 s after that
/// keep-alive; 1 s leases cannot be told apart (etcd always reports 0 s)
/// and expire after their TTL.
pub fn silence_limit(ttl: Duration) -> Duration {
    let secs = ttl.as_secs().max(1);
    Duration::from_secs(if secs >= 2 { secs - 1 } else { secs })
}

/// How long a leader acts without an acknowledged keep-alive: 3/4 of
/// [`silence_limit`] after the last acknowledged one was sent (etcd got it
/// after that), so it has stopped before anybody may take its place.
pub fn step_down_after(ttl: Duration) -> Duration {
    silence_limit(ttl) * 3 / 4
}

/// How often the lease is kept alive: three tries before
/// [`step_down_after`].
pub fn keepalive_every(ttl: Duration) -> Duration {
    step_down_after(ttl) / 3
}

/// Whether the leader's lease, as etcd reports it (`granted`: its TTL,
/// `remaining`: whole seconds left, rounded down; negative once expired),
/// shows a leader etcd has not heard from for more than [`silence_limit`]:
/// less than 1 s left of a lease of 2 s or more. A live leader renews
/// every [`keepalive_every`], so its lease always has more than TTL - 1 s
/// left. Leases of 1 s always show 0 s: never silent, they expire.
pub fn leader_silent(granted: i64, remaining: i64) -> bool {
    granted >= 2 && remaining <= 0
}

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
            leader_lease: None,
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
    /// The leader's lease when another controller leads.
    leader_lease: Option<i64>,
}

/// A follower's check of the leader's lease in flight: the lease it
/// revoked, if it did.
type Check = Pin<Box<dyn Future<Output = Option<i64>> + Send>>;

/// Asks etcd how long `lease` (the leader's) has left and revokes it if it
/// shows a silent leader ([`leader_silent`]); the lease if revoked.
async fn revoke_if_silent(mut lc: LeaseClient, lease: i64) -> Option<i64> {
    let r = tokio::time::timeout(SILENCE_POLL * 5, lc.time_to_live(lease, None))
        .await
        .ok()?
        .ok()?;
    if !leader_silent(r.granted_ttl(), r.ttl()) {
        return None;
    }
    tokio::time::timeout(Duration::from_millis(500), lc.revoke(lease))
        .await
        .ok()?
        .ok()?;
    Some(lease)
}

/// The check in flight's result; never, without one.
async fn checked(check: &mut Option<Check>) -> Option<i64> {
    match check {
        Some(c) => c.as_mut().await,
        None => std::future::pending().await,
    }
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
        // sent: nobody takes our place before `silence_limit` after it.
        let safe = step_down_after(ttl);
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
        let mut tick = tokio::time::interval(keepalive_every(ttl));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        // Following: the leader's lease, checked every SILENCE_POLL.
        let mut poll = tokio::time::interval(SILENCE_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut check: Option<Check> = None;
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
                _ = poll.tick(), if check.is_none() => {
                    if let Some(l) = self.leader_lease {
                        check = Some(Box::pin(revoke_if_silent(self.client.lease_client(), l)));
                    }
                }
                revoked = checked(&mut check) => {
                    check = None;
                    if let Some(l) = revoked {
                        tracing::warn!(
                            lease = %format!("{l:016x}"),
                            "the leader's lease was not kept alive for over {:?}: revoked it, the next candidate takes over",
                            silence_limit(ttl)
                        );
                    }
                }
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
        self.leader_lease = r
            .kvs()
            .first()
            .filter(|kv| kv.key() != ours.as_bytes() && kv.lease() != 0)
            .map(|kv| kv.lease());
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

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn timings_of_the_default_and_other_leases() {
        // (ttl, silence limit, step down after, keep alive every)
        for (ttl, limit, down, every) in [
            (1, 1000, 750, 250),
            (2, 1000, 750, 250),
            (3, 2000, 1500, 500),
            (5, 4000, 3000, 1000),
        ] {
            let ttl = ttl_secs(ttl);
            assert_eq!(silence_limit(ttl), MS(limit), "{ttl:?}");
            assert_eq!(step_down_after(ttl), MS(down), "{ttl:?}");
            assert_eq!(keepalive_every(ttl), MS(every), "{ttl:?}");
        }
    }

    /// What etcd reports of a lease of `ttl` whose last keep-alive arrived
    /// `since` ago: whole seconds left, rounded down (towards zero).
    fn reported(ttl: Duration, since: Duration) -> i64 {
        let left = ttl.as_secs_f64() - since.as_secs_f64();
        left.trunc() as i64
    }

    #[test]
    fn a_leader_steps_down_before_anybody_may_replace_it() {
        for s in 1..=60 {
            let ttl = ttl_secs(s);
            let (limit, down) = (silence_limit(ttl), step_down_after(ttl));
            assert!(down < limit, "{ttl:?}: {down:?} >= {limit:?}");
            assert!(limit <= ttl, "{ttl:?}");
            // Three keep-alives fit before stepping down.
            assert!(keepalive_every(ttl) * 3 <= down, "{ttl:?}");
            // Up to its step-down, nobody sees it silent (etcd heard its
            // last keep-alive no earlier than it was sent).
            let mut t = Duration::ZERO;
            while t <= down {
                assert!(
                    !leader_silent(s as i64, reported(ttl, t)),
                    "{ttl:?}: silent after {t:?}"
                );
                t += MS(10);
            }
        }
    }

    #[test]
    fn followers_see_a_dead_leader_after_the_silence_limit() {
        for s in 2..=60 {
            let ttl = ttl_secs(s);
            let limit = silence_limit(ttl);
            assert!(!leader_silent(s as i64, reported(ttl, limit - MS(10))));
            assert!(leader_silent(s as i64, reported(ttl, limit + MS(10))));
            // Expired but not yet revoked: still silent.
            assert!(leader_silent(s as i64, reported(ttl, ttl + MS(300))));
        }
    }

    #[test]
    fn one_second_leases_are_never_seen_silent_they_expire() {
        // etcd reports 0 s left all along a 1 s lease.
        for ms in [1, 10, 250, 900, 999, 1300] {
            assert_eq!(reported(ttl_secs(1), MS(ms)), 0);
            assert!(!leader_silent(1, reported(ttl_secs(1), MS(ms))));
        }
        assert_eq!(silence_limit(ttl_secs(1)), ttl_secs(1));
    }
}
