//! What the driver keeps across its restarts: the pools it handed out and
//! which DaoliNet network each Docker network is. Pure data; [`load`] and
//! [`save`] at the edge (save writes a temporary file and renames it).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// A pool handed out by `RequestPool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    /// Its subnet.
    pub subnet: String,
    /// The DaoliNet network, once `CreateNetwork` said which.
    pub network: Option<String>,
}

/// A Docker network of this driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Net {
    /// The DaoliNet network's name.
    pub name: String,
    /// Whether this driver created it in the controller (and deletes it
    /// with the Docker network when no container is left in it).
    pub created: bool,
}

/// The whole state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Pools by pool id.
    pub pools: BTreeMap<String, Pool>,
    /// Networks by Docker network id.
    pub networks: BTreeMap<String, Net>,
}

impl State {
    /// The pool id of a subnet not yet bound to a network, if any.
    pub fn unbound_pool(&self, subnet: &str) -> Option<String> {
        self.pools
            .iter()
            .find(|(_, p)| p.subnet == subnet && p.network.is_none())
            .map(|(id, _)| id.clone())
    }

    /// Whether some pool of this host already has `subnet`.
    pub fn subnet_taken(&self, subnet: &str) -> bool {
        self.pools.values().any(|p| p.subnet == subnet)
    }
}

/// The state in `path`; empty when there is no file yet.
pub fn load(path: &Path) -> Result<State, String> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| format!("{} is not the driver's state: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// Write `state` to `path` atomically.
pub fn save(path: &Path, state: &State) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pools_bind_once_and_the_state_round_trips() {
        let mut s = State::default();
        s.pools.insert(
            "a".into(),
            Pool {
                subnet: "10.1.0.0/24".into(),
                network: None,
            },
        );
        assert!(s.subnet_taken("10.1.0.0/24"));
        assert!(!s.subnet_taken("10.2.0.0/24"));
        assert_eq!(s.unbound_pool("10.1.0.0/24").as_deref(), Some("a"));
        s.pools.get_mut("a").unwrap().network = Some("blue".into());
        assert_eq!(s.unbound_pool("10.1.0.0/24"), None);
        let dir = std::env::temp_dir().join(format!("rt-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s.json");
        assert_eq!(load(&f).unwrap(), State::default());
        save(&f, &s).unwrap();
        assert_eq!(load(&f).unwrap(), s);
        std::fs::write(&f, "nope").unwrap();
        assert!(load(&f).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
