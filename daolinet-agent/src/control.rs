//! The control socket protocol, `<state-dir>/agent.sock`: one JSON
//! request per line, one JSON reply per line (`{"ok": ...}` or
//! `{"error": "..."}`). The event loop serves it ([`crate::runtime`]);
//! [`request`] is the client the command line uses.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use daolinet_common::PortKind;
use daolinet_openflow::{self as of, FlowMod};
use serde::{Deserialize, Serialize};

use crate::engine::{Dataplane, Engine};

/// A request on `<state-dir>/agent.sock`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// List ports with counters.
    Ports,
    /// Attach a container port.
    PortAdd {
        /// Interface name.
        iface: String,
        /// OpenFlow port number (next free when absent).
        ofport: Option<u32>,
    },
    /// Detach a port.
    PortDel {
        /// Interface name.
        iface: String,
    },
    /// Install a rule given in ovs-ofctl flow syntax (OpenFlow add semantics).
    RuleAdd {
        /// E.g. `priority=100,in_port=1,ip,nw_dst=10.0.0.2 actions=output:2`.
        flow: String,
    },
    /// Remove the rules whose cookie matches.
    RuleDel {
        /// Cookie value.
        cookie: u64,
        /// Cookie mask (all ones when absent).
        mask: Option<u64>,
    },
    /// Dump rules with counters, like `ovs-ofctl dump-flows`.
    Flows,
    /// What is wrong (controllers, attachment, full maps, punt rate
    /// limiting), switch counters, the last sampled drops.
    Status,
}

/// Whether `line` is a [`Request::Status`] (answered by the event loop,
/// which owns the controller links: [`crate::status::answer`]).
pub fn is_status(line: &str) -> bool {
    matches!(serde_json::from_str::<Request>(line), Ok(Request::Status))
}

/// Answer one request line: the reply line (without its newline).
pub fn answer<D: Dataplane>(eng: &mut Engine<D>, line: &str) -> String {
    let reply = match serde_json::from_str::<Request>(line) {
        Err(e) => serde_json::json!({ "error": format!("bad request: {e}") }),
        Ok(req) => match handle(eng, req) {
            Ok(v) => serde_json::json!({ "ok": v }),
            Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
        },
    };
    reply.to_string()
}

fn handle<D: Dataplane>(eng: &mut Engine<D>, req: Request) -> Result<serde_json::Value> {
    Ok(match req {
        Request::Ports => eng.dp.port_list()?,
        Request::PortAdd { iface, ofport } => {
            let p = eng.add_port(&iface, ofport, PortKind::Container)?;
            serde_json::json!({ "ofport": p })
        }
        Request::PortDel { iface } => {
            eng.del_port(&iface)?;
            serde_json::json!({ "removed": iface })
        }
        Request::RuleAdd { flow } => {
            let fm: FlowMod = flow
                .parse()
                .map_err(|e| anyhow!("bad flow {flow:?}: {e}"))?;
            if fm.command != of::OFPFC_ADD {
                anyhow::bail!("rule add takes a flow to add");
            }
            eng.local_flow_mod(&fm)?;
            serde_json::json!({ "added": 1 })
        }
        Request::RuleDel { cookie, mask } => {
            let fm =
                FlowMod::delete(of::Match::new()).cookie_match(cookie, mask.unwrap_or(u64::MAX));
            let n = eng.local_flow_mod(&fm)?;
            serde_json::json!({ "removed": n })
        }
        Request::Flows => serde_json::to_value(eng.dump_flows()?)?,
        Request::Status => serde_json::json!({
            "flows": eng.sw.flows.len(),
            "controllers": eng.controllers(),
            "counters": eng.sw.counters,
        }),
    })
}

/// Send one request to a running agent and return its `ok` value.
pub fn request(state_dir: &Path, req: &Request) -> Result<serde_json::Value> {
    let path = state_dir.join("agent.sock");
    let mut s = UnixStream::connect(&path).with_context(|| {
        format!(
            "cannot reach the agent at {} (is `daolinet-agent run` running with this --state-dir?)",
            path.display()
        )
    })?;
    writeln!(s, "{}", serde_json::to_string(req)?)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let v: serde_json::Value = serde_json::from_str(&line).context("bad reply from the agent")?;
    if let Some(e) = v.get("error") {
        return Err(anyhow!("{}", e.as_str().unwrap_or("agent error")));
    }
    Ok(v.get("ok").cloned().unwrap_or(serde_json::Value::Null))
}
