//! The one recipe that builds the eBPF datapath object: `daolinet-ebpf`
//! compiled for `bpfel-unknown-none` with the nightly toolchain
//! (`-Z build-std=core`), linked by `bpf-linker` with BTF.
//!
//! Two callers, so the object they produce is the same file:
//!
//! - `daolinet-agent`'s build script builds it and embeds it in the agent
//!   binary (see `daolinet-agent/build.rs`);
//! - `cargo xtask build-ebpf` builds it in the open (compiler output on the
//!   terminal) and copies it to `target/bpf/daolinet.bpf.o` for tools.
//!
//! Both build into the same Cargo target directory (`target/ebpf` of the
//! workspace), separate from the outer build's, so the inner `cargo` never
//! waits on the lock of the build that runs it, and the second caller finds
//! the object up to date (a no-op build takes a fraction of a second).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The rustup toolchain the BPF crate is built with (`-Z build-std` needs
/// nightly).
pub const TOOLCHAIN: &str = "nightly";
/// The BPF target (little-endian, the byte order of x86_64 and aarch64).
pub const TARGET: &str = "bpfel-unknown-none";
/// The package and its binary (the object) in the workspace.
pub const PACKAGE: &str = "daolinet-ebpf";
/// Name of the binary target of [`PACKAGE`]: the ELF object the agent loads.
pub const BINARY: &str = "daolinet";
/// What to do when the toolchain is missing.
pub const SETUP_HINT: &str = "run `cargo xtask setup` (it installs the nightly toolchain's \
                              rust-src and bpf-linker)";

/// Variables of an outer Cargo build that must not reach the inner one: they
/// name the outer toolchain (the stable rustc, clippy's driver) or its flags.
const OUTER_ENV: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTDOC",
    "RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO",
    "RUSTUP_TOOLCHAIN",
];

/// Variables Cargo sets for a build script (or for `cargo run`) that
/// describe the *outer* package and target. The BPF crate's dependencies
/// watch some of them (aya-ebpf's build script reruns when `HOST`
/// changes), so letting them through would make the builds from
/// `build.rs` and from `cargo xtask build-ebpf` look different to Cargo
/// and recompile the object each time the other one ran.
const OUTER_BUILD_SCRIPT_ENV: &[&str] = &[
    "HOST",
    "TARGET",
    "OUT_DIR",
    "PROFILE",
    "OPT_LEVEL",
    "DEBUG",
    "NUM_JOBS",
    "RUSTC_LINKER",
];
/// Prefixes of the same kind (`CARGO_PKG_NAME`, `CARGO_CFG_TARGET_ARCH`...).
const OUTER_BUILD_SCRIPT_PREFIXES: &[&str] = &[
    "CARGO_PKG_",
    "CARGO_CFG_",
    "CARGO_FEATURE_",
    "CARGO_MANIFEST_",
    "CARGO_CRATE_",
    "CARGO_BIN_",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_RUSTC_CURRENT_DIR",
    "DEP_",
];

/// True for a variable of this process's environment that belongs to the
/// outer build and must be removed from the inner one.
fn is_outer(name: &str) -> bool {
    OUTER_ENV.contains(&name)
        || OUTER_BUILD_SCRIPT_ENV.contains(&name)
        || OUTER_BUILD_SCRIPT_PREFIXES
            .iter()
            .any(|p| name.starts_with(p))
}

/// How the object is compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Optimised: the variant the kernel verifier accepts, and the one the
    /// agent embeds.
    Release,
    /// Unoptimised (rarely passes the verifier; for inspecting codegen).
    Debug,
}

impl Profile {
    fn dir(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "debug",
        }
    }
}

/// One build of the BPF object in a workspace.
#[derive(Clone, Debug)]
pub struct Recipe {
    workspace: PathBuf,
    target_dir: PathBuf,
    profile: Profile,
}

