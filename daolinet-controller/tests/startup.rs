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

#[test]
fn a_bad_or_unreachable_etcd_store_is_refused_with_one_line() {
    let dir = std::env::temp_dir().join(format!("haetcd-{}", std::process::id()));
    let token = dir.join("api-token");
    for (store, why) in [
        ("etcd:", "expected http://HOST:PORT"),
        (
            "etcd:https://127.0.0.1:2379",
            "TLS to etcd is not supported",
        ),
        (
            "etcd:http://127.0.0.1:2379,127.0.0.1:2380",
            "expected http://HOST:PORT",
        ),
        // Port 1 on loopback: nothing listens there.
        ("etcd:http://127.0.0.1:1", "unreachable"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_daolinet-controller"))
            .args(["run", "--store", store, "--token-file"])
            .arg(&token)
            .args(["--api", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{store} accepted");
        assert_eq!(err.trim().lines().count(), 1, "{store}: {err}");
        assert!(err.contains(why), "{store}: {err}");
        assert!(out.stdout.is_empty(), "something started: {out:?}");
        assert!(!dir.exists(), "{} created", dir.display());
    }
}

#[test]
fn a_lease_ttl_without_an_etcd_store_is_refused() {
    let dir = std::env::temp_dir().join(format!("hattl-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_daolinet-controller"))
        .args(["run", "--store"])
        .arg(dir.join("c.redb"))
        .args([
            "--lease-ttl",
            "2",
            "--api",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--lease-ttl needs an etcd store"), "{err}");
    assert!(out.stdout.is_empty() && !dir.exists());
}

#[test]
fn a_bad_etcd_prefix_or_one_without_etcd_is_refused() {
    let dir = std::env::temp_dir().join(format!("hapfx-{}", std::process::id()));
    let file = dir.join("c.redb").display().to_string();
    for (store, prefix, why) in [
        (file.as_str(), "/b/", "--etcd-prefix needs an etcd store"),
        // Checked before etcd is reached (nothing listens on port 1).
        ("etcd:http://127.0.0.1:1", "daolinet/", "expected /NAME/"),
        ("etcd:http://127.0.0.1:1", "/a b/", "no spaces"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_daolinet-controller"))
            .args(["run", "--store", store, "--etcd-prefix", prefix])
            .arg("--token-file")
            .arg(dir.join("api-token"))
            .args(["--api", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{prefix} accepted");
        assert_eq!(err.trim().lines().count(), 1, "{prefix}: {err}");
        assert!(err.contains(why), "{prefix}: {err}");
        assert!(out.stdout.is_empty() && !dir.exists(), "{out:?}");
    }
}
