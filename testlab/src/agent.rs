//! Starting `daolinet-agent run` in a host namespace, with its state dir
//! in the lab's directory and its maps pinned in the lab's private bpffs.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::cmd::{self, Proc, Ran};
use crate::fs::{Bpffs, TempDir};

/// A `daolinet-agent` of one host namespace, stopped on drop (SIGTERM,
/// then SIGKILL). Its state dir and pins go with the lab.
#[derive(Debug)]
pub struct Agent {
    host: String,
    bin: PathBuf,
    state: PathBuf,
    log: PathBuf,
    bpffs: Arc<Bpffs>,
    // Keeps the lab's directory (state dir, log) while the agent lives.
    _dir: Arc<TempDir>,
    args: Vec<String>,
    proc: Option<Proc>,
}

impl Agent {
    /// An agent of namespace `host` whose state dir is `name` in `dir`.
    pub(crate) fn new(
        host: &str,
        name: &str,
        bin: PathBuf,
        dir: Arc<TempDir>,
        bpffs: Arc<Bpffs>,
        args: &[&str],
    ) -> Agent {
        let state = dir.path().join(name);
        let log = dir.path().join(format!("{name}.log"));
        Agent {
            host: host.to_string(),
            bin,
            state,
            log,
            bpffs,
            _dir: dir,
            args: args.iter().map(|a| a.to_string()).collect(),
            proc: None,
        }
    }

    /// The host namespace it runs in.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Its `--state-dir`.
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// The bpffs it pins its maps in (`--bpffs`).
    pub fn bpffs(&self) -> &Path {
        self.bpffs.path()
    }

    /// The agent binary.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// A command running the agent binary in the host namespace with this
    /// agent's `--bpffs` and `--state-dir`, then `args`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.host])
            .arg(&self.bin)
            .arg("--bpffs")
            .arg(self.bpffs.path())
            .arg("--state-dir")
            .arg(&self.state)
            .args(args);
        c
    }

    /// (Re)start `run` with the arguments given at creation and wait until
    /// its control socket answers; panics with its log if it exits first.
    #[track_caller]
    pub fn start(&mut self) {
        assert!(
            self.proc.is_none(),
            "the agent of {} is already running",
            self.host
        );
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut c = self.command(&["run"]);
        c.args(&args);
        let what = format!("daolinet-agent in {}", self.host);
        let mut proc = Proc::spawn(&mut c, &what, Some(&self.log));
        let sock = self.state.join("agent.sock");
        crate::wait_poll(
            &format!("the agent in {} to answer on {}", self.host, sock.display()),
            crate::wait::DEADLINE,
            || {
                if UnixStream::connect(&sock).is_ok() {
                    return crate::Poll::Ready(());
                }
                if let Some(st) = proc.exited() {
                    panic!(
                        "the agent in {} exited with {st} while starting:\n{}",
                        self.host,
                        proc.log_tail(30)
                    );
                }
                crate::Poll::Pending(proc.log_tail(10))
            },
        );
        self.proc = Some(proc);
    }

    /// Start again with other `run` arguments.
    #[track_caller]
    pub fn start_with(&mut self, args: &[&str]) {
        self.args = args.iter().map(|a| a.to_string()).collect();
        self.start();
    }

    /// SIGTERM and wait; panics unless it exits cleanly.
    #[track_caller]
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::running)
    }

    /// Where its log goes (to read it while [`Agent::start`] waits).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Its log (stderr and stdout of every run) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Run an agent CLI command (`flows`, `ports`, `rule add ...`) against
    /// it; what it did.
    #[track_caller]
    pub fn try_cli(&self, args: &[&str]) -> Ran {
        cmd::output_of(
            &mut self.command(args),
            &format!("daolinet-agent {}", args.join(" ")),
        )
    }

    /// Run an agent CLI command, which must succeed; its stdout.
    #[track_caller]
    pub fn cli(&self, args: &[&str]) -> String {
        let r = self.try_cli(args);
        assert!(
            r.ok,
            "daolinet-agent {} in {}: {}",
            args.join(" "),
            self.host,
            r.stderr
        );
        r.stdout
    }
}
