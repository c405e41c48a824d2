//! OpenFlow over TLS with mutual authentication, with certificates made by
//! `ovs-pki` (as Open vSwitch hosts use them): a switch with a certificate
//! of the switch CA for its datapath id is served; one claiming another
//! datapath, one without a certificate, one with a certificate of another
//! CA, and plain TCP are refused; a switch that does not trust the
//! controller's CA does not connect; the REST API over HTTPS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::fakeswitch::{flow_mods, FakeSwitch, WAIT};
use daolinet_openflow::{consts::*, ErrorCode, Hello, Message, SwitchFeatures};
use daolinet_testlab::{require, Controller, ControllerOpts, Need};
use daolinet_tls::TlsFiles;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// `ovs-pki` in `dir`: CAs in `dir/pki`, `ctl` (controller) and the given
/// switch names signed.
/// An `ovs-pki` directory under `dir` with a controller certificate and one
/// switch certificate per name. With `names_of`, its two CAs take the
/// distinguished names of that other PKI's CAs: `ovs-pki` names a CA after
/// the second it was made, so two PKIs made in the same second share names
/// anyway, and a verifier must refuse such an impostor on its signature.
fn make_pki(dir: &Path, switches: &[&str], names_of: Option<&Path>) -> PathBuf {
    let pki = dir.join("pki");
    let run = |args: &[&str]| {
        let out = Command::new("ovs-pki")
            .arg(format!("--dir={}", pki.display()))
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ovs-pki {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    match names_of {
        None => run(&["init"]),
        Some(other) => {
            for ca in ["controllerca", "switchca"] {
                std::fs::create_dir_all(pki.join(ca)).unwrap();
                std::fs::copy(other.join(ca).join("ca.cnf"), pki.join(ca).join("ca.cnf")).unwrap();
            }
            // `init` keeps an existing ca.cnf; --force because the directory exists.
            run(&["init", "--force"]);
        }
    }
    run(&["req+sign", "ctl", "controller"]);
    for s in switches {
        run(&["req+sign", s, "switch"]);
    }
    pki
}

fn switch_files(dir: &Path, pki: &Path, name: &str) -> TlsFiles {
    TlsFiles {
        ca: pki.join("controllerca/cacert.pem"),
        cert: dir.join(format!("{name}-cert.pem")),
        key: dir.join(format!("{name}-privkey.pem")),
    }
}

/// A TLS connection as the switch whose files are `files`.
async fn tls_connect(
    addr: std::net::SocketAddr,
    cfg: Arc<daolinet_tls::rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(daolinet_tls::server_name(), tcp)
        .await
}

async fn hello_features(s: &mut FakeSwitch, dpid: u64) {
    s.send(1, Message::Hello(Hello::new())).await;
    let f = s.until(|f| f.message == Message::FeaturesRequest).await;
    s.send(
        f.last().unwrap().xid,
        Message::FeaturesReply(SwitchFeatures {
            datapath_id: dpid,
            n_buffers: 0,
            n_tables: 254,
            auxiliary_id: 0,
            capabilities: 0,
            reserved: 0,
        }),
    )
    .await;
}

/// True when the peer refuses: the TLS handshake fails, or the first read
/// fails or ends (TLS 1.3 reports a refused client certificate then).
async fn refused(addr: std::net::SocketAddr, cfg: Arc<daolinet_tls::rustls::ClientConfig>) -> bool {
    let Ok(mut t) = tls_connect(addr, cfg).await else {
        return true;
    };
    let mut b = [0u8; 256];
    let _ = t.write_all(&hello_bytes()).await;
    matches!(timeout(WAIT, t.read(&mut b)).await, Ok(Ok(0) | Err(_)))
}

fn hello_bytes() -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    Message::Hello(Hello::new()).encode(1, &mut b).unwrap();
    b.to_vec()
}

#[test]
fn openflow_over_tls_binds_switches_to_their_datapath() {
    let Some(_ready) = require(&[Need::Program("ovs-pki")]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), &["0000000000000001"], None);
    // Another CA bearing the same names, with a certificate for the same
    // datapath.
    let rogue_dir = dir.path().join("rogue");
    std::fs::create_dir(&rogue_dir).unwrap();
    let rogue = make_pki(&rogue_dir, &["0000000000000001"], Some(&pki));

    let cdir = dir.path().join("ctl");
    std::fs::create_dir(&cdir).unwrap();
    let s = |p: PathBuf| p.to_string_lossy().into_owned();
    let ctl = Controller::start_bin(
        Path::new(env!("CARGO_BIN_EXE_daolinet-controller")),
        &ControllerOpts::new(&cdir).listen("ssl:127.0.0.1:0").args(&[
            "--tls-ca",
            &s(pki.join("switchca/cacert.pem")),
            "--tls-cert",
            &s(dir.path().join("ctl-cert.pem")),
            "--tls-key",
            &s(dir.path().join("ctl-privkey.pem")),
        ]),
    );
    common::populate(ctl.api());
    let addr = ctl.openflow();
    let good =
        daolinet_tls::client_config(&switch_files(dir.path(), &pki, "0000000000000001")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // The switch of datapath 1 with its certificate: served.
        let mut sw = FakeSwitch::over(tls_connect(addr, good.clone()).await.unwrap());
        hello_features(&mut sw, 1).await;
        let init = sw.until(|f| f.message == Message::BarrierRequest).await;
        assert!(flow_mods(&init).len() >= 5, "{init:?}");

        // The same certificate claiming datapath 2: refused (EPERM), closed.
        let mut liar = FakeSwitch::over(tls_connect(addr, good.clone()).await.unwrap());
        hello_features(&mut liar, 2).await;
        let got = liar.until(|f| matches!(f.message, Message::Error(_))).await;
        let Some(Message::Error(e)) = got.last().map(|f| &f.message) else {
            unreachable!()
        };
        assert_eq!(
            e.code(),
            Some(ErrorCode::new(OFPET_BAD_REQUEST, OFPBRC_EPERM))
        );
        assert!(
            liar.closed().await,
            "a switch with another datapath's certificate stayed"
        );

        // A certificate of another CA, and no certificate at all: refused.
        let rogue_cfg = daolinet_tls::client_config(&TlsFiles {
            ca: pki.join("controllerca/cacert.pem"),
            ..switch_files(&rogue_dir, &rogue, "0000000000000001")
        })
        .unwrap();
        assert!(
            refused(addr, rogue_cfg).await,
            "a certificate of another CA was taken"
        );
        let anonymous = Arc::new(daolinet_tls::rustls::ClientConfig::clone(
            &daolinet_tls::api_client_config(&pki.join("controllerca/cacert.pem")).unwrap(),
        ));
        assert!(
            refused(addr, anonymous).await,
            "a switch without a certificate was taken"
        );

        // Plain TCP OpenFlow on the TLS port: no OpenFlow answer.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain.write_all(&hello_bytes()).await.unwrap();
        let mut b = [0u8; 64];
        let r = timeout(WAIT, plain.read(&mut b)).await.unwrap();
        assert!(
            !matches!(r, Ok(n) if n >= 8 && b[0] == 4 && b[1] == OFPT_HELLO),
            "plain OpenFlow answered on a TLS port"
        );

        // A switch that does not trust the controller's CA does not connect.
        let distrust = daolinet_tls::client_config(&TlsFiles {
            ca: rogue.join("controllerca/cacert.pem"),
            ..switch_files(dir.path(), &pki, "0000000000000001")
        })
        .unwrap();
        let e = tls_connect(addr, distrust)
            .await
            .map(|_| ())
            .expect_err("connected to an untrusted controller");
        // The rogue CA has our CA's names, so rustls finds the issuer by
        // name and refuses on the signature (BadSignature); a CA with other
        // names would be UnknownIssuer. Either is "invalid peer certificate".
        assert!(
            e.to_string()
                .contains("invalid peer certificate: BadSignature"),
            "{e}"
        );
        drop(sw);
    });
    let m = ctl.api().text("/metrics");
    let refused_n: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("daolinet_tls_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(refused_n >= 4, "{m}");
}

