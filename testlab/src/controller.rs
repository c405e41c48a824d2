//! Starting `daolinet-controller run` on kernel-chosen ports, ready when it
//! has printed the addresses it listens on.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::cmd::Proc;
use crate::http::Api;

/// How to start a controller.
#[derive(Debug, Clone)]
pub struct ControllerOpts {
    /// Directory of its store (`controller.redb`), API token and log.
    pub dir: PathBuf,
    /// Network namespace to run in (`None`: the test's own).
    pub netns: Option<String>,
    /// OpenFlow listen address; the port should be 0 (kernel-chosen).
    pub listen: String,
    /// REST API listen address; the port should be 0 (kernel-chosen).
    pub api: String,
    /// `--store` other than the redb file in `dir` (an etcd cluster's
    /// `etcd:URL,...`); the API token file stays `dir/api-token`.
    pub store: Option<String>,
    /// More `run` arguments (`--idle-timeout 2`...).
    pub args: Vec<String>,
}

impl ControllerOpts {
    /// Store and token in `dir`, API and OpenFlow on `127.0.0.1:0`.
    pub fn new(dir: &Path) -> ControllerOpts {
        ControllerOpts {
            dir: dir.to_path_buf(),
            netns: None,
            listen: "127.0.0.1:0".into(),
            api: "127.0.0.1:0".into(),
            store: None,
            args: Vec::new(),
        }
    }

    /// `--store SPEC` (e.g. [`crate::EtcdCluster::store_spec`]) with the
    /// token file in `dir`.
    pub fn store(mut self, spec: &str) -> Self {
        self.store = Some(spec.to_string());
        self
    }

    /// Run in namespace `netns`.
    pub fn netns(mut self, netns: &str) -> Self {
        self.netns = Some(netns.to_string());
        self
    }

    /// OpenFlow on `addr` (keep port 0), e.g. `0.0.0.0:0` to be reached
    /// from other namespaces.
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = addr.to_string();
        self
    }

    /// The REST API on `addr` (keep port 0), e.g. `0.0.0.0:0` to be
    /// reached from other namespaces.
    pub fn api(mut self, addr: &str) -> Self {
        self.api = addr.to_string();
        self
    }

    /// Extra `run` arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }
}

/// A running controller, stopped on drop (SIGTERM, then SIGKILL).
#[derive(Debug)]
pub struct Controller {
    proc: Proc,
    api: Api,
    openflow: SocketAddr,
    dir: PathBuf,
}

impl Controller {
    /// Start the workspace's `daolinet-controller` with `opts` and wait
    /// until it has printed its API and OpenFlow addresses.
    #[track_caller]
    pub fn start(opts: &ControllerOpts) -> Controller {
        Controller::start_bin(&crate::workspace_bin("daolinet-controller"), opts)
    }

    /// Like [`Controller::start`] with a given binary.
    #[track_caller]
    pub fn start_bin(bin: &Path, opts: &ControllerOpts) -> Controller {
        let mut cmd = match &opts.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["run", "--api", &opts.api, "--listen", &opts.listen]);
        match &opts.store {
            Some(spec) => cmd
                .args(["--store", spec, "--token-file"])
                .arg(opts.dir.join("api-token")),
            None => cmd.arg("--store").arg(opts.dir.join("controller.redb")),
        };
        cmd.args(&opts.args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            )
            .stdout(Stdio::piped());
        let log = opts.dir.join("controller.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        cmd.stderr(log_file);
        let mut proc = Proc::spawn(&mut cmd, "daolinet-controller", None);
        let stdout = proc
            .child_mut()
            .and_then(|c| c.stdout.take())
            .unwrap_or_else(|| panic!("no stdout of the controller"));
        // Its first two lines are the addresses; later output is drained so
        // the controller never blocks on a full pipe.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let log_tail = || std::fs::read_to_string(&log).unwrap_or_default();
        let next = |what: &str| -> String {
            match rx.recv_timeout(crate::wait::DEADLINE) {
                Ok(l) => l,
                Err(e) => panic!(
                    "the controller did not print its {what} address ({e:?}); its log:\n{}",
                    log_tail()
                ),
            }
        };
        let api_line = next("API");
        let of_line = next("OpenFlow");
        let base = api_line
            .strip_prefix("api: ")
            .unwrap_or_else(|| panic!("unexpected controller output {api_line:?}"));
        // `openflow: ADDR`, or `openflow: ssl:ADDR` for a TLS listener.
        let openflow: SocketAddr = of_line
            .strip_prefix("openflow: ")
            .map(|a| a.strip_prefix("ssl:").unwrap_or(a))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected controller output {of_line:?}"));
        let token = std::fs::read_to_string(opts.dir.join("api-token"))
            .unwrap_or_else(|e| panic!("no API token in {}: {e}", opts.dir.display()));
        let mut api = Api::new(base, Some(token.trim()));
        if let Some(ns) = &opts.netns {
            api = api.in_netns(ns);
        }
        Controller {
            proc,
            api,
            openflow,
            dir: opts.dir.clone(),
        }
    }

    /// Its REST API.
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// The address its OpenFlow server listens on (as printed: with an
    /// unspecified IP when it listens on all addresses).
    pub fn openflow(&self) -> SocketAddr {
        self.openflow
    }

    /// Its OpenFlow port.
    pub fn openflow_port(&self) -> u16 {
        self.openflow.port()
    }

    /// Its store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.proc.id()
    }

    /// Its log (stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("controller.log")).unwrap_or_default()
    }

    /// SIGKILL: no cleanup by the controller.
    pub fn kill9(mut self) {
        self.proc.kill9();
    }

    /// SIGTERM and wait; its exit status.
    pub fn terminate(mut self) -> Option<ExitStatus> {
        self.proc.terminate(Duration::from_secs(10))
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- last lines of the controller's log ---\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}
