//! The DaoliNet controller.
//!
//! - [`model`]: hosts, networks, containers, groups, pair policies, firewalls;
//!   validated mutations that return the [`model::Change`]s they made.
//! - [`ipam`]: logical and physical address allocation (pure).
//! - [`store`]: the persistence trait (etcd-shaped) with the embedded redb default.
//! - [`policy`]: DaoliNet's decisions as pure functions producing flows.
//! - [`service`], [`api`], [`metrics`]: the running controller and its REST API.
//! - [`ofserver`]: the OpenFlow 1.3 server (tokio) the switches connect to.

pub mod addr;
pub mod api;
pub mod ipam;
pub mod metrics;
pub mod model;
pub mod ofserver;
pub mod policy;
pub mod service;
pub mod store;
