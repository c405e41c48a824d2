//! `cargo xtask setup`: install every missing prerequisite, idempotently.

use anyhow::{bail, Result};
use std::process::Command;

use crate::util::{cargo, have, is_root, output, run as sh, step};

/// Debian packages the build, the tests, the demo and the benchmarks call.
const APT_PACKAGES: &[&str] = &[
    // eBPF toolchain: bpf-linker links against LLVM 22.
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // Network namespaces, traffic, inspection.
    "iproute2",
    "iperf3",
    "ethtool",
    "tcpdump",
    "iputils-ping",
    "netcat-openbsd",
    // Open vSwitch (userspace datapath) for interop tests and benchmarks,
    // and ovs-testcontroller as a third-party controller.
    "openvswitch-switch",
    "openvswitch-testcontroller",
    // traceroute through the virtual routers (edge services).
    "traceroute",
    // NAT-out masquerade and firewall on hosts: one nftables table of ours.
    "nftables",
    "conntrack",
    // Several controllers on etcd (HA): etcd members started by the tests;
    // etcd-client needs protoc at build time, and the well-known types
    // (google/protobuf/*.proto) that libprotobuf-dev ships.
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
    "libprotobuf-dev",
    // Container runtimes driven by the Docker driver and the CNI plugin;
    // images are imported from busybox-static (no registry is reachable).
    "docker.io",
    "podman",
    // CNI reference plugins (bridge, host-local): podman's bridge beside
    // daolinet-cni in `cargo xtask bench attach`.
    "containernetworking-plugins",
    "runc",
    "busybox-static",
    // A real Prometheus scrapes the agents' and the controller's metrics.
    "prometheus",
];

/// The bpf-linker version known to work with our aya pins.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The cargo-fuzz version used by `cargo xtask fuzz`.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Install what is missing; print what is already there.
pub fn run() -> Result<()> {
    if !is_root() {
        bail!(
            "setup installs system packages and must run as root \
             (try: sudo -E cargo xtask setup)"
        );
    }
    apt()?;
    rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
    osken()?;
    step("setup complete");
    Ok(())
}

fn apt() -> Result<()> {
    step("checking Debian packages");
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!("    all {} packages present", APT_PACKAGES.len());
        return Ok(());
    }
    eprintln!("    missing: {}", missing.join(" "));
    sh(Command::new("apt-get").args(["update", "-q"]))?;
    sh(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing))?;
    // The openvswitch-switch postinst may start daemons through systemd,
    // which does not run here; tests start their own ovsdb/vswitchd.
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .map(|s| s.contains("install ok installed"))
        .unwrap_or(false)
}

fn rust_src() -> Result<()> {
    step("checking the nightly toolchain and rust-src (for the BPF build)");
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]));
    match components {
        Ok(list) if list.lines().any(|l| l.starts_with("rust-src")) => {
            eprintln!("    rust-src present");
            Ok(())
        }
        Ok(_) => sh(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ])),
        Err(e) => bail!(
            "no nightly toolchain ({e}); the BPF build needs one: rustup toolchain install nightly"
        ),
    }
}

fn bpf_linker() -> Result<()> {
    step("checking bpf-linker");
    if let Ok(v) = output(Command::new("bpf-linker").arg("--version")) {
        if v.contains(BPF_LINKER_VERSION) {
            eprintln!("    {}", v.trim());
            return Ok(());
        }
        eprintln!("    found {}, want {BPF_LINKER_VERSION}", v.trim());
    }
    eprintln!("    building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    sh(cargo().env("LLVM_PREFIX", "/usr/lib/llvm-22").args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        "--no-default-features",
        "--features",
        "llvm-22",
    ]))
}

fn cargo_fuzz() -> Result<()> {
    step("checking cargo-fuzz");
    if have("cargo-fuzz") {
        eprintln!("    cargo-fuzz present");
        return Ok(());
    }
    sh(cargo().args([
        "install",
        &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
        "--locked",
    ]))
}

/// os-ken (Python OpenFlow controller), the reference of `cargo xtask bench controller`.
fn osken() -> Result<()> {
    let version = crate::bench::OSKEN_VERSION;
    step("checking os-ken (Python; reference for the controller benchmark)");
    if let Ok(v) = output(Command::new("python3").args(["-m", "pip", "show", "os-ken"])) {
        if v.lines().any(|l| l.trim() == format!("Version: {version}")) {
            eprintln!("    os-ken {version} present");
            return Ok(());
        }
    }
    let spec = format!("os-ken=={version}");
    let pip = || {
        let mut c = Command::new("python3");
        c.args(["-m", "pip", "install", "-q", "--disable-pip-version-check"]);
        c
    };
    if sh(pip().arg(&spec)).is_err() {
        // A distribution Python marked "externally managed" (PEP 668).
        sh(pip().arg("--break-system-packages").arg(&spec))?;
    }
    Ok(())
}
