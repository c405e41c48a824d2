//! `cargo xtask fuzz`: run the cargo-fuzz targets in `fuzz/` for a bounded
//! time each; fail if any target finds a crash.
//!
//! Each target runs `cargo +nightly fuzz run TARGET fuzz/corpus/TARGET
//! [fuzz/seeds/TARGET] -- -max_total_time=N`. The corpus directory is
//! kept between runs (git-ignored); seeds, when present, are committed.
//! Crashes land in `fuzz/artifacts/TARGET/`.

use anyhow::{bail, Context, Result};
use std::process::Command;

use crate::util::{step, workspace_root};

/// The fuzz targets (binaries of `fuzz/Cargo.toml`).
pub const TARGETS: &[&str] = &["decode", "flow_syntax"];

/// Run every fuzz target (or only `target`) for `seconds` each.
pub fn run(seconds: u64, target: Option<&str>) -> Result<()> {
    let targets: Vec<&str> = match target {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("unknown fuzz target {t:?}; known: {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    let fuzz_dir = workspace_root().join("fuzz");
    for t in targets {
        step(&format!("fuzzing {t} for {seconds} s"));
        let corpus = fuzz_dir.join("corpus").join(t);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        // `+nightly` only works through the rustup proxy, so call `cargo`
        // from PATH and drop what `cargo xtask` set for the stable toolchain.
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&fuzz_dir)
            .args(["+nightly", "fuzz", "run", t])
            .arg(&corpus);
        let seeds = fuzz_dir.join("seeds").join(t);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        cmd.arg("--")
            .arg(format!("-max_total_time={seconds}"))
            // A hard stop even if a single input hangs.
            .arg(format!("-timeout={}", seconds.clamp(10, 60)))
            .arg("-print_final_stats=1")
            .env_remove("CARGO")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .env_remove("RUSTC_WRAPPER")
            .env_remove("CARGO_TARGET_DIR");
        crate::util::run(&mut cmd).with_context(|| {
            format!(
                "fuzz target {t} failed (a crash is saved under fuzz/artifacts/{t}/; \
                 if cargo-fuzz is missing, run `cargo xtask setup`)"
            )
        })?;
    }
    Ok(())
}
