//! The OpenFlow 1.3 server: switches (daolinet-agent or Open vSwitch
//! bridges) connect, the controller answers their PACKET_INs with the
//! policy's decisions and pushes the decisions of model changes.
//!
//! - [`translate`]: policy [`daolinet_policy::Decision`]s <-> OpenFlow
//!   messages (pure).
//! - [`conn`]: one connection's protocol as a sans-IO state machine
//!   (handshake, echo, errors, barriers).
//! - [`server`]: tokio edges: accept loop, one task per connection,
//!   datapath registry (a reconnecting datapath is recognised by its id and
//!   replaces its old connection), model-change dispatcher.

pub mod conn;
pub mod server;
pub mod translate;

pub use conn::{Conn, ConnConfig, Event, Phase};
pub use server::{bind, ProbeError, Role, Server, ServerConfig, PROBE_EVERY};
