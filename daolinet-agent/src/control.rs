//! The control socket protocol, `<state-dir>/agent.sock`: one JSON
//! request per line, one JSON reply per line (`{"ok": ...}` or
//! `{"error": "..."}`). The event loop serves it ([`crate::runtime`]);
//! [`request`] is the client the command line uses. The container
//! runtimes' integrations (`daolinet-attach`) use `info`, `ports`,
//! `port_add`, `port_del` and `drain`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

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
    /// What the agent is: its host's name and the controller's API it
    /// registered with, its state directory, its datapath id.
    Info,
    /// Drain the deferred-deletion queue now (a runtime just queued one).
    Drain,
}

/// The answer to `info`: what a runtime integration needs to register a
/// container on this host.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Info {
    /// The name the host is registered under (with `--api`).
    pub host: Option<String>,
    /// The controller's REST API (with `--api`).
    pub api: Option<String>,
    /// The file holding the API token (with `--api`).
    pub api_token_file: Option<PathBuf>,
    /// The state directory (control socket, ports kept, deferred-deletion
    /// queue).
    pub state_dir: PathBuf,
    /// The datapath id, in hex.
    pub datapath_id: String,
}

/// What the control socket serves besides the engine.
#[derive(Default)]
pub struct ControlState {
    /// The answer to `info`.
    pub info: Info,
    /// Ports added with `port add`, attached again on the next start.
    pub book: Option<crate::portbook::PortBook>,
    /// Wakes the deferred-deletion drainer.
    pub drainer: Option<crate::delqueue::Drainer>,
}

impl ControlState {
    /// Forget ports that are gone (their interface disappeared).
    pub fn ports_gone(&mut self, ifaces: &[String]) {
        if let Some(b) = &mut self.book {
            if let Err(e) = b.remove(ifaces) {
                tracing::warn!("updating the kept ports: {e:#}");
            }
        }
    }
}

/// Whether `line` is a [`Request::Status`] (answered by the event loop,
/// which owns the controller links: [`crate::status::answer`]).
pub fn is_status(line: &str) -> bool {
    matches!(serde_json::from_str::<Request>(line), Ok(Request::Status))
}

/// Answer one request line: the reply line (without its newline).
pub fn answer<D: Dataplane>(eng: &mut Engine<D>, ctx: &mut ControlState, line: &str) -> String {
    let reply = match serde_json::from_str::<Request>(line) {
        Err(e) => serde_json::json!({ "error": format!("bad request: {e}") }),
        Ok(req) => match handle(eng, ctx, req) {
            Ok(v) => serde_json::json!({ "ok": v }),
            Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
        },
    };
    reply.to_string()
}

fn handle<D: Dataplane>(
    eng: &mut Engine<D>,
    ctx: &mut ControlState,
    req: Request,
) -> Result<serde_json::Value> {
    Ok(match req {
        Request::Ports => eng.dp.port_list()?,
        Request::PortAdd { iface, ofport } => {
            let p = eng.add_port(&iface, ofport, PortKind::Container)?;
            if let Some(b) = &mut ctx.book {
                if let Err(e) = b.add(&iface, p) {
                    // Attached, but a restart would not attach it again.
                    tracing::warn!(iface, "keeping the port for the next start: {e:#}");
                }
            }
            serde_json::json!({ "ofport": p })
        }
        Request::PortDel { iface } => {
            eng.del_port(&iface)?;
            ctx.ports_gone(std::slice::from_ref(&iface));
            serde_json::json!({ "removed": iface })
        }
        Request::Info => serde_json::to_value(&ctx.info)?,
        Request::Drain => {
            let queued =
                daolinet_attach::queue::list(&daolinet_attach::queue::dir(&ctx.info.state_dir))
                    .len();
            if let Some(d) = &ctx.drainer {
                d.poke();
            }
            serde_json::json!({ "queued": queued, "draining": ctx.drainer.is_some() })
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