impl Recipe {
    /// Build `daolinet-ebpf` of the workspace rooted at `workspace` into
    /// `<workspace>/target/ebpf`.
    pub fn new(workspace: &Path, profile: Profile) -> Self {
        Recipe {
            workspace: workspace.to_path_buf(),
            target_dir: workspace.join("target").join("ebpf"),
            profile,
        }
    }

    /// Use `dir` as the inner build's Cargo target directory instead.
    pub fn with_target_dir(mut self, dir: PathBuf) -> Self {
        self.target_dir = dir;
        self
    }

    /// The inner build's Cargo target directory.
    pub fn target_dir(&self) -> &Path {
        &self.target_dir
    }

    /// The BPF crate's directory.
    pub fn crate_dir(&self) -> PathBuf {
        self.workspace.join(PACKAGE)
    }

    /// The files and directories whose changes change the object: the BPF
    /// crate, the map layouts it shares with userspace, the workspace
    /// manifest (profile settings) and the lock file (aya-ebpf's version).
    pub fn sources(&self) -> Vec<PathBuf> {
        [
            "daolinet-ebpf",
            "daolinet-common",
            "Cargo.toml",
            "Cargo.lock",
        ]
        .iter()
        .map(|p| self.workspace.join(p))
        .collect()
    }

    /// The `cargo build` that compiles the object (through `rustup run`, so
    /// the nightly toolchain is used whatever toolchain runs the caller).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("rustup");
        cmd.current_dir(&self.workspace)
            .args(["run", TOOLCHAIN, "cargo", "build", "--package", PACKAGE])
            .args(["--bin", BINARY, "--target", TARGET])
            .args(["-Z", "build-std=core"])
            .arg("--target-dir")
            .arg(&self.target_dir);
        if self.profile == Profile::Release {
            cmd.arg("--release");
        }
        for var in OUTER_ENV {
            cmd.env_remove(var);
        }
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(is_outer) {
                cmd.env_remove(name);
            }
        }
        // The BPF program reads kernel structures laid out for the host
        // architecture; BTF lets the loader and bpftool describe the maps.
        cmd.env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
                "-Cdebuginfo=2".to_string(),
                "-Clink-arg=--btf".to_string(),
            ]
            .join("\x1f"),
        );
        cmd
    }

    /// Where [`Recipe::command`] leaves the object.
    pub fn artifact(&self) -> PathBuf {
        self.target_dir
            .join(TARGET)
            .join(self.profile.dir())
            .join(BINARY)
    }

    /// Run [`Recipe::command`] with its output captured and return the
    /// object's path; on failure, an error that says what is missing (see
    /// [`diagnose`]) followed by the compiler's output.
    pub fn build_quietly(&self) -> Result<PathBuf, String> {
        let mut cmd = self.command();
        cmd.env("CARGO_TERM_COLOR", "never");
        let out = match cmd.output() {
            Ok(out) => out,
            Err(e) => return Err(format!("cannot run `rustup`: {e}; {}", diagnose())),
        };
        self.finish(&out)
    }

    fn finish(&self, out: &Output) -> Result<PathBuf, String> {
        if !out.status.success() {
            return Err(format!(
                "building the BPF datapath ({PACKAGE} for {TARGET}) failed ({}):\n{}\n\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end(),
                diagnose()
            ));
        }
        let artifact = self.artifact();
        if !artifact.is_file() {
            return Err(format!(
                "the BPF build succeeded but left no object at {}",
                artifact.display()
            ));
        }
        Ok(artifact)
    }
}

