//! `cargo xtask test`: setup + build-ebpf + the whole test suite.

use anyhow::Result;

use crate::util::{cargo, run as sh, step};

/// Run everything CI runs.
pub fn run(setup: bool, fuzz_seconds: u64) -> Result<()> {
    if setup {
        crate::setup::run()?;
    }
    let obj = crate::build_ebpf::run(true)?;
    step("running the test suite (unit, codec, privileged namespace tests)");
    sh(cargo()
        .args(["test", "--workspace", "--exclude", "daolinet-ebpf", "--"])
        .env("DAOLINET_BPF_OBJECT", &obj))?;
    if fuzz_seconds > 0 {
        step("short fuzz run");
        crate::fuzz::run(fuzz_seconds, None)?;
    }
    Ok(())
}
