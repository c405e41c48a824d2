//! DaoliNet's CNI plugin (spec 1.1.0, with 0.3.0 to 1.0.0 results too):
//! [`config`] reads the network configuration and what the runtime asks
//! for one container (pure); [`plugin`] carries out ADD, DEL, CHECK,
//! STATUS and GC through the host's `daolinet-agent` and the controller
//! (`daolinet-attach`); VERSION is the `rscni-plugin` crate's.

pub mod config;
pub mod plugin;
