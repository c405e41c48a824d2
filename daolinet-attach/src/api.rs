//! A blocking client of the controller's REST API for what attachments
//! need: networks and containers (the controller's IPAM hands out the
//! addresses when a container is registered). The types are the model's
//! own (`daolinet-policy`), so the two sides cannot drift apart.

use std::path::Path;
use std::time::Duration;

use daolinet_policy::model::{Container, ContainerSpec, Network, NetworkSpec};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Error;

/// The controller's REST API with its bearer token.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Api {
    /// The API at `base` (`http://HOST:PORT`) with `token`.
    pub fn new(base: &str, token: &str) -> Api {
        Api {
            base: base.trim_end_matches('/').to_string(),
            token: token.trim().to_string(),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(3))
                .timeout(Duration::from_secs(15))
                .build(),
        }
    }

    /// The API at `base` with the token read from `token_file`.
    pub fn with_token_file(base: &str, token_file: &Path) -> Result<Api, Error> {
        let token = std::fs::read_to_string(token_file).map_err(|e| {
            Error::Config(format!(
                "cannot read the API token file {}: {e}",
                token_file.display()
            ))
        })?;
        if token.trim().is_empty() {
            return Err(Error::Config(format!(
                "the API token file {} is empty",
                token_file.display()
            )));
        }
        Ok(Api::new(base, &token))
    }

    /// `http://HOST:PORT`.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        self.agent
            .request(method, &format!("{}/api{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token))
    }

    /// Send; `None` for a 404 when `absent_ok`.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        absent_ok: bool,
    ) -> Result<Option<ureq::Response>, Error> {
        let req = self.request(method, path);
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match res {
            Ok(r) => Ok(Some(r)),
            Err(ureq::Error::Status(404, _)) if absent_ok => Ok(None),
            Err(ureq::Error::Status(status, r)) => {
                let text = r.into_string().unwrap_or_default();
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                Err(Error::Api {
                    status,
                    message: v
                        .get("error")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| {
                            if text.trim().is_empty() {
                                format!("status {status}")
                            } else {
                                text.trim().to_string()
                            }
                        }),
                    field: v.get("field").and_then(Value::as_str).map(str::to_string),
                })
            }
            Err(ureq::Error::Transport(t)) => Err(Error::ApiDown {
                api: self.base.clone(),
                why: t.to_string(),
            }),
        }
    }

    fn json<T: DeserializeOwned>(r: ureq::Response, what: &str) -> Result<T, Error> {
        r.into_json()
            .map_err(|e| Error::Protocol(format!("unreadable {what} from the controller: {e}")))
    }

    /// Network `name`, `None` when the controller has none of that name.
    pub fn network(&self, name: &str) -> Result<Option<Network>, Error> {
        match self.send("GET", &format!("/networks/{name}"), None, true)? {
            Some(r) => Ok(Some(Self::json(r, "network")?)),
            None => Ok(None),
        }
    }

    /// Every network.
    pub fn networks(&self) -> Result<Vec<Network>, Error> {
        match self.send("GET", "/networks", None, false)? {
            Some(r) => Self::json(r, "network list"),
            None => Ok(Vec::new()),
        }
    }

    /// Create a network.
    pub fn create_network(&self, spec: &NetworkSpec) -> Result<Network, Error> {
        let body = serde_json::to_value(spec).map_err(|e| Error::Protocol(e.to_string()))?;
        match self.send("POST", "/networks", Some(body), false)? {
            Some(r) => Self::json(r, "network"),
            None => Err(Error::Protocol("no answer to the network creation".into())),
        }
    }

    /// Delete network `name`; false when there was none.
    pub fn delete_network(&self, name: &str) -> Result<bool, Error> {
        Ok(self
            .send("DELETE", &format!("/networks/{name}"), None, true)?
            .is_some())
    }

    /// Every container of the cluster.
    pub fn containers(&self) -> Result<Vec<Container>, Error> {
        match self.send("GET", "/containers", None, false)? {
            Some(r) => Self::json(r, "container list"),
            None => Ok(Vec::new()),
        }
    }

    /// Container `id`, `None` when unknown.
    pub fn container(&self, id: &str) -> Result<Option<Container>, Error> {
        match self.send("GET", &format!("/containers/{id}"), None, true)? {
            Some(r) => Ok(Some(Self::json(r, "container")?)),
            None => Ok(None),
        }
    }

    /// Register a container (the controller allocates what is not given).
    pub fn create_container(&self, spec: &ContainerSpec) -> Result<Container, Error> {
        let body = serde_json::to_value(spec).map_err(|e| Error::Protocol(e.to_string()))?;
        match self.send("POST", "/containers", Some(body), false)? {
            Some(r) => Self::json(r, "container"),
            None => Err(Error::Protocol("no answer to the registration".into())),
        }
    }

    /// Deregister container `id` (its addresses go back to the pools);
    /// false when it was not registered.
    pub fn delete_container(&self, id: &str) -> Result<bool, Error> {
        Ok(self
            .send("DELETE", &format!("/containers/{id}"), None, true)?
            .is_some())
    }
}
