//! Registration of the plan with a DaoliNet controller's REST API.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::plan::Plan;

fn post(agent: &ureq::Agent, url: &str, token: &str, body: Value) -> Result<bool> {
    match agent
        .post(url)
        .set("Authorization", &format!("Bearer {token}"))
        .send_json(body)
    {
        Ok(_) => Ok(true),
        // Already there (a re-run against the same store).
        Err(ureq::Error::Status(409, _)) => Ok(false),
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            bail!("POST {url}: HTTP {code}: {}", text.trim())
        }
        Err(e) => bail!("POST {url}: {e}"),
    }
}

/// Registers every host, the network and every container of `plan`.
pub fn register(api: &str, token_file: &Path, plan: &Plan) -> Result<()> {
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("reading the API token from {}", token_file.display()))?;
    let token = token.trim();
    if token.is_empty() {
        bail!("{} is empty", token_file.display());
    }
    let base = api.trim_end_matches('/');
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let mut created = 0usize;
    let mut existing = 0usize;
    let mut count = |new: bool| {
        if new {
            created += 1
        } else {
            existing += 1
        }
    };
    for s in 0..plan.switches {
        let body = serde_json::to_value(plan.host(s))?;
        count(post(&agent, &format!("{base}/api/hosts"), token, body)?);
    }
    let body = serde_json::to_value(plan.network())?;
    count(post(&agent, &format!("{base}/api/networks"), token, body)?);
    for s in 0..plan.switches {
        for j in 0..plan.containers {
            let body = serde_json::to_value(plan.container_spec(s, j))?;
            count(post(
                &agent,
                &format!("{base}/api/containers"),
                token,
                body,
            )?);
        }
    }
    eprintln!(
        "registered {} hosts, 1 network, {} containers ({created} created, {existing} already there)",
        plan.switches,
        plan.switches * plan.containers
    );
    Ok(())
}
