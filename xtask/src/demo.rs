//! `cargo xtask demo`.

use anyhow::{bail, Result};

/// Run the demo.
pub fn run(_setup: bool) -> Result<()> {
    bail!("the demo is not written yet")
}
