//! The agent's set-up of its host for NAT-out (see `daolinet-natout`):
//! forwarding on the `dllocalN` LOCAL device and the uplink, the physical
//! pool masqueraded out of the uplink in DaoliNet's own nftables table, and
//! the pool routed to `dllocalN`, whose egress program feeds de-masqueraded
//! replies into the datapath as `in_port=LOCAL`. Everything is undone when
//! the agent stops ([`daolinet_natout::Guard`]).
//!
//! The pool is the controller's (`--physical-pool`): given with
//! `--nat-pool`, or read from the controller's API (`GET /api/settings`)
//! when the agent registers itself (`--api`). An agent may start before
//! the controller (at boot): the API is then asked again with backoff, on
//! a thread of its own, and the host is set up once it answers
//! ([`NatOut::from_api`]).

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use daolinet_natout::{Guard, Plan, Pool, PoolRoute};

/// Time allowed for reading the settings.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// First delay before asking the API again; doubles up to [`MAX_RETRY`].
const MIN_RETRY: Duration = Duration::from_millis(500);
/// Longest delay between two attempts.
const MAX_RETRY: Duration = Duration::from_secs(8);

/// The plan for an agent host: masquerade out of `uplink`, forward on the
/// LOCAL device and the uplink, route `pool` to the LOCAL device.
pub fn plan(pool: Pool, uplink: &str, local_dev: &str) -> Plan {
    Plan {
        pool,
        out_dev: uplink.to_string(),
        forward_devs: vec![local_dev.to_string(), uplink.to_string()],
        route: PoolRoute::Device(local_dev.to_string()),
    }
}

/// The physical pool from the controller's API (`GET {api}/api/settings`).
pub fn fetch_pool(api: &str, token: &str) -> Result<Pool> {
    let url = format!("{}/api/settings", api.trim_end_matches('/'));
    let agent = ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT).build();
    let v: serde_json::Value = agent
        .get(&url)
        .set("Authorization", &format!("Bearer {token}"))
        .call()
        .with_context(|| format!("GET {url}"))?
        .into_json()
        .with_context(|| format!("GET {url}: not JSON"))?;
    v["physical_pool"]
        .as_str()
        .ok_or_else(|| anyhow!("GET {url}: no physical_pool in {v}"))?
        .parse::<Pool>()
        .map_err(|e| anyhow!("GET {url}: physical_pool {e}"))
}

/// Set the host up; the guard undoes it.
pub fn nat_out(pool: Pool, uplink: &str, local_dev: &str) -> Result<Guard> {
    let g = Guard::apply(&plan(pool, uplink, local_dev))
        .map_err(|e| anyhow!("setting up NAT-out for {pool}: {e}"))?;
    tracing::info!(%pool, uplink, local = local_dev, applied = ?g.applied(), "NAT-out set up");
    Ok(g)
}

/// Where the host's NAT-out set-up stands.
#[derive(Debug)]
enum Slot {
    /// The pool is not known yet (the API is being asked).
    Waiting,
    /// Set up; undone on release.
    Done(Guard),
    /// Released (or the set-up failed): nothing is set up any more.
    Stopped,
}

type Shared = Arc<(Mutex<Slot>, Condvar)>;

/// The host's NAT-out set-up, now or once the controller's API told the
/// pool; [`NatOut::release`] undoes it, and a set-up still waiting then
/// never happens.
#[derive(Debug)]
pub struct NatOut(Shared);

impl NatOut {
    /// Set up now with a known pool.
    pub fn now(pool: Pool, uplink: &str, local_dev: &str) -> Result<NatOut> {
        let g = nat_out(pool, uplink, local_dev)?;
        Ok(NatOut(Arc::new((
            Mutex::new(Slot::Done(g)),
            Condvar::new(),
        ))))
    }

    /// Set up as soon as `GET {api}/api/settings` answers: asked now, then
    /// again with backoff while it fails (the controller not up yet), on a
    /// thread of its own.
    pub fn from_api(api: &str, token: &str, uplink: &str, local_dev: &str) -> Result<NatOut> {
        let shared: Shared = Arc::new((Mutex::new(Slot::Waiting), Condvar::new()));
        let (sh, api, token) = (shared.clone(), api.to_string(), token.to_string());
        let (uplink, local_dev) = (uplink.to_string(), local_dev.to_string());
        std::thread::Builder::new()
            .name("nat-out".into())
            .spawn(move || {
                let fetch = || fetch_pool(&api, &token);
                let apply = |p| nat_out(p, &uplink, &local_dev);
                wait_and_apply(&sh, fetch, apply);
            })
            .context("starting the NAT-out thread")?;
        Ok(NatOut(shared))
    }

