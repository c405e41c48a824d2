//! The DaoliNet controller.
//!
//! The model, addresses, IPAM and the policy (pure functions producing flows)
//! live in the `daolinet-policy` crate; this crate runs them:
//!
//! - [`store`]: the persistence trait (etcd-shaped) with the embedded redb
//!   default and etcd for several controllers.
//! - [`election`]: leader election among controllers on etcd leases.
//! - [`service`], [`api`], [`metrics`]: the running controller and its REST API;
//!   [`events`]: recent PACKET_IN decisions for `daolictl observe`;
//!   [`applied`]: knowing when a mutation's flow changes are in effect.
//! - [`ofserver`]: the OpenFlow 1.3 server (tokio) the switches connect to.

pub mod api;
pub mod applied;
pub mod election;
pub mod events;
pub mod generation;
pub mod metrics;
pub mod ofserver;
pub mod service;
pub mod store;
