//! The agent's set-up of its host for NAT-out (see `daolinet-natout`):
//! forwarding on the `dllocalN` LOCAL device and the uplink, the physical
//! pool masqueraded out of the uplink in DaoliNet's own nftables table, and
//! the pool routed to `dllocalN`, whose egress program feeds de-masqueraded
//! replies into the datapath as `in_port=LOCAL`. Everything is undone when
//! the agent stops ([`daolinet_natout::Guard`]).
//!
//! The pool is the controller's (`--physical-pool`): given with
//! `--nat-pool`, or read from the controller's API (`GET /api/settings`)
//! when the agent registers itself (`--api`).

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use daolinet_natout::{Guard, Plan, Pool, PoolRoute};

/// Time allowed for reading the settings.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

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
}
