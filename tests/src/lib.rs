//! Helpers for DaoliNet's BPF program tests: loading the datapath object and
//! running its programs with BPF_PROG_TEST_RUN. Namespaces, agents,
//! controllers and the skip rule live in `daolinet-testlab`.

pub mod bpf;
pub mod frames;