    /// Whether the host is set up.
    pub fn is_set_up(&self) -> bool {
        matches!(
            *self.0 .0.lock().unwrap_or_else(PoisonError::into_inner),
            Slot::Done(_)
        )
    }

    /// Undo the set-up (or cancel the one still waiting).
    pub fn release(self) -> Result<(), String> {
        let (m, cv) = &*self.0;
        let mut slot = m.lock().unwrap_or_else(PoisonError::into_inner);
        let was = std::mem::replace(&mut *slot, Slot::Stopped);
        cv.notify_all();
        // Undone under the lock: the thread cannot set up meanwhile.
        match was {
            Slot::Done(g) => g.release(),
            Slot::Waiting | Slot::Stopped => Ok(()),
        }
    }
}

/// The NAT-out thread: `fetch` the pool until it answers (with backoff,
/// leaving early once released), then `apply` it unless released meanwhile.
fn wait_and_apply(
    shared: &Shared,
    mut fetch: impl FnMut() -> Result<Pool>,
    apply: impl FnOnce(Pool) -> Result<Guard>,
) {
    let (m, cv) = &**shared;
    let mut delay = MIN_RETRY;
    let mut warned = false;
    loop {
        match fetch() {
            Ok(pool) => {
                let mut slot = m.lock().unwrap_or_else(PoisonError::into_inner);
                if !matches!(*slot, Slot::Waiting) {
                    return;
                }
                *slot = match apply(pool) {
                    Ok(g) => Slot::Done(g),
                    Err(e) => {
                        tracing::error!("NAT-out not set up: {e:#}");
                        Slot::Stopped
                    }
                };
                return;
            }
            Err(e) if !warned => {
                tracing::warn!("NAT-out waits for the pool, asking the API again: {e:#}");
                warned = true;
            }
            Err(e) => tracing::debug!("NAT-out still waits for the pool: {e:#}"),
        }
        let slot = m.lock().unwrap_or_else(PoisonError::into_inner);
        let (slot, _) = cv
            .wait_timeout_while(slot, delay, |s| matches!(s, Slot::Waiting))
            .unwrap_or_else(PoisonError::into_inner);
        if !matches!(*slot, Slot::Waiting) {
            return;
        }
        delay = (delay * 2).min(MAX_RETRY);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_agent_host_masquerades_out_of_its_uplink_and_routes_the_pool_to_local() {
        let p = plan("172.31.0.0/16".parse().unwrap(), "eth0", "dllocal3");
        assert_eq!(p.out_dev, "eth0");
        assert_eq!(p.forward_devs, vec!["dllocal3", "eth0"]);
        assert_eq!(p.route, PoolRoute::Device("dllocal3".into()));
    }

    fn waiting() -> Shared {
        Arc::new((Mutex::new(Slot::Waiting), Condvar::new()))
    }

    #[test]
    fn the_pool_is_asked_again_until_the_api_answers() {
        let sh = waiting();
        let mut asked = 0;
        let fetch = || {
            asked += 1;
            if asked < 3 {
                Err(anyhow!("connection refused"))
            } else {
                Ok("172.31.0.0/16".parse().unwrap())
            }
        };
        let mut applied = None;
        wait_and_apply(&sh, fetch, |p| {
            applied = Some(p);
            Err(anyhow!("no nftables here"))
        });
        assert_eq!(applied, Some("172.31.0.0/16".parse().unwrap()));
        // A failed set-up is not retried (and nothing is held).
        assert!(matches!(*sh.0.lock().unwrap(), Slot::Stopped));
    }

    #[test]
    fn a_released_set_up_never_happens() {
        let sh = waiting();
        let nat = NatOut(sh.clone());
        let t = std::thread::spawn(move || {
            wait_and_apply(
                &sh,
                || Err(anyhow!("connection refused")),
                |_| panic!("applied after release"),
            );
        });
        nat.release().unwrap();
        // The thread leaves its backoff wait at once.
        t.join().unwrap();
        let sh = waiting();
        let nat = NatOut(sh.clone());
        assert!(!nat.is_set_up());
        nat.release().unwrap();
        let mut applied = false;
        wait_and_apply(
            &sh,
            || Ok("172.31.0.0/16".parse().unwrap()),
            |_| {
                applied = true;
                Err(anyhow!("unreachable"))
            },
        );
        assert!(!applied, "set up after release");
    }
}
