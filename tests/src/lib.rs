//! Helpers for DaoliNet's privileged tests: BPF program test runs, network
//! namespaces with cleanup guards, and a running agent.

pub mod bpf;
pub mod frames;