#[test]
fn the_rest_api_over_https() {
    let Some(_ready) = require(&[Need::Program("ovs-pki")]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), &[], None);
    let cdir = dir.path().join("ctl");
    std::fs::create_dir(&cdir).unwrap();
    let s = |p: PathBuf| p.to_string_lossy().into_owned();
    let mut child = Command::new(env!("CARGO_BIN_EXE_daolinet-controller"))
        .args([
            "run",
            "--api",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--api-tls",
        ])
        .args(["--tls-cert", &s(dir.path().join("ctl-cert.pem"))])
        .args(["--tls-key", &s(dir.path().join("ctl-privkey.pem"))])
        .arg("--store")
        .arg(cdir.join("c.redb"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("api: https://")
        .unwrap_or_else(|| panic!("{line:?}"))
        .parse()
        .unwrap();
    let token = std::fs::read_to_string(cdir.join("api-token")).unwrap();
    let cfg = daolinet_tls::api_client_config(&pki.join("controllerca/cacert.pem")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut t = tls_connect(addr, cfg).await.unwrap();
        let req = format!(
            "GET /api/hosts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            token.trim()
        );
        t.write_all(req.as_bytes()).await.unwrap();
        let mut resp = Vec::new();
        timeout(WAIT, t.read_to_end(&mut resp)).await.unwrap().ok();
        let resp = String::from_utf8_lossy(&resp);
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        // Plain HTTP is not served there.
        let mut p = TcpStream::connect(addr).await.unwrap();
        p.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut b = Vec::new();
        let _ = timeout(Duration::from_secs(12), p.read_to_end(&mut b)).await;
        assert!(!String::from_utf8_lossy(&b).starts_with("HTTP/1.1 200"));
    });
    // daolictl over HTTPS: verified against the controller CA with --ca;
    // without it, with another CA, or --ca for plain HTTP: one line, exit 1
    // or 2, nothing done.
    let daolictl = |api: &str, ca: Option<PathBuf>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_daolictl"));
        c.args(["--api", api, "--token-file"])
            .arg(cdir.join("api-token"))
            .env_remove("DAOLI_CA");
        if let Some(ca) = ca {
            c.arg("--ca").arg(ca);
        }
        c.args([
            "-o",
            "json",
            "network",
            "create",
            "blue",
            "--subnet",
            "10.9.0.0/24",
        ]);
        c.output().unwrap()
    };
    let https = format!("https://{addr}");
    for (api, ca, why) in [
        (https.as_str(), None, "pass --ca FILE"),
        (
            https.as_str(),
            Some(pki.join("switchca/cacert.pem")),
            "cannot reach the controller",
        ),
        (
            "http://127.0.0.1:1",
            Some(pki.join("controllerca/cacert.pem")),
            "--ca is for an https:// --api",
        ),
    ] {
        let out = daolictl(api, ca.clone());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{api} {ca:?}: accepted");
        assert_eq!(err.trim().lines().count(), 1, "{api} {ca:?}: {err}");
        assert!(err.contains(why), "{api} {ca:?}: {err}");
    }
    let out = daolictl(&https, Some(pki.join("controllerca/cacert.pem")));
    assert!(
        out.status.success(),
        "daolictl over HTTPS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "blue", "{v}");
    let _ = child.kill();
    let _ = child.wait();
}