/// One sentence on what the BPF build needs and what is missing from it on
/// this machine (rustup, the nightly toolchain, its rust-src, bpf-linker),
/// ending with [`SETUP_HINT`].
pub fn diagnose() -> String {
    let mut missing = Vec::new();
    let ok = |cmd: &mut Command| cmd.output().is_ok_and(|o| o.status.success());
    if !ok(Command::new("rustup").arg("--version")) {
        missing.push("rustup".to_string());
    } else if !ok(Command::new("rustup").args(["run", TOOLCHAIN, "rustc", "--version"])) {
        missing.push(format!("the {TOOLCHAIN} toolchain"));
    } else {
        let list = Command::new("rustup")
            .args(["component", "list", "--installed", "--toolchain", TOOLCHAIN])
            .output();
        let has_src = list.is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("rust-src"))
        });
        if !has_src {
            missing.push(format!("rust-src of the {TOOLCHAIN} toolchain"));
        }
    }
    if !on_path("bpf-linker") {
        missing.push("bpf-linker".to_string());
    }
    let what = if missing.is_empty() {
        "the toolchain looks complete, see the compiler output below".to_string()
    } else {
        format!("missing: {}", missing.join(", "))
    };
    format!(
        "the BPF build needs rustup's {TOOLCHAIN} toolchain with rust-src, and bpf-linker \
         ({what}); {SETUP_HINT}"
    )
}

/// True when `program` is a file in one of `$PATH`'s directories or in
/// Cargo's `bin` directory (which `rustup run` adds to the inner build's
/// `PATH`, and where `cargo install` puts bpf-linker).
fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    std::env::split_paths(&path)
        .chain(cargo_home.map(|c| c.join("bin")))
        .any(|d| d.join(program).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_and_debug_objects_live_in_their_profile_directories() {
        let ws = Path::new("/src/daolinet");
        let release = Recipe::new(ws, Profile::Release);
        assert_eq!(
            release.artifact(),
            Path::new("/src/daolinet/target/ebpf/bpfel-unknown-none/release/daolinet")
        );
        let debug = Recipe::new(ws, Profile::Debug).with_target_dir("/t".into());
        assert_eq!(
            debug.artifact(),
            Path::new("/t/bpfel-unknown-none/debug/daolinet")
        );
    }

    #[test]
    fn the_command_uses_nightly_and_hides_the_outer_toolchain() {
        let cmd = Recipe::new(Path::new("/w"), Profile::Release).command();
        assert_eq!(cmd.get_program(), "rustup");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(&args[..3], ["run", "nightly", "cargo"]);
        assert!(args.contains(&"--release".into()));
        assert!(args.windows(2).any(|w| w == ["-Z", "build-std=core"]));
        let envs: Vec<_> = cmd.get_envs().collect();
        for var in ["RUSTC_WORKSPACE_WRAPPER", "RUSTC", "CARGO"] {
            assert!(
                envs.iter().any(|(k, v)| *k == var && v.is_none()),
                "{var} must be removed"
            );
        }
        let flags = envs
            .iter()
            .find(|(k, _)| *k == "CARGO_ENCODED_RUSTFLAGS")
            .and_then(|(_, v)| *v)
            .map(|v| v.to_string_lossy().into_owned());
        assert!(flags.is_some_and(|f| f.contains("-Clink-arg=--btf")));
    }

    #[test]
    fn the_outer_build_scripts_variables_are_recognised() {
        for outer in [
            "HOST",
            "TARGET",
            "OUT_DIR",
            "CARGO_PKG_NAME",
            "CARGO_CFG_TARGET_ARCH",
        ] {
            assert!(is_outer(outer), "{outer}");
        }
        for kept in [
            "PATH",
            "HOME",
            "CARGO_HOME",
            "CARGO_MAKEFLAGS",
            "RUSTUP_HOME",
        ] {
            assert!(!is_outer(kept), "{kept}");
        }
    }

    #[test]
    fn sources_cover_the_bpf_crate_and_the_shared_layouts() {
        let s = Recipe::new(Path::new("/w"), Profile::Release).sources();
        assert!(s.contains(&PathBuf::from("/w/daolinet-ebpf")));
        assert!(s.contains(&PathBuf::from("/w/daolinet-common")));
    }
}
