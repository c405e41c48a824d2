//! A client of the agent's control socket (`<state-dir>/agent.sock`): one
//! JSON request per line, one JSON reply per line (`{"ok": ...}` or
//! `{"error": "..."}`); see `daolinet-agent`'s `control` module.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::Error;

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What the agent says about itself (`{"cmd": "info"}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AgentInfo {
    /// The name its host is registered under (with `--api`).
    #[serde(default)]
    pub host: Option<String>,
    /// The controller's REST API (with `--api`).
    #[serde(default)]
    pub api: Option<String>,
    /// The file holding the API token (with `--api`).
    #[serde(default)]
    pub api_token_file: Option<PathBuf>,
    /// Its state directory (control socket, deferred-deletion queue).
    pub state_dir: PathBuf,
    /// Its datapath id, in hex.
    #[serde(default)]
    pub datapath_id: String,
}

/// One port of the agent (`{"cmd": "ports"}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AgentPort {
    /// Interface name.
    pub name: String,
    /// OpenFlow port number.
    pub ofport: u32,
    /// `container`, `uplink` or `local`.
    #[serde(default)]
    pub kind: String,
}

/// The control socket of one agent.
#[derive(Debug, Clone)]
pub struct AgentClient {
    socket: PathBuf,
}

impl AgentClient {
    /// The agent listening on `socket` (e.g. `/run/daolinet/agent.sock`).
    pub fn new(socket: &Path) -> AgentClient {
        AgentClient {
            socket: socket.to_path_buf(),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether the agent answers (its socket accepts a connection).
    pub fn reachable(&self) -> bool {
        UnixStream::connect(&self.socket).is_ok()
    }

    /// Send one request; the value of its `ok`.
    pub fn call(&self, req: &Value) -> Result<Value, Error> {
        let down = |why: String| Error::AgentDown {
            socket: self.socket.clone(),
            why,
        };
        let mut s = UnixStream::connect(&self.socket).map_err(|e| down(e.to_string()))?;
        s.set_read_timeout(Some(TIMEOUT))
            .and_then(|()| s.set_write_timeout(Some(TIMEOUT)))
            .map_err(|e| down(e.to_string()))?;
        let mut line = req.to_string();
        line.push('\n');
        s.write_all(line.as_bytes())
            .map_err(|e| down(format!("sending the request: {e}")))?;
        let mut reply = String::new();
        BufReader::new(s)
            .read_line(&mut reply)
            .map_err(|e| down(format!("reading the reply: {e}")))?;
        if reply.is_empty() {
            return Err(down("it closed the connection without a reply".into()));
        }
        let v: Value = serde_json::from_str(&reply)
            .map_err(|e| Error::Agent(format!("unreadable reply {reply:?}: {e}")))?;
        if let Some(e) = v.get("error") {
            return Err(Error::Agent(
                e.as_str().unwrap_or("agent error").to_string(),
            ));
        }
        Ok(v.get("ok").cloned().unwrap_or(Value::Null))
    }

    /// What the agent says about itself.
    pub fn info(&self) -> Result<AgentInfo, Error> {
        let v = self.call(&json!({"cmd": "info"}))?;
        serde_json::from_value(v).map_err(|e| {
            Error::Agent(format!(
                "the agent does not describe itself ({e}): is it older than this plugin?"
            ))
        })
    }

    /// Its ports.
    pub fn ports(&self) -> Result<Vec<AgentPort>, Error> {
        let v = self.call(&json!({"cmd": "ports"}))?;
        serde_json::from_value(v).map_err(|e| Error::Agent(format!("unreadable port list: {e}")))
    }

    /// Attach `iface` as container port `ofport`; the port number.
    pub fn port_add(&self, iface: &str, ofport: u32) -> Result<u32, Error> {
        let v = self.call(&json!({"cmd": "port_add", "iface": iface, "ofport": ofport}))?;
        v.get("ofport")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| Error::Agent(format!("unexpected answer to port add: {v}")))
    }

    /// Detach `iface` if it is a port; whether it was.
    pub fn port_del_if_present(&self, iface: &str) -> Result<bool, Error> {
        if !self.ports()?.iter().any(|p| p.name == iface) {
            return Ok(false);
        }
        self.call(&json!({"cmd": "port_del", "iface": iface}))?;
        Ok(true)
    }

    /// Ask the agent to drain its deferred-deletion queue now.
    pub fn drain(&self) -> Result<(), Error> {
        self.call(&json!({"cmd": "drain"})).map(|_| ())
    }
}