/// Wrong TLS settings stop the controller at start with one line, before
/// anything listens or is created.
#[test]
fn bad_tls_settings_are_refused_with_one_line() {
    let Some(_ready) = require(&[Need::Program("ovs-pki")]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), &["0000000000000001"], None);
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let ca = pki
        .join("switchca/cacert.pem")
        .to_string_lossy()
        .into_owned();
    let store = dir.path().join("store").join("c.redb");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![],
            "an ssl: --listen needs --tls-ca, --tls-cert and --tls-key",
        ),
        (
            vec![
                "--tls-ca".into(),
                ca.clone(),
                "--tls-cert".into(),
                p("nope.pem"),
                "--tls-key".into(),
                p("ctl-privkey.pem"),
            ],
            "nope.pem",
        ),
        (
            // The key of another certificate.
            vec![
                "--tls-ca".into(),
                ca.clone(),
                "--tls-cert".into(),
                p("ctl-cert.pem"),
                "--tls-key".into(),
                p("0000000000000001-privkey.pem"),
            ],
            "--tls-cert",
        ),
        (
            // A key where the CA should be.
            vec![
                "--tls-ca".into(),
                p("ctl-privkey.pem"),
                "--tls-cert".into(),
                p("ctl-cert.pem"),
                "--tls-key".into(),
                p("ctl-privkey.pem"),
            ],
            "--tls-ca",
        ),
    ];
    for (args, want) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_daolinet-controller"))
            .args([
                "run",
                "--api",
                "127.0.0.1:0",
                "--listen",
                "ssl:127.0.0.1:0",
                "--store",
            ])
            .arg(&store)
            .args(&args)
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: something started");
        assert!(
            !store.parent().unwrap().exists(),
            "{args:?}: the store was created"
        );
    }
}
