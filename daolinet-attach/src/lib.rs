//! What DaoliNet's container-runtime integrations share: the CNI plugin
//! (`daolinet-cni`, podman and any CNI runtime) and the Docker network and
//! IPAM driver (`daolinet-docker`).
//!
//! An attachment is the same for both: a veth whose host end becomes a
//! port of the host's `daolinet-agent` (through its control socket,
//! [`agent`]), and a container registered with the controller on that host
//! and port, which hands out its addresses from its IPAM ([`api`],
//! [`site`]). Names are derived from what the runtime gives ([`names`]),
//! so teardown needs no state; deregistrations that cannot be done now wait
//! in the agent's deferred-deletion queue ([`queue`]). With the `netlink`
//! feature, [`link`] creates and inspects veths, addresses and routes.

pub mod agent;
pub mod api;
#[cfg(feature = "netlink")]
pub mod link;
pub mod names;
pub mod queue;
pub mod site;

use std::path::PathBuf;

/// Why an attachment step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The agent's control socket does not answer.
    #[error(
        "the DaoliNet agent is not running (cannot reach its socket {}: {why})",
        socket.display()
    )]
    AgentDown {
        /// The socket.
        socket: PathBuf,
        /// The system's reason.
        why: String,
    },
    /// The agent refused a request.
    #[error("the DaoliNet agent refused: {0}")]
    Agent(String),
    /// The controller's API cannot be reached.
    #[error("the DaoliNet controller at {api} cannot be reached: {why}")]
    ApiDown {
        /// The API's address.
        api: String,
        /// The transport's reason.
        why: String,
    },
    /// The controller refused a request.
    #[error("the DaoliNet controller refused: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The controller's message.
        message: String,
        /// The input field it names, if any.
        field: Option<String>,
    },
    /// An unexpected answer.
    #[error("{0}")]
    Protocol(String),
    /// A configuration problem (missing token, agent without `--api`...).
    #[error("{0}")]
    Config(String),
    /// The network namespace given is unusable.
    #[error("{0}")]
    InvalidNetns(String),
    /// An interface of that name exists already.
    #[error("{0}")]
    Exists(String),
    /// A netlink operation failed.
    #[error("{0}")]
    Netlink(String),
}

impl Error {
    /// True when the agent or the controller could not be reached at all
    /// (a later retry may work), as opposed to a refusal.
    pub fn unreachable(&self) -> bool {
        matches!(self, Error::AgentDown { .. } | Error::ApiDown { .. })
    }
}
