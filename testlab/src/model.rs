//! Typed shortcuts for filling a controller's model through its REST API,
//! so that tests say what they build (`api.add_container("ca", "blue",
//! "h1", 1)`) instead of repeating hand-written JSON. Each one must succeed
//! (2xx) and returns the object the controller answered with, e.g. the
//! container with the IP and MAC it was given.

use serde_json::{json, Value};

use crate::Api;

impl Api {
    /// `POST /api/hosts`: a host registered by hand (agents normally join
    /// by themselves). `dpid` is a number or a hex string, as the API takes
    /// it; `uplink_port` is the host's uplink OpenFlow port.
    #[track_caller]
    pub fn add_host(
        &self,
        name: &str,
        dpid: impl Into<Value>,
        ip: &str,
        mac: &str,
        uplink_port: u32,
    ) -> Value {
        let body = json!({
            "name": name,
            "dpid": dpid.into(),
            "ip": ip,
            "mac": mac,
            "uplink_port": uplink_port,
        });
        self.ok("POST", "/api/hosts", Some(&body.to_string()))
    }

    /// `POST /api/networks`: network `name` with `subnet` in the default
    /// tenant.
    #[track_caller]
    pub fn add_network(&self, name: &str, subnet: &str) -> Value {
        let body = json!({ "name": name, "subnet": subnet });
        self.ok("POST", "/api/networks", Some(&body.to_string()))
    }

    /// `POST /api/containers`: container `id` in `network`, on `host`'s
    /// OpenFlow port `port`; the controller picks its IP and MAC (read
    /// them from the answer with [`crate::json_str`]).
    #[track_caller]
    pub fn add_container(&self, id: &str, network: &str, host: &str, port: u32) -> Value {
        let body = json!({ "id": id, "network": network, "host": host, "port": port });
        self.ok("POST", "/api/containers", Some(&body.to_string()))
    }
}
