//! The controller refuses bad startup settings with one clear line and
//! starts nothing.

#![allow(clippy::unwrap_used)] // test: a failed unwrap is a failed test

use std::process::Command;

#[test]
fn a_gateway_mac_containers_could_have_is_refused_before_anything_starts() {
    let dir = std::env::temp_dir().join(format!("polgw-{}", std::process::id()));
    let store = dir.join("store").join("c.redb");
    for (mac, why) in [
        ("02:da:10:00:00:05", "range the controller gives containers"),
        ("01:00:5e:00:00:01", "multicast"),
        ("00:00:00:00:00:00", "zero"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_daolinet-controller"))
            .args(["run", "--store"])
            .arg(&store)
            .args(["--gateway-mac", mac, "--api", "127.0.0.1:0"])
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{mac} accepted");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(mac) && err.contains(why), "{err}");
        assert!(out.stdout.is_empty(), "something started: {out:?}");
        assert!(!dir.exists(), "{} created", dir.display());
    }
}
