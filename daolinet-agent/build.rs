//! Embeds the BPF datapath object in the agent, so that an installed or
//! copied `daolinet-agent` loads the programs it was built with (no file to
//! find at run time; `--bpf-object` and `$DAOLINET_BPF_OBJECT` still
//! override it).
//!
//! By default the object is built from this workspace's `daolinet-ebpf` with
//! the recipe of `daolinet-ebpf-build` (the same one `cargo xtask build-ebpf`
//! runs, into the same `target/ebpf` directory, so whichever runs second
//! finds it up to date). The script runs again only when the BPF sources,
//! the shared map layouts, the workspace manifest or the lock file change.
//!
//! `DAOLINET_EMBED_BPF_OBJECT` changes what is embedded, for machines
//! without the BPF toolchain:
//! - an absolute path: embed that prebuilt object (e.g. `target/bpf/daolinet.bpf.o`
//!   from another machine), nothing is compiled;
//! - `none`: embed nothing; the agent then needs `--bpf-object` or
//!   `$DAOLINET_BPF_OBJECT` and says so.

use std::path::{Path, PathBuf};

use daolinet_ebpf_build::{Profile, Recipe};

/// Build-time variable choosing what to embed (see the module docs).
const EMBED_ENV: &str = "DAOLINET_EMBED_BPF_OBJECT";
/// File in `OUT_DIR` that `src/datapath.rs` includes.
const EMBEDDED_FILE: &str = "daolinet.bpf.o";

fn main() {
    if let Err(e) = embed() {
        // Cargo prints a failed build script's stderr.
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn embed() -> Result<(), String> {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed={EMBED_ENV}");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    let dest = out_dir.join(EMBEDDED_FILE);
    let object = match std::env::var_os(EMBED_ENV) {
        Some(v) if v == "none" => {
            println!(
                "cargo::warning={EMBED_ENV}=none: this daolinet-agent carries no BPF object \
                 and needs --bpf-object or $DAOLINET_BPF_OBJECT to run"
            );
            Vec::new()
        }
        Some(path) => {
            let path = PathBuf::from(path);
            if path.is_relative() {
                // Cargo runs build scripts from the package directory, not
                // from where the user typed the command.
                return Err(format!(
                    "{EMBED_ENV}={}: give an absolute path",
                    path.display()
                ));
            }
            println!("cargo::rerun-if-changed={}", path.display());
            let bytes =
                std::fs::read(&path).map_err(|e| format!("{EMBED_ENV}={}: {e}", path.display()))?;
            check_elf(&bytes).map_err(|e| format!("{EMBED_ENV}={}: {e}", path.display()))?;
            bytes
        }
        None => build(&out_dir)?,
    };
    write_if_changed(&dest, &object)
}

/// Build the object from the workspace sources. When the workspace's
/// target directory cannot be created (a read-only source tree), the inner
/// build uses one in `OUT_DIR`.
fn build(out_dir: &Path) -> Result<Vec<u8>, String> {
    let manifest = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR is not set")?,
    );
    let workspace = manifest
        .parent()
        .ok_or("the agent crate has no parent directory")?;
    let mut recipe = Recipe::new(workspace, Profile::Release);
    if !recipe.crate_dir().is_dir() {
        return Err(format!(
            "the BPF crate is not at {}: build the agent from the DaoliNet workspace, or set \
             {EMBED_ENV} to a prebuilt object (or to `none`)",
            recipe.crate_dir().display()
        ));
    }
    for source in recipe.sources() {
        println!("cargo::rerun-if-changed={}", source.display());
    }
    if std::fs::create_dir_all(recipe.target_dir()).is_err() {
        recipe = recipe.with_target_dir(out_dir.join("ebpf-target"));
    }
    let artifact = recipe.build_quietly().map_err(|e| {
        format!(
            "{e}\nThe agent embeds its BPF object at build time. To build the agent without the \
             BPF toolchain, set {EMBED_ENV} to a prebuilt object (`cargo xtask build-ebpf \
             --release` writes target/bpf/daolinet.bpf.o) or to `none` (the agent then needs \
             --bpf-object)."
        )
    })?;
    let bytes =
        std::fs::read(&artifact).map_err(|e| format!("reading {}: {e}", artifact.display()))?;
    check_elf(&bytes).map_err(|e| format!("{}: {e}", artifact.display()))?;
    Ok(bytes)
}

/// A BPF object is an ELF file: refuse anything else at build time rather
/// than at the agent's start.
fn check_elf(bytes: &[u8]) -> Result<(), String> {
    if bytes.starts_with(b"\x7fELF") {
        Ok(())
    } else {
        Err("not an ELF object".to_string())
    }
}

/// Write `bytes` to `dest` unless it already holds them (an unchanged file
/// keeps its mtime).
fn write_if_changed(dest: &Path, bytes: &[u8]) -> Result<(), String> {
    if std::fs::read(dest).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    std::fs::write(dest, bytes).map_err(|e| format!("writing {}: {e}", dest.display()))
}
