//! Docker's remote network and IPAM plugin protocol: the calls' bodies as
//! Docker sends them (unknown fields ignored) and the answers' shapes.
//! Every call is `POST /<Interface>.<Method>` with a JSON body; an error is
//! any answer carrying `{"Err": "..."}`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

/// The content type of every answer.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// `RequestAddress`'s option naming a gateway request.
pub const ADDRESS_TYPE: &str = "RequestAddressType";
/// Its value for the gateway.
pub const GATEWAY_TYPE: &str = "com.docker.network.gateway";
/// `RequestAddress`'s option carrying the MAC given with `--mac-address`.
pub const MAC_OPTION: &str = "com.docker.network.endpoint.macaddress";
/// `CreateNetwork`'s option holding the `-o` driver options.
pub const GENERIC: &str = "com.docker.network.generic";

/// `IpamDriver.RequestPool`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestPool {
    /// The address space (ignored).
    pub address_space: String,
    /// The pool (`--subnet`).
    pub pool: String,
    /// `--ip-range` (unsupported).
    pub sub_pool: String,
    /// `--ipam-opt`s.
    pub options: Option<BTreeMap<String, String>>,
    /// An IPv6 pool.
    #[serde(rename = "V6")]
    pub v6: bool,
}

/// `IpamDriver.ReleasePool`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ReleasePool {
    /// The pool's id.
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

/// `IpamDriver.RequestAddress`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestAddress {
    /// The pool's id.
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// The address asked for (`--ip`, `--gateway`), empty for any.
    pub address: String,
    /// Options (address type, MAC).
    pub options: Option<BTreeMap<String, String>>,
}

/// `IpamDriver.ReleaseAddress`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ReleaseAddress {
    /// The pool's id.
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// The address, without prefix.
    pub address: String,
}

/// One `IPv4Data` entry of `CreateNetwork`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpData {
    /// The pool, `10.1.0.0/24`.
    pub pool: String,
    /// The gateway, `10.1.0.1/24`.
    pub gateway: String,
}

/// `NetworkDriver.CreateNetwork`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateNetwork {
    /// Docker's network id.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Options; the `-o` ones under [`GENERIC`].
    pub options: BTreeMap<String, Value>,
    /// The IPv4 pools.
    #[serde(rename = "IPv4Data")]
    pub ipv4_data: Option<Vec<IpData>>,
    /// The IPv6 pools.
    #[serde(rename = "IPv6Data")]
    pub ipv6_data: Option<Vec<IpData>>,
}

impl CreateNetwork {
    /// The `-o KEY=VALUE` options.
    pub fn driver_opts(&self) -> BTreeMap<String, String> {
        self.options
            .get(GENERIC)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        let v = v.as_str().map(str::to_string).unwrap_or(v.to_string());
                        (k.clone(), v)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Calls naming only a network (`DeleteNetwork`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkOnly {
    /// Docker's network id.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

/// An endpoint's interface as Docker gives it in `CreateEndpoint`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointInterface {
    /// `10.1.0.5/24`.
    pub address: String,
    /// A MAC given with `--mac-address`, else empty.
    pub mac_address: String,
}

/// Calls naming an endpoint (`CreateEndpoint`, `DeleteEndpoint`, `Join`,
/// `Leave`, `EndpointOperInfo`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Endpoint {
    /// Docker's network id.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Docker's endpoint id.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// The interface (`CreateEndpoint` only).
    pub interface: Option<EndpointInterface>,
    /// The sandbox (`Join` only).
    pub sandbox_key: String,
}

/// Parse a call's body; an empty body is an empty object.
pub fn parse<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| format!("malformed request: {e}"))
}

/// The answer to `Plugin.Activate`.
pub fn activate() -> Value {
    json!({"Implements": ["NetworkDriver", "IpamDriver"]})
}

/// An error answer.
pub fn err(message: &str) -> Value {
    json!({ "Err": message })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn docker_bodies_parse() {
        let c: CreateNetwork = parse(
            br#"{"NetworkID":"abc","Options":{"com.docker.network.enable_ipv6":false,
            "com.docker.network.generic":{"network":"blue","tenant":"t1"}},
            "IPv4Data":[{"AddressSpace":"x","Gateway":"10.1.0.1/24","Pool":"10.1.0.0/24"}],
            "IPv6Data":[]}"#,
        )
        .unwrap();
        assert_eq!(c.network_id, "abc");
        let o = c.driver_opts();
        assert_eq!(o.get("network").map(String::as_str), Some("blue"));
        assert_eq!(o.get("tenant").map(String::as_str), Some("t1"));
        assert_eq!(c.ipv4_data.unwrap()[0].pool, "10.1.0.0/24");
        let a: RequestAddress = parse(
            br#"{"PoolID":"p","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#,
        )
        .unwrap();
        assert_eq!(a.options.unwrap()[ADDRESS_TYPE], GATEWAY_TYPE);
        let e: Endpoint = parse(
            br#"{"NetworkID":"n","EndpointID":"e","Interface":{"Address":"10.1.0.2/24","AddressIPv6":"","MacAddress":""},"Options":{}}"#,
        )
        .unwrap();
        assert_eq!(e.interface.unwrap().address, "10.1.0.2/24");
        let empty: NetworkOnly = parse(b"").unwrap();
        assert_eq!(empty.network_id, "");
        assert!(parse::<NetworkOnly>(b"{").is_err());
        assert!(parse::<NetworkOnly>(br#"{"NetworkID": 5}"#).is_err());
    }
}
