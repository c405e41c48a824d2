//! Placeholder for the codec benchmark.
fn main() {}
