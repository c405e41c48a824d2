//! Benchmarks whose measurement is a release example built on the test lab
//! (`bench attach`, `bench failover`): build it, run it in a process group
//! of its own, and record the BENCHMARKS.md section it prints.

use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::util::{cargo, run as sh, workspace_root};

/// Build example `example` of package `package` in release, run it, check
/// that its standard output is a section starting with `heading` (e.g.
/// `## Attach`), print it and record it as section `section` of
/// BENCHMARKS.md. Its standard error (progress) goes to the terminal.
///
/// The example runs in a process group of its own: Ctrl-C stops this xtask
/// only; the example then gets SIGTERM (its parent-death signal) and stops
/// the lab's daemons (in its group) and removes what it created.
pub fn run_and_record(package: &str, example: &str, heading: &str, section: &str) -> Result<()> {
    sh(cargo().args(["build", "--release", "-p", package, "--example", example]))?;
    let bin = workspace_root()
        .join("target/release/examples")
        .join(example);
    let out = Command::new(&bin)
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {}", bin.display()))?;
    if !out.status.success() {
        bail!("{} failed with {}", bin.display(), out.status);
    }
    let md = String::from_utf8_lossy(&out.stdout);
    if !md.starts_with(heading) {
        bail!("{} printed no section: {md}", bin.display());
    }
    print!("{md}");
    crate::benchmarks::update_section(section, &md)
}
