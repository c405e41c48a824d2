//! Dependency rules that keep the sans-IO crates pure, checked with
//! `cargo tree` by `cargo test -p xtask` (so by `cargo xtask test` and CI).
//! Cargo's own dependency lists are the enforcement; these tests keep a
//! later change from quietly adding an I/O crate underneath them.

#![cfg(test)]

use std::collections::BTreeSet;

use crate::util::{cargo, output};

/// Crates that do I/O (sockets, files, syscalls, async runtimes, BPF,
/// storage): none may appear under a pure crate, directly or not.
const IO_CRATES: &[&str] = &[
    "tokio",
    "mio",
    "axum",
    "hyper",
    "redb",
    "ureq",
    "nix",
    "libc",
    "socket2",
    "aya",
    "etcd-client",
    "tonic",
    "rustls",
    "daolinet-rxstamp",
    "daolinet-controller",
    "daolinet-agent",
];

/// The packages `pkg` builds with (normal and build dependencies, all
/// features; dev-dependencies only reach its tests).
fn tree(pkg: &str) -> BTreeSet<String> {
    let out = output(cargo().args([
        "tree",
        "-p",
        pkg,
        "-e",
        "normal,build",
        "--all-features",
        "--prefix",
        "none",
        "--format",
        "{p}",
    ]))
    .unwrap();
    let names: BTreeSet<String> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert!(names.contains(pkg), "cargo tree did not list {pkg}: {out}");
    names
}

fn assert_pure(pkg: &str) {
    let names = tree(pkg);
    let io: Vec<&str> = IO_CRATES
        .iter()
        .copied()
        .filter(|c| names.contains(*c))
        .collect();
    assert!(
        io.is_empty(),
        "{pkg} must stay sans-IO but depends on {io:?} (see `cargo tree -p {pkg} -i CRATE`)"
    );
}

#[test]
fn policy_has_no_io_dependency() {
    assert_pure("daolinet-policy");
}

#[test]
fn openflow_codec_has_no_io_dependency() {
    assert_pure("daolinet-openflow");
}

#[test]
fn loadgen_does_not_link_the_controller() {
    let names = tree("daolinet-loadgen");
    assert!(
        !names.contains("daolinet-controller"),
        "daolinet-loadgen must not depend on daolinet-controller"
    );
    assert!(names.contains("daolinet-policy"));
}

#[test]
fn the_io_list_names_real_crates() {
    // A misspelt entry would make the checks above pass vacuously: every
    // third-party name must be one the controller's build actually has.
    let controller = tree("daolinet-controller");
    for c in [
        "tokio", "mio", "axum", "hyper", "redb", "ureq", "nix", "libc",
    ] {
        assert!(
            controller.contains(c),
            "{c} is not in the controller's tree"
        );
    }
}
