//! `cargo xtask build-ebpf`: build daolinet-ebpf for bpfel-unknown-none.
//!
//! The recipe is `daolinet-ebpf-build`'s, the one `daolinet-agent/build.rs`
//! runs to embed the object in the agent; both build into `target/ebpf`, so
//! the release object copied here is byte for byte the one the agent
//! carries. The copy in `target/bpf/daolinet.bpf.o` is for tools
//! (`llvm-objdump`, `bpftool`) and for `--bpf-object` / `$DAOLINET_BPF_OBJECT`
//! when testing a variant.

use anyhow::{Context, Result};
use daolinet_ebpf_build::{diagnose, Profile, Recipe};
use std::path::PathBuf;

use crate::util::{step, workspace_root};

/// Where the built object is copied.
pub fn object_path() -> PathBuf {
    workspace_root().join("target/bpf/daolinet.bpf.o")
}

/// Build the BPF object; `release` selects the optimised profile (the one
/// the agent embeds).
pub fn run(release: bool) -> Result<PathBuf> {
    step("building the eBPF datapath (daolinet-ebpf, bpfel-unknown-none)");
    let profile = if release {
        Profile::Release
    } else {
        Profile::Debug
    };
    let recipe = Recipe::new(&workspace_root(), profile);
    crate::util::run(&mut recipe.command())
        .with_context(|| format!("the BPF build failed: {}", diagnose()))?;
    let built = recipe.artifact();
    let dest = object_path();
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::copy(&built, &dest)
        .with_context(|| format!("copying {} to {}", built.display(), dest.display()))?;
    eprintln!("    BPF object: {}", dest.display());
    Ok(dest)
}
