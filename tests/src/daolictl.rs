//! `daolictl` run from a test, inside a namespace, against a test
//! controller's API (its address and token), with its output checked.

#![allow(clippy::panic)] // a panic is a failed test

use daolinet_testlab::{workspace_bin, Api, Netns, Ran};
use serde_json::Value;

/// `daolictl ARGS` run in `ns` against `api`.
pub fn daolictl_ran(ns: &Netns, api: &Api, args: &[&str]) -> Ran {
    let mut v = vec![
        workspace_bin("daolictl").display().to_string(),
        "--api".into(),
        api.base(),
        "--token".into(),
        api.token().unwrap_or_default().to_string(),
    ];
    v.extend(args.iter().map(|a| a.to_string()));
    let argv: Vec<&str> = v.iter().map(String::as_str).collect();
    ns.output(&argv)
}

/// `daolictl ARGS` run in `ns`; its output (the test fails if it fails).
#[track_caller]
pub fn daolictl(ns: &Netns, api: &Api, args: &[&str]) -> String {
    let r = daolictl_ran(ns, api, args);
    assert!(r.ok, "daolictl {args:?}: {}{}", r.stderr, r.stdout);
    r.stdout
}

/// `daolictl -o json trace ARGS`, which must succeed; its JSON.
#[track_caller]
pub fn trace_json(ns: &Netns, api: &Api, args: &[&str]) -> Value {
    let mut a = vec!["-o", "json", "trace"];
    a.extend_from_slice(args);
    let out = daolictl(ns, api, &a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}
