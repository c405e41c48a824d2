//! Helpers for DaoliNet's BPF program tests: loading the datapath object and
//! running its programs with BPF_PROG_TEST_RUN; and the highly available
//! lab ([`ha`]) the failover test and `cargo xtask bench failover` share;
//! `daolictl` run from a test ([`daolictl`]).
//! Namespaces, agents, controllers and the skip rule live in
//! `daolinet-testlab`.

pub mod bpf;
pub mod daolictl;
pub mod frames;
pub mod ha;
pub mod ofpeer;
