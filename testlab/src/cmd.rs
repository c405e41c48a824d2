//! Running commands with clear failure messages, and child processes that
//! are stopped on drop.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// What a finished command did.
#[derive(Debug, Clone)]
pub struct Ran {
    /// Whether it exited with status 0.
    pub ok: bool,
    /// Its stdout, lossily decoded.
    pub stdout: String,
    /// Its stderr, lossily decoded.
    pub stderr: String,
}

impl Ran {
    fn from(out: Output) -> Ran {
        Ran {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// `args` as a shell-like line, for messages.
pub fn show(args: &[&str]) -> String {
    args.join(" ")
}

/// Run `args` (program and arguments) and return what it did; a program
/// that cannot be started panics with its name.
#[track_caller]
pub fn output(args: &[&str]) -> Ran {
    output_of(&mut command(args), &show(args))
}

/// Run a prepared command; `what` names it in messages.
#[track_caller]
pub fn output_of(cmd: &mut Command, what: &str) -> Ran {
    match cmd.stdin(Stdio::null()).output() {
        Ok(out) => Ran::from(out),
        Err(e) => panic!("cannot start `{what}`: {e}"),
    }
}

/// Run `args`, panicking with its stderr unless it succeeds; its stdout.
#[track_caller]
pub fn sh(args: &[&str]) -> String {
    let r = output(args);
    if !r.ok {
        panic!(
            "`{}` failed: {}{}",
            show(args),
            r.stderr.trim_end(),
            if r.stdout.trim().is_empty() {
                String::new()
            } else {
                format!("\nstdout: {}", r.stdout.trim_end())
            }
        );
    }
    r.stdout
}

/// True when `args` runs and succeeds (output discarded).
pub fn succeeds(args: &[&str]) -> bool {
    command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A `Command` for `args` (program and arguments).
pub fn command(args: &[&str]) -> Command {
    let (prog, rest) = args.split_first().unwrap_or((&"true", &[]));
    let mut c = Command::new(prog);
    c.args(rest);
    c
}

/// A child process stopped on drop: SIGTERM, a few seconds' grace, then
/// SIGKILL; always reaped. Its stderr (and stdout, unless taken) may go to
/// a log file shown when a test fails.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    what: String,
    log: Option<std::path::PathBuf>,
}

impl Proc {
    /// Spawn `cmd`; `what` names it in messages; `log` is where its output
    /// goes (its tail is printed when the process is dropped during a
    /// panic, i.e. when the test failed).
    #[track_caller]
    pub fn spawn(cmd: &mut Command, what: &str, log: Option<&Path>) -> Proc {
        cmd.stdin(Stdio::null());
        if let Some(log) = log {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap_or_else(|e| panic!("cannot open log {}: {e}", log.display()));
            let err = file
                .try_clone()
                .unwrap_or_else(|e| panic!("cannot open log {}: {e}", log.display()));
            cmd.stdout(file).stderr(err);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Proc {
            child: Some(child),
            what: what.to_string(),
            log: log.map(Path::to_path_buf),
        }
    }

    /// Wrap an already spawned child.
    pub fn from_child(child: Child, what: &str) -> Proc {
        Proc {
            child: Some(child),
            what: what.to_string(),
            log: None,
        }
    }

    /// Its pid (0 once it has been waited for).
    pub fn id(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// The child, e.g. to take its stdout.
    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The last lines of its log (empty without a log).
    pub fn log_tail(&self, lines: usize) -> String {
        let Some(log) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, then wait (SIGKILL after `grace`); its exit status.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(st)) => return Some(st),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// SIGTERM and wait; panics unless it exits cleanly (status 0).
    #[track_caller]
    pub fn stop(&mut self) {
        match self.terminate(Duration::from_secs(10)) {
            Some(st) if st.success() => {}
            st => panic!(
                "{} did not stop cleanly on SIGTERM: {st:?}\n{}",
                self.what,
                self.log_tail(30)
            ),
        }
    }

    /// SIGKILL and reap (no cleanup by the process).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        if std::thread::panicking() && self.log.is_some() {
            // Captured by libtest and shown with the failed test.
            eprintln!("--- last lines of {} ---\n{}", self.what, self.log_tail(40));
        }
        self.terminate(Duration::from_secs(5));
    }
}

/// Send `sig` to process `pid` (one we started).
pub fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, sig) };
    }
}
