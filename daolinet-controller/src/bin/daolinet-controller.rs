//! daolinet-controller binary (work in progress).
fn main() {}
