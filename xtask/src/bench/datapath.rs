//! `cargo xtask bench datapath`.

use anyhow::{bail, Result};

/// Run the datapath benchmark.
pub fn run(_setup: bool) -> Result<()> {
    bail!("the datapath benchmark is not written yet")
}
