//! DaoliNet's Docker network and IPAM driver, both named `daolinet`, served
//! by `daolinet-docker` on a Unix socket in Docker's plugin directory
//! (`/run/docker/plugins/daolinet.sock`) with Docker's remote plugin
//! protocol: JSON over HTTP, one POST per call ([`protocol`]).
//!
//! - The IPAM driver hands out the controller's addresses: a container's
//!   address request registers it with the controller on this host
//!   ([`driver`]).
//! - The network driver maps a Docker network to a DaoliNet network (by
//!   `-o network=NAME`, created in the controller when it does not exist)
//!   and makes each endpoint's veth, whose host end becomes a port of the
//!   host's agent.
//!
//! What must outlive a restart of the driver (which Docker network is which
//! DaoliNet network, which pools are handed out) is kept in a small JSON
//! file ([`state`]); everything else is derived from Docker's ids.

pub mod driver;
pub mod protocol;
pub mod server;
pub mod state;
