//! `cargo xtask test`: setup + build-ebpf + the whole test suite.

use anyhow::Result;

use crate::util::{cargo, run as sh, step};

/// Run everything CI runs.
pub fn run(setup: bool, fuzz_seconds: u64) -> Result<()> {
    if setup {
        crate::setup::run()?;
    }
    // Built in the open first (compiler output on the terminal); the
    // agent's build script then finds the object up to date and embeds it,
    // and the tests load what the agent embeds.
    crate::build_ebpf::run(true)?;
    step("running the test suite (unit, codec, privileged namespace tests)");
    sh(cargo().args(["test", "--workspace", "--exclude", "daolinet-ebpf", "--"]))?;
    if fuzz_seconds > 0 {
        step("short fuzz run");
        crate::fuzz::run(fuzz_seconds, None)?;
    }
    Ok(())
}
