//! `cargo xtask bench openflow` (owned by the OpenFlow codec work).

use anyhow::{bail, Result};

/// Run the codec benchmark.
pub fn run() -> Result<()> {
    bail!("the OpenFlow codec benchmark is not written yet")
}
