//! daolictl (work in progress).
fn main() {}
