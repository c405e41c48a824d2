//! The running agent: datapath + rule table + ports, and the control
//! socket protocol (one JSON request per line, one JSON reply per line).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};
use daolinet_common::PortKind;
use serde::{Deserialize, Serialize};

use crate::compile::{compile_instructions, compile_match};
use crate::datapath::{Datapath, UplinkMode};
use crate::table::{Rule, RuleTable};

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
    /// Install a rule given in ovs-ofctl flow syntax.
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
}

/// The agent state shared by the control socket and the punt reader.
pub struct Agent {
    /// The loaded datapath.
    pub dp: Datapath,
    /// The userspace rule table.
    pub table: RuleTable,
    /// Uplink attach mode.
    pub uplink_mode: UplinkMode,
}

impl Agent {
    /// Attach a port; `ofport` defaults to the next free number.
    pub fn add_port(&mut self, iface: &str, ofport: Option<u32>, kind: PortKind) -> Result<u32> {
        let ofport = match ofport {
            Some(p) => p,
            None => self.dp.ports()?.iter().map(|p| p.ofport).max().unwrap_or(0) + 1,
        };
        self.dp.attach_port(iface, ofport, kind, self.uplink_mode)?;
        tracing::info!(iface, ofport, ?kind, "port attached");
        Ok(ofport)
    }

    /// Install a rule in the table and the maps.
    pub fn add_rule(&mut self, rule: Rule) -> Result<u32> {
        let (id, ops) = self.table.insert(rule)?;
        self.dp.apply(&ops)?;
        Ok(id)
    }

    /// Remove the rules matching a cookie; returns how many.
    pub fn del_rules(&mut self, cookie: u64, mask: u64) -> Result<usize> {
        let ids = self.table.ids_by_cookie(cookie, mask);
        for id in &ids {
            let (_, ops) = self.table.remove(*id)?;
            self.dp.apply(&ops)?;
        }
        Ok(ids.len())
    }

    /// The flow dump, one line per rule.
    pub fn dump_flows(&mut self) -> Result<Vec<String>> {
        let rules: Vec<(u32, Rule)> = self.table.rules().map(|(i, r)| (i, r.clone())).collect();
        let mut out = Vec::new();
        for (id, r) in rules {
            let s = self.dp.rule_stats(id)?;
            let m = crate::compile::format_match(&r.key, &r.mask);
            out.push(format!(
                "cookie={:#x}, n_packets={}, n_bytes={}, idle_timeout={}, priority={}{}{} actions={}",
                r.cookie,
                s.packets,
                s.bytes,
                r.idle_timeout,
                r.priority,
                if m.is_empty() { "" } else { "," },
                m,
                crate::compile::format_actions(&r.actions)
            ));
        }
        Ok(out)
    }

    fn handle(&mut self, req: Request) -> Result<serde_json::Value> {
        Ok(match req {
            Request::Ports => serde_json::to_value(self.dp.ports()?)?,
            Request::PortAdd { iface, ofport } => {
                let p = self.add_port(&iface, ofport, PortKind::Container)?;
                serde_json::json!({ "ofport": p })
            }
            Request::PortDel { iface } => {
                self.dp.detach_port(&iface)?;
                serde_json::json!({ "removed": iface })
            }
            Request::RuleAdd { flow } => {
                let fm: daolinet_openflow::FlowMod = flow
                    .parse()
                    .map_err(|e| anyhow!("bad flow {flow:?}: {e}"))?;
                let (key, mask) = compile_match(&fm.match_)?;
                let actions = compile_instructions(&fm.instructions)?;
                let id = self.add_rule(Rule {
                    priority: fm.priority,
                    key,
                    mask,
                    actions,
                    cookie: fm.cookie,
                    idle_timeout: fm.idle_timeout,
                    hard_timeout: fm.hard_timeout,
                    flags: fm.flags,
                })?;
                serde_json::json!({ "rule": id })
            }
            Request::RuleDel { cookie, mask } => {
                let n = self.del_rules(cookie, mask.unwrap_or(u64::MAX))?;
                serde_json::json!({ "removed": n })
            }
            Request::Flows => serde_json::to_value(self.dump_flows()?)?,
        })
    }
}

/// Serve the control socket until the process exits (one thread per client).
pub fn serve(listener: UnixListener, agent: Arc<Mutex<Agent>>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let agent = agent.clone();
        std::thread::spawn(move || {
            if let Err(e) = client(conn, agent) {
                tracing::debug!("control client: {e:#}");
            }
        });
    }
}

fn client(conn: UnixStream, agent: Arc<Mutex<Agent>>) -> Result<()> {
    let mut w = conn.try_clone()?;
    for line in BufReader::new(conn).lines() {
        let line = line?;
        let reply = match serde_json::from_str::<Request>(&line) {
            Err(e) => serde_json::json!({ "error": format!("bad request: {e}") }),
            Ok(req) => {
                let mut a = agent.lock().map_err(|_| anyhow!("agent state poisoned"))?;
                match a.handle(req) {
                    Ok(v) => serde_json::json!({ "ok": v }),
                    Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
                }
            }
        };
        writeln!(w, "{reply}")?;
    }
    Ok(())
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
