//! BENCHMARKS.md: each benchmark owns one section between markers and
//! rewrites only that section.

use anyhow::{Context, Result};

use crate::util::workspace_root;

/// Replace (or append) the section `name` of BENCHMARKS.md with `body`.
/// The section is delimited by `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`.
pub fn update_section(name: &str, body: &str) -> Result<()> {
    let path = workspace_root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Benchmarks\n\nNumbers from `cargo xtask bench` on our 2-core CI-like machines. \
         They are noisy and shared: compare the ratios, measured side by side in one run, \
         not the absolute numbers.\n"
            .to_string()
    });
    let start = format!("<!-- bench:{name} -->");
    let end = format!("<!-- /bench:{name} -->");
    let section = format!("{start}\n{}\n{end}", body.trim_end());
    let new = match (old.find(&start), old.find(&end)) {
        (Some(a), Some(b)) if b > a => {
            format!("{}{}{}", &old[..a], section, &old[b + end.len()..])
        }
        _ => format!("{}\n{}\n", old.trim_end(), section),
    };
    std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("    recorded in {}", path.display());
    Ok(())
}
