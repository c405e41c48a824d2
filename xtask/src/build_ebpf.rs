//! `cargo xtask build-ebpf`: build daolinet-ebpf for bpfel-unknown-none.
//!
//! The object lands in `target/bpf/daolinet.bpf.o`; the agent's build script
//! embeds it (see daolinet-agent/build.rs), and tests load it from there.

use anyhow::{Context, Result};
use std::path::PathBuf;

use crate::util::{cargo, step, workspace_root};

/// Where the built object is copied (the agent and the tests read it here).
pub fn object_path() -> PathBuf {
    workspace_root().join("target/bpf/daolinet.bpf.o")
}

/// Build the BPF object; `release` selects the optimised profile.
pub fn run(release: bool) -> Result<PathBuf> {
    step("building the eBPF datapath (daolinet-ebpf, bpfel-unknown-none)");
    let root = workspace_root();
    let target_dir = root.join("target/ebpf");
    let mut cmd = cargo();
    cmd.args([
        "+nightly",
        "build",
        "-p",
        "daolinet-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
    ])
    .arg("--target-dir")
    .arg(&target_dir)
    .env(
        "CARGO_ENCODED_RUSTFLAGS",
        [
            "--cfg=bpf_target_arch=\"x86_64\"",
            "-Cdebuginfo=2",
            "-Clink-arg=--btf",
        ]
        .join("\x1f"),
    )
    // rustup's proxy picks the toolchain from `+nightly` only through the
    // `cargo` proxy; make sure an inherited RUSTC does not override it.
    .env_remove("RUSTC")
    .env_remove("RUSTC_WRAPPER");
    if release {
        cmd.arg("--release");
    }
    // `cargo()` honours $CARGO, which points at the stable toolchain's cargo
    // binary when we run under `cargo xtask`; `+nightly` needs the rustup proxy.
    let mut proxy = std::process::Command::new("cargo");
    proxy.current_dir(&root);
    proxy.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => proxy.env(k, v),
            None => proxy.env_remove(k),
        };
    }
    proxy.env_remove("CARGO").env_remove("RUSTUP_TOOLCHAIN");
    crate::util::run(&mut proxy).context(
        "the BPF build failed; if bpf-linker or rust-src is missing, run `cargo xtask setup`",
    )?;
    let profile = if release { "release" } else { "debug" };
    let built = target_dir
        .join("bpfel-unknown-none")
        .join(profile)
        .join("daolinet");
    let dest = object_path();
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::copy(&built, &dest)
        .with_context(|| format!("copying {} to {}", built.display(), dest.display()))?;
    eprintln!("    BPF object: {}", dest.display());
    Ok(dest)
}
