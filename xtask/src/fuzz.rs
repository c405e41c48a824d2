//! `cargo xtask fuzz`: run cargo-fuzz targets for a bounded time.
//! (Owned by the OpenFlow codec work; placeholder until the fuzz targets exist.)

use anyhow::Result;

/// Run every fuzz target (or only `target`) for `seconds` each.
pub fn run(seconds: u64, target: Option<&str>) -> Result<()> {
    let _ = (seconds, target);
    eprintln!("xtask fuzz: no fuzz targets yet");
    Ok(())
}
