//! The container ports attached through the control socket (`port add`:
//! by hand, by the CNI plugin, by the Docker driver), kept in
//! `<state-dir>/ports.json` so that a restarted agent attaches them again:
//! containers keep running while the agent restarts, and their runtime's
//! later DEL or Leave finds the port as it left it. Ports given with
//! `--port` come from the command line each time and are not kept here.
//!
//! The file is rewritten whole (temporary file, then rename) after each
//! change, so it is never half-written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The ports to attach again on the next start: interface -> OpenFlow port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortBook {
    path: PathBuf,
    ports: BTreeMap<String, u32>,
}

impl PortBook {
    /// The book of state directory `state_dir` (`ports.json` in it); an
    /// unreadable file is set aside (`ports.json.bad`) with a warning and
    /// the book starts empty: a port not attached again is detached, the
    /// agent still starts.
    pub fn load(state_dir: &Path) -> PortBook {
        let path = state_dir.join("ports.json");
        let ports = match std::fs::read(&path) {
            Err(_) => BTreeMap::new(),
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(p) => p,
                Err(e) => {
                    let bad = path.with_extension("json.bad");
                    tracing::warn!(
                        file = %path.display(),
                        "unreadable port book ({e}): set aside as {}, starting without it",
                        bad.display()
                    );
                    let _ = std::fs::rename(&path, &bad);
                    BTreeMap::new()
                }
            },
        };
        PortBook { path, ports }
    }

    /// The kept ports, by interface name.
    pub fn ports(&self) -> &BTreeMap<String, u32> {
        &self.ports
    }

    /// Record `iface` as OpenFlow port `ofport`.
    pub fn add(&mut self, iface: &str, ofport: u32) -> Result<()> {
        if self.ports.get(iface) == Some(&ofport) {
            return Ok(());
        }
        self.ports.insert(iface.to_string(), ofport);
        self.save()
    }

    /// Forget `ifaces` (detached, or their interface is gone).
    pub fn remove(&mut self, ifaces: &[String]) -> Result<()> {
        let before = self.ports.len();
        for i in ifaces {
            self.ports.remove(i);
        }
        if self.ports.len() == before {
            return Ok(());
        }
        self.save()
    }

    fn save(&self) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(&self.ports)?;
        std::fs::write(&tmp, body).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_across_loads_and_bad_files_set_aside() {
        let d = std::env::temp_dir().join(format!("daolinet-portbook-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let mut b = PortBook::load(&d);
        assert!(b.ports().is_empty());
        b.add("dlc0", 1000).unwrap();
        b.add("dlc1", 1001).unwrap();
        b.remove(&["dlc0".into(), "other".into()]).unwrap();
        let again = PortBook::load(&d);
        assert_eq!(again.ports().len(), 1);
        assert_eq!(again.ports().get("dlc1"), Some(&1001));
        std::fs::write(d.join("ports.json"), b"{not json").unwrap();
        assert!(PortBook::load(&d).ports().is_empty());
        assert!(d.join("ports.json.bad").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
